#include "kv.h"

#include <ctype.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "auth/roles.h"
#include "clock.h"
#include "log.h"
#include "util.h"

/* ---- in-memory model ------------------------------------------------------------------- */

#define KV_MAX_N 512 /* bytes of a 4096-bit modulus */

typedef struct kv_version {
    char version[33];
    int64_t seq;
    uint8_t hsm_id[HSM_ID_LEN];
    bool hsm; /* RSA-HSM */
    unsigned bits;
    uint8_t *n; /* modulus, n_len bytes (at most KV_MAX_N), owned: exactly sized, as 10,000
                 * versions of a 2048-bit key would leave 2.5 MB unused in fixed arrays */
    size_t n_len;
    uint8_t e[8];
    size_t e_len;
    unsigned ops;
    bool enabled;
    int64_t nbf, exp, created, updated;
    json_t *tags;    /* owned; NULL = none */
    uint8_t *sealed; /* a new sealed version's blob until its row is written; NULL after */
    size_t sealed_len;
} kv_version;

typedef struct kv_key {
    char name[128];        /* as created */
    char lname[128];       /* lowercase: identity and sort order */
    kv_version **versions; /* creation order; latest last */
    size_t nversions, capversions;
    kv_version **by_version; /* sorted by version string */
    bool deleted;
    int64_t deleted_date, scheduled_purge;
    json_t *rotation_policy; /* owned; NULL = default */
    int64_t rp_created, rp_updated;
} kv_key;

typedef struct kv_vault {
    kv_vault_info info;
    kv_key **keys; /* sorted by lname; live and deleted */
    size_t nkeys, capkeys;
    json_t *tags, *network_acls; /* owned; NULL = none */
    kv_access_policy *policies;  /* owned */
    size_t npolicies;
} kv_vault;

struct kv {
    pthread_rwlock_t lock;
    emu_store *store;
    hsm_t *hsm;
    /* RSA key in the token that signs backup blobs (their metadata is not inside the AES key
     * wrap, so it needs its own integrity); set at open, read-only after */
    uint8_t backup_sign_id[HSM_ID_LEN];
    kv_vault **vaults;
    size_t nvaults;
    int64_t next_seq;
    /* hooks: set once before serving, read without the lock */
    kv_change_fn change_fn;
    void *change_ud;
    kv_rbac_check_fn rbac_fn;
    void *rbac_ud;
    roles_t *rbac_roles; /* kv_set_rbac_roles */
    /* what reconcile() found at open (read-only after) */
    size_t reconciled_orphans, reconciled_missing;
};

static const emu_migration KV_MIGRATIONS[] = {
    {"keyvault", 1,
     "CREATE TABLE kv_vaults(name TEXT PRIMARY KEY, is_default INTEGER NOT NULL,"
     " soft_delete INTEGER NOT NULL, retention_days INTEGER NOT NULL,"
     " purge_protection INTEGER NOT NULL, rbac INTEGER NOT NULL, tenant TEXT NOT NULL,"
     " created INTEGER NOT NULL);"
     "CREATE TABLE kv_keys(vault TEXT NOT NULL REFERENCES kv_vaults(name) ON DELETE CASCADE,"
     " lname TEXT NOT NULL, name TEXT NOT NULL, deleted_date INTEGER,"
     " scheduled_purge INTEGER, rotation_policy TEXT, rp_created INTEGER, rp_updated INTEGER,"
     " PRIMARY KEY(vault, lname));"
     "CREATE TABLE kv_versions(vault TEXT NOT NULL, lname TEXT NOT NULL, version TEXT NOT NULL,"
     " seq INTEGER NOT NULL, hsm_id BLOB NOT NULL, hsm INTEGER NOT NULL, bits INTEGER NOT NULL,"
     " n BLOB NOT NULL, e BLOB NOT NULL, ops INTEGER NOT NULL, enabled INTEGER NOT NULL,"
     " nbf INTEGER, exp INTEGER, created INTEGER NOT NULL, updated INTEGER NOT NULL,"
     " tags TEXT, PRIMARY KEY(vault, lname, version),"
     " FOREIGN KEY(vault, lname) REFERENCES kv_keys(vault, lname) ON DELETE CASCADE);"
     "CREATE INDEX kv_versions_seq ON kv_versions(vault, lname, seq);"},
    /* 2: the ARM side of vaults (resource group, location, sku, tags, network rules,
     * systemData, soft-deleted vaults) and access policies. Vaults of older data dirs land
     * in the demo subscription and resource group. */
    {"keyvault", 2,
     "ALTER TABLE kv_vaults ADD COLUMN subscription TEXT NOT NULL"
     " DEFAULT '" KV_DEFAULT_SUBSCRIPTION "';"
     "ALTER TABLE kv_vaults ADD COLUMN resource_group TEXT NOT NULL"
     " DEFAULT '" KV_DEFAULT_RESOURCE_GROUP "';"
     "ALTER TABLE kv_vaults ADD COLUMN location TEXT NOT NULL DEFAULT '" KV_DEFAULT_LOCATION "';"
     "ALTER TABLE kv_vaults ADD COLUMN sku TEXT NOT NULL DEFAULT 'standard';"
     "ALTER TABLE kv_vaults ADD COLUMN public_network_access TEXT NOT NULL DEFAULT 'Enabled';"
     "ALTER TABLE kv_vaults ADD COLUMN tags TEXT;"
     "ALTER TABLE kv_vaults ADD COLUMN network_acls TEXT;"
     "ALTER TABLE kv_vaults ADD COLUMN updated INTEGER;"
     "ALTER TABLE kv_vaults ADD COLUMN created_by TEXT;"
     "ALTER TABLE kv_vaults ADD COLUMN created_by_type TEXT;"
     "ALTER TABLE kv_vaults ADD COLUMN modified_by TEXT;"
     "ALTER TABLE kv_vaults ADD COLUMN modified_by_type TEXT;"
     "ALTER TABLE kv_vaults ADD COLUMN deletion_date INTEGER;"
     "ALTER TABLE kv_vaults ADD COLUMN scheduled_purge INTEGER;"
     "CREATE TABLE kv_access_policies(vault TEXT NOT NULL REFERENCES kv_vaults(name)"
     " ON DELETE CASCADE, idx INTEGER NOT NULL, tenant TEXT NOT NULL, object_id TEXT NOT NULL,"
     " application_id TEXT NOT NULL, keys INTEGER NOT NULL, permissions TEXT NOT NULL,"
     " PRIMARY KEY(vault, idx));"},
    /* 3: sealed key versions (hsm.h): the blob lives here, keyed like the version's token
     * object was; a version row without one refers to a token object (older data dirs).
     * Deleting a version row (a purge, directly or by cascade) deletes its blob in the same
     * transaction. Version rows are written with an upsert (db_put_version), never REPLACE,
     * whose delete would fire the trigger with recursive_triggers on. */
    {"keyvault", 3,
     "CREATE TABLE kv_sealed(hsm_id BLOB PRIMARY KEY, blob BLOB NOT NULL);"
     "CREATE TRIGGER kv_versions_sealed_delete AFTER DELETE ON kv_versions"
     " BEGIN DELETE FROM kv_sealed WHERE hsm_id = OLD.hsm_id; END;"},
};

const char *kv_status_str(kv_status st)
{
    switch (st) {
    case KV_OK:
        return "ok";
    case KV_ERR_BAD_PARAM:
        return "bad parameter";
    case KV_ERR_VAULT_NOT_FOUND:
        return "vault not found";
    case KV_ERR_KEY_NOT_FOUND:
        return "key not found";
    case KV_ERR_DELETED_CONFLICT:
        return "deleted but recoverable";
    case KV_ERR_CONFLICT:
        return "conflict";
    case KV_ERR_PURGE_PROTECTED:
        return "purge protected";
    case KV_ERR_DISABLED:
        return "key disabled";
    case KV_ERR_EXPIRED:
        return "key expired";
    case KV_ERR_NOT_YET_VALID:
        return "key not yet valid";
    case KV_ERR_OP_NOT_ALLOWED:
        return "operation not allowed";
    case KV_ERR_FORBIDDEN:
        return "forbidden";
    case KV_ERR_HSM:
        return "hsm failure";
    case KV_ERR_STORE:
        return "store failure";
    case KV_ERR_VAULT_EXISTS:
        return "vault exists";
    case KV_ERR_FORBIDDEN_RBAC:
        return "forbidden by rbac";
    case KV_ERR_HSM_UNAVAILABLE:
        return "hsm unavailable";
    }
    return "?";
}

static kv_status fail(kv_err *e, kv_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static kv_status fail(kv_err *e, kv_status st, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return st;
}

static bool valid_key_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 127)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-')
            return false;
    return true;
}

static const char *recovery_level(const kv_vault_info *v)
{
    if (!v->soft_delete)
        return "Purgeable";
    if (v->purge_protection)
        return v->retention_days == 90 ? "Recoverable" : "CustomizedRecoverable";
    return v->retention_days == 90 ? "Recoverable+Purgeable" : "CustomizedRecoverable+Purgeable";
}

/* ---- lookups (caller holds the lock) ---------------------------------------------------- */

/* Live or soft-deleted. */
static kv_vault *vault_find_any(kv_t *kv, const char *name)
{
    for (size_t i = 0; i < kv->nvaults; i++)
        if (!strcasecmp(kv->vaults[i]->info.name, name))
            return kv->vaults[i];
    return NULL;
}

/* Live vaults only: a soft-deleted vault and its keys do not exist for the data plane. */
static kv_vault *vault_find(kv_t *kv, const char *name)
{
    kv_vault *v = vault_find_any(kv, name);
    return v && !v->info.deleted ? v : NULL;
}

static void notify(kv_t *kv, const char *vault, const char *key)
{
    if (kv->change_fn)
        kv->change_fn(vault, key, kv->change_ud);
}

/* Index of the first key whose lname >= lname. */
static size_t key_lower_bound(const kv_vault *v, const char *lname)
{
    size_t lo = 0, hi = v->nkeys;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (strcmp(v->keys[mid]->lname, lname) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static kv_key *key_find(const kv_vault *v, const char *name)
{
    char lname[128];
    if (strlen(name) >= sizeof lname) /* longer than any valid name: never truncate */
        return NULL;
    emu_lower_copy(lname, sizeof lname, name);
    size_t i = key_lower_bound(v, lname);
    if (i < v->nkeys && !strcmp(v->keys[i]->lname, lname))
        return v->keys[i];
    return NULL;
}

static void key_insert(kv_vault *v, kv_key *k)
{
    size_t i = key_lower_bound(v, k->lname);
    if (v->nkeys == v->capkeys) {
        v->capkeys = v->capkeys ? v->capkeys * 2 : 16;
        v->keys = emu_xrealloc(v->keys, v->capkeys * sizeof *v->keys);
    }
    memmove(v->keys + i + 1, v->keys + i, (v->nkeys - i) * sizeof *v->keys);
    v->keys[i] = k;
    v->nkeys++;
}

static void version_free(kv_version *ver)
{
    if (!ver)
        return;
    json_decref(ver->tags);
    free(ver->n);
    free(ver->sealed);
    free(ver);
}

static void key_free(kv_key *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->nversions; i++)
        version_free(k->versions[i]);
    free(k->versions);
    free(k->by_version);
    json_decref(k->rotation_policy);
    free(k);
}

static void key_remove(kv_vault *v, kv_key *k)
{
    size_t i = key_lower_bound(v, k->lname);
    if (i < v->nkeys && v->keys[i] == k) {
        memmove(v->keys + i, v->keys + i + 1, (v->nkeys - i - 1) * sizeof *v->keys);
        v->nkeys--;
    }
}

static size_t version_lower_bound(const kv_key *k, const char *version)
{
    size_t lo = 0, hi = k->nversions;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (strcmp(k->by_version[mid]->version, version) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static kv_version *version_find(const kv_key *k, const char *version)
{
    if (!version || !*version)
        return k->nversions ? k->versions[k->nversions - 1] : NULL;
    char lv[40];
    if (strlen(version) != 32)
        return NULL;
    emu_lower_copy(lv, sizeof lv, version);
    size_t i = version_lower_bound(k, lv);
    if (i < k->nversions && !strcmp(k->by_version[i]->version, lv))
        return k->by_version[i];
    return NULL;
}

/* Adds a version whose row is written (a new sealed version's blob is in the store now). */
static void version_add(kv_key *k, kv_version *ver)
{
    free(ver->sealed);
    ver->sealed = NULL;
    ver->sealed_len = 0;
    if (k->nversions == k->capversions) {
        k->capversions = k->capversions ? k->capversions * 2 : 4;
        k->versions = emu_xrealloc(k->versions, k->capversions * sizeof *k->versions);
        k->by_version = emu_xrealloc(k->by_version, k->capversions * sizeof *k->by_version);
    }
    /* creation order: by seq (restore and load may add out of order) */
    size_t i = k->nversions;
    while (i > 0 && k->versions[i - 1]->seq > ver->seq)
        i--;
    memmove(k->versions + i + 1, k->versions + i, (k->nversions - i) * sizeof *k->versions);
    k->versions[i] = ver;
    size_t j = version_lower_bound(k, ver->version);
    memmove(k->by_version + j + 1, k->by_version + j, (k->nversions - j) * sizeof *k->by_version);
    k->by_version[j] = ver;
    k->nversions++;
}

static void fill_view(const kv_vault *v, const kv_key *k, const kv_version *ver, kv_key_view *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->vault, sizeof out->vault, "%s", v->info.name);
    snprintf(out->name, sizeof out->name, "%s", k->name);
    snprintf(out->version, sizeof out->version, "%s", ver->version);
    snprintf(out->kty, sizeof out->kty, "%s", ver->hsm ? "RSA-HSM" : "RSA");
    out->bits = ver->bits;
    if (ver->n_len)
        memcpy(out->n, ver->n, ver->n_len);
    out->n_len = ver->n_len;
    memcpy(out->e, ver->e, ver->e_len);
    out->e_len = ver->e_len;
    out->ops = ver->ops;
    out->enabled = ver->enabled;
    out->nbf = ver->nbf;
    out->exp = ver->exp;
    out->created = ver->created;
    out->updated = ver->updated;
    out->tags = ver->tags ? json_deep_copy(ver->tags) : NULL;
    out->recovery_level = recovery_level(&v->info);
    out->recoverable_days = v->info.soft_delete ? v->info.retention_days : 0;
    out->deleted = k->deleted;
    out->deleted_date = k->deleted_date;
    out->scheduled_purge = k->scheduled_purge;
}

void kv_key_view_cleanup(kv_key_view *v)
{
    if (!v)
        return;
    json_decref(v->tags);
    v->tags = NULL;
}

/* ---- key ops ---------------------------------------------------------------------------- */

static const struct {
    const char *name;
    unsigned bit;
} OPS[] = {
    {"encrypt", KV_OP_ENCRYPT}, {"decrypt", KV_OP_DECRYPT}, {"sign", KV_OP_SIGN},
    {"verify", KV_OP_VERIFY},   {"wrapKey", KV_OP_WRAP},    {"unwrapKey", KV_OP_UNWRAP},
    {"import", KV_OP_IMPORT},   {"export", KV_OP_EXPORT},
};

bool kv_ops_parse(const json_t *arr, unsigned *mask, kv_err *e)
{
    if (!json_is_array(arr)) {
        fail(e, KV_ERR_BAD_PARAM, "key_ops must be an array of operation names.");
        return false;
    }
    unsigned m = 0;
    size_t i;
    json_t *it;
    json_array_foreach(arr, i, it)
    {
        const char *s = json_string_value(it);
        bool found = false;
        for (size_t j = 0; s && j < sizeof OPS / sizeof OPS[0]; j++)
            if (!strcasecmp(s, OPS[j].name)) {
                m |= OPS[j].bit;
                found = true;
            }
        if (!found) {
            fail(e, KV_ERR_BAD_PARAM,
                 "Invalid key operation '%s'. Allowed: encrypt, decrypt, sign, verify, wrapKey, "
                 "unwrapKey, import, export.",
                 s ? s : "(not a string)");
            return false;
        }
    }
    *mask = m;
    return true;
}

json_t *kv_ops_json(unsigned mask)
{
    json_t *a = json_array();
    for (size_t j = 0; j < sizeof OPS / sizeof OPS[0]; j++)
        if (mask & OPS[j].bit)
            json_array_append_new(a, json_string(OPS[j].name));
    return a;
}

/* ---- persistence (caller holds kv write lock; takes the store lock) --------------------- */

static bool bind_opt_i64(sqlite3_stmt *st, int idx, int64_t v)
{
    return (v ? sqlite3_bind_int64(st, idx, v) : sqlite3_bind_null(st, idx)) == SQLITE_OK;
}

static bool db_step_done(sqlite3 *db, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        emu_log(EMU_LOG_ERROR, "kv", "store write failed: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE;
}

static bool db_put_key(sqlite3 *db, const char *vault, const kv_key *k)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           /* an upsert, not INSERT OR REPLACE: REPLACE deletes the row
                            * first and the versions' ON DELETE CASCADE with it */
                           "INSERT INTO kv_keys(vault,lname,name,deleted_date,"
                           "scheduled_purge,rotation_policy,rp_created,rp_updated) "
                           "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(vault,lname) DO UPDATE SET "
                           "name=excluded.name, deleted_date=excluded.deleted_date,"
                           " scheduled_purge=excluded.scheduled_purge,"
                           " rotation_policy=excluded.rotation_policy,"
                           " rp_created=excluded.rp_created, rp_updated=excluded.rp_updated",
                           -1, &st, NULL) != SQLITE_OK)
        return false;
    char *rp = k->rotation_policy ? json_dumps(k->rotation_policy, JSON_COMPACT) : NULL;
    sqlite3_bind_text(st, 1, vault, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, k->lname, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, k->name, -1, SQLITE_STATIC);
    bind_opt_i64(st, 4, k->deleted ? k->deleted_date : 0);
    bind_opt_i64(st, 5, k->deleted ? k->scheduled_purge : 0);
    if (rp)
        sqlite3_bind_text(st, 6, rp, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 6);
    bind_opt_i64(st, 7, k->rp_created);
    bind_opt_i64(st, 8, k->rp_updated);
    free(rp);
    return db_step_done(db, st);
}

