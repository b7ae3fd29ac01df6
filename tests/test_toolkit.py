# The operator's toolkit (issue 18, part A): `show threads`, `gc`, `tracemalloc ...`,
# `log level` and `config get/set/diff`, each through a real socket on a server the test polls
# itself, and at the end end-to-end with `nc -N` against the demo started at admin level. Pinned
# here: every bound (FRAMES 26, N 101, a negative N), the revert that must not clobber a later
# change (pelican#2896), the all-or-nothing multi-pair `config set` (Redis's multi CONFIG SET),
# and level gating (a connection neither sees nor runs what its level does not reach).
from __future__ import annotations

import dataclasses
import enum
import json
import logging
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Any, Dict, Iterator, List

import pytest

import reactor_mgmt
from conftest import ROOT, TIMEOUT, Daemon, RawClient, ServerThread, child_env, require_tool
from reactor_mgmt import CommandError, ConfigError

ADMIN_ONLY = [
    "show threads",
    "gc",
    "tracemalloc start",
    "tracemalloc top",
    "tracemalloc snapshot",
    "tracemalloc diff",
    "tracemalloc stop",
    "tracemalloc status",
]


def ask(client: RawClient, line: str) -> str:
    """The whole text reply to one request, however many lines: a ping after it marks its end."""
    client.send(line + "\nping\n")
    buffer = client.wait_for(lambda data: data.endswith(b"pong\n"))
    client.buffer = b""
    return buffer[: -len(b"pong\n")].decode()


def ask_json(client: RawClient, request: Dict[str, Any]) -> Dict[str, Any]:
    (line,) = client.request(json.dumps(request))
    return json.loads(line)


