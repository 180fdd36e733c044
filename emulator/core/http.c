#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <gnutls/gnutls.h>
#include <microhttpd.h>

#include "log.h"
#include "util.h"

/* Answers up to this size leave as one TLS record (see queue). */
#define CORK_MAX 12288

#define TLS_PRIORITIES                                                                        \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:"       \
    "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-RSA:-DHE-RSA"

/* A request held back by the gate (injected latency), resumed by the delay thread. */
typedef struct held {
    struct held *next;
    struct timespec due; /* CLOCK_MONOTONIC */
    struct MHD_Connection *conn;
} held;

struct emu_http {
    struct MHD_Daemon *daemon;
    emu_http_config cfg;
    int port;
    /* The delay thread: held requests sorted by due time. Guarded by delay_lock; the
     * connections are suspended, so no event thread waits for them. */
    pthread_mutex_t delay_lock;
    pthread_cond_t delay_cv;
    held *delayed;
    bool delay_stop, delay_started;
    pthread_t delay_thread;
};

enum { PH_NEW = 0, PH_BODY, PH_DELAYED, PH_WORKER, PH_READY };

typedef struct conn_state {
    emu_http *srv;
    struct MHD_Connection *conn;
    char *uri;
    emu_req *req;
    int phase;
    char *body;
    size_t len, cap;
    bool too_large;
    size_t header_count;
    bool queued; /* a response was handed to MHD */
    bool ended;  /* the whole request (body included) has been read */
    gnutls_session_t corked; /* the answer is held in GnuTLS until on_completed */
    struct timespec start;
} conn_state;

static void *uri_logger(void *cls, const char *uri, struct MHD_Connection *con)
{
    conn_state *s = emu_xcalloc(1, sizeof *s);
    s->srv = cls;
    s->conn = con;
    s->uri = emu_xstrdup(uri ? uri : "/");
    clock_gettime(CLOCK_MONOTONIC, &s->start);
    return s;
}

static enum MHD_Result copy_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    conn_state *s = cls;
    s->header_count++;
    if (s->header_count <= (size_t)s->srv->cfg.max_headers)
        emu_req_add_header(s->req, key, value);
    return MHD_YES;
}

static enum MHD_Result queue(conn_state *s)
{
    emu_req *req = s->req;
    struct MHD_Response *r = MHD_create_response_from_buffer(
        req->resp_len, req->resp_body ? req->resp_body : (char *)"", MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    if (req->resp_body)
        MHD_add_response_header(r, "Content-Type", req->resp_type);
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    for (emu_resp_header *h = req->resp_headers; h; h = h->next)
        MHD_add_response_header(r, h->name, h->value);
    /* One TLS record for headers and body: libmicrohttpd hands GnuTLS the headers and the body
     * in two sends, which become two records, two sendmsg calls here and two or four reads in
     * the client. Corked, GnuTLS keeps both and on_completed sends them as one record. Only
     * for a small answer to a request read to its end (an early answer closes the connection
     * with a body still coming). */
    if (s->ended && req->resp_len <= CORK_MAX) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(s->conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
        if (ci && ci->tls_session) {
            s->corked = (gnutls_session_t)ci->tls_session;
            gnutls_record_cork(s->corked);
        }
    }
    enum MHD_Result ret = MHD_queue_response(s->conn, (unsigned)req->status, r);
    s->queued = true;
    if (s->srv->cfg.on_complete)
        s->srv->cfg.on_complete(req, s->srv->cfg.on_complete_ud);
    MHD_destroy_response(r);
    if (emu_log_min_level <= EMU_LOG_DEBUG) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double ms = (double)(now.tv_sec - s->start.tv_sec) * 1e3 +
                    (double)(now.tv_nsec - s->start.tv_nsec) / 1e6;
        char esc[300];
        emu_log_escape(req->path, 200, esc, sizeof esc);
        emu_log(EMU_LOG_DEBUG, "http", "%s %s -> %d (%.2f ms)", req->method, esc, req->status, ms);
    }
    return ret;
}

/* Runs the handler; a commit it made is acknowledged only once durable (group commit in the
 * store): returns the commit to wait for, 0 when the answer may go at once. */
