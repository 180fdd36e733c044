/* runner: case engine; see runner.h and fixtures/conformance/README.md. */
#include "runner.h"

#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <regex.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#define MSG_MAX 4096
#define SHOW_BODY 600

struct hx_ctx {
    hx_http *http;
    hx_auth_config cfg;
    json_t *vars;   /* name -> value */
    json_t *tokens; /* "clientId|audience" -> token */
};

typedef struct {
    char suite[256];
    char name[512];
    hx_result res;
} hx_entry;

struct hx_report {
    hx_entry *v;
    size_t n, cap;
};

/* ------------------------------------------------------------------ small helpers */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static void msgf(char *msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void msgf(char *msg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, MSG_MAX, fmt, ap);
    va_end(ap);
}

/* Appends "; " + text to msg (truncating). */
static void msg_add(char *msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void msg_add(char *msg, const char *fmt, ...)
{
    size_t len = strlen(msg);
    if (len + 3 >= MSG_MAX)
        return;
    if (len) {
        memcpy(msg + len, "; ", 3);
        len += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + len, MSG_MAX - len, fmt, ap);
    va_end(ap);
}

/* emu_xstrdup with NULL read as "" */
static char *xstrdup(const char *s)
{
    return emu_xstrdup(s ? s : "");
}

/* Compact text of a JSON value for messages (caller frees). */
static char *show(const json_t *v)
{
    if (!v)
        return xstrdup("(missing)");
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    return s ? s : xstrdup("?");
}

static const char *str_field(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* ------------------------------------------------------------------ base64url */

/* emu_b64url_decode over a whole string (base64 or base64url, padding optional). */
static unsigned char *b64url_decode(const char *s, size_t *outlen)
{
    size_t n = strlen(s);
    return emu_b64url_decode(s, n, n, outlen);
}

static json_t *path_get(json_t *doc, const char *path);

/* ------------------------------------------------------------------ context */

hx_ctx *hx_ctx_new(hx_http *http, const hx_auth_config *cfg)
{
    hx_ctx *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->http = http;
    c->cfg = *cfg;
    c->vars = json_object();
    c->tokens = json_object();
    return c;
}

void hx_ctx_free(hx_ctx *ctx)
{
    if (!ctx)
        return;
    json_decref(ctx->vars);
    json_decref(ctx->tokens);
    free(ctx);
}

void hx_ctx_set(hx_ctx *ctx, const char *name, json_t *value)
{
    json_object_set_new(ctx->vars, name, value ? value : json_null());
}

void hx_ctx_set_str(hx_ctx *ctx, const char *name, const char *value)
{
    hx_ctx_set(ctx, name, json_string(value ? value : ""));
}

json_t *hx_ctx_get(const hx_ctx *ctx, const char *name)
{
    return json_object_get(ctx->vars, name);
}

/* ------------------------------------------------------------------ substitution */

/* The value of ${name}: a variable, or the dynamic ${uuid}. New reference or NULL. */
static json_t *var_value(hx_ctx *ctx, const char *name)
{
    if (!strcmp(name, "uuid")) {
        char u[37];
        emu_guid(u);
        return json_string(u);
    }
    json_t *v = json_object_get(ctx->vars, name);
    if (!v && strchr(name, '.')) {
        /* ${var.path}: a member of a captured object, e.g. ${jwk.n} */
        char head[101];
        snprintf(head, sizeof head, "%.*s", (int)(strchr(name, '.') - name), name);
        json_t *root = json_object_get(ctx->vars, head);
        v = root ? path_get(root, strchr(name, '.') + 1) : NULL;
    }
    return v ? json_incref(v) : NULL;
}

/* Text of a value when embedded in a string (caller frees). */
static char *embed_text(const json_t *v)
{
    if (json_is_string(v))
        return xstrdup(json_string_value(v));
    if (json_is_null(v))
        return xstrdup("");
    return show(v);
}

/* Replaces every ${name} in in. Returns malloc'd text, or NULL with msg set. */
static char *subst_str(hx_ctx *ctx, const char *in, char *msg)
{
    size_t cap = strlen(in) + 64, len = 0;
    char *o = malloc(cap);
    if (!o)
        abort();
    for (const char *p = in; *p;) {
        const char *add = p;
        size_t addlen = 1;
        char *owned = NULL;
        if (p[0] == '$' && p[1] == '{') {
            const char *end = strchr(p + 2, '}');
            if (!end || end - p - 2 > 100) {
                msgf(msg, "unterminated ${ in \"%.200s\"", in);
                free(o);
                return NULL;
            }
            char name[101];
            snprintf(name, sizeof name, "%.*s", (int)(end - p - 2), p + 2);
            json_t *v = var_value(ctx, name);
            if (!v) {
                msgf(msg, "undefined variable ${%s} (an earlier step did not capture it)", name);
                free(o);
                return NULL;
            }
            owned = embed_text(v);
            json_decref(v);
            add = owned;
            addlen = strlen(owned);
            p = end + 1;
        } else {
            p++;
        }
        if (len + addlen + 1 > cap) {
            while (len + addlen + 1 > cap)
                cap *= 2;
            o = realloc(o, cap);
            if (!o)
                abort();
        }
        memcpy(o + len, add, addlen);
        len += addlen;
        free(owned);
    }
    o[len] = 0;
    return o;
}

/* Deep copy of in with substitutions; a string that is exactly "${name}" becomes the
 * variable's JSON value (so objects, numbers and booleans keep their type). NULL + msg. */
static json_t *subst_json(hx_ctx *ctx, const json_t *in, char *msg)
{
    if (json_is_string(in)) {
        const char *s = json_string_value(in);
        size_t n = strlen(s);
        if (n > 3 && s[0] == '$' && s[1] == '{' && s[n - 1] == '}' && !memchr(s + 2, '}', n - 3) &&
            n - 3 <= 100) {
            char name[101];
            snprintf(name, sizeof name, "%.*s", (int)(n - 3), s + 2);
            json_t *v = var_value(ctx, name);
            if (!v) {
                msgf(msg, "undefined variable ${%s} (an earlier step did not capture it)", name);
                return NULL;
            }
            json_t *c = json_deep_copy(v);
            json_decref(v);
            return c;
        }
        char *t = subst_str(ctx, s, msg);
        if (!t)
            return NULL;
        json_t *r = json_string(t);
        free(t);
        return r;
    }
    if (json_is_object(in)) {
        json_t *o = json_object();
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)in, k, v)
        {
            json_t *c = subst_json(ctx, v, msg);
            if (!c) {
                json_decref(o);
                return NULL;
            }
            json_object_set_new(o, k, c);
        }
        return o;
    }
    if (json_is_array(in)) {
        json_t *a = json_array();
        size_t i;
        json_t *v;
        json_array_foreach(in, i, v)
        {
            json_t *c = subst_json(ctx, v, msg);
            if (!c) {
                json_decref(a);
                return NULL;
            }
            json_array_append_new(a, c);
        }
        return a;
    }
    return json_deep_copy(in);
}

