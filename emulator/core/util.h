/*
 * util: allocation that aborts on OOM (emu_xmalloc), a per-request arena, bounded number
 * parsing, base64url, hex, ISO-8601 durations and constant-time comparison.
 * Allocations sized by a client must be capped by the caller before calling these.
 */
#ifndef CMKEMU_UTIL_H
#define CMKEMU_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void *emu_xmalloc(size_t n);
void *emu_xcalloc(size_t n, size_t size);
void *emu_xrealloc(void *p, size_t n);
char *emu_xstrdup(const char *s);
char *emu_xstrndup(const char *s, size_t n);
/* printf into a new malloc'd string (aborts on OOM). */
char *emu_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Arena: bump allocator freed at once. */
typedef struct emu_arena emu_arena;
emu_arena *emu_arena_new(void);
void emu_arena_free(emu_arena *a);
void *emu_arena_alloc(emu_arena *a, size_t n);
char *emu_arena_strndup(emu_arena *a, const char *s, size_t n);
char *emu_arena_strdup(emu_arena *a, const char *s);

/* Parses a whole decimal integer in [min,max]. false on anything else (sign allowed). */
bool emu_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);
bool emu_parse_i64n(const char *s, size_t n, int64_t min, int64_t max, int64_t *out);

/* base64url (RFC 4648 section 5), no padding on output; decode accepts with or without
 * padding and also standard '+' '/' alphabet. Output malloc'd; NULL on malformed input.
 * max_out caps the decoded size (a larger input is rejected). */
char *emu_b64url_encode(const uint8_t *in, size_t len);
uint8_t *emu_b64url_decode(const char *in, size_t in_len, size_t max_out, size_t *out_len);
/* standard base64 with padding */
char *emu_b64_encode(const uint8_t *in, size_t len);

/* The value of one hex digit (either case), -1 for any other byte. */
int emu_hex_digit(unsigned char c);
void emu_hex_encode(const uint8_t *in, size_t len, char *out /* 2*len+1 */);
bool emu_hex_decode(const char *in, uint8_t *out, size_t out_len /* strlen(in)==2*out_len */);

/* ISO-8601 duration (PnYnMnDTnHnMnS, PnW) to seconds; years = 365 days, months = 30 days.
 * false on malformed input. */
bool emu_iso_duration_parse(const char *s, int64_t *seconds);

/* Constant-time equality for secrets. */
bool emu_ct_equal(const void *a, const void *b, size_t n);
bool emu_ct_streq(const char *a, const char *b);

/* Format unix time as RFC 3339 UTC ("2026-11-23T10:00:00Z"). out >= 32 bytes. */
void emu_time_rfc3339(int64_t t, char *out, size_t outlen);
/* Parse RFC 3339 (Z or offset, optional fraction). */
bool emu_time_parse_rfc3339(const char *s, int64_t *out);

/* Random GUID string (lowercase, 36 chars + NUL) from OpenSSL's CSPRNG. */
void emu_guid(char out[37]);

/* ASCII-lowercased copy of src into dst (truncated to dstlen - 1 bytes, always terminated). */
void emu_lower_copy(char *dst, size_t dstlen, const char *src);

/* Length of the one well-formed UTF-8 sequence at p (at most avail bytes; 1 for ASCII), 0 if
 * there is none: no stray continuation byte, overlong form, surrogate or code point above
 * U+10FFFF (jansson's rules too). */
size_t emu_utf8_seq(const unsigned char *p, size_t avail);
/* Whether s[0..len) is well-formed UTF-8 as JSON needs it (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF). */
bool emu_utf8_valid(const char *s, size_t len);

/* Replaces, in place, every byte of s that is not part of well-formed UTF-8 with '?' (a
 * sequence cut by snprintf, a client's stray byte), so s can go into JSON. */
void emu_utf8_repair(char *s);

/* Case-insensitive ASCII compare helpers */
bool emu_streq_ci(const char *a, const char *b);

#endif
