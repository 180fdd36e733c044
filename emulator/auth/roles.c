#include "roles.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "log.h"
#include "util.h"

/* ---- built-in role definitions -------------------------------------------------------------
 * GUIDs, actions and dataActions as Azure publishes them (built-in roles reference), trimmed
 * of actions on providers the emulator does not have where that changes nothing here. */

static const char *const NONE[] = {NULL};
static const char *const ALL[] = {"*", NULL};
static const char *const READ_ALL[] = {"*/read", NULL};
static const char *const CONTRIBUTOR_NOT[] = {"Microsoft.Authorization/*/Delete",
                                              "Microsoft.Authorization/*/Write",
                                              "Microsoft.Authorization/elevateAccess/Action",
                                              NULL};
static const char *const UAA_ACTIONS[] = {"*/read", "Microsoft.Authorization/*",
                                          "Microsoft.Support/*", NULL};
static const char *const KV_DATA_ROLE_ACTIONS[] = {
    "Microsoft.Authorization/*/read",
    "Microsoft.Insights/alertRules/*",
    "Microsoft.Resources/deployments/*",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Support/*",
    "Microsoft.KeyVault/checkNameAvailability/read",
    "Microsoft.KeyVault/deletedVaults/read",
    "Microsoft.KeyVault/locations/*/read",
    "Microsoft.KeyVault/vaults/*/read",
    "Microsoft.KeyVault/operations/read",
    NULL};
static const char *const KV_CONTRIBUTOR_ACTIONS[] = {
    "Microsoft.Authorization/*/read", "Microsoft.Insights/alertRules/*", "Microsoft.KeyVault/*",
    "Microsoft.Resources/deployments/*", "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Support/*", NULL};
static const char *const KV_CONTRIBUTOR_NOT[] = {
    "Microsoft.KeyVault/locations/deletedVaults/purge/action", "Microsoft.KeyVault/hsmPools/*",
    "Microsoft.KeyVault/managedHsms/*", NULL};
static const char *const KV_ADMIN_DATA[] = {"Microsoft.KeyVault/vaults/*", NULL};
static const char *const KV_OFFICER_DATA[] = {"Microsoft.KeyVault/vaults/keys/*",
                                              "Microsoft.KeyVault/vaults/keyrotationpolicies/*",
                                              NULL};
static const char *const KV_CRYPTO_USER_DATA[] = {
    "Microsoft.KeyVault/vaults/keys/read",           "Microsoft.KeyVault/vaults/keys/update/action",
    "Microsoft.KeyVault/vaults/keys/backup/action",  "Microsoft.KeyVault/vaults/keys/encrypt/action",
    "Microsoft.KeyVault/vaults/keys/decrypt/action", "Microsoft.KeyVault/vaults/keys/wrap/action",
    "Microsoft.KeyVault/vaults/keys/unwrap/action",  "Microsoft.KeyVault/vaults/keys/sign/action",
    "Microsoft.KeyVault/vaults/keys/verify/action",  NULL};
static const char *const KV_CSEU_ACTIONS[] = {"Microsoft.EventGrid/eventSubscriptions/write",
                                              "Microsoft.EventGrid/eventSubscriptions/read",
                                              "Microsoft.EventGrid/eventSubscriptions/delete",
                                              NULL};
static const char *const KV_CSEU_DATA[] = {"Microsoft.KeyVault/vaults/keys/read",
                                           "Microsoft.KeyVault/vaults/keys/wrap/action",
                                           "Microsoft.KeyVault/vaults/keys/unwrap/action", NULL};
static const char *const KV_RELEASE_DATA[] = {"Microsoft.KeyVault/vaults/keys/release/action",
                                              NULL};
static const char *const KV_READER_DATA[] = {"Microsoft.KeyVault/vaults/*/read",
                                             "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
                                             NULL};

#define ROLE_OWNER "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
#define ROLE_CONTRIBUTOR "b24988ac-6180-42a0-ab88-20f7382dd24c"
#define ROLE_READER "acdd72a7-3385-48ef-bd42-f606fba81ae7"

