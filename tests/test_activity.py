# The activity tools (issue 18, items 5-7): slow commands and a stalled loop, the audit log, and
# who is connected. Everything goes through real sockets on 127.0.0.1 (RawClient, driven by this
# thread's own poll() calls), and each feature once more through OpenBSD nc -N against a server
# polled by a background thread. The audit tests grep every place a record can surface (the log,
# the ring, `clients`, `show slow`) for the token and the host's secret parameters.
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time

import pytest

import reactor_mgmt
from conftest import TIMEOUT, RawClient, ServerThread, require_tool
from reactor_mgmt import Pending, Wait
from reactor_mgmt._activity import MASK, SLOW_KEPT


def with_activity(server: reactor_mgmt.Server, **options) -> reactor_mgmt.Server:
    """The one place the tests install the tools: the public add_toolkit(), activity parts only."""
    parts = options.pop("parts", ("slow", "clients", "gap")) or (("audit",) if options.get("audit") else ("stall",))
    server.add_toolkit(*parts, **options)
    return server


def call(client: RawClient, cmd: str, *args, **kwargs) -> dict:
    """One JSON request; its reply, decoded."""
    client.send(json.dumps({"id": 1, "cmd": cmd, "args": list(args), "kwargs": kwargs}) + "\n")
    return json.loads(client.lines(1)[0])


def result(client: RawClient, cmd: str, *args, **kwargs):
    reply = call(client, cmd, *args, **kwargs)
    assert reply["ok"], reply
    return reply["result"]


def text(client: RawClient, line: str, settle: float = 0.05) -> str:
    """A text request whose reply has an unknown number of lines: what arrived once it settled."""
    client.buffer = b""
    client.send(line + "\n")
    client.wait_for(lambda buf: buf.endswith(b"\n"))
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        client.pump()
    out, client.buffer = client.buffer.decode(), b""
    return out


def closed_after(client: RawClient) -> bytes:
    """Everything the client receives until the server closes the connection."""
    return client.read_until_closed()


# ---- nothing installed: nothing changes ----


def test_without_the_tools_the_request_path_is_untouched(make_server):
    server = make_server()
    assert server._dispatcher.observer is None  # so execute() reads no clock per request
    assert server._loop.watch is None
    client = RawClient(server)
    assert "poll_gap_max_ms" not in result(client, "stats")
    assert client.request("clients") == ["ERR unknown command 'clients' (try 'help')"]
    client.close()


def test_bad_configuration_is_refused(make_server):
    server = make_server()
    with pytest.raises(reactor_mgmt.ConfigError, match="unknown toolkit part"):
        with_activity(server, parts=("slow", "nope"))
    with pytest.raises(reactor_mgmt.ConfigError, match="unknown level"):
        with_activity(server, audit=True, audit_level="root")
    with pytest.raises(reactor_mgmt.ConfigError, match="slow_ms"):
        with_activity(server, slow_ms=-1)
    with pytest.raises(reactor_mgmt.ConfigError, match="stall_after"):
        with_activity(server, stall_after=0)
    with pytest.raises(reactor_mgmt.ConfigError, match="stall_file needs stall_after"):
        with_activity(server, stall_file="/nonexistent/never-opened")  # ignored, it watched nothing
    with_activity(server)
    with_activity(server)  # installing again does nothing, as for every toolkit part
    assert "clients" in server.registry.commands


def test_an_observer_and_a_watch_already_there_still_run(make_server):
    server = make_server()
    seen, polls = [], []

    class Watch:
        def entered(self):
            polls.append("entered")

        def handling(self):
            polls.append("handling")

        def exited(self):
            polls.append("exited")

    server._dispatcher.observer = lambda conn, request, outcome, seconds: seen.append(
        (request and request[0].name, outcome)
    )
    server._loop.watch = Watch()
    with_activity(server)
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    client.send(b"\xff\n")  # not UTF-8: a request with no command
    client.lines(1)
    assert seen == [("ping", "ok"), (None, "error")]
    assert {"entered", "handling", "exited"} <= set(polls)
    client.close()


def test_a_reply_replaced_by_the_too_large_error_is_observed_as_an_error(make_server):
    # The client got an error line, not its reply: the audit log and the slow log must say so.
    server = make_server(high_water=64, max_output=64)
    seen = []

    @server.command
    def big(size: int) -> str:
        return "x" * size

    server._dispatcher.observer = lambda conn, request, outcome, seconds: seen.append((request[0].name, outcome))
    with_activity(server)
    client = RawClient(server)
    assert client.request("big 10") == ["x" * 10]
    (line,) = client.request("big 100")
    assert line.startswith("ERR reply too large")
    assert seen == [("big", "ok"), ("big", "error")]
    client.close()


def test_a_pending_that_failed_before_it_was_returned_is_observed_as_an_error(make_server):
    server = make_server()
    seen = []

    @server.command
    def refused() -> Pending:
        pending = Pending()
        pending.fail("no such job")
        return pending

    server._dispatcher.observer = lambda conn, request, outcome, seconds: seen.append((request[0].name, outcome))
    with_activity(server)
    client = RawClient(server)
    assert client.request("refused") == ["ERR no such job"]
    assert seen == [("refused", "error")]
    client.close()


def _pipelined_pings(server, count: int, budget) -> dict:
    """Pipelines ``count`` pings under poll(0, budget=...); counts the dispatcher's clock reads
    and the observer's calls."""
    dispatcher = server._dispatcher
    counts = {"clock": 0, "observer": 0}
    clock, observer = dispatcher.clock, dispatcher.observer

    def counting_clock():
        counts["clock"] += 1
        return clock()

    def counting_observer(*args):
        counts["observer"] += 1
        return observer(*args)

    dispatcher.clock = counting_clock
    if observer is not None:
        dispatcher.observer = counting_observer
    client = RawClient(server)
    client.send(b"ping\n" * count)
    got = b""
    deadline = time.monotonic() + TIMEOUT
    while got.count(b"\n") < count and time.monotonic() < deadline:
        # A positive timeout is a deadline for the poll's work, read before each request as a
        # budget is: without a budget, poll(0) is the one with no per-request bound at all.
        if not server.poll(0.01 if budget is not None else 0.0, budget=budget):
            time.sleep(0.0005)
        try:
            got += client.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
    assert got == b"pong\n" * count
    client.close()
    dispatcher.clock, dispatcher.observer = clock, observer
    return counts


