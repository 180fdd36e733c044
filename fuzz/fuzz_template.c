/*
 * fuzz_template: emulator/arm/template.c, the ARM template evaluator.
 * The first byte picks the mode:
 *   even  the rest is a deployment body {"properties":{"template":{...},"parameters":{...}}},
 *         a {"template","parameters"} pair, or a bare template: checked, bound, every resource
 *         evaluated in deployment order, outputs and the parameter report built
 *   odd   the rest is one template string ("[expression]") evaluated in the scope of a fixed
 *         template with parameters and variables of every type
 * reference() answers a fixed vault for any id except those containing "missing".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "arm/template.h"
#include "log.h"
#include "req.h"
#include "util.h"

#define FZ_MAX_INPUT (256u << 10)

static json_t *ref_fixed(void *ud, const char *id, const char *api, char *err, size_t errlen)
{
    (void)ud;
    if (strstr(id, "missing")) {
        snprintf(err, errlen, "The resource '%.200s' was not found.", id);
        return NULL;
    }
    return json_pack("{s:s,s:s,s:{s:s,s:s,s:[i,i]}}", "id", id, "apiVersion", api ? api : "",
                     "properties", "vaultUri", "https://kv1.vault.localhost:8443/",
                     "provisioningState", "Succeeded", "list", 1, 2);
}

static const arm_tpl_env ENV = {.subscription = "00000000-0000-4000-8000-000000000001",
                                .resource_group = "cmk-rg",
                                .rg_location = "eastus",
                                .tenant = "72f988bf-0000-4000-8000-00000000c0de",
                                .deployment_name = "fuzz",
                                .reference = ref_fixed};

static const char SCOPE_TEMPLATE[] =
    "{\"$schema\":\"https://schema.management.azure.com/schemas/2019-04-01/"
    "deploymentTemplate.json#\",\"contentVersion\":\"1.0.0.0\",\"parameters\":{"
    "\"name\":{\"type\":\"string\",\"defaultValue\":\"Vault1\"},"
    "\"count\":{\"type\":\"int\",\"defaultValue\":3},"
    "\"flag\":{\"type\":\"bool\",\"defaultValue\":true},"
    "\"secret\":{\"type\":\"securestring\",\"defaultValue\":\"s3cret\"},"
    "\"obj\":{\"type\":\"object\",\"defaultValue\":{\"a\":{\"b\":[10,20]},\"Mixed\":1}},"
    "\"arr\":{\"type\":\"array\",\"defaultValue\":[\"x\",\"y\"]}},"
    "\"variables\":{\"v1\":\"[concat(parameters('name'), '-v')]\",\"n\":null,"
    "\"big\":9223372036854775807,\"neg\":-9223372036854775808},"
    "\"resources\":[{\"type\":\"Microsoft.KeyVault/vaults\",\"apiVersion\":\"2023-07-01\","
    "\"name\":\"kv1\",\"location\":\"eastus\",\"properties\":{}}]}";

static arm_tpl *scope;

static void whole_template(const json_t *doc)
{
    const json_t *tmpl = doc, *params = NULL;
    const json_t *props = json_object_get(doc, "properties");
    if (json_is_object(json_object_get(props, "template"))) {
        tmpl = json_object_get(props, "template");
        params = json_object_get(props, "parameters");
    } else if (json_is_object(json_object_get(doc, "template"))) {
        tmpl = json_object_get(doc, "template");
        params = json_object_get(doc, "parameters");
    }
    arm_tpl_error err;
    memset(&err, 0, sizeof err);
    arm_tpl *t = arm_tpl_new(tmpl, params, &ENV, &err);
    if (!t) {
        if (!err.code[0] || !err.message[0])
            abort(); /* a refusal must say why */
        return;
    }
    size_t n = arm_tpl_resource_count(t);
    for (size_t i = 0; i < n; i++) {
        (void)arm_tpl_resource_id(t, i);
        (void)arm_tpl_resource_type(t, i);
        arm_tpl_resource r;
        memset(&r, 0, sizeof r);
        if (!arm_tpl_resource_eval(t, i, &r, &err) && (!err.code[0] || !err.message[0]))
            abort();
        arm_tpl_resource_cleanup(&r);
    }
    json_decref(arm_tpl_outputs(t, &err));
    json_decref(arm_tpl_parameters_report(t));
    arm_tpl_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!scope) {
        emu_log_setup(getenv("CMKEMU_FUZZ_LOG") ? EMU_LOG_DEBUG : EMU_LOG_OFF, false);
        json_t *tmpl = json_loads(SCOPE_TEMPLATE, 0, NULL);
        arm_tpl_error err;
        scope = tmpl ? arm_tpl_new(tmpl, NULL, &ENV, &err) : NULL;
        json_decref(tmpl);
        if (!scope)
            abort();
    }
    if (size < 1 || size > FZ_MAX_INPUT)
        return 0;
    if (data[0] % 2 == 0) {
        /* the deployment handler parses bodies with duplicates rejected and a depth cap */
        if (emu_json_depth((const char *)data + 1, size - 1) > 64)
            return 0;
        json_t *doc = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, NULL);
        if (json_is_object(doc))
            whole_template(doc);
        json_decref(doc);
    } else {
        /* template strings come out of a JSON parser: valid UTF-8 without NUL */
        json_t *str = json_stringn((const char *)data + 1, size - 1);
        if (!str || strlen(json_string_value(str)) != size - 1) {
            json_decref(str);
            return 0;
        }
        json_decref(str);
        char *s = emu_xstrndup((const char *)data + 1, size - 1);
        arm_tpl_error err;
        memset(&err, 0, sizeof err);
        json_t *v = arm_tpl_eval_string(scope, s, &err);
        if (!v && (!err.code[0] || !err.message[0]))
            abort();
        json_decref(v);
        free(s);
    }
    return 0;
}
