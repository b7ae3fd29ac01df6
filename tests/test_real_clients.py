# The clients people will actually type: OpenBSD nc, ncat, socat and telnet, each driving the
# demo daemon in its own process. The reference output for each request comes from a plain
# Python socket doing the same half-close, so every client must print exactly those bytes.
# A missing client skips locally and fails under CI (require_tool).
from __future__ import annotations

import re
import socket
import subprocess
import time

import pytest

from conftest import TIMEOUT, require_tool

STATUS_KEYS = ["uptime_s", "ticks", "tick_rate_hz", "connections", "jobs_queued", "jobs_done", "paused"]


def exchange(demo, payload: bytes) -> bytes:
    """What a well-behaved client gets: send everything, half-close, read until the server closes."""
    with socket.create_connection((demo.host, demo.port), timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def run_client(argv, payload: bytes) -> bytes:
    result = subprocess.run(argv, input=payload, capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def check_status(output: bytes) -> None:
    lines = output.decode().split("\n")
    assert lines[-1] == ""
    assert [line.split(":")[0] for line in lines[:-1]] == STATUS_KEYS
    width = len(max(STATUS_KEYS, key=len)) + 2
    for line in lines[:-1]:
        key, value = line[:width], line[width:]
        assert re.fullmatch(r"[a-z_]+: *", key) and value.strip() == value and value, line
    assert "connections:  1\n" in output.decode()


def check_help(output: bytes) -> None:
    text = output.decode()
    assert text.startswith("Commands: ")
    assert text.endswith("Type 'help COMMAND' for details.\n")
    for name in ("status", "ping", "show", "job", "count"):
        assert f" {name}" in text.split("\n")[0]


# ---- OpenBSD netcat ----


def test_nc_help(demo):
    nc = require_tool("nc.openbsd")
    output = run_client([nc, "-N", demo.host, str(demo.port)], b"help\n")
    check_help(output)
    assert output == exchange(demo, b"help\n")


def test_nc_status_without_newline(demo):
    nc = require_tool("nc.openbsd")
    output = run_client([nc, "-N", demo.host, str(demo.port)], b"status")
    check_status(output)


def test_nc_pipeline_with_deferred_reply(demo):
    # The deferred reply arrives ~1 s later; nc must wait for it after half-closing, and the
    # replies behind it must keep their order.
    nc = require_tool("nc.openbsd")
    output = run_client([nc, "-N", demo.host, str(demo.port)], b"ping\nwait ticks 25\necho after")
    assert re.fullmatch(rb"pong\ntick \d+ reached\nafter\n", output), output


def test_nc_errors_and_streams(demo):
    nc = require_tool("nc.openbsd")
    payload = b'nosuch\ncrash\ncount 3 --prefix n\nshow job 999\necho "a  b"\n'
    output = run_client([nc, "-N", demo.host, str(demo.port)], payload)
    assert output == (
        b"ERR unknown command 'nosuch' (try 'help')\n"
        b"ERR internal error (RuntimeError)\n"
        b"n 1\nn 2\nn 3\n"
        b"ERR no job 999\n"
        b"a  b\n"
    )


# ---- ncat ----


def test_ncat_half_closes_and_waits(demo):
    # ncat 7.x shuts down its sending side at stdin EOF and keeps reading until the server
    # closes, so even a deferred reply gets through.
    ncat = require_tool("ncat")
    output = run_client([ncat, demo.host, str(demo.port)], b"ping\nwait ticks 25\nstatus\n")
    head, _, rest = output.partition(b"\n")
    assert head == b"pong"
    tick, _, status = rest.partition(b"\n")
    assert re.fullmatch(rb"tick \d+ reached", tick), output
    check_status(status)


def test_ncat_help(demo):
    ncat = require_tool("ncat")
    output = run_client([ncat, demo.host, str(demo.port)], b"help\n")
    check_help(output)
    assert output == exchange(demo, b"help\n")


# ---- socat ----


def test_socat_help(demo):
    socat = require_tool("socat")
    output = run_client([socat, "-", f"TCP:{demo.host}:{demo.port}"], b"help\n")
    check_help(output)
    assert output == exchange(demo, b"help\n")


def test_socat_status_and_pipeline(demo):
    socat = require_tool("socat")
    output = run_client([socat, "-", f"TCP:{demo.host}:{demo.port}"], b"echo one\r\nping\nstatus")
    assert output.startswith(b"one\npong\n")
    check_status(output[len(b"one\npong\n") :])


# ---- telnet ----


def spawn_telnet(demo):
    telnet = require_tool("telnet")
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(telnet, [demo.host, str(demo.port)], timeout=TIMEOUT, encoding="utf-8")
    child.expect_exact("Escape character is '^]'.\r\n")
    return pexpect, child


def ping_then_escape(child) -> None:
    """A first round trip, then telnet's own prompt (^])."""
    child.sendline("ping")
    child.expect_exact("pong\r\n")
    child.sendcontrol("]")
    child.expect_exact("telnet>")


def test_telnet_ping_then_quit(demo):
    pexpect, child = spawn_telnet(demo)
    try:
        child.sendline("ping")
        child.expect_exact("pong\r\n")
        assert child.before == "ping\r\n"  # telnet's local echo, then our reply and nothing else
        child.sendline("echo  hello   telnet")
        child.expect_exact("hello telnet\r\n")
        child.sendline("quit")
        child.expect_exact("Connection closed by foreign host.")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_telnet_in_character_mode_is_answered(demo):
    # In character mode telnet sends Enter as CR NUL, with no LF: the line was never answered.
    pexpect, child = spawn_telnet(demo)
    try:
        ping_then_escape(child)
        child.sendline("mode character")
        time.sleep(0.3)  # the mode's negotiation: no prompt says it is done
        child.send("echo  in   character  mode\r")  # the reply is told from the typed line by its spaces
        child.expect_exact("in character mode")
    finally:
        child.close(force=True)


def test_telnet_ctrl_c_ends_session(demo):
    # In line mode telnet turns Ctrl-C into IAC IP; the server must end the session on it.
    pexpect, child = spawn_telnet(demo)
    try:
        child.sendline("ping")
        child.expect_exact("pong\r\n")
        child.sendintr()
        child.expect_exact("Connection closed by foreign host.")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert exchange(demo, b"ping\n") == b"pong\n"  # the daemon itself is fine


def test_telnet_ctrl_d_on_empty_line_ends_session(demo):
    pexpect, child = spawn_telnet(demo)
    try:
        child.sendline("ping")
        child.expect_exact("pong\r\n")
        child.sendcontrol("d")
        child.expect_exact("Connection closed by foreign host.")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_telnet_escape_and_quit(demo):
    pexpect, child = spawn_telnet(demo)
    try:
        ping_then_escape(child)
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