@pytest.mark.parametrize("audit", [False, True])
def test_a_fast_plain_request_costs_no_call_and_no_clock_read_of_its_own(make_server, audit):
    # Issue 18: the slow log times each command with the clock readings poll() takes anyway (the
    # budget check before each request), and the observer is called only for what it records.
    plain = _pipelined_pings(make_server(), 200, budget=5.0)
    assert 150 <= plain["clock"] <= 210  # one read per request after the first of each poll's batch
    # slow_ms high enough that no ping on a loaded machine counts as slow
    observed = _pipelined_pings(with_activity(make_server(), audit=audit, slow_ms=10_000), 200, budget=5.0)
    assert observed["observer"] == 0  # pings are neither slow nor audited
    assert observed["clock"] <= plain["clock"] + 10  # + one read per batch, not per request
    # without a budget, a plain server reads no clock per request; an observed one reads one
    assert _pipelined_pings(make_server(), 200, budget=None)["clock"] <= 5
    assert 200 <= _pipelined_pings(with_activity(make_server(), slow_ms=10_000), 200, budget=None)["clock"] <= 210


def test_an_audited_or_slow_request_is_reported_and_others_are_not(make_server):
    server = with_activity(make_server(level="admin"), audit=True)
    reported = []
    observer = server._dispatcher.observer
    server._dispatcher.observer = lambda conn, request, outcome, seconds: (
        reported.append(request[0].name),
        observer(conn, request, outcome, seconds),
    )
    client = RawClient(server)
    for line in ("ping", "echo hi", "clients", "level user", "auth nothing", "ping"):
        client.request(line)
    # `clients` is an admin command (at or above the default audit level, operator); `auth`
    # always is audited; ping, echo and level are user-level commands, and fast.
    assert reported == ["clients", "auth"]
    client.close()


def test_what_the_observer_takes_is_not_charged_to_the_next_request(make_server):
    server = with_activity(make_server(level="admin"), audit=True)

    class SlowHandler(logging.Handler):  # an audit log that writes somewhere slow
        emitted = 0

        def emit(self, record):
            self.emitted += 1
            time.sleep(0.1)

    handler = SlowHandler()
    audit_log = logging.getLogger("reactor_mgmt.audit")
    audit_log.addHandler(handler)
    level = audit_log.level
    audit_log.setLevel(logging.INFO)  # setLevel, not .level: it clears the logger's cache
    try:
        client = RawClient(server)
        client.send(b"clients\nping\n")  # pipelined: the ping's time starts as the audit ends
        client.lines(1)
        client.wait_for(lambda buf: buf.endswith(b"pong\n"))
        client.buffer = b""
    finally:
        audit_log.removeHandler(handler)
        audit_log.setLevel(level)
    assert handler.emitted == 1  # the `clients` record: it took the handler's 100 ms
    assert [row["command"] for row in result(client, "show slow")["commands"]] == []
    client.close()


def test_an_auth_command_registered_after_the_tools_is_audited(make_server):
    server = with_activity(make_server(level="admin"), audit=True)

    @server.command(name="auth extra")  # a user-level command: audited for its name alone
    def auth_extra(word: str):
        return "OK"

    client = RawClient(server)
    assert client.request("auth extra hunter2") == ["OK"]
    records = result(client, "audit")
    assert [record["command"] for record in records][-1:] == ["auth extra ***"]
    client.close()


def test_clients_alone_reports_nothing_and_keeps_each_last_request(make_server):
    server = make_server(level="admin")
    server.add_toolkit("clients")
    calls = []
    observer = server._dispatcher.observer
    server._dispatcher.observer = lambda *args: (calls.append(args), observer(*args))
    client = RawClient(server)
    assert client.request("echo hi") == ["hi"]
    rows = result(client, "clients")
    assert rows[0]["last"] == "echo hi"  # `clients` itself is recorded once it has run
    assert calls == []
    client.close()


def test_without_clients_a_connection_keeps_no_request(make_server):
    # Memory per idle connection: a request's tuple and argument list are not kept on it.
    server = with_activity(make_server(), parts=("slow",))
    client = RawClient(server)
    assert client.request("echo hi") == ["hi"]
    assert server.connections[0].last_request is None
    client.close()


# ---- slow commands ----


def _slow_server(make_server, **options):
    server = with_activity(make_server(level="admin"), **options)

    @server.command
    def nap(ms: int = 60, *, note: str = ""):
        """Sleeps MS milliseconds."""
        time.sleep(ms / 1000)
        return "awake"

    return server


def test_show_slow_lists_commands_over_slow_ms_newest_first(make_server):
    server = _slow_server(make_server)
    client = RawClient(server)
    assert client.request("nap 60 --note first") == ["awake"]
    assert client.request("ping") == ["pong"]  # fast: not listed
    assert client.request("nap 70") == ["awake"]
    data = result(client, "show slow")
    assert data["slow_ms"] == 50.0 and data["kept"] == SLOW_KEPT
    rows = data["commands"]
    assert [row["command"] for row in rows] == ["nap 70", "nap 60 --note first"]
    host, port = client.sock.getsockname()
    for row, at_least in zip(rows, (70, 60)):
        assert at_least <= row["ms"] < at_least + 1000
        assert row["conn"] == server.connections[0].id
        assert row["peer"] == f"{host}:{port}"
        assert row["time"].endswith("Z")
    shown = text(client, "show slow").splitlines()
    assert shown[0] == "slow_ms: 50 (2 of the last 128 commands slower than that, newest first)"
    assert shown[1].split() == ["time", "ms", "conn", "peer", "command"]
    assert shown[2].endswith("nap 70") and shown[3].endswith("nap 60 --note first")
    client.close()


def test_the_slow_ring_keeps_the_last_128(make_server):
    server = _slow_server(make_server, slow_ms=0)  # every command is slow
    client = RawClient(server)
    client.send("".join(f"echo {n}\n" for n in range(200)))
    client.lines(200)
    rows = result(client, "show slow")["commands"]
    assert len(rows) == SLOW_KEPT
    assert rows[0]["command"] == "echo 199" and rows[-1]["command"] == f"echo {200 - SLOW_KEPT}"
    client.close()


def test_show_slow_says_so_when_empty_and_needs_admin(make_server):
    server = _slow_server(make_server)
    client = RawClient(server)
    assert client.request("show slow") == ["slow_ms: 50 (0 of the last 128 commands slower than that, newest first)"]
    assert client.request("level operator") == ["operator"]
    assert client.request("show slow") == ["ERR permission denied: 'show slow' needs admin"]
    client.close()


# ---- the poll() gap and the stall watchdog ----


