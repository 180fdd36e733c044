#include "policies.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "armres.h" /* arm_id_parse/arm_id_build only */
#include "clock.h"
#include "log.h"
#include "util.h"

/* Caps on what a client can make us hold. */
#define MAX_POLICIES 4096
#define MAX_NAME 127
#define MAX_KEY_NAME 127

typedef struct {
    pp_policy pol;
    char *tags; /* compact JSON object text, or NULL */
} rec;

struct pp_policies {
    emu_store *store;
    auth_t *auth;
    pthread_mutex_t lock; /* guards recs/n/cap; taken before auth's and the store's locks */
    rec *recs;
    size_t n, cap;
    /* set once at start-up, read without the lock */
    pp_link_check_fn linked;
    void *linked_ud;
    pp_link_count_fn count;
    void *count_ud;
    pp_deleted_fn deleted;
    void *deleted_ud;
};

static const emu_migration PP_MIGRATIONS[] = {
    {"pp_policies", 1,
     "CREATE TABLE pp_policies(lkey TEXT PRIMARY KEY, sub TEXT NOT NULL, rg TEXT NOT NULL,"
     " name TEXT NOT NULL, location TEXT NOT NULL, kind TEXT NOT NULL,"
     " system_id TEXT NOT NULL UNIQUE, has_identity INTEGER NOT NULL, identity_oid TEXT NOT NULL,"
     " identity_appid TEXT NOT NULL, tenant TEXT NOT NULL, has_encryption INTEGER NOT NULL,"
     " encryption_enabled INTEGER NOT NULL, vault_id TEXT NOT NULL, key_name TEXT NOT NULL,"
     " key_version TEXT NOT NULL, health TEXT NOT NULL, tags TEXT, created INTEGER NOT NULL,"
     " created_by TEXT NOT NULL, created_by_type TEXT NOT NULL, modified INTEGER NOT NULL,"
     " modified_by TEXT NOT NULL, modified_by_type TEXT NOT NULL);"},
};

/* ---- names and enums ------------------------------------------------------------------------ */

const char *pp_status_str(pp_status st)
{
    switch (st) {
    case PP_OK:
        return "ok";
    case PP_ERR_BAD_PARAM:
        return "bad parameter";
    case PP_ERR_BAD_LOCATION:
        return "location not available";
    case PP_ERR_CHANGE_NOT_ALLOWED:
        return "change not allowed";
    case PP_ERR_NOT_FOUND:
        return "not found";
    case PP_ERR_LINKED:
        return "environments linked";
    case PP_ERR_CONFLICT:
        return "conflict";
    case PP_ERR_IDENTITY:
        return "identity failure";
    case PP_ERR_STORE:
        return "store failure";
    }
    return "unknown";
}

static const char *const KIND_NAMES[] = {"Encryption", "Lockbox", "PrivateEndpoint",
                                         "NetworkInjection", "Identity"};
static const char *const HEALTH_NAMES[] = {"Undetermined", "Healthy", "Warning", "Unhealthy"};

const char *pp_kind_str(pp_policy_kind k)
{
    return (unsigned)k < sizeof KIND_NAMES / sizeof KIND_NAMES[0] ? KIND_NAMES[k] : "Encryption";
}

bool pp_kind_parse(const char *s, pp_policy_kind *k)
{
    for (size_t i = 0; s && i < sizeof KIND_NAMES / sizeof KIND_NAMES[0]; i++)
        if (!strcasecmp(s, KIND_NAMES[i])) {
            *k = (pp_policy_kind)i;
            return true;
        }
    return false;
}

const char *pp_health_str(pp_health h)
{
    return (unsigned)h < sizeof HEALTH_NAMES / sizeof HEALTH_NAMES[0] ? HEALTH_NAMES[h]
                                                                      : "Undetermined";
}

bool pp_health_parse(const char *s, pp_health *h)
{
    for (size_t i = 0; s && i < sizeof HEALTH_NAMES / sizeof HEALTH_NAMES[0]; i++)
        if (!strcasecmp(s, HEALTH_NAMES[i])) {
            *h = (pp_health)i;
            return true;
        }
    return false;
}

/* reference/powerplatform-cmk.md, "Locations" */
static const char *const LOCATIONS[] = {
    "unitedstates", "southafrica", "uk",          "japan",  "india",     "france",
    "europe",       "germany",     "switzerland", "canada", "brazil",    "australia",
    "asia",         "uae",         "korea",       "norway", "singapore", "sweden"};

