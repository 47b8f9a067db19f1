/*
 * test_api_contract.c - the argument and output rules of every C function, against the fake
 * libcuda: NULL arguments, out-parameters left alone on failure, invalid sizes, intervals and
 * labels, unknown ids and formats, the report buffer protocol, result strings, the version, and
 * that no CUDA context is ever created.
 */
#define _GNU_SOURCE
#include "test_support.h"

#include <limits.h>

/* The header documents the 4096-byte label limit in prose; the constant is expected as a macro. */
#ifdef VRAM_MONITOR_MAX_LABEL_BYTES
#define MAX_LABEL_BYTES ((size_t)VRAM_MONITOR_MAX_LABEL_BYTES)
#define HEADER_HAS_MAX_LABEL_BYTES 1
#else
#define MAX_LABEL_BYTES ((size_t)4096)
#define HEADER_HAS_MAX_LABEL_BYTES 0
#endif

#define SENTINEL_ID 0x5e5e5e5e5e5e5e5eULL
#define SENTINEL_LEN ((size_t)0x5e5e5e5e)

static int free_calls;
static void count_free(void *user_data) {
    (void)user_data;
    free_calls++;
}
static void ignore_event(const VramMonitorEvent *event, void *user_data) {
    (void)event;
    (void)user_data;
}

static bool all_bytes(const unsigned char *p, size_t n, unsigned char value) {
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i] != value) return false;
    return true;
}

static void null_arguments(VramMonitor *m, unsigned long long dev) {
    VramMonitorCheckSummary summary;
    VramMonitorHealth health;
    uint64_t id = SENTINEL_ID;
    size_t len = SENTINEL_LEN;
    char buf[16];

    section("NULL arguments");
    CHECK_RESULT(vram_monitor_new(1000, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_free(NULL), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(NULL, as_ptr(dev), MiB, "x", &id), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, NULL, MiB, "x", &id), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, NULL, &id), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "x", NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK(id == SENTINEL_ID, "register: *out_id untouched on failure");
    CHECK_RESULT(vram_monitor_unregister(NULL, 1), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    free_calls = 0;
    CHECK_RESULT(vram_monitor_set_callback(NULL, ignore_event, NULL, count_free), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK(free_calls == 0, "set_callback(NULL monitor) does not call free_user_data (the caller keeps it)");
    CHECK_RESULT(vram_monitor_set_interval_ms(NULL, 10), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    memset(&summary, 0x5e, sizeof summary);
    CHECK_RESULT(vram_monitor_check_now(NULL, &summary), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK(all_bytes((const unsigned char *)&summary, sizeof summary, 0x5e), "check_now: *out_summary untouched");
    memset(&health, 0x5e, sizeof health);
    CHECK_RESULT(vram_monitor_health(NULL, &health), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK(all_bytes((const unsigned char *)&health, sizeof health, 0x5e), "health: *out_health untouched");
    CHECK_RESULT(vram_monitor_health(m, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    memset(buf, 0x5e, sizeof buf);
    CHECK_RESULT(vram_monitor_report(NULL, VRAM_MONITOR_REPORT_FORMAT_TEXT, buf, sizeof buf, &len),
                 VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_report(m, VRAM_MONITOR_REPORT_FORMAT_TEXT, buf, sizeof buf, NULL),
                 VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_report(m, VRAM_MONITOR_REPORT_FORMAT_TEXT, NULL, 16, &len),
                 VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK(len == SENTINEL_LEN && all_bytes((const unsigned char *)buf, sizeof buf, 0x5e),
          "report: *out_len and the buffer untouched on failure");
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK); /* out_summary may be NULL */
}

static void invalid_arguments(VramMonitor *m, unsigned long long dev) {
    VramMonitor *out = (VramMonitor *)(uintptr_t)0x5e5e;
    uint64_t id = SENTINEL_ID;
    VramMonitorHealth h;
    char *label;
    size_t i;

    section("invalid sizes, intervals and labels");
    CHECK_RESULT(vram_monitor_new(0, &out), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK(out == (VramMonitor *)(uintptr_t)0x5e5e, "vram_monitor_new(0): *out_monitor untouched");
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), 0, "size 0", &id), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, (const void *)(UINTPTR_MAX - 100), 4096, "wraps", &id),
                 VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), SIZE_MAX, "wraps from a real pointer", &id),
                 VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK(id == SENTINEL_ID, "register: *out_id untouched on failure");
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 0), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    h = get_health(m);
    CHECK(h.interval_ms == VRAM_MONITOR_DEFAULT_INTERVAL_MS, "the refused interval changed nothing (%" PRIu64 " ms)",
          h.interval_ms);

    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "bad \xff\xfe utf-8", &id),
                 VRAM_MONITOR_RESULT_INVALID_LABEL);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "overlong \xc0\x80 NUL", &id),
                 VRAM_MONITOR_RESULT_INVALID_LABEL);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "surrogate \xed\xa0\x80", &id),
                 VRAM_MONITOR_RESULT_INVALID_LABEL);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "truncated \xe2\x82", &id),
                 VRAM_MONITOR_RESULT_INVALID_LABEL);
    CHECK(id == SENTINEL_ID, "register: *out_id untouched on INVALID_LABEL");

    CHECK(HEADER_HAS_MAX_LABEL_BYTES, "include/vram_monitor.h defines VRAM_MONITOR_MAX_LABEL_BYTES");
    label = malloc(MAX_LABEL_BYTES + 8);
    REQUIRE(label != NULL, "malloc");
    for (i = 0; i < MAX_LABEL_BYTES; i++) label[i] = (char)('a' + i % 26);
    label[MAX_LABEL_BYTES] = '\0';
    id = 0;
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, label, &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_OK);
    label[MAX_LABEL_BYTES] = 'x';
    label[MAX_LABEL_BYTES + 1] = '\0';
    id = SENTINEL_ID;
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, label, &id), VRAM_MONITOR_RESULT_INVALID_LABEL);
    /* A two-byte character that straddles the limit: MAX - 1 ASCII bytes + "é" = MAX + 1 bytes. */
    label[MAX_LABEL_BYTES - 1] = '\xc3';
    label[MAX_LABEL_BYTES] = '\xa9';
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, label, &id), VRAM_MONITOR_RESULT_INVALID_LABEL);
    CHECK(id == SENTINEL_ID, "register: *out_id untouched for a long label");
    free(label);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "gewichte.k\xc3\xbchl \xe2\x9c\x93", &id),
                 VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_OK);
}

