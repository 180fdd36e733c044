/*
 * bap_api: BAP environments and Dataverse-shaped records over HTTP; see bap_api.h.
 */
#include "bap_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "log.h"
#include "util.h"

#define BAP "/providers/Microsoft.BusinessAppPlatform"
#define ADMIN BAP "/scopes/admin"
#define ENV_TYPE "Microsoft.BusinessAppPlatform/environments"
#define CRM_SUFFIX ".crm.localhost"
#define ODATA "/api/data/v9.2/"

/* ---- authentication ------------------------------------------------------------------------ */

static void precheck(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    const char *h = emu_req_header(req, "Authorization");
    char why[300] = "";
    bool missing = !h;
    if (c->auth) {
        if (auth_authenticate(c->auth, req, AUTH_AUD_BAP, &missing, why, sizeof why))
            return;
    } else if (h && !strncasecmp(h, "Bearer ", 7) && h[7]) {
        return;
    }
    emu_resp_header_add(req, "WWW-Authenticate", "Bearer");
    emu_send_error(req, 401, missing ? "MissingAuthenticationToken" : "InvalidAuthenticationToken",
                   "%s",
                   missing  ? "The request is missing a bearer token (Authorization: Bearer ...)."
                   : why[0] ? why
                            : "The bearer token is not valid.");
}

void pp_bap_precheck(emu_req *req, void *ud)
{
    precheck(req, ud);
}

/* ---- environments -------------------------------------------------------------------------- */

bool pp_bap_check_version(emu_req *req)
{
    const char *v = emu_req_query(req, "api-version");
    if (v && *v)
        return true;
    emu_send_error(req, 400, "MissingApiVersionParameter",
                   "The api-version query parameter (?api-version=) is required; use e.g. "
                   "api-version=2023-06-01.");
    return false;
}

/* "https://{id}.crm.localhost[:port]/" with the port the client used. */
static char *instance_url(emu_req *req, const char *id)
{
    const char *host = req->host ? req->host : "";
    const char *colon = strrchr(host, ':');
    bool port = colon && colon[1] && host[strlen(host) - 1] != ']';
    for (const char *q = colon ? colon + 1 : ""; port && *q; q++)
        if (*q < '0' || *q > '9')
            port = false;
    char buf[160];
    snprintf(buf, sizeof buf, "https://%s" CRM_SUFFIX "%s%.8s/", id, port ? ":" : "",
             port ? colon + 1 : "");
    return emu_arena_strdup(req->arena, buf);
}

static json_t *env_json(emu_req *req, const pp_environment *e)
{
    const char *url = instance_url(req, e->id);
    char created[40];
    emu_time_rfc3339(e->created, created, sizeof created);
    char id[128], api[200];
    snprintf(id, sizeof id, BAP "/environments/%s", e->id);
    snprintf(api, sizeof api, "%sapi/data/v9.2/", url);
    return json_pack(
        "{s:s,s:s,s:s,s:s,s:{s:s,s:s,s:s,s:s,s:b,s:{s:{s:s},s:{s:s,s:s}},s:{s:s},"
        "s:{s:s,s:s,s:s,s:s,s:s},s:{},s:{s:s}}}",
        "id", id, "name", e->id, "type", ENV_TYPE, "location", e->location, "properties",
        "displayName", e->display_name, "createdTime", created, "azureRegion", e->azure_region,
        "environmentSku", pp_env_sku_str(e->sku), "isDefault", 0, "states", "management", "id",
        "Ready", "runtime", "id", e->enabled ? "Enabled" : "Disabled", "runtimeReasonCode",
        e->reason, "protectionStatus", "keyManagedBy", pp_key_managed_by_str(e->key_managed_by),
        "linkedEnvironmentMetadata", "instanceUrl", url, "instanceApiUrl", api, "domainName", e->id,
        "resourceId", e->id, "version", "9.2.0.0", "enterprisePolicies", "governanceConfiguration",
        "protectionLevel", e->managed ? "Standard" : "Basic");
}

