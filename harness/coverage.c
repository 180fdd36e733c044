/*
 * coverage: `cmkharness coverage ENV`, the CMK coverage report of one environment as a table
 * (GET /providers/Microsoft.BusinessAppPlatform/scopes/admin/environments/{ENV}/coverage, an
 * emulator extension; see the README section "Who holds the keys").
 */
#include "coverage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "http.h"
#include "session.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: cmkharness coverage ENVIRONMENT_ID --url URL [--ca PEM]\n"
            "         [--token T | --client-id ID --client-secret S --tenant T --authority URL]\n"
            "         [--json]\n"
            "\n"
            "%s"
            "  --json           print the report as JSON instead of a table\n"
            "Exit: 0 printed, 1 the request failed, 2 usage.\n",
            HX_COMMON_USAGE);
}

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void print_table(json_t *r)
{
    json_t *env = json_object_get(r, "environment");
    json_t *res = json_object_get(r, "residency");
    json_t *fno = json_object_get(r, "financeOperationsIntegration");
    json_t *recs = json_object_get(r, "dataverseRecords");
    printf("Environment %s (%s)\n", str(env, "displayName"), str(env, "id"));
    printf("  key: %s   runtime: %s (%s)   F&O Power Platform integration: %s\n",
           str(env, "keyManagedBy"), str(env, "runtime"), str(env, "runtimeReasonCode"),
           json_is_true(json_object_get(fno, "enabled")) ? "enabled" : "not enabled");
    printf("  data residency: region %s, geo %s\n", str(res, "region"), str(res, "geo"));
    printf("    %s\n", str(res, "statement"));
    printf("\n%-34s %-20s %-9s %-11s %-8s %-28s %s\n", "COMPONENT", "KIND", "KEY", "DATA KEY",
           "READABLE", "RULE", "GEO");
    printf("%-34s %-20s %-9s %-11s %-8s %-28s %s\n", "(Dataverse records)", "records",
           str(recs, "keyManagedBy"), "environment",
           json_is_true(json_object_get(recs, "readable")) ? "yes" : "NO", "dataverse-native",
           str(res, "geo"));
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "components"), i, c)
    {
        json_t *rule = json_object_get(c, "rule");
        json_t *rr = json_object_get(c, "residency");
        printf("%-34.34s %-20.20s %-9s %-11s %-8s %-28s %s%s\n", str(c, "name"), str(c, "kind"),
               str(c, "keyManagedBy"), str(c, "dataKey"),
               json_is_true(json_object_get(c, "readable")) ? "yes" : "NO", str(rule, "id"),
               str(rr, "geo"),
               json_is_false(json_object_get(rr, "sameGeoAsEnvironment")) ? " (other geo)" : "");
    }
    printf("\nRules (the seed document of each, and a phrase quoted from it):\n");
    json_t *seen = json_object();
    json_array_foreach(json_object_get(r, "components"), i, c)
    {
        json_t *rule = json_object_get(c, "rule");
        const char *id = str(rule, "id");
        if (json_object_get(seen, id))
            continue;
        json_object_set_new(seen, id, json_true());
        printf("  %-28s CMK %s. %s\n  %-28s %s: \"%s\"%s\n", id,
               json_is_true(json_object_get(rule, "cmkApplies")) ? "applies" : "does not apply",
               str(rule, "text"), "", str(rule, "seed"), str(rule, "quote"),
               json_is_true(json_object_get(rule, "decision")) ? " [cmkemu decision]" : "");
    }
    json_decref(seen);
    json_t *sum = json_object_get(r, "summary");
    printf("\n%lld on the customer key, %lld on the Microsoft-managed key; %lld readable, %lld "
           "unreadable now.\n",
           (long long)json_integer_value(json_object_get(sum, "customerKey")),
           (long long)json_integer_value(json_object_get(sum, "microsoftKey")),
           (long long)json_integer_value(json_object_get(sum, "readable")),
           (long long)json_integer_value(json_object_get(sum, "unreadable")));
}

int hx_coverage_main(int argc, char **argv)
{
    hx_common_opts o;
    memset(&o, 0, sizeof o);
    const char *env = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        int r = hx_common_arg(&o, argc, argv, &i, "coverage");
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--json")) {
            as_json = 1;
        } else if (argv[i][0] != '-' && !env) {
            env = argv[i];
        } else {
            fprintf(stderr, "cmkharness coverage: unknown argument %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!env || !o.url) {
        usage(stderr);
        return 2;
    }
    if (!o.token && !(o.cid && o.secret && o.tenant && o.authority)) {
        fprintf(stderr, "cmkharness coverage: give --token, or all of --client-id, "
                        "--client-secret, --tenant and --authority\n");
        return 2;
    }
    char err[512] = "";
    int rc = 1;
    char *token = NULL, *url = NULL, *auth = NULL;
    hx_resp resp;
    memset(&resp, 0, sizeof resp);
    hx_http *h = hx_http_new(o.ca, o.verbose, err, sizeof err);
    if (!h)
        goto out;
    if (o.token) {
        token = strdup(o.token);
    } else if (hx_http_client_credentials(h, o.authority, o.tenant, o.cid, o.secret,
                                          "https://service.powerapps.com/.default", &token, err,
                                          sizeof err) != 0) {
        goto out;
    }
    size_t ulen = strlen(o.url) + strlen(env) + 160;
    url = malloc(ulen);
    auth = malloc(strlen(token) + 32);
    if (!url || !auth) {
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    size_t base = strlen(o.url);
    while (base && o.url[base - 1] == '/')
        base--;
    snprintf(url, ulen,
             "%.*s/providers/Microsoft.BusinessAppPlatform/scopes/admin/environments/%s/coverage"
             "?api-version=2021-04-01",
             (int)base, o.url, env);
    snprintf(auth, strlen(token) + 32, "Authorization: Bearer %s", token);
    const char *headers[] = {auth, "Accept: application/json", NULL};
    if (hx_http_do(h, "GET", url, headers, NULL, 0, &resp, err, sizeof err) != 0)
        goto out;
    if (resp.status != 200 || !resp.json) {
        snprintf(err, sizeof err, "GET %s answered %ld: %.400s", url, resp.status,
                 resp.body ? resp.body : "");
        goto out;
    }
    if (as_json) {
        char *txt = json_dumps(resp.json, JSON_INDENT(2));
        if (txt)
            printf("%s\n", txt);
        free(txt);
    } else {
        print_table(resp.json);
    }
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "cmkharness coverage: %s\n", err);
    hx_resp_cleanup(&resp);
    free(url);
    free(auth);
    free(token);
    hx_http_free(h);
    return rc;
}
