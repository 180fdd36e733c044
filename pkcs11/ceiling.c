/*
 * ceiling.c: raw PKCS#11 rates on a throw-away SoftHSM token (see ceiling.h).
 *
 * Set-up goes through the hsm.h API (hsm_open creates and logs in to the token, hsm_rsa_generate
 * makes the key, hsm_rsa_public exports it). The measured loops then call the module's own
 * CK_FUNCTION_LIST directly, as hsm.c does: dlopen() of the module path returns the library
 * libp11 already loaded and initialised, and login state belongs to the application, so the
 * sessions opened here are logged in. Each thread owns one session for the whole run; object
 * handles are found once, before the clock starts.
 */
#include "ceiling.h"
#include "hsm_openssl.h"

#include <p11-kit/pkcs11.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <dlfcn.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CEIL_TOKEN_LABEL "cmkemu-ceiling"
#define CEIL_PAYLOAD 32 /* bytes wrapped/unwrapped per operation, like a data key */
#define CEIL_MAX_MOD 512
#define CEIL_MAX_THREADS 256
#define CEIL_ERR_MAX 160

typedef struct ceil_run ceil_run;

typedef struct {
    ceil_run *run;
    unsigned index;
    pthread_t tid;
    int started;
    CK_SESSION_HANDLE session;
    int have_session;
    unsigned long ops, errors;
    double t0, t1; /* active interval, CLOCK_MONOTONIC seconds */
} ceil_thread;

struct ceil_run {
    const hsm_ceiling_config *cfg;
    hsm_rsa_enc_alg alg;
    unsigned bits;
    CK_FUNCTION_LIST *fl;
    CK_SLOT_ID slot;
    CK_OBJECT_HANDLE priv;
    EVP_PKEY *pub;
    uint8_t plain[CEIL_PAYLOAD];
    uint8_t cipher[CEIL_MAX_MOD];
    size_t cipher_len;
    pthread_barrier_t start;
    atomic_int stop;
    pthread_mutex_t err_lock;
    char first_error[CEIL_ERR_MAX]; /* under err_lock */
};

static void err_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void err_set(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

const char *hsm_ceiling_op_str(hsm_ceiling_op op)
{
    switch (op) {
    case HSM_CEILING_UNWRAP:
        return "C_Decrypt";
    case HSM_CEILING_WRAP:
        return "OpenSSL public-key encrypt";
    case HSM_CEILING_CREATE:
        return "C_GenerateKeyPair";
    }
    return "?";
}

/* Records the first failure of the run (later ones are only counted). */
static void run_fail(ceil_run *r, const char *what, unsigned long rv)
{
    pthread_mutex_lock(&r->err_lock);
    if (!r->first_error[0])
        snprintf(r->first_error, sizeof(r->first_error), "%s: 0x%lx", what, rv);
    pthread_mutex_unlock(&r->err_lock);
}

/* ---------------------------------------------------------------------------------------- */
/* OpenSSL helpers                                                                            */

/* OAEP encryption exactly as hsm_rsa_encrypt does it (a fresh EVP_PKEY_CTX per operation). */
static int oaep_encrypt(EVP_PKEY *pub, hsm_rsa_enc_alg alg, const uint8_t *in, size_t in_len,
                        uint8_t *out, size_t *out_len)
{
    const EVP_MD *md = alg == HSM_RSA_OAEP_SHA1 ? EVP_sha1() : EVP_sha256();
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);
    size_t olen = CEIL_MAX_MOD;
    int ok = pctx && EVP_PKEY_encrypt_init(pctx) > 0 &&
             EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_oaep_md(pctx, md) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) > 0 &&
             EVP_PKEY_encrypt(pctx, out, &olen, in, in_len) > 0;

    EVP_PKEY_CTX_free(pctx);
    if (!ok) {
        ERR_clear_error();
        return 0;
    }
    *out_len = olen;
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* One operation per call; 1 = success                                                        */

