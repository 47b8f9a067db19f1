/*
 * test_process_life.c - the library over a process's life, through the C API against the fake
 * libcuda:
 *
 *  - fork: in the child, every function on the parent's monitor returns FORKED at once (no
 *    hang: the monitor thread does not exist there), vram_monitor_free returns FORKED without
 *    waiting and without running the user data's finaliser; a new monitor in the child works;
 *    the parent's monitor is unaffected. Also a fork from inside a callback (the child's only
 *    thread is a copy of the monitor thread).
 *  - exit without vram_monitor_free: a process that returns from main (or calls exit() from
 *    another thread) while two monitors check every millisecond exits cleanly with status 0,
 *    also when the driver answers CUDA_ERROR_DEINITIALIZED during exit (CHECK_FAILED events).
 *  - vram_monitor_free right after vram_monitor_new (200 times, also with a 1 ms interval, a
 *    callback, a registration);
 *  - vram_monitor_free while a sweep is blocked in a slow driver query (500 ms per query): it
 *    waits for at most the queries of the pacing slice in progress (one query with slice 1).
 *
 * The exit scenarios run this program again as a child: test_process_life exit-return |
 * exit-from-thread.
 */
#define _GNU_SOURCE
#include "test_support.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- fork ---------------------------------------------------------------------------------- */

static atomic_int parent_frees;
static void parent_free(void *user_data) {
    (void)user_data;
    atomic_fetch_add(&parent_frees, 1);
}
static void quiet_event(const VramMonitorEvent *event, void *user_data) {
    (void)event;
    (void)user_data;
}

/* Runs in the forked child: returns the number of failed checks (the exit status). */
static int forked_child_checks(VramMonitor *m, unsigned long long dev, uint64_t id, bool own_monitor) {
    uint64_t out = 0x5e5e;
    VramMonitorHealth h;
    VramMonitorCheckSummary s;
    size_t len = 0;
    char buf[64];
    VramMonitor *fresh = NULL;
    int failures_before = atomic_load(&test_failures);

    alarm(30); /* a hang becomes SIGALRM, which the parent reports */
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "child", &out), VRAM_MONITOR_RESULT_FORKED);
    CHECK(out == 0x5e5e, "child: *out_id untouched");
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_FORKED);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_FORKED);
    CHECK_RESULT(vram_monitor_health(m, &h), VRAM_MONITOR_RESULT_FORKED);
    CHECK_RESULT(vram_monitor_report(m, VRAM_MONITOR_REPORT_FORMAT_JSON, buf, sizeof buf, &len), VRAM_MONITOR_RESULT_FORKED);
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 5), VRAM_MONITOR_RESULT_FORKED);
    CHECK_RESULT(vram_monitor_set_pacing(m, 1, 0), VRAM_MONITOR_RESULT_FORKED);
    CHECK_RESULT(vram_monitor_set_callback(m, quiet_event, NULL, NULL), VRAM_MONITOR_RESULT_FORKED);
    /* The parent's endpoint (the handle owns it) is neither started again nor joined here. */
    CHECK_RESULT(vram_monitor_serve_http(m, "127.0.0.1:0", NULL), VRAM_MONITOR_RESULT_FORKED);
    CHECK_RESULT(vram_monitor_stop_http(m), VRAM_MONITOR_RESULT_FORKED);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_FORKED);
    CHECK(atomic_load(&parent_frees) == 0, "child: the parent's user data finaliser did not run in the child");
    CHECK(strcmp(vram_monitor_result_str(VRAM_MONITOR_RESULT_FORKED), "unknown result code") != 0,
          "child: FORKED has a description: \"%s\"", vram_monitor_result_str(VRAM_MONITOR_RESULT_FORKED));
    /* A monitor of the child's own works, when the fork did not catch the parent's monitor
     * thread holding a lock: inside the driver (the fake's mutex; the real driver is not
     * fork-safe at all) or initialising NVML in its first check. See docs/reliability.md. */
    if (!own_monitor) {
        fflush(stdout);
        return atomic_load(&test_failures) - failures_before;
    }
    CHECK_RESULT(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &fresh), VRAM_MONITOR_RESULT_OK);
    if (fresh != NULL) {
        out = 0;
        CHECK_RESULT(vram_monitor_register(fresh, as_ptr(dev), MiB, "child's own", &out), VRAM_MONITOR_RESULT_OK);
        CHECK_RESULT(vram_monitor_check_now(fresh, &s), VRAM_MONITOR_RESULT_OK);
        CHECK(s.checked == 1 && s.resident == 1, "child: its own monitor checks (checked %" PRIu64 ")", s.checked);
        CHECK_RESULT(vram_monitor_free(fresh), VRAM_MONITOR_RESULT_OK);
    }
    fflush(stdout);
    fflush(stderr);
    return atomic_load(&test_failures) - failures_before;
}

