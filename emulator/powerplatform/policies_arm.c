#include "policies_arm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth/principal.h"
#include "log.h"
#include "util.h"

#define API_VERSIONS "2020-10-30, 2020-10-30-preview"
#define MAX_TAGS 50

/* ---- helpers ------------------------------------------------------------------------------- */

/* api-version present and one this provider knows; false = answered. */
static bool check_version(emu_req *req)
{
    if (!arm_check_api_version(req))
        return false;
    const char *v = emu_req_query(req, "api-version");
    if (!strcmp(v, "2020-10-30") || !strcmp(v, "2020-10-30-preview"))
        return true;
    char ev[80];
    emu_log_escape(v, 40, ev, sizeof ev);
    arm_send_error(req, 400, "InvalidApiVersionParameter", NULL,
                   "The api-version '%s' is invalid. The supported versions are '" API_VERSIONS
                   "' for resource type '" PP_POLICY_TYPE "'.",
                   ev);
    return false;
}

/* The one table from domain status to HTTP status and ARM code. */
static void send_pp_error(emu_req *req, pp_status st, const pp_err *e)
{
    const char *target = e->target[0] ? e->target : NULL;
    switch (st) {
    case PP_ERR_BAD_PARAM:
        arm_send_error(req, 400, "BadRequest", target, "%s", e->msg);
        break;
    case PP_ERR_BAD_LOCATION:
        arm_send_error(req, 400, "LocationNotAvailableForResourceType", target, "%s", e->msg);
        break;
    case PP_ERR_CHANGE_NOT_ALLOWED:
        arm_send_error(req, 400, "PropertyChangeNotAllowed", target, "%s", e->msg);
        break;
    case PP_ERR_NOT_FOUND:
        arm_send_error(req, 404, "ResourceNotFound", target, "%s", e->msg);
        break;
    case PP_ERR_LINKED:
        arm_send_error(req, 409, "EnterprisePolicyInUse", target, "%s", e->msg);
        break;
    case PP_ERR_CONFLICT:
        arm_send_error(req, 409, "Conflict", target, "%s", e->msg);
        break;
    default:
        arm_send_error(req, 500, "InternalServerError", NULL, "%s", e->msg);
        break;
    }
}

static void not_found(emu_req *req, const char *rg, const char *name)
{
    char en[160], er[200];
    emu_log_escape(name, 128, en, sizeof en);
    emu_log_escape(rg, 90, er, sizeof er);
    arm_send_error(req, 404, "ResourceNotFound", NULL,
                   "The Resource '" PP_POLICY_TYPE "/%s' under resource group '%s' was not "
                   "found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
                   en, er);
}

static bool rg_or_404(emu_req *req, pp_arm_ctx *c, const char *sub, const char *rg)
{
    if (armres_rg_exists(c->arm, sub, rg, NULL, 0))
        return true;
    char er[200];
    emu_log_escape(rg, 90, er, sizeof er);
    arm_send_error(req, 404, "ResourceGroupNotFound", NULL,
                   "Resource group '%s' could not be found.", er);
    return false;
}

/* systemData's who for the caller ("" when unknown). */
static void caller_of(const emu_req *req, char *by, size_t bylen, char *type, size_t typelen)
{
    const auth_principal *p = req->principal;
    by[0] = type[0] = '\0';
    if (!p)
        return;
    const char *who = p->kind == AUTH_KIND_USER ? (p->name[0] ? p->name : p->oid)
                                                : (p->appid[0] ? p->appid : p->oid);
    snprintf(by, bylen, "%s", who);
    snprintf(type, typelen, "%s", auth_principal_kind_str(p->kind));
}

