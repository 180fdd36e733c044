/*
 * crash: `cmkharness crash --cycles N`: crash consistency of a real `cmkemu serve`.
 *
 * One data dir for the whole run. Each cycle: several client threads run a mixed mutating
 * workload (key clients: create, import, rotate, update, delete, recover, purge, backup,
 * restore on their own keys in the scratch vault; one platform client: record writes, vault
 * tags, access policies, enterprise policy tags, link/unlink of an environment), each
 * keeping an exact model of what the server acknowledged (a client owns its objects, so the
 * model needs no locks) and the one operation it has in flight. After a random delay the
 * server gets SIGKILL. Then:
 *   - `cmkemu fsck`: no row without its token object; orphan objects counted;
 *   - sometimes a start that is killed again before it serves (kill during start-up);
 *   - restart; /_emulator/health must report exactly the orphans fsck saw as destroyed;
 *   - every object is compared with the model: acknowledged changes present, and an
 *     operation in flight at the kill either fully applied or not at all (the model then
 *     takes what the server has); live keys wrap and unwrap; every enabled environment's
 *     records decrypt.
 * At the end the server is stopped cleanly and fsck must find nothing at all.
 * The seed (--seed) fixes the operations and delays; thread timing is not reproducible.
 */
#include "crash.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "bench/bench.h"
#include "emuproc.h"
#include "http.h"

#define CR_SUB "00000000-0000-4000-8000-000000000001"
#define CR_RG "cmk-rg"
#define CR_TENANT "72f988bf-0000-4000-8000-00000000c0de"
#define CR_ENV "a1b2c3d4-0000-4000-8000-000000000101"
#define CR_ARM_KV                                                                                  \
    "/subscriptions/" CR_SUB "/resourceGroups/" CR_RG "/providers/Microsoft.KeyVault/vaults/"
#define CR_ARM_PP                                                                                  \
    "/subscriptions/" CR_SUB "/resourceGroups/" CR_RG                                              \
    "/providers/Microsoft.PowerPlatform/enterprisePolicies/crashpol"
#define CR_BAP "/providers/Microsoft.BusinessAppPlatform"
#define CR_API "api-version=7.5"

#define CR_MAX_CLIENTS 16
#define CR_SLOTS 3    /* keys per key client */
#define CR_MAXVER 8   /* versions a key may reach (ops that add one stop at CR_MAXVER - 2) */
#define CR_RECORDS 6  /* record ids of the platform client */
#define CR_POLICIES 3 /* extra access policies the platform client adds and removes */

/* ---- model ---------------------------------------------------------------------------- */

typedef struct {
    char id[33];
    int enabled;
    int tag; /* tag "n", -1 = none */
} cr_ver;

typedef enum { K_ABSENT = 0, K_LIVE, K_DELETED } cr_kstate;

typedef struct {
    cr_kstate st;
    int nv; /* LIVE: versions; DELETED: the versions it had (only latest is visible) */
    cr_ver v[CR_MAXVER];
    char latest[33];
} cr_keystate;

typedef struct {
    cr_keystate s;
    char *backup;       /* last backup blob (malloc'd) or NULL */
    cr_keystate bstate; /* the state it restores */
} cr_key;

typedef struct {
    int rec[CR_RECORDS]; /* -1 = never written, else the n of name "crash r<n>" */
    int vault_tag;       /* tag "crash" of the scratch vault, -1 = none */
    int ap[CR_POLICIES]; /* 1 = access policy present */
    int pol_tag;         /* tag "crash" of the enterprise policy, -1 = none */
    int linked;          /* environment on the customer key */
} cr_plat;

typedef enum {
    OP_NONE = 0,
    OP_CREATE,
    OP_IMPORT,
    OP_ROTATE,
    OP_UPDATE,
    OP_DELETE,
    OP_RECOVER,
    OP_PURGE,
    OP_BACKUP,
    OP_RESTORE,
    OP_RECORD,
    OP_VAULT_TAG,
    OP_AP_ADD,
    OP_AP_REMOVE,
    OP_POLICY_TAG,
    OP_LINK,
    OP_UNLINK,
    OP_COUNT
} cr_opkind;

static const char *const OP_NAMES[OP_COUNT] = {
    "none",    "create",    "import",     "rotate",  "update", "delete",
    "recover", "purge",     "backup",     "restore", "record", "vault-tag",
    "ap-add",  "ap-remove", "policy-tag", "link",    "unlink"};

/* The operation a client has sent and not seen acknowledged. */
typedef struct {
    cr_opkind kind;
    int slot; /* key slot or record / access policy index */
    cr_keystate before;
    cr_ver upd; /* OP_UPDATE: the version and its new enabled/tag */
    int value;  /* new record n, tag value */
} cr_inflight;

typedef struct cr_run cr_run;

typedef struct {
    cr_run *run;
    int index;
    int platform; /* the platform client, else a key client */
    pthread_t tid;
    hx_http *http;
    uint64_t rng;
    cr_key keys[CR_SLOTS];
    cr_plat plat;
    cr_inflight fl;
    unsigned long acked, acked_by_op[OP_COUNT];
    int counter; /* values for tags and records */
    char fail[1024];
} cr_client;

struct cr_run {
    const char *bin;
    char data[4200], log[4300];
    hx_emu emu;
    unsigned nclients;
    cr_client clients[CR_MAX_CLIENTS];
    char *import_body;
    char system_id[200];
    atomic_int stop;
    int verbose;
    /* figures */
    unsigned long kills, startup_kills, inflight_seen, inflight_applied, orphans, records_read;
    unsigned long verify_fail;
};

static const char *const AUTH_HEADERS[] = {"Authorization: Bearer cmkharness-crash",
                                           "Content-Type: application/json", NULL};

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static unsigned rng_below(uint64_t *s, unsigned n)
{
    return (unsigned)(rng_next(s) % n);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- HTTP helpers --------------------------------------------------------------------- */

/* One request to the server. 0 = transport failure (the server is gone), else the status.
 * path is appended to the vault (vault != NULL: https://VAULT.vault.localhost:PORT), to the
 * environment's host (env != NULL) or to the base URL. */
static long req(cr_run *r, hx_http *h, const char *vault, const char *env, const char *method,
                const char *path, const char *body, hx_resp *out)
{
    char url[1024], err[256];
    if (vault)
        snprintf(url, sizeof(url), "https://%s.vault.localhost:%d%s", vault, r->emu.port, path);
    else if (env)
        snprintf(url, sizeof(url), "https://%s.crm.localhost:%d%s", env, r->emu.port, path);
    else
        snprintf(url, sizeof(url), "%s%s", r->emu.url, path);
    memset(out, 0, sizeof(*out));
    if (hx_http_do(h, method, url, AUTH_HEADERS, body, body ? strlen(body) : 0, out, err,
                   sizeof(err)) != 0) {
        if (r->verbose > 1)
            fprintf(stderr, "crash: %s %s: %s\n", method, url, err);
        return 0;
    }
    return out->status;
}

/* json -> malloc'd compact text; the json is consumed. */
static char *dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

/* The version id at the end of a kid. */
static void kid_version(const char *kid, char out[33])
{
    const char *slash = kid ? strrchr(kid, '/') : NULL;
    snprintf(out, 33, "%s", slash ? slash + 1 : "");
}

/* Our own tags and names carry small decimal numbers: the number, or -2 when s is not one. */
static int small_int(const char *s)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : -1;
    if (!s || errno || end == s || *end || v < 0 || v > 1000000000L)
        return -2;
    return (int)v;
}

