"""HTTP handlers: thin, each turns a request into one use-case call and its result into JSON."""

from __future__ import annotations

from aiohttp import web

from domain.events import EventType
from domain.ports import IssuedToken
from entrypoints.appkeys import LIFECYCLE, USER, services
from entrypoints.http import paging
from entrypoints.http.bodies import read_body
from entrypoints.http.schemas import (
    ChatMessageBody,
    Credentials,
    ForkBody,
    PasswordChangeBody,
    ThreadRenameBody,
)
from entrypoints.http.schemas_tools import (
    ApprovalBody,
    McpServerBody,
)
from entrypoints.http.views import (
    grant_view,
    mcp_server_view,
    message_view,
    run_view,
    thread_view,
    timeline_item_view,
    tool_view,
)
from entrypoints.middlewares import request_id_of

routes = web.RouteTableDef()


def _user_id(request: web.Request) -> str:
    return request[USER].id


def _token_response(token: IssuedToken) -> web.Response:
    return web.json_response(
        {"access_token": token.access_token, "token_type": "bearer", "expires_in": token.expires_in}
    )


@routes.post("/api/auth/register")
async def register(request: web.Request) -> web.Response:
    body = await read_body(request, Credentials, invalid_code="validation_error")
    user = await services(request.app).auth.register(body.username, body.password)
    return web.json_response({"user_id": user.id, "username": user.username}, status=201)


@routes.post("/api/auth/login")
async def login(request: web.Request) -> web.Response:
    body = await read_body(request, Credentials, invalid_code="validation_error")
    token = await services(request.app).auth.login(body.username, body.password)
    return _token_response(token)


@routes.post("/api/auth/logout")
async def logout(request: web.Request) -> web.Response:
    found = services(request.app)
    await found.auth.logout(request[USER])
    await found.control.revoke_sessions(_user_id(request), "logged out: log in again")
    return web.Response(status=204)


@routes.post("/api/auth/password")
async def change_password(request: web.Request) -> web.Response:
    body = await read_body(request, PasswordChangeBody, invalid_code="validation_error")
    found = services(request.app)
    token = await found.auth.change_password(request[USER], body.current_password, body.new_password)
    await found.control.revoke_sessions(_user_id(request), "password changed: log in again")
    return _token_response(token)


@routes.get("/api/me")
async def me(request: web.Request) -> web.Response:
    user = request[USER]
    return web.json_response({"user_id": user.id, "username": user.username})


@routes.post("/api/chat/message")
async def chat_message(request: web.Request) -> web.Response:
    body = await read_body(request, ChatMessageBody, invalid_code="invalid_message")
    found = services(request.app)
    user_id = _user_id(request)
    submission = await found.chat.submit(
        user_id=user_id,
        text=body.message,
        request_id=request_id_of(request),
        thread_id=body.thread_id,
        client_message_id=body.client_message_id,
        multitask=body.multitask,
    )
    run = submission.run
    if not body.wait:
        return web.json_response({"run_id": run.id, "thread_id": run.thread_id}, status=202)
    finished = await found.chat.wait(user_id, run.id)
    events = await found.conversations.run_events(user_id, run.id)
    answer = next((e.data.get("text") for e in events if e.type is EventType.AGENT_COMPLETED), None)
    return web.json_response({
        "run_id": finished.id,
        "thread_id": finished.thread_id,
        "status": finished.status.value,
        "answer": answer,
        "events": [event.to_wire() for event in events],
    })


@routes.get("/api/runs/{run_id}")
async def get_run(request: web.Request) -> web.Response:
    found = services(request.app)
    run = await found.conversations.run(_user_id(request), request.match_info["run_id"])
    return web.json_response(run_view(run, await found.approvals.pending(run)))


@routes.post("/api/runs/{run_id}/approvals")
async def decide_approval(request: web.Request) -> web.Response:
    body = await read_body(request, ApprovalBody, invalid_code="validation_error")
    run_id = request.match_info["run_id"]  # the path names the run; a body's run_id is not read
    run = await services(request.app).approvals.decide(
        _user_id(request), run_id, body.tool_call_id, approve=body.approve, reason=body.reason,
        remember=body.remember)
    return web.json_response({"run_id": run.id, "tool_call_id": body.tool_call_id, "approved": body.approve,
                              "status": run.status.value}, status=202)


@routes.get("/api/approvals/pending")
async def pending_approvals(request: web.Request) -> web.Response:
    return web.json_response({"approvals": await services(request.app).approvals.waiting(_user_id(request))})


@routes.get("/api/approvals/grants")
async def list_grants(request: web.Request) -> web.Response:
    grants = await services(request.app).approvals.grants(_user_id(request))
    return web.json_response({"grants": [grant_view(grant) for grant in grants]})


