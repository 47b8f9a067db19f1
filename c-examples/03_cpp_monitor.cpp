// 03_cpp_monitor.cpp - vram-monitor from C++17, through the header-only wrapper the library
// ships (include/vram_monitor.hpp): RAII Monitor and Registration, std::function callbacks,
// errors as vram_monitor::Error exceptions carrying the result code.
//
// Registers a toy model's weights, checks them, prints the report (like 01_register_weights.c),
// then frees one registered buffer behind the monitor's back and shows that the next check
// reports it NOT_MAPPED, through a lambda that receives the events.
//
// Needs an NVIDIA GPU. Exit status 0 when the weights were resident and the freed buffer was
// caught.
#include "vram_monitor.hpp"

#include <cuda_runtime_api.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

// ---- a device buffer, for the example's "engine" ---------------------------------------------

void cuda_check(cudaError_t err, const char *what) {
    if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

class DeviceBuffer {
public:
    explicit DeviceBuffer(std::size_t size) : size_(size) {
        cuda_check(cudaMalloc(&ptr_, size), "cudaMalloc");
        cuda_check(cudaMemset(ptr_, 0, size), "cudaMemset");
    }
    ~DeviceBuffer() { reset(); }
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer &operator=(const DeviceBuffer &) = delete;
    DeviceBuffer(DeviceBuffer &&other) noexcept : ptr_(std::exchange(other.ptr_, nullptr)), size_(other.size_) {}

    void reset() noexcept {
        if (ptr_ != nullptr) cudaFree(ptr_);
        ptr_ = nullptr;
    }
    void *get() const noexcept { return ptr_; }
    std::size_t size() const noexcept { return size_; }

private:
    void *ptr_ = nullptr;
    std::size_t size_;
};

const char *kind_name(VramMonitorEventKind kind) {
    switch (kind) {
    case VRAM_MONITOR_EVENT_KIND_VIOLATION: return "VIOLATION";
    case VRAM_MONITOR_EVENT_KIND_RECOVERED: return "RECOVERED";
    case VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED: return "HEALTH_CHANGED";
    case VRAM_MONITOR_EVENT_KIND_CHECK_FAILED: return "CHECK_FAILED";
    default: return "OTHER";  // kinds added by later versions of the library
    }
}

struct Violation {
    std::uint64_t id;
    VramMonitorVerdict verdict;
    std::string label;
};

int run() {
    cuda_check(cudaSetDevice(0), "cudaSetDevice");
    cuda_check(cudaFree(nullptr), "cudaFree(nullptr)");  // the engine's primary context

    struct Weight {
        std::string name;
        DeviceBuffer buffer;
        std::uint64_t id;
    };
    std::vector<Weight> weights;
    weights.push_back({"model.embed_tokens.weight", DeviceBuffer(64 * MiB), 0});
    weights.push_back({"model.layers.0.self_attn.qkv_proj.weight", DeviceBuffer(48 * MiB), 0});
    weights.push_back({"model.layers.0.mlp.gate_up_proj.weight", DeviceBuffer(128 * MiB), 0});
    weights.push_back({"lm_head.weight", DeviceBuffer(64 * MiB), 0});

    // What the handler collects; it runs on the monitor thread, main reads after check_now.
    std::mutex mutex;
    std::vector<Violation> violations;
    std::atomic<unsigned> events{0};

    vram_monitor::Monitor monitor;
    std::printf("vram-monitor %s (header %s)\n", vram_monitor::library_version().c_str(),
                vram_monitor::header_version().c_str());
    monitor.set_callback([&](const vram_monitor::Event &event) {
        ++events;
        std::printf("[vram-monitor %s] %s\n", kind_name(event.kind), event.message.c_str());
        if (event.kind == VRAM_MONITOR_EVENT_KIND_VIOLATION) {
            std::lock_guard<std::mutex> lock(mutex);
            violations.push_back({event.registration_id, event.verdict, event.label});
        }
    });

    // Registrations unregister when destroyed: declared after the monitor, they go first.
    std::vector<vram_monitor::Registration> registrations;
    for (auto &w : weights) {
        registrations.push_back(monitor.register_buffer(w.buffer.get(), w.buffer.size(), w.name));
        w.id = registrations.back().id();
        std::printf("registered #%" PRIu64 " %-45s %p +%zu\n", w.id, w.name.c_str(), w.buffer.get(), w.buffer.size());
    }

    VramMonitorCheckSummary summary = monitor.check_now();
    std::printf("check: %" PRIu64 " checked, %" PRIu64 " resident, %" PRIu64 " in violation, %s\n", summary.checked,
                summary.resident, summary.violations, summary.healthy ? "healthy" : "UNHEALTHY");
    std::printf("\n%s\n", monitor.report().c_str());
    bool ok = summary.healthy && summary.resident == weights.size();

    // A buffer that an engine bug frees while it is still registered.
    Weight &victim = weights.back();
    std::printf("freeing '%s' behind the monitor's back\n", victim.name.c_str());
    victim.buffer.reset();
    summary = monitor.check_now();
    bool caught = false;
    {
        std::lock_guard<std::mutex> lock(mutex);
        for (const auto &v : violations)
            if (v.id == victim.id && v.verdict == VRAM_MONITOR_VERDICT_NOT_MAPPED && v.label == victim.name) caught = true;
    }
    VramMonitorHealth health = monitor.health();
    std::printf("after the free: %" PRIu64 " in violation, healthy %s; the handler %s the freed buffer as NOT_MAPPED\n",
                health.current_violations, health.healthy ? "yes" : "no", caught ? "reported" : "did NOT report");
    std::printf("\n%s\n", monitor.report(vram_monitor::ReportFormat::Json).c_str());
    ok = ok && caught && !health.healthy && health.current_violations == 1;

    registrations.clear();  // unregisters every weight
    ok = ok && monitor.health().registrations == 0;
    std::printf("%u event(s) received; %s\n", events.load(), ok ? "all as expected" : "FAILED");
    // Locals die in reverse order: ~Monitor frees the monitor (joining its thread and deleting
    // the handler) before the handler's captures and the weights' buffers go.
    return ok ? 0 : 1;
}

}  // namespace

int main() {
    try {
        return run();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
