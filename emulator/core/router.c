#include "router.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "util.h"

struct emu_router {
    emu_route *routes;
    size_t n, cap;
};

emu_router *emu_router_new(void)
{
    return emu_xcalloc(1, sizeof(emu_router));
}

void emu_router_free(emu_router *r)
{
    if (!r)
        return;
    free(r->routes);
    free(r);
}

void emu_router_add(emu_router *r, const char *method, const char *pattern, unsigned flags,
                    emu_handler_fn precheck, emu_handler_fn handler, void *ud)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->routes = emu_xrealloc(r->routes, r->cap * sizeof *r->routes);
    }
    r->routes[r->n++] = (emu_route){method, pattern, flags, precheck, handler, ud};
}

/* Next segment of s starting after a '/'; returns its length and advances *s. */
static size_t next_seg(const char **s)
{
    const char *p = *s;
    if (*p == '/')
        p++;
    const char *e = strchr(p, '/');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    *s = p;
    return n;
}

static bool match_route(const emu_route *rt, emu_req *req, const char **params, size_t *np)
{
    const char *pp = rt->pattern, *sp = req->path;
    *np = 0;
    char dec[1024];
    for (;;) {
        bool pend = *pp == '\0' || (pp[0] == '/' && pp[1] == '\0');
        bool send = *sp == '\0' || (sp[0] == '/' && sp[1] == '\0');
        if (pend || send)
            return pend && send;
        size_t pl = next_seg(&pp);
        size_t sl = next_seg(&sp);
        if (pl == 3 && !strncmp(pp, "{*}", 3)) {
            /* the rest of the path, undecoded apart from being a capture */
            if (*np >= EMU_MAX_PARAMS)
                return false;
            params[(*np)++] = emu_arena_strdup(req->arena, sp);
            return true;
        }
        if (sl >= sizeof dec)
            return false;
        size_t dl;
        if (!emu_percent_decode(sp, sl, false, dec, &dl))
            return false;
        if (pl >= 2 && pp[0] == '{' && pp[pl - 1] == '}') {
            if (dl == 0 || *np >= EMU_MAX_PARAMS)
                return false;
            params[(*np)++] = emu_arena_strndup(req->arena, dec, dl);
        } else if (pl != dl || strncasecmp(pp, dec, pl) != 0) {
            return false;
        }
        pp += pl;
        sp += sl;
    }
}

static bool req_text_utf8(const emu_req *req)
{
    if (req->host && !emu_utf8_valid(req->host, strlen(req->host)))
        return false;
    for (size_t i = 0; i < req->nquery; i++)
        if (!emu_utf8_valid(req->query[i].name, strlen(req->query[i].name)) ||
            !emu_utf8_valid(req->query[i].value, strlen(req->query[i].value)))
            return false;
    return true;
}

emu_match_result emu_router_match(const emu_router *r, emu_req *req)
{
    const char *params[EMU_MAX_PARAMS];
    size_t np;
    bool path_seen = false;
    if (!req_text_utf8(req))
        return EMU_MATCH_BAD_ENCODING;
    for (size_t i = 0; i < r->n; i++) {
        const emu_route *rt = &r->routes[i];
        if (!match_route(rt, req, params, &np))
            continue;
        if (strcmp(rt->method, "*") != 0 && strcasecmp(rt->method, req->method) != 0) {
            path_seen = true;
            continue;
        }
        for (size_t k = 0; k < np; k++)
            if (!emu_utf8_valid(params[k], strlen(params[k])))
                return EMU_MATCH_BAD_ENCODING;
        req->route = rt;
        memcpy(req->params, params, np * sizeof params[0]);
        req->nparams = np;
        return EMU_MATCH_OK;
    }
    return path_seen ? EMU_MATCH_NO_METHOD : EMU_MATCH_NO_PATH;
}

void emu_router_send_nomatch(emu_req *req, emu_match_result m)
{
    char esc[200], mesc[80];
    emu_log_escape(req->path, 120, esc, sizeof esc);
    emu_log_escape(req->method, 40, mesc, sizeof mesc);
    if (m == EMU_MATCH_BAD_ENCODING)
        emu_send_error(req, 400, "BadRequest",
                       "The request's path, query or Host is not valid UTF-8 once "
                       "percent-decoded.");
    else if (m == EMU_MATCH_NO_METHOD)
        emu_send_error(req, 405, "MethodNotAllowed", "The method %s is not allowed on %s.", mesc,
                       esc);
    else
        emu_send_error(req, 404, "NotFound", "No API answers at path %s.", esc);
}

void emu_route_run(emu_req *req)
{
    const emu_route *rt = req->route;
    if (rt->precheck && !req->prechecked && !req->responded)
        rt->precheck(req, rt->ud);
    req->prechecked = true;
    if (!req->responded)
        rt->handler(req, rt->ud);
    if (!req->responded) {
        emu_log(EMU_LOG_ERROR, "http", "handler for %s %s sent no response", req->method,
                rt->pattern);
        emu_send_error(req, 500, "InternalError", "The handler produced no response.");
    }
}

void emu_router_dispatch(const emu_router *r, emu_req *req)
{
    emu_match_result m = emu_router_match(r, req);
    if (m != EMU_MATCH_OK) {
        emu_router_send_nomatch(req, m);
        return;
    }
    emu_route_run(req);
}