static const char *jstr(json_t *j, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = j;
    for (char *tok = buf, *dot; cur && tok; tok = dot ? dot + 1 : NULL) {
        dot = strchr(tok, '.');
        if (dot)
            *dot = '\0';
        cur = json_object_get(cur, tok);
    }
    return json_string_value(cur);
}

/* ---- key state ------------------------------------------------------------------------ */

static void key_name(const cr_client *c, int slot, char *out, size_t cap)
{
    snprintf(out, cap, "crash-c%d-s%d", c->index, slot);
}

static int ver_cmp(const void *a, const void *b)
{
    return strcmp(((const cr_ver *)a)->id, ((const cr_ver *)b)->id);
}

static void ks_sort(cr_keystate *k)
{
    if (k->st == K_LIVE && k->nv > 1)
        qsort(k->v, (size_t)k->nv, sizeof(k->v[0]), ver_cmp);
}

static int ks_equal(const cr_keystate *a, const cr_keystate *b)
{
    if (a->st != b->st)
        return 0;
    if (a->st == K_ABSENT)
        return 1;
    if (strcmp(a->latest, b->latest))
        return 0;
    if (a->st == K_DELETED)
        return 1; /* a deleted key shows its latest version only */
    if (a->nv != b->nv)
        return 0;
    for (int i = 0; i < a->nv; i++)
        if (strcmp(a->v[i].id, b->v[i].id) || a->v[i].enabled != b->v[i].enabled ||
            a->v[i].tag != b->v[i].tag)
            return 0;
    return 1;
}

static void ks_describe(const cr_keystate *k, char *out, size_t cap)
{
    static const char *const ST[] = {"absent", "live", "deleted"};
    size_t n = (size_t)snprintf(out, cap, "%s latest=%.8s", ST[k->st], k->latest);
    for (int i = 0; k->st == K_LIVE && i < k->nv && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, " %.8s(%s,n=%d)", k->v[i].id,
                              k->v[i].enabled ? "on" : "off", k->v[i].tag);
}

/* Reads what the server has for a key. 0 ok; -1 transport failure or unexpected answer
 * (why set). */
static int key_fetch(cr_run *r, hx_http *h, const char *name, cr_keystate *out, char *why,
                     size_t whylen)
{
    char path[256];
    hx_resp rs;
    memset(out, 0, sizeof(*out));
    snprintf(path, sizeof(path), "/keys/%s?" CR_API, name);
    long st = req(r, h, "scratch", NULL, "GET", path, NULL, &rs);
    if (st == 200) {
        out->st = K_LIVE;
        kid_version(jstr(rs.json, "key.kid"), out->latest);
        hx_resp_cleanup(&rs);
        snprintf(path, sizeof(path), "/keys/%s/versions?" CR_API, name);
        st = req(r, h, "scratch", NULL, "GET", path, NULL, &rs);
        json_t *arr = json_object_get(rs.json, "value");
        if (st != 200 || !json_is_array(arr) || json_array_size(arr) > CR_MAXVER) {
            snprintf(why, whylen, "GET versions of %s: %ld", name, st);
            hx_resp_cleanup(&rs);
            return -1;
        }
        size_t i;
        json_t *it;
        json_array_foreach(arr, i, it)
        {
            cr_ver *v = &out->v[out->nv++];
            kid_version(json_string_value(json_object_get(it, "kid")), v->id);
            v->enabled =
                json_is_true(json_object_get(json_object_get(it, "attributes"), "enabled"));
            const char *t = json_string_value(json_object_get(json_object_get(it, "tags"), "n"));
            v->tag = t ? small_int(t) : -1;
        }
        hx_resp_cleanup(&rs);
        ks_sort(out);
        return 0;
    }
    hx_resp_cleanup(&rs);
    if (st != 404) {
        snprintf(why, whylen, "GET /keys/%s: %ld", name, st);
        return -1;
    }
    snprintf(path, sizeof(path), "/deletedkeys/%s?" CR_API, name);
    st = req(r, h, "scratch", NULL, "GET", path, NULL, &rs);
    if (st == 200) {
        out->st = K_DELETED;
        kid_version(jstr(rs.json, "key.kid"), out->latest);
    } else if (st == 404) {
        out->st = K_ABSENT;
    } else {
        snprintf(why, whylen, "GET /deletedkeys/%s: %ld", name, st);
        hx_resp_cleanup(&rs);
        return -1;
    }
    hx_resp_cleanup(&rs);
    return 0;
}

/* The tag of a key's latest version (-1 none or no version). */
static int ks_latest_tag(const cr_keystate *k)
{
    for (int i = 0; k->st == K_LIVE && i < k->nv; i++)
        if (!strcmp(k->v[i].id, k->latest))
            return k->v[i].tag;
    return -1;
}

/* Does `got` equal `before` with one more version (created, imported, rotated), which is
 * the latest, enabled and tagged `tag` (a rotation copies the tags of the latest version)? */
static int ks_plus_one(const cr_keystate *before, const cr_keystate *got, int tag)
{
    if (got->st != K_LIVE || got->nv != (before->st == K_LIVE ? before->nv : 0) + 1)
        return 0;
    cr_keystate g = *got;
    int found = 0;
    for (int i = 0; i < g.nv; i++)
        if (!strcmp(g.v[i].id, g.latest)) {
            if (!g.v[i].enabled || g.v[i].tag != tag)
                return 0;
            memmove(&g.v[i], &g.v[i + 1], (size_t)(g.nv - i - 1) * sizeof(g.v[0]));
            g.nv--;
            found = 1;
            break;
        }
    if (!found)
        return 0;
    if (before->st != K_LIVE)
        return g.nv == 0;
    for (int i = 0; i < g.nv; i++)
        if (strcmp(g.v[i].id, before->v[i].id) || g.v[i].enabled != before->v[i].enabled ||
            g.v[i].tag != before->v[i].tag)
            return 0;
    return 1;
}

