"""What the client's one inbox holds: server frames, a Fatal that ends the client, or a Signal.

Every part (the socket reader, the keyboard, Ctrl-C) puts into the same queue, so the run and the
prompt wait on one thing and see events in the order they happened.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

Frame = dict[str, Any]
Inbox = asyncio.Queue[Any]


class Fatal(Exception):
    """The client cannot go on: a one-line reason for stderr and exit code 2."""


class Signal(enum.Enum):
    """What the inbox holds besides server frames and a Fatal."""

    INTERRUPT = "Ctrl-C"
    TYPED = "stdin has a line or ended"
