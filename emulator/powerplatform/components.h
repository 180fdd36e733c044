/*
 * components: what a Dataverse environment carries besides its records (apps, add-ins,
 * Commerce Scale Units, Power Automate flows, connector and environment settings, display
 * names, Lifecycle Services metadata) and which key protects each one. No HTTP types
 * (components_api.c translates).
 *
 * The rule table (pp_comp_rules) says, for each kind of component and its facts, whether
 * customer-managed keys apply, citing the seed document and a short phrase from it. The data
 * path enforces the table by construction: a component's records are sealed (AES-256-GCM,
 * AAD "{env}/component/{component}/{record}") under one of two data keys:
 *   - PP_COMP_SLOT_ENVIRONMENT: the environment's own data key (environments.h), which is
 *     re-wrapped under the customer key on link and wiped by a lock, so these go dark;
 *   - PP_COMP_SLOT_PLATFORM: a second data key per environment, wrapped by the platform key
 *     (Microsoft-managed) and never re-wrapped by link, rotate, unlock or unlink, so these
 *     stay readable during a lock.
 * A component's slot is PP_COMP_SLOT_ENVIRONMENT exactly when its rule says CMK applies. The
 * slot moves (records re-sealed) only when a fact changes: enabling finance and operations
 * Power Platform integration moves the F&O components onto the environment key; unlinking an
 * environment moves the flows created under CMK onto the platform key (for a later link they
 * are "flows that existed when CMK was applied").
 *
 * State: SQLite only (module "pp_comp": pp_comp_envs, pp_components, pp_comp_records); the
 * unwrapped platform data keys are cached in memory. Locking: one mutex; lock order pp_env
 * lock, then the components lock, then the store lock. Functions here never hold the
 * components lock while they call into pp_envs (the environments module calls back into this
 * one with its own lock held).
 */
#ifndef CMKEMU_PP_COMPONENTS_H
#define CMKEMU_PP_COMPONENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "audit.h"
#include "environments.h"
#include "hsm.h"
#include "store.h"

typedef enum {
    PP_COMP_OK = 0,
    PP_COMP_ERR_BAD_PARAM, /* 400 */
    PP_COMP_ERR_NOT_FOUND, /* 404 environment, component or record */
    PP_COMP_ERR_SEQUENCE,  /* 400 F&O integration asked for on an environment that has CMK */
    PP_COMP_ERR_LOCKED,    /* 423 EnvironmentLocked: the component is under the locked key */
    PP_COMP_ERR_DISABLED,  /* 423 EnvironmentDisabled */
    PP_COMP_ERR_BUSY,      /* 409 a link/unlink is in progress */
    PP_COMP_ERR_CRYPTO,    /* 500 */
    PP_COMP_ERR_STORE,     /* 500 */
} pp_comp_status;

const char *pp_comp_status_str(pp_comp_status st);

typedef struct {
    char msg[768];
} pp_comp_err;

/* Which data key seals a component's records. */
typedef enum { PP_COMP_SLOT_PLATFORM = 0, PP_COMP_SLOT_ENVIRONMENT = 1 } pp_comp_slot;

/* One row of the rule table. seed: the file under seeds/ (and its title), quote: a short
 * phrase copied from it; decision: true when the seeds are silent and cmkemu decided. */
typedef struct {
    const char *id;
    bool cmk; /* customer-managed keys apply to this component */
    const char *text;
    const char *seed;
    const char *seed_title;
    const char *quote;
    bool decision;
} pp_comp_rule;

/* The whole table, in evaluation order; *n = its length. */
const pp_comp_rule *pp_comp_rules(size_t *n);

/* The facts a rule depends on. */
typedef struct {
    const char *kind;       /* a pp_comp_kinds() name, case-insensitive */
    bool standalone;        /* humanResources: the stand-alone app */
    bool rcs_platform;      /* taxCalculation / electronicInvoicing: RCS on the F&O platform */
    const char *geo;        /* the component's geo (NULL/"" = the environment's) */
    const char *env_geo;    /* the environment's geo (its Power Platform region) */
    bool fno_integration;   /* F&O Power Platform integration enabled on the environment */
    bool created_under_cmk; /* powerAutomateFlow: created while the environment was on CMK */
} pp_comp_facts;

