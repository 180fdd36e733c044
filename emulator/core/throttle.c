/* throttle: see throttle.h. */
#include "throttle.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util.h"

typedef struct window {
    struct window *next;
    char key[64];
    int64_t start_ms;
    long used[EMU_THROTTLE_MAX_BUCKETS];
} window;

struct emu_throttle {
    pthread_mutex_t lock; /* guards the list */
    window *windows;      /* most recently started first */
    size_t n;
    int64_t window_ms;
    long budgets[EMU_THROTTLE_MAX_BUCKETS];
    size_t nbuckets;
    emu_throttle_clock_fn now;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

emu_throttle *emu_throttle_new(int64_t window_ms, const long *budgets, size_t nbuckets,
                               emu_throttle_clock_fn now)
{
    emu_throttle *t = emu_xcalloc(1, sizeof *t);
    pthread_mutex_init(&t->lock, NULL);
    t->window_ms = window_ms;
    t->nbuckets = nbuckets < EMU_THROTTLE_MAX_BUCKETS ? nbuckets : EMU_THROTTLE_MAX_BUCKETS;
    memcpy(t->budgets, budgets, t->nbuckets * sizeof *budgets);
    t->now = now ? now : mono_ms;
    return t;
}

void emu_throttle_free(emu_throttle *t)
{
    if (!t)
        return;
    for (window *w = t->windows, *next; w; w = next) {
        next = w->next;
        free(w);
    }
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* The window of key, created (or restarted when over) at now. Lock held. */
static window *window_get_inlock(emu_throttle *t, const char *key, int64_t now)
{
    window **pp = &t->windows, *w = NULL, **last = NULL;
    for (; *pp; pp = &(*pp)->next) {
        if (!strcasecmp((*pp)->key, key)) {
            w = *pp;
            break;
        }
        last = pp;
    }
    if (!w) {
        if (t->n >= EMU_THROTTLE_MAX_KEYS && last) { /* forget the oldest */
            free(*last);
            *last = NULL;
            t->n--;
        }
        w = emu_xcalloc(1, sizeof *w);
        snprintf(w->key, sizeof w->key, "%s", key);
        w->start_ms = now;
        w->next = t->windows;
        t->windows = w;
        t->n++;
    }
    if (now - w->start_ms >= t->window_ms) {
        w->start_ms = now;
        memset(w->used, 0, sizeof w->used);
    }
    return w;
}

bool emu_throttle_take(emu_throttle *t, const char *key, size_t bucket, long cost,
                       long *retry_after_s)
{
    if (bucket >= t->nbuckets)
        return true;
    pthread_mutex_lock(&t->lock);
    int64_t now = t->now();
    window *w = window_get_inlock(t, key, now);
    bool ok = w->used[bucket] + cost <= t->budgets[bucket];
    if (ok) {
        w->used[bucket] += cost;
    } else {
        int64_t left = w->start_ms + t->window_ms - now;
        *retry_after_s = left <= 1000 ? 1 : (long)((left + 999) / 1000);
    }
    pthread_mutex_unlock(&t->lock);
    return ok;
}
