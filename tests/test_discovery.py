# Discovery: one file per registered process in a private directory, `reactor-mgmt ls` and
# `reactor-mgmt --app NAME CMD`, against real servers in worker processes of their own.
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest

import reactor_mgmt
from conftest import ROOT, TIMEOUT, ServerThread, child_env
from reactor_mgmt import _discovery
from reactor_mgmt._discovery import DiscoveryError, directory, instances, pick_address, register, unregister
from reactor_mgmt._errors import CommandError
from test_cli import run_cli

WORKER = r"""
import os, signal, sys
import reactor_mgmt
from reactor_mgmt._discovery import register, unregister

name, token, unix = sys.argv[1], sys.argv[2] or None, sys.argv[3] or None
srv = reactor_mgmt.Server("127.0.0.1", 0, token=token, unix=unix)
srv.add_command("whoami", lambda: {"name": name, "pid": os.getpid()})

def stop(signum, frame):
    raise SystemExit(0)

signal.signal(signal.SIGTERM, stop)
path = register(name, os.getpid(), srv.addresses, srv.stats.started, srv.auth_required)
print(path, flush=True)
try:
    srv.serve_forever()
finally:
    unregister(path)
    srv.close()
"""


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch) -> Path:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


class Worker:
    def __init__(self, name: str, token: str = "", unix: str = "") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, name, token, unix],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=ROOT,
        )
        self.path = self.proc.stdout.readline().strip()  # written once it is registered
        assert self.path, self.proc.stderr.read()
        self.pid = self.proc.pid

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.communicate(timeout=TIMEOUT)


@pytest.fixture
def workers(tmp_path) -> Iterator[List[Worker]]:
    started = [
        Worker("myapp"),
        Worker("myapp", token="t0k"),
        Worker("myapp", unix=str(tmp_path / "w.sock")),
        Worker("other"),
    ]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


# ---- the directory ----


def test_register_writes_a_private_file_in_a_private_directory(runtime_dir):
    path = register(
        "my app/1", 4242, [("127.0.0.1", 8123), ("::1", 8124, 0, 0), "/run/app.sock"], 1700000000.5, True, tls=True
    )
    folder = runtime_dir / "reactor_mgmt"
    assert path == str(folder / "my_app_1.4242.json")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(Path(path).read_text()) == {
        "name": "my app/1",
        "pid": 4242,
        "addresses": ["127.0.0.1:8123", "[::1]:8124", "/run/app.sock"],
        "started": 1700000000.5,
        "token": True,
        "tls": True,
    }
    assert os.listdir(folder) == ["my_app_1.4242.json"]  # no temporary file left behind


def test_two_servers_of_one_process_with_one_name_are_both_found(runtime_dir):
    # One file per process and name: the second server's replaced the first's, so only one
    # was listed, and closing the second unlisted both.
    first = reactor_mgmt.Server("127.0.0.1", 0, name="twin", discover=True)
    second = reactor_mgmt.Server("127.0.0.1", 0, name="twin", discover=True)
    try:
        found = instances("twin")
        assert sorted(instance.addresses[0] for instance in found) == sorted(
            f"127.0.0.1:{server.port}" for server in (first, second)
        )
        assert sorted(os.path.basename(instance.path) for instance in found) == [
            f"twin.{os.getpid()}.2.json",
            f"twin.{os.getpid()}.json",
        ]
        second.close()
        assert [instance.addresses[0] for instance in instances("twin")] == [f"127.0.0.1:{first.port}"]
    finally:
        first.close()
        second.close()
    assert instances("twin") == []


