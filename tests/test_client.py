# The Python Client and the pieces the CLI shares with it (addresses, reply framing, FanOut),
# against real servers that a ServerThread polls while the blocking client waits.
from __future__ import annotations

import os
import socket
import time
from typing import Iterator, List

import pytest

import reactor_mgmt
from conftest import TIMEOUT, ServerThread, free_port
from reactor_mgmt import Connection, Pending, RemoteError
from reactor_mgmt._client import (
    ERROR,
    OK,
    UNREACHABLE,
    ClientTimeout,
    ConnectionFailed,
    Endpoint,
    FanOut,
    LineReader,
    ReplyTooLong,
    parse_message,
)
from reactor_mgmt._errors import CommandError, ReactorMgmtError


def _add_commands(srv: reactor_mgmt.Server) -> None:
    @srv.command
    def kick(name: str, *, force: bool = False, reason: str = "none") -> dict:
        "Kicks someone."
        return {"name": name, "force": force, "reason": reason}

    @srv.command
    def add(a: int, b: int) -> int:
        return a + b

    @srv.command
    def count(n: int = 3):
        return (f"line {i}" for i in range(1, n + 1))

    @srv.command
    def slow(n: int, gap: float):
        """n items, gap seconds apart (the first at once), like a quiet `log tail` or `watch`."""
        for i in range(1, n + 1):
            if i > 1:
                due = time.monotonic() + gap
                while time.monotonic() < due:
                    yield reactor_mgmt.Wait(due)
            yield f"item {i}"

    @srv.command
    def fail():
        raise CommandError("it failed")

    @srv.command
    def crash():
        raise RuntimeError("boom")

    @srv.command(level="admin")
    def secret():
        return "hidden"

    @srv.command
    def never():
        return Pending(timeout=0)

    @srv.command
    def chatty(conn: Connection):
        conn.write("first")
        conn.write("second")
        return reactor_mgmt.NO_REPLY


@pytest.fixture
def served() -> Iterator[reactor_mgmt.Server]:
    srv = reactor_mgmt.Server("127.0.0.1", 0)
    _add_commands(srv)
    with ServerThread(srv):
        yield srv


def test_call_returns_json_results(served):
    with reactor_mgmt.Client(("127.0.0.1", served.port)) as client:
        assert client.call("ping") == "pong"
        assert client.call("add", 2, 3) == 5
        assert client.call("kick", "bob", force=True) == {"name": "bob", "force": True, "reason": "none"}
        assert client.call("kick", name="amy", reason="spam")["reason"] == "spam"
        assert isinstance(client.call("stats"), dict)
        assert client.connected
        assert "connected" in repr(client)


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (("nosuch",), "unknown_command", "unknown command 'nosuch'"),
        (("add", "x", 1), "usage", "usage: add A B"),
        (("fail",), "error", "it failed"),
        (("crash",), "internal", "RuntimeError"),
        (("secret",), "denied", "needs admin"),
    ],
)
def test_error_replies_raise_remote_error_with_the_code(served, args, code, fragment):
    with reactor_mgmt.Client(f"127.0.0.1:{served.port}") as client:
        with pytest.raises(RemoteError) as info:
            client.call(*args)
        assert info.value.code == code
        assert fragment in info.value.message
        assert client.call("ping") == "pong"  # an error reply leaves the connection usable


def test_stream_yields_items_as_they_arrive(served):
    with reactor_mgmt.Client(f"127.0.0.1:{served.port}") as client:
        assert list(client.stream("count", 4)) == ["line 1", "line 2", "line 3", "line 4"]
        assert client.call("count", 2) == ["line 1", "line 2"]  # call() collects a stream
        assert list(client.stream("ping")) == ["pong"]  # a plain command streams its result


def test_leaving_a_stream_early_drops_the_connection_and_the_next_call_reconnects(served):
    with reactor_mgmt.Client(f"127.0.0.1:{served.port}") as client:
        stream = client.stream("count", 10_000_000)
        assert next(stream) == "line 1"
        with pytest.raises(ReactorMgmtError, match="one request at a time"):
            client.call("ping")
        stream.close()
        assert not client.connected
        assert client.call("ping") == "pong"
        assert client.connected


def test_text_written_by_a_handler_is_returned(served):
    with reactor_mgmt.Client(f"127.0.0.1:{served.port}") as client:
        assert client.call("chatty") == "first\nsecond"
        assert list(client.stream("chatty")) == ["first", "second"]


