/*
 * Security properties of the real binary (issue 8, part 6), each checked from outside:
 * - secrets (the HSM PIN, private key bytes, unwrapped data keys, client secrets, access
 *   tokens, record contents) never appear in the log, the audit log or error messages, and
 *   key bytes, data keys and record contents are never written in clear in the data dir;
 * - the data dir and every file in it are private (dirs 0700, files 0600; only the public
 *   certificate is 0644);
 * - TLS 1.2 and 1.3 with AEAD ciphers and ECDHE only: TLS 1.1 and CBC suites are refused;
 * - a non-loopback listen address needs --allow-remote and logs a warning;
 * - in strict mode the mutating /_emulator endpoints answer 403 to a principal that is not an
 *   emulator admin, and work for an admin.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "serve_fixture.h"

#define TENANT "72f988bf-0000-4000-8000-00000000c0de"
#define ADMIN_ID "0a000001-0000-4000-8000-00000000a001"
#define ADMIN_SECRET "kv-admin-secret"
#define PLAIN_ID "0a000004-0000-4000-8000-00000000a004"
#define PLAIN_SECRET "no-rights-secret"

/* base64url without padding of n bytes (malloc'd). */
static char *b64url(const unsigned char *in, size_t n)
{
    size_t cap = 4 * ((n + 2) / 3) + 1;
    char *out = malloc(cap);
    assert_non_null(out);
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    assert_true(len >= 0);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    for (char *p = out; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    return out;
}

/* base64url of a bignum's big-endian bytes; raw copy in *raw / *raw_len when asked. */
static char *bn_b64url(const BIGNUM *bn, unsigned char **raw, size_t *raw_len)
{
    size_t n = (size_t)BN_num_bytes(bn);
    unsigned char *buf = malloc(n);
    assert_non_null(buf);
    BN_bn2bin(bn, buf);
    char *out = b64url(buf, n);
    if (raw) {
        *raw = buf;
        *raw_len = n;
    } else {
        free(buf);
    }
    return out;
}

static bool contains_bytes(const char *hay, size_t hay_len, const void *needle, size_t n)
{
    return n > 0 && hay_len >= n && memmem(hay, hay_len, needle, n) != NULL;
}

/* Reads a whole file (malloc'd); *len its size. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

/* A positive control for the data-dir scan: the public modulus of the imported key is stored
 * (n and e live in SQLite), so the scan must find it somewhere, raw or base64url. */
static const void *control_raw, *control_b64;
static size_t control_raw_len, control_b64_len;
static bool control_found;

typedef struct {
    const char *what;
    const void *bytes;
    size_t len;
    bool may_be_stored; /* may sit in the data dir (e.g. the PIN in hsm/pin) */
} secret;

/* Walks dir: every directory 0700, every file 0600 except tls/cert.pem (0644, public); and no
 * secret that may not be stored appears in any file. Returns the number of files read. */
static int check_tree(const char *dir, const char *rel, const secret *secrets, size_t nsecrets)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int files = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char path[1024], sub[512];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        struct stat st;
        assert_int_equal(lstat(path, &st), 0);
        if (S_ISDIR(st.st_mode)) {
            if ((st.st_mode & 0777) != 0700)
                fprintf(stderr, "directory %s has mode %o\n", sub, st.st_mode & 0777);
            assert_int_equal(st.st_mode & 0777, 0700);
            files += check_tree(path, sub, secrets, nsecrets);
            continue;
        }
        assert_true(S_ISREG(st.st_mode));
        unsigned want = !strcmp(sub, "tls/cert.pem") ? 0644 : 0600;
        if ((st.st_mode & 0777) != want)
            fprintf(stderr, "file %s has mode %o, want %o\n", sub, st.st_mode & 0777, want);
        assert_int_equal(st.st_mode & 0777, want);
        size_t len;
        char *data = slurp(path, &len);
        if (contains_bytes(data, len, control_raw, control_raw_len) ||
            contains_bytes(data, len, control_b64, control_b64_len))
            control_found = true;
        for (size_t i = 0; i < nsecrets; i++) {
            if (secrets[i].may_be_stored)
                continue;
            if (contains_bytes(data, len, secrets[i].bytes, secrets[i].len))
                fprintf(stderr, "%s found in clear in %s\n", secrets[i].what, sub);
            assert_false(contains_bytes(data, len, secrets[i].bytes, secrets[i].len));
        }
        free(data);
        files++;
    }
    closedir(d);
    return files;
}

