# The caches that remain must give exactly what the general path gives (issue 16). The one
# cache left in the library is the registry's line cache (Registry.parse: request line ->
# command and argument words, for lines with no quoting); Server(_caches=False) turns it off.
# These tests pin the two together: a mixed transcript, byte for byte, with the cache on and
# off; the cache's own rules (levels and authentication per connection, cleared when commands
# change, no quoted lines, bounded); and the other speed paths that stay, each against its
# general path: the decoder's plain-read paths, the transport's try-send-now, the direct
# epoll wait against the selectors API, and JSON requests' direct scanner call against
# json.loads.
#
# conftest.py runs every other module's fixture-served tests with the cache on and off
# ([cached], [uncached]); this module builds both kinds of server itself, or asks for both
# runs by hand with CACHE_MODES.
from __future__ import annotations

import selectors
import socket
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reactor_mgmt
from conftest import CACHE_MODES, RawClient
from reactor_mgmt import CommandError, Pending
from reactor_mgmt._protocol import RequestDecoder, _needs_strip

MODES = (True, False)  # _caches: on, then off


def _add_probe_commands(server: reactor_mgmt.Server) -> None:
    @server.command
    def info():
        return {"answer": 42, "name": "probe"}

    @server.command
    def boom():
        raise RuntimeError("boom")

    @server.command
    def refuse():
        raise CommandError("refused on purpose")

    @server.command(level="admin")
    def secret():
        return "the secret"

    @server.command
    def later():
        pending = Pending()
        pending.resolve("done later")
        return pending

    @server.command
    def shout(*words):
        return " ".join(words).upper() + "\n"


LINES = ["ping", "echo a  b", "info", "boom", "refuse", "secret", "later", "shout x y", "echo"]


def _replies(client: RawClient, lines) -> bytes:
    client.buffer = b""
    client.send("".join(line + "\n" for line in lines) + "ping\n")
    # The trailing ping marks the end of this batch's replies.
    client.wait_for(lambda buf: buf.endswith(b"pong\n") and buf.count(b"\n") >= len(lines) + 1)
    return client.buffer


def _pipeline(server: reactor_mgmt.Server, requests: list) -> list:
    client = RawClient(server)
    client.send("".join(line + "\n" for line in requests) + "ping\n")
    client.wait_for(lambda buf: buf.endswith(b"pong\n") and buf.count(b"pong\n") >= 1 + requests.count("ping"))
    client.close()
    return client.buffer.decode().split("\n")[:-1]


def test_the_switch_turns_the_line_cache_off(make_server):
    assert make_server("127.0.0.1", _caches=True).registry.line_cache == {}
    assert make_server("127.0.0.1", _caches=False).registry.line_cache is None
    with reactor_mgmt.Server("127.0.0.1", 0) as default:
        assert default.registry.line_cache == {}  # on by default
    assert make_server("127.0.0.1").registry.line_cache is not None  # this module runs once, cached


@CACHE_MODES
def test_the_fixtures_follow_the_mode(caches, server, make_server):
    """What conftest's [cached]/[uncached] runs rely on: the fixtures' servers follow the mode."""
    for srv in (server, make_server("127.0.0.1")):
        assert (srv.registry.line_cache is not None) is caches
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    assert ("ping" in server.registry.line_cache) if caches else server.registry.line_cache is None
    client.close()


# ---- a whole transcript, with the cache on and off ----


def _add_transcript_commands(server: reactor_mgmt.Server, calls: list) -> None:
    _add_probe_commands(server)

    class Text(str):
        pass

    @server.command
    def tick():
        calls.append("tick")
        return f"tick {len(calls)}"

    @server.command(level="operator")
    def opcmd(*words):
        calls.append(("opcmd", words))
        return "operator says " + " ".join(words)

    @server.command
    def add(a: int, b: int = 1, *, times: int = 1):
        calls.append(("add", a, b, times))
        return (a + b) * times

    @server.command
    def countdown(n: int):
        calls.append(("countdown", n))
        return (f"{i}..." for i in range(n, 0, -1))

    @server.command
    def slow(word: str = "slow"):
        pending = Pending()
        server.call_later(0.02, pending.resolve, word + " done")
        return pending

    @server.command
    def expire():
        return Pending(timeout=0.05)

    @server.command(name="show players")
    def show_players():
        return [{"name": "Big Bob", "score": 3}, {"name": "Al", "score": 12}]

    @server.command
    def sub():
        return Text("sub\rcr")

    @server.command
    def plain():
        return "plain\rcr"


