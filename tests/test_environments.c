/*
 * test_environments: Power Platform environments (BAP API) and their records (Dataverse Web
 * API shape) in-process through emu_router_dispatch, on a fresh SoftHSM token and store under
 * $CMK_TEST_TMP (else /tmp), removed at the end (CMK_TEST_KEEP=1 keeps it), with a real
 * permissive auth_t. Tests run in order; each makes its own environments.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "auth/auth.h"
#include "clock.h"
#include "fixture.h"
#include "hsm.h"
#include "powerplatform/bap_api.h"
#include "powerplatform/env_testing.h"
#include "powerplatform/environments.h"
#include "router.h"
#include "store.h"

#define TENANT "72f988bf-86f1-41af-91ab-2d7cd011db47"
#define BAP "/providers/Microsoft.BusinessAppPlatform"
#define AV "?api-version=2023-06-01"

typedef struct {
    cmk_fixture *fx;
} fixture;

typedef struct {
    int status;
    json_t *json;
    char location[512];
    char entity_id[512];
} resp;

static void resp_clear(resp *r)
{
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

/* One request through the router. host NULL = "localhost:8443"; auth false = no token. */
static resp call_full(fixture *f, const char *method, const char *host, const char *uri,
                      const char *body, bool auth, const char *prefer)
{
    resp r = {0};
    const char *const prefer_hdr[] = {"Prefer", prefer, NULL};
    emu_req *req = cmk_fixture_dispatch(
        f->fx, method, uri,
        &(cmk_call_opts){
            .host = host, .body = body, .no_token = !auth, .headers = prefer ? prefer_hdr : NULL});
    r.status = req->status;
    r.json = cmk_resp_json(req);
    const char *h = cmk_resp_header(req, "Location");
    snprintf(r.location, sizeof r.location, "%s", h ? h : "");
    h = cmk_resp_header(req, "OData-EntityId");
    snprintf(r.entity_id, sizeof r.entity_id, "%s", h ? h : "");
    emu_req_free(req);
    return r;
}

static resp call(fixture *f, const char *method, const char *uri, const char *body)
{
    return call_full(f, method, NULL, uri, body, true, NULL);
}

static const char *path_str(const json_t *j, const char *path)
{
    const json_t *cur = j;
    const char *p = path;
    while (cur && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        cur = json_object_getn(cur, p, n);
        p += n + (dot ? 1 : 0);
    }
    return json_string_value(cur);
}

static const char *err_code(const resp *r)
{
    return path_str(r->json, "error.code");
}

/* Creates an environment; its id into id (37). */
static void create_env(fixture *f, const char *name, const char *sku, char id[40])
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"location\":\"unitedstates\",\"properties\":{\"displayName\":\"%s\","
             "\"environmentSku\":\"%s\",\"governanceConfiguration\":{\"protectionLevel\":"
             "\"Standard\"}}}",
             name, sku);
    resp r = call(f, "POST", BAP "/environments" AV, body);
    if (r.status != 202)
        fail_msg("create %s -> %d %s", name, r.status, err_code(&r));
    snprintf(id, 40, "%s", path_str(r.json, "name"));
    resp_clear(&r);
}

/* "{id}.crm.localhost:8443" */
static void instance_host(const char *id, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s.crm.localhost:8443", id);
}

