/*
 * test_template: the ARM template evaluator (emulator/arm/template.c) without HTTP.
 * Table-driven: expressions against one template with parameters and variables, then template
 * features (parameter binding and checks, dependsOn ordering, conditions, outputs, reference())
 * and the errors ARM gives for each.
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

#include "arm/template.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define SUB "00000000-0000-4000-8000-000000000001"
#define RGID "/subscriptions/" SUB "/resourceGroups/cmk-rg"

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, JSON_DECODE_ANY, &e);
    if (!j)
        fail_msg("bad test JSON (%s): %s", e.text, s);
    return j;
}

static json_t *ref_stub(void *ud, const char *id, const char *api, char *err, size_t errlen)
{
    (*(int *)ud)++;
    if (strstr(id, "missing")) {
        snprintf(err, errlen, "404 not found");
        return NULL;
    }
    return json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", id, "apiVersion", api, "properties",
                     "vaultUri", "https://kv1.vault.localhost:8443/", "provisioningState",
                     "Succeeded");
}

static int ref_calls;

static arm_tpl_env env_of(void)
{
    return (arm_tpl_env){.subscription = SUB,
                         .resource_group = "cmk-rg",
                         .rg_location = "eastus",
                         .tenant = "72f988bf-0000-4000-8000-00000000c0de",
                         .deployment_name = "dep1",
                         .reference = ref_stub,
                         .reference_ud = &ref_calls};
}

static const char *BASE_TEMPLATE =
    "{\"$schema\":\"https://schema.management.azure.com/schemas/2019-04-01/"
    "deploymentTemplate.json#\",\"contentVersion\":\"1.0.0.0\","
    "\"parameters\":{"
    " \"name\":{\"type\":\"string\",\"defaultValue\":\"Vault1\"},"
    " \"count\":{\"type\":\"int\",\"defaultValue\":3,\"minValue\":1,\"maxValue\":5},"
    " \"flag\":{\"type\":\"bool\",\"defaultValue\":true},"
    " \"secret\":{\"type\":\"securestring\",\"defaultValue\":\"s3cret\"},"
    " \"obj\":{\"type\":\"object\",\"defaultValue\":{\"a\":{\"b\":[10,20]},\"Mixed\":1}},"
    " \"arr\":{\"type\":\"array\",\"defaultValue\":[\"x\",\"y\"]},"
    " \"loc\":{\"type\":\"string\",\"defaultValue\":\"[resourceGroup().location]\"}},"
    "\"variables\":{\"v1\":\"[concat(parameters('name'), '-v')]\",\"v2\":\"[variables('v1')]\","
    " \"self\":\"[variables('self')]\"},"
    "\"resources\":[{\"type\":\"Microsoft.KeyVault/vaults\",\"apiVersion\":\"2024-11-01\","
    " \"name\":\"kv1\",\"location\":\"eastus\",\"properties\":{}}]}";

typedef struct {
    const char *expr;
    const char *want; /* JSON text, or NULL when an error is expected */
    const char *code; /* expected error code */
    const char *msg;  /* substring of the message */
} expr_case;

