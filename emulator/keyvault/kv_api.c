#include "kv_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "access.h"
#include "log.h"
#include "util.h"

#define MAX_PAGE 25
#define MAX_B64 4096 /* base64url text of a crypto value */
#define MAX_TAGS 15

static const char *API_VERSIONS[] = {"7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6",
                                     "7.6-preview.1", "7.6-preview.2", "2025-06-01-preview",
                                     "2025-07-01", NULL};

/* ---- errors ------------------------------------------------------------------------------ */

void kv_send_error(emu_req *req, kv_status st, const char *msg)
{
    int status = 500;
    const char *code = "InternalServerError", *inner = NULL;
    switch (st) {
    case KV_OK: status = 500; break;
    case KV_ERR_BAD_PARAM: status = 400; code = "BadParameter"; break;
    case KV_ERR_VAULT_NOT_FOUND: status = 404; code = "VaultNotFound"; break;
    case KV_ERR_KEY_NOT_FOUND: status = 404; code = "KeyNotFound"; break;
    case KV_ERR_DELETED_CONFLICT:
        status = 409;
        code = "Conflict";
        inner = "ObjectIsDeletedButRecoverable";
        break;
    case KV_ERR_CONFLICT: status = 409; code = "Conflict"; break;
    case KV_ERR_VAULT_EXISTS: status = 409; code = "Conflict"; break;
    case KV_ERR_PURGE_PROTECTED: status = 403; code = "Forbidden"; break;
    case KV_ERR_DISABLED: status = 403; code = "Forbidden"; inner = "KeyDisabled"; break;
    case KV_ERR_EXPIRED: status = 403; code = "Forbidden"; inner = "KeyExpired"; break;
    case KV_ERR_NOT_YET_VALID: status = 403; code = "Forbidden"; inner = "KeyNotYetValid"; break;
    case KV_ERR_OP_NOT_ALLOWED:
        status = 403;
        code = "Forbidden";
        inner = "KeyOperationNotAllowed";
        break;
    case KV_ERR_FORBIDDEN: status = 403; code = "Forbidden"; inner = "ForbiddenByPolicy"; break;
    case KV_ERR_FORBIDDEN_RBAC: status = 403; code = "Forbidden"; inner = "ForbiddenByRbac"; break;
    case KV_ERR_HSM: status = 500; code = "InternalServerError"; inner = "HsmFailure"; break;
    case KV_ERR_STORE: status = 500; code = "InternalServerError"; inner = "StoreFailure"; break;
    case KV_ERR_HSM_UNAVAILABLE:
        status = 503;
        code = "ServiceUnavailable";
        inner = "HsmUnavailable";
        emu_resp_header_add(req, "Retry-After", "1");
        break;
    }
    char text[1024];
    snprintf(text, sizeof text, "%s", msg ? msg : kv_status_str(st));
    emu_utf8_repair(text); /* client text in it, or a sequence cut by a size */
    json_t *err = json_pack("{s:s,s:s}", "code", code, "message", text);
    if (inner)
        json_object_set_new(err, "innererror", json_pack("{s:s}", "code", inner));
    emu_send_json(req, status, json_pack("{s:o}", "error", err));
}

