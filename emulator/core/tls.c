#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "util.h"

char *emu_read_file(const char *path, size_t max, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 0 || (size_t)st.st_size > max) {
        close(fd);
        return NULL;
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *buf = emu_xmalloc(n + 1);
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    if (len)
        *len = got;
    return buf;
}

bool emu_write_file(const char *path, const void *data, size_t len, int mode)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return false;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return false;
    fchmod(fd, (mode_t)mode);
    const char *p = data;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, p + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            close(fd);
            unlink(tmp);
            return false;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        unlink(tmp);
        return false;
    }
    return rename(tmp, path) == 0;
}

bool emu_mkdirs(const char *path, int mode)
{
    char buf[4096];
    if ((size_t)snprintf(buf, sizeof buf, "%s", path) >= sizeof buf)
        return false;
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return false;
            *p = '/';
        }
    }
    if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
        return false;
    struct stat st;
    return stat(buf, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool add_ext(X509 *cert, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, cert, cert, NULL, NULL, 0);
    X509_EXTENSION *ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ex)
        return false;
    int ok = X509_add_ext(cert, ex, -1);
    X509_EXTENSION_free(ex);
    return ok == 1;
}

static bool generate(const char *cert_path, const char *key_path, char *err, size_t errlen)
{
    bool ok = false;
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    BIO *kb = BIO_new(BIO_s_mem()), *cb = BIO_new(BIO_s_mem());
    if (!pkey || !cert || !kb || !cb) {
        snprintf(err, errlen, "cannot generate the TLS key");
        goto out;
    }
    X509_set_version(cert, 2);
    unsigned char serial[16];
    RAND_bytes(serial, sizeof serial);
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3650L * 86400);
    X509_set_pubkey(cert, pkey);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"cmkemu", -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               (const unsigned char *)"cmkemu local emulator", -1, -1, 0);
    X509_set_issuer_name(cert, name);
    if (!add_ext(cert, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
        !add_ext(cert, NID_key_usage, "critical,digitalSignature,keyCertSign") ||
        !add_ext(cert, NID_ext_key_usage, "serverAuth") ||
        !add_ext(cert, NID_subject_key_identifier, "hash") ||
        !add_ext(cert, NID_subject_alt_name,
                 "DNS:localhost,IP:127.0.0.1,IP:::1,DNS:*.vault.localhost,DNS:*.crm.localhost")) {
        snprintf(err, errlen, "cannot build the TLS certificate extensions");
        goto out;
    }
    if (!X509_sign(cert, pkey, EVP_sha256())) {
        snprintf(err, errlen, "cannot sign the TLS certificate");
        goto out;
    }
    if (!PEM_write_bio_PrivateKey(kb, pkey, NULL, NULL, 0, NULL, NULL) ||
        !PEM_write_bio_X509(cb, cert)) {
        snprintf(err, errlen, "cannot encode the TLS certificate");
        goto out;
    }
    char *kdata, *cdata;
    long kl = BIO_get_mem_data(kb, &kdata), cl = BIO_get_mem_data(cb, &cdata);
    if (!emu_write_file(key_path, kdata, (size_t)kl, 0600) ||
        !emu_write_file(cert_path, cdata, (size_t)cl, 0644)) {
        snprintf(err, errlen, "cannot write %s: %s", cert_path, strerror(errno));
        goto out;
    }
    ok = true;
out:
    EVP_PKEY_free(pkey);
    X509_free(cert);
    BIO_free(kb); /* BIO_s_mem frees with cleanse? no: contents are a key; clear first */
    BIO_free(cb);
    return ok;
}

bool emu_tls_ensure(const char *data_dir, char **cert_pem, char **key_pem, char **cert_path,
                    char *err, size_t errlen)
{
    char dir[4096], cp[4200], kp[4200];
    snprintf(dir, sizeof dir, "%s/tls", data_dir);
    snprintf(cp, sizeof cp, "%s/cert.pem", dir);
    snprintf(kp, sizeof kp, "%s/key.pem", dir);
    if (!emu_mkdirs(dir, 0700)) {
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        return false;
    }
    if (access(cp, R_OK) != 0 || access(kp, R_OK) != 0) {
        if (!generate(cp, kp, err, errlen))
            return false;
    }
    size_t kl = 0;
    *cert_pem = emu_read_file(cp, 1 << 20, NULL);
    *key_pem = emu_read_file(kp, 1 << 20, &kl);
    if (!*cert_pem || !*key_pem) {
        if (*key_pem)
            OPENSSL_cleanse(*key_pem, kl);
        free(*cert_pem);
        free(*key_pem);
        *cert_pem = *key_pem = NULL;
        snprintf(err, errlen, "cannot read the TLS certificate or key in %s", dir);
        return false;
    }
    *cert_path = emu_xstrdup(cp);
    return true;
}
