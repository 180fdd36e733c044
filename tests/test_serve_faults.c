/*
 * test_serve_faults: the real `cmkemu serve` binary against injected faults and hostile
 * clients.
 *  - /_emulator/faults over HTTPS: 503/429/500 answers with the error shape and Retry-After,
 *    count and fraction, bad rules -> 400, /_emulator itself never faulted, the injections
 *    audited; latency holds a request without blocking the only event thread.
 *  - strict mode: adding a rule needs an emulator admin (401 without token, 403 for another
 *    principal, 201 for the admin).
 *  - slow and malformed clients: slowloris over TLS (headers byte by byte on many
 *    connections), TLS garbage, a truncated ClientHello, plain HTTP on the TLS port, an
 *    oversized header, a huge Content-Length without a body: the server keeps answering health
 *    on a fresh connection, closes idle connections after --connection-timeout, stays up.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <gnutls/gnutls.h>
#include <jansson.h>

#ifndef CMKEMU_BIN
#error CMKEMU_BIN must be defined
#endif

#include "serve_fixture.h"

#define TENANT "72f988bf-0000-4000-8000-00000000c0de"

typedef cmk_server emu;

static emu *g_running; /* stopped by the teardown when a test failed half way */

/* Starts cmkemu with the given extra arguments (NULL-terminated) on a fresh data dir and waits
 * for its banner (tests/serve_fixture). */