/* ------------------------------------------------------------------ JSON paths */

/*
 * "a.b[2].c" (dots and [index]) or a JSON pointer "/a/b/2/c" (for names with dots such as
 * "/@odata.nextLink"). "" or "." is the whole document. Borrowed result or NULL.
 */
static json_t *path_get(json_t *doc, const char *path)
{
    if (!path[0] || !strcmp(path, "."))
        return doc;
    json_t *cur = doc;
    char seg[256];
    if (path[0] == '/') {
        const char *p = path + 1;
        while (cur) {
            const char *e = strchr(p, '/');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            if (n >= sizeof seg)
                return NULL;
            size_t k = 0;
            for (size_t i = 0; i < n; i++) {
                if (p[i] == '~' && i + 1 < n && (p[i + 1] == '0' || p[i + 1] == '1')) {
                    seg[k++] = p[i + 1] == '0' ? '~' : '/';
                    i++;
                } else {
                    seg[k++] = p[i];
                }
            }
            seg[k] = 0;
            if (json_is_array(cur)) {
                char *end;
                unsigned long idx = strtoul(seg, &end, 10);
                cur = (*end || !k) ? NULL : json_array_get(cur, idx);
            } else {
                cur = json_object_get(cur, seg);
            }
            if (!e)
                break;
            p = e + 1;
        }
        return cur;
    }
    const char *p = path;
    while (cur && *p) {
        if (*p == '[') {
            char *end;
            unsigned long idx = strtoul(p + 1, &end, 10);
            if (*end != ']')
                return NULL;
            cur = json_array_get(cur, idx);
            p = end + 1;
            if (*p == '.')
                p++;
            continue;
        }
        size_t n = strcspn(p, ".[");
        if (n >= sizeof seg)
            return NULL;
        memcpy(seg, p, n);
        seg[n] = 0;
        cur = json_object_get(cur, seg);
        p += n;
        if (*p == '.')
            p++;
    }
    return cur;
}

/* ------------------------------------------------------------------ matchers */

/* Matcher operators start with '$' so they never collide with member names of a body. */
static const char *const OPS[] = {"$type",     "$exists", "$regex",     "$contains",    "$minItems",
                                  "$maxItems", "$len",    "$oneOf",     "$ne",          "$gte",
                                  "$lte",      "$equals", "$minLength", "$notContains", NULL};

static int is_op(const char *k)
{
    for (size_t i = 0; OPS[i]; i++)
        if (!strcmp(OPS[i], k))
            return 1;
    return 0;
}

static int is_operator_object(const json_t *e)
{
    if (!json_is_object(e) || !json_object_size(e))
        return 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)e, k, v)
    {
        if (!is_op(k))
            return 0;
    }
    return 1;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    default:
        return "null";
    }
}

static int regex_match(const char *re, const char *s, char *why)
{
    regex_t rx;
    if (regcomp(&rx, re, REG_EXTENDED | REG_NOSUB)) {
        msgf(why, "bad regex %s", re);
        return 0;
    }
    int ok = regexec(&rx, s, 0, NULL, 0) == 0;
    regfree(&rx);
    return ok;
}

static int match(hx_ctx *ctx, const json_t *actual, const json_t *expected, char *why);

static int literal_equal(const json_t *a, const json_t *e)
{
    if (json_is_number(a) && json_is_number(e))
        return json_number_value(a) == json_number_value(e);
    return json_equal(a, e);
}

