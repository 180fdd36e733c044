/*
 * components: the composition of an environment and the coverage rules; see components.h.
 */
#include "components.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "clock.h"
#include "envelope.h"
#include "log.h"
#include "policies.h"
#include "util.h"

static const emu_migration PP_COMP_MIGRATIONS[] = {
    {"pp_comp", 1,
     "CREATE TABLE pp_comp_envs(env TEXT PRIMARY KEY, fno_integration INTEGER NOT NULL,"
     " fno_since INTEGER NOT NULL, platform_dek BLOB);"
     "CREATE TABLE pp_components(id TEXT PRIMARY KEY, env TEXT NOT NULL, kind TEXT NOT NULL,"
     " name TEXT NOT NULL, geo TEXT NOT NULL, standalone INTEGER NOT NULL,"
     " rcs_platform INTEGER NOT NULL, flow_cmk INTEGER NOT NULL, slot INTEGER NOT NULL,"
     " created INTEGER NOT NULL);"
     "CREATE INDEX pp_components_env ON pp_components(env);"
     "CREATE TABLE pp_comp_records(env TEXT NOT NULL, comp TEXT NOT NULL, id TEXT NOT NULL,"
     " blob BLOB NOT NULL, UNIQUE(comp, id));"},
};

const char *pp_comp_status_str(pp_comp_status st)
{
    switch (st) {
    case PP_COMP_OK:
        return "ok";
    case PP_COMP_ERR_BAD_PARAM:
        return "bad parameter";
    case PP_COMP_ERR_NOT_FOUND:
        return "not found";
    case PP_COMP_ERR_SEQUENCE:
        return "customer-managed key enabled before integration";
    case PP_COMP_ERR_LOCKED:
        return "environment locked";
    case PP_COMP_ERR_DISABLED:
        return "environment disabled";
    case PP_COMP_ERR_BUSY:
        return "operation in progress";
    case PP_COMP_ERR_CRYPTO:
        return "crypto failure";
    case PP_COMP_ERR_STORE:
        return "store failure";
    }
    return "unknown";
}

/* ---- the rule table ------------------------------------------------------------------------ */

#define S000 "seeds/000_010c8081dab9dbd9.txt"
#define T000 "Learn: customer-managed keys for finance and operations apps"
#define S003 "seeds/003_aa4f4039e90353e1.txt"
#define T003 "Community brief: Who holds your keys? Data sovereignty in Dynamics 365"
#define S004 "seeds/004_95c110d4acdaaeae.txt"
#define T004 "Learn: manage your customer-managed encryption key in Power Platform"

enum {
    R_DATAVERSE,
    R_FNO_INTEGRATED,
    R_FNO_NOT_INTEGRATED,
    R_HR_STANDALONE,
    R_DEMAND_PLANNING,
    R_COMMERCE_CMS,
    R_COMMERCE_OTHER_GEO,
    R_COMMERCE_SAME_GEO,
    R_RCS_ADDIN,
    R_RCS_PLATFORM_ADDIN,
    R_OTHER_ADDIN,
    R_RCS_DATA,
    R_FLOW_AFTER,
    R_FLOW_BEFORE,
    R_CONNECTOR,
    R_ENV_SETTINGS,
    R_DISPLAY_NAMES,
    R_LCS,
    R_COUNT
};

static const pp_comp_rule RULES[R_COUNT] = {
    [R_DATAVERSE] = {"dataverse-native", true,
                     "Dataverse and the Dataverse-native Dynamics 365 apps keep their data in the "
                     "environment: covered once CMK is applied to it.",
                     S004, T004, "Dataverse (Custom solutions and Microsoft services)", false},
    [R_FNO_INTEGRATED] = {"fno-integrated", true,
                          "Finance and operations app with Power Platform integration enabled: "
                          "its environment-specific resources are covered.",
                          S000, T000,
                          "You can enable enforcement of the CMK policy for finance and "
                          "operations environments where Microsoft Power Platform integration "
                          "is enabled",
                          false},
    [R_FNO_NOT_INTEGRATED] = {"fno-not-integrated", false,
                              "Finance and operations without Power Platform integration stays "
                              "on the Microsoft-managed key: CMK reaches F&O only through the "
                              "Power Platform integration.",
                              S000, T000,
                              "Finance and operations environments without Microsoft Power "
                              "Platform integration will continue to use Microsoft-managed keys",
                              false},
    [R_HR_STANDALONE] = {"hr-standalone", false,
                         "The stand-alone Human Resources app is not supported: migrate it to a "
                         "finance and operations environment first.",
                         S000, T000, "The Human Resources stand-alone app doesn't support CMKs.",
                         false},
    [R_DEMAND_PLANNING] = {"demand-planning", false,
                           "Demand planning does not fully support CMK; cmkemu treats it as "
                           "not covered.",
                           S000, T000,
                           "Demand planning app for Dynamics 365 Supply Chain Management doesn't "
                           "fully support CMKs.",
                           false},
    [R_COMMERCE_CMS] = {"commerce-cms-recommendations", false,
                        "The e-commerce content management system and recommendations are the "
                        "exceptions in Commerce.",
                        S000, T000,
                        "except the e-commerce content management system (CMS) and "
                        "recommendations",
                        false},
    [R_COMMERCE_OTHER_GEO] = {"commerce-other-geo", false,
                              "A Commerce Scale Unit, e-commerce or ratings and reviews component "
                              "in another geo than the environment is outside the CMK policy.",
                              S000, T000,
                              "CMKs can't be applied to Commerce Scale Units, e-commerce, and "
                              "ratings and reviews components that are located in a different "
                              "geo",
                              false},
    [R_COMMERCE_SAME_GEO] = {"commerce-same-geo", true,
                             "A Commerce component in the environment's geo is an "
                             "environment-specific resource of an integrated Commerce "
                             "environment: covered.",
                             S000, T000,
                             "Finance and operations environments that are provisioned under "
                             "Dynamics 365 Commerce support CMKs for all environment-specific "
                             "resources",
                             false},
    [R_RCS_ADDIN] = {"rcs-addin", false,
                     "Tax Calculation and Electronic Invoicing deployed on the stand-alone "
                     "Regulatory Configuration Service are not covered.",
                     S000, T000,
                     "that use stand-alone RCS don't support CMKs for the encryption of related "
                     "resources",
                     false},
    [R_RCS_PLATFORM_ADDIN] = {"rcs-platform-addin", true,
                              "cmkemu's decision: an RCS add-in running on the finance and "
                              "operations platform (no stand-alone RCS) is treated like any "
                              "other add-in.",
                              S000, T000,
                              "Support for CMKs is expected in late 2023, when RCS "
                              "functionality is added to the finance and operations platform.",
                              true},
    [R_OTHER_ADDIN] = {"other-addin", true,
                       "Every other add-in of an integrated environment supports the CMK "
                       "policy.",
                       S000, T000, "All other add-ins support CMK policies.", false},
    [R_RCS_DATA] = {"rcs-data", false,
                    "Data managed in a Regulatory Configuration Service environment is not "
                    "covered.",
                    S000, T000,
                    "data that's managed under RCS environments doesn't currently support CMKs",
                    false},
    [R_FLOW_AFTER] = {"flow-after-cmk", true,
                      "A flow created while the environment was on its customer-managed key is "
                      "covered.",
                      S004, T004,
                      "For Flows created in an environment that didn't have Flows when CMK was "
                      "applied will be encrypted with CMK.",
                      false},
    [R_FLOW_BEFORE] = {"flow-before-cmk", false,
                       "A flow that existed when CMK was applied (created on the "
                       "Microsoft-managed key) stays on the Microsoft-managed key.",
                       S004, T004,
                       "When you apply CMK to an environment that has Flows, the Flows data "
                       "continues to be encrypted with Microsoft-managed key.",
                       false},
    [R_CONNECTOR] = {"connector-settings", false,
                     "Connector and connection settings are never under the customer key.", S004,
                     T004,
                     "the connection settings for connectors will continue to be encrypted with "
                     "a Microsoft-managed key",
                     false},
    [R_ENV_SETTINGS] = {"environment-settings", false,
                        "Power Platform environment settings are never under the customer key.",
                        S003, T003,
                        "Connector / connection settings and Power Platform "
                        "environment settings.",
                        false},
    [R_DISPLAY_NAMES] = {"display-names", false,
                         "App display names and descriptions are never under the customer key.",
                         S003, T003,
                         "Power Apps display names, descriptions, and connection metadata.", false},
    [R_LCS] = {"lcs-metadata", false,
               "Lifecycle Services data (file assets, methodologies, task recordings, project "
               "metadata) is never under the customer key.",
               S000, T000,
               "Data that you store in Lifecycle Services (such as file assets, methodologies, "
               "task recorder data, and any other project metadata) won't be encrypted by using "
               "CMKs.",
               false},
};

