/*
 * test_coverage: CMK coverage across an environment's components (components.h), in-process
 * through the router: the rule table over every rule (table-driven); bad component input
 * refused with nothing created; a mixed composition locked by revoking the policy identity's
 * access, checked component by component (covered reads 423, uncovered reads 200) against the
 * coverage report and the LockCoverage audit event; records stored only as ciphertext; the
 * F&O integration sequencing rule; flows before/after CMK, unlink and relink.
 * Fresh SoftHSM token and store (tests/fixture.h), permissive auth.
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

#include "audit.h"
#include "clock.h"
#include "fixture.h"
#include "keyvault/access.h"
#include "powerplatform/bap_api.h"
#include "powerplatform/components.h"
#include "powerplatform/environments.h"
#include "powerplatform/policies.h"

#define TENANT "72f988bf-86f1-41af-91ab-2d7cd011db47"
#define SUB "00000000-0000-4000-8000-000000000001"
#define BAP "/providers/Microsoft.BusinessAppPlatform"
#define VAULT_ID "/subscriptions/" SUB "/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/"
#define ALL_PERMS (KV_PERM_GET | KV_PERM_WRAP | KV_PERM_UNWRAP)

typedef struct {
    cmk_fixture *fx;
} fixture;

/* ---- the rule table ------------------------------------------------------------------------ */

typedef struct {
    const char *kind;
    bool standalone, rcs_platform, fno, under_cmk;
    const char *geo; /* environment geo is "unitedstates" */
    const char *rule;
    bool cmk;
} rule_case;

static const rule_case RULE_CASES[] = {
    {"dataverse", false, false, false, false, NULL, "dataverse-native", true},
    {"sales", false, false, false, false, NULL, "dataverse-native", true},
    {"fieldService", false, false, true, false, NULL, "dataverse-native", true},
    {"finance", false, false, true, false, NULL, "fno-integrated", true},
    {"FINANCE", false, false, true, false, NULL, "fno-integrated", true},
    {"finance", false, false, false, false, NULL, "fno-not-integrated", false},
    {"supplyChainManagement", false, false, false, false, NULL, "fno-not-integrated", false},
    {"projectOperations", false, false, true, false, NULL, "fno-integrated", true},
    {"humanResources", false, false, true, false, NULL, "fno-integrated", true},
    {"humanResources", true, false, true, false, NULL, "hr-standalone", false},
    {"demandPlanning", false, false, true, false, NULL, "demand-planning", false},
    {"commerceCms", false, false, true, false, NULL, "commerce-cms-recommendations", false},
    {"commerceRecommendations", false, false, true, false, NULL, "commerce-cms-recommendations",
     false},
    {"commerceScaleUnit", false, false, true, false, "europe", "commerce-other-geo", false},
    {"ratingsAndReviews", false, false, true, false, "asia", "commerce-other-geo", false},
    {"commerceScaleUnit", false, false, true, false, "unitedstates", "commerce-same-geo", true},
    {"ecommerce", false, false, true, false, NULL, "commerce-same-geo", true},
    {"commerceScaleUnit", false, false, false, false, "unitedstates", "fno-not-integrated", false},
    {"taxCalculation", false, false, true, false, NULL, "rcs-addin", false},
    {"electronicInvoicing", false, false, true, false, NULL, "rcs-addin", false},
    {"electronicInvoicing", false, true, true, false, NULL, "rcs-platform-addin", true},
    {"taxCalculation", false, true, false, false, NULL, "fno-not-integrated", false},
    {"addin", false, false, true, false, NULL, "other-addin", true},
    {"addin", false, false, false, false, NULL, "fno-not-integrated", false},
    {"rcs", false, false, true, false, NULL, "rcs-data", false},
    {"powerAutomateFlow", false, false, false, true, NULL, "flow-after-cmk", true},
    {"powerAutomateFlow", false, false, true, false, NULL, "flow-before-cmk", false},
    {"connectionSettings", false, false, true, true, NULL, "connector-settings", false},
    {"environmentSettings", false, false, true, true, NULL, "environment-settings", false},
    {"appDisplayNames", false, false, true, true, NULL, "display-names", false},
    {"lcsMetadata", false, false, true, true, NULL, "lcs-metadata", false},
};

