/*
 * test_hostile_callbacks.c - callbacks that misbehave, through the C API against the fake
 * libcuda (test_callbacks.c covers the polite re-entrant calls):
 *
 *  - a callback that sleeps 5 s: the other threads' calls return while it sleeps, and
 *    vram_monitor_free called meanwhile waits for that one call, delivers nothing more and
 *    frees the user data once, after it returned;
 *  - a callback that unregisters every registration, also those whose events are still queued;
 *  - a callback that registers 50 new buffers;
 *  - a callback that replaces itself, or removes itself, with vram_monitor_set_callback: its
 *    user data is freed once, after its call returned, and the next event goes to the new one;
 *  - a callback replaced 200 times from another thread while events flow every millisecond,
 *    each user data malloc'ed and freed by its finaliser (AddressSanitizer sees any use after
 *    free);
 *  - a callback that frees another monitor.
 */
#define _GNU_SOURCE
#include "test_support.h"

static pthread_t main_thread;

/* ---- 1. a callback that sleeps 5 s ---------------------------------------------------------- */

struct sleeper {
    atomic_int calls, in_call, freed, freed_during_call, calls_after_free_returned;
    atomic_int free_returned;
    unsigned sleep_ms;
};

static void sleeper_callback(const VramMonitorEvent *event, void *user_data) {
    struct sleeper *s = user_data;
    if (atomic_load(&s->free_returned)) atomic_fetch_add(&s->calls_after_free_returned, 1);
    atomic_store(&s->in_call, 1);
    atomic_fetch_add(&s->calls, 1);
    if (event->kind == VRAM_MONITOR_EVENT_KIND_VIOLATION) sleep_ms(s->sleep_ms);
    atomic_store(&s->in_call, 0);
}

static void sleeper_free(void *user_data) {
    struct sleeper *s = user_data;
    if (atomic_load(&s->in_call)) atomic_fetch_add(&s->freed_during_call, 1);
    atomic_fetch_add(&s->freed, 1);
}

static void sleeping_callback(void) {
    static struct sleeper s;
    VramMonitor *m = NULL;
    unsigned long long a, b, c, d;
    uint64_t id_a = 0, id_b = 0, id_c = 0, id_d = 0;
    VramMonitorHealth h;
    char *report;
    double deadline, started, took;
    int calls_at_free;

    section("a callback that sleeps 5 s");
    s.sleep_ms = 5000;
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    CHECK_RESULT(vram_monitor_set_callback(m, sleeper_callback, &s, sleeper_free), VRAM_MONITOR_RESULT_OK);
    a = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    b = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    c = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    d = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(a), 2 * MiB, "a", &id_a), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(b), 2 * MiB, "b", &id_b), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(c), 2 * MiB, "c", &id_c), VRAM_MONITOR_RESULT_OK);
    /* Two violations in one check: the callback sleeps in the first; the second is queued. */
    REQUIRE(fake.free(a) == 0 && fake.free(c) == 0, "fake_cuda_free(a, c)");
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 1), VRAM_MONITOR_RESULT_OK);
    deadline = now_ms() + 10000;
    while (!atomic_load(&s.in_call) && now_ms() < deadline) sleep_ms(1);
    REQUIRE(atomic_load(&s.in_call), "the callback is running (asleep) on the monitor thread");

    /* Every call from this thread returns while the callback is still asleep. */
    CHECK_RESULT(vram_monitor_register(m, as_ptr(d), 2 * MiB, "d", &id_d), VRAM_MONITOR_RESULT_OK);
    h = get_health(m);
    CHECK(h.registrations == 4, "health while the callback sleeps: %" PRIu64 " registrations", h.registrations);
    report = get_report(m, VRAM_MONITOR_REPORT_FORMAT_JSON);
    CHECK(report != NULL, "a report while the callback sleeps");
    free(report);
    CHECK_RESULT(vram_monitor_unregister(m, id_b), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_set_interval_ms(m, 2), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_set_pacing(m, 16, 10), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&s.in_call) == 1 && atomic_load(&s.calls) == 1,
          "register, health, report, unregister, set_interval_ms, set_pacing all returned while the callback slept");

    /* Free while it sleeps: waits for that call only; the queued VIOLATION of c is dropped. */
    started = now_ms();
    calls_at_free = atomic_load(&s.calls);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    took = now_ms() - started;
    atomic_store(&s.free_returned, 1);
    printf("     vram_monitor_free waited %.0f ms for the sleeping callback\n", took);
    CHECK(atomic_load(&s.in_call) == 0, "no callback is running when vram_monitor_free returns");
    CHECK(atomic_load(&s.calls) == calls_at_free, "no event was delivered after free was called (%d calls, %d at free)",
          atomic_load(&s.calls), calls_at_free);
    CHECK(atomic_load(&s.freed) == 1 && atomic_load(&s.freed_during_call) == 0,
          "the user data was freed once (%d), after the call returned", atomic_load(&s.freed));
    sleep_ms(100);
    CHECK(atomic_load(&s.calls_after_free_returned) == 0 && atomic_load(&s.calls) == calls_at_free,
          "nothing ran after vram_monitor_free returned");
    (void)id_a;
    (void)id_c;
    (void)id_d;
}