static void bad(emu_req *req, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bad(emu_req *req, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kv_send_error(req, KV_ERR_BAD_PARAM, msg);
}

/* ---- request context ---------------------------------------------------------------------- */

typedef struct {
    kv_api_ctx *ctx;
    char vault[64];
    const char *base; /* https://host[:port] as the client used */
    const char *api_version;
} kv_call;

static bool host_vault(emu_req *req, kv_api_ctx *ctx, char *vault, size_t len)
{
    char host[256];
    emu_req_hostname(req, host, sizeof host);
    if (!host[0] || !strcmp(host, "localhost") || !strcmp(host, "127.0.0.1") ||
        !strcmp(host, "[::1]") || !strcmp(host, "::1"))
        return kv_vault_default(ctx->kv, vault, len);
    const char *suffix = ".vault.localhost";
    size_t hl = strlen(host), sl = strlen(suffix);
    if (hl > sl && !strcmp(host + hl - sl, suffix) && hl - sl < len) {
        memcpy(vault, host, hl - sl);
        vault[hl - sl] = '\0';
        return strchr(vault, '.') == NULL;
    }
    return false;
}

/* Precheck: the bearer challenge, before the body is read. */
static void kv_precheck(emu_req *req, void *ud)
{
    kv_api_ctx *ctx = ud;
    const char *auth = emu_req_header(req, "Authorization");
    char why[300] = "";
    if (ctx->auth) {
        bool missing = false;
        if (auth_authenticate(ctx->auth, req, AUTH_AUD_KEYVAULT, &missing, why, sizeof why))
            return;
    } else if (auth && !strncasecmp(auth, "Bearer ", 7) && auth[7]) {
        return;
    }
    char challenge[512];
    snprintf(challenge, sizeof challenge,
             "Bearer authorization=\"%s/%s\", resource=\"https://vault.localhost\"",
             emu_req_base_url(req), ctx->tenant);
    emu_resp_header_add(req, "WWW-Authenticate", challenge);
    emu_send_json(req, 401,
                  json_pack("{s:{s:s,s:s}}", "error", "code", "Unauthorized", "message",
                            !auth ? "AKV10000: Request is missing a Bearer or PoP token."
                            : why[0] ? why
                                     : "AKV10022: Invalid audience or token: only Bearer tokens "
                                       "are accepted."));
}

/* ---- service limits (--throttle azure) ------------------------------------------------------ */

enum { TB_CREATE, TB_OTHER };
/* Budgets in units per 10 s: a software RSA create costs 1 of 20, an HSM create 2; another
 * transaction costs 4,000 / (its key type's limit): RSA-2048 1, RSA-HSM-2048 2, RSA-3072 4,
 * RSA-HSM-3072 8, RSA-4096 8, RSA-HSM-4096 16. Requests without a key (list, rng, restore)
 * count as RSA-2048. */
static const long TB_BUDGETS[] = {[TB_CREATE] = 20, [TB_OTHER] = 4000};

emu_throttle *kv_api_throttle_new(emu_throttle_clock_fn clock)
{
    return emu_throttle_new(10000, TB_BUDGETS, 2, clock);
}

static long other_cost(bool hsm, unsigned bits)
{
    long c = bits >= 4096 ? 8 : bits >= 3072 ? 4 : 1;
    return hsm ? 2 * c : c;
}

/* Classifies the request (create or other; key type and size from the body of a create or
 * import, else from the key it names) and takes its cost from the vault's window; false when
 * over the limit, answered 429 with Retry-After and the service's error body. */
static bool throttle_ok(emu_req *req, kv_call *c)
{
    const emu_route *rt = req->route;
    const char *pat = rt->pattern;
    bool put = !strcasecmp(req->method, "PUT") && !strcmp(pat, "/keys/{name}");
    bool create = put || !strcmp(pat, "/keys/{name}/create") ||
                  !strcmp(pat, "/keys/{name}/rotate") || !strcmp(pat, "/keys/restore");
    bool hsm = false;
    unsigned bits = 2048;
    if (put || !strcmp(pat, "/keys/{name}/create")) {
        json_t *b = req->body_len ? json_loadb(req->body, req->body_len, 0, NULL) : NULL;
        json_t *src = put ? json_object_get(b, "key") : b;
        const char *kty = json_string_value(json_object_get(src, "kty"));
        hsm = kty && !strcmp(kty, "RSA-HSM");
        json_decref(b);
    } else if (req->nparams > 0 && (!strncmp(pat, "/keys/{name}", 12) ||
                                    !strncmp(pat, "/deletedkeys/{name}", 19))) {
        kv_key_view v;
        memset(&v, 0, sizeof v);
        kv_err e;
        if (kv_key_get(c->ctx->kv, c->vault, emu_req_param(req, 0), "", &v, &e) == KV_OK) {
            hsm = !strcmp(v.kty, "RSA-HSM");
            bits = v.bits;
            kv_key_view_cleanup(&v);
        }
    }
    long retry = 1;
    if (emu_throttle_take(c->ctx->throttle, c->vault, create ? TB_CREATE : TB_OTHER,
                          create ? (hsm ? 2 : 1) : other_cost(hsm, bits), &retry))
        return true;
    char ra[24];
    snprintf(ra, sizeof ra, "%ld", retry);
    emu_resp_header_add(req, "Retry-After", ra);
    emu_send_json(req, 429,
                  json_pack("{s:{s:s,s:s}}", "error", "code", "Throttled", "message",
                            "Request was not processed because too many requests were "
                            "received. Reason: VaultRequestTypeLimitReached"));
    return false;
}

static bool begin(emu_req *req, void *ud, kv_call *c)
{
    memset(c, 0, sizeof *c);
    c->ctx = ud;
    const char *v = emu_req_query(req, "api-version");
    if (!v || !*v) {
        bad(req, "The 'api-version' query parameter is missing; use e.g. api-version=7.5.");
        return false;
    }
    bool known = false;
    for (int i = 0; API_VERSIONS[i] && !known; i++)
        known = !strcmp(API_VERSIONS[i], v);
    if (!known) {
        char esc[64];
        emu_log_escape(v, 40, esc, sizeof esc);
        bad(req,
            "The specified version (%s) is not recognized. Consider using the latest supported "
            "version (2025-07-01).",
            esc);
        return false;
    }
    c->api_version = v;
    if (!host_vault(req, c->ctx, c->vault, sizeof c->vault)) {
        char host[256], esc[300];
        emu_req_hostname(req, host, sizeof host);
        emu_log_escape(host, 200, esc, sizeof esc);
        kv_send_error(req, KV_ERR_VAULT_NOT_FOUND,
                      "No vault answers at this host; use localhost for the default vault or "
                      "NAME.vault.localhost for a named vault.");
        return false;
    }
    kv_vault_info vi;
    if (kv_vault_get(c->ctx->kv, c->vault, &vi) != KV_OK) {
        char msg[200];
        snprintf(msg, sizeof msg, "Vault '%s' does not exist in this emulator.", c->vault);
        kv_send_error(req, KV_ERR_VAULT_NOT_FOUND, msg);
        return false;
    }
    if (c->ctx->throttle && !throttle_ok(req, c))
        return false;
    c->base = emu_req_base_url(req);
    return true;
}

static bool authorize(emu_req *req, kv_call *c, const char *key, const char *permission)
{
    kv_err e = {{0}};
    /* Without an identity-layer override, the vault's access policies (or RBAC) decide;
     * kv_access_check allows requests that carry no resolved principal. */
    kv_status st = c->ctx->authorize
                       ? c->ctx->authorize(req, c->vault, key, permission, &e,
                                           c->ctx->authorize_ud)
                       : kv_access_authorize(req, c->vault, key, permission, &e, c->ctx->kv);
    if (st == KV_OK)
        return true;
    kv_send_error(req, st, e.msg);
    return false;
}

static json_t *body_json(emu_req *req, bool allow_empty)
{
    char err[300];
    json_t *j = emu_req_json(req, allow_empty, err, sizeof err);
    if (!j)
        bad(req, "%s", err);
    return j;
}

/* ---- JSON shapes ---------------------------------------------------------------------------- */

static char *kid(const kv_call *c, const kv_key_view *v, bool versioned)
{
    if (versioned)
        return emu_xasprintf("%s/keys/%s/%s", c->base, v->name, v->version);
    return emu_xasprintf("%s/keys/%s", c->base, v->name);
}

static json_t *b64_json(const uint8_t *b, size_t n)
{
    char *s = emu_b64url_encode(b, n);
    json_t *j = json_string(s);
    free(s);
    return j;
}

static json_t *attrs_json(const kv_key_view *v)
{
    json_t *a = json_pack("{s:b,s:I,s:I,s:s,s:b}", "enabled", v->enabled, "created",
                          (json_int_t)v->created, "updated", (json_int_t)v->updated,
                          "recoveryLevel", v->recovery_level, "exportable", 0);
    if (v->nbf)
        json_object_set_new(a, "nbf", json_integer(v->nbf));
    if (v->exp)
        json_object_set_new(a, "exp", json_integer(v->exp));
    if (v->recoverable_days)
        json_object_set_new(a, "recoverableDays", json_integer(v->recoverable_days));
    return a;
}

static void add_deleted(json_t *j, const kv_call *c, const kv_key_view *v)
{
    if (!v->deleted)
        return;
    char *rid = emu_xasprintf("%s/deletedkeys/%s", c->base, v->name);
    json_object_set_new(j, "recoveryId", json_string(rid));
    free(rid);
    json_object_set_new(j, "deletedDate", json_integer(v->deleted_date));
    if (v->scheduled_purge)
        json_object_set_new(j, "scheduledPurgeDate", json_integer(v->scheduled_purge));
}

static json_t *bundle_json(const kv_call *c, const kv_key_view *v)
{
    char *k = kid(c, v, true);
    json_t *key = json_pack("{s:s,s:s,s:o,s:o,s:o}", "kid", k, "kty", v->kty, "key_ops",
                            kv_ops_json(v->ops), "n", b64_json(v->n, v->n_len), "e",
                            b64_json(v->e, v->e_len));
    free(k);
    json_t *j = json_pack("{s:o,s:o}", "key", key, "attributes", attrs_json(v));
    if (v->tags && json_object_size(v->tags))
        json_object_set(j, "tags", v->tags);
    add_deleted(j, c, v);
    return j;
}

static json_t *item_json(const kv_call *c, const kv_key_view *v, bool versioned)
{
    char *k = kid(c, v, versioned);
    json_t *j = json_pack("{s:s,s:o}", "kid", k, "attributes", attrs_json(v));
    free(k);
    if (v->tags && json_object_size(v->tags))
        json_object_set(j, "tags", v->tags);
    add_deleted(j, c, v);
    return j;
}

static void send_bundle(emu_req *req, const kv_call *c, kv_key_view *v)
{
    emu_send_json(req, 200, bundle_json(c, v));
    kv_key_view_cleanup(v);
}

/* ---- parsing --------------------------------------------------------------------------------- */

static bool parse_time(emu_req *req, json_t *a, const char *name, bool *has, int64_t *out)
{
    json_t *t = json_object_get(a, name);
    if (!t)
        return true;
    *has = true;
    if (json_is_null(t)) {
        *out = 0;
        return true;
    }
    if (!json_is_integer(t) || json_integer_value(t) <= 0 ||
        json_integer_value(t) > 253402300799LL) {
        bad(req, "attributes.%s must be a time in seconds since 1970 (an integer).", name);
        return false;
    }
    *out = json_integer_value(t);
    return true;
}

typedef struct {
    bool has_enabled, enabled, has_nbf, has_exp;
    int64_t nbf, exp;
} attrs_in;

static bool parse_attrs(emu_req *req, json_t *body, attrs_in *a)
{
    memset(a, 0, sizeof *a);
    json_t *at = json_object_get(body, "attributes");
    if (!at || json_is_null(at))
        return true;
    if (!json_is_object(at)) {
        bad(req, "attributes must be an object.");
        return false;
    }
    json_t *en = json_object_get(at, "enabled");
    if (en && !json_is_null(en)) {
        if (!json_is_boolean(en)) {
            bad(req, "attributes.enabled must be true or false.");
            return false;
        }
        a->has_enabled = true;
        a->enabled = json_is_true(en);
    }
    return parse_time(req, at, "nbf", &a->has_nbf, &a->nbf) &&
           parse_time(req, at, "exp", &a->has_exp, &a->exp);
}

/* tags: NULL (absent), or a validated object. Returns false after sending 400. */
static bool parse_tags(emu_req *req, json_t *body, json_t **tags)
{
    *tags = NULL;
    json_t *t = json_object_get(body, "tags");
    if (!t || json_is_null(t))
        return true;
    if (!json_is_object(t) || json_object_size(t) > MAX_TAGS) {
        bad(req, "tags must be an object of at most %d string values.", MAX_TAGS);
        return false;
    }
    const char *k;
    json_t *v;
    json_object_foreach(t, k, v)
    {
        if (!json_is_string(v) || strlen(k) > 512 || strlen(json_string_value(v)) > 256) {
            bad(req, "tag '%.40s' must have a string value; names up to 512 and values up to 256 "
                     "characters.",
                k);
            return false;
        }
    }
    *tags = t;
    return true;
}

static bool parse_ops(emu_req *req, json_t *arr, bool *has, unsigned *ops)
{
    *has = false;
    if (!arr || json_is_null(arr))
        return true;
    kv_err e;
    if (!kv_ops_parse(arr, ops, &e)) {
        kv_send_error(req, KV_ERR_BAD_PARAM, e.msg);
        return false;
    }
    *has = true;
    return true;
}

/* base64url field -> bytes (malloc'd). Sends 400 and returns NULL on error. */
static uint8_t *parse_b64(emu_req *req, json_t *body, const char *field, size_t *len)
{
    const char *s = json_string_value(json_object_get(body, field));
    if (!s) {
        bad(req, "The '%s' field (base64url) is required.", field);
        return NULL;
    }
    size_t sl = strlen(s);
    uint8_t *b = sl <= MAX_B64 ? emu_b64url_decode(s, sl, MAX_B64, len) : NULL;
    if (!b)
        bad(req, "The '%s' field is not valid base64url (or longer than %d characters).", field,
            MAX_B64);
    return b;
}

static const struct {
    const char *name;
    hsm_rsa_enc_alg alg;
} ENC_ALGS[] = {
    {"RSA-OAEP", HSM_RSA_OAEP_SHA1}, {"RSA-OAEP-256", HSM_RSA_OAEP_SHA256}, {"RSA1_5", HSM_RSA_PKCS1}};

static const struct {
    const char *name;
    hsm_sig_alg alg;
} SIG_ALGS[] = {{"RS256", HSM_RS256}, {"RS384", HSM_RS384}, {"RS512", HSM_RS512},
                {"PS256", HSM_PS256}, {"PS384", HSM_PS384}, {"PS512", HSM_PS512}};

/* ---- handlers: keys --------------------------------------------------------------------------- */

static void h_create(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "create"))
        return;
    json_t *body = body_json(req, false);
    if (!body)
        return;
    kv_create_params p = {.bits = 2048};
    attrs_in a;
    json_t *tags;
    bool has_ops;
    const char *kty = json_string_value(json_object_get(body, "kty"));
    json_t *ks = json_object_get(body, "key_size");
    json_t *pe = json_object_get(body, "public_exponent");
    json_t *rp = json_object_get(body, "release_policy");
    if (!kty) {
        bad(req, "The 'kty' field is required (RSA or RSA-HSM).");
        goto out;
    }
    if (strcmp(kty, "RSA") && strcmp(kty, "RSA-HSM")) {
        bad(req,
            "Key type '%.20s' is not supported by cmkemu: only RSA and RSA-HSM keys (EC and oct "
            "keys are not emulated).",
            kty);
        goto out;
    }
    p.hsm = !strcmp(kty, "RSA-HSM");
    if (ks && !json_is_null(ks)) {
        if (!json_is_integer(ks)) {
            bad(req, "key_size must be an integer (2048, 3072 or 4096).");
            goto out;
        }
        json_int_t v = json_integer_value(ks);
        if (v != 2048 && v != 3072 && v != 4096) {
            bad(req, "The key size %lld is not supported for RSA keys: use 2048, 3072 or 4096.",
                (long long)v);
            goto out;
        }
        p.bits = (unsigned)v;
    }
    if (pe && !json_is_null(pe)) {
        if (!json_is_integer(pe) || json_integer_value(pe) < 3 ||
            json_integer_value(pe) > 0x7fffffff || !(json_integer_value(pe) & 1)) {
            bad(req, "public_exponent must be an odd integer of at least 3 (usually 65537).");
            goto out;
        }
        p.exponent = (unsigned long)json_integer_value(pe);
    }
    if (rp && !json_is_null(rp)) {
        bad(req, "Key release policies (secure key release) are not supported by cmkemu.");
        goto out;
    }
    if (!parse_ops(req, json_object_get(body, "key_ops"), &has_ops, &p.ops) ||
        !parse_attrs(req, body, &a) || !parse_tags(req, body, &tags))
        goto out;
    if (has_ops && !p.ops) {
        bad(req, "key_ops must not be empty.");
        goto out;
    }
    p.has_enabled = a.has_enabled;
    p.enabled = a.enabled;
    p.nbf = a.nbf;
    p.exp = a.exp;
    p.tags = tags;
    kv_key_view v;
    kv_err e;
    kv_status st = kv_key_create(c.ctx->kv, c.vault, name, &p, &v, &e);
    if (st != KV_OK)
        kv_send_error(req, st, e.msg);
    else
        send_bundle(req, &c, &v);