/* expected is already substituted. why gets the reason on mismatch. */
static int match_sub(hx_ctx *ctx, const json_t *actual, const json_t *e, char *why)
{
    if (is_operator_object(e)) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)e, k, v)
        {
            char *as = show(actual);
            int ok = 1;
            const char *op = k, *on = k + 1; /* skip '$' */
            if (!strcmp(on, "exists")) {
                ok = json_is_true(v) ? actual != NULL : actual == NULL;
            } else if (!actual) {
                ok = 0;
            } else if (!strcmp(on, "type")) {
                ok = json_is_string(v) && !strcmp(type_name(actual), json_string_value(v));
            } else if (!strcmp(on, "regex")) {
                ok = json_is_string(actual) && json_is_string(v) &&
                     regex_match(json_string_value(v), json_string_value(actual), why);
            } else if (!strcmp(on, "contains") || !strcmp(on, "notContains")) {
                int found = 0;
                if (json_is_string(actual) && json_is_string(v)) {
                    found = strcasestr(json_string_value(actual), json_string_value(v)) != NULL;
                } else if (json_is_array(actual)) {
                    size_t i;
                    json_t *x;
                    char tmp[MSG_MAX];
                    json_array_foreach(actual, i, x)
                    {
                        if (match_sub(ctx, x, v, tmp)) {
                            found = 1;
                            break;
                        }
                    }
                }
                ok = !strcmp(on, "contains") ? found : !found;
            } else if (!strcmp(on, "minItems") || !strcmp(on, "maxItems") || !strcmp(on, "len") ||
                       !strcmp(on, "minLength")) {
                long long n = json_is_array(actual)    ? (long long)json_array_size(actual)
                              : json_is_string(actual) ? (long long)json_string_length(actual)
                              : json_is_object(actual) ? (long long)json_object_size(actual)
                                                       : -1;
                long long want = json_integer_value(v);
                ok = n >= 0 && (!strcmp(on, "len")        ? n == want
                                : !strcmp(on, "maxItems") ? n <= want
                                                          : n >= want);
            } else if (!strcmp(on, "oneOf")) {
                ok = 0;
                size_t i;
                json_t *x;
                char tmp[MSG_MAX];
                json_array_foreach(v, i, x)
                {
                    if (match_sub(ctx, actual, x, tmp)) {
                        ok = 1;
                        break;
                    }
                }
            } else if (!strcmp(on, "ne")) {
                ok = !literal_equal(actual, v);
            } else if (!strcmp(on, "equals")) {
                ok = literal_equal(actual, v);
            } else if (!strcmp(on, "gte") || !strcmp(on, "lte")) {
                ok = json_is_number(actual) &&
                     (!strcmp(on, "gte") ? json_number_value(actual) >= json_number_value(v)
                                         : json_number_value(actual) <= json_number_value(v));
            }
            if (!ok) {
                char *es = show(v);
                if (!why[0])
                    msgf(why, "expected %s %s, got %.300s", op, es, as);
                free(es);
            }
            free(as);
            if (!ok)
                return 0;
        }
        return 1;
    }
    if (json_is_array(e)) {
        /* an array of literals means "one of these" */
        size_t i;
        json_t *x;
        char tmp[MSG_MAX];
        json_array_foreach(e, i, x)
        {
            tmp[0] = 0;
            if (match_sub(ctx, actual, x, tmp))
                return 1;
        }
        char *as = show(actual), *es = show(e);
        msgf(why, "expected one of %.300s, got %.300s", es, as);
        free(as);
        free(es);
        return 0;
    }
    if (json_is_object(e)) {
        /* a plain object: every member must match (a subset check) */
        if (!json_is_object(actual)) {
            char *as = show(actual);
            msgf(why, "expected an object, got %.300s", as);
            free(as);
            return 0;
        }
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)e, k, v)
        {
            char sub[MSG_MAX] = "";
            if (!match_sub(ctx, json_object_get(actual, k), v, sub)) {
                msgf(why, "%s: %s", k, sub);
                return 0;
            }
        }
        return 1;
    }
    if (!actual || !literal_equal(actual, e)) {
        char *as = show(actual), *es = show(e);
        msgf(why, "expected %.300s, got %.300s", es, as);
        free(as);
        free(es);
        return 0;
    }
    return 1;
}

static int match(hx_ctx *ctx, const json_t *actual, const json_t *expected, char *why)
{
    char m[MSG_MAX] = "";
    json_t *e = subst_json(ctx, expected, m);
    if (!e) {
        msgf(why, "%s", m);
        return 0;
    }
    why[0] = 0;
    int ok = match_sub(ctx, actual, e, why);
    json_decref(e);
    return ok;
}

/* ------------------------------------------------------------------ tokens */

static const char *audience_scope(const char *aud)
{
    if (!strcmp(aud, "keyvault"))
        return "https://vault.azure.net/.default";
    if (!strcmp(aud, "arm"))
        return "https://management.azure.com/.default";
    if (!strcmp(aud, "bap"))
        return "https://service.powerapps.com/.default";
    return NULL;
}

/* Token for the step: NULL token with rc 0 = send none. rc 1 = skip (msg), -1 = fail (msg). */
static int step_token(hx_ctx *ctx, const char *aud, const json_t *step, const char **tok, char *msg)
{
    *tok = NULL;
    const char *auth = str_field(step, "auth");
    if (!strcmp(aud, "none") || (auth && !strcmp(auth, "none")))
        return 0;
    if (str_field(step, "token")) {
        *tok = str_field(step, "token");
        return 0;
    }
    const char *scope = audience_scope(aud);
    if (!scope) {
        msgf(msg, "unknown audience \"%s\" (keyvault, arm, bap or none)", aud);
        return -1;
    }
    const json_t *pr = json_object_get(step, "principal");
    const char *cid = ctx->cfg.client_id, *sec = ctx->cfg.client_secret;
    if (pr) {
        cid = str_field(pr, "clientId");
        sec = str_field(pr, "clientSecret");
        if (!cid || !sec) {
            msgf(msg, "principal needs clientId and clientSecret");
            return -1;
        }
        if (!ctx->cfg.authority) {
            msgf(msg, "needs client credentials of another principal (no --authority given)");
            return 1;
        }
    } else if (ctx->cfg.token) {
        *tok = ctx->cfg.token;
        return 0;
    }
    if (!ctx->cfg.authority || !cid || !sec || !ctx->cfg.tenant) {
        msgf(msg, "no credentials: give --token, or --client-id/--client-secret/--tenant/"
                  "--authority");
        return -1;
    }
    char key[512];
    snprintf(key, sizeof key, "%s|%s", cid, scope);
    const char *cached = str_field(ctx->tokens, key);
    if (cached) {
        *tok = cached;
        return 0;
    }
    char *t = NULL, err[1024];
    if (hx_http_client_credentials(ctx->http, ctx->cfg.authority, ctx->cfg.tenant, cid, sec, scope,
                                   &t, err, sizeof err)) {
        msgf(msg, "%s", err);
        return -1;
    }
    json_object_set_new(ctx->tokens, key, json_string(t));
    free(t);
    *tok = str_field(ctx->tokens, key);
    return 0;
}

/* ------------------------------------------------------------------ built-in steps */