static int op_unwrap(ceil_run *r, ceil_thread *t)
{
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM mech = {CKM_RSA_X_509, NULL, 0};
    uint8_t raw[CEIL_MAX_MOD], out[CEIL_MAX_MOD];
    CK_ULONG rlen = sizeof(raw);
    size_t k = r->cipher_len;
    size_t out_len;
    int ok = 0;
    CK_RV rv;

    if (r->alg == HSM_RSA_OAEP_SHA1) {
        mech.mechanism = CKM_RSA_PKCS_OAEP;
        mech.pParameter = &oaep;
        mech.ulParameterLen = sizeof(oaep);
    }
    rv = r->fl->C_DecryptInit(t->session, &mech, r->priv);
    if (rv == CKR_OK)
        rv = r->fl->C_Decrypt(t->session, r->cipher, (CK_ULONG)k, raw, &rlen);
    if (rv != CKR_OK) {
        run_fail(r, "C_Decrypt", (unsigned long)rv);
        goto out;
    }
    if (r->alg == HSM_RSA_OAEP_SHA1) {
        memcpy(out, raw, rlen);
        out_len = rlen;
    } else {
        int mlen;

        if (rlen > k) {
            run_fail(r, "C_Decrypt returned too many bytes", (unsigned long)rlen);
            goto out;
        }
        if (rlen < k) {
            memmove(raw + (k - rlen), raw, rlen);
            memset(raw, 0, k - rlen);
        }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        mlen = RSA_padding_check_PKCS1_OAEP_mgf1(out, (int)sizeof(out), raw, (int)k, (int)k, NULL,
                                                 0, EVP_sha256(), EVP_sha256());
#pragma GCC diagnostic pop
        if (mlen < 0) {
            ERR_clear_error();
            run_fail(r, "OAEP-SHA256 decoding failed", 0);
            goto out;
        }
        out_len = (size_t)mlen;
    }
    if (out_len != CEIL_PAYLOAD || memcmp(out, r->plain, CEIL_PAYLOAD) != 0) {
        run_fail(r, "unwrapped value differs", (unsigned long)out_len);
        goto out;
    }
    ok = 1;
out:
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(out, sizeof(out));
    return ok;
}

static int op_wrap(ceil_run *r, ceil_thread *t)
{
    uint8_t out[CEIL_MAX_MOD];
    size_t out_len;

    (void)t;
    if (!oaep_encrypt(r->pub, r->alg, r->plain, sizeof(r->plain), out, &out_len)) {
        run_fail(r, "EVP_PKEY_encrypt", 0);
        return 0;
    }
    return 1;
}

static int op_create(ceil_run *r, ceil_thread *t)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG mbits = r->bits;
    CK_BYTE e[3] = {0x01, 0x00, 0x01};
    CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
    uint8_t id[HSM_ID_LEN];
    CK_RV rv;

    if (RAND_bytes(id, sizeof(id)) != 1) {
        run_fail(r, "RAND_bytes", 0);
        return 0;
    }
    /* the templates of hsm_rsa_generate, without CKA_LABEL: the public half is a session
     * object, destroyed at once (only the private key is stored in the token) */
    CK_ATTRIBUTE pub_t[] = {
        {CKA_TOKEN, &no, sizeof(no)},        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_ENCRYPT, &yes, sizeof(yes)},    {CKA_WRAP, &yes, sizeof(yes)},
        {CKA_VERIFY, &yes, sizeof(yes)},     {CKA_MODULUS_BITS, &mbits, sizeof(mbits)},
        {CKA_PUBLIC_EXPONENT, e, sizeof(e)}, {CKA_ID, id, sizeof(id)},
    };
    CK_ATTRIBUTE priv_t[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},     {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &yes, sizeof(yes)},
        {CKA_DECRYPT, &yes, sizeof(yes)},   {CKA_UNWRAP, &yes, sizeof(yes)},
        {CKA_SIGN, &yes, sizeof(yes)},      {CKA_ID, id, sizeof(id)},
    };
    rv = r->fl->C_GenerateKeyPair(t->session, &mech, pub_t, sizeof(pub_t) / sizeof(pub_t[0]),
                                  priv_t, sizeof(priv_t) / sizeof(priv_t[0]), &pub, &priv);
    if (rv != CKR_OK) {
        run_fail(r, "C_GenerateKeyPair", (unsigned long)rv);
        return 0;
    }
    (void)r->fl->C_DestroyObject(t->session, pub);
    return 1;
}

