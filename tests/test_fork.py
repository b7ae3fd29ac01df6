# Fork safety (issue 19): a child inherits the server's epoll descriptor, listening sockets and
# client connections. Whatever the child does with the server (close() from a cleanup routine,
# `with server:`), the parent must keep serving: its connections, its Unix socket file and its
# TCP listener. The child's copies are closed at the fork, and its poll() says why it cannot run.
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List

import pytest

import reactor_mgmt
from conftest import IN_CI, TIMEOUT, RawClient, child_env, free_port, require_tool

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _wait_child(pid: int) -> int:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8
        time.sleep(0.01)
    os.kill(pid, 9)
    raise AssertionError("the child did not exit")


def test_a_child_closing_the_server_leaves_the_parent_serving(tmp_path):
    path = str(tmp_path / "mgmt.sock")
    server = reactor_mgmt.Server("127.0.0.1", 0, unix=path)
    try:
        before = RawClient(server)  # a connection the parent opened before the fork
        assert before.request("ping") == ["pong"]
        pid = os.fork()
        if pid == 0:  # the child: what a cleanup routine or `with server:` does
            code = 0
            try:
                with server:
                    pass
                server.close()
                try:
                    server.poll(0)
                    code = 3  # poll() must refuse
                except reactor_mgmt.ReactorMgmtError as exc:
                    code = 0 if "forked" in str(exc) else 4
            except BaseException:
                code = 5
            os._exit(code)
        assert _wait_child(pid) == 0
        assert before.request("ping") == ["pong"]  # the parent's reply still arrives
        assert os.path.exists(path)  # the child did not unlink the parent's socket file
        unix_client = RawClient(server, path)
        assert unix_client.request("ping") == ["pong"]
        tcp_client = RawClient(server)  # the TCP listener still accepts
        assert tcp_client.request("echo still here") == ["still here"]
        for client in (before, unix_client, tcp_client):
            client.close()
    finally:
        server.close()
    assert not os.path.exists(path)


def _pool_host(port: int, ready, stop) -> None:
    server = reactor_mgmt.Server("127.0.0.1", port)
    pool = multiprocessing.get_context("fork").Pool(2)
    pool.apply(os.getpid)  # the workers exist
    ready.set()
    stop.wait(TIMEOUT)
    server.close()
    os._exit(0)  # the host exits; its pool's workers live on for a moment, as orphans do


