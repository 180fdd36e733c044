#include "serve_fixture.h"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#ifndef CMKEMU_BIN
#error CMKEMU_BIN must be defined
#endif

void cmk_serve_make_dir(char *out, size_t len)
{
    const char *base = getenv("CMK_TEST_TMP");
    if (!base || !*base)
        base = "/tmp";
    mkdir(base, 0700);
    snprintf(out, len, "%s/serve-XXXXXX", base);
    assert_non_null(mkdtemp(out));
}

/* Servers started and not yet stopped: a failed assertion leaves its test half way, so they
 * are killed at exit instead of outliving the test binary. */
enum { MAX_LIVE = 16 };
static pid_t live[MAX_LIVE];

static void kill_live(void)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i] > 0) {
            kill(live[i], SIGKILL);
            waitpid(live[i], NULL, 0);
            live[i] = 0;
        }
}

static void live_set(pid_t pid, pid_t to)
{
    static bool registered;
    if (!registered) {
        atexit(kill_live);
        registered = true;
    }
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i] == pid) {
            live[i] = to;
            return;
        }
}

void cmk_serve_start(cmk_server *s, const char *const *extra)
{
    enum { MAX_ARGS = 40 };
    const char *argv[MAX_ARGS];
    size_t n = 0;
    argv[n++] = "cmkemu";
    argv[n++] = "serve";
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--data-dir";
    argv[n++] = s->dir;
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    for (size_t i = 0; extra && extra[i]; i++) {
        assert_true(n < MAX_ARGS - 1);
        argv[n++] = extra[i];
    }
    argv[n] = NULL;
    snprintf(s->err_path, sizeof s->err_path, "%s.stderr", s->dir);

    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pipefd[1], 1);
        int err = open(s->err_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (err >= 0)
            dup2(err, 2);
        close(pipefd[0]);
        close(pipefd[1]);
        execv(CMKEMU_BIN, (char *const *)argv);
        _exit(127);
    }
    close(pipefd[1]);
    FILE *f = fdopen(pipefd[0], "r");
    char line[512];
    s->port = 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "serving https://");
        const char *colon = p ? strchr(p + strlen("serving https://"), ':') : NULL;
        if (colon) {
            s->port = (int)strtol(colon + 1, NULL, 10);
            break;
        }
    }
    fclose(f); /* the banner is short: nothing more to drain */
    s->pid = pid;
    live_set(0, pid);
    if (s->port <= 0) {
        char *err = cmk_serve_stderr(s);
        fprintf(stderr, "cmkemu did not start; its stderr:\n%s\n", err);
        free(err);
    }
    assert_true(s->port > 0);
    snprintf(s->cert, sizeof s->cert, "%s/tls/cert.pem", s->dir);
}

void cmk_serve_start1(cmk_server *s, const char *extra)
{
    const char *args[] = {extra, NULL};
    cmk_serve_start(s, args);
}

int cmk_serve_stop(cmk_server *s)
{
    live_set(s->pid, 0);
    kill(s->pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 100; i++) {
        if (waitpid(s->pid, &status, WNOHANG) == s->pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        usleep(50 * 1000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &status, 0);
    return -1;
}

char *cmk_serve_stderr(const cmk_server *s)
{
    FILE *f = fopen(s->err_path, "r");
    size_t len = 0, cap = 4096;
    char *out = malloc(cap);
    assert_non_null(out);
    if (f) {
        size_t got;
        while ((got = fread(out + len, 1, cap - len - 1, f)) > 0) {
            len += got;
            if (cap - len - 1 == 0) {
                cap *= 2;
                out = realloc(out, cap);
                assert_non_null(out);
            }
        }
        fclose(f);
    }
    out[len] = '\0';
    return out;
}

typedef struct {
    char *data;
    size_t len;
} resp_buf;

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    resp_buf *b = ud;
    char *grown = realloc(b->data, b->len + size * n + 1);
    if (!grown)
        return 0;
    b->data = grown;
    memcpy(b->data + b->len, p, size * n);
    b->len += size * n;
    b->data[b->len] = '\0';
    return size * n;
}

typedef struct {
    const char *name; /* the response header wanted, with its colon: "Retry-After:" */
    char *out;
    size_t len;
} header_want;

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    header_want *w = ud;
    size_t len = size * n, nl = strlen(w->name);
    if (len > nl && !strncasecmp(p, w->name, nl)) {
        const char *v = p + nl;
        size_t vl = len - nl;
        while (vl > 0 && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n'))
            vl--;
        snprintf(w->out, w->len, "%.*s", (int)vl, v);
    }
    return len;
}

long cmk_serve_call(const cmk_server *s, const char *method, const char *path,
                    const cmk_serve_opts *o, char **out)
{
    static const cmk_serve_opts none = {0};
    if (!o)
        o = &none;
    const char *host = o->host ? o->host : "localhost";
    CURL *c = curl_easy_init();
    assert_non_null(c);
    char url[1024];
    snprintf(url, sizeof url, "https://%s:%d%s", host, s->port, path);
    struct curl_slist *h = NULL;
    char resolve[256];
    snprintf(resolve, sizeof resolve, "%s:%d:127.0.0.1", host, s->port);
    struct curl_slist *res = curl_slist_append(NULL, resolve);
    if (o->auth) {
        char a[4096];
        snprintf(a, sizeof a, "Authorization: Bearer %s", o->auth);
        h = curl_slist_append(h, a);
    }
    char ct[200];
    snprintf(ct, sizeof ct, "Content-Type: %s",
             o->content_type ? o->content_type : "application/json");
    h = curl_slist_append(h, ct);
    if (o->extra_header)
        h = curl_slist_append(h, o->extra_header);
    header_want want = {0};
    if (o->header_name && o->header_out && o->header_len) {
        char name[128];
        snprintf(name, sizeof name, "%s:", o->header_name);
        want = (header_want){strdup(name), o->header_out, o->header_len};
        o->header_out[0] = '\0';
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &want);
    }
    resp_buf b = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CAINFO, s->cert);
    curl_easy_setopt(c, CURLOPT_RESOLVE, res);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (o->body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, o->body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    else
        fprintf(stderr, "curl: %s\n", curl_easy_strerror(rc));
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    curl_slist_free_all(res);
    free((char *)want.name);
    if (out)
        *out = b.data ? b.data : strdup("");
    else
        free(b.data);
    return status;
}

long cmk_serve_https(const cmk_server *s, const char *method, const char *host, const char *path,
                     const char *auth, const char *body, char **out)
{
    cmk_serve_opts o = {.host = host, .auth = auth, .body = body};
    return cmk_serve_call(s, method, path, &o, out);
}

long cmk_serve_request(const cmk_server *s, const char *method, const char *host, const char *path,
                       const char *auth, const char *content_type, const char *body, char **out)
{
    cmk_serve_opts o = {.host = host, .auth = auth, .content_type = content_type, .body = body};
    return cmk_serve_call(s, method, path, &o, out);
}

json_t *cmk_serve_parse(const char *text)
{
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    return j;
}
