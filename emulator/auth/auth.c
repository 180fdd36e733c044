#include "auth.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "clock.h"
#include "log.h"
#include "util.h"

#define MAX_TOKEN 8192

typedef struct {
    auth_principal p;
    char username[128];
    uint8_t salt[16];
    uint8_t secret_hash[32];
    bool has_secret;
    bool is_default;
} principal_rec;

/* A token whose signature, alg and kid were verified, with the claims the per-request checks
 * need. Keyed by SHA-256 of the token text; direct-mapped (a collision replaces). Only valid
 * signatures are cached; every hit still checks issuer, audience, exp/nbf (against now) and
 * that the principal exists. Hashes, not tokens, are kept. */
#define TOKEN_CACHE_SLOTS 1024
typedef struct {
    bool used;
    uint8_t hash[32];
    char oid[40], tid[40], appid[40];
    char iss[128];
    char aud[256];
    int64_t exp;
    bool has_exp, has_nbf;
    int64_t nbf;
} token_claims;

struct auth {
    pthread_mutex_t lock; /* protects recs */
    pthread_mutex_t tlock; /* protects tcache, tcache_hits */
    token_claims *tcache;
    uint64_t tcache_hits;
    emu_store *store;
    hsm_t *hsm;
    auth_mode mode;
    char tenant[40];
    uint8_t key_id[HSM_ID_LEN];
    char kid[64];
    json_t *jwks;
    principal_rec *recs;
    size_t nrecs, caprecs;
};

static const emu_migration AUTH_MIGRATIONS[] = {
    {"auth", 1,
     "CREATE TABLE auth_principals(oid TEXT PRIMARY KEY, kind INTEGER NOT NULL,"
     " appid TEXT NOT NULL, tenant TEXT NOT NULL, name TEXT NOT NULL, username TEXT NOT NULL,"
     " salt BLOB, secret_hash BLOB, emulator_admin INTEGER NOT NULL,"
     " is_default INTEGER NOT NULL);"},
};

const char *auth_principal_kind_str(auth_principal_kind k)
{
    switch (k) {
    case AUTH_KIND_USER: return "User";
    case AUTH_KIND_SERVICE_PRINCIPAL: return "Application";
    case AUTH_KIND_MANAGED_IDENTITY: return "ManagedIdentity";
    }
    return "User";
}

static void hash_secret(const uint8_t salt[16], const char *secret, uint8_t out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int n = 32;
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    EVP_DigestUpdate(c, salt, 16);
    EVP_DigestUpdate(c, secret, strlen(secret));
    EVP_DigestFinal_ex(c, out, &n);
    EVP_MD_CTX_free(c);
}

/* ---- signing key -------------------------------------------------------------------------- */

static bool ensure_signing_key(auth_t *a, char *err, size_t errlen)
{
    char hex[40];
    bool have = false;
    if (emu_store_meta_get(a->store, "auth_signing_key", hex, sizeof hex) &&
        emu_hex_decode(hex, a->key_id, HSM_ID_LEN)) {
        unsigned bits;
        have = hsm_rsa_bits(a->hsm, a->key_id, &bits) == HSM_OK;
        if (!have)
            emu_log(EMU_LOG_WARN, "auth", "token signing key missing from the token; making a new one");
    }
    if (!have) {
        hsm_status hs = hsm_rsa_generate(a->hsm, 2048, 0, "cmkemu/token-signing", a->key_id);
        if (hs != HSM_OK) {
            snprintf(err, errlen, "cannot create the token signing key: %s", hsm_status_str(hs));
            return false;
        }
        emu_hex_encode(a->key_id, HSM_ID_LEN, hex);
        bool ok = emu_store_own_hsm_object(a->store, a->key_id, HSM_ID_LEN, "auth-signing",
                                           "auth_signing_key", hex);
        if (!ok) {
            hsm_key_destroy(a->hsm, a->key_id);
            snprintf(err, errlen, "cannot record the token signing key");
            return false;
        }
    }
    uint8_t *n = NULL, *e = NULL;
    size_t nl = 0, el = 0;
    if (hsm_rsa_public(a->hsm, a->key_id, &n, &nl, &e, &el) != HSM_OK) {
        snprintf(err, errlen, "cannot read the token signing key");
        return false;
    }
    uint8_t digest[32];
    unsigned int dl = 32;
    EVP_Digest(n, nl, digest, &dl, EVP_sha256(), NULL);
    char *kid = emu_b64url_encode(digest, 16);
    snprintf(a->kid, sizeof a->kid, "%s", kid);
    free(kid);
    char *nb = emu_b64url_encode(n, nl), *eb = emu_b64url_encode(e, el);
    a->jwks = json_pack("{s:[{s:s,s:s,s:s,s:s,s:s,s:s}]}", "keys", "kty", "RSA", "use", "sig",
                        "alg", "RS256", "kid", a->kid, "n", nb, "e", eb);
    free(nb);
    free(eb);
    free(n);
    free(e);
    return true;
}

