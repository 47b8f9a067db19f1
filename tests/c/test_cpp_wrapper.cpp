// test_cpp_wrapper.cpp - the header-only C++17 wrapper (include/vram_monitor.hpp) against the
// fake libcuda: RAII of Monitor and Registration, errors as exceptions with the result code,
// std::function callbacks, exceptions stopped at the C boundary, the log handler.
//
// Prints "ok"/"FAIL" per check and exits 1 if any failed. Run by ctest with LD_LIBRARY_PATH
// pointing at the fake driver (tests/c/CMakeLists.txt).
#include "vram_monitor.hpp"

#include <dlfcn.h>

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
};
Fake fake;
constexpr int FAKE_DEVICE = 1;
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

void test_concurrent_destruction() {
    std::printf("\n== ~Monitor on one thread, ~Registration on another, at the same time\n");
    // Each round: a Monitor checking every millisecond with a callback that counts its calls,
    // 32 Registrations (half of them violating: 17 events, each call taking about 20 us), then,
    // once the first event arrived, ~Monitor on this thread while another thread destroys the
    // Registrations. When ~Monitor returns the monitor must be freed: the callback released
    // (its captures destroyed) and never called again.
    constexpr int kRounds = 300;
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
    constexpr int kRounds = 100;
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
    } catch (const std::exception &e) {
        report(false, __LINE__, std::string("unexpected exception: ") + e.what());
    }
    std::printf("\ntest_cpp_wrapper: %d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
