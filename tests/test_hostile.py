# Hostile input, limits and access control, through real sockets.
#
# Every limit is checked from the outside (what a client sees) and, where memory is the point,
# from the inside too (decoder.buffered, out_size), because a cap that only shows in the reply
# could still be buffering behind it. The server is driven by this thread's poll() calls, as a
# host would; the two subprocess tests (fd exhaustion, a foreign uid) need a process of their
# own because they change process-wide state.
from __future__ import annotations

import json
import logging
import os
import pwd
import selectors
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Callable, List

import pytest

import reactor_mgmt
from conftest import ROOT, TIMEOUT, Daemon, RawClient
from reactor_mgmt import ConfigError, Connection, Pending, Server, _demo

LOGGER = "reactor_mgmt"
NEWLINE = b"\n"


# ---- helpers ----


def raw_connect(address, rcvbuf: int = 0) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect(address)
    return sock


def pump_until(server: Server, predicate: Callable[[], bool], timeout: float = TIMEOUT, step: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        server.poll(step)


def read_to_eof(server: Server, sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Everything the server sends until it closes, polling it meanwhile."""
    sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        server.poll(0.005)
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no EOF; received {data[-500:]!r}")
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def connection_of(server: Server, before: int = 0):
    """The newest connection (ids grow)."""
    conns = [c for c in server.connections if c.id > before]
    assert conns, "the server has not accepted the connection"
    return max(conns, key=lambda c: c.id)


def messages(caplog) -> List[str]:
    return [record.getMessage() for record in caplog.records]


@pytest.fixture
def short_dir():
    """A directory with a short path: Unix socket paths are limited to about 100 bytes."""
    path = tempfile.mkdtemp(prefix="rmh-", dir="/tmp")
    try:
        yield path
    finally:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


# ---- max connections ----


def test_max_connections_refuses_extra_with_err_and_closes(make_server, caplog):
    server = make_server(max_connections=2)
    first, second = RawClient(server), RawClient(server)
    pump_until(server, lambda: len(server.connections) == 2)
    third = raw_connect(server.addresses[0])
    # The host only calls poll(); a refusal must not raise out of it, nor log above DEBUG.
    with caplog.at_level(logging.DEBUG, LOGGER):
        assert read_to_eof(server, third) == b"ERR too many connections\n"
    third.close()
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG] == []
    assert any("refusing connection" in m for m in messages(caplog))
    assert server.stats.refused == 1
    assert len(server.connections) == 2
    assert first.request("ping") == ["pong"]
    assert second.request("ping") == ["pong"]
    # A slot freed by a client that leaves is usable again.
    first.close()
    pump_until(server, lambda: len(server.connections) == 1)
    fourth = RawClient(server)
    assert fourth.request("ping") == ["pong"]
    fourth.close()
    second.close()


def test_default_limits_are_documented_values():
    with Server("127.0.0.1", 0) as server:
        assert server.max_connections == 128
        assert server.idle_timeout == 300.0
        assert server.max_line == 16384
        assert server.high_water == 1 << 20
        assert server.low_water == (1 << 20) // 4
        assert server.max_output == 16 << 20
        assert server.max_commands_per_tick == 256


@pytest.mark.parametrize(
    "kwargs",
    [
        {"high_water": 0},
        {"high_water": 100, "max_output": 50},
        {"high_water": 100, "low_water": 0},
        {"high_water": 100, "low_water": 101},
    ],
)
def test_inconsistent_output_limits_are_refused(kwargs):
    with pytest.raises(ConfigError):
        Server("127.0.0.1", 0, **kwargs)


def test_tiny_high_water_still_gets_a_low_water_that_resumes(make_server):
    server = make_server(high_water=2, max_output=1 << 20)
    assert server.low_water == 1
    client = RawClient(server)
    client.send("ping\n" * 50)
    assert client.lines(50, timeout=TIMEOUT) == ["pong"] * 50
    client.close()


# ---- idle timeout ----


def test_idle_timeout_reaps_silent_and_quiet_connections_but_not_active_ones(make_server):
    # 1 s: `active` is reaped only if this thread stalls that long between two of its pings
    # (CI runs three suites at once on two cores; 0.3 s left a 0.25 s margin).
    server = make_server(idle_timeout=1.0)
    threads = threading.active_count()
    silent = raw_connect(server.addresses[0])  # never sends a byte
    quiet = RawClient(server)
    assert quiet.request("ping") == ["pong"]
    active = RawClient(server)
    # `active` pings every 50 ms for 2 s; the idle ones must be gone by then.
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        assert active.request("ping") == ["pong"]
        server.poll(0.05)
    assert quiet.read_until_closed() == b""
    assert read_to_eof(server, silent) == b""
    assert [c for c in server.connections if not c.closed] == [connection_of(server, 2)]
    # Reaping is driven by poll() alone: no helper thread appeared.
    assert threading.active_count() == threads
    active.close()
    silent.close()


def test_idle_reaper_skips_connections_that_already_left(make_server):
    server = make_server(idle_timeout=0.2)
    leaver = RawClient(server)
    stayer = raw_connect(server.addresses[0])
    pump_until(server, lambda: len(server.connections) == 2)
    leaver.close()
    pump_until(server, lambda: len(server.connections) == 1)
    assert read_to_eof(server, stayer) == b""  # reaped; the departed one's entry was skipped
    assert server.connections == []
    stayer.close()


def test_idle_reap_happens_inside_a_single_blocking_poll(make_server):
    server = make_server(idle_timeout=0.2)
    sock = raw_connect(server.addresses[0])
    server.poll(0)
    pump_until(server, lambda: len(server.connections) == 1)
    # One poll with a long timeout sleeps until the reaper is due and runs it in that call.
    server.poll(5.0)
    assert server.connections == []
    sock.close()


def test_idle_timeout_zero_turns_it_off(make_server):
    server = make_server(idle_timeout=0)
    client = RawClient(server)
    pump_until(server, lambda: len(server.connections) == 1)
    assert server.next_deadline() is None  # no reaper timer was even scheduled
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        server.poll(0.05)
    assert client.request("ping") == ["pong"]
    client.close()


def test_idle_timeout_spares_a_connection_waiting_on_a_deferred_reply(make_server):
    server = make_server(idle_timeout=0.1, pending_timeout=0)
    pendings = []

    @server.command
    def later() -> Pending:
        pendings.append(Pending())
        return pendings[-1]

    client = RawClient(server)
    client.send("later\n")
    end = time.monotonic() + 0.4
    while time.monotonic() < end:
        client.pump()
        time.sleep(0.02)
    assert not client.eof and len(server.connections) == 1
    pendings[0].resolve("done")
    assert client.lines(1) == ["done"]
    # Once nothing is pending the reaper takes it.
    assert client.read_until_closed() == b""


# ---- max line ----


def test_over_long_line_is_discarded_without_buffering_and_connection_stays_usable(make_server):
    server = make_server(max_line=64)
    client = RawClient(server)
    conn = connection_of(server)
    for _ in range(100):  # 100 KB of one line, arriving in 1000-byte pieces
        client.send(b"x" * 1000)
        client.pump(2)
        assert conn.decoder is not None and conn.decoder.buffered <= server.max_line + 1
    client.send(b"\nping\n")
    assert client.lines(2) == ["ERR line too long (limit 64 bytes)", "pong"]
    # A line exactly at the limit is fine.
    assert client.request("echo " + "y" * 59) == ["y" * 59]
    client.close()


def test_over_long_line_in_one_read_and_json_error(make_server):
    server = make_server(max_line=100)
    client = RawClient(server)
    client.send(b"z" * 5000 + b"\n" + b'{"cmd": "echo", "args": ["' + b"a" * 200 + b'"], "id": 7}\nping\n')
    first, second, third = client.lines(3)
    assert first == "ERR line too long (limit 100 bytes)"
    reply = json.loads(second)
    assert reply["ok"] is False and reply["error"]["code"] == "too_long"
    assert third == "pong"
    client.close()


# ---- output backpressure ----


def _blob_server(make_server, **limits) -> Server:
    server = make_server(**limits)

    @server.command
    def blob(size: int) -> str:
        """SIZE bytes of x."""
        return "x" * size

    return server


def _shrink_send_buffer(conn) -> None:
    # Loopback send buffers hold megabytes; shrink this one so the server's own buffering, not
    # the kernel's, is what the test observes.
    conn.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def _read_lines(server: Server, sock: socket.socket, count: int) -> List[bytes]:
    sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + TIMEOUT
    while data.count(b"\n") < count:
        assert time.monotonic() < deadline, f"got {data.count(NEWLINE)} of {count} lines"
        server.poll(0.002)
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        assert chunk, "connection closed early"
        data += chunk
    return data.split(b"\n")[:count]


def test_above_high_water_commands_wait_and_input_is_not_read(make_server):
    server = _blob_server(make_server, high_water=4096, max_output=1 << 20)
    sock = raw_connect(server.addresses[0], rcvbuf=4096)
    pump_until(server, lambda: len(server.connections) == 1)
    conn = connection_of(server)
    _shrink_send_buffer(conn)
    sock.sendall(b"blob 1000\n" * 2000)
    peak = 0
    for _ in range(300):
        server.poll(0)
        peak = max(peak, conn.transport.out_size)
    assert conn.transport.paused
    assert not conn.transport.mask & selectors.EVENT_READ
    ran = server.stats.commands
    assert 4 <= ran < 2000  # it ran until the mark, then stopped
    assert peak <= server.high_water + 1001  # one reply past the mark at most
    bytes_in = server.stats.bytes_in
    sock.sendall(b"ping\n" * 10)
    for _ in range(50):
        server.poll(0)
    assert server.stats.bytes_in == bytes_in and server.stats.commands == ran
    # A reader appears: everything arrives, complete and in order.
    lines = _read_lines(server, sock, 2010)
    assert lines[:2000] == [b"x" * 1000] * 2000
    assert lines[2000:] == [b"pong"] * 10
    sock.close()


def test_one_big_reply_above_high_water_stops_reading_even_with_an_empty_queue(make_server):
    server = _blob_server(make_server, high_water=4096, max_output=1 << 20)
    sock = raw_connect(server.addresses[0], rcvbuf=4096)
    pump_until(server, lambda: len(server.connections) == 1)
    conn = connection_of(server)
    _shrink_send_buffer(conn)
    sock.sendall(b"blob 200000\n")
    pump_until(server, lambda: server.stats.commands == 1)
    for _ in range(20):
        server.poll(0)
    assert conn.transport.paused and not conn.queue
    bytes_in = server.stats.bytes_in
    sock.sendall(b"ping\n")
    for _ in range(50):
        server.poll(0)
    assert server.stats.bytes_in == bytes_in
    assert _read_lines(server, sock, 2) == [b"x" * 200000, b"pong"]
    sock.close()


def test_requests_paused_above_high_water_wait_until_below_low_water(make_server):
    # Paused above high water, a connection's requests ran again as soon as a write event
    # found its output below high water, not low water: the request after a big reply ran
    # with most of it still unsent, and the one after it made the output grow again.
    server = _blob_server(make_server, high_water=65536, low_water=16384, max_output=1 << 20)
    unsent_when_run: List[int] = []

    @server.command
    def probe(conn: Connection) -> str:
        unsent_when_run.append(conn.transport.out_size)
        return "probe"

    sock = raw_connect(server.addresses[0], rcvbuf=4096)
    pump_until(server, lambda: len(server.connections) == 1)
    _shrink_send_buffer(connection_of(server))
    sock.sendall(b"blob 200000\nprobe\n")
    pump_until(server, lambda: server.stats.commands == 1)
    data = _read_while(server, sock, lambda data: not unsent_when_run, 4096)  # a slow reader: 4 KiB a poll
    assert unsent_when_run and unsent_when_run[0] < 16384
    expected = b"x" * 200000 + b"\nprobe\n"
    assert _read_while(server, sock, lambda more: len(data + more) < len(expected)) == expected[len(data) :]
    sock.close()


def _read_while(server: Server, sock: socket.socket, going_on: Callable[[bytes], bool], size: int = 65536) -> bytes:
    """Polls the server and reads the client's socket, ``size`` bytes at a time at most, while
    ``going_on(what was read)`` holds, until the EOF, or for 10 s; returns what was read."""
    sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + 10
    while going_on(data) and time.monotonic() < deadline:
        server.poll(0.002)
        try:
            chunk = sock.recv(size)
        except BlockingIOError:
            continue
        if not chunk:
            break
        data += chunk
    return data


def test_replies_still_unsent_before_an_http_line_drain_before_the_close(make_server):
    # The HTTP line closed the connection with one send of what was queued: a reply the
    # client had not read yet was cut by a reset (the server logged it as unsent).
    server = _blob_server(make_server)
    sock = raw_connect(server.addresses[0], rcvbuf=4096)
    pump_until(server, lambda: len(server.connections) == 1)
    _shrink_send_buffer(connection_of(server))
    sock.sendall(b"blob 100000\nGET / HTTP/1.1\r\n\r\nping\n")
    pump_until(server, lambda: server.stats.http_closed == 1)
    data = _read_while(server, sock, lambda data: True)  # to the EOF
    assert data == b"x" * 100000 + b"\n"  # whole; nothing after the HTTP line ran
    assert sock.recv(1) == b""  # then the EOF, not a reset (and not nothing: it would raise here)
    sock.close()


def _huge_server(make_server) -> Server:
    server = _blob_server(make_server, high_water=4096, max_output=65536)

    @server.command
    def huge() -> str:
        return "x" * 70000

    @server.command
    def items():
        yield "first"
        yield "x" * 70000
        yield "never sent"

    return server


# A reply over max_output is replaced by an error line on every path that frames a reply: the
# general one (typed argument), the batch fast path (plain command), a run from the decoder
# (Repeat), JSON, and a stream's item. The connection carries on: what came before and after arrives.
@pytest.mark.parametrize(
    ("request_line", "expected"),
    [
        (b"blob 70000", [b"ERR reply too large (70001 bytes; max_output is 65536)"]),
        (b"huge", [b"ERR reply too large (70001 bytes; max_output is 65536)"]),
        (b"huge\nhuge\nhuge\nhuge\nhuge", [b"ERR reply too large (70001 bytes; max_output is 65536)"] * 5),
        (
            b'{"cmd": "huge", "id": 3}',
            [
                json.dumps(
                    {
                        "id": 3,
                        "ok": False,
                        "error": {"code": "too_large", "message": "reply too large (70036 bytes; max_output is 65536)"},
                    }
                ).encode()
            ],
        ),
        (b"items", [b"first", b"ERR reply too large (70001 bytes; max_output is 65536)"]),
    ],
)
def test_reply_over_max_output_is_an_error_line_and_the_connection_carries_on(
    make_server, caplog, request_line, expected
):
    server = _huge_server(make_server)
    sock = raw_connect(server.addresses[0])
    pump_until(server, lambda: len(server.connections) == 1)
    conn = connection_of(server)
    with caplog.at_level(logging.WARNING, LOGGER):
        sock.sendall(b"blob 100\n" + request_line + b"\nping\n")
        sock.shutdown(socket.SHUT_WR)  # echo ... | nc -N: every reply, then EOF
        data = read_to_eof(server, sock)
    assert data.split(b"\n") == [b"x" * 100, *expected, b"pong", b""]
    assert not conn.transport.cut_off and server.stats.errors == len(expected) - (request_line == b"items")
    # Logged, but once per 10 s however often a client asks: it could flood the host's log.
    assert [m for m in messages(caplog) if "is over max_output (65536)" in m] == [messages(caplog)[0]]
    sock.close()


def test_reply_over_max_output_on_the_round_trip_path(make_server):
    server = _huge_server(make_server)
    client = RawClient(server)
    for _ in range(3):  # the second and third are answered straight from the read (_answer_now)
        client.send(b"huge\n")
        assert client.lines(1) == ["ERR reply too large (70001 bytes; max_output is 65536)"]
    client.send(b"ping\n")
    assert client.lines(1) == ["pong"]
    assert server.stats.errors == 3
    client.close()


def test_stream_item_over_max_output_closes_the_generator(make_server):
    server = _huge_server(make_server)
    closed = []

    @server.command
    def endless():
        try:
            yield "x" * 70000
            yield "unreachable"
        finally:
            closed.append(True)

    client = RawClient(server)
    client.send(b"endless\nping\n")
    assert client.lines(2) == ["ERR reply too large (70001 bytes; max_output is 65536)", "pong"]
    assert closed == [True]
    client.close()


def test_pipelined_big_replies_are_paced_not_cut_off(make_server):
    # A run of one plain command is made before any of it is written; it must stop at the
    # high-water mark like the per-request path, or 200 replies of 1 KB pass max_output at once.
    server = make_server(high_water=4096, max_output=65536)

    @server.command
    def kilo() -> str:
        return "k" * 1000

    sock = raw_connect(server.addresses[0])
    pump_until(server, lambda: len(server.connections) == 1)
    conn = connection_of(server)
    sock.sendall(b"kilo\n" * 200 + b"ping\n")
    sock.shutdown(socket.SHUT_WR)
    data = read_to_eof(server, sock)
    assert data.split(b"\n") == [b"k" * 1000] * 200 + [b"pong", b""]
    assert not conn.transport.cut_off and server.stats.errors == 0
    sock.close()


def test_output_cut_off_keeps_the_part_sent_line_and_says_why(make_server):
    # Past high_water + max_output, the output not yet begun is dropped and a notice takes its place; a reply
    # the kernel took part of (a memoryview at the head) is finished first, to the end of its line.
    server = make_server(high_water=4096, max_output=65536)
    client = RawClient(server)
    pump_until(server, lambda: len(server.connections) == 1)
    conn = connection_of(server)
    conn.transport.out = [memoryview(b"one\ntwo\nthree\n")[6:]]  # "one\ntw" went out
    conn.transport.out_size = len(conn.transport.out[0])
    conn.write("y" * 70000)
    assert conn.transport.cut_off and conn.closing
    assert conn.transport.out == [b"o\nERR too much unsent output (70009 bytes, cap 69632): closing\n"]
    assert conn.transport.out_size == len(conn.transport.out[0])
    conn.write("dropped")
    assert conn.transport.out_size == len(conn.transport.out[0])
    client.close()


def test_client_that_never_reads_cannot_grow_server_memory(make_server, caplog):
    server = make_server(high_water=4096, max_output=65536, idle_timeout=0)
    sizes = []

    @server.command
    def spam(conn: reactor_mgmt.Connection) -> str:
        """Writes far more than the cap through conn.write()."""
        for _ in range(1000):
            conn.write("y" * 999)
            sizes.append(conn.buffered_output)
        return "done"

    @server.command
    def endless() -> object:
        return ("z" * 99 for _ in iter(int, 1))  # an infinite stream

    streamer = raw_connect(server.addresses[0], rcvbuf=4096)
    spammer = raw_connect(server.addresses[0], rcvbuf=4096)
    pump_until(server, lambda: len(server.connections) == 2)
    stream_conn, spam_conn = sorted(server.connections, key=lambda c: c.id)
    _shrink_send_buffer(stream_conn)
    _shrink_send_buffer(spam_conn)
    with caplog.at_level(logging.WARNING, LOGGER):
        streamer.sendall(b"endless\n")
        spammer.sendall(b"spam\n")
        peak = 0
        for _ in range(500):
            server.poll(0)
            peak = max(peak, stream_conn.transport.out_size)
    # The stream only runs while its client drains: its buffer stays near the low-water mark.
    assert peak <= server.low_water + 100
    assert not stream_conn.closed
    # conn.write past max_output cuts the client off: what it had not begun to receive is freed
    # at once, and later writes are dropped, not buffered; only the notice waits for it.
    assert spam_conn.transport.cut_off and spam_conn.transport.out_size < 100
    assert max(sizes) <= server.max_output + server.high_water
    assert any("unsent output" in m for m in messages(caplog))
    # When it reads at last, it gets whole lines, the notice, and EOF.
    data = read_to_eof(server, spammer)
    lines = data.split(b"\n")
    assert lines[-1] == b"" and lines[-2].startswith(b"ERR too much unsent output (")
    assert lines[-2].endswith(b" bytes, cap 69632): closing")
    assert set(lines[:-2]) <= {b"y" * 999}
    spammer.shutdown(socket.SHUT_WR)  # the server lingers for our EOF, then closes
    pump_until(server, lambda: spam_conn.closed)
    assert spam_conn.transport.out is None
    streamer.close()
    spammer.close()


# ---- bounded, fair work per poll() ----


def test_accepts_per_poll_are_bounded_and_adapt(make_server):
    server = make_server()
    listener = server._listening.listeners[0]
    start = listener.accepts
    socks = [raw_connect(server.addresses[0]) for _ in range(start + 24)]
    server.poll(0)
    assert len(server.connections) == start  # the backlog waits for the next tick
    assert listener.accepts > start  # saturated: take more next time, like Twisted
    server.poll(0)
    assert len(server.connections) == start + 24
    assert listener.accepts < start * 2  # fewer waited than allowed: shrink
    socks += [raw_connect(server.addresses[0]) for _ in range(3)]
    server.poll(0)
    assert len(server.connections) == start + 27
    assert listener.accepts == start  # the burst is over: back to the start value
    for sock in socks:
        sock.close()


def test_one_recv_per_connection_per_poll(make_server):
    server = make_server()
    client = RawClient(server)
    before = server.stats.bytes_in
    client.send(b"ping\n" * 60000)  # 300 KB, more than one recv
    time.sleep(0.05)
    server.poll(0)
    assert 0 < server.stats.bytes_in - before <= reactor_mgmt._transport.RECV_SIZE  # one recv
    assert client.lines(60000, timeout=30) == ["pong"] * 60000
    client.close()


def _requests_per_poll(server, total: int) -> list:
    """How many requests each poll(0) runs until ``total`` have run (the client sent them all)."""
    time.sleep(0.05)
    per_poll: list = []
    while len(per_poll) < 1000 and server.stats.commands < total:
        before = server.stats.commands
        server.poll(0)
        per_poll.append(server.stats.commands - before)
    return per_poll


def test_max_commands_per_tick_keeps_the_rest_for_later(make_server):
    server = make_server(max_commands_per_tick=10)
    client = RawClient(server)
    client.send("".join(f"echo {i}\n" for i in range(100)))
    per_poll = _requests_per_poll(server, 100)
    assert max(per_poll) == 10 and sum(per_poll) == 100
    assert client.lines(100) == [str(i) for i in range(100)]
    client.close()


def test_a_handler_waking_its_own_connection_does_not_get_it_a_second_turn(make_server):
    """conn.write() asks for the connection to be serviced; during its own turn (a read runs the
    requests at once) that is its next turn, in the next poll: K requests per poll still holds."""
    server = make_server(max_commands_per_tick=4)

    @server.command
    def note(conn: reactor_mgmt.Connection) -> str:
        conn.write("noted")
        return "ok"

    client = RawClient(server)
    client.send("note\n" * 20)
    per_poll = _requests_per_poll(server, 20)
    assert max(per_poll) == 4 and sum(per_poll) == 20
    assert client.lines(40) == ["noted", "ok"] * 20
    client.close()


def test_a_pending_answered_by_another_client_waits_for_the_next_poll(make_server):
    """A connection whose read ran its requests in this poll, and whose Pending another client's
    handler then answers, has its next turn in the next poll: still K requests per poll."""
    server = make_server(max_commands_per_tick=4)
    waiting = []

    @server.command
    def hold() -> reactor_mgmt.Pending:
        waiting.append(reactor_mgmt.Pending())
        return waiting[-1]

    @server.command
    def release() -> str:
        waiting.pop().resolve("done")
        return "released"

    a = RawClient(server)
    b = RawClient(server)
    server.poll(0.05)
    a.send("ping\n" * 3 + "hold\n" + "ping\n" * 10)
    b.send("release\n")
    per_poll = _requests_per_poll(server, 15)
    assert sum(per_poll) == 15 and max(per_poll) <= 4 + 1, per_poll  # a's 4, and b's release
    assert a.lines(14) == ["pong"] * 3 + ["done"] + ["pong"] * 10
    assert b.lines(1) == ["released"]
    a.close()
    b.close()


def test_poll_counts_the_requests_it_ran(make_server):
    server = make_server()
    client = RawClient(server)
    server.poll(0.05)  # the accept
    client.send("ping\n" * 10)
    time.sleep(0.05)
    assert server.poll(0) == 11  # one event, ten requests
    assert client.lines(10) == ["pong"] * 10
    client.close()


def test_time_budget_returns_early_and_resumes_in_order(make_server):
    server = make_server()

    @server.command
    def slow(n: int) -> str:
        time.sleep(0.002)
        return f"slow {n}"

    client = RawClient(server)
    client.send("".join(f"slow {i}\n" for i in range(40)))
    time.sleep(0.05)
    deadline = time.monotonic() + TIMEOUT
    while server.stats.commands == 0:  # (a preempted select() may use up a budget by itself)
        assert time.monotonic() < deadline
        server.poll(0, budget=0.002)
    assert server.stats.commands <= 2  # the budget ran out after the first handler
    assert server.busy  # the rest is queued for the next call
    assert client.lines(40) == [f"slow {i}" for i in range(40)]
    client.close()


def test_flooding_client_does_not_starve_another(make_server):
    server = make_server()
    flood = raw_connect(server.addresses[0])
    total = 100_000
    received = []

    def send() -> None:
        flood.sendall(b"ping\n" * total)

    def read() -> None:
        count = 0
        tail = b""  # a reply split across two reads (a part-sent chunk) is counted once whole
        while count < total:
            try:
                chunk = flood.recv(1 << 20)
            except OSError:
                break
            if not chunk:
                break
            data = tail + chunk
            cut = data.rfind(b"\n") + 1
            count += data.count(b"pong\n", 0, cut)
            tail = data[cut:]
        received.append(count)

    sender = threading.Thread(target=send, daemon=True)
    reader = threading.Thread(target=read, daemon=True)
    sender.start()
    reader.start()
    pump_until(server, lambda: server.stats.commands > 2000)
    other = RawClient(server)
    other.send("ping\n")
    polls = 0
    while b"pong\n" not in other.buffer:
        polls += 1
        assert polls <= 5, "the flooder starved the other client"
        other.pump()
    assert server.stats.commands < total  # the flood was still going on meanwhile
    pump_until(server, lambda: bool(received), timeout=60)
    assert received == [total]
    sender.join(TIMEOUT)
    reader.join(TIMEOUT)
    flood.close()
    other.close()


# ---- file descriptor exhaustion ----

_EMFILE_CHILD = textwrap.dedent(r"""
    import json, logging, os, resource, sys, time
    import reactor_mgmt

    mode = sys.argv[1]
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append([record.levelname, record.getMessage()])

    logger = logging.getLogger("reactor_mgmt")
    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    server = reactor_mgmt.Server("127.0.0.1", 0, idle_timeout=0)
    if mode == "pause":  # no reserve descriptor to spend: the listener must pause instead
        os.close(server._listening.acceptor.reserve_fd)
        server._listening.acceptor.reserve_fd = None
    hog = []
    try:
        while True:
            hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    print(server.port, flush=True)
    sys.stdin.readline()  # the parent has queued its clients in the backlog

    cpu = time.process_time()
    polls = 0
    # In pause mode the listener resumes after 1 s and finds descriptors still exhausted.
    end = time.monotonic() + (1.3 if mode == "pause" else 1.0)
    while time.monotonic() < end:
        server.poll(0.05)
        polls += 1
    cpu = time.process_time() - cpu
    exhausted = {"polls": polls, "cpu": cpu, "open": len(server.connections), "refused": server.stats.refused}
    for fd in hog[:16]:
        os.close(fd)
    del hog[:16]
    print(json.dumps(exhausted), flush=True)
    sys.stdin.readline()  # the parent has sent a ping on a fresh connection
    end = time.monotonic() + 10
    while time.monotonic() < end and server.stats.commands < 1:
        server.poll(0.01)
    for _ in range(20):
        server.poll(0.01)
    for fd in hog:
        os.close(fd)
    server.close()
    print(json.dumps({"records": records, "commands": server.stats.commands}), flush=True)
""")


@pytest.mark.parametrize("mode", ["reserve", "pause"])
def test_fd_exhaustion_does_not_spin_logs_once_and_recovers(mode):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    child = subprocess.Popen(
        [sys.executable, "-c", _EMFILE_CHILD, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    clients = []
    try:
        port = int(child.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(5)]
        child.stdin.write("go\n")
        child.stdin.flush()
        exhausted = json.loads(child.stdout.readline())
        # A spinning loop would make thousands of polls in that second; a sleeping one about 20
        # (plus one per refused client in reserve mode).
        assert exhausted["polls"] < 100, exhausted
        assert exhausted["cpu"] < 0.5, exhausted
        assert exhausted["open"] == 0
        if mode == "reserve":
            # Each waiting client was accepted on the reserve descriptor and told why.
            for sock in clients:
                assert sock.recv(100) == b"ERR server out of file descriptors\n"
            assert exhausted["refused"] == len(clients)  # counted, as other refusals are
        fresh = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        clients.append(fresh)
        fresh.sendall(b"ping\n")
        child.stdin.write("go\n")
        child.stdin.flush()
        assert fresh.recv(100) == b"pong\n"
        final = json.loads(child.stdout.readline())
    finally:
        for sock in clients:
            sock.close()
        try:
            child.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
    logged = [message for _, message in final["records"]]
    assert sum("out of file descriptors" in m for m in logged) == 1, logged
    assert sum("file descriptors available again" in m for m in logged) == 1, logged
    assert child.returncode == 0


# ---- the demo's command line ----


def test_demo_command_line_sets_every_limit():
    args = _demo.parse_args(
        [
            "--port",
            "0",
            "--max-connections",
            "7",
            "--idle-timeout",
            "2.5",
            "--max-line",
            "99",
            "--high-water",
            "5000",
            "--low-water",
            "1000",
            "--max-output",
            "9000",
            "--max-commands-per-tick",
            "3",
            "--pending-timeout",
            "4",
            "--level",
            "user",
            "--token",
            "sesame",
            "--allow-remote",
        ]
    )
    server = _demo.build_server(args, _demo.Worker(50))
    try:
        assert (server.max_connections, server.idle_timeout, server.max_line) == (7, 2.5, 99)
        assert (server.high_water, server.low_water, server.max_output) == (5000, 1000, 9000)
        assert (server.max_commands_per_tick, server.pending_timeout) == (3, 4.0)
        assert server.allow_remote and server.auth_required and server.check_token("sesame")
        assert [listener.level for listener in server._listening.listeners] == ["user"]
    finally:
        server.close()
    defaults = _demo.parse_args([])
    assert defaults.max_connections == 128 and defaults.idle_timeout == 300.0
    assert defaults.low_water is None and defaults.max_commands_per_tick == 256


def test_demo_limits_hold_over_real_sockets(tmp_path):
    address_file = str(tmp_path / "demo.addr")
    daemon = Daemon(
        [
            "-m",
            "reactor_mgmt",
            "demo",
            "--port",
            "0",
            "--address-file",
            address_file,
            "--max-connections",
            "1",
            "--max-line",
            "40",
            "--token",
            "sesame",
        ],
        address_file,
    )
    try:
        first = socket.create_connection((daemon.host, daemon.port), timeout=TIMEOUT)
        reader = first.makefile("rb")
        first.sendall(b"status\n")
        assert reader.readline() == b"ERR authentication required (send 'auth TOKEN')\n"
        first.sendall(b"auth sesame\n" + b"q" * 100 + b"\nping\n")
        assert reader.readline() == b"OK\n"
        assert reader.readline() == b"ERR line too long (limit 40 bytes)\n"
        assert reader.readline() == b"pong\n"
        second = socket.create_connection((daemon.host, daemon.port), timeout=TIMEOUT)
        assert second.makefile("rb").read() == b"ERR too many connections\n"
        second.close()
        reader.close()
        first.close()
    finally:
        code, out, err = daemon.stop()
    assert "sesame" not in err and "sesame" not in out


# ---- cross-protocol requests ----


@pytest.mark.parametrize("token", [None, "sesame"])
@pytest.mark.parametrize(
    "first_line",
    [
        "GET / HTTP/1.1",
        "POST /x HTTP/1.0",
        "Host: 127.0.0.1:8123",
        "host: evil.example",
        '{"cmd": "GET /index.html HTTP/1.1", "id": 1}',
    ],
)
def test_http_request_closes_at_once_and_runs_nothing_after_it(make_server, first_line, token):
    server = make_server(token=token)
    ran = []

    @server.command
    def mark() -> str:
        ran.append(True)
        return "marked"

    sock = raw_connect(server.addresses[0])
    body = "auth sesame\nmark\n" if token else "mark\n"
    sock.sendall(f"{first_line}\r\nContent-Type: text/plain\r\n\r\n{body}ping\n".encode())
    assert read_to_eof(server, sock) == b""
    assert ran == []
    assert server.stats.http_closed == 1
    assert server.connections == []
    sock.close()


def test_http_lookalikes_are_ordinary_unknown_commands(client):
    assert client.request("GET") == ["ERR unknown command 'GET' (try 'help')"]
    assert client.request("GET / HTTP") == ["ERR unknown command 'GET' (try 'help')"]
    assert client.request("ping") == ["pong"]


def test_http_rejections_are_logged_with_rate_limiting(make_server, caplog):
    server = make_server()
    with caplog.at_level(logging.WARNING, LOGGER):
        for _ in range(4):
            sock = raw_connect(server.addresses[0])
            sock.sendall(b"GET / HTTP/1.1\r\n")
            assert read_to_eof(server, sock) == b""
            sock.close()
        assert sum("HTTP request" in m for m in messages(caplog)) == 1
        server._dispatcher._http_log.next_at = 0.0  # as if the quiet period had passed
        sock = raw_connect(server.addresses[0])
        sock.sendall(b"GET / HTTP/1.1\r\n")
        assert read_to_eof(server, sock) == b""
        sock.close()
    http = [m for m in messages(caplog) if "HTTP request" in m]
    assert len(http) == 2 and "(3 more since the last report)" in http[1]
    assert server.stats.http_closed == 5


# ---- token authentication ----


def _auth_ok(server: Server, token: str) -> bool:
    client = RawClient(server)
    try:
        return client.request(f"auth {token}") == ["OK"]
    finally:
        client.close()


def test_token_from_constructor_env_or_file(make_server, tmp_path, monkeypatch):
    monkeypatch.setenv("RM_HOSTILE_TOKEN", "from-env")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert _auth_ok(make_server(token_env="RM_HOSTILE_TOKEN"), "from-env")
    assert _auth_ok(make_server(token_file=str(token_file)), "from-file")
    both = make_server(token="direct", token_env="RM_HOSTILE_TOKEN", token_file=str(token_file))
    assert _auth_ok(both, "direct") and not _auth_ok(both, "from-env")
    monkeypatch.setenv("RM_HOSTILE_TOKEN", "")  # an empty variable means "not set"
    assert _auth_ok(make_server(token_env="RM_HOSTILE_TOKEN", token_file=str(token_file)), "from-file")
    with pytest.raises(ConfigError):
        Server("127.0.0.1", 0, token="   ")
    # Asked for a token and given none, a server refuses to start: it used to serve every
    # command to whoever connected (a variable not exported, a token file emptied by a deploy).
    with pytest.raises(ConfigError, match="RM_HOSTILE_UNSET_VARIABLE is unset or empty"):
        Server("127.0.0.1", 0, token_env="RM_HOSTILE_UNSET_VARIABLE")
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        Server("127.0.0.1", 0, token_file=str(token_file))
    with pytest.raises(ConfigError, match="unset or empty or the token file .* is empty"):
        Server("127.0.0.1", 0, token_env="RM_HOSTILE_TOKEN", token_file=str(token_file))


def test_before_auth_only_help_ping_auth_and_quit_work(make_server):
    server = make_server(token="sesame")
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    help_reply = json.loads(client.request('{"cmd": "help", "id": 1}')[0])
    assert help_reply["result"].splitlines()[0] == "Commands: auth help ping quit"
    for line in ["echo hi", "stats", "level", "watch 1 ping"]:
        assert client.request(line) == ["ERR authentication required (send 'auth TOKEN')"]
    denied = json.loads(client.request('{"cmd": "echo", "args": ["hi"], "id": 2}')[0])
    assert denied["ok"] is False and denied["error"]["code"] == "denied"
    assert client.request("auth sesame") == ["OK"]
    assert client.request("echo hi") == ["hi"]
    client.close()
    leaver = RawClient(server)
    leaver.send("quit\n")
    assert leaver.read_until_closed() == b""
    leaver.close()


def test_three_failed_auths_close_the_connection(make_server):
    server = make_server(token="sesame")
    client = RawClient(server)
    client.send("auth a\nauth b\nauth c\nauth sesame\necho hi\n")
    assert client.read_until_closed() == (b"ERR authentication failed\n" * 2 + b"ERR authentication failed; closing\n")
    client.close()


def test_token_is_compared_with_compare_digest(make_server, monkeypatch):
    import hmac

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    server = make_server(token="sesame")
    assert not _auth_ok(server, "sesamE")
    assert _auth_ok(server, "sesame")
    assert calls == [(b"sesamE", b"sesame"), (b"sesame", b"sesame")]


def test_token_never_appears_in_logs_or_stats(make_server, caplog):
    secret, guess = "s3cret-token-value", "s3cret-token-guess"
    server = make_server(token=secret)
    with caplog.at_level(logging.DEBUG):
        client = RawClient(server)
        assert client.request(f"auth {guess}") == ["ERR authentication failed"]
        assert client.request(f'{{"cmd": "auth", "args": ["{guess}"], "id": 1}}')[0].startswith('{"id": 1')
        assert client.request(f"auth {secret}") == ["OK"]
        stats_text = client.request('{"cmd": "stats", "id": 2}')[0]
        client.send(f"auth {secret}\nquit\n")
        client.read_until_closed()
        client.close()
    logged = [record.getMessage() for record in caplog.records]
    logged += [record.exc_text or "" for record in caplog.records]
    assert any("failed authentication" in m for m in logged)
    for text in logged + [stats_text, repr(server)]:
        assert secret not in text and guess not in text


# ---- access levels ----


def _levels_server(make_server, **kwargs) -> Server:
    server = make_server(**kwargs)

    @server.command(level="admin")
    def wipe() -> str:
        """Admin only."""
        return "wiped"

    @server.command(level="operator")
    def reload() -> str:
        """Operator and up."""
        return "reloaded"

    @server.command
    def look() -> str:
        """Anyone."""
        return "looked"

    return server


def _help_commands(client: RawClient) -> List[str]:
    reply = json.loads(client.request('{"cmd": "help", "id": "h"}')[0])
    return reply["result"].splitlines()[0].split()[1:]


def test_tcp_listener_defaults_to_operator(make_server):
    server = _levels_server(make_server)
    client = RawClient(server)
    assert client.request("level") == ["operator"]
    assert client.request("look") == ["looked"]
    assert client.request("reload") == ["reloaded"]
    assert client.request("wipe") == ["ERR permission denied: 'wipe' needs admin"]
    reply = json.loads(client.request('{"cmd": "wipe", "id": 3}')[0])
    assert reply == {
        "id": 3,
        "ok": False,
        "error": {"code": "denied", "message": "permission denied: 'wipe' needs admin"},
    }
    assert client.request("watch 1 wipe") == ["ERR permission denied: 'wipe' needs admin"]
    listed = _help_commands(client)
    assert "reload" in listed and "look" in listed and "wipe" not in listed
    assert client.request("help wipe")[0].startswith("ERR ")
    client.close()


def test_a_connection_can_lower_its_level_but_never_raise_it(make_server):
    server = _levels_server(make_server)
    client = RawClient(server)
    assert client.request("level admin") == ["ERR permission denied: cannot raise the level from operator to admin"]
    assert client.request("level user") == ["user"]
    assert client.request("reload") == ["ERR permission denied: 'reload' needs operator"]
    assert "reload" not in _help_commands(client)
    assert client.request("level operator") == ["ERR permission denied: cannot raise the level from user to operator"]
    assert client.request("level root")[0].startswith("ERR usage: level")
    assert client.request("level") == ["user"]
    assert client.request("look") == ["looked"]
    # Another connection on the same listener is unaffected.
    other = RawClient(server)
    assert other.request("reload") == ["reloaded"]
    other.close()
    client.close()


def test_unix_listener_defaults_to_admin_and_level_overrides(make_server, short_dir):
    server = _levels_server(make_server, unix=os.path.join(short_dir, "admin.sock"))
    unix_client = RawClient(server, server.addresses[1])
    assert unix_client.request("wipe") == ["wiped"]
    assert "wipe" in _help_commands(unix_client)
    unix_client.close()
    server.listen_tcp("127.0.0.1", 0, level="admin")
    admin_client = RawClient(server, server.addresses[2])
    assert admin_client.request("wipe") == ["wiped"]
    admin_client.close()
    server.listen_unix(os.path.join(short_dir, "user.sock"), level="user")
    user_client = RawClient(server, server.addresses[3])
    assert user_client.request("reload") == ["ERR permission denied: 'reload' needs operator"]
    user_client.close()
    everyone = _levels_server(make_server, unix=os.path.join(short_dir, "all.sock"), level="user")
    assert [listener.level for listener in everyone._listening.listeners] == ["user", "user"]
    with pytest.raises(ConfigError):
        make_server(level="root")


# ---- Unix sockets ----


def test_unix_socket_is_0600_by_default(make_server, short_dir):
    path = os.path.join(short_dir, "s")
    make_server(port=None, unix=path)
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600


@pytest.mark.parametrize("by_name", [False, True])
def test_unix_socket_group_and_mode(make_server, short_dir, by_name):
    import grp

    gid = os.getgid()
    group = grp.getgrgid(gid).gr_name if by_name else gid
    server = make_server(port=None)
    path = server.listen_unix(os.path.join(short_dir, "g"), mode=0o660, group=group)
    info = os.lstat(path)
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == gid
    client = RawClient(server, path)
    assert client.request("ping") == ["pong"]
    client.close()


def test_unix_socket_unknown_group_leaves_nothing_behind(make_server, short_dir):
    server = make_server(port=None)
    path = os.path.join(short_dir, "g")
    with pytest.raises(reactor_mgmt.ConfigError, match="unknown group 'no-such-group-rmh'"):
        server.listen_unix(path, group="no-such-group-rmh")
    assert not os.path.exists(path) and server.addresses == []


def test_unix_socket_never_follows_a_symlink(make_server, short_dir):
    target = os.path.join(short_dir, "target")
    with open(target, "w") as handle:
        handle.write("precious")
    link = os.path.join(short_dir, "s")
    os.symlink(target, link)
    with pytest.raises(ConfigError, match="symlink"):
        make_server(port=None, unix=link)
    assert os.path.islink(link) and open(target).read() == "precious"
    os.unlink(link)
    os.symlink(os.path.join(short_dir, "nowhere"), link)  # a dangling one too
    with pytest.raises(ConfigError, match="symlink"):
        make_server(port=None, unix=link)
    assert os.path.islink(link) and not os.path.exists(os.path.join(short_dir, "nowhere"))


def test_unix_socket_refuses_to_replace_a_non_socket(make_server, short_dir):
    path = os.path.join(short_dir, "s")
    with open(path, "w") as handle:
        handle.write("data")
    with pytest.raises(ConfigError, match="not a socket"):
        make_server(port=None, unix=path)
    assert open(path).read() == "data"
    os.unlink(path)
    os.mkdir(path)
    with pytest.raises(ConfigError, match="not a socket"):
        make_server(port=None, unix=path)
    os.rmdir(path)


def test_unix_socket_replaces_a_stale_one_but_not_a_live_one(make_server, short_dir):
    path = os.path.join(short_dir, "s")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # its file stays: the owner died
    server = make_server(port=None, unix=path)
    with pytest.raises(ConfigError, match="in use"):
        make_server(port=None, unix=path)
    client = RawClient(server, path)  # the live one was left alone
    assert client.request("ping") == ["pong"]
    client.close()


def test_unix_bind_failure_raises_and_the_server_stays_usable(make_server, short_dir):
    server = make_server()
    with pytest.raises(OSError):
        server.listen_unix(os.path.join(short_dir, "missing-dir", "s"))
    assert len(server.addresses) == 1
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    client.close()


def test_peer_check_admits_the_same_uid(make_server, short_dir):
    server = make_server(port=None)
    path = server.listen_unix(os.path.join(short_dir, "s"), check_peer=True)
    client = RawClient(server, path)
    assert client.request("ping") == ["pong"]
    client.close()


_FOREIGN_CLIENT = textwrap.dedent(r"""
    import os, socket, sys
    path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # modules load before we drop root
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    sock.settimeout(10)
    sock.connect(path)
    try:
        sock.sendall(b"ping\n")
    except OSError:  # a refused peer may be closed before we send: its reply is still there
        pass
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            break
        data += chunk
    sys.stdout.write(repr((os.getuid(), data)))
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="running a client as another user needs root")
@pytest.mark.parametrize("listed", [False, True])
def test_peer_check_refuses_other_uids_unless_listed(make_server, short_dir, caplog, listed):
    nobody = pwd.getpwnam("nobody")
    os.chmod(short_dir, 0o755)
    server = make_server(port=None)
    # Mode 0666 so that the file permissions let `nobody` in and the peer check alone decides.
    path = server.listen_unix(
        os.path.join(short_dir, "s"), mode=0o666, check_peer=True, allowed_uids=[nobody.pw_uid] if listed else ()
    )
    with caplog.at_level(logging.WARNING, LOGGER):
        child = subprocess.Popen(
            [sys.executable, "-c", _FOREIGN_CLIENT, path, str(nobody.pw_uid), str(nobody.pw_gid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + TIMEOUT
        while child.poll() is None:
            assert time.monotonic() < deadline, "the foreign client hung"
            server.poll(0.01)
        out, err = child.communicate()
    assert child.returncode == 0, err.decode()
    uid, data = eval(out.decode())  # our own child's repr() of (int, bytes)
    assert uid == nobody.pw_uid
    if listed:
        assert data == b"pong\n"
    else:
        assert data == b"ERR permission denied: peer uid not allowed\n"
        assert server.stats.refused == 1
        assert any("peer uid not allowed" in m for m in messages(caplog))


# ---- non-loopback binds ----


@pytest.mark.parametrize(
    "kwargs, warned",
    [
        ({}, True),
        ({"token": "sesame"}, False),
        ({"allow_remote": True}, False),
    ],
)
def test_non_loopback_bind_warns_unless_token_or_allow_remote(caplog, kwargs, warned):
    with caplog.at_level(logging.WARNING, LOGGER):
        Server("0.0.0.0", 0, **kwargs).close()
    assert any("non-loopback" in m for m in messages(caplog)) == warned


def test_loopback_binds_and_adopted_remote_sockets(make_server, caplog):
    with caplog.at_level(logging.WARNING, LOGGER):
        make_server("127.0.0.1")
        make_server("localhost")
    assert not any("non-loopback" in m for m in messages(caplog))
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))
    sock.listen(4)
    server = make_server(port=None)
    with caplog.at_level(logging.WARNING, LOGGER):
        server.listen_socket(sock)
    assert any("non-loopback" in m for m in messages(caplog))


# ---- hostile requests that once reached the host's loop ----


def test_lone_surrogates_in_json_get_replies_not_exceptions(make_server):
    server = make_server(token="sesame")
    client = RawClient(server)
    for line in [
        r'{"cmd": "\ud800", "id": 1}',
        r'{"cmd": "auth", "args": ["\udfff"], "id": 2}',
        r'{"cmd": "ping", "id": "\ud800x"}',
    ]:
        reply = json.loads(client.request(line)[0])  # still valid JSON: the escape is kept
        assert reply["id"] in (1, 2, "\ud800x")
    assert client.request("auth sesame") == ["OK"]
    assert json.loads(client.request(r'{"cmd": "echo", "args": ["\ud83d"], "id": 3}')[0])["result"] == "\ud83d"
    client.close()


def test_deeply_nested_json_is_a_bad_request_not_an_internal_error(make_server, caplog):
    # Deeper than any CPython's json decoder goes (3.13 parses 5000 levels; it stops near 10000),
    # so on a line longer than the default max_line.
    client = RawClient(make_server(max_line=1 << 20))
    depth = 100_000
    with caplog.at_level(logging.ERROR, LOGGER):
        reply = json.loads(client.request('{"id": 1, "cmd": "ping", "args": ' + "[" * depth + "]" * depth + "}")[0])
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    assert not caplog.records
    assert client.request("ping") == ["pong"]
    client.close()


def test_nan_and_infinite_numbers_cannot_stall_timers(make_server):
    server = make_server(idle_timeout=0.3)

    @server.command
    def later(timeout: float) -> Pending:
        return Pending(timeout=timeout)

    waiter = RawClient(server)
    waiter.send("later nan\n")
    waiter.pump(3)
    other = RawClient(server)
    other.send("later inf\n")
    other.pump(3)
    silent = raw_connect(server.addresses[0])
    # The idle reaper still runs for everyone else: a NaN deadline did not poison the heap.
    assert read_to_eof(server, silent) == b""
    silent.close()
    waiter.close()
    other.close()


def test_watch_rejects_nan_and_infinite_intervals(client):
    for value in ("nan", "inf", "0.01"):
        reply = client.request(f"watch {value} ping")
        assert reply == ["ERR usage: watch SECONDS COMMAND... (SECONDS must be at least 0.1)"]


# ---- transport errors stay inside the connection ----


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST, not FIN


def test_reset_while_reading_drops_only_that_connection(make_server, caplog):
    server = make_server()
    client = RawClient(server)
    victim = raw_connect(server.addresses[0])
    pump_until(server, lambda: len(server.connections) == 2)
    with caplog.at_level(logging.DEBUG, LOGGER):
        _reset(victim)
        pump_until(server, lambda: len(server.connections) == 1)
    assert any("dropped" in m for m in messages(caplog))
    assert client.request("ping") == ["pong"]
    client.close()


def test_reset_while_writing_drops_only_that_connection(make_server):
    server = _blob_server(make_server)
    client = RawClient(server)
    victim = raw_connect(server.addresses[0], rcvbuf=4096)
    pump_until(server, lambda: len(server.connections) == 2)
    _shrink_send_buffer(connection_of(server))
    victim.sendall(b"blob 500000\n")
    pump_until(server, lambda: any(c.transport.out_size for c in server.connections))
    _reset(victim)
    pump_until(server, lambda: len(server.connections) == 1)
    assert client.request("ping") == ["pong"]
    client.close()


def test_accept_errors_other_than_fd_exhaustion_are_skipped(make_server, caplog):
    import errno

    server = make_server()
    listener = server._listening.listeners[0]

    class Aborting:
        calls = 0

        def accept(self):
            Aborting.calls += 1
            if Aborting.calls == 1:
                raise OSError(errno.ECONNABORTED, "Software caused connection abort")
            raise BlockingIOError

    real, listener.sock = listener.sock, Aborting()
    try:
        with caplog.at_level(logging.DEBUG, LOGGER):
            server._listening.acceptor.accept(listener, time.monotonic())
    finally:
        listener.sock = real
    assert Aborting.calls == 2  # the failure was skipped and accepting went on
    assert any("accept failed" in m for m in messages(caplog))
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    client.close()


def test_adopting_a_closed_or_non_listening_socket_is_refused(make_server):
    server = make_server(port=None)
    closed = socket.socket()
    closed.close()
    with pytest.raises(ConfigError, match="not a socket"):
        server.listen_socket(closed)
    idle = socket.socket()
    idle.bind(("127.0.0.1", 0))
    with pytest.raises(ConfigError, match="not listening"):
        server.listen_socket(idle)
    idle.close()
    assert server.addresses == []


def test_quit_then_reset_closes_at_once_without_lingering(make_server):
    server = make_server()
    sock = raw_connect(server.addresses[0])
    pump_until(server, lambda: len(server.connections) == 1)
    sock.sendall(b"quit\n")
    _reset(sock)
    time.sleep(0.05)
    for _ in range(3):
        server.poll(0.01)
    assert server.connections == []  # not kept for the 2 s linger: the peer is gone


def test_tcp_bind_failure_raises_and_cleans_up(make_server):
    server = make_server()
    busy_port = server.addresses[0][1]
    with pytest.raises(OSError):
        Server("127.0.0.1", busy_port)
    with pytest.raises(OSError):
        server.listen_tcp("127.0.0.1", busy_port)
    assert len(server.addresses) == 1
