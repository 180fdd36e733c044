/*
 * envelope: the envelope encryption of Power Platform environment data. Each environment has
 * one random AES-256 data key (DEK) that is stored only wrapped by a key-encryption key (KEK);
 * records are sealed with AES-256-GCM under the DEK. No HTTP types.
 *
 * Who wraps: a pp_key_wrapper (callbacks), so the same code serves the Microsoft-managed key
 * (the emulator's platform key, an RSA-2048 key pair in the HSM, RSA-OAEP-SHA256; see
 * pp_platform_key_*) and, later, a customer key reached through Key Vault.
 *
 * Sealed form: nonce (12 random bytes) || ciphertext || tag (16 bytes). The associated data
 * binds a record to its place: "{environment id}/{table}/{record id}" (pp_record_aad), so a
 * blob moved to another record, table or environment does not open.
 *
 * Secrets: a pp_dek holds the key bytes in memory only; pp_dek_wipe clears them
 * (OPENSSL_cleanse). Error messages never contain key bytes or plaintext.
 */
#ifndef CMKEMU_PP_ENVELOPE_H
#define CMKEMU_PP_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hsm.h"
#include "store.h"

typedef enum {
    PP_ENVELOPE_OK = 0,
    PP_ENVELOPE_ERR_ARGS,   /* bad argument (too large, no key loaded, blob too short) */
    PP_ENVELOPE_ERR_AUTH,   /* the blob does not authenticate: tampered or wrong AAD */
    PP_ENVELOPE_ERR_WRAP,   /* the KEK refused to wrap or unwrap the data key */
    PP_ENVELOPE_ERR_RANDOM, /* no random bytes */
    PP_ENVELOPE_ERR_CRYPTO, /* OpenSSL failure */
} pp_envelope_status;

const char *pp_envelope_status_str(pp_envelope_status st);

#define PP_DEK_LEN 32
#define PP_NONCE_LEN 12
#define PP_TAG_LEN 16
#define PP_WRAPPED_MAX 512
/* Largest plaintext pp_seal accepts (records are capped well below). */
#define PP_SEAL_MAX (1024 * 1024)

/* A data key in memory. Caller-owned storage: pp_dek_wipe when done. */
typedef struct {
    uint8_t bytes[PP_DEK_LEN];
    bool loaded;
} pp_dek;

/* Wraps a data key: out has room for PP_WRAPPED_MAX bytes; *out_len set. false + message. */
typedef bool (*pp_wrap_fn)(void *ud, const uint8_t *dek, size_t dek_len, uint8_t *out,
                           size_t *out_len, char *err, size_t errlen);
/* Unwraps: out has room for PP_WRAPPED_MAX bytes; *out_len set. false + message. */
typedef bool (*pp_unwrap_fn)(void *ud, const uint8_t *in, size_t in_len, uint8_t *out,
                             size_t *out_len, char *err, size_t errlen);

typedef struct {
    pp_wrap_fn wrap;
    pp_unwrap_fn unwrap;
    void *ud;
} pp_key_wrapper;

/* Makes a new data key from the HSM's random source and wraps it. On success dek is loaded
 * and wrapped[0..*wrapped_len) (room for PP_WRAPPED_MAX) holds the wrapped form; on failure
 * dek is wiped. */
pp_envelope_status pp_dek_create(hsm_t *hsm, const pp_key_wrapper *w, pp_dek *dek, uint8_t *wrapped,
                                 size_t *wrapped_len, char *err, size_t errlen);
/* Unwraps a stored data key into dek. A result that is not PP_DEK_LEN bytes is refused. */
pp_envelope_status pp_dek_unwrap(const pp_key_wrapper *w, const uint8_t *wrapped,
                                 size_t wrapped_len, pp_dek *dek, char *err, size_t errlen);
/* Clears the key bytes and marks the key unloaded. NULL is a no-op. */
void pp_dek_wipe(pp_dek *dek);

/* Seals plaintext under a loaded key. *out (malloc'd, caller frees) = nonce||ct||tag. */
pp_envelope_status pp_seal(const pp_dek *dek, const void *aad, size_t aad_len, const void *pt,
                           size_t pt_len, uint8_t **out, size_t *out_len);
/* Opens a sealed blob. *pt is malloc'd with a NUL after the *pt_len bytes (caller frees).
 * Any change to nonce, ciphertext, tag or AAD -> PP_ENVELOPE_ERR_AUTH and no plaintext. */
pp_envelope_status pp_open(const pp_dek *dek, const void *aad, size_t aad_len, const uint8_t *in,
                           size_t in_len, char **pt, size_t *pt_len);

/* "{env}/{table}/{id}" into out; false when it does not fit. */
bool pp_record_aad(const char *env, const char *table, const char *id, char *out, size_t outlen);

/* ---- the platform key (Microsoft-managed key) ------------------------------------------- */

typedef struct {
    hsm_t *hsm;
    uint8_t id[HSM_ID_LEN];
} pp_platform_key;

/* Finds the platform key (meta "pp_platform_key") or creates it (RSA-2048, label
 * "cmkemu/pp-platform-key") and records it in hsm_owned so key reconciliation spares it. */
bool pp_platform_key_ensure(emu_store *store, hsm_t *hsm, pp_platform_key *out, char *err,
                            size_t errlen);
/* A wrapper over the platform key (RSA-OAEP-SHA256). k must outlive the wrapper. */
pp_key_wrapper pp_platform_key_wrapper(pp_platform_key *k);

#endif
