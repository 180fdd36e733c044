/*
 * test_envelope: AES-256-GCM records under a data key wrapped by the platform key, on a fresh
 * SoftHSM token and store under $CMK_TEST_TMP (else /tmp), removed at the end (CMK_TEST_KEEP=1
 * keeps it). Round trip, tamper of every byte of nonce/ciphertext/tag, wrong AAD, wrapped key
 * tamper, key wipe, and the platform key found again (not recreated) on a second ensure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixture.h"
#include "hsm.h"
#include "powerplatform/envelope.h"
#include "store.h"

typedef struct {
    cmk_fixture *fx;
    pp_platform_key pk;
    pp_key_wrapper w;
} fixture;

static const char AAD[] = "11111111-2222-4333-8444-555555555555/accounts/"
                          "66666666-7777-4888-9999-000000000000";
static const char PT[] = "{\"name\":\"Fourth Coffee\",\"revenue\":1200000}";

static void seal_one(fixture *f, pp_dek *dek, uint8_t **blob, size_t *len)
{
    uint8_t wrapped[PP_WRAPPED_MAX];
    size_t wl = 0;
    char err[256] = "";
    assert_int_equal(pp_dek_create(f->fx->hsm, &f->w, dek, wrapped, &wl, err, sizeof err),
                     PP_ENVELOPE_OK);
    assert_int_equal(wl, 256); /* RSA-2048 */
    assert_int_equal(pp_seal(dek, AAD, strlen(AAD), PT, strlen(PT), blob, len), PP_ENVELOPE_OK);
}

static void test_round_trip(void **state)
{
    fixture *f = *state;
    pp_dek dek = {0};
    uint8_t *blob = NULL;
    size_t len = 0;
    seal_one(f, &dek, &blob, &len);
    assert_int_equal(len, PP_NONCE_LEN + strlen(PT) + PP_TAG_LEN);
    assert_null(memmem(blob, len, "Fourth", 6));
    char *pt = NULL;
    size_t ptl = 0;
    assert_int_equal(pp_open(&dek, AAD, strlen(AAD), blob, len, &pt, &ptl), PP_ENVELOPE_OK);
    assert_int_equal(ptl, strlen(PT));
    assert_string_equal(pt, PT);
    free(pt);

    /* two seals of the same text differ (random nonce) */
    uint8_t *blob2 = NULL;
    size_t len2 = 0;
    assert_int_equal(pp_seal(&dek, AAD, strlen(AAD), PT, strlen(PT), &blob2, &len2),
                     PP_ENVELOPE_OK);
    assert_int_equal(len2, len);
    assert_memory_not_equal(blob, blob2, PP_NONCE_LEN);

    /* empty plaintext round-trips too */
    uint8_t *eb = NULL;
    size_t el = 0;
    assert_int_equal(pp_seal(&dek, AAD, strlen(AAD), "", 0, &eb, &el), PP_ENVELOPE_OK);
    assert_int_equal(pp_open(&dek, AAD, strlen(AAD), eb, el, &pt, &ptl), PP_ENVELOPE_OK);
    assert_int_equal(ptl, 0);
    free(pt);
    free(eb);
    free(blob2);
    free(blob);
    pp_dek_wipe(&dek);
}

static void test_tamper_every_byte(void **state)
{
    fixture *f = *state;
    pp_dek dek = {0};
    uint8_t *blob = NULL;
    size_t len = 0;
    seal_one(f, &dek, &blob, &len);
    for (size_t i = 0; i < len; i++) {
        blob[i] ^= 0x01;
        char *pt = (char *)0x1;
        size_t ptl = 99;
        pp_envelope_status st = pp_open(&dek, AAD, strlen(AAD), blob, len, &pt, &ptl);
        if (st != PP_ENVELOPE_ERR_AUTH)
            fail_msg("byte %zu (%s) tampered: status %d", i,
                     i < PP_NONCE_LEN       ? "nonce"
                     : i < len - PP_TAG_LEN ? "ciphertext"
                                            : "tag",
                     (int)st);
        assert_null(pt);
        assert_int_equal(ptl, 0);
        blob[i] ^= 0x01;
    }
    /* truncated and empty blobs */
    char *pt = NULL;
    size_t ptl = 0;
    assert_int_equal(pp_open(&dek, AAD, strlen(AAD), blob, len - 1, &pt, &ptl),
                     PP_ENVELOPE_ERR_AUTH);
    assert_int_equal(
        pp_open(&dek, AAD, strlen(AAD), blob, PP_NONCE_LEN + PP_TAG_LEN - 1, &pt, &ptl),
        PP_ENVELOPE_ERR_AUTH);
    assert_null(pt);
    free(blob);
    pp_dek_wipe(&dek);
}

