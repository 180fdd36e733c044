/*
 * test_policies: Microsoft.PowerPlatform/enterprisePolicies in-process (emu_router_dispatch)
 * on a fresh store and SoftHSM token under $CMK_TEST_TMP (else /tmp), removed at the end
 * (CMK_TEST_KEEP=1 keeps it), with a real auth_t so the policy identity is a real principal.
 *
 * The group fixture opens hsm + store + auth + armres + policies, registers the resource group
 * routes and the policy routes, and creates resource groups "rg1" and "rg2". Tests run in
 * order; each uses its own policy names.
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
#include "clock.h"
#include "fixture.h"
#include "hsm.h"
#include "powerplatform/policies.h"
#include "powerplatform/policies_arm.h"
#include "router.h"
#include "store.h"

#define SUB "00000000-0000-4000-8000-000000000001"
#define RG_PATH "/subscriptions/" SUB "/resourceGroups/rg1/providers/Microsoft.PowerPlatform/"
#define POLICIES RG_PATH "enterprisePolicies/"
#define AV "?api-version=2020-10-30"
#define AVP "?api-version=2020-10-30-preview"
#define TENANT "72f988bf-86f1-41af-91ab-2d7cd011db47"
#define VAULT_ID                                                                                   \
    "/subscriptions/" SUB "/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/contoso-cmk"
#define VER1 "0123456789abcdef0123456789abcdef"
#define VER2 "fedcba9876543210fedcba9876543210"

typedef struct {
    cmk_fixture *fx;
    pp_policies_t *pp;
    pp_arm_ctx ctx;
    char linked_sid[160]; /* the link check says this systemId is linked */
    size_t linked_count;
} fixture;

static bool link_check(const char *system_id, void *ud)
{
    fixture *f = ud;
    return f->linked_sid[0] && !strcmp(system_id, f->linked_sid);
}

static size_t link_count(const char *system_id, void *ud)
{
    fixture *f = ud;
    return link_check(system_id, ud) ? f->linked_count : 0;
}

/* One request through the router; the parsed JSON answer (or NULL) returned. */
static json_t *call(fixture *f, const char *method, const char *uri, const char *body, int *status)
{
    emu_req *req = cmk_fixture_dispatch(f->fx, method, uri, &(cmk_call_opts){.body = body});
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

/* A string at a dotted path ("identity.principalId"); NULL when absent. */
static const char *path_str(const json_t *j, const char *path)
{
    const json_t *cur = j;
    const char *p = path;
    while (cur && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        cur = json_object_getn(cur, p, n);
        p += n + (dot ? 1 : 0);
    }
    return json_string_value(cur);
}

/* The template's body (seed 004), with location/kind/version substituted. */
static char *policy_body(const char *location, const char *kind, const char *version)
{
    char *b = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&b, &n);
    fprintf(m,
            "{\"location\":\"%s\",\"kind\":\"%s\",\"identity\":{\"type\":\"SystemAssigned\"},"
            "\"properties\":{\"lockbox\":null,\"encryption\":{\"state\":\"Enabled\","
            "\"keyVault\":{\"id\":\"" VAULT_ID "\",\"key\":{\"name\":\"cmk\",\"version\":\"%s\"}}},"
            "\"networkInjection\":null}}",
            location, kind, version);
    fclose(m);
    return b;
}

static json_t *put_policy(fixture *f, const char *name, const char *location, const char *kind,
                          const char *version, int *status)
{
    char uri[256];
    snprintf(uri, sizeof uri, POLICIES "%s" AV, name);
    char *body = policy_body(location, kind, version);
    json_t *j = call(f, "PUT", uri, body, status);
    free(body);
    return j;
}

static json_t *put_ok(fixture *f, const char *name)
{
    int st;
    json_t *j = put_policy(f, name, "unitedstates", "Encryption", VER1, &st);
    if (st != 201)
        fail_msg("PUT %s -> %d %s: %s", name, st, err_code(j), err_msg(j));
    return j;
}

