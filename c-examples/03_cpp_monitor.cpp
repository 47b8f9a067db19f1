// 03_cpp_monitor.cpp - vram-monitor from C++17, through a small RAII wrapper local to this
// example (the library ships only the C header).
//
// Registers a toy model's weights, checks them, prints the report (like 01_register_weights.c),
// then frees one registered buffer behind the monitor's back and shows that the next check
// reports it NOT_MAPPED, through a lambda that receives the events.
//
// Needs an NVIDIA GPU. Exit status 0 when the weights were resident and the freed buffer was
// caught.
#include "vram_monitor.h"

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

// ---- the wrapper -----------------------------------------------------------------------------

class MonitorError : public std::runtime_error {
public:
    MonitorError(const std::string &what, VramMonitorResult result)
        : std::runtime_error(what + ": " + vram_monitor_result_str(result)), result_(result) {}
    VramMonitorResult result() const noexcept { return result_; }

private:
    VramMonitorResult result_;
};

void throw_unless_ok(VramMonitorResult result, const std::string &what) {
    if (result != VRAM_MONITOR_RESULT_OK) throw MonitorError(what, result);
}

// vram_monitor_free stops and joins the monitor thread; after it, no callback runs.
struct MonitorDeleter {
    void operator()(VramMonitor *monitor) const noexcept { vram_monitor_free(monitor); }
};
using MonitorPtr = std::unique_ptr<VramMonitor, MonitorDeleter>;

using EventHandler = std::function<void(const VramMonitorEvent &)>;

// C-linkage trampolines: the user data is a heap-allocated EventHandler owned by the monitor,
// deleted by the library through release_handler when the handler is replaced or the monitor
// is freed. Exceptions must not cross into the library's thread.
extern "C" {
static void call_handler(const VramMonitorEvent *event, void *user_data) {
    try {
        (*static_cast<EventHandler *>(user_data))(*event);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "vram-monitor event handler threw: %s\n", e.what());
    } catch (...) {
        std::fprintf(stderr, "vram-monitor event handler threw\n");
    }
}
static void release_handler(void *user_data) { delete static_cast<EventHandler *>(user_data); }
}

class VramMonitorHandle {
public:
    explicit VramMonitorHandle(std::uint32_t interval_ms = VRAM_MONITOR_DEFAULT_INTERVAL_MS) {
        VramMonitor *raw = nullptr;
        throw_unless_ok(vram_monitor_new(interval_ms, &raw), "vram_monitor_new");
        monitor_.reset(raw);
    }

    // Any callable taking `const VramMonitorEvent &`; it runs on the monitor's thread.
    void on_event(EventHandler handler) {
        auto owned = std::make_unique<EventHandler>(std::move(handler));
        throw_unless_ok(vram_monitor_set_callback(monitor_.get(), call_handler, owned.get(), release_handler),
                        "vram_monitor_set_callback");
        owned.release();  // the monitor owns it now
    }

    // Registers [ptr, ptr + size); throws MonitorError (REFUSED_<verdict>, ...) otherwise.
    std::uint64_t watch(const void *ptr, std::size_t size, const std::string &label) {
        std::uint64_t id = 0;
        throw_unless_ok(vram_monitor_register(monitor_.get(), ptr, size, label.c_str(), &id),
                        "vram_monitor_register(" + label + ")");
        return id;
    }

    void unwatch(std::uint64_t id) { throw_unless_ok(vram_monitor_unregister(monitor_.get(), id), "vram_monitor_unregister"); }

    VramMonitorCheckSummary check_now() {
        VramMonitorCheckSummary summary{};
        throw_unless_ok(vram_monitor_check_now(monitor_.get(), &summary), "vram_monitor_check_now");
        return summary;
    }

    VramMonitorHealth health() const {
        VramMonitorHealth health{};
        throw_unless_ok(vram_monitor_health(monitor_.get(), &health), "vram_monitor_health");
        return health;
    }

    std::string report(std::int32_t format = VRAM_MONITOR_REPORT_FORMAT_TEXT) const {
        // The report can grow between the size query and the copy: retry until it fits.
        std::string text;
        std::size_t needed = 0;
        VramMonitorResult result = vram_monitor_report(monitor_.get(), format, nullptr, 0, &needed);
        while (result == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL) {
            text.resize(needed);
            std::size_t length = 0;
            result = vram_monitor_report(monitor_.get(), format, text.data(), text.size(), &length);
            if (result == VRAM_MONITOR_RESULT_OK) text.resize(length);
            else needed = length;
        }
        throw_unless_ok(result, "vram_monitor_report");
        return text;
    }

private:
    MonitorPtr monitor_;
};

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
    }
    return "?";
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

    VramMonitorHandle monitor;
    std::printf("vram-monitor %s (header %d.%d.%d)\n", vram_monitor_version(), VRAM_MONITOR_VERSION_MAJOR,
                VRAM_MONITOR_VERSION_MINOR, VRAM_MONITOR_VERSION_PATCH);
    monitor.on_event([&](const VramMonitorEvent &event) {
        ++events;
        std::printf("[vram-monitor %s] %s\n", kind_name(event.kind), event.message);
        if (event.kind == VRAM_MONITOR_EVENT_KIND_VIOLATION) {
            std::lock_guard<std::mutex> lock(mutex);
            violations.push_back({event.registration_id, event.verdict, event.label});
        }
    });

    for (auto &w : weights) {
        w.id = monitor.watch(w.buffer.get(), w.buffer.size(), w.name);
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
    std::printf("\n%s\n", monitor.report(VRAM_MONITOR_REPORT_FORMAT_JSON).c_str());
    ok = ok && caught && !health.healthy && health.current_violations == 1;

    for (const auto &w : weights) monitor.unwatch(w.id);
    std::printf("%u event(s) received; %s\n", events.load(), ok ? "all as expected" : "FAILED");
    // Locals die in reverse order: ~VramMonitorHandle frees the monitor (joining its thread and
    // deleting the handler) before the handler's captures and the weights' buffers go.
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
