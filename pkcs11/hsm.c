/*
 * hsm.c: cmkemu's HSM layer (see hsm.h for the contract).
 *
 * Split of work between libp11 and raw PKCS#11:
 *   - libp11 loads the module (C_Initialize), enumerates slots, creates the SoftHSM token
 *     (PKCS11_init_token / PKCS11_init_pin) and logs in (PKCS11_open_session + PKCS11_login).
 *   - Everything else goes through the module's own CK_FUNCTION_LIST, obtained by dlopen()ing
 *     the same path and calling C_GetFunctionList. dlopen returns the already loaded (and
 *     already initialised) library, and PKCS#11 login state belongs to the application, not
 *     to a session, so the raw sessions we open are logged in. We keep one raw "anchor" session
 *     open for the whole life of hsm_t so the login can never lapse when pooled sessions close.
 *
 * Process-wide state: a PKCS#11 module is initialised once per process and SoftHSM reads its
 * configuration from the SOFTHSM2_CONF environment variable at C_Initialize. So only one hsm_t
 * may be open per process at a time (enforced: a second hsm_open fails with HSM_ERR_MODULE), and
 * in managed mode hsm_open sets SOFTHSM2_CONF (process-global; it is left set after open).
 * hsm_close finalises the module (C_Finalize through PKCS11_CTX_unload), so a later hsm_open,
 * even on another data directory, re-reads the configuration.
 *
 * Lock order (outer first): anchor_lock -> backup_lock -> pool_lock. cache_lock is never held
 * across a PKCS#11 call and never together with another lock. pool_lock is never held across a
 * PKCS#11 call.
 */
#include "hsm.h"
#include "hsm_openssl.h"
#include "hsm_testing.h"

#include <libp11.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef CMKEMU_SOFTHSM_MODULE
#define CMKEMU_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#endif

#define HSM_MAX_MOD_BYTES 512         /* 4096-bit modulus */
#define HSM_MAX_EXP_BYTES 8           /* public exponent fits an unsigned long */
#define HSM_MAX_LABEL 200             /* CKA_LABEL of keys */
#define HSM_PIN_MAX 256               /* PIN buffer incl. NUL */

/* The policy of every RSA private key the emulator makes (generated, imported, unwrapped from
 * a backup or a sealed blob): private and sensitive, extractable only wrapped (backup,
 * sealing), for decrypt, unwrap and sign. tok and yes point to CK_BBOOLs. */
#define RSA_PRIVATE_KEY_POLICY(tok, yes)                                                        \
    {CKA_TOKEN, (tok), sizeof(CK_BBOOL)}, {CKA_PRIVATE, (yes), sizeof(CK_BBOOL)},              \
        {CKA_SENSITIVE, (yes), sizeof(CK_BBOOL)}, {CKA_EXTRACTABLE, (yes), sizeof(CK_BBOOL)},  \
        {CKA_DECRYPT, (yes), sizeof(CK_BBOOL)}, {CKA_UNWRAP, (yes), sizeof(CK_BBOOL)},          \
        {CKA_SIGN, (yes), sizeof(CK_BBOOL)}
#define HSM_RELOAD_AFTER_DEFAULT 1000 /* destroyed objects between module reloads */
#define HSM_HEAL_INTERVAL 5           /* seconds between healing reloads at most */
#define HSM_PIN_RANDOM_BYTES 16       /* generated PINs: 32 hex characters */
#define HSM_TOKEN_LABEL_MAX 32        /* CK_TOKEN_INFO.label */
#define HSM_POOL_MAX_IDLE 256         /* idle sessions kept; more are closed on return */
#define HSM_BACKUP_LABEL "cmkemu-backup-key"
#define HSM_STORAGE_LABEL "cmkemu-storage-key"

/* The token's two AES-256 wrapping keys: one for Key Vault backup blobs (they leave the
 * emulator), one for sealed keys at rest (they stay in the caller's store). */
typedef enum { KEK_BACKUP = 0, KEK_STORAGE = 1 } kek_kind;
#define HSM_BLOB_MAGIC "CMKB1"
#define HSM_BLOB_MAGIC_LEN 5
#define HSM_BLOB_MECH_KWP 1 /* blob byte 5: wrapped with CKM_AES_KEY_WRAP_PAD */
#define HSM_BLOB_MAX_WRAPPED 8192
#define HSM_LIBP11_REASON_MAX 1024 /* libp11's own reason codes start at 1025 */

/* ---------------------------------------------------------------------------------------- */
/* CK_RV names and the one CK_RV -> hsm_status conversion                                    */

/* clang-format off */
#define R(x) {x, #x}
/* clang-format on */
static const struct {
    CK_RV rv;
    const char *name;
} ckr_names[] = {
    R(CKR_OK),
    R(CKR_CANCEL),
    R(CKR_HOST_MEMORY),
    R(CKR_SLOT_ID_INVALID),
    R(CKR_GENERAL_ERROR),
    R(CKR_FUNCTION_FAILED),
    R(CKR_ARGUMENTS_BAD),
    R(CKR_NO_EVENT),
    R(CKR_NEED_TO_CREATE_THREADS),
    R(CKR_CANT_LOCK),
    R(CKR_ATTRIBUTE_READ_ONLY),
    R(CKR_ATTRIBUTE_SENSITIVE),
    R(CKR_ATTRIBUTE_TYPE_INVALID),
    R(CKR_ATTRIBUTE_VALUE_INVALID),
    R(CKR_ACTION_PROHIBITED),
    R(CKR_DATA_INVALID),
    R(CKR_DATA_LEN_RANGE),
    R(CKR_DEVICE_ERROR),
    R(CKR_DEVICE_MEMORY),
    R(CKR_DEVICE_REMOVED),
    R(CKR_ENCRYPTED_DATA_INVALID),
    R(CKR_ENCRYPTED_DATA_LEN_RANGE),
    R(CKR_FUNCTION_CANCELED),
    R(CKR_FUNCTION_NOT_PARALLEL),
    R(CKR_FUNCTION_NOT_SUPPORTED),
    R(CKR_KEY_HANDLE_INVALID),
    R(CKR_KEY_SIZE_RANGE),
    R(CKR_KEY_TYPE_INCONSISTENT),
    R(CKR_KEY_NOT_NEEDED),
    R(CKR_KEY_CHANGED),
    R(CKR_KEY_NEEDED),
    R(CKR_KEY_INDIGESTIBLE),
    R(CKR_KEY_FUNCTION_NOT_PERMITTED),
    R(CKR_KEY_NOT_WRAPPABLE),
    R(CKR_KEY_UNEXTRACTABLE),
    R(CKR_MECHANISM_INVALID),
    R(CKR_MECHANISM_PARAM_INVALID),
    R(CKR_OBJECT_HANDLE_INVALID),
    R(CKR_OPERATION_ACTIVE),
    R(CKR_OPERATION_NOT_INITIALIZED),
    R(CKR_PIN_INCORRECT),
    R(CKR_PIN_INVALID),
    R(CKR_PIN_LEN_RANGE),
    R(CKR_PIN_EXPIRED),
    R(CKR_PIN_LOCKED),
    R(CKR_SESSION_CLOSED),
    R(CKR_SESSION_COUNT),
    R(CKR_SESSION_HANDLE_INVALID),
    R(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
    R(CKR_SESSION_READ_ONLY),
    R(CKR_SESSION_EXISTS),
    R(CKR_SESSION_READ_ONLY_EXISTS),
    R(CKR_SESSION_READ_WRITE_SO_EXISTS),
    R(CKR_SIGNATURE_INVALID),
    R(CKR_SIGNATURE_LEN_RANGE),
    R(CKR_TEMPLATE_INCOMPLETE),
    R(CKR_TEMPLATE_INCONSISTENT),
    R(CKR_TOKEN_NOT_PRESENT),
    R(CKR_TOKEN_NOT_RECOGNIZED),
    R(CKR_TOKEN_WRITE_PROTECTED),
    R(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
    R(CKR_UNWRAPPING_KEY_SIZE_RANGE),
    R(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
    R(CKR_USER_ALREADY_LOGGED_IN),
    R(CKR_USER_NOT_LOGGED_IN),
    R(CKR_USER_PIN_NOT_INITIALIZED),
    R(CKR_USER_TYPE_INVALID),
    R(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
    R(CKR_USER_TOO_MANY_TYPES),
    R(CKR_WRAPPED_KEY_INVALID),
    R(CKR_WRAPPED_KEY_LEN_RANGE),
    R(CKR_WRAPPING_KEY_HANDLE_INVALID),
    R(CKR_WRAPPING_KEY_SIZE_RANGE),
    R(CKR_WRAPPING_KEY_TYPE_INCONSISTENT),
    R(CKR_RANDOM_SEED_NOT_SUPPORTED),
    R(CKR_RANDOM_NO_RNG),
    R(CKR_DOMAIN_PARAMS_INVALID),
    R(CKR_CURVE_NOT_SUPPORTED),
    R(CKR_BUFFER_TOO_SMALL),
    R(CKR_SAVED_STATE_INVALID),
    R(CKR_INFORMATION_SENSITIVE),
    R(CKR_STATE_UNSAVEABLE),
    R(CKR_CRYPTOKI_NOT_INITIALIZED),
    R(CKR_CRYPTOKI_ALREADY_INITIALIZED),
    R(CKR_MUTEX_BAD),
    R(CKR_MUTEX_NOT_LOCKED),
    R(CKR_NEW_PIN_MODE),
    R(CKR_NEXT_OTP),
    R(CKR_EXCEEDED_MAX_ITERATIONS),
    R(CKR_FIPS_SELF_TEST_FAILED),
    R(CKR_LIBRARY_LOAD_FAILED),
    R(CKR_PIN_TOO_WEAK),
    R(CKR_PUBLIC_KEY_INVALID),
    R(CKR_FUNCTION_REJECTED),
};
#undef R

/* Marks "no CK_RV known" (e.g. a libp11 failure without a PKCS#11 reason). */
#define HSM_RV_UNKNOWN ((CK_RV)-1)

static const char *ckr_name(CK_RV rv)
{
    for (size_t i = 0; i < sizeof(ckr_names) / sizeof(ckr_names[0]); i++) {
        if (ckr_names[i].rv == rv)
            return ckr_names[i].name;
    }
    return rv == HSM_RV_UNKNOWN ? "unknown error" : "CKR_(unknown)";
}

static int ckr_known(CK_RV rv)
{
    for (size_t i = 0; i < sizeof(ckr_names) / sizeof(ckr_names[0]); i++) {
        if (ckr_names[i].rv == rv)
            return 1;
    }
    return 0;
}

/* Which hsm operation a CK_RV came from: the same code means different things in decrypt
 * (bad ciphertext) and elsewhere (bad argument). */
typedef enum {
    OP_GENERIC = 0,
    OP_DECRYPT, /* C_Decrypt of client ciphertext */
    OP_UNWRAP,  /* C_UnwrapKey of a backup blob */
} rv_context;

/* The CK_RV of this thread's last failed conversion (for hsm_last_rv_name). */
static _Thread_local CK_RV last_failed_rv = CKR_OK;

const char *hsm_last_rv_name(void)
{
    return last_failed_rv == CKR_OK ? "no PKCS#11 code" : ckr_name(last_failed_rv);
}

/* The one place that converts a CK_RV into an hsm_status. */
static hsm_status rv_status(CK_RV rv, rv_context ctx)
{
    if (rv != CKR_OK)
        last_failed_rv = rv;
    switch (rv) {
    case CKR_OK:
        return HSM_OK;
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
    case CKR_WRAPPED_KEY_INVALID:
    case CKR_WRAPPED_KEY_LEN_RANGE:
        return HSM_ERR_DECRYPT;
    case CKR_DATA_INVALID:
    case CKR_DATA_LEN_RANGE:
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
        /* In a decrypt/unwrap these are how tokens (SoftHSM among them) report a ciphertext
         * or blob that does not decode; elsewhere they are argument or token failures. */
        if (ctx == OP_DECRYPT || ctx == OP_UNWRAP)
            return HSM_ERR_DECRYPT;
        return (rv == CKR_DATA_INVALID || rv == CKR_DATA_LEN_RANGE) ? HSM_ERR_ARGS : HSM_ERR_TOKEN;
    case CKR_SIGNATURE_INVALID:
    case CKR_SIGNATURE_LEN_RANGE:
        return HSM_ERR_VERIFY;
    case CKR_ARGUMENTS_BAD:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_ATTRIBUTE_TYPE_INVALID:
    case CKR_TEMPLATE_INCOMPLETE:
    case CKR_TEMPLATE_INCONSISTENT:
    case CKR_KEY_SIZE_RANGE:
    case CKR_DOMAIN_PARAMS_INVALID:
    case CKR_PUBLIC_KEY_INVALID:
        return HSM_ERR_ARGS;
    case CKR_KEY_HANDLE_INVALID:
    case CKR_OBJECT_HANDLE_INVALID:
        return HSM_ERR_NOT_FOUND;
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_FUNCTION_NOT_SUPPORTED:
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_NOT_WRAPPABLE:
    case CKR_KEY_UNEXTRACTABLE:
    case CKR_RANDOM_NO_RNG:
    case CKR_CURVE_NOT_SUPPORTED:
        return HSM_ERR_UNSUPPORTED;
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_USER_PIN_NOT_INITIALIZED:
        return HSM_ERR_PIN;
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_SESSION_COUNT:
    case CKR_FUNCTION_CANCELED:
        return HSM_ERR_UNAVAILABLE; /* transient: the same call may work later */
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_CRYPTOKI_ALREADY_INITIALIZED:
    case CKR_LIBRARY_LOAD_FAILED:
    case CKR_NEED_TO_CREATE_THREADS:
    case CKR_CANT_LOCK:
        return HSM_ERR_MODULE;
    default:
        return HSM_ERR_TOKEN;
    }
}

/* A handle that no longer names an object (destroyed behind our back): drop it from the cache
 * and look again. */
static int rv_is_stale_handle(CK_RV rv)
{
    return rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID;
}

/* The session (and, when the token went away, every other open one) is gone: the pool's idle
 * sessions are dropped and a call may be retried once on a new session. */
static int rv_session_lost(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
           rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT;
}

enum { RETRY_STALE = 1, RETRY_SESSION = 2 };

/* Why one more attempt of a private-key operation may succeed, 0 when it cannot. */
static int retry_reason(CK_RV rv)
{
    if (rv_is_stale_handle(rv))
        return RETRY_STALE;
    return rv_session_lost(rv) ? RETRY_SESSION : 0;
}

/* Codes after which a session is known to be idle and healthy, so it can go back to the pool.
 * Anything else (device errors, an operation possibly left active, ...) closes the session. */
static int rv_session_reusable(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
    case CKR_ARGUMENTS_BAD:
    case CKR_ATTRIBUTE_SENSITIVE:
    case CKR_ATTRIBUTE_TYPE_INVALID:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_DATA_INVALID:
    case CKR_DATA_LEN_RANGE:
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
    case CKR_KEY_HANDLE_INVALID:
    case CKR_KEY_SIZE_RANGE:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_KEY_NOT_WRAPPABLE:
    case CKR_KEY_UNEXTRACTABLE:
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_SIGNATURE_INVALID:
    case CKR_SIGNATURE_LEN_RANGE:
    case CKR_TEMPLATE_INCOMPLETE:
    case CKR_TEMPLATE_INCONSISTENT:
    case CKR_WRAPPED_KEY_INVALID:
    case CKR_WRAPPED_KEY_LEN_RANGE:
    case CKR_WRAPPING_KEY_HANDLE_INVALID:
    case CKR_UNWRAPPING_KEY_HANDLE_INVALID:
        return 1;
    default:
        return 0;
    }
}

const char *hsm_status_str(hsm_status st)
{
    switch (st) {
    case HSM_OK:
        return "ok";
    case HSM_ERR_ARGS:
        return "bad argument";
    case HSM_ERR_NOT_FOUND:
        return "key not found";
    case HSM_ERR_DECRYPT:
        return "decryption failed";
    case HSM_ERR_VERIFY:
        return "signature invalid";
    case HSM_ERR_MODULE:
        return "PKCS#11 module error";
    case HSM_ERR_TOKEN:
        return "token error";
    case HSM_ERR_PIN:
        return "login refused";
    case HSM_ERR_IO:
        return "data directory error";
    case HSM_ERR_UNSUPPORTED:
        return "not supported";
    case HSM_ERR_UNAVAILABLE:
        return "HSM unavailable";
    case HSM_ERR_SEALED:
        return "sealed key does not unwrap (blob damaged or not its key, storage key missing, "
               "or a token failure)";
    }
    return "unknown status";
}

/* ---------------------------------------------------------------------------------------- */
/* The handle: types                                                                         */

/* One key pair in the handle cache. priv or pub may be CK_INVALID_HANDLE when only half of
 * the pair exists in the token. pkey is the public key (owned), NULL until an operation needs
 * it (key_pkey_attach).
 * A sealed key (sealed != NULL) lives outside the token: sealed is its blob (wrapped under
 * KEK_STORAGE, owned), the entry is the only record of it here and stays through reloads and
 * listings. Its priv is a session object of the anchor session, made on first use
 * (key_unseal) and CK_INVALID_HANDLE until then or after it went stale. */
typedef struct cache_entry {
    struct cache_entry *next;
    uint8_t id[HSM_ID_LEN];
    CK_OBJECT_HANDLE priv, pub;
    EVP_PKEY *pkey;
    unsigned bits;
    uint8_t *sealed;
    size_t sealed_len;
} cache_entry;

/* What a caller gets out of the cache: a copy, valid after the lock is released. */
typedef struct {
    CK_OBJECT_HANDLE priv, pub;
    EVP_PKEY *pkey; /* up-referenced when asked for, else NULL; free with key_ref_cleanup */
    unsigned bits;
    int sealed; /* a sealed key: its public key is read from its blob, not from an object */
} key_ref;

struct hsm {
    /* Set by hsm_open, read-only afterwards (fl may be swapped by tests while idle). */
    PKCS11_CTX *ctx;
    int ctx_loaded;
    PKCS11_SLOT *slots;
    unsigned nslots;
    PKCS11_SLOT *slot;
    int logged_in;
    void *dl;
    CK_FUNCTION_LIST *module_fl; /* the module's own table */
    CK_FUNCTION_LIST *fl;        /* the table every call goes through */
    CK_SLOT_ID slot_id;
    CK_SESSION_HANDLE anchor; /* keeps the login alive; never used for operations */
    int have_anchor;
    char module_path[PATH_MAX];
    char tokens_dir[PATH_MAX];           /* managed mode: SoftHSM's token directory; "" otherwise */
    atomic_int sealed_loaded;            /* a sealed key was handed back (hsm_key_load_sealed) */
    void (*log_error)(const char *line); /* hsm_config.log_error */
    char token_label[HSM_TOKEN_LABEL_MAX + 1];
    int locks_ready;

    /* Session pool: pool[0..pool_len) are idle sessions. Guarded by pool_lock. */
    pthread_mutex_t pool_lock;
    CK_SESSION_HANDLE *pool;
    size_t pool_len, pool_cap;

    /* Handle cache: chained hash table keyed by CKA_ID. Guarded by cache_lock. gen counts
     * evictions: a token search that started before an eviction must not cache its result,
     * or a key destroyed meanwhile could stay usable for public-key operations. */
    pthread_rwlock_t cache_lock;
    cache_entry **buckets;
    size_t nbuckets, count;
    unsigned long gen;

    /* The AES-256 wrapping keys (kek_kind), found or created on first need. Guarded by
     * backup_lock. */
    pthread_mutex_t backup_lock;
    CK_OBJECT_HANDLE kek[2];

    /* Serialises the use of the anchor session, which holds the sealed keys' live objects
     * (session objects live as long as the session that made them). */
    pthread_mutex_t anchor_lock;

    atomic_ulong find_objects;
    atomic_ulong sessions;

    /* Module reload (see "Module reload" below). Every public operation holds module_lock
     * for reading; a reload holds it for writing (writer-preferring, so a reload is not
     * starved by a steady stream of operations). */
    pthread_rwlock_t module_lock;
    int module_lock_ready;
    char *pin;                  /* user PIN for the re-login (secure heap, cleansed at close) */
    unsigned long reload_after; /* destroyed objects before a reload; 0 = never */
    atomic_ulong garbage;       /* objects destroyed since the last (re)load */
    atomic_int reload_claimed;  /* one reloader at a time */
    atomic_ulong reloads;       /* reloads since open (both kinds) */
    atomic_ulong heals;         /* of which after a token failure */
    atomic_long last_heal;      /* CLOCK_MONOTONIC seconds of the last healing reload */
};

/* The one mutable global: 1 while an hsm_t is open in this process (see the file comment). */
static atomic_int g_hsm_open;

static void err_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void err_set(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* The CK_RV behind the last libp11 failure, if libp11 recorded one (its reason code is then
 * the CK_RV; its own reasons are >= 1025). */
static CK_RV libp11_last_rv(void)
{
    unsigned long e = ERR_peek_last_error();
    unsigned long reason = ERR_GET_REASON(e);

    if (e != 0 && reason < HSM_LIBP11_REASON_MAX && ckr_known((CK_RV)reason))
        return (CK_RV)reason;
    return HSM_RV_UNKNOWN;
}

/* ---------------------------------------------------------------------------------------- */
/* Managed SoftHSM: data directory, config file, PIN files                                   */

typedef struct {
    char hsm_dir[PATH_MAX];
    char conf[PATH_MAX];
    char tokens[PATH_MAX];
    char pin[PATH_MAX];
    char so_pin[PATH_MAX];
} managed_paths;

static hsm_status path_join(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);

    return (n < 0 || (size_t)n >= cap) ? HSM_ERR_IO : HSM_OK;
}

/* Creates dir with mode 0700 if missing; an existing directory is accepted as is. */
static hsm_status dir_ensure(const char *dir, char *err, size_t errlen)
{
    struct stat sb;

    if (mkdir(dir, 0700) == 0) {
        if (chmod(dir, 0700) != 0) {
            err_set(err, errlen, "chmod %s: %s", dir, strerror(errno));
            return HSM_ERR_IO;
        }
        return HSM_OK;
    }
    if (errno != EEXIST) {
        err_set(err, errlen, "mkdir %s: %s", dir, strerror(errno));
        return HSM_ERR_IO;
    }
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        err_set(err, errlen, "%s exists and is not a directory", dir);
        return HSM_ERR_IO;
    }
    return HSM_OK;
}

static int fsync_dir_of(const char *path)
{
    char dir[PATH_MAX];
    char *slash;
    int fd, rc;

    if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir))
        return -1;
    slash = strrchr(dir, '/');
    if (!slash)
        return 0;
    *slash = '\0';
    fd = open(dir[0] ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

/* Writes data to path atomically (path.tmp + rename), mode 0600, synced. */
static hsm_status file_write_atomic(const char *path, const void *data, size_t len, char *err,
                                    size_t errlen)
{
    hsm_status st = HSM_OK;
    char tmp[PATH_MAX];
    const uint8_t *p = data;
    int fd = -1;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        err_set(err, errlen, "path too long: %s", path);
        return HSM_ERR_IO;
    }
    (void)unlink(tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || fchmod(fd, 0600) != 0) {
        err_set(err, errlen, "create %s: %s", tmp, strerror(errno));
        st = HSM_ERR_IO;
        goto out;
    }
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            err_set(err, errlen, "write %s: %s", tmp, strerror(errno));
            st = HSM_ERR_IO;
            goto out;
        }
        p += w;
        len -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        err_set(err, errlen, "sync %s: %s", tmp, strerror(errno));
        st = HSM_ERR_IO;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        err_set(err, errlen, "rename %s: %s", tmp, strerror(errno));
        st = HSM_ERR_IO;
        goto out;
    }
    (void)fsync_dir_of(path);
