"""The monitor: one C monitor and its background thread, owned by one Python object."""

from __future__ import annotations

import ctypes
import dataclasses
import threading
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union

from . import _native, events, lifecycle
from .health import CheckSummary, Health, Stall
from .outputs import OutputMethods
from .sealing import SealingMethods
from .results import MonitorClosed, Result, Verdict, VramMonitorError, check, enum_or_int
from .tensors import buffer_range

if TYPE_CHECKING:  # pragma: no cover
    from .watch import Watch

__all__ = ["EntriesFailed", "Monitor", "Registration", "RegistrationInfo"]

_OPEN, _CLOSING, _CLOSED = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class RegistrationInfo:
    """One registration as the monitor sees it now (vram_monitor_registration)."""

    id: int
    ptr: int
    size: int
    device: int
    verdict: Union[Verdict, int]
    pieces: int
    label: str
    #: The driver query for it failed in the last check (its verdict is the last one known).
    check_failing: bool = False


class EntriesFailed(VramMonitorError):
    """register_many: at least one entry failed. `results` has one code per entry (OK for the
    ones that registered), `ids` one id per entry (0 where nothing was registered: every entry
    with all_or_nothing)."""

    def __init__(self, results: List[Union[Result, int]], ids: List[int], labels: Sequence[str]) -> None:
        self.results = results
        self.ids = ids
        failed = ["%s: %s" % (labels[i], getattr(r, "name", r)) for i, r in enumerate(results) if r != Result.OK]
        super().__init__(Result.ENTRIES_FAILED, "vram_monitor_register_many (%s)" % ", ".join(failed[:8]) + (" ..." if len(failed) > 8 else ""))


Entry = Tuple[int, int, str]


class Registration:
    """A registration that is unregistered when the `with` block ends (or on unregister())."""

    def __init__(self, monitor: "Monitor", registration_id: int) -> None:
        self.monitor = monitor
        self.id = registration_id
        self._active = True

    def unregister(self) -> None:
        """Unregisters now; raises VramMonitorError if it was already removed."""
        if not self._active:
            raise VramMonitorError(Result.UNKNOWN_REGISTRATION, "Registration.unregister (already unregistered)")
        self._active = False
        self.monitor.unregister(self.id)

    def __enter__(self) -> "Registration":
        return self

    def __exit__(self, *exc: Any) -> "Literal[False]":
        if self._active:
            self._active = False
            try:
                self.monitor.unregister(self.id)
            except VramMonitorError:
                pass  # the monitor was closed meanwhile: nothing is left to unregister
        return False

    def __repr__(self) -> str:
        return "Registration(id=%d%s)" % (self.id, "" if self._active else ", unregistered")


