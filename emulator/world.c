#include "world.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "armres.h"
#include "auth/roles.h"
#include "demo_world.h" /* generated: CMKEMU_DEMO_WORLD[] */
#include "keyvault/access.h"
#include "log.h"
#include "powerplatform/components.h"
#include "powerplatform/environments.h"
#include "powerplatform/policies.h"
#include "tls.h"
#include "util.h"

static bool bool_field(json_t *o, const char *name, bool def)
{
    json_t *v = json_object_get(o, name);
    return v ? json_is_true(v) : def;
}

static void str_field(json_t *o, const char *name, char *out, size_t outlen)
{
    const char *v = json_string_value(json_object_get(o, name));
    if (v)
        snprintf(out, outlen, "%s", v);
}

/* Access policies of a world vault: [{tenantId?, objectId, applicationId?, permissions:{keys}}]
 * (tenantId defaults to the world's tenant). */
static bool apply_policies(json_t *arr, const char *vault, const char *tenant, kv_t *kv,
                           char *err, size_t errlen)
{
    if (!json_array_size(arr))
        return true;
    kv_vault_state s;
    if (kv_vault_state_get(kv, vault, &s) != KV_OK) {
        snprintf(err, errlen, "vault %s vanished", vault);
        return false;
    }
    bool ok = true;
    size_t i;
    json_t *p;
    json_array_foreach(arr, i, p)
    {
        kv_access_policy ap;
        memset(&ap, 0, sizeof ap);
        const char *oid = json_string_value(json_object_get(p, "objectId"));
        json_t *perms = json_object_get(p, "permissions");
        kv_err e = {{0}};
        if (!oid || !kv_perm_parse_keys(json_object_get(perms, "keys"), &ap.keys, &e) ||
            s.npolicies >= KV_MAX_ACCESS_POLICIES) {
            snprintf(err, errlen, "vault %s accessPolicies[%zu]: needs objectId and valid "
                     "permissions.keys %s", vault, i, e.msg);
            ok = false;
            break;
        }
        snprintf(ap.tenant, sizeof ap.tenant, "%s", tenant);
        str_field(p, "tenantId", ap.tenant, sizeof ap.tenant);
        snprintf(ap.object_id, sizeof ap.object_id, "%s", oid);
        str_field(p, "applicationId", ap.application_id, sizeof ap.application_id);
        ap.permissions = json_is_object(perms) ? json_deep_copy(perms) : json_object();
        s.policies = emu_xrealloc(s.policies, (s.npolicies + 1) * sizeof *s.policies);
        s.policies[s.npolicies++] = ap;
    }
    if (ok) {
        kv_err e = {{0}};
        if (kv_vault_put(kv, &s, NULL, &e) != KV_OK) {
            snprintf(err, errlen, "vault %s: %s", vault, e.msg);
            ok = false;
        }
    }
    kv_vault_state_cleanup(&s);
    return ok;
}

static bool apply_keys(json_t *keys, const char *vault, kv_t *kv, char *err, size_t errlen)
{
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k)
    {
        const char *name = json_string_value(json_object_get(k, "name"));
        const char *kty = json_string_value(json_object_get(k, "kty"));
        json_int_t size = json_integer_value(json_object_get(k, "size"));
        if (!name) {
            snprintf(err, errlen, "vault %s: keys[%zu] needs a name", vault, i);
            return false;
        }
        kv_create_params p = {.hsm = kty && !strcmp(kty, "RSA-HSM"),
                              .bits = size ? (unsigned)size : 2048};
        json_t *ops = json_object_get(k, "key_ops");
        kv_err e;
        if (ops && !kv_ops_parse(ops, &p.ops, &e)) {
            snprintf(err, errlen, "vault %s key %s: %s", vault, name, e.msg);
            return false;
        }
        p.tags = json_object_get(k, "tags");
        kv_key_view v;
        if (kv_key_create(kv, vault, name, &p, &v, &e) != KV_OK) {
            snprintf(err, errlen, "vault %s key %s: %s", vault, name, e.msg);
            return false;
        }
        kv_key_view_cleanup(&v);
    }
    return true;
}

