# Server: the façade a host holds. It keeps the configuration, registration, listeners,
# admission, close and tear-down, and stats; everything else it delegates:
#   _loop.Loop          the selector, ready queue, timers, waker and idle reaper (one tick);
#   _listeners          binding, socket-file hygiene, the accept loop;
#   _transport          each client socket, its output buffer and the only send;
#   _session.Connection each client's requests and waiting reply, with no socket;
#   _dispatch           a request to a reply, through the command registry (_commands).
# A request's path: Loop.handle -> Transport.handle_event -> Connection.data_received (the read is
# the session's turn: a lone request runs there, several queue for service) ->
# Dispatcher.execute -> handler -> Transport.write, then Transport.flush sends it at the end of
# that turn (Connection.end_turn).
#
# poll() is re-entrancy-guarded: a handler that polls would answer later requests before its
# own. close() from a handler or callback takes effect as that poll() returns (see close).
from __future__ import annotations

import functools
import os
import socket
import threading
import time
import weakref

from ._commands import Command, Registry, methods_as_commands
from ._dispatch import Dispatcher, Stats, owed_a_notice
from ._errors import ConfigError, ReactorMgmtError
from ._listeners import Listener, Listeners, peer_allowed
from ._log import format_address, log
from ._loop import LONGEST_WAIT, IdleReaper, Loop
from ._protocol import DEFAULT_MAX_LINE
from ._session import Connection
from ._transport import Limits, Transport, drain, refuse
from ._wire import challenge_digest

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    import asyncio
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union, overload

    from typing_extensions import TypeVarTuple, Unpack  # type checkers only: no run-time dependency

    from ._integrations import AsyncioHandle, ThreadHandle
    from ._listeners import Address
    from ._loop import TimerHandle
    from ._toolkit import Toolkit

    _F = TypeVar("_F", bound=Callable[..., Any])  # a handler: @server.command gives it back unchanged
    _Ts = TypeVarTuple("_Ts")

_get_ident = threading.get_ident
_monotonic = time.monotonic


