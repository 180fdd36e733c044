#include "clock.h"

#include <stdatomic.h>
#include <pthread.h>
#include <time.h>

static _Atomic int64_t clock_offset;

int64_t emu_wall_now(void)
{
    return (int64_t)time(NULL);
}

int64_t emu_clock_now(void)
{
    return emu_wall_now() + atomic_load(&clock_offset);
}

int64_t emu_clock_offset(void)
{
    return atomic_load(&clock_offset);
}

void emu_clock_set_offset(int64_t offset)
{
    atomic_store(&clock_offset, offset);
}

#define MAX_HOOKS 16
/* Protected by hook_lock; hooks run while it is held so that two ticks never overlap. */
static pthread_mutex_t hook_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    emu_clock_hook fn;
    void *ud;
} hooks[MAX_HOOKS];
static int nhooks;

void emu_clock_hook_add(emu_clock_hook fn, void *ud)
{
    pthread_mutex_lock(&hook_lock);
    if (nhooks < MAX_HOOKS) {
        hooks[nhooks].fn = fn;
        hooks[nhooks].ud = ud;
        nhooks++;
    }
    pthread_mutex_unlock(&hook_lock);
}

void emu_clock_hooks_clear(void)
{
    pthread_mutex_lock(&hook_lock);
    nhooks = 0;
    pthread_mutex_unlock(&hook_lock);
}

void emu_clock_apply_due(void)
{
    pthread_mutex_lock(&hook_lock);
    int64_t now = emu_clock_now();
    for (int i = 0; i < nhooks; i++)
        hooks[i].fn(now, hooks[i].ud);
    pthread_mutex_unlock(&hook_lock);
}
