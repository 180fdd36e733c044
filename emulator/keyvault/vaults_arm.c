#include "vaults_arm.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "access.h"
#include "auth/principal.h"
#include "log.h"
#include "util.h"

#define VAULT_TYPE "Microsoft.KeyVault/vaults"
#define DEFAULT_PAGE 100
#define MAX_PAGE 1000

/* ---- helpers ------------------------------------------------------------------------------- */

static const char *kind_str(auth_principal_kind k)
{
    switch (k) {
    case AUTH_KIND_USER: return "User";
    case AUTH_KIND_SERVICE_PRINCIPAL: return "Application";
    case AUTH_KIND_MANAGED_IDENTITY: return "ManagedIdentity";
    }
    return "Application";
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
    snprintf(type, typelen, "%s", kind_str(p->kind));
}

static char *vault_id(const kv_vault_info *i)
{
    arm_id id;
    memset(&id, 0, sizeof id);
    snprintf(id.subscription, sizeof id.subscription, "%s", i->subscription);
    snprintf(id.resource_group, sizeof id.resource_group, "%s", i->resource_group);
    snprintf(id.ns, sizeof id.ns, "Microsoft.KeyVault");
    snprintf(id.type, sizeof id.type, "vaults");
    snprintf(id.name, sizeof id.name, "%s", i->name);
    return arm_id_build(&id);
}

/* https://{name}.vault.localhost[:port]/ with the port the client used. */
static char *vault_uri(const emu_req *req, const char *name)
{
    const char *h = req->host ? req->host : "";
    const char *port = NULL;
    if (h[0] == '[') {
        const char *e = strchr(h, ']');
        port = e && e[1] == ':' ? e + 2 : NULL;
    } else {
        const char *c = strchr(h, ':');
        port = c ? c + 1 : NULL;
    }
    if (port && *port)
        return emu_xasprintf("https://%s.vault.localhost:%.8s/", name, port);
    return emu_xasprintf("https://%s.vault.localhost/", name);
}

static json_t *policies_json(const kv_access_policy *p, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_pack("{s:s,s:s}", "tenantId", p[i].tenant, "objectId", p[i].object_id);
        if (p[i].application_id[0])
            json_object_set_new(o, "applicationId", json_string(p[i].application_id));
        json_object_set_new(o, "permissions",
                            p[i].permissions ? json_deep_copy(p[i].permissions) : json_object());
        json_array_append_new(arr, o);
    }
    return arr;
}

static json_t *vault_json(const emu_req *req, const kv_vault_state *s)
{
    const kv_vault_info *i = &s->info;
    char *id = vault_id(i), *uri = vault_uri(req, i->name);
    json_t *props = json_pack(
        "{s:s,s:{s:s,s:s},s:o,s:s,s:b,s:b,s:b,s:b,s:i,s:b,s:s,s:s}", "tenantId", i->tenant, "sku",
        "family", "A", "name", i->sku, "accessPolicies", policies_json(s->policies, s->npolicies),
        "vaultUri", uri, "enabledForDeployment", 0, "enabledForDiskEncryption", 0,
        "enabledForTemplateDeployment", 0, "enableSoftDelete", i->soft_delete,
        "softDeleteRetentionInDays", i->retention_days, "enableRbacAuthorization", i->rbac,
        "provisioningState", "Succeeded", "publicNetworkAccess", i->public_network_access);
    if (i->purge_protection)
        json_object_set_new(props, "enablePurgeProtection", json_true());
    if (s->network_acls)
        json_object_set_new(props, "networkAcls", json_deep_copy(s->network_acls));
    json_t *v = json_pack("{s:s,s:s,s:s,s:s,s:o,s:o,s:o}", "id", id, "name", i->name, "type",
                          VAULT_TYPE, "location", i->location, "tags",
                          s->tags ? json_deep_copy(s->tags) : json_object(), "systemData",
                          arm_system_data(i->created_by, i->created_by_type, i->created,
                                          i->modified_by, i->modified_by_type, i->updated),
                          "properties", props);
    free(id);
    free(uri);
    return v;
}

static json_t *deleted_json(const kv_vault_state *s)
{
    const kv_vault_info *i = &s->info;
    char *vid = vault_id(i);
    char *id = emu_xasprintf("/subscriptions/%s/providers/Microsoft.KeyVault/locations/%s/"
                             "deletedVaults/%s",
                             i->subscription, i->location, i->name);
    char dd[40], sp[40];
    emu_time_rfc3339(i->deletion_date, dd, sizeof dd);
    emu_time_rfc3339(i->scheduled_purge, sp, sizeof sp);
    json_t *j = json_pack("{s:s,s:s,s:s,s:{s:s,s:s,s:s,s:s,s:o,s:b}}", "id", id, "name", i->name,
                          "type", "Microsoft.KeyVault/deletedVaults", "properties", "vaultId", vid,
                          "location", i->location, "deletionDate", dd, "scheduledPurgeDate", sp,
                          "tags", s->tags ? json_deep_copy(s->tags) : json_object(),
                          "purgeProtectionEnabled", i->purge_protection);
    free(vid);
    free(id);
    return j;
}

