/*
 * throttle: fixed-window request budgets per key (a vault name), like a service's rate
 * limits. Each key has one window of window_ms and nbuckets budgets in it; a request takes
 * cost units from one bucket and is refused once the bucket would go over its budget, with
 * the seconds until the window ends (for Retry-After). The caller decides buckets and costs
 * (Key Vault's weighted limits: kv_api.c). Thread-safe: one mutex.
 */
#ifndef CMKEMU_THROTTLE_H
#define CMKEMU_THROTTLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EMU_THROTTLE_MAX_BUCKETS 4
#define EMU_THROTTLE_MAX_KEYS 4096 /* more keys: the oldest windows are forgotten */

typedef struct emu_throttle emu_throttle;

/* Milliseconds on a monotonic clock; NULL = CLOCK_MONOTONIC (tests pass their own). */
typedef int64_t (*emu_throttle_clock_fn)(void);

/* budgets[0..nbuckets) are copied; nbuckets <= EMU_THROTTLE_MAX_BUCKETS. */
emu_throttle *emu_throttle_new(int64_t window_ms, const long *budgets, size_t nbuckets,
                               emu_throttle_clock_fn now);
void emu_throttle_free(emu_throttle *t); /* NULL is a no-op */

/* Takes cost units of bucket for key (case-insensitive). true = within budget (taken);
 * false = over budget (nothing taken) and *retry_after_s = whole seconds until the window
 * of key ends (at least 1). */
bool emu_throttle_take(emu_throttle *t, const char *key, size_t bucket, long cost,
                       long *retry_after_s);

#endif
