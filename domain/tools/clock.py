"""The current_time tool: the clock's time in any IANA time zone."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from domain.context import UserExecutionContext
from domain.errors import ToolError
from domain.llm import ToolSpec
from domain.ports import Clock

# Spelled out rather than strftime's %A and %B, which follow the process locale.
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_UTC_NAMES = frozenset({"utc", "z", "gmt", "etc/utc", "zulu"})


def human_time(moment: datetime) -> str:
    """'14:03 on Saturday, 21 November 2026'."""
    return (f"{moment:%H:%M} on {_DAYS[moment.weekday()]}, "
            f"{moment.day} {_MONTHS[moment.month - 1]} {moment.year}")


def _zone(name: str) -> tuple[str, tzinfo]:
    name = name.strip()
    if not name or name.lower() in _UTC_NAMES:
        return "UTC", UTC
    if len(name) > 64:
        raise ToolError("a time zone name is at most 64 characters")
    try:
        return name, ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(
            f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris'"
        ) from None


class CurrentTime:
    """Tells the current date and time, in UTC unless a time zone is given."""

    idempotent = True

    spec = ToolSpec(
        name="current_time",
        description="The current date and time, in UTC or in the given IANA time zone.",
        parameters={
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "An IANA time zone such as 'Europe/Paris'; UTC if omitted.",
                }
            },
            "additionalProperties": False,
        },
    )

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def __call__(
        self, context: UserExecutionContext, arguments: Mapping[str, Any], *, call_key: str = ""
    ) -> dict[str, str]:
        requested = arguments.get("timezone") or "UTC"
        if not isinstance(requested, str):
            raise ToolError("timezone must be a string")
        name, zone = _zone(requested)
        now = self._clock.now()
        if now.tzinfo is None:  # a clock should be aware; a naive one is taken to mean UTC
            now = now.replace(tzinfo=UTC)
        local = now.astimezone(zone)
        return {"iso": local.isoformat(timespec="seconds"), "timezone": name,
                "human": human_time(local)}