def test_stats_reports_the_longest_gap_between_polls(make_server):
    server = with_activity(make_server())
    client = RawClient(server)
    assert result(client, "stats")["poll_gap_max_ms"] < 100
    server.poll(0)
    time.sleep(0.15)  # the host's loop is busy elsewhere
    server.poll(0)
    gap = result(client, "stats")["poll_gap_max_ms"]
    assert 150 <= gap < 1000
    assert "poll_gap_max_ms:" in text(client, "stats")
    client.close()


def test_the_gap_is_not_measured_unless_asked(make_server):
    server = with_activity(make_server(), parts=("slow",))
    client = RawClient(server)
    assert "poll_gap_max_ms" not in result(client, "stats")
    assert server._loop.watch is None
    client.close()


def test_a_handler_that_polls_does_not_confuse_the_watch(make_server):
    server = with_activity(make_server())

    @server.command
    def nested():
        server.poll(0)  # idle: allowed
        return "ok"

    @server.command
    def napper():
        server.poll(0)  # a gap measured from here would include the nap below
        time.sleep(0.2)
        return "ok"

    client = RawClient(server)
    assert client.request("nested") == ["ok"]
    assert client.request("napper") == ["ok"]
    server.poll(0)
    assert result(client, "stats")["poll_gap_max_ms"] < 190  # the nap is 200 ms
    client.close()


def test_a_stalled_poll_dumps_every_thread_to_the_stall_file(make_server, tmp_path):
    path = tmp_path / "stall.txt"
    server = with_activity(make_server(), stall_after=0.2, stall_file=str(path))

    @server.command
    def stuck():
        time.sleep(0.5)
        return "unstuck"

    client = RawClient(server)
    assert client.request("stuck") == ["unstuck"]
    dump = path.read_text()
    assert "most recent call first" in dump and "Thread" in dump
    assert "in stuck" in dump  # the handler that held the loop
    assert client.request("ping") == ["pong"]  # a quick poll: the watchdog is cancelled in time
    time.sleep(0.3)
    server.poll(0)
    assert path.read_text() == dump
    client.close()


def test_a_handler_that_polls_leaves_the_stall_watchdog_armed(make_server, tmp_path):
    path = tmp_path / "stall.txt"
    server = with_activity(make_server(), stall_after=0.2, stall_file=str(path))

    @server.command
    def napping():
        server.poll(0)  # idle: allowed, and it must not disarm the watchdog of the poll running us
        time.sleep(0.5)
        return "unstuck"

    client = RawClient(server)
    assert client.request("napping") == ["unstuck"]
    assert "in napping" in path.read_text()
    client.close()