static void assert_no_secret(const char *where, const char *text, const secret *secrets,
                             size_t nsecrets)
{
    size_t len = strlen(text);
    for (size_t i = 0; i < nsecrets; i++) {
        if (contains_bytes(text, len, secrets[i].bytes, secrets[i].len))
            fprintf(stderr, "%s appears in %s\n", secrets[i].what, where);
        assert_false(contains_bytes(text, len, secrets[i].bytes, secrets[i].len));
    }
}

/* Client-credentials token for the vault audience; NULL (and *status) when refused. */
static char *get_token(const cmk_server *s, const char *client_id, const char *client_secret,
                       const char *scope, long *status, char **body_out)
{
    char form[1024];
    snprintf(form, sizeof form,
             "grant_type=client_credentials&client_id=%s&client_secret=%s&scope=%s", client_id,
             client_secret, scope);
    char *body = NULL;
    *status = cmk_serve_request(s, "POST", "localhost", "/" TENANT "/oauth2/v2.0/token", NULL,
                                "application/x-www-form-urlencoded", form, &body);
    char *tok = NULL;
    if (*status == 200) {
        json_t *j = cmk_serve_parse(body);
        tok = strdup(json_string_value(json_object_get(j, "access_token")));
        json_decref(j);
    }
    if (body_out)
        *body_out = body;
    else
        free(body);
    return tok;
}

