# The curses dashboard (reactor_mgmt/examples/curses_dashboard.py), run in a real terminal: a
# private tmux server (its own socket in tmp_path, a fixed 100x30 window) whose screen the tests
# read with `tmux capture-pane`, and whose keyboard they type on with `tmux send-keys`. Clients
# are OpenBSD nc and raw sockets, as in test_examples.py, whose helpers this module uses. The
# tests check that what a client does shows on the screen (the note, commands and their outcome,
# open connections), that keys act (c, n, q), that a resize redraws, that the loop wakes for the
# server's own timers (`watch`) and for left-over work (pipelined pings), and that q, Ctrl-C,
# SIGTERM and `shutdown` all exit 0.
#
# tmux records no reliable exit status for a pane, so the dashboard runs under a small launcher
# that writes its child's pid and, when it ends, its exit status to files.
from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Iterator, List, Optional

import pytest

from conftest import ROOT, TIMEOUT, child_env, require_tool
from test_examples import fields, nc, pipelined_pings, read_lines

WIDTH, HEIGHT = 100, 30

LAUNCHER = """
import signal, subprocess, sys
proc = subprocess.Popen(sys.argv[3:])
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the dashboard's to handle
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(proc.pid))
import os
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
code = proc.wait()
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(code))
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
"""


