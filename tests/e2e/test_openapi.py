"""GET /api/openapi.json: a valid OpenAPI 3.1 document, complete (every route the app serves) and
true (Schemathesis against a live server finds no 5xx and no response that breaks it).

Schemathesis speaks `requests`, which blocks: its loop runs in a thread (asyncio.to_thread) while the
server keeps serving on the test's event loop. The two event streams (GET /api/runs/{run_id}/events and
POST /api/agui) are fuzzed too: Schemathesis validates every event against the documented schema, and
`streams_end` fails a stream that is still open when the request times out.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from container import Container
from entrypoints.app import create_app
from entrypoints.openapi import openapi_document
from tests.e2e.client import PASSWORD, Server

TIMEOUT_S = 5.0  # per request, and the longest an event stream is read: every run here ends far sooner
MAX_STREAM_EVENTS = 1000  # Schemathesis stops reading a stream after 20 events unless told otherwise
NEW_PASSWORD = "another horse battery staple"


def streams_end(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) \
        -> None:
    """An event stream ends after its run's terminal event; one cut short by the timeout never ended."""
    if response.stream_cut_short:
        raise AssertionError(f"the event stream was still open after {TIMEOUT_S} s")


# positive_data_acceptance: whatever the document calls valid is taken (2xx, or 401/404/409/429 as for
# wrong credentials, unknown ids, a busy thread, a limit), so the document says exactly what is accepted.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          positive_data_acceptance, streams_end]
EXAMPLES = {schemathesis.GenerationMode.POSITIVE: 25, schemathesis.GenerationMode.NEGATIVE: 15}
UNDOCUMENTED = {"/", "/ws"}  # the web UI and the WebSocket: named in the document's description only
PUBLIC = {"/api/auth/register", "/api/auth/login", "/api/openapi.json", "/health", "/ready", "/metrics"}


def _served(container: Container) -> set[tuple[str, str]]:
    """(METHOD, path) of every route of the app; HEAD mirrors GET and /static is the UI's files."""
    served = set()
    for route in create_app(container).router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in {"HEAD", "*"} or path.startswith("/static") or path in UNDOCUMENTED:
            continue
        served.add((route.method, path))
    return served


def _documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item}


def test_the_document_is_openapi_3_1_and_schemathesis_loads_every_operation() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.1 meta-schema; raises with the path of what is wrong
    operations = [result.ok() for result in schema.get_all_operations()]  # .ok() raises on a broken one
    assert {(op.method.upper(), op.path) for op in operations} == _documented()


def test_every_route_the_app_serves_is_documented(container: Container) -> None:
    missing = _served(container) - _documented()
    assert not missing, f"routes served but not in entrypoints/openapi.py OPERATIONS: {sorted(missing)}"


def test_every_documented_operation_is_served(container: Container) -> None:
    stale = _documented() - _served(container)
    assert not stale, f"documented in entrypoints/openapi.py but not served: {sorted(stale)}"


