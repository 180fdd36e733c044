/*
 * policies: Power Platform enterprise policies (Microsoft.PowerPlatform/enterprisePolicies),
 * the domain side: what a policy is, the rules for creating, updating and deleting one, its
 * system-assigned managed identity, and the lookups later modules need (by systemId, by ARM
 * id). No HTTP types: policies_arm.c translates.
 *
 * Identity: creating a policy with identity SystemAssigned creates a managed-identity
 * principal in auth (name = the policy name, new oid and appid unless the spec fixes them);
 * deleting the policy removes that principal. Order of effects: the principal is created
 * before the row is committed (and removed again if the commit fails); on delete the row goes
 * first, then the principal. pp_policies_open re-creates a missing principal for every policy
 * row (same oid/appid), so a crash between the two steps heals at the next start.
 *
 * Update rules (reference/powerplatform-cmk.md): an existing policy may change only its key
 * vault id, key name and key version (and its ARM tags); any other change is
 * PP_ERR_CHANGE_NOT_ALLOWED. A change of vault/key/version, and a delete, are refused with
 * PP_ERR_LINKED while the link check says an environment is linked. A PUT that changes nothing
 * succeeds even while linked (re-deploying the same template is harmless). A key change resets
 * healthStatus to Undetermined.
 *
 * The key vault id is checked for its form only (a Microsoft.KeyVault/vaults ARM id); whether
 * the vault, key and version exist and are usable is decided when an environment is linked.
 *
 * State: held in memory (loaded at open), written through to SQLite (table pp_policies), the
 * memory updated only after the commit. Locking: one mutex over the domain. Lock order:
 * pp lock, then the auth lock, then the store lock. The link check and link counter are
 * called WITHOUT the pp lock held (they may call back into pp_policy_get_*), so a link that
 * races an update or delete can slip between the check and the commit.
 */
#ifndef CMKEMU_PP_POLICIES_H
#define CMKEMU_PP_POLICIES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "auth/auth.h"
#include "store.h"

typedef enum {
    PP_OK = 0,
    PP_ERR_BAD_PARAM,          /* 400 BadRequest (message and target say what) */
    PP_ERR_BAD_LOCATION,       /* 400 LocationNotAvailableForResourceType */
    PP_ERR_CHANGE_NOT_ALLOWED, /* 400 PropertyChangeNotAllowed */
    PP_ERR_NOT_FOUND,          /* 404 ResourceNotFound */
    PP_ERR_LINKED,             /* 409 EnterprisePolicyInUse: environments are linked */
    PP_ERR_CONFLICT,           /* 409 Conflict: identity oid/appid already taken */
    PP_ERR_IDENTITY,           /* 500 the managed identity could not be created */
    PP_ERR_STORE,              /* 500 store failure */
} pp_status;

const char *pp_status_str(pp_status st);

/* Error detail for the client; target names the offending field ("" = none). */
typedef struct {
    char msg[512];
    char target[96];
} pp_err;

typedef enum {
    PP_KIND_ENCRYPTION = 0,
    PP_KIND_LOCKBOX,
    PP_KIND_PRIVATE_ENDPOINT,
    PP_KIND_NETWORK_INJECTION,
    PP_KIND_IDENTITY,
} pp_policy_kind;

typedef enum {
    PP_HEALTH_UNDETERMINED = 0,
    PP_HEALTH_HEALTHY,
    PP_HEALTH_WARNING,
    PP_HEALTH_UNHEALTHY,
} pp_health;

const char *pp_kind_str(pp_policy_kind k);            /* "Encryption", ... */
bool pp_kind_parse(const char *s, pp_policy_kind *k); /* case-insensitive */
const char *pp_health_str(pp_health h);               /* "Undetermined", ... */
bool pp_health_parse(const char *s, pp_health *h);    /* case-insensitive */

/* Power Platform regions a policy may live in (reference list), case-insensitive. */
bool pp_location_valid(const char *location);
/* "unitedstates, southafrica, ..." for messages. Static storage. */
const char *pp_locations_str(void);

#define PP_POLICY_TYPE "Microsoft.PowerPlatform/enterprisePolicies"

/* A copy of one policy. Plain data: no cleanup needed. */
typedef struct {
    char subscription[64];
    char resource_group[96];
    char name[128];
    char location[32]; /* lowercase */
    pp_policy_kind kind;
    /* "/regions/{location}/providers/Microsoft.PowerPlatform/enterprisePolicies/{guid}" */
    char system_id[160];
    bool has_identity; /* SystemAssigned */
    char identity_oid[40], identity_appid[40], tenant[40];
    bool has_encryption;
    bool encryption_enabled; /* properties.encryption.state Enabled | Disabled */
    char vault_id[512];      /* canonical Microsoft.KeyVault/vaults ARM id */
    char key_name[128];
    char key_version[40]; /* "" = follows the key's current version */
    pp_health health;
    int64_t created, modified;
    char created_by[128], created_by_type[24]; /* ARM systemData; "" = unknown */
    char modified_by[128], modified_by_type[24];
} pp_policy;