static resp rec(fixture *f, const char *env, const char *method, const char *uri, const char *body,
                const char *prefer)
{
    char host[96];
    instance_host(env, host, sizeof host);
    return call_full(f, method, host, uri, body, true, prefer);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_create_get_list_delete(void **state)
{
    fixture *f = *state;
    resp r = call(f, "POST", BAP "/environments" AV,
                  "{\"location\":\"unitedstates\",\"properties\":{\"displayName\":\"Contoso Dev\","
                  "\"environmentSku\":\"Sandbox\",\"governanceConfiguration\":"
                  "{\"protectionLevel\":\"Standard\"}}}");
    assert_int_equal(r.status, 202);
    char id[40];
    snprintf(id, sizeof id, "%s", path_str(r.json, "name"));
    assert_int_equal(strlen(id), 36);
    const char *op_prefix = "https://localhost:8443" BAP "/lifecycleOperations/";
    assert_memory_equal(r.location, op_prefix, strlen(op_prefix));

    /* the operation succeeded */
    char op_path[1024];
    snprintf(op_path, sizeof op_path, "%s", r.location + strlen("https://localhost:8443"));
    resp_clear(&r);
    r = call(f, "GET", op_path, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "state.id"), "Succeeded");
    assert_non_null(path_str(r.json, "id"));
    resp_clear(&r);

    /* GET shape, both path forms */
    const char *forms[] = {BAP "/environments/%s" AV, BAP "/scopes/admin/environments/%s" AV};
    for (int i = 0; i < 2; i++) {
        char uri[256];
        snprintf(uri, sizeof uri, forms[i], id);
        r = call(f, "GET", uri, NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(path_str(r.json, "name"), id);
        assert_string_equal(path_str(r.json, "location"), "unitedstates");
        assert_string_equal(path_str(r.json, "properties.displayName"), "Contoso Dev");
        assert_string_equal(path_str(r.json, "properties.environmentSku"), "Sandbox");
        assert_string_equal(path_str(r.json, "properties.azureRegion"), "westus");
        assert_string_equal(path_str(r.json, "properties.states.management.id"), "Ready");
        assert_string_equal(path_str(r.json, "properties.states.runtime.id"), "Enabled");
        assert_string_equal(path_str(r.json, "properties.protectionStatus.keyManagedBy"),
                            "Microsoft");
        assert_string_equal(path_str(r.json, "properties.governanceConfiguration.protectionLevel"),
                            "Standard");
        char url[128];
        snprintf(url, sizeof url, "https://%s.crm.localhost:8443/", id);
        assert_string_equal(path_str(r.json, "properties.linkedEnvironmentMetadata.instanceUrl"),
                            url);
        assert_true(json_is_object(
            json_object_get(json_object_get(r.json, "properties"), "enterprisePolicies")));
        resp_clear(&r);
    }

    /* list, both forms */
    r = call(f, "GET", BAP "/scopes/admin/environments" AV, NULL);
    assert_int_equal(r.status, 200);
    json_t *v;
    size_t i;
    bool seen = false;
    json_array_foreach(json_object_get(r.json, "value"), i, v) seen |=
        !strcmp(path_str(v, "name"), id);
    assert_true(seen);
    resp_clear(&r);

    /* delete: 202, then 404 */
    char uri[256];
    snprintf(uri, sizeof uri, BAP "/scopes/admin/environments/%s" AV, id);
    r = call(f, "DELETE", uri, NULL);
    assert_int_equal(r.status, 202);
    assert_true(r.location[0]);
    resp_clear(&r);
    r = call(f, "GET", uri, NULL);
    assert_int_equal(r.status, 404);
    assert_string_equal(err_code(&r), "EnvironmentNotFound");
    resp_clear(&r);
    r = call(f, "DELETE", uri, NULL);
    assert_int_equal(r.status, 404);
    resp_clear(&r);

    /* no token -> 401; no api-version -> 400 */
    r = call_full(f, "GET", NULL, BAP "/environments" AV, NULL, false, NULL);
    assert_int_equal(r.status, 401);
    resp_clear(&r);
    r = call(f, "GET", BAP "/environments", NULL);
    assert_int_equal(r.status, 400);
    assert_string_equal(err_code(&r), "MissingApiVersionParameter");
    resp_clear(&r);
}

static void test_validation(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *body;
        const char *needle;
    } cases[] = {
        {"{\"location\":\"unitedstates\",\"properties\":{\"environmentSku\":\"Sandbox\"}}",
         "displayName"},
        {"{\"location\":\"unitedstates\",\"properties\":{\"displayName\":\"\","
         "\"environmentSku\":\"Sandbox\"}}",
         "displayName"},
        {"{\"location\":\"eastus\",\"properties\":{\"displayName\":\"A\","
         "\"environmentSku\":\"Sandbox\"}}",
         "not a Power Platform region"},
        {"{\"properties\":{\"displayName\":\"A\",\"environmentSku\":\"Sandbox\"}}", "location"},
        {"{\"location\":\"unitedstates\",\"properties\":{\"displayName\":\"A\","
         "\"environmentSku\":\"Premium\"}}",
         "environmentSku"},
        {"{\"location\":\"unitedstates\",\"properties\":{\"displayName\":\"A\"}}",
         "environmentSku"},
        {"{\"location\":\"unitedstates\",\"properties\":{\"displayName\":\"A\","
         "\"environmentSku\":\"Sandbox\",\"governanceConfiguration\":{\"protectionLevel\":"
         "\"Max\"}}}",
         "protectionLevel"},
        {"not json", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        resp r = call(f, "POST", BAP "/environments" AV, cases[i].body);
        if (r.status != 400)
            fail_msg("case %zu -> %d", i, r.status);
        const char *msg = path_str(r.json, "error.message");
        assert_non_null(msg);
        if (cases[i].needle && !strstr(msg, cases[i].needle))
            fail_msg("case %zu: message '%s' lacks '%s'", i, msg, cases[i].needle);
        resp_clear(&r);
    }
    /* every SKU is accepted, case-insensitively */
    const char *skus[] = {"Production", "sandbox", "TRIAL", "Teams", "Developer"};
    for (size_t i = 0; i < 5; i++) {
        char id[40];
        create_env(f, "Sku test", skus[i], id);
    }
}

static void test_records_crud(void **state)
{
    fixture *f = *state;
    char env[40], uri[256];
    create_env(f, "Records", "Production", env);

    /* create: 204 + OData-EntityId */
    resp r = rec(f, env, "POST", "/api/data/v9.2/accounts",
                 "{\"name\":\"Fourth Coffee\",\"revenue\":5}", NULL);
    assert_int_equal(r.status, 204);
    const char *open = strrchr(r.entity_id, '(');
    assert_non_null(open);
    char id[40];
    snprintf(id, sizeof id, "%.36s", open + 1);
    char prefix[160];
    snprintf(prefix, sizeof prefix, "https://%s.crm.localhost:8443/api/data/v9.2/accounts(", env);
    assert_memory_equal(r.entity_id, prefix, strlen(prefix));
    resp_clear(&r);

    /* read */
    snprintf(uri, sizeof uri, "/api/data/v9.2/accounts(%s)", id);
    r = rec(f, env, "GET", uri, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "name"), "Fourth Coffee");
    assert_string_equal(path_str(r.json, "accountid"), id);
    /* the stored row is sent as it is, with the context spliced in: every field once */
    {
        char ctx[256];
        snprintf(ctx, sizeof ctx,
                 "https://%s.crm.localhost:8443/api/data/v9.2/$metadata#accounts/$entity", env);
        assert_string_equal(json_string_value(json_object_get(r.json, "@odata.context")), ctx);
        assert_int_equal(json_integer_value(json_object_get(r.json, "revenue")), 5);
        assert_non_null(path_str(r.json, "createdon"));
        assert_non_null(path_str(r.json, "modifiedon"));
        assert_int_equal(json_object_size(r.json), 6);
    }
    resp_clear(&r);

    /* GUIDs compare case-insensitively */
    {
        char upper[256];
        snprintf(upper, sizeof upper, "%s", uri);
        for (char *q = strchr(upper, '('); q && *q; q++)
            if (*q >= 'a' && *q <= 'f')
                *q = (char)(*q - 'a' + 'A');
        r = rec(f, env, "GET", upper, NULL, NULL);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
    }

    /* create with a client id and return=representation: 201 + row */
    const char *cid = "0a0b0c0d-1111-4222-8333-444455556666";
    r = rec(f, env, "POST", "/api/data/v9.2/accounts",
            "{\"accountid\":\"0a0b0c0d-1111-4222-8333-444455556666\",\"name\":\"Litware\"}",
            "return=representation");
    assert_int_equal(r.status, 201);
    assert_string_equal(path_str(r.json, "accountid"), cid);
    assert_string_equal(path_str(r.json, "name"), "Litware");
    resp_clear(&r);
    /* the same id again: duplicate */
    r = rec(f, env, "POST", "/api/data/v9.2/accounts",
            "{\"accountid\":\"0a0b0c0d-1111-4222-8333-444455556666\"}", NULL);
    assert_int_equal(r.status, 412);
    resp_clear(&r);
    r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"accountid\":\"nope\"}", NULL);
    assert_int_equal(r.status, 400);
    resp_clear(&r);

    /* update (merge) */
    r = rec(f, env, "PATCH", uri, "{\"revenue\":7}", "return=representation");
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "name"), "Fourth Coffee");
    assert_int_equal(json_integer_value(json_object_get(r.json, "revenue")), 7);
    resp_clear(&r);
    /* PATCH with If-Match: * on a missing row -> 404; without it -> upsert */
    char missing[128];
    snprintf(missing, sizeof missing, "/api/data/v9.2/accounts(%s)",
             "99999999-1111-4222-8333-444455556666");
    {
        char host[96];
        instance_host(env, host, sizeof host);
        emu_req *req = emu_req_new("PATCH", missing);
        req->host = host;
        emu_req_add_header(req, "Authorization", "Bearer test");
        emu_req_add_header(req, "If-Match", "*");
        emu_req_set_body(req, "{\"name\":\"x\"}", 12);
        emu_router_dispatch(f->fx->router, req);
        assert_int_equal(req->status, 404);
        emu_req_free(req);
    }
    r = rec(f, env, "PATCH", missing, "{\"name\":\"Upserted\"}", NULL);
    assert_int_equal(r.status, 204);
    resp_clear(&r);
    r = rec(f, env, "GET", missing, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "name"), "Upserted");
    resp_clear(&r);

    /* delete */
    r = rec(f, env, "DELETE", uri, NULL, NULL);
    assert_int_equal(r.status, 204);
    resp_clear(&r);
    r = rec(f, env, "GET", uri, NULL, NULL);
    assert_int_equal(r.status, 404);
    assert_string_equal(err_code(&r), "0x80040217");
    resp_clear(&r);
    r = rec(f, env, "DELETE", uri, NULL, NULL);
    assert_int_equal(r.status, 404);
    resp_clear(&r);

    /* unknown environment host, plain host, no token */
    r = rec(f, "12345678-1111-4222-8333-444455556666", "GET", "/api/data/v9.2/accounts", NULL,
            NULL);
    assert_int_equal(r.status, 404);
    assert_string_equal(err_code(&r), "EnvironmentNotFound");
    resp_clear(&r);
    r = call(f, "GET", "/api/data/v9.2/accounts", NULL);
    assert_int_equal(r.status, 404);
    resp_clear(&r);
    char host[96];
    instance_host(env, host, sizeof host);
    r = call_full(f, "GET", host, "/api/data/v9.2/accounts", NULL, false, NULL);
    assert_int_equal(r.status, 401);
    resp_clear(&r);
    /* a bad entity set name */
    r = rec(f, env, "GET", "/api/data/v9.2/Acc-ounts", NULL, NULL);
    assert_int_equal(r.status, 404);
    resp_clear(&r);
}

