/*
 * The native shim: what runed/runner/shim.py does, as a program of its own.
 *
 * Why by hand: the shim is the per-instance cost of supervision, and a Python shim cannot get
 * below an interpreter. A forked Python shim costs ~0.9 MB PSS and ~0.3 ms of CPU to end (the
 * kernel tears down the interpreter's copied address space), so 1,000 processes under Python shims
 * end ~5x as slowly as the same processes killed bare; under this shim, ~0.11 MB PSS each and
 * ~2.2x (bench/README.md, "Native shim"). No
 * packaged monitor writes runed's records: conmon and containerd's shims drive an OCI runtime,
 * s6 and runit supervise services, none writes this log format or these exit and claim records.
 *
 * Same contract as shim.py, file for file (runed/runner/native.py builds it, the zygote or the
 * runner starts it): usage `rune-shim <instance_dir>`; the attempt it claims in RUNED_SHIM_ATTEMPT,
 * the descriptor to report its start on in RUNED_SHIM_REPORT_FD (both removed from the instance's
 * environment, which is otherwise this process's own, so secrets never touch disk or argv). It
 * claims the attempt (claim-<attempt>.json, created once by link(2)), reads launch.json, reserves
 * the exit and pid records, starts the instance in its own process group, writes its output to
 * log.jsonl (one JSON object per line, rotated by size, dropped with a marker under the free-space
 * floor), and records how it ended in exit.json (synced; not written at all when SIGURG, the
 * deletion signal, is pending). Lines are decoded as Python's decode("utf-8", "replace") does and
 * escaped as its json.dumps(ensure_ascii=False) does, so a record reads the same whichever shim
 * wrote it.
 *
 * The keeper, `rune-shim --keeper <socket_path> [<listening_fd>]`: the same per-instance work (the same functions:
 * prepare, run_begin, the drain and group end, run_end), for many instances in one process. Why: a
 * shim per instance makes every instance two processes, so deleting N instances is 2N process exits;
 * under a keeper it is N. The trade is isolation: a keeper's death ends the supervision of all its
 * instances (they run on, their ends unrecorded), where a shim's death ends one's. Single-threaded,
 * one epoll for everything; each instance has its own deadlines and a directory fd to fchdir() to
 * before its file work; a failure of one instance goes to its shim.err and never ends the keeper.
 * It listens on socket_path (mode 0600, a stale file there removed; or on listening_fd, a socket
 * already bound there and listening, so its starter need not wait for it) and exits once it supervises
 * nothing and has no client, not before its first client (or 10 s without one), unlinking the socket.
 * Messages both ways: a 4-byte big-endian length, then that many bytes of a JSON object (as the
 * zygote's; at most 64 MiB). Requests, answered in order on the connection they came on:
 *   {"op": "start", "dir": <absolute>, "attempt": <name>, "env": {<the instance's whole environment>}}
 *     -> {"claimed": false} (claimed before, or launch.json names another attempt) | {"error": why}
 *        (also in the dir's shim.err) | {"pid": 0, "ended": true} (could not start: exit record 127)
 *        | {"pid": N, "pid_start": ticks|null, "ts": wall seconds of its start} with a pipe's read
 *        end (SCM_RIGHTS) that reaches end of file once the exit record is committed (a discarded
 *        instance's: once its process has ended), or the keeper is gone. Claim and pid.json name
 *        the keeper as the shim (shim_pid, shim_start).
 *   {"op": "watch", "dir", "attempt"} -> the same reply and pipe for an instance still running (a
 *     controller started anew), else {"gone": true} (also for a discarded one whose end was told).
 *   {"op": "discard", "dir"} -> no reply: that instance's exit record is not written (SIGURG's meaning),
 *     and its end pipe reaches end of file once its process has ended (its directory goes next).
 *   {"op": "signal", "dirs": [...], "signal": N, "discard": bool} -> no reply: signal N to the
 *     group of each instance whose process is not reaped yet (so neither its pid nor its group can
 *     have been reused: no check of /proc needed); with discard, as "discard" for each. A deletion
 *     of a thousand is one message, and the kills run here, beside the controller.
 *   {"op": "ping"} -> {"pid": keeper pid, "start": its start ticks, "instances": count, "live": how
 *     many of them run on (not reaped yet, not discarded); the others are being deleted or finished,
 *     a discarded one until it is reaped, DISCARD_REAP_DELAY_MS after its end}.
 * Anything else -> {"error": why}, and the keeper serves on.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LOG_NAME "log.jsonl"
#define EXIT_NAME "exit.json"
#define PID_NAME "pid.json"
#define LAUNCH_NAME "launch.json"
#define SHIM_ERR "shim.err"
#define ENV_PREFIX "RUNED_SHIM_"
#define DISCARD_SIGNAL SIGURG
#define RESERVE_BYTES 4096
#define READ_SIZE 65536
#define DRAIN_QUIET_MS 500
#define DRAIN_MAX_MS 5000
#define POLL_MS 200
#define GROUP_END_MS 2000
#define GROUP_LOOK_MS 20
#define DEFAULT_MIN_FREE (32LL << 20)
#define RESUME_SLACK (1LL << 20)
#define SPACE_CHECK_NS 1000000000LL
#define MIN_CHECK_BYTES (64LL << 10)

/* -- small helpers ---------------------------------------------------------------------------- */
typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static void die(const char *fmt, ...);

static void buf_grow(buf_t *b, size_t more) {
    if (b->n + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) die("out of memory");
    b->p = p;
    b->cap = cap;
}
static void buf_add(buf_t *b, const void *s, size_t n) {
    buf_grow(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void buf_str(buf_t *b, const char *s) { buf_add(b, s, strlen(s)); }
static void buf_fmt(buf_t *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    buf_grow(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A failure of the shim, or of one instance's start in the keeper: said in shim.err of the current
 * (instance) directory, as its stderr may be /dev/null or shared. */
static void note_err(const char *msg) {
    int fd = open(SHIM_ERR, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        dprintf(fd, "rune-shim: %s\n", msg);
        close(fd);
    }
}

/* A failure of the shim itself: said in shim.err, then exit 1. Never on a keeper's per-instance path. */
static void die(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    note_err(msg);
    _exit(1);
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_file(const char *path, const char *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    int rc = write_all(fd, data, n);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static char *read_file(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    buf_t b = {0};
    char chunk[65536];
    ssize_t r;
    while ((r = read(fd, chunk, sizeof chunk)) != 0) {
        if (r < 0) {
            if (errno == EINTR) continue;
            close(fd);
            free(b.p);
            return NULL;
        }
        buf_add(&b, chunk, (size_t)r);
    }
    close(fd);
    if (!b.p) buf_grow(&b, 0), b.p[0] = 0;
    if (len) *len = b.n;
    return b.p;
}

/* Field 22 of /proc/<pid>/stat (start time in clock ticks), -1 if gone. */
static long long proc_start_time(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    char *raw = read_file(path, NULL);
    if (!raw) return -1;
    char *p = strrchr(raw, ')');
    long long start = -1;
    if (p) {
        p += 2;
        for (int field = 0; *p && field < 19; p++)
            if (*p == ' ') field++;
        if (*p) start = strtoll(p, NULL, 10);
    }
    free(raw);
    return start;
}

/* -- JSON out: Python's decode("utf-8", "replace") then json.dumps(ensure_ascii=False) --------- */
static const unsigned char REPLACEMENT[] = {0xEF, 0xBF, 0xBD};

/* How many bytes of s[0..n) form one valid UTF-8 character, or -k: an ill-formed start whose
 * maximal subpart is k bytes (one U+FFFD replaces it, as CPython's decoder does). */
static int utf8_char(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    int need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) need = 2, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
    else if (c == 0xED) need = 2, hi = 0x9F;
    else if (c == 0xF0) need = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) need = 3, hi = 0x8F;
    else return -1;
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return -i;
        unsigned char d = s[i];
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (d < l || d > h) return -i;
    }
    return need + 1;
}

static void json_string(buf_t *b, const char *text, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)text;
    buf_grow(b, n + 2);
    b->p[b->n++] = '"';
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c >= 0x80) {
            int k = utf8_char(s + i, n - i);
            if (k > 0) buf_add(b, s + i, (size_t)k), i += (size_t)k;
            else buf_add(b, REPLACEMENT, 3), i += (size_t)-k;
            continue;
        }
        char esc[7];
        switch (c) {
        case '"': buf_add(b, "\\\"", 2); break;
        case '\\': buf_add(b, "\\\\", 2); break;
        case '\n': buf_add(b, "\\n", 2); break;
        case '\r': buf_add(b, "\\r", 2); break;
        case '\t': buf_add(b, "\\t", 2); break;
        case '\b': buf_add(b, "\\b", 2); break;
        case '\f': buf_add(b, "\\f", 2); break;
        default:
            if (c < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                buf_add(b, esc, 6);
            } else {
                buf_add(b, &c, 1);
            }
        }
        i++;
    }
    buf_add(b, "\"", 1);
}
static void json_cstr(buf_t *b, const char *s) { json_string(b, s, strlen(s)); }

/* -- JSON in: launch.json, as runed writes it ----------------------------------------------------- */
typedef struct {
    const char *p, *end;
} scan_t;

static void skip_ws(scan_t *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t')) s->p++;
}
static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}
static void put_utf8(buf_t *b, unsigned cp) {
    unsigned char o[4];
    size_t n;
    if (cp < 0x80) o[0] = (unsigned char)cp, n = 1;
    else if (cp < 0x800) o[0] = (unsigned char)(0xC0 | cp >> 6), o[1] = (unsigned char)(0x80 | (cp & 63)), n = 2;
    else if (cp < 0x10000)
        o[0] = (unsigned char)(0xE0 | cp >> 12), o[1] = (unsigned char)(0x80 | ((cp >> 6) & 63)),
        o[2] = (unsigned char)(0x80 | (cp & 63)), n = 3;
    else
        o[0] = (unsigned char)(0xF0 | cp >> 18), o[1] = (unsigned char)(0x80 | ((cp >> 12) & 63)),
        o[2] = (unsigned char)(0x80 | ((cp >> 6) & 63)), o[3] = (unsigned char)(0x80 | (cp & 63)), n = 4;
    buf_add(b, o, n);
}

/* A JSON string into a new NUL-terminated buffer, as os.fsencode would encode it: a lone surrogate
 * U+DC80..U+DCFF (Python's surrogateescape of a byte that was not UTF-8) is that byte again. */