static void unknown_ids(VramMonitor *m, unsigned long long dev) {
    uint64_t id = 0, id2 = 0, id_other = 0;
    VramMonitor *other;

    section("unknown registrations");
    CHECK_RESULT(vram_monitor_unregister(m, 0), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_unregister(m, 987654321), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_unregister(m, UINT64_MAX), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "twice", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "twice", &id2), VRAM_MONITOR_RESULT_OK);
    CHECK(id != 0 && id2 != 0 && id != id2, "the same memory twice: two ids (%" PRIu64 ", %" PRIu64 ")", id, id2);
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_unregister(m, id2), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, id2), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    id2 = 0;
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "after", &id2), VRAM_MONITOR_RESULT_OK);
    CHECK(id2 > id, "ids are not reused (%" PRIu64 " after %" PRIu64 ")", id2, id);

    /* Ids are unique in the process: another monitor's id is unknown here, and stays registered there. */
    other = NULL;
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &other) == VRAM_MONITOR_RESULT_OK, "a second monitor");
    CHECK_RESULT(vram_monitor_register(other, as_ptr(dev), MiB, "other monitor", &id_other), VRAM_MONITOR_RESULT_OK);
    CHECK(id_other != id2, "the second monitor's id %" PRIu64 " differs from the first's %" PRIu64, id_other, id2);
    CHECK_RESULT(vram_monitor_unregister(m, id_other), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_unregister(other, id2), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_unregister(other, id_other), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_free(other), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, id2), VRAM_MONITOR_RESULT_OK);
}