static void test_paging(void **state)
{
    fixture *f = *state;
    char env[40];
    create_env(f, "Paging", "Sandbox", env);
    for (int i = 0; i < 7; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"name\":\"c%d\"}", i);
        resp r = rec(f, env, "POST", "/api/data/v9.2/contacts", body, NULL);
        assert_int_equal(r.status, 204);
        resp_clear(&r);
    }
    /* another table is separate */
    resp r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"name\":\"a\"}", NULL);
    resp_clear(&r);

    char uri[512] = "/api/data/v9.2/contacts?$top=3";
    int seen = 0, pages = 0;
    while (uri[0]) {
        r = rec(f, env, "GET", uri, NULL, NULL);
        assert_int_equal(r.status, 200);
        json_t *v = json_object_get(r.json, "value");
        for (size_t i = 0; i < json_array_size(v); i++) {
            char want[16];
            snprintf(want, sizeof want, "c%d", seen++);
            assert_string_equal(path_str(json_array_get(v, i), "name"), want);
            assert_non_null(path_str(json_array_get(v, i), "contactid"));
        }
        pages++;
        /* not path_str: the key has a dot */
        const char *next = json_string_value(json_object_get(r.json, "@odata.nextLink"));
        uri[0] = '\0';
        if (next) {
            const char *p = strstr(next, "/api/data/v9.2/");
            assert_non_null(p);
            snprintf(uri, sizeof uri, "%s", p);
        }
        resp_clear(&r);
    }
    assert_int_equal(seen, 7);
    assert_int_equal(pages, 3);

    r = rec(f, env, "GET", "/api/data/v9.2/contacts?$top=0", NULL, NULL);
    assert_int_equal(r.status, 400);
    resp_clear(&r);
    r = rec(f, env, "GET", "/api/data/v9.2/contacts", NULL, NULL);
    assert_int_equal(json_array_size(json_object_get(r.json, "value")), 7);
    assert_null(json_object_get(r.json, "@odata.nextLink"));
    resp_clear(&r);
}

static void test_disable_enable(void **state)
{
    fixture *f = *state;
    char env[40], uri[256], id[40];
    create_env(f, "Toggle", "Production", env);
    resp r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"name\":\"kept\"}",
                 "return=representation");
    snprintf(id, sizeof id, "%s", path_str(r.json, "accountid"));
    resp_clear(&r);

    snprintf(uri, sizeof uri, BAP "/scopes/admin/environments/%s/disable?api-version=2021-04-01",
             env);
    r = call(f, "POST", uri, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "properties.states.runtime.id"), "Disabled");
    assert_non_null(path_str(r.json, "properties.states.runtime.runtimeReasonCode"));
    resp_clear(&r);

    /* every record operation -> 423 EnvironmentDisabled naming the way out */
    char row[128];
    snprintf(row, sizeof row, "/api/data/v9.2/accounts(%s)", id);
    const char *methods[][3] = {{"GET", row, NULL},
                                {"GET", "/api/data/v9.2/accounts", NULL},
                                {"POST", "/api/data/v9.2/accounts", "{\"name\":\"x\"}"},
                                {"PATCH", row, "{\"name\":\"x\"}"},
                                {"DELETE", row, NULL}};
    for (size_t i = 0; i < 5; i++) {
        r = rec(f, env, methods[i][0], methods[i][1], methods[i][2], NULL);
        if (r.status != 423)
            fail_msg("%s %s -> %d", methods[i][0], methods[i][1], r.status);
        assert_string_equal(err_code(&r), "EnvironmentDisabled");
        assert_non_null(strstr(path_str(r.json, "error.message"), "/enable"));
        resp_clear(&r);
    }
    /* the environment itself stays readable */
    snprintf(uri, sizeof uri, BAP "/environments/%s" AV, env);
    r = call(f, "GET", uri, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "properties.states.runtime.id"), "Disabled");
    resp_clear(&r);

    /* enable (without /scopes/admin) -> readable again */
    snprintf(uri, sizeof uri, BAP "/environments/%s/enable?api-version=2021-04-01", env);
    r = call(f, "POST", uri, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "properties.states.runtime.id"), "Enabled");
    resp_clear(&r);
    r = rec(f, env, "GET", row, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "name"), "kept");
    resp_clear(&r);

    /* domain: the state survives a reopen; a disabled environment comes back disabled */
    pp_env_err e = {{0}};
    assert_int_equal(pp_env_set_enabled(f->fx->envs, env, false, "Test", &e), PP_ENV_OK);
    char err[256] = "";
    pp_envs_t *again = pp_envs_open(f->fx->store, f->fx->hsm, err, sizeof err);
    assert_non_null(again);
    pp_environment en;
    assert_int_equal(pp_env_get(again, env, &en), PP_ENV_OK);
    assert_false(en.enabled);
    assert_string_equal(en.reason, "Test");
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(pp_record_get_text(again, env, "accounts", id, &text, &len, &e),
                     PP_ENV_ERR_DISABLED);
    assert_null(text);
    assert_int_equal(pp_env_set_enabled(again, env, true, NULL, &e), PP_ENV_OK);
    assert_int_equal(pp_record_get_text(again, env, "accounts", id, &text, &len, &e), PP_ENV_OK);
    json_t *out = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    free(text);
    assert_non_null(out);
    assert_string_equal(path_str(out, "name"), "kept");
    json_decref(out);
    pp_envs_close(again);
    assert_int_equal(pp_env_set_enabled(f->fx->envs, env, true, NULL, &e), PP_ENV_OK);
    /* unknown environment */
    assert_int_equal(pp_env_set_enabled(f->fx->envs, "nope", true, NULL, &e), PP_ENV_ERR_NOT_FOUND);
}

