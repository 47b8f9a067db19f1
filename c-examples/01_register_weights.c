/*
 * 01_register_weights.c - the basic use of vram-monitor from a C inference engine.
 *
 * Loads a toy "model" (a few cudaMalloc buffers), creates a monitor, asks for events through a
 * callback, registers every weight buffer, runs one check at once and prints the report. The
 * monitor's own thread would go on checking every VRAM_MONITOR_DEFAULT_INTERVAL_MS (60 s).
 *
 * Needs an NVIDIA GPU. Exit status 0 when every buffer was registered and found resident.
 */
#include "vram_monitor.h"

#include <cuda_runtime_api.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define MiB ((size_t)1 << 20)

#define CUDA_OK(call)                                                                           \
    do {                                                                                        \
        cudaError_t cuda_err_ = (call);                                                         \
        if (cuda_err_ != cudaSuccess) {                                                         \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                       \
                    cudaGetErrorString(cuda_err_));                                             \
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

struct weight {
    const char *name;
    size_t size;
    void *ptr;
    uint64_t id;
};

static const char *event_kind(VramMonitorEventKind kind) {
    switch (kind) {
    case VRAM_MONITOR_EVENT_KIND_VIOLATION: return "VIOLATION";
    case VRAM_MONITOR_EVENT_KIND_RECOVERED: return "RECOVERED";
    case VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED: return "HEALTH_CHANGED";
    case VRAM_MONITOR_EVENT_KIND_CHECK_FAILED: return "CHECK_FAILED";
    default: return "?";
    }
}

/* Runs on the monitor's thread. The event and its strings live only during the call. */
static void print_event(const VramMonitorEvent *event, void *user_data) {
    unsigned *events = user_data;
    ++*events;
    printf("[vram-monitor %s] %s (verdict %s, healthy %s)\n", event_kind(event->kind), event->message,
           vram_monitor_verdict_str(event->verdict), event->healthy ? "yes" : "no");
}

int main(void) {
    struct weight weights[] = {
        {"model.embed_tokens.weight", 64 * MiB, NULL, 0},
        {"model.layers.0.self_attn.qkv_proj.weight", 48 * MiB, NULL, 0},
        {"model.layers.0.mlp.gate_up_proj.weight", 128 * MiB, NULL, 0},
        {"lm_head.weight", 64 * MiB, NULL, 0},
    };
    const size_t n = sizeof weights / sizeof weights[0];
    VramMonitor *monitor = NULL;
    VramMonitorCheckSummary summary;
    unsigned events = 0;
    size_t i, report_len = 0, written = 0;
    char *report;
    int status;

    /* The engine: device 0, its primary context, its weights. */
    CUDA_OK(cudaSetDevice(0));
    CUDA_OK(cudaFree(NULL));
    for (i = 0; i < n; i++) {
        CUDA_OK(cudaMalloc(&weights[i].ptr, weights[i].size));
        CUDA_OK(cudaMemset(weights[i].ptr, 0, weights[i].size));
    }

    /* The monitor. It loads libcuda itself and creates no CUDA context. */
    MONITOR_OK(vram_monitor_new(VRAM_MONITOR_DEFAULT_INTERVAL_MS, &monitor));
    printf("vram-monitor %s (header %d.%d.%d)\n", vram_monitor_version(), VRAM_MONITOR_VERSION_MAJOR,
           VRAM_MONITOR_VERSION_MINOR, VRAM_MONITOR_VERSION_PATCH);
    MONITOR_OK(vram_monitor_set_callback(monitor, print_event, &events, NULL));

    for (i = 0; i < n; i++) {
        MONITOR_OK(vram_monitor_register(monitor, weights[i].ptr, weights[i].size, weights[i].name, &weights[i].id));
        printf("registered #%" PRIu64 " %-45s %p +%zu\n", weights[i].id, weights[i].name, weights[i].ptr,
               weights[i].size);
    }

    /* One check now (callbacks for anything it finds run before it returns). */
    MONITOR_OK(vram_monitor_check_now(monitor, &summary));
    printf("check: %" PRIu64 " checked, %" PRIu64 " resident, %" PRIu64 " in violation, %" PRIu64
           " failed queries, %" PRIu64 " us, %s\n",
           summary.checked, summary.resident, summary.violations, summary.check_failures, summary.duration_us,
           summary.healthy ? "healthy" : "UNHEALTHY");

    /* The report: ask for the size, then fetch it. */
    if (vram_monitor_report(monitor, VRAM_MONITOR_REPORT_FORMAT_TEXT, NULL, 0, &report_len) ==
            VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL &&
        (report = malloc(report_len)) != NULL) {
        MONITOR_OK(vram_monitor_report(monitor, VRAM_MONITOR_REPORT_FORMAT_TEXT, report, report_len, &written));
        printf("\n%s\n", report);
        free(report);
    }

    status = summary.healthy && summary.resident == n ? 0 : 1;
    printf("%u event(s) received\n", events);

    for (i = 0; i < n; i++) MONITOR_OK(vram_monitor_unregister(monitor, weights[i].id));
    MONITOR_OK(vram_monitor_free(monitor)); /* stops and joins the monitor thread */
    for (i = 0; i < n; i++) CUDA_OK(cudaFree(weights[i].ptr));
    printf("%s\n", status == 0 ? "all weights resident in VRAM" : "FAILED: not every weight is resident");
    return status;
}