/* The state after the in-flight key operation fully applied (ops whose result is known). */
static int ks_after(const cr_inflight *f, const cr_key *k, cr_keystate *out)
{
    *out = f->before;
    switch (f->kind) {
    case OP_UPDATE:
        for (int i = 0; i < out->nv; i++)
            if (!strcmp(out->v[i].id, f->upd.id))
                out->v[i] = f->upd;
        return 1;
    case OP_DELETE:
        out->st = K_DELETED;
        return 1;
    case OP_RECOVER:
        out->st = K_LIVE;
        return 1;
    case OP_PURGE:
        memset(out, 0, sizeof(*out));
        return 1;
    case OP_RESTORE:
        *out = k->bstate;
        return 1;
    default:
        return 0;
    }
}

/* ---- key client ----------------------------------------------------------------------- */

static int key_op_pick(cr_client *c, int *slot)
{
    *slot = (int)rng_below(&c->rng, CR_SLOTS);
    cr_key *k = &c->keys[*slot];
    unsigned p = rng_below(&c->rng, 100);
    switch (k->s.st) {
    case K_ABSENT:
        return k->backup && p < 40 ? OP_RESTORE : OP_CREATE;
    case K_DELETED:
        return p < 55 ? OP_RECOVER : OP_PURGE;
    case K_LIVE:
        if (k->s.nv >= CR_MAXVER - 2)
            return p < 50 ? OP_UPDATE : OP_DELETE;
        if (p < 18)
            return OP_IMPORT;
        if (p < 36)
            return OP_ROTATE;
        if (p < 66)
            return OP_UPDATE;
        if (p < 78)
            return OP_BACKUP;
        return OP_DELETE;
    }
    return OP_CREATE;
}

/* Runs one key operation. 1 acknowledged, 0 server gone (in flight), -1 failure. */
static int key_op_run(cr_client *c, cr_opkind kind, int slot)
{
    cr_run *r = c->run;
    cr_key *k = &c->keys[slot];
    char name[64], path[512];
    char *body = NULL;
    const char *method = "POST";
    long want = 200;
    hx_resp rs;

    key_name(c, slot, name, sizeof(name));
    memset(&c->fl, 0, sizeof(c->fl));
    c->fl.kind = kind;
    c->fl.slot = slot;
    c->fl.before = k->s;
    switch (kind) {
    case OP_CREATE:
        snprintf(path, sizeof(path), "/keys/%s/create?" CR_API, name);
        body = strdup("{\"kty\":\"RSA\",\"key_size\":2048}");
        break;
    case OP_IMPORT:
        method = "PUT";
        snprintf(path, sizeof(path), "/keys/%s?" CR_API, name);
        body = strdup(r->import_body);
        break;
    case OP_ROTATE:
        snprintf(path, sizeof(path), "/keys/%s/rotate?" CR_API, name);
        break;
    case OP_UPDATE: {
        cr_ver *v = &k->s.v[rng_below(&c->rng, (unsigned)k->s.nv)];
        c->fl.upd = *v;
        c->fl.upd.tag = ++c->counter;
        /* the latest version stays enabled: it is the one the verification wraps with */
        if (strcmp(v->id, k->s.latest))
            c->fl.upd.enabled = !v->enabled;
        method = "PATCH";
        snprintf(path, sizeof(path), "/keys/%s/%s?" CR_API, name, v->id);
        char tag[16];
        snprintf(tag, sizeof(tag), "%d", c->fl.upd.tag);
        body = dump(json_pack("{s:{s:b},s:{s:s}}", "attributes", "enabled", c->fl.upd.enabled,
                              "tags", "n", tag));
        break;
    }
    case OP_DELETE:
        method = "DELETE";
        snprintf(path, sizeof(path), "/keys/%s?" CR_API, name);
        break;
    case OP_RECOVER:
        snprintf(path, sizeof(path), "/deletedkeys/%s/recover?" CR_API, name);
        break;
    case OP_PURGE:
        method = "DELETE";
        want = 204;
        snprintf(path, sizeof(path), "/deletedkeys/%s?" CR_API, name);
        break;
    case OP_BACKUP:
        snprintf(path, sizeof(path), "/keys/%s/backup?" CR_API, name);
        break;
    case OP_RESTORE:
        snprintf(path, sizeof(path), "/keys/restore?" CR_API);
        body = dump(json_pack("{s:s}", "value", k->backup));
        break;
    default:
        return -1;
    }
    long st = req(r, c->http, "scratch", NULL, method, path, body, &rs);
    if (body && kind == OP_IMPORT)
        OPENSSL_cleanse(body, strlen(body));
    free(body);
    if (st == 0) {
        hx_resp_cleanup(&rs);
        return 0;
    }
    if (st != want) {
        char before[400];
        ks_describe(&k->s, before, sizeof(before));
        snprintf(c->fail, sizeof(c->fail), "%s %s: HTTP %ld (model: %s): %.300s", OP_NAMES[kind],
                 name, st, before, rs.body ? rs.body : "");
        hx_resp_cleanup(&rs);
        return -1;
    }
    /* acknowledged: the model takes the change */
    cr_keystate *s = &k->s;
    switch (kind) {
    case OP_CREATE:
    case OP_IMPORT:
    case OP_ROTATE: {
        if (kind == OP_CREATE)
            memset(s, 0, sizeof(*s));
        s->st = K_LIVE;
        cr_ver *v = &s->v[s->nv++];
        kid_version(jstr(rs.json, "key.kid"), v->id);
        v->enabled = 1;
        v->tag = kind == OP_ROTATE ? ks_latest_tag(s) : -1;
        const char *t = jstr(rs.json, "tags.n");
        if ((t ? small_int(t) : -1) != v->tag) {
            snprintf(c->fail, sizeof(c->fail), "%s %s: the new version has tag %s, expected %d",
                     OP_NAMES[kind], name, t ? t : "(none)", v->tag);
            hx_resp_cleanup(&rs);
            return -1;
        }
        memcpy(s->latest, v->id, sizeof(s->latest));
        ks_sort(s);
        break;
    }
    case OP_UPDATE: {
        cr_keystate after;
        ks_after(&c->fl, k, &after);
        *s = after;
        break;
    }
    case OP_DELETE:
        s->st = K_DELETED;
        break;
    case OP_RECOVER:
        s->st = K_LIVE;
        break;
    case OP_PURGE:
        memset(s, 0, sizeof(*s));
        break;
    case OP_BACKUP: {
        const char *blob = json_string_value(json_object_get(rs.json, "value"));
        if (!blob) {
            snprintf(c->fail, sizeof(c->fail), "backup %s: no value", name);
            hx_resp_cleanup(&rs);
            return -1;
        }
        free(k->backup);
        k->backup = strdup(blob);
        k->bstate = *s;
        break;
    }
    case OP_RESTORE: {
        char cur[33];
        kid_version(jstr(rs.json, "key.kid"), cur);
        *s = k->bstate;
        if (strcmp(cur, s->latest)) {
            snprintf(c->fail, sizeof(c->fail),
                     "restore %s: the current version is %.8s, at backup it was %.8s", name, cur,
                     s->latest);
            hx_resp_cleanup(&rs);
            return -1;
        }
        break;
    }
    default:
        break;
    }
    hx_resp_cleanup(&rs);
    c->fl.kind = OP_NONE;
    return 1;
}

