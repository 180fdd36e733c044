/*
 * test_kv: the Key Vault key domain without HTTP, on a real SoftHSM token in a fresh data
 * directory under $CMK_TEST_TMP (else /tmp), removed at the end (CMK_TEST_KEEP=1 keeps it).
 *
 * The group fixture opens hsm + store + kv once and creates four vaults:
 *   pp90  soft delete, purge protection, 90 days, the default vault
 *   sd7   soft delete, no purge protection, 7 days
 *   nosd  soft delete off
 *   listv soft delete, 90 days, no purge protection (only the listing test puts keys here)
 * Tests run in the listed order and some build on keys made by earlier ones (the persistence
 * test at the end checks what the others left). RSA generation costs ~250 ms, so the whole run
 * makes 21 key pairs.
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

#include <jansson.h>

#include "clock.h"
#include "fixture.h"
#include "fsck.h"
#include "hsm.h"
#include "keyvault/kv.h"
#include "log.h"
#include "store.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))
#define DAY 86400LL

typedef struct {
    char root[PATH_MAX];
    char db[PATH_MAX + 16];
    hsm_t *hsm;
    emu_store *store;
    kv_t *kv;
    int generated; /* key pairs generated so far (budget check) */

    /* left by earlier tests for the persistence test */
    uint8_t cry_plain[32];
    uint8_t cry_ct[512];
    size_t cry_ct_len;
} fixture;

/* ---------------------------------------------------------------------------------------- */
/* helpers                                                                                   */

static int open_all(fixture *f)
{
    char err[512];
    hsm_config hc = {.data_dir = f->root};
    hsm_status hs = hsm_open(&hc, &f->hsm, err, sizeof err);
    if (hs != HSM_OK) {
        fprintf(stderr, "hsm_open(%s): %s: %s\n", f->root, hsm_status_str(hs), err);
        return -1;
    }
    f->store = emu_store_open(f->db, err, sizeof err);
    if (!f->store) {
        fprintf(stderr, "emu_store_open(%s): %s\n", f->db, err);
        return -1;
    }
    f->kv = kv_open(f->store, f->hsm, err, sizeof err);
    if (!f->kv) {
        fprintf(stderr, "kv_open: %s\n", err);
        return -1;
    }
    return 0;
}

static void close_all(fixture *f)
{
    kv_close(f->kv);
    f->kv = NULL;
    /* kv_open registered a clock hook holding the kv pointer */
    emu_clock_hooks_clear();
    emu_store_close(f->store);
    f->store = NULL;
    hsm_close(f->hsm);
    f->hsm = NULL;
}

static const kv_create_params RSA2048 = {.bits = 2048};

static void create_key(fixture *f, const char *vault, const char *name, const kv_create_params *p,
                       kv_key_view *out)
{
    kv_err e = {{0}};
    kv_status st = kv_key_create(f->kv, vault, name, p ? p : &RSA2048, out, &e);
    f->generated++;
    if (st != KV_OK)
        fail_msg("kv_key_create(%s/%s): %s: %s", vault, name, kv_status_str(st), e.msg);
}

static kv_status get_key(fixture *f, const char *vault, const char *name, const char *version,
                         kv_key_view *out)
{
    kv_err e = {{0}};
    kv_key_view tmp;
    kv_status st = kv_key_get(f->kv, vault, name, version, out ? out : &tmp, &e);
    if (st == KV_OK && !out)
        kv_key_view_cleanup(&tmp);
    if (st != KV_OK)
        assert_true(e.msg[0] != '\0');
    return st;
}

static kv_status deleted_get(fixture *f, const char *vault, const char *name, kv_key_view *out)
{
    kv_err e = {{0}};
    kv_key_view tmp;
    kv_status st = kv_deleted_get(f->kv, vault, name, out ? out : &tmp, &e);
    if (st == KV_OK && !out)
        kv_key_view_cleanup(&tmp);
    return st;
}

/* One crypt call: in -> out; returns the status. */
static kv_status do_crypt(fixture *f, const char *vault, const char *name, const char *version,
                          kv_crypt_op op, hsm_rsa_enc_alg alg, const uint8_t *in, size_t in_len,
                          uint8_t *out, size_t *out_len)
{
    kv_err e = {{0}};
    char ver[33] = "";
    kv_status st =
        kv_key_crypt(f->kv, vault, name, version, op, alg, in, in_len, out, out_len, ver, &e);
    if (st != KV_OK)
        assert_true(e.msg[0] != '\0');
    else
        assert_int_equal(strlen(ver), 32);
    return st;
}

static kv_status do_sign(fixture *f, const char *vault, const char *name, hsm_sig_alg alg,
                         const uint8_t *digest, size_t dlen, uint8_t *sig, size_t *sig_len)
{
    kv_err e = {{0}};
    char ver[33];
    return kv_key_sign(f->kv, vault, name, "", alg, digest, dlen, sig, sig_len, ver, &e);
}

static kv_status do_verify(fixture *f, const char *vault, const char *name, hsm_sig_alg alg,
                           const uint8_t *digest, size_t dlen, const uint8_t *sig, size_t sig_len,
                           bool *valid)
{
    kv_err e = {{0}};
    char ver[33];
    return kv_key_verify(f->kv, vault, name, "", alg, digest, dlen, sig, sig_len, valid, ver, &e);
}

static size_t version_count(fixture *f, const char *vault, const char *name)
{
    kv_key_view views[16];
    size_t n = 0;
    bool more = false;
    kv_err e = {{0}};
    kv_status st = kv_key_versions(f->kv, vault, name, 0, 16, views, &n, &more, &e);
    if (st != KV_OK)
        fail_msg("kv_key_versions(%s/%s): %s", vault, name, kv_status_str(st));
    for (size_t i = 0; i < n; i++)
        kv_key_view_cleanup(&views[i]);
    assert_false(more);
    return n;
}

static bool is_version_id(const char *v)
{
    if (strlen(v) != 32)
        return false;
    for (size_t i = 0; i < 32; i++)
        if (!strchr("0123456789abcdef", v[i]))
            return false;
    return true;
}

static json_t *jparse(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j)
        fail_msg("bad test JSON '%s': %s", text, je.text);
    return j;
}

/* The lifetime action of the given type in a policy, or NULL. */
static json_t *policy_action(const json_t *policy, const char *type)
{
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(policy, "lifetimeActions"), i, a)
    {
        const char *t = json_string_value(json_object_get(json_object_get(a, "action"), "type"));
        if (t && !strcmp(t, type))
            return a;
    }
    return NULL;
}

static const char *trigger_value(const json_t *action, const char *field)
{
    return json_string_value(json_object_get(json_object_get(action, "trigger"), field));
}

static void fill_bytes(uint8_t *b, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(seed + i * 7);
}

/* Key pairs kept: in the token, or sealed with their blob in the store. */
static size_t token_pairs(fixture *f)
{
    size_t n = cmk_test_stored_keys(kv_hsm(f->kv), f->store);
    assert_true(n != (size_t)-1);
    return n;
}

