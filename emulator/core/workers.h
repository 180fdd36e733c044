/*
 * workers: a fixed pool of threads for slow work (PKCS#11 private-key operations, key
 * generation), so the HTTP event threads keep answering cheap requests. FIFO queue.
 */
#ifndef CMKEMU_WORKERS_H
#define CMKEMU_WORKERS_H

#include <stddef.h>

typedef struct emu_workers emu_workers;
typedef void (*emu_job_fn)(void *arg);

emu_workers *emu_workers_new(int nthreads);
/* Queues fn(arg); never fails (the queue grows; its length is bounded by the connection
 * limit because each connection has at most one job). */
void emu_workers_submit(emu_workers *w, emu_job_fn fn, void *arg);
/* Runs queued jobs to the end, then joins the threads. NULL is a no-op. */
void emu_workers_free(emu_workers *w);
size_t emu_workers_queued(emu_workers *w);

#endif
