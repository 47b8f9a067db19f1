/* vram_monitor/monitor.hpp - part of the C++17 wrapper: Monitor: the RAII owner of a C monitor and its thread.
 *
 * Included by vram_monitor.hpp, in order, after vram_monitor.h and the standard headers it
 * needs: include vram_monitor.hpp, not this file.
 */
#ifndef VRAM_MONITOR_HPP_MONITOR
#define VRAM_MONITOR_HPP_MONITOR

#ifndef VRAM_MONITOR_HPP
#error "include vram_monitor.hpp, not its parts"
#endif

namespace vram_monitor {

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

#endif /* VRAM_MONITOR_HPP_MONITOR */
