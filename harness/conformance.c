/* conformance: see conformance.h. */
#include "conformance.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"
#include "runner.h"
#include "session.h"

#ifndef CMKH_FIXTURES_DIR
#define CMKH_FIXTURES_DIR "fixtures/conformance"
#endif

#define MAX_LIST 64

static void usage(FILE *f){
    fprintf(
        f,
        "usage: cmkharness conformance --url URL [--ca PEM]\n"
        "         [--token T | --client-id ID --client-secret S --tenant T --authority URL]\n"
        "         [--only PATTERN] [--junit FILE] [--skip-tag TAG]... [--var NAME=VALUE]...\n"
        "         [--cases DIR] [--verbose]\n"
        "\n"
        "%s"
        "  --only PATTERN   run only files whose name, path or a case name contain PATTERN\n"
        "                   (e.g. keys/); a matching file runs whole, its cases depend on each "
        "other\n"
        "  --skip-tag TAG   skip cases with this tag (emulator-only against a real service)\n"
        "  --cases DIR      case files (default %s)\n"
        "  --junit FILE     also write JUnit XML\n"
        "Exit: 0 all passed, 1 a case failed, 2 usage.\n",
        HX_COMMON_USAGE, CMKH_FIXTURES_DIR);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int hx_conformance_main(int argc, char **argv)
{
    int rc = 2;
    hx_common_opts co = {0};
    const char *only = NULL, *junit = NULL;
    const char *cases = CMKH_FIXTURES_DIR;
    const char *skip[MAX_LIST];
    size_t nskip = 0;
    hx_session ss = {0};
    hx_report *rep = NULL;
    char **files = NULL;
    size_t nfiles = 0;
    char *fixtures_root = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        int c = hx_common_arg(&co, argc, argv, &i, "conformance");
        if (c < 0)
            return 2;
        if (c)
            continue;
        const char **slot = NULL;
        if (!strcmp(a, "--only"))
            slot = &only;
        else if (!strcmp(a, "--junit"))
            slot = &junit;
        else if (!strcmp(a, "--cases"))
            slot = &cases;
        if (i + 1 >= argc && (slot || !strcmp(a, "--skip-tag"))) {
            fprintf(stderr, "cmkharness conformance: %s needs a value\n", a);
            return 2;
        }
        if (slot) {
            *slot = argv[++i];
        } else if (!strcmp(a, "--skip-tag") && nskip < MAX_LIST) {
            skip[nskip++] = argv[++i];
        } else {
            fprintf(stderr, "cmkharness conformance: unknown or bad argument %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!co.url) {
        fprintf(stderr, "cmkharness conformance: --url is required\n");
        usage(stderr);
        return 2;
    }

    /* case files, sorted so the order is stable */
    DIR *d = opendir(cases);
    if (!d) {
        fprintf(stderr, "cmkharness conformance: cannot open %s\n", cases);
        goto out;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 6 || strcmp(de->d_name + n - 5, ".json"))
            continue;
        files = realloc(files, (nfiles + 1) * sizeof *files);
        if (!files)
            abort();
        size_t l = strlen(cases) + n + 2;
        files[nfiles] = malloc(l);
        if (!files[nfiles])
            abort();
        snprintf(files[nfiles++], l, "%s/%s", cases, de->d_name);
    }
    closedir(d);
    if (!nfiles) {
        fprintf(stderr, "cmkharness conformance: no *.json case files in %s\n", cases);
        goto out;
    }
    qsort(files, nfiles, sizeof *files, cmp_str);

    /* files named by built-in steps (templates/...) are relative to the parent of DIR */
    fixtures_root = hx_parent_dir(cases);
    rc = hx_session_open(&ss, &co, fixtures_root, "conformance");
    if (rc)
        goto out;
    rc = 2;

    rep = hx_report_new();
    hx_run_opts opts = {.only = only, .skip_tags = skip, .nskip_tags = nskip, .out = stdout};
    for (size_t i = 0; i < nfiles; i++)
        hx_file_run(ss.ctx, files[i], &opts, rep);

    int passed, failed, skipped;
    hx_report_counts(rep, &passed, &failed, &skipped);
    if (skipped)
        printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else
        printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    rc = failed ? 1 : 0;
    if (!passed && !failed) {
        fprintf(stderr, "cmkharness conformance: no case ran (check --only)\n");
        rc = 1;
    }
    if (junit && hx_report_junit(rep, junit)) {
        fprintf(stderr, "cmkharness conformance: cannot write %s\n", junit);
        rc = 1;
    }
out:
    for (size_t i = 0; i < nfiles; i++)
        free(files[i]);
    free(files);
    free(fixtures_root);
    hx_report_free(rep);
    hx_session_close(&ss);
    return rc;
}
