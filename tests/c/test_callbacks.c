/*
 * test_callbacks.c - the callback's threading contract, through the C API, against the fake
 * libcuda.
 *
 *  - the callback runs on the monitor's thread ("vram-monitor"), never the caller's, one call
 *    at a time;
 *  - inside it, check_now and free return CALLED_FROM_CALLBACK, while unregister (of the
 *    violating registration), register, health and set_interval_ms work;
 *  - the periodic thread finds a violation on its own (interval 20 ms);
 *  - free_user_data runs exactly once: when the callback is replaced (after a call in progress
 *    returns), or at vram_monitor_free; a NULL callback's user data is never freed;
 *  - no callback runs after vram_monitor_free returns, and free returns promptly, also while the
 *    monitor waits out a 60 s interval.
 */
#define _GNU_SOURCE
#include "test_support.h"

static pthread_t main_thread;

/* ---- 1. what a callback may call ------------------------------------------------------------ */

struct reentry {
    VramMonitor *m;
    uint64_t violating_id;
    unsigned long long spare; /* resident memory to register from inside the callback */
    bool done;
    int32_t r_check_now, r_free, r_unregister, r_register, r_health, r_interval;
    uint64_t new_id;
    VramMonitorHealth health;
    bool on_main_thread;
    char thread_name[32];
    atomic_int calls, active, max_active;
};

static void reentry_callback(const VramMonitorEvent *event, void *user_data) {
    struct reentry *x = user_data;
    int active = atomic_fetch_add(&x->active, 1) + 1;
    int max = atomic_load(&x->max_active);
    while (active > max && !atomic_compare_exchange_weak(&x->max_active, &max, active)) {
    }
    atomic_fetch_add(&x->calls, 1);
    printf("     callback: %s id=%" PRIu64 " verdict=%s\n",
           event->kind == VRAM_MONITOR_EVENT_KIND_VIOLATION ? "VIOLATION" : "other event", event->registration_id,
           vram_monitor_verdict_str(event->verdict));
    if (event->kind == VRAM_MONITOR_EVENT_KIND_VIOLATION && event->registration_id == x->violating_id && !x->done) {
        VramMonitorCheckSummary summary;
        x->done = true;
        x->on_main_thread = pthread_equal(pthread_self(), main_thread);
        if (pthread_getname_np(pthread_self(), x->thread_name, sizeof x->thread_name) != 0)
            snprintf(x->thread_name, sizeof x->thread_name, "<unknown>");
        x->r_check_now = vram_monitor_check_now(x->m, &summary);
        x->r_free = vram_monitor_free(x->m);
        x->r_unregister = vram_monitor_unregister(x->m, x->violating_id);
        x->r_register = vram_monitor_register(x->m, as_ptr(x->spare), MiB, "registered from a callback", &x->new_id);
        x->r_health = vram_monitor_health(x->m, &x->health);
        x->r_interval = vram_monitor_set_interval_ms(x->m, 45000);
    }
    atomic_fetch_sub(&x->active, 1);
    CALLBACK_DONE();
}

static void calls_from_inside_a_callback(void) {
    static struct reentry x;
    VramMonitor *m = NULL;
    unsigned long long victim;
    VramMonitorHealth h;
    uint64_t id = 0;

    section("inside a callback: check_now and free are refused, the rest works");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    fake_load();
    x.m = m;
    x.r_check_now = x.r_free = x.r_unregister = x.r_register = x.r_health = x.r_interval = -1;
    x.spare = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    victim = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(victim), 2 * MiB, "victim", &id), VRAM_MONITOR_RESULT_OK);
    x.violating_id = id;
    CHECK_RESULT(vram_monitor_set_callback(m, reentry_callback, &x, NULL), VRAM_MONITOR_RESULT_OK);
    REQUIRE(fake.free(victim) == 0, "fake_cuda_free(victim)");
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    LIBRARY_RETURNED();

    CHECK(x.done, "the callback ran for the violation before check_now returned");
    CHECK(!x.on_main_thread, "the callback ran on a thread other than the caller's");
    CHECK(strcmp(x.thread_name, "vram-monitor") == 0, "the callback's thread is named '%s' (vram-monitor)",
          x.thread_name);
    CHECK(x.r_check_now == VRAM_MONITOR_RESULT_CALLED_FROM_CALLBACK,
          "vram_monitor_check_now from the callback -> %d (%s)", (int)x.r_check_now,
          vram_monitor_result_str(x.r_check_now));
    CHECK(x.r_free == VRAM_MONITOR_RESULT_CALLED_FROM_CALLBACK, "vram_monitor_free from the callback -> %d (%s)",
          (int)x.r_free, vram_monitor_result_str(x.r_free));
    CHECK(x.r_unregister == VRAM_MONITOR_RESULT_OK, "vram_monitor_unregister(the violating id) from the callback -> %d (%s)",
          (int)x.r_unregister, vram_monitor_result_str(x.r_unregister));
    CHECK(x.r_register == VRAM_MONITOR_RESULT_OK && x.new_id != 0,
          "vram_monitor_register from the callback -> %d (%s), id %" PRIu64, (int)x.r_register,
          vram_monitor_result_str(x.r_register), x.new_id);
    CHECK(x.r_health == VRAM_MONITOR_RESULT_OK, "vram_monitor_health from the callback -> %d (%s)", (int)x.r_health,
          vram_monitor_result_str(x.r_health));
    CHECK(x.r_interval == VRAM_MONITOR_RESULT_OK, "vram_monitor_set_interval_ms from the callback -> %d (%s)",
          (int)x.r_interval, vram_monitor_result_str(x.r_interval));

    h = get_health(m);
    CHECK(h.interval_ms == 45000, "the interval set from the callback took effect (%" PRIu64 " ms)", h.interval_ms);
    CHECK(h.registrations == 1 && h.current_violations == 0,
          "the victim is gone and the callback's registration is there (registrations %" PRIu64
          ", current_violations %" PRIu64 ")",
          h.registrations, h.current_violations);
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    h = get_health(m);
    CHECK(h.healthy, "the monitor still works after the refused free: healthy again");
    CHECK_RESULT(vram_monitor_unregister(m, x.new_id), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&x.max_active) == 1, "one callback at a time (at most %d at once)", atomic_load(&x.max_active));
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
}

