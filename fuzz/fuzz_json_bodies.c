/*
 * fuzz_json_bodies: every family of request bodies through the real route handlers of
 * `cmkemu serve`, in-process (demo world loaded, permissive authentication, the caller is the
 * world's default principal kv-admin-app). The first byte picks the family (table below: Key
 * Vault create/import/update/wrap/unwrap/encrypt/decrypt/sign/verify/restore/rotation
 * policy/release/rng, ARM resource group/vault/access policies/role assignment/enterprise
 * policy/deployment/validate/name check, Power Platform environment/link/unlink/records/
 * components/component records, the token endpoints' form bodies, the admin clock and token
 * mint); the rest is the body.
 *
 * State: handlers create keys, vaults, policies, rows; the whole emulator (data directory,
 * token, store, world) is recreated every CMKEMU_FUZZ_RESET inputs (default 1000) so state
 * stays bounded.
 * Invariants checked: one response per request, status 100..599, a JSON error body on 4xx/5xx
 * (the token endpoints answer OAuth errors, JSON too).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_app.h"
#include "util.h"

#define FZ_MAX_INPUT (256u << 10)

#define SUBP "/subscriptions/" FZ_SUB
#define RGP SUBP "/resourceGroups/cmk-rg/providers"
#define BAP "/providers/Microsoft.BusinessAppPlatform/environments/"
#define ENV1 "a1b2c3d4-0000-4000-8000-000000000101"
#define ENV3 "a1b2c3d4-0000-4000-8000-000000000103"
#define FORM "application/x-www-form-urlencoded"

typedef struct {
    const char *method, *uri, *host, *content_type;
} fz_family;

/* "$CID" in a uri: a component id of the world's Contoso Operations (found at setup). */
static const fz_family FAMILIES[] = {
    {"POST", "/keys/fz-key/create?api-version=7.5", NULL, NULL},
    {"PUT", "/keys/fz-imp?api-version=7.5", NULL, NULL},
    {"PATCH", "/keys/demo-key?api-version=7.5", NULL, NULL},
    {"POST", "/keys/demo-key/wrapkey?api-version=7.5", NULL, NULL},
    {"POST", "/keys/demo-key/unwrapkey?api-version=7.5", NULL, NULL},
    {"POST", "/keys/demo-key/encrypt?api-version=7.5", NULL, NULL},
    {"POST", "/keys/demo-key/decrypt?api-version=7.5", NULL, NULL},
    {"POST", "/keys/demo-key/sign?api-version=7.5", NULL, NULL},
    {"POST", "/keys/demo-key/verify?api-version=7.5", NULL, NULL},
    {"POST", "/keys/restore?api-version=7.5", NULL, NULL},
    {"PUT", "/keys/demo-key/rotationpolicy?api-version=7.5", NULL, NULL},
    {"POST", "/keys/demo-key/release?api-version=7.5", NULL, NULL},
    {"POST", "/rng?api-version=7.5", NULL, NULL},
    {"PUT", SUBP "/resourcegroups/fz-rg?api-version=2021-04-01", NULL, NULL},
    {"PUT", RGP "/Microsoft.KeyVault/vaults/fzvault?api-version=2023-07-01", NULL, NULL},
    {"PATCH", RGP "/Microsoft.KeyVault/vaults/contoso-cmk?api-version=2023-07-01", NULL, NULL},
    {"PUT", RGP "/Microsoft.KeyVault/vaults/contoso-cmk/accessPolicies/add?api-version=2023-07-01",
     NULL, NULL},
    {"PUT",
     RGP "/Microsoft.KeyVault/vaults/contoso-cmk/accessPolicies/replace?api-version=2023-07-01",
     NULL, NULL},
    {"PUT",
     RGP "/Microsoft.KeyVault/vaults/contoso-cmk/accessPolicies/remove?api-version=2023-07-01",
     NULL, NULL},
    {"POST", SUBP "/providers/Microsoft.KeyVault/checkNameAvailability?api-version=2023-07-01",
     NULL, NULL},
    {"PUT",
     RGP "/Microsoft.KeyVault/vaults/contoso-cmk/providers/Microsoft.Authorization/"
         "roleAssignments/3f2b6c1e-0000-4000-8000-0000000000aa?api-version=2022-04-01",
     NULL, NULL},
    {"PUT", RGP "/Microsoft.PowerPlatform/enterprisePolicies/fzpol?api-version=2020-10-30", NULL,
     NULL},
    {"PATCH", RGP "/Microsoft.PowerPlatform/enterprisePolicies/fzpol?api-version=2020-10-30", NULL,
     NULL},
    {"PUT", RGP "/Microsoft.Resources/deployments/fzdep?api-version=2021-04-01", NULL, NULL},
    {"POST", RGP "/Microsoft.Resources/deployments/fzdep/validate?api-version=2021-04-01", NULL,
     NULL},
    {"POST", BAP "?api-version=2023-06-01", NULL, NULL},
    {"POST", BAP ENV1 "/enterprisePolicies/Encryption/link?api-version=2019-10-01", NULL, NULL},
    {"POST", BAP ENV1 "/enterprisePolicies/Encryption/unlink?api-version=2019-10-01", NULL, NULL},
    {"POST", "/api/data/v9.2/accounts", ENV1 ".crm.localhost:8443", NULL},
    {"PATCH", "/api/data/v9.2/accounts(00000000-0000-4000-8000-000000000001)",
     ENV1 ".crm.localhost:8443", NULL},
    {"POST", BAP ENV3 "/components?api-version=2021-04-01", NULL, NULL},
    {"PUT", BAP ENV3 "/components/$CID/records/fz-row?api-version=2021-04-01", NULL, NULL},
    {"POST", "/" FZ_TENANT "/oauth2/v2.0/token", NULL, FORM},
    {"POST", "/" FZ_TENANT "/oauth2/token", NULL, FORM},
    {"POST", "/_emulator/clock", NULL, NULL},
    {"POST", "/_emulator/tokens", NULL, NULL},
};
#define NFAMILIES (sizeof FAMILIES / sizeof FAMILIES[0])