static EVP_PKEY *jwk_public(const json_t *jwk, char *msg)
{
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *pc = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    BIGNUM *n = NULL, *e = NULL;
    unsigned char *nb = NULL, *eb = NULL;
    size_t nl = 0, el = 0;
    const char *ns = str_field(jwk, "n"), *es = str_field(jwk, "e");
    if (!ns || !es || !(nb = b64url_decode(ns, &nl)) || !(eb = b64url_decode(es, &el))) {
        msgf(msg, "jwk has no valid n/e");
        goto out;
    }
    n = BN_bin2bn(nb, (int)nl, NULL);
    e = BN_bin2bn(eb, (int)el, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (!n || !e || !bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) ||
        !(params = OSSL_PARAM_BLD_to_param(bld))) {
        msgf(msg, "cannot build RSA parameters");
        goto out;
    }
    pc = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (!pc || EVP_PKEY_fromdata_init(pc) <= 0 ||
        EVP_PKEY_fromdata(pc, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
        msgf(msg, "OpenSSL refused the JWK public key");
        pk = NULL;
    }
out:
    EVP_PKEY_CTX_free(pc);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    free(nb);
    free(eb);
    return pk;
}

static int builtin_local_wrap(hx_ctx *ctx, const json_t *p, char *msg)
{
    int ok = 0;
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *pc = NULL;
    unsigned char plain[32], *ct = NULL;
    size_t ctlen = 0;
    const char *alg = str_field(p, "alg");
    json_t *jwk = subst_json(ctx, json_object_get(p, "jwk"), msg);
    if (!jwk)
        goto out;
    if (!alg) {
        msgf(msg, "local_wrap needs alg");
        goto out;
    }
    if (!(pk = jwk_public(jwk, msg)))
        goto out;
    RAND_bytes(plain, sizeof plain);
    pc = EVP_PKEY_CTX_new(pk, NULL);
    if (!pc || EVP_PKEY_encrypt_init(pc) <= 0)
        goto ossl;
    if (!strcmp(alg, "RSA1_5")) {
        if (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) <= 0)
            goto ossl;
    } else if (!strcmp(alg, "RSA-OAEP") || !strcmp(alg, "RSA-OAEP-256")) {
        const EVP_MD *md = !strcmp(alg, "RSA-OAEP") ? EVP_sha1() : EVP_sha256();
        if (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_OAEP_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_rsa_oaep_md(pc, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(pc, md) <= 0)
            goto ossl;
    } else {
        msgf(msg, "local_wrap: unknown alg %s", alg);
        goto out;
    }
    if (EVP_PKEY_encrypt(pc, NULL, &ctlen, plain, sizeof plain) <= 0)
        goto ossl;
    ct = malloc(ctlen);
    if (!ct)
        abort();
    if (EVP_PKEY_encrypt(pc, ct, &ctlen, plain, sizeof plain) <= 0)
        goto ossl;
    {
        const json_t *cap = json_object_get(p, "capture");
        const char *pv = cap ? str_field(cap, "plain") : NULL;
        const char *wv = cap ? str_field(cap, "wrapped") : NULL;
        char *ps = emu_b64url_encode(plain, sizeof plain), *ws = emu_b64url_encode(ct, ctlen);
        hx_ctx_set_str(ctx, pv ? pv : "plain", ps);
        hx_ctx_set_str(ctx, wv ? wv : "wrapped", ws);
        free(ps);
        free(ws);
    }
    ok = 1;
    goto out;
ossl:
    msgf(msg, "OpenSSL encryption with the JWK failed (%s)", alg);
out:
    free(ct);
    EVP_PKEY_CTX_free(pc);
    EVP_PKEY_free(pk);
    json_decref(jwk);
    return ok;
}

static int builtin_local_verify(hx_ctx *ctx, const json_t *p, char *msg)
{
    int ok = 0;
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *pc = NULL;
    unsigned char *dg = NULL, *sig = NULL;
    size_t dl = 0, sl = 0;
    char *ds = NULL, *ss = NULL;
    const char *alg = str_field(p, "alg");
    json_t *jwk = subst_json(ctx, json_object_get(p, "jwk"), msg);
    if (!jwk || !alg || !str_field(p, "digest") || !str_field(p, "signature")) {
        if (!msg[0])
            msgf(msg, "local_verify needs jwk, alg, digest, signature");
        goto out;
    }
    if (!(ds = subst_str(ctx, str_field(p, "digest"), msg)) ||
        !(ss = subst_str(ctx, str_field(p, "signature"), msg)))
        goto out;
    if (!(dg = b64url_decode(ds, &dl)) || !(sig = b64url_decode(ss, &sl))) {
        msgf(msg, "digest or signature is not base64url");
        goto out;
    }
    if (!(pk = jwk_public(jwk, msg)))
        goto out;
    const EVP_MD *md = strstr(alg, "256")   ? EVP_sha256()
                       : strstr(alg, "384") ? EVP_sha384()
                                            : EVP_sha512();
    pc = EVP_PKEY_CTX_new(pk, NULL);
    if (!pc || EVP_PKEY_verify_init(pc) <= 0 || EVP_PKEY_CTX_set_signature_md(pc, md) <= 0) {
        msgf(msg, "OpenSSL verify setup failed");
        goto out;
    }
    if (alg[0] == 'P') {
        if (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_AUTO) <= 0) {
            msgf(msg, "OpenSSL PSS setup failed");
            goto out;
        }
    } else if (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) <= 0) {
        msgf(msg, "OpenSSL PKCS#1 setup failed");
        goto out;
    }
    int v = EVP_PKEY_verify(pc, sig, sl, dg, dl);
    const json_t *want = json_object_get(p, "valid");
    int want_valid = want ? json_is_true(want) : 1;
    if ((v == 1) != want_valid) {
        msgf(msg, "local %s verification of the remote signature: %s", alg,
             v == 1 ? "valid (expected invalid)" : "INVALID");
        goto out;
    }
    ok = 1;
out:
    free(dg);
    free(sig);
    free(ds);
    free(ss);
    EVP_PKEY_CTX_free(pc);
    EVP_PKEY_free(pk);
    json_decref(jwk);
    return ok;
}

