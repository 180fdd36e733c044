#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* A deferred acknowledgement: fn(ud, ok) runs on the syncer thread once commit `seq` is
 * durable (ok) or its batch failed to commit (!ok). */
typedef struct durable_waiter {
    uint64_t seq;
    emu_store_durable_fn fn;
    void *ud;
    bool failed;
    struct durable_waiter *next;
} durable_waiter;

#define FAILED_KEEP 256 /* batches that failed to commit, remembered for late waiters */

/*
 * Locks: `lock` (the connection) before `sync_lock` (durability state), never the other way.
 * Group commit: SQLite runs with synchronous=NORMAL, so COMMIT appends to the WAL without an
 * fsync; the syncer thread then makes the WAL durable with one fdatasync for every commit that
 * is complete at that moment, and only then are those commits acknowledged (blocking callers
 * wake up, deferred HTTP answers are released). With NORMAL, SQLite itself syncs the WAL
 * before each checkpoint and the database after it, so the order on disk stays right.
 *
 * Gathering: a request handler between emu_store_defer_begin and _end (`active`) may be about
 * to commit. When the syncer has work and such handlers are running, it waits for them to
 * end, for at most as long as the last fdatasync took (GATHER_MIN_NS..GATHER_MAX_NS), so one
 * sync covers their commits too: under load, fewer syncs for the same writes (each costs
 * kernel and block-layer CPU), for at most one sync's time of extra latency. A blocking
 * waiter (emu_store_wait_durable, which a handler may call) ends the gathering at once.
 *
 * Batched writes (emu_store_lock_batched, for record rows): inside a deferred handler, the
 * statements run in one transaction (the batch) shared by every handler until the syncer
 * commits it, just before its fdatasync. A batched statement then only changes pages in
 * memory; the WAL frames are written once per batch, with each page once, and the store
 * lock is held for microseconds instead of the syscalls of a commit (under a record-write
 * load, the two HTTP threads spent a third of their time waiting for each other there).
 * Sequence numbers: `seq` counts commits and failed batches. While a batch is open, the
 * next commit on the connection is necessarily the batch's (every other lock holder commits
 * it first, emu_store_lock), so its handlers wait for batch_seq = seq + 1 at open. A batch
 * that cannot commit (or that an error rolled back) uses its number up: its waiters are
 * told it failed (the HTTP layer then answers 503 instead of the handler's answer).
 * Reads: a batched holder that changed nothing while the batch holds changes may have read
 * them (a row, or a unique key's conflict), so its handler waits for that batch too and fails
 * with it: no answer reports a write that then turns out lost. A handler that writes in a
 * later batch after reading from one that failed (a PATCH whose row vanished with the failed
 * batch) fails the later batch as well, so that what it read is not stored through it.
 * Each handler keeps the lowest and highest batch it touched; a failed batch between them
 * fails the handler (possibly one it did not touch: rare, and the safe side). A reader that
 * knows which rows the open batch changed (emu_store_lock_batched_read) depends on the batch
 * only when it says it read one of them (emu_store_read_batch), so reads of other rows do not
 * wait for the sync.
 */
