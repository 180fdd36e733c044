/*
 * bench_ops.c: the table of benchmark operations and the keep-alive connection they use.
 *
 * Adding an operation = one build function (fills method, path, body), optionally a check of
 * the 2xx body and a cleanup, and one row in `ops` below. Set-up shared by several rows (the
 * bench key, a pre-wrapped value) is requested through `needs` and done by bench.c.
 */
#include "bench_int.h"

#include <openssl/evp.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* Connection                                                                                 */

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    hx_bconn *c = ud;
    size_t n = size * nmemb;
    size_t room = c->cap - 1 - c->len;
    size_t take = n < room ? n : room;

    memcpy(c->body + c->len, data, take);
    c->len += take;
    c->body[c->len] = '\0';
    return n; /* the rest is dropped, not an error */
}

int hx_bconn_init(hx_bconn *c, const hx_bench *b)
{
    memset(c, 0, sizeof(*c));
    c->cap = HX_BENCH_BODY_MAX + 1;
    c->body = malloc(c->cap);
    c->curl = curl_easy_init();
    if (!c->body || !c->curl) {
        snprintf(c->errbuf, sizeof(c->errbuf), "out of memory");
        return -1;
    }
    c->body[0] = '\0';
    c->headers = curl_slist_append(c->headers, b->auth_header);
    c->headers = curl_slist_append(c->headers, "Content-Type: application/json");
    c->headers = curl_slist_append(c->headers, "Accept: application/json");
    c->headers = curl_slist_append(c->headers, "Expect:");
    if (!c->headers) {
        snprintf(c->errbuf, sizeof(c->errbuf), "out of memory");
        return -1;
    }
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->curl, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(c->curl, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c->curl, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c->curl, CURLOPT_SSL_VERIFYHOST, 2L);
    if (b->ca)
        curl_easy_setopt(c->curl, CURLOPT_CAINFO, b->ca);
    curl_easy_setopt(c->curl, CURLOPT_MAXCONNECTS, 1L);
    return 0;
}

void hx_bconn_cleanup(hx_bconn *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    curl_slist_free_all(c->headers);
    free(c->body);
    memset(c, 0, sizeof(*c));
}

long hx_bconn_do(hx_bconn *c, const char *base_url, const char *method, const char *path,
                 const char *body)
{
    char url[1024];
    long status = 0, conns = 0;
    CURLcode rc;

    c->len = 0;
    c->body[0] = '\0';
    c->errbuf[0] = '\0';
    if (!strncmp(path, "https://", 8))
        base_url = ""; /* an absolute URL (records live on the environment's host) */
    if ((size_t)snprintf(url, sizeof(url), "%s%s", base_url, path) >= sizeof(url)) {
        snprintf(c->errbuf, sizeof(c->errbuf), "URL too long");
        return 0;
    }
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    if (body && body[0]) {
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, strcmp(method, "POST") ? method : NULL);
    } else if (!strcmp(method, "GET")) {
        curl_easy_setopt(c->curl, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, NULL);
    } else {
        /* DELETE and friends without a body */
        curl_easy_setopt(c->curl, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, method);
    }
    rc = curl_easy_perform(c->curl);
    if (rc != CURLE_OK) {
        if (!c->errbuf[0])
            snprintf(c->errbuf, sizeof(c->errbuf), "%s", curl_easy_strerror(rc));
        return 0;
    }
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(c->curl, CURLINFO_NUM_CONNECTS, &conns);
    c->new_connections += conns;
    return status;
}

