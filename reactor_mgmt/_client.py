# The client side: a blocking Python client for scripts, and a non-blocking fan-out engine that
# sends one command to many endpoints at once from a single selectors loop (what the CLI uses).
#
# Both speak only the JSON request form, because JSON replies have exact boundaries: one line
# per reply, one line per stream item, and a closing line that says the stream is over. Text
# replies end with "\n" and nothing else, so a client could never tell a multi-line reply from
# two replies. One request is in flight per connection at a time, so replies match by id.
#
# A host may still write raw text from a handler (conn.write, the start() fallback); such lines
# are not JSON replies and come through as "text" events rather than being dropped.
#
# Abandoning a reply half-way (a timeout, Ctrl-C, leaving a stream early) closes the connection:
# a plain stream only stops when its client goes away, and a late reply must never be mistaken
# for the answer to the next request. The Client then reconnects on its next call, and
# re-authenticates and lowers the level again (`level user` must outlive a reconnect; so must
# a token proved with an `auth TOKEN` request). A connection the server closed while it sat idle
# is noticed before the next request goes out, and that request reconnects.
#
# TLS (tls=True, or cafile=/cert=/insecure=, or an ssl.SSLContext) wraps TCP endpoints; a Unix
# socket is local and stays plain. The server's name for SNI and the certificate check is the
# host part of the address. FanOut drives each handshake without blocking, like its connects.
#
# Authentication prefers challenge-response: `auth challenge`, then `auth response` with the
# HMAC of the challenge under the token, so the token never crosses the wire. A server that
# does not offer it (an older one, where `auth challenge` reads as a wrong token) gets the
# cleartext `auth TOKEN` instead, but only over a Unix socket or verified TLS (cleartext_refusal).
from __future__ import annotations

import errno
import json
import os
import re
import selectors
import socket
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Generator, Iterator, List, Optional, Sequence, Tuple, Type, Union

from . import _wire
from ._errors import ConfigError, ReactorMgmtError, RemoteError
from ._log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl

DEFAULT_ADDRESS = "127.0.0.1:8123"
MAX_REPLY_LINE = 64 << 20  # a reply line longer than this is refused rather than buffered

_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Za-z:.%_-]+)\]|(?P<host>[0-9A-Za-z._-]+)):(?P<port>[0-9]+)$")
_RECV_SIZE = 65536
_AUTH_ID = 1  # `auth challenge`
_COMMAND_ID = 2
_PROOF_ID = 3  # `auth response HMAC`, or the cleartext `auth TOKEN` when no challenge is offered
_LEVEL_ID = 4  # `level NAME`: FanOut's level= (a level the shell lowered to), before the command
_CHALLENGE = re.compile(r"^[0-9a-f]{16,256}$")
_NO_CHALLENGE = ("unknown_command", "denied")  # how a server without `auth challenge` answers it
_WOULD_BLOCK: Tuple[Type[BaseException], ...] = (BlockingIOError, InterruptedError)

OK, ERROR, UNREACHABLE = "ok", "error", "unreachable"

AddressLike = Union[str, Tuple[str, int], "Endpoint"]
TlsLike = Union[bool, "ssl.SSLContext", None]


class ConnectionFailed(ReactorMgmtError, ConnectionError):
    """The server could not be reached, or closed the connection before it replied."""


class ClientTimeout(ReactorMgmtError, TimeoutError):
    """An operation did not finish within the client's timeout."""


class ReplyTooLong(ReactorMgmtError):
    """A reply line exceeded MAX_REPLY_LINE bytes."""


# ---- addresses ----


class Endpoint:
    """Where a server listens: TCP ``host:port`` / ``[v6]:port`` / ``(host, port)``, or a Unix
    socket path (any string with a ``/`` in it, or that is not ``host:port``).

    ``vouched`` (true unless set otherwise) says a Unix socket may be sent the token in clear
    text (see cleartext_refusal); `--app` clears it for a socket whose server discovery could not
    verify."""

    __slots__ = ("label", "host", "port", "path", "vouched")

    def __init__(self, address: AddressLike) -> None:
        self.label: str
        self.host: Optional[str] = None
        self.port = 0
        self.path: Optional[str] = None
        self.vouched = True
        if isinstance(address, Endpoint):
            self.label, self.host, self.port, self.path = address.label, address.host, address.port, address.path
            self.vouched = address.vouched
            return
        if isinstance(address, tuple):
            host, port = address[0], int(address[1])
            self._set_tcp(str(host), port)
            return
        text = os.fspath(address)
        if not isinstance(text, str) or not text:
            raise ValueError(f"bad address {address!r}")
        match = None if "/" in text else _HOST_PORT.match(text)
        if match is None:
            self.path = text
            self.label = text
        else:
            self._set_tcp(match.group("v6") or match.group("host"), int(match.group("port")))
            self.label = text

    def _set_tcp(self, host: str, port: int) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port} in address {host}:{port}")
        self.host = host
        self.port = port
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def resolve(self) -> List[Tuple[int, Any]]:
        """(family, sockaddr) pairs to try in turn; raises ConnectionFailed if the name fails."""
        if self.path is not None:
            return [(socket.AF_UNIX, self.path)]
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.label}: {_reason(exc)}") from None
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endpoint) and other.label == self.label

    def __hash__(self) -> int:
        return hash(self.label)

    def __repr__(self) -> str:
        return f"Endpoint({self.label!r})"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# ---- the sans-I/O reply side ----


