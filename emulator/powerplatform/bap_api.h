/*
 * bap_api: the Power Platform admin API (BAP) for environments and the Dataverse Web API
 * shape of their records. Paths are host-agnostic (the real host is api.bap.microsoft.com):
 *   POST   /providers/Microsoft.BusinessAppPlatform[/scopes/admin]/environments    -> 202 +
 * Location GET    /providers/Microsoft.BusinessAppPlatform[/scopes/admin]/environments[/{id}]
 *   DELETE /providers/Microsoft.BusinessAppPlatform[/scopes/admin]/environments/{id} -> 202
 *   POST   /providers/Microsoft.BusinessAppPlatform[/scopes/admin]/environments/{id}/enable|disable
 *   GET    /providers/Microsoft.BusinessAppPlatform/lifecycleOperations/{id}
 * BAP calls need an api-version query parameter (any value).
 * Records answer on the instance host "{envId}.crm.localhost[:port]" (the router matches
 * paths only, the handler reads the Host header; another host is 404):
 *   GET|POST /api/data/v9.2/{entitySet}          list ($top, $skiptoken, @odata.nextLink) / create
 *   GET|PATCH|DELETE /api/data/v9.2/{entitySet}({id})
 * Every route authenticates with the BAP audiences (401 when missing or invalid); a disabled
 * environment's records answer 423 EnvironmentDisabled.
 */
#ifndef CMKEMU_PP_BAP_API_H
#define CMKEMU_PP_BAP_API_H

#include "auth/auth.h"
#include "components.h"
#include "environments.h"
#include "router.h"

typedef struct {
    pp_envs_t *envs;
    auth_t *auth;      /* NULL: any bearer token is accepted (tests without identity) */
    pp_comps_t *comps; /* NULL: no component / coverage routes (components_api.c) */
} pp_bap_ctx;

/* ctx must outlive the router. Registers the component routes too when ctx->comps is set. */
void pp_bap_register(emu_router *r, pp_bap_ctx *ctx);
/* The BAP authentication precheck (ud: a pp_bap_ctx), for components_api.c. */
void pp_bap_precheck(emu_req *req, void *ud);
/* true when ?api-version= is present; else answers 400 MissingApiVersionParameter. */
bool pp_bap_check_version(emu_req *req);
/* components_api.c: the component, coverage and F&O integration routes. */
void pp_comps_api_register(emu_router *r, pp_bap_ctx *ctx);

#endif
