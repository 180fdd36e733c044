/*
 * audit: who did what, when, with what outcome - like Key Vault's AuditEvent logs. Every key
 * operation, every mutating ARM call and emulator change is recorded by the HTTP layer's
 * completion hook; domains add their own events (lock, unlock, scheduled purge) with a cause.
 * Kept in memory as a ring of the newest EMU_AUDIT_MAX events (not persisted across
 * restarts), queryable at GET /_emulator/audit. Never holds secrets: paths without query
 * strings, no bodies, no tokens.
 */
#ifndef CMKEMU_AUDIT_H
#define CMKEMU_AUDIT_H

#include <stdint.h>

#include <jansson.h>

#define EMU_AUDIT_MAX 10000

typedef struct emu_audit emu_audit;

typedef struct {
    const char *caller_oid, *caller_appid, *caller_name; /* NULL = system */
    const char *operation;                               /* "POST /keys/{name}/unwrapkey" */
    const char *target;                                  /* path or resource id */
    int status;                                          /* HTTP status, 0 for domain events */
    const char *outcome;                                 /* "Success" | "Failure" | free text */
    const char *detail;                                  /* cause, message; may be NULL */
} emu_audit_event;

emu_audit *emu_audit_new(void);
void emu_audit_free(emu_audit *a);
/* Thread-safe. Copies every string. */
void emu_audit_add(emu_audit *a, const emu_audit_event *ev);
/* Events with id > since (oldest first), at most limit, optionally filtered by a substring of
 * the operation or target and by caller oid/appid. New reference:
 * {"value":[...], "lastId": N}. */
json_t *emu_audit_query(emu_audit *a, int64_t since, int limit, const char *match,
                        const char *caller);

#endif