/* Leaves a forked child. The parent's monitor is leaked there by design (FORKED): under
 * valgrind's memcheck the parent's thread's memory is "definitely lost" in the child, which
 * would fail the run. So under valgrind the child ends by exec'ing a shell that exits with the
 * status: memcheck checks for leaks at exit, not at exec. */
static void child_exit(int status) {
#ifdef TEST_HAVE_HELGRIND_H
    if (RUNNING_ON_VALGRIND) {
        char code[16];
        snprintf(code, sizeof code, "exit %d", status);
        execl("/bin/sh", "sh", "-c", code, (char *)NULL);
    }
#endif
    _exit(status);
}

static void wait_child(pid_t pid, const char *what) {
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid, "waitpid(%s)", what);
    if (WIFSIGNALED(status))
        CHECK(false, "%s: killed by signal %d%s", what, WTERMSIG(status), WTERMSIG(status) == SIGALRM ? " (hung)" : "");
    else
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s exited with status %d (its failed checks)", what,
              WEXITSTATUS(status));
}

static void fork_child_gets_forked(void) {
    VramMonitor *m = NULL;
    unsigned long long dev;
    uint64_t id = 0;
    VramMonitorCheckSummary s;
    pid_t pid;
    int i;

    section("fork: the child gets FORKED from the parent's monitor, never a hang");
    REQUIRE(vram_monitor_new(1, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new(1 ms)");
    CHECK_RESULT(vram_monitor_set_callback(m, quiet_event, NULL, parent_free), VRAM_MONITOR_RESULT_OK);
    dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "parent", &id), VRAM_MONITOR_RESULT_OK);
    /* Serving HTTP: its thread is the parent's, and free in the child must not wait for it. */
    CHECK_RESULT(vram_monitor_serve_http(m, "127.0.0.1:0", NULL), VRAM_MONITOR_RESULT_OK);
    /* Fork several times while the monitor thread checks every millisecond... */
    for (i = 0; i < 5; i++) {
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        REQUIRE(pid >= 0, "fork");
        if (pid == 0) child_exit(forked_child_checks(m, dev, id, false));
        wait_child(pid, "forked child");
        sleep_ms(3);
    }
    /* ...and once while it waits between checks: then the child can also start its own. */
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 60000), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) child_exit(forked_child_checks(m, dev, id, true));
    wait_child(pid, "forked child with a monitor of its own");
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.checked == 1 && s.resident == 1, "the parent's monitor is unaffected (checked %" PRIu64 ")", s.checked);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&parent_frees) == 1, "the parent's user data freed once, in the parent (%d)", atomic_load(&parent_frees));
}

struct forking_callback {
    VramMonitor *m;
    atomic_int forked;
    pid_t child;
};

static void fork_in_callback(const VramMonitorEvent *event, void *user_data) {
    struct forking_callback *f = user_data;
    if (event->kind != VRAM_MONITOR_EVENT_KIND_VIOLATION || atomic_exchange(&f->forked, 1)) return;
    fflush(stdout);
    fflush(stderr);
    f->child = fork();
    if (f->child == 0) {
        VramMonitorHealth h;
        int bad = 0;
        alarm(30);
        /* The only thread here is a copy of the monitor thread. */
        if (vram_monitor_check_now(f->m, NULL) != VRAM_MONITOR_RESULT_FORKED) bad++;
        if (vram_monitor_health(f->m, &h) != VRAM_MONITOR_RESULT_FORKED) bad++;
        if (vram_monitor_free(f->m) != VRAM_MONITOR_RESULT_FORKED) bad++;
        child_exit(bad);
    }
    CALLBACK_DONE();
}

