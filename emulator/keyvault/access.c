#include "access.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "util.h"

static const struct {
    const char *name;
    uint32_t bit;
} PERMS[] = {
    {"encrypt", KV_PERM_ENCRYPT},
    {"decrypt", KV_PERM_DECRYPT},
    {"wrapKey", KV_PERM_WRAP},
    {"unwrapKey", KV_PERM_UNWRAP},
    {"sign", KV_PERM_SIGN},
    {"verify", KV_PERM_VERIFY},
    {"get", KV_PERM_GET},
    {"list", KV_PERM_LIST},
    {"create", KV_PERM_CREATE},
    {"update", KV_PERM_UPDATE},
    {"import", KV_PERM_IMPORT},
    {"delete", KV_PERM_DELETE},
    {"backup", KV_PERM_BACKUP},
    {"restore", KV_PERM_RESTORE},
    {"recover", KV_PERM_RECOVER},
    {"purge", KV_PERM_PURGE},
    {"release", KV_PERM_RELEASE},
    {"rotate", KV_PERM_ROTATE},
    {"getrotationpolicy", KV_PERM_GETROTATIONPOLICY},
    {"setrotationpolicy", KV_PERM_SETROTATIONPOLICY},
};

bool kv_perm_from_name(const char *name, uint32_t *bits)
{
    if (!name)
        return false;
    if (!strcasecmp(name, "all")) {
        *bits = KV_PERM_ALL;
        return true;
    }
    for (size_t i = 0; i < sizeof PERMS / sizeof PERMS[0]; i++)
        if (!strcasecmp(name, PERMS[i].name)) {
            *bits = PERMS[i].bit;
            return true;
        }
    return false;
}

const char *kv_perm_name(uint32_t bit)
{
    for (size_t i = 0; i < sizeof PERMS / sizeof PERMS[0]; i++)
        if (PERMS[i].bit == bit)
            return PERMS[i].name;
    return NULL;
}

bool kv_perm_parse_keys(const json_t *arr, uint32_t *mask, kv_err *e)
{
    *mask = 0;
    if (!arr || json_is_null(arr))
        return true;
    if (!json_is_array(arr)) {
        snprintf(e->msg, sizeof e->msg, "permissions.keys must be an array of permission names.");
        return false;
    }
    size_t i;
    json_t *it;
    json_array_foreach(arr, i, it)
    {
        uint32_t b;
        if (!kv_perm_from_name(json_string_value(it), &b)) {
            snprintf(e->msg, sizeof e->msg,
                     "Invalid key permission '%.40s'. Allowed: all, encrypt, decrypt, wrapKey, "
                     "unwrapKey, sign, verify, get, list, create, update, import, delete, backup, "
                     "restore, recover, purge, release, rotate, getrotationpolicy, "
                     "setrotationpolicy.",
                     json_is_string(it) ? json_string_value(it) : "(not a string)");
            return false;
        }
        *mask |= b;
    }
    return true;
}

static kv_status access_check(kv_t *kv, const char *vault, const char *key,
                              const auth_principal *p, const char *permission, kv_err *e)
{
    if (!p || !p->from_token)
        return KV_OK;
    uint32_t bit = 0;
    if (!kv_perm_from_name(permission, &bit) || bit == KV_PERM_ALL) {
        snprintf(e->msg, sizeof e->msg, "Unknown key permission '%.40s'.",
                 permission ? permission : "");
        return KV_ERR_FORBIDDEN;
    }
    const char *canon = kv_perm_name(bit);
    bool granted = false;
    kv_vault_info info;
    kv_status st = kv_vault_policy_grants(kv, vault, p->oid, p->appid, bit, &granted, &info);
    if (st != KV_OK) {
        snprintf(e->msg, sizeof e->msg, "Vault '%.64s' does not exist.", vault);
        return st;
    }
    char caller[400];
    snprintf(caller, sizeof caller, "appid=%s;oid=%s;iss=%s", p->appid[0] ? p->appid : "",
             p->oid, p->iss[0] ? p->iss : "");
    if (!p->iss[0])
        snprintf(caller, sizeof caller, "appid=%s;oid=%s;iss=https://sts.windows.net/%s/",
                 p->appid, p->oid, p->tid[0] ? p->tid : info.tenant);
    if (info.rbac) {
        void *ud = NULL;
        kv_rbac_check_fn fn = kv_rbac_check(kv, &ud);
        if (fn)
            return fn(info.name, key, p, canon, e, ud);
        char msg[1024];
        snprintf(msg, sizeof msg,
                 "Caller is not authorized to perform action on resource.\r\nIf role "
                 "assignments, deny assignments or role definitions were changed recently, "
                 "please observe propagation time.\r\nCaller: %.200s\r\nAction: "
                 "'Microsoft.KeyVault/vaults/keys/%s/action'\r\nResource: '%.64s'\r\n"
                 "Assignment: (not found)\r\nVault: %.64s;location=%.40s\r\n",
                 caller, canon, info.name, info.name, info.location);
        snprintf(e->msg, sizeof e->msg, "%.500s", msg);
        return KV_ERR_FORBIDDEN_RBAC;
    }
    if (granted)
        return KV_OK;
    snprintf(e->msg, sizeof e->msg,
             "The user, group or application '%.200s' does not have keys %s permission on key "
             "vault '%.64s;location=%.40s'. For help resolving this issue, please see "
             "https://go.microsoft.com/fwlink/?linkid=2125287",
             caller, canon, info.name, info.location);
    return KV_ERR_FORBIDDEN;
}

kv_status kv_access_check(kv_t *kv, const char *vault, const auth_principal *p,
                          const char *permission, kv_err *e)
{
    return access_check(kv, vault, NULL, p, permission, e);
}

