/*
 * soak: `cmkharness soak --seconds N`: mixed traffic at saturation against a `cmkemu serve`
 * of its own (fresh data dir), with the server's RSS (/proc/PID/status VmRSS) and open file
 * descriptors (/proc/PID/fd) sampled every few seconds.
 *
 * Traffic (per request, weighted): key get, wrap, unwrap, tag update, create+delete+purge of
 * a throw-away key, record reads and writes (upserts over a fixed set of ids), ARM vault
 * reads, environment reads and client-credential token requests. State stays bounded, so
 * memory and descriptors should stay flat once warm.
 * Verdict: every answer must be the expected one (zero unexpected errors), and, after the
 * warm-up (the first 20 % of the run), RSS and fds must grow by less than 5 % from the
 * sample at the end of the warm-up to the last one (--no-growth-check: report only).
 */
#include "crash.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "emuproc.h"
#include "http.h"

#define SK_TENANT "72f988bf-0000-4000-8000-00000000c0de"
#define SK_ENV "a1b2c3d4-0000-4000-8000-000000000101"
#define SK_VAULT_ARM                                                                               \
    "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/cmk-rg/providers/"         \
    "Microsoft.KeyVault/vaults/scratch?api-version=2023-07-01"
#define SK_API "api-version=7.5"
#define SK_MAX_CONN 64
#define SK_MAX_SAMPLES 4096
#define SK_RECORDS 32 /* record ids per connection */
#define SK_PLAIN "c29hay10ZXN0LXZhbHVlLTMyLWJ5dGVzLWxvbmctLQ"

typedef enum {
    SK_GET,
    SK_WRAP,
    SK_UNWRAP,
    SK_UPDATE,
    SK_CREATE,
    SK_REC_READ,
    SK_REC_WRITE,
    SK_ARM_READ,
    SK_ENV_READ,
    SK_TOKEN,
    SK_NOPS
} sk_op;

static const struct {
    const char *name;
    unsigned weight;
} SK_MIX[SK_NOPS] = {{"get", 16},     {"wrap", 12},        {"unwrap", 16},       {"update", 5},
                     {"create", 2},   {"record-read", 14}, {"record-write", 12}, {"arm-read", 9},
                     {"env-read", 6}, {"token", 8}};

typedef struct sk_run sk_run;

typedef struct {
    sk_run *run;
    unsigned index;
    pthread_t tid;
    hx_http *http;
    uint64_t rng;
    unsigned long ops[SK_NOPS], errors, created;
} sk_conn;

typedef struct {
    double t;
    long rss_kb, fds;
} sk_sample;

struct sk_run {
    hx_emu emu;
    char wrapped[1100];
    atomic_int stop;
    unsigned nconn;
    sk_conn conns[SK_MAX_CONN];
    pthread_mutex_t err_lock;
    char first_error[700];
    sk_sample samples[SK_MAX_SAMPLES];
    size_t nsamples;
};

static const char *const JSON_HEADERS[] = {"Authorization: Bearer cmkharness-soak",
                                           "Content-Type: application/json", NULL};
static const char *const FORM_HEADERS[] = {"Content-Type: application/x-www-form-urlencoded", NULL};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* host: "scratch" -> the vault, SK_ENV -> the environment's record host, NULL -> base. */
static long sk_req(sk_run *r, hx_http *h, const char *host, const char *method, const char *path,
                   const char *body, const char *const *headers, hx_resp *out, char *err,
                   size_t errlen)
{
    char url[1024];
    if (host && !strcmp(host, "scratch"))
        snprintf(url, sizeof(url), "https://scratch.vault.localhost:%d%s", r->emu.port, path);
    else if (host)
        snprintf(url, sizeof(url), "https://%s.crm.localhost:%d%s", host, r->emu.port, path);
    else
        snprintf(url, sizeof(url), "%s%s", r->emu.url, path);
    memset(out, 0, sizeof(*out));
    if (hx_http_do(h, method, url, headers ? headers : JSON_HEADERS, body, body ? strlen(body) : 0,
                   out, err, errlen) != 0)
        return 0;
    return out->status;
}