/* ---- 2. a callback that unregisters everything ------------------------------------------- */

struct unregisterer {
    VramMonitor *m;
    uint64_t ids[3];
    int32_t results[3];
    atomic_int calls, violation_events;
};

static void unregister_all_callback(const VramMonitorEvent *event, void *user_data) {
    struct unregisterer *u = user_data;
    int i;
    atomic_fetch_add(&u->calls, 1);
    if (event->kind != VRAM_MONITOR_EVENT_KIND_VIOLATION) return;
    if (atomic_fetch_add(&u->violation_events, 1) == 0)
        for (i = 0; i < 3; i++) u->results[i] = vram_monitor_unregister(u->m, u->ids[i]);
    CALLBACK_DONE();
}

static void callback_unregisters_everything(void) {
    static struct unregisterer u;
    VramMonitor *m = NULL;
    unsigned long long buf[3];
    VramMonitorHealth h;
    int i;

    section("a callback that unregisters every registration, queued events included");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    u.m = m;
    for (i = 0; i < 3; i++) {
        buf[i] = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
        CHECK_RESULT(vram_monitor_register(m, as_ptr(buf[i]), 2 * MiB, "doomed", &u.ids[i]), VRAM_MONITOR_RESULT_OK);
        u.results[i] = -1;
    }
    CHECK_RESULT(vram_monitor_set_callback(m, unregister_all_callback, &u, NULL), VRAM_MONITOR_RESULT_OK);
    for (i = 0; i < 3; i++) REQUIRE(fake.set_kind(buf[i], FAKE_CUDA_MANAGED) == 0, "to managed");
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    LIBRARY_RETURNED();
    for (i = 0; i < 3; i++)
        CHECK(u.results[i] == VRAM_MONITOR_RESULT_OK, "unregister(%d) from the callback -> %d (%s)", i, (int)u.results[i],
              vram_monitor_result_str(u.results[i]));
    printf("     %d VIOLATION events delivered (the two queued ones name registrations already gone)\n",
           atomic_load(&u.violation_events));
    CHECK(atomic_load(&u.violation_events) == 3, "the events found by the check were all delivered (%d)",
          atomic_load(&u.violation_events));
    h = get_health(m);
    CHECK(h.registrations == 0 && h.current_violations == 0 && h.tracked_bytes == 0 && h.total_violations == 3,
          "health: %" PRIu64 " registrations, %" PRIu64 " violating, %" PRIu64 " bytes, %" PRIu64 " violations in total",
          h.registrations, h.current_violations, h.tracked_bytes, h.total_violations);
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    h = get_health(m);
    CHECK(h.healthy, "healthy once nothing is registered");
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
}

/* ---- 3. a callback that registers 50 buffers --------------------------------------------- */

struct registrar {
    VramMonitor *m;
    unsigned long long spare[50];
    int registered;
    int32_t worst;
};

static void register_many_callback(const VramMonitorEvent *event, void *user_data) {
    struct registrar *r = user_data;
    int i;
    if (event->kind != VRAM_MONITOR_EVENT_KIND_VIOLATION || r->registered != 0) return;
    for (i = 0; i < 50; i++) {
        uint64_t id = 0;
        int32_t res = vram_monitor_register(r->m, as_ptr(r->spare[i]), MiB, "from the callback", &id);
        if (res == VRAM_MONITOR_RESULT_OK) r->registered++;
        else r->worst = res;
    }
    CALLBACK_DONE();
}

static void callback_registers_many(void) {
    static struct registrar r;
    VramMonitor *m = NULL;
    VramMonitorCheckSummary s;
    unsigned long long victim;
    uint64_t id = 0;
    int i;

    section("a callback that registers 50 new buffers");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    r.m = m;
    for (i = 0; i < 50; i++) r.spare[i] = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    victim = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(victim), MiB, "victim", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_set_callback(m, register_many_callback, &r, NULL), VRAM_MONITOR_RESULT_OK);
    REQUIRE(fake.free(victim) == 0, "fake_cuda_free");
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    LIBRARY_RETURNED();
    CHECK(r.registered == 50, "50 registrations from inside the callback (%d; last error %d)", r.registered, (int)r.worst);
    CHECK_RESULT(vram_monitor_check_now(m, &s), VRAM_MONITOR_RESULT_OK);
    CHECK(s.checked == 51 && s.resident == 50 && s.violations == 1,
          "the next check covers them: checked %" PRIu64 ", resident %" PRIu64 ", violations %" PRIu64, s.checked,
          s.resident, s.violations);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
}