static char *scan_string(scan_t *s) {
    if (s->p >= s->end || *s->p != '"') return NULL;
    s->p++;
    buf_t b = {0};
    buf_grow(&b, 0);
    b.p[0] = 0;
    while (s->p < s->end && *s->p != '"') {
        char c = *s->p++;
        if (c != '\\') {
            buf_add(&b, &c, 1);
            continue;
        }
        if (s->p >= s->end) break;
        char e = *s->p++;
        switch (e) {
        case 'n': buf_add(&b, "\n", 1); break;
        case 'r': buf_add(&b, "\r", 1); break;
        case 't': buf_add(&b, "\t", 1); break;
        case 'b': buf_add(&b, "\b", 1); break;
        case 'f': buf_add(&b, "\f", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (s->end - s->p < 4 || hex4(s->p, &cp) < 0) goto bad;
            s->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u' &&
                hex4(s->p + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                s->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC80 && cp <= 0xDCFF) {
                unsigned char byte = (unsigned char)(cp - 0xDC00);
                buf_add(&b, &byte, 1);
                break;
            }
            put_utf8(&b, cp);
            break;
        }
        default: buf_add(&b, &e, 1);
        }
    }
    if (s->p >= s->end) goto bad;
    s->p++;
    return b.p;
bad:
    free(b.p);
    return NULL;
}

static int scan_skip(scan_t *s);

static int scan_number(scan_t *s, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s->p, &end, 10);
    if (end < s->end && (*end == '.' || *end == 'e' || *end == 'E')) v = (long long)strtod(s->p, &end);
    if (end == s->p || errno) return -1;
    s->p = end;
    *out = v;
    return 0;
}

static int scan_skip(scan_t *s) {
    skip_ws(s);
    if (s->p >= s->end) return -1;
    char c = *s->p;
    if (c == '"') {
        char *t = scan_string(s);
        free(t);
        return t ? 0 : -1;
    }
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        s->p++;
        skip_ws(s);
        if (s->p < s->end && *s->p == close) return s->p++, 0;
        for (;;) {
            if (c == '{') {
                skip_ws(s);
                char *k = scan_string(s);
                if (!k) return -1;
                free(k);
                skip_ws(s);
                if (s->p >= s->end || *s->p++ != ':') return -1;
            }
            if (scan_skip(s) < 0) return -1;
            skip_ws(s);
            if (s->p >= s->end) return -1;
            if (*s->p == ',') {
                s->p++;
                continue;
            }
            if (*s->p++ == close) return 0;
            return -1;
        }
    }
    for (const char *w = "null\0true\0false\0"; *w; w += strlen(w) + 1)
        if ((size_t)(s->end - s->p) >= strlen(w) && !strncmp(s->p, w, strlen(w))) return s->p += strlen(w), 0;
    long long ignored;
    return scan_number(s, &ignored);
}

typedef struct {
    char *attempt, *cwd;
    char **argv;
    int argc;
    long long uid, gid, rlimit_as, nofile, max_bytes, backups, umask, min_free;
    int has_uid, has_gid, has_umask;
} spec_t;

/* An int, or null (left as it was: *present stays 0). */
static int scan_int(scan_t *s, long long *out, int *present) {
    skip_ws(s);
    if (s->end - s->p >= 4 && !strncmp(s->p, "null", 4)) return s->p += 4, 0;
    if (scan_number(s, out) < 0) return -1;
    if (present) *present = 1;
    return 0;
}

/* What was wrong with launch.json, naming the field and its value (for shim.err). */
static char spec_error[256] = "not a JSON object";

static void bad_field(const char *key, const char *value, const char *end) {
    size_t len = 0;
    while (value + len < end && len < 60 && value[len] != ',' && value[len] != '}' && value[len] != '\n') len++;
    snprintf(spec_error, sizeof spec_error, "%s: not what it must be: %.*s", key, (int)len, value);
}

static int parse_spec(const char *text, size_t n, spec_t *spec) {
    scan_t s = {text, text + n};
    spec->max_bytes = 10LL << 20;
    spec->backups = 3;
    spec->min_free = DEFAULT_MIN_FREE;
    skip_ws(&s);
    if (s.p >= s.end || *s.p++ != '{') return -1;
    skip_ws(&s);
    if (s.p < s.end && *s.p == '}') return 0;
    for (;;) {
        skip_ws(&s);
        char *key = scan_string(&s);
        if (!key) return -1;
        skip_ws(&s);
        if (s.p >= s.end || *s.p++ != ':') return free(key), -1;
        skip_ws(&s);
        int rc = 0;
        const char *value = s.p;
        int is_null = s.end - s.p >= 4 && !strncmp(s.p, "null", 4);
        if (!strcmp(key, "attempt") || !strcmp(key, "cwd")) {
            char **dst = key[0] == 'a' ? &spec->attempt : &spec->cwd;
            if (is_null) s.p += 4;
            else rc = (*dst = scan_string(&s)) ? 0 : -1;
        } else if (!strcmp(key, "argv")) {
            if (is_null) {
                s.p += 4;
            } else if (s.p < s.end && *s.p == '[') {
                s.p++;
                for (;;) {
                    skip_ws(&s);
                    if (s.p < s.end && *s.p == ']') {
                        s.p++;
                        break;
                    }
                    char *arg = scan_string(&s);
                    if (!arg) {
                        rc = -1;
                        break;
                    }
                    spec->argv = realloc(spec->argv, sizeof(char *) * (size_t)(spec->argc + 2));
                    if (!spec->argv) die("out of memory");
                    spec->argv[spec->argc++] = arg;
                    spec->argv[spec->argc] = NULL;
                    skip_ws(&s);
                    if (s.p < s.end && *s.p == ',') s.p++;
                }
            } else {
                rc = -1;
            }
        } else if (!strcmp(key, "uid")) rc = scan_int(&s, &spec->uid, &spec->has_uid);
        else if (!strcmp(key, "gid")) rc = scan_int(&s, &spec->gid, &spec->has_gid);
        else if (!strcmp(key, "umask")) rc = scan_int(&s, &spec->umask, &spec->has_umask);
        else if (!strcmp(key, "rlimit_as")) rc = scan_int(&s, &spec->rlimit_as, NULL);
        else if (!strcmp(key, "nofile")) rc = scan_int(&s, &spec->nofile, NULL);
        else if (!strcmp(key, "max_bytes")) rc = scan_int(&s, &spec->max_bytes, NULL);
        else if (!strcmp(key, "backups")) rc = scan_int(&s, &spec->backups, NULL);
        else if (!strcmp(key, "min_free_bytes")) rc = scan_int(&s, &spec->min_free, NULL);
        else rc = scan_skip(&s);
        if (rc < 0) bad_field(key, value, s.end);
        free(key);
        if (rc < 0) return -1;
        skip_ws(&s);
        if (s.p >= s.end) return -1;
        if (*s.p == ',') {
            s.p++;
            continue;
        }
        return *s.p == '}' ? 0 : -1;
    }
}

/* -- records ---------------------------------------------------------------------------------- */
/* A record whose blocks are taken at start, then written in place and renamed (see shim.Reserved). */
typedef struct {
    const char *path;
    char tmp[64];
    int fd;
} reserved_t;