static void note_error(sk_conn *c, sk_op op, long status, const char *detail)
{
    sk_run *r = c->run;
    c->errors++;
    pthread_mutex_lock(&r->err_lock);
    if (!r->first_error[0])
        snprintf(r->first_error, sizeof(r->first_error), "%s: HTTP %ld: %.600s", SK_MIX[op].name,
                 status, detail ? detail : "");
    pthread_mutex_unlock(&r->err_lock);
}

/* The weights in use: SK_MIX, or only the operations named by --ops. */
static unsigned g_weight[SK_NOPS];

static sk_op pick(sk_conn *c)
{
    unsigned total = 0;
    for (int i = 0; i < SK_NOPS; i++)
        total += g_weight[i];
    unsigned p = (unsigned)(rng_next(&c->rng) % total);
    for (int i = 0; i < SK_NOPS; i++) {
        if (p < g_weight[i])
            return (sk_op)i;
        p -= g_weight[i];
    }
    return SK_GET;
}

/* "get,unwrap" -> only those weights; 0 on success. */
static int ops_select(const char *list)
{
    char buf[256];
    int any = 0;
    snprintf(buf, sizeof(buf), "%s", list);
    memset(g_weight, 0, sizeof(g_weight));
    for (char *tok = buf, *comma; tok; tok = comma ? comma + 1 : NULL) {
        comma = strchr(tok, ',');
        if (comma)
            *comma = '\0';
        int found = 0;
        for (int i = 0; i < SK_NOPS; i++)
            if (!strcmp(tok, SK_MIX[i].name)) {
                g_weight[i] = SK_MIX[i].weight;
                found = any = 1;
            }
        if (!found)
            return -1;
    }
    return any ? 0 : -1;
}

/* One operation; returns 1 when every answer was the expected one. */
static int run_op(sk_conn *c, sk_op op)
{
    sk_run *r = c->run;
    char path[512], body[1400], err[256] = "";
    const char *host = NULL, *method = "GET", *check = NULL;
    const char *const *headers = NULL;
    long want = 200;
    int send_body = 0;
    hx_resp rs;

    switch (op) {
    case SK_GET:
        host = "scratch";
        snprintf(path, sizeof(path), "/keys/soak-key?" SK_API);
        break;
    case SK_WRAP:
    case SK_UNWRAP:
        host = "scratch";
        method = "POST";
        send_body = 1;
        snprintf(path, sizeof(path), "/keys/soak-key/%s?" SK_API,
                 op == SK_WRAP ? "wrapkey" : "unwrapkey");
        snprintf(body, sizeof(body), "{\"alg\":\"RSA-OAEP-256\",\"value\":\"%s\"}",
                 op == SK_WRAP ? SK_PLAIN : r->wrapped);
        check = op == SK_UNWRAP ? SK_PLAIN : "\"value\"";
        break;
    case SK_UPDATE:
        host = "scratch";
        method = "PATCH";
        send_body = 1;
        snprintf(path, sizeof(path), "/keys/soak-key?" SK_API);
        snprintf(body, sizeof(body), "{\"tags\":{\"soak\":\"%u-%lu\"}}", c->index,
                 c->ops[SK_UPDATE]);
        break;
    case SK_CREATE: {
        /* a throw-away key: create, delete, purge (state stays bounded) */
        static const char *const steps[3][2] = {{"POST", "/keys/soak-c%u-%lu/create?" SK_API},
                                                {"DELETE", "/keys/soak-c%u-%lu?" SK_API},
                                                {"DELETE", "/deletedkeys/soak-c%u-%lu?" SK_API}};
        static const long wants[3] = {200, 200, 204};
        for (int s = 0; s < 3; s++) {
            snprintf(path, sizeof(path), steps[s][1], c->index, c->created);
            long st = sk_req(r, c->http, "scratch", steps[s][0], path,
                             s == 0 ? "{\"kty\":\"RSA\",\"key_size\":2048}" : NULL, NULL, &rs, err,
                             sizeof(err));
            if (st != wants[s]) {
                note_error(c, op, st, st ? rs.body : err);
                hx_resp_cleanup(&rs);
                c->created++;
                return 0;
            }
            hx_resp_cleanup(&rs);
        }
        c->created++;
        return 1;
    }
    case SK_REC_READ:
    case SK_REC_WRITE: {
        host = SK_ENV;
        unsigned id = (unsigned)(rng_next(&c->rng) % SK_RECORDS);
        snprintf(path, sizeof(path), "/api/data/v9.2/accounts(50a50a50-0000-4000-8%03u-%012u)",
                 c->index, id);
        if (op == SK_REC_WRITE) {
            method = "PATCH";
            send_body = 1;
            want = 204;
            snprintf(body, sizeof(body),
                     "{\"name\":\"soak %u\",\"description\":\"%0512d\",\"revenue\":%lu}", id, 0,
                     c->ops[op]);
        } else {
            want = -404; /* 200, or 404 before its first write */
        }
        break;
    }
    case SK_ARM_READ:
        snprintf(path, sizeof(path), SK_VAULT_ARM);
        break;
    case SK_ENV_READ:
        snprintf(path, sizeof(path),
                 "/providers/Microsoft.BusinessAppPlatform/scopes/admin/environments/" SK_ENV
                 "?api-version=2021-04-01");
        check = "\"Enabled\"";
        break;
    case SK_TOKEN:
        method = "POST";
        send_body = 1;
        headers = FORM_HEADERS;
        check = "access_token";
        snprintf(path, sizeof(path), "/" SK_TENANT "/oauth2/v2.0/token");
        snprintf(
            body, sizeof(body),
            "grant_type=client_credentials&client_id=0a000001-0000-4000-8000-00000000a001"
            "&client_secret=kv-admin-secret&scope=https%%3A%%2F%%2Fvault.azure.net%%2F.default");
        break;
    default:
        return 0;
    }
    long st = sk_req(r, c->http, host, method, path, send_body ? body : NULL, headers, &rs, err,
                     sizeof(err));
    int ok = want < 0 ? (st == 200 || st == -want) : st == want;
    if (ok && st == 200 && check && (!rs.body || !strstr(rs.body, check)))
        ok = 0;
    if (!ok)
        note_error(c, op, st, st ? rs.body : err);
    hx_resp_cleanup(&rs);
    return ok;
}

