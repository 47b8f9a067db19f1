/*
 * 02_detect_violations.c - what vram-monitor catches, on a real GPU.
 *
 *  1. cudaMallocManaged memory: refused at registration (REFUSED_MANAGED).
 *  2. cudaMallocHost memory: refused at registration (REFUSED_HOST).
 *  3. A VMM range (cuMemAddressReserve + cuMemCreate on the device + cuMemMap, two mappings, the
 *     way PyTorch's expandable segments lay out a tensor) is registered; then its second mapping
 *     is unmapped and replaced by a HOST-located allocation: the next check reports HOST.
 *  4. A cudaMalloc buffer is registered, then cudaFree'd: NOT_MAPPED.
 *  5. A buffer is registered, freed, and a buffer of the same size allocated: the driver often
 *     hands out the same address, which is then device memory again but not the registered
 *     buffer: REPLACED (NOT_MAPPED or REPLACED if the address differs).
 *
 * Every VIOLATION event is counted by the callback. Exit status 1 if an expected event did not
 * fire or an expected refusal did not happen. Needs an NVIDIA GPU.
 */
#include "vram_monitor.h"

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MiB ((size_t)1 << 20)

static int failures;

#define CUDA_OK(call)                                                                           \
    do {                                                                                        \
        cudaError_t cuda_err_ = (call);                                                         \
        if (cuda_err_ != cudaSuccess) {                                                         \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                       \
                    cudaGetErrorString(cuda_err_));                                             \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

#define CU_OK(call)                                                                             \
    do {                                                                                        \
        CUresult cu_err_ = (call);                                                              \
        if (cu_err_ != CUDA_SUCCESS) {                                                          \
            const char *cu_name_ = NULL;                                                        \
            cuGetErrorName(cu_err_, &cu_name_);                                                 \
            fprintf(stderr, "%s:%d: %s: %s (%d)\n", __FILE__, __LINE__, #call,                  \
                    cu_name_ ? cu_name_ : "?", (int)cu_err_);                                   \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

#define MONITOR_OK(call)                                                                        \
    do {                                                                                        \
        VramMonitorResult vm_result_ = (call);                                                  \
        if (vm_result_ != VRAM_MONITOR_RESULT_OK) {                                             \
            fprintf(stderr, "%s:%d: %s: %d (%s)\n", __FILE__, __LINE__, #call, (int)vm_result_, \
                    vram_monitor_result_str(vm_result_));                                       \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

/* ---- the callback: every VIOLATION event, by registration ------------------------------------ */

#define MAX_SEEN 64

struct seen_event {
    uint64_t id;
    VramMonitorVerdict verdict;
};

/* Written by the callback on the monitor thread; read by main after vram_monitor_check_now,
 * which returns only after the callbacks of its check have run. */
static struct seen_event seen[MAX_SEEN];
static atomic_int seen_count;

static void on_event(const VramMonitorEvent *event, void *user_data) {
    (void)user_data;
    printf("  [callback] %s\n", event->message);
    if (event->kind == VRAM_MONITOR_EVENT_KIND_VIOLATION) {
        int i = atomic_fetch_add(&seen_count, 1);
        if (i < MAX_SEEN) {
            seen[i].id = event->registration_id;
            seen[i].verdict = event->verdict;
        }
    }
}

/* The verdict of the last VIOLATION event about `id`, or -1 if none came. */
static int last_violation(uint64_t id) {
    int i, n = atomic_load(&seen_count), verdict = -1;
    for (i = 0; i < n && i < MAX_SEEN; i++)
        if (seen[i].id == id) verdict = (int)seen[i].verdict;
    return verdict;
}

static void expect(bool ok, const char *what) {
    printf("%s %s\n", ok ? "  ok:  " : "  FAIL:", what);
    if (!ok) failures++;
}

static void expect_violation(VramMonitor *monitor, uint64_t id, int want, int also_ok, const char *what) {
    char line[256];
    int got;
    MONITOR_OK(vram_monitor_check_now(monitor, NULL));
    got = last_violation(id);
    snprintf(line, sizeof line, "%s: callback with %s (wanted %s%s%s)", what,
             got < 0 ? "no violation" : vram_monitor_verdict_str(got), vram_monitor_verdict_str(want),
             also_ok >= 0 ? " or " : "", also_ok >= 0 ? vram_monitor_verdict_str(also_ok) : "");
    expect(got == want || (also_ok >= 0 && got == also_ok), line);
}

static void expect_refused(VramMonitor *monitor, const void *ptr, size_t size, const char *label,
                           VramMonitorResult want) {
    uint64_t id = 0;
    char line[256];
    VramMonitorResult got = vram_monitor_register(monitor, ptr, size, label, &id);
    snprintf(line, sizeof line, "register '%s' -> %s", label, vram_monitor_result_str(got));
    expect(got == want, line);
    if (got == VRAM_MONITOR_RESULT_OK) MONITOR_OK(vram_monitor_unregister(monitor, id));
}

/* ---- 3. VMM ---------------------------------------------------------------------------------- */

static void vmm_moved_to_host(VramMonitor *monitor, int device) {
    CUmemAllocationProp device_prop, host_prop;
    CUmemAccessDesc access;
    CUmemGenericAllocationHandle first, second, host;
    CUdeviceptr va;
    size_t granularity = 0, host_granularity = 0, size;
    uint64_t id = 0;
    CUresult created;

    printf("\n3. VMM range whose second mapping is replaced by host memory\n");
    memset(&device_prop, 0, sizeof device_prop);
    device_prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    device_prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    device_prop.location.id = device;
    CU_OK(cuMemGetAllocationGranularity(&granularity, &device_prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    size = 2 * granularity;
    CU_OK(cuMemAddressReserve(&va, size, 0, 0, 0));
    CU_OK(cuMemCreate(&first, granularity, &device_prop, 0));
    CU_OK(cuMemCreate(&second, granularity, &device_prop, 0));
    CU_OK(cuMemMap(va, granularity, 0, first, 0));
    CU_OK(cuMemMap(va + granularity, granularity, 0, second, 0));
    memset(&access, 0, sizeof access);
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = device;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CU_OK(cuMemSetAccess(va, size, &access, 1));

    MONITOR_OK(vram_monitor_register(monitor, (const void *)(uintptr_t)va, size, "vmm.expandable_segment", &id));
    printf("  registered #%" PRIu64 ": two %zu-byte device mappings at 0x%llx\n", id, granularity,
           (unsigned long long)va);
    MONITOR_OK(vram_monitor_check_now(monitor, NULL));
    expect(last_violation(id) < 0, "the VMM range is resident");

    /* The second mapping goes; host memory takes its place at the same address. */
    CU_OK(cuMemUnmap(va + granularity, granularity));
    CU_OK(cuMemRelease(second));
    memset(&host_prop, 0, sizeof host_prop);
    host_prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
#if defined(CUDA_VERSION) && CUDA_VERSION >= 12020
    host_prop.location.type = CU_MEM_LOCATION_TYPE_HOST;
    host_prop.location.id = 0;
    created = cuMemGetAllocationGranularity(&host_granularity, &host_prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (created == CUDA_SUCCESS && (host_granularity == 0 || granularity % host_granularity != 0))
        created = CUDA_ERROR_NOT_SUPPORTED;
    if (created == CUDA_SUCCESS) created = cuMemCreate(&host, granularity, &host_prop, 0);
#else
    (void)host_granularity;
    created = CUDA_ERROR_NOT_SUPPORTED; /* CU_MEM_LOCATION_TYPE_HOST needs CUDA 12.2 */
#endif
    if (created != CUDA_SUCCESS) {
        const char *name = NULL;
        cuGetErrorName(created, &name);
        printf("  cuMemCreate(location HOST) is not available here (%s): skipping the host part;\n"
               "  the unmapped half alone must show as NOT_MAPPED\n",
               name ? name : "?");
        expect_violation(monitor, id, VRAM_MONITOR_VERDICT_NOT_MAPPED, -1, "second mapping unmapped");
    } else {
        CU_OK(cuMemMap(va + granularity, granularity, 0, host, 0));
        CU_OK(cuMemSetAccess(va + granularity, granularity, &access, 1));
        expect_violation(monitor, id, VRAM_MONITOR_VERDICT_HOST, -1, "second mapping now host memory");
        CU_OK(cuMemUnmap(va + granularity, granularity));
        CU_OK(cuMemRelease(host));
    }
    MONITOR_OK(vram_monitor_unregister(monitor, id));
    CU_OK(cuMemUnmap(va, granularity));
    CU_OK(cuMemRelease(first));
    CU_OK(cuMemAddressFree(va, size));
}

int main(void) {
    VramMonitor *monitor = NULL;
    void *managed = NULL, *pinned = NULL, *freed = NULL, *before = NULL, *after = NULL;
    uint64_t id = 0;
    int device = 0;

    /* The engine: device 0 and its primary context. */
    CUDA_OK(cudaSetDevice(device));
    CUDA_OK(cudaFree(NULL));
    CU_OK(cuInit(0));

    MONITOR_OK(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &monitor));
    MONITOR_OK(vram_monitor_set_callback(monitor, on_event, NULL, NULL));
    printf("vram-monitor %s\n", vram_monitor_version());

    printf("\n1. unified (managed) memory\n");
    CUDA_OK(cudaMallocManaged(&managed, 16 * MiB, cudaMemAttachGlobal));
    expect_refused(monitor, managed, 16 * MiB, "managed", VRAM_MONITOR_RESULT_REFUSED_MANAGED);
    CUDA_OK(cudaFree(managed));

    printf("\n2. pinned host memory\n");
    CUDA_OK(cudaMallocHost(&pinned, 16 * MiB));
    expect_refused(monitor, pinned, 16 * MiB, "pinned host", VRAM_MONITOR_RESULT_REFUSED_HOST);
    CUDA_OK(cudaFreeHost(pinned));

    vmm_moved_to_host(monitor, device);

    printf("\n4. a registered buffer is freed\n");
    CUDA_OK(cudaMalloc(&freed, 32 * MiB));
    MONITOR_OK(vram_monitor_register(monitor, freed, 32 * MiB, "freed", &id));
    CUDA_OK(cudaFree(freed));
    expect_violation(monitor, id, VRAM_MONITOR_VERDICT_NOT_MAPPED, -1, "cudaFree'd buffer");
    MONITOR_OK(vram_monitor_unregister(monitor, id));

    printf("\n5. a registered buffer is freed and a new one of the same size allocated\n");
    CUDA_OK(cudaMalloc(&before, 32 * MiB));
    MONITOR_OK(vram_monitor_register(monitor, before, 32 * MiB, "reallocated", &id));
    CUDA_OK(cudaFree(before));
    CUDA_OK(cudaMalloc(&after, 32 * MiB));
    printf("  old %p, new %p: %s address\n", before, after, before == after ? "the same" : "a different");
    if (before == after)
        expect_violation(monitor, id, VRAM_MONITOR_VERDICT_REPLACED, -1, "freed and reallocated at the same address");
    else
        expect_violation(monitor, id, VRAM_MONITOR_VERDICT_NOT_MAPPED, VRAM_MONITOR_VERDICT_REPLACED,
                         "freed and reallocated elsewhere");
    MONITOR_OK(vram_monitor_unregister(monitor, id));
    CUDA_OK(cudaFree(after));

    printf("\n%d violation event(s) seen\n", atomic_load(&seen_count));
    MONITOR_OK(vram_monitor_free(monitor));
    printf("%s\n", failures == 0 ? "every expected detection happened" : "FAILED: an expected detection did not happen");
    return failures == 0 ? 0 : 1;
}
