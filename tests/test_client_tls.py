# The client side of TLS: Client, FanOut and the reactor-mgmt CLI with --tls, --cafile, --cert,
# --key and --insecure, against a stdlib-ssl TLS terminator in front of a real server (see
# tls_helpers.TlsFront), with certificates that openssl makes at run time.
from __future__ import annotations

import inspect
import logging
import ssl
import time
from typing import Iterator, List, NamedTuple

import pytest

import reactor_mgmt
from conftest import TIMEOUT, ServerThread
from reactor_mgmt._client import ERROR, OK, UNREACHABLE, ClientTimeout, ConnectionFailed, FanOut, tls_context
from reactor_mgmt._errors import ConfigError
from test_cli import run_cli
from tls_helpers import SilentListener, TlsFront, ensure_check_response, make_cert, server_context


class Certs(NamedTuple):
    server: str
    server_key: str
    client: str
    client_key: str
    other: str  # a CA that signed neither
    other_key: str
    wrong_name: str  # valid for "elsewhere.invalid" only
    wrong_name_key: str


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    return Certs(
        *make_cert(folder, "server"),
        *make_cert(folder, "client", cn="ops-laptop", san="DNS:ops-laptop"),
        *make_cert(folder, "other"),
        *make_cert(folder, "wrong", cn="elsewhere.invalid", san="DNS:elsewhere.invalid"),
    )


@pytest.fixture
def backend(monkeypatch) -> Iterator[reactor_mgmt.Server]:
    ensure_check_response(monkeypatch)
    srv = reactor_mgmt.Server("127.0.0.1", 0, token="s3cret")
    srv.cleartext_auth = "never"  # so every authentication below is challenge-response

    @srv.command
    def add(a: int, b: int) -> int:
        return a + b

    @srv.command
    def count(n: int = 3):
        return (f"line {i}" for i in range(1, n + 1))

    with ServerThread(srv):
        yield srv


@pytest.fixture
def front(certs, backend) -> Iterator[TlsFront]:
    with TlsFront(server_context(certs.server, certs.server_key), ("127.0.0.1", backend.port)) as tls_front:
        yield tls_front


def _run(endpoints, request, **options) -> tuple[List[str], list]:
    events: list = []
    outcomes = FanOut(
        endpoints, request, on_event=lambda e, kind, value: events.append((e.label, kind, value)), **options
    ).run()
    return outcomes, events


# ---- Client ----


def test_client_over_tls_with_a_cafile_and_challenge_response(certs, front):
    with reactor_mgmt.Client(front.address, cafile=certs.server, token="s3cret") as client:
        assert client.tls_context is not None
        assert client.call("ping") == "pong"
        assert client.call("add", 2, 3) == 5
        assert list(client.stream("count", 4)) == ["line 1", "line 2", "line 3", "line 4"]
        stream = client.stream("count", 1_000_000)
        next(stream)
        stream.close()  # drops the connection: the next call reconnects, handshakes, authenticates
        assert client.call("add", 1, 1) == 2
    assert front.handshakes == 2
    with reactor_mgmt.Client(f"localhost:{front.port}", tls=True, cafile=certs.server) as client:
        assert client.call("ping") == "pong"  # the DNS name in the certificate matches too


def test_client_refuses_an_untrusted_or_misnamed_certificate(certs, front, backend):
    with pytest.raises(ConnectionFailed, match="TLS handshake failed: certificate verify failed"):
        reactor_mgmt.Client(front.address, cafile=certs.other)
    with pytest.raises(ConnectionFailed, match="certificate verify failed"):
        reactor_mgmt.Client(front.address, tls=True)  # the system's CAs did not sign it
    with TlsFront(server_context(certs.wrong_name, certs.wrong_name_key), ("127.0.0.1", backend.port)) as wrong:
        with pytest.raises(ConnectionFailed, match="(?i)hostname mismatch|IP address mismatch"):
            reactor_mgmt.Client(wrong.address, cafile=certs.wrong_name)


def test_insecure_skips_verification_and_logs_a_warning(certs, front, caplog):
    with caplog.at_level(logging.WARNING, logger="reactor_mgmt"):
        with reactor_mgmt.Client(front.address, insecure=True) as client:
            assert client.call("ping") == "pong"
    assert any("verification is off" in record.getMessage() for record in caplog.records)