static void *conn_main(void *arg)
{
    sk_conn *c = arg;
    while (!atomic_load(&c->run->stop)) {
        sk_op op = pick(c);
        run_op(c, op);
        c->ops[op]++;
    }
    return NULL;
}

static long read_rss_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmRSS:", 6)) {
            char *end;
            kb = strtol(line + 6, &end, 10);
            break;
        }
    fclose(f);
    return kb;
}

static long count_fds(pid_t pid)
{
    char path[64];
    long n = 0;
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static int setup(sk_run *r)
{
    char err[256] = "", body[1200];
    hx_resp rs;
    hx_http *h = hx_http_new(r->emu.ca, 0, err, sizeof(err));
    int rc = -1;
    if (!h) {
        fprintf(stderr, "cmkharness soak: %s\n", err);
        return -1;
    }
    long st = sk_req(r, h, "scratch", "POST", "/keys/soak-key/create?" SK_API,
                     "{\"kty\":\"RSA\",\"key_size\":2048}", NULL, &rs, err, sizeof(err));
    hx_resp_cleanup(&rs);
    if (st != 200) {
        fprintf(stderr, "cmkharness soak: set-up: create soak-key: HTTP %ld %s\n", st, err);
        goto out;
    }
    snprintf(body, sizeof(body), "{\"alg\":\"RSA-OAEP-256\",\"value\":\"%s\"}", SK_PLAIN);
    st = sk_req(r, h, "scratch", "POST", "/keys/soak-key/wrapkey?" SK_API, body, NULL, &rs, err,
                sizeof(err));
    const char *v = json_string_value(json_object_get(rs.json, "value"));
    if (st == 200 && v && strlen(v) < sizeof(r->wrapped)) {
        snprintf(r->wrapped, sizeof(r->wrapped), "%s", v);
        rc = 0;
    } else {
        fprintf(stderr, "cmkharness soak: set-up: wrap: HTTP %ld %s\n", st, err);
    }
    hx_resp_cleanup(&rs);
out:
    hx_http_free(h);
    return rc;
}

static double growth_pct(long base, long last)
{
    return base > 0 ? 100.0 * (double)(last - base) / (double)base : 0.0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cmkharness soak [--seconds N] [--connections N] [--sample SECONDS]\n"
               "                       [--emulator PATH] [--no-growth-check] [--ops A,B]\n"
               "Mixed traffic at saturation against a cmkemu serve of its own; samples its RSS\n"
               "and open fds. Fails on any unexpected answer, or when RSS or fds grow by 5 %% or\n"
               "more after the warm-up (the first 20 %% of the run).\n"
               "  --seconds N        duration (default 600)\n"
               "  --connections N    keep-alive client connections (default 8)\n"
               "  --sample S         seconds between samples (default: duration / 60, >= 1)\n"
               "  --no-growth-check  report growth but do not fail on it (short smoke runs)\n"
               "  --ops A,B,...      only these operations of the mix (get wrap unwrap update\n"
               "                     create record-read record-write arm-read env-read token)\n");
}

