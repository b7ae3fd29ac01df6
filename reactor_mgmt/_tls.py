# TLS for the transport, imported only by a server with a TLS listener (ssl costs ~10 ms of
# import time that a plaintext server must not pay).
#
# A TlsTransport is a Transport whose socket is an ssl.SSLSocket made with
# do_handshake_on_connect=False. The handshake is driven by poll(): each readable or writable
# event takes one non-blocking do_handshake() step, and SSLWantRead/WriteError become the
# selector interest; past the poll's end (its budget or timeout) a step is not taken, unless the
# poll has read nothing yet (the event comes again next poll). A deadline (default 10 s) closes
# a client that never finishes, so stalled handshakes cannot hold the connection slots.
# Plaintext, an HTTP request or an untrusted client certificate fails the handshake: the
# connection is closed, and nothing runs.
#
# After the handshake, reads and sends are the Transport's own (one recv per readable event, and
# sends through its one send site; a peer's close_notify reads as b"", an EOF). A graceful
# close sends our close_notify before the EOF. Records already decrypted sit in
# SSLSocket.pending() and raise no event, so the next poll's events get one for them
# (Loop.read_pending), taken in its turn like any socket's.
#
# A client that shuts down writing on the TCP socket with no close_notify first (`ncat --ssl` at
# the end of its input) is a half-close like any other: its replies are still sent. OpenSSL 3
# takes that EOF as fatal unless the context has OP_IGNORE_UNEXPECTED_EOF (see
# tolerate_unexpected_eof), which the listener sets on the host's context.
#
# A connection refused at max_connections gets its line inside TLS, never as plaintext (which
# a TLS client reports as "wrong version number"): a TlsRefusal takes the handshake, sends the
# line and our close_notify, drains the client until its EOF, and closes. It is no connection
# (no session, no slot, no id), and a listener keeps at most REFUSALS_IN_HANDSHAKE of them:
# past that, a refused client is closed with nothing sent, so a flood at the limit costs a
# bounded number of sockets and handshakes.
from __future__ import annotations

import socket
import ssl

from ._log import Throttle, format_address, log
from ._transport import LINGER_SECONDS, RDHUP, Transport, allow_would_block, hang_up, send_some

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Set

allow_would_block(ssl.SSLWantReadError, ssl.SSLWantWriteError)

_READ, _WRITE = 1, 2  # selectors.EVENT_READ, EVENT_WRITE
HANDSHAKE_TIMEOUT = 10.0
_refusals = Throttle()  # a client can fail handshakes at will: one log record per interval
# OpenSSL 3.0 and later: Python names it when built with one (3.9 sets it on every context it
# makes, 3.10 to 3.13 do not). OpenSSL 1.1.1 has no such option, and no need: a TCP EOF there
# left later writes working.
_IGNORE_UNEXPECTED_EOF = getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
# Refused clients a listener takes through a handshake at once: few, as each holds a socket
# until it is done (at most the handshake timeout, then LINGER_SECONDS), and a flood at the
# limit only needs to be told, not told at any price.
REFUSALS_IN_HANDSHAKE = 16


