# The commands every server has. They are ordinary registered commands, built with the same
# registry a host uses, so they double as a worked example of the command layer; the only
# privilege they have is a Connection parameter, which any handler may declare too. They see
# the server only through its public surface (registry, check_token, check_response,
# auth_required, cleartext_auth, stats, connections, wake, log_tail_enabled), and the dispatcher
# only for its fallback, which `watch` runs as `start()`'s hosts answer every command.
#
# Authentication comes in two forms. `auth TOKEN` sends the token itself. `auth challenge` then
# `auth response HMAC` (as Varnish's CLI does) never sends it: the server hands out a random
# challenge, kept per connection and good for one answer, and the client answers with the hex
# HMAC-SHA256 of it under the token (_wire.challenge_digest; by hand, `openssl dgst -hmac`). A
# server may refuse the cleartext form on listeners other than loopback and Unix sockets.
from __future__ import annotations

import logging
import time
import weakref
from collections import deque

from ._commands import LEVEL_RANK, LEVELS, Command, check_permission, may_run
from ._dispatch import fallback_command
from ._errors import CommandError, PermissionDenied, UnknownCommand
from ._log import Throttle
from ._replies import NO_REPLY, Pending, Stream, Wait, cancel, is_stream
from ._session import Connection

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Deque, Dict, Iterator, List, Optional, Protocol

    from ._commands import Registry
    from ._dispatch import Dispatcher, Stats

    class Server(Protocol):
        """What the builtins use of the server: its public surface, nothing private."""

        registry: Registry
        stats: Stats
        log_tail_enabled: bool
        cleartext_auth: str

        @property
        def auth_required(self) -> bool: ...
        @property
        def connections(self) -> List[Connection]: ...
        def check_token(self, candidate: str) -> bool: ...
        def check_response(self, challenge: str, response: str) -> bool: ...
        def wake(self, conn: Connection) -> None: ...


log = logging.getLogger("reactor_mgmt")

_MAX_AUTH_FAILURES = 3
CLEARTEXT_AUTH = ("always", "loopback", "never")  # Server(cleartext_auth=...): where `auth TOKEN` is allowed
_CHALLENGE_BYTES = 16
_TAIL_QUEUE = 1000  # records held per slow log subscriber before we count drops instead
_MIN_WATCH_INTERVAL = 0.1