out:
    json_decref(body);
}

static void h_import(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "import"))
        return;
    json_t *body = body_json(req, false);
    if (!body)
        return;
    static const char *FIELDS[] = {"n", "e", "d", "p", "q", "dp", "dq", "qi"};
    uint8_t *parts[8] = {0};
    size_t lens[8] = {0};
    json_t *jwk = json_object_get(body, "key");
    attrs_in a;
    json_t *tags;
    bool has_ops;
    kv_create_params p = {0};
    if (!json_is_object(jwk)) {
        bad(req, "The 'key' field (a JSON Web Key) is required.");
        goto out;
    }
    const char *kty = json_string_value(json_object_get(jwk, "kty"));
    if (!kty || (strcmp(kty, "RSA") && strcmp(kty, "RSA-HSM"))) {
        bad(req, "Only RSA keys can be imported into cmkemu (kty RSA or RSA-HSM).");
        goto out;
    }
    for (int i = 0; i < 8; i++) {
        const char *s = json_string_value(json_object_get(jwk, FIELDS[i]));
        if (!s) {
            if (i < 5) {
                bad(req, "The RSA key to import needs key.%s (base64url): a private key with n, "
                         "e, d, p and q.",
                    FIELDS[i]);
                goto out;
            }
            continue;
        }
        parts[i] = emu_b64url_decode(s, strlen(s), 1024, &lens[i]);
        if (!parts[i]) {
            bad(req, "key.%s is not valid base64url.", FIELDS[i]);
            goto out;
        }
    }
    json_t *hsm = json_object_get(body, "Hsm");
    p.hsm = !strcmp(kty, "RSA-HSM") || json_is_true(hsm);
    if (!parse_ops(req, json_object_get(jwk, "key_ops"), &has_ops, &p.ops) ||
        !parse_attrs(req, body, &a) || !parse_tags(req, body, &tags))
        goto out;
    p.has_enabled = a.has_enabled;
    p.enabled = a.enabled;
    p.nbf = a.nbf;
    p.exp = a.exp;
    p.tags = tags;
    hsm_rsa_components comp = {parts[0], parts[1], parts[2], parts[3], parts[4], parts[5],
                               parts[6], parts[7], lens[0],  lens[1],  lens[2],  lens[3],
                               lens[4],  lens[5],  lens[6],  lens[7]};
    kv_key_view v;
    kv_err e;
    kv_status st = kv_key_import(c.ctx->kv, c.vault, name, &comp, &p, &v, &e);
    if (st != KV_OK)
        kv_send_error(req, st, e.msg);
    else
        send_bundle(req, &c, &v);