static void send_kv_error(emu_req *req, kv_status st, const char *msg)
{
    switch (st) {
    case KV_ERR_BAD_PARAM: arm_send_error(req, 400, "BadRequest", NULL, "%s", msg); break;
    case KV_ERR_VAULT_EXISTS:
        arm_send_error(req, 409, "VaultAlreadyExists", NULL, "%s", msg);
        break;
    case KV_ERR_VAULT_NOT_FOUND: arm_send_error(req, 404, "ResourceNotFound", NULL, "%s", msg); break;
    case KV_ERR_PURGE_PROTECTED:
        arm_send_error(req, 409, "InvalidOperation", NULL, "%s", msg);
        break;
    case KV_ERR_CONFLICT: arm_send_error(req, 409, "Conflict", NULL, "%s", msg); break;
    default: arm_send_error(req, 500, "InternalServerError", NULL, "%s", msg); break;
    }
}

static void vault_not_found(emu_req *req, const char *rg, const char *name)
{
    char en[100], er[200];
    emu_log_escape(name, 64, en, sizeof en);
    emu_log_escape(rg, 90, er, sizeof er);
    arm_send_error(req, 404, "ResourceNotFound", NULL,
                   "The Resource 'Microsoft.KeyVault/vaults/%s' under resource group '%s' was "
                   "not found. For more details please go to "
                   "https://aka.ms/ARMResourceNotFoundFix",
                   en, er);
}

/* The live vault named in the path, in the path's subscription and resource group. */
static void rg_not_found(emu_req *req, const char *rg)
{
    char er[200];
    emu_log_escape(rg, 90, er, sizeof er);
    arm_send_error(req, 404, "ResourceGroupNotFound", NULL, "Resource group '%s' could not be found.",
                   er);
}

/* The live vault of the route, else 404: ResourceGroupNotFound when the group does not exist
 * (as ARM answers before looking at the resource), else ResourceNotFound. */
static bool load_vault(emu_req *req, kv_arm_ctx *c, kv_vault_state *s)
{
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1),
               *name = emu_req_param(req, 2);
    if (kv_vault_state_get(c->kv, name, s) == KV_OK && !s->info.deleted &&
        !strcasecmp(s->info.subscription, sub) && !strcasecmp(s->info.resource_group, rg))
        return true;
    kv_vault_state_cleanup(s);
    if (c->arm && !armres_rg_exists(c->arm, sub, rg, NULL, 0))
        rg_not_found(req, rg);
    else
        vault_not_found(req, rg, name);
    return false;
}

static bool valid_vault_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 3 || n > 24 || !isalpha((unsigned char)s[0]) || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)s[i]) && s[i] != '-')
            return false;
        if (s[i] == '-' && s[i + 1] == '-')
            return false;
    }
    return true;
}

/* ---- access policies (JSON <-> model) ----------------------------------------------------- */

/* A string array with duplicates (case-insensitive) dropped; keys names canonicalised. */
static json_t *perm_list_norm(const json_t *arr, bool keys)
{
    json_t *out = json_array();
    size_t i, j;
    json_t *it, *x;
    json_array_foreach(arr, i, it)
    {
        const char *s = json_string_value(it);
        if (!s)
            continue;
        uint32_t b;
        if (keys && kv_perm_from_name(s, &b))
            s = b == KV_PERM_ALL ? "all" : kv_perm_name(b);
        bool dup = false;
        json_array_foreach(out, j, x) dup |= !strcasecmp(json_string_value(x), s);
        if (!dup)
            json_array_append_new(out, json_string(s));
    }
    return out;
}

static const char *const PERM_KINDS[] = {"keys", "secrets", "certificates", "storage"};

