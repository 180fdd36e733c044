#include "template.h"

#include <assert.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "util.h"

/* ---- state ---------------------------------------------------------------------------------- */

typedef enum { SLOT_UNRESOLVED, SLOT_RESOLVING, SLOT_DONE } slot_state;

typedef struct {
    const char *name; /* key in the template (borrowed from tmpl) */
    json_t *def;      /* parameter definition or variable value (borrowed) */
    json_t *value;    /* resolved value (owned) */
    slot_state state;
    bool secure;
} slot;

typedef struct {
    json_t *def; /* borrowed from tmpl */
    char *type, *name, *id, *api_version;
    size_t *deps; /* indices */
    size_t ndeps;
} res;

struct arm_tpl {
    json_t *tmpl;   /* own reference */
    json_t *params; /* supplied {name: {value}}, own reference (may be NULL) */
    arm_tpl_env env;
    slot *p, *v;
    size_t np, nv;
    res *r;
    size_t nr;
    size_t *order;
    int depth;
    const char *where; /* context of the current evaluation for messages */
    arm_tpl_error *err;
};

static bool fail(arm_tpl *t, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool fail(arm_tpl *t, const char *code, const char *fmt, ...)
{
    if (!t->err || t->err->code[0])
        return false; /* the first (innermost) error wins */
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(t->err->code, sizeof t->err->code, "%s", code);
    if (t->where && *t->where)
        snprintf(t->err->message, sizeof t->err->message, "%s: %s", t->where, msg);
    else
        snprintf(t->err->message, sizeof t->err->message, "%s", msg);
    return false;
}

#define EXPR_FAIL(t, ...) fail((t), "InvalidTemplateExpression", __VA_ARGS__)
#define TPL_FAIL(t, ...) fail((t), "InvalidTemplate", __VA_ARGS__)

/* Case-insensitive object member (ARM names are case-insensitive). */
static json_t *obj_get_ci(const json_t *o, const char *key, const char **real)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        if (!strcasecmp(k, key)) {
            if (real)
                *real = k;
            return v;
        }
    }
    return NULL;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "Object";
    case JSON_ARRAY: return "Array";
    case JSON_STRING: return "String";
    case JSON_INTEGER: return "Integer";
    case JSON_REAL: return "Float";
    case JSON_TRUE:
    case JSON_FALSE: return "Boolean";
    case JSON_NULL: return "Null";
    }
    return "Unknown";
}

/* ---- expression syntax tree ----------------------------------------------------------------- */

typedef enum { N_NUM, N_STR, N_CALL, N_PROP, N_INDEX } node_kind;

typedef struct node {
    node_kind kind;
    int64_t num;
    const char *str; /* literal, function name or property name */
    struct node **args;
    size_t nargs;
    struct node *base; /* N_PROP, N_INDEX */
    struct node *index;
} node;

typedef struct {
    arm_tpl *t;
    emu_arena *arena;
    const char *s, *p, *end;
    int depth;
} parser;

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && isspace((unsigned char)*ps->p))
        ps->p++;
}

static node *new_node(parser *ps, node_kind k)
{
    node *n = emu_arena_alloc(ps->arena, sizeof *n);
    memset(n, 0, sizeof *n);
    n->kind = k;
    return n;
}

static bool parse_fail(parser *ps, const char *what)
{
    return EXPR_FAIL(ps->t,
                     "The language expression '%.200s' is not valid: %s at position %d.", ps->s,
                     what, (int)(ps->p - ps->s));
}

static node *parse_expr(parser *ps);

static bool is_ident_start(char c)
{
    return isalpha((unsigned char)c) || c == '_';
}

static bool is_ident(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

static node *parse_primary(parser *ps)
{
    skip_ws(ps);
    if (ps->p >= ps->end) {
        parse_fail(ps, "unexpected end");
        return NULL;
    }
    char c = *ps->p;
    if (c == '\'') {
        /* 'text' with '' for a quote */
        char *buf = emu_arena_alloc(ps->arena, (size_t)(ps->end - ps->p) + 1);
        size_t n = 0;
        ps->p++;
        for (;;) {
            if (ps->p >= ps->end) {
                parse_fail(ps, "unterminated string literal");
                return NULL;
            }
            if (*ps->p == '\'') {
                if (ps->p + 1 < ps->end && ps->p[1] == '\'') {
                    buf[n++] = '\'';
                    ps->p += 2;
                    continue;
                }
                ps->p++;
                break;
            }
            buf[n++] = *ps->p++;
        }
        buf[n] = '\0';
        node *nd = new_node(ps, N_STR);
        nd->str = buf;
        return nd;
    }
    if (isdigit((unsigned char)c) || (c == '-' && ps->p + 1 < ps->end &&
                                      isdigit((unsigned char)ps->p[1]))) {
        const char *st = ps->p++;
        while (ps->p < ps->end && isdigit((unsigned char)*ps->p))
            ps->p++;
        node *nd = new_node(ps, N_NUM);
        if (!emu_parse_i64n(st, (size_t)(ps->p - st), INT64_MIN, INT64_MAX, &nd->num)) {
            parse_fail(ps, "integer out of range");
            return NULL;
        }
        return nd;
    }
    if (!is_ident_start(c)) {
        parse_fail(ps, "unexpected character");
        return NULL;
    }
    const char *st = ps->p;
    while (ps->p < ps->end && is_ident(*ps->p))
        ps->p++;
    node *nd = new_node(ps, N_CALL);
    nd->str = emu_arena_strndup(ps->arena, st, (size_t)(ps->p - st));
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '(') {
        parse_fail(ps, "a function name must be followed by '('");
        return NULL;
    }
    ps->p++;
    node *args[65];
    size_t na = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ')') {
        ps->p++;
    } else {
        for (;;) {
            if (na >= 64) {
                parse_fail(ps, "too many arguments (at most 64)");
                return NULL;
            }
            node *a = parse_expr(ps);
            if (!a)
                return NULL;
            args[na++] = a;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == ')') {
                ps->p++;
                break;
            }
            parse_fail(ps, "expected ',' or ')'");
            return NULL;
        }
    }
    nd->nargs = na;
    nd->args = emu_arena_alloc(ps->arena, (na ? na : 1) * sizeof(node *));
    memcpy(nd->args, args, na * sizeof(node *));
    return nd;
}

static node *parse_expr(parser *ps)
{
    if (++ps->depth > ARM_TPL_MAX_DEPTH) {
        parse_fail(ps, "nested too deeply");
        return NULL;
    }
    node *n = parse_primary(ps);
    while (n) {
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == '.') {
            ps->p++;
            skip_ws(ps);
            const char *st = ps->p;
            while (ps->p < ps->end && (is_ident(*ps->p) || *ps->p == '$'))
                ps->p++;
            if (ps->p == st) {
                parse_fail(ps, "expected a property name after '.'");
                return NULL;
            }
            node *pn = new_node(ps, N_PROP);
            pn->base = n;
            pn->str = emu_arena_strndup(ps->arena, st, (size_t)(ps->p - st));
            n = pn;
        } else if (ps->p < ps->end && *ps->p == '[') {
            ps->p++;
            node *ix = parse_expr(ps);
            if (!ix)
                return NULL;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ']') {
                parse_fail(ps, "expected ']'");
                return NULL;
            }
            ps->p++;
            node *in = new_node(ps, N_INDEX);
            in->base = n;
            in->index = ix;
            n = in;
        } else {
            break;
        }
    }
    ps->depth--;
    return n;
}

/* ---- values ----------------------------------------------------------------------------------- */

