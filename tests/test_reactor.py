# Socket tests of the reactor: real sockets on loopback (or a Unix socket), the server driven by
# poll() from the test's own thread as a host would drive it. Each test checks one promise of
# the design comment in _server.py: ordered replies, half-close, bounded output with
# EVENT_WRITE only while needed, quiet drops, isolated handler failures, safe Unix sockets.
from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import shutil
import socket
import stat
import struct
import sys
import tempfile
import threading
import time

import pytest

import reactor_mgmt
from conftest import TIMEOUT, RawClient

LOGGER = "reactor_mgmt"


@pytest.fixture
def short_dir():
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be longer than that.
    path = tempfile.mkdtemp(prefix="rm-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def server_conn(server: reactor_mgmt.Server) -> reactor_mgmt.Connection:
    (conn,) = server.connections
    return conn


def poll_until(server, predicate, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        server.poll(0.01)


# ---- pipelining and half-close ----


def test_ten_thousand_pipelined_commands_answered_in_order(server, client):
    count = 10_000
    payload = "".join(f"echo {i}\n" for i in range(count)).encode()
    # A second descriptor for the same socket, so a thread can block in sendall() while this
    # thread keeps the server polling (the kernel buffers may not hold the whole batch).
    sender = client.sock.dup()
    sender.settimeout(TIMEOUT)
    errors = []

    def send():
        try:
            sender.sendall(payload)
        except OSError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        lines = client.lines(count, timeout=60)
    finally:
        thread.join(TIMEOUT)
        sender.close()
    assert not errors
    assert lines == [str(i) for i in range(count)]
    assert client.request("ping") == ["pong"]


@pytest.mark.parametrize("payload", [b"ping", b"ping\n", b"ping\r\n", b"echo a\necho b"])
def test_half_close_gets_every_reply_then_close(server, client, payload):
    client.send(payload)
    client.shutdown()
    data = client.read_until_closed()
    expected = b"a\nb\n" if payload.startswith(b"echo") else b"pong\n"
    assert data == expected
    poll_until(server, lambda: not server.connections)


def test_half_close_after_many_pipelined_requests(server, client):
    client.send("".join(f"echo {i}\n" for i in range(500)) + "echo last")
    client.shutdown()
    data = client.read_until_closed()
    assert data.decode().split("\n") == [str(i) for i in range(500)] + ["last", ""]


def test_eof_with_nothing_sent_closes_quietly(server, client):
    client.shutdown()
    assert client.read_until_closed() == b""


# ---- slow readers, partial sends, EVENT_WRITE ----


def _interest_matches_output(server, conn) -> None:
    """EVENT_WRITE is registered exactly while the connection has output pending."""
    if conn.closed:
        return
    events = _registered_events(server, conn.transport.sock)
    assert events == conn.transport.mask
    assert bool(events & selectors.EVENT_WRITE) == (conn.transport.out is not None), (events, conn.transport.out_size)


def _registered_events(server, sock) -> int:
    """What the kernel poller watches ``sock`` for, as a selectors mask: on epoll, read from the
    kernel's own list (/proc/self/fdinfo of the epoll descriptor), since the loop registers with
    epoll directly; elsewhere the selector's map."""
    loop = server._loop
    if loop.epoll is None:
        try:
            return loop.selector.get_key(sock).events
        except KeyError:
            return 0
    with open(f"/proc/self/fdinfo/{loop.epoll.fileno()}") as info:
        for line in info:
            fields = line.split()
            if fields[:1] == ["tfd:"] and int(fields[1]) == sock.fileno():
                bits = int(fields[3], 16)
                # reading asks for the peer's half-close too (an EOF read with the last bytes)
                assert bool(bits & select.EPOLLIN) == bool(bits & select.EPOLLRDHUP), hex(bits)
                return (selectors.EVENT_READ if bits & select.EPOLLIN else 0) | (
                    selectors.EVENT_WRITE if bits & select.EPOLLOUT else 0
                )
    return 0


def test_slow_reader_gets_everything_through_partial_sends(make_server):
    server = make_server("127.0.0.1")
    size = 1 << 20
    lines = 1 << 14
    width = size // lines
    body = "".join(f"{i:0{width - 1}d}\n" for i in range(lines))

    @server.command
    def big(conn: reactor_mgmt.Connection) -> str:
        # Loopback send buffers autotune up to megabytes; pin this one small so the reply
        # cannot vanish into the kernel in one send().
        conn.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        return body

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.settimeout(TIMEOUT)
    sock.connect(server.addresses[0])
    sock.setblocking(False)
    try:
        poll_until(server, lambda: server.connections)
        conn = server_conn(server)
        _interest_matches_output(server, conn)
        assert conn.transport.mask == selectors.EVENT_READ
        sock.send(b"big\nping\n")
        received = bytearray()
        polls_with_pending_output = 0
        deadline = time.monotonic() + 60
        expected_total = len(body) + len(b"pong\n")
        while len(received) < expected_total:
            assert time.monotonic() < deadline, f"stalled at {len(received)} bytes"
            server.poll(0.002)
            _interest_matches_output(server, conn)
            if conn.transport.out is not None:
                polls_with_pending_output += 1
            try:
                received += sock.recv(8192)  # a few KB per turn: the reader is the bottleneck
            except BlockingIOError:
                pass
        # Flush the bookkeeping for the last bytes, then the write interest must be gone.
        for _ in range(3):
            server.poll(0.005)
        _interest_matches_output(server, conn)
        assert conn.transport.out is None
        assert conn.transport.mask == selectors.EVENT_READ
        assert bytes(received) == (body + "pong\n").encode()
        assert polls_with_pending_output > 10  # the reply really went out in many pieces
    finally:
        sock.close()


def test_write_from_the_host_between_polls_goes_out_on_the_next_poll(server, client):
    assert client.request("ping") == ["pong"]
    (conn,) = server.connections
    conn.write("notice: backup finished")  # the host's code, outside any handler
    server.poll(0)  # one non-blocking poll: no socket event is due, only the ready connection
    client.sock.settimeout(TIMEOUT)
    assert client.sock.recv(100) == b"notice: backup finished\n"


def test_write_interest_dropped_after_reply_fits_at_once(server, client):
    assert client.request("echo hello") == ["hello"]
    conn = server_conn(server)
    _interest_matches_output(server, conn)
    assert conn.transport.mask == selectors.EVENT_READ


def test_peer_reset_mid_reply_is_dropped_quietly(make_server, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = make_server("127.0.0.1")
    body = "y" * (8 << 20)

    @server.command
    def big() -> str:
        return body

    other = RawClient(server)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(server.addresses[0])
    try:
        poll_until(server, lambda: len(server.connections) == 2)
        victim = max(server.connections, key=lambda c: c.id)
        sock.sendall(b"big\n")
        poll_until(server, lambda: victim.transport.out is not None)
        sock.recv(1000)  # read a little of the reply, then abort
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
    poll_until(server, lambda: victim.closed)  # no exception escapes poll()
    assert victim not in server.connections
    assert any("dropped" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert other.request("ping") == ["pong"]
    other.close()


# ---- handler failures ----


def test_handler_exception_reported_and_logged(server, caplog):
    @server.command
    def boom() -> str:
        raise RuntimeError("kaboom")

    bystander = RawClient(server)
    client = RawClient(server)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert client.request("boom") == ["ERR internal error (RuntimeError)"]
    records = [r for r in caplog.records if r.exc_info]
    assert len(records) == 1
    assert records[0].exc_info[0] is RuntimeError
    assert "kaboom" in caplog.text and "Traceback" in caplog.text
    assert client.request("ping") == ["pong"]
    assert bystander.request("echo still here") == ["still here"]
    client.close()
    bystander.close()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_propagate_out_of_poll(server, exc_type):
    @server.command
    def stop() -> str:
        raise exc_type()

    client = RawClient(server)
    client.send('stop\n{"id": 7, "cmd": "stop"}\necho queued behind it\n')
    deadline = time.monotonic() + TIMEOUT
    for _ in range(2):
        with pytest.raises(exc_type):
            while time.monotonic() < deadline:
                server.poll(0.01)
    # The host decides what happens next; if it goes on polling, the request queued behind the
    # one that raised is answered without the client sending anything more. Each that raised is
    # answered too: a client reading replies in step took the next reply for its own.
    code, message = ("internal", "internal error (KeyboardInterrupt)")
    if exc_type is SystemExit:  # sys.exit(): the host is leaving on purpose
        code, message = ("shutdown", "server shutting down")
    assert client.lines(3) == [
        f"ERR {message}",
        f'{{"id": 7, "ok": false, "error": {{"code": "{code}", "message": "{message}"}}}}',
        "queued behind it",
    ]
    assert client.request("ping") == ["pong"]
    client.close()


def test_poll_after_a_handler_closed_the_server_returns_zero(server):
    @server.command
    def shutdown() -> str:
        server.close()
        return "bye"

    client = RawClient(server)
    client.send("shutdown\n")
    client.read_until_closed()
    assert server.closed
    assert server.poll(0) == 0
    assert server.poll(0.01) == 0
    client.close()


@pytest.mark.parametrize("port", ["free", 0])
def test_listen_tcp_binds_every_address_of_the_host_or_none(make_server, monkeypatch, port):
    # A host with two addresses whose second cannot be bound (here the same address twice;
    # in life ::1 with the port taken): the call used to raise yet leave the first listening,
    # unlisted in the address file. Port 0 tries fresh ports first, then gives up the same way.
    server = make_server("127.0.0.1")
    before = list(server.addresses)
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real("127.0.0.1", *a, **k) * 2)
    if port == "free":
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
    with pytest.raises(OSError) as info:
        server.listen_tcp("dualhost", port)
    assert info.value.errno == errno.EADDRINUSE
    assert server.addresses == before
    if port:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()


def test_a_failed_bind_names_the_address_and_keeps_its_errno(make_server, short_dir):
    # A host that binds several addresses (or a name resolving to several) is told which one
    # failed, as asyncio's create_server tells it; callers that test the errno still can.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError) as info:
            reactor_mgmt.Server("127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE
        assert f"cannot listen on 127.0.0.1:{port}" in str(info.value)
    finally:
        holder.close()
    missing = os.path.join(short_dir, "no-such-dir", "mgmt.sock")
    server = make_server("127.0.0.1")
    with pytest.raises(FileNotFoundError) as unix_info:  # the errno's own subclass, as bind() raised it
        server.listen_unix(missing)
    assert unix_info.value.errno == errno.ENOENT
    assert f"cannot listen on {missing}" in str(unix_info.value)


# ---- Unix sockets ----


def test_unix_socket_mode_0600_and_removed_on_close(short_dir):
    path = os.path.join(short_dir, "mgmt.sock")
    old_umask = os.umask(0)  # a permissive umask must not widen the socket's mode
    try:
        server = reactor_mgmt.Server(None, None, unix=path)
    finally:
        os.umask(old_umask)
    try:
        info = os.lstat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert server.addresses == [path]
        client = RawClient(server, path)
        assert client.request("ping") == ["pong"]
        assert client.request("level") == ["admin"]  # Unix sockets default to admin
        client.close()
    finally:
        server.close()
    assert not os.path.exists(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fchmod sets a socket's bind mode on Linux only")
def test_unix_socket_is_born_with_its_mode_without_touching_the_umask(short_dir, monkeypatch):
    # The umask is process-wide: changing it, even briefly, changes the mode of whatever another
    # host thread creates meanwhile. And a chmod after bind leaves a moment with a wider mode.
    chmods = []

    def no_umask(mask):
        raise AssertionError("listen_unix changed the process umask")

    real_chmod = os.chmod
    monkeypatch.setattr(os, "chmod", lambda *args, **kw: chmods.append(args) or real_chmod(*args, **kw))
    old_umask = os.umask(0)
    try:
        monkeypatch.setattr(os, "umask", no_umask)
        server = reactor_mgmt.Server(None, None, unix=os.path.join(short_dir, "born.sock"))
    finally:
        monkeypatch.undo()
        os.umask(old_umask)
    try:
        assert stat.S_IMODE(os.lstat(server.addresses[0]).st_mode) == 0o600
        assert chmods == []  # it already had its mode when bind() made it
    finally:
        server.close()


def test_a_closed_server_has_no_deadline_and_no_work():
    # A host loop that waits until next_deadline() (the Tk and Qt drivers of the docs) and
    # polls again while busy: a closed server kept the idle reaper's deadline, past and never
    # popped, and such a loop re-armed a 0 ms timer for good (29,000 ticks a second).
    server = reactor_mgmt.Server("127.0.0.1", 0, idle_timeout=0.3)
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    server.call_later(60, lambda: None)
    server.call_soon_threadsafe(lambda: None)
    assert server.next_deadline() is not None and server.busy
    server.close()
    assert server.next_deadline() is None and not server.busy
    time.sleep(0.35)  # past the reaper's deadline
    assert server.poll(0) == 0 and server.next_deadline() is None and not server.busy
    server.call_later(0.1, lambda: None)  # after close: it would never run, nor be reported
    assert server.next_deadline() is None
    client.close()


def test_a_constructor_that_fails_after_its_loop_is_made_closes_it(monkeypatch):
    # The epoll descriptor and the reserve one were open before the constructor's try: a
    # failure while installing the built-in commands or the toolkit left them open.
    from reactor_mgmt import _builtins

    def broken(*args, **kwargs):
        raise RuntimeError("a builtin refused")

    monkeypatch.setattr(_builtins, "install_builtins", broken)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match="a builtin refused"):
        reactor_mgmt.Server("127.0.0.1", 0)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_listener_refused_leaves_nothing_bound_or_open(short_dir):
    # The level was checked after the bind, and a closed server's epoll refused the listener
    # after it too: each left a listening socket open (and a Unix socket file nobody removes).
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    path = os.path.join(short_dir, "late.sock")
    server = reactor_mgmt.Server("127.0.0.1", 0)
    try:
        before = fds()
        with pytest.raises(reactor_mgmt.ConfigError, match="unknown level"):
            server.listen_tcp("127.0.0.1", 0, level="bogus")
        with pytest.raises(reactor_mgmt.ConfigError, match="unknown level"):
            server.listen_unix(path, level="bogus")
        assert fds() == before and not os.path.exists(path)
    finally:
        server.close()
    before = fds()
    with pytest.raises(reactor_mgmt.ReactorMgmtError, match="closed"):
        server.listen_tcp("127.0.0.1", 0)
    with pytest.raises(reactor_mgmt.ReactorMgmtError, match="closed"):
        server.listen_unix(path)
    assert fds() == before and not os.path.exists(path)


def test_the_address_file_is_written_through_no_planted_link(short_dir):
    # In a directory others may write, a symlink left at the temporary name the address file
    # was written through (PATH.tmpPID) made the server truncate its target and then move the
    # link into the address file's place.
    address_file = os.path.join(short_dir, "app.addr")
    victim = os.path.join(short_dir, "victim")
    with open(victim, "w") as handle:
        handle.write("precious\n")
    os.symlink(victim, f"{address_file}.tmp{os.getpid()}")
    server = reactor_mgmt.Server("127.0.0.1", 0, address_file=address_file)
    try:
        with open(victim) as handle:
            assert handle.read() == "precious\n"
        assert not os.path.islink(address_file)
        with open(address_file) as handle:
            assert handle.read() == f"127.0.0.1:{server.port}\n"
        leftovers = sorted(name for name in os.listdir(short_dir) if ".tmp" in name)
        assert leftovers == [f"app.addr.tmp{os.getpid()}"]  # only the planted link
    finally:
        server.close()


def test_close_removes_only_files_that_are_still_its_own(short_dir):
    # An overlapping restart: the new server takes over the socket path and the address file
    # while the old one is still shutting down. The old one's close() used to delete both.
    path, address_file = os.path.join(short_dir, "app.sock"), os.path.join(short_dir, "app.addr")
    old = reactor_mgmt.Server(None, None, unix=path, address_file=address_file)
    os.unlink(path)  # the new one replaces a socket it may take for stale
    new = reactor_mgmt.Server("127.0.0.1", 0, unix=path, address_file=address_file)
    try:
        old.close()
        assert os.path.exists(path) and os.path.exists(address_file)
        client = RawClient(new, path)
        assert client.request("ping") == ["pong"]
        client.close()
    finally:
        new.close()
    assert not os.path.exists(path) and not os.path.exists(address_file)


def test_a_copy_that_cannot_start_leaves_the_running_copys_address_file(short_dir):
    path, address_file = os.path.join(short_dir, "app.sock"), os.path.join(short_dir, "app.addr")
    with reactor_mgmt.Server("127.0.0.1", 0, unix=path, address_file=address_file) as running:
        written = open(address_file).read()
        assert written.splitlines() == [f"127.0.0.1:{running.port}", path]
        with pytest.raises(reactor_mgmt.ConfigError, match="in use"):
            reactor_mgmt.Server("127.0.0.1", 0, unix=path, address_file=address_file)
        assert open(address_file).read() == written


def test_an_abstract_unix_socket_is_refused_with_the_reason(make_server):
    server = make_server(port=None)
    with pytest.raises(reactor_mgmt.ConfigError, match="abstract Unix sockets are not supported: .*any local user"):
        server.listen_unix("\0reactor-mgmt-test")
    assert server.addresses == []


def test_unix_stale_socket_replaced(short_dir):
    path = os.path.join(short_dir, "stale.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: what a crashed server leaves behind
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with reactor_mgmt.Server(None, None, unix=path) as server:
        client = RawClient(server, path)
        assert client.request("ping") == ["pong"]
        client.close()


def test_unix_regular_file_refused(short_dir):
    path = os.path.join(short_dir, "file")
    with open(path, "w") as handle:
        handle.write("precious")
    with pytest.raises(reactor_mgmt.ConfigError, match="not a socket"):
        reactor_mgmt.Server(None, None, unix=path)
    assert open(path).read() == "precious"


def test_unix_directory_refused(short_dir):
    with pytest.raises(reactor_mgmt.ConfigError):
        reactor_mgmt.Server(None, None, unix=short_dir)
    assert os.path.isdir(short_dir)


def test_unix_symlink_refused(short_dir):
    target = os.path.join(short_dir, "target.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(target)
    dead.close()
    link = os.path.join(short_dir, "link.sock")
    os.symlink(target, link)
    with pytest.raises(reactor_mgmt.ConfigError, match="symlink"):
        reactor_mgmt.Server(None, None, unix=link)
    assert os.path.islink(link) and os.path.exists(target)


def test_unix_live_socket_refused(short_dir):
    path = os.path.join(short_dir, "live.sock")
    with reactor_mgmt.Server(None, None, unix=path) as first:
        with pytest.raises(reactor_mgmt.ConfigError, match="in use"):
            reactor_mgmt.Server(None, None, unix=path)
        client = RawClient(first, path)  # the refused server did not disturb the live one
        assert client.request("ping") == ["pong"]
        client.close()
    assert not os.path.exists(path)


def test_tcp_listener_failure_leaves_no_unix_file(short_dir):
    path = os.path.join(short_dir, "x.sock")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            reactor_mgmt.Server("127.0.0.1", port, unix=path)
    assert not os.path.exists(path)


# ---- listeners ----


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_listener(make_server):
    server = make_server("::1")
    (address,) = server.addresses
    assert address[0] == "::1" and address[1] != 0
    client = RawClient(server, address)
    assert client.request("ping") == ["pong"]
    client.close()


def test_port_zero_is_resolved_in_addresses(server):
    (address,) = server.addresses
    assert address[0] == "127.0.0.1"
    assert isinstance(address[1], int) and address[1] > 0
    assert server.port == address[1]


def test_several_listeners_on_one_server(make_server, short_dir):
    server = make_server("127.0.0.1")
    extra = server.listen_tcp("127.0.0.1", 0)
    path = server.listen_unix(os.path.join(short_dir, "s.sock"))
    assert len(server.addresses) == 3
    assert server.addresses[1:] == [*extra, path]
    assert server.addresses[0][1] != extra[0][1]
    clients = [RawClient(server, address) for address in server.addresses]
    for i, client in enumerate(clients):
        client.send(f"echo {i}\n")
    for i, client in enumerate(clients):
        assert client.lines(1) == [str(i)]
    for client in clients:
        client.close()


def test_localhost_shares_one_ephemeral_port(make_server):
    server = make_server("localhost")
    ports = {address[1] for address in server.addresses}
    assert len(ports) == 1 and 0 not in ports
    for address in server.addresses:
        client = RawClient(server, address)
        assert client.request("ping") == ["pong"]
        client.close()


# ---- poll() and fileno() ----


def test_poll_zero_on_idle_server_returns_at_once(server):
    for _ in range(3):
        started = time.monotonic()
        assert server.poll(0) == 0
        assert time.monotonic() - started < 1.0


def test_poll_with_timeout_waits_at_most_that_long(server):
    started = time.monotonic()
    assert server.poll(0.2) == 0
    assert time.monotonic() - started < 0.2 + 1.0


def test_poll_with_long_timeout_returns_on_activity(server):
    sock = socket.create_connection(server.addresses[0], timeout=TIMEOUT)
    try:
        started = time.monotonic()
        assert server.poll(30) >= 1  # the connection is waiting: no need to sleep
        assert time.monotonic() - started < 5.0
        assert len(server.connections) == 1
    finally:
        sock.close()


def test_fileno_in_plain_select(server):
    fd = server.fileno()
    assert select.select([fd], [], [], 0)[0] == []  # idle: not readable
    sock = socket.create_connection(server.addresses[0], timeout=TIMEOUT)
    try:
        assert select.select([fd], [], [], TIMEOUT)[0] == [fd]
        assert server.poll(0) >= 1
        assert len(server.connections) == 1
        assert select.select([fd], [], [], 0)[0] == []  # accepted: quiet again
        sock.sendall(b"ping\n")
        assert select.select([fd], [], [], TIMEOUT)[0] == [fd]
        server.poll(0)
        sock.settimeout(TIMEOUT)
        assert sock.recv(100) == b"pong\n"
    finally:
        sock.close()


# ---- built-ins and lifecycle ----


def test_quit_flushes_earlier_replies_then_closes(server, client):
    client.send("ping\necho bye\nquit\nping\n")
    assert client.read_until_closed() == b"pong\nbye\n"
    client.close()
    poll_until(server, lambda: not server.connections)


def test_unknown_command(server, client):
    assert client.request("x") == ["ERR unknown command 'x' (try 'help')"]
    assert client.request("ping") == ["pong"]


def test_help_lists_commands(server, client):
    client.send("help\n")
    client.wait_for(lambda buf: b"for details" in buf)
    text = client.buffer.decode()
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("Commands:")] == [lines[0]]
    names = lines[0].split()[1:]
    for name in ("echo", "help", "ping", "quit", "stats"):
        assert name in names
    assert "auth" not in names  # hidden without a token
    assert text.endswith("\n")


def test_help_for_one_command(server, client):
    assert client.request("help ping", 3) == ["usage: ping", "", "Replies pong: a liveness check."]
    assert client.request("help nosuch") == ["ERR unknown command 'nosuch' (try 'help')"]


def test_echo_ping_and_blank_lines(server, client):
    client.send("\n\n   \r\n\t\necho  a   b\n\nping\n")
    assert client.lines(2) == ["a b", "pong"]
    assert client.request("echo") == [""]
    assert client.request('echo "two  spaces" x') == ["two  spaces x"]
    for _ in range(5):
        client.pump()
    assert client.buffer == b""  # blank lines got no reply at all


def test_context_manager_closes(short_dir):
    path = os.path.join(short_dir, "cm.sock")
    with reactor_mgmt.Server("127.0.0.1", 0, unix=path) as server:
        address = server.addresses[0]
        client = RawClient(server, address)
        assert client.request("ping") == ["pong"]
    assert server.closed
    assert not os.path.exists(path)
    client.sock.settimeout(TIMEOUT)
    assert client.sock.recv(100) == b""  # the server closed its side of the connection
    client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=TIMEOUT).close()


def test_close_is_idempotent(server):
    server.close()
    server.close()
    assert server.closed


def test_serve_forever_stops_after_close_from_handler(server):
    @server.command(name="shutdown")
    def shutdown() -> str:
        server.close()
        return "bye"

    sock = socket.create_connection(server.addresses[0], timeout=TIMEOUT)
    try:
        sock.sendall(b"ping\nshutdown\n")
        # only if serve_forever hangs; a blocked wait wakes only through call_soon_threadsafe
        watchdog = threading.Timer(TIMEOUT, server.call_soon_threadsafe, (server.close,))
        watchdog.start()
        started = time.monotonic()
        try:
            server.serve_forever(poll_interval=0.05)
        finally:
            watchdog.cancel()
        assert time.monotonic() - started < TIMEOUT - 1
        assert server.closed
    finally:
        sock.close()


def test_serve_forever_blocks_until_activity_and_stops_from_another_thread(server):
    """The default waits without a timeout; call_soon_threadsafe(close) still ends it."""
    answers = []

    def drive() -> None:
        with socket.create_connection(server.addresses[0], timeout=TIMEOUT) as sock:
            sock.sendall(b"ping\n")
            answers.append(sock.recv(100))
        time.sleep(0.3)  # serve_forever is now blocked in its wait, with nothing to do
        server.call_soon_threadsafe(server.close)

    driver = threading.Thread(target=drive)
    driver.start()
    busy_before = server.stats.busy_polls
    started = time.monotonic()
    try:
        server.serve_forever()
    finally:
        driver.join(TIMEOUT)
    assert answers == [b"pong\n"]
    assert server.closed
    assert time.monotonic() - started < TIMEOUT - 1
    # Blocking waits: a handful of busy polls (accept, read, EOF, the close), not one per tick.
    assert server.stats.busy_polls - busy_before < 10


def test_handler_closing_the_server_with_more_events_in_the_same_poll(server):
    """A handler closes the server in a poll with two connections ready: the rest of the poll
    still reads the other one, whose request then does not run, and it is told."""
    armed = []

    @server.command(name="shutdown")
    def shutdown() -> str:
        if not armed:
            armed.append(True)
            return "armed"
        server.close()
        return "bye"

    clients = [RawClient(server), RawClient(server)]
    # Run once, the line is cached: the cache must not change when a request runs.
    assert clients[0].request("shutdown") == ["armed"] and clients[1].request("ping") == ["pong"]
    for client in clients:
        client.send("shutdown\n")
    time.sleep(0.1)  # both reads ready: one poll sees both events
    assert server.poll(0) >= 1
    assert server.closed
    received = []
    for client in clients:
        client.sock.settimeout(TIMEOUT)
        try:
            received.append(client.read_until_closed())
        except ConnectionResetError:  # closed with its request unread
            received.append(b"")
    # The handler that closed the server has its reply sent; the other request gets the notice.
    assert sorted(received) == [b"ERR server shutting down\n", b"bye\n"]


# ---- reactor_mgmt.start ----


def test_start_with_on_command_and_on_error():
    calls = []
    errors = []

    def on_command(cmd, args, conn):
        calls.append((cmd, args))
        if cmd == "fail":
            raise ValueError("bad deploy")
        if cmd == "value":
            return {"answer": 42}
        conn.write(f"{cmd}: {' '.join(args)}")

    server = reactor_mgmt.start({"mgmt_host": "127.0.0.1", "mgmt_port": 0}, on_command, errors.append)
    try:
        assert server.addresses[0][0] == "127.0.0.1" and server.port > 0
        client = RawClient(server)
        assert client.request("deploy web 'blue green'") == ["deploy: web blue green"]
        assert client.request("value") == ["answer: 42"]
        assert client.request("fail") == ["ERR internal error (ValueError)"]
        assert client.request("ping") == ["pong"]  # built-ins still answer first
        assert calls == [("deploy", ["web", "blue green"]), ("value", []), ("fail", [])]
        assert len(errors) == 1 and isinstance(errors[0], ValueError)
        client.close()
    finally:
        server.close()


def test_start_commands_can_be_watched():
    # Every command of a start() host goes through its on_command: `watch` reaches it too (it
    # answered "unknown command" for commands that otherwise work).
    counts = {"n": 0}

    def on_command(cmd, args, conn):
        counts["n"] += 1
        return f"{cmd} {counts['n']}"

    server = reactor_mgmt.start({"mgmt_port": 0}, on_command)
    try:
        client = RawClient(server)
        client.send("watch 0.1 status\n")
        assert client.lines(2) == ["status 1", "status 2"]
        client.send("\n")
        assert client.request("ping") == ["pong"]
        client.close()
    finally:
        server.close()


def test_start_defaults_without_on_error():
    server = reactor_mgmt.start({"mgmt_port": 0}, lambda cmd, args, conn: "ok " + cmd)
    try:
        assert server.addresses[0][0] == "127.0.0.1"
        client = RawClient(server)
        assert client.request("anything") == ["ok anything"]
        client.close()
    finally:
        server.close()


def test_unregistering_a_socket_closed_first_forgets_its_descriptor(server):
    """A socket closed before it is unregistered has no descriptor to name (fileno() is -1):
    the loop still forgets the one it had, so a new socket given that number can register."""
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    conn = server_conn(server)
    transport = conn.transport
    fd = transport.sock.fileno()
    transport.sock.close()
    server._loop.unregister(transport.sock)
    assert fd not in server._loop.owners
    transport.mask = 0
    transport.close_now()
    assert fd not in server._loop.connections and server.connections == []  # forgotten too
    client.close()