def test_timeout_raises_a_clear_exception_and_the_client_recovers(served):
    with reactor_mgmt.Client(f"127.0.0.1:{served.port}", timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(ClientTimeout, match=r"no reply from 127\.0\.0\.1:\d+ within 0\.3 s"):
            client.call("never")
        assert time.monotonic() - started < 5
        assert not client.connected
        assert client.call("ping") == "pong"
    with pytest.raises(TimeoutError):  # catchable as the builtin too
        with reactor_mgmt.Client(f"127.0.0.1:{served.port}", timeout=0.2) as client:
            client.call("never")


def test_a_stream_slower_than_the_timeout_is_not_a_timeout(served):
    # `timeout` covers the wait for the reply to begin; a stream's items come at the server's
    # pace (a quiet `log tail`, a `watch 60`), and stream_timeout (none by default) covers those.
    with reactor_mgmt.Client(f"127.0.0.1:{served.port}", timeout=0.3) as client:
        assert list(client.stream("slow", 3, 0.6)) == ["item 1", "item 2", "item 3"]
        assert client.call("slow", 2, 0.5) == ["item 1", "item 2"]
        with pytest.raises(ClientTimeout, match="within 0.3 s"):
            client.call("never")  # the reply itself still has to begin within the timeout
    with reactor_mgmt.Client(f"127.0.0.1:{served.port}", timeout=5, stream_timeout=0.3) as client:
        stream = client.stream("slow", 3, 2.0)
        assert next(stream) == "item 1"
        started = time.monotonic()
        with pytest.raises(ClientTimeout, match="within 0.3 s"):
            next(stream)
        assert time.monotonic() - started < 1.5
        assert not client.connected and client.call("ping") == "pong"


def test_fan_out_waits_for_a_stream_as_long_as_it_runs(served):
    address = f"127.0.0.1:{served.port}"
    outcomes, events = _run([address], {"argv": ["slow", "3", "0.5"]}, timeout=0.3)
    assert outcomes == [OK]
    assert events == [
        (address, "item", "item 1"),
        (address, "item", "item 2"),
        (address, "item", "item 3"),
        (address, "end", 3),
    ]
    outcomes, events = _run([address], {"argv": ["slow", "3", "2"]}, timeout=5, stream_timeout=0.3)
    assert outcomes == [UNREACHABLE]
    assert events == [(address, "item", "item 1"), (address, "failed", "timed out: no stream item within 0.3 s")]


def test_context_manager_closes_the_client(served):
    with reactor_mgmt.Client(f"127.0.0.1:{served.port}") as client:
        assert client.call("ping") == "pong"
    assert not client.connected
    assert "closed" in repr(client)
    with pytest.raises(ConnectionFailed, match="closed"):
        client.call("ping")


def test_cannot_connect_is_a_connection_error():
    port = free_port()
    with pytest.raises(ConnectionFailed, match=rf"cannot connect to 127\.0\.0\.1:{port}: Connection refused"):
        reactor_mgmt.Client(f"127.0.0.1:{port}")
    with pytest.raises(ConnectionError):
        reactor_mgmt.Client(("127.0.0.1", port))
    with pytest.raises(ConnectionFailed, match="cannot connect to no.such.host.invalid:1"):
        reactor_mgmt.Client("no.such.host.invalid:1")


def test_the_requests_of_a_reconnect_do_not_reconnect_again(monkeypatch):
    # The check for a connection closed while idle runs before a request; connect()'s own
    # requests (auth, level) ran it too, so a peer that closed every new connection at once
    # made each of them reconnect, without end (a RecursionError). Here every check says
    # "closed", the strongest form of such a peer.
    srv = reactor_mgmt.Server("127.0.0.1", 0, token="s3cret")
    with ServerThread(srv):
        with reactor_mgmt.Client(f"127.0.0.1:{srv.port}", token="s3cret") as client:
            assert client.call("level", "user") == "user"
            checks = []
            monkeypatch.setattr(reactor_mgmt.Client, "_still_open", lambda self: checks.append(1) and False)
            assert client.call("ping") == "pong"  # reconnected, authenticated, level lowered
            assert client.call("level") == "user"
            assert len(checks) == 2  # one per call of the host's, none for connect()'s own


def test_token_authenticates_every_connection():
    srv = reactor_mgmt.Server("127.0.0.1", 0, token="s3cret")
    _add_commands(srv)
    with ServerThread(srv):
        address = f"127.0.0.1:{srv.port}"
        with reactor_mgmt.Client(address, token="s3cret") as client:
            assert client.call("add", 1, 1) == 2
            assert len(list(client.stream("count", 100))) == 100
            stream = client.stream("count", 1_000_000)
            next(stream)
            stream.close()  # drops the connection; the next call re-authenticates
            assert client.call("add", 2, 2) == 4
        with pytest.raises(RemoteError) as info:
            reactor_mgmt.Client(address, token="wrong")
        assert info.value.code == "denied"
        with reactor_mgmt.Client(address) as client:
            assert client.call("ping") == "pong"  # pre-auth commands still work
            with pytest.raises(RemoteError, match="authentication required"):
                client.call("add", 1, 1)


def test_unix_socket_and_ipv6_addresses(tmp_path):
    path = str(tmp_path / "mgmt.sock")
    srv = reactor_mgmt.Server(None, None, unix=path)
    servers = [srv]
    try:
        v6 = reactor_mgmt.Server("::1", 0)
        servers.append(v6)
    except OSError:
        v6 = None
    with ServerThread(*servers):
        with reactor_mgmt.Client(path) as client:
            assert client.call("level") == "admin"  # Unix listeners default to admin
        if v6 is not None:
            with reactor_mgmt.Client(f"[::1]:{v6.port}") as client:
                assert client.address == f"[::1]:{v6.port}"
                assert client.call("ping") == "pong"


def test_a_refused_connection_reports_the_servers_reason():
    srv = reactor_mgmt.Server("127.0.0.1", 0, max_connections=1)
    with ServerThread(srv):
        with reactor_mgmt.Client(f"127.0.0.1:{srv.port}") as first:
            assert first.call("ping") == "pong"
            second = reactor_mgmt.Client(f"127.0.0.1:{srv.port}")
            with pytest.raises(ConnectionFailed, match="too many connections"):
                second.call("ping")
            second.close()


# ---- addresses and framing ----


@pytest.mark.parametrize(
    "text, label, host, port, path",
    [
        ("127.0.0.1:8123", "127.0.0.1:8123", "127.0.0.1", 8123, None),
        ("localhost:1", "localhost:1", "localhost", 1, None),
        ("[::1]:9000", "[::1]:9000", "::1", 9000, None),
        (("::1", 9000), "[::1]:9000", "::1", 9000, None),
        (("10.0.0.1", "80"), "10.0.0.1:80", "10.0.0.1", 80, None),
        ("/run/app/mgmt.sock", "/run/app/mgmt.sock", None, 0, "/run/app/mgmt.sock"),
        ("./a:1", "./a:1", None, 0, "./a:1"),
        ("mgmt.sock", "mgmt.sock", None, 0, "mgmt.sock"),
    ],
)
def test_endpoint_parsing(text, label, host, port, path):
    endpoint = Endpoint(text)
    assert (endpoint.label, endpoint.host, endpoint.port, endpoint.path) == (label, host, port, path)
    assert Endpoint(endpoint) == endpoint and hash(Endpoint(endpoint)) == hash(endpoint)
    assert label in repr(endpoint)


@pytest.mark.parametrize("bad", ["host:0", "host:70000", ("h", 0), ""])
def test_bad_endpoints_are_rejected(bad):
    with pytest.raises(ValueError):
        Endpoint(bad)


def test_line_reader_splits_and_caps():
    reader = LineReader(max_line=10)
    reader.feed(b"ab")
    assert reader.next_line() is None
    reader.feed(b"c\nd\xffe\n12")
    assert [reader.next_line(), reader.next_line(), reader.next_line()] == ["abc", "d\ufffde", None]
    with pytest.raises(ReplyTooLong):
        reader.feed(b"x" * 20)


def test_a_long_reply_line_is_read_in_linear_time():
    # A big reply (a table, a dump) is one line that arrives in many reads: bytes += bytes
    # copied all of it for each, and 32 MiB in 64 KiB reads took 2.9 s of CPU.
    reader = LineReader()
    chunk = b"x" * 65536
    start = time.process_time()
    for _ in range(512):
        reader.feed(chunk)
    reader.feed(b"\ntail")
    assert time.process_time() - start < 0.8
    assert reader.next_line() == "x" * (512 * 65536) and reader.next_line() is None
    reader.feed(b"\n")
    assert reader.next_line() == "tail"


def test_parse_message_tells_replies_from_text():
    assert parse_message('{"id": 1, "ok": true, "result": 3}') == {"id": 1, "ok": True, "result": 3}
    assert parse_message('{"id": 1, "item": "x"}') == {"id": 1, "item": "x"}
    for text in ('{"ok": true}', '{"id": 1}', "{not json", "[1]", "plain text", '{"id": 1, "ok"'):
        assert parse_message(text) is None


# ---- the fan-out engine, in process ----


def _run(endpoints, request, **options) -> tuple[List[str], list]:
    events: list = []
    outcomes = FanOut(
        endpoints, request, on_event=lambda e, kind, value: events.append((e.label, kind, value)), **options
    ).run()
    return outcomes, events


def test_fan_out_reports_each_endpoint(tmp_path):
    good = reactor_mgmt.Server("127.0.0.1", 0)
    erring = reactor_mgmt.Server("127.0.0.1", 0)
    _add_commands(good)

    @erring.command
    def count(n: int = 3):
        raise CommandError("no counting here")

    dead = f"127.0.0.1:{free_port()}"
    missing = str(tmp_path / "nobody.sock")
    with ServerThread(good, erring):
        endpoints = [f"127.0.0.1:{good.port}", f"127.0.0.1:{erring.port}", dead, missing]
        outcomes, events = _run(endpoints, {"argv": ["count", "2"]}, timeout=5)
    assert outcomes == [OK, ERROR, UNREACHABLE, UNREACHABLE]
    mine = [(kind, value) for label, kind, value in events if label == endpoints[0]]
    assert mine == [("item", "line 1"), ("item", "line 2"), ("end", 2)]
    ((_, kind, error),) = [event for event in events if event[0] == endpoints[1]]
    assert kind == "error" and error.code == "error" and error.message == "no counting here"
    assert (dead, "failed", "cannot connect: Connection refused") in events
    assert (missing, "failed", "cannot connect: No such file or directory") in events
    too_long = "/tmp/" + "x" * 200
    assert _run([too_long], {"argv": ["ping"]})[1] == [(too_long, "failed", "cannot connect: AF_UNIX path too long")]
    with pytest.raises(ConnectionFailed, match="AF_UNIX path too long"):
        reactor_mgmt.Client(too_long)


def test_fan_out_waits_its_turn_when_parallelism_is_capped():
    servers = [reactor_mgmt.Server("127.0.0.1", 0) for _ in range(5)]
    with ServerThread(*servers):
        batches: List[int] = []
        endpoints = [f"127.0.0.1:{srv.port}" for srv in servers]
        outcomes, events = _run(endpoints, {"argv": ["ping"]}, max_parallel=2, after_batch=lambda: batches.append(1))
    assert outcomes == [OK] * 5
    assert sorted(label for label, kind, value in events if value == "pong") == sorted(endpoints)
    assert batches


def test_fan_out_timeout_and_auth():
    slow = reactor_mgmt.Server("127.0.0.1", 0, token="t")
    _add_commands(slow)
    with ServerThread(slow):
        address = f"127.0.0.1:{slow.port}"
        outcomes, events = _run([address], {"argv": ["never"]}, token="t", timeout=0.3)
        assert outcomes == [UNREACHABLE]
        assert events == [(address, "failed", "timed out: no reply within 0.3 s")]
        outcomes, events = _run([address], {"argv": ["add", "1", "2"]}, token="wrong")
        assert outcomes == [ERROR] and events[0][2].code == "denied"
        outcomes, events = _run([address], {"argv": ["add", "1", "2"]}, token="t")
        assert outcomes == [OK] and events == [(address, "result", 3)]


def test_fan_out_resolve_failure():
    outcomes, events = _run(["no.such.host.invalid:1"], {"argv": ["ping"]})
    assert outcomes == [UNREACHABLE]
    assert events[0][2].startswith("cannot connect: ")


def test_fan_out_passes_handler_text_through(served):
    address = f"127.0.0.1:{served.port}"
    outcomes, events = _run([address], {"argv": ["chatty"]})
    assert outcomes == [OK]
    assert events == [(address, "text", "first"), (address, "text", "second"), (address, "result", None)]


# ---- servers that misbehave at the socket level ----


@pytest.fixture
def stuck_address() -> Iterator[str]:
    """A listener whose backlog is full: new connections hang in the handshake."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=5)
    try:
        yield "127.0.0.1:%d" % listener.getsockname()[1]
    finally:
        filler.close()
        listener.close()


@pytest.fixture
def hangup_address() -> Iterator[str]:
    """A listener that accepts, reads a little and hangs up without a word."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)
    stopping = []

    def serve() -> None:
        while not stopping:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(5)
            try:
                conn.recv(100)
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1:%d" % listener.getsockname()[1]
    finally:
        stopping.append(True)
        thread.join(5)
        listener.close()


def test_connect_timeout(stuck_address):
    started = time.monotonic()
    with pytest.raises(ClientTimeout, match=f"cannot connect to {stuck_address}: no answer within 0.2 s"):
        reactor_mgmt.Client(stuck_address, timeout=0.2)
    outcomes, events = _run([stuck_address], {"argv": ["ping"]}, timeout=0.2)
    assert outcomes == [UNREACHABLE]
    assert events == [(stuck_address, "failed", "cannot connect: no answer within 0.2 s")]
    assert time.monotonic() - started < 5


def test_a_server_that_hangs_up(hangup_address):
    client = reactor_mgmt.Client(hangup_address)
    with pytest.raises(ConnectionFailed, match="closed the connection before replying"):
        client.call("ping")
    client.close()
    outcomes, events = _run([hangup_address], {"argv": ["ping"]})
    assert outcomes == [UNREACHABLE]
    assert events == [(hangup_address, "failed", "the server closed the connection before replying")]


def test_fan_out_reports_a_refusing_server():
    srv = reactor_mgmt.Server("127.0.0.1", 0, max_connections=0)
    with ServerThread(srv):
        address = f"127.0.0.1:{srv.port}"
        outcomes, events = _run([address], {"argv": ["ping"]})
    assert outcomes == [UNREACHABLE]
    assert events[-1] == (address, "failed", "the server closed the connection: too many connections")


def test_remote_error_tolerates_a_malformed_error():
    from reactor_mgmt._client import remote_error

    error = remote_error({"id": 1, "ok": False, "error": "oops"})
    assert (error.code, error.message) == ("error", "")
    error = remote_error({"id": 1, "ok": False, "error": {"code": "usage", "message": "m"}})
    assert (error.code, error.message, str(error)) == ("usage", "m", "usage: m")


def test_every_address_of_a_name_is_tried_in_turn(served, monkeypatch):
    # What `localhost` resolving to ::1 and then 127.0.0.1 looks like, with ::1 refusing.
    dead = ("127.0.0.1", free_port())
    live = ("127.0.0.1", served.port)
    monkeypatch.setattr(Endpoint, "resolve", lambda self: [(socket.AF_INET, dead), (socket.AF_INET, live)])
    with reactor_mgmt.Client("somehost:1") as client:
        assert client.call("ping") == "pong"
    assert _run(["somehost:1"], {"argv": ["ping"]}) == ([OK], [("somehost:1", "result", "pong")])
    monkeypatch.setattr(Endpoint, "resolve", lambda self: [(socket.AF_INET, dead)] * 2)
    assert _run(["somehost:1"], {"argv": ["ping"]}) == (
        [UNREACHABLE],
        [("somehost:1", "failed", "cannot connect: Connection refused")],
    )


# ---- the server's {"argv": [...]} request form, which the CLI sends ----


def test_argv_requests_bind_like_a_text_line(server, client):
    import json

    _add_commands(server)
    replies = client.request('{"argv": ["kick", "big bob", "--force", "--reason=spam"], "id": 7}')
    assert json.loads(replies[0]) == {
        "id": 7,
        "ok": True,
        "result": {"name": "big bob", "force": True, "reason": "spam"},
    }
    reply = json.loads(client.request('{"argv": ["kick", "x", "--frob"], "id": 8}')[0])
    assert reply["error"]["code"] == "usage" and "unknown option --frob" in reply["error"]["message"]
    for bad in ("[]", '"kick"', "[1]"):
        reply = json.loads(client.request('{"argv": %s, "id": 9}' % bad)[0])
        assert reply == {
            "id": 9,
            "ok": False,
            "error": {"code": "bad_request", "message": "'argv' must be a non-empty list of strings"},
        }
    client.send('{"argv": ["count", "2"], "id": 10}\n')
    assert [json.loads(line) for line in client.lines(4)] == [
        {"id": 10, "stream": True},
        {"id": 10, "item": "line 1"},
        {"id": 10, "item": "line 2"},
        {"id": 10, "ok": True, "result": None, "items": 2},
    ]


def test_a_reconnect_keeps_the_level_the_session_lowered_to():
    # Leaving a stream early drops the connection; the next call reconnects. A new connection
    # starts at its listener's level, so the client lowers it again rather than undo `level user`.
    srv = reactor_mgmt.Server("127.0.0.1", 0)
    _add_commands(srv)
    srv.add_command("restart", lambda: "restarted", level="operator")
    with ServerThread(srv), reactor_mgmt.Client(("127.0.0.1", srv.port)) as client:
        assert client.call("restart") == "restarted"
        assert client.call("level", "user") == "user"
        for _ in client.stream("count", 1000):
            break
        assert not client.connected
        with pytest.raises(RemoteError, match="needs operator"):
            client.call("restart")
        assert client.call("level") == "user"


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), 1e300])
def test_timeouts_that_mean_no_timeout(served, timeout):
    # inf and 1e300 overflowed select() and settimeout(); NaN never timed out and spun.
    with reactor_mgmt.Client(("127.0.0.1", served.port), timeout=timeout) as client:
        assert client.timeout is None
        assert client.call("ping") == "pong"