@routes.delete("/api/approvals/grants/{grant_id}")
async def revoke_grant(request: web.Request) -> web.Response:
    await services(request.app).approvals.revoke(_user_id(request), request.match_info["grant_id"])
    return web.Response(status=204)


@routes.post("/api/runs/{run_id}/cancel")
async def cancel_run(request: web.Request) -> web.Response:
    found = services(request.app)
    run = await found.chat.cancel(_user_id(request), run_id=request.match_info["run_id"])
    run = await found.conversations.run(_user_id(request), run.id)
    return web.json_response({"run_id": run.id, "status": run.status.value}, status=202)


@routes.post("/api/mcp/servers")
async def add_mcp_server(request: web.Request) -> web.Response:
    body = await read_body(request, McpServerBody, invalid_code="validation_error")
    server = await services(request.app).mcp.add(_user_id(request), body.name, body.url, body.headers,
                                                 body.approval)
    return web.json_response(mcp_server_view(server), status=201)


@routes.get("/api/mcp/servers")
async def list_mcp_servers(request: web.Request) -> web.Response:
    servers = await services(request.app).mcp.list(_user_id(request))
    return web.json_response({"servers": [mcp_server_view(server) for server in servers]})


@routes.delete("/api/mcp/servers/{name}")
async def remove_mcp_server(request: web.Request) -> web.Response:
    await services(request.app).mcp.remove(_user_id(request), request.match_info["name"])
    return web.Response(status=204)


@routes.get("/api/tools")
async def list_tools(request: web.Request) -> web.Response:
    tools, unreachable = await services(request.app).tools.describe(_user_id(request))
    return web.json_response({"tools": [tool_view(tool) for tool in tools],
                              "unreachable": [{"server": name, "reason": why}
                                              for name, why in sorted(unreachable.items())]})


@routes.get("/api/threads")
async def list_threads(request: web.Request) -> web.Response:
    after = paging.decode(request.query.get("cursor"), "cursor")
    page = await services(request.app).conversations.threads(
        _user_id(request), query=request.query.get("q"), after=after,
        limit=paging.limit_of(request, default=100, most=200))
    return web.json_response({"threads": [thread_view(t) for t in page.threads],
                              "next_cursor": paging.encode(page.after)})


@routes.patch("/api/threads/{thread_id}")
async def rename_thread(request: web.Request) -> web.Response:
    body = await read_body(request, ThreadRenameBody, invalid_code="validation_error")
    thread = await services(request.app).conversations.rename(
        _user_id(request), request.match_info["thread_id"], body.title)
    return web.json_response(thread_view(thread))


@routes.post("/api/threads/{thread_id}/fork")
async def fork_thread(request: web.Request) -> web.Response:
    body = await read_body(request, ForkBody, invalid_code="validation_error")
    thread, message = await services(request.app).conversations.fork(
        _user_id(request), request.match_info["thread_id"], body.message_id)
    return web.json_response({"thread": thread_view(thread), "message": message_view(message)}, status=201)


@routes.get("/api/threads/{thread_id}/timeline")
async def thread_timeline(request: web.Request) -> web.Response:
    before = paging.decode(request.query.get("before"), "before")
    timeline = await services(request.app).conversations.timeline(
        _user_id(request), request.match_info["thread_id"], before=before,
        limit=paging.limit_of(request, default=50, most=200))
    return web.json_response({"items": [timeline_item_view(item) for item in timeline.items],
                              "before": paging.encode(timeline.before)})


@routes.get("/api/threads/{thread_id}/messages")
async def thread_messages(request: web.Request) -> web.Response:
    messages = await services(request.app).conversations.messages(
        _user_id(request), request.match_info["thread_id"]
    )
    return web.json_response({"messages": [message_view(m) for m in messages]})


@routes.delete("/api/threads/{thread_id}")
async def delete_thread(request: web.Request) -> web.Response:
    found = services(request.app)
    thread_id = request.match_info["thread_id"]
    await found.conversations.delete_thread(
        _user_id(request), thread_id, busy=found.runs.thread_busy(thread_id)
    )
    return web.Response(status=204)


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    lifecycle = request.app[LIFECYCLE]
    if lifecycle.ready and not lifecycle.draining:
        return web.json_response({"status": "ready"})
    state = "draining" if lifecycle.draining else "starting"
    message = ("The server is shutting down; use another one." if lifecycle.draining
               else "The server is starting; try again in a moment.")
    # The error form every 503 has, and the state for a load balancer or a person reading it.
    return web.json_response({"status": state, "error": {"code": "server_not_ready", "message": message}},
                             status=503)
