/*
 * principal: who is calling. Resolved once per request by the identity layer (auth_*),
 * from the bearer token, and kept in req->principal for the request's lifetime.
 */
#ifndef CMKEMU_PRINCIPAL_H
#define CMKEMU_PRINCIPAL_H

#include <stdbool.h>

typedef enum {
    AUTH_KIND_USER = 0,
    AUTH_KIND_SERVICE_PRINCIPAL,
    AUTH_KIND_MANAGED_IDENTITY,
} auth_principal_kind;

typedef struct {
    char oid[40];    /* object id (GUID) */
    char appid[40];  /* application (client) id; "" for users */
    char tid[40];    /* tenant id */
    char name[128];  /* display name */
    char iss[128];   /* token issuer, for Key Vault's 403 message */
    auth_principal_kind kind;
    bool emulator_admin; /* may call mutating /_emulator endpoints in strict mode */
    bool from_token;     /* false: permissive mode mapped an unknown token to the default */
} auth_principal;

/* "User" | "Application" | "ManagedIdentity" (ARM systemData createdByType). */
const char *auth_principal_kind_str(auth_principal_kind k);

#endif