def test_a_refusal_before_the_request_went_still_reports_the_servers_reason(tmp_path):
    # A Unix-socket server that refuses a connection (here: max_connections) says why and
    # closes, perhaps before the client sends; the send then fails with EPIPE, and the client
    # used to report "Broken pipe" with the reason sitting unread in its buffer.
    import tempfile

    directory = tempfile.mkdtemp(prefix="rmc-", dir="/tmp")
    path = os.path.join(directory, "s")
    server = reactor_mgmt.Server(None, None, unix=path, max_connections=1)
    try:
        holder = reactor_mgmt.Client(path, timeout=TIMEOUT)
        server.poll(0.05)
        refused = reactor_mgmt.Client(path, timeout=TIMEOUT)  # connected; nothing sent yet
        for _ in range(5):
            server.poll(0.02)  # accepts it, says why, closes
        with pytest.raises(ConnectionFailed, match="closed the connection: too many connections"):
            refused.call("ping")
        refused.close()
        holder.close()
    finally:
        server.close()
        os.rmdir(directory)


@pytest.mark.parametrize(
    "lower",
    [
        lambda client: client.call("level user"),  # cmd split into words by the server
        lambda client: client.call("level", new_level="user"),  # the builtin's parameter, by name
        lambda client: client._result({"argv": ["level", "user"]}),  # the shell's form
    ],
    ids=["cmd-words", "kwargs", "argv"],
)
def test_a_reconnect_keeps_the_level_however_the_request_lowered_it(lower):
    srv = reactor_mgmt.Server("127.0.0.1", 0)
    _add_commands(srv)
    srv.add_command("restart", lambda: "restarted", level="operator")
    with ServerThread(srv), reactor_mgmt.Client(("127.0.0.1", srv.port)) as client:
        assert lower(client) == "user"
        for _ in client.stream("count", 1000):
            break
        assert not client.connected
        assert client.call("level") == "user"
        with pytest.raises(RemoteError, match="needs operator"):
            client.call("restart")