static bool db_put_version(sqlite3 *db, const char *vault, const char *lname, const kv_version *ver)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           /* an upsert, never REPLACE: a delete would take the version's
                            * sealed blob with it (trigger) with recursive_triggers on */
                           "INSERT INTO kv_versions(vault,lname,version,seq,hsm_id,hsm,"
                           "bits,n,e,ops,enabled,nbf,exp,created,updated,tags) "
                           "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                           "ON CONFLICT(vault,lname,version) DO UPDATE SET seq=excluded.seq,"
                           "hsm_id=excluded.hsm_id,hsm=excluded.hsm,bits=excluded.bits,"
                           "n=excluded.n,e=excluded.e,ops=excluded.ops,enabled=excluded.enabled,"
                           "nbf=excluded.nbf,exp=excluded.exp,created=excluded.created,"
                           "updated=excluded.updated,tags=excluded.tags",
                           -1, &st, NULL) != SQLITE_OK)
        return false;
    char *tags = ver->tags ? json_dumps(ver->tags, JSON_COMPACT) : NULL;
    sqlite3_bind_text(st, 1, vault, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, lname, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, ver->version, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, ver->seq);
    sqlite3_bind_blob(st, 5, ver->hsm_id, HSM_ID_LEN, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, ver->hsm);
    sqlite3_bind_int(st, 7, (int)ver->bits);
    sqlite3_bind_blob(st, 8, ver->n, (int)ver->n_len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 9, ver->e, (int)ver->e_len, SQLITE_STATIC);
    sqlite3_bind_int(st, 10, (int)ver->ops);
    sqlite3_bind_int(st, 11, ver->enabled);
    bind_opt_i64(st, 12, ver->nbf);
    bind_opt_i64(st, 13, ver->exp);
    sqlite3_bind_int64(st, 14, ver->created);
    sqlite3_bind_int64(st, 15, ver->updated);
    if (tags)
        sqlite3_bind_text(st, 16, tags, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 16);
    free(tags);
    if (!db_step_done(db, st))
        return false;
    if (!ver->sealed)
        return true;
    st = NULL;
    if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO kv_sealed(hsm_id, blob) VALUES(?,?)", -1,
                           &st, NULL) != SQLITE_OK)
        return false;
    sqlite3_bind_blob(st, 1, ver->hsm_id, HSM_ID_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, ver->sealed, (int)ver->sealed_len, SQLITE_STATIC);
    return db_step_done(db, st);
}

static bool db_delete_key(sqlite3 *db, const char *vault, const char *lname)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "DELETE FROM kv_keys WHERE vault=? AND lname=?", -1, &st, NULL) !=
        SQLITE_OK)
        return false;
    sqlite3_bind_text(st, 1, vault, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, lname, -1, SQLITE_STATIC);
    return db_step_done(db, st);
}

/* Runs fn inside one transaction; true if committed. */
typedef bool (*db_fn)(sqlite3 *db, void *ud);
/* SQLite's words for the last failed transaction of this thread (store_fail's message). */
static _Thread_local char db_why[96];

static bool db_txn(kv_t *kv, db_fn fn, void *ud)
{
    sqlite3 *db = emu_store_lock(kv->store);
    bool ok = emu_store_begin(db);
    if (ok) {
        ok = fn(db, ud);
        if (ok)
            ok = emu_store_exec(db, "COMMIT");
        if (!ok) {
            snprintf(db_why, sizeof db_why, "%s", sqlite3_errstr(sqlite3_errcode(db)));
            emu_store_rollback(db);
        }
    } else {
        snprintf(db_why, sizeof db_why, "%s", sqlite3_errstr(sqlite3_errcode(db)));
    }
    emu_store_unlock(kv->store);
    return ok;
}

/* A failed write: what could not be done, and SQLite's reason ("database or disk is full",
 * "database is locked"). Nothing was changed (the transaction was rolled back). */
static kv_status store_fail(kv_err *e, const char *what)
{
    return fail(e, KV_ERR_STORE, "The %s (store: %s); nothing was changed.", what, db_why);
}

/* ---- open / load ------------------------------------------------------------------------ */

static void col_text(sqlite3_stmt *st, int i, char *out, size_t outlen)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(out, outlen, "%s", t ? (const char *)t : "");
}

static void info_defaults(kv_vault_info *i)
{
    if (!i->subscription[0])
        snprintf(i->subscription, sizeof i->subscription, "%s", KV_DEFAULT_SUBSCRIPTION);
    if (!i->resource_group[0])
        snprintf(i->resource_group, sizeof i->resource_group, "%s", KV_DEFAULT_RESOURCE_GROUP);
    if (!i->location[0])
        snprintf(i->location, sizeof i->location, "%s", KV_DEFAULT_LOCATION);
    if (!i->sku[0])
        snprintf(i->sku, sizeof i->sku, "standard");
    if (!i->public_network_access[0])
        snprintf(i->public_network_access, sizeof i->public_network_access, "Enabled");
}

static kv_vault *vault_from_info(const kv_vault_info *info)
{
    kv_vault *v = emu_xcalloc(1, sizeof *v);
    v->info = *info;
    emu_lower_copy(v->info.name, sizeof v->info.name, info->name);
    info_defaults(&v->info);
    return v;
}

static void policies_free(kv_access_policy *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_decref(p[i].permissions);
    free(p);
}

static kv_access_policy *policies_copy(const kv_access_policy *p, size_t n)
{
    if (!n)
        return NULL;
    kv_access_policy *c = emu_xcalloc(n, sizeof *c);
    for (size_t i = 0; i < n; i++) {
        c[i] = p[i];
        c[i].permissions = p[i].permissions ? json_deep_copy(p[i].permissions) : json_object();
    }
    return c;
}

/* Frees the vault shell and its ARM data (not its keys). */
static void vault_shell_free(kv_vault *v)
{
    if (!v)
        return;
    json_decref(v->tags);
    json_decref(v->network_acls);
    policies_free(v->policies, v->npolicies);
    free(v->keys);
    free(v);
}

static bool load_all(kv_t *kv, char *err, size_t errlen)
{
    sqlite3 *db = emu_store_lock(kv->store);
    sqlite3_stmt *st = NULL;
    bool ok = false;
    int rc = SQLITE_DONE;
    if (sqlite3_prepare_v2(db,
                           "SELECT name,is_default,soft_delete,retention_days,purge_protection,"
                           "rbac,tenant,created,subscription,resource_group,location,sku,"
                           "public_network_access,tags,network_acls,updated,created_by,"
                           "created_by_type,modified_by,modified_by_type,deletion_date,"
                           "scheduled_purge FROM kv_vaults ORDER BY name",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        kv_vault_info info = {0};
        snprintf(info.name, sizeof info.name, "%s", (const char *)sqlite3_column_text(st, 0));
        info.is_default = sqlite3_column_int(st, 1);
        info.soft_delete = sqlite3_column_int(st, 2);
        info.retention_days = sqlite3_column_int(st, 3);
        info.purge_protection = sqlite3_column_int(st, 4);
        info.rbac = sqlite3_column_int(st, 5);
        snprintf(info.tenant, sizeof info.tenant, "%s", (const char *)sqlite3_column_text(st, 6));
        info.created = sqlite3_column_int64(st, 7);
        col_text(st, 8, info.subscription, sizeof info.subscription);
        col_text(st, 9, info.resource_group, sizeof info.resource_group);
        col_text(st, 10, info.location, sizeof info.location);
        col_text(st, 11, info.sku, sizeof info.sku);
        col_text(st, 12, info.public_network_access, sizeof info.public_network_access);
        info.updated = sqlite3_column_int64(st, 15);
        col_text(st, 16, info.created_by, sizeof info.created_by);
        col_text(st, 17, info.created_by_type, sizeof info.created_by_type);
        col_text(st, 18, info.modified_by, sizeof info.modified_by);
        col_text(st, 19, info.modified_by_type, sizeof info.modified_by_type);
        info.deleted = sqlite3_column_type(st, 20) != SQLITE_NULL;
        info.deletion_date = sqlite3_column_int64(st, 20);
        info.scheduled_purge = sqlite3_column_int64(st, 21);
        kv_vault *v = vault_from_info(&info);
        if (sqlite3_column_type(st, 13) != SQLITE_NULL)
            v->tags = json_loads((const char *)sqlite3_column_text(st, 13), 0, NULL);
        if (sqlite3_column_type(st, 14) != SQLITE_NULL)
            v->network_acls = json_loads((const char *)sqlite3_column_text(st, 14), 0, NULL);
        kv->vaults = emu_xrealloc(kv->vaults, (kv->nvaults + 1) * sizeof *kv->vaults);
        kv->vaults[kv->nvaults++] = v;
    }
    if (rc != SQLITE_DONE)
        goto out; /* a read error part-way is a failed load, not a short one */
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT vault,tenant,object_id,application_id,keys,permissions FROM "
                           "kv_access_policies ORDER BY vault, idx",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        kv_vault *v = vault_find_any(kv, (const char *)sqlite3_column_text(st, 0));
        if (!v || v->npolicies >= KV_MAX_ACCESS_POLICIES)
            continue;
        v->policies = emu_xrealloc(v->policies, (v->npolicies + 1) * sizeof *v->policies);
        kv_access_policy *ap = &v->policies[v->npolicies++];
        memset(ap, 0, sizeof *ap);
        col_text(st, 1, ap->tenant, sizeof ap->tenant);
        col_text(st, 2, ap->object_id, sizeof ap->object_id);
        col_text(st, 3, ap->application_id, sizeof ap->application_id);
        ap->keys = (uint32_t)sqlite3_column_int64(st, 4);
        ap->permissions = json_loads((const char *)sqlite3_column_text(st, 5), 0, NULL);
    }
    if (rc != SQLITE_DONE)
        goto out; /* a read error part-way is a failed load, not a short one */
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT vault,lname,name,deleted_date,scheduled_purge,rotation_policy,"
                           "rp_created,rp_updated FROM kv_keys ORDER BY vault, lname",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        kv_vault *v = vault_find_any(kv, (const char *)sqlite3_column_text(st, 0));
        if (!v)
            continue;
        kv_key *k = emu_xcalloc(1, sizeof *k);
        snprintf(k->lname, sizeof k->lname, "%s", (const char *)sqlite3_column_text(st, 1));
        snprintf(k->name, sizeof k->name, "%s", (const char *)sqlite3_column_text(st, 2));
        k->deleted = sqlite3_column_type(st, 3) != SQLITE_NULL;
        k->deleted_date = sqlite3_column_int64(st, 3);
        k->scheduled_purge = sqlite3_column_int64(st, 4);
        if (sqlite3_column_type(st, 5) != SQLITE_NULL)
            k->rotation_policy = json_loads((const char *)sqlite3_column_text(st, 5), 0, NULL);
        k->rp_created = sqlite3_column_int64(st, 6);
        k->rp_updated = sqlite3_column_int64(st, 7);
        /* rows come sorted by lname: append */
        if (v->nkeys == v->capkeys) {
            v->capkeys = v->capkeys ? v->capkeys * 2 : 16;
            v->keys = emu_xrealloc(v->keys, v->capkeys * sizeof *v->keys);
        }
        v->keys[v->nkeys++] = k;
    }
    if (rc != SQLITE_DONE)
        goto out; /* a read error part-way is a failed load, not a short one */
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT vault,lname,version,seq,hsm_id,hsm,bits,n,e,ops,enabled,nbf,"
                           "exp,created,updated,tags FROM kv_versions ORDER BY vault,lname,seq",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        kv_vault *v = vault_find_any(kv, (const char *)sqlite3_column_text(st, 0));
        kv_key *k = v ? key_find(v, (const char *)sqlite3_column_text(st, 1)) : NULL;
        if (!k)
            continue;
        kv_version *ver = emu_xcalloc(1, sizeof *ver);
        snprintf(ver->version, sizeof ver->version, "%s", (const char *)sqlite3_column_text(st, 2));
        ver->seq = sqlite3_column_int64(st, 3);
        if (sqlite3_column_bytes(st, 4) == HSM_ID_LEN)
            memcpy(ver->hsm_id, sqlite3_column_blob(st, 4), HSM_ID_LEN);
        ver->hsm = sqlite3_column_int(st, 5);
        ver->bits = (unsigned)sqlite3_column_int(st, 6);
        ver->n_len = (size_t)sqlite3_column_bytes(st, 7);
        if (ver->n_len > KV_MAX_N)
            ver->n_len = KV_MAX_N;
        ver->n = emu_xmalloc(ver->n_len ? ver->n_len : 1);
        if (ver->n_len)
            memcpy(ver->n, sqlite3_column_blob(st, 7), ver->n_len);
        ver->e_len = (size_t)sqlite3_column_bytes(st, 8);
        if (ver->e_len > sizeof ver->e)
            ver->e_len = sizeof ver->e;
        memcpy(ver->e, sqlite3_column_blob(st, 8), ver->e_len);
        ver->ops = (unsigned)sqlite3_column_int(st, 9);
        ver->enabled = sqlite3_column_int(st, 10);
        ver->nbf = sqlite3_column_int64(st, 11);
        ver->exp = sqlite3_column_int64(st, 12);
        ver->created = sqlite3_column_int64(st, 13);
        ver->updated = sqlite3_column_int64(st, 14);
        if (sqlite3_column_type(st, 15) != SQLITE_NULL)
            ver->tags = json_loads((const char *)sqlite3_column_text(st, 15), 0, NULL);
        if (ver->seq >= kv->next_seq)
            kv->next_seq = ver->seq + 1;
        version_add(k, ver);
    }
    ok = rc == SQLITE_DONE;