def test_a_listener_added_later_is_published_in_the_discovery_file(runtime_dir, tmp_path):
    # The entry was written once, in the constructor: a server made with no listener, then
    # given a Unix socket (the systemd or privileged-bind paths), was listed with no address,
    # though its address file had the socket. With two of one name, each keeps its own file.
    unix = str(tmp_path / "app.sock")
    first = reactor_mgmt.Server(None, None, name="later", discover=True)
    second = reactor_mgmt.Server("127.0.0.1", 0, name="later", discover=True)
    try:
        assert [instance.addresses for instance in instances("later")] == [[f"127.0.0.1:{second.port}"]]
        first.listen_unix(unix)
        first.listen_tcp("127.0.0.1", 0)
        found = {os.path.basename(instance.path): instance.addresses for instance in instances("later")}
        assert found == {
            f"later.{os.getpid()}.2.json": [unix, f"127.0.0.1:{first.port}"],
            f"later.{os.getpid()}.json": [f"127.0.0.1:{second.port}"],
        }
    finally:
        first.close()
        second.close()
    assert instances("later") == []


def test_a_later_listener_that_cannot_be_published_still_serves_and_says_so(runtime_dir, tmp_path, caplog):
    # Its publishing raised after it was bound and serving: listen_unix() failed with the
    # listener left up, and listen_fd() detached a socket still registered (poll() spun).
    server = reactor_mgmt.Server("127.0.0.1", 0, name="half", discover=True)
    try:
        os.chmod(runtime_dir / "reactor_mgmt", 0o755)  # the directory is no longer safe
        unix = str(tmp_path / "later.sock")
        with caplog.at_level(logging.ERROR, logger="reactor_mgmt"):
            assert server.listen_unix(unix) == unix
        assert unix in server.addresses
        assert any("could not be published" in record.getMessage() for record in caplog.records)
        extra = socket.socket()
        extra.bind(("127.0.0.1", 0))
        extra.listen()
        port = extra.getsockname()[1]
        assert server.listen_fd(extra.detach()) == ("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(b"ping\n")
            deadline = time.monotonic() + TIMEOUT
            reply = b""
            client.setblocking(False)
            while not reply.endswith(b"\n"):
                assert time.monotonic() < deadline
                server.poll(0.01)
                try:
                    reply += client.recv(100)
                except BlockingIOError:
                    pass
            assert reply == b"pong\n"
    finally:
        server.close()


def test_directory_falls_back_to_tmp(monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert directory() == f"/tmp/reactor_mgmt-{os.getuid()}"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")  # the spec says to ignore it
    assert directory() == f"/tmp/reactor_mgmt-{os.getuid()}"


def test_an_unsafe_directory_is_refused(runtime_dir, tmp_path):
    folder = runtime_dir / "reactor_mgmt"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o755)
    with pytest.raises(DiscoveryError, match="mode 0755: others may read or write it"):
        register("app", os.getpid(), [], time.time(), False)
    with pytest.raises(DiscoveryError, match="mode 0755"):
        instances()
    proc = run_cli("ls")
    assert proc.returncode == 2 and proc.stderr.startswith("reactor-mgmt: discovery directory")
    folder.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    folder.symlink_to(elsewhere)  # a planted symlink is not our directory
    with pytest.raises(DiscoveryError, match="is not a directory"):
        register("app", os.getpid(), [], time.time(), False)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give the directory away")
def test_a_directory_owned_by_someone_else_is_refused(runtime_dir):
    folder = runtime_dir / "reactor_mgmt"
    folder.mkdir(mode=0o700)
    os.chown(folder, 12345, -1)
    with pytest.raises(DiscoveryError, match="owned by uid 12345"):
        register("app", os.getpid(), [], time.time(), False)


def test_stale_and_foreign_files(runtime_dir):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(gone.stdout)
    stale = register("app", dead_pid, [("127.0.0.1", 1)], time.time(), False)
    live = register("app", os.getpid(), [("127.0.0.1", 2)], 123.0, False)
    folder = Path(live).parent
    (folder / "notes.txt").write_text("not ours")
    (folder / "broken.1.json").write_text("{not json")
    (folder / ".half.1.tmp").write_text("{}")
    found = instances()
    assert [(i.name, i.pid, i.addresses, i.started) for i in found] == [("app", os.getpid(), ["127.0.0.1:2"], 123.0)]
    assert not os.path.exists(stale)  # cleaned on the way
    assert (folder / "broken.1.json").exists() and (folder / "notes.txt").exists()  # left alone
    assert instances("nope") == []
    assert unregister(live) and instances() == []
    assert unregister(live) is False  # already gone


def test_unregister_removes_only_our_own_file(runtime_dir):
    path = register("app", os.getpid(), [], time.time(), False)
    # A forked child inherits the registration but must not delete its parent's file.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if unregister(path) is False else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0 and os.path.exists(path)
    # Replaced by someone else since (another inode): not ours any more.
    os.unlink(path)
    Path(path).write_text(json.dumps({"name": "app", "pid": os.getpid(), "addresses": []}))
    assert unregister(path) is False and os.path.exists(path)
    # Re-registering rewrites the same file, which is then ours again.
    assert register("app", os.getpid(), [("127.0.0.1", 9)], time.time(), False) == path
    assert unregister(path) is True and not os.path.exists(path)


def test_pick_address_prefers_a_unix_socket():
    class Entry:
        addresses = ["127.0.0.1:1", "/run/a.sock"]

    assert pick_address(Entry) == "/run/a.sock"
    Entry.addresses = ["[::1]:5", "127.0.0.1:1"]
    assert pick_address(Entry) == "[::1]:5"
    Entry.addresses = []
    assert pick_address(Entry) is None


def test_default_name(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/worker.py", "--flag"])
    assert _discovery.default_name() == "worker"
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert _discovery.default_name() == "python"


# ---- the CLI, against live workers ----


def test_ls_lists_live_instances(workers):
    proc = run_cli("ls")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["name", "pid", "addresses", "started", "token"]
    rows = {int(line.split()[1]): line for line in lines[1:]}
    assert sorted(rows) == sorted(worker.pid for worker in workers)
    assert rows[workers[1].pid].split()[-1] == "yes" and rows[workers[0].pid].split()[-1] == "no"
    assert rows[workers[0].pid].split()[0] == "myapp" and rows[workers[3].pid].split()[0] == "other"
    assert str(workers[2].path) not in proc.stdout and "w.sock" in rows[workers[2].pid]

    listed = [json.loads(line) for line in run_cli("--json", "ls", "other").stdout.splitlines()]
    assert [(entry["name"], entry["pid"]) for entry in listed] == [("other", workers[3].pid)]
    assert listed[0]["addresses"][0].startswith("127.0.0.1:")
    # `ls --json` as well: it was taken for a name, and nothing was listed
    assert [json.loads(line) for line in run_cli("ls", "--json", "other").stdout.splitlines()] == listed

    workers[3].stop(signal.SIGKILL)  # dies without unregistering: its file is stale
    assert os.path.exists(workers[3].path)
    proc = run_cli("ls")
    assert str(workers[3].pid) not in proc.stdout and not os.path.exists(workers[3].path)


def test_app_fans_out_to_every_instance_of_a_name(workers):
    proc = run_cli("--app", "myapp", "--token", "t0k", "--json", "whoami")
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    myapp = sorted(worker.pid for worker in workers[:3])
    assert sorted(reply["result"]["pid"] for reply in replies) == myapp
    assert sorted(reply["endpoint"] for reply in replies) == [f"myapp[{pid}]" for pid in myapp]
    assert proc.stderr == "3 ok, 0 errors, 0 unreachable\n"

    one = run_cli("--app", "other", "whoami")
    assert one.returncode == 0 and f"pid:  {workers[3].pid}" in one.stdout  # one instance: no prefixes

    none = run_cli("--app", "nosuch", "ping")
    assert none.returncode == 2 and none.stderr.startswith("reactor-mgmt: no live instance of 'nosuch'")

    # `ls` after an endpoint is the server's own command, not the listing.
    theirs = run_cli("--app", "other", "ls")
    assert theirs.returncode == 1 and theirs.stderr.startswith("ERR unknown command 'ls'")


def test_a_worker_removes_its_file_when_it_stops(workers):
    workers[0].stop()
    assert not os.path.exists(workers[0].path)
    assert workers[0].pid not in [instance.pid for instance in instances()]


def test_ls_with_nothing_registered(runtime_dir):
    proc = run_cli("ls")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "no live instances\n")
    assert run_cli("--json", "ls").stdout == ""


FORKING_HOST = r"""
import os, signal, sys, time
import reactor_mgmt

srv = reactor_mgmt.Server("127.0.0.1", 0, name="forkapp", discover=True, after_fork="relisten")
srv.add_command("whoami", lambda: {"pid": os.getpid()})
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
children = []
for _ in range(2):  # a pre-fork host: each worker gets a socket and a discovery entry of its own
    pid = os.fork()
    if pid == 0:
        try:
            srv.serve_forever()
        finally:
            srv.close()
            os._exit(0)
    children.append(pid)
print(" ".join(map(str, [os.getpid()] + children)), flush=True)
try:
    srv.serve_forever()
finally:
    for pid in children:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    srv.close()
"""


def test_app_asks_a_forking_host_and_every_worker_at_once(runtime_dir):
    # Fork safety and discovery together: Server(name=, discover=True, after_fork="relisten").
    host = subprocess.Popen(
        [sys.executable, "-c", FORKING_HOST],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )
    try:
        pids = sorted(map(int, host.stdout.readline().split()))
        assert len(pids) == 3, host.stderr.read()
        deadline = time.monotonic() + TIMEOUT
        while len(list(runtime_dir.glob("reactor_mgmt/forkapp.*.json"))) < 3:
            assert time.monotonic() < deadline, "the workers did not register"
            time.sleep(0.05)
        proc = run_cli("--app", "forkapp", "--json", "whoami")
        assert proc.returncode == 0, proc.stderr
        assert sorted(json.loads(line)["result"]["pid"] for line in proc.stdout.splitlines()) == pids
    finally:
        host.terminate()
        host.communicate(timeout=TIMEOUT)
    assert list(runtime_dir.glob("reactor_mgmt/forkapp.*.json")) == []  # each removed its own file


@pytest.mark.parametrize(
    "started",
    ["1e300", "1" + "0" * 400, "NaN", "-5", '"yesterday"'],
    ids=["1e300", "400-digits", "NaN", "negative", "string"],
)
def test_a_start_time_out_of_range_is_a_bad_record_not_a_crash(runtime_dir, started):
    # 1e300 overflowed localtime() in `ls`, a 400-digit int overflowed float() in instances().
    good = register("app", os.getpid(), [("127.0.0.1", 2)], 123.0, False)
    folder = Path(good).parent
    record = json.loads(Path(good).read_text())
    bad = folder / f"bad.{os.getpid()}.json"
    bad.write_text(json.dumps({**record, "name": "bad"}).replace('"started": 123.0', f'"started": {started}'))
    assert f'"started": {started}' in bad.read_text()
    assert [instance.name for instance in instances()] == ["app"]
    assert bad.exists()  # not ours to remove: left alone, like other unreadable records
    proc = run_cli("ls")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == ["app"]


def test_ls_shows_a_start_time_localtime_cannot_take(monkeypatch, capsys):
    from reactor_mgmt._cli import main

    record = _discovery.Instance("app", os.getpid(), ["127.0.0.1:2"], 1e300, False, False, "/nowhere")
    monkeypatch.setattr(_discovery, "instances", lambda name=None: [record])
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:2] == ["app", str(os.getpid())] and " ? " in out


