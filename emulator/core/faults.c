/* faults: see faults.h. */
#include "faults.h"

#include <fnmatch.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/rand.h>

#include "log.h"
#include "util.h"

typedef enum { FK_LATENCY, FK_429, FK_500, FK_503 } fault_kind;

static const char *const KIND_NAMES[] = {"latency", "429", "500", "503"};

typedef struct {
    char id[16];
    fault_kind kind;
    double fraction;
    char path[256];  /* "" = any */
    char method[16]; /* "" = any */
    char host[256];  /* "" = any */
    long latency_ms;
    long count;       /* 0 = unlimited */
    long retry_after; /* -1 = default */
    unsigned long hits;
} fault_rule;

struct emu_faults {
    /* f->n as last published under the lock: the request path reads it without the lock, so
     * with no rule (the usual case) a request costs one atomic load, not a shared mutex */
    atomic_size_t active;
    pthread_mutex_t lock; /* guards everything below */
    fault_rule rules[EMU_FAULTS_MAX];
    size_t n;
    unsigned long next_id;
    uint64_t rng; /* xorshift64 state for the fraction roll */
    emu_audit *audit;
};

emu_faults *emu_faults_new(emu_audit *audit)
{
    emu_faults *f = emu_xcalloc(1, sizeof *f);
    pthread_mutex_init(&f->lock, NULL);
    f->audit = audit;
    f->next_id = 1;
    if (RAND_bytes((unsigned char *)&f->rng, sizeof f->rng) != 1 || !f->rng)
        f->rng = 0x9e3779b97f4a7c15ull;
    return f;
}

void emu_faults_free(emu_faults *f)
{
    if (!f)
        return;
    pthread_mutex_destroy(&f->lock);
    free(f);
}

/* A uniform number in [0, 1). Lock held. */
static double roll_inlock(emu_faults *f)
{
    uint64_t x = f->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    f->rng = x;
    return (double)(x >> 11) / 9007199254740992.0; /* 2^53 */
}

static json_t *rule_json(const fault_rule *r)
{
    json_t *j = json_pack("{s:s,s:s,s:f,s:I}", "id", r->id, "fault", KIND_NAMES[r->kind],
                          "fraction", r->fraction, "hits", (json_int_t)r->hits);
    if (r->path[0])
        json_object_set_new(j, "path", json_string(r->path));
    if (r->method[0])
        json_object_set_new(j, "method", json_string(r->method));
    if (r->host[0])
        json_object_set_new(j, "host", json_string(r->host));
    if (r->kind == FK_LATENCY)
        json_object_set_new(j, "latencyMs", json_integer(r->latency_ms));
    if (r->count)
        json_object_set_new(j, "count", json_integer(r->count));
    if (r->retry_after >= 0)
        json_object_set_new(j, "retryAfter", json_integer(r->retry_after));
    return j;
}

/* An optional string field of at most cap-1 characters into out. */
static bool opt_string(const json_t *rule, const char *name, char *out, size_t cap, char *err,
                       size_t errlen)
{
    json_t *v = json_object_get(rule, name);
    out[0] = '\0';
    if (!v || json_is_null(v))
        return true;
    if (!json_is_string(v) || json_string_length(v) >= cap) {
        snprintf(err, errlen, "'%s' must be a string of at most %zu characters.", name, cap - 1);
        return false;
    }
    snprintf(out, cap, "%s", json_string_value(v));
    return true;
}

/* An optional integer field within [min, max]; *out keeps its value when absent. */
static bool opt_int(const json_t *rule, const char *name, long min, long max, long *out, char *err,
                    size_t errlen)
{
    json_t *v = json_object_get(rule, name);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(err, errlen, "'%s' must be a whole number from %ld to %ld.", name, min, max);
        return false;
    }
    *out = (long)json_integer_value(v);
    return true;
}