/* ---- 4. a callback that replaces or removes itself --------------------------------------- */

struct self_replacer {
    VramMonitor *m;
    const char *name;
    struct self_replacer *next; /* NULL: remove the callback */
    atomic_int calls, in_call, freed, freed_during_call, calls_after_freed;
    atomic_int set_result;
    pthread_t freed_on;
};

static void self_replacer_free(void *user_data) {
    struct self_replacer *x = user_data;
    if (atomic_load(&x->in_call)) atomic_fetch_add(&x->freed_during_call, 1);
    x->freed_on = pthread_self();
    atomic_fetch_add(&x->freed, 1);
    CALLBACK_DONE();
}

static void self_replacer_callback(const VramMonitorEvent *event, void *user_data) {
    struct self_replacer *x = user_data;
    (void)event;
    if (atomic_load(&x->freed)) atomic_fetch_add(&x->calls_after_freed, 1);
    atomic_store(&x->in_call, 1);
    if (atomic_fetch_add(&x->calls, 1) == 0) {
        if (x->next != NULL)
            atomic_store(&x->set_result, vram_monitor_set_callback(x->m, self_replacer_callback, x->next, self_replacer_free));
        else
            atomic_store(&x->set_result, vram_monitor_set_callback(x->m, NULL, NULL, NULL));
        /* Still running after replacing itself: its user data must still be alive. */
        sleep_ms(20);
        CHECK(atomic_load(&x->freed) == 0, "%s: user data not freed while its call still runs", x->name);
    }
    atomic_store(&x->in_call, 0);
    CALLBACK_DONE();
}

static void callback_replaces_itself(void) {
    static struct self_replacer first = {.name = "first"}, second = {.name = "second"};
    VramMonitor *m = NULL;
    unsigned long long a, b;
    uint64_t id_a = 0, id_b = 0;

    section("a callback that replaces itself, then one that removes itself");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    first.m = second.m = m;
    first.next = &second;
    second.next = NULL;
    atomic_store(&first.set_result, -1);
    atomic_store(&second.set_result, -1);
    a = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    b = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(a), MiB, "a", &id_a), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(b), MiB, "b", &id_b), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_set_callback(m, self_replacer_callback, &first, self_replacer_free), VRAM_MONITOR_RESULT_OK);
    REQUIRE(fake.free(a) == 0, "fake_cuda_free(a)");
    /* VIOLATION(a) goes to first, which installs second; HEALTH_CHANGED goes to second, which removes itself. */
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    LIBRARY_RETURNED();
    CHECK(atomic_load(&first.set_result) == VRAM_MONITOR_RESULT_OK, "first: set_callback from inside -> %d",
          atomic_load(&first.set_result));
    CHECK(atomic_load(&first.calls) == 1 && atomic_load(&second.calls) == 1,
          "first ran once (%d), the next event went to second (%d)", atomic_load(&first.calls), atomic_load(&second.calls));
    CHECK(atomic_load(&second.set_result) == VRAM_MONITOR_RESULT_OK, "second: set_callback(NULL) from inside -> %d",
          atomic_load(&second.set_result));
    CHECK(atomic_load(&first.freed) == 1 && atomic_load(&first.freed_during_call) == 0,
          "first's user data freed once (%d), after its call", atomic_load(&first.freed));
    CHECK(atomic_load(&second.freed) == 1 && atomic_load(&second.freed_during_call) == 0,
          "second's user data freed once (%d), after its call", atomic_load(&second.freed));
    CHECK(!pthread_equal(first.freed_on, main_thread), "the replaced callback's user data was freed on the monitor thread");
    REQUIRE(fake.free(b) == 0, "fake_cuda_free(b)");
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&first.calls) + atomic_load(&second.calls) == 2, "no callback after it removed itself");
    CHECK(atomic_load(&first.calls_after_freed) == 0 && atomic_load(&second.calls_after_freed) == 0,
          "no call after its user data was freed");
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&first.freed) == 1 && atomic_load(&second.freed) == 1, "still freed once each after vram_monitor_free");
}

/* ---- 5. replaced 200 times while events flow --------------------------------------------- */

struct heap_data {
    unsigned magic;
    atomic_int *calls;
    atomic_int *frees;
};

#define HEAP_MAGIC 0xC411BAC4u

static void heap_callback(const VramMonitorEvent *event, void *user_data) {
    struct heap_data *d = user_data;
    (void)event;
    /* A freed struct would be caught by AddressSanitizer here; without it, the magic check. */
    if (d->magic != HEAP_MAGIC) abort();
    atomic_fetch_add(d->calls, 1);
}

static void heap_free(void *user_data) {
    struct heap_data *d = user_data;
    atomic_fetch_add(d->frees, 1);
    d->magic = 0;
    free(d);
}

