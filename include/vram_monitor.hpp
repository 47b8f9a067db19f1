/* vram_monitor.hpp - header-only C++17 wrapper of the vram-monitor C API (vram_monitor.h).
 *
 * Link against libvram_monitor as for C (CMake: target vram_monitor::vram_monitor; pkg-config:
 * vram_monitor). Nothing here is compiled into the library: the wrapper only calls the C API.
 *
 *   vram_monitor::Monitor monitor;                        // starts the monitor thread
 *   monitor.set_callback([](const vram_monitor::Event &e) { log_error(e.message); });
 *   vram_monitor::Registration reg = monitor.register_buffer(ptr, bytes, "layers.0.weight");
 *   VramMonitorHealth h = monitor.health();               // serve h.healthy from /health
 *   ...                                                   // ~Registration unregisters,
 *                                                         // ~Monitor stops and joins the thread
 *
 * - Errors are exceptions of type vram_monitor::Error, which carries the C result code
 *   (code(); refused() for the REFUSED_<VERDICT> codes of registration).
 * - Monitor is RAII and move-only, and the only owner of its C handle. Its destructor calls
 *   vram_monitor_free on the destroying thread, always: it stops and joins the monitor thread
 *   and releases the callback, so no callback runs after ~Monitor returns, whatever other
 *   threads are doing with the Monitor's Registrations at the time.
 * - Registration unregisters when destroyed. It never keeps the monitor alive: it shares a
 *   small "alive" token with its Monitor, and ~Monitor marks it dead (under the token's lock,
 *   waiting for an unregister in progress) before freeing. A Registration that outlives its
 *   Monitor does nothing when destroyed, reset() or released (the monitor and all its
 *   registrations are gone already); its unregister() throws Error(NULL_ARGUMENT).
 * - Never destroy a Monitor inside its own callback. The C API cannot free a monitor from its
 *   own callback (vram_monitor_free returns CALLED_FROM_CALLBACK there, to avoid joining the
 *   thread it runs on), and a destructor must not throw, so ~Monitor then leaks the handle
 *   instead: it removes the callback (released once the call in progress returns; no callback
 *   runs after that), sets the interval to the maximum (UINT32_MAX ms) so the thread stays
 *   idle, keeps the handle in a process-wide list (reachable, so leak checkers stay quiet),
 *   and reports the leak as an ERROR record to the log handler of set_log_handler (or one
 *   line on stderr without one). The thread and the handle then live until the process
 *   exits. Destroy it from another thread instead.
 * - Callbacks are std::function. They run on the monitor thread ("vram-monitor"), one at a
 *   time. An exception thrown by a callback never reaches the library: it is caught in the C
 *   trampoline and handed to the exception handler given with the callback (default: one line
 *   on stderr); the monitor goes on.
 *
 * - register_many() registers a whole model in one call and answers per entry (a result code
 *   and a Registration each, empty where the entry was not registered); only a call that is
 *   wrong as a whole (no entries) throws. RegisterMode::AllOrNothing registers nothing unless
 *   every entry can be.
 * - Reads that fill a C struct return it as is (health(), stall(), check_now(),
 *   device_health()); registration() copies the label into a RegistrationInfo.
 * - serve_http() starts the built-in HTTP endpoint (/health, /readyz, /livez, /metrics) and
 *   returns its port; stop_http() or ~Monitor stops it.
 *
 * Every function of vram_monitor.h is reached from here (scripts/check-parity.py checks it);
 * get() gives the C handle for anything else.
 *
 * Threading: as for the C API (see vram_monitor.h): every member function may be called from
 * any thread; check_now() throws Error(CALLED_FROM_CALLBACK) inside a callback.
 */
#ifndef VRAM_MONITOR_HPP
#define VRAM_MONITOR_HPP

#include "vram_monitor.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace vram_monitor {

/** The error of every failing call: the C result code and what was being done. */
class Error : public std::runtime_error {
public:
    Error(VramMonitorResult code, const std::string &what)
        : std::runtime_error(what + ": " + vram_monitor_result_str(static_cast<int32_t>(code)) + " (" +
                             std::to_string(static_cast<int32_t>(code)) + ")"),
          code_(code) {}

    /** The C result code (VRAM_MONITOR_RESULT_...). */
    VramMonitorResult code() const noexcept { return code_; }

    /** Whether registration was refused because the memory is not resident (2xx codes). */
    bool refused() const noexcept {
        const int32_t raw = static_cast<int32_t>(code_);
        return raw >= 200 && raw < 300;
    }

private:
    VramMonitorResult code_;
};

