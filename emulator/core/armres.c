#include "armres.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "log.h"
#include "util.h"

#define MAX_RG_HOOKS 8
#define MAX_TAGS 50

struct armres {
    arm_common common; /* first: the precheck reads it */
    emu_store *store;
    struct {
        armres_rg_delete_fn fn;
        void *ud;
    } hooks[MAX_RG_HOOKS];
    size_t nhooks;
};

static const emu_migration ARMRES_MIGRATIONS[] = {
    {"armres", 1,
     "CREATE TABLE arm_resource_groups(sub TEXT NOT NULL, lname TEXT NOT NULL,"
     " name TEXT NOT NULL, location TEXT NOT NULL, tags TEXT, created INTEGER NOT NULL,"
     " PRIMARY KEY(sub, lname));"},
};

/* ---- ids ----------------------------------------------------------------------------------- */

/* Copies the next '/'-separated segment into out; false when missing, empty or too long. */
static bool take_seg(const char **p, char *out, size_t outlen)
{
    const char *s = *p;
    while (*s == '/')
        s++;
    const char *e = strchr(s, '/');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    if (n == 0 || n >= outlen)
        return false;
    memcpy(out, s, n);
    out[n] = '\0';
    *p = s + n;
    return true;
}

static bool at_end(const char *p)
{
    while (*p == '/')
        p++;
    return *p == '\0';
}

bool arm_id_parse(const char *id, arm_id *out)
{
    memset(out, 0, sizeof *out);
    if (!id || id[0] != '/')
        return false;
    const char *p = id;
    char word[32];
    if (!take_seg(&p, word, sizeof word) || strcasecmp(word, "subscriptions") ||
        !take_seg(&p, out->subscription, sizeof out->subscription))
        return false;
    if (at_end(p))
        return true;
    if (!take_seg(&p, word, sizeof word) || strcasecmp(word, "resourceGroups") ||
        !take_seg(&p, out->resource_group, sizeof out->resource_group))
        return false;
    if (at_end(p))
        return true;
    if (!take_seg(&p, word, sizeof word) || strcasecmp(word, "providers") ||
        !take_seg(&p, out->ns, sizeof out->ns) || !take_seg(&p, out->type, sizeof out->type) ||
        !take_seg(&p, out->name, sizeof out->name))
        return false;
    return at_end(p);
}

char *arm_id_build(const arm_id *id)
{
    if (!id->resource_group[0])
        return emu_xasprintf("/subscriptions/%s", id->subscription);
    if (!id->ns[0])
        return emu_xasprintf("/subscriptions/%s/resourceGroups/%s", id->subscription,
                             id->resource_group);
    return emu_xasprintf("/subscriptions/%s/resourceGroups/%s/providers/%s/%s/%s",
                         id->subscription, id->resource_group, id->ns, id->type, id->name);
}

/* ---- responses ------------------------------------------------------------------------------ */

void arm_send_error(emu_req *req, int status, const char *code, const char *target,
                    const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emu_utf8_repair(msg); /* client text in it, or a sequence cut by the size */
    json_t *err = json_pack("{s:s,s:s}", "code", code, "message", msg);
    if (target)
        json_object_set_new(err, "target", json_string(target));
    emu_send_json(req, status, json_pack("{s:o}", "error", err));
}

json_t *arm_system_data(const char *created_by, const char *created_by_type, int64_t created,
                        const char *modified_by, const char *modified_by_type,
                        int64_t modified)
{
    json_t *sd = json_object();
    char t[40];
    if (created_by && *created_by)
        json_object_set_new(sd, "createdBy", json_string(created_by));
    if (created_by_type && *created_by_type)
        json_object_set_new(sd, "createdByType", json_string(created_by_type));
    if (created) {
        emu_time_rfc3339(created, t, sizeof t);
        json_object_set_new(sd, "createdAt", json_string(t));
    }
    if (modified_by && *modified_by)
        json_object_set_new(sd, "lastModifiedBy", json_string(modified_by));
    if (modified_by_type && *modified_by_type)
        json_object_set_new(sd, "lastModifiedByType", json_string(modified_by_type));
    if (modified) {
        emu_time_rfc3339(modified, t, sizeof t);
        json_object_set_new(sd, "lastModifiedAt", json_string(t));
    }
    return sd;
}

