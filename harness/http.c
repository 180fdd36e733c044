/* http: libcurl client for the harness; see http.h. */
#include "http.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

struct hx_http {
    CURL *curl;
    char *ca;
    int verbose;
    struct curl_slist *resolve; /* "host:port:127.0.0.1" pins added so far */
};

typedef struct {
    char *buf;
    size_t len, cap;
    int overflow;
} hx_buf;

static size_t on_body(char *data, size_t size, size_t n, void *user)
{
    hx_buf *b = user;
    size_t add = size * n;
    if (b->len + add > HX_HTTP_MAX_BODY) {
        b->overflow = 1;
        return 0;
    }
    if (b->len + add + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + add + 1)
            cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb)
            abort();
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, data, add);
    b->len += add;
    b->buf[b->len] = 0;
    return add;
}

static size_t on_header(char *data, size_t size, size_t n, void *user)
{
    json_t *headers = user;
    size_t len = size * n;
    const char *colon = memchr(data, ':', len);
    if (!colon) {
        /* a status line: a new response (after 100-continue or a redirect) starts afresh */
        if (len > 5 && !strncasecmp(data, "HTTP/", 5))
            json_object_clear(headers);
        return len;
    }
    size_t nlen = (size_t)(colon - data);
    if (nlen == 0 || nlen > 200)
        return len;
    char name[201];
    for (size_t i = 0; i < nlen; i++)
        name[i] = (char)tolower((unsigned char)data[i]);
    name[nlen] = 0;
    const char *v = colon + 1;
    const char *end = data + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    json_object_set_new(headers, name, json_stringn(v, (size_t)(end - v)));
    return len;
}

hx_http *hx_http_new(const char *ca_pem, int verbose, char *err, size_t errlen)
{
    static int global_done;
    if (!global_done) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        global_done = 1;
    }
    hx_http *h = calloc(1, sizeof *h);
    if (!h)
        abort();
    h->curl = curl_easy_init();
    if (!h->curl) {
        snprintf(err, errlen, "curl_easy_init failed");
        free(h);
        return NULL;
    }
    if (ca_pem) {
        FILE *f = fopen(ca_pem, "r");
        if (!f) {
            snprintf(err, errlen, "cannot read CA file %s", ca_pem);
            curl_easy_cleanup(h->curl);
            free(h);
            return NULL;
        }
        fclose(f);
        h->ca = strdup(ca_pem);
    }
    h->verbose = verbose;
    return h;
}

void hx_http_free(hx_http *h)
{
    if (!h)
        return;
    curl_easy_cleanup(h->curl);
    curl_slist_free_all(h->resolve);
    free(h->ca);
    free(h);
}

/* Pins *.localhost names of url to 127.0.0.1 (curl would otherwise ask the resolver). */
static void pin_localhost(hx_http *h, const char *url)
{
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        goto out;
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        goto out;
    if (curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
        goto out;
    size_t hl = strlen(host);
    if (strcasecmp(host, "localhost") && !(hl > 10 && !strcasecmp(host + hl - 10, ".localhost")))
        goto out;
    char entry[512];
    snprintf(entry, sizeof entry, "%s:%s:127.0.0.1", host, port);
    for (struct curl_slist *s = h->resolve; s; s = s->next)
        if (!strcmp(s->data, entry))
            goto out;
    h->resolve = curl_slist_append(h->resolve, entry);
out:
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
}

int hx_http_do(hx_http *h, const char *method, const char *url, const char *const *headers,
               const char *body, size_t body_len, hx_resp *out, char *err, size_t errlen)
{
    int rc = -1;
    struct curl_slist *hl = NULL;
    hx_buf b = {0};
    memset(out, 0, sizeof *out);
    out->headers = json_object();
    CURL *c = h->curl;

    curl_easy_reset(c);
    pin_localhost(h, url);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_RESOLVE, h->resolve);
    if (h->ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, h->ca);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 20L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, out->headers);
    curl_easy_setopt(c, CURLOPT_VERBOSE, h->verbose ? 1L : 0L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "cmkharness/1.0");
    if (!strcmp(method, "GET")) {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    } else if (!strcmp(method, "HEAD")) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        if (body || strcmp(method, "DELETE")) {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? body_len : 0));
        }
    }
    hl = curl_slist_append(hl, "Expect:");
    for (size_t i = 0; headers && headers[i]; i++)
        hl = curl_slist_append(hl, headers[i]);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);

    CURLcode cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "%s %s: %s%s", method, url, curl_easy_strerror(cc),
                 b.overflow ? " (body too large)" : "");
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    out->body = b.buf ? b.buf : strdup("");
    out->body_len = b.len;
    b.buf = NULL;
    if (out->body_len)
        out->json = json_loadb(out->body, out->body_len, JSON_DECODE_ANY, NULL);
    rc = 0;
out:
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hl);
    free(b.buf);
    if (rc) {
        json_decref(out->headers);
        memset(out, 0, sizeof *out);
    }
    return rc;
}

const char *hx_resp_header(const hx_resp *r, const char *name)
{
    char low[201];
    size_t n = strlen(name);
    if (n > 200 || !r->headers)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        low[i] = (char)tolower((unsigned char)name[i]);
    return json_string_value(json_object_get(r->headers, low));
}

void hx_resp_cleanup(hx_resp *r)
{
    if (!r)
        return;
    free(r->body);
    json_decref(r->json);
    json_decref(r->headers);
    memset(r, 0, sizeof *r);
}

static void form_add(CURL *c, char *buf, size_t cap, const char *k, const char *v)
{
    char *e = curl_easy_escape(c, v, 0);
    size_t len = strlen(buf);
    snprintf(buf + len, cap - len, "%s%s=%s", len ? "&" : "", k, e ? e : "");
    curl_free(e);
}

int hx_http_client_credentials(hx_http *h, const char *authority, const char *tenant,
                               const char *client_id, const char *secret, const char *scope,
                               char **token, char *err, size_t errlen)
{
    char url[1024], form[4096] = "";
    hx_resp r;
    *token = NULL;
    size_t al = strlen(authority);
    while (al && authority[al - 1] == '/')
        al--;
    snprintf(url, sizeof url, "%.*s/%s/oauth2/v2.0/token", (int)al, authority, tenant);
    form_add(h->curl, form, sizeof form, "grant_type", "client_credentials");
    form_add(h->curl, form, sizeof form, "client_id", client_id);
    form_add(h->curl, form, sizeof form, "client_secret", secret);
    form_add(h->curl, form, sizeof form, "scope", scope);
    const char *hdrs[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
    if (hx_http_do(h, "POST", url, hdrs, form, strlen(form), &r, err, errlen))
        return -1;
    const char *t = json_string_value(json_object_get(r.json, "access_token"));
    if (r.status != 200 || !t) {
        snprintf(err, errlen, "token request for %s (%s) at %s -> %ld %.300s", client_id, scope,
                 url, r.status, r.body);
        hx_resp_cleanup(&r);
        return -1;
    }
    *token = strdup(t);
    hx_resp_cleanup(&r);
    return 0;
}
