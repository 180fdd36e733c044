/*
 * clock: the emulator's one clock, real time plus an offset that POST /_emulator/clock moves.
 * Expiry, retention, purge schedules, rotation and lock deadlines read it. Token lifetimes do
 * not (they use the wall clock). Thread-safe (atomic offset).
 */
#ifndef CMKEMU_CLOCK_H
#define CMKEMU_CLOCK_H

#include <stdint.h>

int64_t emu_clock_now(void);       /* unix seconds, emulated */
int64_t emu_clock_offset(void);    /* seconds added to the wall clock */
void emu_clock_set_offset(int64_t offset);
int64_t emu_wall_now(void);        /* unix seconds, real */

/* Domains register what must happen when time passes (scheduled purge, rotation, lock
 * deadlines). emu_clock_apply_due runs every hook with the current emulated time; it is
 * called by the background tick and after the clock is moved. Hooks run one at a time. */
typedef void (*emu_clock_hook)(int64_t now, void *ud);
void emu_clock_hook_add(emu_clock_hook fn, void *ud);
void emu_clock_hooks_clear(void);
void emu_clock_apply_due(void);

#endif
