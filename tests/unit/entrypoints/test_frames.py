"""The client frames of /ws: each type parsed into its model, each fault into the protocol's code."""

from __future__ import annotations

import json

import pytest

from domain.lanes import Multitask
from entrypoints.frames import (
    CancelFrame,
    ChatFrame,
    FrameError,
    PingFrame,
    ResumeFrame,
    parse,
    parse_auth,
)


def refused(raw: str, *, auth: bool = False) -> FrameError:
    with pytest.raises(FrameError) as caught:
        (parse_auth if auth else parse)(raw)
    assert caught.value.message.strip()
    return caught.value


def test_a_chat_frame_with_every_field() -> None:
    frame = parse(json.dumps({"type": "chat", "message": "hi", "thread_id": "thr_1",
                              "client_message_id": "cm_1", "multitask": "interrupt"}))
    assert frame == ChatFrame(type="chat", message="hi", thread_id="thr_1", client_message_id="cm_1",
                              multitask=Multitask.INTERRUPT)


def test_absent_or_null_fields_take_their_defaults_and_unknown_ones_are_ignored() -> None:
    frame = parse(json.dumps({"type": "chat", "message": "hi", "multitask": None, "seq": 3}))
    assert frame == ChatFrame(type="chat", message="hi", multitask=Multitask.ENQUEUE)


def test_cancel_resume_and_ping_frames() -> None:
    assert parse('{"type": "cancel", "run_id": "run_1"}') == CancelFrame(type="cancel", run_id="run_1")
    assert parse('{"type": "cancel", "client_message_id": "cm_1"}').client_message_id == "cm_1"
    assert parse('{"type": "resume", "run_id": "run_1", "after_seq": 4}') == ResumeFrame(
        type="resume", run_id="run_1", after_seq=4)
    assert parse('{"type": "resume", "run_id": "run_1"}').after_seq == 0
    assert parse('{"type": "ping", "x": 1}') == PingFrame(type="ping")


def test_a_cursor_resumes_everything_so_run_id_and_after_seq_are_not_read() -> None:
    frame = parse('{"type": "resume", "cursor": "00042", "run_id": 7, "after_seq": "x"}')
    assert frame == ResumeFrame(type="resume", cursor="00042")


def test_the_edge_policy_holds_for_frames_whichever_parser_reads_them() -> None:
    # pydantic's parser reads plain frames alone; what it would refuse or miss goes the careful way.
    nul = refused('{"type": "chat", "message": "a\\u0000b", "client_message_id": "cm_1"}')
    assert (nul.code, nul.client_message_id) == ("invalid_message", "cm_1")
    assert "'message'" in nul.message
    assert refused('{"type": "chat", "message": "\\ud800"}').code == "invalid_message"
    assert refused('{"type": "ping", "x": {"\\udfff": 1}}').code == "invalid_message"
    assert refused('{"type": "cancel", "client_message_id": "a\\u0000"}').client_message_id is None
    assert refused('{"type": "ping", "x": ' + "[" * 32 + "]" * 32 + "}").code == "invalid_json"
    assert parse('{"type": "ping", "x": ' + "[" * 31 + "]" * 31 + "}") == PingFrame(type="ping")
    assert parse('{"type": "chat", "message": "\\ud83d\\ude00 \\u200f"}').message == "\U0001f600 \u200f"
    assert parse('{"type": "ping", "x": NaN}') == PingFrame(type="ping")
    # A repeated key: the last one counts, as json.loads has it.
    assert "'message'" in refused('{"type": "ping", "type": "chat"}').message


@pytest.mark.parametrize("raw", ["{", "", '{"type": "ping",}', '\ufeff{"type": "ping"}',
                                 '{"type": "ping"} {"type": "ping"}', "[" * 100_000])
def test_what_is_not_json_is_invalid_json(raw: str) -> None:
    assert refused(raw).code == "invalid_json"


@pytest.mark.parametrize("raw", ["[1, 2]", "null", '"chat"', "1e999", "{}", '{"type": 7}', '{"type": null}'])
def test_a_frame_that_is_no_object_with_a_string_type_is_invalid_message(raw: str) -> None:
    assert refused(raw).code == "invalid_message"


def test_an_unknown_type_is_unknown_type_and_names_the_known_ones() -> None:
    error = refused('{"type": "dance", "client_message_id": "cm_9"}')
    assert error.code == "unknown_type" and error.client_message_id == "cm_9"
    assert "chat, cancel, resume, approval or ping" in error.message
    assert refused('{"type": "auth", "token": "t"}').code == "unknown_type"  # only as the first frame
    assert refused('{"type": "CHAT", "message": "hi"}').code == "unknown_type"


@pytest.mark.parametrize(("frame", "field"), [
    ({"type": "chat"}, "message"),
    ({"type": "chat", "message": 42}, "message"),
    ({"type": "chat", "message": "hi", "thread_id": 5}, "thread_id"),
    ({"type": "chat", "message": "hi", "thread_id": "x" * 129}, "thread_id"),
    ({"type": "chat", "message": "hi", "client_message_id": ""}, "client_message_id"),
    ({"type": "chat", "message": "hi", "multitask": "queue"}, "multitask"),
    ({"type": "chat", "message": "hi", "multitask": 1}, "multitask"),
    ({"type": "cancel", "run_id": ["run_1"]}, "run_id"),
    ({"type": "resume", "cursor": ""}, "cursor"),
    ({"type": "resume", "run_id": "run_1", "after_seq": -1}, "after_seq"),
    ({"type": "resume", "run_id": "run_1", "after_seq": True}, "after_seq"),
    ({"type": "resume", "run_id": "run_1", "after_seq": 1.0}, "after_seq"),
    ({"type": "resume", "run_id": "run_1", "after_seq": 2**31}, "after_seq"),
    ({"type": "resume", "run_id": "run_1", "after_seq": None}, "after_seq"),
])
def test_a_bad_field_is_invalid_message_naming_the_field(frame: dict, field: str) -> None:
    error = refused(json.dumps(frame))
    assert error.code == "invalid_message"
    assert f"'{field}'" in error.message and frame["type"] in error.message


def test_cancel_and_resume_say_what_they_need() -> None:
    assert "'run_id' or 'client_message_id'" in refused('{"type": "cancel"}').message
    assert "'cursor'" in refused('{"type": "resume", "after_seq": 3}').message


def test_a_refused_frame_still_names_its_client_message_id_cut_to_size() -> None:
    long_id = "k" * 300
    error = refused(json.dumps({"type": "chat", "message": 1, "client_message_id": long_id}))
    assert error.client_message_id == long_id[:128]
    assert refused('{"type": "chat", "client_message_id": 5}').client_message_id is None


def test_the_first_frame_of_a_socket_may_carry_the_token() -> None:
    assert parse_auth('{"type": "auth", "token": "tok"}').token == "tok"
    assert refused('{"type": "auth", "token": 5}', auth=True).code == "invalid_message"
    assert refused('{"type": "ping"}', auth=True).code == "unknown_type"
    assert refused("[" * 100_000, auth=True).code == "invalid_json"
