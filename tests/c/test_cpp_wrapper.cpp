// test_cpp_wrapper.cpp - the header-only C++17 wrapper (include/vram_monitor.hpp) against the
// fake libcuda: RAII of Monitor and Registration, errors as exceptions with the result code,
// std::function callbacks, exceptions stopped at the C boundary, the log handler; and the rest
// of the C API through it: register_many with per-entry results, registration() with its label,
// stall state and limits, pacing, device health, the Prometheus report, and the HTTP endpoint
// fetched over a socket.
//
// Prints "ok"/"FAIL" per check and exits 1 if any failed. Run by ctest with LD_LIBRARY_PATH
// pointing at the fake driver (tests/c/CMakeLists.txt).
#include "vram_monitor.hpp"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

int g_checks = 0;
int g_failures = 0;

void report(bool ok, int line, const std::string &what) {
    ++g_checks;
    if (!ok) ++g_failures;
    std::fprintf(ok ? stdout : stderr, "%s test_cpp_wrapper.cpp:%d: %s\n", ok ? "ok  " : "FAIL", line, what.c_str());
    std::fflush(ok ? stdout : stderr);
}
#define CHECK(cond, what) report((cond), __LINE__, std::string(what) + "  [" #cond "]")

// Runs `body`, expecting vram_monitor::Error with `code`.
template <typename F>
void expect_error(int line, const char *what, VramMonitorResult code, F &&body) {
    try {
        body();
        report(false, line, std::string(what) + ": no exception");
    } catch (const vram_monitor::Error &e) {
        report(e.code() == code, line,
               std::string(what) + ": Error code " + std::to_string(static_cast<int>(e.code())) + " (" + e.what() +
                   "), expected " + std::to_string(static_cast<int>(code)));
    } catch (const std::exception &e) {
        report(false, line, std::string(what) + ": another exception: " + e.what());
    }
}
#define EXPECT_ERROR(what, code, body) expect_error(__LINE__, what, code, [&]() { body; })

// ---- the fake driver's control API (looked up in the libcuda.so.1 the library loaded) -------

struct Fake {
    unsigned long long (*alloc)(int kind, std::size_t size, int device) = nullptr;
    int (*free)(unsigned long long base) = nullptr;
    int (*reallocate)(unsigned long long base) = nullptr;
    int (*set_kind)(unsigned long long base, int kind) = nullptr;
    void (*fail_query_at)(unsigned long long addr, int code) = nullptr;
    void (*hold_queries)(int hold) = nullptr;
    unsigned (*held_queries)() = nullptr;
};
Fake fake;
constexpr int FAKE_DEVICE = 1;
constexpr int FAKE_MANAGED = 2;
constexpr int FAKE_HOST = 3;
constexpr std::size_t MiB = std::size_t{1} << 20;

template <typename T>
void lookup(void *handle, const char *name, T &slot) {
    void *symbol = dlsym(handle, name);
    if (symbol == nullptr) {
        std::fprintf(stderr, "FAIL the loaded libcuda.so.1 is not the fake driver (no %s)\n", name);
        std::exit(1);
    }
    static_assert(sizeof slot == sizeof symbol, "function pointers are pointer-sized");
    std::memcpy(&slot, &symbol, sizeof slot);
}

void load_fake() {
    void *handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (handle == nullptr) handle = RTLD_DEFAULT;
    lookup(handle, "fake_cuda_alloc", fake.alloc);
    lookup(handle, "fake_cuda_free", fake.free);
    lookup(handle, "fake_cuda_reallocate", fake.reallocate);
    lookup(handle, "fake_cuda_set_kind", fake.set_kind);
    lookup(handle, "fake_cuda_fail_query_at", fake.fail_query_at);
    lookup(handle, "fake_cuda_hold_queries", fake.hold_queries);
    lookup(handle, "fake_cuda_held_queries", fake.held_queries);
}

const void *device_memory(std::size_t size, int kind = FAKE_DEVICE) {
    unsigned long long base = fake.alloc(kind, size, 0);
    if (base == 0) {
        std::fprintf(stderr, "FAIL fake_cuda_alloc refused\n");
        std::exit(1);
    }
    return reinterpret_cast<const void *>(static_cast<std::uintptr_t>(base));
}

unsigned long long address(const void *p) { return static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(p)); }

// Collects events from the monitor thread.
struct Events {
    std::mutex mutex;
    std::vector<vram_monitor::Event> list;

    void add(const vram_monitor::Event &e) {
        std::lock_guard<std::mutex> lock(mutex);
        list.push_back(e);
    }
    std::vector<vram_monitor::Event> snapshot() {
        std::lock_guard<std::mutex> lock(mutex);
        return list;
    }
    bool has(VramMonitorEventKind kind, std::uint64_t id, VramMonitorVerdict verdict, const std::string &label) {
        for (const auto &e : snapshot())
            if (e.kind == kind && e.registration_id == id && e.verdict == verdict && e.label == label) return true;
        return false;
    }
};

void test_types() {
    std::printf("\n== types\n");
    CHECK(!std::is_copy_constructible<vram_monitor::Monitor>::value, "Monitor is not copyable");
    CHECK(std::is_nothrow_move_constructible<vram_monitor::Monitor>::value, "Monitor moves without throwing");
    CHECK(!std::is_copy_constructible<vram_monitor::Registration>::value, "Registration is not copyable");
    CHECK(std::is_nothrow_move_assignable<vram_monitor::Registration>::value, "Registration moves without throwing");
    CHECK(vram_monitor::library_version() == vram_monitor::header_version(),
          "library version " + vram_monitor::library_version() + " = header version " + vram_monitor::header_version());
    CHECK(std::string(vram_monitor::verdict_name(VRAM_MONITOR_VERDICT_HOST)) == "HOST", "verdict_name(HOST)");
}

