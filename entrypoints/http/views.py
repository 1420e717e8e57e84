"""Domain objects as the protocol's JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from domain.conversations import TimelineItem
from domain.entities import ApprovalGrant, McpServer, Message, Run, Thread
from domain.tools.catalog import ToolInfo


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def run_view(run: Run, pending_approvals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {"run_id": run.id, "thread_id": run.thread_id, "status": run.status.value,
                            "created_at": iso(run.created_at)}
    if run.finished_at is not None:
        view["finished_at"] = iso(run.finished_at)
    if run.error is not None:
        view["error"] = run.error
    if pending_approvals:
        view["pending_approvals"] = pending_approvals
    return view


def grant_view(grant: ApprovalGrant) -> dict[str, Any]:
    view: dict[str, Any] = {"grant_id": grant.id, "tool": grant.tool,
                            "scope": "always" if grant.thread_id is None else "thread",
                            "created_at": iso(grant.created_at)}
    if grant.thread_id is not None:
        view["thread_id"] = grant.thread_id
    return view


def thread_view(thread: Thread) -> dict[str, Any]:
    return {"thread_id": thread.id, "title": thread.title, "updated_at": iso(thread.updated_at)}


def message_view(message: Message) -> dict[str, Any]:
    view: dict[str, Any] = {"message_id": message.id, "role": message.role.value, "text": message.text,
                            "created_at": iso(message.created_at)}
    if message.run_id is not None:
        view["run_id"] = message.run_id
    return view


def mcp_server_view(server: McpServer) -> dict[str, Any]:
    return {"name": server.name, "url": server.url, "header_names": sorted(server.headers),
            "approval": server.approval, "created_at": iso(server.created_at)}


def tool_view(tool: ToolInfo) -> dict[str, Any]:
    view: dict[str, Any] = {"name": tool.name, "description": tool.description,
                            "input_schema": tool.input_schema, "approval": tool.approval,
                            "source": tool.source}
    if tool.server is not None:
        view["server"] = tool.server
    if tool.owner is not None:
        view["owner"] = tool.owner
    return view


def timeline_item_view(item: TimelineItem) -> dict[str, Any]:
    view: dict[str, Any] = {"message": message_view(item.message)}
    if item.run is not None:
        view["run"] = {**run_view(item.run), "events": [event.to_wire() for event in item.events]}
    return view
