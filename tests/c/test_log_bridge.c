/*
 * test_log_bridge.c - vram_monitor_set_log_callback from C, and the stderr fallback filtered by
 * VRAM_MONITOR_LOG, against the fake driver.
 *
 *   test_log_bridge callback   records reach the host's callback (level, target, message with
 *                              its structured fields); after setting NULL they go to stderr
 *   test_log_bridge stderr     no callback: a violation's ERROR record is written to stderr
 *                              (run with VRAM_MONITOR_LOG unset: warnings and above)
 *   test_log_bridge silent     no callback, run with VRAM_MONITOR_LOG=off: stderr stays empty
 *
 * stderr is redirected to a temporary file around the checks and read back.
 */
#define _GNU_SOURCE
#include "test_support.h"

#include <unistd.h>

struct log_records {
    pthread_mutex_t mutex;
    int count;
    int errors;
    int violation_records; /* ERROR, target vram_monitor, naming the label, with fields */
    char last_target[64];
};

static void on_log(VramMonitorLogLevel level, const char *target, const char *message, void *user_data) {
    struct log_records *r = user_data;
    pthread_mutex_lock(&r->mutex);
    r->count++;
    if (level == VRAM_MONITOR_LOG_LEVEL_ERROR) r->errors++;
    if (level == VRAM_MONITOR_LOG_LEVEL_ERROR && target != NULL && strcmp(target, "vram_monitor") == 0 &&
        message != NULL && strstr(message, "log.weight") != NULL && strstr(message, "NOT_MAPPED") != NULL &&
        strstr(message, "error_kind=residency_violation") != NULL)
        r->violation_records++;
    if (target != NULL) snprintf(r->last_target, sizeof r->last_target, "%s", target);
    pthread_mutex_unlock(&r->mutex);
}

/* Registers fake device memory, frees it behind the monitor's back and checks: one violation,
 * which the library logs at ERROR level. */
static void provoke_violation(VramMonitor *m, const char *label) {
    unsigned long long base = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    uint64_t id = 0;
    VramMonitorCheckSummary summary;
    CHECK_RESULT(vram_monitor_register(m, as_ptr(base), MiB, label, &id), VRAM_MONITOR_RESULT_OK);
    CHECK(fake.free(base) == 0, "freeing '%s' behind the monitor's back", label);
    CHECK_RESULT(vram_monitor_check_now(m, &summary), VRAM_MONITOR_RESULT_OK);
    CHECK(summary.violations >= 1, "the check saw the violation (%" PRIu64 ")", summary.violations);
}

/* stderr to a temporary file; returns the saved descriptor. */
static int capture_stderr(FILE **file) {
    int saved;
    fflush(stderr);
    *file = tmpfile();
    REQUIRE(*file != NULL, "tmpfile()");
    saved = dup(STDERR_FILENO);
    REQUIRE(saved >= 0 && dup2(fileno(*file), STDERR_FILENO) >= 0, "redirecting stderr");
    return saved;
}

/* Restores stderr and returns what was written (malloc'ed). */
static char *release_stderr(FILE *file, int saved) {
    long size;
    char *text;
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    fseek(file, 0, SEEK_END);
    size = ftell(file);
    rewind(file);
    text = calloc((size_t)size + 1, 1);
    REQUIRE(text != NULL, "allocating %ld bytes", size);
    if (size > 0 && fread(text, 1, (size_t)size, file) != (size_t)size) text[0] = '\0';
    fclose(file);
    return text;
}

static VramMonitor *new_monitor(void) {
    VramMonitor *m = NULL;
    CHECK_RESULT(vram_monitor_new(3600u * 1000u, &m), VRAM_MONITOR_RESULT_OK);
    REQUIRE(m != NULL, "a monitor");
    fake_load();
    return m;
}

static void test_callback(void) {
    struct log_records records;
    VramMonitor *m;
    FILE *file;
    int saved;
    char *text;
    memset(&records, 0, sizeof records);
    pthread_mutex_init(&records.mutex, NULL);

    section("records reach the host's callback");
    vram_monitor_set_log_callback(on_log, &records);
    m = new_monitor();
    saved = capture_stderr(&file);
    provoke_violation(m, "log.weight");
    text = release_stderr(file, saved);
    pthread_mutex_lock(&records.mutex);
    CHECK(records.violation_records == 1,
          "one ERROR record from target vram_monitor names the violation with its fields (%d of %d records)",
          records.violation_records, records.count);
    CHECK(strcmp(records.last_target, "vram_monitor") == 0, "target '%s'", records.last_target);
    pthread_mutex_unlock(&records.mutex);
    CHECK(strstr(text, "log.weight") == NULL, "with a callback, nothing about it went to stderr");
    free(text);

    section("after vram_monitor_set_log_callback(NULL) records go to stderr again");
    vram_monitor_set_log_callback(NULL, NULL);
    saved = capture_stderr(&file);
    provoke_violation(m, "log.after");
    text = release_stderr(file, saved);
    pthread_mutex_lock(&records.mutex);
    CHECK(records.violation_records == 1, "the removed callback received nothing more");
    pthread_mutex_unlock(&records.mutex);
    CHECK(strstr(text, "[ERROR vram_monitor]") != NULL && strstr(text, "log.after") != NULL,
          "stderr has the ERROR record: %.200s", text);
    free(text);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    pthread_mutex_destroy(&records.mutex);
}

static void test_stderr(bool expect_output) {
    VramMonitor *m;
    FILE *file;
    int saved;
    char *text;
    const char *env = getenv("VRAM_MONITOR_LOG");
    section(expect_output ? "no callback: ERROR records go to stderr (VRAM_MONITOR_LOG unset)"
                          : "no callback, VRAM_MONITOR_LOG=off: stderr stays quiet");
    m = new_monitor();
    saved = capture_stderr(&file);
    provoke_violation(m, "stderr.weight");
    text = release_stderr(file, saved);
    if (expect_output) {
        CHECK(env == NULL || *env == '\0', "VRAM_MONITOR_LOG is unset (%s)", env ? env : "");
        CHECK(strstr(text, "[ERROR vram_monitor] CRITICAL:") != NULL && strstr(text, "stderr.weight") != NULL,
              "stderr: %.300s", text);
        CHECK(strstr(text, "[DEBUG") == NULL && strstr(text, "[TRACE") == NULL, "nothing below warning level");
    } else {
        CHECK(env != NULL && strcmp(env, "off") == 0, "VRAM_MONITOR_LOG=%s", env ? env : "(unset)");
        CHECK(text[0] == '\0', "stderr is empty: '%.300s'", text);
    }
    free(text);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "callback") == 0) test_callback();
    else if (strcmp(mode, "stderr") == 0) test_stderr(true);
    else if (strcmp(mode, "silent") == 0) test_stderr(false);
    else {
        fprintf(stderr, "usage: %s callback|stderr|silent\n", argv[0]);
        return 2;
    }
    return test_exit_code("test_log_bridge");
}
