/* Placeholder until the bench lands: refuses clearly instead of pretending. */
#include "bench.h"

#include <stdio.h>

int cmkh_bench_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "cmkharness bench: not built yet\n");
    return 2;
}
