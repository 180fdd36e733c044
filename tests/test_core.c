/*
 * test_core: the emulator core without a server: router (in-process dispatch), request
 * decoding (path, query, JSON body), config parsing, util (numbers, base64url, hex,
 * durations, RFC 3339, constant-time compare), store (migrations, meta), clock (offset, hooks)
 * and log escaping.
 *
 * Temporary files go under $CMK_TEST_TMP (set by ctest), else /tmp, and are removed at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <sqlite3.h>
#include <strings.h>

#include "fixture.h"
#include "clock.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "req.h"
#include "router.h"
#include "store.h"
#include "tls.h"
#include "util.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* ---------------------------------------------------------------------------------------- */
/* helpers                                                                                   */

/* A fresh directory under $CMK_TEST_TMP or /tmp; the caller removes it with cmk_test_rm_rf. */
static void make_tmpdir(char *out, size_t outlen, const char *tag)
{
    const char *base = getenv("CMK_TEST_TMP");
    if (!base || !*base)
        base = "/tmp";
    (void)mkdir(base, 0700);
    int n = snprintf(out, outlen, "%s/test_core-%s-XXXXXX", base, tag);
    assert_true(n > 0 && (size_t)n < outlen);
    if (!mkdtemp(out))
        fail_msg("mkdtemp %s: %s", out, strerror(errno));
}

/* The error.code of a JSON error response ("" if the body has none). The result points into a
 * static buffer. */
static const char *resp_error_code(const emu_req *req)
{
    static char code[64];
    code[0] = '\0';
    if (!req->resp_body)
        return code;
    json_t *j = json_loads(req->resp_body, 0, NULL);
    const char *c = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    snprintf(code, sizeof code, "%s", c ? c : "");
    json_decref(j);
    return code;
}

/* ---------------------------------------------------------------------------------------- */
/* router                                                                                    */

/* Answers 200 text "tag|param0|param1..." so a test sees which route ran with which captures. */
static void echo_handler(emu_req *req, void *ud)
{
    char buf[512];
    size_t o = (size_t)snprintf(buf, sizeof buf, "%s", (const char *)ud);
    for (size_t i = 0; i < req->nparams && o < sizeof buf; i++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, "|%s", emu_req_param(req, i));
    emu_send_text(req, 200, "text/plain", buf, strlen(buf));
}

static int handler_calls;

static void counting_handler(emu_req *req, void *ud)
{
    handler_calls++;
    echo_handler(req, ud);
}

static void challenge_precheck(emu_req *req, void *ud)
{
    (void)ud;
    emu_send_error(req, 401, "Unauthorized", "no token");
}

static void silent_handler(emu_req *req, void *ud)
{
    (void)req;
    (void)ud;
}

static emu_router *test_router(void)
{
    emu_router *r = emu_router_new();
    emu_router_add(r, "GET", "/keys/{name}/wrapkey", 0, NULL, echo_handler, "wrap-get");
    emu_router_add(r, "POST", "/keys/{name}/wrapkey", 0, NULL, echo_handler, "wrap-post");
    emu_router_add(r, "GET", "/keys/{name}/{version}", 0, NULL, echo_handler, "key-version");
    emu_router_add(r, "GET", "/subscriptions/{id}", 0, NULL, echo_handler, "sub");
    emu_router_add(r, "GET", "/order/{x}", 0, NULL, echo_handler, "order-capture");
    emu_router_add(r, "GET", "/order/literal", 0, NULL, echo_handler, "order-literal");
    emu_router_add(r, "GET", "/first/literal", 0, NULL, echo_handler, "first-literal");
    emu_router_add(r, "GET", "/first/{x}", 0, NULL, echo_handler, "first-capture");
    emu_router_add(r, "GET", "/files/{*}", 0, NULL, echo_handler, "rest");
    emu_router_add(r, "GET", "/e/{name}", 0, NULL, echo_handler, "e");
    emu_router_add(r, "*", "/any", 0, NULL, echo_handler, "any");
    emu_router_add(r, "GET", "/guarded", 0, challenge_precheck, counting_handler, "guarded");
    emu_router_add(r, "GET", "/silent", 0, NULL, silent_handler, "silent");
    return r;
}

typedef struct {
    const char *method, *uri;
    int status;
    const char *body; /* 200: exact echo text; else expected error.code */
} route_case;

static void router_dispatch_table(void **state)
{
    (void)state;
    static const route_case cases[] = {
        /* literal segments match case-insensitively */
        {"GET", "/keys/x/WrapKey", 200, "wrap-get|x"},
        {"GET", "/KEYS/x/WRAPKEY", 200, "wrap-get|x"},
        {"POST", "/keys/x/wrapkey", 200, "wrap-post|x"},
        /* methods compare case-insensitively too */
        {"post", "/keys/x/wrapKey", 200, "wrap-post|x"},
        /* captures are percent-decoded, case kept */
        {"GET", "/keys/a%20B/wrapkey", 200, "wrap-get|a B"},
        {"GET", "/keys/a%2Fb/wrapkey", 200, "wrap-get|a/b"},
        /* literals are matched after percent-decoding */
        {"GET", "/keys/x/wrap%4Bey", 200, "wrap-get|x"},
        /* '//' collapsed */
        {"GET", "//subscriptions/a", 200, "sub|a"},
        {"GET", "/keys/n//wrapkey", 200, "wrap-get|n"},
        /* trailing slash ignored */
        {"GET", "/subscriptions/a/", 200, "sub|a"},
        {"GET", "/subscriptions/a//", 200, "sub|a"},
        /* the query is not part of the path */
        {"GET", "/subscriptions/a?api-version=1", 200, "sub|a"},
        /* order of registration decides */
        {"GET", "/order/literal", 200, "order-capture|literal"},
        {"GET", "/first/literal", 200, "first-literal"},
        {"GET", "/first/other", 200, "first-capture|other"},
        /* {*} takes the rest */
        {"GET", "/files/a/b/c", 200, "rest|a/b/c"},
        {"GET", "/files/x", 200, "rest|x"},
        /* wildcard method */
        {"DELETE", "/any", 200, "any"},
        /* 405 when only the method differs, 404 otherwise */
        {"DELETE", "/keys/x/wrapkey", 405, "MethodNotAllowed"},
        {"PUT", "/subscriptions/a", 405, "MethodNotAllowed"},
        {"GET", "/nothing", 404, "NotFound"},
        {"GET", "/subscriptions", 404, "NotFound"},
        {"GET", "/subscriptions/a/b", 404, "NotFound"},
        /* an empty segment never matches {name}: "/e/" is "/e" after normalisation */
        {"GET", "/e/", 404, "NotFound"},
        {"GET", "/e//", 404, "NotFound"},
        /* a malformed escape does not match (and does not crash) */
        {"GET", "/keys/%zz/wrapkey", 404, "NotFound"},
        {"GET", "/keys/x/wrapkey%4", 404, "NotFound"},
        /* a route whose handler sends nothing gets a 500 */
        {"GET", "/silent", 500, "InternalError"},
        /* fuzzing finding (fuzz_request): text that is not UTF-8 once decoded reached the
         * handlers, whose JSON answers then could not be built (empty error bodies); now one
         * 400 with a body, before any handler */
        {"GET", "/keys/%FF/wrapkey", 400, "BadRequest"},
        {"GET", "/keys/%C0%AF/wrapkey", 400, "BadRequest"},    /* overlong '/' */
        {"GET", "/keys/%ED%A0%80/wrapkey", 400, "BadRequest"}, /* surrogate */
        {"GET", "/files/a/\xff", 400, "BadRequest"},           /* raw byte in {*} */
        {"GET", "/subscriptions/a?api-version=%FE", 400, "BadRequest"},
        {"GET", "/subscriptions/a?%A0=1", 400, "BadRequest"},
        {"GET", "/nothing?x=%FF", 400, "BadRequest"},
        /* well-formed UTF-8 is a capture like any other */
        {"GET", "/keys/caf%C3%A9/wrapkey", 200, "wrap-get|caf\xc3\xa9"},
        /* a method that is not text is escaped in the 405 message */
        {"\xff", "/keys/x/wrapkey", 405, "MethodNotAllowed"},
    };
    emu_router *r = test_router();
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const route_case *c = &cases[i];
        emu_req *req = emu_req_new(c->method, c->uri);
        emu_router_dispatch(r, req);
        if (req->status != c->status)
            fail_msg("%s %s: status %d, want %d (body %s)", c->method, c->uri, req->status,
                     c->status, req->resp_body ? req->resp_body : "");
        assert_true(req->responded);
        if (c->status == 200) {
            assert_non_null(req->resp_body);
            if (strcmp(req->resp_body, c->body) != 0)
                fail_msg("%s %s: body '%s', want '%s'", c->method, c->uri, req->resp_body, c->body);
        } else {
            if (strcmp(resp_error_code(req), c->body) != 0)
                fail_msg("%s %s: error.code '%s', want '%s' (body %s)", c->method, c->uri,
                         resp_error_code(req), c->body, req->resp_body ? req->resp_body : "");
            assert_non_null(strstr(req->resp_type, "application/json"));
        }
        emu_req_free(req);
    }
    emu_router_free(r);
}

typedef struct {
    const char *method, *uri;
    emu_match_result want;
    size_t nparams;
} match_case;

static void router_match_results(void **state)
{
    (void)state;
    static const match_case cases[] = {
        {"GET", "/keys/x/wrapkey", EMU_MATCH_OK, 1},
        {"GET", "/keys/x/v1", EMU_MATCH_OK, 2},
        {"PATCH", "/keys/x/wrapkey", EMU_MATCH_NO_METHOD, 0},
        {"GET", "/nope/x", EMU_MATCH_NO_PATH, 0},
        {"GET", "/", EMU_MATCH_NO_PATH, 0},
    };
    emu_router *r = test_router();
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        emu_req *req = emu_req_new(cases[i].method, cases[i].uri);
        emu_match_result m = emu_router_match(r, req);
        if (m != cases[i].want)
            fail_msg("%s %s: match %d, want %d", cases[i].method, cases[i].uri, m, cases[i].want);
        if (m == EMU_MATCH_OK) {
            assert_non_null(req->route);
            assert_int_equal(req->nparams, cases[i].nparams);
        }
        /* match alone sends nothing */
        assert_false(req->responded);
        emu_req_free(req);
    }
    emu_router_free(r);
}

static void router_empty_segment_never_captured(void **state)
{
    (void)state;
    emu_router *r = emu_router_new();
    emu_router_add(r, "GET", "/e/{name}/x", 0, NULL, echo_handler, "ex");
    /* bypass normalisation: a path with an empty segment as the server could hand it over */
    emu_req *req = emu_req_new("GET", "/e/a/x");
    assert_int_equal(emu_router_match(r, req), EMU_MATCH_OK);
    assert_string_equal(emu_req_param(req, 0), "a");
    req->path = "/e//x";
    req->nparams = 0;
    assert_int_equal(emu_router_match(r, req), EMU_MATCH_NO_PATH);
    emu_req_free(req);
    emu_router_free(r);
}