def test_app_labels_two_servers_of_one_process_with_one_name_apart(runtime_dir):
    # Both were labelled twin[PID], and the fan-out kept one outcome for the two: `2 ok`, exit 0
    # though one answered ERR.
    first = reactor_mgmt.Server("127.0.0.1", 0, name="twin", discover=True)
    second = reactor_mgmt.Server("127.0.0.1", 0, name="twin", discover=True)
    first.add_command("who", lambda: "first")

    @second.command
    def who() -> str:
        raise CommandError("second fails")

    pid = os.getpid()
    assert [_discovery.label(instance) for instance in instances("twin")] == [f"twin[{pid}.2]", f"twin[{pid}]"]
    with ServerThread(first, second):
        proc = run_cli("--app", "twin", "who")
    assert proc.stdout == f"twin[{pid}]: first\n", proc.stderr
    assert proc.stderr == f"twin[{pid}.2]: ERR second fails\n1 ok, 1 error, 0 unreachable\n"
    assert proc.returncode == 1


@pytest.mark.parametrize("name", ["app", "app.2", "my app/1", "x.9"])
def test_the_label_of_an_instance_names_its_copy_whatever_its_name(runtime_dir, name):
    paths = [register(name, 2, [("127.0.0.1", port)], time.time(), False, unique=True) for port in (1, 2, 3)]
    try:
        labels = {
            path: _discovery.label(_discovery._instance(json.loads(Path(path).read_text()), path)) for path in paths
        }
        assert [labels[path] for path in paths] == [f"{name}[2]", f"{name}[2.2]", f"{name}[2.3]"]
    finally:
        for path in paths:
            os.unlink(path)
            _discovery._written.pop(path, None)