static json_t *policy_json(pp_arm_ctx *c, const pp_policy *pol)
{
    char *id = pp_policy_arm_id(pol);
    json_t *identity;
    if (pol->has_identity)
        identity = json_pack("{s:s,s:s,s:s,s:s}", "type", "SystemAssigned", "principalId",
                             pol->identity_oid, "systemAssignedIdentityPrincipalId",
                             pol->identity_oid, "tenantId", pol->tenant);
    else
        identity = json_pack("{s:s}", "type", "None");
    json_t *enc = json_null();
    if (pol->has_encryption)
        enc = json_pack("{s:s,s:{s:s,s:{s:s,s:s}}}", "state",
                        pol->encryption_enabled ? "Enabled" : "Disabled", "keyVault", "id",
                        pol->vault_id, "key", "name", pol->key_name, "version", pol->key_version);
    json_t *props =
        json_pack("{s:s,s:o,s:n,s:n,s:s}", "systemId", pol->system_id, "encryption", enc, "lockbox",
                  "networkInjection", "healthStatus", pp_health_str(pol->health));
    json_t *tags = pp_policy_tags(c->pp, pol->subscription, pol->resource_group, pol->name);
    json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:o,s:o}", "id", id, "name", pol->name,
                          "type", PP_POLICY_TYPE, "location", pol->location, "kind",
                          pp_kind_str(pol->kind), "tags", tags ? tags : json_object(), "identity",
                          identity, "properties", props, "systemData",
                          arm_system_data(pol->created_by, pol->created_by_type, pol->created,
                                          pol->modified_by, pol->modified_by_type, pol->modified));
    free(id);
    return j;
}

