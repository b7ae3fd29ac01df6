# Sans-I/O tests of one session, the h11 way: bytes in, bytes out. No socket, no Server, no
# thread, no sleep. A Connection (_session) is built on a real Registry and Dispatcher, with
# everything the shell would give it faked here in plain Python:
#   * a clock that is a list the test advances;
#   * call_later that records (deadline, callback, args), so a test fires timers by hand;
#   * wake and schedule that record the session they were asked to service;
#   * a transport whose write() appends to ``out`` and whose flush() moves ``out`` to ``sent``
#     unless the test says the kernel is full, with the flags and close paths of the real one.
# Every test asserts the exact bytes the client would read. Each runs with the registry's line
# cache on and off (the ``line_cache`` fixture), since the replies must not depend on it.
from __future__ import annotations

import collections
import gc
import json
import weakref
from typing import Any, Callable, List, Optional, Tuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reactor_mgmt._commands import Registry
from reactor_mgmt._dispatch import Dispatcher, Stats
from reactor_mgmt._errors import CommandError
from reactor_mgmt._replies import NO_REPLY, Pending, Stream, Wait
from reactor_mgmt._session import Connection
from reactor_mgmt._wire import END, ERROR, ITEM, OPEN, RESULT, read_frame

START = 1000.0


# ---- the fakes ----


class Clock:
    """time.monotonic() for a test: ``now`` is a one-item list that the test advances."""

    def __init__(self) -> None:
        self.now = [START]

    def __call__(self) -> float:
        return self.now[0]

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds


class Timers:
    """call_later() that only records; fire_due() runs what is due by the fake clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pending: List[Tuple[float, Callable[..., Any], tuple]] = []

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        self.pending.append((self.clock() + delay, callback, args))

    def fire_due(self) -> int:
        now = self.clock()
        due = sorted((t for t in self.pending if t[0] <= now), key=lambda t: t[0])
        self.pending = [t for t in self.pending if t[0] > now]
        for _, callback, args in due:
            callback(*args)
        return len(due)


class FakeLimits:
    def __init__(self, high_water: int, low_water: int, max_output: int) -> None:
        self.high_water = high_water
        self.low_water = low_water
        self.max_output = max_output


class FakeTransport:
    """What a session and its dispatcher use of _transport.Transport, with a list for a socket.

    write() queues into ``out``; flush() "sends" all of ``out`` into ``sent`` unless
    ``kernel_full``, then resumes a paused session below low_water (or a stream's next batch)
    through ``schedule``, and finishes a graceful close once nothing is left, as the real one
    does: at once after the peer's EOF, else by lingering (the session is stopped).
    """

    def __init__(self, limits: FakeLimits, schedule: Callable[[Any], None]) -> None:
        self.limits = limits
        self.schedule = schedule
        self.conn: Any = None
        self.out: List[bytes] = []
        self.sent: List[bytes] = []
        self.kernel_full = False
        self.closing = False
        self.closed = False
        self.paused = False
        self.cut_off = False
        self.lingering = False
        self.reset = False  # closed with output unsent
        self.interest_updates = 0

    @property
    def out_size(self) -> int:
        return sum(map(len, self.out))

    def peername(self) -> Any:
        return ("192.0.2.9", 9)

    def write(self, data: bytes) -> None:
        if self.closed or self.cut_off:
            return
        self.out.append(bytes(data))

    def flush(self) -> None:
        if self.out:
            if not self.kernel_full:
                self.sent.extend(self.out)
                self.out.clear()
            if self.out_size < self.limits.low_water:
                if self.paused:
                    self.paused = False
                    self.schedule(self.conn)
                elif self.conn.streaming():
                    self.schedule(self.conn)
        if self.closing and not self.out:
            self.finish_close()

    def update_interest(self) -> None:
        self.interest_updates += 1

    def close(self) -> None:
        if not self.closed:
            self.closing = True

    def finish_close(self) -> None:
        if self.closed or self.conn.eof:
            self.close_now()
            return
        if not self.lingering:
            self.lingering = True  # the real one shuts down writing and drains the peer
            self.conn.stop()

    def send_and_close(self) -> None:
        if not self.kernel_full:
            self.sent.extend(self.out)
            self.out.clear()
        self.reset = bool(self.out)
        self.close_now()

    def close_now(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.out.clear()
        self.conn.connection_lost()


class FakeListener:
    address = "fake-listener"


class Session:
    """One Connection with its dispatcher, registry and fakes, and the test's commands."""

    def __init__(
        self,
        *,
        caches: bool = True,
        level: int = 0,
        authenticated: bool = True,
        max_commands_per_tick: int = 256,
        max_output: int = 1 << 16,
        high_water: int = 4096,
        low_water: Optional[int] = None,
        pending_timeout: float = 5.0,
        max_line: int = 64,
        transport_type: type = FakeTransport,
    ) -> None:
        self.clock = Clock()
        self.timers = Timers(self.clock)
        self.woken: List[Any] = []
        self.scheduled: List[Any] = []
        self.stats = Stats(self.clock())
        self.registry = Registry(Connection)
        if not caches:
            self.registry.line_cache = None
        self.dispatcher = Dispatcher(
            self.registry,
            self.stats,
            clock=self.clock,
            call_later=self.timers.call_later,
            wake=self.woken.append,
            schedule=self.scheduled.append,
            max_line=max_line,
            max_output=max_output,
            max_commands_per_tick=max_commands_per_tick,
            pending_timeout=pending_timeout,
        )
        limits = FakeLimits(high_water, high_water // 4 if low_water is None else low_water, max_output)
        self.transport = transport_type(limits, self.scheduled.append)
        # The Connection's "server" is only what wake() goes through: this object.
        self.conn = Connection(self, self.dispatcher, self.transport, FakeListener(), 1, level, authenticated)
        self.transport.conn = self.conn
        self.pendings: List[Pending] = []
        self.cancelled: List[Pending] = []
        self.events: List[str] = []  # what the `tail` subscription sends next
        self.produced = 0  # items `count` has made
        self.streams_closed = 0
        self._install()

    def wake(self, conn: Connection) -> None:  # Server.wake, as Connection.write/close call it
        self.woken.append(conn)

    # ---- driving ----

    def feed(self, data: bytes) -> None:
        self.conn.data_received(data)

    def eof(self) -> None:
        self.conn.eof_received()

    def service(self, stop_at: Optional[float] = None) -> int:
        return self.conn.service(stop_at)

    def take(self) -> bytes:
        data = b"".join(self.transport.sent)
        self.transport.sent.clear()
        return data

    def run(self) -> int:
        """Services the session as the loop would, for as long as something asks for it."""
        ran = 0
        for _ in range(100):
            if not (self.scheduled or self.woken):
                return ran
            self.scheduled.clear()
            self.woken.clear()
            ran += self.conn.service()
        raise AssertionError("the session never stops asking to be serviced")

    def exchange(self, data: bytes) -> bytes:
        self.feed(data)
        self.service()
        return self.take()

    # ---- the commands ----

    def _install(self) -> None:
        add = self.registry.add
        session = self

        def ping() -> str:
            """Answers pong."""
            return "pong"

        def echo(*words: str) -> str:
            return " ".join(words)

        def add_numbers(a: int, b: int) -> int:
            return a + b

        def later(timeout: Optional[float] = None) -> Pending:
            pending = Pending(timeout)
            session.pendings.append(pending)
            pending.on_cancel(lambda: session.cancelled.append(pending))
            return pending

        def count(n: int) -> Any:
            try:
                for i in range(n):
                    session.produced += 1
                    yield f"item{i}"
            finally:
                session.streams_closed += 1

        def tail() -> Stream:
            def events() -> Any:
                try:
                    while True:
                        yield session.events.pop(0) if session.events else Wait()
                finally:
                    session.streams_closed += 1

            return Stream(events(), until_input=True)

        def nap(seconds: float) -> Any:
            yield "before"
            yield Wait(session.clock() + seconds)
            yield "after"

        def ticks() -> Any:  # an endless stream, one fake millisecond an item
            while True:
                session.clock.advance(0.001)
                yield "t"

        def tick() -> str:  # a handler that takes one fake second
            session.clock.advance(1.0)
            return "tick"

        def big(size: int) -> str:
            return "x" * size

        def big_stream(size: int) -> Any:
            try:
                yield "small"
                yield "x" * size
                yield "never"
            finally:
                session.streams_closed += 1

        def greet(conn: Connection) -> str:
            conn.write("hello from the handler")
            return "done"

        def crash() -> str:
            raise ValueError("boom")

        def leave(conn: Connection) -> str:
            conn.close()
            return "bye"

        def interrupt() -> str:  # Ctrl-C while a handler runs
            raise KeyboardInterrupt

        def halt() -> str:  # as Server.close() from a handler: no request runs after it
            session.dispatcher.stopped = True
            return "halting"

        add("ping", ping)
        add("echo", echo)
        add("add", add_numbers)
        add("later", later)
        add("count", count)
        add("tail", tail)
        add("nap", nap)
        add("ticks", ticks)
        add("tick", tick)
        add("big", big)
        add("big stream", big_stream)
        add("greet", greet)
        add("crash", crash)
        add("leave", leave)
        add("halt", halt)
        add("interrupt", interrupt)
        add("secret", lambda: "the secret", level="admin")
        add("hello", lambda: "hi", pre_auth=True)
        add("peek", lambda: "root's secret", pre_auth=True, level="admin")
        add("ordered", lambda: collections.OrderedDict([("b", 1), ("a", "x")]))  # a dict, not exactly dict
        add("quiet", lambda: NO_REPLY)


# Named apart from conftest's `caches` (which drives Server fixtures): this file builds no Server.
@pytest.fixture(params=[True, False], ids=["cached", "uncached"])
def line_cache(request: Any) -> bool:
    return request.param


@pytest.fixture
def make(line_cache: bool) -> Callable[..., Session]:
    return lambda **options: Session(caches=line_cache, **options)


def lines(data: bytes) -> List[str]:
    return data.decode().splitlines()


def frames(data: bytes) -> List[Any]:
    return [read_frame(line) for line in lines(data)]


# ---- framing: bytes in, replies out, in order ----


def test_a_request_split_across_feeds_runs_once_whole(make):
    s = make()
    for piece in (b"pi", b"n", b"g"):
        assert s.exchange(piece) == b""
    assert s.exchange(b"\n") == b"pong\n"
    assert s.stats.commands == 1


def test_a_cr_split_from_its_lf(make):
    s = make()
    assert s.exchange(b"echo a\r") == b""
    assert s.exchange(b"\n") == b"a\n"
    assert s.exchange(b"ping\r") == b""
    assert s.exchange(b"\nping\r\n") == b"pong\npong\n"


def test_a_utf8_character_split_across_feeds(make):
    s = make()
    euro = "€".encode()
    assert s.exchange(b"echo caf\xc3") == b""
    assert s.exchange(b"\xa9 " + euro[:1]) == b""
    assert s.exchange(euro[1:2]) == b""
    assert s.exchange(euro[2:] + b"\n") == "café €\n".encode()


def test_pipelined_requests_in_one_feed_reply_in_order(make):
    s = make()
    s.feed(b"ping\necho one\n\n  echo  two  \r\nadd 2 3\nping\n")
    assert s.scheduled == [s.conn]  # queued (no stop_at given, as sans-I/O): service() runs them
    assert s.service() == 5
    assert s.take() == b"pong\none\ntwo\n5\npong\n"


def test_a_read_is_the_sessions_turn(make):
    """The transport passes the poll's stop_at: the requests run at once and their replies are
    sent in that same call, with no turn in the ready queue."""
    s = make()
    s.conn.data_received(b"ping\necho hi\n", None)
    assert s.take() == b"pong\nhi\n" and s.scheduled == [] and s.conn.queue is None
    s.conn.data_received(b"", None)  # b"" is the EOF: the session closes once its output is out
    assert s.conn.eof and s.transport.closed


def test_bytes_that_end_with_the_eof_run_and_close_in_one_turn(make):
    """The transport knows the EOF came with these bytes (epoll's RDHUP and a short read): one
    turn runs them, even the last line without its newline, and the session closes, as it
    would have on a b"" read in the next poll."""
    s = make()
    s.conn.data_received(b"ping\necho last", None, True)
    assert s.take() == b"pong\nlast\n" and s.conn.eof and s.transport.closed and s.scheduled == []


def test_bytes_that_end_with_the_eof_wait_for_their_turn_and_for_the_limit(make):
    s = make(max_commands_per_tick=2)
    s.conn.data_received(b"ping\n" * 3, None, True)
    assert s.take() == b"pong\npong\n" and s.conn.eof and not s.transport.closing
    assert s.scheduled == [s.conn]  # the third waits for the next poll, then the session closes
    assert s.service() == 1 and s.take() == b"pong\n" and s.transport.closed


def test_a_read_turn_at_its_limit_leaves_the_rest_for_the_next_poll(make):
    s = make(max_commands_per_tick=2)
    s.conn.data_received(b"ping\n" * 3, None)
    assert s.take() == b"pong\npong\n" and s.scheduled == [s.conn]  # the loop makes it the next poll's
    assert s.service() == 1 and s.take() == b"pong\n"


def test_a_read_waits_for_a_turn_already_due(make):
    """A session already in the ready queue (a Pending answered, a stream to pump) runs its new
    requests on that turn, so they cannot overtake what it is due to send."""
    s = make()
    s.conn.scheduled = True
    s.conn.data_received(b"ping\n", None)
    assert s.take() == b"" and list(s.conn.queue or ()) == ["ping"]
    s.conn.scheduled = False
    assert s.service() == 1 and s.take() == b"pong\n"


def test_a_handler_writing_to_its_connection_comes_before_its_reply(make):
    s = make()
    assert s.exchange(b"greet\nping\n") == b"hello from the handler\ndone\npong\n"
    assert s.woken == [s.conn]  # Connection.write() asks the server to service it


# ---- errors in text ----


def test_text_errors_are_one_err_line_and_the_session_goes_on(make):
    s = make()
    s.feed(
        b"frobnicate\n"
        b"pnig\n"
        b"add 1\n"
        b"add 1 x\n"
        b"ping now\n"
        b'echo "abc\n'
        b"crash\n"
        b"echo \xc3\x28\n" + b"echo " + b"x" * 70 + b"\n"
        b"ping\n"
    )
    s.service()
    assert s.take() == (
        b"ERR unknown command 'frobnicate' (try 'help')\n"
        b"ERR unknown command 'pnig'; did you mean 'ping'?\n"
        b"ERR usage: add A B (missing B)\n"
        b"ERR usage: add A B (bad value for B: 'x': expected an integer)\n"
        b"ERR usage: ping (takes no arguments)\n"
        b"ERR cannot parse request: No closing quotation\n"
        b"ERR internal error (ValueError)\n"
        b"ERR request is not valid UTF-8\n"
        b"ERR line too long (limit 64 bytes)\n"
        b"pong\n"
    )
    assert s.stats.commands == 10 and s.stats.errors == 9


def test_a_quoted_line_is_split_like_a_shell(make):
    s = make()
    assert s.exchange(b"echo \"Big Bob\" 'too loud'\n") == b"Big Bob too loud\n"


# ---- JSON ----


def test_json_requests_with_cmd_and_argv(make):
    s = make()
    s.feed(
        b'{"id": 1, "cmd": "add", "args": [2, 3]}\n'
        b'{"id": "two", "argv": ["echo", "a", "--b"]}\n'
        b'{"id": 3, "cmd": "add", "kwargs": {"a": 1, "b": 2}}\n'
        b'{"id": 4, "cmd": "ping"}\n'
        b"ping\n"
    )
    s.service()
    data = s.take()
    assert data == (
        b'{"id": 1, "ok": true, "result": 5}\n'
        b'{"id": "two", "ok": true, "result": "a --b"}\n'
        b'{"id": 3, "ok": true, "result": 3}\n'
        b'{"id": 4, "ok": true, "result": "pong"}\n'
        b"pong\n"
    )
    assert frames(data) == [(RESULT, 1, 5), (RESULT, "two", "a --b"), (RESULT, 3, 3), (RESULT, 4, "pong"), None]


def test_a_command_with_no_parameters_refuses_json_arguments_and_a_dict_subclass_renders(make):
    """A JSON request to a command with no parameters binds nothing (as a text line does), so
    arguments are still refused; a result that is a dict subclass, which deliver() tests as a
    Pending or stream could be, still renders as a mapping."""
    s = make()
    s.feed(
        b'{"id": 1, "cmd": "ping", "args": [1]}\n'
        b'{"id": 2, "cmd": "ping", "kwargs": {"x": 1}}\n'
        b'{"id": 3, "cmd": "ping", "args": [], "kwargs": {}}\n'
        b'{"id": 4, "cmd": "ordered"}\n'
        b"ordered\n"
    )
    s.service()
    assert s.take() == (
        b'{"id": 1, "ok": false, "error": {"code": "usage", '
        b'"message": "usage: ping (too many arguments (expected at most 0))"}}\n'
        b'{"id": 2, "ok": false, "error": {"code": "usage", "message": "usage: ping (unknown argument \'x\')"}}\n'
        b'{"id": 3, "ok": true, "result": "pong"}\n'
        b'{"id": 4, "ok": true, "result": {"b": 1, "a": "x"}}\n'
        b"b: 1\na: x\n"
    )


def test_every_json_reply_is_held_to_max_output_even_one_with_no_result(make):
    # NO_REPLY's JSON frame echoes the request's id, which the client chooses: over max_output it
    # is refused like any other reply (and text gets nothing, as always).
    s = make(max_output=256, max_line=1024)
    long_id = "i" * 300
    s.feed(b'{"id": "' + long_id.encode() + b'", "cmd": "quiet"}\n{"id": 2, "cmd": "quiet"}\nquiet\nping\n')
    s.service()
    (too_large, ok, pong) = s.take().splitlines()
    assert json.loads(too_large)["error"]["code"] == "too_large"
    assert ok == b'{"id": 2, "ok": true, "result": null}' and pong == b"pong"


def test_json_errors_are_framed_for_their_request(make):
    s = make()
    try:
        json.loads('{"id": 3,')
    except ValueError as exc:
        malformed = f"malformed JSON: {exc}"
    s.feed(
        b'{"id": 3,\n'
        b'{"id": 4}\n'
        b'{"id": 5, "cmd": "frobnicate"}\n'
        b'{"id": 6, "argv": []}\n'
        b'{"id": 7, "cmd": "add", "args": [1]}\n'
        b'{"id": 8, "cmd": "crash"}\n'
        b'{"id": 9, "cmd": "\xc3\x28"}\n'
        b"ping\n"
    )
    s.service()
    data = s.take()
    assert data == (
        b'{"id": null, "ok": false, "error": {"code": "bad_request", "message": "' + malformed.encode() + b'"}}\n'
        b'{"id": 4, "ok": false, "error": {"code": "bad_request", "message": "\'cmd\' must be a non-empty string"}}\n'
        b'{"id": 5, "ok": false, "error": {"code": "unknown_command", '
        b"\"message\": \"unknown command 'frobnicate' (try 'help')\"}}\n"
        b'{"id": 6, "ok": false, "error": {"code": "bad_request", '
        b'"message": "\'argv\' must be a non-empty list of strings"}}\n'
        b'{"id": 7, "ok": false, "error": {"code": "usage", "message": "usage: add A B (missing B)"}}\n'
        b'{"id": 8, "ok": false, "error": {"code": "internal", "message": "internal error (ValueError)"}}\n'
        b'{"id": null, "ok": false, "error": {"code": "bad_request", "message": "request is not valid UTF-8"}}\n'
        b"pong\n"
    )
    kinds = frames(data)
    assert [kind[:2] for kind in kinds[:-1]] == [
        (ERROR, None),
        (ERROR, 4),
        (ERROR, 5),
        (ERROR, 6),
        (ERROR, 7),
        (ERROR, 8),
        (ERROR, None),
    ]
    assert [kind[2]["code"] for kind in kinds[:-1]] == [
        "bad_request",
        "bad_request",
        "unknown_command",
        "bad_request",
        "usage",
        "internal",
        "bad_request",
    ]
    assert kinds[-1] is None


def test_a_json_number_past_a_floats_range_is_refused_not_read_as_infinity(make):
    # json reads 1e400 as inf, so a float parameter got infinity where the same digits in a
    # text request are refused. The literal Infinity stays what it says.
    s = make()
    s.feed(b'{"id": 1, "cmd": "echo", "args": [1e400]}\n{"id": 2, "cmd": "echo", "args": [-2E+999, 1]}\n')
    s.feed(b'{"id": 3, "cmd": "echo", "args": [Infinity, 1e308]}\n')
    s.service()
    assert [json.loads(line) for line in s.take().splitlines()] == [
        {"id": None, "ok": False, "error": {"code": "bad_request", "message": "number out of range: 1e400"}},
        {"id": None, "ok": False, "error": {"code": "bad_request", "message": "number out of range: -2E+999"}},
        {"id": 3, "ok": True, "result": "Infinity 1e+308"},  # words of their JSON spelling
    ]


def test_argv_with_cmd_args_or_kwargs_is_refused_not_half_run(make):
    # Ignoring kwargs beside argv dropped what they asked: a {"dry_run": true} lost runs the
    # command for real. Empty args and kwargs ask nothing, so they may come along.
    s = make(max_line=1024)
    refused = (
        b'"error": {"code": "bad_request", '
        b"\"message\": \"'argv' cannot be combined with 'cmd', 'args' or 'kwargs'\"}}"
    )
    s.feed(
        b'{"id": 1, "argv": ["add", "1", "2"], "kwargs": {"b": 5}}\n'
        b'{"id": 2, "argv": ["add", "1"], "args": [2]}\n'
        b'{"id": 3, "argv": ["ping"], "cmd": "ping"}\n'
        b'{"id": 4, "argv": ["add", "1", "2"], "args": [], "kwargs": {}, "cmd": null}\n'
    )
    s.service()
    assert s.take().splitlines() == [
        b'{"id": 1, "ok": false, ' + refused,
        b'{"id": 2, "ok": false, ' + refused,
        b'{"id": 3, "ok": false, ' + refused,
        b'{"id": 4, "ok": true, "result": 3}',
    ]


# ---- a Pending reply ----


def test_a_carriage_return_in_a_result_is_sent_as_lf_on_every_path(make):
    """A text reply's lines end in LF: a CRLF or a lone CR in a result is a line break, the same
    bytes whether the str is returned (the fast path), a str subclass, a Pending's answer or a
    stream's item; a table row stays one line and a mapping value's lines stay under its
    column. JSON keeps the CR, escaped."""

    class Name(str):
        pass

    s = make()
    s.registry.add("plain", lambda: "a\rb\r\nc")
    s.registry.add("subclass", lambda: Name("a\rb\r\nc"))
    s.registry.add("items", lambda: iter(["a\rb\r\nc"]))
    s.registry.add("table", lambda: [{"a": "x\r\ny", "b": 1}, {"a": "zz", "b": 2}])
    s.registry.add("mapping", lambda: {"key": "a\rb", "k2": 1})
    assert s.exchange(b"plain\nsubclass\nitems\nlater\n") == b"a\nb\nc\n" * 3
    s.pendings[0].resolve("a\rb\r\nc")
    s.service()
    assert s.take() == b"a\nb\nc\n"
    assert s.exchange(b"table\nmapping\n") == b"a    b\nx y  1\nzz   2\nkey: a\n     b\nk2:  1\n"
    assert frames(s.exchange(b'{"id": 1, "cmd": "plain"}\n')) == [(RESULT, 1, "a\rb\r\nc")]


def test_later_requests_wait_behind_a_pending_then_follow_it_in_order(make):
    s = make()
    assert s.exchange(b"later\nping\necho after\n") == b""
    (pending,) = s.pendings
    assert s.conn.waiting is pending
    assert s.exchange(b"ping\n") == b""  # still behind it, however many feeds come
    assert s.woken == []
    pending.resolve({"answer": 42})
    assert s.woken == [s.conn]  # the host's resolve() asks for the session to be serviced
    assert s.service() == 3
    assert s.take() == b"answer: 42\npong\nafter\npong\n"
    assert s.conn.waiting is None and s.cancelled == []


def test_a_pending_in_json_and_a_failed_pending(make):
    s = make()
    assert s.exchange(b'{"id": 1, "cmd": "later"}\nlater\nping\n') == b""
    s.pendings[0].resolve([1, 2])
    s.service()
    assert s.take() == b'{"id": 1, "ok": true, "result": [1, 2]}\n'  # the text `later` now waits
    s.pendings[1].fail("the host said no")
    s.service()
    assert s.take() == b"ERR the host said no\npong\n"


def test_a_pending_times_out_by_the_fake_clock(make):
    s = make(pending_timeout=5.0)
    assert s.exchange(b"later\nping\n") == b""
    (pending,) = s.pendings
    ((deadline, _, _),) = s.timers.pending
    assert deadline == START + 5.0
    s.clock.advance(4.999)
    assert s.timers.fire_due() == 0
    assert s.woken == [] and not pending.done
    s.clock.advance(0.001)
    assert s.timers.fire_due() == 1
    assert s.woken == [s.conn]
    assert pending.cancelled and s.cancelled == [pending]  # the host's work is called off
    s.service()
    assert s.take() == b"ERR timeout\npong\n"
    pending.resolve("too late")  # nothing more is sent
    assert s.exchange(b"ping\n") == b"pong\n"


def test_a_pending_timeout_in_json_uses_its_own_timeout(make):
    s = make(pending_timeout=5.0)
    assert s.exchange(b'{"id": "p", "cmd": "later", "kwargs": {"timeout": 0.5}}\n') == b""
    assert [t[0] for t in s.timers.pending] == [START + 0.5]
    s.clock.advance(0.5)
    s.timers.fire_due()
    s.service()
    data = s.take()
    assert data == b'{"id": "p", "ok": false, "error": {"code": "timeout", "message": "timeout"}}\n'
    assert frames(data) == [(ERROR, "p", {"code": "timeout", "message": "timeout"})]


def test_a_pending_with_timeout_zero_waits_without_a_timer(make):
    s = make()
    assert s.exchange(b'{"id": 1, "cmd": "later", "kwargs": {"timeout": 0}}\n') == b""
    assert s.timers.pending == []
    s.pendings[0].resolve()
    s.service()
    assert s.take() == b'{"id": 1, "ok": true, "result": null}\n'


def test_a_pending_resolved_before_its_timeout_leaves_a_harmless_timer(make):
    s = make()
    s.exchange(b"later\n")
    s.pendings[0].resolve("on time")
    s.service()
    assert s.take() == b"on time\n"
    s.clock.advance(10)
    assert s.timers.fire_due() == 1
    assert s.woken == [s.conn] and s.exchange(b"ping\n") == b"pong\n"


def test_a_pending_whose_session_went_away_is_cancelled(make):
    s = make()
    assert s.exchange(b"later\nping\n") == b""
    (pending,) = s.pendings
    s.transport.close_now()  # the peer reset: the transport tells the session
    assert s.transport.closed
    assert pending.cancelled and s.cancelled == [pending]  # on_cancel ran
    assert s.conn.waiting is None and s.conn.queue is None
    pending.resolve("nobody listens")
    assert s.woken == []
    s.clock.advance(10)
    s.timers.fire_due()  # its timeout finds nothing to expire
    assert s.service() == 0 and s.take() == b""


def test_a_pending_the_host_keeps_does_not_keep_a_closed_session_alive(line_cache):
    s = Session(caches=line_cache)
    s.exchange(b"later\n")
    (pending,) = s.pendings
    timers = s.timers  # the host's timer heap outlives the session
    s.transport.close_now()
    conn = weakref.ref(s.conn)
    del s
    gc.collect()
    assert conn() is None
    assert pending.cancelled and len(timers.pending) == 1


# ---- streams ----


def test_a_stream_sends_only_while_the_transport_is_below_low_water(make):
    s = make(high_water=64, low_water=12)
    s.transport.kernel_full = True
    s.feed(b"count 5\nping\n")
    assert s.service() == 1
    assert s.transport.out == [b"item0\n", b"item1\n"]  # 12 bytes: at low_water, it stops
    assert s.take() == b""
    for _ in range(3):  # the kernel takes nothing: no more items are made
        s.service()
    assert s.produced == 2 and s.take() == b""
    s.transport.kernel_full = False
    s.scheduled.clear()
    s.transport.flush()  # the write event: the kernel took it all
    assert s.take() == b"item0\nitem1\n"
    assert s.scheduled == [s.conn]  # a stream below low_water resumes next tick
    s.service()
    assert s.take() == b"item2\nitem3\n"
    assert s.service() == 1  # the end of the stream lets `ping` run
    assert s.take() == b"item4\npong\n"
    assert s.streams_closed == 1 and s.conn.waiting is None


def test_a_json_stream_is_opened_itemised_and_ended(make):
    s = make()
    data = s.exchange(b'{"id": 9, "cmd": "count", "args": [2]}\nping\n')
    assert data == (
        b'{"id": 9, "stream": true}\n'
        b'{"id": 9, "item": "item0"}\n'
        b'{"id": 9, "item": "item1"}\n'
        b'{"id": 9, "ok": true, "result": null, "items": 2}\n'
        b"pong\n"
    )
    assert frames(data) == [(OPEN, 9, None), (ITEM, 9, "item0"), (ITEM, 9, "item1"), (END, 9, 2), None]


def test_a_stream_waiting_until_a_deadline_is_woken_by_a_timer(make):
    s = make()
    assert s.exchange(b"nap 2\nping\n") == b"before\n"
    ((deadline, callback, args),) = s.timers.pending
    assert deadline == START + 2
    # the timer holds the session weakly: a client that leaves is not kept until the deadline
    assert s.conn not in args and [arg() for arg in args if isinstance(arg, weakref.ref)] == [s.conn]
    s.scheduled.clear()
    s.clock.advance(2)
    s.timers.fire_due()
    assert s.scheduled == [s.conn]  # the timer schedules the session
    s.service()
    assert s.take() == b"after\npong\n"


def test_a_subscription_is_stopped_by_the_next_line_which_does_not_run(make):
    s = make()
    assert s.exchange(b"tail\n") == b""
    assert s.conn.subscribed() and s.conn.wants_input()
    s.events += ["e1", "e2"]
    s.service()  # the host's news: its wake() makes the loop service the session
    assert s.take() == b"e1\ne2\n"
    assert s.exchange(b"ping\n") == b""  # stops it, and is not a request
    assert s.streams_closed == 1 and s.conn.waiting is None
    assert s.stats.commands == 1
    s.events.append("e3")
    assert s.exchange(b"ping\n") == b"pong\n"


def test_a_blank_line_stops_a_subscription(make):
    s = make()
    assert s.exchange(b"tail\n") == b""
    assert s.exchange(b"\n") == b""
    assert s.streams_closed == 1
    assert s.exchange(b"\n\nping\n") == b"pong\n"  # blank lines are dropped again


def test_a_line_pipelined_behind_a_subscription_stops_it_at_once(make):
    s = make()
    s.events.append("never sent")
    assert s.exchange(b"tail\nstop\nping\n") == b"pong\n"
    assert s.conn.waiting is None and s.events == ["never sent"]


def test_a_json_subscription_ends_with_its_item_count(make):
    s = make()
    s.events.append("e1")
    assert s.exchange(b'{"id": "t", "cmd": "tail"}\n') == b'{"id": "t", "stream": true}\n{"id": "t", "item": "e1"}\n'
    assert s.exchange(b"stop\n") == b'{"id": "t", "ok": true, "result": null, "items": 1}\n'
    assert s.exchange(b'{"id": 2, "cmd": "ping"}\n') == b'{"id": 2, "ok": true, "result": "pong"}\n'


def test_eof_stops_a_subscription_and_closes(make):
    s = make()
    assert s.exchange(b'{"id": 1, "cmd": "tail"}\n') == b'{"id": 1, "stream": true}\n'
    s.eof()
    s.service()
    assert s.take() == b'{"id": 1, "ok": true, "result": null, "items": 0}\n'
    assert s.streams_closed == 1 and s.transport.closed


@pytest.mark.parametrize("together", [True, False], ids=["eof-with-request", "eof-next-read"])
def test_a_subscription_whose_client_has_shut_down_sends_what_it_has_then_ends(make, together):
    """A one-shot `echo 'log tail' | nc -N`: the EOF may be read with the request or after it;
    either way the subscription sends what it has at its start, then ends and the session closes."""
    s = make()
    s.events.extend(["first", "second"])
    if together:
        s.conn.data_received(b'{"id": 1, "cmd": "tail"}\n', None, True)
    else:
        s.conn.data_received(b'{"id": 1, "cmd": "tail"}\n', None)
        s.conn.data_received(b"", None)
    assert s.take() == (
        b'{"id": 1, "stream": true}\n{"id": 1, "item": "first"}\n{"id": 1, "item": "second"}\n'
        b'{"id": 1, "ok": true, "result": null, "items": 2}\n'
    )
    assert s.streams_closed == 1 and s.transport.closed


def _with_a_firehose(s: Session) -> Session:
    def firehose() -> Any:  # a subscription that never waits: one fake millisecond a tiny item
        while True:
            s.clock.advance(0.001)
            yield "t"

    s.registry.add("hose", lambda: Stream(firehose(), until_input=True))
    return s


def test_a_subscription_that_never_waits_ends_at_the_polls_end_once_its_client_has_shut_down(make):
    # No Wait ever comes, and the client drains every turn (as nc -N does) so low_water is never
    # reached either: the poll's end is its pause, or it would stream on for good.
    s = _with_a_firehose(make(high_water=1 << 16))
    s.conn.data_received(b"hose\n", s.clock() + 0.01, True)
    for _ in range(50):
        if s.transport.closed:
            break
        s.scheduled.clear()
        s.conn.service(s.clock() + 0.01)  # a fresh end each turn
    assert s.transport.closed
    assert 0 < s.take().count(b"t\n") < 1000


def test_a_subscription_behind_output_over_low_water_sends_its_first_reply_before_the_eof_ends_it(make):
    s = make(high_water=4096, low_water=1024)
    s.events.append("first")
    s.conn.data_received(b"big 2000\ntail\n", None, True)
    s.run()
    assert s.take()[2001:] == b"first\n"
    assert s.transport.closed and s.streams_closed == 1


@pytest.mark.parametrize(
    "reads",
    [[b"tail\n", b"\xff\xf4"], [b"tail\n", b"\x04"], [b"tail\n\x04"]],
    ids=["IP-next-read", "ctrl-d-next-read", "ctrl-d-same-read"],
)
def test_ending_the_session_during_a_subscription_closes_it(make, reads):
    s = make()
    s.events.append("e1")
    for data in reads:
        s.feed(data)
        s.service()
    assert s.take() == (b"e1\n" if len(reads) > 1 else b"")
    assert s.conn.waiting is None  # the subscription is over
    assert s.transport.closing and s.transport.lingering


def test_a_stream_item_larger_than_max_output_ends_the_stream_with_the_error(make):
    s = make(max_output=64, high_water=64)
    assert s.exchange(b"big stream 100\nping\n") == (
        b"small\nERR reply too large (101 bytes; max_output is 64)\npong\n"
    )
    assert s.streams_closed == 1


# ---- the tick's limits ----


def test_max_commands_per_tick(make):
    s = make(max_commands_per_tick=2)
    s.feed(b"ping\n" * 5)
    s.scheduled.clear()
    assert s.service() == 2
    assert s.take() == b"pong\npong\n"
    assert s.scheduled == [s.conn]  # asks for more
    s.scheduled.clear()
    assert s.service() == 2 and s.scheduled == [s.conn]
    s.scheduled.clear()
    assert s.service() == 1 and s.scheduled == []
    assert s.take() == b"pong\npong\npong\n"


def test_the_stop_at_budget_by_the_fake_clock(make):
    s = make()
    s.feed(b"tick\n" * 5)
    s.scheduled.clear()
    # Each `tick` takes a fake second; the budget is checked before every request but the first.
    assert s.service(stop_at=START + 2.5) == 3
    assert s.take() == b"tick\ntick\ntick\n"
    assert s.scheduled == [s.conn]
    assert s.clock() == START + 3
    s.scheduled.clear()
    assert s.service(stop_at=s.clock() - 1) == 1  # a budget already spent still runs one
    assert s.scheduled == [s.conn]
    assert s.service() == 1 and s.take() == b"tick\ntick\n"


def test_the_stop_at_budget_stops_a_stream(make):
    s = make(high_water=1 << 16, max_output=1 << 16)
    s.feed(b"ticks\n")
    s.scheduled.clear()
    s.service(stop_at=START + 0.0095)
    # The clock is read after every item: the tenth fake millisecond passes the end (it was read
    # every 64th item, which ran 63 past it).
    assert s.take() == b"t\n" * 10
    assert set(s.scheduled) == {s.conn} and s.conn.streaming()
    s.conn.connection_lost()


def test_output_above_high_water_pauses_requests_until_it_drains(make):
    s = make(high_water=16, low_water=8, max_output=64)
    s.transport.kernel_full = True
    s.feed(b"echo 0123456789abcdef\nping\n")
    assert s.service() == 1
    assert s.transport.paused and not s.conn.wants_input()
    assert s.service() == 0  # still above high water: `ping` waits
    s.transport.kernel_full = False
    s.scheduled.clear()
    s.transport.flush()
    assert not s.transport.paused and s.scheduled == [s.conn]
    assert s.service() == 1
    assert s.take() == b"0123456789abcdef\npong\n"


# ---- ending ----


def test_eof_finishes_the_queue_then_closes(make):
    s = make()
    s.feed(b"ping\necho last")  # the last line has no newline
    s.eof()
    assert s.service() == 2
    assert s.take() == b"pong\nlast\n"
    assert s.transport.closed and not s.transport.lingering


def test_eof_behind_a_pending_waits_for_it_then_closes(make):
    s = make()
    s.feed(b"later\nping\n")
    s.eof()
    s.service()
    assert s.take() == b"" and not s.transport.closing
    s.pendings[0].resolve("finally")
    s.service()
    assert s.take() == b"finally\npong\n"
    assert s.transport.closed and s.cancelled == []


@pytest.mark.parametrize("ender", [b"\xff\xf4", b"\xff\xec", b"\x04"], ids=["telnet-IP", "telnet-EOF", "ctrl-d"])
def test_end_session_closes_after_the_replies_before_it(make, ender):
    s = make()
    s.feed(b"ping\r\n" + ender + b"ping\n")
    s.service()
    assert s.take() == b"pong\n"  # what follows the end is not run
    assert s.transport.closing and s.transport.lingering  # no EOF from the peer: the real one lingers
    assert s.exchange(b"ping\n") == b""


def test_a_handler_closing_its_connection(make):
    s = make()

    def bye(conn: Connection) -> str:
        conn.close()
        return "bye"

    s.registry.add("bye", bye)
    s.feed(b"bye\nping\n")
    s.service()
    assert s.take() == b"bye\n"  # `ping` behind it does not run
    assert s.transport.lingering and s.woken == [s.conn]


class SocketlessTransport(FakeTransport):
    """A transport that cannot tell the peer's address (its socket is gone)."""

    @staticmethod
    def peername() -> Any:
        return None


class PeerTransport(FakeTransport):
    """A transport that answers the one question the session asks about the peer (Connection.peer)."""

    @staticmethod
    def peername() -> Any:
        return ("192.0.2.1", 4242)


def test_an_http_request_closes_after_the_replies_before_it(make):
    s = make(transport_type=PeerTransport)
    s.feed(b"ping\nGET / HTTP/1.1\r\nHost: x\r\nping\n")
    s.service()
    assert s.take() == b"pong\n"
    assert s.transport.closed and s.stats.http_closed == 1


def test_an_http_request_closes_with_a_transport_that_has_no_socket(make):
    s = make(transport_type=SocketlessTransport)
    s.feed(b"ping\nGET / HTTP/1.1\r\nping\n")
    s.service()
    assert s.take() == b"pong\n"
    assert s.transport.closed


# ---- permissions ----

FORMS = {
    "text": lambda name: f"{name}\n".encode(),
    "quoted": lambda name: f"'{name}'\n".encode(),
    "json cmd": lambda name: json.dumps({"id": 7, "cmd": name}).encode() + b"\n",
    "json argv": lambda name: json.dumps({"id": 7, "argv": [name]}).encode() + b"\n",
}


def refusal(form: str, message: str) -> bytes:
    if form.startswith("json"):
        return (
            b'{"id": 7, "ok": false, "error": {"code": "denied", "message": '
            + json.dumps(message, ensure_ascii=False).encode()
            + b"}}\n"
        )
    return f"ERR {message}\n".encode()


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_level_too_low_is_refused_in_every_form(make, form):
    s = make(level=1)  # operator
    data = s.exchange(FORMS[form]("secret"))
    assert data == refusal(form, "permission denied: 'secret' needs admin")
    if form.startswith("json"):
        assert frames(data) == [(ERROR, 7, {"code": "denied", "message": "permission denied: 'secret' needs admin"})]
    assert s.exchange(b"ping\n") == b"pong\n"
    admin = make(level=2)
    assert admin.exchange(FORMS[form]("secret")) in (
        b"the secret\n",
        b'{"id": 7, "ok": true, "result": "the secret"}\n',
    )


@pytest.mark.parametrize("form", sorted(FORMS))
def test_before_auth_only_pre_auth_commands_run(make, form):
    s = make(level=0, authenticated=False)
    assert s.exchange(FORMS[form]("ping")) == refusal(form, "authentication required (send 'auth TOKEN')")
    assert s.exchange(FORMS[form]("hello")) in (b"hi\n", b'{"id": 7, "ok": true, "result": "hi"}\n')
    # A pre_auth command above the connection's level is still refused for its level (issue 16).
    assert s.exchange(FORMS[form]("peek")) == refusal(form, "permission denied: 'peek' needs admin")


def test_suggestions_name_only_what_the_connection_may_run(make):
    s = make(level=0)
    assert s.exchange(b"secre\n") == b"ERR unknown command 'secre' (try 'help')\n"
    assert make(level=2).exchange(b"secre\n") == b"ERR unknown command 'secre'; did you mean 'secret'?\n"


# ---- replies over max_output ----


def test_a_reply_larger_than_max_output_becomes_the_too_large_error(make):
    s = make(max_output=64, high_water=64)
    s.feed(b'big 63\nbig 64\n{"id": 1, "cmd": "big", "args": [100]}\nping\n')
    assert s.run() == 4  # the first reply reaches high_water: the rest run once it drains
    data = s.take()
    assert (
        data
        == (
            b"x" * 63 + b"\n"  # 64 bytes with its newline: exactly max_output is allowed
            b"ERR reply too large (65 bytes; max_output is 64)\n"
            b'{"id": 1, "ok": false, "error": {"code": "too_large", '
            b'"message": "reply too large (136 bytes; max_output is 64)"}}\n'
            b"pong\n"
        )
    )
    too_large = {"code": "too_large", "message": "reply too large (136 bytes; max_output is 64)"}
    assert frames(data)[2] == (ERROR, 1, too_large)
    assert s.stats.errors == 2


def test_an_error_reply_larger_than_max_output_becomes_the_too_large_error(make):
    """An error is a reply like a result: a CommandError, a failed Pending or the error that
    ends a stream, over max_output, is replaced by too_large (counted once), in text and JSON,
    and the connection carries on. Sent whole, it could pass high_water + max_output: cut off."""
    s = make(max_output=64, high_water=64, max_line=128)

    def fail_big(size: int) -> str:
        raise CommandError("x" * size)

    def pending_big(size: int) -> Pending:
        pending = Pending()
        pending.fail("y" * size)
        return pending

    def stream_big(size: int) -> Any:
        yield "small"
        raise CommandError("z" * size)

    s.registry.add("failbig", fail_big)
    s.registry.add("pendbig", pending_big)
    s.registry.add("streambig", stream_big)
    s.feed(
        b"failbig 59\nfailbig 60\npendbig 100\nstreambig 100\n"
        b'{"id": 1, "cmd": "failbig", "args": [100]}\n{"id": 2, "cmd": "pendbig", "args": [100]}\nping\n'
    )
    s.run()
    assert (
        s.take()
        == (
            b"ERR " + b"x" * 59 + b"\n"  # 64 bytes with its newline: exactly max_output is allowed
            b"ERR reply too large (65 bytes; max_output is 64)\n"
            b"ERR reply too large (105 bytes; max_output is 64)\n"
            b"small\nERR reply too large (105 bytes; max_output is 64)\n"
            b'{"id": 1, "ok": false, "error": {"code": "too_large", '
            b'"message": "reply too large (166 bytes; max_output is 64)"}}\n'
            b'{"id": 2, "ok": false, "error": {"code": "too_large", '
            b'"message": "reply too large (166 bytes; max_output is 64)"}}\n'
            b"pong\n"
        )
    )
    assert not (s.transport.closing or s.transport.cut_off)
    assert s.stats.errors == 6


class NoSuchPlayer(CommandError):
    """A CommandError whose __init__ skips CommandError.__init__: no `message` attribute."""

    code = "not_found"

    def __init__(self, who: str) -> None:
        Exception.__init__(self, f"no such player {who}")


def test_a_command_error_without_its_message_attribute_is_still_answered(make):
    """Its str() is the message, its class's code the code, wherever it is raised or failed
    with: poll() raised AttributeError, and the request's reply was lost."""
    s = make()

    def kick(who: str) -> str:
        raise NoSuchPlayer(who)

    def kick_later(who: str) -> Pending:
        pending = Pending()
        pending.fail(NoSuchPlayer(who))
        return pending

    def kick_stream(who: str) -> Any:
        yield "looking"
        raise NoSuchPlayer(who)

    s.registry.add("kick", kick)
    s.registry.add("kicklater", kick_later)
    s.registry.add("kickstream", kick_stream)
    s.feed(
        b'kick bob\nkicklater bob\nkickstream bob\n{"id": 1, "cmd": "kick", "args": ["bob"]}\n'
        b'{"id": 2, "cmd": "kicklater", "args": ["bob"]}\nping\n'
    )
    s.run()
    not_found = b'"error": {"code": "not_found", "message": "no such player bob"}}\n'
    assert s.take() == (
        b"ERR no such player bob\nERR no such player bob\nlooking\nERR no such player bob\n"
        b'{"id": 1, "ok": false, ' + not_found + b'{"id": 2, "ok": false, ' + not_found + b"pong\n"
    )
    assert s.stats.errors == 5


# ---- one request in a read: the turn without a queue, pinned to the queued path ----

# Reads as a client that waits for each reply sends them, one request each (and one pipelined
# read), and what the host does between them. Session.data_received runs a lone request without its queue (the round
# trip's path); the same reads queued and then serviced must give the same bytes and state.
_ONE_LINE_READS = [
    b"ping\n",
    b"ping\nping\nping\n",  # over max_commands_per_tick: one waits for the next turn
    b"echo  a   b\r\n",
    b"add 2 3\n",
    b"add x\n",
    b"nosuch\n",
    b"secret\n",
    b"later\n",
    b"count 3\n",
    b"tail\n",
    b"greet\n",
    b"crash\n",
    b"leave\n",  # the handler closes its connection
    b"halt\n",  # the handler closes the server
    b"interrupt\n",  # KeyboardInterrupt out of the handler, and out of poll()
    b"quiet\n",
    b"big 5000\n",  # over high_water
    b"big 70000\n",  # over max_output
    b"ordered\n",
    b'{"id": 1, "cmd": "ping"}\n',
    b'{"id": 2, "cmd": "later"}\n',
    b"echo " + b"y" * 80 + b"\n",  # over max_line: a protocol event
    b"echo \xff\n",  # not UTF-8: a protocol event
    b"\x04",  # Ctrl-D: the session ends
    b"",  # the client's EOF
]
_HOST_STEPS = ["resolve", "event", "full", "drain"]


def _replay(
    steps: List[Any], at_once: bool, observed: bool = False, stop_at: Optional[float] = None
) -> Tuple[Any, ...]:
    """Runs ``steps`` as the loop would: a host step (a Pending answered, an event for `tail`,
    the kernel full or drained) between polls, each read in a poll of its own, and one turn a
    poll. ``at_once``, a read is its session's turn, as the transport gives it, and a turn it
    asks for is the next poll's; else its requests queue and the poll's ready pass runs them."""
    s = Session(max_commands_per_tick=2)
    conn = s.conn
    seen: List[Any] = []
    if observed:  # every request reported, as an audit log sees them
        s.dispatcher.observe(lambda c, request, outcome, took: seen.append((request and request[0].name, outcome)))

    def schedule(session: Any) -> None:  # Loop.schedule: a turn in the ready pass
        if not session.scheduled and not session.transport.closed:
            session.scheduled = True
            s.scheduled.append(session)

    s.dispatcher.schedule = s.transport.schedule = schedule
    s.wake = schedule  # type: ignore[method-assign]  # Server.wake: conn.close() and write() wake it
    s.dispatcher.wake = schedule  # a Pending answered wakes its session

    interrupted: List[int] = []

    def ready_pass() -> None:  # one turn a poll: what a turn leaves waits for the next poll
        if s.scheduled and not s.transport.closed:
            s.scheduled.clear()
            conn.scheduled = False
            try:
                conn.service(stop_at)
            except KeyboardInterrupt:  # the loop schedules the rest: see Loop.handle
                interrupted.append(len(interrupted))
                schedule(conn)

    for step in steps:
        if s.transport.closed:  # the loop reads a closed connection no more
            break
        if step == "resolve":  # the host answers the oldest Pending
            for pending in s.pendings:
                if not pending.done:
                    pending.resolve("answered")
                    break
        elif step == "event":
            s.events.append("event")
        elif step == "full":  # the kernel takes nothing for a while: output piles up
            s.transport.kernel_full = True
        elif step == "drain":
            s.transport.kernel_full = False
            s.transport.flush()
        else:  # a poll that reads
            read, eof = step
            due = conn.scheduled  # a turn due before this poll: its ready pass runs it
            if at_once:  # as the transport passes it: the poll's stop_at, and the turn at once
                try:
                    conn.data_received(read, stop_at, eof)
                except KeyboardInterrupt:  # out of poll(), into the host: the next poll goes on
                    interrupted.append(len(interrupted))
                    continue
                if due:
                    ready_pass()
                continue  # a turn this read's turn asked for is the next poll's (Loop.schedule)
            conn.data_received(read, eof=eof)  # queued, then its turn in this poll's ready pass
        ready_pass()
    return (
        s.take(),
        b"".join(s.transport.out),
        s.stats.commands,
        s.stats.errors,
        s.transport.closing,
        s.transport.closed,
        s.transport.lingering,
        conn.eof,
        list(conn.queue or ()),
        type(conn.waiting).__name__,
        conn.scheduled and not s.transport.closed,  # a turn still asked for
        seen,
        interrupted,
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(_ONE_LINE_READS), st.booleans()),
            st.sampled_from(_HOST_STEPS),
        ),
        max_size=12,
    )
)
# The states a short search may miss: a turn due (a paused session resumed) when the next read
# comes, and the output at high_water (the kernel took nothing) when it comes.
@example([(b"big 5000\n", False), (b"big 5000\n", False)])
@example(["full", (b"big 5000\n", False), (b"ping\n", False)])
def test_a_lone_request_runs_as_the_queued_path_runs_it(steps):
    # (b"", True) would say the EOF twice: b"" is the EOF already
    steps = [step if isinstance(step, str) else (step[0], step[1] and step[0] != b"") for step in steps]
    # No end, an end already past (only a turn's first request runs), an end far off
    for stop_at in (None, START - 1.0, START + 100.0):
        assert _replay(steps, True, stop_at=stop_at) == _replay(steps, False, stop_at=stop_at)
    assert _replay(steps, at_once=True, observed=True) == _replay(steps, at_once=False, observed=True)