# ---- a pid that another process has taken since ----

REGISTER_AND_DIE = r"""
import sys, time
from reactor_mgmt._discovery import register
print(register("reused", __import__("os").getpid(), [sys.argv[1]], time.time(), True), flush=True)
"""


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.DEVNULL)


def _left_behind(address: str) -> subprocess.Popen:
    """A server's file left behind (it died without removing it), its pid since taken by a
    process started after it: that process, which the caller stops."""
    proc = subprocess.run(
        [sys.executable, "-c", REGISTER_AND_DIE, address],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=TIMEOUT,
        check=True,
    )
    old = proc.stdout.strip()
    record = json.loads(Path(old).read_text())
    os.unlink(old)
    time.sleep(0.1)  # start times are in clock ticks (10 ms): the next process starts in a later one
    other = _sleeper()
    record["pid"] = other.pid
    (Path(old).parent / f"reused.{other.pid}.json").write_text(json.dumps(record))
    return other


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start times come from /proc")
def test_a_file_whose_pid_another_process_took_since_is_stale(runtime_dir):
    # The file was trusted while its pid existed: `--app` sent the command and an HMAC proof
    # (over a Unix socket, the token itself) to whoever held the recorded address by then.
    impostor = socket.socket()
    impostor.bind(("127.0.0.1", 0))
    impostor.listen(1)
    impostor.setblocking(False)
    other = _left_behind("127.0.0.1:%d" % impostor.getsockname()[1])
    path = os.path.join(directory(), f"reused.{other.pid}.json")
    try:
        recorded = json.loads(Path(path).read_text())
        proc = run_cli("--app", "reused", "--token", "T0KEN", "--timeout", "1", "stats")
        with pytest.raises(BlockingIOError):
            impostor.accept()  # nobody came
        assert proc.returncode == 2 and "no live instance of 'reused'" in proc.stderr
        assert instances() == [] and not os.path.exists(path)  # removed on the way
        assert "proc_start" in recorded and "boot_id" in recorded  # what told them apart
    finally:
        other.kill()
        other.wait()
        impostor.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start times come from /proc")
