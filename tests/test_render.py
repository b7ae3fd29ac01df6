# Rendering of handler results: pure unit tests of _render, then the same rules seen through a
# real socket, where what matters is that every reply is whole and ends with a newline.
from __future__ import annotations

import collections
import enum
import json
import math
from collections.abc import Mapping

import pytest

from conftest import RawClient
from reactor_mgmt import CommandError
from reactor_mgmt._render import json_line, render_table, render_text, to_jsonable
from reactor_mgmt._wire import text_reply


class Color(enum.Enum):
    red = 1
    green = "g"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


# ---- render_text ----


@pytest.mark.parametrize(
    "value, expected",
    [
        ("hello", "hello\n"),
        ("hello\n", "hello\n"),
        ("", "\n"),
        (None, "OK\n"),
        (42, "42\n"),
        (2.5, "2.5\n"),
        (True, "True\n"),
        (False, "False\n"),
        (Color.red, "red\n"),
        (b"raw bytes", "raw bytes\n"),
    ],
)
def test_scalars(value, expected):
    assert render_text(value) == expected


def test_str_subclass_is_text():
    class Name(str):
        pass

    assert render_text(Name("bob")) == "bob\n"


def test_multiline_text_keeps_every_line():
    text = "one\ntwo\n\nfour"
    assert render_text(text) == "one\ntwo\n\nfour\n"
    assert render_text(text).count("\n") == 4


def test_carriage_returns_become_newlines():
    assert render_text("a\r\nb\rc") == "a\nb\nc\n"


def test_dict_is_aligned_key_value_lines():
    assert render_text({"a": 1, "longer": "x", "none": None}) == "a:      1\nlonger: x\nnone:   -\n"


def test_dict_multiline_value_is_indented_under_the_value_column():
    out = render_text({"k": "first\nsecond", "key2": 3})
    assert out == "k:    first\n      second\nkey2: 3\n"


def test_dict_float_and_enum_cells():
    assert render_text({"rate": 1 / 3, "color": Color.green}) == "rate:  0.333333\ncolor: green\n"


def test_a_float_of_a_million_or_more_keeps_every_digit():
    # An uptime in seconds passes a million after 12 days: %.6g printed it as 1e+06, the same
    # for hours, and a timestamp as 1.7e+09. Below a million, six digits, as before.
    status = {"uptime_s": 1000123.4, "started": 1700000000.125, "load": 0.75, "ratio": -1 / 3, "near": 999999.7}
    assert render_text(status) == (
        "uptime_s: 1000123.4\nstarted:  1700000000.125\nload:     0.75\nratio:    -0.333333\nnear:     999999.7\n"
    )
    table = render_text([{"bytes": 12345678.0}, {"bytes": float("inf")}, {"bytes": float("nan")}, {"bytes": 1e-7}])
    assert table == "bytes\n12345678.0\ninf\nnan\n1e-07\n"


def test_empty_containers_still_give_a_newline():
    assert render_text({}) == "\n"
    assert render_text([]) == "\n"


@pytest.mark.parametrize("value", [["a", "b", 3], ("a", "b", 3)])
def test_list_and_tuple_one_item_per_line(value):
    assert render_text(value) == "a\nb\n3\n"


def test_list_item_with_newlines_keeps_its_lines():
    assert render_text(["x\ny", "z\n"]) == "x\ny\nz\n"


def test_list_of_dicts_is_a_table_with_header():
    rows = [{"id": 1, "name": "backup", "done": None}, {"id": 22, "name": "re", "extra": 1.5}]
    assert render_text(rows) == ("id  name    done  extra\n1   backup  -     -\n22  re      -     1.5\n")


def test_table_cells_with_newlines_stay_on_their_row():
    out = render_table([{"a": "x\ny", "b": 1}])
    assert out.splitlines() == ["a    b", "x y  1"]


# A CRLF or a lone CR in a result is a line break, laid out as LF is, on every path: a text
# reply's lines end in LF (docs/protocol.md), and a raw CR would have a terminal write over
# what it showed. Each value below holds CRs; the same value with LF in their place is what it
# must render as.
class _Text(str):
    pass


