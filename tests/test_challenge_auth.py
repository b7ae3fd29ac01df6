# Challenge-response authentication (`auth challenge`, `auth response HMAC`), the server's
# cleartext_auth policy for `auth TOKEN`, and the clients that prefer the former: the Python
# Client, FanOut and the CLI, plus the by-hand recipe with the real openssl command.
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import tempfile
import weakref
from typing import Any, Iterator

import pytest

import reactor_mgmt
from conftest import RawClient, ServerThread, require_tool
from reactor_mgmt._builtins import cleartext_allowed
from reactor_mgmt._client import ERROR, OK, UNREACHABLE, ConnectionFailed, FanOut, auth_requests, is_challenge
from reactor_mgmt._wire import challenge_digest
from test_cli import run_cli
from tls_helpers import ensure_check_response

TOKEN = "s3cret-t0ken"


@pytest.fixture(autouse=True)
def _server_side(monkeypatch) -> None:
    ensure_check_response(monkeypatch)


@pytest.fixture
def authed(make_server) -> reactor_mgmt.Server:
    srv = make_server(token=TOKEN)

    @srv.command
    def secret() -> str:
        return "the plans"

    return srv


def _challenge(client: RawClient) -> str:
    (challenge,) = client.request("auth challenge")
    assert re.fullmatch(r"[0-9a-f]{32}", challenge), challenge
    return challenge


# ---- the protocol, by text and JSON ----


def test_challenge_response_authenticates_without_sending_the_token(authed):
    client = RawClient(authed)
    assert client.request("secret") == ["ERR authentication required (send 'auth TOKEN')"]
    challenge = _challenge(client)
    assert client.request(f"auth response {challenge_digest(TOKEN, challenge)}") == ["OK"]
    assert client.request("secret") == ["the plans"]
    client.close()


def test_a_challenge_is_random_per_request_and_good_for_one_answer(authed):
    client = RawClient(authed)
    first, second = _challenge(client), _challenge(client)
    assert first != second
    # Only the latest challenge counts, and an answer uses it up, right or wrong.
    assert client.request(f"auth response {challenge_digest(TOKEN, first)}") == ["ERR authentication failed"]
    assert client.request(f"auth response {challenge_digest(TOKEN, second)}") == [
        "ERR no challenge to answer: send 'auth challenge' first"
    ]
    other = RawClient(authed)  # challenges are per connection
    assert other.request(f"auth response {challenge_digest(TOKEN, second)}") == [
        "ERR no challenge to answer: send 'auth challenge' first"
    ]
    third = _challenge(client)
    assert other.request(f"auth response {challenge_digest(TOKEN, third)}")[0].startswith("ERR no challenge")
    assert client.request(f"auth response {challenge_digest(TOKEN, third).upper()}") == ["OK"]
    client.close()
    other.close()


def test_wrong_answers_count_towards_the_failure_limit(authed):
    client = RawClient(authed)
    for _ in range(2):
        _challenge(client)
        assert client.request("auth response 00") == ["ERR authentication failed"]
    assert client.request("auth wrong") == ["ERR authentication failed; closing"]
    assert client.read_until_closed().endswith(b"") and client.eof


def test_failed_authentications_are_logged_with_rate_limiting(authed, caplog, monkeypatch):
    # Every failure made a WARNING: 1,000 connections with 3 bad tokens each, 3,000 records in
    # 0.4 s. As for HTTP probes: one per 10 s, with the count of the rest.
    import logging

    from reactor_mgmt import _builtins

    now = [1000.0]
    monkeypatch.setattr(_builtins, "time", type("Clock", (), {"monotonic": staticmethod(lambda: now[0])}))
    with caplog.at_level(logging.WARNING, "reactor_mgmt"):
        for _ in range(2):
            client = RawClient(authed)
            assert client.request("auth wrong") == ["ERR authentication failed"]
            _challenge(client)
            assert client.request("auth response 00") == ["ERR authentication failed"]
            assert client.request("auth wrong") == ["ERR authentication failed; closing"]
            client.read_until_closed()
            client.close()
        now[0] += 10.0
        client = RawClient(authed)
        assert client.request("auth wrong") == ["ERR authentication failed"]
        client.close()
    failed = [record.getMessage() for record in caplog.records if "failed authentication" in record.getMessage()]
    assert len(failed) == 2
    assert re.fullmatch(r"failed authentication on connection #\d+ \(1 of 3\)", failed[0])
    assert re.fullmatch(
        r"failed authentication on connection #\d+ \(1 of 3\) \(5 more since the last report\)", failed[1]
    )


