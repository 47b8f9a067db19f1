/*
 * test_driver_faults.c - a missing, incomplete, stub or failing CUDA driver, through the C API.
 *
 * One program, one scenario per run (ctest runs each with its own LD_LIBRARY_PATH/env):
 *   no-driver        LD_LIBRARY_PATH = an empty folder: vram_monitor_new -> DRIVER_NOT_FOUND.
 *                    Exits 77 (skipped) where `ldconfig -p` lists a system libcuda.
 *   missing-symbol   the fake built without cuPointerGetAttributes -> DRIVER_SYMBOL_MISSING.
 *   stub             FAKE_CUDA_INIT_RESULT=34 (cuInit says "stub library") -> DRIVER_INIT_FAILED.
 *   unknown-code     every query returns 987654, a code no CUDA header knows: check_now is OK but
 *                    counts a failure, a CHECK_FAILED event names the code, health is unhealthy,
 *                    register returns DRIVER_ERROR; after clearing, healthy again.
 *   error-mid-sweep  3 registrations, the middle one's query fails: the other two are still
 *                    checked (checked 3, check_failures 1).
 */
#define _GNU_SOURCE
#include "test_support.h"

#include <ctype.h>
#include <sys/wait.h>

#define SKIPPED 77

static VramMonitor *const SENTINEL_MONITOR = (VramMonitor *)(uintptr_t)0x5e5e;

/* Whether the loader cache lists a libcuda (then "no driver" cannot be arranged here). */
static bool system_libcuda(char *found, size_t cap) {
    static const char *const commands[] = {"/sbin/ldconfig -p 2>/dev/null", "/usr/sbin/ldconfig -p 2>/dev/null",
                                           "ldconfig -p 2>/dev/null"};
    size_t i;
    for (i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        char line[4096];
        bool hit = false;
        int status;
        FILE *p = popen(commands[i], "r");
        if (p == NULL) continue;
        while (fgets(line, sizeof line, p) != NULL) {
            const char *s = line;
            while (isspace((unsigned char)*s)) s++;
            if (!hit && (strncmp(s, "libcuda.so", 10) == 0 || strncmp(s, "libcuda64", 9) == 0)) {
                hit = true;
                snprintf(found, cap, "%s", s);
                found[strcspn(found, "\n")] = '\0';
            }
        }
        status = pclose(p);
        if (hit) return true;
        if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) return false; /* ldconfig ran */
    }
    return false;
}

static void expect_new_fails(int32_t expected) {
    VramMonitor *m = SENTINEL_MONITOR;
    CHECK_RESULT(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m), expected);
    CHECK(m == SENTINEL_MONITOR, "*out_monitor untouched on failure");
    CHECK_RESULT(vram_monitor_new(1000, &m), expected); /* the driver's answer is kept, and given again */
    CHECK(m == SENTINEL_MONITOR, "*out_monitor untouched on the second failure");
    /* The functions that need no monitor still work. */
    CHECK(strcmp(vram_monitor_result_str(expected), "unknown result code") != 0, "result_str(%d) = \"%s\"",
          (int)expected, vram_monitor_result_str(expected));
    CHECK(vram_monitor_version() != NULL && vram_monitor_version()[0] != '\0', "vram_monitor_version() = \"%s\"",
          vram_monitor_version());
    CHECK_RESULT(vram_monitor_free(NULL), VRAM_MONITOR_RESULT_OK);
}

static int no_driver(void) {
    char found[4096] = "";
    section("no libcuda anywhere: DRIVER_NOT_FOUND");
    if (system_libcuda(found, sizeof found)) {
        printf("skipped: a system libcuda is installed (ldconfig -p: %s)\n", found);
        return SKIPPED;
    }
    {
        VramMonitor *m = SENTINEL_MONITOR;
        int32_t r = vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m);
        void *driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
        Dl_info info;
        if (driver == NULL) driver = dlopen("libcuda.so", RTLD_NOW | RTLD_NOLOAD);
        /* A libcuda outside the loader cache (a default folder): still a system driver. */
        if (r != VRAM_MONITOR_RESULT_DRIVER_NOT_FOUND && driver != NULL && dlsym(driver, "cuInit") != NULL &&
            dladdr(dlsym(driver, "cuInit"), &info) != 0 && info.dli_fname != NULL) {
            printf("skipped: a system libcuda is installed (%s, not in the ldconfig cache; vram_monitor_new -> %d)\n",
                   info.dli_fname, (int)r);
            if (r == VRAM_MONITOR_RESULT_OK) vram_monitor_free(m);
            return SKIPPED;
        }
        CHECK(r == VRAM_MONITOR_RESULT_DRIVER_NOT_FOUND, "vram_monitor_new -> %d (%s) (DRIVER_NOT_FOUND expected)",
              (int)r, vram_monitor_result_str(r));
        CHECK(driver == NULL, "no libcuda got loaded");
    }
    expect_new_fails(VRAM_MONITOR_RESULT_DRIVER_NOT_FOUND);
    return test_exit_code("test_driver_faults no-driver");
}