static json_t *eval_node(arm_tpl *t, node *n);
static json_t *eval_value(arm_tpl *t, const json_t *v, int depth);
static json_t *param_value(arm_tpl *t, const char *name);
static json_t *var_value(arm_tpl *t, const char *name);

/* Text of a string or integer (concat, format); NULL for other types. Caller frees. */
static char *scalar_text(const json_t *v)
{
    if (json_is_string(v))
        return emu_xstrdup(json_string_value(v));
    if (json_is_integer(v))
        return emu_xasprintf("%lld", (long long)json_integer_value(v));
    if (json_is_true(v))
        return emu_xstrdup("True");
    if (json_is_false(v))
        return emu_xstrdup("False");
    return NULL;
}

static bool want_args(arm_tpl *t, const char *fn, size_t n, size_t min, size_t max)
{
    if (n < min || n > max) {
        if (min == max)
            return EXPR_FAIL(t, "The template language function '%s' must have %zu "
                                "argument(s), not %zu.",
                             fn, min, n);
        return EXPR_FAIL(t, "The template language function '%s' expects between %zu and %zu "
                            "arguments, not %zu.",
                         fn, min, max, n);
    }
    return true;
}

static const char *want_string(arm_tpl *t, const char *fn, json_t *v, size_t i)
{
    if (!json_is_string(v)) {
        EXPR_FAIL(t, "The template language function '%s' expects its parameter %zu to be of "
                     "type 'String'. The provided value is of type '%s'.",
                  fn, i + 1, type_name(v));
        return NULL;
    }
    return json_string_value(v);
}

static bool want_bool(arm_tpl *t, const char *fn, json_t *v, size_t i, bool *out)
{
    if (!json_is_boolean(v))
        return EXPR_FAIL(t, "The template language function '%s' expects its parameter %zu to "
                            "be of type 'Boolean'. The provided value is of type '%s'.",
                         fn, i + 1, type_name(v));
    *out = json_is_true(v);
    return true;
}

/* MurmurHash64 variant ARM's uniqueString() uses (two 32-bit lanes), then 13 base-32 chars of
 * the top 65 bits. */
static uint32_t rotl32(uint32_t x, int r)
{
    return (x << r) | (x >> (32 - r));
}

static uint32_t fmix32(uint32_t h)
{
    h = (h ^ (h >> 16)) * 0x85ebca6bu;
    h = (h ^ (h >> 13)) * 0xc2b2ae35u;
    return h ^ (h >> 16);
}

void arm_tpl_unique_string(const char *s, size_t len, char out[14])
{
    const uint8_t *b = (const uint8_t *)s;
    const uint32_t c1 = 0xab0e9789u, c2 = 0x239b961bu;
    uint32_t h1 = 0, h2 = 0;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint32_t k1 = (uint32_t)b[i] | (uint32_t)b[i + 1] << 8 | (uint32_t)b[i + 2] << 16 |
                      (uint32_t)b[i + 3] << 24;
        uint32_t k2 = (uint32_t)b[i + 4] | (uint32_t)b[i + 5] << 8 |
                      (uint32_t)b[i + 6] << 16 | (uint32_t)b[i + 7] << 24;
        h1 ^= rotl32(k1 * c2, 15) * c1;
        h1 = rotl32(h1, 19) + h2;
        h1 = h1 * 5 + 0x561ccd1bu;
        h2 ^= rotl32(k2 * c1, 17) * c2;
        h2 = rotl32(h2, 13) + h1;
        h2 = h2 * 5 + 0x0bcaa747u;
    }
    size_t rem = len - i;
    if (rem > 0) {
        uint32_t k1 = 0;
        for (size_t j = 0; j < rem && j < 4; j++)
            k1 |= (uint32_t)b[i + j] << (8 * j);
        h1 ^= rotl32(k1 * c2, 15) * c1;
        if (rem > 4) {
            uint32_t k2 = 0;
            for (size_t j = 4; j < rem; j++)
                k2 |= (uint32_t)b[i + j] << (8 * (j - 4));
            h2 ^= rotl32(k2 * c1, 17) * c2;
        }
    }
    uint32_t l = (uint32_t)len;
    uint32_t r0 = h2 ^ l;
    uint32_t r1 = (h1 ^ l) + r0;
    uint32_t r2 = r0 + r1;
    r1 = fmix32(r1);
    r2 = fmix32(r2);
    r1 += r2;
    r2 += r1;
    uint64_t h = (uint64_t)r2 << 32 | r1;
    static const char alpha[] = "abcdefghijklmnopqrstuvwxyz234567";
    for (int k = 0; k < 13; k++) {
        out[k] = alpha[(h >> 59) & 31];
        h <<= 5;
    }
    out[13] = '\0';
}

/* Joins string arguments with '-' (uniqueString, guid). NULL + error on a non-string. */
static char *join_strings(arm_tpl *t, const char *fn, json_t **a, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!want_string(t, fn, a[i], i))
            return NULL;
        total += json_string_length(a[i]) + 1;
    }
    if (total > ARM_TPL_MAX_STRING) {
        EXPR_FAIL(t, "The arguments of '%s' are too long.", fn);
        return NULL;
    }
    char *s = emu_xmalloc(total + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i)
            s[o++] = '-';
        memcpy(s + o, json_string_value(a[i]), json_string_length(a[i]));
        o += json_string_length(a[i]);
    }
    s[o] = '\0';
    return s;
}

/* guid(): a name-based (SHA-1, version 5) UUID of the joined arguments under a fixed
 * namespace, so the same inputs give the same id in every deployment. */
