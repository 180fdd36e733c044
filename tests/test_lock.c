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
#include <time.h>

#include <jansson.h>

#include "audit.h"
#include "auth/roles.h"
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
    assert_true(cmk_fx_vault(f->fx, name, purge_protection));
}

/* Sets the access policy of oid on vault to perms (0 = remove); rbac switches the vault's
 * permission model (-1 = unchanged). */
static void set_access_in(fixture *f, const char *vault, const char *oid, uint32_t perms,
                          int rbac)
{
    assert_true(cmk_fx_access(f->fx, vault, oid, perms, rbac));
}

static void set_access(fixture *f, const char *oid, uint32_t perms)
{
    set_access_in(f, VAULT, oid, perms, -1);
}

static void make_policy_v(fixture *f, const char *name, const char *location, const char *vault,
                          const char *version, pp_policy *out)
{
    assert_true(cmk_fx_cmk_policy(f->fx, name, location, vault, version, out));
}

static void make_policy(fixture *f, const char *name, const char *location, const char *vault,
                        pp_policy *out)
{
    make_policy_v(f, name, location, vault, NULL, out);
}

static void make_env(fixture *f, const char *sku, bool managed, char id[40])
{
    pp_env_spec spec = {.display_name = "Contoso", .location = "unitedstates", .sku = sku,
                        .managed = managed};
    pp_environment env;
    pp_env_err e = {{0}};
    assert_int_equal(pp_env_create(f->fx->envs, &spec, &env, NULL, &e), PP_ENV_OK);
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
    assert_int_equal(pp_policy_get_by_system_id(f->fx->pol, sid, &p), PP_OK);
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
    assert_int_equal(pp_env_get(f->fx->envs, env, &e), PP_ENV_OK);
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
    assert_true(pp_env_is_linked(f->fx->envs, pol.system_id));

    /* a linked policy cannot be deleted */
    pp_err pe = {{0}, {0}};
    assert_int_equal(pp_policy_delete(f->fx->pol, SUB, "rg", "cmkpolicy", false, &pe), PP_ERR_LINKED);

    /* revoke -> locked */
    set_access(f, pol.identity_oid, 0);
    assert_int_equal(read_record(f, env, rid, &j), 423);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "error"), "code")),
        "EnvironmentLocked");
    json_decref(j);
    assert_int_equal(health(f, pol.system_id), PP_HEALTH_UNHEALTHY);
    assert_int_equal(pp_env_get(f->fx->envs, env, &e), PP_ENV_OK);
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
    assert_int_equal(pp_env_get(f->fx->envs, env, &e), PP_ENV_OK);
    assert_int_equal(e.key_managed_by, PP_KEY_MICROSOFT);
    set_access(f, pol.identity_oid, 0);
    assert_int_equal(read_record(f, env, rid, NULL), 200);
    assert_false(pp_env_is_linked(f->fx->envs, pol.system_id));
}

/* ---- shared helpers for the tests below ---------------------------------------------------- */

static void env_get(fixture *f, const char *id, pp_environment *e)
{
    assert_int_equal(pp_env_get(f->fx->envs, id, e), PP_ENV_OK);
}

/* POST enable; who != NULL: with a token the emulator issued for who (else the permissive
 * test token). */
static int enable_as(fixture *f, const char *env, const auth_principal *who, json_t **out)
{
    char uri[200];
    snprintf(uri, sizeof uri, BAP "/scopes/admin/environments/%s/enable?api-version=2023-06-01",
             env);
    char *tok = NULL, bearer[4096] = "";
    int64_t exp = 0;
    if (who) {
        assert_true(auth_token_issue(f->fx->auth, who, "https://service.powerapps.com", 3600, 0,
                                     &tok, &exp));
        snprintf(bearer, sizeof bearer, "Bearer %s", tok);
        free(tok);
    }
    const char *hdrs[] = {"Authorization", bearer, NULL};
    emu_req *req = cmk_fixture_dispatch(
        f->fx, "POST", uri, &(cmk_call_opts){.no_token = who != NULL, .headers = who ? hdrs : NULL});
    int st = req->status;
    if (out)
        *out = cmk_resp_json(req);
    emu_req_free(req);
    return st;
}

