# Helpers for the client-side TLS and authentication tests: certificates made at run time with
# the openssl command, and TlsFront, a small threaded TLS terminator (stdlib ssl) in front of a
# real reactor_mgmt server, so the client speaks TLS to the very protocol it will meet.
from __future__ import annotations

import hmac
import selectors
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import List, Optional, Tuple

import reactor_mgmt
from conftest import TIMEOUT, require_tool
from reactor_mgmt._wire import challenge_digest


def make_cert(
    folder: Path, stem: str, cn: str = "localhost", san: str = "IP:127.0.0.1,DNS:localhost"
) -> Tuple[str, str]:
    """A self-signed certificate and its key, as (cert.pem, key.pem) paths."""
    openssl = require_tool("openssl")
    cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={cn}",
            "-addext",
            f"subjectAltName={san}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(cert), str(key)


def server_context(cert: str, key: str, client_ca: Optional[str] = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


class TlsFront:
    """Accepts TLS on 127.0.0.1 and relays the plaintext to ``backend`` (a reactor_mgmt
    server's address), one thread per connection. ``handshakes`` counts the handshakes that
    completed, ``failures`` holds the ones that did not, ``peer_certs`` each client's cert."""

    def __init__(self, context: ssl.SSLContext, backend: Tuple[str, int]) -> None:
        self.context = context
        self.backend = backend
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.handshakes = 0
        self.failures: List[str] = []
        self.peer_certs: List[Optional[dict]] = []
        self._stopping = False
        self._threads: List[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(TIMEOUT)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ValueError) as exc:
            self.failures.append(str(exc))
            raw.close()
            return
        self.handshakes += 1
        self.peer_certs.append(tls.getpeercert())
        try:
            backend = socket.create_connection(self.backend, timeout=TIMEOUT)
        except OSError:
            tls.close()
            return
        selector = selectors.DefaultSelector()
        selector.register(tls, selectors.EVENT_READ, backend)
        selector.register(backend, selectors.EVENT_READ, tls)
        try:
            while not self._stopping:
                for key, _ in selector.select(0.05):
                    source, sink = key.fileobj, key.data
                    data = source.recv(65536)
                    while data and isinstance(source, ssl.SSLSocket) and source.pending():
                        data += source.recv(source.pending())
                    if not data:
                        return
                    sink.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            backend.close()
            tls.close()

    def close(self) -> None:
        self._stopping = True
        _stop_accepting(self.listener)
        self._accepter.join(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)

    def __enter__(self) -> TlsFront:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class SilentListener:
    """Accepts TCP connections and never speaks: a TLS handshake to it stalls."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.accepted: List[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(sock)

    def close(self) -> None:
        _stop_accepting(self.listener)
        self._thread.join(TIMEOUT)
        for sock in self.accepted:
            sock.close()


def _stop_accepting(listener: socket.socket) -> None:
    """Wakes a thread blocked in accept() (close() alone does not, on Linux), then closes."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()


def check_response(self: reactor_mgmt.Server, challenge: str, response: str) -> bool:
    """What Server.check_response does (see the report to the lead), for servers without it."""
    token = self._token
    if token is None:
        return True
    return hmac.compare_digest(response.encode("utf-8", "surrogatepass"), challenge_digest(token, challenge).encode())


def ensure_check_response(monkeypatch) -> None:
    """The server's own check_response is used: nothing to patch (kept for the tests' call sites)."""
    assert hasattr(reactor_mgmt.Server, "check_response")