/* ---- tests -------------------------------------------------------------------------------------
 */

static void test_create_shape(void **state)
{
    fixture *f = *state;
    json_t *j = put_ok(f, "ep-one");
    assert_string_equal(path_str(j, "id"), POLICIES "ep-one");
    assert_string_equal(path_str(j, "name"), "ep-one");
    assert_string_equal(path_str(j, "type"), "Microsoft.PowerPlatform/enterprisePolicies");
    assert_string_equal(path_str(j, "location"), "unitedstates");
    assert_string_equal(path_str(j, "kind"), "Encryption");
    assert_string_equal(path_str(j, "identity.type"), "SystemAssigned");
    const char *oid = path_str(j, "identity.principalId");
    assert_non_null(oid);
    assert_int_equal(strlen(oid), 36);
    assert_string_equal(path_str(j, "identity.systemAssignedIdentityPrincipalId"), oid);
    assert_string_equal(path_str(j, "identity.tenantId"), TENANT);
    const char *sid = path_str(j, "properties.systemId");
    const char *prefix = "/regions/unitedstates/providers/Microsoft.PowerPlatform/"
                         "enterprisePolicies/";
    assert_non_null(sid);
    assert_memory_equal(sid, prefix, strlen(prefix));
    const char *guid = sid + strlen(prefix);
    assert_int_equal(strlen(guid), 36);
    assert_true(guid[8] == '-' && guid[13] == '-' && guid[18] == '-' && guid[23] == '-');
    assert_string_not_equal(guid, oid);
    assert_string_equal(path_str(j, "properties.encryption.state"), "Enabled");
    assert_string_equal(path_str(j, "properties.encryption.keyVault.id"), VAULT_ID);
    assert_string_equal(path_str(j, "properties.encryption.keyVault.key.name"), "cmk");
    assert_string_equal(path_str(j, "properties.encryption.keyVault.key.version"), VER1);
    json_t *props = json_object_get(j, "properties");
    assert_true(json_is_null(json_object_get(props, "lockbox")));
    assert_true(json_is_null(json_object_get(props, "networkInjection")));
    assert_string_equal(path_str(j, "properties.healthStatus"), "Undetermined");
    assert_non_null(path_str(j, "systemData.createdAt"));

    /* the identity is a managed identity principal named after the policy */
    auth_principal p;
    assert_true(auth_principal_get(f->fx->auth, oid, &p));
    assert_int_equal(p.kind, AUTH_KIND_MANAGED_IDENTITY);
    assert_string_equal(p.name, "ep-one");
    assert_int_equal(strlen(p.appid), 36);

    /* the same PUT again: 200, same systemId and identity */
    char sid_copy[160], oid_copy[40];
    snprintf(sid_copy, sizeof sid_copy, "%s", sid);
    snprintf(oid_copy, sizeof oid_copy, "%s", oid);
    json_decref(j);
    int st;
    j = put_policy(f, "ep-one", "UnitedStates", "encryption", VER1, &st);
    assert_int_equal(st, 200);
    assert_string_equal(path_str(j, "properties.systemId"), sid_copy);
    assert_string_equal(path_str(j, "identity.principalId"), oid_copy);
    json_decref(j);

    /* GET with both api-versions */
    j = call(f, "GET", POLICIES "ep-one" AV, NULL, &st);
    assert_int_equal(st, 200);
    assert_string_equal(path_str(j, "properties.systemId"), sid_copy);
    json_decref(j);
    j = call(f, "GET", POLICIES "EP-ONE" AVP, NULL, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    j = call(f, "GET", POLICIES "nope" AV, NULL, &st);
    assert_int_equal(st, 404);
    assert_string_equal(err_code(j), "ResourceNotFound");
    json_decref(j);
}

static void test_lists(void **state)
{
    fixture *f = *state;
    json_decref(put_ok(f, "ep-list-a"));
    int st;
    char uri[256];
    snprintf(
        uri, sizeof uri,
        "/subscriptions/" SUB
        "/resourceGroups/rg2/providers/Microsoft.PowerPlatform/enterprisePolicies/ep-list-b" AV);
    char *body = policy_body("europe", "Encryption", "");
    json_t *j = call(f, "PUT", uri, body, &st);
    free(body);
    assert_int_equal(st, 201);
    assert_string_equal(path_str(j, "properties.encryption.keyVault.key.version"), "");
    json_decref(j);

    j = call(f, "GET",
             "/subscriptions/" SUB
             "/resourcegroups/rg2/providers/Microsoft.PowerPlatform/enterprisePolicies" AV,
             NULL, &st);
    assert_int_equal(st, 200);
    json_t *v = json_object_get(j, "value");
    assert_int_equal(json_array_size(v), 1);
    assert_string_equal(path_str(json_array_get(v, 0), "name"), "ep-list-b");
    json_decref(j);

    j = call(f, "GET",
             "/subscriptions/" SUB "/providers/Microsoft.PowerPlatform/enterprisePolicies" AV, NULL,
             &st);
    assert_int_equal(st, 200);
    bool a = false, b = false;
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(j, "value"), i, it)
    {
        a |= !strcmp(path_str(it, "name"), "ep-list-a");
        b |= !strcmp(path_str(it, "name"), "ep-list-b");
    }
    assert_true(a && b);
    json_decref(j);

    j = call(f, "GET",
             "/subscriptions/" SUB
             "/resourceGroups/nogroup/providers/Microsoft.PowerPlatform/enterprisePolicies" AV,
             NULL, &st);
    assert_int_equal(st, 404);
    assert_string_equal(err_code(j), "ResourceGroupNotFound");
    json_decref(j);
}

