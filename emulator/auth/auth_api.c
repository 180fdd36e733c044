#include "auth_api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "log.h"
#include "util.h"

bool auth_check_secret(auth_t *a, const char *client_or_user, bool by_username,
                       const char *secret, auth_principal *out);

#define TOKEN_LIFETIME 3600

/* ---- helpers --------------------------------------------------------------------------------- */

static void oauth_error(emu_req *req, int status, const char *error, int code, const char *fmt,
                        ...) __attribute__((format(printf, 5, 6)));
static void oauth_error(emu_req *req, int status, const char *error, int code, const char *fmt,
                        ...)
{
    char msg[512], full[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "AADSTS%d: %s", code, msg);
    emu_utf8_repair(full); /* client text in it, or a sequence cut by the size */
    char when[40];
    emu_time_rfc3339(emu_wall_now(), when, sizeof when);
    emu_send_json(req, status,
                  json_pack("{s:s,s:s,s:[i],s:s}", "error", error, "error_description", full,
                            "error_codes", code, "timestamp", when));
}

/* Parses an x-www-form-urlencoded body into a JSON object of strings (arena-free). */
static json_t *parse_form(const emu_req *req)
{
    json_t *o = json_object();
    const char *b = req->body ? req->body : "";
    size_t len = req->body_len, i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && b[j] != '&')
            j++;
        const char *eq = memchr(b + i, '=', j - i);
        size_t nl = eq ? (size_t)(eq - (b + i)) : j - i;
        size_t vl = eq ? j - i - nl - 1 : 0;
        char *name = emu_xmalloc(nl + 1), *value = emu_xmalloc(vl + 1);
        size_t d;
        if (emu_percent_decode(b + i, nl, true, name, &d) &&
            emu_percent_decode(eq ? eq + 1 : "", vl, true, value, &d) && name[0])
            json_object_set_new(o, name, json_string(value));
        free(name);
        free(value);
        i = j + 1;
    }
    return o;
}

/* "https://vault.localhost/.default openid" -> "https://vault.localhost" into out. */
static bool scope_audience(const char *scope, char *out, size_t outlen)
{
    const char *p = scope;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *e = strchr(p, ' ');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n && strncmp(p, "openid", n) && strncmp(p, "profile", n) &&
            strncmp(p, "offline_access", n)) {
            if (n >= outlen)
                return false;
            memcpy(out, p, n);
            out[n] = '\0';
            size_t l = strlen(out);
            if (l >= 9 && !strcmp(out + l - 9, "/.default"))
                out[l -= 9] = '\0';
            else {
                char *slash = strrchr(out, '/');
                if (slash && slash > out + 8)
                    *slash = '\0';
            }
            l = strlen(out);
            while (l && out[l - 1] == '/')
                out[--l] = '\0';
            return l > 0;
        }
        if (!e)
            break;
        p = e + 1;
    }
    return false;
}

static bool tenant_ok(auth_api_ctx *ctx, emu_req *req)
{
    const char *t = emu_req_param(req, 0);
    if (!strcasecmp(t, auth_default_tenant(ctx->auth)) || !strcasecmp(t, "organizations") ||
        !strcasecmp(t, "common"))
        return true;
    oauth_error(req, 400, "invalid_request", 90002,
                "Tenant '%.40s' not found. This emulator's tenant is %s.", t,
                auth_default_tenant(ctx->auth));
    return false;
}

/* ---- discovery ---------------------------------------------------------------------------------- */

static void h_openid(emu_req *req, void *ud)
{
    auth_api_ctx *ctx = ud;
    if (!tenant_ok(ctx, req))
        return;
    const char *base = emu_req_base_url(req);
    const char *t = emu_req_param(req, 0);
    bool v2 = strstr(req->path, "/v2.0/") != NULL;
    char *authz = emu_xasprintf("%s/%s/oauth2/%sauthorize", base, t, v2 ? "v2.0/" : "");
    char *tok = emu_xasprintf("%s/%s/oauth2/%stoken", base, t, v2 ? "v2.0/" : "");
    char *jwks = emu_xasprintf("%s/%s/discovery/%skeys", base, t, v2 ? "v2.0/" : "");
    char *iss = emu_xasprintf("https://sts.windows.net/%s/", auth_default_tenant(ctx->auth));
    json_t *j = json_pack(
        "{s:s,s:s,s:s,s:s,s:[s,s],s:[s],s:[s],s:[s],s:s,s:s}", "issuer", iss,
        "authorization_endpoint", authz, "token_endpoint", tok, "jwks_uri", jwks,
        "response_types_supported", "code", "token", "subject_types_supported", "pairwise",
        "id_token_signing_alg_values_supported", "RS256", "token_endpoint_auth_methods_supported",
        "client_secret_post", "tenant_region_scope", "NA", "cloud_instance_name", "localhost");
    free(authz);
    free(tok);
    free(jwks);
    free(iss);
    emu_send_json(req, 200, j);
}

