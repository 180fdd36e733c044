/*
 * cmk: customer-managed keys for environments (see environments.h): the customer-key wrapper
 * (Key Vault as the policy's managed identity), link / unlink as queued operations with a
 * runner thread, the lock watch, rotation following the key's current version, re-enable and
 * lock expiry. Every transition is audited with its cause.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>

#include "clock.h"
#include "env_internal.h"
#include "keyvault/access.h"
#include "log.h"
#include "policies.h"
#include "util.h"

/* ---- the customer key --------------------------------------------------------------------- */

static const char *vault_of(const pp_policy *pol)
{
    const char *v = NULL;
    for (const char *q = pol->vault_id; *q; q++)
        if (!strncasecmp(q, "/vaults/", 8))
            v = q + 8;
    return v && *v ? v : NULL;
}

/* The policy of system_id, its identity as a principal and its vault name. */
static bool cmk_resolve(pp_envs_t *p, const char *system_id, pp_policy *pol, auth_principal *who,
                        char *vault, size_t vlen, char *err, size_t errlen)
{
    if (!p->has_cmk) {
        snprintf(err, errlen, "customer-managed keys are not configured");
        return false;
    }
    if (pp_policy_get_by_system_id(p->cmk.policies, system_id, pol) != PP_OK) {
        snprintf(err, errlen, "the enterprise policy '%.160s' no longer exists", system_id);
        return false;
    }
    if (!pol->has_identity || !auth_principal_get(p->cmk.auth, pol->identity_oid, who)) {
        snprintf(err, errlen, "the managed identity of enterprise policy '%.100s' does not exist",
                 pol->name);
        return false;
    }
    const char *v = vault_of(pol);
    if (!v) {
        snprintf(err, errlen, "enterprise policy '%.100s' names no key vault", pol->name);
        return false;
    }
    snprintf(vault, vlen, "%s", v);
    return true;
}

/* A failure of the emulator's own parts (HSM, store), not of the key or its access: the key
 * may well be usable, so it is no reason to lock an environment. */
static bool kv_status_transient(kv_status st)
{
    return st == KV_ERR_HSM_UNAVAILABLE || st == KV_ERR_HSM || st == KV_ERR_STORE;
}

static bool cmk_crypt(cmk_ud *u, kv_crypt_op op, const uint8_t *in, size_t in_len, uint8_t *out,
                      size_t *out_len, char *err, size_t errlen)
{
    pp_policy pol;
    auth_principal who;
    char vault[64];
    if (!cmk_resolve(u->p, u->system_id, &pol, &who, vault, sizeof vault, err, errlen))
        return false;
    const char *ver = u->version && *u->version ? u->version : pol.key_version;
    kv_err ke = {{0}};
    kv_status st = kv_key_crypt_as(u->p->cmk.kv, &who, vault, pol.key_name, ver, op,
                                   HSM_RSA_OAEP_SHA256, in, in_len, out, out_len, u->version_out,
                                   &ke);
    if (st != KV_OK) {
        u->transient = kv_status_transient(st);
        snprintf(err, errlen, "key '%.100s' in vault '%.64s' (%s as identity %s of policy "
                 "'%.100s'): %s: %.300s",
                 pol.key_name, vault, op == KV_CRYPT_WRAP ? "wrapKey" : "unwrapKey", who.oid,
                 pol.name, kv_status_str(st), ke.msg);
        return false;
    }
    return true;
}

static bool cmk_wrap(void *ud, const uint8_t *dek, size_t dek_len, uint8_t *out, size_t *out_len,
                     char *err, size_t errlen)
{
    return cmk_crypt(ud, KV_CRYPT_WRAP, dek, dek_len, out, out_len, err, errlen);
}

static bool cmk_unwrap(void *ud, const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len,
                       char *err, size_t errlen)
{
    return cmk_crypt(ud, KV_CRYPT_UNWRAP, in, in_len, out, out_len, err, errlen);
}

static pp_key_wrapper cmk_wrapper(cmk_ud *u, pp_envs_t *p, const char *system_id,
                                  const char *version)
{
    memset(u, 0, sizeof *u);
    u->p = p;
    u->system_id = system_id;
    u->version = version;
    return (pp_key_wrapper){.wrap = cmk_wrap, .unwrap = cmk_unwrap, .ud = u};
}

pp_key_wrapper envi_wrapper_for(pp_envs_t *p, const env_rec *r, cmk_ud *u)
{
    if (r->env.key_managed_by == PP_KEY_CUSTOMER)
        return cmk_wrapper(u, p, r->env.cmk_system_id, r->env.cmk_version);
    return p->platform_wrapper;
}

/* ---- audit, options ------------------------------------------------------------------------ */

void envi_audit(pp_envs_t *p, const char *what, const char *env, const char *outcome,
                const char *caller_oid, const char *caller_appid, const char *caller_name,
                const char *detail)
{
    if (!p->audit)
        return;
    char op[96], target[128];
    snprintf(op, sizeof op, "PowerPlatform/environments/%s", what);
    snprintf(target, sizeof target, "/providers/Microsoft.BusinessAppPlatform/environments/%s",
             env);
    emu_audit_add(p->audit, &(emu_audit_event){.caller_oid = caller_oid && *caller_oid
                                                                 ? caller_oid
                                                                 : NULL,
                                                .caller_appid = caller_appid,
                                                .caller_name = caller_name,
                                                .operation = op,
                                                .target = target,
                                                .outcome = outcome,
                                                .detail = detail});
}

void pp_envs_set_audit(pp_envs_t *p, emu_audit *audit)
{
    p->audit = audit;
}

void pp_envs_set_auto_reenable(pp_envs_t *p, bool on)
{
    p->auto_reenable = on;
}

int64_t pp_env_lock_expiry(const pp_environment *e)
{
    return e->sku == PP_SKU_PRODUCTION ? PP_LOCK_EXPIRY_PRODUCTION_SECONDS
                                       : PP_LOCK_EXPIRY_SANDBOX_SECONDS;
}

