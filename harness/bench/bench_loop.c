/*
 * bench_loop.c: the bench's load generator. One thread drives a group of workers, each one
 * keep-alive HTTPS connection, with epoll and OpenSSL directly (read-ahead on, so a response
 * sent as two TLS records usually costs one recv).
 *
 * Why not libcurl here: the load generator runs on the same two cores as the emulator, so its
 * own cost is taken from the server. With one blocking libcurl handle per thread a request cost
 * the generator about 40 us (5 recv, 5 poll, a send and two context switches); this loop costs
 * about a third of that. libcurl still does the set-up and clean-up requests (bench.c) and is
 * kept as `--client curl` to compare.
 *
 * Per connection: build a request (the operation's build), write it, read until the response
 * is complete (Content-Length), check it, record its latency, and start the next one. A
 * connection stops after its in-flight request once its group's stop flag is set (or the
 * tickets of --count are gone). A request whose URL names another host (records live on the
 * environment's host) reconnects, as libcurl would.
 */
#include "bench_int.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define LOOP_TIMEOUT_S 120.0 /* a request without an answer for this long is a transport error */
#define LOOP_MAX_RESPONSE (64u * 1024 * 1024)

typedef struct {
    hx_bench_worker *w;
    int fd;
    SSL *ssl;
    char host[256]; /* the authority connected to; "" = not connected */
    char port[8];
    char *out; /* the request being written */
    size_t out_len, out_off, out_cap;
    char *in; /* the response being read; NUL-terminated */
    size_t in_len, in_cap;
    size_t hdr_end;   /* 0 = headers not complete yet */
    size_t body_len;  /* Content-Length */
    long status;
    int close_after;  /* Connection: close */
    int busy;         /* a request is in flight */
    int done;         /* stopped */
    int want_out;     /* EPOLLOUT registered (a write would block) */
    hx_bench_req rq;
    double t0;
    char err[256];
} conn;

static void conn_close(conn *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->host[0] = '\0';
    c->want_out = 0;
}

/* "https://host:port/path..." or a path: the authority (host, port) and the path. */
static int split_url(const char *base, const char *path, char *host, size_t hcap, char *port,
                     size_t pcap, const char **rest)
{
    const char *u = strncmp(path, "https://", 8) ? base : path;
    const char *a, *end, *colon;
    size_t hl;

    if (strncmp(u, "https://", 8) != 0)
        return -1;
    a = u + 8;
    end = a + strcspn(a, "/?");
    if (*a == '[') { /* [v6]:port */
        const char *rb = memchr(a, ']', (size_t)(end - a));
        if (!rb)
            return -1;
        colon = rb[1] == ':' ? rb + 1 : NULL;
        a++;
        hl = (size_t)(rb - a);
    } else {
        colon = memchr(a, ':', (size_t)(end - a));
        hl = (size_t)((colon ? colon : end) - a);
    }
    if (hl == 0 || hl >= hcap)
        return -1;
    memcpy(host, a, hl);
    host[hl] = '\0';
    if (colon) {
        size_t pl = (size_t)(end - colon - 1);
        if (pl == 0 || pl >= pcap)
            return -1;
        memcpy(port, colon + 1, pl);
        port[pl] = '\0';
    } else {
        snprintf(port, pcap, "443");
    }
    *rest = u == base ? path : (*end ? end : "/");
    return 0;
}