# At admin level: plain, quoted, odd-spaced and non-ASCII lines; JSON with cmd and argv;
# unknown commands, usage errors, a handler that raises, a refusal, a parse error; a Pending
# resolved at once, one resolved by a timer and one that times out; streams, as text and JSON.
_BODY = [
    "ping",
    "echo a  b",
    "echo 'a  b' \"c d\"",
    "echo a\x0bb",
    "echo café  au lait",
    "  echo padded  ",
    "echo\ttab",
    "info",
    "show players",
    "show",
    "show nobody",
    "stauts",
    "nope",
    "help show",
    "help add",
    "add 2",
    "add 2 3",
    "add 2 3 --times 4",
    "add 2 --times=3",
    "add x",
    "add 1 2 3",
    "add 1 --bogus",
    "boom",
    "refuse",
    "later",
    "slow",
    "slow quick",
    "expire",
    "countdown 3",
    "countdown 0",
    "countdown -1",
    "tick",
    "tick",
    "sub",
    "plain",
    "shout x  y",
    'echo "unbalanced',
    "echo",
    "echo --",
    "echo --force",
    '{"cmd": "ping", "id": 1}',
    '{"cmd": "echo", "args": ["a  b", 2], "id": "two"}',
    '{"cmd": "add", "args": [2], "kwargs": {"times": 5}, "id": 3}',
    '{"argv": ["add", "2", "--times", "3"], "id": 4}',
    '{"argv": ["echo", "a  b"]}',
    '{"cmd": "show players", "id": 5}',
    '{"cmd": "countdown", "args": [2], "id": 6}',
    '{"cmd": "slow", "id": 7}',
    '{"cmd": "nope", "id": 8}',
    '{"cmd": "boom", "id": 9}',
    '{"cmd": "refuse"}',
    '{"cmd": "add", "args": ["x"], "id": 10}',
    '{"cmd": ',
    "[1, 2]",
    '{"argv": []}',
    '{"cmd": "later", "id": 11}',
]
# Authentication first; then the level going down, with the same lines asked before and after.
_TRANSCRIPT = (
    ["secret", "ping", "help", "opcmd x", '{"cmd": "secret", "id": 0}', "auth wrong", "auth s3cret"]
    + _BODY
    + ["secret", "opcmd a  b"]
    + _BODY  # the second time round, the cache is warm
    + [
        "level",
        "level operator",
        "secret",
        '{"cmd": "secret", "id": 12}',
        '{"argv": ["secret"]}',
        "help secret",
        "opcmd a  b",
        "opcmd x",
        "level admin",
        "level user",
        "opcmd a  b",
        '{"argv": ["opcmd", "y"]}',
        "help",
        "secret",
        "info",
        "tick",
        "level",
        "nope",
        "stauts",
    ]
    + ["GET / HTTP/1.1"]  # last: closes the connection, after the replies to every line before it
)


def _transcript_server(make_server, caches: bool, calls: list) -> reactor_mgmt.Server:
    server = make_server("127.0.0.1", level="admin", token="s3cret", max_commands_per_tick=7, _caches=caches)
    _add_transcript_commands(server, calls)
    # The end-of-reply marker for _run_one_at_a_time: allowed before auth, like ping, and unlisted.
    server.registry.add("mark", lambda: "-mark-", pre_auth=True, hidden=True)
    return server


def _run_pipelined(server: reactor_mgmt.Server, lines: List[str]) -> bytes:
    client = RawClient(server)
    client.send("".join(line + "\n" for line in lines))
    data = client.read_until_closed()
    client.close()
    return data


def _run_one_at_a_time(server: reactor_mgmt.Server, lines: List[str]) -> bytes:
    """Each line in a read of its own, sent once the replies before it are in: each is followed
    by a `mark` request, whose reply says that the line's own replies are complete."""
    client = RawClient(server)
    for line in lines[:-1]:
        client.send(line + "\n")
        client.send("mark\n")
        client.wait_for(lambda buf: buf.endswith(b"-mark-\n"))
    client.send(lines[-1] + "\n")
    data = client.read_until_closed()
    client.close()
    return data


def test_a_transcript_gives_the_same_bytes_with_the_caches_on_and_off(make_server):
    transcripts, calls_seen = [], []
    for caches in MODES:
        calls: list = []
        server = _transcript_server(make_server, caches, calls)
        transcripts.append(_run_pipelined(server, _TRANSCRIPT))
        calls_seen.append(calls)
        if caches:  # the cache really was used, and holds no quoted line
            cached = server.registry.line_cache
            assert {"ping", "echo a  b", "add 2 3 --times 4", "opcmd a  b", "secret", "countdown 3"} <= set(cached)
            assert not any("'" in line or '"' in line or "\x0b" in line for line in cached)
        else:
            assert server.registry.line_cache is None
    assert transcripts[0] == transcripts[1]
    assert calls_seen[0] == calls_seen[1]
    text = transcripts[0].decode()
    # The transcript went where it was meant to.
    assert text.startswith("ERR authentication required (send 'auth TOKEN')\npong\n")
    assert "ERR authentication failed\nOK\npong\na b\na  b c d\n" in text
    assert "ERR permission denied: 'secret' needs admin\n" in text
    assert '{"id": 12, "ok": false, "error": {"code": "denied", ' in text
    assert "operator says a b\n" in text and "ERR permission denied: 'opcmd' needs operator\n" in text
    assert "ERR permission denied: cannot raise the level from operator to admin\n" in text
    assert text.count("slow done\n") == 2 and text.count("quick done\n") == 2 and text.count("ERR timeout\n") == 2
    assert text.count("3...\n2...\n1...\n") == 2
    assert (
        text.count(
            '{"id": 6, "stream": true}\n{"id": 6, "item": "2..."}\n{"id": 6, "item": "1..."}\n'
            '{"id": 6, "ok": true, "result": null, "items": 2}\n'
        )
        == 2
    )
    assert text.count("ERR internal error (RuntimeError)\n") == 2
    assert text.count("ERR unknown command 'stauts'; did you mean 'stats'?\n") == 3
    assert text.count("ERR no help for 'secret' at this connection's level\n") == 1
    assert text.endswith(
        "user\nERR unknown command 'nope' (try 'help')\nERR unknown command 'stauts'; did you mean 'stats'?\n"
    )  # and no reply to GET