/** Throws Error unless `code` is VRAM_MONITOR_RESULT_OK. */
inline void check(VramMonitorResult code, const char *what) {
    if (code != VRAM_MONITOR_RESULT_OK) throw Error(code, what);
}

/** The static name of a verdict ("RESIDENT", "HOST", ...). */
inline const char *verdict_name(VramMonitorVerdict verdict) noexcept {
    return vram_monitor_verdict_str(static_cast<int32_t>(verdict));
}

/** The description of a result code. */
inline const char *result_string(VramMonitorResult code) noexcept {
    return vram_monitor_result_str(static_cast<int32_t>(code));
}

/** The static name of a device-health signal status ("supported", "unsupported", "unavailable"). */
inline const char *signal_status_name(VramMonitorSignalStatus status) noexcept {
    return vram_monitor_signal_status_str(static_cast<int32_t>(status));
}

/** The version of the library actually loaded ("MAJOR.MINOR.PATCH"). */
inline std::string library_version() { return vram_monitor_version(); }

/** The version of the header compiled against. */
inline std::string header_version() {
    return std::to_string(VRAM_MONITOR_VERSION_MAJOR) + "." + std::to_string(VRAM_MONITOR_VERSION_MINOR) + "." +
           std::to_string(VRAM_MONITOR_VERSION_PATCH);
}

/** An event, copied out of the C struct: it may be kept after the callback returns. */
struct Event {
    VramMonitorEventKind kind{};
    std::uint64_t registration_id = 0;
    std::string label;
    const void *ptr = nullptr;
    std::size_t size = 0;
    std::int32_t device = -1;
    VramMonitorVerdict verdict{};
    VramMonitorVerdict previous_verdict{};
    bool healthy = true;
    std::string message;
    std::uint64_t timestamp_unix_ms = 0;

    Event() = default;
    explicit Event(const VramMonitorEvent &e)
        : kind(e.kind),
          registration_id(e.registration_id),
          label(e.label != nullptr ? e.label : ""),
          ptr(e.ptr),
          size(e.size),
          device(e.device),
          verdict(e.verdict),
          previous_verdict(e.previous_verdict),
          healthy(e.healthy),
          message(e.message != nullptr ? e.message : ""),
          timestamp_unix_ms(e.timestamp_unix_ms) {}
};

/** Receives events, on the monitor thread. */
using EventHandler = std::function<void(const Event &)>;
/** Receives what an EventHandler threw (on the monitor thread). Must not throw itself. */
using ExceptionHandler = std::function<void(std::exception_ptr)>;
/** Receives the library's log records: level, target ("vram_monitor"), message. */
using LogHandler = std::function<void(VramMonitorLogLevel, const std::string &, const std::string &)>;

/** Report formats of Monitor::report(). */
enum class ReportFormat : std::int32_t {
    /** For people: one line per registration. */
    Text = VRAM_MONITOR_REPORT_FORMAT_TEXT,
    /** {"health": {...}, "registrations": [...]}. */
    Json = VRAM_MONITOR_REPORT_FORMAT_JSON,
    /** The Prometheus text exposition format (version 0.0.4), as served on /metrics. */
    Prometheus = VRAM_MONITOR_REPORT_FORMAT_PROMETHEUS,
};

/** One entry of Monitor::register_many(): [ptr, ptr + size) under `label` (copied by the library). */
struct Region {
    /** First byte of the range. */
    const void *ptr = nullptr;
    /** Length in bytes (non-zero). */
    std::size_t size = 0;
    /** The engine's name for it (UTF-8, at most VRAM_MONITOR_MAX_LABEL_BYTES). */
    std::string label;
};

/** What Monitor::register_many() does when an entry fails. */
enum class RegisterMode : std::uint32_t {
    /** A failed entry fails only itself; the others are registered. */
    Independent = 0,
    /** A failed entry stops the call: nothing is registered (VRAM_MONITOR_REGISTER_ALL_OR_NOTHING). */
    AllOrNothing = VRAM_MONITOR_REGISTER_ALL_OR_NOTHING,
};

