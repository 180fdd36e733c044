/* fuzz_app: see fuzz_app.h. The routes are wired by app.c, as for `cmkemu serve`. */
#include "fuzz_app.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "admin_api.h"
#include "app.h"
#include "arm/deployments.h"
#include "armres.h"
#include "audit.h"
#include "auth/auth_api.h"
#include "auth/roles.h"
#include "auth/roles_api.h"
#include "clock.h"
#include "config.h"
#include "keyvault/kv_api.h"
#include "keyvault/vaults_arm.h"
#include "log.h"
#include "powerplatform/bap_api.h"
#include "powerplatform/components.h"
#include "powerplatform/environments.h"
#include "powerplatform/policies.h"
#include "powerplatform/policies_arm.h"
#include "ui/ui.h"
#include "util.h"
#include "world.h"

#define FZ_ADMIN_OID "0b000001-0000-4000-8000-00000000b001" /* demo world: kv-admin-app */

struct fz_app {
    char dir[PATH_MAX];
    hsm_t *hsm;
    emu_store *store;
    auth_t *auth;
    kv_t *kv;
    roles_t *roles;
    emu_audit *audit;
    char *bearer;
    emu_app app; /* the routes, as main.c wires them (app.c) */
};

void fz_quiet_log(void)
{
    if (!getenv("CMKEMU_FUZZ_LOG"))
        emu_log_setup(EMU_LOG_OFF, false);
}

static void fail(const char *what, const char *err)
{
    fprintf(stderr, "fuzz_app: %s: %s\n", what, err);
    abort();
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void register_routes(fz_app *a)
{
    char err[512] = "";
    a->app = (emu_app){.store = a->store,
                       .hsm = a->hsm,
                       .auth = a->auth,
                       .kv = a->kv,
                       .roles = a->roles,
                       .audit = a->audit,
                       .tenant = FZ_TENANT,
                       .version = "fuzz",
                       .data_dir = a->dir,
                       .identity_header = "cmkemu-identity-header",
                       .pp_operation_ms = -1}; /* no operation runner thread */
    if (!emu_app_open(&a->app, err, sizeof err))
        fail("emu_app_open", err);
}

fz_app *fz_app_new(unsigned flags)
{
    fz_app *a = emu_xcalloc(1, sizeof *a);
    char err[512] = "";
    const char *base = getenv("CMKEMU_FUZZ_TMP");
    if (!base || !*base)
        base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    int n = snprintf(a->dir, sizeof a->dir, "%s/cmkemu-fuzz-XXXXXX", base);
    if (n < 0 || (size_t)n >= sizeof a->dir || !mkdtemp(a->dir))
        fail("mkdtemp", strerror(errno));
    emu_clock_set_offset(0);
    emu_clock_hooks_clear();
    char db[PATH_MAX + 16];
    snprintf(db, sizeof db, "%s/cmkemu.db", a->dir);
    hsm_config hc = {.data_dir = a->dir};
    if (hsm_open(&hc, &a->hsm, err, sizeof err) != HSM_OK)
        fail("hsm_open", err);
    if (!(a->store = emu_store_open(db, err, sizeof err)))
        fail("emu_store_open", err);
    a->audit = emu_audit_new();
    auth_mode mode = (flags & FZ_APP_STRICT) ? AUTH_STRICT : AUTH_PERMISSIVE;
    if (!(a->auth = auth_open(a->store, a->hsm, mode, FZ_TENANT, err, sizeof err)))
        fail("auth_open", err);
    if (!(a->kv = kv_open(a->store, a->hsm, err, sizeof err)))
        fail("kv_open", err);
    if (flags & FZ_APP_WORLD) {
        emu_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.tenant = FZ_TENANT;
        emu_world_info info;
        if (!emu_world_load(&cfg, a->store, a->auth, a->kv, &info, err, sizeof err))
            fail("emu_world_load", err);
        auth_principal p;
        char *tok = NULL;
        if (auth_principal_get(a->auth, FZ_ADMIN_OID, &p) &&
            auth_token_issue(a->auth, &p, "https://management.azure.com", 365 * 86400, 0, &tok,
                             NULL)) {
            a->bearer = emu_xasprintf("Bearer %s", tok);
            free(tok);
        }
    }
    if (!(a->roles = auth_roles_open(a->store, a->auth, err, sizeof err)))
        fail("auth_roles_open", err);
    kv_set_rbac_roles(a->kv, a->roles);
    if (flags & FZ_APP_ROUTES)
        register_routes(a);
    return a;
}

void fz_app_free(fz_app *a)
{
    if (!a)
        return;
    emu_app_close(&a->app);
    emu_clock_hooks_clear();
    kv_close(a->kv);
    auth_roles_close(a->roles);
    auth_close(a->auth);
    emu_audit_free(a->audit);
    emu_store_close(a->store);
    hsm_close(a->hsm);
    free(a->bearer);
    if (!getenv("CMKEMU_FUZZ_KEEP"))
        (void)nftw(a->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(a);
}

hsm_t *fz_app_hsm(fz_app *a)
{
    return a->hsm;
}
emu_store *fz_app_store(fz_app *a)
{
    return a->store;
}
auth_t *fz_app_auth(fz_app *a)
{
    return a->auth;
}
kv_t *fz_app_kv(fz_app *a)
{
    return a->kv;
}
emu_router *fz_app_router(fz_app *a)
{
    return a->app.router;
}
const char *fz_app_dir(const fz_app *a)
{
    return a->dir;
}
const char *fz_app_bearer(fz_app *a)
{
    return a->bearer;
}

long fz_env_long(const char *name, long min, long max, long def)
{
    const char *s = getenv(name);
    int64_t v;
    return s && emu_parse_i64(s, min, max, &v) ? (long)v : def;
}

void fz_dispatch(emu_router *r, emu_req *req)
{
    if (req->query_overflow) {
        emu_send_error(req, 400, "BadParameter", "The query string has more than %d parameters.",
                       EMU_MAX_QUERY);
        return;
    }
    emu_router_dispatch(r, req);
}
