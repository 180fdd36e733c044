#include "fsck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "keyvault/kv.h"
#include "log.h"
#include "util.h"

typedef struct {
    uint8_t (*ids)[HSM_ID_LEN];
    size_t n, cap;
} fsck_ids;

static void ids_add(fsck_ids *l, const uint8_t id[HSM_ID_LEN])
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->ids = emu_xrealloc(l->ids, l->cap * HSM_ID_LEN);
    }
    memcpy(l->ids[l->n++], id, HSM_ID_LEN);
}

static void on_token_id(const uint8_t id[HSM_ID_LEN], void *ud)
{
    ids_add(ud, id);
}

static void on_owned_id(const void *id, size_t len, void *ud)
{
    if (len == HSM_ID_LEN)
        ids_add(ud, id);
}

static int id_cmp(const void *a, const void *b)
{
    return memcmp(a, b, HSM_ID_LEN);
}

/* Sorts and drops duplicates (an id listed by two owners counts once). */
static void ids_unique(fsck_ids *l)
{
    if (l->n < 2)
        return;
    qsort(l->ids, l->n, HSM_ID_LEN, id_cmp);
    size_t w = 1;
    for (size_t i = 1; i < l->n; i++)
        if (memcmp(l->ids[i], l->ids[w - 1], HSM_ID_LEN))
            memcpy(l->ids[w++], l->ids[i], HSM_ID_LEN);
    l->n = w;
}

static bool ids_has(const fsck_ids *l, const uint8_t id[HSM_ID_LEN])
{
    return l->n && bsearch(id, l->ids, l->n, HSM_ID_LEN, id_cmp) != NULL;
}

bool emu_fsck_run(emu_store *store, hsm_t *hsm, emu_fsck_report *out, char *err, size_t errlen)
{
    fsck_ids token = {0}, rows = {0};
    bool ok = false;
    memset(out, 0, sizeof *out);
    hsm_status hs = hsm_key_foreach(hsm, on_token_id, &token);
    if (hs != HSM_OK) {
        snprintf(err, errlen, "cannot list the token's key pairs: %s", hsm_status_str(hs));
        goto out;
    }
    if (!kv_store_hsm_ids(store, &out->sealed, on_token_id, &rows) ||
        !emu_store_owned_foreach(store, on_owned_id, &rows)) {
        snprintf(err, errlen,
                 "cannot read the rows that refer to token objects (is this a "
                 "cmkemu data dir that has been served once?)");
        goto out;
    }
    if (!kv_store_sealed_check(store, hsm, &out->sealed_bad, &out->sealed_stray)) {
        snprintf(err, errlen, "cannot read the sealed key blobs");
        goto out;
    }
    out->storage_key_missing = out->sealed && hsm_storage_key_present(hsm) != HSM_OK;
    ids_unique(&token);
    ids_unique(&rows);
    out->token_keys = token.n;
    out->rows = rows.n;
    for (size_t i = 0; i < token.n; i++)
        if (!ids_has(&rows, token.ids[i]))
            out->orphans++;
    for (size_t i = 0; i < rows.n; i++)
        if (!ids_has(&token, rows.ids[i]))
            out->missing++;
    ok = true;
out:
    free(token.ids);
    free(rows.ids);
    return ok;
}

static void hsm_log(const char *line)
{
    emu_log(EMU_LOG_ERROR, "hsm", "%s", line);
}

emu_data_status emu_data_dir_open(const emu_config *cfg, hsm_t **hsm, emu_store **store, char *err,
                                  size_t errlen)
{
    hsm_config hc = {.log_error = hsm_log,
                     .data_dir = cfg->data_dir,
                     .module_path = cfg->pkcs11_module,
                     .token_label = cfg->token_label,
                     .pin = cfg->pin};
    *store = NULL;
    if (hsm_open(&hc, hsm, err, errlen) != HSM_OK)
        return EMU_DATA_HSM;
    char dbpath[4200];
    snprintf(dbpath, sizeof dbpath, "%s/cmkemu.db", cfg->data_dir);
    *store = emu_store_open(dbpath, err, errlen);
    if (!*store) {
        hsm_close(*hsm);
        *hsm = NULL;
        return EMU_DATA_STORE;
    }
    return EMU_DATA_OK;
}

int emu_fsck_main(int argc, char **argv)
{
    int rc = 2;
    bool json = false;
    char err[512] = "";
    emu_config cfg;
    hsm_t *hsm = NULL;
    emu_store *store = NULL;
    char **args = emu_xcalloc((size_t)argc + 1, sizeof *args);
    int nargs = 0;

    memset(&cfg, 0, sizeof cfg);
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: cmkemu fsck [--json] [--data-dir DIR] [--pkcs11-module PATH ...]\n"
                   "Lists token key pairs without a row and rows without their key pair.\n"
                   "Run it while the server is stopped. Exit 0 consistent, 1 not, 2 error.\n");
            free(args);
            return 0;
        } else
            args[nargs++] = argv[i];
    }
    if (!emu_config_parse(nargs, args, &cfg, err, sizeof err)) {
        fprintf(stderr, "cmkemu fsck: %s\n", err);
        goto out;
    }
    emu_log_setup(EMU_LOG_ERROR, false);
    switch (emu_data_dir_open(&cfg, &hsm, &store, err, sizeof err)) {
    case EMU_DATA_OK:
        break;
    case EMU_DATA_HSM:
        fprintf(stderr, "cmkemu fsck: HSM: %s\n", err);
        goto out;
    case EMU_DATA_STORE:
        fprintf(stderr, "cmkemu fsck: store: %s (is the server still running?)\n", err);
        goto out;
    }
    emu_fsck_report r;
    if (!emu_fsck_run(store, hsm, &r, err, sizeof err)) {
        fprintf(stderr, "cmkemu fsck: %s\n", err);
        goto out;
    }
    if (json)
        printf("{\"tokenKeys\":%zu,\"rows\":%zu,\"sealed\":%zu,\"sealedBad\":%zu,"
               "\"sealedStray\":%zu,\"storageKeyMissing\":%s,\"orphans\":%zu,\"missing\":%zu}\n",
               r.token_keys, r.rows, r.sealed, r.sealed_bad, r.sealed_stray,
               r.storage_key_missing ? "true" : "false", r.orphans, r.missing);
    else
        printf("token key pairs: %zu\nrows referring to one: %zu\nsealed key versions (blob in "
               "the store): %zu\n  malformed or not their version's key: %zu\n  blob rows "
               "without a version (deleted at the next start): %zu\n  storage key: %s\nkey "
               "pairs without a row (orphans, destroyed at the next start): %zu\nrows without "
               "their key pair: %zu\n",
               r.token_keys, r.rows, r.sealed, r.sealed_bad, r.sealed_stray,
               r.storage_key_missing ? "MISSING (sealed keys cannot be unwrapped)"
                                     : (r.sealed ? "present" : "not needed"),
               r.orphans, r.missing);
    rc = r.orphans || r.missing || r.sealed_bad || r.sealed_stray || r.storage_key_missing ? 1 : 0;
out:
    emu_store_close(store);
    hsm_close(hsm);
    emu_config_cleanup(&cfg);
    free(args);
    return rc;
}
