"""The notes tools: a user's memory is keyed by the run's context, never by the model."""

from datetime import UTC, datetime

import pytest

from domain.context import UserExecutionContext
from domain.errors import ToolError
from domain.tools import builtin_tools
from domain.tools.notes import SaveNote, SearchNotes
from tests.fakes import FixedClock, InMemoryNoteRepository, SequentialIds, toolbox

NOW = datetime(2026, 11, 21, 14, 3, tzinfo=UTC)


def context_for(user_id: str) -> UserExecutionContext:
    return UserExecutionContext(user_id=user_id, thread_id="t_1", run_id="r_1",
                                request_id="req_1", created_at=NOW)


@pytest.fixture
def notes() -> InMemoryNoteRepository:
    return InMemoryNoteRepository()


@pytest.fixture
def save(notes: InMemoryNoteRepository) -> SaveNote:
    return SaveNote(notes, SequentialIds(), FixedClock(NOW))


@pytest.fixture
def search(notes: InMemoryNoteRepository) -> SearchNotes:
    return SearchNotes(notes)


async def test_saves_and_finds_a_note(save: SaveNote, search: SearchNotes) -> None:
    saved = await save(context_for("u_alice"), {"text": " my locker code is 4417 "})
    assert saved == {"saved": True, "note_id": "note_1", "text": "my locker code is 4417"}
    found = await search(context_for("u_alice"), {"query": "Locker code"})
    assert found == {"notes": [{"text": "my locker code is 4417",
                                "created_at": "2026-11-21T14:03:00+00:00"}]}


async def test_one_users_notes_are_never_found_by_another(
    save: SaveNote, search: SearchNotes, notes: InMemoryNoteRepository
) -> None:
    await save(context_for("u_alice"), {"text": "my locker code is 4417"})
    assert (await search(context_for("u_bob"), {"query": "locker code"})) == {"notes": []}
    assert [note.user_id for note in notes.notes] == ["u_alice"]


async def test_arguments_cannot_name_another_user(
    save: SaveNote, search: SearchNotes, notes: InMemoryNoteRepository
) -> None:
    # Called directly, a smuggled user id is ignored: the context decides.
    await save(context_for("u_bob"), {"text": "bob's secret", "user_id": "u_alice"})
    assert notes.notes[0].user_id == "u_bob"
    assert await search(context_for("u_bob"), {"query": "secret", "user_id": "u_alice"}) != {
        "notes": []}
    # Through the toolbox, as the agent calls it, the argument is refused outright.
    tools = toolbox(builtin_tools(notes=notes, ids=SequentialIds(), clock=FixedClock(NOW)))
    outcome = await tools.execute(context_for("u_bob"), "search_notes",
                                    '{"query": "locker", "user_id": "u_alice"}')
    assert outcome.error is not None and "user_id" in outcome.error


@pytest.mark.parametrize("text", ["", "   ", "x" * 2001])
async def test_refuses_empty_or_over_long_text(save: SaveNote, text: str) -> None:
    with pytest.raises(ToolError, match="text"):
        await save(context_for("u_alice"), {"text": text})


async def test_refuses_an_empty_query(search: SearchNotes) -> None:
    with pytest.raises(ToolError, match="query"):
        await search(context_for("u_alice"), {"query": " "})


def test_builtin_tools_are_the_five() -> None:
    tools = builtin_tools(notes=InMemoryNoteRepository(), ids=SequentialIds(),
                          clock=FixedClock(NOW))
    assert [tool.spec.name for tool in tools] == [
        "calculator", "current_time", "save_note", "search_notes", "delete_notes"]