out:
    if (fd >= 0)
        close(fd);
    if (st != HSM_OK)
        (void)unlink(tmp);
    return st;
}

/* Reads a PIN file into pin (NUL-terminated, trailing whitespace removed). *found = 0 when the
 * file does not exist (not an error). The PIN never appears in err. */
static hsm_status pin_file_read(const char *path, char pin[HSM_PIN_MAX], int *found, char *err,
                                size_t errlen)
{
    hsm_status st = HSM_OK;
    size_t len = 0;
    int fd;

    *found = 0;
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return HSM_OK;
        err_set(err, errlen, "open %s: %s", path, strerror(errno));
        return HSM_ERR_IO;
    }
    for (;;) {
        ssize_t r;
        if (len >= HSM_PIN_MAX - 1) {
            err_set(err, errlen, "%s: PIN longer than %d bytes", path, HSM_PIN_MAX - 1);
            st = HSM_ERR_IO;
            goto out;
        }
        r = read(fd, pin + len, HSM_PIN_MAX - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            err_set(err, errlen, "read %s: %s", path, strerror(errno));
            st = HSM_ERR_IO;
            goto out;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    while (len > 0 && (pin[len - 1] == '\n' || pin[len - 1] == '\r' || pin[len - 1] == ' ' ||
                       pin[len - 1] == '\t'))
        len--;
    pin[len] = '\0';
    if (len == 0 || memchr(pin, '\0', len) != NULL) {
        err_set(err, errlen, "%s: empty or malformed PIN file", path);
        st = HSM_ERR_IO;
        goto out;
    }
    *found = 1;
out:
    close(fd);
    if (st != HSM_OK)
        OPENSSL_cleanse(pin, HSM_PIN_MAX);
    return st;
}

/* Makes a random PIN (hex) and stores it in path (0600). */
static hsm_status pin_create(const char *path, char pin[HSM_PIN_MAX], char *err, size_t errlen)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t raw[HSM_PIN_RANDOM_BYTES];
    hsm_status st;

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        err_set(err, errlen, "RAND_bytes failed");
        return HSM_ERR_IO;
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        pin[2 * i] = hex[raw[i] >> 4];
        pin[2 * i + 1] = hex[raw[i] & 0xf];
    }
    pin[2 * sizeof(raw)] = '\0';
    OPENSSL_cleanse(raw, sizeof(raw));
    st = file_write_atomic(path, pin, 2 * HSM_PIN_RANDOM_BYTES, err, errlen);
    if (st != HSM_OK)
        OPENSSL_cleanse(pin, HSM_PIN_MAX);
    return st;
}