static void test_secrets_never_logged_or_stored_in_clear(void **state)
{
    cmk_server s = {0};
    cmk_serve_make_dir(s.dir, sizeof s.dir);
    const char *args[] = {"--log-level", "debug", NULL};
    cmk_serve_start(&s, args);

    enum { MAXS = 24 };
    secret secrets[MAXS];
    size_t ns = 0;
    char *errors = strdup(""); /* every error body the server sent, concatenated */
#define KEEP_ERROR(body)                                                                           \
    do {                                                                                           \
        size_t l1 = strlen(errors), l2 = strlen(body);                                             \
        errors = realloc(errors, l1 + l2 + 2);                                                     \
        memcpy(errors + l1, body, l2);                                                             \
        errors[l1 + l2] = '\n';                                                                    \
        errors[l1 + l2 + 1] = '\0';                                                                \
    } while (0)

    /* 1. tokens: a good client secret gives a token; a wrong one is refused without echo */
    long st;
    char *token = get_token(&s, ADMIN_ID, ADMIN_SECRET, "https%3A%2F%2Fvault.azure.net%2F.default",
                            &st, NULL);
    assert_int_equal(st, 200);
    assert_non_null(token);
    const char *sig = strrchr(token, '.');
    assert_non_null(sig);
    sig++;
    char *body = NULL;
    const char *wrong_secret = "Wr0ng-Secret-9c1f2e7a";
    assert_null(get_token(&s, ADMIN_ID, wrong_secret, "https%3A%2F%2Fvault.azure.net%2F.default",
                          &st, &body));
    assert_int_equal(st, 401);
    KEEP_ERROR(body);
    free(body);
    /* a forged bearer token (the emulator's issuer, a garbage signature): 401, no echo */
    char forged[2048];
    snprintf(forged, sizeof forged, "%.*sForgedSignature7b3d", (int)(sig - token), token);
    assert_int_equal(cmk_serve_https(&s, "GET", "localhost", "/keys/demo-key?api-version=7.5",
                                     forged, NULL, &body),
                     401);
    KEEP_ERROR(body);
    free(body);

    /* 2. a private key imported as a JWK */
    EVP_PKEY *pk = EVP_RSA_gen(2048);
    assert_non_null(pk);
    BIGNUM *bn[8] = {0};
    const char *names[8] = {OSSL_PKEY_PARAM_RSA_N,         OSSL_PKEY_PARAM_RSA_E,
                            OSSL_PKEY_PARAM_RSA_D,         OSSL_PKEY_PARAM_RSA_FACTOR1,
                            OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
                            OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1};
    char *jwk[8];
    unsigned char *raw[8] = {0};
    size_t raw_len[8] = {0};
    for (int i = 0; i < 8; i++) {
        assert_int_equal(EVP_PKEY_get_bn_param(pk, names[i], &bn[i]), 1);
        jwk[i] = bn_b64url(bn[i], &raw[i], &raw_len[i]);
    }
    control_raw = raw[0];
    control_raw_len = raw_len[0];
    control_b64 = jwk[0];
    control_b64_len = strlen(jwk[0]);
    char import[8192];
    snprintf(import, sizeof import,
             "{\"key\":{\"kty\":\"RSA\",\"key_ops\":[\"wrapKey\",\"unwrapKey\"],\"n\":\"%s\","
             "\"e\":\"%s\",\"d\":\"%s\",\"p\":\"%s\",\"q\":\"%s\",\"dp\":\"%s\",\"dq\":\"%s\","
             "\"qi\":\"%s\"}}",
             jwk[0], jwk[1], jwk[2], jwk[3], jwk[4], jwk[5], jwk[6], jwk[7]);
    assert_int_equal(cmk_serve_https(&s, "PUT", "localhost", "/keys/imported?api-version=7.5",
                                     token, import, &body),
                     200);
    json_t *j = cmk_serve_parse(body);
    char kid[600];
    snprintf(kid, sizeof kid, "%s",
             json_string_value(json_object_get(json_object_get(j, "key"), "kid")));
    assert_null(json_object_get(json_object_get(j, "key"), "d")); /* never sent back */
    json_decref(j);
    free(body);
    const char *ver = strrchr(kid, '/') + 1;
    /* the same key again with a bad field: the error must not quote the private parts */
    char bad_import[8300];
    snprintf(bad_import, sizeof bad_import,
             "{\"key\":{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%s\",\"d\":\"%s\",\"p\":\"%s\","
             "\"q\":\"!!not-base64url!!\"}}",
             jwk[0], jwk[1], jwk[2], jwk[3]);
    long bst = cmk_serve_https(&s, "PUT", "localhost", "/keys/imported2?api-version=7.5", token,
                               bad_import, &body);
    assert_int_equal(bst, 400);
    KEEP_ERROR(body);
    free(body);

    /* 3. a data key wrapped and unwrapped by the client */
    unsigned char dek[32];
    assert_int_equal(RAND_bytes(dek, sizeof dek), 1);
    char *dek64 = b64url(dek, sizeof dek);
    char req[1024], path[800];
    snprintf(req, sizeof req, "{\"alg\":\"RSA-OAEP-256\",\"value\":\"%s\"}", dek64);
    snprintf(path, sizeof path, "/keys/imported/%s/wrapkey?api-version=7.5", ver);
    assert_int_equal(cmk_serve_https(&s, "POST", "localhost", path, token, req, &body), 200);
    j = cmk_serve_parse(body);
    snprintf(req, sizeof req, "{\"alg\":\"RSA-OAEP-256\",\"value\":\"%s\"}",
             json_string_value(json_object_get(j, "value")));
    json_decref(j);
    free(body);
    snprintf(path, sizeof path, "/keys/imported/%s/unwrapkey?api-version=7.5", ver);
    assert_int_equal(cmk_serve_https(&s, "POST", "localhost", path, token, req, &body), 200);
    j = cmk_serve_parse(body);
    assert_string_equal(json_string_value(json_object_get(j, "value")), dek64);
    json_decref(j);
    free(body);
    /* an unwrap of garbage under that key: the error names no key material */
    snprintf(req, sizeof req, "{\"alg\":\"RSA-OAEP-256\",\"value\":\"%s\"}", dek64);
    assert_int_equal(cmk_serve_https(&s, "POST", "localhost", path, token, req, &body) / 100, 4);
    KEEP_ERROR(body);
    free(body);

    /* 4. a Dataverse record in a demo environment (sealed under its data key); the vault token's
     * audience does not fit, so an opaque token (the permissive default principal) */
    const char *record_marker = "Record-Content-5e8a1f4c0b";
    char rec[256];
    snprintf(rec, sizeof rec, "{\"name\":\"%s\"}", record_marker);
    assert_int_equal(cmk_serve_https(&s, "POST",
                                     "a1b2c3d4-0000-4000-8000-000000000101.crm.localhost",
                                     "/api/data/v9.2/accounts", "opaque", rec, &body) /
                         100,
                     2);
    free(body);

    /* 5. the PIN */
    char pin_path[700];
    snprintf(pin_path, sizeof pin_path, "%s/hsm/pin", s.dir);
    size_t pin_len;
    char *pin = slurp(pin_path, &pin_len);
    while (pin_len > 0 && (pin[pin_len - 1] == '\n' || pin[pin_len - 1] == '\r'))
        pin_len--;
    assert_true(pin_len >= 8);

    /* the audit log, read while the server runs */
    char *audit = NULL;
    assert_int_equal(
        cmk_serve_https(&s, "GET", "localhost", "/_emulator/audit?limit=1000", NULL, NULL, &audit),
        200);
    assert_int_equal(cmk_serve_stop(&s), 0);
    char *log = cmk_serve_stderr(&s);
    assert_non_null(strstr(log, "debug")); /* the log really was at debug level */

    secrets[ns++] = (secret){"the HSM user PIN", pin, pin_len, true};
    secrets[ns++] = (secret){"the access token", token, strlen(token), false};
    secrets[ns++] = (secret){"the access token's signature", sig, strlen(sig), false};
    secrets[ns++] = (secret){"the forged token's signature", "ForgedSignature7b3d", 19, false};
    secrets[ns++] = (secret){"the client secret", ADMIN_SECRET, strlen(ADMIN_SECRET), false};
    secrets[ns++] = (secret){"the wrong client secret", wrong_secret, strlen(wrong_secret), false};
    secrets[ns++] = (secret){"the private exponent d (base64url)", jwk[2], strlen(jwk[2]), false};
    secrets[ns++] = (secret){"the private exponent d (bytes)", raw[2], raw_len[2], false};
    secrets[ns++] = (secret){"the prime p (base64url)", jwk[3], strlen(jwk[3]), false};
    secrets[ns++] = (secret){"the prime p (bytes)", raw[3], raw_len[3], false};
    secrets[ns++] = (secret){"the unwrapped data key (base64url)", dek64, strlen(dek64), false};
    secrets[ns++] = (secret){"the unwrapped data key (bytes)", dek, sizeof dek, false};
    secrets[ns++] = (secret){"a record's content", record_marker, strlen(record_marker), false};
    assert_true(ns <= MAXS);

    assert_no_secret("the server log", log, secrets, ns);
    assert_no_secret("the audit log", audit, secrets, ns);
    /* errors: the record marker and data key are not expected there either */
    assert_no_secret("an error response", errors, secrets, ns);
    int files = check_tree(s.dir, "", secrets, ns);
    assert_true(files >= 5);    /* db, pin, so-pin, key.pem, cert.pem, token objects */
    assert_true(control_found); /* the scan does see what is stored */

    for (int i = 0; i < 8; i++) {
        BN_free(bn[i]);
        free(jwk[i]);
        free(raw[i]);
    }
    EVP_PKEY_free(pk);
    free(dek64);
    free(pin);
    free(audit);
    free(log);
    free(errors);
    free(token);
#undef KEEP_ERROR
}

