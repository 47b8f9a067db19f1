/*
 * test_verdicts.c - every verdict, through the C API, against the fake libcuda.
 *
 * 1. Registration: DEVICE memory (plain and VMM over several mappings) registers; managed,
 *    host, freed, never-allocated, one-past-the-end, too-long and half-mapped ranges are refused
 *    with the matching REFUSED_* result.
 * 2. Checks: registered buffers are changed underneath with the fake's control API; each change
 *    gives exactly one VIOLATION event with the right verdict and fields, the health counters
 *    follow, a second check is silent, a failed query gives a CHECK_FAILED event, the JSON
 *    report names every verdict and escapes labels, and after unregistering the bad buffers
 *    the monitor is healthy again and says so.
 *
 * Run with LD_LIBRARY_PATH pointing at the complete fake (ctest does that).
 */
#define _GNU_SOURCE
#include "test_support.h"

static VramMonitor *m;
static struct recorder rec;
static pthread_t main_thread;

struct buf {
    const char *label;
    unsigned long long ptr;
    size_t size;
    int device;
    uint64_t id;
};

/* ---- registration ------------------------------------------------------------------------- */

static uint64_t register_ok(const char *label, unsigned long long ptr, size_t size) {
    uint64_t id = 0;
    int32_t r = vram_monitor_register(m, as_ptr(ptr), size, label, &id);
    CHECK(r == VRAM_MONITOR_RESULT_OK && id != 0, "register '%s' (%zu bytes at 0x%llx) -> %d (%s), id %" PRIu64,
          label, size, ptr, (int)r, vram_monitor_result_str(r), id);
    return id;
}

static void register_refused(const char *label, unsigned long long ptr, size_t size, int32_t expected) {
    uint64_t id = 0x5e5e5e5e5e5e5e5eULL;
    int32_t r = vram_monitor_register(m, as_ptr(ptr), size, label, &id);
    CHECK(r == expected, "register '%s' (%zu bytes at 0x%llx) -> %d (%s), expected %d (%s)", label, size, ptr,
          (int)r, vram_monitor_result_str(r), (int)expected, vram_monitor_result_str(expected));
    CHECK(id == 0x5e5e5e5e5e5e5e5eULL, "refused '%s': *out_id untouched", label);
}