/* A string member: absent/null -> *out untouched, true; a string -> *out, true; else 400. */
static bool opt_string(emu_req *req, const json_t *obj, const char *key, const char *target,
                       const char **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_string(v)) {
        arm_send_error(req, 400, "BadRequest", target, "%s must be a string.", target);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

/* Overlays the members the body has onto spec (PUT starts from a blank spec, PATCH from the
 * stored policy). false = answered. */
static bool spec_from_body(emu_req *req, const json_t *body, pp_policy_spec *s)
{
    const char *loc = NULL, *kind = NULL, *itype = NULL;
    if (!opt_string(req, body, "location", "location", &loc) ||
        !opt_string(req, body, "kind", "kind", &kind))
        return false;
    if (loc)
        s->location = loc;
    if (kind && !pp_kind_parse(kind, &s->kind)) {
        char ek[80];
        emu_log_escape(kind, 40, ek, sizeof ek);
        arm_send_error(req, 400, "BadRequest", "kind",
                       "The kind '%s' is invalid. Allowed kinds: Encryption, Lockbox, "
                       "PrivateEndpoint, NetworkInjection, Identity.",
                       ek);
        return false;
    }
    json_t *identity = json_object_get(body, "identity");
    if (identity && !json_is_null(identity)) {
        if (!json_is_object(identity) ||
            !opt_string(req, identity, "type", "identity.type", &itype))
            return false;
        if (itype && !strcasecmp(itype, "SystemAssigned")) {
            s->identity = true;
        } else if (itype && !strcasecmp(itype, "None")) {
            s->identity = false;
        } else {
            arm_send_error(req, 400, "BadRequest", "identity.type",
                           "identity.type must be 'SystemAssigned' or 'None'.");
            return false;
        }
    }
    json_t *tags = json_object_get(body, "tags");
    if (tags) {
        if (!arm_tags_ok(req, tags))
            return false;
        s->set_tags = true;
        s->tags = json_is_null(tags) ? NULL : tags;
    }
    json_t *props = json_object_get(body, "properties");
    if (!props || json_is_null(props))
        return true;
    if (!json_is_object(props)) {
        arm_send_error(req, 400, "BadRequest", "properties", "properties must be an object.");
        return false;
    }
    static const char *const UNSUPPORTED[] = {"lockbox", "networkInjection"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(props, UNSUPPORTED[i]);
        if (v && !json_is_null(v)) {
            arm_send_error(req, 400, "BadRequest", NULL,
                           "properties.%s is not supported by cmkemu; send null (only "
                           "customer-managed key encryption is emulated).",
                           UNSUPPORTED[i]);
            return false;
        }
    }
    json_t *enc = json_object_get(props, "encryption");
    if (!enc)
        return true;
    if (json_is_null(enc)) {
        s->has_encryption = false;
        return true;
    }
    if (!json_is_object(enc)) {
        arm_send_error(req, 400, "BadRequest", "properties.encryption",
                       "properties.encryption must be an object.");
        return false;
    }
    if (!s->has_encryption) { /* new encryption block: defaults */
        s->has_encryption = true;
        s->encryption_enabled = true;
        s->vault_id = s->key_name = s->key_version = NULL;
    }
    const char *state = NULL;
    if (!opt_string(req, enc, "state", "properties.encryption.state", &state))
        return false;
    if (state && !strcasecmp(state, "Enabled")) {
        s->encryption_enabled = true;
    } else if (state && !strcasecmp(state, "Disabled")) {
        s->encryption_enabled = false;
    } else if (state) {
        arm_send_error(req, 400, "BadRequest", "properties.encryption.state",
                       "properties.encryption.state must be 'Enabled' or 'Disabled'.");
        return false;
    }
    json_t *kv = json_object_get(enc, "keyVault");
    if (!kv || json_is_null(kv))
        return true;
    if (!json_is_object(kv)) {
        arm_send_error(req, 400, "BadRequest", "properties.encryption.keyVault",
                       "properties.encryption.keyVault must be an object.");
        return false;
    }
    if (!opt_string(req, kv, "id", "properties.encryption.keyVault.id", &s->vault_id))
        return false;
    json_t *key = json_object_get(kv, "key");
    if (!key || json_is_null(key))
        return true;
    if (!json_is_object(key)) {
        arm_send_error(req, 400, "BadRequest", "properties.encryption.keyVault.key",
                       "properties.encryption.keyVault.key must be an object.");
        return false;
    }
    return opt_string(req, key, "name", "properties.encryption.keyVault.key.name", &s->key_name) &&
           opt_string(req, key, "version", "properties.encryption.keyVault.key.version",
                      &s->key_version);
}

/* ---- handlers ------------------------------------------------------------------------------- */

static void store_and_answer(emu_req *req, pp_arm_ctx *c, pp_policy_spec *s)
{
    char by[128], type[24];
    caller_of(req, by, sizeof by, type, sizeof type);
    s->by = by;
    s->by_type = type;
    pp_err e = {{0}, {0}};
    pp_policy pol;
    bool created = false;
    pp_status st = pp_policy_put(c->pp, s, &pol, &created, &e);
    if (st != PP_OK)
        send_pp_error(req, st, &e);
    else
        emu_send_json(req, created ? 201 : 200, policy_json(c, &pol));
}

static void h_put(emu_req *req, void *ud)
{
    pp_arm_ctx *c = ud;
    if (!check_version(req))
        return;
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1),
               *name = emu_req_param(req, 2);
    if (!rg_or_404(req, c, sub, rg))
        return;
    json_t *body = arm_req_json(req, false);
    if (!body)
        return;
    pp_policy_spec s = {.subscription = sub, .resource_group = rg, .name = name, .set_tags = true};
    json_t *kind = json_object_get(body, "kind");
    if (!kind || json_is_null(kind))
        arm_send_error(req, 400, "BadRequest", "kind",
                       "The kind is required: Encryption, Lockbox, PrivateEndpoint, "
                       "NetworkInjection or Identity.");
    else if (!json_object_get(body, "location"))
        arm_send_error(req, 400, "LocationRequired", "location",
                       "The location property is required for this definition: one of the "
                       "Power Platform regions %s.",
                       pp_locations_str());
    else if (spec_from_body(req, body, &s))
        store_and_answer(req, c, &s);
    json_decref(body);
}

static void h_patch(emu_req *req, void *ud)
{
    pp_arm_ctx *c = ud;
    if (!check_version(req))
        return;
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1),
               *name = emu_req_param(req, 2);
    pp_policy cur;
    if (pp_policy_get(c->pp, sub, rg, name, &cur) != PP_OK) {
        not_found(req, rg, name);
        return;
    }
    json_t *body = arm_req_json(req, true);
    if (!body)
        return;
    pp_policy_spec s = {.subscription = cur.subscription,
                        .resource_group = cur.resource_group,
                        .name = cur.name,
                        .location = cur.location,
                        .kind = cur.kind,
                        .identity = cur.has_identity,
                        .has_encryption = cur.has_encryption,
                        .encryption_enabled = cur.encryption_enabled,
                        .vault_id = cur.has_encryption ? cur.vault_id : NULL,
                        .key_name = cur.has_encryption ? cur.key_name : NULL,
                        .key_version = cur.has_encryption ? cur.key_version : NULL,
                        .update_only = true};
    if (spec_from_body(req, body, &s))
        store_and_answer(req, c, &s);
    json_decref(body);
}

