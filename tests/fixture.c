/* fixture: see fixture.h. */
#include "fixture.h"

#include <errno.h>
#include <stdatomic.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void cmk_test_rm_rf(const char *path)
{
    (void)nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

bool cmk_test_mkdtemp(const char *prefix, char *out, size_t outlen)
{
    const char *base = getenv("CMK_TEST_TMP");
    if (!base || !*base)
        base = "/tmp";
    (void)mkdir(base, 0700);
    int n = snprintf(out, outlen, "%s/%s-XXXXXX", base, prefix);
    if (n < 0 || (size_t)n >= outlen || !mkdtemp(out)) {
        fprintf(stderr, "mkdtemp under %s: %s\n", base, strerror(errno));
        return false;
    }
    return true;
}

/* The Power Platform parts, in main.c's order: roles, policies, environments (audit, CMK
 * wiring), components. */
static bool fixture_pp_open(cmk_fixture *fx, unsigned parts, char *err, size_t errlen)
{
    bool want_envs = parts & (CMK_FX_ENVS | CMK_FX_PP | CMK_FX_COMPS | CMK_FX_BAP);
    if ((parts & CMK_FX_ROLES) && !(fx->roles = auth_roles_open(fx->store, fx->auth, err, errlen)))
        return false;
    if (fx->roles && fx->kv)
        kv_set_rbac_roles(fx->kv, fx->roles);
    if ((parts & CMK_FX_PP) && !(fx->pol = pp_policies_open(fx->store, fx->auth, err, errlen)))
        return false;
    if (!want_envs)
        return true;
    if (!(fx->audit = emu_audit_new()) ||
        !(fx->envs = pp_envs_open(fx->store, fx->hsm, err, errlen)))
        return false;
    pp_envs_set_audit(fx->envs, fx->audit);
    if (parts & CMK_FX_PP)
        pp_envs_set_cmk(
            fx->envs, &(pp_cmk_deps){
                          .kv = fx->kv, .policies = fx->pol, .roles = fx->roles, .auth = fx->auth});
    if ((parts & CMK_FX_COMPS) &&
        !(fx->comps = pp_comps_open(fx->store, fx->hsm, fx->envs, fx->audit, err, errlen)))
        return false;
    return true;
}

cmk_fixture *cmk_fixture_new(const char *prefix, const char *tenant, unsigned parts)
{
    cmk_fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return NULL;
    if (!cmk_test_mkdtemp(prefix, fx->root, sizeof fx->root)) {
        free(fx);
        return NULL;
    }
    snprintf(fx->db, sizeof fx->db, "%s/%s.db", fx->root, prefix);
    emu_clock_set_offset(0);
    emu_clock_hooks_clear();
    char err[512] = "";
    hsm_config hc = {.data_dir = fx->root};
    bool want_auth = parts & (CMK_FX_AUTH | CMK_FX_AUTH_STRICT);
    auth_mode mode = (parts & CMK_FX_AUTH_STRICT) ? AUTH_STRICT : AUTH_PERMISSIVE;
    /* auth before kv: kv's reconciliation spares the HSM objects auth records as its own */
    if (hsm_open(&hc, &fx->hsm, err, sizeof err) != HSM_OK ||
        !(fx->store = emu_store_open(fx->db, err, sizeof err)) ||
        (want_auth && !(fx->auth = auth_open(fx->store, fx->hsm, mode, tenant, err, sizeof err))) ||
        ((parts & CMK_FX_KV) && !(fx->kv = kv_open(fx->store, fx->hsm, err, sizeof err))) ||
        ((parts & CMK_FX_ARM) && !(fx->arm = armres_open(fx->store, tenant, err, sizeof err))) ||
        !fixture_pp_open(fx, parts, err, sizeof err)) {
        fprintf(stderr, "open: %s\n", err);
        cmk_fixture_free(fx);
        return NULL;
    }
    fx->tenant = tenant;
    if (parts &
        (CMK_FX_ROUTER | CMK_FX_KV_API | CMK_FX_ARM_ROUTES | CMK_FX_VAULTS_ARM | CMK_FX_BAP))
        fx->router = emu_router_new();
    cmk_fixture_register(fx, parts);
    return fx;
}

void cmk_fixture_register(cmk_fixture *fx, unsigned parts)
{
    if ((parts & CMK_FX_KV_API) && fx->kv) {
        fx->api = (kv_api_ctx){.kv = fx->kv, .tenant = fx->tenant};
        kv_api_register(fx->router, &fx->api);
    }
    if ((parts & CMK_FX_ARM_ROUTES) && fx->arm)
        armres_register(fx->router, fx->arm);
    if ((parts & CMK_FX_VAULTS_ARM) && fx->kv && fx->arm) {
        fx->karm = (kv_arm_ctx){.common = {.tenant = fx->tenant}, .kv = fx->kv, .arm = fx->arm};
        kv_vaults_arm_register(fx->router, &fx->karm);
    }
    if ((parts & CMK_FX_BAP) && fx->envs) {
        fx->bap = (pp_bap_ctx){.envs = fx->envs, .auth = fx->auth, .comps = fx->comps};
        pp_bap_register(fx->router, &fx->bap);
    }
}

void cmk_fixture_free(cmk_fixture *fx)
{
    if (!fx)
        return;
    emu_router_free(fx->router);
    /* clock hooks (kv's, the environments') hold module pointers: gone before the modules */
    emu_clock_hooks_clear();
    pp_comps_close(fx->comps);
    pp_envs_close(fx->envs);
    pp_policies_close(fx->pol);
    auth_roles_close(fx->roles);
    emu_audit_free(fx->audit);
    if (fx->arm)
        armres_close(fx->arm);
    if (fx->kv)
        kv_close(fx->kv);
    if (fx->auth)
        auth_close(fx->auth);
    if (fx->store)
        emu_store_close(fx->store);
    if (fx->hsm)
        hsm_close(fx->hsm);
    if (!getenv("CMK_TEST_KEEP"))
        cmk_test_rm_rf(fx->root);
    free(fx);
}

emu_req *cmk_fixture_dispatch(cmk_fixture *fx, const char *method, const char *uri,
                              const cmk_call_opts *o)
{
    static const cmk_call_opts none = {0};
    if (!o)
        o = &none;
    emu_req *req = emu_req_new(method, uri);
    emu_req_add_header(req, "Host", o->host ? o->host : "localhost:8443");
    if (!o->no_token)
        emu_req_add_header(req, "Authorization", "Bearer test");
    for (const char *const *h = o->headers; h && h[0] && h[1]; h += 2)
        emu_req_add_header(req, h[0], h[1]);
    if (o->body)
        emu_req_set_body(req, o->body, strlen(o->body));
    req->principal = o->principal;
    emu_router_dispatch(fx->router, req);
    return req;
}

json_t *cmk_resp_json(const emu_req *req)
{
    /* strict: a response never repeats a key */
    return req->resp_len ? json_loadb(req->resp_body, req->resp_len, JSON_REJECT_DUPLICATES, NULL)
                         : NULL;
}

const char *cmk_resp_header(const emu_req *req, const char *name)
{
    for (const emu_resp_header *h = req->resp_headers; h; h = h->next)
        if (!strcasecmp(h->name, name))
            return h->value;
    return NULL;
}

bool cmk_fx_vault(cmk_fixture *fx, const char *name, bool purge_protection)
{
    kv_vault_info vi = {0};
    snprintf(vi.name, sizeof vi.name, "%s", name);
    vi.soft_delete = true;
    vi.retention_days = 7;
    vi.purge_protection = purge_protection;
    snprintf(vi.tenant, sizeof vi.tenant, "%s", fx->tenant);
    kv_err e = {{0}};
    if (kv_vault_create(fx->kv, &vi, &e) == KV_OK)
        return true;
    fprintf(stderr, "vault %s: %s\n", name, e.msg);
    return false;
}

bool cmk_fx_access(cmk_fixture *fx, const char *vault, const char *oid, uint32_t key_perms,
                   int rbac)
{
    kv_vault_state s = {0};
    if (kv_vault_state_get(fx->kv, vault, &s) != KV_OK) {
        fprintf(stderr, "access: no vault %s\n", vault);
        return false;
    }
    if (rbac >= 0)
        s.info.rbac = rbac != 0;
    size_t k = 0;
    for (size_t i = 0; i < s.npolicies; i++) {
        if (!strcmp(s.policies[i].object_id, oid)) {
            json_decref(s.policies[i].permissions);
            continue;
        }
        s.policies[k++] = s.policies[i];
    }
    s.npolicies = k;
    if (key_perms) {
        kv_access_policy *grown = realloc(s.policies, (k + 1) * sizeof *s.policies);
        if (!grown) {
            kv_vault_state_cleanup(&s);
            return false;
        }
        s.policies = grown;
        kv_access_policy *ap = &s.policies[s.npolicies++];
        memset(ap, 0, sizeof *ap);
        snprintf(ap->tenant, sizeof ap->tenant, "%s", fx->tenant);
        snprintf(ap->object_id, sizeof ap->object_id, "%s", oid);
        ap->keys = key_perms;
        ap->permissions = json_pack("{s:[]}", "keys");
    }
    bool created = false;
    kv_err e = {{0}};
    kv_status st = kv_vault_put(fx->kv, &s, &created, &e);
    kv_vault_state_cleanup(&s);
    if (st != KV_OK)
        fprintf(stderr, "access on %s: %s\n", vault, e.msg);
    return st == KV_OK;
}

bool cmk_fx_cmk_policy(cmk_fixture *fx, const char *name, const char *location, const char *vault,
                       const char *key_version, pp_policy *out)
{
    char vid[300];
    snprintf(vid, sizeof vid, CMK_FX_VAULT_ID "%s", vault);
    pp_policy_spec spec = {.subscription = CMK_FX_SUB,
                           .resource_group = "rg",
                           .name = name,
                           .location = location,
                           .kind = PP_KIND_ENCRYPTION,
                           .identity = true,
                           .has_encryption = true,
                           .encryption_enabled = true,
                           .vault_id = vid,
                           .key_name = "cmk",
                           .key_version = key_version};
    bool created = false;
    pp_err e = {{0}, {0}};
    if (pp_policy_put(fx->pol, &spec, out, &created, &e) == PP_OK)
        return true;
    fprintf(stderr, "policy %s: %s\n", name, e.msg);
    return false;
}

static void count_stored(const uint8_t id[HSM_ID_LEN], void *ud)
{
    (void)id;
    (*(size_t *)ud)++;
}

size_t cmk_test_stored_keys(hsm_t *hsm, emu_store *store)
{
    size_t n = 0;
    if (hsm_key_foreach(hsm, count_stored, &n) != HSM_OK)
        return (size_t)-1;
    sqlite3 *db = emu_store_lock(store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM kv_sealed", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n += (size_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    emu_store_unlock(store);
    return n;
}

typedef struct {
    atomic_int done, ok;
} durable_ack;

static void on_durable_ack(void *ud, bool ok)
{
    durable_ack *a = ud;
    atomic_store(&a->ok, ok);
    atomic_store(&a->done, 1);
}

int cmk_test_durable(emu_store *s, uint64_t seq)
{
    durable_ack a = {0};
    emu_store_durability d = emu_store_when_durable(s, seq, on_durable_ack, &a);
    if (d != EMU_STORE_LATER)
        return d == EMU_STORE_DURABLE;
    while (!atomic_load(&a.done)) /* a lives on this stack: no giving up (ctest times out) */
        usleep(1000);
    return atomic_load(&a.ok);
}
