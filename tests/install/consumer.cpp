// consumer.cpp - a C++17 program built against an installed vram-monitor through the
// header-only wrapper vram_monitor.hpp, run against the fake libcuda (LD_LIBRARY_PATH).
#include <vram_monitor.hpp>

#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstdint>
#include <cstring>

int main() {
    int failures = 0;
    auto step = [&failures](bool ok, const char *what) {
        std::printf("%s consumer.cpp: %s\n", ok ? "ok  " : "FAIL", what);
        if (!ok) ++failures;
    };
    try {
        step(vram_monitor::library_version() == vram_monitor::header_version(), "library version = header version");
        vram_monitor::Monitor monitor(std::chrono::hours(1));
        std::atomic<int> violations{0};
        monitor.set_callback([&violations](const vram_monitor::Event &e) {
            if (e.kind == VRAM_MONITOR_EVENT_KIND_VIOLATION && e.label == "consumer.weight") ++violations;
        });
        void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
        void *a = cuda ? dlsym(cuda, "fake_cuda_alloc") : nullptr;
        void *f = cuda ? dlsym(cuda, "fake_cuda_free") : nullptr;
        step(a != nullptr && f != nullptr, "the loaded libcuda.so.1 is the fake driver");
        if (a == nullptr || f == nullptr) return 1;
        unsigned long long (*fake_alloc)(int, std::size_t, int);
        int (*fake_free)(unsigned long long);
        std::memcpy(&fake_alloc, &a, sizeof fake_alloc);
        std::memcpy(&fake_free, &f, sizeof fake_free);

        unsigned long long base = fake_alloc(1 /* FAKE_CUDA_DEVICE */, 1u << 20, 0);
        const void *ptr = reinterpret_cast<const void *>(static_cast<std::uintptr_t>(base));
        {
            vram_monitor::Registration reg = monitor.register_buffer(ptr, 1u << 20, "consumer.weight");
            step(static_cast<bool>(reg) && monitor.health().registrations == 1, "device memory registers");
            step(fake_free(base) == 0, "freed behind the monitor's back");
            VramMonitorCheckSummary summary = monitor.check_now();
            step(summary.violations == 1 && violations.load() == 1, "the check and the callback report the violation");
        }
        step(monitor.health().registrations == 0, "~Registration unregistered");
        try {
            (void)monitor.register_buffer(ptr, 1u << 20, "freed");
            step(false, "freed memory is refused");
        } catch (const vram_monitor::Error &e) {
            step(e.code() == VRAM_MONITOR_RESULT_REFUSED_NOT_MAPPED && e.refused(), "freed memory is refused (NOT_MAPPED)");
        }
    } catch (const std::exception &e) {
        std::printf("FAIL consumer.cpp: exception: %s\n", e.what());
        return 1;
    }
    std::printf("consumer.cpp: %s\n", failures == 0 ? "all steps held" : "FAILED");
    return failures == 0 ? 0 : 1;
}
