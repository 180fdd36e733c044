/*
 * ui: the trainer dashboard at /_emulator/ui/. Serves the page's files, embedded in the binary
 * at build time (index.html, app.css, app.js beside this file, plus every trainer scenario of
 * fixtures/scenarios as one JSON bundle), so it works offline from any directory. Besides the
 * files it answers two things:
 *
 *   GET /_emulator/ui/api/config   tenant, auth mode and the principal directory (names for
 *                                  object ids, and which principal is the emulator admin)
 *   ANY /_emulator/ui/relay/{host}/{path...}
 *                                  the request, unchanged (method, query, body, Authorization
 *                                  and every other header), dispatched through the router as if
 *                                  it had been sent to https://{host}:PORT/{path}: how the page
 *                                  reaches the hosts a browser page cannot address by itself
 *                                  (named vaults NAME.vault.localhost, environment instance URLs
 *                                  ID.crm.localhost). Every check of the target API runs (its
 *                                  bearer challenge, token audience, access decision); a
 *                                  relayed change is audited as the operation it is.
 *
 * The page's controls all call the public APIs (ARM, Key Vault, BAP, Dataverse, /_emulator/clock)
 * with tokens of the admin principal; nothing here changes state.
 */
#ifndef CMKEMU_UI_H
#define CMKEMU_UI_H

#include "auth/auth.h"
#include "router.h"

typedef struct {
    const emu_router *router; /* the relay dispatches through it */
    auth_t *auth;
    /* Called with each relayed request that changed something (not GET/HEAD), after it was
     * answered: the audit hook. May be NULL. */
    void (*on_relayed)(emu_req *req, void *ud);
    void *on_relayed_ud;
} emu_ui_ctx;

/* Registers /_emulator/ui and everything under it. ctx must outlive the router. */
void emu_ui_register(emu_router *r, emu_ui_ctx *ctx);

#endif