static const expr_case EXPRS[] = {
    /* literals and escaping */
    {"plain text", "\"plain text\"", NULL, NULL},
    {"[[not an expression]", "\"[not an expression]\"", NULL, NULL},
    {"['it''s']", "\"it's\"", NULL, NULL},
    {"[ 42 ]", "42", NULL, NULL},
    {"[-7]", "-7", NULL, NULL},
    {"[true()]", "true", NULL, NULL},
    {"[null()]", "null", NULL, NULL},
    /* parameters, variables, property and index access */
    {"[parameters('name')]", "\"Vault1\"", NULL, NULL},
    {"[PARAMETERS('NAME')]", "\"Vault1\"", NULL, NULL},
    {"[parameters('count')]", "3", NULL, NULL},
    {"[parameters('obj').a.b[1]]", "20", NULL, NULL},
    {"[parameters('obj')['a']['b'][0]]", "10", NULL, NULL},
    {"[parameters('obj').mixed]", "1", NULL, NULL},
    {"[parameters('arr')[1]]", "\"y\"", NULL, NULL},
    {"[parameters('loc')]", "\"eastus\"", NULL, NULL},
    {"[variables('v2')]", "\"Vault1-v\"", NULL, NULL},
    /* string functions */
    {"[concat('a', 'b', 1)]", "\"ab1\"", NULL, NULL},
    {"[concat(parameters('arr'), createArrayIsNotHere())]", NULL, "InvalidTemplateExpression",
     "createArrayIsNotHere"},
    {"[concat(parameters('arr'), parameters('arr'))]", "[\"x\",\"y\",\"x\",\"y\"]", NULL, NULL},
    {"[format('{0}-{1}-{0}', 'a', 2)]", "\"a-2-a\"", NULL, NULL},
    {"[format('{{literal}} {0}', 'x')]", "\"{literal} x\"", NULL, NULL},
    {"[format('{3}', 'x')]", NULL, "InvalidTemplateExpression", "refers to argument 3"},
    {"[toLower('AbC')]", "\"abc\"", NULL, NULL},
    {"[toUpper(parameters('name'))]", "\"VAULT1\"", NULL, NULL},
    {"[uniqueString('test')]", "\"rbgf3xv4ufgzg\"", NULL, NULL},
    {"[uniqueString('hello', 'world')]", "\"a7wkljktk6wne\"", NULL, NULL},
    {"[uniqueString('abc')]", "\"cgtzqvhu4i23s\"", NULL, NULL},
    {"[uniqueString('foo', 'bar', 'baz')]", "\"xzi4ioaxtmth4\"", NULL, NULL},
    {"[length(guid('a', 'b'))]", "36", NULL, NULL},
    {"[equals(guid('a'), guid('a'))]", "true", NULL, NULL},
    {"[equals(guid('a'), guid('b'))]", "false", NULL, NULL},
    {"[string(5)]", "\"5\"", NULL, NULL},
    {"[string(parameters('flag'))]", "\"True\"", NULL, NULL},
    {"[string(parameters('arr'))]", "\"[\\\"x\\\",\\\"y\\\"]\"", NULL, NULL},
    {"[int('12')]", "12", NULL, NULL},
    {"[int('x')]", NULL, "InvalidTemplateExpression", "'int'"},
    /* logic */
    {"[if(parameters('flag'), 'yes', 'no')]", "\"yes\"", NULL, NULL},
    {"[if(false(), parameters('nope'), 'lazy')]", "\"lazy\"", NULL, NULL},
    {"[if('x', 1, 2)]", NULL, "InvalidTemplateExpression", "'Boolean'"},
    {"[equals(parameters('count'), 3)]", "true", NULL, NULL},
    {"[not(equals('a', 'b'))]", "true", NULL, NULL},
    {"[and(true(), false())]", "false", NULL, NULL},
    {"[or(false(), true(), false())]", "true", NULL, NULL},
    {"[empty('')]", "true", NULL, NULL},
    {"[empty(parameters('arr'))]", "false", NULL, NULL},
    {"[empty(json_like)]", NULL, "InvalidTemplateExpression", "must be followed by '('"},
    /* scope */
    {"[resourceGroup().id]", "\"" RGID "\"", NULL, NULL},
    {"[resourceGroup().name]", "\"cmk-rg\"", NULL, NULL},
    {"[subscription().subscriptionId]", "\"" SUB "\"", NULL, NULL},
    {"[subscription().id]", "\"/subscriptions/" SUB "\"", NULL, NULL},
    {"[deployment().name]", "\"dep1\"", NULL, NULL},
    {"[resourceId('Microsoft.KeyVault/vaults', 'kv1')]",
     "\"" RGID "/providers/Microsoft.KeyVault/vaults/kv1\"", NULL, NULL},
    {"[resourceId('other-rg', 'Microsoft.KeyVault/vaults', 'kv1')]",
     "\"/subscriptions/" SUB "/resourceGroups/other-rg/providers/Microsoft.KeyVault/vaults/kv1\"",
     NULL, NULL},
    {"[resourceId('s2', 'rg2', 'Microsoft.KeyVault/vaults/keys', 'kv1', 'k1')]",
     "\"/subscriptions/s2/resourceGroups/rg2/providers/Microsoft.KeyVault/vaults/kv1/keys/k1\"",
     NULL, NULL},
    {"[resourceId('Microsoft.KeyVault/vaults/keys', 'kv1')]", NULL, "InvalidTemplateExpression",
     "requires 2 resource name"},
    /* reference(): template resource by name, and by id with an api version */
    {"[reference('kv1').vaultUri]", "\"https://kv1.vault.localhost:8443/\"", NULL, NULL},
    {"[reference(resourceId('Microsoft.KeyVault/vaults', 'kv1'), '2024-11-01', 'Full').id]",
     "\"" RGID "/providers/Microsoft.KeyVault/vaults/kv1\"", NULL, NULL},
    {"[reference('/subscriptions/x/missing', '2024-11-01')]", NULL, "InvalidTemplateExpression",
     "404 not found"},
    {"[reference('nope')]", NULL, "InvalidTemplateExpression", "could not find"},
    /* errors that say where */
    {"[parameters('nope')]", NULL, "InvalidTemplateExpression", "'nope' is not found"},
    {"[variables('self')]", NULL, "InvalidTemplateExpression", "refers to itself"},
    {"[parameters('obj').zzz]", NULL, "InvalidTemplateExpression", "available properties"},
    {"[parameters('arr')[5]]", NULL, "InvalidTemplateExpression", "out of bounds"},
    {"[bogus()]", NULL, "InvalidTemplateExpression", "'bogus' is not valid"},
    {"[concat('a']", NULL, "InvalidTemplateExpression", "expected ',' or ')'"},
    {"['unterminated]", NULL, "InvalidTemplateExpression", "unterminated"},
    {"[concat('a') extra]", NULL, "InvalidTemplateExpression", "unexpected text"},
    {"[toLower(1)]", NULL, "InvalidTemplateExpression", "'String'"},
    {"[equals(1)]", NULL, "InvalidTemplateExpression", "must have 2"},
};

