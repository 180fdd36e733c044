/*
 * fuzz_world: emulator/world.c, the world-file loader, end to end: the input is written to a
 * world file and loaded with emu_world_load the way `cmkemu serve --world FILE` does on a first
 * start (principals, vaults, access policies, keys, resource groups, enterprise policies,
 * environments with records and components, role assignments), into a real token and store.
 *
 * Between inputs the "world loaded" mark is removed so each input is a first start; the whole
 * data directory is recreated every CMKEMU_FUZZ_RESET inputs (default 128) so what earlier
 * inputs created does not pile up. Key generation is the one slow step: inputs asking for more
 * than two keys or keys above 2048 bits are skipped (the loader itself has no such limit; a
 * world file is the operator's input, not a client's).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "fuzz_app.h"
#include "req.h"
#include "util.h"
#include "world.h"

#define FZ_MAX_INPUT (64u << 10)

static fz_app *app;
static long runs, reset_every;

/* true when the world asks for more key generation than a fuzz iteration should pay for */
static bool too_costly(const json_t *w)
{
    size_t nkeys = 0, i, j;
    json_t *v, *k;
    json_array_foreach(json_object_get(w, "vaults"), i, v)
    {
        json_array_foreach(json_object_get(v, "keys"), j, k)
        {
            json_int_t size = json_integer_value(json_object_get(k, "size"));
            if (++nkeys > 2 || size > 2048)
                return true;
        }
    }
    return false;
}

static void fresh_start(void)
{
    if (app && ++runs % reset_every != 0) {
        sqlite3 *db = emu_store_lock(fz_app_store(app));
        sqlite3_exec(db, "DELETE FROM meta WHERE key='world'", NULL, NULL, NULL);
        emu_store_unlock(fz_app_store(app));
        return;
    }
    fz_app_free(app);
    app = fz_app_new(0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!reset_every) {
        fz_quiet_log();
        reset_every = fz_env_long("CMKEMU_FUZZ_RESET", 1, 1000000, 128);
    }
    if (size > FZ_MAX_INPUT)
        return 0;
    json_t *w = json_loadb((const char *)data, size, 0, NULL);
    bool skip = w && too_costly(w);
    json_decref(w);
    if (skip)
        return 0;
    fresh_start();
    char path[4200];
    snprintf(path, sizeof path, "%s/world.json", fz_app_dir(app));
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    emu_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.tenant = FZ_TENANT;
    cfg.world_file = path;
    emu_world_info info;
    char err[512] = "";
    bool ok = emu_world_load(&cfg, fz_app_store(app), fz_app_auth(app), fz_app_kv(app), &info, err,
                             sizeof err);
    if (!ok && !err[0])
        abort(); /* a refusal must say why */
    return 0;
}
