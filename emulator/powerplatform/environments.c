/*
 * environments: Power Platform environments and encrypted records; see environments.h.
 */
#include "environments.h"
#include "env_internal.h"
#include "env_testing.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "clock.h"
#include "envelope.h"
#include "keyvault/access.h"
#include "log.h"
#include "policies.h"
#include "util.h"

static const emu_migration PP_ENV_MIGRATIONS[] = {
    {"pp_env", 1,
     "CREATE TABLE pp_environments(id TEXT PRIMARY KEY, display_name TEXT NOT NULL,"
     " location TEXT NOT NULL, azure_region TEXT NOT NULL, sku INTEGER NOT NULL,"
     " managed INTEGER NOT NULL, key_managed_by INTEGER NOT NULL, wrapped_dek BLOB NOT NULL,"
     " enabled INTEGER NOT NULL, reason TEXT NOT NULL, created INTEGER NOT NULL);"
     "CREATE TABLE pp_records(env TEXT NOT NULL, tbl TEXT NOT NULL, id TEXT NOT NULL,"
     " blob BLOB NOT NULL, UNIQUE(env, tbl, id));"
     "CREATE TABLE pp_env_operations(id TEXT PRIMARY KEY, env TEXT NOT NULL, kind TEXT NOT NULL,"
     " state TEXT NOT NULL, error TEXT NOT NULL, created INTEGER NOT NULL);"},
    {"pp_env", 2,
     "ALTER TABLE pp_environments ADD COLUMN cmk_system_id TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE pp_environments ADD COLUMN cmk_policy_id TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE pp_environments ADD COLUMN cmk_location TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE pp_environments ADD COLUMN cmk_version TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE pp_environments ADD COLUMN lock_msg TEXT NOT NULL DEFAULT '';"},
    {"pp_env", 3,
     "ALTER TABLE pp_environments ADD COLUMN locked_since INTEGER NOT NULL DEFAULT 0;"},
};

const char *pp_env_status_str(pp_env_status st)
{
    switch (st) {
    case PP_ENV_OK:
        return "ok";
    case PP_ENV_ERR_BAD_PARAM:
        return "bad parameter";
    case PP_ENV_ERR_NOT_FOUND:
        return "not found";
    case PP_ENV_ERR_CONFLICT:
        return "conflict";
    case PP_ENV_ERR_DISABLED:
        return "environment disabled";
    case PP_ENV_ERR_CRYPTO:
        return "crypto failure";
    case PP_ENV_ERR_STORE:
        return "store failure";
    case PP_ENV_ERR_FORBIDDEN:
        return "forbidden";
    case PP_ENV_ERR_LOCKED:
        return "environment locked";
    case PP_ENV_ERR_BUSY:
        return "operation in progress";
    }
    return "unknown";
}

static const char *SKUS[] = {"Production", "Sandbox", "Trial", "Teams", "Developer"};

const char *pp_env_sku_str(pp_env_sku s)
{
    return (unsigned)s < 5 ? SKUS[s] : "Production";
}

bool pp_env_sku_parse(const char *s, pp_env_sku *out)
{
    for (int i = 0; s && i < 5; i++)
        if (!strcasecmp(s, SKUS[i])) {
            *out = (pp_env_sku)i;
            return true;
        }
    return false;
}

const char *pp_key_managed_by_str(pp_key_managed_by k)
{
    return k == PP_KEY_CUSTOMER ? "Customer" : "Microsoft";
}

/* The Azure region an environment of a Power Platform region lives in [inferred]. */
static const char *azure_region_of(const char *loc)
{
    static const char *map[][2] = {
        {"unitedstates", "westus"},
        {"europe", "westeurope"},
        {"uk", "uksouth"},
        {"japan", "japaneast"},
        {"india", "centralindia"},
        {"france", "francecentral"},
        {"germany", "germanywestcentral"},
        {"switzerland", "switzerlandnorth"},
        {"canada", "canadacentral"},
        {"brazil", "brazilsouth"},
        {"australia", "australiaeast"},
        {"asia", "southeastasia"},
        {"uae", "uaenorth"},
        {"korea", "koreacentral"},
        {"norway", "norwayeast"},
        {"singapore", "southeastasia"},
        {"sweden", "swedencentral"},
        {"southafrica", "southafricanorth"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(loc, map[i][0]))
            return map[i][1];
    return loc;
}

/* ---- helpers (pp lock held) --------------------------------------------------------------- */

env_rec *envi_find(pp_envs_t *p, const char *id)
{
    for (size_t i = 0; i < p->nrecs; i++)
        if (!strcasecmp(p->recs[i]->env.id, id))
            return p->recs[i];
    return NULL;
}

static void rec_free(env_rec *r)
{
    if (!r)
        return;
    pp_dek_wipe(&r->dek);
    OPENSSL_cleanse(r, sizeof *r);
    free(r);
}

bool envi_op_insert(sqlite3 *db, const char *id, const char *env, const char *kind,
                    const char *state, const char *error, int64_t now)
{
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db,
                                 "INSERT INTO pp_env_operations(id,env,kind,state,error,created) "
                                 "VALUES(?,?,?,?,?,?)",
                                 -1, &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, env, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, state, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, error, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 6, now);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    return ok;
}

bool envi_op_update(sqlite3 *db, const char *id, const char *state, const char *error)
{
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db, "UPDATE pp_env_operations SET state=?, error=? WHERE id=?", -1,
                                 &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, state, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, error, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE && sqlite3_changes(db) == 1;
    }
    sqlite3_finalize(st);
    return ok;
}

void envi_op_fill(pp_env_operation *op, const char *id, const char *env, const char *kind,
                  int64_t now)
{
    if (!op)
        return;
    memset(op, 0, sizeof *op);
    snprintf(op->id, sizeof op->id, "%s", id);
    snprintf(op->env, sizeof op->env, "%s", env);
    snprintf(op->kind, sizeof op->kind, "%s", kind);
    snprintf(op->state, sizeof op->state, "Succeeded");
    op->created = now;
}