class LineReader:
    """Splits received bytes into decoded lines; a line over ``max_line`` raises ReplyTooLong."""

    __slots__ = ("_partial", "_lines", "max_line")

    def __init__(self, max_line: int = MAX_REPLY_LINE) -> None:
        # A bytearray: a long line (a big reply) arrives in many reads, and bytes += bytes
        # copied all of it for each (a 32 MiB line in 64 KiB reads took 2.9 s; now linear).
        self._partial = bytearray()
        self._lines: Deque[str] = deque()
        self.max_line = max_line

    def feed(self, data: bytes) -> None:
        self._partial += data
        if data.find(b"\n") >= 0:
            parts = self._partial.split(b"\n")
            self._partial = parts.pop()
            self._lines.extend(part.decode("utf-8", "replace") for part in parts)
        if len(self._partial) > self.max_line:
            self._partial = bytearray()
            raise ReplyTooLong(f"a reply line is longer than {self.max_line} bytes")

    def next_line(self) -> Optional[str]:
        return self._lines.popleft() if self._lines else None


# Which reply lines are JSON frames, and of what kind, is _wire.read_frame's business alone.


def parse_message(line: str) -> Optional[Dict[str, Any]]:
    """The JSON reply or stream item on ``line``, or None when it is raw text from a handler."""
    return json.loads(line) if _wire.read_frame(line) is not None else None


def _remote_error(error: Dict[str, Any]) -> RemoteError:
    """The exception for an ERROR frame's value (see _wire.read_frame)."""
    return RemoteError(str(error.get("code", "error")), str(error.get("message", "")))


def remote_error(message: Dict[str, Any]) -> RemoteError:
    """The exception for a decoded error reply."""
    frame = _wire.frame_of(message)
    return _remote_error(frame[2] if frame is not None and frame[0] == _wire.ERROR else {})


def request_line(request: Dict[str, Any], request_id: int) -> bytes:
    payload = dict(request)
    payload["id"] = request_id
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n"
    # Words from argv or stdin that were not UTF-8 arrive as lone surrogates: they go out as
    # the bytes they were, and the server answers invalid UTF-8 with an error reply. Any other
    # lone surrogate goes as surrogatepass makes it, just as invalid, rather than raise here.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


_FOREVER = 1e9  # seconds; longer waits overflow select() and settimeout(), so they mean "none"


def _timeout_value(timeout: Optional[float]) -> Optional[float]:
    if timeout is None or not 0 < timeout < _FOREVER:  # 0 or less, NaN and inf: no timeout
        return None
    return float(timeout)


def _command_words(request: Dict[str, Any]) -> Tuple[List[Any], Dict[str, Any]]:
    """A request's words as the server resolves and binds them (argv, or the words of cmd and
    then args), and its kwargs."""
    argv = request.get("argv")
    if argv is not None:
        return (list(argv) if isinstance(argv, list) else []), {}
    name, args, kwargs = request.get("cmd"), request.get("args") or [], request.get("kwargs") or {}
    if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
        return [], {}
    return [*name.split(), *args], kwargs


def level_set_by(request: Dict[str, Any]) -> Optional[str]:
    """The level a `level NAME` request asks for, so a reconnect can restore it: argv, cmd
    "level NAME", cmd "level" with args, or kwargs new_level (the builtin's parameter)."""
    words, kwargs = _command_words(request)
    if words[:1] != ["level"]:
        return None
    given = words[1:] + ([kwargs["new_level"]] if "new_level" in kwargs else [])
    if len(given) == 1 and isinstance(given[0], str):
        return given[0]
    return None


def _level_request(level: str) -> Dict[str, Any]:
    """What lowers a new connection to ``level`` again: the session's, as level_set_by read it."""
    return {"cmd": "level", "args": [level]}


def _token_sent_by(request: Dict[str, Any], result: Any) -> Optional[str]:
    """The token of an `auth TOKEN` request that the server accepted ("OK"), so a reconnect
    can authenticate again. `auth challenge` answers a challenge, not "OK", and `auth response
    HMAC` has three words, so neither is taken for a token."""
    words, _ = _command_words(request)
    if result == "OK" and len(words) == 2 and words[0] == "auth" and isinstance(words[1], str):
        return words[1]
    return None


# ---- TLS and authentication ----


def tls_context(
    cafile: Optional[str] = None, cert: Optional[str] = None, key: Optional[str] = None, insecure: bool = False
) -> ssl.SSLContext:
    """A client-side ssl.SSLContext: the server's certificate is checked against ``cafile``
    (default: the system's CAs) and the address's host; ``cert``/``key`` present a client
    certificate (mutual TLS). ``insecure`` turns verification off, for a self-signed
    certificate you cannot get the CA of, and logs a warning. Raises ConfigError for a file
    that cannot be loaded."""
    return _tls_context(cafile, cert, key, insecure, warn=True)