static void test_rule_table(void **state)
{
    (void)state;
    size_t nrules = 0;
    const pp_comp_rule *rules = pp_comp_rules(&nrules);
    bool *hit = calloc(nrules, sizeof *hit);
    for (size_t i = 0; i < sizeof RULE_CASES / sizeof RULE_CASES[0]; i++) {
        const rule_case *c = &RULE_CASES[i];
        pp_comp_facts f = {.kind = c->kind,
                           .standalone = c->standalone,
                           .rcs_platform = c->rcs_platform,
                           .geo = c->geo,
                           .env_geo = "unitedstates",
                           .fno_integration = c->fno,
                           .created_under_cmk = c->under_cmk};
        const pp_comp_rule *r = pp_comp_rule_eval(&f);
        if (!r || strcmp(r->id, c->rule) || r->cmk != c->cmk)
            fail_msg("case %zu (%s): got %s, want %s", i, c->kind, r ? r->id : "NULL", c->rule);
        hit[r - rules] = true;
    }
    /* every rule is reached, and every rule cites a seed with a quote */
    for (size_t i = 0; i < nrules; i++) {
        if (!hit[i])
            fail_msg("rule %s has no case", rules[i].id);
        assert_non_null(strstr(rules[i].seed, "seeds/"));
        assert_true(strlen(rules[i].quote) > 20);
    }
    free(hit);
    assert_null(pp_comp_rule_eval(&(pp_comp_facts){.kind = "notAKind"}));
    assert_null(pp_comp_rule_eval(&(pp_comp_facts){.kind = NULL}));
    /* every kind has a label and evaluates */
    for (const char *const *k = pp_comp_kinds(); *k; k++) {
        assert_non_null(pp_comp_kind_label(*k));
        assert_non_null(pp_comp_rule_eval(&(pp_comp_facts){.kind = *k, .env_geo = "europe"}));
    }
}

/* ---- helpers -------------------------------------------------------------------------------- */

static int call(fixture *f, const char *method, const char *uri, const char *body, json_t **out)
{
    emu_req *req = cmk_fixture_dispatch(f->fx, method, uri, &(cmk_call_opts){.body = body});
    int st = req->status;
    if (out)
        *out = cmk_resp_json(req);
    emu_req_free(req);
    return st;
}

static const char *err_code(json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "code"));
}

static void set_access(fixture *f, const char *vault, const char *oid, uint32_t perms)
{
    assert_true(cmk_fx_access(f->fx, vault, oid, perms, -1));
}

/* A vault with purge protection, key "cmk", a policy whose identity may use it. */
static void cmk_setup(fixture *f, const char *vault, const char *policy, pp_policy *pol)
{
    assert_true(cmk_fx_vault(f->fx, vault, true));
    kv_create_params kp = {.bits = 2048};
    kv_key_view v;
    kv_err ke = {{0}};
    assert_int_equal(kv_key_create(f->fx->kv, vault, "cmk", &kp, &v, &ke), KV_OK);
    kv_key_view_cleanup(&v);
    assert_true(cmk_fx_cmk_policy(f->fx, policy, "unitedstates", vault, NULL, pol));
    set_access(f, vault, pol->identity_oid, ALL_PERMS);
}

static void make_env(fixture *f, char id[40])
{
    pp_env_spec spec = {.display_name = "Contoso Retail",
                        .location = "unitedstates",
                        .sku = "Production",
                        .managed = true};
    pp_environment env;
    pp_env_err e = {{0}};
    assert_int_equal(pp_env_create(f->fx->envs, &spec, &env, NULL, &e), PP_ENV_OK);
    memcpy(id, env.id, 40);
}

static void link_env(fixture *f, const char *env, const char *sid, const char *verb)
{
    char uri[300], body[300];
    snprintf(uri, sizeof uri,
             BAP "/environments/%s/enterprisePolicies/Encryption/%s?api-version=2019-10-01", env,
             verb);
    snprintf(body, sizeof body, "{\"SystemId\":\"%s\"}", sid);
    assert_int_equal(call(f, "POST", uri, body, NULL), 202); /* no runner: done inline */
    pp_environment e;
    assert_int_equal(pp_env_get(f->fx->envs, env, &e), PP_ENV_OK);
    assert_int_equal(e.key_managed_by, strcmp(verb, "link") ? PP_KEY_MICROSOFT : PP_KEY_CUSTOMER);
    assert_true(e.enabled);
}