bool envi_write(sqlite3 *db, const env_rec *r)
{
    sqlite3_stmt *st = NULL;
    const pp_environment *e = &r->env;
    bool ok = sqlite3_prepare_v2(
                  db,
                  "INSERT OR REPLACE INTO pp_environments(id,display_name,location,azure_region,"
                  "sku,managed,key_managed_by,wrapped_dek,enabled,reason,created,cmk_system_id,"
                  "cmk_policy_id,cmk_location,cmk_version,lock_msg,locked_since) "
                  "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                  -1, &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, e->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, e->display_name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, e->location, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, e->azure_region, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 5, (int)e->sku);
        sqlite3_bind_int(st, 6, e->managed);
        sqlite3_bind_int(st, 7, (int)e->key_managed_by);
        sqlite3_bind_blob(st, 8, r->wrapped, (int)r->wrapped_len, SQLITE_STATIC);
        sqlite3_bind_int(st, 9, e->enabled);
        sqlite3_bind_text(st, 10, e->reason, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 11, e->created);
        sqlite3_bind_text(st, 12, e->cmk_system_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 13, e->cmk_policy_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 14, e->cmk_location, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 15, e->cmk_version, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 16, e->lock_msg, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 17, e->locked_since);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    return ok;
}

/* ---- open / close ------------------------------------------------------------------------- */

static bool load_inlock(pp_envs_t *p, char *err, size_t errlen)
{
    sqlite3 *db = emu_store_lock(p->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db,
                                 "SELECT id,display_name,location,azure_region,sku,managed,"
                                 "key_managed_by,wrapped_dek,enabled,reason,created,"
                                 "cmk_system_id,cmk_policy_id,cmk_location,cmk_version,lock_msg,"
                                 "locked_since FROM pp_environments ORDER BY created, rowid",
                                 -1, &st, NULL) == SQLITE_OK;
    while (ok && sqlite3_step(st) == SQLITE_ROW) {
        env_rec *r = emu_xcalloc(1, sizeof *r);
        pp_environment *e = &r->env;
        snprintf(e->id, sizeof e->id, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(e->display_name, sizeof e->display_name, "%s",
                 (const char *)sqlite3_column_text(st, 1));
        snprintf(e->location, sizeof e->location, "%s", (const char *)sqlite3_column_text(st, 2));
        snprintf(e->azure_region, sizeof e->azure_region, "%s",
                 (const char *)sqlite3_column_text(st, 3));
        e->sku = (pp_env_sku)sqlite3_column_int(st, 4);
        e->managed = sqlite3_column_int(st, 5) != 0;
        e->key_managed_by = (pp_key_managed_by)sqlite3_column_int(st, 6);
        int n = sqlite3_column_bytes(st, 7);
        if (n > 0 && n <= PP_WRAPPED_MAX) {
            memcpy(r->wrapped, sqlite3_column_blob(st, 7), (size_t)n);
            r->wrapped_len = (size_t)n;
        }
        e->enabled = sqlite3_column_int(st, 8) != 0;
        snprintf(e->reason, sizeof e->reason, "%s", (const char *)sqlite3_column_text(st, 9));
        e->created = sqlite3_column_int64(st, 10);
        snprintf(e->cmk_system_id, sizeof e->cmk_system_id, "%s",
                 (const char *)sqlite3_column_text(st, 11));
        snprintf(e->cmk_policy_id, sizeof e->cmk_policy_id, "%s",
                 (const char *)sqlite3_column_text(st, 12));
        snprintf(e->cmk_location, sizeof e->cmk_location, "%s",
                 (const char *)sqlite3_column_text(st, 13));
        snprintf(e->cmk_version, sizeof e->cmk_version, "%s",
                 (const char *)sqlite3_column_text(st, 14));
        snprintf(e->lock_msg, sizeof e->lock_msg, "%s", (const char *)sqlite3_column_text(st, 15));
        e->locked_since = sqlite3_column_int64(st, 16);
        if (p->nrecs == p->caprecs) {
            p->caprecs = p->caprecs ? 2 * p->caprecs : 8;
            p->recs = emu_xrealloc(p->recs, p->caprecs * sizeof *p->recs);
        }
        p->recs[p->nrecs++] = r;
    }
    sqlite3_finalize(st);
    emu_store_unlock(p->store);
    if (!ok) {
        snprintf(err, errlen, "cannot load environments");
        return false;
    }
    envi_ops_recover_inlock(p);
    for (size_t i = 0; i < p->nrecs; i++) {
        env_rec *r = p->recs[i];
        /* customer keys are unwrapped at pp_envs_set_cmk (Key Vault is not wired yet) */
        if (!r->env.enabled || r->env.key_managed_by == PP_KEY_CUSTOMER)
            continue;
        char why[256] = "";
        pp_key_wrapper w = p->platform_wrapper;
        if (pp_dek_unwrap(&w, r->wrapped, r->wrapped_len, &r->dek, why, sizeof why) !=
            PP_ENVELOPE_OK)
            emu_log(EMU_LOG_ERROR, "pp-env", "environment %s: data key unavailable: %s", r->env.id,
                    why);
    }
    return true;
}

pp_envs_t *pp_envs_open(emu_store *store, hsm_t *hsm, char *err, size_t errlen)
{
    pp_envs_t *p = emu_xcalloc(1, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (int i = 0; i < PP_REC_STRIPES; i++)
        pthread_mutex_init(&p->rec_stripes[i], NULL);
    p->store = store;
    p->hsm = hsm;
    if (!emu_store_migrate(store, PP_ENV_MIGRATIONS,
                           sizeof PP_ENV_MIGRATIONS / sizeof PP_ENV_MIGRATIONS[0], err, errlen) ||
        !pp_platform_key_ensure(store, hsm, &p->platform, err, errlen)) {
        pp_envs_close(p);
        return NULL;
    }
    p->platform_wrapper = pp_platform_key_wrapper(&p->platform);
    if (!load_inlock(p, err, errlen)) {
        pp_envs_close(p);
        return NULL;
    }
    return p;
}

void pp_envs_close(pp_envs_t *p)
{
    if (!p)
        return;
    envi_runner_stop(p);
    if (p->store) {
        emu_store_lock(p->store);
        for (int k = 0; k < REC_STMT_COUNT; k++)
            sqlite3_finalize(p->rec_stmts[k]);
        emu_store_unlock(p->store);
    }
    for (size_t i = 0; i < p->nrecs; i++)
        rec_free(p->recs[i]);
    free(p->recs);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->lock);
    for (int i = 0; i < PP_REC_STRIPES; i++)
        pthread_mutex_destroy(&p->rec_stripes[i]);
    free(p);
}

/* ---- environments ------------------------------------------------------------------------- */

static bool guid_like(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return false;
        }
    }
    return true;
}