@pytest.mark.parametrize(
    "authenticate",
    [
        lambda client: client._result({"argv": ["auth", "s3cret"]}),  # what the shell sends
        lambda client: client.call("auth", "s3cret"),
        lambda client: client.call("auth s3cret"),
    ],
    ids=["argv", "args", "cmd-words"],
)
def test_a_token_proved_with_auth_outlives_a_reconnect(authenticate):
    # The shell's `auth TOKEN` at the prompt, then Ctrl-C on a stream: the reconnect used to
    # come back unauthenticated ("authentication required" for every command after).
    srv = reactor_mgmt.Server("127.0.0.1", 0, token="s3cret")
    _add_commands(srv)
    with ServerThread(srv), reactor_mgmt.Client(("127.0.0.1", srv.port)) as client:
        with pytest.raises(RemoteError, match="authentication required"):
            client.call("add", 1, 2)
        assert authenticate(client) == "OK"
        for _ in client.stream("count", 1000):
            break
        assert not client.connected
        assert client.call("add", 1, 2) == 3
        assert "s3cret" not in repr(client)
        with pytest.raises(RemoteError, match="authentication failed"):
            client.call("auth", "wrong")  # refused: the token proved before stays
        assert client.call("add", 2, 2) == 4
        assert client.call("auth challenge") != "OK"  # a challenge, not a token
        assert client.token == "s3cret"