/* Creates DATA_DIR/hsm{,/tokens}, writes softhsm2.conf and points SOFTHSM2_CONF at it. */
static hsm_status managed_prepare(const char *data_dir, managed_paths *mp, char *err, size_t errlen)
{
    char abs_data[PATH_MAX];
    char conf[PATH_MAX + 256];
    hsm_status st;
    int n;

    st = dir_ensure(data_dir, err, errlen);
    if (st != HSM_OK)
        return st;
    if (!realpath(data_dir, abs_data)) {
        err_set(err, errlen, "realpath %s: %s", data_dir, strerror(errno));
        return HSM_ERR_IO;
    }
    if (strpbrk(abs_data, "\n\r#") != NULL) {
        err_set(err, errlen, "data directory path contains a newline or '#'");
        return HSM_ERR_IO;
    }
    if (path_join(mp->hsm_dir, sizeof(mp->hsm_dir), abs_data, "hsm") != HSM_OK ||
        path_join(mp->conf, sizeof(mp->conf), mp->hsm_dir, "softhsm2.conf") != HSM_OK ||
        path_join(mp->tokens, sizeof(mp->tokens), mp->hsm_dir, "tokens") != HSM_OK ||
        path_join(mp->pin, sizeof(mp->pin), mp->hsm_dir, "pin") != HSM_OK ||
        path_join(mp->so_pin, sizeof(mp->so_pin), mp->hsm_dir, "so-pin") != HSM_OK) {
        err_set(err, errlen, "data directory path too long");
        return HSM_ERR_IO;
    }
    st = dir_ensure(mp->hsm_dir, err, errlen);
    if (st == HSM_OK)
        st = dir_ensure(mp->tokens, err, errlen);
    if (st != HSM_OK)
        return st;
    n = snprintf(conf, sizeof(conf),
                 "# Written by cmkemu at every start; edits are lost.\n"
                 "directories.tokendir = %s\n"
                 "objectstore.backend = file\n"
                 "log.level = ERROR\n"
                 "slots.removable = false\n",
                 mp->tokens);
    if (n < 0 || (size_t)n >= sizeof(conf)) {
        err_set(err, errlen, "data directory path too long");
        return HSM_ERR_IO;
    }
    st = file_write_atomic(mp->conf, conf, (size_t)n, err, errlen);
    if (st != HSM_OK)
        return st;
    if (setenv("SOFTHSM2_CONF", mp->conf, 1) != 0) {
        err_set(err, errlen, "setenv SOFTHSM2_CONF: %s", strerror(errno));
        return HSM_ERR_IO;
    }
    return HSM_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Session pool                                                                              */

static CK_RV session_get(hsm_t *h, CK_SESSION_HANDLE *s)
{
    CK_RV rv;

    pthread_mutex_lock(&h->pool_lock);
    if (h->pool_len > 0) {
        *s = h->pool[--h->pool_len];
        pthread_mutex_unlock(&h->pool_lock);
        return CKR_OK;
    }
    pthread_mutex_unlock(&h->pool_lock);
    rv = h->fl->C_OpenSession(h->slot_id, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s);
    if (rv == CKR_OK)
        atomic_fetch_add(&h->sessions, 1);
    return rv;
}

/* Closes every idle session of the pool (after a lost session: they predate the loss). */
static void pool_drain(hsm_t *h)
{
    CK_SESSION_HANDLE *old;
    size_t n;

    pthread_mutex_lock(&h->pool_lock);
    old = h->pool;
    n = h->pool_len;
    h->pool = NULL;
    h->pool_len = h->pool_cap = 0;
    pthread_mutex_unlock(&h->pool_lock);
    for (size_t i = 0; i < n; i++)
        (void)h->fl->C_CloseSession(old[i]);
    free(old);
}

/* Returns s to the pool, or closes it when last_rv says it may be unhealthy. */
static void session_put(hsm_t *h, CK_SESSION_HANDLE s, CK_RV last_rv)
{
    if (rv_session_lost(last_rv))
        pool_drain(h);
    if (rv_session_reusable(last_rv)) {
        pthread_mutex_lock(&h->pool_lock);
        if (h->pool_len == h->pool_cap && h->pool_cap < HSM_POOL_MAX_IDLE) {
            size_t ncap = h->pool_cap ? h->pool_cap * 2 : 8;
            CK_SESSION_HANDLE *np = realloc(h->pool, ncap * sizeof(*np));
            if (np) {
                h->pool = np;
                h->pool_cap = ncap;
            }
        }
        if (h->pool_len < h->pool_cap) {
            h->pool[h->pool_len++] = s;
            pthread_mutex_unlock(&h->pool_lock);
            return;
        }
        pthread_mutex_unlock(&h->pool_lock);
    }
    (void)h->fl->C_CloseSession(s);
}

/* Destroys one object; a destroyed object is counted towards the next module reload. */
static CK_RV obj_destroy(hsm_t *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
    CK_RV rv = h->fl->C_DestroyObject(s, o);
    if (rv == CKR_OK)
        atomic_fetch_add(&h->garbage, 1);
    return rv;
}

/* ---------------------------------------------------------------------------------------- */
/* Object search                                                                             */

/* Finds all objects matching tmpl. *out is malloc'd (NULL when none); caller frees. */
static CK_RV objects_find(hsm_t *h, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG ntmpl,
                          CK_OBJECT_HANDLE **out, size_t *count)
{
    CK_OBJECT_HANDLE *list = NULL;
    size_t len = 0, cap = 0;
    CK_RV rv, rv2;

    *out = NULL;
    *count = 0;
    atomic_fetch_add(&h->find_objects, 1);
    rv = h->fl->C_FindObjectsInit(s, tmpl, ntmpl);
    if (rv != CKR_OK)
        return rv;
    for (;;) {
        CK_ULONG got = 0;
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            CK_OBJECT_HANDLE *nl = realloc(list, ncap * sizeof(*nl));
            if (!nl) {
                rv = CKR_HOST_MEMORY;
                break;
            }
            list = nl;
            cap = ncap;
        }
        rv = h->fl->C_FindObjects(s, list + len, (CK_ULONG)(cap - len), &got);
        if (rv != CKR_OK || got == 0)
            break;
        len += got;
    }
    rv2 = h->fl->C_FindObjectsFinal(s);
    if (rv == CKR_OK)
        rv = rv2;
    if (rv != CKR_OK) {
        free(list);
        return rv;
    }
    if (len == 0) {
        free(list);
        list = NULL;
    }
    *out = list;
    *count = len;
    return CKR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Public keys                                                                               */

static size_t be_strip(const uint8_t **p, size_t len)
{
    while (len > 0 && **p == 0) {
        (*p)++;
        len--;
    }
    return len;
}

/* hsm_openssl.h */
EVP_PKEY *hsm_pkey_from_ne(const uint8_t *n, size_t n_len, const uint8_t *e, size_t e_len)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *pctx = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    BIGNUM *bn = NULL, *be = NULL;

    bn = BN_bin2bn(n, (int)n_len, NULL);
    be = BN_bin2bn(e, (int)e_len, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (!bn || !be || !bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
        goto out;
    params = OSSL_PARAM_BLD_to_param(bld);
    pctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (!params || !pctx || EVP_PKEY_fromdata_init(pctx) <= 0 ||
        EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
out:
    EVP_PKEY_CTX_free(pctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    ERR_clear_error();
    return pkey;
}

/* Modulus bits of big-endian n without leading zero bytes (0 for none). */
static unsigned be_bits(const uint8_t *n, size_t n_len)
{
    unsigned top, lead = 0;

    if (!n_len)
        return 0;
    top = n[0];
    while (lead < 8 && !(top & 0x80u)) {
        top <<= 1;
        lead++;
    }
    return (unsigned)(n_len * 8) - lead;
}

/* One token object as read for the cache. */
typedef struct {
    uint8_t id[HSM_ID_LEN];
    CK_OBJECT_HANDLE handle;
    CK_OBJECT_CLASS cls;
    EVP_PKEY *pkey; /* NULL when read without it (obj_read_lazy) */
    unsigned bits;
} obj_info;

static int attr_present(const CK_ATTRIBUTE *a)
{
    return a->ulValueLen != CK_UNAVAILABLE_INFORMATION;
}

/* Reads class, key type, id, modulus and exponent of one object. *usable = 1 for an RSA public
 * or private key with a 16-byte CKA_ID and a modulus of at most 4096 bits; then oi is filled
 * and oi->pkey is owned by the caller. The CK_RV is only for session health. */
static CK_RV obj_read_opt(hsm_t *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, obj_info *oi,
                          int *usable, int want_pkey)
{
    CK_OBJECT_CLASS cls = CK_UNAVAILABLE_INFORMATION;
    CK_KEY_TYPE kt = CK_UNAVAILABLE_INFORMATION;
    uint8_t id[HSM_ID_LEN + 1];
    uint8_t n[HSM_MAX_MOD_BYTES + 1];
    uint8_t e[HSM_MAX_EXP_BYTES + 8];
    CK_ATTRIBUTE a[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_ID, id, sizeof(id)},
        {CKA_MODULUS, n, sizeof(n)},
        {CKA_PUBLIC_EXPONENT, e, sizeof(e)},
    };
    const uint8_t *np = n, *ep = e;
    size_t nl, el;
    CK_RV rv;

    *usable = 0;
    memset(oi, 0, sizeof(*oi));
    rv = h->fl->C_GetAttributeValue(s, o, a, sizeof(a) / sizeof(a[0]));
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_BUFFER_TOO_SMALL &&
        rv != CKR_ATTRIBUTE_SENSITIVE)
        return rv;
    for (size_t i = 0; i < sizeof(a) / sizeof(a[0]); i++) {
        if (!attr_present(&a[i]))
            return CKR_OK;
    }
    if ((cls != CKO_PRIVATE_KEY && cls != CKO_PUBLIC_KEY) || kt != CKK_RSA ||
        a[2].ulValueLen != HSM_ID_LEN || a[3].ulValueLen > HSM_MAX_MOD_BYTES ||
        a[4].ulValueLen > HSM_MAX_EXP_BYTES)
        return CKR_OK;
    nl = be_strip(&np, a[3].ulValueLen);
    el = be_strip(&ep, a[4].ulValueLen);
    if (nl == 0 || el == 0)
        return CKR_OK;
    if (want_pkey) {
        oi->pkey = hsm_pkey_from_ne(np, nl, ep, el);
        if (!oi->pkey)
            return CKR_OK;
        oi->bits = (unsigned)EVP_PKEY_get_bits(oi->pkey);
    } else {
        oi->bits = be_bits(np, nl);
    }
    memcpy(oi->id, id, HSM_ID_LEN);
    oi->handle = o;
    oi->cls = cls;
    *usable = 1;
    return CKR_OK;
}

static CK_RV obj_read(hsm_t *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, obj_info *oi, int *usable)
{
    return obj_read_opt(h, s, o, oi, usable, 1);
}

/* ---------------------------------------------------------------------------------------- */
/* Handle cache                                                                              */

static size_t cache_slot(const uint8_t id[HSM_ID_LEN], size_t nbuckets)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = (v << 8) | id[i];
    v ^= v >> 29;
    v *= 0xbf58476d1ce4e5b9ULL;
    v ^= v >> 32;
    return (size_t)(v & (nbuckets - 1));
}

static void cache_entry_free(cache_entry *e)
{
    if (!e)
        return;
    EVP_PKEY_free(e->pkey);
    free(e->sealed);
    free(e);
}

static void cache_buckets_free(cache_entry **buckets, size_t nbuckets)
{
    if (!buckets)
        return;
    for (size_t i = 0; i < nbuckets; i++) {
        cache_entry *e = buckets[i];
        while (e) {
            cache_entry *next = e->next;
            cache_entry_free(e);
            e = next;
        }
    }
    free(buckets);
}

static cache_entry *cache_find_inlock(hsm_t *h, const uint8_t id[HSM_ID_LEN])
{
    cache_entry *e;

    if (!h->buckets)
        return NULL;
    for (e = h->buckets[cache_slot(id, h->nbuckets)]; e; e = e->next) {
        if (memcmp(e->id, id, HSM_ID_LEN) == 0)
            return e;
    }
    return NULL;
}

static void cache_grow_inlock(hsm_t *h)
{
    size_t nn = h->nbuckets ? h->nbuckets * 2 : 64;
    cache_entry **nb = calloc(nn, sizeof(*nb));

    if (!nb)
        return; /* keep the old table; chains just get longer */
    for (size_t i = 0; i < h->nbuckets; i++) {
        cache_entry *e = h->buckets[i];
        while (e) {
            cache_entry *next = e->next;
            size_t slot = cache_slot(e->id, nn);
            e->next = nb[slot];
            nb[slot] = e;
            e = next;
        }
    }
    free(h->buckets);
    h->buckets = nb;
    h->nbuckets = nn;
}

static unsigned long cache_gen(hsm_t *h)
{
    unsigned long gen;

    pthread_rwlock_rdlock(&h->cache_lock);
    gen = h->gen;
    pthread_rwlock_unlock(&h->cache_lock);
    return gen;
}

static void anchor_destroy(hsm_t *h, CK_OBJECT_HANDLE o);

/* Links e in (cache_lock held for writing), growing the table as needed. Returns what the
 * caller frees after unlocking (cache_release): NULL, the entry e replaced, or e itself when it
 * is not taken. A sealed entry is only replaced by another blob: a token entry for its id is
 * not taken, and the same blob handed back again (a domain reopened on a running HSM) leaves
 * the entry as it is, live object included. */
static cache_entry *cache_link_inlock(hsm_t *h, cache_entry *e)
{
    cache_entry **pp;

    if (!h->buckets || h->count >= h->nbuckets)
        cache_grow_inlock(h);
    if (!h->buckets)
        return e;
    for (pp = &h->buckets[cache_slot(e->id, h->nbuckets)]; *pp; pp = &(*pp)->next) {
        cache_entry *old = *pp;
        if (memcmp(old->id, e->id, HSM_ID_LEN) != 0)
            continue;
        if (old->sealed && (!e->sealed || (old->sealed_len == e->sealed_len &&
                                           !memcmp(old->sealed, e->sealed, e->sealed_len))))
            return e;
        e->next = old->next;
        *pp = e;
        return old;
    }
    e->next = NULL;
    *pp = e;
    h->count++;
    return NULL;
}

/* Frees a list of entries taken out of the cache (lock released), destroying the live object
 * of a sealed one: nothing else knows it. */
static void cache_release(hsm_t *h, cache_entry *list)
{
    while (list) {
        cache_entry *next = list->next;
        if (list->sealed && list->priv != CK_INVALID_HANDLE)
            anchor_destroy(h, list->priv);
        cache_entry_free(list);
        list = next;
    }
}

/* Takes ownership of e and links it in (see cache_link_inlock). With check_gen, e is dropped
 * instead when an eviction happened since gen was read (e may describe a destroyed key).
 * 1 = e is in the cache (or an identical sealed entry is), 0 = dropped. */
static int cache_put(hsm_t *h, cache_entry *e, int check_gen, unsigned long gen)
{
    cache_entry *gone;
    int kept;

    pthread_rwlock_wrlock(&h->cache_lock);
    gone = check_gen && h->gen != gen ? e : cache_link_inlock(h, e);
    /* an identical sealed entry already there counts as stored */
    kept = gone != e || (e->sealed && cache_find_inlock(h, e->id) != NULL);
    pthread_rwlock_unlock(&h->cache_lock);
    if (gone)
        gone->next = NULL;
    cache_release(h, gone);
    return kept;
}

/* Unlinks the entry of id (cache_lock held for writing); NULL if there is none. */
static cache_entry *cache_unlink_inlock(hsm_t *h, const uint8_t id[HSM_ID_LEN])
{
    cache_entry **pp, *gone;

    h->gen++;
    if (!h->buckets)
        return NULL;
    for (pp = &h->buckets[cache_slot(id, h->nbuckets)]; *pp; pp = &(*pp)->next) {
        if (memcmp((*pp)->id, id, HSM_ID_LEN) == 0) {
            gone = *pp;
            *pp = gone->next;
            gone->next = NULL;
            h->count--;
            return gone;
        }
    }
    return NULL;
}

/* Drops what the cache knows of id's token objects (a handle went stale, or a token key is
 * being destroyed). A sealed key keeps its entry and loses only its live object, and only when
 * that is still the stale one (another thread may have unsealed it again meanwhile; that
 * object must stay known, or it would outlive a destroy): the next use unseals it again.
 * stale CK_INVALID_HANDLE = whatever it holds. */
static void cache_evict(hsm_t *h, const uint8_t id[HSM_ID_LEN], CK_OBJECT_HANDLE stale)
{
    cache_entry *gone = NULL, *e;

    pthread_rwlock_wrlock(&h->cache_lock);
    e = cache_find_inlock(h, id);
    if (e && e->sealed) {
        if (stale == CK_INVALID_HANDLE || e->priv == stale) {
            h->gen++;
            e->priv = e->pub = CK_INVALID_HANDLE;
        }
    } else {
        gone = cache_unlink_inlock(h, id);
    }
    pthread_rwlock_unlock(&h->cache_lock);
    cache_entry_free(gone);
}

/* Unlinks every token entry (cache_lock held for writing) and returns them as a list for the
 * caller to free after unlocking. Sealed entries stay (the cache is their only record here);
 * cool drops their live objects (the module that held them was finalised). */
static cache_entry *cache_take_token_entries_inlock(hsm_t *h, int cool)
{
    cache_entry *gone = NULL;

    h->gen++;
    for (size_t i = 0; h->buckets && i < h->nbuckets; i++) {
        cache_entry **pp = &h->buckets[i];
        while (*pp) {
            cache_entry *e = *pp;
            if (e->sealed) {
                if (cool)
                    e->priv = e->pub = CK_INVALID_HANDLE;
                pp = &e->next;
                continue;
            }
            *pp = e->next;
            e->next = gone;
            gone = e;
            h->count--;
        }
    }
    return gone;
}

static void key_ref_fill(key_ref *r, const cache_entry *e, int want_pkey)
{
    r->priv = e->priv;
    r->pub = e->pub;
    r->bits = e->bits;
    r->sealed = e->sealed != NULL;
    r->pkey = NULL;
    if (want_pkey && e->pkey && EVP_PKEY_up_ref(e->pkey) == 1)
        r->pkey = e->pkey;
}

static void key_ref_cleanup(key_ref *r)
{
    EVP_PKEY_free(r->pkey);
    r->pkey = NULL;
}

/* Builds a cache entry from the objects found for one id (takes the pkeys of infos). */
static cache_entry *cache_entry_from(const uint8_t id[HSM_ID_LEN], obj_info *infos, size_t n)
{
    cache_entry *e = calloc(1, sizeof(*e));
    obj_info *pub = NULL, *priv = NULL;

    if (!e)
        return NULL;
    memcpy(e->id, id, HSM_ID_LEN);
    for (size_t i = 0; i < n; i++) {
        if (infos[i].cls == CKO_PRIVATE_KEY && !priv)
            priv = &infos[i];
        else if (infos[i].cls == CKO_PUBLIC_KEY && !pub)
            pub = &infos[i];
    }
    if (!pub && !priv) {
        free(e);
        return NULL;
    }
    e->priv = priv ? priv->handle : CK_INVALID_HANDLE;
    e->pub = pub ? pub->handle : CK_INVALID_HANDLE;
    /* The public object's modulus is authoritative when both exist. */
    if (pub) {
        e->pkey = pub->pkey;
        pub->pkey = NULL;
    } else {
        e->pkey = priv->pkey;
        priv->pkey = NULL;
    }
    e->bits = pub ? pub->bits : priv->bits;
    return e;
}

/* Searches the token for the pair with this id (one C_FindObjects by CKA_ID) and caches it. */
static hsm_status key_lookup_token(hsm_t *h, const uint8_t id[HSM_ID_LEN], int want_pkey,
                                   key_ref *r)
{
    CK_BBOOL on_token = CK_TRUE; /* never a sealed key's session object */
    CK_ATTRIBUTE tmpl[] = {{CKA_ID, (void *)id, HSM_ID_LEN},
                           {CKA_TOKEN, &on_token, sizeof(on_token)}};
    CK_OBJECT_HANDLE *found = NULL;
    obj_info infos[4];
    size_t nfound = 0, ninfos = 0;
    CK_SESSION_HANDLE s;
    cache_entry *e = NULL;
    hsm_status st = HSM_OK;
    unsigned long gen = cache_gen(h);
    CK_RV rv;

    memset(infos, 0, sizeof(infos));
    rv = session_get(h, &s);
    if (rv != CKR_OK)
        return rv_status(rv, OP_GENERIC);
    rv = objects_find(h, s, tmpl, 2, &found, &nfound);
    for (size_t i = 0; rv == CKR_OK && i < nfound && ninfos < 4; i++) {
        int usable = 0;
        rv = obj_read(h, s, found[i], &infos[ninfos], &usable);
        if (rv == CKR_OK && usable)
            ninfos++;
    }
    session_put(h, s, rv);
    if (rv != CKR_OK) {
        st = rv_status(rv, OP_GENERIC);
        goto out;
    }
    e = ninfos ? cache_entry_from(id, infos, ninfos) : NULL;
    if (!e) {
        st = HSM_ERR_NOT_FOUND;
        goto out;
    }
    key_ref_fill(r, e, want_pkey);
    cache_put(h, e, 1, gen);
out:
    for (size_t i = 0; i < ninfos; i++)
        EVP_PKEY_free(infos[i].pkey);
    free(found);
    return st;
}

static hsm_status sealed_pkey(hsm_t *h, const uint8_t id[HSM_ID_LEN], EVP_PKEY **out);

/* Builds the OpenSSL public key of a cached key from its handle (no search), or a sealed key's
 * from its blob: *out, owned by the caller. */
static hsm_status key_pkey_read(hsm_t *h, const uint8_t id[HSM_ID_LEN], const key_ref *r,
                                EVP_PKEY **out)
{
    CK_OBJECT_HANDLE o = r->pub != CK_INVALID_HANDLE ? r->pub : r->priv;
    CK_SESSION_HANDLE s;
    obj_info oi;
    int usable = 0;
    CK_RV rv;

    *out = NULL;
    if (r->sealed)
        return sealed_pkey(h, id, out);
    rv = session_get(h, &s);
    if (rv != CKR_OK)
        return rv_status(rv, OP_GENERIC);
    rv = obj_read(h, s, o, &oi, &usable);
    session_put(h, s, rv);
    if (rv != CKR_OK || !usable || memcmp(oi.id, id, HSM_ID_LEN) != 0) {
        EVP_PKEY_free(oi.pkey);
        return rv != CKR_OK ? rv_status(rv, OP_GENERIC) : HSM_ERR_NOT_FOUND;
    }
    *out = oi.pkey;
    return HSM_OK;
}

/* An entry filled by hsm_key_foreach or cache_new_pair has handles but no public key (to keep
 * memory flat with many keys): builds it on first use and keeps it. r->pkey is set on
 * success. */
static hsm_status key_pkey_attach(hsm_t *h, const uint8_t id[HSM_ID_LEN], key_ref *r)
{
    EVP_PKEY *pkey;
    cache_entry *e;
    hsm_status st = key_pkey_read(h, id, r, &pkey);

    if (st != HSM_OK)
        return st;
    pthread_rwlock_wrlock(&h->cache_lock);
    e = cache_find_inlock(h, id);
    if (e && !e->pkey) {
        e->pkey = pkey;
        pkey = NULL;
    }
    if (e && e->pkey && EVP_PKEY_up_ref(e->pkey) == 1)
        r->pkey = e->pkey;
    pthread_rwlock_unlock(&h->cache_lock);
    if (!r->pkey) { /* evicted meanwhile: use ours for this call */
        r->pkey = pkey;
        pkey = NULL;
    }
    EVP_PKEY_free(pkey);
    return HSM_OK;
}

static void put_u16(uint8_t *p, size_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static size_t get_u16(const uint8_t *p)
{
    return ((size_t)p[0] << 8) | p[1];
}

typedef struct {
    const uint8_t *n, *e, *w;
    size_t n_len, e_len, w_len;
} blob_parts;

static int blob_parse(const uint8_t *blob, size_t len, blob_parts *bp)
{
    size_t off = HSM_BLOB_MAGIC_LEN + 1;

    if (len < off + 6 || memcmp(blob, HSM_BLOB_MAGIC, HSM_BLOB_MAGIC_LEN) != 0 ||
        blob[HSM_BLOB_MAGIC_LEN] != HSM_BLOB_MECH_KWP)
        return 0;
    bp->n_len = get_u16(blob + off);
    off += 2;
    if (bp->n_len == 0 || bp->n_len > HSM_MAX_MOD_BYTES || len - off < bp->n_len + 2)
        return 0;
    bp->n = blob + off;
    off += bp->n_len;
    bp->e_len = get_u16(blob + off);
    off += 2;
    if (bp->e_len == 0 || bp->e_len > HSM_MAX_EXP_BYTES || len - off < bp->e_len + 2)
        return 0;
    bp->e = blob + off;
    off += bp->e_len;
    bp->w_len = get_u16(blob + off);
    off += 2;
    if (bp->w_len == 0 || bp->w_len > HSM_BLOB_MAX_WRAPPED || len - off != bp->w_len)
        return 0;
    bp->w = blob + off;
    return 1;
}

static hsm_status kek_get(hsm_t *h, kek_kind kind, int create, CK_OBJECT_HANDLE *out);

/* A blob's public key (not authenticated by the wrap: hsm_key_load_sealed checks it against
 * the caller's record, and an unseal against the unwrapped key). NULL if malformed. */
static EVP_PKEY *blob_pkey(const uint8_t *blob, size_t blob_len)
{
    blob_parts bp;

    if (!blob_parse(blob, blob_len, &bp))
        return NULL;
    bp.n_len = be_strip(&bp.n, bp.n_len);
    bp.e_len = be_strip(&bp.e, bp.e_len);
    return bp.n_len && bp.e_len ? hsm_pkey_from_ne(bp.n, bp.n_len, bp.e, bp.e_len) : NULL;
}

/* A sealed key's public key, from its blob (no unsealing). */
static hsm_status sealed_pkey(hsm_t *h, const uint8_t id[HSM_ID_LEN], EVP_PKEY **out)
{
    cache_entry *e;

    pthread_rwlock_rdlock(&h->cache_lock);
    e = cache_find_inlock(h, id);
    *out = e && e->sealed ? blob_pkey(e->sealed, e->sealed_len) : NULL;
    pthread_rwlock_unlock(&h->cache_lock);
    return *out ? HSM_OK : e ? HSM_ERR_SEALED : HSM_ERR_NOT_FOUND;
}

/* What key_get gives besides the handles: no public key; the public key, kept in the cache
 * from then on (wrap, verify: used again); or the public key for this call only, leaving the
 * cache as it was (the one export at create and import: a bulk import must not keep one per
 * version). */
typedef enum { PKEY_NONE = 0, PKEY_KEEP = 1, PKEY_PEEK = 2 } pkey_want;

/* Registers a sealed key (a copy of its blob), without a live object. 1 = done. */
static int cache_put_sealed(hsm_t *h, const uint8_t id[HSM_ID_LEN], const uint8_t *sealed,
                            size_t sealed_len)
{
    blob_parts bp;
    cache_entry *e;

    if (!blob_parse(sealed, sealed_len, &bp))
        return 0;
    bp.n_len = be_strip(&bp.n, bp.n_len);
    e = calloc(1, sizeof(*e));
    if (!e)
        return 0;
    e->sealed = malloc(sealed_len);
    if (!e->sealed) {
        free(e);
        return 0;
    }
    memcpy(e->sealed, sealed, sealed_len);
    e->sealed_len = sealed_len;
    memcpy(e->id, id, HSM_ID_LEN);
    e->priv = e->pub = CK_INVALID_HANDLE;
    e->bits = be_bits(bp.n, bp.n_len);
    return cache_put(h, e, 0, 0);
}

/* Destroys a session object of the anchor session (gone with it if the anchor is). */
static void anchor_destroy(hsm_t *h, CK_OBJECT_HANDLE o)
{
    pthread_mutex_lock(&h->anchor_lock);
    if (h->have_anchor)
        (void)obj_destroy(h, h->anchor, o);
    pthread_mutex_unlock(&h->anchor_lock);
}

static void objects_destroy_quiet(hsm_t *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a,
                                  CK_OBJECT_HANDLE b);

/* Unwraps a blob's private key (under the wrapping key kind) into a new object of session s
 * with CKA_ID id (and CKA_LABEL label, if any), as a token object or not, and checks that its
 * public key is the blob's. On success *priv and *pkey (its public key, the caller's). A blob
 * that is malformed, does not unwrap or does not match -> HSM_ERR_DECRYPT, nothing left.
 * *rv: the last PKCS#11 code (for the session's health). */
static hsm_status blob_unwrap(hsm_t *h, CK_SESSION_HANDLE s, kek_kind kind, const uint8_t *blob,
                              size_t blob_len, CK_BBOOL on_token, const uint8_t id[HSM_ID_LEN],
                              const char *label, CK_OBJECT_HANDLE *priv, EVP_PKEY **pkey, CK_RV *rv)
{
    CK_MECHANISM mech = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt = CKK_RSA;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        RSA_PRIVATE_KEY_POLICY(&on_token, &yes),
        {CKA_ID, (void *)id, HSM_ID_LEN},
        {CKA_LABEL, (void *)label, label ? strlen(label) : 0},
    };
    CK_ULONG nt = sizeof(t) / sizeof(t[0]) - (label ? 0 : 1);
    CK_OBJECT_HANDLE kek, o = CK_INVALID_HANDLE;
    EVP_PKEY *claimed; /* the public key the blob says it holds */
    blob_parts bp;
    obj_info oi;
    int usable = 0;
    hsm_status st;

    memset(&oi, 0, sizeof(oi));
    *priv = CK_INVALID_HANDLE;
    *pkey = NULL;
    *rv = CKR_OK;
    /* Any damage to the blob reads as "does not decrypt", whatever part was touched. */
    claimed = blob_pkey(blob, blob_len);
    if (!claimed || !blob_parse(blob, blob_len, &bp)) {
        EVP_PKEY_free(claimed);
        return HSM_ERR_DECRYPT;
    }
    st = kek_get(h, kind, 1, &kek);
    if (st != HSM_OK)
        goto out;
    *rv = h->fl->C_UnwrapKey(s, &mech, kek, (CK_BYTE_PTR)bp.w, (CK_ULONG)bp.w_len, t, nt, &o);
    if (*rv != CKR_OK) {
        st = rv_status(*rv, OP_UNWRAP);
        goto out;
    }
    /* The public part of the blob must be the unwrapped key's own. */
    *rv = obj_read(h, s, o, &oi, &usable);
    if (*rv != CKR_OK || !usable || EVP_PKEY_eq(oi.pkey, claimed) != 1) {
        st = *rv != CKR_OK ? rv_status(*rv, OP_GENERIC) : HSM_ERR_DECRYPT;
        objects_destroy_quiet(h, s, o, CK_INVALID_HANDLE);
        goto out;
    }
    *priv = o;
    *pkey = oi.pkey;
    oi.pkey = NULL;
out:
    EVP_PKEY_free(oi.pkey);
    EVP_PKEY_free(claimed);
    ERR_clear_error();
    return st;
}

/* Makes a sealed key live: unwraps its blob under KEK_STORAGE into a session object of the
 * anchor session (blob_unwrap checks its public key against the blob's) and keeps the handle,
 * if the entry still holds the same blob (it may have been handed back with another meanwhile:
 * then once more with that one). Two threads may unseal the same key at once; the second
 * destroys its object. A blob that does not unwrap or match is a damaged store:
 * HSM_ERR_SEALED, nothing kept. */
static hsm_status key_unseal(hsm_t *h, const uint8_t id[HSM_ID_LEN], pkey_want want, key_ref *r)
{
    hsm_status st = HSM_ERR_NOT_FOUND;

    for (int attempt = 0; attempt < 2; attempt++) {
        CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
        uint8_t *blob = NULL;
        size_t blob_len = 0;
        int found = 0, cold = 0, installed = 0;
        EVP_PKEY *pkey = NULL;
        cache_entry *e;
        CK_RV rv;

        pthread_rwlock_rdlock(&h->cache_lock);
        e = cache_find_inlock(h, id);
        if (e) {
            found = 1;
            cold = e->sealed && e->priv == CK_INVALID_HANDLE;
            if (!cold)
                key_ref_fill(r, e, want != PKEY_NONE);
            else if ((blob = malloc(e->sealed_len)) != NULL) {
                memcpy(blob, e->sealed, e->sealed_len);
                blob_len = e->sealed_len;
            }
        }
        pthread_rwlock_unlock(&h->cache_lock);
        if (!found)
            return HSM_ERR_NOT_FOUND;
        if (!cold)
            return HSM_OK; /* made live by another thread meanwhile */
        if (!blob)
            return HSM_ERR_TOKEN; /* no memory */
        pthread_mutex_lock(&h->anchor_lock);
        if (h->have_anchor)
            st = blob_unwrap(h, h->anchor, KEK_STORAGE, blob, blob_len, CK_FALSE, id, NULL, &priv,
                             &pkey, &rv);
        else
            st = HSM_ERR_UNAVAILABLE; /* a reload failed to open it again */
        pthread_mutex_unlock(&h->anchor_lock);
        if (st == HSM_ERR_DECRYPT || st == HSM_ERR_ARGS)
            st = HSM_ERR_SEALED;
        if (st != HSM_OK) {
            free(blob);
            return st;
        }
        st = HSM_ERR_NOT_FOUND; /* unless the entry is still there */
        pthread_rwlock_wrlock(&h->cache_lock);
        e = cache_find_inlock(h, id);
        if (e && e->sealed && e->sealed_len == blob_len && memcmp(e->sealed, blob, blob_len) == 0) {
            if (e->priv == CK_INVALID_HANDLE) {
                e->priv = priv;
                priv = CK_INVALID_HANDLE;
                e->bits = (unsigned)EVP_PKEY_get_bits(pkey);
                if (want == PKEY_KEEP && !e->pkey) {
                    e->pkey = pkey;
                    pkey = NULL;
                }
            }
            key_ref_fill(r, e, want != PKEY_NONE);
            installed = 1;
            st = HSM_OK;
        } else if (e && e->sealed) {
            st = HSM_ERR_SEALED; /* another blob now: unseal that one */
        }
        pthread_rwlock_unlock(&h->cache_lock);
        free(blob);
        if (installed && want == PKEY_PEEK && !r->pkey) {
            r->pkey = pkey;
            pkey = NULL;
        }
        if (priv != CK_INVALID_HANDLE)
            anchor_destroy(h, priv);
        EVP_PKEY_free(pkey);
        if (installed || st == HSM_ERR_NOT_FOUND)
            return st;
    }
    return st;
}

/* Looks a key up: in the cache, else in the token (then cached). need_priv: the caller uses
 * the private key's handle (a cold sealed key is unsealed for it). */
static hsm_status key_get(hsm_t *h, const uint8_t id[HSM_ID_LEN], pkey_want want, int need_priv,
                          key_ref *r)
{
    cache_entry *e;
    hsm_status st;

    memset(r, 0, sizeof(*r));
    pthread_rwlock_rdlock(&h->cache_lock);
    e = cache_find_inlock(h, id);
    /* a sealed key is unsealed only for its private key: size and public key are in its blob */
    int cold = need_priv && e && e->sealed && e->priv == CK_INVALID_HANDLE;
    if (e && !cold)
        key_ref_fill(r, e, want != PKEY_NONE);
    pthread_rwlock_unlock(&h->cache_lock);
    if (cold) {
        st = key_unseal(h, id, want, r);
        if (st != HSM_OK)
            return st;
    } else if (!e) {
        st = key_lookup_token(h, id, want == PKEY_KEEP, r);
        if (st != HSM_OK || want != PKEY_PEEK)
            return st;
    }
    if (want == PKEY_NONE || r->pkey)
        return HSM_OK;
    return want == PKEY_KEEP ? key_pkey_attach(h, id, r) : key_pkey_read(h, id, r, &r->pkey);
}

/* Caches a pair we just created: its handle and size only, as the start-up path does. The
 * OpenSSL public key is built again on the first operation that needs it (key_pkey_attach).
 * Keeping it for every version cost about 0.9 KB each (9 MB for a 10,000-version import,
 * measured with massif) for keys that may never be used again. */
static void cache_new_pair(hsm_t *h, CK_SESSION_HANDLE s, const uint8_t id[HSM_ID_LEN],
                           CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub, EVP_PKEY *pkey)
{
    cache_entry *e = calloc(1, sizeof(*e));
    obj_info oi;
    int usable = 0;

    if (!e) {
        EVP_PKEY_free(pkey);
        return; /* the next use searches */
    }
    if (!pkey && obj_read(h, s, pub, &oi, &usable) == CKR_OK && usable)
        pkey = oi.pkey;
    if (!pkey) {
        free(e);
        return;
    }
    memcpy(e->id, id, HSM_ID_LEN);
    e->priv = priv;
    e->pub = CK_INVALID_HANDLE; /* no public token object: see hsm_rsa_generate */
    e->pkey = NULL;
    e->bits = (unsigned)EVP_PKEY_get_bits(pkey);
    EVP_PKEY_free(pkey);
    cache_put(h, e, 0, 0);
}

static hsm_status blob_make(hsm_t *h, kek_kind kind, CK_OBJECT_HANDLE priv, const EVP_PKEY *pkey,
                            uint8_t **blob, size_t *blob_len);

/* Finishes a key pair just made in session s. A token key goes into the cache. A sealed one
 * (sealed != NULL; priv is then a session object) is wrapped under KEK_STORAGE into *sealed
 * (malloc'd), registered, and its object destroyed: its first use unseals it into the anchor
 * session. pkey (taken; NULL = read it from the objects) is its public key. */
static hsm_status pair_finish(hsm_t *h, CK_SESSION_HANDLE s, const uint8_t id[HSM_ID_LEN],
                              CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub, EVP_PKEY *pkey,
                              uint8_t **sealed, size_t *sealed_len)
{
    obj_info oi;
    int usable = 0;
    hsm_status st;

    if (!sealed) {
        cache_new_pair(h, s, id, priv, pub, pkey);
        return HSM_OK;
    }
    if (!pkey && obj_read(h, s, pub != CK_INVALID_HANDLE ? pub : priv, &oi, &usable) == CKR_OK &&
        usable)
        pkey = oi.pkey;
    st = pkey ? blob_make(h, KEK_STORAGE, priv, pkey, sealed, sealed_len) : HSM_ERR_TOKEN;
    (void)obj_destroy(h, s, priv);
    EVP_PKEY_free(pkey);
    if (st == HSM_OK && !cache_put_sealed(h, id, *sealed, *sealed_len)) {
        free(*sealed);
        *sealed = NULL;
        *sealed_len = 0;
        st = HSM_ERR_TOKEN;
    }
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Open / close                                                                              */

static PKCS11_SLOT *slot_find_token(PKCS11_SLOT *slots, unsigned n, const char *label)
{
    for (unsigned i = 0; i < n; i++) {
        PKCS11_TOKEN *t = slots[i].token;
        if (t && t->initialized && t->label && strcmp(t->label, label) == 0)
            return &slots[i];
    }
    return NULL;
}

static PKCS11_SLOT *slot_find_free(PKCS11_SLOT *slots, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if (slots[i].token && !slots[i].token->initialized)
            return &slots[i];
    }
    return NULL;
}

/* Reports a libp11 failure: one line naming the call and the CK_RV if known. */
static hsm_status libp11_fail(const char *what, hsm_status fallback, char *err, size_t errlen)
{
    CK_RV rv = libp11_last_rv();
    hsm_status st = rv == HSM_RV_UNKNOWN ? fallback : rv_status(rv, OP_GENERIC);

    if (fallback == HSM_ERR_PIN && st == HSM_ERR_TOKEN)
        st = HSM_ERR_PIN;
    err_set(err, errlen, "%s failed: %s", what, ckr_name(rv));
    ERR_clear_error();
    return st;
}

/*
 * SoftHSM rewrites a token's token.object in place (truncate, then write), also at a
 * login, so a SIGKILL at the wrong moment leaves it empty: the token, and every key in it,
 * becomes invisible, and a naive start would create a fresh token beside it. So in managed
 * mode each token dir keeps token.object.good, a copy taken after every successful login
 * (file_write_atomic), and a token.object that is empty or shorter
 * than that copy is put back from it before the module is loaded. And a new token is never
 * created while a token dir exists (see token_dir_exists).
 */
static int file_read_all(const char *path, uint8_t *buf, size_t cap, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t r;

    *len = 0;
    if (fd < 0)
        return -1;
    while ((r = read(fd, buf + *len, cap - *len)) > 0 && *len + (size_t)r < cap)
        *len += (size_t)r;
    if (r > 0)
        *len += (size_t)r;
    close(fd);
    return r < 0 || *len == cap ? -1 : 0; /* cap reached: not a token.object we know */
}

/* For each token dir under tokens: keep (1) copies token.object to token.object.good;
 * keep (0) restores a damaged token.object from it. Returns the number of dirs acted on. */
static int token_objects_guard(const char *tokens, int keep)
{
    DIR *d = opendir(tokens);
    struct dirent *e;
    int n = 0;

    if (!d)
        return 0;
    while ((e = readdir(d)) != NULL) {
        char obj[PATH_MAX], good[PATH_MAX];
        uint8_t a[8192], b[8192];
        size_t al = 0, bl = 0;

        if (e->d_name[0] == '.' ||
            (size_t)snprintf(obj, sizeof(obj), "%s/%s/token.object", tokens, e->d_name) >=
                sizeof(obj) ||
            (size_t)snprintf(good, sizeof(good), "%s.good", obj) >= sizeof(good))
            continue;
        int have_obj = file_read_all(obj, a, sizeof(a), &al) == 0;
        int have_good = file_read_all(good, b, sizeof(b), &bl) == 0 && bl > 0;
        char ignored[256];
        if (keep && have_obj && al > 0 && (al != bl || memcmp(a, b, al) != 0))
            n += file_write_atomic(good, a, al, ignored, sizeof(ignored)) == HSM_OK;
        else if (!keep && have_good && (!have_obj || al < bl))
            n += file_write_atomic(obj, b, bl, ignored, sizeof(ignored)) == HSM_OK;
    }
    closedir(d);
    return n;
}

/* Is there a token dir (with a token.object, even a damaged one) under tokens? */
static int token_dir_exists(const char *tokens)
{
    DIR *d = opendir(tokens);
    struct dirent *e;
    int found = 0;

    if (!d)
        return 0;
    while (!found && (e = readdir(d)) != NULL) {
        char obj[PATH_MAX];
        if (e->d_name[0] != '.' && (size_t)snprintf(obj, sizeof(obj), "%s/%s/token.object", tokens,
                                                    e->d_name) < sizeof(obj))
            found = access(obj, F_OK) == 0;
    }
    closedir(d);
    return found;
}

/* Creates the SoftHSM token: PINs first (files written before the token exists, so a crash
 * never leaves a token whose PIN is lost), then C_InitToken through libp11. */
static hsm_status token_create(hsm_t *h, const managed_paths *mp, const char *label32, char *pin,
                               int *have_pin, char *so_pin, int *have_so, char *err, size_t errlen)
{
    PKCS11_SLOT *free_slot = slot_find_free(h->slots, h->nslots);
    hsm_status st;

    if (!free_slot) {
        err_set(err, errlen, "no free slot to create token '%s'", h->token_label);
        return HSM_ERR_TOKEN;
    }
    if (!*have_so) {
        st = pin_create(mp->so_pin, so_pin, err, errlen);
        if (st != HSM_OK)
            return st;
        *have_so = 1;
    }
    if (!*have_pin) {
        st = pin_create(mp->pin, pin, err, errlen);
        if (st != HSM_OK)
            return st;
        *have_pin = 1;
    }
    ERR_clear_error();
    if (PKCS11_init_token(free_slot->token, so_pin, label32) != 0)
        return libp11_fail("PKCS11_init_token", HSM_ERR_TOKEN, err, errlen);
    /* libp11's copy of the slot list is stale now (token flags, label): read it again. */
    PKCS11_release_all_slots(h->ctx, h->slots, h->nslots);
    h->slots = NULL;
    h->nslots = 0;
    if (PKCS11_enumerate_slots(h->ctx, &h->slots, &h->nslots) != 0)
        return libp11_fail("PKCS11_enumerate_slots", HSM_ERR_TOKEN, err, errlen);
    h->slot = slot_find_token(h->slots, h->nslots, h->token_label);
    if (!h->slot) {
        err_set(err, errlen, "token '%s' not visible after C_InitToken", h->token_label);
        return HSM_ERR_TOKEN;
    }
    return HSM_OK;
}

/* Sets the user PIN of a fresh token (SO login, C_InitPIN, logout). */
static hsm_status token_init_user_pin(hsm_t *h, const char *pin, const char *so_pin, char *err,
                                      size_t errlen)
{
    ERR_clear_error();
    if (PKCS11_login(h->slot, 1, so_pin) != 0)
        return libp11_fail("PKCS11_login (SO)", HSM_ERR_PIN, err, errlen);
    if (PKCS11_init_pin(h->slot->token, pin) != 0) {
        hsm_status st = libp11_fail("PKCS11_init_pin", HSM_ERR_TOKEN, err, errlen);
        (void)PKCS11_logout(h->slot);
        return st;
    }
    if (PKCS11_logout(h->slot) != 0)
        return libp11_fail("PKCS11_logout (SO)", HSM_ERR_TOKEN, err, errlen);
    return HSM_OK;
}

/* Loads the module a second time through dlopen to get its function table (see top). */
static hsm_status raw_attach(hsm_t *h, char *err, size_t errlen)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR) = NULL;
    CK_SESSION_INFO info;
    void *sym;
    CK_RV rv;

    h->dl = dlopen(h->module_path, RTLD_NOW | RTLD_LOCAL);
    if (!h->dl) {
        err_set(err, errlen, "dlopen %s: %s", h->module_path, dlerror());
        return HSM_ERR_MODULE;
    }
    sym = dlsym(h->dl, "C_GetFunctionList");
    if (!sym) {
        err_set(err, errlen, "%s has no C_GetFunctionList", h->module_path);
        return HSM_ERR_MODULE;
    }
    memcpy(&get_list, &sym, sizeof(get_list)); /* object -> function pointer, as dlsym needs */
    rv = get_list(&h->module_fl);
    if (rv != CKR_OK || !h->module_fl) {
        err_set(err, errlen, "C_GetFunctionList: %s", ckr_name(rv));
        return HSM_ERR_MODULE;
    }
    h->fl = h->module_fl;
    h->slot_id = (CK_SLOT_ID)PKCS11_get_slotid_from_slot(h->slot);
    rv = h->fl->C_OpenSession(h->slot_id, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                              &h->anchor);
    if (rv != CKR_OK) {
        err_set(err, errlen, "C_OpenSession: %s", ckr_name(rv));
        return rv_status(rv, OP_GENERIC);
    }
    h->have_anchor = 1;
    atomic_fetch_add(&h->sessions, 1);
    rv = h->fl->C_GetSessionInfo(h->anchor, &info);
    if (rv != CKR_OK) {
        err_set(err, errlen, "C_GetSessionInfo: %s", ckr_name(rv));
        return rv_status(rv, OP_GENERIC);
    }
    if (info.state != CKS_RW_USER_FUNCTIONS) {
        err_set(err, errlen, "raw PKCS#11 session is not logged in (state %lu)",
                (unsigned long)info.state);
        return HSM_ERR_PIN;
    }
    return HSM_OK;
}