static void emu_start(emu *e, const char *const *extra)
{
    const char *argv[24] = {"--log-level", "error"};
    int n = 2;
    for (int i = 0; extra && extra[i] && n < 23; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    cmk_serve_make_dir(e->dir, sizeof e->dir);
    g_running = e;
    cmk_serve_start(e, argv);
}

static bool emu_alive(const emu *e)
{
    int st;
    return waitpid(e->pid, &st, WNOHANG) == 0;
}

static void emu_stop(emu *e)
{
    g_running = NULL;
    (void)cmk_serve_stop(e);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s.stderr'", e->dir, e->dir);
    if (!getenv("CMK_TEST_KEEP") && system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", e->dir);
}

/* ---- HTTPS with libcurl ------------------------------------------------------------------------
 */

typedef struct {
    long status;
    json_t *body;
    char retry_after[16];
} reply;

/* One request through tests/serve_fixture; form = true sends the body as a form (token
 * endpoint). */
static reply call(const emu *e, const char *method, const char *path, const char *token,
                  const char *body, bool form)
{
    reply r = {0};
    cmk_serve_opts o = {.auth = token,
                        .body = body,
                        .content_type = form ? "application/x-www-form-urlencoded" : NULL,
                        .header_name = "Retry-After",
                        .header_out = r.retry_after,
                        .header_len = sizeof r.retry_after};
    char *text = NULL;
    r.status = cmk_serve_call(e, method, path, &o, &text);
    r.body = *text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    return r;
}

static long status_of(const emu *e, const char *method, const char *path, const char *body)
{
    reply r = call(e, method, path, "test", body, false);
    json_decref(r.body);
    return r.status;
}

static const char *err_code(const reply *r)
{
    return json_string_value(json_object_get(json_object_get(r->body, "error"), "code"));
}

static long health(const emu *e)
{
    return status_of(e, "GET", "/_emulator/health", NULL);
}

/* ---- /_emulator/faults ------------------------------------------------------------------------
 */

#define KEYS "/keys?api-version=7.4"

static void test_fault_rules(void **state)
{
    emu e;
    emu_start(&e, NULL);
    /* bad rules: 400 with a message, nothing added */
    static const char *const bad[] = {
        "[]",
        "{\"fault\":\"404\"}",
        "{\"fault\":\"503\",\"fraction\":1.5}",
        "{\"fault\":\"latency\"}",
        "{\"fault\":\"latency\",\"latencyMs\":600001}",
        "{\"fault\":\"500\",\"latencyMs\":10}",
        "{\"fault\":\"500\",\"retryAfter\":3}",
        "{\"fault\":\"503\",\"path\":\"keys\"}",
        "{\"fault\":\"503\",\"path\":\"/_emulator/health\"}",
        "{\"fault\":\"503\",\"count\":0}",
        "{\"fault\":\"503\",\"colour\":\"red\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        reply r = call(&e, "POST", "/_emulator/faults", NULL, bad[i], false);
        assert_int_equal(r.status, 400);
        assert_string_equal(err_code(&r), "BadParameter");
        json_decref(r.body);
    }
    reply r = call(&e, "GET", "/_emulator/faults", NULL, NULL, false);
    assert_int_equal(json_array_size(json_object_get(r.body, "value")), 0);
    json_decref(r.body);

    /* 503 twice with Retry-After 0, then the request goes through */
    r = call(&e, "POST", "/_emulator/faults", NULL,
             "{\"fault\":\"503\",\"path\":\"/keys\",\"method\":\"GET\",\"count\":2,"
             "\"retryAfter\":0}",
             false);
    assert_int_equal(r.status, 201);
    assert_string_equal(json_string_value(json_object_get(r.body, "id")), "f1");
    json_decref(r.body);
    for (int i = 0; i < 2; i++) {
        r = call(&e, "GET", KEYS, "test", NULL, false);
        assert_int_equal(r.status, 503);
        assert_string_equal(err_code(&r), "ServiceUnavailable");
        assert_string_equal(r.retry_after, "0");
        json_decref(r.body);
    }
    assert_int_equal(status_of(&e, "GET", KEYS, NULL), 200);
    assert_int_equal(health(&e), 200); /* /_emulator is never faulted */

    /* 429 on a glob, for one host only */
    r = call(&e, "POST", "/_emulator/faults", NULL,
             "{\"fault\":\"429\",\"path\":\"/keys/*/versions\",\"host\":\"localhost\"}", false);
    assert_int_equal(r.status, 201);
    json_decref(r.body);
    r = call(&e, "GET", "/keys/nokey/versions?api-version=7.4", "test", NULL, false);
    assert_int_equal(r.status, 429);
    assert_string_equal(err_code(&r), "Throttled");
    assert_string_equal(r.retry_after, "1");
    json_decref(r.body);
    assert_int_equal(status_of(&e, "GET", "/keys/nokey?api-version=7.4", NULL), 404);
    r = call(&e, "DELETE", "/_emulator/faults/f2", NULL, NULL, false);
    assert_int_equal(r.status, 204);
    r = call(&e, "DELETE", "/_emulator/faults/f2", NULL, NULL, false);
    assert_int_equal(r.status, 404);
    json_decref(r.body);

    /* 500 for about half of the requests */
    r = call(&e, "POST", "/_emulator/faults", NULL, "{\"fault\":\"500\",\"fraction\":0.5}", false);
    assert_int_equal(r.status, 201);
    json_decref(r.body);
    int failed = 0;
    for (int i = 0; i < 200; i++)
        failed += status_of(&e, "GET", KEYS, NULL) == 500;
    printf("fraction 0.5: %d of 200 answered 500\n", failed);
    assert_true(failed > 50 && failed < 150);
    r = call(&e, "GET", "/_emulator/faults", NULL, NULL, false);
    json_t *rule = json_array_get(json_object_get(r.body, "value"), 1);
    assert_int_equal(json_integer_value(json_object_get(rule, "hits")), failed);
    assert_int_equal(json_integer_value(json_object_get(
                         json_array_get(json_object_get(r.body, "value"), 0), "hits")),
                     2);
    json_decref(r.body);
    r = call(&e, "DELETE", "/_emulator/faults", NULL, NULL, false);
    assert_int_equal(json_integer_value(json_object_get(r.body, "removed")), 2);
    json_decref(r.body);
    assert_int_equal(status_of(&e, "GET", KEYS, NULL), 200);

    /* every injection is audited */
    r = call(&e, "GET", "/_emulator/audit?match=faults/Inject&limit=1000", NULL, NULL, false);
    assert_int_equal(json_array_size(json_object_get(r.body, "value")), (size_t)(2 + 1 + failed));
    json_decref(r.body);
    assert_true(emu_alive(&e));
    emu_stop(&e);
}

typedef struct {
    const emu *e;
    long status;
    struct timespec done;
} slow_call;

static void *slow_main(void *arg)
{
    slow_call *sc = arg;
    sc->status = status_of(sc->e, "GET", KEYS, NULL);
    clock_gettime(CLOCK_MONOTONIC, &sc->done);
    return NULL;
}

static double since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* A held request does not hold the event thread: with one thread, health answers meanwhile. */
static void test_latency_does_not_block(void **state)
{
    emu e;
    emu_start(&e, (const char *const[]){"--threads", "1", NULL});
    reply r = call(&e, "POST", "/_emulator/faults", NULL,
                   "{\"fault\":\"latency\",\"path\":\"/keys\",\"latencyMs\":3000}", false);
    assert_int_equal(r.status, 201);
    json_decref(r.body);
    slow_call sc = {.e = &e};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, slow_main, &sc), 0);
    usleep(300 * 1000);
    for (int i = 0; i < 5; i++)
        assert_int_equal(health(&e), 200);
    double health_done = since(&t0);
    pthread_join(th, NULL);
    double slow_done =
        (double)(sc.done.tv_sec - t0.tv_sec) + (double)(sc.done.tv_nsec - t0.tv_nsec) / 1e9;
    printf("held request answered after %.2f s; 5 health requests done at %.2f s\n", slow_done,
           health_done);
    assert_int_equal(sc.status, 200);
    /* the held request ended after the health requests, and not before its latency */
    assert_true(slow_done > health_done);
    assert_true(slow_done >= 3.0);
    emu_stop(&e);
}