/* ---- open --------------------------------------------------------------------------------- */

static bool load_principals(auth_t *a)
{
    sqlite3 *db = emu_store_lock(a->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db,
                                 "SELECT oid,kind,appid,tenant,name,username,salt,secret_hash,"
                                 "emulator_admin,is_default FROM auth_principals ORDER BY rowid",
                                 -1, &st, NULL) == SQLITE_OK;
    while (ok && sqlite3_step(st) == SQLITE_ROW) {
        if (a->nrecs == a->caprecs) {
            a->caprecs = a->caprecs ? a->caprecs * 2 : 16;
            a->recs = emu_xrealloc(a->recs, a->caprecs * sizeof *a->recs);
        }
        principal_rec *r = &a->recs[a->nrecs++];
        memset(r, 0, sizeof *r);
        snprintf(r->p.oid, sizeof r->p.oid, "%s", (const char *)sqlite3_column_text(st, 0));
        r->p.kind = (auth_principal_kind)sqlite3_column_int(st, 1);
        snprintf(r->p.appid, sizeof r->p.appid, "%s", (const char *)sqlite3_column_text(st, 2));
        snprintf(r->p.tid, sizeof r->p.tid, "%s", (const char *)sqlite3_column_text(st, 3));
        snprintf(r->p.name, sizeof r->p.name, "%s", (const char *)sqlite3_column_text(st, 4));
        snprintf(r->username, sizeof r->username, "%s", (const char *)sqlite3_column_text(st, 5));
        if (sqlite3_column_bytes(st, 6) == 16 && sqlite3_column_bytes(st, 7) == 32) {
            memcpy(r->salt, sqlite3_column_blob(st, 6), 16);
            memcpy(r->secret_hash, sqlite3_column_blob(st, 7), 32);
            r->has_secret = true;
        }
        r->p.emulator_admin = sqlite3_column_int(st, 8);
        r->is_default = sqlite3_column_int(st, 9);
        r->p.from_token = true;
    }
    sqlite3_finalize(st);
    emu_store_unlock(a->store);
    return ok;
}

auth_t *auth_open(emu_store *store, hsm_t *hsm, auth_mode mode, const char *default_tenant,
                  char *err, size_t errlen)
{
    if (!emu_store_migrate(store, AUTH_MIGRATIONS, 1, err, errlen))
        return NULL;
    auth_t *a = emu_xcalloc(1, sizeof *a);
    pthread_mutex_init(&a->lock, NULL);
    pthread_mutex_init(&a->tlock, NULL);
    a->tcache = emu_xcalloc(TOKEN_CACHE_SLOTS, sizeof *a->tcache);
    a->store = store;
    a->hsm = hsm;
    a->mode = mode;
    snprintf(a->tenant, sizeof a->tenant, "%s", default_tenant);
    if (!ensure_signing_key(a, err, errlen) || !load_principals(a)) {
        if (!err[0])
            snprintf(err, errlen, "cannot load principals");
        auth_close(a);
        return NULL;
    }
    return a;
}