def test_bytes_that_are_not_utf8_reach_the_server_instead_of_raising(served):
    # A word from argv or stdin decoded with surrogateescape holds lone surrogates; encoding
    # the request raised UnicodeEncodeError. The bytes go as they were, the server says why not.
    with reactor_mgmt.Client(("127.0.0.1", served.port)) as client:
        with pytest.raises(RemoteError, match="not valid UTF-8"):
            client.call("add", "\udcff", "1")
        with pytest.raises(RemoteError, match="not valid UTF-8"):
            client.call("add", "\ud800", "1")  # not from surrogateescape: still sent, still refused
        assert client.call("add", 1, 2) == 3


def _wait_until_closed_by_server(srv: reactor_mgmt.Server) -> None:
    deadline = time.monotonic() + TIMEOUT
    while srv.connections:
        assert time.monotonic() < deadline, "the server did not close the idle connection"
        time.sleep(0.02)


def test_a_connection_the_server_closed_while_idle_is_reopened_by_the_next_call():
    # The idle reaper closes a quiet connection; the next call used to fail with "closed the
    # connection before replying", and only the call after it reconnected.
    srv = reactor_mgmt.Server("127.0.0.1", 0, idle_timeout=0.2)
    _add_commands(srv)
    with ServerThread(srv), reactor_mgmt.Client(("127.0.0.1", srv.port)) as client:
        assert client.call("ping") == "pong"
        _wait_until_closed_by_server(srv)
        assert client.call("add", 1, 2) == 3
        assert srv.stats.connections_total == 2