class Monitor(SealingMethods, OutputMethods):
    """A monitor and its background thread. A context manager: leaving the block (or close())
    stops and joins the thread; no callback runs afterwards.

    Every method may be called from any thread, also while another thread closes the monitor:
    a call that begins after close() began raises MonitorClosed (the library answers CLOSED;
    its handle stays valid to call, so no call can reach freed memory). The monitor is also
    closed when collected, and every live monitor is closed at interpreter exit.
    A Monitor cannot be copied or pickled (TypeError): it owns its C monitor."""

    def __init__(self, interval_ms: int = 60_000) -> None:
        lib = _native.library()
        handle = ctypes.c_void_p()
        interval = _native.u32(interval_ms, "interval_ms")
        self._state = _CLOSED  # until the C monitor exists: __del__ must not free anything
        self._state_cond = threading.Condition(threading.Lock())
        check(lib.vram_monitor_new(interval, ctypes.byref(handle)), "vram_monitor_new")
        self._lib = lib
        # The handle is kept as an int for ever: after free the library keeps a tombstone that
        # answers CLOSED, so a call racing close() is safe without a Python-side lock around it.
        self._handle: int = int(handle.value or 0)
        self._state = _OPEN
        lifecycle.track(self)

    # -- lifetime --

    @property
    def closed(self) -> bool:
        """Whether close() has begun (calls now raise MonitorClosed)."""
        return self._state != _OPEN

    def _h(self, what: str) -> ctypes.c_void_p:
        if self._state != _OPEN:
            raise MonitorClosed(what)
        return ctypes.c_void_p(self._handle)

    def close(self) -> None:
        """Stops the monitor thread and frees the monitor (idempotent; safe from any thread,
        concurrently with other calls, which then raise MonitorClosed). Waits for a callback in
        progress. From inside one of its own callbacks it raises VramMonitorError
        (CALLED_FROM_CALLBACK) and the monitor stays open; a second close() running while
        the first frees waits for it (except on the monitor thread, where it returns)."""
        with self._state_cond:
            while self._state == _CLOSING:
                if events.in_callback():
                    return
                self._state_cond.wait()
            if self._state == _CLOSED:
                return
            self._state = _CLOSING
        code = Result.PANIC
        try:
            code = self._lib.vram_monitor_free(ctypes.c_void_p(self._handle))
        finally:
            with self._state_cond:
                # Refused on the monitor thread: still open. Anything else (OK, CLOSED, FORKED)
                # means the handle is gone.
                self._state = _OPEN if code == Result.CALLED_FROM_CALLBACK else _CLOSED
                self._state_cond.notify_all()
        if code == Result.CALLED_FROM_CALLBACK:
            raise VramMonitorError(code, "vram_monitor_free (from inside a callback; close it from another thread)")

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> "Literal[False]":
        self.close()
        return False

    def __del__(self) -> None:
        # Collected while open (possibly on the monitor thread, inside a callback, where the
        # library refuses to free): the close is handed to a closer thread rather than dropped.
        try:
            if getattr(self, "_state", _CLOSED) == _OPEN:
                self._state = _CLOSED
                lifecycle.free_now_or_elsewhere(self._handle)
        except Exception:  # noqa: BLE001 - a finaliser must not raise
            pass

    def __copy__(self) -> "Monitor":
        raise TypeError("a Monitor owns its C monitor and cannot be copied; share the object instead")

    def __deepcopy__(self, memo: Dict[int, Any]) -> "Monitor":
        raise TypeError("a Monitor owns its C monitor and cannot be copied; share the object instead")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a Monitor cannot be pickled: it owns a C monitor and a thread of this process")

    def __repr__(self) -> str:
        return "Monitor(%s)" % ("closed" if self.closed else "open")

    # -- registrations --

    def register(self, buffer: Any, label: str, nbytes: Optional[int] = None, *, seal: bool = False) -> int:
        """Checks the memory at once and registers it if it is resident; returns the id.

        `buffer` is a torch tensor, a CuPy array, anything with `__cuda_array_interface__`,
        a `(ptr, nbytes)` pair, or an integer address with `nbytes`. Memory that is not
        resident raises VramMonitorError with `.refused` true and `.verdict` saying why.
        Pointers and sizes outside [0, 2**64) raise ValueError (never wrapped)."""
        ptr, size = buffer_range(buffer) if nbytes is None else (buffer, nbytes)
        ptr = _native.u64(ptr, "ptr")
        size = _native.u64(size, "nbytes")
        name = "vram_monitor_register_sealed" if seal else "vram_monitor_register"
        what = "%s(%r)" % (name, label)
        out = ctypes.c_uint64()
        if seal:
            code = self._lib.vram_monitor_register_sealed(self._h(what), ctypes.c_void_p(ptr), size, _label(label), ctypes.byref(out))
        else:
            code = self._lib.vram_monitor_register(self._h(what), ctypes.c_void_p(ptr), size, _label(label), ctypes.byref(out))
        check(code, what)
        return out.value

    def register_many(self, entries: Iterable[Tuple[int, int, str]], *, all_or_nothing: bool = True) -> List[int]:
        """Registers `(ptr, nbytes, label)` entries in one call (vram_monitor_register_many:
        one driver query per distinct allocation); returns their ids in order. If any entry
        fails, raises EntriesFailed with a code per entry; with `all_or_nothing` (the default)
        nothing was registered, otherwise the entries that succeeded stay registered (their
        ids in `.ids`). With a library older than register_many, entries are registered one
        by one with the same outcome."""
        items: List[Entry] = []
        for ptr, size, label in entries:
            items.append((_native.u64(ptr, "ptr"), _native.u64(size, "nbytes"), label))
        labels = [_label(label) for _, _, label in items]
        if not items:
            return []
        if _native.has(self._lib, "vram_monitor_register_many"):
            return self._register_many_native(items, labels, all_or_nothing)
        return self._register_many_loop(items, all_or_nothing)

    def _register_many_native(self, items: List[Entry], labels: List[bytes], all_or_nothing: bool) -> List[int]:
        n = len(items)
        regions = (_native.VramMonitorRegion * n)()
        for i, (ptr, size, _) in enumerate(items):
            regions[i].ptr = ptr
            regions[i].size = size
            regions[i].label = labels[i]
        ids = (ctypes.c_uint64 * n)()
        results = (ctypes.c_int32 * n)()
        flags = _native.REGISTER_ALL_OR_NOTHING if all_or_nothing else 0
        what = "vram_monitor_register_many"
        code = self._lib.vram_monitor_register_many(self._h(what), regions, n, flags, ids, results, None)
        if code == Result.ENTRIES_FAILED:
            raise EntriesFailed([enum_or_int(Result, r) for r in results], list(ids), [lbl for _, _, lbl in items])
        check(code, what)
        return list(ids)

    def _register_many_loop(self, items: List[Entry], all_or_nothing: bool) -> List[int]:
        ids: List[int] = []
        results: List[Union[Result, int]] = []
        for ptr, size, label in items:
            try:
                ids.append(self.register(ptr, label, nbytes=size))
                results.append(Result.OK)
            except MonitorClosed:
                self._unregister_quietly(ids)
                raise
            except VramMonitorError as e:
                ids.append(0)
                results.append(e.code)
                if all_or_nothing:
                    break
        if any(r != Result.OK for r in results):
            if all_or_nothing:
                self._unregister_quietly(ids)
                results += [Result.OK] * (len(items) - len(results))
                raise EntriesFailed(results, [0] * len(items), [lbl for _, _, lbl in items])
            raise EntriesFailed(results, ids, [lbl for _, _, lbl in items])
        return ids

    def _unregister_quietly(self, ids: Iterable[int]) -> None:
        for rid in ids:
            if rid:
                try:
                    self.unregister(rid)
                except VramMonitorError:
                    pass

    def guard(self, buffer: Any, label: str, nbytes: Optional[int] = None) -> Registration:
        """register(), returned as a Registration for a `with` block."""
        return Registration(self, self.register(buffer, label, nbytes))

    def watch(self, source: Any, *, prefix: str = "", seal: bool = False) -> "Watch":
        """Registers every tensor of `source` in one call and returns a Watch (a context
        manager) that unregisters them together. `source` is a torch.nn.Module (its
        parameters and buffers, labelled by qualified name), a state dict (name -> tensor),
        or CuPy arrays / CUDA-array-interface objects in a dict or list. Storages shared by
        several tensors (tied weights) are registered once. Meta and CPU tensors are refused
        with a ValueError naming them, before anything is registered. `seal=True` also seals
        every one (content integrity must be enabled for their device: enable_integrity());
        if a seal fails, everything this call registered is unregistered and the error raised.
        Seal weights only, never a KV cache or activations."""
        from .watch import watch

        return watch(self, source, prefix=prefix, seal=seal)

    def unregister(self, registration_id: int) -> None:
        """Stops watching a registration; UNKNOWN_REGISTRATION if it is not (or no longer) one."""
        rid = _native.u64(registration_id, "registration_id")
        what = "vram_monitor_unregister"
        check(self._lib.vram_monitor_unregister(self._h(what), rid), what)

    def registration(self, registration_id: int) -> Optional[RegistrationInfo]:
        """One registration's state now (verdict, pieces, label), or None if unknown. Uses the
        direct lookup (vram_monitor_registration); with a library older than it, the JSON
        report (pieces then reads 0)."""
        rid = _native.u64(registration_id, "registration_id")
        if not _native.has(self._lib, "vram_monitor_registration"):
            return self._registration_from_report(rid)
        what = "vram_monitor_registration"
        buf, info = _native.out_struct(_native.VramMonitorRegistrationInfo)
        needed = ctypes.c_size_t(0)
        code = self._lib.vram_monitor_registration(self._h(what), rid, ctypes.addressof(buf), None, 0, ctypes.byref(needed))
        if code == Result.UNKNOWN_REGISTRATION:
            return None
        check(code, what)
        label = ""
        for _ in range(4):
            size = max(int(needed.value), 1)
            label_buf = ctypes.create_string_buffer(size)
            code = self._lib.vram_monitor_registration(self._h(what), rid, ctypes.addressof(buf), label_buf, size, ctypes.byref(needed))
            if code == Result.BUFFER_TOO_SMALL:
                continue  # the label cannot change, but be safe against a size race
            if code == Result.UNKNOWN_REGISTRATION:
                return None
            check(code, what)
            label = label_buf.value.decode("utf-8", "replace")
            break
        return RegistrationInfo(
            id=info.id,
            ptr=info.ptr or 0,
            size=info.size,
            device=info.device,
            verdict=enum_or_int(Verdict, info.verdict),
            pieces=info.pieces,
            label=label,
            check_failing=bool(info.check_failing),
        )

    def _registration_from_report(self, rid: int) -> Optional[RegistrationInfo]:
        for r in self.report_json().get("registrations", []):
            if r.get("id") == rid:
                name = r.get("verdict")
                verdict: Union[Verdict, int] = Verdict[name] if name in Verdict.__members__ else -1
                ptr = r.get("ptr", 0)
                return RegistrationInfo(
                    id=rid,
                    ptr=int(ptr, 16) if isinstance(ptr, str) else int(ptr),
                    size=int(r.get("size", 0)),
                    device=int(r.get("device", -1)),
                    verdict=verdict,
                    pieces=0,
                    label=str(r.get("label", "")),
                )
        return None

    def verdict(self, registration_id: int) -> Optional[Union[Verdict, int]]:
        """The last verdict of a registration, or None if unknown (direct lookup)."""
        info = self.registration(registration_id)
        return None if info is None else info.verdict

    # -- callbacks and settings --

    def set_callback(self, handler: Optional[events.EventHandler], on_error: Optional[events.ErrorHandler] = None) -> None:
        """Sets `handler(event)` (an Event) to receive events on the monitor thread; None
        removes it. What it raises goes to `on_error(exc_type, exc, tb)` (default: a traceback
        on stderr). Closing the monitor from inside it raises; drop the last reference instead,
        or close from another thread."""
        what = "vram_monitor_set_callback"
        if handler is None:
            check(self._lib.vram_monitor_set_callback(self._h(what), _native.EVENT_CALLBACK(), None, events.RELEASE_THUNK), what)
            return
        handle = self._h(what)
        thunk = events.make_thunk(handler, on_error)
        key = events.keep(thunk)
        code = self._lib.vram_monitor_set_callback(handle, thunk, ctypes.c_void_p(key), events.RELEASE_THUNK)
        if code != Result.OK:
            events.release(key)
            check(code, what)

    def set_interval_ms(self, interval_ms: int) -> None:
        """Changes the interval between full checks (ms, 1 .. 2**32 - 1)."""
        what = "vram_monitor_set_interval_ms"
        check(self._lib.vram_monitor_set_interval_ms(self._h(what), _native.u32(interval_ms, "interval_ms")), what)

    def set_pacing(self, slice_queries: int = 256, pause_us: int = 50) -> None:
        """How a check paces its driver queries: after every `slice_queries` queries it pauses
        `pause_us` µs (0: only yields). Defaults are the library's."""
        what = "vram_monitor_set_pacing"
        check(
            self._lib.vram_monitor_set_pacing(
                self._h(what), _native.u32(slice_queries, "slice_queries"), _native.u32(pause_us, "pause_us")
            ),
            what,
        )

    # -- checks and state --

    def check_now(self) -> CheckSummary:
        """Runs a full check now and waits for it (callbacks run before it returns)."""
        what = "vram_monitor_check_now"
        buf, summary = _native.out_struct(_native.VramMonitorCheckSummary)
        check(self._lib.vram_monitor_check_now(self._h(what), ctypes.addressof(buf)), what)
        return CheckSummary._from_c(summary)

    def health(self) -> Health:
        """The health snapshot (cheap: no driver query)."""
        what = "vram_monitor_health"
        buf, h = _native.out_struct(_native.VramMonitorHealth)
        check(self._lib.vram_monitor_health(self._h(what), ctypes.addressof(buf)), what)
        return Health._from_c(h)

    def stall(self) -> Stall:
        """The stall state (cheap: no driver query)."""
        what = "vram_monitor_stall"
        buf, st = _native.out_struct(_native.VramMonitorStall)
        check(self._lib.vram_monitor_stall(self._h(what), ctypes.addressof(buf)), what)
        return Stall._from_c(st)

    def set_stall_limits(self, deadline_ms: int = 30_000, grace_ms: int = 30_000) -> None:
        """When the monitor counts as stalled: a check making no progress for `deadline_ms`,
        or no completed check for the interval plus `grace_ms` (the defaults are the
        library's). A stall makes the health unhealthy; the HEALTH_CHANGED events it sends run
        the callback on the watchdog thread ("vram-monitor-watchdog")."""
        what = "vram_monitor_set_stall_limits"
        check(
            self._lib.vram_monitor_set_stall_limits(
                self._h(what), _native.u64(deadline_ms, "deadline_ms"), _native.u64(grace_ms, "grace_ms")
            ),
            what,
        )


def _label(label: Any) -> bytes:
    if not isinstance(label, str):
        raise TypeError("label must be a str, not %s" % type(label).__name__)
    return label.encode("utf-8")
