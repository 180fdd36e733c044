/*
 * test_roles: role definitions, role assignments and the RBAC decision, in-process
 * (emu_router_dispatch) on a real store and SoftHSM token in a fresh directory under
 * $CMK_TEST_TMP (else /tmp; CMK_TEST_KEEP=1 keeps it).
 *
 * The group fixture opens hsm + store + auth (strict, four principals) + kv + armres + roles,
 * registers the role-assignment routes, the Key Vault data plane and the vault ARM routes,
 * installs the RBAC hook the way main.c does, and creates an RBAC vault "rbv" in rg1 with keys
 * k1 and k2. Tests run in order and leave no assignments behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "armres.h"
#include "auth/auth.h"
#include "auth/roles.h"
#include "auth/roles_api.h"
#include "clock.h"
#include "fixture.h"
#include "hsm.h"
#include "keyvault/access.h"
#include "keyvault/kv.h"
#include "keyvault/kv_api.h"
#include "keyvault/vaults_arm.h"
#include "router.h"
#include "store.h"
#include "util.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define TENANT "72f988bf-0000-4000-8000-00000000c0de"
#define SUB "00000000-0000-4000-8000-000000000001"
#define SUBSCOPE "/subscriptions/" SUB
#define RG SUBSCOPE "/resourceGroups/rg1"
#define VAULT RG "/providers/Microsoft.KeyVault/vaults/rbv"
#define KEY1 VAULT "/keys/k1"
#define KEY2 VAULT "/keys/k2"
#define RA "/providers/Microsoft.Authorization/roleAssignments"
#define AV "?api-version=2022-04-01"
#define OWNER_OID "0b000001-0000-4000-8000-00000000b001"
#define APP_OID "0b000003-0000-4000-8000-00000000b003"
#define APP_ID "0a000003-0000-4000-8000-00000000a003"
#define USER_OID "0c000001-0000-4000-8000-00000000c001"
#define MI_OID "0b000005-0000-4000-8000-00000000b005"
#define NOBODY "0b000009-0000-4000-8000-00000000b009"

#define R_OWNER "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
#define R_CONTRIBUTOR "b24988ac-6180-42a0-ab88-20f7382dd24c"
#define R_READER "acdd72a7-3385-48ef-bd42-f606fba81ae7"
#define R_KV_ADMIN "00482a5a-887f-4fb3-b363-3b7fe8e74483"
#define R_KV_OFFICER "14b46e9e-c2b7-41b4-b07b-48a6ebf60603"
#define R_KV_USER "12338af0-0e69-4776-bea7-57ae8d297424"
#define R_KV_CSEU "e147488a-f6f5-4113-8e2d-b22465e65bf6"
#define R_KV_READER "21090545-7ca7-4776-b22c-e363652d74d2"
#define RDID(g) "/subscriptions/" SUB "/providers/Microsoft.Authorization/roleDefinitions/" g

typedef struct {
    cmk_fixture *fx;
    roles_t *roles;
    auth_roles_api_ctx rapi;
    auth_principal owner, app, user, mapped;
    int changes;
    char last_change[ROLES_MAX_SCOPE];
} fixture;

static void on_change(const char *scope, void *ud)
{
    fixture *f = ud;
    f->changes++;
    snprintf(f->last_change, sizeof f->last_change, "%s", scope);
}

static json_t *call_as(fixture *f, const char *method, const char *uri, const char *body,
                       const char *host, auth_principal *p, int *status)
{
    emu_req *req = cmk_fixture_dispatch(f->fx, method, uri,
                                        &(cmk_call_opts){.host = host, .body = body, .principal = p});
    *status = req->status;
    json_t *j = cmk_resp_json(req);
    emu_req_free(req);
    return j;
}

static const char *err_code(const json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "code"));
}

static const char *err_msg(const json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "message"));
}

static void put_direct(fixture *f, const char *name, const char *scope, const char *role,
                       const char *principal)
{
    auth_role_assignment a;
    memset(&a, 0, sizeof a);
    snprintf(a.name, sizeof a.name, "%s", name);
    snprintf(a.scope, sizeof a.scope, "%s", scope);
    const auth_role_def *d = auth_role_def_find(role); /* names are longer than a GUID */
    snprintf(a.role_guid, sizeof a.role_guid, "%s", d ? d->guid : role);
    snprintf(a.principal_id, sizeof a.principal_id, "%s", principal);
    char msg[512] = "";
    roles_status st = auth_roles_put(f->roles, &a, NULL, NULL, msg, sizeof msg);
    if (st != ROLES_OK)
        fail_msg("put %s %s at %s: %s (%s)", role, principal, scope, auth_roles_status_str(st),
                 msg);
}

