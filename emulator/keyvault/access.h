/*
 * access: who may do what on the Key Vault data plane. A vault decides with its access
 * policies ({tenantId, objectId, applicationId?, permissions.keys[]}), or, when
 * enableRbacAuthorization is set, with the RBAC hook that the role-assignment module installs
 * (kv_set_rbac_check in kv.h); with no hook installed RBAC vaults deny.
 *
 * Requests without a resolved principal (no identity layer) and principals that permissive
 * mode mapped from an unknown token (from_token false) are allowed: the decision only binds
 * callers that the token service vouched for.
 */
#ifndef CMKEMU_KV_ACCESS_H
#define CMKEMU_KV_ACCESS_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "auth/principal.h"
#include "kv.h"
#include "req.h"

/* Key permission name (case-insensitive; "all" = KV_PERM_ALL) to its bit; false if unknown. */
bool kv_perm_from_name(const char *name, uint32_t *bits);
/* The canonical spelling of one permission bit ("unwrapKey"), or NULL. */
const char *kv_perm_name(uint32_t bit);
/* Parses permissions.keys (array of names) into a mask; false + message on a bad entry. */
bool kv_perm_parse_keys(const json_t *arr, uint32_t *mask, kv_err *e);

/* The decision for one operation. permission is a key permission name as in the reference's
 * operations table ("unwrapKey", "getrotationpolicy", ...). KV_OK, KV_ERR_FORBIDDEN
 * (access policies), KV_ERR_FORBIDDEN_RBAC or KV_ERR_VAULT_NOT_FOUND, with the message the
 * real service gives. */
kv_status kv_access_check(kv_t *kv, const char *vault, const auth_principal *p,
                          const char *permission, kv_err *e);

/* The authorised crypto entry point for a principal that acts without a request (a managed
 * identity such as a Power Platform policy's): the same decision as the REST API
 * (access policies or the RBAC hook, always checked: p is treated as vouched for by the token
 * service) and then kv_key_crypt. p NULL -> KV_ERR_FORBIDDEN. */
kv_status kv_key_crypt_as(kv_t *kv, const auth_principal *p, const char *vault, const char *name,
                          const char *version, kv_crypt_op op, hsm_rsa_enc_alg alg,
                          const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len,
                          char version_out[33], kv_err *e);

/* Whether a live vault can hold a customer-managed key: KV_OK, KV_ERR_VAULT_NOT_FOUND, or
 * KV_ERR_BAD_PARAM when soft delete or purge protection is off (message says which). */
kv_status kv_vault_cmk_check(kv_t *kv, const char *vault, kv_err *e);

/* Whether a key version can be a customer-managed key, judged by attributes only (no access
 * check: what an admin sees): exists (version ""/NULL = latest), RSA or RSA-HSM, at least
 * 2048 bits, enabled, inside nbf/exp by the emulator clock, wrapKey and unwrapKey in its
 * key_ops. KV_OK or the kv status with a message that says which. *out (may be NULL) gets
 * the version; release with kv_key_view_cleanup. */
kv_status kv_key_cmk_check(kv_t *kv, const char *vault, const char *name, const char *version,
                           kv_key_view *out, kv_err *e);

/* The same check made as principal p (a policy's managed identity): p must hold get, wrapKey
 * and unwrapKey (access policies or RBAC; the message names the first one missing), then
 * kv_key_cmk_check. */
kv_status kv_key_cmk_probe_as(kv_t *kv, const auth_principal *p, const char *vault,
                              const char *name, const char *version, kv_key_view *out,
                              kv_err *e);

/* kv_authorize_fn adapter (kv_api.h): ud is the kv_t; the principal is req->principal. */
kv_status kv_access_authorize(emu_req *req, const char *vault, const char *key,
                              const char *permission, kv_err *e, void *ud);

#endif
