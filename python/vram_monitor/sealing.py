"""The Monitor's content-integrity methods (docs/integrity.md): lend a context, seal,
reseal, rebind, unseal, verify, read a seal's state."""

from __future__ import annotations

import ctypes
from typing import Optional

from . import _native
from ._handle import HandleUser
from .integrity import IntegrityStatus, SealInfo, VerifySummary, current_device
from .results import check


class SealingMethods(HandleUser):
    """Content integrity, mixed into Monitor."""

    def enable_integrity(
        self,
        device: Optional[int] = None,
        *,
        slice_bytes: int = 0,
        max_gpu_share_ppm: int = 0,
        period_ms: int = 0,
    ) -> int:
        """Enables content integrity for `device`, borrowing the CUDA context current on this
        thread (vram_monitor_enable_integrity; the library creates none). `device` None: the
        current torch device (else CuPy's), whose primary context is made current here first.
        Zero options take the library's defaults. Returns the device."""
        if device is None:
            device = current_device()
            if device is None:
                raise ValueError("no device given and neither torch nor cupy is in use")
        options = _native.VramMonitorIntegrityOptions(
            _native.u64(slice_bytes, "slice_bytes"), int(max_gpu_share_ppm), _native.u64(period_ms, "period_ms")
        )
        what = "vram_monitor_enable_integrity(%d)" % device
        check(self._lib.vram_monitor_enable_integrity(self._h(what), int(device), ctypes.byref(options)), what)
        return int(device)

    def disable_integrity(self, device: int) -> None:
        """Disables integrity for `device` (its seals dropped, the context given back)."""
        what = "vram_monitor_disable_integrity(%d)" % device
        check(self._lib.vram_monitor_disable_integrity(self._h(what), int(device)), what)

    def set_integrity_options(self, *, slice_bytes: int = 0, max_gpu_share_ppm: int = 0, period_ms: int = 0) -> None:
        """Changes background verification's pacing on every enabled device (0: default)."""
        options = _native.VramMonitorIntegrityOptions(
            _native.u64(slice_bytes, "slice_bytes"), int(max_gpu_share_ppm), _native.u64(period_ms, "period_ms")
        )
        what = "vram_monitor_set_integrity_options"
        check(self._lib.vram_monitor_set_integrity_options(self._h(what), ctypes.byref(options)), what)

    def seal(self, registration_id: int) -> None:
        """Fingerprints a registration's bytes on its GPU now; a later difference makes its
        verdict MODIFIED. Seal weights only, never a KV cache or activations."""
        what = "vram_monitor_seal"
        check(self._lib.vram_monitor_seal(self._h(what), _native.u64(registration_id, "registration_id")), what)

    def reseal(self, registration_id: int) -> None:
        """Takes a new fingerprint after an intentional change and clears MODIFIED."""
        what = "vram_monitor_reseal"
        check(self._lib.vram_monitor_reseal(self._h(what), _native.u64(registration_id, "registration_id")), what)

    def rebind(self, registration_id: int) -> int:
        """Takes a registration back after the engine unmapped and remapped its memory on
        purpose (wake from sleep, an expandable segment released and grown again): the memory
        mapped there now is registered under a new id (returned; the old one is gone) and a
        seal moves to it with the fingerprints taken before, so that verify_now() after the
        reload finds bytes that were not restored exactly (MODIFIED)."""
        what = "vram_monitor_rebind"
        if not _native.has(self._lib, what):
            raise NotImplementedError("the loaded vram_monitor library is older than vram_monitor_rebind")
        out = ctypes.c_uint64()
        check(self._lib.vram_monitor_rebind(self._h(what), _native.u64(registration_id, "registration_id"), ctypes.byref(out)), what)
        return out.value

    def unseal(self, registration_id: int) -> None:
        """Stops verifying a registration's content (it stays registered)."""
        what = "vram_monitor_unseal"
        check(self._lib.vram_monitor_unseal(self._h(what), _native.u64(registration_id, "registration_id")), what)

    def verify_now(self) -> VerifySummary:
        """Verifies every sealed byte now at full speed and waits for it."""
        what = "vram_monitor_verify_now"
        buf, out = _native.out_struct(_native.VramMonitorVerifySummary)
        check(self._lib.vram_monitor_verify_now(self._h(what), ctypes.addressof(buf)), what)
        return VerifySummary._from_c(out)

    def seal_info(self, registration_id: int) -> Optional[SealInfo]:
        """A registration's integrity state, or None when it is not sealed."""
        what = "vram_monitor_seal_info"
        buf, out = _native.out_struct(_native.VramMonitorSealInfo)
        rid = _native.u64(registration_id, "registration_id")
        check(self._lib.vram_monitor_seal_info(self._h(what), rid, ctypes.addressof(buf)), what)
        return SealInfo._from_c(out) if out.sealed else None

    def integrity(self) -> IntegrityStatus:
        """The monitor-wide integrity state."""
        what = "vram_monitor_integrity"
        buf, out = _native.out_struct(_native.VramMonitorIntegrity)
        check(self._lib.vram_monitor_integrity(self._h(what), ctypes.addressof(buf)), what)
        return IntegrityStatus._from_c(out)