out:
    for (int i = 0; i < 8; i++) {
        if (parts[i])
            OPENSSL_cleanse(parts[i], lens[i]);
        free(parts[i]);
    }
    /* the request body held private key material: wipe it */
    if (req->body)
        OPENSSL_cleanse((void *)req->body, req->body_len);
    json_decref(body);
}

static void h_get(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "get"))
        return;
    kv_key_view v;
    kv_err e;
    kv_status st = kv_key_get(c.ctx->kv, c.vault, name, emu_req_param(req, 1), &v, &e);
    if (st != KV_OK)
        kv_send_error(req, st, e.msg);
    else
        send_bundle(req, &c, &v);
}

static void h_update(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "update"))
        return;
    json_t *body = body_json(req, true);
    if (!body)
        return;
    kv_update_params p = {0};
    attrs_in a;
    json_t *tags;
    if (!parse_ops(req, json_object_get(body, "key_ops"), &p.has_ops, &p.ops) ||
        !parse_attrs(req, body, &a) || !parse_tags(req, body, &tags))
        goto out;
    p.has_enabled = a.has_enabled;
    p.enabled = a.enabled;
    p.has_nbf = a.has_nbf;
    p.nbf = a.nbf;
    p.has_exp = a.has_exp;
    p.exp = a.exp;
    p.tags = tags;
    kv_key_view v;
    kv_err e;
    kv_status st = kv_key_update(c.ctx->kv, c.vault, name, emu_req_param(req, 1), &p, &v, &e);
    if (st != KV_OK)
        kv_send_error(req, st, e.msg);
    else
        send_bundle(req, &c, &v);