def test_json_form_and_help(authed):
    client = RawClient(authed)
    client.send('{"cmd": "auth challenge", "id": 1}\n')
    reply = json.loads(client.lines(1)[0])
    assert reply["ok"] and is_challenge(reply["result"])
    answer = challenge_digest(TOKEN, reply["result"])
    client.send(json.dumps({"argv": ["auth", "response", answer], "id": 2}) + "\n")
    assert json.loads(client.lines(1)[0]) == {"id": 2, "ok": True, "result": "OK"}
    client.close()
    fresh = RawClient(authed)
    fresh.send("help\n")
    listing = fresh.wait_for(lambda buf: b"Type 'help" in buf).decode()
    assert "auth challenge" in listing and "auth response HMAC" in listing  # offered before auth
    fresh.close()


def test_a_token_that_is_the_word_challenge(make_server):
    # Text `auth challenge` is the subcommand; such a token goes in cleartext only as JSON.
    srv = make_server(token="challenge")
    client = RawClient(srv)
    assert is_challenge(client.request("auth challenge")[0])
    client.send('{"cmd": "auth", "args": ["challenge"], "id": 1}\n')
    assert json.loads(client.lines(1)[0])["ok"] is True
    client.close()
    with ServerThread(srv):
        with reactor_mgmt.Client(f"127.0.0.1:{srv.port}", token="challenge") as python_client:
            assert python_client.call("stats")["connections_open"] >= 1


