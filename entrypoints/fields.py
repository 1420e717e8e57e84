"""Field types whose rule is the same for HTTP bodies and WebSocket frames, written once."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictBool, StrictStr

from container.settings import LimitsSettings
from domain.approval_policy import Remember

MAX_ID_CHARS = 128
# At least one character that is not white space (JSON Schema patterns match anywhere in the string).
NOT_BLANK = r"\S"

# Ids are opaque: any string a client was given or chose (a client_message_id), bounded so a key
# of the database or of a log line stays small.
Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)]

# Blank and too long (limits.max_message_chars) are the domain's to refuse, with its own codes and words
# (invalid_message, message_too_large): the schema only shows the rules, with the setting's default.
def message_rules() -> dict[str, Any]:
    return {"minLength": 1, "maxLength": LimitsSettings.model_fields["max_message_chars"].default,
            "pattern": NOT_BLANK}


MessageText = Annotated[StrictStr, Field(description="Not blank; at most limits.max_message_chars "
                                                     "characters.", json_schema_extra=message_rules())]


MAX_REASON_CHARS = 1000


class ApprovalFields(BaseModel):
    """A person's decision on a tool call: the `approval` frame and POST /api/runs/{run_id}/approvals."""

    tool_call_id: Id
    approve: StrictBool
    reason: Annotated[StrictStr, Field(max_length=MAX_REASON_CHARS)] | None = None
    remember: Remember | None = Field(None, description="With approve: answer yes for this tool from now "
                                      "on, in this thread ('thread') or everywhere ('always').")