static const auth_role_def ROLE_DEFS[] = {
    {ROLE_OWNER, "Owner",
     "Grants full access to manage all resources, including the ability to assign roles in Azure "
     "RBAC.",
     ALL, NONE, NONE},
    {ROLE_CONTRIBUTOR, "Contributor",
     "Grants full access to manage all resources, but does not allow you to assign roles in "
     "Azure RBAC, manage assignments in Azure Blueprints, or share image galleries.",
     ALL, CONTRIBUTOR_NOT, NONE},
    {ROLE_READER, "Reader", "View all resources, but does not allow you to make any changes.",
     READ_ALL, NONE, NONE},
    {"18d7d88d-d35e-4fb5-a5c3-7773c20a72d9", "User Access Administrator",
     "Lets you manage user access to Azure resources.", UAA_ACTIONS, NONE, NONE},
    {"f25e0fa2-a7c8-4377-a976-54943a77a395", "Key Vault Contributor",
     "Lets you manage key vaults, but not access to them.", KV_CONTRIBUTOR_ACTIONS,
     KV_CONTRIBUTOR_NOT, NONE},
    {"00482a5a-887f-4fb3-b363-3b7fe8e74483", "Key Vault Administrator",
     "Perform all data plane operations on a key vault and all objects in it, including "
     "certificates, keys, and secrets. Cannot manage key vault resources or manage role "
     "assignments. Only works for key vaults that use the 'Azure role-based access control' "
     "permission model.",
     KV_DATA_ROLE_ACTIONS, NONE, KV_ADMIN_DATA},
    {"14b46e9e-c2b7-41b4-b07b-48a6ebf60603", "Key Vault Crypto Officer",
     "Perform any action on the keys of a key vault, except manage permissions. Only works for "
     "key vaults that use the 'Azure role-based access control' permission model.",
     KV_DATA_ROLE_ACTIONS, NONE, KV_OFFICER_DATA},
    {"12338af0-0e69-4776-bea7-57ae8d297424", "Key Vault Crypto User",
     "Perform cryptographic operations using keys. Only works for key vaults that use the "
     "'Azure role-based access control' permission model.",
     NONE, NONE, KV_CRYPTO_USER_DATA},
    {"e147488a-f6f5-4113-8e2d-b22465e65bf6", "Key Vault Crypto Service Encryption User",
     "Read metadata of keys and perform wrap/unwrap operations. Only works for key vaults that "
     "use the 'Azure role-based access control' permission model.",
     KV_CSEU_ACTIONS, NONE, KV_CSEU_DATA},
    {"08bbd89e-9f13-488c-ac41-acfcb10c90ab", "Key Vault Crypto Service Release User",
     "Release keys. Only works for key vaults that use the 'Azure role-based access control' "
     "permission model.",
     NONE, NONE, KV_RELEASE_DATA},
    {"21090545-7ca7-4776-b22c-e363652d74d2", "Key Vault Reader",
     "Read metadata of key vaults and its certificates, keys, and secrets. Cannot read sensitive "
     "values such as secret contents or key material. Only works for key vaults that use the "
     "'Azure role-based access control' permission model.",
     KV_DATA_ROLE_ACTIONS, NONE, KV_READER_DATA},
};
#define N_ROLE_DEFS (sizeof ROLE_DEFS / sizeof ROLE_DEFS[0])

/* Key permission (access-policy name) -> the data action Key Vault checks in RBAC mode. */
static const struct {
    const char *perm, *action;
} KEY_ACTIONS[] = {
    {"get", "Microsoft.KeyVault/vaults/keys/read"},
    {"list", "Microsoft.KeyVault/vaults/keys/read"},
    {"create", "Microsoft.KeyVault/vaults/keys/create/action"},
    {"import", "Microsoft.KeyVault/vaults/keys/import/action"},
    {"update", "Microsoft.KeyVault/vaults/keys/update/action"},
    {"delete", "Microsoft.KeyVault/vaults/keys/delete"},
    {"recover", "Microsoft.KeyVault/vaults/keys/recover/action"},
    {"backup", "Microsoft.KeyVault/vaults/keys/backup/action"},
    {"restore", "Microsoft.KeyVault/vaults/keys/restore/action"},
    {"purge", "Microsoft.KeyVault/vaults/keys/purge/action"},
    {"encrypt", "Microsoft.KeyVault/vaults/keys/encrypt/action"},
    {"decrypt", "Microsoft.KeyVault/vaults/keys/decrypt/action"},
    {"wrapKey", "Microsoft.KeyVault/vaults/keys/wrap/action"},
    {"unwrapKey", "Microsoft.KeyVault/vaults/keys/unwrap/action"},
    {"sign", "Microsoft.KeyVault/vaults/keys/sign/action"},
    {"verify", "Microsoft.KeyVault/vaults/keys/verify/action"},
    {"release", "Microsoft.KeyVault/vaults/keys/release/action"},
    {"rotate", "Microsoft.KeyVault/vaults/keys/rotate/action"},
    {"getrotationpolicy", "Microsoft.KeyVault/vaults/keyrotationpolicies/read"},
    {"setrotationpolicy", "Microsoft.KeyVault/vaults/keyrotationpolicies/write"},
};