void auth_close(auth_t *a)
{
    if (!a)
        return;
    json_decref(a->jwks);
    if (a->recs)
        OPENSSL_cleanse(a->recs, a->caprecs * sizeof *a->recs);
    free(a->recs);
    free(a->tcache);
    pthread_mutex_destroy(&a->tlock);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

auth_mode auth_get_mode(const auth_t *a)
{
    return a->mode;
}

const char *auth_default_tenant(const auth_t *a)
{
    return a->tenant;
}

json_t *auth_jwks(auth_t *a)
{
    return json_deep_copy(a->jwks);
}

/* ---- principals --------------------------------------------------------------------------- */

static principal_rec *find_oid_inlock(auth_t *a, const char *oid)
{
    for (size_t i = 0; i < a->nrecs; i++)
        if (!strcasecmp(a->recs[i].p.oid, oid))
            return &a->recs[i];
    return NULL;
}

static principal_rec *find_appid_inlock(auth_t *a, const char *appid)
{
    for (size_t i = 0; i < a->nrecs; i++)
        if (a->recs[i].p.appid[0] && !strcasecmp(a->recs[i].p.appid, appid))
            return &a->recs[i];
    return NULL;
}

static bool valid_guid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

bool auth_principal_add(auth_t *a, const auth_principal_spec *spec, auth_principal *out,
                        char *err, size_t errlen)
{
    principal_rec r;
    memset(&r, 0, sizeof r);
    char g[37];
    if (spec->oid && !valid_guid(spec->oid)) {
        snprintf(err, errlen, "principal oid '%.40s' is not a GUID", spec->oid);
        return false;
    }
    if (spec->appid && !valid_guid(spec->appid)) {
        snprintf(err, errlen, "principal appid '%.40s' is not a GUID", spec->appid);
        return false;
    }
    emu_guid(g);
    snprintf(r.p.oid, sizeof r.p.oid, "%s", spec->oid ? spec->oid : g);
    if (spec->kind != AUTH_KIND_USER) {
        emu_guid(g);
        snprintf(r.p.appid, sizeof r.p.appid, "%s", spec->appid ? spec->appid : g);
    } else if (spec->appid) {
        snprintf(r.p.appid, sizeof r.p.appid, "%s", spec->appid);
    }
    for (char *c = r.p.oid; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    for (char *c = r.p.appid; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    snprintf(r.p.tid, sizeof r.p.tid, "%s", spec->tenant ? spec->tenant : a->tenant);
    snprintf(r.p.name, sizeof r.p.name, "%s", spec->name ? spec->name : r.p.oid);
    snprintf(r.username, sizeof r.username, "%s", spec->username ? spec->username : "");
    r.p.kind = spec->kind;
    r.p.emulator_admin = spec->emulator_admin;
    r.p.from_token = true;
    r.is_default = spec->is_default;
    if (spec->secret) {
        RAND_bytes(r.salt, sizeof r.salt);
        hash_secret(r.salt, spec->secret, r.secret_hash);
        r.has_secret = true;
    }
    pthread_mutex_lock(&a->lock);
    bool ok = true;
    if (find_oid_inlock(a, r.p.oid)) {
        snprintf(err, errlen, "a principal with oid %s exists", r.p.oid);
        ok = false;
    } else if (r.p.appid[0] && spec->kind != AUTH_KIND_USER && find_appid_inlock(a, r.p.appid)) {
        snprintf(err, errlen, "a principal with appid %s exists", r.p.appid);
        ok = false;
    }
    if (ok) {
        sqlite3 *db = emu_store_lock(a->store);
        sqlite3_stmt *st = NULL;
        ok = sqlite3_prepare_v2(db,
                                "INSERT INTO auth_principals(oid,kind,appid,tenant,name,username,"
                                "salt,secret_hash,emulator_admin,is_default) "
                                "VALUES(?,?,?,?,?,?,?,?,?,?)",
                                -1, &st, NULL) == SQLITE_OK;
        if (ok) {
            sqlite3_bind_text(st, 1, r.p.oid, -1, SQLITE_STATIC);
            sqlite3_bind_int(st, 2, r.p.kind);
            sqlite3_bind_text(st, 3, r.p.appid, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 4, r.p.tid, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 5, r.p.name, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 6, r.username, -1, SQLITE_STATIC);
            if (r.has_secret) {
                sqlite3_bind_blob(st, 7, r.salt, 16, SQLITE_STATIC);
                sqlite3_bind_blob(st, 8, r.secret_hash, 32, SQLITE_STATIC);
            }
            sqlite3_bind_int(st, 9, r.p.emulator_admin);
            sqlite3_bind_int(st, 10, r.is_default);
            ok = sqlite3_step(st) == SQLITE_DONE;
            if (!ok)
                snprintf(err, errlen, "cannot save principal: %s", sqlite3_errmsg(db));
        }
        sqlite3_finalize(st);
        emu_store_unlock(a->store);
    }
    if (ok) {
        if (a->nrecs == a->caprecs) {
            a->caprecs = a->caprecs ? a->caprecs * 2 : 16;
            a->recs = emu_xrealloc(a->recs, a->caprecs * sizeof *a->recs);
        }
        a->recs[a->nrecs++] = r;
        if (out)
            *out = r.p;
    }
    pthread_mutex_unlock(&a->lock);
    OPENSSL_cleanse(&r, sizeof r);
    return ok;
}

bool auth_principal_get(auth_t *a, const char *oid, auth_principal *out)
{
    pthread_mutex_lock(&a->lock);
    principal_rec *r = find_oid_inlock(a, oid);
    if (r)
        *out = r->p;
    pthread_mutex_unlock(&a->lock);
    return r != NULL;
}

bool auth_principal_by_appid(auth_t *a, const char *appid, auth_principal *out)
{
    pthread_mutex_lock(&a->lock);
    principal_rec *r = find_appid_inlock(a, appid);
    if (r)
        *out = r->p;
    pthread_mutex_unlock(&a->lock);
    return r != NULL;
}

bool auth_principal_by_name(auth_t *a, const char *name, auth_principal_kind kind,
                            auth_principal *out)
{
    pthread_mutex_lock(&a->lock);
    principal_rec *r = NULL;
    for (size_t i = 0; i < a->nrecs && !r; i++)
        if (a->recs[i].p.kind == kind && !strcasecmp(a->recs[i].p.name, name))
            r = &a->recs[i];
    if (r)
        *out = r->p;
    pthread_mutex_unlock(&a->lock);
    return r != NULL;
}

bool auth_principal_default_of_kind(auth_t *a, auth_principal_kind kind, auth_principal *out)
{
    pthread_mutex_lock(&a->lock);
    principal_rec *r = NULL;
    for (size_t i = 0; i < a->nrecs; i++)
        if (a->recs[i].p.kind == kind && (!r || (a->recs[i].is_default && !r->is_default)))
            r = &a->recs[i];
    if (r)
        *out = r->p;
    pthread_mutex_unlock(&a->lock);
    return r != NULL;
}

size_t auth_principal_list(auth_t *a, auth_principal **out)
{
    pthread_mutex_lock(&a->lock);
    size_t n = a->nrecs;
    *out = n ? emu_xmalloc(n * sizeof **out) : NULL;
    for (size_t i = 0; i < n; i++)
        (*out)[i] = a->recs[i].p;
    pthread_mutex_unlock(&a->lock);
    return n;
}

bool auth_principal_remove(auth_t *a, const char *oid)
{
    pthread_mutex_lock(&a->lock);
    principal_rec *r = find_oid_inlock(a, oid);
    bool ok = false;
    if (r) {
        sqlite3 *db = emu_store_lock(a->store);
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, "DELETE FROM auth_principals WHERE oid=?", -1, &st, NULL) ==
            SQLITE_OK) {
            sqlite3_bind_text(st, 1, r->p.oid, -1, SQLITE_STATIC);
            ok = sqlite3_step(st) == SQLITE_DONE;
        }
        sqlite3_finalize(st);
        emu_store_unlock(a->store);
        if (ok) {
            size_t i = (size_t)(r - a->recs);
            memmove(a->recs + i, a->recs + i + 1, (a->nrecs - i - 1) * sizeof *a->recs);
            a->nrecs--;
        }
    }
    pthread_mutex_unlock(&a->lock);
    return ok;
}

size_t auth_principal_count(auth_t *a)
{
    pthread_mutex_lock(&a->lock);
    size_t n = a->nrecs;
    pthread_mutex_unlock(&a->lock);
    return n;
}

/* Checks a secret for a client id (service principal) or username (user). */
bool auth_check_secret(auth_t *a, const char *client_or_user, bool by_username,
                       const char *secret, auth_principal *out);
bool auth_check_secret(auth_t *a, const char *client_or_user, bool by_username,
                       const char *secret, auth_principal *out)
{
    bool ok = false;
    pthread_mutex_lock(&a->lock);
    principal_rec *r = NULL;
    for (size_t i = 0; i < a->nrecs && !r; i++) {
        principal_rec *x = &a->recs[i];
        if (by_username ? (x->p.kind == AUTH_KIND_USER && x->username[0] &&
                           !strcasecmp(x->username, client_or_user))
                        : (x->p.kind == AUTH_KIND_SERVICE_PRINCIPAL &&
                           !strcasecmp(x->p.appid, client_or_user)))
            r = x;
    }
    if (r && r->has_secret) {
        uint8_t h[32];
        hash_secret(r->salt, secret, h);
        ok = emu_ct_equal(h, r->secret_hash, 32);
        if (ok)
            *out = r->p;
    }
    pthread_mutex_unlock(&a->lock);
    return ok;
}

static bool default_principal(auth_t *a, auth_principal *out)
{
    pthread_mutex_lock(&a->lock);
    principal_rec *r = NULL;
    for (size_t i = 0; i < a->nrecs && !r; i++)
        if (a->recs[i].is_default)
            r = &a->recs[i];
    if (r)
        *out = r->p;
    pthread_mutex_unlock(&a->lock);
    return r != NULL;
}

/* ---- JWT ---------------------------------------------------------------------------------- */

char *auth_jws_sign(auth_t *a, const void *header, size_t header_len, const void *claims,
                    size_t claims_len)
{
    char *hb = emu_b64url_encode(header, header_len);
    char *cb = emu_b64url_encode(claims, claims_len);
    char *signing = emu_xasprintf("%s.%s", hb, cb);
    free(hb);
    free(cb);
    uint8_t digest[32], sig[512];
    unsigned int dl = 32;
    size_t sl = sizeof sig;
    char *token = NULL;
    EVP_Digest(signing, strlen(signing), digest, &dl, EVP_sha256(), NULL);
    if (hsm_sign(a->hsm, a->key_id, HSM_RS256, digest, 32, sig, &sl) == HSM_OK) {
        char *sb = emu_b64url_encode(sig, sl);
        token = emu_xasprintf("%s.%s", signing, sb);
        free(sb);
    }
    free(signing);
    return token;
}

bool auth_token_issue(auth_t *a, const auth_principal *p, const char *audience, int64_t lifetime,
                      int64_t nbf_offset, char **token, int64_t *expires_on)
{
    int64_t now = emu_wall_now();
    int64_t nbf = now + nbf_offset;
    int64_t exp = nbf + lifetime;
    char iss[128];
    snprintf(iss, sizeof iss, "https://sts.windows.net/%s/", p->tid);
    json_t *hdr = json_pack("{s:s,s:s,s:s}", "typ", "JWT", "alg", "RS256", "kid", a->kid);
    json_t *cl = json_pack("{s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:s,s:s,s:s,s:s}", "aud", audience,
                           "iss", iss, "iat", (json_int_t)nbf, "nbf", (json_int_t)nbf, "exp",
                           (json_int_t)exp, "oid", p->oid, "tid", p->tid, "sub", p->oid, "name",
                           p->name, "idtyp",
                           p->kind == AUTH_KIND_USER ? "user" : "app", "ver", "1.0");
    if (!hdr || !cl) { /* a claim that is not UTF-8 (an audience from a query string) */
        json_decref(hdr);
        json_decref(cl);
        return false;
    }
    if (p->appid[0])
        json_object_set_new(cl, "appid", json_string(p->appid));
    char *h = json_dumps(hdr, JSON_COMPACT), *c = json_dumps(cl, JSON_COMPACT);
    json_decref(hdr);
    json_decref(cl);
    *token = auth_jws_sign(a, h, strlen(h), c, strlen(c));
    free(h);
    free(c);
    if (!*token)
        return false;
    if (expires_on)
        *expires_on = exp;
    return true;
}

static bool aud_ok(const char *aud, auth_audience_family fam, const char *base_url)
{
    static const char *KV[] = {"https://vault.azure.net", "https://vault.localhost", NULL};
    static const char *ARM[] = {"https://management.azure.com", "https://management.core.windows.net",
                                NULL};
    static const char *BAP[] = {"https://api.bap.microsoft.com", "https://service.powerapps.com",
                                NULL};
    char a[512];
    snprintf(a, sizeof a, "%s", aud);
    size_t n = strlen(a);
    while (n && a[n - 1] == '/')
        a[--n] = '\0';
    const char **lists[3] = {KV, ARM, BAP};
    for (int f = 0; f < 3; f++) {
        if (!(fam & (1 << f)))
            continue;
        for (int i = 0; lists[f][i]; i++)
            if (!strcasecmp(a, lists[f][i]))
                return true;
        if (f > 0 && base_url && !strcasecmp(a, base_url))
            return true;
        if (f > 0 && base_url) {
            /* https://127.0.0.1:PORT and https://localhost:PORT name the same emulator */
            const char *colon = strrchr(base_url, ':');
            const char *acolon = strrchr(a, ':');
            if (colon && acolon && !strcmp(colon, acolon) &&
                (!strncasecmp(a, "https://localhost:", 18) ||
                 !strncasecmp(a, "https://127.0.0.1:", 18)))
                return true;
        }
        if (f == 2 && strstr(a, ".crm.localhost"))
            return true;
    }
    return false;
}

static const char *fam_names(auth_audience_family fam)
{
    switch (fam) {
    case AUTH_AUD_KEYVAULT: return "https://vault.azure.net or https://vault.localhost";
    case AUTH_AUD_ARM:
        return "https://management.azure.com, https://management.core.windows.net or this "
               "emulator's base URL";
    case AUTH_AUD_BAP:
        return "https://api.bap.microsoft.com, https://service.powerapps.com, an environment "
               "URL or this emulator's base URL";
    default: return "an audience of this emulator";
    }
}

/* Splits and decodes a JWT. Returns header and claims (new refs) and the signed part. */
static bool jwt_split(const char *token, json_t **hdr, json_t **claims, uint8_t **sig,
                      size_t *sig_len, size_t *signed_len)
{
    const char *d1 = strchr(token, '.');
    const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d1 || !d2 || strchr(d2 + 1, '.'))
        return false;
    size_t hl = 0, cl = 0;
    uint8_t *h = emu_b64url_decode(token, (size_t)(d1 - token), 4096, &hl);
    uint8_t *c = emu_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), 8192, &cl);
    *sig = emu_b64url_decode(d2 + 1, strlen(d2 + 1), 1024, sig_len);
    *hdr = h ? json_loadb((const char *)h, hl, JSON_REJECT_DUPLICATES, NULL) : NULL;
    *claims = c ? json_loadb((const char *)c, cl, JSON_REJECT_DUPLICATES, NULL) : NULL;
    free(h);
    free(c);
    *signed_len = (size_t)(d2 - token);
    if (!*hdr || !*claims || !*sig || !json_is_object(*hdr) || !json_is_object(*claims)) {
        json_decref(*hdr);
        json_decref(*claims);
        free(*sig);
        *hdr = *claims = NULL;
        *sig = NULL;
        return false;
    }
    return true;
}

