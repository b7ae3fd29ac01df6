# The wire envelope without I/O: what the server's framing functions send comes back through
# read_frame (the client's only reader of reply lines) as the same kind, id and value, and lines
# that are not reply frames read as plain text.
from __future__ import annotations

import pytest

from reactor_mgmt import _wire
from reactor_mgmt._wire import (
    END,
    ERROR,
    ITEM,
    OPEN,
    RESULT,
    TEXT,
    end_frame,
    err_line,
    error_reply,
    frame_of,
    item_frame,
    ok_frame,
    read_err_line,
    read_frame,
    reply_id_of,
    stream_open_frame,
    text_reply,
)


def line_of(data: bytes) -> str:
    """One sent line as a client's LineReader hands it over: decoded, without its newline."""
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return data[:-1].decode("utf-8", "replace")


# ---- framing functions round-trip through read_frame ----


@pytest.mark.parametrize("reply_id", [1, 2, 0, "abc", None, 1.5, [1, "x"]])
def test_each_frame_reads_back_as_its_kind_id_and_value(reply_id):
    assert read_frame(line_of(stream_open_frame(reply_id))) == (OPEN, reply_id, None)
    assert read_frame(line_of(item_frame(reply_id, {"n": [1, 2]}))) == (ITEM, reply_id, {"n": [1, 2]})
    assert read_frame(line_of(item_frame(reply_id, None))) == (ITEM, reply_id, None)
    assert read_frame(line_of(ok_frame(reply_id, "é ✓"))) == (RESULT, reply_id, "é ✓")
    assert read_frame(line_of(ok_frame(reply_id, None))) == (RESULT, reply_id, None)
    assert read_frame(line_of(end_frame(reply_id, 0))) == (END, reply_id, 0)
    assert read_frame(line_of(end_frame(reply_id, 7))) == (END, reply_id, 7)
    assert read_frame(line_of(error_reply(reply_id, "usage", "bad args"))) == (
        ERROR,
        reply_id,
        {"code": "usage", "message": "bad args"},
    )


def test_a_text_request_gets_an_err_line_which_reads_as_text():
    data = error_reply(TEXT, "usage", "bad args")
    assert data == err_line("bad args") == b"ERR bad args\n"
    assert read_frame(line_of(data)) is None
    assert read_err_line(line_of(data)) == "bad args"


@pytest.mark.parametrize(
    "message, sent",
    [
        ("two\nlines", "two lines"),
        ("a\r\nb  c\rd", "a b c d"),
        ("", ""),
        ('{"id": 1, "ok": false}', '{"id": 1, "ok": false}'),
    ],
)
def test_err_line_is_always_one_line_and_reads_back(message, sent):
    data = err_line(message)
    assert read_err_line(line_of(data)) == sent
    assert read_frame(line_of(data)) is None  # an ERR line is never a frame, whatever it quotes


def test_a_lone_surrogate_is_escaped_not_raised():
    assert read_err_line(line_of(err_line("x\udc80y"))) == "x\\udc80y"
    assert read_frame(line_of(ok_frame(3, "x\udc80y"))) == (RESULT, 3, "x\udc80y")


def test_read_err_line_wants_the_exact_prefix():
    for line in ("ERR", "ERR:", "err x", " ERR x", "ERRx", ""):
        assert read_err_line(line) is None
    assert read_err_line("ERR ") == ""


def test_text_reply_ends_with_one_newline_and_is_not_a_frame():
    assert text_reply("hi") == text_reply("hi\n") == b"hi\n"
    assert read_frame("hi") is None


# ---- read_frame on lines the server did not frame ----


@pytest.mark.parametrize(
    "line",
    [
        "",
        "plain text",
        '  {"id": 1, "ok": true}',
        "{not json",
        '{"id": 1, "ok"',
        "[1]",
        "{}",
        '{"ok": true}',
        '{"item": 1}',
        '{"stream": true}',
        '{"id": 1}',  # an id and none of ok/item/stream: raw text from a handler, not a reply
        '{"id": 1, "result": 3}',
        "{" + "[" * 100000,  # unreadable however deep it goes
        '{"id": 1, "item": ' + "[" * 100000 + "]" * 100000 + "}",  # nesting json cannot decode
    ],
)
def test_lines_that_are_not_frames_read_as_text(line):
    assert read_frame(line) is None


@pytest.mark.parametrize(
    "line, frame",
    [
        # "ok" decides first: any falsy ok is an error, and a malformed error object reads as {}
        ('{"id": 1, "ok": false}', (ERROR, 1, {})),
        ('{"id": 1, "ok": null, "error": "oops"}', (ERROR, 1, {})),
        ('{"id": 1, "ok": 0, "error": {"code": "c"}, "items": 2}', (ERROR, 1, {"code": "c"})),
        ('{"id": 1, "ok": true, "items": 2, "result": 9}', (END, 1, 2)),
        ('{"id": 1, "ok": "yes"}', (RESULT, 1, None)),
        ('{"id": 1, "ok": true, "item": 5}', (RESULT, 1, None)),
        # without "ok": an item before a stream opening, and any "stream" value opens one
        ('{"id": 1, "item": 5, "stream": true}', (ITEM, 1, 5)),
        ('{"id": 1, "stream": false}', (OPEN, 1, None)),
        (
            '{"id": null, "ok": false, "error": {"code": "parse", "message": "m"}}',
            (ERROR, None, {"code": "parse", "message": "m"}),
        ),
        ('{"id": "7", "item": "x"}', (ITEM, "7", "x")),
    ],
)
def test_the_kind_of_a_frame(line, frame):
    assert read_frame(line) == frame


def test_frame_of_classifies_a_decoded_line_as_read_frame_does():
    assert frame_of({"id": 2, "ok": True, "result": [1]}) == (RESULT, 2, [1])
    assert frame_of({"id": 2}) is None
    assert frame_of([1, 2]) is None
    assert frame_of("text") is None


# ---- the server's side ----


@pytest.mark.parametrize(
    "line, reply_id",
    [
        ("ping", TEXT),
        (b'{"id": 1}', TEXT),
        ('{"id": 4, "cmd": "x"}', 4),
        ('{"cmd": "x"}', None),
        ("{nope", None),
        ("[1]", TEXT),
        ("{}", None),
        ("{" + "[" * 100000, None),
    ],
)
def test_reply_id_of(line, reply_id):
    assert reply_id_of(line) == reply_id


def test_wire_imports_nothing_from_the_package_but_render():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(_wire))
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert modules == {"_render"}