static void del_direct(fixture *f, const char *name, const char *scope)
{
    assert_int_equal(auth_roles_delete(f->roles, scope, name, NULL), ROLES_OK);
}

static const char *const PERMS[] = {
    "get",     "list",    "create",  "import",  "update",  "delete",    "recover",
    "backup",  "restore", "purge",   "encrypt", "decrypt", "wrapKey",   "unwrapKey",
    "sign",    "verify",  "rotate",  "getrotationpolicy", "setrotationpolicy", "release"};

/* true when perm is in the comma-separated list ("*" = every permission) */
static bool listed(const char *list, const char *perm)
{
    if (!strcmp(list, "*"))
        return true;
    size_t n = strlen(perm);
    for (const char *p = list; (p = strstr(p, perm)) != NULL; p++)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_definitions(void **state)
{
    (void)state;
    static const struct {
        const char *guid, *name;
    } T[] = {{R_OWNER, "Owner"},
             {R_CONTRIBUTOR, "Contributor"},
             {R_READER, "Reader"},
             {R_KV_ADMIN, "Key Vault Administrator"},
             {R_KV_OFFICER, "Key Vault Crypto Officer"},
             {R_KV_USER, "Key Vault Crypto User"},
             {R_KV_CSEU, "Key Vault Crypto Service Encryption User"},
             {R_KV_READER, "Key Vault Reader"}};
    for (size_t i = 0; i < N_ELEMS(T); i++) {
        const auth_role_def *d = auth_role_def_find(T[i].guid);
        assert_non_null(d);
        assert_string_equal(d->name, T[i].name);
        assert_ptr_equal(auth_role_def_find(T[i].name), d);
        char id[200];
        snprintf(id, sizeof id, "/subscriptions/%s/providers/Microsoft.Authorization/"
                 "roleDefinitions/%s", SUB, T[i].guid);
        assert_ptr_equal(auth_role_def_find(id), d);
    }
    assert_null(auth_role_def_find("00000000-0000-0000-0000-000000000000"));
    assert_null(auth_role_def_find("/subscriptions/x/providers/Other/roleDefinitions/" R_OWNER));
    assert_string_equal(auth_roles_key_data_action("unwrapKey"),
                        "Microsoft.KeyVault/vaults/keys/unwrap/action");
    assert_null(auth_roles_key_data_action("fly"));

    static const struct {
        const char *in, *out; /* out NULL = invalid */
    } S[] = {
        {"/subscriptions/s", "/subscriptions/s"},
        {"//SUBSCRIPTIONS/s/resourcegroups/rg/", "/subscriptions/s/resourceGroups/rg"},
        {"/subscriptions/s/resourceGroups/rg/PROVIDERS/Microsoft.KeyVault/vaults/v/keys/k",
         "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v/keys/k"},
        {"/subscriptions/s/providers/Microsoft.X/t/n", "/subscriptions/s/providers/Microsoft.X/t/n"},
        {"/subscriptions", NULL},
        {"/tenants/t", NULL},
        {"/subscriptions/s/resourceGroups", NULL},
        {"/subscriptions/s/resourceGroups/rg/providers/ns/t", NULL},
        {"/subscriptions/s/resourceGroups/rg/providers/ns/t/n/keys", NULL},
        {"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Authorization/a/b", NULL},
        {"/subscriptions/s/resourceGroups/rg/providers/ns/t/n/providers/x", NULL},
        {"/subscriptions/s/resourceGroups/r'g", NULL},
    };
    for (size_t i = 0; i < N_ELEMS(S); i++) {
        char out[ROLES_MAX_SCOPE];
        bool ok = auth_roles_scope_canon(S[i].in, out, sizeof out);
        if (ok != (S[i].out != NULL))
            fail_msg("scope_canon(%s) = %d", S[i].in, ok);
        if (ok)
            assert_string_equal(out, S[i].out);
    }
}

/* Each built-in role at vault scope x every key permission, as Azure's dataActions say. */
static void test_decision_table(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *role, *grants;
    } T[] = {
        {R_OWNER, ""},
        {R_CONTRIBUTOR, ""},
        {R_READER, ""},
        {R_KV_ADMIN, "*"},
        {R_KV_OFFICER, "*"},
        {R_KV_USER, "get,list,update,backup,encrypt,decrypt,wrapKey,unwrapKey,sign,verify"},
        {R_KV_CSEU, "get,list,wrapKey,unwrapKey"},
        {R_KV_READER, "get,list,getrotationpolicy"},
    };
    for (size_t i = 0; i < N_ELEMS(T); i++) {
        put_direct(f, "11111111-0000-4000-8000-000000000001", VAULT, T[i].role, APP_OID);
        for (size_t k = 0; k < N_ELEMS(PERMS); k++) {
            bool want = listed(T[i].grants, PERMS[k]);
            if (auth_roles_allows(f->roles, APP_OID, KEY1, PERMS[k]) != want)
                fail_msg("role %s, %s: expected %s", T[i].role, PERMS[k],
                         want ? "allowed" : "denied");
            /* the same role held by someone else grants nothing */
            assert_false(auth_roles_allows(f->roles, USER_OID, KEY1, PERMS[k]));
        }
        del_direct(f, "11111111-0000-4000-8000-000000000001", VAULT);
    }
    assert_false(auth_roles_allows(f->roles, APP_OID, KEY1, "get"));
    assert_int_equal(auth_roles_count(f->roles), 0);
}

