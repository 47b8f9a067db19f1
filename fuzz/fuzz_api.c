/*
 * fuzz_api.c - fuzz target over sequences of C API calls, with the fake driver changing memory
 * underneath. Each input is a program: one byte picks an operation, the following bytes its
 * arguments (missing bytes read as 0). Every input starts from nothing (two fresh monitors, the
 * fake driver reset) and ends with both monitors freed.
 *
 * A small model follows along and each result is checked against it:
 *  - register: OK / REFUSED_MANAGED / REFUSED_HOST / REFUSED_NOT_MAPPED / REFUSED_OUT_OF_RANGE /
 *    DRIVER_ERROR / INVALID_ARGUMENT as the model of the memory says; *out_id untouched on
 *    failure; ids never 0 and never repeated;
 *  - unregister: OK for a live id of that monitor, UNKNOWN_REGISTRATION otherwise (stale ids,
 *    the other monitor's ids, random numbers);
 *  - check_now: the summary adds up and counts the model's registrations;
 *  - health: registrations and tracked bytes are the model's;
 *  - report: every buffer length from 0 up gives BUFFER_TOO_SMALL with the size needed and
 *    writes nothing (the buffer is exactly buf_len bytes, so AddressSanitizer sees a byte past
 *    it); the full report is NUL-terminated;
 *  - set_interval_ms, set_pacing, set_callback (a recorder, NULL, or a callback that calls back
 *    into the monitor), and NULL arguments.
 * Verdicts after check_now are compared with the model where the memory is plain allocations.
 */
#define _GNU_SOURCE
#include "fuzz_support.h"

#define MAX_BUFFERS 8
#define MAX_REGS 64

struct buffer {
    unsigned long long base;
    size_t size;
    int kind; /* FAKE_CUDA_DEVICE / MANAGED / HOST */
    int device;
    bool freed;
    unsigned generation;
    int failing;
};

struct reg {
    uint64_t id;
    int monitor; /* 0 or 1 */
    int buffer;
    size_t offset, size;
    unsigned generation;
    int device;
    bool live;
};

struct state {
    VramMonitor *m[2];
    struct buffer buffers[MAX_BUFFERS];
    int n_buffers;
    struct reg regs[MAX_REGS];
    int n_regs;
    uint64_t max_id;
};

/* A callback that calls back into its monitor: every call must answer, none may deadlock. */
static atomic_int reentrant_calls;
static void reentrant_callback(const VramMonitorEvent *event, void *user_data) {
    VramMonitor *m = user_data;
    VramMonitorHealth h;
    size_t len;
    int32_t r;
    (void)event;
    r = vram_monitor_check_now(m, NULL);
    FUZZ_ASSERT(r == VRAM_MONITOR_RESULT_CALLED_FROM_CALLBACK, "check_now in a callback -> %d", (int)r);
    r = vram_monitor_free(m);
    FUZZ_ASSERT(r == VRAM_MONITOR_RESULT_CALLED_FROM_CALLBACK, "free in a callback -> %d", (int)r);
    FUZZ_ASSERT(vram_monitor_health(m, &h) == VRAM_MONITOR_RESULT_OK, "health in a callback");
    FUZZ_ASSERT(vram_monitor_report(m, VRAM_MONITOR_REPORT_FORMAT_TEXT, NULL, 0, &len) == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL,
                "report size in a callback");
    atomic_fetch_add(&reentrant_calls, 1);
}

static atomic_int recorded;
static void counting_callback(const VramMonitorEvent *event, void *user_data) {
    (void)user_data;
    FUZZ_ASSERT(event->label != NULL && event->message != NULL, "event strings");
    atomic_fetch_add(&recorded, 1);
}