/* ---- platform client ------------------------------------------------------------------ */

static void record_guid(int i, char out[40])
{
    snprintf(out, 40, "c0ffee00-0000-4000-8000-%012d", i + 1);
}

static void ap_oid(int i, char out[40])
{
    snprintf(out, 40, "0e00000%d-0000-4000-8000-00000000e00%d", i + 1, i + 1);
}

/* Polls a lifecycle operation until it ends. 1 Succeeded, 0 server gone, -1 otherwise. */
static int op_wait(cr_client *c, const char *location)
{
    cr_run *r = c->run;
    const char *p = strstr(location, "/providers/");
    if (!p)
        return -1;
    for (int i = 0; i < 600 && !atomic_load(&r->stop); i++) {
        hx_resp rs;
        long st = req(r, c->http, NULL, NULL, "GET", p, NULL, &rs);
        const char *state = jstr(rs.json, "state.id");
        int done = state && (!strcmp(state, "Succeeded") || !strcmp(state, "Failed"));
        int ok = state && !strcmp(state, "Succeeded");
        if (st == 0) {
            hx_resp_cleanup(&rs);
            return 0;
        }
        if (st != 200 || done) {
            if (!ok)
                snprintf(c->fail, sizeof(c->fail), "operation %s: HTTP %ld %.300s", p, st,
                         rs.body ? rs.body : "");
            hx_resp_cleanup(&rs);
            return ok ? 1 : -1;
        }
        hx_resp_cleanup(&rs);
        sleep_ms(30);
    }
    return 0; /* stopped while waiting: still in flight */
}

static int plat_op_run(cr_client *c, cr_opkind *kind_out)
{
    cr_run *r = c->run;
    cr_plat *m = &c->plat;
    char path[512], id[40], tag[16];
    char *body = NULL;
    const char *method = "PATCH", *vault = NULL, *env = NULL;
    long want = 200;
    hx_resp rs;
    unsigned p = rng_below(&c->rng, 100);

    memset(&c->fl, 0, sizeof(c->fl));
    c->fl.value = ++c->counter;
    snprintf(tag, sizeof(tag), "%d", c->fl.value);
    if (p < 45) {
        c->fl.kind = OP_RECORD;
        c->fl.slot = (int)rng_below(&c->rng, CR_RECORDS);
        record_guid(c->fl.slot, id);
        env = CR_ENV;
        want = 204;
        snprintf(path, sizeof(path), "/api/data/v9.2/accounts(%s)", id);
        char name[40];
        snprintf(name, sizeof(name), "crash r%d", c->fl.value);
        body = dump(json_pack("{s:s,s:s}", "name", name, "description", "written by crash"));
    } else if (p < 55) {
        c->fl.kind = OP_VAULT_TAG;
        snprintf(path, sizeof(path), CR_ARM_KV "scratch?api-version=2023-07-01");
        body = dump(json_pack("{s:{s:s}}", "tags", "crash", tag));
    } else if (p < 70) {
        c->fl.slot = (int)rng_below(&c->rng, CR_POLICIES);
        c->fl.kind = m->ap[c->fl.slot] ? OP_AP_REMOVE : OP_AP_ADD;
        ap_oid(c->fl.slot, id);
        method = "PUT";
        snprintf(path, sizeof(path), CR_ARM_KV "scratch/accessPolicies/%s?api-version=2023-07-01",
                 c->fl.kind == OP_AP_ADD ? "add" : "remove");
        body = dump(json_pack("{s:{s:[{s:s,s:s,s:{s:[s,s]}}]}}", "properties", "accessPolicies",
                              "tenantId", CR_TENANT, "objectId", id, "permissions", "keys", "get",
                              "list"));
    } else if (p < 80) {
        c->fl.kind = OP_POLICY_TAG;
        snprintf(path, sizeof(path), CR_ARM_PP "?api-version=2020-10-30");
        body = dump(json_pack("{s:{s:s}}", "tags", "crash", tag));
    } else {
        c->fl.kind = m->linked ? OP_UNLINK : OP_LINK;
        method = "POST";
        want = 202;
        snprintf(path, sizeof(path),
                 CR_BAP "/environments/" CR_ENV
                        "/enterprisePolicies/Encryption/%s?api-version=2019-10-01",
                 m->linked ? "unlink" : "link");
        body = dump(json_pack("{s:s}", "SystemId", r->system_id));
    }
    long st = req(r, c->http, vault, env, method, path, body, &rs);
    free(body);
    if (st == 0) {
        hx_resp_cleanup(&rs);
        return 0;
    }
    if (st != want && !(c->fl.kind == OP_RECORD && (st == 200 || st == 201))) {
        snprintf(c->fail, sizeof(c->fail), "%s: HTTP %ld: %.300s", OP_NAMES[c->fl.kind], st,
                 rs.body ? rs.body : "");
        hx_resp_cleanup(&rs);
        return -1;
    }
    *kind_out = c->fl.kind;
    if (c->fl.kind == OP_LINK || c->fl.kind == OP_UNLINK) {
        const char *loc = hx_resp_header(&rs, "location");
        char *copy = loc ? strdup(loc) : NULL;
        hx_resp_cleanup(&rs);
        int w = copy ? op_wait(c, copy) : -1;
        if (!copy)
            snprintf(c->fail, sizeof(c->fail), "%s: no Location", OP_NAMES[c->fl.kind]);
        free(copy);
        if (w != 1)
            return w;
        m->linked = c->fl.kind == OP_LINK;
    } else {
        hx_resp_cleanup(&rs);
        switch (c->fl.kind) {
        case OP_RECORD:
            m->rec[c->fl.slot] = c->fl.value;
            break;
        case OP_VAULT_TAG:
            m->vault_tag = c->fl.value;
            break;
        case OP_AP_ADD:
            m->ap[c->fl.slot] = 1;
            break;
        case OP_AP_REMOVE:
            m->ap[c->fl.slot] = 0;
            break;
        case OP_POLICY_TAG:
            m->pol_tag = c->fl.value;
            break;
        default:
            break;
        }
    }
    c->fl.kind = OP_NONE;
    return 1;
}