kv_status kv_access_authorize(emu_req *req, const char *vault, const char *key,
                              const char *permission, kv_err *e, void *ud)
{
    return access_check(ud, vault, key, req->principal, permission, e);
}

static const char *crypt_permission(kv_crypt_op op)
{
    switch (op) {
    case KV_CRYPT_ENCRYPT:
        return "encrypt";
    case KV_CRYPT_DECRYPT:
        return "decrypt";
    case KV_CRYPT_WRAP:
        return "wrapKey";
    case KV_CRYPT_UNWRAP:
        return "unwrapKey";
    }
    return "";
}

kv_status kv_key_crypt_as(kv_t *kv, const auth_principal *p, const char *vault, const char *name,
                          const char *version, kv_crypt_op op, hsm_rsa_enc_alg alg,
                          const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len,
                          char version_out[33], kv_err *e)
{
    if (!p) {
        snprintf(e->msg, sizeof e->msg, "No principal to act as.");
        return KV_ERR_FORBIDDEN;
    }
    auth_principal as = *p;
    as.from_token = true;
    kv_status st = access_check(kv, vault, name, &as, crypt_permission(op), e);
    if (st != KV_OK)
        return st;
    return kv_key_crypt(kv, vault, name, version, op, alg, in, in_len, out, out_len, version_out,
                        e);
}

kv_status kv_vault_cmk_check(kv_t *kv, const char *vault, kv_err *e)
{
    kv_vault_info info;
    if (kv_vault_get(kv, vault, &info) != KV_OK || info.deleted) {
        snprintf(e->msg, sizeof e->msg, "Key vault '%.64s' does not exist.", vault);
        return KV_ERR_VAULT_NOT_FOUND;
    }
    if (!info.soft_delete || !info.purge_protection) {
        snprintf(e->msg, sizeof e->msg,
                 "Key vault '%.64s' must have soft delete and purge protection enabled to hold a "
                 "customer-managed key (soft delete: %s, purge protection: %s).",
                 info.name, info.soft_delete ? "on" : "off", info.purge_protection ? "on" : "off");
        return KV_ERR_BAD_PARAM;
    }
    return KV_OK;
}

kv_status kv_key_cmk_check(kv_t *kv, const char *vault, const char *name, const char *version,
                           kv_key_view *out, kv_err *e)
{
    kv_key_view v;
    memset(&v, 0, sizeof v);
    kv_status st = kv_key_get(kv, vault, name, version ? version : "", &v, e);
    if (st != KV_OK)
        return st;
    char what[200];
    snprintf(what, sizeof what, "Key '%.64s'%s%.32s in vault '%.64s'", v.name,
             version && *version ? " version " : "", version && *version ? v.version : "", vault);
    int64_t now = emu_clock_now();
    if (strncmp(v.kty, "RSA", 3)) {
        snprintf(e->msg, sizeof e->msg, "%s is of type %s; a customer-managed key must be RSA or "
                 "RSA-HSM.", what, v.kty);
        st = KV_ERR_BAD_PARAM;
    } else if (v.bits < 2048) {
        snprintf(e->msg, sizeof e->msg, "%s has %u bits; a customer-managed key needs at least "
                 "2048.", what, v.bits);
        st = KV_ERR_BAD_PARAM;
    } else if (!v.enabled) {
        snprintf(e->msg, sizeof e->msg, "%s is disabled.", what);
        st = KV_ERR_DISABLED;
    } else if (v.exp && now >= v.exp) {
        char t[40];
        emu_time_rfc3339(v.exp, t, sizeof t);
        snprintf(e->msg, sizeof e->msg, "%s expired at %s.", what, t);
        st = KV_ERR_EXPIRED;
    } else if (v.nbf && now < v.nbf) {
        char t[40];
        emu_time_rfc3339(v.nbf, t, sizeof t);
        snprintf(e->msg, sizeof e->msg, "%s is not valid before %s.", what, t);
        st = KV_ERR_NOT_YET_VALID;
    } else if (!(v.ops & KV_OP_WRAP) || !(v.ops & KV_OP_UNWRAP)) {
        snprintf(e->msg, sizeof e->msg, "%s does not allow wrapKey and unwrapKey (key_ops).",
                 what);
        st = KV_ERR_OP_NOT_ALLOWED;
    }
    if (st == KV_OK && out)
        *out = v;
    else
        kv_key_view_cleanup(&v);
    return st;
}

kv_status kv_key_cmk_probe_as(kv_t *kv, const auth_principal *p, const char *vault,
                              const char *name, const char *version, kv_key_view *out,
                              kv_err *e)
{
    if (!p) {
        snprintf(e->msg, sizeof e->msg, "No principal to act as.");
        return KV_ERR_FORBIDDEN;
    }
    auth_principal as = *p;
    as.from_token = true;
    static const char *const need[] = {"get", "wrapKey", "unwrapKey"};
    for (size_t i = 0; i < 3; i++) {
        kv_status st = access_check(kv, vault, name, &as, need[i], e);
        if (st == KV_ERR_FORBIDDEN || st == KV_ERR_FORBIDDEN_RBAC) {
            snprintf(e->msg, sizeof e->msg,
                     "Principal %s lacks the %s key permission on vault '%.64s' (%s); grant "
                     "get, wrapKey and unwrapKey (or the Key Vault Crypto Service Encryption "
                     "User role).",
                     p->oid, need[i], vault,
                     st == KV_ERR_FORBIDDEN ? "access policy" : "RBAC role assignment");
            return st;
        }
        if (st != KV_OK)
            return st;
    }
    return kv_key_cmk_check(kv, vault, name, version, out, e);
}
