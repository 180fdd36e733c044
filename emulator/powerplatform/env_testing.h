/*
 * env_testing: hooks into the environments module for tests only, to reach states a real
 * part cannot produce on demand.
 */
#ifndef CMKEMU_PP_ENV_TESTING_H
#define CMKEMU_PP_ENV_TESTING_H

#include <stdbool.h>

#include "environments.h"

/* fn runs in every record write after the row is sealed under the data key copied at its
 * start, and before it is stored, with no lock held. NULL removes it. */
void pp_envs_testing_set_before_store(pp_envs_t *p,
                                      void (*fn)(pp_envs_t *p, const char *env, void *ud),
                                      void *ud);

/* Replaces an enabled environment's data key in memory with fresh random bytes, as a re-key
 * between a write's start and its store would. false when env is unknown or its key is not
 * loaded. */
bool pp_envs_testing_replace_dek(pp_envs_t *p, const char *env);

#endif