/* ---- hooks --------------------------------------------------------------------------------- */

bool pp_env_is_linked(pp_envs_t *p, const char *system_id)
{
    pthread_mutex_lock(&p->lock);
    bool any = false;
    for (size_t i = 0; i < p->nrecs && !any; i++) {
        const pp_environment *e = &p->recs[i]->env;
        any = (e->cmk_system_id[0] && !strcasecmp(e->cmk_system_id, system_id)) ||
              (e->op_id[0] && e->op_system_id[0] && !strcasecmp(e->op_system_id, system_id));
    }
    pthread_mutex_unlock(&p->lock);
    return any;
}

static bool link_check_cb(const char *system_id, void *ud)
{
    return pp_env_is_linked(ud, system_id);
}

static void kv_change_cb(const char *vault, const char *key, void *ud)
{
    pp_envs_recheck_key(ud, vault, key);
}

static void roles_change_cb(const char *scope, void *ud)
{
    (void)scope;
    pp_envs_recheck(ud);
}

static void policy_deleted_cb(const char *system_id, void *ud)
{
    (void)system_id;
    pp_envs_recheck(ud);
}

/* Changes re-check at once (kv, role and policy hooks). The clock matters for nbf/exp and the
 * lock expiry: expiry is checked on every tick (no HSM work); the key re-check runs when the
 * emulated time moved 30 s or more since the last one (a clock advance always does), so linked
 * environments do not cost one HSM unwrap each per second. */
#define PP_TICK_RECHECK_SECONDS 30
static void clock_cb(int64_t now, void *ud)
{
    pp_envs_t *p = ud;
    if (now - p->last_tick_check >= PP_TICK_RECHECK_SECONDS || now < p->last_tick_check) {
        p->last_tick_check = now;
        pp_envs_recheck(p);
    }
    pp_envs_expire_locks(p, now);
}

void pp_envs_set_cmk(pp_envs_t *p, const pp_cmk_deps *d)
{
    p->cmk = *d;
    p->has_cmk = true;
    pp_policies_set_link_check(d->policies, link_check_cb, p);
    pp_policies_set_deleted_hook(d->policies, policy_deleted_cb, p);
    kv_set_change_hook(d->kv, kv_change_cb, p);
    if (d->roles)
        auth_roles_set_change_hook(d->roles, roles_change_cb, p);
    emu_clock_hook_add(clock_cb, p);
    /* enabled environments on a customer key: unwrap now (failures surface at the recheck) */
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->nrecs; i++) {
        env_rec *r = p->recs[i];
        if (!r->env.enabled || r->env.key_managed_by != PP_KEY_CUSTOMER || r->dek.loaded)
            continue;
        cmk_ud u;
        pp_key_wrapper w = envi_wrapper_for(p, r, &u);
        char why[256] = "";
        if (pp_dek_unwrap(&w, r->wrapped, r->wrapped_len, &r->dek, why, sizeof why) !=
            PP_ENVELOPE_OK)
            emu_log(EMU_LOG_ERROR, "pp-env", "environment %s: data key unavailable: %s", r->env.id,
                    why);
    }
    pthread_mutex_unlock(&p->lock);
    pp_envs_recheck(p);
}

/* ---- link / unlink --------------------------------------------------------------------------- */

/* The policy for a link/unlink/re-enable and the caller's Reader on it. */
static pp_env_status policy_for(pp_envs_t *p, const char *system_id, const auth_principal *caller,
                                pp_policy *pol, char **arm_id, pp_env_err *e)
{
    *arm_id = NULL;
    if (!p->has_cmk) {
        snprintf(e->msg, sizeof e->msg, "Customer-managed keys are not configured.");
        return PP_ENV_ERR_BAD_PARAM;
    }
    if (!system_id || !*system_id) {
        snprintf(e->msg, sizeof e->msg, "The request body must name the policy: {\"SystemId\": "
                                        "\"/regions/{location}/providers/Microsoft.PowerPlatform/"
                                        "enterprisePolicies/{guid}\"}.");
        return PP_ENV_ERR_BAD_PARAM;
    }
    if (pp_policy_get_by_system_id(p->cmk.policies, system_id, pol) != PP_OK) {
        snprintf(e->msg, sizeof e->msg, "Enterprise policy with SystemId '%.160s' does not exist.",
                 system_id);
        return PP_ENV_ERR_BAD_PARAM;
    }
    if (pol->kind != PP_KIND_ENCRYPTION) {
        snprintf(e->msg, sizeof e->msg,
                 "Enterprise policy '%.100s' is of kind %s; only an Encryption policy can be "
                 "linked here.",
                 pol->name, pp_kind_str(pol->kind));
        return PP_ENV_ERR_BAD_PARAM;
    }
    *arm_id = pp_policy_arm_id(pol);
    if (caller && caller->from_token && p->cmk.roles &&
        !auth_roles_has_role_at(p->cmk.roles, caller->oid, *arm_id, "Reader")) {
        snprintf(e->msg, sizeof e->msg,
                 "The caller (object id %s) does not have Reader (or Contributor/Owner) on the "
                 "enterprise policy '%.300s'; assign the Reader role on the policy and retry.",
                 caller->oid, *arm_id);
        free(*arm_id);
        *arm_id = NULL;
        return PP_ENV_ERR_FORBIDDEN;
    }
    return PP_ENV_OK;
}

static void sleep_ms(pp_envs_t *p, unsigned ms)
{
    /* interruptible by pp_envs_close (the runner's condition variable); caller holds p->lock */
    if (!ms)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    while (!p->runner_stop && pthread_cond_timedwait(&p->cv, &p->lock, &ts) != ETIMEDOUT)
        ;
}

/* Runs one queued operation to its end (pp lock held). The environment is disabled, its data
 * key still in memory; success re-wraps under the target and enables it; failure puts the
 * previous state back. */
