/*
 * crash and soak: harness commands that own a `cmkemu serve` child (harness/emuproc.h).
 *   cmkharness crash --cycles N   kill -9 / restart consistency (crash.c)
 *   cmkharness soak --seconds N   mixed load at saturation, RSS and fds of the server (soak.c)
 * argv[0] is the command name; each returns the process exit code (0 ok, 1 failed, 2 usage).
 */
#ifndef CMKH_CRASH_H
#define CMKH_CRASH_H

int hx_crash_main(int argc, char **argv);
int hx_soak_main(int argc, char **argv);

#endif
