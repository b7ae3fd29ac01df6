# Replies that are not finished when the handler returns: Pending (deferred), streams sent only as
# fast as the client reads, subscriptions (log tail, watch) that run until the client speaks.
# The bounds are checked where they live: the server's buffered output is sampled after every
# poll(), never against the clock, and the log tail's per-subscriber queue is inspected directly.
from __future__ import annotations

import json
import logging
import socket
import struct
import time
from typing import Any, Iterator, List

import pytest

import reactor_mgmt
from conftest import TIMEOUT, RawClient
from reactor_mgmt import CommandError, Connection, Pending, Stream, Wait


def one(client: RawClient, line: str) -> str:
    (reply,) = client.request(line)
    return reply


def settle(client: RawClient, seconds: float = 0.05) -> None:
    """Polls for a little while so that anything the server would wrongly send arrives."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.pump()
        time.sleep(0.005)
    client.pump()


def reset_connection(client: RawClient) -> None:
    """Closes with RST (SO_LINGER 0): the server cannot mistake it for a half-close."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def server_conn(server: reactor_mgmt.Server) -> Connection:
    (conn,) = server.connections
    return conn


def small_window_client(server: reactor_mgmt.Server) -> tuple[socket.socket, Connection]:
    """A non-blocking client socket and its server-side Connection, both with small kernel
    buffers, so a client that reads slowly (or not at all) pushes back on the server quickly
    instead of the kernel soaking up megabytes."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # before connect: a small window
    sock.settimeout(TIMEOUT)
    sock.connect(server.addresses[0])
    deadline = time.monotonic() + TIMEOUT
    while not server.connections:
        assert time.monotonic() < deadline
        server.poll(0.01)
    conn = server_conn(server)
    conn.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock.setblocking(False)
    return sock, conn


# ---- Pending ----


@pytest.fixture
def deferred(server):
    pendings: List[Pending] = []

    @server.command
    def later(timeout: float = -1.0) -> Pending:
        pending = Pending(timeout=None if timeout < 0 else timeout)
        pendings.append(pending)
        return pending

    server.pendings = pendings  # type: ignore[attr-defined]
    return server


def test_pending_is_answered_on_a_later_tick(deferred):
    client = RawClient(deferred)
    client.send("later\n")
    settle(client)
    assert client.buffer == b""
    (pending,) = deferred.pendings
    assert not pending.done and not pending.cancelled
    pending.resolve({"answer": 42})
    assert client.lines(1) == ["answer: 42"]
    assert one(client, "ping") == "pong"


def test_pipelined_commands_wait_behind_a_pending(deferred):
    client = RawClient(deferred)
    client.send("later\nping\necho after\nlater\necho last\n")
    settle(client)
    assert client.buffer == b""  # the pong is held back, not sent ahead of the deferred reply
    first = deferred.pendings[0]
    first.resolve("first")
    assert client.lines(3) == ["first", "pong", "after"]
    settle(client)
    assert client.buffer == b""
    assert len(deferred.pendings) == 2
    deferred.pendings[1].fail("second failed")
    assert client.lines(2) == ["ERR second failed", "last"]


def test_pending_in_json(deferred):
    client = RawClient(deferred)
    client.send('{"cmd": "later", "id": "a"}\n{"cmd": "later", "id": "b"}\n{"cmd": "ping", "id": "c"}\n')
    settle(client)
    deferred.pendings[0].resolve([1, 2])
    assert json.loads(client.lines(1)[0]) == {"id": "a", "ok": True, "result": [1, 2]}
    deferred.pendings[1].fail(CommandError("no such job", code="usage"))
    assert [json.loads(line) for line in client.lines(2)] == [
        {"id": "b", "ok": False, "error": {"code": "usage", "message": "no such job"}},
        {"id": "c", "ok": True, "result": "pong"},
    ]


def test_pending_resolved_before_return_replies_at_once(server):
    @server.command
    def instant() -> Pending:
        pending = Pending()
        pending.resolve("already")
        return pending

    client = RawClient(server)
    assert one(client, "instant") == "already"


def test_pending_resolved_with_a_stream(deferred):
    client = RawClient(deferred)
    client.send("later\nping\n")
    settle(client)
    deferred.pendings[0].resolve(iter(["a", "b"]))
    assert client.lines(3) == ["a", "b", "pong"]


def test_pending_timeout_per_pending(deferred):
    cancelled = []
    client = RawClient(deferred)
    client.send("later 0.2\nping\n")
    client.wait_for(lambda buffer: bool(deferred.pendings))
    deferred.pendings[0].on_cancel(lambda: cancelled.append(True))
    assert client.lines(2) == ["ERR timeout", "pong"]
    pending = deferred.pendings[0]
    assert pending.cancelled and cancelled == [True]
    pending.resolve("too late")  # the host finishing late is harmless
    settle(client)
    assert client.buffer == b""


def test_pending_timeout_per_server_and_json_code(make_server):
    srv = make_server("127.0.0.1", pending_timeout=0.2)
    srv.add_command("later", lambda: Pending())
    client = RawClient(srv)
    client.send('{"cmd": "later", "id": 5}\n')
    assert json.loads(client.lines(1)[0]) == {"id": 5, "ok": False, "error": {"code": "timeout", "message": "timeout"}}


def test_pending_timeout_defaults(deferred):
    assert deferred.pending_timeout == 30.0
    client = RawClient(deferred)
    client.send("later\n")
    client.wait_for(lambda buffer: bool(deferred.pendings))
    # The earliest timer is the 30 s timeout (the idle reaper waits 300 s).
    remaining = deferred.next_deadline() - time.monotonic()
    assert 25 < remaining <= 30
    deferred.pendings[0].resolve()
    assert client.lines(1) == ["OK"]


def test_pending_timeout_zero_waits_forever(deferred):
    client = RawClient(deferred)
    client.send("later 0\n")
    client.wait_for(lambda buffer: bool(deferred.pendings))
    assert deferred.next_deadline() - time.monotonic() > 60  # only the idle reaper is armed
    deferred.pendings[0].resolve("eventually")
    assert client.lines(1) == ["eventually"]


def test_connection_reset_cancels_the_pending(deferred):
    cancelled = []
    client = RawClient(deferred)
    client.send("later\n")
    client.wait_for(lambda buffer: bool(deferred.pendings))
    pending = deferred.pendings[0]
    pending.on_cancel(lambda: cancelled.append("first"))
    pending.on_cancel(lambda: cancelled.append("second"))
    reset_connection(client)
    deadline = time.monotonic() + TIMEOUT
    while not pending.cancelled and time.monotonic() < deadline:
        deferred.poll(0.01)
    assert pending.cancelled and cancelled == ["first", "second"]
    assert deferred.connections == []
    pending.resolve("nobody is listening")  # no error, nothing to send
    deferred.poll(0)
    assert not pending.done


def poll_until(server: reactor_mgmt.Server, done: Any) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done() and time.monotonic() < deadline:
        server.poll(0.01)


def test_a_write_event_with_the_read_that_parked_the_connection_is_no_reset():
    # One epoll event both reads a request that parks the connection behind a Pending (with a
    # request queued behind it: registered for errors alone) and finds room to write: the write
    # bit is stale, and was taken for a reset, dropping a healthy client.
    server = reactor_mgmt.Server("127.0.0.1", 0)
    waiting: List[reactor_mgmt.Pending] = []

    @server.command
    def big() -> str:
        return "x" * 72_000

    @server.command
    def later() -> reactor_mgmt.Pending:
        waiting.append(reactor_mgmt.Pending(timeout=5))
        return waiting[-1]

    client = socket.create_connection(server.addresses[0], timeout=TIMEOUT)
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.poll(0.05)
        (conn,) = server.connections
        conn.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.sendall(b"big\n")
        for _ in range(5):
            server.poll(0.01)
        assert conn.buffered_output  # output left over: read and write are watched
        client.sendall(b"later\nping\n")
        got = b""
        client.settimeout(0.3)
        try:
            while len(got) < 72_001:
                got += client.recv(1 << 20)
        except socket.timeout:
            pass
        for _ in range(10):
            server.poll(0.01)
        assert not conn.closed and waiting and not waiting[0].cancelled
        waiting[0].resolve("done")
        client.settimeout(TIMEOUT)
        while not got.endswith(b"pong\n"):
            data = client.recv(1 << 20)
            assert data, got[-40:]
            got += data
            server.poll(0.01)
        assert got == b"x" * 72_000 + b"\ndone\npong\n"
    finally:
        client.close()
        server.close()


def test_a_reset_with_requests_queued_behind_a_pending_cancels_it(deferred):
    # Nothing to read (requests are queued) and nothing to send: the socket is watched for
    # errors alone, and the reset is seen.
    cancelled = []
    client = RawClient(deferred)
    client.send("later\nping\n")
    client.wait_for(lambda buffer: bool(deferred.pendings))
    deferred.pendings[0].on_cancel(lambda: cancelled.append(True))
    client.pump(3)
    reset_connection(client)
    poll_until(deferred, lambda: cancelled)
    assert cancelled == [True] and deferred.connections == []


def test_a_reset_with_requests_queued_behind_a_stream_closes_it(server):
    finished = []

    @server.command
    def events() -> Iterator[Any]:
        try:
            yield "first"
            while True:
                yield Wait()
        finally:
            finished.append(True)

    client = RawClient(server)
    client.send("events\nping\n")
    assert client.lines(1) == ["first"]
    client.pump(3)
    reset_connection(client)
    poll_until(server, lambda: finished)
    assert finished == [True] and server.connections == []


@pytest.mark.parametrize("selector", ["PollSelector", "SelectSelector"])
def test_requests_queued_behind_a_pending_without_epoll(make_server, monkeypatch, selector):
    # select and poll cannot watch a socket for errors alone: there it is unregistered while it
    # waits, as before, and the replies still come.
    import selectors

    monkeypatch.setattr(selectors, "DefaultSelector", getattr(selectors, selector))
    srv = make_server("127.0.0.1")
    pendings: List[Pending] = []
    srv.add_command("later", lambda: pendings.append(Pending()) or pendings[-1])
    client = RawClient(srv)
    client.send("later\nping\n")
    client.wait_for(lambda buffer: bool(pendings))
    client.pump(3)
    assert server_conn(srv).transport.mask == 0
    pendings[0].resolve("done")
    assert client.lines(2) == ["done", "pong"]


def test_server_close_cancels_the_pending(deferred):
    client = RawClient(deferred)
    client.send("later\n")
    client.wait_for(lambda buffer: bool(deferred.pendings))
    deferred.close()
    assert deferred.pendings[0].cancelled


def test_an_on_cancel_that_raises_at_the_timeout_still_answers_the_client(server, caplog):
    ran: List[str] = []

    def fails() -> None:
        raise RuntimeError("host cleanup failed")

    @server.command
    def later() -> Pending:
        pending = Pending(timeout=0.1)
        pending.on_cancel(fails)
        pending.on_cancel(lambda: ran.append("second"))  # not skipped by the first's error
        return pending

    client = RawClient(server)
    client.send("later\nping\n")
    assert client.lines(2) == ["ERR timeout", "pong"]  # the poll did not raise, nothing was lost
    assert ran == ["second"]
    assert "on_cancel callback raised" in caplog.text


@pytest.fixture
def shared(server):
    """A `nextframe` command whose requests all wait on the same Pending (the next frame)."""
    server.frame = Pending(timeout=0)  # type: ignore[attr-defined]
    server.asked = []  # type: ignore[attr-defined]

    @server.command
    def nextframe() -> Pending:
        server.asked.append(True)
        return server.frame

    return server


def test_a_pending_returned_to_two_clients_answers_both(shared):
    a, b = RawClient(shared), RawClient(shared)
    a.send("nextframe\nping\n")
    a.wait_for(lambda buffer: len(shared.asked) == 1)
    b.send("nextframe\n")
    b.wait_for(lambda buffer: len(shared.asked) == 2)
    shared.frame.resolve("frame 7")
    assert a.lines(2) == ["frame 7", "pong"]
    assert b.lines(1) == ["frame 7"]


def test_one_client_leaving_a_shared_pending_leaves_it_to_the_other(shared):
    cancelled: List[bool] = []
    shared.frame.on_cancel(lambda: cancelled.append(True))
    a, b, c = RawClient(shared), RawClient(shared), RawClient(shared)
    for number, client in enumerate((a, b, c), 1):
        client.send("nextframe\n")
        client.wait_for(lambda buffer, number=number: len(shared.asked) == number)
    reset_connection(a)
    b.wait_for(lambda buffer: len(shared.connections) == 2)
    assert not shared.frame.cancelled and cancelled == []
    shared.frame.resolve("frame 8")
    assert b.lines(1) == ["frame 8"] and c.lines(1) == ["frame 8"]
    # Once nobody waits on it any more, it is cancelled.
    shared.frame = Pending(timeout=0)
    shared.frame.on_cancel(lambda: cancelled.append(True))
    b.send("nextframe\n")
    c.send("nextframe\n")
    c.wait_for(lambda buffer: len(shared.asked) == 5)
    reset_connection(b)
    c.wait_for(lambda buffer: len(shared.connections) == 1)
    assert cancelled == []
    reset_connection(c)
    deadline = time.monotonic() + TIMEOUT
    while not cancelled and time.monotonic() < deadline:
        shared.poll(0.01)
    assert cancelled == [True] and shared.frame.cancelled


def test_a_shared_pending_times_out_for_each_client_on_its_own(shared):
    shared.frame = Pending(timeout=0.3)
    a, b = RawClient(shared), RawClient(shared)
    a.send("nextframe\nping\n")
    a.wait_for(lambda buffer: len(shared.asked) == 1)
    time.sleep(0.15)
    b.send("nextframe\n")
    b.wait_for(lambda buffer: len(shared.asked) == 2)
    assert a.lines(2) == ["ERR timeout", "pong"]  # its own 0.3 s passed
    assert not shared.frame.done and not shared.frame.cancelled
    shared.frame.resolve("frame 9")  # before b's 0.3 s
    assert b.lines(1) == ["frame 9"]


def test_half_close_still_gets_the_deferred_reply(deferred):
    # `echo later | nc -N`: EOF from the client is not a reason to give up on its reply.
    client = RawClient(deferred)
    client.send("later\nping\n")
    client.shutdown()
    settle(client)
    pending = deferred.pendings[0]
    assert not pending.cancelled
    pending.resolve("done")
    assert client.read_until_closed() == b"done\npong\n"


# ---- streams ----


def test_stream_lines_then_the_next_command(server):
    @server.command
    def count(n: int) -> Iterator[str]:
        return (f"line {i}" for i in range(1, n + 1))

    client = RawClient(server)
    client.send("count 3\nping\ncount 0\nping\n")
    assert client.lines(5) == ["line 1", "line 2", "line 3", "pong", "pong"]


def test_stream_items_are_rendered(server):
    server.add_command("rows", lambda: iter([{"a": 1}, ["x", "y"], None, "multi\nline"]))
    client = RawClient(server)
    client.send("rows\nping\n")
    assert client.lines(7) == ["a: 1", "x", "y", "OK", "multi", "line", "pong"]


def test_stream_in_json(server):
    server.add_command("count", lambda n: (i for i in range(int(n))))
    client = RawClient(server)
    client.send('{"cmd": "count", "args": [3], "id": 1}\n{"cmd": "count", "args": [0], "id": 2}\n')
    assert [json.loads(line) for line in client.lines(7)] == [
        {"id": 1, "stream": True},  # said before the first item, so a client can tell a quiet stream
        {"id": 1, "item": 0},
        {"id": 1, "item": 1},
        {"id": 1, "item": 2},
        {"id": 1, "ok": True, "result": None, "items": 3},
        {"id": 2, "stream": True},
        {"id": 2, "ok": True, "result": None, "items": 0},
    ]


def test_stream_errors_end_it_and_the_connection_carries_on(server, caplog):
    def failing(kind: str) -> Iterator[str]:
        yield "partial"
        if kind == "command":
            raise CommandError("ran out")
        raise OSError("disk gone")

    server.add_command("failing", failing)
    client = RawClient(server)
    client.send("failing command\nfailing internal\nping\n")
    assert client.lines(5) == ["partial", "ERR ran out", "partial", "ERR internal error (OSError)", "pong"]
    client.send('{"cmd": "failing", "args": ["command"], "id": 1}\n')
    assert [json.loads(line) for line in client.lines(3)] == [
        {"id": 1, "stream": True},
        {"id": 1, "item": "partial"},
        {"id": 1, "ok": False, "error": {"code": "error", "message": "ran out"}},
    ]


def test_input_during_a_plain_stream_is_queued_not_a_stop(server):
    state = {"sent": 0}

    def slow(n: int) -> Iterator[Any]:
        for i in range(n):
            state["sent"] += 1
            yield Wait(time.monotonic() + 0.01)
            yield f"item {i}"

    server.add_command("slow", slow)
    client = RawClient(server)
    client.send("slow 5\n")
    client.lines(1)
    client.send("ping\n")
    assert client.lines(5) == ["item 1", "item 2", "item 3", "item 4", "pong"]


def test_stream_wait_for_wake(server):
    news: List[str] = []
    conns: List[Connection] = []

    def feed(conn: Connection) -> Stream:
        conns.append(conn)

        def items() -> Iterator[Any]:
            while True:
                if news:
                    item = news.pop(0)
                    if item == "end":
                        return
                    yield item
                else:
                    yield Wait()  # until someone calls server.wake(conn)

        return Stream(items())

    server.add_command("feed", feed)
    client = RawClient(server)
    client.send("feed\nping\n")
    settle(client)
    assert client.buffer == b""
    news.append("hello")
    server.wake(conns[0])
    assert client.lines(1) == ["hello"]
    news.append("end")
    server.wake(conns[0])
    assert client.lines(1) == ["pong"]


def test_a_poll_budget_bounds_a_slow_stream(server):
    # Each item costs the host 1 ms: a poll with a 2 ms budget stops after a few of them, not
    # after 64 (the end was checked every 64th item).
    @server.command
    def slow() -> Iterator[int]:
        for i in range(200):
            time.sleep(0.001)
            yield i

    client = RawClient(server)
    client.pump()  # accepted
    client.send("slow\n")
    time.sleep(0.02)  # the request is in the socket: the first poll reads it
    for _ in range(3):
        started = time.monotonic()
        server.poll(0, budget=0.002)
        assert time.monotonic() - started < 0.03
    client._drain()
    assert 3 <= client.buffer.count(b"\n") < 40


def test_client_leaving_closes_the_generator(server):
    finished = []

    def endless() -> Iterator[str]:
        try:
            while True:
                yield "x" * 1000
        finally:
            finished.append(True)

    server.add_command("endless", endless)
    client = RawClient(server)
    client.send("endless\n")
    client.wait_for(lambda buffer: len(buffer) > 10_000)
    reset_connection(client)
    deadline = time.monotonic() + TIMEOUT
    while not finished and time.monotonic() < deadline:
        server.poll(0.01)
    assert finished == [True]
    assert server.connections == []


@pytest.mark.parametrize("request_line", ["blob", "watch 5 big"])
def test_a_stream_parked_on_wait_does_not_spin_for_a_slow_reader(server, request_line):
    # Output the client has not read stays below low water, but the stream is parked on a
    # Wait, not held back by its output: flushing must not resume it on every poll (each pump
    # yielding Wait again, and a Wait(until) adding a timer to the heap each time).
    @server.command
    def blob() -> Iterator[Any]:
        yield "x" * 60000
        while True:
            yield Wait()  # nothing new until a wake()

    @server.command
    def big() -> str:
        return "y" * 60000

    sock, conn = small_window_client(server)
    try:
        sock.sendall(f"{request_line}\n".encode())  # and never reads
        polls = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            server.poll(0.05)
            polls += 1
        assert conn.transport.out is not None  # the client really is behind
        assert conn.transport.out_size < server.low_water
        assert polls < 100
        assert len(server._loop.timers) < 10
    finally:
        sock.close()


def test_a_watch_woken_early_keeps_one_timer(server, client):
    # Each wake() pumps the watch before its interval is up, and it waits for the same
    # deadline again: that deadline's timer is armed already, so the heap does not grow.
    client.send("watch 5 ping\n")
    assert client.lines(1) == ["pong"]
    conn = server_conn(server)
    for _ in range(200):
        server.wake(conn)
        server.poll(0)
    assert len(server._loop.timers) < 10
    assert client.buffer == b""  # and nothing more was sent early


def test_a_million_lines_to_a_slow_client_with_bounded_output(make_server):
    total = 1_000_000
    srv = make_server("127.0.0.1", high_water=64 * 1024)  # low water: 16 KiB
    low_water = srv.low_water
    item_size = len(b"0000000\n")
    started = []

    @srv.command
    def numbers(n: int) -> Iterator[str]:
        started.append(True)
        return (f"{i:07d}" for i in range(n))

    sock, conn = small_window_client(srv)
    sock.sendall(f"numbers {total}\n".encode())

    chunks: List[bytes] = []
    received = 0
    expected_bytes = total * item_size
    highest = 0
    polls = 0
    deadline = time.monotonic() + 60
    while received < expected_bytes:
        assert time.monotonic() < deadline, f"stalled after {received} bytes"
        srv.poll(0)
        polls += 1
        # The bound, checked after every poll: a stream only adds an item while the output
        # buffer is below the low-water mark, so it can overshoot by one item at most.
        assert conn.transport.out_size <= low_water + item_size
        assert conn.buffered_output == conn.transport.out_size
        highest = max(highest, conn.transport.out_size)
        try:
            data = sock.recv(4096)  # the slow reader: at most 4 KiB per poll
        except BlockingIOError:
            continue
        assert data, "server closed the connection"
        chunks.append(data)
        received += len(data)
    sock.close()
    assert started
    # The buffer really filled up, so the bound above was exercised, not trivially met.
    assert highest >= low_water
    body = b"".join(chunks)
    assert len(body) == expected_bytes
    assert body == "".join(f"{i:07d}\n" for i in range(total)).encode()


def test_stream_to_a_fast_client_does_not_stall(make_server):
    # The kernel can take a whole low-water batch at once, leaving no write event to resume the
    # stream; it must carry on anyway.
    srv = make_server("127.0.0.1", high_water=8192)
    srv.add_command("numbers", lambda n: (str(i) for i in range(int(n))))
    client = RawClient(srv)
    client.send("numbers 20000\nping\n")
    lines = client.lines(20001)
    assert lines[-1] == "pong" and lines[:-1] == [str(i) for i in range(20000)]


# ---- log tail ----


@pytest.fixture
def tail_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("tailtest")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    yield logger
    logger.setLevel(old_level)


def tail_handler() -> Any:
    handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "_LogTail"]
    return handlers[0] if handlers else None


def test_log_tail_streams_until_any_line(make_server, tail_logger):
    srv = make_server("127.0.0.1", log_tail=True)
    client = RawClient(srv)
    client.send("log tail\n")
    client.wait_for(lambda buffer: tail_handler() is not None)
    tail_logger.info("first %d", 1)
    tail_logger.debug("not at INFO")
    tail_logger.warning("second")
    lines = client.lines(2)
    assert lines[0].endswith(" INFO tailtest: first 1")
    assert lines[1].endswith(" WARNING tailtest: second")
    client.send("stop\n")  # any line stops it, and is not run as a command
    client.send("ping\n")
    assert client.lines(1) == ["pong"]
    assert tail_handler() is None  # unsubscribed: the root handler is gone
    tail_logger.warning("after")
    settle(client)
    assert client.buffer == b""


def test_log_tail_level_filter_and_errors(make_server, tail_logger):
    srv = make_server("127.0.0.1", log_tail=True)
    client = RawClient(srv)
    assert one(client, "log tail loud") == "ERR usage: log tail [LEVEL] (unknown level 'loud')"
    client.send("log tail error\n")
    client.wait_for(lambda buffer: tail_handler() is not None)
    tail_logger.warning("filtered out")
    tail_logger.error("kept")
    assert client.lines(1)[0].endswith(" ERROR tailtest: kept")
    client.send("\n")  # pressing Enter stops it too
    client.send("ping\n")
    assert client.lines(1) == ["pong"]
    tail_logger.critical("not shown")
    settle(client)
    assert client.buffer == b""


def test_log_tail_needs_operator_and_opt_in(make_server):
    plain = make_server("127.0.0.1")
    client = RawClient(plain)
    assert one(client, "log tail") == "ERR unknown command 'log' (try 'help')"
    restricted = make_server("127.0.0.1", log_tail=True, level="user")
    client = RawClient(restricted)
    assert one(client, "log tail") == "ERR permission denied: 'log tail' needs operator"


def test_log_tail_in_json(make_server, tail_logger):
    srv = make_server("127.0.0.1", log_tail=True)
    client = RawClient(srv)
    client.send('{"cmd": "log tail", "args": ["warning"], "id": 4}\n')
    client.wait_for(lambda buffer: tail_handler() is not None)
    assert json.loads(client.lines(1)[0]) == {"id": 4, "stream": True}  # before any record
    tail_logger.warning("json record")
    item = json.loads(client.lines(1)[0])
    assert item["id"] == 4 and item["item"].endswith("WARNING tailtest: json record")
    client.send("stop\n")
    assert json.loads(client.lines(1)[0]) == {"id": 4, "ok": True, "result": None, "items": 1}


def test_log_tail_disconnect_unsubscribes(make_server, tail_logger):
    srv = make_server("127.0.0.1", log_tail=True)
    client = RawClient(srv)
    client.send("log tail\n")
    client.wait_for(lambda buffer: tail_handler() is not None)
    client.close()
    deadline = time.monotonic() + TIMEOUT
    while tail_handler() is not None and time.monotonic() < deadline:
        srv.poll(0.01)
    assert tail_handler() is None
    tail_logger.warning("nobody listens")  # must not raise or queue anything
    srv.poll(0)


def test_log_tail_slow_subscriber_sees_drops(make_server, tail_logger):
    srv = make_server("127.0.0.1", log_tail=True)
    client = RawClient(srv)
    client.send("log tail\n")
    client.wait_for(lambda buffer: tail_handler() is not None)
    (subscriber,) = tail_handler().subscribers
    for i in range(5000):  # the host logs a burst; poll() does not run in between
        tail_logger.warning("burst %d", i)
    assert len(subscriber.records) == 1000
    assert subscriber.dropped == 4000
    lines = client.lines(1001)
    assert [line.rsplit(" ", 1)[1] for line in lines[:1000]] == [str(i) for i in range(1000)]
    assert lines[1000] == "\u2026 4000 records dropped"
    tail_logger.warning("after the gap")  # once the subscriber caught up, records flow again
    assert client.lines(1)[0].endswith("tailtest: after the gap")
    client.send("stop\n")
    assert one(client, "ping") == "pong"


def test_log_tail_drop_notice_goes_where_the_gap_is(make_server, tail_logger):
    # A subscriber part way through its backlog: the notice is queued ahead of the next record,
    # not after everything, so the client sees exactly where records went missing.
    srv = make_server("127.0.0.1", log_tail=True, high_water=4096)
    client = RawClient(srv)
    client.send("log tail\n")
    client.wait_for(lambda buffer: tail_handler() is not None)
    (subscriber,) = tail_handler().subscribers
    for i in range(1200):
        tail_logger.warning("burst %d", i)
    srv.poll(0)  # moves only a low-water mark's worth of records to the socket
    assert 0 < len(subscriber.records) < 1000 and subscriber.dropped == 200
    tail_logger.warning("after the gap")
    lines = client.lines(1002)
    assert [line.rsplit(" ", 1)[1] for line in lines[:1000]] == [str(i) for i in range(1000)]
    assert lines[1000] == "\u2026 200 records dropped"
    assert lines[1001].endswith("tailtest: after the gap")


def test_log_tail_memory_stays_bounded_while_polling(make_server, tail_logger):
    srv = make_server("127.0.0.1", log_tail=True, high_water=16 * 1024)
    low_water = srv.low_water
    sock, conn = small_window_client(srv)
    sock.sendall(b"log tail\n")
    deadline = time.monotonic() + TIMEOUT
    while tail_handler() is None:
        assert time.monotonic() < deadline
        srv.poll(0.01)
    (subscriber,) = tail_handler().subscribers
    total = 8000
    longest = 0
    for i in range(total):
        tail_logger.warning("flood %05d", i)
        if i % 40 == 39:
            srv.poll(0)  # the host keeps polling; the client reads nothing
            assert len(subscriber.records) <= 1000
            longest = max(longest, len(subscriber.records))
            assert conn.transport.out_size <= low_water + 200  # one formatted record at most beyond it
    assert longest > 900  # the queue did fill, so records were dropped rather than buffered
    # Now read everything; a final marker, logged once the backlog is gone, ends the test.
    received = b""
    while not received.endswith(b"tailtest: END\n"):
        assert time.monotonic() < deadline + TIMEOUT, received[-500:]
        if not (subscriber.records or subscriber.dropped or conn.transport.out_size) and b"END" not in received:
            tail_logger.warning("END")
        srv.poll(0)
        try:
            received += sock.recv(65536)
        except BlockingIOError:
            pass
    sock.close()
    numbers, dropped = [], 0
    for line in received.decode().splitlines()[:-1]:
        if line.startswith("\u2026 "):
            dropped += int(line.split()[1])
        else:
            numbers.append(int(line.rsplit(" ", 1)[1]))
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert dropped > 0
    assert len(numbers) + dropped == total  # every record is either delivered or counted


# ---- watch ----


@pytest.fixture
def counted(server):
    runs = []

    @server.command
    def tick() -> str:
        runs.append(time.monotonic())
        return f"run {len(runs)}"

    server.runs = runs  # type: ignore[attr-defined]
    return server


def test_watch_repeats_until_a_line(counted):
    client = RawClient(counted)
    client.send("watch 0.1 tick\n")
    assert client.lines(3, timeout=TIMEOUT) == ["run 1", "run 2", "run 3"]
    runs = counted.runs
    assert runs[2] - runs[0] >= 0.19  # paced by the interval, not run back to back
    client.send("stop\nping\n")
    client.wait_for(lambda buffer: buffer.endswith(b"pong\n"))
    before = len(runs)
    settle(client, 0.35)  # more than three intervals: a live watch would run again
    assert len(runs) == before
    lines = client.buffer.decode().splitlines()
    client.buffer = b""
    # Runs already under way when "stop" arrived may still show, but nothing after the pong.
    assert lines[-1] == "pong"
    assert all(line.startswith("run ") for line in lines[:-1])
    assert one(client, "echo next") == "next"


def test_watch_in_json(counted):
    client = RawClient(counted)
    client.send('{"cmd": "watch", "args": [0.1, "tick"], "id": 2}\n')
    items = [json.loads(line) for line in client.lines(3)]
    assert items == [{"id": 2, "stream": True}, {"id": 2, "item": "run 1"}, {"id": 2, "item": "run 2"}]
    client.send("stop\n")
    final = client.wait_for(lambda buffer: b'"ok": true' in buffer).decode().splitlines()[-1]
    assert json.loads(final)["items"] >= 2


@pytest.mark.parametrize(
    "line, reply",
    [
        ("watch 0.01 tick", "ERR usage: watch SECONDS COMMAND... (SECONDS must be at least 0.1)"),
        ("watch 1", "ERR usage: watch SECONDS COMMAND... (missing COMMAND)"),
        ("watch soon tick", "ERR usage: watch SECONDS COMMAND... (bad value for SECONDS: 'soon': expected a number)"),
        ("watch 1 tikc", "ERR unknown command 'tikc'; did you mean 'tick'?"),
        ("watch 1 watch 1 tick", "ERR cannot watch watch"),
        ("watch 1 secret", "ERR permission denied: 'secret' needs admin"),
        ("watch 0.1 numbers", "ERR cannot watch 'numbers': it does not reply at once"),
        ("watch 0.1 tick extra", "ERR usage: tick (takes no arguments)"),
    ],
)
def test_watch_errors(counted, line, reply):
    counted.add_command("secret", lambda: "s", level="admin")
    counted.add_command("numbers", lambda: iter("abc"))
    client = RawClient(counted)
    assert one(client, line) == reply
    assert one(client, "ping") == "pong"


# ---- subscriptions stop on any line, blank or pipelined ----


def test_a_blank_line_stops_watch_and_the_next_request_still_runs(server, client):
    client.send("watch 0.1 ping\n")
    client.wait_for(lambda buf: buf.count(b"pong\n") >= 2)
    client.send("\necho done\n")
    client.wait_for(lambda buf: buf.endswith(b"done\n"))
    client.buffer = b""
    assert client.request("ping") == ["pong"]  # nothing left running
    for _ in range(30):
        client.pump()
    assert client.buffer == b""


def test_a_line_pipelined_behind_a_subscription_stops_it_at_once(server, client):
    client.send("watch 0.1 ping\nstop\necho after\n")
    # `stop` was sent before watch ran even once: it is consumed as the stop signal, and
    # `echo after` runs as a request.
    got = client.lines(1)
    assert got == ["after"]
    for _ in range(30):
        client.pump()
    assert client.buffer == b""


def test_a_blank_line_pipelined_behind_a_subscription_stops_it_at_once(server, client):
    client.send("watch 0.1 ping\n\necho after\n")  # Enter typed before watch ran
    assert client.lines(1) == ["after"]
    client.send('{"cmd": "watch", "args": ["0.1", "ping"], "id": 4}\n\n')
    assert json.loads(client.lines(1)[0]) == {"id": 4, "stream": True}
    assert json.loads(client.lines(1)[0]) == {"id": 4, "ok": True, "result": None, "items": 0}
    client.send("ping\n\nping\n")  # elsewhere a blank line is still nothing
    assert client.lines(2) == ["pong", "pong"]
    client.send("watch 0.1 ping\n")  # and a blank line of an earlier read stops nothing
    assert client.lines(2) == ["pong", "pong"]
    client.send("\n")
    settle(client, 0.15)
    client.buffer = client.buffer.replace(b"pong\n", b"", 1)  # one may have crossed the blank line
    assert client.buffer == b""


def test_each_subscription_of_a_read_is_stopped_by_the_blank_line_behind_it(server, client):
    # The first subscription of a read used up the note of where its blank lines were: the
    # second ran on, and swallowed the next request as the line that stopped it.
    client.send("watch 0.1 ping\n\nwatch 0.1 ping\n\n")
    settle(client, 0.15)
    assert client.buffer == b""
    client.send("echo after\n")
    assert client.lines(1) == ["after"]
    # And the read that stops a running one: its blank lines are noted for what follows it.
    client.send("watch 0.1 ping\n")
    assert client.lines(1) == ["pong"]
    client.send("\nwatch 0.1 ping\n\n")
    settle(client, 0.15)
    client.buffer = b""  # the first watch's last items
    client.send("echo after\n")
    assert client.lines(1) == ["after"]
    settle(client, 0.15)
    assert client.buffer == b""
    # The note of that read's blank line is its own: a subscription of a later one-line read
    # (the decoder's fast path) runs. It found the note left over and stopped at once.
    client.send("watch 0.1 echo tick\n")
    assert client.lines(2) == ["tick", "tick"]
    client.send("\n")
    settle(client, 0.15)


def test_a_blank_line_after_a_subscription_queued_behind_a_pending_stops_it(deferred):
    client = RawClient(deferred)
    client.send("later\nwatch 0.1 ping\n\necho after\n")
    client.wait_for(lambda buffer: bool(deferred.pendings))
    deferred.pendings[0].resolve("done")
    assert client.lines(2) == ["done", "after"]
    settle(client, 0.15)
    assert client.buffer == b""


def test_a_finished_subscription_does_not_leave_blank_lines_on(server, client):
    import reactor_mgmt

    @server.command
    def short():
        return reactor_mgmt.Stream(iter(["one", "two"]), until_input=True)

    client.send("short\n")
    assert client.lines(2) == ["one", "two"]
    client.send("\n\nping\n")
    assert client.lines(1) == ["pong"]
    assert server.connections[0].decoder.keep_blank is False