/* ---- 2. the periodic thread ---------------------------------------------------------------- */

static void periodic_checks(void) {
    static struct recorder rec;
    VramMonitor *m = NULL;
    unsigned long long buffer;
    uint64_t id = 0;
    struct recorded_event e;
    VramMonitorHealth h;
    uint64_t checks_then;
    double deadline;

    section("the periodic thread finds a violation without check_now (interval 20 ms)");
    recorder_init(&rec);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    CHECK_RESULT(vram_monitor_set_callback(m, recorder_callback, &rec, NULL), VRAM_MONITOR_RESULT_OK);
    buffer = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(buffer), 2 * MiB, "periodic", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 20), VRAM_MONITOR_RESULT_OK);
    h = get_health(m);
    CHECK(h.interval_ms == 20, "health.interval_ms = %" PRIu64, h.interval_ms);
    REQUIRE(fake.free(buffer) == 0, "fake_cuda_free");
    CHECK(recorder_wait_for(&rec, 0, VRAM_MONITOR_EVENT_KIND_VIOLATION, id, 5000, &e),
          "a VIOLATION event arrives within 5 s without check_now");
    if (recorder_find(&rec, 0, VRAM_MONITOR_EVENT_KIND_VIOLATION, id, &e)) {
        CHECK(e.verdict == VRAM_MONITOR_VERDICT_NOT_MAPPED, "verdict %s (NOT_MAPPED)",
              vram_monitor_verdict_str(e.verdict));
        CHECK(!pthread_equal(e.thread, main_thread), "delivered on the monitor thread");
    }
    h = get_health(m);
    checks_then = h.checks_completed;
    CHECK(checks_then >= 1 && !h.healthy && h.current_violations == 1,
          "health: checks_completed %" PRIu64 ", unhealthy, 1 violation", checks_then);
    deadline = now_ms() + 5000;
    while (get_health(m).checks_completed < checks_then + 5 && now_ms() < deadline) sleep_ms(5);
    h = get_health(m);
    CHECK(h.checks_completed >= checks_then + 5, "checks keep coming (%" PRIu64 " -> %" PRIu64 ")", checks_then,
          h.checks_completed);
    CHECK(recorder_count_kind(&rec, 0, VRAM_MONITOR_EVENT_KIND_VIOLATION, UINT64_MAX) == 1,
          "still one VIOLATION event after %" PRIu64 " periodic checks",
          h.checks_completed);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    CHECK(rec.max_active == 1, "one callback at a time");
    recorder_destroy(&rec);
}

/* ---- 3. user data ownership ---------------------------------------------------------------- */

struct owned {
    const char *name;
    atomic_int freed;             /* free_user_data calls */
    atomic_int calls;             /* callback calls */
    atomic_int in_call;           /* 1 while the callback runs */
    atomic_int calls_after_freed; /* callback calls that started after free_user_data */
    atomic_int freed_during_call; /* free_user_data while the callback ran */
    atomic_int calls_after_monitor_freed;
    atomic_int slow_ms;           /* each call sleeps this long */
};

static atomic_int monitor_free_returned;