pp_env_status pp_env_create(pp_envs_t *p, const pp_env_spec *spec, pp_environment *out,
                            pp_env_operation *op, pp_env_err *e)
{
    pp_env_sku sku;
    if (!spec->display_name || !*spec->display_name) {
        snprintf(e->msg, sizeof e->msg, "properties.displayName is required.");
        return PP_ENV_ERR_BAD_PARAM;
    }
    if (strlen(spec->display_name) >= sizeof out->display_name) {
        snprintf(e->msg, sizeof e->msg, "properties.displayName is longer than %zu characters.",
                 sizeof out->display_name - 1);
        return PP_ENV_ERR_BAD_PARAM;
    }
    if (!spec->location || !*spec->location) {
        snprintf(e->msg, sizeof e->msg, "location is required; use one of: %s.",
                 pp_locations_str());
        return PP_ENV_ERR_BAD_PARAM;
    }
    if (!pp_location_valid(spec->location)) {
        snprintf(e->msg, sizeof e->msg,
                 "Location '%.40s' is not a Power Platform region; use one of: %s.", spec->location,
                 pp_locations_str());
        return PP_ENV_ERR_BAD_PARAM;
    }
    if (!spec->sku || !pp_env_sku_parse(spec->sku, &sku)) {
        snprintf(e->msg, sizeof e->msg,
                 "properties.environmentSku '%.40s' is not valid; use one of: Production, "
                 "Sandbox, Trial, Teams, Developer.",
                 spec->sku ? spec->sku : "");
        return PP_ENV_ERR_BAD_PARAM;
    }
    if (spec->id && !guid_like(spec->id)) {
        snprintf(e->msg, sizeof e->msg, "Environment id '%.40s' is not a GUID.", spec->id);
        return PP_ENV_ERR_BAD_PARAM;
    }
    env_rec *r = emu_xcalloc(1, sizeof *r);
    pp_environment *en = &r->env;
    if (spec->id)
        emu_lower_copy(en->id, sizeof en->id, spec->id);
    else
        emu_guid(en->id);
    snprintf(en->display_name, sizeof en->display_name, "%s", spec->display_name);
    emu_lower_copy(en->location, sizeof en->location, spec->location);
    snprintf(en->azure_region, sizeof en->azure_region, "%s", azure_region_of(en->location));
    en->sku = sku;
    en->managed = spec->managed;
    en->key_managed_by = PP_KEY_MICROSOFT;
    en->enabled = true;
    snprintf(en->reason, sizeof en->reason, "NotSpecified");
    en->created = emu_clock_now();

    pthread_mutex_lock(&p->lock);
    pp_env_status rs = PP_ENV_OK;
    if (envi_find(p, en->id)) {
        snprintf(e->msg, sizeof e->msg, "Environment '%s' already exists.", en->id);
        rs = PP_ENV_ERR_BAD_PARAM;
        goto out;
    }
    if (pp_dek_create(p->hsm, &p->platform_wrapper, &r->dek, r->wrapped, &r->wrapped_len, e->msg,
                      sizeof e->msg) != PP_ENVELOPE_OK) {
        rs = PP_ENV_ERR_CRYPTO;
        goto out;
    }
    char opid[37];
    emu_guid(opid);
    sqlite3 *db = emu_store_lock(p->store);
    bool ok = emu_store_begin(db) && envi_write(db, r) &&
              envi_op_insert(db, opid, en->id, "Create", "Succeeded", "", en->created) &&
              emu_store_commit(db);
    if (!ok)
        emu_store_rollback(db);
    emu_store_unlock(p->store);
    if (!ok) {
        snprintf(e->msg, sizeof e->msg, "cannot store the environment");
        rs = PP_ENV_ERR_STORE;
        goto out;
    }
    if (p->nrecs == p->caprecs) {
        p->caprecs = p->caprecs ? 2 * p->caprecs : 8;
        p->recs = emu_xrealloc(p->recs, p->caprecs * sizeof *p->recs);
    }
    p->recs[p->nrecs++] = r;
    if (out)
        *out = r->env;
    envi_op_fill(op, opid, en->id, "Create", en->created);
    r = NULL;
out:
    pthread_mutex_unlock(&p->lock);
    rec_free(r);
    return rs;
}

pp_env_status pp_env_get(pp_envs_t *p, const char *id, pp_environment *out)
{
    pthread_mutex_lock(&p->lock);
    env_rec *r = envi_find(p, id);
    if (r && out)
        *out = r->env;
    pthread_mutex_unlock(&p->lock);
    return r ? PP_ENV_OK : PP_ENV_ERR_NOT_FOUND;
}

size_t pp_env_list(pp_envs_t *p, pp_environment **out)
{
    pthread_mutex_lock(&p->lock);
    size_t n = p->nrecs;
    *out = n ? emu_xcalloc(n, sizeof **out) : NULL;
    for (size_t i = 0; i < n; i++)
        (*out)[i] = p->recs[i]->env;
    pthread_mutex_unlock(&p->lock);
    return n;
}

void envi_not_found(pp_env_err *e, const char *id)
{
    snprintf(e->msg, sizeof e->msg, "Environment '%.40s' does not exist.", id);
}

env_rec *envi_find_idle(pp_envs_t *p, const char *id, pp_env_status *rs, pp_env_err *e)
{
    env_rec *r = envi_find(p, id);
    if (!r) {
        envi_not_found(e, id);
        *rs = PP_ENV_ERR_NOT_FOUND;
        return NULL;
    }
    if (r->env.op_id[0]) {
        snprintf(e->msg, sizeof e->msg,
                 "Environment '%s' already has a %s operation in progress (%s); wait for it to "
                 "end.",
                 r->env.id, r->env.op_kind, r->env.op_id);
        *rs = PP_ENV_ERR_BUSY;
        return NULL;
    }
    return r;
}

pp_env_status pp_env_delete(pp_envs_t *p, const char *id, pp_env_operation *op, pp_env_err *e)
{
    return envi_delete(p, id, op, e, "deleted on request", NULL);
}