struct emu_store {
    sqlite3 *db;
    pthread_mutex_t lock;
    uint64_t seq;     /* under lock: commits (commit hook) and failed batches, see the top */
    uint64_t at_lock; /* under lock: `seq` when the current holder took the lock */
    bool batch_open;  /* under lock: a transaction of batched writes is open */
    bool batch_dirty; /* under lock: a batched holder changed rows in the open batch */
    uint64_t batch_seq;      /* under lock: the number the open batch will commit as: one
                                above `seq` when it opened */
    bool holder_batched;     /* under lock: the holder came through emu_store_lock_batched */
    bool holder_tracked;     /* under lock: ... through emu_store_lock_batched_read */
    bool holder_read_batch;  /* under lock: the tracked holder read a row of the open batch */
    int64_t changes_at_lock; /* under lock: sqlite3_total_changes64 when a batched holder
                                took the lock */
    atomic_ulong ncommits;   /* commits (stats) */
    unsigned refuse_commits; /* under lock: testing, see emu_store_testing_refuse_commits */
    char *wal_path, *dir_path;
    pthread_mutex_t sync_lock;
    pthread_cond_t work_cond; /* the syncer waits for wanted > synced */
    pthread_cond_t done_cond; /* blocking waiters wait for synced >= their seq */
    uint64_t written;         /* under sync_lock: commits complete in the WAL file */
    uint64_t wanted;          /* under sync_lock: highest seq somebody waits for */
    uint64_t synced;          /* under sync_lock: commits known durable */
    durable_waiter *waiters;  /* under sync_lock */
    uint64_t failed[FAILED_KEEP]; /* under sync_lock: the last batches that failed (ring) */
    unsigned nfailed;             /* under sync_lock: how many were ever recorded */
    uint64_t failed_forgotten;    /* under sync_lock: the highest failed batch that fell out of
                                     the ring: at or below it, failure can no longer be ruled
                                     out, and it is assumed (the safe side) */
    bool stopping;            /* under sync_lock */
    bool syncer_started;
    pthread_t syncer;
    int wal_fd; /* syncer thread only */
    bool dir_synced;
    atomic_ulong nsyncs;
    atomic_uint active;    /* deferred request handlers running (defer_begin .. defer_end) */
    atomic_bool gathering; /* the syncer waits for `active` to reach 0 */
    unsigned blocking;     /* under sync_lock: threads in emu_store_wait_durable */
    bool syncer_idle;      /* under sync_lock: the syncer waits for work (else it is gathering or
                              syncing and looks at `wanted` again before it sleeps) */
    int64_t last_sync_ns;  /* syncer thread only: how long the last fdatasync took */
    int64_t gather_min_ns, gather_max_ns; /* under sync_lock */
};

#define GATHER_MIN_NS 50000L   /* 50 us */
#define GATHER_MAX_NS 1000000L /* 1 ms */

static _Thread_local emu_store *tl_defer_store;
static _Thread_local uint64_t tl_defer_seq;   /* the highest commit the handler waits for */
static _Thread_local uint64_t tl_batch_lo, tl_batch_hi; /* batches it touched (0: none) */

static int on_commit(void *ud)
{
    emu_store *s = ud; /* the connection is only used under s->lock */
    if (s->refuse_commits) { /* testing: the COMMIT becomes a ROLLBACK, as a failing disk */
        s->refuse_commits--;
        return 1;
    }
    s->seq++;
    atomic_fetch_add(&s->ncommits, 1);
    return 0;
}