static bool file_contains(const char *path, const char *needle)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return false;
    size_t cap = 1 << 16, len = 0, nl = strlen(needle);
    char *buf = malloc(cap);
    bool found = false;
    size_t n;
    /* a sliding window so a marker across a read boundary is still seen */
    while ((n = fread(buf + len, 1, cap - len, fp)) > 0) {
        len += n;
        if (memmem(buf, len, needle, nl)) {
            found = true;
            break;
        }
        if (len >= nl) {
            memmove(buf, buf + len - (nl - 1), nl - 1);
            len = nl - 1;
        }
    }
    fclose(fp);
    free(buf);
    return found;
}

static const char *scan_marker;
static int scan_hits;

static int scan_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (flag == FTW_F && file_contains(path, scan_marker)) {
        fprintf(stderr, "marker found in %s\n", path);
        scan_hits++;
    }
    return 0;
}

static void test_no_plaintext_on_disk(void **state)
{
    fixture *f = *state;
    char env[40];
    create_env(f, "Disk scan", "Production", env);
    char marker[64], body[160];
    snprintf(marker, sizeof marker, "MARKER-%ld-%d-zq7XyZ", (long)getpid(), rand());
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"description\":\"%s\"}", marker, marker);
    resp r = rec(f, env, "POST", "/api/data/v9.2/accounts", body, NULL);
    assert_int_equal(r.status, 204);
    resp_clear(&r);
    r = rec(f, env, "PATCH", "/api/data/v9.2/accounts(aaaaaaaa-1111-4222-8333-444455556666)", body,
            NULL);
    assert_int_equal(r.status, 204);
    resp_clear(&r);
    /* checkpoint the WAL so both the main file and the log have seen the row */
    sqlite3 *db = emu_store_lock(f->fx->store);
    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_FULL, NULL, NULL);
    emu_store_unlock(f->fx->store);
    scan_marker = marker;
    scan_hits = 0;
    assert_int_equal(nftw(f->fx->root, scan_entry, 16, FTW_PHYS), 0);
    assert_int_equal(scan_hits, 0);
    /* and the marker does come back through the API */
    r = rec(f, env, "GET", "/api/data/v9.2/accounts(aaaaaaaa-1111-4222-8333-444455556666)", NULL,
            NULL);
    assert_string_equal(path_str(r.json, "name"), marker);
    resp_clear(&r);
}

static void test_tampered_row_is_an_error(void **state)
{
    fixture *f = *state;
    char env[40];
    create_env(f, "Tamper", "Production", env);
    resp r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"name\":\"secret\"}",
                 "return=representation");
    char id[40];
    snprintf(id, sizeof id, "%s", path_str(r.json, "accountid"));
    resp_clear(&r);
    /* flip one byte of the stored blob */
    sqlite3 *db = emu_store_lock(f->fx->store);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "UPDATE pp_records SET blob = "
                                        "substr(blob,1,20) || x'ff' || substr(blob,22) "
                                        "WHERE env=? AND id=?",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, env, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    emu_store_unlock(f->fx->store);
    char uri[128];
    snprintf(uri, sizeof uri, "/api/data/v9.2/accounts(%s)", id);
    r = rec(f, env, "GET", uri, NULL, NULL);
    assert_int_equal(r.status, 500);
    char *dump = json_dumps(r.json, 0);
    assert_null(strstr(dump ? dump : "", "secret"));
    free(dump);
    assert_null(path_str(r.json, "name"));
    resp_clear(&r);
    /* a page holding it is refused too, naming the row */
    r = rec(f, env, "GET", "/api/data/v9.2/accounts", NULL, NULL);
    assert_int_equal(r.status, 500);
    dump = json_dumps(r.json, 0);
    assert_null(strstr(dump ? dump : "", "secret"));
    free(dump);
    assert_non_null(strstr(path_str(r.json, "error.message"), id));
    assert_null(json_object_get(r.json, "value"));
    resp_clear(&r);
}

/* Concurrent PATCHes of one record, each adding its own field: the JSON and AES-GCM work runs
 * outside the environments' lock, so the per-record lock is what keeps every field. */
#define PATCH_THREADS 4
#define PATCHES_EACH 40

typedef struct {
    fixture *f;
    const char *env, *uri;
    int thread, failures;
} patch_arg;

static void *patch_many(void *arg)
{
    patch_arg *a = arg;
    for (int i = 0; i < PATCHES_EACH; i++) {
        char body[96];
        snprintf(body, sizeof body, "{\"t%d_%d\":%d}", a->thread, i, i);
        resp r = rec(a->f, a->env, "PATCH", a->uri, body, NULL);
        if (r.status != 204)
            a->failures++;
        resp_clear(&r);
    }
    return NULL;
}

