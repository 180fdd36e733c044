/*
 * kv: the Key Vault domain: vaults and keys (versions, soft delete, purge protection,
 * rotation and rotation policies, backup/restore) over the store and the HSM. No HTTP
 * types: handlers in kv_api.c translate.
 *
 * State: everything is held in memory (loaded at open) and written through to SQLite in one
 * transaction per change; the change is applied in memory only after the commit succeeded.
 * Key material is only in the token: one key pair per version, addressed by CKA_ID.
 * Order of effects: the HSM object is created before its row is committed; on purge the row
 * goes first and the objects after. kv_open reconciles: token key pairs that no row refers
 * to are destroyed, rows whose object is missing are reported.
 *
 * Locking: one rwlock over the domain (readers: get, list, crypto lookups; writers: every
 * change). Slow HSM work (key generation, private-key operations) runs without the lock.
 * Lock order: kv lock, then the store lock.
 */
#ifndef CMKEMU_KV_H
#define CMKEMU_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "auth/principal.h"
#include "hsm.h"
#include "store.h"

typedef enum {
    KV_OK = 0,
    KV_ERR_BAD_PARAM,        /* 400 BadParameter */
    KV_ERR_VAULT_NOT_FOUND,  /* 404 VaultNotFound */
    KV_ERR_KEY_NOT_FOUND,    /* 404 KeyNotFound */
    KV_ERR_DELETED_CONFLICT, /* 409 ObjectIsDeletedButRecoverable */
    KV_ERR_CONFLICT,         /* 409 Conflict (name in use) */
    KV_ERR_PURGE_PROTECTED,  /* 403 Forbidden: purge under purge protection */
    KV_ERR_DISABLED,         /* 403 Forbidden / KeyDisabled */
    KV_ERR_EXPIRED,          /* 403 Forbidden / KeyExpired */
    KV_ERR_NOT_YET_VALID,    /* 403 Forbidden / KeyNotYetValid */
    KV_ERR_OP_NOT_ALLOWED,   /* 403 Forbidden / KeyOperationNotAllowed */
    KV_ERR_FORBIDDEN,        /* 403 access policy / RBAC (auth layer) */
    KV_ERR_HSM,              /* 500 HSM failure */
    KV_ERR_STORE,            /* 500 store failure */
    KV_ERR_VAULT_EXISTS,     /* 409 vault name in use */
    KV_ERR_FORBIDDEN_RBAC,   /* 403 Forbidden / ForbiddenByRbac (RBAC vault) */
    KV_ERR_HSM_UNAVAILABLE,  /* 503 ServiceUnavailable / HsmUnavailable: transient HSM fault,
                                nothing changed, retry later */
} kv_status;

const char *kv_status_str(kv_status st);

/* Error detail for the client (never contains key bytes). */
typedef struct {
    char msg[1024];
} kv_err;

typedef struct kv kv_t;

kv_t *kv_open(emu_store *store, hsm_t *hsm, char *err, size_t errlen);
/* Closes the domain. The clock hook registered by kv_open stays registered: call
 * emu_clock_hooks_clear() before kv_close (main and the tests do). */
void kv_close(kv_t *kv);

/* What kv_open's reconciliation found: token key pairs no row referred to (destroyed) and
 * key versions whose key pair is missing (reported; never expected). */
void kv_reconciled(const kv_t *kv, size_t *orphans, size_t *missing);

/* Offline check (cmkemu fsck) of the sealed versions: hands each blob to hsm and counts
 * *bad (malformed, or its public key not its row's) and *stray (blob rows no version refers
 * to). false if the rows cannot be read. */
bool kv_store_sealed_check(emu_store *store, hsm_t *hsm, size_t *bad, size_t *stray);

/* Offline check (cmkemu fsck): calls fn with the token id of every key version row in the
 * store whose key is a token object (not sealed), without loading the domain; *nsealed
 * (may be NULL) gets the number of sealed versions. The caller must have opened store only
 * (the server is not running). false if the rows cannot be read (no key vault schema yet).
 * fn must not call into the store. */
bool kv_store_hsm_ids(emu_store *store, size_t *nsealed,
                      void (*fn)(const uint8_t id[HSM_ID_LEN], void *ud), void *ud);
hsm_t *kv_hsm(kv_t *kv);

/* ---- vaults ---------------------------------------------------------------------------- */