/* subscription -> resource group -> vault -> key; another key is not covered. */
static void test_scope_inheritance(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *scope;
        bool vault, k1, k2; /* unwrapKey allowed at vault scope, key k1, key k2 */
    } T[] = {
        {SUBSCOPE, true, true, true},
        {RG, true, true, true},
        {VAULT, true, true, true},
        {KEY1, false, true, false},
        {KEY2, false, false, true},
        {"/subscriptions/" SUB "/resourceGroups/rg2", false, false, false},
        {RG "/providers/Microsoft.KeyVault/vaults/rbv2", false, false, false},
        {VAULT "/keys/k10", false, false, false},
    };
    for (size_t i = 0; i < N_ELEMS(T); i++) {
        put_direct(f, "22222222-0000-4000-8000-000000000001", T[i].scope, "Key Vault Crypto "
                   "Service Encryption User", APP_OID);
        if (auth_roles_allows(f->roles, APP_OID, VAULT, "unwrapKey") != T[i].vault ||
            auth_roles_allows(f->roles, APP_OID, KEY1, "unwrapKey") != T[i].k1 ||
            auth_roles_allows(f->roles, APP_OID, KEY2, "unwrapKey") != T[i].k2)
            fail_msg("assignment at %s: wrong decision", T[i].scope);
        /* case-insensitive ids, as ARM compares them */
        assert_int_equal(auth_roles_allows(f->roles, APP_OID,
                                           "/SUBSCRIPTIONS/" SUB "/resourcegroups/RG1/providers/"
                                           "microsoft.keyvault/vaults/RBV/keys/K1",
                                           "unwrapKey"),
                         T[i].k1);
        del_direct(f, "22222222-0000-4000-8000-000000000001", T[i].scope);
        assert_false(auth_roles_allows(f->roles, APP_OID, KEY1, "unwrapKey"));
    }
    /* has_role_at: Owner and Contributor imply Reader; Reader implies neither */
    put_direct(f, "33333333-0000-4000-8000-000000000001", SUBSCOPE, "Owner", OWNER_OID);
    put_direct(f, "33333333-0000-4000-8000-000000000002", RG, "Contributor", USER_OID);
    put_direct(f, "33333333-0000-4000-8000-000000000003", VAULT, "Reader", APP_OID);
    assert_true(auth_roles_has_role_at(f->roles, OWNER_OID, VAULT, "Reader"));
    assert_true(auth_roles_has_role_at(f->roles, OWNER_OID, VAULT, R_CONTRIBUTOR));
    assert_true(auth_roles_has_role_at(f->roles, USER_OID, VAULT, "Reader"));
    assert_false(auth_roles_has_role_at(f->roles, USER_OID, VAULT, "Owner"));
    assert_false(auth_roles_has_role_at(f->roles, USER_OID, SUBSCOPE, "Reader"));
    assert_true(auth_roles_has_role_at(f->roles, APP_OID, KEY1, "Reader"));
    assert_false(auth_roles_has_role_at(f->roles, APP_OID, VAULT, "Contributor"));
    assert_false(auth_roles_has_role_at(f->roles, APP_OID, RG, "Reader"));
    assert_true(auth_roles_allows_action(f->roles, OWNER_OID, KEY1,
                                         "Microsoft.Authorization/roleAssignments/write"));
    assert_false(auth_roles_allows_action(f->roles, USER_OID, KEY1,
                                          "Microsoft.Authorization/roleAssignments/write"));
    del_direct(f, "33333333-0000-4000-8000-000000000001", SUBSCOPE);
    del_direct(f, "33333333-0000-4000-8000-000000000002", RG);
    del_direct(f, "33333333-0000-4000-8000-000000000003", VAULT);
}