static bool is_guid(const char *s)
{
    if (!s || strlen(s) != 36)
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

/* ARM action pattern match: '*' matches any run of characters; case-insensitive. */
static bool glob_ci(const char *pat, const char *s)
{
    const char *star = NULL, *resume = NULL;
    while (*s) {
        if (*pat == '*') {
            star = pat++;
            resume = s;
        } else if (tolower((unsigned char)*pat) == tolower((unsigned char)*s)) {
            pat++;
            s++;
        } else if (star) {
            pat = star + 1;
            s = ++resume;
        } else {
            return false;
        }
    }
    while (*pat == '*')
        pat++;
    return *pat == '\0';
}

static bool any_glob(const char *const *pats, const char *s)
{
    for (; *pats; pats++)
        if (glob_ci(*pats, s))
            return true;
    return false;
}

static bool in_list_ci(const char *const *list, const char *s)
{
    for (; *list; list++)
        if (!strcasecmp(*list, s))
            return true;
    return false;
}

size_t auth_role_defs(const auth_role_def **out)
{
    *out = ROLE_DEFS;
    return N_ROLE_DEFS;
}

const auth_role_def *auth_role_def_find(const char *s)
{
    if (!s || !*s)
        return NULL;
    const char *slash = strrchr(s, '/');
    if (slash) {
        /* a definition id: .../providers/Microsoft.Authorization/roleDefinitions/{guid} */
        static const char tail[] = "/providers/Microsoft.Authorization/roleDefinitions";
        size_t pre = (size_t)(slash - s), tl = sizeof tail - 1;
        if (pre < tl || strncasecmp(slash - tl, tail, tl) != 0)
            return NULL;
        s = slash + 1;
    }
    for (size_t i = 0; i < N_ROLE_DEFS; i++)
        if (!strcasecmp(ROLE_DEFS[i].guid, s) || (!slash && !strcasecmp(ROLE_DEFS[i].name, s)))
            return &ROLE_DEFS[i];
    return NULL;
}

const char *auth_roles_key_data_action(const char *perm)
{
    if (!perm)
        return NULL;
    for (size_t i = 0; i < sizeof KEY_ACTIONS / sizeof KEY_ACTIONS[0]; i++)
        if (!strcasecmp(KEY_ACTIONS[i].perm, perm))
            return KEY_ACTIONS[i].action;
    return NULL;
}

bool auth_role_def_grants_data_action(const auth_role_def *d, const char *action)
{
    return d && action && any_glob(d->data_actions, action);
}

/* true when some action matches both patterns (the patterns are short, static strings) */
static bool globs_overlap(const char *a, const char *b)
{
    if (!*a && !*b)
        return true;
    if (*a == '*')
        return globs_overlap(a + 1, b) || (*b && globs_overlap(a, b + 1));
    if (*b == '*')
        return globs_overlap(a, b + 1) || (*a && globs_overlap(a + 1, b));
    if (!*a || !*b)
        return false;
    return tolower((unsigned char)*a) == tolower((unsigned char)*b) && globs_overlap(a + 1, b + 1);
}

/* R implies T when R's actions and dataActions cover T's (T's patterns read literally) and no
 * notAction of R takes away anything T's actions could grant. */
static bool role_implies(const auth_role_def *r, const auth_role_def *t)
{
    if (r == t)
        return true;
    for (const char *const *a = t->actions; *a; a++) {
        if (!any_glob(r->actions, *a))
            return false;
        for (const char *const *n = r->not_actions; *n; n++)
            if (globs_overlap(*n, *a))
                return false;
    }
    for (const char *const *a = t->data_actions; *a; a++)
        if (!any_glob(r->data_actions, *a))
            return false;
    return true;
}

/* ---- scopes ----------------------------------------------------------------------------------- */

bool auth_roles_scope_canon(const char *scope, char *out, size_t outlen)
{
    enum { MAX_SEGS = 24 };
    const char *seg[MAX_SEGS];
    size_t len[MAX_SEGS], n = 0;
    if (!scope || outlen == 0)
        return false;
    for (const char *p = scope; *p;) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *e = p;
        while (*e && *e != '/') {
            unsigned char c = (unsigned char)*e;
            if (c < 0x20 || c == '?' || c == '#' || c == '"' || c == '\'' || c == '\\')
                return false;
            e++;
        }
        if (n == MAX_SEGS)
            return false;
        seg[n] = p;
        len[n++] = (size_t)(e - p);
        p = e;
    }
#define SEG_IS(i, w) (len[i] == sizeof(w) - 1 && !strncasecmp(seg[i], w, sizeof(w) - 1))
    if (n < 2 || !SEG_IS(0, "subscriptions"))
        return false;
    size_t i = 2;
    if (i < n && SEG_IS(i, "resourcegroups")) {
        if (i + 1 >= n)
            return false;
        i += 2;
    }
    if (i < n) {
        if (!SEG_IS(i, "providers") || n - i < 4 || (n - i - 4) % 2 != 0)
            return false;
        if (SEG_IS(i + 1, "Microsoft.Authorization"))
            return false;
        for (size_t k = i + 1; k < n; k++)
            if (SEG_IS(k, "providers"))
                return false;
    }
    size_t o = 0;
    for (size_t k = 0; k < n; k++) {
        const char *w = seg[k];
        size_t wl = len[k];
        if (k == 0)
            w = "subscriptions", wl = 13;
        else if (k == 2 && SEG_IS(k, "resourcegroups"))
            w = "resourceGroups", wl = 14;
        else if (SEG_IS(k, "providers"))
            w = "providers", wl = 9;
        if (o + 1 + wl + 1 > outlen)
            return false;
        out[o++] = '/';
        memcpy(out + o, w, wl);
        o += wl;
    }
    out[o] = '\0';
#undef SEG_IS
    return true;
}

