/*
 * hsm: cmkemu's HSM layer. The only module that includes PKCS#11 and libp11 headers.
 *
 * One hsm_t is one logged-in token. Private-key operations (decrypt/unwrap, sign, key
 * wrap for backup) always run inside the token; public-key operations (encrypt/wrap, verify)
 * run in OpenSSL with the public key exported from the token and cached.
 *
 * Keys are addressed by their CKA_ID: 16 random bytes chosen at creation (hsm_key_id).
 * Object handles are cached per CKA_ID, so a crypto call never searches the token once the
 * key has been used (or listed at open).
 *
 * Thread safety: every function may be called from any thread at once on the same hsm_t,
 * except hsm_open/hsm_close. Each call borrows one PKCS#11 session from a pool (sessions are
 * created on demand, so the pool grows to the number of threads in flight).
 *
 * Secrets: PINs are never logged, wiped after use. Error texts never contain key bytes.
 */
#ifndef CMKEMU_HSM_H
#define CMKEMU_HSM_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    HSM_OK = 0,
    HSM_ERR_ARGS,        /* bad argument: wrong length, unknown algorithm, bad key size */
    HSM_ERR_NOT_FOUND,   /* no key with that id in the token */
    HSM_ERR_DECRYPT,     /* ciphertext does not decrypt / padding invalid */
    HSM_ERR_VERIFY,      /* signature does not verify (hsm_verify only) */
    HSM_ERR_MODULE,      /* the PKCS#11 module cannot be loaded or initialised */
    HSM_ERR_TOKEN,       /* token missing, cannot be created, or a PKCS#11 call failed */
    HSM_ERR_PIN,         /* login refused */
    HSM_ERR_IO,          /* data directory / config / pin file problem */
    HSM_ERR_UNSUPPORTED, /* operation not supported by this token or key */
    HSM_ERR_UNAVAILABLE, /* transient: device error, token removed, session lost (after one
                            retry on a new session for generate/decrypt/sign); nothing was
                            changed and the same call may succeed later */
    HSM_ERR_SEALED,      /* a sealed key does not unwrap: its blob damaged or not its key, the
                            token's storage key missing, or (SoftHSM reports a failed unwrap as
                            CKR_GENERAL_ERROR, so the two cannot be told apart) a token
                            failure */
} hsm_status;

const char *hsm_status_str(hsm_status st);
/* The PKCS#11 return code (e.g. "CKR_GENERAL_ERROR") behind the calling thread's last hsm_*
 * call, "no PKCS#11 code" when it failed without one (or succeeded); for error messages and
 * logs, never names key material. */
const char *hsm_last_rv_name(void);

#define HSM_ID_LEN 16

typedef struct hsm hsm_t;

typedef struct {
    /* Directory owned by the emulator. With module_path NULL (SoftHSM default) the layer
     * creates DATA_DIR/hsm/softhsm2.conf, DATA_DIR/hsm/tokens/ and DATA_DIR/hsm/pin (mode 0600,
     * random user PIN; SO PIN in DATA_DIR/hsm/so-pin, 0600) on first use and initialises a token
     * labelled token_label. Nothing outside data_dir is touched. */
    const char *data_dir;
    /* PKCS#11 module path; NULL = SoftHSM (/usr/lib/softhsm/libsofthsm2.so) managed as above.
     * With another module the token labelled token_label must exist and pin must be given. */
    const char *module_path;
    const char *token_label; /* NULL = "cmkemu" */
    const char *pin;         /* NULL = read DATA_DIR/hsm/pin (SoftHSM mode only) */
    /* Reload the module (C_Finalize + C_Initialize + login, see hsm_reload) after this many
     * destroyed objects: SoftHSM keeps every destroyed object in memory until then.
     * 0 = the default (1000, about 0.5 MB); negative = never. */
    long reload_after;
    /* Where the layer reports what no caller's status can carry (a missing storage key, a
     * failed sync); one line, never key material. NULL = stderr. */
    void (*log_error)(const char *line);
} hsm_config;

/* Opens (and on first use creates) the token and logs in. On failure returns a status and
 * writes one human-readable line into err (never containing the PIN); *out is NULL.
 * One hsm_t per process at a time: a PKCS#11 module is initialised process-wide, and in
 * managed mode SOFTHSM2_CONF (process environment) is set to DATA_DIR/hsm/softhsm2.conf; a
 * second hsm_open while one is open fails with HSM_ERR_MODULE. After hsm_close the module is
 * finalised, so a later hsm_open (same or another data_dir) starts afresh.
 * Managed mode with cfg->pin set: that PIN is used (and becomes the user PIN of a token created
 * now); the pin file is then neither read nor written. */
hsm_status hsm_open(const hsm_config *cfg, hsm_t **out, char *err, size_t errlen);
/* Logs out, closes sessions, finalises the module. NULL is a no-op. */
void hsm_close(hsm_t *hsm);

/* --- RSA keys -------------------------------------------------------------------------- */