static void reserve(reserved_t *r, const char *path) {
    r->path = path;
    snprintf(r->tmp, sizeof r->tmp, "%s.reserve", path);
    r->fd = open(r->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (r->fd < 0) return;
    char blanks[RESERVE_BYTES];
    memset(blanks, ' ', sizeof blanks);
    if (write_all(r->fd, blanks, sizeof blanks) < 0) {
        close(r->fd);
        r->fd = -1;
    }
}

static void write_atomic(const char *path, const char *data, size_t n) {
    char tmp[80];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (write_file(tmp, data, n) == 0) rename(tmp, path);
}

static void commit(reserved_t *r, buf_t *data, int sync) {
    int fd = r->fd;
    r->fd = -1;
    if (fd < 0 || data->n > RESERVE_BYTES) {
        if (fd >= 0) close(fd);
        write_atomic(r->path, data->p, data->n);
        return;
    }
    char page[RESERVE_BYTES];
    memset(page, ' ', sizeof page);
    memcpy(page, data->p, data->n);
    ssize_t w = pwrite(fd, page, sizeof page, 0);
    if (w == (ssize_t)sizeof page && sync) fsync(fd);
    close(fd);
    if (w == (ssize_t)sizeof page) rename(r->tmp, r->path);
    else write_atomic(r->path, data->p, data->n);
}

static void discard_reserved(reserved_t *r) {
    if (r->fd >= 0) close(r->fd);
    r->fd = -1;
    unlink(r->tmp);
}

/* -- the log (see shim.LogWriter) --------------------------------------------------------------- */
typedef struct {
    int fd;
    long long size, max_bytes, backups, min_free, seq, dropped, budget;
    int64_t checked;
    int torn;
} log_t;

/* The highest seq already written: the last whole record of log.jsonl, else of log.jsonl.1. */
static long long last_seq(void) {
    const char *names[] = {LOG_NAME, LOG_NAME ".1"};
    for (int i = 0; i < 2; i++) {
        int fd = open(names[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        off_t size = lseek(fd, 0, SEEK_END);
        off_t from = size > 65536 ? size - 65536 : 0;
        char *tail = malloc((size_t)(size - from) + 1);
        ssize_t got = tail ? pread(fd, tail, (size_t)(size - from), from) : -1;
        close(fd);
        if (got < 0) {
            free(tail);
            continue;
        }
        tail[got] = 0;
        long long found = -1;
        char *end = tail + got;
        while (end > tail && found < 0) {
            while (end > tail && (end[-1] == '\n' || end[-1] == '\r')) end--;
            char *start = end;
            while (start > tail && start[-1] != '\n') start--;
            static const char prefix[] = "{\"seq\": ";
            if (end > start && end[-1] == '}' && !strncmp(start, prefix, sizeof prefix - 1)) {
                char *num = start + sizeof prefix - 1;
                char *after;
                long long v = strtoll(num, &after, 10);
                if (after > num && *after == ',') found = v;
            }
            end = start;
        }
        free(tail);
        if (found >= 0) return found;
    }
    return 0;
}

static int open_log(void) { return open(LOG_NAME, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666); }

/* 0, or -1 (errno set) when log.jsonl cannot be opened. */
static int log_init(log_t *w, const spec_t *spec) {
    memset(w, 0, sizeof *w);
    w->max_bytes = spec->max_bytes < 1024 ? 1024 : spec->max_bytes;
    w->backups = spec->backups < 0 ? 0 : spec->backups;
    w->min_free = spec->min_free < 0 ? 0 : spec->min_free;
    w->seq = last_seq();
    w->fd = open_log();
    if (w->fd < 0) return -1;
    w->size = lseek(w->fd, 0, SEEK_END);
    w->checked = mono_ns() - SPACE_CHECK_NS;
    return 0;
}

static void log_rotate(log_t *w) {
    close(w->fd);
    if (w->backups == 0) {
        unlink(LOG_NAME);
    } else {
        char src[64], dst[64];
        for (long long i = w->backups - 1; i > 0; i--) {
            snprintf(src, sizeof src, LOG_NAME ".%lld", i);
            snprintf(dst, sizeof dst, LOG_NAME ".%lld", i + 1);
            if (access(src, F_OK) == 0) rename(src, dst);
        }
        rename(LOG_NAME, LOG_NAME ".1");
    }
    w->fd = open_log();
    w->size = 0;
    w->torn = 0;
}

static int log_room(log_t *w, long long n) {
    int64_t now = mono_ns();
    int recent = now - w->checked < SPACE_CHECK_NS;
    if (w->dropped && recent) return 0;
    if (!w->min_free) return 1;
    if (recent && n <= w->budget) {
        w->budget -= n;
        return 1;
    }
    w->checked = now;
    struct statvfs st;
    if (fstatvfs(w->fd, &st) < 0) return 1;
    long long room = (long long)st.f_bavail * (long long)st.f_frsize - w->min_free;
    if (w->dropped) room -= RESUME_SLACK;
    if (room < n) return 0;
    long long half = room / 2;
    w->budget = (half > MIN_CHECK_BYTES ? half : MIN_CHECK_BYTES) - n;
    return 1;
}

static void log_record(log_t *w, buf_t *out, const char *stream, const char *text, size_t n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    out->n = 0;
    buf_fmt(out, "{\"seq\": %lld, \"ts\": \"%s.%09ldZ\", \"stream\": \"%s\", \"line\": ", w->seq + 1, when,
            ts.tv_nsec, stream);
    json_string(out, text, n);
    buf_add(out, "}\n", 2);
}

/* One record (rotating first when due); 0 when the disk had no room for it. */
static int log_append(log_t *w, buf_t *rec) {
    const char *p = rec->p;
    size_t n = rec->n;
    if (w->torn && w->fd >= 0 && write(w->fd, "\n", 1) == 1) {
        w->size++;
        w->torn = 0;
    }
    if (w->fd < 0) {
        /* A rotation could not open the new file (no room): open it again, without rotating again. */
        w->fd = open_log();
        w->size = w->fd < 0 ? 0 : lseek(w->fd, 0, SEEK_END);
    } else if (w->size && w->size + (long long)n > w->max_bytes) {
        log_rotate(w);
    }
    if (w->fd < 0) {
        w->checked = mono_ns();
        return 0;
    }
    while (n) {
        ssize_t r = write(w->fd, p, n);
        if (r < 0) {
            if (errno == EINTR) continue;
            w->checked = mono_ns();
            return 0;
        }
        w->size += r;
        w->torn = 1;
        p += r;
        n -= (size_t)r;
    }
    w->torn = 0;
    w->seq++;
    return 1;
}

static buf_t record_buf;

static int log_flush_marker(log_t *w) {
    if (!w->dropped) return 1;
    char text[256];
    if (w->min_free)
        snprintf(text, sizeof text, "runed: %lld lines dropped: the disk holding this log had less than %lld bytes free",
                 w->dropped, w->min_free);
    else
        snprintf(text, sizeof text, "runed: %lld lines dropped: the disk holding this log was full", w->dropped);
    log_record(w, &record_buf, "stderr", text, strlen(text));
    if (!log_append(w, &record_buf)) return 0;
    w->dropped = 0;
    return 1;
}

static void log_write(log_t *w, const char *stream, const char *line, size_t n) {
    if (!log_room(w, (long long)n + 128 + (w->dropped ? 256 : 0))) {
        w->dropped++;
        return;
    }
    if (!log_flush_marker(w)) {
        w->dropped++;
        return;
    }
    log_record(w, &record_buf, stream, line, n);
    if (!log_append(w, &record_buf)) w->dropped++;
}

static void log_close(log_t *w) {
    log_flush_marker(w);
    if (w->fd >= 0) close(w->fd);
    w->fd = -1;
}

/* -- the instance ------------------------------------------------------------------------------- */
static void report_start(int fd) {
    if (fd < 0) return;
    char line[32];
    int n = snprintf(line, sizeof line, "%d\n", (int)getpid());
    if (write(fd, line, (size_t)n) < 0) { /* a hint only: lost, the controller looks later */
    }
    close(fd);
}

static int discarded(void) {
    sigset_t pending;
    sigpending(&pending);
    return sigismember(&pending, DISCARD_SIGNAL);
}

/* repr() of a str as Python writes it for a printable name: single quotes unless it holds one and no double quote. */
static void py_repr(buf_t *b, const char *s) {
    char q = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';
    buf_add(b, &q, 1);
    for (const char *c = s; *c; c++) {
        if (*c == '\\' || *c == q) buf_add(b, "\\", 1);
        buf_add(b, c, 1);
    }
    buf_add(b, &q, 1);
}

/* Why the start failed, as Python's Popen would word it (shim.spawn / shim._failure): the working
 * directory for a failure before the exec, else the program. */
static void start_error(buf_t *msg, int err, int before_exec, const spec_t *spec) {
    msg->n = 0;
    buf_fmt(msg, "[Errno %d] %s: ", err, strerror(err));
    if (before_exec && !spec->cwd) buf_str(msg, "None");
    else py_repr(msg, before_exec ? spec->cwd : spec->argv[0]);
}

/* The soft RLIMIT_NOFILE the keeper started with (it raises its own), 0 in the shim. */
static rlim_t child_nofile;
static int in_keeper;
static pid_t spawner; /* the keeper (set once it starts), which its instances die with */

/* In the child: everything Popen's fork_exec would do, then exec; failures go to `report`. */
static void child(const spec_t *spec, char **envp, int out_w, int err_w, int report) {
    int null = open("/dev/null", O_RDONLY);
    int stage = 1; /* 1: before exec ("noexec"), 0: exec */
    int err = 0;
    struct sigaction dfl = {0};
    dfl.sa_handler = SIG_DFL;
    int sigs[] = {SIGHUP, SIGINT, SIGTERM, SIGPIPE, SIGXFSZ, SIGURG};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (null < 0 || dup2(null, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0) goto fail;
    /* Nothing of the shim's reaches the instance but the three streams (the report pipe closes on exec). */
    if ((report > 3 && syscall(SYS_close_range, 3, (unsigned)report - 1, 0) < 0) ||
        syscall(SYS_close_range, (unsigned)report + 1, ~0U, 0) < 0)
        for (int fd = 3; fd < 4096; fd++) /* without close_range (Linux < 5.9) */
            if (fd != report) close(fd);
    if (spec->cwd && chdir(spec->cwd) < 0) goto fail;
    if (spec->has_umask && spec->umask >= 0) umask((mode_t)spec->umask);
    if (setpgid(0, 0) < 0) goto fail;
    if (spec->nofile > 0 || child_nofile) {
        /* Without a limit of its own, an instance of the keeper gets the one a shim would have passed on. */
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        rlim_t want = spec->nofile > 0 ? (rlim_t)spec->nofile : child_nofile;
        rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (spec->has_gid) {
        if (setgroups(0, NULL) < 0 || setregid((gid_t)spec->gid, (gid_t)spec->gid) < 0) goto fail;
    }
    if (spec->has_uid && setreuid((uid_t)spec->uid, (uid_t)spec->uid) < 0) goto fail;
    /* A keeper's instances end with it (the controller starts them again): one it started just
     * before it was killed, whose pid nobody recorded yet, ran on orphaned. (A shim's death is told
     * apart from its instance's, and its instance's group killed, by the controller.) Set after the
     * credentials change, which clears it; a keeper already gone is not waited for. */
    if (in_keeper) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) goto fail;
        if (getppid() != spawner) _exit(255);
    }
    if (spec->rlimit_as > 0) {
        struct rlimit rl = {(rlim_t)spec->rlimit_as, (rlim_t)spec->rlimit_as};
        if (setrlimit(RLIMIT_AS, &rl) < 0) goto fail;
    }
    stage = 0;
    const char *prog = spec->argv[0];
    if (strchr(prog, '/')) {
        execve(prog, spec->argv, envp);
        err = errno;
    } else {
        const char *path = NULL;
        for (char **e = envp; *e; e++)
            if (!strncmp(*e, "PATH=", 5)) path = *e + 5;
        if (!path) path = "/bin:/usr/bin";
        char full[4096];
        const char *dir = path;
        for (;;) {
            const char *colon = strchr(dir, ':');
            size_t len = colon ? (size_t)(colon - dir) : strlen(dir);
            int n = len ? snprintf(full, sizeof full, "%.*s%s%s", (int)len, dir, dir[len - 1] == '/' ? "" : "/", prog)
                        : snprintf(full, sizeof full, "%s", prog);
            if (n > 0 && (size_t)n < sizeof full) {
                execve(full, spec->argv, envp);
                if (errno != ENOENT && errno != ENOTDIR && !err) err = errno;
            }
            if (!colon) break;
            dir = colon + 1;
        }
        if (!err) err = ENOENT;
    }
fail:
    if (!err) err = errno;
    char msg[64];
    int n = snprintf(msg, sizeof msg, "OSError:%x:%s", err, stage ? "noexec" : "");
    if (write(report, msg, (size_t)n) < 0) { /* the parent then sees no report and an exit of 255 */
    }
    _exit(255);
}

typedef struct {
    const spec_t *spec;
    char **envp;
    int out_w, err_w, report;
} child_args_t;

static int child_entry(void *p) {
    const child_args_t *a = p;
    child(a->spec, a->envp, a->out_w, a->err_w, a->report);
    return 0;
}

/* The child's stack: one, as the parent waits (CLONE_VFORK) until the child has exec'd or exited. */
static char child_stack[1 << 16] __attribute__((aligned(16)));

/* Start the instance in its own process group; 0, or -1 with `msg` saying why.
 *
 * The child shares the parent's memory until its exec (CLONE_VM | CLONE_VFORK, as posix_spawn does):
 * a fork copies the page tables and every open descriptor's reference, and a keeper holds six
 * descriptors per instance, so under a keeper of a thousand a fork and the exec that closes them
 * took 4 ms against 0.9 (1.9 ms with CLONE_VM; bench/README.md). The child only makes system calls
 * on its own stack and reads the spec; no signal handler is installed anywhere in this program. */
static int spawn(const spec_t *spec, char **envp, pid_t *pid, int *out_r, int *err_r, buf_t *msg) {
    if (!spec->argc || !spec->argv[0][0]) {
        msg->n = 0;
        buf_str(msg, "no command");
        return -1;
    }
    int out[2], err[2], rep[2];
    if (pipe2(out, O_CLOEXEC) < 0) goto failed;
    if (pipe2(err, O_CLOEXEC) < 0) goto failed;
    if (pipe2(rep, O_CLOEXEC) < 0) goto failed;
    child_args_t args = {spec, envp, out[1], err[1], rep[1]};
    *pid = clone(child_entry, child_stack + sizeof child_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
    if (*pid < 0) goto failed;
    close(out[1]);
    close(err[1]);
    close(rep[1]);
    char report[256];
    ssize_t got = 0, r;
    while ((r = read(rep[0], report + got, sizeof report - 1 - (size_t)got)) != 0) {
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        got += r;
        if ((size_t)got >= sizeof report - 1) break;
    }
    close(rep[0]);
    if (got > 0) {
        report[got] = 0;
        waitpid(*pid, NULL, 0);
        close(out[0]);
        close(err[0]);
        char *colon = strchr(report, ':');
        unsigned code = colon ? (unsigned)strtoul(colon + 1, NULL, 16) : 0;
        start_error(msg, code ? (int)code : EIO, strstr(report, "noexec") != NULL, spec);
        return -1;
    }
    *out_r = out[0];
    *err_r = err[0];
    return 0;
failed:
    msg->n = 0;
    buf_fmt(msg, "[Errno %d] %s", errno, strerror(errno));
    return -1;
}

typedef struct {
    int fd;
    const char *name;
    buf_t partial;
    int open;
} stream_t;

/* Lines of one chunk: each complete line written, the rest kept (capped at READ_SIZE bytes). Only a
 * line cut by a read is copied, and an emptied buffer is let go: in the keeper it is per instance. */
static void take(stream_t *st, log_t *w, const char *chunk, size_t n) {
    int joined = st->partial.n > 0;
    if (joined) buf_add(&st->partial, chunk, n);
    const char *p = joined ? st->partial.p : chunk, *end = p + (joined ? st->partial.n : n), *nl;
    while ((nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        const char *e = nl;
        while (e > p && e[-1] == '\r') e--;
        log_write(w, st->name, p, (size_t)(e - p));
        p = nl + 1;
    }
    size_t rest = (size_t)(end - p);
    if (rest > READ_SIZE) {
        const char *e = end;
        while (e > p && e[-1] == '\r') e--;
        log_write(w, st->name, p, (size_t)(e - p));
        rest = 0;
    }
    if (joined) {
        memmove(st->partial.p, p, rest);
        st->partial.n = rest;
    } else if (rest) {
        buf_add(&st->partial, p, rest);
    }
    if (!st->partial.n && st->partial.cap > 1024) {
        free(st->partial.p);
        st->partial = (buf_t){0};
    }
}

static void json_attempt(buf_t *b, const char *attempt) {
    if (attempt && *attempt) {
        buf_str(b, ", \"attempt\": ");
        json_cstr(b, attempt);
    }
}

static void spec_free(spec_t *spec) {
    for (int i = 0; i < spec->argc; i++) free(spec->argv[i]);
    free(spec->argv);
    free(spec->attempt);
    free(spec->cwd);
    *spec = (spec_t){0};
}

/* -- one instance, as the shim and the keeper run it (in its directory: paths are relative) ------- */
/* What is kept of an instance from its start to its exit record. */
typedef struct {
    pid_t pid;
    int pidfd; /* -1: none (polled with WNOHANG), -2: closed, the end known */
    int status, ended;
    int64_t exited_at, heard_at;
    double started; /* wall seconds when it started (pid.json's "ts") */
    stream_t streams[2];
    log_t w;
    reserved_t exit_record;
} run_t;

enum { PREP_FAILED = -1, PREP_SKIP = 0, PREP_RUN = 1 };

/* Claim `attempt` (NULL: no claim) for `me` and read launch.json into `spec`. PREP_RUN; PREP_SKIP when
 * the attempt was claimed before or launch.json names another (this start is not to run); PREP_FAILED
 * with `why` said. */
static int prepare(const char *attempt, pid_t me, long long my_start, spec_t *spec, buf_t *why) {
    why->n = 0;
    char claim[128];
    if (attempt) {
        /* Claim the attempt (see shim.CLAIM_PREFIX): written aside, then linked in. */
        buf_t rec = {0};
        buf_str(&rec, "{\"attempt\": ");
        json_cstr(&rec, attempt);
        buf_fmt(&rec, ", \"shim_pid\": %d, \"shim_start\": %lld}", (int)me, my_start);
        snprintf(claim, sizeof claim, "claim-%.80s.json", attempt);
        char tmp[160];
        snprintf(tmp, sizeof tmp, "%s.%d.tmp", claim, (int)me);
        int written = write_file(tmp, rec.p, rec.n);
        free(rec.p);
        if (written < 0) {
            buf_fmt(why, "cannot write %s: %s", tmp, strerror(errno));
            return PREP_FAILED;
        }
        int linked = link(tmp, claim);
        int err = errno;
        unlink(tmp);
        if (linked < 0) {
            if (err == EEXIST) return PREP_SKIP;
            buf_fmt(why, "cannot claim %s: %s", claim, strerror(err));
            return PREP_FAILED;
        }
    }
    size_t launch_len;
    char *launch = read_file(LAUNCH_NAME, &launch_len);
    if (!launch) {
        buf_fmt(why, "cannot read %s: %s", LAUNCH_NAME, strerror(errno));
        return PREP_FAILED;
    }
    int parsed = parse_spec(launch, launch_len, spec);
    free(launch);
    if (parsed < 0) {
        buf_fmt(why, "%s: %s", LAUNCH_NAME, spec_error);
        return PREP_FAILED;
    }
    if (attempt && (!spec->attempt || strcmp(spec->attempt, attempt))) {
        /* A later start was asked for: this one is not to run. */
        unlink(claim);
        return PREP_SKIP;
    }
    return PREP_RUN;
}

/* Records reserved, the log opened, the instance started and pid.json written: 1. When it could not
 * start: its line in the log and its exit record (code 127) written, 0. When the log cannot be
 * opened: -1 with `why` said (the shim dies of it). */
static int run_begin(run_t *r, const spec_t *spec, char **envp, const char *attempt, pid_t me, long long my_start,
                     long long *pid_start, buf_t *why) {
    memset(r, 0, sizeof *r);
    r->pidfd = -1;
    unlink(EXIT_NAME);
    unlink(PID_NAME);
    reserved_t pid_record;
    reserve(&r->exit_record, EXIT_NAME);
    reserve(&pid_record, PID_NAME);
    if (log_init(&r->w, spec) < 0) {
        why->n = 0;
        buf_fmt(why, "cannot open %s: %s", LOG_NAME, strerror(errno));
        if (in_keeper) { /* the keeper lives on */
            discard_reserved(&r->exit_record);
            discard_reserved(&pid_record);
        }
        return -1;
    }
    buf_t rec = {0}, msg = {0};
    int out_r = -1, err_r = -1;
    if (spawn(spec, envp, &r->pid, &out_r, &err_r, &msg) < 0) {
        buf_t line = {0};
        buf_str(&line, "runed: cannot start ");
        py_repr(&line, spec->argc ? spec->argv[0] : "");
        buf_fmt(&line, ": %s", msg.p);
        log_write(&r->w, "stderr", line.p, line.n);
        log_close(&r->w);
        discard_reserved(&pid_record);
        buf_fmt(&rec, "{\"code\": 127, \"signal\": null, \"ts\": %.6f, \"error\": ", wall_seconds());
        buf_t error = {0};
        buf_fmt(&error, "cannot start: %s", msg.p);
        json_string(&rec, error.p, error.n > 1024 ? 1024 : error.n);
        json_attempt(&rec, attempt);
        buf_str(&rec, "}");
        commit(&r->exit_record, &rec, 1);
        free(line.p), free(error.p), free(rec.p), free(msg.p);
        r->pid = 0;
        return 0;
    }
    buf_fmt(&rec, "{\"pid\": %d, \"pid_start\": ", (int)r->pid);
    *pid_start = proc_start_time(r->pid);
    if (*pid_start < 0) buf_str(&rec, "null");
    else buf_fmt(&rec, "%lld", *pid_start);
    r->started = wall_seconds();
    buf_fmt(&rec, ", \"shim_pid\": %d, \"shim_start\": %lld, \"ts\": %.6f", (int)me, my_start, r->started);
    json_attempt(&rec, attempt);
    buf_str(&rec, "}");
    commit(&pid_record, &rec, 0);
    free(rec.p), free(msg.p);
    r->streams[0] = (stream_t){out_r, "stdout", {0}, 1};
    r->streams[1] = (stream_t){err_r, "stderr", {0}, 1};
    for (int i = 0; i < 2; i++) fcntl(r->streams[i].fd, F_SETFL, O_NONBLOCK);
    r->pidfd = (int)syscall(SYS_pidfd_open, r->pid, 0); /* close-on-exec by itself */
    return 1;
}

static char *chunk; /* READ_SIZE bytes: one read of any stream */

/* One read of a stream into the log: what read(2) returned. */
static ssize_t stream_read(stream_t *st, log_t *w) {
    ssize_t r = read(st->fd, chunk, READ_SIZE);
    if (r > 0) take(st, w, chunk, (size_t)r);
    return r;
}

/* The instance has ended: milliseconds its output may still be drained (quiet for DRAIN_QUIET_MS,
 * at most DRAIN_MAX_MS in all; a grandchild holding the pipes does not keep its supervisor). */
static int64_t drain_left(const run_t *r, int64_t now) {
    int64_t since = r->heard_at > r->exited_at ? r->heard_at : r->exited_at;
    int64_t quiet = DRAIN_QUIET_MS - (now - since) / 1000000, most = DRAIN_MAX_MS - (now - r->exited_at) / 1000000;
    return quiet < most ? quiet : most;
}

static int group_gone(pid_t pid) { return kill(-pid, 0) < 0 && errno == ESRCH; }

/* The instance's end: what is left of its output logged, then its exit record committed (synced),
 * unless the instance is discarded: its directory goes next, with the reserved file in it, and nobody
 * reads the record (writing a thousand was a quarter of the keeper's time ending a deletion's
 * instances: bench/README.md, "the path to the deleted service"). */
static void run_end(run_t *r, const char *attempt, int discard) {
    for (int i = 0; i < 2; i++) {
        stream_t *st = &r->streams[i];
        if (st->partial.n) log_write(&r->w, st->name, st->partial.p, st->partial.n);
        free(st->partial.p);
        st->partial = (buf_t){0};
        close(st->fd);
        st->fd = -1;
    }
    log_close(&r->w);
    if (discard) {
        if (r->exit_record.fd >= 0) close(r->exit_record.fd);
        r->exit_record.fd = -1;
        return;
    }
    buf_t rec = {0};
    if (WIFSIGNALED(r->status))
        buf_fmt(&rec, "{\"code\": null, \"signal\": %d", WTERMSIG(r->status));
    else
        buf_fmt(&rec, "{\"code\": %d, \"signal\": null", WEXITSTATUS(r->status));
    buf_fmt(&rec, ", \"ts\": %.6f", wall_seconds());
    json_attempt(&rec, attempt);
    buf_str(&rec, "}");
    commit(&r->exit_record, &rec, 1);
    free(rec.p);
}

static int keeper(const char *sock_path, const char *listen_fd);

int main(int argc, char **argv) {
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "--keeper")) return keeper(argv[2], argc == 4 ? argv[3] : NULL);
    if (argc != 2) {
        fprintf(stderr, "usage: rune-shim <instance_dir>\n       rune-shim --keeper <socket_path> [<listening_fd>]\n");
        return 2;
    }
    /* The shim outlives runed; a hang-up or ^C aimed at runed is not for it, nor a SIGTERM sent to
     * every process of runed's unit (systemctl stop): the instance gets its own, shuts down within
     * its grace, and its exit is recorded (SIGKILL ends a shim). SIGURG stays pending. */
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_DFL); /* an ignored SIGCHLD (inherited through exec) would reap the instance unseen */
    sigset_t discard;
    sigemptyset(&discard);
    sigaddset(&discard, DISCARD_SIGNAL);
    sigprocmask(SIG_SETMASK, &discard, NULL);
    prctl(PR_SET_NAME, "rune-shim", 0, 0, 0);
    if (chdir(argv[1]) < 0) die("cannot enter %s: %s", argv[1], strerror(errno));

    const char *attempt = getenv(ENV_PREFIX "ATTEMPT");
    if (attempt && !*attempt) attempt = NULL;
    int report = -1;
    const char *report_env = getenv(ENV_PREFIX "REPORT_FD");
    if (report_env && *report_env) report = atoi(report_env);
    if (report >= 0) fcntl(report, F_SETFD, FD_CLOEXEC);
    /* The instance's environment: this process's own, less what tells the shim about itself. */
    extern char **environ;
    size_t nenv = 0;
    for (char **e = environ; *e; e++) nenv++;
    char **envp = calloc(nenv + 1, sizeof(char *));
    if (!envp) die("out of memory");
    size_t k = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, ENV_PREFIX, sizeof ENV_PREFIX - 1)) envp[k++] = *e;

    pid_t me = getpid();
    long long my_start = proc_start_time(me), pid_start;
    spec_t spec = {0};
    buf_t why = {0};
    int prepared = prepare(attempt, me, my_start, &spec, &why);
    if (prepared == PREP_FAILED) die("%s", why.p);
    if (prepared == PREP_SKIP) {
        report_start(report);
        return 0;
    }
    run_t run;
    int begun = run_begin(&run, &spec, envp, attempt, me, my_start, &pid_start, &why);
    if (begun < 0) die("%s", why.p);
    report_start(report);
    if (!begun) return 0;

    stream_t *streams = run.streams;
    chunk = malloc(READ_SIZE);
    if (!chunk) die("out of memory");
    while (streams[0].open || streams[1].open) {
        if (!run.ended && run.pidfd < 0 && waitpid(run.pid, &run.status, WNOHANG) == run.pid)
            run.ended = 1, run.exited_at = mono_ns();
        int timeout = run.pidfd >= 0 && !run.ended ? -1 : POLL_MS;
        if (run.ended) {
            /* What the instance left in the pipes is read to the end, but a grandchild holding them
             * open does not keep the shim: quiet for a moment, or a bounded drain, ends it. */
            int64_t left = drain_left(&run, mono_ns());
            if (left <= 0) break;
            timeout = (int)left + 1;
        }
        struct pollfd fds[3];
        int nfds = 0;
        for (int i = 0; i < 2; i++)
            if (streams[i].open) fds[nfds++] = (struct pollfd){streams[i].fd, POLLIN, 0};
        int with_pidfd = run.pidfd >= 0 && !run.ended;
        if (with_pidfd) fds[nfds++] = (struct pollfd){run.pidfd, POLLIN, 0};
        int n = poll(fds, (nfds_t)nfds, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("poll: %s", strerror(errno));
        }
        for (int f = 0; f < nfds; f++) {
            if (!fds[f].revents) continue;
            if (with_pidfd && fds[f].fd == run.pidfd) {
                while (waitpid(run.pid, &run.status, 0) < 0 && errno == EINTR) {
                }
                run.ended = 1;
                run.exited_at = mono_ns();
                close(run.pidfd);
                run.pidfd = -2; /* the end is known */
                continue;
            }
            stream_t *st = fds[f].fd == streams[0].fd ? &streams[0] : &streams[1];
            run.heard_at = mono_ns();
            if (stream_read(st, &run.w) == 0) st->open = 0;
        }
    }
    if (!run.ended)
        while (waitpid(run.pid, &run.status, 0) < 0 && errno == EINTR) {
        }
    if (run.pidfd >= 0) close(run.pidfd);
    /* Children the instance left behind in its group end with it, as in a container. */
    kill(-run.pid, SIGKILL);
    /* ... and before the exit record, which a restart follows: one still dying (tearing down its
     * memory) may still hold a port. Their end closes the output they inherited; what they write
     * meanwhile is kept; output held only outside the group (a daemon in a session of its own)
     * does not hold the shim once the group is empty. Bounded: one stuck in the kernel does not. */
    int64_t until = mono_ns() + GROUP_END_MS * 1000000LL;
    while ((streams[0].open || streams[1].open) && !group_gone(run.pid)) {
        int64_t left = (until - mono_ns()) / 1000000;
        if (left <= 0) break;
        if (left > GROUP_LOOK_MS) left = GROUP_LOOK_MS;
        struct pollfd fds[2];
        stream_t *of[2];
        int nfds = 0;
        for (int i = 0; i < 2; i++)
            if (streams[i].open) of[nfds] = &streams[i], fds[nfds++] = (struct pollfd){streams[i].fd, POLLIN, 0};
        if (poll(fds, (nfds_t)nfds, (int)left + 1) < 0 && errno != EINTR) break;
        for (int f = 0; f < nfds; f++) {
            if (!fds[f].revents) continue;
            ssize_t r = stream_read(of[f], &run.w);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) of[f]->open = 0;
        }
    }
    run_end(&run, attempt, discarded());
    return 0;
}