static void *thread_main(void *arg)
{
    ceil_thread *t = arg;
    ceil_run *r = t->run;
    int (*op)(ceil_run *, ceil_thread *) = r->cfg->op == HSM_CEILING_UNWRAP ? op_unwrap
                                           : r->cfg->op == HSM_CEILING_WRAP ? op_wrap
                                                                            : op_create;

    pthread_barrier_wait(&r->start);
    t->t0 = now_s();
    if (t->have_session) {
        while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
            if (op(r, t))
                t->ops++;
            else
                t->errors++;
        }
    }
    t->t1 = now_s();
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Set-up                                                                                     */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (flag == FTW_DP)
        (void)rmdir(path);
    else
        (void)unlink(path);
    return 0;
}

static hsm_status module_attach(const char *module, CK_FUNCTION_LIST **fl, void **dl, char *err,
                                size_t errlen)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR) = NULL;
    void *sym;
    CK_RV rv;

    *dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (!*dl) {
        err_set(err, errlen, "dlopen %s: %s", module, dlerror());
        return HSM_ERR_MODULE;
    }
    sym = dlsym(*dl, "C_GetFunctionList");
    if (!sym) {
        err_set(err, errlen, "%s has no C_GetFunctionList", module);
        return HSM_ERR_MODULE;
    }
    memcpy(&get_list, &sym, sizeof(get_list));
    rv = get_list(fl);
    if (rv != CKR_OK || !*fl) {
        err_set(err, errlen, "C_GetFunctionList: 0x%lx", (unsigned long)rv);
        return HSM_ERR_MODULE;
    }
    return HSM_OK;
}

static hsm_status slot_find(ceil_run *r, char *err, size_t errlen)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = sizeof(slots) / sizeof(slots[0]);
    char want[32];
    size_t llen = strlen(CEIL_TOKEN_LABEL);
    CK_RV rv;

    memset(want, ' ', sizeof(want));
    memcpy(want, CEIL_TOKEN_LABEL, llen);
    rv = r->fl->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK) {
        err_set(err, errlen, "C_GetSlotList: 0x%lx", (unsigned long)rv);
        return HSM_ERR_TOKEN;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;

        if (r->fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK &&
            memcmp(ti.label, want, sizeof(want)) == 0) {
            r->slot = slots[i];
            return HSM_OK;
        }
    }
    err_set(err, errlen, "token %s not found after creation", CEIL_TOKEN_LABEL);
    return HSM_ERR_TOKEN;
}

static hsm_status priv_find(ceil_run *r, CK_SESSION_HANDLE s, const uint8_t id[HSM_ID_LEN],
                            char *err, size_t errlen)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, HSM_ID_LEN}};
    CK_ULONG n = 0;
    CK_RV rv;

    rv = r->fl->C_FindObjectsInit(s, tmpl, 2);
    if (rv == CKR_OK) {
        rv = r->fl->C_FindObjects(s, &r->priv, 1, &n);
        (void)r->fl->C_FindObjectsFinal(s);
    }
    if (rv != CKR_OK || n != 1) {
        err_set(err, errlen, "cannot find the ceiling key (0x%lx)", (unsigned long)rv);
        return HSM_ERR_TOKEN;
    }
    return HSM_OK;
}

/* Makes the key, its public half and the ciphertext the unwrap loop decrypts. */
static hsm_status key_setup(ceil_run *r, hsm_t *h, char *err, size_t errlen)
{
    uint8_t id[HSM_ID_LEN];
    uint8_t *n = NULL, *e = NULL;
    size_t n_len = 0, e_len = 0;
    CK_SESSION_HANDLE s;
    hsm_status st;
    CK_RV rv;

    st = hsm_rsa_generate(h, r->bits, 0, "ceiling", id);
    if (st == HSM_OK)
        st = hsm_rsa_public(h, id, &n, &n_len, &e, &e_len);
    if (st != HSM_OK) {
        err_set(err, errlen, "ceiling key generation: %s", hsm_status_str(st));
        goto out;
    }
    r->pub = hsm_pkey_from_ne(n, n_len, e, e_len);
    if (!r->pub || RAND_bytes(r->plain, sizeof(r->plain)) != 1 ||
        !oaep_encrypt(r->pub, r->alg, r->plain, sizeof(r->plain), r->cipher, &r->cipher_len)) {
        err_set(err, errlen, "ceiling: OpenSSL set-up failed");
        st = HSM_ERR_TOKEN;
        goto out;
    }
    rv = r->fl->C_OpenSession(r->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        err_set(err, errlen, "C_OpenSession: 0x%lx", (unsigned long)rv);
        st = HSM_ERR_TOKEN;
        goto out;
    }
    st = priv_find(r, s, id, err, errlen);
    (void)r->fl->C_CloseSession(s);
out:
    free(n);
    free(e);
    return st;
}

