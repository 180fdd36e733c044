/*
 * fuzz_app: the emulator wired the way `cmkemu serve` wires it (main.c), in-process and
 * without HTTP, for the fuzz targets: a throwaway data directory (under $CMKEMU_FUZZ_TMP, else
 * $TMPDIR, else /tmp) with a SoftHSM token, the SQLite store, the identity layer, Key Vault,
 * ARM (resource groups, vaults, role assignments, deployments, enterprise policies), Power
 * Platform (environments, components, records), the admin API and the dashboard routes, on one
 * router. The demo world is loaded when asked. No HTTP server, no worker pool, no operation
 * runner thread (link/unlink operations stay pending): every handler runs on the caller's
 * thread.
 *
 * The data directory is removed by fz_app_free; fz_app_free(NULL) is a no-op.
 */
#ifndef CMKEMU_FUZZ_APP_H
#define CMKEMU_FUZZ_APP_H

#include <stdbool.h>
#include <stddef.h>

#include "auth/auth.h"
#include "hsm.h"
#include "keyvault/kv.h"
#include "req.h"
#include "router.h"
#include "store.h"

#define FZ_TENANT "72f988bf-0000-4000-8000-00000000c0de" /* the default (config.c) */
#define FZ_SUB "00000000-0000-4000-8000-000000000001"

enum {
    FZ_APP_STRICT = 1u << 0, /* strict authentication (else permissive) */
    FZ_APP_WORLD = 1u << 1,  /* load the demo world (fixtures/demo-world.json) */
    FZ_APP_ROUTES = 1u << 2, /* every API family on the router */
};

typedef struct fz_app fz_app;

/* Opens what flags ask for (hsm, store, auth and kv always). Aborts with a message on failure:
 * a fuzz target cannot run without its fixture. */
fz_app *fz_app_new(unsigned flags);
void fz_app_free(fz_app *app);

hsm_t *fz_app_hsm(fz_app *app);
emu_store *fz_app_store(fz_app *app);
auth_t *fz_app_auth(fz_app *app);
kv_t *fz_app_kv(fz_app *app);
emu_router *fz_app_router(fz_app *app); /* NULL without FZ_APP_ROUTES */
const char *fz_app_dir(const fz_app *app);

/* A bearer token ("Bearer eyJ...") minted by the app's token service for the demo world's
 * kv-admin-app (all audiences of the emulator); NULL without FZ_APP_WORLD. */
const char *fz_app_bearer(fz_app *app);

/* Quiets the emulator's log (fuzzing would print every rejected input) unless
 * CMKEMU_FUZZ_LOG is set in the environment. */
void fz_quiet_log(void);

/* A whole number from the environment in [min, max], else def (the fuzz knobs). */
long fz_env_long(const char *name, long min, long max, long def);

/* Runs a request through the router the way core/http does once the body is in: query
 * overflow -> 400, no route -> 404/405, precheck, handler. */
void fz_dispatch(emu_router *r, emu_req *req);

#endif
