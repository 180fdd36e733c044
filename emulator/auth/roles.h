/*
 * roles: Azure RBAC as the emulator needs it. Built-in role definitions (real GUIDs, real
 * actions and dataActions), role assignments (Microsoft.Authorization/roleAssignments at any
 * scope: subscription, resource group, resource, Key Vault key) kept in SQLite, and the
 * decision: does a principal hold, at a scope or any parent of it, a role that grants an
 * action.
 *
 * Scopes are ARM ids ("/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/
 * vaults/v/keys/k"), compared case-insensitively; an assignment at scope S applies to S and
 * to every id below S ("S/..."). Key permissions (access-policy names such as "unwrapKey")
 * are mapped onto the Key Vault data actions ("Microsoft.KeyVault/vaults/keys/unwrap/action")
 * and matched against the dataActions of the role, with '*' wildcards as ARM does. So, as in
 * Azure, Owner, Contributor and Reader grant no Key Vault data-plane permission at all: they
 * have actions, not dataActions.
 *
 * State: every assignment is in memory (loaded at open) and written through; a change is
 * applied in memory only after its commit. Locking: one rwlock over the assignments; lock
 * order: roles lock, then the store lock. The change hook runs after the commit, without the
 * roles lock held. The auth_t passed at open must outlive the roles_t.
 */
#ifndef CMKEMU_AUTH_ROLES_H
#define CMKEMU_AUTH_ROLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "auth.h"
#include "principal.h"
#include "store.h"

typedef struct auth_roles roles_t;

typedef enum {
    ROLES_OK = 0,
    ROLES_ERR_BAD_REQUEST,         /* 400 (code in the message table of roles_api.c) */
    ROLES_ERR_BAD_ID,              /* 400 InvalidRoleAssignmentId: name not a GUID */
    ROLES_ERR_BAD_SCOPE,           /* 400 InvalidScope */
    ROLES_ERR_ROLE_NOT_FOUND,      /* 400 RoleDefinitionDoesNotExist */
    ROLES_ERR_BAD_PRINCIPAL_ID,    /* 400 InvalidPrincipalId: not a GUID */
    ROLES_ERR_PRINCIPAL_NOT_FOUND, /* 400 PrincipalNotFound */
    ROLES_ERR_PRINCIPAL_TYPE,      /* 400 UnmatchedPrincipalType */
    ROLES_ERR_EXISTS,              /* 409 RoleAssignmentExists: same principal+role+scope */
    ROLES_ERR_UPDATE_NOT_ALLOWED,  /* 409 RoleAssignmentUpdateNotPermitted */
    ROLES_ERR_LIMIT,               /* 400 RoleAssignmentLimitExceeded */
    ROLES_ERR_NOT_FOUND,           /* 404 RoleAssignmentNotFound */
    ROLES_ERR_STORE,               /* 500 */
} roles_status;

const char *auth_roles_status_str(roles_status st);

#define ROLES_MAX_ASSIGNMENTS 4000 /* Azure's limit per subscription */
#define ROLES_MAX_SCOPE 512

/* ---- role definitions (built in, read only) ------------------------------------------------ */

typedef struct {
    const char *guid;
    const char *name;
    const char *description;
    const char *const *actions;      /* NULL-terminated */
    const char *const *not_actions;  /* NULL-terminated */
    const char *const *data_actions; /* NULL-terminated */
} auth_role_def;

/* All built-in definitions (a static table). */
size_t auth_role_defs(const auth_role_def **out);
/* Looks a definition up by GUID, by role name (case-insensitive) or by a role definition id
 * ".../providers/Microsoft.Authorization/roleDefinitions/{guid}". NULL when unknown. */
const auth_role_def *auth_role_def_find(const char *guid_name_or_id);
/* The Key Vault data action a key permission needs ("unwrapKey" ->
 * "Microsoft.KeyVault/vaults/keys/unwrap/action"); NULL for an unknown permission. */
const char *auth_roles_key_data_action(const char *key_permission);
/* true when the role's dataActions (minus notDataActions) cover the data action. */
bool auth_role_def_grants_data_action(const auth_role_def *d, const char *data_action);

/* ---- assignments ----------------------------------------------------------------------------- */