def test_an_idle_tls_connection_closed_by_the_server_is_reopened(tmp_path):
    # Over TLS too; and a fresh TLS connection, readable with the session tickets a TLS 1.3
    # server sends after the handshake, is not taken for a closed one.
    from tls_helpers import make_cert, server_context

    cert, key = make_cert(tmp_path, "server")
    srv = reactor_mgmt.Server("127.0.0.1", 0, tls=server_context(cert, key), idle_timeout=0.3)
    _add_commands(srv)
    with ServerThread(srv), reactor_mgmt.Client(("127.0.0.1", srv.port), cafile=cert) as client:
        time.sleep(0.1)  # the tickets are in
        assert client.call("ping") == "pong"
        assert srv.stats.connections_total == 1
        _wait_until_closed_by_server(srv)
        assert client.call("add", 1, 2) == 3
        assert srv.stats.connections_total == 2


def test_text_sent_between_requests_is_kept_not_taken_for_a_closed_connection(served):
    # Bytes that arrive while no request is in flight (a handler's late conn.write) are read
    # by the liveness check; they come out as text before the next reply, as before the check.
    @served.command
    def later(conn: Connection) -> str:
        served.call_later(0.05, conn.write, "late news")
        return "soon"

    with reactor_mgmt.Client(("127.0.0.1", served.port)) as client:
        assert client.call("later") == "soon"
        time.sleep(0.3)
        assert list(client.exchange({"cmd": "add", "args": [1, 2]})) == [("text", "late news"), ("result", 3)]
        assert served.stats.connections_total == 1