/* The rule that applies; NULL when the kind is unknown. */
const pp_comp_rule *pp_comp_rule_eval(const pp_comp_facts *f);

/* Known kinds ("dataverse", "finance", "commerceScaleUnit", ...), NULL-terminated, and a
 * human label for each. */
const char *const *pp_comp_kinds(void);
const char *pp_comp_kind_label(const char *kind);

/* One component. Plain data. */
typedef struct {
    char id[40];
    char env[40];
    char kind[40];
    char name[128];
    char geo[32]; /* "" = the environment's */
    bool standalone, rcs_platform;
    bool flow_cmk; /* powerAutomateFlow created under CMK (and not unlinked since) */
    pp_comp_slot slot;
    int64_t created;
} pp_component;

typedef struct {
    const char *id; /* NULL = new GUID */
    const char *kind, *name, *geo;
    const char *rcs; /* "standalone" (default) | "platform" */
    bool standalone;
} pp_comp_spec;

typedef struct pp_comps pp_comps_t;

/* Opens the tables and registers the environment hooks on envs (deletion, lock, unlink).
 * envs, store, hsm and audit (may be NULL) must outlive the result. */
pp_comps_t *pp_comps_open(emu_store *store, hsm_t *hsm, pp_envs_t *envs, emu_audit *audit,
                          char *err, size_t errlen);
/* NULL is a no-op; wipes the cached data keys. Close before pp_envs_close. */
void pp_comps_close(pp_comps_t *c);

pp_comp_status pp_comp_add(pp_comps_t *c, const char *env, const pp_comp_spec *spec,
                           pp_component *out, pp_comp_err *e);
pp_comp_status pp_comp_get(pp_comps_t *c, const char *env, const char *id, pp_component *out,
                           pp_comp_err *e);
/* *out malloc'd (NULL when none), ordered by creation; caller frees. */
pp_comp_status pp_comp_list(pp_comps_t *c, const char *env, pp_component **out, size_t *n,
                            pp_comp_err *e);
pp_comp_status pp_comp_delete(pp_comps_t *c, const char *env, const char *id, pp_comp_err *e);

/* Records of a component: a JSON object per record id ([A-Za-z0-9_.-]{1,64}). Sealed under
 * the component's slot; a component on the environment key answers LOCKED while the
 * environment is locked (the lock message) and DISABLED while disabled; one on the platform
 * key answers unless an admin disabled the environment. */
#define PP_COMP_RECORD_MAX (64 * 1024)
pp_comp_status pp_comp_record_put(pp_comps_t *c, const char *env, const char *comp, const char *rid,
                                  const json_t *row, pp_comp_err *e);
pp_comp_status pp_comp_record_get(pp_comps_t *c, const char *env, const char *comp, const char *rid,
                                  json_t **out, pp_comp_err *e);

/* F&O Power Platform integration. Enabling is refused with PP_COMP_ERR_SEQUENCE when the
 * environment already has a customer-managed key (or a link is running); it moves the F&O
 * components onto the environment key. Idempotent. */
pp_comp_status pp_comp_fno_enable(pp_comps_t *c, const char *env, pp_comp_err *e);
bool pp_comp_fno_enabled(pp_comps_t *c, const char *env);

/* The coverage report of an environment (new reference): the environment, data residency,
 * every component with its key, rule and seed, and a summary. */
pp_comp_status pp_comp_coverage(pp_comps_t *c, const char *env, json_t **out, pp_comp_err *e);

/* World files: environments[].financeOperationsIntegration (bool) and
 * environments[].components [{kind, name?, geo?, rcs?, standalone?, id?, records?: {rid:
 * {...}}}]; an entry is matched by its id, else by its displayName (which must be unique). */
bool pp_comps_world_apply(pp_comps_t *c, json_t *world, char *err, size_t errlen);

#endif