hsm_status hsm_open(const hsm_config *cfg, hsm_t **out, char *err, size_t errlen)
{
    hsm_status st = HSM_OK;
    hsm_t *h = NULL;
    managed_paths mp;
    char pin[HSM_PIN_MAX], so_pin[HSM_PIN_MAX];
    char label32[HSM_TOKEN_LABEL_MAX + 1];
    const char *label;
    int managed, have_pin = 0, have_so = 0, claimed = 0, init_pin = 0;
    size_t label_len;

    memset(pin, 0, sizeof(pin));
    memset(so_pin, 0, sizeof(so_pin));
    memset(&mp, 0, sizeof(mp));
    if (err && errlen)
        err[0] = '\0';
    if (!out) {
        err_set(err, errlen, "hsm_open: out is NULL");
        return HSM_ERR_ARGS;
    }
    *out = NULL;
    if (!cfg) {
        err_set(err, errlen, "hsm_open: no configuration");
        return HSM_ERR_ARGS;
    }
    managed = cfg->module_path == NULL;
    label = cfg->token_label ? cfg->token_label : "cmkemu";
    label_len = strlen(label);
    if (label_len == 0 || label_len > HSM_TOKEN_LABEL_MAX || label[label_len - 1] == ' ') {
        err_set(err, errlen, "token label must be 1..32 bytes without trailing spaces");
        return HSM_ERR_ARGS;
    }
    if (managed && !cfg->data_dir) {
        err_set(err, errlen, "data_dir is required for the managed SoftHSM token");
        return HSM_ERR_ARGS;
    }
    if (!managed && !cfg->pin) {
        err_set(err, errlen, "a PIN is required with module %s", cfg->module_path);
        return HSM_ERR_ARGS;
    }
    if (cfg->pin && (cfg->pin[0] == '\0' || strlen(cfg->pin) >= HSM_PIN_MAX)) {
        err_set(err, errlen, "PIN must be 1..%d bytes", HSM_PIN_MAX - 1);
        return HSM_ERR_ARGS;
    }
    if (atomic_exchange(&g_hsm_open, 1) != 0) {
        err_set(err, errlen, "another hsm_t is already open in this process");
        return HSM_ERR_MODULE;
    }
    claimed = 1;

    h = calloc(1, sizeof(*h));
    if (!h) {
        err_set(err, errlen, "out of memory");
        st = HSM_ERR_MODULE;
        goto out;
    }
    if (pthread_mutex_init(&h->pool_lock, NULL) != 0) {
        free(h);
        h = NULL;
        err_set(err, errlen, "pthread_mutex_init failed");
        st = HSM_ERR_MODULE;
        goto out;
    }
    pthread_rwlock_init(&h->cache_lock, NULL);
    pthread_mutex_init(&h->backup_lock, NULL);
    pthread_mutex_init(&h->anchor_lock, NULL);
    h->locks_ready = 1;
    {
        pthread_rwlockattr_t ra;
        pthread_rwlockattr_init(&ra);
        pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        h->module_lock_ready = pthread_rwlock_init(&h->module_lock, &ra) == 0;
        pthread_rwlockattr_destroy(&ra);
    }
    if (!h->module_lock_ready) {
        err_set(err, errlen, "pthread_rwlock_init failed");
        st = HSM_ERR_MODULE;
        goto out;
    }
    h->reload_after = cfg->reload_after < 0    ? 0
                      : cfg->reload_after == 0 ? HSM_RELOAD_AFTER_DEFAULT
                                               : (unsigned long)cfg->reload_after;
    h->log_error = cfg->log_error;
    snprintf(h->token_label, sizeof(h->token_label), "%s", label);
    snprintf(h->module_path, sizeof(h->module_path), "%s",
             managed ? CMKEMU_SOFTHSM_MODULE : cfg->module_path);
    /* C_InitToken reads exactly 32 bytes of label, blank padded. */
    memset(label32, ' ', HSM_TOKEN_LABEL_MAX);
    memcpy(label32, label, label_len);
    label32[HSM_TOKEN_LABEL_MAX] = '\0';

    if (managed) {
        st = managed_prepare(cfg->data_dir, &mp, err, errlen);
        if (st != HSM_OK)
            goto out;
        token_objects_guard(mp.tokens, 0);
        if (!cfg->pin) {
            st = pin_file_read(mp.pin, pin, &have_pin, err, errlen);
            if (st != HSM_OK)
                goto out;
        }
        st = pin_file_read(mp.so_pin, so_pin, &have_so, err, errlen);
        if (st != HSM_OK)
            goto out;
    }
    if (cfg->pin) {
        snprintf(pin, sizeof(pin), "%s", cfg->pin);
        have_pin = 1;
    }

    /* Probe the module ourselves first: libp11 prints dlopen errors to stderr on its own,
     * and we want one clear line from the caller instead. */
    {
        void *probe = dlopen(h->module_path, RTLD_NOW | RTLD_LOCAL);
        if (!probe) {
            const char *why = dlerror();
            err_set(err, errlen, "cannot load PKCS#11 module %s: %s", h->module_path,
                    why ? why : "dlopen failed");
            st = HSM_ERR_MODULE;
            goto out;
        }
        dlclose(probe);
    }
    ERR_clear_error();
    h->ctx = PKCS11_CTX_new();
    if (!h->ctx) {
        err_set(err, errlen, "PKCS11_CTX_new failed");
        st = HSM_ERR_MODULE;
        goto out;
    }
    if (PKCS11_CTX_load(h->ctx, h->module_path) != 0) {
        CK_RV rv = libp11_last_rv();
        err_set(err, errlen, "cannot load PKCS#11 module %s: %s", h->module_path, ckr_name(rv));
        ERR_clear_error();
        st = HSM_ERR_MODULE;
        goto out;
    }
    h->ctx_loaded = 1;
    if (PKCS11_enumerate_slots(h->ctx, &h->slots, &h->nslots) != 0) {
        st = libp11_fail("PKCS11_enumerate_slots", HSM_ERR_TOKEN, err, errlen);
        goto out;
    }
    h->slot = slot_find_token(h->slots, h->nslots, h->token_label);
    if (!h->slot) {
        if (!managed) {
            err_set(err, errlen, "no token labelled '%s' in %s", h->token_label, h->module_path);
            st = HSM_ERR_TOKEN;
            goto out;
        }
        if (token_dir_exists(mp.tokens)) {
            err_set(err, errlen,
                    "token '%s' is in %s but SoftHSM cannot read it (a damaged token.object?); "
                    "not creating a new token, its keys would be lost",
                    h->token_label, mp.tokens);
            st = HSM_ERR_TOKEN;
            goto out;
        }
        st = token_create(h, &mp, label32, pin, &have_pin, so_pin, &have_so, err, errlen);
        if (st != HSM_OK)
            goto out;
        init_pin = 1;
    } else if (managed && !h->slot->token->userPinSet) {
        /* A crash between C_InitToken and C_InitPIN: finish the job. */
        if (!have_so) {
            err_set(err, errlen, "token '%s' has no user PIN and %s is missing", h->token_label,
                    mp.so_pin);
            st = HSM_ERR_IO;
            goto out;
        }
        if (!have_pin) {
            st = pin_create(mp.pin, pin, err, errlen);
            if (st != HSM_OK)
                goto out;
            have_pin = 1;
        }
        init_pin = 1;
    }
    if (!have_pin) {
        err_set(err, errlen, "PIN file %s is missing", mp.pin);
        st = HSM_ERR_IO;
        goto out;
    }
    ERR_clear_error();
    if (PKCS11_open_session(h->slot, 1) != 0) {
        st = libp11_fail("PKCS11_open_session", HSM_ERR_TOKEN, err, errlen);
        goto out;
    }
    if (init_pin) {
        st = token_init_user_pin(h, pin, so_pin, err, errlen);
        if (st != HSM_OK)
            goto out;
    }
    if (PKCS11_login(h->slot, 0, pin) != 0) {
        st = libp11_fail("PKCS11_login", HSM_ERR_PIN, err, errlen);
        goto out;
    }
    h->logged_in = 1;
    if (managed) {
        token_objects_guard(mp.tokens, 1);
        snprintf(h->tokens_dir, sizeof(h->tokens_dir), "%s", mp.tokens);
    }
    st = raw_attach(h, err, errlen);
    if (st == HSM_OK) {
        /* kept for the re-login after a module reload; secure heap when there is one */
        size_t plen = strlen(pin) + 1;
        h->pin = OPENSSL_secure_malloc(plen);
        if (!h->pin) {
            err_set(err, errlen, "out of memory");
            st = HSM_ERR_MODULE;
        } else
            memcpy(h->pin, pin, plen);
    }
out:
    OPENSSL_cleanse(pin, sizeof(pin));
    OPENSSL_cleanse(so_pin, sizeof(so_pin));
    if (st != HSM_OK) {
        hsm_close(h); /* releases g_hsm_open when h exists */
        if (!h && claimed)
            atomic_store(&g_hsm_open, 0);
        return st;
    }
    *out = h;
    return HSM_OK;
}