/* Strict mode: only an emulator admin changes the rules. */
static char *client_token(const emu *e, const char *id, const char *secret)
{
    char body[400];
    snprintf(body, sizeof body,
             "grant_type=client_credentials&client_id=%s&client_secret=%s&scope=https%%3A%%2F%%2F"
             "vault.azure.net%%2F.default",
             id, secret);
    reply r = call(e, "POST", "/" TENANT "/oauth2/v2.0/token", NULL, body, true);
    assert_int_equal(r.status, 200);
    char *t = strdup(json_string_value(json_object_get(r.body, "access_token")));
    json_decref(r.body);
    return t;
}

static void test_faults_strict(void **state)
{
    emu e;
    emu_start(&e, (const char *const[]){"--auth", "strict", NULL});
    const char *rule = "{\"fault\":\"503\",\"path\":\"/keys\"}";
    char *other = client_token(&e, "0a000002-0000-4000-8000-00000000a002", "pp-admin-secret");
    char *admin = client_token(&e, "0a000001-0000-4000-8000-00000000a001", "kv-admin-secret");
    const struct {
        const char *method, *path, *token, *body;
        long status;
    } steps[] = {
        {"POST", "/_emulator/faults", NULL, rule, 401},
        {"POST", "/_emulator/faults", other, rule, 403},
        {"DELETE", "/_emulator/faults", other, NULL, 403},
        {"POST", "/_emulator/faults", admin, rule, 201},
        {"GET", KEYS, admin, NULL, 503},
        {"DELETE", "/_emulator/faults/f1", other, NULL, 403},
        {"DELETE", "/_emulator/faults", admin, NULL, 200},
        {"GET", KEYS, admin, NULL, 200},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        reply r = call(&e, steps[i].method, steps[i].path, steps[i].token, steps[i].body, false);
        if (r.status != steps[i].status)
            fprintf(stderr, "step %zu: %s %s -> %ld\n", i, steps[i].method, steps[i].path,
                    r.status);
        assert_int_equal(r.status, steps[i].status);
        json_decref(r.body);
    }
    free(other);
    free(admin);
    emu_stop(&e);
}

/* ---- slow and malformed clients ---------------------------------------------------------------
 */

static int tcp_connect(const emu *e)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)e->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* Waits (at most limit_s) for the server to close fd; true when it did. */
static bool closed_by_server(int fd, int limit_s)
{
    char buf[4096];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    for (int waited = 0; waited < limit_s * 10; waited++) {
        if (poll(&p, 1, 100) > 0) {
            ssize_t n = recv(fd, buf, sizeof buf, 0);
            if (n <= 0)
                return true;
        }
    }
    return false;
}

typedef struct {
    int fd;
    gnutls_session_t s;
} tls_conn;

static gnutls_certificate_credentials_t g_cred;

static void tls_open(const emu *e, tls_conn *c)
{
    c->fd = tcp_connect(e);
    assert_int_equal(gnutls_init(&c->s, GNUTLS_CLIENT), GNUTLS_E_SUCCESS);
    gnutls_set_default_priority(c->s);
    gnutls_credentials_set(c->s, GNUTLS_CRD_CERTIFICATE, g_cred);
    gnutls_transport_set_int(c->s, c->fd);
    int rc;
    do
        rc = gnutls_handshake(c->s);
    while (rc < 0 && !gnutls_error_is_fatal(rc));
    assert_int_equal(rc, GNUTLS_E_SUCCESS);
}

static void tls_close(tls_conn *c)
{
    gnutls_deinit(c->s);
    close(c->fd);
}

/* utime + stime of the server process, in clock ticks. */
static long cpu_ticks(const emu *e)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)e->pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    long ut = 0, st = 0;
    for (int field = 2; p && *p && field < 15; field++) { /* fields 14, 15: utime, stime */
        p = strchr(p + 1, ' ');
        if (p && field == 13)
            ut = strtol(p + 1, NULL, 10);
        if (p && field == 14)
            st = strtol(p + 1, NULL, 10);
    }
    return ut + st;
}

#define SLOW_CONNS 64