static hsm_status cfg_check(const hsm_ceiling_config *cfg, char *err, size_t errlen)
{
    if (cfg->op != HSM_CEILING_UNWRAP && cfg->op != HSM_CEILING_WRAP &&
        cfg->op != HSM_CEILING_CREATE) {
        err_set(err, errlen, "ceiling: unknown operation");
        return HSM_ERR_ARGS;
    }
    if (cfg->alg != 0 && cfg->alg != HSM_RSA_OAEP_SHA1 && cfg->alg != HSM_RSA_OAEP_SHA256) {
        err_set(err, errlen, "ceiling: algorithm must be RSA-OAEP or RSA-OAEP-256");
        return HSM_ERR_ARGS;
    }
    if (cfg->bits != 0 && cfg->bits != 2048 && cfg->bits != 3072 && cfg->bits != 4096) {
        err_set(err, errlen, "ceiling: key size must be 2048, 3072 or 4096");
        return HSM_ERR_ARGS;
    }
    if (cfg->threads < 1 || cfg->threads > CEIL_MAX_THREADS) {
        err_set(err, errlen, "ceiling: threads must be 1..%d", CEIL_MAX_THREADS);
        return HSM_ERR_ARGS;
    }
    if (!(cfg->seconds >= 0.1 && cfg->seconds <= 3600)) {
        err_set(err, errlen, "ceiling: seconds must be 0.1..3600");
        return HSM_ERR_ARGS;
    }
    return HSM_OK;
}

