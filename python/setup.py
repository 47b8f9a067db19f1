"""Builds libvram_monitor (crates/libvram-monitor, the C ABI's library crate of the workspace one
folder up) with cargo and puts it in the package as
vram_monitor/_libvram_monitor*.so; vram_monitor/_native.py loads that copy first.

The wheel is tagged py3-none-<platform>: the library is loaded with ctypes, not imported as an
extension module, so it works with any Python 3 on that platform (its file name keeps the
building interpreter's suffix; the loader looks for _libvram_monitor*.so)."""

import os

from setuptools import setup
from setuptools_rust import Binding, RustExtension

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]

HERE = os.path.dirname(os.path.abspath(__file__))


class AnyPythonWheel(bdist_wheel):
    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    cmdclass={"bdist_wheel": AnyPythonWheel},
    rust_extensions=[
        RustExtension(
            "vram_monitor._libvram_monitor",
            path=os.path.join(os.path.dirname(HERE), "crates", "libvram-monitor", "Cargo.toml"),
            binding=Binding.NoBinding,
            debug=False,
        )
    ],
)
