# Each fast path in the library must give exactly what its slow path gives. These tests pin
# them together: the registry's line cache against full parsing, and the direct epoll wait
# against the plain selectors API.
from __future__ import annotations

import selectors
import socket
from collections import deque

import pytest

import reactor_mgmt
from reactor_mgmt import CommandError, Pending

from conftest import RawClient


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


def test_line_cache_gives_the_same_bytes_as_the_slow_path(make_server):
    server = make_server("127.0.0.1", level="operator")
    _add_probe_commands(server)
    client = RawClient(server)
    cold = _replies(client, LINES)
    cached = set(server.registry.line_cache)
    # Everything cacheable is cached by now, and things that must not be are not.
    assert {"ping", "echo a  b", "info", "boom", "refuse", "later", "shout x y", "echo"} <= cached
    warm = _replies(client, LINES)
    assert warm == cold
    assert b"ERR permission denied: 'secret' needs admin" in warm
    assert b"ERR internal error (RuntimeError)" in warm
    assert b"answer: 42" in warm
    client.close()


def test_line_cache_respects_levels_and_authentication(make_server):
    server = make_server("127.0.0.1", level="admin", token="s3cret")
    _add_probe_commands(server)
    admin = RawClient(server)
    assert admin.request("auth s3cret") == ["OK"]
    for _ in range(2):
        assert admin.request("secret") == ["the secret"]
    assert "secret" in server.registry.line_cache and b"secret\n" in server.registry.read_cache
    stranger = RawClient(server)
    for _ in range(2):  # neither cache lets the same bytes past the check on this connection
        assert stranger.request("secret") == ["ERR authentication required (send 'auth TOKEN')"]
    assert stranger.request("ping") == ["pong"]  # pre-auth commands stay allowed when cached
    lowered = RawClient(server)
    lowered.request("auth s3cret")
    assert lowered.request("level user") == ["user"]
    for _ in range(2):
        assert lowered.request("secret") == ["ERR permission denied: 'secret' needs admin"]
    for c in (admin, stranger, lowered):
        c.close()


def test_line_cache_is_cleared_when_commands_change(server, client):
    assert client.request("ping") == ["pong"]
    assert "ping" in server.registry.line_cache
    server.remove_command("ping")
    assert server.registry.line_cache == {}
    assert client.request("ping")[0].startswith("ERR unknown command 'ping'")
    server.add_command("ping", lambda: "PONG")
    assert client.request("ping") == ["PONG"]


def test_quoted_lines_are_never_cached(server, client):
    assert client.request('echo "a  b"') == ["a  b"]
    assert client.request("echo 'x'") == ["x"]
    assert not any("'" in line or '"' in line for line in server.registry.line_cache)


def test_line_cache_stays_bounded(server, client):
    client.send("".join(f"echo {i}\n" for i in range(2000)))
    got = client.lines(2000)
    assert got == [str(i) for i in range(2000)]
    assert len(server.registry.line_cache) <= 512


def test_read_cache_stays_bounded(server, client):
    for i in range(600):
        for _ in range(2):  # the second time, the read is cached
            assert client.request(f"echo {i}") == [str(i)]
        assert 0 < len(server.registry.read_cache) <= 512
    assert b"echo 599\n" in server.registry.read_cache


def test_generic_selectors_path_matches_the_epoll_path(monkeypatch):
    """With the epoll shortcut disabled, the server runs on the selectors API alone."""
    transcripts = []
    for disable in (False, True):
        if disable:
            monkeypatch.setattr(selectors, "EpollSelector", type("NotEpoll", (), {}), raising=False)
        server = reactor_mgmt.Server("127.0.0.1", 0)
        try:
            assert (server._wait.__name__ == "wait_generic") == disable
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


# ---- the batch decoder's no-strip path against the plain definition ----

from hypothesis import given, settings, strategies as st

from reactor_mgmt._protocol import Repeat, RequestDecoder, _needs_strip, expand, single_spaced, split_words

_line_text = st.text(alphabet=st.sampled_from(list("ab {\"'\t\r\x0b\x0c\x1c\x1f\xa0\u2003é")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line_text, max_size=20))
def test_batch_decode_equals_strip_per_line(lines):
    encoded = [line.replace("\r", "").encode() for line in lines]
    data = b"".join(line + b"\n" for line in encoded)
    expected = [line.decode().strip() for line in encoded]
    expected = [line for line in expected if line]
    assert expand(RequestDecoder().feed(data)) == expected


