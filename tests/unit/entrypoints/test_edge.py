"""The edge policy: valid Unicode without NUL, JSON at most 32 deep, one code for each kind of fault."""

from __future__ import annotations

import pytest

from entrypoints.edge import MAX_JSON_DEPTH, check_text, load_json, plain
from entrypoints.errors import ApiError


def refused(raw: str | bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        load_json(raw, "The body")
    return caught.value


@pytest.mark.parametrize("text", ["", "hi", "\U0001f600", "\u200f\u202eabc", "\u05e9\u05dc\u05d5\u05dd",
                                  "\t"])
def test_valid_text_passes_unchanged(text: str) -> None:
    assert check_text(text, "'x'") == text


@pytest.mark.parametrize("text", ["\x00", "a\x00b", "\ud800", "x\udfffy", "\udc00\ud800"])
def test_nul_and_lone_surrogates_are_invalid_message_naming_where(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        check_text(text, "'thread_id'")
    assert caught.value.code == "invalid_message" and caught.value.message.startswith("'thread_id' ")


@pytest.mark.parametrize(("raw", "where"), [
    ('{"message": "a\\u0000b"}', "'message'"),
    ('{"a": [{"b": "\\ud800"}]}', "'a[0].b'"),
    ('{"\\u0000": 1}', "a field name in the body"),
    ('"\\udfff"', "The body"),
])
def test_every_string_of_a_document_is_checked_keys_too(raw: str, where: str) -> None:
    error = refused(raw)
    assert error.code == "invalid_message" and error.message.startswith(where), error.message


def test_a_document_nests_at_most_32_levels() -> None:
    assert load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "The body")
    assert refused("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)).code == "invalid_json"
    assert "deeper than 32" in refused('{"a": ' * 40 + "1" + "}" * 40).message
    assert "deeper than 32" in refused("[" * 100_000).message  # past the parser's own recursion


@pytest.mark.parametrize("raw", [b'{"message": "\xc0\xaf"}', b'"\xed\xa0\x80"', b"\xff", b"{", b"",
                                 b'\xef\xbb\xbf{"a": 1}', "1" * 5000, '{"a": "\x00"}'])
def test_what_is_not_json_in_utf8_is_invalid_json(raw: str | bytes) -> None:
    assert refused(raw).code == "invalid_json"


def test_numbers_are_left_to_the_schema_that_reads_them() -> None:
    assert load_json("[1e999, 10" + "0" * 400 + "]", "The body") == [float("inf"), 10**401]


@pytest.mark.parametrize(("raw", "is_plain"), [
    ('{"type": "ping"}', True), ('{"m": "\\u00e9"}', False), ("[" * 33, False), ("[" * 32, True),
    ('{"m": "caf\u00e9 \U0001f600"}', True),
])
def test_plain_is_what_a_parser_that_does_not_check_may_read(raw: str, is_plain: bool) -> None:
    assert plain(raw) is is_plain