static void router_precheck_answer_skips_handler(void **state)
{
    (void)state;
    emu_router *r = test_router();
    handler_calls = 0;
    emu_req *req = emu_req_new("GET", "/guarded");
    emu_router_dispatch(r, req);
    assert_int_equal(req->status, 401);
    assert_string_equal(resp_error_code(req), "Unauthorized");
    assert_int_equal(handler_calls, 0);
    emu_req_free(req);
    emu_router_free(r);
}

static void router_nomatch_body_names_method_and_path(void **state)
{
    (void)state;
    emu_router *r = test_router();
    emu_req *req = emu_req_new("DELETE", "/keys/abc/wrapkey");
    emu_router_dispatch(r, req);
    assert_int_equal(req->status, 405);
    assert_non_null(strstr(req->resp_body, "DELETE"));
    assert_non_null(strstr(req->resp_body, "/keys/abc/wrapkey"));
    emu_req_free(req);
    /* a path with quotes and control characters is escaped in the message, so the body
     * stays valid JSON */
    req = emu_req_new("GET", "/no\"pe\x01");
    emu_router_dispatch(r, req);
    assert_int_equal(req->status, 404);
    assert_string_equal(resp_error_code(req), "NotFound");
    emu_req_free(req);
    emu_router_free(r);
}

/* Fuzzing finding (fuzz_request): a Host that is not UTF-8 went into the base URL of every
 * answer (key ids, links); refused with the same 400. And the validator itself. */
static void router_host_not_utf8(void **state)
{
    (void)state;
    emu_router *r = test_router();
    emu_req *req = emu_req_new("GET", "/subscriptions/a");
    emu_req_add_header(req, "Host", "vault\xc3.localhost:8443");
    emu_router_dispatch(r, req);
    assert_int_equal(req->status, 400);
    assert_string_equal(resp_error_code(req), "BadRequest");
    emu_req_free(req);
    emu_router_free(r);
    static const struct {
        const char *s;
        bool ok;
    } cases[] = {
        {"", true},
        {"plain ascii", true},
        {"caf\xc3\xa9", true},
        {"\xe2\x82\xac", true},
        {"\xf0\x9f\x94\x91", true},
        {"\xf4\x8f\xbf\xbf", true},
        {"\xff", false},
        {"\xc3", false},
        {"\xc0\xaf", false},
        {"\xe0\x80\xaf", false},
        {"\xed\xa0\x80", false},
        {"\xf4\x90\x80\x80", false},
        {"\xf8\x88\x80\x80\x80", false},
        {"a\x80", false},
        {"\xe2\x82", false},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++)
        if (emu_utf8_valid(cases[i].s, strlen(cases[i].s)) != cases[i].ok)
            fail_msg("emu_utf8_valid case %zu: want %d", i, cases[i].ok);
}

/* Fuzzing finding (fuzz_json_bodies): error messages carry client text and are cut by their
 * buffers; one that was not UTF-8 made the error answer's JSON unbuildable (a 4xx with an
 * empty body). The error senders repair the text first. */
static void error_message_not_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"plain", "plain"},
        {"caf\xc3\xa9", "caf\xc3\xa9"},
        {"a\xff"
         "b",
         "a?b"},
        {"cut \xe2\x82", "cut ??"},
        {"\xed\xa0\x80", "???"},
        {"\xf0\x9f\x94\x91 ok", "\xf0\x9f\x94\x91 ok"},
        {"", ""},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s", cases[i].in);
        emu_utf8_repair(buf);
        if (strcmp(buf, cases[i].out) != 0)
            fail_msg("repair case %zu: '%s', want '%s'", i, buf, cases[i].out);
    }
    emu_req *req = emu_req_new("POST", "/x");
    emu_send_error(req, 400, "BadParameter", "The name '%s' is invalid.", "n\xc3");
    assert_int_equal(req->status, 400);
    assert_string_equal(resp_error_code(req), "BadParameter");
    emu_req_free(req);
}

/* ---------------------------------------------------------------------------------------- */
/* request: path normalisation and query decoding                                            */

static void req_path_normalised(void **state)
{
    (void)state;
    static const struct {
        const char *uri, *path;
    } cases[] = {
        {"/", "/"},
        {"", "/"},
        {"//", "/"},
        {"/a//b///c/", "/a/b/c"},
        {"/a/?x=1", "/a"},
        {"keys/a", "/keys/a"},
        {"/a%2F%2Fb", "/a%2F%2Fb"},
        {"?x=1", "/"},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        emu_req *req = emu_req_new("GET", cases[i].uri);
        if (strcmp(req->path, cases[i].path) != 0)
            fail_msg("uri '%s': path '%s', want '%s'", cases[i].uri, req->path, cases[i].path);
        assert_string_equal(req->uri, cases[i].uri);
        emu_req_free(req);
    }
}

typedef struct {
    const char *uri, *name, *value; /* value NULL = absent */
} query_case;

static void req_query_decoding_table(void **state)
{
    (void)state;
    static const query_case cases[] = {
        {"/k?api%2Dversion=7.5", "api-version", "7.5"},
        {"/k?api%2dversion=7.5", "API-VERSION", "7.5"},
        {"/k?API-Version=7.5", "api-version", "7.5"},
        {"/k?q=a+b", "q", "a b"},
        {"/k?q=a%20b", "q", "a b"},
        {"/k?q=a%2Bb", "q", "a+b"},
        {"/k?a+b=1", "a b", "1"},
        {"/k?bad=%zz&ok=1", "bad", NULL},
        {"/k?bad=%zz&ok=1", "ok", "1"},
        {"/k?t=%4", "t", NULL},
        {"/k?t=%", "t", NULL},
        {"/k?%zz=1&n=2", "n", "2"},
        {"/k?flag", "flag", ""},
        {"/k?flag=", "flag", ""},
        {"/k?a=1&&b=2", "b", "2"},
        {"/k?a=1=2", "a", "1=2"},
        {"/k?a=1&a=2", "a", "1"},
        {"/k?x=1", "y", NULL},
        {"/k", "x", NULL},
        {"/k?", "x", NULL},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const query_case *c = &cases[i];
        emu_req *req = emu_req_new("GET", c->uri);
        const char *v = emu_req_query(req, c->name);
        if (!c->value) {
            if (v)
                fail_msg("%s: query '%s' = '%s', want absent", c->uri, c->name, v);
        } else {
            if (!v || strcmp(v, c->value) != 0)
                fail_msg("%s: query '%s' = '%s', want '%s'", c->uri, c->name, v ? v : "(null)",
                         c->value);
        }
        assert_false(req->query_overflow);
        emu_req_free(req);
    }
}

static void req_query_overflow(void **state)
{
    (void)state;
    char uri[1024];
    for (size_t total = EMU_MAX_QUERY; total <= EMU_MAX_QUERY + 2; total++) {
        size_t o = (size_t)snprintf(uri, sizeof uri, "/k?");
        for (size_t i = 0; i < total; i++)
            o += (size_t)snprintf(uri + o, sizeof uri - o, "%sp%zu=%zu", i ? "&" : "", i, i);
        emu_req *req = emu_req_new("GET", uri);
        assert_int_equal(req->nquery, EMU_MAX_QUERY);
        assert_int_equal(req->query_overflow, total > EMU_MAX_QUERY);
        assert_string_equal(emu_req_query(req, "p0"), "0");
        assert_string_equal(emu_req_query(req, "p31"), "31");
        assert_null(emu_req_query(req, "p32"));
        emu_req_free(req);
    }
}

static void req_headers_and_host(void **state)
{
    (void)state;
    emu_req *req = emu_req_new("GET", "/");
    assert_string_equal(req->host, "");
    assert_string_equal(emu_req_base_url(req), "https://localhost");
    for (int i = 0; i < 40; i++) { /* grows past the initial capacity */
        char n[16];
        snprintf(n, sizeof n, "X-H%d", i);
        emu_req_add_header(req, n, n);
    }
    emu_req_add_header(req, "Host", "MyVault.Vault.localhost:8443");
    assert_string_equal(emu_req_header(req, "x-h0"), "X-H0");
    assert_string_equal(emu_req_header(req, "X-H39"), "X-H39");
    assert_null(emu_req_header(req, "X-H40"));
    assert_string_equal(emu_req_header(req, "HOST"), "MyVault.Vault.localhost:8443");
    char hn[64];
    emu_req_hostname(req, hn, sizeof hn);
    assert_string_equal(hn, "myvault.vault.localhost");
    assert_string_equal(emu_req_base_url(req), "https://MyVault.Vault.localhost:8443");
    emu_req_free(req);

    req = emu_req_new("GET", "/");
    emu_req_add_header(req, "host", "[::1]:8443");
    emu_req_hostname(req, hn, sizeof hn);
    assert_string_equal(hn, "[::1]");
    emu_req_free(req);
}

/* ---------------------------------------------------------------------------------------- */
/* percent decoding and JSON                                                                 */

typedef struct {
    const char *in;
    bool plus_space;
    bool ok;
    const char *out;
    size_t out_len;
} pct_case;

static void percent_decode_table(void **state)
{
    (void)state;
    static const pct_case cases[] = {
        {"", false, true, "", 0},         {"abc", false, true, "abc", 3},
        {"%41", false, true, "A", 1},     {"a%2fb", false, true, "a/b", 3},
        {"%4a%4A", false, true, "JJ", 2}, {"a+b", true, true, "a b", 3},
        {"a+b", false, true, "a+b", 3},   {"%2B", true, true, "+", 1},
        {"%00x", false, true, "\0x", 2},  {"%", false, false, NULL, 0},
        {"%4", false, false, NULL, 0},    {"ab%4", false, false, NULL, 0},
        {"%zz", false, false, NULL, 0},   {"%4g", false, false, NULL, 0},
        {"%g4", false, false, NULL, 0},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const pct_case *c = &cases[i];
        char out[64];
        size_t n = 999;
        bool ok = emu_percent_decode(c->in, strlen(c->in), c->plus_space, out, &n);
        if (ok != c->ok)
            fail_msg("'%s': ok %d, want %d", c->in, ok, c->ok);
        if (ok) {
            assert_int_equal(n, c->out_len);
            assert_memory_equal(out, c->out, n);
            assert_int_equal(out[n], '\0');
        }
    }
    /* only len bytes are read: "%41" cut to 2 bytes is a truncated escape */
    char out[8];
    size_t n;
    assert_false(emu_percent_decode("%41", 2, false, out, &n));
    assert_true(emu_percent_decode("ab%41", 2, false, out, &n));
    assert_int_equal(n, 2);
    assert_string_equal(out, "ab");
}

static void json_depth_table(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int depth;
    } cases[] = {
        {"", 0},
        {"1", 0},
        {"{}", 1},
        {"[]", 1},
        {"{\"a\":[1,{\"b\":2}]}", 3},
        {"[[[[]]]]", 4},
        {"\"{{{[[[\"", 0},
        {"{\"a\":\"\\\"{{\"}", 1},
        {"{\"a\":\"\\\\\",\"b\":{}}", 2}, /* escaped backslash ends the string */
        {"{}{}{}", 1},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        int d = emu_json_depth(cases[i].s, strlen(cases[i].s));
        if (d != cases[i].depth)
            fail_msg("'%s': depth %d, want %d", cases[i].s, d, cases[i].depth);
    }
}

