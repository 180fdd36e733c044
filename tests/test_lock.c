/*
 * test_lock: customer-managed keys for Power Platform environments, in-process: link (and its
 * immediate refusals), the link operation failing when the policy identity lacks unwrapKey,
 * the lock watch (access policy revoked, key disabled) -> 423 EnvironmentLocked and policy
 * Unhealthy, restore -> policy Healthy but still disabled until enable, unlink -> Microsoft.
 * Fresh SoftHSM token and store (tests/fixture.h), permissive auth, no role assignments.
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

#include "clock.h"
#include "fixture.h"
#include "keyvault/access.h"
#include "powerplatform/bap_api.h"
#include "powerplatform/environments.h"
#include "powerplatform/policies.h"

#define TENANT "72f988bf-86f1-41af-91ab-2d7cd011db47"
#define SUB "00000000-0000-4000-8000-000000000001"
#define BAP "/providers/Microsoft.BusinessAppPlatform"
#define VAULT "cmkvault"
#define VAULT_ID "/subscriptions/" SUB "/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/"

typedef struct {
    cmk_fixture *fx;
    pp_policies_t *pol;
    pp_envs_t *envs;
    pp_bap_ctx ctx;
} fixture;

static int call(fixture *f, const char *method, const char *host, const char *uri,
                const char *body, json_t **out)
{
    emu_req *req = cmk_fixture_dispatch(f->fx, method, uri,
                                        &(cmk_call_opts){.host = host, .body = body});
    int st = req->status;
    if (out)
        *out = cmk_resp_json(req);
    emu_req_free(req);
    return st;
}

static void make_vault(fixture *f, const char *name, bool purge_protection)
{
    kv_vault_info vi = {0};
    snprintf(vi.name, sizeof vi.name, "%s", name);
    vi.soft_delete = true;
    vi.retention_days = 7;
    vi.purge_protection = purge_protection;
    snprintf(vi.tenant, sizeof vi.tenant, TENANT);
    kv_err e = {{0}};
    assert_int_equal(kv_vault_create(f->fx->kv, &vi, &e), KV_OK);
}

/* Sets the access policy of oid on the vault to perms (0 = remove). */
static void set_access(fixture *f, const char *oid, uint32_t perms)
{
    kv_vault_state s = {0};
    assert_int_equal(kv_vault_state_get(f->fx->kv, VAULT, &s), KV_OK);
    size_t k = 0;
    for (size_t i = 0; i < s.npolicies; i++) {
        if (!strcmp(s.policies[i].object_id, oid)) {
            json_decref(s.policies[i].permissions);
            continue;
        }
        s.policies[k++] = s.policies[i];
    }
    s.npolicies = k;
    if (perms) {
        s.policies = realloc(s.policies, (k + 1) * sizeof *s.policies);
        kv_access_policy *ap = &s.policies[s.npolicies++];
        memset(ap, 0, sizeof *ap);
        snprintf(ap->tenant, sizeof ap->tenant, TENANT);
        snprintf(ap->object_id, sizeof ap->object_id, "%s", oid);
        ap->keys = perms;
        ap->permissions = json_pack("{s:[]}", "keys");
    }
    bool created = false;
    kv_err e = {{0}};
    assert_int_equal(kv_vault_put(f->fx->kv, &s, &created, &e), KV_OK);
    kv_vault_state_cleanup(&s);
}

static void make_policy(fixture *f, const char *name, const char *location, const char *vault,
                        pp_policy *out)
{
    char vid[300];
    snprintf(vid, sizeof vid, VAULT_ID "%s", vault);
    pp_policy_spec spec = {.subscription = SUB,
                           .resource_group = "rg",
                           .name = name,
                           .location = location,
                           .kind = PP_KIND_ENCRYPTION,
                           .identity = true,
                           .has_encryption = true,
                           .encryption_enabled = true,
                           .vault_id = vid,
                           .key_name = "cmk"};
    bool created = false;
    pp_err e = {{0}, {0}};
    pp_status st = pp_policy_put(f->pol, &spec, out, &created, &e);
    if (st != PP_OK)
        fprintf(stderr, "policy: %s\n", e.msg);
    assert_int_equal(st, PP_OK);
}

static void make_env(fixture *f, const char *sku, bool managed, char id[40])
{
    pp_env_spec spec = {.display_name = "Contoso", .location = "unitedstates", .sku = sku,
                        .managed = managed};
    pp_environment env;
    pp_env_err e = {{0}};
    assert_int_equal(pp_env_create(f->envs, &spec, &env, NULL, &e), PP_ENV_OK);
    memcpy(id, env.id, 40);
}

