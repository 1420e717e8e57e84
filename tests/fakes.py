"""Hand-written fakes of the domain's ports, shared by all tests."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from domain.model import Note


class FixedClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


class SequentialIds:
    """Predictable ids: note_1, run_2, ..."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._counter)}"


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


class InMemoryNoteRepository:
    """Notes in a list; search ranks a user's notes by how many query words they share."""

    def __init__(self) -> None:
        self.notes: list[Note] = []

    async def add(self, note: Note) -> None:
        self.notes.append(note)

    async def search(self, user_id: str, query: str, limit: int = 5) -> Sequence[Note]:
        wanted = _words(query)
        scored = [(len(wanted & _words(note.text)), note)
                  for note in self.notes if note.user_id == user_id]
        matches = [(score, note) for score, note in scored if score > 0]
        # Best match first; among equals the newest, as a person would correct an old fact.
        matches.sort(key=lambda pair: (pair[0], pair[1].created_at), reverse=True)
        return [note for _, note in matches[:limit]]