static int reset_clock(void **state)
{
    (void)state;
    emu_clock_set_offset(0);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* fixture                                                                                   */

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    if (!cmk_test_mkdtemp("test_kv", f->root, sizeof f->root)) {
        free(f);
        return -1;
    }
    snprintf(f->db, sizeof f->db, "%s/kv.db", f->root);
    emu_clock_set_offset(0);
    emu_clock_hooks_clear();
    if (open_all(f) != 0)
        return -1;
    static const kv_vault_info vaults[] = {
        {.name = "pp90",
         .is_default = true,
         .soft_delete = true,
         .retention_days = 90,
         .purge_protection = true,
         .tenant = "t1"},
        {.name = "sd7", .soft_delete = true, .retention_days = 7, .tenant = "t1"},
        {.name = "nosd", .soft_delete = false, .retention_days = 90, .tenant = "t1"},
        {.name = "listv", .soft_delete = true, .retention_days = 90, .tenant = "t1"},
    };
    for (size_t i = 0; i < N_ELEMS(vaults); i++) {
        kv_err e = {{0}};
        kv_status st = kv_vault_create(f->kv, &vaults[i], &e);
        if (st != KV_OK) {
            fprintf(stderr, "kv_vault_create(%s): %s: %s\n", vaults[i].name, kv_status_str(st),
                    e.msg);
            return -1;
        }
    }
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;
    if (!f)
        return 0;
    emu_clock_set_offset(0);
    close_all(f);
    fprintf(stderr, "test_kv: %d key pairs generated\n", f->generated);
    if (!getenv("CMK_TEST_KEEP"))
        cmk_test_rm_rf(f->root);
    free(f);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* vaults                                                                                    */

static void vaults_created_and_validated(void **state)
{
    fixture *f = *state;
    char def[64];
    assert_true(kv_vault_default(f->kv, def, sizeof def));
    assert_string_equal(def, "pp90");
    assert_int_equal(kv_vault_count(f->kv), 4);

    kv_vault_info vi;
    assert_int_equal(kv_vault_get(f->kv, "SD7", &vi), KV_OK);
    assert_string_equal(vi.name, "sd7");
    assert_int_equal(vi.retention_days, 7);
    assert_true(vi.soft_delete);
    assert_false(vi.purge_protection);
    assert_true(vi.created > 0);
    assert_int_equal(kv_vault_get(f->kv, "nope", &vi), KV_ERR_VAULT_NOT_FOUND);

    static const struct {
        kv_vault_info info;
        kv_status want;
    } bad[] = {
        {{.name = "ab", .soft_delete = true, .retention_days = 90}, KV_ERR_BAD_PARAM},
        {{.name = "1abc", .soft_delete = true, .retention_days = 90}, KV_ERR_BAD_PARAM},
        {{.name = "a--b", .soft_delete = true, .retention_days = 90}, KV_ERR_BAD_PARAM},
        {{.name = "abc-", .soft_delete = true, .retention_days = 90}, KV_ERR_BAD_PARAM},
        {{.name = "a_bc", .soft_delete = true, .retention_days = 90}, KV_ERR_BAD_PARAM},
        {{.name = "abcdefghijklmnopqrstuvwxy", .soft_delete = true, .retention_days = 90},
         KV_ERR_BAD_PARAM},
        {{.name = "okname", .soft_delete = true, .retention_days = 6}, KV_ERR_BAD_PARAM},
        {{.name = "okname", .soft_delete = true, .retention_days = 91}, KV_ERR_BAD_PARAM},
        {{.name = "SD7", .soft_delete = true, .retention_days = 7}, KV_ERR_VAULT_EXISTS},
        {{.name = "second", .is_default = true, .soft_delete = true, .retention_days = 90},
         KV_ERR_CONFLICT},
    };
    for (size_t i = 0; i < N_ELEMS(bad); i++) {
        kv_err e = {{0}};
        kv_status st = kv_vault_create(f->kv, &bad[i].info, &e);
        if (st != bad[i].want)
            fail_msg("vault '%s': %s, want %s", bad[i].info.name, kv_status_str(st),
                     kv_status_str(bad[i].want));
        assert_true(e.msg[0] != '\0');
    }
    assert_int_equal(kv_vault_count(f->kv), 4);
}

/* ---------------------------------------------------------------------------------------- */
/* lifecycle                                                                                 */

static void key_create_get_versions(void **state)
{
    fixture *f = *state;
    int64_t t0 = emu_clock_now();
    kv_key_view v1, v2, g;
    create_key(f, "sd7", "Life-Key", NULL, &v1);
    int64_t t1 = emu_clock_now();
    assert_string_equal(v1.vault, "sd7");
    assert_string_equal(v1.name, "Life-Key");
    assert_true(is_version_id(v1.version));
    assert_string_equal(v1.kty, "RSA");
    assert_int_equal(v1.bits, 2048);
    assert_int_equal(v1.n_len, 256);
    assert_true(v1.n[0] & 0x80);
    assert_int_equal(v1.e_len, 3);
    assert_memory_equal(v1.e, "\x01\x00\x01", 3);
    assert_int_equal(v1.ops, KV_OPS_RSA_DEFAULT);
    assert_true(v1.enabled);
    assert_int_equal(v1.nbf, 0);
    assert_int_equal(v1.exp, 0);
    assert_true(v1.created >= t0 && v1.created <= t1);
    assert_int_equal(v1.updated, v1.created);
    assert_null(v1.tags);
    assert_false(v1.deleted);
    assert_false(v1.managed);

    /* latest and by version; names case-insensitive, the name keeps its case */
    assert_int_equal(get_key(f, "sd7", "Life-Key", "", &g), KV_OK);
    assert_string_equal(g.version, v1.version);
    kv_key_view_cleanup(&g);
    assert_int_equal(get_key(f, "SD7", "LIFE-KEY", NULL, &g), KV_OK);
    assert_string_equal(g.name, "Life-Key");
    assert_string_equal(g.version, v1.version);
    kv_key_view_cleanup(&g);
    assert_int_equal(get_key(f, "sd7", "life-key", v1.version, &g), KV_OK);
    assert_memory_equal(g.n, v1.n, 256);
    kv_key_view_cleanup(&g);

    /* a second create gives a second version (here an RSA-HSM one) that becomes latest */
    kv_create_params hsm3072 = {.hsm = true, .bits = 3072};
    create_key(f, "sd7", "life-key", &hsm3072, &v2);
    assert_true(is_version_id(v2.version));
    assert_string_not_equal(v2.version, v1.version);
    assert_string_equal(v2.name, "Life-Key"); /* the name as first created */
    assert_string_equal(v2.kty, "RSA-HSM");
    assert_int_equal(v2.bits, 3072);
    assert_int_equal(v2.n_len, 384);
    assert_int_equal(get_key(f, "sd7", "Life-Key", "", &g), KV_OK);
    assert_string_equal(g.version, v2.version);
    kv_key_view_cleanup(&g);
    assert_int_equal(get_key(f, "sd7", "Life-Key", v1.version, &g), KV_OK);
    assert_string_equal(g.kty, "RSA");
    kv_key_view_cleanup(&g);

    /* versions paging in creation order */
    kv_key_view page[4];
    size_t n = 99;
    bool more = false;
    kv_err e = {{0}};
    assert_int_equal(kv_key_versions(f->kv, "sd7", "Life-Key", 0, 1, page, &n, &more, &e), KV_OK);
    assert_int_equal(n, 1);
    assert_true(more);
    assert_string_equal(page[0].version, v1.version);
    kv_key_view_cleanup(&page[0]);
    assert_int_equal(kv_key_versions(f->kv, "sd7", "Life-Key", 1, 1, page, &n, &more, &e), KV_OK);
    assert_int_equal(n, 1);
    assert_false(more);
    assert_string_equal(page[0].version, v2.version);
    kv_key_view_cleanup(&page[0]);
    assert_int_equal(kv_key_versions(f->kv, "sd7", "LIFE-KEY", 0, 4, page, &n, &more, &e), KV_OK);
    assert_int_equal(n, 2);
    assert_false(more);
    for (size_t i = 0; i < n; i++)
        kv_key_view_cleanup(&page[i]);
    assert_int_equal(kv_key_versions(f->kv, "sd7", "Life-Key", 2, 4, page, &n, &more, &e), KV_OK);
    assert_int_equal(n, 0);
    assert_false(more);
    assert_int_equal(kv_key_versions(f->kv, "sd7", "nokey", 0, 4, page, &n, &more, &e),
                     KV_ERR_KEY_NOT_FOUND);

    /* unknown version ids, unknown names, unknown vault */
    assert_int_equal(get_key(f, "sd7", "Life-Key", "00000000000000000000000000000000", NULL),
                     KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(get_key(f, "sd7", "Life-Key", "abc", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(get_key(f, "sd7", "Life-Keyx", "", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(get_key(f, "pp90", "Life-Key", "", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(get_key(f, "nope", "Life-Key", "", NULL), KV_ERR_VAULT_NOT_FOUND);

    kv_key_view_cleanup(&v1);
    kv_key_view_cleanup(&v2);
}

static void key_list_paging(void **state)
{
    fixture *f = *state;
    kv_key_view v;
    /* created out of order and in mixed case; listed by lowercase name */
    create_key(f, "listv", "c", NULL, &v);
    kv_key_view_cleanup(&v);
    create_key(f, "listv", "A", NULL, &v);
    kv_key_view_cleanup(&v);
    create_key(f, "listv", "b", NULL, &v);
    kv_key_view_cleanup(&v);

    static const struct {
        const char *after;
        size_t max;
        const char *names[3];
        size_t n;
        bool more;
    } pages[] = {
        {"", 2, {"A", "b"}, 2, true},
        {NULL, 2, {"A", "b"}, 2, true},
        {"b", 2, {"c"}, 1, false},
        {"B", 2, {"c"}, 1, false},
        {"a", 1, {"b"}, 1, true},
        {"a0", 5, {"b", "c"}, 2, false}, /* after a name that is not there */
        {"", 3, {"A", "b", "c"}, 3, false},
        {"c", 3, {0}, 0, false},
        {"zzz", 3, {0}, 0, false},
        {"", 0, {0}, 0, true},
    };
    for (size_t i = 0; i < N_ELEMS(pages); i++) {
        kv_key_view out[3];
        size_t n = 99;
        bool more = !pages[i].more;
        kv_err e = {{0}};
        assert_int_equal(
            kv_key_list(f->kv, "listv", pages[i].after, pages[i].max, out, &n, &more, &e), KV_OK);
        if (n != pages[i].n || more != pages[i].more)
            fail_msg("page %zu after '%s' max %zu: n %zu more %d, want n %zu more %d", i,
                     pages[i].after ? pages[i].after : "(null)", pages[i].max, n, more, pages[i].n,
                     pages[i].more);
        for (size_t j = 0; j < n; j++) {
            assert_string_equal(out[j].name, pages[i].names[j]);
            assert_string_equal(out[j].recovery_level, "Recoverable+Purgeable");
            assert_int_equal(out[j].recoverable_days, 90);
            kv_key_view_cleanup(&out[j]);
        }
    }

    /* deleted keys leave the list and show in the deleted list */
    kv_key_view d, out[3];
    size_t n;
    bool more;
    kv_err e = {{0}};
    assert_int_equal(kv_key_delete(f->kv, "listv", "B", &d, &e), KV_OK);
    kv_key_view_cleanup(&d);
    assert_int_equal(kv_key_list(f->kv, "listv", "", 3, out, &n, &more, &e), KV_OK);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].name, "A");
    assert_string_equal(out[1].name, "c");
    kv_key_view_cleanup(&out[0]);
    kv_key_view_cleanup(&out[1]);
    assert_int_equal(kv_deleted_list(f->kv, "listv", "", 3, out, &n, &more, &e), KV_OK);
    assert_int_equal(n, 1);
    assert_false(more);
    assert_string_equal(out[0].name, "b");
    assert_true(out[0].deleted);
    kv_key_view_cleanup(&out[0]);
    assert_int_equal(kv_key_count(f->kv, "listv"), 3); /* live + deleted */

    assert_int_equal(kv_key_list(f->kv, "nope", "", 3, out, &n, &more, &e), KV_ERR_VAULT_NOT_FOUND);
    assert_int_equal(n, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* validation                                                                                */

typedef struct {
    const char *vault;
    const char *name;
    kv_create_params p;
    kv_status want;
} create_case;

static void key_create_validation_table(void **state)
{
    fixture *f = *state;
    static char long128[129];
    memset(long128, 'a', 128);
    long128[128] = '\0';
    int64_t now = emu_clock_now();
    const create_case cases[] = {
        {"sd7", "", {.bits = 2048}, KV_ERR_BAD_PARAM},
        {"sd7", long128, {.bits = 2048}, KV_ERR_BAD_PARAM},
        {"sd7", "a_b", {.bits = 2048}, KV_ERR_BAD_PARAM},
        {"sd7", "a b", {.bits = 2048}, KV_ERR_BAD_PARAM},
        {"sd7", "a/b", {.bits = 2048}, KV_ERR_BAD_PARAM},
        {"sd7", "k\xc3\xa9", {.bits = 2048}, KV_ERR_BAD_PARAM},
        {"sd7", "ok", {.bits = 1024}, KV_ERR_BAD_PARAM},
        {"sd7", "ok", {.bits = 0}, KV_ERR_BAD_PARAM},
        {"sd7", "ok", {.bits = 2047}, KV_ERR_BAD_PARAM},
        {"sd7", "ok", {.bits = 8192}, KV_ERR_BAD_PARAM},
        {"sd7", "ok", {.bits = 2048, .exponent = 4}, KV_ERR_BAD_PARAM},
        {"sd7", "ok", {.bits = 2048, .exponent = 1}, KV_ERR_BAD_PARAM},
        {"sd7", "ok", {.bits = 2048, .nbf = now + 100, .exp = now + 100}, KV_ERR_BAD_PARAM},
        {"sd7", "ok", {.bits = 2048, .nbf = now + 200, .exp = now + 100}, KV_ERR_BAD_PARAM},
        {"nope", "ok", {.bits = 2048}, KV_ERR_VAULT_NOT_FOUND},
        {"", "ok", {.bits = 2048}, KV_ERR_VAULT_NOT_FOUND},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        kv_err e = {{0}};
        kv_key_view v;
        kv_status st = kv_key_create(f->kv, cases[i].vault, cases[i].name, &cases[i].p, &v, &e);
        if (st == KV_OK)
            kv_key_view_cleanup(&v);
        if (st != cases[i].want)
            fail_msg("case %zu (%s/%.20s bits %u): %s, want %s (%s)", i, cases[i].vault,
                     cases[i].name, cases[i].p.bits, kv_status_str(st),
                     kv_status_str(cases[i].want), e.msg);
        assert_true(e.msg[0] != '\0');
    }
    assert_int_equal(get_key(f, "sd7", "ok", "", NULL), KV_ERR_KEY_NOT_FOUND);
}

static void key_ops_parse_table(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        bool ok;
        unsigned mask;
        const char *msg_has;
    } cases[] = {
        {"[]", true, 0, NULL},
        {"[\"wrapKey\",\"unwrapKey\"]", true, KV_OP_WRAP | KV_OP_UNWRAP, NULL},
        {"[\"WRAPKEY\",\"sign\",\"verify\",\"sign\"]", true, KV_OP_WRAP | KV_OP_SIGN | KV_OP_VERIFY,
         NULL},
        {"[\"encrypt\",\"decrypt\",\"sign\",\"verify\",\"wrapKey\",\"unwrapKey\",\"import\","
         "\"export\"]",
         true, 0xff, NULL},
        {"[\"wrapKey\",\"fly\"]", false, 0, "fly"},
        {"[\"\"]", false, 0, NULL},
        {"[1]", false, 0, NULL},
        {"{\"a\":1}", false, 0, NULL},
        {"\"sign\"", false, 0, NULL},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        json_t *j = json_loads(cases[i].json, JSON_DECODE_ANY, NULL);
        assert_non_null(j);
        unsigned mask = 0xdead;
        kv_err e = {{0}};
        bool ok = kv_ops_parse(j, &mask, &e);
        if (ok != cases[i].ok)
            fail_msg("%s: ok %d, want %d", cases[i].json, ok, cases[i].ok);
        if (ok) {
            assert_int_equal(mask, cases[i].mask);
            /* and back: names in canonical spelling, no duplicates */
            json_t *back = kv_ops_json(mask);
            unsigned again = 0;
            assert_true(kv_ops_parse(back, &again, &e));
            assert_int_equal(again, mask);
            assert_int_equal(json_array_size(back), (size_t)__builtin_popcount(mask));
            json_decref(back);
        } else {
            assert_true(e.msg[0] != '\0');
            if (cases[i].msg_has)
                assert_non_null(strstr(e.msg, cases[i].msg_has));
        }
        json_decref(j);
    }
    json_t *names = kv_ops_json(KV_OP_WRAP | KV_OP_UNWRAP);
    assert_string_equal(json_string_value(json_array_get(names, 0)), "wrapKey");
    assert_string_equal(json_string_value(json_array_get(names, 1)), "unwrapKey");
    json_decref(names);
}

/* Key names are at most 127 characters; a longer name must never find a key. */
static void key_lookup_with_overlong_name_is_not_found(void **state)
{
    fixture *f = *state;
    char name127[128], name128[129], name200[201];
    memset(name127, 'k', 127);
    name127[127] = '\0';
    kv_key_view v;
    create_key(f, "nosd", name127, NULL, &v);
    assert_string_equal(v.name, name127);
    kv_key_view_cleanup(&v);
    assert_int_equal(get_key(f, "nosd", name127, "", NULL), KV_OK);

    snprintf(name128, sizeof name128, "%sx", name127);
    memset(name200, 'k', 200);
    name200[200] = '\0';
    kv_status st128 = get_key(f, "nosd", name128, "", NULL);
    kv_status st200 = get_key(f, "nosd", name200, "", NULL);
    /* clean up before asserting so later tests see an empty nosd vault */
    kv_err e = {{0}};
    assert_int_equal(kv_key_delete(f->kv, "nosd", name127, &v, &e), KV_OK);
    kv_key_view_cleanup(&v);
    if (st128 != KV_ERR_KEY_NOT_FOUND || st200 != KV_ERR_KEY_NOT_FOUND)
        fail_msg("kv_key_get with a 128-char name: %s, with a 200-char name: %s; both should be "
                 "'key not found' (the lookup truncates names to 127 characters and finds the "
                 "127-char key)",
                 kv_status_str(st128), kv_status_str(st200));
}

/* ---------------------------------------------------------------------------------------- */
/* update and the rules of crypto operations                                                 */

static void key_update_rules(void **state)
{
    fixture *f = *state;
    json_t *tags = jparse("{\"a\":\"1\"}");
    kv_create_params p = {.bits = 2048, .tags = tags};
    kv_key_view v, u;
    create_key(f, "sd7", "upd", &p, &v);
    json_decref(tags);
    assert_non_null(v.tags);
    assert_string_equal(json_string_value(json_object_get(v.tags, "a")), "1");

    uint8_t plain[32], ct_wrap[512], ct_enc[512], out[512], digest[32], sig[512], sig2[512];
    size_t wl, el, ol, sl;
    fill_bytes(plain, sizeof plain, 3);
    fill_bytes(digest, sizeof digest, 9);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256, plain, 32, ct_wrap, &wl),
        KV_OK);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_ENCRYPT, HSM_RSA_OAEP_SHA1, plain, 32, ct_enc, &el),
        KV_OK);
    assert_int_equal(do_sign(f, "sd7", "upd", HSM_RS256, digest, 32, sig, &sl), KV_OK);

    kv_err e = {{0}};
    /* tags: an object replaces them; NULL leaves them */
    json_t *t2 = jparse("{\"b\":\"2\"}");
    kv_update_params up = {.tags = t2};
    assert_int_equal(kv_key_update(f->kv, "sd7", "upd", "", &up, &u, &e), KV_OK);
    json_decref(t2);
    assert_int_equal(json_object_size(u.tags), 1);
    assert_null(json_object_get(u.tags, "a"));
    assert_string_equal(json_string_value(json_object_get(u.tags, "b")), "2");
    assert_true(u.updated >= v.created);
    assert_int_equal(u.created, v.created);
    kv_key_view_cleanup(&u);
    kv_update_params none = {0};
    assert_int_equal(kv_key_update(f->kv, "sd7", "UPD", v.version, &none, &u, &e), KV_OK);
    assert_string_equal(json_string_value(json_object_get(u.tags, "b")), "2");
    assert_true(u.enabled);
    assert_int_equal(u.ops, KV_OPS_RSA_DEFAULT);
    kv_key_view_cleanup(&u);
    assert_int_equal(get_key(f, "sd7", "upd", "", &u), KV_OK);
    assert_int_equal(json_object_size(u.tags), 1);
    kv_key_view_cleanup(&u);

    /* disabled: every operation refused */
    kv_update_params dis = {.has_enabled = true, .enabled = false};
    assert_int_equal(kv_key_update(f->kv, "sd7", "upd", "", &dis, &u, &e), KV_OK);
    assert_false(u.enabled);
    kv_key_view_cleanup(&u);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256, plain, 32, out, &ol),
        KV_ERR_DISABLED);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_DECRYPT, HSM_RSA_OAEP_SHA1, ct_enc, el, out, &ol),
        KV_ERR_DISABLED);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA256, ct_wrap, wl, out, &ol),
        KV_ERR_DISABLED);
    assert_int_equal(do_sign(f, "sd7", "upd", HSM_RS256, digest, 32, sig2, &ol), KV_ERR_DISABLED);
    kv_update_params en = {.has_enabled = true, .enabled = true};
    assert_int_equal(kv_key_update(f->kv, "sd7", "upd", "", &en, &u, &e), KV_OK);
    kv_key_view_cleanup(&u);

    /* key_ops without wrapKey (and without sign) */
    kv_update_params ops = {.has_ops = true,
                            .ops = KV_OP_ENCRYPT | KV_OP_DECRYPT | KV_OP_UNWRAP | KV_OP_VERIFY};
    assert_int_equal(kv_key_update(f->kv, "sd7", "upd", "", &ops, &u, &e), KV_OK);
    assert_int_equal(u.ops, ops.ops);
    kv_key_view_cleanup(&u);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256, plain, 32, out, &ol),
        KV_ERR_OP_NOT_ALLOWED);
    assert_int_equal(do_sign(f, "sd7", "upd", HSM_RS256, digest, 32, sig2, &ol),
                     KV_ERR_OP_NOT_ALLOWED);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_ENCRYPT, HSM_RSA_OAEP_SHA1, plain, 32, out, &ol),
        KV_OK);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA256, ct_wrap, wl, out, &ol),
        KV_OK);
    assert_int_equal(ol, 32);
    assert_memory_equal(out, plain, 32);
    kv_update_params allops = {.has_ops = true, .ops = KV_OPS_RSA_DEFAULT};
    assert_int_equal(kv_key_update(f->kv, "sd7", "upd", "", &allops, &u, &e), KV_OK);
    kv_key_view_cleanup(&u);

    /* expired: wrap, encrypt and sign refused; unwrap, decrypt and verify still work */
    int64_t now = emu_clock_now();
    kv_update_params ex = {.has_exp = true, .exp = now - 60};
    assert_int_equal(kv_key_update(f->kv, "sd7", "upd", "", &ex, &u, &e), KV_OK);
    assert_int_equal(u.exp, now - 60);
    kv_key_view_cleanup(&u);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256, plain, 32, out, &ol),
        KV_ERR_EXPIRED);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_ENCRYPT, HSM_RSA_OAEP_SHA1, plain, 32, out, &ol),
        KV_ERR_EXPIRED);
    assert_int_equal(do_sign(f, "sd7", "upd", HSM_RS256, digest, 32, sig2, &ol), KV_ERR_EXPIRED);
    memset(out, 0, sizeof out);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA256, ct_wrap, wl, out, &ol),
        KV_OK);
    assert_int_equal(ol, 32);
    assert_memory_equal(out, plain, 32);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_DECRYPT, HSM_RSA_OAEP_SHA1, ct_enc, el, out, &ol),
        KV_OK);
    assert_memory_equal(out, plain, 32);
    bool valid = false;
    assert_int_equal(do_verify(f, "sd7", "upd", HSM_RS256, digest, 32, sig, sl, &valid), KV_OK);
    assert_true(valid);

    /* nbf must stay before exp */
    kv_update_params badnbf = {.has_nbf = true, .nbf = now};
    assert_int_equal(kv_key_update(f->kv, "sd7", "upd", "", &badnbf, &u, &e), KV_ERR_BAD_PARAM);
    assert_int_equal(get_key(f, "sd7", "upd", "", &u), KV_OK);
    assert_int_equal(u.nbf, 0); /* refused update changed nothing */
    assert_int_equal(u.exp, now - 60);
    kv_key_view_cleanup(&u);

    /* not yet valid: exp cleared, nbf in the future */
    kv_update_params nbf = {.has_exp = true, .exp = 0, .has_nbf = true, .nbf = now + 3600};
    assert_int_equal(kv_key_update(f->kv, "sd7", "upd", "", &nbf, &u, &e), KV_OK);
    assert_int_equal(u.exp, 0);
    assert_int_equal(u.nbf, now + 3600);
    kv_key_view_cleanup(&u);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256, plain, 32, out, &ol),
        KV_ERR_NOT_YET_VALID);
    assert_int_equal(do_sign(f, "sd7", "upd", HSM_RS256, digest, 32, sig2, &ol),
                     KV_ERR_NOT_YET_VALID);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA256, ct_wrap, wl, out, &ol),
        KV_OK);
    /* clearing nbf makes it usable again */
    kv_update_params clr = {.has_nbf = true, .nbf = 0};
    assert_int_equal(kv_key_update(f->kv, "sd7", "upd", "", &clr, &u, &e), KV_OK);
    kv_key_view_cleanup(&u);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256, plain, 32, out, &ol),
        KV_OK);

    /* unknown key / version */
    assert_int_equal(kv_key_update(f->kv, "sd7", "nokey", "", &none, &u, &e), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(
        kv_key_update(f->kv, "sd7", "upd", "0123456789abcdef0123456789abcdef", &none, &u, &e),
        KV_ERR_KEY_NOT_FOUND);
    kv_key_view_cleanup(&v);
}