/** One registration as the monitor sees it now (Monitor::registration()). */
struct RegistrationInfo {
    /** Its id. */
    std::uint64_t id = 0;
    /** First byte. */
    const void *ptr = nullptr;
    /** Length in bytes. */
    std::size_t size = 0;
    /** The device that held it when registered. */
    std::int32_t device = -1;
    /** Its verdict from the last check that could judge it. */
    VramMonitorVerdict verdict = VRAM_MONITOR_VERDICT_RESIDENT;
    /** The allocations or VMM mappings that hold it (1 for nearly every range). */
    std::uint32_t pieces = 0;
    /** The driver query for it failed in the last check (verdict is then the last one known). */
    bool check_failing = false;
    /** Its label, as registered. */
    std::string label;
};

namespace detail {

struct CallbackState {
    EventHandler handler;
    ExceptionHandler on_exception;
};

/** What an exception says, for the default exception handler. */
inline std::string describe(std::exception_ptr error) {
    try {
        if (error) std::rethrow_exception(error);
    } catch (const std::exception &e) {
        return e.what();
    } catch (...) {
        return "an exception not derived from std::exception";
    }
    return "no exception";
}

inline void report_exception(const CallbackState &state, std::exception_ptr error) noexcept {
    try {
        if (state.on_exception) {
            state.on_exception(error);
        } else {
            std::fprintf(stderr, "vram_monitor: an event callback threw (ignored): %s\n", describe(error).c_str());
        }
    } catch (...) {
        /* The exception handler threw too: nothing may reach the library. */
    }
}

struct LogState {
    std::mutex mutex;
    std::shared_ptr<const LogHandler> handler;
};

/** Never destroyed: the library may log from its threads while the process exits. */
inline LogState &log_state() {
    static LogState *state = new LogState();
    return *state;
}

extern "C" {
/* The C callbacks: every exception is caught here, none crosses into the library. */
inline void vram_monitor_hpp_event_trampoline(const VramMonitorEvent *event, void *user_data) noexcept {
    CallbackState *state = static_cast<CallbackState *>(user_data);
    if (state == nullptr || event == nullptr) return;
    try {
        const Event copy(*event);
        state->handler(copy);
    } catch (...) {
        report_exception(*state, std::current_exception());
    }
}

inline void vram_monitor_hpp_free_state(void *user_data) noexcept { delete static_cast<CallbackState *>(user_data); }

inline void vram_monitor_hpp_log_trampoline(VramMonitorLogLevel level, const char *target, const char *message,
                                            void *user_data) noexcept {
    (void)user_data;
    try {
        std::shared_ptr<const LogHandler> handler;
        {
            LogState &state = log_state();
            std::lock_guard<std::mutex> lock(state.mutex);
            handler = state.handler;
        }
        if (handler && *handler) (*handler)(level, target != nullptr ? target : "", message != nullptr ? message : "");
    } catch (...) {
        /* A log handler that throws loses that record, nothing more. */
    }
}
}  // extern "C"

/** An ERROR record to the log handler of set_log_handler, or a line on stderr without one. */
inline void log_error(const char *message) noexcept {
    try {
        std::shared_ptr<const LogHandler> handler;
        {
            LogState &state = log_state();
            std::lock_guard<std::mutex> lock(state.mutex);
            handler = state.handler;
        }
        if (handler && *handler) {
            (*handler)(VRAM_MONITOR_LOG_LEVEL_ERROR, "vram_monitor", message);
            return;
        }
    } catch (...) {
        /* The handler threw (or a string could not be made): fall back to stderr. */
    }
    std::fprintf(stderr, "vram_monitor: %s\n", message);
}

/**
 * Keeps a monitor that ~Monitor had to leak in a process-wide list that is never freed, so
 * that it stays reachable (leak checkers do not report it; a debugger finds it).
 */
inline void keep_leaked(VramMonitor *monitor) noexcept {
    struct Leaked {
        std::mutex mutex;
        std::vector<VramMonitor *> monitors;
    };
    static Leaked *leaked = new Leaked(); /* never destroyed, as log_state() */
    try {
        std::lock_guard<std::mutex> lock(leaked->mutex);
        leaked->monitors.push_back(monitor);
    } catch (...) {
        /* No memory for the list: it is leaked all the same, only not reachable. */
    }
}

/**
 * What a Monitor shares with its Registrations: the handle while the monitor is alive,
 * nullptr from the moment ~Monitor starts freeing it. Registrations unregister holding the
 * lock shared; ~Monitor takes it exclusively to clear the handle, so it waits for an
 * unregister in progress and none starts afterwards.
 */
struct MonitorToken {
    explicit MonitorToken(VramMonitor *monitor) noexcept : handle(monitor) {}
    std::shared_mutex mutex;
    VramMonitor *handle;
};

}  // namespace detail

