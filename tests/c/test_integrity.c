/*
 * test_integrity.c - content integrity through the C API against the fake libcuda, whose
 * memory holds content and whose cuLaunchKernel runs the fingerprint kernel on the host:
 * seal, verify_now, a byte the engine wrote read as MODIFIED (event, health, seal info),
 * reseal; every refusal with its result code and NULL arguments; a refused launch, a sticky
 * error and a destroyed context as INTEGRITY_FAILED, never MODIFIED; free and disable while
 * a verification runs, with nothing left in the lent context and no callback after free.
 */
#define _GNU_SOURCE
#include "test_support.h"

#include <unistd.h>

/* The fake's integrity controls, and the three driver calls an engine makes to have its
 * primary context current (the library borrows it). */
static struct {
    int (*write)(unsigned long long addr, const void *bytes, size_t len);
    void (*set_module_load_result)(int code);
    void (*fail_launches)(unsigned count, int code);
    void (*sticky_error_after_launches)(unsigned launches, int code);
    void (*set_launch_delay_us)(unsigned us);
    int (*context_error)(int device);
    void (*gpu_counters)(struct fake_cuda_gpu_counters *out);
    int (*primary_retain)(void **ctx, int device);
    int (*primary_release)(int device);
    int (*set_current)(void *ctx);
} gpu;