static void test_concurrent_patches_keep_every_field(void **state)
{
    fixture *f = *state;
    char env[40], uri[128];
    create_env(f, "Concurrent", "Production", env);
    snprintf(uri, sizeof uri, "/api/data/v9.2/accounts(%s)",
             "6f1c2b9e-0000-4000-8000-0000000000c1");
    pthread_t th[PATCH_THREADS];
    patch_arg args[PATCH_THREADS];
    for (int t = 0; t < PATCH_THREADS; t++) {
        args[t] = (patch_arg){f, env, uri, t, 0};
        assert_int_equal(pthread_create(&th[t], NULL, patch_many, &args[t]), 0);
    }
    for (int t = 0; t < PATCH_THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(args[t].failures, 0);
    }
    resp r = rec(f, env, "GET", uri, NULL, NULL);
    assert_int_equal(r.status, 200);
    for (int t = 0; t < PATCH_THREADS; t++)
        for (int i = 0; i < PATCHES_EACH; i++) {
            char k[32];
            snprintf(k, sizeof k, "t%d_%d", t, i);
            const json_t *v = json_object_get(r.json, k);
            if (!v || json_integer_value(v) != i)
                fail_msg("field %s lost by a concurrent PATCH", k);
        }
    resp_clear(&r);
}

/* A PATCH of a flat body is merged as text (core/jflat.h); the same PATCHes through the tree
 * merge (pp_record_update with a parsed body) must give the same row: the same members in the
 * same order with equal values. Values stay as they were written on the text path. */
static void keys_and_values(const char *text, size_t len, json_t **obj, char *order, size_t cap)
{
    *obj = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL); /* never a key twice */
    assert_non_null(*obj);
    const char *k;
    json_t *v;
    order[0] = '\0';
    json_object_foreach(*obj, k, v)
    {
        strncat(order, k, cap - strlen(order) - 2);
        strncat(order, "|", cap - strlen(order) - 1);
    }
    json_object_del(*obj, "createdon");
    json_object_del(*obj, "modifiedon");
}

static void test_patch_text_merge_matches_tree_merge(void **state)
{
    fixture *f = *state;
    char env[40];
    create_env(f, "Merge", "Production", env);
    static const char *const id_text = "5e000000-0000-4000-8000-00000000a001";
    static const char *const id_tree = "5e000000-0000-4000-8000-00000000a002";
    static const char *const bodies[] = {
        "{\"name\":\"Fabrikam\",\"revenue\":5,\"active\":true}",
        " { \"revenue\" : 1e2 , \"note\" : null , \"caf\\u00e9\" : \"cr\\u00e8me \\ud83d\\ude00\" "
        "} ",
        "{\"\\u006eame\":\"renamed through an escaped key\",\"caf\xc3\xa9\":\"raw UTF-8 key\"}",
        "{\"accountid\":\"00000000-0000-4000-8000-000000000000\",\"createdon\":\"then\"}",
        "{}",
        "{\"z\":-0,\"y\":9223372036854775807,\"x\":\"\\\"quoted\\\" \\\\ \\/\"}",
    };
    const char *ids[2] = {id_text, id_tree};
    for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++) {
        char uri[128];
        /* text path: through the handler, which scans the flat body */
        snprintf(uri, sizeof uri, "/api/data/v9.2/accounts(%s)", id_text);
        resp r = rec(f, env, "PATCH", uri, bodies[b], b == 0 ? "return=representation" : NULL);
        assert_int_equal(r.status, b == 0 ? 201 : 204);
        if (b == 0)
            assert_string_equal(path_str(r.json, "name"), "Fabrikam");
        resp_clear(&r);
        /* tree path: the same body parsed */
        json_t *fields = json_loads(bodies[b], JSON_REJECT_DUPLICATES, NULL);
        assert_non_null(fields);
        bool created = false;
        pp_env_err e = {{0}};
        assert_int_equal(pp_record_update(f->fx->envs, env, "accounts", id_tree,
                                          &(pp_record_body){.json = fields}, false, &created, NULL,
                                          NULL, &e),
                         PP_ENV_OK);
        assert_int_equal(created, b == 0);
        json_decref(fields);
        /* the same members, in the same order, with equal values */
        json_t *rows[2];
        char order[2][512];
        char *text[2];
        size_t len[2];
        for (int i = 0; i < 2; i++) {
            assert_int_equal(
                pp_record_get_text(f->fx->envs, env, "accounts", ids[i], &text[i], &len[i], &e),
                PP_ENV_OK);
            keys_and_values(text[i], len[i], &rows[i], order[i], sizeof order[i]);
        }
        assert_string_equal(order[0], order[1]);
        json_object_set_new(rows[1], "accountid", json_string(id_text));
        assert_true(json_equal(rows[0], rows[1]));
        /* the createdon a body sets is kept; the id field is always the row's */
        if (b >= 3)
            assert_string_equal(path_str(rows[0], "accountid"), id_text);
        if (b == 1) /* as written on the text path, as jansson prints it on the tree path */
            assert_non_null(strstr(text[0], "\"revenue\":1e2"));
        for (int i = 0; i < 2; i++) {
            free(text[i]);
            json_decref(rows[i]);
        }
    }
    /* a nested body takes the tree path, and a flat PATCH of a row that is no longer flat
     * too; with representation, 200 for an existing row */
    char uri[128];
    snprintf(uri, sizeof uri, "/api/data/v9.2/accounts(%s)", id_text);
    resp r = rec(f, env, "PATCH", uri, "{\"address\":{\"city\":\"Oslo\"}}", NULL);
    assert_int_equal(r.status, 204);
    resp_clear(&r);
    r = rec(f, env, "PATCH", uri, "{\"name\":\"flat again\"}", "return=representation");
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "name"), "flat again");
    assert_string_equal(path_str(r.json, "address.city"), "Oslo");
    assert_string_equal(path_str(r.json, "x"), "\"quoted\" \\ /");
    assert_true(json_number_value(json_object_get(r.json, "revenue")) == 100.0);
    resp_clear(&r);
    /* bodies the scan leaves to jansson are judged by jansson: duplicates, bad UTF-8 */
    r = rec(f, env, "PATCH", uri, "{\"a\":1,\"a\":2}", NULL);
    assert_int_equal(r.status, 400);
    char *msg = json_dumps(r.json, 0);
    assert_non_null(strstr(msg, "duplicate"));
    free(msg);
    resp_clear(&r);
    r = rec(f, env, "PATCH", uri, "{\"a\":\"\xc0\xaf\"}", NULL);
    assert_int_equal(r.status, 400);
    resp_clear(&r);
    r = rec(f, env, "GET", uri, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_null(json_object_get(r.json, "a"));
    resp_clear(&r);
}

/* A body's "@ID@" replaced by id. */
static void body_with_id(const char *tmpl, const char *id, char *out, size_t cap)
{
    const char *at = strstr(tmpl, "@ID@");
    if (!at)
        snprintf(out, cap, "%s", tmpl);
    else
        snprintf(out, cap, "%.*s%s%s", (int)(at - tmpl), tmpl, id, at + 4);
}

