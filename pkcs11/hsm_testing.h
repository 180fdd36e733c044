/*
 * hsm_testing: hooks for tests only (fault injection, cache inspection). Production code never
 * includes this.
 *
 * Every PKCS#11 call that hsm.c makes after hsm_open goes through one CK_FUNCTION_LIST pointer
 * held in hsm_t. A test can substitute a copy of that table with some entries wrapped (e.g. a
 * C_Decrypt that fails with CKR_DEVICE_ERROR) and restore it afterwards.
 */
#ifndef CMKEMU_HSM_TESTING_H
#define CMKEMU_HSM_TESTING_H

#include <p11-kit/pkcs11.h>

#include "hsm.h"

/* Replaces the function table used by every later call on hsm. NULL restores the module's own
 * table. Call only while no other thread uses hsm. The caller keeps fl alive until it restores
 * the module's table or closes hsm (hsm_close always uses the module's own table). */
void hsm_testing_set_functions(hsm_t *hsm, CK_FUNCTION_LIST *fl);

/* The table in use now (the module's own unless replaced). */
CK_FUNCTION_LIST *hsm_testing_get_functions(const hsm_t *hsm);

/* How many keys in the handle cache hold an OpenSSL public key. Keys created or imported get
 * one only when an operation needs it (memory stays flat over a bulk import). */
size_t hsm_testing_cached_pkeys(hsm_t *hsm);

/* The handle cache's entry count and bucket count. */
void hsm_testing_cache_shape(hsm_t *hsm, size_t *count, size_t *nbuckets);

#endif