static void report_buffer_protocol(VramMonitor *m, int32_t format, const char *name) {
    size_t needed = SENTINEL_LEN, len, buf_len;
    unsigned char *buf;
    bool all_too_small = true, all_untouched = true, all_len = true;
    int32_t r;

    printf("-- %s report\n", name);
    r = vram_monitor_report(m, format, NULL, 0, &needed);
    CHECK(r == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL && needed > 1 && needed != SENTINEL_LEN,
          "%s: report(NULL, 0) -> %d (%s), needed %zu", name, (int)r, vram_monitor_result_str(r), needed);
    if (r != VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL || needed == SENTINEL_LEN) return;
    buf = malloc(needed + 64);
    REQUIRE(buf != NULL, "malloc");
    /* Every length near both ends, and a stride between: the same contract in a few hundred
     * calls rather than thousands (the text report says how many seconds ago the last check
     * was, so a walk lasting seconds under valgrind could see it change). */
    for (buf_len = 0; buf_len < needed; buf_len = (buf_len < 256 || buf_len + 256 >= needed) ? buf_len + 1 : buf_len + 61) {
        memset(buf, 0xA5, needed + 64);
        len = SENTINEL_LEN;
        r = vram_monitor_report(m, format, (char *)buf, buf_len, &len);
        if (r != VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL) {
            if (all_too_small)
                CHECK(false, "%s: buf_len %zu -> %d (%s), expected BUFFER_TOO_SMALL", name, buf_len, (int)r,
                      vram_monitor_result_str(r));
            all_too_small = false;
        }
        if (len != needed) {
            if (all_len) CHECK(false, "%s: buf_len %zu: out_len %zu, expected %zu", name, buf_len, len, needed);
            all_len = false;
        }
        if (!all_bytes(buf, needed + 64, 0xA5)) {
            if (all_untouched) CHECK(false, "%s: buf_len %zu: the buffer was written to", name, buf_len);
            all_untouched = false;
        }
    }
    CHECK(all_too_small && all_len && all_untouched,
          "%s: every buf_len tried from 0 to %zu gives BUFFER_TOO_SMALL, out_len = %zu (NUL included), buffer untouched",
          name, needed - 1, needed);
    memset(buf, 0xA5, needed + 64);
    len = SENTINEL_LEN;
    CHECK_RESULT(vram_monitor_report(m, format, (char *)buf, needed, &len), VRAM_MONITOR_RESULT_OK);
    CHECK(len == needed - 1, "%s: at buf_len = needed, out_len = %zu (needed - 1 = %zu)", name, len, needed - 1);
    CHECK(buf[needed - 1] == '\0', "%s: NUL-terminated", name);
    CHECK(strlen((char *)buf) == len, "%s: strlen %zu == out_len %zu", name, strlen((char *)buf), len);
    CHECK(all_bytes(buf + needed, 64, 0xA5), "%s: nothing written past buf_len", name);
    memset(buf, 0xA5, needed + 64);
    len = SENTINEL_LEN;
    CHECK_RESULT(vram_monitor_report(m, format, (char *)buf, needed + 64, &len), VRAM_MONITOR_RESULT_OK);
    CHECK(len == needed - 1 && buf[len] == '\0' && all_bytes(buf + needed, 64, 0xA5),
          "%s: a bigger buffer gets the same report and nothing past its NUL", name);
    free(buf);
}

static void reports(VramMonitor *m, unsigned long long dev) {
    uint64_t id = 0;
    size_t len = SENTINEL_LEN;
    char buf[64];

    section("report buffer protocol");
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "report \"me\"", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    /* Each protocol walk asks for the report thousands of times (minutes under helgrind): no
     * periodic check may change the report in between, so the next one is put off. */
    CHECK_RESULT(vram_monitor_set_interval_ms(m, UINT32_MAX), VRAM_MONITOR_RESULT_OK);
    report_buffer_protocol(m, VRAM_MONITOR_REPORT_FORMAT_TEXT, "text");
    report_buffer_protocol(m, VRAM_MONITOR_REPORT_FORMAT_JSON, "json");
    report_buffer_protocol(m, VRAM_MONITOR_REPORT_FORMAT_PROMETHEUS, "prometheus");
    memset(buf, 0x5e, sizeof buf);
    CHECK_RESULT(vram_monitor_report(m, VRAM_MONITOR_REPORT_FORMAT_PROMETHEUS + 1, buf, sizeof buf, &len),
                 VRAM_MONITOR_RESULT_UNKNOWN_FORMAT);
    CHECK_RESULT(vram_monitor_report(m, -1, buf, sizeof buf, &len), VRAM_MONITOR_RESULT_UNKNOWN_FORMAT);
    CHECK_RESULT(vram_monitor_report(m, INT32_MAX, NULL, 0, &len), VRAM_MONITOR_RESULT_UNKNOWN_FORMAT);
    CHECK(len == SENTINEL_LEN && all_bytes((const unsigned char *)buf, sizeof buf, 0x5e),
          "unknown format: *out_len and buffer untouched");
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_OK);
}