static bool rule_parse(const json_t *rule, fault_rule *r, char *err, size_t errlen)
{
    static const char *const FIELDS[] = {"fault", "fraction",  "path",  "method",
                                         "host",  "latencyMs", "count", "retryAfter"};
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)rule, key, val)
    {
        bool known = false;
        for (size_t i = 0; i < sizeof FIELDS / sizeof FIELDS[0]; i++)
            known = known || !strcmp(key, FIELDS[i]);
        if (!known) {
            char esc[80];
            emu_log_escape(key, 40, esc, sizeof esc);
            snprintf(err, errlen,
                     "Unknown field '%s'; a rule has fault, fraction, path, method, host, "
                     "latencyMs, count and retryAfter.",
                     esc);
            return false;
        }
    }
    memset(r, 0, sizeof *r);
    r->retry_after = -1;
    r->fraction = 1.0;
    json_t *k = json_object_get(rule, "fault");
    const char *ks = json_is_string(k) ? json_string_value(k) : NULL;
    bool kind_ok = false;
    for (int i = 0; ks && i < 4; i++)
        if (!strcasecmp(ks, KIND_NAMES[i])) {
            r->kind = (fault_kind)i;
            kind_ok = true;
        }
    if (!kind_ok) {
        snprintf(err, errlen, "'fault' must be one of \"latency\", \"429\", \"500\", \"503\".");
        return false;
    }
    json_t *fr = json_object_get(rule, "fraction");
    if (fr && !json_is_null(fr)) {
        if (!json_is_number(fr) || json_number_value(fr) < 0 || json_number_value(fr) > 1) {
            snprintf(err, errlen, "'fraction' must be a number from 0 to 1.");
            return false;
        }
        r->fraction = json_number_value(fr);
    }
    if (!opt_string(rule, "path", r->path, sizeof r->path, err, errlen) ||
        !opt_string(rule, "method", r->method, sizeof r->method, err, errlen) ||
        !opt_string(rule, "host", r->host, sizeof r->host, err, errlen) ||
        !opt_int(rule, "latencyMs", 1, EMU_FAULTS_MAX_LATENCY_MS, &r->latency_ms, err, errlen) ||
        !opt_int(rule, "count", 1, 1000000000L, &r->count, err, errlen) ||
        !opt_int(rule, "retryAfter", 0, 3600, &r->retry_after, err, errlen))
        return false;
    if (r->path[0] && r->path[0] != '/') {
        snprintf(err, errlen, "'path' must start with '/' (a prefix, or a glob with '*').");
        return false;
    }
    if (r->path[0] && !strncasecmp(r->path, "/_emulator", 10)) {
        snprintf(err, errlen, "Faults are not injected into /_emulator/ endpoints.");
        return false;
    }
    if ((r->kind == FK_LATENCY) != (r->latency_ms > 0)) {
        snprintf(err, errlen,
                 r->kind == FK_LATENCY ? "A latency rule needs 'latencyMs' (1 to %d)."
                                       : "'latencyMs' belongs to latency rules only (max %d).",
                 EMU_FAULTS_MAX_LATENCY_MS);
        return false;
    }
    if (r->retry_after >= 0 && r->kind != FK_429 && r->kind != FK_503) {
        snprintf(err, errlen, "'retryAfter' belongs to 429 and 503 rules only.");
        return false;
    }
    return true;
}

bool emu_faults_add(emu_faults *f, const json_t *rule, json_t **out, char *err, size_t errlen)
{
    fault_rule r;
    *out = NULL;
    if (!json_is_object(rule)) {
        snprintf(err, errlen, "Send one rule as a JSON object.");
        return false;
    }
    if (!rule_parse(rule, &r, err, errlen))
        return false;
    pthread_mutex_lock(&f->lock);
    bool ok = f->n < EMU_FAULTS_MAX;
    if (ok) {
        snprintf(r.id, sizeof r.id, "f%lu", f->next_id++);
        f->rules[f->n++] = r;
        atomic_store(&f->active, f->n);
        *out = rule_json(&r);
    }
    pthread_mutex_unlock(&f->lock);
    if (!ok)
        snprintf(err, errlen, "At most %d rules; DELETE /_emulator/faults first.", EMU_FAULTS_MAX);
    return ok;
}

json_t *emu_faults_list(emu_faults *f)
{
    json_t *arr = json_array();
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->n; i++)
        json_array_append_new(arr, rule_json(&f->rules[i]));
    pthread_mutex_unlock(&f->lock);
    return json_pack("{s:o}", "value", arr);
}