/* -- the keeper: many instances in one process ----------------------------------------------------- */
#define KEEPER_WAIT_NS (10LL * 1000000000LL) /* how long a keeper nobody connected to stays */
#define ACCEPT_PAUSE_MS 100 /* how long a keeper out of descriptors stops accepting */
/* How long after its end a discarded instance is reaped and its files closed: its end pipe closed
 * at once (the controller goes on), the rest of its work waits until the deletion's own is done.
 * Why: reaping a thousand processes and closing their six thousand descriptors took 20-25 ms of the
 * keeper's CPU right when the controller finished the deletion and committed it, each slowing the
 * other on two cores (traced; bench/README.md, "a deletion's remains, collected later"). */
#define DISCARD_REAP_DELAY_MS 250
#define MAX_MESSAGE (64u << 20)
#define TAG_CONN 3 /* epoll data: a pointer | tag; tags 0, 1 (the streams) and 2 (pidfd) are an instance's */

typedef struct inst {
    run_t run;
    struct inst *prev, *next, *hnext; /* hnext: the next in its bucket of K.by_dir */
    struct inst *tprev, *tnext;       /* in K.timed while due is set (set_due) */
    char *dir, *attempt;
    long long pid_start;
    int64_t due, until; /* when to look again (0: on an event only); the end of the group's wait */
    int dirfd, done_r, done_w;
    unsigned char grouping, discard, gone, deferred; /* deferred: 1 waiting (DISCARD_REAP_DELAY_MS), 2 over */
} inst_t;