/* true when an assignment at scope s applies to resource r (r is s or below it); both
 * canonical. */
static bool scope_covers(const char *s, const char *r)
{
    size_t n = strlen(s);
    return strncasecmp(s, r, n) == 0 && (r[n] == '\0' || r[n] == '/');
}

/* ---- the module ------------------------------------------------------------------------------- */

struct auth_roles {
    pthread_rwlock_t lock; /* over list/n/cap */
    emu_store *store;
    auth_t *auth;
    auth_role_assignment *list;
    size_t n, cap;
    auth_roles_change_fn change_fn;
    void *change_ud;
};

static const emu_migration ROLES_MIGRATIONS[] = {
    {"roles", 1,
     "CREATE TABLE auth_role_assignments(name TEXT PRIMARY KEY COLLATE NOCASE,"
     " scope TEXT NOT NULL, role TEXT NOT NULL, principal TEXT NOT NULL,"
     " principal_type TEXT NOT NULL, description TEXT NOT NULL, created INTEGER NOT NULL,"
     " updated INTEGER NOT NULL, created_by TEXT NOT NULL, updated_by TEXT NOT NULL,"
     " created_by_type TEXT NOT NULL);"},
};

const char *auth_roles_status_str(roles_status st)
{
    switch (st) {
    case ROLES_OK: return "ok";
    case ROLES_ERR_BAD_REQUEST: return "bad request";
    case ROLES_ERR_BAD_ID: return "bad assignment id";
    case ROLES_ERR_BAD_SCOPE: return "bad scope";
    case ROLES_ERR_ROLE_NOT_FOUND: return "role definition not found";
    case ROLES_ERR_BAD_PRINCIPAL_ID: return "bad principal id";
    case ROLES_ERR_PRINCIPAL_NOT_FOUND: return "principal not found";
    case ROLES_ERR_PRINCIPAL_TYPE: return "principal type mismatch";
    case ROLES_ERR_EXISTS: return "assignment exists";
    case ROLES_ERR_UPDATE_NOT_ALLOWED: return "update not permitted";
    case ROLES_ERR_LIMIT: return "limit exceeded";
    case ROLES_ERR_NOT_FOUND: return "not found";
    case ROLES_ERR_STORE: return "store failure";
    }
    return "unknown";
}