@pytest.mark.parametrize("data, expected, with_blanks", [
    (b"echo a  b\nping\n", ["echo a  b", "ping"], ["echo a  b", "ping"]),
    (b"\nping\n\n", ["ping"], ["", "ping", ""]),
    (b"ping \n ping\n", ["ping", "ping"], ["ping", "ping"]),
    (b"a\n  \n\nb\n", ["a", "b"], ["a", "", "", "b"]),
    (b"ping\n" * 20 + b"\n", ["ping"] * 20, ["ping"] * 20 + [""]),
])
def test_reads_the_plain_path_declines_still_strip_and_drop_blanks(data, expected, with_blanks):
    """Blank lines and spaces next to a LF (or doubled) send a read down the general path."""
    assert expand(RequestDecoder().feed(data)) == expected
    subscribed = RequestDecoder()
    subscribed.keep_blank = True  # a running subscription sees Enter as a line
    assert expand(subscribed.feed(data)) == with_blanks


def test_needs_strip_spots_whitespace_at_any_line_end():
    assert not _needs_strip(b"ping\necho a b\nstatus")
    for text in (b" ping", b"ping ", b"a\n b", b"a \nb", b"a\tb", b"a\x0bb", b"caf\xc3\xa9", b"a\x1fb"):
        assert _needs_strip(text), text


_spaced_text = st.text(alphabet=st.sampled_from(list("ab \"'\\\t\r\x0b\x0c\x1c\x1f\x01\xa0\u2003é")), max_size=10)


@settings(max_examples=500, deadline=None)
@given(st.lists(_spaced_text, min_size=1, max_size=8))
def test_single_spaced_text_is_its_words_on_both_parsers(lines):
    """single_spaced (the gate of Command.reply_to_run) says yes only when each line is its own
    words joined by single spaces for str.split and for split_words alike."""
    if single_spaced("\n".join(lines)):
        for line in lines:
            assert " ".join(line.split()) == line
            assert split_words(line) == line.split(" ")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.text(alphabet="ab{}1-_.:x/=,", min_size=1, max_size=6), min_size=1, max_size=4),
                min_size=1, max_size=8))
def test_single_spaced_says_yes_to_single_spaced_ascii_words(word_lists):
    assert single_spaced("\n".join(" ".join(words) for words in word_lists))


def test_single_spaced_says_no_to_what_needs_a_python_call():
    assert single_spaced("1 x1\n2 x2")
    for text in ("", "a  b", " a", "a ", "a\n b", "a \nb", "a\n\nb", "a\tb", "a\rb", "a\x0bb", "caf\xe9",
                 "'a b'", "a\\b", '"a"', "a\n"):
        assert not single_spaced(text), repr(text)


# ---- runs of one command (Dispatcher._run_same_command) against one request at a time ----


def _count_runs(monkeypatch, server: reactor_mgmt.Server) -> list:
    """Records how many requests each batched run took, so a test can prove the batch ran."""
    taken: list = []
    original = server._run_same_command

    def spy(*args):
        try:
            result = original(*args)
        except Exception:
            taken.append("raised")
            raise
        taken.append(result[0])
        return result

    monkeypatch.setattr(server, "_run_same_command", spy)
    return taken


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


def _pipeline(server: reactor_mgmt.Server, requests: list) -> list:
    client = RawClient(server)
    client.send("".join(line + "\n" for line in requests) + "ping\n")
    client.wait_for(lambda buf: buf.endswith(b"pong\n") and buf.count(b"pong\n") >= 1 + requests.count("ping"))
    client.close()
    return client.buffer.decode().split("\n")[:-1]