/* Parses one access policy entry; false + message into err. */
static bool policy_parse(const json_t *j, size_t idx, kv_access_policy *out, char *err,
                         size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *tid = json_string_value(json_object_get(j, "tenantId"));
    const char *oid = json_string_value(json_object_get(j, "objectId"));
    json_t *app = json_object_get(j, "applicationId");
    json_t *perms = json_object_get(j, "permissions");
    if (!json_is_object(j) || !tid || !*tid || strlen(tid) >= sizeof out->tenant || !oid ||
        !*oid || strlen(oid) >= sizeof out->object_id) {
        snprintf(err, errlen,
                 "accessPolicies[%zu] needs tenantId and objectId (GUID strings).", idx);
        return false;
    }
    if (app && !json_is_null(app) &&
        (!json_is_string(app) || json_string_length(app) >= sizeof out->application_id)) {
        snprintf(err, errlen, "accessPolicies[%zu].applicationId must be a GUID string.", idx);
        return false;
    }
    if (!json_is_object(perms)) {
        snprintf(err, errlen, "accessPolicies[%zu].permissions is required.", idx);
        return false;
    }
    kv_err e = {{0}};
    if (!kv_perm_parse_keys(json_object_get(perms, "keys"), &out->keys, &e)) {
        snprintf(err, errlen, "accessPolicies[%zu]: %.400s", idx, e.msg);
        return false;
    }
    snprintf(out->tenant, sizeof out->tenant, "%s", tid);
    snprintf(out->object_id, sizeof out->object_id, "%s", oid);
    if (json_is_string(app))
        snprintf(out->application_id, sizeof out->application_id, "%s", json_string_value(app));
    out->permissions = json_object();
    for (size_t k = 0; k < 4; k++) {
        json_t *l = json_object_get(perms, PERM_KINDS[k]);
        if (json_is_array(l))
            json_object_set_new(out->permissions, PERM_KINDS[k], perm_list_norm(l, k == 0));
        else if (l && !json_is_null(l)) {
            snprintf(err, errlen, "accessPolicies[%zu].permissions.%s must be an array.", idx,
                     PERM_KINDS[k]);
            json_decref(out->permissions);
            out->permissions = NULL;
            return false;
        }
    }
    return true;
}

static void policies_free(kv_access_policy *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_decref(p[i].permissions);
    free(p);
}

/* Parses an accessPolicies array (NULL/absent = empty); false + answer sent. */
static bool policies_parse(emu_req *req, const json_t *arr, kv_access_policy **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!arr || json_is_null(arr))
        return true;
    if (!json_is_array(arr)) {
        arm_send_error(req, 400, "BadRequest", "properties.accessPolicies",
                       "accessPolicies must be an array.");
        return false;
    }
    size_t cnt = json_array_size(arr);
    if (cnt > KV_MAX_ACCESS_POLICIES) {
        arm_send_error(req, 400, "BadRequest", "properties.accessPolicies",
                       "The number of access policies (%zu) exceeds the maximum of %d access "
                       "policies per vault.",
                       cnt, KV_MAX_ACCESS_POLICIES);
        return false;
    }
    kv_access_policy *p = cnt ? emu_xcalloc(cnt, sizeof *p) : NULL;
    char err[512];
    for (size_t i = 0; i < cnt; i++)
        if (!policy_parse(json_array_get(arr, i), i, &p[i], err, sizeof err)) {
            policies_free(p, i);
            arm_send_error(req, 400, "BadRequest", "properties.accessPolicies", "%s", err);
            return false;
        }
    *out = p;
    *n = cnt;
    return true;
}

/* Recomputes the keys mask from the permissions JSON. */
static void policy_refresh_mask(kv_access_policy *p)
{
    kv_err e;
    uint32_t m = 0;
    kv_perm_parse_keys(json_object_get(p->permissions, "keys"), &m, &e);
    p->keys = m;
}

static bool policy_same_principal(const kv_access_policy *a, const kv_access_policy *b)
{
    return !strcasecmp(a->tenant, b->tenant) && !strcasecmp(a->object_id, b->object_id) &&
           !strcasecmp(a->application_id, b->application_id);
}

static bool policy_empty(const kv_access_policy *p)
{
    for (size_t k = 0; k < 4; k++)
        if (json_array_size(json_object_get(p->permissions, PERM_KINDS[k])))
            return false;
    return true;
}

/* ---- validation of vault properties (PUT and PATCH) ----------------------------------------- */