static int missing_symbol(void) {
    void *driver;
    section("a libcuda without cuPointerGetAttributes: DRIVER_SYMBOL_MISSING");
    expect_new_fails(VRAM_MONITOR_RESULT_DRIVER_SYMBOL_MISSING);
    driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    CHECK(driver != NULL, "the library did load the fake libcuda.so.1 (LD_LIBRARY_PATH=%s)",
          getenv("LD_LIBRARY_PATH") ? getenv("LD_LIBRARY_PATH") : "");
    if (driver != NULL) {
        CHECK(dlsym(driver, "cuPointerGetAttributes") == NULL && dlsym(driver, "cuInit") != NULL,
              "the loaded fake has cuInit but no cuPointerGetAttributes (the test runs the right variant)");
        dlclose(driver);
    }
    return test_exit_code("test_driver_faults missing-symbol");
}

static int stub(void) {
    const char *init = getenv("FAKE_CUDA_INIT_RESULT");
    section("cuInit fails (34, CUDA_ERROR_STUB_LIBRARY): DRIVER_INIT_FAILED");
    REQUIRE(init != NULL && strcmp(init, "34") == 0, "FAKE_CUDA_INIT_RESULT=34 in the environment (it is '%s')",
            init ? init : "<unset>");
    expect_new_fails(VRAM_MONITOR_RESULT_DRIVER_INIT_FAILED);
    return test_exit_code("test_driver_faults stub");
}

static int unknown_code(void) {
    static struct recorder rec;
    VramMonitor *m = NULL;
    VramMonitorCheckSummary s;
    VramMonitorHealth h;
    struct recorded_event e;
    unsigned long long a, b;
    uint64_t id = 0, id_b = 0x5e5e5e5e5e5e5e5eULL;
    size_t from;

    section("an error code no CUDA header knows (987654)");
    recorder_init(&rec);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    fake_load();
    CHECK_RESULT(vram_monitor_set_callback(m, recorder_callback, &rec, NULL), VRAM_MONITOR_RESULT_OK);
    a = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    b = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(a), 2 * MiB, "weights.a", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.healthy && s.resident == 1, "healthy before the fault");

    fake.set_query_result(987654);
    from = recorder_count(&rec);
    memset(&s, 0xA5, sizeof s);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.checked == 1 && s.check_failures == 1 && s.violations == 0 && s.resident == 0 && !s.healthy,
          "summary: checked %" PRIu64 " check_failures %" PRIu64 " violations %" PRIu64 " resident %" PRIu64
          " healthy %d",
          s.checked, s.check_failures, s.violations, s.resident, (int)s.healthy);
    if (recorder_find(&rec, from, VRAM_MONITOR_EVENT_KIND_CHECK_FAILED, id, &e)) {
        CHECK(e.verdict == VRAM_MONITOR_VERDICT_CHECK_FAILED, "event verdict %s (CHECK_FAILED)",
              vram_monitor_verdict_str(e.verdict));
        CHECK(strstr(e.message, "987654") != NULL, "the CHECK_FAILED message names the code: \"%s\"", e.message);
        CHECK(strcmp(e.label, "weights.a") == 0 && e.ptr == (uintptr_t)a && e.size == 2 * MiB,
              "the event names the registration");
    } else {
        CHECK(false, "a CHECK_FAILED event for the registration");
    }
    CHECK(recorder_count_kind(&rec, from, VRAM_MONITOR_EVENT_KIND_VIOLATION, UINT64_MAX) == 0,
          "a failed query is no VIOLATION");
    h = get_health(m);
    CHECK(!h.healthy && h.last_check_failed && h.checks_failed == 1 && h.current_violations == 0,
          "health: healthy %d, last_check_failed %d, checks_failed %" PRIu64 ", current_violations %" PRIu64,
          (int)h.healthy, (int)h.last_check_failed, h.checks_failed, h.current_violations);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(b), 2 * MiB, "weights.b", &id_b), VRAM_MONITOR_RESULT_DRIVER_ERROR);
    CHECK(id_b == 0x5e5e5e5e5e5e5e5eULL, "register: *out_id untouched on DRIVER_ERROR");

    fake.set_query_result(0);
    from = recorder_count(&rec);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.healthy && s.check_failures == 0 && s.resident == 1, "after clearing: healthy, no failure");
    h = get_health(m);
    CHECK(h.healthy && !h.last_check_failed && h.checks_failed == 1,
          "health: healthy %d, last_check_failed %d, checks_failed %" PRIu64 " (1)", (int)h.healthy,
          (int)h.last_check_failed, h.checks_failed);
    CHECK(recorder_find(&rec, from, VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED, UINT64_MAX, &e) && e.healthy,
          "a HEALTH_CHANGED (healthy) event");
    CHECK_RESULT(vram_monitor_register(m, as_ptr(b), 2 * MiB, "weights.b", &id_b), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    recorder_destroy(&rec);
    return test_exit_code("test_driver_faults unknown-code");
}