/* One fdatasync of the WAL (and, the first time, of the directory that holds it). */
static void sync_wal(emu_store *s)
{
    if (s->wal_fd < 0) {
        s->wal_fd = open(s->wal_path, O_RDONLY | O_CLOEXEC);
        if (s->wal_fd < 0) {
            if (errno != ENOENT)
                emu_log(EMU_LOG_ERROR, "store", "cannot open the WAL to sync it: %s",
                        strerror(errno));
            return; /* no WAL yet: nothing was written through it */
        }
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = fdatasync(s->wal_fd);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    s->last_sync_ns = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    if (rc != 0)
        emu_log(EMU_LOG_ERROR, "store", "fdatasync of the WAL failed: %s (writes acknowledged "
                                        "now may not survive a power loss)",
                strerror(errno));
    if (!s->dir_synced) {
        int d = open(s->dir_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (d >= 0) {
            if (fsync(d) == 0)
                s->dir_synced = true;
            close(d);
        }
    }
    atomic_fetch_add(&s->nsyncs, 1);
}

/* Waits (sync_lock held) while request handlers that may commit are running; see the top. */
static void gather_inlock(emu_store *s)
{
    if (s->stopping || s->blocking || !atomic_load(&s->active))
        return;
    int64_t ns = s->last_sync_ns < s->gather_min_ns   ? s->gather_min_ns
                 : s->last_sync_ns > s->gather_max_ns ? s->gather_max_ns
                                                      : s->last_sync_ns;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(ns / 1000000000LL);
    until.tv_nsec += (long)(ns % 1000000000LL);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    atomic_store(&s->gathering, true);
    /* a handler that ends after this load sees gathering set and signals under sync_lock */
    while (!s->stopping && !s->blocking && atomic_load(&s->active) &&
           pthread_cond_timedwait(&s->work_cond, &s->sync_lock, &until) == 0) {
    }
    atomic_store(&s->gathering, false);
}

/* Asks for seq to become durable; call with sync_lock held. */
static void want_inlock(emu_store *s, uint64_t seq)
{
    if (seq > s->wanted) {
        s->wanted = seq;
        if (s->syncer_idle) /* a gathering syncer is woken by the handlers' end instead */
            pthread_cond_signal(&s->work_cond);
    }
}

/* Commits up to seq are complete in the WAL file (s->lock held). */
static void note_written_inlock(emu_store *s, uint64_t seq)
{
    pthread_mutex_lock(&s->sync_lock);
    if (seq > s->written)
        s->written = seq;
    pthread_mutex_unlock(&s->sync_lock);
}

/* A failed batch in lo..hi, or 0 (sync_lock held). */
static uint64_t failed_between_inlock(const emu_store *s, uint64_t lo, uint64_t hi)
{
    if (lo <= s->failed_forgotten)
        return lo;
    unsigned n = s->nfailed < FAILED_KEEP ? s->nfailed : FAILED_KEEP;
    for (unsigned i = 0; i < n; i++)
        if (s->failed[i] >= lo && s->failed[i] <= hi)
            return s->failed[i];
    return 0;
}

static bool failed_inlock(const emu_store *s, uint64_t seq) /* sync_lock held */
{
    return failed_between_inlock(s, seq, seq) != 0;
}

/* The open batch will never commit (s->lock held): it is rolled back if it is not already,
 * its number is used up, and its waiters, now and later, are told it failed. */
static void batch_failed_inlock(emu_store *s, const char *why)
{
    uint64_t seq = s->batch_seq;
    s->batch_open = false;
    s->batch_dirty = false;
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    if (s->seq < seq)
        s->seq = seq;
    emu_log(EMU_LOG_ERROR, "store",
            "a batch of record writes could not be committed (%s): nothing of it is stored and "
            "its requests are answered 503",
            why);
    pthread_mutex_lock(&s->sync_lock);
    uint64_t *slot = &s->failed[s->nfailed++ % FAILED_KEEP];
    if (*slot > s->failed_forgotten)
        s->failed_forgotten = *slot;
    *slot = seq;
    for (durable_waiter *w = s->waiters; w; w = w->next)
        if (w->seq == seq)
            w->failed = true;
    if (seq > s->written)
        s->written = seq;
    want_inlock(s, seq); /* the syncer delivers the failures on its next round */
    pthread_mutex_unlock(&s->sync_lock);
}

/* Commits the open batch (s->lock held); on failure, see batch_failed_inlock. */
static void batch_commit_inlock(emu_store *s)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK) {
        char why[200];
        snprintf(why, sizeof why, "%s", msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        batch_failed_inlock(s, why);
        return;
    }
    s->batch_open = false;
    s->batch_dirty = false;
    note_written_inlock(s, s->seq);
}

static void *syncer_main(void *arg)
{
    emu_store *s = arg;
    pthread_mutex_lock(&s->sync_lock);
    for (;;) {
        while (!s->stopping && s->wanted <= s->synced) {
            s->syncer_idle = true;
            pthread_cond_wait(&s->work_cond, &s->sync_lock);
            s->syncer_idle = false;
        }
        if (s->wanted <= s->synced && s->stopping)
            break;
        gather_inlock(s);
        if (s->wanted > s->written) { /* a handler waits for the open batch: commit it */
            pthread_mutex_unlock(&s->sync_lock);
            pthread_mutex_lock(&s->lock);
            if (s->batch_open)
                batch_commit_inlock(s);
            pthread_mutex_unlock(&s->lock);
            pthread_mutex_lock(&s->sync_lock);
        }
        uint64_t target = s->written;
        pthread_mutex_unlock(&s->sync_lock);
        sync_wal(s);
        pthread_mutex_lock(&s->sync_lock);
        if (target > s->synced)
            s->synced = target;
        durable_waiter *ready = NULL, **pp = &s->waiters;
        while (*pp) {
            durable_waiter *w = *pp;
            if (w->seq <= s->synced) {
                *pp = w->next;
                w->next = ready;
                ready = w;
            } else {
                pp = &w->next;
            }
        }
        pthread_cond_broadcast(&s->done_cond);
        pthread_mutex_unlock(&s->sync_lock);
        while (ready) {
            durable_waiter *next = ready->next;
            ready->fn(ready->ud, !ready->failed);
            free(ready);
            ready = next;
        }
        pthread_mutex_lock(&s->sync_lock);
    }
    pthread_mutex_unlock(&s->sync_lock);
    return NULL;
}

void emu_store_wait_durable(emu_store *s, uint64_t seq)
{
    pthread_mutex_lock(&s->sync_lock);
    s->blocking++;
    want_inlock(s, seq);
    pthread_cond_signal(&s->work_cond); /* ends a gathering */
    while (s->synced < seq && s->syncer_started)
        pthread_cond_wait(&s->done_cond, &s->sync_lock);
    s->blocking--;
    pthread_mutex_unlock(&s->sync_lock);
}

void emu_store_wait_all_durable(emu_store *s)
{
    pthread_mutex_lock(&s->sync_lock);
    uint64_t seq = s->written;
    pthread_mutex_unlock(&s->sync_lock);
    if (seq)
        emu_store_wait_durable(s, seq);
}

emu_store_durability emu_store_when_durable(emu_store *s, uint64_t seq, emu_store_durable_fn fn,
                                            void *ud)
{
    pthread_mutex_lock(&s->sync_lock);
    emu_store_durability d = EMU_STORE_LATER;
    if (failed_inlock(s, seq))
        d = EMU_STORE_FAILED;
    else if (s->synced >= seq || !s->syncer_started)
        d = EMU_STORE_DURABLE;
    if (d != EMU_STORE_LATER) {
        pthread_mutex_unlock(&s->sync_lock);
        return d;
    }
    durable_waiter *w = emu_xmalloc(sizeof *w);
    w->seq = seq;
    w->fn = fn;
    w->ud = ud;
    w->failed = false;
    w->next = s->waiters;
    s->waiters = w;
    want_inlock(s, seq);
    pthread_mutex_unlock(&s->sync_lock);
    return EMU_STORE_LATER;
}

void emu_store_defer_begin(emu_store *s)
{
    tl_defer_store = s;
    tl_defer_seq = 0;
    tl_batch_lo = tl_batch_hi = 0;
    atomic_fetch_add(&s->active, 1);
}

uint64_t emu_store_defer_end(void)
{
    emu_store *s = tl_defer_store;
    if (s && atomic_fetch_sub(&s->active, 1) == 1 && atomic_load(&s->gathering)) {
        pthread_mutex_lock(&s->sync_lock); /* the syncer is in its timed wait or about to be */
        pthread_cond_signal(&s->work_cond);
        pthread_mutex_unlock(&s->sync_lock);
    }
    uint64_t seq = tl_defer_seq;
    if (s && tl_batch_lo) {
        /* a batch of the handler that closed already may have failed: that failure is what
         * it waits for (a later batch or commit would hide it). Only the last batch can still
         * be open; its waiter learns its fate from the syncer. */
        pthread_mutex_lock(&s->sync_lock);
        uint64_t f = failed_between_inlock(s, tl_batch_lo, tl_batch_hi);
        if (f)
            seq = f;
        pthread_mutex_unlock(&s->sync_lock);
    }
    tl_defer_store = NULL;
    tl_defer_seq = 0;
    tl_batch_lo = tl_batch_hi = 0;
    return seq;
}

void emu_store_set_gather(emu_store *s, int64_t min_ns, int64_t max_ns)
{
    pthread_mutex_lock(&s->sync_lock);
    s->gather_min_ns = min_ns;
    s->gather_max_ns = max_ns;
    pthread_mutex_unlock(&s->sync_lock);
}

void emu_store_testing_refuse_commits(emu_store *s, unsigned n)
{
    pthread_mutex_lock(&s->lock);
    s->refuse_commits = n;
    pthread_mutex_unlock(&s->lock);
}

uint64_t emu_store_commit_count(emu_store *s)
{
    return atomic_load(&s->ncommits);
}

unsigned long emu_store_failed_batches(emu_store *s)
{
    pthread_mutex_lock(&s->sync_lock);
    unsigned long n = s->nfailed;
    pthread_mutex_unlock(&s->sync_lock);
    return n;
}

unsigned long emu_store_sync_count(emu_store *s)
{
    return atomic_load(&s->nsyncs);
}

static const emu_migration CORE_MIGRATIONS[] = {
    {"core", 1, "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"},
    {"core", 2,
     "CREATE TABLE IF NOT EXISTS hsm_owned(hsm_id BLOB PRIMARY KEY, owner TEXT NOT NULL);"},
};

emu_store *emu_store_open(const char *path, char *err, size_t errlen)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open %s: %s", path, db ? sqlite3_errmsg(db) : "no memory");
        sqlite3_close(db);
        return NULL;
    }
    chmod(path, 0600);
    sqlite3_busy_timeout(db, 5000);
    emu_store *s = emu_xcalloc(1, sizeof *s);
    s->db = db;
    s->wal_fd = -1;
    s->gather_min_ns = GATHER_MIN_NS;
    s->gather_max_ns = GATHER_MAX_NS;
    s->wal_path = emu_xasprintf("%s-wal", path);
    const char *slash = strrchr(path, '/');
    s->dir_path = slash ? emu_xasprintf("%.*s", (int)(slash - path) ? (int)(slash - path) : 1,
                                        path)
                        : emu_xstrdup(".");
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->sync_lock, NULL);
    pthread_condattr_t ca; /* the gathering's timed wait is on the monotonic clock */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->work_cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&s->done_cond, NULL);
    sqlite3_commit_hook(db, on_commit, s);
    /* One process owns the file: exclusive locking mode takes the file lock once instead of
     * per transaction, and keeps the WAL index in heap memory instead of a shared-memory
     * file (no fcntl locks on the read path). Another process cannot open the file while
     * the emulator runs. Set before journal_mode=WAL so the index never goes to shm. */
    if (!emu_store_exec(db, "PRAGMA locking_mode=EXCLUSIVE") ||
        !emu_store_exec(db, "PRAGMA journal_mode=WAL") ||
        !emu_store_exec(db, "PRAGMA synchronous=NORMAL") ||
        !emu_store_exec(db, "PRAGMA foreign_keys=ON") ||
        !emu_store_exec(db, "CREATE TABLE IF NOT EXISTS schema_versions(module TEXT PRIMARY KEY,"
                            " version INTEGER NOT NULL)")) {
        snprintf(err, errlen, "cannot prepare %s: %s", path, sqlite3_errmsg(db));
        emu_store_close(s);
        return NULL;
    }
    if (pthread_create(&s->syncer, NULL, syncer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the store's sync thread");
        emu_store_close(s);
        return NULL;
    }
    s->syncer_started = true;
    if (!emu_store_migrate(s, CORE_MIGRATIONS, sizeof CORE_MIGRATIONS / sizeof CORE_MIGRATIONS[0],
                           err, errlen)) {
        emu_store_close(s);
        return NULL;
    }
    return s;
}