/* Blocking TCP connect and TLS handshake to host:port; *.localhost resolves as localhost. */
static int conn_open(conn *c, SSL_CTX *ctx, const char *host, const char *port)
{
    struct addrinfo hints, *res = NULL, *ai;
    const char *name = host;
    size_t hl = strlen(host);
    int one = 1, rc;

    conn_close(c);
    if (hl > 10 && !strcasecmp(host + hl - 10, ".localhost"))
        name = "localhost";
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(name, port, &hints, &res);
    if (rc != 0) {
        snprintf(c->err, sizeof(c->err), "resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (c->fd < 0)
            continue;
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(c->fd);
        c->fd = -1;
    }
    freeaddrinfo(res);
    if (c->fd < 0) {
        snprintf(c->err, sizeof(c->err), "connect %s:%s: %s", host, port, strerror(errno));
        return -1;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1 || SSL_set1_host(c->ssl, host) != 1 ||
        SSL_set_tlsext_host_name(c->ssl, host) != 1) {
        snprintf(c->err, sizeof(c->err), "TLS set-up failed");
        conn_close(c);
        return -1;
    }
    if (SSL_connect(c->ssl) != 1) {
        unsigned long e = ERR_get_error();
        long vr = SSL_get_verify_result(c->ssl);
        snprintf(c->err, sizeof(c->err), "TLS handshake with %s:%s: %s%s%s", host, port,
                 e ? ERR_reason_error_string(e) : "failed", vr != X509_V_OK ? ": " : "",
                 vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
        ERR_clear_error();
        conn_close(c);
        return -1;
    }
    snprintf(c->host, sizeof(c->host), "%s", host);
    snprintf(c->port, sizeof(c->port), "%s", port);
    return 0;
}

static int reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 4096;
    while (nc < need)
        nc *= 2;
    char *nb = realloc(*buf, nc);
    if (!nb)
        return -1;
    *buf = nb;
    *cap = nc;
    return 0;
}

/* Formats the request line, headers and body into c->out, and empties c->in for the answer. */
static int conn_format(conn *c, const hx_bench *b, const char *path)
{
    size_t blen = strlen(c->rq.body);
    int has_port = strcmp(c->port, "443") != 0;
    char clen[48] = "";

    if (blen || strcmp(c->rq.method, "GET"))
        snprintf(clen, sizeof(clen), "Content-Length: %zu\r\n", blen);
    for (;;) {
        int n = snprintf(c->out, c->out_cap,
                         "%s %s HTTP/1.1\r\nHost: %s%s%s\r\n%s\r\n"
                         "Content-Type: application/json\r\nAccept: application/json\r\n"
                         "%s\r\n%s",
                         c->rq.method, path, c->host, has_port ? ":" : "",
                         has_port ? c->port : "", b->auth_header, clen, c->rq.body);
        if (n < 0)
            return -1;
        if ((size_t)n < c->out_cap) {
            c->out_len = (size_t)n;
            c->out_off = 0;
            c->in_len = 0; /* and nothing of the answer yet */
            c->in[0] = '\0';
            c->hdr_end = 0;
            return 0;
        }
        if (reserve(&c->out, &c->out_cap, (size_t)n + 1) != 0)
            return -1;
    }
}

/* Parses what has arrived: 1 = the response is complete, 0 = more to come, -1 = malformed. */
static int conn_parse(conn *c)
{
    if (!c->hdr_end) {
        char *e = strstr(c->in, "\r\n\r\n");
        const char *p;
        int have_len = 0;

        if (!e) {
            if (c->in_len <= 65536)
                return 0;
            snprintf(c->err, sizeof(c->err), "answer headers longer than 64 KiB");
            return -1;
        }
        c->hdr_end = (size_t)(e - c->in) + 4;
        if (c->hdr_end < 13 || strncmp(c->in, "HTTP/1.", 7) != 0 || c->in[8] != ' ') {
            snprintf(c->err, sizeof(c->err), "not an HTTP/1.x answer");
            return -1;
        }
        c->status = strtol(c->in + 9, NULL, 10);
        c->close_after = !strncmp(c->in, "HTTP/1.0", 8);
        c->body_len = 0;
        for (p = strstr(c->in, "\r\n"); p && p < e; p = strstr(p + 2, "\r\n")) {
            const char *h = p + 2;
            if (!strncasecmp(h, "Content-Length:", 15)) {
                c->body_len = (size_t)strtoull(h + 15, NULL, 10);
                have_len = 1;
            } else if (!strncasecmp(h, "Transfer-Encoding:", 18)) {
                snprintf(c->err, sizeof(c->err), "chunked responses are not supported");
                return -1;
            } else if (!strncasecmp(h, "Connection:", 11)) {
                const char *v = h + 11;
                while (*v == ' ')
                    v++;
                if (!strncasecmp(v, "close", 5))
                    c->close_after = 1;
            }
        }
        if (!have_len && c->status >= 200 && c->status != 204 && c->status != 304) {
            snprintf(c->err, sizeof(c->err), "a response without Content-Length");
            return -1;
        }
        if (c->body_len > LOOP_MAX_RESPONSE) {
            snprintf(c->err, sizeof(c->err), "a response of %zu bytes", c->body_len);
            return -1;
        }
    }
    return c->in_len >= c->hdr_end + c->body_len ? 1 : 0;
}

/* Reads what TLS has: 1 = response complete, 0 = would block, -1 = error or closed. */
static int conn_read(conn *c)
{
    for (;;) {
        size_t want = c->hdr_end ? c->hdr_end + c->body_len - c->in_len : 16384;
        if (want < 4096)
            want = 4096;
        if (reserve(&c->in, &c->in_cap, c->in_len + want + 1) != 0)
            abort(); /* out of memory */
        int n = SSL_read(c->ssl, c->in + c->in_len, (int)(c->in_cap - c->in_len - 1));
        if (n > 0) {
            c->in_len += (size_t)n;
            c->in[c->in_len] = '\0';
            int r = conn_parse(c);
            if (r != 0)
                return r;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return 0;
        snprintf(c->err, sizeof(c->err), "%s",
                 e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && n == 0)
                     ? "the server closed the connection"
                     : "TLS read failed");
        ERR_clear_error();
        return -1;
    }
}

/* Writes what is left of the request: 1 = all written, 0 = would block, -1 = error. */
static int conn_write(conn *c)
{
    while (c->out_off < c->out_len) {
        int n = SSL_write(c->ssl, c->out + c->out_off, (int)(c->out_len - c->out_off));
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return 0;
        snprintf(c->err, sizeof(c->err), "TLS write failed");
        ERR_clear_error();
        return -1;
    }
    return 1;
}

static void set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

typedef struct {
    hx_bench *b;
    SSL_CTX *ctx;
    int ep;
    conn *conns;
    unsigned n, active;
} loop;

static void watch(loop *l, conn *c, int op)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN | (c->want_out ? EPOLLOUT : 0u);
    ev.data.ptr = c;
    (void)epoll_ctl(l->ep, op, c->fd, &ev);
}

