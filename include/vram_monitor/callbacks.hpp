/* vram_monitor/callbacks.hpp - part of the C++17 wrapper: The C trampolines behind callbacks and log records, the leaked-monitor list, the token a Monitor shares with its Registrations, and set_log_handler.
 *
 * Included by vram_monitor.hpp, in order, after vram_monitor.h and the standard headers it
 * needs: include vram_monitor.hpp, not this file.
 */
#ifndef VRAM_MONITOR_HPP_CALLBACKS
#define VRAM_MONITOR_HPP_CALLBACKS

#ifndef VRAM_MONITOR_HPP
#error "include vram_monitor.hpp, not its parts"
#endif

namespace vram_monitor {

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

}  // namespace vram_monitor

#endif /* VRAM_MONITOR_HPP_CALLBACKS */
