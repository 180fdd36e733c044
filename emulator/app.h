/*
 * app: the emulator's routes and the domains they need beyond the ones opened first (store,
 * HSM, identity, key vault, role assignments), wired once for `cmkemu serve` (main.c) and
 * for the fuzz targets that drive the whole router (fuzz/fuzz_app.c).
 */
#ifndef CMKEMU_APP_H
#define CMKEMU_APP_H

#include <stdbool.h>
#include <stddef.h>

#include "admin_api.h"
#include "arm/deployments.h"
#include "armres.h"
#include "audit.h"
#include "auth/auth.h"
#include "auth/auth_api.h"
#include "auth/roles.h"
#include "auth/roles_api.h"
#include "faults.h"
#include "hsm.h"
#include "keyvault/kv.h"
#include "keyvault/kv_api.h"
#include "keyvault/vaults_arm.h"
#include "powerplatform/bap_api.h"
#include "powerplatform/components.h"
#include "powerplatform/environments.h"
#include "powerplatform/policies.h"
#include "powerplatform/policies_arm.h"
#include "router.h"
#include "store.h"
#include "throttle.h"
#include "ui/ui.h"

typedef struct {
    /* Given by the caller, opened before and closed after (emu_app_close leaves them). */
    emu_store *store;
    hsm_t *hsm;
    auth_t *auth;
    kv_t *kv;
    roles_t *roles;
    emu_audit *audit;
    emu_faults *faults;     /* NULL = none */
    emu_throttle *throttle; /* --throttle azure; NULL = off */
    const char *tenant;
    const char *version;
    const char *data_dir;
    const char *identity_header;
    bool auto_reenable;
    int pp_operation_ms; /* the environment operation runner's pace; < 0 = no runner */
    /* Made by emu_app_open, closed by emu_app_close. */
    emu_router *router;
    armres_t *arm;
    pp_policies_t *pp;
    pp_envs_t *envs;
    pp_comps_t *comps;
    /* The routes' contexts: the router points into them, so the app must not move. */
    emu_admin_ctx admin;
    auth_api_ctx authctx;
    kv_api_ctx kvctx;
    auth_roles_api_ctx rolesctx;
    kv_arm_ctx kvarm;
    arm_deploy_ctx deploy;
    pp_arm_ctx pparm;
    pp_bap_ctx bap;
    emu_ui_ctx ui;
} emu_app;

/* Opens the remaining domains and registers every route on a new router. false + err (which
 * part, and why) on failure; emu_app_close then closes what was opened. */
bool emu_app_open(emu_app *a, char *err, size_t errlen);

/* Closes what emu_app_open made (the router first); NULL members are skipped. */
void emu_app_close(emu_app *a);

#endif