/* ---- checks ------------------------------------------------------------------------------- */

void armres_set_authenticator(armres_t *a, arm_authenticate_fn fn, void *ud)
{
    a->common.authenticate = fn;
    a->common.auth_ud = ud;
}

void arm_precheck(emu_req *req, void *ud)
{
    const arm_common *c = ud;
    const char *auth = emu_req_header(req, "Authorization");
    char why[300] = "";
    if (c && c->authenticate) {
        bool missing = false;
        if (c->authenticate(req, c->auth_ud, &missing, why, sizeof why))
            return;
    } else if (auth && !strncasecmp(auth, "Bearer ", 7) && auth[7]) {
        return;
    }
    char challenge[512];
    snprintf(challenge, sizeof challenge,
             "Bearer authorization_uri=\"https://localhost/%s\", error=\"invalid_token\", "
             "error_description=\"The authentication failed because of missing "
             "'Authorization' header.\"",
             c && c->tenant ? c->tenant : "common");
    emu_resp_header_add(req, "WWW-Authenticate", challenge);
    arm_send_error(req, 401, "AuthenticationFailed", NULL,
                   !auth     ? "Authentication failed. The 'Authorization' header is missing."
                   : why[0] ? why
                             : "Authentication failed. The 'Authorization' header is not a Bearer "
                               "token.");
}

bool arm_check_api_version(emu_req *req)
{
    const char *v = emu_req_query(req, "api-version");
    if (v && *v)
        return true;
    arm_send_error(req, 400, "MissingApiVersionParameter", NULL,
                   "The api-version query parameter (?api-version=) is required for all "
                   "requests.");
    return false;
}

/* ---- registry -------------------------------------------------------------------------------- */

armres_t *armres_open(emu_store *store, const char *tenant, char *err, size_t errlen)
{
    if (!emu_store_migrate(store, ARMRES_MIGRATIONS,
                           sizeof ARMRES_MIGRATIONS / sizeof ARMRES_MIGRATIONS[0], err, errlen))
        return NULL;
    armres_t *a = emu_xcalloc(1, sizeof *a);
    a->store = store;
    a->common.tenant = tenant;
    return a;
}

void armres_close(armres_t *a)
{
    free(a);
}

void armres_on_rg_delete(armres_t *a, armres_rg_delete_fn fn, void *ud)
{
    if (a->nhooks < MAX_RG_HOOKS) {
        a->hooks[a->nhooks].fn = fn;
        a->hooks[a->nhooks].ud = ud;
        a->nhooks++;
    }
}

static void lower(char *dst, size_t n, const char *src)
{
    size_t i = 0;
    for (; src[i] && i + 1 < n; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = '\0';
}

bool armres_rg_put(armres_t *a, const char *sub, const char *name, const char *location,
                   const json_t *tags, bool *created)
{
    char lsub[64], lname[96];
    lower(lsub, sizeof lsub, sub);
    lower(lname, sizeof lname, name);
    bool existed = armres_rg_exists(a, sub, name, NULL, 0);
    char *t = tags ? json_dumps(tags, JSON_COMPACT) : NULL;
    sqlite3 *db = emu_store_lock(a->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db,
                                 "INSERT INTO arm_resource_groups(sub,lname,name,location,tags,"
                                 "created) VALUES(?,?,?,?,?,?) ON CONFLICT(sub,lname) DO UPDATE "
                                 "SET tags=excluded.tags",
                                 -1, &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, lsub, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, lname, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, location, -1, SQLITE_STATIC);
        if (t)
            sqlite3_bind_text(st, 5, t, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 5);
        sqlite3_bind_int64(st, 6, emu_clock_now());
        ok = sqlite3_step(st) == SQLITE_DONE;
        if (!ok)
            emu_log(EMU_LOG_ERROR, "armres", "resource group write failed: %s",
                    sqlite3_errmsg(db));
    }
    sqlite3_finalize(st);
    emu_store_unlock(a->store);
    free(t);
    if (created)
        *created = ok && !existed;
    return ok;
}