static void *client_main(void *arg)
{
    cr_client *c = arg;
    while (!atomic_load(&c->run->stop)) {
        int rc, slot = 0;
        cr_opkind kind = OP_NONE;
        if (c->platform) {
            rc = plat_op_run(c, &kind);
        } else {
            kind = (cr_opkind)key_op_pick(c, &slot);
            rc = key_op_run(c, kind, slot);
        }
        if (rc == 1) {
            c->acked++;
            c->acked_by_op[kind]++;
        } else {
            if (rc < 0)
                atomic_store(&c->run->stop, 1);
            break;
        }
    }
    return NULL;
}

/* ---- verification --------------------------------------------------------------------- */

static int verify_keys(cr_run *r, cr_client *c, hx_http *h)
{
    for (int s = 0; s < CR_SLOTS; s++) {
        char name[64], why[512] = "", want[600], got[600];
        cr_key *k = &c->keys[s];
        cr_keystate actual, after;
        key_name(c, s, name, sizeof(name));
        if (key_fetch(r, h, name, &actual, why, sizeof(why)) != 0) {
            snprintf(c->fail, sizeof(c->fail), "verify %s: %s", name, why);
            return -1;
        }
        int inflight = c->fl.kind != OP_NONE && c->fl.slot == s && c->fl.kind != OP_BACKUP;
        if (ks_equal(&actual, &k->s)) {
            /* not applied (or applied with no visible effect) */
        } else if (inflight &&
                   ((c->fl.kind == OP_CREATE || c->fl.kind == OP_IMPORT || c->fl.kind == OP_ROTATE)
                        ? ks_plus_one(&c->fl.before, &actual,
                                      c->fl.kind == OP_ROTATE ? ks_latest_tag(&c->fl.before) : -1)
                        : ks_after(&c->fl, k, &after) && ks_equal(&actual, &after))) {
            r->inflight_applied++;
            /* a deleted key shows only its latest version: keep the versions it had */
            k->s = actual.st == K_DELETED ? after : actual;
        } else {
            ks_describe(&k->s, want, sizeof(want));
            ks_describe(&actual, got, sizeof(got));
            snprintf(c->fail, sizeof(c->fail),
                     "key %s after restart: have %.250s, acknowledged %.250s%s%s", name, got, want,
                     inflight ? ", in flight: " : "", inflight ? OP_NAMES[c->fl.kind] : "");
            return -1;
        }
        if (k->s.st != K_LIVE)
            continue;
        /* the key pair is there: wrap with the latest version, unwrap it back */
        char path[256], *body;
        hx_resp rs;
        snprintf(path, sizeof(path), "/keys/%s/%s/wrapkey?" CR_API, name, k->s.latest);
        body = dump(json_pack("{s:s,s:s}", "alg", "RSA-OAEP-256", "value", "Y3Jhc2gtdGVzdA"));
        long st = req(r, h, "scratch", NULL, "POST", path, body, &rs);
        free(body);
        const char *wrapped = json_string_value(json_object_get(rs.json, "value"));
        body =
            wrapped ? dump(json_pack("{s:s,s:s}", "alg", "RSA-OAEP-256", "value", wrapped)) : NULL;
        hx_resp_cleanup(&rs);
        snprintf(path, sizeof(path), "/keys/%s/%s/unwrapkey?" CR_API, name, k->s.latest);
        long st2 = body ? req(r, h, "scratch", NULL, "POST", path, body, &rs) : 0;
        free(body);
        const char *plain = st2 ? json_string_value(json_object_get(rs.json, "value")) : NULL;
        int ok = st == 200 && st2 == 200 && plain && !strcmp(plain, "Y3Jhc2gtdGVzdA");
        if (st2)
            hx_resp_cleanup(&rs);
        if (!ok) {
            snprintf(c->fail, sizeof(c->fail), "key %s/%s: wrap %ld, unwrap %ld after restart",
                     name, k->s.latest, st, st2);
            return -1;
        }
    }
    return 0;
}

/* Compares one observed platform value with the model and the operation in flight. */
static int plat_value_ok(cr_client *c, cr_opkind kind, int slot, int *model, int got,
                         int inflight_value, cr_run *r)
{
    if (got == *model)
        return 1;
    if (c->fl.kind == kind && c->fl.slot == slot && got == inflight_value) {
        r->inflight_applied++;
        *model = got;
        return 1;
    }
    return 0;
}

