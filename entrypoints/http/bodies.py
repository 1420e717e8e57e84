"""Reading JSON bodies into typed request models, with the protocol's error codes."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from entrypoints.edge import load_json
from entrypoints.errors import ApiError

Model = TypeVar("Model", bound=BaseModel)


async def read_body(request: web.Request, model: type[Model], *, invalid_code: str) -> Model:
    """Parse the body as JSON under the edge policy, then as `model`: bad JSON is invalid_json, bad
    text invalid_message (entrypoints/edge.py), a bad shape `invalid_code`."""
    payload = load_json(await request.read() or b"{}", "The request body")
    if not isinstance(payload, dict):
        raise ApiError(invalid_code, "The request body must be a JSON object.")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(invalid_code, describe(exc)) from None


def describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    if not where:  # a rule of the whole body, not of one field
        return f"{first['msg']}."
    if first["type"] == "missing":
        return f"'{where}' is required."
    if first["type"] == "extra_forbidden":
        return f"'{where}' is not a field of this request."
    return f"'{where}': {first['msg']}."