static const char *err_msg(json_t *j)
{
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    return m ? m : "";
}

/* The audit events after *since whose operation or target contains match, dumped as one
 * string (caller frees); *since moves to the last id. */
static char *audit_since(fixture *f, int64_t *since, const char *match)
{
    json_t *q = emu_audit_query(f->fx->audit, *since, 1000, match, NULL);
    *since = json_integer_value(json_object_get(q, "lastId"));
    char *s = json_dumps(json_object_get(q, "value"), 0);
    json_decref(q);
    return s;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!hay || !strstr(hay, needle)) {
        fprintf(stderr, "expected to find '%s' in: %s\n", needle, hay ? hay : "(null)");
        fail();
    }
}

static void new_key(fixture *f, const char *vault, const char *name, kv_key_view *out)
{
    kv_create_params kp = {.bits = 2048};
    kv_key_view v;
    kv_err ke = {{0}};
    assert_int_equal(kv_key_create(f->fx->kv, vault, name, &kp, &v, &ke), KV_OK);
    if (out)
        *out = v;
    else
        kv_key_view_cleanup(&v);
}

static void key_update(fixture *f, const char *vault, const char *version,
                       const kv_update_params *up)
{
    kv_key_view v;
    kv_err ke = {{0}};
    assert_int_equal(kv_key_update(f->fx->kv, vault, "cmk", version, up, &v, &ke), KV_OK);
    kv_key_view_cleanup(&v);
}

#define ALL_PERMS (KV_PERM_GET | KV_PERM_WRAP | KV_PERM_UNWRAP)

/* A vault with a key "cmk", a policy on it whose identity has get/wrapKey/unwrapKey, and a
 * linked environment with one record. */
static void linked_setup(fixture *f, const char *vault, const char *policy, const char *sku,
                         pp_policy *pol, char env[40], char rid[40])
{
    make_vault(f, vault, true);
    new_key(f, vault, "cmk", NULL);
    make_policy(f, policy, "unitedstates", vault, pol);
    set_access_in(f, vault, pol->identity_oid, ALL_PERMS, -1);
    make_env(f, sku, true, env);
    write_record(f, env, rid);
    json_t *j = NULL;
    assert_int_equal(link(f, env, pol->system_id, "link", &j), 202);
    assert_string_equal(op_state(j), "Succeeded");
    json_decref(j);
    assert_int_equal(read_record(f, env, rid, NULL), 200);
}

/* ---- every lock trigger, table-driven --------------------------------------------------------- */

typedef struct {
    fixture *f;
    const char *vault;
    pp_policy pol;
    char env[40], rid[40];
    char vault_scope[300];
    char role_name[40];
    int64_t offset;
} trig_ctx;