static void h_jwks(emu_req *req, void *ud)
{
    auth_api_ctx *ctx = ud;
    emu_send_json(req, 200, auth_jwks(ctx->auth));
}

/* ---- token endpoint ------------------------------------------------------------------------------- */

static void send_token(emu_req *req, auth_api_ctx *ctx, const auth_principal *p,
                       const char *audience, bool v1)
{
    char *token = NULL;
    int64_t exp = 0;
    if (!auth_token_issue(ctx->auth, p, audience, TOKEN_LIFETIME, 0, &token, &exp)) {
        oauth_error(req, 500, "temporarily_unavailable", 90033,
                    "The token could not be signed (HSM failure).");
        return;
    }
    json_t *j = json_pack("{s:s,s:i,s:i,s:s}", "token_type", "Bearer", "expires_in",
                          TOKEN_LIFETIME, "ext_expires_in", TOKEN_LIFETIME, "access_token", token);
    if (v1) {
        char buf[32];
        snprintf(buf, sizeof buf, "%lld", (long long)exp);
        json_object_set_new(j, "expires_on", json_string(buf));
        json_object_set_new(j, "resource", json_string(audience));
    }
    free(token);
    emu_log(EMU_LOG_INFO, "auth", "token issued to %s (%s) for %s", p->name, p->oid, audience);
    emu_send_json(req, 200, j);
}

static void token_common(emu_req *req, void *ud, bool v1)
{
    auth_api_ctx *ctx = ud;
    if (!tenant_ok(ctx, req))
        return;
    json_t *f = parse_form(req);
    const char *grant = json_string_value(json_object_get(f, "grant_type"));
    const char *client_id = json_string_value(json_object_get(f, "client_id"));
    const char *secret = json_string_value(json_object_get(f, "client_secret"));
    const char *scope = json_string_value(json_object_get(f, v1 ? "resource" : "scope"));
    char aud[512];
    auth_principal p;
    if (!grant) {
        oauth_error(req, 400, "invalid_request", 900144,
                    "The request body must contain the following parameter: 'grant_type'.");
    } else if (strcmp(grant, "client_credentials") && strcmp(grant, "password")) {
        /* Entra names an unknown grant type before it looks at the scope */
        oauth_error(req, 400, "unsupported_grant_type", 70003,
                    "The grant type '%.40s' is not supported by cmkemu; use client_credentials "
                    "or password.",
                    grant);
    } else if (!scope || !scope_audience(scope, aud, sizeof aud)) {
        oauth_error(req, 400, "invalid_scope", 70011,
                    "The provided value for the input parameter '%s' is not valid; ask for "
                    "'<resource>/.default', e.g. https://vault.localhost/.default.",
                    v1 ? "resource" : "scope");
    } else if (!strcmp(grant, "client_credentials")) {
        if (!client_id || !secret) {
            oauth_error(req, 400, "invalid_request", 900144,
                        "client_credentials needs client_id and client_secret.");
        } else if (!auth_check_secret(ctx->auth, client_id, false, secret, &p)) {
            oauth_error(req, 401, "invalid_client", 7000215,
                        "Invalid client secret provided, or no application with client id "
                        "'%.40s' in tenant %s.",
                        client_id, auth_default_tenant(ctx->auth));
        } else {
            send_token(req, ctx, &p, aud, v1);
        }
    } else { /* password */
        const char *user = json_string_value(json_object_get(f, "username"));
        const char *pw = json_string_value(json_object_get(f, "password"));
        if (!user || !pw || !auth_check_secret(ctx->auth, user, true, pw, &p))
            oauth_error(req, 400, "invalid_grant", 50126,
                        "Error validating credentials due to invalid username or password.");
        else
            send_token(req, ctx, &p, aud, v1);
    }
    if (secret)
        memset((char *)secret, 0, strlen(secret));
    json_decref(f);
}