/* Applies the properties object onto s (create: defaults already set). false = answered. */
static bool apply_properties(emu_req *req, const json_t *props, kv_vault_state *s, bool patch)
{
    kv_vault_info *i = &s->info;
    json_t *v;
    if ((v = json_object_get(props, "tenantId")) && !json_is_null(v)) {
        if (!json_is_string(v) || !json_string_length(v) || json_string_length(v) >= 40) {
            arm_send_error(req, 400, "BadRequest", "properties.tenantId",
                           "The tenantId '%s' is not a valid GUID.",
                           json_is_string(v) ? json_string_value(v) : "(not a string)");
            return false;
        }
        snprintf(i->tenant, sizeof i->tenant, "%s", json_string_value(v));
    } else if (!patch) {
        arm_send_error(req, 400, "BadRequest", "properties.tenantId",
                       "The parameter properties.tenantId is required: the Microsoft Entra "
                       "tenant that authenticates requests to the vault.");
        return false;
    }
    if ((v = json_object_get(props, "sku")) && !json_is_null(v)) {
        const char *fam = json_string_value(json_object_get(v, "family"));
        const char *name = json_string_value(json_object_get(v, "name"));
        if (!fam || strcasecmp(fam, "A")) {
            arm_send_error(req, 400, "BadRequest", "properties.sku.family",
                           "The sku family '%s' is invalid; the only valid value is 'A'.",
                           fam ? fam : "");
            return false;
        }
        if (!name || (strcasecmp(name, "standard") && strcasecmp(name, "premium"))) {
            arm_send_error(req, 400, "BadRequest", "properties.sku.name",
                           "The sku name '%s' is invalid; valid values are 'standard' and "
                           "'premium'.",
                           name ? name : "");
            return false;
        }
        snprintf(i->sku, sizeof i->sku, "%s", !strcasecmp(name, "premium") ? "premium" : "standard");
    } else if (!patch) {
        arm_send_error(req, 400, "BadRequest", "properties.sku",
                       "The parameter properties.sku is required.");
        return false;
    }
    if ((v = json_object_get(props, "softDeleteRetentionInDays")) && !json_is_null(v)) {
        json_int_t d = json_integer_value(v);
        if (!json_is_integer(v) || d < 7 || d > 90) {
            arm_send_error(req, 400, "BadRequest", "properties.softDeleteRetentionInDays",
                           "The value of softDeleteRetentionInDays must be between 7 and 90.");
            return false;
        }
        i->retention_days = (int)d;
    }
    if ((v = json_object_get(props, "enableSoftDelete")) && !json_is_null(v)) {
        if (!json_is_true(v)) {
            arm_send_error(req, 400, "BadRequest", "properties.enableSoftDelete",
                           "The property \"enableSoftDelete\" cannot be set to false. Enabling "
                           "the soft delete for a vault is an irreversible action.");
            return false;
        }
        i->soft_delete = true;
    }
    if ((v = json_object_get(props, "enablePurgeProtection")) && !json_is_null(v)) {
        /* the service refuses an explicit false, also on creation */
        if (!json_is_true(v)) {
            arm_send_error(req, 400, "BadRequest", "properties.enablePurgeProtection",
                           "The property \"enablePurgeProtection\" cannot be set to false. "
                           "Enabling the purge protection for a vault is an irreversible "
                           "action.");
            return false;
        }
        i->purge_protection = true;
    }
    if ((v = json_object_get(props, "enableRbacAuthorization")) && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            arm_send_error(req, 400, "BadRequest", "properties.enableRbacAuthorization",
                           "enableRbacAuthorization must be a boolean.");
            return false;
        }
        i->rbac = json_is_true(v);
    }
    if ((v = json_object_get(props, "publicNetworkAccess")) && !json_is_null(v)) {
        const char *pna = json_string_value(v);
        if (!pna || (strcasecmp(pna, "Enabled") && strcasecmp(pna, "Disabled"))) {
            arm_send_error(req, 400, "BadRequest", "properties.publicNetworkAccess",
                           "publicNetworkAccess must be 'Enabled' or 'Disabled'.");
            return false;
        }
        snprintf(i->public_network_access, sizeof i->public_network_access, "%s",
                 !strcasecmp(pna, "Disabled") ? "Disabled" : "Enabled");
    }
    if ((v = json_object_get(props, "networkAcls")) && !json_is_null(v)) {
        if (!json_is_object(v)) {
            arm_send_error(req, 400, "BadRequest", "properties.networkAcls",
                           "networkAcls must be an object.");
            return false;
        }
        json_decref(s->network_acls);
        s->network_acls = json_deep_copy(v);
    }
    if ((v = json_object_get(props, "accessPolicies")) && (!patch || !json_is_null(v))) {
        kv_access_policy *p = NULL;
        size_t n = 0;
        if (!policies_parse(req, v, &p, &n))
            return false;
        policies_free(s->policies, s->npolicies);
        s->policies = p;
        s->npolicies = n;
    }
    return true;
}

static bool apply_tags(emu_req *req, const json_t *tags, kv_vault_state *s)
{
    if (!tags)
        return true;
    if (json_is_null(tags)) {
        json_decref(s->tags);
        s->tags = NULL;
        return true;
    }
    if (!arm_tags_ok(req, tags))
        return false;
    json_decref(s->tags);
    s->tags = json_deep_copy(tags);
    return true;
}

static void stamp(emu_req *req, kv_vault_state *s, bool create)
{
    char by[128], type[24];
    caller_of(req, by, sizeof by, type, sizeof type);
    if (create) {
        snprintf(s->info.created_by, sizeof s->info.created_by, "%s", by);
        snprintf(s->info.created_by_type, sizeof s->info.created_by_type, "%s", type);
    }
    snprintf(s->info.modified_by, sizeof s->info.modified_by, "%s", by);
    snprintf(s->info.modified_by_type, sizeof s->info.modified_by_type, "%s", type);
}

/* Stores s and answers with the stored vault. */
static void put_and_answer(emu_req *req, kv_arm_ctx *c, kv_vault_state *s)
{
    kv_err e = {{0}};
    bool created = false;
    kv_status st = kv_vault_put(c->kv, s, &created, &e);
    if (st != KV_OK) {
        send_kv_error(req, st, e.msg);
        return;
    }
    kv_vault_state now;
    if (kv_vault_state_get(c->kv, s->info.name, &now) != KV_OK) {
        arm_send_error(req, 500, "InternalServerError", NULL, "The vault vanished.");
        return;
    }
    emu_send_json(req, 200, vault_json(req, &now));
    kv_vault_state_cleanup(&now);
}