static void t_revoke_get(trig_ctx *c)
{
    set_access_in(c->f, c->vault, c->pol.identity_oid, KV_PERM_WRAP | KV_PERM_UNWRAP, -1);
}
static void t_revoke_wrap(trig_ctx *c)
{
    set_access_in(c->f, c->vault, c->pol.identity_oid, KV_PERM_GET | KV_PERM_UNWRAP, -1);
}
static void t_revoke_unwrap(trig_ctx *c)
{
    set_access_in(c->f, c->vault, c->pol.identity_oid, KV_PERM_GET | KV_PERM_WRAP, -1);
}
static void t_revoke_all(trig_ctx *c)
{
    set_access_in(c->f, c->vault, c->pol.identity_oid, 0, -1);
}
static void t_grant(trig_ctx *c)
{
    set_access_in(c->f, c->vault, c->pol.identity_oid, ALL_PERMS, -1);
}
static void t_disable(trig_ctx *c)
{
    key_update(c->f, c->vault, "", &(kv_update_params){.has_enabled = true, .enabled = false});
}
static void t_enable(trig_ctx *c)
{
    key_update(c->f, c->vault, "", &(kv_update_params){.has_enabled = true, .enabled = true});
}
static void t_expire(trig_ctx *c)
{
    key_update(c->f, c->vault, "",
               &(kv_update_params){.has_exp = true, .exp = emu_clock_now() - 60});
}
static void t_clear_exp(trig_ctx *c)
{
    key_update(c->f, c->vault, "", &(kv_update_params){.has_exp = true, .exp = 0});
}
static void t_nbf_future(trig_ctx *c)
{
    key_update(c->f, c->vault, "",
               &(kv_update_params){.has_nbf = true, .nbf = emu_clock_now() + 86400});
}
static void t_clear_nbf(trig_ctx *c)
{
    key_update(c->f, c->vault, "", &(kv_update_params){.has_nbf = true, .nbf = 0});
}
/* exp an hour ahead: nothing happens; then the emulated clock moves two hours */
static void t_clock_past_exp(trig_ctx *c)
{
    key_update(c->f, c->vault, "",
               &(kv_update_params){.has_exp = true, .exp = emu_clock_now() + 3600});
    assert_int_equal(read_record(c->f, c->env, c->rid, NULL), 200);
    c->offset = emu_clock_offset();
    emu_clock_set_offset(c->offset + 7200);
    emu_clock_apply_due();
}
static void t_clock_back(trig_ctx *c)
{
    t_clear_exp(c);
    emu_clock_set_offset(c->offset);
    emu_clock_apply_due();
}
static void t_delete_key(trig_ctx *c)
{
    kv_key_view v;
    kv_err ke = {{0}};
    assert_int_equal(kv_key_delete(c->f->fx->kv, c->vault, "cmk", &v, &ke), KV_OK);
    kv_key_view_cleanup(&v);
}
static void t_recover_key(trig_ctx *c)
{
    kv_key_view v;
    kv_err ke = {{0}};
    assert_int_equal(kv_deleted_recover(c->f->fx->kv, c->vault, "cmk", &v, &ke), KV_OK);
    kv_key_view_cleanup(&v);
}
static void t_delete_vault(trig_ctx *c)
{
    kv_err ke = {{0}};
    assert_int_equal(kv_vault_delete(c->f->fx->kv, c->vault, &ke), KV_OK);
}
static void t_recover_vault(trig_ctx *c)
{
    kv_err ke = {{0}};
    assert_int_equal(kv_vault_recover(c->f->fx->kv, c->vault, &ke), KV_OK);
}
/* the vault moves to RBAC with no role for the identity */
static void t_to_rbac(trig_ctx *c)
{
    set_access_in(c->f, c->vault, c->pol.identity_oid, 0, 1);
}
static void t_assign_role(trig_ctx *c)
{
    auth_role_assignment in;
    memset(&in, 0, sizeof in);
    emu_guid(c->role_name);
    snprintf(in.name, sizeof in.name, "%s", c->role_name);
    snprintf(in.scope, sizeof in.scope, "%s", c->vault_scope);
    snprintf(in.role_guid, sizeof in.role_guid, "e147488a-f6f5-4113-8e2d-b22465e65bf6");
    snprintf(in.principal_id, sizeof in.principal_id, "%s", c->pol.identity_oid);
    bool created = false;
    char msg[512] = "";
    roles_status st = auth_roles_put(c->f->fx->roles, &in, &created, NULL, msg, sizeof msg);
    if (st != ROLES_OK)
        fprintf(stderr, "role: %s\n", msg);
    assert_int_equal(st, ROLES_OK);
}
static void t_remove_role(trig_ctx *c)
{
    assert_int_equal(auth_roles_delete(c->f->fx->roles, c->vault_scope, c->role_name, NULL),
                     ROLES_OK);
}

typedef struct {
    const char *name;
    void (*brk)(trig_ctx *);
    void (*fix)(trig_ctx *);
    const char *cause; /* in the lock message and the audit */
} trigger;