typedef struct reply {
    struct reply *next;
    size_t n, off;
    int fd; /* sent with the reply's first byte, then closed */
    char data[];
} reply_t;

typedef struct conn {
    struct conn *prev, *next;
    buf_t in;
    uint64_t skip; /* bytes of an oversized message still to drop */
    reply_t *out, *out_tail;
    int fd, polling_out;
} conn_t;

static struct {
    int ep, home;
    int exits; /* the pidfds of discarded instances still running, each reported once (discarded_ended) */
    pid_t me;
    long long start;
    inst_t *insts, *dead_insts;
    inst_t *timed; /* the instances with a time to look again (due): the loop's look at times walks these */
    conn_t *conns, *dead_conns;
    size_t ninst, nconn;
    inst_t **by_dir; /* the instances by directory: a batch of a thousand looked up in O(1) each */
    size_t nbuckets;
    int64_t listen_at; /* accepting again then (0: accepting) */
    int accept_failing; /* said so, until an accept succeeds */
} K;

static size_t dir_hash(const char *dir) {
    size_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)dir; *p; p++) h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static void by_dir_add(inst_t *in) {
    if (K.ninst + 1 > K.nbuckets) { /* grown to keep a bucket about one long */
        size_t n = K.nbuckets ? K.nbuckets * 2 : 64;
        inst_t **tab = calloc(n, sizeof *tab);
        if (!tab) die("out of memory");
        for (size_t b = 0; b < K.nbuckets; b++)
            for (inst_t *x = K.by_dir[b], *nx; x; x = nx) {
                nx = x->hnext;
                size_t i = dir_hash(x->dir) & (n - 1);
                x->hnext = tab[i];
                tab[i] = x;
            }
        free(K.by_dir);
        K.by_dir = tab;
        K.nbuckets = n;
    }
    size_t i = dir_hash(in->dir) & (K.nbuckets - 1);
    in->hnext = K.by_dir[i];
    K.by_dir[i] = in;
}