const pp_comp_rule *pp_comp_rules(size_t *n)
{
    *n = R_COUNT;
    return RULES;
}

typedef enum {
    CAT_DATAVERSE,
    CAT_FNO_APP,
    CAT_HR,
    CAT_DEMAND,
    CAT_COMMERCE_CMS,
    CAT_COMMERCE_GEO,
    CAT_RCS_ADDIN,
    CAT_ADDIN,
    CAT_RCS_DATA,
    CAT_FLOW,
    CAT_CONNECTOR,
    CAT_ENV_SETTINGS,
    CAT_DISPLAY,
    CAT_LCS,
} comp_cat;

static const struct {
    const char *name;
    comp_cat cat;
    const char *label;
} KINDS[] = {
    {"dataverse", CAT_DATAVERSE, "Dataverse (custom solutions and Microsoft services)"},
    {"sales", CAT_DATAVERSE, "Dynamics 365 Sales"},
    {"customerService", CAT_DATAVERSE, "Dynamics 365 Customer Service"},
    {"fieldService", CAT_DATAVERSE, "Dynamics 365 Field Service"},
    {"customerInsights", CAT_DATAVERSE, "Dynamics 365 Customer Insights"},
    {"omnichannel", CAT_DATAVERSE, "Dynamics 365 Omnichannel"},
    {"chat", CAT_DATAVERSE, "Chat for Dynamics 365"},
    {"finance", CAT_FNO_APP, "Dynamics 365 Finance"},
    {"supplyChainManagement", CAT_FNO_APP, "Dynamics 365 Supply Chain Management"},
    {"commerce", CAT_FNO_APP, "Dynamics 365 Commerce"},
    {"projectOperations", CAT_FNO_APP, "Dynamics 365 Project Operations"},
    {"intelligentOrderManagement", CAT_FNO_APP, "Dynamics 365 Intelligent Order Management"},
    {"fraudProtection", CAT_FNO_APP, "Dynamics 365 Fraud Protection"},
    {"humanResources", CAT_HR, "Dynamics 365 Human Resources"},
    {"demandPlanning", CAT_DEMAND, "Demand planning (Supply Chain Management)"},
    {"commerceCms", CAT_COMMERCE_CMS, "Commerce e-commerce content management system"},
    {"commerceRecommendations", CAT_COMMERCE_CMS, "Commerce recommendations"},
    {"commerceScaleUnit", CAT_COMMERCE_GEO, "Commerce Scale Unit"},
    {"ecommerce", CAT_COMMERCE_GEO, "Commerce e-commerce"},
    {"ratingsAndReviews", CAT_COMMERCE_GEO, "Commerce ratings and reviews"},
    {"taxCalculation", CAT_RCS_ADDIN, "Tax Calculation add-in"},
    {"electronicInvoicing", CAT_RCS_ADDIN, "Electronic Invoicing add-in"},
    {"addin", CAT_ADDIN, "Finance and operations add-in"},
    {"rcs", CAT_RCS_DATA, "Regulatory Configuration Service data"},
    {"powerAutomateFlow", CAT_FLOW, "Power Automate flow"},
    {"connectionSettings", CAT_CONNECTOR, "Connector / connection settings"},
    {"environmentSettings", CAT_ENV_SETTINGS, "Power Platform environment settings"},
    {"appDisplayNames", CAT_DISPLAY, "Power Apps display names and descriptions"},
    {"lcsMetadata", CAT_LCS, "Lifecycle Services metadata"},
};
#define NKINDS (sizeof KINDS / sizeof KINDS[0])

static int kind_index(const char *kind)
{
    for (size_t i = 0; kind && i < NKINDS; i++)
        if (!strcasecmp(kind, KINDS[i].name))
            return (int)i;
    return -1;
}

static const char *kind_names[NKINDS + 1];
static pthread_once_t kind_names_once = PTHREAD_ONCE_INIT;

static void kind_names_fill(void)
{
    for (size_t i = 0; i < NKINDS; i++)
        kind_names[i] = KINDS[i].name;
    kind_names[NKINDS] = NULL;
}

const char *const *pp_comp_kinds(void)
{
    pthread_once(&kind_names_once, kind_names_fill);
    return kind_names;
}

const char *pp_comp_kind_label(const char *kind)
{
    int k = kind_index(kind);
    return k < 0 ? NULL : KINDS[k].label;
}

static bool same_geo(const char *geo, const char *env_geo)
{
    return !geo || !*geo || !env_geo || !strcasecmp(geo, env_geo);
}

const pp_comp_rule *pp_comp_rule_eval(const pp_comp_facts *f)
{
    int k = kind_index(f->kind);
    if (k < 0)
        return NULL;
    const pp_comp_rule *fno = &RULES[f->fno_integration ? R_FNO_INTEGRATED : R_FNO_NOT_INTEGRATED];
    switch (KINDS[k].cat) {
    case CAT_DATAVERSE:
        return &RULES[R_DATAVERSE];
    case CAT_FNO_APP:
        return fno;
    case CAT_HR:
        return f->standalone ? &RULES[R_HR_STANDALONE] : fno;
    case CAT_DEMAND:
        return &RULES[R_DEMAND_PLANNING];
    case CAT_COMMERCE_CMS:
        return &RULES[R_COMMERCE_CMS];
    case CAT_COMMERCE_GEO:
        if (!same_geo(f->geo, f->env_geo))
            return &RULES[R_COMMERCE_OTHER_GEO];
        return f->fno_integration ? &RULES[R_COMMERCE_SAME_GEO] : fno;
    case CAT_RCS_ADDIN:
        if (!f->rcs_platform)
            return &RULES[R_RCS_ADDIN];
        return f->fno_integration ? &RULES[R_RCS_PLATFORM_ADDIN] : fno;
    case CAT_ADDIN:
        return f->fno_integration ? &RULES[R_OTHER_ADDIN] : fno;
    case CAT_RCS_DATA:
        return &RULES[R_RCS_DATA];
    case CAT_FLOW:
        return &RULES[f->created_under_cmk ? R_FLOW_AFTER : R_FLOW_BEFORE];
    case CAT_CONNECTOR:
        return &RULES[R_CONNECTOR];
    case CAT_ENV_SETTINGS:
        return &RULES[R_ENV_SETTINGS];
    case CAT_DISPLAY:
        return &RULES[R_DISPLAY_NAMES];
    case CAT_LCS:
        return &RULES[R_LCS];
    }
    return NULL;
}

static bool is_flow(const char *kind)
{
    int k = kind_index(kind);
    return k >= 0 && KINDS[k].cat == CAT_FLOW;
}

/* ---- the module ---------------------------------------------------------------------------- */

typedef struct {
    char env[40];
    pp_dek dek;
} dek_slot;

struct pp_comps {
    pthread_mutex_t lock;
    emu_store *store;
    hsm_t *hsm;
    pp_envs_t *envs;
    emu_audit *audit;
    pp_platform_key platform;
    pp_key_wrapper platform_wrapper;
    dek_slot *deks; /* cached platform data keys */
    size_t ndeks;
};

static void hook_deleted(const char *env, void *ud);
static void hook_locked(const pp_environment *e, void *ud);
static void hook_unlinked(const pp_environment *e, const pp_dek *dek, void *ud);

pp_comps_t *pp_comps_open(emu_store *store, hsm_t *hsm, pp_envs_t *envs, emu_audit *audit,
                          char *err, size_t errlen)
{
    pp_comps_t *c = emu_xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    c->store = store;
    c->hsm = hsm;
    c->envs = envs;
    c->audit = audit;
    if (!emu_store_migrate(store, PP_COMP_MIGRATIONS,
                           sizeof PP_COMP_MIGRATIONS / sizeof PP_COMP_MIGRATIONS[0], err, errlen) ||
        !pp_platform_key_ensure(store, hsm, &c->platform, err, errlen)) {
        pthread_mutex_destroy(&c->lock);
        free(c);
        return NULL;
    }
    c->platform_wrapper = pp_platform_key_wrapper(&c->platform);
    pp_envs_set_hooks(envs, &(pp_env_hooks){.deleted = hook_deleted,
                                            .locked = hook_locked,
                                            .unlinked = hook_unlinked,
                                            .ud = c});
    return c;
}