def _with_lf(value):
    if isinstance(value, str):
        return value.replace("\r\n", "\n").replace("\r", "\n")
    if isinstance(value, bytes):
        return value.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if isinstance(value, dict):
        return {_with_lf(key): _with_lf(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_lf(item) for item in value]
    return value


_WITH_CR = [
    "a\r\nb\rc\r",
    _Text("a\rb"),
    b"a\r\nb\rc",
    {"key": "a\rb", "k2": 1},  # the fast path (a format per set of keys)
    {"key": "a\r\nb\r\n\rc", "k2": "d"},
    {1: "a\rb", "k": 2},  # the lines path (a key that is not str)
    {"ke\ry": 1, "k": 2},  # a key's CR too
    {f"k{i}": f"v\r{i}" for i in range(70)},  # the lines path (too many keys to keep a format for)
    ["a\r\n", "b\rc", "d\r"],  # list items: trailing CRLF dropped as a trailing LF is
    [{"a": "x\r\ny", "b": 1}, {"a": "zz", "b": "p\rq"}],  # a table: each row one line
    [{"col\r\numn": 1}],  # a header cell
]


@pytest.mark.parametrize("value", _WITH_CR)
def test_a_carriage_return_is_a_line_break_laid_out_as_lf_is(value):
    text = render_text(value)
    assert "\r" not in text
    assert text == render_text(_with_lf(value))


def test_table_cells_with_carriage_returns_stay_on_their_row():
    out = render_table([{"a": "x\r\ny", "b": 1}, {"a": "zz", "b": "p\rq"}])
    assert out.splitlines() == ["a    b", "x y  1", "zz   p q"]
    assert "\r" not in out
    assert render_table([{"a\rb": 1}]) == "a b\n1"


def test_mapping_values_with_carriage_returns_keep_their_lines_under_the_value_column():
    assert render_text({"key": "a\rb", "k2": 1}) == "key: a\n     b\nk2:  1\n"
    assert render_text({"key": "a\r\nb", 2: 1}) == "key: a\n     b\n2:   1\n"


def test_a_str_reply_has_its_carriage_returns_as_line_breaks_as_render_text_does():
    for text in ["a\rb", "a\r\nb\r", "a\r\n", "\r"]:
        assert text_reply(text) == render_text(text).encode() == render_text(_Text(text)).encode()
    assert text_reply("a\r\nb\rc") == b"a\nb\nc\n"


def test_tables_and_mappings_align_by_the_columns_a_terminal_gives_each_character():
    # Padded by len(), a CJK name (two columns a character) or an accent written as a
    # combining mark (none) pushed the next column out of line.
    rows = [{"name": "日本語", "score": 1}, {"name": "bob", "score": 2}, {"name": "e\u0301mile", "score": 3}]
    assert render_table(rows) == "name    score\n日本語  1\nbob     2\ne\u0301mile   3"
    assert render_text({"名前": "x", "id": "y"}) == "名前: x\nid:   y\n"
    assert render_text({"名前": "a\nb", "id": 1}) == "名前: a\n      b\nid:   1\n"  # a value's lines too


def test_table_with_explicit_columns():
    assert render_table([{"a": 1, "b": 2}], columns=["b", "a"]) == "b  a\n2  1"


def test_mixed_list_is_not_a_table():
    assert render_text([{"a": 1}, "plain"]) == "{'a': 1}\nplain\n"


def test_unprintable_result_does_not_raise(caplog):
    assert render_text(Unprintable()) == "<unprintable Unprintable object>\n"
    assert render_text({"k": Unprintable()}) == "k: <unprintable Unprintable object>\n"
    assert "Unprintable" in caplog.text


def test_every_render_ends_with_newline():
    for value in ["", "x", "x\n\n", None, 0, {}, [], {"a": "b\n"}, ["a\n"], [{"a": 1}], Color.red, 1e100]:
        out = render_text(value)
        assert out.endswith("\n"), value
        assert not out.endswith("\n\n") or value == "x\n\n", value


# ---- JSON ----


def test_to_jsonable_walks_containers():
    value = {"t": (1, 2), "s": frozenset([3]), "e": Color.green, 4: b"by", Color.red: None}
    assert to_jsonable(value) == {"t": [1, 2], "s": [3], "e": "g", "4": "by", "red": None}


def test_to_jsonable_falls_back_to_str():
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    assert to_jsonable([Thing()]) == ["a thing"]
    assert to_jsonable(Unprintable()) == "<unprintable Unprintable object>"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_not_sent_as_bare_nan(value):
    line = json_line({"id": 1, "ok": True, "result": to_jsonable({"x": value})})
    parsed = json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in {line!r}"))
    assert parsed["result"]["x"] == str(value)


def test_json_line_is_one_line_even_with_newlines_in_values():
    line = json_line({"id": None, "ok": True, "result": to_jsonable("a\nb\u2028c")})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["result"] == "a\nb\u2028c"


def test_json_line_nan_id_is_converted():
    line = json_line({"id": math.nan, "ok": True, "result": None})
    assert json.loads(line, parse_constant=lambda name: pytest.fail(name))["id"] == "nan"


def test_to_jsonable_self_referencing_list():
    loop: list = [1]
    loop.append(loop)
    assert to_jsonable(loop) == "[1, [...]]"


# ---- through a socket ----


@pytest.fixture
def rendering_server(server):
    results = {
        "text": "plain",
        "none": None,
        "number": 7,
        "flag": False,
        "mapping": {"alpha": 1, "b": "two"},
        "items": ["x", "y"],
        "table": [{"name": "a", "n": 1}, {"name": "bbb", "n": 20}],
        "multi": "l1\nl2\nl3",
        "broken": Unprintable(),
        "surrogate": "name-\udcff",
    }
    for name, value in results.items():
        server.add_command(name, lambda value=value: value)

    @server.command
    def fail() -> None:
        raise CommandError("it went wrong")

    return server


@pytest.mark.parametrize(
    "command, lines",
    [
        ("text", ["plain"]),
        ("none", ["OK"]),
        ("number", ["7"]),
        ("flag", ["False"]),
        ("mapping", ["alpha: 1", "b:     two"]),
        ("items", ["x", "y"]),
        ("table", ["name  n", "a     1", "bbb   20"]),
        ("multi", ["l1", "l2", "l3"]),
        ("fail", ["ERR it went wrong"]),
        ("broken", ["<unprintable Unprintable object>"]),
        ("surrogate", ["name-\\udcff"]),
    ],
)
def test_rendered_over_the_socket(rendering_server, command, lines):
    client = RawClient(rendering_server)
    try:
        # A ping after each request proves the reply ended with a newline and nothing was lost
        # or left over: the next line is exactly pong.
        client.send(f"{command}\nping\n")
        assert client.lines(len(lines) + 1) == lines + ["pong"]
        client.pump(3)
        assert client.buffer == b""
    finally:
        client.close()


def test_same_values_as_json_over_the_socket(rendering_server):
    client = RawClient(rendering_server)
    try:
        for command, expected in [
            ("none", None),
            ("number", 7),
            ("mapping", {"alpha": 1, "b": "two"}),
            ("table", [{"name": "a", "n": 1}, {"name": "bbb", "n": 20}]),
            ("broken", "<unprintable Unprintable object>"),
        ]:
            client.send(json.dumps({"cmd": command, "id": command}) + "\n")
            (line,) = client.lines(1)
            assert json.loads(line) == {"id": command, "ok": True, "result": expected}
        client.send('{"cmd": "fail", "id": 1}\n')
        assert json.loads(client.lines(1)[0]) == {
            "id": 1,
            "ok": False,
            "error": {"code": "error", "message": "it went wrong"},
        }
    finally:
        client.close()


# ---- the flat-dict fast paths, pinned to the general path ----
# render_text and to_jsonable test for a dict of plain values (what `status` returns) by exact
# class first; a Mapping that is not a dict, and values of subclasses, take the general path.
# Both must give the same bytes.


class _Str(str):
    pass


class _Int(int):
    pass


_FLAT = [
    {"service": "reactor-bench", "workers": 4, "load": 0.75, "ok": True, "none": None},
    {"a": "x\ny", "bb": None, 3: True, "big": 10**30, "neg": -1.5e-9},
    {"nan": float("nan"), "inf": float("inf"), "multi": "one\ntwo\nthree"},
    {},
]


@pytest.mark.parametrize("value", _FLAT)
def test_the_flat_dict_fast_path_renders_as_the_general_path(value):
    import types

    general = types.MappingProxyType(value)  # a Mapping, not a dict: the general path
    assert render_text(value) == render_text(general)
    assert to_jsonable(value) == to_jsonable(dict(general.items())) == to_jsonable(general)
    subclassed = {(_Str(k) if isinstance(k, str) else k): (_Int(v) if type(v) is int else v) for k, v in value.items()}
    assert render_text(subclassed) == render_text(value)
    assert json_line({"id": 1, "result": to_jsonable(subclassed)}) == json_line({"id": 1, "result": to_jsonable(value)})


# ---- the format made once per set of keys, pinned to the line-by-line rendering ----


class _Shown(str):
    def __str__(self) -> str:
        return f"<{str.__str__(self)}>"


class _Color(str, enum.Enum):
    RED = "red"


_KEYED = _FLAT + [
    {"pct%": "5%s", "%(x)s": 1, "w": "a%%b", "%d": 2.5},
    {"only": "one"},
    {"same": 1, "keys": 2},
    {"same": "a\nb", "keys": 2},  # the same keys as above, a value with lines: indented, not cached text
    {f"key{i}": i for i in range(70)},  # too many keys to keep a format for
    {"a": _Str("s"), _Str("b"): _Int(3)},
    {_Shown("same"): 1, "keys": 2},  # equal to a cached set of keys, but not all exactly str
    {_Color.RED: 1, "keys": 2},  # a StrEnum equal to "red"
    {"red": 1, "keys": 2},
    {_Color.RED: 1, "keys": 2},  # after "red" was cached
    {"x" * 5000: 1},  # a format too long to keep
    {"yes": True, "no": False, "n": -7, "big": 2**70},  # given to % as they are
    {"huge": 10**5000, "n": 1},  # past str()'s digit limit (3.11+): % raises, the lines say so
]


@pytest.mark.parametrize("value", _KEYED)
def test_the_format_made_once_per_set_of_keys_renders_as_line_by_line(value):
    from reactor_mgmt._render import _render_mapping, _render_mapping_lines

    first = _render_mapping(value)  # makes the format, where its keys allow one
    assert _render_mapping(value) == first == _render_mapping_lines(value)  # and from the kept format


def test_the_kept_formats_are_bounded():
    from reactor_mgmt import _render

    for i in range(3 * _render._FORMATS_MAX):
        assert render_text({f"conn {i}": i}) == f"conn {i}: {i}\n"
    assert 0 < len(_render._FORMATS) <= _render._FORMATS_MAX
    render_text({f"key{i}": i for i in range(_render._FORMAT_KEYS_MAX + 1)})
    render_text({"k" * (_render._FORMAT_CHARS_MAX + 1): 1})
    assert not any(len(keys) > _render._FORMAT_KEYS_MAX for keys in _render._FORMATS)
    assert all(len(fmt) <= _render._FORMAT_CHARS_MAX for fmt in _render._FORMATS.values())


def test_another_mapping_uses_the_kept_format_and_keeps_it():
    from reactor_mgmt import _render

    value = collections.OrderedDict([("ordered", 1), ("mapping", 2)])
    assert render_text(value) == "ordered: 1\nmapping: 2\n"
    kept = _render._FORMATS[("ordered", "mapping")]
    assert render_text(value) == "ordered: 1\nmapping: 2\n"
    assert _render._FORMATS[("ordered", "mapping")] is kept  # found, not made and stored again


class _Named:
    """A careless key: hashed as its name, so it meets the cached str keys, and an __eq__ that
    raises against anything without a name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return self.name == other.name  # type: ignore[attr-defined, no-any-return]

    def __str__(self) -> str:
        return self.name


def test_a_dict_key_whose_eq_raises_on_a_cached_key_still_renders():
    assert render_text({"cpu": 1, "mem": 2}) == "cpu: 1\nmem: 2\n"  # the format is kept
    assert render_text({_Named("cpu"): 3, _Named("mem"): 4}) == "cpu: 3\nmem: 4\n"


def test_a_mapping_with_unhashable_keys_still_renders():
    class Pairs(Mapping):  # a host's own Mapping, whose keys are lists
        def __init__(self) -> None:
            self.items_ = [(["a"], 1), (["b"], 2)]

        def __getitem__(self, key):
            return dict((tuple(k), v) for k, v in self.items_)[tuple(key)]

        def __iter__(self):
            return iter([k for k, _ in self.items_])

        def __len__(self) -> int:
            return len(self.items_)

    assert render_text(Pairs()) == "['a']: 1\n['b']: 2\n"


# ---- the kept JSON encoder, pinned to the public one ----

_PAYLOADS = [
    {"id": 1, "ok": True, "result": {"service": "x", "load": 0.75, "n": 4, "none": None, "b": False}},
    {"id": "é\u2028", "ok": True, "result": ["a\nb", {"nested": [1, 2.5, {"deep": "ü"}]}]},
    {"id": None, "ok": False, "error": {"code": "internal", "message": 'quote " and \\ backslash'}},
    {"id": 10**20, "item": [], "stream": True},
]


@pytest.mark.parametrize("payload", _PAYLOADS)
def test_the_kept_encoder_writes_what_json_dumps_writes(payload):
    expected = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(", ", ": ")) + "\n"
    assert json_line(payload) == expected.encode()
    assert json_line(payload) == expected.encode()  # and again, with the encoder kept


def test_the_kept_encoder_recovers_after_a_reply_it_cannot_encode():
    """A failed encode leaves the C encoder's circular-reference markers behind (the ids of the
    containers it was in), so a later reply holding one of them would look circular: a failure
    makes a new encoder."""
    from reactor_mgmt import _render

    held = [object()]  # not JSON: the kept encoder fails inside this list
    assert json_line({"id": 1, "ok": True, "result": held}).startswith(b'{"id": 1, "ok": true')  # degraded
    held[0] = "fine"
    encoder = _render._iterencode or _render._make_iterencode()  # what the next reply is encoded with
    assert "".join(encoder({"id": 2, "result": held}, 0)) == '{"id": 2, "result": ["fine"]}'
