/* conformance: see conformance.h. */
#include "conformance.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <openssl/rand.h>

#include "http.h"
#include "runner.h"

#ifndef CMKH_FIXTURES_DIR
#define CMKH_FIXTURES_DIR "fixtures/conformance"
#endif

#define DEMO_TENANT "72f988bf-0000-4000-8000-00000000c0de"
#define DEMO_SUBSCRIPTION "00000000-0000-4000-8000-000000000001"
#define MAX_LIST 64

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: cmkharness conformance --url URL [--ca PEM]\n"
        "         [--token T | --client-id ID --client-secret S --tenant T --authority URL]\n"
        "         [--only PATTERN] [--junit FILE] [--skip-tag TAG]... [--var NAME=VALUE]...\n"
        "         [--cases DIR] [--verbose]\n"
        "\n"
        "  --url URL        the endpoint under test: the emulator (https://localhost:PORT) or a\n"
        "                   real vault (https://NAME.vault.azure.net)\n"
        "  --ca PEM         extra CA certificate to trust (the emulator's DATA_DIR/tls/cert.pem)\n"
        "  --token T        bearer token sent for every audience\n"
        "  --client-id ... --authority URL   client credentials: a token per audience from\n"
        "                   AUTHORITY/TENANT/oauth2/v2.0/token\n"
        "  --only PATTERN   run only files whose name, path or a case name contain PATTERN\n"
        "                   (e.g. keys/); a matching file runs whole, its cases depend on each "
        "other\n"
        "  --skip-tag TAG   skip cases with this tag (emulator-only against a real service)\n"
        "  --var NAME=VALUE set or override a case variable (e.g. scratch_url=https://...)\n"
        "  --cases DIR      case files (default %s)\n"
        "  --junit FILE     also write JUnit XML\n"
        "Exit: 0 all passed, 1 a case failed, 2 usage.\n",
        CMKH_FIXTURES_DIR);
}