void emu_store_close(emu_store *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    if (s->batch_open) /* closing the connection would roll it back */
        batch_commit_inlock(s);
    pthread_mutex_unlock(&s->lock);
    if (s->syncer_started) {
        /* the syncer makes what is pending durable and releases its waiters, then ends */
        pthread_mutex_lock(&s->sync_lock);
        s->stopping = true;
        pthread_cond_signal(&s->work_cond);
        pthread_mutex_unlock(&s->sync_lock);
        pthread_join(s->syncer, NULL);
        s->syncer_started = false;
    }
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->sync_lock);
    pthread_cond_destroy(&s->work_cond);
    pthread_cond_destroy(&s->done_cond);
    free(s->wal_path);
    free(s->dir_path);
    free(s);
}

sqlite3 *emu_store_lock(emu_store *s)
{
    pthread_mutex_lock(&s->lock);
    if (s->batch_open) /* this holder may BEGIN, or must see only committed state on disk */
        batch_commit_inlock(s);
    s->at_lock = s->seq;
    s->holder_batched = false;
    return s->db;
}

sqlite3 *emu_store_lock_batched(emu_store *s)
{
    if (tl_defer_store != s) /* only a deferred answer can be changed if the batch fails */
        return emu_store_lock(s);
    pthread_mutex_lock(&s->lock);
    s->at_lock = s->seq;
    s->holder_batched = false;
    s->holder_tracked = false;
    s->holder_read_batch = false;
    if (!s->batch_open && sqlite3_get_autocommit(s->db) &&
        sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK) {
        s->batch_open = true;
        s->batch_dirty = false;
        s->batch_seq = s->seq + 1;
    }
    if (s->batch_open) { /* else the statements commit one by one, as with emu_store_lock */
        s->holder_batched = true;
        s->changes_at_lock = sqlite3_total_changes64(s->db);
    }
    return s->db;
}