static json_t *make_guid(const char *joined)
{
    static const uint8_t ns[16] = {0x11, 0xfb, 0x06, 0xfb, 0x71, 0x2d, 0x4d, 0xdd,
                                   0x98, 0xc7, 0xe7, 0x1b, 0xbd, 0x58, 0x88, 0x30};
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c)
        abort();
    EVP_DigestInit_ex(c, EVP_sha1(), NULL);
    EVP_DigestUpdate(c, ns, sizeof ns);
    EVP_DigestUpdate(c, joined, strlen(joined));
    EVP_DigestFinal_ex(c, md, &mdlen);
    EVP_MD_CTX_free(c);
    md[6] = (uint8_t)((md[6] & 0x0f) | 0x50);
    md[8] = (uint8_t)((md[8] & 0x3f) | 0x80);
    char hex[33];
    emu_hex_encode(md, 16, hex);
    return json_sprintf("%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}

/* format('{0} and {1}', a, b): .NET composite formatting without format specifiers. */
static json_t *do_format(arm_tpl *t, json_t **a, size_t n)
{
    const char *f = want_string(t, "format", a[0], 0);
    if (!f)
        return NULL;
    size_t cap = strlen(f) + 64, o = 0;
    char *out = emu_xmalloc(cap);
    json_t *res = NULL;
    for (const char *p = f; *p;) {
        const char *piece = p;
        size_t plen = 1;
        char *owned = NULL;
        if (p[0] == '{' && p[1] == '{') {
            p += 2;
        } else if (p[0] == '}' && p[1] == '}') {
            piece = "}";
            p += 2;
        } else if (p[0] == '{') {
            const char *q = p + 1;
            int64_t idx;
            const char *e = q;
            while (isdigit((unsigned char)*e))
                e++;
            const char *close = strchr(e, '}');
            if (e == q || !close || (*e != '}' && *e != ':' && *e != ',') ||
                !emu_parse_i64n(q, (size_t)(e - q), 0, 63, &idx)) {
                EXPR_FAIL(t, "The format string '%.200s' is not valid.", f);
                goto out;
            }
            if ((size_t)idx + 1 >= n) {
                EXPR_FAIL(t, "The format string '%.200s' refers to argument %lld, but only %zu "
                             "were given.",
                          f, (long long)idx, n - 1);
                goto out;
            }
            json_t *arg = a[idx + 1];
            owned = scalar_text(arg);
            if (!owned)
                owned = json_dumps(arg, JSON_COMPACT | JSON_ENCODE_ANY);
            piece = owned ? owned : "";
            plen = strlen(piece);
            p = close + 1;
        } else if (p[0] == '}') {
            EXPR_FAIL(t, "The format string '%.200s' is not valid.", f);
            goto out;
        } else {
            p++;
        }
        if (o + plen + 1 > ARM_TPL_MAX_STRING) {
            free(owned);
            EXPR_FAIL(t, "The result of format is too long.");
            goto out;
        }
        if (o + plen + 1 > cap) {
            cap = (o + plen + 1) * 2;
            out = emu_xrealloc(out, cap);
        }
        memcpy(out + o, piece, plen);
        o += plen;
        free(owned);
    }
    res = json_stringn(out, o);
out:
    free(out);
    return res;
}

static json_t *do_concat(arm_tpl *t, json_t **a, size_t n)
{
    if (n == 0) {
        EXPR_FAIL(t, "The template language function 'concat' must have at least one "
                     "argument.");
        return NULL;
    }
    if (json_is_array(a[0])) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++) {
            if (!json_is_array(a[i])) {
                json_decref(arr);
                EXPR_FAIL(t, "The template language function 'concat' expects all its "
                             "arguments to be arrays or all to be strings; argument %zu is of "
                             "type '%s'.",
                          i + 1, type_name(a[i]));
                return NULL;
            }
            if (json_array_size(arr) + json_array_size(a[i]) > 100000) {
                json_decref(arr);
                EXPR_FAIL(t, "The result of concat is too long.");
                return NULL;
            }
            json_array_extend(arr, a[i]);
        }
        return arr;
    }
    size_t cap = 64, o = 0;
    char *s = emu_xmalloc(cap);
    for (size_t i = 0; i < n; i++) {
        char *x = json_is_null(a[i]) ? emu_xstrdup("") : scalar_text(a[i]);
        if (!x || json_is_boolean(a[i])) {
            free(x);
            free(s);
            EXPR_FAIL(t, "The template language function 'concat' expects its arguments to be "
                         "strings, integers or arrays; argument %zu is of type '%s'.",
                      i + 1, type_name(a[i]));
            return NULL;
        }
        size_t l = strlen(x);
        if (o + l + 1 > ARM_TPL_MAX_STRING) {
            free(x);
            free(s);
            EXPR_FAIL(t, "The result of concat is too long.");
            return NULL;
        }
        if (o + l + 1 > cap) {
            cap = (o + l + 1) * 2;
            s = emu_xrealloc(s, cap);
        }
        memcpy(s + o, x, l);
        o += l;
        free(x);
    }
    json_t *r = json_stringn(s, o);
    free(s);
    return r;
}

/* resourceId([subscriptionId], [resourceGroupName], type, name1, name2...). */
static json_t *do_resource_id(arm_tpl *t, json_t **a, size_t n)
{
    size_t ti = n;
    for (size_t i = 0; i < n; i++) {
        if (!want_string(t, "resourceId", a[i], i))
            return NULL;
        if (i < 3 && strchr(json_string_value(a[i]), '/') && ti == n)
            ti = i;
    }
    if (ti == n) {
        EXPR_FAIL(t, "The template language function 'resourceId' expects a resource type "
                     "('Namespace/type') among its first three arguments.");
        return NULL;
    }
    const char *sub = t->env.subscription, *rg = t->env.resource_group;
    if (ti == 1)
        rg = json_string_value(a[0]);
    else if (ti == 2) {
        sub = json_string_value(a[0]);
        rg = json_string_value(a[1]);
    }
    const char *type = json_string_value(a[ti]);
    /* segments of the type after the namespace must match the names */
    size_t segs = 0;
    for (const char *p = type; *p; p++)
        segs += *p == '/';
    size_t names = n - ti - 1;
    if (names != segs) {
        EXPR_FAIL(t, "Unable to evaluate template language function 'resourceId': the type "
                     "'%.200s' requires %zu resource name argument(s), got %zu.",
                  type, segs, names);
        return NULL;
    }
    const char *slash = strchr(type, '/');
    size_t cap = 256 + strlen(sub) + strlen(rg) + strlen(type);
    for (size_t i = ti + 1; i < n; i++)
        cap += json_string_length(a[i]) + 1;
    if (cap > ARM_TPL_MAX_STRING) {
        EXPR_FAIL(t, "The resource id is too long.");
        return NULL;
    }
    char *s = emu_xmalloc(cap);
    int o = snprintf(s, cap, "/subscriptions/%s/resourceGroups/%s/providers/%.*s", sub, rg,
                     (int)(slash - type), type);
    const char *tp = slash;
    for (size_t i = ti + 1; i < n; i++) {
        const char *next = strchr(tp + 1, '/');
        int tl = next ? (int)(next - tp - 1) : (int)strlen(tp + 1);
        o += snprintf(s + o, cap - (size_t)o, "/%.*s/%s", tl, tp + 1, json_string_value(a[i]));
        tp = next;
    }
    json_t *r = json_string(s);
    free(s);
    return r;
}

static const char *res_id_by_name(arm_tpl *t, const char *name, const char **api)
{
    for (size_t i = 0; i < t->nr; i++)
        if (!strcasecmp(t->r[i].name, name) || !strcasecmp(t->r[i].id, name)) {
            *api = t->r[i].api_version;
            return t->r[i].id;
        }
    return NULL;
}

static json_t *do_reference(arm_tpl *t, json_t **a, size_t n)
{
    const char *x = want_string(t, "reference", a[0], 0);
    if (!x)
        return NULL;
    const char *api = NULL, *id = x;
    const char *tid = res_id_by_name(t, x, &api);
    if (tid)
        id = tid;
    else if (x[0] != '/') {
        EXPR_FAIL(t, "The template reference '%.200s' is not valid: could not find a template "
                     "resource or resource copy with this name.",
                  x);
        return NULL;
    }
    if (n >= 2 && !(api = want_string(t, "reference", a[1], 1)))
        return NULL;
    bool full = false;
    if (n >= 3) {
        const char *f = want_string(t, "reference", a[2], 2);
        if (!f)
            return NULL;
        full = !strcasecmp(f, "Full");
    }
    if (!api) {
        EXPR_FAIL(t, "The template function 'reference' needs an api version for '%.200s', "
                     "which is not a resource of this template.",
                  x);
        return NULL;
    }
    if (!t->env.reference) {
        EXPR_FAIL(t, "The template function 'reference' is not expected at this location.");
        return NULL;
    }
    char err[600] = "";
    json_t *r = t->env.reference(t->env.reference_ud, id, api, err, sizeof err);
    if (!r) {
        EXPR_FAIL(t, "The template function 'reference' could not read '%.300s': %s", id, err);
        return NULL;
    }
    if (full)
        return r;
    json_t *props = json_object_get(r, "properties");
    json_t *out = props ? json_incref(props) : json_object();
    json_decref(r);
    return out;
}

static bool is_empty(const json_t *v)
{
    return json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0) ||
           (json_is_object(v) && json_object_size(v) == 0);
}