/* The Key Vault data plane on an RBAC vault, end to end through the router. */
static void test_data_plane(void **state)
{
    fixture *f = *state;
    const char *host = "rbv.vault.localhost:8443";
    int st;
    uint8_t secret[32];
    memset(secret, 0x5a, sizeof secret);
    char *b64 = emu_b64url_encode(secret, sizeof secret);
    char body[200];
    snprintf(body, sizeof body, "{\"alg\":\"RSA-OAEP\",\"value\":\"%s\"}", b64);
    free(b64);

    /* no assignment: 403 ForbiddenByRbac with Key Vault's message */
    json_t *j = call_as(f, "POST", "/keys/k1/wrapkey?api-version=7.5", body, host, &f->app, &st);
    assert_int_equal(st, 403);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(j, "error"), "innererror"), "code")),
                        "ForbiddenByRbac");
    const char *m = err_msg(j);
    assert_non_null(strstr(m, "Caller is not authorized to perform action on resource."));
    assert_non_null(strstr(m, "Caller: appid=" APP_ID ";oid=" APP_OID
                              ";iss=https://sts.windows.net/" TENANT "/"));
    assert_non_null(strstr(m, "Action: 'Microsoft.KeyVault/vaults/keys/wrap/action'"));
    assert_non_null(strstr(m, "Resource: '" KEY1 "'"));
    assert_non_null(strstr(m, "Assignment: (not found)"));
    assert_non_null(strstr(m, "DecisionReason: 'DeniedWithNoValidRBAC'"));
    assert_non_null(strstr(m, "Vault: rbv;location=eastus"));
    json_decref(j);
    /* the permissive mode's mapped default principal is not judged */
    j = call_as(f, "GET", "/keys/k1?api-version=7.5", NULL, host, &f->mapped, &st);
    assert_int_equal(st, 200);
    json_decref(j);

    /* CSEU at key scope through the API, as the owner */
    int changes = f->changes;
    j = call_as(f, "PUT", KEY1 RA "/44444444-0000-4000-8000-000000000001" AV,
                "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU)
                "\",\"principalId\":\"" APP_OID "\",\"principalType\":\"ServicePrincipal\"}}",
                NULL, &f->owner, &st);
    assert_int_equal(st, 201);
    assert_int_equal(f->changes, changes + 1);
    assert_string_equal(f->last_change, KEY1);
    json_decref(j);
    j = call_as(f, "POST", "/keys/k1/wrapkey?api-version=7.5", body, host, &f->app, &st);
    assert_int_equal(st, 200);
    char unwrap[1200];
    snprintf(unwrap, sizeof unwrap, "{\"alg\":\"RSA-OAEP\",\"value\":\"%s\"}",
             json_string_value(json_object_get(j, "value")));
    json_decref(j);
    j = call_as(f, "POST", "/keys/k1/unwrapkey?api-version=7.5", unwrap, host, &f->app, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    /* not another key, not the vault-wide list, not a key operation the role lacks */
    j = call_as(f, "POST", "/keys/k2/wrapkey?api-version=7.5", body, host, &f->app, &st);
    assert_int_equal(st, 403);
    json_decref(j);
    j = call_as(f, "GET", "/keys?api-version=7.5", NULL, host, &f->app, &st);
    assert_int_equal(st, 403);
    json_decref(j);
    j = call_as(f, "POST", "/keys/k1/sign?api-version=7.5",
                "{\"alg\":\"RS256\",\"value\":\"" "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" "\"}",
                host, &f->app, &st);
    assert_int_equal(st, 403);
    json_decref(j);

    /* DELETE: denied again */
    j = call_as(f, "DELETE", KEY1 RA "/44444444-0000-4000-8000-000000000001" AV, NULL, NULL,
                &f->owner, &st);
    assert_int_equal(st, 200);
    assert_int_equal(f->changes, changes + 2);
    json_decref(j);
    j = call_as(f, "POST", "/keys/k1/unwrapkey?api-version=7.5", unwrap, host, &f->app, &st);
    assert_int_equal(st, 403);
    json_decref(j);
}