@pytest.mark.parametrize("per_tick", [5, 256])
def test_a_run_gives_exactly_the_replies_of_one_request_at_a_time(make_server, monkeypatch, per_tick):
    requests = (["ping"] * 40 + ["tick"] * 30 + [f"echo {i} x{i}" for i in range(25)]
                + ["echo 'quoted words' x", "echo a\x0bb", "echo a  b"] + ["same"] * 12
                + ["lines a b", "lines", "lines c"] * 5 + [f"lines {i} x{i}" for i in range(9)]
                + ["echo"] * 6 + ["tick"] * 3)
    transcripts, calls_seen = [], []
    for batched in (False, True):
        server = make_server("127.0.0.1", max_commands_per_tick=per_tick)
        calls: list = []
        _add_run_commands(server, calls)
        taken = _count_runs(monkeypatch, server)
        if not batched:
            monkeypatch.setattr(server, "_run_same_command", lambda *args: (0, 0))
        transcripts.append(_pipeline(server, requests))
        calls_seen.append(calls)
        if batched:
            assert max(taken) >= min(per_tick - 1, 29)  # the runs really went through the batch
    assert transcripts[0] == transcripts[1]
    assert calls_seen[0] == calls_seen[1]  # every request called its handler once, in order
    replies = transcripts[1]
    assert replies[:40] == ["pong"] * 40
    assert replies[40:70] == [f"tick {n}" for n in range(1, 31)]
    assert replies[70:95] == [f"{i} x{i}" for i in range(25)]
    assert replies[95:98] == ["quoted words x", "a\x0bb", "a b"]  # shlex keeps \v inside a word
    assert replies[98:110] == ["same"] * 12


def test_a_handler_that_raises_in_a_run_costs_only_its_own_reply(make_server, monkeypatch):
    server = make_server("127.0.0.1")
    calls = []

    @server.command
    def flaky():
        calls.append(1)
        if len(calls) == 10:
            raise RuntimeError("tenth call")
        return f"ok {len(calls)}"

    taken = _count_runs(monkeypatch, server)
    replies = _pipeline(server, ["flaky"] * 30)
    assert len(calls) == 30
    assert replies == ([f"ok {n}" for n in range(1, 10)] + ["ERR internal error (RuntimeError)"]
                       + [f"ok {n}" for n in range(11, 31)] + ["pong"])
    # The first run ended with its ninth request (after the probe), which raised; the rest ran
    # as a new run after a probe of their own.
    assert taken == [9, 19]
    assert server.stats.commands == 31


def test_stats_count_every_request_of_a_run_once(make_server):
    server = make_server("127.0.0.1")
    _add_run_commands(server, [])
    before = server.stats.commands
    replies = _pipeline(server, ["ping"] * 100 + ["commandcount"])
    assert replies[-2] == str(before + 101)  # 100 pings and commandcount itself


# ---- replies held while pipelined requests are still queued (Server._service) ----


def test_pipelined_replies_go_out_in_one_send_when_the_queue_drains(make_server):
    server = make_server("127.0.0.1", max_commands_per_tick=10)
    client = RawClient(server)
    client.send("ping\n" * 45)
    sends = []
    for _ in range(5):  # 45 requests at 10 a tick: the queue empties on the fifth poll
        server.poll(0.5 if not sends else 0)
        try:
            sends.append(client.sock.recv(65536, socket.MSG_DONTWAIT))
        except BlockingIOError:
            sends.append(b"")
    # A loopback send lands in the receiver's buffer before it returns, so an empty recv
    # right after a poll means that poll sent nothing.
    assert sends[:4] == [b""] * 4
    assert sends[4] == b"pong\n" * 45
    client.close()


def test_held_replies_still_go_out_once_they_are_large(make_server):
    server = make_server("127.0.0.1", max_commands_per_tick=2)

    @server.command
    def big():
        return "x" * 40000

    client = RawClient(server)
    client.send("big\n" * 8)
    server.poll(0.5)  # two replies, 80 kB: more than is ever held back
    received = client.sock.recv(200000, socket.MSG_DONTWAIT)
    assert received.startswith(b"x" * 40000 + b"\n")
    client.buffer = received
    client.wait_for(lambda buf: buf.count(b"\n") == 8)
    client.close()


# ---- the decoder's fast path with a line cut across reads ----

_plain_line = st.text(alphabet=st.sampled_from(list("ab x{\"'\t\r")), min_size=0, max_size=10)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_plain_line, st.sampled_from([1, 1, 1, 2, 8, 30])), max_size=12),
       st.lists(st.integers(0, 600), max_size=8))
def test_plain_reads_cut_anywhere_decode_to_the_stripped_lines(runs, cuts):
    data = b"".join((line.encode() + b"\n") * times for line, times in runs)
    decoder = RequestDecoder(max_line=600)
    items, start = [], 0
    for point in sorted(min(cut, len(data)) for cut in cuts) + [len(data)]:
        items.extend(decoder.feed(data[start:point]))
        start = point
    for item in items:
        assert item.__class__ in (str, Repeat), item
        if item.__class__ is Repeat:
            assert item.count >= 8 and item.line and item.line == item.line.strip()
    items = expand(items)
    expected = []
    for line in data.split(b"\n")[:-1]:
        text = line[:-1] if line.endswith(b"\r") else line
        text = text.decode().strip()
        if text:
            expected.append(text)
    assert items == expected
    assert decoder.buffered == 0