void pp_comps_close(pp_comps_t *c)
{
    if (!c)
        return;
    pp_envs_set_hooks(c->envs, &(pp_env_hooks){0});
    for (size_t i = 0; i < c->ndeks; i++)
        pp_dek_wipe(&c->deks[i].dek);
    free(c->deks);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ---- store helpers (components lock held) -------------------------------------------------- */

static void col_text(sqlite3_stmt *st, int i, char *out, size_t outlen)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(out, outlen, "%s", t ? (const char *)t : "");
}

#define COMP_COLS "id,env,kind,name,geo,standalone,rcs_platform,flow_cmk,slot,created"

static void comp_from_row(sqlite3_stmt *st, pp_component *o)
{
    memset(o, 0, sizeof *o);
    col_text(st, 0, o->id, sizeof o->id);
    col_text(st, 1, o->env, sizeof o->env);
    col_text(st, 2, o->kind, sizeof o->kind);
    col_text(st, 3, o->name, sizeof o->name);
    col_text(st, 4, o->geo, sizeof o->geo);
    o->standalone = sqlite3_column_int(st, 5) != 0;
    o->rcs_platform = sqlite3_column_int(st, 6) != 0;
    o->flow_cmk = sqlite3_column_int(st, 7) != 0;
    o->slot = sqlite3_column_int(st, 8) ? PP_COMP_SLOT_ENVIRONMENT : PP_COMP_SLOT_PLATFORM;
    o->created = sqlite3_column_int64(st, 9);
}

/* One component of env; false when absent. */
static bool comp_load(sqlite3 *db, const char *env, const char *id, pp_component *o)
{
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(db,
                           "SELECT " COMP_COLS " FROM pp_components WHERE id=? COLLATE NOCASE "
                           "AND env=? COLLATE NOCASE",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, env, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            comp_from_row(st, o);
            found = true;
        }
    }
    sqlite3_finalize(st);
    return found;
}

/* Every component of env (ordered by creation); *out malloc'd. false on a store error. */
static bool comp_load_all(sqlite3 *db, const char *env, pp_component **out, size_t *n)
{
    sqlite3_stmt *st = NULL;
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    bool ok = sqlite3_prepare_v2(db,
                                 "SELECT " COMP_COLS " FROM pp_components WHERE env=? COLLATE "
                                 "NOCASE ORDER BY created, rowid",
                                 -1, &st, NULL) == SQLITE_OK;
    int src = SQLITE_DONE;
    if (ok) {
        sqlite3_bind_text(st, 1, env, -1, SQLITE_STATIC);
        while ((src = sqlite3_step(st)) == SQLITE_ROW) {
            if (*n == cap) {
                cap = cap ? 2 * cap : 8;
                *out = emu_xrealloc(*out, cap * sizeof **out);
            }
            comp_from_row(st, &(*out)[(*n)++]);
        }
        ok = src == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    return ok;
}

static bool comp_set_slot(sqlite3 *db, const char *id, pp_comp_slot slot, bool flow_cmk)
{
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db, "UPDATE pp_components SET slot=?, flow_cmk=? WHERE id=?", -1,
                                 &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_int(st, 1, (int)slot);
        sqlite3_bind_int(st, 2, flow_cmk);
        sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    return ok;
}

static bool fno_get(sqlite3 *db, const char *env, int64_t *since)
{
    sqlite3_stmt *st = NULL;
    bool on = false;
    if (since)
        *since = 0;
    if (sqlite3_prepare_v2(db,
                           "SELECT fno_integration, fno_since FROM pp_comp_envs WHERE env=? "
                           "COLLATE NOCASE",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, env, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            on = sqlite3_column_int(st, 0) != 0;
            if (since)
                *since = sqlite3_column_int64(st, 1);
        }
    }
    sqlite3_finalize(st);
    return on;
}

/* The environment's platform data key (created on first use), cached. */
static bool platform_dek_inlock(pp_comps_t *c, const char *env, pp_dek *out, char *err,
                                size_t errlen)
{
    for (size_t i = 0; i < c->ndeks; i++)
        if (!strcasecmp(c->deks[i].env, env)) {
            *out = c->deks[i].dek;
            return true;
        }
    uint8_t wrapped[PP_WRAPPED_MAX];
    size_t wlen = 0;
    pp_dek dek = {0};
    sqlite3 *db = emu_store_lock(c->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT platform_dek FROM pp_comp_envs WHERE env=? COLLATE NOCASE",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, env, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            int n = sqlite3_column_bytes(st, 0);
            if (n > 0 && n <= PP_WRAPPED_MAX) {
                memcpy(wrapped, sqlite3_column_blob(st, 0), (size_t)n);
                wlen = (size_t)n;
            }
        }
    }
    sqlite3_finalize(st);
    bool ok = true;
    if (wlen) {
        ok =
            pp_dek_unwrap(&c->platform_wrapper, wrapped, wlen, &dek, err, errlen) == PP_ENVELOPE_OK;
    } else {
        ok = pp_dek_create(c->hsm, &c->platform_wrapper, &dek, wrapped, &wlen, err, errlen) ==
             PP_ENVELOPE_OK;
        if (ok) {
            ok = emu_store_exec(db, "SAVEPOINT pdek");
            if (ok && sqlite3_prepare_v2(db,
                                         "INSERT INTO pp_comp_envs(env,fno_integration,fno_since,"
                                         "platform_dek) VALUES(?,0,0,?) ON CONFLICT(env) DO "
                                         "UPDATE SET platform_dek=excluded.platform_dek",
                                         -1, &st, NULL) == SQLITE_OK) {
                sqlite3_bind_text(st, 1, env, -1, SQLITE_STATIC);
                sqlite3_bind_blob(st, 2, wrapped, (int)wlen, SQLITE_STATIC);
                ok = sqlite3_step(st) == SQLITE_DONE;
            } else {
                ok = false;
            }
            sqlite3_finalize(st);
            emu_store_exec(db, ok ? "RELEASE pdek" : "ROLLBACK TO pdek");
            if (!ok)
                snprintf(err, errlen, "cannot store the platform data key");
        }
    }
    emu_store_unlock(c->store);
    if (!ok) {
        pp_dek_wipe(&dek);
        return false;
    }
    c->deks = emu_xrealloc(c->deks, (c->ndeks + 1) * sizeof *c->deks);
    snprintf(c->deks[c->ndeks].env, sizeof c->deks[c->ndeks].env, "%s", env);
    c->deks[c->ndeks].dek = dek;
    c->ndeks++;
    *out = dek;
    pp_dek_wipe(&dek);
    return true;
}

static void aad_of(const char *env, const char *comp, const char *rid, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/component/%s/%s", env, comp, rid);
}

/* Re-seals every record of comp from one data key to another (store lock held, inside the
 * caller's transaction). */
