/*
 * test_arm: the ARM side of Key Vault in-process (emu_router_dispatch) on a real SoftHSM token
 * in a fresh data directory under $CMK_TEST_TMP (else /tmp), removed at the end
 * (CMK_TEST_KEEP=1 keeps it): resource ids, resource groups, vault validation, soft delete and
 * recovery of vaults as the data plane sees them, purge (token objects destroyed), access
 * policy operations and the access check decision table.
 *
 * The group fixture (fixture.h) opens hsm + store + kv + armres, registers the data plane, the
 * resource group routes and Microsoft.KeyVault/vaults, and creates resource group "rg1" (eastus).
 * Tests run in order; each uses its own vaults.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "armres.h"
#include "clock.h"
#include "fixture.h"
#include "hsm.h"
#include "keyvault/access.h"
#include "keyvault/kv.h"
#include "keyvault/kv_api.h"
#include "keyvault/vaults_arm.h"
#include "router.h"
#include "store.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define SUB "00000000-0000-4000-8000-000000000001"
#define VAULTS "/subscriptions/" SUB "/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/"
#define KVSUB "/subscriptions/" SUB "/providers/Microsoft.KeyVault/"
#define AV "?api-version=2026-02-01"
#define TENANT "72f988bf-86f1-41af-91ab-2d7cd011db47"
#define OID_A "aaaaaaaa-0000-4000-8000-000000000001"
#define APP_A "aaaaaaaa-0000-4000-8000-0000000000a1"

typedef struct {
    cmk_fixture *fx;
    int changes; /* change hook calls */
} fixture;

static void on_change(const char *vault, const char *key, void *ud)
{
    (void)vault;
    (void)key;
    ((fixture *)ud)->changes++;
}

/* One request through the router. status out; the parsed JSON answer (or NULL) returned. */
static json_t *call_as(fixture *f, const char *method, const char *uri, const char *body,
                       const char *host, auth_principal *p, int *status)
{
    emu_req *req = cmk_fixture_dispatch(
        f->fx, method, uri, &(cmk_call_opts){.host = host, .body = body, .principal = p});
    *status = req->status;
    json_t *j = cmk_resp_json(req);
    emu_req_free(req);
    return j;
}

static json_t *call(fixture *f, const char *method, const char *uri, const char *body, int *status)
{
    return call_as(f, method, uri, body, NULL, NULL, status);
}

static const char *err_code(const json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "code"));
}

static void put_vault_ok(fixture *f, const char *name, const char *props_extra)
{
    char uri[256], body[4096];
    snprintf(uri, sizeof uri, VAULTS "%s" AV, name);
    snprintf(body, sizeof body,
             "{\"location\":\"eastus\",\"properties\":{\"tenantId\":\"" TENANT "\","
             "\"sku\":{\"family\":\"A\",\"name\":\"standard\"}%s%s}}",
             props_extra && strstr(props_extra, "accessPolicies") ? "" : ",\"accessPolicies\":[]",
             props_extra ? props_extra : "");
    int st;
    json_t *j = call(f, "PUT", uri, body, &st);
    if (st != 200)
        fail_msg("PUT vault %s -> %d %s: %s", name, st, err_code(j),
                 json_string_value(json_object_get(json_object_get(j, "error"), "message")));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "properties"), "provisioningState")),
        "Succeeded");
    json_decref(j);
}

/* Key pairs kept: in the token, or sealed with their blob in the store. */
static size_t token_keys(fixture *f)
{
    size_t n = cmk_test_stored_keys(f->fx->hsm, f->fx->store);
    assert_true(n != (size_t)-1);
    return n;
}

/* ---- tests ------------------------------------------------------------------------------------
 */