static const trigger TRIGGERS[] = {
    {"access policy: get revoked", t_revoke_get, t_grant, "lacks the get key permission"},
    {"access policy: wrapKey revoked", t_revoke_wrap, t_grant, "lacks the wrapKey key permission"},
    {"access policy: unwrapKey revoked", t_revoke_unwrap, t_grant,
     "lacks the unwrapKey key permission"},
    {"access policy removed", t_revoke_all, t_grant, "lacks the get key permission"},
    {"key disabled", t_disable, t_enable, "is disabled"},
    {"key expired", t_expire, t_clear_exp, "expired at"},
    {"key not yet valid", t_nbf_future, t_clear_nbf, "is not valid before"},
    {"clock moved past exp", t_clock_past_exp, t_clock_back, "expired at"},
    {"key deleted", t_delete_key, t_recover_key, "is deleted (recoverable until"},
    {"vault deleted", t_delete_vault, t_recover_vault, "is deleted"},
    {"vault switched to RBAC without a role", t_to_rbac, t_assign_role, "RBAC role assignment"},
    {"role assignment removed", t_remove_role, t_assign_role, "RBAC role assignment"},
};

static void test_lock_triggers(void **state)
{
    fixture *f = *state;
    trig_ctx c = {.f = f, .vault = "trigvault"};
    linked_setup(f, c.vault, "trigpolicy", "Production", &c.pol, c.env, c.rid);
    kv_vault_info vi;
    assert_int_equal(kv_vault_get(f->fx->kv, c.vault, &vi), KV_OK);
    snprintf(c.vault_scope, sizeof c.vault_scope,
             "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.KeyVault/vaults/%s",
             vi.subscription, vi.resource_group, vi.name);
    int64_t since = 0;
    free(audit_since(f, &since, NULL));
    for (size_t i = 0; i < sizeof TRIGGERS / sizeof TRIGGERS[0]; i++) {
        const trigger *t = &TRIGGERS[i];
        fprintf(stderr, "trigger: %s\n", t->name);
        t->brk(&c);
        json_t *j = NULL;
        assert_int_equal(read_record(f, c.env, c.rid, &j), 423);
        assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"),
                                                              "code")),
                            "EnvironmentLocked");
        assert_contains(err_msg(j), t->cause);
        json_decref(j);
        pp_environment e;
        env_get(f, c.env, &e);
        assert_false(e.enabled);
        assert_string_equal(e.reason, PP_REASON_CMK_LOCKED);
        assert_true(e.locked_since > 0);
        assert_int_equal(health(f, c.pol.system_id), PP_HEALTH_UNHEALTHY);
        char *ev = audit_since(f, &since, "environments/Lock");
        assert_contains(ev, t->cause);
        free(ev);
        /* re-enable refused while the key is out of reach */
        assert_int_equal(enable_as(f, c.env, NULL, &j), 423);
        json_decref(j);
        /* restore: Healthy, but still disabled until an admin re-enables */
        t->fix(&c);
        assert_int_equal(health(f, c.pol.system_id), PP_HEALTH_HEALTHY);
        assert_int_equal(read_record(f, c.env, c.rid, NULL), 423);
        ev = audit_since(f, &since, "environments/Unlock");
        assert_contains(ev, "AccessRestored");
        free(ev);
        assert_int_equal(enable_as(f, c.env, NULL, NULL), 200);
        assert_int_equal(read_record(f, c.env, c.rid, NULL), 200);
        env_get(f, c.env, &e);
        assert_int_equal(e.locked_since, 0);
        ev = audit_since(f, &since, "environments/Reenable");
        assert_contains(ev, "Succeeded");
        free(ev);
    }
    set_access_in(f, c.vault, c.pol.identity_oid, ALL_PERMS, 0); /* back to access policies */
    assert_int_equal(read_record(f, c.env, c.rid, NULL), 200);
}