static bool reseal(sqlite3 *db, const char *env, const char *comp, const pp_dek *from,
                   const pp_dek *to)
{
    sqlite3_stmt *st = NULL, *up = NULL;
    bool ok = sqlite3_prepare_v2(db, "SELECT id, blob FROM pp_comp_records WHERE comp=?", -1, &st,
                                 NULL) == SQLITE_OK &&
              sqlite3_prepare_v2(db, "UPDATE pp_comp_records SET blob=? WHERE comp=? AND id=?", -1,
                                 &up, NULL) == SQLITE_OK;
    int src = SQLITE_DONE;
    if (ok) {
        sqlite3_bind_text(st, 1, comp, -1, SQLITE_STATIC);
        while (ok && (src = sqlite3_step(st)) == SQLITE_ROW) {
            char rid[80], aad[200];
            col_text(st, 0, rid, sizeof rid);
            aad_of(env, comp, rid, aad, sizeof aad);
            char *pt = NULL;
            size_t ptl = 0;
            uint8_t *blob = NULL;
            size_t blen = 0;
            ok = pp_open(from, aad, strlen(aad), sqlite3_column_blob(st, 1),
                         (size_t)sqlite3_column_bytes(st, 1), &pt, &ptl) == PP_ENVELOPE_OK &&
                 pp_seal(to, aad, strlen(aad), pt, ptl, &blob, &blen) == PP_ENVELOPE_OK;
            if (pt) {
                OPENSSL_cleanse(pt, ptl);
                free(pt);
            }
            if (ok) {
                sqlite3_reset(up);
                sqlite3_bind_blob(up, 1, blob, (int)blen, SQLITE_STATIC);
                sqlite3_bind_text(up, 2, comp, -1, SQLITE_STATIC);
                sqlite3_bind_text(up, 3, rid, -1, SQLITE_STATIC);
                ok = sqlite3_step(up) == SQLITE_DONE;
            }
            free(blob);
        }
        ok = ok && src == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    sqlite3_finalize(up);
    return ok;
}

/* ---- validation ---------------------------------------------------------------------------- */

static bool guid_like(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        char ch = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (ch != '-')
                return false;
        } else if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') ||
                     (ch >= 'A' && ch <= 'F'))) {
            return false;
        }
    }
    return true;
}

static bool rid_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

static pp_comp_status env_lookup(pp_comps_t *c, const char *env, pp_environment *ev, pp_comp_err *e)
{
    if (pp_env_get(c->envs, env, ev) != PP_ENV_OK) {
        snprintf(e->msg, sizeof e->msg, "Environment '%.40s' does not exist.", env);
        return PP_COMP_ERR_NOT_FOUND;
    }
    return PP_COMP_OK;
}

static pp_comp_facts facts_of(const pp_component *k, const char *env_geo, bool fno)
{
    return (pp_comp_facts){.kind = k->kind,
                           .standalone = k->standalone,
                           .rcs_platform = k->rcs_platform,
                           .geo = k->geo,
                           .env_geo = env_geo,
                           .fno_integration = fno,
                           .created_under_cmk = k->flow_cmk};
}

/* ---- components ---------------------------------------------------------------------------- */

pp_comp_status pp_comp_add(pp_comps_t *c, const char *env, const pp_comp_spec *spec,
                           pp_component *out, pp_comp_err *e)
{
    pp_component k;
    memset(&k, 0, sizeof k);
    int ki = kind_index(spec->kind);
    if (ki < 0) {
        char list[1024] = "";
        size_t used = 0;
        for (size_t i = 0; i < NKINDS && used < sizeof list; i++)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                                     KINDS[i].name);
        snprintf(e->msg, sizeof e->msg, "kind '%.40s' is not known; use one of: %.700s",
                 spec->kind ? spec->kind : "", list);
        return PP_COMP_ERR_BAD_PARAM;
    }
    snprintf(k.kind, sizeof k.kind, "%s", KINDS[ki].name);
    const char *name = spec->name && *spec->name ? spec->name : KINDS[ki].label;
    if (strlen(name) >= sizeof k.name) {
        snprintf(e->msg, sizeof e->msg, "name is longer than %zu characters.", sizeof k.name - 1);
        return PP_COMP_ERR_BAD_PARAM;
    }
    snprintf(k.name, sizeof k.name, "%s", name);
    if (spec->geo && *spec->geo) {
        if (!pp_location_valid(spec->geo)) {
            snprintf(e->msg, sizeof e->msg,
                     "geo '%.40s' is not a Power Platform geo; use one of: %s.", spec->geo,
                     pp_locations_str());
            return PP_COMP_ERR_BAD_PARAM;
        }
        emu_lower_copy(k.geo, sizeof k.geo, spec->geo);
    }
    if (spec->rcs && *spec->rcs) {
        if (KINDS[ki].cat != CAT_RCS_ADDIN) {
            snprintf(e->msg, sizeof e->msg,
                     "rcs applies only to the taxCalculation and electronicInvoicing add-ins.");
            return PP_COMP_ERR_BAD_PARAM;
        }
        if (!strcasecmp(spec->rcs, "platform"))
            k.rcs_platform = true;
        else if (strcasecmp(spec->rcs, "standalone")) {
            snprintf(e->msg, sizeof e->msg, "rcs '%.40s' is not valid; use standalone or platform.",
                     spec->rcs);
            return PP_COMP_ERR_BAD_PARAM;
        }
    }
    if (spec->standalone && KINDS[ki].cat != CAT_HR) {
        snprintf(e->msg, sizeof e->msg, "standalone applies only to humanResources.");
        return PP_COMP_ERR_BAD_PARAM;
    }
    k.standalone = spec->standalone;
    if (spec->id && !guid_like(spec->id)) {
        snprintf(e->msg, sizeof e->msg, "Component id '%.40s' is not a GUID.", spec->id);
        return PP_COMP_ERR_BAD_PARAM;
    }
    if (spec->id)
        emu_lower_copy(k.id, sizeof k.id, spec->id);
    else
        emu_guid(k.id);
    pp_environment ev;
    pp_comp_status rs = env_lookup(c, env, &ev, e);
    if (rs != PP_COMP_OK)
        return rs;
    snprintf(k.env, sizeof k.env, "%s", ev.id);
    /* a flow is "created after CMK was applied" when the environment is on its customer key
     * now (a link still running counts as before) */
    k.flow_cmk = KINDS[ki].cat == CAT_FLOW && ev.key_managed_by == PP_KEY_CUSTOMER;
    k.created = emu_clock_now();

    pthread_mutex_lock(&c->lock);
    sqlite3 *db = emu_store_lock(c->store);
    pp_comp_facts f = facts_of(&k, ev.location, fno_get(db, ev.id, NULL));
    const pp_comp_rule *rule = pp_comp_rule_eval(&f);
    k.slot = rule->cmk ? PP_COMP_SLOT_ENVIRONMENT : PP_COMP_SLOT_PLATFORM;
    sqlite3_stmt *st = NULL;
    int src = SQLITE_ERROR;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO pp_components(" COMP_COLS ") VALUES(?,?,?,?,?,?,?,?,?,?)",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, k.id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, k.env, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, k.kind, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, k.name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, k.geo, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 6, k.standalone);
        sqlite3_bind_int(st, 7, k.rcs_platform);
        sqlite3_bind_int(st, 8, k.flow_cmk);
        sqlite3_bind_int(st, 9, (int)k.slot);
        sqlite3_bind_int64(st, 10, k.created);
        src = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    emu_store_unlock(c->store);
    pthread_mutex_unlock(&c->lock);
    if (src == SQLITE_CONSTRAINT) {
        snprintf(e->msg, sizeof e->msg, "Component '%s' already exists.", k.id);
        return PP_COMP_ERR_BAD_PARAM;
    }
    if (src != SQLITE_DONE) {
        snprintf(e->msg, sizeof e->msg, "cannot store the component");
        return PP_COMP_ERR_STORE;
    }
    if (out)
        *out = k;
    return PP_COMP_OK;
}

static void comp_not_found(pp_comp_err *e, const char *env, const char *id)
{
    snprintf(e->msg, sizeof e->msg, "Component '%.40s' does not exist in environment '%.40s'.", id,
             env);
}

pp_comp_status pp_comp_get(pp_comps_t *c, const char *env, const char *id, pp_component *out,
                           pp_comp_err *e)
{
    pthread_mutex_lock(&c->lock);
    sqlite3 *db = emu_store_lock(c->store);
    bool found = comp_load(db, env, id, out);
    emu_store_unlock(c->store);
    pthread_mutex_unlock(&c->lock);
    if (!found)
        comp_not_found(e, env, id);
    return found ? PP_COMP_OK : PP_COMP_ERR_NOT_FOUND;
}

pp_comp_status pp_comp_list(pp_comps_t *c, const char *env, pp_component **out, size_t *n,
                            pp_comp_err *e)
{
    pp_environment ev;
    pp_comp_status rs = env_lookup(c, env, &ev, e);
    *out = NULL;
    *n = 0;
    if (rs != PP_COMP_OK)
        return rs;
    pthread_mutex_lock(&c->lock);
    sqlite3 *db = emu_store_lock(c->store);
    bool ok = comp_load_all(db, ev.id, out, n);
    emu_store_unlock(c->store);
    pthread_mutex_unlock(&c->lock);
    if (!ok) {
        free(*out);
        *out = NULL;
        *n = 0;
        snprintf(e->msg, sizeof e->msg, "cannot list the components");
        return PP_COMP_ERR_STORE;
    }
    return PP_COMP_OK;
}