static void test_id_parse(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        bool ok;
        const char *sub, *rg, *ns, *type, *name;
    } T[] = {
        {"/subscriptions/s1", true, "s1", "", "", "", ""},
        {"/subscriptions/s1/resourceGroups/rg", true, "s1", "rg", "", "", ""},
        {"/subscriptions/s1/resourcegroups/rg/providers/Microsoft.KeyVault/vaults/v1", true, "s1",
         "rg", "Microsoft.KeyVault", "vaults", "v1"},
        {"/SUBSCRIPTIONS/s1/RESOURCEGROUPS/rg/PROVIDERS/ns/t/n/", true, "s1", "rg", "ns", "t", "n"},
        {"//subscriptions/s1//resourceGroups/rg", true, "s1", "rg", "", "", ""},
        {"/subscriptions", false, 0, 0, 0, 0, 0},
        {"subscriptions/s1", false, 0, 0, 0, 0, 0},
        {"/subscription/s1", false, 0, 0, 0, 0, 0},
        {"/subscriptions/s1/resourceGroups", false, 0, 0, 0, 0, 0},
        {"/subscriptions/s1/resourceGroups/rg/providers/ns/t", false, 0, 0, 0, 0, 0},
        {"/subscriptions/s1/resourceGroups/rg/providers/ns/t/n/extra", false, 0, 0, 0, 0, 0},
    };
    for (size_t i = 0; i < N_ELEMS(T); i++) {
        arm_id id;
        bool ok = arm_id_parse(T[i].in, &id);
        if (ok != T[i].ok)
            fail_msg("arm_id_parse(%s) = %d", T[i].in, ok);
        if (!ok)
            continue;
        assert_string_equal(id.subscription, T[i].sub);
        assert_string_equal(id.resource_group, T[i].rg);
        assert_string_equal(id.ns, T[i].ns);
        assert_string_equal(id.type, T[i].type);
        assert_string_equal(id.name, T[i].name);
    }
    arm_id id;
    assert_true(arm_id_parse("/subscriptions/s/resourcegroups/r/providers/a/b/c", &id));
    char *s = arm_id_build(&id);
    assert_string_equal(s, "/subscriptions/s/resourceGroups/r/providers/a/b/c");
    free(s);
}

static void test_arm_basics(void **state)
{
    fixture *f = *state;
    int st;
    /* no bearer token: 401 with the challenge */
    emu_req *req = emu_req_new("GET", "/subscriptions" AV);
    emu_router_dispatch(f->fx->router, req);
    assert_int_equal(req->status, 401);
    bool challenge = false;
    for (emu_resp_header *h = req->resp_headers; h; h = h->next)
        challenge |= !strcasecmp(h->name, "WWW-Authenticate") &&
                     strstr(h->value, "authorization_uri=\"https://localhost/") != NULL;
    assert_true(challenge);
    emu_req_free(req);
    /* api-version is required */
    json_t *j = call(f, "GET", "/subscriptions", NULL, &st);
    assert_int_equal(st, 400);
    assert_string_equal(err_code(j), "MissingApiVersionParameter");
    json_decref(j);
    j = call(f, "GET", "/subscriptions/" SUB AV, NULL, &st);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(j, "displayName")), "cmkemu");
    json_decref(j);
    /* resource groups */
    j = call(f, "PUT", "/subscriptions/" SUB "/resourcegroups/rg2" AV, "{\"location\":\"westus\"}",
             &st);
    assert_int_equal(st, 201);
    json_decref(j);
    j = call(f, "PUT", "/subscriptions/" SUB "/resourceGroups/RG2" AV, "{\"location\":\"westus\"}",
             &st);
    assert_int_equal(st, 200);
    json_decref(j);
    j = call(f, "HEAD", "/subscriptions/" SUB "/resourceGroups/rg2" AV, NULL, &st);
    assert_int_equal(st, 204);
    j = call(f, "DELETE", "/subscriptions/" SUB "/resourceGroups/rg2" AV, NULL, &st);
    assert_int_equal(st, 200);
    j = call(f, "GET", "/subscriptions/" SUB "/resourceGroups/rg2" AV, NULL, &st);
    assert_int_equal(st, 404);
    assert_string_equal(err_code(j), "ResourceGroupNotFound");
    json_decref(j);
}