/* ---- handlers ------------------------------------------------------------------------------ */

static void h_put(emu_req *req, void *ud)
{
    kv_arm_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1),
               *name = emu_req_param(req, 2);
    if (!valid_vault_name(name)) {
        char en[100];
        emu_log_escape(name, 64, en, sizeof en);
        arm_send_error(req, 400, "VaultNameNotValid", NULL,
                       "The vault name '%s' is invalid. A vault's name must be between 3-24 "
                       "alphanumeric characters. The name must begin with a letter, end with a "
                       "letter or digit, and not contain consecutive hyphens. Follow this link "
                       "for more information: https://go.microsoft.com/fwlink/?linkid=2147742",
                       en);
        return;
    }
    char rgloc[64];
    if (!armres_rg_exists(c->arm, sub, rg, rgloc, sizeof rgloc)) {
        rg_not_found(req, rg);
        return;
    }
    json_t *body = arm_req_json(req, false);
    if (!body)
        return;
    kv_vault_state s;
    memset(&s, 0, sizeof s);
    const char *loc = json_string_value(json_object_get(body, "location"));
    json_t *props = json_object_get(body, "properties");
    const char *mode = json_string_value(json_object_get(props, "createMode"));
    kv_vault_state cur;
    bool exists = kv_vault_state_get(c->kv, name, &cur) == KV_OK;
    if (!loc || !*loc || strlen(loc) >= sizeof s.info.location) {
        arm_send_error(req, 400, "LocationRequired", "location",
                       "The location property is required for this definition.");
    } else if (!json_is_object(props)) {
        arm_send_error(req, 400, "BadRequest", "properties",
                       "The parameter properties is required.");
    } else if (mode && strcasecmp(mode, "default") && strcasecmp(mode, "recover")) {
        arm_send_error(req, 400, "BadRequest", "properties.createMode",
                       "createMode must be 'default' or 'recover'.");
    } else if (mode && !strcasecmp(mode, "recover") && !(exists && cur.info.deleted) &&
               !(exists && !cur.info.deleted)) {
        arm_send_error(req, 404, "ResourceNotFound", NULL,
                       "No soft-deleted vault named '%s' exists to recover.", name);
    } else if (mode && !strcasecmp(mode, "recover") && exists && cur.info.deleted) {
        if (strcasecmp(cur.info.subscription, sub) || strcasecmp(cur.info.resource_group, rg)) {
            arm_send_error(req, 400, "BadRequest", NULL,
                           "The deleted vault '%s' belongs to resource group '%s'; recover it "
                           "there.",
                           cur.info.name, cur.info.resource_group);
        } else {
            kv_err e = {{0}};
            kv_status st = kv_vault_recover(c->kv, name, &e);
            if (st != KV_OK) {
                send_kv_error(req, st, e.msg);
            } else {
                kv_vault_state r;
                kv_vault_state_get(c->kv, name, &r);
                emu_send_json(req, 200, vault_json(req, &r));
                kv_vault_state_cleanup(&r);
            }
        }
    } else {
        bool update = exists && !cur.info.deleted;
        if (update) {
            /* PUT replaces the settings; irreversible ones are enforced by kv_vault_put */
            s.info = cur.info;
            s.network_acls = NULL;
            json_decref(s.network_acls);
        } else {
            snprintf(s.info.name, sizeof s.info.name, "%s", name);
            s.info.soft_delete = true;
            s.info.retention_days = 90;
        }
        snprintf(s.info.subscription, sizeof s.info.subscription, "%s", sub);
        snprintf(s.info.resource_group, sizeof s.info.resource_group, "%s", rg);
        snprintf(s.info.location, sizeof s.info.location, "%s", loc);
        if (update && strcasecmp(cur.info.location, loc)) {
            arm_send_error(req, 400, "BadRequest", "location",
                           "The vault '%s' exists in location '%s'; its location cannot change.",
                           cur.info.name, cur.info.location);
        } else if (apply_tags(req, json_object_get(body, "tags"), &s) &&
                   apply_properties(req, props, &s, false)) {
            if (!json_object_get(body, "tags") && update)
                s.tags = cur.tags ? json_deep_copy(cur.tags) : NULL;
            stamp(req, &s, !update);
            put_and_answer(req, c, &s);
        }
    }
    if (exists)
        kv_vault_state_cleanup(&cur);
    kv_vault_state_cleanup(&s);
    json_decref(body);
}

static void h_get(emu_req *req, void *ud)
{
    kv_arm_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    kv_vault_state s;
    if (!load_vault(req, c, &s))
        return;
    emu_send_json(req, 200, vault_json(req, &s));
    kv_vault_state_cleanup(&s);
}