out:
    if (!ok)
        snprintf(err, errlen, "cannot load key vault state: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    emu_store_unlock(kv->store);
    return ok;
}

/* Reconcile token and store: token key pairs that no row refers to are destroyed (a crash
 * between creating the object and committing its row, or between a purge's commit and the
 * object's destruction). Rows whose object is missing are reported. */
typedef struct {
    uint8_t (*ids)[HSM_ID_LEN];
    size_t n, cap;
} id_list;

static void collect_id(const uint8_t id[HSM_ID_LEN], void *ud)
{
    id_list *l = ud;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->ids = emu_xrealloc(l->ids, l->cap * HSM_ID_LEN);
    }
    memcpy(l->ids[l->n++], id, HSM_ID_LEN);
}

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, HSM_ID_LEN);
}

/* Other domains (platform keys, token signing key) register the ids they own so that
 * reconciliation spares them; they live in table hsm_owned. */
static bool id_owned_elsewhere(sqlite3 *db, const uint8_t id[HSM_ID_LEN])
{
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM hsm_owned WHERE hsm_id=?", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_blob(st, 1, id, HSM_ID_LEN, SQLITE_STATIC);
        found = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    return found;
}

/* Hands the sealed blob of every version row to the HSM layer and checks that the blob's
 * public key is its row's (not so when blobs were swapped or copied in the file): fn(id, good,
 * ud) for each; a blob that is malformed or not its row's key is forgotten again, so its
 * version's crypto operations fail instead of using another key. Store lock held. false when
 * the rows cannot be read. */
static bool sealed_rows_load(sqlite3 *db, hsm_t *hsm,
                             void (*fn)(const uint8_t id[HSM_ID_LEN], bool good, void *ud),
                             void *ud)
{
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db,
                                 "SELECT s.hsm_id, s.blob, v.n, v.e FROM kv_sealed s"
                                 " JOIN kv_versions v USING(hsm_id)",
                                 -1, &st, NULL) == SQLITE_OK;
    int rc = SQLITE_DONE;
    while (ok && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const uint8_t *id = sqlite3_column_blob(st, 0);
        int len = sqlite3_column_bytes(st, 1);
        if (sqlite3_column_bytes(st, 0) != HSM_ID_LEN)
            continue;
        /* the blob must carry the row's public key (the JWK the API serves) */
        bool good = len > 0 && hsm_key_load_sealed(hsm, id, sqlite3_column_blob(st, 1), (size_t)len,
                                                   sqlite3_column_blob(st, 2),
                                                   (size_t)sqlite3_column_bytes(st, 2),
                                                   sqlite3_column_blob(st, 3),
                                                   (size_t)sqlite3_column_bytes(st, 3)) == HSM_OK;
        if (!good) /* nor may an entry from before (a domain reopened on a running HSM) */
            hsm_key_destroy(hsm, id);
        fn(id, good, ud);
    }
    ok = ok && rc == SQLITE_DONE;
    sqlite3_finalize(st);
    return ok;
}

typedef struct {
    id_list *good;
    size_t bad;
} sealed_count;

static void on_sealed_row(const uint8_t id[HSM_ID_LEN], bool good, void *ud)
{
    sealed_count *c = ud;
    if (good && c->good)
        collect_id(id, c->good);
    else if (!good)
        c->bad++;
}

/* Whether the store has the sealed keys' table (a data dir last served before them has not;
 * the offline checks open the store without migrating it). */
static bool have_sealed_table(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    bool yes = sqlite3_prepare_v2(db, "SELECT 1 FROM kv_sealed", -1, &st, NULL) == SQLITE_OK;
    sqlite3_finalize(st);
    return yes;
}

#define SEALED_STRAY_WHERE " FROM kv_sealed WHERE hsm_id NOT IN (SELECT hsm_id FROM kv_versions)"

/* Loads every version's sealed blob into the HSM layer and lists their ids (sorted). Blob rows
 * no version refers to (the trigger makes that impossible short of editing the file) are
 * deleted, decided by SQL against the table, not by what was loaded. */
static bool load_sealed(kv_t *kv, id_list *sealed)
{
    sqlite3 *db = emu_store_lock(kv->store);
    sealed_count c = {sealed, 0};
    size_t stray = 0;
    bool ok = sealed_rows_load(db, kv->hsm, on_sealed_row, &c);
    if (ok && emu_store_exec(db, "DELETE" SEALED_STRAY_WHERE))
        stray = (size_t)sqlite3_changes(db);
    emu_store_unlock(kv->store);
    if (stray)
        emu_log(EMU_LOG_WARN, "kv", "deleted %zu sealed key blob(s) that no key version refers to",
                stray);
    if (c.bad)
        emu_log(EMU_LOG_ERROR, "kv",
                "%zu sealed key blob(s) are malformed or not their version's key: those "
                "versions' crypto operations fail",
                c.bad);
    if (sealed->n)
        qsort(sealed->ids, sealed->n, HSM_ID_LEN, cmp_id);
    return ok;
}

bool kv_store_sealed_check(emu_store *store, hsm_t *hsm, size_t *bad, size_t *stray)
{
    sqlite3 *db = emu_store_lock(store);
    sealed_count c = {NULL, 0};
    sqlite3_stmt *st = NULL;
    *bad = *stray = 0;
    bool ok = have_sealed_table(db);
    if (!ok) { /* no sealed keys table yet: nothing to check */
        emu_store_unlock(store);
        return true;
    }
    ok = sealed_rows_load(db, hsm, on_sealed_row, &c) &&
         sqlite3_prepare_v2(db, "SELECT count(*)" SEALED_STRAY_WHERE, -1, &st, NULL) == SQLITE_OK &&
         sqlite3_step(st) == SQLITE_ROW;
    if (ok)
        *stray = (size_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    emu_store_unlock(store);
    *bad = c.bad;
    return ok;
}

static void reconcile(kv_t *kv)
{
    id_list token = {0}, rows = {0}, sealed = {0};
    for (size_t i = 0; i < kv->nvaults; i++)
        for (size_t j = 0; j < kv->vaults[i]->nkeys; j++) {
            kv_key *k = kv->vaults[i]->keys[j];
            for (size_t x = 0; x < k->nversions; x++)
                collect_id(k->versions[x]->hsm_id, &rows);
        }
    if (rows.n)
        qsort(rows.ids, rows.n, HSM_ID_LEN, cmp_id);
    if (!load_sealed(kv, &sealed))
        emu_log(EMU_LOG_ERROR, "kv", "cannot read the sealed key blobs: %s",
                "their key versions' crypto operations fail");
    if (hsm_key_foreach(kv->hsm, collect_id, &token) != HSM_OK) {
        emu_log(EMU_LOG_WARN, "kv", "cannot list token keys; reconciliation skipped");
        free(rows.ids);
        free(sealed.ids);
        return;
    }
    if (token.n)
        qsort(token.ids, token.n, HSM_ID_LEN, cmp_id);
    sqlite3 *db = emu_store_lock(kv->store);
    size_t orphans = 0, missing = 0;
    for (size_t i = 0; i < token.n; i++) {
        if (rows.n && bsearch(token.ids[i], rows.ids, rows.n, HSM_ID_LEN, cmp_id))
            continue;
        if (id_owned_elsewhere(db, token.ids[i]))
            continue;
        hsm_key_destroy(kv->hsm, token.ids[i]);
        orphans++;
    }
    emu_store_unlock(kv->store);
    for (size_t i = 0; i < rows.n; i++)
        if ((!token.n || !bsearch(rows.ids[i], token.ids, token.n, HSM_ID_LEN, cmp_id)) &&
            (!sealed.n || !bsearch(rows.ids[i], sealed.ids, sealed.n, HSM_ID_LEN, cmp_id)))
            missing++;
    kv->reconciled_orphans += orphans;
    kv->reconciled_missing = missing;
    if (orphans)
        emu_log(EMU_LOG_WARN, "kv", "destroyed %zu token key pair(s) that no key version refers to",
                orphans);
    if (missing)
        emu_log(EMU_LOG_ERROR, "kv",
                "%zu key version(s) have no key pair in the token: their crypto operations fail",
                missing);
    free(token.ids);
    free(rows.ids);
    free(sealed.ids);
}

/* The backup signing key: created after reconciliation on first start and recorded in
 * hsm_owned in the same transaction as its meta row, so later reconciliations spare it. */
static bool ensure_backup_signing_key(kv_t *kv, char *err, size_t errlen)
{
    char hex[40];
    unsigned bits;
    if (emu_store_meta_get(kv->store, "kv_backup_signing_key", hex, sizeof hex) &&
        emu_hex_decode(hex, kv->backup_sign_id, HSM_ID_LEN) &&
        hsm_rsa_bits(kv->hsm, kv->backup_sign_id, &bits) == HSM_OK)
        return true;
    hsm_status hs = hsm_rsa_generate(kv->hsm, 2048, 0, "cmkemu/backup-signing", kv->backup_sign_id);
    if (hs != HSM_OK) {
        snprintf(err, errlen, "cannot create the backup signing key: %s", hsm_status_str(hs));
        return false;
    }
    emu_hex_encode(kv->backup_sign_id, HSM_ID_LEN, hex);
    bool ok = emu_store_own_hsm_object(kv->store, kv->backup_sign_id, HSM_ID_LEN,
                                       "kv-backup-signing", "kv_backup_signing_key", hex);
    if (!ok) {
        hsm_key_destroy(kv->hsm, kv->backup_sign_id);
        snprintf(err, errlen, "cannot record the backup signing key");
    }
    return ok;
}

void kv_reconciled(const kv_t *kv, size_t *orphans, size_t *missing)
{
    *orphans = kv->reconciled_orphans;
    *missing = kv->reconciled_missing;
}

bool kv_store_hsm_ids(emu_store *store, size_t *nsealed,
                      void (*fn)(const uint8_t id[HSM_ID_LEN], void *ud), void *ud)
{
    sqlite3 *db = emu_store_lock(store);
    sqlite3_stmt *st = NULL;
    /* a data dir last served before sealed keys has no kv_sealed table: every row is a token
     * key then */
    bool have_sealed = have_sealed_table(db);
    bool ok = sqlite3_prepare_v2(db,
                                 have_sealed ? "SELECT v.hsm_id, s.hsm_id IS NOT NULL FROM "
                                               "kv_versions v LEFT JOIN kv_sealed s USING(hsm_id)"
                                             : "SELECT hsm_id, 0 FROM kv_versions",
                                 -1, &st, NULL) == SQLITE_OK;
    int rc = SQLITE_DONE;
    size_t sealed = 0;
    while (ok && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_int(st, 1))
            sealed++;
        else if (sqlite3_column_bytes(st, 0) == HSM_ID_LEN)
            fn(sqlite3_column_blob(st, 0), ud);
    }
    ok = ok && rc == SQLITE_DONE;
    sqlite3_finalize(st);
    emu_store_unlock(store);
    if (nsealed)
        *nsealed = sealed;
    return ok;
}

static void due_hook(int64_t now, void *ud)
{
    kv_apply_due(ud, now);
}

