/*
 * test_faults: faults of the parts below the emulator, in-process (tests/fixture.h: a fresh
 * SoftHSM token and SQLite file per run).
 *  - PKCS#11: a copy of the module's function table with C_Decrypt, C_GenerateKeyPair,
 *    C_CreateObject, C_DestroyObject and C_OpenSession wrapped (pkcs11/hsm_testing.h). Device
 *    errors, a lost session and a removed token answer 503 ServiceUnavailable/HsmUnavailable
 *    with Retry-After; nothing is left half done (no key row, no token object after a failed
 *    create); the same request succeeds once the fault clears; a session lost once is retried
 *    on a new session inside the call.
 *  - Power Platform: an HSM fault during the lock watch is not a key revocation: no lock, the
 *    policy keeps its health, the check is audited as deferred; a real revocation still locks.
 *  - SQLite: a full disk for real (PRAGMA max_page_count): 500 StoreFailure naming the cause,
 *    no key row and no token object left; the write succeeds once there is room.
 *  - --throttle azure: the Key Vault service limits per vault per 10 s on a test clock (create
 *    budget, HSM keys costing double, weighted other transactions enforced on their sum),
 *    429 Throttled with Retry-After = the seconds left in the window.
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
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "audit.h"
#include "clock.h"
#include "fixture.h"
#include "hsm_testing.h"
#include "keyvault/access.h"
#include "powerplatform/environments.h"
#include "powerplatform/policies.h"

#define TENANT "72f988bf-86f1-41af-91ab-2d7cd011db47"
#define VAULT "faultvault"
#define PPVAULT "cmkvault"
#define HOST VAULT ".vault.localhost:8443"
#define API "?api-version=7.4"

/* ---- the wrapped function table ------------------------------------------------------------ */

enum { F_DECRYPT, F_GENERATE, F_CREATE, F_DESTROY, F_OPEN, F_N };

typedef struct {
    CK_RV rv;  /* what the wrapped call answers while the fault is armed */
    int times; /* failures left; -1 = until cleared */
    int calls; /* calls seen (failed or passed through) */
} fault_slot;

static fault_slot g_f[F_N];
static CK_FUNCTION_LIST *g_real;
static CK_FUNCTION_LIST g_wrapped;

static bool fault_fire(int which)
{
    fault_slot *f = &g_f[which];
    f->calls++;
    if (f->rv == CKR_OK || f->times == 0)
        return false;
    if (f->times > 0)
        f->times--;
    return true;
}

static void fault_arm(int which, CK_RV rv, int times)
{
    g_f[which] = (fault_slot){.rv = rv, .times = times};
}

static void faults_clear(void)
{
    memset(g_f, 0, sizeof g_f);
}

static CK_RV w_decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out,
                       CK_ULONG_PTR outl)
{
    if (fault_fire(F_DECRYPT)) {
        /* the operation started by C_DecryptInit is finished, as a failing token would */
        CK_BYTE tmp[512];
        CK_ULONG tl = sizeof tmp;
        (void)g_real->C_Decrypt(s, in, inl, tmp, &tl);
        return g_f[F_DECRYPT].rv;
    }
    return g_real->C_Decrypt(s, in, inl, out, outl);
}

static CK_RV w_generate(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt, CK_ULONG pn,
                        CK_ATTRIBUTE_PTR vt, CK_ULONG vn, CK_OBJECT_HANDLE_PTR pub,
                        CK_OBJECT_HANDLE_PTR priv)
{
    if (fault_fire(F_GENERATE))
        return g_f[F_GENERATE].rv;
    return g_real->C_GenerateKeyPair(s, m, pt, pn, vt, vn, pub, priv);
}

static CK_RV w_create(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o)
{
    if (fault_fire(F_CREATE))
        return g_f[F_CREATE].rv;
    return g_real->C_CreateObject(s, t, n, o);
}