static int builtin_sha256(hx_ctx *ctx, const json_t *p, char *msg)
{
    const char *d = str_field(p, "data"), *cap = str_field(p, "capture");
    if (!d || !cap) {
        msgf(msg, "sha256 needs data and capture");
        return 0;
    }
    char *s = subst_str(ctx, d, msg);
    if (!s)
        return 0;
    unsigned char md[32];
    unsigned int ml = 0;
    EVP_Digest(s, strlen(s), md, &ml, EVP_sha256(), NULL);
    char *b = emu_b64url_encode(md, ml);
    hx_ctx_set_str(ctx, cap, b);
    free(b);
    free(s);
    return 1;
}

/* Fills {Placeholder} of a template file with the JSON text of values[Placeholder]. */
static int builtin_fill_template(hx_ctx *ctx, const json_t *p, char *msg)
{
    int ok = 0;
    char path[2048];
    char *text = NULL, *out = NULL;
    json_t *values = NULL;
    const char *file = str_field(p, "file"), *cap = str_field(p, "capture");
    if (!file || !cap) {
        msgf(msg, "fill_template needs file and capture");
        return 0;
    }
    snprintf(path, sizeof path, "%s/%s", ctx->cfg.fixtures_root ? ctx->cfg.fixtures_root : ".",
             file);
    FILE *f = fopen(path, "rb");
    if (!f) {
        msgf(msg, "cannot read %s", path);
        return 0;
    }
    size_t cap_t = 1 << 16, len = 0;
    text = malloc(cap_t);
    if (!text)
        abort();
    size_t r;
    while ((r = fread(text + len, 1, cap_t - len - 1, f)) > 0) {
        len += r;
        if (len + 1 >= cap_t) {
            msgf(msg, "%s is larger than 64 KiB", path);
            fclose(f);
            goto out;
        }
    }
    fclose(f);
    text[len] = 0;
    values = subst_json(ctx, json_object_get(p, "values"), msg);
    if (!values)
        goto out;
    size_t ocap = len * 2 + 1024, ol = 0;
    out = malloc(ocap);
    if (!out)
        abort();
    for (const char *q = text; *q;) {
        const char *add = q;
        size_t addlen = 1;
        char *owned = NULL;
        if (*q == '{') {
            const char *e = strchr(q + 1, '}');
            const char *nl = strchr(q + 1, '\n');
            if (e && (!nl || e < nl) && e - q - 1 < 200 && e > q + 1 && q[1] != '"' &&
                q[1] != ' ') {
                char name[200];
                snprintf(name, sizeof name, "%.*s", (int)(e - q - 1), q + 1);
                json_t *v = json_object_get(values, name);
                if (!v) {
                    msgf(msg, "fill_template: no value for {%s}", name);
                    goto out;
                }
                owned = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
                add = owned;
                addlen = strlen(owned);
                q = e + 1;
            } else {
                q++;
            }
        } else {
            q++;
        }
        while (ol + addlen + 1 > ocap) {
            ocap *= 2;
            out = realloc(out, ocap);
            if (!out)
                abort();
        }
        memcpy(out + ol, add, addlen);
        ol += addlen;
        free(owned);
    }
    out[ol] = 0;
    json_error_t je;
    json_t *doc = json_loads(out, 0, &je);
    if (!doc) {
        msgf(msg, "filled template is not JSON: %s (line %d)", je.text, je.line);
        goto out;
    }
    hx_ctx_set(ctx, cap, doc);
    ok = 1;
out:
    free(text);
    free(out);
    json_decref(values);
    return ok;
}

static int run_builtin(hx_ctx *ctx, const json_t *step, char *msg)
{
    const char *b = str_field(step, "builtin");
    if (!strcmp(b, "local_wrap"))
        return builtin_local_wrap(ctx, step, msg);
    if (!strcmp(b, "local_verify"))
        return builtin_local_verify(ctx, step, msg);
    if (!strcmp(b, "sha256"))
        return builtin_sha256(ctx, step, msg);
    if (!strcmp(b, "fill_template"))
        return builtin_fill_template(ctx, step, msg);
    if (!strcmp(b, "sleep")) {
        sleep_s(json_number_value(json_object_get(step, "seconds")));
        return 1;
    }
    if (!strcmp(b, "set")) {
        json_t *vars = subst_json(ctx, json_object_get(step, "vars"), msg);
        if (!json_is_object(vars)) {
            if (!msg[0])
                msgf(msg, "set needs vars {}");
            json_decref(vars);
            return 0;
        }
        const char *k;
        json_t *v;
        json_object_foreach(vars, k, v) hx_ctx_set(ctx, k, json_incref(v));
        json_decref(vars);
        return 1;
    }
    msgf(msg, "unknown builtin \"%s\"", b);
    return 0;
}

/* ------------------------------------------------------------------ HTTP steps */

typedef struct {
    char *method;
    char *url;
    char **headers; /* NULL-terminated */
    char *body;
} hx_req;

