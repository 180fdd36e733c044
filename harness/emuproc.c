#include "emuproc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *hx_emu_default_bin(void)
{
    static char path[PATH_MAX];
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return NULL;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    if ((size_t)snprintf(path, sizeof(path), "%s/cmkemu", self) >= sizeof(path) ||
        access(path, X_OK) != 0)
        return NULL;
    return path;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* The port of the "serving https://HOST:PORT/" line in the file, or 0. */
static int read_port(const char *path)
{
    char buf[4096];
    FILE *f = fopen(path, "r");
    int port = 0;
    if (!f)
        return 0;
    while (!port && fgets(buf, sizeof(buf), f)) {
        const char *p = strstr(buf, "serving https://");
        if (!p)
            continue;
        p = strchr(p + strlen("serving https://"), ':');
        long v = 0;
        for (p = p ? p + 1 : NULL; p && *p >= '0' && *p <= '9' && v < 65536; p++)
            v = v * 10 + (*p - '0');
        if (p && *p == '/' && v > 0 && v < 65536)
            port = (int)v;
    }
    fclose(f);
    return port;
}

int hx_emu_start(hx_emu *e, const char *bin, const char *data_dir, const char *log_path,
                 const char *const *extra, int wait_ready, char *err, size_t errlen)
{
    char outpath[4200];
    const char *argv[48];
    size_t n = 0;

    memset(e, 0, sizeof(*e));
    snprintf(outpath, sizeof(outpath), "%s.out", data_dir);
    argv[n++] = bin;
    argv[n++] = "serve";
    argv[n++] = "--data-dir";
    argv[n++] = data_dir;
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    for (size_t i = 0; extra && extra[i] && n < sizeof(argv) / sizeof(argv[0]) - 1; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    unlink(outpath); /* else the old serving line could be read before the child truncates */
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int o = open(outpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        int l = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (o < 0 || l < 0 || dup2(o, 1) < 0 || dup2(l, 2) < 0)
            _exit(127);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    e->pid = pid;
    if (!wait_ready)
        return 0;
    for (int i = 0; i < 6000; i++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            e->pid = 0;
            snprintf(err, errlen, "cmkemu exited before serving (status %d); see %s", status,
                     log_path);
            return -1;
        }
        e->port = read_port(outpath);
        if (e->port)
            break;
        sleep_ms(20);
    }
    if (!e->port) {
        hx_emu_stop(e, SIGKILL);
        snprintf(err, errlen, "cmkemu printed no serving line within 120 s");
        return -1;
    }
    snprintf(e->url, sizeof(e->url), "https://localhost:%d", e->port);
    snprintf(e->ca, sizeof(e->ca), "%s/tls/cert.pem", data_dir);
    return 0;
}

int hx_emu_stop(hx_emu *e, int sig)
{
    int status = -1;
    if (!e->pid)
        return -1;
    kill(e->pid, sig);
    while (waitpid(e->pid, &status, 0) < 0 && errno == EINTR)
        ;
    e->pid = 0;
    return status;
}

int hx_emu_fsck(const char *bin, const char *data_dir, json_t **out, char *err, size_t errlen)
{
    int fds[2];
    char buf[1024];
    size_t len = 0;
    int status = 0;

    *out = NULL;
    if (pipe(fds) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        if (dup2(fds[1], 1) < 0)
            _exit(127);
        execl(bin, bin, "fsck", "--json", "--data-dir", data_dir, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    for (;;) {
        ssize_t r = read(fds[0], buf + len, sizeof(buf) - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == sizeof(buf) - 1)
            break;
    }
    buf[len] = '\0';
    close(fds[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) > 1) {
        snprintf(err, errlen, "cmkemu fsck failed (status %d)", status);
        return -1;
    }
    *out = json_loads(buf, 0, NULL);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        snprintf(err, errlen, "cmkemu fsck printed no report: %.200s", buf);
        return -1;
    }
    return 0;
}