def test_a_file_without_the_process_start_is_checked_by_the_wall_clock(runtime_dir):
    # An older writer's file: a process that began after the file's "started" did not write it.
    other = _sleeper()
    try:
        time.sleep(0.2)
        folder = Path(register("mine", os.getpid(), [("127.0.0.1", 1)], time.time(), False)).parent
        for pid, started in ((os.getpid(), time.time()), (other.pid, time.time() - 60)):
            record = {"name": "old", "pid": pid, "addresses": ["127.0.0.1:2"], "started": started}
            (folder / f"old.{pid}.json").write_text(json.dumps(record))
        found = {(instance.name, instance.pid): instance.verified for instance in instances()}
        assert found == {("mine", os.getpid()): True, ("old", os.getpid()): True}
        assert (folder / f"old.{other.pid}.json").exists()  # skipped, not removed: the clock may have moved
    finally:
        other.kill()
        other.wait()


def _without_boot_id(monkeypatch) -> None:
    real = _discovery._read_proc
    monkeypatch.setattr(_discovery, "_read_proc", lambda path: None if path.endswith("boot_id") else real(path))


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start times come from /proc")
@pytest.mark.parametrize("side", ["writer", "reader"])
def test_a_relistening_childs_file_is_found_where_the_boot_id_cannot_be_read(runtime_dir, monkeypatch, side):
    # A relistening forked child registers with its parent's Server, whose "started" is older
    # than the child: where the boot id could not be read (by the writer or the reader), the
    # wall clock was asked instead, and the live child's file was skipped as another process's.
    began = _discovery._start_time(os.getpid())
    assert began is not None
    with monkeypatch.context() as patched:
        if side == "writer":
            _without_boot_id(patched)
        path = register("child", os.getpid(), [("127.0.0.1", 1)], began - 60, False)
    if side == "reader":
        _without_boot_id(monkeypatch)
    try:
        assert [(instance.pid, instance.verified) for instance in instances("child")] == [(os.getpid(), True)]
        if side == "writer":
            assert "proc_start" in json.loads(Path(path).read_text())  # recorded all the same
    finally:
        unregister(path)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start times come from /proc")
