/*
 * test_host_lifecycle.c - the host's own lifecycle against the fake libcuda: what a server that
 * shuts down without stopping its threads first, or a process holding two copies of the
 * library, meets.
 *
 *  free-race      vram_monitor_free while other threads are inside calls on the same monitor:
 *                 free does not return while a register is held inside the driver's query; a
 *                 check_now in progress returns a real summary or CLOSED, never OK with zeros;
 *                 four threads calling register / unregister / health / report / check_now /
 *                 set_interval while free runs (100 rounds; 20 under valgrind) get only OK or
 *                 CLOSED; every call after free returned, a second free too, gets CLOSED; free
 *                 from a user-data finaliser run inside set_callback is refused.
 *  two-copies     a second copy of the library (another file, dlopen'ed RTLD_LOCAL) beside the
 *                 linked one: ids never collide, and one copy's id is unknown to the other.
 *  interval-flood set_interval_ms called flat out from two threads for 2 s: the periodic check
 *                 still runs and a violation is still reported.
 */
#define _GNU_SOURCE
#include "test_support.h"

#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

static bool under_valgrind(void) {
    const char *preload = getenv("LD_PRELOAD");
    return preload != NULL && strstr(preload, "valgrind") != NULL;
}

/* ---- free racing calls ----------------------------------------------------------------------- */

struct slow_register {
    VramMonitor *m;
    unsigned long long dev;
    VramMonitorResult result;
};

static void *register_slowly(void *arg) {
    struct slow_register *s = arg;
    uint64_t id = 0;
    s->result = vram_monitor_register(s->m, as_ptr(s->dev), MiB, "slow", &id);
    return NULL;
}

struct freeing {
    VramMonitor *m;
    atomic_int returned;
    VramMonitorResult result;
};

static void *free_it(void *arg) {
    struct freeing *f = arg;
    f->result = vram_monitor_free(f->m);
    atomic_store(&f->returned, 1);
    return NULL;
}

static void free_waits_for_a_register_in_a_slow_query(void) {
    struct slow_register s = {0};
    struct freeing f = {0};
    pthread_t registering, freeing;
    VramMonitorHealth h;
    uint64_t id = 0;

    section("free while a register is held inside the driver's query");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &s.m) == VRAM_MONITOR_RESULT_OK, "new");
    s.dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    fake.hold_queries(1);
    REQUIRE(pthread_create(&registering, NULL, register_slowly, &s) == 0, "pthread_create");
    /* Inside the driver's query, held there (the monitor holds no registration, so its own
     * thread asks nothing). No fixed sleep: on a loaded machine free could run first. */
    double deadline = now_ms() + 10000;
    while (fake.held_queries() == 0 && now_ms() < deadline) sleep_ms(1);
    REQUIRE(fake.held_queries() == 1, "the register is held in the driver's query");
    f.m = s.m;
    REQUIRE(pthread_create(&freeing, NULL, free_it, &f) == 0, "pthread_create");
    sleep_ms(100);
    CHECK(atomic_load(&f.returned) == 0, "free waits while a register is inside the library");
    fake.hold_queries(0);
    pthread_join(freeing, NULL);
    pthread_join(registering, NULL);
    CHECK_RESULT(f.result, VRAM_MONITOR_RESULT_OK);
    CHECK(s.result == VRAM_MONITOR_RESULT_OK, "the register in progress completed (%s)", vram_monitor_result_str(s.result));
    /* The handle is a tombstone now: every call answers CLOSED. */
    CHECK_RESULT(vram_monitor_register(s.m, as_ptr(s.dev), MiB, "late", &id), VRAM_MONITOR_RESULT_CLOSED);
    CHECK_RESULT(vram_monitor_health(s.m, &h), VRAM_MONITOR_RESULT_CLOSED);
    CHECK_RESULT(vram_monitor_check_now(s.m, NULL), VRAM_MONITOR_RESULT_CLOSED);
    CHECK_RESULT(vram_monitor_set_interval_ms(s.m, 5), VRAM_MONITOR_RESULT_CLOSED);
    CHECK_RESULT(vram_monitor_serve_http(s.m, "127.0.0.1:0", NULL), VRAM_MONITOR_RESULT_CLOSED);
    CHECK_RESULT(vram_monitor_free(s.m), VRAM_MONITOR_RESULT_CLOSED);
    fake.free(s.dev);
}

struct slow_check {
    VramMonitor *m;
    atomic_int started;
    VramMonitorResult result;
    VramMonitorCheckSummary summary;
};