def test_client_certificate_for_mutual_tls(certs, backend):
    context = server_context(certs.server, certs.server_key, client_ca=certs.client)
    with TlsFront(context, ("127.0.0.1", backend.port)) as mutual:
        with reactor_mgmt.Client(
            mutual.address, cafile=certs.server, cert=certs.client, key=certs.client_key
        ) as client:
            assert client.call("ping") == "pong"
        assert mutual.peer_certs[-1]["subject"] == ((("commonName", "ops-laptop"),),)
        # Without one, TLS 1.3 finishes the client's side of the handshake, then the server's
        # alert ends the connection: the first exchange fails, and nothing ran.
        with pytest.raises(ConnectionFailed):
            with reactor_mgmt.Client(mutual.address, cafile=certs.server, timeout=5) as client:
                client.call("ping")
        deadline = time.monotonic() + TIMEOUT  # the front's thread may record it after the client saw it
        while not mutual.failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mutual.failures


def test_plaintext_server_and_stalled_handshake(backend, certs):
    with pytest.raises(ConnectionFailed, match="TLS handshake failed"):
        reactor_mgmt.Client(f"127.0.0.1:{backend.port}", cafile=certs.server)
    silent = SilentListener()
    try:
        with pytest.raises(ClientTimeout, match="no TLS handshake within 0.3 s"):
            reactor_mgmt.Client(silent.address, cafile=certs.server, timeout=0.3)
    finally:
        silent.close()


def test_a_unix_socket_stays_plain(tmp_path, certs, monkeypatch):
    path = str(tmp_path / "mgmt.sock")
    srv = reactor_mgmt.Server(None, None, unix=path)
    with ServerThread(srv):
        with reactor_mgmt.Client(path, cafile=certs.server) as client:
            assert client.call("ping") == "pong"
        outcomes, events = _run([path], {"argv": ["ping"]}, tls=True, cafile=certs.server)
        assert outcomes == [OK] and events == [(path, "result", "pong")]


def test_tls_configuration_errors(certs, tmp_path):
    with pytest.raises(ConfigError, match="cannot load CA file"):
        tls_context(cafile=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="needs its certificate"):
        tls_context(key=certs.client_key)
    with pytest.raises(ConfigError, match="cannot load client certificate"):
        tls_context(cert=certs.client, key=certs.other_key)  # a key that does not match
    with pytest.raises(ConfigError, match="either an ssl.SSLContext"):
        reactor_mgmt.Client("127.0.0.1:1", tls=ssl.create_default_context(), cafile=certs.server)
    context = tls_context(cafile=certs.server)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_ready_context_is_used_as_it_is(certs, front):
    context = ssl.create_default_context(cafile=certs.server)
    with reactor_mgmt.Client(front.address, tls=context, token="s3cret") as client:
        assert client.tls_context is context
        assert client.call("add", 20, 22) == 42


# ---- FanOut ----


def test_fan_out_over_tls_with_failures_side_by_side(certs, backend):
    fronts = [TlsFront(server_context(certs.server, certs.server_key), ("127.0.0.1", backend.port)) for _ in range(5)]
    untrusted = TlsFront(server_context(certs.other, certs.other_key), ("127.0.0.1", backend.port))
    silent = SilentListener()
    plain = f"127.0.0.1:{backend.port}"
    try:
        endpoints = [front.address for front in fronts] + [untrusted.address, silent.address, plain]
        outcomes, events = _run(
            endpoints, {"argv": ["add", "40", "2"]}, token="s3cret", cafile=certs.server, timeout=1.0
        )
        assert outcomes == [OK] * 5 + [UNREACHABLE] * 3
        results = {label: value for label, kind, value in events if kind == "result"}
        assert results == {front.address: 42 for front in fronts}
        failed = {label: value for label, kind, value in events if kind == "failed"}
        assert failed[untrusted.address].startswith("cannot connect: TLS handshake failed: certificate verify failed")
        assert failed[silent.address] == "cannot connect: no TLS handshake within 1 s"
        assert failed[plain].startswith("cannot connect: TLS handshake failed")
        assert all(front.handshakes == 1 for front in fronts)

        outcomes, events = _run([fronts[0].address], {"argv": ["count", "3"]}, token="s3cret", cafile=certs.server)
        assert outcomes == [OK]
        assert [value for _, kind, value in events if kind == "item"] == ["line 1", "line 2", "line 3"]
        outcomes, events = _run([fronts[0].address], {"argv": ["add", "1", "1"]}, token="wrong", cafile=certs.server)
        assert outcomes == [ERROR] and events[0][2].message == "authentication failed"
        outcomes, events = _run([fronts[0].address], {"argv": ["add", "1", "1"]}, insecure=True)
        assert outcomes == [ERROR] and "authentication required" in events[0][2].message
    finally:
        for tls_front in [*fronts, untrusted]:
            tls_front.close()
        silent.close()