/**
 * Routes the library's log records (process-wide, all monitors) to `handler`, or with an
 * empty handler back to stderr (filtered by VRAM_MONITOR_LOG; default warnings and above).
 * The handler runs on whichever thread logged; what it throws is dropped.
 */
inline void set_log_handler(LogHandler handler) {
    detail::LogState &state = detail::log_state();
    const bool install = static_cast<bool>(handler);
    {
        std::lock_guard<std::mutex> lock(state.mutex);
        state.handler = install ? std::make_shared<const LogHandler>(std::move(handler)) : nullptr;
    }
    vram_monitor_set_log_callback(install ? detail::vram_monitor_hpp_log_trampoline : nullptr, nullptr);
}

class Monitor;

/**
 * One registration, unregistered when destroyed. Move-only; empty when default-constructed,
 * moved from, released or unregistered.
 */
class Registration {
public:
    Registration() noexcept = default;
    ~Registration() { reset(); }

    Registration(const Registration &) = delete;
    Registration &operator=(const Registration &) = delete;
    Registration(Registration &&other) noexcept : token_(std::move(other.token_)), id_(std::exchange(other.id_, 0)) {}
    Registration &operator=(Registration &&other) noexcept {
        if (this != &other) {
            reset();
            token_ = std::move(other.token_);
            id_ = std::exchange(other.id_, 0);
        }
        return *this;
    }

    /** The id (0 when empty), as in events and reports. */
    std::uint64_t id() const noexcept { return id_; }
    /** Whether this still owns a registration. */
    explicit operator bool() const noexcept { return id_ != 0; }

    /**
     * Unregisters now; empties it either way. Throws Error: UNKNOWN_REGISTRATION if it was
     * empty or already removed, NULL_ARGUMENT if its Monitor is gone.
     */
    void unregister() {
        const std::uint64_t id = std::exchange(id_, 0);
        const std::shared_ptr<detail::MonitorToken> token = std::move(token_);
        if (id == 0) throw Error(VRAM_MONITOR_RESULT_UNKNOWN_REGISTRATION, "Registration::unregister on an empty registration");
        bool alive = false;
        VramMonitorResult result = VRAM_MONITOR_RESULT_OK;
        if (token) {
            std::shared_lock<std::shared_mutex> lock(token->mutex);
            if (token->handle != nullptr) {
                alive = true;
                result = vram_monitor_unregister(token->handle, id);
            }
        }
        if (!alive) throw Error(VRAM_MONITOR_RESULT_NULL_ARGUMENT, "Registration::unregister: the Monitor is gone");
        check(result, "vram_monitor_unregister");
    }

    /** Unregisters now if it still owns a registration and its Monitor lives; ignores errors. */
    void reset() noexcept {
        const std::uint64_t id = std::exchange(id_, 0);
        const std::shared_ptr<detail::MonitorToken> token = std::move(token_);
        if (id == 0 || !token) return;
        try {
            std::shared_lock<std::shared_mutex> lock(token->mutex);
            if (token->handle != nullptr) (void)vram_monitor_unregister(token->handle, id);
        } catch (...) {
            /* Locking failed (std::system_error): the registration stays watched. */
        }
    }

    /** Gives up ownership: the registration stays watched; returns its id. */
    std::uint64_t release() noexcept {
        token_.reset();
        return std::exchange(id_, 0);
    }

private:
    friend class Monitor;
    Registration(std::shared_ptr<detail::MonitorToken> token, std::uint64_t id) noexcept
        : token_(std::move(token)), id_(id) {}

    std::shared_ptr<detail::MonitorToken> token_;
    std::uint64_t id_ = 0;
};

/**
 * The answer of Monitor::register_many(), entry by entry in the order given. results[i] is
 * entry i's own code (OK, what register_buffer would have thrown for it, DUPLICATE_RANGE for
 * the same ptr and size earlier in the call, or ENTRIES_FAILED in an all-or-nothing call that
 * another entry failed); registrations[i] owns it when it was registered and is empty otherwise.
 */
struct RegisterManyResult {
    /** Entry i's guard; empty where entry i was not registered. */
    std::vector<Registration> registrations;
    /** Entry i's own result code. */
    std::vector<VramMonitorResult> results;
    /** How many entries were registered. */
    std::size_t registered = 0;

    /** Whether every entry was registered. */
    bool ok() const noexcept { return registered == results.size(); }
};