static void col_text(sqlite3_stmt *st, int col, char *out, size_t outlen)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(out, outlen, "%s", t ? (const char *)t : "");
}

static bool load_inlock(roles_t *r)
{
    sqlite3 *db = emu_store_lock(r->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db,
                                 "SELECT name,scope,role,principal,principal_type,description,"
                                 "created,updated,created_by,updated_by,created_by_type FROM "
                                 "auth_role_assignments ORDER BY created, rowid",
                                 -1, &st, NULL) == SQLITE_OK;
    int rc = SQLITE_DONE;
    while (ok && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        auth_role_assignment a;
        memset(&a, 0, sizeof a);
        col_text(st, 0, a.name, sizeof a.name);
        col_text(st, 1, a.scope, sizeof a.scope);
        col_text(st, 2, a.role_guid, sizeof a.role_guid);
        col_text(st, 3, a.principal_id, sizeof a.principal_id);
        col_text(st, 4, a.principal_type, sizeof a.principal_type);
        col_text(st, 5, a.description, sizeof a.description);
        a.created = sqlite3_column_int64(st, 6);
        a.updated = sqlite3_column_int64(st, 7);
        col_text(st, 8, a.created_by, sizeof a.created_by);
        col_text(st, 9, a.updated_by, sizeof a.updated_by);
        col_text(st, 10, a.created_by_type, sizeof a.created_by_type);
        if (r->n == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 32;
            r->list = emu_xrealloc(r->list, r->cap * sizeof *r->list);
        }
        r->list[r->n++] = a;
    }
    if (ok && rc != SQLITE_DONE)
        ok = false;
    sqlite3_finalize(st);
    emu_store_unlock(r->store);
    return ok;
}

roles_t *auth_roles_open(emu_store *store, auth_t *auth, char *err, size_t errlen)
{
    if (!emu_store_migrate(store, ROLES_MIGRATIONS,
                           sizeof ROLES_MIGRATIONS / sizeof ROLES_MIGRATIONS[0], err, errlen))
        return NULL;
    roles_t *r = emu_xcalloc(1, sizeof *r);
    pthread_rwlock_init(&r->lock, NULL);
    r->store = store;
    r->auth = auth;
    if (!load_inlock(r)) {
        snprintf(err, errlen, "cannot load role assignments");
        auth_roles_close(r);
        return NULL;
    }
    return r;
}

void auth_roles_close(roles_t *r)
{
    if (!r)
        return;
    free(r->list);
    pthread_rwlock_destroy(&r->lock);
    free(r);
}

void auth_roles_set_change_hook(roles_t *r, auth_roles_change_fn fn, void *ud)
{
    r->change_fn = fn;
    r->change_ud = ud;
}

size_t auth_roles_count(roles_t *r)
{
    pthread_rwlock_rdlock(&r->lock);
    size_t n = r->n;
    pthread_rwlock_unlock(&r->lock);
    return n;
}

static auth_role_assignment *find_name_inlock(roles_t *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++)
        if (!strcasecmp(r->list[i].name, name))
            return &r->list[i];
    return NULL;
}

static const char *principal_type_of(auth_principal_kind k)
{
    return k == AUTH_KIND_USER ? "User" : "ServicePrincipal";
}