/* enterprisePolicies.customerManagedKeys (linkStatus Linked, or Linking/Unlinking while an
 * operation runs) and, while locked, the emulator's cmkLock block (when it began, when the
 * environment will be deleted, why). */
static json_t *env_json_cmk(emu_req *req, const pp_environment *e)
{
    json_t *j = env_json(req, e);
    json_t *props = json_object_get(j, "properties");
    const char *status = NULL, *sid = NULL, *pid = e->cmk_policy_id, *loc = e->cmk_location;
    if (e->op_id[0] && !strcmp(e->op_kind, "Link")) {
        status = "Linking";
        sid = e->op_system_id;
        pid = "";
        loc = e->location;
    } else if (e->key_managed_by == PP_KEY_CUSTOMER && e->cmk_system_id[0]) {
        status = e->op_id[0] ? "Unlinking" : "Linked";
        sid = e->cmk_system_id;
    }
    if (status) {
        json_t *cmk = json_pack("{s:s,s:s,s:s,s:s}", "policyId", pid, "systemId", sid, "location",
                                loc, "linkStatus", status);
        if (e->cmk_version[0] && e->key_managed_by == PP_KEY_CUSTOMER)
            json_object_set_new(cmk, "keyVersion", json_string(e->cmk_version));
        json_object_set_new(props, "enterprisePolicies",
                            json_pack("{s:o}", "customerManagedKeys", cmk));
    }
    if (e->op_id[0])
        json_object_set_new(props, "lifecycleOperation",
                            json_pack("{s:s,s:s}", "id", e->op_id, "type", e->op_kind));
    if (!strcmp(e->reason, PP_REASON_CMK_LOCKED) && e->locked_since) {
        char since[40], del[40];
        emu_time_rfc3339(e->locked_since, since, sizeof since);
        emu_time_rfc3339(e->locked_since + pp_env_lock_expiry(e), del, sizeof del);
        json_object_set_new(props, "cmkLock",
                            json_pack("{s:s,s:s,s:I,s:s}", "lockedSince", since,
                                      "scheduledDeletionTime", del, "retentionDays",
                                      (json_int_t)(pp_env_lock_expiry(e) / 86400), "reason",
                                      e->lock_msg));
    }
    return j;
}

static void send_env_error(emu_req *req, pp_env_status st, const pp_env_err *e)
{
    switch (st) {
    case PP_ENV_ERR_FORBIDDEN:
        emu_send_error(req, 403, "Forbidden", "%s", e->msg);
        break;
    case PP_ENV_ERR_LOCKED:
        emu_send_error(req, 423, "EnvironmentLocked", "%s", e->msg);
        break;
    case PP_ENV_ERR_BAD_PARAM:
        emu_send_error(req, 400, "InvalidRequest", "%s", e->msg);
        break;
    case PP_ENV_ERR_NOT_FOUND:
        emu_send_error(req, 404, "EnvironmentNotFound", "%s", e->msg);
        break;
    case PP_ENV_ERR_CONFLICT:
        emu_send_error(req, 409, "Conflict", "%s", e->msg);
        break;
    case PP_ENV_ERR_BUSY:
        emu_send_error(req, 409, "OperationInProgress", "%s", e->msg);
        break;
    case PP_ENV_ERR_DISABLED:
        emu_send_error(req, 423, "EnvironmentDisabled", "%s", e->msg);
        break;
    default:
        emu_send_error(req, 500, "InternalServerError", "%s", e->msg);
        break;
    }
}

static void send_operation_accepted(emu_req *req, const pp_env_operation *op, json_t *body)
{
    char loc[512];
    const char *v = emu_req_query(req, "api-version");
    snprintf(loc, sizeof loc, "%s" BAP "/lifecycleOperations/%s?api-version=%.32s",
             emu_req_base_url(req), op->id, v ? v : "2023-06-01");
    emu_resp_header_add(req, "Location", loc);
    emu_resp_header_add(req, "Operation-Location", loc);
    emu_resp_header_add(req, "Retry-After", "1");
    emu_send_json(req, 202, body);
}

