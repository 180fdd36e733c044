#include "req.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

bool emu_percent_decode(const char *in, size_t len, bool plus_space, char *out, size_t *out_len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%') {
            if (i + 2 >= len)
                return false;
            int a = emu_hex_digit((unsigned char)in[i + 1]),
                b = emu_hex_digit((unsigned char)in[i + 2]);
            if (a < 0 || b < 0)
                return false;
            out[o++] = (char)(a << 4 | b);
            i += 2;
        } else if (c == '+' && plus_space) {
            out[o++] = ' ';
        } else {
            out[o++] = c;
        }
    }
    out[o] = '\0';
    *out_len = o;
    return true;
}

static void parse_query(emu_req *req, const char *q)
{
    while (*q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        if (len > 0) {
            const char *eq = memchr(q, '=', len);
            size_t nl = eq ? (size_t)(eq - q) : len;
            size_t vl = eq ? len - nl - 1 : 0;
            char *name = emu_arena_alloc(req->arena, nl + 1);
            char *value = emu_arena_alloc(req->arena, vl + 1);
            size_t d;
            bool ok = emu_percent_decode(q, nl, true, name, &d) &&
                      emu_percent_decode(eq ? eq + 1 : "", vl, true, value, &d);
            if (ok) {
                if (req->nquery < EMU_MAX_QUERY) {
                    req->query[req->nquery].name = name;
                    req->query[req->nquery].value = value;
                    req->nquery++;
                } else {
                    req->query_overflow = true;
                }
            }
        }
        if (!amp)
            break;
        q = amp + 1;
    }
}

emu_req *emu_req_new(const char *method, const char *uri)
{
    emu_arena *a = emu_arena_new();
    emu_req *req = emu_arena_alloc(a, sizeof *req);
    memset(req, 0, sizeof *req);
    req->arena = a;
    req->method = emu_arena_strdup(a, method);
    req->uri = emu_arena_strdup(a, uri);
    req->host = "";
    req->max_json_depth = 32;
    req->status = 0;
    const char *qm = strchr(uri, '?');
    size_t plen = qm ? (size_t)(qm - uri) : strlen(uri);
    /* normalise: collapse '//' runs, drop a trailing '/' */
    char *p = emu_arena_alloc(a, plen + 2);
    size_t o = 0;
    if (plen == 0 || uri[0] != '/')
        p[o++] = '/';
    for (size_t i = 0; i < plen; i++) {
        if (uri[i] == '/' && o > 0 && p[o - 1] == '/')
            continue;
        p[o++] = uri[i];
    }
    while (o > 1 && p[o - 1] == '/')
        o--;
    p[o] = '\0';
    req->path = p;
    if (qm)
        parse_query(req, qm + 1);
    return req;
}

void emu_resp_reset(emu_req *req)
{
    free(req->resp_body);
    emu_resp_header *h = req->resp_headers;
    while (h) {
        emu_resp_header *n = h->next;
        free(h->name);
        free(h->value);
        free(h);
        h = n;
    }
    req->resp_body = NULL;
    req->resp_len = 0;
    req->resp_type = NULL;
    req->resp_headers = NULL;
    req->status = 0;
    req->responded = false;
}

void emu_req_free(emu_req *req)
{
    if (!req)
        return;
    emu_resp_reset(req);
    emu_arena_free(req->arena);
}

void emu_req_add_header(emu_req *req, const char *name, const char *value)
{
    if (req->nheaders == req->cap_headers) {
        size_t cap = req->cap_headers ? req->cap_headers * 2 : 16;
        emu_kv *n = emu_arena_alloc(req->arena, cap * sizeof *n);
        if (req->nheaders)
            memcpy(n, req->headers, req->nheaders * sizeof *n);
        req->headers = n;
        req->cap_headers = cap;
    }
    req->headers[req->nheaders].name = emu_arena_strdup(req->arena, name);
    req->headers[req->nheaders].value = emu_arena_strdup(req->arena, value ? value : "");
    req->nheaders++;
    if (!strcasecmp(name, "host"))
        req->host = req->headers[req->nheaders - 1].value;
}

void emu_req_set_body(emu_req *req, const char *body, size_t len)
{
    req->body = emu_arena_strndup(req->arena, body ? body : "", len);
    req->body_len = len;
}

const char *emu_req_header(const emu_req *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (!strcasecmp(req->headers[i].name, name))
            return req->headers[i].value;
    return NULL;
}