def test_every_watch_entered_has_its_exited(make_server):
    server = make_server()
    calls = []

    class Watch:
        def entered(self):
            calls.append("entered")

        def handling(self):
            calls.append("handling")

        def exited(self):
            calls.append("exited")

    server._loop.watch = Watch()
    with pytest.raises(ValueError):
        server.poll(float("nan"))
    with pytest.raises(ValueError):
        server.poll(0.0, budget=float("nan"))
    server.poll(0)
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    client.close()
    assert calls.count("entered") == calls.count("exited") > 0
    assert calls[0] == "entered"

    # Ctrl-C in a blocking wait (what serve_forever() meets most): the exit is said too.
    deadline = time.monotonic() + TIMEOUT
    while server.poll(0.05) and time.monotonic() < deadline:  # the client's close, handled
        pass
    calls.clear()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            server.poll(2.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert calls == ["entered", "exited"]


def test_stall_after_alone_installs_the_watchdog_without_the_gap(make_server, tmp_path):
    server = with_activity(make_server(), parts=(), stall_after=5, stall_file=str(tmp_path / "s"))
    client = RawClient(server)
    assert client.request("ping") == ["pong"]
    assert "poll_gap_max_ms" not in result(client, "stats")
    assert server._dispatcher.observer is None
    client.close()


def test_stall_dumps_go_to_stderr_by_default(make_server, capfd):
    server = with_activity(make_server(), parts=(), stall_after=0.1)
    server.add_command("stuck", lambda: time.sleep(0.3) or "unstuck")
    client = RawClient(server)
    assert client.request("stuck") == ["unstuck"]
    assert "most recent call first" in capfd.readouterr().err
    client.close()


# ---- the audit log ----

TOKEN = "tok-Zq8mW3pX"
SECRETS = (TOKEN, "hunter2", "T0K-val", "K3Y-val", "wrong-tok-5")


def _audited_server(make_server, **options):
    server = with_activity(make_server(level="admin", token=TOKEN), audit=True, **options)

    @server.command(level="operator")
    def login(user: str, password: str = "", *, token: str = "", verbose: bool = False):
        """Pretends to log in."""
        return f"hello {user}"

    @server.command(level="admin")
    def deploy(*, apikey: str = ""):
        """Pretends to deploy."""
        return "deployed"

    @server.command(name="job cancel", level="operator")
    def job_cancel(job: int, *, force: bool = False):
        """Cancels a job."""
        if job > 100:
            raise reactor_mgmt.CommandError("no such job")
        return f"cancelled {job}"

    return server


def test_audit_records_commands_at_the_level_and_every_auth(make_server, caplog):
    caplog.set_level(logging.INFO, logger="reactor_mgmt.audit")
    server = _audited_server(make_server)
    client = RawClient(server)
    assert client.request("auth wrong-tok-5") == ["ERR authentication failed"]
    assert client.request(f"auth {TOKEN}") == ["OK"]
    assert client.request("ping") == ["pong"]  # user level: below the audit level
    assert client.request("job cancel 3 --force") == ["cancelled 3"]
    assert client.request("job cancel 300") == ["ERR no such job"]
    assert client.request("level user") == ["user"]
    assert client.request("job cancel 4") == ["ERR permission denied: 'job cancel' needs operator"]
    conn = server.connections[0]
    host, port = client.sock.getsockname()
    listener = "%s:%d" % server.addresses[0]

    records = [record.audit for record in caplog.records if record.name == "reactor_mgmt.audit"]
    assert [(r["command"], r["outcome"], r["level"]) for r in records] == [
        ("auth ***", "denied", "admin"),
        ("auth ***", "ok", "admin"),
        ("job cancel 3 --force", "ok", "admin"),
        ("job cancel 300", "error", "admin"),
        ("job cancel 4", "denied", "user"),
    ]
    for record in records:
        assert record["conn"] == conn.id and record["peer"] == f"{host}:{port}"
        assert record["listener"] == listener and record["uid"] is None  # TCP: no uid
        assert record["time"].endswith("Z") and 0 <= record["ms"] < 1000
    line = caplog.records[-1].getMessage()
    assert line.startswith(f"conn={conn.id} peer={host}:{port} uid=- listener={listener} level=user outcome=denied ms=")
    assert line.endswith(" command=job cancel 4")
    client.close()


def test_a_watch_of_an_audited_command_is_audited_once_as_the_watch(make_server, caplog):
    caplog.set_level(logging.INFO, logger="reactor_mgmt.audit")
    server = _audited_server(make_server, audit_level="operator")
    client = RawClient(server)
    assert client.request(f"auth {TOKEN}") == ["OK"]
    for request, first in (
        ("watch 5 job cancel 3", "cancelled 3"),  # operator: at the audit level
        ("watch 5 client kill --idle 100", "OK (0 killed)"),  # user level, but always audited
        ("watch 5 ping", "pong"),  # user level: not audited, nor is its watch
    ):
        assert client.request(request) == [first]
        client.send("\n")  # stops the watch
    client.send(json.dumps({"id": 2, "cmd": "watch", "args": [5, "job", "cancel", "300"]}) + "\n")
    assert json.loads(client.lines(2)[1])["error"]["message"] == "no such job"  # ends the stream
    assert client.request("watch 5 auth wrong-tok-5") == ["ERR authentication failed"]
    records = [record.audit for record in caplog.records if record.name == "reactor_mgmt.audit"]
    assert [record["command"] for record in records] == [
        "auth ***",
        "watch 5 job cancel 3",
        "watch 5 client kill --idle 100",
        "watch 5 job cancel 300",
        "watch 5 auth ***",
    ]
    client.close()


def test_config_set_is_audited_at_the_level_of_the_settings_it_names(make_server):
    # With a user-level setting, `config set` itself is a user-level command; changing an admin
    # setting with it is still an admin act.
    server = with_activity(make_server(level="admin"), audit=True, audit_level="admin")
    config = type("Config", (), {"rate": 1, "op": 1, "knob": 1})()
    server.setting("rate", config, "rate", level="user")
    server.setting("op", config, "op", level="operator")
    server.setting("knob", config, "knob", level="admin")
    assert server.registry.commands["config set"].level == "user"
    admin, user = RawClient(server), RawClient(server)
    assert user.request("level user") == ["user"]
    assert text(admin, "config set rate 2 op 2") == "rate: 1 -> 2\nop: 1 -> 2\n"  # below admin: not audited
    assert text(admin, "config set rate 3 knob 3") == "rate: 2 -> 3\nknob: 1 -> 3\n"
    assert admin.request("config set -- knob 4")[0].startswith("ERR usage: config set")  # refused, still named
    assert user.request("config set knob 5") == ["ERR permission denied: setting 'knob' needs admin"]
    assert admin.request("watch 5 config set knob 6") == ["knob: 3 -> 6"]
    admin.send("\n")
    assert json.loads(admin.request(json.dumps({"cmd": "config set", "args": ["knob", 7]}))[0])["ok"]
    records = [(record["command"], record["level"]) for record in result(admin, "audit", 100)]
    assert records == [
        ("config set rate 3 knob 3", "admin"),
        ("config set -- knob 4", "admin"),
        ("config set knob 5", "user"),
        ("watch 5 config set knob 6", "admin"),
        ("config set knob 7", "admin"),
    ]
    admin.close()
    user.close()


@pytest.fixture
def audit_logger_unset():
    """The audit logger with no level of its own, as in a host that never configured it; the
    levels the test changes are put back."""
    loggers = [logging.getLogger(name) for name in ("reactor_mgmt.audit", "reactor_mgmt", "")]
    levels = [logger.level for logger in loggers]
    loggers[0].setLevel(logging.NOTSET)
    yield loggers[0]
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def test_an_operator_cannot_switch_the_audit_log_off(make_server, audit_logger_unset):
    # `log level reactor_mgmt.audit CRITICAL` (operator) dropped every later record, the record
    # of that change included (it is written after the change), and with the audit logger at
    # NOTSET, `log level reactor_mgmt CRITICAL` or `log level root CRITICAL` did the same.
    audit_log = audit_logger_unset
    records: list = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    audit_log.addHandler(handler)
    try:
        server = make_server(level="admin", toolkit=True, audit=True)
        assert audit_log.level == logging.INFO  # its own level: ancestors' do not filter it
        client = RawClient(server)
        assert client.request("level operator") == ["operator"]
        for name in ("reactor_mgmt", "root"):
            assert text(client, f"log level {name} CRITICAL").startswith(f"{name}: ")
        for line in ("log level reactor_mgmt.audit CRITICAL", "log level reactor_mgmt.audit NOTSET --for 1"):
            (reply,) = client.request(line)
            assert reply.startswith("ERR the level of reactor_mgmt.audit is not set here: it is the audit log"), reply
        assert audit_log.level == logging.INFO
        assert text(client, "clients").startswith("id")  # operator level: audited
        commands = [record.audit["command"] for record in records]
        assert commands == [
            "log level reactor_mgmt CRITICAL",
            "log level root CRITICAL",
            "log level reactor_mgmt.audit CRITICAL",
            "log level reactor_mgmt.audit NOTSET --for 1",
            "clients",
        ], commands
        # Reading its level still works, and the listing shows it.
        shown = result(client, "log level", "reactor_mgmt.audit")
        assert (shown["level"], shown["effective"]) == ("INFO", "INFO")
        assert "reactor_mgmt.audit" in [row["logger"] for row in result(client, "log level")]
        client.close()
    finally:
        audit_log.removeHandler(handler)


def test_a_level_the_host_gave_the_audit_logger_is_kept(make_server, audit_logger_unset):
    audit_logger_unset.setLevel(logging.DEBUG)
    make_server(level="admin", audit=True)
    assert audit_logger_unset.level == logging.DEBUG


def test_audit_shows_the_ring_and_checks_n(make_server):
    server = _audited_server(make_server)
    client = RawClient(server)
    client.request(f"auth {TOKEN}")
    for job in range(5):
        client.request(f"job cancel {job}")
    rows = result(client, "audit", 3)
    assert [row["command"] for row in rows] == ["job cancel 2", "job cancel 3", "job cancel 4"]  # before itself
    shown = text(client, "audit 2").splitlines()
    assert shown[0].startswith("audit: 2 of the last 1000 records")
    assert shown[1].split() == ["time", "conn", "peer", "uid", "listener", "level", "command", "outcome", "ms"]
    assert " job cancel 4 " in shown[2] and " audit 3 " in shown[3]
    for bad in ("-1", "0", "1001", "x"):
        (reply,) = client.request(f"audit {bad}")
        assert reply.startswith("ERR usage: audit [N]"), reply
    assert client.request("level operator") == ["operator"]
    assert client.request("audit") == ["ERR permission denied: 'audit' needs admin"]
    client.close()


def test_the_ring_is_bounded_and_so_are_its_records(make_server):
    server = with_activity(make_server(level="admin"), parts=(), audit=True, audit_level="user")
    client = RawClient(server)
    client.send("ping\n" * 1100)
    client.lines(1100)
    assert len(result(client, "audit", 1000)) == 1000
    client.request("echo " + "x" * 1000)
    client.request("echo " + " ".join(["word"] * 500))
    records = result(client, "audit", 2)
    assert records[0]["command"] == "echo " + "x" * 128 + "...(872 more characters)"
    assert len(records[1]["command"]) < 600 and records[1]["command"].endswith(" more characters)")
    client.close()


def test_a_host_may_add_secret_names_later(make_server, monkeypatch):
    import reactor_mgmt._activity as activity

    server = with_activity(make_server(level="admin"), audit=True)
    server.add_command("rotate", lambda *, api_key="": "rotated", level="admin")
    monkeypatch.setattr(activity, "SECRET_PARAMETERS", activity.SECRET_PARAMETERS | {"api_key"})
    client = RawClient(server)
    assert client.request("rotate --api-key K3Y-val") == ["rotated"]
    assert result(client, "audit", 2)[0]["command"] == "rotate --api-key ***"
    client.close()


def test_a_masker_hides_what_no_parameter_name_tells(make_server):
    secret_settings = {"api_key"}

    def mask_config_set(words):
        return [MASK if index % 2 and words[index - 1] in secret_settings else word for index, word in enumerate(words)]

    server = with_activity(
        make_server(level="admin"),
        audit=True,
        audit_level="user",
        maskers={"set": mask_config_set, "boom": lambda words: 1 / 0},
    )
    server.add_command("set", lambda *pairs: "OK", level="admin")
    server.add_command("boom", lambda *words: "OK", level="admin")
    client = RawClient(server)
    assert client.request("set rate 5 api_key K3Y-val") == ["OK"]
    assert client.request("watch 1 set api_key K3Y-val") == ["OK"]
    client.send("\n")
    assert client.request("boom K3Y-val") == ["OK"]  # a masker that fails: nothing shown
    commands = [record["command"] for record in result(client, "audit", 3)]
    assert commands == ["set rate 5 api_key ***", "watch 1 set api_key ***", "boom ***"]
    client.close()


def _everything_shown(client: RawClient, caplog: pytest.LogCaptureFixture) -> str:
    """What the activity tools show of past requests: the audit ring, `show slow`, `clients`
    and the log."""
    return "".join(
        [
            json.dumps(result(client, "audit", 100)),
            json.dumps(result(client, "show slow")),
            json.dumps(result(client, "clients")),
            caplog.text,
        ]
    )


def test_a_secret_setting_is_masked_wherever_its_value_sits(make_server, caplog):
    # The pairs of `config set` shift with a "--" word (text, JSON argv, under watch) or with a
    # value that names a setting; a JSON kwargs or NAME=VALUE word is refused but still recorded.
    caplog.set_level(logging.INFO, logger="reactor_mgmt.audit")
    server = with_activity(make_server(level="admin"), audit=True, slow_ms=0)
    config = type("Config", (), {"api_key": "k0", "rate": "r0"})()
    server.setting("api_key", config, "api_key", secret=True)
    server.setting("rate", config, "rate")
    client, quiet = RawClient(server), RawClient(server)
    (reply,) = quiet.request("config set -- api_key S3CRET-a")  # quiet's last request, for `clients`
    assert reply.startswith("ERR usage: config set")
    assert client.request("config set rate api_key S3CRET-b")[0].startswith("ERR usage: config set")
    for request in (
        {"argv": ["config", "set", "--", "api_key", "S3CRET-c"]},
        {"cmd": "config set", "kwargs": {"api_key": "S3CRET-d"}},
    ):
        assert json.loads(client.request(json.dumps(request))[0])["ok"] is False
    assert client.request("config set api_key=S3CRET-e x")[0].startswith("ERR usage: config set")
    assert client.request("watch 0.1 config set -- api_key S3CRET-f")[0].startswith("ERR usage: config set")
    assert "S3CRET" not in _everything_shown(client, caplog)
    commands = [record["command"] for record in result(client, "audit", 100)]
    assert commands[:5] == [
        "config set -- api_key ***",
        "config set rate api_key ***",
        "config set -- api_key ***",
        "config set --api_key=***",
        "config set api_key=*** x",
    ]
    assert (config.api_key, config.rate) == ("k0", "r0")
    client.close()
    quiet.close()


def test_a_value_after_an_unknown_setting_name_is_masked(make_server, caplog):
    # `config set API_KEY S3CRET` (a case typo: no such setting) was refused, and recorded in
    # clear: only the word after a secret setting's name was masked.
    caplog.set_level(logging.INFO, logger="reactor_mgmt.audit")
    server = with_activity(make_server(level="admin"), audit=True, slow_ms=0)
    config = type("Config", (), {"api_key": "k0", "rate": "r0"})()
    server.setting("api_key", config, "api_key", secret=True)
    server.setting("rate", config, "rate")
    client = RawClient(server)
    for line in (
        "config set API_KEY S3CRET-a",
        "config set -- rate API_KEY S3CRET-b",  # the pairs: (--, rate) (API_KEY, S3CRET-b)
        "config set rate r1 apikey S3CRET-c rate",
        "config set API_KEY=S3CRET-d",
        "watch 1 config set API_KEY S3CRET-e",
    ):
        assert client.request(line)[0].startswith("ERR usage: config set"), line
    reply = client.request(json.dumps({"cmd": "config set", "kwargs": {"API_KEY": "S3CRET-f"}}))
    assert json.loads(reply[0])["ok"] is False
    assert text(client, "config set rate r2") == "rate: r0 -> r2\n"  # a request config set takes: as it was
    assert "S3CRET" not in _everything_shown(client, caplog)
    commands = [record["command"] for record in result(client, "audit", 100)]
    assert commands[:7] == [
        "config set API_KEY ***",
        "config set -- rate API_KEY ***",
        "config set rate r1 *** *** ***",  # refused: the word after one naming no setting
        "config set API_KEY=***",
        "watch 1 config set API_KEY ***",
        "config set --API_KEY=***",
        "config set rate r2",
    ]
    assert config.api_key == "k0"
    client.close()


def test_a_command_name_the_host_took_is_refused_and_nothing_is_hooked(make_server):
    server = make_server()
    server.add_command("clients", lambda: "mine")
    with pytest.raises(reactor_mgmt.ConfigError, match="already registered"):
        with_activity(server)
    assert server._dispatcher.observer is None and server._loop.watch is None


def test_the_token_and_secret_parameters_never_appear(make_server, caplog):
    caplog.set_level(logging.INFO, logger="reactor_mgmt.audit")
    server = _audited_server(make_server, audit_level="user", slow_ms=0, secret_params=("apikey",))
    client = RawClient(server)
    requests = [
        "auth wrong-tok-5",
        f"auth {TOKEN}",
        json.dumps({"id": 2, "cmd": "auth", "args": [TOKEN]}),
        json.dumps({"id": 3, "argv": ["auth", TOKEN]}),
        json.dumps({"id": 4, "cmd": f"auth {TOKEN}"}),
        "login bob hunter2 --token=T0K-val",
        "login bob hunter2 --token T0K-val --verbose",
        "login bob --unknown-flag -- hunter2",
        json.dumps({"id": 5, "cmd": "login", "args": ["bob"], "kwargs": {"password": "hunter2", "token": "T0K-val"}}),
        json.dumps({"id": 6, "argv": ["login", "bob", "hunter2"]}),
        json.dumps({"id": 7, "cmd": "login bob", "args": ["hunter2"]}),
        "deploy --apikey K3Y-val",
        "watch 1 nosuch plain-word",
        f"echo auth {TOKEN}",
        "'login' bob 'hunter2'",
    ]
    for line in requests:
        client.request(line)
    client.send("watch 1 login bob hunter2\n")
    client.lines(1)
    client.send("\n")  # ends the watch
    client.send(f"watch 1 auth {TOKEN}\n")
    client.lines(1)
    client.send("\n")

    shown = [caplog.text]
    shown += [json.dumps(record.audit) for record in caplog.records if hasattr(record, "audit")]
    shown.append(json.dumps(result(client, "audit", 1000)))
    shown.append(text(client, "audit 1000"))
    shown.append(json.dumps(result(client, "show slow")))
    shown.append(text(client, "show slow"))
    everything = "\n".join(shown)
    for secret in SECRETS:
        assert secret not in everything, secret
    commands = [row["command"] for row in result(client, "audit", 1000)]
    assert "login bob *** --token=***" in commands
    assert "login bob *** --token *** --verbose" in commands
    assert "login bob --password=*** --token=***" in commands
    assert "deploy --apikey ***" in commands
    assert "echo auth ***" in commands
    assert "watch 1 login bob ***" in commands
    assert "watch 1 auth ***" in commands
    assert "watch 1 nosuch plain-word" in commands  # no such command: its words are as sent
    assert commands.count("auth ***") == 5  # the text, cmd, argv and "cmd with words" forms

    # `clients` shows each connection's last command, masked the same way
    other = RawClient(server)
    other.request(f"auth {TOKEN}")
    other.request("login eve hunter2")
    listing = text(client, "clients") + json.dumps(result(client, "clients"))
    assert "login eve ***" in listing
    for secret in SECRETS:
        assert secret not in listing, secret
    other.close()
    client.close()


def test_every_auth_subcommand_is_audited_and_masked(make_server):
    server = with_activity(make_server(level="admin"), audit=True, audit_level="admin")
    server.add_command("auth response", lambda answer: "OK")  # user level, like auth's own forms
    client = RawClient(server)
    assert client.request("auth response a1b2c3-proof") == ["OK"]
    assert client.request("ping") == ["pong"]
    (record,) = result(client, "audit", 1)
    assert record["command"] == "auth response ***" and record["level"] == "admin"
    client.close()


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="SO_PEERCRED is Linux's")
def test_audit_records_the_peer_uid_on_a_unix_socket(make_server):
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="rm-"), "mgmt.sock")  # AF_UNIX paths are short
    server = with_activity(make_server(None, port=None, unix=path), audit=True)
    client = RawClient(server, address=path)
    assert client.request("level") == ["admin"]
    assert len(result(client, "clients")) == 1  # at operator level: audited
    (record,) = result(client, "audit", 1)
    assert record["command"] == "clients"
    assert record["uid"] == os.getuid()
    assert record["peer"] == path and record["listener"] == path
    client.close()


