/*
 * test_deployments: Microsoft.Resources/deployments in-process (emu_router_dispatch) with the
 * real Microsoft.KeyVault/vaults provider on a SoftHSM token in a fresh data directory under
 * $CMK_TEST_TMP (else /tmp), removed at the end (CMK_TEST_KEEP=1 keeps it).
 *
 * The group fixture opens hsm + store + kv + armres, registers the resource-group routes,
 * Microsoft.KeyVault/vaults and deployments on one router, and creates the demo world's
 * resource group "cmk-rg" (eastus) in subscription 00000000-0000-4000-8000-000000000001.
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
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "arm/deployments.h"
#include "armres.h"
#include "clock.h"
#include "fixture.h"
#include "hsm.h"
#include "keyvault/kv.h"
#include "keyvault/vaults_arm.h"
#include "router.h"
#include "store.h"

#define SUB "00000000-0000-4000-8000-000000000001"
#define RG "/subscriptions/" SUB "/resourcegroups/cmk-rg"
#define DEPS RG "/providers/Microsoft.Resources/deployments/"
#define AV "?api-version=2024-03-01"
#define TENANT "72f988bf-0000-4000-8000-00000000c0de"

typedef struct {
    cmk_fixture *fx;
    arm_deploy_ctx dep;
} fixture;

typedef struct {
    int status;
    json_t *body;
    char async[512];
} answer;

static answer call(fixture *f, const char *method, const char *uri, const char *body)
{
    answer a = {0};
    emu_req *req = emu_req_new(method, uri);
    emu_req_add_header(req, "Host", "localhost:8443");
    emu_req_add_header(req, "Authorization", "Bearer test");
    if (body)
        emu_req_set_body(req, body, strlen(body));
    emu_router_dispatch(f->fx->router, req);
    a.status = req->status;
    a.body = req->resp_len ? json_loadb(req->resp_body, req->resp_len, 0, NULL) : NULL;
    for (emu_resp_header *h = req->resp_headers; h; h = h->next)
        if (!strcasecmp(h->name, "Azure-AsyncOperation"))
            snprintf(a.async, sizeof a.async, "%s", h->value);
    emu_req_free(req);
    return a;
}

static const char *str_at(const json_t *j, const char *path)
{
    const json_t *cur = j;
    const char *p = path;
    while (cur && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)n, p);
        cur = json_object_get(cur, key);
        p += n + (dot ? 1 : 0);
    }
    return json_string_value(cur);
}

/* A vault template: the name and soft-delete retention are parameters, an output reads the
 * deployed vault through reference(). */
static const char *VAULT_TEMPLATE =
    "{\"$schema\":\"https://schema.management.azure.com/schemas/2019-04-01/"
    "deploymentTemplate.json#\",\"contentVersion\":\"1.0.0.0\","
    "\"parameters\":{\"vaultName\":{\"type\":\"string\",\"minLength\":3,\"maxLength\":24},"
    " \"retention\":{\"type\":\"int\",\"defaultValue\":7,\"minValue\":7,\"maxValue\":90},"
    " \"location\":{\"type\":\"string\",\"defaultValue\":\"[resourceGroup().location]\"}},"
    "\"variables\":{\"tenantId\":\"[subscription().tenantId]\"},"
    "\"resources\":[{\"type\":\"Microsoft.KeyVault/vaults\",\"apiVersion\":\"2024-11-01\","
    " \"name\":\"[parameters('vaultName')]\",\"location\":\"[parameters('location')]\","
    " \"properties\":{\"tenantId\":\"[variables('tenantId')]\","
    "  \"sku\":{\"family\":\"A\",\"name\":\"standard\"},\"accessPolicies\":[],"
    "  \"enableSoftDelete\":true,\"softDeleteRetentionInDays\":\"[parameters('retention')]\","
    "  \"enablePurgeProtection\":true}}],"
    "\"outputs\":{\"vaultUri\":{\"type\":\"string\","
    " \"value\":\"[reference(parameters('vaultName')).vaultUri]\"},"
    " \"vaultId\":{\"type\":\"string\","
    " \"value\":\"[resourceId('Microsoft.KeyVault/vaults', parameters('vaultName'))]\"}}}";