pp_comp_status pp_comp_delete(pp_comps_t *c, const char *env, const char *id, pp_comp_err *e)
{
    pthread_mutex_lock(&c->lock);
    sqlite3 *db = emu_store_lock(c->store);
    pp_component k;
    pp_comp_status rs = PP_COMP_OK;
    if (!comp_load(db, env, id, &k)) {
        comp_not_found(e, env, id);
        rs = PP_COMP_ERR_NOT_FOUND;
    } else {
        sqlite3_stmt *st = NULL;
        bool ok = emu_store_begin(db);
        const char *sqls[] = {"DELETE FROM pp_comp_records WHERE comp=?",
                              "DELETE FROM pp_components WHERE id=?"};
        for (int i = 0; ok && i < 2; i++) {
            ok = sqlite3_prepare_v2(db, sqls[i], -1, &st, NULL) == SQLITE_OK;
            if (ok) {
                sqlite3_bind_text(st, 1, k.id, -1, SQLITE_STATIC);
                ok = sqlite3_step(st) == SQLITE_DONE;
            }
            sqlite3_finalize(st);
            st = NULL;
        }
        ok = ok && emu_store_commit(db);
        if (!ok) {
            emu_store_rollback(db);
            snprintf(e->msg, sizeof e->msg, "cannot delete the component");
            rs = PP_COMP_ERR_STORE;
        }
    }
    emu_store_unlock(c->store);
    pthread_mutex_unlock(&c->lock);
    return rs;
}

/* ---- records ------------------------------------------------------------------------------- */

typedef struct {
    pp_comps_t *c;
    const char *env, *comp, *rid;
    const json_t *row; /* put */
    json_t **out;      /* get */
    bool retry;        /* the component changed slot meanwhile */
    pp_comp_status st;
    pp_comp_err *e;
} rec_ctx;

/* Reads or writes one record under dek (components lock held). */
static pp_comp_status rec_do(rec_ctx *x, const pp_dek *dek)
{
    char aad[200];
    aad_of(x->env, x->comp, x->rid, aad, sizeof aad);
    pp_comp_status rs = PP_COMP_OK;
    if (x->row) {
        char *txt = json_dumps(x->row, JSON_COMPACT);
        uint8_t *blob = NULL;
        size_t blen = 0;
        if (!txt || strlen(txt) > PP_COMP_RECORD_MAX) {
            snprintf(x->e->msg, sizeof x->e->msg, "The record is larger than %d bytes.",
                     PP_COMP_RECORD_MAX);
            rs = PP_COMP_ERR_BAD_PARAM;
        } else if (pp_seal(dek, aad, strlen(aad), txt, strlen(txt), &blob, &blen) !=
                   PP_ENVELOPE_OK) {
            snprintf(x->e->msg, sizeof x->e->msg, "cannot encrypt the record");
            rs = PP_COMP_ERR_CRYPTO;
        } else {
            sqlite3 *db = emu_store_lock(x->c->store);
            sqlite3_stmt *st = NULL;
            bool ok = sqlite3_prepare_v2(db,
                                         "INSERT INTO pp_comp_records(env,comp,id,blob) "
                                         "VALUES(?,?,?,?) ON CONFLICT(comp,id) DO UPDATE SET "
                                         "blob=excluded.blob",
                                         -1, &st, NULL) == SQLITE_OK;
            if (ok) {
                sqlite3_bind_text(st, 1, x->env, -1, SQLITE_STATIC);
                sqlite3_bind_text(st, 2, x->comp, -1, SQLITE_STATIC);
                sqlite3_bind_text(st, 3, x->rid, -1, SQLITE_STATIC);
                sqlite3_bind_blob(st, 4, blob, (int)blen, SQLITE_STATIC);
                ok = sqlite3_step(st) == SQLITE_DONE;
            }
            sqlite3_finalize(st);
            emu_store_unlock(x->c->store);
            if (!ok) {
                snprintf(x->e->msg, sizeof x->e->msg, "cannot store the record");
                rs = PP_COMP_ERR_STORE;
            }
        }
        if (txt) {
            OPENSSL_cleanse(txt, strlen(txt));
            free(txt);
        }
        free(blob);
        return rs;
    }
    uint8_t *blob = NULL;
    size_t blen = 0;
    bool found = false;
    sqlite3 *db = emu_store_lock(x->c->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT blob FROM pp_comp_records WHERE comp=? AND id=?", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, x->comp, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, x->rid, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            found = true;
            blen = (size_t)sqlite3_column_bytes(st, 0);
            blob = emu_xmalloc(blen ? blen : 1);
            if (blen)
                memcpy(blob, sqlite3_column_blob(st, 0), blen);
        }
    }
    sqlite3_finalize(st);
    emu_store_unlock(x->c->store);
    if (!found) {
        snprintf(x->e->msg, sizeof x->e->msg, "Record '%.64s' of component '%s' does not exist.",
                 x->rid, x->comp);
        return PP_COMP_ERR_NOT_FOUND;
    }
    char *pt = NULL;
    size_t ptl = 0;
    if (pp_open(dek, aad, strlen(aad), blob, blen, &pt, &ptl) != PP_ENVELOPE_OK) {
        snprintf(x->e->msg, sizeof x->e->msg, "Record '%.64s' of component '%s' cannot be opened.",
                 x->rid, x->comp);
        rs = PP_COMP_ERR_CRYPTO;
    } else {
        *x->out = json_loadb(pt, ptl, 0, NULL);
        OPENSSL_cleanse(pt, ptl);
        if (!*x->out) {
            snprintf(x->e->msg, sizeof x->e->msg, "Record '%.64s' is not JSON.", x->rid);
            rs = PP_COMP_ERR_CRYPTO;
        }
    }
    free(pt);
    free(blob);
    return rs;
}

/* pp_env_with_dek callback: the pp_env lock is held, the environment key usable. */
static pp_env_status rec_env_cb(const pp_environment *ev, const pp_dek *dek, void *ud,
                                pp_env_err *err)
{
    (void)ev;
    (void)err;
    rec_ctx *x = ud;
    pthread_mutex_lock(&x->c->lock);
    pp_component k;
    sqlite3 *db = emu_store_lock(x->c->store);
    bool found = comp_load(db, x->env, x->comp, &k);
    emu_store_unlock(x->c->store);
    if (!found) {
        comp_not_found(x->e, x->env, x->comp);
        x->st = PP_COMP_ERR_NOT_FOUND;
    } else if (k.slot != PP_COMP_SLOT_ENVIRONMENT) {
        x->retry = true;
    } else {
        x->st = rec_do(x, dek);
    }
    pthread_mutex_unlock(&x->c->lock);
    return PP_ENV_OK;
}

