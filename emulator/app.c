#include "app.h"

#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "log.h"

static bool arm_authenticate(emu_req *req, void *ud, bool *missing, char *err, size_t errlen)
{
    return auth_authenticate(ud, req, AUTH_AUD_ARM, missing, err, errlen);
}

/* Prefixes err with the part that failed. */
static bool failed(const char *part, char *err, size_t errlen)
{
    char why[512];
    snprintf(why, sizeof why, "%s", err);
    snprintf(err, errlen, "%s: %s", part, why);
    return false;
}

bool emu_app_open(emu_app *a, char *err, size_t errlen)
{
    arm_common common = {.tenant = a->tenant, .authenticate = arm_authenticate, .auth_ud = a->auth};
    err[0] = '\0';
    a->router = emu_router_new();
    a->admin = (emu_admin_ctx){.store = a->store,
                               .hsm = a->hsm,
                               .version = a->version,
                               .data_dir = a->data_dir,
                               .started = emu_wall_now(),
                               .auth = a->auth,
                               .audit = a->audit,
                               .faults = a->faults};
    kv_reconciled(a->kv, &a->admin.reconciled_orphans, &a->admin.reconciled_missing);
    emu_admin_register(a->router, &a->admin);
    a->authctx = (auth_api_ctx){.auth = a->auth, .identity_header = a->identity_header};
    a->kvctx =
        (kv_api_ctx){.kv = a->kv, .tenant = a->tenant, .auth = a->auth, .throttle = a->throttle};
    kv_api_register(a->router, &a->kvctx);
    if (!(a->arm = armres_open(a->store, a->tenant, err, errlen)))
        return failed("arm", err, errlen);
    armres_set_authenticator(a->arm, arm_authenticate, a->auth);
    armres_register(a->router, a->arm);
    a->rolesctx = (auth_roles_api_ctx){.common = common, .roles = a->roles};
    auth_roles_api_register(a->router, &a->rolesctx);
    a->kvarm = (kv_arm_ctx){.common = common, .kv = a->kv, .arm = a->arm};
    kv_vaults_arm_register(a->router, &a->kvarm);
    /* deployments PUT each template resource back through this router, so they see every
     * provider registered above and below */
    a->deploy =
        (arm_deploy_ctx){.common = common, .arm = a->arm, .store = a->store, .router = a->router};
    if (!arm_deployments_init(&a->deploy, err, errlen))
        return failed("deployments", err, errlen);
    arm_deployments_register(a->router, &a->deploy);
    if (!(a->pp = pp_policies_open(a->store, a->auth, err, errlen)))
        return failed("enterprise policies", err, errlen);
    a->pparm = (pp_arm_ctx){.common = common, .pp = a->pp, .arm = a->arm};
    pp_policies_arm_register(a->router, &a->pparm);
    if (!(a->envs = pp_envs_open(a->store, a->hsm, err, errlen)))
        return failed("environments", err, errlen);
    pp_envs_set_audit(a->envs, a->audit);
    pp_envs_set_auto_reenable(a->envs, a->auto_reenable);
    pp_envs_set_cmk(
        a->envs,
        &(pp_cmk_deps){.kv = a->kv, .policies = a->pp, .roles = a->roles, .auth = a->auth});
    if (a->pp_operation_ms >= 0 && !pp_envs_start_runner(a->envs, (unsigned)a->pp_operation_ms)) {
        snprintf(err, errlen, "environments: cannot start the operation runner");
        return false;
    }
    if (!(a->comps = pp_comps_open(a->store, a->hsm, a->envs, a->audit, err, errlen)))
        return failed("environment components", err, errlen);
    a->bap = (pp_bap_ctx){.envs = a->envs, .auth = a->auth, .comps = a->comps};
    pp_bap_register(a->router, &a->bap);
    auth_api_register(a->router, &a->authctx);
    a->ui = (emu_ui_ctx){.router = a->router,
                         .auth = a->auth,
                         .on_relayed = emu_admin_audit_request,
                         .on_relayed_ud = &a->admin};
    emu_ui_register(a->router, &a->ui);
    return true;
}

void emu_app_close(emu_app *a)
{
    emu_router_free(a->router);
    a->router = NULL;
    pp_comps_close(a->comps);
    a->comps = NULL;
    pp_envs_close(a->envs); /* stops the operation runner, which audits */
    a->envs = NULL;
    pp_policies_close(a->pp);
    a->pp = NULL;
    armres_close(a->arm);
    a->arm = NULL;
}
