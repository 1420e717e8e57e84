"""The save_note and search_notes tools: each user's own memory, keyed by the run's context."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domain.context import UserExecutionContext
from domain.entities import Note
from domain.errors import ToolError
from domain.llm import ToolSpec
from domain.ports import Clock, IdGenerator, NoteRepository

MAX_NOTE_CHARS = 2000
MAX_QUERY_CHARS = 200
SEARCH_LIMIT = 5


def _text_argument(arguments: Mapping[str, Any], name: str, limit: int) -> str:
    value = arguments.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f"{name} must be a non-empty string")
    value = value.strip()
    if len(value) > limit:
        raise ToolError(f"{name} is longer than {limit} characters")
    return value


def _spec(name: str, description: str, argument: str, argument_description: str) -> ToolSpec:
    # No user id among the arguments, and no room for one: the toolbox refuses unknown arguments.
    return ToolSpec(
        name=name,
        description=description,
        parameters={
            "type": "object",
            "properties": {argument: {"type": "string", "description": argument_description}},
            "required": [argument],
            "additionalProperties": False,
        },
    )


class SaveNote:
    """Saves a fact the user asked to be remembered, for that user only.

    Idempotent by its call: the same call run again (after a takeover) stores nothing twice.
    """

    idempotent = True

    spec = _spec("save_note", "Remember a fact for the user, to be found later with search_notes.",
                 "text", "The fact to remember, in the user's words.")

    def __init__(self, notes: NoteRepository, ids: IdGenerator, clock: Clock) -> None:
        self._notes = notes
        self._ids = ids
        self._clock = clock

    async def __call__(
        self, context: UserExecutionContext, arguments: Mapping[str, Any], *, call_key: str = ""
    ) -> dict[str, Any]:
        text = _text_argument(arguments, "text", MAX_NOTE_CHARS)
        note = Note(id=self._ids.new_id("note"), user_id=context.user_id, text=text,
                    created_at=self._clock.now(), key=call_key or None)
        stored = await self._notes.add(note)
        return {"saved": True, "note_id": stored.id, "text": stored.text}


class SearchNotes:
    """Finds the user's own notes that match a query."""

    idempotent = True

    spec = _spec("search_notes", "Search the facts the user asked you to remember.",
                 "query", "Words to look for, e.g. 'locker code'.")

    def __init__(self, notes: NoteRepository) -> None:
        self._notes = notes

    async def __call__(
        self, context: UserExecutionContext, arguments: Mapping[str, Any], *, call_key: str = ""
    ) -> dict[str, Any]:
        query = _text_argument(arguments, "query", MAX_QUERY_CHARS)
        found = await self._notes.search(context.user_id, query, limit=SEARCH_LIMIT)
        return {"notes": [{"text": note.text, "created_at": note.created_at.isoformat()}
                          for note in found]}


class DeleteNotes:
    """Deletes the user's own notes that match a query ("Forget my locker code").

    Asks its user first, by default (approvals.tools may say otherwise). Safe to run again after
    a takeover: a second run deletes what still matches, which the first already deleted.
    """

    idempotent = True
    approval = "ask"

    spec = _spec("delete_notes", "Delete the user's notes that match a query, when they ask you to forget "
                 "something. Their approval is asked first.", "query",
                 "Words of the notes to delete, e.g. 'locker code'.")

    def __init__(self, notes: NoteRepository) -> None:
        self._notes = notes

    async def __call__(
        self, context: UserExecutionContext, arguments: Mapping[str, Any], *, call_key: str = ""
    ) -> dict[str, Any]:
        query = _text_argument(arguments, "query", MAX_QUERY_CHARS)
        deleted = await self._notes.delete_matching(context.user_id, query)
        return {"deleted": len(deleted), "notes": [note.text for note in deleted]}