static void test_vault_put_validation(void **state)
{
    fixture *f = *state;
    static const char *const OK_SKU = "\"sku\":{\"family\":\"A\",\"name\":\"standard\"}";
    char many[64 * 1100 + 100];
    size_t o = (size_t)snprintf(many, sizeof many, "[");
    for (int i = 0; i < 1025; i++)
        o += (size_t)snprintf(many + o, sizeof many - o,
                              "%s{\"tenantId\":\"t\",\"objectId\":\"o%d\",\"permissions\":{}}",
                              i ? "," : "", i);
    snprintf(many + o, sizeof many - o, "]");
    struct {
        const char *name;
        char body[sizeof many + 400];
        int status;
        const char *code;
    } T[] = {
        {"a", "", 400, "VaultNameNotValid"},
        {"bad--name", "", 400, "VaultNameNotValid"},
        {"1abc", "", 400, "VaultNameNotValid"},
        {"noloc", "{\"properties\":{}}", 400, "LocationRequired"},
        {"notenant", "", 400, "BadRequest"},
        {"badfam", "", 400, "BadRequest"},
        {"badsku", "", 400, "BadRequest"},
        {"ret6", "", 400, "BadRequest"},
        {"ret91", "", 400, "BadRequest"},
        {"ppfalse", "", 400, "BadRequest"},
        {"sdfalse", "", 400, "BadRequest"},
        {"badperm", "", 400, "BadRequest"},
        {"toomany", "", 400, "BadRequest"},
        {"badjson", "{", 400, "InvalidRequestContent"},
    };
    const char *props[] = {
        "",
        "",
        "",
        NULL,
        "\"sku\":{\"family\":\"A\",\"name\":\"standard\"}",
        "\"tenantId\":\"" TENANT "\",\"sku\":{\"family\":\"B\",\"name\":\"standard\"}",
        "\"tenantId\":\"" TENANT "\",\"sku\":{\"family\":\"A\",\"name\":\"gold\"}",
        NULL,
        NULL,
        NULL,
        NULL,
        NULL,
        NULL,
        NULL,
    };
    for (size_t i = 0; i < N_ELEMS(T); i++) {
        if (T[i].body[0])
            continue;
        char extra[sizeof many + 100] = "";
        if (!strcmp(T[i].name, "ret6"))
            snprintf(extra, sizeof extra, ",\"softDeleteRetentionInDays\":6");
        else if (!strcmp(T[i].name, "ret91"))
            snprintf(extra, sizeof extra, ",\"softDeleteRetentionInDays\":91");
        else if (!strcmp(T[i].name, "ppfalse"))
            snprintf(extra, sizeof extra, ",\"enablePurgeProtection\":false");
        else if (!strcmp(T[i].name, "sdfalse"))
            snprintf(extra, sizeof extra, ",\"enableSoftDelete\":false");
        else if (!strcmp(T[i].name, "badperm"))
            snprintf(extra, sizeof extra,
                     ",\"accessPolicies\":[{\"tenantId\":\"t\",\"objectId\":\"o\","
                     "\"permissions\":{\"keys\":[\"fly\"]}}]");
        else if (!strcmp(T[i].name, "toomany"))
            snprintf(extra, sizeof extra, ",\"accessPolicies\":%s", many);
        snprintf(T[i].body, sizeof T[i].body, "{\"location\":\"eastus\",\"properties\":{%s%s}}",
                 props[i] ? props[i] : "\"tenantId\":\"" TENANT "\",", extra);
        if (!props[i]) /* tenant + sku + extra */
            snprintf(T[i].body, sizeof T[i].body,
                     "{\"location\":\"eastus\",\"properties\":{\"tenantId\":\"" TENANT "\",%s%s}}",
                     OK_SKU, extra);
    }
    for (size_t i = 0; i < N_ELEMS(T); i++) {
        char uri[256];
        snprintf(uri, sizeof uri, VAULTS "%s" AV, T[i].name);
        int st;
        json_t *j = call(f, "PUT", uri, T[i].body, &st);
        if (st != T[i].status || !err_code(j) || strcmp(err_code(j), T[i].code))
            fail_msg("PUT %s: expected %d %s, got %d %s", T[i].name, T[i].status, T[i].code, st,
                     err_code(j) ? err_code(j) : "(none)");
        json_decref(j);
    }
    /* a resource group that does not exist */
    int st;
    json_t *j = call(f, "PUT",
                     "/subscriptions/" SUB "/resourceGroups/nope/providers/Microsoft.KeyVault/"
                     "vaults/okname" AV,
                     "{\"location\":\"eastus\",\"properties\":{}}", &st);
    assert_int_equal(st, 404);
    assert_string_equal(err_code(j), "ResourceGroupNotFound");
    json_decref(j);
}

