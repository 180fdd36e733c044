/*
 * auth_api: the Entra-style token service over HTTPS: OpenID discovery, JWKS, the v2 and v1
 * token endpoints (client_credentials and password grants), managed identity endpoints (IMDS
 * path and the App Service IDENTITY_ENDPOINT form) and POST /_emulator/tokens.
 */
#ifndef CMKEMU_AUTH_API_H
#define CMKEMU_AUTH_API_H

#include "auth.h"
#include "router.h"

typedef struct {
    auth_t *auth;
    const char *identity_header; /* expected X-IDENTITY-HEADER for /msi/token */
} auth_api_ctx;

void auth_api_register(emu_router *r, auth_api_ctx *ctx);

#endif
