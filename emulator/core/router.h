/*
 * router: method + path pattern -> handler. Patterns are '/'-separated segments: literals
 * (matched case-insensitively after percent-decoding), "{name}" (one non-empty segment,
 * captured decoded) and a final "{*}" (the rest, captured). Routes are tried in the order
 * they were added: add specific patterns first.
 *
 * A route may have a precheck, run when the headers are in and before the body is read
 * (the Key Vault 401 challenge); if it sends a response the handler is not called.
 * EMU_ROUTE_SLOW handlers (private-key work, key generation) run on the worker pool.
 */
#ifndef CMKEMU_ROUTER_H
#define CMKEMU_ROUTER_H

#include "req.h"

typedef void (*emu_handler_fn)(emu_req *req, void *ud);

enum { EMU_ROUTE_SLOW = 1 };

typedef struct emu_route {
    const char *method;
    const char *pattern;
    unsigned flags;
    emu_handler_fn precheck; /* may be NULL */
    emu_handler_fn handler;
    void *ud;
} emu_route;

typedef struct emu_router emu_router;

emu_router *emu_router_new(void);
void emu_router_free(emu_router *r);
/* pattern and method must outlive the router (string literals). */
void emu_router_add(emu_router *r, const char *method, const char *pattern, unsigned flags,
                    emu_handler_fn precheck, emu_handler_fn handler, void *ud);

typedef enum {
    EMU_MATCH_OK,
    EMU_MATCH_NO_PATH,
    EMU_MATCH_NO_METHOD,
    EMU_MATCH_BAD_ENCODING, /* a query parameter, the Host or a capture is not UTF-8 */
} emu_match_result;
/* Matches req->method/req->path; on OK sets req->route and req->params. Text that is not
 * UTF-8 once decoded (query, Host, the captures of the matching route) is refused before any
 * handler sees it: JSON cannot carry it, and handlers echo those strings into their answers. */
emu_match_result emu_router_match(const emu_router *r, emu_req *req);

/* Sends the 404/405 answer for a failed match. */
void emu_router_send_nomatch(emu_req *req, emu_match_result m);

/* In-process dispatch (tests, and the server once the body is in): match, precheck,
 * handler. Always leaves a response in req. */
void emu_router_dispatch(const emu_router *r, emu_req *req);
/* Runs precheck (if any) then handler of the already matched route. */
void emu_route_run(emu_req *req);

#endif
