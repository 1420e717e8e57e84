"""The allocator setting the server makes at start: taken on glibc (the machines we run on)."""

from __future__ import annotations

import platform

from adapters.memory import return_large_buffers


def test_glibc_takes_the_mmap_threshold() -> None:
    libc, _ = platform.libc_ver()
    assert return_large_buffers() is (libc == "glibc")