/** A monitor and its background thread. RAII, move-only. */
class Monitor {
public:
    /** Starts a monitor that checks every `interval_ms` ms (default 60 s). Throws Error. */
    explicit Monitor(std::uint32_t interval_ms = VRAM_MONITOR_DEFAULT_INTERVAL_MS) {
        VramMonitor *raw = nullptr;
        check(vram_monitor_new(interval_ms, &raw), "vram_monitor_new");
        try {
            token_ = std::make_shared<detail::MonitorToken>(raw);
        } catch (...) {
            (void)vram_monitor_free(raw);
            throw;
        }
        handle_ = raw;
    }
    explicit Monitor(std::chrono::milliseconds interval) : Monitor(to_interval_ms(interval)) {}

    /**
     * Stops and joins the monitor thread and releases the callback (vram_monitor_free), on
     * this thread; no callback runs after it returns. Its Registrations become inert first.
     * Inside the monitor's own callback it leaks the monitor instead (see the top of this file).
     */
    ~Monitor() { destroy(); }

    Monitor(const Monitor &) = delete;
    Monitor &operator=(const Monitor &) = delete;
    Monitor(Monitor &&other) noexcept
        : handle_(std::exchange(other.handle_, nullptr)), token_(std::move(other.token_)) {}
    /** Frees the monitor held (as ~Monitor does), then takes the other's. */
    Monitor &operator=(Monitor &&other) noexcept {
        if (this != &other) {
            destroy();
            handle_ = std::exchange(other.handle_, nullptr);
            token_ = std::move(other.token_);
        }
        return *this;
    }

    /** The C handle, for calls the wrapper does not cover (nullptr when moved from). */
    VramMonitor *get() const noexcept { return handle_; }

    /** Registers [ptr, ptr + size); throws Error (refused() for memory that is not resident). */
    Registration register_buffer(const void *ptr, std::size_t size, const std::string &label) {
        const std::uint64_t id = register_id(ptr, size, label);
        return Registration(token_, id);
    }

    /** Registers without a guard; unregister with unregister(id). */
    std::uint64_t register_id(const void *ptr, std::size_t size, const std::string &label) {
        std::uint64_t id = 0;
        check(vram_monitor_register(handle_, ptr, size, label.c_str(), &id), "vram_monitor_register");
        return id;
    }

    /** Stops watching registration `id`. */
    void unregister(std::uint64_t id) { check(vram_monitor_unregister(handle_, id), "vram_monitor_unregister"); }

    /**
     * Registers every region in one call (vram_monitor_register_many: one driver query per
     * distinct allocation, every entry judged from one snapshot). Entries that fail do not
     * throw: read RegisterManyResult::results. Throws Error only for a call wrong as a whole:
     * INVALID_ARGUMENT for no regions (as the C API for count 0).
     */
    RegisterManyResult register_many(const std::vector<Region> &regions, RegisterMode mode = RegisterMode::Independent) {
        /* Checked here: with no regions the vectors' data() may be NULL, which the C API
           would answer NULL_ARGUMENT instead. */
        if (regions.empty()) throw Error(VRAM_MONITOR_RESULT_INVALID_ARGUMENT, "vram_monitor_register_many with no regions");
        std::vector<VramMonitorRegion> raw;
        raw.reserve(regions.size());
        for (const Region &r : regions) raw.push_back(VramMonitorRegion{r.ptr, r.size, r.label.c_str()});
        std::vector<std::uint64_t> ids(regions.size(), 0);
        RegisterManyResult out;
        /* Everything that can throw is allocated before the call: once entries are registered,
           each must reach its guard, or it would stay watched with no owner. */
        out.results.assign(regions.size(), VRAM_MONITOR_RESULT_OK);
        out.registrations.resize(regions.size());
        std::size_t registered = 0;
        const VramMonitorResult code =
            vram_monitor_register_many(handle_, raw.data(), raw.size(), static_cast<std::uint32_t>(mode), ids.data(),
                                       out.results.data(), &registered);
        if (code != VRAM_MONITOR_RESULT_OK && code != VRAM_MONITOR_RESULT_ENTRIES_FAILED) {
            throw Error(code, "vram_monitor_register_many");
        }
        for (std::size_t i = 0; i < ids.size(); ++i) {
            if (ids[i] != 0) out.registrations[i] = Registration(token_, ids[i]);
        }
        out.registered = registered;
        return out;
    }

