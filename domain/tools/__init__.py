"""Tools the agent can call; each receives the run's context, never a user id from the model."""

from domain.ports import Clock, IdGenerator, NoteRepository
from domain.tools.base import Tool, ToolBox, ToolResult
from domain.tools.calculator import Calculator
from domain.tools.clock import CurrentTime
from domain.tools.notes import DeleteNotes, SaveNote, SearchNotes

__all__ = [
    "Calculator",
    "CurrentTime",
    "DeleteNotes",
    "SaveNote",
    "SearchNotes",
    "Tool",
    "ToolBox",
    "ToolResult",
    "builtin_tools",
]


def builtin_tools(*, notes: NoteRepository, ids: IdGenerator, clock: Clock) -> list[Tool]:
    """The built-in tools: calculator, current_time, save_note, search_notes, delete_notes."""
    return [
        Calculator(),
        CurrentTime(clock),
        SaveNote(notes, ids, clock),
        SearchNotes(notes),
        DeleteNotes(notes),
    ]