static void test_purge_protection_irreversible(void **state)
{
    fixture *f = *state;
    put_vault_ok(f, "pp-vault", ",\"enablePurgeProtection\":true");
    int st;
    json_t *j = call(f, "PATCH", VAULTS "pp-vault" AV,
                     "{\"properties\":{\"enablePurgeProtection\":false}}", &st);
    assert_int_equal(st, 400);
    assert_string_equal(err_code(j), "BadRequest");
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")),
               "irreversible"));
    json_decref(j);
    /* a PUT that omits it keeps it */
    put_vault_ok(f, "pp-vault", "");
    kv_vault_info vi;
    assert_int_equal(kv_vault_get(f->fx->kv, "pp-vault", &vi), KV_OK);
    assert_true(vi.purge_protection);
    /* the domain refuses too */
    kv_vault_state s;
    assert_int_equal(kv_vault_state_get(f->fx->kv, "pp-vault", &s), KV_OK);
    s.info.purge_protection = false;
    kv_err e = {{0}};
    assert_int_equal(kv_vault_put(f->fx->kv, &s, NULL, &e), KV_ERR_BAD_PARAM);
    kv_vault_state_cleanup(&s);
    /* deleted + protected: purge refused until the scheduled date */
    j = call(f, "DELETE", VAULTS "pp-vault" AV, NULL, &st);
    assert_int_equal(st, 200);
    j = call(f, "POST", KVSUB "locations/eastus/deletedVaults/pp-vault/purge" AV, NULL, &st);
    assert_int_equal(st, 409);
    assert_string_equal(err_code(j), "InvalidOperation");
    json_decref(j);
}