    /**
     * Reads registration `id` as it stands now, label included (no driver query). Throws
     * Error(UNKNOWN_REGISTRATION) for an id this monitor does not hold.
     */
    RegistrationInfo registration(std::uint64_t id) const {
        VramMonitorRegistrationInfo raw{};
        /* Most labels fit; a longer one costs a second call of the size the first reported. */
        char small[256];
        std::size_t length = 0;
        VramMonitorResult result = vram_monitor_registration(handle_, id, &raw, small, sizeof small, &length);
        RegistrationInfo info;
        if (result == VRAM_MONITOR_RESULT_OK) {
            info.label.assign(small, length);
        } else if (result == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL) {
            /* A registration's label never changes, so the size reported fits the second call. */
            info.label.resize(length);
            result = vram_monitor_registration(handle_, id, &raw, &info.label[0], info.label.size(), &length);
            if (result == VRAM_MONITOR_RESULT_OK) info.label.resize(length);
        }
        check(result, "vram_monitor_registration");
        info.id = raw.id;
        info.ptr = raw.ptr;
        info.size = raw.size;
        info.device = raw.device;
        info.verdict = static_cast<VramMonitorVerdict>(raw.verdict);
        info.pieces = raw.pieces;
        info.check_failing = raw.check_failing != 0;
        return info;
    }

    /**
     * Sets the function that receives events (replacing the previous one; an empty function
     * removes it). It runs on the monitor thread; what it throws goes to `on_exception`
     * (default: a line on stderr) and never into the library.
     */
    void set_callback(EventHandler handler, ExceptionHandler on_exception = nullptr) {
        if (!handler) {
            clear_callback();
            return;
        }
        auto state = std::make_unique<detail::CallbackState>();
        state->handler = std::move(handler);
        state->on_exception = std::move(on_exception);
        check(vram_monitor_set_callback(handle_, detail::vram_monitor_hpp_event_trampoline, state.get(),
                                        detail::vram_monitor_hpp_free_state),
              "vram_monitor_set_callback");
        state.release(); /* the library owns it now and deletes it through vram_monitor_hpp_free_state */
    }

    /** Removes the callback. */
    void clear_callback() {
        check(vram_monitor_set_callback(handle_, nullptr, nullptr, nullptr), "vram_monitor_set_callback");
    }

    /** Changes the interval between full checks (at least 1 ms). */
    void set_interval(std::chrono::milliseconds interval) {
        check(vram_monitor_set_interval_ms(handle_, to_interval_ms(interval)), "vram_monitor_set_interval_ms");
    }

    /**
     * Paces a check's driver queries: a pause of `pause` after every `slice_queries` queries
     * (0: only a yield), from the next check on. The defaults are
     * VRAM_MONITOR_DEFAULT_SLICE_QUERIES and VRAM_MONITOR_DEFAULT_PAUSE_US. Throws
     * Error(INVALID_ARGUMENT) for 0 queries, a negative pause, a pause over 1 s or one not
     * shorter than the stall deadline.
     */
    void set_pacing(std::uint32_t slice_queries, std::chrono::microseconds pause) {
        const auto count = pause.count();
        if (count < 0 || static_cast<unsigned long long>(count) > UINT32_MAX) {
            throw Error(VRAM_MONITOR_RESULT_INVALID_ARGUMENT, "set_pacing: the pause must be 0 to 1 s");
        }
        check(vram_monitor_set_pacing(handle_, slice_queries, static_cast<std::uint32_t>(count)), "vram_monitor_set_pacing");
    }

    /**
     * Sets when the monitor counts as stalled, at once: a check making no progress for longer
     * than `deadline`, or no completed check for longer than the interval plus `grace`
     * (defaults VRAM_MONITOR_DEFAULT_STALL_DEADLINE_MS and ..._GRACE_MS). Throws
     * Error(INVALID_ARGUMENT), changing nothing, for a value of 0, negative or over 30 days, or
     * a deadline not longer than the pacing's pause.
     */
    void set_stall_limits(std::chrono::milliseconds deadline, std::chrono::milliseconds grace) {
        if (deadline.count() < 0 || grace.count() < 0) {
            throw Error(VRAM_MONITOR_RESULT_INVALID_ARGUMENT, "set_stall_limits: negative duration");
        }
        check(vram_monitor_set_stall_limits(handle_, static_cast<std::uint64_t>(deadline.count()),
                                            static_cast<std::uint64_t>(grace.count())),
              "vram_monitor_set_stall_limits");
    }

