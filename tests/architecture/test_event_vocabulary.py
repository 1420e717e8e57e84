"""One vocabulary of agent events: domain/events.py's PAYLOADS, and docs/protocol.md, the OpenAPI
document and the AG-UI translation say the same types, fields and terminals."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from domain.events import PAYLOADS, EventType
from entrypoints.agui_translate import HANDLERS
from entrypoints.openapi import openapi_document

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
SECTION = "### Agent events (server frames)"

Vocabulary = dict[str, tuple[set[str], bool]]  # event type -> (its data's fields, whether terminal)


def the_table() -> Vocabulary:
    return {str(type_): ({field.name for field in fields(payload)}, payload.TERMINAL)
            for type_, payload in PAYLOADS.items()}


def drift(where: str, found: Vocabulary) -> list[str]:
    """What `where` says differently from the table, one line per difference."""
    table = the_table()
    problems = [f"{where} lacks the event type {name}" for name in table.keys() - found.keys()]
    problems += [f"{where} has the event type {name}, which domain/events.py does not"
                 for name in found.keys() - table.keys()]
    for name in table.keys() & found.keys():
        (fields_, terminal), (their_fields, their_terminal) = table[name], found[name]
        problems += [f"{where}: {name} lacks the field {field!r}" for field in sorted(fields_ - their_fields)]
        problems += [f"{where}: {name} has the field {field!r}, which its payload class does not"
                     for field in sorted(their_fields - fields_)]
        if terminal != their_terminal:
            problems.append(f"{where}: {name} is {'' if their_terminal else 'not '}terminal, "
                            f"but domain/events.py says it is {'' if terminal else 'not '}terminal")
    return problems


def documented_in_protocol() -> Vocabulary:
    """The rows of the agent events table: `type` | the quoted field names | when ("terminal: ...")."""
    section = PROTOCOL.read_text().split(SECTION, 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \| (.*?) \|$", section, re.MULTILINE)
    return {name: (set(re.findall(r'"(\w+)"', data)), when.startswith("terminal"))
            for name, data, when in rows}


def described_in_openapi() -> Vocabulary:
    """EventFrame's branches: each `type` const with the properties of its `data` schema."""
    schemas = openapi_document()["components"]["schemas"]

    def resolved(schema: dict[str, Any]) -> dict[str, Any]:
        return schemas[schema["$ref"].rsplit("/", 1)[1]]

    described = {}
    for branch in schemas["EventFrame"].get("oneOf", []):
        data = resolved(branch["properties"]["data"])
        described[branch["properties"]["type"]["const"]] = (
            set(data["properties"]), data.get("description", "").startswith("Terminal"))
    return described


def test_each_event_type_has_one_payload_class_whose_data_is_its_fields() -> None:
    assert set(PAYLOADS) == set(EventType), "an EventType without a payload class in PAYLOADS"
    for type_, payload in PAYLOADS.items():
        assert payload.TYPE is type_
        sample = payload(**{field.name: f"some {field.name}" for field in fields(payload)})
        required = {field.name for field in fields(payload) if field.default is MISSING}
        names = {field.name for field in fields(payload)}
        # A field with a default may be left out of the wire form (a tool's result or error); no other.
        assert required <= set(sample.data()) <= names, f"{type_}: data() says {set(sample.data())}"


def test_docs_protocol_lists_exactly_the_event_vocabulary() -> None:
    problems = drift(f"docs/protocol.md ({SECTION})", documented_in_protocol())
    assert not problems, "\n".join(problems)


def test_the_openapi_document_describes_exactly_the_event_vocabulary() -> None:
    problems = drift("the OpenAPI document (entrypoints/openapi_events.py)", described_in_openapi())
    assert not problems, "\n".join(problems)


def test_the_agui_translation_handles_every_event_type() -> None:
    missing = sorted(str(type_) for type_ in set(PAYLOADS) - set(HANDLERS))
    unknown = sorted(str(type_) for type_ in set(HANDLERS) - set(PAYLOADS))
    assert not missing and not unknown, (
        f"entrypoints/agui_translate.py HANDLERS lacks {missing}, has unknown {unknown}")
