/* vram_monitor/values.hpp - part of the C++17 wrapper: What the wrapper hands out and takes by value: Event, the handler types, ReportFormat, Region, RegisterMode, RegistrationInfo.
 *
 * Included by vram_monitor.hpp, in order, after vram_monitor.h and the standard headers it
 * needs: include vram_monitor.hpp, not this file.
 */
#ifndef VRAM_MONITOR_HPP_VALUES
#define VRAM_MONITOR_HPP_VALUES

#ifndef VRAM_MONITOR_HPP
#error "include vram_monitor.hpp, not its parts"
#endif

namespace vram_monitor {

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
    /** MODIFIED: 1 MiB chunks found different from the seal so far (0 for other kinds). */
    std::uint64_t modified_chunks = 0;
    /** MODIFIED: byte offset of the first differing chunk in the registration. */
    std::uint64_t first_modified_offset = 0;
    /** What went wrong, as the log records' error_kind names it ("" for a recovery). */
    std::string error_kind;

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
          timestamp_unix_ms(e.timestamp_unix_ms),
          modified_chunks(e.modified_chunks),
          first_modified_offset(e.first_modified_offset),
          error_kind(e.error_kind != nullptr ? e.error_kind : "") {}
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

}  // namespace vram_monitor

#endif /* VRAM_MONITOR_HPP_VALUES */
