/*
 * admin_api: the emulator's own endpoints under /_emulator: health (always open) and the
 * clock (GET reads it; POST {"advance": "P7D"} moves it forward and applies what became
 * due before answering), and injected faults (/_emulator/faults: GET lists the rules with
 * their hits, POST adds one, DELETE removes all or DELETE /_emulator/faults/{id} one; mutating
 * needs an emulator admin in strict mode).
 */
#ifndef CMKEMU_ADMIN_API_H
#define CMKEMU_ADMIN_API_H

#include <stdint.h>

#include "audit.h"
#include "auth/auth.h"
#include "faults.h"
#include "hsm.h"
#include "router.h"
#include "store.h"

typedef struct {
    emu_store *store;
    hsm_t *hsm;
    const char *version;
    const char *data_dir;
    int64_t started; /* wall clock */
    auth_t *auth;    /* strict mode: mutating endpoints need an emulator admin */
    emu_audit *audit;
    emu_faults *faults; /* /_emulator/faults; NULL = not offered */
    /* start-up reconciliation (kv_reconciled): orphan key pairs destroyed, rows without one */
    size_t reconciled_orphans, reconciled_missing;
} emu_admin_ctx;

void emu_admin_register(emu_router *r, emu_admin_ctx *ctx);
/* Precheck for mutating /_emulator endpoints: in strict mode the caller must present a valid
 * token of an emulator admin principal (401/403 otherwise). Open in permissive mode. */
void emu_admin_require(emu_req *req, void *ud);
/* The http completion hook: records key operations, mutating ARM calls and emulator changes
 * in ctx->audit. */
void emu_admin_audit_request(emu_req *req, void *ud);
/* Loads the persisted clock offset from the store. */
void emu_admin_load_clock(emu_store *store);

#endif