static CK_RV w_destroy(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
    if (fault_fire(F_DESTROY))
        return g_f[F_DESTROY].rv;
    return g_real->C_DestroyObject(s, o);
}

static CK_RV w_open(CK_SLOT_ID slot, CK_FLAGS fl, CK_VOID_PTR app, CK_NOTIFY n,
                    CK_SESSION_HANDLE_PTR s)
{
    if (fault_fire(F_OPEN))
        return g_f[F_OPEN].rv;
    return g_real->C_OpenSession(slot, fl, app, n, s);
}

/* ---- fixture ----------------------------------------------------------------------------------
 */

typedef struct {
    cmk_fixture *fx;
} fixture;

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    *state = f;
    f->fx =
        cmk_fixture_new("test_faults", TENANT, CMK_FX_AUTH | CMK_FX_KV | CMK_FX_KV_API | CMK_FX_PP);
    if (!f->fx)
        return -1;
    kv_vault_info vi = {0};
    snprintf(vi.name, sizeof vi.name, VAULT);
    vi.soft_delete = false; /* delete purges at once: the destroy path */
    vi.retention_days = 7;
    snprintf(vi.tenant, sizeof vi.tenant, TENANT);
    kv_err e = {{0}};
    if (kv_vault_create(f->fx->kv, &vi, &e) != KV_OK)
        return -1;
    g_real = hsm_testing_get_functions(f->fx->hsm);
    g_wrapped = *g_real;
    g_wrapped.C_Decrypt = w_decrypt;
    g_wrapped.C_GenerateKeyPair = w_generate;
    g_wrapped.C_CreateObject = w_create;
    g_wrapped.C_DestroyObject = w_destroy;
    g_wrapped.C_OpenSession = w_open;
    hsm_testing_set_functions(f->fx->hsm, &g_wrapped);
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;
    if (!f)
        return 0;
    if (f->fx && f->fx->hsm)
        hsm_testing_set_functions(f->fx->hsm, NULL);
    cmk_fixture_free(f->fx);
    free(f);
    return 0;
}

static int test_setup(void **state)
{
    faults_clear();
    return 0;
}

/* ---- helpers ----------------------------------------------------------------------------------
 */

typedef struct {
    int status;
    json_t *body;
    char retry_after[16];
} answer;

static answer call_at(fixture *f, const char *host, const char *method, const char *path,
                      const char *body)
{
    char uri[300];
    snprintf(uri, sizeof uri, "%s" API, path);
    emu_req *req =
        cmk_fixture_dispatch(f->fx, method, uri, &(cmk_call_opts){.host = host, .body = body});
    answer a = {.status = req->status, .body = cmk_resp_json(req)};
    const char *ra = cmk_resp_header(req, "Retry-After");
    snprintf(a.retry_after, sizeof a.retry_after, "%s", ra ? ra : "");
    emu_req_free(req);
    return a;
}

static answer call(fixture *f, const char *method, const char *path, const char *body)
{
    return call_at(f, HOST, method, path, body);
}

static const char *err_code(const answer *a)
{
    return json_string_value(json_object_get(json_object_get(a->body, "error"), "code"));
}

static const char *err_inner(const answer *a)
{
    json_t *e = json_object_get(a->body, "error");
    return json_string_value(json_object_get(json_object_get(e, "innererror"), "code"));
}

static const char *err_message(const answer *a)
{
    return json_string_value(json_object_get(json_object_get(a->body, "error"), "message"));
}

/* A clear transient answer: 503 ServiceUnavailable / HsmUnavailable, Retry-After, a message
 * naming the HSM and saying nothing changed. */
static void assert_hsm_unavailable(answer *a)
{
    assert_int_equal(a->status, 503);
    assert_string_equal(err_code(a), "ServiceUnavailable");
    assert_string_equal(err_inner(a), "HsmUnavailable");
    assert_string_equal(a->retry_after, "1");
    assert_non_null(strstr(err_message(a), "HSM is unavailable"));
    assert_non_null(strstr(err_message(a), "nothing was changed"));
    json_decref(a->body);
}