static void by_dir_remove(inst_t *in) {
    for (inst_t **at = &K.by_dir[dir_hash(in->dir) & (K.nbuckets - 1)]; *at; at = &(*at)->hnext)
        if (*at == in) {
            *at = in->hnext;
            return;
        }
}

static void *xcalloc(size_t n) {
    void *p = calloc(1, n);
    if (!p) die("out of memory");
    return p;
}

static void ep_set(int op, int fd, uint64_t data, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u64 = data};
    if (epoll_ctl(K.ep, op, fd, &ev) < 0 && op != EPOLL_CTL_DEL)
        fprintf(stderr, "rune-keeper: epoll_ctl: %s\n", strerror(errno));
}

/* -- connections -- */
static void conn_close(conn_t *c) {
    if (c->fd < 0) return;
    ep_set(EPOLL_CTL_DEL, c->fd, 0, 0);
    close(c->fd);
    c->fd = -1;
    for (reply_t *q = c->out, *next; q; q = next) {
        next = q->next;
        if (q->fd >= 0) close(q->fd);
        free(q);
    }
    c->out = c->out_tail = NULL;
    if (c->prev) c->prev->next = c->next;
    else K.conns = c->next;
    if (c->next) c->next->prev = c->prev;
    K.nconn--;
    c->next = K.dead_conns; /* freed after the events at hand, which may name it */
    K.dead_conns = c;
}

static void conn_flush(conn_t *c) {
    while (c->fd >= 0 && c->out) {
        reply_t *q = c->out;
        struct iovec iov = {q->data + q->off, q->n - q->off};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } u;
        if (q->fd >= 0) {
            memset(&u, 0, sizeof u);
            mh.msg_control = u.buf;
            mh.msg_controllen = sizeof u.buf;
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &q->fd, sizeof(int));
        }
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->polling_out) ep_set(EPOLL_CTL_MOD, c->fd, (uint64_t)(uintptr_t)c | TAG_CONN, EPOLLIN | EPOLLOUT);
                c->polling_out = 1;
                return;
            }
            conn_close(c);
            return;
        }
        if (q->fd >= 0) close(q->fd), q->fd = -1;
        q->off += (size_t)w;
        if (q->off == q->n) {
            c->out = q->next;
            if (!c->out) c->out_tail = NULL;
            free(q);
        }
    }
    if (c->fd >= 0 && c->polling_out) {
        ep_set(EPOLL_CTL_MOD, c->fd, (uint64_t)(uintptr_t)c | TAG_CONN, EPOLLIN);
        c->polling_out = 0;
    }
}

/* A reply (a JSON object's text) to `c`, with `fd` (owned from now on; -1: none). */
static void conn_reply(conn_t *c, const buf_t *body, int fd) {
    if (c->fd < 0) {
        if (fd >= 0) close(fd);
        return;
    }
    reply_t *q = malloc(sizeof *q + 4 + body->n);
    if (!q) die("out of memory");
    q->next = NULL;
    q->n = 4 + body->n;
    q->off = 0;
    q->fd = fd;
    uint32_t len = (uint32_t)body->n;
    q->data[0] = (char)(len >> 24), q->data[1] = (char)(len >> 16), q->data[2] = (char)(len >> 8), q->data[3] = (char)len;
    memcpy(q->data + 4, body->p, body->n);
    if (c->out_tail) c->out_tail->next = q;
    else c->out = q;
    c->out_tail = q;
    conn_flush(c);
}

static void reply_error(conn_t *c, const char *why) {
    buf_t b = {0};
    buf_str(&b, "{\"error\": ");
    json_cstr(&b, why);
    buf_str(&b, "}");
    conn_reply(c, &b, -1);
    free(b.p);
}

static void reply_text(conn_t *c, const char *text) {
    buf_t b = {(char *)text, strlen(text), 0};
    conn_reply(c, &b, -1);
}

/* -- instances -- */
/* When to look at ``in`` again (0: on an event only), kept in K.timed. Why: the loop looked at every
 * instance twice per wake-up for the next time due, and a thousand instances writing ten lines a
 * second each woke it thousands of times a second: that walk was a quarter of the keeper's CPU
 * (perf; bench/README.md, "the keeper's look at times"). Most instances have no time due. */
static void set_due(inst_t *in, int64_t due) {
    if (due && !in->due) {
        in->tprev = NULL;
        in->tnext = K.timed;
        if (K.timed) K.timed->tprev = in;
        K.timed = in;
    } else if (!due && in->due) {
        if (in->tprev) in->tprev->tnext = in->tnext;
        else K.timed = in->tnext;
        if (in->tnext) in->tnext->tprev = in->tprev;
        in->tprev = in->tnext = NULL;
    }
    in->due = due;
}

static void inst_stream_closed(inst_t *in, int i) {
    in->run.streams[i].open = 0;
    ep_set(EPOLL_CTL_DEL, in->run.streams[i].fd, 0, 0);
}

/* A discarded instance's end pipe closes once its process has ended, not once it is finished: no
 * exit record is written for it and its directory goes next, so its stop waits for nothing more than
 * the process. What its group left (holding its output open, say) is killed first: the deletion is
 * over for them too, and the drain then ends at once. Why: a deletion's stops waited on a pidfd of
 * each process instead, opened, checked and closed by the controller while its processes were ending
 * (bench/README.md, "a deleted instance's end from its keeper"); the group's kill was the
 * controller's, one system call per instance after the last process had ended (bench/README.md, "the
 * tail of a deletion"). The group's id is the instance's: not reaped (discarded_ended), or
 * reaped just now (inst_exited), and a group keeps its id while any member lives. */
static void inst_end_discarded(inst_t *in) {
    kill(-in->run.pid, SIGKILL);
    close(in->done_w);
    in->done_w = -1;
}

/* Whether a discarded instance's end is told (its end pipe closed by inst_end_discarded): what is
 * left of it is its keeper's alone (its group's kill done, its reaping due or done). */
static int end_told(const inst_t *in) { return in->discard && in->done_w < 0; }

static void inst_ended_discarded(inst_t *in) {
    if (in->discard && in->run.ended && in->done_w >= 0) inst_end_discarded(in);
}

/* Discard ``in``: its end pipe closes once its process has ended, told by its pidfd in K.exits
 * (looked at between the other work: discarded_ended), or now if it has ended already. */
static void inst_discard(inst_t *in) {
    in->discard = 1;
    if (in->run.ended || in->run.pidfd < 0) {
        inst_ended_discarded(in); /* without a pidfd: once it is reaped (inst_step) */
        return;
    }
    /* Should this fail, its end pipe closes when it is reaped (inst_exited). */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = (uint64_t)(uintptr_t)in};
    if (in->done_w >= 0) (void)epoll_ctl(K.exits, EPOLL_CTL_ADD, in->run.pidfd, &ev);
}

/* Close the end pipe of every discarded instance whose process has ended since the last look: a
 * deletion's stops wait for nothing more, and reaping a thousand (wait4, the drain, the group's end,
 * as long again as their kill) would otherwise come first, their ends waiting behind it. */
static void discarded_ended(void) {
    struct epoll_event ev[1024];
    int n;
    do {
        n = epoll_wait(K.exits, ev, 1024, 0);
        for (int i = 0; i < n; i++) {
            inst_t *in = (inst_t *)(uintptr_t)ev[i].data.u64;
            if (!in->gone && in->done_w >= 0) inst_end_discarded(in);
        }
    } while (n == 1024);
}

/* The exit record committed: only then the end of the pipe the clients wait on closes. */
static void inst_finish(inst_t *in) {
    run_t *r = &in->run;
    for (int i = 0; i < 2; i++)
        if (r->streams[i].open) inst_stream_closed(in, i);
    if (r->pidfd >= 0) {
        ep_set(EPOLL_CTL_DEL, r->pidfd, 0, 0);
        close(r->pidfd);
        r->pidfd = -2;
    }
    run_end(r, in->attempt, in->discard);
    set_due(in, 0);
    if (in->done_w >= 0) close(in->done_w);
    close(in->done_r);
    close(in->dirfd);
    if (in->prev) in->prev->next = in->next;
    else K.insts = in->next;
    if (in->next) in->next->prev = in->prev;
    by_dir_remove(in);
    K.ninst--;
    in->gone = 1;
    in->next = K.dead_insts; /* freed after the events at hand, which may name it */
    K.dead_insts = in;
}

/* The single main's loop as a state: what to do now, and when to look again (in->due). */
static void inst_step(inst_t *in, int64_t now) {
    run_t *r = &in->run;
    int open = r->streams[0].open || r->streams[1].open;
    if (in->deferred == 1) return; /* reaped at its time (inst_exited), whatever its streams do meanwhile */
    set_due(in, 0);
    if (!in->grouping) {
        if (!r->ended && r->pidfd < 0 && waitpid(r->pid, &r->status, WNOHANG) == r->pid) {
            r->ended = 1, r->exited_at = now;
            inst_ended_discarded(in);
        }
        if (!r->ended) {
            if (r->pidfd < 0) set_due(in, now + POLL_MS * 1000000LL);
            return;
        }
        if (open) {
            int64_t left = drain_left(r, now);
            if (left > 0) {
                set_due(in, now + left * 1000000LL);
                return;
            }
        }
        /* A discarded instance's group was killed with its end (inst_end_discarded). */
        if (!end_told(in)) kill(-r->pid, SIGKILL);
        in->grouping = 1;
        in->until = now + GROUP_END_MS * 1000000LL;
    }
    if (!open || now >= in->until || group_gone(r->pid)) {
        inst_finish(in);
        return;
    }
    int64_t look = now + GROUP_LOOK_MS * 1000000LL;
    set_due(in, look < in->until ? look : in->until);
}