/* Does this token claim to come from this emulator (kid or issuer)? */
static bool claims_ours(auth_t *a, json_t *hdr, json_t *claims)
{
    const char *kid = json_string_value(json_object_get(hdr, "kid"));
    if (kid && !strcmp(kid, a->kid))
        return true;
    const char *iss = json_string_value(json_object_get(claims, "iss"));
    char mine[128];
    snprintf(mine, sizeof mine, "https://sts.windows.net/%s/", a->tenant);
    return iss && !strcasecmp(iss, mine);
}

static void copy_claim(char *out, size_t outlen, json_t *claims, const char *k)
{
    const char *v = json_string_value(json_object_get(claims, k));
    snprintf(out, outlen, "%s", v ? v : "");
}

static bool claim_fits(json_t *claims, const char *k, size_t room)
{
    const char *v = json_string_value(json_object_get(claims, k));
    return !v || strlen(v) < room;
}

/* Parses token and verifies alg, kid and the signature; fills c. false + err otherwise. */
static bool token_verify_signature(auth_t *a, const char *token, token_claims *c, char *err,
                                   size_t errlen)
{
    json_t *hdr = NULL, *claims = NULL;
    uint8_t *sig = NULL;
    size_t sig_len = 0, signed_len = 0;
    bool ok = false;
    if (strlen(token) > MAX_TOKEN ||
        !jwt_split(token, &hdr, &claims, &sig, &sig_len, &signed_len)) {
        snprintf(err, errlen, "The bearer token is not a well-formed JWT.");
        return false;
    }
    const char *alg = json_string_value(json_object_get(hdr, "alg"));
    const char *kid = json_string_value(json_object_get(hdr, "kid"));
    if (!alg || strcmp(alg, "RS256")) {
        snprintf(err, errlen, "The token's algorithm '%.20s' is not accepted; only RS256.",
                 alg ? alg : "(none)");
        goto out;
    }
    if (!kid || strcmp(kid, a->kid)) {
        snprintf(err, errlen, "The token was not signed by this emulator's token service "
                              "(unknown kid).");
        goto out;
    }
    uint8_t digest[32];
    unsigned int dl = 32;
    EVP_Digest(token, signed_len, digest, &dl, EVP_sha256(), NULL);
    if (hsm_verify(a->hsm, a->key_id, HSM_RS256, digest, 32, sig, sig_len) != HSM_OK) {
        snprintf(err, errlen, "The token's signature is invalid.");
        goto out;
    }
    memset(c, 0, sizeof *c);
    copy_claim(c->oid, sizeof c->oid, claims, "oid");
    copy_claim(c->tid, sizeof c->tid, claims, "tid");
    copy_claim(c->appid, sizeof c->appid, claims, "appid");
    copy_claim(c->iss, sizeof c->iss, claims, "iss");
    copy_claim(c->aud, sizeof c->aud, claims, "aud");
    json_t *exp = json_object_get(claims, "exp"), *nbf = json_object_get(claims, "nbf");
    c->has_exp = json_is_integer(exp);
    c->exp = c->has_exp ? json_integer_value(exp) : 0;
    c->has_nbf = json_is_integer(nbf);
    c->nbf = c->has_nbf ? json_integer_value(nbf) : 0;
    /* a claim longer than its field cannot be checked from the copy: do not cache it */
    c->used = claim_fits(claims, "aud", sizeof c->aud) &&
              claim_fits(claims, "iss", sizeof c->iss) &&
              claim_fits(claims, "oid", sizeof c->oid) &&
              claim_fits(claims, "tid", sizeof c->tid) &&
              claim_fits(claims, "appid", sizeof c->appid);
    ok = true;
out:
    json_decref(hdr);
    json_decref(claims);
    free(sig);
    return ok;
}

