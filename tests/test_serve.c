/*
 * Integration: starts the real `cmkemu serve` binary on a free port with a temporary data
 * dir, talks HTTPS to it with libcurl trusting only the generated certificate, stops it,
 * restarts it on the same dir and checks that state survived. Also checks that bad flags and
 * unusable data dirs / modules exit non-zero with one clear line.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <openssl/ssl.h>
#include <jansson.h>

#ifndef CMKEMU_BIN
#error CMKEMU_BIN must be defined
#endif

#include "serve_fixture.h"

static void test_serve_health_restart(void **state)
{
    cmk_server s = {0};
    cmk_serve_make_dir(s.dir, sizeof s.dir);
    cmk_serve_start1(&s, "--threads=2");

    /* health over HTTPS, verified against the generated certificate */
    char *body = NULL;
    assert_int_equal(
        cmk_serve_https(&s, "GET", "localhost", "/_emulator/health", NULL, NULL, &body), 200);
    json_t *j = cmk_serve_parse(body);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
    /* the demo world was committed and made durable, some commits sharing a sync */
    {
        json_t *st = json_object_get(j, "store");
        json_int_t commits = json_integer_value(json_object_get(st, "commits"));
        json_int_t syncs = json_integer_value(json_object_get(st, "syncs"));
        assert_true(commits > 0);
        assert_true(syncs > 0);
        assert_true(syncs <= commits);
        json_t *failed = json_object_get(st, "failedBatches");
        assert_true(json_is_integer(failed));
        assert_int_equal(json_integer_value(failed), 0);
    }
    json_decref(j);
    free(body);

    /* the certificate also covers 127.0.0.1 and *.vault.localhost */
    assert_int_equal(cmk_serve_https(&s, "GET", "127.0.0.1", "/_emulator/health", NULL, NULL, NULL),
                     200);
    assert_int_equal(cmk_serve_https(&s, "GET", "scratch.vault.localhost", "/_emulator/health",
                                     NULL, NULL, NULL),
                     200);

    /* the demo key exists; remember its version */
    assert_int_equal(cmk_serve_https(&s, "GET", "localhost", "/keys/demo-key?api-version=7.5", NULL,
                                     NULL, &body),
                     401);
    free(body);
    assert_int_equal(
        cmk_serve_https(&s, "GET", "localhost", "/keys/demo-key?api-version=7.5", "t", NULL, &body),
        200);
    j = cmk_serve_parse(body);
    char kid1[512];
    snprintf(kid1, sizeof kid1, "%s",
             json_string_value(json_object_get(json_object_get(j, "key"), "kid")));
    json_decref(j);
    free(body);

    /* a key created in a named vault, then soft-deleted */
    assert_int_equal(cmk_serve_https(&s, "POST", "scratch.vault.localhost",
                                     "/keys/restart-me/create?api-version=7.5", "t",
                                     "{\"kty\":\"RSA\"}", NULL),
                     200);
    assert_int_equal(cmk_serve_https(&s, "DELETE", "scratch.vault.localhost",
                                     "/keys/restart-me?api-version=7.5", "t", NULL, NULL),
                     200);

    struct stat st;
    char path[700];
    snprintf(path, sizeof path, "%s/hsm/pin", s.dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(s.dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    snprintf(path, sizeof path, "%s/tls/key.pem", s.dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    assert_int_equal(cmk_serve_stop(&s), 0);

    /* restart on the same dir: same certificate, same key version, deleted key still deleted */
    cmk_serve_start1(&s, "--threads=2");
    assert_int_equal(
        cmk_serve_https(&s, "GET", "localhost", "/keys/demo-key?api-version=7.5", "t", NULL, &body),
        200);
    j = cmk_serve_parse(body);
    /* the port differs between runs: compare from "/keys/" on */
    const char *k2 =
        strstr(json_string_value(json_object_get(json_object_get(j, "key"), "kid")), "/keys/");
    assert_non_null(k2);
    assert_string_equal(k2, strstr(kid1, "/keys/"));
    json_decref(j);
    free(body);
    assert_int_equal(cmk_serve_https(&s, "GET", "scratch.vault.localhost",
                                     "/deletedkeys/restart-me?api-version=7.5", "t", NULL, &body),
                     200);
    j = cmk_serve_parse(body);
    assert_true(json_integer_value(json_object_get(j, "scheduledPurgeDate")) >
                json_integer_value(json_object_get(j, "deletedDate")));
    json_decref(j);
    free(body);
    assert_int_equal(cmk_serve_stop(&s), 0);
}

/* Runs the binary with args, captures stderr; returns exit code. */
static int run_fail(const char *const *args, char *err, size_t errlen)
{
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 2);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        close(pipefd[0]);
        close(pipefd[1]);
        execv(CMKEMU_BIN, (char *const *)args);
        _exit(127);
    }
    close(pipefd[1]);
    size_t n = 0;
    ssize_t r;
    while ((r = read(pipefd[0], err + n, errlen - 1 - n)) > 0)
        n += (size_t)r;
    err[n] = '\0';
    close(pipefd[0]);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_serve_bad_flags(void **state)
{
    char err[4096];
    char dir[512];
    cmk_serve_make_dir(dir, sizeof dir);
    const struct {
        const char *args[12];
        const char *expect;
    } cases[] = {
        {{"cmkemu", "serve", "--bogus", NULL}, "unknown option '--bogus'"},
        {{"cmkemu", "serve", "--threads", "abc", NULL}, "--threads"},
        {{"cmkemu", "serve", "--listen", "10.1.2.3:8443", NULL}, "--allow-remote"},
        {{"cmkemu", "serve", "--listen", "nonsense", NULL}, "--listen"},
        {{"cmkemu", "serve", "--data-dir", "/proc/cmkemu-cannot-exist", NULL}, "data dir"},
        {{"cmkemu", "serve", "--data-dir", dir, "--pkcs11-module", "/nonexistent/module.so",
          "--pin", "1234", NULL},
         "HSM"},
        {{"cmkemu", "frobnicate", NULL}, "unknown command"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = run_fail(cases[i].args, err, sizeof err);
        if (rc == 0 || !strstr(err, cases[i].expect) || count_lines(err) != 1)
            fprintf(stderr, "case %zu: rc=%d stderr=<%s>\n", i, rc, err);
        assert_int_not_equal(rc, 0);
        assert_non_null(strstr(err, cases[i].expect));
        assert_int_equal(count_lines(err), 1);
    }
}

/* ---- one TLS record per small answer ---------------------------------------------------- */

static int g_records_in; /* TLS records received (msg callback) */

static void count_records(int write_p, int version, int content_type, const void *buf,
                          size_t len, SSL *ssl, void *arg)
{
    (void)version, (void)buf, (void)len, (void)ssl, (void)arg;
    if (!write_p && content_type == SSL3_RT_HEADER)
        g_records_in++;
}

/* Sends one GET on the connection and reads the whole answer (Content-Length); returns its
 * body length, -1 on error. */
static long tls_get(SSL *ssl, const char *path)
{
    char req[512], buf[1 << 16];
    size_t have = 0;
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer t\r\n\r\n", path);
    if (SSL_write(ssl, req, n) != n)
        return -1;
    for (;;) {
        int r = SSL_read(ssl, buf + have, (int)(sizeof buf - 1 - have));
        if (r <= 0)
            return -1;
        have += (size_t)r;
        buf[have] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        char *cl = strcasestr(buf, "\r\nContent-Length:");
        if (end && cl && cl < end) {
            long body = strtol(cl + 17, NULL, 10);
            if ((long)(have - (size_t)(end + 4 - buf)) >= body)
                return body;
        }
        if (have >= sizeof buf - 1)
            return -1;
    }
}

/* libmicrohttpd hands GnuTLS the headers and the body of an answer separately; the server
 * corks the session so that a small answer leaves as one TLS record (one send, one client
 * read), and a large one is left alone. */
static void test_serve_small_answer_one_record(void **state)
{
    (void)state;
    cmk_server s = {0};
    cmk_serve_make_dir(s.dir, sizeof s.dir);
    cmk_serve_start(&s, NULL);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, s.cert, NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set1_host(ssl, "localhost");
    SSL_set_tlsext_host_name(ssl, "localhost");
    assert_int_equal(SSL_connect(ssl), 1);
    SSL_set_msg_callback(ssl, count_records);
    /* the first answer may share the wire with session tickets */
    assert_true(tls_get(ssl, "/_emulator/health") > 0);
    for (int i = 0; i < 3; i++) {
        g_records_in = 0;
        long len = tls_get(ssl, "/_emulator/health");
        assert_true(len > 50);
        assert_int_equal(g_records_in, 1);
    }
    /* the dashboard script is larger than the cork limit: headers and body apart */
    g_records_in = 0;
    assert_true(tls_get(ssl, "/_emulator/ui/app.js") > 12288);
    assert_true(g_records_in >= 2);
    /* and the connection still serves small answers as one record */
    g_records_in = 0;
    assert_true(tls_get(ssl, "/_emulator/health") > 50);
    assert_int_equal(g_records_in, 1);
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    assert_int_equal(cmk_serve_stop(&s), 0);
}

static void test_serve_limits(void **state)
{
    cmk_server s = {0};
    cmk_serve_make_dir(s.dir, sizeof s.dir);
    cmk_serve_start1(&s, "--max-body=2048");
    char *body = NULL;
    /* oversized body -> 413 with a message */
    char *big = malloc(4096);
    memset(big, 'a', 4095);
    big[4095] = '\0';
    assert_int_equal(
        cmk_serve_https(&s, "POST", "localhost", "/keys/x/create?api-version=7.5", "t", big, &body),
        413);
    assert_non_null(strstr(body, "RequestEntityTooLarge"));
    free(body);
    free(big);
    /* deep JSON -> 400 */
    char deep[64];
    memset(deep, '[', 40);
    deep[40] = '\0';
    assert_int_equal(cmk_serve_https(&s, "POST", "localhost", "/keys/x/create?api-version=7.5", "t",
                                     deep, &body),
                     400);
    assert_non_null(strstr(body, "deeper"));
    free(body);
    /* unknown path -> 404 JSON; wrong method -> 405 */
    assert_int_equal(cmk_serve_https(&s, "GET", "localhost", "/nope", "t", NULL, &body), 404);
    free(body);
    assert_int_equal(cmk_serve_https(&s, "PUT", "localhost", "/_emulator/health", "t", NULL, &body),
                     405);
    free(body);
    /* percent-encoded query name */
    assert_int_equal(cmk_serve_https(&s, "GET", "localhost", "/keys/demo-key?api%2Dversion=7.5",
                                     "t", NULL, &body),
                     200);
    free(body);
    /* the audit log has the key operations with caller and outcome, and no bearer token */
    assert_int_equal(cmk_serve_https(&s, "GET", "localhost", "/_emulator/audit?match=demo-key",
                                     NULL, NULL, &body),
                     200);
    json_t *a = cmk_serve_parse(body);
    json_t *ev = json_array_get(json_object_get(a, "value"), 0);
    assert_non_null(ev);
    assert_string_equal(json_string_value(json_object_get(ev, "operation")), "GET /keys/{name}");
    assert_string_equal(json_string_value(json_object_get(ev, "outcome")), "Success");
    assert_non_null(json_string_value(json_object_get(json_object_get(ev, "caller"), "oid")));
    json_decref(a);
    free(body);
    assert_int_equal(
        cmk_serve_https(&s, "GET", "localhost", "/_emulator/audit?limit=0", NULL, NULL, &body),
        400);
    free(body);
    assert_int_equal(cmk_serve_stop(&s), 0);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_serve_bad_flags),
        cmocka_unit_test(test_serve_health_restart),
        cmocka_unit_test(test_serve_limits),
        cmocka_unit_test(test_serve_small_answer_one_record),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