static void h_get(emu_req *req, void *ud)
{
    pp_arm_ctx *c = ud;
    if (!check_version(req))
        return;
    pp_policy pol;
    if (pp_policy_get(c->pp, emu_req_param(req, 0), emu_req_param(req, 1), emu_req_param(req, 2),
                      &pol) != PP_OK)
        not_found(req, emu_req_param(req, 1), emu_req_param(req, 2));
    else
        emu_send_json(req, 200, policy_json(c, &pol));
}

static void h_delete(emu_req *req, void *ud)
{
    pp_arm_ctx *c = ud;
    if (!check_version(req))
        return;
    pp_err e = {{0}, {0}};
    pp_status st = pp_policy_delete(c->pp, emu_req_param(req, 0), emu_req_param(req, 1),
                                    emu_req_param(req, 2), false, &e);
    if (st == PP_ERR_NOT_FOUND)
        emu_send_empty(req, 204); /* ARM: deleting what is not there is a success */
    else if (st != PP_OK)
        send_pp_error(req, st, &e);
    else
        emu_send_empty(req, 200);
}

static void list_policies(emu_req *req, pp_arm_ctx *c, const char *sub, const char *rg)
{
    pp_policy *all = NULL;
    size_t n = pp_policy_list(c->pp, sub, rg, &all);
    json_t *value = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(value, policy_json(c, &all[i]));
    free(all);
    emu_send_json(req, 200, json_pack("{s:o}", "value", value));
}

static void h_list_rg(emu_req *req, void *ud)
{
    pp_arm_ctx *c = ud;
    if (!check_version(req))
        return;
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1);
    if (rg_or_404(req, c, sub, rg))
        list_policies(req, c, sub, rg);
}

static void h_list_sub(emu_req *req, void *ud)
{
    if (!check_version(req))
        return;
    list_policies(req, ud, emu_req_param(req, 0), NULL);
}

/* A resource group is being deleted: its policies (and their identities) go with it, linked
 * or not; linked environments then find their policy gone. */
static void on_rg_delete(const char *sub, const char *rg, void *ud)
{
    pp_arm_ctx *c = ud;
    pp_policy *all = NULL;
    size_t n = pp_policy_list(c->pp, sub, rg, &all);
    for (size_t i = 0; i < n; i++) {
        pp_err e = {{0}, {0}};
        if (pp_policy_delete(c->pp, sub, rg, all[i].name, true, &e) != PP_OK)
            emu_log(EMU_LOG_WARN, "pp", "deleting resource group %s: policy %s: %s", rg,
                    all[i].name, e.msg);
    }
    free(all);
}

void pp_policies_arm_register(emu_router *r, pp_arm_ctx *ctx)
{
    emu_handler_fn pre = arm_precheck;
#define POLICIES                                                                                   \
    "/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.PowerPlatform/"                  \
    "enterprisePolicies"
    emu_router_add(r, "PUT", POLICIES "/{name}", 0, pre, h_put, ctx);
    emu_router_add(r, "GET", POLICIES "/{name}", 0, pre, h_get, ctx);
    emu_router_add(r, "PATCH", POLICIES "/{name}", 0, pre, h_patch, ctx);
    emu_router_add(r, "DELETE", POLICIES "/{name}", 0, pre, h_delete, ctx);
    emu_router_add(r, "GET", POLICIES, 0, pre, h_list_rg, ctx);
    emu_router_add(r, "GET",
                   "/subscriptions/{sub}/providers/Microsoft.PowerPlatform/enterprisePolicies", 0,
                   pre, h_list_sub, ctx);
#undef POLICIES
    armres_on_rg_delete(ctx->arm, on_rg_delete, ctx);
}
