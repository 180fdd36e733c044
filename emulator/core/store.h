/*
 * store: the SQLite file (WAL, foreign keys, synchronous=FULL so an acknowledged write
 * survives kill -9 and power loss). One connection guarded by a mutex: domain modules keep
 * their hot state in memory and write through, so the store is not on read paths.
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

/* Small key/value table for core settings (clock offset, world loaded flag). */
bool emu_store_meta_get(emu_store *s, const char *key, char *out, size_t outlen);
bool emu_store_meta_set(emu_store *s, const char *key, const char *value);

#endif
