/*
 * scenario: `cmkharness scenario list | run NAME|all [--step]` - the trainer scenarios of
 * fixtures/scenarios/ (or --scenarios DIR). A scenario file is {"name", "title", "summary",
 * "audience", "steps": [STEP...]}; a STEP is a conformance step (fixtures/conformance/README.md)
 * plus "say" (what happens, narrated before the step) and "observe" (what the room should see,
 * printed when the step passed). Steps without "say" run silently (setup). Every step checks
 * its expectations: the first that fails stops the scenario, which then exits 1.
 * argv[0] is "scenario". Exit: 0 passed, 1 failed, 2 usage.
 */
#ifndef CMKH_SCENARIO_H
#define CMKH_SCENARIO_H

int hx_scenario_main(int argc, char **argv);

#endif
