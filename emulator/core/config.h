/*
 * config: `cmkemu serve` options from flags and CMKEMU_* environment variables, one
 * declarative table (name, env var, type, bounds, default). Flags win over the environment.
 * Parsed once into an immutable struct; getenv is called only here.
 */
#ifndef CMKEMU_CONFIG_H
#define CMKEMU_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum { EMU_AUTH_PERMISSIVE = 0, EMU_AUTH_STRICT } emu_auth_mode;
typedef enum { EMU_THROTTLE_OFF = 0, EMU_THROTTLE_AZURE } emu_throttle_mode;

typedef struct {
    char *listen;        /* "HOST:PORT" as given */
    char *listen_host;   /* parsed host ("127.0.0.1", "::1", "localhost") */
    int port;            /* parsed port; 0 = pick a free port */
    char *data_dir;
    bool no_demo;
    int threads;         /* 0 = number of cores */
    char *pkcs11_module; /* NULL = managed SoftHSM */
    char *token_label;
    char *pin;           /* secret: never logged */
    bool log_json;
    int log_level;       /* emu_log_level */
    char *world_file;    /* NULL = built-in demo world (unless no_demo) */
    emu_auth_mode auth;
    long max_body;       /* bytes */
    long max_headers;
    long max_json_depth;
    bool allow_remote;   /* listening on a non-loopback address needs this */
    bool remote;         /* set by parsing: listen_host is not a loopback address */
    char *tenant;        /* default tenant id */
    long pp_operation_ms; /* duration of a Power Platform link/unlink operation */
    bool auto_reenable;   /* re-enable locked environments once their key is usable again */
    emu_throttle_mode throttle;
    long connection_timeout; /* seconds */
} emu_config;

/* Parses argv (after the subcommand) and the environment. On error returns false and writes
 * one line into err naming the flag and what was wrong. The caller frees with
 * emu_config_cleanup (also after failure). */
bool emu_config_parse(int argc, char **argv, emu_config *cfg, char *err, size_t errlen);
void emu_config_cleanup(emu_config *cfg);
/* Usage text of every option (for --help). */
void emu_config_usage(FILE *out);

#endif
