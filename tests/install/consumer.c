/* consumer.c - a C program built against an installed vram-monitor (find_package or
 * pkg-config), run against the fake libcuda (LD_LIBRARY_PATH). Registers fake device memory,
 * frees it behind the monitor's back and expects the check to catch it. Prints one line per
 * step; exit status 0 when all held. */
#define _GNU_SOURCE
#include <vram_monitor.h>

#include <dlfcn.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

typedef unsigned long long (*alloc_fn)(int kind, size_t size, int device);
typedef int (*free_fn)(unsigned long long base);

static int failures;

static void step(int ok, const char *what) {
    printf("%s consumer.c: %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) failures++;
}

int main(void) {
    char header_version[32];
    VramMonitor *m = NULL;
    VramMonitorResult r;
    VramMonitorCheckSummary summary;
    void *cuda, *a, *f;
    alloc_fn fake_alloc;
    free_fn fake_free;
    unsigned long long base;
    uint64_t id = 0;

    snprintf(header_version, sizeof header_version, "%d.%d.%d", VRAM_MONITOR_VERSION_MAJOR, VRAM_MONITOR_VERSION_MINOR,
             VRAM_MONITOR_VERSION_PATCH);
    step(strcmp(header_version, vram_monitor_version()) == 0, "the loaded library's version is the header's");

    r = vram_monitor_new(3600000u, &m);
    printf("     vram_monitor_new: %s\n", vram_monitor_result_str(r));
    step(r == VRAM_MONITOR_RESULT_OK, "vram_monitor_new (the fake driver loaded)");
    if (r != VRAM_MONITOR_RESULT_OK) return 1;

    cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    a = cuda ? dlsym(cuda, "fake_cuda_alloc") : NULL;
    f = cuda ? dlsym(cuda, "fake_cuda_free") : NULL;
    step(a != NULL && f != NULL, "the loaded libcuda.so.1 is the fake driver");
    if (a == NULL || f == NULL) return 1;
    memcpy(&fake_alloc, &a, sizeof fake_alloc);
    memcpy(&fake_free, &f, sizeof fake_free);

    base = fake_alloc(1 /* FAKE_CUDA_DEVICE */, 1u << 20, 0);
    r = vram_monitor_register(m, (const void *)(uintptr_t)base, 1u << 20, "consumer.weight", &id);
    step(r == VRAM_MONITOR_RESULT_OK && id != 0, "device memory registers");
    step(fake_free(base) == 0, "freed behind the monitor's back");
    r = vram_monitor_check_now(m, &summary);
    step(r == VRAM_MONITOR_RESULT_OK && summary.violations == 1 && !summary.healthy, "the check reports the violation");
    step(vram_monitor_free(m) == VRAM_MONITOR_RESULT_OK, "vram_monitor_free");
    printf("consumer.c: %s\n", failures == 0 ? "all steps held" : "FAILED");
    return failures == 0 ? 0 : 1;
}