# ---- who is connected ----


def _clients_server(make_server, **options):
    options.setdefault("level", "admin")
    server = with_activity(make_server(log_tail=True, **options))
    waiting = []

    @server.command
    def pend():
        """Replies later."""
        pending = Pending(timeout=60)
        waiting.append(pending)
        return pending

    @server.command
    def parked():
        """Streams one line, then waits for good."""
        yield "first"
        while True:
            yield Wait(None)

    server.waiting = waiting
    return server


def test_clients_lists_every_connection_and_its_state(make_server):
    server = _clients_server(make_server)
    me = RawClient(server)
    assert me.request("client name ops-console") == ["OK"]
    tail, watcher, pender, streamer, idle = (RawClient(server) for _ in range(5))
    tail.send("log tail\n")
    watcher.send("watch 5 ping\n")
    watcher.lines(1)
    pender.send("pend\n")
    streamer.request("parked")
    idle.request("echo hello there")
    for client in (tail, pender):
        client.pump(3)
    time.sleep(0.1)
    rows = {row["id"]: row for row in result(me, "clients")}
    assert len(rows) == 6
    by_client = {
        name: rows[server.connections[index].id]
        for index, name in enumerate(("me", "tail", "watch", "pend", "stream", "idle"))
    }
    assert [by_client[name]["state"] for name in by_client] == ["idle", "tail", "watch", "pending", "stream", "idle"]
    assert by_client["me"]["name"] == "ops-console" and by_client["idle"]["name"] is None
    assert by_client["me"]["last"] == "client name ops-console"  # `clients` is recorded once it has run
    assert by_client["idle"]["last"] == "echo hello there"
    assert by_client["tail"]["last"] == "log tail" and by_client["watch"]["last"] == "watch 5 ping"
    host, port = idle.sock.getsockname()
    row = by_client["idle"]
    row_id = row["id"]
    assert row["peer"] == f"{host}:{port}" and row["listener"] == "%s:%d" % server.addresses[0]
    assert row["level"] == "admin"
    assert row["bytes_in"] == len("echo hello there\n") and row["bytes_out"] == len("hello there\n")
    assert row["unsent"] == 0
    assert 0.1 <= row["idle_s"] <= row["age_s"] < 10
    idle.send("quit\n")  # the server shuts its side and lingers for the client's EOF
    idle.pump(3)
    assert next(row for row in result(me, "clients") if row["id"] == row_id)["state"] == "closing"
    table = text(me, "clients").splitlines()
    assert table[0].split() == [
        "id",
        "peer",
        "listener",
        "level",
        "age_s",
        "idle_s",
        "last",
        "bytes_in",
        "bytes_out",
        "unsent",
        "state",
        "name",
    ]
    assert len(table) == 7 and table[1].rstrip().endswith("ops-console")
    for client in (me, tail, watcher, pender, streamer, idle):
        client.close()


