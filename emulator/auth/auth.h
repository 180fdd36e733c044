/*
 * auth: the identity side of the emulator. Principals (users, service principals, managed
 * identities) of one or more tenants, an Entra-style token service whose RS256 JWTs are
 * signed by a key inside the HSM, and the per-request authentication that turns a bearer
 * token into a principal.
 *
 * Secrets: client secrets and passwords are stored only as salted SHA-256 hashes and compared
 * in constant time; tokens are never logged.
 * Locking: one mutex over the principal table (principals change rarely); token signing and
 * verification need no lock (the HSM layer is thread-safe).
 */
#ifndef CMKEMU_AUTH_H
#define CMKEMU_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "hsm.h"
#include "principal.h"
#include "req.h"
#include "store.h"

typedef struct auth auth_t;

typedef enum { AUTH_PERMISSIVE = 0, AUTH_STRICT } auth_mode;

/* Opens the principal table and the token signing key (created in the token on first start
 * and recorded in hsm_owned so key reconciliation spares it). */
auth_t *auth_open(emu_store *store, hsm_t *hsm, auth_mode mode, const char *default_tenant,
                  char *err, size_t errlen);
void auth_close(auth_t *a);
auth_mode auth_get_mode(const auth_t *a);
const char *auth_default_tenant(const auth_t *a);

/* ---- principals ------------------------------------------------------------------------- */

typedef struct {
    auth_principal_kind kind;
    const char *oid;      /* NULL = new GUID */
    const char *appid;    /* service principals / managed identities; NULL = new GUID */
    const char *tenant;   /* NULL = default tenant */
    const char *name;
    const char *secret;   /* client secret (SP) or password (user); NULL = none */
    const char *username; /* users: sign-in name for the password grant */
    bool emulator_admin;
    bool is_default;      /* permissive mode maps foreign tokens to this principal */
} auth_principal_spec;

/* Creates a principal; false + message when the oid or appid is taken. out may be NULL. */
bool auth_principal_add(auth_t *a, const auth_principal_spec *spec, auth_principal *out,
                        char *err, size_t errlen);
bool auth_principal_get(auth_t *a, const char *oid, auth_principal *out);
bool auth_principal_by_appid(auth_t *a, const char *appid, auth_principal *out);
bool auth_principal_by_name(auth_t *a, const char *name, auth_principal_kind kind,
                            auth_principal *out);
/* The principal marked default among those of a kind, else the first of that kind. */
bool auth_principal_default_of_kind(auth_t *a, auth_principal_kind kind, auth_principal *out);
bool auth_principal_remove(auth_t *a, const char *oid);
size_t auth_principal_count(auth_t *a);
/* A copy of every principal, in creation order (the dashboard's directory). *out is malloc'd
 * (free it; NULL when there are none); returns the count. */
size_t auth_principal_list(auth_t *a, auth_principal **out);

/* ---- tokens ----------------------------------------------------------------------------- */

/* Mints a signed JWT for a principal. lifetime in seconds; nbf_offset moves nbf (and iat)
 * relative to now (wall clock). *token is malloc'd. */
bool auth_token_issue(auth_t *a, const auth_principal *p, const char *audience, int64_t lifetime,
                      int64_t nbf_offset, char **token, int64_t *expires_on);

/* Signs base64url(header) "." base64url(claims) with the token signing key (RS256) and returns
 * the compact JWS (malloc'd), or NULL when the HSM refuses. The bytes are taken as given:
 * auth_token_issue builds them; tests and the fuzzer sign headers and claims of their own. */
char *auth_jws_sign(auth_t *a, const void *header, size_t header_len, const void *claims,
                    size_t claims_len);

typedef enum {
    AUTH_AUD_KEYVAULT = 1,
    AUTH_AUD_ARM = 2,
    AUTH_AUD_BAP = 4,
    AUTH_AUD_ANY = 7,
} auth_audience_family;

/* Verifies a JWT of this issuer: alg RS256 only, our kid, signature, issuer, audience of the
 * family (base_url = "https://host:port" the client used, accepted for ARM/BAP), exp/nbf on
 * the wall clock. On success fills out; else false + a message naming what was wrong.
 * Tokens whose signature verified are remembered (by SHA-256 of the text, 1024 slots) so a
 * client's next request skips parsing and the RSA verify; every other check runs each time. */
bool auth_token_verify(auth_t *a, const char *token, auth_audience_family fam,
                       const char *base_url, auth_principal *out, char *err, size_t errlen);
/* How many verifications the signature cache answered (tests, metrics). */
uint64_t auth_token_cache_hits(auth_t *a);

/* Resolves the caller of a request for an API family. Sets req->principal (arena memory) and
 * returns true; on failure returns false with a message (the caller answers 401 in its own
 * error shape). No Authorization header -> false with *missing = true. */
bool auth_authenticate(auth_t *a, emu_req *req, auth_audience_family fam, bool *missing,
                       char *err, size_t errlen);

/* JWKS document (new reference). */
json_t *auth_jwks(auth_t *a);

/* ---- world ------------------------------------------------------------------------------ */

/* Loads "principals": [...] and "identityHeader" from a world document. */
bool auth_world_apply(auth_t *a, json_t *world, char *err, size_t errlen);

#endif