typedef struct {
    char name[64];   /* 3-24 chars [0-9a-zA-Z-], stored lowercase */
    bool is_default; /* answers on localhost / 127.0.0.1 / [::1] */
    bool soft_delete;
    int retention_days; /* 7..90 */
    bool purge_protection;
    bool rbac; /* enableRbacAuthorization */
    char tenant[40];
    int64_t created;
    /* ARM side (schema 2). Empty strings get the defaults below at creation. */
    char subscription[40];
    char resource_group[96];
    char location[40];
    char sku[16];                   /* "standard" | "premium" */
    char public_network_access[16]; /* "Enabled" | "Disabled" */
    int64_t updated;
    char created_by[128], created_by_type[24]; /* ARM systemData; "" = unknown */
    char modified_by[128], modified_by_type[24];
    bool deleted; /* soft-deleted vault: invisible to the data plane */
    int64_t deletion_date, scheduled_purge;
} kv_vault_info;

#define KV_DEFAULT_SUBSCRIPTION "00000000-0000-4000-8000-000000000001"
#define KV_DEFAULT_RESOURCE_GROUP "cmk-rg"
#define KV_DEFAULT_LOCATION "eastus"
#define KV_MAX_ACCESS_POLICIES 1024

/* Key permissions of an access policy (bits); names and parsing in access.h. */
enum {
    KV_PERM_ENCRYPT = 1u << 0,
    KV_PERM_DECRYPT = 1u << 1,
    KV_PERM_WRAP = 1u << 2,
    KV_PERM_UNWRAP = 1u << 3,
    KV_PERM_SIGN = 1u << 4,
    KV_PERM_VERIFY = 1u << 5,
    KV_PERM_GET = 1u << 6,
    KV_PERM_LIST = 1u << 7,
    KV_PERM_CREATE = 1u << 8,
    KV_PERM_UPDATE = 1u << 9,
    KV_PERM_IMPORT = 1u << 10,
    KV_PERM_DELETE = 1u << 11,
    KV_PERM_BACKUP = 1u << 12,
    KV_PERM_RESTORE = 1u << 13,
    KV_PERM_RECOVER = 1u << 14,
    KV_PERM_PURGE = 1u << 15,
    KV_PERM_RELEASE = 1u << 16,
    KV_PERM_ROTATE = 1u << 17,
    KV_PERM_GETROTATIONPOLICY = 1u << 18,
    KV_PERM_SETROTATIONPOLICY = 1u << 19,
};
#define KV_PERM_ALL ((1u << 20) - 1)

/* One access policy entry. */
typedef struct {
    char tenant[40];
    char object_id[40];
    char application_id[40]; /* "" = any application acting for object_id */
    uint32_t keys;           /* KV_PERM_* */
    json_t *permissions;     /* owned: the permissions object as given (keys, secrets, ...) */
} kv_access_policy;

/* A vault with everything ARM shows. Owned JSON and arrays: kv_vault_state_cleanup. */
typedef struct {
    kv_vault_info info;
    json_t *tags;         /* object or NULL */
    json_t *network_acls; /* object or NULL */
    kv_access_policy *policies;
    size_t npolicies;
} kv_vault_state;

/* Creates a vault (world file, ARM). KV_ERR_VAULT_EXISTS if the name is taken. */
kv_status kv_vault_create(kv_t *kv, const kv_vault_info *info, kv_err *e);
/* Looks a vault up by name (case-insensitive). */
kv_status kv_vault_get(kv_t *kv, const char *name, kv_vault_info *out);
/* The default vault's name into out; false if there is none. */
bool kv_vault_default(kv_t *kv, char *out, size_t outlen);
size_t kv_vault_count(kv_t *kv);

void kv_vault_state_cleanup(kv_vault_state *s);
/* A deep copy of a vault, live or soft-deleted (out->info.deleted tells which). */
kv_status kv_vault_state_get(kv_t *kv, const char *name, kv_vault_state *out);
/* Creates a vault or replaces the settings of a live one (the state is deep-copied).
 * Enforces what cannot be undone: KV_ERR_BAD_PARAM when purge protection or soft delete
 * would be turned off, KV_ERR_VAULT_EXISTS when the name is held by a soft-deleted vault
 * or by a vault in another resource group. is_default, created and created_by are kept from
 * the existing vault. *created tells whether the vault is new. */
kv_status kv_vault_put(kv_t *kv, const kv_vault_state *in, bool *created, kv_err *e);
/* Soft-deletes a live vault (keys stay in the token; the data plane stops answering). A
 * vault without soft delete is purged at once. */
kv_status kv_vault_delete(kv_t *kv, const char *name, kv_err *e);
/* Brings a soft-deleted vault back with its keys. */
kv_status kv_vault_recover(kv_t *kv, const char *name, kv_err *e);
/* Purges a soft-deleted vault: rows first, then every key pair of its keys in the token.
 * KV_ERR_PURGE_PROTECTED while purge protection holds (before scheduled_purge). */