static void test_validation(void **state)
{
    fixture *f = *state;
    int st;
    json_t *j = put_policy(f, "ep-bad", "eastus", "Encryption", VER1, &st);
    assert_int_equal(st, 400);
    assert_string_equal(err_code(j), "LocationNotAvailableForResourceType");
    assert_non_null(strstr(err_msg(j), "unitedstates"));
    assert_non_null(strstr(err_msg(j), "sweden"));
    json_decref(j);

    j = put_policy(f, "ep-bad", "unitedstates", "Vault", VER1, &st);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_msg(j), "NetworkInjection"));
    json_decref(j);

    j = put_policy(f, "ep-bad", "unitedstates", "Encryption", "not-hex", &st);
    assert_int_equal(st, 400);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "target")),
                        "properties.encryption.keyVault.key.version");
    json_decref(j);

    char *body = policy_body("unitedstates", "Encryption", VER1);
    static const struct {
        const char *uri;
        int status;
        const char *code;
    } cases[] = {
        {POLICIES "ep-bad?api-version=2021-01-01", 400, "InvalidApiVersionParameter"},
        {POLICIES "ep-bad", 400, "MissingApiVersionParameter"},
        {"/subscriptions/" SUB "/resourceGroups/nogroup/providers/Microsoft.PowerPlatform/"
         "enterprisePolicies/ep-bad" AV,
         404, "ResourceGroupNotFound"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        j = call(f, "PUT", cases[i].uri, body, &st);
        assert_int_equal(st, cases[i].status);
        assert_string_equal(err_code(j), cases[i].code);
        if (cases[i].status == 400 && !strcmp(cases[i].code, "InvalidApiVersionParameter"))
            assert_non_null(strstr(err_msg(j), "2020-10-30-preview"));
        json_decref(j);
    }
    free(body);

    static const char *const bad_bodies[] = {
        /* not a key vault id */
        "{\"location\":\"unitedstates\",\"kind\":\"Encryption\",\"identity\":{\"type\":"
        "\"SystemAssigned\"},\"properties\":{\"encryption\":{\"state\":\"Enabled\",\"keyVault\":"
        "{\"id\":\"/subscriptions/" SUB "/resourceGroups/rg1/providers/Microsoft.Storage/"
        "storageAccounts/x\",\"key\":{\"name\":\"k\",\"version\":\"\"}}}}}",
        /* no identity */
        "{\"location\":\"unitedstates\",\"kind\":\"Encryption\",\"properties\":{\"encryption\":{"
        "\"state\":\"Enabled\",\"keyVault\":{\"id\":\"" VAULT_ID "\",\"key\":{\"name\":\"k\"}}}}}",
        /* no key name */
        "{\"location\":\"unitedstates\",\"kind\":\"Encryption\",\"identity\":{\"type\":"
        "\"SystemAssigned\"},\"properties\":{\"encryption\":{\"keyVault\":{\"id\":\"" VAULT_ID
        "\"}}}}",
        /* no kind */
        "{\"location\":\"unitedstates\",\"identity\":{\"type\":\"SystemAssigned\"}}",
        /* no location */
        "{\"kind\":\"Lockbox\"}",
        /* lockbox settings are not emulated */
        "{\"location\":\"unitedstates\",\"kind\":\"Lockbox\",\"properties\":{\"lockbox\":{"
        "\"state\":\"Enabled\"}}}",
        /* identity type */
        "{\"location\":\"unitedstates\",\"kind\":\"Lockbox\",\"identity\":{\"type\":"
        "\"UserAssigned\"}}",
    };
    size_t before = auth_principal_count(f->fx->auth);
    for (size_t i = 0; i < sizeof bad_bodies / sizeof bad_bodies[0]; i++) {
        j = call(f, "PUT", POLICIES "ep-bad" AV, bad_bodies[i], &st);
        if (st != 400)
            fail_msg("bad body %zu -> %d", i, st);
        assert_non_null(err_msg(j));
        json_decref(j);
    }
    assert_int_equal(auth_principal_count(f->fx->auth), before);
    j = call(f, "GET", POLICIES "ep-bad" AV, NULL, &st);
    assert_int_equal(st, 404);
    json_decref(j);

    /* a Lockbox policy without identity is fine */
    j = call(f, "PUT", POLICIES "ep-lockbox" AV, "{\"location\":\"uk\",\"kind\":\"Lockbox\"}", &st);
    assert_int_equal(st, 201);
    assert_string_equal(path_str(j, "identity.type"), "None");
    assert_true(json_is_null(json_object_get(json_object_get(j, "properties"), "encryption")));
    json_decref(j);
    assert_int_equal(auth_principal_count(f->fx->auth), before);
}

