/*
 * deployments: Microsoft.Resources/deployments at resource-group scope.
 *   PUT    /subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.Resources/deployments/{name}
 *   GET | HEAD | DELETE  the same path;  GET .../deployments (list)
 *   GET    .../deployments/{name}/operations          (one operation per template resource;
 *          also .../resourcegroups/{rg}/deployments/{name}/operations, as DeploymentsClient asks)
 *   GET    .../deployments/{name}/operationStatuses/{id}   (the Azure-AsyncOperation target)
 *   POST   .../deployments/{name}/validate
 *
 * A deployment runs synchronously inside the PUT (the route is EMU_ROUTE_SLOW): the template is
 * evaluated (arm/template.h) and each resource is PUT in dependsOn order through the router, in
 * process, with the caller's Authorization and Host headers, exactly as a client would send it.
 * So every registered provider deploys without special cases, authorizes the caller itself and
 * builds URLs for the caller's host. A provider answering >= 400 fails the deployment with its
 * error as details. The PUT answers 201 (200 on redeploy) with the terminal provisioningState
 * in the body and an Azure-AsyncOperation header whose status is already terminal, which is
 * what ARM clients' pollers expect.
 *
 * Deployment records persist in the store (table arm_deployments); deleting a deployment
 * deletes only its record, as in ARM, and deleting a resource group deletes its records.
 */
#ifndef CMKEMU_ARM_DEPLOYMENTS_H
#define CMKEMU_ARM_DEPLOYMENTS_H

#include <stdbool.h>
#include <stddef.h>

#include "armres.h"
#include "router.h"
#include "store.h"

typedef struct {
    arm_common common; /* first: arm_precheck reads the tenant */
    armres_t *arm;
    emu_store *store;
    const emu_router *router; /* where resource PUTs are dispatched; the one routes go to */
} arm_deploy_ctx;

/* Applies the store migration. false + err on failure. */
bool arm_deployments_init(arm_deploy_ctx *ctx, char *err, size_t errlen);
/* Registers the routes and the resource-group delete hook. ctx must outlive the router. */
void arm_deployments_register(emu_router *r, arm_deploy_ctx *ctx);

#endif