/* What a create or update asks for. Strings are borrowed for the call. */
typedef struct {
    const char *subscription, *resource_group, *name;
    const char *location;
    pp_policy_kind kind;
    bool identity; /* identity.type SystemAssigned (required for Encryption) */
    /* create only: fixed identity ids (world files); NULL = new GUIDs */
    const char *identity_oid, *identity_appid;
    bool has_encryption;
    bool encryption_enabled;
    const char *vault_id, *key_name, *key_version; /* key_version NULL or "" = none */
    bool set_tags;            /* false: keep the tags (update) / none (create) */
    const json_t *tags;       /* object or NULL (= empty), when set_tags */
    bool update_only;         /* PATCH: PP_ERR_NOT_FOUND when the policy does not exist */
    const char *by, *by_type; /* systemData of the caller; NULL = unknown */
} pp_policy_spec;

typedef struct pp_policies pp_policies_t;

/* Opens the table (migrations) and loads every policy; re-creates missing identities.
 * auth must outlive the domain. NULL + message on failure. */
pp_policies_t *pp_policies_open(emu_store *store, auth_t *auth, char *err, size_t errlen);
/* Frees the domain (NULL is a no-op). */
void pp_policies_close(pp_policies_t *p);

/* The environments module (a later issue) tells whether any environment is linked to a
 * policy (by systemId). NULL = none is ever linked. Set once at start-up. */
typedef bool (*pp_link_check_fn)(const char *system_id, void *ud);
void pp_policies_set_link_check(pp_policies_t *p, pp_link_check_fn linked, void *ud);
/* Optional: how many environments are linked, so refusals can name the number. NULL = the
 * message says "one or more". */
typedef size_t (*pp_link_count_fn)(const char *system_id, void *ud);
void pp_policies_set_link_count(pp_policies_t *p, pp_link_count_fn count, void *ud);

/* Optional: called (without the domain lock) after a policy was deleted, so the environments
 * module can lock what was linked to it at once. Set once at start-up. */
typedef void (*pp_deleted_fn)(const char *system_id, void *ud);
void pp_policies_set_deleted_hook(pp_policies_t *p, pp_deleted_fn fn, void *ud);

/* Validates a spec by itself (names, location, kind, identity, encryption fields). */
pp_status pp_policy_spec_check(const pp_policy_spec *spec, pp_err *e);

/* Creates or updates a policy (see the update rules above). *created says which; out (may be
 * NULL) receives the stored policy. On failure nothing changed. */
pp_status pp_policy_put(pp_policies_t *p, const pp_policy_spec *spec, pp_policy *out, bool *created,
                        pp_err *e);

/* Deletes a policy and its identity. PP_ERR_NOT_FOUND when absent, PP_ERR_LINKED while
 * environments are linked. force (resource group deletion) skips the link check: the
 * environments then find their policy gone (a lock cause). */
pp_status pp_policy_delete(pp_policies_t *p, const char *sub, const char *rg, const char *name,
                           bool force, pp_err *e);

/* Lookups (case-insensitive): PP_OK + copy, or PP_ERR_NOT_FOUND. */
pp_status pp_policy_get(pp_policies_t *p, const char *sub, const char *rg, const char *name,
                        pp_policy *out);
/* id: "/subscriptions/../resourceGroups/../providers/Microsoft.PowerPlatform/
 * enterprisePolicies/{name}" (ARM id rules: words case-insensitive). */
pp_status pp_policy_get_by_arm_id(pp_policies_t *p, const char *id, pp_policy *out);
pp_status pp_policy_get_by_system_id(pp_policies_t *p, const char *system_id, pp_policy *out);

/* The ARM tags of a policy (new reference, NULL when none or not found). */
json_t *pp_policy_tags(pp_policies_t *p, const char *sub, const char *rg, const char *name);

/* Sets healthStatus (the environments module reports key access). Persisted. */
pp_status pp_policy_set_health(pp_policies_t *p, const char *system_id, pp_health h);

/* Copies of the policies of a subscription (sub NULL = all) and resource group (rg NULL = all
 * of the subscription), ordered by subscription, group and name (case-insensitive). *out is
 * malloc'd (NULL when none); the caller frees it. Returns the count. */
size_t pp_policy_list(pp_policies_t *p, const char *sub, const char *rg, pp_policy **out);

/* The canonical ARM id of a policy, malloc'd. */
char *pp_policy_arm_id(const pp_policy *pol);

#endif
