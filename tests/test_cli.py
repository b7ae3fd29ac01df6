# The reactor-mgmt command line, run as a real process (`python -m reactor_mgmt ...`) against
# the demo daemon or against servers that a ServerThread polls inside the test process.
from __future__ import annotations

import json
import subprocess
import sys
from typing import Iterator, List

import pytest

import reactor_mgmt
from conftest import ROOT, Daemon, ServerThread, child_env, default_sigint, free_port
from reactor_mgmt import Pending
from reactor_mgmt._cli import Completer, main, parse_help
from reactor_mgmt._errors import CommandError


def run_cli(*args: str, stdin: str = "", env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reactor_mgmt", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=child_env(env),
        cwd=ROOT,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


# ---- one endpoint, against the demo ----


def test_success_prints_the_reply_as_text_and_exits_0(slow_demo):
    proc = run_cli("-c", slow_demo.address, "status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("uptime_s:") and any(line.startswith("ticks:") for line in lines)
    # aligned exactly as the server aligns its text replies
    assert (
        len(
            {
                line.index(":") + len(line[line.index(":") + 1 :]) - len(line[line.index(":") + 1 :].lstrip())
                for line in lines
            }
        )
        == 1
    )
    assert proc.stderr == ""

    table = run_cli("-c", slow_demo.address, "show", "jobs")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["id", "name", "priority", "progress"]


def test_err_reply_exits_1(slow_demo):
    proc = run_cli("-c", slow_demo.address, "job", "cancel", "99")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == "ERR no job 99\n"
    assert run_cli("-c", slow_demo.address, "nosuch").stderr.startswith("ERR unknown command 'nosuch'")


def test_a_stream_is_waited_for_past_the_timeout_until_interrupted(slow_demo):
    # --timeout bounds the wait for the reply to begin; `watch` and `log tail` then run as long
    # as the user lets them (they used to die with "timed out" once items were further apart).
    with pytest.raises(subprocess.TimeoutExpired) as info:
        # Items 1 s apart, twice the timeout; 4 s leaves room for a start-up under coverage on
        # a loaded machine (CI runs three Pythons' suites at once) before the second one.
        run_cli("-c", slow_demo.address, "--timeout", "0.5", "watch", "1", "ping", timeout=4)
    out, err = (b.decode() if isinstance(b, bytes) else (b or "") for b in (info.value.stdout, info.value.stderr))
    assert out.count("pong\n") >= 2 and set(out.splitlines()) == {"pong"}, out
    assert err == ""


def test_unreachable_exits_2_with_one_line_and_no_traceback():
    port = free_port()
    proc = run_cli("-c", f"127.0.0.1:{port}", "status")
    assert proc.returncode == 2
    assert proc.stderr == f"127.0.0.1:{port}: cannot connect: Connection refused\n"
    proc = run_cli("--address-file", "/nonexistent/addr", "status")
    assert proc.returncode == 2
    assert_one_line_error(proc)
    assert "cannot read address file" in proc.stderr


def test_words_are_bound_like_a_text_line_options_and_quotes_included(slow_demo):
    added = run_cli("-c", slow_demo.address, "--json", "job", "add", "big job", "high")
    assert added.returncode == 0, added.stderr
    job = json.loads(added.stdout)
    assert job["name"] == "big job" and job["priority"] == "high"
    assert run_cli("-c", slow_demo.address, "echo", "two  spaces", "x").stdout == "two  spaces x\n"
    forced = run_cli("-c", slow_demo.address, "job", "cancel", str(job["id"]), "--force")
    assert (forced.returncode, forced.stdout) == (0, f"cancelled job {job['id']}\n")
    bad = run_cli("-c", slow_demo.address, "job", "cancel", "1", "--frobnicate")
    assert bad.returncode == 1 and "unknown option --frobnicate" in bad.stderr


def test_json_prints_the_raw_result(slow_demo):
    proc = run_cli("-c", slow_demo.address, "--json", "status")
    assert proc.returncode == 0
    status = json.loads(proc.stdout)
    assert isinstance(status["ticks"], int) and status["paused"] is False
    jobs = json.loads(run_cli("-c", slow_demo.address, "--json", "show", "jobs").stdout)
    assert [job["name"] for job in jobs][:3] == ["backup", "reindex", "thumbnails"]
    assert run_cli("-c", slow_demo.address, "--json", "ping").stdout == '"pong"\n'


def test_streams_print_every_item(slow_demo):
    proc = run_cli("-c", slow_demo.address, "count", "5", "--prefix", "row")
    assert proc.stdout == "".join(f"row {i}\n" for i in range(1, 6))
    proc = run_cli("-c", slow_demo.address, "--json", "count", "3")
    assert [json.loads(line) for line in proc.stdout.splitlines()] == ["line 1", "line 2", "line 3"]


def test_address_file(slow_demo):
    proc = run_cli("--address-file", slow_demo.address_file, "ping")
    assert (proc.returncode, proc.stdout) == (0, "pong\n")


def test_token(tmp_path):
    address_file = str(tmp_path / "demo.addr")
    daemon = Daemon(
        ["-m", "reactor_mgmt", "demo", "--port", "0", "--address-file", address_file, "--token", "s3cret"], address_file
    )
    try:
        assert run_cli("-c", daemon.address, "--token", "s3cret", "ping").returncode == 0
        proc = run_cli("-c", daemon.address, "--json", "status", env={"REACTOR_MGMT_TOKEN": "s3cret"})
        assert proc.returncode == 0 and "ticks" in json.loads(proc.stdout)
        wrong = run_cli("-c", daemon.address, "--token", "nope", "status")
        assert (wrong.returncode, wrong.stderr) == (1, "ERR authentication failed\n")
        missing = run_cli("-c", daemon.address, "status")
        assert missing.returncode == 1 and "authentication required" in missing.stderr
    finally:
        daemon.stop()


def test_commands_from_a_pipe_run_one_by_one(slow_demo):
    script = "# a comment\nping\n\necho 'a  b'\njob cancel 99\necho 'unclosed\ncount 2\n"
    proc = run_cli("-c", slow_demo.address, stdin=script)
    assert proc.returncode == 1
    assert proc.stdout == "pong\na  b\nline 1\nline 2\n"
    assert "ERR no job 99" in proc.stderr and "cannot parse request" in proc.stderr


# ---- fan-out, against servers polled in this process ----


@pytest.fixture
def fleet() -> Iterator[List[reactor_mgmt.Server]]:
    """48 servers that answer `whoami`, one whose `whoami` never answers, in one thread."""
    servers = []
    for index in range(49):
        srv = reactor_mgmt.Server("127.0.0.1", 0)
        if index == 48:
            srv.add_command("whoami", lambda: Pending(timeout=0))
        else:
            srv.add_command("whoami", lambda index=index: {"name": f"node{index}", "up": True})
        srv.add_command(
            "fail", lambda index=index: (_ for _ in ()).throw(CommandError("nope")) if index == 0 else "fine"
        )
        servers.append(srv)
    thread = ServerThread(*servers)
    try:
        yield servers
    finally:
        thread.stop()


def test_fan_out_to_50_with_one_dead_and_one_slow(fleet):
    dead = free_port()
    addresses = [f"127.0.0.1:{srv.port}" for srv in fleet] + [f"127.0.0.1:{dead}"]
    args = [word for address in addresses for word in ("-c", address)]
    proc = run_cli(*args, "--timeout", "1", "whoami")
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert len(lines) == 48 * 2
    for index, srv in enumerate(fleet[:48]):
        assert f"127.0.0.1:{srv.port}: name: node{index}" in lines
        assert f"127.0.0.1:{srv.port}: up:   True" in lines
    errors = proc.stderr.splitlines()
    assert f"127.0.0.1:{dead}: cannot connect: Connection refused" in errors
    assert f"127.0.0.1:{fleet[48].port}: timed out: no reply within 1 s" in errors
    assert errors[-1] == "48 ok, 0 errors, 2 unreachable"
    assert "Traceback" not in proc.stderr


def test_fan_out_err_exits_1_and_json_names_the_endpoint(fleet, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# three of the fleet\n" + "".join(f"127.0.0.1:{srv.port}  # n{i}\n\n" for i, srv in enumerate(fleet[:3]))
    )
    proc = run_cli("--hosts-file", str(hosts), "fail")
    assert proc.returncode == 1
    first = f"127.0.0.1:{fleet[0].port}"
    assert proc.stderr.splitlines() == [f"{first}: ERR nope", "2 ok, 1 error, 0 unreachable"]
    assert sorted(proc.stdout.splitlines()) == sorted(f"127.0.0.1:{srv.port}: fine" for srv in fleet[1:3])

    proc = run_cli("--json", "--hosts-file", str(hosts), "-c", first, "whoami")  # duplicates count once
    assert proc.returncode == 0
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(reply["endpoint"] for reply in replies) == sorted(f"127.0.0.1:{s.port}" for s in fleet[:3])
    assert {reply["result"]["name"] for reply in replies} == {"node0", "node1", "node2"}
    assert proc.stderr == "3 ok, 0 errors, 0 unreachable\n"


def test_ctrl_c_ends_a_one_shot_stream_quietly(slow_demo):
    import signal

    # Not measured by coverage: in one of the first six CI runs this child, traced by subprocess
    # coverage, did not exit within 30 s of SIGINT, and it could not be reproduced alone. The
    # unconfirmed suspect is a KeyboardInterrupt landing inside coverage's own bookkeeping, so
    # the child runs untraced; a hang without coverage would still fail here.
    env = child_env()
    env.pop("COVERAGE_PROCESS_START", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reactor_mgmt", "-c", slow_demo.address, "count", "100000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        preexec_fn=default_sigint,
    )
    try:
        assert proc.stdout.readline() == b"line 1\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert b"Traceback" not in err


# ---- in process: the pieces behind the shell ----


def test_main_in_process(slow_demo, capsys):
    assert main(["-c", slow_demo.address, "count", "2"]) == 0
    assert capsys.readouterr().out == "line 1\nline 2\n"


def test_unix_socket_endpoint(tmp_path, capsys):
    path = str(tmp_path / "mgmt.sock")
    srv = reactor_mgmt.Server(None, None, unix=path)
    with ServerThread(srv):
        assert main(["-c", path, "level"]) == 0
    assert capsys.readouterr().out == "admin\n"


def test_text_a_handler_writes_itself_is_printed_without_an_ok(capsys):
    srv = reactor_mgmt.Server("127.0.0.1", 0)

    @srv.command
    def chatty(conn: reactor_mgmt.Connection):
        conn.write("first\nsecond")
        return reactor_mgmt.NO_REPLY

    with ServerThread(srv):
        address = f"127.0.0.1:{srv.port}"
        assert main(["-c", address, "chatty"]) == 0
        assert capsys.readouterr().out == "first\nsecond\n"
        assert main(["-c", address, "--json", "chatty"]) == 0
        assert capsys.readouterr().out == '"first"\n"second"\n'
        assert main(["-c", address, "-c", f"[::1]:{free_port()}", "--json", "chatty"]) == 2
        captured = capsys.readouterr()
        assert [json.loads(line) for line in captured.out.splitlines()] == [
            {"endpoint": address, "text": "first"},
            {"endpoint": address, "text": "second"},
        ]
        assert captured.err.endswith("1 ok, 0 errors, 1 unreachable\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hosts-file", "{tmp}/comments"], "hosts file {tmp}/comments lists no endpoints"),
        (["--hosts-file", "{tmp}/missing"], "cannot read hosts file {tmp}/missing: No such file or directory"),
        (["--address-file", "{tmp}/empty"], "address file {tmp}/empty is empty (is the server running?)"),
        (["-c", "127.0.0.1:99999"], "bad port 99999 in address 127.0.0.1:99999"),
    ],
)
def test_bad_endpoint_options_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "comments").write_text("# nothing here\n\n")
    (tmp_path / "empty").write_text("\n")
    args = [arg.format(tmp=tmp_path) for arg in args]
    assert main(args + ["ping"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"reactor-mgmt: {message.format(tmp=tmp_path)}\n")


def test_parse_help_and_completion(slow_demo):
    with reactor_mgmt.Client(slow_demo.address) as client:
        listing = client.call("help")
    commands = parse_help(listing)
    names = [" ".join(words) for words, _ in commands]
    assert {"show jobs", "show job", "job cancel", "count", "help", "ping"} <= set(names)
    assert dict((" ".join(w), o) for w, o in commands)["job cancel"] == ["--force"]
    completer = Completer(commands)
    assert completer.candidates([], "sh") == ["show "]
    assert completer.candidates(["show"], "j") == ["job ", "jobs "]
    assert completer.candidates(["show"], "jobs") == ["jobs "]
    assert completer.candidates(["help"], "st") == ["stats ", "status "]
    assert completer.candidates(["job", "cancel", "3"], "--f") == ["--force "]
    assert completer.candidates(["count"], "--") == ["--prefix "]
    assert completer.candidates(["nosuch"], "") == []


def test_version_prints_the_package_version_and_exits_0():
    for argv in (["--version"], ["-c", "127.0.0.1:1", "--version"]):
        proc = run_cli(*argv)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"reactor-mgmt {reactor_mgmt.__version__}\n", "")


