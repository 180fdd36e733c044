#include "roles_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "principal.h"
#include "util.h"

#define RA_WORDS "/providers/Microsoft.Authorization/roleAssignments"
#define RD_WORDS "/providers/Microsoft.Authorization/roleDefinitions"
#define RA_TYPE "Microsoft.Authorization/roleAssignments"
#define RD_TYPE "Microsoft.Authorization/roleDefinitions"
#define MAX_FILTER 512

/* ---- helpers ------------------------------------------------------------------------------- */

static void send_status(emu_req *req, roles_status st, const char *msg)
{
    static const struct {
        roles_status st;
        int http;
        const char *code;
    } MAP[] = {
        {ROLES_ERR_BAD_REQUEST, 400, "BadRequest"},
        {ROLES_ERR_BAD_ID, 400, "InvalidRoleAssignmentId"},
        {ROLES_ERR_BAD_SCOPE, 400, "InvalidScope"},
        {ROLES_ERR_ROLE_NOT_FOUND, 400, "RoleDefinitionDoesNotExist"},
        {ROLES_ERR_BAD_PRINCIPAL_ID, 400, "InvalidPrincipalId"},
        {ROLES_ERR_PRINCIPAL_NOT_FOUND, 400, "PrincipalNotFound"},
        {ROLES_ERR_PRINCIPAL_TYPE, 400, "UnmatchedPrincipalType"},
        {ROLES_ERR_EXISTS, 409, "RoleAssignmentExists"},
        {ROLES_ERR_UPDATE_NOT_ALLOWED, 409, "RoleAssignmentUpdateNotPermitted"},
        {ROLES_ERR_LIMIT, 400, "RoleAssignmentLimitExceeded"},
        {ROLES_ERR_NOT_FOUND, 404, "RoleAssignmentNotFound"},
        {ROLES_ERR_STORE, 500, "InternalServerError"},
    };
    for (size_t i = 0; i < sizeof MAP / sizeof MAP[0]; i++)
        if (MAP[i].st == st) {
            arm_send_error(req, MAP[i].http, MAP[i].code, NULL, "%s", msg);
            return;
        }
    arm_send_error(req, 500, "InternalServerError", NULL, "%s", msg);
}

/* Splits the request path at the last occurrence of `words`: the decoded scope before it
 * (canonical; "" for the tenant root) and the decoded segment after it (name, "" if none).
 * false = answered (400). */
static bool split_path(emu_req *req, const char *words, bool root_ok, char *scope,
                       size_t scopelen, char *name, size_t namelen)
{
    const char *path = req->path, *hit = NULL;
    size_t wl = strlen(words);
    for (const char *p = path; (p = strcasestr(p, words)) != NULL; p++)
        if (p[wl] == '\0' || p[wl] == '/')
            hit = p;
    char raw[ROLES_MAX_SCOPE * 3];
    size_t rl = hit ? (size_t)(hit - path) : 0;
    char dec[ROLES_MAX_SCOPE * 3];
    size_t dl = 0;
    name[0] = '\0';
    if (!hit || rl >= sizeof raw || !emu_percent_decode(path, rl, false, dec, &dl) ||
        dl >= ROLES_MAX_SCOPE) {
        arm_send_error(req, 400, "InvalidScope", NULL, "The scope of the request is not valid.");
        return false;
    }
    memcpy(raw, dec, dl);
    raw[dl] = '\0';
    if (hit[wl] == '/') {
        const char *n = hit + wl + 1;
        size_t nl = strlen(n), ndl = 0;
        char nd[128];
        if (nl >= sizeof nd || !emu_percent_decode(n, nl, false, nd, &ndl) || ndl >= namelen) {
            arm_send_error(req, 400, "InvalidRoleAssignmentId", NULL,
                           "The role assignment ID is not valid. It must be a GUID.");
            return false;
        }
        memcpy(name, nd, ndl);
        name[ndl] = '\0';
    }
    if (dl == 0 && root_ok) {
        scope[0] = '\0';
        return true;
    }
    if (!auth_roles_scope_canon(raw, scope, scopelen)) {
        char esc[200];
        emu_log_escape(raw, 150, esc, sizeof esc);
        arm_send_error(req, 400, "InvalidScope", NULL,
                       "The scope '%s' is not valid: it must be a subscription, resource group "
                       "or resource id.",
                       esc);
        return false;
    }
    return true;
}