void test_registration_raii(vram_monitor::Monitor &monitor) {
    std::printf("\n== Registration unregisters when destroyed\n");
    const void *weights = device_memory(4 * MiB);
    {
        vram_monitor::Registration reg = monitor.register_buffer(weights, 4 * MiB, "layers.0.weight");
        CHECK(static_cast<bool>(reg) && reg.id() != 0, "register_buffer gives a non-empty registration, id " + std::to_string(reg.id()));
        CHECK(monitor.health().registrations == 1, "one registration while it lives");
        vram_monitor::Registration moved = std::move(reg);
        CHECK(!reg && moved, "moving transfers ownership");
        CHECK(monitor.health().registrations == 1, "moving does not unregister");
    }
    CHECK(monitor.health().registrations == 0, "destroying it unregistered");

    vram_monitor::Registration a = monitor.register_buffer(weights, MiB, "a");
    vram_monitor::Registration b = monitor.register_buffer(weights, MiB, "b");
    CHECK(monitor.health().registrations == 2, "two registrations");
    a = std::move(b);
    CHECK(monitor.health().registrations == 1, "move-assigning over a registration unregisters the old one");
    a.unregister();
    CHECK(!a && monitor.health().registrations == 0, "unregister() empties it");
    EXPECT_ERROR("unregister() on an empty Registration", VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION, a.unregister());

    vram_monitor::Registration c = monitor.register_buffer(weights, MiB, "c");
    const std::uint64_t id = c.release();
    CHECK(!c && monitor.health().registrations == 1, "release() keeps the registration watched");
    monitor.unregister(id);
    CHECK(monitor.health().registrations == 0, "Monitor::unregister(id) after release()");

    vram_monitor::Registration d = monitor.register_buffer(weights, MiB, "d");
    monitor.unregister(d.id());
    EXPECT_ERROR("unregister() of a registration already removed", VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION, d.unregister());

    const std::uint64_t raw = monitor.register_id(weights, MiB, "raw");
    CHECK(raw != 0 && monitor.health().registrations == 1, "register_id registers without a guard");
    monitor.unregister(raw);
}

