"""Snapshots copied out of the C structs: health, a check's summary, one GPU's memory health."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Union

from . import _native
from .results import SignalStatus, enum_or_int

__all__ = ["CheckSummary", "DeviceHealth", "Health", "Stall"]

_VRAM_SOURCES = {0: "unknown", 1: "nvml_process", 2: "device_used"}


@dataclasses.dataclass(frozen=True)
class Health:
    """The health snapshot (vram_monitor_health). Serve `healthy` from your health endpoint."""

    healthy: bool
    last_check_failed: bool
    registrations: int
    tracked_bytes: int
    current_violations: int
    total_violations: int
    checks_completed: int
    checks_failed: int
    last_check_unix_ms: int
    last_check_duration_us: int
    process_vram_bytes: int
    process_vram_source: str
    interval_ms: int
    device_faults: int

    def as_dict(self) -> Dict[str, Any]:
        """The fields as a dict (for JSON)."""
        return dataclasses.asdict(self)

    @staticmethod
    def _from_c(h: _native.VramMonitorHealth) -> "Health":
        return Health(
            healthy=bool(h.healthy),
            last_check_failed=bool(h.last_check_failed),
            registrations=h.registrations,
            tracked_bytes=h.tracked_bytes,
            current_violations=h.current_violations,
            total_violations=h.total_violations,
            checks_completed=h.checks_completed,
            checks_failed=h.checks_failed,
            last_check_unix_ms=h.last_check_unix_ms,
            last_check_duration_us=h.last_check_duration_us,
            process_vram_bytes=h.process_vram_bytes,
            process_vram_source=_VRAM_SOURCES.get(h.process_vram_source, str(h.process_vram_source)),
            interval_ms=h.interval_ms,
            device_faults=h.device_faults,
        )


@dataclasses.dataclass(frozen=True)
class Stall:
    """The stall state (vram_monitor_stall): whether the monitor stopped checking, the check
    in progress and for how long, when the last one started, and the limits in force."""

    stalled: bool
    check_in_progress: bool
    check_in_progress_ms: int
    last_check_started_unix_ms: int
    deadline_ms: int
    grace_ms: int

    @staticmethod
    def _from_c(s: _native.VramMonitorStall) -> "Stall":
        return Stall(
            stalled=bool(s.stalled),
            check_in_progress=bool(s.check_in_progress),
            check_in_progress_ms=s.check_in_progress_ms,
            last_check_started_unix_ms=s.last_check_started_unix_ms,
            deadline_ms=s.deadline_ms,
            grace_ms=s.grace_ms,
        )


@dataclasses.dataclass(frozen=True)
class CheckSummary:
    """The result of one full check (vram_monitor_check_now)."""

    checked: int
    resident: int
    violations: int
    check_failures: int
    duration_us: int
    healthy: bool

    @staticmethod
    def _from_c(s: _native.VramMonitorCheckSummary) -> "CheckSummary":
        return CheckSummary(
            checked=s.checked,
            resident=s.resident,
            violations=s.violations,
            check_failures=s.check_failures,
            duration_us=s.duration_us,
            healthy=bool(s.healthy),
        )


@dataclasses.dataclass(frozen=True)
class DeviceHealth:
    """The memory health of one GPU that holds registrations (vram_monitor_device_health), as
    of the last full check. A value is meaningful only when its status is SUPPORTED."""

    device: int
    nvml_available: bool
    memory_fault: bool
    ecc_uncorrected_volatile_status: Union[SignalStatus, int]
    ecc_uncorrected_volatile: int
    retired_pages_pending_status: Union[SignalStatus, int]
    retired_pages_pending: bool
    remapped_rows_status: Union[SignalStatus, int]
    remapped_rows_pending: bool
    remapped_rows_failed: bool
    remapped_rows_correctable: int
    remapped_rows_uncorrectable: int
    critical_xid_status: Union[SignalStatus, int]
    critical_xid_events: int
    last_critical_xid: int
    read_unix_ms: int
    uuid: str
    name: str

    def as_dict(self) -> Dict[str, Any]:
        """The fields as a dict (for JSON)."""
        return dataclasses.asdict(self)

    @staticmethod
    def _from_c(d: _native.VramMonitorDeviceHealth) -> "DeviceHealth":
        def status(v: int) -> Union[SignalStatus, int]:
            return enum_or_int(SignalStatus, v)

        return DeviceHealth(
            device=d.device,
            nvml_available=bool(d.nvml_available),
            memory_fault=bool(d.memory_fault),
            ecc_uncorrected_volatile_status=status(d.ecc_uncorrected_volatile_status),
            ecc_uncorrected_volatile=d.ecc_uncorrected_volatile,
            retired_pages_pending_status=status(d.retired_pages_pending_status),
            retired_pages_pending=bool(d.retired_pages_pending),
            remapped_rows_status=status(d.remapped_rows_status),
            remapped_rows_pending=bool(d.remapped_rows_pending),
            remapped_rows_failed=bool(d.remapped_rows_failed),
            remapped_rows_correctable=d.remapped_rows_correctable,
            remapped_rows_uncorrectable=d.remapped_rows_uncorrectable,
            critical_xid_status=status(d.critical_xid_status),
            critical_xid_events=d.critical_xid_events,
            last_critical_xid=d.last_critical_xid,
            read_unix_ms=d.read_unix_ms,
            uuid=bytes(d.uuid).split(b"\0", 1)[0].decode("utf-8", "replace"),
            name=bytes(d.name).split(b"\0", 1)[0].decode("utf-8", "replace"),
        )