out:
    json_decref(body);
}

static bool page_size(emu_req *req, size_t *max)
{
    const char *m = emu_req_query(req, "maxresults");
    int64_t v = MAX_PAGE;
    if (m && *m && !emu_parse_i64(m, 1, MAX_PAGE, &v)) {
        bad(req, "maxresults must be a whole number from 1 to %d.", MAX_PAGE);
        return false;
    }
    *max = (size_t)v;
    return true;
}

/* nextLink for a list: path + query with a skip token (base64url of the last name or the
 * next index). */
static json_t *next_link(const kv_call *c, const char *path, size_t max, const char *token)
{
    char *t = emu_b64url_encode((const uint8_t *)token, strlen(token));
    char *s = emu_xasprintf("%s%s?api-version=%s&maxresults=%zu&$skiptoken=%s", c->base, path,
                            c->api_version, max, t);
    free(t);
    json_t *j = json_string(s);
    free(s);
    return j;
}

static bool skip_token(emu_req *req, char *out, size_t outlen)
{
    out[0] = '\0';
    const char *t = emu_req_query(req, "$skiptoken");
    if (!t || !*t)
        return true;
    size_t n = 0;
    uint8_t *d = emu_b64url_decode(t, strlen(t), outlen - 1, &n);
    if (!d) {
        bad(req, "$skiptoken is not a token this emulator issued.");
        return false;
    }
    memcpy(out, d, n);
    out[n] = '\0';
    free(d);
    return true;
}