def test_fan_out_names_the_endpoint_of_a_cleartext_refusal_once():
    # The refusal's message carried the label, and the CLI prefixes every message with it too:
    # `127.0.0.1:41043: 127.0.0.1:41043: the server offers no challenge-response...`
    srv = reactor_mgmt.Server("127.0.0.1", 0, token="t")
    srv.remove_command("auth challenge")
    srv.remove_command("auth response")
    _add_commands(srv)
    with ServerThread(srv):
        address = f"127.0.0.1:{srv.port}"
        outcomes, events = _run([address], {"argv": ["add", "1", "2"]}, token="t", timeout=5)
    assert outcomes == [UNREACHABLE]
    ((label, kind, message),) = events
    assert (label, kind) == (address, "failed")
    assert message.startswith("the server offers no challenge-response") and address not in message


def test_a_cleartext_refusal_to_a_unix_socket_discovery_could_not_verify_says_so():
    # Refused for a Unix socket that `--app` could not vouch for, the token was "not sent in
    # clear text over plain TCP: use TLS or a Unix socket": it was a Unix socket.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rm-", dir="/tmp") as folder:  # AF_UNIX: ~107 bytes at most
        path = os.path.join(folder, "s")
        srv = reactor_mgmt.Server(unix=path, token="t")
        srv.remove_command("auth challenge")
        srv.remove_command("auth response")
        _add_commands(srv)
        endpoint = Endpoint(path)
        endpoint.vouched = False  # as --app marks an instance it could not verify
        with ServerThread(srv):
            outcomes, events = _run([endpoint], {"argv": ["add", "1", "2"]}, token="t", timeout=5)
            with pytest.raises(ConnectionFailed) as raised:
                reactor_mgmt.Client(endpoint, token="t", timeout=5)
    assert outcomes == [UNREACHABLE]
    ((_, kind, message),) = events
    assert kind == "failed" and message == str(raised.value)
    assert "plain TCP" not in message and "use TLS or a Unix socket" not in message
    assert "not sent in clear text to this Unix socket" in message
    assert "discovery could not verify" in message and "-c PATH" in message


