/*
 * bench: `cmkharness bench` (load generator, latency histogram, PKCS#11 ceiling).
 * main.c dispatches `cmkharness bench ARGS...` here; argv[0] is "bench".
 * Returns the process exit code.
 */
#ifndef CMKH_BENCH_H
#define CMKH_BENCH_H

int cmkh_bench_main(int argc, char **argv);
/* A whole-string decimal number within [lo, hi] into *out: 0, else -1 (command-line values). */
int hx_parse_double(const char *s, double lo, double hi, double *out);
/* `cmkharness bench-crypto`: the in-process record encryption path (bench_crypto.c). */
int cmkh_bench_crypto_main(int argc, char **argv);
/* {"key": JWK} of a fresh client-made RSA-2048 key with its private parts (an import body);
 * malloc'd, the caller wipes and frees it. NULL on failure. */
char *hx_bench_import_body(void);

#endif