bool emu_faults_remove(emu_faults *f, const char *id)
{
    bool found = false;
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->n && !found; i++) {
        if (!strcasecmp(f->rules[i].id, id)) {
            memmove(&f->rules[i], &f->rules[i + 1], (f->n - i - 1) * sizeof f->rules[0]);
            f->n--;
            atomic_store(&f->active, f->n);
            found = true;
        }
    }
    pthread_mutex_unlock(&f->lock);
    return found;
}

size_t emu_faults_clear(emu_faults *f)
{
    pthread_mutex_lock(&f->lock);
    size_t n = f->n;
    f->n = 0;
    atomic_store(&f->active, 0);
    pthread_mutex_unlock(&f->lock);
    return n;
}

/* Prefix (case-insensitive) or, with a '*' or '?', a glob. */
static bool pattern_match(const char *pat, const char *s)
{
    if (!pat[0])
        return true;
    if (strpbrk(pat, "*?["))
        return fnmatch(pat, s, FNM_CASEFOLD) == 0;
    return strncasecmp(s, pat, strlen(pat)) == 0;
}

static bool rule_matches(const fault_rule *r, const emu_req *req, const char *host)
{
    if (r->count && r->hits >= (unsigned long)r->count)
        return false;
    if (r->method[0] && strcasecmp(r->method, req->method))
        return false;
    if (r->host[0] && (strpbrk(r->host, "*?[") ? fnmatch(r->host, host, FNM_CASEFOLD) != 0
                                               : strcasecmp(r->host, host) != 0))
        return false;
    return pattern_match(r->path, req->path);
}

bool emu_faults_apply(emu_faults *f, emu_req *req, long *delay_ms)
{
    *delay_ms = 0;
    if (!f || atomic_load_explicit(&f->active, memory_order_relaxed) == 0 ||
        !strncasecmp(req->path, "/_emulator", 10))
        return false;
    char host[256];
    emu_req_hostname(req, host, sizeof host);
    fault_rule hit;
    bool fired = false;
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->n && !fired; i++) {
        fault_rule *r = &f->rules[i];
        if (!rule_matches(r, req, host))
            continue;
        if (r->fraction < 1.0 && roll_inlock(f) >= r->fraction)
            continue;
        r->hits++;
        hit = *r;
        fired = true;
    }
    pthread_mutex_unlock(&f->lock);
    if (!fired)
        return false;
    char ra[24];
    snprintf(ra, sizeof ra, "%ld", hit.retry_after >= 0 ? hit.retry_after : 1L);
    /* status, error code, message (the rule's id follows), Retry-After */
    static const struct {
        int status;
        const char *code, *msg;
        bool retry_after;
    } ANSWER[] = {
        [FK_429] = {429, "Throttled",
                    "Request was not processed because too many requests were received. "
                    "Reason: injected by cmkemu fault rule",
                    true},
        [FK_500] = {500, "InternalServerError",
                    "The service failed the request (injected by cmkemu fault rule", false},
        [FK_503] = {503, "ServiceUnavailable",
                    "The service is unavailable, retry later (injected by cmkemu fault rule", true},
    };
    if (hit.kind == FK_LATENCY) {
        *delay_ms = hit.latency_ms;
    } else {
        if (ANSWER[hit.kind].retry_after)
            emu_resp_header_add(req, "Retry-After", ra);
        emu_send_error(req, ANSWER[hit.kind].status, ANSWER[hit.kind].code, "%s %s%s",
                       ANSWER[hit.kind].msg, hit.id, hit.kind == FK_429 ? "." : ").");
    }
    if (f->audit) {
        char op[300], target[700], detail[120];
        char esc[400];
        emu_log_escape(req->path, 300, esc, sizeof esc);
        snprintf(op, sizeof op, "Emulator/faults/Inject %s", KIND_NAMES[hit.kind]);
        snprintf(target, sizeof target, "%s%s", host, esc);
        if (hit.kind == FK_LATENCY)
            snprintf(detail, sizeof detail, "rule %s: %s %ld ms", hit.id, req->method,
                     hit.latency_ms);
        else
            snprintf(detail, sizeof detail, "rule %s: %s answered %s", hit.id, req->method,
                     KIND_NAMES[hit.kind]);
        emu_audit_add(f->audit, &(emu_audit_event){.operation = op,
                                                   .target = target,
                                                   .status = req->responded ? req->status : 0,
                                                   .outcome = "Injected",
                                                   .detail = detail});
    }
    return true;
}
