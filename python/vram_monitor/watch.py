"""Monitor.watch(): every tensor of a model (or state dict, or list of arrays) in one call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Literal, Mapping, Tuple

from . import _native
from .results import VramMonitorError
from .tensors import cuda_array_interface_range, cupy_range

if TYPE_CHECKING:  # pragma: no cover
    from .monitor import Monitor

__all__ = ["Watch", "collect"]


class Watch:
    """What one watch() registered: `ids` by label (`labels`), `aliases` (names of tensors
    that share a registered storage, by the label it was registered under). A context
    manager: leaving the block (or close()) unregisters them together."""

    def __init__(self, monitor: "Monitor", labels: List[str], ids: List[int], aliases: Dict[str, List[str]]) -> None:
        self.monitor = monitor
        self.labels = labels
        self.ids = ids
        self.aliases = aliases
        self._active = True

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Tuple[str, int]]:
        return iter(zip(self.labels, self.ids))

    def close(self) -> None:
        """Unregisters every registration of this watch (idempotent; after the monitor was
        closed there is nothing left to unregister)."""
        if not self._active:
            return
        self._active = False
        for rid in self.ids:
            try:
                self.monitor.unregister(rid)
            except VramMonitorError:
                pass  # closed monitor, or unregistered by hand meanwhile

    unregister = close

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: Any) -> "Literal[False]":
        self.close()
        return False

    def __repr__(self) -> str:
        return "Watch(%d registrations%s)" % (len(self.ids), "" if self._active else ", unregistered")


def _named_tensors(source: Any, prefix: str) -> List[Tuple[str, Any]]:
    if hasattr(source, "named_parameters") and hasattr(source, "named_buffers"):
        # A torch.nn.Module. named_parameters() already drops a Parameter listed twice (tied
        # modules); tensors that only share a storage are merged below.
        named = list(source.named_parameters(prefix=prefix.rstrip("."))) if prefix else list(source.named_parameters())
        named += list(source.named_buffers(prefix=prefix.rstrip("."))) if prefix else list(source.named_buffers())
        return [(n, t) for n, t in named if t is not None]
    if isinstance(source, Mapping):
        return [(prefix + str(k), v) for k, v in source.items()]
    if isinstance(source, (list, tuple)):
        return [(prefix + str(i), v) for i, v in enumerate(source)]
    raise TypeError(
        "watch() takes a torch.nn.Module, a state dict (name -> tensor), or arrays in a dict or "
        "list, not %s" % type(source).__name__
    )


def _device_type(t: Any) -> str:
    device = getattr(t, "device", None)
    return str(getattr(device, "type", device)) if device is not None else ""


def _range_of(name: str, t: Any, problems: List[str]) -> Tuple[int, int]:
    """The range to register for one tensor (its whole storage for torch, so views and tied
    weights collapse), or (0, 0) after noting why it cannot be registered."""
    device = _device_type(t)
    if device == "meta" or getattr(t, "is_meta", False):
        problems.append("%s (meta tensor: no memory)" % name)
        return 0, 0
    if hasattr(t, "untyped_storage") and hasattr(t, "device"):
        if device != "cuda":
            problems.append("%s (on %s, not CUDA)" % (name, device or "an unknown device"))
            return 0, 0
        storage = t.untyped_storage()
        return int(storage.data_ptr()), int(storage.nbytes())
    module = type(t).__module__ or ""
    if module.startswith("cupy") and hasattr(t, "data") and hasattr(t, "nbytes"):
        return cupy_range(t)
    if hasattr(t, "__cuda_array_interface__"):
        return cuda_array_interface_range(t)
    if hasattr(t, "data_ptr") and hasattr(t, "nbytes"):
        if device not in ("", "cuda"):
            problems.append("%s (on %s, not CUDA)" % (name, device))
            return 0, 0
        nbytes = t.nbytes() if callable(t.nbytes) else t.nbytes
        return int(t.data_ptr()), int(nbytes)
    problems.append("%s (%s: not a CUDA tensor or array)" % (name, type(t).__name__))
    return 0, 0


def collect(source: Any, prefix: str = "") -> Tuple[List[Tuple[int, int, str]], Dict[str, List[str]]]:
    """The (ptr, nbytes, label) entries for `source`, one per distinct range, and the aliases
    merged into each. Raises ValueError naming every tensor that cannot be registered."""
    entries: List[Tuple[int, int, str]] = []
    aliases: Dict[str, List[str]] = {}
    first_label: Dict[Tuple[int, int], str] = {}
    problems: List[str] = []
    for name, t in _named_tensors(source, prefix):
        before = len(problems)
        ptr, size = _range_of(name, t, problems)
        if len(problems) > before:
            continue
        if size == 0:
            problems.append("%s (no elements)" % name)
            continue
        if not (0 <= ptr < 1 << 64 and 0 <= size < 1 << 64):
            # Raises ValueError naming the tensor (the message is built only when needed).
            _native.u64(ptr, "%s: ptr" % name)
            _native.u64(size, "%s: nbytes" % name)
        key = (ptr, size)
        if key in first_label:
            aliases.setdefault(first_label[key], []).append(name)
            continue
        first_label[key] = name
        entries.append((ptr, size, name))
    if problems:
        raise ValueError("watch(): cannot register %d tensor(s), nothing registered: %s" % (len(problems), "; ".join(problems)))
    return entries, aliases


def watch(monitor: "Monitor", source: Any, *, prefix: str = "", seal: bool = False) -> Watch:
    """See Monitor.watch."""
    entries, aliases = collect(source, prefix)
    ids = monitor.register_many(entries, all_or_nothing=True)
    if seal:
        # Nothing half-done: a seal that fails (integrity not enabled for the device, memory
        # gone, the kernel failed) unregisters every tensor of this call before raising.
        try:
            for rid in ids:
                monitor.seal(rid)
        except BaseException:
            for rid in ids:
                try:
                    monitor.unregister(rid)
                except Exception:
                    pass
            raise
    return Watch(monitor, [label for _, _, label in entries], ids, aliases)