void hsm_close(hsm_t *h)
{
    CK_FUNCTION_LIST *fl;

    if (!h)
        return;
    fl = h->module_fl;
    if (fl) {
        for (size_t i = 0; i < h->pool_len; i++)
            (void)fl->C_CloseSession(h->pool[i]);
        h->pool_len = 0;
        if (h->have_anchor)
            (void)fl->C_CloseSession(h->anchor);
    }
    if (h->slots) {
        if (h->logged_in)
            (void)PKCS11_logout(h->slot);
        PKCS11_release_all_slots(h->ctx, h->slots, h->nslots);
    }
    if (h->ctx) {
        if (h->ctx_loaded)
            PKCS11_CTX_unload(h->ctx); /* C_Finalize */
        PKCS11_CTX_free(h->ctx);
    }
    if (h->dl)
        dlclose(h->dl);
    ERR_clear_error();
    cache_buckets_free(h->buckets, h->nbuckets);
    free(h->pool);
    if (h->pin)
        OPENSSL_secure_clear_free(h->pin, strlen(h->pin) + 1);
    if (h->module_lock_ready)
        pthread_rwlock_destroy(&h->module_lock);
    if (h->locks_ready) {
        pthread_mutex_destroy(&h->pool_lock);
        pthread_rwlock_destroy(&h->cache_lock);
        pthread_mutex_destroy(&h->backup_lock);
        pthread_mutex_destroy(&h->anchor_lock);
    }
    free(h);
    atomic_store(&g_hsm_open, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* Keys                                                                                      */

static int label_ok(const char *label)
{
    return !label || strlen(label) <= HSM_MAX_LABEL;
}

/* Big-endian bytes of v without leading zeros; returns the length (>= 1). */
static size_t ulong_be(unsigned long v, uint8_t out[HSM_MAX_EXP_BYTES])
{
    uint8_t tmp[HSM_MAX_EXP_BYTES];
    size_t n = 0;

    do {
        tmp[n++] = (uint8_t)(v & 0xff);
        v >>= 8;
    } while (v && n < sizeof(tmp));
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static hsm_status op_rsa_generate(hsm_t *h, unsigned bits, unsigned long public_exponent,
                                  const char *label, uint8_t id_out[HSM_ID_LEN], uint8_t **sealed,
                                  size_t *sealed_len)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE, on_token = sealed ? CK_FALSE : CK_TRUE;
    hsm_status st = HSM_OK;
    CK_ULONG mbits = bits;
    CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
    CK_SESSION_HANDLE s;
    uint8_t id[HSM_ID_LEN], e[HSM_MAX_EXP_BYTES];
    size_t e_len;
    CK_ULONG llen = label ? (CK_ULONG)strlen(label) : 0;
    CK_RV rv;

    if (!h || !id_out || (bits != 2048 && bits != 3072 && bits != 4096) || !label_ok(label))
        return HSM_ERR_ARGS;
    if (public_exponent == 0)
        public_exponent = 65537;
    if (public_exponent < 3 || (public_exponent & 1) == 0)
        return HSM_ERR_ARGS;
    e_len = ulong_be(public_exponent, e);
    if (RAND_bytes(id, sizeof(id)) != 1)
        return HSM_ERR_TOKEN;

    /* Only the private key is a token object (one file in SoftHSM's store, not two): the
     * public half is generated as a session object, read into the cache and destroyed. Callers
     * keep the public components in their own store (hsm_rsa_public gives them), and the
     * private object carries CKA_MODULUS and CKA_PUBLIC_EXPONENT for later look-ups. */
    CK_ATTRIBUTE pub_t[] = {
        {CKA_TOKEN, &no, sizeof(no)},     {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_ENCRYPT, &yes, sizeof(yes)}, {CKA_WRAP, &yes, sizeof(yes)},
        {CKA_VERIFY, &yes, sizeof(yes)},  {CKA_MODULUS_BITS, &mbits, sizeof(mbits)},
        {CKA_PUBLIC_EXPONENT, e, e_len},  {CKA_ID, id, sizeof(id)},
        {CKA_LABEL, (void *)label, llen},
    };
    CK_ATTRIBUTE priv_t[] = {
        RSA_PRIVATE_KEY_POLICY(&on_token, &yes),
        {CKA_ID, id, sizeof(id)},
        {CKA_LABEL, (void *)label, llen},
    };
    CK_ULONG npub = sizeof(pub_t) / sizeof(pub_t[0]);
    CK_ULONG npriv = sizeof(priv_t) / sizeof(priv_t[0]);
    if (!label) { /* no CKA_LABEL at all */
        npub--;
        npriv--;
    }

    /* a lost session is retried once on a new one (nothing was created) */
    for (int attempt = 0; attempt < 2; attempt++) {
        rv = session_get(h, &s);
        if (rv != CKR_OK)
            return rv_status(rv, OP_GENERIC);
        rv = h->fl->C_GenerateKeyPair(s, &mech, pub_t, npub, priv_t, npriv, &pub, &priv);
        if (rv == CKR_OK) {
            st = pair_finish(h, s, id, priv, pub, NULL, sealed, sealed_len);
            (void)obj_destroy(h, s, pub);
        }
        session_put(h, s, rv);
        if (!rv_session_lost(rv))
            break;
    }
    if (rv != CKR_OK)
        return rv_status(rv, OP_GENERIC);
    if (st == HSM_OK)
        memcpy(id_out, id, HSM_ID_LEN);
    return st;
}

/* A component as a BIGNUM (secret ones in secure memory, constant-time flag set). */
static BIGNUM *bn_from(const uint8_t *p, size_t len, int secret)
{
    BIGNUM *bn;

    if (!p || len == 0 || len > HSM_MAX_MOD_BYTES)
        return NULL;
    bn = secret ? BN_secure_new() : BN_new();
    if (!bn)
        return NULL;
    if (!BN_bin2bn(p, (int)len, bn)) {
        BN_clear_free(bn);
        return NULL;
    }
    if (secret)
        BN_set_flags(bn, BN_FLG_CONSTTIME);
    return bn;
}

/* Destroys objects created by a failed multi-step operation. */
static void objects_destroy_quiet(hsm_t *h, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a,
                                  CK_OBJECT_HANDLE b)
{
    if (a != CK_INVALID_HANDLE)
        (void)obj_destroy(h, s, a);
    if (b != CK_INVALID_HANDLE)
        (void)obj_destroy(h, s, b);
}

static hsm_status op_rsa_import(hsm_t *h, const hsm_rsa_components *c, const char *label,
                                uint8_t id_out[HSM_ID_LEN], uint8_t **sealed, size_t *sealed_len)
{
    enum { N, E, D, P, Q, DP, DQ, QI, NCOMP };
    hsm_status st = HSM_OK;
    BN_CTX *bc = NULL;
    BIGNUM *b[NCOMP] = {0}, *given[3] = {0}, *t1 = NULL, *t2 = NULL, *t3 = NULL;
    uint8_t *buf[NCOMP] = {0};
    size_t len[NCOMP] = {0};
    uint8_t id[HSM_ID_LEN];
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    int have_session = 0;
    EVP_PKEY *pkey = NULL;
    CK_RV rv = CKR_OK;
    int nbits;

    if (!h || !c || !id_out || !label_ok(label))
        return HSM_ERR_ARGS;
    if (!c->n || !c->e || !c->d || !c->p || !c->q || !c->n_len || !c->e_len || !c->d_len ||
        !c->p_len || !c->q_len)
        return HSM_ERR_ARGS;
    bc = BN_CTX_secure_new();
    b[N] = bn_from(c->n, c->n_len, 0);
    b[E] = bn_from(c->e, c->e_len, 0);
    b[D] = bn_from(c->d, c->d_len, 1);
    b[P] = bn_from(c->p, c->p_len, 1);
    b[Q] = bn_from(c->q, c->q_len, 1);
    b[DP] = BN_secure_new();
    b[DQ] = BN_secure_new();
    b[QI] = BN_secure_new();
    t1 = BN_secure_new();
    t2 = BN_secure_new();
    t3 = BN_secure_new();
    if (!bc || !t1 || !t2 || !t3 || !b[DP] || !b[DQ] || !b[QI]) {
        st = HSM_ERR_TOKEN; /* allocation */
        goto out;
    }
    for (int i = N; i <= Q; i++) {
        if (!b[i]) {
            st = HSM_ERR_ARGS;
            goto out;
        }
    }
    nbits = BN_num_bits(b[N]);
    if (nbits < 2048 || nbits > 4096 || !BN_is_odd(b[E]) || BN_num_bits(b[E]) < 2 ||
        BN_num_bytes(b[E]) > HSM_MAX_EXP_BYTES || BN_is_zero(b[D])) {
        st = HSM_ERR_ARGS;
        goto out;
    }
    /* n = p*q; dp = d mod (p-1), dq = d mod (q-1), qi = q^-1 mod p; e*dp = 1 mod (p-1) etc. */
    BN_set_flags(b[DP], BN_FLG_CONSTTIME);
    BN_set_flags(b[DQ], BN_FLG_CONSTTIME);
    BN_set_flags(b[QI], BN_FLG_CONSTTIME);
    if (!BN_mul(t1, b[P], b[Q], bc)) {
        st = HSM_ERR_TOKEN;
        goto out;
    }
    if (BN_cmp(t1, b[N]) != 0) {
        st = HSM_ERR_ARGS;
        goto out;
    }
    if (!BN_sub(t1, b[P], BN_value_one()) || !BN_sub(t2, b[Q], BN_value_one()) ||
        !BN_mod(b[DP], b[D], t1, bc) || !BN_mod(b[DQ], b[D], t2, bc) ||
        !BN_mod_mul(t3, b[E], b[DP], t1, bc)) {
        st = HSM_ERR_ARGS;
        goto out;
    }
    if (!BN_is_one(t3) || !BN_mod_mul(t3, b[E], b[DQ], t2, bc) || !BN_is_one(t3) ||
        !BN_mod_inverse(b[QI], b[Q], b[P], bc)) {
        st = HSM_ERR_ARGS; /* d does not match e, p, q */
        goto out;
    }
    /* CRT components given by the caller must agree with the computed ones. */
    given[0] = c->dp && c->dp_len ? bn_from(c->dp, c->dp_len, 1) : NULL;
    given[1] = c->dq && c->dq_len ? bn_from(c->dq, c->dq_len, 1) : NULL;
    given[2] = c->qi && c->qi_len ? bn_from(c->qi, c->qi_len, 1) : NULL;
    if ((c->dp && c->dp_len && (!given[0] || BN_cmp(given[0], b[DP]) != 0)) ||
        (c->dq && c->dq_len && (!given[1] || BN_cmp(given[1], b[DQ]) != 0)) ||
        (c->qi && c->qi_len && (!given[2] || BN_cmp(given[2], b[QI]) != 0))) {
        st = HSM_ERR_ARGS;
        goto out;
    }
    for (int i = 0; i < NCOMP; i++) {
        len[i] = (size_t)BN_num_bytes(b[i]);
        buf[i] = i <= E ? OPENSSL_malloc(len[i] ? len[i] : 1)
                        : OPENSSL_secure_malloc(len[i] ? len[i] : 1);
        if (!buf[i]) {
            st = HSM_ERR_TOKEN;
            goto out;
        }
        BN_bn2bin(b[i], buf[i]);
    }
    pkey = hsm_pkey_from_ne(buf[N], len[N], buf[E], len[E]);
    if (!pkey || RAND_bytes(id, sizeof(id)) != 1) {
        st = HSM_ERR_TOKEN;
        goto out;
    }
    {
        CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
        CK_KEY_TYPE kt = CKK_RSA;
        CK_BBOOL yes = CK_TRUE, on_token = sealed ? CK_FALSE : CK_TRUE;
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_KEY_TYPE, &kt, sizeof(kt)},
            RSA_PRIVATE_KEY_POLICY(&on_token, &yes),
            {CKA_ID, id, sizeof(id)},
            {CKA_MODULUS, buf[N], len[N]},
            {CKA_PUBLIC_EXPONENT, buf[E], len[E]},
            {CKA_PRIVATE_EXPONENT, buf[D], len[D]},
            {CKA_PRIME_1, buf[P], len[P]},
            {CKA_PRIME_2, buf[Q], len[Q]},
            {CKA_EXPONENT_1, buf[DP], len[DP]},
            {CKA_EXPONENT_2, buf[DQ], len[DQ]},
            {CKA_COEFFICIENT, buf[QI], len[QI]},
            {CKA_LABEL, (void *)label, label ? strlen(label) : 0},
        };
        CK_ULONG nt = sizeof(t) / sizeof(t[0]) - (label ? 0 : 1);

        rv = session_get(h, &s);
        if (rv != CKR_OK) {
            st = rv_status(rv, OP_GENERIC);
            goto out;
        }
        have_session = 1;
        rv = h->fl->C_CreateObject(s, t, nt, &priv);
        if (rv != CKR_OK) {
            st = rv_status(rv, OP_GENERIC);
            goto out;
        }
    }
    st = pair_finish(h, s, id, priv, CK_INVALID_HANDLE, pkey, sealed, sealed_len);
    pkey = NULL;
    if (st == HSM_OK)
        memcpy(id_out, id, HSM_ID_LEN);
out:
    if (have_session)
        session_put(h, s, rv);
    EVP_PKEY_free(pkey);
    for (int i = 0; i < NCOMP; i++) {
        if (i <= E)
            OPENSSL_free(buf[i]);
        else
            OPENSSL_secure_clear_free(buf[i], len[i] ? len[i] : 1);
        BN_clear_free(b[i]);
    }
    for (int i = 0; i < 3; i++)
        BN_clear_free(given[i]);
    BN_clear_free(t1);
    BN_clear_free(t2);
    BN_clear_free(t3);
    BN_CTX_free(bc);
    ERR_clear_error();
    return st;
}