static void test_expressions(void **state)
{
    (void)state;
    json_t *tmpl = parse(BASE_TEMPLATE);
    arm_tpl_error err;
    arm_tpl_env env = env_of();
    arm_tpl *t = arm_tpl_new(tmpl, NULL, &env, &err);
    if (!t)
        fail_msg("template: %s %s", err.code, err.message);
    for (size_t i = 0; i < N_ELEMS(EXPRS); i++) {
        const expr_case *c = &EXPRS[i];
        json_t *got = arm_tpl_eval_string(t, c->expr, &err);
        if (c->want) {
            if (!got)
                fail_msg("%s: error %s %s", c->expr, err.code, err.message);
            json_t *want = parse(c->want);
            if (!json_equal(got, want)) {
                char *g = json_dumps(got, JSON_ENCODE_ANY);
                fail_msg("%s: got %s, want %s", c->expr, g, c->want);
            }
            json_decref(want);
        } else {
            if (got) {
                char *g = json_dumps(got, JSON_ENCODE_ANY);
                fail_msg("%s: want error %s, got %s", c->expr, c->code, g);
            }
            if (strcmp(err.code, c->code) != 0 || !strstr(err.message, c->msg))
                fail_msg("%s: got %s '%s', want %s '...%s...'", c->expr, err.code, err.message,
                         c->code, c->msg);
        }
        json_decref(got);
    }
    /* bounds: an over-long and an over-deep expression fail cleanly */
    size_t n = ARM_TPL_MAX_EXPR + 10;
    char *big = malloc(n + 3);
    assert_non_null(big);
    big[0] = '[';
    memset(big + 1, 'a', n);
    big[n + 1] = ']';
    big[n + 2] = '\0';
    assert_null(arm_tpl_eval_string(t, big, &err));
    assert_string_equal(err.code, "InvalidTemplateExpression");
    size_t depth = 200, o = 0;
    char *deep = malloc(depth * 10 + 16);
    assert_non_null(deep);
    deep[o++] = '[';
    for (size_t i = 0; i < depth; i++) {
        memcpy(deep + o, "not(", 4);
        o += 4;
    }
    memcpy(deep + o, "true()", 6);
    o += 6;
    for (size_t i = 0; i < depth; i++)
        deep[o++] = ')';
    deep[o++] = ']';
    deep[o] = '\0';
    assert_null(arm_tpl_eval_string(t, deep, &err));
    assert_non_null(strstr(err.message, "nested too deeply"));
    free(big);
    free(deep);
    /* the parameters report leaves secure values out */
    json_t *rep = arm_tpl_parameters_report(t);
    assert_string_equal(json_string_value(json_object_get(json_object_get(rep, "name"), "value")),
                        "Vault1");
    assert_null(json_object_get(json_object_get(rep, "secret"), "value"));
    json_decref(rep);
    arm_tpl_free(t);
    json_decref(tmpl);
}