/* Adds a component over HTTP and writes record "r1" {"secret": "<name> secret"}. */
static void add_comp(fixture *f, const char *env, const char *body, char id[40])
{
    char uri[200], rec[300];
    json_t *j = NULL;
    snprintf(uri, sizeof uri, BAP "/environments/%s/components?api-version=1", env);
    assert_int_equal(call(f, "POST", uri, body, &j), 201);
    snprintf(id, 40, "%s", json_string_value(json_object_get(j, "id")));
    char secret[200];
    snprintf(secret, sizeof secret, "{\"secret\":\"%s secret\"}",
             json_string_value(json_object_get(j, "name")));
    json_decref(j);
    snprintf(rec, sizeof rec, BAP "/environments/%s/components/%s/records/r1?api-version=1", env,
             id);
    assert_int_equal(call(f, "PUT", rec, secret, NULL), 200);
}

static int read_comp(fixture *f, const char *env, const char *id, json_t **out)
{
    char uri[300];
    snprintf(uri, sizeof uri, BAP "/environments/%s/components/%s/records/r1?api-version=1", env,
             id);
    return call(f, "GET", uri, NULL, out);
}

static json_t *coverage(fixture *f, const char *env)
{
    char uri[200];
    json_t *j = NULL;
    snprintf(uri, sizeof uri, BAP "/scopes/admin/environments/%s/coverage?api-version=1", env);
    assert_int_equal(call(f, "GET", uri, NULL, &j), 200);
    return j;
}

static json_t *coverage_of(json_t *report, const char *id)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(report, "components"), i,
                       c) if (!strcmp(json_string_value(json_object_get(c, "id")), id)) return c;
    fail_msg("component %s not in the report", id);
    return NULL;
}

/* How many stored component records contain text in clear (must stay 0). */
static int plaintext_rows(fixture *f, const char *text)
{
    sqlite3 *db = emu_store_lock(f->fx->store);
    sqlite3_stmt *st = NULL;
    int n = -1;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM pp_comp_records WHERE instr(blob, ?) > 0", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_blob(st, 1, text, (int)strlen(text), SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int(st, 0);
    }
    sqlite3_finalize(st);
    emu_store_unlock(f->fx->store);
    return n;
}

/* LockCoverage audit events of env; the last one's detail into last (may be NULL). */
static size_t lock_events(fixture *f, const char *env, char last[3200])
{
    json_t *j = emu_audit_query(f->fx->audit, 0, 10000, "LockCoverage", NULL);
    size_t i, n = 0;
    json_t *ev;
    json_array_foreach(json_object_get(j, "value"), i, ev)
    {
        if (!strstr(json_string_value(json_object_get(ev, "target")), env))
            continue;
        n++;
        if (last)
            snprintf(last, 3200, "%s", json_string_value(json_object_get(ev, "detail")));
    }
    json_decref(j);
    return n;
}

/* ---- bad input ------------------------------------------------------------------------------ */

static void test_bad_input(void **state)
{
    fixture *f = *state;
    char env[40], uri[200];
    make_env(f, env);
    snprintf(uri, sizeof uri, BAP "/environments/%s/components?api-version=1", env);
    static const char *const bad[] = {
        "{\"kind\":\"warpDrive\"}",
        "{\"name\":\"no kind\"}",
        "{\"kind\":\"commerceScaleUnit\",\"geo\":\"mars\"}",
        "{\"kind\":\"finance\",\"rcs\":\"standalone\"}",
        "{\"kind\":\"taxCalculation\",\"rcs\":\"cloud\"}",
        "{\"kind\":\"finance\",\"standalone\":true}",
        "{\"kind\":\"humanResources\",\"standalone\":\"yes\"}",
        "[1]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *j = NULL;
        int st = call(f, "POST", uri, bad[i], &j);
        if (st != 400)
            fail_msg("%s: status %d", bad[i], st);
        json_decref(j);
    }
    json_t *j = NULL;
    assert_int_equal(call(f, "GET", uri, NULL, &j), 200);
    assert_int_equal(json_array_size(json_object_get(j, "value")), 0);
    json_decref(j);
    assert_int_equal(call(f, "GET",
                          BAP "/environments/00000000-0000-4000-8000-000000000999/coverage"
                              "?api-version=1",
                          NULL, &j),
                     404);
    assert_string_equal(err_code(j), "EnvironmentNotFound");
    json_decref(j);
    char id[40], rec[300];
    add_comp(f, env, "{\"kind\":\"lcsMetadata\"}", id);
    snprintf(rec, sizeof rec, BAP "/environments/%s/components/%s/records/bad%%20id?api-version=1",
             env, id);
    assert_int_equal(call(f, "PUT", rec, "{}", NULL), 400);
    snprintf(rec, sizeof rec, BAP "/environments/%s/components/%s/records/r2?api-version=1", env,
             id);
    assert_int_equal(call(f, "PUT", rec, "[1,2]", NULL), 400);
    assert_int_equal(call(f, "GET", rec, NULL, NULL), 404);
}