def test_a_transcript_one_request_at_a_time_gives_what_the_pipeline_gives(make_server):
    """Each request in a read of its own (the decoder's one-line path, and the transport's
    try-send-now on every reply) against the same requests pipelined, both ways."""
    marked = [item for line in _TRANSCRIPT[:-1] for item in (line, "mark")] + _TRANSCRIPT[-1:]
    transcripts, calls_seen = [], []
    for caches in MODES:
        for run in (_run_pipelined, _run_one_at_a_time):
            calls: list = []
            server = _transcript_server(make_server, caches, calls)
            lines = marked if run is _run_pipelined else _TRANSCRIPT
            transcripts.append(run(server, lines))
            calls_seen.append(calls)
    assert transcripts[0] == transcripts[1] == transcripts[2] == transcripts[3]
    assert calls_seen[0] == calls_seen[1] == calls_seen[2] == calls_seen[3]
    assert transcripts[0].count(b"-mark-\n") == len(_TRANSCRIPT) - 1


# ---- the line cache's own rules ----


def test_line_cache_gives_the_same_bytes_as_the_uncached_path(make_server):
    replies = []
    for caches in MODES:
        server = make_server("127.0.0.1", level="operator", _caches=caches)
        _add_probe_commands(server)
        client = RawClient(server)
        cold = _replies(client, LINES)
        if caches:
            cached = set(server.registry.line_cache)
            # Everything cacheable is cached by now, and things that must not be are not.
            assert {"ping", "echo a  b", "info", "boom", "refuse", "later", "shout x y", "echo"} <= cached
        warm = _replies(client, LINES)
        assert warm == cold
        assert b"ERR permission denied: 'secret' needs admin" in warm
        assert b"ERR internal error (RuntimeError)" in warm
        assert b"answer: 42" in warm
        replies.append(warm)
        client.close()
    assert replies[0] == replies[1]


def test_line_cache_respects_levels_and_authentication(make_server):
    server = make_server("127.0.0.1", level="admin", token="s3cret")
    _add_probe_commands(server)
    admin = RawClient(server)
    assert admin.request("auth s3cret") == ["OK"]
    for _ in range(2):
        assert admin.request("secret") == ["the secret"]
    assert "secret" in server.registry.line_cache
    stranger = RawClient(server)
    for _ in range(2):  # the cached line does not get past the check on this connection
        assert stranger.request("secret") == ["ERR authentication required (send 'auth TOKEN')"]
    assert stranger.request("ping") == ["pong"]  # pre-auth commands stay allowed when cached
    lowered = RawClient(server)
    lowered.request("auth s3cret")
    assert lowered.request("level user") == ["user"]
    for _ in range(2):
        assert lowered.request("secret") == ["ERR permission denied: 'secret' needs admin"]
    assert admin.request("secret") == ["the secret"]  # and it still lets the admin in
    for c in (admin, stranger, lowered):
        c.close()


def test_line_cache_is_cleared_when_commands_change(make_server):
    server = make_server("127.0.0.1")
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    assert "ping" in server.registry.line_cache
    server.remove_command("ping")
    assert server.registry.line_cache == {}
    assert client.request("ping")[0].startswith("ERR unknown command 'ping'")
    server.add_command("ping", lambda: "PONG")
    assert client.request("ping") == ["PONG"]
    client.close()


@CACHE_MODES
def test_replacing_or_removing_a_command_takes_effect_on_the_next_request(make_server):
    server = make_server("127.0.0.1")

    @server.command
    def hello():
        return "one"

    client = RawClient(server)
    for _ in range(2):
        assert client.request("hello") == ["one"]

    @server.command(name="hello", replace=True)
    def hello_again():
        return "two"

    assert client.request("hello") == ["two"]
    assert client.request("hello") == ["two"]

    @server.command(name="hello there")  # a longer name now takes words the cache gave as arguments
    def hello_there():
        return "three"

    assert client.request("hello there") == ["three"]
    server.remove_command("hello")
    assert client.request("hello")[0].startswith("ERR incomplete command 'hello'")
    server.remove_command("hello there")
    assert client.request("hello there")[0].startswith("ERR unknown command 'hello'")
    client.close()


