#include "jflat.h"

#include <stdint.h>
#include <string.h>

#include "util.h"

/* JSON's four whitespace bytes, as jansson's lexer skips them. */
static size_t skip_ws(const unsigned char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* The four hex digits at s[i..i+4) (after "\u"). */
static bool hex4(const unsigned char *s, size_t n, size_t i, uint32_t *out)
{
    uint32_t v = 0;
    if (i > n || n - i < 4)
        return false;
    for (size_t k = 0; k < 4; k++) {
        int h = emu_hex_digit(s[i + k]);
        if (h < 0)
            return false;
        v = (v << 4) | (uint32_t)h;
    }
    *out = v;
    return true;
}

/* s[i] is '"'. Returns the index after the closing quote, 0 for anything jansson refuses:
 * a control byte, an unknown escape, \u0000, a lone or unpaired surrogate, bad UTF-8. */
static size_t scan_string(const unsigned char *s, size_t n, size_t i, bool *esc)
{
    i++;
    for (;;) {
        while (i < n && s[i] >= 0x20 && s[i] < 0x80 && s[i] != '"' && s[i] != '\\')
            i++;
        if (i >= n)
            return 0;
        unsigned c = s[i];
        if (c == '"')
            return i + 1;
        if (c < 0x20)
            return 0;
        if (c >= 0x80) {
            size_t len = emu_utf8_seq(s + i, n - i);
            if (!len)
                return 0;
            i += len;
            continue;
        }
        /* a backslash */
        *esc = true;
        if (i + 1 >= n)
            return 0;
        unsigned e = s[i + 1];
        if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' ||
            e == 't') {
            i += 2;
            continue;
        }
        uint32_t cp, lo;
        if (e != 'u' || !hex4(s, n, i + 2, &cp) || cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
            return 0;
        i += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (i + 1 >= n || s[i] != '\\' || s[i + 1] != 'u' || !hex4(s, n, i + 2, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF)
                return 0;
            i += 6;
        }
    }
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* A JSON number at s[i]; returns the index after it, 0 when it is not one or when jansson
 * might refuse it: an integer outside int64 ("too big integer"), or a real that could
 * overflow a double (decided conservatively: the general path then asks strtod). */
static size_t scan_number(const unsigned char *s, size_t n, size_t i)
{
    bool neg = false, real = false;
    if (s[i] == '-') {
        neg = true;
        i++;
    }
    if (i >= n)
        return 0;
    size_t ds = i;
    if (s[i] == '0') {
        i++;
        if (i < n && is_digit(s[i]))
            return 0; /* a leading zero */
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < n && is_digit(s[i]))
            i++;
    } else {
        return 0;
    }
    size_t idig = i - ds;
    long exp = 0;
    if (i < n && s[i] == '.') {
        real = true;
        i++;
        if (i >= n || !is_digit(s[i]))
            return 0;
        while (i < n && is_digit(s[i]))
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        bool eneg = false;
        real = true;
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            eneg = s[i++] == '-';
        if (i >= n || !is_digit(s[i]))
            return 0;
        while (i < n && is_digit(s[i])) {
            if (exp < 100000)
                exp = exp * 10 + (s[i] - '0');
            i++;
        }
        if (eneg)
            exp = -exp;
    }
    if (!real) {
        if (idig < 19)
            return i;
        if (idig > 19)
            return 0;
        return memcmp(s + ds, neg ? "9223372036854775808" : "9223372036854775807", 19) <= 0 ? i : 0;
    }
    /* below 10^(idig + exp) <= 10^300: no overflow (underflow is no error to jansson) */
    return (long)idig + exp <= 300 ? i : 0;
}

static size_t scan_literal(const unsigned char *s, size_t n, size_t i, const char *lit)
{
    size_t l = strlen(lit);
    if (n - i < l || memcmp(s + i, lit, l) != 0)
        return 0;
    return i + l;
}

/* Decodes a key scanned by emu_jflat_scan (escapes valid) into out (>= len bytes: decoding
 * never lengthens). Returns the decoded length. */
static size_t decode_key(const char *k, size_t len, char *out)
{
    const unsigned char *s = (const unsigned char *)k;
    size_t i = 0, o = 0;
    while (i < len) {
        if (s[i] != '\\') {
            out[o++] = (char)s[i++];
            continue;
        }
        unsigned char e = s[i + 1];
        uint32_t cp = 0, lo = 0;
        if (e != 'u') {
            /* \b \f \n \r \t, or \" \\ \/ standing for themselves */
            static const char from[] = "bfnrt", to[] = "\b\f\n\r\t";
            const char *f = memchr(from, e, sizeof from - 1);
            out[o++] = f ? to[f - from] : (char)e;
            i += 2;
            continue;
        }
        hex4(s, len, i + 2, &cp);
        i += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            hex4(s, len, i + 2, &lo);
            i += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xC0 | (cp >> 6));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xE0 | (cp >> 12));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | (cp >> 18));
            out[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return o;
}

