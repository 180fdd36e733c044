/*
 * fuzz_b64url: core/util.c base64url. Any bytes decode or are refused without overrunning;
 * what decodes re-encodes to text that decodes to the same bytes; any bytes survive
 * encode -> decode (base64url and standard base64 with padding); the max_out cap holds.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define FZ_MAX_OUT (64u << 10)

static void expect_roundtrip(const char *text, const uint8_t *want, size_t want_len)
{
    size_t n = 0;
    uint8_t *d = emu_b64url_decode(text, strlen(text), FZ_MAX_OUT, &n);
    if (!d || n != want_len || (n && memcmp(d, want, n)))
        abort();
    free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n = 0;
    uint8_t *d = emu_b64url_decode((const char *)data, size, FZ_MAX_OUT, &n);
    if (d) {
        if (n > FZ_MAX_OUT)
            abort();
        char *again = emu_b64url_encode(d, n);
        expect_roundtrip(again, d, n);
        free(again);
        /* the cap: one byte less than the output must be refused */
        if (n > 0) {
            size_t m = 0;
            uint8_t *capped = emu_b64url_decode((const char *)data, size, n - 1, &m);
            if (capped)
                abort();
        }
        free(d);
    }
    if (size <= FZ_MAX_OUT) {
        char *e = emu_b64url_encode(data, size);
        if (strchr(e, '=') || strchr(e, '+') || strchr(e, '/'))
            abort();
        expect_roundtrip(e, data, size);
        free(e);
        char *s = emu_b64_encode(data, size);
        if (strlen(s) % 4)
            abort();
        expect_roundtrip(s, data, size);
        free(s);
    }
    return 0;
}