/* Big-endian bytes of a BIGNUM parameter of pkey, malloc'd. */
static int pkey_param_bytes(const EVP_PKEY *pkey, const char *name, uint8_t **out, size_t *len)
{
    BIGNUM *bn = NULL;
    int ok = 0;

    *out = NULL;
    *len = 0;
    if (EVP_PKEY_get_bn_param(pkey, name, &bn) != 1)
        goto out;
    *len = (size_t)BN_num_bytes(bn);
    *out = malloc(*len ? *len : 1);
    if (!*out)
        goto out;
    BN_bn2bin(bn, *out);
    ok = 1;
out:
    BN_free(bn);
    ERR_clear_error();
    return ok;
}

static hsm_status op_rsa_public(hsm_t *h, const uint8_t id[HSM_ID_LEN], uint8_t **n, size_t *n_len,
                                uint8_t **e, size_t *e_len)
{
    key_ref r;
    hsm_status st;

    if (!h || !id || !n || !n_len || !e || !e_len)
        return HSM_ERR_ARGS;
    *n = *e = NULL;
    *n_len = *e_len = 0;
    st = key_get(h, id, PKEY_PEEK, 0, &r);
    if (st != HSM_OK)
        return st;
    if (!pkey_param_bytes(r.pkey, OSSL_PKEY_PARAM_RSA_N, n, n_len) ||
        !pkey_param_bytes(r.pkey, OSSL_PKEY_PARAM_RSA_E, e, e_len)) {
        free(*n);
        free(*e);
        *n = *e = NULL;
        *n_len = *e_len = 0;
        st = HSM_ERR_TOKEN;
    }
    key_ref_cleanup(&r);
    return st;
}

static hsm_status op_rsa_bits(hsm_t *h, const uint8_t id[HSM_ID_LEN], unsigned *bits)
{
    key_ref r;
    hsm_status st;

    if (!h || !id || !bits)
        return HSM_ERR_ARGS;
    st = key_get(h, id, PKEY_NONE, 0, &r);
    if (st == HSM_OK)
        *bits = r.bits;
    return st;
}

static hsm_status op_key_destroy(hsm_t *h, const uint8_t id[HSM_ID_LEN])
{
    CK_SESSION_HANDLE s;
    key_ref r;
    hsm_status st;
    CK_RV rv = CKR_OK, rv1 = CKR_OBJECT_HANDLE_INVALID, rv2 = CKR_OBJECT_HANDLE_INVALID;

    if (!h || !id)
        return HSM_ERR_ARGS;
    /* A sealed key: forgetting it is destroying it (its blob is the caller's to delete). */
    pthread_rwlock_wrlock(&h->cache_lock);
    cache_entry *sealed = cache_find_inlock(h, id);
    sealed = sealed && sealed->sealed ? cache_unlink_inlock(h, id) : NULL;
    pthread_rwlock_unlock(&h->cache_lock);
    if (sealed) {
        cache_release(h, sealed); /* with its live object */
        return HSM_OK;
    }
    st = key_get(h, id, PKEY_NONE, 0, &r);
    if (st != HSM_OK)
        return st;
    cache_evict(h, id, CK_INVALID_HANDLE);
    rv = session_get(h, &s);
    if (rv != CKR_OK)
        return rv_status(rv, OP_GENERIC);
    if (r.priv != CK_INVALID_HANDLE)
        rv1 = obj_destroy(h, s, r.priv);
    if (r.pub != CK_INVALID_HANDLE)
        rv2 = obj_destroy(h, s, r.pub);
    /* Again: a concurrent search may have cached the pair between the first eviction and
     * the C_DestroyObject calls. */
    cache_evict(h, id, CK_INVALID_HANDLE);
    if (rv1 != CKR_OK && !rv_is_stale_handle(rv1))
        rv = rv1;
    else if (rv2 != CKR_OK && !rv_is_stale_handle(rv2))
        rv = rv2;
    session_put(h, s, rv);
    if (rv != CKR_OK)
        return rv_status(rv, OP_GENERIC);
    if (rv_is_stale_handle(rv1) && rv_is_stale_handle(rv2))
        return HSM_ERR_NOT_FOUND; /* both already gone (destroyed behind our back) */
    return HSM_OK;
}

static int info_cmp(const void *a, const void *b)
{
    const obj_info *x = a, *y = b;
    int c = memcmp(x->id, y->id, HSM_ID_LEN);

    if (c)
        return c;
    return x->cls < y->cls ? -1 : x->cls > y->cls;
}

/* Lists the token's key pair ids into *ids_out (malloc'd, *nids_out entries) and refreshes the
 * handle cache; the public wrapper calls back with no lock held. */
static hsm_status op_key_foreach(hsm_t *h, uint8_t (**ids_out)[HSM_ID_LEN], size_t *nids_out)
{
    CK_KEY_TYPE kt = CKK_RSA;
    CK_OBJECT_HANDLE *found = NULL;
    obj_info *infos = NULL;
    size_t ninfos = 0, nfound = 0, nids = 0;
    uint8_t(*ids)[HSM_ID_LEN] = NULL;
    cache_entry *fresh = NULL, *gone = NULL;
    CK_SESSION_HANDLE s;
    hsm_status st = HSM_OK;
    unsigned long gen;
    CK_RV rv;

    *ids_out = NULL;
    *nids_out = 0;
    gen = cache_gen(h);
    rv = session_get(h, &s);
    if (rv != CKR_OK)
        return rv_status(rv, OP_GENERIC);
    /* One search for both classes: SoftHSM visits every token object on each search (and
     * re-checks its file), so a search per class cost a whole extra pass over the token;
     * obj_read_opt reads the class anyway. */
    CK_BBOOL on_token = CK_TRUE; /* not the session objects of live sealed keys */
    CK_ATTRIBUTE tmpl[] = {{CKA_KEY_TYPE, &kt, sizeof(kt)},
                           {CKA_TOKEN, &on_token, sizeof(on_token)}};
    rv = objects_find(h, s, tmpl, 2, &found, &nfound);
    if (rv == CKR_OK && nfound) {
        infos = malloc(nfound * sizeof(*infos));
        if (!infos)
            rv = CKR_HOST_MEMORY;
    }
    for (size_t i = 0; rv == CKR_OK && i < nfound; i++) {
        int usable = 0;
        rv = obj_read_opt(h, s, found[i], &infos[ninfos], &usable, 0);
        if (rv == CKR_OK && usable)
            ninfos++;
    }
    free(found);
    session_put(h, s, rv);
    if (rv != CKR_OK) {
        st = rv_status(rv, OP_GENERIC);
        goto out;
    }
    /* Group by id (private before public) into fresh entries. */
    if (ninfos)
        qsort(infos, ninfos, sizeof(*infos), info_cmp);
    ids = malloc((ninfos ? ninfos : 1) * sizeof(*ids));
    if (!ids) {
        st = HSM_ERR_TOKEN;
        goto out;
    }
    for (size_t i = 0; i < ninfos;) {
        size_t j = i + 1;
        cache_entry *e;
        while (j < ninfos && memcmp(infos[j].id, infos[i].id, HSM_ID_LEN) == 0)
            j++;
        e = cache_entry_from(infos[i].id, &infos[i], j - i);
        if (e) {
            e->next = fresh;
            fresh = e;
            memcpy(ids[nids++], infos[i].id, HSM_ID_LEN);
        }
        i = j;
    }
    /* They replace the cache's token entries (sealed keys stay), unless a key was evicted
     * (destroyed) during the listing: then the cache stays and keys are looked up on first
     * use. */
    pthread_rwlock_wrlock(&h->cache_lock);
    if (h->gen == gen) {
        gone = cache_take_token_entries_inlock(h, 0);
        while (fresh) {
            cache_entry *e = fresh, *dropped;
            fresh = e->next;
            dropped = cache_link_inlock(h, e);
            if (dropped) {
                dropped->next = gone;
                gone = dropped;
            }
        }
    }
    pthread_rwlock_unlock(&h->cache_lock);
    cache_release(h, gone);
    *ids_out = ids;
    *nids_out = nids;
    ids = NULL;
out:
    cache_release(h, fresh);
    for (size_t i = 0; i < ninfos; i++)
        EVP_PKEY_free(infos[i].pkey);
    free(infos);
    free(ids);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Encrypt / decrypt                                                                         */

static const EVP_MD *enc_md(hsm_rsa_enc_alg alg)
{
    return alg == HSM_RSA_OAEP_SHA1 ? EVP_sha1() : EVP_sha256();
}

/* Largest plaintext for a k-byte modulus. */
static size_t enc_max_in(hsm_rsa_enc_alg alg, size_t k)
{
    size_t overhead = alg == HSM_RSA_OAEP_SHA1 ? 42 : alg == HSM_RSA_OAEP_SHA256 ? 66 : 11;

    return k > overhead ? k - overhead : 0;
}

static int enc_alg_ok(hsm_rsa_enc_alg alg)
{
    return alg == HSM_RSA_OAEP_SHA1 || alg == HSM_RSA_OAEP_SHA256 || alg == HSM_RSA_PKCS1;
}

static hsm_status op_rsa_encrypt(hsm_t *h, const uint8_t id[HSM_ID_LEN], hsm_rsa_enc_alg alg,
                                 const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len)
{
    static const uint8_t empty[1] = {0};
    EVP_PKEY_CTX *pctx = NULL;
    hsm_status st;
    key_ref r;
    size_t k, olen;

    if (!h || !id || !out || !out_len || (!in && in_len) || !enc_alg_ok(alg))
        return HSM_ERR_ARGS;
    st = key_get(h, id, PKEY_KEEP, 0, &r);
    if (st != HSM_OK)
        return st;
    k = (r.bits + 7) / 8;
    if (in_len > enc_max_in(alg, k)) {
        st = HSM_ERR_ARGS;
        goto out;
    }
    olen = HSM_MAX_MOD_BYTES;
    pctx = EVP_PKEY_CTX_new_from_pkey(NULL, r.pkey, NULL);
    if (!pctx || EVP_PKEY_encrypt_init(pctx) <= 0) {
        st = HSM_ERR_TOKEN;
        goto out;
    }
    if (alg == HSM_RSA_PKCS1) {
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0) {
            st = HSM_ERR_TOKEN;
            goto out;
        }
    } else if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
               EVP_PKEY_CTX_set_rsa_oaep_md(pctx, enc_md(alg)) <= 0 ||
               EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, enc_md(alg)) <= 0) {
        st = HSM_ERR_TOKEN;
        goto out;
    }
    if (EVP_PKEY_encrypt(pctx, out, &olen, in ? in : empty, in_len) <= 0) {
        st = HSM_ERR_TOKEN;
        goto out;
    }
    *out_len = olen;