int hx_soak_main(int argc, char **argv)
{
    unsigned long seconds = 600, nconn = 8, sample = 0;
    int growth_check = 1, rc = 1;
    const char *bin = hx_emu_default_bin();
    sk_run *r = calloc(1, sizeof(*r));
    char tmpl[512], data[600], log[600], err[512];

    if (!r)
        return 1;
    for (int i = 0; i < SK_NOPS; i++)
        g_weight[i] = SK_MIX[i].weight;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long *num = NULL, lo = 1, hi = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(r);
            return 0;
        } else if (!strcmp(a, "--no-growth-check")) {
            growth_check = 0;
            continue;
        } else if (!strcmp(a, "--ops") && v) {
            if (ops_select(v) != 0) {
                fprintf(stderr, "cmkharness soak: --ops takes names from the mix, e.g. "
                                "get,unwrap,token\n");
                free(r);
                return 2;
            }
            i++;
            continue;
        } else if (!strcmp(a, "--emulator") && v) {
            bin = v;
            i++;
            continue;
        } else if (!strcmp(a, "--seconds"))
            num = &seconds, hi = 86400;
        else if (!strcmp(a, "--connections"))
            num = &nconn, hi = SK_MAX_CONN;
        else if (!strcmp(a, "--sample"))
            num = &sample, hi = 3600;
        char *end = NULL;
        errno = 0;
        unsigned long x = num && v ? strtoul(v, &end, 10) : 0;
        if (!num || !v || errno || end == v || *end || x < lo || x > hi) {
            fprintf(stderr, "cmkharness soak: bad or incomplete option %s\n", a);
            usage(stderr);
            free(r);
            return 2;
        }
        *num = x;
        i++;
    }
    if (!bin) {
        fprintf(stderr, "cmkharness soak: no cmkemu next to cmkharness; pass --emulator\n");
        free(r);
        return 2;
    }
    if (!sample)
        sample = seconds / 60 ? seconds / 60 : 1;
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&r->err_lock, NULL);
    const char *tmp = getenv("TMPDIR");
    snprintf(tmpl, sizeof(tmpl), "%s/cmkharness-soak.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmpl)) {
        fprintf(stderr, "cmkharness soak: mkdtemp: %s\n", strerror(errno));
        free(r);
        return 1;
    }
    snprintf(data, sizeof(data), "%s/data", tmpl);
    snprintf(log, sizeof(log), "%s/cmkemu.log", tmpl);
    if (hx_emu_start(&r->emu, bin, data, log, NULL, 1, err, sizeof(err)) != 0) {
        fprintf(stderr, "cmkharness soak: %s\n", err);
        goto out;
    }
    if (setup(r) != 0)
        goto out;
    r->nconn = (unsigned)nconn;
    for (unsigned i = 0; i < r->nconn; i++) {
        sk_conn *c = &r->conns[i];
        c->run = r;
        c->index = i;
        c->rng = 0x9E3779B97F4A7C15ULL * (i + 1) | 1;
        c->http = hx_http_new(r->emu.ca, 0, err, sizeof(err));
        if (!c->http) {
            fprintf(stderr, "cmkharness soak: %s\n", err);
            goto out;
        }
    }
    printf("soak: %lu s, %lu connections, sampling every %lu s, cmkemu pid %d\n", seconds, nconn,
           sample, (int)r->emu.pid);
    fflush(stdout);
    double t0 = now_s();
    for (unsigned i = 0; i < r->nconn; i++)
        pthread_create(&r->conns[i].tid, NULL, conn_main, &r->conns[i]);
    for (;;) {
        double t = now_s() - t0;
        if (r->nsamples < SK_MAX_SAMPLES) {
            sk_sample *s = &r->samples[r->nsamples++];
            s->t = t;
            s->rss_kb = read_rss_kb(r->emu.pid);
            s->fds = count_fds(r->emu.pid);
        }
        if (t >= (double)seconds)
            break;
        double next = (double)(r->nsamples) * (double)sample;
        while (now_s() - t0 < next && now_s() - t0 < (double)seconds) {
            struct timespec ts = {0, 100 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    atomic_store(&r->stop, 1);
    double elapsed = now_s() - t0;
    unsigned long total = 0, errors = 0, by_op[SK_NOPS] = {0};
    for (unsigned i = 0; i < r->nconn; i++) {
        pthread_join(r->conns[i].tid, NULL);
        errors += r->conns[i].errors;
        for (int k = 0; k < SK_NOPS; k++) {
            by_op[k] += r->conns[i].ops[k];
            total += r->conns[i].ops[k];
        }
    }
    /* warm-up: the first 20 %; baseline = the first sample after it, last = the last one */
    size_t base = 0;
    while (base + 1 < r->nsamples && r->samples[base].t < 0.2 * (double)seconds)
        base++;
    const sk_sample *b = &r->samples[base], *l = &r->samples[r->nsamples - 1];
    long rss_max = 0, fds_max = 0;
    for (size_t i = base; i < r->nsamples; i++) {
        if (r->samples[i].rss_kb > rss_max)
            rss_max = r->samples[i].rss_kb;
        if (r->samples[i].fds > fds_max)
            fds_max = r->samples[i].fds;
    }
    double rss_g = growth_pct(b->rss_kb, l->rss_kb), fds_g = growth_pct(b->fds, l->fds);
    printf("soak: %lu requests in %.1f s (%.0f/s), %lu unexpected errors\n  by operation:", total,
           elapsed, (double)total / elapsed, errors);
    for (int k = 0; k < SK_NOPS; k++)
        printf(" %s %lu", SK_MIX[k].name, by_op[k]);
    printf("\n  samples %zu; start RSS %ld kB fds %ld\n", r->nsamples, r->samples[0].rss_kb,
           r->samples[0].fds);
    printf("  after warm-up (t=%.0f s): RSS %ld kB, fds %ld; last (t=%.0f s): RSS %ld kB, fds %ld; "
           "max RSS %ld kB, max fds %ld\n",
           b->t, b->rss_kb, b->fds, l->t, l->rss_kb, l->fds, rss_max, fds_max);
    printf("  RSS MB by sample:");
    for (size_t i = 0; i < r->nsamples; i++)
        printf(" %.1f", (double)r->samples[i].rss_kb / 1024.0);
    printf("\n  growth after warm-up: RSS %+.1f %%, fds %+.1f %%%s\n", rss_g, fds_g,
           growth_check ? "" : " (not checked)");
    if (errors)
        fprintf(stderr, "cmkharness soak: first unexpected answer: %s\n", r->first_error);
    int status = hx_emu_stop(&r->emu, SIGTERM);
    int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!clean)
        fprintf(stderr, "cmkharness soak: cmkemu did not stop cleanly (status %d)\n", status);
    int grew = growth_check && (rss_g >= 5.0 || fds_g >= 5.0);
    if (grew)
        fprintf(stderr, "cmkharness soak: the server grew by 5 %% or more after the warm-up\n");
    rc = errors || !clean || grew || total == 0 ? 1 : 0;
    printf("soak: %s\n", rc ? "FAILED" : "ok");
out:
    for (unsigned i = 0; i < r->nconn; i++)
        hx_http_free(r->conns[i].http);
    hx_emu_stop(&r->emu, SIGKILL);
    if (rc == 0) {
        char cmd[700];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpl);
        if (system(cmd) != 0)
            fprintf(stderr, "cmkharness soak: could not remove %s\n", tmpl);
    } else {
        fprintf(stderr, "cmkharness soak: data dir and server log kept in %s\n", tmpl);
    }
    pthread_mutex_destroy(&r->err_lock);
    free(r);
    return rc;
}
