/*
 * fixture: the shared group fixture of the in-process tests. A fresh data directory under
 * $CMK_TEST_TMP (else /tmp), removed at the end unless CMK_TEST_KEEP is set; a SoftHSM token
 * and a store in it; and, as the test asks, auth, kv and armres opened in the order main.c
 * uses (auth before kv, kv before armres) with a router carrying the Key Vault data plane,
 * the resource-group routes and Microsoft.KeyVault/vaults; and the Power Platform side
 * (role assignments, enterprise policies, environments with their audit and CMK wiring,
 * components, the BAP routes) wired as main.c wires it. Other test-specific modules are
 * opened and registered by the test itself, and closed by it before cmk_fixture_free.
 */
#ifndef CMK_TESTS_FIXTURE_H
#define CMK_TESTS_FIXTURE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "armres.h"
#include "audit.h"
#include "auth/auth.h"
#include "auth/roles.h"
#include "hsm.h"
#include "keyvault/kv.h"
#include "keyvault/kv_api.h"
#include "keyvault/vaults_arm.h"
#include "powerplatform/bap_api.h"
#include "powerplatform/components.h"
#include "powerplatform/environments.h"
#include "powerplatform/policies.h"
#include "req.h"
#include "router.h"
#include "store.h"

enum {
    CMK_FX_AUTH = 1u << 0,        /* auth_open, permissive */
    CMK_FX_AUTH_STRICT = 1u << 1, /* auth_open, strict */
    CMK_FX_KV = 1u << 2,          /* kv_open */
    CMK_FX_ARM = 1u << 3,         /* armres_open */
    CMK_FX_ROUTER = 1u << 4,      /* emu_router_new */
    CMK_FX_KV_API = 1u << 5,      /* router: the Key Vault data plane (needs KV) */
    CMK_FX_ARM_ROUTES = 1u << 6,  /* router: resource groups (needs ARM) */
    CMK_FX_VAULTS_ARM = 1u << 7,  /* router: Microsoft.KeyVault/vaults (needs KV, ARM) */
    CMK_FX_ROLES = 1u << 8,       /* auth_roles_open; with KV also kv_set_rbac_roles */
    CMK_FX_ENVS = 1u << 9,        /* pp_envs_open with an audit log (fx->audit) */
    CMK_FX_PP = 1u << 10,         /* ENVS + pp_policies_open + pp_envs_set_cmk (needs KV) */
    CMK_FX_COMPS = 1u << 11,      /* ENVS + pp_comps_open */
    CMK_FX_BAP = 1u << 12,        /* router: the BAP environment routes (needs ENVS) */
};

typedef struct {
    char root[PATH_MAX];
    char db[PATH_MAX + 16];
    const char *tenant; /* as given to cmk_fixture_new */
    hsm_t *hsm;
    emu_store *store;
    auth_t *auth;
    kv_t *kv;
    armres_t *arm;
    emu_router *router;
    kv_api_ctx api;
    kv_arm_ctx karm;
    roles_t *roles;
    pp_policies_t *pol;
    pp_envs_t *envs;
    pp_comps_t *comps;
    emu_audit *audit;
    pp_bap_ctx bap;
} cmk_fixture;

/* Make "<base>/<prefix>-XXXXXX" under $CMK_TEST_TMP (else /tmp) into out; false on failure
 * (reported on stderr). */
bool cmk_test_mkdtemp(const char *prefix, char *out, size_t outlen);

/* Remove a directory tree (nftw, depth first, no symlinks followed). */
void cmk_test_rm_rf(const char *path);

/* Key pairs the emulator keeps: RSA key pairs in the token plus sealed key versions (their
 * blobs in the store, table kv_sealed; 0 of those before the key vault schema exists). */
size_t cmk_test_stored_keys(hsm_t *hsm, emu_store *store);

/* Waits for the acknowledgement of a deferred commit (emu_store_when_durable): 1 durable, 0
 * its batch failed to commit. */
int cmk_test_durable(emu_store *s, uint64_t seq);

/* Open what parts asks for, with tenant for auth/armres/the routes; NULL on failure (reported
 * on stderr, everything opened so far closed). The clock offset and hooks are reset first. */
cmk_fixture *cmk_fixture_new(const char *prefix, const char *tenant, unsigned parts);

/* Register on fx->router, in this order, the routes parts names (CMK_FX_KV_API,
 * CMK_FX_ARM_ROUTES, CMK_FX_VAULTS_ARM, CMK_FX_BAP); cmk_fixture_new does this for its own parts.
 * For a test whose own routes must come first (the router takes the first match). */
void cmk_fixture_register(cmk_fixture *fx, unsigned parts);

/* Close what cmk_fixture_new opened, clear the clock hooks, remove the data directory (unless
 * CMK_TEST_KEEP) and free. NULL is ignored. */
void cmk_fixture_free(cmk_fixture *fx);

/* One request. */
typedef struct {
    const char *host;           /* NULL = "localhost:8443" */
    const char *body;           /* NULL = none */
    bool no_token;              /* true = no "Authorization: Bearer test" */
    void *principal;            /* req->principal, NULL = none */
    const char *const *headers; /* extra name, value pairs, NULL-terminated; NULL = none */
} cmk_call_opts;

/* Dispatch one request through fx->router; the answered request returned (emu_req_free). */
emu_req *cmk_fixture_dispatch(cmk_fixture *fx, const char *method, const char *uri,
                              const cmk_call_opts *o);

/* ---- Customer-managed key set-up shared by the Power Platform tests (each returns false,
 * with the reason on stderr, when the module refused; callers assert_true on it). ---------- */

/* Subscription and resource group ("rg") of the vaults and policies below. */
#define CMK_FX_SUB "00000000-0000-4000-8000-000000000001"
#define CMK_FX_VAULT_ID                                                                            \
    "/subscriptions/" CMK_FX_SUB "/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/"

/* A vault in fx->tenant with soft delete (7 days) and purge protection as given. */
bool cmk_fx_vault(cmk_fixture *fx, const char *name, bool purge_protection);
/* Sets oid's access policy on vault to these key permissions (KV_PERM_*; 0 removes it);
 * rbac: 1/0 switches the vault's permission model, -1 leaves it. */
bool cmk_fx_access(cmk_fixture *fx, const char *vault, const char *oid, uint32_t key_perms,
                   int rbac);
/* An encryption enterprise policy with a managed identity over key "cmk" of vault
 * (key_version NULL = the latest). */
bool cmk_fx_cmk_policy(cmk_fixture *fx, const char *name, const char *location, const char *vault,
                       const char *key_version, pp_policy *out);

/* The response body parsed as JSON; NULL when empty or not JSON. */
json_t *cmk_resp_json(const emu_req *req);

/* A response header (case-insensitive), NULL when absent. */
const char *cmk_resp_header(const emu_req *req, const char *name);

#endif