static int link(fixture *f, const char *env, const char *sid, const char *verb, json_t **op)
{
    char uri[300], body[300];
    snprintf(uri, sizeof uri, BAP "/environments/%s/enterprisePolicies/Encryption/%s"
                                  "?api-version=2019-10-01",
             env, verb);
    snprintf(body, sizeof body, "{\"SystemId\":\"%s\"}", sid);
    emu_req *req = cmk_fixture_dispatch(f->fx, "POST", uri, &(cmk_call_opts){.body = body});
    int st = req->status;
    const char *loc = cmk_resp_header(req, "Location");
    char path[300] = "";
    if (loc && strstr(loc, BAP))
        snprintf(path, sizeof path, "%s", strstr(loc, BAP));
    json_t *err = cmk_resp_json(req);
    emu_req_free(req);
    if (st != 202) {
        if (op)
            *op = err;
        else
            json_decref(err);
        return st;
    }
    json_decref(err);
    int gst = call(f, "GET", NULL, path, NULL, op);
    assert_int_equal(gst, 200);
    return st;
}

static const char *op_state(json_t *op)
{
    return json_string_value(json_object_get(json_object_get(op, "state"), "id"));
}

static int read_record(fixture *f, const char *env, const char *id, json_t **out)
{
    char host[128], uri[200];
    snprintf(host, sizeof host, "%s.crm.localhost:8443", env);
    snprintf(uri, sizeof uri, "/api/data/v9.2/accounts(%s)", id);
    return call(f, "GET", host, uri, NULL, out);
}

static void write_record(fixture *f, const char *env, char id[40])
{
    char host[128];
    snprintf(host, sizeof host, "%s.crm.localhost:8443", env);
    emu_req *req = cmk_fixture_dispatch(
        f->fx, "POST", "/api/data/v9.2/accounts",
        &(cmk_call_opts){.host = host, .body = "{\"name\":\"Fabrikam secret\"}"});
    assert_int_equal(req->status, 204);
    const char *h = cmk_resp_header(req, "OData-EntityId");
    assert_non_null(h);
    const char *lp = strrchr(h, '(');
    snprintf(id, 40, "%.36s", lp + 1);
    emu_req_free(req);
}

static pp_health health(fixture *f, const char *sid)
{
    pp_policy p;
    assert_int_equal(pp_policy_get_by_system_id(f->pol, sid, &p), PP_OK);
    return p.health;
}

