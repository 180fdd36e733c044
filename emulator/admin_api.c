#include "admin_api.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "router.h"

#include "clock.h"
#include "log.h"
#include "util.h"

static json_t *clock_json(void)
{
    char when[40];
    int64_t now = emu_clock_now();
    emu_time_rfc3339(now, when, sizeof when);
    return json_pack("{s:s,s:I,s:I}", "now", when, "nowUnix", (json_int_t)now, "offsetSeconds",
                     (json_int_t)emu_clock_offset());
}

static void h_health(emu_req *req, void *ud)
{
    emu_admin_ctx *ctx = ud;
    hsm_stats st;
    hsm_get_stats(ctx->hsm, &st);
    json_t *j =
        json_pack("{s:s,s:s,s:I,s:o,s:{s:s,s:I,s:I,s:I},s:{s:I,s:I}}", "status", "ok", "version",
                  ctx->version, "uptimeSeconds", (json_int_t)(emu_wall_now() - ctx->started),
                  "clock", clock_json(), "hsm", "module", hsm_module_path(ctx->hsm),
                  "moduleReloads", (json_int_t)st.module_reloads, "moduleHeals",
                  (json_int_t)st.module_heals, "destroyedSinceReload",
                  (json_int_t)st.destroyed_since_reload, "reconciliation",
                  "orphansDestroyed", (json_int_t)ctx->reconciled_orphans, "rowsWithoutObject",
                  (json_int_t)ctx->reconciled_missing);
    if (ctx->store)
        json_object_set_new(j, "store",
                            json_pack("{s:I,s:I,s:I}", "commits",
                                      (json_int_t)emu_store_commit_count(ctx->store), "syncs",
                                      (json_int_t)emu_store_sync_count(ctx->store),
                                      "failedBatches",
                                      (json_int_t)emu_store_failed_batches(ctx->store)));
    emu_send_json(req, 200, j);
}

static void h_clock_get(emu_req *req, void *ud)
{
    emu_send_json(req, 200, clock_json());
}

void emu_admin_load_clock(emu_store *store)
{
    char buf[32];
    int64_t off;
    if (emu_store_meta_get(store, "clock_offset", buf, sizeof buf) &&
        emu_parse_i64(buf, INT64_MIN / 4, INT64_MAX / 4, &off))
        emu_clock_set_offset(off);
}

static void h_clock_post(emu_req *req, void *ud)
{
    emu_admin_ctx *ctx = ud;
    char err[256];
    json_t *body = emu_req_json(req, false, err, sizeof err);
    if (!body) {
        emu_send_error(req, 400, "BadParameter", "%s", err);
        return;
    }
    json_t *adv = json_object_get(body, "advance");
    int64_t secs = 0;
    if (!json_is_string(adv) || !emu_iso_duration_parse(json_string_value(adv), &secs)) {
        json_decref(body);
        emu_send_error(req, 400, "BadParameter",
                       "Send {\"advance\": \"<ISO-8601 duration>\"}, e.g. \"P7D\" or \"PT1H\"; "
                       "the clock only moves forward.");
        return;
    }
    json_decref(body);
    int64_t off = emu_clock_offset() + secs;
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, off);
    if (!emu_store_meta_set(ctx->store, "clock_offset", buf)) {
        emu_send_error(req, 500, "StoreError", "The clock offset could not be saved.");
        return;
    }
    emu_clock_set_offset(off);
    emu_log(EMU_LOG_INFO, "clock", "clock advanced by %" PRId64 " s (offset %" PRId64 " s)", secs,
            off);
    emu_clock_apply_due();
    emu_send_json(req, 200, clock_json());
}

void emu_admin_require(emu_req *req, void *ud)
{
    emu_admin_ctx *ctx = ud;
    if (!ctx->auth || auth_get_mode(ctx->auth) != AUTH_STRICT)
        return;
    bool missing = false;
    char err[300];
    if (!auth_authenticate(ctx->auth, req, AUTH_AUD_ANY, &missing, err, sizeof err)) {
        emu_send_error(req, 401, "Unauthorized", "%s",
                       missing ? "This emulator endpoint needs a bearer token of an emulator "
                                 "admin in strict mode."
                               : err);
        return;
    }
    const auth_principal *p = req->principal;
    if (!p->emulator_admin)
        emu_send_error(req, 403, "Forbidden",
                       "Principal %s (%s) is not an emulator admin; in strict mode only admins "
                       "may change the emulator.",
                       p->name, p->oid);
}