static void req_cleanup(hx_req *r)
{
    free(r->method);
    free(r->url);
    for (size_t i = 0; r->headers && r->headers[i]; i++)
        free(r->headers[i]);
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static const char *default_base(const char *aud)
{
    if (!strcmp(aud, "keyvault"))
        return "${vault_url}";
    if (!strcmp(aud, "arm"))
        return "${arm_url}";
    if (!strcmp(aud, "bap"))
        return "${bap_url}";
    return "${url}";
}

/* Builds the request of step. 0 ok, 1 skip, -1 fail (msg set). */
static int build_request(hx_ctx *ctx, const json_t *file, const json_t *step, hx_req *r, char *msg)
{
    const json_t *rq = json_object_get(step, "request");
    const char *aud = str_field(step, "audience");
    if (!aud)
        aud = str_field(file, "audience");
    if (!aud)
        aud = "none";
    if (!json_is_object(rq)) {
        msgf(msg, "step has neither request nor builtin");
        return -1;
    }
    r->method = xstrdup(str_field(rq, "method") ? str_field(rq, "method") : "GET");
    if (str_field(rq, "url")) {
        if (!(r->url = subst_str(ctx, str_field(rq, "url"), msg)))
            return -1;
    } else {
        const char *base = str_field(step, "base");
        if (!base)
            base = str_field(file, "base");
        if (!base)
            base = default_base(aud);
        char *b = subst_str(ctx, base, msg);
        if (!b)
            return -1;
        char *p = subst_str(ctx, str_field(rq, "path") ? str_field(rq, "path") : "/", msg);
        if (!p) {
            free(b);
            return -1;
        }
        size_t bl = strlen(b);
        while (bl && b[bl - 1] == '/')
            b[--bl] = 0;
        r->url = malloc(bl + strlen(p) + 2);
        if (!r->url)
            abort();
        snprintf(r->url, bl + strlen(p) + 2, "%s%s%s", b, p[0] == '/' ? "" : "/", p);
        free(b);
        free(p);
    }
    const char *tok = NULL;
    int trc = step_token(ctx, aud, step, &tok, msg);
    if (trc)
        return trc;
    const json_t *hs = json_object_get(rq, "headers");
    size_t nh = 0;
    r->headers = calloc(json_object_size(hs) + 3, sizeof *r->headers);
    if (!r->headers)
        abort();
    int has_ct = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)hs, k, v)
    {
        char *val = subst_str(ctx, json_is_string(v) ? json_string_value(v) : "", msg);
        if (!val)
            return -1;
        size_t l = strlen(k) + strlen(val) + 3;
        r->headers[nh] = malloc(l);
        if (!r->headers[nh])
            abort();
        snprintf(r->headers[nh++], l, "%s: %s", k, val);
        free(val);
        if (!strcasecmp(k, "content-type"))
            has_ct = 1;
    }
    if (tok) {
        size_t l = strlen(tok) + 32;
        r->headers[nh] = malloc(l);
        if (!r->headers[nh])
            abort();
        snprintf(r->headers[nh++], l, "Authorization: Bearer %s", tok);
    }
    const json_t *body = json_object_get(rq, "body");
    const char *text = str_field(rq, "bodyText");
    const json_t *form = json_object_get(rq, "form");
    if (body) {
        json_t *b = subst_json(ctx, body, msg);
        if (!b)
            return -1;
        r->body = json_dumps(b, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(b);
        if (!has_ct)
            r->headers[nh++] = xstrdup("Content-Type: application/json");
    } else if (text) {
        if (!(r->body = subst_str(ctx, text, msg)))
            return -1;
    } else if (form) {
        size_t cap = 4096, len = 0;
        r->body = calloc(1, cap);
        if (!r->body)
            abort();
        json_object_foreach((json_t *)form, k, v)
        {
            char *val = subst_str(ctx, json_string_value(v) ? json_string_value(v) : "", msg);
            if (!val)
                return -1;
            char enc[2048];
            size_t el = 0;
            for (const char *c = val; *c && el + 4 < sizeof enc; c++) {
                if (isalnum((unsigned char)*c) || strchr("-._~", *c))
                    enc[el++] = *c;
                else
                    el += (size_t)snprintf(enc + el, sizeof enc - el, "%%%02X", (unsigned char)*c);
            }
            enc[el] = 0;
            len += (size_t)snprintf(r->body + len, cap - len, "%s%s=%s", len ? "&" : "", k, enc);
            free(val);
            if (len >= cap) {
                msgf(msg, "form too large");
                return -1;
            }
        }
        if (!has_ct)
            r->headers[nh++] = xstrdup("Content-Type: application/x-www-form-urlencoded");
    }
    return 0;
}

/* "METHOD URL -> STATUS body..." for messages. */
static void describe(char *buf, size_t cap, const hx_req *r, const hx_resp *resp)
{
    const char *body = resp->body ? resp->body : "";
    size_t bl = strlen(body);
    snprintf(buf, cap, "%s %s -> %ld %.*s%s", r->method, r->url, resp->status,
             (int)(bl > SHOW_BODY ? SHOW_BODY : bl), body, bl > SHOW_BODY ? "..." : "");
}

static int check_status(hx_ctx *ctx, const json_t *want, long got, char *why)
{
    if (!want)
        return 1;
    json_t *g = json_integer(got);
    int ok = match(ctx, g, want, why);
    json_decref(g);
    return ok;
}

/* Every check of expect against resp; failures appended to msg. 1 = all passed. */
static int check_expect(hx_ctx *ctx, const json_t *expect, const hx_resp *resp, char *msg)
{
    int ok = 1;
    char why[MSG_MAX];
    if (!check_status(ctx, json_object_get(expect, "status"), resp->status, why)) {
        msg_add(msg, "status: %s", why);
        return 0; /* the rest would only add noise */
    }
    const json_t *js = json_object_get(expect, "json");
    const char *k;
    json_t *v;
    if (js && !resp->json && json_object_size(js)) {
        msg_add(msg, "body is not JSON");
        return 0;
    }
    json_object_foreach((json_t *)js, k, v)
    {
        if (!match(ctx, path_get(resp->json, k), v, why)) {
            msg_add(msg, "json %s: %s", k, why);
            ok = 0;
        }
    }
    json_object_foreach(json_object_get(expect, "headers"), k, v)
    {
        const char *h = hx_resp_header(resp, k);
        json_t *hv = h ? json_string(h) : NULL;
        if (!match(ctx, hv, v, why)) {
            msg_add(msg, "header %s: %s", k, why);
            ok = 0;
        }
        json_decref(hv);
    }
    const json_t *bt = json_object_get(expect, "bodyText");
    if (bt) {
        json_t *b = json_string(resp->body ? resp->body : "");
        if (!match(ctx, b, bt, why)) {
            msg_add(msg, "body: %s", why);
            ok = 0;
        }
        json_decref(b);
    }
    return ok;
}

