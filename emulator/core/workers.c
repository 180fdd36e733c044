#include "workers.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "util.h"

typedef struct job {
    emu_job_fn fn;
    void *arg;
    struct job *next;
} job;

/* Lock order: w->lock only; jobs run without it. */
struct emu_workers {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    job *head, *tail;
    size_t queued;
    bool stopping;
    int n;
    pthread_t *threads;
};

static void *worker_main(void *arg)
{
    emu_workers *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->lock);
        while (!w->head && !w->stopping)
            pthread_cond_wait(&w->cond, &w->lock);
        job *j = w->head;
        if (!j) {
            pthread_mutex_unlock(&w->lock);
            return NULL;
        }
        w->head = j->next;
        if (!w->head)
            w->tail = NULL;
        w->queued--;
        pthread_mutex_unlock(&w->lock);
        j->fn(j->arg);
        free(j);
    }
}

emu_workers *emu_workers_new(int nthreads)
{
    emu_workers *w = emu_xcalloc(1, sizeof *w);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->n = nthreads < 1 ? 1 : nthreads;
    w->threads = emu_xcalloc((size_t)w->n, sizeof(pthread_t));
    for (int i = 0; i < w->n; i++)
        if (pthread_create(&w->threads[i], NULL, worker_main, w) != 0)
            abort();
    return w;
}

void emu_workers_submit(emu_workers *w, emu_job_fn fn, void *arg)
{
    job *j = emu_xmalloc(sizeof *j);
    j->fn = fn;
    j->arg = arg;
    j->next = NULL;
    pthread_mutex_lock(&w->lock);
    if (w->tail)
        w->tail->next = j;
    else
        w->head = j;
    w->tail = j;
    w->queued++;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

size_t emu_workers_queued(emu_workers *w)
{
    pthread_mutex_lock(&w->lock);
    size_t n = w->queued;
    pthread_mutex_unlock(&w->lock);
    return n;
}

void emu_workers_free(emu_workers *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    for (int i = 0; i < w->n; i++)
        pthread_join(w->threads[i], NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w->threads);
    free(w);
}