static void h_env_create(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    char jerr[256];
    if (!pp_bap_check_version(req))
        return;
    json_t *body = emu_req_json(req, false, jerr, sizeof jerr);
    if (!body) {
        emu_send_error(req, 400, "InvalidRequestContent", "%s", jerr);
        return;
    }
    json_t *props = json_object_get(body, "properties");
    json_t *gov = json_object_get(props, "governanceConfiguration");
    const char *level = json_string_value(json_object_get(gov, "protectionLevel"));
    if (level && strcasecmp(level, "Standard") && strcasecmp(level, "Basic")) {
        emu_send_error(req, 400, "InvalidRequest",
                       "properties.governanceConfiguration.protectionLevel '%.32s' is not valid; "
                       "use Standard (Managed Environment) or Basic.",
                       level);
        json_decref(body);
        return;
    }
    pp_env_spec s = {
        .display_name = json_string_value(json_object_get(props, "displayName")),
        .location = json_string_value(json_object_get(body, "location")),
        .sku = json_string_value(json_object_get(props, "environmentSku")),
        .managed = level && !strcasecmp(level, "Standard"),
    };
    pp_environment env;
    pp_env_operation op;
    pp_env_err e = {{0}};
    pp_env_status st = pp_env_create(c->envs, &s, &env, &op, &e);
    json_decref(body);
    if (st != PP_ENV_OK) {
        send_env_error(req, st, &e);
        return;
    }
    emu_log(EMU_LOG_INFO, "pp-env", "environment %s created", env.id);
    send_operation_accepted(req, &op, env_json_cmk(req, &env));
}

static void h_env_list(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    pp_environment *all = NULL;
    size_t n = pp_env_list(c->envs, &all);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, env_json_cmk(req, &all[i]));
    free(all);
    emu_send_json(req, 200, json_pack("{s:o}", "value", arr));
}

static void h_env_get(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    pp_environment env;
    if (pp_env_get(c->envs, emu_req_param(req, 0), &env) != PP_ENV_OK) {
        emu_send_error(req, 404, "EnvironmentNotFound", "Environment '%.40s' does not exist.",
                       emu_req_param(req, 0));
        return;
    }
    emu_send_json(req, 200, env_json_cmk(req, &env));
}

static void h_env_delete(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    if (!pp_bap_check_version(req))
        return;
    pp_env_operation op;
    pp_env_err e = {{0}};
    pp_env_status st = pp_env_delete(c->envs, emu_req_param(req, 0), &op, &e);
    if (st != PP_ENV_OK) {
        send_env_error(req, st, &e);
        return;
    }
    send_operation_accepted(req, &op, NULL);
}

static void set_enabled(emu_req *req, pp_bap_ctx *c, bool enabled)
{
    if (!pp_bap_check_version(req))
        return;
    pp_env_err e = {{0}};
    pp_env_status st = enabled
                           ? pp_env_reenable(c->envs, emu_req_param(req, 0), req->principal, &e)
                           : pp_env_set_enabled(c->envs, emu_req_param(req, 0), false, NULL, &e);
    pp_environment env;
    if (st == PP_ENV_OK)
        st = pp_env_get(c->envs, emu_req_param(req, 0), &env);
    if (st != PP_ENV_OK) {
        send_env_error(req, st, &e);
        return;
    }
    emu_send_json(req, 200, env_json_cmk(req, &env));
}

static void h_env_enable(emu_req *req, void *ud)
{
    set_enabled(req, ud, true);
}

static void h_env_disable(emu_req *req, void *ud)
{
    set_enabled(req, ud, false);
}