/* Generates an RSA key pair as token objects: private key CKA_SENSITIVE, CKA_EXTRACTABLE
 * (only so it can leave wrapped under the backup key, never in clear), CKA_PRIVATE.
 * bits: 2048, 3072 or 4096; public_exponent 0 = 65537. label is CKA_LABEL (<= 200 chars).
 * Writes the new CKA_ID to id_out. */
hsm_status hsm_rsa_generate(hsm_t *hsm, unsigned bits, unsigned long public_exponent,
                            const char *label, uint8_t id_out[HSM_ID_LEN]);

/* Imports an RSA private key given as big-endian unsigned components (as in a JWK after
 * base64url decoding). n, e, d are required; p, q, dp, dq, qi may be NULL/0 (then computed
 * if possible, otherwise HSM_ERR_ARGS). Modulus must be 2048..4096 bits. */
typedef struct {
    const uint8_t *n, *e, *d, *p, *q, *dp, *dq, *qi;
    size_t n_len, e_len, d_len, p_len, q_len, dp_len, dq_len, qi_len;
} hsm_rsa_components;
hsm_status hsm_rsa_import(hsm_t *hsm, const hsm_rsa_components *c, const char *label,
                          uint8_t id_out[HSM_ID_LEN]);

/* --- sealed keys ------------------------------------------------------------------------ */

/* A sealed key lives outside the token: the token keeps one AES-256 storage key (a token
 * object, never extractable) and the caller's store keeps the key's blob, its private key
 * wrapped under that storage key (CKM_AES_KEY_WRAP_PAD) and its public components; never key
 * bytes in clear. The first operation that needs the private key unwraps the blob into a
 * session object (CKA_TOKEN false) and keeps its handle; after a module reload, the next use
 * unwraps it again. The token's object count, and with it SoftHSM's start-up and search
 * cost, no longer grows with the number of keys.
 * The _sealed variants create like their token counterparts and give *sealed (malloc'd, the
 * caller frees and stores it). At start-up the caller hands every stored blob back with
 * hsm_key_load_sealed. Every other function takes a sealed key's id like a token key's;
 * hsm_key_destroy forgets it (the caller deletes its blob); hsm_key_foreach lists only token
 * objects. */
hsm_status hsm_rsa_generate_sealed(hsm_t *hsm, unsigned bits, unsigned long public_exponent,
                                   const char *label, uint8_t id_out[HSM_ID_LEN], uint8_t **sealed,
                                   size_t *sealed_len);
hsm_status hsm_rsa_import_sealed(hsm_t *hsm, const hsm_rsa_components *c, const char *label,
                                 uint8_t id_out[HSM_ID_LEN], uint8_t **sealed, size_t *sealed_len);
/* Restores a backup blob (hsm_key_export_wrapped) as a sealed key. */
hsm_status hsm_key_import_wrapped_sealed(hsm_t *hsm, const uint8_t *blob, size_t blob_len,
                                         const char *label, uint8_t id_out[HSM_ID_LEN],
                                         uint8_t **sealed, size_t *sealed_len);
/* Makes a stored sealed key known (no token operation; the blob is copied). n and e (the
 * caller's record of the key's public components; n NULL = not checked) must be the blob's,
 * else HSM_ERR_SEALED and nothing is registered (a blob swapped or copied in the store). A
 * malformed blob -> HSM_ERR_ARGS; one whose wrapped part was altered is found out when it is
 * first unsealed (HSM_ERR_SEALED then, from the operation that needed it). */
hsm_status hsm_key_load_sealed(hsm_t *hsm, const uint8_t id[HSM_ID_LEN], const uint8_t *sealed,
                               size_t sealed_len, const uint8_t *n, size_t n_len, const uint8_t *e,
                               size_t e_len);

/* Whether the token holds its storage key (never creates it): HSM_OK, or HSM_ERR_NOT_FOUND.
 * For fsck: sealed keys cannot be unwrapped without it. */
hsm_status hsm_storage_key_present(hsm_t *hsm);

/* Exports the public key: *n and *e are malloc'd big-endian bytes without leading zero bytes;
 * the caller frees them. */
hsm_status hsm_rsa_public(hsm_t *hsm, const uint8_t id[HSM_ID_LEN], uint8_t **n, size_t *n_len,
                          uint8_t **e, size_t *e_len);

/* Modulus size in bits. */
hsm_status hsm_rsa_bits(hsm_t *hsm, const uint8_t id[HSM_ID_LEN], unsigned *bits);

/* Destroys both objects of the pair and drops them from the cache. NOT_FOUND if neither
 * existed. */
hsm_status hsm_key_destroy(hsm_t *hsm, const uint8_t id[HSM_ID_LEN]);

/* Calls fn once for every key pair id present in the token as token objects (used at start-up
 * to reconcile with the store and to fill the handle cache; sealed keys and their session
 * objects are not listed). An id of which only one half (private or
 * public object) exists is listed too. fn runs with no lock held and may call hsm functions. */