static char *deploy_body(const char *tmpl, const char *params)
{
    size_t n = strlen(tmpl) + strlen(params) + 128;
    char *b = malloc(n);
    assert_non_null(b);
    snprintf(b, n, "{\"properties\":{\"mode\":\"Incremental\",\"template\":%s,\"parameters\":%s}}",
             tmpl, params);
    return b;
}

static void test_vault_deployment(void **state)
{
    fixture *f = *state;
    char *body = deploy_body(VAULT_TEMPLATE, "{\"vaultName\":{\"value\":\"tplvault1\"}}");
    answer a = call(f, "PUT", DEPS "dep-vault" AV, body);
    if (a.status != 201)
        fail_msg("PUT -> %d %s", a.status, json_dumps(a.body, 0));
    assert_string_equal(str_at(a.body, "properties.provisioningState"), "Succeeded");
    assert_string_equal(str_at(a.body, "properties.outputs.vaultUri.value"),
                        "https://tplvault1.vault.localhost:8443/");
    assert_string_equal(str_at(a.body, "properties.outputs.vaultId.value"),
                        "/subscriptions/" SUB "/resourceGroups/cmk-rg/providers/"
                        "Microsoft.KeyVault/vaults/tplvault1");
    assert_non_null(str_at(a.body, "properties.correlationId"));
    assert_non_null(str_at(a.body, "properties.duration"));
    assert_non_null(str_at(a.body, "properties.timestamp"));
    assert_int_equal(json_array_size(json_object_get(json_object_get(a.body, "properties"),
                                                     "outputResources")),
                     1);
    assert_string_equal(str_at(a.body, "type"), "Microsoft.Resources/deployments");
    /* the async header points at a terminal operation status */
    assert_non_null(strstr(a.async, "https://localhost:8443/subscriptions/"));
    const char *path = strstr(a.async, "/subscriptions/");
    answer s = call(f, "GET", path, NULL);
    assert_int_equal(s.status, 200);
    assert_string_equal(str_at(s.body, "status"), "Succeeded");
    json_decref(s.body);
    json_decref(a.body);

    /* the vault exists as the provider made it, with the template's settings */
    a = call(f, "GET", RG "/providers/Microsoft.KeyVault/vaults/tplvault1?api-version=2024-11-01",
             NULL);
    assert_int_equal(a.status, 200);
    json_t *props = json_object_get(a.body, "properties");
    assert_int_equal(json_integer_value(json_object_get(props, "softDeleteRetentionInDays")), 7);
    assert_string_equal(json_string_value(json_object_get(props, "tenantId")), TENANT);
    json_decref(a.body);

    /* GET, HEAD, operations, list; redeploy answers 200 */
    a = call(f, "GET", DEPS "dep-vault" AV, NULL);
    assert_int_equal(a.status, 200);
    assert_string_equal(str_at(a.body, "properties.parameters.retention.type"), "int");
    json_decref(a.body);
    a = call(f, "HEAD", DEPS "dep-vault" AV, NULL);
    assert_int_equal(a.status, 204);
    a = call(f, "GET", DEPS "dep-vault/operations" AV, NULL);
    assert_int_equal(a.status, 200);
    json_t *op = json_array_get(json_object_get(a.body, "value"), 0);
    assert_string_equal(str_at(op, "properties.provisioningState"), "Succeeded");
    assert_string_equal(str_at(op, "properties.targetResource.resourceType"),
                        "Microsoft.KeyVault/vaults");
    json_decref(a.body);
    a = call(f, "PUT", DEPS "dep-vault" AV, body);
    assert_int_equal(a.status, 200);
    json_decref(a.body);
    a = call(f, "GET", RG "/providers/Microsoft.Resources/deployments" AV, NULL);
    assert_int_equal(a.status, 200);
    assert_int_equal(json_array_size(json_object_get(a.body, "value")), 1);
    json_decref(a.body);

    /* DELETE removes the record, not the vault */
    a = call(f, "DELETE", DEPS "dep-vault" AV, NULL);
    assert_int_equal(a.status, 204);
    a = call(f, "GET", DEPS "dep-vault" AV, NULL);
    assert_int_equal(a.status, 404);
    assert_string_equal(str_at(a.body, "error.code"), "DeploymentNotFound");
    json_decref(a.body);
    a = call(f, "HEAD", DEPS "dep-vault" AV, NULL);
    assert_int_equal(a.status, 404);
    a = call(f, "GET", RG "/providers/Microsoft.KeyVault/vaults/tplvault1?api-version=2024-11-01",
             NULL);
    assert_int_equal(a.status, 200);
    json_decref(a.body);
    free(body);
}