    /** Runs a full check now and waits for it (callbacks run before it returns). */
    VramMonitorCheckSummary check_now() {
        VramMonitorCheckSummary summary{};
        check(vram_monitor_check_now(handle_, &summary), "vram_monitor_check_now");
        return summary;
    }

    /** The health snapshot (no driver query). */
    VramMonitorHealth health() const {
        VramMonitorHealth health{};
        check(vram_monitor_health(handle_, &health), "vram_monitor_health");
        return health;
    }

    /**
     * The stall state: whether the monitor stopped checking, the check in progress, the
     * limits in force (no driver query).
     */
    VramMonitorStall stall() const {
        VramMonitorStall stall{};
        check(vram_monitor_stall(handle_, &stall), "vram_monitor_stall");
        return stall;
    }

    /**
     * The memory health of each GPU that holds registrations, as of the last full check (no
     * NVML call here); empty before the first check or without registrations.
     */
    std::vector<VramMonitorDeviceHealth> device_health() const {
        std::vector<VramMonitorDeviceHealth> devices;
        std::size_t count = 0;
        VramMonitorResult result = vram_monitor_device_health(handle_, nullptr, 0, &count);
        /* The count can change between the size query and the copy: retry until it fits. */
        for (int attempt = 0; attempt < 16 && result == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL; ++attempt) {
            devices.resize(count + 4);
            result = vram_monitor_device_health(handle_, devices.data(), devices.size(), &count);
        }
        check(result, "vram_monitor_device_health");
        devices.resize(count);
        return devices;
    }

    /**
     * Starts the built-in HTTP endpoint on `address` ("PORT", "localhost:PORT", or an IP literal
     * with a port; empty: "127.0.0.1:9464"; port 0 lets the system choose) and returns the port
     * it listens on. Throws Error: INVALID_ARGUMENT for an address that does not parse,
     * HTTP_BIND_FAILED, HTTP_ALREADY_SERVING. Stopped by stop_http() or ~Monitor.
     */
    std::uint16_t serve_http(const std::string &address = std::string()) {
        std::uint16_t port = 0;
        check(vram_monitor_serve_http(handle_, address.c_str(), &port), "vram_monitor_serve_http");
        return port;
    }

    /** Stops the HTTP endpoint if it is serving; the port is closed when this returns. */
    void stop_http() { check(vram_monitor_stop_http(handle_), "vram_monitor_stop_http"); }

    // ---- content integrity (docs/integrity.md) ----

    /** Enables integrity for `device` with the CUDA context current on this thread (the
     * library creates none); `options` NULL: defaults. Throws NO_CURRENT_CONTEXT,
     * CONTEXT_WRONG_DEVICE, INTEGRITY_ALREADY_ENABLED, KERNEL_UNAVAILABLE, ... */
    void enable_integrity(int32_t device, const VramMonitorIntegrityOptions *options = nullptr) {
        check(vram_monitor_enable_integrity(handle_, device, options), "vram_monitor_enable_integrity");
    }
    /** Disables integrity for `device`: seals dropped, the context reference given back. */
    void disable_integrity(int32_t device) {
        check(vram_monitor_disable_integrity(handle_, device), "vram_monitor_disable_integrity");
    }
    /** Changes background verification's pacing on every enabled device (0 fields: defaults). */
    void set_integrity_options(const VramMonitorIntegrityOptions &options) {
        check(vram_monitor_set_integrity_options(handle_, &options), "vram_monitor_set_integrity_options");
    }
    /** Fingerprints registration `id` now; a later difference makes it MODIFIED. Weights only. */
    void seal(uint64_t id) { check(vram_monitor_seal(handle_, id), "vram_monitor_seal"); }
    /** New fingerprint after an intentional change; clears MODIFIED. */
    void reseal(uint64_t id) { check(vram_monitor_reseal(handle_, id), "vram_monitor_reseal"); }
    /** Takes `id` back after its memory was unmapped and remapped on purpose (wake from
     *  sleep); returns the new id; a seal moves with its old fingerprints (then verify_now). */
    uint64_t rebind(uint64_t id) {
        uint64_t new_id = 0;
        check(vram_monitor_rebind(handle_, id, &new_id), "vram_monitor_rebind");
        return new_id;
    }
    /** Stops verifying `id`'s content (it stays registered). */
    void unseal(uint64_t id) { check(vram_monitor_unseal(handle_, id), "vram_monitor_unseal"); }
    /** Registers and seals in one call (or neither); returns the id (not a guard). */
    uint64_t register_sealed(const void *ptr, size_t size, const std::string &label) {
        uint64_t id = 0;
        check(vram_monitor_register_sealed(handle_, ptr, size, label.c_str(), &id), "vram_monitor_register_sealed");
        return id;
    }
    /** Verifies every sealed byte now at full speed and waits. */
    VramMonitorVerifySummary verify_now() {
        VramMonitorVerifySummary summary{};
        check(vram_monitor_verify_now(handle_, &summary), "vram_monitor_verify_now");
        return summary;
    }
    /** One registration's integrity state (`sealed` false when not sealed). */
    VramMonitorSealInfo seal_info(uint64_t id) const {
        VramMonitorSealInfo info{};
        check(vram_monitor_seal_info(handle_, id, &info), "vram_monitor_seal_info");
        return info;
    }
    /** The monitor-wide integrity state. */
    VramMonitorIntegrity integrity() const {
        VramMonitorIntegrity status{};
        check(vram_monitor_integrity(handle_, &status), "vram_monitor_integrity");
        return status;
    }

