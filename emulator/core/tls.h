/*
 * tls: the emulator's self-signed certificate. On first start it creates DATA_DIR/tls/
 * (0700) with key.pem (0600, EC P-256) and cert.pem (CA:TRUE so clients can trust it as a
 * root; SANs localhost, 127.0.0.1, ::1, *.vault.localhost, *.crm.localhost; 10 years).
 * Later starts reuse them.
 */
#ifndef CMKEMU_TLS_H
#define CMKEMU_TLS_H

#include <stdbool.h>
#include <stddef.h>

/* Loads or creates the pair. *cert_pem and *key_pem are malloc'd (the key is a secret: the
 * caller wipes and frees it); *cert_path is malloc'd. false + err on failure. */
bool emu_tls_ensure(const char *data_dir, char **cert_pem, char **key_pem, char **cert_path,
                    char *err, size_t errlen);

/* Reads a whole file (<= max bytes) into a NUL-terminated malloc'd buffer. NULL on error. */
char *emu_read_file(const char *path, size_t max, size_t *len);
/* Writes a file atomically (temp + fsync + rename) with the given mode. */
bool emu_write_file(const char *path, const void *data, size_t len, int mode);
/* mkdir -p with mode for the last component; true if it exists as a directory. */
bool emu_mkdirs(const char *path, int mode);

#endif