/* The provider refuses (invalid vault name): the deployment fails with its error as details. */
static void test_provider_failure(void **state)
{
    fixture *f = *state;
    char *body = deploy_body(VAULT_TEMPLATE, "{\"vaultName\":{\"value\":\"9bad--name\"}}");
    answer a = call(f, "PUT", DEPS "dep-bad" AV, body);
    free(body);
    assert_int_equal(a.status, 201);
    assert_string_equal(str_at(a.body, "properties.provisioningState"), "Failed");
    json_t *err = json_object_get(json_object_get(a.body, "properties"), "error");
    assert_string_equal(str_at(err, "code"), "DeploymentFailed");
    json_t *d0 = json_array_get(json_object_get(err, "details"), 0);
    assert_string_equal(str_at(d0, "code"), "ResourceDeploymentFailure");
    json_t *inner = json_array_get(json_object_get(d0, "details"), 0);
    assert_string_equal(str_at(inner, "code"), "VaultNameNotValid");
    json_decref(a.body);
    const char *path = strstr(a.async, "/subscriptions/");
    assert_non_null(path);
    answer s = call(f, "GET", path, NULL);
    assert_string_equal(str_at(s.body, "status"), "Failed");
    assert_string_equal(str_at(s.body, "error.code"), "DeploymentFailed");
    json_decref(s.body);
    a = call(f, "GET", DEPS "dep-bad/operations" AV, NULL);
    json_t *op = json_array_get(json_object_get(a.body, "value"), 0);
    assert_string_equal(str_at(op, "properties.provisioningState"), "Failed");
    assert_string_equal(str_at(op, "properties.statusCode"), "BadRequest");
    assert_string_equal(str_at(op, "properties.statusMessage.error.code"), "VaultNameNotValid");
    json_decref(a.body);
}

typedef struct {
    const char *name;
    const char *uri;
    const char *body;
    int status;
    const char *code;
    const char *msg;
} req_case;

