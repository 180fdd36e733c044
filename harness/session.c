/* session: see session.h. */
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <openssl/rand.h>

#define DEMO_TENANT "72f988bf-0000-4000-8000-00000000c0de"
#define DEMO_SUBSCRIPTION "00000000-0000-4000-8000-000000000001"

const char HX_COMMON_USAGE[] =
    "  --url URL        the endpoint under test: the emulator (https://localhost:PORT) or a\n"
    "                   real vault (https://NAME.vault.azure.net)\n"
    "  --ca PEM         extra CA certificate to trust (the emulator's DATA_DIR/tls/cert.pem)\n"
    "  --token T        bearer token sent for every audience\n"
    "  --client-id ... --authority URL   client credentials: a token per audience from\n"
    "                   AUTHORITY/TENANT/oauth2/v2.0/token\n"
    "  --var NAME=VALUE set or override a variable (e.g. scratch_url=https://...)\n"
    "  --verbose        print every exchange on stderr\n";

int hx_common_arg(hx_common_opts *o, int argc, char **argv, int *i, const char *cmd)
{
    const char *a = argv[*i];
    const char **slot = NULL;
    if (!strcmp(a, "--verbose") || !strcmp(a, "-v")) {
        o->verbose = 1;
        return 1;
    }
    if (!strcmp(a, "--url"))
        slot = &o->url;
    else if (!strcmp(a, "--ca"))
        slot = &o->ca;
    else if (!strcmp(a, "--token"))
        slot = &o->token;
    else if (!strcmp(a, "--client-id"))
        slot = &o->cid;
    else if (!strcmp(a, "--client-secret"))
        slot = &o->secret;
    else if (!strcmp(a, "--tenant"))
        slot = &o->tenant;
    else if (!strcmp(a, "--authority"))
        slot = &o->authority;
    else if (strcmp(a, "--var"))
        return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "cmkharness %s: %s needs a value\n", cmd, a);
        return -1;
    }
    if (slot) {
        *slot = argv[++*i];
        return 1;
    }
    if (!strchr(argv[*i + 1], '=') || o->nvars >= HX_MAX_VARS) {
        fprintf(stderr, "cmkharness %s: --var wants NAME=VALUE (at most %d)\n", cmd,
                HX_MAX_VARS);
        return -1;
    }
    o->vars[o->nvars++] = argv[++*i];
    return 1;
}

static int is_local_host(const char *host)
{
    size_t n = strlen(host);
    return !strcasecmp(host, "localhost") || !strcmp(host, "127.0.0.1") || !strcmp(host, "[::1]") ||
           !strcmp(host, "::1") || (n > 10 && !strcasecmp(host + n - 10, ".localhost"));
}

char *hx_parent_dir(const char *dir)
{
    char *root = strdup(dir);
    if (!root)
        abort();
    size_t l = strlen(root);
    while (l > 1 && root[l - 1] == '/')
        root[--l] = 0;
    char *slash = strrchr(root, '/');
    if (slash && slash != root) {
        *slash = 0;
    } else if (slash) {
        slash[1] = 0;
    } else {
        free(root);
        root = strdup(".");
        if (!root)
            abort();
    }
    return root;
}

int hx_session_open(hx_session *s, const hx_common_opts *o, const char *fixtures_root,
                    const char *cmd)
{
    memset(s, 0, sizeof *s);
    if (!o->url) {
        fprintf(stderr, "cmkharness %s: --url is required\n", cmd);
        return 2;
    }
    if (!o->token && !(o->cid && o->secret && o->tenant && o->authority)) {
        fprintf(stderr, "cmkharness %s: give --token, or all of --client-id, --client-secret, "
                        "--tenant and --authority\n",
                cmd);
        return 2;
    }
    int rc = 1;
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;
    if (curl_url_set(u, CURLUPART_URL, o->url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        fprintf(stderr, "cmkharness %s: bad --url %s\n", cmd, o->url);
        rc = 2;
        goto out;
    }
    curl_url_get(u, CURLUPART_PORT, &port, 0);
    char err[1024];
    s->http = hx_http_new(o->ca, o->verbose, err, sizeof err);
    if (!s->http) {
        fprintf(stderr, "cmkharness %s: %s\n", cmd, err);
        goto out;
    }
    s->fixtures_root = strdup(fixtures_root);
    if (!s->fixtures_root)
        abort();
    hx_auth_config cfg = {.token = o->token,
                          .authority = o->authority,
                          .tenant = o->tenant ? o->tenant : DEMO_TENANT,
                          .client_id = o->cid,
                          .client_secret = o->secret,
                          .fixtures_root = s->fixtures_root,
                          .verbose = o->verbose};
    s->ctx = hx_ctx_new(s->http, &cfg);
    hx_ctx *ctx = s->ctx;

    char base[1024], tmp[1200];
    snprintf(base, sizeof base, "%s", o->url);
    for (size_t l = strlen(base); l && base[l - 1] == '/'; l--)
        base[l - 1] = 0;
    char pp[16] = "";
    if (port)
        snprintf(pp, sizeof pp, ":%s", port);
    hx_ctx_set_str(ctx, "url", base);
    hx_ctx_set_str(ctx, "vault_url", base);
    hx_ctx_set_str(ctx, "port", port ? port : "");
    if (is_local_host(host)) {
        snprintf(tmp, sizeof tmp, "%s://scratch.vault.localhost%s", scheme, pp);
        hx_ctx_set_str(ctx, "scratch_url", tmp);
        snprintf(tmp, sizeof tmp, "%s://contoso-cmk.vault.localhost%s", scheme, pp);
        hx_ctx_set_str(ctx, "contoso_url", tmp);
        snprintf(tmp, sizeof tmp, "%s://localhost%s", scheme, pp);
        hx_ctx_set_str(ctx, "arm_url", tmp);
        hx_ctx_set_str(ctx, "bap_url", tmp);
        hx_ctx_set_str(ctx, "authority", o->authority ? o->authority : tmp);
    } else {
        hx_ctx_set_str(ctx, "scratch_url", base);
        hx_ctx_set_str(ctx, "contoso_url", base);
        hx_ctx_set_str(ctx, "arm_url", "https://management.azure.com");
        hx_ctx_set_str(ctx, "bap_url", "https://api.bap.microsoft.com");
        hx_ctx_set_str(ctx, "authority",
                       o->authority ? o->authority : "https://login.microsoftonline.com");
    }
    hx_ctx_set_str(ctx, "tenant", cfg.tenant);
    hx_ctx_set_str(ctx, "subscription", DEMO_SUBSCRIPTION);
    hx_ctx_set_str(ctx, "rg", "cmk-rg");
    unsigned char r[4];
    RAND_bytes(r, sizeof r);
    snprintf(tmp, sizeof tmp, "%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
    hx_ctx_set_str(ctx, "run", tmp);
    for (size_t i = 0; i < o->nvars; i++) {
        const char *eq = strchr(o->vars[i], '=');
        snprintf(tmp, sizeof tmp, "%.*s", (int)(eq - o->vars[i]), o->vars[i]);
        hx_ctx_set_str(ctx, tmp, eq + 1);
    }
    rc = 0;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    if (rc)
        hx_session_close(s);
    return rc;
}

void hx_session_close(hx_session *s)
{
    hx_ctx_free(s->ctx);
    hx_http_free(s->http);
    free(s->fixtures_root);
    memset(s, 0, sizeof *s);
}
