/*
 * test_bad_input.c - bad input that test_api_contract.c does not already cover, through the C
 * API against the fake libcuda:
 *
 *  - overlapping registrations and the same range twice: independent registrations, each with
 *    its own VIOLATION event;
 *  - ranges at the very top of the address space (wrap / no wrap);
 *  - a 1 MiB label, and one that is also invalid UTF-8 at its end;
 *  - labels with quotes, backslashes, newlines, tabs, every control character and DEL are
 *    copied (the caller's buffer is overwritten and freed at once) and come back unchanged in
 *    events and, correctly escaped, in the JSON report (which holds no raw control byte);
 *  - interval UINT32_MAX (about 49.7 days) at creation and at run time, and back to 1 ms;
 *  - nothing registered is lost or changed by any rejected call: the JSON report is
 *    byte-for-byte the same before and after a battery of rejected calls.
 */
#define _GNU_SOURCE
#include "test_support.h"

#define SENTINEL_ID 0x5e5e5e5e5e5e5e5eULL

static char *report_json(VramMonitor *m) { return get_report(m, VRAM_MONITOR_REPORT_FORMAT_JSON); }

/* The label the JSON report gives registration `id` (false if it is not listed). */
static bool json_label_of(const char *json, uint64_t id, char *out, size_t cap) {
    char key[64];
    const char *at;
    snprintf(key, sizeof key, "{\"id\":%" PRIu64 ",\"label\":\"", id);
    at = strstr(json, key);
    if (at == NULL) return false;
    return json_unescape(at + strlen(key), out, cap, false) >= 0;
}

static bool has_raw_control_byte(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20) return true;
    return false;
}

static void overlapping_registrations(void) {
    static struct recorder rec;
    VramMonitor *m = NULL;
    unsigned long long dev;
    uint64_t id[4] = {0, 0, 0, 0};
    VramMonitorCheckSummary s;
    VramMonitorHealth h;
    size_t i, j;

    section("overlapping registrations are independent, each reported once");
    recorder_init(&rec);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    CHECK_RESULT(vram_monitor_set_callback(m, recorder_callback, &rec, NULL), VRAM_MONITOR_RESULT_OK);
    dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, 4 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), 4 * MiB, "whole", &id[0]), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev + MiB), 2 * MiB, "middle", &id[1]), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev + 2 * MiB), 2 * MiB, "upper half", &id[2]), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), 4 * MiB, "whole", &id[3]), VRAM_MONITOR_RESULT_OK);
    for (i = 0; i < 4; i++)
        for (j = 0; j < i; j++) CHECK(id[i] != id[j], "ids %zu and %zu differ (%" PRIu64 ", %" PRIu64 ")", i, j, id[i], id[j]);
    h = get_health(m);
    CHECK(h.registrations == 4 && h.tracked_bytes == 12 * MiB,
          "4 registrations, tracked_bytes counts each (%" PRIu64 " = 12 MiB)", h.tracked_bytes);
    REQUIRE(fake.set_kind(dev, FAKE_CUDA_HOST) == 0, "fake_cuda_set_kind(HOST)");
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.checked == 4 && s.violations == 4, "all four judged HOST (checked %" PRIu64 ", violations %" PRIu64 ")",
          s.checked, s.violations);
    for (i = 0; i < 4; i++)
        CHECK(recorder_count_kind(&rec, 0, VRAM_MONITOR_EVENT_KIND_VIOLATION, id[i]) == 1,
              "exactly one VIOLATION event for registration %zu", i);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(recorder_count_kind(&rec, 0, VRAM_MONITOR_EVENT_KIND_VIOLATION, UINT64_MAX) == 4,
          "no repeat on the next check (%zu VIOLATION events)",
          recorder_count_kind(&rec, 0, VRAM_MONITOR_EVENT_KIND_VIOLATION, UINT64_MAX));
    CHECK_RESULT(vram_monitor_unregister(m, id[1]), VRAM_MONITOR_RESULT_OK);
    h = get_health(m);
    CHECK(h.registrations == 3 && h.current_violations == 3 && h.tracked_bytes == 10 * MiB,
          "unregistering one overlapping registration leaves the others (%" PRIu64 " registrations, %" PRIu64
          " violating, %" PRIu64 " bytes)",
          h.registrations, h.current_violations, h.tracked_bytes);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    recorder_destroy(&rec);
}

static void address_space_edges(VramMonitor *m) {
    uint64_t id = SENTINEL_ID;
    section("ranges at the top of the address space");
    CHECK_RESULT(vram_monitor_register(m, (const void *)UINTPTR_MAX, 1, "wraps by one", &id),
                 VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, (const void *)(uintptr_t)1, SIZE_MAX, "wraps from 1", &id),
                 VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, (const void *)(UINTPTR_MAX - 1), 1, "ends at the top, no wrap", &id),
                 VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED);
    CHECK_RESULT(vram_monitor_register(m, (const void *)(uintptr_t)1, SIZE_MAX - 1, "ends at the top from 1", &id),
                 VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED);
    CHECK(id == SENTINEL_ID, "*out_id untouched");
}