/* "/subscriptions/{s}" of a canonical scope into out ("" for the root). */
static void sub_of(const char *scope, char *out, size_t outlen)
{
    out[0] = '\0';
    if (strncmp(scope, "/subscriptions/", 15) != 0)
        return;
    const char *e = strchr(scope + 15, '/');
    size_t n = e ? (size_t)(e - scope) : strlen(scope);
    snprintf(out, outlen, "%.*s", (int)n, scope);
}

static void caller_of(const emu_req *req, char *oid, size_t oidlen, char *type, size_t typelen)
{
    const auth_principal *p = req->principal;
    oid[0] = type[0] = '\0';
    if (!p)
        return;
    snprintf(oid, oidlen, "%s", p->oid);
    snprintf(type, typelen, "%s", auth_principal_kind_str(p->kind));
}

static json_t *time_json(int64_t t)
{
    char buf[40];
    emu_time_rfc3339(t, buf, sizeof buf);
    return json_string(buf);
}

static json_t *assignment_json(const auth_role_assignment *a)
{
    char sub[80];
    sub_of(a->scope, sub, sizeof sub);
    char *id = emu_xasprintf("%s" RA_WORDS "/%s", a->scope, a->name);
    char *rd = emu_xasprintf("%s" RD_WORDS "/%s", sub, a->role_guid);
    json_t *props = json_pack("{s:s,s:s,s:s,s:s,s:n,s:n,s:o,s:o,s:n}", "roleDefinitionId", rd,
                              "principalId", a->principal_id, "principalType",
                              a->principal_type, "scope", a->scope, "condition",
                              "conditionVersion", "createdOn", time_json(a->created),
                              "updatedOn", time_json(a->updated),
                              "delegatedManagedIdentityResourceId");
    json_object_set_new(props, "createdBy",
                        a->created_by[0] ? json_string(a->created_by) : json_null());
    json_object_set_new(props, "updatedBy",
                        a->updated_by[0] ? json_string(a->updated_by) : json_null());
    json_object_set_new(props, "description",
                        a->description[0] ? json_string(a->description) : json_null());
    json_t *j = json_pack("{s:s,s:s,s:s,s:o,s:o}", "id", id, "name", a->name, "type", RA_TYPE,
                          "properties", props, "systemData",
                          arm_system_data(a->created_by, a->created_by_type, a->created,
                                          a->updated_by, a->created_by_type, a->updated));
    free(id);
    free(rd);
    return j;
}

static json_t *str_array(const char *const *l)
{
    json_t *a = json_array();
    for (; *l; l++)
        json_array_append_new(a, json_string(*l));
    return a;
}

static json_t *definition_json(const auth_role_def *d, const char *scope)
{
    char sub[80];
    sub_of(scope, sub, sizeof sub);
    char *id = emu_xasprintf("%s" RD_WORDS "/%s", sub, d->guid);
    json_t *perm = json_pack("{s:o,s:o,s:o,s:o}", "actions", str_array(d->actions),
                             "notActions", str_array(d->not_actions), "dataActions",
                             str_array(d->data_actions), "notDataActions", json_array());
    json_t *j = json_pack("{s:s,s:s,s:s,s:{s:s,s:s,s:s,s:[s],s:[o],s:n,s:n}}", "id", id, "name",
                          d->guid, "type", RD_TYPE, "properties", "roleName", d->name, "type",
                          "BuiltInRole", "description", d->description, "assignableScopes", "/",
                          "permissions", perm, "createdBy", "updatedBy");
    free(id);
    return j;
}

/* The caller may create/delete role assignments at scope (see roles_api.h). */
static bool may_write(emu_req *req, auth_roles_api_ctx *c, const char *scope, const char *name,
                      const char *action)
{
    const auth_principal *p = req->principal;
    if (!p || !p->from_token || p->emulator_admin ||
        auth_roles_allows_action(c->roles, p->oid, scope, action))
        return true;
    arm_send_error(req, 403, "AuthorizationFailed", NULL,
                   "The client '%s' with object id '%s' does not have authorization to perform "
                   "action '%s' over scope '%s" RA_WORDS "/%s' or the scope is invalid. If "
                   "access was recently granted, please refresh your credentials.",
                   p->appid[0] ? p->appid : p->oid, p->oid, action, scope, name);
    return false;
}

