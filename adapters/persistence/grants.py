"""A user's standing approvals of tools (domain/approvals.py) on SQLAlchemy Core."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, delete, select

from adapters.persistence.connection import SqlConnection, upsert_into
from adapters.persistence.database import Database
from adapters.persistence.tables import approval_grants
from domain.entities import ApprovalGrant


async def add_grant(conn: SqlConnection, grant: ApprovalGrant) -> None:
    """Stores the grant unless the user has the same one (that one stays)."""
    statement = upsert_into(conn.dialect, approval_grants).on_conflict_do_nothing(
        index_elements=[approval_grants.c.user_id, approval_grants.c.tool, approval_grants.c.thread_id])
    await conn.execute(statement, {"id": grant.id, "user_id": grant.user_id, "tool": grant.tool,
                                   "thread_id": grant.thread_id or "", "created_at": grant.created_at})


class SqlAlchemyApprovalGrantRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_for_user(self, user_id: str) -> Sequence[ApprovalGrant]:
        query = (select(approval_grants).where(approval_grants.c.user_id == user_id)
                 .order_by(approval_grants.c.created_at, approval_grants.c.id))
        async with self._db.reading() as conn:
            return [ApprovalGrant(id=row.id, user_id=row.user_id, tool=row.tool, created_at=row.created_at,
                                  thread_id=row.thread_id or None) for row in await conn.execute(query)]

    async def delete(self, user_id: str, grant_id: str) -> bool:
        statement = delete(approval_grants).where(approval_grants.c.user_id == user_id,
                                                  approval_grants.c.id == grant_id)

        async def revoke(conn: SqlConnection) -> bool:
            return (await conn.execute(statement)).rowcount == 1

        return await self._db.write(revoke)

    async def covers(self, user_id: str, tool: str, thread_id: str) -> bool:
        async with self._db.reading() as conn:
            row = (await conn.execute(_GRANT_COVERING, {"user_id": user_id, "tool": tool,
                                                        "thread_id": thread_id})).first()
        return row is not None


_GRANT_COVERING = select(approval_grants.c.id).where(
    approval_grants.c.user_id == bindparam("user_id"), approval_grants.c.tool == bindparam("tool"),
    approval_grants.c.thread_id.in_([bindparam("thread_id"), ""])).limit(1)