# ---- the file-descriptor limit for fan-out ----


def test_the_fd_limit_when_getrlimit_fails_is_what_was_asked(monkeypatch):
    import resource

    from reactor_mgmt._cli import _raise_fd_limit

    def refuse(*args: object) -> None:
        raise OSError("not here")

    monkeypatch.setattr(resource, "getrlimit", refuse)
    assert _raise_fd_limit(300) == 300  # it raised UnboundLocalError


def test_the_fd_limit_when_setrlimit_fails_is_the_soft_limit(monkeypatch):
    import resource

    from reactor_mgmt._cli import _raise_fd_limit

    def refuse(*args: object) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda which: (64, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert _raise_fd_limit(300) == 64
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: None)
    assert _raise_fd_limit(300) == 300 and _raise_fd_limit(9000) == 4096  # raised, up to the hard limit


# ---- bytes that are not UTF-8, and the shell's history ----


def test_bytes_that_are_not_utf8_in_argv_or_on_stdin_get_the_servers_error_not_a_traceback():
    srv = reactor_mgmt.Server("127.0.0.1", 0)
    with ServerThread(srv):
        address = f"127.0.0.1:{srv.port}"
        proc = run_cli("-c", address, "ping", "\udcff")  # argv's bytes, as surrogateescape decodes them
        assert (proc.returncode, proc.stderr) == (1, "ERR request is not valid UTF-8\n")
        # A pipe, with stdin read strictly (a UTF-8 locale that is not C.UTF-8) and not.
        for errors in ("strict", "surrogateescape"):
            piped = subprocess.run(
                [sys.executable, "-m", "reactor_mgmt", "-c", address],
                input=b"ping \xff\nping\n",
                capture_output=True,
                env=child_env({"PYTHONIOENCODING": f"utf-8:{errors}"}),
                cwd=ROOT,
                timeout=60,
            )
            assert (piped.returncode, piped.stdout, piped.stderr) == (
                1,
                b"pong\n",
                b"ERR request is not valid UTF-8\n",
            ), errors