static pp_comp_status rec_access(pp_comps_t *c, const char *env, const char *comp, const char *rid,
                                 const json_t *row, json_t **out, pp_comp_err *e)
{
    if (out)
        *out = NULL;
    if (!rid_valid(rid)) {
        snprintf(e->msg, sizeof e->msg,
                 "Record id '%.64s' is not valid: 1-64 of letters, digits, '_', '.', '-'.", rid);
        return PP_COMP_ERR_BAD_PARAM;
    }
    pp_environment ev;
    pp_comp_status rs = env_lookup(c, env, &ev, e);
    if (rs != PP_COMP_OK)
        return rs;
    pp_component k;
    char cid[40];
    for (int attempt = 0; attempt < 3; attempt++) {
        pthread_mutex_lock(&c->lock);
        sqlite3 *db = emu_store_lock(c->store);
        bool found = comp_load(db, ev.id, comp, &k);
        emu_store_unlock(c->store);
        if (!found) {
            pthread_mutex_unlock(&c->lock);
            comp_not_found(e, env, comp);
            return PP_COMP_ERR_NOT_FOUND;
        }
        snprintf(cid, sizeof cid, "%s", k.id);
        rec_ctx x = {.c = c, .env = ev.id, .comp = cid, .rid = rid, .row = row, .out = out, .e = e};
        if (k.slot == PP_COMP_SLOT_PLATFORM) {
            /* not under the customer key: a lock (or a link/unlink running) does not reach it;
             * only an admin's disable does */
            if (!ev.enabled && strcmp(ev.reason, PP_REASON_CMK_LOCKED) &&
                strcmp(ev.reason, PP_REASON_CMK_OPERATION)) {
                pthread_mutex_unlock(&c->lock);
                snprintf(e->msg, sizeof e->msg,
                         "Environment '%s' is disabled (%s); re-enable it to reach component "
                         "'%s'.",
                         ev.id, ev.reason, k.name);
                return PP_COMP_ERR_DISABLED;
            }
            pp_dek dek = {0};
            char why[256] = "";
            if (!platform_dek_inlock(c, ev.id, &dek, why, sizeof why)) {
                pthread_mutex_unlock(&c->lock);
                snprintf(e->msg, sizeof e->msg, "the platform data key is unavailable: %s", why);
                return PP_COMP_ERR_CRYPTO;
            }
            rs = rec_do(&x, &dek);
            pp_dek_wipe(&dek);
            pthread_mutex_unlock(&c->lock);
            return rs;
        }
        pthread_mutex_unlock(&c->lock);
        pp_env_err ee = {{0}};
        pp_env_status es = pp_env_with_dek(c->envs, ev.id, rec_env_cb, &x, &ee);
        if (es == PP_ENV_OK && x.retry)
            continue;
        if (es == PP_ENV_OK)
            return x.st;
        switch (es) {
        case PP_ENV_ERR_LOCKED:
            snprintf(e->msg, sizeof e->msg,
                     "Component '%.100s' (%s) is under the environment's customer-managed key, "
                     "which is locked: %.500s",
                     k.name, k.kind, ee.msg);
            return PP_COMP_ERR_LOCKED;
        case PP_ENV_ERR_DISABLED:
            snprintf(e->msg, sizeof e->msg, "Component '%.100s' (%s): %.600s", k.name, k.kind,
                     ee.msg);
            return PP_COMP_ERR_DISABLED;
        case PP_ENV_ERR_NOT_FOUND:
            snprintf(e->msg, sizeof e->msg, "%s", ee.msg);
            return PP_COMP_ERR_NOT_FOUND;
        default:
            snprintf(e->msg, sizeof e->msg, "%s", ee.msg);
            return PP_COMP_ERR_CRYPTO;
        }
    }
    snprintf(e->msg, sizeof e->msg, "Component '%s' keeps changing keys; retry.", comp);
    return PP_COMP_ERR_BUSY;
}

pp_comp_status pp_comp_record_put(pp_comps_t *c, const char *env, const char *comp, const char *rid,
                                  const json_t *row, pp_comp_err *e)
{
    if (!json_is_object(row)) {
        snprintf(e->msg, sizeof e->msg, "A component record is a JSON object.");
        return PP_COMP_ERR_BAD_PARAM;
    }
    return rec_access(c, env, comp, rid, row, NULL, e);
}

pp_comp_status pp_comp_record_get(pp_comps_t *c, const char *env, const char *comp, const char *rid,
                                  json_t **out, pp_comp_err *e)
{
    return rec_access(c, env, comp, rid, NULL, out, e);
}

/* ---- F&O integration ------------------------------------------------------------------------ */

#define SEQUENCE_MSG                                                                               \
    "Power Platform integration for finance and operations cannot be enabled on environment "      \
    "'%s': it already has a customer-managed key (%s). The documentation says: \"If you set up "   \
    "integration with an existing Power Platform environment, CMKs shouldn't be enabled in "       \
    "that environment before integration. (Support for that scenario will be enabled in "          \
    "future.)\" (seeds/000_010c8081dab9dbd9.txt). Enable the integration first, then link the "    \
    "environment to the enterprise policy; or unlink it, enable the integration and link again."

static bool has_cmk(const pp_environment *ev, char *what, size_t wlen)
{
    if (ev->key_managed_by == PP_KEY_CUSTOMER) {
        snprintf(what, wlen, "linked to %.160s", ev->cmk_system_id);
        return true;
    }
    if (ev->op_id[0] && !strcmp(ev->op_kind, "Link")) {
        snprintf(what, wlen, "a link to %.160s is in progress", ev->op_system_id);
        return true;
    }
    return false;
}

typedef struct {
    pp_comps_t *c;
    pp_comp_status st;
    pp_comp_err *e;
} fno_ctx;

static pp_env_status fno_cb(const pp_environment *ev, const pp_dek *dek, void *ud, pp_env_err *err)
{
    (void)err;
    fno_ctx *x = ud;
    pp_comps_t *c = x->c;
    char what[200];
    if (has_cmk(ev, what, sizeof what)) {
        snprintf(x->e->msg, sizeof x->e->msg, SEQUENCE_MSG, ev->id, what);
        x->st = PP_COMP_ERR_SEQUENCE;
        return PP_ENV_OK;
    }
    pthread_mutex_lock(&c->lock);
    pp_dek pdek = {0};
    char why[256] = "";
    if (!platform_dek_inlock(c, ev->id, &pdek, why, sizeof why)) {
        pthread_mutex_unlock(&c->lock);
        snprintf(x->e->msg, sizeof x->e->msg, "the platform data key is unavailable: %s", why);
        x->st = PP_COMP_ERR_CRYPTO;
        return PP_ENV_OK;
    }
    sqlite3 *db = emu_store_lock(c->store);
    pp_component *all = NULL;
    size_t n = 0;
    bool ok = emu_store_begin(db) && comp_load_all(db, ev->id, &all, &n);
    size_t moved = 0;
    for (size_t i = 0; ok && i < n; i++) {
        if (all[i].slot != PP_COMP_SLOT_PLATFORM)
            continue;
        pp_comp_facts f = facts_of(&all[i], ev->location, true);
        if (!pp_comp_rule_eval(&f)->cmk)
            continue;
        ok = reseal(db, ev->id, all[i].id, &pdek, dek) &&
             comp_set_slot(db, all[i].id, PP_COMP_SLOT_ENVIRONMENT, all[i].flow_cmk);
        moved++;
    }
    sqlite3_stmt *st = NULL;
    if (ok && sqlite3_prepare_v2(db,
                                 "UPDATE pp_comp_envs SET fno_integration=1, fno_since=? WHERE "
                                 "env=?",
                                 -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, emu_clock_now());
        sqlite3_bind_text(st, 2, ev->id, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE && sqlite3_changes(db) == 1;
    } else {
        ok = false;
    }
    sqlite3_finalize(st);
    ok = ok && emu_store_commit(db);
    if (!ok)
        emu_store_rollback(db);
    emu_store_unlock(c->store);
    pthread_mutex_unlock(&c->lock);
    pp_dek_wipe(&pdek);
    free(all);
    if (!ok) {
        snprintf(x->e->msg, sizeof x->e->msg, "cannot store the integration");
        x->st = PP_COMP_ERR_STORE;
        return PP_ENV_OK;
    }
    emu_log(EMU_LOG_INFO, "pp-comp",
            "environment %s: finance and operations integration enabled; %zu component(s) moved "
            "onto the environment key",
            ev->id, moved);
    if (c->audit) {
        char target[128], detail[200];
        snprintf(target, sizeof target, "/providers/Microsoft.BusinessAppPlatform/environments/%s",
                 ev->id);
        snprintf(detail, sizeof detail,
                 "finance and operations Power Platform integration enabled; %zu component(s) "
                 "moved onto the environment's data key",
                 moved);
        emu_audit_add(c->audit, &(emu_audit_event){.operation = "PowerPlatform/environments/"
                                                                "FinanceOperationsIntegration",
                                                   .target = target,
                                                   .outcome = "Succeeded",
                                                   .detail = detail});
    }
    x->st = PP_COMP_OK;
    return PP_ENV_OK;
}

pp_comp_status pp_comp_fno_enable(pp_comps_t *c, const char *env, pp_comp_err *e)
{
    pp_environment ev;
    pp_comp_status rs = env_lookup(c, env, &ev, e);
    if (rs != PP_COMP_OK)
        return rs;
    if (pp_comp_fno_enabled(c, ev.id)) /* already on (before CMK, as it must be) */
        return PP_COMP_OK;
    char what[200];
    if (has_cmk(&ev, what, sizeof what)) {
        snprintf(e->msg, sizeof e->msg, SEQUENCE_MSG, ev.id, what);
        return PP_COMP_ERR_SEQUENCE;
    }
    /* the row must exist for the UPDATE: make the platform key (and row) first */
    pthread_mutex_lock(&c->lock);
    pp_dek pdek = {0};
    char why[256] = "";
    bool ok = platform_dek_inlock(c, ev.id, &pdek, why, sizeof why);
    pp_dek_wipe(&pdek);
    pthread_mutex_unlock(&c->lock);
    if (!ok) {
        snprintf(e->msg, sizeof e->msg, "the platform data key is unavailable: %s", why);
        return PP_COMP_ERR_CRYPTO;
    }
    fno_ctx x = {.c = c, .st = PP_COMP_OK, .e = e};
    pp_env_err ee = {{0}};
    pp_env_status es = pp_env_with_dek(c->envs, ev.id, fno_cb, &x, &ee);
    if (es == PP_ENV_OK)
        return x.st;
    snprintf(e->msg, sizeof e->msg,
             "The integration moves the finance and operations data onto the environment's data "
             "key, which is not available: %.600s",
             ee.msg);
    return es == PP_ENV_ERR_NOT_FOUND ? PP_COMP_ERR_NOT_FOUND : PP_COMP_ERR_DISABLED;
}

bool pp_comp_fno_enabled(pp_comps_t *c, const char *env)
{
    pthread_mutex_lock(&c->lock);
    sqlite3 *db = emu_store_lock(c->store);
    bool on = fno_get(db, env, NULL);
    emu_store_unlock(c->store);
    pthread_mutex_unlock(&c->lock);
    return on;
}

/* ---- hooks (the pp_env lock held) ---------------------------------------------------------- */

static void hook_deleted(const char *env, void *ud)
{
    pp_comps_t *c = ud;
    pthread_mutex_lock(&c->lock);
    sqlite3 *db = emu_store_lock(c->store);
    const char *sqls[] = {"DELETE FROM pp_comp_records WHERE env=? COLLATE NOCASE",
                          "DELETE FROM pp_components WHERE env=? COLLATE NOCASE",
                          "DELETE FROM pp_comp_envs WHERE env=? COLLATE NOCASE"};
    for (int i = 0; i < 3; i++) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, sqls[i], -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_text(st, 1, env, -1, SQLITE_STATIC);
            if (sqlite3_step(st) != SQLITE_DONE)
                emu_log(EMU_LOG_ERROR, "pp-comp", "environment %s: cannot delete components", env);
        }
        sqlite3_finalize(st);
    }
    emu_store_unlock(c->store);
    for (size_t i = 0; i < c->ndeks; i++)
        if (!strcasecmp(c->deks[i].env, env)) {
            pp_dek_wipe(&c->deks[i].dek);
            c->deks[i] = c->deks[--c->ndeks];
            break;
        }
    pthread_mutex_unlock(&c->lock);
}