/* ---- template features ------------------------------------------------------------------------ */

typedef struct {
    const char *name;
    const char *tmpl;
    const char *params; /* {name:{value}} or NULL */
    const char *code;   /* NULL: must load */
    const char *msg;
} tpl_case;

#define T0 "{\"$schema\":\"x\",\"contentVersion\":\"1.0.0.0\","
#define VAULT(n, extra)                                                                        \
    "{\"type\":\"Microsoft.KeyVault/vaults\",\"apiVersion\":\"2024-11-01\",\"name\":\"" n       \
    "\",\"location\":\"eastus\",\"properties\":{}" extra "}"

static const tpl_case TEMPLATES[] = {
    {"minimal", T0 "\"resources\":[]}", NULL, NULL, NULL},
    {"not an object", "[1]", NULL, "InvalidTemplate", "JSON object"},
    {"no resources", T0 "\"parameters\":{}}", NULL, "InvalidTemplate", "'resources' array"},
    {"missing parameter value",
     T0 "\"parameters\":{\"p\":{\"type\":\"string\"}},\"resources\":[]}", NULL, "InvalidTemplate",
     "'p' is not provided"},
    {"given parameter", T0 "\"parameters\":{\"p\":{\"type\":\"string\"}},\"resources\":[]}",
     "{\"p\":{\"value\":\"x\"}}", NULL, NULL},
    {"unknown parameter", T0 "\"parameters\":{\"p\":{\"type\":\"string\"}},\"resources\":[]}",
     "{\"p\":{\"value\":\"x\"},\"q\":{\"value\":1}}", "InvalidTemplate",
     "'q' in the parameters file are not valid"},
    {"parameter without value wrapper",
     T0 "\"parameters\":{\"p\":{\"type\":\"string\"}},\"resources\":[]}", "{\"p\":\"x\"}",
     "InvalidTemplate", "{\"value\": ...}"},
    {"key vault reference",
     T0 "\"parameters\":{\"p\":{\"type\":\"securestring\"}},\"resources\":[]}",
     "{\"p\":{\"reference\":{\"keyVault\":{\"id\":\"x\"},\"secretName\":\"s\"}}}",
     "InvalidTemplate", "Key Vault reference"},
    {"wrong type", T0 "\"parameters\":{\"p\":{\"type\":\"int\"}},\"resources\":[]}",
     "{\"p\":{\"value\":\"abc\"}}", "InvalidTemplate", "expected a value of type 'int'"},
    {"int from string", T0 "\"parameters\":{\"p\":{\"type\":\"int\"}},\"resources\":[]}",
     "{\"p\":{\"value\":\"4\"}}", NULL, NULL},
    {"unknown type", T0 "\"parameters\":{\"p\":{\"type\":\"float\"}},\"resources\":[]}", NULL,
     "InvalidTemplate", "no valid 'type'"},
    {"allowedValues",
     T0 "\"parameters\":{\"p\":{\"type\":\"string\",\"allowedValues\":[\"a\",\"b\"]}},"
        "\"resources\":[]}",
     "{\"p\":{\"value\":\"c\"}}", "InvalidTemplate", "must be one of"},
    {"allowedValues case-insensitive",
     T0 "\"parameters\":{\"p\":{\"type\":\"string\",\"allowedValues\":[\"a\",\"b\"]}},"
        "\"resources\":[]}",
     "{\"p\":{\"value\":\"B\"}}", NULL, NULL},
    {"minValue",
     T0 "\"parameters\":{\"p\":{\"type\":\"int\",\"minValue\":7}},\"resources\":[]}",
     "{\"p\":{\"value\":6}}", "InvalidTemplate", "at least 7"},
    {"maxValue",
     T0 "\"parameters\":{\"p\":{\"type\":\"int\",\"maxValue\":90}},\"resources\":[]}",
     "{\"p\":{\"value\":91}}", "InvalidTemplate", "at most 90"},
    {"minLength",
     T0 "\"parameters\":{\"p\":{\"type\":\"string\",\"minLength\":3}},\"resources\":[]}",
     "{\"p\":{\"value\":\"ab\"}}", "InvalidTemplate", "length must be at least 3"},
    {"maxLength array",
     T0 "\"parameters\":{\"p\":{\"type\":\"array\",\"maxLength\":1}},\"resources\":[]}",
     "{\"p\":{\"value\":[1,2]}}", "InvalidTemplate", "length must be at most 1"},
    {"default from another parameter",
     T0 "\"parameters\":{\"b\":{\"type\":\"string\",\"defaultValue\":\"[parameters('a')]\"},"
        "\"a\":{\"type\":\"string\",\"defaultValue\":\"x\"}},\"resources\":[]}",
     NULL, NULL, NULL},
    {"copy loop", T0 "\"resources\":[" VAULT("a", ",\"copy\":{\"name\":\"c\",\"count\":2}") "]}",
     NULL, "InvalidTemplate", "template resource [0]: resource copy loops are not supported"},
    {"nested resources", T0 "\"resources\":[" VAULT("a", ",\"resources\":[]") "]}", NULL,
     "InvalidTemplate", "nested child"},
    {"missing apiVersion",
     T0 "\"resources\":[{\"type\":\"Microsoft.KeyVault/vaults\",\"name\":\"a\"}]}", NULL,
     "InvalidTemplate", "must have a 'apiVersion'"},
    {"bad segments",
     T0 "\"resources\":[{\"type\":\"Microsoft.KeyVault/vaults/keys\",\"apiVersion\":\"1\","
        "\"name\":\"a\"}]}",
     NULL, "InvalidTemplate", "incorrect segment lengths"},
    {"duplicate", T0 "\"resources\":[" VAULT("a", "") "," VAULT("A", "") "]}", NULL,
     "InvalidTemplate", "defined multiple times"},
    {"unknown dependency",
     T0 "\"resources\":[" VAULT("a", ",\"dependsOn\":[\"zzz\"]") "]}", NULL, "InvalidTemplate",
     "'zzz' is not defined"},
    {"cycle",
     T0 "\"resources\":[" VAULT("a", ",\"dependsOn\":[\"b\"]") "," VAULT(
         "b", ",\"dependsOn\":[\"[resourceId('Microsoft.KeyVault/vaults', 'a')]\"]") "]}",
     NULL, "InvalidTemplate", "Circular dependency"},
    {"expression error in a name", T0 "\"resources\":[" VAULT("[bogus()]", "") "]}", NULL,
     "InvalidTemplateExpression", "template resource [0]: The template function 'bogus'"},
    {"user functions",
     T0 "\"functions\":[{\"namespace\":\"x\"}],\"resources\":[]}", NULL, "InvalidTemplate",
     "User-defined"},
    {"too many parameters", NULL, NULL, "InvalidTemplate", "at most 256"},
};