bool emu_world_apply(json_t *world, const char *default_tenant, auth_t *auth, kv_t *kv, char *err,
                     size_t errlen)
{
    if (auth && !auth_world_apply(auth, world, err, errlen))
        return false;
    const char *tenant = json_string_value(json_object_get(world, "tenant"));
    if (!tenant)
        tenant = default_tenant;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(world, "vaults"), i, v)
    {
        kv_vault_info info = {0};
        const char *name = json_string_value(json_object_get(v, "name"));
        if (!name) {
            snprintf(err, errlen, "vaults[%zu] needs a name", i);
            return false;
        }
        snprintf(info.name, sizeof info.name, "%s", name);
        snprintf(info.tenant, sizeof info.tenant, "%s", tenant);
        info.is_default = bool_field(v, "default", false);
        info.soft_delete = bool_field(v, "softDelete", true);
        info.purge_protection = bool_field(v, "purgeProtection", false);
        info.rbac = bool_field(v, "rbac", false);
        const char *sub = json_string_value(json_object_get(world, "subscription"));
        if (sub)
            snprintf(info.subscription, sizeof info.subscription, "%s", sub);
        str_field(v, "subscription", info.subscription, sizeof info.subscription);
        str_field(v, "resourceGroup", info.resource_group, sizeof info.resource_group);
        str_field(v, "location", info.location, sizeof info.location);
        str_field(v, "sku", info.sku, sizeof info.sku);
        json_t *rd = json_object_get(v, "retentionDays");
        info.retention_days = rd ? (int)json_integer_value(rd) : 90;
        kv_err e;
        if (kv_vault_create(kv, &info, &e) != KV_OK) {
            snprintf(err, errlen, "vault %s: %s", name, e.msg);
            return false;
        }
        if (!apply_policies(json_object_get(v, "accessPolicies"), info.name, tenant, kv, err,
                            errlen))
            return false;
        if (!apply_keys(json_object_get(v, "keys"), info.name, kv, err, errlen))
            return false;
    }
    return true;
}

/* The world's subscription: "subscription" or the emulator's default one. */
static const char *world_subscription(json_t *world)
{
    const char *sub = json_string_value(json_object_get(world, "subscription"));
    return sub ? sub : ARM_DEFAULT_SUBSCRIPTION;
}

/* The world's resource groups ("resourceGroups": [{name, location, subscription?}]) and the
 * group of every vault, in the ARM registry. */
static bool world_resource_groups(json_t *world, emu_store *store, const char *tenant,
                                  char *err, size_t errlen)
{
    armres_t *a = armres_open(store, tenant, err, errlen);
    if (!a)
        return false;
    const char *wsub = world_subscription(world);
    bool ok = true;
    size_t i;
    json_t *g;
    json_array_foreach(json_object_get(world, "resourceGroups"), i, g)
    {
        const char *name = json_string_value(json_object_get(g, "name"));
        const char *loc = json_string_value(json_object_get(g, "location"));
        const char *sub = json_string_value(json_object_get(g, "subscription"));
        if (!name) {
            snprintf(err, errlen, "resourceGroups[%zu] needs a name", i);
            ok = false;
            break;
        }
        ok = armres_rg_put(a, sub ? sub : wsub, name, loc ? loc : KV_DEFAULT_LOCATION,
                           json_object_get(g, "tags"), NULL);
        if (!ok)
            break;
    }
    json_t *v;
    json_array_foreach(json_object_get(world, "vaults"), i, v)
    {
        if (!ok)
            break;
        const char *rg = json_string_value(json_object_get(v, "resourceGroup"));
        const char *sub = json_string_value(json_object_get(v, "subscription"));
        const char *loc = json_string_value(json_object_get(v, "location"));
        if (!sub)
            sub = wsub;
        if (!rg)
            rg = KV_DEFAULT_RESOURCE_GROUP;
        if (!armres_rg_exists(a, sub, rg, NULL, 0))
            ok = armres_rg_put(a, sub, rg, loc ? loc : KV_DEFAULT_LOCATION, NULL, NULL);
    }
    if (!ok && !err[0])
        snprintf(err, errlen, "cannot save the world's resource groups");
    armres_close(a);
    return ok;
}

/* The world's role assignments ("roleAssignments": [{principalId, role (name, GUID or
 * definition id), scope | vault [+ key] | resourceGroup, name?, description?}]); a vault's
 * scope is its ARM id, a key's is the vault's plus /keys/{key}. */
