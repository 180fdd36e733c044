/*
 * serve_fixture: the real `cmkemu serve` binary for integration tests. Starts it on a free
 * loopback port with a temporary data dir, its stderr kept in a file next to the data dir (so a
 * test can read the server's log), and talks HTTPS to it with libcurl trusting only the
 * certificate it generated. Failures inside these helpers fail the calling cmocka test.
 */
#ifndef CMK_TESTS_SERVE_FIXTURE_H
#define CMK_TESTS_SERVE_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

typedef struct {
    pid_t pid;
    int port;
    char dir[512];      /* the data dir (made by cmk_serve_make_dir) */
    char cert[600];     /* dir/tls/cert.pem */
    char err_path[600]; /* the server's stderr: "<dir>.stderr", appended across restarts */
} cmk_server;

/* mkdtemp "<$CMK_TEST_TMP or /tmp>/serve-XXXXXX" into out. */
void cmk_serve_make_dir(char *out, size_t len);

/* Starts CMKEMU_BIN serve --listen 127.0.0.1:0 --data-dir s->dir --log-level warn, then the
 * NULL-terminated extra arguments (NULL = none; a later --listen or --log-level wins), and
 * waits for its "serving https://HOST:PORT/" line. */
void cmk_serve_start(cmk_server *s, const char *const *extra);

/* Same, with at most one extra argument (NULL = none). */
void cmk_serve_start1(cmk_server *s, const char *extra);

/* SIGTERM, then waits up to 5 s: the exit status (128+signal when killed by one), or -1 when
 * it had to be killed with SIGKILL. */
int cmk_serve_stop(cmk_server *s);

/* The server's stderr so far (malloc'd, NUL-terminated; "" when there is none). */
char *cmk_serve_stderr(const cmk_server *s);

/* One HTTPS request to host (resolved to 127.0.0.1) trusting only the server's certificate;
 * auth = bearer token or NULL, body = JSON or NULL. Returns the HTTP status (0 when the
 * request failed); *out = the body (malloc'd) when out is given. */
long cmk_serve_https(const cmk_server *s, const char *method, const char *host, const char *path,
                     const char *auth, const char *body, char **out);

/* Same with the given Content-Type (cmk_serve_https sends application/json). */
long cmk_serve_request(const cmk_server *s, const char *method, const char *host, const char *path,
                       const char *auth, const char *content_type, const char *body, char **out);

/* Everything a request may carry; zero fields take the defaults. */
typedef struct {
    const char *host;         /* NULL = "localhost" (resolved to 127.0.0.1 either way) */
    const char *auth;         /* bearer token, NULL = none */
    const char *content_type; /* NULL = application/json */
    const char *body;         /* NULL = none */
    const char *extra_header; /* one more "Name: value" request header, NULL = none */
    const char *header_name;  /* a response header to capture (e.g. "Retry-After"), or NULL */
    char *header_out;         /* its value ("" when absent) */
    size_t header_len;
} cmk_serve_opts;

/* One HTTPS request (o NULL = all defaults). Returns the status (0 when the request failed);
 * *out = the body (malloc'd) when out is given. */
long cmk_serve_call(const cmk_server *s, const char *method, const char *path,
                    const cmk_serve_opts *o, char **out);

/* json_loads that fails the test on bad JSON. */
json_t *cmk_serve_parse(const char *text);

#endif