/* Calls a function on evaluated arguments (all but if(), which evaluates lazily). */
static json_t *call_fn(arm_tpl *t, const char *fn, json_t **a, size_t n)
{
#define FN(name) (!strcasecmp(fn, name))
#define ARGS(min, max)                                                                         \
    do {                                                                                       \
        if (!want_args(t, fn, n, min, max))                                                    \
            return NULL;                                                                       \
    } while (0)
    if (FN("parameters") || FN("variables")) {
        ARGS(1, 1);
        const char *name = want_string(t, fn, a[0], 0);
        if (!name)
            return NULL;
        json_t *v = FN("parameters") ? param_value(t, name) : var_value(t, name);
        return v ? json_deep_copy(v) : NULL;
    }
    if (FN("concat"))
        return do_concat(t, a, n);
    if (FN("format")) {
        ARGS(1, 64);
        return do_format(t, a, n);
    }
    if (FN("toLower") || FN("toUpper")) {
        ARGS(1, 1);
        const char *s = want_string(t, fn, a[0], 0);
        if (!s)
            return NULL;
        char *c = emu_xstrdup(s);
        for (char *p = c; *p; p++)
            *p = (char)(FN("toLower") ? tolower((unsigned char)*p) : toupper((unsigned char)*p));
        json_t *r = json_string(c);
        free(c);
        return r;
    }
    if (FN("uniqueString") || FN("guid")) {
        ARGS(1, 64);
        char *j = join_strings(t, fn, a, n);
        if (!j)
            return NULL;
        json_t *r;
        if (FN("guid")) {
            r = make_guid(j);
        } else {
            char u[14];
            arm_tpl_unique_string(j, strlen(j), u);
            r = json_string(u);
        }
        free(j);
        return r;
    }
    if (FN("string")) {
        ARGS(1, 1);
        char *s = scalar_text(a[0]);
        if (!s)
            s = json_is_null(a[0]) ? emu_xstrdup("")
                                   : json_dumps(a[0], JSON_COMPACT | JSON_ENCODE_ANY);
        json_t *r = json_string(s ? s : "");
        free(s);
        return r;
    }
    if (FN("int")) {
        ARGS(1, 1);
        if (json_is_integer(a[0]))
            return json_incref(a[0]);
        int64_t v;
        if (json_is_string(a[0]) &&
            emu_parse_i64(json_string_value(a[0]), INT64_MIN, INT64_MAX, &v))
            return json_integer(v);
        EXPR_FAIL(t, "The template language function 'int' cannot convert a value of type "
                     "'%s' to an integer.",
                  type_name(a[0]));
        return NULL;
    }
    if (FN("bool")) {
        ARGS(1, 1);
        if (json_is_boolean(a[0]))
            return json_incref(a[0]);
        if (json_is_string(a[0]) && !strcasecmp(json_string_value(a[0]), "true"))
            return json_true();
        if (json_is_string(a[0]) && !strcasecmp(json_string_value(a[0]), "false"))
            return json_false();
        if (json_is_integer(a[0]))
            return json_boolean(json_integer_value(a[0]) != 0);
        EXPR_FAIL(t, "The template language function 'bool' cannot convert this value.");
        return NULL;
    }
    if (FN("length")) {
        ARGS(1, 1);
        if (json_is_string(a[0]))
            return json_integer((json_int_t)json_string_length(a[0]));
        if (json_is_array(a[0]))
            return json_integer((json_int_t)json_array_size(a[0]));
        if (json_is_object(a[0]))
            return json_integer((json_int_t)json_object_size(a[0]));
        EXPR_FAIL(t, "The template language function 'length' expects a string, array or "
                     "object.");
        return NULL;
    }
    if (FN("equals")) {
        ARGS(2, 2);
        return json_boolean(json_equal(a[0], a[1]));
    }
    if (FN("not")) {
        ARGS(1, 1);
        bool b = false;
        return want_bool(t, fn, a[0], 0, &b) ? json_boolean(!b) : NULL;
    }
    if (FN("and") || FN("or")) {
        ARGS(2, 64);
        bool acc = FN("and");
        for (size_t i = 0; i < n; i++) {
            bool b = false;
            if (!want_bool(t, fn, a[i], i, &b))
                return NULL;
            acc = FN("and") ? (acc && b) : (acc || b);
        }
        return json_boolean(acc);
    }
    if (FN("empty")) {
        ARGS(1, 1);
        return json_boolean(is_empty(a[0]));
    }
    if (FN("true") || FN("false") || FN("null")) {
        ARGS(0, 0);
        return FN("true") ? json_true() : FN("false") ? json_false() : json_null();
    }
    if (FN("resourceGroup")) {
        ARGS(0, 0);
        char *id = emu_xasprintf("/subscriptions/%s/resourceGroups/%s", t->env.subscription,
                                 t->env.resource_group);
        json_t *r = json_pack("{s:s,s:s,s:s,s:s,s:{s:s}}", "id", id, "name",
                              t->env.resource_group, "type", "Microsoft.Resources/resourceGroups",
                              "location", t->env.rg_location ? t->env.rg_location : "",
                              "properties", "provisioningState", "Succeeded");
        free(id);
        return r;
    }
    if (FN("subscription")) {
        ARGS(0, 0);
        char *id = emu_xasprintf("/subscriptions/%s", t->env.subscription);
        json_t *r = json_pack("{s:s,s:s,s:s,s:s}", "id", id, "subscriptionId",
                              t->env.subscription, "tenantId",
                              t->env.tenant ? t->env.tenant : "", "displayName", "cmkemu");
        free(id);
        return r;
    }
    if (FN("deployment")) {
        ARGS(0, 0);
        return json_pack("{s:s,s:{s:s}}", "name",
                         t->env.deployment_name ? t->env.deployment_name : "", "properties",
                         "provisioningState", "Running");
    }
    if (FN("resourceId")) {
        ARGS(2, 64);
        return do_resource_id(t, a, n);
    }
    if (FN("reference")) {
        ARGS(1, 3);
        return do_reference(t, a, n);
    }
#undef FN
#undef ARGS
    EXPR_FAIL(t, "The template function '%.100s' is not valid. Please see "
                 "https://aka.ms/arm-functions for usage details.",
              fn);
    return NULL;
}

static json_t *eval_call(arm_tpl *t, node *n)
{
    if (!strcasecmp(n->str, "if")) {
        if (!want_args(t, "if", n->nargs, 3, 3))
            return NULL;
        json_t *c = eval_node(t, n->args[0]);
        if (!c)
            return NULL;
        bool b = false;
        bool ok = want_bool(t, "if", c, 0, &b);
        json_decref(c);
        return ok ? eval_node(t, n->args[b ? 1 : 2]) : NULL;
    }
    json_t *args[64];
    size_t na = 0;
    json_t *r = NULL;
    for (; na < n->nargs; na++) {
        args[na] = eval_node(t, n->args[na]);
        if (!args[na])
            goto out;
    }
    r = call_fn(t, n->str, args, na);
out:
    for (size_t i = 0; i < na; i++)
        json_decref(args[i]);
    return r;
}