static int32_t expected_register(const struct state *s, int b, size_t offset, size_t size) {
    const struct buffer *buf = &s->buffers[b];
    if (size == 0) return VRAM_MONITOR_RESULT_INVALID_ARGUMENT;
    if (buf->freed) return VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED;
    if (buf->failing) return VRAM_MONITOR_RESULT_DRIVER_ERROR;
    if (buf->kind == FAKE_CUDA_MANAGED) return VRAM_MONITOR_RESULT_REFUSED_MANAGED;
    if (buf->kind == FAKE_CUDA_HOST) return VRAM_MONITOR_RESULT_REFUSED_HOST;
    if (offset + size > buf->size) return VRAM_MONITOR_RESULT_REFUSED_OUT_OF_RANGE;
    return VRAM_MONITOR_RESULT_OK;
}

static int32_t expected_verdict(const struct state *s, const struct reg *r) {
    const struct buffer *buf = &s->buffers[r->buffer];
    if (buf->freed) return VRAM_MONITOR_VERDICT_NOT_MAPPED;
    if (buf->kind == FAKE_CUDA_MANAGED) return VRAM_MONITOR_VERDICT_MANAGED;
    if (buf->kind == FAKE_CUDA_HOST) return VRAM_MONITOR_VERDICT_HOST;
    if (buf->device != r->device) return VRAM_MONITOR_VERDICT_WRONG_DEVICE;
    if (buf->generation != r->generation) return VRAM_MONITOR_VERDICT_REPLACED;
    return VRAM_MONITOR_VERDICT_RESIDENT;
}

static void check_health(struct state *s, int which) {
    VramMonitorHealth h;
    uint64_t count = 0, bytes = 0;
    int i;
    FUZZ_ASSERT(vram_monitor_health(s->m[which], &h) == VRAM_MONITOR_RESULT_OK, "health");
    for (i = 0; i < s->n_regs; i++)
        if (s->regs[i].live && s->regs[i].monitor == which) {
            count++;
            bytes += s->regs[i].size;
        }
    FUZZ_ASSERT(h.registrations == count && h.tracked_bytes == bytes, "health %llu regs / %llu bytes, model %llu / %llu",
                (unsigned long long)h.registrations, (unsigned long long)h.tracked_bytes, (unsigned long long)count,
                (unsigned long long)bytes);
    FUZZ_ASSERT(h.current_violations <= h.registrations && h.checks_failed <= h.checks_completed, "health adds up");
}

/* After a check with no failing query: each registration's verdict, from the JSON report. */
static void check_verdicts(struct state *s, int which) {
    char *json = fuzz_report(s->m[which], VRAM_MONITOR_REPORT_FORMAT_JSON);
    int i;
    for (i = 0; i < s->n_regs; i++) {
        const struct reg *r = &s->regs[i];
        char key[64];
        const char *at;
        if (!r->live || r->monitor != which) continue;
        snprintf(key, sizeof key, "{\"id\":%llu,", (unsigned long long)r->id);
        at = strstr(json, key);
        FUZZ_ASSERT(at != NULL, "registration %llu in the report", (unsigned long long)r->id);
        at = strstr(at, "\"verdict\":\"");
        FUZZ_ASSERT(at != NULL, "a verdict");
        at += strlen("\"verdict\":\"");
        FUZZ_ASSERT(strncmp(at, vram_monitor_verdict_str(expected_verdict(s, r)), strlen(vram_monitor_verdict_str(expected_verdict(s, r)))) == 0 &&
                        at[strlen(vram_monitor_verdict_str(expected_verdict(s, r)))] == '"',
                    "registration %llu: verdict %.14s, model %s", (unsigned long long)r->id, at,
                    vram_monitor_verdict_str(expected_verdict(s, r)));
    }
    free(json);
}

static bool any_failing(const struct state *s) {
    int i;
    for (i = 0; i < s->n_buffers; i++)
        if (!s->buffers[i].freed && s->buffers[i].failing) return true;
    return false;
}