def test_fan_out_reads_a_large_reply_over_tls(certs, backend):
    @backend.command
    def big():
        return "x" * 300_000  # many TLS records in one reply

    with TlsFront(server_context(certs.server, certs.server_key), ("127.0.0.1", backend.port)) as tls_front:
        outcomes, events = _run([tls_front.address], {"argv": ["big"]}, token="s3cret", cafile=certs.server)
    assert outcomes == [OK] and events == [(tls_front.address, "result", "x" * 300_000)]


# ---- the CLI ----


def test_cli_tls_options(certs, front):
    ok = run_cli("-c", front.address, "--cafile", certs.server, "--token", "s3cret", "add", "1", "2")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "3\n", "")
    fanned = run_cli(
        "-c",
        front.address,
        "-c",
        f"localhost:{front.port}",
        "--tls",
        "--cafile",
        certs.server,
        "--token",
        "s3cret",
        "ping",
    )
    assert fanned.returncode == 0, fanned.stderr
    assert sorted(fanned.stdout.splitlines()) == [f"127.0.0.1:{front.port}: pong", f"localhost:{front.port}: pong"]

    insecure = run_cli("-c", front.address, "--insecure", "ping")
    assert (insecure.returncode, insecure.stdout) == (0, "pong\n")
    assert insecure.stderr.startswith("reactor-mgmt: warning: --insecure")
    assert len(insecure.stderr.splitlines()) == 1  # the library's own warning is not repeated

    untrusted = run_cli("-c", front.address, "--tls", "ping")
    assert untrusted.returncode == 2
    assert untrusted.stderr.startswith(f"{front.address}: cannot connect: TLS handshake failed: certificate verify")
    missing = run_cli("-c", front.address, "--cafile", "/nonexistent/ca.pem", "ping")
    assert missing.returncode == 2 and missing.stderr.startswith("reactor-mgmt: cannot load CA file /nonexistent")
    assert "Traceback" not in missing.stderr + untrusted.stderr


def test_cli_client_certificate(certs, backend):
    context = server_context(certs.server, certs.server_key, client_ca=certs.client)
    with TlsFront(context, ("127.0.0.1", backend.port)) as mutual:
        proc = run_cli(
            "-c",
            mutual.address,
            "--cafile",
            certs.server,
            "--cert",
            certs.client,
            "--key",
            certs.client_key,
            "--token",
            "s3cret",
            "add",
            "2",
            "2",
        )
        assert (proc.returncode, proc.stdout) == (0, "4\n"), proc.stderr


# ---- the real server, once its TLS listeners land ----


def test_against_the_servers_own_tls_listener(certs, monkeypatch):
    if "tls" not in inspect.signature(reactor_mgmt.Server).parameters:
        pytest.skip("Server(tls=...) has not landed yet")
    ensure_check_response(monkeypatch)
    srv = reactor_mgmt.Server("127.0.0.1", 0, tls=server_context(certs.server, certs.server_key), token="t")
    with ServerThread(srv):
        address = f"127.0.0.1:{srv.port}"
        with reactor_mgmt.Client(address, cafile=certs.server, token="t") as client:
            assert client.call("ping") == "pong"
        outcomes, events = _run(
            [address] * 1 + [f"localhost:{srv.port}"], {"argv": ["ping"]}, token="t", cafile=certs.server
        )
        assert outcomes == [OK, OK], events


def test_fan_out_takes_records_already_decrypted():
    class Decrypted:  # an SSLSocket with two records' worth buffered: no event will say so
        def __init__(self) -> None:
            self.chunks = [b"first ", b"second ", b"third"]

        def recv(self, size: int) -> bytes:
            return self.chunks.pop(0)

        def pending(self) -> int:
            return len(self.chunks[0]) if self.chunks else 0

    engine = FanOut([], {"cmd": "ping"}, on_event=lambda *event: None)
    assert engine._recv(Decrypted()) == b"first second third"