static void *check_slowly(void *arg) {
    struct slow_check *c = arg;
    atomic_store(&c->started, 1);
    c->result = vram_monitor_check_now(c->m, &c->summary);
    return NULL;
}

static void free_during_check_now(void) {
    struct slow_check c;
    pthread_t thread;
    unsigned long long dev[3];
    uint64_t id;
    int i;

    section("free while a check_now is in progress (queries of 100 ms)");
    memset(&c, 0, sizeof c);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &c.m) == VRAM_MONITOR_RESULT_OK, "new");
    for (i = 0; i < 3; i++) {
        dev[i] = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
        REQUIRE(vram_monitor_register(c.m, as_ptr(dev[i]), MiB, "w", &id) == VRAM_MONITOR_RESULT_OK, "register");
    }
    fake.set_query_delay_us(100000);
    REQUIRE(pthread_create(&thread, NULL, check_slowly, &c) == 0, "pthread_create");
    while (!atomic_load(&c.started)) sleep_ms(1);
    sleep_ms(30);
    CHECK_RESULT(vram_monitor_free(c.m), VRAM_MONITOR_RESULT_OK);
    pthread_join(thread, NULL);
    fake.set_query_delay_us(0);
    CHECK(c.result == VRAM_MONITOR_RESULT_CLOSED || (c.result == VRAM_MONITOR_RESULT_OK && c.summary.checked == 3),
          "check_now during free: a real summary or CLOSED, never OK with zeros (%s, checked %" PRIu64 ")",
          vram_monitor_result_str(c.result), c.summary.checked);
    for (i = 0; i < 3; i++) fake.free(dev[i]);
}

struct hammer {
    VramMonitor *m;
    unsigned long long dev;
    int which;
    atomic_int *go;
    int unexpected;
    int calls;
};

static bool acceptable(VramMonitorResult r) { return r == VRAM_MONITOR_RESULT_OK || r == VRAM_MONITOR_RESULT_CLOSED; }

static void *hammer_calls(void *arg) {
    struct hammer *h = arg;
    VramMonitorHealth health;
    VramMonitorCheckSummary s;
    char buf[256];
    size_t len;
    uint64_t id;
    VramMonitorResult r = VRAM_MONITOR_RESULT_OK;
    while (!atomic_load(h->go)) sched_yield();
    for (;;) {
        switch (h->which) {
        case 0:
            r = vram_monitor_register(h->m, as_ptr(h->dev), 4096, "hammer", &id);
            if (r == VRAM_MONITOR_RESULT_OK) {
                r = vram_monitor_unregister(h->m, id);
            }
            break;
        case 1: r = vram_monitor_health(h->m, &health); break;
        case 2:
            r = vram_monitor_report(h->m, VRAM_MONITOR_REPORT_FORMAT_JSON, buf, sizeof buf, &len);
            if (r == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL) r = VRAM_MONITOR_RESULT_OK;
            break;
        default:
            r = vram_monitor_check_now(h->m, &s);
            if (r == VRAM_MONITOR_RESULT_OK) r = vram_monitor_set_interval_ms(h->m, 1 + (unsigned)(h->calls % 5));
            break;
        }
        h->calls++;
        if (r == VRAM_MONITOR_RESULT_CLOSED) return NULL;
        if (!acceptable(r)) {
            h->unexpected++;
            return NULL;
        }
    }
}

static void free_racing_four_threads(void) {
    int rounds = under_valgrind() ? 20 : 100, round, t, unexpected = 0, calls = 0;
    unsigned long long dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    char title[128];

    snprintf(title, sizeof title, "free while 4 threads call register/health/report/check_now (%d rounds)", rounds);
    section(title);
    for (round = 0; round < rounds; round++) {
        VramMonitor *m = NULL;
        struct hammer h[4];
        pthread_t threads[4];
        atomic_int go = 0;
        uint64_t id;
        REQUIRE(vram_monitor_new(1, &m) == VRAM_MONITOR_RESULT_OK, "new");
        REQUIRE(vram_monitor_register(m, as_ptr(dev), MiB, "weights", &id) == VRAM_MONITOR_RESULT_OK, "register");
        for (t = 0; t < 4; t++) {
            h[t] = (struct hammer){.m = m, .dev = dev, .which = t, .go = &go};
            REQUIRE(pthread_create(&threads[t], NULL, hammer_calls, &h[t]) == 0, "pthread_create");
        }
        atomic_store(&go, 1);
        sleep_ms((unsigned)(round % 7));
        CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
        for (t = 0; t < 4; t++) {
            pthread_join(threads[t], NULL);
            unexpected += h[t].unexpected;
            calls += h[t].calls;
        }
    }
    CHECK(unexpected == 0, "every call during the frees got OK or CLOSED (%d calls, %d other results)", calls, unexpected);
    fake.free(dev);
}