static void link_common(emu_req *req, pp_bap_ctx *c, bool link)
{
    if (!pp_bap_check_version(req))
        return;
    char err[300];
    json_t *body = emu_req_json(req, !link, err, sizeof err);
    if (!body && link) {
        emu_send_error(req, 400, "InvalidRequest", "%s", err);
        return;
    }
    const char *sid = body ? json_string_value(json_object_get(body, "SystemId")) : NULL;
    if (!sid && body)
        sid = json_string_value(json_object_get(body, "systemId"));
    pp_env_err e = {{0}};
    pp_env_operation op;
    pp_env_status st =
        link ? pp_env_link(c->envs, emu_req_param(req, 0), sid, req->principal, &op, &e)
             : pp_env_unlink(c->envs, emu_req_param(req, 0), sid, req->principal, &op, &e);
    json_decref(body);
    if (st != PP_ENV_OK) {
        send_env_error(req, st, &e);
        return;
    }
    send_operation_accepted(req, &op, NULL);
}

static void h_env_link(emu_req *req, void *ud)
{
    link_common(req, ud, true);
}

static void h_env_unlink(emu_req *req, void *ud)
{
    link_common(req, ud, false);
}

static void h_op_get(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    pp_env_operation op;
    if (pp_env_operation_get(c->envs, emu_req_param(req, 0), &op) != PP_ENV_OK) {
        emu_send_error(req, 404, "OperationNotFound", "Lifecycle operation '%.40s' does not exist.",
                       emu_req_param(req, 0));
        return;
    }
    char created[40];
    emu_time_rfc3339(op.created, created, sizeof created);
    json_t *j =
        json_pack("{s:s,s:s,s:s,s:{s:s},s:s,s:s}", "id", op.id, "name", op.id, "environmentName",
                  op.env, "state", "id", op.state, "type", op.kind, "createdDateTime", created);
    if (op.error[0])
        json_object_set_new(j, "error", json_pack("{s:s}", "message", op.error));
    emu_send_json(req, 200, j);
}

/* ---- records ------------------------------------------------------------------------------- */

static void odata_error(emu_req *req, int status, const char *code, const char *msg)
{
    emu_resp_header_add(req, "OData-Version", "4.0");
    emu_send_json(req, status, json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg));
}

static void send_record_error(emu_req *req, pp_env_status st, const pp_env_err *e)
{
    switch (st) {
    case PP_ENV_ERR_BAD_PARAM:
        odata_error(req, 400, "0x80040203", e->msg);
        break;
    case PP_ENV_ERR_NOT_FOUND:
        odata_error(req, 404, "0x80040217", e->msg);
        break;
    case PP_ENV_ERR_CONFLICT:
        odata_error(req, 412, "0x80040237", e->msg);
        break;
    case PP_ENV_ERR_BUSY: /* the data key changed under the write; nothing was stored */
        odata_error(req, 409, "DataKeyChanged", e->msg);
        break;
    case PP_ENV_ERR_DISABLED:
        odata_error(req, 423, "EnvironmentDisabled", e->msg);
        break;
    case PP_ENV_ERR_LOCKED:
        odata_error(req, 423, "EnvironmentLocked", e->msg);
        break;
    default:
        odata_error(req, 500, "0x80040216", e->msg);
        break;
    }
}

/* The environment of the instance host; false after answering 404 (or 423). */
static bool env_of_host(emu_req *req, pp_bap_ctx *c, char env[40])
{
    char host[256];
    emu_req_hostname(req, host, sizeof host);
    size_t n = strlen(host), sl = strlen(CRM_SUFFIX);
    pp_environment e;
    if (n <= sl || n - sl >= 40 || strcmp(host + n - sl, CRM_SUFFIX)) {
        odata_error(req, 404, "EnvironmentNotFound",
                    "The Dataverse Web API answers on an environment's instance URL "
                    "(https://{environmentId}.crm.localhost:PORT/).");
        return false;
    }
    memcpy(env, host, n - sl);
    env[n - sl] = '\0';
    if (pp_env_get(c->envs, env, &e) != PP_ENV_OK) {
        char msg[128];
        snprintf(msg, sizeof msg, "Environment '%s' does not exist.", env);
        odata_error(req, 404, "EnvironmentNotFound", msg);
        return false;
    }
    return true;
}

