"""The schema as SQLAlchemy Core tables; migrations/versions must create exactly this."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

ID = 64
NAME = 255


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite too (which stores them without an offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware one")
        # SQLite keeps the wall time and drops the offset, so store every value in UTC.
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("username", String(NAME), nullable=False),
    Column("password_hash", String(NAME), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # Bumped by logout and password change: a token carrying an older version is refused (0003).
    Column("token_version", Integer(), nullable=False, server_default="0"),
    UniqueConstraint("username", name="uq_users_username"),
)

threads = Table(
    "threads",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("user_id", String(ID), ForeignKey("users.id", name="fk_threads_user_id"),
           nullable=False),
    Column("title", Text(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_threads_user_id_updated_at", "user_id", "updated_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("thread_id", String(ID),
           ForeignKey("threads.id", name="fk_messages_thread_id", ondelete="CASCADE"),
           nullable=False),
    Column("user_id", String(ID), nullable=False),
    Column("role", String(16), nullable=False),
    Column("text", Text(), nullable=False),
    Column("run_id", String(ID), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_messages_thread_id_created_at", "thread_id", "created_at"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("user_id", String(ID), nullable=False),
    Column("thread_id", String(ID),
           ForeignKey("threads.id", name="fk_runs_thread_id", ondelete="CASCADE"),
           nullable=False),
    Column("status", String(16), nullable=False),
    Column("client_message_id", String(NAME), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime(), nullable=True),
    Column("error", Text(), nullable=True),
    # The server process running it, and until when; a lapsed lease marks an orphan (0002).
    Column("owner", String(NAME), nullable=True),
    Column("lease_expires_at", UtcDateTime(), nullable=True),
    # Raised by every takeover: an event or status written under an older epoch is refused (0004).
    Column("lease_epoch", Integer(), nullable=False, server_default="0"),
    # Takeovers from a stopped process (runs.max_takeovers), and a waiting run's deadline (0006).
    Column("takeovers", Integer(), nullable=False, server_default="0"),
    Column("wait_expires_at", UtcDateTime(), nullable=True),
    UniqueConstraint("user_id", "client_message_id", name="uq_runs_user_id_client_message_id"),
    Index("ix_runs_status_lease_expires_at", "status", "lease_expires_at"),
    Index("ix_runs_thread_id_created_at", "thread_id", "created_at"),
    # A user's unfinished (or waiting) runs, counted at every message: without it, every run the
    # user ever had was read to count the few unfinished ones (0008).
    Index("ix_runs_user_id_status", "user_id", "status"),
)

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
           autoincrement=True),
    Column("user_id", String(ID), nullable=False),
    Column("run_id", String(ID), nullable=False),
    Column("thread_id", String(ID), nullable=False),
    Column("seq", Integer(), nullable=False),
    Column("type", String(32), nullable=False),
    Column("data", Text(), nullable=False),
    Column("ts", UtcDateTime(), nullable=False),
    UniqueConstraint("run_id", "seq", name="uq_events_run_id_seq"),
    Index("ix_events_user_id_id", "user_id", "id"),
    Index("ix_events_ts", "ts"),  # retention: prune by age
    Index("ix_events_thread_id", "thread_id"),  # deleting a thread deletes its events
)

# The event log's own durable counters, e.g. "pruned_through": the highest event id pruned.
event_log_state = Table(
    "event_log_state",
    metadata,
    Column("name", String(ID), primary_key=True),
    Column("value", BigInteger(), nullable=False),
)

notes = Table(
    "notes",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("user_id", String(ID), nullable=False),
    Column("text", Text(), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # The tool call that saved it (0005): the same call run again after a takeover saves nothing.
    Column("key", String(NAME), nullable=True),
    Index("ix_notes_user_id", "user_id"),
    Index("uq_notes_user_id_key", "user_id", "key", unique=True),
)

# A run's latest checkpoint (domain/checkpoints.py), written with the event it follows (0005).
run_checkpoints = Table(
    "run_checkpoints",
    metadata,
    Column("run_id", String(ID), ForeignKey("runs.id", name="fk_run_checkpoints_run_id", ondelete="CASCADE"),
           primary_key=True),
    Column("format", Integer(), nullable=False),
    Column("seq", Integer(), nullable=False),
    Column("state", Text(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# A user's standing approvals of a tool (0006): in one thread, or always ('' for thread_id).
approval_grants = Table(
    "approval_grants",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("user_id", String(ID), nullable=False),
    Column("tool", String(NAME), nullable=False),
    Column("thread_id", String(ID), nullable=False, server_default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("user_id", "tool", "thread_id", name="uq_approval_grants_user_id_tool_thread_id"),
)

# Each user's own MCP servers (0007); `headers` sealed (adapters/security/cipher.py), never plain.
mcp_servers = Table(
    "mcp_servers",
    metadata,
    Column("user_id", String(ID), primary_key=True),
    Column("name", String(ID), primary_key=True),
    Column("url", Text(), nullable=False),
    Column("headers", Text(), nullable=False),
    Column("approval", String(16), nullable=False, server_default="auto"),
    Column("created_at", UtcDateTime(), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
           autoincrement=True),
    Column("user_id", String(ID), nullable=False),
    Column("action", String(32), nullable=False),
    Column("run_id", String(ID), nullable=True),
    Column("outcome", String(32), nullable=True),
    Column("detail", Text(), nullable=True),
    Column("at", UtcDateTime(), nullable=False),
    Index("ix_audit_log_user_id_id", "user_id", "id"),
)