/* Reads one group as its ARM JSON (new reference) or NULL. */
static json_t *rg_json_get(armres_t *a, const char *sub, const char *name)
{
    char lsub[64], lname[96];
    lower(lsub, sizeof lsub, sub);
    lower(lname, sizeof lname, name);
    json_t *out = NULL;
    sqlite3 *db = emu_store_lock(a->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT sub,name,location,tags FROM arm_resource_groups WHERE sub=? "
                           "AND lname=?",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, lsub, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, lname, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            const char *rs = (const char *)sqlite3_column_text(st, 0);
            const char *rn = (const char *)sqlite3_column_text(st, 1);
            char *id = emu_xasprintf("/subscriptions/%s/resourceGroups/%s", rs, rn);
            out = json_pack("{s:s,s:s,s:s,s:s,s:{s:s}}", "id", id, "name", rn, "type",
                            "Microsoft.Resources/resourceGroups", "location",
                            (const char *)sqlite3_column_text(st, 2), "properties",
                            "provisioningState", "Succeeded");
            free(id);
            if (sqlite3_column_type(st, 3) != SQLITE_NULL) {
                json_t *tags = json_loads((const char *)sqlite3_column_text(st, 3), 0, NULL);
                if (tags)
                    json_object_set_new(out, "tags", tags);
            }
        }
    }
    sqlite3_finalize(st);
    emu_store_unlock(a->store);
    return out;
}

bool armres_rg_exists(armres_t *a, const char *sub, const char *name, char *location,
                      size_t loclen)
{
    json_t *j = rg_json_get(a, sub, name);
    if (j && location)
        snprintf(location, loclen, "%s", json_string_value(json_object_get(j, "location")));
    bool found = j != NULL;
    json_decref(j);
    return found;
}

static bool rg_delete_row(armres_t *a, const char *sub, const char *name)
{
    char lsub[64], lname[96];
    lower(lsub, sizeof lsub, sub);
    lower(lname, sizeof lname, name);
    sqlite3 *db = emu_store_lock(a->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db, "DELETE FROM arm_resource_groups WHERE sub=? AND lname=?",
                                 -1, &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, lsub, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, lname, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    emu_store_unlock(a->store);
    return ok;
}

/* Distinct subscriptions: the default one first, then those of resource groups. */
static json_t *subscriptions_json(armres_t *a)
{
    json_t *arr = json_array();
    json_array_append_new(arr, json_string(ARM_DEFAULT_SUBSCRIPTION));
    sqlite3 *db = emu_store_lock(a->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT DISTINCT sub FROM arm_resource_groups ORDER BY sub", -1,
                           &st, NULL) == SQLITE_OK)
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *s = (const char *)sqlite3_column_text(st, 0);
            if (strcasecmp(s, ARM_DEFAULT_SUBSCRIPTION))
                json_array_append_new(arr, json_string(s));
        }
    sqlite3_finalize(st);
    emu_store_unlock(a->store);
    return arr;
}

static json_t *subscription_item(const armres_t *a, const char *sub)
{
    char *id = emu_xasprintf("/subscriptions/%s", sub);
    json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:{s:s,s:s,s:s}}", "id", id, "subscriptionId",
                          sub, "displayName",
                          strcasecmp(sub, ARM_DEFAULT_SUBSCRIPTION) ? sub
                                                                     : ARM_DEFAULT_SUBSCRIPTION_NAME,
                          "state", "Enabled", "tenantId",
                          a->common.tenant ? a->common.tenant : "", "subscriptionPolicies",
                          "locationPlacementId", "Public_2014-09-01", "quotaId",
                          "PayAsYouGo_2014-09-01", "spendingLimit", "Off");
    free(id);
    return j;
}

static bool known_subscription(armres_t *a, const char *sub)
{
    json_t *subs = subscriptions_json(a);
    bool found = false;
    size_t i;
    json_t *s;
    json_array_foreach(subs, i, s) found |= !strcasecmp(json_string_value(s), sub);
    json_decref(subs);
    return found;
}

/* ---- handlers ----------------------------------------------------------------------------- */

static bool begin(emu_req *req)
{
    return arm_check_api_version(req);
}

static void h_subs_list(emu_req *req, void *ud)
{
    armres_t *a = ud;
    if (!begin(req))
        return;
    json_t *subs = subscriptions_json(a), *value = json_array();
    size_t i;
    json_t *s;
    json_array_foreach(subs, i, s)
        json_array_append_new(value, subscription_item(a, json_string_value(s)));
    json_decref(subs);
    emu_send_json(req, 200, json_pack("{s:o}", "value", value));
}