/* ---- a mixed composition, locked ------------------------------------------------------------ */

typedef struct {
    const char *body;
    bool covered; /* under the customer key once linked */
    char id[40];
} comp_case;

static void test_lock_mixed(void **state)
{
    fixture *f = *state;
    pp_policy pol;
    cmk_setup(f, "covvault", "covpolicy", &pol);
    char env[40], uri[300];
    make_env(f, env);
    snprintf(uri, sizeof uri,
             BAP "/environments/%s/financeOperationsIntegration/enable"
                 "?api-version=1",
             env);
    assert_int_equal(call(f, "POST", uri, NULL, NULL), 200);
    comp_case cs[] = {
        {"{\"kind\":\"finance\",\"name\":\"Finance\"}", true, ""},
        {"{\"kind\":\"sales\",\"name\":\"Sales\"}", true, ""},
        {"{\"kind\":\"commerceScaleUnit\",\"name\":\"CSU US\",\"geo\":\"unitedstates\"}", true, ""},
        {"{\"kind\":\"commerceScaleUnit\",\"name\":\"CSU EU\",\"geo\":\"europe\"}", false, ""},
        {"{\"kind\":\"commerceCms\",\"name\":\"CMS\"}", false, ""},
        {"{\"kind\":\"taxCalculation\",\"name\":\"Tax\"}", false, ""},
        {"{\"kind\":\"addin\",\"name\":\"Other add-in\"}", true, ""},
        {"{\"kind\":\"humanResources\",\"name\":\"HR standalone\",\"standalone\":true}", false, ""},
        {"{\"kind\":\"powerAutomateFlow\",\"name\":\"Old flow\"}", false, ""},
        {"{\"kind\":\"connectionSettings\",\"name\":\"Connections\"}", false, ""},
        {"{\"kind\":\"environmentSettings\",\"name\":\"Settings\"}", false, ""},
        {"{\"kind\":\"appDisplayNames\",\"name\":\"Display names\"}", false, ""},
        {"{\"kind\":\"lcsMetadata\",\"name\":\"LCS\"}", false, ""},
        {"{\"kind\":\"powerAutomateFlow\",\"name\":\"New flow\"}", true, ""}, /* after link */
    };
    size_t n = sizeof cs / sizeof cs[0];
    for (size_t i = 0; i + 1 < n; i++)
        add_comp(f, env, cs[i].body, cs[i].id);
    link_env(f, env, pol.system_id, "link");
    add_comp(f, env, cs[n - 1].body, cs[n - 1].id);
    assert_int_equal(plaintext_rows(f, "secret"), 0);

    /* the sequencing rule: integration after CMK is refused, nothing changes */
    json_t *j = NULL;
    pp_comp_err ce = {{0}};
    assert_int_equal(pp_comp_fno_enable(f->fx->comps, env, &ce), PP_COMP_OK); /* already on */
    char env2[40];
    make_env(f, env2);
    link_env(f, env2, pol.system_id, "link");
    snprintf(uri, sizeof uri,
             BAP "/environments/%s/financeOperationsIntegration/enable"
                 "?api-version=1",
             env2);
    assert_int_equal(call(f, "POST", uri, NULL, &j), 400);
    assert_string_equal(err_code(j), "CustomerManagedKeyEnabledBeforeIntegration");
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")),
               "shouldn't be enabled in that environment before integration"));
    json_decref(j);
    assert_false(pp_comp_fno_enabled(f->fx->comps, env2));

    /* linked: everything readable, covered ones on the customer key */
    json_t *rep = coverage(f, env);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(read_comp(f, env, cs[i].id, NULL), 200);
        json_t *c = coverage_of(rep, cs[i].id);
        if (json_is_true(json_object_get(c, "cmkApplies")) != cs[i].covered)
            fail_msg("%s: cmkApplies", cs[i].body);
        assert_string_equal(json_string_value(json_object_get(c, "keyManagedBy")),
                            cs[i].covered ? "Customer" : "Microsoft");
    }
    json_decref(rep);

    /* lock: revoke the identity's access */
    size_t audit_before = lock_events(f, env, NULL);
    set_access(f, "covvault", pol.identity_oid, 0);
    pp_environment ev;
    assert_int_equal(pp_env_get(f->fx->envs, env, &ev), PP_ENV_OK);
    assert_string_equal(ev.reason, PP_REASON_CMK_LOCKED);
    rep = coverage(f, env);
    assert_true(json_is_true(json_object_get(json_object_get(rep, "environment"), "locked")));
    size_t ncov = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *row = NULL;
        int st = read_comp(f, env, cs[i].id, &row);
        json_t *c = coverage_of(rep, cs[i].id);
        if (cs[i].covered) {
            ncov++;
            if (st != 423)
                fail_msg("%s: covered component answered %d during the lock", cs[i].body, st);
            assert_string_equal(err_code(row), "EnvironmentLocked");
            assert_false(json_is_true(json_object_get(c, "readable")));
            assert_non_null(
                strstr(json_string_value(json_object_get(c, "unreadableReason")), "locked"));
        } else {
            if (st != 200)
                fail_msg("%s: uncovered component answered %d during the lock", cs[i].body, st);
            assert_non_null(strstr(json_string_value(json_object_get(row, "secret")), "secret"));
            assert_true(json_is_true(json_object_get(c, "readable")));
            assert_string_equal(json_string_value(json_object_get(c, "dataKey")), "platform");
        }
        json_decref(row);
    }
    json_t *sum = json_object_get(rep, "summary");
    assert_int_equal(json_integer_value(json_object_get(sum, "unreadable")), ncov);
    assert_int_equal(json_integer_value(json_object_get(sum, "readable")), n - ncov);
    json_decref(rep);
    /* writes to an uncovered component still work; to a covered one they do not */
    char rec[300];
    snprintf(rec, sizeof rec, BAP "/environments/%s/components/%s/records/r9?api-version=1", env,
             cs[9].id);
    assert_int_equal(call(f, "PUT", rec, "{\"a\":1}", NULL), 200);
    snprintf(rec, sizeof rec, BAP "/environments/%s/components/%s/records/r9?api-version=1", env,
             cs[0].id);
    assert_int_equal(call(f, "PUT", rec, "{\"a\":1}", NULL), 423);

    /* one audit event for the lock, naming both sides */
    char detail[3200] = "";
    assert_int_equal(lock_events(f, env, detail), audit_before + 1);
    assert_non_null(strstr(detail, "went dark"));
    assert_non_null(strstr(detail, "Finance (finance, rule fno-integrated)"));
    assert_non_null(strstr(detail, "CSU EU (commerceScaleUnit, rule commerce-other-geo)"));
    assert_non_null(strstr(detail, "Old flow (powerAutomateFlow, rule flow-before-cmk)"));
    assert_null(strstr(strstr(detail, "still readable"), "Finance (finance"));

    /* restore, re-enable, unlink: the flow created under CMK moves to the platform key */
    set_access(f, "covvault", pol.identity_oid, ALL_PERMS);
    pp_env_err ee = {{0}};
    assert_int_equal(pp_env_reenable(f->fx->envs, env, NULL, &ee), PP_ENV_OK);
    assert_int_equal(read_comp(f, env, cs[0].id, NULL), 200);
    link_env(f, env, pol.system_id, "unlink");
    pp_component k;
    assert_int_equal(pp_comp_get(f->fx->comps, env, cs[n - 1].id, &k, &ce), PP_COMP_OK);
    assert_int_equal(k.slot, PP_COMP_SLOT_PLATFORM);
    assert_int_equal(pp_comp_get(f->fx->comps, env, cs[0].id, &k, &ce), PP_COMP_OK);
    assert_int_equal(k.slot, PP_COMP_SLOT_ENVIRONMENT);
    /* relink and lock again: that flow existed when CMK was applied, so it stays readable */
    link_env(f, env, pol.system_id, "link");
    set_access(f, "covvault", pol.identity_oid, 0);
    json_t *row = NULL;
    assert_int_equal(read_comp(f, env, cs[n - 1].id, &row), 200);
    assert_string_equal(json_string_value(json_object_get(row, "secret")), "New flow secret");
    json_decref(row);
    assert_int_equal(read_comp(f, env, cs[0].id, NULL), 423);
    rep = coverage(f, env);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(coverage_of(rep, cs[n - 1].id), "rule"), "id")),
                        "flow-before-cmk");
    json_decref(rep);
    set_access(f, "covvault", pol.identity_oid, ALL_PERMS);
    assert_int_equal(pp_env_reenable(f->fx->envs, env, NULL, &ee), PP_ENV_OK);
}