static void conn_stop(loop *l, conn *c)
{
    if (c->done)
        return;
    c->done = 1;
    c->busy = 0;
    c->w->t1 = hx_now_s();
    l->active--;
}

/* A complete response: checks it, counts it and records its latency. */
static void conn_finish(loop *l, conn *c)
{
    hx_bench *b = l->b;
    hx_bench_worker *w = c->w;
    const hx_bench_op *done = hx_bench_op_at((size_t)c->rq.op);
    double t1 = hx_now_s();
    char *body = c->in + c->hdr_end;
    int ok = c->status >= 200 && c->status < 300;

    c->busy = 0;
    body[c->body_len] = '\0'; /* nothing follows a response without pipelining */
    if (ok && done->check && !done->check(w, &c->rq, body, c->body_len)) {
        hx_bench_note_error(b, &c->rq, c->status, "", body, 1);
        atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
    } else if (!ok) {
        hx_bench_note_error(b, &c->rq, c->status, "", body, 0);
        atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
    } else {
        hx_histo_record(&w->histo, (uint64_t)((t1 - c->t0) * 1e6 + 0.5));
        w->sub_ops[c->rq.op]++;
        atomic_fetch_add_explicit(&w->ops, 1, memory_order_relaxed);
    }
    if (c->close_after)
        conn_close(c);
}

/* A request that failed in transport: counted, and the next one reconnects. */
static void conn_fail(loop *l, conn *c)
{
    atomic_fetch_add_explicit(&c->w->errors, 1, memory_order_relaxed);
    hx_bench_note_error(l->b, &c->rq, 0, c->err, "", 0);
    conn_close(c);
    c->busy = 0;
}

/* Sends the worker's next requests until one has to wait for the server, or the worker is
 * to stop. */
static void conn_next(loop *l, conn *c)
{
    hx_bench *b = l->b;
    hx_bench_worker *w = c->w;
    char host[256], port[8];
    const char *path;

    for (;;) {
        if (atomic_load_explicit(w->stop, memory_order_relaxed) ||
            (b->count && w->stop == &b->stop &&
             atomic_fetch_add_explicit(&b->tickets, 1, memory_order_relaxed) >= b->count)) {
            conn_stop(l, c);
            return;
        }
        memset(&c->rq, 0, sizeof(c->rq.method) + sizeof(c->rq.path));
        c->rq.op = (int)hx_bench_op_index(w->op);
        c->rq.body[0] = '\0';
        if (w->op->build(w, &c->rq) != 0) {
            atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
            hx_bench_note_error(b, &c->rq, 0, "the request could not be built", "", 0);
            conn_stop(l, c);
            return;
        }
        if (split_url(b->base_url, c->rq.path, host, sizeof(host), port, sizeof(port), &path) !=
            0) {
            atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
            hx_bench_note_error(b, &c->rq, 0, "a URL the bench client cannot parse", "", 0);
            conn_stop(l, c);
            return;
        }
        if (c->fd < 0 || strcmp(host, c->host) || strcmp(port, c->port)) {
            if (conn_open(c, l->ctx, host, port) != 0) {
                atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
                hx_bench_note_error(b, &c->rq, 0, c->err, "", 0);
                conn_stop(l, c); /* the server is gone: retrying would spin */
                return;
            }
            w->connections++;
            set_nonblocking(c->fd);
            watch(l, c, EPOLL_CTL_ADD);
        }
        if (conn_format(c, b, path) != 0)
            abort(); /* out of memory */
        c->busy = 1;
        c->t0 = hx_now_s();
        int r = conn_write(c);
        if (r == 0 && !c->want_out) {
            c->want_out = 1;
            watch(l, c, EPOLL_CTL_MOD);
        }
        /* data OpenSSL already holds does not wake epoll */
        if (r == 1 && SSL_has_pending(c->ssl)) {
            int rr = conn_read(c);
            r = rr == 1 ? 2 : rr < 0 ? -1 : 1;
        }
        if (r < 0) {
            conn_fail(l, c);
            continue;
        }
        if (r == 2) {
            conn_finish(l, c);
            continue;
        }
        return;
    }
}

