/*
 * envelope: AES-256-GCM records under a wrapped data key; see envelope.h.
 */
#include "envelope.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "log.h"
#include "util.h"

/* AES-256-GCM fetched once: EVP_aes_256_gcm() in an Init call makes OpenSSL 3 look the
 * algorithm up in its provider store on every record (locks, string compares), about a third
 * of the cost of sealing 16 KiB. The fetched cipher is immutable and shared by all threads. */
static pthread_once_t gcm_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *gcm_fetched;

static void gcm_fetch(void)
{
    gcm_fetched = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
}

static const EVP_CIPHER *gcm(void)
{
    pthread_once(&gcm_once, gcm_fetch);
    return gcm_fetched ? gcm_fetched : EVP_aes_256_gcm();
}

/* Nonces are 12 random bytes each; RAND_bytes per record costs ~10 % of sealing 16 KiB (a
 * getpid fork check and the DRBG lock), so each thread draws 64 nonces at a time. Used bytes
 * are cleared; the emulator never forks, so no two processes share a pool. */
#define NONCE_POOL 64
static _Thread_local uint8_t nonce_pool[NONCE_POOL * PP_NONCE_LEN];
static _Thread_local unsigned nonce_left;

static bool nonce_next(uint8_t out[PP_NONCE_LEN])
{
    if (nonce_left == 0) {
        if (RAND_bytes(nonce_pool, sizeof nonce_pool) != 1)
            return false;
        nonce_left = NONCE_POOL;
    }
    uint8_t *p = nonce_pool + (size_t)(NONCE_POOL - nonce_left) * PP_NONCE_LEN;
    memcpy(out, p, PP_NONCE_LEN);
    OPENSSL_cleanse(p, PP_NONCE_LEN);
    nonce_left--;
    return true;
}

const char *pp_envelope_status_str(pp_envelope_status st)
{
    switch (st) {
    case PP_ENVELOPE_OK:
        return "ok";
    case PP_ENVELOPE_ERR_ARGS:
        return "bad argument";
    case PP_ENVELOPE_ERR_AUTH:
        return "data does not authenticate (tampered or misplaced)";
    case PP_ENVELOPE_ERR_WRAP:
        return "the key-encryption key refused the data key";
    case PP_ENVELOPE_ERR_RANDOM:
        return "no random bytes";
    case PP_ENVELOPE_ERR_CRYPTO:
        return "crypto failure";
    }
    return "unknown";
}

void pp_dek_wipe(pp_dek *dek)
{
    if (!dek)
        return;
    OPENSSL_cleanse(dek->bytes, sizeof dek->bytes);
    dek->loaded = false;
}

pp_envelope_status pp_dek_create(hsm_t *hsm, const pp_key_wrapper *w, pp_dek *dek, uint8_t *wrapped,
                                 size_t *wrapped_len, char *err, size_t errlen)
{
    pp_dek_wipe(dek);
    hsm_status hs = hsm_random(hsm, dek->bytes, PP_DEK_LEN);
    if (hs != HSM_OK) {
        pp_dek_wipe(dek);
        snprintf(err, errlen, "no random bytes from the HSM: %s", hsm_status_str(hs));
        return PP_ENVELOPE_ERR_RANDOM;
    }
    *wrapped_len = 0;
    if (!w->wrap(w->ud, dek->bytes, PP_DEK_LEN, wrapped, wrapped_len, err, errlen)) {
        pp_dek_wipe(dek);
        return PP_ENVELOPE_ERR_WRAP;
    }
    dek->loaded = true;
    return PP_ENVELOPE_OK;
}

pp_envelope_status pp_dek_unwrap(const pp_key_wrapper *w, const uint8_t *wrapped,
                                 size_t wrapped_len, pp_dek *dek, char *err, size_t errlen)
{
    uint8_t buf[PP_WRAPPED_MAX];
    size_t n = 0;
    pp_envelope_status st = PP_ENVELOPE_OK;
    pp_dek_wipe(dek);
    if (!w->unwrap(w->ud, wrapped, wrapped_len, buf, &n, err, errlen)) {
        st = PP_ENVELOPE_ERR_WRAP;
        goto out;
    }
    if (n != PP_DEK_LEN) {
        snprintf(err, errlen, "the unwrapped data key has %zu bytes, not %d", n, PP_DEK_LEN);
        st = PP_ENVELOPE_ERR_WRAP;
        goto out;
    }
    memcpy(dek->bytes, buf, PP_DEK_LEN);
    dek->loaded = true;
out:
    OPENSSL_cleanse(buf, sizeof buf);
    return st;
}

pp_envelope_status pp_seal(const pp_dek *dek, const void *aad, size_t aad_len, const void *pt,
                           size_t pt_len, uint8_t **out, size_t *out_len)
{
    pp_envelope_status st = PP_ENVELOPE_ERR_CRYPTO;
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *buf = NULL;
    int n = 0;
    *out = NULL;
    *out_len = 0;
    if (!dek || !dek->loaded || pt_len > PP_SEAL_MAX || aad_len > INT32_MAX)
        return PP_ENVELOPE_ERR_ARGS;
    size_t total = PP_NONCE_LEN + pt_len + PP_TAG_LEN;
    buf = emu_xmalloc(total);
    if (!nonce_next(buf)) {
        st = PP_ENVELOPE_ERR_RANDOM;
        goto out;
    }
    _Static_assert(PP_NONCE_LEN == 12, "GCM's default IV length");
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx || EVP_EncryptInit_ex(ctx, gcm(), NULL, dek->bytes, buf) != 1)
        goto out;
    if (aad_len && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
        goto out;
    if (pt_len && EVP_EncryptUpdate(ctx, buf + PP_NONCE_LEN, &n, pt, (int)pt_len) != 1)
        goto out;
    if (EVP_EncryptFinal_ex(ctx, buf + PP_NONCE_LEN + pt_len, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, PP_TAG_LEN, buf + PP_NONCE_LEN + pt_len) !=
            1)
        goto out;
    *out = buf;
    *out_len = total;
    buf = NULL;
    st = PP_ENVELOPE_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    free(buf);
    return st;
}