#define GPU_SAME_TYPE(field, function) \
    _Static_assert(_Generic(&function, __typeof__(gpu.field): 1, default: 0), #function)
GPU_SAME_TYPE(write, fake_cuda_write);
GPU_SAME_TYPE(set_module_load_result, fake_cuda_set_module_load_result);
GPU_SAME_TYPE(fail_launches, fake_cuda_fail_launches);
GPU_SAME_TYPE(sticky_error_after_launches, fake_cuda_sticky_error_after_launches);
GPU_SAME_TYPE(set_launch_delay_us, fake_cuda_set_launch_delay_us);
GPU_SAME_TYPE(context_error, fake_cuda_context_error);
GPU_SAME_TYPE(gpu_counters, fake_cuda_gpu_counters);

static void gpu_load(void) {
    void *handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    int bad = 0;
    REQUIRE(handle != NULL, "the fake libcuda is loaded");
#define GPU_LOAD(field, name) bad |= fake_lookup(handle, name, (void *)&gpu.field, sizeof gpu.field)
    GPU_LOAD(write, "fake_cuda_write");
    GPU_LOAD(set_module_load_result, "fake_cuda_set_module_load_result");
    GPU_LOAD(fail_launches, "fake_cuda_fail_launches");
    GPU_LOAD(sticky_error_after_launches, "fake_cuda_sticky_error_after_launches");
    GPU_LOAD(set_launch_delay_us, "fake_cuda_set_launch_delay_us");
    GPU_LOAD(context_error, "fake_cuda_context_error");
    GPU_LOAD(gpu_counters, "fake_cuda_gpu_counters");
    GPU_LOAD(primary_retain, "cuDevicePrimaryCtxRetain");
    GPU_LOAD(primary_release, "cuDevicePrimaryCtxRelease_v2");
    GPU_LOAD(set_current, "cuCtxSetCurrent");
#undef GPU_LOAD
    REQUIRE(bad == 0, "the fake has the integrity controls");
}

/* What the engine's runtime does on its thread. Its own reference keeps the context active,
 * so the test's retain is given back: the retain count is then the library's alone. */
static void make_primary_current(int device) {
    void *ctx = NULL;
    REQUIRE(gpu.primary_retain(&ctx, device) == 0 && gpu.set_current(ctx) == 0 && gpu.primary_release(device) == 0,
            "device %d's primary context is current", device);
}

static struct fake_cuda_gpu_counters counters(void) {
    struct fake_cuda_gpu_counters c;
    gpu.gpu_counters(&c);
    return c;
}

static bool nothing_live(void) {
    struct fake_cuda_gpu_counters c = counters();
    return c.modules_live == 0 && c.streams_live == 0 && c.driver_allocations_live == 0;
}

/* valgrind runs one thread at a time: fewer rounds there (test_cpp_wrapper.cpp does the same). */
static bool under_valgrind(void) {
    const char *preload = getenv("LD_PRELOAD");
    return preload != NULL && strstr(preload, "valgrind") != NULL;
}

static int32_t verdict_of(VramMonitor *m, uint64_t id) {
    VramMonitorRegistrationInfo info;
    memset(&info, 0, sizeof info);
    CHECK_RESULT(vram_monitor_registration(m, id, &info, NULL, 0, NULL), VRAM_MONITOR_RESULT_OK);
    return info.verdict;
}

static VramMonitorSealInfo seal_info(VramMonitor *m, uint64_t id) {
    VramMonitorSealInfo info;
    memset(&info, 0, sizeof info);
    CHECK_RESULT(vram_monitor_seal_info(m, id, &info), VRAM_MONITOR_RESULT_OK);
    return info;
}

static VramMonitorIntegrity integrity(VramMonitor *m) {
    VramMonitorIntegrity s;
    memset(&s, 0, sizeof s);
    CHECK_RESULT(vram_monitor_integrity(m, &s), VRAM_MONITOR_RESULT_OK);
    return s;
}

/* Device memory on device 0 whose bytes differ word by word. */
static unsigned long long weights(size_t size) {
    unsigned long long ptr = fake_alloc_or_die(FAKE_CUDA_DEVICE, size, 0);
    unsigned char *bytes = malloc(size);
    REQUIRE(bytes != NULL, "allocating %zu bytes", size);
    for (size_t i = 0; i < size; i++) bytes[i] = (unsigned char)((i * 2654435761u) >> 7);
    REQUIRE(gpu.write(ptr, bytes, size) == 0, "fake_cuda_write of %zu bytes", size);
    free(bytes);
    return ptr;
}

/* Waits until the background's first slice after enabling is done (`before`: the bytes
 * verified until then): at the default pacing the next is an hour away, so the launches that
 * follow are the test's own. */
static void first_slice_done(VramMonitor *m, uint64_t before) {
    for (int i = 0; i < 30000; i++) {
        VramMonitorIntegrity s;
        memset(&s, 0, sizeof s);
        if (vram_monitor_integrity(m, &s) == VRAM_MONITOR_RESULT_OK && s.verified_bytes_total > before &&
            counters().launches_in_progress == 0)
            return;
        sleep_ms(2);
    }
    CHECK(false, "the first background slice never ran");
}

static void refusals_and_null_arguments(VramMonitor *m) {
    VramMonitorIntegrityOptions bad = {0, 2000000, 0};
    VramMonitorSealInfo info;
    VramMonitorIntegrity s;
    uint64_t id = 0, out = 77;
    unsigned long long ptr = weights(2 * MiB);

    section("refusals before and while enabling, NULL arguments");
    CHECK_RESULT(vram_monitor_register(m, as_ptr(ptr), 2 * MiB, "w", &id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_enable_integrity(NULL, 0, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_seal(NULL, id), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_verify_now(NULL, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_seal(m, id), VRAM_MONITOR_RESULT_INTEGRITY_NOT_ENABLED);
    CHECK_RESULT(vram_monitor_verify_now(m, NULL), VRAM_MONITOR_RESULT_INTEGRITY_NOT_ENABLED);
    CHECK_RESULT(vram_monitor_disable_integrity(m, 0), VRAM_MONITOR_RESULT_INTEGRITY_NOT_ENABLED);
    CHECK_RESULT(vram_monitor_enable_integrity(m, 0, NULL), VRAM_MONITOR_RESULT_NO_CURRENT_CONTEXT);
    make_primary_current(1);
    CHECK_RESULT(vram_monitor_enable_integrity(m, 0, NULL), VRAM_MONITOR_RESULT_CONTEXT_WRONG_DEVICE);
    make_primary_current(0);
    CHECK_RESULT(vram_monitor_enable_integrity(m, 0, &bad), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    gpu.set_module_load_result(222); /* CUDA_ERROR_UNSUPPORTED_PTX_VERSION: a driver older than the PTX */
    CHECK_RESULT(vram_monitor_enable_integrity(m, 0, NULL), VRAM_MONITOR_RESULT_KERNEL_UNAVAILABLE);
    gpu.set_module_load_result(0);
    CHECK(fake.primary_context_retains(0) == 0 && fake.primary_context_retains(1) == 0, "refused enables keep no reference");
    CHECK(nothing_live(), "refused enables leave nothing in the context");

    CHECK_RESULT(vram_monitor_enable_integrity(m, 0, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_enable_integrity(m, 0, NULL), VRAM_MONITOR_RESULT_INTEGRITY_ALREADY_ENABLED);
    CHECK(fake.primary_context_retains(0) == 1, "one reference to the lent primary context (%d)", fake.primary_context_retains(0));
    CHECK_RESULT(vram_monitor_set_integrity_options(m, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_set_integrity_options(m, &bad), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_seal_info(m, id, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_seal_info(m, 987654321, &info), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_integrity(m, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_integrity(NULL, &s), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register_sealed(m, NULL, MiB, "w", &out), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register_sealed(m, as_ptr(ptr), MiB, NULL, &out), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register_sealed(m, as_ptr(ptr), MiB, "w", NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK(out == 77, "refused calls write no id");

    CHECK_RESULT(vram_monitor_seal(m, 987654321), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_reseal(m, id), VRAM_MONITOR_RESULT_NOT_SEALED);
    CHECK_RESULT(vram_monitor_unseal(m, id), VRAM_MONITOR_RESULT_NOT_SEALED);
    CHECK_RESULT(vram_monitor_unseal(m, 987654321), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK_RESULT(vram_monitor_seal(m, id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_seal(m, id), VRAM_MONITOR_RESULT_ALREADY_SEALED);
    CHECK_RESULT(vram_monitor_unseal(m, id), VRAM_MONITOR_RESULT_OK);
    info = seal_info(m, id);
    CHECK(!info.sealed && info.chunks == 0, "unsealed: the seal info says so");

    /* A registration in violation is not sealed; nothing is launched for it. */
    unsigned long long launches = counters().launches;
    REQUIRE(fake.free(ptr) == 0, "fake_cuda_free");
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_seal(m, id), VRAM_MONITOR_RESULT_NOT_RESIDENT);
    CHECK(counters().launches == launches, "a refused seal launches nothing");
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_disable_integrity(m, 0), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_disable_integrity(m, 0), VRAM_MONITOR_RESULT_INTEGRITY_NOT_ENABLED);
    CHECK(fake.primary_context_retains(0) == 0 && nothing_live(), "disable gives everything back");
}

static void seal_verify_modified_reseal(VramMonitor *m, struct recorder *events) {
    const size_t size = 3 * MiB + 12;
    unsigned long long ptr = weights(size);
    unsigned char byte = 0xa5;
    VramMonitorVerifySummary summary;
    VramMonitorSealInfo info;
    struct recorded_event e;
    uint64_t id = 0, before = integrity(m).verified_bytes_total;
    size_t from = recorder_count(events);

    section("seal, verify_now, a written byte MODIFIED with its chunk and offset, reseal");
    CHECK_RESULT(vram_monitor_enable_integrity(m, 0, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register_sealed(m, as_ptr(ptr), size, "layers.0.weight", &id), VRAM_MONITOR_RESULT_OK);
    CHECK(counters().context_synchronizes >= 1, "a seal waits for the engine's work in the context");
    first_slice_done(m, before);
    memset(&summary, 0, sizeof summary);
    CHECK_RESULT(vram_monitor_verify_now(m, &summary), VRAM_MONITOR_RESULT_OK);
    CHECK(summary.registrations == 1 && summary.bytes == size && summary.modified == 0, "clean: 1 registration, %" PRIu64 " bytes, %" PRIu64 " modified",
          summary.bytes, summary.modified);
    info = seal_info(m, id);
    CHECK(info.sealed && info.chunks == 4 && info.modified_chunks == 0 && !info.integrity_failing, "sealed, 4 chunks (%" PRIu64 ")", info.chunks);

    REQUIRE(gpu.write(ptr + 2 * MiB + 5, &byte, 1) == 0, "the engine writes one byte into the third chunk");
    CHECK_RESULT(vram_monitor_verify_now(m, &summary), VRAM_MONITOR_RESULT_OK);
    CHECK(summary.modified == 1, "verify_now finds it (%" PRIu64 ")", summary.modified);
    CHECK(verdict_of(m, id) == VRAM_MONITOR_VERDICT_MODIFIED, "the verdict is MODIFIED");
    info = seal_info(m, id);
    CHECK(info.modified_chunks == 1 && info.first_modified_offset == 2 * MiB, "one chunk, at offset 2 MiB (%" PRIu64 ", %" PRIu64 ")",
          info.modified_chunks, info.first_modified_offset);
    VramMonitorHealth h = get_health(m);
    CHECK(!h.healthy && h.current_violations == 1 && !integrity(m).failed, "unhealthy with one violation, no failure");
    CHECK(integrity(m).modified == 1, "the integrity state counts it");
    memset(&e, 0, sizeof e);
    CHECK(recorder_wait_for(events, from, VRAM_MONITOR_EVENT_KIND_MODIFIED, id, 10000, &e), "a MODIFIED event");
    CHECK(e.modified_chunks == 1 && e.first_modified_offset == 2 * MiB && e.device == 0 && !e.healthy &&
              strcmp(e.label, "layers.0.weight") == 0,
          "the MODIFIED event names the chunk, the offset, the device");
    CHECK(strcmp(e.error_kind, "content_modified") == 0, "the MODIFIED event's error_kind is content_modified ('%s')",
          e.error_kind);

    CHECK_RESULT(vram_monitor_reseal(m, id), VRAM_MONITOR_RESULT_OK);
    CHECK(verdict_of(m, id) == VRAM_MONITOR_VERDICT_RESIDENT, "reseal clears MODIFIED");
    CHECK_RESULT(vram_monitor_verify_now(m, &summary), VRAM_MONITOR_RESULT_OK);
    CHECK(summary.modified == 0, "and the new bytes verify clean");
    CHECK(get_health(m).healthy, "healthy again");
    CHECK(recorder_wait_for(events, from, VRAM_MONITOR_EVENT_KIND_RECOVERED, id, 10000, &e), "a RECOVERED event");
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_disable_integrity(m, 0), VRAM_MONITOR_RESULT_OK);
    REQUIRE(fake.free(ptr) == 0, "fake_cuda_free");
}

/* verify_now -> INTEGRITY_FAILED with `code`, nothing MODIFIED, the failure reported. */
static void expect_failed(VramMonitor *m, struct recorder *events, size_t from, uint64_t id, int code) {
    struct recorded_event e;
    CHECK_RESULT(vram_monitor_verify_now(m, NULL), VRAM_MONITOR_RESULT_INTEGRITY_FAILED);
    VramMonitorIntegrity s = integrity(m);
    CHECK(s.failed && s.failed_device == 0 && s.failed_code == code, "failed on device 0 with %d (%d)", code, s.failed_code);
    CHECK(verdict_of(m, id) == VRAM_MONITOR_VERDICT_RESIDENT, "content unknown, not MODIFIED");
    CHECK(seal_info(m, id).integrity_failing, "the seal info says verification is failing");
    VramMonitorHealth h = get_health(m);
    CHECK(!h.healthy && h.current_violations == 0, "unhealthy with no violation: the failure");
    CHECK(recorder_wait_for(events, from, VRAM_MONITOR_EVENT_KIND_INTEGRITY_FAILED, UINT64_MAX, 10000, &e) && e.device == 0,
          "an INTEGRITY_FAILED event for device 0");
    CHECK(recorder_count_kind(events, from, VRAM_MONITOR_EVENT_KIND_MODIFIED, UINT64_MAX) == 0, "never a MODIFIED event");
    unsigned long long launches = counters().launches;
    CHECK_RESULT(vram_monitor_verify_now(m, NULL), VRAM_MONITOR_RESULT_INTEGRITY_FAILED);
    CHECK(counters().launches == launches, "nothing more runs in a failed lane");
}

static void failures_are_integrity_failed(VramMonitor *m, struct recorder *events) {
    unsigned long long ptr = weights(2 * MiB);
    uint64_t id = 0, before = integrity(m).verified_bytes_total;

    section("a refused launch: INTEGRITY_FAILED, never MODIFIED; disable frees everything");
    CHECK_RESULT(vram_monitor_enable_integrity(m, 0, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_register_sealed(m, as_ptr(ptr), 2 * MiB, "w", &id), VRAM_MONITOR_RESULT_OK);
    first_slice_done(m, before);
    gpu.fail_launches(1, 701); /* CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES */
    expect_failed(m, events, recorder_count(events), id, 701);
    CHECK_RESULT(vram_monitor_disable_integrity(m, 0), VRAM_MONITOR_RESULT_OK);
    CHECK(get_health(m).healthy, "disabling ends the failure");
    CHECK(nothing_live() && fake.primary_context_retains(0) == 0, "the context is usable: everything freed");

    section("a sticky error mid-verification: INTEGRITY_FAILED, never MODIFIED");
    CHECK_RESULT(vram_monitor_enable_integrity(m, 0, NULL), VRAM_MONITOR_RESULT_OK);
    before = integrity(m).verified_bytes_total;
    CHECK_RESULT(vram_monitor_seal(m, id), VRAM_MONITOR_RESULT_OK);
    first_slice_done(m, before);
    gpu.sticky_error_after_launches(0, 719); /* CUDA_ERROR_LAUNCH_FAILED */
    expect_failed(m, events, recorder_count(events), id, 719);
    CHECK(gpu.context_error(0) == 719, "the context keeps the error");
    CHECK_RESULT(vram_monitor_disable_integrity(m, 0), VRAM_MONITOR_RESULT_OK);
    CHECK(fake.primary_context_retains(0) == 0, "the reference is given back");
    /* As on the real driver, nothing can be freed in a context with a sticky error. */
    fake.set_primary_context_active(0, 0);
    CHECK(nothing_live() && gpu.context_error(0) == 0, "destroying the context frees what was made in it");
    fake.set_primary_context_active(0, 1);

    section("the engine's context destroyed: INTEGRITY_FAILED");
    make_primary_current(0);
    CHECK_RESULT(vram_monitor_enable_integrity(m, 0, NULL), VRAM_MONITOR_RESULT_OK);
    before = integrity(m).verified_bytes_total;
    CHECK_RESULT(vram_monitor_seal(m, id), VRAM_MONITOR_RESULT_OK);
    first_slice_done(m, before);
    fake.set_primary_context_active(0, 0);
    expect_failed(m, events, recorder_count(events), id, 709); /* CUDA_ERROR_CONTEXT_IS_DESTROYED */
    CHECK_RESULT(vram_monitor_disable_integrity(m, 0), VRAM_MONITOR_RESULT_OK);
    CHECK(nothing_live() && fake.primary_context_retains(0) == 0, "nothing left, no release below zero");
    CHECK(fake.context_creations() == 0, "the library never created a context");
    fake.set_primary_context_active(0, 1);
    CHECK_RESULT(vram_monitor_unregister(m, id), VRAM_MONITOR_RESULT_OK);
    REQUIRE(fake.free(ptr) == 0, "fake_cuda_free");
}

/* ---- free and disable while a verification runs ------------------------------------------ */

struct race {
    VramMonitor *m;
    atomic_int freed;         /* set once vram_monitor_free returned */
    atomic_int calls;         /* callbacks so far */
    atomic_int late_calls;    /* callbacks that started after free returned */
    atomic_int verify_result; /* what the racing verify_now returned */
};

static void race_callback(const VramMonitorEvent *event, void *user_data) {
    struct race *r = user_data;
    (void)event;
    atomic_fetch_add(&r->calls, 1);
    if (atomic_load(&r->freed)) atomic_fetch_add(&r->late_calls, 1);
}

static void *race_verify(void *arg) {
    struct race *r = arg;
    atomic_store(&r->verify_result, (int)vram_monitor_verify_now(r->m, NULL));
    return NULL;
}

static bool launch_in_progress(void) {
    for (int i = 0; i < 30000; i++) {
        if (counters().launches_in_progress > 0) return true;
        sleep_ms(1);
    }
    return false;
}

static void free_or_disable_during_a_verification(bool free_it, int rounds) {
    section(free_it ? "free during a verification: waits for it, nothing left, no callback after"
                    : "disable during a verification: waits for it, nothing left");
    for (int round = 0; round < rounds; round++) {
        struct race r;
        pthread_t verifier;
        unsigned char byte = 0x11;
        uint64_t id = 0;
        unsigned long long ptr = weights(2 * MiB);
        memset(&r, 0, sizeof r);
        CHECK_RESULT(vram_monitor_new(3600u * 1000u, &r.m), VRAM_MONITOR_RESULT_OK);
        CHECK_RESULT(vram_monitor_set_callback(r.m, race_callback, &r, NULL), VRAM_MONITOR_RESULT_OK);
        CHECK_RESULT(vram_monitor_enable_integrity(r.m, 0, NULL), VRAM_MONITOR_RESULT_OK);
        CHECK_RESULT(vram_monitor_register_sealed(r.m, as_ptr(ptr), 2 * MiB, "w", &id), VRAM_MONITOR_RESULT_OK);
        first_slice_done(r.m, 0);
        /* A change to report, so that a callback after free would have something to say. */
        REQUIRE(gpu.write(ptr + 5, &byte, 1) == 0, "fake_cuda_write");
        gpu.set_launch_delay_us(100000);
        REQUIRE(pthread_create(&verifier, NULL, race_verify, &r) == 0, "starting the verifying thread");
        CHECK(launch_in_progress(), "round %d: the verification's launch is in progress", round);
        if (free_it) {
            CHECK_RESULT(vram_monitor_free(r.m), VRAM_MONITOR_RESULT_OK);
            atomic_store(&r.freed, 1);
        } else {
            CHECK_RESULT(vram_monitor_disable_integrity(r.m, 0), VRAM_MONITOR_RESULT_OK);
        }
        CHECK(counters().launches_in_progress == 0, "round %d: it returned after the launch ended", round);
        CHECK(nothing_live() && fake.primary_context_retains(0) == 0, "round %d: nothing left in the lent context", round);
        pthread_join(verifier, NULL);
        LIBRARY_RETURNED();
        int verified = atomic_load(&r.verify_result);
        CHECK(verified == VRAM_MONITOR_RESULT_OK || verified == VRAM_MONITOR_RESULT_CLOSED,
              "round %d: the racing verify_now got OK or CLOSED (%d)", round, verified);
        gpu.set_launch_delay_us(0);
        unsigned long long launches = counters().launches;
        sleep_ms(50);
        CHECK(counters().launches == launches, "round %d: no launch afterwards", round);
        CHECK(gpu.context_error(0) == 0, "round %d: nothing read freed memory", round);
        if (free_it) {
            CHECK(atomic_load(&r.late_calls) == 0, "round %d: no callback after free", round);
        } else {
            CHECK_RESULT(vram_monitor_free(r.m), VRAM_MONITOR_RESULT_OK);
        }
        REQUIRE(fake.free(ptr) == 0, "fake_cuda_free");
    }
}

int main(int argc, char **argv) {
    VramMonitor *m = NULL;
    struct recorder events;
    int rounds = under_valgrind() ? 1 : 5;
    (void)argc;

    CHECK_RESULT(vram_monitor_new(3600u * 1000u, &m), VRAM_MONITOR_RESULT_OK);
    fake_load();
    gpu_load();
    recorder_init(&events);
    CHECK_RESULT(vram_monitor_set_callback(m, recorder_callback, &events, NULL), VRAM_MONITOR_RESULT_OK);

    refusals_and_null_arguments(m);
    seal_verify_modified_reseal(m, &events);
    failures_are_integrity_failed(m, &events);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    recorder_destroy(&events);

    make_primary_current(0);
    free_or_disable_during_a_verification(true, rounds);
    free_or_disable_during_a_verification(false, rounds);
    return test_exit_code(argv[0]);
}
