#include "crash.h"
#include <stdio.h>
int hx_soak_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "not yet\n");
    return 2;
}
