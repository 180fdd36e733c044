/*
 * bench_int: what bench.c (driver, output) and bench_ops.c (the operation table) share.
 *
 * Threads: one hx_bench per run, read-only while workers run except `stop` (atomic) and the
 * first-error slot (under err_lock). One hx_bench_worker per connection, owned by its thread;
 * the driver reads only its atomic counters until the thread is joined.
 */
#ifndef CMKH_BENCH_INT_H
#define CMKH_BENCH_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

#include "histo.h"

#define HX_BENCH_API "api-version=7.5"
#define HX_BENCH_MAX_OPS 16      /* size of the operation table */
#define HX_BENCH_RECORD_IDS 64   /* record-write: ids each worker cycles through */
#define HX_BENCH_BODY_MAX 65536  /* response bytes kept per request (more are dropped) */
#define HX_BENCH_ERRBODY_MAX 600 /* bytes of the first error body printed */
#define HX_BENCH_PAYLOAD 32      /* bytes wrapped/unwrapped: a data key */

typedef struct hx_bench hx_bench;
typedef struct hx_bench_worker hx_bench_worker;

/* One keep-alive HTTPS connection (a reused libcurl easy handle). */
typedef struct {
    CURL *curl;
    struct curl_slist *headers;
    char *body; /* response body, NUL-terminated, at most HX_BENCH_BODY_MAX bytes */
    size_t len, cap;
    char errbuf[CURL_ERROR_SIZE];
    long new_connections; /* connections opened by requests on this handle */
} hx_bconn;

/* One request as built by an operation. */
typedef struct {
    const char *method; /* "GET", "POST", "DELETE" */
    char path[512];     /* appended to the base URL (includes the query), or an absolute URL */
    char body[4096];    /* "" = no body */
    int op;             /* index in the table of the operation actually done (mixed picks) */
} hx_bench_req;

typedef enum {
    HX_NEED_KEY = 1,      /* the run creates (or is given) an RSA key */
    HX_NEED_WRAPPED = 2,  /* ... and wraps a value under it once, for unwrap */
    HX_NEED_RECORD = 4,   /* a record of --record-size bytes in the --env environment */
    HX_NEED_IMPORT = 8,   /* a client-side RSA-2048 key as an import body (JWK with d, p, q) */
    HX_NEED_LASTPAGE = 16 /* the URL of the last page of the key's versions (nextLinks walked) */
} hx_bench_needs;

typedef enum { HX_CEIL_NONE = 0, HX_CEIL_UNWRAP, HX_CEIL_WRAP, HX_CEIL_CREATE } hx_ceil_kind;

/* One row of the operation table. build fills a request; check (optional) validates a 2xx
 * body (1 = fine); cleanup (optional) runs once after all phases on the driver's connection. */
typedef struct {
    const char *name;
    const char *help;
    unsigned needs;
    hx_ceil_kind ceiling;
    int (*build)(hx_bench_worker *w, hx_bench_req *rq);
    int (*check)(hx_bench_worker *w, const hx_bench_req *rq, const char *body, size_t len);
    void (*cleanup)(hx_bench *b, hx_bconn *c, hx_bench_worker *workers, unsigned n);
} hx_bench_op;

struct hx_bench_worker {
    hx_bench *b;
    const hx_bench_op *op;
    unsigned index;
    pthread_t tid;
    int started;
    hx_bconn conn;
    hx_histo histo;
    atomic_ulong ops, errors;                /* read by the progress line */
    unsigned long sub_ops[HX_BENCH_MAX_OPS]; /* per table row (mixed) */
    unsigned long created;                   /* create: names cmkbench-RUN-cI-0..created-1;
                                                record-write: records written (ids cycle) */
    atomic_int *stop;                        /* the flag this worker's group stops on */
    uint64_t rng;
    double t0, t1; /* active interval, monotonic seconds */
    long connections;
};

struct hx_bench {
    /* options, fixed before workers start */
    const char *base_url; /* without trailing '/' */
    const char *ca;
    const char *alg;   /* "RSA-OAEP" or "RSA-OAEP-256" */
    char *auth_header; /* "Authorization: Bearer ..." (malloc'd) */
    char key[128];
    char run_id[17];
    char plain_b64[64]; /* base64url of the value wrapped at set-up */
    char wrapped[1100]; /* its wrapKey result, base64url */
    char env_base[256]; /* https://{env}.crm.localhost:PORT (records) */
    char record_id[40]; /* the record read by record-read */
    size_t record_size; /* bytes of the records' description field */
    char *filler;       /* record_size 'x' characters (malloc'd) */
    char *import_body;  /* {"key": {JWK with the private parts}} (malloc'd, wiped) */
    char lastpage[1024]; /* absolute URL of the last versions page */
    unsigned long count; /* stop each phase after this many requests (0 = by duration) */
    atomic_ulong tickets; /* requests started in the phase, when count is set */
    int use_curl;         /* --client curl: a libcurl handle and a thread per connection */
    atomic_int stop;      /* the measured group */
    atomic_int bg_stop;   /* the background group (--background) */
    /* first failed request of the run */
    pthread_mutex_t err_lock;
    int have_error;
    long err_status; /* 0 = transport error */
    char err_what[1024];
    char err_body[HX_BENCH_ERRBODY_MAX + 1];
};

/* The table (bench_ops.c). */
const hx_bench_op *hx_bench_op_find(const char *name);
const hx_bench_op *hx_bench_op_at(size_t i); /* NULL past the end */
size_t hx_bench_op_index(const hx_bench_op *op);

/* Connections (bench_ops.c). init: 0 on success, else -1 with c->errbuf set. */
int hx_bconn_init(hx_bconn *c, const hx_bench *b);
void hx_bconn_cleanup(hx_bconn *c);
/* Sends one request; returns the HTTP status, 0 on a transport error (c->errbuf says why).
 * body NULL or "" = none. The response body is in c->body / c->len. */
long hx_bconn_do(hx_bconn *c, const char *base_url, const char *method, const char *path,
                 const char *body);

/* CLOCK_MONOTONIC in seconds (bench.c). */
double hx_now_s(void);

/* Records the first failed request of the run (bench.c): status 0 = transport error described
 * by transport_err; bad_body = a 2xx whose body the operation's check refused. */
void hx_bench_note_error(hx_bench *b, const hx_bench_req *rq, long status,
                         const char *transport_err, const char *body, int bad_body);

/* The event-loop client (bench_loop.c): runs workers[0..n), one keep-alive connection each,
 * from the calling thread until each has stopped (its stop flag, or the tickets of b->count).
 * Every connection opens and does one health request before the loop waits on start (a
 * barrier of two: this thread and the driver). -1 when the TLS context cannot be made. */
int hx_loop_run(hx_bench *b, hx_bench_worker *workers, unsigned n, pthread_barrier_t *start);

/* The record id a record-write worker uses for its n-th write (a GUID per run/worker/slot). */
void hx_bench_record_guid(const hx_bench *b, unsigned worker, unsigned long slot, char *out,
                          size_t cap);

/* base64url without padding of len bytes into out (cap >= 4 * len / 3 + 4). */
void hx_b64url(const uint8_t *in, size_t len, char *out, size_t cap);

#endif