static void strings_and_version(void) {
    static const int32_t codes[] = {
        VRAM_MONITOR_RESULT_OK,
        VRAM_MONITOR_RESULT_NULL_ARGUMENT,
        VRAM_MONITOR_RESULT_INVALID_ARGUMENT,
        VRAM_MONITOR_RESULT_INVALID_LABEL,
        VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL,
        VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION,
        VRAM_MONITOR_RESULT_UNKNOWN_FORMAT,
        VRAM_MONITOR_RESULT_REFUSED_MANAGED,
        VRAM_MONITOR_RESULT_REFUSED_HOST,
        VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED,
        VRAM_MONITOR_RESULT_REFUSED_REPLACED,
        VRAM_MONITOR_RESULT_REFUSED_OUT_OF_RANGE,
        VRAM_MONITOR_RESULT_REFUSED_WRONG_DEVICE,
        VRAM_MONITOR_RESULT_DRIVER_NOT_FOUND,
        VRAM_MONITOR_RESULT_DRIVER_SYMBOL_MISSING,
        VRAM_MONITOR_RESULT_DRIVER_INIT_FAILED,
        VRAM_MONITOR_RESULT_DRIVER_ERROR,
        VRAM_MONITOR_RESULT_CALLED_FROM_CALLBACK,
        VRAM_MONITOR_RESULT_THREAD_SPAWN_FAILED,
        VRAM_MONITOR_RESULT_STOPPED,
        VRAM_MONITOR_RESULT_PANIC,
    };
    static const char *const verdicts[] = {"RESIDENT",     "MANAGED",      "HOST",         "NOT_MAPPED",
                                           "REPLACED",     "OUT_OF_RANGE", "WRONG_DEVICE", "CHECK_FAILED"};
    const size_t n = sizeof codes / sizeof codes[0];
    bool ok_nonnull = true, ok_distinct = true, ok_known = true;
    size_t i, j;
    char expected[64];
    const char *version;

    section("result strings, verdict names, version");
    for (i = 0; i < n; i++) {
        const char *s = vram_monitor_result_str(codes[i]);
        printf("     %3d: %s\n", (int)codes[i], s ? s : "<NULL>");
        if (s == NULL || s[0] == '\0') ok_nonnull = false;
        else if (strcmp(s, "unknown result code") == 0) ok_known = false;
        for (j = 0; j < i && s != NULL; j++) {
            const char *t = vram_monitor_result_str(codes[j]);
            if (t != NULL && strcmp(s, t) == 0) ok_distinct = false;
        }
    }
    CHECK(ok_nonnull, "vram_monitor_result_str of each of the %zu codes is non-NULL and non-empty", n);
    CHECK(ok_known, "no defined code is described as \"unknown result code\"");
    CHECK(ok_distinct, "the %zu descriptions are distinct", n);
    CHECK(strcmp(vram_monitor_result_str(12345), "unknown result code") == 0, "vram_monitor_result_str(12345) = \"%s\"",
          vram_monitor_result_str(12345));
    CHECK(strcmp(vram_monitor_result_str(-1), "unknown result code") == 0 &&
              strcmp(vram_monitor_result_str(1), "unknown result code") == 0 &&
              strcmp(vram_monitor_result_str(200), "unknown result code") == 0 &&
              strcmp(vram_monitor_result_str(INT32_MIN), "unknown result code") == 0,
          "-1, 1, 200 and INT32_MIN are unknown result codes");
    for (i = 0; i < sizeof verdicts / sizeof verdicts[0]; i++)
        CHECK(strcmp(vram_monitor_verdict_str((int32_t)i), verdicts[i]) == 0, "vram_monitor_verdict_str(%zu) = \"%s\"",
              i, vram_monitor_verdict_str((int32_t)i));
    CHECK(strcmp(vram_monitor_verdict_str(9), "UNKNOWN") == 0 && strcmp(vram_monitor_verdict_str(-1), "UNKNOWN") == 0,
          "vram_monitor_verdict_str(9) and (-1) = \"UNKNOWN\"");
    CHECK(VRAM_MONITOR_VERDICT_CHECK_FAILED == 7 && VRAM_MONITOR_RESULT_REFUSED_MANAGED == 200 + VRAM_MONITOR_VERDICT_MANAGED &&
              VRAM_MONITOR_RESULT_REFUSED_WRONG_DEVICE == 200 + VRAM_MONITOR_VERDICT_WRONG_DEVICE,
          "REFUSED_<verdict> = 200 + verdict");

    version = vram_monitor_version();
    snprintf(expected, sizeof expected, "%d.%d.%d", VRAM_MONITOR_VERSION_MAJOR, VRAM_MONITOR_VERSION_MINOR,
             VRAM_MONITOR_VERSION_PATCH);
    CHECK(version != NULL && strcmp(version, expected) == 0, "vram_monitor_version() \"%s\" = header \"%s\"",
          version ? version : "<NULL>", expected);
}