typedef struct {
    const char *body; /* NULL = no body set */
    bool allow_empty;
    long max_depth; /* 0 = default */
    bool ok;
    const char *msg_has; /* substring of err on failure */
    const char *msg_has2;
} json_case;

static void req_json_table(void **state)
{
    (void)state;
    static const json_case cases[] = {
        {"{\"a\":{\"b\":{\"c\":{}}}}", false, 3, false, "deeper than 3", NULL},
        {"{\"a\":{\"b\":{\"c\":1}}}", false, 3, true, NULL, NULL},
        {"{\"a\":\"{{{{{{\"}", false, 3, true, NULL, NULL},
        {"{\"a\":1,\"a\":2}", false, 0, false, "duplicate", NULL},
        {"[1,2]", false, 0, false, "JSON object", NULL},
        {"\"text\"", false, 0, false, NULL, NULL},
        {"", true, 0, true, NULL, NULL},
        {"  \n\t ", true, 0, true, NULL, NULL},
        {NULL, true, 0, true, NULL, NULL},
        {"", false, 0, false, "empty", NULL},
        {NULL, false, 0, false, "empty", NULL},
        {"{\"a\":}", false, 0, false, "line 1", "column"},
        {"{\n\"a\": 1,\n\"b\": }", false, 0, false, "line 3", "column"},
        {"{\"a\":1} x", false, 0, false, "not valid JSON", NULL},
        /* fuzzing finding (fuzz_json_bodies): jansson quotes the bytes it stopped at; a bad
         * escape before a multi-byte character gave a message that was not UTF-8 */
        {"{\"\\\xde\x8d"
         "dtime\":3600}",
         false, 0, false, "not valid JSON", NULL},
        {"{\"a\":\"\xff\"}", false, 0, false, "not valid JSON", NULL},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const json_case *c = &cases[i];
        emu_req *req = emu_req_new("POST", "/x");
        if (c->body)
            emu_req_set_body(req, c->body, strlen(c->body));
        if (c->max_depth)
            req->max_json_depth = c->max_depth;
        char err[256] = "";
        json_t *j = emu_req_json(req, c->allow_empty, err, sizeof err);
        if ((j != NULL) != c->ok)
            fail_msg("body '%s': parsed %d, want %d (err '%s')", c->body ? c->body : "(none)",
                     j != NULL, c->ok, err);
        if (j) {
            assert_true(json_is_object(j));
            if (!c->body || !strchr(c->body, '{'))
                assert_int_equal(json_object_size(j), 0);
            json_decref(j);
        } else {
            assert_true(err[0] != '\0');
            if (!emu_utf8_valid(err, strlen(err)))
                fail_msg("case %zu: err is not UTF-8", i);
            if (c->msg_has && !strstr(err, c->msg_has))
                fail_msg("body '%s': err '%s' lacks '%s'", c->body, err, c->msg_has);
            if (c->msg_has2 && !strstr(err, c->msg_has2))
                fail_msg("body '%s': err '%s' lacks '%s'", c->body, err, c->msg_has2);
        }
        emu_req_free(req);
    }
}

static void responses_once(void **state)
{
    (void)state;
    emu_req *req = emu_req_new("GET", "/");
    emu_resp_header_add(req, "X-A", "1");
    emu_resp_header_add(req, "X-B", "2");
    emu_send_json(req, 201, json_pack("{s:i}", "n", 1));
    /* a second response is ignored (and its body released) */
    emu_send_error(req, 500, "InternalError", "late %d", 2);
    emu_send_json(req, 202, json_pack("{s:i}", "n", 2));
    assert_int_equal(req->status, 201);
    assert_string_equal(req->resp_body, "{\"n\":1}");
    assert_int_equal(req->resp_len, strlen("{\"n\":1}"));
    assert_string_equal(req->resp_headers->name, "X-A");
    assert_string_equal(req->resp_headers->next->value, "2");
    assert_null(req->resp_headers->next->next);
    emu_req_free(req);

    req = emu_req_new("DELETE", "/");
    emu_send_empty(req, 204);
    assert_int_equal(req->status, 204);
    assert_null(req->resp_body);
    emu_req_free(req);
}

/* ---------------------------------------------------------------------------------------- */
/* config                                                                                    */

static const char *const CONFIG_ENVS[] = {
    "CMKEMU_LISTEN",      "CMKEMU_DATA_DIR",       "CMKEMU_NO_DEMO",      "CMKEMU_WORLD",
    "CMKEMU_THREADS",     "CMKEMU_PKCS11_MODULE",  "CMKEMU_TOKEN_LABEL",  "CMKEMU_PIN",
    "CMKEMU_LOG_FORMAT",  "CMKEMU_LOG_LEVEL",      "CMKEMU_AUTH",         "CMKEMU_MAX_BODY",
    "CMKEMU_MAX_HEADERS", "CMKEMU_MAX_JSON_DEPTH", "CMKEMU_ALLOW_REMOTE", "CMKEMU_TENANT",
};

/* The environment of the process may carry CMKEMU_* settings: set them aside for the config
 * tests and put them back afterwards. */
static char *saved_env[N_ELEMS(CONFIG_ENVS)];

static int config_setup(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_ELEMS(CONFIG_ENVS); i++) {
        const char *v = getenv(CONFIG_ENVS[i]);
        saved_env[i] = v ? strdup(v) : NULL;
        unsetenv(CONFIG_ENVS[i]);
    }
    return 0;
}

static int config_teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_ELEMS(CONFIG_ENVS); i++) {
        if (saved_env[i])
            setenv(CONFIG_ENVS[i], saved_env[i], 1);
        else
            unsetenv(CONFIG_ENVS[i]);
        free(saved_env[i]);
        saved_env[i] = NULL;
    }
    return 0;
}

/* Parses a NULL-terminated argument list. */
static bool parse_args(emu_config *cfg, char *err, size_t errlen, const char *const *args)
{
    char *argv[32];
    int argc = 0;
    while (args[argc]) {
        argv[argc] = (char *)args[argc];
        argc++;
    }
    argv[argc] = NULL;
    err[0] = '\0';
    return emu_config_parse(argc, argv, cfg, err, errlen);
}

static void config_defaults(void **state)
{
    (void)state;
    emu_config cfg;
    char err[256];
    static const char *const none[] = {NULL};
    assert_true(parse_args(&cfg, err, sizeof err, none));
    assert_string_equal(cfg.listen, "127.0.0.1:8443");
    assert_string_equal(cfg.listen_host, "127.0.0.1");
    assert_int_equal(cfg.port, 8443);
    assert_string_equal(cfg.data_dir, ".cmkemu");
    assert_false(cfg.no_demo);
    assert_int_equal(cfg.threads, 0);
    assert_null(cfg.pkcs11_module);
    assert_string_equal(cfg.token_label, "cmkemu");
    assert_null(cfg.pin);
    assert_false(cfg.log_json);
    assert_int_equal(cfg.log_level, EMU_LOG_INFO);
    assert_null(cfg.world_file);
    assert_int_equal(cfg.auth, EMU_AUTH_PERMISSIVE);
    assert_int_equal(cfg.max_body, 4194304);
    assert_int_equal(cfg.max_headers, 100);
    assert_int_equal(cfg.max_json_depth, 32);
    assert_false(cfg.allow_remote);
    assert_non_null(cfg.tenant);
    assert_true(strlen(cfg.tenant) == 36);
    emu_config_cleanup(&cfg);
    assert_null(cfg.listen);
    assert_null(cfg.listen_host);
    assert_null(cfg.data_dir);
    /* cleanup twice is harmless */
    emu_config_cleanup(&cfg);
}

static void config_flags_override_env(void **state)
{
    (void)state;
    emu_config cfg;
    char err[256];

    setenv("CMKEMU_THREADS", "3", 1);
    static const char *const none[] = {NULL};
    assert_true(parse_args(&cfg, err, sizeof err, none));
    assert_int_equal(cfg.threads, 3);
    emu_config_cleanup(&cfg);

    static const char *const flag[] = {"--threads", "5", NULL};
    assert_true(parse_args(&cfg, err, sizeof err, flag));
    assert_int_equal(cfg.threads, 5);
    emu_config_cleanup(&cfg);

    static const char *const eq[] = {"--threads=7", NULL};
    assert_true(parse_args(&cfg, err, sizeof err, eq));
    assert_int_equal(cfg.threads, 7);
    emu_config_cleanup(&cfg);

    /* a bad environment value is reported with the variable's name */
    setenv("CMKEMU_THREADS", "lots", 1);
    assert_false(parse_args(&cfg, err, sizeof err, none));
    assert_non_null(strstr(err, "CMKEMU_THREADS"));
    assert_non_null(strstr(err, "lots"));
    emu_config_cleanup(&cfg);
    unsetenv("CMKEMU_THREADS");

    setenv("CMKEMU_DATA_DIR", "/env/dir", 1);
    setenv("CMKEMU_NO_DEMO", "yes", 1);
    assert_true(parse_args(&cfg, err, sizeof err, none));
    assert_string_equal(cfg.data_dir, "/env/dir");
    assert_true(cfg.no_demo);
    emu_config_cleanup(&cfg);
    static const char *const dd[] = {"--data-dir", "/flag/dir", "--no-demo=false", NULL};
    assert_true(parse_args(&cfg, err, sizeof err, dd));
    assert_string_equal(cfg.data_dir, "/flag/dir");
    assert_false(cfg.no_demo);
    emu_config_cleanup(&cfg);
    unsetenv("CMKEMU_DATA_DIR");
    unsetenv("CMKEMU_NO_DEMO");
}

static void config_flag_forms(void **state)
{
    (void)state;
    emu_config cfg;
    char err[256];
    static const char *const args[] = {"--no-demo",
                                       "--allow-remote",
                                       "--log-format=json",
                                       "--log-level",
                                       "debug",
                                       "--auth=strict",
                                       "--listen=[::1]:9000",
                                       "--max-body",
                                       "2048",
                                       "--max-json-depth=5",
                                       "--world",
                                       "w.json",
                                       "--token-label=t",
                                       "--tenant",
                                       "tid",
                                       "--threads",
                                       "1",
                                       "--threads",
                                       "2",
                                       NULL};
    assert_true(parse_args(&cfg, err, sizeof err, args));
    assert_true(cfg.no_demo);
    assert_true(cfg.allow_remote);
    assert_true(cfg.log_json);
    assert_int_equal(cfg.log_level, EMU_LOG_DEBUG);
    assert_int_equal(cfg.auth, EMU_AUTH_STRICT);
    assert_string_equal(cfg.listen, "[::1]:9000");
    assert_string_equal(cfg.listen_host, "::1");
    assert_int_equal(cfg.port, 9000);
    assert_int_equal(cfg.max_body, 2048);
    assert_int_equal(cfg.max_json_depth, 5);
    assert_string_equal(cfg.world_file, "w.json");
    assert_string_equal(cfg.token_label, "t");
    assert_string_equal(cfg.tenant, "tid");
    assert_int_equal(cfg.threads, 2); /* the last flag wins */
    emu_config_cleanup(&cfg);
}

typedef struct {
    const char *args[6];
    bool ok;
    const char *err_has;  /* substring of the error (NULL: don't care) */
    const char *err_has2; /* second substring */
    const char *host;     /* ok: expected listen_host */
    int port;
} config_case;

