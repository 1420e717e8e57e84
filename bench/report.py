"""The results file: markdown printed as it is written, tables, verdicts, the machine."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        self.say("| " + " | ".join(header) + " |")
        self.say("| " + " | ".join("---" for _ in header) + " |")
        for row in rows:
            self.say("| " + " | ".join(str(cell) for cell in row) + " |")
        self.say()

    def skipped(self, why: str | None) -> bool:
        """Say why a section cannot run here (and return True), or return False when it can."""
        if why:
            self.say(f"Skipped: {why}.")
            self.say()
        return bool(why)

    def write(self, path: str) -> None:
        Path(path).write_text("\n".join(self.lines) + "\n")


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release()}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def la(values: Iterable[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")
