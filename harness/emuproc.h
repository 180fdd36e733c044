/*
 * emuproc: a `cmkemu serve` child process on a data dir, for the harness commands that must
 * own the server (crash kills it, soak samples its memory): start on a free port, wait for the
 * serving line, signal it, reap it; and `cmkemu fsck` on the same data dir.
 *
 * Ownership: hx_emu is caller-owned storage; hx_emu_stop reaps the child (safe when none).
 */
#ifndef CMKH_EMUPROC_H
#define CMKH_EMUPROC_H

#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

typedef struct {
    pid_t pid; /* 0 = not running */
    int port;
    char url[64];  /* https://localhost:PORT */
    char ca[4200]; /* DATA/tls/cert.pem */
} hx_emu;

/* The cmkemu binary next to this cmkharness (the build puts both in the build root), or NULL
 * when it is not there. Static storage. */
const char *hx_emu_default_bin(void);

/* Starts BIN serve --data-dir DATA --listen 127.0.0.1:0 --log-level warn [extra...] (extra is
 * NULL-terminated, may be NULL); stdout goes to DATA.out, stderr is appended to log_path.
 * wait_ready: wait (up to 120 s) for the serving line and fill port/url/ca; 0 ok, -1 with err
 * set (the child is reaped). Without wait_ready returns at once with pid set. */
int hx_emu_start(hx_emu *e, const char *bin, const char *data_dir, const char *log_path,
                 const char *const *extra, int wait_ready, char *err, size_t errlen);

/* Sends sig (SIGKILL, SIGTERM) and reaps the child; returns its wait status, -1 if none ran. */
int hx_emu_stop(hx_emu *e, int sig);

/* Runs BIN fsck --json --data-dir DATA; 0 and *out = the report object (caller decrefs), or
 * -1 with err set (exit status 2 or an unreadable answer). */
int hx_emu_fsck(const char *bin, const char *data_dir, json_t **out, char *err, size_t errlen);

#endif
