#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

typedef enum { OPT_STR, OPT_INT, OPT_BOOL, OPT_ENUM } opt_type;

typedef struct {
    const char *flag; /* without "--" */
    const char *env;
    opt_type type;
    size_t offset;
    long min, max;          /* OPT_INT bounds */
    const char *def;        /* default as text; NULL = none */
    const char *choices[4]; /* OPT_ENUM: index stored as int */
    const char *help;
} opt_def;

#define OFF(f) offsetof(emu_config, f)

static const opt_def OPTIONS[] = {
    {"listen", "CMKEMU_LISTEN", OPT_STR, OFF(listen), 0, 0, "127.0.0.1:8443", {0},
     "HOST:PORT to serve HTTPS on (port 0 = any free port)"},
    {"data-dir", "CMKEMU_DATA_DIR", OPT_STR, OFF(data_dir), 0, 0, ".cmkemu", {0},
     "state directory (token, SQLite, TLS certificate, PINs)"},
    {"no-demo", "CMKEMU_NO_DEMO", OPT_BOOL, OFF(no_demo), 0, 0, "false", {0},
     "start with an empty world instead of the demo world"},
    {"world", "CMKEMU_WORLD", OPT_STR, OFF(world_file), 0, 0, NULL, {0},
     "world file (JSON) to load on first start instead of the demo world"},
    {"threads", "CMKEMU_THREADS", OPT_INT, OFF(threads), 0, 256, "0", {0},
     "HTTP and HSM worker threads (0 = number of cores)"},
    {"pkcs11-module", "CMKEMU_PKCS11_MODULE", OPT_STR, OFF(pkcs11_module), 0, 0, NULL, {0},
     "PKCS#11 module path (default: SoftHSM, token managed inside the data dir)"},
    {"token-label", "CMKEMU_TOKEN_LABEL", OPT_STR, OFF(token_label), 0, 0, "cmkemu", {0},
     "token label"},
    {"pin", "CMKEMU_PIN", OPT_STR, OFF(pin), 0, 0, NULL, {0},
     "user PIN for --pkcs11-module (SoftHSM default: generated, in DATA_DIR/hsm/pin)"},
    {"log-format", "CMKEMU_LOG_FORMAT", OPT_ENUM, OFF(log_json), 0, 0, "text", {"text", "json"},
     "log format: text or json (JSON lines)"},
    {"log-level", "CMKEMU_LOG_LEVEL", OPT_ENUM, OFF(log_level), 0, 0, "info",
     {"debug", "info", "warn", "error"}, "minimum log level"},
    {"auth", "CMKEMU_AUTH", OPT_ENUM, OFF(auth), 0, 0, "permissive", {"permissive", "strict"},
     "token checking: permissive (any bearer token) or strict (only tokens of this issuer)"},
    {"max-body", "CMKEMU_MAX_BODY", OPT_INT, OFF(max_body), 1024, 64L << 20, "4194304", {0},
     "largest request body in bytes (larger: 413)"},
    {"max-headers", "CMKEMU_MAX_HEADERS", OPT_INT, OFF(max_headers), 8, 1000, "100", {0},
     "most request headers (more: 431)"},
    {"max-json-depth", "CMKEMU_MAX_JSON_DEPTH", OPT_INT, OFF(max_json_depth), 2, 1000, "32", {0},
     "deepest JSON nesting accepted (deeper: 400)"},
    {"allow-remote", "CMKEMU_ALLOW_REMOTE", OPT_BOOL, OFF(allow_remote), 0, 0, "false", {0},
     "allow listening on a non-loopback address"},
    {"tenant", "CMKEMU_TENANT", OPT_STR, OFF(tenant), 0, 0,
     "72f988bf-0000-4000-8000-00000000c0de", {0}, "default tenant id"},
    {"pp-operation-ms", "CMKEMU_PP_OPERATION_MS", OPT_INT, OFF(pp_operation_ms), 0, 3600000,
     "300", {0},
     "how long a Power Platform link/unlink operation takes (NotStarted, then Running), in ms"},
    {"auto-reenable", "CMKEMU_AUTO_REENABLE", OPT_BOOL, OFF(auto_reenable), 0, 0, "false", {0},
     "re-enable a locked environment as soon as its customer-managed key is usable again "
     "(demos; the real service waits for an admin)"},
    {"throttle", "CMKEMU_THROTTLE", OPT_ENUM, OFF(throttle), 0, 0, "off", {"off", "azure"},
     "key transaction limits: off, or azure (the Key Vault service limits per vault per 10 s: "
     "429 with Retry-After)"},
    {"connection-timeout", "CMKEMU_CONNECTION_TIMEOUT", OPT_INT, OFF(connection_timeout), 1,
     3600, "60", {0}, "seconds of inactivity after which a client connection is closed"},
};
#define N_OPTIONS (sizeof OPTIONS / sizeof OPTIONS[0])