static void test_api_validation(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *what, *uri, *body;
        int who; /* 0 owner, 1 app (no rights) */
        int status;
        const char *code;
    } T[] = {
        {"name not a GUID", VAULT RA "/not-a-guid" AV,
         "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU) "\",\"principalId\":\"" APP_OID
         "\"}}",
         0, 400, "InvalidRoleAssignmentId"},
        {"unknown role", VAULT RA "/55555555-0000-4000-8000-000000000001" AV,
         "{\"properties\":{\"roleDefinitionId\":\"" RDID("00000000-1111-4000-8000-000000000000")
         "\",\"principalId\":\"" APP_OID "\"}}",
         0, 400, "RoleDefinitionDoesNotExist"},
        {"unknown principal", VAULT RA "/55555555-0000-4000-8000-000000000001" AV,
         "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU) "\",\"principalId\":\"" NOBODY
         "\"}}",
         0, 400, "PrincipalNotFound"},
        {"principal not a GUID", VAULT RA "/55555555-0000-4000-8000-000000000001" AV,
         "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU)
         "\",\"principalId\":\"someone\"}}",
         0, 400, "InvalidPrincipalId"},
        {"no properties", VAULT RA "/55555555-0000-4000-8000-000000000001" AV, "{}", 0, 400,
         "InvalidRequestContent"},
        {"no roleDefinitionId", VAULT RA "/55555555-0000-4000-8000-000000000001" AV,
         "{\"properties\":{\"principalId\":\"" APP_OID "\"}}", 0, 400, "InvalidRequestContent"},
        {"not JSON", VAULT RA "/55555555-0000-4000-8000-000000000001" AV, "{", 0, 400,
         "InvalidRequestContent"},
        {"principal type mismatch", VAULT RA "/55555555-0000-4000-8000-000000000001" AV,
         "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU) "\",\"principalId\":\"" APP_OID
         "\",\"principalType\":\"User\"}}",
         0, 400, "UnmatchedPrincipalType"},
        {"bad principal type", VAULT RA "/55555555-0000-4000-8000-000000000001" AV,
         "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU) "\",\"principalId\":\"" APP_OID
         "\",\"principalType\":\"Robot\"}}",
         0, 400, "BadRequest"},
        {"condition", VAULT RA "/55555555-0000-4000-8000-000000000001" AV,
         "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU) "\",\"principalId\":\"" APP_OID
         "\",\"condition\":\"x\"}}",
         0, 400, "BadRequest"},
        {"bad scope", RG "/providers/Microsoft.Authorization/x/y" RA
                      "/55555555-0000-4000-8000-000000000001" AV,
         "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU) "\",\"principalId\":\"" APP_OID
         "\"}}",
         0, 400, "InvalidScope"},
        {"no api-version", VAULT RA "/55555555-0000-4000-8000-000000000001",
         "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU) "\",\"principalId\":\"" APP_OID
         "\"}}",
         0, 400, "MissingApiVersionParameter"},
        {"caller without rights", VAULT RA "/55555555-0000-4000-8000-000000000001" AV,
         "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU) "\",\"principalId\":\"" APP_OID
         "\"}}",
         1, 403, "AuthorizationFailed"},
        {"unknown filter", VAULT RA AV "&$filter=roleName%20eq%20'x'", NULL, 0, 400,
         "BadRequest"},
        {"get missing", VAULT RA "/55555555-0000-4000-8000-000000000001" AV, NULL, 0, 404,
         "RoleAssignmentNotFound"},
        {"definition missing",
         SUBSCOPE "/providers/Microsoft.Authorization/roleDefinitions/"
                  "00000000-1111-4000-8000-000000000000" AV,
         NULL, 0, 404, "RoleDefinitionDoesNotExist"},
    };
    for (size_t i = 0; i < N_ELEMS(T); i++) {
        int st;
        const char *method = T[i].body ? "PUT" : "GET";
        json_t *j = call_as(f, method, T[i].uri, T[i].body, NULL,
                            T[i].who ? &f->app : &f->owner, &st);
        if (st != T[i].status || !err_code(j) || strcmp(err_code(j), T[i].code) != 0)
            fail_msg("%s: got %d %s (%s), want %d %s", T[i].what, st, err_code(j), err_msg(j),
                     T[i].status, T[i].code);
        json_decref(j);
    }
    assert_int_equal(auth_roles_count(f->roles), 1); /* the owner's */
}