static void owned_callback(const VramMonitorEvent *event, void *user_data) {
    struct owned *o = user_data;
    (void)event;
    if (atomic_load(&o->freed) != 0) atomic_fetch_add(&o->calls_after_freed, 1);
    if (atomic_load(&monitor_free_returned) != 0) atomic_fetch_add(&o->calls_after_monitor_freed, 1);
    atomic_store(&o->in_call, 1);
    atomic_fetch_add(&o->calls, 1);
    if (atomic_load(&o->slow_ms) > 0) sleep_ms((unsigned)atomic_load(&o->slow_ms));
    atomic_store(&o->in_call, 0);
}

static void owned_free(void *user_data) {
    struct owned *o = user_data;
    if (atomic_load(&o->in_call) != 0) atomic_fetch_add(&o->freed_during_call, 1);
    atomic_fetch_add(&o->freed, 1);
}

struct checker {
    VramMonitor *m;
    int32_t result;
};

static void *check_now_thread(void *arg) {
    struct checker *c = arg;
    c->result = vram_monitor_check_now(c->m, NULL);
    return NULL;
}

static void user_data_is_freed_once(void) {
    static struct owned a = {.name = "A"}, b = {.name = "B"}, c = {.name = "C"}, d = {.name = "D"}, e = {.name = "E"};
    VramMonitor *m = NULL;
    unsigned long long buffer;
    uint64_t id = 0;
    pthread_t thread;
    struct checker checker;
    double deadline;
    int freed_at_replace;

    section("free_user_data: once when replaced, once at vram_monitor_free");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    CHECK_RESULT(vram_monitor_set_callback(m, owned_callback, &a, owned_free), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&a.freed) == 0, "A's user data is not freed while A is the callback");
    CHECK_RESULT(vram_monitor_set_callback(m, owned_callback, &b, owned_free), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&a.freed) == 1, "replacing A frees A's user data once (%d)", atomic_load(&a.freed));
    CHECK(atomic_load(&b.freed) == 0, "B's user data is not freed");

    /* Replace B while a call of B is in progress: B's user data is freed after it returns. */
    atomic_store(&b.slow_ms, 300);
    buffer = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(buffer), 2 * MiB, "owned", &id), VRAM_MONITOR_RESULT_OK);
    REQUIRE(fake.free(buffer) == 0, "fake_cuda_free");
    checker.m = m;
    checker.result = -1;
    REQUIRE(pthread_create(&thread, NULL, check_now_thread, &checker) == 0, "pthread_create");
    deadline = now_ms() + 5000;
    while (atomic_load(&b.in_call) == 0 && now_ms() < deadline) sleep_ms(1);
    CHECK(atomic_load(&b.in_call) == 1, "B is running (the violation event)");
    CHECK_RESULT(vram_monitor_set_callback(m, owned_callback, &c, owned_free), VRAM_MONITOR_RESULT_OK);
    freed_at_replace = atomic_load(&b.freed);
    pthread_join(thread, NULL);
    CHECK(checker.result == VRAM_MONITOR_RESULT_OK, "check_now on another thread -> %d", (int)checker.result);
    printf("     B's user data freed %s set_callback returned\n", freed_at_replace ? "before" : "after");
    CHECK(atomic_load(&b.freed) == 1, "B's user data freed exactly once (%d)", atomic_load(&b.freed));
    CHECK(atomic_load(&b.freed_during_call) == 0, "B's user data was not freed while B was running");
    CHECK(atomic_load(&b.calls) == 1, "B ran once (%d)", atomic_load(&b.calls));
    CHECK(atomic_load(&c.calls) >= 1, "the next event (HEALTH_CHANGED) went to C (%d calls)", atomic_load(&c.calls));
    CHECK(atomic_load(&a.calls_after_freed) == 0 && atomic_load(&b.calls_after_freed) == 0,
          "no callback ran after its user data was freed");

    /* A NULL callback removes C; its user data and free function are ignored. */
    CHECK_RESULT(vram_monitor_set_callback(m, NULL, &d, owned_free), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&c.freed) == 1, "removing C frees C's user data once (%d)", atomic_load(&c.freed));
    CHECK_RESULT(vram_monitor_set_callback(m, owned_callback, &e, owned_free), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&d.freed) == 0, "the user data passed with a NULL callback is never freed");
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&e.freed) == 1, "vram_monitor_free frees E's user data once (%d)", atomic_load(&e.freed));
    CHECK(atomic_load(&a.freed) == 1 && atomic_load(&b.freed) == 1 && atomic_load(&c.freed) == 1 &&
              atomic_load(&d.freed) == 0,
          "in the end: A %d, B %d, C %d, D %d, E %d frees", atomic_load(&a.freed), atomic_load(&b.freed),
          atomic_load(&c.freed), atomic_load(&d.freed), atomic_load(&e.freed));
}

