"""Request bodies of the HTTP API (responses are plain JSON built by the handlers)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from domain.lanes import Multitask


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: StrictStr = Field(max_length=64)
    password: StrictStr = Field(max_length=1024)


class ChatMessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: StrictStr
    thread_id: StrictStr | None = Field(None, max_length=128)
    client_message_id: StrictStr | None = Field(None, min_length=1, max_length=128)
    multitask: Multitask = Multitask.ENQUEUE
    wait: StrictBool = False
