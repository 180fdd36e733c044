/*
 * vaults_arm: Microsoft.KeyVault/vaults over ARM: vaults (PUT/GET/PATCH/DELETE, lists by
 * resource group and subscription), access policies (add/replace/remove), deleted vaults
 * (list, get, purge) and recovery (PUT with createMode "recover"). Validation answers with
 * ARM's codes and messages; the vault domain (kv.c) enforces what cannot be undone.
 */
#ifndef CMKEMU_VAULTS_ARM_H
#define CMKEMU_VAULTS_ARM_H

#include "armres.h"
#include "kv.h"
#include "router.h"

typedef struct {
    arm_common common; /* first: arm_precheck reads the tenant */
    kv_t *kv;
    armres_t *arm;
} kv_arm_ctx;

/* Registers the routes and the resource-group delete hook (which soft-deletes the group's
 * vaults). ctx must outlive the router. */
void kv_vaults_arm_register(emu_router *r, kv_arm_ctx *ctx);

#endif