/* ---- 4. nothing after vram_monitor_free ------------------------------------------------------ */

struct flapper {
    unsigned long long buffer;
    atomic_int stop;
    unsigned long long flips;
};

/* Flips the buffer between device and managed memory, so that every check has news. */
static void *flap_thread(void *arg) {
    struct flapper *f = arg;
    int managed = 0;
    while (!atomic_load(&f->stop)) {
        managed = !managed;
        fake.set_kind(f->buffer, managed ? FAKE_CUDA_MANAGED : FAKE_CUDA_DEVICE);
        f->flips++;
        sleep_ms(1);
    }
    return NULL;
}

static void no_callback_after_free(void) {
    static struct owned f = {.name = "F"};
    static struct flapper flapper;
    VramMonitor *m = NULL;
    uint64_t id = 0;
    pthread_t thread;
    double deadline, started, took;
    int calls_at_return, in_call_at_return;

    section("no callback after vram_monitor_free returns (1 ms interval, events all the time)");
    REQUIRE(vram_monitor_new(1, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new(1 ms)");
    atomic_store(&f.slow_ms, 3);
    CHECK_RESULT(vram_monitor_set_callback(m, owned_callback, &f, owned_free), VRAM_MONITOR_RESULT_OK);
    flapper.buffer = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(flapper.buffer), 2 * MiB, "flapping", &id), VRAM_MONITOR_RESULT_OK);
    REQUIRE(pthread_create(&thread, NULL, flap_thread, &flapper) == 0, "pthread_create");
    deadline = now_ms() + 5000;
    while (atomic_load(&f.calls) < 20 && now_ms() < deadline) sleep_ms(1);
    CHECK(atomic_load(&f.calls) >= 20, "callbacks are running (%d calls)", atomic_load(&f.calls));
    started = now_ms();
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    took = now_ms() - started;
    atomic_store(&monitor_free_returned, 1);
    calls_at_return = atomic_load(&f.calls);
    in_call_at_return = atomic_load(&f.in_call);
    CHECK(took < 1000.0, "vram_monitor_free returned in %.1f ms (< 1 s) with callbacks in flight", took);
    CHECK(in_call_at_return == 0, "no callback is running when vram_monitor_free returns");
    CHECK(atomic_load(&f.freed) == 1, "the user data was freed once by vram_monitor_free (%d)", atomic_load(&f.freed));
    sleep_ms(200);
    CHECK(atomic_load(&f.calls) == calls_at_return && atomic_load(&f.calls_after_monitor_freed) == 0,
          "no callback ran after vram_monitor_free returned (%d calls then, %d now)", calls_at_return,
          atomic_load(&f.calls));
    CHECK(atomic_load(&f.calls_after_freed) == 0 && atomic_load(&f.freed_during_call) == 0,
          "the user data was freed after the last call returned");
    atomic_store(&flapper.stop, 1);
    pthread_join(thread, NULL);
    atomic_store(&monitor_free_returned, 0);
}

static void free_is_prompt(void) {
    static struct owned g = {.name = "G"}, h = {.name = "H"};
    VramMonitor *m = NULL;
    unsigned long long buffer;
    uint64_t id = 0;
    double started, took;

    section("vram_monitor_free returns promptly while the monitor waits out a 60 s interval");
    REQUIRE(vram_monitor_new(60000, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new(60 s)");
    CHECK_RESULT(vram_monitor_set_callback(m, owned_callback, &g, owned_free), VRAM_MONITOR_RESULT_OK);
    buffer = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(buffer), 2 * MiB, "idle", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    sleep_ms(50);
    started = now_ms();
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    took = now_ms() - started;
    CHECK(took < 1000.0, "vram_monitor_free took %.1f ms (< 1 s)", took);
    CHECK(atomic_load(&g.freed) == 1, "user data freed once (%d)", atomic_load(&g.freed));

    /* The same after the interval was raised from 20 ms to 60 s. */
    REQUIRE(vram_monitor_new(20, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new(20 ms)");
    CHECK_RESULT(vram_monitor_set_callback(m, owned_callback, &h, owned_free), VRAM_MONITOR_RESULT_OK);
    sleep_ms(60);
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 60000), VRAM_MONITOR_RESULT_OK);
    sleep_ms(50);
    started = now_ms();
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    took = now_ms() - started;
    CHECK(took < 1000.0, "vram_monitor_free after set_interval_ms(60000) took %.1f ms (< 1 s)", took);
    CHECK(atomic_load(&h.freed) == 1, "user data freed once (%d)", atomic_load(&h.freed));
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    main_thread = pthread_self();
    calls_from_inside_a_callback();
    periodic_checks();
    user_data_is_freed_once();
    no_callback_after_free();
    free_is_prompt();
    return test_exit_code("test_callbacks");
}