kv_t *kv_open(emu_store *store, hsm_t *hsm, char *err, size_t errlen)
{
    if (!emu_store_migrate(store, KV_MIGRATIONS, sizeof KV_MIGRATIONS / sizeof KV_MIGRATIONS[0],
                           err, errlen))
        return NULL;
    /* table hsm_owned comes with the core schema (emu_store_open) */
    kv_t *kv = emu_xcalloc(1, sizeof *kv);
    pthread_rwlock_init(&kv->lock, NULL);
    kv->store = store;
    kv->hsm = hsm;
    kv->next_seq = 1;
    if (!load_all(kv, err, errlen)) {
        kv_close(kv);
        return NULL;
    }
    reconcile(kv);
    if (!ensure_backup_signing_key(kv, err, errlen)) {
        kv_close(kv);
        return NULL;
    }
    emu_clock_hook_add(due_hook, kv);
    return kv;
}

void kv_close(kv_t *kv)
{
    if (!kv)
        return;
    for (size_t i = 0; i < kv->nvaults; i++) {
        for (size_t j = 0; j < kv->vaults[i]->nkeys; j++)
            key_free(kv->vaults[i]->keys[j]);
        vault_shell_free(kv->vaults[i]);
    }
    free(kv->vaults);
    pthread_rwlock_destroy(&kv->lock);
    free(kv);
}

hsm_t *kv_hsm(kv_t *kv)
{
    return kv->hsm;
}

/* ---- vaults ----------------------------------------------------------------------------- */

static bool valid_vault_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 3 || n > 24 || !isalpha((unsigned char)s[0]) || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)s[i]) && s[i] != '-')
            return false;
        if (s[i] == '-' && s[i + 1] == '-')
            return false;
    }
    return true;
}

/* What one vault row (and its access policies) should hold. */
typedef struct {
    const kv_vault_info *info;
    const json_t *tags, *network_acls;
    const kv_access_policy *policies;
    size_t npolicies;
} vault_put_ud;

static void bind_json(sqlite3_stmt *st, int idx, const json_t *j)
{
    char *t = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (t)
        sqlite3_bind_text(st, idx, t, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, idx);
    free(t);
}

static bool db_put_vault(sqlite3 *db, void *ud)
{
    vault_put_ud *u = ud;
    const kv_vault_info *i = u->info;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(
            db,
            "INSERT INTO kv_vaults(name,is_default,soft_delete,"
            "retention_days,purge_protection,rbac,tenant,created,subscription,"
            "resource_group,location,sku,public_network_access,tags,network_acls,"
            "updated,created_by,created_by_type,modified_by,modified_by_type,"
            "deletion_date,scheduled_purge) "
            "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET "
            "is_default=excluded.is_default, soft_delete=excluded.soft_delete,"
            " retention_days=excluded.retention_days,"
            " purge_protection=excluded.purge_protection, rbac=excluded.rbac,"
            " tenant=excluded.tenant, subscription=excluded.subscription,"
            " resource_group=excluded.resource_group, location=excluded.location,"
            " sku=excluded.sku, public_network_access=excluded.public_network_access,"
            " tags=excluded.tags, network_acls=excluded.network_acls,"
            " updated=excluded.updated, created_by=excluded.created_by,"
            " created_by_type=excluded.created_by_type,"
            " modified_by=excluded.modified_by,"
            " modified_by_type=excluded.modified_by_type,"
            " deletion_date=excluded.deletion_date,"
            " scheduled_purge=excluded.scheduled_purge",
            -1, &st, NULL) != SQLITE_OK)
        return false;
    sqlite3_bind_text(st, 1, i->name, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, i->is_default);
    sqlite3_bind_int(st, 3, i->soft_delete);
    sqlite3_bind_int(st, 4, i->retention_days);
    sqlite3_bind_int(st, 5, i->purge_protection);
    sqlite3_bind_int(st, 6, i->rbac);
    sqlite3_bind_text(st, 7, i->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, i->created);
    sqlite3_bind_text(st, 9, i->subscription, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, i->resource_group, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 11, i->location, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 12, i->sku, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 13, i->public_network_access, -1, SQLITE_STATIC);
    bind_json(st, 14, u->tags);
    bind_json(st, 15, u->network_acls);
    bind_opt_i64(st, 16, i->updated);
    sqlite3_bind_text(st, 17, i->created_by, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 18, i->created_by_type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 19, i->modified_by, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 20, i->modified_by_type, -1, SQLITE_STATIC);
    if (i->deleted) {
        sqlite3_bind_int64(st, 21, i->deletion_date);
        sqlite3_bind_int64(st, 22, i->scheduled_purge);
    } else {
        sqlite3_bind_null(st, 21);
        sqlite3_bind_null(st, 22);
    }
    if (!db_step_done(db, st))
        return false;
    st = NULL;
    if (sqlite3_prepare_v2(db, "DELETE FROM kv_access_policies WHERE vault=?", -1, &st, NULL) !=
        SQLITE_OK)
        return false;
    sqlite3_bind_text(st, 1, i->name, -1, SQLITE_STATIC);
    if (!db_step_done(db, st))
        return false;
    for (size_t x = 0; x < u->npolicies; x++) {
        const kv_access_policy *ap = &u->policies[x];
        if (sqlite3_prepare_v2(db,
                               "INSERT INTO kv_access_policies(vault,idx,tenant,object_id,"
                               "application_id,keys,permissions) VALUES(?,?,?,?,?,?,?)",
                               -1, &st, NULL) != SQLITE_OK)
            return false;
        sqlite3_bind_text(st, 1, i->name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)x);
        sqlite3_bind_text(st, 3, ap->tenant, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, ap->object_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, ap->application_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 6, ap->keys);
        if (ap->permissions)
            bind_json(st, 7, ap->permissions);
        else
            sqlite3_bind_text(st, 7, "{}", -1, SQLITE_STATIC);
        if (!db_step_done(db, st))
            return false;
    }
    return true;
}

static vault_put_ud vault_ud(const kv_vault *v)
{
    return (vault_put_ud){&v->info, v->tags, v->network_acls, v->policies, v->npolicies};
}

kv_status kv_vault_create(kv_t *kv, const kv_vault_info *info, kv_err *e)
{
    if (!valid_vault_name(info->name))
        return fail(e, KV_ERR_BAD_PARAM,
                    "Vault name '%s' is invalid: 3-24 characters, letters, digits and single "
                    "dashes, starting with a letter.",
                    info->name);
    if (info->retention_days < 7 || info->retention_days > 90)
        return fail(e, KV_ERR_BAD_PARAM, "softDeleteRetentionInDays must be from 7 to 90.");
    kv_vault *v = vault_from_info(info);
    if (!v->info.created)
        v->info.created = emu_clock_now();
    if (!v->info.updated)
        v->info.updated = v->info.created;
    v->info.deleted = false;
    pthread_rwlock_wrlock(&kv->lock);
    kv_status st = KV_OK;
    if (vault_find_any(kv, v->info.name)) {
        st = fail(e, KV_ERR_VAULT_EXISTS, "A vault named '%s' already exists.", v->info.name);
    } else {
        for (size_t i = 0; i < kv->nvaults && v->info.is_default; i++)
            if (kv->vaults[i]->info.is_default)
                st = fail(e, KV_ERR_CONFLICT, "Vault '%s' is already the default vault.",
                          kv->vaults[i]->info.name);
    }
    if (st == KV_OK) {
        vault_put_ud ud = vault_ud(v);
        if (!db_txn(kv, db_put_vault, &ud))
            st = store_fail(e, "vault could not be saved");
    }
    if (st == KV_OK) {
        kv->vaults = emu_xrealloc(kv->vaults, (kv->nvaults + 1) * sizeof *kv->vaults);
        kv->vaults[kv->nvaults++] = v;
        v = NULL;
    }
    pthread_rwlock_unlock(&kv->lock);
    vault_shell_free(v);
    return st;
}

kv_status kv_vault_get(kv_t *kv, const char *name, kv_vault_info *out)
{
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v = vault_find(kv, name);
    if (v)
        *out = v->info;
    pthread_rwlock_unlock(&kv->lock);
    return v ? KV_OK : KV_ERR_VAULT_NOT_FOUND;
}

bool kv_vault_default(kv_t *kv, char *out, size_t outlen)
{
    bool found = false;
    pthread_rwlock_rdlock(&kv->lock);
    for (size_t i = 0; i < kv->nvaults && !found; i++)
        if (kv->vaults[i]->info.is_default && !kv->vaults[i]->info.deleted) {
            snprintf(out, outlen, "%s", kv->vaults[i]->info.name);
            found = true;
        }
    pthread_rwlock_unlock(&kv->lock);
    return found;
}

size_t kv_vault_count(kv_t *kv)
{
    pthread_rwlock_rdlock(&kv->lock);
    size_t n = kv->nvaults;
    pthread_rwlock_unlock(&kv->lock);
    return n;
}

size_t kv_key_count(kv_t *kv, const char *vault)
{
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v = vault_find(kv, vault);
    size_t n = v ? v->nkeys : 0;
    pthread_rwlock_unlock(&kv->lock);
    return n;
}

/* ---- vaults: ARM side ------------------------------------------------------------------- */

void kv_vault_state_cleanup(kv_vault_state *s)
{
    if (!s)
        return;
    json_decref(s->tags);
    json_decref(s->network_acls);
    policies_free(s->policies, s->npolicies);
    s->tags = s->network_acls = NULL;
    s->policies = NULL;
    s->npolicies = 0;
}

kv_status kv_vault_state_get(kv_t *kv, const char *name, kv_vault_state *out)
{
    memset(out, 0, sizeof *out);
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v = vault_find_any(kv, name);
    if (v) {
        out->info = v->info;
        out->tags = v->tags ? json_deep_copy(v->tags) : NULL;
        out->network_acls = v->network_acls ? json_deep_copy(v->network_acls) : NULL;
        out->policies = policies_copy(v->policies, v->npolicies);
        out->npolicies = v->npolicies;
    }
    pthread_rwlock_unlock(&kv->lock);
    return v ? KV_OK : KV_ERR_VAULT_NOT_FOUND;
}

kv_status kv_vault_put(kv_t *kv, const kv_vault_state *in, bool *created, kv_err *e)
{
    if (created)
        *created = false;
    if (!valid_vault_name(in->info.name))
        return fail(e, KV_ERR_BAD_PARAM,
                    "The vault name '%.64s' is invalid. A vault name must be between 3-24 "
                    "alphanumeric characters. The name must begin with a letter, end with a "
                    "letter or digit, and not contain consecutive hyphens.",
                    in->info.name);
    if (in->info.retention_days < 7 || in->info.retention_days > 90)
        return fail(e, KV_ERR_BAD_PARAM,
                    "The value of softDeleteRetentionInDays must be between 7 and 90.");
    if (in->npolicies > KV_MAX_ACCESS_POLICIES)
        return fail(e, KV_ERR_BAD_PARAM, "The number of access policies exceeds the maximum of %d.",
                    KV_MAX_ACCESS_POLICIES);
    kv_vault *nv = vault_from_info(&in->info);
    nv->tags = in->tags ? json_deep_copy(in->tags) : NULL;
    nv->network_acls = in->network_acls ? json_deep_copy(in->network_acls) : NULL;
    nv->policies = policies_copy(in->policies, in->npolicies);
    nv->npolicies = in->npolicies;
    nv->info.deleted = false;
    nv->info.deletion_date = nv->info.scheduled_purge = 0;
    int64_t now = emu_clock_now();
    kv_status st = KV_OK;
    pthread_rwlock_wrlock(&kv->lock);
    kv_vault *old = vault_find_any(kv, nv->info.name);
    if (old && old->info.deleted) {
        st = fail(e, KV_ERR_VAULT_EXISTS,
                  "The vault name '%s' is already in use. Vault names are globally unique so "
                  "it is possible that the name is already taken. If you are sure that the "
                  "vault name was not taken then it is possible that a vault with the same name "
                  "was recently deleted but not purged after being placed in a recoverable "
                  "state. If the vault is in a recoverable state then the vault will need to be "
                  "purged before reusing the name. For more information on VaultAlreadyExists, "
                  "soft delete and purging a vault follow this link "
                  "https://go.microsoft.com/fwlink/?linkid=2147740.",
                  nv->info.name);
    } else if (old && (strcasecmp(old->info.subscription, nv->info.subscription) ||
                       strcasecmp(old->info.resource_group, nv->info.resource_group))) {
        st = fail(e, KV_ERR_VAULT_EXISTS,
                  "The vault name '%s' is already in use. Vault names are globally unique so "
                  "it is possible that the name is already taken.",
                  nv->info.name);
    } else if (old && old->info.purge_protection && !nv->info.purge_protection) {
        st = fail(e, KV_ERR_BAD_PARAM,
                  "The property \"enablePurgeProtection\" cannot be set to false. Enabling the "
                  "purge protection for a vault is an irreversible action.");
    } else if (old && old->info.soft_delete && !nv->info.soft_delete) {
        st = fail(e, KV_ERR_BAD_PARAM,
                  "The property \"enableSoftDelete\" cannot be set to false. Enabling the soft "
                  "delete for a vault is an irreversible action.");
    } else if (!old && nv->info.is_default) {
        for (size_t i = 0; i < kv->nvaults; i++)
            if (kv->vaults[i]->info.is_default)
                st = fail(e, KV_ERR_CONFLICT, "Vault '%s' is already the default vault.",
                          kv->vaults[i]->info.name);
    }
    if (st == KV_OK) {
        if (old) {
            nv->info.is_default = old->info.is_default;
            nv->info.created = old->info.created;
            memcpy(nv->info.created_by, old->info.created_by, sizeof nv->info.created_by);
            memcpy(nv->info.created_by_type, old->info.created_by_type,
                   sizeof nv->info.created_by_type);
        } else {
            nv->info.created = now;
        }
        nv->info.updated = now;
        vault_put_ud ud = vault_ud(nv);
        if (!db_txn(kv, db_put_vault, &ud)) {
            st = store_fail(e, "vault could not be saved");
        } else if (old) {
            /* keep the keys, take everything else */
            kv_vault tmp = *old;
            old->info = nv->info;
            old->tags = nv->tags;
            old->network_acls = nv->network_acls;
            old->policies = nv->policies;
            old->npolicies = nv->npolicies;
            nv->tags = tmp.tags;
            nv->network_acls = tmp.network_acls;
            nv->policies = tmp.policies;
            nv->npolicies = tmp.npolicies;
        } else {
            kv->vaults = emu_xrealloc(kv->vaults, (kv->nvaults + 1) * sizeof *kv->vaults);
            kv->vaults[kv->nvaults++] = nv;
            nv = NULL;
            if (created)
                *created = true;
        }
    }
    char name[64];
    snprintf(name, sizeof name, "%s", in->info.name);
    pthread_rwlock_unlock(&kv->lock);
    vault_shell_free(nv);
    if (st == KV_OK)
        notify(kv, name, NULL);
    return st;
}

