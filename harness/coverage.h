/*
 * coverage: `cmkharness coverage ENV` prints an environment's CMK coverage report as a table.
 */
#ifndef CMKH_COVERAGE_H
#define CMKH_COVERAGE_H

/* argv[0] is "coverage". Returns the process exit code. */
int hx_coverage_main(int argc, char **argv);

#endif