class _FakeServer:
    """A listening socket on 127.0.0.1 whose every connection ``serve(sock)`` answers, on a
    thread of its own; for replies no real server sends. Every socket has a timeout."""

    def __init__(self, serve) -> None:
        import threading

        self.serve = serve
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads: List = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        import threading

        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                continue
            sock.settimeout(TIMEOUT)
            thread = threading.Thread(target=self._one, args=(sock,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _one(self, sock: socket.socket) -> None:
        try:
            self.serve(sock, self.stopping)
        except OSError:
            pass
        finally:
            sock.close()

    def __enter__(self) -> _FakeServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopping.set()
        self.thread.join(TIMEOUT)
        for thread in self.threads:
            thread.join(TIMEOUT)
        self.listener.close()


def _read_request_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_fan_out_timeout_bounds_a_reply_line_that_trickles_in():
    # The deadline was re-armed by every recv, so a server sending a byte every 0.1 s held a
    # fan-out with timeout=0.5 until its line was done (here 4 s); Client(timeout=) raises.
    line = b'{"id": 2, "ok": true, "result": "' + b"z" * 10 + b'"}\n'

    def trickle(sock: socket.socket, stopping) -> None:
        _read_request_line(sock)
        for byte in line:
            if stopping.is_set():
                return
            sock.sendall(bytes([byte]))
            time.sleep(0.1)

    with _FakeServer(trickle) as fake:
        began = time.monotonic()
        outcomes, events = _run([fake.address], {"argv": ["who"]}, timeout=0.5)
        took = time.monotonic() - began
    assert outcomes == [UNREACHABLE] and events == [(fake.address, "failed", "timed out: no reply within 0.5 s")]
    assert took < 2.0, took


@pytest.mark.parametrize("token", [None, "t"])
def test_fan_out_takes_a_handlers_json_line_with_an_auth_id_for_text(token):
    # Ids 1 and 3 are FanOut's `auth challenge` and proof. A handler's own output that looked
    # like a reply with one of them crashed the run (an AssertionError with no token) or was
    # swallowed: they answer only the auth step in flight.
    srv = reactor_mgmt.Server("127.0.0.1", 0, token=token)
    relayed = ['{"id": 3, "ok": true, "result": "job 3 done"}', '{"id": 1, "ok": true, "result": "job 1 done"}']

    @srv.command
    def relay(conn: Connection) -> str:
        conn.write("\n".join(relayed) + "\n")
        return "relayed"

    with ServerThread(srv):
        address = f"127.0.0.1:{srv.port}"
        outcomes, events = _run([address], {"argv": ["relay"]}, token=token, timeout=5)
    assert outcomes == [OK]
    assert events == [(address, "text", relayed[0]), (address, "text", relayed[1]), (address, "result", "relayed")]


def test_fan_out_keeps_an_outcome_for_each_of_two_endpoints_with_one_label():
    # Outcomes were keyed by Endpoint, which compares by label: the ERR of one was overwritten
    # by the other's OK, and the run said 2 ok.
    good = reactor_mgmt.Server("127.0.0.1", 0)
    erring = reactor_mgmt.Server("127.0.0.1", 0)
    good.add_command("who", lambda: "good")

    @erring.command
    def who() -> str:
        raise CommandError("erring")

    endpoints = [Endpoint(f"127.0.0.1:{good.port}"), Endpoint(f"127.0.0.1:{erring.port}")]
    for endpoint in endpoints:
        endpoint.label = "twin[1]"
    with ServerThread(good, erring):
        for order in (endpoints, endpoints[::-1]):
            outcomes, events = _run(order, {"argv": ["who"]}, timeout=5)
            assert outcomes == ([OK, ERROR] if order is endpoints else [ERROR, OK]), events


@pytest.mark.parametrize("token", [None, "t"])
def test_fan_out_lowers_each_connection_to_its_level_before_the_command(token):
    srv = reactor_mgmt.Server("127.0.0.1", 0, token=token)
    ran: List[str] = []

    @srv.command(level="user")
    def mark() -> str:
        ran.append("mark")
        return "marked"

    with ServerThread(srv):
        address = f"127.0.0.1:{srv.port}"
        assert _run([address], {"argv": ["level"]}, token=token, level="user") == ([OK], [(address, "result", "user")])
        # A level the server refuses is the endpoint's error, and the command never went.
        outcomes, events = _run([address], {"argv": ["mark"]}, token=token, level="bogus")
    assert outcomes == [ERROR] and events[0][2].code == "usage" and ran == []