static void config_errors_and_listen_table(void **state)
{
    (void)state;
    static const config_case cases[] = {
        {{"--bogus", NULL}, false, "--bogus", NULL, NULL, 0},
        {{"--bogus=1", NULL}, false, "--bogus", NULL, NULL, 0},
        {{"serve", NULL}, false, "serve", NULL, NULL, 0},
        {{"--threads", "300", NULL}, false, "--threads", "256", NULL, 0},
        {{"--threads", "-1", NULL}, false, "--threads", NULL, NULL, 0},
        {{"--threads", "3x", NULL}, false, "3x", NULL, NULL, 0},
        {{"--threads", NULL}, false, "--threads", "value", NULL, 0},
        {{"--max-body=10", NULL}, false, "--max-body", NULL, NULL, 0},
        {{"--log-level", "loud", NULL}, false, "loud", "debug", NULL, 0},
        {{"--auth=lax", NULL}, false, "--auth", "strict", NULL, 0},
        {{"--no-demo=maybe", NULL}, false, "--no-demo", NULL, NULL, 0},
        {{"--data-dir=", NULL}, false, "--data-dir", NULL, NULL, 0},
        {{"--listen", "0.0.0.0:8443", NULL}, false, "--allow-remote", "0.0.0.0", NULL, 0},
        {{"--listen", "10.1.2.3:1", NULL}, false, "--allow-remote", NULL, NULL, 0},
        {{"--listen", "0.0.0.0:8443", "--allow-remote", NULL}, true, NULL, NULL, "0.0.0.0", 8443},
        {{"--allow-remote", "--listen", "[::]:1", NULL}, true, NULL, NULL, "::", 1},
        {{"--listen", "[::1]:9000", NULL}, true, NULL, NULL, "::1", 9000},
        {{"--listen", "localhost:0", NULL}, true, NULL, NULL, "localhost", 0},
        {{"--listen", "127.0.0.2:80", NULL}, true, NULL, NULL, "127.0.0.2", 80},
        {{"--listen", "127.0.0.1:65536", NULL}, false, "65536", NULL, NULL, 0},
        {{"--listen", "127.0.0.1:http", NULL}, false, "--listen", NULL, NULL, 0},
        {{"--listen", "8443", NULL}, false, "--listen", NULL, NULL, 0},
        {{"--listen", ":8443", NULL}, false, "--listen", NULL, NULL, 0},
        {{"--pkcs11-module", "/usr/lib/x.so", NULL}, false, "--pin", NULL, NULL, 0},
        {{"--pkcs11-module=/usr/lib/x.so", "--pin=1234", NULL},
         true,
         NULL,
         NULL,
         "127.0.0.1",
         8443},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const config_case *c = &cases[i];
        emu_config cfg;
        char err[256];
        bool ok = parse_args(&cfg, err, sizeof err, c->args);
        if (ok != c->ok)
            fail_msg("case %zu (%s %s): ok %d, want %d (err '%s')", i, c->args[0],
                     c->args[1] ? c->args[1] : "", ok, c->ok, err);
        if (!ok) {
            assert_true(err[0] != '\0');
            if (c->err_has && !strstr(err, c->err_has))
                fail_msg("case %zu: err '%s' lacks '%s'", i, err, c->err_has);
            if (c->err_has2 && !strstr(err, c->err_has2))
                fail_msg("case %zu: err '%s' lacks '%s'", i, err, c->err_has2);
            assert_null(strchr(err, '\n'));
        } else {
            assert_string_equal(cfg.listen_host, c->host);
            assert_int_equal(cfg.port, c->port);
        }
        emu_config_cleanup(&cfg);
    }
}

static void config_pin_error_does_not_echo_pin(void **state)
{
    (void)state;
    emu_config cfg;
    char err[256];
    /* a PIN in the environment together with a bad flag value: the message names the flag */
    setenv("CMKEMU_PIN", "s3cr3t-pin", 1);
    static const char *const args[] = {"--max-headers", "7", NULL};
    assert_false(parse_args(&cfg, err, sizeof err, args));
    assert_null(strstr(err, "s3cr3t-pin"));
    assert_non_null(strstr(err, "--max-headers"));
    emu_config_cleanup(&cfg);
    unsetenv("CMKEMU_PIN");
}

/* ---------------------------------------------------------------------------------------- */
/* util                                                                                      */

typedef struct {
    const uint8_t *in;
    size_t len;
    const char *enc;
} b64_case;

static void b64url_roundtrip_table(void **state)
{
    (void)state;
    static const uint8_t hi[] = {0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd};
    static const b64_case cases[] = {
        {(const uint8_t *)"", 0, ""},
        {(const uint8_t *)"f", 1, "Zg"},
        {(const uint8_t *)"fo", 2, "Zm8"},
        {(const uint8_t *)"foo", 3, "Zm9v"},
        {(const uint8_t *)"foob", 4, "Zm9vYg"},
        {(const uint8_t *)"fooba", 5, "Zm9vYmE"},
        {hi, 1, "-A"},
        {hi, 2, "-Pk"},
        {hi, 3, "-Pn6"},
        {hi, 4, "-Pn6-w"},
        {hi, 5, "-Pn6-_w"},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const b64_case *c = &cases[i];
        char *enc = emu_b64url_encode(c->in, c->len);
        if (strcmp(enc, c->enc) != 0)
            fail_msg("case %zu: encoded '%s', want '%s'", i, enc, c->enc);
        size_t n = 999;
        uint8_t *dec = emu_b64url_decode(enc, strlen(enc), 64, &n);
        assert_non_null(dec);
        assert_int_equal(n, c->len);
        if (n)
            assert_memory_equal(dec, c->in, n);
        free(dec);
        /* with padding to a multiple of 4 */
        char padded[16];
        size_t el = strlen(enc);
        snprintf(padded, sizeof padded, "%s%s", enc, el % 4 == 2 ? "==" : el % 4 == 3 ? "=" : "");
        dec = emu_b64url_decode(padded, strlen(padded), 64, &n);
        assert_non_null(dec);
        assert_int_equal(n, c->len);
        if (n)
            assert_memory_equal(dec, c->in, n);
        free(dec);
        /* max_out equal to the size is enough; one less is refused */
        dec = emu_b64url_decode(enc, strlen(enc), c->len, &n);
        assert_non_null(dec);
        free(dec);
        if (c->len > 0)
            assert_null(emu_b64url_decode(enc, strlen(enc), c->len - 1, &n));
        free(enc);
    }
}

static void b64url_decode_table(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        bool ok;
        const char *out;
        size_t out_len;
    } cases[] = {
        {"Zm9vYg==", true, "foob", 4},
        {"Zm9vYg", true, "foob", 4},
        {"+Pn6/w", true, "\xf8\xf9\xfa\xff", 4}, /* standard alphabet accepted */
        {"-Pn6_w", true, "\xf8\xf9\xfa\xff", 4},
        {"", true, "", 0},
        {"Z", false, NULL, 0}, /* a lone sextet is never whole bytes */
        {"Zm9vY", false, NULL, 0},
        {"Zm9v!", false, NULL, 0},
        {"Zm 9v", false, NULL, 0},
        {"Zm9v\n", false, NULL, 0},
        {"Zg=a", false, NULL, 0}, /* padding in the middle */
        {"Zm.v", false, NULL, 0},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        size_t n = 999;
        uint8_t *d = emu_b64url_decode(cases[i].in, strlen(cases[i].in), 1024, &n);
        if ((d != NULL) != cases[i].ok)
            fail_msg("'%s': decoded %d, want %d", cases[i].in, d != NULL, cases[i].ok);
        if (d) {
            assert_int_equal(n, cases[i].out_len);
            assert_memory_equal(d, cases[i].out, n);
        }
        free(d);
    }
    /* standard base64 output pads */
    char *s = emu_b64_encode((const uint8_t *)"\xfb\xff", 2);
    assert_string_equal(s, "+/8=");
    free(s);
    s = emu_b64_encode((const uint8_t *)"f", 1);
    assert_string_equal(s, "Zg==");
    free(s);
}

static void hex_table(void **state)
{
    (void)state;
    uint8_t in[] = {0x00, 0x01, 0xab, 0xff, 0x7f};
    char out[11];
    emu_hex_encode(in, sizeof in, out);
    assert_string_equal(out, "0001abff7f");
    emu_hex_encode(in, 0, out);
    assert_string_equal(out, "");

    static const struct {
        const char *in;
        size_t n;
        bool ok;
        const uint8_t out[4];
    } cases[] = {
        {"0001abff", 4, true, {0x00, 0x01, 0xab, 0xff}},
        {"00ABFF7f", 4, true, {0x00, 0xab, 0xff, 0x7f}},
        {"", 0, true, {0}},
        {"000", 2, false, {0}},
        {"0001ab", 4, false, {0}},
        {"zz00", 2, false, {0}},
        {"0g", 1, false, {0}},
        {"-1", 1, false, {0}},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        uint8_t buf[4] = {0};
        bool ok = emu_hex_decode(cases[i].in, buf, cases[i].n);
        if (ok != cases[i].ok)
            fail_msg("hex '%s' (%zu): ok %d, want %d", cases[i].in, cases[i].n, ok, cases[i].ok);
        if (ok && cases[i].n)
            assert_memory_equal(buf, cases[i].out, cases[i].n);
    }
}

typedef struct {
    const char *s;
    int64_t min, max;
    bool ok;
    int64_t v;
} i64_case;

static void parse_i64_table(void **state)
{
    (void)state;
    static const i64_case cases[] = {
        {"0", 0, 10, true, 0},
        {"10", 0, 10, true, 10},
        {"11", 0, 10, false, 0},
        {"-5", -10, 10, true, -5},
        {"-11", -10, 10, false, 0},
        {"+7", 0, 10, true, 7},
        {"007", 0, 10, true, 7},
        {"9223372036854775807", INT64_MIN, INT64_MAX, true, INT64_MAX},
        {"9223372036854775808", INT64_MIN, INT64_MAX, false, 0},
        {"-9223372036854775808", INT64_MIN, INT64_MAX, true, INT64_MIN},
        {"-9223372036854775809", INT64_MIN, INT64_MAX, false, 0},
        {"18446744073709551615", INT64_MIN, INT64_MAX, false, 0},
        {"18446744073709551616", INT64_MIN, INT64_MAX, false, 0},
        {"99999999999999999999", INT64_MIN, INT64_MAX, false, 0},
        {"", INT64_MIN, INT64_MAX, false, 0},
        {"-", INT64_MIN, INT64_MAX, false, 0},
        {"+", INT64_MIN, INT64_MAX, false, 0},
        {"--1", INT64_MIN, INT64_MAX, false, 0},
        {"12a", INT64_MIN, INT64_MAX, false, 0},
        {"1.5", INT64_MIN, INT64_MAX, false, 0},
        {" 1", INT64_MIN, INT64_MAX, false, 0},
        {"1 ", INT64_MIN, INT64_MAX, false, 0},
        {"0x10", INT64_MIN, INT64_MAX, false, 0},
        {"1e3", INT64_MIN, INT64_MAX, false, 0},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const i64_case *c = &cases[i];
        int64_t v = 12345;
        bool ok = emu_parse_i64(c->s, c->min, c->max, &v);
        if (ok != c->ok)
            fail_msg("'%s' in [%lld,%lld]: ok %d, want %d", c->s, (long long)c->min,
                     (long long)c->max, ok, c->ok);
        if (ok)
            assert_int_equal(v, c->v);
        else
            assert_int_equal(v, 12345); /* untouched on failure */
    }
    int64_t v;
    assert_false(emu_parse_i64(NULL, 0, 10, &v));
    /* the n variant reads only n bytes */
    assert_true(emu_parse_i64n("123abc", 3, 0, 1000, &v));
    assert_int_equal(v, 123);
    assert_false(emu_parse_i64n("123abc", 4, 0, 1000, &v));
    assert_false(emu_parse_i64n("1", 0, 0, 1000, &v));
}