/* epoll says the socket is ready. */
static void conn_event(loop *l, conn *c)
{
    int r;

    if (!c->busy) { /* a stopped connection closed by the server, or stray bytes */
        conn_close(c);
        return;
    }
    if (c->out_off < c->out_len) {
        r = conn_write(c);
        if (r < 0) {
            conn_fail(l, c);
            conn_next(l, c);
            return;
        }
        if (r == 0)
            return;
    }
    if (c->want_out) {
        c->want_out = 0;
        watch(l, c, EPOLL_CTL_MOD);
    }
    r = conn_read(c);
    if (r == 0)
        return;
    if (r < 0)
        conn_fail(l, c);
    else
        conn_finish(l, c);
    conn_next(l, c);
}

/* The warm-up outside the clock: opens the connection and does one health request. */
static void conn_warm(loop *l, conn *c)
{
    char host[256], port[8];
    const char *path;
    int r;

    if (split_url(l->b->base_url, "/_emulator/health", host, sizeof(host), port, sizeof(port),
                  &path) != 0 ||
        conn_open(c, l->ctx, host, port) != 0)
        return; /* the first measured request reconnects and reports */
    c->rq.method = "GET";
    c->rq.body[0] = '\0';
    if (conn_format(c, l->b, path) != 0)
        abort(); /* out of memory */
    do
        r = conn_write(c);
    while (r == 0);
    while (r == 1 && (r = conn_read(c)) == 0)
        ;
    if (r < 0 || c->close_after)
        conn_close(c);
}

static SSL_CTX *loop_tls(const char *ca)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (!ctx)
        return NULL;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if ((ca ? SSL_CTX_load_verify_locations(ctx, ca, NULL) : SSL_CTX_set_default_verify_paths(ctx)) !=
        1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return ctx;
}

int hx_loop_run(hx_bench *b, hx_bench_worker *workers, unsigned n, pthread_barrier_t *start)
{
    loop l = {.b = b, .n = n};
    struct epoll_event evs[64];
    double t_start, last_check;
    int rc = 0;

    l.ctx = loop_tls(b->ca);
    l.conns = calloc(n, sizeof(*l.conns));
    l.ep = epoll_create1(EPOLL_CLOEXEC);
    if (!l.ctx || !l.conns || l.ep < 0) {
        fprintf(stderr, "cmkharness bench: cannot set up the client (TLS context, CA file %s)\n",
                b->ca ? b->ca : "(system)");
        rc = -1;
    }
    for (unsigned i = 0; i < n && rc == 0; i++) {
        conn *c = &l.conns[i];
        c->w = &workers[i];
        c->fd = -1;
        if (reserve(&c->in, &c->in_cap, 16385) != 0 || reserve(&c->out, &c->out_cap, 8192) != 0)
            abort(); /* out of memory */
        conn_warm(&l, c);
        if (c->fd >= 0) {
            set_nonblocking(c->fd);
            watch(&l, c, EPOLL_CTL_ADD);
        }
    }
    pthread_barrier_wait(start); /* always: the driver waits on it too */
    t_start = last_check = hx_now_s();
    if (rc == 0) {
        l.active = n;
        for (unsigned i = 0; i < n; i++)
            workers[i].t0 = t_start;
        for (unsigned i = 0; i < n; i++)
            conn_next(&l, &l.conns[i]);
    }
    while (l.active > 0) {
        int k = epoll_wait(l.ep, evs, (int)(sizeof(evs) / sizeof(evs[0])), 100);
        for (int i = 0; i < k; i++)
            conn_event(&l, evs[i].data.ptr);
        double t = hx_now_s();
        if (t - last_check >= 1.0) {
            last_check = t;
            for (unsigned i = 0; i < n; i++) {
                conn *c = &l.conns[i];
                if (c->busy && t - c->t0 > LOOP_TIMEOUT_S) {
                    snprintf(c->err, sizeof(c->err), "no answer within %.0f s", LOOP_TIMEOUT_S);
                    conn_fail(&l, c);
                    conn_next(&l, c);
                }
            }
        }
    }
    for (unsigned i = 0; l.conns && i < n; i++) {
        conn_close(&l.conns[i]);
        free(l.conns[i].in);
        free(l.conns[i].out);
    }
    free(l.conns);
    if (l.ep >= 0)
        close(l.ep);
    SSL_CTX_free(l.ctx);
    return rc;
}