static void inst_stream_ready(inst_t *in, int i) {
    stream_t *st = &in->run.streams[i];
    if (in->gone || !st->open) return;
    if (fchdir(in->dirfd) < 0) return;
    int64_t now = mono_ns();
    ssize_t r;
    if (!in->grouping) {
        in->run.heard_at = now;
        if ((r = stream_read(st, &in->run.w)) == 0) inst_stream_closed(in, i);
    } else if ((r = stream_read(st, &in->run.w)) == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        inst_stream_closed(in, i);
    }
    inst_step(in, now);
}

static void inst_exited(inst_t *in) {
    run_t *r = &in->run;
    if (in->gone || r->pidfd < 0) return;
    if (end_told(in) && !in->deferred) {
        /* Its end is told already (inst_end_discarded): reaped later, off the deletion's path. */
        in->deferred = 1;
        ep_set(EPOLL_CTL_DEL, r->pidfd, 0, 0);
        set_due(in, mono_ns() + DISCARD_REAP_DELAY_MS * 1000000LL);
        return;
    }
    while (waitpid(r->pid, &r->status, 0) < 0 && errno == EINTR) {
    }
    r->ended = 1;
    r->exited_at = mono_ns();
    inst_ended_discarded(in);
    ep_set(EPOLL_CTL_DEL, r->pidfd, 0, 0);
    close(r->pidfd);
    r->pidfd = -2;
    if (fchdir(in->dirfd) == 0) inst_step(in, r->exited_at);
}

/* -- requests -- */
typedef struct {
    char *op, *dir, *attempt;
    char **env; /* "NAME=VALUE", NULL-terminated */
    size_t nenv;
    char **dirs; /* "signal": the instances' directories */
    size_t ndirs;
    long long signal;
    int discard;
} req_t;

static void req_free(req_t *q) {
    for (size_t i = 0; i < q->nenv; i++) {
        explicit_bzero(q->env[i], strlen(q->env[i]));
        free(q->env[i]);
    }
    free(q->env);
    for (size_t i = 0; i < q->ndirs; i++) free(q->dirs[i]);
    free(q->dirs);
    free(q->op), free(q->dir), free(q->attempt);
}

/* A JSON array of strings into q->dirs. */
static int scan_dirs(scan_t *s, req_t *q) {
    skip_ws(s);
    if (s->p >= s->end || *s->p++ != '[') return -1;
    skip_ws(s);
    if (s->p < s->end && *s->p == ']') return s->p++, 0;
    for (;;) {
        skip_ws(s);
        char *dir = scan_string(s);
        if (!dir) return -1;
        q->dirs = realloc(q->dirs, sizeof(char *) * (q->ndirs + 1));
        if (!q->dirs) die("out of memory");
        q->dirs[q->ndirs++] = dir;
        skip_ws(s);
        if (s->p >= s->end) return -1;
        if (*s->p == ',') {
            s->p++;
            continue;
        }
        return *s->p++ == ']' ? 0 : -1;
    }
}

static int scan_bool(scan_t *s, int *out) {
    skip_ws(s);
    if (s->end - s->p >= 4 && !strncmp(s->p, "true", 4)) return *out = 1, s->p += 4, 0;
    if (s->end - s->p >= 5 && !strncmp(s->p, "false", 5)) return *out = 0, s->p += 5, 0;
    return -1;
}

static int scan_env(scan_t *s, req_t *q) {
    skip_ws(s);
    if (s->end - s->p >= 4 && !strncmp(s->p, "null", 4)) return s->p += 4, 0;
    if (s->p >= s->end || *s->p++ != '{') return -1;
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') return s->p++, 0;
    for (;;) {
        skip_ws(s);
        char *name = scan_string(s);
        if (!name) return -1;
        skip_ws(s);
        char *value = s->p < s->end && *s->p++ == ':' ? (skip_ws(s), scan_string(s)) : NULL;
        if (!value) return free(name), -1;
        q->env = realloc(q->env, sizeof(char *) * (q->nenv + 2));
        if (!q->env) die("out of memory");
        size_t nl = strlen(name), vl = strlen(value);
        char *pair = malloc(nl + vl + 2);
        if (!pair) die("out of memory");
        memcpy(pair, name, nl);
        pair[nl] = '=';
        memcpy(pair + nl + 1, value, vl + 1);
        explicit_bzero(value, vl);
        free(name), free(value);
        q->env[q->nenv++] = pair;
        q->env[q->nenv] = NULL;
        skip_ws(s);
        if (s->p >= s->end) return -1;
        if (*s->p == ',') {
            s->p++;
            continue;
        }
        return *s->p++ == '}' ? 0 : -1;
    }
}

/* NULL, or what is wrong with the request. */
static const char *parse_request(const char *text, size_t n, req_t *q) {
    static char why[128];
    scan_t s = {text, text + n};
    skip_ws(&s);
    if (s.p >= s.end || *s.p++ != '{') return "malformed JSON: not an object";
    skip_ws(&s);
    if (s.p < s.end && *s.p == '}') {
        s.p++;
    } else {
        for (;;) {
            skip_ws(&s);
            char *key = scan_string(&s);
            if (!key) return "malformed JSON: a key is not a string";
            skip_ws(&s);
            if (s.p >= s.end || *s.p++ != ':') return free(key), "malformed JSON: no ':' after a key";
            skip_ws(&s);
            char **field = !strcmp(key, "op") ? &q->op : !strcmp(key, "dir") ? &q->dir : !strcmp(key, "attempt") ? &q->attempt : NULL;
            int rc = 0;
            if (field) {
                char *v = scan_string(&s);
                if (v) free(*field), *field = v;
                else snprintf(why, sizeof why, "%s: not a string", key), rc = -2;
            } else if (!strcmp(key, "env")) {
                if (scan_env(&s, q) < 0) snprintf(why, sizeof why, "env: not an object of strings"), rc = -2;
            } else if (!strcmp(key, "dirs")) {
                if (scan_dirs(&s, q) < 0) snprintf(why, sizeof why, "dirs: not an array of strings"), rc = -2;
            } else if (!strcmp(key, "signal")) {
                skip_ws(&s);
                if (scan_number(&s, &q->signal) < 0 || q->signal < 0 || q->signal >= NSIG)
                    snprintf(why, sizeof why, "signal: not a signal number"), rc = -2;
            } else if (!strcmp(key, "discard")) {
                if (scan_bool(&s, &q->discard) < 0) snprintf(why, sizeof why, "discard: not true or false"), rc = -2;
            } else {
                rc = scan_skip(&s);
            }
            free(key);
            if (rc == -2) return why;
            if (rc < 0) return "malformed JSON";
            skip_ws(&s);
            if (s.p >= s.end) return "malformed JSON: cut short";
            if (*s.p == ',') {
                s.p++;
                continue;
            }
            if (*s.p++ != '}') return "malformed JSON";
            break;
        }
    }
    skip_ws(&s);
    if (s.p != s.end) return "malformed JSON: text after the object";
    if (!q->op) return "no op";
    return NULL;
}

static inst_t *find(const char *dir, const char *attempt) {
    if (!K.nbuckets) return NULL;
    for (inst_t *in = K.by_dir[dir_hash(dir) & (K.nbuckets - 1)]; in; in = in->hnext)
        if (!strcmp(in->dir, dir) && (!attempt || !strcmp(in->attempt, attempt))) return in;
    return NULL;
}

static void reply_pid(conn_t *c, inst_t *in) {
    buf_t b = {0};
    buf_fmt(&b, "{\"pid\": %d, \"pid_start\": ", (int)in->run.pid);
    if (in->pid_start < 0) buf_str(&b, "null");
    else buf_fmt(&b, "%lld", in->pid_start);
    buf_fmt(&b, ", \"ts\": %.6f}", in->run.started);
    int fd = fcntl(in->done_r, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) reply_error(c, "cannot duplicate the end's pipe");
    else conn_reply(c, &b, fd);
    free(b.p);
}

static void op_start(conn_t *c, req_t *q) {
    const char *a = q->attempt;
    if (!q->dir || q->dir[0] != '/') return reply_error(c, "start: dir must be an absolute path");
    if (!a || !*a || strlen(a) > 80 || strchr(a, '/')) return reply_error(c, "start: attempt must be a name of 1 to 80 characters");
    buf_t why = {0};
    int dirfd = open(q->dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0 || fchdir(dirfd) < 0) {
        buf_fmt(&why, "cannot enter %s: %s", q->dir, strerror(errno));
        reply_error(c, why.p);
        if (dirfd >= 0) close(dirfd);
        return free(why.p);
    }
    spec_t spec = {0};
    int done[2] = {-1, -1};
    inst_t *in = NULL;
    int prepared = prepare(a, K.me, K.start, &spec, &why);
    if (prepared == PREP_SKIP) {
        reply_text(c, "{\"claimed\": false}");
        goto out;
    }
    if (prepared == PREP_RUN && pipe2(done, O_CLOEXEC) < 0) {
        buf_fmt(&why, "cannot make a pipe: %s", strerror(errno));
        prepared = PREP_FAILED;
    }
    if (prepared == PREP_FAILED) {
        note_err(why.p);
        reply_error(c, why.p);
        goto out;
    }
    in = xcalloc(sizeof *in);
    char *none[] = {NULL};
    int begun = run_begin(&in->run, &spec, q->env ? q->env : none, a, K.me, K.start, &in->pid_start, &why);
    if (begun < 0) {
        note_err(why.p);
        reply_error(c, why.p);
        goto out;
    }
    if (!begun) {
        reply_text(c, "{\"pid\": 0, \"ended\": true}");
        goto out;
    }
    in->dirfd = dirfd, in->done_r = done[0], in->done_w = done[1];
    dirfd = done[0] = done[1] = -1;
    in->dir = strdup(q->dir);
    in->attempt = strdup(a);
    if (!in->dir || !in->attempt) die("out of memory");
    for (int i = 0; i < 2; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(uintptr_t)in | (uint64_t)i};
        if (epoll_ctl(K.ep, EPOLL_CTL_ADD, in->run.streams[i].fd, &ev) < 0) in->run.streams[i].open = 0; /* unread */
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(uintptr_t)in | 2};
    if (in->run.pidfd >= 0 && epoll_ctl(K.ep, EPOLL_CTL_ADD, in->run.pidfd, &ev) < 0) {
        close(in->run.pidfd);
        in->run.pidfd = -1; /* looked for every POLL_MS */
    }
    in->next = K.insts;
    if (K.insts) K.insts->prev = in;
    K.insts = in;
    by_dir_add(in);
    K.ninst++;
    reply_pid(c, in);
    inst_step(in, mono_ns());
    in = NULL;