class Server:
    """A management socket served from the host's own loop.

    Create it, register commands, and call :meth:`poll` once per iteration of your main loop.
    Handlers run inside ``poll()`` on the caller's thread. Every limit below has a safe default;
    see the README's Security section.
    """

    # Set by _check_options: the cleartext-auth policy, the discovery entry and the relisten spec.
    cleartext_auth: str
    _discover: Optional[Tuple[Optional[str], bool]]
    _discovery_path: Optional[str]
    _relisten: Optional[Tuple[Any, ...]]

    def __init__(
        self,
        host: Optional[str] = "127.0.0.1",
        port: Optional[int] = 8123,
        *,
        unix: Optional[str] = None,
        level: Optional[str] = None,
        max_connections: int = 128,
        idle_timeout: float = 300.0,
        max_line: int = DEFAULT_MAX_LINE,
        high_water: int = 1 << 20,
        low_water: Optional[int] = None,
        max_output: int = 16 << 20,
        max_commands_per_tick: int = 256,
        pending_timeout: float = 30.0,
        token: Optional[str] = None,
        token_env: Optional[str] = None,
        token_file: Optional[str] = None,
        allow_remote: bool = False,
        log_tail: bool = False,
        address_file: Optional[str] = None,
        builtins: bool = True,
        tls: Any = None,
        cert_levels: Optional[Dict[str, Sequence[str]]] = None,
        backlog: Optional[int] = None,
        tls_handshake_timeout: float = 10.0,
        after_fork: str = "close",
        cleartext_auth: str = "always",
        name: Optional[str] = None,
        discover: bool = False,
        audit: bool = False,
        toolkit: bool = False,
        _caches: bool = True,
    ) -> None:
        self.stats = Stats(time.time())
        self._limits = Limits(high_water, low_water, max_output, self.stats)  # checks them
        self.max_connections = max_connections
        self.tls_handshake_timeout = tls_handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_line = max_line
        self.high_water, self.low_water, self.max_output = high_water, self._limits.low_water, max_output
        self.max_commands_per_tick = max_commands_per_tick
        self.pending_timeout = pending_timeout
        self.allow_remote = allow_remote
        _check_options(
            self,
            cleartext_auth,
            after_fork,
            name if discover else False,
            (host, port, unix, level, tls, cert_levels, backlog, address_file),
        )
        self._token = _load_token(token, token_env, token_file)
        self.registry = Registry(Connection)
        if not _caches:  # the suite runs the uncached path too (tests/conftest.py)
            self.registry.line_cache = None
        self._dispatcher = Dispatcher(
            self.registry,
            self.stats,
            clock=time.monotonic,
            call_later=_unset,
            wake=self.wake,
            schedule=_unset,
            max_line=max_line,
            max_output=max_output,
            max_commands_per_tick=max_commands_per_tick,
            pending_timeout=pending_timeout,
        )
        self._loop: Loop  # these four are made by _start_io, here and in a relistening child
        self.address_file: Optional[str]
        self._listening: Listeners
        self._reaper: Optional[IdleReaper]
        self._next_id = 0
        self._closed = False
        self._pid = os.getpid()  # a forked child abandons the server (see _abandon)
        self._polling = 0  # the thread inside poll()'s handling: a nested poll() is refused
        # Set when a handler or callback closes the server (poll() finishes the close on its way
        # out): each connection owed a shutdown notice, by the notice's reply id.
        self._close_owed: Optional[Dict[Connection, Any]] = None
        self._close_grace = 0.0
        self._default_level = level
        # The thread that calls poll(); wake() from any other thread goes through the waker.
        self.owner_thread = threading.get_ident()
        self.log_tail_enabled = log_tail
        self._toolkit: Optional[Toolkit] = None  # the operator tools (_toolkit.Toolkit), made on first use
        _start_io(self, address_file)
        _SERVERS.add(self)
        try:  # from here, a failure closes what is open: the epoll, the reserve fd, listeners
            if builtins:
                from ._builtins import install_builtins  # lazily: it imports logging, ~4 ms

                install_builtins(self, self._dispatcher)
            if toolkit or audit:  # Server(audit=True) alone installs the toolkit with its audit log
                self.add_toolkit(audit=audit)
            _listen_as_asked(self, host, port, unix, level, tls, cert_levels, backlog)
        except BaseException:
            self.close()
            raise

    # ---- configuration ----

    @property
    def auth_required(self) -> bool:
        return self._token is not None

    def check_token(self, candidate: str) -> bool:
        """Whether ``candidate`` is the token (`auth TOKEN`); True when there is none."""
        return self._token is None or _same(self._token, candidate)

    def check_response(self, challenge: str, response: str) -> bool:
        """Whether ``response`` is the HMAC-SHA256 of ``challenge`` under the token (`auth response`)."""
        return self._token is None or _same(challenge_digest(self._token, challenge), response)

    # Both live in the dispatcher, which uses them; these are the host's way to set them.
    fallback = property(
        lambda self: self._dispatcher.fallback,
        lambda self, fn: setattr(self._dispatcher, "fallback", fn),
        doc="``fallback(cmd, args, conn)`` answers any command nobody registered (see start()).",
    )
    on_error = property(
        lambda self: self._dispatcher.on_error,
        lambda self, fn: setattr(self._dispatcher, "on_error", fn),
        doc="``on_error(exc)`` hears about every exception a handler raises.",
    )

    if TYPE_CHECKING:  # the two forms, `@server.command` and `@server.command(...)`, keep the handler's type

        @overload
        def command(self, fn: _F, /) -> _F: ...
        @overload
        def command(
            self,
            *,
            name: Optional[str] = None,
            level: str = "user",
            hidden: bool = False,
            help: Optional[str] = None,
            replace: bool = False,
            usage: Optional[str] = None,
        ) -> Callable[[_F], _F]: ...

    def command(
        self,
        fn: Optional[Callable[..., Any]] = None,
        *,
        name: Optional[str] = None,
        level: str = "user",
        hidden: bool = False,
        help: Optional[str] = None,
        replace: bool = False,
        usage: Optional[str] = None,
    ) -> Any:
        """Registers a handler; use as ``@server.command`` or ``@server.command(name="show x")``.

        The command name defaults to the function name, with underscores read as spaces, so
        ``def show_stats()`` answers ``show stats``. A name already registered by the host raises
        ConfigError unless ``replace`` is true; a builtin's name is simply taken over. ``usage``,
        the words after the name, replaces the signature's usage line (help, usage errors).
        """

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            command_name = name if name is not None else function.__name__.replace("_", " ")
            self.add_command(command_name, function, help, level=level, hidden=hidden, replace=replace, usage=usage)
            return function

        if fn is not None:
            return register(fn)
        return register

    def add_command(
        self,
        name: str,
        fn: Callable[..., Any],
        help: Optional[str] = None,
        *,
        level: str = "user",
        hidden: bool = False,
        replace: bool = False,
        usage: Optional[str] = None,
    ) -> Command:
        return self.registry.add(name, fn, help=help, level=level, hidden=hidden, replace=replace, usage=usage)

    def remove_command(self, name: str) -> None:
        self.registry.remove(name)

    def add_commands(
        self, obj: Any, *, prefix: str = "", level: Optional[str] = None, replace: bool = False
    ) -> List[Command]:
        """Registers every public method of ``obj`` (names starting with ``_`` are skipped); for a
        module, every public function defined in it.

        A method can set its own options with the ``@command_options`` decorator. As with
        add_command(), a name already registered by the host raises ConfigError unless
        ``replace`` is true.
        """
        return [
            self.add_command(f"{prefix} {name}".strip(), method, **options)
            for name, method, options in methods_as_commands(obj, level=level, replace=replace)
        ]

    # ---- the operator toolkit (see _toolkit and the README's "Built-in operator tools") ----

    def add_toolkit(self, *parts: str, **options: Any) -> None:
        """Installs the operator tools: all, or the named parts ("threads", "gc", "tracemalloc",
        "log", "config", "slow", "clients", "gap"); options: audit, audit_level, slow_ms,
        stall_after, stall_file, secret_params (see the README). A part twice does nothing."""
        _tools(self).install(*parts, **options)

    def setting(self, name: str, obj: Any, attr: str, **options: Any) -> Any:
        """Declares ``obj.attr`` as the setting ``name`` of ``config get/set/diff`` (installing
        them if needed). Options: ``type``, ``level`` ("operator"), ``check(value)``,
        ``read_only``, ``help``, ``secret``; see the README."""
        options["kind"] = options.pop("type", None)
        return _tools(self).settings.declare(name, obj, attr, **options)

    def settings_from(self, obj: Any, *, prefix: str = "", level: str = "operator") -> List[Any]:
        """Declares every field of a dataclass instance as a setting named ``prefix + field``."""
        return _tools(self).settings.declare_dataclass(obj, prefix, level)

    # ---- listeners (see _listeners.Listeners) ----

    def listen_tcp(
        self,
        host: str = "127.0.0.1",
        port: int = 8123,
        *,
        level: Optional[str] = None,
        tls: Any = None,
        cert_levels: Optional[Dict[str, Sequence[str]]] = None,
        backlog: Optional[int] = None,
    ) -> List[Address]:
        """Listens on every address ``host`` resolves to; port 0 picks one free port for all.

        With ``tls`` (an ``ssl.SSLContext``) every connection starts with a TLS handshake; with
        mutual TLS, ``cert_levels`` (``{"admin": ["alice", ...]}``) gives a client certificate
        whose commonName or subjectAltName is listed that level. ``backlog`` defaults to the
        system's maximum."""
        return self._listening.tcp(host, port, level or self._default_level, tls, cert_levels, backlog)

    def listen_unix(
        self,
        path: str,
        *,
        mode: int = 0o600,
        group: Union[int, str, None] = None,
        level: Optional[str] = None,
        check_peer: bool = False,
        allowed_uids: Sequence[int] = (),
        backlog: Optional[int] = None,
    ) -> str:
        """Listens on a Unix socket created with ``mode`` (0600 by default).

        A stale socket left by a dead process is replaced; a live one, a symlink or any file
        that is not a socket is refused. With ``check_peer`` only the same uid, root and
        ``allowed_uids`` may connect (SO_PEERCRED).
        """
        return self._listening.unix(
            os.fspath(path), mode, group, level or self._default_level, check_peer, allowed_uids, backlog
        )

    def listen_socket(self, sock: socket.socket, *, level: Optional[str] = None) -> Address:
        """Adopts a socket that is already bound and listening (systemd activation, or a
        privileged bind made before dropping root)."""
        return self._listening.adopt(sock, level or self._default_level)

    def listen_fd(self, fd: int, *, level: Optional[str] = None) -> Address:
        """Adopts a listening descriptor, such as fd 3 from systemd socket activation."""
        return self._listening.adopt_fd(fd, level or self._default_level)

    @property
    def addresses(self) -> List[Address]:
        """Bound addresses: ``(host, port)`` for TCP, the path for Unix sockets."""
        return self._listening.addresses()

    @property
    def port(self) -> Optional[int]:
        """The first TCP port, handy after binding port 0."""
        for address in self._listening.addresses():
            if isinstance(address, tuple):
                return address[1]
        return None

    @property
    def connections(self) -> List[Connection]:
        return list(self._loop.connections.values())

    # ---- the tick ----

    def fileno(self) -> int:
        """A descriptor that becomes readable when the server has socket work (epoll/kqueue).

        Queued work that needs no socket event (the rest of a pipelined batch, timers) does not
        show here: call poll() at least once per loop iteration, or see :attr:`busy`.
        """
        return self._loop.selector.fileno()

    @property
    def busy(self) -> bool:
        """True when poll() has work left over that does not wait for a socket event."""
        return self._loop.work_left()

    def next_deadline(self) -> Optional[float]:
        """The time.monotonic() at which the next timer (idle reap, pending timeout) fires."""
        timers = self._loop.timers
        return timers[0][0] if timers else None

    def poll(self, timeout: Optional[float] = 0.0, budget: Optional[float] = None) -> int:
        """Handles ready events and returns how many it handled.

        ``timeout=0`` (or a negative one) never blocks; a positive timeout waits at most that
        long for activity, and the call returns by then: no request starts after it but the
        first, so a host's ``poll(timeout=time_left)`` starts its next frame on time. ``None``
        waits until there is some. ``budget`` caps the seconds spent running commands in this
        call; whatever is left resumes on the next call. Called from inside a handler, it
        raises ReactorMgmtError rather than answer later requests before that handler's own."""
        if budget is not None and budget != budget:  # NaN: every check of the end would say "go on"
            raise ValueError(f"poll() takes a budget in seconds, not {budget!r}")
        loop = self._loop
        # The toolkit's gap watch: one clock read per poll(), inlined for the idle tick's sake.
        gap_from = loop.gap_from
        if gap_from is not None:
            if self._polling:
                gap_from = None  # a handler's own poll(): not a gap, and it sets no end
            else:
                now = _monotonic()
                if now - gap_from > loop.stats.poll_gap_max:
                    loop.stats.poll_gap_max = now - gap_from
        # A handler's own poll() leaves it alone: its exited() would disarm the outer's stall watchdog.
        watch = loop.watch
        if watch is not None and self._polling:
            watch = None
        # Inlined for the idle tick (one non-blocking kernel call) and a host's poll(timeout=left):
        # a clock read for its end, timeout_for() only for a timer due sooner (the reaper's rarely is).
        wait = loop.wait
        until = None
        if timeout != 0:
            if timeout is not None:
                if timeout > 0:
                    until = _monotonic() + timeout
                elif timeout < 0:  # next_tick - monotonic() already past: poll(0), not epoll's "forever"
                    timeout = 0.0
                else:  # NaN, which epoll refused too; an end of NaN would stop every read
                    raise ValueError(f"poll() takes a timeout in seconds, not {timeout!r}")
            if loop.ready or loop.calls or loop.pending_reads:
                timeout = 0
            else:
                timers = loop.timers
                if (timers and (until is None or timers[0][0] < until)) or (
                    timeout is not None and timeout > LONGEST_WAIT
                ):
                    timeout = loop.timeout_for(timeout)
                if timeout is not None and timeout > 0:  # ends on time, not at epoll's next ms
                    wait = loop.wait_exactly
        if watch is not None:  # after the checks that raise: every entered() has its exited()
            watch.entered()
        try:
            events = wait(timeout)
        except BaseException as exc:  # Ctrl-C in a blocking wait too: every entered() has its exited()
            if watch is not None:
                watch.exited()
            if loop.stopped and isinstance(exc, (ValueError, OSError)):  # a handler closed the server;
                return 0  # the host's loop may poll once more
            raise
        work = events or loop.ready or loop.calls or loop.pending_reads
        if not work and not (loop.timers and loop.timers[0][0] <= _monotonic()):  # a timer may be due
            if gap_from is not None:  # poll(0) returns as it starts; a poll() that waited ends later
                loop.gap_from = now if timeout == 0 else _monotonic()  # pyright: ignore[reportPossiblyUnboundVariable]
            if watch is not None:
                watch.exited()
            return 0
        if self._polling:
            # A handler's poll() would answer the next request before its own (an idle one is harmless).
            raise ReactorMgmtError("poll() called from inside a command handler or callback")
        self._polling = _get_ident()
        if watch is not None:
            watch.handling()
        try:
            return loop.handle(events, budget, until)
        finally:
            self._polling = 0
            if gap_from is not None:
                loop.gap_from = _monotonic()
            if watch is not None:
                watch.exited()
            if self._close_owed is not None:  # a handler or callback closed the server
                if loop.integration is not None:  # our own thread or loop: detach() won't wait
                    loop.integration.detach()
                _tear_down(self)

    def serve_forever(self, poll_interval: Optional[float] = None) -> None:
        """Runs poll() until close(), for hosts with nothing else to do.

        Each poll() waits up to ``poll_interval`` seconds; None (the default) waits for activity
        or the next timer, since nothing else needs the thread. close() still ends the loop when
        called from a handler, a signal handler, or another thread through
        ``call_soon_threadsafe(server.close)``, which wakes the wait.
        """
        while not self._closed:
            self.poll(poll_interval)

    # ---- timers and cross-thread calls ----

    def call_later(self, delay: float, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]) -> TimerHandle:
        """Runs ``callback(*args)`` inside a poll() at least ``delay`` seconds from now; the
        handle's ``cancel()`` forgets it (see :class:`TimerHandle`)."""
        return self._loop.call_later_kept(delay, callback, *args)  # a relistening child keeps it

    def call_soon_threadsafe(self, callback: Callable[[], Any]) -> None:
        """Runs ``callback()`` in the next poll(), waking a blocked poll(); safe from any thread.
        After close() it does nothing, as no poll() will run it; callbacks still queued when close()
        is called never run either."""
        self._loop.call_soon_threadsafe(callback)

    def wake(self, conn: Connection) -> None:
        """Asks the server to service ``conn`` (a stream it is waiting on has news)."""
        self._loop.wake(conn, on_owner_thread=_get_ident() == self.owner_thread)

    # ---- integrations (_integrations.py), and the protocol they use ----

    def attach_asyncio(
        self, loop: Optional[asyncio.AbstractEventLoop] = None, *, budget: Optional[float] = None
    ) -> AsyncioHandle:
        """Serves from an asyncio event loop instead of explicit poll() calls.

        Watches :meth:`fileno` with ``loop.add_reader`` and arms a loop timer at
        :meth:`next_deadline`; handlers run on the loop's thread, which becomes
        :attr:`owner_thread`. ``loop`` defaults to the running loop. ``budget`` is passed to
        each poll(). Returns a handle whose ``detach()`` stops it; close() detaches too.
        """
        from ._integrations import attach_asyncio

        return attach_asyncio(self, loop, budget=budget)

    def start_thread(self, name: str = "reactor_mgmt", poll_interval: Optional[float] = None) -> ThreadHandle:
        """Polls in a daemon thread, for hosts with no main loop; returns a handle with
        ``stop(timeout=None)``. close() stops the thread too. Each poll() waits up to
        ``poll_interval`` seconds; None (the default) waits for activity or the next timer, and
        stop(), close() and call_soon_threadsafe() wake it.

        Handlers then run on that thread, concurrently with the rest of the program: guard
        state they share with it by a lock, or hand work over with a queue and answer with a
        :class:`Pending` that the other thread resolves through ``call_soon_threadsafe(lambda:
        pending.resolve(value))``. From other threads, call only call_soon_threadsafe() and
        wake(); everything else belongs to the polling thread while it runs. A handler that
        raises SystemExit or KeyboardInterrupt ends only that thread: it is logged, and the
        server is closed.
        """
        from ._integrations import start_thread

        return start_thread(self, name, poll_interval)

    integration = property(
        lambda self: self._loop.integration,
        lambda self, handle: setattr(self._loop, "integration", handle),
        doc="The attach_asyncio() or start_thread() handle driving this server, or None: it has "
        "kick() (work was queued outside poll()) and detach() (close() calls it).",
    )

    def ensure_waker(self) -> None:
        """Makes the cross-thread waker now, before another thread may need it."""
        self._loop.make_waker()

    # ---- shutdown ----

    def close(self, grace: float = 0.0) -> None:
        """Closes every connection and listener, and removes Unix socket files.

        A client with requests still queued, or waiting for a deferred or streaming reply,
        gets ``ERR server shutting down`` (JSON code ``shutdown``) first. Called from a handler
        (a ``shutdown`` command) or a callback, it takes effect when that poll() returns: the
        handler's own reply, and the replies before it, are sent; nothing else runs. A Pending
        already resolved is sent, not replaced.

        Output a client has not taken yet gets ``grace`` seconds to go (0 by default, so
        close() never waits). Whatever is still unsent then is dropped with a TCP reset, so
        the client sees an error rather than a reply that looks whole but was cut short; every
        other connection ends with a plain EOF.
        """
        if self._closed:
            return
        if os.getpid() != self._pid:  # a forked child, even one the fork hook missed
            _abandon(self)
            return
        self._close_grace = grace
        loop = self._loop
        if self._polling == _get_ident():
            _stop(self)
            # Nothing more runs and queued requests are dropped: each client owed a reply is told
            # at the tear-down, including those whose requests the rest of this poll reads (every
            # connection with an event is still read, no listener accepts). The handler returns.
            for conn in self._close_owed or ():
                conn.queue.clear()  # type: ignore[union-attr]  # owed a notice: its queue is not empty
            return
        if loop.integration is not None:  # before the selector closes under an event loop
            loop.integration.detach()
        _stop(self)
        _tear_down(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        where = ", ".join(format_address(a) for a in self.addresses) or "no listeners"
        return f"<Server {where} connections={len(self._loop.connections)}>"


# ---- the parts of Server's work kept out of the class: admission, building the I/O, and a fork ----


def _admit(
    server: Server,
    listener: Listener,
    sock: socket.SocketType,
    peer: Any,
    now: float,
    stop_at: Optional[float],
    read_now: bool,
) -> bool:
    """Makes the accepted socket a connection, or refuses it (False)."""
    sock.setblocking(False)
    loop = server._loop
    if len(loop.connections) >= server.max_connections:
        server.stats.refused += 1
        log.debug("refusing connection from %s: %d connections open", format_address(peer), len(loop.connections))
        if listener.tls is None:
            refuse(sock, b"ERR too many connections\n")
        else:  # the line inside TLS: as plaintext, a TLS client reports "wrong version number"
            from ._tls import refuse as refuse_over_tls

            refuse_over_tls(sock, listener, loop, b"ERR too many connections\n", server.tls_handshake_timeout)
        return False
    if listener.check_peer and not peer_allowed(sock, listener.allowed_uids):
        server.stats.refused += 1
        log.warning("refusing connection on %s: peer uid not allowed", listener.address)
        refuse(sock, b"ERR permission denied: peer uid not allowed\n")
        return False
    nodelay = listener.nodelay  # TCP: see Listener.nodelay
    if nodelay or (nodelay is None and listener.learn_nodelay(sock)):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server._next_id += 1
    if listener.tls is None:
        transport = Transport(sock, loop, server._limits, now)
    else:
        from ._tls import TlsTransport, wrap  # lazily: a plaintext server never imports ssl

        tls_sock = wrap(sock, listener.tls)
        if tls_sock is None:  # the client reset before the accept
            return False
        sock = tls_sock
        transport = TlsTransport(sock, loop, server._limits, now, listener.cert_levels, server.tls_handshake_timeout)
    conn = transport.conn = Connection(
        server, server._dispatcher, transport, listener, server._next_id, listener.rank, server._token is None
    )
    loop.connections[sock.fileno()] = conn
    server.stats.connections_total += 1
    # Only before the poll's end, so it never needs the read owed to a poll whose end has come
    # (Loop.read_owed): that read stays for the sockets with events.
    if read_now and (stop_at is None or loop.clock() < stop_at):
        owed = loop.read_owed
        # Before the poller knows the socket: a one-shot client (`echo status | nc -N`) is
        # answered and closed in this read's turn, and then costs no epoll_ctl ADD and DEL.
        try:
            transport.read_first(now, stop_at)
        finally:  # a handler's KeyboardInterrupt too: the connection is watched as any other
            loop.read_owed = owed
            if not transport.closed:
                _watch(server, conn, now)
        return True
    _watch(server, conn, now)
    return True


def _watch(server: Server, conn: Connection, now: float) -> None:
    """The poller watches a new connection from now on (update_interest registers it, unless
    the turn of its first read has), and so does the idle reaper."""
    conn.transport.update_interest()
    if server._reaper is not None:
        server._reaper.watch(conn.id, conn.transport, now + server.idle_timeout)


def _stop(server: Server) -> None:
    server._closed = server._loop.stopped = server._dispatcher.stopped = True
    server._close_owed = owed_a_notice(server._loop.connections.values())


def _tear_down(server: Server) -> None:
    """The end of close(): notices to the clients owed one, the grace for unsent output, then
    every connection, listener and the loop closed."""
    conns = list(server._loop.connections.values())
    # Owed at close(), and since: a handler closed the server, and the poll read more requests.
    owed = owed_a_notice(conns)
    owed.update(server._close_owed or {})
    server._close_owed = None
    server._dispatcher.say_goodbye(conns, owed)
    if server._close_grace > 0:
        drain([conn.transport for conn in conns], server._close_grace)
    for conn in conns:
        conn.transport.send_and_close()
    server._listening.close()
    server._loop.close()
    _unregister(server)


def _tools(server: Server) -> Toolkit:
    """The server's operator tools (_toolkit.Toolkit), made on first use."""
    if server._toolkit is None:
        from ._toolkit import Toolkit

        server._toolkit = Toolkit(server, server._dispatcher, server._loop)
    return server._toolkit


def _start_io(server: Server, address_file: Optional[str]) -> None:
    """The loop, the listeners and the reaper, wired to the dispatcher: at construction, and
    again in a forked child that relistens."""
    if address_file is not None:
        address_file = os.path.abspath(address_file.replace("{pid}", str(os.getpid())))  # see listen_unix
    server.address_file = address_file
    server._loop = loop = Loop(server.stats)
    dispatcher = server._dispatcher
    dispatcher.clock, dispatcher.call_later, dispatcher.schedule = loop.clock, loop.call_later, loop.schedule
    dispatcher.cancel_timer, dispatcher.stopped = loop.cancel_timer, False
    server._listening = Listeners(
        loop, functools.partial(_admit, server), address_file, warn_remote=not (server._token or server.allow_remote)
    )
    server._reaper = loop.reaper = IdleReaper(loop, server.idle_timeout) if server.idle_timeout else None


def _listen_as_asked(
    server: Server,
    host: Optional[str],
    port: Optional[int],
    unix: Optional[str],
    level: Optional[str],
    tls: Any,
    cert_levels: Any,
    backlog: Optional[int],
) -> None:
    if port is not None and host is not None:
        server.listen_tcp(host, port, level=level, tls=tls, cert_levels=cert_levels, backlog=backlog)
    if unix is not None:
        server.listen_unix(unix.replace("{pid}", str(os.getpid())), level=level, backlog=backlog)
    # Written once every listener asked for here is up: a second copy of a daemon that fails
    # on its Unix socket must not first replace the running copy's address file.
    server._listening.writing = True
    if server._discover is not None:  # one file per server in the discovery directory
        server._listening.on_publish = functools.partial(_publish_discovery, server)
    if server._listening.listeners:
        server._listening.publish(strict=True)


def _publish_discovery(server: Server) -> None:
    """Writes the server's discovery entry, or rewrites it with a listener added later."""
    from ._discovery import default_name, register

    assert server._discover is not None
    name, tls_on = server._discover
    server._discovery_path = register(
        name or default_name(),
        os.getpid(),
        server.addresses,
        server.stats.started,
        server.auth_required,
        tls=tls_on or any(listener.tls is not None for listener in server._listening.listeners),
        unique=True,  # another Server of this process may have the name
        path=server._discovery_path,  # this server's file once written
    )


def _abandon(server: Server) -> None:
    """In a forked child: this process's copies of the descriptors are closed, nothing is
    sent, shut down or unlinked (the parent still serves on them), and poll() raises."""
    if server._closed:
        return
    server._closed = server._dispatcher.stopped = True
    timers = server._loop.timers  # abandon() lets go of them: a relistening child keeps some
    server._loop.abandon(
        f"this server belongs to process {server._pid}; in this forked process "
        f"({os.getpid()}) it is closed: create a Server of its own here"
    )
    server._listening.abandon()
    if server._relisten is not None:  # the child gets a management socket of its own
        host, port, unix, level, tls, cert_levels, backlog, address_file = server._relisten
        server._pid = os.getpid()
        server._discovery_path = None  # the parent's file stays the parent's: the child writes its own
        if server._polling != _get_ident():  # another thread was in poll(): it is not in this process
            server._polling = 0  # (a handler that forked returns through that poll(), which resets it)
        old = server._loop
        try:
            _start_io(server, address_file)
            # The toolkit's watches on poll() (the stall watchdog, the gap) are the server's, not
            # the old loop's: the child's poll() keeps them (no watchdog is armed across the fork:
            # see _quiet_before_fork). Its stats are the server's already.
            server._loop.watch = old.watch
            server._loop.gap_from = None if old.gap_from is None else float("inf")
            # And the server's timers (Server.call_later: the host's, a timed `log level`'s
            # revert), due when they were; the connections' timers went with their connections.
            server._loop.adopt_timers(timers)
            _listen_as_asked(server, host, port, unix, level, tls, cert_levels, backlog)
        except Exception:  # a fixed port is the parent's: relisten wants port=0 or unix="...{pid}..."
            log.exception("after_fork='relisten': the forked child could not listen; its server stays closed")
            server._listening.close()
            return
        server._closed = False


_CLEARTEXT_AUTH = ("always", "loopback", "never")  # as _builtins.CLEARTEXT_AUTH, which a test ties to this
_SERVERS: Any = weakref.WeakSet()  # every live Server, for the fork hook


def _unset(*args: Any) -> Any:  # the dispatcher's loop callables, until _start_io sets them
    raise AssertionError("no loop yet")


def _abandon_after_fork() -> None:
    _REARM.clear()  # the child's watches start again with its own polls
    for server in list(_SERVERS):
        _abandon(server)


_REARM: List[Any] = []  # the watches _quiet_before_fork disarmed in a running poll()


def _quiet_before_fork() -> None:
    """faulthandler's watchdog thread does not survive a fork, but its lock does: a child that
    then arms or cancels it (its relistened poll(), or the parent's poll() that a handler forked
    in, returning) hangs for good. A watch on poll() (the toolkit's stall watchdog) cancels the
    watchdog at every poll() anyway: it is cancelled before the fork too, and re-armed in the
    parent for a poll() that was running handlers."""
    for server in list(_SERVERS):
        watch = None if server._closed else server._loop.watch
        if watch is not None:
            watch.exited()
            if server._polling:
                _REARM.append(watch)


def _rearm_after_fork() -> None:
    watches = _REARM[:]
    _REARM.clear()
    for watch in watches:
        watch.handling()


if hasattr(os, "register_at_fork"):  # POSIX: a child must not touch its parent's server
    os.register_at_fork(
        before=_quiet_before_fork, after_in_parent=_rearm_after_fork, after_in_child=_abandon_after_fork
    )


def _check_options(
    server: Server, cleartext_auth: str, after_fork: str, discover_as: Any, listen: Tuple[Any, ...]
) -> None:
    if cleartext_auth not in _CLEARTEXT_AUTH:  # where `auth TOKEN` may cross the wire in the clear
        raise ConfigError(f"cleartext_auth must be one of {', '.join(_CLEARTEXT_AUTH)}, not {cleartext_auth!r}")
    server.cleartext_auth = cleartext_auth
    # discover: a file in the discovery directory, under this name (None: the program's)
    server._discover = None if discover_as is False else (discover_as, listen[4] is not None)
    server._discovery_path = None
    if after_fork not in ("close", "relisten"):
        raise ConfigError(f"after_fork must be 'close' or 'relisten', not {after_fork!r}")
    # With after_fork="relisten", a forked child listens again as the constructor did, with
    # "{pid}" in unix= and address_file= replaced by its own pid.
    server._relisten = listen if after_fork == "relisten" else None


def _same(secret: str, candidate: str) -> bool:
    import hmac  # lazily: only servers with a token pay its import

    # surrogatepass: a JSON request can carry a lone surrogate, which must fail, not raise
    return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), secret.encode("utf-8", "surrogatepass"))


def _unregister(server: Server) -> None:
    if server._discovery_path is not None:
        from ._discovery import unregister

        unregister(server._discovery_path)
        server._discovery_path = None


def _load_token(token: Optional[str], env: Optional[str], path: Optional[str]) -> Optional[str]:
    if token is None and env is not None:
        token = os.environ.get(env) or None
    if token is None and path is not None:
        with open(path) as handle:
            token = handle.read().strip() or None
    if token is None and (env is not None or path is not None):
        # Asked for a token and given none: serving without one would open every command to
        # whoever connects, silently (a variable not exported, a file emptied by a deploy).
        where = " or ".join(
            ([f"the environment variable {env} is unset or empty"] if env is not None else [])
            + ([f"the token file {path} is empty"] if path is not None else [])
        )
        raise ConfigError(f"no token: {where}")
    if token is not None and not token.strip():
        raise ConfigError("the token is empty")
    return token