static void op_execute_inlock(pp_envs_t *p, envi_op *q)
{
    env_rec *r = envi_find(p, q->env);
    const char *kind = q->link ? "Link" : "Unlink";
    char why[400] = "";
    bool ok = r != NULL && !strcmp(r->env.op_id, q->op_id);
    if (!ok)
        snprintf(why, sizeof why, "the environment was deleted while the operation ran");
    pp_policy pol;
    char *arm_id = NULL;
    memset(&pol, 0, sizeof pol);
    if (ok && q->link) {
        if (pp_policy_get_by_system_id(p->cmk.policies, q->system_id, &pol) != PP_OK) {
            snprintf(why, sizeof why, "the enterprise policy '%.160s' no longer exists",
                     q->system_id);
            ok = false;
        } else {
            arm_id = pp_policy_arm_id(&pol);
        }
    }
    pp_dek dek = {0};
    uint8_t wrapped[PP_WRAPPED_MAX];
    size_t wlen = 0;
    cmk_ud to_u;
    memset(&to_u, 0, sizeof to_u);
    if (ok) {
        if (r->dek.loaded) {
            dek = r->dek;
        } else {
            cmk_ud u;
            pp_key_wrapper from = envi_wrapper_for(p, r, &u);
            char e2[300] = "";
            ok = pp_dek_unwrap(&from, r->wrapped, r->wrapped_len, &dek, e2, sizeof e2) ==
                 PP_ENVELOPE_OK;
            if (!ok)
                snprintf(why, sizeof why, "the current data key cannot be unwrapped: %.340s",
                         e2);
        }
    }
    if (ok && q->link) { /* the identity must hold get, wrapKey, unwrapKey on a usable key */
        auth_principal who;
        char vault[64], e2[400] = "";
        ok = cmk_resolve(p, q->system_id, &pol, &who, vault, sizeof vault, e2, sizeof e2);
        kv_err ke = {{0}};
        if (ok && kv_key_cmk_probe_as(p->cmk.kv, &who, vault, pol.key_name, pol.key_version, NULL,
                                      &ke) != KV_OK) {
            snprintf(e2, sizeof e2, "as identity %s of policy '%.80s': %.250s", who.oid, pol.name,
                     ke.msg);
            ok = false;
        }
        if (!ok)
            snprintf(why, sizeof why, "%s", e2);
    }
    if (ok) {
        pp_key_wrapper to = q->link ? cmk_wrapper(&to_u, p, q->system_id, "")
                                    : p->platform_wrapper;
        size_t n = PP_WRAPPED_MAX;
        char werr[300] = "";
        ok = to.wrap(to.ud, dek.bytes, PP_DEK_LEN, wrapped, &n, werr, sizeof werr);
        wlen = n;
        if (ok) { /* the identity must be able to unwrap too (unwrapKey) */
            if (q->link)
                to_u.version = to_u.version_out;
            pp_dek check = {0};
            ok = pp_dek_unwrap(&to, wrapped, wlen, &check, werr, sizeof werr) == PP_ENVELOPE_OK &&
                 !CRYPTO_memcmp(check.bytes, dek.bytes, PP_DEK_LEN);
            pp_dek_wipe(&check);
        }
        if (!ok)
            snprintf(why, sizeof why, "%s", werr[0] ? werr : "the unwrapped key does not match");
    }
    char msg[256];
    snprintf(msg, sizeof msg, "%s failed: %.230s", kind, why);
    if (!r) { /* nothing to put back */
        sqlite3 *db = emu_store_lock(p->store);
        envi_op_update(db, q->op_id, "Failed", msg);
        emu_store_unlock(p->store);
        envi_audit(p, kind, q->env, "Failed", q->caller_oid, q->caller_appid, q->caller_name, msg);
        free(arm_id);
        pp_dek_wipe(&dek);
        return;
    }
    env_rec next = *r;
    next.env.op_id[0] = next.env.op_kind[0] = next.env.op_system_id[0] = '\0';
    if (ok) {
        if (q->link) {
            next.env.key_managed_by = PP_KEY_CUSTOMER;
            snprintf(next.env.cmk_system_id, sizeof next.env.cmk_system_id, "%s", pol.system_id);
            snprintf(next.env.cmk_policy_id, sizeof next.env.cmk_policy_id, "%s", arm_id);
            snprintf(next.env.cmk_location, sizeof next.env.cmk_location, "%s", pol.location);
            snprintf(next.env.cmk_version, sizeof next.env.cmk_version, "%s", to_u.version_out);
        } else {
            next.env.key_managed_by = PP_KEY_MICROSOFT;
            next.env.cmk_system_id[0] = next.env.cmk_policy_id[0] = '\0';
            next.env.cmk_location[0] = next.env.cmk_version[0] = '\0';
        }
        memcpy(next.wrapped, wrapped, wlen);
        next.wrapped_len = wlen;
        next.env.enabled = true;
        snprintf(next.env.reason, sizeof next.env.reason, "NotSpecified");
        next.env.lock_msg[0] = '\0';
        next.env.locked_since = 0;
    } else {
        next.env.enabled = q->prev_enabled;
        snprintf(next.env.reason, sizeof next.env.reason, "%s", q->prev_reason);
    }
    sqlite3 *db = emu_store_lock(p->store);
    bool stored = emu_store_begin(db) && envi_write(db, &next) &&
                  envi_op_update(db, q->op_id, ok ? "Succeeded" : "Failed", ok ? "" : msg) &&
                  emu_store_commit(db);
    if (!stored) {
        emu_store_rollback(db);
        /* the row still says "operation in progress": put the previous state back in memory
         * and try to record the failure on its own */
        envi_op_update(db, q->op_id, "Failed", "Failed: the emulator could not store the result");
    }
    emu_store_unlock(p->store);
    char detail[600];
    if (stored && ok) {
        r->env = next.env;
        memcpy(r->wrapped, wrapped, wlen);
        r->wrapped_len = wlen;
        r->dek = dek;
        r->restore_noted = false;
        if (q->link)
            snprintf(detail, sizeof detail,
                     "data key re-wrapped under key '%.64s' version %s of policy '%.100s' "
                     "(keyManagedBy Customer)",
                     pol.key_name, to_u.version_out, pol.name);
        else
            snprintf(detail, sizeof detail,
                     "data key re-wrapped under the Microsoft-managed platform key");
        if (!q->link && p->hooks.unlinked)
            p->hooks.unlinked(&r->env, &r->dek, p->hooks.ud);
    } else {
        r->env.op_id[0] = r->env.op_kind[0] = r->env.op_system_id[0] = '\0';
        r->env.enabled = q->prev_enabled;
        snprintf(r->env.reason, sizeof r->env.reason, "%s", q->prev_reason);
        if (!r->env.enabled)
            pp_dek_wipe(&r->dek);
        snprintf(detail, sizeof detail, "%s", stored ? msg : "the result could not be stored");
    }
    envi_audit(p, kind, r->env.id, stored && ok ? "Succeeded" : "Failed", q->caller_oid,
               q->caller_appid, q->caller_name, detail);
    emu_log(stored && ok ? EMU_LOG_INFO : EMU_LOG_WARN, "pp-env", "environment %s: %s%s%s",
            r->env.id, stored && ok ? kind : "", stored && ok ? " succeeded: " : "", detail);
    OPENSSL_cleanse(&next, sizeof next);
    OPENSSL_cleanse(wrapped, sizeof wrapped);
    if (!(stored && ok))
        pp_dek_wipe(&dek);
    else
        OPENSSL_cleanse(&dek, sizeof dek);
    if (stored && ok && q->link)
        pp_policy_set_health(p->cmk.policies, pol.system_id, PP_HEALTH_HEALTHY);
    free(arm_id);
}

