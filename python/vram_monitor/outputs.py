"""The Monitor's outputs: the GPUs' memory health, the report in text, JSON or Prometheus
format, and the built-in HTTP endpoint."""

from __future__ import annotations

import ctypes
import json
from typing import Any, Dict, List, Optional

from . import _native
from ._handle import HandleUser
from .health import DeviceHealth
from .results import Result, check

_REPORT_FORMATS = {
    "text": _native.REPORT_FORMAT_TEXT,
    "json": _native.REPORT_FORMAT_JSON,
    "prometheus": _native.REPORT_FORMAT_PROMETHEUS,
}


class OutputMethods(HandleUser):
    """Health, reports and the endpoint, mixed into Monitor."""

    def device_health(self) -> List[DeviceHealth]:
        """The memory health of each GPU that holds registrations, as of the last check."""
        what = "vram_monitor_device_health"
        count = ctypes.c_size_t(0)
        code = self._lib.vram_monitor_device_health(self._h(what), None, 0, ctypes.byref(count))
        for _ in range(16):
            if code != Result.BUFFER_TOO_SMALL:
                break
            capacity = int(count.value) + 4  # room for GPUs that gain registrations meanwhile
            array = (_native.VramMonitorDeviceHealth * capacity)()
            code = self._lib.vram_monitor_device_health(self._h(what), array, capacity, ctypes.byref(count))
            if code == Result.OK:
                return [DeviceHealth._from_c(array[i]) for i in range(int(count.value))]
        check(code, what)
        return []

    def report(self, format: str = "text") -> str:
        """The report as a string: format "text", "json" or "prometheus" (the text exposition
        format, version 0.0.4)."""
        if format not in _REPORT_FORMATS:
            raise ValueError("format must be 'text', 'json' or 'prometheus'")
        what = "vram_monitor_report"
        fmt = _REPORT_FORMATS[format]
        needed = ctypes.c_size_t(0)
        code = self._lib.vram_monitor_report(self._h(what), fmt, None, 0, ctypes.byref(needed))
        # The report can grow between the size query and the copy (other threads register):
        # room to spare, more on each try, so that a steady stream of registrations cannot
        # keep it from fitting.
        headroom = 4096
        for _ in range(16):
            if code != Result.BUFFER_TOO_SMALL:
                break
            size = needed.value + needed.value // 4 + headroom
            buf = ctypes.create_string_buffer(size)
            length = ctypes.c_size_t(0)
            code = self._lib.vram_monitor_report(self._h(what), fmt, buf, size, ctypes.byref(length))
            if code == Result.OK:
                return buf.raw[: length.value].decode("utf-8", "replace")
            needed = length
            headroom = min(headroom * 4, 1 << 24)
        check(code, what)
        return ""

    def report_json(self) -> Dict[str, Any]:
        """The JSON report, parsed: {"health": {...}, "registrations": [...]}."""
        return dict(json.loads(self.report("json")))

    # -- the built-in HTTP endpoint --

    def serve_http(self, address: Optional[str] = None) -> int:
        """Starts the built-in endpoint (GET /health: 200 or 503 with JSON; GET /metrics:
        Prometheus) on `address` ("PORT", "localhost:PORT", or an IP literal with a port;
        None: "127.0.0.1:9464"); returns the port it listens on (useful with port 0). Its
        threads stop on stop_http() or close()."""
        what = "vram_monitor_serve_http"
        port = ctypes.c_uint16(0)
        encoded = None if address is None else address.encode("utf-8")
        check(self._lib.vram_monitor_serve_http(self._h(what), encoded, ctypes.byref(port)), what)
        return int(port.value)

    def stop_http(self) -> None:
        """Stops the built-in endpoint, if it serves, and joins its threads."""
        what = "vram_monitor_stop_http"
        check(self._lib.vram_monitor_stop_http(self._h(what)), what)