typedef struct {
    const char *s;
    bool ok;
    int64_t secs;
} dur_case;

static void iso_duration_table(void **state)
{
    (void)state;
    static const dur_case cases[] = {
        {"P7D", true, 7 * 86400},
        {"PT1H", true, 3600},
        {"PT1M", true, 60},
        {"P1M", true, 30 * 86400},
        {"P1Y2M", true, 365 * 86400 + 60 * 86400},
        {"P2W", true, 14 * 86400},
        {"P1DT2H3M4S", true, 86400 + 7200 + 180 + 4},
        {"P2Y", true, 730 * 86400},
        {"PT0S", true, 0},
        {"P90D", true, 90 * 86400},
        {"PT", false, 0},
        {"P", false, 0},
        {"", false, 0},
        {"7D", false, 0},
        {"-P7D", false, 0},
        {"P-7D", false, 0},
        {"P7", false, 0},
        {"PD", false, 0},
        {"P1DT", false, 0},
        {"PT1D", false, 0},
        {"P1H", false, 0},
        {"P1TT1H", false, 0},
        {"P1.5D", false, 0},
        {"P7X", false, 0},
        {"P7D ", false, 0},
        {"P99999999999999999999D", false, 0},
        {"P1000000001D", false, 0},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const dur_case *c = &cases[i];
        int64_t secs = -1;
        bool ok = emu_iso_duration_parse(c->s, &secs);
        if (ok != c->ok)
            fail_msg("'%s': ok %d, want %d (secs %lld)", c->s, ok, c->ok, (long long)secs);
        if (ok)
            assert_int_equal(secs, c->secs);
    }
    int64_t secs;
    assert_false(emu_iso_duration_parse(NULL, &secs));
    /* large components that stay below the cap still parse; a sum beyond it is refused */
    assert_true(emu_iso_duration_parse("P1000000000Y", &secs));
    assert_int_equal(secs, 1000000000LL * 365 * 86400);
    char big[1024];
    size_t o = (size_t)snprintf(big, sizeof big, "P");
    for (int i = 0; i < 80; i++)
        o += (size_t)snprintf(big + o, sizeof big - o, "1000000000Y");
    (void)o;
    assert_false(emu_iso_duration_parse(big, &secs));
}

/* Strictness cases kept apart so that each shows as its own failure. All mismatches of a table
 * are reported together. */
static void iso_duration_rejects_repeated_or_unordered_designators(void **state)
{
    (void)state;
    /* ISO 8601: each designator at most once, in the order Y M W D T H M S */
    static const char *const bad[] = {"P1D2D", "P1D1Y", "PT1S1H", "P1M1M"};
    char report[512] = "";
    size_t o = 0;
    for (size_t i = 0; i < N_ELEMS(bad); i++) {
        int64_t secs = -1;
        if (emu_iso_duration_parse(bad[i], &secs))
            o += (size_t)snprintf(report + o, sizeof report - o, " '%s'->%lld", bad[i],
                                  (long long)secs);
    }
    if (o)
        fail_msg("malformed durations accepted:%s", report);
}

static void time_rfc3339_roundtrip(void **state)
{
    (void)state;
    static const struct {
        int64_t t;
        const char *s;
    } fmt[] = {
        {0, "1970-01-01T00:00:00Z"},
        {951868799, "2000-02-29T23:59:59Z"},
        {1795428000, "2026-11-23T10:00:00Z"},
        {4102444800, "2100-01-01T00:00:00Z"},
    };
    for (size_t i = 0; i < N_ELEMS(fmt); i++) {
        char out[32];
        emu_time_rfc3339(fmt[i].t, out, sizeof out);
        assert_string_equal(out, fmt[i].s);
        int64_t back = -1;
        assert_true(emu_time_parse_rfc3339(out, &back));
        assert_int_equal(back, fmt[i].t);
    }

    static const struct {
        const char *s;
        bool ok;
        int64_t t;
    } parse[] = {
        {"2026-11-23T10:00:00Z", true, 1795428000},
        {"2026-11-23t10:00:00z", true, 1795428000},
        {"2026-11-23 10:00:00Z", true, 1795428000},
        {"2026-11-23T10:00:00.123Z", true, 1795428000},
        {"2026-11-23T10:00:00.123456789+00:00", true, 1795428000},
        {"2026-11-23T12:30:00+02:30", true, 1795428000},
        {"2026-11-23T05:00:00-05:00", true, 1795428000},
        {"2026-11-24T01:00:00+15:00", true, 1795428000},
        {"2026-11-23T10:00:00+24:00", false, 0},
        {"2026-11-23T10:00:00+02:60", false, 0},
        {"2026-11-22T23:00:00-11:00", true, 1795428000},
        {"2026-11-23T10:00:00+0200", false, 0},
        {"2026-11-23T10:00:00+02", false, 0},
        {"2026-11-23T10:00:00X", false, 0},
        {"2026-11-23T10:00:00Zjunk", false, 0},
        {"2026-11-23", false, 0},
        {"2026-13-01T00:00:00Z", false, 0},
        {"2026-00-01T00:00:00Z", false, 0},
        {"2026-11-32T00:00:00Z", false, 0},
        {"2026-11-23T24:00:00Z", false, 0},
        {"2026-11-23T10:60:00Z", false, 0},
        {"2026/11/23T10:00:00Z", false, 0},
        {"", false, 0},
    };
    for (size_t i = 0; i < N_ELEMS(parse); i++) {
        int64_t t = -1;
        bool ok = emu_time_parse_rfc3339(parse[i].s, &t);
        if (ok != parse[i].ok)
            fail_msg("'%s': ok %d, want %d (t %lld)", parse[i].s, ok, parse[i].ok, (long long)t);
        if (ok)
            assert_int_equal(t, parse[i].t);
    }
}

static void time_rfc3339_rejects_malformed_fields(void **state)
{
    (void)state;
    static const char *const bad[] = {
        /* signs inside date/time fields are not RFC 3339 (full-date = 4DIGIT "-" 2DIGIT ...) */
        "2026-+1-23T10:00:00Z",
        "2026-11-23T+1:00:00Z",
        "+026-11-23T10:00:00Z",
        /* a day that does not exist in its month (RFC 3339 section 5.7) */
        "2026-02-31T00:00:00Z",
        "2026-04-31T00:00:00Z",
    };
    char report[512] = "";
    size_t o = 0;
    for (size_t i = 0; i < N_ELEMS(bad); i++) {
        int64_t t = -1;
        if (emu_time_parse_rfc3339(bad[i], &t)) {
            char back[32];
            emu_time_rfc3339(t, back, sizeof back);
            o += (size_t)snprintf(report + o, sizeof report - o, " '%s'->%s", bad[i], back);
        }
    }
    if (o)
        fail_msg("malformed timestamps accepted:%s", report);
}

static void ct_streq_table(void **state)
{
    (void)state;
    static const struct {
        const char *a, *b;
        bool eq;
    } cases[] = {
        {"", "", true},
        {"secret", "secret", true},
        {"secret", "secreT", false},
        {"secret", "secret1", false},
        {"secret1", "secret", false},
        {"", "x", false},
        {"abc", "abd", false},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        if (emu_ct_streq(cases[i].a, cases[i].b) != cases[i].eq)
            fail_msg("ct_streq('%s','%s') != %d", cases[i].a, cases[i].b, cases[i].eq);
        if (strlen(cases[i].a) == strlen(cases[i].b))
            assert_int_equal(emu_ct_equal(cases[i].a, cases[i].b, strlen(cases[i].a)), cases[i].eq);
    }
    assert_true(emu_streq_ci("Wrapkey", "WRAPKEY"));
    assert_false(emu_streq_ci("wrapkey", "wrapkeys"));
}

static void misc_alloc_and_guid(void **state)
{
    (void)state;
    char *s = emu_xasprintf("%s-%d", "ab", 42);
    assert_string_equal(s, "ab-42");
    free(s);
    char low[8];
    emu_lower_copy(low, sizeof low, "MyVault-01");
    assert_string_equal(low, "myvault"); /* truncated to 7 bytes + NUL */
    emu_lower_copy(low, sizeof low, "aB_.Z");
    assert_string_equal(low, "ab_.z");
    emu_lower_copy(low, 1, "X");
    assert_string_equal(low, "");
    s = emu_xstrndup("abcdef", 3);
    assert_string_equal(s, "abc");
    free(s);

    emu_arena *a = emu_arena_new();
    char *big = emu_arena_alloc(a, 100000); /* larger than one block */
    memset(big, 'x', 100000);
    char *p = emu_arena_strdup(a, "hello");
    assert_string_equal(p, "hello");
    assert_int_equal((uintptr_t)p % 16, 0);
    emu_arena_free(a);
    emu_arena_free(NULL);

    char g1[37], g2[37];
    emu_guid(g1);
    emu_guid(g2);
    assert_int_equal(strlen(g1), 36);
    assert_int_equal(g1[8], '-');
    assert_int_equal(g1[14], '4'); /* version 4 */
    assert_true(strchr("89ab", g1[19]) != NULL);
    assert_string_not_equal(g1, g2);
}

/* ---------------------------------------------------------------------------------------- */
/* store                                                                                     */

/* A store in a fresh temporary directory (dir; path: its file) with one migration applied. */
static emu_store *open_tmp_store(const char *tag, const emu_migration *m, char dir[PATH_MAX],
                                 char path[PATH_MAX + 16])
{
    char err[256];
    make_tmpdir(dir, PATH_MAX, tag);
    snprintf(path, PATH_MAX + 16, "%s/%s.db", dir, tag);
    emu_store *s = emu_store_open(path, err, sizeof err);
    if (!s)
        fail_msg("emu_store_open: %s", err);
    if (!emu_store_migrate(s, m, 1, err, sizeof err))
        fail_msg("emu_store_migrate: %s", err);
    return s;
}

static int count_rows(emu_store *s, const char *sql)
{
    sqlite3 *db = emu_store_lock(s);
    sqlite3_stmt *st = NULL;
    int n = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    emu_store_unlock(s);
    return n;
}

static int schema_version(emu_store *s, const char *module)
{
    char sql[128];
    snprintf(sql, sizeof sql,
             "SELECT coalesce((SELECT version FROM schema_versions WHERE module='%s'), 0)", module);
    return count_rows(s, sql);
}

static bool table_exists(emu_store *s, const char *name)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='%s'",
             name);
    return count_rows(s, sql) == 1;
}

