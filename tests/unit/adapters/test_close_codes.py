"""docs/protocol.md's close-code table names every code of CloseCode, and no code it doesn't."""

from __future__ import annotations

import re
from pathlib import Path

from adapters.close_codes import CloseCode

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


def test_the_protocol_doc_lists_exactly_the_close_codes() -> None:
    table = DOC.read_text().split("| close code | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d{4}) \|", table, re.MULTILINE)}
    assert documented == set(CloseCode)