/* Key pairs kept: in the token, or sealed with their blob in the store. */
static size_t token_keys(fixture *f)
{
    size_t n = cmk_test_stored_keys(f->fx->hsm, f->fx->store);
    assert_true(n != (size_t)-1);
    return n;
}

static void create_key(fixture *f, const char *name)
{
    char path[100];
    snprintf(path, sizeof path, "/keys/%s/create", name);
    answer a = call(f, "POST", path, "{\"kty\":\"RSA\",\"key_size\":2048}");
    assert_int_equal(a.status, 200);
    json_decref(a.body);
}

static int get_status(fixture *f, const char *name)
{
    char path[100];
    snprintf(path, sizeof path, "/keys/%s", name);
    answer a = call(f, "GET", path, NULL);
    json_decref(a.body);
    return a.status;
}

/* Wraps a fixed 32-byte key with name; the ciphertext (base64url) into out. */
static void wrap(fixture *f, const char *name, char *out, size_t outlen)
{
    char path[100];
    snprintf(path, sizeof path, "/keys/%s/wrapkey", name);
    answer a =
        call(f, "POST", path,
             "{\"alg\":\"RSA-OAEP\",\"value\":\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\"}");
    assert_int_equal(a.status, 200);
    snprintf(out, outlen, "%s", json_string_value(json_object_get(a.body, "value")));
    json_decref(a.body);
}

static answer unwrap(fixture *f, const char *name, const char *ct)
{
    char path[100], body[1024];
    snprintf(path, sizeof path, "/keys/%s/unwrapkey", name);
    snprintf(body, sizeof body, "{\"alg\":\"RSA-OAEP\",\"value\":\"%s\"}", ct);
    return call(f, "POST", path, body);
}

static void assert_unwraps(fixture *f, const char *name, const char *ct)
{
    answer a = unwrap(f, name, ct);
    assert_int_equal(a.status, 200);
    assert_string_equal(json_string_value(json_object_get(a.body, "value")),
                        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
    json_decref(a.body);
}

/* ---- PKCS#11 faults through the Key Vault data plane ------------------------------------------
 */

/* unwrapKey under each transient fault: 503 while it lasts, the same request 200 after. */
static void test_unwrap_faults(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *what;
        int slot;
        CK_RV rv;
    } cases[] = {
        {"device error", F_DECRYPT, CKR_DEVICE_ERROR},
        {"device removed", F_DECRYPT, CKR_DEVICE_REMOVED},
        {"token removed", F_DECRYPT, CKR_TOKEN_NOT_PRESENT},
        {"session closed", F_DECRYPT, CKR_SESSION_CLOSED},
        {"session handle invalid", F_DECRYPT, CKR_SESSION_HANDLE_INVALID},
    };
    create_key(f, "unwrapme");
    char ct[800];
    wrap(f, "unwrapme", ct, sizeof ct);
    assert_unwraps(f, "unwrapme", ct);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fprintf(stderr, "case: %s\n", cases[i].what);
        fault_arm(cases[i].slot, cases[i].rv, -1);
        answer a = unwrap(f, "unwrapme", ct);
        assert_hsm_unavailable(&a);
        /* still failing: nothing cached a broken state, nothing recovered by accident */
        a = unwrap(f, "unwrapme", ct);
        assert_hsm_unavailable(&a);
        faults_clear();
        assert_unwraps(f, "unwrapme", ct);
    }
    /* the token gone while sessions were pooled: sessions cannot be reopened either */
    fault_arm(F_DECRYPT, CKR_DEVICE_REMOVED, 1);
    fault_arm(F_OPEN, CKR_TOKEN_NOT_PRESENT, -1);
    answer a = unwrap(f, "unwrapme", ct);
    assert_hsm_unavailable(&a);
    a = unwrap(f, "unwrapme", ct);
    assert_hsm_unavailable(&a);
    assert_true(g_f[F_OPEN].calls >= 1); /* the pool was dropped: a new session was asked for */
    faults_clear();
    assert_unwraps(f, "unwrapme", ct);
}