/* Splits "accounts(guid)" into set and id; a bare "accounts" gives id "". */
static bool split_segment(emu_req *req, char *set, size_t setlen, char *id, size_t idlen)
{
    const char *seg = emu_req_param(req, 0);
    const char *lp = strchr(seg, '(');
    id[0] = '\0';
    if (!lp) {
        snprintf(set, setlen, "%s", seg);
        return strlen(seg) < setlen;
    }
    size_t sn = (size_t)(lp - seg), rest = strlen(lp + 1);
    if (sn >= setlen || rest < 2 || lp[rest] != ')' || rest - 1 >= idlen)
        return false;
    memcpy(set, seg, sn);
    set[sn] = '\0';
    /* ids are stored lowercase; Dataverse compares GUIDs case-insensitively */
    for (size_t i = 0; i < rest - 1; i++) {
        char ch = lp[1 + i];
        id[i] = (ch >= 'A' && ch <= 'F') ? (char)(ch - 'A' + 'a') : ch;
    }
    id[rest - 1] = '\0';
    return true;
}

typedef struct {
    char env[40], set[80], id[48];
    bool has_id;
} rec_target;

static bool rec_begin(emu_req *req, pp_bap_ctx *c, rec_target *t)
{
    memset(t, 0, sizeof *t);
    if (!env_of_host(req, c, t->env))
        return false;
    if (!split_segment(req, t->set, sizeof t->set, t->id, sizeof t->id)) {
        odata_error(req, 400, "0x80060888",
                    "The URL segment is not 'entitySet' or "
                    "'entitySet(guid)'.");
        return false;
    }
    t->has_id = t->id[0] != '\0';
    return true;
}

static char *entity_url(emu_req *req, const rec_target *t, const char *id)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s" ODATA "%s(%s)", emu_req_base_url(req), t->set, id);
    return emu_arena_strdup(req->arena, buf);
}

/* The "@odata.context" of one row of t's entity set. */
static void entity_context(emu_req *req, const rec_target *t, char *ctx, size_t cap)
{
    snprintf(ctx, cap, "%s" ODATA "$metadata#%s/$entity", emu_req_base_url(req), t->set);
}

/* 200 with a stored row as it is, "@odata.context" spliced in first: no parse and no
 * re-serialisation of the row. text is "{...}" as pp_record_get_text gives it; it is cleansed
 * and freed here. */
static void send_row_text(emu_req *req, const rec_target *t, int status, char *text, size_t len)
{
    char ctx[512];
    entity_context(req, t, ctx, sizeof ctx);
    json_t *js = json_string(ctx); /* NULL when the Host header made it invalid UTF-8 */
    if (!js)
        js = json_string("");
    char *ctx_json = json_dumps(js, JSON_ENCODE_ANY); /* quoted and escaped */
    json_decref(js);
    if (!ctx_json)
        abort();
    size_t cl = strlen(ctx_json);
    bool empty = len == 2; /* "{}" */
    static const char head[] = "{\"@odata.context\":";
    size_t out_len = sizeof head - 1 + cl + (empty ? 1 : len);
    char *out = emu_xmalloc(out_len + 1);
    char *w = out;
    memcpy(w, head, sizeof head - 1);
    w += sizeof head - 1;
    memcpy(w, ctx_json, cl);
    w += cl;
    if (empty) {
        *w++ = '}';
    } else {
        *w++ = ',';
        memcpy(w, text + 1, len - 1);
        w += len - 1;
    }
    *w = '\0';
    free(ctx_json);
    OPENSSL_cleanse(text, len);
    free(text);
    emu_resp_header_add(req, "OData-Version", "4.0");
    emu_send_json_text(req, status, out, out_len);
}

static bool wants_representation(emu_req *req)
{
    const char *p = emu_req_header(req, "Prefer");
    return p && strstr(p, "return=representation");
}

/* A record write's body: a flat object as text and members (m holds EMU_JFLAT_MAX), else
 * parsed (*tree, which the caller frees). false: answered 400. */