static bool world_role_assignments(json_t *world, emu_store *store, auth_t *auth, kv_t *kv,
                                   char *err, size_t errlen)
{
    json_t *arr = json_object_get(world, "roleAssignments");
    if (!json_array_size(arr) || !auth)
        return true;
    roles_t *r = auth_roles_open(store, auth, err, errlen);
    if (!r)
        return false;
    const char *wsub = world_subscription(world);
    bool ok = true;
    size_t i;
    json_t *ra;
    json_array_foreach(arr, i, ra)
    {
        auth_role_assignment a;
        memset(&a, 0, sizeof a);
        const char *role = json_string_value(json_object_get(ra, "role"));
        if (!role)
            role = json_string_value(json_object_get(ra, "roleDefinitionId"));
        const char *vault = json_string_value(json_object_get(ra, "vault"));
        const char *key = json_string_value(json_object_get(ra, "key"));
        const char *rg = json_string_value(json_object_get(ra, "resourceGroup"));
        str_field(ra, "scope", a.scope, sizeof a.scope);
        if (!a.scope[0] && vault) {
            kv_vault_info vi;
            if (kv_vault_get(kv, vault, &vi) != KV_OK) {
                snprintf(err, errlen, "roleAssignments[%zu]: no vault %s", i, vault);
                ok = false;
                break;
            }
            snprintf(a.scope, sizeof a.scope,
                     "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.KeyVault/vaults/%s"
                     "%s%.128s",
                     vi.subscription, vi.resource_group, vi.name, key ? "/keys/" : "",
                     key ? key : "");
        } else if (!a.scope[0] && rg) {
            snprintf(a.scope, sizeof a.scope, "/subscriptions/%s/resourceGroups/%.96s", wsub, rg);
        } else if (!a.scope[0]) {
            snprintf(a.scope, sizeof a.scope, "/subscriptions/%s", wsub);
        }
        if (role)
            snprintf(a.role_guid, sizeof a.role_guid, "%s", role);
        const auth_role_def *d = role ? auth_role_def_find(role) : NULL;
        if (d)
            snprintf(a.role_guid, sizeof a.role_guid, "%s", d->guid);
        str_field(ra, "principalId", a.principal_id, sizeof a.principal_id);
        str_field(ra, "principalType", a.principal_type, sizeof a.principal_type);
        str_field(ra, "description", a.description, sizeof a.description);
        str_field(ra, "name", a.name, sizeof a.name);
        if (!a.name[0])
            emu_guid(a.name);
        char msg[512];
        roles_status st = auth_roles_put(r, &a, NULL, NULL, msg, sizeof msg);
        if (st != ROLES_OK) {
            snprintf(err, errlen, "roleAssignments[%zu]: %s", i, msg);
            ok = false;
            break;
        }
    }
    auth_roles_close(r);
    return ok;
}

/* The world's enterprise policies ("enterprisePolicies": [{name, location, kind?
 * ("Encryption"), resourceGroup? (cmk-rg), subscription?, keyVault (a vault name of the world,
 * or a vault ARM id), keyName, keyVersion? ("" = the key's current version), identity?
 * {objectId?, applicationId?} (fixed ids, so the world's access policies and role assignments
 * can name the policy identity)}]). Groups that do not exist yet are created. */
static bool world_enterprise_policies(json_t *world, emu_store *store, auth_t *auth, kv_t *kv,
                                      const char *tenant, char *err, size_t errlen)
{
    json_t *arr = json_object_get(world, "enterprisePolicies");
    if (!json_array_size(arr))
        return true;
    if (!auth) {
        snprintf(err, errlen, "enterprisePolicies need the identity layer");
        return false;
    }
    armres_t *a = armres_open(store, tenant, err, errlen);
    if (!a)
        return false;
    pp_policies_t *pp = pp_policies_open(store, auth, err, errlen);
    if (!pp) {
        armres_close(a);
        return false;
    }
    const char *wsub = world_subscription(world);
    bool ok = true;
    size_t i;
    json_t *ep;
    json_array_foreach(arr, i, ep)
    {
        const char *sub = json_string_value(json_object_get(ep, "subscription"));
        const char *rg = json_string_value(json_object_get(ep, "resourceGroup"));
        const char *kind = json_string_value(json_object_get(ep, "kind"));
        const char *vault = json_string_value(json_object_get(ep, "keyVault"));
        json_t *identity = json_object_get(ep, "identity");
        char vault_id[512] = "";
        pp_policy_spec s = {.subscription = sub ? sub : wsub,
                            .resource_group = rg ? rg : KV_DEFAULT_RESOURCE_GROUP,
                            .name = json_string_value(json_object_get(ep, "name")),
                            .location = json_string_value(json_object_get(ep, "location")),
                            .identity = true,
                            .identity_oid =
                                json_string_value(json_object_get(identity, "objectId")),
                            .identity_appid =
                                json_string_value(json_object_get(identity, "applicationId")),
                            .key_name = json_string_value(json_object_get(ep, "keyName")),
                            .key_version = json_string_value(json_object_get(ep, "keyVersion"))};
        if (kind && !pp_kind_parse(kind, &s.kind)) {
            snprintf(err, errlen, "enterprisePolicies[%zu]: unknown kind %s", i, kind);
            ok = false;
            break;
        }
        if (vault && vault[0] == '/') {
            snprintf(vault_id, sizeof vault_id, "%s", vault);
        } else if (vault) {
            kv_vault_info vi;
            if (kv_vault_get(kv, vault, &vi) != KV_OK) {
                snprintf(err, errlen, "enterprisePolicies[%zu]: no vault %s", i, vault);
                ok = false;
                break;
            }
            snprintf(vault_id, sizeof vault_id,
                     "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.KeyVault/vaults/%s",
                     vi.subscription, vi.resource_group, vi.name);
        }
        s.has_encryption = vault != NULL;
        s.encryption_enabled = true;
        s.vault_id = vault_id;
        if (!armres_rg_exists(a, s.subscription, s.resource_group, NULL, 0) &&
            !armres_rg_put(a, s.subscription, s.resource_group, KV_DEFAULT_LOCATION, NULL, NULL)) {
            snprintf(err, errlen, "enterprisePolicies[%zu]: cannot create resource group %s", i,
                     s.resource_group);
            ok = false;
            break;
        }
        pp_err e = {{0}, {0}};
        if (pp_policy_put(pp, &s, NULL, NULL, &e) != PP_OK) {
            snprintf(err, errlen, "enterprisePolicies[%zu]: %s", i, e.msg);
            ok = false;
            break;
        }
    }
    pp_policies_close(pp);
    armres_close(a);
    return ok;
}