pp_env_status envi_delete(pp_envs_t *p, const char *id, pp_env_operation *op, pp_env_err *e,
                          const char *cause, const auth_principal *caller)
{
    pthread_mutex_lock(&p->lock);
    pp_env_status rs = PP_ENV_OK;
    size_t i = 0;
    for (; i < p->nrecs && strcasecmp(p->recs[i]->env.id, id); i++)
        ;
    if (i == p->nrecs) {
        envi_not_found(e, id);
        rs = PP_ENV_ERR_NOT_FOUND;
        goto out;
    }
    env_rec *r = p->recs[i];
    char opid[37];
    emu_guid(opid);
    int64_t now = emu_clock_now();
    sqlite3 *db = emu_store_lock(p->store);
    sqlite3_stmt *st = NULL;
    bool ok = emu_store_begin(db);
    const char *sqls[] = {"DELETE FROM pp_records WHERE env=?",
                          "DELETE FROM pp_environments WHERE id=?"};
    for (int k = 0; ok && k < 2; k++) {
        ok = sqlite3_prepare_v2(db, sqls[k], -1, &st, NULL) == SQLITE_OK;
        if (ok) {
            sqlite3_bind_text(st, 1, r->env.id, -1, SQLITE_STATIC);
            ok = sqlite3_step(st) == SQLITE_DONE;
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    ok = ok && envi_op_insert(db, opid, r->env.id, "Delete", "Succeeded", "", now) &&
         emu_store_commit(db);
    if (!ok)
        emu_store_rollback(db);
    emu_store_unlock(p->store);
    if (!ok) {
        snprintf(e->msg, sizeof e->msg, "cannot delete the environment");
        rs = PP_ENV_ERR_STORE;
        goto out;
    }
    envi_op_fill(op, opid, r->env.id, "Delete", now);
    if (p->hooks.deleted)
        p->hooks.deleted(r->env.id, p->hooks.ud);
    envi_audit(p, "Delete", r->env.id, "Succeeded", caller ? caller->oid : NULL,
               caller ? caller->appid : NULL, caller ? caller->name : NULL, cause);
    emu_log(EMU_LOG_INFO, "pp-env", "environment %s deleted: %s", r->env.id, cause);
    memmove(&p->recs[i], &p->recs[i + 1], (p->nrecs - i - 1) * sizeof *p->recs);
    p->nrecs--;
    rec_free(r);
out:
    pthread_mutex_unlock(&p->lock);
    return rs;
}

pp_env_status pp_env_set_enabled(pp_envs_t *p, const char *id, bool enabled, const char *reason,
                                 pp_env_err *e)
{
    pthread_mutex_lock(&p->lock);
    pp_env_status rs = PP_ENV_OK;
    env_rec *r = envi_find_idle(p, id, &rs, e);
    if (!r)
        goto out;
    pp_dek fresh = {0};
    cmk_ud u;
    pp_key_wrapper w = envi_wrapper_for(p, r, &u);
    char why[sizeof e->msg] = "";
    if (enabled && !r->dek.loaded &&
        pp_dek_unwrap(&w, r->wrapped, r->wrapped_len, &fresh, why, sizeof why) != PP_ENVELOPE_OK) {
        if (r->env.key_managed_by == PP_KEY_CUSTOMER) {
            if (r->env.lock_msg[0])
                snprintf(e->msg, sizeof e->msg,
                         "Environment '%s' cannot be enabled while its customer-managed key is "
                         "not usable. %.300s (now: %.60s)",
                         r->env.id, r->env.lock_msg, why);
            else
                snprintf(e->msg, sizeof e->msg,
                         "Environment '%s' cannot be enabled: its customer-managed key is not "
                         "usable (%.250s). Restore the policy identity's access to the original "
                         "key (get, wrapKey, unwrapKey) and enable the key, then retry.",
                         r->env.id, why);
            rs = PP_ENV_ERR_LOCKED;
        } else {
            snprintf(e->msg, sizeof e->msg, "%s", why);
            rs = PP_ENV_ERR_CRYPTO;
        }
        goto out;
    }
    env_rec next = *r;
    if (enabled) {
        next.env.lock_msg[0] = '\0';
        next.env.locked_since = 0;
    }
    next.env.enabled = enabled;
    snprintf(next.env.reason, sizeof next.env.reason, "%s",
             enabled  ? "NotSpecified"
             : reason ? reason
                      : "AdminDisabled");
    sqlite3 *db = emu_store_lock(p->store);
    bool ok = envi_write(db, &next);
    emu_store_unlock(p->store);
    OPENSSL_cleanse(&next.dek, sizeof next.dek);
    if (!ok) {
        pp_dek_wipe(&fresh);
        snprintf(e->msg, sizeof e->msg, "cannot store the environment state");
        rs = PP_ENV_ERR_STORE;
        goto out;
    }
    r->env.enabled = enabled;
    r->env.locked_since = next.env.locked_since;
    if (enabled)
        r->restore_noted = false;
    snprintf(r->env.reason, sizeof r->env.reason, "%s", next.env.reason);
    snprintf(r->env.lock_msg, sizeof r->env.lock_msg, "%s", next.env.lock_msg);
    if (enabled) {
        if (fresh.loaded) {
            r->dek = fresh;
            pp_dek_wipe(&fresh);
        }
    } else {
        pp_dek_wipe(&r->dek);
    }
out:
    pthread_mutex_unlock(&p->lock);
    return rs;
}

pp_env_status pp_env_operation_get(pp_envs_t *p, const char *op_id, pp_env_operation *out)
{
    sqlite3 *db = emu_store_lock(p->store);
    sqlite3_stmt *st = NULL;
    pp_env_status rs = PP_ENV_ERR_NOT_FOUND;
    if (sqlite3_prepare_v2(db,
                           "SELECT id,env,kind,state,error,created FROM pp_env_operations "
                           "WHERE id=? COLLATE NOCASE",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, op_id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            memset(out, 0, sizeof *out);
            snprintf(out->id, sizeof out->id, "%s", (const char *)sqlite3_column_text(st, 0));
            snprintf(out->env, sizeof out->env, "%s", (const char *)sqlite3_column_text(st, 1));
            snprintf(out->kind, sizeof out->kind, "%s", (const char *)sqlite3_column_text(st, 2));
            snprintf(out->state, sizeof out->state, "%s", (const char *)sqlite3_column_text(st, 3));
            snprintf(out->error, sizeof out->error, "%s", (const char *)sqlite3_column_text(st, 4));
            out->created = sqlite3_column_int64(st, 5);
            rs = PP_ENV_OK;
        }
    }
    sqlite3_finalize(st);
    emu_store_unlock(p->store);
    return rs;
}

/* ---- records ------------------------------------------------------------------------------ */

bool pp_entity_singular(const char *set, char *out, size_t outlen)
{
    size_t n = strlen(set);
    if (n == 0 || n > 64 || outlen < n + 2)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = set[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    if (n > 3 && !strcmp(set + n - 3, "ies")) {
        memcpy(out, set, n - 3);
        out[n - 3] = 'y';
        out[n - 2] = '\0';
    } else if (n > 1 && set[n - 1] == 's') {
        memcpy(out, set, n - 1);
        out[n - 1] = '\0';
    } else {
        memcpy(out, set, n + 1);
    }
    return true;
}

/* Finds an enabled environment with a loaded key (pp lock held). */
static pp_env_status usable_inlock(pp_envs_t *p, const char *env, const char *set, char *singular,
                                   size_t slen, env_rec **out, pp_env_err *e)
{
    env_rec *r = envi_find(p, env);
    if (!r) {
        envi_not_found(e, env);
        return PP_ENV_ERR_NOT_FOUND;
    }
    if (!strcmp(r->env.reason, PP_REASON_CMK_LOCKED)) {
        snprintf(e->msg, sizeof e->msg, "%s", r->env.lock_msg);
        return PP_ENV_ERR_LOCKED;
    }
    if (!r->env.enabled || !r->dek.loaded) {
        snprintf(e->msg, sizeof e->msg,
                 "Environment '%s' (%s) is disabled (%s); its data cannot be read or written. "
                 "An admin re-enables it with POST /providers/Microsoft.BusinessAppPlatform/"
                 "scopes/admin/environments/%s/enable.",
                 r->env.display_name, r->env.id,
                 r->env.enabled ? "data key unavailable" : r->env.reason, r->env.id);
        return PP_ENV_ERR_DISABLED;
    }
    if (!pp_entity_singular(set, singular, slen)) {
        snprintf(e->msg, sizeof e->msg,
                 "Resource not found for the segment '%.64s' (entity set names are lowercase "
                 "letters, digits and '_').",
                 set);
        return PP_ENV_ERR_NOT_FOUND;
    }
    *out = r;
    return PP_ENV_OK;
}

void pp_envs_set_hooks(pp_envs_t *p, const pp_env_hooks *h)
{
    pthread_mutex_lock(&p->lock);
    p->hooks = *h;
    pthread_mutex_unlock(&p->lock);
}

pp_env_status pp_env_with_dek(pp_envs_t *p, const char *env, pp_env_dek_fn fn, void *ud,
                              pp_env_err *e)
{
    char singular[80];
    env_rec *r = NULL;
    pthread_mutex_lock(&p->lock);
    /* "components" only passes the entity-set check; the refusals are the records' ones */
    pp_env_status rs = usable_inlock(p, env, "components", singular, sizeof singular, &r, e);
    if (rs == PP_ENV_OK)
        rs = fn(&r->env, &r->dek, ud, e);
    pthread_mutex_unlock(&p->lock);
    return rs;
}

/* The record statements, prepared once (SQLITE_PREPARE_PERSISTENT) and kept for the life of
 * the environments (store lock held; reset after each use). NULL when preparing failed. */
static sqlite3_stmt *rec_stmt(pp_envs_t *p, sqlite3 *db, rec_stmt_kind k)
{
    static const char *const sql[REC_STMT_COUNT] = {
        [REC_STMT_READ] = "SELECT blob FROM pp_records WHERE env=? AND tbl=? AND id=?",
        [REC_STMT_INSERT] = "INSERT INTO pp_records(env,tbl,id,blob) VALUES(?,?,?,?)",
        [REC_STMT_UPSERT] = "INSERT INTO pp_records(env,tbl,id,blob) VALUES(?,?,?,?) "
                            "ON CONFLICT(env,tbl,id) DO UPDATE SET blob=excluded.blob",
    };
    if (!p->rec_stmts[k] && sqlite3_prepare_v3(db, sql[k], -1, SQLITE_PREPARE_PERSISTENT,
                                               &p->rec_stmts[k], NULL) != SQLITE_OK) {
        sqlite3_finalize(p->rec_stmts[k]);
        p->rec_stmts[k] = NULL;
    }
    return p->rec_stmts[k];
}

static void rec_stmt_done(sqlite3_stmt *st)
{
    if (st) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
}

/* A record operation's view of its environment, taken under the pp lock by rec_begin: the id
 * and a copy of the data key, so that the JSON and AES-GCM work of a record runs outside the
 * pp lock (it serialised every record request on the machine). rec_store checks under the pp
 * lock that the environment is still usable with the same key before a row is written, so a
 * write is refused, as before, once the environment is locked, disabled or deleted. The key
 * copy lives on the caller's stack and rec_end wipes it. */
typedef struct {
    char env_id[40];
    char singular[80];
    pp_dek dek;
} rec_view;

static pp_env_status rec_begin(pp_envs_t *p, const char *env, const char *set, rec_view *v,
                               pp_env_err *e)
{
    env_rec *r = NULL;
    memset(v, 0, sizeof *v);
    pthread_mutex_lock(&p->lock);
    pp_env_status rs = usable_inlock(p, env, set, v->singular, sizeof v->singular, &r, e);
    if (rs == PP_ENV_OK) {
        snprintf(v->env_id, sizeof v->env_id, "%s", r->env.id);
        v->dek = r->dek;
    }
    pthread_mutex_unlock(&p->lock);
    return rs;
}

static void rec_end(rec_view *v)
{
    pp_dek_wipe(&v->dek);
}

/* The lock that serialises read-modify-writes of one record (a PATCH reads the row, merges and
 * writes it back; two at once must not lose a field). Taken before the pp lock. */
static uint32_t rec_hash(const char *env, const char *set, const char *id)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    const char *parts[3] = {env, set, id};
    for (int i = 0; i < 3; i++) {
        for (const unsigned char *c = (const unsigned char *)parts[i]; *c; c++)
            h = (h ^ (uint32_t)tolower(*c)) * 16777619u;
        h = (h ^ 0xffu) * 16777619u;
    }
    return h;
}

static pthread_mutex_t *rec_stripe(pp_envs_t *p, const char *env, const char *set, const char *id)
{
    return &p->rec_stripes[rec_hash(env, set, id) % PP_REC_STRIPES];
}

/* The open batch of record writes changed this row (store lock held, batched holder). */
static void rec_dirty_mark(pp_envs_t *p, const char *env, const char *set, const char *id)
{
    uint64_t b = emu_store_open_batch(p->store);
    if (!b)
        return;
    if (p->dirty_batch != b) { /* the rows of earlier batches are committed or gone */
        memset(p->dirty_bits, 0, sizeof p->dirty_bits);
        p->dirty_batch = b;
    }
    uint32_t bit = rec_hash(env, set, id) % 4096u;
    p->dirty_bits[bit / 64] |= (uint64_t)1 << (bit % 64);
}

/* May the open batch have changed this row? (store lock held, batched holder) */
static bool rec_dirty(const pp_envs_t *p, const char *env, const char *set, const char *id)
{
    uint64_t b = emu_store_open_batch(p->store);
    if (!b || p->dirty_batch != b)
        return false;
    uint32_t bit = rec_hash(env, set, id) % 4096u;
    return (p->dirty_bits[bit / 64] >> (bit % 64)) & 1;
}

/* Frees a row's plaintext (NULL is a no-op), wiping it first. */
static void text_free(char *t, size_t n)
{
    if (t) {
        OPENSSL_cleanse(t, n);
        free(t);
    }
}

/* Reads and opens one row (no pp lock needed: the store lock guards the statement): *pt
 * receives its stored text, compact JSON of an object (malloc'd; the caller cleanses and frees
 * it). NOT_FOUND when absent. */
static pp_env_status row_open(pp_envs_t *p, const rec_view *v, const char *set, const char *id,
                              char **pt, size_t *ptl, pp_env_err *e)
{
    char aad[200];
    uint8_t *blob = NULL;
    size_t blen = 0;
    bool found = false;
    pp_env_status rs = PP_ENV_OK;
    *pt = NULL;
    *ptl = 0;
    /* reads the open batch, no commit; it depends on the batch only if the batch changed the
     * row (the answer or the merge may then carry what the batch would lose if it failed) */
    sqlite3 *db = emu_store_lock_batched_read(p->store);
    if (rec_dirty(p, v->env_id, set, id))
        emu_store_read_batch(p->store);
    sqlite3_stmt *st = rec_stmt(p, db, REC_STMT_READ);
    if (st) {
        sqlite3_bind_text(st, 1, v->env_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, set, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            found = true;
            blen = (size_t)sqlite3_column_bytes(st, 0);
            blob = emu_xmalloc(blen ? blen : 1);
            if (blen)
                memcpy(blob, sqlite3_column_blob(st, 0), blen);
        }
    }
    rec_stmt_done(st);
    emu_store_unlock(p->store);
    if (!found) {
        rs = PP_ENV_ERR_NOT_FOUND;
        goto out;
    }
    pp_record_aad(v->env_id, set, id, aad, sizeof aad);
    pp_envelope_status es = pp_open(&v->dek, aad, strlen(aad), blob, blen, pt, ptl);
    if (es != PP_ENVELOPE_OK) {
        snprintf(e->msg, sizeof e->msg, "Record %s of %s cannot be opened: %s", id, set,
                 pp_envelope_status_str(es));
        rs = PP_ENV_ERR_CRYPTO;
        goto out;
    }
    if (*ptl < 2 || (*pt)[0] != '{' || (*pt)[*ptl - 1] != '}') {
        text_free(*pt, *ptl);
        *pt = NULL;
        *ptl = 0;
        snprintf(e->msg, sizeof e->msg, "Record %s of %s is not a JSON object", id, set);
        rs = PP_ENV_ERR_CRYPTO;
    }
out:
    free(blob);
    return rs;
}

/* Seals a row's text under the view's key: *blob (malloc'd) = nonce||ct||tag. */
static pp_env_status seal_text(const rec_view *v, const char *set, const char *id, const char *txt,
                               size_t tl, uint8_t **blob, size_t *blen, pp_env_err *e)
{
    char aad[200];
    *blob = NULL;
    *blen = 0;
    if (tl > PP_RECORD_MAX) {
        snprintf(e->msg, sizeof e->msg, "The record is larger than %d bytes.", PP_RECORD_MAX);
        return PP_ENV_ERR_BAD_PARAM;
    }
    pp_record_aad(v->env_id, set, id, aad, sizeof aad);
    if (pp_seal(&v->dek, aad, strlen(aad), txt, tl, blob, blen) != PP_ENVELOPE_OK) {
        snprintf(e->msg, sizeof e->msg, "cannot encrypt the record");
        return PP_ENV_ERR_CRYPTO;
    }
    return PP_ENV_OK;
}

/* Writes a sealed row, if the environment is still usable with the key it was sealed under.
 * insert: fail on an existing id. Today no operation gives an environment a different data key
 * (link, unlink and re-enable re-wrap or re-unwrap the same one), so the key comparison is a
 * guard for a future rotation of the data key itself.
 *
 * Hand-over: the check runs under the pp lock, the store lock is taken before the pp lock is
 * released, and the row is written under the store lock alone. A change of the environment
 * (lock, disable, delete, re-key) takes the pp lock and persists itself under the store lock,
 * so it is ordered after this write: a delete removes the row with the others, a lock is
 * written after it. Holding the pp lock through the SQLite write made every other record
 * request (they all take the pp lock to find their environment) wait for it, and the sleeps
 * and wake-ups of that contention left a quarter of the CPU idle under a write load. */
static pp_env_status rec_store(pp_envs_t *p, const char *set, const rec_view *v, const char *id,
                               const uint8_t *blob, size_t blen, bool insert, pp_env_err *e)
{
    char singular[80];
    env_rec *r = NULL;
    if (p->testing_before_store)
        p->testing_before_store(p, v->env_id, p->testing_before_store_ud);
    pthread_mutex_lock(&p->lock);
    pp_env_status rs = usable_inlock(p, v->env_id, set, singular, sizeof singular, &r, e);
    if (rs == PP_ENV_OK && CRYPTO_memcmp(r->dek.bytes, v->dek.bytes, PP_DEK_LEN) != 0) {
        snprintf(e->msg, sizeof e->msg,
                 "The data key of environment '%s' changed while the record was written; "
                 "nothing was stored. Try again.",
                 v->env_id);
        rs = PP_ENV_ERR_BUSY;
    }
    if (rs != PP_ENV_OK) {
        pthread_mutex_unlock(&p->lock);
        return rs;
    }
    {
        sqlite3 *db = emu_store_lock_batched(p->store);
        pthread_mutex_unlock(&p->lock);
        sqlite3_stmt *st = rec_stmt(p, db, insert ? REC_STMT_INSERT : REC_STMT_UPSERT);
        int src = SQLITE_ERROR;
        if (st) {
            sqlite3_bind_text(st, 1, v->env_id, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, set, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
            sqlite3_bind_blob(st, 4, blob, (int)blen, SQLITE_STATIC);
            src = sqlite3_step(st);
            if (src == SQLITE_DONE)
                rec_dirty_mark(p, v->env_id, set, id);
        }
        rec_stmt_done(st);
        emu_store_unlock(p->store);
        if (src == SQLITE_CONSTRAINT) {
            snprintf(e->msg, sizeof e->msg, "A record with matching key values already exists.");
            rs = PP_ENV_ERR_CONFLICT;
        } else if (src != SQLITE_DONE) {
            snprintf(e->msg, sizeof e->msg, "cannot store the record");
            rs = PP_ENV_ERR_STORE;
        }
    }
    return rs;
}

pp_env_status pp_record_get_text(pp_envs_t *p, const char *env, const char *set, const char *id,
                                 char **text, size_t *len, pp_env_err *e)
{
    rec_view v;
    *text = NULL;
    *len = 0;
    pp_env_status rs = rec_begin(p, env, set, &v, e);
    if (rs == PP_ENV_OK) {
        rs = row_open(p, &v, set, id, text, len, e);
        if (rs == PP_ENV_ERR_NOT_FOUND)
            snprintf(e->msg, sizeof e->msg, "%s With Id = %.40s Does Not Exist", v.singular, id);
    }
    rec_end(&v);
    return rs;
}

/* The merge of a PATCH, as text (no JSON tree): the stored row's members (none for a new
 * row) in their order, each replaced in place by a later member of the same key, those
 * being the body's, then the id field, createdon (a new row only) and modifiedon; a member
 * the row had not is appended, in that order. That is what json_object_update and
 * json_object_set_new gave on the parsed rows (jansson keeps insertion order), with every
 * key and value as it was written; "@odata.context" is dropped. false when the stored row
 * is not flat, the members are more than the scan takes, or the text is over PP_RECORD_MAX:
 * the tree merge takes it then. */
static bool merge_flat(const char *pt, size_t ptl, const pp_record_body *f, const char *idfield,
                       const char *lid, const char *ts, bool created, char **txt, size_t *tl)
{
    emu_jmember row[2 * EMU_JFLAT_MAX + 3];
    size_t nr = 0;
    if (f->n > EMU_JFLAT_MAX || (pt && !emu_jflat_scan(pt, ptl, row, EMU_JFLAT_MAX, &nr)))
        return false;
    char idval[48], tsval[48];
    snprintf(idval, sizeof idval, "\"%s\"", lid);
    snprintf(tsval, sizeof tsval, "\"%s\"", ts);
    const emu_jmember set_after[3] = {
        {idfield, strlen(idfield), idval, strlen(idval), false},
        {"createdon", 9, tsval, strlen(tsval), false},
        {"modifiedon", 10, tsval, strlen(tsval), false},
    };
    for (size_t i = 0; i < f->n + 3; i++) {
        const emu_jmember *o = i < f->n ? &f->m[i] : &set_after[i - f->n];
        if (i == f->n + 1 && !created)
            continue;
        size_t j = 0;
        while (j < nr && !emu_jflat_key_eq(&row[j], o))
            j++;
        if (j < nr) {
            row[j].val = o->val;
            row[j].val_len = o->val_len;
        } else {
            row[nr++] = *o;
        }
    }
    /* "@odata.context" is the answer's annotation (spliced in when a row is sent), not data */
    static const emu_jmember ctx = {"@odata.context", 14, NULL, 0, false};
    size_t kept = 0;
    for (size_t j = 0; j < nr; j++)
        if (!emu_jflat_key_eq(&row[j], &ctx))
            row[kept++] = row[j];
    nr = kept;
    *tl = emu_jflat_size(row, nr);
    /* values are kept as written, escapes too: the size limit is judged on the tree merge's
     * normalised text when this one is over it */
    if (*tl > PP_RECORD_MAX)
        return false;
    *txt = emu_xmalloc(*tl + 1);
    emu_jflat_write(row, nr, *txt);
    (*txt)[*tl] = '\0';
    return true;
}

/* The same merge on jansson trees: for fields given as an object, or rows that are not flat. */
static pp_env_status merge_tree(const char *pt, size_t ptl, const pp_record_body *f,
                                const char *set, const char *idfield, const char *lid,
                                const char *ts, bool created, char **txt, size_t *tl, pp_env_err *e)
{
    pp_env_status rs = PP_ENV_OK;
    json_t *row = pt ? json_loadb(pt, ptl, 0, NULL) : json_object();
    json_t *fields = f->json ? json_incref((json_t *)f->json)
                             : json_loadb(f->text, f->len, JSON_REJECT_DUPLICATES, NULL);
    *txt = NULL;
    if (!row) {
        snprintf(e->msg, sizeof e->msg, "Record %s of %s is not JSON", lid, set);
        rs = PP_ENV_ERR_CRYPTO;
    } else if (!json_is_object(fields)) {
        snprintf(e->msg, sizeof e->msg, "The request body must be a JSON object.");
        rs = PP_ENV_ERR_BAD_PARAM;
    } else {
        json_object_update(row, fields);
        json_object_del(row, "@odata.context"); /* as merge_flat */
        json_object_set_new(row, idfield, json_string(lid));
        if (created)
            json_object_set_new(row, "createdon", json_string(ts));
        json_object_set_new(row, "modifiedon", json_string(ts));
        *txt = json_dumps(row, JSON_COMPACT);
        if (!*txt) {
            snprintf(e->msg, sizeof e->msg, "The record is larger than %d bytes.", PP_RECORD_MAX);
            rs = PP_ENV_ERR_BAD_PARAM;
        } else {
            *tl = strlen(*txt);
        }
    }
    json_decref(row);
    json_decref(fields);
    return rs;
}

/* Upsert (or update, must_exist) of one row: read, open, merge, seal and store under the
 * row's stripe lock. *stored (may be NULL) receives the stored text. */
pp_env_status pp_record_update(pp_envs_t *p, const char *env, const char *set, const char *id,
                               const pp_record_body *f, bool must_exist, bool *created,
                               char **stored, size_t *stored_len, pp_env_err *e)
{
    char idfield[96], lid[40], ts[40];
    char *pt = NULL, *txt = NULL;
    size_t ptl = 0, tl = 0;
    rec_view v;
    uint8_t *blob = NULL;
    size_t blen = 0;
    *created = false;
    if (stored) {
        *stored = NULL;
        *stored_len = 0;
    }
    if (!guid_like(id)) {
        snprintf(e->msg, sizeof e->msg, "Record id '%.40s' is not a GUID.", id);
        return PP_ENV_ERR_BAD_PARAM;
    }
    emu_lower_copy(lid, sizeof lid, id);
    pp_env_status rs = rec_begin(p, env, set, &v, e);
    if (rs != PP_ENV_OK) {
        rec_end(&v);
        return rs;
    }
    pthread_mutex_t *stripe = rec_stripe(p, v.env_id, set, lid);
    pthread_mutex_lock(stripe);
    snprintf(idfield, sizeof idfield, "%sid", v.singular);
    rs = row_open(p, &v, set, lid, &pt, &ptl, e);
    if (rs == PP_ENV_ERR_NOT_FOUND) {
        if (must_exist) {
            snprintf(e->msg, sizeof e->msg, "%s With Id = %s Does Not Exist", v.singular, lid);
            goto out;
        }
        *created = true;
        rs = PP_ENV_OK;
    }
    if (rs != PP_ENV_OK)
        goto out;
    emu_time_rfc3339(emu_clock_now(), ts, sizeof ts);
    if (!f->m || !merge_flat(pt, ptl, f, idfield, lid, ts, *created, &txt, &tl))
        rs = merge_tree(pt, ptl, f, set, idfield, lid, ts, *created, &txt, &tl, e);
    if (rs == PP_ENV_OK)
        rs = seal_text(&v, set, lid, txt, tl, &blob, &blen, e);
    if (rs == PP_ENV_OK)
        rs = rec_store(p, set, &v, lid, blob, blen, false, e);
    if (rs == PP_ENV_OK && stored) {
        *stored = txt;
        *stored_len = tl;
        txt = NULL;
    }
out:
    pthread_mutex_unlock(stripe);
    rec_end(&v);
    text_free(pt, ptl);
    text_free(txt, tl);
    free(blob);
    return rs;
}

/* The id a new row's body gives in its id field: *given false when the field is absent or
 * null; 400 when it is anything but a GUID string. */
static pp_env_status given_id(const pp_record_body *f, const char *idfield, char id[40],
                              bool *given, pp_env_err *e)
{
    json_t *own = NULL;
    const json_t *g = NULL;
    *given = false;
    if (f->json) {
        g = json_object_get(f->json, idfield);
    } else {
        const emu_jmember want = {idfield, strlen(idfield), NULL, 0, false};
        for (size_t i = 0; i < f->n && !g; i++)
            if (emu_jflat_key_eq(&f->m[i], &want)) /* the value alone: a few bytes */
                g = own = json_loadb(f->m[i].val, f->m[i].val_len, JSON_DECODE_ANY, NULL);
    }
    pp_env_status rs = PP_ENV_OK;
    if (g && !json_is_null(g)) {
        if (json_is_string(g) && guid_like(json_string_value(g))) {
            emu_lower_copy(id, 40, json_string_value(g));
            *given = true;
        } else {
            snprintf(e->msg, sizeof e->msg, "%s must be a GUID.", idfield);
            rs = PP_ENV_ERR_BAD_PARAM;
        }
    }
    json_decref(own);
    return rs;
}

/* Creates a row: the body's members in order, the id field (the given GUID, lower-cased, or
 * a new one), createdon and modifiedon, merged as text when the body is flat. *stored (may be
 * NULL) receives the stored text. */
pp_env_status pp_record_create(pp_envs_t *p, const char *env, const char *set,
                               const pp_record_body *f, char id_out[40], char **stored,
                               size_t *stored_len, pp_env_err *e)
{
    char idfield[96], id[40], ts[40];
    char *txt = NULL;
    size_t tl = 0;
    rec_view v;
    uint8_t *blob = NULL;
    size_t blen = 0;
    bool given = false;
    if (stored) {
        *stored = NULL;
        *stored_len = 0;
    }
    pp_env_status rs = rec_begin(p, env, set, &v, e);
    if (rs != PP_ENV_OK)
        goto out;
    snprintf(idfield, sizeof idfield, "%sid", v.singular);
    rs = given_id(f, idfield, id, &given, e);
    if (rs != PP_ENV_OK)
        goto out;
    if (!given)
        emu_guid(id);
    emu_time_rfc3339(emu_clock_now(), ts, sizeof ts);
    if (!f->m || !merge_flat(NULL, 0, f, idfield, id, ts, true, &txt, &tl))
        rs = merge_tree(NULL, 0, f, set, idfield, id, ts, true, &txt, &tl, e);
    if (rs == PP_ENV_OK)
        rs = seal_text(&v, set, id, txt, tl, &blob, &blen, e);
    if (rs == PP_ENV_OK) {
        pthread_mutex_t *stripe = rec_stripe(p, v.env_id, set, id); /* against an upsert */
        pthread_mutex_lock(stripe);
        rs = rec_store(p, set, &v, id, blob, blen, true, e);
        pthread_mutex_unlock(stripe);
    }
    if (rs == PP_ENV_OK) {
        snprintf(id_out, 40, "%s", id);
        if (stored) {
            *stored = txt;
            *stored_len = tl;
            txt = NULL;
        }
    }
out:
    rec_end(&v);
    text_free(txt, tl);
    free(blob);
    return rs;
}

pp_env_status pp_record_delete(pp_envs_t *p, const char *env, const char *set, const char *id,
                               pp_env_err *e)
{
    char singular[80];
    env_rec *r = NULL;
    pthread_mutex_t *stripe = rec_stripe(p, env, set, id); /* not in the middle of a PATCH */
    pthread_mutex_lock(stripe);
    pthread_mutex_lock(&p->lock);
    pp_env_status rs = usable_inlock(p, env, set, singular, sizeof singular, &r, e);
    if (rs != PP_ENV_OK)
        goto out;
    sqlite3 *db = emu_store_lock(p->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db, "DELETE FROM pp_records WHERE env=? AND tbl=? AND id=?", -1,
                                 &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, r->env.id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, set, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    int changed = ok ? sqlite3_changes(db) : 0;
    emu_store_unlock(p->store);
    if (!ok) {
        snprintf(e->msg, sizeof e->msg, "cannot delete the record");
        rs = PP_ENV_ERR_STORE;
    } else if (!changed) {
        snprintf(e->msg, sizeof e->msg, "%s With Id = %.40s Does Not Exist", singular, id);
        rs = PP_ENV_ERR_NOT_FOUND;
    }
out:
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_unlock(stripe);
    return rs;
}

/* One sealed row of a page, copied out of SQLite so that it is opened without locks. */
typedef struct {
    char id[40];
    uint8_t *blob;
    size_t len;
} sealed_row;

pp_env_status pp_record_list(pp_envs_t *p, const char *env, const char *set, int64_t after,
                             size_t top, json_t **rows, int64_t *next, pp_env_err *e)
{
    rec_view v;
    sealed_row *page = NULL;
    size_t n = 0;
    *rows = NULL;
    *next = 0;
    if (top == 0 || top > PP_LIST_MAX)
        top = PP_LIST_MAX;
    /* The environment's view (pp lock), the page's sealed rows (store lock), then opening
     * them without either lock: a long page does not hold up other record operations. */
    pp_env_status rs = rec_begin(p, env, set, &v, e);
    if (rs != PP_ENV_OK)
        goto out;
    page = emu_xmalloc(top * sizeof *page);
    sqlite3 *db = emu_store_lock(p->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db,
                                 "SELECT rowid,id,blob FROM pp_records WHERE env=? AND tbl=? AND "
                                 "rowid>? ORDER BY rowid LIMIT ?",
                                 -1, &st, NULL) == SQLITE_OK;
    int64_t last = 0;
    if (ok) {
        sqlite3_bind_text(st, 1, v.env_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, set, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, after);
        sqlite3_bind_int64(st, 4, (int64_t)top + 1);
        int src;
        while ((src = sqlite3_step(st)) == SQLITE_ROW) {
            if (n == top) {
                *next = last;
                break;
            }
            last = sqlite3_column_int64(st, 0);
            sealed_row *r = &page[n++];
            snprintf(r->id, sizeof r->id, "%s", (const char *)sqlite3_column_text(st, 1));
            r->len = (size_t)sqlite3_column_bytes(st, 2);
            r->blob = emu_xmalloc(r->len ? r->len : 1);
            if (r->len)
                memcpy(r->blob, sqlite3_column_blob(st, 2), r->len);
        }
        ok = src == SQLITE_ROW || src == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    emu_store_unlock(p->store);
    if (!ok) {
        snprintf(e->msg, sizeof e->msg, "cannot list records");
        rs = PP_ENV_ERR_STORE;
        goto out;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        char aad[200], *pt = NULL;
        size_t ptl = 0;
        pp_record_aad(v.env_id, set, page[i].id, aad, sizeof aad);
        pp_envelope_status es =
            pp_open(&v.dek, aad, strlen(aad), page[i].blob, page[i].len, &pt, &ptl);
        free(page[i].blob); /* as the rows are parsed: not the whole page twice */
        page[i].blob = NULL;
        if (es != PP_ENVELOPE_OK) {
            snprintf(e->msg, sizeof e->msg, "Record %s of %s cannot be opened", page[i].id, set);
            rs = PP_ENV_ERR_CRYPTO;
            break;
        }
        json_t *row = json_loadb(pt, ptl, 0, NULL);
        text_free(pt, ptl);
        if (row)
            json_array_append_new(arr, row);
    }
    if (rs == PP_ENV_OK)
        *rows = arr;
    else
        json_decref(arr);
out:
    if (rs != PP_ENV_OK)
        *next = 0;
    for (size_t i = 0; i < n; i++)
        free(page[i].blob);
    free(page);
    rec_end(&v);
    return rs;
}

/* ---- world -------------------------------------------------------------------------------- */

bool pp_envs_world_apply(pp_envs_t *p, json_t *world, char *err, size_t errlen)
{
    json_t *arr = json_object_get(world, "environments");
    if (!arr)
        return true;
    if (!json_is_array(arr)) {
        snprintf(err, errlen, "environments must be an array");
        return false;
    }
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        pp_env_spec s = {
            .id = json_string_value(json_object_get(v, "id")),
            .display_name = json_string_value(json_object_get(v, "displayName")),
            .location = json_string_value(json_object_get(v, "location")),
            .sku = json_string_value(json_object_get(v, "environmentSku")),
            .managed = json_is_true(json_object_get(v, "managed")),
        };
        pp_environment env;
        pp_env_err e = {{0}};
        if (pp_env_create(p, &s, &env, NULL, &e) != PP_ENV_OK) {
            snprintf(err, errlen, "environments[%zu]: %s", i, e.msg);
            return false;
        }
        json_t *recs = json_object_get(v, "records");
        const char *set;
        json_t *rows;
        json_object_foreach(recs, set, rows)
        {
            size_t j;
            json_t *row;
            json_array_foreach(rows, j, row)
            {
                char id[40];
                if (!json_is_object(row) ||
                    pp_record_create(p, env.id, set, &(pp_record_body){.json = row}, id, NULL, NULL,
                                     &e) != PP_ENV_OK) {
                    snprintf(err, errlen, "environments[%zu].records.%s[%zu]: %s", i, set, j,
                             json_is_object(row) ? e.msg : "not an object");
                    return false;
                }
            }
        }
    }
    return true;
}

/* ---- test hooks (env_testing.h) --------------------------------------------------------- */

void pp_envs_testing_set_before_store(pp_envs_t *p,
                                      void (*fn)(pp_envs_t *p, const char *env, void *ud), void *ud)
{
    pthread_mutex_lock(&p->lock);
    p->testing_before_store = fn;
    p->testing_before_store_ud = ud;
    pthread_mutex_unlock(&p->lock);
}

bool pp_envs_testing_replace_dek(pp_envs_t *p, const char *env)
{
    bool ok = false;
    pthread_mutex_lock(&p->lock);
    env_rec *r = envi_find(p, env);
    if (r && r->dek.loaded)
        ok = RAND_bytes(r->dek.bytes, PP_DEK_LEN) == 1;
    pthread_mutex_unlock(&p->lock);
    return ok;
}