static void h_patch(emu_req *req, void *ud)
{
    kv_arm_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    json_t *body = arm_req_json(req, true);
    if (!body)
        return;
    kv_vault_state s;
    if (load_vault(req, c, &s)) {
        json_t *props = json_object_get(body, "properties");
        if (props && !json_is_null(props) && !json_is_object(props))
            arm_send_error(req, 400, "BadRequest", "properties", "properties must be an object.");
        else if (apply_tags(req, json_object_get(body, "tags"), &s) &&
                 (!json_is_object(props) || apply_properties(req, props, &s, true))) {
            stamp(req, &s, false);
            put_and_answer(req, c, &s);
        }
        kv_vault_state_cleanup(&s);
    }
    json_decref(body);
}

static void h_delete(emu_req *req, void *ud)
{
    kv_arm_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1),
               *name = emu_req_param(req, 2);
    kv_vault_state s;
    if (kv_vault_state_get(c->kv, name, &s) != KV_OK || s.info.deleted ||
        strcasecmp(s.info.subscription, sub) || strcasecmp(s.info.resource_group, rg)) {
        kv_vault_state_cleanup(&s);
        emu_send_empty(req, 204); /* ARM: deleting what is not there is a success */
        return;
    }
    kv_vault_state_cleanup(&s);
    kv_err e = {{0}};
    kv_status st = kv_vault_delete(c->kv, name, &e);
    if (st != KV_OK)
        send_kv_error(req, st, e.msg);
    else
        emu_send_empty(req, 200);
}

/* Lists live vaults of a subscription (rg NULL) or one resource group, paged. */
static void list_vaults(emu_req *req, kv_arm_ctx *c, const char *sub, const char *rg)
{
    if (!arm_check_api_version(req))
        return;
    int64_t top = DEFAULT_PAGE;
    const char *t = emu_req_query(req, "$top");
    if (t && !emu_parse_i64(t, 1, MAX_PAGE, &top)) {
        arm_send_error(req, 400, "InvalidParameter", "$top",
                       "$top must be an integer from 1 to %d.", MAX_PAGE);
        return;
    }
    const char *after = emu_req_query(req, "$skiptoken");
    char(*names)[64] = NULL;
    size_t n = kv_vault_names(c->kv, false, &names);
    json_t *value = json_array();
    char last[64] = "";
    bool more = false;
    for (size_t i = 0; i < n; i++) {
        if (after && *after && strcmp(names[i], after) <= 0)
            continue;
        kv_vault_state s;
        if (kv_vault_state_get(c->kv, names[i], &s) != KV_OK)
            continue;
        bool match = !strcasecmp(s.info.subscription, sub) &&
                     (!rg || !strcasecmp(s.info.resource_group, rg));
        if (match) {
            if ((int64_t)json_array_size(value) == top) {
                more = true;
            } else {
                json_array_append_new(value, vault_json(req, &s));
                snprintf(last, sizeof last, "%s", names[i]);
            }
        }
        kv_vault_state_cleanup(&s);
        if (more)
            break;
    }
    free(names);
    json_t *out = json_pack("{s:o}", "value", value);
    if (more) {
        char *next = emu_xasprintf("%s%s?api-version=%s&$top=%lld&$skiptoken=%s",
                                   emu_req_base_url(req), req->path,
                                   emu_req_query(req, "api-version"), (long long)top, last);
        json_object_set_new(out, "nextLink", json_string(next));
        free(next);
    }
    emu_send_json(req, 200, out);
}

static void h_list_rg(emu_req *req, void *ud)
{
    kv_arm_ctx *c = ud;
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1);
    if (!armres_rg_exists(c->arm, sub, rg, NULL, 0)) {
        /* vaults of data dirs made before resource groups existed still list */
        char(*names)[64] = NULL;
        size_t n = kv_vault_names(c->kv, false, &names);
        bool any = false;
        for (size_t i = 0; i < n && !any; i++) {
            kv_vault_info vi;
            any = kv_vault_get(c->kv, names[i], &vi) == KV_OK &&
                  !strcasecmp(vi.subscription, sub) && !strcasecmp(vi.resource_group, rg);
        }
        free(names);
        if (!any) {
            rg_not_found(req, rg);
            return;
        }
    }
    list_vaults(req, c, sub, rg);
}

static void h_list_sub(emu_req *req, void *ud)
{
    list_vaults(req, ud, emu_req_param(req, 0), NULL);
}