    /** The report, as text, JSON or Prometheus text. */
    std::string report(ReportFormat format = ReportFormat::Text) const {
        const std::int32_t raw = static_cast<std::int32_t>(format);
        std::size_t needed = 0;
        VramMonitorResult result = vram_monitor_report(handle_, raw, nullptr, 0, &needed);
        std::string text;
        /* The report can grow between the size query and the copy (other threads register):
         * room to spare, more on each try, so that a steady stream of registrations cannot keep
         * it from fitting. */
        std::size_t headroom = 4096;
        for (int attempt = 0; attempt < 16 && result == VRAM_MONITOR_RESULT_BUFFER_TOO_SMALL; ++attempt) {
            text.resize(needed + needed / 4 + headroom);
            if (headroom < (std::size_t{1} << 24)) headroom *= 4;
            std::size_t length = 0;
            result = vram_monitor_report(handle_, raw, &text[0], text.size(), &length);
            if (result == VRAM_MONITOR_RESULT_OK) {
                text.resize(length);
            } else {
                needed = length;
            }
        }
        check(result, "vram_monitor_report");
        return text;
    }

private:
    void destroy() noexcept {
        VramMonitor *const handle = std::exchange(handle_, nullptr);
        const std::shared_ptr<detail::MonitorToken> token = std::move(token_);
        if (token) {
            try {
                std::unique_lock<std::shared_mutex> lock(token->mutex);
                token->handle = nullptr;
            } catch (...) {
                /* Locking failed (std::system_error): cannot make the Registrations inert
                   safely, so freeing could race with their unregister; leak instead. */
                detail::keep_leaked(handle);
                detail::log_error("~Monitor could not lock its registrations' token; the monitor is leaked");
                return;
            }
        }
        if (handle == nullptr) return;
        const VramMonitorResult result = vram_monitor_free(handle);
        if (result == VRAM_MONITOR_RESULT_OK || result == VRAM_MONITOR_RESULT_FORKED) return;
        if (result == VRAM_MONITOR_RESULT_CALLED_FROM_CALLBACK) {
            /* Both are allowed in a callback; what they return changes nothing here. */
            (void)vram_monitor_set_callback(handle, nullptr, nullptr, nullptr);
            (void)vram_monitor_set_interval_ms(handle, UINT32_MAX);
            detail::keep_leaked(handle);
            detail::log_error(
                "a Monitor was destroyed inside its own callback, where vram_monitor_free cannot join the monitor "
                "thread: the monitor is leaked (callback removed, checks paused) until the process exits");
            return;
        }
        detail::keep_leaked(handle);
        detail::log_error("vram_monitor_free failed in ~Monitor; the monitor is leaked");
    }

    static std::uint32_t to_interval_ms(std::chrono::milliseconds interval) {
        const auto count = interval.count();
        if (count < 1 || static_cast<unsigned long long>(count) > UINT32_MAX) {
            throw Error(VRAM_MONITOR_RESULT_INVALID_ARGUMENT, "the interval must be 1 ms to 2^32-1 ms");
        }
        return static_cast<std::uint32_t>(count);
    }

    /** Owned: freed by ~Monitor and nowhere else. */
    VramMonitor *handle_ = nullptr;
    /** Shared with the Registrations; its handle is cleared before handle_ is freed. */
    std::shared_ptr<detail::MonitorToken> token_;
};

}  // namespace vram_monitor

#endif /* VRAM_MONITOR_HPP */