static void registration_verdicts(void) {
    unsigned long long dev, dev1, managed, host, freed, res, res_host, res_two_devices, res_half, res_empty;
    size_t registered = 0;
    VramMonitorHealth h;
    uint64_t ids[8];
    size_t i;

    section("registration: what is accepted and what is refused");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    fake_load();

    dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, 4 * MiB, 0);
    ids[registered++] = register_ok("device: whole allocation", dev, 4 * MiB);
    ids[registered++] = register_ok("device: interior range", dev + MiB + 7, MiB);
    ids[registered++] = register_ok("device: last byte", dev + 4 * MiB - 1, 1);
    dev1 = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 1);
    ids[registered++] = register_ok("device 1: whole allocation", dev1, 2 * MiB);

    managed = fake_alloc_or_die(FAKE_CUDA_MANAGED, 2 * MiB, 0);
    register_refused("managed", managed, 2 * MiB, VRAM_MONITOR_RESULT_REFUSED_MANAGED);
    host = fake_alloc_or_die(FAKE_CUDA_HOST, 2 * MiB, 0);
    register_refused("pinned host", host, 2 * MiB, VRAM_MONITOR_RESULT_REFUSED_HOST);
    freed = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    REQUIRE(fake.free(freed) == 0, "fake_cuda_free");
    register_refused("freed", freed, 2 * MiB, VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED);
    register_refused("never allocated", 0x1000, 4096, VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED);
    /* A pointer one past the end is not CUDA memory; a range ending one past the end runs out. */
    register_refused("one-past-the-end pointer", dev + 4 * MiB, 1, VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED);
    register_refused("range one byte past the end", dev, 4 * MiB + 1, VRAM_MONITOR_RESULT_REFUSED_OUT_OF_RANGE);
    register_refused("range past the end", dev + 3 * MiB, 2 * MiB, VRAM_MONITOR_RESULT_REFUSED_OUT_OF_RANGE);

    /* VMM: one registration over three adjacent mappings (PyTorch expandable segments). */
    res = fake.reserve(6 * MiB);
    REQUIRE(res != 0, "fake_cuda_reserve(6 MiB)");
    for (i = 0; i < 3; i++)
        REQUIRE(fake.map(res + i * 2 * MiB, 2 * MiB, FAKE_CUDA_VMM_DEVICE, 0) == 0, "fake_cuda_map #%zu", i);
    ids[registered++] = register_ok("vmm: three mappings", res, 6 * MiB);
    ids[registered++] = register_ok("vmm: across a mapping boundary", res + MiB, 4 * MiB);

    res_host = fake.reserve(4 * MiB);
    REQUIRE(res_host != 0, "fake_cuda_reserve");
    REQUIRE(fake.map(res_host, 2 * MiB, FAKE_CUDA_VMM_DEVICE, 0) == 0, "map VMM_DEVICE");
    REQUIRE(fake.map(res_host + 2 * MiB, 2 * MiB, FAKE_CUDA_VMM_HOST, 0) == 0, "map VMM_HOST");
    register_refused("vmm: device then host mapping", res_host, 4 * MiB, VRAM_MONITOR_RESULT_REFUSED_HOST);
    register_refused("vmm: host mapping", res_host + 2 * MiB, MiB, VRAM_MONITOR_RESULT_REFUSED_HOST);

    res_two_devices = fake.reserve(4 * MiB);
    REQUIRE(res_two_devices != 0, "fake_cuda_reserve");
    REQUIRE(fake.map(res_two_devices, 2 * MiB, FAKE_CUDA_VMM_DEVICE, 0) == 0, "map on device 0");
    REQUIRE(fake.map(res_two_devices + 2 * MiB, 2 * MiB, FAKE_CUDA_VMM_DEVICE, 1) == 0, "map on device 1");
    register_refused("vmm: mappings on two devices", res_two_devices, 4 * MiB,
                     VRAM_MONITOR_RESULT_REFUSED_WRONG_DEVICE);

    res_half = fake.reserve(6 * MiB);
    REQUIRE(res_half != 0, "fake_cuda_reserve");
    REQUIRE(fake.map(res_half, 2 * MiB, FAKE_CUDA_VMM_DEVICE, 0) == 0, "map the first 2 MiB only");
    register_refused("vmm: runs from a mapping into unmapped space", res_half, 4 * MiB,
                     VRAM_MONITOR_RESULT_REFUSED_OUT_OF_RANGE);
    register_refused("vmm: unmapped part of a reservation", res_half + 2 * MiB, MiB,
                     VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED);

    res_empty = fake.reserve(4 * MiB);
    REQUIRE(res_empty != 0, "fake_cuda_reserve");
    register_refused("vmm: reservation with nothing mapped", res_empty, 4 * MiB,
                     VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED);

    h = get_health(m);
    CHECK(h.registrations == registered, "health.registrations = %" PRIu64 " (only the accepted ones: %zu)",
          h.registrations, registered);
    CHECK(h.checks_completed == 0 && h.current_violations == 0 && h.healthy,
          "no check has run yet, healthy (checks %" PRIu64 ", violations %" PRIu64 ")", h.checks_completed,
          h.current_violations);
    for (i = 0; i < registered; i++) CHECK_RESULT(vram_monitor_unregister(m, ids[i]), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    m = NULL;
}

/* ---- checks ------------------------------------------------------------------------------- */

static void check_event_fields(const struct recorded_event *e, const struct buf *b, int32_t kind, int32_t verdict,
                               int32_t previous) {
    CHECK(e->kind == kind, "event kind %s, expected %s", event_kind_name(e->kind), event_kind_name(kind));
    CHECK(e->registration_id == b->id, "event registration_id %" PRIu64 " = %" PRIu64, e->registration_id, b->id);
    CHECK(strcmp(e->label, b->label) == 0, "event label '%s' = '%s'", e->label, b->label);
    CHECK(e->ptr == (uintptr_t)b->ptr, "event ptr 0x%llx = 0x%llx", (unsigned long long)e->ptr, b->ptr);
    CHECK(e->size == b->size, "event size %zu = %zu", e->size, b->size);
    CHECK(e->device == b->device, "event device %d = %d", (int)e->device, b->device);
    CHECK(e->verdict == verdict, "event verdict %s = %s", vram_monitor_verdict_str(e->verdict),
          vram_monitor_verdict_str(verdict));
    CHECK(e->previous_verdict == previous, "event previous_verdict %s = %s",
          vram_monitor_verdict_str(e->previous_verdict), vram_monitor_verdict_str(previous));
    CHECK(e->message[0] != '\0', "event message is not empty");
    CHECK(e->timestamp_unix_ms > 1600000000000ULL, "event timestamp %" PRIu64 " is a Unix time in ms",
          e->timestamp_unix_ms);
    CHECK(!pthread_equal(e->thread, main_thread), "event delivered on the monitor thread, not the caller's");
}