static void test_lock_flow(void **state)
{
    fixture *f = *state;
    make_vault(f, VAULT, true);
    make_vault(f, "nopurge", false);
    kv_create_params kp = {.bits = 2048};
    kv_key_view kv;
    kv_err ke = {{0}};
    assert_int_equal(kv_key_create(f->fx->kv, VAULT, "cmk", &kp, &kv, &ke), KV_OK);
    kv_key_view_cleanup(&kv);

    pp_policy pol, other, nop;
    make_policy(f, "cmkpolicy", "unitedstates", VAULT, &pol);
    make_policy(f, "europepolicy", "europe", VAULT, &other);
    make_policy(f, "nopurgepolicy", "unitedstates", "nopurge", &nop);

    char env[40], rid[40], trial[40], basic[40];
    make_env(f, "Production", true, env);
    make_env(f, "Trial", true, trial);
    make_env(f, "Sandbox", false, basic);
    write_record(f, env, rid);

    /* immediate refusals */
    json_t *j = NULL;
    assert_int_equal(link(f, env, "/regions/unitedstates/providers/Microsoft.PowerPlatform/"
                                  "enterprisePolicies/00000000-0000-0000-0000-000000000000",
                          "link", &j), 400);
    json_decref(j);
    assert_int_equal(link(f, env, other.system_id, "link", &j), 400);
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(j, "error"),
                                                             "message")), "region"));
    json_decref(j);
    assert_int_equal(link(f, trial, pol.system_id, "link", NULL), 400);
    assert_int_equal(link(f, basic, pol.system_id, "link", NULL), 400);
    assert_int_equal(link(f, env, nop.system_id, "link", NULL), 400);

    /* identity lacks unwrapKey -> operation Failed, environment still on Microsoft */
    set_access(f, pol.identity_oid, KV_PERM_GET | KV_PERM_WRAP);
    assert_int_equal(link(f, env, pol.system_id, "link", &j), 202);
    assert_string_equal(op_state(j), "Failed");
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(j, "error"),
                                                             "message")), "unwrapKey"));
    json_decref(j);
    pp_environment e;
    assert_int_equal(pp_env_get(f->envs, env, &e), PP_ENV_OK);
    assert_int_equal(e.key_managed_by, PP_KEY_MICROSOFT);
    assert_true(e.enabled);

    /* success */
    set_access(f, pol.identity_oid, KV_PERM_GET | KV_PERM_WRAP | KV_PERM_UNWRAP);
    assert_int_equal(link(f, env, pol.system_id, "link", &j), 202);
    assert_string_equal(op_state(j), "Succeeded");
    json_decref(j);
    char uri[200];
    snprintf(uri, sizeof uri, BAP "/environments/%s?api-version=2023-06-01", env);
    assert_int_equal(call(f, "GET", NULL, uri, NULL, &j), 200);
    json_t *props = json_object_get(j, "properties");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(props, "protectionStatus"),
                                          "keyManagedBy")),
        "Customer");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(props, "enterprisePolicies"),
                                            "customerManagedKeys"),
                            "linkStatus")),
                        "Linked");
    json_decref(j);
    assert_int_equal(read_record(f, env, rid, NULL), 200);
    assert_int_equal(health(f, pol.system_id), PP_HEALTH_HEALTHY);
    assert_true(pp_env_is_linked(f->envs, pol.system_id));

    /* a linked policy cannot be deleted */
    pp_err pe = {{0}, {0}};
    assert_int_equal(pp_policy_delete(f->pol, SUB, "rg", "cmkpolicy", false, &pe), PP_ERR_LINKED);

    /* revoke -> locked */
    set_access(f, pol.identity_oid, 0);
    assert_int_equal(read_record(f, env, rid, &j), 423);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "error"), "code")),
        "EnvironmentLocked");
    json_decref(j);
    assert_int_equal(health(f, pol.system_id), PP_HEALTH_UNHEALTHY);
    assert_int_equal(pp_env_get(f->envs, env, &e), PP_ENV_OK);
    assert_false(e.enabled);
    assert_string_equal(e.reason, PP_REASON_CMK_LOCKED);

    /* enable refused while the key is unusable */
    snprintf(uri, sizeof uri, BAP "/environments/%s/enable?api-version=2023-06-01", env);
    assert_int_equal(call(f, "POST", NULL, uri, NULL, NULL), 423);

    /* restore -> Healthy, still locked until enable */
    set_access(f, pol.identity_oid, KV_PERM_GET | KV_PERM_WRAP | KV_PERM_UNWRAP);
    assert_int_equal(health(f, pol.system_id), PP_HEALTH_HEALTHY);
    assert_int_equal(read_record(f, env, rid, NULL), 423);
    assert_int_equal(call(f, "POST", NULL, uri, NULL, NULL), 200);
    assert_int_equal(read_record(f, env, rid, NULL), 200);

    /* disable the key -> locked; re-enable the key, then the environment */
    kv_update_params up = {.has_enabled = true, .enabled = false};
    assert_int_equal(kv_key_update(f->fx->kv, VAULT, "cmk", "", &up, &kv, &ke), KV_OK);
    kv_key_view_cleanup(&kv);
    assert_int_equal(read_record(f, env, rid, NULL), 423);
    assert_int_equal(health(f, pol.system_id), PP_HEALTH_UNHEALTHY);
    up.enabled = true;
    assert_int_equal(kv_key_update(f->fx->kv, VAULT, "cmk", "", &up, &kv, &ke), KV_OK);
    kv_key_view_cleanup(&kv);
    assert_int_equal(read_record(f, env, rid, NULL), 423);
    assert_int_equal(call(f, "POST", NULL, uri, NULL, NULL), 200);
    assert_int_equal(read_record(f, env, rid, NULL), 200);

    /* unlink -> Microsoft; the vault no longer matters */
    assert_int_equal(link(f, env, pol.system_id, "unlink", &j), 202);
    assert_string_equal(op_state(j), "Succeeded");
    json_decref(j);
    assert_int_equal(pp_env_get(f->envs, env, &e), PP_ENV_OK);
    assert_int_equal(e.key_managed_by, PP_KEY_MICROSOFT);
    set_access(f, pol.identity_oid, 0);
    assert_int_equal(read_record(f, env, rid, NULL), 200);
    assert_false(pp_env_is_linked(f->envs, pol.system_id));
}

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    *state = f;
    f->fx = cmk_fixture_new("test_lock", TENANT, CMK_FX_AUTH | CMK_FX_KV | CMK_FX_ROUTER);
    if (!f->fx)
        return -1;
    char err[512] = "";
    if (!(f->pol = pp_policies_open(f->fx->store, f->fx->auth, err, sizeof err)) ||
        !(f->envs = pp_envs_open(f->fx->store, f->fx->hsm, err, sizeof err))) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    pp_envs_set_cmk(f->envs, &(pp_cmk_deps){.kv = f->fx->kv, .policies = f->pol,
                                            .auth = f->fx->auth});
    f->ctx = (pp_bap_ctx){.envs = f->envs, .auth = f->fx->auth};
    pp_bap_register(f->fx->router, &f->ctx);
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;
    if (!f)
        return 0;
    emu_clock_hooks_clear();
    pp_envs_close(f->envs);
    pp_policies_close(f->pol);
    cmk_fixture_free(f->fx);
    free(f);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lock_flow),
    };
    return cmocka_run_group_tests_name("lock", tests, group_setup, group_teardown);
}
