/*
 * bench.c: `cmkharness bench`, a keep-alive HTTPS load generator for the emulator.
 *
 * One run: set-up on a driver connection (token, bench key, a value wrapped once), then one
 * measured phase per operation (the chosen one, then the --versus reference if any): N worker
 * threads, each with its own libcurl easy handle (one TLS connection reused throughout), each
 * doing requests back to back for the duration, recording latencies into a per-thread
 * histogram. Then cleanup (the bench key and created keys are deleted) and, with --ceiling,
 * the raw PKCS#11 rate of the same operation with the same thread count on a throw-away
 * SoftHSM token (pkcs11/ceiling.h), measured while the emulator is idle.
 *
 * Rates are the sum over workers of ops_i / active_time_i, so a slow last request (key
 * creation) does not dilute the others. The generator's own CPU use is measured with getrusage
 * over each phase and reported, so a saturated client is visible.
 */
#include "bench.h"
#include "bench_int.h"

#include "ceiling.h"

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BENCH_MAX_CONCURRENCY 256
#define BENCH_TICK_MS 250

typedef struct {
    const char *url, *op, *alg, *ca, *token, *key;
    const char *client_id, *client_secret, *tenant, *authority, *versus, *tmp_dir;
    const char *env, *background, *client;
    unsigned long concurrency, bg_concurrency, record_size, count;
    double duration;
    int json, ceiling, quiet;
} bench_opts;

/* Result of one measured phase. */
typedef struct {
    const hx_bench_op *op;
    unsigned long ops, errors, connections;
    double ops_per_s, wall_s, cpu_s;
    hx_histo histo;
    unsigned long sub_ops[HX_BENCH_MAX_OPS];
} phase_result;

double hx_now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Rounds to `places` decimals without libm (values here are small and non-negative). */
static double round_to(double v, int places)
{
    double scale = 1;

    for (int i = 0; i < places; i++)
        scale *= 10;
    return (double)(long long)(v * scale + (v >= 0 ? 0.5 : -0.5)) / scale;
}

static double cpu_s(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cmkharness bench --url URL [--op OP] [--concurrency N] [--duration S]\n"
               "                        [--alg RSA-OAEP|RSA-OAEP-256] [--ceiling] [--versus OP]\n"
               "                        [--ca FILE] [--token T | --client-id ID --client-secret S\n"
               "                        [--tenant T] [--authority URL]] [--key NAME] [--json]\n"
               "                        [--env ID] [--record-size BYTES] [--count N]\n"
               "                        [--background OP [--background-concurrency M]]\n"
               "                        [--client loop|curl]\n"
               "\n"
               "Keep-alive HTTPS load against the emulator: N connections, each one thread doing\n"
               "requests back to back for S seconds; prints ops/s and latency p50/p90/p99/p99.9.\n"
               "  --ceiling      also measure the raw PKCS#11 rate of the same operation with N\n"
               "                 threads on a throw-away SoftHSM token; prints emulator/ceiling\n"
               "  --versus OP    also measure OP (e.g. health) the same way; prints the ratio\n"
               "  --key NAME     use this existing key (default: create one, delete it after)\n"
               "  --env ID       environment of record-read/record-write (default: the demo\n"
               "                 world's Contoso Production); --record-size (default 1024)\n"
               "  --count N      stop after N requests in all (--duration still caps the time)\n"
               "  --background OP2  measure --op alone (idle), then again while M more\n"
               "                 connections run OP2 back to back; prints loaded / idle\n"
               "  --json         one JSON object on stdout instead of the text report\n"
               "  --client loop|curl  load generator: one epoll thread on OpenSSL (default), or\n"
               "                 a libcurl handle and a thread per connection (the old one)\n"
               "defaults: --op unwrap --concurrency 2 --duration 10 --alg RSA-OAEP-256; without a\n"
               "token a fixed opaque bearer token is sent (accepted in permissive auth mode).\n"
               "operations:\n");
    for (size_t i = 0; hx_bench_op_at(i); i++) {
        const hx_bench_op *op = hx_bench_op_at(i);
        fprintf(f, "  %-8s %s%s\n", op->name, op->help,
                op->ceiling != HX_CEIL_NONE ? " [--ceiling]" : "");
    }
}