sqlite3 *emu_store_lock_batched_read(emu_store *s)
{
    sqlite3 *db = emu_store_lock_batched(s);
    s->holder_tracked = s->holder_batched;
    return db;
}

uint64_t emu_store_open_batch(emu_store *s)
{
    return s->holder_batched && s->batch_open ? s->batch_seq : 0;
}

void emu_store_read_batch(emu_store *s)
{
    s->holder_read_batch = true;
}

void emu_store_unlock(emu_store *s)
{
    uint64_t seq = 0;
    bool batched = false;
    if (s->holder_batched) {
        s->holder_batched = false;
        uint64_t bseq = s->batch_seq;
        bool changed = sqlite3_total_changes64(s->db) != s->changes_at_lock;
        bool read = s->holder_tracked ? s->holder_read_batch : s->batch_dirty;
        s->holder_tracked = s->holder_read_batch = false;
        if (changed || read) { /* wrote in the batch, or (may have) read from it */
            seq = bseq;
            batched = true;
        }
        if (sqlite3_get_autocommit(s->db)) { /* an error (full, I/O) rolled the batch back */
            batch_failed_inlock(s, "a statement's error rolled it back");
        } else if (changed) {
            s->batch_dirty = true;
            if (tl_batch_lo && tl_batch_lo < bseq) {
                /* it read from an earlier batch: if that failed, what it wrote here may
                 * come from rows that were never stored */
                pthread_mutex_lock(&s->sync_lock);
                uint64_t f = failed_between_inlock(s, tl_batch_lo, bseq - 1);
                pthread_mutex_unlock(&s->sync_lock);
                if (f)
                    batch_failed_inlock(s, "a write in it depends on a batch that failed");
            }
        }
    } else if (s->seq != s->at_lock) {
        seq = s->seq; /* COMMIT has returned: its WAL frames are written (not yet synced) */
        note_written_inlock(s, seq);
    }
    pthread_mutex_unlock(&s->lock);
    if (!seq)
        return;
    if (tl_defer_store == s) {
        if (seq > tl_defer_seq)
            tl_defer_seq = seq;
        if (batched) {
            if (!tl_batch_lo || seq < tl_batch_lo)
                tl_batch_lo = seq;
            if (seq > tl_batch_hi)
                tl_batch_hi = seq;
        }
        return;
    }
    emu_store_wait_durable(s, seq);
}