static uint64_t run_route(conn_state *s)
{
    emu_store *store = s->srv->cfg.store;
    if (store)
        emu_store_defer_begin(store);
    emu_route_run(s->req);
    s->phase = PH_READY;
    return store ? emu_store_defer_end() : 0;
}

/* The handler's writes were in a batch that could not be committed: nothing of them is
 * stored, so its answer is replaced. */
static void answer_not_stored(conn_state *s)
{
    emu_resp_reset(s->req);
    emu_resp_header_add(s->req, "Retry-After", "1");
    emu_send_error(s->req, 503, "StoreUnavailable",
                   "The emulator could not commit this write to its store (see its log); "
                   "nothing of it was stored. Try again.");
}

static void resume_durable(void *arg, bool ok)
{
    conn_state *s = arg;
    if (!ok)
        answer_not_stored(s);
    MHD_resume_connection(s->conn);
}

/* Resumes the suspended connection once commit seq (0: none) is durable, now or from the
 * store's sync thread, with the handler's answer or, if its batch failed, a 503. */
static void resume_when_durable(conn_state *s, uint64_t seq)
{
    if (seq) {
        emu_store_durability d = emu_store_when_durable(s->srv->cfg.store, seq, resume_durable, s);
        if (d == EMU_STORE_LATER)
            return;
        if (d == EMU_STORE_FAILED)
            answer_not_stored(s);
    }
    MHD_resume_connection(s->conn);
}

static void run_slow(void *arg)
{
    conn_state *s = arg;
    resume_when_durable(s, run_route(s));
}

static void *delay_main(void *arg)
{
    emu_http *h = arg;
    pthread_mutex_lock(&h->delay_lock);
    for (;;) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        held *d = h->delayed;
        bool due = d && (h->delay_stop || d->due.tv_sec < now.tv_sec ||
                         (d->due.tv_sec == now.tv_sec && d->due.tv_nsec <= now.tv_nsec));
        if (due) {
            h->delayed = d->next;
            pthread_mutex_unlock(&h->delay_lock);
            MHD_resume_connection(d->conn);
            free(d);
            pthread_mutex_lock(&h->delay_lock);
            continue;
        }
        if (h->delay_stop)
            break;
        if (d)
            pthread_cond_timedwait(&h->delay_cv, &h->delay_lock, &d->due);
        else
            pthread_cond_wait(&h->delay_cv, &h->delay_lock);
    }
    pthread_mutex_unlock(&h->delay_lock);
    return NULL;
}

/* Suspends the connection and has the delay thread resume it after ms. */
static void hold(conn_state *s, long ms)
{
    emu_http *h = s->srv;
    held *d = emu_xcalloc(1, sizeof *d);
    d->conn = s->conn;
    clock_gettime(CLOCK_MONOTONIC, &d->due);
    d->due.tv_sec += ms / 1000;
    d->due.tv_nsec += (ms % 1000) * 1000000L;
    if (d->due.tv_nsec >= 1000000000L) {
        d->due.tv_sec++;
        d->due.tv_nsec -= 1000000000L;
    }
    s->phase = PH_DELAYED;
    MHD_suspend_connection(s->conn);
    pthread_mutex_lock(&h->delay_lock);
    held **pp = &h->delayed;
    while (*pp && ((*pp)->due.tv_sec < d->due.tv_sec ||
                   ((*pp)->due.tv_sec == d->due.tv_sec && (*pp)->due.tv_nsec <= d->due.tv_nsec)))
        pp = &(*pp)->next;
    d->next = *pp;
    *pp = d;
    pthread_cond_signal(&h->delay_cv);
    pthread_mutex_unlock(&h->delay_lock);
}

/* Runs the matched route with the body in: on the worker pool (slow routes) or here, and
 * holds the answer until its commit is durable. */