kv_status kv_vault_purge(kv_t *kv, const char *name, kv_err *e);
/* Names of live (deleted false) or soft-deleted vaults, sorted; malloc'd array in *out. */
size_t kv_vault_names(kv_t *kv, bool deleted, char (**out)[64]);
/* Access-policy lookup for the access check: *granted when a policy for object_id (and,
 * when the policy names an application, appid) grants perm. info gets the vault (live only). */
kv_status kv_vault_policy_grants(kv_t *kv, const char *vault, const char *object_id,
                                 const char *appid, uint32_t perm, bool *granted,
                                 kv_vault_info *info);

/* Called after a committed change to a vault (access policies, settings, deleted, recovered,
 * purged; key NULL) or to a key (created, imported, updated, deleted, purged, recovered,
 * rotated, restored). Runs without kv locks held, on the thread that made the change; set
 * once at start-up before serving. */
typedef void (*kv_change_fn)(const char *vault, const char *key, void *ud);
void kv_set_change_hook(kv_t *kv, kv_change_fn fn, void *ud);

/* RBAC decision for vaults with enableRbacAuthorization (set later by the role-assignment
 * module; see access.h). Returns KV_OK or KV_ERR_FORBIDDEN_RBAC with a message. */
typedef kv_status (*kv_rbac_check_fn)(const char *vault, const char *key, const auth_principal *p,
                                      const char *permission, kv_err *e, void *ud);
void kv_set_rbac_check(kv_t *kv, kv_rbac_check_fn fn, void *ud);
kv_rbac_check_fn kv_rbac_check(kv_t *kv, void **ud);
/* The RBAC decision the server uses: the role assignments in roles (auth/roles.h) at the
 * vault's ARM id. roles must outlive kv's use of it; NULL removes the hook (RBAC vaults deny). */
typedef struct auth_roles roles_t; /* auth/roles.h */
void kv_set_rbac_roles(kv_t *kv, roles_t *roles);

/* ---- keys ------------------------------------------------------------------------------ */

enum {
    KV_OP_ENCRYPT = 1 << 0,
    KV_OP_DECRYPT = 1 << 1,
    KV_OP_SIGN = 1 << 2,
    KV_OP_VERIFY = 1 << 3,
    KV_OP_WRAP = 1 << 4,
    KV_OP_UNWRAP = 1 << 5,
    KV_OP_IMPORT = 1 << 6,
    KV_OP_EXPORT = 1 << 7,
};
#define KV_OPS_RSA_DEFAULT                                                                         \
    (KV_OP_ENCRYPT | KV_OP_DECRYPT | KV_OP_SIGN | KV_OP_VERIFY | KV_OP_WRAP | KV_OP_UNWRAP)

/* Parses a key_ops JSON array into a mask; false + message on an unknown name. */
bool kv_ops_parse(const json_t *arr, unsigned *mask, kv_err *e);
/* The mask as a JSON array of names (new reference). */
json_t *kv_ops_json(unsigned mask);

/* A copy of one key version as clients see it. Release with kv_key_view_cleanup. */
typedef struct {
    char vault[64];
    char name[128];
    char version[33];
    char kty[8]; /* "RSA" or "RSA-HSM" */
    unsigned bits;
    uint8_t n[512];
    size_t n_len;
    uint8_t e[8];
    size_t e_len;
    unsigned ops;
    bool enabled;
    int64_t nbf, exp; /* 0 = not set */
    int64_t created, updated;
    json_t *tags; /* owned (may be NULL) */
    bool managed;
    const char *recovery_level; /* static string */
    int recoverable_days;       /* 0 when soft delete is off */
    bool deleted;
    int64_t deleted_date, scheduled_purge;
} kv_key_view;

void kv_key_view_cleanup(kv_key_view *v);

typedef struct {
    bool hsm;               /* kty RSA-HSM */
    unsigned bits;          /* 2048, 3072, 4096 */
    unsigned long exponent; /* 0 = 65537 */
    unsigned ops;           /* 0 = KV_OPS_RSA_DEFAULT */
    bool has_enabled;
    bool enabled;
    int64_t nbf, exp;   /* 0 = not set */
    const json_t *tags; /* borrowed; NULL = none */
} kv_create_params;

/* Creates a new key, or a new version when the name exists (live). */
kv_status kv_key_create(kv_t *kv, const char *vault, const char *name, const kv_create_params *p,
                        kv_key_view *out, kv_err *e);
/* Imports an RSA private key as a new key or new version. */
kv_status kv_key_import(kv_t *kv, const char *vault, const char *name, const hsm_rsa_components *c,
                        const kv_create_params *p, kv_key_view *out, kv_err *e);
/* version "" or NULL = latest. Deleted keys answer KV_ERR_KEY_NOT_FOUND. */
kv_status kv_key_get(kv_t *kv, const char *vault, const char *name, const char *version,
                     kv_key_view *out, kv_err *e);

