/*
 * bench_crypto.c: `cmkharness bench-crypto`, the in-process record encryption path.
 *
 * Measures, with N threads for S seconds each, on buffers of --size bytes:
 *   seal  pp_seal: what the emulator does per record write (random nonce, AES-256-GCM with the
 *         record's AAD, tag), linked from emulator/powerplatform/envelope.c;
 *   open  pp_open: the read path (tag checked, plaintext copied out);
 *   evp   the reference: EVP_EncryptUpdate of the same buffer on a context set up once, which
 *         is what `openssl speed -evp aes-256-gcm -bytes SIZE` times.
 * and prints the ratios seal/evp and open/evp measured in the same run. No HSM, no HTTP.
 */
#include "bench.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "powerplatform/envelope.h"

#define CRYPTO_MAX_THREADS 64
#define CRYPTO_MAX_SIZE (1024 * 1024)

typedef enum { K_SEAL = 0, K_OPEN, K_EVP, K_COUNT } crypto_kind;
static const char *const kind_name[K_COUNT] = {"seal", "open", "evp"};

typedef struct {
    crypto_kind kind;
    const pp_dek *dek;
    const uint8_t *pt, *sealed;
    size_t size, sealed_len;
    double seconds;
    unsigned long ops;
    int failed;
} crypto_job;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char AAD[] = "a1b2c3d4-0000-4000-8000-000000000101/accounts/bench";

static void *crypto_thread(void *arg)
{
    crypto_job *j = arg;
    double end = now_s() + j->seconds;
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *out = NULL, iv[PP_NONCE_LEN] = {0};
    int n;

    if (j->kind == K_EVP) {
        out = malloc(j->size + 32);
        ctx = EVP_CIPHER_CTX_new();
        if (!out || !ctx || EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, j->dek->bytes, iv) != 1) {
            j->failed = 1;
            goto out;
        }
    }
    while (now_s() < end) {
        for (int batch = 0; batch < 16; batch++) {
            if (j->kind == K_SEAL) {
                uint8_t *blob = NULL;
                size_t blen = 0;
                if (pp_seal(j->dek, AAD, sizeof(AAD) - 1, j->pt, j->size, &blob, &blen) !=
                    PP_ENVELOPE_OK) {
                    j->failed = 1;
                    goto out;
                }
                free(blob);
            } else if (j->kind == K_OPEN) {
                char *pt = NULL;
                size_t plen = 0;
                if (pp_open(j->dek, AAD, sizeof(AAD) - 1, j->sealed, j->sealed_len, &pt, &plen) !=
                        PP_ENVELOPE_OK ||
                    plen != j->size) {
                    j->failed = 1;
                    goto out;
                }
                free(pt);
            } else if (EVP_EncryptUpdate(ctx, out, &n, j->pt, (int)j->size) != 1) {
                j->failed = 1;
                goto out;
            }
            j->ops++;
        }
    }
out:
    EVP_CIPHER_CTX_free(ctx);
    free(out);
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cmkharness bench-crypto [--size BYTES] [--threads N] [--duration S] "
               "[--json]\n"
               "In-process AES-256-GCM record encryption: pp_seal and pp_open (the emulator's\n"
               "code) against EVP_EncryptUpdate on a prepared context (what `openssl speed -evp\n"
               "aes-256-gcm` times), same size and threads, in the same run.\n"
               "defaults: --size 16384 --threads 1 --duration 3\n");
}

int cmkh_bench_crypto_main(int argc, char **argv)
{
    double size = 16384, threads = 1, seconds = 3;
    int json = 0, rc = 1;
    pp_dek dek;
    uint8_t *pt = NULL, *sealed = NULL;
    size_t sealed_len = 0;
    double rate[K_COUNT] = {0};

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double *dst = NULL, lo = 0, hi = 0;

        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--size"))
            dst = &size, lo = 16, hi = CRYPTO_MAX_SIZE;
        else if (!strcmp(a, "--threads"))
            dst = &threads, lo = 1, hi = CRYPTO_MAX_THREADS;
        else if (!strcmp(a, "--duration"))
            dst = &seconds, lo = 0.1, hi = 600;
        if (!dst || !v || hx_parse_double(v, lo, hi, dst) != 0) {
            fprintf(stderr, "cmkharness bench-crypto: bad option %s%s%s\n", a, v ? " " : "",
                    v ? v : "");
            usage(stderr);
            return 2;
        }
        i++;
    }
    size_t sz = (size_t)size;
    unsigned nt = (unsigned)threads;
    memset(&dek, 0, sizeof(dek));
    pt = malloc(sz);
    if (!pt || RAND_bytes(dek.bytes, sizeof(dek.bytes)) != 1 || RAND_bytes(pt, (int)sz) != 1)
        goto out;
    dek.loaded = true;
    if (pp_seal(&dek, AAD, sizeof(AAD) - 1, pt, sz, &sealed, &sealed_len) != PP_ENVELOPE_OK)
        goto out;
    for (int k = 0; k < K_COUNT; k++) {
        crypto_job jobs[CRYPTO_MAX_THREADS];
        pthread_t tid[CRYPTO_MAX_THREADS];
        unsigned long ops = 0;

        for (unsigned t = 0; t < nt; t++) {
            jobs[t] = (crypto_job){.kind = (crypto_kind)k, .dek = &dek, .pt = pt,
                                   .sealed = sealed, .size = sz, .sealed_len = sealed_len,
                                   .seconds = seconds};
            if (pthread_create(&tid[t], NULL, crypto_thread, &jobs[t]) != 0)
                abort();
        }
        for (unsigned t = 0; t < nt; t++) {
            pthread_join(tid[t], NULL);
            if (jobs[t].failed) {
                fprintf(stderr, "cmkharness bench-crypto: %s failed\n", kind_name[k]);
                goto out;
            }
            ops += jobs[t].ops;
        }
        rate[k] = (double)ops / seconds;
    }
    if (json) {
        json_t *j = json_pack("{s:I,s:i,s:f}", "size", (json_int_t)sz, "threads", (int)nt,
                              "duration_s", seconds);
        for (int k = 0; k < K_COUNT; k++)
            json_object_set_new(j, kind_name[k],
                                json_pack("{s:f,s:f}", "ops_per_s", rate[k], "mb_per_s",
                                          rate[k] * (double)sz / 1e6));
        json_object_set_new(j, "seal_ratio", json_real(rate[K_EVP] > 0 ? rate[K_SEAL] / rate[K_EVP] : 0));
        json_object_set_new(j, "open_ratio", json_real(rate[K_EVP] > 0 ? rate[K_OPEN] / rate[K_EVP] : 0));
        char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6));
        json_decref(j);
        if (!s)
            goto out;
        printf("%s\n", s);
        free(s);
    } else {
        printf("bench-crypto: AES-256-GCM, %zu bytes, %u thread(s), %.1f s each\n", sz, nt, seconds);
        for (int k = 0; k < K_COUNT; k++)
            printf("  %-5s %10.0f ops/s  %8.0f MB/s\n", kind_name[k], rate[k],
                   rate[k] * (double)sz / 1e6);
        printf("  ratio seal / evp = %.3f, open / evp = %.3f\n",
               rate[K_EVP] > 0 ? rate[K_SEAL] / rate[K_EVP] : 0,
               rate[K_EVP] > 0 ? rate[K_OPEN] / rate[K_EVP] : 0);
    }
    rc = 0;
out:
    pp_dek_wipe(&dek);
    free(pt);
    free(sealed);
    return rc;
}