def test_the_wall_clock_check_uses_when_the_writer_wrote_its_file_not_its_servers_start(runtime_dir, monkeypatch):
    # A writer that could not read its own start ticks: the reader compares the wall clock with
    # the time the file was written ("registered"), which follows the writer's start, not with
    # "started", which for a relistening child is its parent's.
    began = _discovery._start_time(os.getpid())
    assert began is not None
    with monkeypatch.context() as patched:
        patched.setattr(_discovery, "_proc_stat", lambda pid: [])
        path = register("child", os.getpid(), [("127.0.0.1", 1)], began - 60, False)
    try:
        assert "proc_start" not in json.loads(Path(path).read_text())
        assert [(instance.pid, instance.verified) for instance in instances("child")] == [(os.getpid(), True)]
    finally:
        unregister(path)


def test_instances_of_one_name_read_no_proc_for_other_names(runtime_dir, monkeypatch):
    # `--app NAME` checked every app's files against /proc (500 of them: 6 ms to 26 ms) before
    # keeping NAME's; another app's stale file is left for `ls`, which checks them all.
    paths = [register(f"other{n}", os.getpid(), [("127.0.0.1", n + 1)], time.time(), False) for n in range(5)]
    mine = register("mine", os.getpid(), [("127.0.0.1", 9)], time.time(), False)
    reads: List[object] = []
    real = _discovery._proc_stat
    monkeypatch.setattr(_discovery, "_proc_stat", lambda pid: reads.append(pid) or real(pid))
    assert instances("nosuch") == [] and reads == []
    assert [instance.name for instance in instances("mine")] == ["mine"]
    assert set(reads) == {os.getpid()}
    for path in [*paths, mine]:
        unregister(path)


# A directory shared between PID namespaces (containers): simulated by the namespace the writer
# records; the real thing (unshare --pid) is too much for a test to require.

ANOTHER_NAMESPACE = "pid:[4000000001]"


def _ticks_of(pid: object) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[19])