static void test_wrong_aad(void **state)
{
    fixture *f = *state;
    pp_dek dek = {0};
    uint8_t *blob = NULL;
    size_t len = 0;
    seal_one(f, &dek, &blob, &len);
    char aad[200];
    const char *cases[][3] = {
        {"11111111-2222-4333-8444-555555555555", "contacts",
         "66666666-7777-4888-9999-000000000000"},
        {"11111111-2222-4333-8444-555555555556", "accounts",
         "66666666-7777-4888-9999-000000000000"},
        {"11111111-2222-4333-8444-555555555555", "accounts",
         "66666666-7777-4888-9999-000000000001"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_true(pp_record_aad(cases[i][0], cases[i][1], cases[i][2], aad, sizeof aad));
        char *pt = NULL;
        size_t ptl = 0;
        assert_int_equal(pp_open(&dek, aad, strlen(aad), blob, len, &pt, &ptl),
                         PP_ENVELOPE_ERR_AUTH);
        assert_null(pt);
    }
    char *pt = NULL;
    size_t ptl = 0;
    assert_int_equal(pp_open(&dek, NULL, 0, blob, len, &pt, &ptl), PP_ENVELOPE_ERR_AUTH);
    assert_false(pp_record_aad("a", "b", "c", aad, 5));

    /* another data key does not open it either */
    pp_dek other = {0};
    uint8_t *b2 = NULL;
    size_t l2 = 0;
    seal_one(f, &other, &b2, &l2);
    assert_int_equal(pp_open(&other, AAD, strlen(AAD), blob, len, &pt, &ptl), PP_ENVELOPE_ERR_AUTH);
    free(b2);
    free(blob);
    pp_dek_wipe(&other);
    pp_dek_wipe(&dek);
}

static void test_wrap_unwrap_and_wipe(void **state)
{
    fixture *f = *state;
    pp_dek dek = {0}, again = {0};
    uint8_t wrapped[PP_WRAPPED_MAX];
    size_t wl = 0;
    char err[256] = "";
    assert_int_equal(pp_dek_create(f->fx->hsm, &f->w, &dek, wrapped, &wl, err, sizeof err),
                     PP_ENVELOPE_OK);
    assert_true(dek.loaded);
    /* the wrapped form is not the key */
    assert_null(memmem(wrapped, wl, dek.bytes, 8));
    assert_int_equal(pp_dek_unwrap(&f->w, wrapped, wl, &again, err, sizeof err), PP_ENVELOPE_OK);
    assert_true(again.loaded);
    assert_memory_equal(dek.bytes, again.bytes, PP_DEK_LEN);

    uint8_t *blob = NULL;
    size_t len = 0;
    assert_int_equal(pp_seal(&dek, AAD, strlen(AAD), PT, strlen(PT), &blob, &len), PP_ENVELOPE_OK);
    char *pt = NULL;
    size_t ptl = 0;
    assert_int_equal(pp_open(&again, AAD, strlen(AAD), blob, len, &pt, &ptl), PP_ENVELOPE_OK);
    free(pt);

    /* wipe: bytes zero, key unusable */
    pp_dek_wipe(&again);
    static const uint8_t zero[PP_DEK_LEN];
    assert_false(again.loaded);
    assert_memory_equal(again.bytes, zero, PP_DEK_LEN);
    assert_int_equal(pp_open(&again, AAD, strlen(AAD), blob, len, &pt, &ptl), PP_ENVELOPE_ERR_ARGS);
    assert_null(pt);
    uint8_t *b2 = NULL;
    size_t l2 = 0;
    assert_int_equal(pp_seal(&again, AAD, strlen(AAD), PT, strlen(PT), &b2, &l2),
                     PP_ENVELOPE_ERR_ARGS);
    assert_null(b2);
    pp_dek_wipe(NULL);

    /* a tampered wrapped key does not unwrap (and leaves the key unloaded) */
    wrapped[wl / 2] ^= 0x40;
    assert_int_equal(pp_dek_unwrap(&f->w, wrapped, wl, &again, err, sizeof err),
                     PP_ENVELOPE_ERR_WRAP);
    assert_false(again.loaded);
    assert_true(strstr(err, "unwrap") != NULL);
    free(blob);
    pp_dek_wipe(&dek);
}

static void test_platform_key_found_again(void **state)
{
    fixture *f = *state;
    pp_platform_key k2;
    char err[256] = "";
    assert_true(pp_platform_key_ensure(f->fx->store, f->fx->hsm, &k2, err, sizeof err));
    assert_memory_equal(k2.id, f->pk.id, HSM_ID_LEN);
}

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->fx = cmk_fixture_new("test_envelope", NULL, 0);
    *state = f;
    if (!f->fx)
        return -1;
    char err[512] = "";
    if (!pp_platform_key_ensure(f->fx->store, f->fx->hsm, &f->pk, err, sizeof err)) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    f->w = pp_platform_key_wrapper(&f->pk);
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;
    if (!f)
        return 0;
    cmk_fixture_free(f->fx);
    free(f);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_tamper_every_byte),
        cmocka_unit_test(test_wrong_aad),
        cmocka_unit_test(test_wrap_unwrap_and_wipe),
        cmocka_unit_test(test_platform_key_found_again),
    };
    return cmocka_run_group_tests_name("envelope", tests, group_setup, group_teardown);
}