def test_a_read_given_to_a_closed_connection_runs_nothing():
    for at_once in (True, False):
        s = Session()
        s.transport.close_now()
        if at_once:
            s.conn.data_received(b"ping\n", None)
        else:
            s.conn.data_received(b"ping\n")
            s.conn.service(None)
        assert s.stats.commands == 0 and s.take() == b""


def test_a_lone_request_runs_without_a_queue(monkeypatch):
    """The path the property above pins is the one taken: no deque is made, no turn scheduled."""
    import reactor_mgmt._session as session_module

    made: List[Any] = []

    def watched_deque(*args: Any) -> Any:
        made.append(args)
        return collections.deque(*args)

    monkeypatch.setattr(session_module, "deque", watched_deque)
    s = Session()
    s.conn.data_received(b"ping\n", None)
    assert s.take() == b"pong\n" and made == [] and s.scheduled == [] and s.conn.queue is None
    s.conn.data_received(b"ping\nping\n", None)  # two in a read: they queue
    assert s.take() == b"pong\npong\n" and len(made) == 1


def test_a_turn_that_ends_above_high_water_pauses_reading():
    """The kernel took nothing of a reply past high_water: the session reads no more (the
    transport drops READ) until its output drains below low_water, lone request or not."""
    for read in (b"big 5000\n", b"ping\nbig 5000\n"):
        s = Session()
        s.transport.kernel_full = True
        s.conn.data_received(read, None)
        assert s.transport.paused and not s.conn.queue
        s.transport.kernel_full = False
        s.transport.flush()  # drained: reading resumes, and the session gets a turn
        assert not s.transport.paused and s.scheduled == [s.conn]