def test_clients_counts_bytes_and_age_over_the_whole_connection(make_server):
    server = _clients_server(make_server)
    me, other = RawClient(server), RawClient(server)
    other.request("echo one")
    time.sleep(0.2)
    other.request("echo two")
    row = next(row for row in result(me, "clients") if row["id"] == server.connections[1].id)
    assert row["bytes_in"] == len("echo one\necho two\n") and row["bytes_out"] == len("one\ntwo\n")
    assert row["age_s"] >= 0.2 > row["idle_s"]
    me.close()
    other.close()


def test_clients_needs_operator(make_server):
    server = _clients_server(make_server)
    client = RawClient(server)
    client.request("level user")
    assert client.request("clients") == ["ERR permission denied: 'clients' needs operator"]
    help_text = text(client, "help")
    assert "client kill" in help_text and "client name" in help_text and "client id" in help_text
    assert "clients " not in help_text and "show slow" not in help_text
    client.close()


def test_client_name_checks_the_name(make_server):
    server = _clients_server(make_server)
    client = RawClient(server)
    for bad in ('"two words"', "x" * 65, '""'):
        (reply,) = client.request(f"client name {bad}")
        assert reply == "ERR usage: client name NAME (1 to 64 printable characters, no spaces)", bad
    assert client.request("client name") == ["ERR usage: client name NAME (missing NAME)"]
    assert client.request("client name worker-7") == ["OK"]
    assert result(client, "clients")[0]["name"] == "worker-7"
    client.close()


