/*
 * faults: injected faults for clients to test their retry and caching logic offline
 * (/_emulator/faults). A rule names what to inject (latency, 429, 500 or 503), for which
 * requests (path prefix or glob, optional method and host) and how often (a fraction of the
 * matching requests, optionally at most count times). Requests under /_emulator/ never match.
 *
 * Rules are kept in memory (not persisted), at most EMU_FAULTS_MAX. Every injected fault is
 * audited ("Emulator/faults/Inject"). Thread-safe: one mutex around the rules.
 */
#ifndef CMKEMU_FAULTS_H
#define CMKEMU_FAULTS_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "audit.h"
#include "req.h"

#define EMU_FAULTS_MAX 64
#define EMU_FAULTS_MAX_LATENCY_MS 60000

typedef struct emu_faults emu_faults;

/* audit may be NULL. */
emu_faults *emu_faults_new(emu_audit *audit);
void emu_faults_free(emu_faults *f); /* NULL is a no-op */

/* Adds one rule from a JSON object:
 *   {"fault": "latency"|"429"|"500"|"503", "fraction": 0..1 (default 1),
 *    "path": "/keys" (a prefix, case-insensitive) or a glob with '*' or '?' (fnmatch),
 *    "method": "POST" (optional), "host": "myvault.vault.localhost" (optional glob),
 *    "latencyMs": 1..60000 (latency only), "count": N (optional: at most N injections),
 *    "retryAfter": 0..3600 (optional, seconds; 429 and 503 answer Retry-After: 1 unless set)}
 * On success returns true and *out (new reference) is the rule as listed; on bad input
 * returns false with a message for a 400 in err, and nothing is added. */
bool emu_faults_add(emu_faults *f, const json_t *rule, json_t **out, char *err, size_t errlen);
/* {"value": [rules with "id" and "hits"]} (new reference). */
json_t *emu_faults_list(emu_faults *f);
/* Removes the rule with that id; false when there is none. */
bool emu_faults_remove(emu_faults *f, const char *id);
/* Removes every rule; returns how many there were. */
size_t emu_faults_clear(emu_faults *f);

/* The decision for one request (the http gate): when a rule fires, either answers req (429,
 * 500, 503 with an error body naming the rule) or sets *delay_ms (latency; the caller holds
 * the request that long without blocking a thread, then runs it), and returns true. */
bool emu_faults_apply(emu_faults *f, emu_req *req, long *delay_ms);

#endif
