/*
 * hsm_openssl: OpenSSL helpers shared by the files of pkcs11/ (hsm.c, ceiling.c). Not for
 * code outside pkcs11/.
 */
#ifndef CMKEMU_HSM_OPENSSL_H
#define CMKEMU_HSM_OPENSSL_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

/* An OpenSSL RSA public key from big-endian n and e; NULL on failure (errors cleared). */
EVP_PKEY *hsm_pkey_from_ne(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len);

#endif