static enum MHD_Result dispatch(conn_state *s)
{
    emu_http *srv = s->srv;
    struct MHD_Connection *conn = s->conn;
    const emu_route *rt = s->req->route;
    if ((rt->flags & EMU_ROUTE_SLOW) && srv->cfg.workers) {
        s->phase = PH_WORKER;
        MHD_suspend_connection(conn);
        emu_workers_submit(srv->cfg.workers, run_slow, s);
        return MHD_YES;
    }
    uint64_t seq = run_route(s);
    if (seq) {
        MHD_suspend_connection(conn); /* first: the sync thread may resume it at once */
        resume_when_durable(s, seq);
        return MHD_YES;
    }
    return queue(s);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    emu_http *srv = cls;
    conn_state *s = *con_cls;
    if (!s) { /* no URI logger call (should not happen) */
        s = uri_logger(srv, url, conn);
        *con_cls = s;
    }
    if (s->phase == PH_NEW) {
        s->req = emu_req_new(method, s->uri);
        s->req->max_json_depth = srv->cfg.max_json_depth;
        MHD_get_connection_values(conn, MHD_HEADER_KIND, copy_header, s);
        s->phase = PH_BODY;
        if (s->header_count > (size_t)srv->cfg.max_headers) {
            emu_send_error(s->req, 431, "RequestHeaderFieldsTooLarge",
                           "The request has %zu headers; at most %ld are accepted.",
                           s->header_count, srv->cfg.max_headers);
            return queue(s);
        }
        const char *cl = emu_req_header(s->req, "Content-Length");
        int64_t clen;
        if (cl && emu_parse_i64(cl, 0, INT64_MAX, &clen) && clen > srv->cfg.max_body) {
            emu_send_error(s->req, 413, "RequestEntityTooLarge",
                           "The request body has %lld bytes; at most %ld are accepted.",
                           (long long)clen, srv->cfg.max_body);
            return queue(s);
        }
        if (s->req->query_overflow) {
            emu_send_error(s->req, 400, "BadParameter",
                           "The query string has more than %d parameters.", EMU_MAX_QUERY);
            return queue(s);
        }
        emu_match_result m = emu_router_match(srv->cfg.router, s->req);
        if (m != EMU_MATCH_OK) {
            emu_router_send_nomatch(s->req, m);
            return queue(s);
        }
        const emu_route *rt = s->req->route;
        if (rt->precheck) {
            rt->precheck(s->req, rt->ud);
            s->req->prechecked = true;
            /* Answer before the body is read only when a body is coming (MHD then closes
             * the connection); a body-less request is answered at its end, keeping the
             * connection alive for the client's retry with a token. */
            const char *te = emu_req_header(s->req, "Transfer-Encoding");
            bool body_coming = te || (cl && emu_parse_i64(cl, 1, INT64_MAX, &clen));
            if (s->req->responded && body_coming)
                return queue(s);
        }
        return MHD_YES;
    }
    if (s->phase == PH_BODY) {
        if (*upload_data_size) {
            size_t n = *upload_data_size;
            *upload_data_size = 0;
            if (s->too_large || s->len + n > (size_t)srv->cfg.max_body) {
                s->too_large = true;
                return MHD_YES;
            }
            if (s->len + n > s->cap) {
                s->cap = (s->len + n) * 2;
                if (s->cap > (size_t)srv->cfg.max_body)
                    s->cap = (size_t)srv->cfg.max_body;
                s->body = emu_xrealloc(s->body, s->cap);
            }
            memcpy(s->body + s->len, upload_data, n);
            s->len += n;
            return MHD_YES;
        }
        s->ended = true;
        if (s->queued) /* answered before the body (413, 401): nothing more */
            return MHD_YES;
        if (s->req->responded) /* precheck answered a body-less request */
            return queue(s);
        if (s->too_large) {
            emu_send_error(s->req, 413, "RequestEntityTooLarge",
                           "The request body is larger than %ld bytes.", srv->cfg.max_body);
            return queue(s);
        }
        emu_req_set_body(s->req, s->body, s->len);
        if (srv->cfg.gate) {
            long delay_ms = 0;
            srv->cfg.gate(s->req, srv->cfg.gate_ud, &delay_ms);
            if (delay_ms > 0) {
                hold(s, delay_ms);
                return MHD_YES;
            }
            if (s->req->responded)
                return queue(s);
        }
        return dispatch(s);
    }
    if (s->phase == PH_DELAYED) /* the delay is over */
        return s->req->responded ? queue(s) : dispatch(s);
    if (s->phase == PH_READY)
        return queue(s);
    /* PH_WORKER: resumed before the job finished cannot happen; keep waiting */
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    conn_state *s = *con_cls;
    if (!s)
        return;
    if (s->corked) {
        /* libmicrohttpd has "sent" the answer into the cork: it leaves now, as one record.
         * The socket buffer is empty but for answers the client has not read; one that does
         * not read at all, so that even this cannot go out, loses its connection. */
        int r = gnutls_record_uncork(s->corked, 0);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci && r < 0 && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) {
            shutdown(ci->connect_fd, SHUT_RDWR);
        } else if (ci) {
            /* libmicrohttpd leaves the TCP socket corked here: its own sends went into the
             * GnuTLS cork, so its push never reached the socket. Without this the record
             * waited for the kernel's 200 ms cork timeout. */
            int off = 0;
            setsockopt(ci->connect_fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
        }
    }
    emu_req_free(s->req);
    free(s->body);
    free(s->uri);
    free(s);
    *con_cls = NULL;
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    if (emu_log_min_level > EMU_LOG_DEBUG)
        return;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n'))
        msg[--n] = '\0';
    emu_log(EMU_LOG_DEBUG, "mhd", "%s", msg);
}