static void test_slowloris(void **state)
{
    emu e;
    emu_start(&e, (const char *const[]){"--connection-timeout", "2", "--threads", "2", NULL});
    gnutls_certificate_allocate_credentials(&g_cred);
    static tls_conn c[SLOW_CONNS];
    const char *head = "GET /_emulator/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    for (int i = 0; i < SLOW_CONNS; i++)
        tls_open(&e, &c[i]);
    /* each connection sends its request headers a byte at a time, never finishing them,
     * while a fresh client keeps being answered */
    for (size_t k = 0; k < strlen(head); k++) {
        for (int i = 0; i < SLOW_CONNS; i++)
            assert_true(gnutls_record_send(c[i].s, head + k, 1) == 1);
        if (k % 16 == 0)
            assert_int_equal(health(&e), 200);
        usleep(20 * 1000);
    }
    assert_int_equal(health(&e), 200);
    /* then they go quiet: each is closed after the connection timeout (2 s) */
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int closed = 0;
    for (int i = 0; i < SLOW_CONNS; i++)
        closed += closed_by_server(c[i].fd, 20);
    printf("slowloris: %d of %d idle connections closed by the server within %.1f s\n", closed,
           SLOW_CONNS, since(&t0));
    assert_int_equal(closed, SLOW_CONNS);
    for (int i = 0; i < SLOW_CONNS; i++)
        tls_close(&c[i]);

    /* a TLS handshake that never finishes is closed too (it used to keep an event thread
     * spinning for good: measured here as the server's CPU time while it waits) */
    long cpu0 = cpu_ticks(&e);
    int fd = tcp_connect(&e);
    static const unsigned char hello_head[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01};
    assert_int_equal(send(fd, hello_head, sizeof hello_head, 0), (ssize_t)sizeof hello_head);
    assert_true(closed_by_server(fd, 20));
    close(fd);
    printf("stalled handshake: closed; server CPU meanwhile %ld ticks (%ld per second)\n",
           cpu_ticks(&e) - cpu0, sysconf(_SC_CLK_TCK));
    gnutls_certificate_free_credentials(g_cred);
    assert_true(emu_alive(&e));
    emu_stop(&e);
}

static void test_garbage(void **state)
{
    emu e;
    emu_start(&e, NULL);
    /* random bytes, plain HTTP to the TLS port, a ClientHello cut short then closed */
    unsigned char junk[4096];
    srand(8);
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)rand();
    static const char plain[] = "GET /_emulator/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    static const unsigned char cut[] = {0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00,
                                        0x00, 0xc4, 0x03, 0x03, 0xaa, 0xbb};
    for (int round = 0; round < 20; round++) {
        int fd = tcp_connect(&e);
        if (round % 3 == 0)
            (void)!send(fd, junk, sizeof junk, MSG_NOSIGNAL);
        else if (round % 3 == 1)
            (void)!send(fd, plain, sizeof plain - 1, MSG_NOSIGNAL);
        else
            (void)!send(fd, cut, sizeof cut, MSG_NOSIGNAL);
        if (round % 3 != 2)
            assert_true(closed_by_server(fd, 20)); /* refused, not hanging */
        close(fd);
    }
    assert_int_equal(health(&e), 200);

    /* an oversized header: answered with an error, not a crash */
    char *big = malloc(100 * 1024);
    memset(big, 'a', 100 * 1024 - 1);
    big[100 * 1024 - 1] = '\0';
    char *hdr = malloc(100 * 1024 + 16);
    snprintf(hdr, 100 * 1024 + 16, "X-Big: %s", big);
    long st = cmk_serve_call(&e, "GET", "/_emulator/health", &(cmk_serve_opts){.extra_header = hdr},
                             NULL);
    printf("100 KiB header: status %ld\n", st);
    assert_true(st == 431 || st == 413 || st == 400);
    free(hdr);
    free(big);

    /* a huge Content-Length without a body: 413 at once */
    gnutls_certificate_allocate_credentials(&g_cred);
    tls_conn c;
    tls_open(&e, &c);
    const char *huge = "POST /keys/x/create?api-version=7.4 HTTP/1.1\r\nHost: localhost\r\n"
                       "Authorization: Bearer t\r\nContent-Length: 99999999999\r\n\r\n";
    assert_true(gnutls_record_send(c.s, huge, strlen(huge)) == (ssize_t)strlen(huge));
    char ans[2048] = "";
    ssize_t n = gnutls_record_recv(c.s, ans, sizeof ans - 1);
    assert_true(n > 12);
    ans[n] = '\0';
    assert_true(strncmp(ans, "HTTP/1.1 413", 12) == 0);
    tls_close(&c);
    gnutls_certificate_free_credentials(g_cred);

    assert_int_equal(health(&e), 200);
    assert_true(emu_alive(&e));
    emu_stop(&e);
}

static int teardown(void **state)
{
    if (g_running)
        emu_stop(g_running);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    gnutls_global_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_fault_rules, teardown),
        cmocka_unit_test_teardown(test_latency_does_not_block, teardown),
        cmocka_unit_test_teardown(test_faults_strict, teardown),
        cmocka_unit_test_teardown(test_slowloris, teardown),
        cmocka_unit_test_teardown(test_garbage, teardown),
    };
    int rc = cmocka_run_group_tests_name("serve_faults", tests, NULL, NULL);
    gnutls_global_deinit();
    curl_global_cleanup();
    return rc;
}