static void test_soft_delete_recover_purge(void **state)
{
    fixture *f = *state;
    put_vault_ok(f, "life", ",\"softDeleteRetentionInDays\":7");
    size_t before = token_keys(f);
    int st;
    json_t *j =
        call_as(f, "POST", "/keys/k1/create?api-version=7.5", "{\"kty\":\"RSA\",\"key_size\":2048}",
                "life.vault.localhost:8443", NULL, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    assert_int_equal(token_keys(f), before + 1);
    int changes = f->changes;
    j = call(f, "DELETE", VAULTS "life" AV, NULL, &st);
    assert_int_equal(st, 200);
    assert_true(f->changes > changes);
    /* the data plane no longer answers */
    j = call_as(f, "GET", "/keys/k1?api-version=7.5", NULL, "life.vault.localhost:8443", NULL, &st);
    assert_int_equal(st, 404);
    assert_string_equal(err_code(j), "VaultNotFound");
    json_decref(j);
    j = call(f, "GET", VAULTS "life" AV, NULL, &st);
    assert_int_equal(st, 404);
    json_decref(j);
    /* the name is taken */
    char body[512];
    snprintf(body, sizeof body,
             "{\"location\":\"eastus\",\"properties\":{\"tenantId\":\"" TENANT
             "\",\"sku\":{\"family\":\"A\",\"name\":\"standard\"}}}");
    j = call(f, "PUT", VAULTS "life" AV, body, &st);
    assert_int_equal(st, 409);
    assert_string_equal(err_code(j), "VaultAlreadyExists");
    json_decref(j);
    j = call(f, "GET", KVSUB "locations/eastus/deletedVaults/life" AV, NULL, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    /* recover: vault and key are back */
    snprintf(body, sizeof body,
             "{\"location\":\"eastus\",\"properties\":{\"tenantId\":\"" TENANT
             "\",\"sku\":{\"family\":\"A\",\"name\":\"standard\"},\"createMode\":\"recover\"}}");
    j = call(f, "PUT", VAULTS "life" AV, body, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    j = call_as(f, "GET", "/keys/k1?api-version=7.5", NULL, "life.vault.localhost:8443", NULL, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    /* delete again and purge: the key pair leaves the token */
    j = call(f, "DELETE", VAULTS "life" AV, NULL, &st);
    assert_int_equal(st, 200);
    j = call(f, "POST", KVSUB "locations/eastus/deletedVaults/life/purge" AV, NULL, &st);
    assert_int_equal(st, 200);
    assert_int_equal(token_keys(f), before);
    j = call(f, "GET", KVSUB "locations/eastus/deletedVaults/life" AV, NULL, &st);
    assert_int_equal(st, 404);
    json_decref(j);
    /* and the name is free again */
    put_vault_ok(f, "life", "");
}

static void test_access_policy_ops(void **state)
{
    fixture *f = *state;
    put_vault_ok(f, "apv", "");
    static const struct {
        const char *op, *keys;
        const char *expect; /* sorted, comma-joined; "" = no policy left */
    } T[] = {
        {"add", "[\"get\",\"WRAPKEY\"]", "get,wrapKey"},
        {"add", "[\"unwrapKey\",\"get\"]", "get,unwrapKey,wrapKey"},
        {"remove", "[\"wrapKey\"]", "get,unwrapKey"},
        {"replace", "[\"sign\"]", "sign"},
        {"remove", "[\"sign\"]", ""},
    };
    for (size_t i = 0; i < N_ELEMS(T); i++) {
        char uri[256], body[512];
        snprintf(uri, sizeof uri, VAULTS "apv/accessPolicies/%s" AV, T[i].op);
        snprintf(body, sizeof body,
                 "{\"properties\":{\"accessPolicies\":[{\"tenantId\":\"" TENANT
                 "\",\"objectId\":\"" OID_A "\",\"permissions\":{\"keys\":%s}}]}}",
                 T[i].keys);
        int st;
        json_t *j = call(f, "PUT", uri, body, &st);
        assert_int_equal(st, 200);
        json_decref(j);
        kv_vault_state s;
        assert_int_equal(kv_vault_state_get(f->fx->kv, "apv", &s), KV_OK);
        char got[256] = "";
        if (s.npolicies) {
            assert_int_equal(s.npolicies, 1);
            json_t *keys = json_object_get(s.policies[0].permissions, "keys");
            /* sort names */
            const char *names[32];
            size_t n = 0;
            size_t x;
            json_t *it;
            json_array_foreach(keys, x, it) if (n < 32) names[n++] = json_string_value(it);
            for (size_t a = 0; a < n; a++)
                for (size_t b = a + 1; b < n; b++)
                    if (strcmp(names[a], names[b]) > 0) {
                        const char *t = names[a];
                        names[a] = names[b];
                        names[b] = t;
                    }
            size_t o = 0;
            for (size_t a = 0; a < n && o < sizeof got; a++)
                o += (size_t)snprintf(got + o, sizeof got - o, "%s%s", a ? "," : "", names[a]);
        }
        if (strcmp(got, T[i].expect))
            fail_msg("after %s %s: keys %s, expected %s", T[i].op, T[i].keys, got, T[i].expect);
        kv_vault_state_cleanup(&s);
    }
}

static void test_access_check(void **state)
{
    fixture *f = *state;
    put_vault_ok(f, "acv",
                 ",\"accessPolicies\":[{\"tenantId\":\"" TENANT "\",\"objectId\":\"" OID_A
                 "\",\"permissions\":{\"keys\":[\"get\",\"unwrapKey\"]}},"
                 "{\"tenantId\":\"" TENANT "\",\"objectId\":\"all-oid\","
                 "\"permissions\":{\"keys\":[\"all\"]}},"
                 "{\"tenantId\":\"" TENANT "\",\"objectId\":\"app-oid\",\"applicationId\":"
                 "\"" APP_A "\",\"permissions\":{\"keys\":[\"wrapKey\"]}}]");
    put_vault_ok(f, "rbacv", ",\"enableRbacAuthorization\":true");
    static const char *const PERMS[] = {"create",
                                        "import",
                                        "get",
                                        "update",
                                        "list",
                                        "delete",
                                        "purge",
                                        "recover",
                                        "encrypt",
                                        "decrypt",
                                        "wrapKey",
                                        "unwrapKey",
                                        "sign",
                                        "verify",
                                        "backup",
                                        "restore",
                                        "rotate",
                                        "getrotationpolicy",
                                        "setrotationpolicy"};
    auth_principal a = {.oid = OID_A,
                        .appid = "some-app",
                        .tid = TENANT,
                        .from_token = true,
                        .iss = "https://sts.windows.net/" TENANT "/"};
    auth_principal all = {.oid = "all-oid", .tid = TENANT, .from_token = true};
    auth_principal app_ok = {.oid = "app-oid", .appid = APP_A, .tid = TENANT, .from_token = true};
    auth_principal app_bad = {
        .oid = "app-oid", .appid = "other", .tid = TENANT, .from_token = true};
    auth_principal nobody = {.oid = "nobody", .tid = TENANT, .from_token = true};
    auth_principal mapped = {.oid = "nobody", .tid = TENANT, .from_token = false};
    kv_err e;
    for (size_t i = 0; i < N_ELEMS(PERMS); i++) {
        bool a_ok = !strcmp(PERMS[i], "get") || !strcmp(PERMS[i], "unwrapKey");
        assert_int_equal(kv_access_check(f->fx->kv, "acv", &a, PERMS[i], &e),
                         a_ok ? KV_OK : KV_ERR_FORBIDDEN);
        assert_int_equal(kv_access_check(f->fx->kv, "acv", &all, PERMS[i], &e), KV_OK);
        assert_int_equal(kv_access_check(f->fx->kv, "acv", &nobody, PERMS[i], &e),
                         KV_ERR_FORBIDDEN);
        assert_int_equal(kv_access_check(f->fx->kv, "acv", NULL, PERMS[i], &e), KV_OK);
        assert_int_equal(kv_access_check(f->fx->kv, "acv", &mapped, PERMS[i], &e), KV_OK);
        assert_int_equal(kv_access_check(f->fx->kv, "rbacv", &all, PERMS[i], &e),
                         KV_ERR_FORBIDDEN_RBAC);
    }
    /* the permission name is case-insensitive; the message names caller and vault */
    assert_int_equal(kv_access_check(f->fx->kv, "acv", &a, "UNWRAPKEY", &e), KV_OK);
    assert_int_equal(kv_access_check(f->fx->kv, "acv", &a, "wrapKey", &e), KV_ERR_FORBIDDEN);
    assert_non_null(strstr(e.msg,
                           "'appid=some-app;oid=" OID_A ";iss=https://sts.windows.net/" TENANT
                           "/' does not have keys wrapKey permission on key vault "
                           "'acv;location=eastus'"));
    /* appid-bound policy */
    assert_int_equal(kv_access_check(f->fx->kv, "acv", &app_ok, "wrapKey", &e), KV_OK);
    assert_int_equal(kv_access_check(f->fx->kv, "acv", &app_bad, "wrapKey", &e), KV_ERR_FORBIDDEN);
    /* through the data plane: 403 ForbiddenByPolicy */
    int st;
    json_t *j =
        call_as(f, "GET", "/keys?api-version=7.5", NULL, "acv.vault.localhost:8443", &nobody, &st);
    assert_int_equal(st, 403);
    assert_string_equal(err_code(j), "Forbidden");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(j, "error"), "innererror"), "code")),
                        "ForbiddenByPolicy");
    json_decref(j);
    j = call_as(f, "GET", "/keys?api-version=7.5", NULL, "acv.vault.localhost:8443", &all, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    j = call_as(f, "GET", "/keys?api-version=7.5", NULL, "rbacv.vault.localhost:8443", &all, &st);
    assert_int_equal(st, 403);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(j, "error"), "innererror"), "code")),
                        "ForbiddenByRbac");
    json_decref(j);
}

/* ---- fixture -----------------------------------------------------------------------------------
 */

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->fx = cmk_fixture_new("test_arm", TENANT,
                            CMK_FX_KV | CMK_FX_ARM | CMK_FX_KV_API | CMK_FX_ARM_ROUTES |
                                CMK_FX_VAULTS_ARM);
    *state = f;
    if (!f->fx)
        return -1;
    kv_set_change_hook(f->fx->kv, on_change, f);
    if (!armres_rg_put(f->fx->arm, SUB, "rg1", "eastus", NULL, NULL))
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;
    if (!f)
        return 0;
    cmk_fixture_free(f->fx);
    free(f);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_parse),
        cmocka_unit_test(test_arm_basics),
        cmocka_unit_test(test_vault_put_validation),
        cmocka_unit_test(test_purge_protection_irreversible),
        cmocka_unit_test(test_soft_delete_recover_purge),
        cmocka_unit_test(test_access_policy_ops),
        cmocka_unit_test(test_access_check),
    };
    return cmocka_run_group_tests_name("arm", tests, group_setup, group_teardown);
}