/* A session lost once is retried on a new session inside the call: the client sees 200. */
static void test_lost_session_retried(void **state)
{
    fixture *f = *state;
    create_key(f, "retryme");
    char ct[800];
    wrap(f, "retryme", ct, sizeof ct);
    fault_arm(F_DECRYPT, CKR_SESSION_HANDLE_INVALID, 1);
    assert_unwraps(f, "retryme", ct);
    assert_int_equal(g_f[F_DECRYPT].calls, 2);

    size_t before = token_keys(f);
    fault_arm(F_GENERATE, CKR_SESSION_CLOSED, 1);
    create_key(f, "retrycreate");
    assert_int_equal(g_f[F_GENERATE].calls, 2);
    assert_int_equal(token_keys(f), before + 1);
}

/* Key generation, import and destruction failing: no key row, no token object, and the same
 * request succeeds after the fault clears. */
static void test_create_import_destroy_faults(void **state)
{
    fixture *f = *state;
    size_t before = token_keys(f);
    char ct[800];
    static const CK_RV gen_faults[] = {CKR_DEVICE_ERROR, CKR_TOKEN_NOT_PRESENT, CKR_DEVICE_MEMORY};
    for (size_t i = 0; i < sizeof gen_faults / sizeof gen_faults[0]; i++) {
        fault_arm(F_GENERATE, gen_faults[i], -1);
        answer a = call(f, "POST", "/keys/genfail/create", "{\"kty\":\"RSA-HSM\"}");
        assert_hsm_unavailable(&a);
        assert_int_equal(get_status(f, "genfail"), 404);
        assert_int_equal(token_keys(f), before);
        faults_clear();
    }
    create_key(f, "genfail");
    assert_int_equal(token_keys(f), before + 1);

    /* import: C_CreateObject fails */
    EVP_PKEY *pk = EVP_RSA_gen(2048);
    assert_non_null(pk);
    static const char *const names[] = {
        OSSL_PKEY_PARAM_RSA_N,         OSSL_PKEY_PARAM_RSA_E,
        OSSL_PKEY_PARAM_RSA_D,         OSSL_PKEY_PARAM_RSA_FACTOR1,
        OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
        OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1};
    uint8_t buf[8][512];
    size_t len[8];
    for (int i = 0; i < 8; i++) {
        BIGNUM *bn = NULL;
        assert_int_equal(EVP_PKEY_get_bn_param(pk, names[i], &bn), 1);
        len[i] = (size_t)BN_bn2bin(bn, buf[i]);
        BN_clear_free(bn);
    }
    EVP_PKEY_free(pk);
    hsm_rsa_components c = {buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7],
                            len[0], len[1], len[2], len[3], len[4], len[5], len[6], len[7]};
    kv_create_params p = {.bits = 2048};
    kv_key_view v;
    kv_err e = {{0}};
    fault_arm(F_CREATE, CKR_DEVICE_ERROR, -1);
    assert_int_equal(kv_key_import(f->fx->kv, VAULT, "importfail", &c, &p, &v, &e),
                     KV_ERR_HSM_UNAVAILABLE);
    assert_non_null(strstr(e.msg, "HSM is unavailable"));
    assert_int_equal(get_status(f, "importfail"), 404);
    assert_int_equal(token_keys(f), before + 1);
    faults_clear();
    assert_int_equal(kv_key_import(f->fx->kv, VAULT, "importfail", &c, &p, &v, &e), KV_OK);
    kv_key_view_cleanup(&v);
    memset(buf, 0, sizeof buf);
    assert_int_equal(token_keys(f), before + 2);

    /* delete (this vault purges at once) while C_DestroyObject fails: the key is gone from the
     * API, and with it its key: a sealed key's blob is deleted with its row, in the same
     * transaction, so a failing token leaves nothing behind (a token key's object stayed until
     * reconciliation); a reopen of the domain finds nothing to remove */
    wrap(f, "genfail", ct, sizeof ct); /* live: its session object is destroyed too */
    assert_unwraps(f, "genfail", ct);
    fault_arm(F_DESTROY, CKR_DEVICE_ERROR, -1);
    answer a = call(f, "DELETE", "/keys/genfail", NULL);
    assert_int_equal(a.status, 200);
    json_decref(a.body);
    assert_int_equal(get_status(f, "genfail"), 404);
    assert_int_equal(token_keys(f), before + 1);
    faults_clear();
    emu_clock_hooks_clear();
    kv_close(f->fx->kv);
    char err[300];
    f->fx->kv = kv_open(f->fx->store, f->fx->hsm, err, sizeof err);
    assert_non_null(f->fx->kv);
    f->fx->api.kv = f->fx->kv;
    pp_envs_set_cmk(f->fx->envs,
                    &(pp_cmk_deps){.kv = f->fx->kv, .policies = f->fx->pol, .auth = f->fx->auth});
    assert_int_equal(token_keys(f), before + 1);
    assert_int_equal(get_status(f, "importfail"), 200);
}