def test_the_openssl_recipe_by_hand(authed):
    openssl = require_tool("openssl")
    client = RawClient(authed)
    challenge = _challenge(client)
    # The README's recipe, run by a shell exactly as written there.
    proc = subprocess.run(
        ["sh", "-c", f"printf '%s' {challenge} | {openssl} dgst -sha256 -hmac \"$TOKEN\""],
        env={"TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    digest = proc.stdout.strip().rsplit("= ", 1)[1]  # "SHA2-256(stdin)= 9f86..." or "(stdin)= 9f86..."
    assert digest == challenge_digest(TOKEN, challenge)
    assert client.request(f"auth response {digest}") == ["OK"]
    assert client.request("secret") == ["the plans"]
    client.close()


def test_challenges_do_not_keep_connections_alive(make_server):
    srv = make_server(token=TOKEN, idle_timeout=0)  # no reaper timer entry to outlive the client
    refs = []
    for _ in range(5):
        client = RawClient(srv)
        _challenge(client)
        refs.append(weakref.ref(srv.connections[0]))
        client.close()
        for _ in range(5):
            srv.poll(0.01)
    gc.collect()
    assert [ref() for ref in refs] == [None] * 5


# ---- cleartext_auth: where `auth TOKEN` is allowed ----


class _Listener:
    def __init__(self, address: Any) -> None:
        self.address = address


@pytest.mark.parametrize(
    "address, loopback",
    [
        (("127.0.0.1", 8123), True),
        (("127.8.9.10", 8123), True),
        (("::1", 8123, 0, 0), True),
        (("::ffff:127.0.0.1", 8123, 0, 0), True),
        (("fe80::1%eth0", 8123, 0, 2), False),
        (("0.0.0.0", 8123), False),
        (("192.168.1.5", 8123), False),
        (("::", 8123, 0, 0), False),
        (("not-an-ip", 8123), False),
        ("/run/app.sock", True),
        ("\0abstract", True),
        (None, False),
    ],
)
def test_cleartext_policy(address, loopback):
    listener = _Listener(address)
    assert cleartext_allowed("always", listener) is True
    assert cleartext_allowed("never", listener) is False
    assert cleartext_allowed("loopback", listener) is loopback


def test_cleartext_refused_where_the_policy_says(make_server, tmp_path, caplog):
    srv = make_server(host="0.0.0.0", token=TOKEN, unix=str(tmp_path / "mgmt.sock"))
    srv.cleartext_auth = "loopback"
    remote_side = RawClient(srv, ("127.0.0.1", srv.port))  # through a listener bound to every address
    assert remote_side.request(f"auth {TOKEN}") == ["ERR cleartext auth refused on this listener: use 'auth challenge'"]
    assert remote_side.request(f"auth {TOKEN}")[0].startswith("ERR cleartext auth refused")  # no failure counted
    assert remote_side.request(f"auth {TOKEN}")[0].startswith("ERR cleartext auth refused")
    challenge = _challenge(remote_side)
    assert remote_side.request(f"auth response {challenge_digest(TOKEN, challenge)}") == ["OK"]
    unix_side = RawClient(srv, str(tmp_path / "mgmt.sock"))
    assert unix_side.request(f"auth {TOKEN}") == ["OK"]
    srv.cleartext_auth = "never"
    unix_side2 = RawClient(srv, str(tmp_path / "mgmt.sock"))
    assert unix_side2.request(f"auth {TOKEN}")[0].startswith("ERR cleartext auth refused")
    assert any("refused cleartext auth" in record.getMessage() for record in caplog.records)
    for client in (remote_side, unix_side, unix_side2):
        client.close()


# ---- the clients use it ----


@pytest.fixture
def strict() -> Iterator[reactor_mgmt.Server]:
    """A server that refuses cleartext auth everywhere: only challenge-response gets in."""
    srv = reactor_mgmt.Server("127.0.0.1", 0, token=TOKEN)
    srv.cleartext_auth = "never"
    srv.add_command("secret", lambda: "the plans")
    with ServerThread(srv):
        yield srv


def test_client_and_fan_out_use_challenge_response(strict):
    address = f"127.0.0.1:{strict.port}"
    with reactor_mgmt.Client(address, token=TOKEN) as client:
        assert client.call("secret") == "the plans"
    with pytest.raises(reactor_mgmt.RemoteError) as info:
        reactor_mgmt.Client(address, token="wrong")
    assert (info.value.code, info.value.message) == ("denied", "authentication failed")
    events: list = []
    outcomes = FanOut(
        [address, address.replace("127.0.0.1", "localhost")],
        {"argv": ["secret"]},
        on_event=lambda endpoint, kind, value: events.append((kind, value)),
        token=TOKEN,
    ).run()
    assert outcomes == [OK, OK] and events == [("result", "the plans")] * 2
    events.clear()
    outcomes = FanOut(
        [address], {"argv": ["secret"]}, on_event=lambda e, kind, value: events.append((kind, value)), token="wrong"
    ).run()
    assert outcomes == [ERROR] and events[0][1].message == "authentication failed"


def test_cli_uses_challenge_response(strict):
    proc = run_cli("-c", f"127.0.0.1:{strict.port}", "--token", TOKEN, "secret")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "the plans\n", "")


@pytest.fixture
def short_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="rm-", dir="/tmp") as path:  # AF_UNIX paths: ~107 bytes at most
        yield path