static void huge_labels(VramMonitor *m, unsigned long long dev) {
    const size_t big = (size_t)1 << 20;
    uint64_t id = SENTINEL_ID;
    char *label = malloc(big + 1);
    REQUIRE(label != NULL, "malloc(1 MiB)");
    section("a 1 MiB label");
    memset(label, 'w', big);
    label[big] = '\0';
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, label, &id), VRAM_MONITOR_RESULT_INVALID_LABEL);
    label[big - 1] = '\xff';
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, label, &id), VRAM_MONITOR_RESULT_INVALID_LABEL);
    CHECK(id == SENTINEL_ID, "*out_id untouched");
    free(label);
}

/* Control characters, quotes and friends: copied, and escaped correctly in JSON. */
static void hostile_labels(void) {
    static struct recorder rec;
    static const char *const originals[] = {
        "quote \" backslash \\ slash / end",
        "new\nline\r\ncarriage\ttab\bbackspace\fformfeed",
        "\"}],\"injected\":{\"x\":\"",
        "</script><script>alert(1)</script>",
        "unicode: gr\xc3\xbc\xc3\x9f \xe2\x9c\x93 \xf0\x9f\x98\x80",
        "\x7f del",
        "",
    };
    enum { N_FIXED = sizeof originals / sizeof originals[0] };
    char controls[40];
    const char *labels[N_FIXED + 1];
    uint64_t id[N_FIXED + 1];
    unsigned long long buffers[N_FIXED + 1];
    VramMonitor *m = NULL;
    char *json, *text, parsed[512];
    size_t i, n = N_FIXED + 1, lines = 0;
    struct recorded_event e;

    section("labels with quotes, newlines and control characters");
    for (i = 1; i < 0x20; i++) controls[i - 1] = (char)i; /* every control character but NUL */
    controls[0x1f] = '\0';
    for (i = 0; i < N_FIXED; i++) labels[i] = originals[i];
    labels[N_FIXED] = controls;

    recorder_init(&rec);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    CHECK_RESULT(vram_monitor_set_callback(m, recorder_callback, &rec, NULL), VRAM_MONITOR_RESULT_OK);
    for (i = 0; i < n; i++) {
        /* The caller's copy is overwritten and freed right after the call. */
        size_t len = strlen(labels[i]);
        char *copy = malloc(len + 1);
        REQUIRE(copy != NULL, "malloc");
        memcpy(copy, labels[i], len + 1);
        buffers[i] = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
        id[i] = 0;
        CHECK_RESULT(vram_monitor_register(m, as_ptr(buffers[i]), MiB, copy, &id[i]), VRAM_MONITOR_RESULT_OK);
        memset(copy, 'X', len);
        free(copy);
    }
    json = report_json(m);
    REQUIRE(json != NULL, "JSON report");
    CHECK(!has_raw_control_byte(json), "the JSON report holds no raw control byte (%zu bytes)", strlen(json));
    for (i = 0; i < n; i++) {
        bool found = json_label_of(json, id[i], parsed, sizeof parsed);
        CHECK(found && strcmp(parsed, labels[i]) == 0, "label %zu: the JSON string decodes to the original (%zu bytes)", i,
              strlen(labels[i]));
    }
    CHECK(strstr(json, "\"injected\"") == NULL || strstr(json, "\\\"injected\\\"") != NULL,
          "a label cannot inject JSON keys");
    free(json);

    text = get_report(m, VRAM_MONITOR_REPORT_FORMAT_TEXT);
    REQUIRE(text != NULL, "text report");
    {
        /* After the header, one line per registration, each starting "  #": no label can start
         * a line of its own. */
        const char *line = strstr(text, "\n  #");
        bool all_registration_lines = line != NULL;
        while (line != NULL && line[1] != '\0') {
            if (strncmp(line + 1, "  #", 3) != 0) all_registration_lines = false;
            else lines++;
            line = strchr(line + 1, '\n');
        }
        CHECK(all_registration_lines && lines == n, "the text report has %zu registration lines (%zu) and nothing between them",
              lines, n);
    }
    free(text);

    for (i = 0; i < n; i++) REQUIRE(fake.free(buffers[i]) == 0, "fake_cuda_free");
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    for (i = 0; i < n; i++) {
        bool found = recorder_find(&rec, 0, VRAM_MONITOR_EVENT_KIND_VIOLATION, id[i], &e);
        CHECK(found && strcmp(e.label, labels[i]) == 0, "label %zu: the VIOLATION event carries the original label", i);
    }
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    recorder_destroy(&rec);
}