/* ---- the lock watch under HSM faults ----------------------------------------------------------
 */

static bool audit_has(fixture *f, const char *op, const char *outcome)
{
    json_t *q = emu_audit_query(f->fx->audit, 0, 1000, op, NULL);
    bool found = false;
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(q, "value"), i, ev)
    {
        const char *o = json_string_value(json_object_get(ev, "outcome"));
        if (o && !strcmp(o, outcome))
            found = true;
    }
    json_decref(q);
    return found;
}

static bool env_locked(fixture *f, const char *id)
{
    pp_environment env;
    assert_int_equal(pp_env_get(f->fx->envs, id, &env), PP_ENV_OK);
    return !env.enabled && !strcmp(env.reason, PP_REASON_CMK_LOCKED);
}

static pp_health policy_health(fixture *f, const char *sid)
{
    pp_policy p;
    assert_int_equal(pp_policy_get_by_system_id(f->fx->pol, sid, &p), PP_OK);
    return p.health;
}

static void test_hsm_fault_does_not_lock(void **state)
{
    fixture *f = *state;
    /* customer-managed keys need soft delete and purge protection */
    assert_true(cmk_fx_vault(f->fx, PPVAULT, true));
    kv_create_params kp = {.bits = 2048};
    kv_key_view v;
    kv_err ke = {{0}};
    assert_int_equal(kv_key_create(f->fx->kv, PPVAULT, "cmk", &kp, &v, &ke), KV_OK);
    kv_key_view_cleanup(&v);
    pp_policy pol;
    assert_true(cmk_fx_cmk_policy(f->fx, "faultpolicy", "unitedstates", PPVAULT, NULL, &pol));
    /* the policy identity may use the key */
    assert_true(cmk_fx_access(f->fx, PPVAULT, pol.identity_oid,
                              KV_PERM_GET | KV_PERM_WRAP | KV_PERM_UNWRAP, -1));

    pp_env_spec es = {.display_name = "Contoso",
                      .location = "unitedstates",
                      .sku = "Production",
                      .managed = true};
    pp_environment env;
    pp_env_err ee = {{0}};
    assert_int_equal(pp_env_create(f->fx->envs, &es, &env, NULL, &ee), PP_ENV_OK);
    pp_env_operation op;
    pp_env_status ls = pp_env_link(f->fx->envs, env.id, pol.system_id, NULL, &op, &ee);
    if (ls != PP_ENV_OK)
        fprintf(stderr, "link: %s\n", ee.msg);
    assert_int_equal(ls, PP_ENV_OK);
    pp_envs_recheck(f->fx->envs);
    assert_false(env_locked(f, env.id));
    assert_int_equal(policy_health(f, pol.system_id), PP_HEALTH_HEALTHY);

    static const CK_RV transient[] = {CKR_DEVICE_ERROR, CKR_TOKEN_NOT_PRESENT, CKR_SESSION_CLOSED};
    for (size_t i = 0; i < sizeof transient / sizeof transient[0]; i++) {
        unsigned long probes = pp_envs_probe_count(f->fx->envs);
        fault_arm(F_DECRYPT, transient[i], -1);
        pp_envs_recheck(f->fx->envs);
        assert_true(pp_envs_probe_count(f->fx->envs) > probes);
        assert_true(g_f[F_DECRYPT].calls > 0); /* the probe did reach the token */
        assert_false(env_locked(f, env.id));
        assert_int_equal(policy_health(f, pol.system_id), PP_HEALTH_HEALTHY);
        faults_clear();
    }
    assert_true(audit_has(f, "LockWatch", "Deferred"));
    assert_false(audit_has(f, "Lock", "Locked"));
    pp_envs_recheck(f->fx->envs);
    assert_false(env_locked(f, env.id));

    /* a real revocation (the key disabled) still locks in this same setup */
    kv_update_params up = {.has_enabled = true, .enabled = false};
    assert_int_equal(kv_key_update(f->fx->kv, PPVAULT, "cmk", "", &up, &v, &ke), KV_OK);
    kv_key_view_cleanup(&v);
    pp_envs_recheck(f->fx->envs);
    assert_true(env_locked(f, env.id));
    assert_int_equal(policy_health(f, pol.system_id), PP_HEALTH_UNHEALTHY);
}

