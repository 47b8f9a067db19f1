/* vram_monitor/registration.hpp - part of the C++17 wrapper: Registration (unregisters when destroyed) and RegisterManyResult.
 *
 * Included by vram_monitor.hpp, in order, after vram_monitor.h and the standard headers it
 * needs: include vram_monitor.hpp, not this file.
 */
#ifndef VRAM_MONITOR_HPP_REGISTRATION
#define VRAM_MONITOR_HPP_REGISTRATION

#ifndef VRAM_MONITOR_HPP
#error "include vram_monitor.hpp, not its parts"
#endif

namespace vram_monitor {

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

}  // namespace vram_monitor

#endif /* VRAM_MONITOR_HPP_REGISTRATION */