static void h_sub_get(emu_req *req, void *ud)
{
    armres_t *a = ud;
    if (!begin(req))
        return;
    const char *sub = emu_req_param(req, 0);
    if (!known_subscription(a, sub)) {
        char esc[100];
        emu_log_escape(sub, 64, esc, sizeof esc);
        arm_send_error(req, 404, "SubscriptionNotFound", NULL,
                       "The subscription '%s' could not be found.", esc);
        return;
    }
    json_t *subs = subscriptions_json(a);
    size_t i;
    json_t *s;
    json_t *item = NULL;
    json_array_foreach(subs, i, s) if (!item && !strcasecmp(json_string_value(s), sub)) item =
        subscription_item(a, json_string_value(s));
    json_decref(subs);
    emu_send_json(req, 200, item);
}

static bool valid_rg_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 90 || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '-' && c != '_' && c != '.' && c != '(' && c != ')')
            return false;
    }
    return true;
}

static void rg_not_found(emu_req *req, const char *rg)
{
    char esc[200];
    emu_log_escape(rg, 90, esc, sizeof esc);
    arm_send_error(req, 404, "ResourceGroupNotFound", NULL,
                   "Resource group '%s' could not be found.", esc);
}

json_t *arm_req_json(emu_req *req, bool allow_empty)
{
    char err[300];
    json_t *b = emu_req_json(req, allow_empty, err, sizeof err);
    if (!b)
        arm_send_error(req, 400, "InvalidRequestContent", NULL, "%s", err);
    return b;
}

bool arm_tags_ok(emu_req *req, const json_t *tags)
{
    if (!tags || json_is_null(tags))
        return true;
    bool ok = json_is_object(tags) && json_object_size(tags) <= MAX_TAGS;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)tags, k, v) ok = ok && json_is_string(v) && strlen(k) <= 512 &&
                                                   json_string_length(v) <= 256;
    if (!ok)
        arm_send_error(req, 400, "InvalidTag", "tags",
                       "tags must be an object of at most %d string values (names up to 512 "
                       "characters, values up to 256).",
                       MAX_TAGS);
    return ok;
}

static void h_rg_put(emu_req *req, void *ud)
{
    armres_t *a = ud;
    if (!begin(req))
        return;
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1);
    if (!valid_rg_name(rg)) {
        arm_send_error(req, 400, "InvalidResourceGroupName", NULL,
                       "Resource group names only allow up to 90 characters and can only "
                       "include alphanumeric, underscore, parentheses, hyphen, period (except "
                       "at end).");
        return;
    }
    json_t *body = arm_req_json(req, false);
    if (!body)
        return;
    const char *loc = json_string_value(json_object_get(body, "location"));
    json_t *tags = json_object_get(body, "tags");
    char existing_loc[64];
    bool exists = armres_rg_exists(a, sub, rg, existing_loc, sizeof existing_loc);
    if (!loc || !*loc || strlen(loc) > 60) {
        arm_send_error(req, 400, "LocationRequired", "location",
                       "The location property is required for this definition.");
    } else if (exists && strcasecmp(existing_loc, loc)) {
        arm_send_error(req, 409, "InvalidResourceGroupLocation", NULL,
                       "Invalid resource group location '%s'. The Resource group already exists "
                       "in location '%s'.",
                       loc, existing_loc);
    } else if (arm_tags_ok(req, tags)) {
        bool created = false;
        if (!armres_rg_put(a, sub, rg, loc, json_is_object(tags) ? tags : NULL, &created))
            arm_send_error(req, 500, "InternalServerError", NULL,
                           "The resource group could not be saved.");
        else
            emu_send_json(req, created ? 201 : 200, rg_json_get(a, sub, rg));
    }
    json_decref(body);
}