def test_bearer_security_on_every_api_path_but_the_public_ones() -> None:
    document = openapi_document()
    assert document["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            public = operation.get("security") == []
            assert public == (path in PUBLIC), (method, path)
            if not public:
                assert "401" in operation["responses"], (method, path)


async def test_the_document_is_served_without_a_token(server: Server) -> None:
    async with aiohttp.ClientSession() as session, session.get(
        server.base_url + "/api/openapi.json"
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == openapi_document()


# -- Schemathesis against a live server --------------------------------------------------------------


# Port 9 (discard): nothing listens on it here, so a connection is refused at once.
CLOSED_MCP_URL = "http://127.0.0.1:9/mcp"


@dataclass
class Caller:
    """A user of its own for one operation, so that a logout or a password change of one operation
    never revokes the token another one uses; and a finished run of theirs, for path ids that exist."""

    base_url: str
    http: requests.Session
    username: str = field(default_factory=lambda: f"fuzz_{secrets.token_hex(4)}")
    token: str = ""
    ids: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)
    first_message: str = ""

    def __post_init__(self) -> None:
        credentials = {"username": self.username, "password": PASSWORD}
        assert self._post("/api/auth/register", credentials).status_code == 201
        self.token = self._post("/api/auth/login", credentials).json()["access_token"]
        answer = self._post("/api/chat/message", {"message": "What is 2+2?", "wait": True}).json()
        self.ids = {"run_id": answer["run_id"], "thread_id": answer["thread_id"]}
        said = self.http.get(f"{self.base_url}/api/threads/{answer['thread_id']}/messages", headers=self.auth,
                             timeout=TIMEOUT_S)
        self.first_message = said.json()["messages"][0]["message_id"]
        # A grant (approved with remember), and a run still waiting for its approval.
        granted = self._ask_approval()
        self._post(f"/api/runs/{granted['run_id']}/approvals",
                   {"tool_call_id": granted["tool_call_id"], "approve": True, "remember": "thread"})
        self.waiting = self._ask_approval()
        grants = self.http.get(self.base_url + "/api/approvals/grants", headers=self.auth, timeout=TIMEOUT_S)
        self.ids["grant_id"] = grants.json()["grants"][0]["grant_id"]
        # An MCP server of theirs (nothing listens there: its tools are listed as unreachable, at once).
        self._post("/api/mcp/servers", {"name": "fuzz", "url": CLOSED_MCP_URL, "headers": {"X-Key": "k"}})
        self.ids["name"] = "fuzz"

    def _ask_approval(self) -> dict[str, str]:
        answer = self._post("/api/chat/message", {"message": "Forget my locker code", "wait": True}).json()
        asked = next(e for e in answer["events"] if e["type"] == "approval_required")
        return {"run_id": answer["run_id"], "tool_call_id": asked["data"]["tool_call_id"]}

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _post(self, path: str, body: dict[str, Any]) -> requests.Response:
        response = self.http.post(self.base_url + path, json=body, headers=self.auth if self.token else {},
                                  timeout=TIMEOUT_S)
        assert response.status_code < 300, response.text
        return response


def _directed(operation: schemathesis.APIOperation, caller: Caller) -> list[schemathesis.Case]:
    """Requests random data is unlikely to make: the ones that succeed, and the edges of the streams."""
    label, ids = operation.label, caller.ids
    agui = {"threadId": "", "runId": secrets.token_hex(4),
            "messages": [{"id": "m1", "role": "user", "content": "What is 2+2?"}]}
    cases = {
        "POST /api/auth/login": [{"body": {"username": caller.username, "password": PASSWORD}}],
        "POST /api/chat/message": [{"body": {"message": "Hello", "wait": True}}],
        "GET /api/runs/{run_id}/events": [
            {"path_parameters": ids},
            {"path_parameters": ids, "headers": {"Last-Event-ID": "2"}},
            {"path_parameters": ids, "headers": {"Last-Event-ID": "999"}},  # after the end: it still ends
        ],
        "POST /api/agui": [{"body": agui}, {"body": agui}],  # the same runId again: the same run
        "POST /api/mcp/servers": [{"body": {"name": "second", "url": CLOSED_MCP_URL}}],
        "POST /api/threads/{thread_id}/fork": [
            {"path_parameters": ids, "body": {"message_id": caller.first_message}}],
        "POST /api/runs/{run_id}/approvals": [
            {"path_parameters": {"run_id": caller.waiting["run_id"]},
             "body": {"tool_call_id": caller.waiting["tool_call_id"], "approve": True}}],
        "POST /api/auth/password": [  # last: it revokes the caller's token
            {"body": {"current_password": PASSWORD, "new_password": NEW_PASSWORD}}],
    }.get(label, [])
    return [operation.Case(**case) for case in cases]


def _fuzz(base_url: str) -> tuple[list[str], dict[str, Counter[int]]]:
    """Every operation: positive and negative data, the ids of the caller's real run, directed cases.

    Returns every failure (not only the first) as Schemathesis reports it, and the statuses seen.
    """
    failures: list[str] = []
    seen: dict[str, Counter[int]] = {}
    with requests.Session() as http:
        # from_dict, not from_url: loaded from its URL, Schemathesis leaves the document's own operation out
        document = http.get(base_url + "/api/openapi.json", timeout=TIMEOUT_S).json()
        # No NUL in generated text: the edge policy refuses it everywhere (the document's description says
        # so), which JSON Schema cannot say of free-form JSON such as AG-UI's state and forwardedProps.
        config = schemathesis.Config.from_dict({"max-stream-events": MAX_STREAM_EVENTS,
                                                "generation": {"allow-x00": False}})
        for result in schemathesis.openapi.from_dict(document, config=config).get_all_operations():
            operation = result.ok()
            caller = Caller(base_url, http)
            statuses = seen.setdefault(operation.label, Counter())

            def call(case: schemathesis.Case, caller: Caller = caller, statuses: Counter[int] = statuses) \
                    -> None:
                response = case.call_and_validate(base_url=base_url, session=http, headers=caller.auth,
                                                  checks=CHECKS, timeout=TIMEOUT_S)
                statuses[response.status_code] += 1

            runs: list[tuple[str, Callable[[], None]]] = [
                (mode.value, _given(operation.as_strategy(generation_mode=mode), examples, call))
                for mode, examples in EXAMPLES.items()
            ]
            if operation.path_parameters:
                ids = {p.name: caller.ids[p.name] for p in operation.path_parameters}
                runs.append(("real ids", _given(operation.as_strategy(path_parameters=ids), 5, call)))
            runs += [(f"directed {n}", lambda case=case: call(case))
                     for n, case in enumerate(_directed(operation, caller))]
            for label, run in runs:
                try:
                    run()
                except Unsatisfiable:  # nothing to break (no parameter, body or security): no negative data
                    assert label == schemathesis.GenerationMode.NEGATIVE.value, operation.label
                except (Exception, BaseExceptionGroup) as exc:  # Schemathesis' FailureGroup is a Base one
                    failures.append(f"{operation.label} [{label}]: {type(exc).__name__}: {exc}")
    return failures, seen


def _given(strategy: Any, examples: int, call: Callable[[schemathesis.Case], None]) -> Callable[[], None]:
    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        call(case)

    return run


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error_and_no_undocumented_response(make_server) -> None:
    server = await make_server(security={"messages_per_minute": 1000}, mcp={"allow_private_networks": True})
    failures, seen = await asyncio.to_thread(_fuzz, server.base_url)
    assert not failures, "\n\n".join(failures)
    assert seen.keys() == {f"{method} {path}" for method, path in _documented()}
    unsuccessful = {label: dict(statuses) for label, statuses in seen.items()
                    if not any(200 <= status < 300 for status in statuses)}
    assert not unsuccessful, f"operations never answered a 2xx: {unsuccessful}"