pp_envelope_status pp_open(const pp_dek *dek, const void *aad, size_t aad_len, const uint8_t *in,
                           size_t in_len, char **pt, size_t *pt_len)
{
    pp_envelope_status st = PP_ENVELOPE_ERR_CRYPTO;
    EVP_CIPHER_CTX *ctx = NULL;
    char *buf = NULL;
    size_t ct_len = 0;
    int n = 0;
    *pt = NULL;
    *pt_len = 0;
    if (!dek || !dek->loaded || aad_len > INT32_MAX)
        return PP_ENVELOPE_ERR_ARGS;
    if (in_len < PP_NONCE_LEN + PP_TAG_LEN || in_len > PP_SEAL_MAX + PP_NONCE_LEN + PP_TAG_LEN)
        return PP_ENVELOPE_ERR_AUTH;
    ct_len = in_len - PP_NONCE_LEN - PP_TAG_LEN;
    buf = emu_xmalloc(ct_len + 1);
    uint8_t tag[PP_TAG_LEN];
    memcpy(tag, in + in_len - PP_TAG_LEN, PP_TAG_LEN);
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx || EVP_DecryptInit_ex(ctx, gcm(), NULL, dek->bytes, in) != 1)
        goto out;
    if (aad_len && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
        goto out;
    if (ct_len && EVP_DecryptUpdate(ctx, (uint8_t *)buf, &n, in + PP_NONCE_LEN, (int)ct_len) != 1)
        goto out;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, PP_TAG_LEN, tag) != 1)
        goto out;
    if (EVP_DecryptFinal_ex(ctx, (uint8_t *)buf + ct_len, &n) != 1) {
        st = PP_ENVELOPE_ERR_AUTH;
        goto out;
    }
    buf[ct_len] = '\0';
    *pt = buf;
    *pt_len = ct_len;
    buf = NULL;
    st = PP_ENVELOPE_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    if (buf) {
        /* never hand back (or leave behind) plaintext that did not authenticate */
        OPENSSL_cleanse(buf, ct_len + 1);
        free(buf);
    }
    return st;
}

bool pp_record_aad(const char *env, const char *table, const char *id, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s/%s/%s", env, table, id);
    return n > 0 && (size_t)n < outlen;
}

/* ---- platform key ------------------------------------------------------------------------ */

#define PLATFORM_META "pp_platform_key"

bool pp_platform_key_ensure(emu_store *store, hsm_t *hsm, pp_platform_key *out, char *err,
                            size_t errlen)
{
    char hex[2 * HSM_ID_LEN + 8];
    bool have = false;
    memset(out, 0, sizeof *out);
    out->hsm = hsm;
    if (emu_store_meta_get(store, PLATFORM_META, hex, sizeof hex) &&
        strlen(hex) == 2 * HSM_ID_LEN && emu_hex_decode(hex, out->id, HSM_ID_LEN)) {
        unsigned bits;
        have = hsm_rsa_bits(hsm, out->id, &bits) == HSM_OK;
        if (!have)
            emu_log(EMU_LOG_WARN, "pp-env",
                    "platform key missing from the token; making a new one (environments "
                    "encrypted under the old one cannot be opened)");
    }
    if (have)
        return true;
    hsm_status hs = hsm_rsa_generate(hsm, 2048, 0, "cmkemu/pp-platform-key", out->id);
    if (hs != HSM_OK) {
        snprintf(err, errlen, "cannot create the platform key: %s", hsm_status_str(hs));
        return false;
    }
    emu_hex_encode(out->id, HSM_ID_LEN, hex);
    if (!emu_store_own_hsm_object(store, out->id, HSM_ID_LEN, "pp-platform-key", PLATFORM_META,
                                  hex)) {
        hsm_key_destroy(hsm, out->id);
        snprintf(err, errlen, "cannot record the platform key");
        return false;
    }
    return true;
}

static bool platform_wrap(void *ud, const uint8_t *dek, size_t dek_len, uint8_t *out,
                          size_t *out_len, char *err, size_t errlen)
{
    pp_platform_key *k = ud;
    hsm_status hs = hsm_rsa_encrypt(k->hsm, k->id, HSM_RSA_OAEP_SHA256, dek, dek_len, out, out_len);
    if (hs != HSM_OK) {
        snprintf(err, errlen, "the platform key cannot wrap the data key: %s", hsm_status_str(hs));
        return false;
    }
    return true;
}

static bool platform_unwrap(void *ud, const uint8_t *in, size_t in_len, uint8_t *out,
                            size_t *out_len, char *err, size_t errlen)
{
    pp_platform_key *k = ud;
    hsm_status hs = hsm_rsa_decrypt(k->hsm, k->id, HSM_RSA_OAEP_SHA256, in, in_len, out, out_len);
    if (hs != HSM_OK) {
        snprintf(err, errlen, "the platform key cannot unwrap the data key: %s",
                 hsm_status_str(hs));
        return false;
    }
    return true;
}

pp_key_wrapper pp_platform_key_wrapper(pp_platform_key *k)
{
    pp_key_wrapper w = {.wrap = platform_wrap, .unwrap = platform_unwrap, .ud = k};
    return w;
}