def test_quoted_lines_are_never_cached(make_server):
    server = make_server("127.0.0.1")
    client = RawClient(server)
    assert client.request('echo "a  b"') == ["a  b"]
    assert client.request("echo 'x'") == ["x"]
    assert client.request("echo a\\ b") == ["a b"]
    assert client.request("echo a\x0bb") == ["a\x0bb"]  # shlex keeps \v inside a word
    assert not any(c in line for line in server.registry.line_cache for c in "'\"\\\x0b")
    assert client.request("echo a  b") == ["a b"]
    assert "echo a  b" in server.registry.line_cache
    client.close()


def test_line_cache_stays_bounded(make_server):
    server = make_server("127.0.0.1")
    client = RawClient(server)
    client.send("".join(f"echo {i}\n" for i in range(2000)))
    got = client.lines(2000)
    assert got == [str(i) for i in range(2000)]
    assert 0 < len(server.registry.line_cache) <= 512
    client.close()


def test_line_cache_hands_out_words_no_caller_can_change(make_server):
    """A caller must not be able to change the next request's words: the cache hands out its
    own tuple, which cannot be changed, rather than copy a list per request."""
    registry = make_server("127.0.0.1").registry
    command, args = registry.parse("echo a b")
    assert "echo a b" in registry.line_cache
    assert isinstance(args, tuple) and registry.parse("echo a b") == (command, ("a", "b"))
    with pytest.raises(AttributeError):
        args.append("extra")  # type: ignore[attr-defined]


# ---- pipelines of identical and mixed requests, both ways ----


def _add_run_commands(server: reactor_mgmt.Server, calls: list) -> None:
    @server.command
    def tick():
        calls.append("tick")
        return f"tick {len(calls)}"

    @server.command
    def same():
        calls.append("same")
        return "same\n"

    @server.command
    def lines(*words):
        calls.append("lines")
        return "\n".join(words) if words else ""

    @server.command
    def commandcount():
        return str(server.stats.commands)


_ECHO_WORDS = [
    "a  b",
    "a\tb",
    "a\x0bb",
    "caf\xe9 b",
    "'q w' x",
    "a\\b",
    "a\x01b",
    "x",
    "1 2 3 4 5",
    "\u2003a",
    "{x}",
    "a\xa0b",
]


@pytest.mark.parametrize("per_tick", [5, 256])
def test_a_pipeline_gives_the_same_replies_and_calls_with_the_caches_on_and_off(make_server, per_tick):
    requests = (
        ["ping"] * 40
        + ["tick"] * 30
        + [f"echo {i} x{i}" for i in range(25)]
        + ["echo 'quoted words' x", "echo a\x0bb", "echo a  b"]
        + ["same"] * 12
        + ["lines a b", "lines", "lines c"] * 5
        + [f"lines {i} x{i}" for i in range(9)]
        + ["echo"] * 6
        + ["tick"] * 3
    )
    transcripts, calls_seen = [], []
    for caches in MODES:
        server = make_server("127.0.0.1", max_commands_per_tick=per_tick, _caches=caches)
        calls: list = []
        _add_run_commands(server, calls)
        transcripts.append(_pipeline(server, requests))
        calls_seen.append(calls)
    assert transcripts[0] == transcripts[1]
    assert calls_seen[0] == calls_seen[1]  # every request called its handler once, in order
    replies = transcripts[0]
    assert replies[:40] == ["pong"] * 40
    assert replies[40:70] == [f"tick {n}" for n in range(1, 31)]
    assert replies[70:95] == [f"{i} x{i}" for i in range(25)]
    assert replies[95:98] == ["quoted words x", "a\x0bb", "a b"]  # shlex keeps \v inside a word
    assert replies[98:110] == ["same"] * 12


@pytest.mark.parametrize("per_tick", [7, 256])
def test_echo_gives_the_same_replies_with_the_caches_on_and_off(make_server, per_tick):
    requests = (
        [f"echo {i} x{i}" for i in range(40)]
        + ["ping"]
        + [f"echo {words}" for words in _ECHO_WORDS]
        + ["ping"]
        + [f"echo {i}" for i in range(6)]
        + [f"echo {words}" for words in _ECHO_WORDS[::-1]]
        + ["echo one"] * 9
        + [f"echo w{i} {words}" for i, words in enumerate(_ECHO_WORDS * 2)]
        + ["echo"] * 5
        + ["echo z z"] * 5
        + ["ping"]
    )
    transcripts, counted = [], []
    for caches in MODES:
        server = make_server("127.0.0.1", max_commands_per_tick=per_tick, _caches=caches)
        before = server.stats.commands
        transcripts.append(_pipeline(server, requests))
        counted.append(server.stats.commands - before)
    assert transcripts[0] == transcripts[1]
    assert counted[0] == counted[1] == len(requests) + 1  # every request counted once (+ the marker)
    replies = transcripts[0]
    assert replies[:41] == [f"{i} x{i}" for i in range(40)] + ["pong"]
    assert replies[41:53] == [
        "a b",
        "a b",
        "a\x0bb",
        "caf\xe9 b",
        "q w x",
        "ab",
        "a\x01b",
        "x",
        "1 2 3 4 5",
        "\u2003a",
        "{x}",
        "a\xa0b",
    ]  # shlex keeps Unicode spaces inside a word