static void h_rg_patch(emu_req *req, void *ud)
{
    armres_t *a = ud;
    if (!begin(req))
        return;
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1);
    char loc[64];
    if (!armres_rg_exists(a, sub, rg, loc, sizeof loc)) {
        rg_not_found(req, rg);
        return;
    }
    json_t *body = arm_req_json(req, true);
    if (!body)
        return;
    json_t *tags = json_object_get(body, "tags");
    if (arm_tags_ok(req, tags)) {
        json_t *cur = rg_json_get(a, sub, rg);
        const char *name = json_string_value(json_object_get(cur, "name"));
        json_t *keep = json_object_get(cur, "tags");
        if (!armres_rg_put(a, sub, name, loc, tags ? (json_is_object(tags) ? tags : NULL) : keep,
                           NULL))
            arm_send_error(req, 500, "InternalServerError", NULL,
                           "The resource group could not be saved.");
        else
            emu_send_json(req, 200, rg_json_get(a, sub, rg));
        json_decref(cur);
    }
    json_decref(body);
}

static void h_rg_get(emu_req *req, void *ud)
{
    armres_t *a = ud;
    if (!begin(req))
        return;
    json_t *j = rg_json_get(a, emu_req_param(req, 0), emu_req_param(req, 1));
    if (!j)
        rg_not_found(req, emu_req_param(req, 1));
    else
        emu_send_json(req, 200, j);
}

static void h_rg_head(emu_req *req, void *ud)
{
    armres_t *a = ud;
    if (!begin(req))
        return;
    emu_send_empty(req, armres_rg_exists(a, emu_req_param(req, 0), emu_req_param(req, 1), NULL, 0)
                            ? 204
                            : 404);
}

static void h_rg_delete(emu_req *req, void *ud)
{
    armres_t *a = ud;
    if (!begin(req))
        return;
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1);
    json_t *cur = rg_json_get(a, sub, rg);
    if (!cur) {
        rg_not_found(req, rg);
        return;
    }
    const char *name = json_string_value(json_object_get(cur, "name"));
    for (size_t i = 0; i < a->nhooks; i++)
        a->hooks[i].fn(sub, name, a->hooks[i].ud);
    if (!rg_delete_row(a, sub, rg))
        arm_send_error(req, 500, "InternalServerError", NULL,
                       "The resource group could not be deleted.");
    else
        emu_send_empty(req, 200);
    json_decref(cur);
}

static void h_rg_list(emu_req *req, void *ud)
{
    armres_t *a = ud;
    if (!begin(req))
        return;
    char lsub[64];
    lower(lsub, sizeof lsub, emu_req_param(req, 0));
    json_t *value = json_array();
    json_t *names = json_array();
    sqlite3 *db = emu_store_lock(a->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT name FROM arm_resource_groups WHERE sub=? ORDER BY lname",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, lsub, -1, SQLITE_STATIC);
        while (sqlite3_step(st) == SQLITE_ROW)
            json_array_append_new(names, json_string((const char *)sqlite3_column_text(st, 0)));
    }
    sqlite3_finalize(st);
    emu_store_unlock(a->store);
    size_t i;
    json_t *n;
    json_array_foreach(names, i, n)
    {
        json_t *j = rg_json_get(a, lsub, json_string_value(n));
        if (j)
            json_array_append_new(value, j);
    }
    json_decref(names);
    emu_send_json(req, 200, json_pack("{s:o}", "value", value));
}

void armres_register(emu_router *r, armres_t *a)
{
    emu_handler_fn pre = arm_precheck;
    emu_router_add(r, "GET", "/subscriptions", 0, pre, h_subs_list, a);
    emu_router_add(r, "GET", "/subscriptions/{sub}", 0, pre, h_sub_get, a);
    emu_router_add(r, "GET", "/subscriptions/{sub}/resourcegroups", 0, pre, h_rg_list, a);
    emu_router_add(r, "PUT", "/subscriptions/{sub}/resourcegroups/{rg}", 0, pre, h_rg_put, a);
    emu_router_add(r, "PATCH", "/subscriptions/{sub}/resourcegroups/{rg}", 0, pre, h_rg_patch, a);
    emu_router_add(r, "GET", "/subscriptions/{sub}/resourcegroups/{rg}", 0, pre, h_rg_get, a);
    emu_router_add(r, "HEAD", "/subscriptions/{sub}/resourcegroups/{rg}", 0, pre, h_rg_head, a);
    emu_router_add(r, "DELETE", "/subscriptions/{sub}/resourcegroups/{rg}", EMU_ROUTE_SLOW, pre,
                   h_rg_delete, a);
}