class _FakeReadline:
    """What the shell uses of readline: a history that input() adds each line to."""

    def __init__(self) -> None:
        self.history: List[str] = []

    def get_current_history_length(self) -> int:
        return len(self.history)

    def remove_history_item(self, index: int) -> None:
        del self.history[index]

    def write_history_file(self, path: str) -> None:
        pass


def _history_after(monkeypatch, typed: List[str], run_patched: bool = False) -> List[str]:
    """The shell's history after the lines ``typed`` at its prompt, through a fake readline;
    fanned out to two endpoints, so that no connection is made and no command runs."""
    from reactor_mgmt import _cli

    fake = _FakeReadline()
    lines = iter(typed)

    def fake_input(prompt: str) -> str:
        try:
            line = next(lines)
        except StopIteration:
            raise EOFError from None
        fake.history.append(line)
        return line

    def fake_setup(shell: _cli._Shell) -> None:
        shell.readline = fake

    monkeypatch.setattr("builtins.input", fake_input)
    monkeypatch.setattr(_cli._Shell, "_setup_readline", fake_setup)
    if not run_patched:
        monkeypatch.setattr(_cli._Shell, "run", lambda shell, words: None)
    runner = _cli._Runner([_cli.Endpoint(f"[::1]:{free_port()}")] * 2, None, 1.0, False)
    assert _cli._Shell(runner).loop() == 0
    return fake.history