/* Group commit: many threads commit; each returns from emu_store_unlock only after a sync that
 * finished after its commit, fewer syncs than commits are done, and every row is there after
 * a reopen. The deferred form gives the commit to wait for and calls back once durable. */
#define GC_THREADS 8
#define GC_EACH 40

typedef struct {
    emu_store *s;
    int id;
    int bad; /* unlock returned before any sync finished after the commit */
} gc_arg;

static void *gc_thread(void *p)
{
    gc_arg *a = p;
    for (int i = 0; i < GC_EACH; i++) {
        sqlite3 *db = emu_store_lock(a->s);
        unsigned long before = emu_store_sync_count(a->s);
        char sql[96];
        snprintf(sql, sizeof sql, "INSERT INTO gc(t, i) VALUES(%d, %d)", a->id, i);
        assert_true(emu_store_exec(db, sql));
        emu_store_unlock(a->s);
        if (emu_store_sync_count(a->s) <= before)
            a->bad++;
    }
    return NULL;
}

static void on_durable(void *ud, bool ok)
{
    assert_true(ok);
    atomic_int *flag = ud;
    atomic_store(flag, 1);
}

static void store_group_commit(void **state)
{
    (void)state;
    char dir[PATH_MAX], path[PATH_MAX + 16], err[256];
    static const emu_migration m = {"gc", 1, "CREATE TABLE gc(t INTEGER, i INTEGER);"};
    emu_store *s = open_tmp_store("gc", &m, dir, path);

    unsigned long syncs0 = emu_store_sync_count(s);
    pthread_t th[GC_THREADS];
    gc_arg args[GC_THREADS];
    for (int t = 0; t < GC_THREADS; t++) {
        args[t] = (gc_arg){.s = s, .id = t};
        assert_int_equal(pthread_create(&th[t], NULL, gc_thread, &args[t]), 0);
    }
    for (int t = 0; t < GC_THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(args[t].bad, 0);
    }
    unsigned long syncs = emu_store_sync_count(s) - syncs0;
    assert_true(syncs >= 1);
    assert_true(syncs < GC_THREADS * GC_EACH); /* batched */

    /* deferred: a read-only lock gives nothing to wait for */
    emu_store_defer_begin(s);
    (void)emu_store_lock(s);
    emu_store_unlock(s);
    assert_int_equal(emu_store_defer_end(), 0);
    /* a commit gives its sequence number; the callback comes once it is durable */
    unsigned long before = emu_store_sync_count(s);
    emu_store_defer_begin(s);
    assert_true(emu_store_exec(emu_store_lock(s), "INSERT INTO gc(t, i) VALUES(99, 0)"));
    emu_store_unlock(s);
    uint64_t seq = emu_store_defer_end();
    assert_true(seq > 0);
    atomic_int flag = 0;
    if (emu_store_when_durable(s, seq, on_durable, &flag) == EMU_STORE_LATER) {
        for (int i = 0; i < 5000 && !atomic_load(&flag); i++)
            usleep(1000);
        assert_int_equal(atomic_load(&flag), 1);
    }
    assert_true(emu_store_sync_count(s) > before);
    /* and now it is durable: no callback is arranged */
    assert_int_equal(emu_store_when_durable(s, seq, on_durable, &flag), EMU_STORE_DURABLE);
    emu_store_close(s);

    s = emu_store_open(path, err, sizeof err);
    if (!s)
        fail_msg("reopen: %s", err);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM gc"), GC_THREADS * GC_EACH + 1);
    emu_store_close(s);
}

/* Gathering: while another request handler is running (between defer_begin and defer_end),
 * the syncer waits for it before it syncs, so one fdatasync covers the commits made
 * meanwhile; the handler's end wakes it, and so does a blocking waiter. The bounds are made
 * an hour here, so each wake-up is the only way the test can finish (a broken one hangs
 * until ctest's timeout). */
typedef struct {
    emu_store *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool started, end;
} gather_handler;

static void *gather_handler_main(void *p)
{
    gather_handler *h = p;
    emu_store_defer_begin(h->s);
    pthread_mutex_lock(&h->mu);
    h->started = true;
    pthread_cond_broadcast(&h->cv);
    while (!h->end)
        pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
    (void)emu_store_defer_end();
    return NULL;
}

static void gather_handler_start(gather_handler *h, pthread_t *th)
{
    h->started = h->end = false;
    assert_int_equal(pthread_create(th, NULL, gather_handler_main, h), 0);
    pthread_mutex_lock(&h->mu);
    while (!h->started)
        pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
}

static void gather_handler_end(gather_handler *h, pthread_t th)
{
    pthread_mutex_lock(&h->mu);
    h->end = true;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(th, NULL);
}

static void on_durable_count(void *ud, bool ok)
{
    assert_true(ok);
    atomic_fetch_add((atomic_int *)ud, 1);
}

static void store_gathering(void **state)
{
    (void)state;
    char dir[PATH_MAX], path[PATH_MAX + 16], err[256];
    static const emu_migration m = {"ga", 1, "CREATE TABLE ga(i INTEGER);"};
    emu_store *s = open_tmp_store("gather", &m, dir, path);
    emu_store_set_gather(s, 3600LL * 1000000000LL, 3600LL * 1000000000LL);

    gather_handler h = {.s = s};
    pthread_mutex_init(&h.mu, NULL);
    pthread_cond_init(&h.cv, NULL);
    pthread_t th;
    gather_handler_start(&h, &th);

    /* ten deferred commits while the other handler runs: none is acknowledged yet */
    unsigned long before = emu_store_sync_count(s);
    atomic_int acked = 0;
    for (int i = 0; i < 10; i++) {
        emu_store_defer_begin(s);
        char sql[64];
        snprintf(sql, sizeof sql, "INSERT INTO ga(i) VALUES(%d)", i);
        assert_true(emu_store_exec(emu_store_lock(s), sql));
        emu_store_unlock(s);
        uint64_t seq = emu_store_defer_end();
        assert_true(seq > 0);
        assert_int_equal(emu_store_when_durable(s, seq, on_durable_count, &acked), EMU_STORE_LATER);
    }
    usleep(50 * 1000);
    assert_int_equal(atomic_load(&acked), 0);
    assert_int_equal(emu_store_sync_count(s), before);

    /* the handler ends: one sync covers all ten, then they are acknowledged */
    gather_handler_end(&h, th);
    for (int i = 0; i < 10000 && atomic_load(&acked) < 10; i++)
        usleep(1000);
    assert_int_equal(atomic_load(&acked), 10);
    assert_int_equal(emu_store_sync_count(s) - before, 1);

    /* a blocking commit is not held by a running handler */
    gather_handler_start(&h, &th);
    before = emu_store_sync_count(s);
    assert_true(emu_store_exec(emu_store_lock(s), "INSERT INTO ga(i) VALUES(100)"));
    emu_store_unlock(s); /* returns once durable */
    assert_true(emu_store_sync_count(s) > before);
    gather_handler_end(&h, th);

    pthread_cond_destroy(&h.cv);
    pthread_mutex_destroy(&h.mu);
    emu_store_close(s);
    s = emu_store_open(path, err, sizeof err);
    if (!s)
        fail_msg("reopen: %s", err);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM ga"), 11);
    emu_store_close(s);
}

/* ---- batched writes (emu_store_lock_batched) -------------------------------------------- */

/* For emu_store_when_durable calls that must answer at once. */
static void on_durable_never(void *ud, bool ok)
{
    (void)ud;
    (void)ok;
    fail_msg("a callback was arranged for a commit whose fate was known");
}

/* One handler's batched INSERT of v; returns what the handler waits for. */
static uint64_t batched_insert(emu_store *s, int v)
{
    char sql[64];
    snprintf(sql, sizeof sql, "INSERT INTO bt(i) VALUES(%d)", v);
    emu_store_defer_begin(s);
    assert_true(emu_store_exec(emu_store_lock_batched(s), sql));
    emu_store_unlock(s);
    return emu_store_defer_end();
}

/* One handler's batched count of bt's rows (checked to be `rows`); returns what it waits for. */
static uint64_t batched_count_rows(emu_store *s, int rows)
{
    emu_store_defer_begin(s);
    sqlite3 *db = emu_store_lock_batched(s);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM bt", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    emu_store_unlock(s);
    assert_int_equal(n, rows);
    return emu_store_defer_end();
}

static bool bt_has(emu_store *s, int v)
{
    char sql[64];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM bt WHERE i=%d", v);
    return count_rows(s, sql) == 1;
}

/* Handlers' batched writes share one transaction, committed once by the syncer; reads see
 * it; any other holder commits it first; a batch that fails to commit is reported to its
 * handlers and stores nothing, also when a later commit of the same handler would hide it. */
static void store_batched_writes(void **state)
{
    (void)state;
    char dir[PATH_MAX], path[PATH_MAX + 16], err[256];
    static const emu_migration m = {"bt", 1, "CREATE TABLE bt(i INTEGER);"};
    emu_store *s = open_tmp_store("batch", &m, dir, path);

    /* two handlers, one batch: the same number, and nothing committed before anyone waits */
    uint64_t commits = emu_store_commit_count(s);
    uint64_t a = batched_insert(s, 1), b = batched_insert(s, 2);
    assert_true(a > 0);
    assert_int_equal(a, b);
    assert_int_equal(emu_store_commit_count(s), commits);
    /* a handler's read sees the batch, and so waits for it (it may have read its rows) */
    assert_int_equal(batched_count_rows(s, 2), a);
    /* both are acknowledged after one commit */
    assert_int_equal(cmk_test_durable(s, a), 1);
    assert_int_equal(cmk_test_durable(s, b), 1);
    assert_int_equal(emu_store_commit_count(s), commits + 1);
    /* with no change in the open batch, a read has nothing to wait for */
    assert_int_equal(batched_count_rows(s, 2), 0);

    /* outside a deferred handler a batched statement commits at once (and waits for it) */
    commits = emu_store_commit_count(s);
    assert_true(emu_store_exec(emu_store_lock_batched(s), "INSERT INTO bt(i) VALUES(3)"));
    emu_store_unlock(s);
    assert_int_equal(emu_store_commit_count(s), commits + 1);

    /* another holder commits the open batch first, so it can run its own transaction */
    uint64_t c = batched_insert(s, 4);
    sqlite3 *db = emu_store_lock(s);
    assert_true(emu_store_begin(db));
    assert_true(emu_store_exec(db, "INSERT INTO bt(i) VALUES(5)"));
    assert_true(emu_store_commit(db));
    emu_store_unlock(s); /* waits until its commit, and so the batch's, is durable */
    assert_int_equal(emu_store_when_durable(s, c, on_durable_never, NULL), EMU_STORE_DURABLE);

    /* a batch whose COMMIT fails: its handler is told, nothing is stored, and a late waiter
     * for it is told at once */
    emu_store_testing_refuse_commits(s, 1);
    uint64_t f = batched_insert(s, 6);
    assert_int_equal(cmk_test_durable(s, f), 0);
    assert_false(bt_has(s, 6));
    assert_int_equal(emu_store_when_durable(s, f, on_durable_never, NULL), EMU_STORE_FAILED);
    /* the next batch gets a number of its own and commits */
    uint64_t g = batched_insert(s, 7);
    assert_true(g > f);
    assert_int_equal(cmk_test_durable(s, g), 1);
    assert_true(bt_has(s, 7));

    /* a batch rolled back under a handler (what SQLITE_FULL or an I/O error may do) fails,
     * and the next handler's write goes into a new batch, not acknowledged with the lost one */
    uint64_t h = batched_insert(s, 8);
    emu_store_defer_begin(s);
    sqlite3_exec(emu_store_lock_batched(s), "ROLLBACK", NULL, NULL, NULL);
    emu_store_unlock(s);
    (void)emu_store_defer_end();
    uint64_t h2 = batched_insert(s, 12);
    assert_true(h2 > h);
    assert_int_equal(cmk_test_durable(s, h), 0);
    assert_int_equal(cmk_test_durable(s, h2), 1);
    assert_false(bt_has(s, 8));
    assert_true(bt_has(s, 12));

    /* a handler whose batch failed when its own later statement flushed it: the later commit
     * must not hide the failure */
    emu_store_defer_begin(s);
    assert_true(emu_store_exec(emu_store_lock_batched(s), "INSERT INTO bt(i) VALUES(9)"));
    emu_store_unlock(s);
    emu_store_testing_refuse_commits(s, 1);
    assert_true(emu_store_exec(emu_store_lock(s), "INSERT INTO bt(i) VALUES(10)"));
    emu_store_unlock(s);
    uint64_t k = emu_store_defer_end();
    assert_int_equal(emu_store_when_durable(s, k, on_durable_never, NULL), EMU_STORE_FAILED);
    assert_false(bt_has(s, 9));
    assert_true(bt_has(s, 10));

    /* a batch still open at close is committed, not rolled back */
    (void)batched_insert(s, 11);
    emu_store_close(s);
    s = emu_store_open(path, err, sizeof err);
    if (!s)
        fail_msg("reopen: %s", err);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM bt"), 9); /* 1-5, 7, 10-12 */
    assert_true(bt_has(s, 11));
    emu_store_close(s);
}

