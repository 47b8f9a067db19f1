/*
 * test_stall.c - stall detection through the C API against the fake libcuda: the limits'
 * range (refused with INVALID_ARGUMENT, changing nothing), a driver query held until the
 * test releases it (stalled, unhealthy, one HEALTH_CHANGED from the watchdog thread, and
 * CALLED_FROM_CALLBACK for check_now there), and the stall ending by itself on release.
 */
#define _GNU_SOURCE
#include "test_support.h"

#include <pthread.h>
#include <unistd.h>


static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static int stalled_events, recovered_events, stalled_on_watchdog, check_now_from_watchdog = -1;
static VramMonitor *monitor;

static void on_event(const VramMonitorEvent *e, void *user_data) {
    char name[32] = "";
    (void)user_data;
    if (e->kind != VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED) return;
    pthread_getname_np(pthread_self(), name, sizeof name);
    pthread_mutex_lock(&seen_lock);
    if (!e->healthy && strstr(e->message, "stalled") != NULL) {
        stalled_events++;
        stalled_on_watchdog = strcmp(name, "vram-monitor-wa") == 0; /* "vram-monitor-watchdog", cut to 15 bytes */
        /* The watchdog's callback is a callback: waiting for the stuck thread would hang. */
        check_now_from_watchdog = (int)vram_monitor_check_now(monitor, NULL);
    } else if (e->healthy && strstr(e->message, "no longer stalled") != NULL) {
        recovered_events++;
    }
    pthread_mutex_unlock(&seen_lock);
}

static void *run_check(void *arg) {
    VramMonitorCheckSummary *summary = arg;
    CHECK_RESULT(vram_monitor_check_now(monitor, summary), VRAM_MONITOR_RESULT_OK);
    return NULL;
}

static int wait_until_stalled(int want) {
    VramMonitorStall s;
    for (int i = 0; i < 6000; i++) {
        if (vram_monitor_stall(monitor, &s) == VRAM_MONITOR_RESULT_OK && s.stalled == (want != 0)) return 1;
        usleep(10000);
    }
    return 0;
}

int main(void) {
    VramMonitorStall s;
    VramMonitorHealth h;
    VramMonitorCheckSummary summary;
    pthread_t checker;
    uint64_t id;

    CHECK_RESULT(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &monitor), VRAM_MONITOR_RESULT_OK);
    fake_load();

    section("limits");
    CHECK_RESULT(vram_monitor_stall(monitor, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_stall(NULL, &s), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_stall(monitor, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(!s.stalled && !s.check_in_progress, "a new monitor is not stalled");
    CHECK(s.deadline_ms == VRAM_MONITOR_DEFAULT_STALL_DEADLINE_MS && s.grace_ms == VRAM_MONITOR_DEFAULT_STALL_GRACE_MS,
          "the defaults are in force (%llu, %llu)", (unsigned long long)s.deadline_ms, (unsigned long long)s.grace_ms);
    CHECK_RESULT(vram_monitor_set_stall_limits(monitor, 0, 1000), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_set_stall_limits(monitor, 1000, 0), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_set_stall_limits(monitor, UINT64_MAX, 1000), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_set_stall_limits(monitor, 1000, 2592000001ull), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_set_pacing(monitor, 256, 100000), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_set_stall_limits(monitor, 100, 1000), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_stall(monitor, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.deadline_ms == VRAM_MONITOR_DEFAULT_STALL_DEADLINE_MS && s.grace_ms == VRAM_MONITOR_DEFAULT_STALL_GRACE_MS,
          "refused limits changed nothing");
    CHECK_RESULT(vram_monitor_set_pacing(monitor, VRAM_MONITOR_DEFAULT_SLICE_QUERIES, VRAM_MONITOR_DEFAULT_PAUSE_US), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_set_stall_limits(monitor, 200, 60000), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_set_pacing(monitor, 256, 200000), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);

    section("a driver query that does not return");
    CHECK_RESULT(vram_monitor_set_callback(monitor, on_event, NULL, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(monitor, as_ptr(fake_alloc_or_die(FAKE_CUDA_DEVICE, 1 << 20, 0)), 1 << 20, "w", &id),
                 VRAM_MONITOR_RESULT_OK);
    fake.hold_queries(1);
    REQUIRE(pthread_create(&checker, NULL, run_check, &summary) == 0, "starting the checking thread");
    CHECK(wait_until_stalled(1), "the monitor becomes stalled");
    CHECK_RESULT(vram_monitor_stall(monitor, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.check_in_progress && s.last_check_started_unix_ms > 0, "a check is in progress");
    CHECK(fake.held_queries() == 1, "its query is held in the driver");
    CHECK_RESULT(vram_monitor_health(monitor, &h), VRAM_MONITOR_RESULT_OK);
    CHECK(!h.healthy, "a stalled monitor is unhealthy");
    for (int i = 0; i < 6000; i++) {
        pthread_mutex_lock(&seen_lock);
        int n = stalled_events;
        pthread_mutex_unlock(&seen_lock);
        if (n > 0) break;
        usleep(10000);
    }
    pthread_mutex_lock(&seen_lock);
    CHECK(stalled_events == 1, "one HEALTH_CHANGED for the stall (%d)", stalled_events);
    CHECK(stalled_on_watchdog, "delivered on the watchdog thread");
    CHECK(check_now_from_watchdog == VRAM_MONITOR_RESULT_CALLED_FROM_CALLBACK,
          "check_now from the watchdog's callback is CALLED_FROM_CALLBACK (%d)", check_now_from_watchdog);
    pthread_mutex_unlock(&seen_lock);

    section("released");
    fake.hold_queries(0);
    pthread_join(checker, NULL);
    CHECK(summary.healthy, "the held check completes healthy");
    CHECK(wait_until_stalled(0), "no longer stalled");
    CHECK_RESULT(vram_monitor_health(monitor, &h), VRAM_MONITOR_RESULT_OK);
    CHECK(h.healthy, "healthy again");
    pthread_mutex_lock(&seen_lock);
    CHECK(recovered_events == 1, "one HEALTH_CHANGED for the end of the stall (%d)", recovered_events);
    pthread_mutex_unlock(&seen_lock);
    CHECK_RESULT(vram_monitor_free(monitor), VRAM_MONITOR_RESULT_OK);
    return test_exit_code("test_stall");
}
