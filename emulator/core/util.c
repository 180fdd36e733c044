#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

static void oom(void)
{
    fputs("cmkemu: out of memory\n", stderr);
    abort();
}

void *emu_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

void *emu_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom();
    return p;
}

void *emu_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom();
    return q;
}

char *emu_xstrdup(const char *s)
{
    return emu_xstrndup(s, strlen(s));
}

char *emu_xstrndup(const char *s, size_t n)
{
    char *p = emu_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *emu_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom();
    char *p = emu_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

/* ---- arena ---- */
struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};
struct emu_arena {
    struct arena_block *head;
};

emu_arena *emu_arena_new(void)
{
    return emu_xcalloc(1, sizeof(emu_arena));
}

void emu_arena_free(emu_arena *a)
{
    if (!a)
        return;
    struct arena_block *b = a->head;
    while (b) {
        struct arena_block *n = b->next;
        free(b);
        b = n;
    }
    free(a);
}

void *emu_arena_alloc(emu_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct arena_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 8192 ? n : 8192;
        b = emu_xmalloc(sizeof(*b) + cap);
        b->cap = cap;
        b->used = 0;
        b->next = a->head;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

char *emu_arena_strndup(emu_arena *a, const char *s, size_t n)
{
    char *p = emu_arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *emu_arena_strdup(emu_arena *a, const char *s)
{
    return emu_arena_strndup(a, s, strlen(s));
}

/* ---- numbers ---- */
bool emu_parse_i64n(const char *s, size_t n, int64_t min, int64_t max, int64_t *out)
{
    if (!s || n == 0 || n > 20)
        return false;
    size_t i = 0;
    bool neg = false;
    if (s[0] == '-' || s[0] == '+') {
        neg = s[0] == '-';
        i = 1;
        if (n == 1)
            return false;
    }
    uint64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    int64_t r;
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return false;
        r = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX)
            return false;
        r = (int64_t)v;
    }
    if (r < min || r > max)
        return false;
    *out = r;
    return true;
}

bool emu_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    return s && emu_parse_i64n(s, strlen(s), min, max, out);
}

/* ---- base64 ---- */
static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char B64STD[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const uint8_t *in, size_t len, const char *alpha, bool pad)
{
    size_t olen = (len + 2) / 3 * 4 + 1;
    char *out = emu_xmalloc(olen);
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alpha[v >> 18 & 63];
        out[o++] = alpha[v >> 12 & 63];
        out[o++] = alpha[v >> 6 & 63];
        out[o++] = alpha[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alpha[v >> 18 & 63];
        out[o++] = alpha[v >> 12 & 63];
        if (pad) {
            out[o++] = '=';
            out[o++] = '=';
        }
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alpha[v >> 18 & 63];
        out[o++] = alpha[v >> 12 & 63];
        out[o++] = alpha[v >> 6 & 63];
        if (pad)
            out[o++] = '=';
    }
    out[o] = '\0';
    return out;
}

char *emu_b64url_encode(const uint8_t *in, size_t len)
{
    return b64_encode(in, len, B64URL, false);
}

char *emu_b64_encode(const uint8_t *in, size_t len)
{
    return b64_encode(in, len, B64STD, true);
}

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-' || c == '+')
        return 62;
    if (c == '_' || c == '/')
        return 63;
    return -1;
}