/* A second check without any change: no event, counters stay (but checks_completed). */
static void expect_quiet_check(const char *what) {
    VramMonitorHealth before = get_health(m), after;
    size_t from = recorder_count(&rec);
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    after = get_health(m);
    CHECK(recorder_count(&rec) == from, "%s: a second check fires no new event (%zu new)", what,
          recorder_count(&rec) - from);
    CHECK(after.current_violations == before.current_violations && after.total_violations == before.total_violations,
          "%s: second check keeps current_violations %" PRIu64 " and total_violations %" PRIu64, what,
          after.current_violations, after.total_violations);
    CHECK(after.checks_completed == before.checks_completed + 1, "%s: checks_completed %" PRIu64 " -> %" PRIu64,
          what, before.checks_completed, after.checks_completed);
}

/* The change to `b` has been made; a check must report exactly one violation. */
static void expect_violation(const struct buf *b, int32_t verdict) {
    VramMonitorHealth before = get_health(m), after;
    VramMonitorCheckSummary s;
    struct recorded_event e;
    size_t from = recorder_count(&rec);
    size_t health_events;

    printf("-- '%s' is now %s\n", b->label, vram_monitor_verdict_str(verdict));
    memset(&s, 0xA5, sizeof s);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    after = get_health(m);

    CHECK(recorder_count_kind(&rec, from, VRAM_MONITOR_EVENT_KIND_VIOLATION, UINT64_MAX) == 1,
          "exactly one VIOLATION event (got %zu)",
          recorder_count_kind(&rec, from, VRAM_MONITOR_EVENT_KIND_VIOLATION, UINT64_MAX));
    if (recorder_find(&rec, from, VRAM_MONITOR_EVENT_KIND_VIOLATION, b->id, &e)) {
        check_event_fields(&e, b, VRAM_MONITOR_EVENT_KIND_VIOLATION, verdict, VRAM_MONITOR_VERDICT_RESIDENT);
        CHECK(!e.healthy, "violation event says unhealthy");
    } else {
        CHECK(false, "a VIOLATION event about id %" PRIu64 " ('%s')", b->id, b->label);
    }
    CHECK(recorder_count_kind(&rec, from, VRAM_MONITOR_EVENT_KIND_RECOVERED, UINT64_MAX) == 0 &&
              recorder_count_kind(&rec, from, VRAM_MONITOR_EVENT_KIND_CHECK_FAILED, UINT64_MAX) == 0,
          "no RECOVERED or CHECK_FAILED event");
    health_events = recorder_count_kind(&rec, from, VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED, UINT64_MAX);
    if (before.healthy) {
        CHECK(health_events == 1, "healthy -> unhealthy: one HEALTH_CHANGED event (got %zu)", health_events);
        if (recorder_find(&rec, from, VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED, UINT64_MAX, &e))
            CHECK(!e.healthy && e.registration_id == 0 && e.device == -1 && e.label[0] == '\0',
                  "HEALTH_CHANGED: healthy=%d id=%" PRIu64 " device=%d label='%s'", (int)e.healthy,
                  e.registration_id, (int)e.device, e.label);
    } else {
        CHECK(health_events == 0, "already unhealthy: no HEALTH_CHANGED event (got %zu)", health_events);
    }

    CHECK(!after.healthy, "health.healthy = false");
    CHECK(after.current_violations == before.current_violations + 1, "health.current_violations %" PRIu64 " -> %" PRIu64,
          before.current_violations, after.current_violations);
    CHECK(after.total_violations == before.total_violations + 1, "health.total_violations %" PRIu64 " -> %" PRIu64,
          before.total_violations, after.total_violations);
    CHECK(after.checks_completed == before.checks_completed + 1, "health.checks_completed %" PRIu64 " -> %" PRIu64,
          before.checks_completed, after.checks_completed);
    CHECK(after.registrations == before.registrations, "health.registrations stays %" PRIu64, after.registrations);
    CHECK(s.checked == after.registrations && s.violations == after.current_violations &&
              s.resident == s.checked - s.violations && s.check_failures == 0 && !s.healthy,
          "summary: checked %" PRIu64 " resident %" PRIu64 " violations %" PRIu64 " check_failures %" PRIu64
          " healthy %d",
          s.checked, s.resident, s.violations, s.check_failures, (int)s.healthy);
    expect_quiet_check(b->label);
}

