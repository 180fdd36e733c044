/*
 * cmkemu: start-up and wiring. `cmkemu serve` opens the data dir, the token, the store and
 * the certificate, registers every API family with the router, loads the demo world on
 * first start, and serves until SIGINT/SIGTERM.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "app.h"
#include "auth/auth.h"
#include "auth/roles.h"
#include "clock.h"
#include "config.h"
#include "faults.h"
#include "fsck.h"
#include "hsm.h"
#include "http.h"
#include "keyvault/kv.h"
#include "keyvault/kv_api.h"
#include "log.h"
#include "store.h"
#include "tls.h"
#include "util.h"
#include "world.h"

#define CMKEMU_VERSION "0.1.0"

/* Set by the main thread once SIGINT or SIGTERM arrived (sigwait); read by the tick thread. */
static volatile sig_atomic_t stop_requested;

static void *tick_main(void *arg)
{
    (void)arg;
    while (!stop_requested) {
        for (int i = 0; i < 10 && !stop_requested; i++)
            usleep(100 * 1000);
        if (!stop_requested)
            emu_clock_apply_due();
    }
    return NULL;
}

/* The http gate: injected faults (/_emulator/faults). */
static void fault_gate(emu_req *req, void *ud, long *delay_ms)
{
    emu_faults_apply(ud, req, delay_ms);
}

/* ARM requests authenticate through the identity layer with the ARM audiences. */
static int usage(FILE *out, int rc)
{
    fprintf(out, "usage: cmkemu serve [options]\n"
                 "       cmkemu fsck [--json] [--data-dir DIR]   token/store cross-check "
                 "(server stopped)\n"
                 "       cmkemu --version\n\n"
                 "cmkemu emulates Azure Key Vault keys (backed by a PKCS#11 token), the ARM\n"
                 "endpoints around them and Power Platform customer-managed keys.\n\n"
                 "serve options (flags win over CMKEMU_* environment variables):\n");
    emu_config_usage(out);
    return rc;
}