@CACHE_MODES
def test_a_host_echo_is_called_per_request(make_server):
    """Registering echo again replaces the builtin, for lines already cached too."""
    server = make_server("127.0.0.1")
    assert _pipeline(server, ["echo 1 x1"] * 3) == ["1 x1"] * 3 + ["pong"]
    calls = []

    @server.command
    def echo(*words):
        calls.append(words)
        return "-".join(words)

    replies = _pipeline(server, [f"echo {i} x{i}" for i in range(50)])
    assert replies == [f"{i}-x{i}" for i in range(50)] + ["pong"]
    assert calls == [(str(i), f"x{i}") for i in range(50)]


@CACHE_MODES
def test_a_handler_that_raises_in_a_pipeline_costs_only_its_own_reply(make_server):
    server = make_server("127.0.0.1")
    calls = []

    @server.command
    def flaky():
        calls.append(1)
        if len(calls) == 10:
            raise RuntimeError("tenth call")
        return f"ok {len(calls)}"

    replies = _pipeline(server, ["flaky"] * 30)
    assert len(calls) == 30
    assert replies == (
        [f"ok {n}" for n in range(1, 10)]
        + ["ERR internal error (RuntimeError)"]
        + [f"ok {n}" for n in range(11, 31)]
        + ["pong"]
    )
    assert server.stats.commands == 31


@CACHE_MODES
def test_stats_count_every_request_of_a_pipeline_once(make_server):
    server = make_server("127.0.0.1")
    _add_run_commands(server, [])
    before = server.stats.commands
    replies = _pipeline(server, ["ping"] * 100 + ["commandcount"])
    assert replies[-2] == str(before + 101)  # 100 pings and commandcount itself


@CACHE_MODES
@pytest.mark.parametrize(
    "line, reply",
    [
        ("info", "answer: 42"),
        ('echo "a b"', "a b"),  # quoted: never cached
        ("nosuch", "ERR unknown command 'nosuch' (try 'help')"),
        ("secret", "ERR permission denied: 'secret' needs admin"),
        ("later", "done later"),  # a resolved Pending
        ("ping", "pong"),
    ],
)
def test_identical_lines_each_get_their_own_reply(make_server, line, reply):
    server = make_server("127.0.0.1", level="operator", max_commands_per_tick=7)
    _add_probe_commands(server)
    client = RawClient(server)
    client.send((line + "\n") * 40 + "ping\n")
    client.wait_for(lambda buf: buf.endswith(b"pong\n") and buf.count(b"\n") >= 41 + 40 * line.startswith("info"))
    lines = client.buffer.decode().split("\n")[:-1]
    assert lines[-1] == "pong"
    got = [text for text in lines[:-1] if not text.startswith("name:")]
    assert got == [reply] * 40
    client.close()


@CACHE_MODES
def test_identical_lines_behind_a_subscription_stop_it_and_the_rest_run(make_server):
    server = make_server("127.0.0.1")
    client = RawClient(server)
    client.send("watch 0.1 ping\n")
    client.wait_for(lambda buf: b"pong" in buf)
    client.buffer = b""
    client.send("ping\n" * 30)
    client.wait_for(lambda buf: buf.count(b"\n") >= 29)
    client.pump(3)
    assert client.buffer == b"pong\n" * 29  # the first ping stopped the watch and took no reply
    client.close()


@CACHE_MODES
def test_a_str_subclass_is_rendered_pipelined_or_one_at_a_time(make_server):
    """A str reply is sent as it is and a str subclass is rendered; either way its CR is a line
    break, sent as LF (docs/protocol.md, Text replies)."""
    server = make_server("127.0.0.1")

    class Text(str):
        pass

    @server.command
    def mixed(*kind):
        return "plain\rcr" if kind == ("p",) else Text("sub\rcr")

    kinds = "psppssp"
    expected = b"".join(b"plain\ncr\n" if kind == "p" else b"sub\ncr\n" for kind in kinds)
    client = RawClient(server)
    client.send("".join(f"mixed {kind}\n" for kind in kinds))
    client.wait_for(lambda buf: len(buf) >= len(expected))
    client.pump(2)
    assert client.buffer == expected
    client.buffer = b""
    for kind in kinds:
        client.send(f"mixed {kind}\n")
        client.wait_for(lambda buf: buf.endswith(b"cr\n"))
        client.pump(2)
    assert client.buffer == expected
    client.close()