static VramMonitor *finaliser_monitor;
static VramMonitorResult finaliser_free_result = VRAM_MONITOR_RESULT_OK;
static void free_from_finaliser(void *user_data) {
    (void)user_data;
    finaliser_free_result = vram_monitor_free(finaliser_monitor);
}
static void quiet(const VramMonitorEvent *event, void *user_data) {
    (void)event;
    (void)user_data;
}

static void free_from_a_finaliser_inside_a_call(void) {
    section("free from a user-data finaliser that set_callback runs");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &finaliser_monitor) == VRAM_MONITOR_RESULT_OK, "new");
    CHECK_RESULT(vram_monitor_set_callback(finaliser_monitor, quiet, NULL, free_from_finaliser), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_set_callback(finaliser_monitor, NULL, NULL, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK(finaliser_free_result == VRAM_MONITOR_RESULT_CALLED_FROM_CALLBACK,
          "free inside set_callback's finaliser is refused instead of waiting for itself (%s)",
          vram_monitor_result_str(finaliser_free_result));
    CHECK_RESULT(vram_monitor_free(finaliser_monitor), VRAM_MONITOR_RESULT_OK);
}

/* ---- two copies of the library --------------------------------------------------------------- */

typedef VramMonitorResult (*new_fn)(uint32_t, VramMonitor **);
typedef VramMonitorResult (*register_fn)(VramMonitor *, const void *, size_t, const char *, uint64_t *);
typedef VramMonitorResult (*unregister_fn)(VramMonitor *, uint64_t);
typedef VramMonitorResult (*health_fn)(const VramMonitor *, VramMonitorHealth *);
typedef VramMonitorResult (*free_fn)(VramMonitor *);

static void two_copies(const char *library) {
    char copy[4096], command[12800];
    void *other;
    new_fn other_new;
    register_fn other_register;
    unregister_fn other_unregister;
    health_fn other_health;
    free_fn other_free;
    VramMonitor *mine = NULL, *theirs = NULL;
    uint64_t my_ids[3], their_ids[3];
    unsigned long long dev;
    VramMonitorHealth h;
    int i, j;

    section("two copies of the library in one process");
    /* Same file name in another folder: a second copy to the loader (which tells objects by
     * path), and still libvram_monitor.so to valgrind's suppressions. */
    snprintf(copy, sizeof copy, "/tmp/vram-monitor-copy-%ld/libvram_monitor.so", (long)getpid());
    snprintf(command, sizeof command, "mkdir -p \"$(dirname '%s')\" && cp '%s' '%s'", copy, library, copy);
    REQUIRE(system(command) == 0, "%s", command);
    other = dlopen(copy, RTLD_NOW | RTLD_LOCAL);
    REQUIRE(other != NULL, "dlopen(%s): %s", copy, dlerror());
    other_new = (new_fn)(uintptr_t)dlsym(other, "vram_monitor_new");
    other_register = (register_fn)(uintptr_t)dlsym(other, "vram_monitor_register");
    other_unregister = (unregister_fn)(uintptr_t)dlsym(other, "vram_monitor_unregister");
    other_health = (health_fn)(uintptr_t)dlsym(other, "vram_monitor_health");
    other_free = (free_fn)(uintptr_t)dlsym(other, "vram_monitor_free");
    REQUIRE(other_new && other_register && other_unregister && other_health && other_free, "the copy's functions");
    REQUIRE((void *)(uintptr_t)other_new != (void *)(uintptr_t)vram_monitor_new, "a second copy, not the same one");

    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &mine) == VRAM_MONITOR_RESULT_OK, "new (linked copy)");
    REQUIRE(other_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &theirs) == VRAM_MONITOR_RESULT_OK, "new (loaded copy)");
    dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    for (i = 0; i < 3; i++) {
        REQUIRE(vram_monitor_register(mine, as_ptr(dev), MiB, "mine", &my_ids[i]) == VRAM_MONITOR_RESULT_OK, "register");
        REQUIRE(other_register(theirs, as_ptr(dev), MiB, "theirs", &their_ids[i]) == VRAM_MONITOR_RESULT_OK, "register");
    }
    for (i = 0; i < 3; i++)
        for (j = 0; j < 3; j++)
            CHECK(my_ids[i] != their_ids[j], "ids differ between copies (%" PRIu64 " vs %" PRIu64 ")", my_ids[i], their_ids[j]);
    for (i = 0; i < 3; i++) {
        CHECK_RESULT(vram_monitor_unregister(mine, their_ids[i]), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
        CHECK_RESULT(other_unregister(theirs, my_ids[i]), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    }
    CHECK_RESULT(vram_monitor_health(mine, &h), VRAM_MONITOR_RESULT_OK);
    CHECK(h.registrations == 3, "the linked copy kept its 3 registrations (%" PRIu64 ")", h.registrations);
    CHECK_RESULT(other_health(theirs, &h), VRAM_MONITOR_RESULT_OK);
    CHECK(h.registrations == 3, "the loaded copy kept its 3 registrations (%" PRIu64 ")", h.registrations);
    CHECK_RESULT(other_free(theirs), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_free(mine), VRAM_MONITOR_RESULT_OK);
    /* The copy pinned itself (RTLD_NODELETE) when it created a monitor: dlclose leaves it. */
    dlclose(other);
    unlink(copy);
    *strrchr(copy, '/') = '\0';
    rmdir(copy);
    fake.free(dev);
}

/* ---- set_interval flood ---------------------------------------------------------------------- */

struct flood {
    VramMonitor *m;
    atomic_int stop;
    long calls;
};

static void *flood_intervals(void *arg) {
    struct flood *f = arg;
    while (!atomic_load(&f->stop)) {
        vram_monitor_set_interval_ms(f->m, 10);
        f->calls++;
    }
    return NULL;
}

static void interval_flood(void) {
    struct flood f[2];
    pthread_t threads[2];
    struct recorder rec;
    VramMonitor *m = NULL;
    VramMonitorHealth before, after;
    unsigned long long dev;
    uint64_t id;
    int t;
    bool seen;
    struct recorded_event violation;

    section("set_interval_ms flat out from two threads: the periodic check still runs");
    recorder_init(&rec);
    REQUIRE(vram_monitor_new(10, &m) == VRAM_MONITOR_RESULT_OK, "new");
    REQUIRE(vram_monitor_set_callback(m, recorder_callback, &rec, NULL) == VRAM_MONITOR_RESULT_OK, "set_callback");
    dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    REQUIRE(vram_monitor_register(m, as_ptr(dev), MiB, "flooded", &id) == VRAM_MONITOR_RESULT_OK, "register");
    for (t = 0; t < 2; t++) {
        f[t] = (struct flood){.m = m};
        REQUIRE(pthread_create(&threads[t], NULL, flood_intervals, &f[t]) == 0, "pthread_create");
    }
    sleep_ms(200);
    before = get_health(m);
    REQUIRE(fake.set_kind(dev, FAKE_CUDA_MANAGED) == 0, "the weights become managed");
    seen = recorder_wait_for(&rec, 0, VRAM_MONITOR_EVENT_KIND_VIOLATION, id, under_valgrind() ? 30000 : 2000, &violation);
    sleep_ms(under_valgrind() ? 1000 : 300);
    after = get_health(m);
    for (t = 0; t < 2; t++) {
        atomic_store(&f[t].stop, 1);
        pthread_join(threads[t], NULL);
    }
    CHECK(f[0].calls + f[1].calls > 1000, "the flood ran (%ld calls)", f[0].calls + f[1].calls);
    CHECK(seen, "the violation was reported during the flood");
    CHECK(after.checks_completed > before.checks_completed + 3,
          "periodic checks went on during the flood (%" PRIu64 " -> %" PRIu64 ")", before.checks_completed,
          after.checks_completed);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    recorder_destroy(&rec);
    fake.free(dev);
}

int main(int argc, char **argv) {
    VramMonitor *loader = NULL;
    Dl_info info;
    (void)argc;
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Loads the driver, so the fake's control API can be found. */
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &loader) == VRAM_MONITOR_RESULT_OK, "new");
    fake_load();
    REQUIRE(vram_monitor_free(loader) == VRAM_MONITOR_RESULT_OK, "free");

    free_waits_for_a_register_in_a_slow_query();
    free_during_check_now();
    free_racing_four_threads();
    free_from_a_finaliser_inside_a_call();
    REQUIRE(dladdr((void *)(uintptr_t)vram_monitor_new, &info) != 0 && info.dli_fname != NULL, "dladdr");
    two_copies(info.dli_fname);
    interval_flood();
    return test_exit_code(argv[0]);
}