class TlsTransport(Transport):
    """A Transport over TLS: the handshake first, then the Transport's reads and sends."""

    __slots__ = ("handshaking", "handshake_timer", "cert_levels")
    sock: ssl.SSLSocket  # for type checkers: the Transport's socket, wrapped
    # A client that resets mid-reply: some Pythons' ssl say so as an EOF "in violation of
    # protocol" (an unexpected EOF is no error here, see tolerate_unexpected_eof: it is a reset).
    PEER_LEFT = (*Transport.PEER_LEFT, ssl.SSLEOFError)
    # SSL_write takes a buffer whole or not at all, so sends go a record at a time (TLS's
    # largest, 16 KiB), each counted as it goes out: see _transport._send_records.
    record = 16384

    def __init__(
        self,
        sock: ssl.SSLSocket,
        loop: Any,
        limits: Any,
        now: float,
        cert_levels: Optional[Dict[str, int]],
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(sock, loop, limits, now)
        self.handshaking = True
        self.cert_levels = cert_levels
        self.handshake_timer: Any = loop.call_later(timeout, self._handshake_expired)

    def handle_event(self, event: int, now: float, stop_at: Optional[float]) -> None:
        if not self.handshaking:
            # Without EPOLLRDHUP: a TLS read returns one record's bytes, so a short read does not
            # mean that the socket is empty (see _transport.RDHUP); the EOF is read as b"".
            Transport.handle_event(self, event & ~RDHUP, now, stop_at)
            # A read the poll's end put off (or none at all, on a write event) leaves the
            # records where no event will say so: look again next poll. A read that ran ends
            # its turn in update_interest(), which looks too.
            if not self.closed and self.mask & _READ and self.sock.pending():
                self.loop.read_pending(self)
        elif stop_at is None or self.loop.clock() < stop_at or self.loop.take_owed_read():  # else next poll
            if stop_at is not None:
                self.loop.read_owed = False  # a step is this poll's read (see Loop.take_owed_read)
            self._handshake_step(now)

    def _handshake_step(self, now: float) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(_WRITE)
            return
        except OSError as exc:  # ssl.SSLError included: plaintext, HTTP, an untrusted certificate
            self._refuse(f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
            return
        self.handshaking = False
        self.loop.cancel_timer(self.handshake_timer)
        self.handshake_timer = None
        self.last_active = now
        if self.cert_levels:
            self.conn.level = level_of_certificate(self.sock.getpeercert(), self.cert_levels, self.conn.level)
        self.update_interest()

    def _want(self, mask: int) -> None:
        if mask != self.mask:
            self.set_interest(mask)

    def _handshake_expired(self) -> None:
        self.handshake_timer = None
        if self.handshaking and not self.closed:
            self._refuse("TLS handshake not finished in time")

    def _refuse(self, reason: str) -> None:
        suffix = _refusals.allow(self.loop.clock())
        if suffix is not None:
            log.warning(
                "closing connection #%d from %s: %s%s", self.conn.id, format_address(self.conn.peer), reason, suffix
            )
        self.cut_off = True  # nothing more is written: the peer speaks no TLS we can answer
        self.out = None
        self.out_size = 0
        self.close_now()

    def update_interest(self) -> None:
        if self.closed:
            return
        if self.handshaking:  # just accepted: the ClientHello comes first
            if self.mask == 0:
                self._want(_READ)
            return
        Transport.update_interest(self)
        if self.mask & _READ and self.sock.pending():
            # Decrypted bytes are waiting, and no event will say so: read them next poll.
            self.loop.read_pending(self)

    def end_of_output(self) -> None:
        """Says the TLS close_notify before our EOF, so that the client can tell all of our
        replies from replies cut short (a bare EOF may be an attacker's). Not waiting for the
        client's own: unwrap() sends ours, then would wait, which a non-blocking socket
        refuses; the linger reads the client's as plain bytes. Best effort: with the kernel
        full, none is sent."""
        if self.handshaking or self.closed or self.lingering:
            return
        try:
            self.sock.unwrap()
        except (OSError, ValueError):  # SSLWantReadError: ours went, theirs has not come yet
            pass

    def close_now(self) -> None:
        if self.handshake_timer is not None:
            self.loop.cancel_timer(self.handshake_timer)
            self.handshake_timer = None
        Transport.close_now(self)


def level_of_certificate(cert: Any, cert_levels: Dict[str, int], default: int) -> int:
    """The highest level any name of a client certificate (its subject's commonName, or a
    subjectAltName: DNS, email or IP) has in ``cert_levels``; ``default`` for none."""
    names: List[str] = []
    for rdn in (cert or {}).get("subject", ()):
        names.extend(value for key, value in rdn if key == "commonName")
    names.extend(value for _, value in (cert or {}).get("subjectAltName", ()))
    levels = [cert_levels[name] for name in names if name in cert_levels]
    return max(levels) if levels else default


def tolerate_unexpected_eof(context: ssl.SSLContext) -> None:
    """Sets OP_IGNORE_UNEXPECTED_EOF on the host's own ``context``: a TCP EOF with no
    close_notify then reads as the peer's close_notify, a half-close. Without it, OpenSSL 3
    answers such an EOF with a fatal alert and fails every later write, so a client that shuts
    down writing after its requests (`ncat --ssl`) lost the rest of its replies; the read side
    is unchanged (wrap's suppress_ragged_eofs read that EOF as b"" already).

    The host's context, not a copy: an SSLContext cannot be copied (its certificates, session
    ticket keys and callbacks live in OpenSSL), and the option is what OpenSSL 1.1.1 did and
    what Python 3.9 sets on every context it makes. Set before the first connection, so it holds
    for all of them."""
    if _IGNORE_UNEXPECTED_EOF:
        context.options |= _IGNORE_UNEXPECTED_EOF


def wrap(sock: Any, context: ssl.SSLContext) -> Optional[ssl.SSLSocket]:
    """The accepted socket as a TLS one, its handshake to come; None when the client is gone
    already. wrap_socket() asks the socket's peer, and on ENOTCONN (a client that reset before
    the accept) reads it: either raises, which out of poll() would stop the host's loop on any
    client's whim. The socket it took is closed when that error is dropped."""
    try:
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except OSError as exc:  # ssl.SSLError too
        log.debug("connection dropped before its TLS handshake: %s", exc)
        sock.close()  # (a no-op once wrap_socket has taken its descriptor)
        return None


def refuse(sock: Any, listener: Any, loop: Any, message: bytes, timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Refuses a connection just accepted on a TLS listener: ``message`` inside TLS (a
    TlsRefusal), or, with the listener's REFUSALS_IN_HANDSHAKE taken, a close with nothing sent.
    Never plaintext: a TLS client cannot read it, and reports a protocol error instead."""
    if len(listener.refusals) >= REFUSALS_IN_HANDSHAKE:
        hang_up(sock, False)
        sock.close()
        return
    tls_sock = wrap(sock, listener.tls)
    if tls_sock is not None:
        TlsRefusal(tls_sock, loop, message, listener.refusals, timeout)


class TlsRefusal:
    """A refused TLS client: the handshake, ``message``, our close_notify, then the client's
    input drained until its EOF (closing over unread input would reset the line away), all
    non-blocking and driven by the loop's events, within ``timeout`` for the handshake and
    LINGER_SECONDS after it. It is in ``refusals`` (the listener's) until it closes."""

    __slots__ = ("sock", "loop", "message", "refusals", "timer", "mask", "handshaking")

    def __init__(self, sock: ssl.SSLSocket, loop: Any, message: bytes, refusals: Set[Any], timeout: float) -> None:
        self.sock = sock
        self.loop = loop
        self.message: Optional[bytes] = message  # None once sent
        self.refusals = refusals
        self.handshaking = True
        self.mask = _READ  # the ClientHello comes first
        refusals.add(self)
        loop.register(sock, _READ, self)
        self.timer: Any = loop.call_later(timeout, self.close)

    def handle_event(self, event: int, now: float, stop_at: Optional[float]) -> None:
        if self.message is None:  # said: read and drop what the client still sends, to its EOF
            try:
                if self.sock.recv(65536):  # one read an event, as a connection's
                    return
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                pass
            self.close()
            return
        if stop_at is not None and self.loop.clock() >= stop_at and not self.loop.take_owed_read():
            return  # past the poll's end, as a connection's handshake step (the event comes again)
        try:
            if self.handshaking:
                self.sock.do_handshake()
                self.handshaking = False
            if not send_some(self.sock, self.message):  # SSL_write takes it whole or not at all
                self._want(_WRITE)  # the kernel is full: a write event says when it has room
                return
        except ssl.SSLWantReadError:
            self._want(_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(_WRITE)
            return
        except OSError:  # the handshake failed, or the client is gone: nothing can reach it
            self.close()
            return
        self.message = None
        try:
            self.sock.unwrap()  # sends our close_notify; the client's is drained as bytes
        except (OSError, ValueError):  # SSLWantReadError: ours went, theirs has not come yet
            pass
        try:
            self.sock.shutdown(socket.SHUT_WR)  # (SSLSocket's: the TLS layer is done with too)
        except OSError:
            self.close()
            return
        self.loop.cancel_timer(self.timer)
        self.timer = self.loop.call_later(LINGER_SECONDS, self.close)
        self._want(_READ)

    def _want(self, mask: int) -> None:
        if mask != self.mask:
            self.loop.modify(self.sock, mask, self)
            self.mask = mask

    def close(self) -> None:
        if self not in self.refusals:
            return
        self.refusals.discard(self)
        self.loop.cancel_timer(self.timer)
        self.timer = None
        try:
            self.loop.unregister(self.sock)
        except (KeyError, ValueError):  # pragma: no cover - defensive
            pass
        self.sock.close()

    def abandon(self) -> None:
        """In a forked child: this process's copy of the socket is closed, with nothing sent
        and the poller left alone (the parent's epoll is the same)."""
        self.refusals.discard(self)
        self.sock.close()