out:
    free(in);
    if (dirfd >= 0) close(dirfd);
    if (done[0] >= 0) close(done[0]), close(done[1]);
    spec_free(&spec);
    free(why.p);
}

static void handle(conn_t *c, const char *body, size_t n) {
    req_t q = {0};
    const char *bad = parse_request(body, n, &q);
    if (bad) {
        reply_error(c, bad);
    } else if (!strcmp(q.op, "start")) {
        op_start(c, &q);
    } else if (!strcmp(q.op, "watch")) {
        inst_t *in = q.dir && q.attempt ? find(q.dir, q.attempt) : NULL;
        /* A discarded instance whose end was told is gone to a watcher: only its reaping is left. */
        if (in && !end_told(in)) reply_pid(c, in);
        else reply_text(c, "{\"gone\": true}");
    } else if (!strcmp(q.op, "discard")) {
        inst_t *in = q.dir ? find(q.dir, NULL) : NULL;
        if (in) inst_discard(in);
    } else if (!strcmp(q.op, "signal")) {
        /* A stop of many at once (a deletion): one message, not one per instance. Only a process
         * not reaped yet is signalled: its pid (and group) cannot have been reused. */
        for (size_t i = 0; i < q.ndirs; i++) {
            inst_t *in = find(q.dirs[i], NULL);
            if (!in) continue;
            if (q.discard && !in->discard) inst_discard(in);
            if (!in->run.ended && q.signal && kill(-in->run.pid, (int)q.signal) < 0 && errno == ESRCH)
                kill(in->run.pid, (int)q.signal);
        }
    } else if (!strcmp(q.op, "ping")) {
        buf_t b = {0};
        size_t live = 0;
        for (inst_t *in = K.insts; in; in = in->next) live += !in->run.ended && !in->discard;
        buf_fmt(&b, "{\"pid\": %d, \"start\": %lld, \"instances\": %zu, \"live\": %zu}", (int)K.me, K.start,
                K.ninst, live);
        conn_reply(c, &b, -1);
        free(b.p);
    } else {
        buf_t b = {0};
        buf_str(&b, "unknown op: ");
        json_cstr(&b, q.op);
        reply_error(c, b.p);
        free(b.p);
    }
    req_free(&q);
}

static void conn_ready(conn_t *c, uint32_t events) {
    if (c->fd < 0) return;
    if (events & EPOLLOUT) conn_flush(c);
    if (c->fd < 0 || !(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    buf_grow(&c->in, READ_SIZE);
    ssize_t r = read(c->fd, c->in.p + c->in.n, READ_SIZE);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) { /* gone (a message cut short with it is dropped) */
        conn_close(c);
        return;
    }
    c->in.n += (size_t)r;
    size_t at = 0;
    while (c->fd >= 0) {
        size_t have = c->in.n - at;
        if (c->skip) {
            size_t k = have < c->skip ? have : (size_t)c->skip;
            at += k;
            c->skip -= k;
            if (c->skip) break;
            continue;
        }
        if (have < 4) break;
        const unsigned char *h = (const unsigned char *)c->in.p + at;
        uint32_t size = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        if (size > MAX_MESSAGE) {
            char why[96];
            snprintf(why, sizeof why, "message of %u bytes: more than %u", size, MAX_MESSAGE);
            reply_error(c, why);
            at += 4;
            c->skip = size;
            continue;
        }
        if (have - 4 < size) break;
        handle(c, c->in.p + at + 4, size);
        explicit_bzero(c->in.p + at + 4, size); /* a start's environment */
        at += 4 + size;
    }
    memmove(c->in.p, c->in.p + at, c->in.n - at);
    c->in.n -= at;
    if (!c->in.n && c->in.cap > 4 * READ_SIZE) {
        free(c->in.p);
        c->in = (buf_t){0};
    }
}

static void reap_dead(void) {
    while (K.dead_insts) {
        inst_t *in = K.dead_insts;
        K.dead_insts = in->next;
        free(in->dir), free(in->attempt), free(in);
    }
    while (K.dead_conns) {
        conn_t *c = K.dead_conns;
        K.dead_conns = c->next;
        free(c->in.p), free(c);
    }
}

static int keeper(const char *sock_path, const char *listen_fd) {
    in_keeper = 1;
    spawner = getpid();
    /* As a shim: a SIGTERM meant for runed's unit is not for the keeper, whose death would end every
     * instance at once (they die with it) without their grace period. */
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGURG, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        child_nofile = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    prctl(PR_SET_NAME, "rune-keeper", 0, 0, 0);
    K.me = getpid();
    K.start = proc_start_time(K.me);
    chunk = malloc(READ_SIZE);
    if (!chunk) die("out of memory");
    /* Where it was started: the socket's path may be relative, and instances' work moves the cwd. */
    K.home = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(sock_path) >= sizeof addr.sun_path) {
        fprintf(stderr, "rune-keeper: socket path too long: %s\n", sock_path);
        return 2;
    }
    strcpy(addr.sun_path, sock_path);
    struct stat mine;
    int lfd;
    if (listen_fd) {
        /* Bound and listening already (its starter connects at once, without waiting for this
         * process to listen): taken as it is, made close-on-exec and non-blocking here. */
        char *end;
        long n = strtol(listen_fd, &end, 10);
        lfd = !*listen_fd || *end || n < 0 || n > INT32_MAX ? -1 : (int)n;
        if (lfd < 0 || fcntl(lfd, F_SETFD, FD_CLOEXEC) < 0 || fcntl(lfd, F_SETFL, O_NONBLOCK) < 0 ||
            stat(sock_path, &mine) < 0) {
            fprintf(stderr, "rune-keeper: cannot listen on %s (descriptor %s): %s\n", sock_path, listen_fd,
                    lfd < 0 ? "not a descriptor" : strerror(errno));
            return 1;
        }
    } else {
        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        unlink(sock_path);
        mode_t mask = umask(0177);
        int bound = lfd >= 0 ? bind(lfd, (struct sockaddr *)&addr, sizeof addr) : -1;
        umask(mask);
        if (bound < 0 || chmod(sock_path, 0600) < 0 || stat(sock_path, &mine) < 0 || listen(lfd, SOMAXCONN) < 0) {
            fprintf(stderr, "rune-keeper: cannot listen on %s: %s\n", sock_path, strerror(errno));
            return 1;
        }
    }
    K.ep = epoll_create1(EPOLL_CLOEXEC);
    K.exits = epoll_create1(EPOLL_CLOEXEC);
    if (K.ep < 0 || K.exits < 0) {
        fprintf(stderr, "rune-keeper: epoll: %s\n", strerror(errno));
        return 1;
    }
    ep_set(EPOLL_CTL_ADD, lfd, 0, EPOLLIN);
    int64_t born = mono_ns();
    int served = 0;
    struct epoll_event events[256];
    for (;;) {
        int64_t now = mono_ns();
        if (!K.ninst && !K.nconn && (served || now - born >= KEEPER_WAIT_NS)) break;
        int64_t next = served ? 0 : born + KEEPER_WAIT_NS;
        for (inst_t *in = K.timed; in; in = in->tnext)
            if (!next || in->due < next) next = in->due;
        if (K.listen_at && (!next || K.listen_at < next)) next = K.listen_at;
        int timeout = -1;
        if (next) timeout = next <= now ? 0 : (int)((next - now + 999999) / 1000000);
        int n = epoll_wait(K.ep, events, (int)(sizeof events / sizeof events[0]), timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "rune-keeper: epoll_wait: %s\n", strerror(errno));
            break;
        }
        for (int e = 0; e < n; e++) {
            if (e % 32 == 0) discarded_ended();
            uint64_t data = events[e].data.u64;
            if (!data) { /* the listening socket */
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
                    conn_t *c = xcalloc(sizeof *c);
                    c->fd = fd;
                    c->next = K.conns;
                    if (K.conns) K.conns->prev = c;
                    K.conns = c;
                    K.nconn++;
                    served = 1;
                    K.accept_failing = 0;
                    ep_set(EPOLL_CTL_ADD, fd, (uint64_t)(uintptr_t)c | TAG_CONN, EPOLLIN);
                }
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
                    /* Out of descriptors (or memory): the connection stays queued, and the socket
                     * readable. Accepting again at once would spin: not listening for a while. */
                    if (!K.accept_failing)
                        fprintf(stderr, "rune-keeper: cannot accept a connection: %s; trying again every %d ms\n",
                                strerror(errno), ACCEPT_PAUSE_MS);
                    K.accept_failing = 1;
                    ep_set(EPOLL_CTL_DEL, lfd, 0, 0);
                    K.listen_at = mono_ns() + ACCEPT_PAUSE_MS * 1000000LL;
                }
                continue;
            }
            int tag = (int)(data & 3);
            void *p = (void *)(uintptr_t)(data & ~(uint64_t)3);
            if (tag == TAG_CONN) conn_ready(p, events[e].events);
            else if (tag == 2) inst_exited(p);
            else inst_stream_ready(p, tag);
        }
        now = mono_ns();
        for (inst_t *in = K.timed, *next_in; in; in = next_in) {
            next_in = in->tnext; /* a step may end it, or take it out of K.timed */
            if (in->due > now) continue;
            if (in->deferred == 1) {
                in->deferred = 2;
                set_due(in, 0);
                inst_exited(in);
            } else if (fchdir(in->dirfd) == 0) {
                inst_step(in, now);
            }
        }
        if (K.listen_at && K.listen_at <= now) {
            K.listen_at = 0;
            ep_set(EPOLL_CTL_ADD, lfd, 0, EPOLLIN);
        }
        reap_dead();
    }
    /* Its socket goes with it, unless another keeper has taken the path since. */
    struct stat there;
    if (fstatat(K.home, sock_path, &there, 0) == 0 && there.st_dev == mine.st_dev && there.st_ino == mine.st_ino)
        unlinkat(K.home, sock_path, 0);
    return 0;
}
