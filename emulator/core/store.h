/*
 * store: the SQLite file (WAL, foreign keys, exclusive locking mode). One connection guarded
 * by a mutex: domain modules keep their hot state in memory and write through, so the store
 * is on few read paths (records).
 *
 * Durability (group commit): a write is acknowledged only after the WAL holding it has been
 * fdatasync'ed, so it survives kill -9 and power loss, but one fdatasync covers every commit
 * complete at that moment and it happens outside the connection lock. emu_store_unlock
 * waits for that sync when the holder committed, unless the thread deferred it (HTTP: the
 * answer is held back instead, see emu_store_defer_begin), so callers need no change.
 * Schema: each domain registers numbered migrations; the store applies the missing ones at
 * open, each in a transaction, and records them in schema_versions(module, version).
 */
#ifndef CMKEMU_STORE_H
#define CMKEMU_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

typedef struct emu_store emu_store;

typedef struct {
    const char *module;
    int version; /* 1, 2, ... in order */
    const char *sql;
} emu_migration;

emu_store *emu_store_open(const char *path, char *err, size_t errlen);
void emu_store_close(emu_store *s);

/* Applies the migrations of one module that are newer than what the file has. */
bool emu_store_migrate(emu_store *s, const emu_migration *m, size_t n, char *err, size_t errlen);

/* Lock the connection for a sequence of statements (a transaction or reads). Lock order:
 * domain locks before the store lock, never the other way round. */
sqlite3 *emu_store_lock(emu_store *s);
void emu_store_unlock(emu_store *s);
/* As emu_store_lock, for single statements (no BEGIN/COMMIT) that may join the open batch of
 * writes: inside a deferred handler (emu_store_defer_begin) they run in one transaction that
 * the syncer commits, for every handler at once, just before its fdatasync; elsewhere this is
 * emu_store_lock. Reads see the batch, so a handler that read while the batch held changes
 * waits for that batch as if it had written. The whole batch can fail to commit (disk full,
 * I/O error): nothing of it is stored and emu_store_when_durable reports EMU_STORE_FAILED to
 * every handler that wrote or read in it (and a later batch in which such a handler wrote
 * fails too), so the caller must not change state outside the store on the strength of a
 * batched statement (record rows: the answer is all that depends on them). A handler that
 * also made an ordinary commit is answered as failed too, though that commit stands. */
sqlite3 *emu_store_lock_batched(emu_store *s);
/* As emu_store_lock_batched, for a holder that only reads and knows which rows the open batch
 * changed (its module keeps track): it depends on the batch only if it calls
 * emu_store_read_batch, so a read of a row the batch did not change does not wait for it. */
sqlite3 *emu_store_lock_batched_read(emu_store *s);
/* Store lock held, through emu_store_lock_batched(_read): the number of the open batch, or 0
 * when statements are not batched (not in a deferred handler, or no batch could be opened). */
uint64_t emu_store_open_batch(emu_store *s);
/* Store lock held, through emu_store_lock_batched_read: the holder read a row that the open
 * batch changed (it waits for the batch and fails with it). */
void emu_store_read_batch(emu_store *s);

/* Deferral for the HTTP layer: between begin and end, an unlock on this thread that committed
 * does not wait; end returns the commit to wait for (0 = none), which the caller then hands
 * to emu_store_when_durable before answering. */
void emu_store_defer_begin(emu_store *s);
uint64_t emu_store_defer_end(void);

/* ok: the commit is durable; !ok: it was a batch that failed to commit (nothing stored). */
typedef void (*emu_store_durable_fn)(void *ud, bool ok);
typedef enum {
    EMU_STORE_DURABLE, /* already durable: fn is not called */
    EMU_STORE_LATER,   /* fn(ud, ok) will run on the store's sync thread */
    EMU_STORE_FAILED,  /* a batch that failed to commit: fn is not called */
} emu_store_durability;
emu_store_durability emu_store_when_durable(emu_store *s, uint64_t seq, emu_store_durable_fn fn,
                                            void *ud);
/* Blocks until commit seq is durable. */
void emu_store_wait_durable(emu_store *s, uint64_t seq);
/* Bounds of the syncer's gathering wait (store.c; default 50 us .. 1 ms, as long as the last
 * fdatasync took): for tests, which make it long to see the gathering deterministically. */
void emu_store_set_gather(emu_store *s, int64_t min_ns, int64_t max_ns);
/* Testing: the next n commits fail (the commit hook turns them into rollbacks, as a disk
 * error would), so that the failure of a batch can be seen end to end. */
void emu_store_testing_refuse_commits(emu_store *s, unsigned n);
/* Commits made so far (health; with the sync count: commits per fdatasync). */
uint64_t emu_store_commit_count(emu_store *s);
/* fdatasyncs done so far (tests, stats). */
unsigned long emu_store_sync_count(emu_store *s);
/* Batches of writes that failed to commit so far (health). */
unsigned long emu_store_failed_batches(emu_store *s);

/* Convenience inside a lock: exec SQL without results; false + log on error. */
bool emu_store_exec(sqlite3 *db, const char *sql);
bool emu_store_begin(sqlite3 *db);
bool emu_store_commit(sqlite3 *db);
void emu_store_rollback(sqlite3 *db);

/* Records in one transaction that a token object belongs to `owner` (table hsm_owned, so
 * key reconciliation spares it) and sets meta[meta_key] = meta_value (how the owner finds it
 * again). false when nothing was written. */
bool emu_store_own_hsm_object(emu_store *s, const void *id, size_t id_len, const char *owner,
                              const char *meta_key, const char *meta_value);

/* Blocks until every commit made so far (by any thread) is durable. For an effect outside the
 * store that must never get ahead of a commit on disk, e.g. destroying a token object after
 * the commit that deleted its row (a power loss must not leave the row without its object). */
void emu_store_wait_all_durable(emu_store *s);

/* Calls fn for every token object id in table hsm_owned (fsck). false if the table cannot be
 * read. Takes the store lock; fn must not call into the store. */
bool emu_store_owned_foreach(emu_store *s, void (*fn)(const void *id, size_t id_len, void *ud),
                             void *ud);

/* Small key/value table for core settings (clock offset, world loaded flag). */
bool emu_store_meta_get(emu_store *s, const char *key, char *out, size_t outlen);
bool emu_store_meta_set(emu_store *s, const char *key, const char *value);

#endif