static fz_app *app;
static long runs, reset_every;
static char cid[128];

static emu_req *call(const char *method, const char *uri, const char *host, const char *ctype,
                     const uint8_t *body, size_t len)
{
    emu_req *req = emu_req_new(method, uri);
    req->max_json_depth = 32;
    emu_req_add_header(req, "Host", host ? host : "localhost:8443");
    emu_req_add_header(req, "Authorization", "Bearer fuzz");
    emu_req_add_header(req, "Content-Type", ctype ? ctype : "application/json");
    emu_req_set_body(req, (const char *)body, len);
    fz_dispatch(fz_app_router(app), req);
    return req;
}

static void setup(void)
{
    fz_app_free(app);
    app = fz_app_new(FZ_APP_WORLD | FZ_APP_ROUTES);
    /* a component of Contoso Operations, for the component-records family */
    emu_req *req = call("GET", BAP ENV3 "/components?api-version=2021-04-01", NULL, NULL,
                        (const uint8_t *)"", 0);
    json_t *j = req->resp_len ? json_loadb(req->resp_body, req->resp_len, 0, NULL) : NULL;
    json_t *first = json_array_get(json_object_get(j, "value"), 0);
    const char *id = json_string_value(json_object_get(first, "name"));
    if (!id)
        id = json_string_value(json_object_get(first, "id"));
    snprintf(cid, sizeof cid, "%s", id ? id : "none");
    json_decref(j);
    emu_req_free(req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!reset_every) {
        fz_quiet_log();
        reset_every = fz_env_long("CMKEMU_FUZZ_RESET", 1, 1000000, 1000);
    }
    if (size < 1 || size > FZ_MAX_INPUT)
        return 0;
    if (!app || ++runs % reset_every == 0)
        setup();
    const fz_family *f = &FAMILIES[data[0] % NFAMILIES];
    char uri[512];
    const char *at = strstr(f->uri, "$CID");
    if (at)
        snprintf(uri, sizeof uri, "%.*s%s%s", (int)(at - f->uri), f->uri, cid, at + 4);
    else
        snprintf(uri, sizeof uri, "%s", f->uri);
    emu_req *req = call(f->method, uri, f->host, f->content_type, data + 1, size - 1);
    if (!req->responded || req->status < 100 || req->status > 599)
        abort();
    if (req->status >= 400) {
        json_t *j = req->resp_len ? json_loadb(req->resp_body, req->resp_len, 0, NULL) : NULL;
        if (!json_is_object(j))
            abort(); /* an error without a JSON body */
        json_decref(j);
    }
    emu_req_free(req);
    return 0;
}