static int is_local_host(const char *host)
{
    size_t n = strlen(host);
    return !strcasecmp(host, "localhost") || !strcmp(host, "127.0.0.1") || !strcmp(host, "[::1]") ||
           !strcmp(host, "::1") || (n > 10 && !strcasecmp(host + n - 10, ".localhost"));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int hx_conformance_main(int argc, char **argv)
{
    int rc = 2;
    const char *url = NULL, *ca = NULL, *token = NULL, *cid = NULL, *secret = NULL;
    const char *tenant = NULL, *authority = NULL, *only = NULL, *junit = NULL;
    const char *cases = CMKH_FIXTURES_DIR;
    const char *skip[MAX_LIST], *vars[MAX_LIST];
    size_t nskip = 0, nvars = 0;
    int verbose = 0;
    hx_http *http = NULL;
    hx_ctx *ctx = NULL;
    hx_report *rep = NULL;
    char **files = NULL;
    size_t nfiles = 0;
    CURLU *u = NULL;
    char *scheme = NULL, *host = NULL, *port = NULL;
    char *fixtures_root = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
            verbose = 1;
            continue;
        }
        if (!strcmp(a, "--url"))
            slot = &url;
        else if (!strcmp(a, "--ca"))
            slot = &ca;
        else if (!strcmp(a, "--token"))
            slot = &token;
        else if (!strcmp(a, "--client-id"))
            slot = &cid;
        else if (!strcmp(a, "--client-secret"))
            slot = &secret;
        else if (!strcmp(a, "--tenant"))
            slot = &tenant;
        else if (!strcmp(a, "--authority"))
            slot = &authority;
        else if (!strcmp(a, "--only"))
            slot = &only;
        else if (!strcmp(a, "--junit"))
            slot = &junit;
        else if (!strcmp(a, "--cases"))
            slot = &cases;
        if (i + 1 >= argc && (slot || !strcmp(a, "--skip-tag") || !strcmp(a, "--var"))) {
            fprintf(stderr, "cmkharness conformance: %s needs a value\n", a);
            return 2;
        }
        if (slot) {
            *slot = argv[++i];
        } else if (!strcmp(a, "--skip-tag") && nskip < MAX_LIST) {
            skip[nskip++] = argv[++i];
        } else if (!strcmp(a, "--var") && nvars < MAX_LIST && strchr(argv[i + 1], '=')) {
            vars[nvars++] = argv[++i];
        } else {
            fprintf(stderr, "cmkharness conformance: unknown or bad argument %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!url) {
        fprintf(stderr, "cmkharness conformance: --url is required\n");
        usage(stderr);
        return 2;
    }
    if (!token && !(cid && secret && tenant && authority)) {
        fprintf(stderr, "cmkharness conformance: give --token, or all of --client-id, "
                        "--client-secret, --tenant and --authority\n");
        return 2;
    }
    u = curl_url();
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        fprintf(stderr, "cmkharness conformance: bad --url %s\n", url);
        goto out;
    }
    curl_url_get(u, CURLUPART_PORT, &port, 0);

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
    fixtures_root = strdup(cases);
    if (!fixtures_root)
        abort();
    {
        size_t l = strlen(fixtures_root);
        while (l > 1 && fixtures_root[l - 1] == '/')
            fixtures_root[--l] = 0;
        char *slash = strrchr(fixtures_root, '/');
        if (slash && slash != fixtures_root)
            *slash = 0;
        else if (slash)
            slash[1] = 0;
        else
            snprintf(fixtures_root, l + 1, "%s", l ? "." : "");
    }

    char err[1024];
    http = hx_http_new(ca, verbose, err, sizeof err);
    if (!http) {
        fprintf(stderr, "cmkharness conformance: %s\n", err);
        goto out;
    }
    hx_auth_config cfg = {.token = token,
                          .authority = authority,
                          .tenant = tenant ? tenant : DEMO_TENANT,
                          .client_id = cid,
                          .client_secret = secret,
                          .fixtures_root = fixtures_root,
                          .verbose = verbose};
    ctx = hx_ctx_new(http, &cfg);

    /* built-in variables (see fixtures/conformance/README.md) */
    char base[1024], tmp[1200];
    snprintf(base, sizeof base, "%s", url);
    for (size_t l = strlen(base); l && base[l - 1] == '/'; l--)
        base[l - 1] = 0;
    int local = is_local_host(host);
    char pp[16] = "";
    if (port)
        snprintf(pp, sizeof pp, ":%s", port);
    hx_ctx_set_str(ctx, "url", base);
    hx_ctx_set_str(ctx, "vault_url", base);
    hx_ctx_set_str(ctx, "port", port ? port : "");
    if (local) {
        snprintf(tmp, sizeof tmp, "%s://scratch.vault.localhost%s", scheme, pp);
        hx_ctx_set_str(ctx, "scratch_url", tmp);
        snprintf(tmp, sizeof tmp, "%s://contoso-cmk.vault.localhost%s", scheme, pp);
        hx_ctx_set_str(ctx, "contoso_url", tmp);
        snprintf(tmp, sizeof tmp, "%s://localhost%s", scheme, pp);
        hx_ctx_set_str(ctx, "arm_url", tmp);
        hx_ctx_set_str(ctx, "bap_url", tmp);
        hx_ctx_set_str(ctx, "authority", authority ? authority : tmp);
    } else {
        hx_ctx_set_str(ctx, "scratch_url", base);
        hx_ctx_set_str(ctx, "contoso_url", base);
        hx_ctx_set_str(ctx, "arm_url", "https://management.azure.com");
        hx_ctx_set_str(ctx, "bap_url", "https://api.bap.microsoft.com");
        hx_ctx_set_str(ctx, "authority",
                       authority ? authority : "https://login.microsoftonline.com");
    }
    hx_ctx_set_str(ctx, "tenant", cfg.tenant);
    hx_ctx_set_str(ctx, "subscription", DEMO_SUBSCRIPTION);
    hx_ctx_set_str(ctx, "rg", "cmk-rg");
    {
        unsigned char r[4];
        RAND_bytes(r, sizeof r);
        snprintf(tmp, sizeof tmp, "%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
        hx_ctx_set_str(ctx, "run", tmp);
    }
    for (size_t i = 0; i < nvars; i++) {
        const char *eq = strchr(vars[i], '=');
        snprintf(tmp, sizeof tmp, "%.*s", (int)(eq - vars[i]), vars[i]);
        hx_ctx_set_str(ctx, tmp, eq + 1);
    }

    rep = hx_report_new();
    hx_run_opts opts = {.only = only, .skip_tags = skip, .nskip_tags = nskip, .out = stdout};
    for (size_t i = 0; i < nfiles; i++)
        hx_file_run(ctx, files[i], &opts, rep);

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
    hx_ctx_free(ctx);
    hx_http_free(http);
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc;
}
