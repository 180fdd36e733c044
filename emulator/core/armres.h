/*
 * armres: ARM plumbing that knows no resource provider: resource ids, the ARM error body,
 * systemData, the api-version and bearer checks every ARM route makes, and the small
 * registry of subscriptions and resource groups (table arm_resource_groups) with its routes:
 *   GET  /subscriptions, /subscriptions/{sub}
 *   GET  /subscriptions/{sub}/resourcegroups
 *   PUT|GET|HEAD|PATCH|DELETE /subscriptions/{sub}/resourcegroups/{rg}
 * Path words are matched case-insensitively (resourceGroups and resourcegroups alike).
 * Providers register a hook to learn that a resource group is being deleted (ARM deletes
 * what the group holds).
 *
 * Thread-safety: the registry reads and writes through the store lock; hooks are set once
 * at start-up before serving.
 */
#ifndef CMKEMU_ARMRES_H
#define CMKEMU_ARMRES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "req.h"
#include "router.h"
#include "store.h"

#define ARM_DEFAULT_SUBSCRIPTION "00000000-0000-4000-8000-000000000001"
#define ARM_DEFAULT_SUBSCRIPTION_NAME "cmkemu"

/* ---- resource ids ---------------------------------------------------------------------- */

/* /subscriptions/{subscription}[/resourceGroups/{resource_group}
 *   [/providers/{ns}/{type}/{name}]]; empty strings for absent parts. */
typedef struct {
    char subscription[64];
    char resource_group[96];
    char ns[64];
    char type[64];
    char name[128];
} arm_id;

/* Parses an id (words case-insensitive, "resourcegroups" accepted, '//' tolerated, one
 * trailing '/' ignored). false on anything else, including over-long parts. */
bool arm_id_parse(const char *id, arm_id *out);
/* Builds the canonical id ("resourceGroups", "providers") as a new malloc'd string. */
char *arm_id_build(const arm_id *id);

/* ---- responses ------------------------------------------------------------------------- */

/* {"error":{"code","message","target"?}}; target NULL = none. */
void arm_send_error(emu_req *req, int status, const char *code, const char *target,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* systemData {createdBy, createdByType, createdAt, lastModifiedBy, lastModifiedByType,
 * lastModifiedAt}; empty/NULL strings and zero times are left out. New reference. */
json_t *arm_system_data(const char *created_by, const char *created_by_type, int64_t created,
                        const char *modified_by, const char *modified_by_type,
                        int64_t modified);

/* ---- checks every ARM route makes -------------------------------------------------------- */

/* Every ARM route's ud starts with this struct (the precheck reads the tenant from it). */
/* Resolves the caller (sets req->principal); false + err when the token is refused. Set by
 * main from the identity layer, which core does not know. */
typedef bool (*arm_authenticate_fn)(emu_req *req, void *ud, bool *missing, char *err,
                                    size_t errlen);
typedef struct {
    const char *tenant;
    arm_authenticate_fn authenticate; /* NULL: only the presence of a bearer token counts */
    void *auth_ud;
} arm_common;

/* Precheck: 401 AuthenticationFailed with a WWW-Authenticate challenge when the request
 * carries no bearer token. ud: a struct starting with arm_common. */
void arm_precheck(emu_req *req, void *ud);
/* The request body as a JSON object; NULL after answering 400 InvalidRequestContent. */
json_t *arm_req_json(emu_req *req, bool allow_empty);
/* ARM tags: absent/null or an object of at most 50 string values (names <= 512, values <= 256
 * characters); false after answering 400 InvalidTag. */
bool arm_tags_ok(emu_req *req, const json_t *tags);

/* 400 MissingApiVersionParameter when api-version is absent; false = answered. */
bool arm_check_api_version(emu_req *req);

/* ---- subscriptions and resource groups --------------------------------------------------- */

typedef struct armres armres_t;

armres_t *armres_open(emu_store *store, const char *tenant, char *err, size_t errlen);
/* Sets the authenticator of the subscription / resource-group routes. */
void armres_set_authenticator(armres_t *a, arm_authenticate_fn fn, void *ud);
void armres_close(armres_t *a);
/* Registers the subscription and resource-group routes; a must outlive the router. */
void armres_register(emu_router *r, armres_t *a);

/* Creates or updates a group (tags NULL = none). false on a store failure. */
bool armres_rg_put(armres_t *a, const char *sub, const char *name, const char *location,
                   const json_t *tags, bool *created);
/* true if the group exists (case-insensitive); location copied when non-NULL. */
bool armres_rg_exists(armres_t *a, const char *sub, const char *name, char *location,
                      size_t loclen);

/* Called before a resource group row goes away, so providers delete what it holds. */
typedef void (*armres_rg_delete_fn)(const char *sub, const char *rg, void *ud);
void armres_on_rg_delete(armres_t *a, armres_rg_delete_fn fn, void *ud);

#endif