static bool starts_ci(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

void emu_admin_audit_request(emu_req *req, void *ud)
{
    emu_admin_ctx *ctx = ud;
    if (!ctx->audit || !req->route)
        return;
    const char *m = req->method;
    bool reading = !strcasecmp(m, "GET") || !strcasecmp(m, "HEAD");
    const char *path = req->path;
    bool key_op = starts_ci(path, "/keys") || starts_ci(path, "/deletedkeys");
    bool arm_change = !reading && (starts_ci(path, "/subscriptions") || starts_ci(path, "/providers"));
    /* the dashboard's relay is audited as the operation it carries (emulator/ui) */
    bool emu_change = !reading && starts_ci(path, "/_emulator") &&
                      !starts_ci(path, "/_emulator/tokens") && !starts_ci(path, "/_emulator/ui/");
    bool token = !reading && strstr(path, "/oauth2/") != NULL;
    if (!key_op && !arm_change && !emu_change && !token)
        return;
    if (req->status == 401 && !req->principal)
        return; /* the bearer challenge every client gets first */
    const emu_route *rt = req->route;
    char op[300], host[128], target[700];
    snprintf(op, sizeof op, "%s %s", m, rt->pattern);
    emu_req_hostname(req, host, sizeof host);
    snprintf(target, sizeof target, "%s%s", key_op ? host : "", path);
    const auth_principal *p = req->principal;
    emu_audit_event ev = {.caller_oid = p ? p->oid : NULL,
                          .caller_appid = p && p->appid[0] ? p->appid : NULL,
                          .caller_name = p ? p->name : NULL,
                          .operation = op,
                          .target = target,
                          .status = req->status,
                          .outcome = req->status < 400 ? "Success" : "Failure"};
    emu_audit_add(ctx->audit, &ev);
}

static void h_audit(emu_req *req, void *ud)
{
    emu_admin_ctx *ctx = ud;
    int64_t since = 0, limit = 200;
    const char *s = emu_req_query(req, "since"), *l = emu_req_query(req, "limit");
    if ((s && !emu_parse_i64(s, 0, INT64_MAX, &since)) ||
        (l && !emu_parse_i64(l, 1, 1000, &limit))) {
        emu_send_error(req, 400, "BadParameter",
                       "since must be an event id (>= 0) and limit a number from 1 to 1000.");
        return;
    }
    emu_send_json(req, 200,
                  emu_audit_query(ctx->audit, since, (int)limit, emu_req_query(req, "match"),
                                  emu_req_query(req, "caller")));
}

static void h_faults_get(emu_req *req, void *ud)
{
    emu_admin_ctx *ctx = ud;
    emu_send_json(req, 200, emu_faults_list(ctx->faults));
}

static void h_faults_post(emu_req *req, void *ud)
{
    emu_admin_ctx *ctx = ud;
    char err[300];
    json_t *body = emu_req_json(req, false, err, sizeof err);
    if (!body) {
        emu_send_error(req, 400, "BadParameter", "%s", err);
        return;
    }
    json_t *rule = NULL;
    if (!emu_faults_add(ctx->faults, body, &rule, err, sizeof err))
        emu_send_error(req, 400, "BadParameter", "%s", err);
    else
        emu_send_json(req, 201, rule);
    json_decref(body);
}

static void h_faults_delete(emu_req *req, void *ud)
{
    emu_admin_ctx *ctx = ud;
    size_t n = emu_faults_clear(ctx->faults);
    emu_send_json(req, 200, json_pack("{s:I}", "removed", (json_int_t)n));
}

static void h_fault_delete(emu_req *req, void *ud)
{
    emu_admin_ctx *ctx = ud;
    const char *id = emu_req_param(req, 0);
    if (!emu_faults_remove(ctx->faults, id)) {
        char esc[64];
        emu_log_escape(id, 40, esc, sizeof esc);
        emu_send_error(req, 404, "NotFound", "No fault rule has id '%s'.", esc);
        return;
    }
    emu_send_empty(req, 204);
}

void emu_admin_register(emu_router *r, emu_admin_ctx *ctx)
{
    if (ctx->faults) {
        emu_router_add(r, "GET", "/_emulator/faults", 0, NULL, h_faults_get, ctx);
        emu_router_add(r, "POST", "/_emulator/faults", 0, emu_admin_require, h_faults_post, ctx);
        emu_router_add(r, "DELETE", "/_emulator/faults", 0, emu_admin_require, h_faults_delete,
                       ctx);
        emu_router_add(r, "DELETE", "/_emulator/faults/{id}", 0, emu_admin_require,
                       h_fault_delete, ctx);
    }
    emu_router_add(r, "GET", "/_emulator/audit", 0, NULL, h_audit, ctx);
    emu_router_add(r, "GET", "/_emulator/health", 0, NULL, h_health, ctx);
    emu_router_add(r, "GET", "/_emulator/clock", 0, NULL, h_clock_get, ctx);
    /* slow: hooks may purge keys or re-check environments through the HSM */
    emu_router_add(r, "POST", "/_emulator/clock", EMU_ROUTE_SLOW, emu_admin_require,
                   h_clock_post, ctx);
}
