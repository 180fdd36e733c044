#include "world.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "demo_world.h" /* generated: CMKEMU_DEMO_WORLD[] */
#include "log.h"
#include "tls.h"
#include "util.h"

static bool bool_field(json_t *o, const char *name, bool def)
{
    json_t *v = json_object_get(o, name);
    return v ? json_is_true(v) : def;
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

bool emu_world_apply(json_t *world, const char *default_tenant, kv_t *kv, char *err,
                     size_t errlen)
{
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
        json_t *rd = json_object_get(v, "retentionDays");
        info.retention_days = rd ? (int)json_integer_value(rd) : 90;
        kv_err e;
        if (kv_vault_create(kv, &info, &e) != KV_OK) {
            snprintf(err, errlen, "vault %s: %s", name, e.msg);
            return false;
        }
        if (!apply_keys(json_object_get(v, "keys"), info.name, kv, err, errlen))
            return false;
    }
    return true;
}

static void describe(kv_t *kv, const char *source, emu_world_info *info)
{
    char def[64] = "";
    kv_vault_default(kv, def, sizeof def);
    snprintf(info->summary, sizeof info->summary, "%s; %zu vault(s), default vault '%s' with %zu key(s)",
             source, kv_vault_count(kv), def[0] ? def : "(none)", def[0] ? kv_key_count(kv, def) : 0);
}

bool emu_world_load(const emu_config *cfg, emu_store *store, kv_t *kv, emu_world_info *info,
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
        bool ok = emu_world_apply(w, cfg->tenant, kv, err, errlen);
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
