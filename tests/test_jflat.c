/*
 * test_jflat: the flat-object fast path (core/jflat.c) against jansson, its reference.
 *
 * emu_jflat_scan may say "no" to anything (the general path then takes it), but when it
 * says "yes", jansson must load the same text with JSON_REJECT_DUPLICATES to an object with
 * the same members and values, and the text emu_jflat_write makes of them must load to the
 * same object. Checked on a table of edge cases and on generated and mutated input; on
 * generated input without the conservative cases (reals near overflow), jflat must also say
 * "yes" whenever jansson loads a flat object.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jflat.h"

/* jansson's reading of text: an object whose values are all scalars, or NULL. */
static json_t *jansson_flat(const char *s, size_t n)
{
    json_t *j = json_loadb(s, n, JSON_REJECT_DUPLICATES, NULL);
    if (!j)
        return NULL;
    const char *k;
    json_t *v;
    bool flat = json_is_object(j);
    if (flat)
        json_object_foreach(j, k, v) if (json_is_object(v) || json_is_array(v)) flat = false;
    if (!flat) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static void print_input(const char *why, const char *s, size_t n)
{
    fprintf(stderr, "%s: %zu bytes: ", why, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f)
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fputc('\n', stderr);
}

/* When jflat accepts s: jansson must agree member by member, and the written text too.
 * Returns whether jflat accepted. */
static bool check_agrees(const char *s, size_t n)
{
    emu_jmember m[EMU_JFLAT_MAX];
    size_t count = 0;
    bool ok = emu_jflat_scan(s, n, m, EMU_JFLAT_MAX, &count);
    if (!ok)
        return false;
    json_t *ref = jansson_flat(s, n);
    if (!ref)
        print_input("jflat accepted what jansson refuses", s, n);
    assert_non_null(ref);
    if (json_object_size(ref) != count)
        print_input("member count differs", s, n);
    assert_int_equal(json_object_size(ref), count);
    for (size_t i = 0; i < count; i++) {
        /* the key, decoded by jansson through a one-member object made of the spans */
        char one[4 * EMU_JFLAT_KEY_MAX + 64];
        char *buf = malloc(m[i].key_len + m[i].val_len + 8);
        assert_non_null(buf);
        size_t bl = emu_jflat_write(&m[i], 1, buf);
        json_t *single = json_loadb(buf, bl, JSON_REJECT_DUPLICATES, NULL);
        free(buf);
        if (!single)
            print_input("a member alone does not load", s, n);
        assert_non_null(single);
        const char *k = NULL;
        json_t *v = NULL;
        json_object_foreach(single, k, v) break;
        assert_non_null(k);
        json_t *rv = json_object_get(ref, k);
        if (!rv || !json_equal(rv, v)) {
            snprintf(one, sizeof one, "member %zu differs", i);
            print_input(one, s, n);
        }
        assert_non_null(rv);
        assert_true(json_equal(rv, v));
        json_decref(single);
        /* and the key comparison agrees with jansson's key equality */
        for (size_t j = 0; j < i; j++)
            assert_false(emu_jflat_key_eq(&m[i], &m[j]));
    }
    size_t cap = emu_jflat_size(m, count);
    char *out = malloc(cap);
    assert_non_null(out);
    size_t ol = emu_jflat_write(m, count, out);
    assert_int_equal(ol, cap);
    json_t *back = json_loadb(out, ol, JSON_REJECT_DUPLICATES, NULL);
    assert_non_null(back);
    assert_true(json_equal(back, ref));
    free(out);
    json_decref(back);
    json_decref(ref);
    return true;
}

typedef struct {
    const char *text;
    int want; /* 1: jflat must accept; 0: must refuse; -1: either (jansson decides) */
} jcase;

static void jflat_table(void **state)
{
    (void)state;
    static const jcase cases[] = {
        {"{}", 1},
        {" \t\r\n{ \n} \n", 1},
        {"{\"a\":1}", 1},
        {"{\"a\":\"x\",\"b\":true,\"c\":false,\"d\":null,\"e\":-0,\"f\":1.5e-3}", 1},
        {"{\"a\" : \"x\" , \"b\" : 2 }", 1},
        {"{\"\":\"\"}", 1},
        {"{\"k\\u00e9\":\"\\ud83d\\ude00 \\\" \\\\ \\/ \\b \\f \\n \\r \\t\"}", 1},
        {"{\"k\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}", 1},
        {"{\"a\":9223372036854775807,\"b\":-9223372036854775808}", 1},
        {"{\"a\":9223372036854775808}", 0},
        {"{\"a\":-9223372036854775809}", 0},
        {"{\"a\":12345678901234567890}", 0},
        {"{\"a\":1e-400}", 1},
        {"{\"a\":1e400}", 0},
        {"{\"a\":1e299}", 1},
        {"{\"a\":1e300}", -1}, /* conservative: jansson decides */
        {"{\"a\":1,\"a\":2}", 0},
        {"{\"a\":1,\"\\u0061\":2}", 0},
        {"{\"\\u00e9\":1,\"\xc3\xa9\":2}", 0},
        {"{\"a\":[1]}", 0},
        {"{\"a\":{}}", 0},
        {"[]", 0},
        {"\"x\"", 0},
        {"", 0},
        {"{", 0},
        {"{\"a\"}", 0},
        {"{\"a\":}", 0},
        {"{\"a\":1,}", 0},
        {"{,\"a\":1}", 0},
        {"{\"a\":1}x", 0},
        {"{\"a\":1}{}", 0},
        {"{\"a\":01}", 0},
        {"{\"a\":1.}", 0},
        {"{\"a\":.5}", 0},
        {"{\"a\":1e}", 0},
        {"{\"a\":+1}", 0},
        {"{\"a\":-}", 0},
        {"{\"a\":truex}", 0},
        {"{\"a\":tru}", 0},
        {"{\"a\":NaN}", 0},
        {"{\"a\":\"\\u0000\"}", 0},
        {"{\"a\":\"\\ud800\"}", 0},
        {"{\"a\":\"\\udc00\"}", 0},
        {"{\"a\":\"\\ud800\\u0041\"}", 0},
        {"{\"a\":\"\\x\"}", 0},
        {"{\"a\":\"\\u12g4\"}", 0},
        {"{\"a\":\"\x01\"}", 0},
        {"{\"a\":\"\xc0\xaf\"}", 0},         /* overlong */
        {"{\"a\":\"\xe0\x80\xaf\"}", 0},     /* overlong, three bytes */
        {"{\"a\":\"\xf0\x80\x80\xaf\"}", 0}, /* overlong, four bytes */
        {"{\"a\":\"\xed\xa0\x80\"}", 0},     /* a surrogate in UTF-8 */
        {"{\"a\":\"\xf4\x90\x80\x80\"}", 0}, /* above U+10FFFF */
        {"{\"a\":\"\x80\"}", 0},
        {"{\"a\":\"\xe2\x82\"}", 0},
        {"{'a':1}", 0},
        {"{a:1}", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *t = cases[i].text;
        bool got = check_agrees(t, strlen(t));
        if (cases[i].want >= 0 && got != (cases[i].want == 1))
            print_input(got ? "accepted, should not be" : "refused, should not be", t, strlen(t));
        if (cases[i].want >= 0)
            assert_int_equal(got, cases[i].want == 1);
    }
    /* a NUL byte inside the text */
    static const char nul[] = "{\"a\":\"x\0y\"}";
    assert_false(check_agrees(nul, sizeof nul - 1));
    /* no more members than the caller has room for */
    emu_jmember m[2];
    size_t c = 0;
    assert_false(emu_jflat_scan("{\"a\":1,\"b\":2,\"c\":3}", 19, m, 2, &c));
    assert_true(emu_jflat_scan("{\"a\":1,\"b\":2}", 13, m, 2, &c));
    assert_int_equal(c, 2);
    assert_int_equal(m[1].val_len, 1);
    assert_memory_equal(m[1].key, "b", 1);
}

/* A small deterministic generator (xorshift64*). */
static uint64_t rng_state;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ULL) >> 33) % n;
}

