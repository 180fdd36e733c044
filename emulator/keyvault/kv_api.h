/*
 * kv_api: the Key Vault keys data plane over HTTPS. The vault comes from the Host header
 * ({vault}.vault.localhost -> that vault; localhost, 127.0.0.1, [::1] -> the default vault).
 * Every route first answers the bearer challenge (401 before the body is read) when the
 * request carries no Authorization header.
 */
#ifndef CMKEMU_KV_API_H
#define CMKEMU_KV_API_H

#include "auth/auth.h"
#include "kv.h"
#include "router.h"
#include "throttle.h"

/* Authorization decision for one operation. NULL = the vault's own decision
 * (kv_access_authorize: access policies, or the RBAC hook for RBAC vaults; callers that
 * permissive mode mapped to the default principal are allowed). Returns KV_OK or
 * KV_ERR_FORBIDDEN with a message. */
typedef kv_status (*kv_authorize_fn)(emu_req *req, const char *vault, const char *key,
                                     const char *permission, kv_err *e, void *ud);

typedef struct {
    kv_t *kv;
    const char *tenant;
    auth_t *auth; /* NULL: only the presence of a bearer token is checked */
    kv_authorize_fn authorize;
    void *authorize_ud;
    /* --throttle azure: the service limits per vault (kv_api_throttle_new); NULL = off */
    emu_throttle *throttle;
} kv_api_ctx;

/* The Key Vault service limits as a throttle: per vault per 10 s, creates (RSA 20, RSA-HSM 10)
 * and all other key transactions weighted by key type and size (RSA-2048 4,000, RSA-HSM-2048
 * 2,000, 3072: 1,000 / 500, 4096: 500 / 250), enforced on their sum as the service does.
 * clock NULL = the monotonic clock. Free with emu_throttle_free. */
emu_throttle *kv_api_throttle_new(emu_throttle_clock_fn clock);

void kv_api_register(emu_router *r, kv_api_ctx *ctx);

/* Sends a Key Vault error ({"error":{"code","message","innererror"}}) for a status. */
void kv_send_error(emu_req *req, kv_status st, const char *msg);

#endif
