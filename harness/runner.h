/*
 * runner: the harness's case engine, shared by `cmkharness conformance` and (later) `scenario`.
 *
 * A case file is JSON {"name", "audience", "base"?, "cases": [STEP...]}; the format is described
 * in fixtures/conformance/README.md. Steps run in order against one variable context (hx_ctx):
 * captures of a step are visible to every later step of any file run with the same context.
 *
 * Ownership: hx_ctx_new borrows http and the strings of cfg (they must outlive the context);
 * hx_ctx_free releases variables and cached tokens (NULL ok). hx_report_free likewise.
 */
#ifndef CMKH_RUNNER_H
#define CMKH_RUNNER_H

#include <stdio.h>

#include <jansson.h>

#include "http.h"

typedef struct hx_ctx hx_ctx;
typedef struct hx_report hx_report;

typedef struct {
    const char *token;     /* static bearer token for every audience, or NULL */
    const char *authority; /* token service base URL for client credentials, or NULL */
    const char *tenant;
    const char *client_id;
    const char *client_secret;
    const char *fixtures_root; /* files named by built-in steps are relative to this */
    int verbose;               /* print every exchange to stderr */
} hx_auth_config;

typedef enum { HX_PASS = 0, HX_FAIL, HX_SKIP } hx_outcome;

typedef struct {
    hx_outcome outcome;
    double seconds;
    char msg[4096]; /* why it failed or was skipped; empty on a plain pass */
} hx_result;

hx_ctx *hx_ctx_new(hx_http *http, const hx_auth_config *cfg);
void hx_ctx_free(hx_ctx *ctx);
/* Sets variable name (takes the reference of value). */
void hx_ctx_set(hx_ctx *ctx, const char *name, json_t *value);
void hx_ctx_set_str(hx_ctx *ctx, const char *name, const char *value);
/* Borrowed value of a variable, or NULL. */
json_t *hx_ctx_get(const hx_ctx *ctx, const char *name);

/*
 * Runs one step of file (whose "audience"/"base" are the defaults) with ctx's variables and
 * fills *res. Never stops the process; any problem is a failure with a message.
 */
void hx_step_run(hx_ctx *ctx, const json_t *file, const json_t *step, hx_result *res);

typedef struct {
    const char *only;             /* run files whose name, path or a case name contain this */
    const char *const *skip_tags; /* cases with any of these tags are skipped */
    size_t nskip_tags;
    FILE *out; /* one line per case */
} hx_run_opts;

hx_report *hx_report_new(void);
void hx_report_free(hx_report *r);
void hx_report_add(hx_report *r, const char *suite, const char *name, const hx_result *res);
void hx_report_counts(const hx_report *r, int *passed, int *failed, int *skipped);
/* JUnit XML, one testsuite per file. Returns 0, or -1 when the file cannot be written. */
int hx_report_junit(const hx_report *r, const char *path);

/*
 * Loads the case file at path and runs it (unless opts->only excludes it: returns 0 and runs
 * nothing). Every step's outcome goes to report and a line to opts->out. A file that cannot be
 * loaded counts as one failed case. Returns the number of failures.
 */
int hx_file_run(hx_ctx *ctx, const char *path, const hx_run_opts *opts, hx_report *report);

#endif