static void no_context_is_created(VramMonitor *m, unsigned long long dev) {
    VramMonitorCheckSummary s;
    VramMonitorHealth h;
    uint64_t id = 0;

    section("no CUDA context is created");
    CHECK(fake.context_creations() == 0, "after vram_monitor_new: %llu contexts created", fake.context_creations());
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), 2 * MiB, "contexts", &id), VRAM_MONITOR_RESULT_OK);
    CHECK(fake.context_creations() == 0, "after register: %llu contexts created", fake.context_creations());
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    h = get_health(m);
    CHECK(fake.context_creations() == 0, "after check_now and health: %llu contexts created",
          fake.context_creations());
    CHECK(fake.primary_context_retains(0) == 0, "every primary-context retain was released (%d outstanding)",
          fake.primary_context_retains(0));
    printf("     process VRAM: %" PRIu64 " bytes, source %d\n", h.process_vram_bytes, (int)h.process_vram_source);
    /* Without NVML, the figure comes from the engine's already-active primary context. */
    CHECK(h.process_vram_source == VRAM_MONITOR_VRAM_SOURCE_DEVICE_USED ||
              h.process_vram_source == VRAM_MONITOR_VRAM_SOURCE_NVML_PROCESS,
          "process VRAM source %d is DEVICE_USED (or NVML_PROCESS where NVML lists this process)",
          (int)h.process_vram_source);
    if (h.process_vram_source == VRAM_MONITOR_VRAM_SOURCE_DEVICE_USED)
        CHECK(h.process_vram_bytes >= 4 * MiB, "DEVICE_USED covers the device memory allocated (%" PRIu64 " bytes)",
              h.process_vram_bytes);

    /* The engine has no active primary context: the monitor must not create one. */
    fake.set_primary_context_active(0, 0);
    /* Process VRAM is read at most once a second: let that second pass first. */
    nanosleep(&(struct timespec){.tv_sec = 1, .tv_nsec = 100 * 1000 * 1000}, NULL);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    h = get_health(m);
    CHECK(fake.context_creations() == 0, "primary context inactive: the check created %llu contexts",
          fake.context_creations());
    if (h.process_vram_source != VRAM_MONITOR_VRAM_SOURCE_NVML_PROCESS)
        CHECK(h.process_vram_source == VRAM_MONITOR_VRAM_SOURCE_UNKNOWN && h.process_vram_bytes == 0,
              "primary context inactive: process VRAM source %d (UNKNOWN), %" PRIu64 " bytes",
              (int)h.process_vram_source, h.process_vram_bytes);
    CHECK(s.healthy && s.resident == 1, "the residency check itself needs no context (resident %" PRIu64 ")",
          s.resident);
    fake.set_primary_context_active(0, 1);
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_OK);
}

int main(void) {
    VramMonitor *m = NULL;
    unsigned long long dev;

    setvbuf(stdout, NULL, _IOLBF, 0);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK && m != NULL,
            "vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS)");
    fake_load();
    dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, 4 * MiB, 0);

    no_context_is_created(m, dev);
    null_arguments(m, dev);
    invalid_arguments(m, dev);
    unknown_ids(m, dev);
    reports(m, dev);
    strings_and_version();
    CHECK(fake.context_creations() == 0, "in the end: %llu contexts created", fake.context_creations());
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    return test_exit_code("test_api_contract");
}
