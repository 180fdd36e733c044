/*
 * ceiling: the raw PKCS#11 rate of one operation, for benchmarks (`cmkharness bench --ceiling`).
 *
 * hsm_ceiling_run creates a throw-away SoftHSM token in a fresh temporary directory (through
 * hsm_open in managed mode, so the token type and configuration are the emulator's own), makes
 * an RSA key pair there, then runs `threads` threads for `seconds`, each with its own PKCS#11
 * session, doing the operation back to back with nothing else around it:
 *
 *   HSM_CEILING_UNWRAP  C_DecryptInit + C_Decrypt on a 32-byte OAEP payload: CKM_RSA_PKCS_OAEP
 *                       (SHA-1) for HSM_RSA_OAEP_SHA1; CKM_RSA_X_509 in the token + OpenSSL
 *                       OAEP-SHA256 decoding for HSM_RSA_OAEP_SHA256 (what the emulator does).
 *   HSM_CEILING_WRAP    OpenSSL OAEP encryption of 32 bytes with the public key exported from
 *                       the token (the emulator's wrap path; no PKCS#11 call per operation).
 *   HSM_CEILING_CREATE  C_GenerateKeyPair RSA as token objects (same templates as hsm.c).
 *
 * The temporary directory is removed afterwards. Uses hsm_open, so it must not run while the
 * process has another hsm_t open (HSM_ERR_MODULE); SOFTHSM2_CONF is restored to its previous
 * value (or unset) on return. Not thread-safe with respect to other hsm_open callers.
 */
#ifndef CMKEMU_CEILING_H
#define CMKEMU_CEILING_H

#include <stddef.h>

#include "hsm.h"

typedef enum {
    HSM_CEILING_UNWRAP = 1,
    HSM_CEILING_WRAP,
    HSM_CEILING_CREATE,
} hsm_ceiling_op;

typedef struct {
    hsm_ceiling_op op;
    hsm_rsa_enc_alg alg; /* unwrap/wrap: HSM_RSA_OAEP_SHA1 or HSM_RSA_OAEP_SHA256; 0 = SHA256 */
    unsigned bits;       /* RSA modulus: 2048/3072/4096; 0 = 2048 */
    unsigned threads;    /* 1..256 */
    double seconds;      /* 0.1..3600 */
    const char *tmp_dir; /* parent of the throw-away token directory; NULL = /tmp */
} hsm_ceiling_config;

typedef struct {
    unsigned long ops;    /* operations completed */
    unsigned long errors; /* PKCS#11 / OpenSSL failures (a healthy run has none) */
    double seconds;       /* wall time of the measured phase (first start to last stop) */
    double ops_per_s;     /* sum over threads of ops_i / (active time of thread i) */
    unsigned threads;
} hsm_ceiling_result;

const char *hsm_ceiling_op_str(hsm_ceiling_op op);

/* Runs the measurement. On failure returns a status and writes one line into err; *out is
 * zeroed. Takes about cfg->seconds plus token set-up (a key generation, ~0.1-0.7 s). */
hsm_status hsm_ceiling_run(const hsm_ceiling_config *cfg, hsm_ceiling_result *out, char *err,
                           size_t errlen);

#endif