static void extreme_intervals(void) {
    VramMonitor *m = NULL;
    VramMonitorHealth h;
    double deadline, started;
    uint64_t checks;

    section("interval UINT32_MAX ms");
    REQUIRE(vram_monitor_new(UINT32_MAX, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new(UINT32_MAX)");
    h = get_health(m);
    CHECK(h.interval_ms == UINT32_MAX, "health.interval_ms = %" PRIu64, h.interval_ms);
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    started = now_ms();
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    printf("     vram_monitor_free with a UINT32_MAX ms interval took %.1f ms\n", now_ms() - started);

    REQUIRE(vram_monitor_new(1000, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new(1000)");
    CHECK_RESULT(vram_monitor_set_interval_ms(m, UINT32_MAX), VRAM_MONITOR_RESULT_OK);
    h = get_health(m);
    CHECK(h.interval_ms == UINT32_MAX, "set_interval_ms(UINT32_MAX): health.interval_ms = %" PRIu64, h.interval_ms);
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 0), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK(get_health(m).interval_ms == UINT32_MAX, "the refused 0 changed nothing");
    /* Back to 1 ms: the thread was not wedged by the huge wait. */
    checks = get_health(m).checks_completed;
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 1), VRAM_MONITOR_RESULT_OK);
    deadline = now_ms() + 10000;
    while (get_health(m).checks_completed < checks + 5 && now_ms() < deadline) sleep_ms(2);
    CHECK(get_health(m).checks_completed >= checks + 5, "after set_interval_ms(1) the periodic checks run (%" PRIu64 " -> %" PRIu64 ")",
          checks, get_health(m).checks_completed);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
}

static void count_free(void *user_data) { (*(int *)user_data)++; }
static void ignore_event(const VramMonitorEvent *event, void *user_data) {
    (void)event;
    (void)user_data;
}

/* Every rejected call leaves the registrations and the health exactly as they were. */
static void rejected_calls_change_nothing(void) {
    VramMonitor *m = NULL, *other = NULL;
    unsigned long long dev, managed, host, freed;
    uint64_t id[3], other_id = 0, gone = 0, out = SENTINEL_ID;
    char *before, *after, *label, small[8];
    size_t len, big = (size_t)1 << 20;
    int frees = 0;

    section("rejected calls change nothing");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &other) == VRAM_MONITOR_RESULT_OK, "a second monitor");
    dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, 4 * MiB, 0);
    managed = fake_alloc_or_die(FAKE_CUDA_MANAGED, MiB, 0);
    host = fake_alloc_or_die(FAKE_CUDA_HOST, MiB, 0);
    freed = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    REQUIRE(fake.free(freed) == 0, "fake_cuda_free");
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "a \"quoted\"\nlabel", &id[0]), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev + MiB), MiB, "b", &id[1]), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), 4 * MiB, "c", &id[2]), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "gone", &gone), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, gone), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(other, as_ptr(dev), MiB, "other's", &other_id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    before = report_json(m);
    REQUIRE(before != NULL, "JSON report before");

    label = malloc(big + 1);
    REQUIRE(label != NULL, "malloc");
    memset(label, 'l', big);
    label[big] = '\0';
    CHECK_RESULT(vram_monitor_register(m, NULL, MiB, "x", &out), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, NULL, &out), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "x", NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), 0, "x", &out), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, (const void *)UINTPTR_MAX, 2, "x", &out), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "bad \xc3", &out), VRAM_MONITOR_RESULT_INVALID_LABEL);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, label, &out), VRAM_MONITOR_RESULT_INVALID_LABEL);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(managed), MiB, "x", &out), VRAM_MONITOR_RESULT_REFUSED_MANAGED);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(host), MiB, "x", &out), VRAM_MONITOR_RESULT_REFUSED_HOST);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(freed), MiB, "x", &out), VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), 4 * MiB + 1, "x", &out), VRAM_MONITOR_RESULT_REFUSED_OUT_OF_RANGE);
    CHECK(out == SENTINEL_ID, "*out_id untouched by every refused registration");
    CHECK_RESULT(vram_monitor_unregister(m, 0), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_unregister(m, gone), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_unregister(m, other_id), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_unregister(m, id[2] + 1000000), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 0), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_set_callback(NULL, ignore_event, &frees, count_free), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK(frees == 0, "a refused set_callback does not take (or free) the user data");
    CHECK_RESULT(vram_monitor_report(m, 7, small, sizeof small, &len), VRAM_MONITOR_RESULT_UNKNOWN_FORMAT);
    CHECK_RESULT(vram_monitor_report(m, VRAM_MONITOR_REPORT_FORMAT_JSON, small, sizeof small, &len),
                 VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL);
    CHECK_RESULT(vram_monitor_health(m, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    free(label);

    after = report_json(m);
    REQUIRE(after != NULL, "JSON report after");
    CHECK(strcmp(before, after) == 0, "the JSON report is byte-for-byte unchanged by %s", "20 rejected calls");
    if (strcmp(before, after) != 0) printf("before: %s\nafter:  %s\n", before, after);
    free(before);
    free(after);
    CHECK_RESULT(vram_monitor_unregister(other, other_id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_free(other), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
}

int main(void) {
    VramMonitor *m = NULL;
    unsigned long long dev;

    setvbuf(stdout, NULL, _IOLBF, 0);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    fake_load();
    dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, 4 * MiB, 0);
    address_space_edges(m);
    huge_labels(m, dev);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);

    overlapping_registrations();
    hostile_labels();
    extreme_intervals();
    rejected_calls_change_nothing();
    return test_exit_code("test_bad_input");
}