def run_for(server: reactor_mgmt.Server, seconds: float) -> None:
    """Polls, as a host's loop would, for that long: timers (a log level revert) fire here."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        server.poll(0.01)


@pytest.fixture
def admin(make_server) -> Iterator[RawClient]:
    server = make_server("127.0.0.1", level="admin", toolkit=True)
    client = RawClient(server)
    yield client
    client.close()


# ---- the API ----


def test_the_toolkit_is_off_by_default_and_toolkit_true_installs_every_part(make_server):
    plain = make_server("127.0.0.1", level="admin")
    for name in ADMIN_ONLY + ["log level", "config get", "config set", "config diff"]:
        assert name not in plain.registry.commands
    full = make_server("127.0.0.1", level="admin", toolkit=True)
    for name in ADMIN_ONLY + ["log level", "config get", "config set", "config diff"]:
        assert name in full.registry.commands
    assert full.registry.commands["log level"].level == "operator"
    assert all(full.registry.commands[name].level == "admin" for name in ADMIN_ONLY)


def test_add_toolkit_installs_only_the_named_parts_and_twice_is_harmless(make_server):
    server = make_server("127.0.0.1", level="admin")
    server.add_toolkit("gc", "log")
    server.add_toolkit("gc")
    assert {"gc", "log level"} <= set(server.registry.commands)
    assert "show threads" not in server.registry.commands and "tracemalloc top" not in server.registry.commands
    server.add_toolkit("threads")
    assert "show threads" in server.registry.commands
    with pytest.raises(ConfigError, match="unknown toolkit part 'memory'; the parts are: threads, gc, tracemalloc"):
        server.add_toolkit("memory")


def test_a_later_add_toolkit_refuses_the_activity_tools_it_would_leave_out(make_server):
    # The activity tools hook the dispatcher once: a later call asking for more raises rather
    # than return with nothing installed; asking again for what is installed does nothing.
    again = "the activity tools are installed already, without {}: name every activity part and option in one"
    server = make_server("127.0.0.1", level="admin", toolkit=True)
    for parts, options, missing in (
        ((), {"audit": True}, "audit=True"),
        (("audit", "gc"), {"stall_after": 1.0}, "stall_after=1.0, audit=True"),
        (("slow",), {"slow_ms": 10}, "slow_ms=10"),
    ):
        with pytest.raises(ConfigError, match=re.escape(again.format(missing))):
            server.add_toolkit(*parts, **options)
    server.add_toolkit()
    server.add_toolkit("slow", "clients", "gc", slow_ms=50, audit=False)  # what is installed
    server.add_toolkit(maskers={}, secret_params=[])  # empty, as the defaults are
    assert "audit" not in server.registry.commands
    slow = make_server("127.0.0.1", level="admin")
    slow.add_toolkit("slow", audit=True, slow_ms=10)
    for parts, missing in ((("clients",), "part 'clients'"), ((), "part 'clients', part 'gap'")):
        with pytest.raises(ConfigError, match=re.escape(again.format(missing))):
            slow.add_toolkit(*parts)
    slow.add_toolkit("slow", "audit", "threads", slow_ms=10)
    assert "clients" not in slow.registry.commands and {"audit", "show slow", "show threads"} <= set(
        slow.registry.commands
    )


def test_a_host_command_of_the_same_name_wins_either_way_round(make_server):
    before = make_server("127.0.0.1", level="admin")
    before.add_command("gc", lambda: "the host's gc")
    with pytest.raises(ConfigError, match="the toolkit's 'gc' is already a command of the host's"):
        before.add_toolkit("gc")
    after = make_server("127.0.0.1", level="admin", toolkit=True)
    after.add_command("gc", lambda: "the host's gc")  # takes the name over, as for a builtin
    client = RawClient(after)
    assert ask(client, "gc") == "the host's gc\n"
    client.close()


def test_installing_only_registers_commands(make_server):
    # No timer, no queued work, nothing for poll() to do that it did not do before.
    server = make_server("127.0.0.1", level="admin", toolkit=True)
    server.setting("x", type("Obj", (), {"x": 1})(), "x")
    assert server.next_deadline() is None
    assert not server.busy
    assert server.poll(0) == 0


def test_the_toolkit_imports_no_module_until_a_command_needs_it():
    def modules_after(toolkit: bool) -> List[str]:
        code = (
            f"import sys, reactor_mgmt; s = reactor_mgmt.Server(port=0, toolkit={toolkit}); "
            "print(' '.join(sorted(sys.modules))); s.close()"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=TIMEOUT
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    # the toolkit's own modules, and nothing else; a server without it never loads them
    assert set(modules_after(True)) - set(modules_after(False)) == {"reactor_mgmt._toolkit", "reactor_mgmt._activity"}
    assert "tracemalloc" not in modules_after(True)


# ---- level gating ----


def test_a_user_connection_neither_sees_nor_runs_the_admin_and_operator_tools(make_server):
    server = make_server("127.0.0.1", level="user", toolkit=True)
    client = RawClient(server)
    heads = ask(client, "help").splitlines()[0].split()
    assert not {"gc", "tracemalloc", "log", "config"} & set(heads)
    assert "show threads" not in ask(client, "help")
    for name in ADMIN_ONLY:
        assert ask(client, name) == f"ERR permission denied: '{name}' needs admin\n"
    assert ask(client, "log level") == "ERR permission denied: 'log level' needs operator\n"
    assert ask(client, "help gc") == "ERR no help for 'gc' at this connection's level\n"
    client.close()


def test_an_operator_connection_gets_log_level_but_not_the_admin_tools(make_server):
    server = make_server("127.0.0.1", level="operator", toolkit=True)
    client = RawClient(server)
    index = ask(client, "help")
    assert "log level [LOGGER [LEVEL]] [--for SECONDS]" in index
    assert "gc [N]" not in index and "show threads" not in index and "tracemalloc" not in index
    assert ask(client, "gc") == "ERR permission denied: 'gc' needs admin\n"
    assert ask(client, "log level").startswith("logger")
    client.close()


# ---- show threads ----


def test_show_threads_gives_every_stack_and_marks_the_thread_running_poll(admin):
    release = threading.Event()

    def parked_here() -> None:
        release.wait(TIMEOUT)

    sleeper = threading.Thread(target=parked_here, name="toolkit-sleeper", daemon=True)
    sleeper.start()
    try:
        text = ask(admin, "show threads")
        blocks = text.split("\n\n")
        assert blocks[0] == f"{len(blocks) - 1} threads"
        main = next(block for block in blocks if block.startswith("Thread MainThread ("))
        header = main.splitlines()[0]
        assert header.endswith("not daemon): runs poll()")
        assert f"ident {threading.main_thread().ident}" in header
        # The host's frames down to poll(); the library's frames running this command are left out.
        assert "in test_show_threads_gives_every_stack_and_marks_the_thread_running_poll" in main
        assert "in Server.poll" in main or "in poll" in main
        assert "frames inside reactor_mgmt, running this command, left out" in main
        assert "thread_report" not in main
        other = next(block for block in blocks if block.startswith("Thread toolkit-sleeper ("))
        assert other.splitlines()[0] == (
            f"Thread toolkit-sleeper (ident {sleeper.ident}, native id {sleeper.native_id}, daemon)"
        )
        assert "parked_here" in other and "release.wait(TIMEOUT)" in other

        threads = ask_json(admin, {"cmd": "show threads", "id": 1})["result"]
        by_name = {thread["name"]: thread for thread in threads}
        assert [thread["name"] for thread in threads if thread["runs_poll"]] == ["MainThread"]
        assert by_name["toolkit-sleeper"]["daemon"] is True
        assert by_name["toolkit-sleeper"]["ident"] == sleeper.ident
        frames = by_name["toolkit-sleeper"]["stack"]
        assert {"file", "line", "function", "code"} == set(frames[0])
        assert any(
            frame["function"].endswith("parked_here")
            and frame["code"] == "release.wait(TIMEOUT)"
            and frame["file"] == __file__
            for frame in frames
        )
        assert by_name["MainThread"]["library_frames_left_out"] > 0
    finally:
        release.set()
        sleeper.join(TIMEOUT)


def test_show_threads_marks_the_polling_thread_when_it_is_not_the_main_one():
    import socket

    server = reactor_mgmt.Server("127.0.0.1", 0, level="admin", toolkit=True)
    with ServerThread(server) as runner:
        with socket.create_connection(server.addresses[0], timeout=TIMEOUT) as sock:
            sock.sendall(b'{"cmd": "show threads", "id": 1}\n')
            threads = json.loads(sock.makefile("rb").readline())["result"]
    polling = [thread for thread in threads if thread["runs_poll"]]
    assert [thread["ident"] for thread in polling] == [runner._thread.ident]
    assert any(frame["function"].endswith("_run") for frame in polling[0]["stack"])
    assert not next(thread for thread in threads if thread["name"] == "MainThread")["runs_poll"]


def test_show_threads_keeps_the_innermost_frames_of_a_deep_stack(admin):
    release = threading.Event()

    def deep(depth: int) -> None:
        if depth:
            deep(depth - 1)
        else:
            release.wait(TIMEOUT)

    thread = threading.Thread(target=deep, args=(150,), name="toolkit-deep", daemon=True)
    thread.start()
    try:
        time.sleep(0.05)
        threads = ask_json(admin, {"cmd": "show threads", "id": 1})["result"]
        entry = next(t for t in threads if t["name"] == "toolkit-deep")
        assert len(entry["stack"]) == 100
        assert entry["older_frames_left_out"] > 0
        assert "release.wait(TIMEOUT)" in [frame["code"] for frame in entry["stack"][-4:]]  # the innermost kept
        assert "older frames left out)" in ask(admin, "show threads")
    finally:
        release.set()
        thread.join(TIMEOUT)


# ---- gc ----


def test_gc_reports_the_collector_and_the_most_common_types(admin):
    text = ask(admin, "gc")
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines[:8]] == [
        "enabled",
        "counts",
        "thresholds",
        "collections",
        "collected",
        "uncollectable",
        "tracked",
        "gc.garbage",
    ]
    assert lines[2].split()[1:] == [str(value) for value in __import__("gc").get_threshold()]
    assert lines[9].startswith("the 20 most common of ") and lines[10].split() == ["count", "type"]
    assert len(lines) == 11 + 20

    result = ask_json(admin, {"cmd": "gc", "args": [3], "id": 1})["result"]
    assert set(result) == {
        "enabled",
        "counts",
        "thresholds",
        "collections",
        "collected",
        "uncollectable",
        "tracked",
        "garbage",
        "types",
        "top_types",
    }
    assert len(result["counts"]) == 3 and result["tracked"] > 1000
    counts = [row["count"] for row in result["top_types"]]
    assert len(counts) == 3 and counts == sorted(counts, reverse=True)
    assert ask_json(admin, {"cmd": "gc", "args": [100], "id": 2})["ok"]


@pytest.mark.parametrize("n", ["0", "101", "-1", "-100"])
def test_gc_n_is_bounded(admin, n):
    assert ask(admin, f"gc {n}") == "ERR usage: gc [N] (N must be between 1 and 100)\n"


def test_gc_n_must_be_a_number(admin):
    assert ask(admin, "gc many") == "ERR usage: gc [N] (bad value for N: 'many': expected an integer)\n"
    reply = ask_json(admin, {"cmd": "gc", "args": [101], "id": 1})
    assert reply["error"] == {"code": "usage", "message": "usage: gc [N] (N must be between 1 and 100)"}


# ---- tracemalloc ----


@pytest.fixture
def tracing_off() -> Iterator[None]:
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is already tracing in this process")
    yield
    tracemalloc.stop()


NOT_TRACING = "ERR tracemalloc is not tracing: send 'tracemalloc start' first\n"


def test_tracemalloc_before_start_says_how_to_start_it(admin, tracing_off):
    for line in ("tracemalloc top", "tracemalloc top 5 --by filename", "tracemalloc snapshot", "tracemalloc diff"):
        assert ask(admin, line) == NOT_TRACING
    reply = ask_json(admin, {"cmd": "tracemalloc top", "id": 1})
    assert reply["error"] == {"code": "error", "message": NOT_TRACING[4:-1]}
    assert ask(admin, "tracemalloc stop") == "tracemalloc was not tracing\n"


@pytest.mark.parametrize("frames", ["0", "26", "-1"])
def test_tracemalloc_start_frames_is_bounded(admin, tracing_off, frames):
    assert ask(admin, f"tracemalloc start {frames}") == (
        "ERR usage: tracemalloc start [FRAMES] (FRAMES must be between 1 and 25)\n"
    )
    assert not tracemalloc.is_tracing()


@pytest.mark.parametrize("n", ["0", "101", "-1"])
def test_tracemalloc_top_and_diff_n_are_bounded(admin, tracing_off, n):
    ask(admin, "tracemalloc start")
    assert ask(admin, f"tracemalloc top {n}") == (
        "ERR usage: tracemalloc top [N] [--by BY] (N must be between 1 and 100)\n"
    )
    assert ask(admin, f"tracemalloc diff {n} --by filename") == (
        "ERR usage: tracemalloc diff [N] [--by BY] (N must be between 1 and 100)\n"
    )
    assert ask(admin, "tracemalloc top 3 --by size") == (
        "ERR usage: tracemalloc top [N] [--by BY] (bad value for BY: 'size': expected one of: lineno, filename, "
        "traceback)\n"
    )


def test_tracemalloc_start_top_snapshot_diff_stop(admin, tracing_off):
    assert ask(admin, "tracemalloc start 3") == "tracing, 3 frames per traceback\n"
    assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 3
    assert ask(admin, "tracemalloc start") == "already tracing, 3 frames per traceback\n"
    assert ask(admin, "tracemalloc start 5") == (
        "ERR tracemalloc is already tracing with 3 frames per traceback: send 'tracemalloc stop' first to change "
        "FRAMES\n"
    )
    hog = [bytearray(1000) for _ in range(2000)]  # about 2 MB, from one line of this file
    hog_line = sys._getframe().f_lineno - 1
    where = f"{__file__}:{hog_line}"

    text = ask(admin, "tracemalloc top 5")
    lines = text.splitlines()
    assert lines[0].startswith("traced ") and lines[0].endswith("; the top 5 by lineno:")
    assert lines[1].split() == ["size", "blocks", "where"]
    size, unit, blocks, place = lines[2].split()
    assert place == where and unit == "KiB" and float(size) >= 2000 and int(blocks) >= 2000
    top = ask_json(admin, {"cmd": "tracemalloc top", "args": [2], "kwargs": {"by": "filename"}, "id": 1})["result"]
    assert top["by"] == "filename" and len(top["stats"]) == 2 and top["traced_bytes"] >= 2_000_000
    assert top["stats"][0]["traceback"] == [{"file": __file__, "line": 0}]
    by_traceback = ask(admin, "tracemalloc top 1 --by traceback")
    assert by_traceback.splitlines()[1].startswith("#1: ") and f'File "{__file__}", line {hog_line}' in by_traceback

    assert ask(admin, "tracemalloc diff") == "ERR no snapshot to compare with: send 'tracemalloc snapshot' first\n"
    assert ask(admin, "tracemalloc snapshot").startswith("snapshot taken: ")
    assert (
        ask(admin, "tracemalloc snapshot")
        .rstrip()
        .endswith("; it replaces the last one; 'tracemalloc diff' compares with it")
    )
    more = [bytearray(2000) for _ in range(1000)]  # another 2 MB, from another line
    more_line = sys._getframe().f_lineno - 1
    diff = ask_json(admin, {"cmd": "tracemalloc diff", "args": [3], "id": 2})["result"]
    first = diff["stats"][0]
    assert first["traceback"][0] == {"file": __file__, "line": more_line}
    assert first["size_diff"] >= 2_000_000 and first["count_diff"] == first["count"] >= 1000
    text = ask(admin, "tracemalloc diff 2")
    assert text.splitlines()[1].split() == ["change", "size", "blocks", "now", "where"]
    assert text.splitlines()[2].split()[-1] == f"{__file__}:{more_line}"
    assert text.splitlines()[2].split()[0].startswith("+")
    status = ask_json(admin, {"cmd": "tracemalloc status", "id": 3})["result"]
    assert status["tracing"] and status["frames"] == 3 and status["snapshot_traces"] > 0

    assert ask(admin, "tracemalloc stop") == "tracemalloc stopped; its traces and the snapshot were freed\n"
    assert not tracemalloc.is_tracing()
    assert ask(admin, "tracemalloc diff") == NOT_TRACING
    ask(admin, "tracemalloc start")
    # Only one snapshot is kept, and stop dropped it.
    assert ask(admin, "tracemalloc diff") == "ERR no snapshot to compare with: send 'tracemalloc snapshot' first\n"
    del hog, more


# ---- log level ----


@pytest.fixture
def logger_name(request) -> Iterator[str]:
    name = "toolkit_test." + re.sub(r"\W+", "_", request.node.name)  # one per test and cache mode
    yield name
    logging.getLogger(name).setLevel(logging.NOTSET)


def test_log_level_lists_shows_and_sets(admin, logger_name):
    listing = ask(admin, "log level").splitlines()
    assert listing[0].split() == ["logger", "level", "effective", "reverts_to", "reverts_in_s"]
    assert listing[1].split()[0] == "root"
    assert logger_name not in "\n".join(listing)
    shown = ask_json(admin, {"cmd": "log level", "args": [logger_name], "id": 1})["result"]
    assert shown == {
        "logger": logger_name,
        "level": "NOTSET",
        "effective": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        "reverts_to": None,
        "reverts_in_s": None,
    }
    assert logger_name not in logging.Logger.manager.loggerDict  # looking did not create it

    assert ask(admin, f"log level {logger_name} debug") == f"{logger_name}: NOTSET -> DEBUG\n"
    assert logging.getLogger(logger_name).level == logging.DEBUG
    rows = ask_json(admin, {"cmd": "log level", "id": 2})["result"]
    assert rows[0]["logger"] == "root"
    assert {
        "logger": logger_name,
        "level": "DEBUG",
        "effective": "DEBUG",
        "reverts_to": None,
        "reverts_in_s": None,
    } in rows
    child = ask_json(admin, {"cmd": "log level", "args": [logger_name + ".child"], "id": 3})["result"]
    assert child["level"] == "NOTSET" and child["effective"] == "DEBUG"


def test_log_level_root_by_name_or_empty(admin):
    root = logging.getLogger()
    before = root.level
    try:
        assert ask(admin, "log level root ERROR") == f"root: {logging.getLevelName(before)} -> ERROR\n"
        assert root.level == logging.ERROR
        assert ask(admin, "log level '' CRITICAL") == "root: ERROR -> CRITICAL\n"
        assert root.level == logging.CRITICAL
    finally:
        root.setLevel(before)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("log level {} loud", "unknown level 'loud'; the levels are CRITICAL ERROR WARNING INFO DEBUG NOTSET"),
        ("log level {} --for 5", "--for needs LEVEL"),
        ("log level {} DEBUG --for 0", "SECONDS must be more than 0"),
        ("log level {} DEBUG --for -3", "SECONDS must be more than 0"),
        ("log level {} DEBUG --for nan", "SECONDS must be more than 0"),
        ("log level {} DEBUG --for=inf", "SECONDS must be more than 0"),
        ("log level {} DEBUG --for soon", "bad value for SECONDS: 'soon': expected a number"),
        ("log level {} DEBUG --for", "option --for needs a value"),
        ("log level {} DEBUG --forever 3", "unknown option --forever"),
        ("log level {} DEBUG extra", "too many arguments (expected at most 2)"),
    ],
)
def test_log_level_bad_input_is_a_usage_error(admin, logger_name, line, reason):
    assert ask(admin, line.format(logger_name)) == (
        f"ERR usage: log level [LOGGER [LEVEL]] [--for SECONDS] ({reason})\n"
    )
    assert logging.getLogger(logger_name).level == logging.NOTSET


def test_log_level_for_reverts_in_poll_without_a_thread(admin, logger_name):
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.WARNING)
    threads = threading.active_count()
    assert ask(admin, f"log level {logger_name} DEBUG --for 0.3") == (
        f"{logger_name}: WARNING -> DEBUG for 0.3 s, then WARNING\n"
    )
    assert threading.active_count() == threads
    assert logger.level == logging.DEBUG
    row = ask_json(admin, {"cmd": "log level", "args": [logger_name], "id": 1})["result"]
    assert row["reverts_to"] == "WARNING" and 0 < row["reverts_in_s"] <= 0.3
    time.sleep(0.4)
    assert logger.level == logging.DEBUG  # nothing happens outside poll()
    admin.server.poll(0)
    assert logger.level == logging.WARNING
    assert ask_json(admin, {"cmd": "log level", "args": [logger_name], "id": 2})["result"]["reverts_to"] is None


def test_a_revert_never_clobbers_a_change_made_after_it(admin, logger_name, caplog):
    # pelican#2896: the level is restored only if it is still the one the command set.
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.WARNING)
    ask(admin, f"log level {logger_name} DEBUG --for 0.2")
    logger.setLevel(logging.ERROR)  # the host (or anyone) changes it meanwhile
    with caplog.at_level(logging.INFO, logger="reactor_mgmt"):
        run_for(admin.server, 0.35)
    assert logger.level == logging.ERROR
    assert f"the level of logger {logger_name} changed since it was set for a while: kept at ERROR" in caplog.text


def test_a_later_log_level_replaces_the_pending_revert(admin, logger_name):
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.WARNING)
    ask(admin, f"log level {logger_name} DEBUG --for 0.2")
    # Set to the same level, for good: comparing levels alone would revert it.
    assert ask(admin, f"log level {logger_name} DEBUG") == f"{logger_name}: DEBUG -> DEBUG\n"
    run_for(admin.server, 0.35)
    assert logger.level == logging.DEBUG


def test_a_timed_change_over_a_timed_change_goes_back_to_the_level_before_both(admin, logger_name):
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.WARNING)
    ask(admin, f"log level {logger_name} DEBUG --for 0.2")
    assert ask(admin, f"log level {logger_name} INFO --for 0.5") == (
        f"{logger_name}: DEBUG -> INFO for 0.5 s, then WARNING\n"
    )
    run_for(admin.server, 0.3)
    assert logger.level == logging.INFO  # the first revert was replaced
    run_for(admin.server, 0.35)
    assert logger.level == logging.WARNING


def test_log_level_makes_a_bounded_number_of_loggers(admin, logger_name):
    # logging never frees a logger: 5,000 new names from an operator grew its registry by 10,000
    # entries (each name's dotted parent too) and 4.3 MB. Names that exist are always set.
    from reactor_mgmt._toolkit import MAX_MADE_LOGGERS

    registry = logging.Logger.manager.loggerDict
    logging.getLogger(logger_name)  # the host's logger: its children need no placeholder
    deep = logger_name + ".d" * (MAX_MADE_LOGGERS + 1)  # a logger and 64 placeholders
    made = [f"{logger_name}.made{i}" for i in range(MAX_MADE_LOGGERS)]
    try:
        before = len(registry)
        assert ask(admin, f"log level {deep} DEBUG") == (
            f"ERR no logger named {deep!r} (log level makes at most {MAX_MADE_LOGGERS}, counting the "
            f"parents it makes, and has made 0; this name needs {MAX_MADE_LOGGERS + 1})\n"
        )
        assert len(registry) == before
        for name in made:
            assert ask(admin, f"log level {name} DEBUG") == f"{name}: NOTSET -> DEBUG\n"
        assert len(registry) == before + MAX_MADE_LOGGERS
        extra = logger_name + ".one_too_many"
        assert ask(admin, f"log level {extra} DEBUG") == (
            f"ERR no logger named {extra!r} (log level makes at most {MAX_MADE_LOGGERS}, counting the "
            f"parents it makes, and has made {MAX_MADE_LOGGERS})\n"
        )
        assert extra not in registry
        assert ask(admin, f"log level {made[0]} INFO") == f"{made[0]}: DEBUG -> INFO\n"
        assert ask(admin, f"log level {logger_name} INFO") == f"{logger_name}: NOTSET -> INFO\n"
        assert ask(admin, f"log level {logger_name}.made9 --for 5 NOTSET").endswith("then DEBUG\n")
    finally:  # the next test's server may make its own
        for name in [name for name in registry if name.startswith(logger_name + ".")]:
            del registry[name]


def test_a_replaced_timed_change_cancels_its_timer(admin, logger_name):
    # Each replaced revert's timer stayed in the heap until due, holding the revert: 5,000
    # repeats of a timed change left 5,001 timers (1.9 MB), for as long as --for said.
    timers = admin.server._loop.timers
    live = sum(1 for timer in timers if timer[2] is not None)
    for level in ["DEBUG", "INFO"] * 100:
        assert ask(admin, f"log level {logger_name} {level} --for 86400").endswith("then NOTSET\n")
    assert sum(1 for timer in admin.server._loop.timers if timer[2] is not None) == live + 1
    assert len(admin.server._loop.timers) < live + 100  # the cancelled ones are swept out too
    assert ask(admin, f"log level {logger_name} WARNING") == f"{logger_name}: INFO -> WARNING\n"
    assert sum(1 for timer in admin.server._loop.timers if timer[2] is not None) == live


def test_log_level_for_is_at_most_a_day(admin, logger_name):
    assert ask(admin, f"log level {logger_name} DEBUG --for 86401") == (
        "ERR usage: log level [LOGGER [LEVEL]] [--for SECONDS] "
        "(SECONDS must be at most 86400, a day: a level meant to stay is set without --for)\n"
    )
    assert logging.getLogger(logger_name).level == logging.NOTSET


def test_log_level_changes_are_logged_with_the_connection(admin, logger_name, caplog):
    with caplog.at_level(logging.INFO, logger="reactor_mgmt"):
        ask(admin, f"log level {logger_name} INFO --for 60")
    assert f"set the level of logger {logger_name} to INFO for 60 s" in caplog.text


# ---- settings ----


class Color(enum.Enum):
    red = 1
    green = 2


class Config:
    def __init__(self) -> None:
        self.rate = 50.0
        self.workers = 4
        self.label = "main"
        self.debug = False
        self.color = Color.red
        self.password = "hunter2"
        self.version = "1.2.3"


def _positive(value: float) -> None:
    if value <= 0:
        raise ValueError("must be positive")


def _not_thirteen(value: int) -> None:
    if value == 13:
        raise CommandError("13 workers is unlucky")


@pytest.fixture
def configured(make_server):
    server = make_server("127.0.0.1", level="admin")
    config = Config()
    server.setting("rate", config, "rate", check=_positive, help="ticks per second")
    server.setting("workers", config, "workers", check=_not_thirteen)
    server.setting("label", config, "label", level="user")
    server.setting("debug", config, "debug")
    server.setting("color", config, "color")
    server.setting("password", config, "password", level="admin", secret=True)
    server.setting("version", config, "version", read_only=True, level="user")
    return server, config


def test_setting_without_the_toolkit_installs_only_the_config_commands(configured):
    server, _ = configured
    assert {"config get", "config set", "config diff"} <= set(server.registry.commands)
    assert "gc" not in server.registry.commands and "log level" not in server.registry.commands


def test_config_get_marks_defaults_read_only_and_secret_values(configured):
    server, config = configured
    client = RawClient(server)
    assert ask(client, "config get") == (
        "rate:     50.0 (default)\n"
        "workers:  4 (default)\n"
        "label:    main (default)\n"
        "debug:    False (default)\n"
        "color:    red (default)\n"
        "password: *** (default)\n"
        "version:  1.2.3 (default, read-only)\n"
    )
    config.workers = 8  # the host's own change shows too
    assert ask(client, "config get w*") == "workers: 8\n"
    assert ask(client, "config get nothing*") == "no setting matches 'nothing*'\n"
    rows = ask_json(client, {"cmd": "config get", "args": ["[rp]a*"], "id": 1})["result"]
    assert rows == [
        {
            "name": "rate",
            "value": 50.0,
            "default": 50.0,
            "is_default": True,
            "read_only": False,
            "level": "operator",
            "type": "number",
            "choices": None,
            "help": "ticks per second",
        },
        {
            "name": "password",
            "value": "***",
            "default": "***",
            "is_default": True,
            "read_only": False,
            "level": "admin",
            "type": "text",
            "choices": None,
            "help": None,
        },
    ]
    color = ask_json(client, {"cmd": "config get", "args": ["color"], "id": 2})["result"][0]
    assert color["choices"] == ["red", "green"] and color["type"] == "choice"
    client.close()


def test_config_set_converts_like_a_command_and_diff_shows_the_defaults(configured):
    server, config = configured
    client = RawClient(server)
    assert ask(client, "config diff") == "every setting has its default value\n"
    assert ask(client, "config set rate 12.5 workers 8 debug on color GREEN password s3cret label 'a b'") == (
        "rate: 50.0 -> 12.5\nworkers: 4 -> 8\ndebug: False -> True\ncolor: red -> green\n"
        "password: *** -> ***\nlabel: main -> a b\n"
    )
    assert (config.rate, config.workers, config.debug, config.color, config.password, config.label) == (
        12.5,
        8,
        True,
        Color.green,
        "s3cret",
        "a b",
    )
    assert ask(client, "config diff") == (
        "rate:     12.5 (default 50.0)\nworkers:  8 (default 4)\nlabel:    a b (default main)\n"
        "debug:    True (default False)\ncolor:    green (default red)\npassword: *** (default ***)\n"
    )
    assert ask(client, "config set rate 50") == "rate: 12.5 -> 50.0\n"
    assert ask(client, "config get rate") == "rate: 50.0 (default)\n"
    diff = ask_json(client, {"cmd": "config diff", "id": 1})["result"]
    assert {"name": "workers", "value": 8, "default": 4} in diff and all(row["name"] != "rate" for row in diff)
    reply = ask_json(client, {"cmd": "config set", "args": ["workers", 3, "debug", False], "id": 2})
    assert reply["result"] == {"workers": 3, "debug": False}
    assert ask_json(client, {"argv": ["config", "set", "password", "x"], "id": 3})["result"] == {"password": "***"}
    client.close()


def test_config_set_changes_nothing_if_any_pair_fails(configured):
    server, config = configured
    client = RawClient(server)
    usage = "ERR usage: config set NAME VALUE [NAME VALUE ...]"
    cases = {
        "config set rate 10 workers many": f"{usage} (bad value for workers: 'many': expected an integer)",
        "config set rate 10 workers 13": f"{usage} (bad value for workers: '13': 13 workers is unlucky)",
        "config set workers 2 rate -1": f"{usage} (bad value for rate: '-1': must be positive)",
        "config set rate 10 color blue": (f"{usage} (bad value for color: 'blue': expected one of: red, green)"),
        "config set rate 10 debug maybe": (
            f"{usage} (bad value for debug: 'maybe': expected true/false, yes/no, on/off or 1/0)"
        ),
        "config set rate 10 version 2": "ERR setting 'version' is read-only",
        "config set rate 10 nope 1": f"{usage} (unknown setting 'nope'; 'config get' lists them)",
        "config set rate 10 workrs 1": f"{usage} (unknown setting 'workrs'; did you mean 'workers'?)",
        "config set rate 10 rate 11": f"{usage} (rate given twice)",
        "config set rate 10 workers": f"{usage} (an odd number of words: NAME VALUE pairs expected)",
        "config set": f"{usage} (missing NAME VALUE)",
    }
    for line, error in cases.items():
        assert ask(client, line) == error + "\n", line
        assert (config.rate, config.workers, config.color, config.debug) == (50.0, 4, Color.red, False), line
    assert ask(client, "config diff") == "every setting has its default value\n"
    client.close()


def test_a_secret_settings_refused_value_is_not_echoed(make_server):
    import ipaddress

    def no_x(value: str) -> None:
        if value.startswith("x"):
            raise ValueError("must not start with x")
        int(value)  # a check that quotes what it refused: "invalid literal for int() ...: 'yS3CRET'"

    server = make_server("127.0.0.1", level="admin")
    config = type("Config", (), {"pin": 1234, "key": "k0", "peer": ipaddress.ip_address("127.0.0.1")})()
    server.setting("pin", config, "pin", secret=True)
    server.setting("key", config, "key", secret=True, check=no_x)
    server.setting("peer", config, "peer", type=ipaddress.ip_address, secret=True)
    client = RawClient(server)
    usage = "ERR usage: config set NAME VALUE [NAME VALUE ...]"
    cases = {
        "config set pin 12S3CRET": f"{usage} (bad value for pin: ***: expected an integer)",
        "config set key xS3CRET": f"{usage} (bad value for key: ***: must not start with x)",
        "config set key yS3CRET": f"{usage} (bad value for key: ***: invalid literal for int() with base 10: ***)",
        "config set peer S3CRET": f"{usage} (bad value for peer: ***: expected a value of type ip_address)",
    }
    for line, error in cases.items():
        assert ask(client, line) == error + "\n", line
    reply = ask_json(client, {"cmd": "config set", "args": ["pin", "S3CRET"], "id": 1})
    assert (
        reply["error"]["message"]
        == "usage: config set NAME VALUE [NAME VALUE ...] (bad value for pin: ***: expected an integer)"
    )
    assert (config.pin, config.key) == (1234, "k0")
    client.close()


def test_config_set_never_quotes_a_word_it_cannot_pair(make_server):
    # `config set -- api_key S3CRET` answered "('S3CRET' has no VALUE)": the "--" shifts the
    # pairs, and the word left over was the secret.
    server = make_server("127.0.0.1", level="admin")
    config = type("Config", (), {"api_key": "k0", "label": "main"})()
    server.setting("api_key", config, "api_key", secret=True)
    server.setting("label", config, "label")
    client = RawClient(server)
    usage = "ERR usage: config set NAME VALUE [NAME VALUE ...]"
    cases = {
        "config set -- api_key S3CRET-a": "an odd number of words: NAME VALUE pairs expected",
        "config set api_key S3CRET-b label": "an odd number of words: NAME VALUE pairs expected",
        "config set label api_key S3CRET-c x": (
            "unknown setting after 'api_key', not shown: it may be that setting's value"
        ),
        "config set API_KEY S3CRET-d": "unknown setting 'API_KEY'; 'config get' lists them",  # a name, not a value
    }
    for line, error in cases.items():
        assert ask(client, line) == f"{usage} ({error})\n", line
    (reply,) = client.request(json.dumps({"id": 1, "cmd": "config set", "args": ["--", "api_key", "S3CRET-e"]}))
    assert "S3CRET" not in reply and json.loads(reply)["ok"] is False
    assert (config.api_key, config.label) == ("k0", "main")
    client.close()


def test_config_set_puts_back_what_it_changed_when_the_host_refuses_late(make_server):
    class Strict:
        def __init__(self) -> None:
            self.a = 1
            self._b = 2

        @property
        def b(self) -> int:
            return self._b

        @b.setter
        def b(self, value: int) -> None:
            raise RuntimeError("b is busy")

    server = make_server("127.0.0.1", level="admin")
    strict = Strict()
    server.setting("a", strict, "a")
    server.setting("b", strict, "b")
    client = RawClient(server)
    assert ask(client, "config set a 5 b 6") == "ERR internal error (RuntimeError)\n"
    assert (strict.a, strict.b) == (1, 2)
    client.close()


def test_settings_are_gated_by_their_level(configured):
    server, config = configured
    operator = RawClient(server)
    ask(operator, "level operator")
    shown = ask(operator, "config get")
    assert "password" not in shown and "rate:" in shown
    assert ask(operator, "config set rate 5 password x") == "ERR permission denied: setting 'password' needs admin\n"
    assert config.rate == 50.0 and config.password == "hunter2"
    user = RawClient(server)
    ask(user, "level user")
    # A user-level setting exists, so a user sees config get and set, and only those settings.
    assert ask(user, "config get") == "label:   main (default)\nversion: 1.2.3 (default, read-only)\n"
    assert ask(user, "config set label x") == "label: main -> x\n"
    assert ask(user, "config set rate 5") == "ERR permission denied: setting 'rate' needs operator\n"
    assert ask(user, "config set nope 1") == (
        "ERR usage: config set NAME VALUE [NAME VALUE ...] (unknown setting 'nope'; 'config get' lists them)\n"
    )
    assert "rate" not in ask(user, "config diff")
    operator.close()
    user.close()


def test_the_config_commands_need_the_lowest_level_any_setting_needs(make_server):
    server = make_server("127.0.0.1", level="user")
    obj = type("Obj", (), {})()
    obj.secret_knob, obj.shown, obj.knob = 1, 2, 3
    server.setting("secret_knob", obj, "secret_knob", level="admin")
    client = RawClient(server)
    assert "config" not in ask(client, "help").splitlines()[0].split()
    assert ask(client, "config get") == "ERR permission denied: 'config get' needs admin\n"
    server.setting("shown", obj, "shown", level="user", read_only=True)
    assert ask(client, "config get") == "shown: 2 (default, read-only)\n"
    assert "config set" not in ask(client, "help")  # nothing a user may change
    server.setting("knob", obj, "knob", level="user")
    assert "config set NAME VALUE [NAME VALUE ...]" in ask(client, "help")
    client.close()


def test_setting_declarations_are_checked(make_server):
    server = make_server("127.0.0.1")
    obj = type("Obj", (), {})()
    obj.rate, obj.nothing, obj.items = 1.0, None, [1, 2]
    server.setting("rate", obj, "rate")
    with pytest.raises(ConfigError, match="setting 'rate' is already declared"):
        server.setting("rate", obj, "rate")
    with pytest.raises(ConfigError, match="has no attribute 'missing'"):
        server.setting("missing", obj, "missing")
    with pytest.raises(ConfigError, match=r"setting 'nothing': its value is None, so give its type \(type=...\)"):
        server.setting("nothing", obj, "nothing")
    with pytest.raises(ConfigError, match="setting 'items': a parameter takes one word"):
        server.setting("items", obj, "items")
    with pytest.raises(ConfigError, match="a setting's name is one word"):
        server.setting("two words", obj, "rate")
    with pytest.raises(ConfigError, match="unknown level 'root'"):
        server.setting("level", obj, "rate", level="root")
    with pytest.raises(ConfigError, match="check must be callable"):
        server.setting("checked", obj, "rate", check=5)
    from typing import Optional

    server.setting("nothing", obj, "nothing", type=Optional[int])
    client = RawClient(server)
    assert ask(client, "config set nothing 5") == "nothing: None -> 5\n"
    client.close()


@dataclasses.dataclass
class Tuning:
    batch: int = 10
    ratio: float = 0.5
    name: str = "x"
    token: str = dataclasses.field(default="t0", metadata={"reactor_mgmt": {"secret": True, "level": "admin"}})
    _private: int = 0


@dataclasses.dataclass(frozen=True)
class Build:
    version: str = "1.0"


def test_settings_from_a_dataclass(make_server):
    server = make_server("127.0.0.1", level="admin")
    tuning = Tuning()
    declared = server.settings_from(tuning, prefix="tuning.")
    assert [setting.name for setting in declared] == ["tuning.batch", "tuning.ratio", "tuning.name", "tuning.token"]
    server.settings_from(Build(), level="user")
    client = RawClient(server)
    assert ask(client, "config set tuning.batch 20 tuning.ratio 1 tuning.token abc") == (
        "tuning.batch: 10 -> 20\ntuning.ratio: 0.5 -> 1.0\ntuning.token: *** -> ***\n"
    )
    assert (tuning.batch, tuning.ratio, tuning.token) == (20, 1.0, "abc")
    assert ask(client, "config set tuning.batch x") == (
        "ERR usage: config set NAME VALUE [NAME VALUE ...] (bad value for tuning.batch: 'x': expected an integer)\n"
    )
    assert ask(client, "config get version") == "version: 1.0 (default, read-only)\n"
    assert ask(client, "config set version 2") == "ERR setting 'version' is read-only\n"
    with pytest.raises(ConfigError, match="settings_from\\(\\) takes a dataclass instance"):
        server.settings_from(Tuning)
    client.close()


# ---- end to end: nc -N against the demo, at admin level ----


@pytest.fixture(scope="module")
def admin_demo(tmp_path_factory) -> Iterator[Daemon]:
    address_file = str(tmp_path_factory.mktemp("admin_demo") / "demo.addr")
    daemon = Daemon(
        ["-m", "reactor_mgmt", "demo", "--port", "0", "--level", "admin", "--address-file", address_file], address_file
    )
    try:
        yield daemon
    finally:
        daemon.stop()


def nc(demo: Daemon, payload: str) -> str:
    tool = require_tool("nc.openbsd", "nc")
    out = subprocess.run(
        [tool, "-N", demo.host, str(demo.port)], input=payload.encode(), capture_output=True, timeout=TIMEOUT
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


def test_nc_show_threads_on_the_demo(admin_demo):
    text = nc(admin_demo, "show threads\n")
    assert text.startswith("1 thread\n\nThread MainThread (")
    header, *frames = text.split("\n\n")[1].splitlines()
    assert header.endswith("not daemon): runs poll()")
    assert any(line.strip().startswith('File "') and line.endswith(", in main") for line in frames)
    assert "server.poll(timeout=" in text
    threads = json.loads(nc(admin_demo, '{"cmd": "show threads", "id": 1}\n'))["result"]
    assert [(thread["name"], thread["runs_poll"]) for thread in threads] == [("MainThread", True)]


def test_nc_gc_on_the_demo(admin_demo):
    text = nc(admin_demo, "gc 3\ngc 101\n")
    lines = text.splitlines()
    assert lines[0].startswith("enabled:") and lines[9].startswith("the 3 most common of ")
    assert lines[-1] == "ERR usage: gc [N] (N must be between 1 and 100)"


def test_nc_tracemalloc_on_the_demo(admin_demo):
    text = nc(
        admin_demo,
        "tracemalloc top\ntracemalloc start 26\ntracemalloc start 2\ntracemalloc snapshot\n"
        "job add bigjob\ntracemalloc diff 3\ntracemalloc top 3 --by filename\ntracemalloc stop\n",
    )
    lines = text.splitlines()
    assert lines[0] == "ERR tracemalloc is not tracing: send 'tracemalloc start' first"
    assert lines[1] == "ERR usage: tracemalloc start [FRAMES] (FRAMES must be between 1 and 25)"
    assert lines[2] == "tracing, 2 frames per traceback"
    assert lines[3].startswith("snapshot taken: ")
    assert "the top 3 changes by lineno since the snapshot of " in text
    assert "the top 3 by filename:" in text
    assert lines[-1] == "tracemalloc stopped; its traces and the snapshot were freed"


def test_nc_log_level_on_the_demo_reverts_by_itself(admin_demo):
    text = nc(
        admin_demo,
        "log level reactor_mgmt.demo DEBUG --for 0.5\nlog level reactor_mgmt.demo\nlog level reactor_mgmt.demo LOUD\n",
    )
    lines = text.splitlines()
    assert lines[0] == "reactor_mgmt.demo: NOTSET -> DEBUG for 0.5 s, then NOTSET"
    assert lines[1:3] == ["logger:       reactor_mgmt.demo", "level:        DEBUG"]
    assert lines[-1] == (
        "ERR usage: log level [LOGGER [LEVEL]] [--for SECONDS] (unknown level 'LOUD'; the levels "
        "are CRITICAL ERROR WARNING INFO DEBUG NOTSET)"
    )
    time.sleep(0.8)
    listing = nc(admin_demo, "log level\n").splitlines()
    assert listing[1].split()[:2] == ["root", "INFO"]
    assert not any(line.startswith("reactor_mgmt.demo ") for line in listing)


def test_nc_config_on_the_demo(admin_demo):
    text = nc(admin_demo, "config get\n")
    assert text == (
        "tick_hz:      50.0 (default)\nparallel:     2 (default)\nidle_timeout: 300.0 (default, read-only)\n"
    )
    assert nc(admin_demo, "config set tick_hz 100 parallel 3\nconfig diff\n") == (
        "tick_hz: 50.0 -> 100.0\nparallel: 2 -> 3\ntick_hz:  100.0 (default 50.0)\nparallel: 3 (default 2)\n"
    )
    assert nc(admin_demo, "config set parallel 4 tick_hz 5000\nconfig set idle_timeout 1\nconfig get parallel\n") == (
        "ERR usage: config set NAME VALUE [NAME VALUE ...] (bad value for tick_hz: '5000': rate must be between "
        "1 and 1000 Hz)\n"
        "ERR setting 'idle_timeout' is read-only\n"
        "parallel: 3\n"
    )
    status = json.loads(nc(admin_demo, '{"cmd": "status", "id": 1}\n'))["result"]
    assert status["tick_rate_hz"] == 100.0
    assert nc(admin_demo, "config set tick_hz 50 parallel 2\nconfig diff\n").endswith(
        "every setting has its default value\n"
    )


def test_the_demo_at_its_default_level_hides_the_admin_tools(tmp_path):
    address_file = str(tmp_path / "demo.addr")
    daemon = Daemon(["-m", "reactor_mgmt", "demo", "--port", "0", "--address-file", address_file], address_file)
    try:
        text = nc(daemon, "help\nshow threads\n")
        heads = text.splitlines()[0].split()
        assert {"config", "log"} <= set(heads) and not {"gc", "tracemalloc"} & set(heads)
        assert text.endswith("ERR permission denied: 'show threads' needs admin\n")
    finally:
        daemon.stop()