def test_a_read_of_one_repeated_line_decodes_to_one_repeat():
    decoder = RequestDecoder()
    items = decoder.feed(b"ping\n" * 1000 + b"pi")
    assert len(items) == 1 and items[0].__class__ is Repeat
    assert (items[0].line, items[0].count) == ("ping", 1000)
    assert decoder.buffered == 2
    assert decoder.feed(b"ng\n") == ["ping"]
    # Not quite one line repeated: ordinary lines.
    assert decoder.feed(b"ping\n" * 9 + b"pong\n") == ["ping"] * 9 + ["pong"]
    assert decoder.feed(b"pin\n" + b"ping\n" * 9) == ["pin"] + ["ping"] * 9
    assert decoder.feed(b"ping\n" * 7) == ["ping"] * 7  # too few to be worth a Repeat


@pytest.mark.parametrize("line, reply", [
    ("info", "answer: 42"),                      # not a str reply: the general path, one by one
    ('echo "a b"', "a b"),                       # quoted: never the fast path
    ("nosuch", "ERR unknown command 'nosuch' (try 'help')"),
    ("secret", "ERR permission denied: 'secret' needs admin"),
    ("later", "done later"),                     # a resolved Pending
    ("ping", "pong"),
])
def test_a_repeat_means_its_lines_on_every_path(make_server, line, reply):
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


def test_a_repeat_behind_a_subscription_stops_it_and_the_rest_run(make_server):
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


def test_a_run_renders_a_str_subclass_as_one_request_does(make_server):
    """A run joins str replies as they are; a str subclass is rendered, so its CR becomes a LF."""
    server = make_server("127.0.0.1")

    class Text(str):
        pass

    @server.command
    def mixed(*kind):  # *words: runs of it take the batch path
        return "plain\rcr" if kind == ("p",) else Text("sub\rcr")

    kinds = "psppssp"
    expected = b"".join(b"plain\rcr\n" if kind == "p" else b"sub\ncr\n" for kind in kinds)
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


def test_a_run_stops_at_an_over_long_line_in_the_queue(make_server):
    server = make_server("127.0.0.1", max_line=60)
    client = RawClient(server)
    client.send("echo a 1\necho a 2\n" * 5 + "echo " + "x" * 100 + "\n" + "echo b\n" * 10)
    client.wait_for(lambda buf: buf.count(b"\n") >= 21)
    lines = client.buffer.decode().split("\n")[:-1]
    assert lines[:10] == ["a 1", "a 2"] * 5
    assert lines[10].startswith("ERR line too long")
    assert lines[11:] == ["b"] * 10
    client.close()


def _count_answered_runs(monkeypatch, server: reactor_mgmt.Server) -> list:
    """Records how many requests each run answered by reply_to_run took."""
    answered: list = []
    original = server._answer_run

    def spy(queue, count, answer, replies):
        answered.append(count)
        return original(queue, count, answer, replies)

    monkeypatch.setattr(server, "_answer_run", spy)
    return answered


_ECHO_WORDS = ["a  b", "a\tb", "a\x0bb", "caf\xe9 b", "'q w' x", "a\\b", "a\x01b", "x", "1 2 3 4 5", "\u2003a",
               "{x}", "a\xa0b"]


