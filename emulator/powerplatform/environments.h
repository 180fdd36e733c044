/*
 * environments: Power Platform environments and their Dataverse-style records, the domain
 * side. No HTTP types: bap_api.c translates.
 *
 * Encryption: every environment has a data key (envelope.h) stored only wrapped. Now every
 * environment's key is managed by Microsoft (wrapped under the platform key); the next slice
 * links environments to a customer key (key_managed_by Customer, the data key re-wrapped
 * through Key Vault) and locks them when that key is out of reach. The unwrapped data key is
 * in memory only while the environment is enabled; disabling wipes it.
 * Records: sealed JSON rows in SQLite (pp_records), AAD "{env}/{table}/{id}"; never plaintext
 * on disk.
 *
 * State: environments in memory (loaded at open) and written through to SQLite (module
 * "pp_env"); the memory changes only after the commit. Locking: one mutex over the domain,
 * held for a whole record operation (so a disable cannot race a read). Lock order: pp_env
 * lock, then the store lock.
 */
#ifndef CMKEMU_PP_ENVIRONMENTS_H
#define CMKEMU_PP_ENVIRONMENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "audit.h"
#include "auth/roles.h"
#include "envelope.h"
#include "hsm.h"
#include "jflat.h"
#include "keyvault/kv.h"
#include "policies.h"
#include "store.h"

typedef enum {
    PP_ENV_OK = 0,
    PP_ENV_ERR_BAD_PARAM, /* 400 */
    PP_ENV_ERR_NOT_FOUND, /* 404 environment (or record) not found */
    PP_ENV_ERR_CONFLICT,  /* 412 record id already in use */
    PP_ENV_ERR_DISABLED,  /* 423 EnvironmentDisabled */
    PP_ENV_ERR_CRYPTO,    /* 500 the data key or a record cannot be opened */
    PP_ENV_ERR_STORE,     /* 500 */
    PP_ENV_ERR_FORBIDDEN, /* 403 caller lacks Reader on the policy */
    PP_ENV_ERR_LOCKED,    /* 423 EnvironmentLocked: the customer key is out of reach */
    PP_ENV_ERR_BUSY,      /* 409 an operation (link/unlink) is in progress */
} pp_env_status;

const char *pp_env_status_str(pp_env_status st);

typedef struct {
    char msg[768];
} pp_env_err;

typedef enum {
    PP_SKU_PRODUCTION = 0,
    PP_SKU_SANDBOX,
    PP_SKU_TRIAL,
    PP_SKU_TEAMS,
    PP_SKU_DEVELOPER
} pp_env_sku;
const char *pp_env_sku_str(pp_env_sku s);
bool pp_env_sku_parse(const char *s, pp_env_sku *out); /* case-insensitive */

typedef enum { PP_KEY_MICROSOFT = 0, PP_KEY_CUSTOMER } pp_key_managed_by;
const char *pp_key_managed_by_str(pp_key_managed_by k);

/* A copy of one environment. Plain data. */
typedef struct {
    char id[40];
    char display_name[128];
    char location[32];     /* Power Platform region, lowercase */
    char azure_region[32]; /* e.g. westus */
    pp_env_sku sku;
    bool managed; /* governanceConfiguration.protectionLevel Standard */
    pp_key_managed_by key_managed_by;
    bool enabled;    /* runtime state */
    char reason[48]; /* runtimeReasonCode ("NotSpecified" while enabled) */
    int64_t created;
    /* customer-managed key (key_managed_by Customer): the linked policy, "" = none */
    char cmk_system_id[160];
    char cmk_policy_id[512]; /* the policy's ARM id */
    char cmk_location[32];
    char cmk_version[40]; /* the key version that wraps the data key */
    char lock_msg[640];   /* why the environment is locked (reason CustomerManagedKeyLocked) */
    int64_t locked_since; /* emulated time the lock began, 0 = not locked */
    /* a link/unlink in flight (memory only; a restart fails it): "" = none */
    char op_id[37];
    char op_kind[8];        /* "Link" | "Unlink" */
    char op_system_id[160]; /* the policy being linked (Link) */
} pp_environment;

#define PP_REASON_CMK_LOCKED "CustomerManagedKeyLocked"
#define PP_REASON_CMK_OPERATION "CustomerManagedKeyOperationInProgress"
/* Lock expiry: a locked environment is deleted after this long (emulated time). */
#define PP_LOCK_EXPIRY_SANDBOX_SECONDS (7 * 86400)
#define PP_LOCK_EXPIRY_PRODUCTION_SECONDS (30 * 86400)
/* Seconds until a locked environment is deleted (sku rule), from locked_since. */
int64_t pp_env_lock_expiry(const pp_environment *e);

typedef struct {
    const char *id; /* NULL = new GUID (world files fix it) */
    const char *display_name, *location;
    const char *sku; /* as sent */
    bool managed;
} pp_env_spec;