static void test_templates(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_ELEMS(TEMPLATES); i++) {
        const tpl_case *c = &TEMPLATES[i];
        json_t *tmpl;
        if (c->tmpl) {
            tmpl = parse(c->tmpl);
        } else {
            tmpl = parse(T0 "\"resources\":[]}");
            json_t *ps = json_object();
            for (int k = 0; k < 300; k++) {
                char n[16];
                snprintf(n, sizeof n, "p%d", k);
                json_object_set_new(ps, n, json_pack("{s:s,s:s}", "type", "string",
                                                     "defaultValue", "x"));
            }
            json_object_set_new(tmpl, "parameters", ps);
        }
        json_t *params = c->params ? parse(c->params) : NULL;
        arm_tpl_error err;
        arm_tpl_env env = env_of();
        arm_tpl *t = arm_tpl_new(tmpl, params, &env, &err);
        if (!c->code && !t)
            fail_msg("%s: %s %s", c->name, err.code, err.message);
        if (c->code) {
            if (t)
                fail_msg("%s: loaded, want %s", c->name, c->code);
            if (strcmp(err.code, c->code) != 0 || !strstr(err.message, c->msg))
                fail_msg("%s: got %s '%s', want %s '...%s...'", c->name, err.code, err.message,
                         c->code, c->msg);
        }
        arm_tpl_free(t);
        json_decref(tmpl);
        json_decref(params);
    }
}

