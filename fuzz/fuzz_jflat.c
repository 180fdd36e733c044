/*
 * fuzz_jflat: core/jflat.c against jansson. Whatever emu_jflat_scan accepts, jansson must load
 * with JSON_REJECT_DUPLICATES to an object with as many members, each member alone must load
 * to the same key and value, and the text emu_jflat_write makes of the members must load to
 * an object equal to jansson's. (tests/test_jflat.c runs the same check on generated input.)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jflat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    emu_jmember m[EMU_JFLAT_MAX];
    size_t count = 0;
    const char *text = (const char *)data;
    if (!emu_jflat_scan(text, size, m, EMU_JFLAT_MAX, &count))
        return 0;
    json_t *ref = json_loadb(text, size, JSON_REJECT_DUPLICATES, NULL);
    if (!ref || !json_is_object(ref) || json_object_size(ref) != count)
        abort();
    for (size_t i = 0; i < count; i++) {
        char *one = malloc(emu_jflat_size(&m[i], 1));
        if (!one)
            abort();
        size_t ol = emu_jflat_write(&m[i], 1, one);
        json_t *single = json_loadb(one, ol, JSON_REJECT_DUPLICATES, NULL);
        free(one);
        const char *k = NULL;
        json_t *v = NULL;
        if (!single || json_object_size(single) != 1)
            abort();
        json_object_foreach(single, k, v) break;
        json_t *rv = json_object_get(ref, k);
        if (!rv || json_is_object(rv) || json_is_array(rv) || !json_equal(rv, v))
            abort();
        for (size_t j = 0; j < i; j++)
            if (emu_jflat_key_eq(&m[i], &m[j]))
                abort();
        json_decref(single);
    }
    size_t cap = emu_jflat_size(m, count);
    char *out = malloc(cap);
    if (!out)
        abort();
    size_t ol = emu_jflat_write(m, count, out);
    json_t *back = ol == cap ? json_loadb(out, ol, JSON_REJECT_DUPLICATES, NULL) : NULL;
    free(out);
    if (!back || !json_equal(back, ref))
        abort();
    json_decref(back);
    json_decref(ref);
    return 0;
}
