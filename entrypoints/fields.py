"""Field types whose rule is the same for HTTP bodies and WebSocket frames, written once."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictStr

MAX_ID_CHARS = 128

# Ids are opaque: any string a client was given or chose (a client_message_id), bounded so a key
# of the database or of a log line stays small.
Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)]

# Its length limit is a setting (limits.max_message_chars), so the domain checks it: message_too_large.
MessageText = Annotated[StrictStr, Field(description="At most limits.max_message_chars characters.")]