static size_t tcache_slot(const uint8_t h[32])
{
    return ((size_t)h[0] | (size_t)h[1] << 8) % TOKEN_CACHE_SLOTS;
}

static bool tcache_get(auth_t *a, const uint8_t h[32], token_claims *out)
{
    pthread_mutex_lock(&a->tlock);
    const token_claims *e = &a->tcache[tcache_slot(h)];
    bool hit = e->used && !CRYPTO_memcmp(e->hash, h, 32);
    if (hit) {
        *out = *e;
        a->tcache_hits++;
    }
    pthread_mutex_unlock(&a->tlock);
    return hit;
}

static void tcache_put(auth_t *a, const uint8_t h[32], const token_claims *c)
{
    if (!c->used)
        return;
    pthread_mutex_lock(&a->tlock);
    token_claims *e = &a->tcache[tcache_slot(h)];
    *e = *c;
    memcpy(e->hash, h, 32);
    pthread_mutex_unlock(&a->tlock);
}

/* The claims of a token with a valid signature: from the cache, or verified and cached. */
static bool token_claims_of(auth_t *a, const char *token, token_claims *c, char *err,
                            size_t errlen)
{
    uint8_t h[32];
    unsigned int hl = 32;
    size_t len = strlen(token);
    if (len > MAX_TOKEN) {
        snprintf(err, errlen, "The bearer token is not a well-formed JWT.");
        return false;
    }
    EVP_Digest(token, len, h, &hl, EVP_sha256(), NULL);
    if (tcache_get(a, h, c))
        return true;
    if (!token_verify_signature(a, token, c, err, errlen))
        return false;
    tcache_put(a, h, c);
    return true;
}

