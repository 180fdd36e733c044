/*
 * cmkharness: the test harness of cmkemu.
 *   conformance  the API conformance suite (fixtures/conformance/), also against real Azure
 *   bench        load generator (harness/bench/)
 *   scenario     narrated trainer scenarios (fixtures/scenarios/)
 */
#include <stdio.h>
#include <string.h>

#include "bench/bench.h"
#include "conformance.h"
#include "coverage.h"
#include "crash.h"
#include "scenario.h"

#ifndef CMKH_VERSION
#define CMKH_VERSION "0.1.0"
#endif

static void usage(FILE *f)
{
    fprintf(f, "usage: cmkharness COMMAND [ARGS]\n"
               "  conformance --url URL ...   run the conformance cases (--help for options)\n"
               "  bench ...                   load generator\n"
               "  bench-crypto ...            in-process record encryption vs OpenSSL\n"
               "  scenario list | run NAME   narrated trainer scenarios (--help for options)\n"
               "  coverage ENV --url URL ...  CMK coverage of an environment's components\n"
               "  crash --cycles N            SIGKILL/restart consistency of a real cmkemu\n"
               "  soak --seconds N            mixed load on a real cmkemu; RSS and fds flat\n"
               "  --help, --version\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("cmkharness %s\n", CMKH_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "conformance"))
        return hx_conformance_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench"))
        return cmkh_bench_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench-crypto"))
        return cmkh_bench_crypto_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "scenario"))
        return hx_scenario_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "crash"))
        return hx_crash_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "soak"))
        return hx_soak_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "coverage"))
        return hx_coverage_main(argc - 1, argv + 1);
    fprintf(stderr, "cmkharness: unknown command %s\n", cmd);
    usage(stderr);
    return 2;
}
