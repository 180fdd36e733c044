#include "deployments.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "template.h"
#include "util.h"

#define DEPLOY_TYPE "Microsoft.Resources/deployments"
#define MAX_DEPLOYMENT_NAME 64
#define ASYNC_POLLS 120       /* a provider's own async operation: at most 120 polls ... */
#define ASYNC_POLL_US 250000  /* ... 250 ms apart */
#define MAX_DEPLOYMENTS_LIST 800

static const emu_migration DEPLOY_MIGRATIONS[] = {
    {"arm_deployments", 1,
     "CREATE TABLE arm_deployments(sub TEXT NOT NULL, lrg TEXT NOT NULL, lname TEXT NOT NULL,"
     " doc TEXT NOT NULL, ops TEXT NOT NULL, opid TEXT NOT NULL, created INTEGER NOT NULL,"
     " PRIMARY KEY(sub, lrg, lname));"},
};

bool arm_deployments_init(arm_deploy_ctx *ctx, char *err, size_t errlen)
{
    return emu_store_migrate(ctx->store, DEPLOY_MIGRATIONS,
                             sizeof DEPLOY_MIGRATIONS / sizeof DEPLOY_MIGRATIONS[0], err, errlen);
}

/* ---- store ---------------------------------------------------------------------------------- */

typedef struct {
    char sub[64], rg[96], name[MAX_DEPLOYMENT_NAME + 1];
} dkey;

static void key_of(dkey *k, const char *sub, const char *rg, const char *name)
{
    emu_lower_copy(k->sub, sizeof k->sub, sub);
    emu_lower_copy(k->rg, sizeof k->rg, rg);
    emu_lower_copy(k->name, sizeof k->name, name);
}

static bool store_put(arm_deploy_ctx *c, const dkey *k, const json_t *doc, const json_t *ops,
                      const char *opid)
{
    char *d = json_dumps(doc, JSON_COMPACT), *o = json_dumps(ops, JSON_COMPACT);
    sqlite3 *db = emu_store_lock(c->store);
    sqlite3_stmt *st = NULL;
    bool ok = d && o &&
              sqlite3_prepare_v2(db,
                                 "INSERT OR REPLACE INTO arm_deployments(sub, lrg, lname, doc, "
                                 "ops, opid, created) VALUES(?,?,?,?,?,?,?)",
                                 -1, &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, k->sub, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, k->rg, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, k->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, d, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, o, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, opid, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 7, emu_clock_now());
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    emu_store_unlock(c->store);
    free(d);
    free(o);
    if (!ok)
        emu_log(EMU_LOG_ERROR, "deploy", "storing deployment %s failed", k->name);
    return ok;
}

/* The record (doc, ops, opid: new references / copy); false when absent. */
static bool store_get(arm_deploy_ctx *c, const dkey *k, json_t **doc, json_t **ops, char *opid,
                      size_t opidlen)
{
    sqlite3 *db = emu_store_lock(c->store);
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(db,
                           "SELECT doc, ops, opid FROM arm_deployments WHERE sub=? AND lrg=? AND "
                           "lname=?",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, k->sub, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, k->rg, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, k->name, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            found = true;
            if (doc)
                *doc = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
            if (ops)
                *ops = json_loads((const char *)sqlite3_column_text(st, 1), 0, NULL);
            if (opid)
                snprintf(opid, opidlen, "%s", (const char *)sqlite3_column_text(st, 2));
        }
    }
    sqlite3_finalize(st);
    emu_store_unlock(c->store);
    if (found && doc && !*doc)
        found = false;
    if (found && ops && !*ops)
        *ops = json_array();
    return found;
}

static json_t *store_list(arm_deploy_ctx *c, const char *sub, const char *rg)
{
    dkey k;
    key_of(&k, sub, rg, "");
    json_t *arr = json_array();
    sqlite3 *db = emu_store_lock(c->store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT doc FROM arm_deployments WHERE sub=? AND lrg=? ORDER BY "
                           "created DESC, lname LIMIT ?",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, k.sub, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, k.rg, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 3, MAX_DEPLOYMENTS_LIST);
        while (sqlite3_step(st) == SQLITE_ROW) {
            json_t *d = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
            if (d)
                json_array_append_new(arr, d);
        }
    }
    sqlite3_finalize(st);
    emu_store_unlock(c->store);
    return arr;
}