bool pp_location_valid(const char *location)
{
    for (size_t i = 0; location && i < sizeof LOCATIONS / sizeof LOCATIONS[0]; i++)
        if (!strcasecmp(location, LOCATIONS[i]))
            return true;
    return false;
}

const char *pp_locations_str(void)
{
    return "unitedstates, southafrica, uk, japan, india, france, europe, germany, switzerland, "
           "canada, brazil, australia, asia, uae, korea, norway, singapore, sweden";
}

/* ---- validation ----------------------------------------------------------------------------- */

static pp_status fail(pp_err *e, pp_status st, const char *target, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static pp_status fail(pp_err *e, pp_status st, const char *target, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        snprintf(e->target, sizeof e->target, "%s", target ? target : "");
    }
    return st;
}

static bool valid_policy_name(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > MAX_NAME || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
            return false;
    return true;
}

static bool valid_vault_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 3 || n > 24 || !isalpha((unsigned char)s[0]) || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-')
            return false;
    return true;
}

static bool valid_key_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_KEY_NAME)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-')
            return false;
    return true;
}

static bool valid_key_version(const char *s)
{
    if (strlen(s) != 32)
        return false;
    for (size_t i = 0; i < 32; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* Canonical form of a Key Vault ARM id into out; false when it is not one. */
static bool canon_vault_id(const char *id, char *out, size_t outlen)
{
    arm_id a;
    if (!id || strlen(id) >= 512 || !arm_id_parse(id, &a) || !a.resource_group[0] ||
        strcasecmp(a.ns, "Microsoft.KeyVault") || strcasecmp(a.type, "vaults") ||
        !valid_vault_name(a.name))
        return false;
    snprintf(a.ns, sizeof a.ns, "Microsoft.KeyVault");
    snprintf(a.type, sizeof a.type, "vaults");
    char *c = arm_id_build(&a);
    bool ok = strlen(c) < outlen;
    if (ok)
        snprintf(out, outlen, "%s", c);
    free(c);
    return ok;
}

pp_status pp_policy_spec_check(const pp_policy_spec *s, pp_err *e)
{
    if (!s->subscription || !*s->subscription || strlen(s->subscription) >= 64 ||
        !s->resource_group || !*s->resource_group || strlen(s->resource_group) >= 96)
        return fail(e, PP_ERR_BAD_PARAM, NULL, "The subscription or resource group is invalid.");
    if (!valid_policy_name(s->name))
        return fail(e, PP_ERR_BAD_PARAM, "name",
                    "The enterprise policy name '%.140s' is invalid: 1-%d characters, letters, "
                    "digits, '-', '_' and '.', not ending with '.'.",
                    s->name ? s->name : "", MAX_NAME);
    if (!s->location || !*s->location)
        return fail(e, PP_ERR_BAD_PARAM, "location",
                    "The location is required: one of the Power Platform regions %s.",
                    pp_locations_str());
    if (!pp_location_valid(s->location))
        return fail(
            e, PP_ERR_BAD_LOCATION, "location",
            "The provided location '%.60s' is not available for resource type '" PP_POLICY_TYPE
            "'. List of available regions for the resource type is '%s'.",
            s->location, pp_locations_str());
    if ((unsigned)s->kind > PP_KIND_IDENTITY)
        return fail(e, PP_ERR_BAD_PARAM, "kind", "The kind is invalid.");
    if (s->kind == PP_KIND_ENCRYPTION && !s->identity)
        return fail(e, PP_ERR_BAD_PARAM, "identity.type",
                    "An Encryption policy needs identity.type 'SystemAssigned': its managed "
                    "identity is what reads the key.");
    if (s->kind == PP_KIND_ENCRYPTION && !s->has_encryption)
        return fail(e, PP_ERR_BAD_PARAM, "properties.encryption",
                    "An Encryption policy needs properties.encryption {state, keyVault {id, key "
                    "{name, version}}}.");
    if (s->has_encryption) {
        char canon[512];
        if (!s->vault_id || !*s->vault_id)
            return fail(e, PP_ERR_BAD_PARAM, "properties.encryption.keyVault.id",
                        "properties.encryption.keyVault.id is required: the ARM resource id of "
                        "the key vault (/subscriptions/{sub}/resourceGroups/{rg}/providers/"
                        "Microsoft.KeyVault/vaults/{name}).");
        if (!canon_vault_id(s->vault_id, canon, sizeof canon))
            return fail(e, PP_ERR_BAD_PARAM, "properties.encryption.keyVault.id",
                        "properties.encryption.keyVault.id '%.300s' is not a key vault resource "
                        "id (/subscriptions/{sub}/resourceGroups/{rg}/providers/"
                        "Microsoft.KeyVault/vaults/{name}).",
                        s->vault_id);
        if (!s->key_name || !valid_key_name(s->key_name))
            return fail(e, PP_ERR_BAD_PARAM, "properties.encryption.keyVault.key.name",
                        "properties.encryption.keyVault.key.name '%.140s' is invalid: 1-%d "
                        "letters, digits and '-'.",
                        s->key_name ? s->key_name : "", MAX_KEY_NAME);
        if (s->key_version && *s->key_version && !valid_key_version(s->key_version))
            return fail(e, PP_ERR_BAD_PARAM, "properties.encryption.keyVault.key.version",
                        "properties.encryption.keyVault.key.version '%.60s' is invalid: a key "
                        "version is 32 hexadecimal characters (or empty to follow the current "
                        "version).",
                        s->key_version);
    }
    if (s->identity_oid && strlen(s->identity_oid) >= 40)
        return fail(e, PP_ERR_BAD_PARAM, "identity", "The identity object id is invalid.");
    if (s->identity_appid && strlen(s->identity_appid) >= 40)
        return fail(e, PP_ERR_BAD_PARAM, "identity", "The identity application id is invalid.");
    if (s->set_tags && s->tags && !json_is_object(s->tags))
        return fail(e, PP_ERR_BAD_PARAM, "tags", "tags must be an object.");
    return PP_OK;
}

/* ---- store ---------------------------------------------------------------------------------- */

static void lkey_of(const char *sub, const char *rg, const char *name, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/%s/%s", sub, rg, name);
    for (char *c = out; *c; c++)
        *c = (char)tolower((unsigned char)*c);
}

static bool row_save(pp_policies_t *p, const pp_policy *pol, const char *tags)
{
    char lkey[320];
    lkey_of(pol->subscription, pol->resource_group, pol->name, lkey, sizeof lkey);
    sqlite3 *db = emu_store_lock(p->store);
    sqlite3_stmt *st = NULL;
    bool ok = false;
    if (sqlite3_prepare_v2(db,
                           "INSERT OR REPLACE INTO pp_policies(lkey, sub, rg, name, location, kind,"
                           " system_id, has_identity, identity_oid, identity_appid, tenant,"
                           " has_encryption, encryption_enabled, vault_id, key_name, key_version,"
                           " health, tags, created, created_by, created_by_type, modified,"
                           " modified_by, modified_by_type) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
                           "?,?,?,?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    int i = 1;
    sqlite3_bind_text(st, i++, lkey, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->subscription, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->resource_group, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->location, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pp_kind_str(pol->kind), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->system_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, i++, pol->has_identity);
    sqlite3_bind_text(st, i++, pol->identity_oid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->identity_appid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, i++, pol->has_encryption);
    sqlite3_bind_int(st, i++, pol->encryption_enabled);
    sqlite3_bind_text(st, i++, pol->vault_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->key_name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->key_version, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pp_health_str(pol->health), -1, SQLITE_STATIC);
    if (tags)
        sqlite3_bind_text(st, i++, tags, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i++);
    sqlite3_bind_int64(st, i++, pol->created);
    sqlite3_bind_text(st, i++, pol->created_by, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->created_by_type, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, i++, pol->modified);
    sqlite3_bind_text(st, i++, pol->modified_by, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, i++, pol->modified_by_type, -1, SQLITE_STATIC);
    ok = sqlite3_step(st) == SQLITE_DONE;
out:
    if (!ok)
        emu_log(EMU_LOG_ERROR, "pp", "saving policy %s: %s", pol->name, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    emu_store_unlock(p->store);
    return ok;
}

static bool row_delete(pp_policies_t *p, const pp_policy *pol)
{
    char lkey[320];
    lkey_of(pol->subscription, pol->resource_group, pol->name, lkey, sizeof lkey);
    sqlite3 *db = emu_store_lock(p->store);
    sqlite3_stmt *st = NULL;
    bool ok =
        sqlite3_prepare_v2(db, "DELETE FROM pp_policies WHERE lkey=?", -1, &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, lkey, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    if (!ok)
        emu_log(EMU_LOG_ERROR, "pp", "deleting policy %s: %s", pol->name, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    emu_store_unlock(p->store);
    return ok;
}

static void col_copy(sqlite3_stmt *st, int col, char *out, size_t outlen)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(out, outlen, "%s", t ? (const char *)t : "");
}

static void push_inlock(pp_policies_t *p, const pp_policy *pol, char *tags /* taken */)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 16;
        p->recs = emu_xrealloc(p->recs, p->cap * sizeof *p->recs);
    }
    p->recs[p->n].pol = *pol;
    p->recs[p->n].tags = tags;
    p->n++;
}

static bool load(pp_policies_t *p, char *err, size_t errlen)
{
    sqlite3 *db = emu_store_lock(p->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(
                  db,
                  "SELECT sub, rg, name, location, kind, system_id, has_identity, identity_oid,"
                  " identity_appid, tenant, has_encryption, encryption_enabled, vault_id, key_name,"
                  " key_version, health, tags, created, created_by, created_by_type, modified,"
                  " modified_by, modified_by_type FROM pp_policies",
                  -1, &st, NULL) == SQLITE_OK;
    if (!ok)
        snprintf(err, errlen, "reading pp_policies: %s", sqlite3_errmsg(db));
    int rc = SQLITE_ROW;
    while (ok && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        pp_policy pol;
        memset(&pol, 0, sizeof pol);
        char kind[32], health[32];
        col_copy(st, 0, pol.subscription, sizeof pol.subscription);
        col_copy(st, 1, pol.resource_group, sizeof pol.resource_group);
        col_copy(st, 2, pol.name, sizeof pol.name);
        col_copy(st, 3, pol.location, sizeof pol.location);
        col_copy(st, 4, kind, sizeof kind);
        col_copy(st, 5, pol.system_id, sizeof pol.system_id);
        pol.has_identity = sqlite3_column_int(st, 6) != 0;
        col_copy(st, 7, pol.identity_oid, sizeof pol.identity_oid);
        col_copy(st, 8, pol.identity_appid, sizeof pol.identity_appid);
        col_copy(st, 9, pol.tenant, sizeof pol.tenant);
        pol.has_encryption = sqlite3_column_int(st, 10) != 0;
        pol.encryption_enabled = sqlite3_column_int(st, 11) != 0;
        col_copy(st, 12, pol.vault_id, sizeof pol.vault_id);
        col_copy(st, 13, pol.key_name, sizeof pol.key_name);
        col_copy(st, 14, pol.key_version, sizeof pol.key_version);
        col_copy(st, 15, health, sizeof health);
        const unsigned char *tags = sqlite3_column_text(st, 16);
        pol.created = sqlite3_column_int64(st, 17);
        col_copy(st, 18, pol.created_by, sizeof pol.created_by);
        col_copy(st, 19, pol.created_by_type, sizeof pol.created_by_type);
        pol.modified = sqlite3_column_int64(st, 20);
        col_copy(st, 21, pol.modified_by, sizeof pol.modified_by);
        col_copy(st, 22, pol.modified_by_type, sizeof pol.modified_by_type);
        if (!pp_kind_parse(kind, &pol.kind) || !pp_health_parse(health, &pol.health)) {
            snprintf(err, errlen, "policy %s: unknown kind '%s' or health '%s'", pol.name, kind,
                     health);
            ok = false;
            break;
        }
        push_inlock(p, &pol, tags ? emu_xstrdup((const char *)tags) : NULL);
    }
    if (ok && rc != SQLITE_DONE) {
        snprintf(err, errlen, "reading pp_policies: %s", sqlite3_errmsg(db));
        ok = false;
    }
    sqlite3_finalize(st);
    emu_store_unlock(p->store);
    return ok;
}

/* ---- open / close --------------------------------------------------------------------------- */

pp_policies_t *pp_policies_open(emu_store *store, auth_t *auth, char *err, size_t errlen)
{
    if (errlen)
        err[0] = '\0';
    if (!emu_store_migrate(store, PP_MIGRATIONS, sizeof PP_MIGRATIONS / sizeof PP_MIGRATIONS[0],
                           err, errlen))
        return NULL;
    pp_policies_t *p = emu_xcalloc(1, sizeof *p);
    p->store = store;
    p->auth = auth;
    pthread_mutex_init(&p->lock, NULL);
    if (!load(p, err, errlen)) {
        pp_policies_close(p);
        return NULL;
    }
    /* heal identities lost between a row commit and a crash (or removed by hand) */
    for (size_t i = 0; i < p->n; i++) {
        const pp_policy *pol = &p->recs[i].pol;
        auth_principal ap;
        if (!pol->has_identity || auth_principal_get(auth, pol->identity_oid, &ap))
            continue;
        auth_principal_spec s = {.kind = AUTH_KIND_MANAGED_IDENTITY,
                                 .oid = pol->identity_oid,
                                 .appid = pol->identity_appid,
                                 .tenant = pol->tenant[0] ? pol->tenant : NULL,
                                 .name = pol->name};
        char why[256] = "";
        if (!auth_principal_add(auth, &s, NULL, why, sizeof why))
            emu_log(EMU_LOG_WARN, "pp", "policy %s: cannot restore its identity %s: %s", pol->name,
                    pol->identity_oid, why);
        else
            emu_log(EMU_LOG_INFO, "pp", "policy %s: restored its identity %s", pol->name,
                    pol->identity_oid);
    }
    return p;
}

void pp_policies_close(pp_policies_t *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        free(p->recs[i].tags);
    free(p->recs);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

void pp_policies_set_link_check(pp_policies_t *p, pp_link_check_fn linked, void *ud)
{
    p->linked = linked;
    p->linked_ud = ud;
}

void pp_policies_set_link_count(pp_policies_t *p, pp_link_count_fn count, void *ud)
{
    p->count = count;
    p->count_ud = ud;
}

void pp_policies_set_deleted_hook(pp_policies_t *p, pp_deleted_fn fn, void *ud)
{
    p->deleted = fn;
    p->deleted_ud = ud;
}

/* ---- lookups -------------------------------------------------------------------------------- */

static rec *find_inlock(pp_policies_t *p, const char *sub, const char *rg, const char *name)
{
    for (size_t i = 0; i < p->n; i++) {
        const pp_policy *x = &p->recs[i].pol;
        if (!strcasecmp(x->name, name) && !strcasecmp(x->resource_group, rg) &&
            !strcasecmp(x->subscription, sub))
            return &p->recs[i];
    }
    return NULL;
}

static rec *find_system_id_inlock(pp_policies_t *p, const char *system_id)
{
    for (size_t i = 0; i < p->n; i++)
        if (!strcasecmp(p->recs[i].pol.system_id, system_id))
            return &p->recs[i];
    return NULL;
}

pp_status pp_policy_get(pp_policies_t *p, const char *sub, const char *rg, const char *name,
                        pp_policy *out)
{
    if (!sub || !rg || !name)
        return PP_ERR_NOT_FOUND;
    pthread_mutex_lock(&p->lock);
    rec *r = find_inlock(p, sub, rg, name);
    if (r && out)
        *out = r->pol;
    pthread_mutex_unlock(&p->lock);
    return r ? PP_OK : PP_ERR_NOT_FOUND;
}

pp_status pp_policy_get_by_arm_id(pp_policies_t *p, const char *id, pp_policy *out)
{
    arm_id a;
    if (!arm_id_parse(id, &a) || !a.name[0] || strcasecmp(a.ns, "Microsoft.PowerPlatform") ||
        strcasecmp(a.type, "enterprisePolicies"))
        return PP_ERR_NOT_FOUND;
    return pp_policy_get(p, a.subscription, a.resource_group, a.name, out);
}

pp_status pp_policy_get_by_system_id(pp_policies_t *p, const char *system_id, pp_policy *out)
{
    if (!system_id)
        return PP_ERR_NOT_FOUND;
    pthread_mutex_lock(&p->lock);
    rec *r = find_system_id_inlock(p, system_id);
    if (r && out)
        *out = r->pol;
    pthread_mutex_unlock(&p->lock);
    return r ? PP_OK : PP_ERR_NOT_FOUND;
}

json_t *pp_policy_tags(pp_policies_t *p, const char *sub, const char *rg, const char *name)
{
    json_t *t = NULL;
    pthread_mutex_lock(&p->lock);
    rec *r = find_inlock(p, sub, rg, name);
    if (r && r->tags)
        t = json_loads(r->tags, 0, NULL);
    pthread_mutex_unlock(&p->lock);
    return t;
}

static int cmp_policy(const void *a, const void *b)
{
    const pp_policy *x = a, *y = b;
    int c = strcasecmp(x->subscription, y->subscription);
    if (!c)
        c = strcasecmp(x->resource_group, y->resource_group);
    return c ? c : strcasecmp(x->name, y->name);
}

size_t pp_policy_list(pp_policies_t *p, const char *sub, const char *rg, pp_policy **out)
{
    *out = NULL;
    size_t n = 0;
    pthread_mutex_lock(&p->lock);
    if (p->n)
        *out = emu_xcalloc(p->n, sizeof **out);
    for (size_t i = 0; i < p->n; i++) {
        const pp_policy *x = &p->recs[i].pol;
        if ((sub && strcasecmp(x->subscription, sub)) ||
            (sub && rg && strcasecmp(x->resource_group, rg)))
            continue;
        (*out)[n++] = *x;
    }
    pthread_mutex_unlock(&p->lock);
    if (n == 0) {
        free(*out);
        *out = NULL;
    } else {
        qsort(*out, n, sizeof **out, cmp_policy);
    }
    return n;
}

char *pp_policy_arm_id(const pp_policy *pol)
{
    return emu_xasprintf("/subscriptions/%s/resourceGroups/%s/providers/" PP_POLICY_TYPE "/%s",
                         pol->subscription, pol->resource_group, pol->name);
}

/* ---- links ---------------------------------------------------------------------------------- */

/* Called without the lock. true (and a message) when environments are linked. */
static bool refuse_if_linked(pp_policies_t *p, const pp_policy *pol, const char *what, pp_err *e)
{
    if (!p->linked || !p->linked(pol->system_id, p->linked_ud))
        return false;
    size_t n = p->count ? p->count(pol->system_id, p->count_ud) : 0;
    char count[64];
    if (n)
        snprintf(count, sizeof count, "%zu environment%s", n, n == 1 ? "" : "s");
    else
        snprintf(count, sizeof count, "one or more environments");
    fail(e, PP_ERR_LINKED, NULL,
         "The enterprise policy '%s' cannot be %s: %s %s linked to it. Remove the environments "
         "from the policy (unlink) first.",
         pol->name, what, count, n == 1 ? "is" : "are");
    return true;
}

/* ---- put / delete --------------------------------------------------------------------------- */

static char *tags_text(const json_t *tags)
{
    if (!tags || !json_is_object(tags) || json_object_size(tags) == 0)
        return NULL;
    return json_dumps(tags, JSON_COMPACT | JSON_SORT_KEYS);
}

/* Checks an update against the stored policy; *key_change when vault/key/version differ. */
static pp_status check_update(const pp_policy *cur, const pp_policy_spec *s, bool *key_change,
                              pp_err *e)
{
    *key_change = false;
    if (strcasecmp(cur->location, s->location))
        return fail(e, PP_ERR_CHANGE_NOT_ALLOWED, "location",
                    "The location of enterprise policy '%s' cannot change (it is '%s'). Only "
                    "the key vault id, key name and key version can be updated.",
                    cur->name, cur->location);
    if (cur->kind != s->kind)
        return fail(e, PP_ERR_CHANGE_NOT_ALLOWED, "kind",
                    "The kind of enterprise policy '%s' cannot change (it is '%s'). Only the key "
                    "vault id, key name and key version can be updated.",
                    cur->name, pp_kind_str(cur->kind));
    if (cur->has_identity != s->identity)
        return fail(e, PP_ERR_CHANGE_NOT_ALLOWED, "identity.type",
                    "The identity of enterprise policy '%s' cannot change (it is '%s'). Only the "
                    "key vault id, key name and key version can be updated.",
                    cur->name, cur->has_identity ? "SystemAssigned" : "None");
    if (cur->has_encryption != s->has_encryption ||
        (cur->has_encryption && cur->encryption_enabled != s->encryption_enabled))
        return fail(e, PP_ERR_CHANGE_NOT_ALLOWED, "properties.encryption.state",
                    "The encryption state of enterprise policy '%s' cannot change. Only the key "
                    "vault id, key name and key version can be updated.",
                    cur->name);
    if (s->has_encryption) {
        char canon[512] = "";
        if (s->vault_id)
            canon_vault_id(s->vault_id, canon, sizeof canon);
        const char *ver = s->key_version ? s->key_version : "";
        *key_change = strcasecmp(cur->vault_id, canon) ||
                      strcasecmp(cur->key_name, s->key_name ? s->key_name : "") ||
                      strcasecmp(cur->key_version, ver);
    }
    return PP_OK;
}

static void fill_common(pp_policy *pol, const pp_policy_spec *s)
{
    pol->has_encryption = s->has_encryption;
    pol->encryption_enabled = s->has_encryption && s->encryption_enabled;
    pol->vault_id[0] = pol->key_name[0] = pol->key_version[0] = '\0';
    if (s->has_encryption) {
        canon_vault_id(s->vault_id, pol->vault_id, sizeof pol->vault_id);
        snprintf(pol->key_name, sizeof pol->key_name, "%s", s->key_name);
        snprintf(pol->key_version, sizeof pol->key_version, "%s",
                 s->key_version ? s->key_version : "");
        for (char *c = pol->key_version; *c; c++)
            *c = (char)tolower((unsigned char)*c);
    }
    pol->modified = emu_clock_now();
    snprintf(pol->modified_by, sizeof pol->modified_by, "%s", s->by ? s->by : "");
    snprintf(pol->modified_by_type, sizeof pol->modified_by_type, "%s",
             s->by_type ? s->by_type : "");
}

pp_status pp_policy_put(pp_policies_t *p, const pp_policy_spec *s, pp_policy *out, bool *created,
                        pp_err *e)
{
    pp_status st = PP_OK;
    bool key_change = false;
    if (created)
        *created = false;
    pp_policy cur;
    bool exists = pp_policy_get(p, s->subscription, s->resource_group, s->name, &cur) == PP_OK;
    if (!exists && s->update_only)
        return fail(e, PP_ERR_NOT_FOUND, NULL,
                    "The Resource '" PP_POLICY_TYPE "/%s' under resource group '%s' was not "
                    "found.",
                    s->name, s->resource_group);
    /* what may not change is named before what is malformed */
    if (exists && s->location && (st = check_update(&cur, s, &key_change, e)) != PP_OK)
        return st;
    if ((st = pp_policy_spec_check(s, e)) != PP_OK)
        return st;
    if (exists && key_change && refuse_if_linked(p, &cur, "updated", e))
        return PP_ERR_LINKED;

    pthread_mutex_lock(&p->lock);
    rec *r = find_inlock(p, s->subscription, s->resource_group, s->name);
    if ((r != NULL) != exists || (r && strcmp(r->pol.system_id, cur.system_id))) {
        st = fail(e, PP_ERR_CONFLICT, NULL,
                  "The enterprise policy '%s' changed while this request ran; retry.", s->name);
        goto out;
    }
    if (r) {
        pp_policy next = r->pol;
        fill_common(&next, s);
        if (key_change)
            next.health = PP_HEALTH_UNDETERMINED;
        char *tags = s->set_tags ? tags_text(s->tags) : (r->tags ? emu_xstrdup(r->tags) : NULL);
        if (!row_save(p, &next, tags)) {
            free(tags);
            st = fail(e, PP_ERR_STORE, NULL, "The enterprise policy could not be saved.");
            goto out;
        }
        free(r->tags);
        r->pol = next;
        r->tags = tags;
        if (out)
            *out = next;
        goto out;
    }

    if (p->n >= MAX_POLICIES) {
        st = fail(e, PP_ERR_BAD_PARAM, NULL, "The emulator holds at most %d enterprise policies.",
                  MAX_POLICIES);
        goto out;
    }
    pp_policy pol;
    memset(&pol, 0, sizeof pol);
    snprintf(pol.subscription, sizeof pol.subscription, "%s", s->subscription);
    snprintf(pol.resource_group, sizeof pol.resource_group, "%s", s->resource_group);
    snprintf(pol.name, sizeof pol.name, "%s", s->name);
    snprintf(pol.location, sizeof pol.location, "%s", s->location);
    for (char *c = pol.location; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    pol.kind = s->kind;
    char guid[37];
    do {
        emu_guid(guid);
        snprintf(pol.system_id, sizeof pol.system_id, "/regions/%s/providers/" PP_POLICY_TYPE "/%s",
                 pol.location, guid);
    } while (find_system_id_inlock(p, pol.system_id));
    fill_common(&pol, s);
    pol.health = PP_HEALTH_UNDETERMINED;
    pol.created = pol.modified;
    snprintf(pol.created_by, sizeof pol.created_by, "%s", pol.modified_by);
    snprintf(pol.created_by_type, sizeof pol.created_by_type, "%s", pol.modified_by_type);
    if (s->identity) {
        auth_principal_spec as = {.kind = AUTH_KIND_MANAGED_IDENTITY,
                                  .oid = s->identity_oid,
                                  .appid = s->identity_appid,
                                  .name = s->name};
        auth_principal ap;
        char why[256] = "";
        if (!auth_principal_add(p->auth, &as, &ap, why, sizeof why)) {
            st = fail(e, s->identity_oid || s->identity_appid ? PP_ERR_CONFLICT : PP_ERR_IDENTITY,
                      "identity",
                      "The managed identity of enterprise policy '%s' could not be "
                      "created: %s.",
                      s->name, why);
            goto out;
        }
        pol.has_identity = true;
        snprintf(pol.identity_oid, sizeof pol.identity_oid, "%s", ap.oid);
        snprintf(pol.identity_appid, sizeof pol.identity_appid, "%s", ap.appid);
        snprintf(pol.tenant, sizeof pol.tenant, "%s", ap.tid);
    } else {
        snprintf(pol.tenant, sizeof pol.tenant, "%s", auth_default_tenant(p->auth));
    }
    char *tags = s->set_tags ? tags_text(s->tags) : NULL;
    if (!row_save(p, &pol, tags)) {
        if (pol.has_identity)
            auth_principal_remove(p->auth, pol.identity_oid);
        free(tags);
        st = fail(e, PP_ERR_STORE, NULL, "The enterprise policy could not be saved.");
        goto out;
    }
    push_inlock(p, &pol, tags);
    if (created)
        *created = true;
    if (out)
        *out = pol;
    emu_log(EMU_LOG_INFO, "pp", "enterprise policy %s created (%s, identity %s)", pol.name,
            pol.system_id, pol.has_identity ? pol.identity_oid : "none");
out:
    pthread_mutex_unlock(&p->lock);
    return st;
}

pp_status pp_policy_delete(pp_policies_t *p, const char *sub, const char *rg, const char *name,
                           bool force, pp_err *e)
{
    pp_policy cur;
    if (pp_policy_get(p, sub, rg, name, &cur) != PP_OK)
        return fail(e, PP_ERR_NOT_FOUND, NULL, "The enterprise policy '%.128s' was not found.",
                    name ? name : "");
    if (!force && refuse_if_linked(p, &cur, "deleted", e))
        return PP_ERR_LINKED;
    pp_status st = PP_OK;
    pthread_mutex_lock(&p->lock);
    rec *r = find_inlock(p, sub, rg, name);
    if (!r || strcmp(r->pol.system_id, cur.system_id)) {
        st = fail(e, PP_ERR_CONFLICT, NULL,
                  "The enterprise policy '%s' changed while this request ran; retry.", cur.name);
    } else if (!row_delete(p, &r->pol)) {
        st = fail(e, PP_ERR_STORE, NULL, "The enterprise policy could not be deleted.");
    } else {
        if (r->pol.has_identity && !auth_principal_remove(p->auth, r->pol.identity_oid))
            emu_log(EMU_LOG_WARN, "pp", "policy %s: its identity %s was already gone", cur.name,
                    cur.identity_oid);
        free(r->tags);
        size_t i = (size_t)(r - p->recs);
        memmove(p->recs + i, p->recs + i + 1, (p->n - i - 1) * sizeof *p->recs);
        p->n--;
        emu_log(EMU_LOG_INFO, "pp", "enterprise policy %s deleted (%s)", cur.name, cur.system_id);
    }
    pthread_mutex_unlock(&p->lock);
    if (st == PP_OK && p->deleted)
        p->deleted(cur.system_id, p->deleted_ud);
    return st;
}

pp_status pp_policy_set_health(pp_policies_t *p, const char *system_id, pp_health h)
{
    if ((unsigned)h > PP_HEALTH_UNHEALTHY || !system_id)
        return PP_ERR_BAD_PARAM;
    pp_status st = PP_OK;
    pthread_mutex_lock(&p->lock);
    rec *r = find_system_id_inlock(p, system_id);
    if (!r) {
        st = PP_ERR_NOT_FOUND;
    } else if (r->pol.health != h) {
        pp_policy next = r->pol;
        next.health = h;
        if (row_save(p, &next, r->tags))
            r->pol = next;
        else
            st = PP_ERR_STORE;
    }
    pthread_mutex_unlock(&p->lock);
    return st;
}