static int error_mid_sweep(void) {
    static struct recorder rec;
    VramMonitor *m = NULL;
    VramMonitorCheckSummary s;
    unsigned long long buf[3];
    uint64_t id[3];
    unsigned long long queries;
    size_t from, i;
    struct recorded_event e;
    static const char *const labels[3] = {"first", "middle", "last"};

    section("a query fails in the middle of a sweep: the rest are still checked");
    recorder_init(&rec);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    fake_load();
    CHECK_RESULT(vram_monitor_set_callback(m, recorder_callback, &rec, NULL), VRAM_MONITOR_RESULT_OK);
    for (i = 0; i < 3; i++) {
        buf[i] = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
        id[i] = 0;
        CHECK_RESULT(vram_monitor_register(m, as_ptr(buf[i]), 2 * MiB, labels[i], &id[i]), VRAM_MONITOR_RESULT_OK);
    }
    fake.fail_query_at(buf[1], 999);
    from = recorder_count(&rec);
    queries = fake.pointer_queries();
    memset(&s, 0xA5, sizeof s);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    queries = fake.pointer_queries() - queries;
    CHECK(s.checked == 3 && s.check_failures == 1 && s.resident == 2 && s.violations == 0 && !s.healthy,
          "summary: checked %" PRIu64 " (3), check_failures %" PRIu64 " (1), resident %" PRIu64 " (2), violations %" PRIu64,
          s.checked, s.check_failures, s.resident, s.violations);
    CHECK(queries >= 3, "the driver was asked about all three (%llu queries)", queries);
    CHECK(recorder_count_kind(&rec, from, VRAM_MONITOR_EVENT_KIND_CHECK_FAILED, UINT64_MAX) == 1 &&
              recorder_find(&rec, from, VRAM_MONITOR_EVENT_KIND_CHECK_FAILED, id[1], &e),
          "one CHECK_FAILED event, for the middle registration");

    /* The last one goes away while the middle one still fails: still judged. */
    REQUIRE(fake.free(buf[2]) == 0, "fake_cuda_free(last)");
    from = recorder_count(&rec);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.checked == 3 && s.check_failures == 1 && s.resident == 1 && s.violations == 1,
          "summary: checked %" PRIu64 ", check_failures %" PRIu64 ", resident %" PRIu64 ", violations %" PRIu64,
          s.checked, s.check_failures, s.resident, s.violations);
    CHECK(recorder_find(&rec, from, VRAM_MONITOR_EVENT_KIND_VIOLATION, id[2], &e) &&
              e.verdict == VRAM_MONITOR_VERDICT_NOT_MAPPED,
          "the registration after the failing one still gets its VIOLATION (NOT_MAPPED)");
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    recorder_destroy(&rec);
    return test_exit_code("test_driver_faults error-mid-sweep");
}

int main(int argc, char **argv) {
    const char *scenario = argc > 1 ? argv[1] : "";
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("scenario '%s', LD_LIBRARY_PATH=%s\n", scenario, getenv("LD_LIBRARY_PATH") ? getenv("LD_LIBRARY_PATH") : "");
    if (strcmp(scenario, "no-driver") == 0) return no_driver();
    if (strcmp(scenario, "missing-symbol") == 0) return missing_symbol();
    if (strcmp(scenario, "stub") == 0) return stub();
    if (strcmp(scenario, "unknown-code") == 0) return unknown_code();
    if (strcmp(scenario, "error-mid-sweep") == 0) return error_mid_sweep();
    fprintf(stderr, "usage: %s no-driver|missing-symbol|stub|unknown-code|error-mid-sweep\n", argv[0]);
    return 2;
}