/* The world's Power Platform environments ("environments": [{id?, displayName, location,
 * environmentSku, managed?, records?: {entitySet: [row, ...]}}]), encrypted under the
 * Microsoft-managed key like any environment created over the BAP API. */
static bool world_environments(json_t *world, emu_store *store, kv_t *kv, char *err,
                               size_t errlen)
{
    if (!json_array_size(json_object_get(world, "environments")))
        return true;
    pp_envs_t *envs = pp_envs_open(store, kv_hsm(kv), err, errlen);
    if (!envs)
        return false;
    bool ok = pp_envs_world_apply(envs, world, err, errlen);
    if (ok) { /* components and F&O integration (components.h) */
        pp_comps_t *comps = pp_comps_open(store, kv_hsm(kv), envs, NULL, err, errlen);
        ok = comps && pp_comps_world_apply(comps, world, err, errlen);
        pp_comps_close(comps);
    }
    pp_envs_close(envs);
    return ok;
}

static void describe(kv_t *kv, const char *source, emu_world_info *info)
{
    char def[64] = "";
    kv_vault_default(kv, def, sizeof def);
    snprintf(info->summary, sizeof info->summary, "%s; %zu vault(s), default vault '%s' with %zu key(s)",
             source, kv_vault_count(kv), def[0] ? def : "(none)", def[0] ? kv_key_count(kv, def) : 0);
}

bool emu_world_load(const emu_config *cfg, emu_store *store, auth_t *auth, kv_t *kv,
                    emu_world_info *info,
                    char *err, size_t errlen)
{
    char loaded[256];
    if (emu_store_meta_get(store, "world", loaded, sizeof loaded)) {
        describe(kv, "saved state", info);
        return true;
    }
    const char *source = "empty world (--no-demo)";
    if (!cfg->no_demo || cfg->world_file) {
        json_error_t je;
        json_t *w;
        if (cfg->world_file) {
            size_t len = 0;
            char *text = emu_read_file(cfg->world_file, 16u << 20, &len);
            if (!text) {
                snprintf(err, errlen, "cannot read world file %s", cfg->world_file);
                return false;
            }
            w = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
            free(text);
            source = cfg->world_file;
        } else {
            w = json_loadb((const char *)CMKEMU_DEMO_WORLD, sizeof CMKEMU_DEMO_WORLD - 1,
                           JSON_REJECT_DUPLICATES, &je);
            source = "demo world";
        }
        if (!w || !json_is_object(w)) {
            snprintf(err, errlen, "%s is not a JSON object: %s (line %d)", source,
                     w ? "wrong type" : je.text, w ? 0 : je.line);
            json_decref(w);
            return false;
        }
        bool ok = emu_world_apply(w, cfg->tenant, auth, kv, err, errlen) &&
                  world_resource_groups(w, store, cfg->tenant, err, errlen) &&
                  world_enterprise_policies(w, store, auth, kv, cfg->tenant, err, errlen) &&
                  world_environments(w, store, kv, err, errlen) &&
                  world_role_assignments(w, store, auth, kv, err, errlen);
        json_decref(w);
        if (!ok)
            return false;
    }
    if (!emu_store_meta_set(store, "world", source)) {
        snprintf(err, errlen, "cannot record that the world was loaded");
        return false;
    }
    describe(kv, source, info);
    return true;
}