def install_builtins(server: Server, dispatcher: Dispatcher) -> None:
    def add(name: str, fn: Any, **options: Any) -> Command:
        return server.registry.add(name, fn, builtin=True, **options)

    # The handlers that check their own arguments raise their Command's usage_error (the
    # commands are registered below, before any can run), and those whose signature cannot say
    # what they take register with usage=: help and every usage error print one line.

    def help(*topic: str, conn: Connection) -> str:
        """Lists the commands, or explains one."""
        try:
            return server.registry.help(list(topic), lambda command: may_run(conn, command))
        except PermissionDenied:
            if not conn.authenticated:  # the same answer running the command would get
                raise PermissionDenied("authentication required (send 'auth TOKEN')") from None
            raise

    def ping() -> str:
        """Replies pong: a liveness check."""
        return "pong"

    def echo(*words: str) -> str:
        """Replies with the arguments joined by single spaces."""
        return " ".join(words)

    def quit(conn: Connection) -> Any:
        """Closes the connection once every reply before it has been sent."""
        conn.close()
        return NO_REPLY

    def auth(*token: str, conn: Connection) -> str:
        """Authenticates this connection with the server's token: auth TOKEN.

        The token crosses the wire as it is; 'auth challenge' proves it without sending it.
        A token that is the word 'challenge' or 'response' must go as JSON:
        {"cmd": "auth", "args": ["challenge"]}.
        """
        # *token rather than token: str, so that a token starting with "--" (token_urlsafe
        # makes those) is taken as it is instead of being parsed as an unknown option.
        if len(token) != 1:
            raise auth_command.usage_error("missing TOKEN" if not token else "one word expected")
        if not cleartext_allowed(server.cleartext_auth, conn.listener):
            suffix = refusals.allow(time.monotonic())
            if suffix is not None:
                log.warning(
                    "refused cleartext auth on connection #%d: its listener allows only 'auth challenge'%s",
                    conn.id,
                    suffix,
                )
            raise PermissionDenied("cleartext auth refused on this listener: use 'auth challenge'")
        return authenticated(server.check_token(token[0]), conn)

    # A client can fail `auth` at will, three times per connection and as many connections as it
    # likes (1,000 of them made 3,000 records in 0.4 s): one record per interval, with a count of
    # the rest, as for HTTP probes and TLS handshake failures.
    failures = Throttle()

    def authenticated(ok: bool, conn: Connection) -> str:
        if ok:
            conn.authenticated = True
            return "OK"
        conn.auth_failures += 1
        suffix = failures.allow(time.monotonic())
        if suffix is not None:
            log.warning(
                "failed authentication on connection #%d (%d of %d)%s",
                conn.id,
                conn.auth_failures,
                _MAX_AUTH_FAILURES,
                suffix,
            )
        if conn.auth_failures >= _MAX_AUTH_FAILURES:
            conn.close()
            raise PermissionDenied("authentication failed; closing")
        raise PermissionDenied("authentication failed")

    challenges: weakref.WeakKeyDictionary[Connection, str] = weakref.WeakKeyDictionary()
    refusals = Throttle()

    def auth_challenge(conn: Connection) -> str:
        """Starts challenge-response authentication: replies with a one-use CHALLENGE.

        Answer with 'auth response HMAC', HMAC being the hex HMAC-SHA256 of CHALLENGE under
        the token, as printf '%s' CHALLENGE | openssl dgst -sha256 -hmac TOKEN prints it.
        The token itself never crosses the wire.
        """
        import secrets  # lazily: only servers that are asked pay for it

        challenge = challenges[conn] = secrets.token_hex(_CHALLENGE_BYTES)
        return challenge

    def auth_response(hmac: str, conn: Connection) -> str:
        """Answers this connection's last 'auth challenge': auth response HMAC."""
        challenge = challenges.pop(conn, None)  # good for one answer, right or wrong
        if challenge is None:
            raise CommandError("no challenge to answer: send 'auth challenge' first", code="usage")
        return authenticated(server.check_response(challenge, hmac.strip().lower()), conn)

    def level(new_level: Optional[str] = None, conn: Connection = None) -> str:  # type: ignore[assignment]
        """Shows this connection's access level, or lowers it (it can never be raised).

        The levels, lowest first: user (read-only), operator, admin.
        """
        if new_level is None:
            return LEVELS[conn.level]
        rank = LEVEL_RANK.get(new_level)
        if rank is None:
            raise level_command.usage_error(f"unknown level {new_level!r}; the levels are {', '.join(LEVELS)}")
        if rank > conn.level:
            raise PermissionDenied(
                f"permission denied: cannot raise the level from {LEVELS[conn.level]} to {new_level}"
            )
        conn.level = rank
        return LEVELS[rank]

    def stats() -> Dict[str, Any]:
        """Server counters: connections, commands, errors, bytes and poll() timings."""
        return server_stats(server)

    def watch(seconds: float, *command: str, conn: Connection) -> Stream:
        """Re-runs COMMAND every SECONDS seconds until you send any line.

        Example: watch 1 stats
        """
        if not command:
            raise watch_command.usage_error("missing COMMAND")
        if not _MIN_WATCH_INTERVAL <= seconds < float("inf"):  # NaN too: it would re-run without pause
            raise watch_command.usage_error(f"SECONDS must be at least {_MIN_WATCH_INTERVAL}")
        try:
            target, args = server.registry.resolve(list(command), conn)
        except UnknownCommand:
            if dispatcher.fallback is None:
                raise
            # start()'s hosts answer every command through their fallback: watch it the same way
            target, args = fallback_command(dispatcher.fallback, command[0]), list(command[1:])
        check_permission(conn, target)
        if target.name == "watch":
            raise CommandError("cannot watch watch", code="usage")
        return Stream(_watch(target, args, seconds, conn), until_input=True)

    add("help", help, pre_auth=True)
    add("ping", ping, pre_auth=True)
    add("echo", echo)
    add("quit", quit, pre_auth=True)
    # *token takes any number of words (see auth), but exactly one is meant
    auth_command = add("auth", auth, pre_auth=True, hidden=not server.auth_required, usage="TOKEN")
    add("auth challenge", auth_challenge, pre_auth=True, hidden=not server.auth_required)
    add("auth response", auth_response, pre_auth=True, hidden=not server.auth_required)
    level_command = add("level", level, usage="[LEVEL]")  # new_level: the JSON name, kept
    add("stats", stats)
    watch_command = add("watch", watch, usage="SECONDS COMMAND...")  # COMMAND is required
    if server.log_tail_enabled:
        tail = _LogTail(server)

        def log_tail(level: str = "INFO", conn: Connection = None) -> Stream:  # type: ignore[assignment]
            """Streams the host's log records until you send any line: log tail [LEVEL].

            Shows what the host's loggers already let through; LEVEL filters further.
            """
            number = logging.getLevelName(level.upper())
            if not isinstance(number, int):
                raise log_tail_command.usage_error(f"unknown level {level!r}")
            return Stream(tail.subscribe(conn, number), until_input=True)

        log_tail_command = add("log tail", log_tail, level="operator")