typedef struct {
    bool has_ops;
    unsigned ops;
    bool has_enabled;
    bool enabled;
    bool has_nbf;
    int64_t nbf; /* 0 = clear */
    bool has_exp;
    int64_t exp;
    const json_t *tags; /* NULL = unchanged; object replaces */
} kv_update_params;
kv_status kv_key_update(kv_t *kv, const char *vault, const char *name, const char *version,
                        const kv_update_params *p, kv_key_view *out, kv_err *e);

/* Lists live keys (latest version each) whose lowercase name sorts after `after` ("" =
 * from the start), at most max; *more tells whether another page exists. out has room for
 * max views; *n is set. */
kv_status kv_key_list(kv_t *kv, const char *vault, const char *after, size_t max, kv_key_view *out,
                      size_t *n, bool *more, kv_err *e);
/* Versions of a live key in creation order from index start. */
kv_status kv_key_versions(kv_t *kv, const char *vault, const char *name, size_t start, size_t max,
                          kv_key_view *out, size_t *n, bool *more, kv_err *e);

/* Soft-deletes (or, with soft delete off, purges) a key; out describes it as deleted. */
kv_status kv_key_delete(kv_t *kv, const char *vault, const char *name, kv_key_view *out, kv_err *e);
kv_status kv_deleted_list(kv_t *kv, const char *vault, const char *after, size_t max,
                          kv_key_view *out, size_t *n, bool *more, kv_err *e);
kv_status kv_deleted_get(kv_t *kv, const char *vault, const char *name, kv_key_view *out,
                         kv_err *e);
kv_status kv_deleted_purge(kv_t *kv, const char *vault, const char *name, kv_err *e);
kv_status kv_deleted_recover(kv_t *kv, const char *vault, const char *name, kv_key_view *out,
                             kv_err *e);

/* ---- cryptography ---------------------------------------------------------------------- */

typedef enum { KV_CRYPT_ENCRYPT, KV_CRYPT_DECRYPT, KV_CRYPT_WRAP, KV_CRYPT_UNWRAP } kv_crypt_op;

/* Runs one RSA operation with the named version (""= latest). Checks enabled, key_ops and
 * (encrypt/wrap) nbf/exp. out has room for 512 bytes. version_out gets the version used. */
kv_status kv_key_crypt(kv_t *kv, const char *vault, const char *name, const char *version,
                       kv_crypt_op op, hsm_rsa_enc_alg alg, const uint8_t *in, size_t in_len,
                       uint8_t *out, size_t *out_len, char version_out[33], kv_err *e);
kv_status kv_key_sign(kv_t *kv, const char *vault, const char *name, const char *version,
                      hsm_sig_alg alg, const uint8_t *digest, size_t digest_len, uint8_t *sig,
                      size_t *sig_len, char version_out[33], kv_err *e);
/* *valid false for a signature that does not verify (status KV_OK). */
kv_status kv_key_verify(kv_t *kv, const char *vault, const char *name, const char *version,
                        hsm_sig_alg alg, const uint8_t *digest, size_t digest_len,
                        const uint8_t *sig, size_t sig_len, bool *valid, char version_out[33],
                        kv_err *e);

/* ---- backup, rotation ------------------------------------------------------------------ */

/* A backup blob (base64url text, malloc'd) with every version, private keys wrapped under
 * the token's backup key. */
kv_status kv_key_backup(kv_t *kv, const char *vault, const char *name, char **blob, kv_err *e);
kv_status kv_key_restore(kv_t *kv, const char *vault, const char *blob, size_t blob_len,
                         kv_key_view *out, kv_err *e);
kv_status kv_key_rotate(kv_t *kv, const char *vault, const char *name, kv_key_view *out, kv_err *e);
/* The policy as stored (or the default), as a new JSON object without "id". */
kv_status kv_rotation_policy_get(kv_t *kv, const char *vault, const char *name, json_t **out,
                                 kv_err *e);
/* Validates and stores; *out = stored policy (new reference, without "id"). */
kv_status kv_rotation_policy_set(kv_t *kv, const char *vault, const char *name,
                                 const json_t *policy, json_t **out, kv_err *e);

/* Applies what became due at `now`: scheduled purges and automatic rotations. Registered as
 * a clock hook by kv_open. */
void kv_apply_due(kv_t *kv, int64_t now);

/* Random bytes from the token. */
kv_status kv_random(kv_t *kv, uint8_t *buf, size_t len, kv_err *e);

/* Number of keys (live + deleted) in a vault, for start-up messages. */
size_t kv_key_count(kv_t *kv, const char *vault);

#endif