static bool rec_body(emu_req *req, pp_record_body *b, emu_jmember *m, json_t **tree)
{
    *b = (pp_record_body){0};
    *tree = NULL;
    if (req->max_json_depth >= 1 &&
        emu_jflat_scan(req->body, req->body_len, m, EMU_JFLAT_MAX, &b->n)) {
        b->text = req->body;
        b->len = req->body_len;
        b->m = m;
        return true;
    }
    char jerr[256];
    *tree = emu_req_json(req, false, jerr, sizeof jerr);
    if (!*tree)
        odata_error(req, 400, "0x80040203", jerr);
    b->json = *tree;
    return *tree != NULL;
}

/* The answer to a stored write: the row's URL, then the row (text, as stored; status) when
 * representation was asked, else 204. */
static void send_written(emu_req *req, const rec_target *t, const char *id, int status, char *text,
                         size_t len)
{
    emu_resp_header_add(req, "OData-EntityId", entity_url(req, t, id));
    if (text) {
        send_row_text(req, t, status, text, len);
    } else {
        emu_resp_header_add(req, "OData-Version", "4.0");
        emu_send_empty(req, 204);
    }
}

static void h_rec_post(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    rec_target t;
    if (!rec_begin(req, c, &t))
        return;
    if (t.has_id) {
        odata_error(req, 405, "0x80060888",
                    "POST creates rows on the entity set URL, not on a row.");
        return;
    }
    emu_jmember m[EMU_JFLAT_MAX];
    pp_record_body b;
    json_t *tree;
    if (!rec_body(req, &b, m, &tree))
        return;
    char id[40], *text = NULL;
    size_t len = 0;
    pp_env_err e = {{0}};
    pp_env_status st = pp_record_create(c->envs, t.env, t.set, &b, id,
                                        wants_representation(req) ? &text : NULL, &len, &e);
    json_decref(tree);
    if (st != PP_ENV_OK)
        send_record_error(req, st, &e);
    else
        send_written(req, &t, id, 201, text, len);
}

static void h_rec_get(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    rec_target t;
    pp_env_err e = {{0}};
    if (!rec_begin(req, c, &t))
        return;
    if (t.has_id) {
        char *text = NULL;
        size_t len = 0;
        pp_env_status st = pp_record_get_text(c->envs, t.env, t.set, t.id, &text, &len, &e);
        if (st != PP_ENV_OK)
            send_record_error(req, st, &e);
        else
            send_row_text(req, &t, 200, text, len);
        return;
    }
    int64_t top = 0, after = 0;
    const char *qt = emu_req_query(req, "$top");
    const char *qs = emu_req_query(req, "$skiptoken");
    if (qt && !emu_parse_i64(qt, 1, PP_LIST_MAX, &top)) {
        char msg[96];
        snprintf(msg, sizeof msg, "$top must be a whole number from 1 to %d.", PP_LIST_MAX);
        odata_error(req, 400, "0x80060888", msg);
        return;
    }
    if (qs && !emu_parse_i64(qs, 0, INT64_MAX, &after)) {
        odata_error(req, 400, "0x80060888", "$skiptoken is not one this server gave out.");
        return;
    }
    json_t *rows = NULL;
    int64_t next = 0;
    pp_env_status st = pp_record_list(c->envs, t.env, t.set, after, (size_t)top, &rows, &next, &e);
    if (st != PP_ENV_OK) {
        send_record_error(req, st, &e);
        return;
    }
    char ctx[512];
    snprintf(ctx, sizeof ctx, "%s" ODATA "$metadata#%s", emu_req_base_url(req), t.set);
    json_t *j = json_pack("{s:s,s:o}", "@odata.context", ctx, "value", rows);
    if (next) {
        char link[600];
        snprintf(link, sizeof link, "%s" ODATA "%s?$top=%lld&$skiptoken=%lld",
                 emu_req_base_url(req), t.set, (long long)top, (long long)next);
        json_object_set_new(j, "@odata.nextLink", json_string(link));
    }
    emu_resp_header_add(req, "OData-Version", "4.0");
    emu_send_json(req, 200, j);
}