/* dependsOn orders resources; condition skips; body evaluated; outputs. */
static void test_order_and_bodies(void **state)
{
    (void)state;
    const char *text =
        T0 "\"parameters\":{\"deployKeys\":{\"type\":\"bool\",\"defaultValue\":false}},"
           "\"variables\":{\"vaultName\":\"[concat('kv', uniqueString(resourceGroup().id))]\"},"
           "\"resources\":["
           "{\"type\":\"Microsoft.KeyVault/vaults/accessPolicies\",\"apiVersion\":\"2024-11-01\","
           " \"name\":\"[concat(variables('vaultName'), '/add')]\","
           " \"dependsOn\":[\"[resourceId('Microsoft.KeyVault/vaults', variables('vaultName'))]\"],"
           " \"properties\":{\"accessPolicies\":[]}},"
           "{\"type\":\"Microsoft.Other/things\",\"apiVersion\":\"1\",\"name\":\"skipped\","
           " \"condition\":\"[parameters('deployKeys')]\",\"properties\":{}},"
           "{\"type\":\"Microsoft.KeyVault/vaults\",\"apiVersion\":\"2024-11-01\","
           " \"name\":\"[variables('vaultName')]\",\"location\":\"[resourceGroup().location]\","
           " \"tags\":{\"literal\":\"[[x]\"},\"comments\":\"not sent\","
           " \"properties\":{\"tenantId\":\"[subscription().tenantId]\",\"n\":\"[add()]\"}}],"
           "\"outputs\":{\"vaultName\":{\"type\":\"string\",\"value\":\"[variables('vaultName')]\"},"
           " \"uri\":{\"type\":\"string\",\"value\":\"[reference(variables('vaultName')).vaultUri]\"},"
           " \"skip\":{\"type\":\"string\",\"condition\":\"[false()]\",\"value\":\"x\"}}}";
    json_t *tmpl = parse(text);
    arm_tpl_error err;
    arm_tpl_env env = env_of();
    arm_tpl *t = arm_tpl_new(tmpl, NULL, &env, &err);
    if (!t)
        fail_msg("%s %s", err.code, err.message);
    assert_int_equal(arm_tpl_resource_count(t), 3);
    /* stable order: the first resource whose dependencies are in goes next, so the
     * independent one (index 1) first, then the vault (index 2), then its access policies */
    assert_non_null(strstr(arm_tpl_resource_id(t, 0), "Microsoft.Other/things/skipped"));
    assert_non_null(strstr(arm_tpl_resource_id(t, 1), "/vaults/kv"));
    assert_null(strstr(arm_tpl_resource_id(t, 1), "accessPolicies"));
    assert_non_null(strstr(arm_tpl_resource_id(t, 2), "/accessPolicies/add"));

    /* the vault's body has an expression error: it says which resource */
    arm_tpl_resource r;
    assert_false(arm_tpl_resource_eval(t, 1, &r, &err));
    assert_string_equal(err.code, "InvalidTemplateExpression");
    assert_non_null(strstr(err.message, "template resource [2]"));
    arm_tpl_free(t);

    json_t *vault_def = json_array_get(json_object_get(tmpl, "resources"), 2);
    json_object_del(json_object_get(vault_def, "properties"), "n");
    t = arm_tpl_new(tmpl, NULL, &env, &err);
    assert_non_null(t);
    assert_true(arm_tpl_resource_eval(t, 1, &r, &err));
    assert_false(r.skipped);
    assert_string_equal(r.type, "Microsoft.KeyVault/vaults");
    assert_string_equal(r.api_version, "2024-11-01");
    assert_int_equal(strlen(r.name), 15); /* "kv" + 13 */
    assert_string_equal(json_string_value(json_object_get(r.body, "location")), "eastus");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r.body, "tags"),
                                                          "literal")),
                        "[x]");
    assert_null(json_object_get(r.body, "comments"));
    assert_null(json_object_get(r.body, "name"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(r.body, "properties"),
                                                          "tenantId")),
                        "72f988bf-0000-4000-8000-00000000c0de");
    arm_tpl_resource_cleanup(&r);
    assert_true(arm_tpl_resource_eval(t, 0, &r, &err));
    assert_true(r.skipped);
    arm_tpl_resource_cleanup(&r);

    int before = ref_calls;
    json_t *outs = arm_tpl_outputs(t, &err);
    if (!outs)
        fail_msg("%s %s", err.code, err.message);
    assert_int_equal(ref_calls, before + 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(outs, "uri"), "value")),
                        "https://kv1.vault.localhost:8443/");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(outs, "vaultName"), "type")), "string");
    assert_null(json_object_get(outs, "skip"));
    json_decref(outs);
    arm_tpl_free(t);
    json_decref(tmpl);
}