class Terminal:
    """The dashboard in a detached tmux session; quacks like conftest.Daemon for nc()."""

    def __init__(self, directory: str) -> None:
        self.tmux = require_tool("tmux")
        self.dir = directory
        self.socket = os.path.join(directory, "tmux.sock")
        config = os.path.join(directory, "tmux.conf")
        with open(config, "w") as f:
            f.write("set -g status off\nset -g remain-on-exit on\nset -g default-terminal screen\n")
        self.address_file = os.path.join(directory, "dashboard.addr")
        self.pid_file = os.path.join(directory, "dashboard.pid")
        self.rc_file = os.path.join(directory, "dashboard.rc")
        env = child_env()
        env.pop("TMUX", None)
        self.pid = 0
        launcher = [sys.executable, "-c", LAUNCHER, self.pid_file, self.rc_file]
        dashboard = [sys.executable, "-m", "reactor_mgmt.examples.curses_dashboard"]
        options = ["--port", "0", "--address-file", self.address_file]
        session = ["-f", config, "new-session", "-d", "-s", "dash", "-c", ROOT, "-x", str(WIDTH), "-y", str(HEIGHT)]
        self.tmux_cmd(*session, "--", *launcher, *dashboard, *options, env=env)
        try:
            self.wait_for(lambda: os.path.exists(self.pid_file), "no pid from the launcher")
            self.pid = int(open(self.pid_file).read())
            self.wait_for(
                lambda: os.path.exists(self.address_file) and open(self.address_file).read().strip() != "",
                "the dashboard did not start",
            )
        except BaseException:
            self.close()
            raise
        self.address = open(self.address_file).read().split()[0]
        host, _, port = self.address.rpartition(":")
        self.host, self.port = host, int(port)

    def tmux_cmd(self, *args: str, env: Optional[dict] = None) -> str:
        proc = subprocess.run(
            [self.tmux, "-S", self.socket, *args],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert proc.returncode == 0, f"tmux {' '.join(args[:3])}: {proc.stderr}"
        return proc.stdout

    def wait_for(self, predicate: Callable[[], bool], message: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{message}; the screen:\n{self.screen_or_none()}")
            time.sleep(0.05)

    def screen(self) -> str:
        return self.tmux_cmd("capture-pane", "-p", "-t", "dash")

    def goodbye(self) -> str:
        """The line the dashboard prints once curses has given the terminal back (tmux's
        "Pane is dead" notice may have scrolled it into the history)."""
        self.exit_code()
        text = self.tmux_cmd("capture-pane", "-p", "-S", "-", "-t", "dash")
        found = [line for line in text.splitlines() if line.startswith("curses_dashboard: ")]
        assert found, f"no goodbye line:\n{text}"
        assert "Traceback" not in text, text
        return found[-1]

    def screen_or_none(self) -> str:
        try:
            return self.screen()
        except (AssertionError, subprocess.SubprocessError) as exc:
            return f"(no screen: {exc})"

    def wait_screen(self, predicate: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed {what}:\n{text}")
            time.sleep(0.05)

    def keys(self, *keys: str) -> None:
        self.tmux_cmd("send-keys", "-t", "dash", *keys)

    def exit_code(self) -> int:
        self.wait_for(lambda: os.path.exists(self.rc_file), "the dashboard did not exit")
        return int(open(self.rc_file).read())

    def close(self) -> None:
        if self.pid and not os.path.exists(self.rc_file):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(
            [self.tmux, "-S", self.socket, "kill-server"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
        )


@pytest.fixture
def terminal(tmp_path) -> Iterator[Terminal]:
    term = Terminal(str(tmp_path))
    try:
        yield term
    finally:
        term.close()


def lines_of(screen: str) -> List[str]:
    return [line.rstrip() for line in screen.splitlines()]


def test_docstring_and_options(capsys):
    module = importlib.import_module("reactor_mgmt.examples.curses_dashboard")
    assert module.__doc__ and len(module.__doc__.split()) > 40  # explains its loop's shape
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "--port" in usage and "--address-file" in usage


def test_without_a_terminal_it_says_so():
    proc = subprocess.run(
        [sys.executable, "-m", "reactor_mgmt.examples.curses_dashboard", "--port", "0"],
        env=child_env(),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert (proc.returncode, proc.stderr) == (2, "curses_dashboard: needs a terminal (stdin and stdout)\n")


def test_an_unknown_terminal_type_is_refused_with_a_reason():
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "reactor_mgmt.examples.curses_dashboard", "--port", "0"],
        env=child_env({"TERM": "no-such-terminal"}),
        cwd=ROOT,
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert child.before.startswith("curses_dashboard: cannot use this terminal:") and "Traceback" not in child.before


def test_the_screen_shows_what_clients_do(terminal):
    first = terminal.wait_screen(lambda s: "connections: 0 open" in s, "the dashboard")
    assert f"reactor_mgmt dashboard  {terminal.address}  up 0:00:0" in first
    assert "note: -" in first and "q quit" in lines_of(first)[-1]
    assert "info: listening on " + terminal.address in first  # the server's log, kept off the terminal

    replies = nc(terminal, "note hello from nc\nstatus\nbogus\nlevel user\nclear\n").splitlines()
    status = fields("\n".join(replies[1:9]))  # eight lines of `key: value`
    assert replies[0] == "OK" and replies[9:] == [
        "ERR unknown command 'bogus' (try 'help')",
        "user",
        "ERR permission denied: 'clear' needs operator",
    ]
    assert [status[key] for key in ("connections", "note", "commands", "keys")] == ["1", "hello from nc", "1", "0"]
    # An unknown command never ran, so only four commands count; the refused one failed.
    screen = terminal.wait_screen(lambda s: "commands: 4 (1 failed)" in s, "the commands")
    assert "note: hello from nc" in screen
    recent = [" ".join(line.split()[3:]) for line in lines_of(screen) if "  conn " in line]
    assert recent == ["denied clear", "ok level user", "ok status", "ok note hello from nc"]  # newest first

    # A connection that stays open is listed, with its port, until it leaves.
    with socket.create_connection((terminal.host, terminal.port), timeout=TIMEOUT) as held:
        port = held.getsockname()[1]
        # Waited for whole: a screen captured mid-redraw may show the count before the row.
        terminal.wait_screen(
            lambda s: (
                "connections: 1 open" in s
                and any(f"127.0.0.1:{port}" in line and line.rstrip().endswith("operator") for line in lines_of(s))
            ),
            "the open connection, listed",
        )
    terminal.wait_screen(lambda s: "connections: 0 open" in s and f":{port}" not in s, "the connection leave")

    # Keys: c clears the recent commands, n the note; status reports them to clients.
    terminal.keys("c")
    terminal.wait_screen(lambda s: "  conn " not in s and "keys: 1" in s, "the list cleared")
    terminal.keys("n")
    terminal.wait_screen(lambda s: "note: -" in s and "keys: 2" in s, "the note cleared")
    status = fields(nc(terminal, "status\n"))
    assert (status["note"], status["keys"], status["last_key"], status["recent"]) == ("-", "2", "n", "0")

    # A smaller window: the dashboard redraws to fit, the key line at its new bottom.
    terminal.tmux_cmd("resize-window", "-t", "dash", "-x", "60", "-y", "15")
    # Waited for whole, header too: a screen captured mid-redraw had the key line but not yet the
    # header (seen once in CI, under load).
    small = terminal.wait_screen(
        lambda s: len(s.splitlines()) == 15 and "q quit" in s.splitlines()[-1] and "reactor_mgmt dashboard" in s,
        "the resized dashboard",
    )
    assert max(len(line) for line in lines_of(small)) <= 60

    terminal.keys("q")
    assert terminal.exit_code() == 0
    assert terminal.goodbye() == "curses_dashboard: stopped (q) after 5 commands"


def test_the_loop_wakes_for_timers_and_left_over_work(terminal):
    # Between redraws the loop sleeps up to a second: `watch` ticks ten times as often only
    # because it never waits past server.next_deadline().
    with socket.create_connection((terminal.host, terminal.port), timeout=TIMEOUT) as sock:
        started = time.monotonic()
        sock.sendall(b"watch 0.1 ping\n")
        assert read_lines(sock, 10)[:10] == ["pong"] * 10
        assert time.monotonic() - started < 2.5  # 0.9 s; about 5 s if it waited for each redraw
    # More pipelined lines than one poll() serves (256 a connection), on a connection that then
    # stays quiet: the rest raise no socket event, so they are answered only because the loop
    # sees server.busy and polls again without waiting.
    with socket.create_connection((terminal.host, terminal.port), timeout=TIMEOUT) as sock:
        started = time.monotonic()
        sock.sendall(b"ping\n" * 1000)
        assert read_lines(sock, 1000)[:1000] == ["pong"] * 1000
        assert time.monotonic() - started < 2.5
    pipelined_pings(terminal)  # and with nc, which half-closes
    assert nc(terminal, "shutdown\n") == "closing the dashboard\n"
    assert terminal.exit_code() == 0
    assert terminal.goodbye().startswith("curses_dashboard: stopped (shutdown command) after ")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_exit_0(terminal, how):
    terminal.wait_screen(lambda s: "connections: 0 open" in s, "the dashboard")
    if how == "ctrl-c":
        terminal.keys("C-c")  # through the terminal, as a person would
    else:
        os.kill(terminal.pid, signal.SIGTERM)
    assert terminal.exit_code() == 0
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    assert terminal.goodbye() == f"curses_dashboard: stopped ({name}) after 0 commands"