/* One TLS handshake to the server with the given protocol bounds and cipher list; returns the
 * curl result and the error text in err. */
static CURLcode tls_try(const cmk_server *s, long sslversion, const char *ciphers, char *err)
{
    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof url, "https://localhost:%d/_emulator/health", s->port);
    char resolve[64];
    snprintf(resolve, sizeof resolve, "localhost:%d:127.0.0.1", s->port);
    struct curl_slist *res = curl_slist_append(NULL, resolve);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_RESOLVE, res);
    curl_easy_setopt(c, CURLOPT_CAINFO, s->cert);
    curl_easy_setopt(c, CURLOPT_SSLVERSION, sslversion);
    if (ciphers)
        curl_easy_setopt(c, CURLOPT_SSL_CIPHER_LIST, ciphers);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    err[0] = '\0';
    CURLcode rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    curl_slist_free_all(res);
    return rc;
}

static void test_tls_versions_and_ciphers(void **state)
{
    cmk_server s = {0};
    cmk_serve_make_dir(s.dir, sizeof s.dir);
    cmk_serve_start(&s, NULL);
    char err[CURL_ERROR_SIZE];
    /* accepted: TLS 1.3, and TLS 1.2 with an ECDHE AEAD suite */
    assert_int_equal(tls_try(&s, CURL_SSLVERSION_TLSv1_3, NULL, err), CURLE_OK);
    assert_int_equal(tls_try(&s, CURL_SSLVERSION_TLSv1_2 | CURL_SSLVERSION_MAX_TLSv1_2,
                             "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384", err),
                     CURLE_OK);
    /* refused by the server (the client is allowed to offer them: security level 0, so a
     * failure cannot come from the client's own policy) */
    const struct {
        long version;
        const char *ciphers;
    } refused[] = {
        {CURL_SSLVERSION_TLSv1_1 | CURL_SSLVERSION_MAX_TLSv1_1, "DEFAULT:@SECLEVEL=0"},
        {CURL_SSLVERSION_TLSv1_0 | CURL_SSLVERSION_MAX_TLSv1_0, "DEFAULT:@SECLEVEL=0"},
        {CURL_SSLVERSION_TLSv1_2 | CURL_SSLVERSION_MAX_TLSv1_2,
         "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:@SECLEVEL=0"},
        {CURL_SSLVERSION_TLSv1_2 | CURL_SSLVERSION_MAX_TLSv1_2, "AES128-GCM-SHA256:@SECLEVEL=0"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        CURLcode rc = tls_try(&s, refused[i].version, refused[i].ciphers, err);
        if (rc == CURLE_OK || strstr(err, "no protocols available") ||
            strstr(err, "no ciphers available"))
            fprintf(stderr, "case %zu: rc=%d err=%s\n", i, rc, err);
        assert_int_not_equal(rc, CURLE_OK);
        assert_null(strstr(err, "no protocols available"));
        assert_null(strstr(err, "no ciphers available"));
    }
    /* and the server still serves afterwards */
    assert_int_equal(tls_try(&s, CURL_SSLVERSION_TLSv1_2, NULL, err), CURLE_OK);
    assert_int_equal(cmk_serve_stop(&s), 0);
}

static void test_remote_listen_warns(void **state)
{
    cmk_server s = {0};
    cmk_serve_make_dir(s.dir, sizeof s.dir);
    const char *args[] = {"--listen", "0.0.0.0:0", "--allow-remote", NULL};
    cmk_serve_start(&s, args);
    assert_int_equal(cmk_serve_https(&s, "GET", "localhost", "/_emulator/health", NULL, NULL, NULL),
                     200);
    assert_int_equal(cmk_serve_stop(&s), 0);
    char *log = cmk_serve_stderr(&s);
    const char *w = strstr(log, "warn");
    assert_non_null(w);
    assert_non_null(strstr(w, "not a loopback address"));
    assert_non_null(strstr(w, "--auth strict"));
    free(log);

    /* loopback (the default): no such warning */
    cmk_server l = {0};
    cmk_serve_make_dir(l.dir, sizeof l.dir);
    cmk_serve_start(&l, NULL);
    assert_int_equal(cmk_serve_stop(&l), 0);
    log = cmk_serve_stderr(&l);
    assert_null(strstr(log, "not a loopback address"));
    free(log);
}

static void test_strict_admin_endpoints(void **state)
{
    cmk_server s = {0};
    cmk_serve_make_dir(s.dir, sizeof s.dir);
    const char *args[] = {"--auth", "strict", NULL};
    cmk_serve_start(&s, args);
    long st;
    const char *scope = "https%3A%2F%2Fvault.azure.net%2F.default";
    char *admin = get_token(&s, ADMIN_ID, ADMIN_SECRET, scope, &st, NULL);
    assert_non_null(admin);
    char *plain = get_token(&s, PLAIN_ID, PLAIN_SECRET, scope, &st, NULL);
    assert_non_null(plain);

    const struct {
        const char *method, *path, *body;
    } mutating[] = {
        {"POST", "/_emulator/clock", "{\"advance\":\"PT1S\"}"},
        {"POST", "/_emulator/tokens", "{\"principal\":\"kv-admin-app\"}"},
    };
    for (size_t i = 0; i < sizeof mutating / sizeof mutating[0]; i++) {
        char *body = NULL;
        /* no token: the 401 challenge; a plain principal: 403 naming the rule */
        assert_int_equal(cmk_serve_https(&s, mutating[i].method, "localhost", mutating[i].path,
                                         NULL, mutating[i].body, &body),
                         401);
        free(body);
        assert_int_equal(cmk_serve_https(&s, mutating[i].method, "localhost", mutating[i].path,
                                         plain, mutating[i].body, &body),
                         403);
        assert_non_null(strstr(body, "admin"));
        free(body);
    }
    /* the clock did not move for the refused calls; the admin moves it */
    char *body = NULL;
    assert_int_equal(cmk_serve_https(&s, "GET", "localhost", "/_emulator/clock", NULL, NULL, &body),
                     200);
    json_t *j = cmk_serve_parse(body);
    assert_int_equal(json_integer_value(json_object_get(j, "offsetSeconds")), 0);
    json_decref(j);
    free(body);
    assert_int_equal(cmk_serve_https(&s, "POST", "localhost", "/_emulator/clock", admin,
                                     "{\"advance\":\"PT1S\"}", &body),
                     200);
    free(body);
    assert_int_equal(cmk_serve_https(&s, "GET", "localhost", "/_emulator/clock", NULL, NULL, &body),
                     200);
    j = cmk_serve_parse(body);
    assert_int_equal(json_integer_value(json_object_get(j, "offsetSeconds")), 1);
    json_decref(j);
    free(body);
    assert_int_equal(cmk_serve_stop(&s), 0);
    free(admin);
    free(plain);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secrets_never_logged_or_stored_in_clear),
        cmocka_unit_test(test_tls_versions_and_ciphers),
        cmocka_unit_test(test_remote_listen_warns),
        cmocka_unit_test(test_strict_admin_endpoints),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