static int do_captures(hx_ctx *ctx, const json_t *cap, const hx_resp *resp, char *msg)
{
    const char *name;
    json_t *spec;
    json_object_foreach((json_t *)cap, name, spec)
    {
        json_t *val = NULL;
        const char *re = NULL;
        if (json_is_string(spec)) {
            val = path_get(resp->json, json_string_value(spec));
            val = val ? json_deep_copy(val) : NULL;
        } else if (str_field(spec, "header")) {
            const char *h = hx_resp_header(resp, str_field(spec, "header"));
            val = h ? json_string(h) : NULL;
            re = str_field(spec, "regex");
        } else if (str_field(spec, "json")) {
            val = path_get(resp->json, str_field(spec, "json"));
            val = val ? json_deep_copy(val) : NULL;
            re = str_field(spec, "regex");
        } else if (json_is_true(json_object_get(spec, "status"))) {
            val = json_integer(resp->status);
        }
        if (!val) {
            char *s = show(spec);
            msg_add(msg, "capture %s: %s not in the response", name, s);
            free(s);
            return 0;
        }
        if (re) {
            regex_t rx;
            regmatch_t m[2];
            const char *s = json_string_value(val);
            if (!s || regcomp(&rx, re, REG_EXTENDED)) {
                msg_add(msg, "capture %s: bad regex or not a string", name);
                json_decref(val);
                return 0;
            }
            int hit = regexec(&rx, s, 2, m, 0) == 0 && m[1].rm_so >= 0;
            regfree(&rx);
            if (!hit) {
                msg_add(msg, "capture %s: /%s/ does not match %.200s", name, re, s);
                json_decref(val);
                return 0;
            }
            json_t *g = json_stringn(s + m[1].rm_so, (size_t)(m[1].rm_eo - m[1].rm_so));
            json_decref(val);
            val = g;
        }
        hx_ctx_set(ctx, name, val);
    }
    return 1;
}

/* 1 when the poll's stop condition holds for resp. */
static int poll_done(hx_ctx *ctx, const json_t *poll, const hx_resp *resp)
{
    char why[MSG_MAX];
    const json_t *st = json_object_get(poll, "status");
    if (st && !check_status(ctx, st, resp->status, why))
        return 0;
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(poll, "until"), k, v)
    {
        if (!match(ctx, path_get(resp->json, k), v, why))
            return 0;
    }
    return 1;
}

static void run_http_step(hx_ctx *ctx, const json_t *file, const json_t *step, hx_result *res)
{
    hx_req r = {0};
    hx_resp resp = {0};
    char *msg = res->msg;
    int brc = build_request(ctx, file, step, &r, msg);
    if (brc) {
        res->outcome = brc > 0 ? HX_SKIP : HX_FAIL;
        goto out;
    }
    const json_t *poll = json_object_get(step, "poll");
    double timeout = poll && json_is_number(json_object_get(poll, "timeout"))
                         ? json_number_value(json_object_get(poll, "timeout"))
                         : 60;
    double interval = poll && json_is_number(json_object_get(poll, "interval"))
                          ? json_number_value(json_object_get(poll, "interval"))
                          : 0.25;
    double deadline = now_s() + timeout;
    int polls = 0;
    for (;;) {
        char err[1024];
        hx_resp_cleanup(&resp);
        if (hx_http_do(ctx->http, r.method, r.url, (const char *const *)r.headers, r.body,
                       r.body ? strlen(r.body) : 0, &resp, err, sizeof err)) {
            msgf(msg, "%s", err);
            res->outcome = HX_FAIL;
            goto out;
        }
        polls++;
        if (ctx->cfg.verbose) {
            char d[MSG_MAX];
            describe(d, sizeof d, &r, &resp);
            fprintf(stderr, "  %s\n", d);
        }
        if (!poll || poll_done(ctx, poll, &resp))
            break;
        if (now_s() > deadline) {
            char d[MSG_MAX];
            describe(d, sizeof d, &r, &resp);
            msgf(msg, "poll timed out after %.0fs and %d requests; last: %s", timeout, polls, d);
            res->outcome = HX_FAIL;
            goto out;
        }
        double wait = interval;
        const char *ra = hx_resp_header(&resp, "retry-after");
        if (ra) {
            char *end;
            double s = strtod(ra, &end);
            if (end != ra && s > 0 && s <= 60)
                wait = s;
        }
        if (now_s() + wait > deadline)
            wait = deadline - now_s() + 0.05;
        sleep_s(wait);
    }
    const json_t *expect = json_object_get(step, "expect");
    if (!expect || !json_object_get(expect, "status")) {
        /* without an expected status, any 2xx */
        if (resp.status < 200 || resp.status > 299)
            msg_add(msg, "status: expected 2xx, got %ld", resp.status);
    }
    if (expect)
        check_expect(ctx, expect, &resp, msg);
    if (!msg[0])
        do_captures(ctx, json_object_get(step, "capture"), &resp, msg);
    if (msg[0]) {
        char d[MSG_MAX];
        describe(d, sizeof d, &r, &resp);
        msg_add(msg, "exchange: %s", d);
        res->outcome = HX_FAIL;
    }
out:
    hx_resp_cleanup(&resp);
    req_cleanup(&r);
}

void hx_step_run(hx_ctx *ctx, const json_t *file, const json_t *step, hx_result *res)
{
    memset(res, 0, sizeof *res);
    double t0 = now_s();
    if (!json_is_object(step)) {
        res->outcome = HX_FAIL;
        msgf(res->msg, "a step must be a JSON object");
    } else if (str_field(step, "builtin")) {
        if (!run_builtin(ctx, step, res->msg))
            res->outcome = HX_FAIL;
    } else {
        run_http_step(ctx, file, step, res);
    }
    res->seconds = now_s() - t0;
}

/* ------------------------------------------------------------------ reports */

hx_report *hx_report_new(void)
{
    hx_report *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    return r;
}

void hx_report_free(hx_report *r)
{
    if (!r)
        return;
    free(r->v);
    free(r);
}

void hx_report_add(hx_report *r, const char *suite, const char *name, const hx_result *res)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->v = realloc(r->v, r->cap * sizeof *r->v);
        if (!r->v)
            abort();
    }
    hx_entry *e = &r->v[r->n++];
    snprintf(e->suite, sizeof e->suite, "%s", suite);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->res = *res;
}