struct flipper {
    unsigned long long buffer;
    atomic_int stop;
};

static void *flip_thread(void *arg) {
    struct flipper *f = arg;
    int managed = 0;
    while (!atomic_load(&f->stop)) {
        managed = !managed;
        fake.set_kind(f->buffer, managed ? FAKE_CUDA_MANAGED : FAKE_CUDA_DEVICE);
        sleep_ms(1);
    }
    return NULL;
}

static void replaced_while_events_flow(void) {
    static atomic_int calls, frees;
    static struct flipper flipper;
    VramMonitor *m = NULL;
    pthread_t thread;
    uint64_t id = 0;
    int i, failed = 0;

    section("a callback replaced 200 times from another thread while events flow (1 ms interval)");
    REQUIRE(vram_monitor_new(1, &m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new(1 ms)");
    flipper.buffer = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 * MiB, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(flipper.buffer), 2 * MiB, "flipping", &id), VRAM_MONITOR_RESULT_OK);
    REQUIRE(pthread_create(&thread, NULL, flip_thread, &flipper) == 0, "pthread_create");
    for (i = 0; i < 200; i++) {
        struct heap_data *d = malloc(sizeof *d);
        REQUIRE(d != NULL, "malloc");
        d->magic = HEAP_MAGIC;
        d->calls = &calls;
        d->frees = &frees;
        if (vram_monitor_set_callback(m, heap_callback, d, heap_free) != VRAM_MONITOR_RESULT_OK) failed++;
        if (i % 10 == 0) sleep_ms(2);
    }
    CHECK(failed == 0, "200 set_callback calls succeeded (%d failed)", failed);
    /* A replaced callback that is running is freed when its call returns: wait for that. */
    {
        double deadline = now_ms() + 5000;
        while (atomic_load(&frees) < 199 && now_ms() < deadline) sleep_ms(1);
    }
    CHECK(atomic_load(&frees) == 199, "the 199 replaced user data were freed, the installed one not (%d)",
          atomic_load(&frees));
    {
        double deadline = now_ms() + 5000;
        while (atomic_load(&calls) == 0 && now_ms() < deadline) sleep_ms(1);
    }
    atomic_store(&flipper.stop, 1);
    pthread_join(thread, NULL);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&frees) == 200, "after vram_monitor_free every user data was freed exactly once (%d)",
          atomic_load(&frees));
    printf("     %d callback calls during the replacements\n", atomic_load(&calls));
    CHECK(atomic_load(&calls) > 0, "events did flow meanwhile");
}

/* ---- 6. a callback that frees another monitor --------------------------------------------- */

struct freer {
    VramMonitor *victim;
    atomic_int result;
};

static void free_other_callback(const VramMonitorEvent *event, void *user_data) {
    struct freer *f = user_data;
    if (event->kind == VRAM_MONITOR_EVENT_KIND_VIOLATION && f->victim != NULL) {
        atomic_store(&f->result, vram_monitor_free(f->victim));
        f->victim = NULL;
    }
}

static void callback_frees_another_monitor(void) {
    static struct freer f;
    VramMonitor *a = NULL, *b = NULL;
    unsigned long long buf;
    uint64_t id = 0;

    section("a callback of one monitor frees another monitor");
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &a) == VRAM_MONITOR_RESULT_OK, "monitor a");
    REQUIRE(vram_monitor_new(5, &b) == VRAM_MONITOR_RESULT_OK, "monitor b (5 ms interval, checking)");
    f.victim = b;
    atomic_store(&f.result, -1);
    buf = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    CHECK_RESULT(vram_monitor_register(a, as_ptr(buf), MiB, "a's", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register(b, as_ptr(buf), MiB, "b's", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_set_callback(a, free_other_callback, &f, NULL), VRAM_MONITOR_RESULT_OK);
    REQUIRE(fake.free(buf) == 0, "fake_cuda_free");
    CHECK_RESULT(vram_monitor_check_now(a, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK(atomic_load(&f.result) == VRAM_MONITOR_RESULT_OK, "vram_monitor_free(b) from a's callback -> %d",
          atomic_load(&f.result));
    CHECK_RESULT(vram_monitor_free(a), VRAM_MONITOR_RESULT_OK);
}

int main(void) {
    VramMonitor *boot = NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
    main_thread = pthread_self();
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &boot) == VRAM_MONITOR_RESULT_OK, "vram_monitor_new");
    fake_load();
    CHECK_RESULT(vram_monitor_free(boot), VRAM_MONITOR_RESULT_OK);

    callback_unregisters_everything();
    callback_registers_many();
    callback_replaces_itself();
    replaced_while_events_flow();
    callback_frees_another_monitor();
    sleeping_callback();
    return test_exit_code("test_hostile_callbacks");
}