def test_clients_fall_back_to_cleartext_on_a_server_without_challenges(short_dir):
    # An older server: `auth challenge` reads as `auth` with the token "challenge", which fails
    # (one failure of three), and the cleartext token follows, over a Unix socket (its mode says
    # who listens) or verified TLS. Over plain TCP the clients refuse: whoever binds the port
    # while the server is down could answer `auth challenge` with an error and collect the token.
    path = os.path.join(short_dir, "old.sock")
    srv = reactor_mgmt.Server("127.0.0.1", 0, unix=path, token=TOKEN)
    srv.remove_command("auth challenge")
    srv.remove_command("auth response")
    srv.add_command("secret", lambda: "the plans")
    with ServerThread(srv):
        with reactor_mgmt.Client(path, token=TOKEN) as client:
            assert client.call("secret") == "the plans"
        events: list = []
        outcomes = FanOut(
            [path], {"argv": ["secret"]}, token=TOKEN, on_event=lambda e, kind, value: events.append((kind, value))
        ).run()
        assert outcomes == [OK] and events == [("result", "the plans")]
        proc = run_cli("-c", path, "--token", TOKEN, "secret")
        assert (proc.returncode, proc.stdout) == (0, "the plans\n")

        address = f"127.0.0.1:{srv.port}"
        with pytest.raises(ConnectionFailed, match="not sent in clear text over plain TCP"):
            reactor_mgmt.Client(address, token=TOKEN).call("secret")
        events.clear()
        outcomes = FanOut(
            [address], {"argv": ["secret"]}, token=TOKEN, on_event=lambda e, kind, value: events.append((kind, value))
        ).run()
        assert outcomes == [UNREACHABLE] and "not sent in clear text" in events[0][1]
        proc = run_cli("-c", address, "--token", TOKEN, "secret")
        assert proc.returncode == 2 and "not sent in clear text" in proc.stderr and TOKEN not in proc.stderr


def test_auth_requests():
    challenge = "ab" * 16
    assert auth_requests(challenge, "t") == {"cmd": "auth response", "args": [challenge_digest("t", challenge)]}
    assert auth_requests("OK", "t") is None  # an older server without a token let us in
    assert auth_requests(None, "t") == {"cmd": "auth", "args": ["t"]}
    assert auth_requests("something else", "t") == {"cmd": "auth", "args": ["t"]}
    with pytest.raises(ConnectionFailed):
        auth_requests(None, "t", cleartext_ok=False)
    assert auth_requests("OK", "t", cleartext_ok=False) is None


def test_clients_with_an_auth_challenge_that_is_not_ours(short_dir):
    # A host's own `auth challenge` that streams is no challenge: the clients wait for its end
    # and fall back to cleartext (on a Unix socket); one that fails for another reason fails the endpoint.
    srv = reactor_mgmt.Server("127.0.0.1", 0, unix=os.path.join(short_dir, "own.sock"), token=TOKEN)
    srv.registry.add("auth challenge", lambda: iter(["a", "b"]), pre_auth=True)
    srv.add_command("secret", lambda: "the plans")
    failing = reactor_mgmt.Server("127.0.0.1", 0, token=TOKEN)

    def broken():
        raise reactor_mgmt.CommandError("challenges are off today")

    failing.registry.add("auth challenge", broken, pre_auth=True)
    with ServerThread(srv, failing):
        address, broken_address = os.path.join(short_dir, "own.sock"), f"127.0.0.1:{failing.port}"
        with reactor_mgmt.Client(address, token=TOKEN) as client:
            assert client.call("secret") == "the plans"
        events: list = []
        outcomes = FanOut(
            [address, broken_address],
            {"argv": ["secret"]},
            token=TOKEN,
            on_event=lambda e, kind, value: events.append((e.label, kind, value)),
        ).run()
        assert outcomes == [OK, ERROR]
        assert (address, "result", "the plans") in events
        ((_, kind, error),) = [event for event in events if event[0] == broken_address]
        assert (kind, error.code, error.message) == ("error", "error", "challenges are off today")
        with pytest.raises(reactor_mgmt.RemoteError, match="challenges are off today"):
            reactor_mgmt.Client(broken_address, token=TOKEN)


def test_the_server_and_the_builtins_agree_on_the_cleartext_auth_policies():
    from reactor_mgmt import _builtins, _server

    assert _server._CLEARTEXT_AUTH == _builtins.CLEARTEXT_AUTH