static void fork_from_a_callback(void) {
    static struct forking_callback f;
    VramMonitor *m = NULL;
    unsigned long long dev;
    uint64_t id = 0;

    section("fork from inside a callback");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    f.m = m;
    CHECK_RESULT(vram_monitor_set_callback(m, fork_in_callback, &f, NULL), VRAM_MONITOR_RESULT_OK);
    dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(dev), MiB, "x", &id), VRAM_MONITOR_RESULT_OK);
    REQUIRE(fake.free(dev) == 0, "fake_cuda_free");
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    LIBRARY_RETURNED();
    REQUIRE(atomic_load(&f.forked) == 1 && f.child > 0, "the callback forked");
    wait_child(f.child, "child forked by the callback (check_now, health, free -> FORKED)");
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
}

/* ---- exit without vram_monitor_free ------------------------------------------------------- */

static VramMonitor *leaked[2]; /* reachable at exit: leak checkers see them as still in use */
static atomic_int exit_check_failed_events;
static atomic_int exiting;

static void exit_event(const VramMonitorEvent *event, void *user_data) {
    (void)user_data;
    if (atomic_load(&exiting) && event->kind == VRAM_MONITOR_EVENT_KIND_CHECK_FAILED)
        atomic_fetch_add(&exit_check_failed_events, 1);
}

/* Runs during exit(): the driver deinitialises (as libcuda's own exit handler does), and the
 * monitors, still running, meet CUDA_ERROR_DEINITIALIZED. */
static void driver_goes_away(void) {
    double deadline = now_ms() + 5000;
    atomic_store(&exiting, 1);
    fake.set_query_result(4);
    while (atomic_load(&exit_check_failed_events) == 0 && now_ms() < deadline) sleep_ms(1);
    printf("exit: %d CHECK_FAILED events (CUDA_ERROR_DEINITIALIZED) during exit\n", atomic_load(&exit_check_failed_events));
    fflush(stdout);
}

static void *exit_thread(void *arg) {
    (void)arg;
    sleep_ms(30);
    exit(0);
}

static int exit_without_free(bool from_thread) {
    unsigned long long buf[4];
    uint64_t id = 0;
    int i, k;
    pthread_t thread;

    for (k = 0; k < 2; k++) {
        REQUIRE(vram_monitor_new(1, &leaked[k]) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new(1 ms)");
        if (k == 0) fake_load();
        REQUIRE(vram_monitor_set_callback(leaked[k], exit_event, NULL, NULL) == VRAM_MONITOR_RESULT_OK, "set_callback");
    }
    for (i = 0; i < 4; i++) {
        buf[i] = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
        REQUIRE(vram_monitor_register(leaked[i % 2], as_ptr(buf[i]), MiB, "at exit", &id) == VRAM_MONITOR_RESULT_OK,
                "register");
    }
    REQUIRE(fake.set_kind(buf[0], FAKE_CUDA_MANAGED) == 0, "a violation in flight");
    atexit(driver_goes_away);
    sleep_ms(20);
    printf("exit: leaving without vram_monitor_free (%s)\n", from_thread ? "exit() from another thread" : "return from main");
    fflush(stdout);
    if (from_thread) {
        REQUIRE(pthread_create(&thread, NULL, exit_thread, NULL) == 0, "pthread_create");
        for (;;) sleep_ms(1000);
    }
    return 0;
}

static void run_exit_child(const char *self, const char *scenario) {
    char command[4200], line[512];
    bool saw_leaving = false, saw_deinit = false;
    FILE *p;
    int status;

    snprintf(command, sizeof command, "'%s' %s 2>&1", self, scenario);
    p = popen(command, "r");
    REQUIRE(p != NULL, "popen(%s)", command);
    while (fgets(line, sizeof line, p) != NULL) {
        printf("     child: %s", line);
        if (strstr(line, "exit: leaving without vram_monitor_free") != NULL) saw_leaving = true;
        if (strstr(line, "CHECK_FAILED events (CUDA_ERROR_DEINITIALIZED) during exit") != NULL && strncmp(line, "exit: 0 ", 8) != 0)
            saw_deinit = true;
    }
    status = pclose(p);
    CHECK(saw_leaving, "%s: the child got to its exit", scenario);
    CHECK(saw_deinit, "%s: the monitors met CUDA_ERROR_DEINITIALIZED during exit and reported CHECK_FAILED", scenario);
    CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "%s: the process exited cleanly with status 0 (wait status 0x%x)", scenario, (unsigned)status);
}

