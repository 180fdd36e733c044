/*
 * req: one HTTP request and its response, independent of the server library, so handlers
 * are tested in-process (emu_req_new + emu_router_dispatch) and served by core/http alike.
 * All request strings live in the request's arena and die with the request.
 * Responses are written only through emu_send_* (one response per request; later calls are
 * ignored and logged).
 */
#ifndef CMKEMU_REQ_H
#define CMKEMU_REQ_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "util.h"

#define EMU_MAX_PARAMS 8
#define EMU_MAX_QUERY 32

typedef struct emu_kv {
    const char *name, *value;
} emu_kv;

typedef struct emu_resp_header {
    char *name, *value;
    struct emu_resp_header *next;
} emu_resp_header;

typedef struct emu_req {
    emu_arena *arena;
    const char *method;
    const char *uri;  /* raw request target as sent */
    const char *path; /* normalised: '//' collapsed, trailing '/' removed (except "/") */
    const char *host; /* Host header as sent ("localhost:8443"), "" if none */
    emu_kv query[EMU_MAX_QUERY];
    size_t nquery;
    bool query_overflow;
    emu_kv *headers;
    size_t nheaders, cap_headers;
    const char *body;
    size_t body_len;
    const char *params[EMU_MAX_PARAMS]; /* captures of the matched route, decoded */
    size_t nparams;
    const void *route;  /* matched route (router-private) */
    bool prechecked;    /* the route's precheck already ran (server: before the body) */
    long max_json_depth;
    /* set by the authentication layer of the family that handles the request */
    void *principal;
    /* response */
    int status;
    char *resp_body;
    size_t resp_len;
    const char *resp_type;
    emu_resp_header *resp_headers;
    bool responded;
} emu_req;

/* Creates a request from a method and raw request target ("/keys/a?api-version=7.4").
 * Splits, decodes and normalises path and query. */
emu_req *emu_req_new(const char *method, const char *uri);
void emu_req_free(emu_req *req);
void emu_req_add_header(emu_req *req, const char *name, const char *value);
/* Copies the body into the arena. */
void emu_req_set_body(emu_req *req, const char *body, size_t len);

const char *emu_req_header(const emu_req *req, const char *name); /* case-insensitive; NULL */
const char *emu_req_query(const emu_req *req, const char *name);  /* case-insensitive; NULL */
const char *emu_req_param(const emu_req *req, size_t i);          /* "" when absent */

/* Parses the body as a JSON object with the depth limit and duplicate keys rejected.
 * On failure returns NULL and writes a message for the client into err. An empty body
 * gives an empty object when allow_empty. The caller owns the result (json_decref). */
json_t *emu_req_json(emu_req *req, bool allow_empty, char *err, size_t errlen);

/* Host without port ("myvault.vault.localhost"), lowercased, into out. */
void emu_req_hostname(const emu_req *req, char *out, size_t outlen);
/* "https://" + Host as sent: the base URL the client used. */
const char *emu_req_base_url(emu_req *req);

/* ---- responses ---- */
void emu_resp_header_add(emu_req *req, const char *name, const char *value);
/* Drops the answer made so far (status, body, headers), so that another can be sent. */
void emu_resp_reset(emu_req *req);
/* Sends JSON and takes ownership of body (may be NULL for an empty body). */
void emu_send_json(emu_req *req, int status, json_t *body);
void emu_send_text(emu_req *req, int status, const char *type, const char *text, size_t len);
/* Sends JSON text the caller built (valid JSON, its own escaping) and takes ownership of the
 * malloc'd buffer: for bodies passed on as stored, without a parse and re-serialisation. */
void emu_send_json_text(emu_req *req, int status, char *text, size_t len);
void emu_send_empty(emu_req *req, int status);
/* Generic error {"error":{"code","message"}} (ARM/BAP shape). Family modules add their own
 * shapes on top of emu_send_json. */
void emu_send_error(emu_req *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Query-string and path decoding, exposed for tests. Decodes %XX (and '+' as space when
 * plus_space). Returns false on a malformed escape. */
bool emu_percent_decode(const char *in, size_t len, bool plus_space, char *out, size_t *out_len);
/* JSON nesting depth of a text without parsing it (strings skipped). */
int emu_json_depth(const char *s, size_t len);

#endif