/* Marks an operation Running (pp lock held). */
static void op_running_inlock(pp_envs_t *p, envi_op *q)
{
    sqlite3 *db = emu_store_lock(p->store);
    envi_op_update(db, q->op_id, "Running", "");
    emu_store_unlock(p->store);
}

static void *runner_main(void *arg)
{
    pp_envs_t *p = arg;
    pthread_mutex_lock(&p->lock);
    while (!p->runner_stop) {
        envi_op *q = p->qhead;
        if (!q) {
            pthread_cond_wait(&p->cv, &p->lock);
            continue;
        }
        sleep_ms(p, p->op_ms / 2);
        if (p->runner_stop)
            break;
        op_running_inlock(p, q);
        sleep_ms(p, p->op_ms - p->op_ms / 2);
        if (p->runner_stop)
            break;
        op_execute_inlock(p, q);
        p->qhead = q->next;
        if (!p->qhead)
            p->qtail = NULL;
        OPENSSL_cleanse(q, sizeof *q);
        free(q);
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

bool pp_envs_start_runner(pp_envs_t *p, unsigned op_ms)
{
    pthread_mutex_lock(&p->lock);
    p->op_ms = op_ms;
    bool ok = p->runner_on || pthread_create(&p->runner, NULL, runner_main, p) == 0;
    if (ok)
        p->runner_on = true;
    pthread_mutex_unlock(&p->lock);
    return ok;
}

void envi_runner_stop(pp_envs_t *p)
{
    pthread_mutex_lock(&p->lock);
    bool on = p->runner_on;
    p->runner_stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->lock);
    if (on)
        pthread_join(p->runner, NULL);
    /* queued operations stay NotStarted/Running in the store: the next start fails them */
    for (envi_op *q = p->qhead, *n; q; q = n) {
        n = q->next;
        free(q);
    }
    p->qhead = p->qtail = NULL;
    p->runner_on = false;
}

void envi_ops_recover_inlock(pp_envs_t *p)
{
    sqlite3 *db = emu_store_lock(p->store);
    sqlite3_exec(db,
                 "UPDATE pp_env_operations SET state='Failed', error='The emulator stopped while "
                 "the operation ran; the environment stays on its previous key. Run it again.' "
                 "WHERE state IN ('NotStarted','Running')",
                 NULL, NULL, NULL);
    for (size_t i = 0; i < p->nrecs; i++) {
        env_rec *r = p->recs[i];
        if (strcmp(r->env.reason, PP_REASON_CMK_OPERATION))
            continue;
        r->env.enabled = true; /* the lock watch re-locks it if its key is out of reach */
        snprintf(r->env.reason, sizeof r->env.reason, "NotSpecified");
        if (!envi_write(db, r))
            emu_log(EMU_LOG_ERROR, "pp-env", "environment %s: cannot store its state", r->env.id);
    }
    emu_store_unlock(p->store);
}

/* Common start of link and unlink (pp lock held, r found and validated): records the
 * NotStarted operation, disables the environment, queues or runs it. */
static pp_env_status op_start_inlock(pp_envs_t *p, env_rec *r, bool link, const char *system_id,
                                     const auth_principal *caller, pp_env_operation *op,
                                     pp_env_err *e)
{
    envi_op *q = emu_xcalloc(1, sizeof *q);
    emu_guid(q->op_id);
    snprintf(q->env, sizeof q->env, "%s", r->env.id);
    q->link = link;
    snprintf(q->system_id, sizeof q->system_id, "%s", link ? system_id : "");
    q->prev_enabled = r->env.enabled;
    snprintf(q->prev_reason, sizeof q->prev_reason, "%s", r->env.reason);
    if (caller) {
        snprintf(q->caller_oid, sizeof q->caller_oid, "%s", caller->oid);
        snprintf(q->caller_appid, sizeof q->caller_appid, "%s", caller->appid);
        snprintf(q->caller_name, sizeof q->caller_name, "%s", caller->name);
    }
    const char *kind = link ? "Link" : "Unlink";
    int64_t now = emu_clock_now();
    env_rec next = *r;
    next.env.enabled = false;
    snprintf(next.env.reason, sizeof next.env.reason, PP_REASON_CMK_OPERATION);
    sqlite3 *db = emu_store_lock(p->store);
    bool stored = emu_store_begin(db) && envi_write(db, &next) &&
                  envi_op_insert(db, q->op_id, r->env.id, kind, "NotStarted", "", now) &&
                  emu_store_commit(db);
    if (!stored)
        emu_store_rollback(db);
    emu_store_unlock(p->store);
    OPENSSL_cleanse(&next, sizeof next);
    if (!stored) {
        free(q);
        snprintf(e->msg, sizeof e->msg, "cannot store the operation");
        return PP_ENV_ERR_STORE;
    }
    r->env.enabled = false;
    snprintf(r->env.reason, sizeof r->env.reason, PP_REASON_CMK_OPERATION);
    snprintf(r->env.op_id, sizeof r->env.op_id, "%s", q->op_id);
    snprintf(r->env.op_kind, sizeof r->env.op_kind, "%s", kind);
    snprintf(r->env.op_system_id, sizeof r->env.op_system_id, "%s", q->system_id);
    envi_audit(p, kind, r->env.id, "Started", q->caller_oid, q->caller_appid, q->caller_name,
               link ? system_id : "back to the Microsoft-managed key");
    envi_op_fill(op, q->op_id, r->env.id, kind, now);
    if (p->runner_on) {
        if (op)
            snprintf(op->state, sizeof op->state, "NotStarted");
        if (p->qtail)
            p->qtail->next = q;
        else
            p->qhead = q;
        p->qtail = q;
        pthread_cond_broadcast(&p->cv);
        return PP_ENV_OK;
    }
    op_execute_inlock(p, q);
    free(q);
    if (op) { /* pp_env_operation_get takes only the store lock (after ours: lock order) */
        pp_env_operation done;
        if (pp_env_operation_get(p, op->id, &done) == PP_ENV_OK)
            *op = done;
    }
    return PP_ENV_OK;
}

pp_env_status pp_env_link(pp_envs_t *p, const char *id, const char *system_id,
                          const auth_principal *caller, pp_env_operation *op, pp_env_err *e)
{
    pp_policy pol;
    char *arm_id = NULL;
    pp_env_status rs = policy_for(p, system_id, caller, &pol, &arm_id, e);
    if (rs != PP_ENV_OK)
        return rs;
    free(arm_id);
    const char *v = vault_of(&pol);
    char vault[64];
    snprintf(vault, sizeof vault, "%s", v ? v : "");
    kv_err ke = {{0}};
    pthread_mutex_lock(&p->lock);
    env_rec *r = envi_find_idle(p, id, &rs, e);
    if (!r) {
        /* rs and e say why */
    } else if (strcasecmp(r->env.location, pol.location)) {
        snprintf(e->msg, sizeof e->msg,
                 "The environment is in region '%s' but the enterprise policy '%.100s' is in "
                 "'%s'; an environment can only be linked to a policy of its own region.",
                 r->env.location, pol.name, pol.location);
        rs = PP_ENV_ERR_BAD_PARAM;
    } else if (!r->env.managed) {
        snprintf(e->msg, sizeof e->msg,
                 "Environment '%s' is not a Managed Environment (governanceConfiguration."
                 "protectionLevel is Basic); enable Managed Environments first.",
                 r->env.id);
        rs = PP_ENV_ERR_BAD_PARAM;
    } else if (r->env.sku == PP_SKU_TRIAL || r->env.sku == PP_SKU_TEAMS) {
        snprintf(e->msg, sizeof e->msg,
                 "Environment '%s' is of type %s; customer-managed keys are not supported for "
                 "Trial and Teams environments.",
                 r->env.id, pp_env_sku_str(r->env.sku));
        rs = PP_ENV_ERR_BAD_PARAM;
    } else if (r->env.key_managed_by == PP_KEY_CUSTOMER &&
               !strcasecmp(r->env.cmk_system_id, pol.system_id)) {
        snprintf(e->msg, sizeof e->msg,
                 "Environment '%s' is already linked to enterprise policy '%.100s'.", r->env.id,
                 pol.name);
        rs = PP_ENV_ERR_BAD_PARAM;
    } else if (!pol.encryption_enabled) {
        snprintf(e->msg, sizeof e->msg,
                 "Enterprise policy '%.100s' has encryption state Disabled; enable it first.",
                 pol.name);
        rs = PP_ENV_ERR_BAD_PARAM;
    } else if (kv_vault_cmk_check(p->cmk.kv, vault, &ke) != KV_OK) {
        snprintf(e->msg, sizeof e->msg, "%.500s", ke.msg);
        rs = PP_ENV_ERR_BAD_PARAM;
    } else if (kv_key_cmk_check(p->cmk.kv, vault, pol.key_name, pol.key_version, NULL, &ke) !=
               KV_OK) {
        snprintf(e->msg, sizeof e->msg, "The key of enterprise policy '%.80s' cannot be used: "
                 "%.380s", pol.name, ke.msg);
        rs = PP_ENV_ERR_BAD_PARAM;
    } else {
        rs = op_start_inlock(p, r, true, pol.system_id, caller, op, e);
    }
    pthread_mutex_unlock(&p->lock);
    return rs;
}

pp_env_status pp_env_unlink(pp_envs_t *p, const char *id, const char *system_id,
                            const auth_principal *caller, pp_env_operation *op, pp_env_err *e)
{
    pp_environment cur;
    if (pp_env_get(p, id, &cur) != PP_ENV_OK) {
        envi_not_found(e, id);
        return PP_ENV_ERR_NOT_FOUND;
    }
    if (cur.key_managed_by != PP_KEY_CUSTOMER) {
        snprintf(e->msg, sizeof e->msg,
                 "Environment '%s' is not linked to an Encryption enterprise policy.", id);
        return PP_ENV_ERR_BAD_PARAM;
    }
    if (system_id && *system_id && strcasecmp(system_id, cur.cmk_system_id)) {
        snprintf(e->msg, sizeof e->msg,
                 "Environment '%s' is linked to '%.160s', not to '%.160s'.", id,
                 cur.cmk_system_id, system_id);
        return PP_ENV_ERR_BAD_PARAM;
    }
    pp_policy pol;
    char *arm_id = NULL;
    pp_env_status rs = policy_for(p, cur.cmk_system_id, caller, &pol, &arm_id, e);
    free(arm_id);
    if (rs == PP_ENV_ERR_FORBIDDEN)
        return rs;
    pthread_mutex_lock(&p->lock);
    env_rec *r = envi_find_idle(p, id, &rs, e);
    if (r)
        rs = op_start_inlock(p, r, false, NULL, caller, op, e);
    pthread_mutex_unlock(&p->lock);
    return rs;
}

typedef struct {
    char id[40];
    char system_id[160];
    char version[40];
    uint8_t wrapped[PP_WRAPPED_MAX];
    size_t wrapped_len;
} recheck_item;
static bool probe(pp_envs_t *p, const recheck_item *it, pp_policy *pol, pp_dek *dek,
                  char *why, size_t whylen, char *latest, size_t latestlen, bool *transient);

pp_env_status pp_env_reenable(pp_envs_t *p, const char *id, const auth_principal *caller,
                              pp_env_err *e)
{
    pp_environment cur;
    if (pp_env_get(p, id, &cur) != PP_ENV_OK) {
        envi_not_found(e, id);
        return PP_ENV_ERR_NOT_FOUND;
    }
    if (cur.key_managed_by == PP_KEY_CUSTOMER && cur.cmk_system_id[0]) {
        pp_policy pol;
        char *arm_id = NULL;
        pp_env_status rs = policy_for(p, cur.cmk_system_id, caller, &pol, &arm_id, e);
        free(arm_id);
        if (rs == PP_ENV_ERR_FORBIDDEN) {
            envi_audit(p, "Reenable", id, "Failed", caller ? caller->oid : NULL,
                       caller ? caller->appid : NULL, caller ? caller->name : NULL, e->msg);
            return rs;
        }
    }
    bool was_locked = !strcmp(cur.reason, PP_REASON_CMK_LOCKED);
    pp_env_status rs = PP_ENV_OK;
    if (cur.key_managed_by == PP_KEY_CUSTOMER && cur.cmk_system_id[0] && !cur.op_id[0]) {
        /* the same check as the lock watch: every permission, the key's state, the unwrap */
        recheck_item it;
        memset(&it, 0, sizeof it);
        snprintf(it.id, sizeof it.id, "%s", cur.id);
        snprintf(it.system_id, sizeof it.system_id, "%s", cur.cmk_system_id);
        snprintf(it.version, sizeof it.version, "%s", cur.cmk_version);
        pthread_mutex_lock(&p->lock);
        env_rec *r = envi_find(p, id);
        if (r) {
            memcpy(it.wrapped, r->wrapped, r->wrapped_len);
            it.wrapped_len = r->wrapped_len;
        }
        pthread_mutex_unlock(&p->lock);
        pp_policy pol;
        memset(&pol, 0, sizeof pol);
        pp_dek dek = {0};
        char why[400] = "", latest[40] = "";
        bool transient = false;
        bool ok = probe(p, &it, &pol, &dek, why, sizeof why, latest, sizeof latest, &transient);
        pp_dek_wipe(&dek);
        OPENSSL_cleanse(&it, sizeof it);
        if (!ok) {
            if (was_locked)
                snprintf(e->msg, sizeof e->msg,
                         "Environment '%s' cannot be enabled while its customer-managed key is "
                         "not usable: %.300s",
                         id, why);
            else
                snprintf(e->msg, sizeof e->msg,
                         "Environment '%s' cannot be enabled: its customer-managed key is not "
                         "usable: %.300s",
                         id, why);
            rs = PP_ENV_ERR_LOCKED;
        }
    }
    if (rs == PP_ENV_OK)
        rs = pp_env_set_enabled(p, id, true, NULL, e);
    if (was_locked || rs != PP_ENV_OK)
        envi_audit(p, "Reenable", id, rs == PP_ENV_OK ? "Succeeded" : "Failed",
                   caller ? caller->oid : NULL, caller ? caller->appid : NULL,
                   caller ? caller->name : NULL,
                   rs == PP_ENV_OK ? "the customer-managed key is usable again; data readable"
                                   : e->msg);
    return rs;
}

/* ---- the lock watch ---------------------------------------------------------------------- */

/* Why a probe failed, in words for the lock message and the audit: the purge case says the
 * data is gone for good. */
static void lock_cause(pp_envs_t *p, const char *vault, const pp_policy *pol,
                       const char *version, kv_status st, const char *kvmsg, char *out,
                       size_t outlen)
{
    if (st == KV_ERR_KEY_NOT_FOUND) {
        kv_key_view dv;
        memset(&dv, 0, sizeof dv);
        kv_err de = {{0}};
        if (kv_deleted_get(p->cmk.kv, vault, pol->key_name, &dv, &de) == KV_OK) {
            char t[40] = "";
            emu_time_rfc3339(dv.scheduled_purge, t, sizeof t);
            snprintf(out, outlen,
                     "key '%.64s' in vault '%.64s' is deleted (recoverable until %s; recover it "
                     "to restore access)",
                     pol->key_name, vault, t);
            kv_key_view_cleanup(&dv);
            return;
        }
        /* Key Vault never drops a single version: a wrapping version that is neither live
         * nor soft-deleted was purged with its key */
        kv_key_view lv;
        memset(&lv, 0, sizeof lv);
        bool newer = kv_key_get(p->cmk.kv, vault, pol->key_name, "", &lv, &de) == KV_OK;
        kv_key_view_cleanup(&lv);
        snprintf(out, outlen,
                 "the data is permanently unrecoverable: key '%.64s' version %.32s was purged "
                 "from vault '%.64s', so the data key can never be unwrapped again%s",
                 pol->key_name, version, vault,
                 newer ? " (a key of that name exists now, but it is a different key)" : "");
        return;
    }
    if (st == KV_ERR_VAULT_NOT_FOUND) {
        snprintf(out, outlen, "key vault '%.64s' is deleted", vault);
        return;
    }
    snprintf(out, outlen, "%s: %.300s", kv_status_str(st), kvmsg);
}

/* Checks one linked environment's key as the policy identity; ok -> *dek holds the data key.
 * On failure *transient says the check could not tell (HSM or store fault), which is no
 * revocation. */
static bool probe(pp_envs_t *p, const recheck_item *it, pp_policy *pol, pp_dek *dek,
                  char *why, size_t whylen, char *latest, size_t latestlen, bool *transient)
{
    auth_principal who;
    char vault[64];
    *transient = false;
    __atomic_fetch_add(&p->probes, 1, __ATOMIC_RELAXED);
    if (!cmk_resolve(p, it->system_id, pol, &who, vault, sizeof vault, why, whylen))
        return false;
    kv_err ke = {{0}};
    kv_status st = kv_key_cmk_probe_as(p->cmk.kv, &who, vault, pol->key_name, it->version, NULL,
                                       &ke);
    if (st != KV_OK) {
        *transient = kv_status_transient(st);
        lock_cause(p, vault, pol, it->version, st, ke.msg, why, whylen);
        return false;
    }
    cmk_ud u;
    pp_key_wrapper w = cmk_wrapper(&u, p, it->system_id, it->version);
    char e2[400] = "";
    if (pp_dek_unwrap(&w, it->wrapped, it->wrapped_len, dek, e2, sizeof e2) != PP_ENVELOPE_OK) {
        *transient = u.transient;
        snprintf(why, whylen, "%s", e2);
        return false;
    }
    latest[0] = '\0';
    if (!pol->key_version[0]) { /* the policy follows the key's current version */
        kv_key_view lv;
        memset(&lv, 0, sizeof lv);
        if (kv_key_cmk_probe_as(p->cmk.kv, &who, vault, pol->key_name, "", &lv, &ke) == KV_OK) {
            snprintf(latest, latestlen, "%s", lv.version);
            kv_key_view_cleanup(&lv);
        }
    }
    return true;
}

/* Rotation: re-wraps r's data key under the key's current version (pp lock held). */
static void follow_rotation_inlock(pp_envs_t *p, env_rec *r, const pp_dek *dek,
                                   const char *latest)
{
    cmk_ud u;
    pp_key_wrapper to = cmk_wrapper(&u, p, r->env.cmk_system_id, latest);
    uint8_t wrapped[PP_WRAPPED_MAX];
    size_t n = sizeof wrapped;
    char err[400] = "";
    if (!to.wrap(to.ud, dek->bytes, PP_DEK_LEN, wrapped, &n, err, sizeof err)) {
        emu_log(EMU_LOG_WARN, "pp-env", "environment %s: rotation to version %s failed: %s",
                r->env.id, latest, err);
        return;
    }
    env_rec next = *r;
    memcpy(next.wrapped, wrapped, n);
    next.wrapped_len = n;
    char old[40];
    snprintf(old, sizeof old, "%s", r->env.cmk_version);
    snprintf(next.env.cmk_version, sizeof next.env.cmk_version, "%s", u.version_out);
    sqlite3 *db = emu_store_lock(p->store);
    bool stored = envi_write(db, &next);
    emu_store_unlock(p->store);
    if (stored) {
        memcpy(r->wrapped, wrapped, n);
        r->wrapped_len = n;
        snprintf(r->env.cmk_version, sizeof r->env.cmk_version, "%s", u.version_out);
        char detail[200];
        snprintf(detail, sizeof detail,
                 "data key re-wrapped under the key's new current version %s (was %s); no "
                 "downtime",
                 u.version_out, old);
        envi_audit(p, "Rotate", r->env.id, "Succeeded", NULL, NULL, NULL, detail);
        emu_log(EMU_LOG_INFO, "pp-env", "environment %s: %s", r->env.id, detail);
    }
    OPENSSL_cleanse(&next, sizeof next);
    OPENSSL_cleanse(wrapped, sizeof wrapped);
}

static void lock_message(const env_rec *r, const char *why, char *out, size_t outlen)
{
    snprintf(out, outlen,
             "Environment '%s' is locked: its customer-managed key is not usable (%.400s). "
             "Restore the access, then an admin re-enables the environment.",
             r->env.id, why);
}

/* Locks r (or, when it is locked already for another cause, records the new cause: a key
 * deleted and then purged becomes unrecoverable). pp lock held. */
static void lock_inlock(pp_envs_t *p, env_rec *r, const char *why)
{
    bool already = !strcmp(r->env.reason, PP_REASON_CMK_LOCKED);
    env_rec next = *r;
    lock_message(r, why, next.env.lock_msg, sizeof next.env.lock_msg);
    if (already && !strcmp(next.env.lock_msg, r->env.lock_msg)) {
        OPENSSL_cleanse(&next, sizeof next);
        return;
    }
    next.env.enabled = false;
    snprintf(next.env.reason, sizeof next.env.reason, PP_REASON_CMK_LOCKED);
    if (!already || !next.env.locked_since)
        next.env.locked_since = emu_clock_now();
    sqlite3 *db = emu_store_lock(p->store);
    bool stored = envi_write(db, &next);
    emu_store_unlock(p->store);
    if (stored) {
        r->env = next.env;
        r->restore_noted = false;
        pp_dek_wipe(&r->dek);
        char detail[500];
        snprintf(detail, sizeof detail, "%s: %.300s; deleted after %d days unless restored",
                 already ? "still locked, new cause" : "locked", why,
                 (int)(pp_env_lock_expiry(&r->env) / 86400));
        envi_audit(p, "Lock", r->env.id, "Locked", NULL, NULL, NULL, detail);
        if (!already && p->hooks.locked)
            p->hooks.locked(&r->env, p->hooks.ud);
        emu_log(EMU_LOG_WARN, "pp-env", "environment %s %s: %s", r->env.id,
                already ? "still locked, new cause" : "locked", why);
    }
    OPENSSL_cleanse(&next, sizeof next);
}

/* vault_filter / key_filter NULL = any. */
static void recheck(pp_envs_t *p, const char *vault_filter, const char *key_filter)
{
    if (!p->has_cmk)
        return;
    pthread_mutex_lock(&p->lock);
    size_t n = 0;
    recheck_item *items = p->nrecs ? emu_xcalloc(p->nrecs, sizeof *items) : NULL;
    for (size_t i = 0; i < p->nrecs; i++) {
        env_rec *r = p->recs[i];
        if (r->env.key_managed_by != PP_KEY_CUSTOMER || r->env.op_id[0])
            continue;
        if (vault_filter) { /* a Key Vault change: only environments on that vault/key */
            pp_policy pol;
            const char *v;
            if (pp_policy_get_by_system_id(p->cmk.policies, r->env.cmk_system_id, &pol) !=
                    PP_OK ||
                !(v = vault_of(&pol)) || strcasecmp(v, vault_filter) ||
                (key_filter && strcasecmp(pol.key_name, key_filter)))
                continue;
        }
        recheck_item *it = &items[n++];
        snprintf(it->id, sizeof it->id, "%s", r->env.id);
        snprintf(it->system_id, sizeof it->system_id, "%s", r->env.cmk_system_id);
        snprintf(it->version, sizeof it->version, "%s", r->env.cmk_version);
        memcpy(it->wrapped, r->wrapped, r->wrapped_len);
        it->wrapped_len = r->wrapped_len;
    }
    pthread_mutex_unlock(&p->lock);
    for (size_t i = 0; i < n; i++) {
        recheck_item *it = &items[i];
        pp_policy pol;
        memset(&pol, 0, sizeof pol);
        pp_dek dek = {0};
        char why[400] = "", latest[40] = "";
        bool transient = false;
        bool ok = probe(p, it, &pol, &dek, why, sizeof why, latest, sizeof latest, &transient);
        if (!ok && transient) {
            /* an HSM or store fault says nothing about the key: no lock, no health change;
             * the next re-check probes again */
            char detail[500];
            snprintf(detail, sizeof detail,
                     "key check deferred, environment left as it is: %.400s", why);
            envi_audit(p, "LockWatch", it->id, "Deferred", NULL, NULL, NULL, detail);
            emu_log(EMU_LOG_WARN, "pp-env", "environment %s: %s", it->id, detail);
            pp_dek_wipe(&dek);
            continue;
        }
        if (pol.system_id[0]) {
            pp_health h = ok ? PP_HEALTH_HEALTHY : PP_HEALTH_UNHEALTHY;
            if (pol.health != h)
                pp_policy_set_health(p->cmk.policies, it->system_id, h);
        }
        pthread_mutex_lock(&p->lock);
        env_rec *r = envi_find(p, it->id);
        bool same = r && r->env.key_managed_by == PP_KEY_CUSTOMER && !r->env.op_id[0] &&
                    !strcasecmp(r->env.cmk_system_id, it->system_id) &&
                    !strcmp(r->env.cmk_version, it->version);
        if (same && !ok) {
            lock_inlock(p, r, why);
        } else if (same && ok) {
            bool locked = !strcmp(r->env.reason, PP_REASON_CMK_LOCKED);
            if (latest[0] && strcmp(latest, r->env.cmk_version))
                follow_rotation_inlock(p, r, &dek, latest);
            if (locked && p->auto_reenable) {
                pthread_mutex_unlock(&p->lock);
                pp_env_err e = {{0}};
                pp_env_status rs = pp_env_set_enabled(p, it->id, true, NULL, &e);
                envi_audit(p, "Reenable", it->id, rs == PP_ENV_OK ? "Succeeded" : "Failed", NULL,
                           NULL, "auto re-enable",
                           rs == PP_ENV_OK ? "access to the customer-managed key restored; "
                                             "re-enabled automatically (--auto-reenable)"
                                           : e.msg);
                pthread_mutex_lock(&p->lock);
            } else if (locked && !r->restore_noted) {
                r->restore_noted = true;
                envi_audit(p, "Unlock", it->id, "AccessRestored", NULL, NULL, NULL,
                           "the policy identity can use the original key again; the policy is "
                           "Healthy; the environment stays disabled until an admin with Reader "
                           "on the policy re-enables it");
            }
        }
        pthread_mutex_unlock(&p->lock);
        pp_dek_wipe(&dek);
    }
    if (items)
        OPENSSL_cleanse(items, n * sizeof *items);
    free(items);
}

unsigned long pp_envs_probe_count(pp_envs_t *p)
{
    return __atomic_load_n(&p->probes, __ATOMIC_RELAXED);
}

void pp_envs_recheck(pp_envs_t *p)
{
    recheck(p, NULL, NULL);
}

void pp_envs_recheck_key(pp_envs_t *p, const char *vault, const char *key)
{
    recheck(p, vault, key);
}

size_t pp_envs_expire_locks(pp_envs_t *p, int64_t now)
{
    pthread_mutex_lock(&p->lock);
    size_t n = 0;
    char (*ids)[40] = NULL;
    int *days = NULL;
    for (size_t i = 0; i < p->nrecs; i++) {
        const pp_environment *e = &p->recs[i]->env;
        if (strcmp(e->reason, PP_REASON_CMK_LOCKED) || !e->locked_since ||
            now - e->locked_since < pp_env_lock_expiry(e))
            continue;
        ids = emu_xrealloc(ids, (n + 1) * sizeof *ids);
        days = emu_xrealloc(days, (n + 1) * sizeof *days);
        snprintf(ids[n], sizeof ids[n], "%s", e->id);
        days[n++] = (int)(pp_env_lock_expiry(e) / 86400);
    }
    pthread_mutex_unlock(&p->lock);
    size_t done = 0;
    for (size_t i = 0; i < n; i++) {
        char cause[200];
        snprintf(cause, sizeof cause,
                 "locked for more than %d days without the customer-managed key being restored: "
                 "the environment and its data are deleted",
                 days[i]);
        pp_env_err e = {{0}};
        if (envi_delete(p, ids[i], NULL, &e, cause, NULL) == PP_ENV_OK)
            done++;
    }
    free(ids);
    free(days);
    return done;
}