/* The audit of a lock: which components went dark and which stay readable, and why. */
static void hook_locked(const pp_environment *ev, void *ud)
{
    pp_comps_t *c = ud;
    if (!c->audit)
        return;
    pthread_mutex_lock(&c->lock);
    sqlite3 *db = emu_store_lock(c->store);
    pp_component *all = NULL;
    size_t n = 0;
    bool ok = comp_load_all(db, ev->id, &all, &n);
    bool fno = fno_get(db, ev->id, NULL);
    emu_store_unlock(c->store);
    pthread_mutex_unlock(&c->lock);
    if (!ok)
        n = 0;
    char dark[1400] = "", lit[1400] = "";
    size_t nd = 0, nl = 0, ud_ = 0, ul = 0;
    for (size_t i = 0; i < n; i++) {
        pp_comp_facts f = facts_of(&all[i], ev->location, fno);
        const pp_comp_rule *r = pp_comp_rule_eval(&f);
        bool env_key = all[i].slot == PP_COMP_SLOT_ENVIRONMENT;
        char *buf = env_key ? dark : lit;
        size_t *used = env_key ? &ud_ : &ul;
        size_t cap = sizeof dark;
        if (*used < cap)
            *used += (size_t)snprintf(buf + *used, cap - *used, "%s%s (%s, rule %s)",
                                      (env_key ? nd : nl) ? "; " : "", all[i].name, all[i].kind,
                                      r ? r->id : "?");
        if (env_key)
            nd++;
        else
            nl++;
    }
    free(all);
    size_t dlen = 3200;
    char *detail = emu_xmalloc(dlen);
    snprintf(detail, dlen,
             "went dark (under the customer-managed key): the environment's records and %zu "
             "component(s)%s%s; still readable (Microsoft-managed key, not covered by CMK): %zu "
             "component(s)%s%s",
             nd, nd ? ": " : "", dark, nl, nl ? ": " : "", lit);
    char target[128];
    snprintf(target, sizeof target, "/providers/Microsoft.BusinessAppPlatform/environments/%s",
             ev->id);
    emu_audit_add(c->audit, &(emu_audit_event){.operation = "PowerPlatform/environments/"
                                                            "LockCoverage",
                                               .target = target,
                                               .outcome = "Locked",
                                               .detail = detail});
    free(detail);
}

/* Unlink: the environment is back on the Microsoft-managed key. Flows created under CMK move
 * onto the platform key, so that a later link finds them as flows that existed when CMK was
 * applied (they stay on the Microsoft-managed key then). */
static void hook_unlinked(const pp_environment *ev, const pp_dek *dek, void *ud)
{
    pp_comps_t *c = ud;
    if (!dek || !dek->loaded)
        return;
    pthread_mutex_lock(&c->lock);
    pp_dek pdek = {0};
    char why[256] = "";
    if (!platform_dek_inlock(c, ev->id, &pdek, why, sizeof why)) {
        pthread_mutex_unlock(&c->lock);
        emu_log(EMU_LOG_ERROR, "pp-comp", "environment %s: flows not moved: %s", ev->id, why);
        return;
    }
    sqlite3 *db = emu_store_lock(c->store);
    pp_component *all = NULL;
    size_t n = 0, moved = 0;
    bool ok = emu_store_begin(db) && comp_load_all(db, ev->id, &all, &n);
    for (size_t i = 0; ok && i < n; i++) {
        if (!is_flow(all[i].kind) || all[i].slot != PP_COMP_SLOT_ENVIRONMENT)
            continue;
        ok = reseal(db, ev->id, all[i].id, dek, &pdek) &&
             comp_set_slot(db, all[i].id, PP_COMP_SLOT_PLATFORM, false);
        moved++;
    }
    ok = ok && emu_store_commit(db);
    if (!ok) {
        emu_store_rollback(db);
        emu_log(EMU_LOG_ERROR, "pp-comp", "environment %s: cannot move flows to the platform key",
                ev->id);
    } else if (moved) {
        emu_log(EMU_LOG_INFO, "pp-comp",
                "environment %s: %zu flow(s) created under CMK moved onto the platform key", ev->id,
                moved);
    }
    emu_store_unlock(c->store);
    pthread_mutex_unlock(&c->lock);
    pp_dek_wipe(&pdek);
    free(all);
}

/* ---- the coverage report -------------------------------------------------------------------- */

static json_t *rule_json(const pp_comp_rule *r)
{
    json_t *j = json_pack("{s:s,s:b,s:s,s:s,s:s,s:s}", "id", r->id, "cmkApplies", r->cmk, "text",
                          r->text, "seed", r->seed, "seedTitle", r->seed_title, "quote", r->quote);
    if (r->decision)
        json_object_set_new(j, "decision", json_true());
    return j;
}