typedef struct {
    char id[40];
    char env[40];
    char kind[16];  /* "Create" | "Delete" | "Link" | "Unlink" */
    char state[16]; /* "NotStarted" | "Running" | "Succeeded" | "Failed" */
    char error[256];
    int64_t created;
} pp_env_operation;

typedef struct pp_envs pp_envs_t;

/* Opens the tables, the platform key (created on first start) and loads every environment,
 * unwrapping the data keys of enabled ones. */
pp_envs_t *pp_envs_open(emu_store *store, hsm_t *hsm, char *err, size_t errlen);
void pp_envs_close(pp_envs_t *p); /* NULL is a no-op; wipes the data keys */

/* Validates and creates an environment (synchronously) and its Succeeded lifecycle
 * operation (op may be NULL). */
pp_env_status pp_env_create(pp_envs_t *p, const pp_env_spec *spec, pp_environment *out,
                            pp_env_operation *op, pp_env_err *e);
pp_env_status pp_env_get(pp_envs_t *p, const char *id, pp_environment *out);
/* *out malloc'd (NULL when none), ordered by creation; caller frees. Returns the count. */
size_t pp_env_list(pp_envs_t *p, pp_environment **out);
/* Deletes the environment and its records; the data key is wiped. op may be NULL. */
pp_env_status pp_env_delete(pp_envs_t *p, const char *id, pp_env_operation *op, pp_env_err *e);
/* Enables (unwraps the data key) or disables (wipes it) an environment. reason: the
 * runtimeReasonCode when disabling (NULL = "AdminDisabled"). */
pp_env_status pp_env_set_enabled(pp_envs_t *p, const char *id, bool enabled, const char *reason,
                                 pp_env_err *e);
pp_env_status pp_env_operation_get(pp_envs_t *p, const char *op_id, pp_env_operation *out);

/* ---- customer-managed keys --------------------------------------------------------------- */

/* What link/unlink and the lock watch use. All must outlive p. Set once at start-up. */
typedef struct {
    kv_t *kv;
    pp_policies_t *policies;
    roles_t *roles; /* NULL: the Reader check is skipped */
    auth_t *auth;
} pp_cmk_deps;
/* Wires the deps, the policies' link check/count, and the lock watch (kv change hook, role
 * assignment change hook, clock hook). Call emu_clock_hooks_clear() before pp_envs_close. */
void pp_envs_set_cmk(pp_envs_t *p, const pp_cmk_deps *d);

/* Link an environment to an Encryption policy (by systemId). Immediate refusals:
 * PP_ENV_ERR_BAD_PARAM (unknown policy, region mismatch, not managed, Trial/Teams, vault
 * missing or without soft delete/purge protection, key missing, disabled, expired, not yet
 * valid, not RSA, under 2048 bits or without wrapKey/unwrapKey in key_ops),
 * PP_ENV_ERR_FORBIDDEN (caller lacks Reader on the policy; caller NULL or not from a token =
 * allowed), PP_ENV_ERR_NOT_FOUND, PP_ENV_ERR_BUSY (an operation is already in flight).
 * Otherwise PP_ENV_OK and *op. With the runner on (pp_envs_start_runner) the operation is
 * queued (NotStarted -> Running -> Succeeded|Failed, the environment disabled meanwhile) and
 * *op is its NotStarted state; without it the operation runs before the call returns. It ends
 * Succeeded (data key re-wrapped under the customer key through kv_key_crypt_as as the policy
 * identity, which must hold get/wrapKey/unwrapKey) or Failed (error says why; the environment
 * is back on its previous key and state). Linking to another policy swaps keys. */
pp_env_status pp_env_link(pp_envs_t *p, const char *id, const char *system_id,
                          const auth_principal *caller, pp_env_operation *op, pp_env_err *e);
/* Re-wraps under the platform key (Microsoft-managed). BAD_PARAM when not linked. */
pp_env_status pp_env_unlink(pp_envs_t *p, const char *id, const char *system_id,
                            const auth_principal *caller, pp_env_operation *op, pp_env_err *e);
/* The lock watch: every linked environment (not in an operation) checks its key as the policy
 * identity: get/wrapKey/unwrapKey granted, the wrapping version enabled and inside nbf/exp,
 * and the stored data key unwraps. Failure: policy Unhealthy, environment Disabled
 * (CustomerManagedKeyLocked, locked_since set), data key wiped, audited with the cause.
 * Success: policy Healthy; a locked environment stays disabled until re-enabled (audited once
 * as "access restored"), or is re-enabled at once with auto re-enable; a policy without a
 * key version follows the key's current version (the data key is re-wrapped, no downtime).
 * pp_envs_recheck_key limits the check to policies on that vault and (key non-NULL) that key,
 * which is what a Key Vault change can affect. Takes the pp_env lock only around reading and
 * writing the state; the key checks run without it. */
void pp_envs_recheck(pp_envs_t *p);
void pp_envs_recheck_key(pp_envs_t *p, const char *vault, const char *key);
/* How many key checks the lock watch and re-enable made (tests, metrics). */
unsigned long pp_envs_probe_count(pp_envs_t *p);
/* Deletes locked environments whose lock is older than the expiry (7 d sandbox and other
 * non-production SKUs, 30 d production) at emulated time now. Returns how many. */