/* ---- SQLite: a full disk for real -------------------------------------------------------------
 */

static void set_max_pages(fixture *f, bool cap)
{
    sqlite3 *db = emu_store_lock(f->fx->store);
    sqlite3_stmt *st = NULL;
    long pages = 0;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA page_count", -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        pages = (long)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count = %ld", cap ? pages : 1073741823L);
    assert_true(emu_store_exec(db, sql));
    emu_store_unlock(f->fx->store);
}

static void test_store_full(void **state)
{
    fixture *f = *state;
    create_key(f, "fullkeep");
    set_max_pages(f, true);
    /* fill what room the last page has left, until a create fails */
    char name[40], tags[2048];
    int n = snprintf(tags, sizeof tags, "{\"kty\":\"RSA\",\"tags\":{");
    for (int i = 0; i < 12; i++)
        n +=
            snprintf(tags + n, sizeof tags - (size_t)n, "%s\"t%d\":\"%0120d\"", i ? "," : "", i, i);
    snprintf(tags + n, sizeof tags - (size_t)n, "}}");
    answer a = {0};
    size_t keys = 0;
    for (int i = 0; i < 40; i++) {
        keys = token_keys(f);
        snprintf(name, sizeof name, "/keys/full%d/create", i);
        a = call(f, "POST", name, tags);
        if (a.status != 200)
            break;
        json_decref(a.body);
    }
    assert_int_equal(a.status, 500);
    assert_string_equal(err_inner(&a), "StoreFailure");
    assert_non_null(strstr(err_message(&a), "database or disk is full"));
    assert_non_null(strstr(err_message(&a), "nothing was changed"));
    json_decref(a.body);
    /* no partial state: no row, and the token object made for it is gone again */
    char get[40];
    snprintf(get, sizeof get, "%.*s", (int)(strstr(name, "/create") - name) - 6, name + 6);
    assert_int_equal(get_status(f, get), 404);
    assert_int_equal(token_keys(f), keys);
    assert_int_equal(get_status(f, "fullkeep"), 200);
    /* room again: the same request succeeds */
    set_max_pages(f, false);
    a = call(f, "POST", name, tags);
    assert_int_equal(a.status, 200);
    json_decref(a.body);
    assert_int_equal(get_status(f, get), 200);
    assert_int_equal(token_keys(f), keys + 1);
}