def test_client_kill_by_id(make_server):
    server = _clients_server(make_server)
    admin, victim, bystander = RawClient(server), RawClient(server), RawClient(server)
    victim_id = int(victim.request("client id")[0])
    assert admin.request(f"client kill {victim_id}") == ["OK (1 killed)"]
    assert closed_after(victim) == b"ERR killed by admin\n"
    assert bystander.request("ping") == ["pong"]
    assert admin.request(f"client kill {victim_id}") == ["OK (0 killed)"]  # gone already
    assert admin.request("client kill 999") == ["OK (0 killed)"]
    assert result(admin, "client kill", 999) == "OK (0 killed)"
    admin.close()
    bystander.close()


def test_a_killed_stream_or_pending_stops_and_says_so(make_server):
    server = _clients_server(make_server)
    admin, streamer, pender = RawClient(server), RawClient(server), RawClient(server)
    assert streamer.request("parked") == ["first"]
    pender.send(json.dumps({"id": 7, "cmd": "pend"}) + "\n")
    pender.pump(3)
    ids = [conn.id for conn in server.connections]
    assert admin.request(f"client kill {ids[1]}") == ["OK (1 killed)"]
    assert admin.request(f"client kill {ids[2]}") == ["OK (1 killed)"]
    assert closed_after(streamer) == b"ERR killed by admin\n"
    reply = json.loads(closed_after(pender))
    assert reply == {"id": 7, "ok": False, "error": {"code": "killed", "message": "killed by admin"}}
    assert server.waiting[0].cancelled
    admin.close()


def test_client_kill_idle_and_peer_spare_the_caller(make_server):
    server = _clients_server(make_server)
    admin, sleepy, busy = RawClient(server), RawClient(server), RawClient(server)
    time.sleep(0.3)
    assert busy.request("ping") == ["pong"]
    assert admin.request("client kill --idle 0.2") == ["OK (1 killed)"]  # not busy, not the caller
    assert closed_after(sleepy) == b"ERR killed by admin\n"
    assert busy.request("ping") == ["pong"]

    host, port = busy.sock.getsockname()
    assert admin.request(f"client kill --peer {host}:{port + 1 if port < 65535 else 1}") == ["OK (0 killed)"]
    assert admin.request(f"client kill --peer {host}:{port}") == ["OK (1 killed)"]
    assert closed_after(busy) == b"ERR killed by admin\n"
    others = [RawClient(server) for _ in range(2)]
    assert result(admin, "client kill", peer=host) == "OK (2 killed)"  # a host alone: all from it
    for other in others:
        assert closed_after(other) == b"ERR killed by admin\n"
    assert admin.request("ping") == ["pong"]
    admin.close()


def test_a_connection_may_kill_itself_at_user_level(make_server):
    server = _clients_server(make_server, level="user")
    client = RawClient(server)
    own = client.request("client id")[0]
    client.send(f"client kill {own}\nping\n")
    assert closed_after(client) == b"ERR killed by admin\n"  # and nothing after it runs
    client.close()
    deadline = time.monotonic() + TIMEOUT
    while server.connections:
        assert time.monotonic() < deadline
        server.poll(0.01)


def test_a_connection_killing_itself_inside_watch_gets_the_notice_then_eof(make_server, caplog):
    # The kill runs inside the watch's own generator, which must not be closed from there.
    server = _clients_server(make_server, level="user")
    client = RawClient(server)
    own = client.request("client id")[0]
    client.send(f"watch 5 client kill {own}\n")
    assert closed_after(client) == b"ERR killed by admin\n"
    client.close()
    client = RawClient(server)
    own = client.request("client id")[0]
    client.send(json.dumps({"id": 7, "cmd": "watch", "args": [5, "client", "kill", own]}) + "\n")
    assert [json.loads(line) for line in closed_after(client).splitlines()] == [
        {"id": 7, "stream": True},
        {"id": 7, "ok": False, "error": {"code": "killed", "message": "killed by admin"}},
    ]
    client.close()
    deadline = time.monotonic() + TIMEOUT
    while server.connections:
        assert time.monotonic() < deadline
        server.poll(0.01)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


def test_killing_another_connection_needs_admin(make_server):
    server = _clients_server(make_server)
    caller, other = RawClient(server), RawClient(server)
    other_id = other.request("client id")[0]
    for level in ("operator", "user"):
        assert caller.request(f"level {level}") == [level]
        for request in (f"client kill {other_id}", "client kill 999", "client kill --idle 0", "client kill --peer x"):
            assert caller.request(request) == ["ERR permission denied: 'client kill' needs admin"], request
    assert other.request("ping") == ["pong"]
    reply = call(caller, "client kill", int(other_id))
    assert reply["error"] == {"code": "denied", "message": "permission denied: 'client kill' needs admin"}
    caller.close()
    other.close()


