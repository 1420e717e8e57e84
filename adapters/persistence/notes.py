"""Each user's notes on SQLAlchemy Core: kept, searched by words, deleted on request."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, delete, insert, literal, select

from adapters.persistence.committer import Transaction
from adapters.persistence.connection import escape_like, upsert_into
from adapters.persistence.database import Database
from adapters.persistence.tables import notes
from domain.entities import Note

_WORD = re.compile(r"\w+")
_MAX_SEARCH_WORDS = 12
_STOP_WORDS = frozenset({
    "about", "all", "and", "any", "are", "can", "could", "did", "does", "for", "from", "had",
    "has", "have", "her", "his", "how", "its", "just", "know", "let", "not", "note", "notes",
    "now", "our", "please", "remember", "saved", "say", "said", "she", "should", "tell", "than",
    "that", "the", "their", "them", "then", "there", "these", "they", "this", "was", "were",
    "what", "when", "where", "which", "who", "whom", "why", "will", "with", "would", "you",
    "your", "yours",
})


def search_words(query: str) -> list[str]:
    """The words of `query` worth matching: 3+ characters, no stop words, first seen first."""
    words = [w for w in _WORD.findall(query.casefold()) if len(w) >= 3 and w not in _STOP_WORDS]
    return list(dict.fromkeys(words))[:_MAX_SEARCH_WORDS]


_INSERT_NOTE = insert(notes)
_FIRST = 0  # rank of a staged note: it references users only


class SqlAlchemyNoteRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, note: Note) -> Note:
        row = {"id": note.id, "user_id": note.user_id, "text": note.text, "created_at": note.created_at,
               "key": note.key}
        if note.key is None:

            async def add_note(tx: Transaction) -> None:
                tx.stage(_INSERT_NOTE, row, rank=_FIRST)

            await self._db.write(add_note)
            return note

        async def add_keyed(tx: Transaction) -> Note:
            # Keyed: the same tool call run again (a takeover, or its stalled first runner woken)
            # finds the note stored the first time. ON CONFLICT, not read-then-insert: two runs of
            # the call at once must not fail the whole batch of writes on the unique index.
            await tx.execute(upsert_into(tx.dialect, notes).on_conflict_do_nothing(
                index_elements=[notes.c.user_id, notes.c.key]), row)
            kept = select(notes).where(notes.c.user_id == note.user_id, notes.c.key == note.key)
            return Note(**(await tx.execute(kept)).one()._mapping)

        return await self._db.write(add_keyed)

    async def search(self, user_id: str, query: str, limit: int = 5) -> Sequence[Note]:
        """Notes holding the most of the query's words, newest first; no words: the newest."""
        if limit <= 0:
            return []
        newest = (notes.c.created_at.desc(), notes.c.id.desc())
        statement = select(notes).where(notes.c.user_id == user_id)
        words = search_words(query)
        if words:
            score = sum((case((hit, 1), else_=0) for hit in _hits(words)), literal(0))
            statement = statement.where(score > 0).order_by(score.desc(), *newest)
        else:
            statement = statement.order_by(*newest)
        async with self._db.reading() as conn:
            rows = await conn.execute(statement.limit(limit))
            return [Note(**row._mapping) for row in rows]

    async def delete_matching(self, user_id: str, query: str) -> Sequence[Note]:
        """The user's notes holding every word of the query (no words: none), deleted together.

        Every word, not the most of them as search ranks: forgetting is not a guess."""
        words = search_words(query)
        if not words:
            return []
        matching = select(notes).where(notes.c.user_id == user_id, *_hits(words))

        async def forget(tx: Transaction) -> list[Note]:
            found = [Note(**row._mapping) for row in await tx.execute(matching)]
            if found:
                await tx.execute(delete(notes).where(notes.c.id.in_([note.id for note in found])))
            return found

        return await self._db.write(forget)


def _hits(words: list[str]) -> list[Any]:
    return [notes.c.text.ilike(f"%{escape_like(w)}%", escape="\\") for w in words]