def _tls_context(
    cafile: Optional[str], cert: Optional[str], key: Optional[str], insecure: bool, warn: bool
) -> ssl.SSLContext:
    import ssl  # lazily: ~10 ms of import time that plain clients do not pay

    if key is not None and cert is None:
        raise ConfigError("a client key needs its certificate (cert=)")
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"cannot load CA file {cafile}: {_tls_reason(exc)}") from None
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load client certificate {cert}: {_tls_reason(exc)}") from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if warn:
            log.warning(
                "TLS certificate verification is off (insecure): anyone on the path can "
                "pose as the server and read the token"
            )
    return context


def context_for(
    tls: TlsLike, cafile: Optional[str], cert: Optional[str], key: Optional[str], insecure: bool, warn: bool = True
) -> Optional[ssl.SSLContext]:
    """The context a Client or FanOut wraps TCP connections with, or None for plain TCP.
    ``tls`` may be a ready context; cafile, cert and insecure imply TLS."""
    if tls is not None and not isinstance(tls, bool):
        if cafile is not None or cert is not None or key is not None or insecure:
            raise ConfigError("give either an ssl.SSLContext or cafile/cert/key/insecure, not both")
        return tls
    if not tls and cafile is None and cert is None and key is None and not insecure:
        return None
    return _tls_context(cafile, cert, key, insecure, warn)


def _tls_reason(exc: BaseException) -> str:
    """One readable phrase for an ssl or socket error."""
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.replace("_", " ").lower()
    return _reason(exc)


def is_challenge(value: Any) -> bool:
    """Whether an `auth challenge` result is a challenge (an older server answers "OK" or
    an error instead)."""
    return isinstance(value, str) and _CHALLENGE.match(value) is not None


_NO_CHALLENGE_OFFERED = "the server offers no challenge-response ('auth challenge'), and the token is not sent "
_OVER_PLAIN_TCP = _NO_CHALLENGE_OFFERED + "in clear text over plain TCP: use TLS or a Unix socket"
_TO_AN_UNVOUCHED_SOCKET = _NO_CHALLENGE_OFFERED + (
    "in clear text to this Unix socket: discovery could not verify that the server listening on it "
    "is the one that registered it (use a server that offers 'auth challenge', or connect with "
    "-c PATH to trust the socket)"
)


def auth_requests(
    challenge: Any, token: str, cleartext_ok: bool = True, refusal: str = _OVER_PLAIN_TCP
) -> Optional[Dict[str, Any]]:
    """What to send after `auth challenge` answered ``challenge``: `auth response` with the HMAC
    of a challenge, None when "OK" says the connection is already in, and the cleartext
    `auth TOKEN` otherwise (a server that offers no challenge), where ``cleartext_ok``;
    else ConnectionFailed, saying ``refusal`` (see cleartext_refusal)."""
    if is_challenge(challenge):
        return {"cmd": "auth response", "args": [_wire.challenge_digest(token, challenge)]}
    if challenge == "OK":
        return None
    if not cleartext_ok:
        raise ConnectionFailed(refusal)
    return {"cmd": "auth", "args": [token]}


def cleartext_refusal(endpoint: Endpoint, tls_context: Any) -> Optional[str]:
    """Why a token may not go in clear text to ``endpoint``, a server that offers no challenge,
    or None where it may: over a Unix socket (its file's mode says who listens) or TLS that
    checks the server's certificate. Not over plain TCP, loopback included: whoever binds the
    port while the server is down (a downgrade: answering `auth challenge` with an error) would
    collect it. Nor to a Unix socket that is not ``vouched`` for: one that discovery found but
    could not tell was its server's."""
    if endpoint.path is not None:
        return None if endpoint.vouched else _TO_AN_UNVOUCHED_SOCKET
    import ssl

    if tls_context is not None and tls_context.verify_mode == ssl.CERT_REQUIRED:
        return None
    return _OVER_PLAIN_TCP


def _auth_follow_up(challenge: Any, token: str, endpoint: Endpoint, tls_context: Any) -> Optional[Dict[str, Any]]:
    """auth_requests for ``endpoint``: the cleartext token only where cleartext_refusal allows."""
    refusal = cleartext_refusal(endpoint, tls_context)
    if refusal is None:
        return auth_requests(challenge, token)
    return auth_requests(challenge, token, cleartext_ok=False, refusal=refusal)


# ---- the blocking client ----


