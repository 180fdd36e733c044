/*
 * fsck: the cross-check of token and store, and `cmkemu fsck`.
 *
 * Every RSA key pair in the token must be referred to by a row (a key version in kv_versions,
 * or an object another module owns, table hsm_owned), and every such row must have its key
 * pair. Key versions made since sealed keys (hsm.h) have no token object: their blob is in
 * table kv_sealed, deleted with the row, and they are only counted. The emulator keeps this true by
 * its order of effects (the token object is created before the row commits; on purge the row delete
 * is made durable before the object is destroyed), so after a crash only the first kind of
 * difference can exist: an orphan, which kv_open destroys at the next start (see kv_reconciled). A
 * row without its object is a bug.
 *
 * The check reads, never repairs: the server does that at start-up. It needs the data dir
 * to itself (the store is opened in exclusive mode), so it runs while the server is stopped.
 */
#ifndef CMKEMU_FSCK_H
#define CMKEMU_FSCK_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "hsm.h"
#include "store.h"

/* Opens the data dir's token (cfg's module, label and PIN; SoftHSM in the data dir by default)
 * and its store (DATA_DIR/cmkemu.db), as `cmkemu serve` and `cmkemu fsck` both do. On failure
 * returns EMU_DATA_HSM or EMU_DATA_STORE with the reason in err, and nothing is left open. */
typedef enum { EMU_DATA_OK = 0, EMU_DATA_HSM, EMU_DATA_STORE } emu_data_status;
emu_data_status emu_data_dir_open(const emu_config *cfg, hsm_t **hsm, emu_store **store, char *err,
                                  size_t errlen);

typedef struct {
    size_t token_keys;        /* RSA key pairs in the token */
    size_t rows;              /* distinct token ids that rows refer to */
    size_t sealed;            /* key versions kept sealed (their blob is in the store, see hsm.h) */
    size_t sealed_bad;        /* of which the blob is malformed or not the row's key */
    size_t sealed_stray;      /* blob rows no version refers to (the next start deletes them) */
    bool storage_key_missing; /* sealed versions exist and the token has no storage key */
    size_t orphans;           /* key pairs no row refers to (the next start destroys them) */
    size_t missing;           /* rows whose key pair is missing (never expected) */
} emu_fsck_report;

/* Compares the token's key pairs with the rows. false + err when either cannot be listed. */
bool emu_fsck_run(emu_store *store, hsm_t *hsm, emu_fsck_report *out, char *err, size_t errlen);

/* `cmkemu fsck [--json] SERVE-OPTIONS` (--data-dir, --pkcs11-module, --pin ...): prints the
 * report; exit 0 consistent, 1 orphans or missing objects, 2 usage or open failure. */
int emu_fsck_main(int argc, char **argv);

#endif