bool emu_jflat_key_eq(const emu_jmember *a, const emu_jmember *b)
{
    if (!a->key_esc && !b->key_esc)
        return a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0;
    char da[EMU_JFLAT_KEY_MAX], db[EMU_JFLAT_KEY_MAX];
    if (a->key_len > sizeof da || b->key_len > sizeof db)
        return false; /* the scan gives no such member */
    size_t la = a->key_esc ? decode_key(a->key, a->key_len, da) : a->key_len;
    size_t lb = b->key_esc ? decode_key(b->key, b->key_len, db) : b->key_len;
    return la == lb && memcmp(a->key_esc ? da : a->key, b->key_esc ? db : b->key, la) == 0;
}

bool emu_jflat_scan(const char *text, size_t n, emu_jmember *m, size_t cap, size_t *count)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t k = 0;
    size_t i = skip_ws(s, n, 0);
    if (i >= n || s[i] != '{')
        return false;
    i = skip_ws(s, n, i + 1);
    if (i < n && s[i] == '}') {
        i++;
    } else {
        for (;;) {
            if (i >= n || s[i] != '"' || k == cap)
                return false;
            bool esc = false;
            size_t ke = scan_string(s, n, i, &esc);
            if (!ke || (esc && ke - i - 2 > EMU_JFLAT_KEY_MAX))
                return false;
            m[k].key = text + i + 1;
            m[k].key_len = ke - i - 2;
            m[k].key_esc = esc;
            i = skip_ws(s, n, ke);
            if (i >= n || s[i] != ':')
                return false;
            i = skip_ws(s, n, i + 1);
            if (i >= n)
                return false;
            size_t ve;
            bool vesc = false;
            switch (s[i]) {
            case '"':
                ve = scan_string(s, n, i, &vesc);
                break;
            case 't':
                ve = scan_literal(s, n, i, "true");
                break;
            case 'f':
                ve = scan_literal(s, n, i, "false");
                break;
            case 'n':
                ve = scan_literal(s, n, i, "null");
                break;
            default:
                ve = (s[i] == '-' || is_digit(s[i])) ? scan_number(s, n, i) : 0;
                break;
            }
            if (!ve)
                return false; /* also an object or array value: the general path */
            m[k].val = text + i;
            m[k].val_len = ve - i;
            for (size_t j = 0; j < k; j++)
                if (emu_jflat_key_eq(&m[j], &m[k]))
                    return false;
            k++;
            i = skip_ws(s, n, ve);
            if (i < n && s[i] == ',') {
                i = skip_ws(s, n, i + 1);
                continue;
            }
            if (i < n && s[i] == '}') {
                i++;
                break;
            }
            return false;
        }
    }
    if (skip_ws(s, n, i) != n)
        return false;
    *count = k;
    return true;
}

size_t emu_jflat_size(const emu_jmember *m, size_t count)
{
    size_t n = 2; /* {} */
    for (size_t i = 0; i < count; i++)
        n += m[i].key_len + m[i].val_len + 3 + (i > 0); /* "": and the comma */
    return n;
}

size_t emu_jflat_write(const emu_jmember *m, size_t count, char *out)
{
    char *w = out;
    *w++ = '{';
    for (size_t i = 0; i < count; i++) {
        if (i)
            *w++ = ',';
        *w++ = '"';
        memcpy(w, m[i].key, m[i].key_len);
        w += m[i].key_len;
        *w++ = '"';
        *w++ = ':';
        memcpy(w, m[i].val, m[i].val_len);
        w += m[i].val_len;
    }
    *w++ = '}';
    return (size_t)(w - out);
}
