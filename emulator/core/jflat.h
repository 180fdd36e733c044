/*
 * jflat.h: flat JSON objects as text, without building a tree.
 *
 * A record PATCH used to parse its 1 KiB body with jansson, parse the stored row, merge and
 * serialise it again: three byte-by-byte passes that were a quarter of the server's CPU per
 * record write. Most record bodies are flat: one object whose values are strings, numbers,
 * true, false or null. For those, emu_jflat_scan validates the text once and gives each
 * member's key and value as spans of it, and a merge can copy the spans.
 *
 * emu_jflat_scan only says yes to text that jansson would load with JSON_REJECT_DUPLICATES
 * to the same members; "no" means "take the general path" (jansson decides and words the
 * error), not necessarily "invalid". tests/test_jflat.c compares the two on generated and
 * mutated input.
 */
#ifndef CMKEMU_JFLAT_H
#define CMKEMU_JFLAT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *key; /* the key between its quotes, escapes as written */
    size_t key_len;
    const char *val; /* the value as written: "string" with its quotes, a number, true, false
                        or null */
    size_t val_len;
    bool key_esc; /* the key has escapes: compare it decoded */
} emu_jmember;

/* Members the scan takes before it gives the object to the general path. */
#define EMU_JFLAT_MAX 128
/* Length of an escaped key the scan takes (it is decoded on the stack to be compared). */
#define EMU_JFLAT_KEY_MAX 256

/* true when text[0..n) is, apart from whitespace around it, one JSON object whose values are
 * all scalars, which jansson would load with JSON_REJECT_DUPLICATES (valid UTF-8, no \u0000,
 * no lone surrogate, integers within int64, finite reals, no two equal keys), with at most
 * cap members; m[0..*count) then receive its members in order. */
bool emu_jflat_scan(const char *text, size_t n, emu_jmember *m, size_t cap, size_t *count);

/* Whether two members' keys are the same string once their escapes are decoded. */
bool emu_jflat_key_eq(const emu_jmember *a, const emu_jmember *b);

/* Writes {"key":value,...} of m[0..count) into out (which holds emu_jflat_size bytes) and
 * returns its length. No terminating NUL. */
size_t emu_jflat_size(const emu_jmember *m, size_t count);
size_t emu_jflat_write(const emu_jmember *m, size_t count, char *out);

#endif