/* One bounded number parser for every numeric option. */
static int parse_ulong(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end = NULL;
    unsigned long v;

    if (!s || !*s || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int hx_parse_double(const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    double v;

    if (!s || !*s)
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (errno || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, bench_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->op = "unwrap";
    o->alg = "RSA-OAEP-256";
    o->concurrency = 2;
    o->duration = 10;
    o->record_size = 1024;
    o->env = "a1b2c3d4-0000-4000-8000-000000000101";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **str = NULL;

        if (!strcmp(a, "--json")) {
            o->json = 1;
            continue;
        }
        if (!strcmp(a, "--ceiling")) {
            o->ceiling = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--url"))
            str = &o->url;
        else if (!strcmp(a, "--op"))
            str = &o->op;
        else if (!strcmp(a, "--alg"))
            str = &o->alg;
        else if (!strcmp(a, "--ca"))
            str = &o->ca;
        else if (!strcmp(a, "--token"))
            str = &o->token;
        else if (!strcmp(a, "--key"))
            str = &o->key;
        else if (!strcmp(a, "--client-id"))
            str = &o->client_id;
        else if (!strcmp(a, "--client-secret"))
            str = &o->client_secret;
        else if (!strcmp(a, "--tenant"))
            str = &o->tenant;
        else if (!strcmp(a, "--authority"))
            str = &o->authority;
        else if (!strcmp(a, "--versus"))
            str = &o->versus;
        else if (!strcmp(a, "--tmp-dir"))
            str = &o->tmp_dir;
        else if (!strcmp(a, "--env"))
            str = &o->env;
        else if (!strcmp(a, "--background"))
            str = &o->background;
        else if (!strcmp(a, "--client"))
            str = &o->client;
        else if (strcmp(a, "--concurrency") && strcmp(a, "--duration") &&
                 strcmp(a, "--record-size") && strcmp(a, "--count") &&
                 strcmp(a, "--background-concurrency")) {
            fprintf(stderr, "cmkharness bench: unknown option %s\n", a);
            return -1;
        }
        if (!v) {
            fprintf(stderr, "cmkharness bench: %s needs a value\n", a);
            return -1;
        }
        i++;
        if (str) {
            *str = v;
        } else if (!strcmp(a, "--record-size")) {
            if (parse_ulong(v, 16, 2048, &o->record_size) != 0) {
                fprintf(stderr, "cmkharness bench: --record-size must be 16..2048 bytes\n");
                return -1;
            }
        } else if (!strcmp(a, "--count")) {
            if (parse_ulong(v, 1, 100000000, &o->count) != 0) {
                fprintf(stderr, "cmkharness bench: --count must be 1..100000000\n");
                return -1;
            }
        } else if (!strcmp(a, "--background-concurrency")) {
            if (parse_ulong(v, 1, BENCH_MAX_CONCURRENCY, &o->bg_concurrency) != 0) {
                fprintf(stderr, "cmkharness bench: --background-concurrency must be 1..%d\n",
                        BENCH_MAX_CONCURRENCY);
                return -1;
            }
        } else if (!strcmp(a, "--concurrency")) {
            if (parse_ulong(v, 1, BENCH_MAX_CONCURRENCY, &o->concurrency) != 0) {
                fprintf(stderr, "cmkharness bench: --concurrency must be 1..%d\n",
                        BENCH_MAX_CONCURRENCY);
                return -1;
            }
        } else if (hx_parse_double(v, 0.1, 3600, &o->duration) != 0) {
            fprintf(stderr, "cmkharness bench: --duration must be 0.1..3600 seconds\n");
            return -1;
        }
    }
    if (!o->url) {
        fprintf(stderr, "cmkharness bench: --url is required\n");
        return -1;
    }
    if (strcmp(o->alg, "RSA-OAEP") && strcmp(o->alg, "RSA-OAEP-256")) {
        fprintf(stderr, "cmkharness bench: --alg must be RSA-OAEP or RSA-OAEP-256\n");
        return -1;
    }
    if (o->key && (!*o->key || strlen(o->key) > 100 ||
                   strspn(o->key, "abcdefghijklmnopqrstuvwxyz"
                                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789-") != strlen(o->key))) {
        fprintf(stderr, "cmkharness bench: --key must be 1..100 of [0-9a-zA-Z-]\n");
        return -1;
    }
    if (strlen(o->env) > 64 || strspn(o->env, "0123456789abcdefABCDEF-") != strlen(o->env)) {
        fprintf(stderr, "cmkharness bench: --env must be an environment id (a GUID)\n");
        return -1;
    }
    if (!o->bg_concurrency)
        o->bg_concurrency = o->concurrency;
    if (!o->client)
        o->client = "loop";
    if (strcmp(o->client, "loop") && strcmp(o->client, "curl")) {
        fprintf(stderr, "cmkharness bench: --client must be loop or curl\n");
        return -1;
    }
    if (!!o->client_id != !!o->client_secret) {
        fprintf(stderr, "cmkharness bench: --client-id and --client-secret go together\n");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Set-up and cleanup on the driver connection                                                */

static void print_http_error(const char *what, long status, const hx_bconn *c)
{
    if (status == 0)
        fprintf(stderr, "cmkharness bench: %s: %s\n", what, c->errbuf);
    else
        fprintf(stderr, "cmkharness bench: %s: HTTP %ld: %.*s\n", what, status,
                HX_BENCH_ERRBODY_MAX, c->body);
}

/* Client credentials at AUTHORITY/TENANT/oauth2/v2.0/token; sets b->auth_header. */
static int token_fetch(hx_bench *b, const bench_opts *o)
{
    const char *authority = o->authority ? o->authority : o->url;
    const char *tenant = o->tenant ? o->tenant : "72f988bf-0000-4000-8000-00000000c0de";
    hx_bench tmp;
    hx_bconn c;
    char *id = NULL, *secret = NULL, *scope = NULL;
    char form[1024], base[600], path[256];
    json_t *j = NULL;
    const char *tok;
    long status;
    size_t n;
    int rc = -1;

    memset(&tmp, 0, sizeof(tmp));
    tmp.auth_header = (char *)"X-Cmkharness: token"; /* never freed: tmp is local */
    tmp.ca = b->ca;
    if (hx_bconn_init(&c, &tmp) != 0) {
        fprintf(stderr, "cmkharness bench: %s\n", c.errbuf);
        goto out;
    }
    n = strlen(authority);
    while (n && authority[n - 1] == '/')
        n--;
    snprintf(base, sizeof(base), "%.*s", (int)n, authority);
    snprintf(path, sizeof(path), "/%s/oauth2/v2.0/token", tenant);
    id = curl_easy_escape(c.curl, o->client_id, 0);
    secret = curl_easy_escape(c.curl, o->client_secret, 0);
    scope = curl_easy_escape(c.curl, "https://vault.azure.net/.default", 0);
    if (!id || !secret || !scope ||
        (size_t)snprintf(form, sizeof(form),
                         "grant_type=client_credentials&client_id=%s&client_secret=%s&scope=%s", id,
                         secret, scope) >= sizeof(form)) {
        fprintf(stderr, "cmkharness bench: client credentials too long\n");
        goto out;
    }
    curl_slist_free_all(c.headers);
    c.headers = curl_slist_append(NULL, "Content-Type: application/x-www-form-urlencoded");
    curl_easy_setopt(c.curl, CURLOPT_HTTPHEADER, c.headers);
    status = hx_bconn_do(&c, base, "POST", path, form);
    if (status != 200) {
        print_http_error("token request", status, &c);
        goto out;
    }
    j = json_loads(c.body, 0, NULL);
    tok = json_string_value(json_object_get(j, "access_token"));
    if (!tok) {
        fprintf(stderr, "cmkharness bench: token response has no access_token\n");
        goto out;
    }
    n = strlen("Authorization: Bearer ") + strlen(tok) + 1;
    b->auth_header = malloc(n);
    if (!b->auth_header)
        goto out;
    snprintf(b->auth_header, n, "Authorization: Bearer %s", tok);
    rc = 0;
out:
    json_decref(j);
    curl_free(id);
    if (secret) {
        memset(secret, 0, strlen(secret));
        curl_free(secret);
    }
    curl_free(scope);
    memset(form, 0, sizeof(form));
    hx_bconn_cleanup(&c);
    return rc;
}

static int key_setup(hx_bench *b, hx_bconn *c, const bench_opts *o, unsigned needs, int *created)
{
    uint8_t plain[HX_BENCH_PAYLOAD];
    char path[256], body[256];
    json_t *j = NULL;
    const char *v;
    long status;
    int rc = -1;

    *created = 0;
    if (!(needs & HX_NEED_KEY))
        return 0;
    if (o->key) {
        snprintf(b->key, sizeof(b->key), "%s", o->key);
    } else {
        snprintf(b->key, sizeof(b->key), "cmkbench-%s", b->run_id);
        snprintf(path, sizeof(path), "/keys/%s/create?" HX_BENCH_API, b->key);
        status = hx_bconn_do(c, b->base_url, "POST", path, "{\"kty\":\"RSA\",\"key_size\":2048}");
        if (status != 200) {
            print_http_error("creating the bench key", status, c);
            return -1;
        }
        *created = 1;
    }
    if (!(needs & HX_NEED_WRAPPED))
        return 0;
    if (RAND_bytes(plain, sizeof(plain)) != 1)
        return -1;
    hx_b64url(plain, sizeof(plain), b->plain_b64, sizeof(b->plain_b64));
    snprintf(path, sizeof(path), "/keys/%s/wrapkey?" HX_BENCH_API, b->key);
    snprintf(body, sizeof(body), "{\"alg\":\"%s\",\"value\":\"%s\"}", b->alg, b->plain_b64);
    status = hx_bconn_do(c, b->base_url, "POST", path, body);
    if (status != 200) {
        print_http_error("wrapping the bench value", status, c);
        goto out;
    }
    j = json_loads(c->body, 0, NULL);
    v = json_string_value(json_object_get(j, "value"));
    if (!v || strlen(v) >= sizeof(b->wrapped)) {
        fprintf(stderr, "cmkharness bench: wrapKey answer has no usable value\n");
        goto out;
    }
    snprintf(b->wrapped, sizeof(b->wrapped), "%s", v);
    rc = 0;
out:
    json_decref(j);
    return rc;
}

static void key_cleanup(hx_bench *b, hx_bconn *c)
{
    char path[256];

    snprintf(path, sizeof(path), "/keys/%s?" HX_BENCH_API, b->key);
    if (hx_bconn_do(c, b->base_url, "DELETE", path, NULL) != 200)
        return;
    snprintf(path, sizeof(path), "/deletedkeys/%s?" HX_BENCH_API, b->key);
    (void)hx_bconn_do(c, b->base_url, "DELETE", path, NULL); /* 403 under purge protection */
}

/* ---------------------------------------------------------------------------------------- */
/* Workers                                                                                    */

void hx_bench_note_error(hx_bench *b, const hx_bench_req *rq, long status,
                         const char *transport_err, const char *body, int bad_body)
{
    pthread_mutex_lock(&b->err_lock);
    if (!b->have_error) {
        b->have_error = 1;
        b->err_status = status;
        snprintf(b->err_what, sizeof(b->err_what), "%s %s%s%s", rq->method ? rq->method : "?",
                 rq->path, bad_body ? ": unexpected answer"
                           : status ? ""
                                    : ": ",
                 status || bad_body ? "" : transport_err);
        snprintf(b->err_body, sizeof(b->err_body), "%.*s", HX_BENCH_ERRBODY_MAX, body);
    }
    pthread_mutex_unlock(&b->err_lock);
}

typedef struct {
    hx_bench_worker *w;
    unsigned n; /* loop_run: w[0..n) */
    pthread_barrier_t *start;
} worker_arg;

static void *worker_run(void *arg)
{
    worker_arg *wa = arg;
    hx_bench_worker *w = wa->w;
    hx_bench *b = w->b;
    size_t self = hx_bench_op_index(w->op);
    hx_bench_req rq;
    long before;

    /* warm-up outside the clock: opens the TLS connection this worker keeps */
    (void)hx_bconn_do(&w->conn, b->base_url, "GET", "/_emulator/health", NULL);
    before = w->conn.new_connections;
    pthread_barrier_wait(wa->start);
    w->t0 = hx_now_s();
    while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
        const hx_bench_op *done;
        double t0, t1;
        long status;
        int ok;

        if (b->count && w->stop == &b->stop &&
            atomic_fetch_add_explicit(&b->tickets, 1, memory_order_relaxed) >= b->count)
            break;

        memset(&rq, 0, sizeof(rq.method) + sizeof(rq.path));
        rq.op = (int)self;
        rq.body[0] = '\0';
        if (w->op->build(w, &rq) != 0) {
            atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
            hx_bench_note_error(b, &rq, 0, w->conn.errbuf, w->conn.body, 0);
            break;
        }
        done = hx_bench_op_at((size_t)rq.op);
        t0 = hx_now_s();
        status = hx_bconn_do(&w->conn, b->base_url, rq.method, rq.path, rq.body);
        t1 = hx_now_s();
        ok = status >= 200 && status < 300;
        if (ok && done->check && !done->check(w, &rq, w->conn.body, w->conn.len)) {
            hx_bench_note_error(b, &rq, status, "", w->conn.body, 1);
            atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
            continue;
        }
        if (!ok) {
            hx_bench_note_error(b, &rq, status, w->conn.errbuf, w->conn.body, 0);
            atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
            continue;
        }
        hx_histo_record(&w->histo, (uint64_t)((t1 - t0) * 1e6 + 0.5));
        w->sub_ops[rq.op]++;
        atomic_fetch_add_explicit(&w->ops, 1, memory_order_relaxed);
    }
    w->t1 = hx_now_s();
    w->connections = w->conn.new_connections - before;
    return NULL;
}

/* --client loop: one thread runs the whole group (bench_loop.c). */
static void *loop_run(void *arg)
{
    worker_arg *wa = arg;

    (void)hx_loop_run(wa->w->b, wa->w, wa->n, wa->start);
    return NULL;
}

/* Threads that run a group: one per worker with libcurl, one for all with the loop. */
static unsigned group_threads(const hx_bench *b, unsigned n)
{
    return b->use_curl ? n : 1;
}

/* Starts the group's threads (args[i] filled for workers[i]); the barrier `start` has
 * group_threads + 1 parties. A thread that cannot start would leave the barrier shut. */
static void group_start(const hx_bench *b, hx_bench_worker *workers, worker_arg *args,
                        unsigned n)
{
    if (!b->use_curl)
        args[0].n = n; /* one thread drives them all */
    for (unsigned i = 0; i < group_threads(b, n); i++) {
        if (pthread_create(&workers[i].tid, NULL, b->use_curl ? worker_run : loop_run,
                           &args[i]) != 0) {
            fprintf(stderr, "cmkharness bench: cannot start thread %u\n", i);
            abort();
        }
        workers[i].started = 1;
    }
}

static void group_join(const hx_bench *b, hx_bench_worker *workers, unsigned n)
{
    for (unsigned i = 0; i < group_threads(b, n); i++)
        pthread_join(workers[i].tid, NULL);
}

static void progress(const hx_bench_op *op, double elapsed, double total, unsigned long ops,
                     unsigned long errors, double rate)
{
    fprintf(stderr, "\r\033[K  %-7s %5.1f/%.1f s  %9lu ops  %9.1f ops/s  %lu errors", op->name,
            elapsed, total, ops, rate, errors);
    fflush(stderr);
}

/* Runs one phase. workers[] are initialised here and left for cleanup hooks (created counts);
 * the caller frees them with workers_free. Returns -1 only when threads cannot start. */
static int phase_run(hx_bench *b, const hx_bench_op *op, unsigned n, double seconds, int show,
                     hx_bench_worker *workers, phase_result *res)
{
    pthread_barrier_t start;
    worker_arg *args = NULL;
    double t_start, t_last, cpu0;
    unsigned long last_ops = 0;
    int rc = 0;

    memset(res, 0, sizeof(*res));
    hx_histo_init(&res->histo);
    res->op = op;
    args = calloc(n, sizeof(*args));
    if (!args || pthread_barrier_init(&start, NULL, group_threads(b, n) + 1) != 0) {
        free(args);
        return -1;
    }
    atomic_store(&b->stop, 0);
    atomic_store(&b->tickets, 0);
    for (unsigned i = 0; i < n; i++) {
        hx_bench_worker *w = &workers[i];

        w->b = b;
        w->stop = &b->stop;
        w->op = op;
        w->index = i;
        hx_histo_init(&w->histo);
        atomic_init(&w->ops, 0);
        atomic_init(&w->errors, 0);
        if (RAND_bytes((unsigned char *)&w->rng, sizeof(w->rng)) != 1 || w->rng == 0)
            w->rng = 0x9e3779b97f4a7c15ull + i;
        if (b->use_curl && hx_bconn_init(&w->conn, b) != 0) {
            fprintf(stderr, "cmkharness bench: %s\n", w->conn.errbuf);
            abort(); /* out of memory */
        }
        args[i].w = w;
        args[i].n = 1;
        args[i].start = &start;
    }
    group_start(b, workers, args, n);
    pthread_barrier_wait(&start);
    cpu0 = cpu_s();
    t_start = t_last = hx_now_s();
    for (;;) {
        struct timespec nap = {0, BENCH_TICK_MS * 1000000L};
        double t = hx_now_s(), left = seconds - (t - t_start);
        unsigned long ops = 0, errs = 0;

        if (left <= 0)
            break;
        /* with --count, every worker draws one ticket past the end when it stops */
        if (b->count && atomic_load(&b->tickets) >= b->count + n)
            break;
        if (b->count)
            nap.tv_nsec = 20 * 1000000L;
        if (left < BENCH_TICK_MS / 1000.0) {
            nap.tv_sec = 0;
            nap.tv_nsec = (long)(left * 1e9);
        }
        nanosleep(&nap, NULL);
        if (!show)
            continue;
        for (unsigned i = 0; i < n; i++) {
            ops += atomic_load_explicit(&workers[i].ops, memory_order_relaxed);
            errs += atomic_load_explicit(&workers[i].errors, memory_order_relaxed);
        }
        t = hx_now_s();
        progress(op, t - t_start, seconds, ops, errs,
                 t > t_last ? (double)(ops - last_ops) / (t - t_last) : 0);
        t_last = t;
        last_ops = ops;
    }
    atomic_store(&b->stop, 1);
    group_join(b, workers, n);
    res->wall_s = hx_now_s() - t_start;
    res->cpu_s = cpu_s() - cpu0;
    if (show)
        fprintf(stderr, "\r\033[K");
    for (unsigned i = 0; i < n; i++) {
        hx_bench_worker *w = &workers[i];
        double span = w->t1 - w->t0;
        unsigned long ops = atomic_load(&w->ops);

        res->ops += ops;
        res->errors += atomic_load(&w->errors);
        res->connections += (unsigned long)w->connections;
        if (span > 0)
            res->ops_per_s += (double)ops / span;
        hx_histo_merge(&res->histo, &w->histo);
        for (size_t k = 0; k < HX_BENCH_MAX_OPS; k++)
            res->sub_ops[k] += w->sub_ops[k];
        hx_bconn_cleanup(&w->conn);
    }
    pthread_barrier_destroy(&start);
    free(args);
    return rc;
}

/* The background group (--background): M workers doing OP2 back to back while the measured
 * phase runs; started before it (after their warm-up) and stopped after it. */
typedef struct {
    hx_bench_worker *workers;
    worker_arg *args;
    unsigned n;
    pthread_barrier_t start;
    double cpu0, t0;
} bg_group;

static int bg_start(hx_bench *b, const hx_bench_op *op, unsigned n, bg_group *g)
{
    memset(g, 0, sizeof(*g));
    g->workers = calloc(n, sizeof(*g->workers));
    g->args = calloc(n, sizeof(*g->args));
    if (!g->workers || !g->args ||
        pthread_barrier_init(&g->start, NULL, group_threads(b, n) + 1) != 0) {
        free(g->workers);
        free(g->args);
        return -1;
    }
    g->n = n;
    atomic_store(&b->bg_stop, 0);
    for (unsigned i = 0; i < n; i++) {
        hx_bench_worker *w = &g->workers[i];

        w->b = b;
        w->stop = &b->bg_stop;
        w->op = op;
        w->index = 1000 + i; /* names and record ids apart from the measured group's */
        hx_histo_init(&w->histo);
        atomic_init(&w->ops, 0);
        atomic_init(&w->errors, 0);
        w->rng = 0x2545f4914f6cdd1dull + i;
        if (b->use_curl && hx_bconn_init(&w->conn, b) != 0)
            abort(); /* out of memory */
        g->args[i].w = w;
        g->args[i].n = 1;
        g->args[i].start = &g->start;
    }
    group_start(b, g->workers, g->args, n);
    pthread_barrier_wait(&g->start);
    g->t0 = hx_now_s();
    return 0;
}

/* Stops and joins the group; fills res (rates over each worker's active time). */
static void bg_stop(hx_bench *b, bg_group *g, const hx_bench_op *op, phase_result *res)
{
    memset(res, 0, sizeof(*res));
    hx_histo_init(&res->histo);
    res->op = op;
    atomic_store(&b->bg_stop, 1);
    group_join(b, g->workers, g->n);
    res->wall_s = hx_now_s() - g->t0;
    for (unsigned i = 0; i < g->n; i++) {
        hx_bench_worker *w = &g->workers[i];
        double span = w->t1 - w->t0;
        unsigned long ops = atomic_load(&w->ops);

        res->ops += ops;
        res->errors += atomic_load(&w->errors);
        if (span > 0)
            res->ops_per_s += (double)ops / span;
        hx_histo_merge(&res->histo, &w->histo);
        hx_bconn_cleanup(&w->conn);
    }
    pthread_barrier_destroy(&g->start);
    free(g->args);
    g->args = NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Set-up of records, the import body and the last versions page                             */

/* https://localhost:PORT -> https://{env}.crm.localhost:PORT (the emulator's record host). */
static int env_base_from(hx_bench *b, const char *env)
{
    const char *auth = strstr(b->base_url, "://");
    const char *port;

    if (!auth)
        return -1;
    auth += 3;
    port = strrchr(auth, ':');
    if (port && strchr(port, ']'))
        port = NULL; /* the colon of an IPv6 literal */
    return (size_t)snprintf(b->env_base, sizeof(b->env_base), "https://%s.crm.localhost%s", env,
                            port ? port : "") < sizeof(b->env_base)
               ? 0
               : -1;
}

static int record_setup(hx_bench *b, hx_bconn *c, const bench_opts *o)
{
    char path[512], *body;
    size_t cap;
    long status;

    b->record_size = o->record_size;
    b->filler = malloc(o->record_size + 1);
    if (!b->filler || env_base_from(b, o->env) != 0)
        return -1;
    /* printable and not a repeated letter, so a match proves the whole value came back */
    for (size_t i = 0; i < o->record_size; i++)
        b->filler[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[(i * 7 + i / 36) % 36];
    b->filler[o->record_size] = '\0';
    hx_bench_record_guid(b, 0xfff, 0, b->record_id, sizeof(b->record_id));
    cap = o->record_size + 128;
    body = malloc(cap);
    if (!body)
        return -1;
    snprintf(body, cap, "{\"name\":\"cmkbench read\",\"description\":\"%s\"}", b->filler);
    snprintf(path, sizeof(path), "%s/api/data/v9.2/accounts(%s)", b->env_base, b->record_id);
    status = hx_bconn_do(c, "", "PATCH", path, body);
    free(body);
    if (status < 200 || status > 299) {
        print_http_error("writing the bench record (is --env an enabled environment?)", status,
                         c);
        return -1;
    }
    return 0;
}

static void record_cleanup(hx_bench *b, hx_bconn *c)
{
    char path[512];

    snprintf(path, sizeof(path), "%s/api/data/v9.2/accounts(%s)", b->env_base, b->record_id);
    (void)hx_bconn_do(c, "", "DELETE", path, NULL);
}

static int jwk_param(json_t *jwk, const EVP_PKEY *pk, const char *param, const char *name)
{
    BIGNUM *bn = NULL;
    uint8_t buf[512];
    char out[700];
    int len, rc = -1;

    if (EVP_PKEY_get_bn_param(pk, param, &bn) != 1)
        return -1;
    len = BN_num_bytes(bn);
    if (len > 0 && (size_t)len <= sizeof(buf) && BN_bn2bin(bn, buf) == len) {
        hx_b64url(buf, (size_t)len, out, sizeof(out));
        rc = json_object_set_new(jwk, name, json_string(out)) == 0 ? 0 : -1;
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    OPENSSL_cleanse(out, sizeof(out));
    BN_clear_free(bn);
    return rc;
}

/* One RSA-2048 key pair made here, as the body of an import request (also crash.c). */
char *hx_bench_import_body(void)
{
    static const struct {
        const char *param, *name;
    } parts[] = {{"n", "n"},
                 {"e", "e"},
                 {"d", "d"},
                 {"rsa-factor1", "p"},
                 {"rsa-factor2", "q"},
                 {"rsa-exponent1", "dp"},
                 {"rsa-exponent2", "dq"},
                 {"rsa-coefficient1", "qi"}};
    EVP_PKEY *pk = EVP_RSA_gen(2048);
    json_t *jwk = json_pack("{s:s,s:[s,s,s,s]}", "kty", "RSA", "key_ops", "wrapKey", "unwrapKey",
                            "encrypt", "decrypt");
    json_t *body = NULL;
    char *text = NULL;

    if (!pk || !jwk)
        goto out;
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        if (jwk_param(jwk, pk, parts[i].param, parts[i].name) != 0)
            goto out;
    body = json_pack("{s:O}", "key", jwk);
    text = body ? json_dumps(body, JSON_COMPACT) : NULL;
out:
    json_decref(body);
    json_decref(jwk);
    EVP_PKEY_free(pk);
    return text;
}

static int import_setup(hx_bench *b)
{
    b->import_body = hx_bench_import_body();
    return b->import_body ? 0 : -1;
}

/* Walks the versions list with maxresults=25 and keeps the URL of its last page. */
static int lastpage_setup(hx_bench *b, hx_bconn *c, unsigned long *pages)
{
    char url[sizeof(b->lastpage)];
    json_t *j = NULL;
    int rc = -1;

    snprintf(url, sizeof(url), "%s/keys/%s/versions?" HX_BENCH_API "&maxresults=25", b->base_url,
             b->key);
    *pages = 0;
    for (;;) {
        long status = hx_bconn_do(c, "", "GET", url, NULL);
        const char *next;

        (*pages)++;
        if (status != 200) {
            print_http_error("listing key versions", status, c);
            goto out;
        }
        json_decref(j);
        j = json_loads(c->body, 0, NULL);
        next = json_string_value(json_object_get(j, "nextLink"));
        if (!next || !*next)
            break;
        if (strlen(next) >= sizeof(url) || *pages > 1000000) {
            fprintf(stderr, "cmkharness bench: unusable nextLink\n");
            goto out;
        }
        snprintf(url, sizeof(url), "%s", next);
    }
    snprintf(b->lastpage, sizeof(b->lastpage), "%s", url);
    rc = 0;
out:
    json_decref(j);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Output                                                                                     */

static json_t *latency_json(const hx_histo *h)
{
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:f}", "min", (json_int_t)(h->total ? h->min_us : 0),
                     "p50", (json_int_t)hx_histo_quantile(h, 0.50), "p90",
                     (json_int_t)hx_histo_quantile(h, 0.90), "p99",
                     (json_int_t)hx_histo_quantile(h, 0.99), "p999",
                     (json_int_t)hx_histo_quantile(h, 0.999), "max", (json_int_t)h->max_us, "mean",
                     round_to(hx_histo_mean(h), 1));
}

static double round1(double v)
{
    return round_to(v, 1);
}

static double ratio_of(double a, double b)
{
    return b > 0 ? round_to(a / b, 3) : 0;
}

static const char *ms(uint64_t us, char *buf, size_t cap)
{
    if (us < 1000)
        snprintf(buf, cap, "%llu us", (unsigned long long)us);
    else if (us < 100000)
        snprintf(buf, cap, "%.2f ms", (double)us / 1000);
    else
        snprintf(buf, cap, "%.0f ms", (double)us / 1000);
    return buf;
}

static void print_phase(const char *label, const phase_result *r, unsigned n, long ncpu)
{
    char a[32], b2[32], c[32], d[32], e[32];
    const hx_histo *h = &r->histo;

    printf("%-10s %lu ok, %lu errors, %.1f ops/s over %.1f s (%u connections)\n", label, r->ops,
           r->errors, r->ops_per_s, r->wall_s, n);
    printf("  latency  p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n",
           ms(hx_histo_quantile(h, 0.5), a, 32), ms(hx_histo_quantile(h, 0.9), b2, 32),
           ms(hx_histo_quantile(h, 0.99), c, 32), ms(hx_histo_quantile(h, 0.999), d, 32),
           ms(h->max_us, e, 32));
    printf("  client   %.2f CPU cores (%.0f %% of the machine's %ld), %lu reconnects\n",
           r->wall_s > 0 ? r->cpu_s / r->wall_s : 0,
           r->wall_s > 0 && ncpu > 0 ? 100 * r->cpu_s / r->wall_s / (double)ncpu : 0, ncpu,
           r->connections);
    if (r->op && !strcmp(r->op->name, "mixed")) {
        printf("  mix     ");
        for (size_t i = 0; hx_bench_op_at(i); i++)
            if (r->sub_ops[i])
                printf(" %s %lu", hx_bench_op_at(i)->name, r->sub_ops[i]);
        printf("\n");
    }
}

static hsm_ceiling_op ceil_op_of(const hx_bench_op *op)
{
    return op->ceiling == HX_CEIL_UNWRAP ? HSM_CEILING_UNWRAP
           : op->ceiling == HX_CEIL_WRAP ? HSM_CEILING_WRAP
                                         : HSM_CEILING_CREATE;
}

int cmkh_bench_main(int argc, char **argv)
{
    bench_opts o;
    hx_bench b;
    hx_bconn drv;
    hx_bench_worker *workers = NULL, *vworkers = NULL, *iworkers = NULL;
    const hx_bench_op *op, *vop = NULL, *bgop = NULL;
    phase_result main_res, vres, ires, bgres;
    bg_group bg;
    int record_made = 0;
    hsm_ceiling_result ceil;
    char ceil_err[256] = "";
    int have_ceiling = 0, key_created = 0, rc = 1, drv_ready = 0, lock_ready = 0;
    int show;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned needs, n;
    uint8_t rid[4];

    memset(&b, 0, sizeof(b));
    memset(&drv, 0, sizeof(drv));
    memset(&ceil, 0, sizeof(ceil));
    switch (parse_args(argc, argv, &o)) {
    case 0:
        break;
    case 1:
        return 0;
    default:
        usage(stderr);
        return 2;
    }
    op = hx_bench_op_find(o.op);
    if (!op) {
        fprintf(stderr, "cmkharness bench: unknown --op %s\n", o.op);
        usage(stderr);
        return 2;
    }
    if (o.versus) {
        vop = hx_bench_op_find(o.versus);
        if (!vop || !strcmp(vop->name, "create")) {
            fprintf(stderr, "cmkharness bench: --versus needs an operation other than create\n");
            return 2;
        }
    }
    if (o.background) {
        bgop = hx_bench_op_find(o.background);
        if (!bgop || !strcmp(bgop->name, "create") || !strcmp(bgop->name, "import") ||
            !strcmp(bgop->name, "record-write")) {
            fprintf(stderr, "cmkharness bench: --background needs a read-only operation (e.g. "
                            "unwrap)\n");
            return 2;
        }
        if (vop) {
            fprintf(stderr, "cmkharness bench: --background and --versus do not go together\n");
            return 2;
        }
    }
    if (o.ceiling && op->ceiling == HX_CEIL_NONE) {
        fprintf(stderr, "cmkharness bench: --op %s has no PKCS#11 ceiling (use --versus health)\n",
                op->name);
        return 2;
    }
    n = (unsigned)o.concurrency;
    show = !o.json && isatty(2);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    pthread_mutex_init(&b.err_lock, NULL);
    lock_ready = 1;

    {
        size_t len = strlen(o.url);
        char *base;

        while (len && o.url[len - 1] == '/')
            len--;
        base = malloc(len + 1);
        if (!base)
            goto out;
        memcpy(base, o.url, len);
        base[len] = '\0';
        b.base_url = base;
    }
    b.ca = o.ca;
    b.use_curl = !strcmp(o.client, "curl");
    b.alg = o.alg;
    b.count = o.count;
    if (RAND_bytes(rid, sizeof(rid)) != 1)
        goto out;
    snprintf(b.run_id, sizeof(b.run_id), "%02x%02x%02x%02x", rid[0], rid[1], rid[2], rid[3]);
    if (o.client_id) {
        if (token_fetch(&b, &o) != 0)
            goto out;
    } else {
        const char *tok = o.token ? o.token : "cmkharness-bench";
        size_t len = strlen("Authorization: Bearer ") + strlen(tok) + 1;

        b.auth_header = malloc(len);
        if (!b.auth_header)
            goto out;
        snprintf(b.auth_header, len, "Authorization: Bearer %s", tok);
    }
    if (hx_bconn_init(&drv, &b) != 0) {
        fprintf(stderr, "cmkharness bench: %s\n", drv.errbuf);
        goto out;
    }
    drv_ready = 1;
    {
        long st = hx_bconn_do(&drv, b.base_url, "GET", "/_emulator/health", NULL);
        if (st == 0) {
            fprintf(stderr, "cmkharness bench: cannot reach %s: %s\n", b.base_url, drv.errbuf);
            goto out;
        }
    }
    needs = op->needs | (vop ? vop->needs : 0) | (bgop ? bgop->needs : 0);
    if (key_setup(&b, &drv, &o, needs, &key_created) != 0)
        goto out;
    if (needs & HX_NEED_RECORD) {
        if (record_setup(&b, &drv, &o) != 0)
            goto out;
        record_made = 1;
    }
    if ((needs & HX_NEED_IMPORT) && import_setup(&b) != 0) {
        fprintf(stderr, "cmkharness bench: cannot make the import key pair\n");
        goto out;
    }
    if (needs & HX_NEED_LASTPAGE) {
        unsigned long pages;

        if (lastpage_setup(&b, &drv, &pages) != 0)
            goto out;
        if (!o.json)
            fprintf(stderr, "cmkharness bench: the versions list has %lu pages of 25\n", pages);
    }

    workers = calloc(n, sizeof(*workers));
    vworkers = calloc(n, sizeof(*vworkers));
    iworkers = calloc(n, sizeof(*iworkers));
    if (!workers || !vworkers || !iworkers)
        goto out;
    if (!o.json)
        fprintf(stderr, "cmkharness bench: %s, %u connections, %.1f s, %s (%s client)\n", op->name, n,
                o.duration, b.base_url, o.client);
    if (bgop) {
        if (phase_run(&b, op, n, o.duration, show, iworkers, &ires) != 0)
            goto out;
        if (bg_start(&b, bgop, (unsigned)o.bg_concurrency, &bg) != 0)
            goto out;
        int prc = phase_run(&b, op, n, o.duration, show, workers, &main_res);
        bg_stop(&b, &bg, bgop, &bgres); /* joins the background threads in every case */
        free(bg.workers);
        if (prc != 0)
            goto out;
    } else if (phase_run(&b, op, n, o.duration, show, workers, &main_res) != 0) {
        goto out;
    }
    if (vop && phase_run(&b, vop, n, o.duration, show, vworkers, &vres) != 0)
        goto out;
    if (op->cleanup)
        op->cleanup(&b, &drv, workers, n);
    if (record_made) {
        record_cleanup(&b, &drv);
        record_made = 0;
    }
    if (key_created) {
        key_cleanup(&b, &drv);
        key_created = 0;
    }
    if (o.ceiling) {
        hsm_ceiling_config cc = {
            .op = ceil_op_of(op),
            .alg = strcmp(o.alg, "RSA-OAEP") ? HSM_RSA_OAEP_SHA256 : HSM_RSA_OAEP_SHA1,
            .bits = 2048,
            .threads = n,
            .seconds = o.duration,
            .tmp_dir = o.tmp_dir,
        };
        hsm_status st;

        if (show)
            fprintf(stderr, "  ceiling: %s, %u threads, %.1f s ...", hsm_ceiling_op_str(cc.op), n,
                    o.duration);
        st = hsm_ceiling_run(&cc, &ceil, ceil_err, sizeof(ceil_err));
        if (show)
            fprintf(stderr, "\r\033[K");
        if (st != HSM_OK) {
            fprintf(stderr, "cmkharness bench: ceiling: %s\n", ceil_err);
            goto out;
        }
        if (ceil.errors)
            fprintf(stderr, "cmkharness bench: ceiling: %lu errors, first: %s\n", ceil.errors,
                    ceil_err);
        have_ceiling = 1;
    }

    if (b.have_error) {
        fprintf(stderr, "cmkharness bench: first error: %s -> HTTP %ld\n%s\n", b.err_what,
                b.err_status, b.err_body);
    }
    if (o.json) {
        json_t *j = json_pack(
            "{s:s,s:s,s:i,s:f,s:I,s:I,s:f,s:o,s:{s:f,s:f,s:f,s:i},s:I}", "op", op->name, "alg",
            o.alg, "concurrency", (int)n, "duration_s", o.duration, "ops", (json_int_t)main_res.ops,
            "errors", (json_int_t)main_res.errors, "ops_per_s", round1(main_res.ops_per_s),
            "latency_us", latency_json(&main_res.histo), "client", "cpu_s",
            round_to(main_res.cpu_s, 2), "wall_s", round_to(main_res.wall_s, 3), "cores",
            main_res.wall_s > 0 ? round_to(main_res.cpu_s / main_res.wall_s, 2) : 0,
            "machine_cores", (int)ncpu, "reconnects", (json_int_t)main_res.connections);
        char *s;

        if (!j)
            goto out;
        json_object_set_new(json_object_get(j, "client"), "engine", json_string(o.client));
        if (have_ceiling) {
            json_object_set_new(j, "ceiling",
                                json_pack("{s:s,s:s,s:f,s:i,s:I,s:I}", "kind", "pkcs11", "what",
                                          hsm_ceiling_op_str(ceil_op_of(op)), "ops_per_s",
                                          round1(ceil.ops_per_s), "threads", (int)ceil.threads,
                                          "ops", (json_int_t)ceil.ops, "errors",
                                          (json_int_t)ceil.errors));
            json_object_set_new(j, "ratio",
                                json_real(ratio_of(main_res.ops_per_s, ceil.ops_per_s)));
        } else {
            json_object_set_new(j, "ceiling", json_null());
            json_object_set_new(j, "ratio", json_null());
        }
        if (vop) {
            json_object_set_new(j, "reference",
                                json_pack("{s:s,s:I,s:I,s:f,s:o}", "op", vop->name, "ops",
                                          (json_int_t)vres.ops, "errors", (json_int_t)vres.errors,
                                          "ops_per_s", round1(vres.ops_per_s), "latency_us",
                                          latency_json(&vres.histo)));
            json_object_set_new(j, "reference_ratio",
                                json_real(ratio_of(main_res.ops_per_s, vres.ops_per_s)));
        } else {
            json_object_set_new(j, "reference", json_null());
            json_object_set_new(j, "reference_ratio", json_null());
        }
        if (bgop) {
            json_object_set_new(j, "idle",
                                json_pack("{s:I,s:I,s:f,s:o}", "ops", (json_int_t)ires.ops,
                                          "errors", (json_int_t)ires.errors, "ops_per_s",
                                          round1(ires.ops_per_s), "latency_us",
                                          latency_json(&ires.histo)));
            json_object_set_new(j, "idle_ratio",
                                json_real(ratio_of(main_res.ops_per_s, ires.ops_per_s)));
            json_object_set_new(j, "background",
                                json_pack("{s:s,s:i,s:I,s:I,s:f,s:o}", "op", bgop->name,
                                          "concurrency", (int)o.bg_concurrency, "ops",
                                          (json_int_t)bgres.ops, "errors",
                                          (json_int_t)bgres.errors, "ops_per_s",
                                          round1(bgres.ops_per_s), "latency_us",
                                          latency_json(&bgres.histo)));
        }
        if (!strcmp(op->name, "mixed")) {
            json_t *mixj = json_object();
            for (size_t i = 0; hx_bench_op_at(i); i++)
                if (main_res.sub_ops[i])
                    json_object_set_new(mixj, hx_bench_op_at(i)->name,
                                        json_integer((json_int_t)main_res.sub_ops[i]));
            json_object_set_new(j, "mix", mixj);
        }
        if (b.have_error)
            json_object_set_new(j, "first_error",
                                json_pack("{s:s,s:I,s:s}", "request", b.err_what, "status",
                                          (json_int_t)b.err_status, "body", b.err_body));
        else
            json_object_set_new(j, "first_error", json_null());
        s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(12));
        json_decref(j);
        if (!s)
            goto out;
        printf("%s\n", s);
        free(s);
    } else {
        char label[64];

        snprintf(label, sizeof(label), "%s%s%s", op->name,
                 op->needs & HX_NEED_WRAPPED || !strcmp(op->name, "wrap") ? " " : "",
                 op->needs & HX_NEED_WRAPPED || !strcmp(op->name, "wrap") ? o.alg : "");
        if (bgop) {
            char l2[80];

            print_phase("idle", &ires, n, ncpu);
            snprintf(l2, sizeof(l2), "%s (with %s x%lu)", op->name, bgop->name,
                     o.bg_concurrency);
            print_phase(l2, &main_res, n, ncpu);
            print_phase(bgop->name, &bgres, (unsigned)o.bg_concurrency, ncpu);
            printf("  ratio    loaded / idle = %.3f\n", ratio_of(main_res.ops_per_s, ires.ops_per_s));
        } else {
            print_phase(label, &main_res, n, ncpu);
        }
        if (vop) {
            print_phase(vop->name, &vres, n, ncpu);
            printf("  ratio    %s / %s = %.3f\n", op->name, vop->name,
                   ratio_of(main_res.ops_per_s, vres.ops_per_s));
        }
        if (have_ceiling) {
            printf("ceiling    %s, %u threads, own token: %.1f ops/s (%lu ops, %lu errors)\n",
                   hsm_ceiling_op_str(ceil_op_of(op)), ceil.threads, ceil.ops_per_s, ceil.ops,
                   ceil.errors);
            printf("  ratio    emulator / ceiling = %.3f\n",
                   ratio_of(main_res.ops_per_s, ceil.ops_per_s));
        }
    }
    fflush(stdout);
    rc = main_res.errors || (vop && vres.errors) || (have_ceiling && ceil.errors) ||
                 (bgop && (ires.errors || bgres.errors))
             ? 1
             : 0;
out:
    if (record_made && drv_ready)
        record_cleanup(&b, &drv);
    free(b.filler);
    if (b.import_body) {
        OPENSSL_cleanse(b.import_body, strlen(b.import_body));
        free(b.import_body);
    }
    free(iworkers);
    if (key_created && drv_ready)
        key_cleanup(&b, &drv);
    if (drv_ready)
        hx_bconn_cleanup(&drv);
    free(workers);
    free(vworkers);
    if (b.auth_header) {
        memset(b.auth_header, 0, strlen(b.auth_header));
        free(b.auth_header);
    }
    free((char *)b.base_url);
    if (lock_ready)
        pthread_mutex_destroy(&b.err_lock);
    curl_global_cleanup();
    return rc;
}
