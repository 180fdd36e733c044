/*
 * http: the harness's HTTPS client (libcurl, one easy handle reused so connections stay alive).
 *
 * Names under *.localhost (and localhost itself) are pinned to 127.0.0.1 per request, so
 * https://NAME.vault.localhost:PORT and https://ENV.crm.localhost:PORT work without DNS or
 * /etc/hosts. Every other name resolves normally (a real vault, ARM, Entra ID).
 *
 * Ownership: hx_http_new's result is freed with hx_http_free (NULL ok). A response filled by
 * hx_http_do is released with hx_resp_cleanup, which leaves it zeroed.
 */
#ifndef CMKH_HTTP_H
#define CMKH_HTTP_H

#include <stddef.h>

#include <jansson.h>

typedef struct hx_http hx_http;

typedef struct {
    long status; /* HTTP status; 0 when the transfer failed */
    char *body;  /* NUL-terminated body (may be empty, never NULL after success) */
    size_t body_len;
    json_t *json;    /* parsed body when it is JSON, else NULL */
    json_t *headers; /* lowercased header name -> value (the last one of a repeated header) */
} hx_resp;

/* Largest response body kept; a longer answer fails the request. */
#define HX_HTTP_MAX_BODY (16u * 1024u * 1024u)

/* ca_pem: extra trust anchor file or NULL (system store). verbose: trace to stderr. */
hx_http *hx_http_new(const char *ca_pem, int verbose, char *err, size_t errlen);
void hx_http_free(hx_http *h);

/*
 * One request. headers: NULL-terminated "Name: value" strings, or NULL. body may be NULL.
 * Returns 0 and fills *out (status set), or -1 with err set (out zeroed).
 */
int hx_http_do(hx_http *h, const char *method, const char *url, const char *const *headers,
               const char *body, size_t body_len, hx_resp *out, char *err, size_t errlen);

/* A response header by case-insensitive name, or NULL. */
const char *hx_resp_header(const hx_resp *r, const char *name);
void hx_resp_cleanup(hx_resp *r);

/*
 * OAuth2 client credentials against AUTHORITY/TENANT/oauth2/v2.0/token with scope.
 * Returns 0 and a malloc'd token in *token (caller frees), or -1 with err set.
 */
int hx_http_client_credentials(hx_http *h, const char *authority, const char *tenant,
                               const char *client_id, const char *secret, const char *scope,
                               char **token, char *err, size_t errlen);

#endif