/* Another holder of the store lock: it commits the open batch first. */
static void *flush_main(void *arg)
{
    emu_store *s = arg;
    (void)emu_store_lock(s);
    emu_store_unlock(s);
    return NULL;
}

static emu_store *g_insert6_store;
static uint64_t g_insert6_seq;

static void *insert6_main(void *arg)
{
    (void)arg;
    g_insert6_seq = batched_insert(g_insert6_store, 6);
    return NULL;
}

/* A handler that read from a batch that then fails is told so (its answer showed rows that
 * were never stored), and a write it makes after that in a later batch fails that batch. */
static void store_batch_read_depends(void **state)
{
    (void)state;
    char dir[PATH_MAX], path[PATH_MAX + 16];
    static const emu_migration m = {"bt", 1, "CREATE TABLE bt(i INTEGER);"};
    emu_store *s = open_tmp_store("bdep", &m, dir, path);
    uint64_t w = batched_insert(s, 1);
    /* a reader of the open batch waits for it; the batch fails: so does the reader */
    uint64_t r = batched_count_rows(s, 1);
    assert_int_equal(r, w);
    emu_store_testing_refuse_commits(s, 1);
    assert_int_equal(cmk_test_durable(s, w), 0);
    assert_int_equal(cmk_test_durable(s, r), 0);
    /* a handler reads the open batch (row 2), the batch fails under it (another holder's
     * flush), then it writes: its write goes to a new batch, which fails with it */
    (void)batched_insert(s, 2);
    emu_store_defer_begin(s);
    sqlite3_stmt *st = NULL;
    sqlite3 *db = emu_store_lock_batched(s);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM bt WHERE i=2", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    emu_store_unlock(s);
    emu_store_testing_refuse_commits(s, 1);
    pthread_t th; /* the flush comes from another thread, as it would */
    assert_int_equal(pthread_create(&th, NULL, flush_main, s), 0);
    pthread_join(th, NULL);
    assert_true(emu_store_exec(emu_store_lock_batched(s), "INSERT INTO bt(i) VALUES(3)"));
    emu_store_unlock(s);
    uint64_t k = emu_store_defer_end();
    assert_int_equal(cmk_test_durable(s, k), 0);
    assert_false(bt_has(s, 2));
    assert_false(bt_has(s, 3));
    /* a handler that read a batch that failed, and then only reads a later one (which
     * commits), still fails: its first read may have shown rows that were never stored */
    (void)batched_insert(s, 5);
    emu_store_defer_begin(s);
    (void)emu_store_lock_batched(s);
    emu_store_unlock(s);
    emu_store_testing_refuse_commits(s, 1);
    assert_int_equal(pthread_create(&th, NULL, flush_main, s), 0);
    pthread_join(th, NULL);
    g_insert6_store = s;
    assert_int_equal(pthread_create(&th, NULL, insert6_main, NULL), 0); /* another handler */
    pthread_join(th, NULL);
    (void)emu_store_lock_batched(s);
    emu_store_unlock(s);
    k = emu_store_defer_end();
    assert_int_equal(cmk_test_durable(s, k), 0);
    assert_int_equal(cmk_test_durable(s, g_insert6_seq), 1);
    assert_true(bt_has(s, 6));

    /* an unrelated write afterwards is stored */
    uint64_t ok = batched_insert(s, 4);
    assert_int_equal(cmk_test_durable(s, ok), 1);
    assert_true(bt_has(s, 4));
    emu_store_close(s);
}

/* A batch that failed long ago, beyond what the store remembers one by one, is still reported
 * failed to a late waiter (the safe side), never durable. */
static void store_batch_failures_forgotten(void **state)
{
    (void)state;
    char dir[PATH_MAX], path[PATH_MAX + 16];
    static const emu_migration m = {"bt", 1, "CREATE TABLE bt(i INTEGER);"};
    emu_store *s = open_tmp_store("bring", &m, dir, path);
    enum { FAILURES = 300 }; /* more than the store keeps one by one */
    emu_store_testing_refuse_commits(s, FAILURES);
    uint64_t first = 0, last = 0;
    for (int i = 0; i < FAILURES; i++) {
        last = batched_insert(s, i);
        if (!first)
            first = last;
        (void)flush_main(s); /* another holder's flush: the COMMIT is refused */
    }
    assert_int_equal(count_rows(s, "SELECT count(*) FROM bt"), 0);
    assert_int_equal(emu_store_failed_batches(s), FAILURES);
    assert_int_equal(emu_store_when_durable(s, first, on_durable_never, NULL), EMU_STORE_FAILED);
    assert_int_equal(emu_store_when_durable(s, last, on_durable_never, NULL), EMU_STORE_FAILED);
    uint64_t ok = batched_insert(s, 1000);
    assert_int_equal(cmk_test_durable(s, ok), 1);
    emu_store_close(s);
}

/* Over HTTPS: a handler whose batch fails to commit is answered 503 StoreUnavailable with
 * Retry-After, instead of the answer it made (its headers too); the next write succeeds. */
static void bt_put(emu_req *req, void *ud)
{
    emu_store *s = ud;
    bool ok = emu_store_exec(emu_store_lock_batched(s), "INSERT INTO bt(i) VALUES(1)");
    emu_store_unlock(s);
    emu_resp_header_add(req, "X-Written", "yes");
    emu_send_json(req, ok ? 200 : 500, json_pack("{s:b}", "stored", ok));
}

typedef struct {
    char retry_after[32];
    bool written;
} bt_headers;

static size_t bt_header(char *buf, size_t size, size_t n, void *ud)
{
    bt_headers *h = ud;
    size_t len = size * n;
    if (len > 12 && !strncasecmp(buf, "Retry-After:", 12)) { /* the value, trimmed */
        size_t b = 12, e = len;
        while (b < e && buf[b] == ' ')
            b++;
        while (e > b && (buf[e - 1] == '\r' || buf[e - 1] == '\n' || buf[e - 1] == ' '))
            e--;
        snprintf(h->retry_after, sizeof h->retry_after, "%.*s", (int)(e - b), buf + b);
    }
    if (len >= 10 && !strncasecmp(buf, "X-Written:", 10))
        h->written = true;
    return len;
}

static size_t bt_body(char *buf, size_t size, size_t n, void *ud)
{
    char *out = ud; /* 512 bytes */
    size_t have = strlen(out), len = size * n;
    snprintf(out + have, 512 - have, "%.*s", (int)len, buf);
    return len;
}

static long bt_request(int port, const char *cert_path, bt_headers *h, char body[512])
{
    char url[64];
    snprintf(url, sizeof url, "https://localhost:%d/bt", port);
    memset(h, 0, sizeof *h);
    body[0] = '\0';
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(c, CURLOPT_CAINFO, cert_path);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, bt_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, bt_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    return status;
}

static void store_batch_failure_over_http(void **state)
{
    (void)state;
    char dir[PATH_MAX], path[PATH_MAX + 16], err[256];
    static const emu_migration m = {"bt", 1, "CREATE TABLE bt(i INTEGER);"};
    emu_store *s = open_tmp_store("bthttp", &m, dir, path);
    char *cert = NULL, *key = NULL, *cert_path = NULL;
    if (!emu_tls_ensure(dir, &cert, &key, &cert_path, err, sizeof err))
        fail_msg("emu_tls_ensure: %s", err);
    emu_router *r = emu_router_new();
    emu_router_add(r, "PUT", "/bt", 0, NULL, bt_put, s);
    emu_http_config cfg = {.host = "127.0.0.1",
                           .threads = 1,
                           .cert_pem = cert,
                           .key_pem = key,
                           .max_body = 1 << 16,
                           .max_headers = 64,
                           .max_json_depth = 32,
                           .router = r,
                           .store = s};
    emu_http *h = emu_http_start(&cfg, err, sizeof err);
    if (!h)
        fail_msg("emu_http_start: %s", err);
    int port = emu_http_port(h);
    bt_headers hd;
    char body[512];

    assert_int_equal(bt_request(port, cert_path, &hd, body), 200);
    assert_true(hd.written);
    assert_non_null(strstr(body, "\"stored\":true"));
    assert_int_equal(count_rows(s, "SELECT count(*) FROM bt"), 1);

    emu_store_testing_refuse_commits(s, 1);
    assert_int_equal(bt_request(port, cert_path, &hd, body), 503);
    assert_false(hd.written); /* the handler's answer is gone, headers included */
    assert_string_equal(hd.retry_after, "1");
    assert_non_null(strstr(body, "StoreUnavailable"));
    assert_int_equal(count_rows(s, "SELECT count(*) FROM bt"), 1);

    assert_int_equal(bt_request(port, cert_path, &hd, body), 200);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM bt"), 2);

    emu_http_stop(h);
    emu_router_free(r);
    emu_store_close(s);
    OPENSSL_cleanse(key, strlen(key));
    free(key);
    free(cert);
    free(cert_path);
}