static void list_common(emu_req *req, void *ud, bool deleted)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    if (!authorize(req, &c, NULL, "list"))
        return;
    size_t max;
    char after[160];
    if (!page_size(req, &max) || !skip_token(req, after, sizeof after))
        return;
    kv_key_view views[MAX_PAGE];
    size_t n;
    bool more;
    kv_err e;
    kv_status st = deleted ? kv_deleted_list(c.ctx->kv, c.vault, after, max, views, &n, &more, &e)
                           : kv_key_list(c.ctx->kv, c.vault, after, max, views, &n, &more, &e);
    if (st != KV_OK) {
        kv_send_error(req, st, e.msg);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(arr, item_json(&c, &views[i], false));
    }
    json_t *j = json_pack("{s:o}", "value", arr);
    json_object_set_new(j, "nextLink",
                        more && n ? next_link(&c, deleted ? "/deletedkeys" : "/keys", max,
                                              views[n - 1].name)
                                  : json_null());
    for (size_t i = 0; i < n; i++)
        kv_key_view_cleanup(&views[i]);
    emu_send_json(req, 200, j);
}

static void h_list(emu_req *req, void *ud)
{
    list_common(req, ud, false);
}

static void h_deleted_list(emu_req *req, void *ud)
{
    list_common(req, ud, true);
}

static void h_versions(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "list"))
        return;
    size_t max;
    char tok[32];
    if (!page_size(req, &max) || !skip_token(req, tok, sizeof tok))
        return;
    int64_t start = 0;
    if (tok[0] && !emu_parse_i64(tok, 0, 100000000, &start)) {
        bad(req, "$skiptoken is not a token this emulator issued.");
        return;
    }
    kv_key_view views[MAX_PAGE];
    size_t n;
    bool more;
    kv_err e;
    kv_status st =
        kv_key_versions(c.ctx->kv, c.vault, name, (size_t)start, max, views, &n, &more, &e);
    if (st != KV_OK) {
        kv_send_error(req, st, e.msg);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, item_json(&c, &views[i], true));
    json_t *j = json_pack("{s:o}", "value", arr);
    if (more) {
        char path[200], next[32];
        snprintf(path, sizeof path, "/keys/%s/versions", n ? views[0].name : name);
        snprintf(next, sizeof next, "%lld", (long long)(start + (int64_t)n));
        json_object_set_new(j, "nextLink", next_link(&c, path, max, next));
    } else {
        json_object_set_new(j, "nextLink", json_null());
    }
    for (size_t i = 0; i < n; i++)
        kv_key_view_cleanup(&views[i]);
    emu_send_json(req, 200, j);
}

static void h_delete(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "delete"))
        return;
    kv_key_view v;
    kv_err e;
    kv_status st = kv_key_delete(c.ctx->kv, c.vault, name, &v, &e);
    if (st != KV_OK) {
        kv_send_error(req, st, e.msg);
        return;
    }
    kv_vault_info vi;
    if (kv_vault_get(c.ctx->kv, c.vault, &vi) == KV_OK && !vi.soft_delete)
        v.deleted = false; /* purged at once: no recoveryId, the SDK poller ends */
    send_bundle(req, &c, &v);
}

static void h_deleted_get(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "get"))
        return;
    kv_key_view v;
    kv_err e;
    kv_status st = kv_deleted_get(c.ctx->kv, c.vault, name, &v, &e);
    if (st != KV_OK)
        kv_send_error(req, st, e.msg);
    else
        send_bundle(req, &c, &v);
}

static void h_purge(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "purge"))
        return;
    kv_err e;
    kv_status st = kv_deleted_purge(c.ctx->kv, c.vault, name, &e);
    if (st != KV_OK)
        kv_send_error(req, st, e.msg);
    else
        emu_send_empty(req, 204);
}

static void h_recover(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "recover"))
        return;
    kv_key_view v;
    kv_err e;
    kv_status st = kv_deleted_recover(c.ctx->kv, c.vault, name, &v, &e);
    if (st != KV_OK)
        kv_send_error(req, st, e.msg);
    else
        send_bundle(req, &c, &v);
}

/* ---- crypto ------------------------------------------------------------------------------------ */

typedef struct {
    const char *path_op;  /* last path word */
    const char *perm;     /* permission */
    kv_crypt_op op;
    int kind;             /* 0 = crypt, 1 = sign, 2 = verify */
} crypto_route;

static const crypto_route CRYPTO_ROUTES[] = {
    {"encrypt", "encrypt", KV_CRYPT_ENCRYPT, 0}, {"decrypt", "decrypt", KV_CRYPT_DECRYPT, 0},
    {"wrapkey", "wrapKey", KV_CRYPT_WRAP, 0},    {"unwrapkey", "unwrapKey", KV_CRYPT_UNWRAP, 0},
    {"sign", "sign", 0, 1},                      {"verify", "verify", 0, 2},
};