static int verify_platform(cr_run *r, cr_client *c, hx_http *h)
{
    cr_plat *m = &c->plat;
    char path[512], id[40];
    hx_resp rs;
    long st;

    for (int i = 0; i < CR_RECORDS; i++) {
        record_guid(i, id);
        snprintf(path, sizeof(path), "/api/data/v9.2/accounts(%s)", id);
        st = req(r, h, NULL, CR_ENV, "GET", path, NULL, &rs);
        const char *name = jstr(rs.json, "name");
        int got =
            st == 404 ? -1 : (name && !strncmp(name, "crash r", 7) ? small_int(name + 7) : -2);
        hx_resp_cleanup(&rs);
        if ((st != 200 && st != 404) ||
            !plat_value_ok(c, OP_RECORD, i, &m->rec[i], got, c->fl.value, r)) {
            snprintf(c->fail, sizeof(c->fail),
                     "record %s after restart: HTTP %ld, value %d, acknowledged %d", id, st, got,
                     m->rec[i]);
            return -1;
        }
    }
    st = req(r, h, NULL, NULL, "GET", CR_ARM_KV "scratch?api-version=2023-07-01", NULL, &rs);
    const char *t = jstr(rs.json, "tags.crash");
    int vtag = t ? small_int(t) : -1, aps[CR_POLICIES] = {0}, bad_perm = 0;
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(json_object_get(rs.json, "properties"), "accessPolicies"), i,
                       it)
    {
        const char *oid = json_string_value(json_object_get(it, "objectId"));
        for (int a = 0; a < CR_POLICIES; a++) {
            ap_oid(a, id);
            if (oid && !strcasecmp(oid, id)) {
                aps[a] = 1;
                json_t *keys = json_object_get(json_object_get(it, "permissions"), "keys");
                bad_perm |= json_array_size(keys) != 2;
            }
        }
    }
    hx_resp_cleanup(&rs);
    if (st != 200 || bad_perm ||
        !plat_value_ok(c, OP_VAULT_TAG, 0, &m->vault_tag, vtag, c->fl.value, r)) {
        snprintf(c->fail, sizeof(c->fail),
                 "vault scratch after restart: HTTP %ld, tag %d (acked %d)%s", st, vtag,
                 m->vault_tag, bad_perm ? ", an access policy is half there" : "");
        return -1;
    }
    for (int a = 0; a < CR_POLICIES; a++) {
        int ok = aps[a] == m->ap[a];
        if (!ok && c->fl.slot == a &&
            ((c->fl.kind == OP_AP_ADD && aps[a]) || (c->fl.kind == OP_AP_REMOVE && !aps[a]))) {
            r->inflight_applied++;
            m->ap[a] = aps[a];
            ok = 1;
        }
        if (!ok) {
            snprintf(c->fail, sizeof(c->fail),
                     "access policy %d after restart: present %d, acknowledged %d", a, aps[a],
                     m->ap[a]);
            return -1;
        }
    }
    st = req(r, h, NULL, NULL, "GET", CR_ARM_PP "?api-version=2020-10-30", NULL, &rs);
    t = jstr(rs.json, "tags.crash");
    int ptag = t ? small_int(t) : -1;
    hx_resp_cleanup(&rs);
    if (st != 200 || !plat_value_ok(c, OP_POLICY_TAG, 0, &m->pol_tag, ptag, c->fl.value, r)) {
        snprintf(c->fail, sizeof(c->fail), "policy after restart: HTTP %ld, tag %d (acked %d)", st,
                 ptag, m->pol_tag);
        return -1;
    }
    st = req(r, h, NULL, NULL, "GET",
             CR_BAP "/scopes/admin/environments/" CR_ENV "?api-version=2021-04-01", NULL, &rs);
    const char *by = jstr(rs.json, "properties.protectionStatus.keyManagedBy");
    const char *runtime = jstr(rs.json, "properties.states.runtime.id");
    int linked = by && !strcmp(by, "Customer");
    int enabled = runtime && !strcmp(runtime, "Enabled");
    hx_resp_cleanup(&rs);
    int link_ok = linked == m->linked;
    if (!link_ok && (c->fl.kind == OP_LINK || c->fl.kind == OP_UNLINK) &&
        linked == (c->fl.kind == OP_LINK)) {
        r->inflight_applied++;
        m->linked = linked;
        link_ok = 1;
    }
    if (st != 200 || !link_ok || !enabled) {
        snprintf(c->fail, sizeof(c->fail),
                 "environment after restart: HTTP %ld, keyManagedBy %s (acked %s), runtime %s", st,
                 by ? by : "?", m->linked ? "Customer" : "Microsoft", runtime ? runtime : "?");
        return -1;
    }
    return 0;
}

/* Every enabled environment's records decrypt: list its accounts. */
static int verify_environments(cr_run *r, hx_http *h, char *fail, size_t faillen)
{
    hx_resp rs;
    long st = req(r, h, NULL, NULL, "GET",
                  CR_BAP "/scopes/admin/environments?api-version=2021-04-01", NULL, &rs);
    json_t *arr = json_object_get(rs.json, "value");
    if (st != 200 || !json_is_array(arr)) {
        snprintf(fail, faillen, "environment list: HTTP %ld", st);
        hx_resp_cleanup(&rs);
        return -1;
    }
    int rc = 0;
    size_t i;
    json_t *it;
    json_array_foreach(arr, i, it)
    {
        const char *id = json_string_value(json_object_get(it, "name"));
        const char *runtime = jstr(it, "properties.states.runtime.id");
        if (!id || !runtime || strcmp(runtime, "Enabled"))
            continue;
        hx_resp rr;
        long s2 = req(r, h, NULL, id, "GET", "/api/data/v9.2/accounts", NULL, &rr);
        size_t n = json_array_size(json_object_get(rr.json, "value"));
        hx_resp_cleanup(&rr);
        if (s2 != 200) {
            snprintf(fail, faillen, "records of environment %s: HTTP %ld", id, s2);
            rc = -1;
            break;
        }
        r->records_read += n;
    }
    hx_resp_cleanup(&rs);
    return rc;
}

/* ---- set-up and cycle driver ---------------------------------------------------------- */

static int setup_world(cr_run *r, hx_http *h)
{
    hx_resp rs;
    char *body;
    long st;
    /* the CMK: a key in contoso-cmk (purge protection on), a policy with an identity, and an
     * access policy for that identity */
    st = req(r, h, "contoso-cmk", NULL, "POST", "/keys/crash-cmk/create?" CR_API,
             "{\"kty\":\"RSA\",\"key_size\":2048}", &rs);
    hx_resp_cleanup(&rs);
    if (st != 200) {
        fprintf(stderr, "cmkharness crash: set-up: create crash-cmk: HTTP %ld\n", st);
        return -1;
    }
    body =
        dump(json_pack("{s:s,s:s,s:{s:s},s:{s:{s:s,s:{s:s,s:{s:s,s:s}}}}}", "location",
                       "unitedstates", "kind", "Encryption", "identity", "type", "SystemAssigned",
                       "properties", "encryption", "state", "Enabled", "keyVault", "id",
                       CR_ARM_KV "contoso-cmk", "key", "name", "crash-cmk", "version", ""));
    st = req(r, h, NULL, NULL, "PUT", CR_ARM_PP "?api-version=2020-10-30", body, &rs);
    free(body);
    const char *sys = jstr(rs.json, "properties.systemId");
    const char *ident = jstr(rs.json, "identity.principalId");
    char oid[64] = "";
    if ((st != 200 && st != 201) || !sys || !ident) {
        fprintf(stderr, "cmkharness crash: set-up: enterprise policy: HTTP %ld %.300s\n", st,
                rs.body ? rs.body : "");
        hx_resp_cleanup(&rs);
        return -1;
    }
    snprintf(r->system_id, sizeof(r->system_id), "%s", sys);
    snprintf(oid, sizeof(oid), "%s", ident);
    hx_resp_cleanup(&rs);
    body = dump(json_pack("{s:{s:[{s:s,s:s,s:{s:[s,s,s]}}]}}", "properties", "accessPolicies",
                          "tenantId", CR_TENANT, "objectId", oid, "permissions", "keys", "get",
                          "wrapKey", "unwrapKey"));
    st = req(r, h, NULL, NULL, "PUT",
             CR_ARM_KV "contoso-cmk/accessPolicies/add?api-version=2023-07-01", body, &rs);
    free(body);
    hx_resp_cleanup(&rs);
    if (st != 200 && st != 201) {
        fprintf(stderr, "cmkharness crash: set-up: access policy: HTTP %ld\n", st);
        return -1;
    }
    return 0;
}