pp_comp_status pp_comp_coverage(pp_comps_t *c, const char *env, json_t **out, pp_comp_err *e)
{
    *out = NULL;
    pp_environment ev;
    pp_comp_status rs = env_lookup(c, env, &ev, e);
    if (rs != PP_COMP_OK)
        return rs;
    pthread_mutex_lock(&c->lock);
    sqlite3 *db = emu_store_lock(c->store);
    pp_component *all = NULL;
    size_t n = 0;
    int64_t fno_since = 0;
    bool ok = comp_load_all(db, ev.id, &all, &n);
    bool fno = fno_get(db, ev.id, &fno_since);
    emu_store_unlock(c->store);
    pthread_mutex_unlock(&c->lock);
    if (!ok) {
        free(all);
        snprintf(e->msg, sizeof e->msg, "cannot list the components");
        return PP_COMP_ERR_STORE;
    }
    bool customer = ev.key_managed_by == PP_KEY_CUSTOMER;
    bool locked = !strcmp(ev.reason, PP_REASON_CMK_LOCKED);
    bool cmk_busy = !strcmp(ev.reason, PP_REASON_CMK_OPERATION);
    bool admin_off = !ev.enabled && !locked && !cmk_busy;
    const char *env_key = pp_key_managed_by_str(ev.key_managed_by);
    char why_dark[700];
    if (locked)
        snprintf(why_dark, sizeof why_dark, "%s", ev.lock_msg);
    else
        snprintf(why_dark, sizeof why_dark, "the environment is disabled (%s)", ev.reason);

    json_t *comps = json_array();
    size_t n_customer = 0, n_microsoft = 0, n_dark = 0, n_lit = 0;
    for (size_t i = 0; i < n; i++) {
        const pp_component *k = &all[i];
        pp_comp_facts f = facts_of(k, ev.location, fno);
        const pp_comp_rule *r = pp_comp_rule_eval(&f);
        bool on_env = k->slot == PP_COMP_SLOT_ENVIRONMENT;
        bool by_customer = on_env && customer;
        bool readable = on_env ? ev.enabled : !admin_off;
        const char *geo = k->geo[0] ? k->geo : ev.location;
        char created[40];
        emu_time_rfc3339(k->created, created, sizeof created);
        json_t *j = json_pack(
            "{s:s,s:s,s:s,s:s,s:s,s:s,s:b,s:b,s:o,s:{s:s,s:b},s:s}", "id", k->id, "kind", k->kind,
            "label", pp_comp_kind_label(k->kind), "name", k->name, "keyManagedBy",
            by_customer ? "Customer" : "Microsoft", "dataKey", on_env ? "environment" : "platform",
            "cmkApplies", r->cmk, "readable", readable, "rule", rule_json(r), "residency", "geo",
            geo, "sameGeoAsEnvironment", !strcasecmp(geo, ev.location), "createdTime", created);
        if (!readable)
            json_object_set_new(
                j, "unreadableReason",
                json_string(on_env ? why_dark : "an admin disabled the environment"));
        if (r->cmk && !customer)
            json_object_set_new(j, "note",
                                json_string("CMK applies, but the environment is not "
                                            "linked to an enterprise policy: Microsoft "
                                            "holds the key until it is."));
        if (r->cmk != on_env) /* cannot happen by construction; say so if it ever does */
            json_object_set_new(j, "inconsistent", json_true());
        if (k->standalone)
            json_object_set_new(j, "standalone", json_true());
        if (!strcmp(k->kind, "taxCalculation") || !strcmp(k->kind, "electronicInvoicing"))
            json_object_set_new(j, "rcs", json_string(k->rcs_platform ? "platform" : "standalone"));
        json_array_append_new(comps, j);
        by_customer ? n_customer++ : n_microsoft++;
        readable ? n_lit++ : n_dark++;
    }
    free(all);
    char created[40] = "";
    if (fno)
        emu_time_rfc3339(fno_since, created, sizeof created);
    json_t *fnoj = json_pack("{s:b}", "enabled", fno);
    if (fno)
        json_object_set_new(fnoj, "enabledTime", json_string(created));
    const pp_comp_rule *dv = &RULES[R_DATAVERSE];
    json_t *report = json_pack(
        "{s:{s:s,s:s,s:s,s:s,s:s,s:b},s:{s:s,s:s,s:b,s:o},s:o,s:{s:s,s:s,s:s,s:s,s:s},s:o,"
        "s:{s:I,s:I,s:I,s:I}}",
        "environment", "id", ev.id, "displayName", ev.display_name, "keyManagedBy", env_key,
        "runtime", ev.enabled ? "Enabled" : "Disabled", "runtimeReasonCode", ev.reason, "locked",
        locked, "dataverseRecords", "keyManagedBy", env_key, "dataKey", "environment", "readable",
        ev.enabled, "rule", rule_json(dv), "financeOperationsIntegration", fnoj, "residency",
        "region", ev.azure_region, "geo", ev.location, "statement",
        "CMK controls who can read the data, not where it lives: the region and geo above do "
        "not change when a customer-managed key is applied, linked, rotated or locked.",
        "seed", S003, "quote",
        "Bring your own key controls who can read the data not where it "
        "lives.",
        "components", comps, "summary", "customerKey", (json_int_t)n_customer, "microsoftKey",
        (json_int_t)n_microsoft, "readable", (json_int_t)n_lit, "unreadable", (json_int_t)n_dark);
    if (customer && ev.cmk_system_id[0])
        json_object_set_new(json_object_get(report, "environment"), "enterprisePolicySystemId",
                            json_string(ev.cmk_system_id));
    if (!ev.enabled)
        json_object_set_new(json_object_get(report, "dataverseRecords"), "unreadableReason",
                            json_string(why_dark));
    *out = report;
    return PP_COMP_OK;
}

/* ---- world files ---------------------------------------------------------------------------- */

static bool world_env_id(pp_comps_t *c, json_t *v, char id[40], char *err, size_t errlen)
{
    const char *want = json_string_value(json_object_get(v, "id"));
    const char *dn = json_string_value(json_object_get(v, "displayName"));
    pp_environment *all = NULL;
    size_t n = pp_env_list(c->envs, &all), hits = 0;
    for (size_t i = 0; i < n; i++) {
        bool match = want ? !strcasecmp(all[i].id, want) : (dn && !strcmp(all[i].display_name, dn));
        if (match) {
            snprintf(id, 40, "%s", all[i].id);
            hits++;
        }
    }
    free(all);
    if (hits != 1)
        snprintf(err, errlen,
                 "%s: give the environment an id (its displayName names %zu environments)",
                 dn ? dn : "(no displayName)", hits);
    return hits == 1;
}

bool pp_comps_world_apply(pp_comps_t *c, json_t *world, char *err, size_t errlen)
{
    json_t *arr = json_object_get(world, "environments");
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        json_t *comps = json_object_get(v, "components");
        json_t *fno = json_object_get(v, "financeOperationsIntegration");
        if (!comps && !fno)
            continue;
        if ((comps && !json_is_array(comps)) || (fno && !json_is_boolean(fno))) {
            snprintf(err, errlen,
                     "environments[%zu]: components must be an array and "
                     "financeOperationsIntegration a boolean",
                     i);
            return false;
        }
        char env[40], why[300] = "";
        if (!world_env_id(c, v, env, why, sizeof why)) {
            snprintf(err, errlen, "environments[%zu]: %s", i, why);
            return false;
        }
        pp_comp_err e = {{0}};
        if (json_is_true(fno) && pp_comp_fno_enable(c, env, &e) != PP_COMP_OK) {
            snprintf(err, errlen, "environments[%zu].financeOperationsIntegration: %s", i, e.msg);
            return false;
        }
        size_t j;
        json_t *cv;
        json_array_foreach(comps, j, cv)
        {
            pp_comp_spec s = {.id = json_string_value(json_object_get(cv, "id")),
                              .kind = json_string_value(json_object_get(cv, "kind")),
                              .name = json_string_value(json_object_get(cv, "name")),
                              .geo = json_string_value(json_object_get(cv, "geo")),
                              .rcs = json_string_value(json_object_get(cv, "rcs")),
                              .standalone = json_is_true(json_object_get(cv, "standalone"))};
            pp_component k;
            if (!json_is_object(cv) || pp_comp_add(c, env, &s, &k, &e) != PP_COMP_OK) {
                snprintf(err, errlen, "environments[%zu].components[%zu]: %s", i, j,
                         json_is_object(cv) ? e.msg : "not an object");
                return false;
            }
            json_t *recs = json_object_get(cv, "records");
            const char *rid;
            json_t *row;
            json_object_foreach(recs, rid, row)
            {
                if (pp_comp_record_put(c, env, k.id, rid, row, &e) != PP_COMP_OK) {
                    snprintf(err, errlen, "environments[%zu].components[%zu].records.%s: %s", i, j,
                             rid, e.msg);
                    return false;
                }
            }
        }
    }
    return true;
}