def _written_in(namespace: str, pid: int, monkeypatch) -> Path:
    """A live server's file as a writer in ``namespace`` leaves it, its pid ``pid`` (what that
    pid means here is another matter)."""
    with monkeypatch.context() as patched:
        patched.setattr(_discovery, "_pid_namespace", lambda: namespace, raising=False)
        path = Path(register("ctr", os.getpid(), ["/tmp/ctr.sock"], time.time(), True))
    record = json.loads(path.read_text())
    os.unlink(path)
    _discovery._written.pop(str(path), None)
    assert record["pid_ns"] == namespace
    record["pid"] = pid
    moved = path.parent / f"ctr.{pid}.json"
    moved.write_text(json.dumps(record))
    return moved


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="PID namespaces are Linux's")
@pytest.mark.parametrize("pid_here", ["another process", "none"])
def test_a_file_from_another_pid_namespace_is_listed_unverified_and_never_removed(runtime_dir, monkeypatch, pid_here):
    # A reader on the host saw the container's server's pid (1, say) belong to another live
    # process, or to none, and deleted the live server's file.
    from reactor_mgmt import _cli

    other = _sleeper()
    if pid_here == "none":
        other.kill()
        other.wait()
    try:
        path = _written_in(ANOTHER_NAMESPACE, other.pid, monkeypatch)
        assert [(instance.pid, instance.verified) for instance in instances("ctr")] == [(other.pid, False)]
        assert path.exists()
        (endpoint,) = _cli._app_endpoints("ctr")
        assert endpoint.vouched is False  # no cleartext token to its socket
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/ns/pid"), reason="PID namespaces are Linux's")
@pytest.mark.parametrize("why", ["namespace unreadable", "/proc of another namespace"])
def test_a_reader_that_cannot_tell_its_pid_namespace_removes_nothing(runtime_dir, monkeypatch, why):
    other = _sleeper()
    try:
        path = _written_in(os.readlink("/proc/self/ns/pid"), other.pid, monkeypatch)
        if why == "namespace unreadable":
            monkeypatch.setattr(_discovery, "_pid_namespace", lambda: None, raising=False)
        else:  # a container without a /proc of its own: /proc/self is not getpid()
            real = os.getpid()
            monkeypatch.setattr(os, "getpid", lambda: real + 1 if real + 1 != other.pid else real + 2)
        assert [(instance.pid, instance.verified) for instance in instances("ctr")] == [(other.pid, False)]
        assert path.exists()
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start times come from /proc")
def test_a_writer_records_its_own_start_from_proc_self(runtime_dir, monkeypatch):
    # In a PID namespace whose /proc is another one's, /proc/{getpid()} is some other process:
    # simulated here by a getpid() that answers another live pid.
    other = _sleeper()
    try:
        time.sleep(0.05)
        mine, theirs = _ticks_of("self"), _ticks_of(other.pid)
        assert mine != theirs
        with monkeypatch.context() as patched:
            patched.setattr(os, "getpid", lambda: other.pid)
            path = register("ns", os.getpid(), [("127.0.0.1", 1)], time.time(), False)
        assert json.loads(Path(path).read_text())["proc_start"] == mine
        os.unlink(path)
        _discovery._written.pop(path, None)
    finally:
        other.kill()
        other.wait()


def test_no_cleartext_token_to_a_unix_socket_discovery_could_not_verify(runtime_dir, monkeypatch):
    # Without /proc (macOS, the BSDs) only the pid's existence is checked: a server that gives
    # no challenge at a socket found so does not get the token in clear text.
    import threading

    from reactor_mgmt import _cli
    from reactor_mgmt._client import UNREACHABLE, FanOut

    monkeypatch.setattr(_discovery, "_start_ticks", lambda pid: None)
    monkeypatch.setattr(_discovery, "_boot_id", lambda: None)
    short = tempfile.mkdtemp(prefix="rm-", dir="/tmp")  # AF_UNIX paths: ~107 bytes at most
    sock_path = os.path.join(short, "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    received: List[bytes] = []

    def no_challenge() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(TIMEOUT)
            reader = conn.makefile("rb")
            received.append(reader.readline())
            conn.sendall(b'{"id":1,"ok":false,"error":{"code":"unknown_command","message":"unknown command"}}\n')
            conn.settimeout(1.0)
            try:
                received.append(reader.readline())
            except OSError:
                pass

    thread = threading.Thread(target=no_challenge, daemon=True)
    thread.start()
    try:
        register("unsure", os.getpid(), [sock_path], time.time(), True)
        (instance,) = instances("unsure")
        assert instance.verified is False
        (endpoint,) = _cli._app_endpoints("unsure")
        events: list = []
        outcomes = FanOut(
            [endpoint], {"argv": ["stats"]}, token="T0KEN", on_event=lambda e, kind, value: events.append(value)
        ).run()
        thread.join(TIMEOUT)
        assert outcomes == [UNREACHABLE] and "not sent in clear text" in events[0]
        assert len(received) >= 1 and not any(b"T0KEN" in line for line in received)
    finally:
        listener.close()
        thread.join(TIMEOUT)
        os.unlink(sock_path)
        os.rmdir(short)
