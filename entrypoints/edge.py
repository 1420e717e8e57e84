"""The edge policy: the one check of every text and JSON document a client sends, however it comes in.

Text is valid Unicode without NUL: PostgreSQL stores no NUL, and a lone surrogate (a JSON escape
such as "\\ud800" decodes to one in Python) cannot be encoded to store, log or send. JSON nests at
most MAX_JSON_DEPTH deep; its size is bounded before it gets here (server.max_body_bytes,
server.ws_max_frame_bytes). Broken JSON is `invalid_json`, broken text `invalid_message`, whether it
came in a body, a frame, a path, a query or a header.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from entrypoints.errors import ApiError

MAX_JSON_DEPTH = 32
# The headers a handler reads as text (X-Request-ID has a pattern of its own; Origin is only compared).
READ_HEADERS = ("Authorization", "Last-Event-ID")


def check_text(text: str, where: str) -> str:
    """The text itself, or ApiError (invalid_message) naming `where` it was."""
    if "\x00" in text or (not text.isascii() and not _encodable(text)):
        raise ApiError("invalid_message", f"{where} must be valid Unicode text, without NUL characters "
                                          "or lone surrogates.")
    return text


def check_texts(pairs: Iterable[tuple[str, str]], kind: str) -> None:
    """Names and values, as of a query string or a path: each passes check_text."""
    for name, value in pairs:
        check_text(name, f"a {kind} name")
        check_text(value, f"{kind} '{name}'")


def plain(raw: str) -> bool:
    """True when `raw`, if it is JSON, cannot break the policy, so a parser that does not check may read it.

    Decoded JSON holds a NUL or a lone surrogate only by way of a \\u escape (raw control characters
    are not JSON), and it cannot nest deeper than it has opening brackets.
    """
    return "\\u" not in raw and raw.count("[") + raw.count("{") <= MAX_JSON_DEPTH


def load_json(raw: str | bytes, what: str) -> Any:
    """JSON text (bytes: UTF-8) as Python values, every string of it (keys too) checked; `what` names
    the document in the messages ("The request body", "That frame")."""
    try:
        value = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except RecursionError:
        raise _too_deep(what) from None
    except ValueError:  # bad JSON, bad UTF-8, an integer of thousands of digits
        raise ApiError("invalid_json", f"{what} is not valid JSON (UTF-8).") from None
    _check_document(value, what)
    return value


def _too_deep(what: str) -> ApiError:
    return ApiError("invalid_json", f"{what} nests deeper than {MAX_JSON_DEPTH} levels.")


def _check_document(document: Any, what: str) -> None:
    # A loop, not recursion: the depth is what is being checked.
    pending: list[tuple[Any, int, str]] = [(document, 0, "")]
    while pending:
        value, depth, where = pending.pop()
        if isinstance(value, str):
            check_text(value, f"'{where}'" if where else what)
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise _too_deep(what)
            if isinstance(value, list):
                pending.extend((item, depth + 1, f"{where}[{index}]") for index, item in enumerate(value))
                continue
            for key, item in value.items():
                check_text(key, f"a field name in {what.lower()}")
                pending.append((item, depth + 1, f"{where}.{key}" if where else key))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