static void test_api_lifecycle(void **state)
{
    fixture *f = *state;
    int st;
    const char *body = "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_CSEU)
                       "\",\"principalId\":\"" MI_OID "\",\"description\":\"cmk\"}}";
    json_t *j = call_as(f, "PUT", VAULT RA "/66666666-0000-4000-8000-000000000001" AV, body,
                        NULL, &f->owner, &st);
    assert_int_equal(st, 201);
    assert_string_equal(json_string_value(json_object_get(j, "id")),
                        VAULT RA "/66666666-0000-4000-8000-000000000001");
    assert_string_equal(json_string_value(json_object_get(j, "type")),
                        "Microsoft.Authorization/roleAssignments");
    json_t *p = json_object_get(j, "properties");
    assert_string_equal(json_string_value(json_object_get(p, "scope")), VAULT);
    assert_string_equal(json_string_value(json_object_get(p, "roleDefinitionId")),
                        RDID(R_KV_CSEU));
    assert_string_equal(json_string_value(json_object_get(p, "principalType")),
                        "ServicePrincipal");
    assert_string_equal(json_string_value(json_object_get(p, "createdBy")), OWNER_OID);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(j, "systemData"), "createdByType")),
                        "Application");
    json_decref(j);
    /* identical PUT: 200, nothing new */
    j = call_as(f, "PUT", VAULT RA "/66666666-0000-4000-8000-000000000001" AV, body, NULL,
                &f->owner, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    /* same principal + role + scope under another name: 409 RoleAssignmentExists */
    j = call_as(f, "PUT", VAULT RA "/66666666-0000-4000-8000-000000000002" AV, body, NULL,
                &f->owner, &st);
    assert_int_equal(st, 409);
    assert_string_equal(err_code(j), "RoleAssignmentExists");
    json_decref(j);
    /* same name, other role: 409 RoleAssignmentUpdateNotPermitted */
    j = call_as(f, "PUT", VAULT RA "/66666666-0000-4000-8000-000000000001" AV,
                "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_READER)
                "\",\"principalId\":\"" MI_OID "\"}}",
                NULL, &f->owner, &st);
    assert_int_equal(st, 409);
    assert_string_equal(err_code(j), "RoleAssignmentUpdateNotPermitted");
    json_decref(j);
    /* the name is global: the same name at another scope is an update, refused */
    j = call_as(f, "PUT", RG RA "/66666666-0000-4000-8000-000000000001" AV, body, NULL, &f->owner,
                &st);
    assert_int_equal(st, 409);
    json_decref(j);
    /* by a user with Owner at the resource group: the write check passes */
    put_direct(f, "66666666-0000-4000-8000-0000000000ff", RG, "Owner", USER_OID);
    j = call_as(f, "PUT", RG RA "/66666666-0000-4000-8000-000000000003" AV,
                "{\"properties\":{\"roleDefinitionId\":\"" R_READER "\",\"principalId\":\"" APP_OID
                "\"}}",
                NULL, &f->user, &st);
    assert_int_equal(st, 201);
    json_decref(j);
    j = call_as(f, "PUT", SUBSCOPE RA "/66666666-0000-4000-8000-000000000004" AV,
                "{\"properties\":{\"roleDefinitionId\":\"Key Vault Reader\",\"principalId\":\"" APP_OID
                "\"}}",
                NULL, &f->user, &st);
    assert_int_equal(st, 403); /* Owner of rg1 only, not of the subscription */
    json_decref(j);
    j = call_as(f, "PUT", SUBSCOPE RA "/66666666-0000-4000-8000-000000000004" AV,
                "{\"properties\":{\"roleDefinitionId\":\"" RDID(R_KV_READER)
                "\",\"principalId\":\"" APP_OID "\"}}",
                NULL, &f->owner, &st);
    assert_int_equal(st, 201);
    json_decref(j);

    /* GET one */
    j = call_as(f, "GET", VAULT RA "/66666666-0000-4000-8000-000000000001" AV, NULL, NULL,
                &f->app, &st);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "properties"),
                                                          "description")),
                        "cmk");
    json_decref(j);

    /* lists (the owner's Owner at the subscription counts too): at the vault, everything
     * above and at it (sub x2, rg x2, vault) */
    static const struct {
        const char *uri;
        size_t n;
    } L[] = {
        {VAULT RA AV, 5},
        {VAULT RA AV "&$filter=principalId%20eq%20'" APP_OID "'", 2},
        {VAULT RA AV "&$filter=assignedTo('" MI_OID "')", 1},
        {RG RA AV "&$filter=atScope()", 4},
        {RG RA AV, 5},
        {SUBSCOPE RA AV "&$filter=atScope()", 2},
        {SUBSCOPE RA AV "&$filter=atScope()%20and%20principalId%20eq%20'" APP_OID "'", 1},
        {SUBSCOPE RA AV "&$filter=principalId%20eq%20'" USER_OID "'", 1},
        {KEY1 RA AV, 5},
        {RG "/providers/Microsoft.KeyVault/vaults/other" RA AV, 4},
    };
    for (size_t i = 0; i < N_ELEMS(L); i++) {
        j = call_as(f, "GET", L[i].uri, NULL, NULL, &f->app, &st);
        assert_int_equal(st, 200);
        if (json_array_size(json_object_get(j, "value")) != L[i].n)
            fail_msg("%s: %zu assignments, want %zu", L[i].uri,
                     json_array_size(json_object_get(j, "value")), L[i].n);
        json_decref(j);
    }

    /* role definitions */
    j = call_as(f, "GET", SUBSCOPE "/providers/Microsoft.Authorization/roleDefinitions" AV, NULL,
                NULL, &f->app, &st);
    assert_int_equal(st, 200);
    assert_true(json_array_size(json_object_get(j, "value")) >= 8);
    json_decref(j);
    j = call_as(f, "GET",
                VAULT "/providers/Microsoft.Authorization/roleDefinitions" AV
                      "&$filter=roleName%20eq%20'Key%20Vault%20Crypto%20Service%20Encryption%20User'",
                NULL, NULL, &f->app, &st);
    assert_int_equal(st, 200);
    assert_int_equal(json_array_size(json_object_get(j, "value")), 1);
    json_t *d = json_array_get(json_object_get(j, "value"), 0);
    assert_string_equal(json_string_value(json_object_get(d, "id")), RDID(R_KV_CSEU));
    json_t *perm = json_array_get(json_object_get(json_object_get(d, "properties"),
                                                  "permissions"), 0);
    assert_int_equal(json_array_size(json_object_get(perm, "dataActions")), 3);
    json_decref(j);
    j = call_as(f, "GET", "/providers/Microsoft.Authorization/roleDefinitions/" R_OWNER AV, NULL,
                NULL, &f->app, &st);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(j, "id")),
                        "/providers/Microsoft.Authorization/roleDefinitions/" R_OWNER);
    json_decref(j);

    /* persistence: a fresh handle on the same store sees the same assignments */
    char err[200];
    roles_t *again = auth_roles_open(f->fx->store, f->fx->auth, err, sizeof err);
    assert_non_null(again);
    assert_int_equal(auth_roles_count(again), auth_roles_count(f->roles));
    assert_true(auth_roles_allows(again, MI_OID, KEY1, "unwrapKey"));
    auth_roles_close(again);

    /* DELETE: 200 with the assignment, then 204 */
    static const char *const GONE[][2] = {
        {VAULT, "66666666-0000-4000-8000-000000000001"},
        {RG, "66666666-0000-4000-8000-000000000003"},
        {SUBSCOPE, "66666666-0000-4000-8000-000000000004"},
    };
    for (size_t i = 0; i < N_ELEMS(GONE); i++) {
        char uri[600];
        snprintf(uri, sizeof uri, "%s" RA "/%s" AV, GONE[i][0], GONE[i][1]);
        j = call_as(f, "DELETE", uri, NULL, NULL, &f->owner, &st);
        assert_int_equal(st, 200);
        assert_string_equal(json_string_value(json_object_get(j, "name")), GONE[i][1]);
        json_decref(j);
        j = call_as(f, "DELETE", uri, NULL, NULL, &f->owner, &st);
        assert_int_equal(st, 204);
        json_decref(j);
    }
    del_direct(f, "66666666-0000-4000-8000-0000000000ff", RG);
    assert_int_equal(auth_roles_count(f->roles), 1);
    assert_false(auth_roles_allows(f->roles, MI_OID, KEY1, "unwrapKey"));
}