out:
    EVP_PKEY_CTX_free(pctx);
    key_ref_cleanup(&r);
    ERR_clear_error();
    return st;
}

/* One decrypt attempt with a known private handle. *stale says why another attempt may work
 * (RETRY_STALE: the handle is gone; RETRY_SESSION: the session was lost), 0 = final. */
static hsm_status decrypt_once(hsm_t *h, CK_OBJECT_HANDLE priv, size_t k, hsm_rsa_enc_alg alg,
                               const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len,
                               int *stale)
{
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
    uint8_t raw[HSM_MAX_MOD_BYTES];
    CK_ULONG rlen = HSM_MAX_MOD_BYTES;
    CK_SESSION_HANDLE s;
    hsm_status st = HSM_OK;
    CK_RV rv;

    *stale = 0;
    if (alg == HSM_RSA_OAEP_SHA1) {
        mech.mechanism = CKM_RSA_PKCS_OAEP;
        mech.pParameter = &oaep;
        mech.ulParameterLen = sizeof(oaep);
    } else if (alg == HSM_RSA_OAEP_SHA256) {
        mech.mechanism = CKM_RSA_X_509; /* OAEP-SHA256 decoded below (SoftHSM refuses it) */
    }
    rv = session_get(h, &s);
    if (rv != CKR_OK)
        return rv_status(rv, OP_GENERIC);
    rv = h->fl->C_DecryptInit(s, &mech, priv);
    if (rv == CKR_OK)
        rv = h->fl->C_Decrypt(s, (CK_BYTE_PTR)in, (CK_ULONG)in_len,
                              alg == HSM_RSA_OAEP_SHA256 ? raw : out, &rlen);
    session_put(h, s, rv);
    if (rv != CKR_OK) {
        *stale = retry_reason(rv);
        st = rv_status(rv, OP_DECRYPT);
        goto out;
    }
    if (alg != HSM_RSA_OAEP_SHA256) {
        *out_len = rlen;
        goto out;
    }
    if (rlen > k) {
        st = HSM_ERR_DECRYPT;
        goto out;
    }
    if (rlen < k) { /* a token may drop leading zero bytes of the raw result */
        memmove(raw + (k - rlen), raw, rlen);
        memset(raw, 0, k - rlen);
    }
    {
        int mlen;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        /* Constant-time OAEP decoding; deprecated in OpenSSL 3.0 only in favour of EVP,
         * which cannot decode a block that was decrypted elsewhere. */
        mlen = RSA_padding_check_PKCS1_OAEP_mgf1(out, HSM_MAX_MOD_BYTES, raw, (int)k, (int)k, NULL,
                                                 0, EVP_sha256(), EVP_sha256());
#pragma GCC diagnostic pop
        if (mlen < 0) {
            st = HSM_ERR_DECRYPT;
            ERR_clear_error();
            goto out;
        }
        *out_len = (size_t)mlen;
    }
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    return st;
}

static hsm_status op_rsa_decrypt(hsm_t *h, const uint8_t id[HSM_ID_LEN], hsm_rsa_enc_alg alg,
                                 const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len)
{
    if (!h || !id || !in || !out || !out_len || !enc_alg_ok(alg))
        return HSM_ERR_ARGS;
    hsm_status last = HSM_ERR_NOT_FOUND;
    for (int attempt = 0; attempt < 2; attempt++) {
        key_ref r;
        hsm_status st = key_get(h, id, PKEY_NONE, 1, &r);
        int stale = 0;

        if (st != HSM_OK)
            return st;
        if (r.priv == CK_INVALID_HANDLE)
            return HSM_ERR_NOT_FOUND;
        if (in_len != (r.bits + 7) / 8)
            return HSM_ERR_ARGS;
        st = decrypt_once(h, r.priv, in_len, alg, in, in_len, out, out_len, &stale);
        if (!stale)
            return st;
        last = st;
        if (stale == RETRY_STALE) {
            cache_evict(h, id, r.priv);
            last = HSM_ERR_NOT_FOUND;
        }
    }
    return last;
}

/* ---------------------------------------------------------------------------------------- */
/* Sign / verify                                                                             */

/* DER DigestInfo prefixes (RFC 8017 section 9.2 note 1). */
static const uint8_t di_sha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
static const uint8_t di_sha384[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
static const uint8_t di_sha512[] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                    0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};

typedef struct {
    size_t digest_len;
    int pss;
    CK_MECHANISM_TYPE hash;
    CK_RSA_PKCS_MGF_TYPE mgf;
    const uint8_t *prefix;
    size_t prefix_len;
} sig_info;

static int sig_lookup(hsm_sig_alg alg, sig_info *si)
{
    switch (alg) {
    case HSM_RS256:
    case HSM_PS256:
        *si = (sig_info){32,        alg == HSM_PS256, CKM_SHA256, CKG_MGF1_SHA256,
                         di_sha256, sizeof(di_sha256)};
        return 1;
    case HSM_RS384:
    case HSM_PS384:
        *si = (sig_info){48,        alg == HSM_PS384, CKM_SHA384, CKG_MGF1_SHA384,
                         di_sha384, sizeof(di_sha384)};
        return 1;
    case HSM_RS512:
    case HSM_PS512:
        *si = (sig_info){64,        alg == HSM_PS512, CKM_SHA512, CKG_MGF1_SHA512,
                         di_sha512, sizeof(di_sha512)};
        return 1;
    }
    return 0;
}

static const EVP_MD *sig_md(const sig_info *si)
{
    return si->digest_len == 32 ? EVP_sha256() : si->digest_len == 48 ? EVP_sha384() : EVP_sha512();
}

size_t hsm_sig_digest_len(hsm_sig_alg alg)
{
    sig_info si;

    return sig_lookup(alg, &si) ? si.digest_len : 0;
}

static hsm_status sign_once(hsm_t *h, CK_OBJECT_HANDLE priv, const sig_info *si,
                            const uint8_t *digest, uint8_t *sig, size_t *sig_len, int *stale)
{
    CK_RSA_PKCS_PSS_PARAMS pss = {si->hash, si->mgf, si->digest_len};
    CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
    uint8_t data[sizeof(di_sha512) + 64];
    CK_ULONG dlen, slen = HSM_MAX_MOD_BYTES;
    CK_SESSION_HANDLE s;
    CK_RV rv;

    *stale = 0;
    if (si->pss) {
        mech.mechanism = CKM_RSA_PKCS_PSS;
        mech.pParameter = &pss;
        mech.ulParameterLen = sizeof(pss);
        memcpy(data, digest, si->digest_len);
        dlen = si->digest_len;
    } else {
        memcpy(data, si->prefix, si->prefix_len);
        memcpy(data + si->prefix_len, digest, si->digest_len);
        dlen = si->prefix_len + si->digest_len;
    }
    rv = session_get(h, &s);
    if (rv != CKR_OK)
        return rv_status(rv, OP_GENERIC);
    rv = h->fl->C_SignInit(s, &mech, priv);
    if (rv == CKR_OK)
        rv = h->fl->C_Sign(s, data, dlen, sig, &slen);
    session_put(h, s, rv);
    if (rv != CKR_OK) {
        *stale = retry_reason(rv);
        return rv_status(rv, OP_GENERIC);
    }
    *sig_len = slen;
    return HSM_OK;
}

static hsm_status op_sign(hsm_t *h, const uint8_t id[HSM_ID_LEN], hsm_sig_alg alg,
                          const uint8_t *digest, size_t digest_len, uint8_t *sig, size_t *sig_len)
{
    sig_info si;

    if (!h || !id || !digest || !sig || !sig_len || !sig_lookup(alg, &si) ||
        digest_len != si.digest_len)
        return HSM_ERR_ARGS;
    hsm_status last = HSM_ERR_NOT_FOUND;
    for (int attempt = 0; attempt < 2; attempt++) {
        key_ref r;
        hsm_status st = key_get(h, id, PKEY_NONE, 1, &r);
        int stale = 0;

        if (st != HSM_OK)
            return st;
        if (r.priv == CK_INVALID_HANDLE)
            return HSM_ERR_NOT_FOUND;
        st = sign_once(h, r.priv, &si, digest, sig, sig_len, &stale);
        if (!stale)
            return st;
        last = st;
        if (stale == RETRY_STALE) {
            cache_evict(h, id, r.priv);
            last = HSM_ERR_NOT_FOUND;
        }
    }
    return last;
}

static hsm_status op_verify(hsm_t *h, const uint8_t id[HSM_ID_LEN], hsm_sig_alg alg,
                            const uint8_t *digest, size_t digest_len, const uint8_t *sig,
                            size_t sig_len)
{
    EVP_PKEY_CTX *pctx = NULL;
    hsm_status st;
    sig_info si;
    key_ref r;
    int rc;

    if (!h || !id || !digest || !sig || !sig_lookup(alg, &si) || digest_len != si.digest_len)
        return HSM_ERR_ARGS;
    st = key_get(h, id, PKEY_KEEP, 0, &r);
    if (st != HSM_OK)
        return st;
    if (sig_len == 0 || sig_len > HSM_MAX_MOD_BYTES) {
        st = HSM_ERR_VERIFY;
        goto out;
    }
    pctx = EVP_PKEY_CTX_new_from_pkey(NULL, r.pkey, NULL);
    if (!pctx || EVP_PKEY_verify_init(pctx) <= 0 ||
        EVP_PKEY_CTX_set_signature_md(pctx, sig_md(&si)) <= 0) {
        st = HSM_ERR_TOKEN;
        goto out;
    }
    if (si.pss) {
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, sig_md(&si)) <= 0 ||
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0) {
            st = HSM_ERR_TOKEN;
            goto out;
        }
    } else if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0) {
        st = HSM_ERR_TOKEN;
        goto out;
    }
    rc = EVP_PKEY_verify(pctx, sig, sig_len, digest, digest_len);
    st = rc == 1 ? HSM_OK : HSM_ERR_VERIFY;
out:
    EVP_PKEY_CTX_free(pctx);
    key_ref_cleanup(&r);
    ERR_clear_error();
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Backup                                                                                    */

/* One line to the configured error log (stderr without one). */
static void hsm_log_error(hsm_t *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hsm_log_error(hsm_t *h, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (h->log_error)
        h->log_error(line);
    else
        fprintf(stderr, "cmkemu hsm: %s\n", line);
}

/* Makes SoftHSM's files durable (it writes object files without syncing them): one syncfs of
 * the token directory's file system, in managed mode. */
static void token_sync(hsm_t *h)
{
    if (!h->tokens_dir[0])
        return;
    int fd = open(h->tokens_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || syncfs(fd) != 0)
        hsm_log_error(h, "cannot sync the token directory %s: %s", h->tokens_dir, strerror(errno));
    if (fd >= 0)
        close(fd);
}

/* One of the token's AES-256 wrapping keys: found by label or, with create, created; then
 * remembered. Not found without create: HSM_ERR_NOT_FOUND. The storage key is not created
 * once sealed keys were handed back (HSM_ERR_SEALED then). */
static hsm_status kek_get(hsm_t *h, kek_kind kind, int create, CK_OBJECT_HANDLE *out)
{
    const char *label = kind == KEK_STORAGE ? HSM_STORAGE_LABEL : HSM_BACKUP_LABEL;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG vlen = 32;
    CK_MECHANISM mech = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ATTRIBUTE find_t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)},
    };
    CK_ATTRIBUTE gen_t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_WRAP, &yes, sizeof(yes)},
        {CKA_UNWRAP, &yes, sizeof(yes)},
        {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_DECRYPT, &no, sizeof(no)},
        {CKA_SIGN, &no, sizeof(no)},
        {CKA_VERIFY, &no, sizeof(no)},
        {CKA_DERIVE, &no, sizeof(no)},
        {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
    };
    CK_OBJECT_HANDLE *found = NULL;
    size_t nfound = 0;
    CK_SESSION_HANDLE s;
    hsm_status st = HSM_OK;
    CK_RV rv;

    pthread_mutex_lock(&h->backup_lock);
    if (h->kek[kind] != CK_INVALID_HANDLE) {
        *out = h->kek[kind];
        goto out_unlock;
    }
    rv = session_get(h, &s);
    if (rv != CKR_OK) {
        st = rv_status(rv, OP_GENERIC);
        goto out_unlock;
    }
    rv = objects_find(h, s, find_t, sizeof(find_t) / sizeof(find_t[0]), &found, &nfound);
    if (rv == CKR_OK && nfound > 1)
        hsm_log_error(h, "the token holds %zu wrapping keys labelled %s; using the first", nfound,
                      label);
    if (rv == CKR_OK && nfound > 0) {
        h->kek[kind] = found[0];
    } else if (rv == CKR_OK && !create) {
        session_put(h, s, rv);
        free(found);
        st = HSM_ERR_NOT_FOUND;
        goto out_unlock;
    } else if (rv == CKR_OK && kind == KEK_STORAGE && atomic_load(&h->sealed_loaded)) {
        /* Sealed keys were handed back, so this token had a storage key: a new one would
         * serve new keys and hide that every stored one is lost. */
        session_put(h, s, rv);
        free(found);
        hsm_log_error(h,
                      "the token has no storage key (%s) but sealed keys exist: they cannot be "
                      "unwrapped, and no key is sealed until it is back (was the token "
                      "replaced?)",
                      label);
        st = HSM_ERR_SEALED;
        goto out_unlock;
    } else if (rv == CKR_OK) {
        rv = h->fl->C_GenerateKey(s, &mech, gen_t, sizeof(gen_t) / sizeof(gen_t[0]), &h->kek[kind]);
        if (rv == CKR_OK)
            token_sync(h); /* on disk before anything wrapped under it is */
    }
    session_put(h, s, rv);
    free(found);
    if (rv != CKR_OK) {
        h->kek[kind] = CK_INVALID_HANDLE;
        st = rv_status(rv, OP_GENERIC);
        goto out_unlock;
    }
    *out = h->kek[kind];
out_unlock:
    pthread_mutex_unlock(&h->backup_lock);
    return st;
}

/* Blob layout (all lengths big-endian u16):
 *   "CMKB1" | mech (1 = CKM_AES_KEY_WRAP_PAD) | n_len n | e_len e | w_len wrapped-PKCS#8
 * The private key is only present wrapped. n and e are not authenticated by the wrap; import
 * checks them against the modulus and exponent of the unwrapped private key. Backup blobs
 * are wrapped under KEK_BACKUP, sealed keys under KEK_STORAGE. */
static hsm_status blob_make(hsm_t *h, kek_kind kind, CK_OBJECT_HANDLE priv, const EVP_PKEY *pkey,
                            uint8_t **blob, size_t *blob_len)
{
    CK_MECHANISM mech = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_OBJECT_HANDLE wrap_key;
    CK_SESSION_HANDLE s;
    uint8_t *n = NULL, *e = NULL, *wrapped = NULL, *b = NULL;
    size_t n_len = 0, e_len = 0, total;
    CK_ULONG w_len = 0;
    hsm_status st;
    CK_RV rv;

    *blob = NULL;
    *blob_len = 0;
    st = kek_get(h, kind, 1, &wrap_key);
    if (st != HSM_OK)
        return st;
    if (!pkey_param_bytes(pkey, OSSL_PKEY_PARAM_RSA_N, &n, &n_len) ||
        !pkey_param_bytes(pkey, OSSL_PKEY_PARAM_RSA_E, &e, &e_len)) {
        st = HSM_ERR_TOKEN;
        goto out;
    }
    rv = session_get(h, &s);
    if (rv != CKR_OK) {
        st = rv_status(rv, OP_GENERIC);
        goto out;
    }
    rv = h->fl->C_WrapKey(s, &mech, wrap_key, priv, NULL, &w_len);
    if (rv == CKR_OK && (w_len == 0 || w_len > HSM_BLOB_MAX_WRAPPED))
        rv = CKR_GENERAL_ERROR;
    if (rv == CKR_OK) {
        wrapped = malloc(w_len);
        if (!wrapped)
            rv = CKR_HOST_MEMORY;
    }
    if (rv == CKR_OK)
        rv = h->fl->C_WrapKey(s, &mech, wrap_key, priv, wrapped, &w_len);
    session_put(h, s, rv);
    if (rv != CKR_OK) {
        st = rv_status(rv, OP_GENERIC);
        goto out;
    }
    total = HSM_BLOB_MAGIC_LEN + 1 + 2 + n_len + 2 + e_len + 2 + w_len;
    b = malloc(total);
    if (!b) {
        st = HSM_ERR_TOKEN;
        goto out;
    }
    {
        uint8_t *p = b;
        memcpy(p, HSM_BLOB_MAGIC, HSM_BLOB_MAGIC_LEN);
        p += HSM_BLOB_MAGIC_LEN;
        *p++ = HSM_BLOB_MECH_KWP;
        put_u16(p, n_len);
        memcpy(p + 2, n, n_len);
        p += 2 + n_len;
        put_u16(p, e_len);
        memcpy(p + 2, e, e_len);
        p += 2 + e_len;
        put_u16(p, w_len);
        memcpy(p + 2, wrapped, w_len);
    }
    *blob = b;
    *blob_len = total;
out:
    free(n);
    free(e);
    free(wrapped);
    return st;
}

static hsm_status op_key_export_wrapped(hsm_t *h, const uint8_t id[HSM_ID_LEN], uint8_t **blob,
                                        size_t *blob_len)
{
    hsm_status st;
    key_ref r;

    if (!h || !id || !blob || !blob_len)
        return HSM_ERR_ARGS;
    *blob = NULL;
    *blob_len = 0;
    st = key_get(h, id, PKEY_KEEP, 1, &r);
    if (st != HSM_OK)
        return st;
    if (r.priv == CK_INVALID_HANDLE)
        st = HSM_ERR_NOT_FOUND;
    else
        st = blob_make(h, KEK_BACKUP, r.priv, r.pkey, blob, blob_len);
    key_ref_cleanup(&r);
    return st;
}

