/*
 * test_support.h - shared helpers of the C tests in tests/c (header-only, static functions).
 *
 * Every test program defines _GNU_SOURCE before including anything, then includes this file.
 *
 *  - CHECK(cond, ...) / CHECK_RESULT(call, expected): print "ok" or "FAIL file:line" with what
 *    was checked (results by number and by vram_monitor_result_str); failures are counted and
 *    test_exit_code() turns the count into the exit status.
 *  - fake: the fake driver's control API (tests/fake_cuda/fake_cuda_control.h), looked up at
 *    run time in the libcuda.so.1 that vram_monitor_new loaded (dlopen RTLD_NOLOAD), falling
 *    back to dlsym(RTLD_DEFAULT). The tests never link the fake, so the same code runs in a
 *    process that has no libcuda at all.
 *  - struct recorder: a callback that copies every event (strings included) under a mutex.
 */
#ifndef VRAM_MONITOR_C_TEST_SUPPORT_H
#define VRAM_MONITOR_C_TEST_SUPPORT_H

#include "vram_monitor.h"
#include "fake_cuda_control.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MiB ((size_t)1 << 20)

/* ---- checks -------------------------------------------------------------------------------- */

static atomic_int test_failures;
static atomic_int test_checks;

static inline void test_report(bool ok, const char *file, int line, const char *condition, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Prints one line: "ok   file:line: what" or "FAIL file:line: what  [condition]". */
static inline void test_report(bool ok, const char *file, int line, const char *condition, const char *fmt, ...) {
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    atomic_fetch_add(&test_checks, 1);
    if (!ok) atomic_fetch_add(&test_failures, 1);
    /* One fprintf per line: lines from the monitor thread do not interleave mid-line. */
    if (ok || condition == NULL) fprintf(ok ? stdout : stderr, "%s %s:%d: %s\n", ok ? "ok  " : "FAIL", file, line, text);
    else fprintf(stderr, "FAIL %s:%d: %s  [%s]\n", file, line, text, condition);
    fflush(ok ? stdout : stderr);
}

/* CHECK(condition, "printf format", args...): the text says what is checked. */
#define CHECK(cond, ...)                                                \
    do {                                                                \
        bool check_ok_ = (cond);                                        \
        test_report(check_ok_, __FILE__, __LINE__, #cond, __VA_ARGS__); \
    } while (0)

/* CHECK_RESULT(call, expected): runs the call once and compares its VramMonitorResult. */
#define CHECK_RESULT(call, expected)                                                                   \
    do {                                                                                               \
        int32_t check_got_ = (int32_t)(call);                                                          \
        int32_t check_want_ = (int32_t)(expected);                                                     \
        if (check_got_ == check_want_)                                                                 \
            test_report(true, __FILE__, __LINE__, NULL, "%s -> %d (%s)", #call, (int)check_got_,       \
                        vram_monitor_result_str(check_got_));                                          \
        else                                                                                           \
            test_report(false, __FILE__, __LINE__, NULL, "%s -> %d (%s), expected %d (%s)", #call,     \
                        (int)check_got_, vram_monitor_result_str(check_got_), (int)check_want_,        \
                        vram_monitor_result_str(check_want_));                                         \
    } while (0)

/* REQUIRE(condition, ...): CHECK, and stop the program if it failed (for preconditions without
 * which the rest makes no sense). The condition is evaluated once. */
#define REQUIRE(cond, ...)                                                      \
    do {                                                                        \
        bool require_ok_ = (cond);                                              \
        test_report(require_ok_, __FILE__, __LINE__, #cond, __VA_ARGS__);       \
        if (!require_ok_) {                                                     \
            fprintf(stderr, "FAIL %s:%d: cannot go on\n", __FILE__, __LINE__); \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

static inline void section(const char *name) {
    printf("\n== %s\n", name);
    fflush(stdout);
}

static inline int test_exit_code(const char *program) {
    int failures = atomic_load(&test_failures);
    printf("\n%s: %d checks, %d failed\n", program, atomic_load(&test_checks), failures);
    fflush(stdout);
    return failures == 0 ? 0 : 1;
}

/* ---- orderings the library promises, told to helgrind ------------------------------------ */

/* The library promises that a callback's effects (and a replaced callback's finaliser) happen
 * before the vram_monitor_check_now (or vram_monitor_free) that caused them returns. It keeps
 * that promise with Rust futex locks, which helgrind cannot see, so a test that reads, after
 * check_now, plain data its callback wrote says so: CALLBACK_DONE() at the end of the callback
 * (or finaliser), LIBRARY_RETURNED() after the call. Outside valgrind these cost a few
 * instructions and do nothing. */
#if defined(__has_include)
#if __has_include(<valgrind/helgrind.h>)
#include <valgrind/helgrind.h>
#define TEST_HAVE_HELGRIND_H 1
#endif
#endif
static char library_ordering __attribute__((unused));
#ifdef TEST_HAVE_HELGRIND_H
#define CALLBACK_DONE() ANNOTATE_HAPPENS_BEFORE(&library_ordering)
#define LIBRARY_RETURNED() ANNOTATE_HAPPENS_AFTER(&library_ordering)
#else
#define CALLBACK_DONE() ((void)&library_ordering)
#define LIBRARY_RETURNED() ((void)&library_ordering)
#endif

/* ---- time ---------------------------------------------------------------------------------- */

static inline double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static inline void sleep_ms(unsigned ms) {
    struct timespec ts, rem;
    ts.tv_sec = (time_t)(ms / 1000u);
    ts.tv_nsec = (long)(ms % 1000u) * 1000000L;
    while (nanosleep(&ts, &rem) != 0 && errno == EINTR) ts = rem;
}

/* ---- the fake driver's control API --------------------------------------------------------- */

struct fake_api {
    unsigned long long (*alloc)(int kind, size_t size, int device);
    int (*free)(unsigned long long base);
    int (*reallocate)(unsigned long long base);
    int (*set_kind)(unsigned long long base, int kind);
    int (*set_device)(unsigned long long base, int device);
    unsigned long long (*reserve)(size_t size);
    int (*release)(unsigned long long base);
    int (*map)(unsigned long long addr, size_t size, int kind, int device);
    int (*unmap)(unsigned long long addr);
    void (*set_init_result)(int code);
    void (*set_query_result)(int code);
    void (*fail_query_at)(unsigned long long addr, int code);
    void (*set_query_delay_us)(unsigned us);
    void (*set_primary_context_active)(int device, int active);
    unsigned long long (*context_creations)(void);
    unsigned long long (*pointer_queries)(void);
    void (*hold_queries)(int hold);
    unsigned (*held_queries)(void);
    int (*primary_context_retains)(int device);
    void (*reset)(void);
};

static struct fake_api fake;

/* The member types must be those of fake_cuda_control.h. _Generic does not evaluate its
 * controlling expression, so this references no symbol of the fake. */
#define FAKE_SAME_TYPE(field, function) \
    _Static_assert(_Generic(&function, __typeof__(((struct fake_api *)0)->field): 1, default: 0), #function)
FAKE_SAME_TYPE(alloc, fake_cuda_alloc);
FAKE_SAME_TYPE(free, fake_cuda_free);
FAKE_SAME_TYPE(reallocate, fake_cuda_reallocate);
FAKE_SAME_TYPE(set_kind, fake_cuda_set_kind);
FAKE_SAME_TYPE(set_device, fake_cuda_set_device);
FAKE_SAME_TYPE(reserve, fake_cuda_reserve);
FAKE_SAME_TYPE(release, fake_cuda_release);
FAKE_SAME_TYPE(map, fake_cuda_map);
FAKE_SAME_TYPE(unmap, fake_cuda_unmap);
FAKE_SAME_TYPE(set_init_result, fake_cuda_set_init_result);
FAKE_SAME_TYPE(set_query_result, fake_cuda_set_query_result);
FAKE_SAME_TYPE(fail_query_at, fake_cuda_fail_query_at);
FAKE_SAME_TYPE(set_query_delay_us, fake_cuda_set_query_delay_us);
FAKE_SAME_TYPE(set_primary_context_active, fake_cuda_set_primary_context_active);
FAKE_SAME_TYPE(context_creations, fake_cuda_context_creations);
FAKE_SAME_TYPE(pointer_queries, fake_cuda_pointer_queries);
FAKE_SAME_TYPE(hold_queries, fake_cuda_hold_queries);
FAKE_SAME_TYPE(held_queries, fake_cuda_held_queries);
FAKE_SAME_TYPE(primary_context_retains, fake_cuda_primary_context_retains);
FAKE_SAME_TYPE(reset, fake_cuda_reset);

static inline int fake_lookup(void *handle, const char *name, void *slot, size_t slot_size) {
    void *symbol = dlsym(handle, name);
    if (symbol == NULL) {
        fprintf(stderr, "FAIL fake driver: no symbol %s (%s)\n", name, dlerror());
        return -1;
    }
    /* ISO C has no object-to-function pointer conversion; POSIX guarantees the representation. */
    memcpy(slot, &symbol, slot_size);
    return 0;
}

/* Finds the control API in the libcuda.so.1 the library loaded. Call after vram_monitor_new
 * succeeded. Exits the program if the fake is not there (a test setup error). */
static inline void fake_load(void) {
    void *handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    int bad = 0;
    if (handle == NULL) handle = RTLD_DEFAULT;
#define FAKE_LOAD(field) bad |= fake_lookup(handle, "fake_cuda_" #field, (void *)&fake.field, sizeof fake.field)
    FAKE_LOAD(alloc);
    FAKE_LOAD(free);
    FAKE_LOAD(reallocate);
    FAKE_LOAD(set_kind);
    FAKE_LOAD(set_device);
    FAKE_LOAD(reserve);
    FAKE_LOAD(release);
    FAKE_LOAD(map);
    FAKE_LOAD(unmap);
    FAKE_LOAD(set_init_result);
    FAKE_LOAD(set_query_result);
    FAKE_LOAD(fail_query_at);
    FAKE_LOAD(set_query_delay_us);
    FAKE_LOAD(set_primary_context_active);
    FAKE_LOAD(context_creations);
    FAKE_LOAD(pointer_queries);
    FAKE_LOAD(hold_queries);
    FAKE_LOAD(held_queries);
    FAKE_LOAD(primary_context_retains);
    FAKE_LOAD(reset);
#undef FAKE_LOAD
    if (bad) {
        fprintf(stderr, "FAIL the loaded libcuda.so.1 is not the fake driver (LD_LIBRARY_PATH=%s)\n",
                getenv("LD_LIBRARY_PATH") ? getenv("LD_LIBRARY_PATH") : "");
        exit(1);
    }
}

/* Fake addresses are never dereferenced; the library only passes them to the driver. */
static inline const void *as_ptr(unsigned long long address) { return (const void *)(uintptr_t)address; }

/* Allocates fake memory, failing the program if the fake refuses. */
static inline unsigned long long fake_alloc_or_die(int kind, size_t size, int device) {
    unsigned long long base = fake.alloc(kind, size, device);
    REQUIRE(base != 0, "fake_cuda_alloc(kind %d, %zu bytes, device %d) = 0x%llx", kind, size, device, base);
    return base;
}

/* ---- recording events ---------------------------------------------------------------------- */

#define RECORDER_CAPACITY 1024

struct recorded_event {
    int32_t kind;
    uint64_t registration_id;
    char label[5000];
    uintptr_t ptr;
    size_t size;
    int32_t device;
    int32_t verdict;
    int32_t previous_verdict;
    bool healthy;
    char message[1024];
    uint64_t timestamp_unix_ms;
    uint64_t modified_chunks;
    uint64_t first_modified_offset;
    char error_kind[64];
    pthread_t thread;
};

struct recorder {
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    size_t count;
    size_t dropped;
    int active;     /* callbacks running now */
    int max_active; /* the most ever running at once */
    struct recorded_event *events;
};

static inline void recorder_init(struct recorder *r) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mutex, NULL);
    pthread_cond_init(&r->changed, NULL);
    r->events = calloc(RECORDER_CAPACITY, sizeof *r->events);
    REQUIRE(r->events != NULL, "allocating the event recorder");
}

static inline void recorder_destroy(struct recorder *r) {
    free(r->events);
    r->events = NULL;
    pthread_cond_destroy(&r->changed);
    pthread_mutex_destroy(&r->mutex);
}

static inline void copy_string(char *dst, size_t cap, const char *src) {
    if (src == NULL) {
        snprintf(dst, cap, "<NULL>");
        return;
    }
    snprintf(dst, cap, "%s", src);
}

static inline const char *event_kind_name(int32_t kind) {
    switch (kind) {
    case VRAM_MONITOR_EVENT_KIND_VIOLATION: return "VIOLATION";
    case VRAM_MONITOR_EVENT_KIND_RECOVERED: return "RECOVERED";
    case VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED: return "HEALTH_CHANGED";
    case VRAM_MONITOR_EVENT_KIND_CHECK_FAILED: return "CHECK_FAILED";
    case VRAM_MONITOR_EVENT_KIND_DEVICE_FAULT: return "DEVICE_FAULT";
    case VRAM_MONITOR_EVENT_KIND_MODIFIED: return "MODIFIED";
    case VRAM_MONITOR_EVENT_KIND_INTEGRITY_FAILED: return "INTEGRITY_FAILED";
    default: return "?";
    }
}

/* Appends a copy of the event (the strings live only during the callback). */
static inline void recorder_add(struct recorder *r, const VramMonitorEvent *event) {
    pthread_mutex_lock(&r->mutex);
    if (r->count < RECORDER_CAPACITY) {
        struct recorded_event *e = &r->events[r->count++];
        e->kind = event->kind;
        e->registration_id = event->registration_id;
        copy_string(e->label, sizeof e->label, event->label);
        e->ptr = (uintptr_t)event->ptr;
        e->size = event->size;
        e->device = event->device;
        e->verdict = event->verdict;
        e->previous_verdict = event->previous_verdict;
        e->healthy = event->healthy;
        copy_string(e->message, sizeof e->message, event->message);
        e->timestamp_unix_ms = event->timestamp_unix_ms;
        e->modified_chunks = event->modified_chunks;
        e->first_modified_offset = event->first_modified_offset;
        copy_string(e->error_kind, sizeof e->error_kind, event->error_kind);
        e->thread = pthread_self();
    } else {
        r->dropped++;
    }
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->mutex);
}

/* A VramMonitorCallback whose user data is a struct recorder. */
static inline void recorder_callback(const VramMonitorEvent *event, void *user_data) {
    struct recorder *r = user_data;
    pthread_mutex_lock(&r->mutex);
    r->active++;
    if (r->active > r->max_active) r->max_active = r->active;
    pthread_mutex_unlock(&r->mutex);
    printf("     event %s id=%" PRIu64 " label='%s' verdict=%s (was %s) healthy=%d: %s\n",
           event_kind_name(event->kind), event->registration_id, event->label ? event->label : "<NULL>",
           vram_monitor_verdict_str(event->verdict), vram_monitor_verdict_str(event->previous_verdict),
           (int)event->healthy, event->message ? event->message : "<NULL>");
    fflush(stdout);
    recorder_add(r, event);
    pthread_mutex_lock(&r->mutex);
    r->active--;
    pthread_mutex_unlock(&r->mutex);
}

static inline size_t recorder_count(struct recorder *r) {
    size_t n;
    pthread_mutex_lock(&r->mutex);
    n = r->count;
    pthread_mutex_unlock(&r->mutex);
    return n;
}

/* Copies event `index` out (false if there is none). */
static inline bool recorder_get(struct recorder *r, size_t index, struct recorded_event *out) {
    bool ok;
    pthread_mutex_lock(&r->mutex);
    ok = index < r->count;
    if (ok) *out = r->events[index];
    pthread_mutex_unlock(&r->mutex);
    return ok;
}

/* Events of `kind` (any kind if 0) about `id` (any if UINT64_MAX) from index `from` on. */
static inline size_t recorder_count_kind(struct recorder *r, size_t from, int32_t kind, uint64_t id) {
    size_t i, n = 0;
    pthread_mutex_lock(&r->mutex);
    for (i = from; i < r->count; i++)
        if ((kind == 0 || r->events[i].kind == kind) && (id == UINT64_MAX || r->events[i].registration_id == id)) n++;
    pthread_mutex_unlock(&r->mutex);
    return n;
}

/* The first event of `kind` about `id` (UINT64_MAX: any) from index `from` on. */
static inline bool recorder_find(struct recorder *r, size_t from, int32_t kind, uint64_t id, struct recorded_event *out) {
    size_t i;
    bool found = false;
    pthread_mutex_lock(&r->mutex);
    for (i = from; i < r->count && !found; i++) {
        if (r->events[i].kind == kind && (id == UINT64_MAX || r->events[i].registration_id == id)) {
            *out = r->events[i];
            found = true;
        }
    }
    pthread_mutex_unlock(&r->mutex);
    return found;
}

/* Waits up to `timeout_ms` for an event of `kind` about `id` from index `from` on. */
static inline bool recorder_wait_for(struct recorder *r, size_t from, int32_t kind, uint64_t id, unsigned timeout_ms,
                              struct recorded_event *out) {
    double deadline = now_ms() + timeout_ms;
    for (;;) {
        if (recorder_find(r, from, kind, id, out)) return true;
        if (now_ms() >= deadline) return false;
        sleep_ms(2);
    }
}

/* ---- reports ------------------------------------------------------------------------------- */

/* The report as a malloc'ed string (NULL on failure, with the failure checked). */
static inline char *get_report(VramMonitor *m, int32_t format) {
    size_t needed = 0, len = 0;
    char *buf;
    int attempt;
    for (attempt = 0; attempt < 5; attempt++) {
        int32_t r = vram_monitor_report(m, format, NULL, 0, &needed);
        if (r != VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL) {
            CHECK(false, "vram_monitor_report(size query) -> %d (%s)", (int)r, vram_monitor_result_str(r));
            return NULL;
        }
        buf = malloc(needed);
        if (buf == NULL) return NULL;
        r = vram_monitor_report(m, format, buf, needed, &len);
        if (r == VRAM_MONITOR_RESULT_OK) return buf;
        free(buf);
        if (r != VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL) {
            CHECK(false, "vram_monitor_report -> %d (%s)", (int)r, vram_monitor_result_str(r));
            return NULL;
        }
    }
    CHECK(false, "vram_monitor_report kept growing");
    return NULL;
}

static inline VramMonitorHealth get_health(VramMonitor *m) {
    VramMonitorHealth h;
    int32_t r;
    memset(&h, 0, sizeof h);
    r = vram_monitor_health(m, &h);
    if (r != VRAM_MONITOR_RESULT_OK) CHECK(false, "vram_monitor_health -> %d (%s)", (int)r, vram_monitor_result_str(r));
    return h;
}

/* Parses the JSON string literal starting at *p (just after its opening quote) into out.
 * Returns the number of bytes written, or -1 if the literal is malformed or holds a raw
 * control byte (RFC 8259 forbids those). Handles every escape the RFC defines; \u escapes
 * above 0x7F are written as UTF-8, or refused with ascii_escapes_only (the library escapes
 * only control characters and DEL that way). Shared by the C tests and the fuzz targets. */
static inline long json_unescape(const char *p, char *out, size_t cap, bool ascii_escapes_only) {
    size_t n = 0;
    while (*p != '"') {
        unsigned c = (unsigned char)*p;
        unsigned v = 0;
        int i;
        if (c == '\0' || c < 0x20) return -1;
        if (n + 4 >= cap) return -1;
        if (c != '\\') {
            out[n++] = (char)c;
            p++;
            continue;
        }
        p++;
        switch (*p) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u':
            for (i = 1; i <= 4; i++) {
                char h = p[i];
                v <<= 4;
                if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
                else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
                else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
                else return -1;
            }
            p += 4;
            if (ascii_escapes_only && v >= 0x80) return -1;
            if (v < 0x80) out[n++] = (char)v;
            else if (v < 0x800) {
                out[n++] = (char)(0xC0 | (v >> 6));
                out[n++] = (char)(0x80 | (v & 0x3F));
            } else {
                out[n++] = (char)(0xE0 | (v >> 12));
                out[n++] = (char)(0x80 | ((v >> 6) & 0x3F));
                out[n++] = (char)(0x80 | (v & 0x3F));
            }
            break;
        default: return -1;
        }
        p++;
    }
    out[n] = '\0';
    return (long)n;
}

#endif /* VRAM_MONITOR_C_TEST_SUPPORT_H */
