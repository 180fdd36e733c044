#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "util.h"

emu_log_level emu_log_min_level = EMU_LOG_INFO;
static bool log_json;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void emu_log_setup(emu_log_level min, bool json)
{
    emu_log_min_level = min;
    log_json = json;
}

bool emu_log_parse_level(const char *s, emu_log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (emu_log_level)i;
            return true;
        }
    return false;
}

void emu_log_escape(const char *s, size_t max, char *out, size_t outlen)
{
    size_t o = 0;
    if (outlen == 0)
        return;
    for (size_t i = 0; s && s[i]; i++) {
        if (i >= max) {
            if (o + 4 < outlen) {
                memcpy(out + o, "...", 3);
                o += 3;
            }
            break;
        }
        unsigned char c = (unsigned char)s[i];
        char tmp[8];
        size_t n;
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            n = 2;
        } else if (c < 0x20 || c == 0x7f) {
            n = (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", c);
        } else if (c >= 0x80) {
            /* a whole UTF-8 sequence is kept; a stray byte becomes backslash, backslash, x, two
             * hex digits (valid inside a JSON string, like the \u escapes), so the text stays
             * UTF-8 for JSON log lines and the error messages built from it */
            size_t sl = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
            if (sl > 1 && strnlen(s + i, sl) == sl && emu_utf8_valid(s + i, sl)) {
                memcpy(tmp, s + i, sl);
                n = sl;
                i += sl - 1;
            } else {
                n = (size_t)snprintf(tmp, sizeof tmp, "\\\\x%02x", c);
            }
        } else {
            tmp[0] = (char)c;
            n = 1;
        }
        if (o + n + 1 > outlen)
            break;
        memcpy(out + o, tmp, n);
        o += n;
    }
    out[o] = '\0';
}

void emu_log_write(emu_log_level level, const char *module, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    pthread_mutex_lock(&log_lock);
    if (log_json) {
        char esc[4200];
        emu_log_escape(msg, sizeof msg, esc, sizeof esc);
        fprintf(stderr, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\",\"module\":\"%s\",\"msg\":\"%s\"}\n",
                when, ts.tv_nsec / 1000000, names[level], module, esc);
    } else {
        fprintf(stderr, "%s.%03ldZ %-5s %-8s %s\n", when, ts.tv_nsec / 1000000, names[level],
                module, msg);
    }
    pthread_mutex_unlock(&log_lock);
}