static bool set_opt(const opt_def *o, emu_config *cfg, const char *val, const char *src,
                    char *err, size_t errlen)
{
    char *base = (char *)cfg + o->offset;
    switch (o->type) {
    case OPT_STR: {
        char **p = (char **)base;
        free(*p);
        *p = emu_xstrdup(val);
        return true;
    }
    case OPT_INT: {
        int64_t v;
        if (!emu_parse_i64(val, o->min, o->max, &v)) {
            snprintf(err, errlen, "%s: '%s' is not a whole number from %ld to %ld", src, val,
                     o->min, o->max);
            return false;
        }
        if (o->offset == OFF(threads))
            *(int *)base = (int)v;
        else
            *(long *)base = (long)v;
        return true;
    }
    case OPT_BOOL: {
        bool v;
        if (!strcmp(val, "true") || !strcmp(val, "1") || !strcmp(val, "yes"))
            v = true;
        else if (!strcmp(val, "false") || !strcmp(val, "0") || !strcmp(val, "no") || !*val)
            v = false;
        else {
            snprintf(err, errlen, "%s: '%s' is not true or false", src, val);
            return false;
        }
        *(bool *)base = v;
        return true;
    }
    case OPT_ENUM:
        for (int i = 0; i < 4 && o->choices[i]; i++) {
            if (!strcmp(val, o->choices[i])) {
                if (o->offset == OFF(log_json))
                    *(bool *)base = i == 1;
                else
                    *(int *)base = i;
                return true;
            }
        }
        snprintf(err, errlen, "%s: '%s' is not one of %s%s%s%s%s%s%s", src, val, o->choices[0],
                 o->choices[1] ? ", " : "", o->choices[1] ? o->choices[1] : "",
                 o->choices[2] ? ", " : "", o->choices[2] ? o->choices[2] : "",
                 o->choices[3] ? ", " : "", o->choices[3] ? o->choices[3] : "");
        return false;
    }
    return false;
}

static bool parse_listen(emu_config *cfg, char *err, size_t errlen)
{
    const char *l = cfg->listen;
    const char *colon = strrchr(l, ':');
    if (!colon || colon == l) {
        snprintf(err, errlen, "--listen: '%s' is not HOST:PORT", l);
        return false;
    }
    size_t hl = (size_t)(colon - l);
    const char *h = l;
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    int64_t port;
    if (!emu_parse_i64(colon + 1, 0, 65535, &port)) {
        snprintf(err, errlen, "--listen: port '%s' is not a number from 0 to 65535", colon + 1);
        return false;
    }
    free(cfg->listen_host);
    cfg->listen_host = emu_xstrndup(h, hl);
    cfg->port = (int)port;
    bool loopback = !strcmp(cfg->listen_host, "127.0.0.1") || !strcmp(cfg->listen_host, "::1") ||
                    !strcmp(cfg->listen_host, "localhost") ||
                    !strncmp(cfg->listen_host, "127.", 4);
    cfg->remote = !loopback;
    if (!loopback && !cfg->allow_remote) {
        snprintf(err, errlen,
                 "--listen: '%s' is not a loopback address; add --allow-remote to serve on it",
                 cfg->listen_host);
        return false;
    }
    return true;
}

bool emu_config_parse(int argc, char **argv, emu_config *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    char src[160];
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (OPTIONS[i].def && !set_opt(&OPTIONS[i], cfg, OPTIONS[i].def, "default", err, errlen))
            return false;
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const char *v = getenv(OPTIONS[i].env);
        if (!v)
            continue;
        snprintf(src, sizeof src, "%s", OPTIONS[i].env);
        if (!set_opt(&OPTIONS[i], cfg, v, src, err, errlen))
            return false;
    }
    for (int a = 0; a < argc; a++) {
        const char *arg = argv[a];
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s' (options start with --)", arg);
            return false;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const opt_def *o = NULL;
        for (size_t i = 0; i < N_OPTIONS; i++)
            if (strlen(OPTIONS[i].flag) == nl && !strncmp(OPTIONS[i].flag, name, nl))
                o = &OPTIONS[i];
        if (!o) {
            snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)nl, name);
            return false;
        }
        const char *val;
        if (eq)
            val = eq + 1;
        else if (o->type == OPT_BOOL)
            val = "true";
        else if (a + 1 < argc)
            val = argv[++a];
        else {
            snprintf(err, errlen, "option '--%s' needs a value", o->flag);
            return false;
        }
        snprintf(src, sizeof src, "--%s", o->flag);
        if (!set_opt(o, cfg, val, src, err, errlen))
            return false;
    }
    if (!*cfg->data_dir) {
        snprintf(err, errlen, "--data-dir: must not be empty");
        return false;
    }
    if (cfg->pkcs11_module && !cfg->pin) {
        snprintf(err, errlen, "--pkcs11-module needs --pin (or CMKEMU_PIN) for its token");
        return false;
    }
    return parse_listen(cfg, err, errlen);
}

void emu_config_cleanup(emu_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (OPTIONS[i].type == OPT_STR) {
            char **p = (char **)((char *)cfg + OPTIONS[i].offset);
            if (*p && OPTIONS[i].offset == OFF(pin))
                memset(*p, 0, strlen(*p));
            free(*p);
            *p = NULL;
        }
    free(cfg->listen_host);
    cfg->listen_host = NULL;
}

void emu_config_usage(FILE *out)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const opt_def *o = &OPTIONS[i];
        fprintf(out, "  --%-16s %s\n  %-18s env %s%s%s%s\n", o->flag, o->help, "", o->env,
                o->def ? ", default '" : "", o->def ? o->def : "", o->def ? "'" : "");
    }
}