static json_t *eval_node(arm_tpl *t, node *n)
{
    switch (n->kind) {
    case N_NUM: return json_integer(n->num);
    case N_STR: return json_string(n->str);
    case N_CALL: return eval_call(t, n);
    case N_PROP: {
        json_t *b = eval_node(t, n->base);
        if (!b)
            return NULL;
        json_t *r = NULL;
        if (!json_is_object(b)) {
            EXPR_FAIL(t, "The language expression property '%.100s' can't be evaluated: the "
                         "value is of type '%s', not 'Object'.",
                      n->str, type_name(b));
        } else {
            json_t *v = obj_get_ci(b, n->str, NULL);
            if (v) {
                r = json_incref(v);
            } else {
                char avail[300] = "";
                size_t o = 0;
                const char *k;
                json_t *x;
                json_object_foreach(b, k, x)
                {
                    int w = snprintf(avail + o, sizeof avail - o, "%s%s", o ? ", " : "", k);
                    if (w < 0 || (size_t)w >= sizeof avail - o)
                        break;
                    o += (size_t)w;
                }
                (void)x;
                EXPR_FAIL(t, "The language expression property '%.100s' doesn't exist, "
                             "available properties are '%s'.",
                          n->str, avail);
            }
        }
        json_decref(b);
        return r;
    }
    case N_INDEX: {
        json_t *b = eval_node(t, n->base);
        if (!b)
            return NULL;
        json_t *ix = eval_node(t, n->index);
        json_t *r = NULL;
        if (!ix) {
        } else if (json_is_array(b) && json_is_integer(ix)) {
            json_int_t i = json_integer_value(ix);
            if (i < 0 || (size_t)i >= json_array_size(b))
                EXPR_FAIL(t, "The language expression index '%lld' is out of bounds (array "
                             "of %zu).",
                          (long long)i, json_array_size(b));
            else
                r = json_incref(json_array_get(b, (size_t)i));
        } else if (json_is_object(b) && json_is_string(ix)) {
            json_t *v = obj_get_ci(b, json_string_value(ix), NULL);
            if (v)
                r = json_incref(v);
            else
                EXPR_FAIL(t, "The language expression property '%.100s' doesn't exist.",
                          json_string_value(ix));
        } else {
            EXPR_FAIL(t, "The language expression cannot index a value of type '%s' with a "
                         "value of type '%s'.",
                      type_name(b), type_name(ix));
        }
        json_decref(ix);
        json_decref(b);
        return r;
    }
    }
    return NULL;
}

/* Evaluates an expression body (without the surrounding brackets). */
static json_t *eval_expr_text(arm_tpl *t, const char *s, size_t len)
{
    if (len > ARM_TPL_MAX_EXPR) {
        EXPR_FAIL(t, "The language expression is longer than %d characters.",
                  ARM_TPL_MAX_EXPR);
        return NULL;
    }
    if (++t->depth > ARM_TPL_MAX_DEPTH) {
        t->depth--;
        EXPR_FAIL(t, "Expressions refer to each other too deeply (more than %d levels).",
                  ARM_TPL_MAX_DEPTH);
        return NULL;
    }
    parser ps = {.t = t, .arena = emu_arena_new(), .p = NULL};
    char *copy = emu_arena_strndup(ps.arena, s, len);
    ps.s = copy;
    ps.p = copy;
    ps.end = copy + len;
    json_t *r = NULL;
    node *n = parse_expr(&ps);
    if (n) {
        skip_ws(&ps);
        if (ps.p != ps.end)
            parse_fail(&ps, "unexpected text after the expression");
        else
            r = eval_node(t, n);
    }
    emu_arena_free(ps.arena);
    t->depth--;
    return r;
}

static json_t *eval_string(arm_tpl *t, const char *s)
{
    size_t len = strlen(s);
    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        if (s[1] == '[')
            return json_string(s + 1);
        return eval_expr_text(t, s + 1, len - 2);
    }
    return json_string(s);
}

static json_t *eval_value(arm_tpl *t, const json_t *v, int depth)
{
    if (depth > ARM_TPL_MAX_DEPTH) {
        TPL_FAIL(t, "The template value is nested more than %d levels deep.", ARM_TPL_MAX_DEPTH);
        return NULL;
    }
    if (json_is_string(v))
        return eval_string(t, json_string_value(v));
    if (json_is_array(v)) {
        json_t *a = json_array();
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            json_t *e = eval_value(t, x, depth + 1);
            if (!e) {
                json_decref(a);
                return NULL;
            }
            json_array_append_new(a, e);
        }
        return a;
    }
    if (json_is_object(v)) {
        json_t *o = json_object();
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            json_t *e = eval_value(t, x, depth + 1);
            if (!e) {
                json_decref(o);
                return NULL;
            }
            json_object_set_new(o, k, e);
        }
        return o;
    }
    return json_deep_copy(v);
}

/* ---- parameters and variables ------------------------------------------------------------------ */

static slot *find_slot(slot *s, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcasecmp(s[i].name, name))
            return &s[i];
    return NULL;
}

/* Checks a parameter value against its definition; converts "5" -> 5 and "true" -> true as
 * ARM does for int and bool parameters. Takes ownership of *v (may replace it). */
static bool check_param(arm_tpl *t, slot *s, json_t **v)
{
    const char *type = json_string_value(obj_get_ci(s->def, "type", NULL));
    const char *name = s->name;
    if (!strcasecmp(type, "int") && json_is_string(*v)) {
        int64_t x;
        if (emu_parse_i64(json_string_value(*v), INT64_MIN, INT64_MAX, &x)) {
            json_decref(*v);
            *v = json_integer(x);
        }
    }
    if (!strcasecmp(type, "bool") && json_is_string(*v)) {
        const char *x = json_string_value(*v);
        if (!strcasecmp(x, "true") || !strcasecmp(x, "false")) {
            bool b = !strcasecmp(x, "true");
            json_decref(*v);
            *v = json_boolean(b);
        }
    }
    bool ok = (!strcasecmp(type, "string") || !strcasecmp(type, "securestring"))
                  ? json_is_string(*v)
              : !strcasecmp(type, "int")  ? json_is_integer(*v)
              : !strcasecmp(type, "bool") ? json_is_boolean(*v)
              : (!strcasecmp(type, "object") || !strcasecmp(type, "secureobject"))
                  ? json_is_object(*v)
                  : json_is_array(*v);
    if (!ok)
        return TPL_FAIL(t, "Template parameter '%s' was provided an invalid value: expected a "
                           "value of type '%s', got '%s'.",
                        name, type, type_name(*v));
    json_t *allowed = obj_get_ci(s->def, "allowedValues", NULL);
    if (json_is_array(allowed)) {
        bool found = false;
        size_t i;
        json_t *x;
        json_array_foreach(allowed, i, x)
        {
            if (json_is_string(x) && json_is_string(*v)
                    ? !strcasecmp(json_string_value(x), json_string_value(*v))
                    : json_equal(x, *v))
                found = true;
        }
        if (!found) {
            char *got = json_dumps(*v, JSON_COMPACT | JSON_ENCODE_ANY);
            char *all = json_dumps(allowed, JSON_COMPACT);
            TPL_FAIL(t, "The provided value '%.200s' for the template parameter '%s' is not "
                        "valid. The value must be one of %.300s.",
                     got ? got : "", name, all ? all : "");
            free(got);
            free(all);
            return false;
        }
    }
    json_t *mn = obj_get_ci(s->def, "minValue", NULL), *mx = obj_get_ci(s->def, "maxValue", NULL);
    if (json_is_integer(*v)) {
        json_int_t x = json_integer_value(*v);
        if (json_is_integer(mn) && x < json_integer_value(mn))
            return TPL_FAIL(t, "The provided value for the template parameter '%s' is not "
                               "valid. The value must be at least %lld.",
                            name, (long long)json_integer_value(mn));
        if (json_is_integer(mx) && x > json_integer_value(mx))
            return TPL_FAIL(t, "The provided value for the template parameter '%s' is not "
                               "valid. The value must be at most %lld.",
                            name, (long long)json_integer_value(mx));
    }
    json_t *ml = obj_get_ci(s->def, "minLength", NULL), *xl = obj_get_ci(s->def, "maxLength", NULL);
    if (json_is_string(*v) || json_is_array(*v)) {
        size_t len = json_is_string(*v) ? json_string_length(*v) : json_array_size(*v);
        if (json_is_integer(ml) && (json_int_t)len < json_integer_value(ml))
            return TPL_FAIL(t, "The provided value for the template parameter '%s' is not "
                               "valid. Its length must be at least %lld.",
                            name, (long long)json_integer_value(ml));
        if (json_is_integer(xl) && (json_int_t)len > json_integer_value(xl))
            return TPL_FAIL(t, "The provided value for the template parameter '%s' is not "
                               "valid. Its length must be at most %lld.",
                            name, (long long)json_integer_value(xl));
    }
    return true;
}