hsm_status hsm_key_foreach(hsm_t *hsm, void (*fn)(const uint8_t id[HSM_ID_LEN], void *ud),
                           void *ud);

typedef enum {
    HSM_RSA_OAEP_SHA1 = 1, /* Key Vault "RSA-OAEP": SHA-1, MGF1-SHA1, empty label */
    HSM_RSA_OAEP_SHA256,   /* "RSA-OAEP-256": SHA-256, MGF1-SHA256, empty label */
    HSM_RSA_PKCS1,         /* "RSA1_5" */
} hsm_rsa_enc_alg;

/* Public-key encryption (wrap/encrypt) in OpenSSL with the cached public key.
 * out must have room for the modulus size (<= 512 bytes); *out_len is set. */
hsm_status hsm_rsa_encrypt(hsm_t *hsm, const uint8_t id[HSM_ID_LEN], hsm_rsa_enc_alg alg,
                           const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len);

/* Private-key decryption (unwrap/decrypt) inside the token. OAEP-SHA256 runs as raw RSA
 * (CKM_RSA_X_509) in the token plus constant-time OAEP decoding in OpenSSL, because SoftHSM
 * refuses CKM_RSA_PKCS_OAEP with SHA-256. in_len must equal the modulus size.
 * out must have room for 512 bytes; *out_len is set. Bad ciphertext -> HSM_ERR_DECRYPT. */
hsm_status hsm_rsa_decrypt(hsm_t *hsm, const uint8_t id[HSM_ID_LEN], hsm_rsa_enc_alg alg,
                           const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len);

typedef enum {
    HSM_RS256 = 1,
    HSM_RS384,
    HSM_RS512,
    HSM_PS256, /* PSS, MGF1 with the same hash, salt length = hash length */
    HSM_PS384,
    HSM_PS512,
} hsm_sig_alg;

/* Digest length an algorithm expects (32/48/64). */
size_t hsm_sig_digest_len(hsm_sig_alg alg);

/* Signs a digest inside the token. digest_len must equal hsm_sig_digest_len(alg), else ARGS.
 * sig must have room for 512 bytes. */
hsm_status hsm_sign(hsm_t *hsm, const uint8_t id[HSM_ID_LEN], hsm_sig_alg alg,
                    const uint8_t *digest, size_t digest_len, uint8_t *sig, size_t *sig_len);

/* Verifies with the public key. HSM_OK = valid, HSM_ERR_VERIFY = invalid. */
hsm_status hsm_verify(hsm_t *hsm, const uint8_t id[HSM_ID_LEN], hsm_sig_alg alg,
                      const uint8_t *digest, size_t digest_len, const uint8_t *sig, size_t sig_len);

/* --- backup ----------------------------------------------------------------------------- */

/* Exports the private key wrapped (CKM_AES_KEY_WRAP_PAD) under the token's backup key (an
 * AES-256 token object created at first use, never extractable). *blob is malloc'd; it
 * carries the wrapped private key and the public components, never key bytes in clear. */
hsm_status hsm_key_export_wrapped(hsm_t *hsm, const uint8_t id[HSM_ID_LEN], uint8_t **blob,
                                  size_t *blob_len);
/* Unwraps a blob made by hsm_key_export_wrapped of the same token into a new key pair with a
 * new CKA_ID (id_out). A tampered blob -> HSM_ERR_DECRYPT. */
hsm_status hsm_key_import_wrapped(hsm_t *hsm, const uint8_t *blob, size_t blob_len,
                                  const char *label, uint8_t id_out[HSM_ID_LEN]);

/* --- misc ------------------------------------------------------------------------------- */

/* Random bytes from the token (C_GenerateRandom). */
hsm_status hsm_random(hsm_t *hsm, uint8_t *buf, size_t len);

/* Finalises and re-initialises the PKCS#11 module and logs in again, with every operation
 * excluded meanwhile; cached handles are dropped (keys are found again on first use). It
 * frees what SoftHSM keeps of destroyed objects and clears a token state that SoftHSM
 * marked invalid. Runs by itself after cfg->reload_after destroyed objects, and once before
 * a retry when a key creation or destruction fails with CKR_GENERAL_ERROR or
 * CKR_FUNCTION_FAILED (at most every 5 s). Operations running meanwhile wait; none fails. */
hsm_status hsm_reload(hsm_t *hsm);

/* Counters for tests and benchmarks. */
typedef struct {
    unsigned long find_objects;           /* C_FindObjectsInit calls since open */
    unsigned long sessions;               /* sessions opened since open */
    unsigned long module_reloads;         /* module reloads since open (hsm_reload) */
    unsigned long module_heals;           /* of which after a general token failure */
    unsigned long destroyed_since_reload; /* objects destroyed since the last (re)load */
} hsm_stats;
void hsm_get_stats(hsm_t *hsm, hsm_stats *out);

/* Path of the module in use and token label (strings owned by hsm, valid until hsm_close). */
const char *hsm_module_path(const hsm_t *hsm);
const char *hsm_token_label(const hsm_t *hsm);

#endif
