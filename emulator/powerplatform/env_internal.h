/*
 * env_internal: what environments.c (environments, records) and cmk.c (link, unlink, the
 * operation runner, the lock watch and lock expiry) share. Not for other modules.
 */
#ifndef CMKEMU_PP_ENV_INTERNAL_H
#define CMKEMU_PP_ENV_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <sqlite3.h>

#include "audit.h"
#include "envelope.h"
#include "environments.h"

typedef struct {
    pp_environment env;
    uint8_t wrapped[PP_WRAPPED_MAX];
    size_t wrapped_len;
    pp_dek dek;         /* loaded while enabled (kept during an operation) */
    bool restore_noted; /* lock watch: "access restored" already audited for this lock */
} env_rec;

/* A queued link/unlink (cmk.c). */
typedef struct envi_op {
    char op_id[37];
    char env[40];
    bool link;
    char system_id[160]; /* link: the target policy */
    bool prev_enabled;
    char prev_reason[48];
    char caller_oid[40], caller_appid[40], caller_name[128];
    struct envi_op *next;
} envi_op;

#define PP_REC_STRIPES 64

/* The record statements kept prepared (environments.c, store lock held). */
typedef enum { REC_STMT_READ, REC_STMT_INSERT, REC_STMT_UPSERT, REC_STMT_COUNT } rec_stmt_kind;

struct pp_envs {
    pthread_mutex_t lock;
    emu_store *store;
    hsm_t *hsm;
    pp_platform_key platform;
    pp_key_wrapper platform_wrapper;
    env_rec **recs;
    size_t nrecs, caprecs;
    pp_cmk_deps cmk;
    bool has_cmk;
    int64_t last_tick_check; /* emulated time of the last clock-driven re-check (hook thread) */
    emu_audit *audit;        /* NULL = no audit */
    bool auto_reenable;
    /* the operation runner (cmk.c); off = operations run inline */
    bool runner_on, runner_stop;
    unsigned op_ms;
    pthread_t runner;
    pthread_cond_t cv;
    envi_op *qhead, *qtail;
    unsigned long probes; /* lock-watch key checks made (atomic; pp_envs_probe_count) */
    pp_env_hooks hooks;   /* components (components.h); zero = none */
    sqlite3_stmt *rec_stmts[REC_STMT_COUNT];     /* under the store lock; finalized at close */
    pthread_mutex_t rec_stripes[PP_REC_STRIPES]; /* a record's read-modify-write (environments.c) */
    /* Under the store lock: the rows that the open batch of record writes changed, as a
     * filter (bit rec_hash % 4096; a false positive only makes a read wait for the batch),
     * valid for batch dirty_batch; see row_open. */
    uint64_t dirty_batch;
    uint64_t dirty_bits[64];
    void (*testing_before_store)(pp_envs_t *p, const char *env, void *ud); /* env_testing.h */
    void *testing_before_store_ud;
};

/* pp lock held */
env_rec *envi_find(pp_envs_t *p, const char *id);
bool envi_write(sqlite3 *db, const env_rec *r);
bool envi_op_insert(sqlite3 *db, const char *id, const char *env, const char *kind,
                    const char *state, const char *error, int64_t now);
bool envi_op_update(sqlite3 *db, const char *id, const char *state, const char *error);
void envi_op_fill(pp_env_operation *op, const char *id, const char *env, const char *kind,
                  int64_t now);
void envi_not_found(pp_env_err *e, const char *id);
/* pp lock held: id's record when it exists and runs no operation; else NULL with *rs
 * (NOT_FOUND or BUSY) and e's message set. */
env_rec *envi_find_idle(pp_envs_t *p, const char *id, pp_env_status *rs, pp_env_err *e);

/* The customer-key wrapper storage and the wrapper that holds r's data key (cmk.c). */
typedef struct {
    pp_envs_t *p;
    const char *system_id;
    const char *version; /* unwrap: the version that wrapped; wrap: "" = the policy's */
    char version_out[33];
    /* set when the call failed for a reason that says nothing about the key (HSM unavailable
     * or failing, store failure): not a revocation, so the lock watch must not lock on it */
    bool transient;
} cmk_ud;
pp_key_wrapper envi_wrapper_for(pp_envs_t *p, const env_rec *r, cmk_ud *u);

/* Audit one environment event (p->audit may be NULL). caller NULL = the system. */
void envi_audit(pp_envs_t *p, const char *what, const char *env, const char *outcome,
                const char *caller_oid, const char *caller_appid, const char *caller_name,
                const char *detail);

/* Deletes an environment with its records (the pp lock NOT held); cause goes to the audit. */
pp_env_status envi_delete(pp_envs_t *p, const char *id, pp_env_operation *op, pp_env_err *e,
                          const char *cause, const auth_principal *caller);

/* cmk.c: restart recovery of operations that were in flight (pp lock held, at open). */
void envi_ops_recover_inlock(pp_envs_t *p);
void envi_runner_stop(pp_envs_t *p);

#endif