@CACHE_MODES
def test_a_pipeline_goes_on_past_an_over_long_line(make_server):
    server = make_server("127.0.0.1", max_line=60)
    client = RawClient(server)
    client.send("echo a 1\necho a 2\n" * 5 + "echo " + "x" * 100 + "\n" + "echo b\n" * 10)
    client.wait_for(lambda buf: buf.count(b"\n") >= 21)
    lines = client.buffer.decode().split("\n")[:-1]
    assert lines[:10] == ["a 1", "a 2"] * 5
    assert lines[10].startswith("ERR line too long")
    assert lines[11:] == ["b"] * 10
    client.close()


@CACHE_MODES
def test_a_pipeline_that_parks_then_raises_keeps_every_reply_in_order(make_server):
    server = make_server("127.0.0.1")
    parked = []

    @server.command
    def job():
        job.calls += 1
        if job.calls == 6:
            parked.append(Pending())
            return parked[0]
        if job.calls == 8:
            raise CommandError("eighth refused")
        return f"job {job.calls}"

    job.calls = 0
    client = RawClient(server)
    client.send("job\n" * 12 + "ping\n")
    client.wait_for(lambda buf: buf.count(b"\n") >= 5)
    client.pump(5)
    assert client.buffer == b"".join(b"job %d\n" % n for n in range(1, 6))  # the error waits too
    parked[0].resolve("sixth")
    client.wait_for(lambda buf: buf.endswith(b"pong\n"))
    assert client.buffer.decode().split("\n")[5:-1] == [
        "sixth",
        "job 7",
        "ERR eighth refused",
        "job 9",
        "job 10",
        "job 11",
        "job 12",
        "pong",
    ]
    client.close()


@CACHE_MODES
def test_closing_the_server_after_a_partial_tick_sends_its_replies_and_a_notice(make_server):
    server = make_server("127.0.0.1", max_commands_per_tick=10)
    client = RawClient(server)
    client.send("ping\n" * 45)
    server.poll(0.5)  # ten ran
    server.close()
    client.sock.settimeout(5)
    received = b""
    while True:
        data = client.sock.recv(65536)
        if not data:
            break
        received += data
    # the 35 requests that never ran are owed something: one line says why they got no reply
    assert received == b"pong\n" * 10 + b"ERR server shutting down\n"
    client.close()


@CACHE_MODES
@pytest.mark.parametrize("budget", [None, 1.0])
def test_replies_go_out_in_the_tick_that_made_them(make_server, budget):
    server = make_server("127.0.0.1", max_commands_per_tick=10)
    client = RawClient(server)
    client.send("ping\n" * 45)
    server.poll(0.5, budget=budget)
    # A loopback send lands in the receiver's buffer before it returns.
    assert client.sock.recv(65536, socket.MSG_DONTWAIT) == b"pong\n" * 10
    client.close()


# ---- one request at a time: an unfinished line, and output written before ----


@CACHE_MODES
def test_an_unfinished_line_is_finished_by_the_next_read(server):
    """The bytes of a cached request, after an unfinished line, finish that line instead."""
    client = RawClient(server)
    for _ in range(2):
        assert client.request("ping") == ["pong"]
    client.send("pi")
    (conn,) = server.connections
    client.wait_for(lambda buf: conn.decoder.buffered == 2)
    assert client.request("ping")[0].startswith("ERR unknown command 'piping'")
    assert client.request("ping") == ["pong"]
    client.close()


@CACHE_MODES
def test_a_read_that_leaves_a_line_unfinished_waits_for_the_rest(server):
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    for _ in range(2):  # each time, the unfinished "pi" must wait for its "ng"
        client.send("ping\npi")
        assert client.lines(1) == ["pong"]
        assert client.request("ng") == ["pong"]
    client.close()


@CACHE_MODES
def test_output_written_between_polls_goes_before_the_next_reply(server):
    """A host's write() between polls goes out before the reply to a request read later."""
    client = RawClient(server)
    for _ in range(2):
        assert client.request("ping") == ["pong"]
    (conn,) = server.connections
    conn.write("a note from the host")
    client.send("ping\n")
    assert client.lines(2) == ["a note from the host", "pong"]
    client.close()


@CACHE_MODES
def test_each_reply_follows_what_the_handler_returns(server):
    """The same cached line runs its handler again each time."""
    long = "x" * 1000
    values = iter(["one", "two", "two", "one\n", "three" * 3, "three" * 3, long, long])

    @server.command
    def reading():
        return next(values)

    client = RawClient(server)
    replies = [client.request("reading")[0] for _ in range(8)]
    assert replies == ["one", "two", "two", "one", "threethreethree", "threethreethree", long, long]
    client.close()


# ---- the transport's try-send-now, when the send fails ----


class _SendFails:
    """Wraps a server-side socket: the next send() raises ``error``, then sends go through."""

    def __init__(self, sock: socket.socket, error: OSError) -> None:
        self._sock = sock
        self.error: OSError | None = error

    def send(self, data: bytes) -> int:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self._sock.send(data)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