/* The policy deleted out of band (its resource group deleted): locked for good. */
static void test_lock_policy_deleted(void **state)
{
    fixture *f = *state;
    pp_policy pol;
    char env[40], rid[40];
    linked_setup(f, "delvault", "delpolicy", "Sandbox", &pol, env, rid);
    pp_err pe = {{0}, {0}};
    assert_int_equal(pp_policy_delete(f->fx->pol, SUB, "rg", "delpolicy", false, &pe), PP_ERR_LINKED);
    assert_int_equal(pp_policy_delete(f->fx->pol, SUB, "rg", "delpolicy", true, &pe), PP_OK);
    json_t *j = NULL;
    assert_int_equal(read_record(f, env, rid, &j), 423);
    assert_contains(err_msg(j), "no longer exists");
    json_decref(j);
    assert_int_equal(enable_as(f, env, NULL, NULL), 423);
}

/* Rotation: a policy without a version follows the key (re-wrap, no downtime); a pinned one
 * stays, and disabling its version locks. */
static void test_rotation(void **state)
{
    fixture *f = *state;
    pp_policy follow, pinned;
    char env1[40], rid1[40], env2[40], rid2[40];
    linked_setup(f, "rotvault", "rotpolicy", "Production", &follow, env1, rid1);
    pp_environment e;
    env_get(f, env1, &e);
    char v1[40];
    snprintf(v1, sizeof v1, "%s", e.cmk_version);
    assert_int_equal(strlen(v1), 32);
    int64_t since = 0;
    free(audit_since(f, &since, NULL));

    /* another key in the same vault is none of the environment's business: no key check */
    unsigned long probes = pp_envs_probe_count(f->fx->envs);
    new_key(f, "rotvault", "unrelated", NULL);
    assert_int_equal(pp_envs_probe_count(f->fx->envs), probes);

    kv_key_view nv;
    kv_err ke = {{0}};
    assert_int_equal(kv_key_rotate(f->fx->kv, "rotvault", "cmk", &nv, &ke), KV_OK);
    assert_true(pp_envs_probe_count(f->fx->envs) > probes);
    char v2[40];
    snprintf(v2, sizeof v2, "%s", nv.version);
    kv_key_view_cleanup(&nv);
    env_get(f, env1, &e);
    assert_string_equal(e.cmk_version, v2);
    assert_true(e.enabled);
    assert_int_equal(read_record(f, env1, rid1, NULL), 200);
    char *ev = audit_since(f, &since, "environments/Rotate");
    assert_contains(ev, v2);
    free(ev);
    /* the old version no longer wraps anything: disabling it is harmless */
    key_update(f, "rotvault", v1, &(kv_update_params){.has_enabled = true, .enabled = false});
    assert_int_equal(read_record(f, env1, rid1, NULL), 200);

    /* pinned to v2 */
    make_policy_v(f, "pinpolicy", "unitedstates", "rotvault", v2, &pinned);
    set_access_in(f, "rotvault", pinned.identity_oid, ALL_PERMS, -1);
    make_env(f, "Sandbox", true, env2);
    write_record(f, env2, rid2);
    json_t *j = NULL;
    assert_int_equal(link(f, env2, pinned.system_id, "link", &j), 202);
    assert_string_equal(op_state(j), "Succeeded");
    json_decref(j);
    assert_int_equal(kv_key_rotate(f->fx->kv, "rotvault", "cmk", &nv, &ke), KV_OK);
    char v3[40];
    snprintf(v3, sizeof v3, "%s", nv.version);
    kv_key_view_cleanup(&nv);
    env_get(f, env2, &e);
    assert_string_equal(e.cmk_version, v2);
    env_get(f, env1, &e);
    assert_string_equal(e.cmk_version, v3);
    /* disabling v2 (still wrapping env2's data key) locks env2 only */
    key_update(f, "rotvault", v2, &(kv_update_params){.has_enabled = true, .enabled = false});
    assert_int_equal(read_record(f, env2, rid2, &j), 423);
    assert_contains(err_msg(j), "is disabled");
    json_decref(j);
    assert_int_equal(read_record(f, env1, rid1, NULL), 200);
    key_update(f, "rotvault", v2, &(kv_update_params){.has_enabled = true, .enabled = true});
    assert_int_equal(enable_as(f, env2, NULL, NULL), 200);
    assert_int_equal(read_record(f, env2, rid2, NULL), 200);
}