void hx_report_counts(const hx_report *r, int *passed, int *failed, int *skipped)
{
    *passed = *failed = *skipped = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (r->v[i].res.outcome == HX_PASS)
            (*passed)++;
        else if (r->v[i].res.outcome == HX_FAIL)
            (*failed)++;
        else
            (*skipped)++;
    }
}

static void xml_put(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        switch (c) {
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '&':
            fputs("&amp;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        case '\'':
            fputs("&apos;", f);
            break;
        default:
            if (c < 0x20 && c != '\n' && c != '\t')
                fputc(' ', f);
            else
                fputc(c, f);
        }
    }
}

int hx_report_junit(const hx_report *r, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int p, fl, s;
    hx_report_counts(r, &p, &fl, &s);
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f,
            "<testsuites name=\"cmkharness conformance\" tests=\"%zu\" failures=\"%d\" "
            "skipped=\"%d\">\n",
            r->n, fl, s);
    for (size_t i = 0; i < r->n;) {
        size_t j = i;
        int sf = 0, ss = 0;
        double t = 0;
        while (j < r->n && !strcmp(r->v[j].suite, r->v[i].suite)) {
            sf += r->v[j].res.outcome == HX_FAIL;
            ss += r->v[j].res.outcome == HX_SKIP;
            t += r->v[j].res.seconds;
            j++;
        }
        fputs("  <testsuite name=\"", f);
        xml_put(f, r->v[i].suite);
        fprintf(f, "\" tests=\"%zu\" failures=\"%d\" skipped=\"%d\" time=\"%.3f\">\n", j - i, sf,
                ss, t);
        for (size_t k = i; k < j; k++) {
            const hx_entry *e = &r->v[k];
            fputs("    <testcase classname=\"", f);
            xml_put(f, e->suite);
            fputs("\" name=\"", f);
            xml_put(f, e->name);
            fprintf(f, "\" time=\"%.3f\"", e->res.seconds);
            if (e->res.outcome == HX_PASS) {
                fputs("/>\n", f);
                continue;
            }
            fputs(">\n", f);
            if (e->res.outcome == HX_FAIL) {
                fputs("      <failure message=\"", f);
                xml_put(f, e->res.msg);
                fputs("\">", f);
                xml_put(f, e->res.msg);
                fputs("</failure>\n", f);
            } else {
                fputs("      <skipped message=\"", f);
                xml_put(f, e->res.msg);
                fputs("\"/>\n", f);
            }
            fputs("    </testcase>\n", f);
        }
        fputs("  </testsuite>\n", f);
        i = j;
    }
    fputs("</testsuites>\n", f);
    return fclose(f) ? -1 : 0;
}

/* ------------------------------------------------------------------ files */

static int has_tag(const json_t *step, const char *tag)
{
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(step, "tags"), i, t)
    {
        if (json_is_string(t) && !strcmp(json_string_value(t), tag))
            return 1;
    }
    return 0;
}

static int file_selected(const json_t *doc, const char *path, const char *only)
{
    if (!only || !only[0])
        return 1;
    const char *name = str_field(doc, "name");
    char full[1024];
    if (strstr(path, only))
        return 1;
    if (name) {
        snprintf(full, sizeof full, "%s/", name);
        if (strstr(full, only))
            return 1;
    }
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(doc, "cases"), i, s)
    {
        snprintf(full, sizeof full, "%s/%s", name ? name : "",
                 str_field(s, "name") ? str_field(s, "name") : "");
        if (strstr(full, only))
            return 1;
    }
    return 0;
}

int hx_file_run(hx_ctx *ctx, const char *path, const hx_run_opts *opts, hx_report *report)
{
    FILE *out = opts->out ? opts->out : stdout;
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    hx_result res;
    if (!doc || !json_is_array(json_object_get(doc, "cases"))) {
        memset(&res, 0, sizeof res);
        res.outcome = HX_FAIL;
        if (doc)
            msgf(res.msg, "%s: no \"cases\" array", path);
        else
            msgf(res.msg, "%s:%d: %s", path, je.line, je.text);
        fprintf(out, "FAIL %s: %s\n", path, res.msg);
        hx_report_add(report, path, "(load)", &res);
        json_decref(doc);
        return 1;
    }
    if (!file_selected(doc, path, opts->only)) {
        json_decref(doc);
        return 0;
    }
    const char *fname = str_field(doc, "name") ? str_field(doc, "name") : path;
    int failures = 0;
    size_t i;
    json_t *step;
    json_array_foreach(json_object_get(doc, "cases"), i, step)
    {
        char name[512];
        const char *sn = str_field(step, "name");
        if (sn)
            snprintf(name, sizeof name, "%s", sn);
        else
            snprintf(name, sizeof name, "step %zu", i + 1);
        const char *skip = NULL;
        for (size_t t = 0; t < opts->nskip_tags; t++)
            if (has_tag(step, opts->skip_tags[t]))
                skip = opts->skip_tags[t];
        if (skip) {
            memset(&res, 0, sizeof res);
            res.outcome = HX_SKIP;
            msgf(res.msg, "tagged %s", skip);
        } else {
            hx_step_run(ctx, doc, step, &res);
        }
        const char *word = res.outcome == HX_PASS   ? "PASS"
                           : res.outcome == HX_FAIL ? "FAIL"
                                                    : "SKIP";
        const char *tag = has_tag(step, "emulator-only") ? " [emulator-only]" : "";
        if (res.outcome == HX_PASS)
            fprintf(out, "%s %s/%s%s (%.2fs)\n", word, fname, name, tag, res.seconds);
        else
            fprintf(out, "%s %s/%s%s: %s\n", word, fname, name, tag, res.msg);
        fflush(out);
        failures += res.outcome == HX_FAIL;
        hx_report_add(report, fname, name, &res);
    }
    json_decref(doc);
    return failures;
}