def cleartext_allowed(policy: str, listener: Any) -> bool:
    """Whether `auth TOKEN` may be sent on ``listener`` under ``Server(cleartext_auth=policy)``:
    "always", "never", or "loopback" (a Unix socket, or TCP bound to a loopback address)."""
    if policy == "always":
        return True
    if policy != "loopback":
        return False
    address = getattr(listener, "address", None)
    if isinstance(address, (str, bytes)):  # a Unix socket (a path, or an abstract name)
        return True
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return False
    import ipaddress  # lazily: only a refusing server asks

    try:
        ip = ipaddress.ip_address(address[0].split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _watch(command: Command, args: List[str], seconds: float, conn: Connection) -> Iterator[Any]:
    due = time.monotonic()
    while True:
        now = time.monotonic()
        if now < due:
            yield Wait(due)
            continue
        result = command.call(args, conn)
        if isinstance(result, Pending) or is_stream(result):
            # Nobody will wait for it: cancel the Pending (its on_cancel callbacks run) or close
            # the generator (its finally runs), as a client that leaves would.
            if isinstance(result, Pending):
                cancel(result)
            elif getattr(result, "close", None) is not None:
                result.close()
            raise CommandError(f"cannot watch '{command.name}': it does not reply at once")
        yield "" if result is NO_REPLY else result
        due = max(due + seconds, now)


def server_stats(server: Server) -> Dict[str, Any]:
    stats = server.stats
    durations = sorted(stats.durations)
    if durations:
        mean = sum(durations) / len(durations)
        p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
        peak = durations[-1]
    else:
        mean = p99 = peak = 0.0
    result = {
        "uptime_s": round(time.time() - stats.started, 3),
        "connections_open": len(server.connections),
        "connections_total": stats.connections_total,
        "connections_refused": stats.refused,
        "commands": stats.commands,
        "errors": stats.errors,
        "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out,
        "polls": stats.busy_polls,  # polls that did work: counting idle ones would slow the idle tick
        "poll_window": len(durations),
        "poll_mean_ms": round(mean * 1000, 4),
        "poll_p99_ms": round(p99 * 1000, 4),
        "poll_max_ms": round(peak * 1000, 4),
    }
    if stats.poll_gap_max is not None:  # measured only with the activity tools' poll watch
        result["poll_gap_max_ms"] = round(stats.poll_gap_max * 1000, 4)
    return result


class _Subscriber:
    __slots__ = ("conn", "level", "records", "dropped", "parked")

    def __init__(self, conn: Connection, level: int) -> None:
        self.conn = conn
        self.level = level
        self.records: Deque[str] = deque()
        self.dropped = 0
        self.parked = False  # waiting for emit() to wake it; set and cleared under the lock


class _LogTail(logging.Handler):
    """One handler on the root logger, fanning records out to bounded per-client queues.

    It is attached only while someone is subscribed. emit() may run on any thread, so it only
    appends to a deque and asks the server to wake the subscriber; formatting happens here so
    the record's arguments are not kept alive.
    """

    def __init__(self, server: Server) -> None:
        super().__init__(logging.NOTSET)
        self.server = server
        self.subscribers: List[_Subscriber] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def subscribe(self, conn: Connection, level: int) -> Iterator[Any]:
        subscriber = _Subscriber(conn, level)
        if not self.subscribers:
            logging.getLogger().addHandler(self)
        self.subscribers.append(subscriber)
        try:
            while True:
                records = subscriber.records
                if records:
                    yield records.popleft()
                elif subscriber.dropped:
                    with self.lock:  # type: ignore[union-attr]  # emit() may be counting more drops on another thread
                        notice = self._take_dropped(subscriber)
                    yield notice
                else:
                    # Checked again under emit()'s lock: a record appended on another thread
                    # between the check above and parking would otherwise find us not parked,
                    # send no wake, and every later one would see a non-empty queue.
                    with self.lock:  # type: ignore[union-attr]  # Handler.__init__ made it
                        if records or subscriber.dropped:
                            continue
                        subscriber.parked = True
                    yield _WAIT_FOR_WAKE
        finally:
            self.subscribers.remove(subscriber)
            if not self.subscribers:
                logging.getLogger().removeHandler(self)

    @staticmethod
    def _take_dropped(subscriber: _Subscriber) -> str:
        count, subscriber.dropped = subscriber.dropped, 0
        return f"\u2026 {count} records dropped"

    def emit(self, record: logging.LogRecord) -> None:
        text: Optional[str] = None
        for subscriber in list(self.subscribers):
            if record.levelno < subscriber.level:
                continue
            if text is None:
                try:
                    text = self.format(record)
                except Exception:
                    self.handleError(record)
                    return
            records = subscriber.records
            if len(records) + (subscriber.dropped > 0) >= _TAIL_QUEUE:  # room for the notice too
                subscriber.dropped += 1
                continue
            if subscriber.dropped:  # the notice goes where the gap is
                records.append(self._take_dropped(subscriber))
            records.append(text)
            if subscriber.parked:  # emit() runs under self.lock, as the parking does
                subscriber.parked = False
                self.server.wake(subscriber.conn)


_WAIT_FOR_WAKE = Wait(None)