static bool db_delete_vault(sqlite3 *db, void *ud)
{
    const char *name = ud;
    static const char *const SQL[] = {
        "DELETE FROM kv_versions WHERE vault=?", "DELETE FROM kv_keys WHERE vault=?",
        "DELETE FROM kv_access_policies WHERE vault=?", "DELETE FROM kv_vaults WHERE name=?"};
    for (size_t i = 0; i < sizeof SQL / sizeof SQL[0]; i++) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, SQL[i], -1, &st, NULL) != SQLITE_OK)
            return false;
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        if (!db_step_done(db, st))
            return false;
    }
    return true;
}

/* Removes a vault from store and memory, then destroys every key pair of its keys in the
 * token (rows first, objects after). Write lock held. */
static kv_status vault_purge_locked(kv_t *kv, kv_vault *v, kv_err *e)
{
    if (!db_txn(kv, db_delete_vault, v->info.name))
        return store_fail(e, "vault could not be purged from the store");
    /* rows first, durably (an HTTP caller's commit is not synced yet), then the objects */
    emu_store_wait_all_durable(kv->store);
    for (size_t i = 0; i < kv->nvaults; i++)
        if (kv->vaults[i] == v) {
            memmove(kv->vaults + i, kv->vaults + i + 1, (kv->nvaults - i - 1) * sizeof *kv->vaults);
            kv->nvaults--;
            break;
        }
    size_t destroyed = 0;
    for (size_t j = 0; j < v->nkeys; j++) {
        kv_key *k = v->keys[j];
        for (size_t x = 0; x < k->nversions; x++) {
            hsm_status hs = hsm_key_destroy(kv->hsm, k->versions[x]->hsm_id);
            if (hs == HSM_OK)
                destroyed++;
            else if (hs != HSM_ERR_NOT_FOUND)
                emu_log(EMU_LOG_WARN, "kv",
                        "purged vault %s: a key pair was not destroyed (%s); the next start "
                        "removes it",
                        v->info.name, hsm_status_str(hs));
        }
        key_free(k);
    }
    emu_log(EMU_LOG_INFO, "kv", "purged vault %s (%zu keys, %zu key pairs destroyed)", v->info.name,
            v->nkeys, destroyed);
    v->nkeys = 0;
    vault_shell_free(v);
    return KV_OK;
}

/* Saves a changed copy of a vault's info (same keys, policies and tags) and adopts it once
 * committed. Write lock held. */
static kv_status vault_info_commit_locked(kv_t *kv, kv_vault *v, const kv_vault_info *next,
                                          const char *what, kv_err *e)
{
    vault_put_ud ud = vault_ud(v);
    ud.info = next;
    if (!db_txn(kv, db_put_vault, &ud))
        return fail(e, KV_ERR_STORE, "The vault could not be %s.", what);
    v->info = *next;
    return KV_OK;
}

kv_status kv_vault_delete(kv_t *kv, const char *name, kv_err *e)
{
    char lname[64];
    emu_lower_copy(lname, sizeof lname, name);
    pthread_rwlock_wrlock(&kv->lock);
    kv_vault *v = vault_find(kv, lname);
    kv_status st = KV_OK;
    if (!v) {
        st = fail(e, KV_ERR_VAULT_NOT_FOUND, "Vault '%.64s' does not exist.", name);
    } else if (!v->info.soft_delete) {
        st = vault_purge_locked(kv, v, e);
    } else {
        kv_vault_info next = v->info;
        next.deleted = true;
        next.deletion_date = emu_clock_now();
        next.scheduled_purge = next.deletion_date + (int64_t)next.retention_days * 86400;
        st = vault_info_commit_locked(kv, v, &next, "deleted", e);
    }
    pthread_rwlock_unlock(&kv->lock);
    if (st == KV_OK)
        notify(kv, lname, NULL);
    return st;
}

kv_status kv_vault_recover(kv_t *kv, const char *name, kv_err *e)
{
    char lname[64];
    emu_lower_copy(lname, sizeof lname, name);
    pthread_rwlock_wrlock(&kv->lock);
    kv_vault *v = vault_find_any(kv, lname);
    kv_status st = KV_OK;
    if (!v || !v->info.deleted) {
        st = fail(e, KV_ERR_VAULT_NOT_FOUND, "No deleted vault named '%.64s' was found.", name);
    } else {
        kv_vault_info next = v->info;
        next.deleted = false;
        next.deletion_date = next.scheduled_purge = 0;
        next.updated = emu_clock_now();
        st = vault_info_commit_locked(kv, v, &next, "recovered", e);
    }
    pthread_rwlock_unlock(&kv->lock);
    if (st == KV_OK)
        notify(kv, lname, NULL);
    return st;
}

kv_status kv_vault_purge(kv_t *kv, const char *name, kv_err *e)
{
    char lname[64];
    emu_lower_copy(lname, sizeof lname, name);
    pthread_rwlock_wrlock(&kv->lock);
    kv_vault *v = vault_find_any(kv, lname);
    kv_status st = KV_OK;
    if (!v || !v->info.deleted)
        st = fail(e, KV_ERR_VAULT_NOT_FOUND, "No deleted vault named '%.64s' was found.", name);
    else if (v->info.purge_protection && emu_clock_now() < v->info.scheduled_purge)
        st = fail(e, KV_ERR_PURGE_PROTECTED,
                  "Operation 'DeletedVaultPurge' is not allowed: vault '%s' has purge "
                  "protection enabled, so it can only be purged by the service after its "
                  "scheduled purge date.",
                  v->info.name);
    else
        st = vault_purge_locked(kv, v, e);
    pthread_rwlock_unlock(&kv->lock);
    if (st == KV_OK)
        notify(kv, lname, NULL);
    return st;
}

static int cmp_name64(const void *a, const void *b)
{
    return strcmp(a, b);
}

size_t kv_vault_names(kv_t *kv, bool deleted, char (**out)[64])
{
    pthread_rwlock_rdlock(&kv->lock);
    char(*names)[64] = emu_xcalloc(kv->nvaults + 1, 64);
    size_t n = 0;
    for (size_t i = 0; i < kv->nvaults; i++)
        if (kv->vaults[i]->info.deleted == deleted)
            snprintf(names[n++], 64, "%s", kv->vaults[i]->info.name);
    pthread_rwlock_unlock(&kv->lock);
    qsort(names, n, 64, cmp_name64);
    *out = names;
    return n;
}