@CACHE_MODES
def test_a_reply_the_socket_refuses_now_is_sent_on_the_write_event(server):
    """EAGAIN on the send made at the end of the turn: the reply stays as output, nothing is lost."""
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    (conn,) = server.connections
    wrapper = conn.transport.sock = _SendFails(conn.transport.sock, BlockingIOError())
    client.send("ping\n")
    server.poll(1.0)  # the request runs; its send is refused, and the reply kept as output
    assert wrapper.error is None
    assert client.lines(1) == ["pong"]
    assert conn.buffered_output == 0 and client.request("ping") == ["pong"]
    conn.transport.sock = wrapper._sock
    client.close()


@CACHE_MODES
def test_a_peer_gone_at_the_send_is_dropped_alone(server):
    gone = RawClient(server)
    other = RawClient(server)
    assert gone.request("ping") == ["pong"] and other.request("ping") == ["pong"]
    conn = next(c for c in server.connections if c.peer == gone.sock.getsockname())
    conn.transport.sock = _SendFails(conn.transport.sock, ConnectionResetError())
    gone.send("ping\n")
    server.poll(1.0)
    assert conn.closed and conn not in server.connections
    assert other.request("ping") == ["pong"]
    gone.close()
    other.close()


@CACHE_MODES
def test_a_reply_too_big_for_the_socket_is_finished_on_write_events(make_server):
    server = make_server("127.0.0.1")

    @server.command
    def big():
        return "y" * 3_000_000

    client = RawClient(server)
    client.send("big\n")
    client.wait_for(lambda buf: buf.endswith(b"\n"))
    client.buffer = b""
    (conn,) = server.connections
    conn.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.send("big\n")  # the kernel takes only part of 3 MB
    server.poll(1.0)
    assert conn.buffered_output > 0 and conn.queue is None  # sent in part; the rest waits as output
    client.wait_for(lambda buf: buf.endswith(b"\n"))
    assert client.buffer == b"y" * 3_000_000 + b"\n"
    client.buffer = b""
    assert client.request("ping") == ["pong"]
    client.close()


# ---- the direct epoll wait against the plain selectors API ----


def test_generic_selectors_path_matches_the_epoll_path(monkeypatch):
    """With the epoll shortcut disabled, the server runs on the selectors API alone."""
    transcripts = []
    for disable in (False, True):
        if disable:
            monkeypatch.setattr(selectors, "EpollSelector", type("NotEpoll", (), {}), raising=False)
        server = reactor_mgmt.Server("127.0.0.1", 0)
        try:
            assert (server._loop.wait.__name__ == "wait_generic") == disable
            client = RawClient(server)
            client.send("ping\necho hello world\nnope\n")
            transcripts.append(client.lines(3))
            client.shutdown()
            client.read_until_closed()
            client.close()
            assert server.poll(0) == 0
        finally:
            server.close()
    assert transcripts[0] == transcripts[1] == ["pong", "hello world", "ERR unknown command 'nope' (try 'help')"]


# ---- the decoder's plain-read paths against the general path ----

_line_text = st.text(alphabet=st.sampled_from(list("ab {\"'\t\r\x0b\x0c\x1c\x1f\xa0\u2003é")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line_text, max_size=20))
def test_batch_decode_equals_strip_per_line(lines):
    encoded = [line.replace("\r", "").encode() for line in lines]
    data = b"".join(line + b"\n" for line in encoded)
    expected = [line.decode().strip() for line in encoded]
    expected = [line for line in expected if line]
    assert RequestDecoder().feed(data) == expected


@pytest.mark.parametrize(
    "data, expected, with_blanks",
    [
        (b"echo a  b\nping\n", ["echo a  b", "ping"], ["echo a  b", "ping"]),
        (b"\nping\n\n", ["ping"], ["", "ping", ""]),
        (b"ping \n ping\n", ["ping", "ping"], ["ping", "ping"]),
        (b"a\n  \n\nb\n", ["a", "b"], ["a", "", "", "b"]),
        (b"ping\n" * 20 + b"\n", ["ping"] * 20, ["ping"] * 20 + [""]),
    ],
)
def test_reads_the_plain_path_declines_still_strip_and_drop_blanks(data, expected, with_blanks):
    """Blank lines and spaces next to a LF (or doubled) send a read down the general path."""
    assert RequestDecoder().feed(data) == expected
    subscribed = RequestDecoder()
    subscribed.keep_blank = True  # a running subscription sees Enter as a line
    assert subscribed.feed(data) == with_blanks


def test_needs_strip_spots_whitespace_at_any_line_end():
    assert not _needs_strip(b"ping\necho a b\nstatus")
    for text in (b" ping", b"ping ", b"a\n b", b"a \nb", b"a\tb", b"a\x0bb", b"caf\xc3\xa9", b"a\x1fb"):
        assert _needs_strip(text), text