static json_t *param_value(arm_tpl *t, const char *name)
{
    slot *s = find_slot(t->p, t->np, name);
    if (!s) {
        EXPR_FAIL(t, "The template parameter '%.100s' is not found. Please see "
                     "https://aka.ms/arm-syntax-parameters for usage details.",
                  name);
        return NULL;
    }
    if (s->state == SLOT_DONE)
        return s->value;
    if (s->state == SLOT_RESOLVING) {
        EXPR_FAIL(t, "The template parameter '%s' refers to itself.", s->name);
        return NULL;
    }
    s->state = SLOT_RESOLVING;
    const char *real = NULL;
    json_t *given = t->params ? obj_get_ci(t->params, s->name, &real) : NULL;
    json_t *v = NULL;
    if (given) {
        v = json_deep_copy(json_object_get(given, "value"));
    } else {
        json_t *dv = obj_get_ci(s->def, "defaultValue", NULL);
        if (!dv) {
            TPL_FAIL(t, "The value for the template parameter '%s' is not provided. Please see "
                        "https://aka.ms/arm-create-parameter-file for usage details.",
                     s->name);
            s->state = SLOT_UNRESOLVED;
            return NULL;
        }
        const char *saved = t->where;
        char where[200];
        snprintf(where, sizeof where, "parameter '%.100s' defaultValue", s->name);
        t->where = where;
        v = eval_value(t, dv, 0);
        t->where = saved;
    }
    if (!v || !check_param(t, s, &v)) {
        json_decref(v);
        s->state = SLOT_UNRESOLVED;
        return NULL;
    }
    s->value = v;
    s->state = SLOT_DONE;
    return v;
}

static json_t *var_value(arm_tpl *t, const char *name)
{
    slot *s = find_slot(t->v, t->nv, name);
    if (!s) {
        EXPR_FAIL(t, "The template variable '%.100s' is not found. Please see "
                     "https://aka.ms/arm-syntax-variables for usage details.",
                  name);
        return NULL;
    }
    if (s->state == SLOT_DONE)
        return s->value;
    if (s->state == SLOT_RESOLVING) {
        EXPR_FAIL(t, "The template variable '%s' refers to itself.", s->name);
        return NULL;
    }
    s->state = SLOT_RESOLVING;
    const char *saved = t->where;
    char where[200];
    snprintf(where, sizeof where, "variable '%.100s'", s->name);
    t->where = where;
    json_t *v = eval_value(t, s->def, 0);
    t->where = saved;
    if (!v) {
        s->state = SLOT_UNRESOLVED;
        return NULL;
    }
    s->value = v;
    s->state = SLOT_DONE;
    return v;
}

/* ---- template ------------------------------------------------------------------------------------ */

static const char *const PARAM_TYPES[] = {"string", "securestring", "int",   "bool",
                                          "object", "secureobject", "array"};

static bool load_parameters(arm_tpl *t)
{
    json_t *defs = obj_get_ci(t->tmpl, "parameters", NULL);
    if (defs && !json_is_object(defs))
        return TPL_FAIL(t, "The template 'parameters' must be an object.");
    size_t n = defs ? json_object_size(defs) : 0;
    if (n > ARM_TPL_MAX_PARAMETERS)
        return TPL_FAIL(t, "The template has %zu parameters; at most %d are allowed.", n,
                        ARM_TPL_MAX_PARAMETERS);
    t->p = emu_xcalloc(n ? n : 1, sizeof *t->p);
    const char *k;
    json_t *d;
    if (defs)
        json_object_foreach(defs, k, d)
        {
            const char *type = json_string_value(obj_get_ci(d, "type", NULL));
            bool known = false;
            for (size_t i = 0; type && i < sizeof PARAM_TYPES / sizeof PARAM_TYPES[0]; i++)
                known |= !strcasecmp(type, PARAM_TYPES[i]);
            if (!json_is_object(d) || !known)
                return TPL_FAIL(t, "The template parameter '%.100s' has no valid 'type' (one of "
                                   "string, securestring, int, bool, object, secureObject, "
                                   "array).",
                                k);
            t->p[t->np++] = (slot){.name = k,
                                   .def = d,
                                   .secure = !strncasecmp(type, "secure", 6)};
        }
    if (t->params) {
        if (!json_is_object(t->params))
            return TPL_FAIL(t, "The deployment parameters must be an object.");
        json_object_foreach(t->params, k, d)
        {
            if (!find_slot(t->p, t->np, k)) {
                char names[400] = "";
                size_t o = 0;
                for (size_t i = 0; i < t->np; i++) {
                    int w = snprintf(names + o, sizeof names - o, "%s%s", i ? ", " : "",
                                     t->p[i].name);
                    if (w < 0 || (size_t)w >= sizeof names - o)
                        break;
                    o += (size_t)w;
                }
                return TPL_FAIL(t, "The template parameters '%.100s' in the parameters file are "
                                   "not valid; they are not present in the original template and "
                                   "can therefore not be provided at deployment time. The only "
                                   "supported parameters for this template are '%s'.",
                                k, names);
            }
            if (!json_is_object(d) || !json_object_get(d, "value")) {
                if (json_is_object(d) && json_object_get(d, "reference"))
                    return TPL_FAIL(t, "The template parameter '%.100s' is a Key Vault reference; "
                                       "cmkemu supports only inline values.",
                                    k);
                return TPL_FAIL(t, "The template parameter '%.100s' must be given as "
                                   "{\"value\": ...}.",
                                k);
            }
        }
    }
    for (size_t i = 0; i < t->np; i++)
        if (!param_value(t, t->p[i].name))
            return false;
    return true;
}

static bool load_variables(arm_tpl *t)
{
    json_t *vars = obj_get_ci(t->tmpl, "variables", NULL);
    if (vars && !json_is_object(vars))
        return TPL_FAIL(t, "The template 'variables' must be an object.");
    size_t n = vars ? json_object_size(vars) : 0;
    if (n > ARM_TPL_MAX_VARIABLES)
        return TPL_FAIL(t, "The template has %zu variables; at most %d are allowed.", n,
                        ARM_TPL_MAX_VARIABLES);
    t->v = emu_xcalloc(n ? n : 1, sizeof *t->v);
    const char *k;
    json_t *d;
    if (vars)
        json_object_foreach(vars, k, d)
        {
            if (!strcasecmp(k, "copy"))
                return TPL_FAIL(t, "Variable copy loops are not supported by cmkemu.");
            t->v[t->nv++] = (slot){.name = k, .def = d};
        }
    return true;
}