static void crypto_common(emu_req *req, void *ud, const crypto_route *cr, const char *version)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, cr->perm))
        return;
    json_t *body = body_json(req, false);
    if (!body)
        return;
    uint8_t *in = NULL, *sig = NULL;
    size_t in_len = 0, sig_len = 0;
    const char *alg = json_string_value(json_object_get(body, "alg"));
    if (!alg) {
        bad(req, "The 'alg' field is required.");
        goto out;
    }
    char ver[33] = "";
    kv_err e;
    kv_status st;
    uint8_t out[512];
    size_t out_len = sizeof out;
    kv_key_view kvv = {0};
    (void)kvv;
    if (cr->kind == 0) {
        int a = -1;
        for (size_t i = 0; i < sizeof ENC_ALGS / sizeof ENC_ALGS[0]; i++)
            if (!strcmp(alg, ENC_ALGS[i].name))
                a = (int)i;
        if (a < 0) {
            bad(req, "Algorithm '%.30s' is not supported for %s: use RSA-OAEP, RSA-OAEP-256 or "
                     "RSA1_5.",
                alg, cr->perm);
            goto out;
        }
        if (!(in = parse_b64(req, body, "value", &in_len)))
            goto out;
        st = kv_key_crypt(c.ctx->kv, c.vault, name, version, cr->op, ENC_ALGS[a].alg, in, in_len,
                          out, &out_len, ver, &e);
        if (st != KV_OK) {
            kv_send_error(req, st, e.msg);
            goto out;
        }
    } else {
        int a = -1;
        for (size_t i = 0; i < sizeof SIG_ALGS / sizeof SIG_ALGS[0]; i++)
            if (!strcmp(alg, SIG_ALGS[i].name))
                a = (int)i;
        if (a < 0) {
            bad(req, "Algorithm '%.30s' is not supported: use RS256, RS384, RS512, PS256, PS384 "
                     "or PS512.",
                alg);
            goto out;
        }
        if (cr->kind == 1) {
            if (!(in = parse_b64(req, body, "value", &in_len)))
                goto out;
            st = kv_key_sign(c.ctx->kv, c.vault, name, version, SIG_ALGS[a].alg, in, in_len, out,
                             &out_len, ver, &e);
        } else {
            bool valid = false;
            if (!(in = parse_b64(req, body, "digest", &in_len)) ||
                !(sig = parse_b64(req, body, "value", &sig_len)))
                goto out;
            st = kv_key_verify(c.ctx->kv, c.vault, name, version, SIG_ALGS[a].alg, in, in_len,
                               sig, sig_len, &valid, ver, &e);
            if (st == KV_OK) {
                emu_send_json(req, 200, json_pack("{s:b}", "value", valid));
                goto out;
            }
        }
        if (st != KV_OK) {
            kv_send_error(req, st, e.msg);
            goto out;
        }
    }
    char *k = emu_xasprintf("%s/keys/%s/%s", c.base, name, ver);
    json_t *res = json_pack("{s:s,s:o}", "kid", k, "value", b64_json(out, out_len));
    free(k);
    OPENSSL_cleanse(out, sizeof out);
    emu_send_json(req, 200, res);
out:
    if (in) {
        OPENSSL_cleanse(in, in_len);
        free(in);
    }
    free(sig);
    json_decref(body);
}

#define CRYPTO_HANDLERS(i)                                                                    \
    static void h_crypto_latest_##i(emu_req *req, void *ud)                                  \
    {                                                                                         \
        crypto_common(req, ud, &CRYPTO_ROUTES[i], "");                                        \
    }                                                                                         \
    static void h_crypto_version_##i(emu_req *req, void *ud)                                 \
    {                                                                                         \
        crypto_common(req, ud, &CRYPTO_ROUTES[i], emu_req_param(req, 1));                     \
    }
CRYPTO_HANDLERS(0)
CRYPTO_HANDLERS(1)
CRYPTO_HANDLERS(2)
CRYPTO_HANDLERS(3)
CRYPTO_HANDLERS(4)
CRYPTO_HANDLERS(5)

/* ---- backup, restore, rotate, rotation policy, rng ------------------------------------------------ */

static void h_backup(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "backup"))
        return;
    char *blob = NULL;
    kv_err e;
    kv_status st = kv_key_backup(c.ctx->kv, c.vault, name, &blob, &e);
    if (st != KV_OK) {
        kv_send_error(req, st, e.msg);
        return;
    }
    emu_send_json(req, 200, json_pack("{s:s}", "value", blob));
    free(blob);
}

static void h_restore(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    if (!authorize(req, &c, NULL, "restore"))
        return;
    json_t *body = body_json(req, false);
    if (!body)
        return;
    const char *blob = json_string_value(json_object_get(body, "value"));
    if (!blob) {
        bad(req, "The 'value' field (the backup blob) is required.");
    } else {
        kv_key_view v;
        kv_err e;
        kv_status st = kv_key_restore(c.ctx->kv, c.vault, blob, strlen(blob), &v, &e);
        if (st != KV_OK)
            kv_send_error(req, st, e.msg);
        else
            send_bundle(req, &c, &v);
    }
    json_decref(body);
}

static void h_rotate(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "rotate"))
        return;
    kv_key_view v;
    kv_err e;
    kv_status st = kv_key_rotate(c.ctx->kv, c.vault, name, &v, &e);
    if (st != KV_OK)
        kv_send_error(req, st, e.msg);
    else
        send_bundle(req, &c, &v);
}

static void send_policy(emu_req *req, const kv_call *c, const char *name, json_t *policy)
{
    char *id = emu_xasprintf("%s/keys/%s/rotationpolicy", c->base, name);
    json_object_set_new(policy, "id", json_string(id));
    free(id);
    emu_send_json(req, 200, policy);
}

static void h_policy_get(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "getrotationpolicy"))
        return;
    json_t *policy = NULL;
    kv_err e;
    kv_status st = kv_rotation_policy_get(c.ctx->kv, c.vault, name, &policy, &e);
    if (st != KV_OK)
        kv_send_error(req, st, e.msg);
    else
        send_policy(req, &c, name, policy);
}