uint8_t *emu_b64url_decode(const char *in, size_t in_len, size_t max_out, size_t *out_len)
{
    while (in_len > 0 && in[in_len - 1] == '=')
        in_len--;
    if (in_len % 4 == 1)
        return NULL;
    size_t olen = in_len / 4 * 3 + (in_len % 4 ? in_len % 4 - 1 : 0);
    if (olen > max_out)
        return NULL;
    uint8_t *out = emu_xmalloc(olen + 1);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < in_len; i++) {
        int v = b64_val((unsigned char)in[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    /* leftover bits must be zero for a canonical encoding; be lenient like the service */
    *out_len = o;
    return out;
}

void emu_hex_encode(const uint8_t *in, size_t len, char *out)
{
    static const char H[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = H[in[i] >> 4];
        out[2 * i + 1] = H[in[i] & 15];
    }
    out[2 * len] = '\0';
}

int emu_hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool emu_hex_decode(const char *in, uint8_t *out, size_t out_len)
{
    if (strlen(in) != out_len * 2)
        return false;
    for (size_t i = 0; i < out_len; i++) {
        int a = emu_hex_digit((unsigned char)in[2 * i]),
            b = emu_hex_digit((unsigned char)in[2 * i + 1]);
        if (a < 0 || b < 0)
            return false;
        out[i] = (uint8_t)(a << 4 | b);
    }
    return true;
}

/* ---- ISO-8601 durations ---- */
bool emu_iso_duration_parse(const char *s, int64_t *seconds)
{
    if (!s || (s[0] != 'P' && s[0] != 'p') || s[1] == '\0')
        return false;
    /* designators in their only allowed order, each at most once */
    static const char DATE_ORDER[] = "YMWD", TIME_ORDER[] = "HMS";
    static const int64_t DATE_UNIT[] = {365 * 86400LL, 30 * 86400LL, 7 * 86400LL, 86400};
    static const int64_t TIME_UNIT[] = {3600, 60, 1};
    const char *p = s + 1;
    bool time_part = false, any = false;
    int next = 0; /* index into the current order that the next designator must reach */
    int64_t total = 0;
    while (*p) {
        if (*p == 'T' || *p == 't') {
            if (time_part)
                return false;
            time_part = true;
            next = 0;
            p++;
            if (!*p)
                return false;
            continue;
        }
        const char *start = p;
        while (*p >= '0' && *p <= '9')
            p++;
        if (p == start || !*p)
            return false;
        int64_t n;
        if (!emu_parse_i64n(start, (size_t)(p - start), 0, 1000000000, &n))
            return false;
        const char *order = time_part ? TIME_ORDER : DATE_ORDER;
        const char *hit = strchr(order, toupper((unsigned char)*p));
        if (!hit || !*p)
            return false;
        int idx = (int)(hit - order);
        if (idx < next)
            return false;
        next = idx + 1;
        int64_t unit = time_part ? TIME_UNIT[idx] : DATE_UNIT[idx];
        if (n > (INT64_MAX / 4 - total) / unit)
            return false;
        total += n * unit;
        any = true;
        p++;
    }
    if (!any)
        return false;
    *seconds = total;
    return true;
}

bool emu_ct_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

bool emu_ct_streq(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb)
        return false;
    return CRYPTO_memcmp(a, b, la) == 0;
}

void emu_time_rfc3339(int64_t t, char *out, size_t outlen)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

bool emu_time_parse_rfc3339(const char *s, int64_t *out)
{
    /* YYYY-MM-DDTHH:MM:SS[.fff][Z|+HH:MM] */
    int64_t f[6];
    static const int pos[6] = {0, 5, 8, 11, 14, 17};
    static const int len[6] = {4, 2, 2, 2, 2, 2};
    size_t n = strlen(s);
    if (n < 19 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        s[13] != ':' || s[16] != ':')
        return false;
    for (int i = 0; i < 6; i++)
        if (!all_digits(s + pos[i], (size_t)len[i]) ||
            !emu_parse_i64n(s + pos[i], (size_t)len[i], 0, 9999, &f[i]))
            return false;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return false;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    int64_t off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int64_t hh, mm;
        if (strlen(p) != 6 || p[3] != ':' || !all_digits(p + 1, 2) || !all_digits(p + 4, 2) ||
            !emu_parse_i64n(p + 1, 2, 0, 23, &hh) || !emu_parse_i64n(p + 4, 2, 0, 59, &mm))
            return false;
        off = (hh * 3600 + mm * 60) * (*p == '+' ? 1 : -1);
        p += 6;
    } else if (*p != '\0') {
        return false;
    }
    if (*p)
        return false;
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (f[0] % 4 == 0 && f[0] % 100 != 0) || f[0] % 400 == 0;
    if (f[1] < 1 || f[1] > 12 || f[2] < 1 || f[3] > 23 || f[4] > 59 || f[5] > 60)
        return false;
    if (f[2] > mdays[f[1] - 1] + (f[1] == 2 && leap))
        return false;
    struct tm tm = {0};
    tm.tm_year = (int)f[0] - 1900;
    tm.tm_mon = (int)f[1] - 1;
    tm.tm_mday = (int)f[2];
    tm.tm_hour = (int)f[3];
    tm.tm_min = (int)f[4];
    tm.tm_sec = (int)f[5];
    *out = (int64_t)timegm(&tm) - off;
    return true;
}

void emu_guid(char out[37])
{
    uint8_t b[16];
    if (RAND_bytes(b, sizeof b) != 1)
        abort();
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    char hex[33];
    emu_hex_encode(b, 16, hex);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}

bool emu_streq_ci(const char *a, const char *b)
{
    return strcasecmp(a, b) == 0;
}

void emu_lower_copy(char *dst, size_t dstlen, const char *src)
{
    size_t i = 0;
    if (!dstlen)
        return;
    for (; src[i] && i + 1 < dstlen; i++)
        dst[i] = (src[i] >= 'A' && src[i] <= 'Z') ? (char)(src[i] - 'A' + 'a') : src[i];
    dst[i] = '\0';
}

size_t emu_utf8_seq(const unsigned char *p, size_t avail)
{
    unsigned c = p[0];
    size_t n;
    unsigned cp, min;
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0)
        n = 1, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        n = 2, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        n = 3, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (avail <= n)
        return 0;
    for (size_t k = 1; k <= n; k++) {
        if ((p[k] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n + 1;
}

void emu_utf8_repair(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t len = strlen(s), i = 0;
    while (i < len) {
        size_t n = emu_utf8_seq(p + i, len - i);
        if (n == 0) {
            p[i] = '?';
            n = 1;
        }
        i += n;
    }
}

bool emu_utf8_valid(const char *s, size_t len)
{
    for (size_t i = 0, n; i < len; i += n)
        if ((n = emu_utf8_seq((const unsigned char *)s + i, len - i)) == 0)
            return false;
    return true;
}