/* Evaluates a member that must give a non-empty string; NULL + error otherwise. */
static char *member_string(arm_tpl *t, json_t *def, const char *member)
{
    json_t *m = obj_get_ci(def, member, NULL);
    if (!m)
        return (TPL_FAIL(t, "The template resource must have a '%s'.", member), NULL);
    json_t *v = eval_value(t, m, 0);
    if (!v)
        return NULL;
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 1024) {
        json_decref(v);
        TPL_FAIL(t, "The template resource's '%s' must be a non-empty string.", member);
        return NULL;
    }
    char *s = emu_xstrdup(json_string_value(v));
    json_decref(v);
    return s;
}

static char *build_id(arm_tpl *t, const char *type, const char *name)
{
    const char *slash = strchr(type, '/');
    size_t tsegs = 0, nsegs = 1;
    for (const char *p = type; *p; p++)
        tsegs += *p == '/';
    for (const char *p = name; *p; p++)
        nsegs += *p == '/';
    if (!slash || slash == type || tsegs != nsegs) {
        TPL_FAIL(t, "The template resource '%.200s' for type '%.200s' has incorrect segment "
                    "lengths. A nested resource type must have identical number of segments "
                    "as its resource name.",
                 name, type);
        return NULL;
    }
    size_t cap = 128 + strlen(t->env.subscription) + strlen(t->env.resource_group) +
                 strlen(type) + strlen(name);
    char *s = emu_xmalloc(cap);
    int o = snprintf(s, cap, "/subscriptions/%s/resourceGroups/%s/providers/%.*s",
                     t->env.subscription, t->env.resource_group, (int)(slash - type), type);
    const char *tp = slash, *np = name;
    while (tp) {
        const char *tn = strchr(tp + 1, '/');
        const char *nn = strchr(np, '/');
        int tl = tn ? (int)(tn - tp - 1) : (int)strlen(tp + 1);
        int nl = nn ? (int)(nn - np) : (int)strlen(np);
        o += snprintf(s + o, cap - (size_t)o, "/%.*s/%.*s", tl, tp + 1, nl, np);
        tp = tn;
        np = nn ? nn + 1 : np + nl;
    }
    return s;
}

/* Which template resource a dependsOn entry names: a full id, "type/name" or a bare name. */
static bool resolve_dep(arm_tpl *t, const char *d, size_t *out)
{
    size_t found = t->nr;
    for (size_t i = 0; i < t->nr && found == t->nr; i++) {
        res *r = &t->r[i];
        size_t tl = strlen(r->type);
        if (!strcasecmp(d, r->id) || !strcasecmp(d, r->name) ||
            (!strncasecmp(d, r->type, tl) && d[tl] == '/' && !strcasecmp(d + tl + 1, r->name)))
            found = i;
        /* an id with the short form "resourceGroups" spelled differently still ends the same */
        size_t il = strlen(r->id), dl = strlen(d);
        if (found == t->nr && dl < il && d[0] == '/' &&
            !strcasecmp(r->id + il - dl, d))
            found = i;
    }
    if (found == t->nr)
        return TPL_FAIL(t, "The resource '%.300s' is not defined in the template. Please see "
                           "https://aka.ms/arm-syntax for usage details.",
                        d);
    *out = found;
    return true;
}

static bool load_resources(arm_tpl *t)
{
    json_t *rs = obj_get_ci(t->tmpl, "resources", NULL);
    if (!json_is_array(rs))
        return TPL_FAIL(t, "The template must have a 'resources' array (symbolic-name resource "
                           "objects are not supported).");
    size_t n = json_array_size(rs);
    if (n > ARM_TPL_MAX_RESOURCES)
        return TPL_FAIL(t, "The template has %zu resources; at most %d are allowed.", n,
                        ARM_TPL_MAX_RESOURCES);
    t->r = emu_xcalloc(n ? n : 1, sizeof *t->r);
    t->order = emu_xcalloc(n ? n : 1, sizeof *t->order);
    char where[200];
    const char *saved = t->where;
    for (size_t i = 0; i < n; i++) {
        json_t *d = json_array_get(rs, i);
        snprintf(where, sizeof where, "template resource [%zu]", i);
        t->where = where;
        if (!json_is_object(d))
            return TPL_FAIL(t, "a template resource must be an object.");
        if (obj_get_ci(d, "copy", NULL))
            return TPL_FAIL(t, "resource copy loops are not supported by cmkemu.");
        if (obj_get_ci(d, "resources", NULL))
            return TPL_FAIL(t, "nested child 'resources' are not supported by cmkemu; declare "
                               "child resources at the top level with a 'parent/child' name.");
        if (obj_get_ci(d, "scope", NULL))
            return TPL_FAIL(t, "the 'scope' property is not supported by cmkemu.");
        res *r = &t->r[t->nr];
        r->def = d;
        if (!(r->type = member_string(t, d, "type")) ||
            !(r->api_version = member_string(t, d, "apiVersion")) ||
            !(r->name = member_string(t, d, "name"))) {
            t->nr++;
            return false;
        }
        t->nr++;
        if (!(r->id = build_id(t, r->type, r->name)))
            return false;
        for (size_t j = 0; j + 1 < t->nr; j++)
            if (!strcasecmp(t->r[j].id, r->id))
                return TPL_FAIL(t, "The resource '%.300s' is defined multiple times in a "
                                   "template.",
                                r->id);
    }
    /* dependencies */
    for (size_t i = 0; i < t->nr; i++) {
        res *r = &t->r[i];
        snprintf(where, sizeof where, "template resource [%zu] '%.60s'", i, r->name);
        t->where = where;
        json_t *deps = obj_get_ci(r->def, "dependsOn", NULL);
        if (!deps)
            continue;
        if (!json_is_array(deps) || json_array_size(deps) > ARM_TPL_MAX_RESOURCES)
            return TPL_FAIL(t, "'dependsOn' must be an array of resource names or ids.");
        r->deps = emu_xcalloc(json_array_size(deps) + 1, sizeof *r->deps);
        size_t k;
        json_t *x;
        json_array_foreach(deps, k, x)
        {
            json_t *v = eval_value(t, x, 0);
            if (!v)
                return false;
            if (!json_is_string(v)) {
                json_decref(v);
                return TPL_FAIL(t, "'dependsOn' entries must be strings.");
            }
            size_t idx = 0;
            bool ok = resolve_dep(t, json_string_value(v), &idx);
            json_decref(v);
            if (!ok)
                return false;
            if (idx != i)
                r->deps[r->ndeps++] = idx;
        }
    }
    t->where = saved;
    /* stable topological order: repeatedly take the first resource whose dependencies are in */
    bool *done = emu_xcalloc(t->nr + 1, sizeof *done);
    size_t placed = 0;
    while (placed < t->nr) {
        size_t pick = t->nr;
        for (size_t i = 0; i < t->nr && pick == t->nr; i++) {
            if (done[i])
                continue;
            bool ready = true;
            for (size_t j = 0; j < t->r[i].ndeps; j++)
                ready &= done[t->r[i].deps[j]];
            if (ready)
                pick = i;
        }
        if (pick == t->nr) {
            char names[400] = "";
            size_t o = 0;
            for (size_t i = 0; i < t->nr; i++) {
                if (done[i])
                    continue;
                int w = snprintf(names + o, sizeof names - o, "%s'%s'", o ? ", " : "",
                                 t->r[i].name);
                if (w < 0 || (size_t)w >= sizeof names - o)
                    break;
                o += (size_t)w;
            }
            free(done);
            return TPL_FAIL(t, "Deployment template validation failed: Circular dependency "
                               "detected on resource: %s.",
                            names);
        }
        done[pick] = true;
        t->order[placed++] = pick;
    }
    free(done);
    return true;
}

