/*
 * conformance: `cmkharness conformance` - runs every case file of fixtures/conformance/ (or
 * --cases DIR) against a Key Vault / ARM / token service / BAP endpoint and reports one line per
 * case, a summary "N passed, N failed", optional JUnit XML. argv[0] is "conformance".
 * Returns the process exit code: 0 all passed, 1 any failure, 2 usage error.
 */
#ifndef CMKH_CONFORMANCE_H
#define CMKH_CONFORMANCE_H

int hx_conformance_main(int argc, char **argv);

#endif