static void exit_scenarios(void) {
    char self[4096];
    ssize_t n;
    section("a process that exits without vram_monitor_free");
    n = readlink("/proc/self/exe", self, sizeof self - 1);
    REQUIRE(n > 0, "readlink(/proc/self/exe)");
    self[n] = '\0';
    run_exit_child(self, "exit-return");
    run_exit_child(self, "exit-from-thread");
}

/* ---- free right after new ----------------------------------------------------------------- */

static atomic_int quick_frees;
static void quick_free(void *user_data) {
    (void)user_data;
    atomic_fetch_add(&quick_frees, 1);
}

static void free_right_after_new(void) {
    VramMonitor *m;
    unsigned long long dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    uint64_t id;
    int i, bad_new = 0, bad_free = 0, bad_register = 0;
    double started = now_ms();

    section("vram_monitor_free right after vram_monitor_new (200 times each way)");
    for (i = 0; i < 200; i++) {
        m = NULL;
        if (vram_monitor_new(i % 2 ? 1 : VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) != VRAM_MONITOR_RESULT_OK) {
            bad_new++;
            continue;
        }
        if (i % 4 >= 2) {
            vram_monitor_set_callback(m, quiet_event, NULL, quick_free);
            if (vram_monitor_register(m, as_ptr(dev), MiB, "quick", &id) != VRAM_MONITOR_RESULT_OK) bad_register++;
        }
        if (vram_monitor_free(m) != VRAM_MONITOR_RESULT_OK) bad_free++;
    }
    CHECK(bad_new == 0 && bad_free == 0 && bad_register == 0, "200 new/free pairs: %d failed new, %d failed free, %d failed register",
          bad_new, bad_free, bad_register);
    CHECK(atomic_load(&quick_frees) == 100, "each of the 100 callbacks' user data freed once (%d)", atomic_load(&quick_frees));
    printf("     200 new/free pairs took %.0f ms\n", now_ms() - started);
}

/* ---- free while a sweep is blocked in a slow driver query --------------------------------- */

static void free_during_blocked_sweep(unsigned slice, unsigned registrations) {
    VramMonitor *m = NULL;
    unsigned long long queries_at_free, queries_after, q0;
    unsigned i;
    uint64_t id;
    double deadline, started, took;
    const unsigned delay_us = 500000;

    printf("-- pacing slice %u, %u registrations in %u allocations, every query takes %u ms\n", slice, registrations,
           registrations, delay_us / 1000);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    CHECK_RESULT(vram_monitor_set_pacing(m, slice, 0), VRAM_MONITOR_RESULT_OK);
    for (i = 0; i < registrations; i++) {
        unsigned long long b = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
        CHECK_RESULT(vram_monitor_register(m, as_ptr(b), MiB, "slow", &id), VRAM_MONITOR_RESULT_OK);
    }
    fake.set_query_delay_us(delay_us);
    q0 = fake.pointer_queries();
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 1), VRAM_MONITOR_RESULT_OK);
    deadline = now_ms() + 10000;
    while (fake.pointer_queries() == q0 && now_ms() < deadline) sleep_ms(1);
    REQUIRE(fake.pointer_queries() > q0, "a sweep is in a slow query");
    queries_at_free = fake.pointer_queries();
    started = now_ms();
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    took = now_ms() - started;
    queries_after = fake.pointer_queries();
    fake.set_query_delay_us(0);
    printf("     vram_monitor_free took %.0f ms; %llu queries started after it was called\n", took,
           queries_after - queries_at_free);
    /* One query may start between reading the counter and the stop flag being seen. */
    CHECK(queries_after - queries_at_free <= slice, "at most one slice (%u) of queries started after free was called (%llu)",
          slice, queries_after - queries_at_free);
}

int main(int argc, char **argv) {
    VramMonitor *boot = NULL;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "exit-return") == 0) return exit_without_free(false);
    if (argc > 1 && strcmp(argv[1], "exit-from-thread") == 0) return exit_without_free(true);

    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &boot) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    fake_load();
    CHECK_RESULT(vram_monitor_free(boot), VRAM_MONITOR_RESULT_OK);

    fork_child_gets_forked();
    fork_from_a_callback();
    exit_scenarios();
    free_right_after_new();
    section("vram_monitor_free while a sweep is blocked in a slow driver query");
    free_during_blocked_sweep(1, 4);
    free_during_blocked_sweep(2, 6);
    return test_exit_code("test_process_life");
}