static void h_access_policies(emu_req *req, void *ud)
{
    kv_arm_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    const char *op = emu_req_param(req, 3);
    bool add = !strcasecmp(op, "add"), replace = !strcasecmp(op, "replace"),
         remove = !strcasecmp(op, "remove");
    if (!add && !replace && !remove) {
        arm_send_error(req, 400, "BadRequest", NULL,
                       "The access policy operation must be 'add', 'replace' or 'remove'.");
        return;
    }
    json_t *body = arm_req_json(req, false);
    if (!body)
        return;
    kv_vault_state s;
    kv_access_policy *in = NULL;
    size_t nin = 0;
    json_t *arr = json_object_get(json_object_get(body, "properties"), "accessPolicies");
    if (!json_is_array(arr)) {
        arm_send_error(req, 400, "BadRequest", "properties.accessPolicies",
                       "The body needs properties.accessPolicies (an array).");
    } else if (policies_parse(req, arr, &in, &nin) && load_vault(req, c, &s)) {
        for (size_t i = 0; i < nin; i++) {
            size_t j = 0;
            while (j < s.npolicies && !policy_same_principal(&s.policies[j], &in[i]))
                j++;
            if (j == s.npolicies) {
                if (remove)
                    continue;
                s.policies = emu_xrealloc(s.policies, (s.npolicies + 1) * sizeof *s.policies);
                s.policies[s.npolicies] = in[i];
                s.policies[s.npolicies].permissions = json_deep_copy(in[i].permissions);
                s.npolicies++;
                continue;
            }
            kv_access_policy *cur = &s.policies[j];
            for (size_t k = 0; k < 4; k++) {
                json_t *given = json_object_get(in[i].permissions, PERM_KINDS[k]);
                json_t *have = json_object_get(cur->permissions, PERM_KINDS[k]);
                json_t *next = NULL;
                if (replace) {
                    next = given ? json_deep_copy(given) : json_array();
                } else if (add) {
                    json_t *both = have ? json_deep_copy(have) : json_array();
                    if (given)
                        json_array_extend(both, given);
                    next = perm_list_norm(both, k == 0);
                    json_decref(both);
                } else {
                    next = json_array();
                    size_t a, b;
                    json_t *x, *y;
                    json_array_foreach(have, a, x)
                    {
                        bool drop = false;
                        json_array_foreach(given, b, y) drop |=
                            !strcasecmp(json_string_value(x), json_string_value(y));
                        if (!drop)
                            json_array_append(next, x);
                    }
                }
                json_object_set_new(cur->permissions, PERM_KINDS[k], next);
            }
            policy_refresh_mask(cur);
            if (remove && policy_empty(cur)) {
                json_decref(cur->permissions);
                memmove(cur, cur + 1, (s.npolicies - j - 1) * sizeof *cur);
                s.npolicies--;
            }
        }
        if (s.npolicies > KV_MAX_ACCESS_POLICIES) {
            arm_send_error(req, 400, "BadRequest", "properties.accessPolicies",
                           "The number of access policies exceeds the maximum of %d access "
                           "policies per vault.",
                           KV_MAX_ACCESS_POLICIES);
        } else {
            stamp(req, &s, false);
            kv_err e = {{0}};
            kv_status st = kv_vault_put(c->kv, &s, NULL, &e);
            if (st != KV_OK) {
                send_kv_error(req, st, e.msg);
            } else {
                char *vid = vault_id(&s.info);
                char *id = emu_xasprintf("%s/accessPolicies/", vid);
                emu_send_json(req, 200,
                              json_pack("{s:s,s:s,s:s,s:{s:o}}", "id", id, "type",
                                        "Microsoft.KeyVault/vaults/accessPolicies", "name",
                                        op, "properties", "accessPolicies",
                                        policies_json(s.policies, s.npolicies)));
                free(id);
                free(vid);
            }
        }
        kv_vault_state_cleanup(&s);
    }
    policies_free(in, nin);
    json_decref(body);
}

static void h_deleted_list(emu_req *req, void *ud)
{
    kv_arm_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    const char *sub = emu_req_param(req, 0);
    char(*names)[64] = NULL;
    size_t n = kv_vault_names(c->kv, true, &names);
    json_t *value = json_array();
    for (size_t i = 0; i < n; i++) {
        kv_vault_state s;
        if (kv_vault_state_get(c->kv, names[i], &s) == KV_OK && s.info.deleted &&
            !strcasecmp(s.info.subscription, sub))
            json_array_append_new(value, deleted_json(&s));
        kv_vault_state_cleanup(&s);
    }
    free(names);
    emu_send_json(req, 200, json_pack("{s:o}", "value", value));
}

/* The deleted vault of the path ({sub}/locations/{loc}/deletedVaults/{name}). */
static bool load_deleted(emu_req *req, kv_arm_ctx *c, kv_vault_state *s)
{
    const char *sub = emu_req_param(req, 0), *loc = emu_req_param(req, 1),
               *name = emu_req_param(req, 2);
    if (kv_vault_state_get(c->kv, name, s) == KV_OK && s->info.deleted &&
        !strcasecmp(s->info.subscription, sub) && !strcasecmp(s->info.location, loc))
        return true;
    kv_vault_state_cleanup(s);
    char en[100], el[100];
    emu_log_escape(name, 64, en, sizeof en);
    emu_log_escape(loc, 60, el, sizeof el);
    arm_send_error(req, 404, "ResourceNotFound", NULL,
                   "The deleted vault '%s' was not found in location '%s'.", en, el);
    return false;
}

