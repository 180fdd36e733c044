/*
 * template: the ARM template language, enough for Microsoft's own enterprise-policy and key
 * vault templates. No HTTP types: the caller (deployments.c) supplies the deployment scope and
 * a callback for reference(), and deploys the evaluated resources itself.
 *
 * Supported: $schema, contentVersion, parameters (string, securestring, int, bool, object,
 * secureObject, array; defaultValue, allowedValues, minValue/maxValue, minLength/maxLength),
 * variables, resources (type, apiVersion, name, location, kind, identity, properties, tags,
 * sku, ...; dependsOn orders them, condition skips them; existing: true only resolves), outputs.
 * Expressions "[...]": parameters, variables, concat, format, toLower, toUpper, uniqueString,
 * guid, string, int, bool, length, if, equals, not, and, or, empty, true, false, null,
 * resourceGroup, subscription, deployment, resourceId, reference; property access ".p" and
 * index "[i]"; "[[" starts a literal. Not supported (InvalidTemplate saying so): copy loops,
 * nested child "resources", user-defined functions, Key Vault parameter references.
 *
 * Every size is bounded (expression length, nesting depth, resources, parameters, outputs).
 * Error codes follow ARM: InvalidTemplate (structure, parameters, dependencies),
 * InvalidTemplateExpression (an expression that does not evaluate). Messages say where.
 *
 * Thread-safety: an arm_tpl is used by one thread at a time.
 */
#ifndef CMKEMU_ARM_TEMPLATE_H
#define CMKEMU_ARM_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#define ARM_TPL_MAX_EXPR 24576     /* characters in one expression (ARM's limit) */
#define ARM_TPL_MAX_DEPTH 64       /* expression nesting and value nesting */
#define ARM_TPL_MAX_RESOURCES 800  /* ARM's limit */
#define ARM_TPL_MAX_PARAMETERS 256 /* ARM's limit */
#define ARM_TPL_MAX_VARIABLES 256  /* ARM's limit */
#define ARM_TPL_MAX_OUTPUTS 64     /* ARM's limit */
#define ARM_TPL_MAX_STRING (1u << 20) /* any string an expression builds */

typedef struct {
    char code[64];     /* "InvalidTemplate", "InvalidTemplateExpression", ... */
    char message[1024];
} arm_tpl_error;

/* reference(id, apiVersion): the resource as GET answers it (full envelope), new reference,
 * or NULL with a message in err. */
typedef json_t *(*arm_tpl_reference_fn)(void *ud, const char *id, const char *api_version,
                                        char *err, size_t errlen);

/* The deployment's scope. Strings are borrowed and must outlive the arm_tpl. */
typedef struct {
    const char *subscription;
    const char *resource_group;
    const char *rg_location;
    const char *tenant;
    const char *deployment_name;
    arm_tpl_reference_fn reference; /* NULL: reference() fails */
    void *reference_ud;
} arm_tpl_env;

typedef struct arm_tpl arm_tpl;

/* Checks the template's shape, binds the parameters ({name: {value}} as a deployment body or
 * parameters file carries them; NULL = none), resolves resource names and orders resources
 * by dependsOn. Returns NULL with err filled on failure. template and parameters are not
 * modified and may be released after the call (the arm_tpl keeps its own references).
 * Free with arm_tpl_free. */
arm_tpl *arm_tpl_new(const json_t *tmpl, const json_t *parameters, const arm_tpl_env *env,
                     arm_tpl_error *err);
void arm_tpl_free(arm_tpl *t);

/* Resources in deployment order. */
size_t arm_tpl_resource_count(const arm_tpl *t);

typedef struct {
    char *id;          /* full resource id */
    char *type;        /* "Microsoft.KeyVault/vaults" */
    char *name;        /* "myvault" (child types: "parent/child") */
    char *api_version;
    json_t *body;      /* PUT body: everything but type/apiVersion/name/dependsOn/condition/... */
    bool skipped;      /* condition evaluated to false */
    bool existing;     /* "existing": true: only referenced, not deployed */
} arm_tpl_resource;

/* Evaluates the resource at position i of the deployment order (expressions in it may call
 * reference() on resources deployed before). On failure returns false with err filled and
 * out empty. arm_tpl_resource_cleanup releases out (also when zeroed). */
bool arm_tpl_resource_eval(arm_tpl *t, size_t i, arm_tpl_resource *out, arm_tpl_error *err);
void arm_tpl_resource_cleanup(arm_tpl_resource *r);

/* The id and type of resource i without evaluating its body (for error reports). */
const char *arm_tpl_resource_id(const arm_tpl *t, size_t i);
const char *arm_tpl_resource_type(const arm_tpl *t, size_t i);

/* Evaluates the outputs: {name: {type, value}} (new reference; {} when none). */
json_t *arm_tpl_outputs(arm_tpl *t, arm_tpl_error *err);

/* The parameters as the deployment reports them: {name: {type, value}}, secure values
 * left out. New reference. */
json_t *arm_tpl_parameters_report(arm_tpl *t);

/* Evaluates one template string in the template's scope: "[expr]" is evaluated, "[[..."
 * loses one '[', anything else is returned as is. New reference, NULL + err on failure. */
json_t *arm_tpl_eval_string(arm_tpl *t, const char *s, arm_tpl_error *err);

/* ARM's uniqueString() of the strings joined with '-' (13 chars + NUL). */
void arm_tpl_unique_string(const char *joined, size_t len, char out[14]);

#endif