/* ---- role assignments ------------------------------------------------------------------------ */

static void h_ra_put(emu_req *req, void *ud)
{
    auth_roles_api_ctx *c = ud;
    char scope[ROLES_MAX_SCOPE], name[64], msg[600];
    json_t *body = NULL;
    if (!arm_check_api_version(req) ||
        !split_path(req, RA_WORDS, false, scope, sizeof scope, name, sizeof name))
        return;
    if (!(body = arm_req_json(req, false)))
        return;
    json_t *props = json_object_get(body, "properties");
    json_t *rd = json_object_get(props, "roleDefinitionId"),
           *pid = json_object_get(props, "principalId"),
           *pt = json_object_get(props, "principalType"),
           *desc = json_object_get(props, "description"),
           *cond = json_object_get(props, "condition");
    auth_role_assignment in;
    memset(&in, 0, sizeof in);
    if (!json_is_object(props)) {
        arm_send_error(req, 400, "InvalidRequestContent", "properties",
                       "The request body must have a 'properties' object with roleDefinitionId "
                       "and principalId.");
    } else if (!json_is_string(rd) || json_string_length(rd) >= 300) {
        arm_send_error(req, 400, "InvalidRequestContent", "properties.roleDefinitionId",
                       "properties.roleDefinitionId is required: a role definition id "
                       "(/subscriptions/{id}/providers/Microsoft.Authorization/roleDefinitions/"
                       "{guid}).");
    } else if (!json_is_string(pid) || json_string_length(pid) >= sizeof in.principal_id) {
        arm_send_error(req, 400, "InvalidPrincipalId", "properties.principalId",
                       "properties.principalId is required: the object id (GUID) of a user, "
                       "group or service principal.");
    } else if ((pt && !json_is_null(pt) &&
                (!json_is_string(pt) || json_string_length(pt) >= sizeof in.principal_type)) ||
               (desc && !json_is_null(desc) &&
                (!json_is_string(desc) || json_string_length(desc) >= sizeof in.description))) {
        arm_send_error(req, 400, "InvalidRequestContent", NULL,
                       "properties.principalType and properties.description must be strings "
                       "(description up to %zu characters).",
                       sizeof in.description - 1);
    } else if (cond && !json_is_null(cond)) {
        arm_send_error(req, 400, "BadRequest", "properties.condition",
                       "Role assignment conditions are not supported by cmkemu.");
    } else if (may_write(req, c, scope, name, "Microsoft.Authorization/roleAssignments/write")) {
        snprintf(in.name, sizeof in.name, "%.39s", name); /* longer: not a GUID */
        snprintf(in.scope, sizeof in.scope, "%s", scope);
        /* role_guid carries the id as sent; auth_roles_put resolves it */
        char role[300];
        snprintf(role, sizeof role, "%s", json_string_value(rd));
        snprintf(in.role_guid, sizeof in.role_guid, "%.39s", role);
        const auth_role_def *d = auth_role_def_find(role);
        if (d)
            snprintf(in.role_guid, sizeof in.role_guid, "%s", d->guid);
        snprintf(in.principal_id, sizeof in.principal_id, "%s", json_string_value(pid));
        if (json_is_string(pt))
            snprintf(in.principal_type, sizeof in.principal_type, "%s", json_string_value(pt));
        if (json_is_string(desc))
            snprintf(in.description, sizeof in.description, "%s", json_string_value(desc));
        caller_of(req, in.created_by, sizeof in.created_by, in.created_by_type,
                  sizeof in.created_by_type);
        bool created = false;
        auth_role_assignment out;
        roles_status st;
        if (!d) {
            const char *s = strrchr(role, '/');
            snprintf(msg, sizeof msg,
                     "The specified role definition with ID '%.60s' does not exist.",
                     s ? s + 1 : role);
            st = ROLES_ERR_ROLE_NOT_FOUND;
        } else {
            st = auth_roles_put(c->roles, &in, &created, &out, msg, sizeof msg);
        }
        if (st == ROLES_OK)
            emu_send_json(req, created ? 201 : 200, assignment_json(&out));
        else
            send_status(req, st, msg);
    }
    json_decref(body);
}