typedef struct {
    char *b;
    size_t n, cap;
    bool conservative; /* a number jflat may leave to jansson on purpose */
} gbuf;

static void put(gbuf *g, const char *s, size_t n)
{
    if (g->n + n > g->cap) {
        g->cap = (g->n + n) * 2;
        g->b = realloc(g->b, g->cap);
        assert_non_null(g->b);
    }
    memcpy(g->b + g->n, s, n);
    g->n += n;
}
static void puts_(gbuf *g, const char *s)
{
    put(g, s, strlen(s));
}

static void gen_ws(gbuf *g)
{
    static const char *const ws[] = {"", "", "", " ", "\n", "\t ", "\r\n  "};
    puts_(g, ws[rnd(7)]);
}

/* A string body: mostly ASCII, some escapes, some UTF-8, now and then something invalid. */
static void gen_string(gbuf *g, bool key)
{
    static const char *const pieces[] = {
        "a", "Z", "name", "0", " ", "_", "-", "\\\"", "\\\\", "\\/", "\\n", "\\t", "\\b", "\\f",
        "\\r", "\\u0041", "\\u00e9", "\\u20ac", "\\ud83d\\ude00", "\xc3\xa9", "\xe2\x82\xac",
        "\xf0\x9f\x98\x80", "\\u0061", "\\u005F",
        /* invalid now and then */
        "\\u0000", "\\ud800", "\\udc00", "\\q", "\x01", "\xc0\xaf", "\xed\xa0\x80", "\xff",
        "\xe0\x80\xaf", "\xf0\x80\x80\xaf", "\xe2\x82"};
    size_t valid = 24;
    size_t n = rnd(key ? 4 : 12);
    puts_(g, "\"");
    for (size_t i = 0; i < n; i++) {
        size_t which = rnd(200) == 0 ? rnd(sizeof pieces / sizeof pieces[0]) : rnd(valid);
        puts_(g, pieces[which]);
    }
    puts_(g, "\"");
}

