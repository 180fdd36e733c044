/*
 * fuzz_jwt: bearer-token verification in strict mode with the emulator's real signing key
 * (auth/auth.c auth_token_verify and auth_authenticate), demo-world principals.
 *
 * The first byte picks the mode, the second the audience family:
 *   0  the rest is the token text as a client would send it
 *   1  the rest is "<header bytes>\n<claims bytes>": each part is base64url-encoded and the
 *      pair is signed with the real key (RS256 in the HSM), so the claim checks behind the
 *      signature are reached. "$KID" in the header becomes the key's kid.
 *   2  the rest is (offset, byte) pairs written over a token minted for kv-admin-app.
 * Every verification runs twice: the second answer may come from the signature cache and
 * must agree with the first.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_app.h"
#include "util.h"

#define FZ_MAX_INPUT 16384

static fz_app *app;
static char kid[64];
static char *minted;

static void setup(void)
{
    fz_quiet_log();
    app = fz_app_new(FZ_APP_STRICT | FZ_APP_WORLD);
    json_t *jwks = auth_jwks(fz_app_auth(app));
    const char *k =
        json_string_value(json_object_get(json_array_get(json_object_get(jwks, "keys"), 0), "kid"));
    if (!k)
        abort();
    snprintf(kid, sizeof kid, "%s", k);
    json_decref(jwks);
    const char *b = fz_app_bearer(app);
    if (!b)
        abort();
    minted = emu_xstrdup(b + 7);
}

/* header + '.' + claims, base64url each, signed with the real key (auth_jws_sign). */
static char *sign_parts(const uint8_t *h, size_t hl, const uint8_t *c, size_t cl)
{
    /* "$KID" -> the real kid, so seeds carry a header the emulator accepts */
    char *hs = emu_xstrndup((const char *)h, hl);
    char *at = strstr(hs, "$KID");
    if (at) {
        *at = '\0';
        char *nh = emu_xasprintf("%s%s%s", hs, kid, at + 4);
        free(hs);
        hs = nh;
    }
    char *token = auth_jws_sign(fz_app_auth(app), hs, strlen(hs), c, cl);
    free(hs);
    if (!token)
        abort();
    return token;
}

static void verify(const char *token, auth_audience_family fam)
{
    auth_t *a = fz_app_auth(app);
    auth_principal p1, p2;
    char e1[512], e2[512];
    bool ok1 = auth_token_verify(a, token, fam, "https://localhost:8443", &p1, e1, sizeof e1);
    bool ok2 = auth_token_verify(a, token, fam, "https://localhost:8443", &p2, e2, sizeof e2);
    if (ok1 != ok2 || (ok1 && (strcmp(p1.oid, p2.oid) || strcmp(p1.tid, p2.tid))))
        abort(); /* the cache changed the answer */
    /* the request path: "Authorization: Bearer <token>" */
    emu_req *req = emu_req_new("GET", "/keys?api-version=7.5");
    emu_req_add_header(req, "Host", "localhost:8443");
    char *h = emu_xasprintf("Bearer %s", token);
    emu_req_add_header(req, "Authorization", h);
    free(h);
    bool missing = false;
    bool ok3 = auth_authenticate(a, req, fam, &missing, e1, sizeof e1);
    if (ok3 && !req->principal)
        abort();
    emu_req_free(req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!app)
        setup();
    if (size < 2 || size > FZ_MAX_INPUT)
        return 0;
    unsigned mode = data[0] % 3;
    auth_audience_family fam = (auth_audience_family)(data[1] % 7 + 1);
    data += 2;
    size -= 2;
    char *token = NULL;
    if (mode == 0) {
        token = emu_xstrndup((const char *)data, size);
    } else if (mode == 1) {
        const uint8_t *nl = memchr(data, '\n', size);
        size_t hl = nl ? (size_t)(nl - data) : size;
        token = nl ? sign_parts(data, hl, nl + 1, size - hl - 1)
                   : sign_parts(data, hl, (const uint8_t *)"", 0);
    } else {
        token = emu_xstrdup(minted);
        size_t len = strlen(token);
        for (size_t i = 0; i + 1 < size; i += 2) {
            size_t off = (size_t)data[i] * 7 % len;
            token[off] = data[i + 1] ? (char)data[i + 1] : '.';
        }
    }
    verify(token, fam);
    free(token);
    return 0;
}