static void test_request_errors(void **state)
{
    fixture *f = *state;
    static const req_case cases[] = {
        {"templateLink", DEPS "d1" AV,
         "{\"properties\":{\"mode\":\"Incremental\",\"templateLink\":{\"uri\":\"https://x\"}}}",
         400, "InvalidTemplateDeployment", "only inline templates"},
        {"no mode", DEPS "d1" AV, "{\"properties\":{\"template\":{\"resources\":[]}}}", 400,
         "InvalidRequestContent", "mode"},
        {"complete mode", DEPS "d1" AV,
         "{\"properties\":{\"mode\":\"Complete\",\"template\":{\"resources\":[]}}}", 400,
         "InvalidDeploymentMode", "Incremental"},
        {"no template", DEPS "d1" AV, "{\"properties\":{\"mode\":\"Incremental\"}}", 400,
         "InvalidRequestContent", "properties.template"},
        {"missing parameter", DEPS "d1" AV,
         "{\"properties\":{\"mode\":\"Incremental\",\"template\":{\"parameters\":{\"p\":{"
         "\"type\":\"string\"}},\"resources\":[]}}}",
         400, "InvalidTemplate", "'p' is not provided"},
        {"no api-version", DEPS "d1",
         "{\"properties\":{\"mode\":\"Incremental\",\"template\":{\"resources\":[]}}}", 400,
         "MissingApiVersionParameter", ""},
        {"unknown group",
         "/subscriptions/" SUB "/resourcegroups/nope/providers/Microsoft.Resources/deployments/"
         "d1" AV,
         "{\"properties\":{\"mode\":\"Incremental\",\"template\":{\"resources\":[]}}}", 404,
         "ResourceGroupNotFound", "nope"},
        {"bad name", DEPS "bad%20name" AV,
         "{\"properties\":{\"mode\":\"Incremental\",\"template\":{\"resources\":[]}}}", 400,
         "InvalidDeploymentName", ""},
        {"validate ok", DEPS "d1/validate" AV,
         "{\"properties\":{\"mode\":\"Incremental\",\"template\":{\"resources\":[]}}}", 200, NULL,
         NULL},
        {"validate bad", DEPS "d1/validate" AV,
         "{\"properties\":{\"mode\":\"Incremental\",\"template\":{\"resources\":[{\"type\":"
         "\"A.B/c\",\"apiVersion\":\"1\",\"name\":\"[nope()]\"}]}}}",
         400, "InvalidTemplateExpression", "'nope' is not valid"},
        {"unknown provider fails the deployment", DEPS "d2" AV,
         "{\"properties\":{\"mode\":\"Incremental\",\"template\":{\"resources\":[{\"type\":"
         "\"Contoso.Nothing/things\",\"apiVersion\":\"1\",\"name\":\"t\"}]}}}",
         201, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const req_case *c = &cases[i];
        answer a = call(f, strstr(c->uri, "/validate") ? "POST" : "PUT", c->uri, c->body);
        if (a.status != c->status)
            fail_msg("%s: %d, want %d: %s", c->name, a.status, c->status,
                     json_dumps(a.body, 0));
        if (c->code) {
            const char *code = str_at(a.body, "error.code");
            const char *msg = str_at(a.body, "error.message");
            if (!code || strcmp(code, c->code) != 0 || !msg || !strstr(msg, c->msg))
                fail_msg("%s: %s '%s', want %s", c->name, code, msg, c->code);
        }
        json_decref(a.body);
    }
    answer a = call(f, "GET", DEPS "d2" AV, NULL);
    assert_string_equal(str_at(a.body, "properties.provisioningState"), "Failed");
    json_decref(a.body);
}

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->fx = cmk_fixture_new("test_deployments", TENANT,
                            CMK_FX_KV | CMK_FX_ARM | CMK_FX_ARM_ROUTES | CMK_FX_VAULTS_ARM);
    *state = f;
    if (!f->fx)
        return -1;
    char err[512];
    f->dep = (arm_deploy_ctx){
        .common = {.tenant = TENANT}, .arm = f->fx->arm, .store = f->fx->store, .router = f->fx->router};
    if (!arm_deployments_init(&f->dep, err, sizeof err)) {
        fprintf(stderr, "deployments: %s\n", err);
        return -1;
    }
    arm_deployments_register(f->fx->router, &f->dep);
    if (!armres_rg_put(f->fx->arm, SUB, "cmk-rg", "eastus", NULL, NULL))
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
        cmocka_unit_test(test_vault_deployment),
        cmocka_unit_test(test_provider_failure),
        cmocka_unit_test(test_request_errors),
    };
    return cmocka_run_group_tests_name("deployments", tests, group_setup, group_teardown);
}