def test_a_fanned_out_shell_keeps_a_typed_auth_token_for_the_next_commands(monkeypatch, capsys):
    # Each command of a fanned-out shell connects anew: `auth TOKEN` sent as a command
    # authenticated connections that closed at once, and the next command was refused.
    from reactor_mgmt import _cli

    seen = []
    monkeypatch.setattr(_cli._Shell, "run", lambda shell, words: seen.append((shell.runner.token, words)))
    typed = ["ping", "auth s3cret", "status", "auth challenge"]
    assert _history_after(monkeypatch, typed, run_patched=True) == ["ping", "status"]
    # `auth challenge` is the command that asks for a nonce, not a token: it is sent.
    assert seen == [(None, ["ping"]), ("s3cret", ["status"]), ("s3cret", ["auth", "challenge"])]
    err = capsys.readouterr().err
    assert "token kept" in err and "s3cret" not in err


def test_an_auth_line_that_does_not_parse_is_kept_out_of_the_history(monkeypatch, capsys):
    # `auth "s3cret` (an unbalanced quote) fails to parse; the scrub ran only after parsing, so
    # the token stayed in ~/.reactor_mgmt_history.
    assert _history_after(monkeypatch, ["ping", 'auth "s3cret', "'auth' s3cret2", "stats"]) == ["ping", "stats"]
    err = capsys.readouterr().err
    assert "No closing quotation" in err and "s3cret" not in err