static void store_migrations_and_meta(void **state)
{
    (void)state;
    char dir[PATH_MAX], path[PATH_MAX + 16], err[256];
    make_tmpdir(dir, sizeof dir, "store");
    snprintf(path, sizeof path, "%s/s.db", dir);

    emu_store *s = emu_store_open(path, err, sizeof err);
    if (!s)
        fail_msg("emu_store_open: %s", err);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(schema_version(s, "core"), 2); /* meta, hsm_owned */

    /* The SQL of each step fails if run twice (no IF NOT EXISTS), and step 2 needs step 1. */
    static const emu_migration m12[] = {
        {"t", 1, "CREATE TABLE t1(x INTEGER);"},
        {"t", 2, "CREATE TABLE t2(y INTEGER); INSERT INTO t1(x) VALUES(1);"},
    };
    assert_true(emu_store_migrate(s, m12, 2, err, sizeof err));
    assert_int_equal(schema_version(s, "t"), 2);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM t1"), 1);
    /* running again is a no-op */
    assert_true(emu_store_migrate(s, m12, 2, err, sizeof err));
    assert_int_equal(count_rows(s, "SELECT count(*) FROM t1"), 1);

    /* a later step alone applies on top */
    static const emu_migration m3[] = {{"t", 3, "INSERT INTO t1(x) VALUES(3);"}};
    assert_true(emu_store_migrate(s, m3, 1, err, sizeof err));
    assert_int_equal(schema_version(s, "t"), 3);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM t1"), 2);

    /* a gap is refused and changes nothing */
    static const emu_migration m5[] = {{"t", 5, "CREATE TABLE t5(z);"}};
    err[0] = '\0';
    assert_false(emu_store_migrate(s, m5, 1, err, sizeof err));
    assert_non_null(strstr(err, "5"));
    assert_int_equal(schema_version(s, "t"), 3);
    assert_false(table_exists(s, "t5"));

    /* out of order in one list: the first step does not follow */
    static const emu_migration rev[] = {{"u", 2, "CREATE TABLE u2(a);"},
                                        {"u", 1, "CREATE TABLE u1(a);"}};
    assert_false(emu_store_migrate(s, rev, 2, err, sizeof err));
    assert_int_equal(schema_version(s, "u"), 0);
    assert_false(table_exists(s, "u2"));

    /* a failing step is rolled back entirely and not recorded */
    static const emu_migration bad[] = {{"v", 1, "CREATE TABLE v1(a); CREATE TABLE oops oops;"}};
    err[0] = '\0';
    assert_false(emu_store_migrate(s, bad, 1, err, sizeof err));
    assert_true(err[0] != '\0');
    assert_int_equal(schema_version(s, "v"), 0);
    assert_false(table_exists(s, "v1"));

    /* modules are independent */
    static const emu_migration w1[] = {{"w", 1, "CREATE TABLE w1(a);"}};
    assert_true(emu_store_migrate(s, w1, 1, err, sizeof err));
    assert_int_equal(schema_version(s, "w"), 1);
    assert_int_equal(schema_version(s, "t"), 3);

    /* meta */
    char out[64];
    assert_false(emu_store_meta_get(s, "k", out, sizeof out));
    assert_true(emu_store_meta_set(s, "k", "v1"));
    assert_true(emu_store_meta_get(s, "k", out, sizeof out));
    assert_string_equal(out, "v1");
    assert_true(emu_store_meta_set(s, "k", "v2"));
    assert_true(emu_store_meta_set(s, "other", "x"));
    assert_true(emu_store_meta_get(s, "k", out, sizeof out));
    assert_string_equal(out, "v2");
    /* a small buffer truncates, NUL-terminated */
    char small[3];
    assert_true(emu_store_meta_set(s, "long", "abcdef"));
    assert_true(emu_store_meta_get(s, "long", small, sizeof small));
    assert_string_equal(small, "ab");

    /* explicit transactions through the helpers */
    sqlite3 *db = emu_store_lock(s);
    assert_true(emu_store_begin(db));
    assert_true(emu_store_exec(db, "INSERT INTO t1(x) VALUES(99)"));
    emu_store_rollback(db);
    assert_false(emu_store_exec(db, "THIS IS NOT SQL"));
    emu_store_unlock(s);
    assert_int_equal(count_rows(s, "SELECT count(*) FROM t1 WHERE x=99"), 0);
    emu_store_close(s);

    /* everything survives close and reopen; the migrations stay applied */
    s = emu_store_open(path, err, sizeof err);
    if (!s)
        fail_msg("reopen: %s", err);
    assert_true(emu_store_meta_get(s, "k", out, sizeof out));
    assert_string_equal(out, "v2");
    assert_true(emu_store_meta_get(s, "other", out, sizeof out));
    assert_string_equal(out, "x");
    assert_int_equal(schema_version(s, "t"), 3);
    assert_true(emu_store_migrate(s, m12, 2, err, sizeof err));
    assert_true(emu_store_migrate(s, m3, 1, err, sizeof err));
    assert_int_equal(count_rows(s, "SELECT count(*) FROM t1"), 2);
    emu_store_close(s);
    emu_store_close(NULL);

    /* a path that cannot be opened is an error with a message */
    char badpath[PATH_MAX + 32];
    snprintf(badpath, sizeof badpath, "%s/missing-dir/x.db", dir);
    err[0] = '\0';
    assert_null(emu_store_open(badpath, err, sizeof err));
    assert_true(err[0] != '\0');

    cmk_test_rm_rf(dir);
}

/* ---------------------------------------------------------------------------------------- */
/* clock                                                                                     */

typedef struct {
    int calls;
    int64_t last_now;
} hook_rec;

static void record_hook(int64_t now, void *ud)
{
    hook_rec *r = ud;
    r->calls++;
    r->last_now = now;
}

static void clock_offset_and_hooks(void **state)
{
    (void)state;
    emu_clock_hooks_clear();
    emu_clock_set_offset(0);
    assert_int_equal(emu_clock_offset(), 0);
    int64_t w = emu_wall_now();
    int64_t n = emu_clock_now();
    assert_true(n >= w && n <= w + 1);

    emu_clock_set_offset(8 * 86400);
    assert_int_equal(emu_clock_offset(), 8 * 86400);
    w = emu_wall_now();
    n = emu_clock_now();
    assert_true(n - w >= 8 * 86400 && n - w <= 8 * 86400 + 1);

    hook_rec a = {0}, b = {0};
    emu_clock_hook_add(record_hook, &a);
    emu_clock_hook_add(record_hook, &b);
    int64_t before = emu_clock_now();
    emu_clock_apply_due();
    int64_t after = emu_clock_now();
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_true(a.last_now >= before && a.last_now <= after);
    assert_int_equal(a.last_now, b.last_now);

    emu_clock_set_offset(-3600);
    before = emu_clock_now();
    emu_clock_apply_due();
    assert_int_equal(a.calls, 2);
    assert_true(a.last_now >= before && a.last_now <= before + 1);
    assert_true(a.last_now < emu_wall_now());

    emu_clock_hooks_clear();
    emu_clock_apply_due();
    assert_int_equal(a.calls, 2);
    assert_int_equal(b.calls, 2);
    emu_clock_set_offset(0);
    assert_int_equal(emu_clock_offset(), 0);
}

/* ---------------------------------------------------------------------------------------- */
/* log                                                                                       */

static void log_escape_table(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t max, outlen;
        const char *out;
    } cases[] = {
        {"plain", 100, 64, "plain"},
        {"a\"b\\c", 100, 64, "a\\\"b\\\\c"},
        {"line\nnext\x7f", 100, 64, "line\\u000anext\\u007f"},
        {"abcdef", 3, 64, "abc..."},
        {"abcdef", 100, 4, "abc"},
        {"", 100, 64, ""},
        {NULL, 100, 64, ""},
        /* fuzzing finding (fuzz_request): stray bytes and a UTF-8 sequence cut by the
         * length limit made the escaped text invalid UTF-8, so the 404/405 bodies that quote
         * it could not be built; whole sequences are kept, anything else is \\xNN */
        {"caf\xc3\xa9", 100, 64, "caf\xc3\xa9"},
        {"a\xff"
         "b",
         100, 64,
         "a\\\\xff"
         "b"},
        {"\xc3(", 100, 64, "\\\\xc3("},
        {"ab\xe2\x82", 100, 64, "ab\\\\xe2\\\\x82"},
        {"ab\xe2\x82\xac"
         "cd",
         3, 64, "ab\xe2\x82\xac..."}, /* never cut inside */
        {"ab\xe2\x82\xac", 100, 5, "ab"},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        char out[64];
        memset(out, 'Z', sizeof out);
        emu_log_escape(cases[i].in, cases[i].max, out, cases[i].outlen);
        if (strcmp(out, cases[i].out) != 0)
            fail_msg("escape case %zu: '%s', want '%s'", i, out, cases[i].out);
    }
    emu_log_level lv;
    assert_true(emu_log_parse_level("warn", &lv));
    assert_int_equal(lv, EMU_LOG_WARN);
    assert_true(emu_log_parse_level("off", &lv));
    assert_int_equal(lv, EMU_LOG_OFF);
    assert_false(emu_log_parse_level("WARNING", &lv));
}

/* ---------------------------------------------------------------------------------------- */

int main(void)
{
    /* keep expected error logs (refused migrations, second responses) out of the output */
    emu_log_setup(EMU_LOG_OFF, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(router_dispatch_table),
        cmocka_unit_test(router_match_results),
        cmocka_unit_test(router_empty_segment_never_captured),
        cmocka_unit_test(router_precheck_answer_skips_handler),
        cmocka_unit_test(router_nomatch_body_names_method_and_path),
        cmocka_unit_test(router_host_not_utf8),
        cmocka_unit_test(error_message_not_utf8),
        cmocka_unit_test(req_path_normalised),
        cmocka_unit_test(req_query_decoding_table),
        cmocka_unit_test(req_query_overflow),
        cmocka_unit_test(req_headers_and_host),
        cmocka_unit_test(percent_decode_table),
        cmocka_unit_test(json_depth_table),
        cmocka_unit_test(req_json_table),
        cmocka_unit_test(responses_once),
        cmocka_unit_test_setup_teardown(config_defaults, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(config_flags_override_env, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(config_flag_forms, config_setup, config_teardown),
        cmocka_unit_test_setup_teardown(config_errors_and_listen_table, config_setup,
                                        config_teardown),
        cmocka_unit_test_setup_teardown(config_pin_error_does_not_echo_pin, config_setup,
                                        config_teardown),
        cmocka_unit_test(b64url_roundtrip_table),
        cmocka_unit_test(b64url_decode_table),
        cmocka_unit_test(hex_table),
        cmocka_unit_test(parse_i64_table),
        cmocka_unit_test(iso_duration_table),
        cmocka_unit_test(iso_duration_rejects_repeated_or_unordered_designators),
        cmocka_unit_test(time_rfc3339_roundtrip),
        cmocka_unit_test(time_rfc3339_rejects_malformed_fields),
        cmocka_unit_test(ct_streq_table),
        cmocka_unit_test(misc_alloc_and_guid),
        cmocka_unit_test(store_migrations_and_meta),
        cmocka_unit_test(store_group_commit),
        cmocka_unit_test(store_gathering),
        cmocka_unit_test(store_batched_writes),
        cmocka_unit_test(store_batch_read_depends),
        cmocka_unit_test(store_batch_failures_forgotten),
        cmocka_unit_test(store_batch_failure_over_http),
        cmocka_unit_test(clock_offset_and_hooks),
        cmocka_unit_test(log_escape_table),
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
