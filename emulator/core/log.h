/*
 * log: one macro, level checked before the arguments are evaluated. Text or JSON lines on
 * stderr. Callers never pass secrets (PINs, key bytes, tokens); request text is escaped and
 * truncated by emu_log_escape.
 */
#ifndef CMKEMU_LOG_H
#define CMKEMU_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { EMU_LOG_DEBUG = 0, EMU_LOG_INFO, EMU_LOG_WARN, EMU_LOG_ERROR, EMU_LOG_OFF } emu_log_level;

extern emu_log_level emu_log_min_level; /* the one mutable global of this module; set at start */

void emu_log_setup(emu_log_level min, bool json);
bool emu_log_parse_level(const char *s, emu_log_level *out);
void emu_log_write(emu_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define emu_log(level, module, ...)                                                           \
    do {                                                                                      \
        if ((level) >= emu_log_min_level)                                                     \
            emu_log_write((level), (module), __VA_ARGS__);                                    \
    } while (0)

/* Copies s into out (size outlen) with control characters and quotes escaped and at most
 * max input bytes, appending "..." when truncated. */
void emu_log_escape(const char *s, size_t max, char *out, size_t outlen);

#endif