static int http_open(cr_run *r, hx_http **h)
{
    char err[256];
    *h = hx_http_new(r->emu.ca, r->verbose > 2, err, sizeof(err));
    if (!*h)
        fprintf(stderr, "cmkharness crash: %s\n", err);
    return *h ? 0 : -1;
}

static void print_log_tail(const cr_run *r)
{
    char cmd[4400];
    fprintf(stderr, "--- cmkemu stderr (last 30 lines of %s) ---\n", r->log);
    snprintf(cmd, sizeof(cmd), "tail -n 30 '%s' >&2", r->log);
    if (system(cmd) != 0)
        fprintf(stderr, "(cannot show it)\n");
}

static int start_server(cr_run *r)
{
    char err[512];
    if (hx_emu_start(&r->emu, r->bin, r->data, r->log, NULL, 1, err, sizeof(err)) != 0) {
        fprintf(stderr, "cmkharness crash: %s\n", err);
        return -1;
    }
    return 0;
}

/* fsck on the stopped server's data dir: no row may lack its object; *orphans gets the rest. */
static int run_fsck(cr_run *r, long *orphans, long *token_keys)
{
    json_t *j = NULL;
    char err[512];
    if (hx_emu_fsck(r->bin, r->data, &j, err, sizeof(err)) != 0) {
        fprintf(stderr, "cmkharness crash: %s\n", err);
        return -1;
    }
    long missing = (long)json_integer_value(json_object_get(j, "missing"));
    *orphans = (long)json_integer_value(json_object_get(j, "orphans"));
    *token_keys = (long)json_integer_value(json_object_get(j, "tokenKeys"));
    json_decref(j);
    if (missing) {
        fprintf(stderr, "cmkharness crash: fsck: %ld row(s) without their token object\n", missing);
        return -1;
    }
    return 0;
}

/* After a restart: health reports the orphans fsck saw as destroyed, nothing missing. */
static int check_reconciled(cr_run *r, hx_http *h, long orphans)
{
    hx_resp rs;
    long st = req(r, h, NULL, NULL, "GET", "/_emulator/health", NULL, &rs);
    json_t *rec = json_object_get(rs.json, "reconciliation");
    long destroyed = (long)json_integer_value(json_object_get(rec, "orphansDestroyed"));
    long missing = (long)json_integer_value(json_object_get(rec, "rowsWithoutObject"));
    int ok = st == 200 && json_is_object(rec) && destroyed == orphans && missing == 0;
    hx_resp_cleanup(&rs);
    if (!ok)
        fprintf(stderr,
                "cmkharness crash: health after restart: HTTP %ld, orphans destroyed %ld (fsck "
                "saw %ld), rows without object %ld\n",
                st, destroyed, orphans, missing);
    return ok ? 0 : -1;
}

static int one_cycle(cr_run *r, unsigned cycle, uint64_t *rng)
{
    unsigned long inflight = 0;
    long orphans = 0, keys = 0;
    atomic_store(&r->stop, 0);
    for (unsigned i = 0; i < r->nclients; i++) {
        cr_client *c = &r->clients[i];
        c->rng = rng_next(rng) | 1;
        c->fail[0] = '\0';
        if (http_open(r, &c->http) != 0)
            return -1;
    }
    for (unsigned i = 0; i < r->nclients; i++)
        pthread_create(&r->clients[i].tid, NULL, client_main, &r->clients[i]);
    long delay = 50 + (long)rng_below(rng, 1450);
    for (long t = 0; t < delay && !atomic_load(&r->stop); t += 10)
        sleep_ms(10);
    hx_emu_stop(&r->emu, SIGKILL);
    r->kills++;
    atomic_store(&r->stop, 1);
    for (unsigned i = 0; i < r->nclients; i++) {
        cr_client *c = &r->clients[i];
        pthread_join(c->tid, NULL);
        hx_http_free(c->http);
        c->http = NULL;
        if (c->fail[0]) {
            fprintf(stderr, "cmkharness crash: cycle %u, client %u: %s\n", cycle, i, c->fail);
            return -1;
        }
        if (c->fl.kind != OP_NONE && c->fl.kind != OP_BACKUP)
            inflight++;
    }
    r->inflight_seen += inflight;
    if (run_fsck(r, &orphans, &keys) != 0)
        return -1;
    /* sometimes a start that dies before it serves: the reconciliation may be cut short */
    if (rng_below(rng, 8) == 0) {
        char err[256];
        if (hx_emu_start(&r->emu, r->bin, r->data, r->log, NULL, 0, err, sizeof(err)) != 0) {
            fprintf(stderr, "cmkharness crash: %s\n", err);
            return -1;
        }
        sleep_ms((long)rng_below(rng, 250));
        hx_emu_stop(&r->emu, SIGKILL);
        r->startup_kills++;
        if (run_fsck(r, &orphans, &keys) != 0)
            return -1;
    }
    r->orphans += (unsigned long)orphans;
    if (start_server(r) != 0)
        return -1;
    hx_http *h = NULL;
    if (http_open(r, &h) != 0)
        return -1;
    int rc = check_reconciled(r, h, orphans);
    char fail[1024] = "";
    for (unsigned i = 0; rc == 0 && i < r->nclients; i++) {
        cr_client *c = &r->clients[i];
        rc = c->platform ? verify_platform(r, c, h) : verify_keys(r, c, h);
        if (rc != 0)
            snprintf(fail, sizeof(fail), "client %u: %s", i, c->fail);
        c->fl.kind = OP_NONE;
    }
    if (rc == 0)
        rc = verify_environments(r, h, fail, sizeof(fail));
    hx_http_free(h);
    if (rc != 0) {
        fprintf(stderr, "cmkharness crash: cycle %u: %s\n", cycle, fail);
        return -1;
    }
    if (r->verbose)
        printf("cycle %u: killed after %ld ms, %lu in flight, %ld orphan(s) reconciled, %ld token "
               "key pairs\n",
               cycle, delay, inflight, orphans, keys);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cmkharness crash [--cycles N] [--clients N] [--seed S] [--emulator PATH]\n"
               "                        [--dir DIR] [--keep] [--verbose]\n"
               "Runs a mixed mutating workload against a real cmkemu serve, kills it with\n"
               "SIGKILL at random moments, restarts it and checks every acknowledged change,\n"
               "that operations in flight are all or nothing, fsck and the records.\n"
               "  --cycles N    kill/restart cycles (default 20)\n"
               "  --clients N   client threads, one of them the platform client (default 4)\n"
               "  --seed S      seed of the operations and delays (default: from the clock)\n"
               "  --emulator P  the cmkemu binary (default: next to cmkharness)\n"
               "  --dir DIR     where the data dir goes (default $TMPDIR or /tmp)\n"
               "  --keep        keep the data dir and the server log\n");
}