static void test_update_rules(void **state)
{
    fixture *f = *state;
    json_t *j = put_ok(f, "ep-upd");
    json_decref(j);
    int st;
    /* PATCH the key version and tags: allowed */
    j = call(f, "PATCH", POLICIES "ep-upd" AV,
             "{\"tags\":{\"team\":\"cmk\"},\"properties\":{\"encryption\":{\"keyVault\":{\"key\":"
             "{\"version\":\"" VER2 "\"}}}}}",
             &st);
    assert_int_equal(st, 200);
    assert_string_equal(path_str(j, "properties.encryption.keyVault.key.version"), VER2);
    assert_string_equal(path_str(j, "properties.encryption.keyVault.key.name"), "cmk");
    assert_string_equal(path_str(j, "tags.team"), "cmk");
    json_decref(j);
    /* PUT with another key name and vault: allowed */
    j = call(f, "PUT", POLICIES "ep-upd" AV,
             "{\"location\":\"unitedstates\",\"kind\":\"Encryption\",\"identity\":{\"type\":"
             "\"SystemAssigned\"},\"properties\":{\"encryption\":{\"state\":\"Enabled\","
             "\"keyVault\":{\"id\":\"/subscriptions/" SUB "/resourcegroups/rg1/providers/"
             "microsoft.keyvault/vaults/other-vault\",\"key\":{\"name\":\"cmk2\"}}}}}",
             &st);
    assert_int_equal(st, 200);
    assert_string_equal(path_str(j, "properties.encryption.keyVault.id"),
                        "/subscriptions/" SUB "/resourceGroups/rg1/providers/Microsoft.KeyVault/"
                        "vaults/other-vault");
    assert_string_equal(path_str(j, "properties.encryption.keyVault.key.version"), "");
    json_decref(j);

    static const struct {
        const char *method, *body, *target;
    } forbidden[] = {
        {"PATCH", "{\"location\":\"europe\"}", "location"},
        {"PATCH", "{\"kind\":\"Lockbox\"}", "kind"},
        {"PATCH", "{\"identity\":{\"type\":\"None\"}}", "identity.type"},
        {"PATCH", "{\"properties\":{\"encryption\":{\"state\":\"Disabled\"}}}",
         "properties.encryption.state"},
        {"PUT",
         "{\"location\":\"europe\",\"kind\":\"Encryption\",\"identity\":{\"type\":"
         "\"SystemAssigned\"},\"properties\":{\"encryption\":{\"state\":\"Enabled\",\"keyVault\":"
         "{\"id\":\"" VAULT_ID "\",\"key\":{\"name\":\"cmk\"}}}}}",
         "location"},
    };
    for (size_t i = 0; i < sizeof forbidden / sizeof forbidden[0]; i++) {
        j = call(f, forbidden[i].method, POLICIES "ep-upd" AV, forbidden[i].body, &st);
        if (st != 400)
            fail_msg("forbidden change %zu -> %d", i, st);
        assert_string_equal(err_code(j), "PropertyChangeNotAllowed");
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(j, "error"), "target")),
            forbidden[i].target);
        assert_non_null(strstr(err_msg(j), "key vault id, key name and key version"));
        json_decref(j);
    }
    /* PATCH of a missing policy */
    j = call(f, "PATCH", POLICIES "ep-missing" AV, "{}", &st);
    assert_int_equal(st, 404);
    json_decref(j);
}

