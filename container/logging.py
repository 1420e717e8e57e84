"""Logging: loguru everywhere; the domain's stdlib logging is routed into it."""

from __future__ import annotations

import logging
import sys

from loguru import logger

from container.settings import LogSettings


class _InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(settings: LogSettings, *, production: bool) -> None:
    json_lines = production if settings.json_lines is None else settings.json_lines
    logger.remove()
    logger.add(sys.stderr, level=settings.level.upper(), serialize=json_lines, backtrace=False,
               diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    for noisy in ("aiohttp.access", "aiosqlite", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