kv_status kv_vault_policy_grants(kv_t *kv, const char *vault, const char *object_id,
                                 const char *appid, uint32_t perm, bool *granted,
                                 kv_vault_info *info)
{
    *granted = false;
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v = vault_find(kv, vault);
    if (v) {
        if (info)
            *info = v->info;
        for (size_t i = 0; i < v->npolicies && !*granted; i++) {
            const kv_access_policy *ap = &v->policies[i];
            if (strcasecmp(ap->object_id, object_id) != 0)
                continue;
            if (ap->application_id[0] && strcasecmp(ap->application_id, appid ? appid : ""))
                continue;
            *granted = (ap->keys & perm) == perm;
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    return v ? KV_OK : KV_ERR_VAULT_NOT_FOUND;
}

void kv_set_change_hook(kv_t *kv, kv_change_fn fn, void *ud)
{
    kv->change_fn = fn;
    kv->change_ud = ud;
}

void kv_set_rbac_check(kv_t *kv, kv_rbac_check_fn fn, void *ud)
{
    kv->rbac_fn = fn;
    kv->rbac_ud = ud;
}

/* The hook kv_set_rbac_roles installs: the role assignments decide, at the vault's ARM id. */
static kv_status rbac_via_roles(const char *vault, const char *key, const auth_principal *p,
                                const char *permission, kv_err *e, void *ud)
{
    kv_t *kv = ud;
    kv_vault_info vi;
    if (kv_vault_get(kv, vault, &vi) != KV_OK) {
        snprintf(e->msg, sizeof e->msg, "Vault '%.64s' does not exist.", vault);
        return KV_ERR_VAULT_NOT_FOUND;
    }
    return auth_roles_kv_check(kv->rbac_roles, p, vi.subscription, vi.resource_group, vi.name,
                               vi.location, key, permission, e->msg, sizeof e->msg)
               ? KV_OK
               : KV_ERR_FORBIDDEN_RBAC;
}

void kv_set_rbac_roles(kv_t *kv, roles_t *roles)
{
    kv->rbac_roles = roles;
    kv_set_rbac_check(kv, roles ? rbac_via_roles : NULL, roles ? kv : NULL);
}

kv_rbac_check_fn kv_rbac_check(kv_t *kv, void **ud)
{
    if (ud)
        *ud = kv->rbac_ud;
    return kv->rbac_fn;
}

/* ---- create / import -------------------------------------------------------------------- */

static kv_status hsm_fail(kv_err *e, hsm_status hs, const char *what)
{
    if (hs == HSM_ERR_ARGS)
        return fail(e, KV_ERR_BAD_PARAM, "The HSM refused the %s: invalid parameters.", what);
    if (hs == HSM_ERR_UNAVAILABLE)
        return fail(e, KV_ERR_HSM_UNAVAILABLE,
                    "The HSM is unavailable for the %s (device error, token removed or session "
                    "lost); nothing was changed, retry the request later.",
                    what);
    emu_log(EMU_LOG_WARN, "kv", "HSM failure in %s: %s (%s)", what, hsm_status_str(hs),
            hsm_last_rv_name());
    return fail(e, KV_ERR_HSM, "The HSM failed the %s (%s, %s).", what, hsm_status_str(hs),
                hsm_last_rv_name());
}

/* Checks that name may get a new version: vault exists, key not soft-deleted. Lock held. */
static kv_status check_new_version(kv_t *kv, const char *vault, const char *name, kv_vault **vp,
                                   kv_key **kp, kv_err *e)
{
    kv_vault *v = vault_find(kv, vault);
    if (!v)
        return fail(e, KV_ERR_VAULT_NOT_FOUND, "Vault '%s' does not exist.", vault);
    kv_key *k = key_find(v, name);
    if (k && k->deleted)
        return fail(e, KV_ERR_DELETED_CONFLICT,
                    "Key %s is currently in a deleted but recoverable state, and its name "
                    "cannot be reused; in this state, the key can only be recovered or purged.",
                    name);
    *vp = v;
    *kp = k;
    return KV_OK;
}

typedef struct {
    const char *vault;
    kv_key *key;
    bool put_key;
    kv_version **versions;
    size_t nversions;
} put_ud;

static bool db_put_key_versions(sqlite3 *db, void *vud)
{
    put_ud *u = vud;
    if (u->put_key && !db_put_key(db, u->vault, u->key))
        return false;
    for (size_t i = 0; i < u->nversions; i++)
        if (!db_put_version(db, u->vault, u->key->lname, u->versions[i]))
            return false;
    return true;
}

static json_t *policy_get_default(void);
static int64_t policy_expiry_seconds(const json_t *policy);

/* Adds a version whose key pair already exists in the token. On failure the pair is
 * destroyed. */
static kv_status add_version(kv_t *kv, const char *vault, const char *name, kv_version *ver,
                             kv_key_view *out, kv_err *e)
{
    pthread_rwlock_wrlock(&kv->lock);
    kv_vault *v = NULL;
    kv_key *k = NULL;
    kv_status st = check_new_version(kv, vault, name, &v, &k, e);
    bool new_key = false;
    if (st == KV_OK) {
        if (!k) {
            k = emu_xcalloc(1, sizeof *k);
            snprintf(k->name, sizeof k->name, "%s", name);
            emu_lower_copy(k->lname, sizeof k->lname, name);
            new_key = true;
        }
        ver->seq = kv->next_seq++;
        if (!ver->exp && k->rotation_policy) {
            int64_t life = policy_expiry_seconds(k->rotation_policy);
            if (life > 0)
                ver->exp = ver->created + life;
        }
        put_ud ud = {v->info.name, k, new_key, &ver, 1};
        if (!db_txn(kv, db_put_key_versions, &ud)) {
            st = store_fail(e, "key could not be saved");
            if (new_key)
                key_free(k);
        } else {
            if (new_key)
                key_insert(v, k);
            version_add(k, ver);
            if (out)
                fill_view(v, k, ver, out);
            ver = NULL;
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    if (ver) {
        hsm_key_destroy(kv->hsm, ver->hsm_id);
        version_free(ver);
    }
    if (st == KV_OK)
        notify(kv, vault, name);
    return st;
}

static void new_version_id(kv_t *kv, char out[33])
{
    uint8_t r[16];
    if (hsm_random(kv->hsm, r, sizeof r) != HSM_OK) {
        char g[37];
        emu_guid(g); /* OpenSSL CSPRNG fallback */
        size_t o = 0;
        for (size_t i = 0; g[i] && o < 32; i++)
            if (g[i] != '-')
                out[o++] = g[i];
        out[32] = '\0';
        return;
    }
    emu_hex_encode(r, 16, out);
}

static kv_status validate_create(const char *name, const kv_create_params *p, kv_err *e)
{
    if (!valid_key_name(name))
        return fail(e, KV_ERR_BAD_PARAM,
                    "Key name '%.130s' is invalid: use 1-127 letters, digits and dashes.", name);
    if (p->nbf && p->exp && p->nbf >= p->exp)
        return fail(e, KV_ERR_BAD_PARAM, "The key's nbf must be earlier than its exp.");
    return KV_OK;
}

static kv_version *version_new(kv_t *kv, const kv_create_params *p)
{
    kv_version *ver = emu_xcalloc(1, sizeof *ver);
    new_version_id(kv, ver->version);
    ver->hsm = p->hsm;
    ver->ops = p->ops ? p->ops : KV_OPS_RSA_DEFAULT;
    ver->enabled = p->has_enabled ? p->enabled : true;
    ver->nbf = p->nbf;
    ver->exp = p->exp;
    ver->created = ver->updated = emu_clock_now();
    ver->tags = p->tags ? json_deep_copy(p->tags) : NULL;
    return ver;
}

static kv_status fill_public(kv_t *kv, kv_version *ver, kv_err *e)
{
    uint8_t *n = NULL, *ex = NULL;
    size_t nl = 0, el = 0;
    hsm_status hs = hsm_rsa_public(kv->hsm, ver->hsm_id, &n, &nl, &ex, &el);
    if (hs != HSM_OK)
        return hsm_fail(e, hs, "public key export");
    if (nl > KV_MAX_N || el > sizeof ver->e) {
        free(n);
        free(ex);
        return fail(e, KV_ERR_BAD_PARAM, "The key is larger than supported.");
    }
    free(ver->n);
    ver->n = n; /* hsm_rsa_public gives exactly nl bytes, ours to free */
    n = NULL;
    ver->n_len = nl;
    memcpy(ver->e, ex, el);
    ver->e_len = el;
    ver->bits = (unsigned)nl * 8;
    if (nl && ver->n[0] < 0x80) { /* bits from the leading byte */
        unsigned b = 0;
        for (uint8_t x = ver->n[0]; x; x >>= 1)
            b++;
        ver->bits = (unsigned)(nl - 1) * 8 + b;
    }
    free(ex);
    return KV_OK;
}

kv_status kv_key_create(kv_t *kv, const char *vault, const char *name, const kv_create_params *p,
                        kv_key_view *out, kv_err *e)
{
    kv_status st = validate_create(name, p, e);
    if (st != KV_OK)
        return st;
    if (p->bits != 2048 && p->bits != 3072 && p->bits != 4096)
        return fail(e, KV_ERR_BAD_PARAM,
                    "The key size %u is not supported for RSA keys: use 2048, 3072 or 4096.",
                    p->bits);
    if (p->exponent && (p->exponent < 3 || !(p->exponent & 1)))
        return fail(e, KV_ERR_BAD_PARAM, "public_exponent must be an odd number of at least 3.");
    /* fail fast before the slow key generation */
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v = NULL;
    kv_key *k = NULL;
    st = check_new_version(kv, vault, name, &v, &k, e);
    pthread_rwlock_unlock(&kv->lock);
    if (st != KV_OK)
        return st;
    kv_version *ver = version_new(kv, p);
    char label[256];
    snprintf(label, sizeof label, "%s/%s/%s", vault, name, ver->version);
    hsm_status hs = hsm_rsa_generate_sealed(kv->hsm, p->bits, p->exponent, label, ver->hsm_id,
                                            &ver->sealed, &ver->sealed_len);
    if (hs != HSM_OK) {
        version_free(ver);
        return hsm_fail(e, hs, "key generation");
    }
    st = fill_public(kv, ver, e);
    if (st != KV_OK) {
        hsm_key_destroy(kv->hsm, ver->hsm_id);
        version_free(ver);
        return st;
    }
    return add_version(kv, vault, name, ver, out, e);
}

kv_status kv_key_import(kv_t *kv, const char *vault, const char *name, const hsm_rsa_components *c,
                        const kv_create_params *p, kv_key_view *out, kv_err *e)
{
    kv_status st = validate_create(name, p, e);
    if (st != KV_OK)
        return st;
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v = NULL;
    kv_key *k = NULL;
    st = check_new_version(kv, vault, name, &v, &k, e);
    pthread_rwlock_unlock(&kv->lock);
    if (st != KV_OK)
        return st;
    kv_version *ver = version_new(kv, p);
    char label[256];
    snprintf(label, sizeof label, "%s/%s/%s", vault, name, ver->version);
    hsm_status hs =
        hsm_rsa_import_sealed(kv->hsm, c, label, ver->hsm_id, &ver->sealed, &ver->sealed_len);
    if (hs != HSM_OK) {
        version_free(ver);
        if (hs == HSM_ERR_ARGS)
            return fail(e, KV_ERR_BAD_PARAM,
                        "The RSA key could not be imported: it needs n, e, d, p and q of a "
                        "2048-4096 bit key that belong together.");
        return hsm_fail(e, hs, "key import");
    }
    st = fill_public(kv, ver, e);
    if (st == KV_OK && (ver->bits < 2048 || ver->bits > 4096))
        st = fail(e, KV_ERR_BAD_PARAM, "RSA keys of %u bits are not supported (2048-4096).",
                  ver->bits);
    if (st != KV_OK) {
        hsm_key_destroy(kv->hsm, ver->hsm_id);
        version_free(ver);
        return st;
    }
    return add_version(kv, vault, name, ver, out, e);
}

/* ---- read ------------------------------------------------------------------------------- */

/* Finds a live key version. Lock held. */
static kv_status live_version(kv_t *kv, const char *vault, const char *name, const char *version,
                              kv_vault **vp, kv_key **kp, kv_version **verp, kv_err *e)
{
    kv_vault *v = vault_find(kv, vault);
    if (!v)
        return fail(e, KV_ERR_VAULT_NOT_FOUND, "Vault '%s' does not exist.", vault);
    kv_key *k = key_find(v, name);
    if (!k || k->deleted)
        return fail(e, KV_ERR_KEY_NOT_FOUND,
                    "A key with (name/id) %.130s was not found in this "
                    "key vault.",
                    name);
    kv_version *ver = version_find(k, version);
    if (!ver)
        return fail(e, KV_ERR_KEY_NOT_FOUND,
                    "A key with (name/id) %.130s/%.40s was not found in this key vault.", name,
                    version ? version : "");
    *vp = v;
    *kp = k;
    *verp = ver;
    return KV_OK;
}

kv_status kv_key_get(kv_t *kv, const char *vault, const char *name, const char *version,
                     kv_key_view *out, kv_err *e)
{
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_version *ver;
    kv_status st = live_version(kv, vault, name, version, &v, &k, &ver, e);
    if (st == KV_OK)
        fill_view(v, k, ver, out);
    pthread_rwlock_unlock(&kv->lock);
    return st;
}

typedef struct {
    const char *vault, *lname;
    kv_version *ver;
} ver_ud;

static bool db_put_one_version(sqlite3 *db, void *vud)
{
    ver_ud *u = vud;
    return db_put_version(db, u->vault, u->lname, u->ver);
}

kv_status kv_key_update(kv_t *kv, const char *vault, const char *name, const char *version,
                        const kv_update_params *p, kv_key_view *out, kv_err *e)
{
    pthread_rwlock_wrlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_version *ver;
    kv_status st = live_version(kv, vault, name, version, &v, &k, &ver, e);
    if (st == KV_OK) {
        kv_version next = *ver;
        if (p->has_ops)
            next.ops = p->ops;
        if (p->has_enabled)
            next.enabled = p->enabled;
        if (p->has_nbf)
            next.nbf = p->nbf;
        if (p->has_exp)
            next.exp = p->exp;
        if (next.nbf && next.exp && next.nbf >= next.exp) {
            st = fail(e, KV_ERR_BAD_PARAM, "The key's nbf must be earlier than its exp.");
        } else {
            next.tags =
                p->tags ? json_deep_copy(p->tags) : (ver->tags ? json_incref(ver->tags) : NULL);
            next.updated = emu_clock_now();
            ver_ud ud = {v->info.name, k->lname, &next};
            if (!db_txn(kv, db_put_one_version, &ud)) {
                json_decref(next.tags);
                st = store_fail(e, "key could not be saved");
            } else {
                json_decref(ver->tags);
                *ver = next;
                fill_view(v, k, ver, out);
            }
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    if (st == KV_OK)
        notify(kv, vault, name);
    return st;
}

static kv_status list_keys(kv_t *kv, const char *vault, const char *after, size_t max, bool deleted,
                           kv_key_view *out, size_t *n, bool *more, kv_err *e)
{
    *n = 0;
    *more = false;
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v = vault_find(kv, vault);
    if (!v) {
        pthread_rwlock_unlock(&kv->lock);
        return fail(e, KV_ERR_VAULT_NOT_FOUND, "Vault '%s' does not exist.", vault);
    }
    char lafter[128];
    emu_lower_copy(lafter, sizeof lafter, after ? after : "");
    size_t i = lafter[0] ? key_lower_bound(v, lafter) : 0;
    if (i < v->nkeys && lafter[0] && !strcmp(v->keys[i]->lname, lafter))
        i++;
    for (; i < v->nkeys; i++) {
        kv_key *k = v->keys[i];
        if (k->deleted != deleted || !k->nversions)
            continue;
        if (*n == max) {
            *more = true;
            break;
        }
        fill_view(v, k, k->versions[k->nversions - 1], &out[(*n)++]);
    }
    pthread_rwlock_unlock(&kv->lock);
    return KV_OK;
}

kv_status kv_key_list(kv_t *kv, const char *vault, const char *after, size_t max, kv_key_view *out,
                      size_t *n, bool *more, kv_err *e)
{
    return list_keys(kv, vault, after, max, false, out, n, more, e);
}

kv_status kv_deleted_list(kv_t *kv, const char *vault, const char *after, size_t max,
                          kv_key_view *out, size_t *n, bool *more, kv_err *e)
{
    return list_keys(kv, vault, after, max, true, out, n, more, e);
}

kv_status kv_key_versions(kv_t *kv, const char *vault, const char *name, size_t start, size_t max,
                          kv_key_view *out, size_t *n, bool *more, kv_err *e)
{
    *n = 0;
    *more = false;
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_version *ver;
    kv_status st = live_version(kv, vault, name, "", &v, &k, &ver, e);
    if (st == KV_OK) {
        for (size_t i = start; i < k->nversions; i++) {
            if (*n == max) {
                *more = true;
                break;
            }
            fill_view(v, k, k->versions[i], &out[(*n)++]);
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    return st;
}

/* ---- delete, recover, purge ------------------------------------------------------------- */

typedef struct {
    const char *vault;
    kv_key *key; /* with the new deleted fields */
} key_ud;

static bool db_put_key_only(sqlite3 *db, void *vud)
{
    key_ud *u = vud;
    return db_put_key(db, u->vault, u->key);
}

static bool db_delete_key_fn(sqlite3 *db, void *vud)
{
    key_ud *u = vud;
    return db_delete_key(db, u->vault, u->key->lname);
}

/* Removes a key from memory and store, then destroys its token objects. Write lock held. */
static kv_status purge_locked(kv_t *kv, kv_vault *v, kv_key *k, kv_err *e)
{
    key_ud ud = {v->info.name, k};
    if (!db_txn(kv, db_delete_key_fn, &ud))
        return store_fail(e, "key could not be purged from the store");
    /* rows first, durably (an HTTP caller's commit is not synced yet), then the objects */
    emu_store_wait_all_durable(kv->store);
    key_remove(v, k);
    for (size_t i = 0; i < k->nversions; i++) {
        hsm_status hs = hsm_key_destroy(kv->hsm, k->versions[i]->hsm_id);
        if (hs != HSM_OK && hs != HSM_ERR_NOT_FOUND)
            emu_log(EMU_LOG_WARN, "kv",
                    "purged key %s/%s: token objects not destroyed (%s); the next start removes "
                    "them",
                    v->info.name, k->name, hsm_status_str(hs));
    }
    emu_log(EMU_LOG_INFO, "kv", "purged key %s/%s (%zu versions)", v->info.name, k->name,
            k->nversions);
    key_free(k);
    return KV_OK;
}

kv_status kv_key_delete(kv_t *kv, const char *vault, const char *name, kv_key_view *out, kv_err *e)
{
    pthread_rwlock_wrlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_version *ver;
    kv_status st = live_version(kv, vault, name, "", &v, &k, &ver, e);
    if (st == KV_OK) {
        if (!v->info.soft_delete) {
            fill_view(v, k, ver, out);
            out->deleted = true;
            out->deleted_date = emu_clock_now();
            st = purge_locked(kv, v, k, e);
        } else {
            kv_key next = *k;
            next.deleted = true;
            next.deleted_date = emu_clock_now();
            next.scheduled_purge = next.deleted_date + (int64_t)v->info.retention_days * 86400;
            key_ud ud = {v->info.name, &next};
            if (!db_txn(kv, db_put_key_only, &ud)) {
                st = store_fail(e, "key could not be deleted");
            } else {
                k->deleted = true;
                k->deleted_date = next.deleted_date;
                k->scheduled_purge = next.scheduled_purge;
                fill_view(v, k, ver, out);
            }
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    if (st == KV_OK)
        notify(kv, vault, name);
    return st;
}

static kv_status deleted_key(kv_t *kv, const char *vault, const char *name, kv_vault **vp,
                             kv_key **kp, kv_err *e)
{
    kv_vault *v = vault_find(kv, vault);
    if (!v)
        return fail(e, KV_ERR_VAULT_NOT_FOUND, "Vault '%s' does not exist.", vault);
    kv_key *k = key_find(v, name);
    if (!k || !k->deleted || !k->nversions)
        return fail(e, KV_ERR_KEY_NOT_FOUND, "Deleted Key not found: %.130s", name);
    *vp = v;
    *kp = k;
    return KV_OK;
}

kv_status kv_deleted_get(kv_t *kv, const char *vault, const char *name, kv_key_view *out, kv_err *e)
{
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_status st = deleted_key(kv, vault, name, &v, &k, e);
    if (st == KV_OK)
        fill_view(v, k, k->versions[k->nversions - 1], out);
    pthread_rwlock_unlock(&kv->lock);
    return st;
}

kv_status kv_deleted_purge(kv_t *kv, const char *vault, const char *name, kv_err *e)
{
    pthread_rwlock_wrlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_status st = deleted_key(kv, vault, name, &v, &k, e);
    if (st == KV_OK && v->info.purge_protection && emu_clock_now() < k->scheduled_purge)
        st = fail(e, KV_ERR_PURGE_PROTECTED,
                  "Operation \"purge\" is not allowed because purge protection is enabled for "
                  "this vault. Key Vault service will automatically purge it after the retention "
                  "period has passed.");
    if (st == KV_OK)
        st = purge_locked(kv, v, k, e);
    pthread_rwlock_unlock(&kv->lock);
    if (st == KV_OK)
        notify(kv, vault, name);
    return st;
}

kv_status kv_deleted_recover(kv_t *kv, const char *vault, const char *name, kv_key_view *out,
                             kv_err *e)
{
    pthread_rwlock_wrlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_status st = deleted_key(kv, vault, name, &v, &k, e);
    if (st == KV_OK) {
        kv_key next = *k;
        next.deleted = false;
        key_ud ud = {v->info.name, &next};
        if (!db_txn(kv, db_put_key_only, &ud)) {
            st = store_fail(e, "key could not be recovered");
        } else {
            k->deleted = false;
            k->deleted_date = k->scheduled_purge = 0;
            fill_view(v, k, k->versions[k->nversions - 1], out);
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    if (st == KV_OK)
        notify(kv, vault, name);
    return st;
}

/* ---- crypto ----------------------------------------------------------------------------- */

typedef struct {
    uint8_t id[HSM_ID_LEN];
    char version[33];
} crypt_target;

/* Resolves and checks a version for an operation needing `op`; `dated` ops also need
 * nbf <= now < exp. */
static kv_status crypt_target_get(kv_t *kv, const char *vault, const char *name,
                                  const char *version, unsigned op, const char *opname, bool dated,
                                  crypt_target *t, kv_err *e)
{
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_version *ver;
    kv_status st = live_version(kv, vault, name, version, &v, &k, &ver, e);
    if (st == KV_OK) {
        int64_t now = emu_clock_now();
        if (!ver->enabled)
            st = fail(e, KV_ERR_DISABLED, "Operation %s is not allowed on a disabled key.", opname);
        else if (!(ver->ops & op))
            st = fail(e, KV_ERR_OP_NOT_ALLOWED,
                      "Operation %s is not permitted on this key: it is not in the key's "
                      "key_ops.",
                      opname);
        else if (dated && ver->nbf && now < ver->nbf)
            st = fail(e, KV_ERR_NOT_YET_VALID,
                      "Operation %s is not allowed: the key is not yet valid (nbf).", opname);
        else if (dated && ver->exp && now >= ver->exp)
            st = fail(e, KV_ERR_EXPIRED, "Operation %s is not allowed: the key has expired.",
                      opname);
        else {
            memcpy(t->id, ver->hsm_id, HSM_ID_LEN);
            memcpy(t->version, ver->version, sizeof t->version);
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    return st;
}

kv_status kv_key_crypt(kv_t *kv, const char *vault, const char *name, const char *version,
                       kv_crypt_op op, hsm_rsa_enc_alg alg, const uint8_t *in, size_t in_len,
                       uint8_t *out, size_t *out_len, char version_out[33], kv_err *e)
{
    static const struct {
        unsigned bit;
        const char *name;
        bool dated, private_op;
    } M[] = {
        [KV_CRYPT_ENCRYPT] = {KV_OP_ENCRYPT, "encrypt", true, false},
        [KV_CRYPT_DECRYPT] = {KV_OP_DECRYPT, "decrypt", false, true},
        [KV_CRYPT_WRAP] = {KV_OP_WRAP, "wrapKey", true, false},
        [KV_CRYPT_UNWRAP] = {KV_OP_UNWRAP, "unwrapKey", false, true},
    };
    crypt_target t;
    kv_status st =
        crypt_target_get(kv, vault, name, version, M[op].bit, M[op].name, M[op].dated, &t, e);
    if (st != KV_OK)
        return st;
    hsm_status hs = M[op].private_op
                        ? hsm_rsa_decrypt(kv->hsm, t.id, alg, in, in_len, out, out_len)
                        : hsm_rsa_encrypt(kv->hsm, t.id, alg, in, in_len, out, out_len);
    if (hs == HSM_ERR_DECRYPT)
        return fail(e, KV_ERR_BAD_PARAM,
                    "The ciphertext could not be decrypted with this key "
                    "and algorithm.");
    if (hs == HSM_ERR_ARGS)
        return fail(e, KV_ERR_BAD_PARAM,
                    M[op].private_op ? "The ciphertext length does not match the key size."
                                     : "The plaintext is too long for this key and algorithm.");
    if (hs != HSM_OK)
        return hsm_fail(e, hs, M[op].name);
    memcpy(version_out, t.version, 33);
    return KV_OK;
}

kv_status kv_key_sign(kv_t *kv, const char *vault, const char *name, const char *version,
                      hsm_sig_alg alg, const uint8_t *digest, size_t digest_len, uint8_t *sig,
                      size_t *sig_len, char version_out[33], kv_err *e)
{
    if (digest_len != hsm_sig_digest_len(alg))
        return fail(e, KV_ERR_BAD_PARAM,
                    "The digest is %zu bytes; this algorithm signs a %zu-byte digest.", digest_len,
                    hsm_sig_digest_len(alg));
    crypt_target t;
    kv_status st = crypt_target_get(kv, vault, name, version, KV_OP_SIGN, "sign", true, &t, e);
    if (st != KV_OK)
        return st;
    hsm_status hs = hsm_sign(kv->hsm, t.id, alg, digest, digest_len, sig, sig_len);
    if (hs != HSM_OK)
        return hsm_fail(e, hs, "sign");
    memcpy(version_out, t.version, 33);
    return KV_OK;
}

kv_status kv_key_verify(kv_t *kv, const char *vault, const char *name, const char *version,
                        hsm_sig_alg alg, const uint8_t *digest, size_t digest_len,
                        const uint8_t *sig, size_t sig_len, bool *valid, char version_out[33],
                        kv_err *e)
{
    if (digest_len != hsm_sig_digest_len(alg))
        return fail(e, KV_ERR_BAD_PARAM,
                    "The digest is %zu bytes; this algorithm verifies a %zu-byte digest.",
                    digest_len, hsm_sig_digest_len(alg));
    crypt_target t;
    kv_status st = crypt_target_get(kv, vault, name, version, KV_OP_VERIFY, "verify", false, &t, e);
    if (st != KV_OK)
        return st;
    hsm_status hs = hsm_verify(kv->hsm, t.id, alg, digest, digest_len, sig, sig_len);
    if (hs != HSM_OK && hs != HSM_ERR_VERIFY)
        return hsm_fail(e, hs, "verify");
    *valid = hs == HSM_OK;
    memcpy(version_out, t.version, 33);
    return KV_OK;
}

kv_status kv_random(kv_t *kv, uint8_t *buf, size_t len, kv_err *e)
{
    hsm_status hs = hsm_random(kv->hsm, buf, len);
    return hs == HSM_OK ? KV_OK : hsm_fail(e, hs, "random generation");
}

/* ---- rotation --------------------------------------------------------------------------- */

static json_t *policy_get_default(void)
{
    return json_pack("{s:[{s:{s:s},s:{s:s}}],s:{}}", "lifetimeActions", "trigger",
                     "timeBeforeExpiry", "P30D", "action", "type", "Notify", "attributes");
}

static int64_t policy_expiry_seconds(const json_t *policy)
{
    const char *s =
        json_string_value(json_object_get(json_object_get(policy, "attributes"), "expiryTime"));
    int64_t secs;
    return s && emu_iso_duration_parse(s, &secs) ? secs : 0;
}

kv_status kv_key_rotate(kv_t *kv, const char *vault, const char *name, kv_key_view *out, kv_err *e)
{
    kv_key_view cur;
    kv_status st = kv_key_get(kv, vault, name, "", &cur, e);
    if (st != KV_OK)
        return st;
    kv_create_params p = {.hsm = !strcmp(cur.kty, "RSA-HSM"),
                          .bits = cur.bits,
                          .exponent = 0,
                          .ops = cur.ops,
                          .tags = cur.tags};
    unsigned long ex = 0;
    for (size_t i = 0; i < cur.e_len; i++)
        ex = ex << 8 | cur.e[i];
    p.exponent = ex;
    st = kv_key_create(kv, vault, cur.name, &p, out, e);
    kv_key_view_cleanup(&cur);
    if (st == KV_OK)
        emu_log(EMU_LOG_INFO, "kv", "rotated key %s/%s: new version %s", vault, name, out->version);
    return st;
}

kv_status kv_rotation_policy_get(kv_t *kv, const char *vault, const char *name, json_t **out,
                                 kv_err *e)
{
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_version *ver;
    kv_status st = live_version(kv, vault, name, "", &v, &k, &ver, e);
    if (st == KV_OK) {
        if (k->rotation_policy) {
            *out = json_deep_copy(k->rotation_policy);
            json_t *attrs = json_object_get(*out, "attributes");
            json_object_set_new(attrs, "created", json_integer(k->rp_created));
            json_object_set_new(attrs, "updated", json_integer(k->rp_updated));
        } else {
            *out = policy_get_default();
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    return st;
}

/* Validates a policy and returns its normalised form (new reference) or NULL + message. */
static json_t *policy_normalise(const json_t *in, kv_err *e)
{
    if (!json_is_object(in)) {
        fail(e, KV_ERR_BAD_PARAM, "The rotation policy must be a JSON object.");
        return NULL;
    }
    json_t *out = json_object();
    json_t *attrs_in = json_object_get(in, "attributes");
    json_t *attrs = json_object();
    json_object_set_new(out, "attributes", attrs);
    int64_t expiry = 0;
    if (attrs_in && !json_is_null(attrs_in)) {
        json_t *et = json_object_get(attrs_in, "expiryTime");
        if (et && !json_is_null(et)) {
            if (!json_is_string(et) || !emu_iso_duration_parse(json_string_value(et), &expiry)) {
                fail(e, KV_ERR_BAD_PARAM,
                     "attributes.expiryTime must be an ISO-8601 duration "
                     "such as P2Y or P90D.");
                goto bad;
            }
            if (expiry < 28 * 86400) {
                fail(e, KV_ERR_BAD_PARAM,
                     "attributes.expiryTime must be at least 28 days "
                     "(P28D).");
                goto bad;
            }
            json_object_set(attrs, "expiryTime", et);
        }
    }
    json_t *acts_in = json_object_get(in, "lifetimeActions");
    json_t *acts = json_array();
    json_object_set_new(out, "lifetimeActions", acts);
    if (acts_in && !json_is_null(acts_in)) {
        if (!json_is_array(acts_in) || json_array_size(acts_in) > 2) {
            fail(e, KV_ERR_BAD_PARAM,
                 "lifetimeActions must be an array of at most 2 actions (one Rotate, one "
                 "Notify).");
            goto bad;
        }
        bool has_rotate = false, has_notify = false;
        size_t i;
        json_t *a;
        json_array_foreach(acts_in, i, a)
        {
            json_t *trig = json_object_get(a, "trigger");
            const char *type =
                json_string_value(json_object_get(json_object_get(a, "action"), "type"));
            if (!type || (strcasecmp(type, "Rotate") && strcasecmp(type, "Notify"))) {
                fail(e, KV_ERR_BAD_PARAM,
                     "lifetimeActions[%zu].action.type must be Rotate or Notify.", i);
                goto bad;
            }
            bool rotate = !strcasecmp(type, "Rotate");
            if ((rotate && has_rotate) || (!rotate && has_notify)) {
                fail(e, KV_ERR_BAD_PARAM, "lifetimeActions has more than one %s action.",
                     rotate ? "Rotate" : "Notify");
                goto bad;
            }
            has_rotate |= rotate;
            has_notify |= !rotate;
            const char *tac = json_string_value(json_object_get(trig, "timeAfterCreate"));
            const char *tbe = json_string_value(json_object_get(trig, "timeBeforeExpiry"));
            int64_t secs;
            if (!json_is_object(trig) || (!tac == !tbe)) {
                fail(e, KV_ERR_BAD_PARAM,
                     "lifetimeActions[%zu].trigger needs exactly one of timeAfterCreate or "
                     "timeBeforeExpiry.",
                     i);
                goto bad;
            }
            if (!emu_iso_duration_parse(tac ? tac : tbe, &secs)) {
                fail(e, KV_ERR_BAD_PARAM,
                     "lifetimeActions[%zu].trigger: '%.40s' is not an ISO-8601 duration.", i,
                     tac ? tac : tbe);
                goto bad;
            }
            if (secs < 7 * 86400) {
                fail(e, KV_ERR_BAD_PARAM,
                     "lifetimeActions[%zu].trigger must be at least 7 days (P7D).", i);
                goto bad;
            }
            if (!rotate && tac) {
                fail(e, KV_ERR_BAD_PARAM,
                     "A Notify action can only be triggered by timeBeforeExpiry.");
                goto bad;
            }
            /* timeBeforeExpiry without expiryTime is allowed (the service's default policy
             * is exactly that): it applies to versions whose exp is set */
            if (tbe && expiry && secs >= expiry) {
                fail(e, KV_ERR_BAD_PARAM, "timeBeforeExpiry must be shorter than expiryTime.");
                goto bad;
            }
            if (tac && expiry && secs > expiry - 7 * 86400) {
                fail(e, KV_ERR_BAD_PARAM,
                     "timeAfterCreate must be at least 7 days shorter than expiryTime.");
                goto bad;
            }
            json_array_append_new(acts, json_pack("{s:{s:s},s:{s:s}}", "trigger",
                                                  tac ? "timeAfterCreate" : "timeBeforeExpiry",
                                                  tac ? tac : tbe, "action", "type",
                                                  rotate ? "Rotate" : "Notify"));
        }
        if (has_rotate && !has_notify)
            json_array_append_new(acts,
                                  json_pack("{s:{s:s},s:{s:s}}", "trigger", "timeBeforeExpiry",
                                            "P30D", "action", "type", "Notify"));
    }
    return out;
bad:
    json_decref(out);
    return NULL;
}

kv_status kv_rotation_policy_set(kv_t *kv, const char *vault, const char *name,
                                 const json_t *policy, json_t **out, kv_err *e)
{
    json_t *norm = policy_normalise(policy, e);
    if (!norm)
        return KV_ERR_BAD_PARAM;
    pthread_rwlock_wrlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_version *ver;
    kv_status st = live_version(kv, vault, name, "", &v, &k, &ver, e);
    if (st == KV_OK) {
        kv_key next = *k;
        int64_t now = emu_clock_now();
        next.rotation_policy = norm;
        next.rp_created = k->rp_created ? k->rp_created : now;
        next.rp_updated = now;
        key_ud ud = {v->info.name, &next};
        if (!db_txn(kv, db_put_key_only, &ud)) {
            st = store_fail(e, "rotation policy could not be saved");
        } else {
            json_decref(k->rotation_policy);
            k->rotation_policy = norm;
            norm = NULL;
            k->rp_created = next.rp_created;
            k->rp_updated = next.rp_updated;
            *out = json_deep_copy(k->rotation_policy);
            json_t *attrs = json_object_get(*out, "attributes");
            json_object_set_new(attrs, "created", json_integer(k->rp_created));
            json_object_set_new(attrs, "updated", json_integer(k->rp_updated));
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    json_decref(norm);
    return st;
}

/* When the latest version of k is due for automatic rotation. 0 = never. */
static int64_t rotation_due(const kv_key *k)
{
    if (!k->rotation_policy || !k->nversions)
        return 0;
    const kv_version *latest = k->versions[k->nversions - 1];
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(k->rotation_policy, "lifetimeActions"), i, a)
    {
        const char *type = json_string_value(json_object_get(json_object_get(a, "action"), "type"));
        if (!type || strcmp(type, "Rotate"))
            continue;
        json_t *trig = json_object_get(a, "trigger");
        int64_t secs;
        const char *tac = json_string_value(json_object_get(trig, "timeAfterCreate"));
        const char *tbe = json_string_value(json_object_get(trig, "timeBeforeExpiry"));
        if (tac && emu_iso_duration_parse(tac, &secs))
            return latest->created + secs;
        if (tbe && latest->exp && emu_iso_duration_parse(tbe, &secs))
            return latest->exp - secs;
    }
    return 0;
}

typedef struct {
    char vault[64], name[128];
    bool purge;
} due_item;

void kv_apply_due(kv_t *kv, int64_t now)
{
    due_item *items = NULL;
    size_t n = 0, cap = 0;
    pthread_rwlock_rdlock(&kv->lock);
    for (size_t i = 0; i < kv->nvaults; i++) {
        kv_vault *v = kv->vaults[i];
        if (v->info.deleted) {
            /* a soft-deleted vault: nothing rotates; the vault purges as a whole */
            if (v->info.scheduled_purge && now >= v->info.scheduled_purge) {
                if (n == cap) {
                    cap = cap ? cap * 2 : 8;
                    items = emu_xrealloc(items, cap * sizeof *items);
                }
                snprintf(items[n].vault, sizeof items[n].vault, "%s", v->info.name);
                items[n].name[0] = '\0';
                items[n].purge = true;
                n++;
            }
            continue;
        }
        for (size_t j = 0; j < v->nkeys; j++) {
            kv_key *k = v->keys[j];
            bool purge = k->deleted && k->scheduled_purge && now >= k->scheduled_purge;
            int64_t due = k->deleted ? 0 : rotation_due(k);
            if (!purge && !(due && now >= due))
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                items = emu_xrealloc(items, cap * sizeof *items);
            }
            snprintf(items[n].vault, sizeof items[n].vault, "%s", v->info.name);
            snprintf(items[n].name, sizeof items[n].name, "%s", k->name);
            items[n].purge = purge;
            n++;
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    for (size_t i = 0; i < n; i++) {
        kv_err e = {{0}};
        if (items[i].purge && !items[i].name[0]) {
            pthread_rwlock_wrlock(&kv->lock);
            kv_vault *v = vault_find_any(kv, items[i].vault);
            bool done = v && v->info.deleted && now >= v->info.scheduled_purge &&
                        vault_purge_locked(kv, v, &e) == KV_OK;
            pthread_rwlock_unlock(&kv->lock);
            if (done) {
                emu_log(EMU_LOG_INFO, "kv", "scheduled purge of vault %s", items[i].vault);
                notify(kv, items[i].vault, NULL);
            }
        } else if (items[i].purge) {
            pthread_rwlock_wrlock(&kv->lock);
            kv_vault *v = vault_find(kv, items[i].vault);
            kv_key *k = v ? key_find(v, items[i].name) : NULL;
            if (k && k->deleted && now >= k->scheduled_purge) {
                purge_locked(kv, v, k, &e);
                emu_log(EMU_LOG_INFO, "kv", "scheduled purge of %s/%s", items[i].vault,
                        items[i].name);
            }
            pthread_rwlock_unlock(&kv->lock);
            notify(kv, items[i].vault, items[i].name);
        } else {
            kv_key_view out;
            if (kv_key_rotate(kv, items[i].vault, items[i].name, &out, &e) == KV_OK)
                kv_key_view_cleanup(&out);
            else
                emu_log(EMU_LOG_WARN, "kv", "automatic rotation of %s/%s failed: %s",
                        items[i].vault, items[i].name, e.msg);
        }
    }
    free(items);
}

/* ---- backup / restore ------------------------------------------------------------------- */

#define BACKUP_MAGIC "CMKEMU-KEY-BACKUP-1\n" /* inside the base64url bytes */

kv_status kv_key_backup(kv_t *kv, const char *vault, const char *name, char **blob, kv_err *e)
{
    /* Copy what is needed under the lock, wrap outside it. */
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v;
    kv_key *k;
    kv_version *ver;
    kv_status st = live_version(kv, vault, name, "", &v, &k, &ver, e);
    json_t *doc = NULL;
    uint8_t(*ids)[HSM_ID_LEN] = NULL;
    size_t nids = 0;
    if (st == KV_OK) {
        doc = json_pack("{s:s,s:s,s:O?,s:[]}", "format", "cmkemu-key-backup", "name", k->name,
                        "rotationPolicy", k->rotation_policy, "versions");
        json_t *vers = json_object_get(doc, "versions");
        ids = emu_xcalloc(k->nversions, HSM_ID_LEN);
        nids = k->nversions;
        for (size_t i = 0; i < k->nversions; i++) {
            kv_version *x = k->versions[i];
            memcpy(ids[i], x->hsm_id, HSM_ID_LEN);
            json_array_append_new(vers,
                                  json_pack("{s:s,s:I,s:b,s:o,s:b,s:I,s:I,s:I,s:I,s:O?}", "version",
                                            x->version, "seq", (json_int_t)x->seq, "hsm", x->hsm,
                                            "ops", kv_ops_json(x->ops), "enabled", x->enabled,
                                            "nbf", (json_int_t)x->nbf, "exp", (json_int_t)x->exp,
                                            "created", (json_int_t)x->created, "updated",
                                            (json_int_t)x->updated, "tags", x->tags));
        }
    }
    pthread_rwlock_unlock(&kv->lock);
    if (st != KV_OK)
        return st;
    json_t *vers = json_object_get(doc, "versions");
    for (size_t i = 0; i < nids; i++) {
        uint8_t *w = NULL;
        size_t wl = 0;
        hsm_status hs = hsm_key_export_wrapped(kv->hsm, ids[i], &w, &wl);
        if (hs != HSM_OK) {
            free(ids);
            json_decref(doc);
            return hsm_fail(e, hs, "key backup");
        }
        char *b = emu_b64url_encode(w, wl);
        json_object_set_new(json_array_get(vers, i), "wrapped", json_string(b));
        free(b);
        free(w);
    }
    free(ids);
    char *json = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    /* MAGIC + document + "\n" + base64url(RS256 signature over MAGIC + document) */
    char *text = emu_xasprintf("%s%s", BACKUP_MAGIC, json);
    free(json);
    uint8_t digest[32], sig[512];
    unsigned int dl = 32;
    size_t sl = sizeof sig;
    EVP_Digest(text, strlen(text), digest, &dl, EVP_sha256(), NULL);
    hsm_status hs = hsm_sign(kv->hsm, kv->backup_sign_id, HSM_RS256, digest, 32, sig, &sl);
    if (hs != HSM_OK) {
        free(text);
        return hsm_fail(e, hs, "backup signature");
    }
    char *sb = emu_b64url_encode(sig, sl);
    char *signed_text = emu_xasprintf("%s\n%s", text, sb);
    free(sb);
    free(text);
    *blob = emu_b64url_encode((const uint8_t *)signed_text, strlen(signed_text));
    free(signed_text);
    return KV_OK;
}

kv_status kv_key_restore(kv_t *kv, const char *vault, const char *blob, size_t blob_len,
                         kv_key_view *out, kv_err *e)
{
    size_t ml = strlen(BACKUP_MAGIC), tl = 0;
    uint8_t *text = emu_b64url_decode(blob, blob_len, 16u << 20, &tl);
    if (!text || tl <= ml || memcmp(text, BACKUP_MAGIC, ml) != 0) {
        free(text);
        return fail(e, KV_ERR_BAD_PARAM, "The backup blob is not a key backup made by cmkemu.");
    }
    /* the signature follows the last newline; it covers everything before it */
    uint8_t *nl = NULL;
    for (size_t i = tl; i > ml; i--)
        if (text[i - 1] == '\n') {
            nl = text + i - 1;
            break;
        }
    size_t sigl = 0;
    uint8_t *sig =
        nl ? emu_b64url_decode((const char *)nl + 1, tl - (size_t)(nl + 1 - text), 1024, &sigl)
           : NULL;
    uint8_t digest[32];
    unsigned int dl = 32;
    if (sig)
        EVP_Digest(text, (size_t)(nl - text), digest, &dl, EVP_sha256(), NULL);
    if (!sig ||
        hsm_verify(kv->hsm, kv->backup_sign_id, HSM_RS256, digest, 32, sig, sigl) != HSM_OK) {
        free(sig);
        free(text);
        return fail(e, KV_ERR_BAD_PARAM,
                    "The backup blob is corrupt or was not made by this emulator (signature "
                    "check failed).");
    }
    free(sig);
    json_t *doc =
        json_loadb((const char *)text + ml, (size_t)(nl - text) - ml, JSON_REJECT_DUPLICATES, NULL);
    free(text);
    const char *name = json_string_value(json_object_get(doc, "name"));
    json_t *vers = json_object_get(doc, "versions");
    const json_t *policy = json_object_get(doc, "rotationPolicy");
    if (!doc || !name || !valid_key_name(name) || !json_is_array(vers) ||
        json_array_size(vers) == 0 || json_array_size(vers) > 100000) {
        json_decref(doc);
        return fail(e, KV_ERR_BAD_PARAM, "The backup blob is corrupt.");
    }
    /* refuse early if the name is taken */
    pthread_rwlock_rdlock(&kv->lock);
    kv_vault *v = vault_find(kv, vault);
    kv_key *existing = v ? key_find(v, name) : NULL;
    kv_status st = KV_OK;
    if (!v)
        st = fail(e, KV_ERR_VAULT_NOT_FOUND, "Vault '%s' does not exist.", vault);
    else if (existing && existing->deleted)
        st = fail(e, KV_ERR_DELETED_CONFLICT,
                  "Key %s is currently in a deleted but recoverable state, and its name cannot "
                  "be reused; in this state, the key can only be recovered or purged.",
                  name);
    else if (existing)
        st = fail(e, KV_ERR_CONFLICT,
                  "A key named %s already exists in this vault; restore needs an unused name.",
                  name);
    pthread_rwlock_unlock(&kv->lock);
    if (st != KV_OK) {
        json_decref(doc);
        return st;
    }
    size_t nv = json_array_size(vers);
    kv_version **list = emu_xcalloc(nv, sizeof *list);
    size_t made = 0;
    for (size_t i = 0; i < nv && st == KV_OK; i++) {
        json_t *x = json_array_get(vers, i);
        const char *version = json_string_value(json_object_get(x, "version"));
        const char *wrapped = json_string_value(json_object_get(x, "wrapped"));
        unsigned ops = 0;
        kv_err oe;
        uint8_t vbin[16];
        char vcanon[33];
        if (version && strlen(version) == 32 && emu_hex_decode(version, vbin, 16))
            emu_hex_encode(vbin, 16, vcanon);
        bool dup = false;
        for (size_t x = 0; x < made && version; x++)
            dup |= !strcmp(list[x]->version, version);
        if (!version || strlen(version) != 32 || strcmp(vcanon, version) || dup || !wrapped ||
            !kv_ops_parse(json_object_get(x, "ops"), &ops, &oe)) {
            st = fail(e, KV_ERR_BAD_PARAM, "The backup blob is corrupt (version %zu).", i);
            break;
        }
        size_t wl = 0;
        uint8_t *w = emu_b64url_decode(wrapped, strlen(wrapped), 1 << 16, &wl);
        kv_version *ver = emu_xcalloc(1, sizeof *ver);
        snprintf(ver->version, sizeof ver->version, "%s", version);
        ver->hsm = json_is_true(json_object_get(x, "hsm"));
        ver->ops = ops;
        ver->enabled = json_is_true(json_object_get(x, "enabled"));
        ver->nbf = json_integer_value(json_object_get(x, "nbf"));
        ver->exp = json_integer_value(json_object_get(x, "exp"));
        ver->created = json_integer_value(json_object_get(x, "created"));
        ver->updated = json_integer_value(json_object_get(x, "updated"));
        json_t *tags = json_object_get(x, "tags");
        ver->tags = json_is_object(tags) ? json_deep_copy(tags) : NULL;
        char label[256];
        snprintf(label, sizeof label, "%s/%s/%s", vault, name, version);
        hsm_status hs = w ? hsm_key_import_wrapped_sealed(kv->hsm, w, wl, label, ver->hsm_id,
                                                          &ver->sealed, &ver->sealed_len)
                          : HSM_ERR_DECRYPT;
        free(w);
        if (hs != HSM_OK) {
            version_free(ver);
            st = hs == HSM_ERR_DECRYPT || hs == HSM_ERR_ARGS
                     ? fail(e, KV_ERR_BAD_PARAM,
                            "The backup blob could not be unwrapped by this HSM (corrupt, or "
                            "made by another emulator's token).")
                     : hsm_fail(e, hs, "restore");
            break;
        }
        list[made++] = ver;
        st = fill_public(kv, ver, e);
    }
    if (st == KV_OK) {
        pthread_rwlock_wrlock(&kv->lock);
        v = vault_find(kv, vault);
        if (!v || key_find(v, name)) {
            st = fail(e, KV_ERR_CONFLICT, "A key named %s appeared while restoring.", name);
        } else {
            kv_key *k = emu_xcalloc(1, sizeof *k);
            snprintf(k->name, sizeof k->name, "%s", name);
            emu_lower_copy(k->lname, sizeof k->lname, name);
            if (json_is_object(policy)) {
                k->rotation_policy = json_deep_copy(policy);
                k->rp_created = k->rp_updated = emu_clock_now();
            }
            for (size_t i = 0; i < made; i++)
                list[i]->seq = kv->next_seq++;
            put_ud ud = {v->info.name, k, true, list, made};
            if (!db_txn(kv, db_put_key_versions, &ud)) {
                st = store_fail(e, "restored key could not be saved");
                key_free(k);
            } else {
                key_insert(v, k);
                for (size_t i = 0; i < made; i++)
                    version_add(k, list[i]);
                fill_view(v, k, k->versions[k->nversions - 1], out);
                made = 0; /* owned by k now */
            }
        }
        pthread_rwlock_unlock(&kv->lock);
    }
    for (size_t i = 0; i < made; i++) {
        hsm_key_destroy(kv->hsm, list[i]->hsm_id);
        version_free(list[i]);
    }
    if (st == KV_OK)
        notify(kv, vault, name);
    free(list);
    json_decref(doc);
    return st;
}