static void test_delete_removes_identity(void **state)
{
    fixture *f = *state;
    json_t *j = put_ok(f, "ep-del");
    char oid[40];
    snprintf(oid, sizeof oid, "%s", path_str(j, "identity.principalId"));
    json_decref(j);
    auth_principal p;
    assert_true(auth_principal_get(f->fx->auth, oid, &p));
    int st;
    j = call(f, "DELETE", POLICIES "ep-del" AV, NULL, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    assert_false(auth_principal_get(f->fx->auth, oid, &p));
    j = call(f, "GET", POLICIES "ep-del" AV, NULL, &st);
    assert_int_equal(st, 404);
    json_decref(j);
    j = call(f, "DELETE", POLICIES "ep-del" AV, NULL, &st);
    assert_int_equal(st, 204);
    json_decref(j);
    j = call(f, "DELETE", POLICIES "ep-del?api-version=2019-01-01", NULL, &st);
    assert_int_equal(st, 400);
    json_decref(j);
}

static void test_linked_refusals(void **state)
{
    fixture *f = *state;
    json_t *j = put_ok(f, "ep-linked");
    snprintf(f->linked_sid, sizeof f->linked_sid, "%s", path_str(j, "properties.systemId"));
    char oid[40];
    snprintf(oid, sizeof oid, "%s", path_str(j, "identity.principalId"));
    json_decref(j);
    int st;

    /* a key change is refused, naming "one or more" without a counter */
    j = call(f, "PATCH", POLICIES "ep-linked" AV,
             "{\"properties\":{\"encryption\":{\"keyVault\":{\"key\":{\"version\":\"" VER2
             "\"}}}}}",
             &st);
    assert_int_equal(st, 409);
    assert_string_equal(err_code(j), "EnterprisePolicyInUse");
    assert_non_null(strstr(err_msg(j), "one or more environments"));
    json_decref(j);
    /* the same template again changes nothing: allowed while linked */
    j = put_policy(f, "ep-linked", "unitedstates", "Encryption", VER1, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    /* tags only: allowed */
    j = call(f, "PATCH", POLICIES "ep-linked" AV, "{\"tags\":{\"a\":\"b\"}}", &st);
    assert_int_equal(st, 200);
    json_decref(j);

    pp_policies_set_link_count(f->pp, link_count, f);
    f->linked_count = 2;
    j = call(f, "DELETE", POLICIES "ep-linked" AV, NULL, &st);
    assert_int_equal(st, 409);
    assert_string_equal(err_code(j), "EnterprisePolicyInUse");
    assert_non_null(strstr(err_msg(j), "2 environments are linked"));
    json_decref(j);
    auth_principal p;
    assert_true(auth_principal_get(f->fx->auth, oid, &p));

    /* unlinked: update and delete go through */
    f->linked_sid[0] = '\0';
    j = call(f, "PATCH", POLICIES "ep-linked" AV,
             "{\"properties\":{\"encryption\":{\"keyVault\":{\"key\":{\"version\":\"" VER2
             "\"}}}}}",
             &st);
    assert_int_equal(st, 200);
    json_decref(j);
    j = call(f, "DELETE", POLICIES "ep-linked" AV, NULL, &st);
    assert_int_equal(st, 200);
    json_decref(j);
    assert_false(auth_principal_get(f->fx->auth, oid, &p));
    pp_policies_set_link_count(f->pp, NULL, NULL);
}

static void test_domain_api(void **state)
{
    fixture *f = *state;
    json_t *j = put_ok(f, "ep-dom");
    char sid[160], oid[40];
    snprintf(sid, sizeof sid, "%s", path_str(j, "properties.systemId"));
    snprintf(oid, sizeof oid, "%s", path_str(j, "identity.principalId"));
    json_decref(j);

    pp_policy pol;
    assert_int_equal(pp_policy_get_by_system_id(f->pp, sid, &pol), PP_OK);
    assert_string_equal(pol.name, "ep-dom");
    assert_string_equal(pol.identity_oid, oid);
    assert_string_equal(pol.vault_id, VAULT_ID);
    assert_string_equal(pol.key_name, "cmk");
    assert_string_equal(pol.key_version, VER1);
    assert_int_equal(pol.health, PP_HEALTH_UNDETERMINED);
    assert_int_equal(pp_policy_get_by_arm_id(f->pp,
                                             "/subscriptions/" SUB "/resourcegroups/RG1/providers/"
                                             "microsoft.powerplatform/enterprisepolicies/EP-DOM",
                                             &pol),
                     PP_OK);
    assert_string_equal(pol.system_id, sid);
    assert_int_equal(pp_policy_get_by_arm_id(f->pp, VAULT_ID, &pol), PP_ERR_NOT_FOUND);
    assert_int_equal(pp_policy_get_by_system_id(f->pp, "/regions/x", &pol), PP_ERR_NOT_FOUND);

    assert_int_equal(pp_policy_set_health(f->pp, sid, PP_HEALTH_UNHEALTHY), PP_OK);
    int st;
    j = call(f, "GET", POLICIES "ep-dom" AV, NULL, &st);
    assert_string_equal(path_str(j, "properties.healthStatus"), "Unhealthy");
    json_decref(j);
    /* a key change resets the health */
    j = call(f, "PATCH", POLICIES "ep-dom" AV,
             "{\"properties\":{\"encryption\":{\"keyVault\":{\"key\":{\"version\":\"" VER2
             "\"}}}}}",
             &st);
    assert_int_equal(st, 200);
    assert_string_equal(path_str(j, "properties.healthStatus"), "Undetermined");
    json_decref(j);

    pp_policy *all = NULL;
    size_t n = pp_policy_list(f->pp, NULL, NULL, &all);
    assert_true(n >= 2);
    bool seen = false;
    for (size_t i = 0; i < n; i++)
        seen |= !strcmp(all[i].system_id, sid);
    assert_true(seen);
    free(all);

    /* persistence: reopen, and a lost identity is restored with the same ids */
    assert_true(auth_principal_remove(f->fx->auth, oid));
    pp_policies_close(f->pp);
    char err[256] = "";
    f->pp = pp_policies_open(f->fx->store, f->fx->auth, err, sizeof err);
    assert_non_null(f->pp);
    f->ctx.pp = f->pp;
    pp_policies_set_link_check(f->pp, link_check, f);
    assert_int_equal(pp_policy_get_by_system_id(f->pp, sid, &pol), PP_OK);
    assert_string_equal(pol.key_version, VER2);
    auth_principal p;
    assert_true(auth_principal_get(f->fx->auth, oid, &p));
    assert_string_equal(p.name, "ep-dom");
}

static void test_rg_delete(void **state)
{
    fixture *f = *state;
    int st;
    json_t *j = call(f, "PUT", "/subscriptions/" SUB "/resourcegroups/rg3?api-version=2021-04-01",
                     "{\"location\":\"eastus\"}", &st);
    assert_true(st == 200 || st == 201);
    json_decref(j);
    char *body = policy_body("india", "Encryption", VER1);
    j = call(f, "PUT",
             "/subscriptions/" SUB "/resourceGroups/rg3/providers/"
             "Microsoft.PowerPlatform/enterprisePolicies/ep-rg3" AV,
             body, &st);
    free(body);
    assert_int_equal(st, 201);
    char oid[40];
    snprintf(oid, sizeof oid, "%s", path_str(j, "identity.principalId"));
    json_decref(j);
    j = call(f, "DELETE", "/subscriptions/" SUB "/resourcegroups/rg3?api-version=2021-04-01", NULL,
             &st);
    assert_true(st == 200 || st == 202 || st == 204);
    json_decref(j);
    pp_policy pol;
    assert_int_equal(pp_policy_get(f->pp, SUB, "rg3", "ep-rg3", &pol), PP_ERR_NOT_FOUND);
    auth_principal p;
    assert_false(auth_principal_get(f->fx->auth, oid, &p));
}

/* ---- fixture -----------------------------------------------------------------------------------
 */

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->fx = cmk_fixture_new("test_policies", TENANT, CMK_FX_AUTH | CMK_FX_ARM | CMK_FX_ARM_ROUTES);
    *state = f;
    if (!f->fx)
        return -1;
    char err[512] = "";
    if (!(f->pp = pp_policies_open(f->fx->store, f->fx->auth, err, sizeof err))) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    pp_policies_set_link_check(f->pp, link_check, f);
    f->ctx = (pp_arm_ctx){.common = {.tenant = TENANT}, .pp = f->pp, .arm = f->fx->arm};
    pp_policies_arm_register(f->fx->router, &f->ctx);
    if (!armres_rg_put(f->fx->arm, SUB, "rg1", "eastus", NULL, NULL) ||
        !armres_rg_put(f->fx->arm, SUB, "rg2", "westeurope", NULL, NULL))
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;
    if (!f)
        return 0;
    pp_policies_close(f->pp);
    cmk_fixture_free(f->fx);
    free(f);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_shape),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_update_rules),
        cmocka_unit_test(test_delete_removes_identity),
        cmocka_unit_test(test_linked_refusals),
        cmocka_unit_test(test_domain_api),
        cmocka_unit_test(test_rg_delete),
    };
    return cmocka_run_group_tests_name("policies", tests, group_setup, group_teardown);
}