bool emu_store_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        emu_log(EMU_LOG_ERROR, "store", "SQL failed: %s", msg ? msg : "?");
        sqlite3_free(msg);
        return false;
    }
    return true;
}

bool emu_store_begin(sqlite3 *db)
{
    return emu_store_exec(db, "BEGIN IMMEDIATE");
}

bool emu_store_commit(sqlite3 *db)
{
    if (emu_store_exec(db, "COMMIT"))
        return true;
    emu_store_rollback(db);
    return false;
}

void emu_store_rollback(sqlite3 *db)
{
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

static int current_version(sqlite3 *db, const char *module)
{
    sqlite3_stmt *st = NULL;
    int v = 0;
    if (sqlite3_prepare_v2(db, "SELECT version FROM schema_versions WHERE module=?", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, module, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int(st, 0);
    }
    sqlite3_finalize(st);
    return v;
}

bool emu_store_migrate(emu_store *s, const emu_migration *m, size_t n, char *err, size_t errlen)
{
    sqlite3 *db = emu_store_lock(s);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        int have = current_version(db, m[i].module);
        if (m[i].version <= have)
            continue;
        if (m[i].version != have + 1) {
            snprintf(err, errlen, "schema of %s is at version %d; migration %d does not follow",
                     m[i].module, have, m[i].version);
            ok = false;
            break;
        }
        if (!emu_store_begin(db)) {
            snprintf(err, errlen, "cannot start a transaction: %s", sqlite3_errmsg(db));
            ok = false;
            break;
        }
        char *msg = NULL;
        if (sqlite3_exec(db, m[i].sql, NULL, NULL, &msg) != SQLITE_OK) {
            snprintf(err, errlen, "migration %s %d failed: %s", m[i].module, m[i].version,
                     msg ? msg : "?");
            sqlite3_free(msg);
            emu_store_rollback(db);
            ok = false;
            break;
        }
        sqlite3_stmt *st = NULL;
        sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO schema_versions(module, version) VALUES(?,?)",
                           -1, &st, NULL);
        sqlite3_bind_text(st, 1, m[i].module, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, m[i].version);
        int rc = sqlite3_step(st);
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE || !emu_store_commit(db)) {
            snprintf(err, errlen, "cannot record migration %s %d", m[i].module, m[i].version);
            emu_store_rollback(db);
            ok = false;
        }
    }
    emu_store_unlock(s);
    return ok;
}