void hx_b64url(const uint8_t *in, size_t len, char *out, size_t cap)
{
    size_t need = 4 * ((len + 2) / 3) + 1;
    int n;

    if (cap < need) {
        if (cap)
            out[0] = '\0';
        return;
    }
    n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (int i = 0; i < n; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Operations                                                                                 */

static int set_path(hx_bench_req *rq, const char *fmt, const char *a)
{
    return (size_t)snprintf(rq->path, sizeof(rq->path), fmt, a) < sizeof(rq->path) ? 0 : -1;
}

static int build_unwrap(hx_bench_worker *w, hx_bench_req *rq)
{
    hx_bench *b = w->b;

    rq->method = "POST";
    snprintf(rq->body, sizeof(rq->body), "{\"alg\":\"%s\",\"value\":\"%s\"}", b->alg, b->wrapped);
    return set_path(rq, "/keys/%s/unwrapkey?" HX_BENCH_API, b->key);
}

/* The answer must carry the value wrapped at set-up. */
static int check_unwrap(hx_bench_worker *w, const hx_bench_req *rq, const char *body, size_t len)
{
    (void)rq;
    (void)len;
    return strstr(body, w->b->plain_b64) != NULL;
}

static int build_wrap(hx_bench_worker *w, hx_bench_req *rq)
{
    hx_bench *b = w->b;

    rq->method = "POST";
    snprintf(rq->body, sizeof(rq->body), "{\"alg\":\"%s\",\"value\":\"%s\"}", b->alg, b->plain_b64);
    return set_path(rq, "/keys/%s/wrapkey?" HX_BENCH_API, b->key);
}

static int check_has_value(hx_bench_worker *w, const hx_bench_req *rq, const char *body, size_t len)
{
    (void)w;
    (void)rq;
    (void)len;
    return strstr(body, "\"value\"") != NULL;
}

static int build_get(hx_bench_worker *w, hx_bench_req *rq)
{
    rq->method = "GET";
    rq->body[0] = '\0';
    return set_path(rq, "/keys/%s?" HX_BENCH_API, w->b->key);
}

static int check_has_kid(hx_bench_worker *w, const hx_bench_req *rq, const char *body, size_t len)
{
    (void)w;
    (void)rq;
    (void)len;
    return strstr(body, "\"kid\"") != NULL;
}

static int build_health(hx_bench_worker *w, hx_bench_req *rq)
{
    (void)w;
    rq->method = "GET";
    rq->body[0] = '\0';
    return set_path(rq, "%s", "/_emulator/health");
}

static int check_health(hx_bench_worker *w, const hx_bench_req *rq, const char *body, size_t len)
{
    (void)w;
    (void)rq;
    (void)len;
    return strstr(body, "\"ok\"") != NULL;
}

/* A new key per request: cmkbench-RUN-cWORKER-N. Names are never reused (a deleted name stays
 * taken while soft-deleted), and cleanup can rebuild them from the per-worker count. */
static void create_name(const hx_bench *b, unsigned worker, unsigned long n, char *out, size_t cap)
{
    snprintf(out, cap, "cmkbench-%s-c%u-%lu", b->run_id, worker, n);
}

static int build_create(hx_bench_worker *w, hx_bench_req *rq)
{
    char name[96];

    create_name(w->b, w->index, w->created++, name, sizeof(name));
    rq->method = "POST";
    snprintf(rq->body, sizeof(rq->body), "{\"kty\":\"RSA\",\"key_size\":2048}");
    return set_path(rq, "/keys/%s/create?" HX_BENCH_API, name);
}

/* Deletes every key the create workers asked for (a failed create gives a harmless 404), then
 * tries to purge it (refused under purge protection; the soft-deleted key then stays). */
static void cleanup_create(hx_bench *b, hx_bconn *c, hx_bench_worker *workers, unsigned n)
{
    char name[96], path[256];

    for (unsigned i = 0; i < n; i++) {
        for (unsigned long k = 0; k < workers[i].created; k++) {
            create_name(b, workers[i].index, k, name, sizeof(name));
            snprintf(path, sizeof(path), "/keys/%s?" HX_BENCH_API, name);
            if (hx_bconn_do(c, b->base_url, "DELETE", path, NULL) != 200)
                continue;
            snprintf(path, sizeof(path), "/deletedkeys/%s?" HX_BENCH_API, name);
            (void)hx_bconn_do(c, b->base_url, "DELETE", path, NULL);
        }
    }
}

/* Records (1 KiB by default) in the environment given by --env, on its own host name. */
void hx_bench_record_guid(const hx_bench *b, unsigned worker, unsigned long slot, char *out,
                          size_t cap)
{
    snprintf(out, cap, "%.8s-0000-4000-8%03x-%012lx", b->run_id, worker & 0xfffu,
             slot & 0xffffffffffffUL);
}

static int build_record_read(hx_bench_worker *w, hx_bench_req *rq)
{
    hx_bench *b = w->b;

    rq->method = "GET";
    return (size_t)snprintf(rq->path, sizeof(rq->path), "%s/api/data/v9.2/accounts(%s)",
                            b->env_base, b->record_id) < sizeof(rq->path)
               ? 0
               : -1;
}

/* The row read back must carry the filler written at set-up (the whole of it was decrypted). */
static int check_record(hx_bench_worker *w, const hx_bench_req *rq, const char *body, size_t len)
{
    (void)rq;
    return len > w->b->record_size && strstr(body, w->b->filler) != NULL;
}

static int build_record_write(hx_bench_worker *w, hx_bench_req *rq)
{
    hx_bench *b = w->b;
    char id[40];

    hx_bench_record_guid(b, w->index, w->created % HX_BENCH_RECORD_IDS, id, sizeof(id));
    w->created++;
    rq->method = "PATCH";
    if ((size_t)snprintf(rq->body, sizeof(rq->body),
                         "{\"name\":\"cmkbench %lu\",\"description\":\"%s\"}", w->created,
                         b->filler) >= sizeof(rq->body))
        return -1;
    return (size_t)snprintf(rq->path, sizeof(rq->path), "%s/api/data/v9.2/accounts(%s)",
                            b->env_base, id) < sizeof(rq->path)
               ? 0
               : -1;
}

/* Deletes every record the writers touched (ids cycle through HX_BENCH_RECORD_IDS). */
static void cleanup_record_write(hx_bench *b, hx_bconn *c, hx_bench_worker *workers, unsigned n)
{
    char id[40], path[512];

    for (unsigned i = 0; i < n; i++) {
        unsigned long used = workers[i].created < HX_BENCH_RECORD_IDS ? workers[i].created
                                                                      : HX_BENCH_RECORD_IDS;
        for (unsigned long k = 0; k < used; k++) {
            hx_bench_record_guid(b, workers[i].index, k, id, sizeof(id));
            snprintf(path, sizeof(path), "%s/api/data/v9.2/accounts(%s)", b->env_base, id);
            (void)hx_bconn_do(c, "", "DELETE", path, NULL);
        }
    }
}

/* import: a new version of the bench key per request, from the same client-made key pair. */
static int build_import(hx_bench_worker *w, hx_bench_req *rq)
{
    hx_bench *b = w->b;

    rq->method = "PUT";
    if ((size_t)snprintf(rq->body, sizeof(rq->body), "%s", b->import_body) >= sizeof(rq->body))
        return -1;
    return set_path(rq, "/keys/%s?" HX_BENCH_API, b->key);
}

static int build_versions(hx_bench_worker *w, hx_bench_req *rq)
{
    rq->method = "GET";
    return set_path(rq, "/keys/%s/versions?" HX_BENCH_API "&maxresults=25", w->b->key);
}

static int build_versions_last(hx_bench_worker *w, hx_bench_req *rq)
{
    rq->method = "GET";
    return (size_t)snprintf(rq->path, sizeof(rq->path), "%s", w->b->lastpage) < sizeof(rq->path)
               ? 0
               : -1;
}

static int check_has_list(hx_bench_worker *w, const hx_bench_req *rq, const char *body, size_t len)
{
    (void)w;
    (void)rq;
    (void)len;
    return strstr(body, "\"value\"") != NULL && strstr(body, "\"kid\"") != NULL;
}

/* mixed: a fixed blend of the CMK data path, picked per request. */
static const struct {
    const char *op;
    unsigned weight;
} mix[] = {{"unwrap", 50}, {"wrap", 25}, {"get", 25}};

static int build_mixed(hx_bench_worker *w, hx_bench_req *rq)
{
    unsigned total = 0, pick;
    const hx_bench_op *op = NULL;

    for (size_t i = 0; i < sizeof(mix) / sizeof(mix[0]); i++)
        total += mix[i].weight;
    /* xorshift64 */
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    pick = (unsigned)(w->rng % total);
    for (size_t i = 0; i < sizeof(mix) / sizeof(mix[0]); i++) {
        if (pick < mix[i].weight) {
            op = hx_bench_op_find(mix[i].op);
            break;
        }
        pick -= mix[i].weight;
    }
    rq->op = (int)hx_bench_op_index(op);
    return op->build(w, rq);
}

static const hx_bench_op ops[] = {
    {"unwrap", "POST /keys/K/unwrapkey of a value wrapped once at set-up (private key in the HSM)",
     HX_NEED_KEY | HX_NEED_WRAPPED, HX_CEIL_UNWRAP, build_unwrap, check_unwrap, NULL},
    {"wrap", "POST /keys/K/wrapkey of 32 bytes (public key, OpenSSL)", HX_NEED_KEY, HX_CEIL_WRAP,
     build_wrap, check_has_value, NULL},
    {"get", "GET /keys/K", HX_NEED_KEY, HX_CEIL_NONE, build_get, check_has_kid, NULL},
    {"create", "POST /keys/NEW/create RSA-2048 (a new key per request)", 0, HX_CEIL_CREATE,
     build_create, check_has_kid, cleanup_create},
    {"health", "GET /_emulator/health (the server's floor cost: TLS, routing, JSON)", 0,
     HX_CEIL_NONE, build_health, check_health, NULL},
    {"mixed", "50% unwrap, 25% wrap, 25% get", HX_NEED_KEY | HX_NEED_WRAPPED, HX_CEIL_NONE,
     build_mixed, NULL, NULL},
    {"record-read", "GET a record of --record-size bytes (AES-256-GCM under the data key)",
     HX_NEED_RECORD, HX_CEIL_NONE, build_record_read, check_record, NULL},
    {"record-write", "PATCH (upsert) a record of --record-size bytes, 64 ids per connection",
     HX_NEED_RECORD, HX_CEIL_NONE, build_record_write, NULL, cleanup_record_write},
    {"import", "PUT /keys/K: a new version from one client-made RSA-2048 key", HX_NEED_KEY | HX_NEED_IMPORT,
     HX_CEIL_NONE, build_import, check_has_kid, NULL},
    {"versions", "GET /keys/K/versions?maxresults=25 (first page)", HX_NEED_KEY, HX_CEIL_NONE,
     build_versions, check_has_list, NULL},
    {"versions-last", "GET the last page of /keys/K/versions (nextLinks walked at set-up)",
     HX_NEED_KEY | HX_NEED_LASTPAGE, HX_CEIL_NONE, build_versions_last, check_has_list, NULL},
};

_Static_assert(sizeof(ops) / sizeof(ops[0]) <= HX_BENCH_MAX_OPS, "raise HX_BENCH_MAX_OPS");

const hx_bench_op *hx_bench_op_find(const char *name)
{
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (!strcmp(ops[i].name, name))
            return &ops[i];
    return NULL;
}

const hx_bench_op *hx_bench_op_at(size_t i)
{
    return i < sizeof(ops) / sizeof(ops[0]) ? &ops[i] : NULL;
}

size_t hx_bench_op_index(const hx_bench_op *op)
{
    return (size_t)(op - ops);
}