emu_http *emu_http_start(const emu_http_config *cfg, char *err, size_t errlen)
{
    emu_http *h = emu_xcalloc(1, sizeof *h);
    h->cfg = *cfg;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    /* poll(), not epoll, and no MHD_USE_TURBO: with libmicrohttpd 0.9.75 + GnuTLS a client
     * that stops half way through the TLS handshake made the event thread spin (epoll: ~50%
     * CPU until the connection timeout; turbo: a full spin that never timed out, even after
     * the client left). poll() costs nothing measurable at these connection counts
     * (tests/test_serve_faults.c, README "Faults and throttling"). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_TLS |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    const char *host = cfg->host;
    if (!strcmp(host, "localhost"))
        host = "127.0.0.1";
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)cfg->port);
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)cfg->port);
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, errlen, "--listen: '%s' is not a numeric address or localhost", cfg->host);
        free(h);
        return NULL;
    }
    int threads = cfg->threads < 1 ? 1 : cfg->threads;
    unsigned timeout = cfg->connection_timeout > 0 ? (unsigned)cfg->connection_timeout : 60;
    pthread_mutex_init(&h->delay_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->delay_cv, &ca);
    pthread_condattr_destroy(&ca);
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, &ss,
        MHD_OPTION_HTTPS_MEM_KEY, cfg->key_pem, MHD_OPTION_HTTPS_MEM_CERT, cfg->cert_pem,
        MHD_OPTION_HTTPS_PRIORITIES, TLS_PRIORITIES, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)threads, MHD_OPTION_URI_LOG_CALLBACK, uri_logger, h,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_CONNECTION_TIMEOUT,
        timeout, MHD_OPTION_CONNECTION_LIMIT, (unsigned)4096,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024), MHD_OPTION_EXTERNAL_LOGGER,
        mhd_logger, NULL, MHD_OPTION_END);
    if (!h->daemon) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use, or not allowed)",
                 cfg->host, cfg->port);
        pthread_cond_destroy(&h->delay_cv);
        pthread_mutex_destroy(&h->delay_lock);
        free(h);
        return NULL;
    }
    h->delay_started = pthread_create(&h->delay_thread, NULL, delay_main, h) == 0;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : cfg->port;
    return h;
}

int emu_http_port(const emu_http *h)
{
    return h->port;
}

void emu_http_stop(emu_http *h)
{
    if (!h)
        return;
    /* held requests are resumed (and answered) before the daemon stops */
    pthread_mutex_lock(&h->delay_lock);
    h->delay_stop = true;
    pthread_cond_signal(&h->delay_cv);
    pthread_mutex_unlock(&h->delay_lock);
    if (h->delay_started)
        pthread_join(h->delay_thread, NULL);
    MHD_stop_daemon(h->daemon);
    pthread_cond_destroy(&h->delay_cv);
    pthread_mutex_destroy(&h->delay_lock);
    free(h);
}