static void h_ra_get(emu_req *req, void *ud)
{
    auth_roles_api_ctx *c = ud;
    char scope[ROLES_MAX_SCOPE], name[64];
    if (!arm_check_api_version(req) ||
        !split_path(req, RA_WORDS, false, scope, sizeof scope, name, sizeof name))
        return;
    auth_role_assignment a;
    if (auth_roles_get(c->roles, scope, name, &a) == ROLES_OK) {
        emu_send_json(req, 200, assignment_json(&a));
        return;
    }
    char esc[100];
    emu_log_escape(name, 60, esc, sizeof esc);
    arm_send_error(req, 404, "RoleAssignmentNotFound", NULL,
                   "The role assignment '%s' is not found.", esc);
}

static void h_ra_delete(emu_req *req, void *ud)
{
    auth_roles_api_ctx *c = ud;
    char scope[ROLES_MAX_SCOPE], name[64];
    if (!arm_check_api_version(req) ||
        !split_path(req, RA_WORDS, false, scope, sizeof scope, name, sizeof name))
        return;
    if (!may_write(req, c, scope, name, "Microsoft.Authorization/roleAssignments/delete"))
        return;
    auth_role_assignment a;
    roles_status st = auth_roles_delete(c->roles, scope, name, &a);
    if (st == ROLES_OK)
        emu_send_json(req, 200, assignment_json(&a));
    else if (st == ROLES_ERR_NOT_FOUND)
        emu_send_empty(req, 204);
    else
        send_status(req, st, "The role assignment could not be deleted.");
}

/* Parses $filter: clauses joined by " and ": atScope(), principalId eq '{id}',
 * assignedTo('{id}'). false = answered (400). */
static bool parse_filter(emu_req *req, roles_list_mode *mode, char *principal, size_t plen)
{
    const char *f = emu_req_query(req, "$filter");
    *mode = ROLES_LIST_ALL;
    principal[0] = '\0';
    if (!f || !*f)
        return true;
    char buf[MAX_FILTER];
    if (strlen(f) >= sizeof buf) {
        arm_send_error(req, 400, "BadRequest", "$filter", "The $filter is too long.");
        return false;
    }
    snprintf(buf, sizeof buf, "%s", f);
    char *p = buf;
    while (*p) {
        while (*p == ' ')
            p++;
        char *end = strcasestr(p, " and ");
        if (end)
            *end = '\0';
        char *e = p + strlen(p);
        while (e > p && e[-1] == ' ')
            *--e = '\0';
        const char *id = NULL;
        size_t idl = 0;
        if (!strcasecmp(p, "atScope()")) {
            *mode = ROLES_LIST_AT_SCOPE;
        } else if (!strncasecmp(p, "principalId eq '", 16) && e - p > 17 && e[-1] == '\'') {
            id = p + 16;
            idl = (size_t)(e - 1 - id);
        } else if (!strncasecmp(p, "assignedTo('", 12) && e - p > 14 && e[-1] == ')' &&
                   e[-2] == '\'') {
            id = p + 12;
            idl = (size_t)(e - 2 - id);
        } else {
            char esc[200];
            emu_log_escape(p, 120, esc, sizeof esc);
            arm_send_error(req, 400, "BadRequest", "$filter",
                           "The filter '%s' is not supported. Supported: atScope(), "
                           "principalId eq '{id}', assignedTo('{id}').",
                           esc);
            return false;
        }
        if (id) {
            if (idl == 0 || idl >= plen) {
                arm_send_error(req, 400, "BadRequest", "$filter",
                               "The principal id in $filter is not valid.");
                return false;
            }
            memcpy(principal, id, idl);
            principal[idl] = '\0';
        }
        if (!end)
            break;
        p = end + 5;
    }
    return true;
}

static void h_ra_list(emu_req *req, void *ud)
{
    auth_roles_api_ctx *c = ud;
    char scope[ROLES_MAX_SCOPE], name[64], principal[64];
    roles_list_mode mode;
    if (!arm_check_api_version(req) ||
        !split_path(req, RA_WORDS, false, scope, sizeof scope, name, sizeof name) ||
        !parse_filter(req, &mode, principal, sizeof principal))
        return;
    auth_role_assignment *list = NULL;
    size_t n = auth_roles_list(c->roles, scope, mode, principal, &list);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, assignment_json(&list[i]));
    free(list);
    emu_send_json(req, 200, json_pack("{s:o}", "value", arr));
}

/* ---- role definitions ------------------------------------------------------------------------ */