/* Enabling the F&O integration moves existing F&O components onto the environment key, with
 * their records intact; deleting the environment removes its components. */
static void test_fno_integration_moves(void **state)
{
    fixture *f = *state;
    char env[40], fin[40], csu[40];
    make_env(f, env);
    add_comp(f, env, "{\"kind\":\"finance\",\"name\":\"Finance\"}", fin);
    add_comp(f, env, "{\"kind\":\"commerceScaleUnit\",\"name\":\"CSU\"}", csu);
    pp_component k;
    pp_comp_err ce = {{0}};
    assert_int_equal(pp_comp_get(f->fx->comps, env, fin, &k, &ce), PP_COMP_OK);
    assert_int_equal(k.slot, PP_COMP_SLOT_PLATFORM);
    json_t *rep = coverage(f, env);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(coverage_of(rep, fin), "rule"), "id")),
        "fno-not-integrated");
    json_decref(rep);
    assert_int_equal(pp_comp_fno_enable(f->fx->comps, env, &ce), PP_COMP_OK);
    assert_int_equal(pp_comp_get(f->fx->comps, env, fin, &k, &ce), PP_COMP_OK);
    assert_int_equal(k.slot, PP_COMP_SLOT_ENVIRONMENT);
    assert_int_equal(pp_comp_get(f->fx->comps, env, csu, &k, &ce), PP_COMP_OK);
    assert_int_equal(k.slot, PP_COMP_SLOT_ENVIRONMENT);
    json_t *row = NULL;
    assert_int_equal(read_comp(f, env, fin, &row), 200);
    assert_string_equal(json_string_value(json_object_get(row, "secret")), "Finance secret");
    json_decref(row);
    /* an admin disable darkens everything, covered or not */
    pp_env_err ee = {{0}};
    assert_int_equal(pp_env_set_enabled(f->fx->envs, env, false, NULL, &ee), PP_ENV_OK);
    char lcs[40];
    pp_component lk;
    assert_int_equal(pp_comp_add(f->fx->comps, env, &(pp_comp_spec){.kind = "lcsMetadata"}, &lk, &ce),
                     PP_COMP_OK);
    snprintf(lcs, sizeof lcs, "%s", lk.id);
    assert_int_equal(read_comp(f, env, fin, NULL), 423);
    assert_int_equal(pp_comp_record_get(f->fx->comps, env, lcs, "r1", &row, &ce), PP_COMP_ERR_DISABLED);
    assert_int_equal(pp_env_set_enabled(f->fx->envs, env, true, NULL, &ee), PP_ENV_OK);
    assert_int_equal(pp_env_delete(f->fx->envs, env, NULL, &ee), PP_ENV_OK);
    assert_int_equal(pp_comp_get(f->fx->comps, env, fin, &k, &ce), PP_COMP_ERR_NOT_FOUND);
}

/* ---- setup ---------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    *state = f;
    f->fx = cmk_fixture_new("test_coverage", TENANT,
                            CMK_FX_AUTH | CMK_FX_KV | CMK_FX_PP | CMK_FX_COMPS | CMK_FX_BAP);
    return f->fx ? 0 : -1;
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
        cmocka_unit_test(test_rule_table),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_lock_mixed),
        cmocka_unit_test(test_fno_integration_moves),
    };
    return cmocka_run_group_tests_name("coverage", tests, group_setup, group_teardown);
}
