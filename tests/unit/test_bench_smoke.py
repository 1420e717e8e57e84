"""The bench's in-process parts still run against the code as it is (a bench that rots is found
here, not at the next `make bench`); the bench's numbers are never checked in a test."""

from __future__ import annotations

from bench.engine_bench import _measure
from bench.stream_load import main as stream_load_main  # noqa: F401 - it imports


async def test_the_engine_micro_benchmark_creates_and_cleans_up_engines() -> None:
    result = await _measure(active=8, iterations=20)
    assert result["active"] == 8 and result["iterations"] == 20
