/*
 * http: the HTTPS server (libmicrohttpd with GnuTLS inside, epoll thread pool sized to the
 * cores, TLS 1.2+). It turns a connection into an emu_req, enforces the input bounds
 * (header count 431, body size 413), runs the route's precheck when the headers are in,
 * and runs the handler either on the event thread (cheap routes) or on the worker pool with
 * the connection suspended (EMU_ROUTE_SLOW).
 */
#ifndef CMKEMU_HTTP_H
#define CMKEMU_HTTP_H

#include <stddef.h>

#include "router.h"
#include "store.h"
#include "workers.h"

typedef struct {
    const char *host; /* numeric or "localhost" */
    int port;         /* 0 = any free port */
    int threads;      /* event threads */
    const char *cert_pem, *key_pem;
    long max_body, max_headers, max_json_depth;
    const emu_router *router;
    emu_workers *workers;
    /* When set, a handler's commits are acknowledged only once durable: the answer is held
     * (connection suspended) until the store's group sync covers them; if they were in a batch
     * that failed to commit, the answer becomes 503 StoreUnavailable. May be NULL. */
    emu_store *store;
    /* Called once per answered request (any thread), after the response is final: the audit
     * log. May be NULL. */
    void (*on_complete)(emu_req *req, void *ud);
    void *on_complete_ud;
    /* Called once per matched request when its body is in, before the handler (any event
     * thread): may answer req (the handler then does not run) or set *delay_ms > 0 to hold the
     * request that long first (the connection is suspended and resumed by a timer thread, so
     * no event thread waits). Injected faults. May be NULL. */
    void (*gate)(emu_req *req, void *ud, long *delay_ms);
    void *gate_ud;
    /* Seconds of inactivity after which a connection is closed (slow clients); 0 = 60. */
    long connection_timeout;
} emu_http_config;

typedef struct emu_http emu_http;

emu_http *emu_http_start(const emu_http_config *cfg, char *err, size_t errlen);
int emu_http_port(const emu_http *h);
/* Stops accepting, closes connections, frees. NULL is a no-op. */
void emu_http_stop(emu_http *h);

#endif