static void h_token_v2(emu_req *req, void *ud)
{
    token_common(req, ud, false);
}

static void h_token_v1(emu_req *req, void *ud)
{
    token_common(req, ud, true);
}

/* ---- managed identity --------------------------------------------------------------------------------- */

static bool pick_identity(auth_api_ctx *ctx, emu_req *req, auth_principal *p)
{
    const char *cid = emu_req_query(req, "client_id");
    const char *oid = emu_req_query(req, "object_id");
    if (!oid)
        oid = emu_req_query(req, "principal_id");
    const char *res = emu_req_query(req, "mi_res_id");
    if (!res)
        res = emu_req_query(req, "msi_res_id");
    if (cid && *cid)
        return auth_principal_by_appid(ctx->auth, cid, p) &&
               p->kind == AUTH_KIND_MANAGED_IDENTITY;
    if (oid && *oid)
        return auth_principal_get(ctx->auth, oid, p) && p->kind == AUTH_KIND_MANAGED_IDENTITY;
    if (res && *res) {
        const char *slash = strrchr(res, '/');
        const char *name = slash ? slash + 1 : res;
        return auth_principal_by_name(ctx->auth, name, AUTH_KIND_MANAGED_IDENTITY, p);
    }
    return auth_principal_default_of_kind(ctx->auth, AUTH_KIND_MANAGED_IDENTITY, p);
}

static void mi_common(emu_req *req, auth_api_ctx *ctx, bool imds)
{
    if (imds) {
        const char *m = emu_req_header(req, "Metadata");
        if (!m || strcasecmp(m, "true")) {
            emu_send_json(req, 400,
                          json_pack("{s:s,s:s}", "error", "invalid_request", "error_description",
                                    "Required metadata header not specified"));
            return;
        }
    } else {
        const char *h = emu_req_header(req, "X-IDENTITY-HEADER");
        if (!h || !ctx->identity_header || !emu_ct_streq(h, ctx->identity_header)) {
            emu_send_json(req, 401,
                          json_pack("{s:i,s:s}", "statusCode", 401, "message",
                                    "The X-IDENTITY-HEADER header is missing or does not match "
                                    "IDENTITY_HEADER."));
            return;
        }
    }
    const char *resource = emu_req_query(req, "resource");
    char aud[512];
    if (!resource || !scope_audience(resource, aud, sizeof aud)) {
        /* a bare resource without a path is its own audience */
        if (resource && *resource && strlen(resource) < sizeof aud) {
            snprintf(aud, sizeof aud, "%s", resource);
            size_t l = strlen(aud);
            while (l && aud[l - 1] == '/')
                aud[--l] = '\0';
        } else {
            emu_send_json(req, 400,
                          json_pack("{s:s,s:s}", "error", "invalid_request", "error_description",
                                    "Required query variable 'resource' is missing"));
            return;
        }
    }
    auth_principal p;
    if (!pick_identity(ctx, req, &p)) {
        emu_send_json(req, 400,
                      json_pack("{s:s,s:s}", "error", "invalid_request", "error_description",
                                "Identity not found: no managed identity matches the request."));
        return;
    }
    char *token = NULL;
    int64_t exp = 0;
    if (!auth_token_issue(ctx->auth, &p, aud, TOKEN_LIFETIME, 0, &token, &exp)) {
        emu_send_json(req, 500, json_pack("{s:s}", "error", "HSM failure"));
        return;
    }
    char eon[32], nb[32], ein[32];
    snprintf(eon, sizeof eon, "%lld", (long long)exp);
    snprintf(nb, sizeof nb, "%lld", (long long)(exp - TOKEN_LIFETIME));
    snprintf(ein, sizeof ein, "%d", TOKEN_LIFETIME);
    json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "access_token", token, "expires_on",
                          eon, "expires_in", ein, "not_before", nb, "resource", aud, "token_type",
                          "Bearer", "client_id", p.appid);
    free(token);
    emu_send_json(req, 200, j);
}