hsm_status hsm_ceiling_run(const hsm_ceiling_config *cfg, hsm_ceiling_result *out, char *err,
                           size_t errlen)
{
    hsm_status st = HSM_OK;
    ceil_run r;
    ceil_thread *th = NULL;
    hsm_t *h = NULL;
    void *dl = NULL;
    char dir[4096] = "";
    char *saved_conf = NULL;
    int had_conf = 0, barrier_ready = 0, lock_ready = 0;
    unsigned nthreads = 0;
    struct timespec nap;

    if (err && errlen)
        err[0] = '\0';
    if (!cfg || !out) {
        err_set(err, errlen, "ceiling: no configuration");
        return HSM_ERR_ARGS;
    }
    memset(out, 0, sizeof(*out));
    st = cfg_check(cfg, err, errlen);
    if (st != HSM_OK)
        return st;
    memset(&r, 0, sizeof(r));
    r.cfg = cfg;
    r.alg = cfg->alg ? cfg->alg : HSM_RSA_OAEP_SHA256;
    r.bits = cfg->bits ? cfg->bits : 2048;
    nthreads = cfg->threads;
    atomic_init(&r.stop, 0);
    pthread_mutex_init(&r.err_lock, NULL);
    lock_ready = 1;

    {
        const char *prev = getenv("SOFTHSM2_CONF");
        if (prev) {
            had_conf = 1;
            saved_conf = strdup(prev);
            if (!saved_conf) {
                err_set(err, errlen, "out of memory");
                st = HSM_ERR_IO;
                goto out;
            }
        }
    }
    if ((size_t)snprintf(dir, sizeof(dir), "%s/cmkemu-ceiling-XXXXXX",
                         cfg->tmp_dir ? cfg->tmp_dir : "/tmp") >= sizeof(dir)) {
        err_set(err, errlen, "ceiling: temporary directory path too long");
        dir[0] = '\0';
        st = HSM_ERR_ARGS;
        goto out;
    }
    if (!mkdtemp(dir)) {
        err_set(err, errlen, "mkdtemp %s: %s", dir, strerror(errno));
        dir[0] = '\0';
        st = HSM_ERR_IO;
        goto out;
    }
    {
        hsm_config hc = {.data_dir = dir, .token_label = CEIL_TOKEN_LABEL};
        char herr[256];

        st = hsm_open(&hc, &h, herr, sizeof(herr));
        if (st != HSM_OK) {
            err_set(err, errlen, "ceiling token: %s", herr);
            goto out;
        }
    }
    st = module_attach(hsm_module_path(h), &r.fl, &dl, err, errlen);
    if (st == HSM_OK)
        st = slot_find(&r, err, errlen);
    if (st == HSM_OK && cfg->op != HSM_CEILING_CREATE)
        st = key_setup(&r, h, err, errlen);
    if (st != HSM_OK)
        goto out;

    th = calloc(nthreads, sizeof(*th));
    if (!th || pthread_barrier_init(&r.start, NULL, nthreads + 1) != 0) {
        err_set(err, errlen, "ceiling: out of memory");
        st = HSM_ERR_IO;
        goto out;
    }
    barrier_ready = 1;
    for (unsigned i = 0; i < nthreads; i++) {
        CK_RV rv;

        th[i].run = &r;
        th[i].index = i;
        rv = r.fl->C_OpenSession(r.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                 &th[i].session);
        if (rv != CKR_OK) {
            err_set(err, errlen, "C_OpenSession: 0x%lx", (unsigned long)rv);
            st = HSM_ERR_TOKEN;
            break;
        }
        th[i].have_session = 1;
    }
    if (st != HSM_OK)
        atomic_store(&r.stop, 1); /* threads start, see stop, and leave at once */
    for (unsigned i = 0; i < nthreads; i++) {
        if (pthread_create(&th[i].tid, NULL, thread_main, &th[i]) != 0) {
            /* a thread short: the barrier would never open; give up before waiting on it */
            fprintf(stderr, "ceiling: pthread_create failed\n");
            abort();
        }
        th[i].started = 1;
    }
    pthread_barrier_wait(&r.start);
    {
        double secs = st == HSM_OK ? cfg->seconds : 0;
        nap.tv_sec = (time_t)secs;
        nap.tv_nsec = (long)((secs - (double)nap.tv_sec) * 1e9);
        while (nanosleep(&nap, &nap) != 0 && errno == EINTR)
            ;
    }
    atomic_store(&r.stop, 1);
    for (unsigned i = 0; i < nthreads; i++)
        if (th[i].started)
            pthread_join(th[i].tid, NULL);
    if (st == HSM_OK) {
        double first = 0, last = 0;

        for (unsigned i = 0; i < nthreads; i++) {
            double span = th[i].t1 - th[i].t0;

            out->ops += th[i].ops;
            out->errors += th[i].errors;
            if (span > 0)
                out->ops_per_s += (double)th[i].ops / span;
            if (i == 0 || th[i].t0 < first)
                first = th[i].t0;
            if (i == 0 || th[i].t1 > last)
                last = th[i].t1;
        }
        out->seconds = last - first;
        out->threads = nthreads;
        if (out->errors && r.first_error[0])
            err_set(err, errlen, "%s", r.first_error);
    }
out:
    if (th) {
        for (unsigned i = 0; i < nthreads; i++)
            if (th[i].have_session)
                (void)r.fl->C_CloseSession(th[i].session);
    }
    if (barrier_ready)
        pthread_barrier_destroy(&r.start);
    free(th);
    EVP_PKEY_free(r.pub);
    OPENSSL_cleanse(r.plain, sizeof(r.plain));
    hsm_close(h);
    if (dl)
        dlclose(dl);
    if (dir[0])
        (void)nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (had_conf)
        (void)setenv("SOFTHSM2_CONF", saved_conf, 1);
    else
        (void)unsetenv("SOFTHSM2_CONF");
    free(saved_conf);
    if (lock_ready)
        pthread_mutex_destroy(&r.err_lock);
    return st;
}