def test_a_forked_pool_does_not_keep_the_port_bound():
    port = free_port()
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    host = ctx.Process(target=_pool_host, args=(port, ready, stop))
    host.start()
    try:
        assert ready.wait(TIMEOUT)
        ss = shutil.which("ss") or (require_tool("ss") if IN_CI else None)  # a missing ss fails under CI
        if ss:  # only the host owns the listening socket while its workers live
            out = subprocess.run(
                [ss, "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=TIMEOUT
            ).stdout
            pids = {
                int(part.split("=")[1].rstrip(",)"))
                for part in out.split()
                for part in part.split(",")
                if part.startswith("pid=")
            }
            assert pids == {host.pid}, out
        stop.set()
        host.join(TIMEOUT)
        # A new host binds the same port at once, however long the old host's workers live.
        again = reactor_mgmt.Server("127.0.0.1", port)
        client = RawClient(again)
        assert client.request("ping") == ["pong"]
        client.close()
        again.close()
    finally:
        stop.set()
        host.join(TIMEOUT)
        if host.is_alive():
            host.kill()


def test_a_child_process_poll_explains_itself():
    code = (
        "import os, sys, reactor_mgmt\n"
        "s = reactor_mgmt.Server('127.0.0.1', 0)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        s.poll(0)\n"
        "    except reactor_mgmt.ReactorMgmtError as exc:\n"
        "        print(exc, flush=True)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "s.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
    assert "belongs to process" in out.stdout and "forked process" in out.stdout, (out.stdout, out.stderr)


def test_after_fork_relisten_gives_the_child_a_socket_of_its_own(tmp_path):
    template = str(tmp_path / "mgmt.{pid}.addr")
    server = reactor_mgmt.Server("127.0.0.1", 0, after_fork="relisten", address_file=template)
    try:
        assert os.path.exists(template.replace("{pid}", str(os.getpid())))
        pid = os.fork()
        if pid == 0:  # the child serves its own socket for a while
            code = 0
            try:
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not os.path.exists(str(tmp_path / "done")):
                    server.poll(0.02)
                server.close()
            except BaseException:
                code = 7
            os._exit(code)
        child_file = template.replace("{pid}", str(pid))
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(child_file):
            assert time.monotonic() < deadline, "the child wrote no address file"
            server.poll(0.01)
        host, _, port = open(child_file).read().split()[0].rpartition(":")
        assert int(port) != server.port  # a socket of its own, not the parent's
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
            sock.sendall(b"ping\n")
            assert sock.recv(100) == b"pong\n"
        parent = RawClient(server)  # and the parent still serves its own
        assert parent.request("ping") == ["pong"]
        parent.close()
        open(str(tmp_path / "done"), "w").close()
        assert _wait_child(pid) == 0
        assert not os.path.exists(child_file)  # the child removed its own file, not the parent's
        assert os.path.exists(template.replace("{pid}", str(os.getpid())))
    finally:
        server.close()


def test_a_child_forked_inside_a_handler_runs_none_of_the_parents_queued_requests(tmp_path):
    # The pre-fork worker pattern: a handler forks, and the child returns through the session's
    # loop. With after_fork="relisten" the child gets a socket of its own, but the requests queued
    # on the parent's connection must run in the parent only.
    marks = str(tmp_path / "marks")
    server = reactor_mgmt.Server("127.0.0.1", 0, after_fork="relisten")
    parent = os.getpid()

    @server.command
    def spawn() -> str:
        return "child" if os.fork() == 0 else "forked"

    @server.command
    def mark() -> str:
        with open(marks, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return "marked"

    try:
        client = socket.create_connection(server.addresses[0], timeout=TIMEOUT)
        client.sendall(b"spawn\nmark\n")
        client.settimeout(0.05)
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while data.count(b"\n") < 2:
            assert time.monotonic() < deadline, data
            server.poll(0.05)
            if os.getpid() != parent:  # the child: stop here, whatever it was about to do
                os._exit(0)
            try:
                data += client.recv(4096)
            except socket.timeout:
                pass
        assert data == b"forked\nmarked\n"
        time.sleep(0.2)  # a child that ran `mark` would have written by now
        assert open(marks).read().split() == [str(parent)]
        client.close()
    finally:
        if os.getpid() == parent:
            server.close()
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


def test_a_relistening_child_keeps_the_toolkits_watches_on_poll(tmp_path):
    # The stall watchdog and the gap watch live on the loop, which the child makes anew: they
    # were left on the parent's, and the child's poll() measured no gap and watched no stall.
    server = reactor_mgmt.Server("127.0.0.1", 0, after_fork="relisten")
    server.add_toolkit("gap", stall_after=30.0, stall_file=str(tmp_path / "stalls"))
    try:
        server.poll(0)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                server.poll(0)
                time.sleep(0.05)
                server.poll(0)  # after a gap of at least 50 ms in the host's loop
                watched = server._loop.watch is not None
                code = 0 if watched and server.stats.poll_gap_max >= 0.04 else 6
                server.close()
            except BaseException:
                code = 7
            os._exit(code)
        assert _wait_child(pid) == 0
    finally:
        server.close()


def _child_status(pid: int) -> int:
    """The child's exit code, or minus the signal that killed it (its alarm: it hung)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    raise AssertionError("the child did not exit")


def test_a_child_forked_while_a_host_watchdog_is_armed_polls(tmp_path):
    # faulthandler's watchdog thread is not in the child, but its lock is: a child that cancels
    # or arms it hangs. The stall watch does both in every poll(); the fork hook cancels it first.
    import faulthandler

    server = reactor_mgmt.Server("127.0.0.1", 0, after_fork="relisten")
    server.add_toolkit("gap", stall_after=30.0, stall_file=str(tmp_path / "stalls"))
    try:
        server.poll(0)
        faulthandler.dump_traceback_later(600, exit=False)  # the host's own frame watchdog
        pid = os.fork()
        if pid == 0:
            signal.alarm(5)  # kills the child if poll() hangs
            server.poll(0)
            server.poll(0)
            os._exit(0)
        assert _child_status(pid) == 0
    finally:
        faulthandler.cancel_dump_traceback_later()
        server.close()


# The fork this test is about is one in a process with threads (faulthandler's watchdog, or
# the host's own): Python 3.12+ warns of it.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_by_a_handler_with_the_stall_watch_on_polls(tmp_path):
    # The pre-fork worker: the child returns through the parent's poll(), whose watchdog was
    # armed for the handler as it forked.
    server = reactor_mgmt.Server("127.0.0.1", 0, after_fork="relisten")
    server.add_toolkit("gap", stall_after=30.0, stall_file=str(tmp_path / "stalls"))
    parent = os.getpid()

    @server.command
    def spawn() -> str:
        if os.fork() == 0:
            signal.alarm(5)  # kills the child if a poll() hangs
            return "child"
        return "forked"

    try:
        client = RawClient(server)
        client.send(b"spawn\n")
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in client.buffer and time.monotonic() < deadline:
            try:
                server.poll(0.05)
            finally:
                if os.getpid() != parent:  # the child, out of the parent's poll(): never back to pytest
                    code = 0
                    try:
                        server.poll(0)
                    except BaseException:
                        code = 3
                    os._exit(code)
            client._drain()
        assert client.buffer == b"forked\n"
        _, status = os.wait()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        server.close()


# The fork this test is about is one in a process with threads (faulthandler's watchdog, or
# the host's own): Python 3.12+ warns of it.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_by_another_thread_while_a_handler_runs_serves():
    # The thread in poll() is not in the child: its relistened server must not think it is
    # still inside poll() (every poll() with work raised "called from inside a command handler").
    server = reactor_mgmt.Server("127.0.0.1", 0, after_fork="relisten")
    started, forked = threading.Event(), threading.Event()
    child: List[int] = []

    @server.command
    def slow() -> str:
        started.set()
        forked.wait(TIMEOUT)
        return "ok"

    def forker() -> None:
        started.wait(TIMEOUT)
        pid = os.fork()
        if pid == 0:
            signal.alarm(5)
            code = 9
            try:
                with socket.create_connection(server.addresses[0], timeout=TIMEOUT) as sock:
                    sock.sendall(b"ping\n")
                    sock.settimeout(0.01)
                    data = b""
                    deadline = time.monotonic() + 3
                    while b"\n" not in data and time.monotonic() < deadline:
                        server.poll(0.01)
                        try:
                            data += sock.recv(100)
                        except socket.timeout:
                            pass
                    code = 0 if data == b"pong\n" else 8
            except BaseException:
                code = 7
            os._exit(code)
        child.append(pid)
        forked.set()

    try:
        client = RawClient(server)
        client.send(b"slow\n")
        thread = threading.Thread(target=forker)
        thread.start()
        assert client.lines(1) == ["ok"]  # the handler returns once the thread has forked
        thread.join(TIMEOUT)
        assert child and _child_status(child[0]) == 0
    finally:
        server.close()


def test_a_timer_handle_made_before_a_fork_cancels_the_relistening_childs_timer():
    # The child's new loop takes the server's timers over (adopt_timers), and the handles with
    # them: a cancel() in the child must reach the child's timer, and leave the parent's be.
    server = reactor_mgmt.Server("127.0.0.1", 0, after_fork="relisten")
    fired: List[str] = []
    try:
        handle = server.call_later(0.2, fired.append, "timer")
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                handle.cancel()
                if any(timer[2] is not None for timer in server._loop.timers):
                    code = 8  # the child's timer is still armed
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:
                    server.poll(0.05)
                if fired:
                    code = 9
                server.close()
            except BaseException:
                code = 11
            os._exit(code)
        assert _wait_child(pid) == 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not fired:
            server.poll(0.05)
        assert fired == ["timer"]  # the parent's runs
    finally:
        server.close()


def test_a_relistening_child_keeps_the_servers_timers(tmp_path):
    # A timed `log level` reverts through the server's call_later: the child inherits the level
    # (the logging module is copied with the process) and used to keep it for good, as the
    # revert was left on the parent's loop. The host's own call_later timers came with it.
    import logging

    name = f"reactor_mgmt_fork_test_{os.getpid()}"
    logging.getLogger(name).setLevel(logging.WARNING)
    server = reactor_mgmt.Server("127.0.0.1", 0, level="admin", after_fork="relisten")
    server.add_toolkit("log")
    fired: List[str] = []
    client = None
    try:
        client = RawClient(server)
        assert client.request(f"log level {name} DEBUG --for 0.3")[0].endswith("then WARNING")
        server.call_later(0.2, fired.append, "host")
        # The idle reaper's timer for the connection is the parent's: it stays behind.
        assert any(len(timer) == 4 and timer[2] is not None for timer in server._loop.timers)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if logging.getLogger(name).level != logging.DEBUG:
                    code = 8
                elif any(len(timer) != 5 for timer in server._loop.timers if timer[2] is not None):
                    code = 9  # only the server's timers (kept) are in the child's new loop
                else:
                    deadline = time.monotonic() + 3.0
                    while time.monotonic() < deadline and (
                        logging.getLogger(name).level != logging.WARNING or fired != ["host"]
                    ):
                        server.poll(0.05)
                    code = 0 if logging.getLogger(name).level == logging.WARNING and fired == ["host"] else 10
                server.close()
            except BaseException:
                code = 11
            os._exit(code)
        assert _wait_child(pid) == 0
        deadline = time.monotonic() + 3.0  # and the parent's own revert and timer still run
        while time.monotonic() < deadline and (logging.getLogger(name).level != logging.WARNING or not fired):
            server.poll(0.05)
        assert logging.getLogger(name).level == logging.WARNING
        assert fired == ["host"]
    finally:
        if client is not None:
            client.close()
        server.close()
        logging.getLogger(name).setLevel(logging.NOTSET)