def test_client_kill_is_always_audited(make_server):
    server = with_activity(make_server(level="admin"), audit=True, audit_level="admin")
    admin, other = RawClient(server), RawClient(server)
    other_id = other.request("client id")[0]
    admin.request("level operator")
    assert admin.request(f"client kill {other_id}") == ["ERR permission denied: 'client kill' needs admin"]
    other.request(f"client kill {other_id}")
    commands = [
        (record["command"], record["outcome"], record["level"]) for record in server._dispatcher.observer.__self__.audit
    ]
    assert commands == [
        (f"client kill {other_id}", "denied", "operator"),
        (f"client kill {other_id}", "error", "admin"),
    ]
    admin.close()
    other.close()


def test_client_kill_usage(make_server):
    server = _clients_server(make_server)
    client = RawClient(server)
    usage = "ERR usage: client kill ID|--idle SECONDS|--peer ADDR"
    cases = {
        "client kill": "(give one of ID, --idle, --peer)",
        "client kill 2 --idle 3": "(only one of ID, --idle, --peer)",
        "client kill 0": "(ID must be a connection id, 1 or more)",
        "client kill -3": "(ID must be a connection id, 1 or more)",
        "client kill abc": "(bad value for ID: 'abc': expected an integer)",
        "client kill --idle -1": "(SECONDS must be a number, 0 or more)",
        "client kill --idle nan": "(SECONDS must be a number, 0 or more)",
        "client kill --peer ''": "(ADDR must not be empty)",
    }
    for request, reason in cases.items():
        assert client.request(request) == [f"{usage} {reason}"], request
    assert text(client, "help client kill").startswith("usage: client kill ID|--idle SECONDS|--peer ADDR\n")
    client.close()


def test_a_connection_already_closing_is_reset_at_once(make_server):
    server = _clients_server(make_server)
    admin, leaving = RawClient(server), RawClient(server)
    leaving.send("quit\n")  # the server shuts its side and lingers for this client's EOF
    leaving.pump(3)
    (conn,) = [conn for conn in server.connections if conn.closing]
    assert admin.request(f"client kill {conn.id}") == ["OK (1 killed)"]
    assert conn.closed and conn not in server.connections
    admin.close()
    leaving.close()


def test_a_killed_client_that_does_not_read_is_reset(make_server, monkeypatch):
    import reactor_mgmt._activity as activity

    monkeypatch.setattr(activity, "KILL_GRACE", 0.1)
    server = _clients_server(make_server, high_water=1 << 16)

    @server.command
    def flood():
        """Lots of output."""
        return ("x" * 1000 for _ in range(10**6))

    admin = RawClient(server)
    stalled = socket.create_connection(server.addresses[0], timeout=TIMEOUT)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"flood\n")
    deadline = time.monotonic() + TIMEOUT
    while not (server.connections and len(server.connections) == 2 and server.connections[1].buffered_output):
        assert time.monotonic() < deadline
        server.poll(0.01)
    stalled_id = server.connections[1].id
    assert admin.request(f"client kill {stalled_id}") == ["OK (1 killed)"]
    deadline = time.monotonic() + TIMEOUT
    while len(server.connections) > 1:
        assert time.monotonic() < deadline, "the stalled client was not reset"
        server.poll(0.01)
    stalled.close()
    admin.close()


# ---- end to end, with OpenBSD nc -N ----


def nc(server: reactor_mgmt.Server, payload: str) -> str:
    tool = require_tool("nc.openbsd", "nc")
    host, port = server.addresses[0]
    done = subprocess.run([tool, "-N", host, str(port)], input=payload.encode(), capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_nc_show_slow_and_the_gap():
    server = with_activity(reactor_mgmt.Server("127.0.0.1", 0, level="admin"))
    server.add_command("nap", lambda: time.sleep(0.06) or "awake")
    server.poll(0)
    time.sleep(0.12)
    with ServerThread(server):
        output = nc(server, "nap\nshow slow\nstats\n")
    lines = output.splitlines()
    assert lines[0] == "awake"
    assert lines[1] == "slow_ms: 50 (1 of the last 128 commands slower than that, newest first)"
    assert lines[3].endswith(" nap")
    gap = next(line for line in lines if line.startswith("poll_gap_max_ms:"))
    assert float(gap.split()[1]) >= 120


def test_nc_stall_dump(tmp_path):
    path = tmp_path / "stall.txt"
    server = with_activity(reactor_mgmt.Server("127.0.0.1", 0), stall_after=0.2, stall_file=str(path))

    @server.command
    def stuck():
        time.sleep(0.5)
        return "unstuck"

    with ServerThread(server):
        assert nc(server, "stuck\n") == "unstuck\n"
    dump = path.read_text()
    assert "most recent call first" in dump and "in stuck" in dump


def test_nc_audit_never_shows_the_token(caplog):
    caplog.set_level(logging.INFO, logger="reactor_mgmt.audit")
    server = with_activity(reactor_mgmt.Server("127.0.0.1", 0, level="admin", token=TOKEN), audit=True)
    server.add_command("job cancel", lambda job: f"cancelled {job}", level="operator")
    with ServerThread(server):
        output = nc(server, f"auth wrong-tok-5\nauth {TOKEN}\njob cancel 3\naudit\n")
    lines = output.splitlines()
    assert lines[:3] == ["ERR authentication failed", "OK", "cancelled 3"]
    assert lines[3].startswith("audit: 3 of the last 1000 records")
    assert [line.split()[-3:-1] for line in lines[5:]] == [["***", "denied"], ["***", "ok"], ["3", "ok"]]
    for secret in (TOKEN, "wrong-tok-5"):
        assert secret not in output and secret not in caplog.text
    assert len([record for record in caplog.records if record.name == "reactor_mgmt.audit"]) == 4


def test_nc_clients_name_and_kill():
    tool = require_tool("nc.openbsd", "nc")
    server = with_activity(reactor_mgmt.Server("127.0.0.1", 0, level="admin"))
    host, port = server.addresses[0]
    with ServerThread(server):
        victim = subprocess.Popen(
            [tool, "-N", host, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            victim.stdin.write(b"client name victim\n")
            victim.stdin.flush()
            deadline = time.monotonic() + TIMEOUT
            while "victim" not in nc(server, "clients\n"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            listing = nc(server, "client name ops\nclients\n").splitlines()
            assert listing[0] == "OK"
            row = next(line for line in listing if line.rstrip().endswith(" victim"))
            victim_id = row.split()[0]
            assert nc(server, f"client kill {victim_id}\n") == "OK (1 killed)\n"
            out, _ = victim.communicate(timeout=TIMEOUT)  # stdin closed: nc -N exits at the EOF
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.communicate()
    assert out == b"OK\nERR killed by admin\n"