_plain_line = st.text(alphabet=st.sampled_from(list("ab x{\"'\t\r")), min_size=0, max_size=10)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_plain_line, st.sampled_from([1, 1, 1, 2, 8, 30])), max_size=12),
    st.lists(st.integers(0, 600), max_size=8),
)
def test_plain_reads_cut_anywhere_decode_to_the_stripped_lines(runs, cuts):
    data = b"".join((line.encode() + b"\n") * times for line, times in runs)
    decoder = RequestDecoder(max_line=600)
    items, start = [], 0
    for point in sorted(min(cut, len(data)) for cut in cuts) + [len(data)]:
        items.extend(decoder.feed(data[start:point]))
        start = point
    assert all(item.__class__ is str for item in items), items
    expected = []
    for line in data.split(b"\n")[:-1]:
        text = line[:-1] if line.endswith(b"\r") else line
        text = text.decode().strip()
        if text:
            expected.append(text)
    assert items == expected
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    "data",
    [
        b"ping\n",
        b"echo a  b\n",
        b" ping\n",
        b"ping \n",
        b"p\tq\n",
        b"ping\r\n",
        b"a\x7fb\n",
        b"\x1b[A\n",
        b"x\x00y\n",
        b"\xff\xfb\x01ping\n",
        b"caf\xc3\xa9\n",
        b"\x04\n",
        b"\n",
        b" \n",
        b"x" * 64 + b"\n",
        b"x" * 65 + b"\n",
        b'{"cmd": "ping"}\n',
        b"a\x0bb\n",
    ],
)
def test_one_line_reads_decode_as_the_same_bytes_cut_in_two(data):
    """A whole one-line read takes the one-line fast path; the same bytes cut in two cannot."""
    whole = RequestDecoder(max_line=64)
    cut = RequestDecoder(max_line=64)
    items = cut.feed(data[:1]) + cut.feed(data[1:])
    assert whole.feed(data) == items
    assert whole.feed(b"ping\n") == cut.feed(b"ping\n")  # and both are left in the same state


@pytest.mark.parametrize(
    "before",
    [
        b"\xff",  # IAC: the next byte is a telnet command
        b"\xff\xfb",  # IAC WILL: the next byte is the option
        b"\xff\xfa\x18",  # inside a subnegotiation, until IAC SE
        b"ping\r",  # a CR whose LF has not arrived
        b"pi",  # an unfinished line
        b"x" * 70,  # an over-long line being discarded
        b"\x04",  # Ctrl-D: the session is over
    ],
)
def test_a_one_line_read_after_a_read_that_left_state_takes_the_general_path(before):
    """The one-line path runs only while every layer is at rest. After a read that leaves one
    mid-sequence, the same one-line read must mean what the general path makes of it."""
    split = RequestDecoder(max_line=64)
    joined = RequestDecoder(max_line=64)
    for after in (b"!ping\n", b"ping\n", b"\xff\xf0ping\n", b"ping\n"):
        assert split.feed(before) + split.feed(after) == joined.feed(before + after)


# ---- JSON requests: the scanner called directly (decode_json) against json.loads ----

_JSON_LINES = [
    '{"id": 1, "cmd": "status"}',
    '{"id": 1, "cmd": "status"} ',
    '{"id": 1, "cmd": "status"}{"id": 2}',
    '{"id": 1, "cmd": "status"} x',
    '{"id": NaN, "cmd": "ping"}',
    '{"id": 1e400, "argv": ["echo", "a"]}',
    '{"id": "\\ud800", "cmd": "echo"}',
    '{"a": [1, 2, {"b": null}], "c": true, "d": false}',
    '{"id": 1, "cmd": "status"',
    '{"id": 1,, "cmd": "status"}',
    "{id: 1}",
    "{",
    "{}",
    '{"x": "\\q"}',
    '{"x": 1}]',
    '{"x": "' + "y" * 5000 + '"}',
    '{"a": ' * 50 + "1" + "}" * 50,
]


def _loads(line):
    """json.loads as decode_json's decoder is made: a float literal past the range is refused."""
    import json

    from reactor_mgmt._dispatch import _finite_float

    return json.loads(line, parse_float=_finite_float)


def _outcome(decode, line):
    try:
        return ("value", repr(decode(line)))
    except ValueError as exc:
        return ("error", type(exc).__name__, str(exc))


@pytest.mark.parametrize("line", _JSON_LINES)
def test_json_requests_decode_as_json_loads_decodes_them(line):

    from reactor_mgmt._dispatch import decode_json

    assert _outcome(decode_json, line) == _outcome(_loads, line)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
            max_leaves=12,
        ).map(lambda value: __import__("json").dumps({"id": value})),
        st.text(max_size=30).map(lambda text: "{" + text),
    ),
    st.sampled_from(["", " ", "x", "}", "{}", "\t"]),
)
def test_any_json_request_line_decodes_as_json_loads_decodes_it(line, tail):

    from reactor_mgmt._dispatch import decode_json

    line += tail
    assert _outcome(decode_json, line) == _outcome(_loads, line)