const char *emu_req_query(const emu_req *req, const char *name)
{
    for (size_t i = 0; i < req->nquery; i++)
        if (!strcasecmp(req->query[i].name, name))
            return req->query[i].value;
    return NULL;
}

const char *emu_req_param(const emu_req *req, size_t i)
{
    return i < req->nparams && req->params[i] ? req->params[i] : "";
}

int emu_json_depth(const char *s, size_t len)
{
    int depth = 0, max = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"')
            in_str = true;
        else if (c == '{' || c == '[') {
            if (++depth > max)
                max = depth;
        } else if (c == '}' || c == ']')
            depth--;
    }
    return max;
}

json_t *emu_req_json(emu_req *req, bool allow_empty, char *err, size_t errlen)
{
    size_t len = req->body_len;
    const char *b = req->body ? req->body : "";
    size_t i = 0;
    while (i < len && isspace((unsigned char)b[i]))
        i++;
    if (i == len) {
        if (allow_empty)
            return json_object();
        snprintf(err, errlen, "The request body is empty; a JSON object is required.");
        return NULL;
    }
    if (emu_json_depth(b, len) > req->max_json_depth) {
        snprintf(err, errlen, "The request body nests JSON deeper than %ld levels.",
                 req->max_json_depth);
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(b, len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        /* jansson quotes the offending bytes: escaped, so the message stays UTF-8 and the
         * error answer that carries it can be built */
        char esc[4 * JSON_ERROR_TEXT_LENGTH];
        emu_log_escape(je.text, JSON_ERROR_TEXT_LENGTH, esc, sizeof esc);
        snprintf(err, errlen, "The request body is not valid JSON: %s (line %d, column %d).", esc,
                 je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        snprintf(err, errlen, "The request body must be a JSON object.");
        return NULL;
    }
    return j;
}

void emu_req_hostname(const emu_req *req, char *out, size_t outlen)
{
    const char *h = req->host ? req->host : "";
    size_t n;
    if (h[0] == '[') {
        const char *e = strchr(h, ']');
        n = e ? (size_t)(e - h) + 1 : strlen(h);
    } else {
        const char *c = strchr(h, ':');
        n = c ? (size_t)(c - h) : strlen(h);
    }
    if (n >= outlen)
        n = outlen - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)h[i]);
    out[n] = '\0';
}

const char *emu_req_base_url(emu_req *req)
{
    const char *h = req->host && *req->host ? req->host : "localhost";
    size_t n = strlen(h) + 9;
    char *s = emu_arena_alloc(req->arena, n);
    snprintf(s, n, "https://%s", h);
    return s;
}

void emu_resp_header_add(emu_req *req, const char *name, const char *value)
{
    emu_resp_header *h = emu_xmalloc(sizeof *h);
    h->name = emu_xstrdup(name);
    h->value = emu_xstrdup(value);
    h->next = NULL;
    emu_resp_header **pp = &req->resp_headers;
    while (*pp)
        pp = &(*pp)->next;
    *pp = h;
}

static bool claim(emu_req *req)
{
    if (req->responded) {
        emu_log(EMU_LOG_ERROR, "http", "second response for %s %s ignored", req->method, req->path);
        return false;
    }
    req->responded = true;
    return true;
}

void emu_send_json(emu_req *req, int status, json_t *body)
{
    if (!claim(req)) {
        json_decref(body);
        return;
    }
    req->status = status;
    req->resp_type = "application/json; charset=utf-8";
    if (body) {
        req->resp_body = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!req->resp_body)
            abort();
        req->resp_len = strlen(req->resp_body);
        json_decref(body);
    }
}

void emu_send_text(emu_req *req, int status, const char *type, const char *text, size_t len)
{
    if (!claim(req))
        return;
    req->status = status;
    req->resp_type = type;
    req->resp_body = emu_xstrndup(text, len);
    req->resp_len = len;
}

void emu_send_json_text(emu_req *req, int status, char *text, size_t len)
{
    if (!claim(req)) {
        free(text);
        return;
    }
    req->status = status;
    req->resp_type = "application/json; charset=utf-8";
    req->resp_body = text;
    req->resp_len = len;
}

void emu_send_empty(emu_req *req, int status)
{
    if (!claim(req))
        return;
    req->status = status;
}

void emu_send_error(emu_req *req, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emu_utf8_repair(msg); /* client text in it, or a sequence cut by the size */
    emu_send_json(req, status, json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg));
}