bool emu_store_meta_get(emu_store *s, const char *key, char *out, size_t outlen)
{
    sqlite3 *db = emu_store_lock(s);
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key=?", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            snprintf(out, outlen, "%s", (const char *)sqlite3_column_text(st, 0));
            found = true;
        }
    }
    sqlite3_finalize(st);
    emu_store_unlock(s);
    return found;
}

bool emu_store_meta_set(emu_store *s, const char *key, const char *value)
{
    sqlite3 *db = emu_store_lock(s);
    sqlite3_stmt *st = NULL;
    bool ok = false;
    if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO meta(key, value) VALUES(?,?)", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    emu_store_unlock(s);
    return ok;
}

bool emu_store_own_hsm_object(emu_store *s, const void *id, size_t id_len, const char *owner,
                              const char *meta_key, const char *meta_value)
{
    sqlite3 *db = emu_store_lock(s);
    sqlite3_stmt *a = NULL, *b = NULL;
    bool ok = emu_store_begin(db);
    if (ok) {
        ok = sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO hsm_owned(hsm_id, owner) VALUES(?,?)",
                                -1, &a, NULL) == SQLITE_OK &&
             sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO meta(key, value) VALUES(?,?)", -1, &b,
                                NULL) == SQLITE_OK;
        if (ok) {
            sqlite3_bind_blob(a, 1, id, (int)id_len, SQLITE_STATIC);
            sqlite3_bind_text(a, 2, owner, -1, SQLITE_STATIC);
            sqlite3_bind_text(b, 1, meta_key, -1, SQLITE_STATIC);
            sqlite3_bind_text(b, 2, meta_value, -1, SQLITE_STATIC);
            ok = sqlite3_step(a) == SQLITE_DONE && sqlite3_step(b) == SQLITE_DONE;
        }
        sqlite3_finalize(a);
        sqlite3_finalize(b);
        if (ok)
            ok = emu_store_commit(db);
        else
            emu_store_rollback(db);
    }
    emu_store_unlock(s);
    return ok;
}

bool emu_store_owned_foreach(emu_store *s, void (*fn)(const void *id, size_t id_len, void *ud),
                             void *ud)
{
    sqlite3 *db = emu_store_lock(s);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db, "SELECT hsm_id FROM hsm_owned", -1, &st, NULL) == SQLITE_OK;
    int rc = SQLITE_DONE;
    while (ok && (rc = sqlite3_step(st)) == SQLITE_ROW)
        fn(sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0), ud);
    ok = ok && rc == SQLITE_DONE;
    sqlite3_finalize(st);
    emu_store_unlock(s);
    return ok;
}
