/* vram_monitor/errors.hpp - part of the C++17 wrapper: Error (the exception every failing call throws), result and verdict names, versions.
 *
 * Included by vram_monitor.hpp, in order, after vram_monitor.h and the standard headers it
 * needs: include vram_monitor.hpp, not this file.
 */
#ifndef VRAM_MONITOR_HPP_ERRORS
#define VRAM_MONITOR_HPP_ERRORS

#ifndef VRAM_MONITOR_HPP
#error "include vram_monitor.hpp, not its parts"
#endif

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

}  // namespace vram_monitor

#endif /* VRAM_MONITOR_HPP_ERRORS */