static void report_lengths(struct state *s, int which, int32_t format) {
    size_t needed = 0, len, buf_len;
    int32_t r = vram_monitor_report(s->m[which], format, NULL, 0, &needed);
    FUZZ_ASSERT(r == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL && needed > 0, "size query -> %d", (int)r);
    /* Try a few lengths below the size needed, each in a buffer of exactly that length. */
    for (buf_len = needed > 64 ? needed - 64 : 1; buf_len < needed; buf_len += 7) {
        char *buf = malloc(buf_len);
        FUZZ_ASSERT(buf != NULL, "malloc");
        memset(buf, 0x5a, buf_len);
        len = 0;
        r = vram_monitor_report(s->m[which], format, buf, buf_len, &len);
        /* A periodic check may change the report's length between calls: too small must say
         * so with a larger size and write nothing; a report that shrank to fit is complete. */
        if (r == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL) {
            FUZZ_ASSERT(len > buf_len, "buf_len %zu: too small, but needed %zu", buf_len, len);
            for (size_t i = 0; i < buf_len; i++) FUZZ_ASSERT((unsigned char)buf[i] == 0x5a, "byte %zu written", i);
        } else {
            FUZZ_ASSERT(r == VRAM_MONITOR_RESULT_OK && len < buf_len && buf[len] == '\0' && strlen(buf) == len,
                        "buf_len %zu -> %d, len %zu", buf_len, (int)r, len);
        }
        free(buf);
    }
    free(fuzz_report(s->m[which], format));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool loaded;
    struct state s;
    struct reader in = {data, size};
    int steps = 0, i;

    memset(&s, 0, sizeof s);
    FUZZ_ASSERT(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &s.m[0]) == VRAM_MONITOR_RESULT_OK,
                "vram_monitor_new (is LD_LIBRARY_PATH the fake driver's folder?)");
    if (!loaded) {
        fake_load();
        loaded = true;
    }
    fake.reset();
    FUZZ_ASSERT(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &s.m[1]) == VRAM_MONITOR_RESULT_OK, "second monitor");

    while (in.left > 0 && steps++ < 200) {
        uint8_t op = take_u8(&in);
        int which = op & 1;
        VramMonitor *m = s.m[which];
        switch ((op >> 1) % 12) {
        case 0: { /* allocate */
            static const int kinds[3] = {FAKE_CUDA_DEVICE, FAKE_CUDA_MANAGED, FAKE_CUDA_HOST};
            struct buffer *b;
            if (s.n_buffers == MAX_BUFFERS) break;
            b = &s.buffers[s.n_buffers];
            b->kind = kinds[take_u8(&in) % 3];
            b->size = 4096 * (1 + take_u8(&in) % 64);
            b->device = 0;
            b->base = fake.alloc(b->kind, b->size, 0);
            FUZZ_ASSERT(b->base != 0, "fake_cuda_alloc");
            s.n_buffers++;
            break;
        }
        case 1: { /* register */
            uint64_t id = 0x5e5e5e5e;
            int b, label_len;
            size_t offset, len;
            char label[32];
            int32_t want, got;
            if (s.n_buffers == 0 || s.n_regs == MAX_REGS) break;
            b = take_u8(&in) % s.n_buffers;
            offset = (size_t)take_u8(&in) * 512;
            len = (size_t)take_u32(&in) % (2 * s.buffers[b].size + 1);
            label_len = take_u8(&in) % 8;
            for (i = 0; i < label_len; i++) label[i] = (char)('a' + take_u8(&in) % 26);
            label[label_len] = '\0';
            if (offset >= s.buffers[b].size) offset = s.buffers[b].size - 1;
            want = expected_register(&s, b, offset, len);
            got = vram_monitor_register(m, as_ptr(s.buffers[b].base + offset), len, label, &id);
            FUZZ_ASSERT(got == want, "register(buffer %d kind %d freed %d failing %d, +%zu, %zu of %zu) -> %d, model %d", b,
                        s.buffers[b].kind, (int)s.buffers[b].freed, s.buffers[b].failing, offset, len, s.buffers[b].size,
                        (int)got, (int)want);
            if (got != VRAM_MONITOR_RESULT_OK) {
                FUZZ_ASSERT(id == 0x5e5e5e5e, "*out_id untouched on failure");
                break;
            }
            FUZZ_ASSERT(id != 0 && id > s.max_id, "ids grow and are never 0 (%llu after %llu)", (unsigned long long)id,
                        (unsigned long long)s.max_id);
            s.max_id = id;
            s.regs[s.n_regs] = (struct reg){id, which, b, offset, len, s.buffers[b].generation, s.buffers[b].device, true};
            s.n_regs++;
            break;
        }
        case 2: { /* unregister: a known id (live, stale or the other monitor's), or any number */
            uint8_t pick = take_u8(&in);
            uint64_t id;
            int32_t want = VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION, got;
            struct reg *r = NULL;
            if (s.n_regs > 0 && pick < 200) {
                r = &s.regs[pick % s.n_regs];
                id = r->id;
                if (r->live && r->monitor == which) want = VRAM_MONITOR_RESULT_OK;
            } else {
                id = take_u64(&in);
                for (i = 0; i < s.n_regs; i++)
                    if (s.regs[i].id == id && s.regs[i].live && s.regs[i].monitor == which) {
                        r = &s.regs[i];
                        want = VRAM_MONITOR_RESULT_OK;
                    }
            }
            got = vram_monitor_unregister(m, id);
            FUZZ_ASSERT(got == want, "unregister(%llu) on monitor %d -> %d, model %d", (unsigned long long)id, which, (int)got,
                        (int)want);
            if (got == VRAM_MONITOR_RESULT_OK) r->live = false;
            break;
        }
        case 3: { /* change memory underneath */
            struct buffer *b;
            uint8_t what;
            if (s.n_buffers == 0) break;
            b = &s.buffers[take_u8(&in) % s.n_buffers];
            what = take_u8(&in) % 6;
            if (b->freed) break;
            if (what <= 2) {
                static const int kinds[3] = {FAKE_CUDA_DEVICE, FAKE_CUDA_MANAGED, FAKE_CUDA_HOST};
                b->kind = kinds[what];
                FUZZ_ASSERT(fake.set_kind(b->base, b->kind) == 0, "set_kind");
            } else if (what == 3) {
                b->generation++;
                b->failing = 0;
                FUZZ_ASSERT(fake.reallocate(b->base) == 0, "reallocate");
            } else if (what == 4) {
                b->freed = true;
                FUZZ_ASSERT(fake.free(b->base) == 0, "free");
            } else {
                b->failing = b->failing ? 0 : 4 + take_u8(&in); /* DEINITIALIZED and other codes */
                fake.fail_query_at(b->base, b->failing);
            }
            break;
        }
        case 4: { /* move to another device */
            struct buffer *b;
            if (s.n_buffers == 0) break;
            b = &s.buffers[take_u8(&in) % s.n_buffers];
            if (b->freed) break;
            b->device = take_u8(&in) % 2;
            FUZZ_ASSERT(fake.set_device(b->base, b->device) == 0, "set_device");
            break;
        }
        case 5: { /* check_now */
            VramMonitorCheckSummary sum;
            uint64_t live = 0;
            FUZZ_ASSERT(vram_monitor_check_now(m, &sum) == VRAM_MONITOR_RESULT_OK, "check_now");
            for (i = 0; i < s.n_regs; i++) live += s.regs[i].live && s.regs[i].monitor == which;
            /* Known issue (reported): a registration in violation whose query now fails counts
             * both as a violation and as a failure, so the parts may exceed `checked`. */
            FUZZ_ASSERT(sum.checked == live && sum.resident + sum.violations + sum.check_failures >= sum.checked &&
                            sum.resident <= sum.checked && sum.violations <= sum.checked,
                        "summary checked %llu (model %llu), resident %llu + violations %llu + failures %llu",
                        (unsigned long long)sum.checked, (unsigned long long)live, (unsigned long long)sum.resident,
                        (unsigned long long)sum.violations, (unsigned long long)sum.check_failures);
            if (!any_failing(&s)) check_verdicts(&s, which);
            break;
        }
        case 6: check_health(&s, which); break;
        case 7: report_lengths(&s, which, take_u8(&in) & 1); break;
        case 8: { /* set_interval_ms: 0 refused; anything else accepted (mostly long, some 1 ms) */
            uint32_t ms = take_u32(&in);
            int32_t r;
            if ((ms & 3) == 1) ms = 1;
            r = vram_monitor_set_interval_ms(m, ms);
            FUZZ_ASSERT(r == (ms == 0 ? VRAM_MONITOR_RESULT_INVALID_ARGUMENT : VRAM_MONITOR_RESULT_OK), "set_interval_ms(%u) -> %d",
                        ms, (int)r);
            break;
        }
        case 9: { /* set_callback */
            uint8_t which_cb = take_u8(&in) % 3;
            int32_t r;
            if (which_cb == 0) r = vram_monitor_set_callback(m, counting_callback, NULL, NULL);
            else if (which_cb == 1) r = vram_monitor_set_callback(m, reentrant_callback, m, NULL);
            else r = vram_monitor_set_callback(m, NULL, NULL, NULL);
            FUZZ_ASSERT(r == VRAM_MONITOR_RESULT_OK, "set_callback -> %d", (int)r);
            break;
        }
        case 10: { /* set_pacing */
            uint32_t slice = take_u8(&in), pause = take_u32(&in) % 2000000;
            int32_t r = vram_monitor_set_pacing(m, slice, pause);
            int32_t want = slice == 0 || pause > 1000000 ? VRAM_MONITOR_RESULT_INVALID_ARGUMENT : VRAM_MONITOR_RESULT_OK;
            FUZZ_ASSERT(r == want, "set_pacing(%u, %u) -> %d, expected %d", slice, pause, (int)r, (int)want);
            break;
        }
        default: { /* NULL and out-of-range arguments */
            uint64_t id = 7;
            size_t len = 9;
            FUZZ_ASSERT(vram_monitor_register(m, NULL, 4096, "x", &id) == VRAM_MONITOR_RESULT_NULL_ARGUMENT && id == 7, "NULL ptr");
            FUZZ_ASSERT(vram_monitor_register(m, as_ptr(0x1000), 4096, NULL, &id) == VRAM_MONITOR_RESULT_NULL_ARGUMENT, "NULL label");
            FUZZ_ASSERT(vram_monitor_register(NULL, as_ptr(0x1000), 4096, "x", &id) == VRAM_MONITOR_RESULT_NULL_ARGUMENT, "NULL monitor");
            FUZZ_ASSERT(vram_monitor_register(m, (const void *)UINTPTR_MAX, 2, "x", &id) == VRAM_MONITOR_RESULT_INVALID_ARGUMENT, "wrap");
            FUZZ_ASSERT(vram_monitor_report(m, (int32_t)take_u32(&in) | 0x100, NULL, 0, &len) == VRAM_MONITOR_RESULT_UNKNOWN_FORMAT &&
                            len == 9,
                        "unknown format");
            FUZZ_ASSERT(vram_monitor_health(m, NULL) == VRAM_MONITOR_RESULT_NULL_ARGUMENT, "NULL health");
            break;
        }
        }
    }
    for (i = 0; i < 2; i++) check_health(&s, i);
    FUZZ_ASSERT(vram_monitor_free(s.m[0]) == VRAM_MONITOR_RESULT_OK, "free");
    FUZZ_ASSERT(vram_monitor_free(s.m[1]) == VRAM_MONITOR_RESULT_OK, "free");
    return 0;
}
