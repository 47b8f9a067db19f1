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
        vram_monitor::Monitor quiet(std::chrono::hours(1));
        test_log_handler(quiet);
    } catch (const std::exception &e) {
        report(false, __LINE__, std::string("unexpected exception: ") + e.what());
    }
    std::printf("\ntest_cpp_wrapper: %d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