@pytest.mark.parametrize("per_tick", [7, 256])
def test_echo_runs_answered_without_calls_get_what_each_call_gets(make_server, monkeypatch, per_tick):
    """The builtin echo answers a run of single-spaced requests from their text (its
    reply_to_run) instead of calling echo per request; every reply must be echo's own."""
    # A run is answered from its text only if every line in it is single-spaced (one odd line
    # sends the whole run to the calls), so pings split the odd lines from the plain runs here.
    requests = ([f"echo {i} x{i}" for i in range(40)] + ["ping"] + [f"echo {words}" for words in _ECHO_WORDS]
                + ["ping"] + [f"echo {i}" for i in range(6)] + [f"echo {words}" for words in _ECHO_WORDS[::-1]]
                + ["echo one"] * 9 + [f"echo w{i} {words}" for i, words in enumerate(_ECHO_WORDS * 2)]
                + ["echo"] * 5 + ["echo z z"] * 5 + ["ping"])
    transcripts, answered_seen, counted = [], [], []
    for answered_as_runs in (False, True):
        server = make_server("127.0.0.1", max_commands_per_tick=per_tick)
        if not answered_as_runs:
            server.registry.commands["echo"].reply_to_run = None
        answered = _count_answered_runs(monkeypatch, server)
        before = server.stats.commands
        transcripts.append(_pipeline(server, requests))
        answered_seen.append(answered)
        counted.append(server.stats.commands - before)
    assert transcripts[0] == transcripts[1]
    assert counted[0] == counted[1] == len(requests) + 1  # every request counted once (+ the marker)
    assert answered_seen[0] == []
    assert max(answered_seen[1]) >= min(per_tick - 1, 30)  # the first run went through reply_to_run
    replies = transcripts[1]
    assert replies[:41] == [f"{i} x{i}" for i in range(40)] + ["pong"]
    assert replies[41:53] == ["a b", "a b", "a\x0bb", "caf\xe9 b", "q w x", "ab", "a\x01b", "x", "1 2 3 4 5",
                              "\u2003a", "{x}", "a\xa0b"]  # shlex keeps Unicode spaces inside a word


def test_a_host_echo_is_called_per_request_not_answered_by_the_builtins_run(make_server, monkeypatch):
    """reply_to_run belongs to the builtin's Command: registering echo again drops it."""
    server = make_server("127.0.0.1")
    calls = []

    @server.command
    def echo(*words):
        calls.append(words)
        return "-".join(words)

    answered = _count_answered_runs(monkeypatch, server)
    replies = _pipeline(server, [f"echo {i} x{i}" for i in range(50)])
    assert replies == [f"{i}-x{i}" for i in range(50)] + ["pong"]
    assert calls == [(str(i), f"x{i}") for i in range(50)]
    assert answered == []


@pytest.mark.parametrize("as_repeat", [True, False])
def test_a_run_of_pings_is_answered_without_calls_and_a_host_ping_is_called(make_server, monkeypatch, as_repeat):
    # The builtin ping's same_reply answers a run of it with one pong per request and no call
    # per request, whether the decoder made the run one Repeat (a read of nothing but pings) or
    # a run of identical lines; stats still count every request. A ping the host registers is
    # called once per request, as before.
    requests = ["ping"] * 300 if as_repeat else ["echo a"] + ["ping"] * 300
    expected = (["pong"] * 301) if as_repeat else (["a"] + ["pong"] * 301)
    server = make_server("127.0.0.1")
    answered = _count_answered_runs(monkeypatch, server)
    calls = []
    monkeypatch.setattr(server.registry.commands["ping"], "fn", lambda: calls.append(1) or "pong")
    assert _pipeline(server, requests) == expected
    assert sum(answered) >= 250 and len(calls) <= 301 - sum(answered)
    assert server.stats.commands == len(requests) + 1

    host = make_server("127.0.0.1")
    host_calls = []

    @host.command
    def ping() -> str:
        host_calls.append(1)
        return "pong"

    answered = _count_answered_runs(monkeypatch, host)
    assert _pipeline(host, requests) == expected
    assert answered == [] and len(host_calls) == 301


# ---- the round-trip fast path (Dispatcher._answer_now) against the pipelined path ----


def test_one_request_at_a_time_gets_what_a_pipeline_gets(make_server, monkeypatch):
    server = make_server("127.0.0.1", level="operator")
    _add_probe_commands(server)
    answered = []
    original = server._answer_now

    def spy(conn, entry):
        handled = original(conn, entry)
        answered.append((entry[0].name, handled))
        return handled

    monkeypatch.setattr(server, "_answer_now", spy)
    decoded = []
    feed = RequestDecoder.feed
    monkeypatch.setattr(RequestDecoder, "feed", lambda self, data: decoded.append(data) or feed(self, data))
    client = RawClient(server)
    pipelined = _replies(client, LINES)  # fills the line cache
    for _ in range(3):  # then the read cache, and the third round is answered from that
        decoded.clear()
        one_by_one = b""
        for line in LINES + ["ping"]:
            client.buffer = b""
            client.send(line + "\n")
            client.wait_for(lambda buf: buf.count(b"\n") >= (2 if line == "info" else 1))
            client.pump(2)
            one_by_one += client.buffer
        assert one_by_one == pipelined
    handled = {name for name, done in answered if done}
    # Everything the line cache knows was answered at once; a refused command was not.
    assert {"ping", "echo", "boom", "refuse", "later", "shout", "info"} <= handled
    assert ("secret", False) in answered
    # In the last round only the request the read cache must not answer was decoded.
    assert decoded == [b"secret\n"]
    assert b"secret\n" not in server.registry.read_cache
    client.close()


