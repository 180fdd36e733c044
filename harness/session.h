/*
 * session: what `conformance` and `scenario` share: the common options (--url, --ca, --token or
 * client credentials, --var, --verbose), the HTTP client and a case context with the built-in
 * variables of fixtures/conformance/README.md (url, vault_url, scratch_url, contoso_url,
 * arm_url, bap_url, authority, tenant, subscription, rg, port, run).
 */
#ifndef CMKH_SESSION_H
#define CMKH_SESSION_H

#include <stddef.h>

#include "http.h"
#include "runner.h"

#define HX_MAX_VARS 64

typedef struct {
    const char *url, *ca, *token, *cid, *secret, *tenant, *authority;
    const char *vars[HX_MAX_VARS];
    size_t nvars;
    int verbose;
} hx_common_opts;

/* If argv[*i] is a common option, consumes it (and its value): returns 1. Not a common option:
 * 0. A common option without its value: prints "cmkharness CMD: ..." and returns -1. */
int hx_common_arg(hx_common_opts *o, int argc, char **argv, int *i, const char *cmd);

/* Text for the usage of the common options. */
extern const char HX_COMMON_USAGE[];

typedef struct {
    hx_http *http;
    hx_ctx *ctx;
    char *fixtures_root;
} hx_session;

/* Checks the options (--url; a token or full client credentials), creates the HTTP client and
 * the context with the built-in variables. fixtures_root: where built-in steps find files.
 * 0 ok; 2 usage (printed); 1 other failure (printed). */
int hx_session_open(hx_session *s, const hx_common_opts *o, const char *fixtures_root,
                    const char *cmd);
void hx_session_close(hx_session *s);

/* The parent directory of dir ("fixtures/conformance" -> "fixtures"), malloc'd. */
char *hx_parent_dir(const char *dir);

#endif