static void alloc_and_register(struct buf *b, const char *label, size_t size, int device) {
    b->label = label;
    b->size = size;
    b->device = device;
    b->ptr = fake_alloc_or_die(FAKE_CUDA_DEVICE, size, device);
    b->id = register_ok(label, b->ptr, size);
}

static void check_json_verdict(const char *json, const struct buf *b, const char *verdict) {
    char key[64];
    const char *entry, *end, *v;
    snprintf(key, sizeof key, "{\"id\":%" PRIu64 ",", b->id);
    entry = strstr(json, key);
    end = entry ? strchr(entry, '}') : NULL;
    v = entry ? strstr(entry, "\"verdict\":\"") : NULL;
    CHECK(entry != NULL && end != NULL && v != NULL && v < end && strncmp(v + 11, verdict, strlen(verdict)) == 0 &&
              v[11 + strlen(verdict)] == '"',
          "JSON report: registration %" PRIu64 " ('%s') has \"verdict\":\"%s\"", b->id, b->label, verdict);
}

static void verdicts_of_registered_buffers(void) {
    struct buf managed, host, freed, replaced, moved, failing, quoted, vmm;
    VramMonitorCheckSummary s;
    VramMonitorHealth h;
    struct recorded_event e;
    size_t from, i, entries;
    char *json, *text;
    const char *p;
    int set_callback_result;

    section("checks: buffers changed underneath");
    recorder_init(&rec);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    set_callback_result = vram_monitor_set_callback(m, recorder_callback, &rec, NULL);
    REQUIRE(set_callback_result == VRAM_MONITOR_RESULT_OK, "vram_monitor_set_callback");

    alloc_and_register(&managed, "layer0.managed", 2 * MiB, 0);
    alloc_and_register(&host, "layer1.host", 2 * MiB, 0);
    alloc_and_register(&freed, "layer2.freed", 2 * MiB, 0);
    alloc_and_register(&replaced, "layer3.replaced", 2 * MiB, 0);
    alloc_and_register(&moved, "layer4.moved", 2 * MiB, 0);
    alloc_and_register(&failing, "layer5.query_fails", 2 * MiB, 0);
    alloc_and_register(&quoted, "say \"hi\"\nback\\slash\ttab", 3 * MiB, 1);
    vmm.label = "vmm.expandable_segment";
    vmm.size = 6 * MiB;
    vmm.device = 0;
    vmm.ptr = fake.reserve(vmm.size);
    REQUIRE(vmm.ptr != 0, "fake_cuda_reserve");
    for (i = 0; i < 3; i++)
        REQUIRE(fake.map(vmm.ptr + i * 2 * MiB, 2 * MiB, FAKE_CUDA_VMM_DEVICE, 0) == 0, "fake_cuda_map #%zu", i);
    vmm.id = register_ok(vmm.label, vmm.ptr, vmm.size);

    from = recorder_count(&rec);
    memset(&s, 0xA5, sizeof s);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.checked == 8 && s.resident == 8 && s.violations == 0 && s.check_failures == 0 && s.healthy,
          "all resident: checked %" PRIu64 " resident %" PRIu64 " violations %" PRIu64 " failures %" PRIu64
          " healthy %d",
          s.checked, s.resident, s.violations, s.check_failures, (int)s.healthy);
    CHECK(recorder_count(&rec) == from, "no event while everything is resident");
    h = get_health(m);
    CHECK(h.healthy && !h.last_check_failed && h.registrations == 8 && h.current_violations == 0 &&
              h.total_violations == 0 && h.checks_completed == 1 && h.checks_failed == 0,
          "health: healthy, 8 registrations, 0 violations, 1 check");
    CHECK(h.tracked_bytes == 6 * 2 * MiB + 3 * MiB + 6 * MiB, "health.tracked_bytes = %" PRIu64, h.tracked_bytes);
    CHECK(h.last_check_unix_ms > 1600000000000ULL, "health.last_check_unix_ms = %" PRIu64, h.last_check_unix_ms);

    /* VMM: the middle of three mappings goes away. */
    REQUIRE(fake.unmap(vmm.ptr + 2 * MiB) == 0, "fake_cuda_unmap(middle mapping)");
    expect_violation(&vmm, VRAM_MONITOR_VERDICT_NOT_MAPPED);

    REQUIRE(fake.set_kind(managed.ptr, FAKE_CUDA_MANAGED) == 0, "fake_cuda_set_kind(MANAGED)");
    expect_violation(&managed, VRAM_MONITOR_VERDICT_MANAGED);
    REQUIRE(fake.set_kind(host.ptr, FAKE_CUDA_HOST) == 0, "fake_cuda_set_kind(HOST)");
    expect_violation(&host, VRAM_MONITOR_VERDICT_HOST);
    REQUIRE(fake.free(freed.ptr) == 0, "fake_cuda_free");
    expect_violation(&freed, VRAM_MONITOR_VERDICT_NOT_MAPPED);
    REQUIRE(fake.reallocate(replaced.ptr) == 0, "fake_cuda_reallocate");
    expect_violation(&replaced, VRAM_MONITOR_VERDICT_REPLACED);
    REQUIRE(fake.set_device(moved.ptr, 1) == 0, "fake_cuda_set_device(1)");
    expect_violation(&moved, VRAM_MONITOR_VERDICT_WRONG_DEVICE);

    section("recovery: managed memory back to device memory");
    REQUIRE(fake.set_kind(managed.ptr, FAKE_CUDA_DEVICE) == 0, "fake_cuda_set_kind(DEVICE)");
    from = recorder_count(&rec);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(recorder_count_kind(&rec, from, 0, UINT64_MAX) == 1 &&
              recorder_find(&rec, from, VRAM_MONITOR_EVENT_KIND_RECOVERED, managed.id, &e),
          "exactly one event: RECOVERED for '%s'", managed.label);
    if (recorder_find(&rec, from, VRAM_MONITOR_EVENT_KIND_RECOVERED, managed.id, &e))
        check_event_fields(&e, &managed, VRAM_MONITOR_EVENT_KIND_RECOVERED, VRAM_MONITOR_VERDICT_RESIDENT,
                           VRAM_MONITOR_VERDICT_MANAGED);
    h = get_health(m);
    CHECK(h.current_violations == 5 && h.total_violations == 6 && !h.healthy,
          "after recovery: current_violations %" PRIu64 " (5), total_violations %" PRIu64 " (6), unhealthy",
          h.current_violations, h.total_violations);

    section("a failed driver query: CHECK_FAILED, not a violation");
    fake.fail_query_at(failing.ptr, 999);
    from = recorder_count(&rec);
    memset(&s, 0xA5, sizeof s);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.checked == 8 && s.check_failures == 1 && s.violations == 5 && s.resident == 2 && !s.healthy,
          "summary: checked %" PRIu64 " check_failures %" PRIu64 " violations %" PRIu64 " resident %" PRIu64
          " healthy %d",
          s.checked, s.check_failures, s.violations, s.resident, (int)s.healthy);
    CHECK(recorder_count_kind(&rec, from, 0, UINT64_MAX) == 1, "exactly one event (got %zu)",
          recorder_count_kind(&rec, from, 0, UINT64_MAX));
    if (recorder_find(&rec, from, VRAM_MONITOR_EVENT_KIND_CHECK_FAILED, failing.id, &e)) {
        check_event_fields(&e, &failing, VRAM_MONITOR_EVENT_KIND_CHECK_FAILED, VRAM_MONITOR_VERDICT_CHECK_FAILED,
                           VRAM_MONITOR_VERDICT_RESIDENT);
        CHECK(!e.healthy, "CHECK_FAILED event says unhealthy");
    } else {
        CHECK(false, "a CHECK_FAILED event (kind VRAM_MONITOR_EVENT_KIND_CHECK_FAILED) about '%s'", failing.label);
    }
    h = get_health(m);
    CHECK(h.last_check_failed && !h.healthy, "health: last_check_failed %d, healthy %d", (int)h.last_check_failed,
          (int)h.healthy);
    CHECK(h.checks_failed == 1 && h.current_violations == 5 && h.total_violations == 6,
          "health: checks_failed %" PRIu64 " (1), a failed query is no violation (current %" PRIu64
          ", total %" PRIu64 ")",
          h.checks_failed, h.current_violations, h.total_violations);
    from = recorder_count(&rec);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(recorder_count(&rec) == from && s.check_failures == 1,
          "still failing: counted in the summary (%" PRIu64 ") but no second CHECK_FAILED event (%zu new events)",
          s.check_failures, recorder_count(&rec) - from);

    section("JSON report");
    json = get_report(m, VRAM_MONITOR_REPORT_FORMAT_JSON);
    if (json != NULL) {
        printf("%s\n", json);
        CHECK(strncmp(json, "{\"health\":{", 11) == 0 && strstr(json, ",\"registrations\":[") != NULL,
              "JSON report has \"health\" and \"registrations\"");
        for (entries = 0, p = json; (p = strstr(p, "{\"id\":")) != NULL; p++) entries++;
        CHECK(entries == 8, "JSON report lists 8 registrations (%zu)", entries);
        check_json_verdict(json, &vmm, "NOT_MAPPED");
        check_json_verdict(json, &managed, "RESIDENT");
        check_json_verdict(json, &host, "HOST");
        check_json_verdict(json, &freed, "NOT_MAPPED");
        check_json_verdict(json, &replaced, "REPLACED");
        check_json_verdict(json, &moved, "WRONG_DEVICE");
        check_json_verdict(json, &failing, "RESIDENT"); /* the last verdict a query could give */
        check_json_verdict(json, &quoted, "RESIDENT");
        CHECK(strstr(json, "\"label\":\"say \\\"hi\\\"\\nback\\\\slash\\ttab\"") != NULL,
              "the label with quotes, newline, backslash and tab is escaped");
        CHECK(strchr(json, '\n') == NULL && strchr(json, '\t') == NULL, "no raw newline or tab in the JSON");
        CHECK(strstr(json, "\"healthy\":false") != NULL && strstr(json, "\"last_check_failed\":true") != NULL &&
                  strstr(json, "\"current_violations\":5") != NULL,
              "JSON health: healthy false, last_check_failed true, current_violations 5");
        free(json);
    }
    text = get_report(m, VRAM_MONITOR_REPORT_FORMAT_TEXT);
    if (text != NULL) {
        printf("%s", text);
        CHECK(strstr(text, "WRONG_DEVICE") != NULL && strstr(text, "REPLACED") != NULL,
              "text report names the verdicts");
        free(text);
    }

    section("unregistering the bad buffers makes the monitor healthy again");
    CHECK_RESULT(vram_monitor_unregister(m, vmm.id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, host.id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, freed.id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, replaced.id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, moved.id), VRAM_MONITOR_RESULT_OK);
    h = get_health(m);
    CHECK(h.current_violations == 0 && h.registrations == 3,
          "unregistering drops current_violations to %" PRIu64 " and registrations to %" PRIu64,
          h.current_violations, h.registrations);
    CHECK(!h.healthy, "still unhealthy until a check succeeds (the last check failed)");
    fake.fail_query_at(failing.ptr, 0);
    from = recorder_count(&rec);
    memset(&s, 0xA5, sizeof s);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.checked == 3 && s.resident == 3 && s.violations == 0 && s.check_failures == 0 && s.healthy,
          "summary: checked %" PRIu64 " resident %" PRIu64 " healthy %d", s.checked, s.resident, (int)s.healthy);
    h = get_health(m);
    CHECK(h.healthy && !h.last_check_failed && h.current_violations == 0 && h.total_violations == 6,
          "health: healthy %d, last_check_failed %d, current_violations %" PRIu64 ", total_violations %" PRIu64 " (6)",
          (int)h.healthy, (int)h.last_check_failed, h.current_violations, h.total_violations);
    CHECK(recorder_count_kind(&rec, from, VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED, UINT64_MAX) == 1 &&
              recorder_find(&rec, from, VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED, UINT64_MAX, &e) && e.healthy,
          "a HEALTH_CHANGED event with healthy = true arrived");
    CHECK(recorder_count_kind(&rec, from, VRAM_MONITOR_EVENT_KIND_VIOLATION, UINT64_MAX) == 0,
          "no VIOLATION event");
    expect_quiet_check("healthy again");

    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    m = NULL;
    CHECK(rec.max_active == 1, "callbacks ran one at a time (at most %d at once)", rec.max_active);
    CHECK(rec.dropped == 0, "recorder dropped no event");
    recorder_destroy(&rec);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    main_thread = pthread_self();
    printf("vram-monitor %s (header %d.%d.%d), LD_LIBRARY_PATH=%s\n", vram_monitor_version(),
           VRAM_MONITOR_VERSION_MAJOR, VRAM_MONITOR_VERSION_MINOR, VRAM_MONITOR_VERSION_PATCH,
           getenv("LD_LIBRARY_PATH") ? getenv("LD_LIBRARY_PATH") : "");
    registration_verdicts();
    verdicts_of_registered_buffers();
    return test_exit_code("test_verdicts");
}
