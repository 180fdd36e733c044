/*
 * components_api: the composition of an environment and its CMK coverage over HTTP (an
 * emulator extension of the BAP API; see components.h and the README). Under
 * /providers/Microsoft.BusinessAppPlatform[/scopes/admin]/environments/{id}:
 *   GET    /coverage                                   the coverage report
 *   GET    /components            POST /components    list / add {kind, name?, geo?, rcs?,
 *                                                      standalone?}  -> 201
 *   GET    /components/{cid}      DELETE              one component / remove it (204)
 *   PUT    /components/{cid}/records/{rid}             write a record (a JSON object) -> 200
 *   GET    /components/{cid}/records/{rid}             read it (423 while its key is locked)
 *   GET    /financeOperationsIntegration              {"enabled": bool}
 *   POST   /financeOperationsIntegration/enable        400 CustomerManagedKeyEnabledBefore
 *                                                      Integration when CMK is already on
 * Every route needs an api-version and authenticates like the rest of BAP.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bap_api.h"
#include "components.h"
#include "util.h"

#define BAP "/providers/Microsoft.BusinessAppPlatform"
#define ADMIN BAP "/scopes/admin"

static void send_comp_error(emu_req *req, pp_comp_status st, const pp_comp_err *e)
{
    switch (st) {
    case PP_COMP_ERR_BAD_PARAM:
        emu_send_error(req, 400, "InvalidRequest", "%s", e->msg);
        break;
    case PP_COMP_ERR_SEQUENCE:
        emu_send_error(req, 400, "CustomerManagedKeyEnabledBeforeIntegration", "%s", e->msg);
        break;
    case PP_COMP_ERR_NOT_FOUND:
        emu_send_error(req, 404,
                       strstr(e->msg, "Environment '") == e->msg ? "EnvironmentNotFound"
                                                                 : "NotFound",
                       "%s", e->msg);
        break;
    case PP_COMP_ERR_LOCKED:
        emu_send_error(req, 423, "EnvironmentLocked", "%s", e->msg);
        break;
    case PP_COMP_ERR_DISABLED:
        emu_send_error(req, 423, "EnvironmentDisabled", "%s", e->msg);
        break;
    case PP_COMP_ERR_BUSY:
        emu_send_error(req, 409, "OperationInProgress", "%s", e->msg);
        break;
    default:
        emu_send_error(req, 500, "InternalServerError", "%s", e->msg);
        break;
    }
}

static json_t *comp_json(const pp_component *k)
{
    char created[40];
    emu_time_rfc3339(k->created, created, sizeof created);
    json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "id", k->id, "environment", k->env, "kind",
                          k->kind, "name", k->name, "dataKey",
                          k->slot == PP_COMP_SLOT_ENVIRONMENT ? "environment" : "platform",
                          "createdTime", created);
    if (k->geo[0])
        json_object_set_new(j, "geo", json_string(k->geo));
    if (k->standalone)
        json_object_set_new(j, "standalone", json_true());
    if (!strcmp(k->kind, "taxCalculation") || !strcmp(k->kind, "electronicInvoicing"))
        json_object_set_new(j, "rcs", json_string(k->rcs_platform ? "platform" : "standalone"));
    return j;
}

static void h_coverage(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    json_t *report = NULL;
    pp_comp_err e = {{0}};
    pp_comp_status st = pp_comp_coverage(c->comps, emu_req_param(req, 0), &report, &e);
    if (st != PP_COMP_OK) {
        send_comp_error(req, st, &e);
        return;
    }
    emu_send_json(req, 200, report);
}

static void h_comp_list(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    pp_component *all = NULL;
    size_t n = 0;
    pp_comp_err e = {{0}};
    pp_comp_status st = pp_comp_list(c->comps, emu_req_param(req, 0), &all, &n, &e);
    if (st != PP_COMP_OK) {
        send_comp_error(req, st, &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, comp_json(&all[i]));
    free(all);
    emu_send_json(req, 200, json_pack("{s:o}", "value", arr));
}

static void h_comp_add(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    char jerr[256];
    json_t *body = emu_req_json(req, false, jerr, sizeof jerr);
    if (!body || !json_is_object(body)) {
        emu_send_error(req, 400, "InvalidRequestContent", "%s",
                       body ? "The body must be a JSON object." : jerr);
        json_decref(body);
        return;
    }
    json_t *sa = json_object_get(body, "standalone");
    if (sa && !json_is_boolean(sa)) {
        emu_send_error(req, 400, "InvalidRequest", "standalone must be true or false.");
        json_decref(body);
        return;
    }
    pp_comp_spec s = {.kind = json_string_value(json_object_get(body, "kind")),
                      .name = json_string_value(json_object_get(body, "name")),
                      .geo = json_string_value(json_object_get(body, "geo")),
                      .rcs = json_string_value(json_object_get(body, "rcs")),
                      .standalone = json_is_true(sa)};
    pp_component k;
    pp_comp_err e = {{0}};
    pp_comp_status st = pp_comp_add(c->comps, emu_req_param(req, 0), &s, &k, &e);
    json_decref(body);
    if (st != PP_COMP_OK) {
        send_comp_error(req, st, &e);
        return;
    }
    emu_send_json(req, 201, comp_json(&k));
}

static void h_comp_get(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    pp_component k;
    pp_comp_err e = {{0}};
    pp_comp_status st = pp_comp_get(c->comps, emu_req_param(req, 0), emu_req_param(req, 1), &k, &e);
    if (st != PP_COMP_OK) {
        send_comp_error(req, st, &e);
        return;
    }
    emu_send_json(req, 200, comp_json(&k));
}

static void h_comp_delete(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    pp_comp_err e = {{0}};
    pp_comp_status st = pp_comp_delete(c->comps, emu_req_param(req, 0), emu_req_param(req, 1), &e);
    if (st != PP_COMP_OK) {
        send_comp_error(req, st, &e);
        return;
    }
    emu_send_empty(req, 204);
}

static void h_rec_put(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    char jerr[256];
    json_t *body = emu_req_json(req, false, jerr, sizeof jerr);
    if (!body) {
        emu_send_error(req, 400, "InvalidRequestContent", "%s", jerr);
        return;
    }
    pp_comp_err e = {{0}};
    pp_comp_status st = pp_comp_record_put(c->comps, emu_req_param(req, 0), emu_req_param(req, 1),
                                           emu_req_param(req, 2), body, &e);
    if (st != PP_COMP_OK) {
        json_decref(body);
        send_comp_error(req, st, &e);
        return;
    }
    emu_send_json(req, 200, body);
}

static void h_rec_get(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    json_t *row = NULL;
    pp_comp_err e = {{0}};
    pp_comp_status st = pp_comp_record_get(c->comps, emu_req_param(req, 0), emu_req_param(req, 1),
                                           emu_req_param(req, 2), &row, &e);
    if (st != PP_COMP_OK) {
        send_comp_error(req, st, &e);
        return;
    }
    emu_send_json(req, 200, row);
}

static void h_fno_get(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    pp_environment ev;
    if (pp_env_get(c->envs, emu_req_param(req, 0), &ev) != PP_ENV_OK) {
        emu_send_error(req, 404, "EnvironmentNotFound", "Environment '%.40s' does not exist.",
                       emu_req_param(req, 0));
        return;
    }
    emu_send_json(req, 200, json_pack("{s:b}", "enabled", pp_comp_fno_enabled(c->comps, ev.id)));
}

static void h_fno_enable(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    pp_comp_err e = {{0}};
    pp_comp_status st = pp_comp_fno_enable(c->comps, emu_req_param(req, 0), &e);
    if (st != PP_COMP_OK) {
        send_comp_error(req, st, &e);
        return;
    }
    emu_send_json(req, 200, json_pack("{s:b}", "enabled", 1));
}

void pp_comps_api_register(emu_router *r, pp_bap_ctx *ctx)
{
    static const char *const routes[][7] = {
        {BAP "/environments/{id}/coverage", BAP "/environments/{id}/components",
         BAP "/environments/{id}/components/{cid}",
         BAP "/environments/{id}/components/{cid}/records/{rid}",
         BAP "/environments/{id}/financeOperationsIntegration",
         BAP "/environments/{id}/financeOperationsIntegration/enable", NULL},
        {ADMIN "/environments/{id}/coverage", ADMIN "/environments/{id}/components",
         ADMIN "/environments/{id}/components/{cid}",
         ADMIN "/environments/{id}/components/{cid}/records/{rid}",
         ADMIN "/environments/{id}/financeOperationsIntegration",
         ADMIN "/environments/{id}/financeOperationsIntegration/enable", NULL},
    };
    for (int i = 0; i < 2; i++) {
        emu_router_add(r, "GET", routes[i][0], 0, pp_bap_precheck, h_coverage, ctx);
        emu_router_add(r, "GET", routes[i][1], 0, pp_bap_precheck, h_comp_list, ctx);
        emu_router_add(r, "POST", routes[i][1], 0, pp_bap_precheck, h_comp_add, ctx);
        emu_router_add(r, "GET", routes[i][2], 0, pp_bap_precheck, h_comp_get, ctx);
        emu_router_add(r, "DELETE", routes[i][2], 0, pp_bap_precheck, h_comp_delete, ctx);
        /* records may need a first-use platform data key (HSM wrap): slow */
        emu_router_add(r, "PUT", routes[i][3], EMU_ROUTE_SLOW, pp_bap_precheck, h_rec_put, ctx);
        emu_router_add(r, "GET", routes[i][3], EMU_ROUTE_SLOW, pp_bap_precheck, h_rec_get, ctx);
        emu_router_add(r, "GET", routes[i][4], 0, pp_bap_precheck, h_fno_get, ctx);
        emu_router_add(r, "POST", routes[i][5], EMU_ROUTE_SLOW, pp_bap_precheck, h_fno_enable, ctx);
    }
}
