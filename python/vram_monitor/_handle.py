"""What the Monitor's method groups share: the loaded library and the checked handle."""

from __future__ import annotations

import ctypes
from typing import Any


class HandleUser:
    """A group of Monitor methods: they call the library through the monitor's handle."""

    _lib: Any

    def _h(self, what: str) -> ctypes.c_void_p:
        """The C handle for a call named `what`; raises MonitorClosed once closed."""
        raise NotImplementedError  # Monitor provides it