static void test_post_text_create_matches_tree_create(void **state)
{
    fixture *f = *state;
    char env[40];
    create_env(f, "Create", "Production", env);
    static const struct {
        const char *body;
        int status;       /* of both paths */
        const char *keys; /* the stored row's keys, in order */
    } cases[] = {
        {"{\"name\":\"A\",\"revenue\":1e2,\"ok\":false}", 201,
         "name|revenue|ok|accountid|createdon|modifiedon|"},
        /* a given id is lower-cased and stays where the body put it */
        {"{\"accountid\":\"@ID@\",\"name\":\"given\"}", 201,
         "accountid|name|createdon|modifiedon|"},
        /* the id field's key escaped, and its value */
        {"{\"x\":1,\"account\\u0069d\":\"@ID@\"}", 201, "x|accountid|createdon|modifiedon|"},
        {"{\"accountid\":null,\"createdon\":\"then\",\"name\":\"null id\"}", 201,
         "accountid|createdon|name|modifiedon|"},
        {"{}", 201, "accountid|createdon|modifiedon|"},
        {"{\"accountid\":5}", 400, NULL},
        {"{\"accountid\":\"not-a-guid\",\"name\":\"n\"}", 400, NULL},
        {"{\"accountid\":\"\"}", 400, NULL},
    };
    static const char *const given[2][3] = {
        {"5E000000-0000-4000-8000-00000000B001", "5e000000-0000-4000-8000-00000000b00\\u0033",
         "5e000000-0000-4000-8000-00000000b005"},
        {"5E000000-0000-4000-8000-00000000B002", "5e000000-0000-4000-8000-00000000b004",
         "5e000000-0000-4000-8000-00000000b006"},
    };
    size_t ng[2] = {0, 0};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char body[2][256], ids[2][40] = {"", ""};
        for (int i = 0; i < 2; i++)
            body_with_id(cases[c].body, strstr(cases[c].body, "@ID@") ? given[i][ng[i]++] : "",
                         body[i], sizeof body[i]);
        /* text path: through the handler (representation asked) */
        resp r = rec(f, env, "POST", "/api/data/v9.2/accounts", body[0], "return=representation");
        assert_int_equal(r.status, cases[c].status);
        if (r.status == 201) {
            const char *open = strrchr(r.entity_id, '(');
            assert_non_null(open);
            snprintf(ids[0], sizeof ids[0], "%.36s", open + 1);
            assert_string_equal(path_str(r.json, "accountid"), ids[0]);
            const char *k;
            json_t *v;
            json_object_foreach(r.json, k, v)
            {
                assert_string_equal(k, "@odata.context"); /* spliced in first */
                break;
            }
        } else {
            assert_non_null(strstr(path_str(r.json, "error.message"), "accountid must be a GUID"));
        }
        resp_clear(&r);
        /* tree path: the same body parsed */
        json_t *fields = json_loads(body[1], JSON_REJECT_DUPLICATES, NULL);
        assert_non_null(fields);
        pp_env_err e = {{0}};
        char *text = NULL;
        size_t len = 0;
        pp_env_status st =
            pp_record_create(f->fx->envs, env, "accounts", &(pp_record_body){.json = fields},
                             ids[1], &text, &len, &e);
        json_decref(fields);
        assert_int_equal(st, cases[c].status == 201 ? PP_ENV_OK : PP_ENV_ERR_BAD_PARAM);
        if (st != PP_ENV_OK) {
            assert_null(text);
            continue;
        }
        json_t *stored = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
        free(text);
        assert_string_equal(path_str(stored, "accountid"), ids[1]);
        json_decref(stored);
        for (int i = 0; i < 2; i++) /* lower-cased, given or new */
            for (const char *ch = ids[i]; *ch; ch++)
                assert_true(!isupper((unsigned char)*ch));
        if (strstr(cases[c].body, "@ID@")) {
            assert_memory_equal(ids[0], "5e000000-0000-4000-8000-00000000b00", 35);
            assert_memory_equal(ids[1], "5e000000-0000-4000-8000-00000000b00", 35);
        }
        /* the same members, in the same order, with equal values but the id */
        json_t *rows[2];
        char order[2][512];
        for (int i = 0; i < 2; i++) {
            char *text = NULL;
            size_t len = 0;
            assert_int_equal(
                pp_record_get_text(f->fx->envs, env, "accounts", ids[i], &text, &len, &e),
                PP_ENV_OK);
            keys_and_values(text, len, &rows[i], order[i], sizeof order[i]);
            if (c == 0) /* a number as written on the text path */
                assert_true(i == 1 || strstr(text, "\"revenue\":1e2") != NULL);
            free(text);
            json_object_del(rows[i], "accountid");
        }
        assert_string_equal(order[0], cases[c].keys);
        assert_string_equal(order[1], cases[c].keys);
        assert_true(json_equal(rows[0], rows[1]));
        json_decref(rows[0]);
        json_decref(rows[1]);
    }
    /* an id that exists: 412 (Dataverse's answer to a duplicate key), the row unchanged */
    resp r =
        rec(f, env, "POST", "/api/data/v9.2/accounts",
            "{\"accountid\":\"5e000000-0000-4000-8000-00000000b001\",\"name\":\"again\"}", NULL);
    assert_int_equal(r.status, 412);
    resp_clear(&r);
    r = rec(f, env, "GET", "/api/data/v9.2/accounts(5e000000-0000-4000-8000-00000000b001)", NULL,
            NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "name"), "given");
    resp_clear(&r);
    /* a nested body takes the tree path; representation still answers the row */
    r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"address\":{\"city\":\"Oslo\"}}",
            "return=representation");
    assert_int_equal(r.status, 201);
    assert_string_equal(path_str(r.json, "address.city"), "Oslo");
    assert_int_equal(strlen(path_str(r.json, "accountid")), 36);
    resp_clear(&r);
    /* without representation: 204 and the row's URL */
    r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"name\":\"quiet\"}", NULL);
    assert_int_equal(r.status, 204);
    assert_null(r.json);
    assert_non_null(strstr(r.entity_id, "/api/data/v9.2/accounts("));
    resp_clear(&r);
}

/* The answer's "@odata.context" is the server's (path_str would split the key at its dot). */
static bool odata_context_is_ours(const json_t *j)
{
    const char *c = json_string_value(json_object_get(j, "@odata.context"));
    return c && !strncmp(c, "https://", 8);
}

/* What the flat path keeps as written must not change what is accepted or answered: the
 * size limit is on the normalised row, and "@odata.context" in a body is not stored (the
 * answer's own is spliced in, never twice). */