static bool store_insert(roles_t *r, const auth_role_assignment *a)
{
    sqlite3 *db = emu_store_lock(r->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db,
                                 "INSERT INTO auth_role_assignments(name,scope,role,principal,"
                                 "principal_type,description,created,updated,created_by,"
                                 "updated_by,created_by_type) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                                 -1, &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, a->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, a->scope, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, a->role_guid, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, a->principal_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, a->principal_type, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, a->description, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 7, a->created);
        sqlite3_bind_int64(st, 8, a->updated);
        sqlite3_bind_text(st, 9, a->created_by, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 10, a->updated_by, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 11, a->created_by_type, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
        if (!ok)
            emu_log(EMU_LOG_ERROR, "roles", "cannot save role assignment: %s",
                    sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    emu_store_unlock(r->store);
    return ok;
}

static bool store_delete(roles_t *r, const char *name)
{
    sqlite3 *db = emu_store_lock(r->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db, "DELETE FROM auth_role_assignments WHERE name=?", -1, &st,
                                 NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
        if (!ok)
            emu_log(EMU_LOG_ERROR, "roles", "cannot delete role assignment: %s",
                    sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    emu_store_unlock(r->store);
    return ok;
}

roles_status auth_roles_put(roles_t *r, const auth_role_assignment *in, bool *created,
                            auth_role_assignment *out, char *msg, size_t msglen)
{
    auth_role_assignment a;
    memset(&a, 0, sizeof a);
    if (created)
        *created = false;
    if (!is_guid(in->name)) {
        snprintf(msg, msglen,
                 "The role assignment ID '%.60s' is not valid. The role assignment ID must be a "
                 "GUID.",
                 in->name);
        return ROLES_ERR_BAD_ID;
    }
    if (!auth_roles_scope_canon(in->scope, a.scope, sizeof a.scope)) {
        snprintf(msg, msglen,
                 "The scope '%.300s' is not valid: it must be a subscription, resource group or "
                 "resource id (/subscriptions/{id}[/resourceGroups/{name}][/providers/...]).",
                 in->scope);
        return ROLES_ERR_BAD_SCOPE;
    }
    const auth_role_def *d = auth_role_def_find(in->role_guid);
    if (!d) {
        const char *s = strrchr(in->role_guid, '/');
        snprintf(msg, msglen, "The specified role definition with ID '%.60s' does not exist.",
                 s ? s + 1 : in->role_guid);
        return ROLES_ERR_ROLE_NOT_FOUND;
    }
    if (!is_guid(in->principal_id)) {
        snprintf(msg, msglen, "The principal ID '%.60s' is not valid. It must be a GUID.",
                 in->principal_id);
        return ROLES_ERR_BAD_PRINCIPAL_ID;
    }
    auth_principal p;
    if (!auth_principal_get(r->auth, in->principal_id, &p)) {
        snprintf(msg, msglen,
                 "Principal %.40s does not exist in the directory %.40s. Check that you have the "
                 "correct principal ID.",
                 in->principal_id, auth_default_tenant(r->auth));
        return ROLES_ERR_PRINCIPAL_NOT_FOUND;
    }
    const char *actual = principal_type_of(p.kind);
    if (in->principal_type[0]) {
        static const char *const TYPES[] = {"User", "Group", "ServicePrincipal", "ForeignGroup",
                                            NULL};
        if (!in_list_ci(TYPES, in->principal_type)) {
            snprintf(msg, msglen,
                     "The principalType '%.30s' is not valid: User, Group, ServicePrincipal or "
                     "ForeignGroup.",
                     in->principal_type);
            return ROLES_ERR_BAD_REQUEST;
        }
        if (strcasecmp(in->principal_type, actual) != 0) {
            snprintf(msg, msglen,
                     "The PrincipalId '%.40s' has type '%s', which is different from specified "
                     "PrincipalType '%.30s'.",
                     p.oid, actual, in->principal_type);
            return ROLES_ERR_PRINCIPAL_TYPE;
        }
    }
    snprintf(a.name, sizeof a.name, "%s", in->name);
    for (char *c = a.name; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    snprintf(a.role_guid, sizeof a.role_guid, "%s", d->guid);
    snprintf(a.principal_id, sizeof a.principal_id, "%s", p.oid);
    snprintf(a.principal_type, sizeof a.principal_type, "%s", actual);
    snprintf(a.description, sizeof a.description, "%s", in->description);
    snprintf(a.created_by, sizeof a.created_by, "%s", in->created_by);
    snprintf(a.updated_by, sizeof a.updated_by, "%s", in->created_by);
    snprintf(a.created_by_type, sizeof a.created_by_type, "%s", in->created_by_type);
    a.created = a.updated = emu_clock_now();

    roles_status rs = ROLES_OK;
    bool added = false;
    pthread_rwlock_wrlock(&r->lock);
    auth_role_assignment *same = find_name_inlock(r, a.name);
    if (same) {
        if (!strcasecmp(same->scope, a.scope) && !strcasecmp(same->role_guid, a.role_guid) &&
            !strcasecmp(same->principal_id, a.principal_id)) {
            a = *same; /* an identical PUT changes nothing */
        } else {
            snprintf(msg, msglen,
                     "Tenant ID, application ID, principal ID, and scope are not allowed to be "
                     "updated.");
            rs = ROLES_ERR_UPDATE_NOT_ALLOWED;
        }
        goto out;
    }
    for (size_t i = 0; i < r->n; i++) {
        const auth_role_assignment *x = &r->list[i];
        if (!strcasecmp(x->scope, a.scope) && !strcasecmp(x->role_guid, a.role_guid) &&
            !strcasecmp(x->principal_id, a.principal_id)) {
            snprintf(msg, msglen, "The role assignment already exists. (existing id: %s)",
                     x->name);
            rs = ROLES_ERR_EXISTS;
            goto out;
        }
    }
    if (r->n >= ROLES_MAX_ASSIGNMENTS) {
        snprintf(msg, msglen, "No more role assignments can be created (limit %d).",
                 ROLES_MAX_ASSIGNMENTS);
        rs = ROLES_ERR_LIMIT;
        goto out;
    }
    if (!store_insert(r, &a)) {
        snprintf(msg, msglen, "The role assignment could not be saved.");
        rs = ROLES_ERR_STORE;
        goto out;
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 32;
        r->list = emu_xrealloc(r->list, r->cap * sizeof *r->list);
    }
    r->list[r->n++] = a;
    added = true;
out:
    pthread_rwlock_unlock(&r->lock);
    if (rs == ROLES_OK) {
        if (created)
            *created = added;
        if (out)
            *out = a;
        if (added && r->change_fn)
            r->change_fn(a.scope, r->change_ud);
    }
    return rs;
}

roles_status auth_roles_get(roles_t *r, const char *scope, const char *name,
                            auth_role_assignment *out)
{
    char canon[ROLES_MAX_SCOPE];
    if (!auth_roles_scope_canon(scope, canon, sizeof canon))
        return ROLES_ERR_BAD_SCOPE;
    roles_status rs = ROLES_ERR_NOT_FOUND;
    pthread_rwlock_rdlock(&r->lock);
    auth_role_assignment *a = find_name_inlock(r, name);
    if (a && !strcasecmp(a->scope, canon)) {
        if (out)
            *out = *a;
        rs = ROLES_OK;
    }
    pthread_rwlock_unlock(&r->lock);
    return rs;
}

roles_status auth_roles_delete(roles_t *r, const char *scope, const char *name,
                               auth_role_assignment *out)
{
    char canon[ROLES_MAX_SCOPE];
    if (!auth_roles_scope_canon(scope, canon, sizeof canon))
        return ROLES_ERR_BAD_SCOPE;
    roles_status rs = ROLES_ERR_NOT_FOUND;
    auth_role_assignment gone;
    pthread_rwlock_wrlock(&r->lock);
    auth_role_assignment *a = find_name_inlock(r, name);
    if (a && !strcasecmp(a->scope, canon)) {
        if (!store_delete(r, a->name)) {
            rs = ROLES_ERR_STORE;
        } else {
            gone = *a;
            size_t idx = (size_t)(a - r->list);
            memmove(&r->list[idx], &r->list[idx + 1], (r->n - idx - 1) * sizeof *r->list);
            r->n--;
            rs = ROLES_OK;
        }
    }
    pthread_rwlock_unlock(&r->lock);
    if (rs == ROLES_OK) {
        if (out)
            *out = gone;
        if (r->change_fn)
            r->change_fn(gone.scope, r->change_ud);
    }
    return rs;
}

size_t auth_roles_list(roles_t *r, const char *scope, roles_list_mode mode,
                       const char *principal_id, auth_role_assignment **out)
{
    *out = NULL;
    char canon[ROLES_MAX_SCOPE];
    if (!auth_roles_scope_canon(scope, canon, sizeof canon))
        return 0;
    size_t n = 0;
    pthread_rwlock_rdlock(&r->lock);
    for (size_t i = 0; i < r->n; i++) {
        const auth_role_assignment *a = &r->list[i];
        if (principal_id && *principal_id && strcasecmp(a->principal_id, principal_id) != 0)
            continue;
        bool applies = scope_covers(a->scope, canon) ||
                       (mode == ROLES_LIST_ALL && scope_covers(canon, a->scope));
        if (!applies)
            continue;
        if (!*out)
            *out = emu_xcalloc(r->n, sizeof **out);
        (*out)[n++] = *a;
    }
    pthread_rwlock_unlock(&r->lock);
    return n;
}

/* ---- the decision ----------------------------------------------------------------------------- */

/* True when some assignment of oid at scope or a parent scope has a role for which
 * grants(role, arg) holds. The one loop behind every decision below. */
static bool any_covering(roles_t *r, const char *oid, const char *scope,
                         bool (*grants)(const auth_role_def *d, const void *arg), const void *arg)
{
    char canon[ROLES_MAX_SCOPE];
    if (!r || !oid || !auth_roles_scope_canon(scope, canon, sizeof canon))
        return false;
    bool ok = false;
    pthread_rwlock_rdlock(&r->lock);
    for (size_t i = 0; i < r->n && !ok; i++) {
        const auth_role_assignment *a = &r->list[i];
        if (strcasecmp(a->principal_id, oid) != 0 || !scope_covers(a->scope, canon))
            continue;
        const auth_role_def *d = auth_role_def_find(a->role_guid);
        ok = d && grants(d, arg);
    }
    pthread_rwlock_unlock(&r->lock);
    return ok;
}

static bool grants_data_action(const auth_role_def *d, const void *action)
{
    return auth_role_def_grants_data_action(d, action);
}

static bool grants_action(const auth_role_def *d, const void *action)
{
    return any_glob(d->actions, action) && !any_glob(d->not_actions, action);
}

static bool grants_role(const auth_role_def *d, const void *want)
{
    return role_implies(d, want);
}

bool auth_roles_allows(roles_t *r, const char *oid, const char *resource, const char *perm)
{
    const char *action = auth_roles_key_data_action(perm);
    return action && any_covering(r, oid, resource, grants_data_action, action);
}

bool auth_roles_allows_action(roles_t *r, const char *oid, const char *scope, const char *action)
{
    return action && any_covering(r, oid, scope, grants_action, action);
}

bool auth_roles_has_role_at(roles_t *r, const char *oid, const char *scope, const char *role)
{
    const auth_role_def *want = auth_role_def_find(role);
    return want && any_covering(r, oid, scope, grants_role, want);
}

bool auth_roles_kv_check(roles_t *r, const auth_principal *p, const char *subscription,
                         const char *resource_group, const char *vault, const char *location,
                         const char *key, const char *perm, char *msg, size_t msglen)
{
    if (!p || !p->from_token)
        return true;
    char resource[ROLES_MAX_SCOPE];
    int n = snprintf(resource, sizeof resource,
                     "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.KeyVault/vaults/%s%s%s",
                     subscription, resource_group, vault, key ? "/keys/" : "", key ? key : "");
    if (n > 0 && (size_t)n < sizeof resource && auth_roles_allows(r, p->oid, resource, perm))
        return true;
    const char *action = auth_roles_key_data_action(perm);
    char caller[300];
    if (p->iss[0])
        snprintf(caller, sizeof caller, "appid=%s;oid=%s;iss=%s", p->appid, p->oid, p->iss);
    else
        snprintf(caller, sizeof caller, "appid=%s;oid=%s;iss=https://sts.windows.net/%s/",
                 p->appid, p->oid, p->tid);
    /* Key Vault's own wording; the propagation sentence goes first when the buffer is short */
    static const char head[] = "Caller is not authorized to perform action on resource.\r\n";
    static const char wait[] = "If role assignments were recently changed, please wait several "
                               "minutes for role assignments to become effective.\r\n";
    char body[1200];
    snprintf(body, sizeof body,
             "Caller: %s\r\nAction: '%s'\r\nResource: '%s'\r\nAssignment: (not found)\r\n"
             "DecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: %s;location=%s\r\n",
             caller, action ? action : perm, resource, vault, location);
    if (sizeof head - 1 + sizeof wait - 1 + strlen(body) < msglen)
        snprintf(msg, msglen, "%s%s%s", head, wait, body);
    else
        snprintf(msg, msglen, "%s%s", head, body);
    return false;
}