bool auth_token_verify(auth_t *a, const char *token, auth_audience_family fam,
                       const char *base_url, auth_principal *out, char *err, size_t errlen)
{
    token_claims c;
    if (!token_claims_of(a, token, &c, err, errlen))
        return false;
    char want_iss[128];
    snprintf(want_iss, sizeof want_iss, "https://sts.windows.net/%s/", c.tid);
    if (!c.tid[0] || !c.iss[0] || strcmp(c.iss, want_iss)) {
        snprintf(err, errlen, "The token's issuer is not this emulator's (%s).", want_iss);
        return false;
    }
    if (!c.oid[0]) {
        snprintf(err, errlen, "The token has no oid claim.");
        return false;
    }
    if (!c.aud[0] || !aud_ok(c.aud, fam, base_url)) {
        snprintf(err, errlen, "The token's audience '%.100s' is not accepted here; expected %s.",
                 c.aud[0] ? c.aud : "(none)", fam_names(fam));
        return false;
    }
    int64_t now = emu_wall_now();
    if (!c.has_exp || now >= c.exp) {
        snprintf(err, errlen, "The token has expired.");
        return false;
    }
    if (c.has_nbf && now + 60 < c.nbf) {
        snprintf(err, errlen, "The token is not valid yet (nbf).");
        return false;
    }
    memset(out, 0, sizeof *out);
    if (!auth_principal_get(a, c.oid, out)) {
        /* a principal that was removed since the token was minted */
        snprintf(err, errlen, "The token's principal %.40s no longer exists.", c.oid);
        return false;
    }
    if (strcasecmp(out->tid, c.tid)) {
        snprintf(err, errlen, "The token's tenant does not match its principal's.");
        return false;
    }
    snprintf(out->iss, sizeof out->iss, "%s", c.iss);
    if (c.appid[0])
        snprintf(out->appid, sizeof out->appid, "%s", c.appid);
    out->from_token = true;
    return true;
}

