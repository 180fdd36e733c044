/* scenario: see scenario.h. */
#include "scenario.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "runner.h"
#include "session.h"

#ifndef CMKH_SCENARIOS_DIR
#define CMKH_SCENARIOS_DIR "fixtures/scenarios"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: cmkharness scenario list [--scenarios DIR]\n"
            "       cmkharness scenario run NAME|all --url URL [--ca PEM]\n"
            "         [--token T | --client-id ID --client-secret S --tenant T --authority URL]\n"
            "         [--step] [--color|--no-color] [--scenarios DIR] [--var NAME=VALUE]...\n"
            "\n"
            "%s"
            "  --step           wait for Enter before each narrated step (for a room)\n"
            "  --scenarios DIR  scenario files (default %s)\n"
            "Exit: 0 the scenario behaved as described, 1 the emulator disagreed, 2 usage.\n",
            HX_COMMON_USAGE, CMKH_SCENARIOS_DIR);
}

typedef struct {
    const char *bold, *dim, *green, *red, *cyan, *off;
} palette;

static const palette COLOR = {"\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[36m", "\033[0m"};
static const palette PLAIN = {"", "", "", "", "", ""};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted scenario names (file names without .json) of dir; *n set. NULL + message on error. */
static char **list_names(const char *dir, size_t *n)
{
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "cmkharness scenario: cannot open %s\n", dir);
        return NULL;
    }
    char **names = NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".json") || de->d_name[0] == '.')
            continue;
        names = realloc(names, (*n + 1) * sizeof *names);
        if (!names)
            abort();
        names[*n] = strndup(de->d_name, l - 5);
        if (!names[(*n)++])
            abort();
    }
    closedir(d);
    if (*n)
        qsort(names, *n, sizeof *names, cmp_str);
    return names;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static json_t *load(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.json", dir, name);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j)
        fprintf(stderr, "cmkharness scenario: %s: line %d: %s\n", path, je.line, je.text);
    else if (!json_is_array(json_object_get(j, "steps"))) {
        fprintf(stderr, "cmkharness scenario: %s has no \"steps\" array\n", path);
        json_decref(j);
        j = NULL;
    }
    return j;
}

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void wait_enter(const palette *c)
{
    printf("%s   [Enter]%s", c->dim, c->off);
    fflush(stdout);
    FILE *tty = fopen("/dev/tty", "r");
    FILE *in = tty ? tty : stdin;
    int ch;
    while ((ch = fgetc(in)) != EOF && ch != '\n')
        ;
    if (tty)
        fclose(tty);
}

/* Runs one scenario; returns 0 when every step passed. */
static int run_one(hx_ctx *ctx, const json_t *sc, bool step_mode, const palette *c)
{
    const json_t *steps = json_object_get(sc, "steps");
    size_t total = 0, i;
    json_t *st;
    json_array_foreach(steps, i, st) total += json_object_get(st, "say") != NULL;
    /* a fresh ${run} per scenario: its vault, key and policy names never meet another's */
    unsigned char r[4];
    char run[16];
    RAND_bytes(r, sizeof r);
    snprintf(run, sizeof run, "%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
    hx_ctx_set_str(ctx, "run", run);
    printf("\n%s== %s ==%s\n", c->bold, str(sc, "title"), c->off);
    if (*str(sc, "summary"))
        printf("%s\n", str(sc, "summary"));
    size_t n = 0;
    double secs = 0;
    json_array_foreach(steps, i, st)
    {
        const char *say = json_string_value(json_object_get(st, "say"));
        if (say) {
            n++;
            printf("\n%s%2zu/%zu%s %s\n", c->cyan, n, total, c->off, say);
            if (step_mode)
                wait_enter(c);
        }
        fflush(stdout);
        hx_result res;
        hx_step_run(ctx, sc, st, &res);
        secs += res.seconds;
        if (res.outcome == HX_FAIL) {
            printf("%s      FAILED: %s%s\n", c->red, str(st, "name"), c->off);
            printf("%s\n", res.msg);
            printf("%sScenario '%s' FAILED at step %zu (%s): the emulator did not behave as "
                   "described.%s\n",
                   c->red, str(sc, "name"), n, str(st, "name"), c->off);
            return 1;
        }
        if (say) {
            const char *obs = json_string_value(json_object_get(st, "observe"));
            printf("%s      ok%s%s%s\n", c->green, obs ? " - " : "", obs ? obs : "", c->off);
        }
    }
    printf("\n%sScenario '%s' passed: %zu steps as described (%.1f s).%s\n", c->green,
           str(sc, "name"), n, secs, c->off);
    return 0;
}

int hx_scenario_main(int argc, char **argv)
{
    hx_common_opts co = {0};
    const char *dir = CMKH_SCENARIOS_DIR, *verb = NULL, *name = NULL;
    bool step_mode = false;
    int color = isatty(STDOUT_FILENO) ? 1 : 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        int c = hx_common_arg(&co, argc, argv, &i, "scenario");
        if (c < 0)
            return 2;
        if (c)
            continue;
        if (!strcmp(a, "--step")) {
            step_mode = true;
        } else if (!strcmp(a, "--color")) {
            color = 1;
        } else if (!strcmp(a, "--no-color")) {
            color = 0;
        } else if (!strcmp(a, "--scenarios") && i + 1 < argc) {
            dir = argv[++i];
        } else if (a[0] != '-' && !verb) {
            verb = a;
        } else if (a[0] != '-' && !name) {
            name = a;
        } else {
            fprintf(stderr, "cmkharness scenario: unknown or bad argument %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!verb || (strcmp(verb, "list") && strcmp(verb, "run")) ||
        (!strcmp(verb, "run") && !name)) {
        usage(stderr);
        return 2;
    }
    const palette *pal = color ? &COLOR : &PLAIN;
    size_t nn = 0;
    char **names = list_names(dir, &nn);
    if (!names)
        return nn ? 1 : 2;
    int rc = 0;
    if (!strcmp(verb, "list")) {
        for (size_t i = 0; i < nn; i++) {
            json_t *j = load(dir, names[i]);
            printf("%-30s %s\n", names[i], j ? str(j, "title") : "(unreadable)");
            rc |= !j;
            json_decref(j);
        }
        free_names(names, nn);
        return rc;
    }
    bool all = !strcmp(name, "all");
    bool known = all;
    for (size_t i = 0; i < nn && !known; i++)
        known = !strcmp(names[i], name);
    if (!known) {
        fprintf(stderr, "cmkharness scenario: no scenario '%s' (see `cmkharness scenario "
                        "list`)\n",
                name);
        free_names(names, nn);
        return 2;
    }
    char *root = hx_parent_dir(dir);
    hx_session ss;
    rc = hx_session_open(&ss, &co, root, "scenario");
    free(root);
    if (rc) {
        free_names(names, nn);
        return rc;
    }
    int failed = 0, passed = 0;
    for (size_t i = 0; i < nn; i++) {
        if (!all && strcmp(names[i], name))
            continue;
        json_t *sc = load(dir, names[i]);
        int r = sc ? run_one(ss.ctx, sc, step_mode, pal) : 1;
        json_decref(sc);
        if (r)
            failed++;
        else
            passed++;
    }
    if (all)
        printf("\n%d scenarios passed, %d failed\n", passed, failed);
    hx_session_close(&ss);
    free_names(names, nn);
    return failed ? 1 : 0;
}