/* Swap to another policy (another vault) while linked, then revert to Microsoft. */
static void test_swap_and_revert(void **state)
{
    fixture *f = *state;
    pp_policy pa, pb;
    char env[40], rid[40];
    linked_setup(f, "swapa", "swappolicya", "Production", &pa, env, rid);
    make_vault(f, "swapb", true);
    new_key(f, "swapb", "cmk", NULL);
    make_policy(f, "swappolicyb", "unitedstates", "swapb", &pb);
    set_access_in(f, "swapb", pb.identity_oid, ALL_PERMS, -1);
    json_t *j = NULL;
    assert_int_equal(link(f, env, pb.system_id, "link", &j), 202);
    assert_string_equal(op_state(j), "Succeeded");
    json_decref(j);
    pp_environment e;
    env_get(f, env, &e);
    assert_string_equal(e.cmk_system_id, pb.system_id);
    assert_false(pp_env_is_linked(f->fx->envs, pa.system_id));
    /* the old key no longer matters, the new one does */
    set_access_in(f, "swapa", pa.identity_oid, 0, -1);
    assert_int_equal(read_record(f, env, rid, NULL), 200);
    set_access_in(f, "swapb", pb.identity_oid, 0, -1);
    assert_int_equal(read_record(f, env, rid, NULL), 423);
    /* restoring the OLD key's access does not unlock */
    set_access_in(f, "swapa", pa.identity_oid, ALL_PERMS, -1);
    assert_int_equal(enable_as(f, env, NULL, NULL), 423);
    set_access_in(f, "swapb", pb.identity_oid, ALL_PERMS, -1);
    assert_int_equal(enable_as(f, env, NULL, NULL), 200);
    /* revert */
    assert_int_equal(link(f, env, pb.system_id, "unlink", &j), 202);
    assert_string_equal(op_state(j), "Succeeded");
    json_decref(j);
    env_get(f, env, &e);
    assert_int_equal(e.key_managed_by, PP_KEY_MICROSOFT);
    set_access_in(f, "swapb", pb.identity_oid, 0, -1);
    assert_int_equal(read_record(f, env, rid, NULL), 200);
}

/* Key deleted, then purged by the clock after the vault's retention: the data is gone for
 * good; a new key of the same name does not unlock; lock expiry deletes the environments
 * (sandbox after 7 days, production after 30). */