static int serve(int argc, char **argv)
{
    /* SIGINT and SIGTERM are blocked in every thread (threads inherit the mask, so this comes
     * before any is created) and taken by the main thread with sigwait: a signal that arrives
     * during start-up waits, pending, and one delivered while another thread runs cannot be
     * lost. (pause() with a flag lost a SIGTERM that landed between the check and the call, or
     * on another thread, and the server never stopped.) */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client that went away is an error return, not a signal */
    int rc = 1;
    char err[512] = "";
    emu_config cfg;
    hsm_t *hsm = NULL;
    emu_store *store = NULL;
    emu_app app = {0};
    emu_workers *workers = NULL;
    emu_http *http = NULL;
    kv_t *kv = NULL;
    auth_t *auth = NULL;
    roles_t *roles = NULL;
    emu_audit *audit = emu_audit_new();
    emu_faults *faults = emu_faults_new(audit);
    emu_throttle *throttle = NULL;
    char *cert_pem = NULL, *key_pem = NULL, *cert_path = NULL;
    pthread_t tick;
    bool tick_started = false;

    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            memset(&cfg, 0, sizeof cfg);
            return usage(stdout, 0);
        }
    if (!emu_config_parse(argc, argv, &cfg, err, sizeof err)) {
        fprintf(stderr, "cmkemu: %s\n", err);
        goto out;
    }
    emu_log_setup((emu_log_level)cfg.log_level, cfg.log_json);

    if (!emu_mkdirs(cfg.data_dir, 0700) || access(cfg.data_dir, W_OK) != 0) {
        fprintf(stderr, "cmkemu: data dir %s is not usable: %s\n", cfg.data_dir, strerror(errno));
        goto out;
    }
    chmod(cfg.data_dir, 0700);
    if (!emu_tls_ensure(cfg.data_dir, &cert_pem, &key_pem, &cert_path, err, sizeof err)) {
        fprintf(stderr, "cmkemu: %s\n", err);
        goto out;
    }
    switch (emu_data_dir_open(&cfg, &hsm, &store, err, sizeof err)) {
    case EMU_DATA_OK:
        break;
    case EMU_DATA_HSM:
        fprintf(stderr, "cmkemu: HSM: %s\n", err);
        goto out;
    case EMU_DATA_STORE:
        fprintf(stderr, "cmkemu: store: %s\n", err);
        goto out;
    }
    emu_admin_load_clock(store);

    /* before kv_open: its reconciliation spares the HSM objects auth records as its own */
    auth = auth_open(store, hsm, cfg.auth == EMU_AUTH_STRICT ? AUTH_STRICT : AUTH_PERMISSIVE,
                     cfg.tenant, err, sizeof err);
    if (!auth) {
        fprintf(stderr, "cmkemu: identity: %s\n", err);
        goto out;
    }
    kv = kv_open(store, hsm, err, sizeof err);
    if (!kv) {
        fprintf(stderr, "cmkemu: key vault: %s\n", err);
        goto out;
    }
    emu_world_info world = {0};
    if (!emu_world_load(&cfg, store, auth, kv, &world, err, sizeof err)) {
        fprintf(stderr, "cmkemu: world: %s\n", err);
        goto out;
    }
    /* after the world: it writes the world's role assignments through its own handle */
    roles = auth_roles_open(store, auth, err, sizeof err);
    if (!roles) {
        fprintf(stderr, "cmkemu: role assignments: %s\n", err);
        goto out;
    }
    kv_set_rbac_roles(kv, roles);

    int ncores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int threads = cfg.threads > 0 ? cfg.threads : (ncores > 0 ? ncores : 2);
    char identity_header[128] = "";
    if (!emu_store_meta_get(store, "identity_header", identity_header, sizeof identity_header))
        snprintf(identity_header, sizeof identity_header, "cmkemu-identity-header");
    if (cfg.throttle == EMU_THROTTLE_AZURE)
        throttle = kv_api_throttle_new(NULL);
    app = (emu_app){.store = store,
                    .hsm = hsm,
                    .auth = auth,
                    .kv = kv,
                    .roles = roles,
                    .audit = audit,
                    .faults = faults,
                    .throttle = throttle,
                    .tenant = cfg.tenant,
                    .version = CMKEMU_VERSION,
                    .data_dir = cfg.data_dir,
                    .identity_header = identity_header,
                    .auto_reenable = cfg.auto_reenable,
                    .pp_operation_ms = (int)cfg.pp_operation_ms};
    if (!emu_app_open(&app, err, sizeof err)) {
        fprintf(stderr, "cmkemu: %s\n", err);
        goto out;
    }

    workers = emu_workers_new(threads);
    emu_http_config hcfg = {.host = cfg.listen_host,
                            .port = cfg.port,
                            .threads = threads,
                            .cert_pem = cert_pem,
                            .key_pem = key_pem,
                            .max_body = cfg.max_body,
                            .max_headers = cfg.max_headers,
                            .max_json_depth = cfg.max_json_depth,
                            .router = app.router,
                            .workers = workers,
                            .store = store,
                            .on_complete = emu_admin_audit_request,
                            .on_complete_ud = &app.admin,
                            .gate = fault_gate,
                            .gate_ud = faults,
                            .connection_timeout = cfg.connection_timeout};
    http = emu_http_start(&hcfg, err, sizeof err);
    if (!http) {
        fprintf(stderr, "cmkemu: %s\n", err);
        goto out;
    }
    int port = emu_http_port(http);

    if (pthread_create(&tick, NULL, tick_main, NULL) == 0)
        tick_started = true;

    const char *shown = strchr(cfg.listen_host, ':') ? "[::1]" : "localhost";
    if (!strcmp(cfg.listen_host, "127.0.0.1") || !strcmp(cfg.listen_host, "localhost"))
        shown = "localhost";
    else if (!strchr(cfg.listen_host, ':'))
        shown = cfg.listen_host;
    printf("cmkemu %s serving https://%s:%d/\n", CMKEMU_VERSION, shown, port);
    printf("  data dir:     %s\n", cfg.data_dir);
    printf("  certificate:  %s\n", cert_path);
    printf("                trust it: NODE_EXTRA_CA_CERTS=%s, curl --cacert %s,\n", cert_path,
           cert_path);
    printf("                REQUESTS_CA_BUNDLE / SSL_CERT_FILE=%s\n", cert_path);
    printf("  HSM module:   %s\n", hsm_module_path(hsm));
    printf("  auth:         %s\n", cfg.auth == EMU_AUTH_STRICT ? "strict" : "permissive");
    printf("  default vault https://localhost:%d/  named vaults https://NAME.vault.localhost:%d/\n",
           port, port);
    if (world.summary[0])
        printf("  world:        %s\n", world.summary);
    printf("  identity:     https://localhost:%d/%s (authorityHost https://localhost:%d, "
           "disableInstanceDiscovery)\n",
           port, cfg.tenant, port);
    printf("                managed identity: IDENTITY_ENDPOINT=https://localhost:%d/msi/token "
           "IDENTITY_HEADER=%s\n",
           port, identity_header);
    printf("  power platform: https://localhost:%d/providers/Microsoft.BusinessAppPlatform/"
           "environments, records https://{environmentId}.crm.localhost:%d/api/data/v9.2/\n",
           port, port);
    printf("  health:       https://localhost:%d/_emulator/health\n", port);
    if (throttle)
        printf("  throttle:     azure (Key Vault service limits per vault per 10 s)\n");
    fflush(stdout);
    emu_log(EMU_LOG_INFO, "main", "listening on %s:%d with %d threads", cfg.listen_host, port,
            threads);
    if (cfg.remote)
        emu_log(EMU_LOG_WARN, "main",
                "listening on %s:%d, which is not a loopback address (--allow-remote): other "
                "machines can reach the keys API, the token service and the /_emulator endpoints%s",
                cfg.listen_host, port,
                cfg.auth == EMU_AUTH_PERMISSIVE
                    ? "; with --auth permissive any bearer token is accepted (use --auth strict)"
                    : "");

    int sig = 0;
    while (sigwait(&stop_set, &sig) != 0)
        ;
    stop_requested = 1;
    emu_log(EMU_LOG_INFO, "main", "stopping");
    rc = 0;
out:
    if (tick_started)
        pthread_join(tick, NULL);
    emu_http_stop(http);
    emu_workers_free(workers);
    emu_app_close(&app); /* the router first; the operation runner audits until it stops */
    emu_faults_free(faults);
    emu_throttle_free(throttle);
    emu_audit_free(audit);
    emu_clock_hooks_clear();
    kv_close(kv);
    auth_roles_close(roles);
    auth_close(auth);
    emu_store_close(store);
    hsm_close(hsm);
    if (key_pem) {
        OPENSSL_cleanse(key_pem, strlen(key_pem));
        free(key_pem);
    }
    free(cert_pem);
    free(cert_path);
    emu_config_cleanup(&cfg);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr, 2);
    if (!strcmp(argv[1], "serve"))
        return serve(argc - 2, argv + 2);
    if (!strcmp(argv[1], "fsck"))
        return emu_fsck_main(argc - 2, argv + 2);
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("cmkemu %s\n", CMKEMU_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))
        return usage(stdout, 0);
    fprintf(stderr, "cmkemu: unknown command '%s' (try: cmkemu serve)\n", argv[1]);
    return 2;
}