/* ---------------------------------------------------------------------------------------- */
/* crypto                                                                                    */

static void key_crypto_roundtrip(void **state)
{
    fixture *f = *state;
    kv_key_view v;
    create_key(f, "sd7", "cry", NULL, &v);
    static const hsm_rsa_enc_alg algs[] = {HSM_RSA_OAEP_SHA1, HSM_RSA_OAEP_SHA256, HSM_RSA_PKCS1};
    static const struct {
        kv_crypt_op fwd, back;
    } pairs[] = {{KV_CRYPT_ENCRYPT, KV_CRYPT_DECRYPT}, {KV_CRYPT_WRAP, KV_CRYPT_UNWRAP}};
    uint8_t plain[32], ct[512], out[512];
    size_t cl, ol;
    for (size_t a = 0; a < N_ELEMS(algs); a++) {
        for (size_t p = 0; p < N_ELEMS(pairs); p++) {
            fill_bytes(plain, sizeof plain, (uint8_t)(a * 16 + p));
            kv_err e = {{0}};
            char ver[33] = "";
            kv_status st = kv_key_crypt(f->kv, "sd7", "cry", "", pairs[p].fwd, algs[a], plain, 32,
                                        ct, &cl, ver, &e);
            if (st != KV_OK)
                fail_msg("alg %d op %d: %s: %s", algs[a], pairs[p].fwd, kv_status_str(st), e.msg);
            assert_int_equal(cl, 256);
            assert_string_equal(ver, v.version);
            memset(out, 0, sizeof out);
            st = kv_key_crypt(f->kv, "sd7", "cry", v.version, pairs[p].back, algs[a], ct, cl, out,
                              &ol, ver, &e);
            if (st != KV_OK)
                fail_msg("alg %d op %d: %s: %s", algs[a], pairs[p].back, kv_status_str(st), e.msg);
            assert_int_equal(ol, 32);
            assert_memory_equal(out, plain, 32);
            assert_string_equal(ver, v.version);
        }
    }
    /* kept for the persistence test */
    fill_bytes(f->cry_plain, sizeof f->cry_plain, 77);
    assert_int_equal(do_crypt(f, "sd7", "cry", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA1, f->cry_plain,
                              32, f->cry_ct, &f->cry_ct_len),
                     KV_OK);

    /* bad inputs: wrong ciphertext length, tampered OAEP ciphertext, too long plaintext */
    assert_int_equal(
        do_crypt(f, "sd7", "cry", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA1, f->cry_ct, 255, out, &ol),
        KV_ERR_BAD_PARAM);
    memcpy(ct, f->cry_ct, 256);
    ct[100] ^= 0x01;
    assert_int_equal(
        do_crypt(f, "sd7", "cry", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA1, ct, 256, out, &ol),
        KV_ERR_BAD_PARAM);
    /* a ciphertext made with OAEP-SHA1 does not decode as OAEP-SHA256 */
    assert_int_equal(do_crypt(f, "sd7", "cry", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA256, f->cry_ct,
                              256, out, &ol),
                     KV_ERR_BAD_PARAM);
    uint8_t big[215];
    fill_bytes(big, sizeof big, 1);
    assert_int_equal(
        do_crypt(f, "sd7", "cry", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA1, big, 215, out, &ol),
        KV_ERR_BAD_PARAM); /* OAEP-SHA1 with 2048 bits takes at most 214 bytes */
    assert_int_equal(
        do_crypt(f, "sd7", "cry", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA1, big, 214, out, &ol), KV_OK);
    assert_int_equal(
        do_crypt(f, "nope", "cry", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA1, plain, 32, out, &ol),
        KV_ERR_VAULT_NOT_FOUND);
    assert_int_equal(
        do_crypt(f, "sd7", "nokey", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA1, plain, 32, out, &ol),
        KV_ERR_KEY_NOT_FOUND);

    /* sign and verify */
    static const struct {
        hsm_sig_alg alg;
        size_t dlen;
    } sigs[] = {{HSM_RS256, 32}, {HSM_RS384, 48}, {HSM_PS256, 32}, {HSM_PS512, 64}};
    for (size_t i = 0; i < N_ELEMS(sigs); i++) {
        uint8_t digest[80], sig[512], sig2[512];
        size_t sl = 0;
        bool valid = false;
        fill_bytes(digest, sizeof digest, (uint8_t)(40 + i));
        assert_int_equal(do_sign(f, "sd7", "cry", sigs[i].alg, digest, sigs[i].dlen, sig, &sl),
                         KV_OK);
        assert_int_equal(sl, 256);
        assert_int_equal(
            do_verify(f, "sd7", "cry", sigs[i].alg, digest, sigs[i].dlen, sig, sl, &valid), KV_OK);
        assert_true(valid);
        /* wrong digest length */
        assert_int_equal(do_sign(f, "sd7", "cry", sigs[i].alg, digest, sigs[i].dlen - 1, sig2, &sl),
                         KV_ERR_BAD_PARAM);
        assert_int_equal(
            do_verify(f, "sd7", "cry", sigs[i].alg, digest, sigs[i].dlen + 1, sig, 256, &valid),
            KV_ERR_BAD_PARAM);
        /* tampered signature, other digest */
        sig[10] ^= 0x80;
        valid = true;
        assert_int_equal(
            do_verify(f, "sd7", "cry", sigs[i].alg, digest, sigs[i].dlen, sig, 256, &valid), KV_OK);
        assert_false(valid);
        sig[10] ^= 0x80;
        digest[0] ^= 1;
        valid = true;
        assert_int_equal(
            do_verify(f, "sd7", "cry", sigs[i].alg, digest, sigs[i].dlen, sig, 256, &valid), KV_OK);
        assert_false(valid);
    }
    kv_key_view_cleanup(&v);

    uint8_t r1[32] = {0}, r2[32] = {0}, zero[32] = {0};
    kv_err re = {{0}};
    assert_int_equal(kv_random(f->kv, r1, sizeof r1, &re), KV_OK);
    assert_int_equal(kv_random(f->kv, r2, sizeof r2, &re), KV_OK);
    assert_memory_not_equal(r1, r2, 32);
    assert_memory_not_equal(r1, zero, 32);
}