uint64_t auth_token_cache_hits(auth_t *a)
{
    pthread_mutex_lock(&a->tlock);
    uint64_t n = a->tcache_hits;
    pthread_mutex_unlock(&a->tlock);
    return n;
}

/* Whether a token was minted here: cached as verified, or its kid / issuer say so. */
static bool token_ours(auth_t *a, const char *token)
{
    uint8_t h[32];
    unsigned int hl = 32;
    size_t len = strlen(token);
    if (len > MAX_TOKEN)
        return false;
    EVP_Digest(token, len, h, &hl, EVP_sha256(), NULL);
    token_claims c;
    if (tcache_get(a, h, &c))
        return true;
    json_t *hdr = NULL, *claims = NULL;
    uint8_t *sig = NULL;
    size_t sl = 0, signed_len = 0;
    bool ours = jwt_split(token, &hdr, &claims, &sig, &sl, &signed_len) &&
                claims_ours(a, hdr, claims);
    json_decref(hdr);
    json_decref(claims);
    free(sig);
    return ours;
}

bool auth_authenticate(auth_t *a, emu_req *req, auth_audience_family fam, bool *missing,
                       char *err, size_t errlen)
{
    *missing = false;
    const char *h = emu_req_header(req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) || !h[7]) {
        *missing = true;
        snprintf(err, errlen, "The request has no bearer token.");
        return false;
    }
    const char *token = h + 7;
    while (*token == ' ')
        token++;
    auth_principal p;
    bool ours = true;
    if (a->mode == AUTH_PERMISSIVE)
        ours = token_ours(a, token);
    if (ours) {
        if (!auth_token_verify(a, token, fam, emu_req_base_url(req), &p, err, errlen))
            return false;
    } else {
        memset(&p, 0, sizeof p);
        if (!default_principal(a, &p)) {
            snprintf(p.oid, sizeof p.oid, "00000000-0000-0000-0000-000000000000");
            snprintf(p.tid, sizeof p.tid, "%s", a->tenant);
            snprintf(p.name, sizeof p.name, "anonymous");
        }
        snprintf(p.iss, sizeof p.iss, "https://sts.windows.net/%s/", p.tid);
        p.from_token = false;
    }
    auth_principal *rp = emu_arena_alloc(req->arena, sizeof *rp);
    *rp = p;
    req->principal = rp;
    return true;
}