static bool store_delete(arm_deploy_ctx *c, const char *sub, const char *rg, const char *name)
{
    dkey k;
    key_of(&k, sub, rg, name ? name : "");
    sqlite3 *db = emu_store_lock(c->store);
    sqlite3_stmt *st = NULL;
    bool ok = sqlite3_prepare_v2(db,
                                 name ? "DELETE FROM arm_deployments WHERE sub=? AND lrg=? AND "
                                        "lname=?"
                                      : "DELETE FROM arm_deployments WHERE sub=? AND lrg=?",
                                 -1, &st, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(st, 1, k.sub, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, k.rg, -1, SQLITE_STATIC);
        if (name)
            sqlite3_bind_text(st, 3, k.name, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
    }
    sqlite3_finalize(st);
    emu_store_unlock(c->store);
    return ok;
}

static void on_rg_delete(const char *sub, const char *rg, void *ud)
{
    store_delete(ud, sub, rg, NULL);
}

/* ---- helpers ---------------------------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static json_t *duration_json(int64_t ms)
{
    return json_sprintf("PT%lld.%03lldS", (long long)(ms / 1000), (long long)(ms % 1000));
}

static json_t *now_json(void)
{
    char t[40];
    emu_time_rfc3339(emu_clock_now(), t, sizeof t);
    return json_string(t);
}

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "NoContent";
    case 400: return "BadRequest";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "NotFound";
    case 409: return "Conflict";
    default: return status >= 500 ? "InternalServerError" : "BadRequest";
    }
}

static bool valid_deployment_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_DEPLOYMENT_NAME)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("-_.()", s[i]))
            return false;
    return true;
}

static char *deployment_id(const char *sub, const char *rg, const char *name)
{
    return emu_xasprintf("/subscriptions/%s/resourceGroups/%s/providers/" DEPLOY_TYPE "/%s", sub,
                         rg, name);
}

static bool rg_or_404(emu_req *req, arm_deploy_ctx *c, char *loc, size_t loclen)
{
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1);
    if (armres_rg_exists(c->arm, sub, rg, loc, loclen))
        return true;
    char er[200];
    emu_log_escape(rg, 90, er, sizeof er);
    arm_send_error(req, 404, "ResourceGroupNotFound", NULL,
                   "Resource group '%s' could not be found.", er);
    return false;
}

static void not_found(emu_req *req, const char *name)
{
    char en[100];
    emu_log_escape(name, 64, en, sizeof en);
    arm_send_error(req, 404, "DeploymentNotFound", NULL, "Deployment '%s' could not be found.",
                   en);
}

/* ---- in-process requests ------------------------------------------------------------------------ */

/* A request to the router carrying the caller's credentials and host. Caller frees. */
static emu_req *sub_request(arm_deploy_ctx *c, emu_req *parent, const char *method,
                            const char *uri, const json_t *body)
{
    emu_req *r = emu_req_new(method, uri);
    if (parent->host && *parent->host)
        emu_req_add_header(r, "Host", parent->host);
    const char *auth = emu_req_header(parent, "Authorization");
    if (auth)
        emu_req_add_header(r, "Authorization", auth);
    r->max_json_depth = parent->max_json_depth;
    r->principal = parent->principal; /* re-resolved from the token when an authenticator runs */
    if (body) {
        char *b = json_dumps(body, JSON_COMPACT);
        emu_req_add_header(r, "Content-Type", "application/json");
        emu_req_set_body(r, b, strlen(b));
        free(b);
    }
    emu_router_dispatch(c->router, r);
    return r;
}

static json_t *resp_json(const emu_req *r)
{
    return r->resp_len ? json_loadb(r->resp_body, r->resp_len, 0, NULL) : NULL;
}

static const char *resp_header(const emu_req *r, const char *name)
{
    for (const emu_resp_header *h = r->resp_headers; h; h = h->next)
        if (!strcasecmp(h->name, name))
            return h->value;
    return NULL;
}

/* Path and query of an absolute URL: scheme and authority dropped. */
static const char *url_path(const char *url)
{
    const char *p = strstr(url, "://");
    if (!p)
        return url;
    p = strchr(p + 3, '/');
    return p ? p : "/";
}

/* The error object of a provider's answer, or one made from its status. New reference. */
static json_t *error_of(const emu_req *r, const json_t *body)
{
    json_t *e = json_object_get(body, "error");
    if (json_is_object(e))
        return json_deep_copy(e);
    return json_pack("{s:s,s:s}", "code", status_text(r->status), "message",
                     "The resource provider answered with an error.");
}

static bool terminal_state(const char *s)
{
    return s && (!strcasecmp(s, "Succeeded") || !strcasecmp(s, "Failed") ||
                 !strcasecmp(s, "Canceled"));
}

/* A provider answered 201/202 with an async operation still running: poll it in-process
 * (bounded), then read the resource. Replaces the response and body with the final answer. */
static void wait_async(arm_deploy_ctx *c, emu_req *parent, const char *res_uri, emu_req **resp,
                       json_t **body)
{
    const char *aao = resp_header(*resp, "Azure-AsyncOperation");
    const char *loc = resp_header(*resp, "Location");
    const char *st = json_string_value(
        json_object_get(json_object_get(*body, "properties"), "provisioningState"));
    if ((*resp)->status != 202 && (!aao && !loc))
        return;
    if ((*resp)->status != 202 && terminal_state(st))
        return;
    if (!aao && !loc)
        return;
    char *poll = emu_xstrdup(url_path(aao ? aao : loc));
    bool by_status = aao != NULL;
    for (int i = 0; i < ASYNC_POLLS; i++) {
        usleep(ASYNC_POLL_US);
        emu_req *p = sub_request(c, parent, "GET", poll, NULL);
        json_t *pb = resp_json(p);
        if (by_status) {
            const char *s = json_string_value(json_object_get(pb, "status"));
            if (p->status >= 400 || terminal_state(s)) {
                if (s && strcasecmp(s, "Succeeded") != 0) {
                    /* report the failed operation as the provider's answer */
                    emu_req_free(*resp);
                    json_decref(*body);
                    json_t *e = json_object_get(pb, "error");
                    *body = json_pack("{s:o}", "error",
                                      e ? json_incref(e)
                                        : json_pack("{s:s,s:s}", "code", "Failed", "message",
                                                    "The operation failed."));
                    (*resp) = p;
                    (*resp)->status = 400;
                    json_decref(pb);
                    free(poll);
                    return;
                }
                json_decref(pb);
                emu_req_free(p);
                break;
            }
        } else if (p->status != 202) {
            json_decref(*body);
            emu_req_free(*resp);
            *resp = p;
            *body = pb;
            free(poll);
            return;
        }
        json_decref(pb);
        emu_req_free(p);
    }
    free(poll);
    emu_req *g = sub_request(c, parent, "GET", res_uri, NULL);
    json_decref(*body);
    emu_req_free(*resp);
    *resp = g;
    *body = resp_json(g);
}

typedef struct {
    arm_deploy_ctx *c;
    emu_req *parent;
} ref_ctx;

static json_t *reference_cb(void *ud, const char *id, const char *api_version, char *err,
                            size_t errlen)
{
    ref_ctx *rc = ud;
    char *uri = emu_xasprintf("%s?api-version=%s", id, api_version);
    emu_req *r = sub_request(rc->c, rc->parent, "GET", uri, NULL);
    free(uri);
    json_t *b = resp_json(r);
    if (r->status != 200 || !json_is_object(b)) {
        const char *m = json_string_value(json_object_get(json_object_get(b, "error"), "message"));
        snprintf(err, errlen, "%d %s", r->status, m ? m : "");
        json_decref(b);
        b = NULL;
    }
    emu_req_free(r);
    return b;
}

/* ---- the deployment ------------------------------------------------------------------------------ */

typedef struct {
    const char *sub, *rg, *rgloc, *name;
    char *id;
    char opid[37], correlation[37];
} dinfo;

/* Checks the body; answers 400 and returns false when it is not a deployable request. */
static bool check_body(emu_req *req, json_t *body, json_t **tmpl, json_t **params,
                       const char **mode)
{
    json_t *props = json_object_get(body, "properties");
    if (!json_is_object(props)) {
        arm_send_error(req, 400, "InvalidRequestContent", "properties",
                       "The request content must have a 'properties' object.");
        return false;
    }
    if (json_object_get(props, "templateLink") || json_object_get(props, "parametersLink")) {
        arm_send_error(req, 400, "InvalidTemplateDeployment", "properties.templateLink",
                       "cmkemu deploys only inline templates: send the template in "
                       "properties.template and the parameters in properties.parameters "
                       "(templateLink and parametersLink are not supported).");
        return false;
    }
    *mode = json_string_value(json_object_get(props, "mode"));
    if (!*mode) {
        arm_send_error(req, 400, "InvalidRequestContent", "properties.mode",
                       "The deployment 'mode' is required (Incremental).");
        return false;
    }
    if (strcasecmp(*mode, "Incremental") != 0) {
        arm_send_error(req, 400, "InvalidDeploymentMode", "properties.mode",
                       "The deployment mode '%.40s' is not supported by cmkemu; use "
                       "'Incremental'.",
                       *mode);
        return false;
    }
    *tmpl = json_object_get(props, "template");
    if (!json_is_object(*tmpl)) {
        arm_send_error(req, 400, "InvalidRequestContent", "properties.template",
                       "The deployment must carry its template in properties.template.");
        return false;
    }
    *params = json_object_get(props, "parameters");
    if (*params && !json_is_object(*params) && !json_is_null(*params)) {
        arm_send_error(req, 400, "InvalidRequestContent", "properties.parameters",
                       "properties.parameters must be an object of {\"name\": {\"value\": ...}}.");
        return false;
    }
    if (json_is_null(*params))
        *params = NULL;
    return true;
}

static void add_operation(json_t *ops, const dinfo *d, const arm_tpl_resource *r, int status,
                          const json_t *status_message, int64_t ms)
{
    char opid[37];
    emu_guid(opid);
    char *id = emu_xasprintf("%s/operations/%s", d->id, opid);
    json_t *props = json_pack(
        "{s:s,s:s,s:o,s:o,s:s,s:s,s:{s:s,s:s,s:s,s:s}}", "provisioningOperation", "Create",
        "provisioningState", status < 400 ? "Succeeded" : "Failed", "timestamp", now_json(),
        "duration", duration_json(ms), "trackingId", d->correlation, "statusCode",
        status_text(status), "targetResource", "id", r->id, "resourceType", r->type,
        "resourceName", r->name, "apiVersion", r->api_version);
    if (status_message)
        json_object_set(props, "statusMessage", (json_t *)status_message);
    json_array_append_new(ops, json_pack("{s:s,s:s,s:o}", "id", id, "operationId", opid,
                                         "properties", props));
    free(id);
}

/* Deploys the resources; returns the error object on failure (NULL on success) and fills
 * outputs and output resources. */
static json_t *deploy(arm_deploy_ctx *c, emu_req *req, arm_tpl *t, const dinfo *d, json_t *ops,
                      json_t *out_res, json_t **outputs)
{
    arm_tpl_error err;
    size_t n = arm_tpl_resource_count(t);
    for (size_t i = 0; i < n; i++) {
        arm_tpl_resource r;
        if (!arm_tpl_resource_eval(t, i, &r, &err))
            return json_pack("{s:s,s:s}", "code", err.code, "message", err.message);
        if (r.skipped || r.existing) {
            arm_tpl_resource_cleanup(&r);
            continue;
        }
        char *uri = emu_xasprintf("%s?api-version=%s", r.id, r.api_version);
        int64_t t0 = mono_ms();
        emu_req *resp = sub_request(c, req, "PUT", uri, r.body);
        json_t *body = resp_json(resp);
        wait_async(c, req, uri, &resp, &body);
        free(uri);
        int status = resp->status;
        const char *ps = json_string_value(
            json_object_get(json_object_get(body, "properties"), "provisioningState"));
        bool failed = status >= 400 || (ps && !strcasecmp(ps, "Failed"));
        emu_log(EMU_LOG_DEBUG, "deploy", "deployment %s: PUT %s -> %d", d->name, r.id, status);
        if (failed) {
            json_t *e = error_of(resp, body);
            json_t *msg = json_pack("{s:O}", "error", e);
            add_operation(ops, d, &r, status < 400 ? 400 : status, msg, mono_ms() - t0);
            json_decref(msg);
            json_t *detail = json_pack("{s:s,s:s,s:o}", "code", "ResourceDeploymentFailure",
                                       "target", r.id, "details", json_pack("[o]", e));
            json_t *top = json_pack(
                "{s:s,s:s,s:[o]}", "code", "DeploymentFailed", "message",
                "At least one resource deployment operation failed. Please list deployment "
                "operations for details. Please see https://aka.ms/arm-deployment-operations "
                "for usage details.",
                "details", detail);
            /* the provider's message, first level, for readers that show only one level */
            json_t *pm = json_object_get(e, "message");
            json_object_set_new(detail, "message",
                                pm ? json_incref(pm) : json_string("The resource failed."));
            json_decref(body);
            emu_req_free(resp);
            arm_tpl_resource_cleanup(&r);
            return top;
        }
        add_operation(ops, d, &r, status, NULL, mono_ms() - t0);
        json_array_append_new(out_res, json_pack("{s:s}", "id", r.id));
        json_decref(body);
        emu_req_free(resp);
        arm_tpl_resource_cleanup(&r);
    }
    *outputs = arm_tpl_outputs(t, &err);
    if (!*outputs)
        return json_pack("{s:s,s:s}", "code", err.code, "message", err.message);
    return NULL;
}

static json_t *providers_json(arm_tpl *t)
{
    json_t *provs = json_array();
    size_t n = arm_tpl_resource_count(t);
    for (size_t i = 0; i < n; i++) {
        const char *type = arm_tpl_resource_type(t, i);
        const char *slash = strchr(type, '/');
        if (!slash)
            continue;
        char ns[128];
        snprintf(ns, sizeof ns, "%.*s", (int)(slash - type), type);
        json_t *p = NULL;
        size_t k;
        json_t *x;
        json_array_foreach(provs, k, x)
        {
            if (!strcasecmp(json_string_value(json_object_get(x, "namespace")), ns))
                p = x;
        }
        if (!p) {
            p = json_pack("{s:s,s:[]}", "namespace", ns, "resourceTypes");
            json_array_append_new(provs, p);
        }
        json_array_append_new(json_object_get(p, "resourceTypes"),
                              json_pack("{s:s}", "resourceType", slash + 1));
    }
    return provs;
}

static void async_header(emu_req *req, const dinfo *d)
{
    const char *av = emu_req_query(req, "api-version");
    char *url = emu_xasprintf("%s%s/operationStatuses/%s?api-version=%s", emu_req_base_url(req),
                              d->id, d->opid, av ? av : "2024-03-01");
    emu_resp_header_add(req, "Azure-AsyncOperation", url);
    free(url);
}

static void h_put(emu_req *req, void *ud)
{
    arm_deploy_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    dinfo d = {.sub = emu_req_param(req, 0), .rg = emu_req_param(req, 1),
               .name = emu_req_param(req, 2)};
    char rgloc[64] = "";
    if (!rg_or_404(req, c, rgloc, sizeof rgloc))
        return;
    d.rgloc = rgloc;
    if (!valid_deployment_name(d.name)) {
        arm_send_error(req, 400, "InvalidDeploymentName", NULL,
                       "The deployment name must be 1-64 characters of letters, digits, '-', "
                       "'_', '.', '(' and ')'.");
        return;
    }
    json_t *body = arm_req_json(req, false);
    if (!body)
        return;
    json_t *tmpl = NULL, *params = NULL, *doc = NULL, *ops = NULL, *out_res = NULL,
           *outputs = NULL, *error = NULL;
    const char *mode = NULL;
    arm_tpl *t = NULL;
    if (!check_body(req, body, &tmpl, &params, &mode))
        goto out;
    ref_ctx rc = {.c = c, .parent = req};
    arm_tpl_env env = {.subscription = d.sub,
                       .resource_group = d.rg,
                       .rg_location = rgloc,
                       .tenant = c->common.tenant,
                       .deployment_name = d.name,
                       .reference = reference_cb,
                       .reference_ud = &rc};
    arm_tpl_error terr;
    t = arm_tpl_new(tmpl, params, &env, &terr);
    if (!t) {
        arm_send_error(req, 400, terr.code, NULL, "Deployment template validation failed: %s",
                       terr.message);
        goto out;
    }
    dkey k;
    key_of(&k, d.sub, d.rg, d.name);
    bool existed = store_get(c, &k, NULL, NULL, NULL, 0);
    d.id = deployment_id(d.sub, d.rg, d.name);
    emu_guid(d.opid);
    emu_guid(d.correlation);
    int64_t t0 = mono_ms();
    ops = json_array();
    out_res = json_array();
    error = deploy(c, req, t, &d, ops, out_res, &outputs);
    json_t *props = json_pack(
        "{s:o,s:s,s:s,s:o,s:o,s:s,s:o,s:[],s:o,s:o}", "parameters",
        arm_tpl_parameters_report(t), "mode", "Incremental", "provisioningState",
        error ? "Failed" : "Succeeded", "timestamp", now_json(), "duration",
        duration_json(mono_ms() - t0), "correlationId", d.correlation, "providers",
        providers_json(t), "dependencies", "outputResources", json_incref(out_res), "outputs",
        outputs ? json_incref(outputs) : json_object());
    char hash[14];
    char *tx = json_dumps(tmpl, JSON_COMPACT | JSON_SORT_KEYS);
    arm_tpl_unique_string(tx ? tx : "", tx ? strlen(tx) : 0, hash);
    free(tx);
    json_object_set_new(props, "templateHash", json_string(hash));
    if (error)
        json_object_set(props, "error", error);
    doc = json_pack("{s:s,s:s,s:s,s:o}", "id", d.id, "name", d.name, "type", DEPLOY_TYPE,
                    "properties", props);
    if (!store_put(c, &k, doc, ops, d.opid)) {
        arm_send_error(req, 500, "InternalServerError", NULL,
                       "The deployment record could not be stored.");
        goto out;
    }
    emu_log(EMU_LOG_INFO, "deploy", "deployment %s in %s: %s", d.name, d.rg,
            error ? "Failed" : "Succeeded");
    async_header(req, &d);
    emu_send_json(req, existed ? 200 : 201, json_incref(doc));
out:
    arm_tpl_free(t);
    free(d.id);
    json_decref(doc);
    json_decref(ops);
    json_decref(out_res);
    json_decref(outputs);
    json_decref(error);
    json_decref(body);
}

static void h_validate(emu_req *req, void *ud)
{
    arm_deploy_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    const char *sub = emu_req_param(req, 0), *rg = emu_req_param(req, 1),
               *name = emu_req_param(req, 2);
    char rgloc[64] = "";
    if (!rg_or_404(req, c, rgloc, sizeof rgloc))
        return;
    json_t *body = arm_req_json(req, false);
    if (!body)
        return;
    json_t *tmpl = NULL, *params = NULL;
    const char *mode = NULL;
    if (check_body(req, body, &tmpl, &params, &mode)) {
        arm_tpl_env env = {.subscription = sub,
                           .resource_group = rg,
                           .rg_location = rgloc,
                           .tenant = c->common.tenant,
                           .deployment_name = name};
        arm_tpl_error terr;
        arm_tpl *t = arm_tpl_new(tmpl, params, &env, &terr);
        if (!t) {
            arm_send_error(req, 400, terr.code, NULL,
                           "Deployment template validation failed: %s", terr.message);
        } else {
            json_t *vr = json_array();
            for (size_t i = 0; i < arm_tpl_resource_count(t); i++)
                json_array_append_new(vr, json_pack("{s:s}", "id", arm_tpl_resource_id(t, i)));
            char *id = deployment_id(sub, rg, name);
            char corr[37];
            emu_guid(corr);
            emu_send_json(req, 200,
                          json_pack("{s:s,s:s,s:s,s:{s:s,s:s,s:o,s:o,s:s,s:o}}", "id", id,
                                    "name", name, "type", DEPLOY_TYPE, "properties",
                                    "provisioningState", "Succeeded", "mode", "Incremental",
                                    "parameters", arm_tpl_parameters_report(t), "timestamp",
                                    now_json(), "correlationId", corr, "validatedResources",
                                    vr));
            free(id);
            arm_tpl_free(t);
        }
    }
    json_decref(body);
}

static void h_get(emu_req *req, void *ud)
{
    arm_deploy_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    dkey k;
    key_of(&k, emu_req_param(req, 0), emu_req_param(req, 1), emu_req_param(req, 2));
    json_t *doc = NULL;
    if (!store_get(c, &k, &doc, NULL, NULL, 0)) {
        not_found(req, emu_req_param(req, 2));
        return;
    }
    emu_send_json(req, 200, doc);
}

static void h_head(emu_req *req, void *ud)
{
    arm_deploy_ctx *c = ud;
    dkey k;
    key_of(&k, emu_req_param(req, 0), emu_req_param(req, 1), emu_req_param(req, 2));
    emu_send_empty(req, store_get(c, &k, NULL, NULL, NULL, 0) ? 204 : 404);
}

static void h_delete(emu_req *req, void *ud)
{
    arm_deploy_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    if (!store_delete(c, emu_req_param(req, 0), emu_req_param(req, 1), emu_req_param(req, 2))) {
        arm_send_error(req, 500, "InternalServerError", NULL,
                       "The deployment record could not be deleted.");
        return;
    }
    emu_send_empty(req, 204);
}

static void h_list(emu_req *req, void *ud)
{
    arm_deploy_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    char rgloc[64];
    if (!rg_or_404(req, c, rgloc, sizeof rgloc))
        return;
    emu_send_json(req, 200,
                  json_pack("{s:o}", "value",
                            store_list(c, emu_req_param(req, 0), emu_req_param(req, 1))));
}

static void h_operations(emu_req *req, void *ud)
{
    arm_deploy_ctx *c = ud;
    if (!arm_check_api_version(req))
        return;
    dkey k;
    key_of(&k, emu_req_param(req, 0), emu_req_param(req, 1), emu_req_param(req, 2));
    json_t *ops = NULL;
    if (!store_get(c, &k, NULL, &ops, NULL, 0)) {
        not_found(req, emu_req_param(req, 2));
        return;
    }
    emu_send_json(req, 200, json_pack("{s:o}", "value", ops));
}

static void h_op_status(emu_req *req, void *ud)
{
    arm_deploy_ctx *c = ud;
    dkey k;
    key_of(&k, emu_req_param(req, 0), emu_req_param(req, 1), emu_req_param(req, 2));
    json_t *doc = NULL;
    char opid[64] = "";
    const char *want = emu_req_param(req, 3);
    if (!store_get(c, &k, &doc, NULL, opid, sizeof opid) || strcasecmp(opid, want) != 0) {
        json_decref(doc);
        char eo[100];
        emu_log_escape(want, 64, eo, sizeof eo);
        arm_send_error(req, 404, "OperationNotFound", NULL,
                       "The deployment operation '%s' could not be found.", eo);
        return;
    }
    json_t *props = json_object_get(doc, "properties");
    const char *state = json_string_value(json_object_get(props, "provisioningState"));
    json_t *st = json_pack("{s:s,s:s,s:s}", "id", req->path, "name", opid, "status",
                           state ? state : "Succeeded");
    json_t *err = json_object_get(props, "error");
    if (err)
        json_object_set(st, "error", err);
    json_decref(doc);
    emu_send_json(req, 200, st);
}

void arm_deployments_register(emu_router *r, arm_deploy_ctx *ctx)
{
    emu_handler_fn pre = arm_precheck;
#define DEPS "/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.Resources/deployments"
    emu_router_add(r, "GET", DEPS "/{name}/operationStatuses/{op}", 0, pre, h_op_status, ctx);
    emu_router_add(r, "GET", DEPS "/{name}/operations", 0, pre, h_operations, ctx);
    /* DeploymentOperations lists without "providers/Microsoft.Resources", as ARM allows */
    emu_router_add(r, "GET", "/subscriptions/{sub}/resourcegroups/{rg}/deployments/{name}/operations",
                   0, pre, h_operations, ctx);
    emu_router_add(r, "POST", DEPS "/{name}/validate", EMU_ROUTE_SLOW, pre, h_validate, ctx);
    emu_router_add(r, "PUT", DEPS "/{name}", EMU_ROUTE_SLOW, pre, h_put, ctx);
    emu_router_add(r, "GET", DEPS "/{name}", 0, pre, h_get, ctx);
    emu_router_add(r, "HEAD", DEPS "/{name}", 0, pre, h_head, ctx);
    emu_router_add(r, "DELETE", DEPS "/{name}", 0, pre, h_delete, ctx);
    emu_router_add(r, "GET", DEPS, 0, pre, h_list, ctx);
#undef DEPS
    armres_on_rg_delete(ctx->arm, on_rg_delete, ctx);
}