/* ---- fixture --------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->fx = cmk_fixture_new("test_roles", TENANT,
                            CMK_FX_AUTH_STRICT | CMK_FX_KV | CMK_FX_ARM | CMK_FX_ROUTER);
    *state = f;
    if (!f->fx)
        return -1;
    char err[512] = "";
    if (!(f->roles = auth_roles_open(f->fx->store, f->fx->auth, err, sizeof err))) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    static const auth_principal_spec P[] = {
        {.kind = AUTH_KIND_SERVICE_PRINCIPAL, .oid = OWNER_OID, .name = "owner-app"},
        {.kind = AUTH_KIND_SERVICE_PRINCIPAL, .oid = APP_OID, .appid = APP_ID,
         .name = "contoso-app"},
        {.kind = AUTH_KIND_USER, .oid = USER_OID, .name = "user", .username = "u@contoso.local"},
        {.kind = AUTH_KIND_MANAGED_IDENTITY, .oid = MI_OID, .name = "mi"},
    };
    auth_principal *out[] = {&f->owner, &f->app, &f->user, NULL};
    for (size_t i = 0; i < N_ELEMS(P); i++) {
        auth_principal tmp;
        if (!auth_principal_add(f->fx->auth, &P[i], &tmp, err, sizeof err)) {
            fprintf(stderr, "principal: %s\n", err);
            return -1;
        }
        snprintf(tmp.iss, sizeof tmp.iss, "https://sts.windows.net/%s/", TENANT);
        tmp.from_token = true;
        if (out[i])
            *out[i] = tmp;
    }
    f->mapped = f->user;
    f->mapped.from_token = false;
    auth_roles_set_change_hook(f->roles, on_change, f);
    /* the owner holds Owner on the subscription through the store, like a world file */
    f->rapi = (auth_roles_api_ctx){.common = {.tenant = TENANT}, .roles = f->roles};
    auth_roles_api_register(f->fx->router, &f->rapi);
    cmk_fixture_register(f->fx, CMK_FX_KV_API | CMK_FX_ARM_ROUTES | CMK_FX_VAULTS_ARM);
    kv_set_rbac_roles(f->fx->kv, f->roles);
    if (!armres_rg_put(f->fx->arm, SUB, "rg1", "eastus", NULL, NULL))
        return -1;
    kv_vault_info vi = {.soft_delete = true, .retention_days = 7, .rbac = true};
    snprintf(vi.name, sizeof vi.name, "rbv");
    snprintf(vi.tenant, sizeof vi.tenant, TENANT);
    snprintf(vi.subscription, sizeof vi.subscription, SUB);
    snprintf(vi.resource_group, sizeof vi.resource_group, "rg1");
    snprintf(vi.location, sizeof vi.location, "eastus");
    kv_err e;
    if (kv_vault_create(f->fx->kv, &vi, &e) != KV_OK) {
        fprintf(stderr, "vault: %s\n", e.msg);
        return -1;
    }
    for (int k = 1; k <= 2; k++) {
        char name[8];
        snprintf(name, sizeof name, "k%d", k);
        kv_create_params cp = {.bits = 2048};
        kv_key_view v;
        if (kv_key_create(f->fx->kv, "rbv", name, &cp, &v, &e) != KV_OK) {
            fprintf(stderr, "key: %s\n", e.msg);
            return -1;
        }
        kv_key_view_cleanup(&v);
    }
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;
    if (!f)
        return 0;
    auth_roles_close(f->roles);
    cmk_fixture_free(f->fx);
    free(f);
    return 0;
}

/* The owner's Owner assignment exists for the API tests only. */
static int with_owner(void **state)
{
    fixture *f = *state;
    put_direct(f, "77777777-0000-4000-8000-000000000001", SUBSCOPE, "Owner", OWNER_OID);
    return 0;
}

static int without_owner(void **state)
{
    fixture *f = *state;
    del_direct(f, "77777777-0000-4000-8000-000000000001", SUBSCOPE);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_definitions),
        cmocka_unit_test(test_decision_table),
        cmocka_unit_test(test_scope_inheritance),
        cmocka_unit_test_setup_teardown(test_data_plane, with_owner, without_owner),
        cmocka_unit_test_setup_teardown(test_api_validation, with_owner, without_owner),
        cmocka_unit_test_setup_teardown(test_api_lifecycle, with_owner, without_owner),
    };
    return cmocka_run_group_tests_name("roles", tests, group_setup, group_teardown);
}