static hsm_status op_key_import_wrapped(hsm_t *h, const uint8_t *blob, size_t blob_len,
                                        const char *label, uint8_t id_out[HSM_ID_LEN],
                                        uint8_t **sealed, size_t *sealed_len)
{
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
    CK_SESSION_HANDLE s;
    uint8_t id[HSM_ID_LEN];
    EVP_PKEY *pkey = NULL;
    hsm_status st;
    CK_RV rv;

    if (!h || !blob || !id_out || !label_ok(label))
        return HSM_ERR_ARGS;
    if (RAND_bytes(id, sizeof(id)) != 1)
        return HSM_ERR_TOKEN;
    rv = session_get(h, &s);
    if (rv != CKR_OK)
        return rv_status(rv, OP_GENERIC);
    st = blob_unwrap(h, s, KEK_BACKUP, blob, blob_len, sealed ? CK_FALSE : CK_TRUE, id, label,
                     &priv, &pkey, &rv);
    if (st == HSM_OK) {
        st = pair_finish(h, s, id, priv, CK_INVALID_HANDLE, pkey, sealed, sealed_len);
        if (st == HSM_OK)
            memcpy(id_out, id, HSM_ID_LEN);
    }
    session_put(h, s, rv);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Misc                                                                                      */

static hsm_status op_random(hsm_t *h, uint8_t *buf, size_t len)
{
    CK_SESSION_HANDLE s;
    CK_RV rv = CKR_OK;

    if (!h || (!buf && len))
        return HSM_ERR_ARGS;
    if (len == 0)
        return HSM_OK;
    rv = session_get(h, &s);
    if (rv != CKR_OK)
        return rv_status(rv, OP_GENERIC);
    while (len > 0 && rv == CKR_OK) {
        size_t chunk = len > 4096 ? 4096 : len;
        rv = h->fl->C_GenerateRandom(s, buf, (CK_ULONG)chunk);
        buf += chunk;
        len -= chunk;
    }
    session_put(h, s, rv);
    return rv_status(rv, OP_GENERIC);
}

void hsm_get_stats(hsm_t *h, hsm_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    if (!h)
        return;
    out->find_objects = atomic_load(&h->find_objects);
    out->sessions = atomic_load(&h->sessions);
    out->module_reloads = atomic_load(&h->reloads);
    out->module_heals = atomic_load(&h->heals);
    out->destroyed_since_reload = atomic_load(&h->garbage);
}

/* ---------------------------------------------------------------------------------------- */
/* Module reload                                                                             */

/*
 * SoftHSM 2.6 never frees the in-memory record of a destroyed object until the token is
 * closed (OSToken and the session object store keep every object they ever held, so that
 * stale handles stay harmless): a server that creates and deletes keys grows by about 1 KB
 * per destroyed object, forever. And a token that SoftHSM once found inconsistent stays
 * "invalid" for the life of the module (every later key creation fails with
 * CKR_GENERAL_ERROR) even when the files on disk are fine.
 *
 * Both are cured by finalising and re-initialising the module, which is what a reload does:
 * with every operation excluded (module_lock held for writing), close the sessions,
 * C_Finalize, C_Initialize, open the anchor session, log in again, and drop every cached
 * handle (handles are renumbered; the public keys are read again on first use). It runs
 * after reload_after destroyed objects, and once (at most every HSM_HEAL_INTERVAL seconds)
 * when a key creation or destruction fails with a general token error, before one retry.
 */
static long monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec;
}

/* The slot that holds the token labelled h->token_label, straight from the module. */
static CK_RV slot_by_label(hsm_t *h, CK_FUNCTION_LIST *fl, CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = sizeof(slots) / sizeof(slots[0]);
    char want[HSM_TOKEN_LABEL_MAX];
    size_t len = strlen(h->token_label);
    CK_RV rv = fl->C_GetSlotList(CK_TRUE, slots, &n);

    if (rv != CKR_OK)
        return rv;
    memset(want, ' ', sizeof(want));
    memcpy(want, h->token_label, len < sizeof(want) ? len : sizeof(want));
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK && (ti.flags & CKF_TOKEN_INITIALIZED) &&
            memcmp(ti.label, want, sizeof(want)) == 0) {
            *out = slots[i];
            return CKR_OK;
        }
    }
    return CKR_TOKEN_NOT_PRESENT;
}

/* Reloads the module. Caller holds module_lock for writing. */
static hsm_status module_reload_locked(hsm_t *h)
{
    CK_FUNCTION_LIST *fl = h->module_fl;
    CK_C_INITIALIZE_ARGS args;
    CK_SESSION_INFO info;
    cache_entry *gone;
    CK_RV rv;

    if (!fl || !h->pin)
        return HSM_ERR_MODULE;
    pthread_mutex_lock(&h->pool_lock);
    h->pool_len = 0; /* C_Finalize closes them all */
    pthread_mutex_unlock(&h->pool_lock);
    h->have_anchor = 0;
    h->anchor = CK_INVALID_HANDLE;
    (void)fl->C_Finalize(NULL);
    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    rv = fl->C_Initialize(&args);
    if (rv == CKR_OK)
        rv = slot_by_label(h, fl, &h->slot_id); /* SoftHSM renumbers a token made this run */
    if (rv == CKR_OK)
        rv = fl->C_OpenSession(h->slot_id, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                               &h->anchor);
    if (rv == CKR_OK) {
        h->have_anchor = 1;
        atomic_fetch_add(&h->sessions, 1);
        rv = fl->C_Login(h->anchor, CKU_USER, (CK_UTF8CHAR_PTR)h->pin, (CK_ULONG)strlen(h->pin));
        if (rv == CKR_USER_ALREADY_LOGGED_IN)
            rv = CKR_OK;
    }
    if (rv == CKR_OK)
        rv = fl->C_GetSessionInfo(h->anchor, &info);
    if (rv == CKR_OK && info.state != CKS_RW_USER_FUNCTIONS)
        rv = CKR_USER_NOT_LOGGED_IN;
    /* Every cached handle belonged to the old module instance: token keys are found again on
     * first use; sealed keys stay known and are unsealed again on first use. */
    pthread_rwlock_wrlock(&h->cache_lock);
    gone = cache_take_token_entries_inlock(h, 1);
    pthread_rwlock_unlock(&h->cache_lock);
    cache_release(h, gone); /* token entries: no live sealed object among them */
    pthread_mutex_lock(&h->backup_lock);
    h->kek[KEK_BACKUP] = h->kek[KEK_STORAGE] = CK_INVALID_HANDLE;
    pthread_mutex_unlock(&h->backup_lock);
    atomic_store(&h->garbage, 0);
    atomic_fetch_add(&h->reloads, 1);
    return rv_status(rv, OP_GENERIC);
}

static hsm_status module_reload(hsm_t *h)
{
    hsm_status st;

    pthread_rwlock_wrlock(&h->module_lock);
    st = module_reload_locked(h);
    pthread_rwlock_unlock(&h->module_lock);
    return st;
}

hsm_status hsm_reload(hsm_t *h)
{
    return h ? module_reload(h) : HSM_ERR_ARGS;
}

/* Starts an operation: the module lock's read side, and no PKCS#11 code yet for
 * hsm_last_rv_name (a failure without one must not report an earlier call's). */
static void op_enter(hsm_t *h)
{
    last_failed_rv = CKR_OK;
    pthread_rwlock_rdlock(&h->module_lock);
}

/* Ends an operation; the thread that ends one when enough objects were destroyed reloads. */
static void op_leave(hsm_t *h)
{
    pthread_rwlock_unlock(&h->module_lock);
    if (h->reload_after && atomic_load(&h->garbage) >= h->reload_after &&
        !atomic_exchange(&h->reload_claimed, 1)) {
        if (atomic_load(&h->garbage) >= h->reload_after)
            (void)module_reload(h);
        atomic_store(&h->reload_claimed, 0);
    }
}

/* After a failed key creation or destruction: is it the token's general failure that a
 * reload cures (and has no healing reload run in the last HSM_HEAL_INTERVAL seconds)? Then
 * reload and tell the caller to retry once. */
static int heal(hsm_t *h, hsm_status st, CK_RV rv)
{
    long now, last;

    if (st != HSM_ERR_TOKEN || (rv != CKR_GENERAL_ERROR && rv != CKR_FUNCTION_FAILED))
        return 0;
    now = monotonic_seconds();
    last = atomic_load(&h->last_heal);
    if (last && now - last < HSM_HEAL_INTERVAL)
        return 0;
    if (!atomic_compare_exchange_strong(&h->last_heal, &last, now))
        return 0; /* another thread is healing */
    if (module_reload(h) != HSM_OK)
        return 0;
    atomic_fetch_add(&h->heals, 1);
    return 1;
}

/* The body of a public operation: call runs under the module lock (read side). */
#define LOCKED(h, call)                                                                            \
    do {                                                                                           \
        if (!(h))                                                                                  \
            return HSM_ERR_ARGS;                                                                   \
        op_enter(h);                                                                               \
        hsm_status st_ = (call);                                                                   \
        op_leave(h);                                                                               \
        return st_;                                                                                \
    } while (0)

/* The same for operations that create or destroy token objects: healed and retried once. */
#define LOCKED_HEALED(h, call)                                                                     \
    do {                                                                                           \
        if (!(h))                                                                                  \
            return HSM_ERR_ARGS;                                                                   \
        for (int attempt_ = 0;; attempt_++) {                                                      \
            op_enter(h);                                                                           \
            hsm_status st_ = (call);                                                               \
            CK_RV rv_ = last_failed_rv;                                                            \
            op_leave(h);                                                                           \
            if (st_ == HSM_OK || attempt_ > 0 || !heal((h), st_, rv_))                             \
                return st_;                                                                        \
        }                                                                                          \
    } while (0)

hsm_status hsm_rsa_generate(hsm_t *h, unsigned bits, unsigned long public_exponent,
                            const char *label, uint8_t id_out[HSM_ID_LEN])
{
    LOCKED_HEALED(h, op_rsa_generate(h, bits, public_exponent, label, id_out, NULL, NULL));
}

hsm_status hsm_rsa_import(hsm_t *h, const hsm_rsa_components *c, const char *label,
                          uint8_t id_out[HSM_ID_LEN])
{
    LOCKED_HEALED(h, op_rsa_import(h, c, label, id_out, NULL, NULL));
}

hsm_status hsm_key_import_wrapped(hsm_t *h, const uint8_t *blob, size_t blob_len, const char *label,
                                  uint8_t id_out[HSM_ID_LEN])
{
    LOCKED_HEALED(h, op_key_import_wrapped(h, blob, blob_len, label, id_out, NULL, NULL));
}

/* The sealed variants: the out-parameters are checked here, the rest by the operations. */
#define SEALED_OUT_OK(s, l) ((s) && (l) && ((*(s) = NULL), (*(l) = 0), 1))

hsm_status hsm_rsa_generate_sealed(hsm_t *h, unsigned bits, unsigned long public_exponent,
                                   const char *label, uint8_t id_out[HSM_ID_LEN], uint8_t **sealed,
                                   size_t *sealed_len)
{
    if (!SEALED_OUT_OK(sealed, sealed_len))
        return HSM_ERR_ARGS;
    LOCKED_HEALED(h, op_rsa_generate(h, bits, public_exponent, label, id_out, sealed, sealed_len));
}

hsm_status hsm_rsa_import_sealed(hsm_t *h, const hsm_rsa_components *c, const char *label,
                                 uint8_t id_out[HSM_ID_LEN], uint8_t **sealed, size_t *sealed_len)
{
    if (!SEALED_OUT_OK(sealed, sealed_len))
        return HSM_ERR_ARGS;
    LOCKED_HEALED(h, op_rsa_import(h, c, label, id_out, sealed, sealed_len));
}

hsm_status hsm_key_import_wrapped_sealed(hsm_t *h, const uint8_t *blob, size_t blob_len,
                                         const char *label, uint8_t id_out[HSM_ID_LEN],
                                         uint8_t **sealed, size_t *sealed_len)
{
    if (!SEALED_OUT_OK(sealed, sealed_len))
        return HSM_ERR_ARGS;
    LOCKED_HEALED(h, op_key_import_wrapped(h, blob, blob_len, label, id_out, sealed, sealed_len));
}

/* Equal as big-endian unsigned integers (leading zero bytes ignored). */
static int be_equal(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len)
{
    a_len = be_strip(&a, a_len);
    b_len = be_strip(&b, b_len);
    return a_len == b_len && memcmp(a, b, a_len) == 0;
}

static hsm_status op_key_load_sealed(hsm_t *h, const uint8_t id[HSM_ID_LEN], const uint8_t *sealed,
                                     size_t sealed_len, const uint8_t *n, size_t n_len,
                                     const uint8_t *e, size_t e_len)
{
    blob_parts bp;

    if (!id || !sealed || !blob_parse(sealed, sealed_len, &bp))
        return HSM_ERR_ARGS;
    if (n && (!be_equal(bp.n, bp.n_len, n, n_len) || !e || !be_equal(bp.e, bp.e_len, e, e_len)))
        return HSM_ERR_SEALED; /* another key's blob */
    atomic_store(&h->sealed_loaded, 1);
    return cache_put_sealed(h, id, sealed, sealed_len) ? HSM_OK : HSM_ERR_TOKEN;
}

hsm_status hsm_storage_key_present(hsm_t *h)
{
    CK_OBJECT_HANDLE o;
    LOCKED(h, kek_get(h, KEK_STORAGE, 0, &o));
}

hsm_status hsm_key_load_sealed(hsm_t *h, const uint8_t id[HSM_ID_LEN], const uint8_t *sealed,
                               size_t sealed_len, const uint8_t *n, size_t n_len, const uint8_t *e,
                               size_t e_len)
{
    LOCKED(h, op_key_load_sealed(h, id, sealed, sealed_len, n, n_len, e, e_len));
}

hsm_status hsm_key_destroy(hsm_t *h, const uint8_t id[HSM_ID_LEN])
{
    LOCKED_HEALED(h, op_key_destroy(h, id));
}

hsm_status hsm_rsa_public(hsm_t *h, const uint8_t id[HSM_ID_LEN], uint8_t **n, size_t *n_len,
                          uint8_t **e, size_t *e_len)
{
    LOCKED(h, op_rsa_public(h, id, n, n_len, e, e_len));
}

hsm_status hsm_rsa_bits(hsm_t *h, const uint8_t id[HSM_ID_LEN], unsigned *bits)
{
    LOCKED(h, op_rsa_bits(h, id, bits));
}

hsm_status hsm_rsa_encrypt(hsm_t *h, const uint8_t id[HSM_ID_LEN], hsm_rsa_enc_alg alg,
                           const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len)
{
    LOCKED(h, op_rsa_encrypt(h, id, alg, in, in_len, out, out_len));
}

hsm_status hsm_rsa_decrypt(hsm_t *h, const uint8_t id[HSM_ID_LEN], hsm_rsa_enc_alg alg,
                           const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len)
{
    LOCKED(h, op_rsa_decrypt(h, id, alg, in, in_len, out, out_len));
}

hsm_status hsm_sign(hsm_t *h, const uint8_t id[HSM_ID_LEN], hsm_sig_alg alg, const uint8_t *digest,
                    size_t digest_len, uint8_t *sig, size_t *sig_len)
{
    LOCKED(h, op_sign(h, id, alg, digest, digest_len, sig, sig_len));
}

hsm_status hsm_verify(hsm_t *h, const uint8_t id[HSM_ID_LEN], hsm_sig_alg alg,
                      const uint8_t *digest, size_t digest_len, const uint8_t *sig, size_t sig_len)
{
    LOCKED(h, op_verify(h, id, alg, digest, digest_len, sig, sig_len));
}

hsm_status hsm_key_export_wrapped(hsm_t *h, const uint8_t id[HSM_ID_LEN], uint8_t **blob,
                                  size_t *blob_len)
{
    LOCKED(h, op_key_export_wrapped(h, id, blob, blob_len));
}

hsm_status hsm_random(hsm_t *h, uint8_t *buf, size_t len)
{
    LOCKED(h, op_random(h, buf, len));
}

hsm_status hsm_key_foreach(hsm_t *h, void (*fn)(const uint8_t id[HSM_ID_LEN], void *ud), void *ud)
{
    uint8_t(*ids)[HSM_ID_LEN] = NULL;
    size_t nids = 0;
    hsm_status st;

    if (!h || !fn)
        return HSM_ERR_ARGS;
    op_enter(h);
    st = op_key_foreach(h, &ids, &nids);
    op_leave(h);
    /* Call back without any lock held: fn may call into hsm (e.g. hsm_key_destroy). */
    for (size_t i = 0; st == HSM_OK && i < nids; i++)
        fn(ids[i], ud);
    free(ids);
    return st;
}

const char *hsm_module_path(const hsm_t *h)
{
    return h ? h->module_path : NULL;
}

const char *hsm_token_label(const hsm_t *h)
{
    return h ? h->token_label : NULL;
}

void hsm_testing_set_functions(hsm_t *h, CK_FUNCTION_LIST *fl)
{
    if (h)
        h->fl = fl ? fl : h->module_fl;
}

CK_FUNCTION_LIST *hsm_testing_get_functions(const hsm_t *h)
{
    return h ? h->fl : NULL;
}

size_t hsm_testing_cached_pkeys(hsm_t *h)
{
    size_t n = 0;

    if (!h)
        return 0;
    pthread_rwlock_rdlock(&h->cache_lock);
    for (size_t i = 0; h->buckets && i < h->nbuckets; i++)
        for (const cache_entry *e = h->buckets[i]; e; e = e->next)
            n += e->pkey != NULL;
    pthread_rwlock_unlock(&h->cache_lock);
    return n;
}

void hsm_testing_cache_shape(hsm_t *h, size_t *count, size_t *nbuckets)
{
    pthread_rwlock_rdlock(&h->cache_lock);
    *count = h->count;
    *nbuckets = h->nbuckets;
    pthread_rwlock_unlock(&h->cache_lock);
}