/* ---- world -------------------------------------------------------------------------------- */

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

bool auth_world_apply(auth_t *a, json_t *world, char *err, size_t errlen)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(world, "principals"), i, p)
    {
        const char *kind = str(p, "kind");
        auth_principal_spec s = {0};
        if (!kind || !strcasecmp(kind, "user"))
            s.kind = AUTH_KIND_USER;
        else if (!strcasecmp(kind, "servicePrincipal"))
            s.kind = AUTH_KIND_SERVICE_PRINCIPAL;
        else if (!strcasecmp(kind, "managedIdentity"))
            s.kind = AUTH_KIND_MANAGED_IDENTITY;
        else {
            snprintf(err, errlen, "principals[%zu]: kind '%s' is not user, servicePrincipal or "
                                  "managedIdentity",
                     i, kind);
            return false;
        }
        s.oid = str(p, "objectId");
        s.appid = str(p, "clientId");
        s.tenant = str(p, "tenantId");
        s.name = str(p, "name");
        s.secret = str(p, s.kind == AUTH_KIND_USER ? "password" : "clientSecret");
        s.username = str(p, "username");
        s.emulator_admin = json_is_true(json_object_get(p, "emulatorAdmin"));
        s.is_default = json_is_true(json_object_get(p, "default"));
        char e2[256];
        if (!auth_principal_add(a, &s, NULL, e2, sizeof e2)) {
            snprintf(err, errlen, "principals[%zu]: %s", i, e2);
            return false;
        }
    }
    return true;
}