static void test_flat_writes_limit_and_annotations(void **state)
{
    fixture *f = *state;
    char env[40];
    create_env(f, "Flat edges", "Production", env);
    /* 50,000 escaped é: 300 KB as written, 100 KB stored */
    static const char head[] = "{\"name\":\"", esc[] = "\\u00e9", tail[] = "\"}";
    size_t n = 50000, cap = n * 6 + 64;
    char *body = malloc(cap);
    assert_non_null(body);
    size_t len = 0;
    memcpy(body, head, sizeof head - 1);
    len += sizeof head - 1;
    for (size_t i = 0; i < n; i++, len += sizeof esc - 1)
        memcpy(body + len, esc, sizeof esc - 1);
    assert_true(len + sizeof tail <= cap);
    memcpy(body + len, tail, sizeof tail); /* with its NUL */
    resp r = rec(f, env, "POST", "/api/data/v9.2/accounts", body, "return=representation");
    assert_int_equal(r.status, 201);
    assert_int_equal(strlen(path_str(r.json, "name")), 2 * n);
    char id[40];
    snprintf(id, sizeof id, "%s", path_str(r.json, "accountid"));
    resp_clear(&r);
    char uri[128];
    snprintf(uri, sizeof uri, "/api/data/v9.2/accounts(%s)", id);
    r = rec(f, env, "PATCH", uri, body, NULL);
    assert_int_equal(r.status, 204);
    resp_clear(&r);
    /* over the limit as stored: refused, nothing written */
    assert_true(270000 + sizeof tail <= cap);
    memset(body, 'a', 270000);
    memcpy(body, "{\"big\":\"", 8);
    memcpy(body + 270000, tail, sizeof tail);
    r = rec(f, env, "PATCH", uri, body, NULL);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(path_str(r.json, "error.message"), "larger than"));
    resp_clear(&r);
    free(body);
    r = rec(f, env, "GET", uri, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_null(json_object_get(r.json, "big"));
    resp_clear(&r);
    /* "@odata.context" in a body, flat and nested: one in the answer, the server's */
    static const char *const annotated[] = {
        "{\"@odata.context\":\"x\",\"name\":\"flat\"}",
        "{\"@odata.context\":\"x\",\"address\":{\"city\":\"Oslo\"}}",
    };
    for (int i = 0; i < 2; i++) {
        r = rec(f, env, "POST", "/api/data/v9.2/accounts", annotated[i], "return=representation");
        assert_int_equal(r.status, 201);
        assert_non_null(r.json); /* parsed strictly: never a key twice */
        assert_true(odata_context_is_ours(r.json));
        snprintf(uri, sizeof uri, "/api/data/v9.2/accounts(%s)", path_str(r.json, "accountid"));
        resp_clear(&r);
        r = rec(f, env, "PATCH", uri, "{\"@odata.context\":\"y\",\"n\":1}",
                "return=representation");
        assert_int_equal(r.status, 200);
        assert_non_null(r.json);
        assert_true(odata_context_is_ours(r.json));
        resp_clear(&r);
        r = rec(f, env, "GET", uri, NULL, NULL);
        assert_non_null(r.json);
        assert_true(odata_context_is_ours(r.json));
        resp_clear(&r);
    }
}

static int g_rekeys;

static int clear_store_hook(void **state)
{
    fixture *f = *state;
    pp_envs_testing_set_before_store(f->fx->envs, NULL, NULL);
    return 0;
}

static void rekey_before_store(pp_envs_t *p, const char *env, void *ud)
{
    (void)ud;
    g_rekeys++;
    assert_true(pp_envs_testing_replace_dek(p, env));
}

/* A write whose environment's data key changed between its start (where it copied the key and
 * sealed the row under it) and its store is refused with 409, and stores nothing: a row sealed
 * under a key the environment no longer has would never decrypt. */
static void test_write_refused_when_data_key_changes(void **state)
{
    fixture *f = *state;
    char env[40], uri[128], id[40];
    pp_env_err e = {{0}};
    create_env(f, "Re-keyed", "Production", env);
    resp r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"name\":\"before\"}",
                 "return=representation");
    assert_int_equal(r.status, 201);
    snprintf(id, sizeof id, "%s", path_str(r.json, "accountid"));
    resp_clear(&r);
    snprintf(uri, sizeof uri, "/api/data/v9.2/accounts(%s)", id);

    g_rekeys = 0;
    pp_envs_testing_set_before_store(f->fx->envs, rekey_before_store, NULL);
    r = rec(f, env, "PATCH", uri, "{\"name\":\"after\"}", NULL);
    assert_int_equal(r.status, 409);
    assert_string_equal(err_code(&r), "DataKeyChanged");
    assert_non_null(strstr(path_str(r.json, "error.message"), "data key"));
    resp_clear(&r);
    r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"name\":\"new\"}", NULL);
    assert_int_equal(r.status, 409);
    resp_clear(&r);
    assert_int_equal(g_rekeys, 2);
    pp_envs_testing_set_before_store(f->fx->envs, NULL, NULL);

    /* back to the environment's real key (disable drops it, enable unwraps it again): the
     * record is as it was, and the refused create left no row */
    assert_int_equal(pp_env_set_enabled(f->fx->envs, env, false, "Test", &e), PP_ENV_OK);
    assert_int_equal(pp_env_set_enabled(f->fx->envs, env, true, NULL, &e), PP_ENV_OK);
    r = rec(f, env, "GET", uri, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(path_str(r.json, "name"), "before");
    resp_clear(&r);
    r = rec(f, env, "GET", "/api/data/v9.2/accounts", NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "value")), 1);
    resp_clear(&r);
    /* and writes work again */
    r = rec(f, env, "PATCH", uri, "{\"name\":\"after\"}", NULL);
    assert_int_equal(r.status, 204);
    resp_clear(&r);
}

static void test_world(void **state)
{
    fixture *f = *state;
    json_t *w = json_loads("{\"environments\":[{\"id\":\"a1b2c3d4-0000-4000-8000-000000000999\","
                           "\"displayName\":\"W\",\"location\":\"europe\",\"environmentSku\":"
                           "\"Sandbox\",\"managed\":true,\"records\":{\"accounts\":[{\"name\":"
                           "\"one\"},{\"name\":\"two\"}]}}]}",
                           0, NULL);
    char err[256] = "";
    assert_true(pp_envs_world_apply(f->fx->envs, w, err, sizeof err));
    json_decref(w);
    pp_environment e;
    assert_int_equal(pp_env_get(f->fx->envs, "a1b2c3d4-0000-4000-8000-000000000999", &e),
                     PP_ENV_OK);
    assert_true(e.managed);
    assert_string_equal(e.azure_region, "westeurope");
    resp r = rec(f, "a1b2c3d4-0000-4000-8000-000000000999", "GET", "/api/data/v9.2/accounts", NULL,
                 NULL);
    assert_int_equal(json_array_size(json_object_get(r.json, "value")), 2);
    resp_clear(&r);
}