static void h_imds(emu_req *req, void *ud)
{
    mi_common(req, ud, true);
}

static void h_msi(emu_req *req, void *ud)
{
    mi_common(req, ud, false);
}

/* ---- /_emulator/tokens ---------------------------------------------------------------------------------- */

static void h_mint(emu_req *req, void *ud)
{
    auth_api_ctx *ctx = ud;
    if (auth_get_mode(ctx->auth) == AUTH_STRICT) {
        bool missing;
        char err[300];
        if (!auth_authenticate(ctx->auth, req, AUTH_AUD_ANY, &missing, err, sizeof err)) {
            emu_send_error(req, 401, "Unauthorized", "%s", err);
            return;
        }
        const auth_principal *caller = req->principal;
        if (!caller->emulator_admin) {
            emu_send_error(req, 403, "Forbidden",
                           "Minting tokens needs an emulator admin principal in strict mode.");
            return;
        }
    }
    char err[300];
    json_t *b = emu_req_json(req, false, err, sizeof err);
    if (!b) {
        emu_send_error(req, 400, "BadParameter", "%s", err);
        return;
    }
    const char *who = json_string_value(json_object_get(b, "principal"));
    const char *aud = json_string_value(json_object_get(b, "audience"));
    json_t *lt = json_object_get(b, "lifetime"), *eo = json_object_get(b, "expiresOn"),
           *nbf = json_object_get(b, "notBefore");
    auth_principal p;
    int64_t now = emu_wall_now(), lifetime = TOKEN_LIFETIME, nbf_off = 0;
    if (!who || !aud) {
        emu_send_error(req, 400, "BadParameter",
                       "Send {\"principal\": objectId or clientId, \"audience\": ..., "
                       "\"lifetime\": seconds | \"expiresOn\": unix seconds, \"notBefore\": unix "
                       "seconds}.");
    } else if (!auth_principal_get(ctx->auth, who, &p) &&
               !auth_principal_by_appid(ctx->auth, who, &p)) {
        emu_send_error(req, 404, "PrincipalNotFound", "No principal with object or client id %.40s.",
                       who);
    } else {
        if (json_is_integer(nbf))
            nbf_off = json_integer_value(nbf) - now;
        if (json_is_integer(lt))
            lifetime = json_integer_value(lt);
        else if (json_is_integer(eo))
            lifetime = json_integer_value(eo) - (now + nbf_off);
        char *token = NULL;
        int64_t exp = 0;
        if (!auth_token_issue(ctx->auth, &p, aud, lifetime, nbf_off, &token, &exp)) {
            emu_send_error(req, 500, "HsmFailure", "The token could not be signed.");
        } else {
            emu_send_json(req, 200,
                          json_pack("{s:s,s:I,s:s}", "access_token", token, "expires_on",
                                    (json_int_t)exp, "token_type", "Bearer"));
            free(token);
        }
    }
    json_decref(b);
}

void auth_api_register(emu_router *r, auth_api_ctx *ctx)
{
    emu_router_add(r, "GET", "/{tenant}/v2.0/.well-known/openid-configuration", 0, NULL,
                   h_openid, ctx);
    emu_router_add(r, "GET", "/{tenant}/.well-known/openid-configuration", 0, NULL, h_openid,
                   ctx);
    emu_router_add(r, "GET", "/{tenant}/discovery/v2.0/keys", 0, NULL, h_jwks, ctx);
    emu_router_add(r, "GET", "/{tenant}/discovery/keys", 0, NULL, h_jwks, ctx);
    /* signing uses the HSM: worker pool */
    emu_router_add(r, "POST", "/{tenant}/oauth2/v2.0/token", EMU_ROUTE_SLOW, NULL, h_token_v2,
                   ctx);
    emu_router_add(r, "POST", "/{tenant}/oauth2/token", EMU_ROUTE_SLOW, NULL, h_token_v1, ctx);
    emu_router_add(r, "GET", "/metadata/identity/oauth2/token", EMU_ROUTE_SLOW, NULL, h_imds,
                   ctx);
    emu_router_add(r, "GET", "/msi/token", EMU_ROUTE_SLOW, NULL, h_msi, ctx);
    emu_router_add(r, "POST", "/_emulator/tokens", EMU_ROUTE_SLOW, NULL, h_mint, ctx);
}