static void h_rd_list(emu_req *req, void *ud)
{
    (void)ud;
    char scope[ROLES_MAX_SCOPE], name[64];
    if (!arm_check_api_version(req) ||
        !split_path(req, RD_WORDS, true, scope, sizeof scope, name, sizeof name))
        return;
    const char *f = emu_req_query(req, "$filter");
    char want[160] = "";
    if (f && *f) {
        size_t fl = strlen(f);
        if (fl < sizeof want + 14 && !strncasecmp(f, "roleName eq '", 13) && fl > 14 &&
            f[fl - 1] == '\'') {
            snprintf(want, sizeof want, "%.*s", (int)(fl - 14), f + 13);
        } else if (strncasecmp(f, "type eq ", 8) != 0) {
            arm_send_error(req, 400, "BadRequest", "$filter",
                           "Supported filters: roleName eq '{name}', type eq '{type}'.");
            return;
        }
    }
    const auth_role_def *defs;
    size_t n = auth_role_defs(&defs);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        if (!want[0] || !strcasecmp(want, defs[i].name))
            json_array_append_new(arr, definition_json(&defs[i], scope));
    emu_send_json(req, 200, json_pack("{s:o}", "value", arr));
}

static void h_rd_get(emu_req *req, void *ud)
{
    (void)ud;
    char scope[ROLES_MAX_SCOPE], name[64];
    if (!arm_check_api_version(req) ||
        !split_path(req, RD_WORDS, true, scope, sizeof scope, name, sizeof name))
        return;
    const auth_role_def *d = auth_role_def_find(name);
    if (d && strchr(name, '-')) { /* by GUID only, not by name */
        emu_send_json(req, 200, definition_json(d, scope));
        return;
    }
    char esc[100];
    emu_log_escape(name, 60, esc, sizeof esc);
    arm_send_error(req, 404, "RoleDefinitionDoesNotExist", NULL,
                   "The specified role definition with ID '%s' does not exist.", esc);
}

/* ---- registration ---------------------------------------------------------------------------- */

#define S1 "/subscriptions/{s}"
#define S2 S1 "/resourcegroups/{rg}"
#define S3 S2 "/providers/{ns}/{type}/{name}"
#define S4 S3 "/{ctype}/{cname}"
#define S5 S1 "/providers/{ns}/{type}/{name}"

void auth_roles_api_register(emu_router *r, auth_roles_api_ctx *ctx)
{
    emu_handler_fn pre = arm_precheck;
    static const char *const RA_ITEM[] = {S1 RA_WORDS "/{id}", S2 RA_WORDS "/{id}",
                                          S3 RA_WORDS "/{id}", S4 RA_WORDS "/{id}",
                                          S5 RA_WORDS "/{id}"};
    static const char *const RA_LIST[] = {S1 RA_WORDS, S2 RA_WORDS, S3 RA_WORDS, S4 RA_WORDS,
                                          S5 RA_WORDS};
    static const char *const RD_ITEM[] = {RD_WORDS "/{id}",    S1 RD_WORDS "/{id}",
                                          S2 RD_WORDS "/{id}", S3 RD_WORDS "/{id}",
                                          S4 RD_WORDS "/{id}", S5 RD_WORDS "/{id}"};
    static const char *const RD_LIST[] = {RD_WORDS,    S1 RD_WORDS, S2 RD_WORDS,
                                          S3 RD_WORDS, S4 RD_WORDS, S5 RD_WORDS};
    for (size_t i = 0; i < sizeof RA_ITEM / sizeof RA_ITEM[0]; i++) {
        emu_router_add(r, "PUT", RA_ITEM[i], 0, pre, h_ra_put, ctx);
        emu_router_add(r, "GET", RA_ITEM[i], 0, pre, h_ra_get, ctx);
        emu_router_add(r, "DELETE", RA_ITEM[i], 0, pre, h_ra_delete, ctx);
        emu_router_add(r, "GET", RA_LIST[i], 0, pre, h_ra_list, ctx);
    }
    for (size_t i = 0; i < sizeof RD_ITEM / sizeof RD_ITEM[0]; i++) {
        emu_router_add(r, "GET", RD_ITEM[i], 0, pre, h_rd_get, ctx);
        emu_router_add(r, "GET", RD_LIST[i], 0, pre, h_rd_list, ctx);
    }
}