static void gen_number(gbuf *g)
{
    static const char *const nums[] = {"0",
                                       "-0",
                                       "1",
                                       "-1",
                                       "42",
                                       "3.25",
                                       "-0.5",
                                       "1e5",
                                       "1E-5",
                                       "2.5e+10",
                                       "1e-400",
                                       "9223372036854775807",
                                       "-9223372036854775808",
                                       "922337203685477580",
                                       "9223372036854775808",
                                       "-9223372036854775809",
                                       "123456789012345678901",
                                       "1e299",
                                       "1.7976931348623157e308",
                                       "1e309",
                                       "01",
                                       "1.",
                                       ".5",
                                       "+1",
                                       "-",
                                       "1e",
                                       "1e+",
                                       "0x10"};
    size_t i = rnd(sizeof nums / sizeof nums[0]);
    if (i == 17 || i == 18 || i == 19)
        g->conservative = true;
    puts_(g, nums[i]);
}

static void gen_value(gbuf *g)
{
    switch (rnd(10)) {
    case 0:
        puts_(g, "true");
        break;
    case 1:
        puts_(g, "false");
        break;
    case 2:
        puts_(g, "null");
        break;
    case 3:
    case 4:
        gen_number(g);
        break;
    case 5:
        if (rnd(10) == 0) { /* a nested value now and then: the general path's */
            puts_(g, rnd(2) ? "[1,\"x\"]" : "{\"in\":true}");
            break;
        }
        /* fall through */
    default:
        gen_string(g, false);
        break;
    }
}

static void gen_object(gbuf *g)
{
    g->n = 0;
    g->conservative = false;
    gen_ws(g);
    puts_(g, "{");
    size_t n = rnd(8);
    for (size_t i = 0; i < n; i++) {
        if (i) {
            gen_ws(g);
            puts_(g, ",");
        }
        gen_ws(g);
        gen_string(g, true);
        gen_ws(g);
        puts_(g, ":");
        gen_ws(g);
        gen_value(g);
    }
    gen_ws(g);
    puts_(g, "}");
    gen_ws(g);
}

static void mutate(gbuf *g)
{
    static const char bytes[] = "{}[]\",:\\u0123456789eE.+-tfn \x00\x80\xc3\xa9\xff";
    size_t k = 1 + rnd(3);
    for (size_t i = 0; i < k && g->n; i++) {
        size_t at = rnd((uint32_t)g->n);
        char c = bytes[rnd(sizeof bytes - 1)];
        switch (rnd(3)) {
        case 0:
            g->b[at] = c;
            break;
        case 1: /* delete */
            memmove(g->b + at, g->b + at + 1, g->n - at - 1);
            g->n--;
            break;
        default: /* insert */
            put(g, " ", 1);
            memmove(g->b + at + 1, g->b + at, g->n - at - 1);
            g->b[at] = c;
            break;
        }
    }
}

static void jflat_against_jansson(void **state)
{
    (void)state;
    gbuf g = {0};
    unsigned long generated = 0, agreed_yes = 0, mutated_yes = 0, jansson_yes = 0;
    rng_state = 0x9e3779b97f4a7c15ULL;
    for (int iter = 0; iter < 300000; iter++) {
        gen_object(&g);
        generated++;
        bool ours = check_agrees(g.b, g.n);
        json_t *ref = jansson_flat(g.b, g.n);
        if (ref) {
            jansson_yes++;
            if (!g.conservative) {
                if (!ours)
                    print_input("a flat object jansson loads was refused", g.b, g.n);
                assert_true(ours);
            }
            json_decref(ref);
        }
        agreed_yes += ours;
        mutate(&g);
        mutated_yes += check_agrees(g.b, g.n);
    }
    free(g.b);
    /* the generator exercised both answers */
    assert_true(jansson_yes > generated / 2);
    assert_true(agreed_yes > generated / 2);
    assert_true(mutated_yes > 100);
    assert_true(agreed_yes < generated);
    printf("jflat: %lu generated, %lu flat to jansson, %lu taken; %lu mutated taken\n", generated,
           jansson_yes, agreed_yes, mutated_yes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(jflat_table),
        cmocka_unit_test(jflat_against_jansson),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