static void test_purge_and_lock_expiry(void **state)
{
    fixture *f = *state;
    pp_policy pol;
    char prod[40], rid[40], sandbox[40], rid2[40];
    linked_setup(f, "purgevault", "purgepolicy", "Production", &pol, prod, rid);
    make_env(f, "Sandbox", true, sandbox);
    write_record(f, sandbox, rid2);
    json_t *j = NULL;
    assert_int_equal(link(f, sandbox, pol.system_id, "link", &j), 202);
    assert_string_equal(op_state(j), "Succeeded");
    json_decref(j);
    int64_t since = 0;
    free(audit_since(f, &since, NULL));
    int64_t offset = emu_clock_offset();

    kv_key_view v;
    kv_err ke = {{0}};
    assert_int_equal(kv_key_delete(f->fx->kv, "purgevault", "cmk", &v, &ke), KV_OK);
    kv_key_view_cleanup(&v);
    assert_int_equal(read_record(f, prod, rid, NULL), 423);
    assert_int_equal(read_record(f, sandbox, rid2, NULL), 423);
    pp_environment e;
    env_get(f, prod, &e);
    assert_int_equal(e.locked_since, emu_clock_now());

    /* the vault keeps deleted keys 7 days: day 7 + 1 h, the key is purged */
    emu_clock_set_offset(offset + 7 * 86400 + 3600);
    emu_clock_apply_due();
    assert_int_equal(kv_deleted_get(f->fx->kv, "purgevault", "cmk", &v, &ke),
                     KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(read_record(f, prod, rid, &j), 423);
    assert_contains(err_msg(j), "permanently unrecoverable");
    json_decref(j);
    /* the sandbox environment was locked for more than 7 days: deleted with its records */
    assert_int_equal(pp_env_get(f->fx->envs, sandbox, &e), PP_ENV_ERR_NOT_FOUND);
    assert_int_equal(read_record(f, sandbox, rid2, NULL), 404);
    char *ev = audit_since(f, &since, "environments/Delete");
    assert_contains(ev, "more than 7 days");
    assert_contains(ev, sandbox);
    free(ev);

    /* a new key with the same name is a different key: no unlock */
    new_key(f, "purgevault", "cmk", NULL);
    assert_int_equal(enable_as(f, prod, NULL, &j), 423);
    assert_contains(err_msg(j), "unrecoverable");
    json_decref(j);
    assert_int_equal(read_record(f, prod, rid, &j), 423);
    assert_contains(err_msg(j), "permanently unrecoverable");
    assert_contains(err_msg(j), "different key");
    json_decref(j);

    /* day 30 + 1 h: production goes too */
    emu_clock_set_offset(offset + 30 * 86400 + 3600);
    emu_clock_apply_due();
    assert_int_equal(pp_env_get(f->fx->envs, prod, &e), PP_ENV_ERR_NOT_FOUND);
    ev = audit_since(f, &since, "environments/Delete");
    assert_contains(ev, "more than 30 days");
    free(ev);
    emu_clock_set_offset(offset);
    emu_clock_apply_due();
}

/* Re-enable needs Reader on the policy (callers vouched for by a token). */
static void test_reenable_needs_reader(void **state)
{
    fixture *f = *state;
    pp_policy pol;
    char env[40], rid[40];
    linked_setup(f, "readervault", "readerpolicy", "Production", &pol, env, rid);
    auth_principal admin;
    char err[256] = "";
    assert_true(auth_principal_add(f->fx->auth,
                                   &(auth_principal_spec){.kind = AUTH_KIND_USER,
                                                          .name = "pp admin",
                                                          .username = "ppadmin@test.local"},
                                   &admin, err, sizeof err));
    set_access_in(f, "readervault", pol.identity_oid, 0, -1);
    assert_int_equal(read_record(f, env, rid, NULL), 423);
    set_access_in(f, "readervault", pol.identity_oid, ALL_PERMS, -1);
    json_t *j = NULL;
    assert_int_equal(enable_as(f, env, &admin, &j), 403);
    assert_contains(err_msg(j), "Reader");
    json_decref(j);
    char *arm = pp_policy_arm_id(&pol);
    auth_role_assignment in;
    memset(&in, 0, sizeof in);
    emu_guid(in.name);
    snprintf(in.scope, sizeof in.scope, "%s", arm);
    snprintf(in.role_guid, sizeof in.role_guid, "acdd72a7-3385-48ef-bd42-f606fba81ae7");
    snprintf(in.principal_id, sizeof in.principal_id, "%s", admin.oid);
    free(arm);
    bool created = false;
    assert_int_equal(auth_roles_put(f->fx->roles, &in, &created, NULL, err, sizeof err), ROLES_OK);
    assert_int_equal(enable_as(f, env, &admin, NULL), 200);
    assert_int_equal(read_record(f, env, rid, NULL), 200);
}

/* With the runner on, link is asynchronous: NotStarted -> Running -> Succeeded, the
 * environment disabled (records refused) meanwhile; a second operation is refused; an
 * operation cut short by a stop fails at the next start and the environment comes back. */
static void test_async_operations(void **state)
{
    fixture *f = *state;
    /* 3 s: long enough that the checks made while the link runs still see it running when
     * the machine is loaded (a CI host running other tests) */
    assert_true(pp_envs_start_runner(f->fx->envs, 3000));
    make_vault(f, "asyncvault", true);
    new_key(f, "asyncvault", "cmk", NULL);
    pp_policy pol;
    make_policy(f, "asyncpolicy", "unitedstates", "asyncvault", &pol);
    set_access_in(f, "asyncvault", pol.identity_oid, ALL_PERMS, -1);
    char env[40], rid[40];
    make_env(f, "Production", true, env);
    write_record(f, env, rid);
    json_t *j = NULL;
    assert_int_equal(link(f, env, pol.system_id, "link", &j), 202);
    assert_string_equal(op_state(j), "NotStarted");
    char opid[40];
    snprintf(opid, sizeof opid, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    json_t *rj = NULL;
    assert_int_equal(read_record(f, env, rid, &rj), 423);
    assert_string_equal(json_string_value(json_object_get(json_object_get(rj, "error"), "code")),
                        "EnvironmentDisabled");
    json_decref(rj);
    char uri[200];
    snprintf(uri, sizeof uri, BAP "/environments/%s?api-version=2023-06-01", env);
    assert_int_equal(call(f, "GET", NULL, uri, NULL, &j), 200);
    json_t *props = json_object_get(j, "properties");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(props, "states"), "runtime"),
                            "runtimeReasonCode")),
                        PP_REASON_CMK_OPERATION);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(props, "enterprisePolicies"),
                                            "customerManagedKeys"),
                            "linkStatus")),
                        "Linking");
    json_decref(j);
    assert_int_equal(link(f, env, pol.system_id, "link", &j), 409);
    json_decref(j);
    /* poll */
    char opuri[200];
    snprintf(opuri, sizeof opuri, BAP "/lifecycleOperations/%s?api-version=2023-06-01", opid);
    bool saw_running = false, done = false;
    for (int i = 0; i < 2400 && !done; i++) { /* up to a minute */
        assert_int_equal(call(f, "GET", NULL, opuri, NULL, &j), 200);
        const char *st = op_state(j);
        saw_running |= !strcmp(st, "Running");
        done = !strcmp(st, "Succeeded") || !strcmp(st, "Failed");
        if (done)
            assert_string_equal(st, "Succeeded");
        json_decref(j);
        if (!done) {
            struct timespec ts = {0, 25 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    assert_true(done);
    assert_true(saw_running);
    assert_int_equal(read_record(f, env, rid, NULL), 200);

    /* an unlink cut short by a stop: Failed at the next start, environment back on its key */
    assert_int_equal(link(f, env, pol.system_id, "unlink", &j), 202);
    snprintf(opid, sizeof opid, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    emu_clock_hooks_clear();
    pp_envs_close(f->fx->envs);
    char err[512] = "";
    f->fx->envs = pp_envs_open(f->fx->store, f->fx->hsm, err, sizeof err);
    assert_non_null(f->fx->envs);
    f->fx->bap.envs = f->fx->envs;
    pp_envs_set_audit(f->fx->envs, f->fx->audit);
    pp_envs_set_cmk(f->fx->envs, &(pp_cmk_deps){.kv = f->fx->kv, .policies = f->fx->pol,
                                            .roles = f->fx->roles, .auth = f->fx->auth});
    pp_env_operation op;
    assert_int_equal(pp_env_operation_get(f->fx->envs, opid, &op), PP_ENV_OK);
    assert_string_equal(op.state, "Failed");
    pp_environment e;
    env_get(f, env, &e);
    assert_true(e.enabled);
    assert_int_equal(e.key_managed_by, PP_KEY_CUSTOMER);
    assert_int_equal(read_record(f, env, rid, NULL), 200);
}

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    *state = f;
    f->fx = cmk_fixture_new("test_lock", TENANT,
                            CMK_FX_AUTH | CMK_FX_KV | CMK_FX_ROLES | CMK_FX_PP | CMK_FX_BAP);
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
        cmocka_unit_test(test_lock_flow),
        cmocka_unit_test(test_lock_triggers),
        cmocka_unit_test(test_lock_policy_deleted),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_swap_and_revert),
        cmocka_unit_test(test_purge_and_lock_expiry),
        cmocka_unit_test(test_reenable_needs_reader),
        cmocka_unit_test(test_async_operations), /* last: starts the runner */
    };
    return cmocka_run_group_tests_name("lock", tests, group_setup, group_teardown);
}
