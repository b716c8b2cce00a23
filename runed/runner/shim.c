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
 * floor), and records how it ended in exit.json (synced unless SIGURG, the deletion signal, is
 * pending). Lines are decoded as Python's decode("utf-8", "replace") does and escaped as its
 * json.dumps(ensure_ascii=False) does, so a record reads the same whichever shim wrote it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
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

/* A failure of the shim itself: said in shim.err (its stderr may be /dev/null), then exit 1. */
static void die(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int fd = open(SHIM_ERR, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        dprintf(fd, "rune-shim: %s\n", msg);
        close(fd);
    }
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

static void log_init(log_t *w, const spec_t *spec) {
    memset(w, 0, sizeof *w);
    w->max_bytes = spec->max_bytes < 1024 ? 1024 : spec->max_bytes;
    w->backups = spec->backups < 0 ? 0 : spec->backups;
    w->min_free = spec->min_free < 0 ? 0 : spec->min_free;
    w->seq = last_seq();
    w->fd = open_log();
    if (w->fd < 0) die("cannot open %s: %s", LOG_NAME, strerror(errno));
    w->size = lseek(w->fd, 0, SEEK_END);
    w->checked = mono_ns() - SPACE_CHECK_NS;
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

/* In the child: everything Popen's fork_exec would do, then exec; failures go to `report`. */
static void child(const spec_t *spec, char **envp, int out_w, int err_w, int report) {
    int null = open("/dev/null", O_RDONLY);
    int stage = 1; /* 1: before exec ("noexec"), 0: exec */
    int err = 0;
    struct sigaction dfl = {0};
    dfl.sa_handler = SIG_DFL;
    int sigs[] = {SIGHUP, SIGINT, SIGPIPE, SIGXFSZ, SIGURG};
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
    if (spec->nofile > 0) {
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        rlim_t want = (rlim_t)spec->nofile;
        rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (spec->has_gid) {
        if (setgroups(0, NULL) < 0 || setregid((gid_t)spec->gid, (gid_t)spec->gid) < 0) goto fail;
    }
    if (spec->has_uid && setreuid((uid_t)spec->uid, (uid_t)spec->uid) < 0) goto fail;
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

/* Start the instance in its own process group; 0, or -1 with `msg` saying why. */
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
    *pid = fork();
    if (*pid < 0) goto failed;
    if (*pid == 0) child(spec, envp, out[1], err[1], rep[1]);
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

/* Lines of one chunk: each complete line written, the rest kept (capped at READ_SIZE bytes). */
static void take(stream_t *st, log_t *w, const char *chunk, size_t n) {
    buf_add(&st->partial, chunk, n);
    char *p = st->partial.p, *end = p + st->partial.n, *nl;
    while ((nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        char *e = nl;
        while (e > p && e[-1] == '\r') e--;
        log_write(w, st->name, p, (size_t)(e - p));
        p = nl + 1;
    }
    size_t rest = (size_t)(end - p);
    if (rest > READ_SIZE) {
        char *e = end;
        while (e > p && e[-1] == '\r') e--;
        log_write(w, st->name, p, (size_t)(e - p));
        rest = 0;
    }
    memmove(st->partial.p, p, rest);
    st->partial.n = rest;
}

static void json_attempt(buf_t *b, const char *attempt) {
    if (attempt && *attempt) {
        buf_str(b, ", \"attempt\": ");
        json_cstr(b, attempt);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: rune-shim <instance_dir>\n");
        return 2;
    }
    /* The shim outlives runed; a hang-up or ^C aimed at runed is not for it. SIGURG stays pending. */
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_DFL); /* an ignored SIGCHLD (inherited through exec) would reap the instance unseen */
    sigset_t discard;
    sigemptyset(&discard);
    sigaddset(&discard, DISCARD_SIGNAL);
    sigprocmask(SIG_SETMASK, &discard, NULL);
    prctl(PR_SET_NAME, "rune-shim", 0, 0, 0);
    if (chdir(argv[1]) < 0) die("cannot enter %s: %s", argv[1], strerror(errno));

    const char *attempt = getenv(ENV_PREFIX "ATTEMPT");
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
    long long my_start = proc_start_time(me);
    spec_t spec = {0};
    size_t launch_len;
    char *launch;
    char claim[128];
    claim[0] = 0;
    if (attempt && *attempt) {
        /* Claim the attempt (see shim.CLAIM_PREFIX): written aside, then linked in. */
        buf_t rec = {0};
        buf_str(&rec, "{\"attempt\": ");
        json_cstr(&rec, attempt);
        buf_fmt(&rec, ", \"shim_pid\": %d, \"shim_start\": %lld}", (int)me, my_start);
        snprintf(claim, sizeof claim, "claim-%.80s.json", attempt);
        char tmp[160];
        snprintf(tmp, sizeof tmp, "%s.%d.tmp", claim, (int)me);
        if (write_file(tmp, rec.p, rec.n) < 0) die("cannot write %s: %s", tmp, strerror(errno));
        int linked = link(tmp, claim);
        int err = errno;
        unlink(tmp);
        free(rec.p);
        if (linked < 0) {
            if (err != EEXIST) die("cannot claim %s: %s", claim, strerror(err));
            report_start(report);
            return 0;
        }
        launch = read_file(LAUNCH_NAME, &launch_len);
        if (!launch) die("cannot read %s: %s", LAUNCH_NAME, strerror(errno));
        if (parse_spec(launch, launch_len, &spec) < 0) die("%s: %s", LAUNCH_NAME, spec_error);
        if (!spec.attempt || strcmp(spec.attempt, attempt)) {
            /* A later start was asked for: this one is not to run. */
            unlink(claim);
            report_start(report);
            return 0;
        }
    } else {
        attempt = NULL;
        launch = read_file(LAUNCH_NAME, &launch_len);
        if (!launch) die("cannot read %s: %s", LAUNCH_NAME, strerror(errno));
        if (parse_spec(launch, launch_len, &spec) < 0) die("%s: %s", LAUNCH_NAME, spec_error);
    }
    unlink(EXIT_NAME);
    unlink(PID_NAME);
    reserved_t exit_record, pid_record;
    reserve(&exit_record, EXIT_NAME);
    reserve(&pid_record, PID_NAME);
    log_t w;
    log_init(&w, &spec);

    buf_t rec = {0}, msg = {0};
    pid_t pid = 0;
    int out_r = -1, err_r = -1;
    if (spawn(&spec, envp, &pid, &out_r, &err_r, &msg) < 0) {
        buf_t line = {0};
        buf_str(&line, "runed: cannot start ");
        py_repr(&line, spec.argc ? spec.argv[0] : "");
        buf_fmt(&line, ": %s", msg.p);
        log_write(&w, "stderr", line.p, line.n);
        log_close(&w);
        discard_reserved(&pid_record);
        buf_fmt(&rec, "{\"code\": 127, \"signal\": null, \"ts\": %.6f, \"error\": ", wall_seconds());
        buf_t error = {0};
        buf_fmt(&error, "cannot start: %s", msg.p);
        json_string(&rec, error.p, error.n > 1024 ? 1024 : error.n);
        json_attempt(&rec, attempt);
        buf_str(&rec, "}");
        commit(&exit_record, &rec, 1);
        report_start(report);
        return 0;
    }
    buf_fmt(&rec, "{\"pid\": %d, \"pid_start\": ", (int)pid);
    long long pid_start = proc_start_time(pid);
    if (pid_start < 0) buf_str(&rec, "null");
    else buf_fmt(&rec, "%lld", pid_start);
    buf_fmt(&rec, ", \"shim_pid\": %d, \"shim_start\": %lld, \"ts\": %.6f", (int)me, my_start, wall_seconds());
    json_attempt(&rec, attempt);
    buf_str(&rec, "}");
    commit(&pid_record, &rec, 0);
    report_start(report);

    stream_t streams[2] = {{out_r, "stdout", {0}, 1}, {err_r, "stderr", {0}, 1}};
    for (int i = 0; i < 2; i++) fcntl(streams[i].fd, F_SETFL, O_NONBLOCK);
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    int status = 0, ended = 0;
    int64_t exited_at = 0, heard_at = 0;
    char *chunk = malloc(READ_SIZE);
    if (!chunk) die("out of memory");
    while (streams[0].open || streams[1].open) {
        if (!ended && pidfd < 0 && waitpid(pid, &status, WNOHANG) == pid) ended = 1, exited_at = mono_ns();
        int timeout = pidfd >= 0 && !ended ? -1 : POLL_MS;
        if (ended) {
            /* What the instance left in the pipes is read to the end, but a grandchild holding them
             * open does not keep the shim: quiet for a moment, or a bounded drain, ends it. */
            int64_t now = mono_ns();
            int64_t since = heard_at > exited_at ? heard_at : exited_at;
            int64_t quiet = DRAIN_QUIET_MS - (now - since) / 1000000, most = DRAIN_MAX_MS - (now - exited_at) / 1000000;
            int64_t left = quiet < most ? quiet : most;
            if (left <= 0) break;
            timeout = (int)left + 1;
        }
        struct pollfd fds[3];
        int nfds = 0;
        for (int i = 0; i < 2; i++)
            if (streams[i].open) fds[nfds++] = (struct pollfd){streams[i].fd, POLLIN, 0};
        int with_pidfd = pidfd >= 0 && !ended;
        if (with_pidfd) fds[nfds++] = (struct pollfd){pidfd, POLLIN, 0};
        int n = poll(fds, (nfds_t)nfds, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("poll: %s", strerror(errno));
        }
        for (int f = 0; f < nfds; f++) {
            if (!fds[f].revents) continue;
            if (with_pidfd && fds[f].fd == pidfd) {
                while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
                }
                ended = 1;
                exited_at = mono_ns();
                close(pidfd);
                pidfd = -2; /* the end is known */
                continue;
            }
            stream_t *st = fds[f].fd == streams[0].fd ? &streams[0] : &streams[1];
            heard_at = mono_ns();
            ssize_t r = read(st->fd, chunk, READ_SIZE);
            if (r < 0) continue;
            if (r == 0) {
                st->open = 0;
                continue;
            }
            take(st, &w, chunk, (size_t)r);
        }
    }
    if (!ended)
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
    if (pidfd >= 0) close(pidfd);
    /* Children the instance left behind in its group end with it, as in a container. */
    kill(-pid, SIGKILL);
    /* ... and before the exit record, which a restart follows: one still dying (tearing down its
     * memory) may still hold a port. Their end closes the output they inherited; what they write
     * meanwhile is kept; output held only outside the group (a daemon in a session of its own)
     * does not hold the shim once the group is empty. Bounded: one stuck in the kernel does not. */
    int64_t until = mono_ns() + GROUP_END_MS * 1000000LL;
    while ((streams[0].open || streams[1].open) && !(kill(-pid, 0) < 0 && errno == ESRCH)) {
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
            ssize_t r = read(of[f]->fd, chunk, READ_SIZE);
            if (r > 0) take(of[f], &w, chunk, (size_t)r);
            else if (r == 0 || (errno != EAGAIN && errno != EINTR)) of[f]->open = 0;
        }
    }
    for (int i = 0; i < 2; i++)
        if (streams[i].partial.n) log_write(&w, streams[i].name, streams[i].partial.p, streams[i].partial.n);
    close(out_r);
    close(err_r);
    log_close(&w);
    rec.n = 0;
    if (WIFSIGNALED(status))
        buf_fmt(&rec, "{\"code\": null, \"signal\": %d", WTERMSIG(status));
    else
        buf_fmt(&rec, "{\"code\": %d, \"signal\": null", WEXITSTATUS(status));
    buf_fmt(&rec, ", \"ts\": %.6f", wall_seconds());
    json_attempt(&rec, attempt);
    buf_str(&rec, "}");
    commit(&exit_record, &rec, !discarded());
    return 0;
}