def test_config_set_and_any_auth_word_are_kept_out_of_the_history(monkeypatch, capsys):
    # Only lines starting with `auth` were dropped: `config set api_key NEW-SECRET` and
    # `watch 1 auth TOKEN` stayed in ~/.reactor_mgmt_history.
    typed = [
        "ping",
        "config set api_key S3CRET-a",
        'watch 1 "config set" api_key S3CRET-b',
        "watch 1 auth S3CRET-c",
        "watch 1 'auth' \"S3CRET-d",  # does not parse: judged on its raw words
        "config   'set' x S3CRET-e",
        "config get api_key",
        "stats",
    ]
    assert _history_after(monkeypatch, typed) == ["ping", "config get api_key", "stats"]
    assert "S3CRET" not in capsys.readouterr().err


def test_a_fanned_out_shell_keeps_a_level_it_lowered_to_for_the_next_commands(monkeypatch, capsys):
    # Each command of a fanned-out shell connects anew: `level user` lowered connections that
    # closed at once, and the next command ran at the listener's level again.
    from reactor_mgmt import _cli

    servers = [reactor_mgmt.Server("127.0.0.1", 0) for _ in range(2)]
    typed = ["level", "level user", "level", "level operator", "level"]
    with ServerThread(*servers):
        endpoints = [_cli.Endpoint(f"127.0.0.1:{srv.port}") for srv in servers]
        assert _shell_typing(monkeypatch, endpoints, typed) == 0
    out, err = capsys.readouterr()
    answers = [line.split(": ", 1)[1] for line in out.splitlines() if line]  # the last: EOF's newline
    # operator (the listener's), then user for the rest: `level operator` cannot raise it again.
    assert answers == ["operator"] * 2 + ["user"] * 6, out
    assert "level kept: the next commands run at user" in err
    assert "cannot raise the level from user to operator" in err and "run at operator" not in err


def _shell_typing(monkeypatch, endpoint, typed: List[str]) -> int:
    """Runs the interactive shell on ``endpoint`` (a list of them: fanned out) with ``typed`` at
    its prompt."""
    from reactor_mgmt import _cli

    lines = iter(typed)

    def fake_input(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    monkeypatch.setattr(_cli._Shell, "_setup_readline", lambda shell: None)
    endpoints = endpoint if isinstance(endpoint, list) else [endpoint]
    return _cli._Shell(_cli._Runner(endpoints, None, 5.0, False)).loop()


def test_the_one_endpoint_shell_authenticates_a_typed_token_by_challenge_response(monkeypatch, capsys):
    # A typed `auth TOKEN` went to the server as it was, in clear text (over plain TCP too),
    # where --token proves the token by challenge-response: a server that takes no cleartext
    # token refused it.
    from reactor_mgmt import _cli

    srv = reactor_mgmt.Server("127.0.0.1", 0, token="s3cret", cleartext_auth="never")
    srv.add_command("secret", lambda: "the plans")
    with ServerThread(srv):
        endpoint = _cli.Endpoint(f"127.0.0.1:{srv.port}")
        assert _shell_typing(monkeypatch, endpoint, ["secret", "auth wrong", "auth s3cret", "secret"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[:2] == ["OK", "the plans"], out
    assert err.count("ERR ") == 2 and "cleartext auth refused" not in err, err


def test_the_one_endpoint_shell_sends_no_typed_token_in_clear_text_to_an_unverified_socket(monkeypatch, capsys):
    # `--app NAME` with one instance: a typed `auth TOKEN` went as is to a Unix socket whose
    # server discovery could not verify, where --token and the fanned-out shell refuse to.
    import os
    import socket
    import tempfile
    import threading

    from reactor_mgmt import _cli

    received: List[bytes] = []
    with tempfile.TemporaryDirectory(prefix="rm-", dir="/tmp") as folder:  # AF_UNIX: ~107 bytes at most
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(os.path.join(folder, "s"))
        listener.listen(1)
        listener.settimeout(10)

        def impostor() -> None:  # offers no challenge, and would take a token
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                for line in conn.makefile("rb"):
                    received.append(line)
                    request_id = json.loads(line).get("id")
                    error = {"code": "unknown_command", "message": "unknown command"}
                    conn.sendall(json.dumps({"id": request_id, "ok": False, "error": error}).encode() + b"\n")

        thread = threading.Thread(target=impostor, daemon=True)
        thread.start()
        endpoint = _cli.Endpoint(os.path.join(folder, "s"))
        endpoint.label, endpoint.vouched = "app[123]", False  # as --app marks it
        try:
            assert _shell_typing(monkeypatch, endpoint, ["auth s3cret"]) == 0
        finally:
            listener.close()
            thread.join(10)
    assert received and not any(b"s3cret" in line for line in received), received
    err = capsys.readouterr().err
    assert "discovery could not verify" in err and "s3cret" not in err, err
