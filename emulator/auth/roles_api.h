/*
 * roles_api: Microsoft.Authorization over ARM.
 *   PUT|GET|DELETE {scope}/providers/Microsoft.Authorization/roleAssignments/{guid}
 *   GET            {scope}/providers/Microsoft.Authorization/roleAssignments
 *                  ($filter: atScope(), principalId eq '{id}', assignedTo('{id}'), joined by
 *                  "and")
 *   GET            [{scope}]/providers/Microsoft.Authorization/roleDefinitions[/{guid}]
 *                  ($filter=roleName eq '{name}')
 * A scope is /subscriptions/{s}, .../resourceGroups/{rg}, a resource id
 * (.../providers/{ns}/{type}/{name}) or one child below it (a Key Vault key:
 * .../vaults/{v}/keys/{k}); resources directly under a subscription as well.
 *
 * Routing: the router has no mid-path wildcard (only a final "{*}"), so every scope depth is
 * registered as a fixed pattern whose last three or four segments are the literal
 * "providers/Microsoft.Authorization/roleAssignments[/{id}]". Those literals never match
 * another family's routes, so registration order does not matter for correctness; main
 * registers these before the provider routes anyway so a later catch-all cannot shadow them.
 *
 * Writes need Microsoft.Authorization/roleAssignments/write|delete at the scope (Owner, User
 * Access Administrator) for callers the token service vouched for; emulator admins and
 * permissive mode's mapped default principal may always write (so a world can bootstrap).
 */
#ifndef CMKEMU_AUTH_ROLES_API_H
#define CMKEMU_AUTH_ROLES_API_H

#include "armres.h"
#include "roles.h"
#include "router.h"

typedef struct {
    arm_common common; /* first: arm_precheck reads it */
    roles_t *roles;
} auth_roles_api_ctx;

/* Registers the routes; ctx must outlive the router. */
void auth_roles_api_register(emu_router *r, auth_roles_api_ctx *ctx);

#endif