arm_tpl *arm_tpl_new(const json_t *tmpl, const json_t *parameters, const arm_tpl_env *env,
                     arm_tpl_error *err)
{
    assert(env && env->subscription && env->resource_group);
    memset(err, 0, sizeof *err);
    arm_tpl *t = emu_xcalloc(1, sizeof *t);
    t->env = *env;
    t->err = err;
    if (!json_is_object(tmpl)) {
        TPL_FAIL(t, "The template must be a JSON object.");
        goto fail;
    }
    t->tmpl = json_incref((json_t *)tmpl);
    t->params = parameters ? json_incref((json_t *)parameters) : NULL;
    json_t *schema = obj_get_ci(tmpl, "$schema", NULL);
    if (schema && !json_is_string(schema)) {
        TPL_FAIL(t, "The template '$schema' must be a string.");
        goto fail;
    }
    if (schema && strstr(json_string_value(schema), "subscriptionDeploymentTemplate")) {
        TPL_FAIL(t, "The template is a subscription-level template; cmkemu deploys templates at "
                    "resource-group scope only.");
        goto fail;
    }
    if (obj_get_ci(tmpl, "functions", NULL) &&
        json_array_size(obj_get_ci(tmpl, "functions", NULL)) > 0) {
        TPL_FAIL(t, "User-defined template functions are not supported by cmkemu.");
        goto fail;
    }
    json_t *outs = obj_get_ci(tmpl, "outputs", NULL);
    if (outs && (!json_is_object(outs) || json_object_size(outs) > ARM_TPL_MAX_OUTPUTS)) {
        TPL_FAIL(t, "The template 'outputs' must be an object with at most %d members.",
                 ARM_TPL_MAX_OUTPUTS);
        goto fail;
    }
    if (!load_parameters(t) || !load_variables(t) || !load_resources(t))
        goto fail;
    t->where = NULL;
    return t;
fail:
    arm_tpl_free(t);
    return NULL;
}

void arm_tpl_free(arm_tpl *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->np; i++)
        json_decref(t->p[i].value);
    for (size_t i = 0; i < t->nv; i++)
        json_decref(t->v[i].value);
    for (size_t i = 0; i < t->nr; i++) {
        free(t->r[i].type);
        free(t->r[i].name);
        free(t->r[i].id);
        free(t->r[i].api_version);
        free(t->r[i].deps);
    }
    free(t->p);
    free(t->v);
    free(t->r);
    free(t->order);
    json_decref(t->tmpl);
    json_decref(t->params);
    free(t);
}

size_t arm_tpl_resource_count(const arm_tpl *t)
{
    return t->nr;
}

const char *arm_tpl_resource_id(const arm_tpl *t, size_t i)
{
    return i < t->nr ? t->r[t->order[i]].id : "";
}

const char *arm_tpl_resource_type(const arm_tpl *t, size_t i)
{
    return i < t->nr ? t->r[t->order[i]].type : "";
}

static const char *const NOT_IN_BODY[] = {"type",     "apiVersion", "name",     "dependsOn",
                                          "condition", "comments",  "copy",     "existing",
                                          "metadata",  "scope",     "resources"};

bool arm_tpl_resource_eval(arm_tpl *t, size_t i, arm_tpl_resource *out, arm_tpl_error *err)
{
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    t->err = err;
    assert(i < t->nr);
    res *r = &t->r[t->order[i]];
    char where[200];
    snprintf(where, sizeof where, "template resource [%zu] '%.60s'", t->order[i], r->name);
    t->where = where;
    bool ok = false;
    json_t *body = NULL;
    json_t *cond = obj_get_ci(r->def, "condition", NULL);
    if (cond) {
        json_t *c = eval_value(t, cond, 0);
        if (!c)
            goto out;
        if (!json_is_boolean(c)) {
            json_decref(c);
            TPL_FAIL(t, "the 'condition' must evaluate to a boolean.");
            goto out;
        }
        out->skipped = json_is_false(c);
        json_decref(c);
    }
    json_t *ex = obj_get_ci(r->def, "existing", NULL);
    out->existing = json_is_true(ex);
    body = json_object();
    if (!out->skipped && !out->existing) {
        const char *k;
        json_t *x;
        json_object_foreach(r->def, k, x)
        {
            bool skip = false;
            for (size_t j = 0; j < sizeof NOT_IN_BODY / sizeof NOT_IN_BODY[0]; j++)
                skip |= !strcasecmp(k, NOT_IN_BODY[j]);
            if (skip)
                continue;
            json_t *v = eval_value(t, x, 0);
            if (!v)
                goto out;
            json_object_set_new(body, k, v);
        }
    }
    out->id = emu_xstrdup(r->id);
    out->type = emu_xstrdup(r->type);
    out->name = emu_xstrdup(r->name);
    out->api_version = emu_xstrdup(r->api_version);
    out->body = body;
    body = NULL;
    ok = true;
out:
    json_decref(body);
    t->where = NULL;
    return ok;
}

void arm_tpl_resource_cleanup(arm_tpl_resource *r)
{
    if (!r)
        return;
    free(r->id);
    free(r->type);
    free(r->name);
    free(r->api_version);
    json_decref(r->body);
    memset(r, 0, sizeof *r);
}

json_t *arm_tpl_outputs(arm_tpl *t, arm_tpl_error *err)
{
    memset(err, 0, sizeof *err);
    t->err = err;
    json_t *outs = obj_get_ci(t->tmpl, "outputs", NULL);
    json_t *res = json_object();
    const char *k;
    json_t *d;
    char where[200];
    if (outs)
        json_object_foreach(outs, k, d)
        {
            snprintf(where, sizeof where, "template output '%.100s'", k);
            t->where = where;
            const char *type = json_string_value(obj_get_ci(d, "type", NULL));
            json_t *val = obj_get_ci(d, "value", NULL);
            if (!type || !val) {
                TPL_FAIL(t, "an output must have a 'type' and a 'value'.");
                goto fail;
            }
            json_t *cond = obj_get_ci(d, "condition", NULL);
            if (cond) {
                json_t *c = eval_value(t, cond, 0);
                if (!c)
                    goto fail;
                bool skip = json_is_false(c);
                json_decref(c);
                if (skip)
                    continue;
            }
            json_t *v = eval_value(t, val, 0);
            if (!v)
                goto fail;
            slot s = {.name = k, .def = d};
            if (!check_param(t, &s, &v)) {
                json_decref(v);
                goto fail;
            }
            json_object_set_new(res, k, json_pack("{s:s,s:o}", "type", type, "value", v));
        }
    t->where = NULL;
    return res;
fail:
    t->where = NULL;
    json_decref(res);
    return NULL;
}

json_t *arm_tpl_parameters_report(arm_tpl *t)
{
    json_t *o = json_object();
    for (size_t i = 0; i < t->np; i++) {
        const char *type = json_string_value(obj_get_ci(t->p[i].def, "type", NULL));
        json_t *e = json_pack("{s:s}", "type", type ? type : "String");
        if (!t->p[i].secure && t->p[i].value)
            json_object_set(e, "value", t->p[i].value);
        json_object_set_new(o, t->p[i].name, e);
    }
    return o;
}

json_t *arm_tpl_eval_string(arm_tpl *t, const char *s, arm_tpl_error *err)
{
    memset(err, 0, sizeof *err);
    t->err = err;
    t->where = NULL;
    return eval_string(t, s);
}
