# The demo as a user meets it: its worker really finishes jobs, and `log tail` and a streaming
# command work from a plain nc session (issue 3's "works from nc").
from __future__ import annotations

import errno
import selectors
import socket
import subprocess
import sys
import time

from conftest import TIMEOUT, require_tool


def _nc(demo):
    nc = require_tool("nc.openbsd")
    return subprocess.Popen(
        [nc, demo.host, str(demo.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _read_until(proc, predicate, timeout=TIMEOUT) -> str:
    """Reads nc's stdout until predicate(text) holds; the deadline keeps the test finite."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    text = b""
    deadline = time.monotonic() + timeout
    while not predicate(text.decode(errors="replace")):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; nc printed: {text[-2000:]!r}"
        if selector.select(remaining):
            chunk = proc.stdout.read1(65536)
            assert chunk, f"nc ended early; it printed: {text[-2000:]!r}"
            text += chunk
    selector.close()
    return text.decode()


def test_log_tail_from_nc_shows_jobs_finishing_and_a_line_stops_it(demo):
    control = _nc(demo)
    tail = _nc(demo)
    try:
        control.stdin.write(b"config set tick_hz 1000\n")
        control.stdin.flush()
        assert _read_until(control, lambda t: "\n" in t) == "tick_hz: 50.0 -> 1000.0\n"
        tail.stdin.write(b"log tail\n")
        tail.stdin.flush()
        # At 1000 Hz a job needs about a second; its completion is logged at INFO.
        text = _read_until(tail, lambda t: " finished\n" in t)
        assert " INFO reactor_mgmt.demo: job 1 (backup) finished" in text
        tail.stdin.write(b"\nping\n")  # Enter stops the subscription; ping then runs
        tail.stdin.flush()
        assert _read_until(tail, lambda t: t.endswith("pong\n")).endswith("pong\n")
        control.stdin.write(b"status\n")
        control.stdin.flush()
        status = _read_until(control, lambda t: "paused:" in t)
        jobs_done = int(status.split("jobs_done:")[1].split()[0])
        assert jobs_done >= 1
    finally:
        for proc in (control, tail):
            proc.stdin.close()
            proc.terminate()
            proc.wait(timeout=TIMEOUT)


def test_a_streaming_command_from_nc_sends_every_line(demo):
    nc = require_tool("nc.openbsd")
    out = subprocess.run(
        [nc, "-N", demo.host, str(demo.port)], input=b"count 20000\nping\n", capture_output=True, timeout=TIMEOUT
    )
    lines = out.stdout.decode().splitlines()
    assert lines == [f"line {i}" for i in range(1, 20001)] + ["pong"]


def test_demo_logs_one_listening_line_and_exits_0_on_sigterm(demo):
    code, out, err = demo.stop()  # Daemon.stop sends SIGTERM
    assert code == 0
    assert err == f"listening on {demo.address}\n"
    assert out == ""


def test_demo_exits_0_on_ctrl_c(tmp_path):
    import signal

    from conftest import Daemon

    address_file = str(tmp_path / "demo.addr")
    daemon = Daemon(["-m", "reactor_mgmt", "demo", "--port", "0", "--address-file", address_file], address_file)
    daemon.proc.send_signal(signal.SIGINT)
    code, out, err = daemon.stop()
    assert code == 0
    assert "Traceback" not in err


# ---- the demo's deferred command (`wait ticks`), without a socket ----


def test_waits_are_answered_in_tick_order_then_in_the_order_asked():
    from reactor_mgmt._demo import Worker
    from reactor_mgmt._replies import Pending

    order = []

    class Recorded(Pending):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def resolve(self, value: object = None) -> None:
            order.append(self.name)
            super().resolve(value)

    worker = Worker(50.0)
    asked = [("three", 3), ("one", 1), ("two", 2), ("one again", 1), ("at once", -5)]
    pendings = [Recorded(name) for name, _ in asked]
    for (_, count), pending in zip(asked, pendings):
        worker.wait(count, pending)
    for _ in range(3):
        worker.tick()
    assert order == ["at once", "one", "one again", "two", "three"]
    assert [pending.value for pending in pendings] == ["tick %d reached" % n for n in (3, 1, 2, 1, 1)]


def test_waits_whose_clients_left_do_not_pile_up():
    # A client that asks and leaves, again and again: the waits it left are swept out (the
    # list once kept them sorted, and removed each with a scan: quadratic in the waiters).
    from reactor_mgmt._demo import Worker
    from reactor_mgmt._replies import Pending, cancel

    worker = Worker(50.0)
    kept = Pending()
    worker.wait(2, kept)
    for _ in range(1000):
        pending = Pending()
        worker.wait(10**9, pending)
        cancel(pending)
        assert len(worker.waiting) <= 3
    left = Pending()
    worker.wait(1, left)
    cancel(left)  # its tick comes while it is still in the heap: skipped, not answered
    worker.tick()
    worker.tick()
    assert kept.done and kept.value == "tick 2 reached" and not left.done
    assert worker.waiting == [] and worker.waits_cancelled == 0  # the count follows the heap
    gone = Pending()
    cancel(gone)
    worker.wait(5, gone)  # cancelled before it was asked for: nothing to wait for
    worker.tick()
    assert worker.waiting == [] and worker.waits_cancelled == 0


def test_the_demo_names_a_bad_setting_and_an_address_in_use():
    # A setting the server refuses is not an address problem: it used to say "cannot listen".
    bad = subprocess.run(
        [sys.executable, "-m", "reactor_mgmt", "demo", "--port", "0", "--max-commands-per-tick", "0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "demo: max_commands_per_tick must be an int of at least 1, not 0"
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        taken = subprocess.run(
            [sys.executable, "-m", "reactor_mgmt", "demo", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 4,
        )
    finally:
        holder.close()
    assert taken.returncode == 2
    assert f"demo: cannot start: [Errno {errno.EADDRINUSE}] cannot listen on 127.0.0.1:{port}" in taken.stderr


def test_the_demo_keeps_an_audit_log_with_audit(tmp_path):
    # The README's audit example, run against the demo as it says: the records come back from
    # `audit`, with the secrets masked, and go to the demo's log.
    from conftest import Daemon

    address_file = str(tmp_path / "demo.addr")
    daemon = Daemon(
        ["-m", "reactor_mgmt", "demo", "--port", "0", "--address-file", address_file]
        + ["--level", "admin", "--token", "s3cr3t", "--audit"],
        address_file,
    )
    try:
        nc = require_tool("nc.openbsd")
        done = subprocess.run(
            [nc, "-N", daemon.host, str(daemon.port)],
            input=b"auth nope\nauth s3cr3t\njob cancel 3 --force\naudit 3\n",
            capture_output=True,
            timeout=TIMEOUT,
        )
        lines = done.stdout.decode().splitlines()
        assert lines[:3] == ["ERR authentication failed", "OK", "cancelled job 3"]
        assert lines[3].startswith("audit: 3 of the last 1000 records")
        rows = [line.split() for line in lines[5:]]
        assert [(row[6:-2], row[-2]) for row in rows] == [
            (["auth", "***"], "denied"),
            (["auth", "***"], "ok"),
            (["job", "cancel", "3", "--force"], "ok"),
        ]
    finally:
        code, out, err = daemon.stop()
    assert code == 0
    assert "outcome=ok ms=" in err and "command=job cancel 3 --force" in err
    assert "s3cr3t" not in err