static void h_rec_patch(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    rec_target t;
    if (!rec_begin(req, c, &t))
        return;
    if (!t.has_id) {
        odata_error(req, 405, "0x80060888", "PATCH needs a row: {entitySet}({id}).");
        return;
    }
    const char *im = emu_req_header(req, "If-Match");
    bool must_exist = im && !strcmp(im, "*");
    emu_jmember m[EMU_JFLAT_MAX];
    pp_record_body b;
    json_t *tree;
    if (!rec_body(req, &b, m, &tree))
        return;
    bool created = false;
    char *text = NULL;
    size_t len = 0;
    pp_env_err e = {{0}};
    pp_env_status st = pp_record_update(c->envs, t.env, t.set, t.id, &b, must_exist, &created,
                                        wants_representation(req) ? &text : NULL, &len, &e);
    json_decref(tree);
    if (st != PP_ENV_OK) {
        send_record_error(req, st, &e);
        return;
    }
    char lid[40];
    emu_lower_copy(lid, sizeof lid, t.id);
    send_written(req, &t, lid, created ? 201 : 200, text, len);
}

static void h_rec_delete(emu_req *req, void *ud)
{
    pp_bap_ctx *c = ud;
    rec_target t;
    if (!rec_begin(req, c, &t))
        return;
    if (!t.has_id) {
        odata_error(req, 405, "0x80060888", "DELETE needs a row: {entitySet}({id}).");
        return;
    }
    pp_env_err e = {{0}};
    pp_env_status st = pp_record_delete(c->envs, t.env, t.set, t.id, &e);
    if (st != PP_ENV_OK) {
        send_record_error(req, st, &e);
        return;
    }
    emu_resp_header_add(req, "OData-Version", "4.0");
    emu_send_empty(req, 204);
}

void pp_bap_register(emu_router *r, pp_bap_ctx *ctx)
{
    static const char *const roots[][5] = {
        {BAP "/environments", BAP "/environments/{id}", BAP "/environments/{id}/enable",
         BAP "/environments/{id}/disable", NULL},
        {ADMIN "/environments", ADMIN "/environments/{id}", ADMIN "/environments/{id}/enable",
         ADMIN "/environments/{id}/disable", NULL},
    };
    static const char *const links[][2] = {
        {BAP "/environments/{id}/enterprisePolicies/Encryption/link",
         BAP "/environments/{id}/enterprisePolicies/Encryption/unlink"},
        {ADMIN "/environments/{id}/enterprisePolicies/Encryption/link",
         ADMIN "/environments/{id}/enterprisePolicies/Encryption/unlink"},
    };
    if (ctx->comps)
        pp_comps_api_register(r, ctx);
    for (int i = 0; i < 2; i++) {
        emu_router_add(r, "POST", links[i][0], EMU_ROUTE_SLOW, precheck, h_env_link, ctx);
        emu_router_add(r, "POST", links[i][1], EMU_ROUTE_SLOW, precheck, h_env_unlink, ctx);
        emu_router_add(r, "POST", roots[i][2], EMU_ROUTE_SLOW, precheck, h_env_enable, ctx);
        emu_router_add(r, "POST", roots[i][3], 0, precheck, h_env_disable, ctx);
        emu_router_add(r, "GET", roots[i][1], 0, precheck, h_env_get, ctx);
        emu_router_add(r, "DELETE", roots[i][1], 0, precheck, h_env_delete, ctx);
        emu_router_add(r, "POST", roots[i][0], EMU_ROUTE_SLOW, precheck, h_env_create, ctx);
        emu_router_add(r, "GET", roots[i][0], 0, precheck, h_env_list, ctx);
    }
    emu_router_add(r, "GET", BAP "/lifecycleOperations/{id}", 0, precheck, h_op_get, ctx);
    emu_router_add(r, "POST", ODATA "{seg}", 0, precheck, h_rec_post, ctx);
    emu_router_add(r, "GET", ODATA "{seg}", 0, precheck, h_rec_get, ctx);
    emu_router_add(r, "PATCH", ODATA "{seg}", 0, precheck, h_rec_patch, ctx);
    emu_router_add(r, "DELETE", ODATA "{seg}", 0, precheck, h_rec_delete, ctx);
}