void test_errors(vram_monitor::Monitor &monitor) {
    std::printf("\n== errors are exceptions carrying the result code\n");
    const void *host = device_memory(MiB, FAKE_HOST);
    try {
        (void)monitor.register_buffer(host, MiB, "pinned");
        CHECK(false, "host memory was registered");
    } catch (const vram_monitor::Error &e) {
        CHECK(e.code() == VRAM_MONITOR_RESULT_REFUSED_HOST && e.refused(),
              std::string("host memory refused: ") + e.what());
        CHECK(std::string(e.what()).find("host memory") != std::string::npos, "the message names the reason");
    }
    EXPECT_ERROR("register_buffer(nullptr)", VRAM_MONITOR_RESULT_NULL_ARGUMENT, (void)monitor.register_buffer(nullptr, 16, "null"));
    EXPECT_ERROR("register_buffer(size 0)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT,
                 (void)monitor.register_buffer(device_memory(MiB), 0, "empty"));
    EXPECT_ERROR("unregister(unknown id)", VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION, monitor.unregister(~std::uint64_t{0}));
    EXPECT_ERROR("Monitor(0 ms)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT, vram_monitor::Monitor m(std::chrono::milliseconds(0)));
    EXPECT_ERROR("set_interval(0 ms)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT, monitor.set_interval(std::chrono::milliseconds(0)));
    bool as_runtime_error = false;
    try {
        (void)monitor.register_buffer(host, MiB, "pinned");
    } catch (const std::runtime_error &) {
        as_runtime_error = true;
    }
    CHECK(as_runtime_error, "Error can be caught as std::runtime_error");
}

void test_callbacks(vram_monitor::Monitor &monitor) {
    std::printf("\n== std::function callbacks\n");
    Events events;
    monitor.set_callback([&events](const vram_monitor::Event &e) { events.add(e); });
    const void *weights = device_memory(2 * MiB);
    vram_monitor::Registration reg = monitor.register_buffer(weights, 2 * MiB, "model.embed");
    CHECK(fake.free(address(weights)) == 0, "fake_cuda_free behind the monitor's back");
    VramMonitorCheckSummary summary = monitor.check_now();
    CHECK(summary.violations == 1 && !summary.healthy, "check_now sees one violation");
    CHECK(events.has(VRAM_MONITOR_EVENT_KIND_VIOLATION, reg.id(), VRAM_MONITOR_VERDICT_NOT_MAPPED, "model.embed"),
          "the lambda received VIOLATION NOT_MAPPED for 'model.embed' (a copy it may keep)");
    {
        std::string kinds;
        for (const auto &e : events.snapshot())
            if (e.kind == VRAM_MONITOR_EVENT_KIND_VIOLATION || (e.kind == VRAM_MONITOR_EVENT_KIND_HEALTH_CHANGED && !e.healthy))
                kinds += e.error_kind + ";";
        CHECK(kinds == "residency_violation;residency_violation;",
              "the violation and the change to unhealthy carry error_kind residency_violation (" + kinds + ")");
    }
    std::string text = monitor.report();
    std::string json = monitor.report(vram_monitor::ReportFormat::Json);
    CHECK(text.find("model.embed") != std::string::npos && text.find("NOT_MAPPED") != std::string::npos,
          "the text report names the registration and its verdict");
    CHECK(json.size() > 2 && json.front() == '{' && json.find("\"model.embed\"") != std::string::npos,
          "the JSON report names the registration");
    reg.reset();
    CHECK(monitor.health().registrations == 0, "reset() unregisters");

    std::printf("\n== an exception thrown by a callback stops at the C boundary\n");
    std::atomic<int> thrown{0};
    std::mutex mutex;
    std::string caught;
    monitor.set_callback(
        [&thrown](const vram_monitor::Event &e) {
            if (e.kind == VRAM_MONITOR_EVENT_KIND_VIOLATION) {
                ++thrown;
                throw std::runtime_error("engine handler failed on " + e.label);
            }
        },
        [&mutex, &caught](std::exception_ptr error) {
            std::lock_guard<std::mutex> lock(mutex);
            caught = vram_monitor::detail::describe(error);
        });
    const void *one = device_memory(MiB);
    const void *two = device_memory(MiB);
    vram_monitor::Registration r1 = monitor.register_buffer(one, MiB, "one");
    vram_monitor::Registration r2 = monitor.register_buffer(two, MiB, "two");
    fake.reallocate(address(one));
    fake.reallocate(address(two));
    summary = monitor.check_now();
    CHECK(summary.checked == 2 && summary.violations == 2, "the check completed despite the throwing callback");
    CHECK(thrown.load() == 2, "the callback ran for both violations (threw twice), saw " + std::to_string(thrown.load()));
    {
        std::lock_guard<std::mutex> lock(mutex);
        CHECK(caught.find("engine handler failed on") != std::string::npos, "the exception handler received: " + caught);
    }

    // Without an exception handler, and throwing something that is not a std::exception.
    monitor.set_callback([](const vram_monitor::Event &) { throw 42; });
    r1.reset();
    const void *three = device_memory(MiB);
    vram_monitor::Registration r3 = monitor.register_buffer(three, MiB, "three");
    fake.free(address(three));
    summary = monitor.check_now();
    CHECK(summary.violations >= 1, "a callback throwing an int did not stop the check");
    CHECK(monitor.health().registrations == 2, "the monitor is still usable");

    std::printf("\n== check_now inside a callback throws CALLED_FROM_CALLBACK\n");
    std::atomic<int> code{-1};
    monitor.set_callback([&monitor, &code](const vram_monitor::Event &) {
        try {
            monitor.check_now();
            code = 0;
        } catch (const vram_monitor::Error &e) {
            code = static_cast<int>(e.code());
        }
    });
    const void *four = device_memory(MiB);
    vram_monitor::Registration r4 = monitor.register_buffer(four, MiB, "four");
    fake.free(address(four));
    monitor.check_now();
    CHECK(code.load() == VRAM_MONITOR_RESULT_CALLED_FROM_CALLBACK,
          "check_now from the callback threw CALLED_FROM_CALLBACK (" + std::to_string(code.load()) + ")");

    std::printf("\n== the library releases the std::function when it is replaced\n");
    auto token = std::make_shared<int>(7);
    std::weak_ptr<int> watch = token;
    monitor.set_callback([token](const vram_monitor::Event &) { (void)token; });
    token.reset();
    CHECK(!watch.expired(), "the callback keeps its captures alive");
    monitor.clear_callback();
    CHECK(watch.expired(), "clear_callback() destroyed the std::function and its captures");
}

void test_lifetimes() {
    std::printf("\n== lifetimes: moved-from Monitor, Registration outliving its Monitor\n");
    {
        // A Registration follows its Monitor when the Monitor is moved.
        vram_monitor::Monitor first(std::chrono::milliseconds(3600 * 1000));
        vram_monitor::Registration reg = first.register_buffer(device_memory(MiB), MiB, "follows");
        vram_monitor::Monitor second = std::move(first);
        reg.reset();
        CHECK(second.health().registrations == 0, "a Registration unregisters through the Monitor it was moved into");
        vram_monitor::Registration again = second.register_buffer(device_memory(MiB), MiB, "again");
        vram_monitor::Monitor third(std::chrono::milliseconds(3600 * 1000));
        third = std::move(second);  // frees third's old monitor, takes second's
        CHECK(third.health().registrations == 1, "move assignment carries the registration");
        again.unregister();
        CHECK(third.health().registrations == 0, "and unregister() reaches it there");
    }
    {
        // Registrations outliving their Monitor: destroyed, reset, unregistered, released.
        vram_monitor::Registration destroyed_later, reset_later, unregistered_later, released_later;
        std::uint64_t released_id = 0;
        {
            vram_monitor::Monitor gone(std::chrono::milliseconds(3600 * 1000));
            destroyed_later = gone.register_buffer(device_memory(MiB), MiB, "destroyed");
            reset_later = gone.register_buffer(device_memory(MiB), MiB, "reset");
            unregistered_later = gone.register_buffer(device_memory(MiB), MiB, "unregistered");
            released_later = gone.register_buffer(device_memory(MiB), MiB, "released");
            released_id = released_later.id();
        }
        reset_later.reset();
        CHECK(!reset_later, "reset() after the Monitor is gone empties it and does nothing else");
        EXPECT_ERROR("unregister() after the Monitor is gone", VRAM_MONITOR_RESULT_NULL_ARGUMENT, unregistered_later.unregister());
        CHECK(!unregistered_later, "the failed unregister() still empties it");
        CHECK(released_later.release() == released_id && !released_later, "release() after the Monitor is gone gives the id");
        vram_monitor::Registration moved = std::move(destroyed_later);
        CHECK(static_cast<bool>(moved) && !destroyed_later, "it can still be moved");
        // `moved` is destroyed here, after its Monitor (AddressSanitizer sees any use of the freed monitor).
    }
    vram_monitor::Registration survivor;
    auto token = std::make_shared<int>(1);
    std::weak_ptr<int> watch = token;
    {
        vram_monitor::Monitor first(std::chrono::milliseconds(3600 * 1000));
        first.set_callback([token](const vram_monitor::Event &) { (void)token; });
        token.reset();
        survivor = first.register_buffer(device_memory(MiB), MiB, "survivor");
        vram_monitor::Monitor second = std::move(first);
        CHECK(first.get() == nullptr && second.get() != nullptr, "moving a Monitor moves the handle");
        EXPECT_ERROR("health() of a moved-from Monitor", VRAM_MONITOR_RESULT_NULL_ARGUMENT, (void)first.health());
        CHECK(second.health().registrations == 1, "the moved-to Monitor has the registration");
    }
    CHECK(watch.expired(), "~Monitor freed the monitor and released the callback's captures");
    CHECK(static_cast<bool>(survivor), "the Registration still holds its id");
    survivor.reset();  // must not touch the freed monitor (ASan would say so)
    CHECK(!survivor, "destroying a Registration after its Monitor is a no-op");
}

// What one round of the concurrent tests shares with its callback (owned by the callback too, so
// a callback running late touches no freed memory, it is only counted).
struct RoundState {
    std::atomic<int> calls{0};
    std::atomic<bool> monitor_returned{false};
    std::atomic<int> calls_after_return{0};
    std::atomic<bool> in_callback{false};
    std::mutex mutex;
    std::vector<vram_monitor::Registration> owned_by_callback;
};

// Registers `count` buffers of a fresh fake allocation each; `violating` of them are freed in the
// fake at once, so the next check (1 ms interval) has events for the callback.
std::vector<vram_monitor::Registration> register_many(vram_monitor::Monitor &monitor, int count, int violating,
                                                      std::vector<unsigned long long> &allocations) {
    std::vector<vram_monitor::Registration> regs;
    for (int i = 0; i < count; ++i) {
        const void *p = device_memory(MiB);
        regs.push_back(monitor.register_buffer(p, MiB, "concurrent." + std::to_string(i)));
        if (i < violating) {
            fake.free(address(p));
        } else {
            allocations.push_back(address(p));
        }
    }
    return regs;
}

void spin_until(std::atomic<int> &counter, int value) {
    while (counter.load() < value) std::this_thread::yield();
}

// Valgrind runs one thread at a time, so the spinning race rounds below cost minutes each
// there: under it (its preload is how a program tells) a few rounds keep the check.
bool under_valgrind() {
    const char *preload = std::getenv("LD_PRELOAD");
    return preload != nullptr && std::strstr(preload, "valgrind") != nullptr;
}

void test_concurrent_destruction() {
    std::printf("\n== ~Monitor on one thread, ~Registration on another, at the same time\n");
    // Each round: a Monitor checking every millisecond with a callback that counts its calls,
    // 32 Registrations (half of them violating: 17 events, each call taking about 20 us), then,
    // once the first event arrived, ~Monitor on this thread while another thread destroys the
    // Registrations. When ~Monitor returns the monitor must be freed: the callback released
    // (its captures destroyed) and never called again.
    const int kRounds = under_valgrind() ? 10 : 300;
    int not_freed = 0, rounds_with_late_calls = 0, calls = 0, rounds_without_calls = 0, calls_cut_short = 0;
    for (int round = 0; round < kRounds; ++round) {
        auto state = std::make_shared<RoundState>();
        auto token = std::make_shared<int>(round);
        std::weak_ptr<int> watch = token;
        std::vector<unsigned long long> allocations;
        auto monitor = std::make_unique<vram_monitor::Monitor>(std::chrono::milliseconds(1));
        monitor->set_callback([state, token](const vram_monitor::Event &) {
            ++state->calls;
            if (state->monitor_returned.load()) ++state->calls_after_return;
            std::this_thread::sleep_for(std::chrono::microseconds(20));
        });
        token.reset();
        std::vector<vram_monitor::Registration> regs = register_many(*monitor, 32, 16, allocations);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (state->calls.load() == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
        if (state->calls.load() == 0) ++rounds_without_calls;
        std::atomic<int> ready{0};
        std::thread other([&regs, &ready] {
            ++ready;
            spin_until(ready, 2);
            regs.clear();
        });
        ++ready;
        spin_until(ready, 2);
        monitor.reset();
        if (!watch.expired()) ++not_freed;
        state->monitor_returned = true;
        other.join();
        if (state->calls_after_return.load() != 0) ++rounds_with_late_calls;
        calls += state->calls.load();
        if (state->calls.load() < 17) ++calls_cut_short;
        for (unsigned long long a : allocations) fake.free(a);
    }
    CHECK(not_freed == 0, "every ~Monitor freed the monitor before returning (callback released); not in " +
                              std::to_string(not_freed) + " of " + std::to_string(kRounds) + " rounds");
    CHECK(rounds_without_calls == 0, "callbacks were being delivered in every round (not in " +
                                         std::to_string(rounds_without_calls) + "); " + std::to_string(calls) +
                                         " calls in all, " + std::to_string(calls_cut_short) +
                                         " rounds where ~Monitor dropped undelivered events");
    CHECK(rounds_with_late_calls == 0, "no callback ran after ~Monitor returned (rounds with late calls: " +
                                           std::to_string(rounds_with_late_calls) + ")");
}

void test_registration_destroyed_in_callback_while_monitor_dies() {
    std::printf("\n== ~Monitor while its callback destroys Registrations\n");
    // The callback destroys 64 Registrations it owns, one at a time; ~Monitor runs meanwhile on
    // this thread. ~Monitor must still free the monitor (no leak with its thread running).
    const int kRounds = under_valgrind() ? 5 : 100;
    int not_freed = 0, never_called = 0;
    for (int round = 0; round < kRounds; ++round) {
        auto state = std::make_shared<RoundState>();
        auto token = std::make_shared<int>(round);
        std::weak_ptr<int> watch = token;
        std::vector<unsigned long long> allocations;
        auto monitor = std::make_unique<vram_monitor::Monitor>(std::chrono::milliseconds(1));
        std::vector<vram_monitor::Registration> regs = register_many(*monitor, 64, 0, allocations);
        {
            std::lock_guard<std::mutex> lock(state->mutex);
            state->owned_by_callback = std::move(regs);
        }
        monitor->set_callback([state, token](const vram_monitor::Event &) {
            std::vector<vram_monitor::Registration> doomed;
            {
                std::lock_guard<std::mutex> lock(state->mutex);
                doomed.swap(state->owned_by_callback);
            }
            state->in_callback = true;
            while (!doomed.empty()) doomed.pop_back();  // each ~Registration unregisters
        });
        token.reset();
        // One violation: the next check calls the callback.
        const void *trigger = device_memory(MiB);
        vram_monitor::Registration trigger_reg = monitor->register_buffer(trigger, MiB, "trigger");
        fake.free(address(trigger));
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!state->in_callback.load() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
        if (!state->in_callback.load()) ++never_called;
        monitor.reset();
        if (!watch.expired()) ++not_freed;
        for (unsigned long long a : allocations) fake.free(a);
    }
    CHECK(never_called == 0, "the callback ran in every round (not in " + std::to_string(never_called) + ")");
    CHECK(not_freed == 0, "~Monitor freed the monitor every time, even when a Registration died in the callback; not in " +
                              std::to_string(not_freed) + " of " + std::to_string(kRounds) + " rounds");
}

void test_monitor_destroyed_in_its_own_callback() {
    std::printf("\n== ~Monitor inside its own callback: leaked, callback removed, reported\n");
    std::mutex mutex;
    std::vector<std::string> errors;
    vram_monitor::set_log_handler([&](VramMonitorLogLevel level, const std::string &, const std::string &message) {
        std::lock_guard<std::mutex> lock(mutex);
        if (level == VRAM_MONITOR_LOG_LEVEL_ERROR && message.find("destroyed inside its own callback") != std::string::npos)
            errors.push_back(message);
    });
    auto holder = std::make_shared<std::unique_ptr<vram_monitor::Monitor>>(
        std::make_unique<vram_monitor::Monitor>(std::chrono::milliseconds(1)));
    vram_monitor::Monitor &monitor = **holder;
    auto calls = std::make_shared<std::atomic<int>>(0);
    auto destroyed = std::make_shared<std::atomic<bool>>(false);
    auto token = std::make_shared<int>(0);
    std::weak_ptr<int> watch = token;
    // The Registration is destroyed after the Monitor, on this thread: it must do nothing.
    const void *p = device_memory(MiB);
    vram_monitor::Registration reg = monitor.register_buffer(p, MiB, "self.destroyed");
    monitor.set_callback([holder, calls, destroyed, token](const vram_monitor::Event &) {
        ++*calls;
        if (!destroyed->load()) {
            holder->reset();  // ~Monitor on the monitor thread, inside the callback
            destroyed->store(true);
        }
    });
    token.reset();
    fake.free(address(p));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!watch.expired() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    CHECK(destroyed->load(), "the callback destroyed its Monitor");
    CHECK(watch.expired(), "the callback was removed and released after the call returned (captures destroyed)");
    const int calls_then = calls->load();
    CHECK(calls_then == 1, "the callback ran once, then never again (" + std::to_string(calls_then) + " calls)");
    reg.reset();
    CHECK(!reg, "a Registration of the leaked Monitor does nothing");
    vram_monitor::set_log_handler(nullptr);
    std::lock_guard<std::mutex> lock(mutex);
    CHECK(errors.size() == 1, "the leak was reported once as an ERROR to the log handler (" + std::to_string(errors.size()) + ")");
}

struct LogRecord {
    VramMonitorLogLevel level;
    std::string target;
    std::string message;
};

void test_log_handler(vram_monitor::Monitor &monitor) {
    std::printf("\n== set_log_handler routes the library's log records\n");
    std::mutex mutex;
    std::vector<LogRecord> records;
    vram_monitor::set_log_handler([&](VramMonitorLogLevel level, const std::string &target, const std::string &message) {
        std::lock_guard<std::mutex> lock(mutex);
        records.push_back({level, target, message});
    });
    monitor.clear_callback();
    const void *weights = device_memory(MiB);
    vram_monitor::Registration reg = monitor.register_buffer(weights, MiB, "logged.weight");
    fake.free(address(weights));
    monitor.check_now();
    vram_monitor::set_log_handler(nullptr);
    bool found = false;
    {
        std::lock_guard<std::mutex> lock(mutex);
        for (const auto &r : records) {
            if (r.level == VRAM_MONITOR_LOG_LEVEL_ERROR && r.target == "vram_monitor" &&
                r.message.find("logged.weight") != std::string::npos && r.message.find("NOT_MAPPED") != std::string::npos)
                found = true;
        }
        CHECK(found, "an ERROR record from target vram_monitor names the violation (" + std::to_string(records.size()) +
                         " records)");
    }
    std::size_t before;
    {
        std::lock_guard<std::mutex> lock(mutex);
        before = records.size();
    }
    const void *more = device_memory(MiB);
    vram_monitor::Registration reg2 = monitor.register_buffer(more, MiB, "after.reset");
    fake.free(address(more));
    monitor.check_now();
    {
        std::lock_guard<std::mutex> lock(mutex);
        CHECK(records.size() == before, "after set_log_handler(nullptr) the handler gets nothing");
    }
    // A throwing log handler loses the record and nothing else.
    vram_monitor::set_log_handler([](VramMonitorLogLevel, const std::string &, const std::string &) {
        throw std::runtime_error("logger down");
    });
    const void *last = device_memory(MiB);
    vram_monitor::Registration reg3 = monitor.register_buffer(last, MiB, "throwing.logger");
    fake.free(address(last));
    VramMonitorCheckSummary summary = monitor.check_now();
    CHECK(summary.checked == 3, "a check with a throwing log handler completed");
    vram_monitor::set_log_handler(nullptr);
}


// ---- the rest of the C API through the wrapper ------------------------------------------------

void test_register_many() {
    std::printf("\n== register_many: per-entry results, a guard per registered entry\n");
    vram_monitor::Monitor monitor(std::chrono::hours(1));
    const void *weights = device_memory(MiB);
    const char *base = static_cast<const char *>(weights);
    {
        // Three entries, the third the same range as the first.
        vram_monitor::RegisterManyResult r = monitor.register_many(
            {{weights, 4096, "layers.0.q"}, {base + 4096, 4096, "layers.0.k"}, {weights, 4096, "layers.0.q.again"}});
        CHECK(r.results.size() == 3 && r.registrations.size() == 3, "one result and one Registration per entry");
        CHECK(r.results[0] == VRAM_MONITOR_RESULT_OK && r.results[1] == VRAM_MONITOR_RESULT_OK &&
                  r.results[2] == VRAM_MONITOR_RESULT_DUPLICATE_RANGE,
              "entry codes OK, OK, DUPLICATE_RANGE (" + std::to_string(r.results[0]) + ", " + std::to_string(r.results[1]) +
                  ", " + std::to_string(r.results[2]) + ")");
        CHECK(r.registrations[0] && r.registrations[1] && !r.registrations[2] &&
                  r.registrations[0].id() != r.registrations[1].id(),
              "the registered entries own distinct ids, the duplicate is empty");
        CHECK(r.registered == 2 && !r.ok(), "registered 2 of 3, ok() false");
        CHECK(monitor.health().registrations == 2, "the monitor holds 2 registrations");
        CHECK(monitor.registration(r.registrations[1].id()).label == "layers.0.k", "entry 1 is registered under its label");
        vram_monitor::Registration kept = std::move(r.registrations[0]);
        r.registrations.clear();
        CHECK(monitor.health().registrations == 1, "destroying a guard of register_many unregisters it");
    }
    CHECK(monitor.health().registrations == 0, "every guard of register_many unregistered");

    std::printf("\n== register_many, AllOrNothing: one refused entry, nothing registered\n");
    const void *host = device_memory(MiB, FAKE_HOST);
    std::vector<vram_monitor::Region> model = {{weights, 4096, "a"}, {host, 4096, "pinned"}, {base + 4096, 4096, "b"}};
    vram_monitor::RegisterManyResult all = monitor.register_many(model, vram_monitor::RegisterMode::AllOrNothing);
    CHECK(all.registered == 0 && !all.ok() && monitor.health().registrations == 0, "nothing registered");
    CHECK(all.results[0] == VRAM_MONITOR_RESULT_ENTRIES_FAILED && all.results[1] == VRAM_MONITOR_RESULT_REFUSED_HOST &&
              all.results[2] == VRAM_MONITOR_RESULT_ENTRIES_FAILED,
          "the host entry has REFUSED_HOST, the others ENTRIES_FAILED");
    CHECK(!all.registrations[0] && !all.registrations[1] && !all.registrations[2], "no entry owns a registration");
    vram_monitor::RegisterManyResult each = monitor.register_many(model);
    CHECK(each.registered == 2 && each.results[1] == VRAM_MONITOR_RESULT_REFUSED_HOST,
          "the same entries, Independent: the two device entries registered, the host one refused");
    model[1] = {base + 8192, 4096, "c"};
    vram_monitor::RegisterManyResult whole = monitor.register_many(model, vram_monitor::RegisterMode::AllOrNothing);
    CHECK(whole.ok() && whole.registered == 3 && monitor.health().registrations == 5,
          "AllOrNothing with every entry resident registers all three");
    EXPECT_ERROR("register_many({})", VRAM_MONITOR_RESULT_INVALID_ARGUMENT, (void)monitor.register_many({}));
}

void test_registration_info() {
    std::printf("\n== registration(id): one registration read back, label included\n");
    vram_monitor::Monitor monitor(std::chrono::hours(1));
    const void *weights = device_memory(2 * MiB);
    vram_monitor::Registration reg = monitor.register_buffer(weights, 2 * MiB, "model.embed_tokens");
    // Longer than the wrapper's first buffer: the second call of the size reported.
    const std::string long_label = "model.layers." + std::string(600, 'x') + ".weight";
    vram_monitor::Registration long_reg = monitor.register_buffer(weights, MiB, long_label);
    vram_monitor::RegistrationInfo info = monitor.registration(reg.id());
    CHECK(info.id == reg.id() && info.ptr == weights && info.size == 2 * MiB && info.device == 0,
          "id, ptr, size and device as registered");
    CHECK(info.verdict == VRAM_MONITOR_VERDICT_RESIDENT && info.pieces == 1 && !info.check_failing,
          "RESIDENT in one piece, its query not failing");
    CHECK(info.label == "model.embed_tokens", "the label: '" + info.label + "'");
    vram_monitor::RegistrationInfo long_info = monitor.registration(long_reg.id());
    CHECK(long_info.label == long_label, "a " + std::to_string(long_label.size()) + "-byte label read back whole (got " +
                                             std::to_string(long_info.label.size()) + " bytes)");
    fake.set_kind(address(weights), FAKE_MANAGED);
    monitor.check_now();
    CHECK(monitor.registration(reg.id()).verdict == VRAM_MONITOR_VERDICT_MANAGED, "the verdict follows the memory: MANAGED");
    fake.set_kind(address(weights), FAKE_DEVICE);
    fake.fail_query_at(address(weights), 999);
    monitor.check_now();
    vram_monitor::RegistrationInfo failing = monitor.registration(reg.id());
    CHECK(failing.check_failing && failing.verdict == VRAM_MONITOR_VERDICT_MANAGED,
          "a failing query: check_failing, the last verdict known kept");
    fake.fail_query_at(address(weights), 0);
    EXPECT_ERROR("registration(unknown id)", VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION, (void)monitor.registration(~std::uint64_t{0}));
    const std::uint64_t gone = reg.id();
    reg.reset();
    EXPECT_ERROR("registration(an unregistered id)", VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION, (void)monitor.registration(gone));
}

void test_stall_and_pacing() {
    std::printf("\n== stall(), set_stall_limits(), set_pacing()\n");
    vram_monitor::Monitor monitor(std::chrono::hours(1));
    VramMonitorStall s = monitor.stall();
    CHECK(!s.stalled && !s.check_in_progress && s.deadline_ms == VRAM_MONITOR_DEFAULT_STALL_DEADLINE_MS &&
              s.grace_ms == VRAM_MONITOR_DEFAULT_STALL_GRACE_MS,
          "a new monitor: not stalled, the default limits");
    monitor.set_stall_limits(std::chrono::milliseconds(200), std::chrono::minutes(1));
    s = monitor.stall();
    CHECK(s.deadline_ms == 200 && s.grace_ms == 60000, "set_stall_limits(200 ms, 1 min) is in force");
    EXPECT_ERROR("set_stall_limits(0 ms, ...)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT,
                 monitor.set_stall_limits(std::chrono::milliseconds(0), std::chrono::seconds(1)));
    EXPECT_ERROR("set_stall_limits(-1 ms, ...)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT,
                 monitor.set_stall_limits(std::chrono::milliseconds(-1), std::chrono::seconds(1)));
    EXPECT_ERROR("set_stall_limits(..., 31 days)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT,
                 monitor.set_stall_limits(std::chrono::seconds(1), std::chrono::hours(24 * 31)));
    s = monitor.stall();
    CHECK(s.deadline_ms == 200 && s.grace_ms == 60000, "refused limits changed nothing");
    EXPECT_ERROR("set_pacing(0 queries)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT, monitor.set_pacing(0, std::chrono::microseconds(50)));
    EXPECT_ERROR("set_pacing(a pause of -1 us)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT, monitor.set_pacing(1, std::chrono::microseconds(-1)));
    EXPECT_ERROR("set_pacing(a pause not shorter than the 200 ms deadline)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT,
                 monitor.set_pacing(1, std::chrono::milliseconds(200)));

    // Pacing shows in a check's duration: five queries, a 30 ms pause after each.
    std::vector<vram_monitor::Registration> regs;
    for (int i = 0; i < 5; ++i) regs.push_back(monitor.register_buffer(device_memory(MiB), MiB, "paced." + std::to_string(i)));
    const std::uint64_t unpaced = monitor.check_now().duration_us;
    monitor.set_pacing(1, std::chrono::milliseconds(30));
    const std::uint64_t paced = monitor.check_now().duration_us;
    CHECK(paced >= 4 * 30000 && paced > unpaced, "set_pacing(1, 30 ms): a check of 5 queries took " + std::to_string(paced) +
                                                     " us (>= 120000; with the defaults " + std::to_string(unpaced) + " us)");
    EXPECT_ERROR("set_stall_limits(a deadline not longer than the 30 ms pause)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT,
                 monitor.set_stall_limits(std::chrono::milliseconds(30), std::chrono::seconds(1)));
    monitor.set_pacing(VRAM_MONITOR_DEFAULT_SLICE_QUERIES, std::chrono::microseconds(VRAM_MONITOR_DEFAULT_PAUSE_US));

    std::printf("\n== a driver query that does not return: stall() says stalled\n");
    fake.hold_queries(1);
    std::thread checker([&monitor] {
        try {
            monitor.check_now();
        } catch (const std::exception &e) {
            report(false, __LINE__, std::string("check_now while held threw: ") + e.what());
        }
    });
    bool stalled = false;
    for (int i = 0; i < 6000 && !stalled; ++i) {
        stalled = monitor.stall().stalled;
        if (!stalled) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    s = monitor.stall();
    CHECK(stalled && s.check_in_progress && fake.held_queries() == 1,
          "stalled with a check in progress and its query held (" + std::to_string(fake.held_queries()) + " held)");
    CHECK(!monitor.health().healthy, "a stalled monitor is unhealthy");
    fake.hold_queries(0);
    checker.join();
    bool recovered = false;
    for (int i = 0; i < 6000 && !recovered; ++i) {
        recovered = !monitor.stall().stalled;
        if (!recovered) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(recovered && monitor.health().healthy, "released: no longer stalled, healthy again");
}

void test_device_health_and_prometheus() {
    std::printf("\n== device_health(), signal_status_name(), the Prometheus report\n");
    vram_monitor::Monitor monitor(std::chrono::hours(1));
    CHECK(monitor.device_health().empty(), "no entries before the first check");
    vram_monitor::Registration reg = monitor.register_buffer(device_memory(4 * MiB), 4 * MiB, "weights");
    monitor.check_now();
    std::vector<VramMonitorDeviceHealth> devices = monitor.device_health();
    CHECK(devices.size() == 1 && devices[0].device == 0, "one entry, for GPU 0 (" + std::to_string(devices.size()) + " entries)");
    void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (nvml != nullptr) {
        dlclose(nvml);
        std::printf("skipped: NVML is installed here; the checks of device health without NVML need a machine without it\n");
    } else if (!devices.empty()) {
        CHECK(!devices[0].nvml_available && !devices[0].memory_fault &&
                  devices[0].ecc_uncorrected_volatile_status == VRAM_MONITOR_SIGNAL_STATUS_UNAVAILABLE &&
                  devices[0].uuid[0] == '\0',
              "without NVML: unavailable, every signal UNAVAILABLE, no UUID, and no fault");
    }
    CHECK(std::string(vram_monitor::signal_status_name(VRAM_MONITOR_SIGNAL_STATUS_SUPPORTED)) == "supported" &&
              std::string(vram_monitor::signal_status_name(VRAM_MONITOR_SIGNAL_STATUS_UNSUPPORTED)) == "unsupported" &&
              std::string(vram_monitor::signal_status_name(VRAM_MONITOR_SIGNAL_STATUS_UNAVAILABLE)) == "unavailable",
          "signal_status_name of the three statuses");
    const std::string metrics = monitor.report(vram_monitor::ReportFormat::Prometheus);
    CHECK(metrics.find("# TYPE vram_monitor_healthy gauge\n") != std::string::npos &&
              metrics.find("\nvram_monitor_registrations 1\n") != std::string::npos &&
              metrics.find("\nvram_monitor_tracked_bytes 4194304\n") != std::string::npos,
          "the Prometheus report: TYPE lines, 1 registration, 4194304 bytes");
}

// GET `path` from 127.0.0.1:port: the status code (-1: no connection), and the body in `body`.
int http_get(std::uint16_t port, const char *path, std::string *body = nullptr) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    timeval tv{20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    const std::string request = std::string("GET ") + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
        close(fd);
        return -1;
    }
    std::string response;
    char chunk[4096];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof chunk)) > 0) response.append(chunk, static_cast<std::size_t>(n));
    close(fd);
    int status = -2;
    if (std::sscanf(response.c_str(), "HTTP/1.1 %d", &status) != 1) status = -2;
    const std::size_t head_end = response.find("\r\n\r\n");
    if (body != nullptr) *body = head_end == std::string::npos ? std::string() : response.substr(head_end + 4);
    return status;
}

void test_http_endpoint() {
    std::printf("\n== serve_http() / stop_http(): the endpoint over a socket\n");
    std::uint16_t port = 0;
    {
        vram_monitor::Monitor monitor(std::chrono::hours(1));
        const void *weights = device_memory(MiB);
        vram_monitor::Registration reg = monitor.register_buffer(weights, MiB, "served");
        monitor.check_now();
        EXPECT_ERROR("serve_http(an address that does not parse)", VRAM_MONITOR_RESULT_INVALID_ARGUMENT,
                     (void)monitor.serve_http("no such address"));
        port = monitor.serve_http("127.0.0.1:0");
        CHECK(port != 0, "serve_http(\"127.0.0.1:0\") returns the port chosen (" + std::to_string(port) + ")");
        EXPECT_ERROR("serve_http while serving", VRAM_MONITOR_RESULT_HTTP_ALREADY_SERVING, (void)monitor.serve_http("127.0.0.1:0"));
        std::string body;
        int status = http_get(port, "/health", &body);
        CHECK(status == 200 && body.find("\"healthy\":true") != std::string::npos,
              "GET /health -> " + std::to_string(status) + " with the JSON health");
        status = http_get(port, "/metrics", &body);
        CHECK(status == 200 && body.find("\nvram_monitor_registrations 1\n") != std::string::npos,
              "GET /metrics -> " + std::to_string(status) + " with the Prometheus exposition");
        fake.free(address(weights));
        monitor.check_now();
        CHECK(http_get(port, "/health") == 503, "GET /health -> 503 once the buffer was freed behind the monitor's back");
        monitor.stop_http();
        CHECK(http_get(port, "/health") == -1, "stop_http(): the port is closed");
        bool threw = false;
        try {
            monitor.stop_http();
        } catch (const vram_monitor::Error &) {
            threw = true;
        }
        CHECK(!threw, "stop_http() when not serving does not throw");
        CHECK(monitor.serve_http("127.0.0.1:" + std::to_string(port)) == port, "serving again on the same port");
        CHECK(http_get(port, "/livez") == 200, "GET /livez -> 200");
    }
    CHECK(http_get(port, "/health") == -1, "~Monitor closed the endpoint");
}

}  // namespace

int main() {
    try {
        test_types();
        vram_monitor::Monitor monitor(std::chrono::milliseconds(3600 * 1000));
        load_fake();
        test_registration_raii(monitor);
        test_errors(monitor);
        test_callbacks(monitor);
        test_lifetimes();
        // The concurrent tests make many violations: keep their log records off the output.
        vram_monitor::set_log_handler([](VramMonitorLogLevel, const std::string &, const std::string &) {});
        test_concurrent_destruction();
        test_registration_destroyed_in_callback_while_monitor_dies();
        vram_monitor::set_log_handler(nullptr);
        test_monitor_destroyed_in_its_own_callback();
        vram_monitor::Monitor quiet(std::chrono::hours(1));
        test_log_handler(quiet);
        test_register_many();
        test_registration_info();
        test_device_health_and_prometheus();
        test_http_endpoint();
        // Its held query and 200 ms stall deadline log warnings: keep them off the output.
        vram_monitor::set_log_handler([](VramMonitorLogLevel, const std::string &, const std::string &) {});
        test_stall_and_pacing();
        vram_monitor::set_log_handler(nullptr);
    } catch (const std::exception &e) {
        report(false, __LINE__, std::string("unexpected exception: ") + e.what());
    }
    std::printf("\ntest_cpp_wrapper: %d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
