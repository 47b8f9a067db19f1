"""Builds libvram_monitor (the crate one folder up) with cargo and puts it in the package as
vram_monitor/_libvram_monitor*.so; vram_monitor/_native.py loads that copy first."""

import os

from setuptools import setup
from setuptools_rust import Binding, RustExtension

HERE = os.path.dirname(os.path.abspath(__file__))

setup(
    rust_extensions=[
        RustExtension(
            "vram_monitor._libvram_monitor",
            path=os.path.join(os.path.dirname(HERE), "Cargo.toml"),
            binding=Binding.NoBinding,
            # The C library only: no Rust-API features are needed by ctypes.
            debug=False,
        )
    ],
)
