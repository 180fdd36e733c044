/* ui: see ui.h. */
#include "ui.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "ui_assets.h" /* generated: UI_ASSETS[], UI_NASSETS (emulator/ui/assets.cmake) */

#define RELAY_PREFIX "/_emulator/ui/relay/"
#define MAX_RELAY_HOST 200

static const ui_asset *asset_find(const char *name)
{
    for (size_t i = 0; i < UI_NASSETS; i++)
        if (!strcmp(UI_ASSETS[i].name, name))
            return &UI_ASSETS[i];
    return NULL;
}

static void send_asset(emu_req *req, const char *name)
{
    const ui_asset *a = asset_find(name);
    if (!a) {
        emu_send_error(req, 404, "NotFound", "The dashboard has no file named %.64s.", name);
        return;
    }
    emu_send_text(req, 200, a->type, (const char *)a->data, a->len);
}

static void h_index(emu_req *req, void *ud)
{
    send_asset(req, "index.html");
}

static void h_file(emu_req *req, void *ud)
{
    send_asset(req, emu_req_param(req, 0));
}

/* The tenant, the auth mode and the principal directory. The admin is the first emulator admin
 * that is a service principal (it can use the client-credentials grant), else the first admin. */
static void h_config(emu_req *req, void *ud)
{
    emu_ui_ctx *ctx = ud;
    auth_principal *ps = NULL;
    size_t n = auth_principal_list(ctx->auth, &ps);
    json_t *dir = json_array(), *admin = json_null();
    const auth_principal *best = NULL;
    for (size_t i = 0; i < n; i++) {
        const auth_principal *p = &ps[i];
        json_array_append_new(dir, json_pack("{s:s,s:s,s:s,s:s,s:b}", "objectId", p->oid,
                                             "clientId", p->appid, "name", p->name, "kind",
                                             auth_principal_kind_str(p->kind), "emulatorAdmin",
                                             p->emulator_admin));
        if (p->emulator_admin && (!best || (best->kind != AUTH_KIND_SERVICE_PRINCIPAL &&
                                            p->kind == AUTH_KIND_SERVICE_PRINCIPAL)))
            best = p;
    }
    if (best) {
        json_decref(admin);
        admin = json_pack("{s:s,s:s,s:s,s:s}", "objectId", best->oid, "clientId", best->appid,
                          "name", best->name, "kind", auth_principal_kind_str(best->kind));
    }
    free(ps);
    emu_send_json(req, 200,
                  json_pack("{s:s,s:s,s:o,s:o}", "tenant", auth_default_tenant(ctx->auth),
                            "authMode",
                            auth_get_mode(ctx->auth) == AUTH_STRICT ? "strict" : "permissive",
                            "admin", admin, "principals", dir));
}

/* Hosts the relay carries: the ones a page on https://localhost cannot send to itself. */
static bool relay_host_ok(const char *h)
{
    size_t n = strlen(h);
    if (!n || n > MAX_RELAY_HOST)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.'))
            return false;
    }
    static const char *const SUFFIX[] = {".vault.localhost", ".crm.localhost"};
    for (size_t i = 0; i < sizeof SUFFIX / sizeof SUFFIX[0]; i++) {
        size_t sl = strlen(SUFFIX[i]);
        if (n > sl && !strcasecmp(h + n - sl, SUFFIX[i]))
            return true;
    }
    return !strcasecmp(h, "localhost") || !strcmp(h, "127.0.0.1");
}

static void h_relay(emu_req *req, void *ud)
{
    emu_ui_ctx *ctx = ud;
    const char *host = emu_req_param(req, 0);
    if (!relay_host_ok(host)) {
        char esc[120];
        emu_log_escape(host, 80, esc, sizeof esc);
        emu_send_error(req, 400, "BadRelayHost",
                       "The dashboard relay carries requests to localhost, NAME.vault.localhost "
                       "and ID.crm.localhost only, not to '%s'.",
                       esc);
        return;
    }
    /* The inner request target: the raw text after the host segment, query included, so
     * nothing is decoded twice. */
    size_t pl = strlen(RELAY_PREFIX), hl = strlen(host);
    if (strncasecmp(req->uri, RELAY_PREFIX, pl) || strncasecmp(req->uri + pl, host, hl)) {
        emu_send_error(req, 400, "BadParameter",
                       "Relay requests look like %s{host}/{path}, the host not percent-encoded.",
                       RELAY_PREFIX);
        return;
    }
    const char *rest = req->uri + pl + hl;
    size_t tl = strlen(rest) + 2;
    char *target = emu_arena_alloc(req->arena, tl);
    snprintf(target, tl, "%s%s", *rest == '/' ? "" : "/", *rest == '/' || *rest == '?' ? rest : "");
    /* the port the client used, so base URLs and key ids name the real listener */
    const char *colon = strrchr(req->host, ':');
    const char *bracket = strrchr(req->host, ']');
    const char *port = colon && (!bracket || colon > bracket) ? colon : "";
    char hosthdr[MAX_RELAY_HOST + 16];
    snprintf(hosthdr, sizeof hosthdr, "%s%s", host, port);

    emu_req *in = emu_req_new(req->method, target);
    in->max_json_depth = req->max_json_depth;
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, "host"))
            emu_req_add_header(in, req->headers[i].name, req->headers[i].value);
    emu_req_add_header(in, "Host", hosthdr);
    if (req->body_len)
        emu_req_set_body(in, req->body, req->body_len);
    emu_router_dispatch(ctx->router, in);

    for (emu_resp_header *h = in->resp_headers; h; h = h->next)
        emu_resp_header_add(req, h->name, h->value);
    if (in->resp_body)
        emu_send_text(req, in->status, in->resp_type ? in->resp_type : "application/json",
                      in->resp_body, in->resp_len);
    else
        emu_send_empty(req, in->status);
    bool reading = !strcasecmp(in->method, "GET") || !strcasecmp(in->method, "HEAD");
    if (!reading && ctx->on_relayed)
        ctx->on_relayed(in, ctx->on_relayed_ud);
    emu_req_free(in);
}

void emu_ui_register(emu_router *r, emu_ui_ctx *ctx)
{
    emu_router_add(r, "GET", "/_emulator/ui", 0, NULL, h_index, ctx);
    emu_router_add(r, "GET", "/_emulator/ui/api/config", 0, NULL, h_config, ctx);
    /* the target may sign, generate keys or re-check environments: worker pool */
    emu_router_add(r, "*", "/_emulator/ui/relay/{host}", EMU_ROUTE_SLOW, NULL, h_relay, ctx);
    emu_router_add(r, "*", "/_emulator/ui/relay/{host}/{*}", EMU_ROUTE_SLOW, NULL, h_relay, ctx);
    emu_router_add(r, "GET", "/_emulator/ui/{file}", 0, NULL, h_file, ctx);
}