def _ping_cached_as_a_read(server: reactor_mgmt.Server) -> RawClient:
    client = RawClient(server)
    for _ in range(2):  # the first puts "ping" in the line cache, the second b"ping\n" in the read cache
        assert client.request("ping") == ["pong"]
    assert b"ping\n" in server.registry.read_cache
    return client


def test_the_read_cache_waits_for_a_decoder_at_rest(server):
    """The bytes of a cached request, after an unfinished line, finish that line instead."""
    client = _ping_cached_as_a_read(server)
    client.send("pi")
    (conn,) = server.connections
    client.wait_for(lambda buf: conn.decoder.buffered == 2)
    assert client.request("ping")[0].startswith("ERR unknown command 'piping'")
    assert client.request("ping") == ["pong"]
    client.close()


def test_a_read_that_leaves_a_line_unfinished_is_not_cached(server):
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    for _ in range(2):  # each time, the unfinished "pi" must wait for its "ng"
        client.send("ping\npi")
        assert client.lines(1) == ["pong"]
        assert client.request("ng") == ["pong"]
    assert b"ping\npi" not in server.registry.read_cache
    client.close()


def test_the_read_cache_waits_for_output_written_before(server):
    """A host's write() between polls goes out before the reply to a cached read."""
    client = _ping_cached_as_a_read(server)
    (conn,) = server.connections
    conn.write("a note from the host")
    client.send("ping\n")
    assert client.lines(2) == ["a note from the host", "pong"]
    client.close()


def test_answers_at_once_follow_what_the_handler_returns(server):
    """_answer_now reuses the bytes of the str it answered last only for that same object."""
    long = "x" * 1000
    values = iter(["one", "two", "two", "one\n", "three" * 3, "three" * 3, long, long])

    @server.command
    def reading():
        return next(values)

    client = RawClient(server)
    replies = [client.request("reading")[0] for _ in range(8)]
    assert replies == ["one", "two", "two", "one", "threethreethree", "threethreethree", long, long]
    assert b"reading\n" in server.registry.read_cache
    assert server._last_answer[0] == "three" * 3  # a long reply is not kept after it is sent
    client.close()


def test_changing_the_commands_clears_the_read_cache(server):
    @server.command
    def hello():
        return "one"

    client = RawClient(server)
    for _ in range(2):
        assert client.request("hello") == ["one"]
    assert b"hello\n" in server.registry.read_cache

    @server.command(name="hello", replace=True)
    def hello_again():
        return "two"

    assert client.request("hello") == ["two"]
    assert client.request("hello") == ["two"]
    server.remove_command("hello")
    assert client.request("hello")[0].startswith("ERR unknown command 'hello'")
    client.close()


class _SendFails:
    """Wraps a server-side socket: the next send() raises ``error``, then sends go through."""

    def __init__(self, sock: socket.socket, error: OSError) -> None:
        self._sock = sock
        self.error: "OSError | None" = error

    def send(self, data: bytes) -> int:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self._sock.send(data)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def test_an_answer_the_socket_refuses_is_sent_by_the_reactor(server):
    """EAGAIN on the fast path's send: the reply goes to the output buffer, nothing is lost."""
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    assert "ping" in server.registry.line_cache
    (conn,) = server.connections
    wrapper = conn.sock = _SendFails(conn.sock, BlockingIOError())
    client.send("ping\n")
    server.poll(1.0)  # answered from the read: the send is refused, the reply kept as output
    assert wrapper.error is None
    assert client.lines(1) == ["pong"]
    assert conn.out is None and client.request("ping") == ["pong"]
    conn.sock = wrapper._sock
    client.close()


def test_a_peer_gone_at_the_fast_paths_send_is_dropped_alone(server):
    gone = RawClient(server)
    other = RawClient(server)
    assert gone.request("ping") == ["pong"] and other.request("ping") == ["pong"]
    conn = next(c for c in server.connections if c.sock.getpeername() == gone.sock.getsockname())
    conn.sock = _SendFails(conn.sock, ConnectionResetError())
    gone.send("ping\n")
    server.poll(1.0)
    assert conn.closed and conn not in server.connections
    assert other.request("ping") == ["pong"]
    gone.close()
    other.close()