/* The seed enterprise-policy template, placeholders filled, loads as ARM would take it. */
static void test_seed_template_shape(void **state)
{
    (void)state;
    const char *text =
        "{\"$schema\":\"https://schema.management.azure.com/schemas/2019-04-01/"
        "deploymentTemplate.json#\",\"contentVersion\":\"1.0.0.0\",\"parameters\":{},"
        "\"resources\":[{\"type\":\"Microsoft.PowerPlatform/enterprisePolicies\","
        "\"apiVersion\":\"2020-10-30\",\"name\":\"contoso-cmk-policy\",\"location\":"
        "\"unitedstates\",\"kind\":\"Encryption\",\"identity\":{\"type\":\"SystemAssigned\"},"
        "\"properties\":{\"lockbox\":null,\"encryption\":{\"state\":\"Enabled\",\"keyVault\":{"
        "\"id\":\"" RGID "/providers/Microsoft.KeyVault/vaults/contoso-cmk\",\"key\":{\"name\":"
        "\"cmk\",\"version\":\"0123\"}}},\"networkInjection\":null}}]}";
    json_t *tmpl = parse(text);
    arm_tpl_error err;
    arm_tpl_env env = env_of();
    json_t *none = parse("{}");
    arm_tpl *t = arm_tpl_new(tmpl, none, &env, &err);
    json_decref(none);
    if (!t)
        fail_msg("%s %s", err.code, err.message);
    arm_tpl_resource r;
    assert_true(arm_tpl_resource_eval(t, 0, &r, &err));
    assert_string_equal(r.id, RGID "/providers/Microsoft.PowerPlatform/enterprisePolicies/"
                                   "contoso-cmk-policy");
    assert_string_equal(json_string_value(json_object_get(r.body, "kind")), "Encryption");
    assert_true(json_is_null(json_object_get(json_object_get(r.body, "properties"), "lockbox")));
    arm_tpl_resource_cleanup(&r);
    arm_tpl_free(t);
    json_decref(tmpl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expressions),
        cmocka_unit_test(test_templates),
        cmocka_unit_test(test_order_and_bodies),
        cmocka_unit_test(test_seed_template_shape),
    };
    return cmocka_run_group_tests_name("template", tests, NULL, NULL);
}