static void h_deleted_get(emu_req *req, void *ud)
{
    kv_arm_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    kv_vault_state s;
    if (!load_deleted(req, c, &s))
        return;
    emu_send_json(req, 200, deleted_json(&s));
    kv_vault_state_cleanup(&s);
}

static void h_purge(emu_req *req, void *ud)
{
    kv_arm_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    kv_vault_state s;
    if (!load_deleted(req, c, &s))
        return;
    kv_vault_state_cleanup(&s);
    kv_err e = {{0}};
    kv_status st = kv_vault_purge(c->kv, emu_req_param(req, 2), &e);
    if (st != KV_OK)
        send_kv_error(req, st, e.msg);
    else
        emu_send_empty(req, 200);
}

static void h_check_name(emu_req *req, void *ud)
{
    kv_arm_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    json_t *body = arm_req_json(req, false);
    if (!body)
        return;
    const char *name = json_string_value(json_object_get(body, "name"));
    kv_vault_info vi;
    kv_vault_state s;
    if (!name) {
        arm_send_error(req, 400, "BadRequest", "name", "The parameter name is required.");
    } else if (!valid_vault_name(name)) {
        emu_send_json(req, 200, json_pack("{s:b,s:s,s:s}", "nameAvailable", 0, "reason",
                                          "AccountNameInvalid", "message",
                                          "The vault name is invalid: 3-24 alphanumeric "
                                          "characters and single hyphens, starting with a "
                                          "letter."));
    } else if (kv_vault_state_get(c->kv, name, &s) == KV_OK) {
        emu_send_json(req, 200,
                      json_pack("{s:b,s:s,s:s}", "nameAvailable", 0, "reason", "AlreadyExists",
                                "message",
                                s.info.deleted ? "A soft-deleted vault holds this name."
                                               : "A vault with this name already exists."));
        kv_vault_state_cleanup(&s);
    } else {
        (void)vi;
        emu_send_json(req, 200, json_pack("{s:b}", "nameAvailable", 1));
    }
    json_decref(body);
}

/* A resource group is being deleted: its vaults are deleted (soft-deleted) with it. */
static void on_rg_delete(const char *sub, const char *rg, void *ud)
{
    kv_arm_ctx *c = ud;
    char(*names)[64] = NULL;
    size_t n = kv_vault_names(c->kv, false, &names);
    for (size_t i = 0; i < n; i++) {
        kv_vault_info vi;
        if (kv_vault_get(c->kv, names[i], &vi) == KV_OK && !strcasecmp(vi.subscription, sub) &&
            !strcasecmp(vi.resource_group, rg)) {
            kv_err e = {{0}};
            if (kv_vault_delete(c->kv, names[i], &e) != KV_OK)
                emu_log(EMU_LOG_WARN, "kv", "deleting resource group %s: vault %s: %s", rg,
                        names[i], e.msg);
        }
    }
    free(names);
}

void kv_vaults_arm_register(emu_router *r, kv_arm_ctx *ctx)
{
    emu_handler_fn pre = arm_precheck;
#define VAULTS "/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.KeyVault/vaults"
#define KVSUB "/subscriptions/{sub}/providers/Microsoft.KeyVault"
    emu_router_add(r, "PUT", VAULTS "/{name}/accessPolicies/{op}", 0, pre, h_access_policies,
                   ctx);
    emu_router_add(r, "PUT", VAULTS "/{name}", 0, pre, h_put, ctx);
    emu_router_add(r, "GET", VAULTS "/{name}", 0, pre, h_get, ctx);
    emu_router_add(r, "PATCH", VAULTS "/{name}", 0, pre, h_patch, ctx);
    emu_router_add(r, "DELETE", VAULTS "/{name}", 0, pre, h_delete, ctx);
    emu_router_add(r, "GET", VAULTS, 0, pre, h_list_rg, ctx);
    emu_router_add(r, "GET", KVSUB "/vaults", 0, pre, h_list_sub, ctx);
    emu_router_add(r, "POST", KVSUB "/checkNameAvailability", 0, pre, h_check_name, ctx);
    emu_router_add(r, "GET", KVSUB "/deletedVaults", 0, pre, h_deleted_list, ctx);
    emu_router_add(r, "GET", KVSUB "/locations/{loc}/deletedVaults/{name}", 0, pre,
                   h_deleted_get, ctx);
    emu_router_add(r, "POST", KVSUB "/locations/{loc}/deletedVaults/{name}/purge",
                   EMU_ROUTE_SLOW, pre, h_purge, ctx);
#undef VAULTS
#undef KVSUB
    armres_on_rg_delete(ctx->arm, on_rg_delete, ctx);
}
