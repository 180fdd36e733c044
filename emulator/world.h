/*
 * world: the world file (JSON) that declares what exists on first start: vaults and keys
 * now; principals, role assignments, policies and environments as those domains arrive.
 * Loaded once per data dir (the store remembers it); later starts keep the saved state.
 * The demo world (fixtures/demo-world.json) is compiled into the binary.
 */
#ifndef CMKEMU_WORLD_H
#define CMKEMU_WORLD_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "auth/auth.h"
#include "config.h"
#include "keyvault/kv.h"
#include "store.h"

typedef struct {
    char summary[512]; /* one line for the start-up banner */
} emu_world_info;

/* Loads the configured world on first start; on later starts only describes the state. */
bool emu_world_load(const emu_config *cfg, emu_store *store, auth_t *auth, kv_t *kv,
                    emu_world_info *info,
                    char *err, size_t errlen);

/* Applies a parsed world document (exposed for tests). */
bool emu_world_apply(json_t *world, const char *default_tenant, auth_t *auth, kv_t *kv, char *err,
                     size_t errlen);

#endif
