/*
 * test_register_many.c - vram_monitor_register_many and vram_monitor_registration against the
 * fake libcuda: one driver query per distinct allocation, per-entry codes, both ends of
 * ALL_OR_NOTHING, bad input, and reading one registration back with its label; and
 * vram_monitor_rebind taking a registration back after its memory was remapped.
 */
#define _GNU_SOURCE
#include "test_support.h"

#define ALLOCS 4
#define PER_ALLOC 25
#define ENTRIES (ALLOCS * PER_ALLOC)

static void a_model_in_one_call(VramMonitor *m) {
    VramMonitorRegion regions[ENTRIES];
    char labels[ENTRIES][32];
    uint64_t ids[ENTRIES];
    VramMonitorResult results[ENTRIES];
    unsigned long long base[ALLOCS];
    unsigned long long queries_before;
    size_t registered = 0;
    int a, k, i, j, ok = 0;
    VramMonitorHealth h;

    section("100 tensors in 4 allocations, one call: 4 driver queries");
    for (a = 0; a < ALLOCS; a++) base[a] = fake_alloc_or_die(FAKE_CUDA_DEVICE, PER_ALLOC * 4096, 0);
    /* Interleaved, as a state dict's order need not follow addresses. */
    for (i = 0, k = 0; k < PER_ALLOC; k++) {
        for (a = 0; a < ALLOCS; a++, i++) {
            snprintf(labels[i], sizeof labels[i], "layers.%d.w%d", a, k);
            regions[i] = (VramMonitorRegion){as_ptr(base[a] + (unsigned long long)k * 4096), 4096, labels[i]};
        }
    }
    queries_before = fake.pointer_queries();
    CHECK_RESULT(vram_monitor_register_many(m, regions, ENTRIES, 0, ids, results, &registered), VRAM_MONITOR_RESULT_OK);
    CHECK(fake.pointer_queries() - queries_before == ALLOCS, "one driver query per allocation (%llu for %d allocations)",
          fake.pointer_queries() - queries_before, ALLOCS);
    CHECK(registered == ENTRIES, "every entry registered (%zu)", registered);
    for (i = 0; i < ENTRIES; i++) {
        if (results[i] == VRAM_MONITOR_RESULT_OK && ids[i] != 0) ok++;
        for (j = 0; j < i; j++) CHECK(ids[i] != ids[j] || ids[i] == 0, "ids unique (%d, %d)", i, j);
    }
    CHECK(ok == ENTRIES, "each entry OK with an id (%d)", ok);
    h = get_health(m);
    CHECK(h.registrations == ENTRIES, "health counts %d registrations (%" PRIu64 ")", ENTRIES, h.registrations);

    {
        VramMonitorRegistrationInfo info;
        char label[64];
        size_t len = 0;
        memset(&info, 0, sizeof info);
        CHECK_RESULT(vram_monitor_registration(m, ids[5], &info, label, sizeof label, &len), VRAM_MONITOR_RESULT_OK);
        CHECK(info.id == ids[5] && info.ptr == regions[5].ptr && info.size == 4096 && info.device == 0 &&
                  info.verdict == VRAM_MONITOR_VERDICT_RESIDENT && info.pieces == 1 && info.check_failing == 0,
              "registration(id) reads it back (ptr %p size %zu verdict %d pieces %u)", info.ptr, info.size, info.verdict,
              info.pieces);
        CHECK(strcmp(label, labels[5]) == 0 && len == strlen(labels[5]), "its label \"%s\" (len %zu)", label, len);
        len = 0;
        CHECK_RESULT(vram_monitor_registration(m, ids[5], &info, NULL, 0, &len), VRAM_MONITOR_RESULT_OK);
        CHECK(len == strlen(labels[5]) + 1, "NULL buffer: the size needed with the NUL (%zu)", len);
        memset(label, 'x', sizeof label);
        CHECK_RESULT(vram_monitor_registration(m, ids[5], &info, label, 3, &len), VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL);
        CHECK(label[0] == 'x' && len == strlen(labels[5]) + 1, "too small: nothing written, the size needed");
        CHECK_RESULT(vram_monitor_registration(m, 0, &info, NULL, 0, NULL), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
        CHECK_RESULT(vram_monitor_registration(m, ids[5], NULL, NULL, 0, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
        CHECK_RESULT(vram_monitor_registration(m, ids[5], &info, NULL, 8, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
        CHECK_RESULT(vram_monitor_registration(NULL, ids[5], &info, NULL, 0, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
        /* The verdict follows the memory. */
        REQUIRE(fake.set_kind(base[1], FAKE_CUDA_MANAGED) == 0, "set_kind");
        CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
        CHECK_RESULT(vram_monitor_registration(m, ids[5], &info, NULL, 0, NULL), VRAM_MONITOR_RESULT_OK);
        CHECK(info.verdict == VRAM_MONITOR_VERDICT_MANAGED, "registration(id) after the memory moved: MANAGED (%d)", info.verdict);
        REQUIRE(fake.set_kind(base[1], FAKE_CUDA_DEVICE) == 0, "set_kind");
    }
    for (i = 0; i < ENTRIES; i++) CHECK_RESULT(vram_monitor_unregister(m, ids[i]), VRAM_MONITOR_RESULT_OK);
    for (a = 0; a < ALLOCS; a++) fake.free(base[a]);
}

/* Entries: 0 ok, 1 NULL label, 2 size 0, 3 wraps, 4 duplicate of 0, 5 managed, 6 not UTF-8,
 * 7 NULL ptr, 8 ok. */
#define BAD 9
static void fill_bad(VramMonitorRegion *r, unsigned long long dev, unsigned long long managed) {
    static const char not_utf8[] = {(char)0xff, (char)0xfe, 0};
    r[0] = (VramMonitorRegion){as_ptr(dev), 4096, "ok.0"};
    r[1] = (VramMonitorRegion){as_ptr(dev + 4096), 4096, NULL};
    r[2] = (VramMonitorRegion){as_ptr(dev + 8192), 0, "size0"};
    r[3] = (VramMonitorRegion){(const void *)(UINTPTR_MAX - 10), 100, "wraps"};
    r[4] = (VramMonitorRegion){as_ptr(dev), 4096, "dup"};
    r[5] = (VramMonitorRegion){as_ptr(managed), 4096, "managed"};
    r[6] = (VramMonitorRegion){as_ptr(dev + 12288), 4096, not_utf8};
    r[7] = (VramMonitorRegion){NULL, 4096, "null"};
    r[8] = (VramMonitorRegion){as_ptr(dev + 16384), 4096, "ok.8"};
}

static void bad_entries_fail_only_themselves(VramMonitor *m) {
    VramMonitorRegion r[BAD];
    uint64_t ids[BAD];
    VramMonitorResult res[BAD];
    size_t registered = 99;
    unsigned long long dev = fake_alloc_or_die(FAKE_CUDA_DEVICE, MiB, 0);
    unsigned long long managed = fake_alloc_or_die(FAKE_CUDA_MANAGED, MiB, 0);
    static const VramMonitorResult want[BAD] = {
        VRAM_MONITOR_RESULT_OK, VRAM_MONITOR_RESULT_NULL_ARGUMENT, VRAM_MONITOR_RESULT_INVALID_ARGUMENT,
        VRAM_MONITOR_RESULT_INVALID_ARGUMENT, VRAM_MONITOR_RESULT_DUPLICATE_RANGE, VRAM_MONITOR_RESULT_REFUSED_MANAGED,
        VRAM_MONITOR_RESULT_INVALID_LABEL, VRAM_MONITOR_RESULT_NULL_ARGUMENT, VRAM_MONITOR_RESULT_OK};
    int i;

    section("bad entries, default mode: each fails only itself");
    fill_bad(r, dev, managed);
    CHECK_RESULT(vram_monitor_register_many(m, r, BAD, 0, ids, res, &registered), VRAM_MONITOR_RESULT_ENTRIES_FAILED);
    CHECK(registered == 2, "two registered (%zu)", registered);
    for (i = 0; i < BAD; i++) {
        CHECK(res[i] == want[i], "entry %d: %s (want %s)", i, vram_monitor_result_str(res[i]), vram_monitor_result_str(want[i]));
        CHECK((ids[i] != 0) == (want[i] == VRAM_MONITOR_RESULT_OK), "entry %d: an id only when registered", i);
    }
    CHECK(get_health(m).registrations == 2, "health: 2 registrations");
    CHECK_RESULT(vram_monitor_unregister(m, ids[0]), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, ids[8]), VRAM_MONITOR_RESULT_OK);

    section("ALL_OR_NOTHING: one refused entry, nothing registered");
    {
        VramMonitorRegion two[3] = {{as_ptr(dev), 4096, "a"}, {as_ptr(managed), 4096, "managed"}, {as_ptr(dev + 4096), 4096, "b"}};
        uint64_t id3[3] = {7, 7, 7};
        VramMonitorResult res3[3];
        registered = 99;
        CHECK_RESULT(vram_monitor_register_many(m, two, 3, VRAM_MONITOR_REGISTER_ALL_OR_NOTHING, id3, res3, &registered),
                     VRAM_MONITOR_RESULT_ENTRIES_FAILED);
        CHECK(registered == 0 && id3[0] == 0 && id3[1] == 0 && id3[2] == 0, "nothing registered, every id 0");
        CHECK(res3[0] == VRAM_MONITOR_RESULT_ENTRIES_FAILED && res3[1] == VRAM_MONITOR_RESULT_REFUSED_MANAGED &&
                  res3[2] == VRAM_MONITOR_RESULT_ENTRIES_FAILED,
              "the refused entry has its own code, the others ENTRIES_FAILED (%d %d %d)", res3[0], res3[1], res3[2]);
        CHECK(get_health(m).registrations == 0, "health: 0 registrations");
        /* Without the bad entry the same call registers all. */
        two[1] = (VramMonitorRegion){as_ptr(dev + 8192), 4096, "c"};
        CHECK_RESULT(vram_monitor_register_many(m, two, 3, VRAM_MONITOR_REGISTER_ALL_OR_NOTHING, id3, res3, NULL),
                     VRAM_MONITOR_RESULT_OK);
        CHECK(get_health(m).registrations == 3, "all three registered");
        for (i = 0; i < 3; i++) CHECK_RESULT(vram_monitor_unregister(m, id3[i]), VRAM_MONITOR_RESULT_OK);
    }
    section("ALL_OR_NOTHING with entries C rejects (NULL label, not UTF-8, NULL ptr)");
    CHECK_RESULT(vram_monitor_register_many(m, r, BAD, VRAM_MONITOR_REGISTER_ALL_OR_NOTHING, ids, res, &registered),
                 VRAM_MONITOR_RESULT_ENTRIES_FAILED);
    CHECK(registered == 0 && get_health(m).registrations == 0, "nothing registered");
    CHECK(res[1] == VRAM_MONITOR_RESULT_NULL_ARGUMENT && res[6] == VRAM_MONITOR_RESULT_INVALID_LABEL &&
              res[7] == VRAM_MONITOR_RESULT_NULL_ARGUMENT && res[0] == VRAM_MONITOR_RESULT_ENTRIES_FAILED,
          "own codes for the rejected, ENTRIES_FAILED for the rest");

    section("a range repeated after an entry C rejects is still a repeat");
    {
        static const char not_utf8[] = {(char)0xff, 0};
        VramMonitorRegion rep[4] = {{as_ptr(dev), 4096, not_utf8}, {as_ptr(dev), 4096, "again"}, {as_ptr(dev + 4096), 4096, NULL},
                                    {as_ptr(dev + 8192), 4096, "fine"}};
        uint64_t id4[4];
        VramMonitorResult res4[4];
        registered = 99;
        CHECK_RESULT(vram_monitor_register_many(m, rep, 4, 0, id4, res4, &registered), VRAM_MONITOR_RESULT_ENTRIES_FAILED);
        CHECK(res4[0] == VRAM_MONITOR_RESULT_INVALID_LABEL && res4[1] == VRAM_MONITOR_RESULT_DUPLICATE_RANGE &&
                  res4[2] == VRAM_MONITOR_RESULT_NULL_ARGUMENT && res4[3] == VRAM_MONITOR_RESULT_OK,
              "invalid label, the repeat DUPLICATE_RANGE, NULL label, the last registered (%d %d %d %d)", res4[0], res4[1],
              res4[2], res4[3]);
        CHECK(registered == 1 && id4[1] == 0 && id4[3] != 0, "only the last registered");
        CHECK_RESULT(vram_monitor_unregister(m, id4[3]), VRAM_MONITOR_RESULT_OK);
    }

    section("bad calls");
    CHECK_RESULT(vram_monitor_register_many(m, NULL, 3, 0, ids, res, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register_many(m, r, 0, 0, ids, res, NULL), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_register_many(m, NULL, 0, 0, ids, res, NULL), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_register_many(m, r, 1, 2, ids, res, NULL), VRAM_MONITOR_RESULT_INVALID_ARGUMENT);
    CHECK_RESULT(vram_monitor_register_many(m, r, 1, 0, NULL, res, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register_many(m, r, 1, 0, ids, NULL, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_register_many(NULL, r, 1, 0, ids, res, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK(get_health(m).registrations == 0, "no bad call registered anything");
    fake.free(dev);
    fake.free(managed);
}

static void rebind_after_a_remap(VramMonitor *m) {
    VramMonitorRegistrationInfo info;
    char label[64];
    size_t len = 0;
    uint64_t id = 0, new_id = 0, untouched = 12345;
    unsigned long long base;

    section("rebind: remapped memory taken back under a new id, same label");
    base = fake_alloc_or_die(FAKE_CUDA_DEVICE, 2 << 20, 0);
    CHECK_RESULT(vram_monitor_register(m, as_ptr(base), 2 << 20, "layers.0.weight", &id), VRAM_MONITOR_RESULT_OK);
    REQUIRE(fake.reallocate(base) == 0, "fake_cuda_reallocate");
    CHECK_RESULT(vram_monitor_check_now(m, NULL), VRAM_MONITOR_RESULT_OK);
    memset(&info, 0, sizeof info);
    CHECK_RESULT(vram_monitor_registration(m, id, &info, NULL, 0, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK(info.verdict == VRAM_MONITOR_VERDICT_REPLACED, "remapped memory reads REPLACED before rebind (%d)", (int)info.verdict);
    CHECK_RESULT(vram_monitor_rebind(m, id, NULL), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_rebind(NULL, id, &new_id), VRAM_MONITOR_RESULT_NULL_ARGUMENT);
    CHECK_RESULT(vram_monitor_rebind(m, id, &new_id), VRAM_MONITOR_RESULT_OK);
    CHECK(new_id != 0 && new_id != id, "a new id (%" PRIu64 " after %" PRIu64 ")", new_id, id);
    CHECK_RESULT(vram_monitor_registration(m, id, &info, NULL, 0, NULL), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    memset(&info, 0, sizeof info);
    CHECK_RESULT(vram_monitor_registration(m, new_id, &info, label, sizeof label, &len), VRAM_MONITOR_RESULT_OK);
    CHECK(info.verdict == VRAM_MONITOR_VERDICT_RESIDENT && strcmp(label, "layers.0.weight") == 0,
          "the new registration is RESIDENT with the old label (%d, '%s')", (int)info.verdict, label);
    CHECK_RESULT(vram_monitor_rebind(m, id, &untouched), VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION);
    CHECK(untouched == 12345, "a failed rebind writes no id");
    REQUIRE(fake.free(base) == 0, "fake_cuda_free");
    CHECK_RESULT(vram_monitor_rebind(m, new_id, &untouched), VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED);
    CHECK_RESULT(vram_monitor_registration(m, new_id, &info, NULL, 0, NULL), VRAM_MONITOR_RESULT_OK);
    CHECK_RESULT(vram_monitor_unregister(m, new_id), VRAM_MONITOR_RESULT_OK);
}

int main(int argc, char **argv) {
    VramMonitor *m = NULL;
    (void)argc;
    setvbuf(stdout, NULL, _IOLBF, 0);
    REQUIRE(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &m) == VRAM_MONITOR_RESULT_OK, "new");
    fake_load();
    a_model_in_one_call(m);
    bad_entries_fail_only_themselves(m);
    rebind_after_a_remap(m);
    CHECK_RESULT(vram_monitor_free(m), VRAM_MONITOR_RESULT_OK);
    return test_exit_code(argv[0]);
}