static int parse_u(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int hx_crash_main(int argc, char **argv)
{
    unsigned long cycles = 20, nclients = 4, seed = 0;
    int have_seed = 0, keep = 0, rc = 1;
    const char *dir = getenv("TMPDIR");
    cr_run *r = calloc(1, sizeof(*r));
    hx_http *h = NULL;

    if (!r)
        return 1;
    signal(SIGPIPE, SIG_IGN); /* a write to the killed server's socket must not end us */
    r->bin = hx_emu_default_bin();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(r);
            return 0;
        } else if (!strcmp(a, "--keep"))
            keep = 1;
        else if (!strcmp(a, "--verbose") || !strcmp(a, "-v"))
            r->verbose++;
        else if (!v)
            bad = 1;
        else if (!strcmp(a, "--cycles"))
            bad = parse_u(v, 1, 100000, &cycles), i++;
        else if (!strcmp(a, "--clients"))
            bad = parse_u(v, 2, CR_MAX_CLIENTS, &nclients), i++;
        else if (!strcmp(a, "--seed"))
            bad = parse_u(v, 1, ~0UL, &seed), have_seed = 1, i++;
        else if (!strcmp(a, "--emulator"))
            r->bin = v, i++;
        else if (!strcmp(a, "--dir"))
            dir = v, i++;
        else
            bad = 1;
        if (bad) {
            fprintf(stderr, "cmkharness crash: bad or incomplete option %s\n", a);
            usage(stderr);
            free(r);
            return 2;
        }
    }
    if (!r->bin) {
        fprintf(stderr, "cmkharness crash: no cmkemu next to cmkharness; pass --emulator\n");
        free(r);
        return 2;
    }
    if (!have_seed)
        seed = (unsigned long)time(NULL) ^ ((unsigned long)getpid() << 16);
    printf("crash: seed %lu (replay the operations and delays with --seed %lu), %lu cycles, %lu "
           "clients\n",
           seed, seed, cycles, nclients);
    fflush(stdout);
    uint64_t rng = (uint64_t)seed * 0x9E3779B97F4A7C15ULL | 1;
    char tmpl[4000];
    snprintf(tmpl, sizeof(tmpl), "%s/cmkharness-crash.XXXXXX", dir && *dir ? dir : "/tmp");
    if (!mkdtemp(tmpl)) {
        fprintf(stderr, "cmkharness crash: mkdtemp %s: %s\n", tmpl, strerror(errno));
        free(r);
        return 1;
    }
    snprintf(r->data, sizeof(r->data), "%s/data", tmpl);
    snprintf(r->log, sizeof(r->log), "%s/cmkemu.log", tmpl);
    r->nclients = (unsigned)nclients;
    for (unsigned i = 0; i < r->nclients; i++) {
        cr_client *c = &r->clients[i];
        c->run = r;
        c->index = (int)i;
        c->platform = i == r->nclients - 1;
        for (int k = 0; k < CR_RECORDS; k++)
            c->plat.rec[k] = -1;
        c->plat.vault_tag = c->plat.pol_tag = -1;
    }
    r->import_body = hx_bench_import_body();
    double t0 = now_s();
    if (!r->import_body || start_server(r) != 0 || http_open(r, &h) != 0 || setup_world(r, h) != 0)
        goto out;
    hx_http_free(h);
    h = NULL;
    for (unsigned long cy = 1; cy <= cycles; cy++) {
        if (one_cycle(r, (unsigned)cy, &rng) != 0)
            goto out;
        if (!r->verbose && (cy % 10 == 0 || cy == cycles)) {
            printf("crash: %lu/%lu cycles\n", cy, cycles);
            fflush(stdout);
        }
    }
    /* a clean stop, then nothing may be left over */
    int status = hx_emu_stop(&r->emu, SIGTERM);
    long orphans = 0, keys = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "cmkharness crash: cmkemu did not stop cleanly (status %d)\n", status);
        goto out;
    }
    if (run_fsck(r, &orphans, &keys) != 0)
        goto out;
    if (orphans) {
        fprintf(stderr, "cmkharness crash: %ld orphan key pair(s) after a clean stop\n", orphans);
        goto out;
    }
    unsigned long acked = 0, by_op[OP_COUNT] = {0};
    for (unsigned i = 0; i < r->nclients; i++) {
        acked += r->clients[i].acked;
        for (int k = 0; k < OP_COUNT; k++)
            by_op[k] += r->clients[i].acked_by_op[k];
    }
    printf("crash: ok: %lu cycles in %.1f s, seed %lu\n", cycles, now_s() - t0, seed);
    printf("  operations acknowledged %lu:", acked);
    for (int k = 1; k < OP_COUNT; k++)
        if (by_op[k])
            printf(" %s %lu", OP_NAMES[k], by_op[k]);
    printf("\n  kills %lu (+%lu during start-up), in flight at the kill %lu (applied %lu, not "
           "applied %lu)\n",
           r->kills, r->startup_kills, r->inflight_seen, r->inflight_applied,
           r->inflight_seen - r->inflight_applied);
    printf("  orphan key pairs reconciled at start-up %lu, rows without object 0, token key "
           "pairs at the end %ld, records decrypted %lu\n",
           r->orphans, keys, r->records_read);
    rc = 0;
out:
    if (rc != 0 && r->log[0])
        print_log_tail(r);
    hx_http_free(h);
    hx_emu_stop(&r->emu, SIGKILL);
    for (unsigned i = 0; i < r->nclients; i++)
        for (int k = 0; k < CR_SLOTS; k++)
            free(r->clients[i].keys[k].backup);
    if (r->import_body) {
        OPENSSL_cleanse(r->import_body, strlen(r->import_body));
        free(r->import_body);
    }
    if (!keep && rc == 0) {
        char cmd[4200];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpl);
        if (system(cmd) != 0)
            fprintf(stderr, "cmkharness crash: could not remove %s\n", tmpl);
    } else
        printf("\ncrash: data dir and log kept in %s\n", tmpl);
    free(r);
    return rc;
}
