#include "store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "util.h"

struct emu_store {
    sqlite3 *db;
    pthread_mutex_t lock;
};

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
    pthread_mutex_init(&s->lock, NULL);
    if (!emu_store_exec(db, "PRAGMA journal_mode=WAL") ||
        !emu_store_exec(db, "PRAGMA synchronous=FULL") ||
        !emu_store_exec(db, "PRAGMA foreign_keys=ON") ||
        !emu_store_exec(db, "CREATE TABLE IF NOT EXISTS schema_versions(module TEXT PRIMARY KEY,"
                            " version INTEGER NOT NULL)")) {
        snprintf(err, errlen, "cannot prepare %s: %s", path, sqlite3_errmsg(db));
        emu_store_close(s);
        return NULL;
    }
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
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

sqlite3 *emu_store_lock(emu_store *s)
{
    pthread_mutex_lock(&s->lock);
    return s->db;
}

void emu_store_unlock(emu_store *s)
{
    pthread_mutex_unlock(&s->lock);
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