size_t pp_envs_expire_locks(pp_envs_t *p, int64_t now);

/* Re-enable (or enable) an environment as caller: Reader on the linked policy required
 * (caller NULL or not from a token = allowed). PP_ENV_ERR_LOCKED while the key is still out of
 * reach; PP_ENV_ERR_BUSY during an operation. Audited. */
pp_env_status pp_env_reenable(pp_envs_t *p, const char *id, const auth_principal *caller,
                              pp_env_err *e);

/* Options: the audit sink (may be NULL), auto re-enable once access is restored (demos). */
void pp_envs_set_audit(pp_envs_t *p, emu_audit *audit);
void pp_envs_set_auto_reenable(pp_envs_t *p, bool on);
/* Starts the operation runner: link/unlink become asynchronous; each spends op_ms
 * milliseconds (half NotStarted, half Running) before it runs. Stopped by pp_envs_close. */
bool pp_envs_start_runner(pp_envs_t *p, unsigned op_ms);

bool pp_env_is_linked(pp_envs_t *p, const char *system_id);

/* ---- hooks for the components module (components.h) -------------------------------------- */

/* Called with the pp_env lock held: a hook may take its own lock (after ours) and the store
 * lock, and must not call back into pp_envs. Any member may be NULL. */
typedef struct {
    void (*deleted)(const char *env, void *ud);                  /* environment deleted */
    void (*locked)(const pp_environment *e, void *ud);           /* a new lock began */
    void (*unlinked)(const pp_environment *e, const pp_dek *dek, /* back on Microsoft */
                     void *ud);
    void *ud;
} pp_env_hooks;
void pp_envs_set_hooks(pp_envs_t *p, const pp_env_hooks *h);

/* Runs fn with the environment's data key, the pp_env lock held during fn, when the
 * environment's data is usable; otherwise the same refusal as its records (LOCKED with the
 * lock message, DISABLED, NOT_FOUND) and fn is not called. fn's status is returned. */
typedef pp_env_status (*pp_env_dek_fn)(const pp_environment *e, const pp_dek *dek, void *ud,
                                       pp_env_err *err);
pp_env_status pp_env_with_dek(pp_envs_t *p, const char *env, pp_env_dek_fn fn, void *ud,
                              pp_env_err *e);

/* ---- records ----------------------------------------------------------------------------- */

#define PP_RECORD_MAX (256 * 1024) /* serialized row */
#define PP_LIST_MAX 5000           /* largest page */

/* "accounts" -> "account", "opportunities" -> "opportunity"; false when not [a-z0-9_]{1,64}. */
bool pp_entity_singular(const char *set, char *out, size_t outlen);

/* One row as stored: compact JSON text of an object, "{...}" (malloc'd, NUL-terminated after
 * *len bytes; the caller cleanses and frees it). Not parsed: the read path sends it on as it
 * is. NOT_FOUND with Dataverse's message when absent. */
pp_env_status pp_record_get_text(pp_envs_t *p, const char *env, const char *set, const char *id,
                                 char **text, size_t *len, pp_env_err *e);
/* What a record write carries: a parsed object (json), or a flat body as text with its
 * members as emu_jflat_scan gave them (m[0..n), at most EMU_JFLAT_MAX): that one is merged
 * as text, no JSON tree, values kept as they were written (core/jflat.h). */
typedef struct {
    const json_t *json;
    const char *text;
    size_t len;
    const emu_jmember *m;
    size_t n;
} pp_record_body;

/* Creates a row in entity set `set`: the body's members in order, then "{singular}id" (the
 * body's GUID, lower-cased, or a new one), createdon and modifiedon. *stored (may be NULL)
 * receives the stored row's text, as pp_record_get_text gives it. */
pp_env_status pp_record_create(pp_envs_t *p, const char *env, const char *set,
                               const pp_record_body *b, char id_out[40], char **stored,
                               size_t *stored_len, pp_env_err *e);
/* Merges the body into the row (upsert unless must_exist); *created says which. *stored as
 * for pp_record_create. */
pp_env_status pp_record_update(pp_envs_t *p, const char *env, const char *set, const char *id,
                               const pp_record_body *b, bool must_exist, bool *created,
                               char **stored, size_t *stored_len, pp_env_err *e);
pp_env_status pp_record_delete(pp_envs_t *p, const char *env, const char *set, const char *id,
                               pp_env_err *e);
/* Rows after cursor `after` (0 = start), at most top. *rows: new array. *next: cursor for the
 * next page, 0 when this is the last. */
pp_env_status pp_record_list(pp_envs_t *p, const char *env, const char *set, int64_t after,
                             size_t top, json_t **rows, int64_t *next, pp_env_err *e);

/* World files: "environments": [{id?, displayName, location, environmentSku, managed?,
 * records: {"accounts": [{...}]}}]. */
bool pp_envs_world_apply(pp_envs_t *p, json_t *world, char *err, size_t errlen);

#endif
