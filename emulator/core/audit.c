#include "audit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "util.h"

typedef struct {
    int64_t id, time, clock;
    char *caller_oid, *caller_appid, *caller_name, *operation, *target, *outcome, *detail;
    int status;
} rec;

/* Lock order: a->lock only. */
struct emu_audit {
    pthread_mutex_t lock;
    rec *ring; /* EMU_AUDIT_MAX slots; slot = id % EMU_AUDIT_MAX */
    int64_t next_id;
};

static char *dup_or_null(const char *s)
{
    return s ? emu_xstrdup(s) : NULL;
}

static void rec_clear(rec *r)
{
    free(r->caller_oid);
    free(r->caller_appid);
    free(r->caller_name);
    free(r->operation);
    free(r->target);
    free(r->outcome);
    free(r->detail);
    memset(r, 0, sizeof *r);
}

emu_audit *emu_audit_new(void)
{
    emu_audit *a = emu_xcalloc(1, sizeof *a);
    pthread_mutex_init(&a->lock, NULL);
    a->ring = emu_xcalloc(EMU_AUDIT_MAX, sizeof *a->ring);
    a->next_id = 1;
    return a;
}

void emu_audit_free(emu_audit *a)
{
    if (!a)
        return;
    for (int i = 0; i < EMU_AUDIT_MAX; i++)
        rec_clear(&a->ring[i]);
    free(a->ring);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

void emu_audit_add(emu_audit *a, const emu_audit_event *ev)
{
    rec r = {0};
    r.time = emu_wall_now();
    r.clock = emu_clock_now();
    r.caller_oid = dup_or_null(ev->caller_oid);
    r.caller_appid = dup_or_null(ev->caller_appid);
    r.caller_name = dup_or_null(ev->caller_name);
    r.operation = dup_or_null(ev->operation);
    r.target = dup_or_null(ev->target);
    r.outcome = dup_or_null(ev->outcome);
    r.detail = dup_or_null(ev->detail);
    r.status = ev->status;
    pthread_mutex_lock(&a->lock);
    r.id = a->next_id++;
    rec *slot = &a->ring[r.id % EMU_AUDIT_MAX];
    rec old = *slot;
    *slot = r;
    pthread_mutex_unlock(&a->lock);
    rec_clear(&old);
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

json_t *emu_audit_query(emu_audit *a, int64_t since, int limit, const char *match,
                        const char *caller)
{
    json_t *arr = json_array();
    pthread_mutex_lock(&a->lock);
    int64_t first = a->next_id - EMU_AUDIT_MAX;
    if (first < 1)
        first = 1;
    if (since + 1 > first)
        first = since + 1;
    for (int64_t id = first; id < a->next_id && (int)json_array_size(arr) < limit; id++) {
        rec *r = &a->ring[id % EMU_AUDIT_MAX];
        if (r->id != id)
            continue;
        if (match && *match && !(r->operation && strcasestr(r->operation, match)) &&
            !(r->target && strcasestr(r->target, match)) &&
            !(r->detail && strcasestr(r->detail, match)))
            continue;
        if (caller && *caller && !(r->caller_oid && !strcasecmp(r->caller_oid, caller)) &&
            !(r->caller_appid && !strcasecmp(r->caller_appid, caller)))
            continue;
        char when[40], clk[40];
        emu_time_rfc3339(r->time, when, sizeof when);
        emu_time_rfc3339(r->clock, clk, sizeof clk);
        json_array_append_new(
            arr, json_pack("{s:I,s:s,s:s,s:{s:o,s:o,s:o},s:o,s:o,s:i,s:o,s:o}", "id",
                           (json_int_t)r->id, "time", when, "emulatorTime", clk, "caller", "oid",
                           str_or_null(r->caller_oid), "appid", str_or_null(r->caller_appid),
                           "name", str_or_null(r->caller_name), "operation",
                           str_or_null(r->operation), "target", str_or_null(r->target), "status",
                           r->status, "outcome", str_or_null(r->outcome), "detail",
                           str_or_null(r->detail)));
    }
    int64_t last = a->next_id - 1;
    pthread_mutex_unlock(&a->lock);
    return json_pack("{s:o,s:I}", "value", arr, "lastId", (json_int_t)last);
}