class Client:
    """A blocking client for scripts::

        with reactor_mgmt.Client("127.0.0.1:8123", token=...) as client:
            client.call("job cancel", 3, force=True)
            for line in client.stream("count", 5):
                print(line)

    ``addr`` is ``"host:port"``, ``"[v6]:port"``, ``(host, port)`` or a Unix socket path.
    ``timeout`` bounds connecting and the wait for each reply line (None or 0 waits forever);
    when it passes, :class:`ClientTimeout` is raised and the connection is dropped. Once a
    reply has begun as a stream, the wait for each of its items is bounded by
    ``stream_timeout`` instead, which by default is no bound: a subscription such as
    ``log tail`` may be quiet for hours, and the server has already answered. A dropped
    connection is re-opened (and re-authenticated) by the next call.

    ``token`` authenticates by challenge-response when the server offers it (the token never
    crosses the wire), else with ``auth TOKEN``. ``tls=True`` speaks TLS to a TCP address,
    checking the server's certificate against ``cafile`` (default: the system's CAs) and the
    address's host; ``cert``/``key`` present a client certificate; ``insecure=True`` skips
    verification (logged as a warning). cafile, cert and insecure imply ``tls``, and ``tls``
    may also be a ready ``ssl.SSLContext``. A Unix socket path is always plain.
    """

    def __init__(
        self,
        addr: AddressLike = DEFAULT_ADDRESS,
        timeout: Optional[float] = 5.0,
        token: Optional[str] = None,
        stream_timeout: Optional[float] = None,
        *,
        tls: TlsLike = False,
        cafile: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        insecure: bool = False,
    ) -> None:
        self.endpoint = Endpoint(addr)
        self.timeout = _timeout_value(timeout)
        self.stream_timeout = _timeout_value(stream_timeout)
        self.token = token
        self.tls_context = context_for(tls, cafile, cert, key, insecure)
        self._would_block = _WOULD_BLOCK
        if self.tls_context is not None:
            import ssl

            self._would_block = _WOULD_BLOCK + (ssl.SSLWantReadError, ssl.SSLWantWriteError)
        self._sock: Optional[socket.socket] = None
        self._reader = LineReader()
        self._next_id = 0
        self._closed = False
        self._busy = False
        self._connecting = False  # connect()'s own requests (auth, level): see exchange()
        self._level: Optional[str] = None  # what `level NAME` lowered this session to
        self.connect()

    @property
    def address(self) -> str:
        return self.endpoint.label

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Opens the connection (and authenticates) unless it is already open."""
        if self._closed:
            raise ConnectionFailed(f"the client for {self.address} is closed")
        if self._sock is not None:
            return
        last: Optional[BaseException] = None
        for family, sockaddr in self.endpoint.resolve():
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(sockaddr)
            except socket.timeout:
                sock.close()
                raise ClientTimeout(f"cannot connect to {self.address}: no answer within {self.timeout:g} s") from None
            except OSError as exc:
                sock.close()
                last = exc
                continue
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.tls_context is not None:
                    sock = self._handshake(sock)
            self._sock = sock
            self._reader = LineReader()
            break
        else:
            raise ConnectionFailed(f"cannot connect to {self.address}: {_reason(last) if last else 'no address'}")
        # A reconnect must not undo the session's state: authenticate again, and lower the level
        # again, since a new connection starts at its listener's level.
        self._connecting = True
        try:
            if self.token is not None:
                self._prove(self.token)
            if self._level is not None:
                self._result(_level_request(self._level))
        except BaseException:
            self._drop()
            raise
        finally:
            self._connecting = False

    def _handshake(self, sock: socket.socket) -> socket.socket:
        """The TLS handshake on a connected socket, within the connect timeout."""
        assert self.tls_context is not None
        try:
            return self.tls_context.wrap_socket(sock, server_hostname=self.endpoint.host)
        except socket.timeout:
            sock.close()
            raise ClientTimeout(
                f"cannot connect to {self.address}: no TLS handshake within {self.timeout:g} s"
            ) from None
        except OSError as exc:  # ssl.SSLError included; wrap_socket closed the connection
            sock.close()
            raise ConnectionFailed(
                f"cannot connect to {self.address}: TLS handshake failed: {_tls_reason(exc)}"
            ) from None

    def authenticate(self, token: str) -> Any:
        """Authenticates the connection with ``token`` as the constructor's ``token=`` does: by
        challenge-response when the server offers it, else with `auth TOKEN` only where the
        token may go in clear text (else ConnectionFailed, and the token is not sent). Raises
        RemoteError when the server refuses it. Once accepted it is the session's token: a
        reconnect authenticates with it. Returns the server's answer ("OK")."""
        result = self._prove(token)
        self.token = token
        return result

    def _prove(self, token: str) -> Any:
        follow_up = _auth_follow_up(self._challenge(), token, self.endpoint, self.tls_context)
        return "OK" if follow_up is None else self._result(follow_up)

    def _challenge(self) -> Any:
        """The server's answer to `auth challenge`, or None when it offers none."""
        try:
            return self._result({"cmd": "auth challenge"})
        except RemoteError as exc:
            if exc.code not in _NO_CHALLENGE:
                raise
            return None

    def _result(self, request: Dict[str, Any]) -> Any:
        result = None
        for kind, value in self.exchange(request):
            if kind in ("result", "end"):
                result = value
        return result

    def close(self) -> None:
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self._sock else "disconnected")
        return f"<Client {self.address} {state}>"

    # ---- requests ----

    def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """Runs ``command`` and returns its result; raises RemoteError(code, message) on an
        error reply. A streaming command's items come back as a list. Text a handler wrote
        itself (conn.write) is returned when the reply carries no result of its own."""
        texts: List[str] = []
        items: List[Any] = []
        result: Any = None
        for kind, value in self.exchange(_request(command, args, kwargs)):
            if kind == "text":
                texts.append(value)
            elif kind == "item":
                items.append(value)
            elif kind == "end":
                result = items
            else:
                result = value
        if result is None and texts:
            return "\n".join(texts)
        return result

    def stream(self, command: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Yields the items of a streaming command as they arrive (a command that does not
        stream yields its one result). ``timeout`` applies to the wait for the reply to begin,
        ``stream_timeout`` to the wait for each item after that. Leaving the loop early closes
        the connection, which is what stops a stream on the server."""
        for kind, value in self.exchange(_request(command, args, kwargs)):
            if kind in ("item", "text") or (kind == "result" and value is not None):
                yield value

    def exchange(self, request: Dict[str, Any]) -> Generator[Tuple[str, Any], None, None]:
        """The low-level form: sends one JSON request (without its id) and yields events:
        ``("text", line)`` and ``("item", value)`` as they arrive, then ``("result", value)`` or,
        for a stream, ``("end", item_count)``. An error reply raises RemoteError. The stream's
        opening line (``{"id": N, "stream": true}``) is not an event: it only switches the
        wait for each line from ``timeout`` to ``stream_timeout``."""
        if self._busy:
            raise ReactorMgmtError("one request at a time: finish the previous reply first")
        if self._sock is not None and not self._connecting and not self._still_open():
            # Closed while idle (idle_timeout): reconnect rather than fail. A server that said
            # why it closed (a refusal: too many connections) is reported, as it was before.
            # Not for connect()'s own requests: a peer that closes every new connection would
            # have each of them reconnect, and so on without end.
            said = self._said_before_closing()
            self._drop()
            if _wire.read_err_line(said) is not None:
                raise ConnectionFailed(_closed_message(self.address, said))
        self.connect()
        self._busy = True
        self._next_id += 1
        request_id = self._next_id
        finished = False
        try:
            self._send(request_line(request, request_id))
            last_text = ""
            timeout = self.timeout
            while True:
                line = self._read_line(last_text, timeout)
                frame = _wire.read_frame(line)
                if frame is None or frame[1] not in (request_id, None):
                    last_text = line
                    yield "text", line
                    continue
                kind, _, value = frame
                if kind == _wire.ITEM:
                    yield "item", value
                    continue
                if kind == _wire.OPEN:
                    timeout = self.stream_timeout
                    continue
                finished = True
                self._busy = False
                if kind == _wire.ERROR:
                    raise _remote_error(value)
                level = level_set_by(request)
                if level is not None:
                    self._level = level
                # A token typed as `auth TOKEN` (the shell's prompt) is the session's token from
                # now on, so a reconnect authenticates again as it lowers the level again.
                token = _token_sent_by(request, value)
                if token is not None:
                    self.token = token
                yield ("end" if kind == _wire.END else "result"), value
                return
        finally:
            self._busy = False
            if not finished:
                self._drop()

    def _still_open(self) -> bool:
        """Whether the idle connection is still there, as urllib3's is_connection_dropped asks.

        One non-blocking read instead of select() and MSG_PEEK: it works alike for TLS (where
        recv takes no flags, and the session tickets a TLS 1.3 server sends after the
        handshake make the socket readable with no data for us) and for any descriptor
        number. Would-block: open. EOF or an error (the idle reaper resets): closed. Bytes
        that no request asked for are kept in the reader, where they come out as text before
        the next reply (as they did before this check), or say why the server closed."""
        sock = self._sock
        assert sock is not None
        try:
            sock.settimeout(0.0)
            while True:
                data = sock.recv(_RECV_SIZE)
                if not data:
                    return False
                self._reader.feed(data)
        except self._would_block:
            return True
        except (OSError, ReplyTooLong):
            return False
        finally:
            try:
                sock.settimeout(self.timeout)
            except OSError:
                pass

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(data)
        except socket.timeout:
            raise ClientTimeout(f"{self.address} did not accept the request within {self.timeout:g} s") from None
        except OSError as exc:
            # A server that refuses a connection says why in one line and closes, perhaps before
            # we sent (a Unix socket then fails the send): the line is still there to read.
            said = self._said_before_closing()
            if _wire.read_err_line(said) is not None:
                raise ConnectionFailed(_closed_message(self.address, said)) from None
            raise ConnectionFailed(f"connection to {self.address} lost: {_reason(exc)}") from None

    def _said_before_closing(self) -> str:
        """The last line the server sent, read without waiting, or ""."""
        assert self._sock is not None
        last = ""
        try:
            self._sock.setblocking(False)
            while True:
                data = self._sock.recv(_RECV_SIZE)
                if not data:
                    break
                self._reader.feed(data)
        except (OSError, ReplyTooLong):
            pass
        while True:
            line = self._reader.next_line()
            if line is None:
                return last
            last = line

    def _read_line(self, last_text: str, timeout: Optional[float]) -> str:
        sock = self._sock
        assert sock is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        sock.settimeout(timeout)
        while True:
            line = self._reader.next_line()
            if line is not None:
                return line
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ClientTimeout(f"no reply from {self.address} within {timeout:g} s")
                sock.settimeout(remaining)
            try:
                data = sock.recv(_RECV_SIZE)
            except socket.timeout:
                raise ClientTimeout(f"no reply from {self.address} within {timeout:g} s") from None
            except OSError as exc:
                raise ConnectionFailed(f"connection to {self.address} lost: {_reason(exc)}") from None
            if not data:
                raise ConnectionFailed(_closed_message(self.address, last_text))
            self._reader.feed(data)


def _request(command: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    request: Dict[str, Any] = {"cmd": command}
    if args:
        request["args"] = list(args)
    if kwargs:
        request["kwargs"] = kwargs
    return request


def _closed_message(label: str, last_text: str) -> str:
    # A server that refuses a connection says why in one ERR line, then closes.
    reason = _wire.read_err_line(last_text)
    if reason is not None:
        return f"{label} closed the connection: {reason}"
    return f"{label} closed the connection before replying"


# ---- fan-out: one command to many endpoints, one selectors loop ----

EventSink = Callable[[Endpoint, str, Any], None]


class _Job:
    __slots__ = (
        "index",
        "endpoint",
        "candidates",
        "sock",
        "connected",
        "out",
        "reader",
        "deadline",
        "last_text",
        "failure",
        "streaming",
        "send_error",
        "handshaking",
        "setup_step",
    )

    def __init__(self, index: int, endpoint: Endpoint) -> None:
        self.index = index  # its place in FanOut.endpoints: two endpoints may share a label
        self.endpoint = endpoint
        self.candidates: Optional[List[Tuple[int, Any]]] = None
        self.sock: Optional[socket.socket] = None
        self.connected = False
        self.out = b""
        self.reader = LineReader()
        self.deadline: Optional[float] = None
        self.last_text = ""
        self.failure = ""
        self.streaming = False  # the reply began as a stream: stream_timeout bounds each wait
        self.send_error = ""  # our request could not be sent: said if the server says nothing
        self.handshaking = False  # connected over TCP, the TLS handshake not finished yet
        # The id of the request before the command whose answer is outstanding (_AUTH_ID, then
        # _PROOF_ID, then _LEVEL_ID), or None: a frame with a reserved id is an answer only then,
        # and otherwise a handler's text.
        self.setup_step: Optional[int] = None


class FanOut:
    """Sends one request to every endpoint concurrently and reports what comes back.

    ``on_event(endpoint, kind, value)`` hears, as they arrive: ``text`` and ``item`` lines,
    then one of ``result`` (value), ``end`` (stream item count), ``error`` (a RemoteError) or
    ``failed`` (a message: could not connect, timed out, connection lost). :meth:`run`
    returns each endpoint's outcome, OK, ERROR or UNREACHABLE, in the order given.

    Connecting, sending and reading are all non-blocking in one selectors loop; ``timeout``
    bounds the connect and then each wait for the next reply line, and once a reply has begun
    as a stream, ``stream_timeout`` (by default no bound) bounds each wait instead, as in
    :class:`Client`. At most ``max_parallel``
    connections are open at once; the rest wait their turn (and their clock starts then).
    Host names are resolved just before connecting, with the blocking resolver.

    ``token``, ``tls``, ``cafile``, ``cert``, ``key`` and ``insecure`` are :class:`Client`'s:
    challenge-response when offered, and TLS on TCP endpoints, its handshake non-blocking too.
    ``level`` lowers each connection to that level (``level NAME``, after authenticating) and
    sends the request only once the server has agreed, as a Client restores the level its
    session lowered to when it reconnects; a refusal is the endpoint's ERROR.
    """

    def __init__(
        self,
        endpoints: Sequence[AddressLike],
        request: Dict[str, Any],
        *,
        on_event: EventSink,
        token: Optional[str] = None,
        timeout: Optional[float] = 5.0,
        max_parallel: Optional[int] = None,
        after_batch: Optional[Callable[[], None]] = None,
        stream_timeout: Optional[float] = None,
        tls: TlsLike = False,
        cafile: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        insecure: bool = False,
        level: Optional[str] = None,
    ) -> None:
        self.endpoints = [Endpoint(address) for address in endpoints]
        self.on_event = on_event
        self.timeout = _timeout_value(timeout)
        self.stream_timeout = _timeout_value(stream_timeout)
        self.max_parallel = max(1, max_parallel or len(self.endpoints) or 1)
        self.after_batch = after_batch
        self.token = token
        self.tls_context = context_for(tls, cafile, cert, key, insecure)
        self._would_block = _WOULD_BLOCK
        if self.tls_context is not None:
            import ssl

            self._would_block = _WOULD_BLOCK + (ssl.SSLWantReadError, ssl.SSLWantWriteError)
        self.level = level
        self.command_line = request_line(request, _COMMAND_ID)
        # With a level, `level NAME` goes before the command, which waits for its answer: sent
        # with it, the command would run at the listener's level if the level were refused.
        self.first_line = self.command_line if level is None else request_line(_level_request(level), _LEVEL_ID)
        # With a token, `auth challenge` goes first; what follows it is sent when it answers.
        self.payload = request_line({"cmd": "auth challenge"}, _AUTH_ID) if token is not None else self.first_line
        # By the endpoint's place in the list, not by Endpoint, which compares by label: two
        # servers with one label would have had one outcome between them.
        self.outcomes: Dict[int, str] = {}
        self._selector: Optional[selectors.BaseSelector] = None
        self._active: Dict[int, _Job] = {}

    def run(self) -> List[str]:
        waiting: Deque[_Job] = deque(_Job(index, endpoint) for index, endpoint in enumerate(self.endpoints))
        self._selector = selector = selectors.DefaultSelector()
        active = self._active
        try:
            while waiting or active:
                while waiting and len(active) < self.max_parallel:
                    job = waiting.popleft()
                    if not self._start(job):  # out of descriptors: wait for a free one
                        waiting.appendleft(job)
                        if not active:
                            self._fail(job, "cannot connect: out of file descriptors")
                            waiting.popleft()
                        else:
                            self.max_parallel = max(1, len(active))
                        break
                if not active:
                    continue
                now = time.monotonic()
                deadlines = [job.deadline for job in active.values() if job.deadline is not None]
                wait = max(0.0, min(deadlines) - now) if deadlines else None
                for key, mask in selector.select(wait):
                    job = key.data
                    if key.fileobj is not job.sock:  # finished, or moved to its next address
                        continue
                    if job.handshaking:
                        self._handshake(job)
                    elif mask & selectors.EVENT_WRITE:
                        self._on_writable(job)
                    elif mask & selectors.EVENT_READ:
                        self._on_readable(job)
                now = time.monotonic()
                for job in [job for job in active.values() if job.deadline is not None and job.deadline <= now]:
                    if job.streaming:
                        self._fail(job, f"timed out: no stream item within {self.stream_timeout:g} s")
                    elif job.handshaking:
                        self._fail(job, f"cannot connect: no TLS handshake within {self.timeout:g} s")
                    elif job.connected:
                        self._fail(job, f"timed out: no reply within {self.timeout:g} s")
                    else:
                        self._fail(job, f"cannot connect: no answer within {self.timeout:g} s")
                if self.after_batch is not None:
                    self.after_batch()
        finally:
            for job in list(active.values()):
                self._close(job)
            selector.close()
            self._selector = None
        return [self.outcomes.get(index, UNREACHABLE) for index in range(len(self.endpoints))]

    # ---- per-endpoint steps ----

    def _start(self, job: _Job) -> bool:
        """Begins connecting to the next address of ``job``; False when out of descriptors."""
        if job.candidates is None:
            try:
                job.candidates = job.endpoint.resolve()
            except ConnectionFailed as exc:
                self._fail(job, str(exc).replace(f"cannot connect to {job.endpoint.label}: ", "cannot connect: "))
                return True
        while job.candidates:
            family, sockaddr = job.candidates[0]
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    return False
                raise
            job.candidates.pop(0)
            sock.setblocking(False)
            try:
                code = sock.connect_ex(sockaddr)
                failure = os.strerror(code)
            except OSError as exc:  # an address connect_ex cannot even try (a too-long path)
                code, failure = -1, _reason(exc)
            if code in (0, errno.EINPROGRESS):
                job.sock = sock
                job.deadline = None if self.timeout is None else time.monotonic() + self.timeout
                self._active[sock.fileno()] = job
                assert self._selector is not None
                self._selector.register(sock, selectors.EVENT_WRITE, job)
                return True
            sock.close()
            job.failure = failure
        self._fail(job, f"cannot connect: {job.failure or 'no address'}")
        return True

    def _on_writable(self, job: _Job) -> None:
        sock = job.sock
        assert sock is not None and self._selector is not None
        if not job.connected:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:  # this address refused; try the endpoint's next one, if any
                job.failure = os.strerror(code)
                self._close(job)
                if not self._start(job):
                    self._fail(job, "cannot connect: out of file descriptors")
                return
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.tls_context is not None:
                    self._start_tls(job)
                    return
            job.connected = True
            self._send_payload(job)
            self._touch(job)
        try:
            sent = sock.send(job.out)
        except self._would_block:
            return
        except OSError as exc:
            # A refusing server may have closed before our request went (a Unix socket then
            # fails the send): read the reason it sent, reported at the EOF that follows.
            job.out = b""
            job.send_error = f"connection lost: {_reason(exc)}"
            self._selector.modify(sock, selectors.EVENT_READ, job)
            return
        job.out = job.out[sent:]
        if not job.out:
            self._selector.modify(sock, selectors.EVENT_READ, job)

    def _start_tls(self, job: _Job) -> None:
        """Wraps a connected TCP socket for TLS; the handshake is driven by _handshake()."""
        sock, selector = job.sock, self._selector
        assert sock is not None and selector is not None and self.tls_context is not None
        fd = sock.fileno()
        selector.unregister(sock)  # wrapping detaches the socket object from its descriptor
        try:
            job.sock = self.tls_context.wrap_socket(
                sock, server_hostname=job.endpoint.host, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:  # the wrapper has closed the descriptor
            job.sock = None
            self._active.pop(fd, None)
            sock.close()
            self._fail(job, f"cannot connect: TLS: {_tls_reason(exc)}")
            return
        job.connected = True
        job.handshaking = True
        selector.register(job.sock, selectors.EVENT_WRITE, job)
        self._handshake(job)

    def _handshake(self, job: _Job) -> None:
        """One non-blocking handshake step: what OpenSSL waits for becomes the interest."""
        import ssl

        sock = job.sock
        assert sock is not None and self._selector is not None
        try:
            sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, job)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, job)
            return
        except OSError as exc:  # ssl.SSLError included: a bad certificate, a plaintext server
            self._fail(job, f"cannot connect: TLS handshake failed: {_tls_reason(exc)}")
            return
        job.handshaking = False
        self._send_payload(job)
        self._touch(job)
        self._selector.modify(sock, selectors.EVENT_WRITE, job)

    def _send_payload(self, job: _Job) -> None:
        """What a new connection sends first: `auth challenge` with a token, else the command."""
        job.out = self.payload
        job.setup_step = _AUTH_ID if self.token is not None else self._level_step()

    def _level_step(self) -> Optional[int]:
        """The setup step after authentication: `level NAME`, if there is a level to restore."""
        return None if self.level is None else _LEVEL_ID

    def _send_next(self, job: _Job, data: bytes) -> None:
        """Queues more requests on a connection that is waiting for replies."""
        assert job.sock is not None and self._selector is not None
        job.out += data
        self._selector.modify(job.sock, selectors.EVENT_WRITE, job)

    def _recv(self, sock: socket.socket) -> bytes:
        data = sock.recv(_RECV_SIZE)
        pending = getattr(sock, "pending", None)
        if pending is not None and data:
            # Records already decrypted raise no event: take them now.
            more = pending()
            while more:
                data += sock.recv(more)
                more = pending()
        return data

    def _on_readable(self, job: _Job) -> None:
        sock = job.sock
        assert sock is not None
        try:
            data = self._recv(sock)
        except self._would_block:
            return
        except OSError as exc:
            self._fail(job, f"connection lost: {_reason(exc)}")
            return
        if not data:
            reason = _wire.read_err_line(job.last_text)
            if reason is not None:
                self._fail(job, f"the server closed the connection: {reason}")
            else:
                self._fail(job, job.send_error or "the server closed the connection before replying")
            return
        try:
            job.reader.feed(data)
        except ReplyTooLong as exc:
            self._fail(job, str(exc))
            return
        emit = self.on_event
        endpoint = job.endpoint
        while job.sock is not None:
            line = job.reader.next_line()
            if line is None:
                return
            # The timeout bounds the wait for each whole line, as Client._read_line's does: bytes
            # that do not finish one (a peer trickling a byte at a time) do not re-arm it.
            self._touch(job)
            frame = _wire.read_frame(line)
            # The auth ids answer only the auth step in flight: before it and after it, a line
            # with such an id is a handler's own output (conn.write), as any other id's is.
            if frame is None or (frame[1] not in (_COMMAND_ID, None) and frame[1] != job.setup_step):
                job.last_text = line
                emit(endpoint, "text", line)
                continue
            kind, frame_id, value = frame
            if frame_id == _AUTH_ID:
                self._on_challenge(job, kind, value)
            elif frame_id == _PROOF_ID:
                # Only a success answers the token: anything else for it fails the endpoint.
                if kind not in (_wire.RESULT, _wire.END):
                    self._finish(job, ERROR, "error", _remote_error(value if kind == _wire.ERROR else {}))
                else:
                    job.setup_step = self._level_step()
            elif frame_id == _LEVEL_ID:
                if kind == _wire.ERROR:  # the command has not gone: it must not run above the level
                    self._finish(job, ERROR, "error", _remote_error(value))
                elif kind in (_wire.RESULT, _wire.END):
                    job.setup_step = None
                    self._send_next(job, self.command_line)
            elif kind == _wire.ITEM:
                emit(endpoint, "item", value)
            elif kind == _wire.OPEN:
                job.streaming = True
                self._touch(job)
            elif kind == _wire.ERROR:
                self._finish(job, ERROR, "error", _remote_error(value))
            elif kind == _wire.END:
                self._finish(job, OK, "end", value)
            else:
                self._finish(job, OK, "result", value)

    def _on_challenge(self, job: _Job, kind: str, value: Any) -> None:
        """`auth challenge` answered: send the proof (or, from a server without challenges, the
        cleartext token) and then the command (or first `level NAME`), pipelined."""
        token = self.token
        if token is None or kind in (_wire.OPEN, _wire.ITEM):  # no answer to `auth challenge` yet
            return
        if kind == _wire.ERROR and value.get("code") not in _NO_CHALLENGE:
            self._finish(job, ERROR, "error", _remote_error(value))
            return
        try:
            follow_up = _auth_follow_up(value if kind == _wire.RESULT else None, token, job.endpoint, self.tls_context)
        except ConnectionFailed as exc:
            self._fail(job, str(exc))  # the printer prefixes the endpoint's label itself
            return
        proof = b"" if follow_up is None else request_line(follow_up, _PROOF_ID)
        job.setup_step = self._level_step() if follow_up is None else _PROOF_ID
        self._send_next(job, proof + self.first_line)

    def _touch(self, job: _Job) -> None:
        timeout = self.stream_timeout if job.streaming else self.timeout
        job.deadline = None if timeout is None else time.monotonic() + timeout

    def _finish(self, job: _Job, outcome: str, kind: str, value: Any) -> None:
        self._close(job)
        self.outcomes[job.index] = outcome
        self.on_event(job.endpoint, kind, value)

    def _fail(self, job: _Job, message: str) -> None:
        self._finish(job, UNREACHABLE, "failed", message)

    def _close(self, job: _Job) -> None:
        sock, job.sock = job.sock, None
        if sock is None:
            return
        self._active.pop(sock.fileno(), None)
        if self._selector is not None:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()
        job.connected = False
        job.handshaking = False
        job.out = b""
