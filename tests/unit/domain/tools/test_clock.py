"""The current_time tool: the clock's time, in UTC or a named zone."""

from datetime import UTC, datetime

import pytest

from domain.context import UserExecutionContext
from domain.errors import ToolError
from domain.tools.clock import CurrentTime
from tests.fakes import FixedClock

NOW = datetime(2026, 11, 21, 14, 3, 27, tzinfo=UTC)
CONTEXT = UserExecutionContext(user_id="u_alice", thread_id="t_1", run_id="r_1",
                               request_id="req_1", created_at=NOW)


async def test_defaults_to_utc() -> None:
    result = await CurrentTime(FixedClock(NOW))(CONTEXT, {})
    assert result == {"iso": "2026-11-21T14:03:27+00:00", "timezone": "UTC",
                      "human": "14:03 on Saturday, 21 November 2026"}


async def test_converts_to_a_named_zone() -> None:
    result = await CurrentTime(FixedClock(NOW))(CONTEXT, {"timezone": "Asia/Tokyo"})
    assert result["iso"] == "2026-11-21T23:03:27+09:00"
    assert result["timezone"] == "Asia/Tokyo"
    assert result["human"] == "23:03 on Saturday, 21 November 2026"


async def test_follows_the_clock() -> None:
    clock = FixedClock(NOW)
    tool = CurrentTime(clock)
    clock.advance(3600 * 10)
    assert (await tool(CONTEXT, {}))["human"] == "00:03 on Sunday, 22 November 2026"


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "x" * 100]
)
async def test_refuses_an_unknown_zone(zone: str) -> None:
    with pytest.raises(ToolError, match="time zone"):
        await CurrentTime(FixedClock(NOW))(CONTEXT, {"timezone": zone})
