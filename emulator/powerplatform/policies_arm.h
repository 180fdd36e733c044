/*
 * policies_arm: Microsoft.PowerPlatform/enterprisePolicies over ARM, all synchronous:
 *   PUT|GET|PATCH|DELETE /subscriptions/{sub}/resourceGroups/{rg}/providers/
 *                        Microsoft.PowerPlatform/enterprisePolicies/{name}
 *   GET
 * /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.PowerPlatform/enterprisePolicies GET
 * /subscriptions/{sub}/providers/Microsoft.PowerPlatform/enterprisePolicies api-version 2020-10-30
 * (Microsoft's template) or 2020-10-30-preview (the spec); any other is 400
 * InvalidApiVersionParameter. Answers in ARM's error shape; the rules live in policies.c.
 */
#ifndef CMKEMU_PP_POLICIES_ARM_H
#define CMKEMU_PP_POLICIES_ARM_H

#include "armres.h"
#include "policies.h"
#include "router.h"

typedef struct {
    arm_common common; /* first: arm_precheck reads it */
    pp_policies_t *pp;
    armres_t *arm;
} pp_arm_ctx;

/* Registers the routes and the resource-group delete hook (which deletes the group's
 * policies and their identities, linked or not). ctx must outlive the router. */
void pp_policies_arm_register(emu_router *r, pp_arm_ctx *ctx);

#endif