/* ---- --throttle azure: the service limits per vault -------------------------------------------
 */

static int64_t g_now_ms;

static int64_t fake_now(void)
{
    return g_now_ms;
}

static void assert_throttled(answer *a, const char *retry_after)
{
    assert_int_equal(a->status, 429);
    assert_string_equal(err_code(a), "Throttled");
    assert_non_null(strstr(err_message(a), "too many requests"));
    assert_string_equal(a->retry_after, retry_after);
    json_decref(a->body);
}

static void test_throttle_azure(void **state)
{
    fixture *f = *state;
    g_now_ms = 1000000;
    emu_throttle *t = kv_api_throttle_new(fake_now);
    f->fx->api.throttle = t;
    char path[64];
    /* 20 software-key creates per 10 s; the 21st is refused and nothing is created */
    for (int i = 0; i < 20; i++) {
        snprintf(path, sizeof path, "/keys/th%d/create", i);
        answer a = call(f, "POST", path, "{\"kty\":\"RSA\"}");
        assert_int_equal(a.status, 200);
        json_decref(a.body);
    }
    g_now_ms += 2500;
    answer a = call(f, "POST", "/keys/th20/create", "{\"kty\":\"RSA\"}");
    assert_throttled(&a, "8");
    assert_int_equal(get_status(f, "th20"), 404);
    /* other transactions have their own budget; another vault its own window */
    assert_int_equal(get_status(f, "th0"), 200);
    a = call_at(f, PPVAULT ".vault.localhost:8443", "POST", "/keys/other/create",
                "{\"kty\":\"RSA\"}");
    assert_int_equal(a.status, 200);
    json_decref(a.body);
    /* the next window: allowed again; an HSM create costs two software ones (10 per 10 s) */
    g_now_ms += 7500;
    for (int i = 0; i < 10; i++) {
        snprintf(path, sizeof path, "/keys/thh%d/create", i);
        a = call(f, "POST", path, "{\"kty\":\"RSA-HSM\"}");
        assert_int_equal(a.status, 200);
        json_decref(a.body);
    }
    a = call(f, "POST", "/keys/th20/create", "{\"kty\":\"RSA\"}");
    assert_throttled(&a, "10");
    /* weighted others, enforced on their sum: 250 gets of an RSA-HSM-4096 key use the whole
     * 10-s budget (4,000 units at 16 each), after which a get of an RSA-2048 key is refused */
    g_now_ms += 10000;
    a = call(f, "POST", "/keys/big/create", "{\"kty\":\"RSA-HSM\",\"key_size\":4096}");
    assert_int_equal(a.status, 200);
    json_decref(a.body);
    g_now_ms += 10000;
    for (int i = 0; i < 250; i++)
        assert_int_equal(get_status(f, "big"), 200);
    a = call(f, "GET", "/keys/th0", NULL);
    assert_throttled(&a, "10");
    a = call(f, "GET", "/keys/big", NULL);
    assert_throttled(&a, "10");
    g_now_ms += 9999;
    a = call(f, "GET", "/keys/big", NULL);
    assert_throttled(&a, "1");
    g_now_ms += 1;
    assert_int_equal(get_status(f, "th0"), 200);
    f->fx->api.throttle = NULL;
    emu_throttle_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_unwrap_faults, test_setup),
        cmocka_unit_test_setup(test_lost_session_retried, test_setup),
        cmocka_unit_test_setup(test_create_import_destroy_faults, test_setup),
        cmocka_unit_test_setup(test_hsm_fault_does_not_lock, test_setup),
        cmocka_unit_test_setup(test_store_full, test_setup),
        cmocka_unit_test_setup(test_throttle_azure, test_setup),
    };
    return cmocka_run_group_tests_name("faults", tests, group_setup, group_teardown);
}