typedef struct {
    char name[40];            /* the assignment's GUID */
    char scope[ROLES_MAX_SCOPE];
    char role_guid[40];       /* a built-in definition's GUID */
    char principal_id[40];
    char principal_type[24];  /* User | Group | ServicePrincipal | ForeignGroup */
    char description[256];
    char created_by[40], updated_by[40]; /* object ids; "" = unknown (world file) */
    char created_by_type[24];            /* User | Application | ManagedIdentity | "" */
    int64_t created, updated;
} auth_role_assignment;

roles_t *auth_roles_open(emu_store *store, auth_t *auth, char *err, size_t errlen);
void auth_roles_close(roles_t *r); /* NULL is a no-op */

/* Canonical form of a scope (leading '/', no trailing or doubled '/', the ARM words
 * "subscriptions", "resourceGroups", "providers" spelled canonically) into out. false when
 * it is not /subscriptions/{s}[/resourceGroups/{rg}][/providers/{ns}/{type}/{name}[/{t}/{n}]...]
 * or too long. */
bool auth_roles_scope_canon(const char *scope, char *out, size_t outlen);

/* Creates an assignment (in->name, scope, role_guid: a definition's GUID (resolve names and
 * definition ids with auth_role_def_find first), principal_id; principal_type "" = from the principal; created_by = the caller's oid).
 * An identical PUT of an existing assignment succeeds with *created false. Validation in the
 * order: name, scope, role, principal, principal type, duplicates. On failure msg says why;
 * nothing is written. out (may be NULL) gets the stored assignment. */
roles_status auth_roles_put(roles_t *r, const auth_role_assignment *in, bool *created,
                            auth_role_assignment *out, char *msg, size_t msglen);
/* The assignment named name at scope (scope compared canonically). */
roles_status auth_roles_get(roles_t *r, const char *scope, const char *name,
                            auth_role_assignment *out);
/* Deletes the assignment named name at scope; out (may be NULL) gets what was deleted. */
roles_status auth_roles_delete(roles_t *r, const char *scope, const char *name,
                               auth_role_assignment *out);

typedef enum {
    ROLES_LIST_ALL = 0, /* at, above and below the scope */
    ROLES_LIST_AT_SCOPE, /* at or above the scope ($filter=atScope()) */
} roles_list_mode;
/* Assignments that apply to scope (mode), optionally only those of principal_id (NULL/"" =
 * all), in creation order. *out is malloc'd (free it), NULL when none. */
size_t auth_roles_list(roles_t *r, const char *scope, roles_list_mode mode,
                       const char *principal_id, auth_role_assignment **out);
size_t auth_roles_count(roles_t *r);

/* ---- the decision ---------------------------------------------------------------------------- */

/* true when an assignment of principal_oid at scope_resource_id or any parent scope has a
 * role whose dataActions grant the Key Vault key permission ("get", "unwrapKey", ...). */
bool auth_roles_allows(roles_t *r, const char *principal_oid, const char *scope_resource_id,
                       const char *key_permission);
/* true when principal_oid holds role (GUID, name or definition id) at scope or a parent scope,
 * directly or through a role that implies it (Owner implies Contributor and Reader;
 * Contributor implies Reader). */
bool auth_roles_has_role_at(roles_t *r, const char *principal_oid, const char *scope,
                            const char *role_guid_or_name);

/* Control plane: true when an assignment of principal_oid at scope or a parent scope has a role
 * whose actions (minus notActions) cover action ("Microsoft.Authorization/roleAssignments/write"). */
bool auth_roles_allows_action(roles_t *r, const char *principal_oid, const char *scope,
                              const char *action);

/* The Key Vault data-plane decision for an RBAC vault, with the 403 message the service
 * gives on denial ("Caller is not authorized ... DecisionReason: 'DeniedWithNoValidRBAC' ...").
 * The resource is the vault's ARM id, plus "/keys/{key}" when key is non-NULL. A principal
 * that the token service did not vouch for (NULL or from_token false) is allowed. */
bool auth_roles_kv_check(roles_t *r, const auth_principal *p, const char *subscription,
                         const char *resource_group, const char *vault, const char *location,
                         const char *key, const char *key_permission, char *msg,
                         size_t msglen);

/* Called after a committed PUT (new assignment) or DELETE with the assignment's scope, on the
 * thread that made the change, without roles locks held. Set once at start-up. */
typedef void (*auth_roles_change_fn)(const char *scope, void *ud);
void auth_roles_set_change_hook(roles_t *r, auth_roles_change_fn fn, void *ud);

#endif