/* ---------------------------------------------------------------------------------------- */
/* soft delete, recovery, purge                                                              */

static void soft_delete_recover_purge(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    kv_key_view v, d, g;
    uint8_t plain[32], out[512];
    size_t ol;
    fill_bytes(plain, sizeof plain, 5);

    /* --- purge-protected vault --- */
    create_key(f, "pp90", "sd-pp", NULL, &v);
    assert_string_equal(v.recovery_level, "Recoverable");
    assert_int_equal(v.recoverable_days, 90);
    int64_t t0 = emu_clock_now();
    assert_int_equal(kv_key_delete(f->kv, "pp90", "SD-PP", &d, &e), KV_OK);
    int64_t t1 = emu_clock_now();
    assert_true(d.deleted);
    assert_true(d.deleted_date >= t0 && d.deleted_date <= t1);
    assert_int_equal(d.scheduled_purge, d.deleted_date + 90 * DAY);
    assert_string_equal(d.version, v.version);

    assert_int_equal(get_key(f, "pp90", "sd-pp", "", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(get_key(f, "pp90", "sd-pp", v.version, NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(deleted_get(f, "pp90", "sd-pp", &g), KV_OK);
    assert_true(g.deleted);
    assert_int_equal(g.deleted_date, d.deleted_date);
    assert_int_equal(g.scheduled_purge, d.deleted_date + 90 * DAY);
    assert_string_equal(g.recovery_level, "Recoverable");
    kv_key_view_cleanup(&g);
    kv_key_view_cleanup(&d);
    /* a deleted key: no second delete, no crypto, no new version, no rotation */
    assert_int_equal(kv_key_delete(f->kv, "pp90", "sd-pp", &d, &e), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(
        do_crypt(f, "pp90", "sd-pp", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA1, plain, 32, out, &ol),
        KV_ERR_KEY_NOT_FOUND);
    kv_key_view x;
    e.msg[0] = '\0';
    assert_int_equal(kv_key_create(f->kv, "pp90", "Sd-Pp", &RSA2048, &x, &e),
                     KV_ERR_DELETED_CONFLICT);
    assert_true(e.msg[0] != '\0');
    assert_int_equal(kv_key_rotate(f->kv, "pp90", "sd-pp", &x, &e), KV_ERR_KEY_NOT_FOUND);

    /* recover */
    assert_int_equal(kv_deleted_recover(f->kv, "pp90", "sd-pp", &g, &e), KV_OK);
    assert_false(g.deleted);
    assert_int_equal(g.deleted_date, 0);
    assert_int_equal(g.scheduled_purge, 0);
    kv_key_view_cleanup(&g);
    assert_int_equal(get_key(f, "pp90", "sd-pp", "", &g), KV_OK);
    assert_string_equal(g.version, v.version);
    kv_key_view_cleanup(&g);
    assert_int_equal(
        do_crypt(f, "pp90", "sd-pp", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA1, plain, 32, out, &ol),
        KV_OK);
    assert_int_equal(deleted_get(f, "pp90", "sd-pp", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(kv_deleted_recover(f->kv, "pp90", "sd-pp", &g, &e), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(kv_deleted_purge(f->kv, "pp90", "sd-pp", &e), KV_ERR_KEY_NOT_FOUND);

    /* purge under purge protection is refused and changes nothing */
    assert_int_equal(kv_key_delete(f->kv, "pp90", "sd-pp", &d, &e), KV_OK);
    kv_key_view_cleanup(&d);
    e.msg[0] = '\0';
    assert_int_equal(kv_deleted_purge(f->kv, "pp90", "sd-pp", &e), KV_ERR_PURGE_PROTECTED);
    assert_non_null(strstr(e.msg, "purge protection"));
    assert_int_equal(deleted_get(f, "pp90", "sd-pp", NULL), KV_OK);
    kv_key_view_cleanup(&v);

    /* --- soft delete without purge protection --- */
    create_key(f, "sd7", "sd-np", NULL, &v);
    assert_string_equal(v.recovery_level, "CustomizedRecoverable+Purgeable");
    assert_int_equal(v.recoverable_days, 7);
    size_t before = kv_key_count(f->kv, "sd7");
    size_t pairs = token_pairs(f);
    assert_int_equal(kv_key_delete(f->kv, "sd7", "sd-np", &d, &e), KV_OK);
    assert_int_equal(d.scheduled_purge, d.deleted_date + 7 * DAY);
    kv_key_view_cleanup(&d);
    assert_int_equal(kv_key_count(f->kv, "sd7"), before); /* still counted while deleted */
    assert_int_equal(token_pairs(f), pairs);              /* soft delete keeps the pair */
    assert_int_equal(kv_deleted_purge(f->kv, "sd7", "SD-NP", &e), KV_OK);
    assert_int_equal(token_pairs(f), pairs - 1); /* purge destroys it */
    assert_int_equal(deleted_get(f, "sd7", "sd-np", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(get_key(f, "sd7", "sd-np", "", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(kv_key_count(f->kv, "sd7"), before - 1);
    assert_int_equal(kv_deleted_purge(f->kv, "sd7", "sd-np", &e), KV_ERR_KEY_NOT_FOUND);
    kv_key_view_cleanup(&v);

    /* --- soft delete off: delete removes at once --- */
    assert_int_equal(kv_key_count(f->kv, "nosd"), 0);
    create_key(f, "nosd", "gone", NULL, &v);
    assert_string_equal(v.recovery_level, "Purgeable");
    assert_int_equal(v.recoverable_days, 0);
    pairs = token_pairs(f);
    assert_int_equal(kv_key_delete(f->kv, "nosd", "gone", &d, &e), KV_OK);
    assert_int_equal(token_pairs(f), pairs - 1);
    assert_true(d.deleted);
    assert_string_equal(d.recovery_level, "Purgeable");
    assert_int_equal(d.scheduled_purge, 0);
    kv_key_view_cleanup(&d);
    assert_int_equal(deleted_get(f, "nosd", "gone", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(get_key(f, "nosd", "gone", "", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(kv_deleted_recover(f->kv, "nosd", "gone", &g, &e), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(kv_key_count(f->kv, "nosd"), 0);
    kv_key_view_cleanup(&v);

    assert_int_equal(kv_key_delete(f->kv, "nope", "x", &d, &e), KV_ERR_VAULT_NOT_FOUND);
    assert_int_equal(kv_deleted_get(f->kv, "nope", "x", &d, &e), KV_ERR_VAULT_NOT_FOUND);
}

static void recovery_levels_table(void **state)
{
    fixture *f = *state;
    /* keys the earlier tests left: one per kind of vault */
    static const struct {
        const char *vault, *name;
        bool deleted;
        const char *level;
        int days;
    } cases[] = {
        {"pp90", "sd-pp", true, "Recoverable", 90},
        {"sd7", "life-key", false, "CustomizedRecoverable+Purgeable", 7},
        {"listv", "a", false, "Recoverable+Purgeable", 90},
    };
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        kv_key_view v;
        kv_status st = cases[i].deleted ? deleted_get(f, cases[i].vault, cases[i].name, &v)
                                        : get_key(f, cases[i].vault, cases[i].name, "", &v);
        if (st != KV_OK)
            fail_msg("%s/%s: %s", cases[i].vault, cases[i].name, kv_status_str(st));
        assert_string_equal(v.recovery_level, cases[i].level);
        assert_int_equal(v.recoverable_days, cases[i].days);
        kv_key_view_cleanup(&v);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* scheduled purge through the clock                                                         */

static void scheduled_purge_via_clock(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    kv_key_view v, d;

    create_key(f, "sd7", "sched", NULL, &v);
    kv_key_view_cleanup(&v);
    assert_int_equal(kv_key_delete(f->kv, "sd7", "sched", &d, &e), KV_OK);
    kv_key_view_cleanup(&d);
    kv_apply_due(f->kv, emu_clock_now());
    assert_int_equal(deleted_get(f, "sd7", "sched", NULL), KV_OK);
    emu_clock_set_offset(6 * DAY);
    kv_apply_due(f->kv, emu_clock_now());
    assert_int_equal(deleted_get(f, "sd7", "sched", NULL), KV_OK);
    size_t pairs = token_pairs(f);
    emu_clock_set_offset(8 * DAY);
    kv_apply_due(f->kv, emu_clock_now());
    assert_int_equal(deleted_get(f, "sd7", "sched", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(token_pairs(f), pairs - 1);
    assert_int_equal(get_key(f, "sd7", "sched", "", NULL), KV_ERR_KEY_NOT_FOUND);
    /* the purge-protected key deleted earlier is still there after 8 days */
    assert_int_equal(deleted_get(f, "pp90", "sd-pp", NULL), KV_OK);
    emu_clock_set_offset(0);

    /* purge protection lifts when the retention ends */
    create_key(f, "pp90", "pp-lift", NULL, &v);
    kv_key_view_cleanup(&v);
    assert_int_equal(kv_key_delete(f->kv, "pp90", "pp-lift", &d, &e), KV_OK);
    kv_key_view_cleanup(&d);
    assert_int_equal(kv_deleted_purge(f->kv, "pp90", "pp-lift", &e), KV_ERR_PURGE_PROTECTED);
    emu_clock_set_offset(89 * DAY);
    assert_int_equal(kv_deleted_purge(f->kv, "pp90", "pp-lift", &e), KV_ERR_PURGE_PROTECTED);
    emu_clock_apply_due(); /* the hook kv_open registered */
    assert_int_equal(deleted_get(f, "pp90", "pp-lift", NULL), KV_OK);
    emu_clock_set_offset(91 * DAY);
    /* an explicit purge is allowed again ... */
    assert_int_equal(kv_deleted_purge(f->kv, "pp90", "sd-pp", &e), KV_OK);
    assert_int_equal(deleted_get(f, "pp90", "sd-pp", NULL), KV_ERR_KEY_NOT_FOUND);
    /* ... and the scheduled purge runs through the clock hook */
    emu_clock_apply_due();
    assert_int_equal(deleted_get(f, "pp90", "pp-lift", NULL), KV_ERR_KEY_NOT_FOUND);
    /* keys deleted 91 days ago in a 90-day vault went too; live keys stay */
    assert_int_equal(deleted_get(f, "listv", "b", NULL), KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(get_key(f, "listv", "a", "", NULL), KV_OK);
    emu_clock_set_offset(0);
}

/* ---------------------------------------------------------------------------------------- */
/* rotation                                                                                  */

static void rotation_policy_rules(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    kv_key_view v;
    json_t *tags = jparse("{\"t\":\"x\"}");
    kv_create_params p = {
        .bits = 2048, .ops = KV_OP_WRAP | KV_OP_UNWRAP | KV_OP_SIGN | KV_OP_VERIFY, .tags = tags};
    create_key(f, "sd7", "rot", &p, &v);
    json_decref(tags);
    kv_key_view_cleanup(&v);

    /* default policy: a Notify 30 days before expiry */
    json_t *pol = NULL;
    assert_int_equal(kv_rotation_policy_get(f->kv, "sd7", "rot", &pol, &e), KV_OK);
    json_t *notify = policy_action(pol, "Notify");
    assert_non_null(notify);
    assert_string_equal(trigger_value(notify, "timeBeforeExpiry"), "P30D");
    assert_null(policy_action(pol, "Rotate"));
    assert_null(json_object_get(pol, "id"));
    json_decref(pol);

    /* only a Rotate: the stored policy also notifies 30 days before expiry */
    json_t *in = jparse("{\"lifetimeActions\":[{\"trigger\":{\"timeAfterCreate\":\"P30D\"},"
                        "\"action\":{\"type\":\"Rotate\"}}]}");
    json_t *stored = NULL;
    int64_t t0 = emu_clock_now();
    assert_int_equal(kv_rotation_policy_set(f->kv, "sd7", "rot", in, &stored, &e), KV_OK);
    json_decref(in);
    assert_int_equal(json_array_size(json_object_get(stored, "lifetimeActions")), 2);
    json_t *rot = policy_action(stored, "Rotate");
    assert_non_null(rot);
    assert_string_equal(trigger_value(rot, "timeAfterCreate"), "P30D");
    notify = policy_action(stored, "Notify");
    assert_non_null(notify);
    assert_string_equal(trigger_value(notify, "timeBeforeExpiry"), "P30D");
    json_t *attrs = json_object_get(stored, "attributes");
    assert_true(json_integer_value(json_object_get(attrs, "created")) >= t0);
    assert_true(json_integer_value(json_object_get(attrs, "updated")) >= t0);
    assert_int_equal(kv_rotation_policy_get(f->kv, "sd7", "ROT", &pol, &e), KV_OK);
    assert_true(json_equal(json_object_get(pol, "lifetimeActions"),
                           json_object_get(stored, "lifetimeActions")));
    json_decref(pol);

    /* invalid policies are refused and leave the stored one */
    static const char *const bad[] = {
        "{\"attributes\":{\"expiryTime\":\"P27D\"}}",
        "{\"attributes\":{\"expiryTime\":\"soon\"}}",
        "{\"lifetimeActions\":[{\"trigger\":{\"timeAfterCreate\":\"P30D\",\"timeBeforeExpiry\":"
        "\"P30D\"},\"action\":{\"type\":\"Rotate\"}}],\"attributes\":{\"expiryTime\":\"P90D\"}}",
        "{\"lifetimeActions\":[{\"trigger\":{},\"action\":{\"type\":\"Rotate\"}}]}",
        "{\"lifetimeActions\":[{\"trigger\":{\"timeAfterCreate\":\"P30D\"},\"action\":{\"type\":"
        "\"Notify\"}}]}",
        "{\"lifetimeActions\":[{\"trigger\":{\"timeAfterCreate\":\"P30D\"},\"action\":{\"type\":"
        "\"Explode\"}}]}",
        "{\"lifetimeActions\":[{\"trigger\":{\"timeAfterCreate\":\"P30D\"},\"action\":{}}]}",
        "{\"lifetimeActions\":[{\"trigger\":{\"timeAfterCreate\":\"P1D\"},\"action\":{\"type\":"
        "\"Rotate\"}}]}",
        "{\"lifetimeActions\":[{\"trigger\":{\"timeAfterCreate\":\"30 days\"},\"action\":{"
        "\"type\":\"Rotate\"}}]}",
        "{\"lifetimeActions\":[{\"trigger\":{\"timeAfterCreate\":\"P30D\"},\"action\":{\"type\":"
        "\"Rotate\"}},{\"trigger\":{\"timeAfterCreate\":\"P40D\"},\"action\":{\"type\":"
        "\"Rotate\"}}]}",
        "{\"lifetimeActions\":[{\"trigger\":{\"timeAfterCreate\":\"P85D\"},\"action\":{\"type\":"
        "\"Rotate\"}}],\"attributes\":{\"expiryTime\":\"P90D\"}}",
        "{\"lifetimeActions\":[{\"trigger\":{\"timeBeforeExpiry\":\"P90D\"},\"action\":{\"type\":"
        "\"Notify\"}}],\"attributes\":{\"expiryTime\":\"P90D\"}}",
        "{\"lifetimeActions\":{}}",
        "[]",
    };
    for (size_t i = 0; i < N_ELEMS(bad); i++) {
        json_t *j = json_loads(bad[i], JSON_DECODE_ANY, NULL);
        assert_non_null(j);
        json_t *o = NULL;
        e.msg[0] = '\0';
        kv_status st = kv_rotation_policy_set(f->kv, "sd7", "rot", j, &o, &e);
        json_decref(j);
        if (st != KV_ERR_BAD_PARAM) {
            json_decref(o);
            fail_msg("policy %s: %s, want bad parameter", bad[i], kv_status_str(st));
        }
        assert_true(e.msg[0] != '\0');
    }
    assert_int_equal(kv_rotation_policy_get(f->kv, "sd7", "rot", &pol, &e), KV_OK);
    assert_true(json_equal(json_object_get(pol, "lifetimeActions"),
                           json_object_get(stored, "lifetimeActions")));
    json_decref(pol);
    json_decref(stored);

    json_t *ok = jparse("{}");
    assert_int_equal(kv_rotation_policy_set(f->kv, "sd7", "nokey", ok, &stored, &e),
                     KV_ERR_KEY_NOT_FOUND);
    assert_int_equal(kv_rotation_policy_get(f->kv, "sd7", "nokey", &pol, &e), KV_ERR_KEY_NOT_FOUND);
    json_decref(ok);
}

static void rotate_now_same_ops(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    kv_key_view before, after, g;
    assert_int_equal(get_key(f, "sd7", "rot", "", &before), KV_OK);
    assert_int_equal(kv_key_rotate(f->kv, "sd7", "rot", &after, &e), KV_OK);
    f->generated++;
    assert_string_not_equal(after.version, before.version);
    assert_string_equal(after.name, "rot");
    assert_int_equal(after.ops, before.ops);
    assert_int_equal(after.bits, before.bits);
    assert_string_equal(after.kty, before.kty);
    assert_true(json_equal(after.tags, before.tags));
    assert_true(after.enabled);
    assert_int_equal(after.exp, 0); /* the policy has no expiryTime */
    assert_int_equal(get_key(f, "sd7", "rot", "", &g), KV_OK);
    assert_string_equal(g.version, after.version);
    kv_key_view_cleanup(&g);
    assert_int_equal(version_count(f, "sd7", "rot"), 2);
    kv_key_view_cleanup(&before);
    kv_key_view_cleanup(&after);
    assert_int_equal(kv_key_rotate(f->kv, "sd7", "nokey", &after, &e), KV_ERR_KEY_NOT_FOUND);
}

static void rotation_expiry_time_sets_exp(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    kv_key_view v, r, n;
    create_key(f, "sd7", "exp90", NULL, &v);
    json_t *in = jparse("{\"lifetimeActions\":[{\"trigger\":{\"timeBeforeExpiry\":\"P30D\"},"
                        "\"action\":{\"type\":\"Notify\"}}],\"attributes\":{\"expiryTime\":"
                        "\"P90D\"}}");
    json_t *stored = NULL;
    assert_int_equal(kv_rotation_policy_set(f->kv, "sd7", "exp90", in, &stored, &e), KV_OK);
    json_decref(in);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(stored, "attributes"), "expiryTime")),
        "P90D");
    assert_null(policy_action(stored, "Rotate"));
    json_decref(stored);

    assert_int_equal(kv_key_rotate(f->kv, "sd7", "exp90", &r, &e), KV_OK);
    f->generated++;
    assert_int_equal(r.exp, r.created + 90 * DAY);
    /* the version made before the policy keeps no expiry */
    assert_int_equal(get_key(f, "sd7", "exp90", v.version, &n), KV_OK);
    assert_int_equal(n.exp, 0);
    kv_key_view_cleanup(&n);
    kv_key_view_cleanup(&v);
    kv_key_view_cleanup(&r);
}

static void automatic_rotation_via_clock(void **state)
{
    fixture *f = *state;
    kv_key_view before, after;
    assert_int_equal(version_count(f, "sd7", "rot"), 2);
    assert_int_equal(version_count(f, "sd7", "exp90"), 2);
    assert_int_equal(get_key(f, "sd7", "rot", "", &before), KV_OK);

    emu_clock_set_offset(29 * DAY);
    kv_apply_due(f->kv, emu_clock_now());
    assert_int_equal(version_count(f, "sd7", "rot"), 2);

    emu_clock_set_offset(31 * DAY);
    int64_t now = emu_clock_now();
    kv_apply_due(f->kv, now);
    f->generated++;
    assert_int_equal(version_count(f, "sd7", "rot"), 3);
    assert_int_equal(get_key(f, "sd7", "rot", "", &after), KV_OK);
    assert_string_not_equal(after.version, before.version);
    assert_true(after.created >= now);
    assert_int_equal(after.ops, before.ops);
    /* once is enough: the new version is not due yet */
    kv_apply_due(f->kv, emu_clock_now());
    assert_int_equal(version_count(f, "sd7", "rot"), 3);
    /* a Notify-only policy never rotates */
    assert_int_equal(version_count(f, "sd7", "exp90"), 2);
    emu_clock_set_offset(0);
    kv_key_view_cleanup(&before);
    kv_key_view_cleanup(&after);
}

/* What a client reads with GET rotationpolicy it must be able to PUT back unchanged (the SDK's
 * updateKeyRotationPolicy is typically get -> modify -> set). */
static void rotation_policy_read_back_can_be_stored(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    char report[1024] = "";
    size_t o = 0;
    static const char *const keys[] = {"cry" /* default policy */, "rot" /* Rotate only */};
    for (size_t i = 0; i < N_ELEMS(keys); i++) {
        json_t *pol = NULL, *stored = NULL;
        assert_int_equal(kv_rotation_policy_get(f->kv, "sd7", keys[i], &pol, &e), KV_OK);
        e.msg[0] = '\0';
        kv_status st = kv_rotation_policy_set(f->kv, "sd7", keys[i], pol, &stored, &e);
        if (st != KV_OK) {
            char *text = json_dumps(pol, JSON_COMPACT);
            o += (size_t)snprintf(report + o, sizeof report - o, " [%s: set(%s) -> %s: %s]",
                                  keys[i], text, kv_status_str(st), e.msg);
            free(text);
        }
        json_decref(pol);
        json_decref(stored);
    }
    if (o)
        fail_msg("policies read back were refused:%s", report);
}

/* ---------------------------------------------------------------------------------------- */
/* backup / restore                                                                          */

static void backup_restore(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    kv_key_view v1, v2, r, d;
    create_key(f, "sd7", "bak", NULL, &v1);
    create_key(f, "sd7", "bak", NULL, &v2);

    uint8_t p1[32], p2[32], c1[512], c2[512], out[512];
    size_t l1, l2, ol;
    fill_bytes(p1, 32, 11);
    fill_bytes(p2, 32, 22);
    assert_int_equal(
        do_crypt(f, "sd7", "bak", v1.version, KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256, p1, 32, c1, &l1),
        KV_OK);
    assert_int_equal(
        do_crypt(f, "sd7", "bak", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA1, p2, 32, c2, &l2), KV_OK);

    char *blob = NULL;
    assert_int_equal(kv_key_backup(f->kv, "sd7", "bak", &blob, &e), KV_OK);
    assert_non_null(blob);
    size_t bl = strlen(blob);
    assert_true(bl > 1000); /* every version's wrapped private key is in it */

    /* restore while the name is live */
    e.msg[0] = '\0';
    assert_int_equal(kv_key_restore(f->kv, "sd7", blob, bl, &r, &e), KV_ERR_CONFLICT);
    assert_true(e.msg[0] != '\0');

    /* delete + purge, then restore: the same versions, the same key material */
    assert_int_equal(kv_key_delete(f->kv, "sd7", "bak", &d, &e), KV_OK);
    kv_key_view_cleanup(&d);
    /* restore while the name is soft-deleted */
    assert_int_equal(kv_key_restore(f->kv, "sd7", blob, bl, &r, &e), KV_ERR_DELETED_CONFLICT);
    assert_int_equal(kv_deleted_purge(f->kv, "sd7", "bak", &e), KV_OK);
    assert_int_equal(get_key(f, "sd7", "bak", "", NULL), KV_ERR_KEY_NOT_FOUND);

    assert_int_equal(kv_key_restore(f->kv, "sd7", blob, bl, &r, &e), KV_OK);
    assert_string_equal(r.name, "bak");
    assert_string_equal(r.version, v2.version);
    assert_int_equal(r.n_len, v2.n_len);
    assert_memory_equal(r.n, v2.n, v2.n_len);
    assert_int_equal(r.created, v2.created);
    assert_int_equal(r.ops, v2.ops);
    kv_key_view_cleanup(&r);
    kv_key_view vs[4];
    size_t n;
    bool more;
    assert_int_equal(kv_key_versions(f->kv, "sd7", "bak", 0, 4, vs, &n, &more, &e), KV_OK);
    assert_int_equal(n, 2);
    assert_string_equal(vs[0].version, v1.version);
    assert_string_equal(vs[1].version, v2.version);
    assert_memory_equal(vs[0].n, v1.n, v1.n_len);
    kv_key_view_cleanup(&vs[0]);
    kv_key_view_cleanup(&vs[1]);
    assert_int_equal(do_crypt(f, "sd7", "bak", v1.version, KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA256, c1,
                              l1, out, &ol),
                     KV_OK);
    assert_int_equal(ol, 32);
    assert_memory_equal(out, p1, 32);
    assert_int_equal(
        do_crypt(f, "sd7", "bak", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA1, c2, l2, out, &ol), KV_OK);
    assert_memory_equal(out, p2, 32);

    /* a second restore into the same vault: the name exists */
    assert_int_equal(kv_key_restore(f->kv, "sd7", blob, bl, &r, &e), KV_ERR_CONFLICT);
    /* another vault of the same token can restore it */
    assert_int_equal(kv_key_restore(f->kv, "nosd", blob, bl, &r, &e), KV_OK);
    assert_string_equal(r.vault, "nosd");
    kv_key_view_cleanup(&r);
    assert_int_equal(
        do_crypt(f, "nosd", "bak", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA1, c2, l2, out, &ol),
        KV_OK);
    assert_memory_equal(out, p2, 32);
    assert_int_equal(kv_key_restore(f->kv, "nope", blob, bl, &r, &e), KV_ERR_VAULT_NOT_FOUND);

    /* damaged blobs are refused, not a crash; "listv" has no key "bak". One character is
     * changed in the middle of each quarter of the blob. */
    for (size_t i = 0; i < 4; i++) {
        char *t = strdup(blob);
        size_t at = bl * (2 * i + 1) / 8;
        t[at] = t[at] == 'A' ? 'B' : 'A';
        e.msg[0] = '\0';
        kv_status st = kv_key_restore(f->kv, "listv", t, bl, &r, &e);
        if (st == KV_OK) {
            kv_key_view_cleanup(&r);
            free(t);
            fail_msg("tampered blob (char %zu of %zu) was restored", at, bl);
        }
        assert_true(e.msg[0] != '\0');
        free(t);
    }
    static const char *const junk[] = {"", "!!!!", "e30" /* "{}" */, "not a backup",
                                       "eyJuYW1lIjoiYmFrIn0" /* {"name":"bak"} */};
    for (size_t i = 0; i < N_ELEMS(junk); i++)
        assert_int_equal(kv_key_restore(f->kv, "listv", junk[i], strlen(junk[i]), &r, &e),
                         KV_ERR_BAD_PARAM);
    /* truncated */
    assert_int_equal(kv_key_restore(f->kv, "listv", blob, bl / 2, &r, &e), KV_ERR_BAD_PARAM);
    assert_int_equal(get_key(f, "listv", "bak", "", NULL), KV_ERR_KEY_NOT_FOUND);
    free(blob);

    /* left soft-deleted for the persistence test */
    assert_int_equal(kv_key_delete(f->kv, "sd7", "bak", &d, &e), KV_OK);
    kv_key_view_cleanup(&d);
    kv_key_view_cleanup(&v1);
    kv_key_view_cleanup(&v2);
    assert_int_equal(kv_key_backup(f->kv, "sd7", "bak", &blob, &e), KV_ERR_KEY_NOT_FOUND);
}

/* A backup blob changed in any one character must not restore: the service's blobs are
 * protected, and a restored key must not come back with altered attributes or a version id
 * that is not 32 lowercase hex characters. Sweeps every 7th character of a one-version blob,
 * restoring into "listv" (no key "cry" there); anything restored is purged again. */
static void backup_blob_single_char_tampering_refused(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    kv_key_view orig;
    assert_int_equal(get_key(f, "sd7", "cry", "", &orig), KV_OK);
    char *blob = NULL;
    assert_int_equal(kv_key_backup(f->kv, "sd7", "cry", &blob, &e), KV_OK);
    size_t bl = strlen(blob), tried = 0, accepted = 0;
    char report[1024] = "";
    size_t o = 0;
    for (size_t at = 0; at < bl; at += 7) {
        char *t = strdup(blob);
        t[at] = t[at] == 'A' ? 'B' : 'A';
        kv_key_view r;
        tried++;
        if (kv_key_restore(f->kv, "listv", t, bl, &r, &e) == KV_OK) {
            accepted++;
            if (o < sizeof report - 200)
                o += (size_t)snprintf(report + o, sizeof report - o,
                                      " [char %zu: version %s%s enabled %d created %lld]", at,
                                      r.version, is_version_id(r.version) ? "" : " (not hex)",
                                      r.enabled, (long long)r.created);
            kv_key_view d;
            char name[128];
            snprintf(name, sizeof name, "%s", r.name);
            kv_key_view_cleanup(&r);
            assert_int_equal(kv_key_delete(f->kv, "listv", name, &d, &e), KV_OK);
            kv_key_view_cleanup(&d);
            assert_int_equal(kv_deleted_purge(f->kv, "listv", name, &e), KV_OK);
        }
        free(t);
    }
    free(blob);
    if (accepted)
        fail_msg("%zu of %zu single-character changes restored (original version %s, enabled "
                 "1, created %lld):%s",
                 accepted, tried, orig.version, (long long)orig.created, report);
    kv_key_view_cleanup(&orig);
}

/* ---------------------------------------------------------------------------------------- */
/* persistence                                                                               */

static void state_survives_reopen(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    kv_key_view life[4], del_before, rot_before;
    size_t nlife;
    bool more;
    assert_int_equal(kv_key_versions(f->kv, "sd7", "life-key", 0, 4, life, &nlife, &more, &e),
                     KV_OK);
    assert_int_equal(nlife, 2);
    assert_int_equal(deleted_get(f, "sd7", "bak", &del_before), KV_OK);
    assert_int_equal(get_key(f, "sd7", "rot", "", &rot_before), KV_OK);
    json_t *pol_before = NULL;
    assert_int_equal(kv_rotation_policy_get(f->kv, "sd7", "rot", &pol_before, &e), KV_OK);
    size_t counts[4];
    static const char *const vaults[] = {"pp90", "sd7", "nosd", "listv"};
    for (size_t i = 0; i < 4; i++)
        counts[i] = kv_key_count(f->kv, vaults[i]);
    size_t rot_versions = version_count(f, "sd7", "rot");
    /* a key pair no version refers to (as after a crash between generation and commit) */
    size_t pairs = token_pairs(f);
    uint8_t orphan[HSM_ID_LEN];
    assert_int_equal(hsm_rsa_generate(f->hsm, 2048, 0, "orphan", orphan), HSM_OK);
    f->generated++;
    assert_int_equal(token_pairs(f), pairs + 1);
    /* fsck sees it as an orphan; every row has its key pair */
    emu_fsck_report rep;
    char ferr[256];
    assert_true(emu_fsck_run(f->store, f->hsm, &rep, ferr, sizeof ferr));
    assert_int_equal(rep.orphans, 1);
    assert_int_equal(rep.missing, 0);
    assert_int_equal(rep.token_keys + rep.sealed, pairs + 1);

    close_all(f);
    if (open_all(f) != 0)
        fail_msg("reopen failed");

    char def[64];
    assert_true(kv_vault_default(f->kv, def, sizeof def));
    assert_string_equal(def, "pp90");
    assert_int_equal(kv_vault_count(f->kv), 4);
    kv_vault_info vi;
    assert_int_equal(kv_vault_get(f->kv, "pp90", &vi), KV_OK);
    assert_true(vi.purge_protection);
    assert_int_equal(vi.retention_days, 90);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(kv_key_count(f->kv, vaults[i]), counts[i]);
    /* reconciliation at open destroyed the orphan and nothing else */
    assert_int_equal(token_pairs(f), pairs);
    size_t rec_orphans = 9, rec_missing = 9;
    kv_reconciled(f->kv, &rec_orphans, &rec_missing);
    assert_int_equal(rec_orphans, 1);
    assert_int_equal(rec_missing, 0);
    assert_true(emu_fsck_run(f->store, f->hsm, &rep, ferr, sizeof ferr));
    assert_int_equal(rep.orphans, 0);
    assert_int_equal(rep.missing, 0);
    uint8_t *on = NULL, *oe = NULL;
    size_t onl, oel;
    assert_int_equal(hsm_rsa_public(f->hsm, orphan, &on, &onl, &oe, &oel), HSM_ERR_NOT_FOUND);
    free(on);
    free(oe);

    /* versions in the same order with the same attributes */
    kv_key_view after[4];
    size_t n;
    assert_int_equal(kv_key_versions(f->kv, "sd7", "life-key", 0, 4, after, &n, &more, &e), KV_OK);
    assert_int_equal(n, nlife);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(after[i].version, life[i].version);
        assert_string_equal(after[i].name, "Life-Key");
        assert_string_equal(after[i].kty, life[i].kty);
        assert_int_equal(after[i].bits, life[i].bits);
        assert_int_equal(after[i].n_len, life[i].n_len);
        assert_memory_equal(after[i].n, life[i].n, life[i].n_len);
        assert_int_equal(after[i].created, life[i].created);
        kv_key_view_cleanup(&after[i]);
        kv_key_view_cleanup(&life[i]);
    }

    /* deleted state and schedule */
    kv_key_view del;
    assert_int_equal(deleted_get(f, "sd7", "bak", &del), KV_OK);
    assert_true(del.deleted);
    assert_int_equal(del.deleted_date, del_before.deleted_date);
    assert_int_equal(del.scheduled_purge, del_before.scheduled_purge);
    assert_int_equal(del.scheduled_purge, del.deleted_date + 7 * DAY);
    assert_string_equal(del.version, del_before.version);
    assert_int_equal(get_key(f, "sd7", "bak", "", NULL), KV_ERR_KEY_NOT_FOUND);
    kv_key_view_cleanup(&del);
    kv_key_view_cleanup(&del_before);

    /* attributes, tags and the rotation policy */
    kv_key_view rot;
    assert_int_equal(get_key(f, "sd7", "rot", "", &rot), KV_OK);
    assert_string_equal(rot.version, rot_before.version);
    assert_int_equal(rot.ops, rot_before.ops);
    assert_true(json_equal(rot.tags, rot_before.tags));
    assert_int_equal(version_count(f, "sd7", "rot"), rot_versions);
    kv_key_view_cleanup(&rot);
    kv_key_view_cleanup(&rot_before);
    json_t *pol = NULL;
    assert_int_equal(kv_rotation_policy_get(f->kv, "sd7", "rot", &pol, &e), KV_OK);
    assert_true(json_equal(pol, pol_before));
    json_decref(pol);
    json_decref(pol_before);
    kv_key_view upd;
    assert_int_equal(get_key(f, "sd7", "upd", "", &upd), KV_OK);
    assert_string_equal(json_string_value(json_object_get(upd.tags, "b")), "2");
    kv_key_view_cleanup(&upd);

    /* crypto still works with the token objects */
    uint8_t out[512];
    size_t ol;
    assert_int_equal(do_crypt(f, "sd7", "cry", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA1, f->cry_ct,
                              f->cry_ct_len, out, &ol),
                     KV_OK);
    assert_int_equal(ol, 32);
    assert_memory_equal(out, f->cry_plain, 32);
    /* a key whose attributes were updated (its row rewritten) kept its sealed blob */
    uint8_t plain[32], ct[512], back[512];
    size_t ctl = 0, backl = 0;
    fill_bytes(plain, 32, 7);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256, plain, 32, ct, &ctl),
        KV_OK);
    assert_int_equal(
        do_crypt(f, "sd7", "upd", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA256, ct, ctl, back, &backl),
        KV_OK);
    assert_int_equal(backl, 32);
    assert_memory_equal(back, plain, 32);

    /* a recovered key after the reopen is usable; the schedule then runs on the new kv */
    kv_key_view rec;
    assert_int_equal(kv_deleted_recover(f->kv, "sd7", "bak", &rec, &e), KV_OK);
    kv_key_view_cleanup(&rec);
    uint8_t p[32];
    fill_bytes(p, 32, 1);
    assert_int_equal(
        do_crypt(f, "sd7", "bak", "", KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA1, p, 32, out, &ol), KV_OK);
}

/* A sealed version whose blob was altered in the store: its first use after a start fails as
 * an HSM failure naming the damage; the key's other version and other keys are unaffected;
 * the intact blob restored makes it work again. */
static void sealed_blob_damaged_in_store(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    kv_key_view v1, v2;
    create_key(f, "sd7", "tamp", NULL, &v1);
    create_key(f, "sd7", "tamp", NULL, &v2); /* a second version: the latest */
    uint8_t plain[32], ct1[512], ct2[512], out[512];
    size_t ct1l = 0, ct2l = 0, ol = 0;
    fill_bytes(plain, 32, 3);
    assert_int_equal(do_crypt(f, "sd7", "tamp", v1.version, KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256,
                              plain, 32, ct1, &ct1l),
                     KV_OK);
    assert_int_equal(do_crypt(f, "sd7", "tamp", v2.version, KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256,
                              plain, 32, ct2, &ct2l),
                     KV_OK);

    /* flip the last byte (inside the wrapped private key) of the latest version's blob */
    sqlite3 *db = emu_store_lock(f->store);
    sqlite3_stmt *st = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(db,
                           "SELECT s.hsm_id, s.blob FROM kv_sealed s JOIN kv_versions v"
                           " USING(hsm_id) WHERE v.vault='sd7' AND v.lname='tamp'"
                           " AND v.version=?",
                           -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_text(st, 1, v2.version, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    uint8_t id[HSM_ID_LEN], good[8192], bad[8192];
    assert_int_equal(sqlite3_column_bytes(st, 0), HSM_ID_LEN);
    memcpy(id, sqlite3_column_blob(st, 0), HSM_ID_LEN);
    int bl = sqlite3_column_bytes(st, 1);
    assert_true(bl > 1000 && bl <= (int)sizeof good);
    memcpy(good, sqlite3_column_blob(st, 1), (size_t)bl);
    sqlite3_finalize(st);
    memcpy(bad, good, (size_t)bl);
    bad[bl - 1] ^= 0x40;
    for (int pass = 0; pass < 2; pass++) {
        const uint8_t *blob = pass == 0 ? bad : good;
        if (pass == 1)
            db = emu_store_lock(f->store);
        st = NULL;
        assert_int_equal(
            sqlite3_prepare_v2(db, "UPDATE kv_sealed SET blob=? WHERE hsm_id=?", -1, &st, NULL),
            SQLITE_OK);
        sqlite3_bind_blob(st, 1, blob, bl, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, id, HSM_ID_LEN, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        assert_int_equal(sqlite3_changes(db), 1);
        sqlite3_finalize(st);
        emu_store_unlock(f->store);
        close_all(f);
        if (open_all(f) != 0)
            fail_msg("reopen failed");
        char used[33];
        kv_status ks = kv_key_crypt(f->kv, "sd7", "tamp", v2.version, KV_CRYPT_UNWRAP,
                                    HSM_RSA_OAEP_SHA256, ct2, ct2l, out, &ol, used, &e);
        if (pass == 0) {
            assert_int_equal(ks, KV_ERR_HSM);
            assert_non_null(strstr(e.msg, "sealed key does not unwrap"));
            /* the other version of the same key, and the other keys, still work */
            assert_int_equal(kv_key_crypt(f->kv, "sd7", "tamp", v1.version, KV_CRYPT_UNWRAP,
                                          HSM_RSA_OAEP_SHA256, ct1, ct1l, out, &ol, used, &e),
                             KV_OK);
            assert_memory_equal(out, plain, 32);
            assert_int_equal(do_crypt(f, "sd7", "cry", "", KV_CRYPT_UNWRAP, HSM_RSA_OAEP_SHA1,
                                      f->cry_ct, f->cry_ct_len, out, &ol),
                             KV_OK);
        } else {
            assert_int_equal(ks, KV_OK);
            assert_int_equal(ol, 32);
            assert_memory_equal(out, plain, 32);
        }
    }
    kv_key_view_cleanup(&v1);
    kv_key_view_cleanup(&v2);
}

static size_t sealed_rows(fixture *f)
{
    sqlite3 *db = emu_store_lock(f->store);
    sqlite3_stmt *st = NULL;
    size_t n = 0;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM kv_sealed", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = (size_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    emu_store_unlock(f->store);
    return n;
}

/* Swaps (pass 0) or restores (pass 1) the blobs of two versions, then reopens everything. */
static void swap_blobs_and_reopen(fixture *f, const char *v1, const char *v2)
{
    sqlite3 *db = emu_store_lock(f->store);
    assert_true(emu_store_exec(db, "CREATE TEMP TABLE sw AS SELECT v.version AS version, s.blob"
                                   " AS blob FROM kv_sealed s JOIN kv_versions v USING(hsm_id)"
                                   " WHERE v.vault='sd7' AND v.lname='swp'"));
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "UPDATE kv_sealed SET blob=(SELECT blob FROM sw WHERE"
                                        " version=?1) WHERE hsm_id=(SELECT hsm_id FROM"
                                        " kv_versions WHERE vault='sd7' AND lname='swp' AND"
                                        " version=?2)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (int i = 0; i < 2; i++) {
        sqlite3_bind_text(st, 1, i ? v1 : v2, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, i ? v2 : v1, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        assert_int_equal(sqlite3_changes(db), 1);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    assert_true(emu_store_exec(db, "DROP TABLE sw"));
    emu_store_unlock(f->store);
    close_all(f);
    if (open_all(f) != 0)
        fail_msg("reopen failed");
}

/* Two versions' blobs swapped in the file: each blob is a valid key, but not its version's.
 * Neither version may decrypt with the other's key: both fail, fsck counts them; swapped back,
 * both work. Also: a version row rewritten with recursive_triggers on keeps its blob (the
 * row is upserted, never replaced). */
static void sealed_blobs_swapped_in_store(void **state)
{
    fixture *f = *state;
    kv_err e = {{0}};
    kv_key_view v1, v2;
    create_key(f, "sd7", "swp", NULL, &v1);
    create_key(f, "sd7", "swp", NULL, &v2);
    uint8_t plain[32], ct1[512], out[512];
    size_t ct1l = 0, ol = 0;
    char used[33];
    fill_bytes(plain, 32, 9);
    assert_int_equal(do_crypt(f, "sd7", "swp", v1.version, KV_CRYPT_WRAP, HSM_RSA_OAEP_SHA256,
                              plain, 32, ct1, &ct1l),
                     KV_OK);

    /* an attribute update with recursive_triggers on: the blob stays */
    size_t blobs = sealed_rows(f);
    sqlite3 *db = emu_store_lock(f->store);
    assert_true(emu_store_exec(db, "PRAGMA recursive_triggers=ON"));
    emu_store_unlock(f->store);
    json_t *tags = jparse("{\"t\":\"1\"}");
    kv_update_params up = {.tags = tags};
    kv_key_view u;
    assert_int_equal(kv_key_update(f->kv, "sd7", "swp", v1.version, &up, &u, &e), KV_OK);
    kv_key_view_cleanup(&u);
    json_decref(tags);
    db = emu_store_lock(f->store);
    assert_true(emu_store_exec(db, "PRAGMA recursive_triggers=OFF"));
    emu_store_unlock(f->store);
    assert_int_equal(sealed_rows(f), blobs);

    swap_blobs_and_reopen(f, v1.version, v2.version);
    assert_int_not_equal(kv_key_crypt(f->kv, "sd7", "swp", v1.version, KV_CRYPT_UNWRAP,
                                      HSM_RSA_OAEP_SHA256, ct1, ct1l, out, &ol, used, &e),
                         KV_OK);
    emu_fsck_report rep;
    char ferr[256];
    assert_true(emu_fsck_run(f->store, f->hsm, &rep, ferr, sizeof ferr));
    assert_int_equal(rep.sealed_bad, 2);
    assert_int_equal(rep.sealed_stray, 0);
    assert_false(rep.storage_key_missing);

    swap_blobs_and_reopen(f, v1.version, v2.version);
    assert_int_equal(kv_key_crypt(f->kv, "sd7", "swp", v1.version, KV_CRYPT_UNWRAP,
                                  HSM_RSA_OAEP_SHA256, ct1, ct1l, out, &ol, used, &e),
                     KV_OK);
    assert_memory_equal(out, plain, 32);
    assert_true(emu_fsck_run(f->store, f->hsm, &rep, ferr, sizeof ferr));
    assert_int_equal(rep.sealed_bad, 0);
    kv_key_view_cleanup(&v1);
    kv_key_view_cleanup(&v2);
}

/* ---------------------------------------------------------------------------------------- */

int main(void)
{
    emu_log_setup(EMU_LOG_ERROR, false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(vaults_created_and_validated),
        cmocka_unit_test(key_create_get_versions),
        cmocka_unit_test(key_list_paging),
        cmocka_unit_test(key_create_validation_table),
        cmocka_unit_test(key_ops_parse_table),
        cmocka_unit_test(key_lookup_with_overlong_name_is_not_found),
        cmocka_unit_test(key_update_rules),
        cmocka_unit_test(key_crypto_roundtrip),
        cmocka_unit_test(soft_delete_recover_purge),
        cmocka_unit_test(recovery_levels_table),
        cmocka_unit_test_teardown(scheduled_purge_via_clock, reset_clock),
        cmocka_unit_test(rotation_policy_rules),
        cmocka_unit_test(rotate_now_same_ops),
        cmocka_unit_test(rotation_expiry_time_sets_exp),
        cmocka_unit_test_teardown(automatic_rotation_via_clock, reset_clock),
        cmocka_unit_test(rotation_policy_read_back_can_be_stored),
        cmocka_unit_test(backup_restore),
        cmocka_unit_test(backup_blob_single_char_tampering_refused),
        cmocka_unit_test(state_survives_reopen),
        cmocka_unit_test(sealed_blob_damaged_in_store),
        cmocka_unit_test(sealed_blobs_swapped_in_store),
    };
    return cmocka_run_group_tests_name("kv", tests, group_setup, group_teardown);
}