static void h_policy_put(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    const char *name = emu_req_param(req, 0);
    if (!authorize(req, &c, name, "setrotationpolicy"))
        return;
    json_t *body = body_json(req, false);
    if (!body)
        return;
    json_t *policy = NULL;
    kv_err e;
    kv_status st = kv_rotation_policy_set(c.ctx->kv, c.vault, name, body, &policy, &e);
    if (st != KV_OK)
        kv_send_error(req, st, e.msg);
    else
        send_policy(req, &c, name, policy);
    json_decref(body);
}

static void h_rng(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    json_t *body = body_json(req, false);
    if (!body)
        return;
    json_t *cnt = json_object_get(body, "count");
    if (!json_is_integer(cnt) || json_integer_value(cnt) < 1 || json_integer_value(cnt) > 128) {
        bad(req, "count must be an integer from 1 to 128.");
    } else {
        uint8_t buf[128];
        size_t n = (size_t)json_integer_value(cnt);
        kv_err e;
        kv_status st = kv_random(c.ctx->kv, buf, n, &e);
        if (st != KV_OK)
            kv_send_error(req, st, e.msg);
        else
            emu_send_json(req, 200, json_pack("{s:o}", "value", b64_json(buf, n)));
    }
    json_decref(body);
}

static void h_release(emu_req *req, void *ud)
{
    kv_call c;
    if (!begin(req, ud, &c))
        return;
    bad(req, "Key release (secure key release) is not supported by cmkemu: its keys are not "
             "exportable.");
}

void kv_api_register(emu_router *r, kv_api_ctx *ctx)
{
    emu_handler_fn pre = kv_precheck;
    /* specific patterns first */
    emu_router_add(r, "POST", "/keys/restore", EMU_ROUTE_SLOW, pre, h_restore, ctx);
    emu_router_add(r, "GET", "/keys", 0, pre, h_list, ctx);
    emu_router_add(r, "GET", "/deletedkeys", 0, pre, h_deleted_list, ctx);
    emu_router_add(r, "GET", "/deletedkeys/{name}", 0, pre, h_deleted_get, ctx);
    emu_router_add(r, "DELETE", "/deletedkeys/{name}", EMU_ROUTE_SLOW, pre, h_purge, ctx);
    emu_router_add(r, "POST", "/deletedkeys/{name}/recover", EMU_ROUTE_SLOW, pre, h_recover, ctx);
    emu_router_add(r, "POST", "/rng", 0, pre, h_rng, ctx);
    emu_router_add(r, "POST", "/keys/{name}/create", EMU_ROUTE_SLOW, pre, h_create, ctx);
    emu_router_add(r, "POST", "/keys/{name}/backup", EMU_ROUTE_SLOW, pre, h_backup, ctx);
    emu_router_add(r, "POST", "/keys/{name}/rotate", EMU_ROUTE_SLOW, pre, h_rotate, ctx);
    emu_router_add(r, "GET", "/keys/{name}/versions", 0, pre, h_versions, ctx);
    emu_router_add(r, "GET", "/keys/{name}/rotationpolicy", 0, pre, h_policy_get, ctx);
    emu_router_add(r, "PUT", "/keys/{name}/rotationpolicy", EMU_ROUTE_SLOW, pre, h_policy_put,
                   ctx);
    static const struct {
        emu_handler_fn latest, version;
        const char *p1, *p2;
        unsigned flags;
    } C[] = {
        {h_crypto_latest_0, h_crypto_version_0, "/keys/{name}/encrypt",
         "/keys/{name}/{version}/encrypt", 0},
        {h_crypto_latest_1, h_crypto_version_1, "/keys/{name}/decrypt",
         "/keys/{name}/{version}/decrypt", EMU_ROUTE_SLOW},
        {h_crypto_latest_2, h_crypto_version_2, "/keys/{name}/wrapkey",
         "/keys/{name}/{version}/wrapkey", 0},
        {h_crypto_latest_3, h_crypto_version_3, "/keys/{name}/unwrapkey",
         "/keys/{name}/{version}/unwrapkey", EMU_ROUTE_SLOW},
        {h_crypto_latest_4, h_crypto_version_4, "/keys/{name}/sign",
         "/keys/{name}/{version}/sign", EMU_ROUTE_SLOW},
        {h_crypto_latest_5, h_crypto_version_5, "/keys/{name}/verify",
         "/keys/{name}/{version}/verify", 0},
    };
    for (size_t i = 0; i < sizeof C / sizeof C[0]; i++) {
        emu_router_add(r, "POST", C[i].p1, C[i].flags, pre, C[i].latest, ctx);
        emu_router_add(r, "POST", C[i].p2, C[i].flags, pre, C[i].version, ctx);
    }
    emu_router_add(r, "POST", "/keys/{name}/release", 0, pre, h_release, ctx);
    emu_router_add(r, "POST", "/keys/{name}/{version}/release", 0, pre, h_release, ctx);
    emu_router_add(r, "PUT", "/keys/{name}", EMU_ROUTE_SLOW, pre, h_import, ctx);
    emu_router_add(r, "GET", "/keys/{name}", 0, pre, h_get, ctx);
    emu_router_add(r, "GET", "/keys/{name}/{version}", 0, pre, h_get, ctx);
    emu_router_add(r, "PATCH", "/keys/{name}", EMU_ROUTE_SLOW, pre, h_update, ctx);
    emu_router_add(r, "PATCH", "/keys/{name}/{version}", EMU_ROUTE_SLOW, pre, h_update, ctx);
    emu_router_add(r, "DELETE", "/keys/{name}", EMU_ROUTE_SLOW, pre, h_delete, ctx);
}