def test_a_reply_too_big_for_the_socket_is_finished_by_the_reactor(make_server):
    server = make_server("127.0.0.1")

    @server.command
    def big():
        return "y" * 3_000_000

    client = RawClient(server)
    client.send("big\n")
    client.wait_for(lambda buf: buf.endswith(b"\n"))
    assert "big" in server.registry.line_cache
    client.buffer = b""
    (conn,) = server.connections
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.send("big\n")  # answered at once now; the kernel takes only part of 3 MB
    server.poll(1.0)
    assert conn.out_size > 0 and conn.queue is None  # sent in part; the rest waits as output
    client.wait_for(lambda buf: buf.endswith(b"\n"))
    assert client.buffer == b"y" * 3_000_000 + b"\n"
    client.buffer = b""
    assert client.request("ping") == ["pong"]
    client.close()


@pytest.mark.parametrize("data", [
    b"ping\n", b"echo a  b\n", b" ping\n", b"ping \n", b"p\tq\n", b"ping\r\n", b"a\x7fb\n", b"\x1b[A\n",
    b"x\x00y\n", b"\xff\xfb\x01ping\n", b"caf\xc3\xa9\n", b"\x04\n", b"\n", b" \n", b"x" * 64 + b"\n",
    b"x" * 65 + b"\n", b'{"cmd": "ping"}\n', b"a\x0bb\n",
])
def test_one_line_reads_decode_as_the_same_bytes_cut_in_two(data):
    """A whole one-line read takes the one-line fast path; the same bytes cut in two cannot."""
    whole = RequestDecoder(max_line=64)
    cut = RequestDecoder(max_line=64)
    items = cut.feed(data[:1]) + cut.feed(data[1:])
    assert whole.feed(data) == items
    assert whole.feed(b"ping\n") == cut.feed(b"ping\n")  # and both are left in the same state


@pytest.mark.parametrize("before", [
    b"\xff",  # IAC: the next byte is a telnet command
    b"\xff\xfb",  # IAC WILL: the next byte is the option
    b"\xff\xfa\x18",  # inside a subnegotiation, until IAC SE
    b"ping\r",  # a CR whose LF has not arrived
    b"pi",  # an unfinished line
    b"x" * 70,  # an over-long line being discarded
    b"\x04",  # Ctrl-D: the session is over
])
def test_a_one_line_read_after_a_read_that_left_state_takes_the_general_path(before):
    """The one-line path runs only while every layer is at rest. After a read that leaves one
    mid-sequence, the same one-line read must mean what the general path makes of it."""
    split = RequestDecoder(max_line=64)
    joined = RequestDecoder(max_line=64)
    for after in (b"!ping\n", b"ping\n", b"\xff\xf0ping\n", b"ping\n"):
        assert split.feed(before) + split.feed(after) == joined.feed(before + after)


def test_the_general_path_runs_one_copy_of_a_repeat(server):
    client = RawClient(server)
    (conn,) = server.connections
    conn.queue = deque()
    server._execute(conn, Repeat("ping", 3))
    assert conn.queue[0].__class__ is Repeat and conn.queue[0].count == 2
    server._flush(conn)
    client.pump()
    assert client.buffer == b"pong\n"
    client.close()


def test_closing_the_server_sends_the_replies_it_was_holding(make_server):
    server = make_server("127.0.0.1", max_commands_per_tick=10)
    client = RawClient(server)
    client.send("ping\n" * 45)
    server.poll(0.5)  # ten ran; their replies wait for the rest of the burst
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


def test_under_a_budget_replies_go_out_every_tick(make_server):
    server = make_server("127.0.0.1", max_commands_per_tick=10)
    client = RawClient(server)
    client.send("ping\n" * 45)
    server.poll(0.5, budget=1.0)
    assert client.sock.recv(65536, socket.MSG_DONTWAIT) == b"pong\n" * 10
    client.close()


def test_a_run_that_parks_then_raises_keeps_every_reply_in_order(make_server):
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
        "sixth", "job 7", "ERR eighth refused", "job 9", "job 10", "job 11", "job 12", "pong"]
    client.close()
