"""Content integrity's values: what verify_now did, one registration's seal, the monitor-wide
state (docs/integrity.md)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class VerifySummary:
    """What Monitor.verify_now did."""

    registrations: int
    bytes: int
    modified: int
    duration_us: int

    @classmethod
    def _from_c(cls, s: Any) -> "VerifySummary":
        return cls(int(s.registrations), int(s.bytes), int(s.modified), int(s.duration_us))


@dataclasses.dataclass(frozen=True)
class SealInfo:
    """One sealed registration's integrity state (modified_chunks 0: unchanged)."""

    chunks: int
    last_verified_unix_ms: int
    modified_chunks: int
    first_modified_offset: int
    integrity_failing: bool

    @classmethod
    def _from_c(cls, s: Any) -> "SealInfo":
        return cls(
            int(s.chunks),
            int(s.last_verified_unix_ms),
            int(s.modified_chunks),
            int(s.first_modified_offset),
            bool(s.integrity_failing),
        )


@dataclasses.dataclass(frozen=True)
class IntegrityStatus:
    """The monitor-wide integrity state; failed_device is None when no lent context failed."""

    devices_enabled: int
    sealed: int
    sealed_bytes: int
    modified: int
    verified_bytes_total: int
    passes_completed: int
    last_pass_unix_ms: int
    failed_device: Optional[int]
    failed_code: int

    @classmethod
    def _from_c(cls, s: Any) -> "IntegrityStatus":
        return cls(
            int(s.devices_enabled),
            int(s.sealed),
            int(s.sealed_bytes),
            int(s.modified),
            int(s.verified_bytes_total),
            int(s.passes_completed),
            int(s.last_pass_unix_ms),
            int(s.failed_device) if s.failed else None,
            int(s.failed_code),
        )


def current_device() -> Optional[int]:
    """The current torch (else CuPy) device, after making its primary context current on
    this thread (the runtime does so on its first call here); None without either."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        device = int(torch.cuda.current_device())
        torch.cuda.synchronize(device)
        return device
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        device = int(cupy.cuda.runtime.getDevice())
        cupy.cuda.runtime.deviceSynchronize()
        return device
    return None