/* ---- batched record writes: reads of a batch that then fails ------------------------------ */

/* Between a PATCH's read and its write: the open batch fails to commit (another holder's
 * flush meets a disk error). */
static void fail_open_batch(pp_envs_t *p, const char *env, void *ud)
{
    (void)p;
    (void)env;
    emu_store *s = ud;
    char v[8];
    emu_store_testing_refuse_commits(s, 1);
    (void)emu_store_meta_get(s, "nothing", v, sizeof v); /* emu_store_lock: commits the batch */
}

/* Handlers run as the HTTP layer runs them (deferred acknowledgement, batched rows): a row
 * created in a batch that fails is never reported by a GET that read it (the GET fails with
 * the batch), and a PATCH that read it and writes after the failure cannot bring it back. */
static void test_batch_failure_leaves_no_trace(void **state)
{
    fixture *f = *state;
    emu_store *s = f->fx->store;
    char env[40], uri[128], id[40], host[96];
    create_env(f, "Batch", "Production", env);
    snprintf(host, sizeof host, "%s.crm.localhost:8443", env);

    emu_store_defer_begin(s);
    resp r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"name\":\"ghost\"}",
                 "return=representation");
    uint64_t post = emu_store_defer_end();
    assert_int_equal(r.status, 201);
    assert_true(post > 0);
    snprintf(id, sizeof id, "%s", path_str(r.json, "accountid"));
    resp_clear(&r);
    snprintf(uri, sizeof uri, "/api/data/v9.2/accounts(%s)", id);

    /* a GET that sees the uncommitted row waits for its batch */
    emu_store_defer_begin(s);
    r = rec(f, env, "GET", uri, NULL, NULL);
    uint64_t get = emu_store_defer_end();
    assert_int_equal(r.status, 200);
    assert_int_equal(get, post);
    resp_clear(&r);

    /* a PATCH that must find the row reads it; the batch fails before it writes */
    pp_envs_testing_set_before_store(f->fx->envs, fail_open_batch, s);
    emu_store_defer_begin(s);
    const char *const hdr[] = {"If-Match", "*", NULL};
    emu_req *req = cmk_fixture_dispatch(
        f->fx, "PATCH", uri, &(cmk_call_opts){.host = host, .body = "{\"n\":1}", .headers = hdr});
    uint64_t patch = emu_store_defer_end();
    emu_req_free(req);
    pp_envs_testing_set_before_store(f->fx->envs, NULL, NULL);

    assert_int_equal(cmk_test_durable(s, post), 0);
    assert_int_equal(cmk_test_durable(s, get), 0);
    assert_true(patch > 0);
    assert_int_equal(cmk_test_durable(s, patch), 0);
    r = rec(f, env, "GET", uri, NULL, NULL);
    assert_int_equal(r.status, 404);
    resp_clear(&r);
}

/* A read waits for the open batch only if the batch changed the row it read: a GET of a
 * committed row is answered at once while another row waits in the batch. */
static void test_batch_reads_wait_only_for_their_rows(void **state)
{
    fixture *f = *state;
    emu_store *s = f->fx->store;
    char env[40], uri_a[128], uri_b[128], id[40];
    create_env(f, "Reads", "Production", env);

    emu_store_defer_begin(s);
    resp r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"name\":\"a\"}",
                 "return=representation");
    uint64_t a = emu_store_defer_end();
    assert_int_equal(r.status, 201);
    snprintf(id, sizeof id, "%s", path_str(r.json, "accountid"));
    snprintf(uri_a, sizeof uri_a, "/api/data/v9.2/accounts(%s)", id);
    resp_clear(&r);
    assert_int_equal(cmk_test_durable(s, a), 1);

    emu_store_defer_begin(s);
    r = rec(f, env, "POST", "/api/data/v9.2/accounts", "{\"name\":\"b\"}",
            "return=representation");
    uint64_t b = emu_store_defer_end();
    assert_int_equal(r.status, 201);
    assert_true(b > a);
    snprintf(id, sizeof id, "%s", path_str(r.json, "accountid"));
    snprintf(uri_b, sizeof uri_b, "/api/data/v9.2/accounts(%s)", id);
    resp_clear(&r);

    /* b's batch is open: a GET of row a has nothing to wait for, a GET of row b waits */
    emu_store_defer_begin(s);
    r = rec(f, env, "GET", uri_a, NULL, NULL);
    assert_int_equal(emu_store_defer_end(), 0);
    assert_int_equal(r.status, 200);
    resp_clear(&r);
    emu_store_defer_begin(s);
    r = rec(f, env, "GET", uri_b, NULL, NULL);
    assert_int_equal(emu_store_defer_end(), b);
    assert_int_equal(r.status, 200);
    resp_clear(&r);
    assert_int_equal(cmk_test_durable(s, b), 1);
}

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    *state = f;
    f->fx = cmk_fixture_new("test_environments", TENANT, CMK_FX_AUTH | CMK_FX_BAP);
    return f->fx ? 0 : -1;
}

static int group_teardown(void **state)
{
    fixture *f = *state;
    if (!f)
        return 0;
    cmk_fixture_free(f->fx);
    free(f);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_get_list_delete),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_records_crud),
        cmocka_unit_test(test_paging),
        cmocka_unit_test(test_disable_enable),
        cmocka_unit_test(test_no_plaintext_on_disk),
        cmocka_unit_test(test_tampered_row_is_an_error),
        cmocka_unit_test(test_patch_text_merge_matches_tree_merge),
        cmocka_unit_test(test_post_text_create_matches_tree_create),
        cmocka_unit_test(test_flat_writes_limit_and_annotations),
        cmocka_unit_test_teardown(test_write_refused_when_data_key_changes, clear_store_hook),
        cmocka_unit_test(test_concurrent_patches_keep_every_field),
        cmocka_unit_test(test_world),
        cmocka_unit_test_teardown(test_batch_failure_leaves_no_trace, clear_store_hook),
        cmocka_unit_test(test_batch_reads_wait_only_for_their_rows),
    };
    return cmocka_run_group_tests_name("environments", tests, group_setup, group_teardown);
}
