"""Requests aiohttp's own parser refuses (a NUL in a header, a broken request line): its 400 stands,
and the log gets one line instead of a traceback, as a client's garbage is no error of the server's."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

_SERVER_LOG = logging.getLogger("aiohttp.server")


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "unknown"
            reason = (str(exc.message).strip().splitlines() or [type(exc).__name__])[0]
            record.msg, record.args = "refused a malformed request from %s (%s): %s", (peer, exc.code, reason)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def log_parser_errors_in_one_line() -> None:
    """Installed once per process, whatever number of apps it builds."""
    if not any(isinstance(each, _OneLine) for each in _SERVER_LOG.filters):
        _SERVER_LOG.addFilter(_OneLine())
