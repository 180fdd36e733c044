/*
 * fuzz_request: the HTTP request path below the server library: request text -> method,
 * target, headers and body -> emu_req (path normalisation, query splitting and percent
 * decoding), header lookups, host and base URL, then the real route table of `cmkemu serve`
 * (every family, demo world loaded, permissive authentication) the way core/http.c uses it:
 * query overflow, route match or 404/405, precheck. GET and HEAD requests run their handler
 * (reads only, so inputs do not pile up state); other methods stop after the precheck (the
 * bodies are fuzz_json_bodies' part).
 *
 * Input: "METHOD TARGET\n" then "Name: value\n" lines, an empty line, the body. A header
 * value "$TOKEN" becomes "Bearer <a real token>" of the demo world's kv-admin-app.
 * Invariants checked: the normalised path starts with '/', has no "//" and no trailing '/'
 * (except "/"); percent decoding never grows; every request ends with exactly one response
 * with a status in 100..599; a response typed JSON parses, and every error (but HEAD's) has a
 * JSON body.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz_app.h"
#include "util.h"

#define FZ_MAX_INPUT (64u << 10)
#define FZ_MAX_HEADERS 100 /* config.c's max-headers default */

static fz_app *app;

/* The next line of [*p, end) without its "\n" / "\r\n", NUL-terminated (malloc'd). */
static char *next_line(const char **p, const char *end)
{
    const char *s = *p;
    const char *nl = memchr(s, '\n', (size_t)(end - s));
    const char *e = nl ? nl : end;
    *p = nl ? nl + 1 : end;
    if (e > s && e[-1] == '\r')
        e--;
    return emu_xstrndup(s, (size_t)(e - s));
}

static void check_path(const char *path)
{
    size_t n = strlen(path);
    if (path[0] != '/' || strstr(path, "//") || (n > 1 && path[n - 1] == '/'))
        abort();
}

static void check_decode(const char *s)
{
    size_t n = strlen(s), out_len = 0;
    char *out = emu_xmalloc(n + 1);
    for (int plus = 0; plus < 2; plus++)
        if (emu_percent_decode(s, n, plus, out, &out_len) && out_len > n)
            abort();
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!app) {
        fz_quiet_log();
        app = fz_app_new(FZ_APP_WORLD | FZ_APP_ROUTES);
    }
    if (size > FZ_MAX_INPUT)
        return 0;
    const char *p = (const char *)data, *end = p + size;
    char *first = next_line(&p, end);
    char *sp = strchr(first, ' ');
    const char *method = "GET", *target = first;
    if (sp) {
        *sp = '\0';
        method = first;
        target = sp + 1;
    }
    emu_req *req = emu_req_new(method, target);
    req->max_json_depth = 32;
    check_path(req->path);
    check_decode(target);
    size_t nheaders = 0;
    bool too_many = false;
    while (p < end) {
        char *line = next_line(&p, end);
        if (!line[0]) {
            free(line);
            break;
        }
        char *colon = strchr(line, ':');
        if (colon) {
            *colon = '\0';
            const char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            if (!strcmp(v, "$TOKEN") && fz_app_bearer(app))
                v = fz_app_bearer(app);
            if (++nheaders <= FZ_MAX_HEADERS)
                emu_req_add_header(req, line, v);
            else
                too_many = true;
        }
        free(line);
    }
    emu_req_set_body(req, p, (size_t)(end - p));
    char host[256];
    emu_req_hostname(req, host, sizeof host);
    (void)emu_req_base_url(req);
    (void)emu_req_query(req, "api-version");
    (void)emu_req_header(req, "Content-Type");
    if (too_many) {
        emu_send_error(req, 431, "RequestHeaderFieldsTooLarge", "Too many headers.");
    } else if (req->query_overflow) {
        emu_send_error(req, 400, "BadParameter", "The query string has too many parameters.");
    } else {
        emu_match_result m = emu_router_match(fz_app_router(app), req);
        if (m != EMU_MATCH_OK) {
            emu_router_send_nomatch(req, m);
        } else if (!strcasecmp(method, "GET") || !strcasecmp(method, "HEAD")) {
            emu_route_run(req);
        } else {
            const emu_route *rt = req->route;
            for (size_t i = 0; i < req->nparams; i++)
                if (!req->params[i])
                    abort();
            if (rt->precheck)
                rt->precheck(req, rt->ud);
            if (!req->responded)
                emu_send_empty(req, 204); /* stands for the handler */
        }
    }
    if (!req->responded || req->status < 100 || req->status > 599)
        abort();
    /* an answer that says it is JSON is JSON, and an error carries a body saying why */
    bool says_json = req->resp_type && strstr(req->resp_type, "json");
    bool needs_body = req->status >= 400 && strcasecmp(method, "HEAD") != 0;
    if ((says_json && req->status != 204) || needs_body) {
        json_t *j = req->resp_len ? json_loadb(req->resp_body, req->resp_len, 0, NULL) : NULL;
        if (!j)
            abort();
        json_decref(j);
    }
    emu_req_free(req);
    free(first);
    return 0;
}
