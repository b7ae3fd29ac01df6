# The reactor: a selectors loop that the host drives by calling poll() from its own main loop.
#
# It moves bytes between sockets and the sans-I/O core (_protocol), and hands decoded requests to
# the dispatcher (_dispatch, mixed into Server), which runs them through the command layer
# (_commands) and writes the replies back through _write. The rules that shape it:
#   * poll(0) on an idle server is one non-blocking kernel call, plus a clock read when a timer
#     is armed: no per-connection work happens unless the kernel, a timer or the ready queue
#     says so;
#   * work per poll() is bounded: accepts per listener, one recv per connection, K requests per
#     connection, and an optional time budget; what is left waits in the ready queue;
#   * a connection reads only when its request queue is empty and its output is below the
#     high-water mark, so neither buffer can grow without a bound; a reply larger than
#     max_output gets an error line in its place (_too_large), so unsent output stays under
#     high_water + max_output, and output written past that any other way cuts the client off
#     with a notice (_cut_off), never a bare EOF;
#   * every reply is written in request order; a Pending or Stream reply holds back the
#     requests behind it rather than letting their output overtake it;
#   * EVENT_WRITE is registered only while output is pending;
#   * a final close sends a FIN and drops the input still waiting, since closing over unread
#     input resets the connection and can destroy replies the client has not read; with output
#     still unsent it resets on purpose, so a cut reply never looks whole (_hang_up);
#   * a request that arrives alone is answered straight from the read (_answer_now), without
#     decoding it when the same bytes were that same cached request before, and,
#     when poll() has no budget, the replies to a pipelined burst are held (up to 64 KiB) while
#     more of it waits for the next tick, so a burst costs one send per read, not one per tick.
from __future__ import annotations

import errno
import heapq
import os
import selectors
import socket
import stat
import sys
import threading
import time
from collections import deque

from ._commands import LEVELS, Command, Pending, Registry, Stream, level_rank
from ._connection import Connection
from ._dispatch import Dispatcher, _drop_stopping_line, _err_line, _error_reply, _reply_id_of
from ._errors import ConfigError, ReactorMgmtError
from ._log import Throttle, log
from ._protocol import DEFAULT_MAX_LINE, RequestDecoder

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# poll() reads events in epoll's bits on every platform (see _make_wait): IN and OUT are
# select.EPOLLIN and EPOLLOUT, spelled as numbers because select has no EPOLL* off Linux. HUP and
# ERR count as both readable and writable, as in selectors: recv/send then report the error.
_IN, _OUT = 0x001, 0x004
_READABLE, _WRITABLE = ~_OUT, ~_IN
_monotonic = time.monotonic
_get_ident = threading.get_ident

_LINGER_ZERO = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {on, 0 s}: close() resets
_EPHEMERAL_TRIES = 8  # port 0 on a host with several addresses: fresh ports to try for all of them
_FD_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
# One recv is the one piece of a poll() that its budget cannot split: decoding 64 KiB of tiny
# hostile lines (32K lines of invalid UTF-8) took 34 ms, and 16 KiB of pipelined pings took up
# to 1.4 ms on a loaded 2-core machine, which pushed poll(budget=1 ms) past 3 ms. At 8 KiB the
# extra syscalls cost a few percent of a pipelined flood, whose time goes to decoding anyway.
_RECV_SIZE = 8192
_HOLD_OUTPUT = 65536  # replies held back while more pipelined requests wait (see _service)
_LINGER_SECONDS = 2.0  # after our last reply, how long we drain a client that keeps sending
_ACCEPTS_START, _ACCEPTS_STEP, _ACCEPTS_MAX = 16, 16, 512
# epoll_wait takes whole milliseconds in a C int, which a wait of 24.8 days overflows (a 30-day
# idle_timeout, or `watch 2200000 ping` from any client, made poll() raise); waking once a day
# to find nothing due costs nothing.
_LONGEST_WAIT = 86400.0
_POLL_WINDOW = 1024
_READ_CACHE_KEY_MAX = 256  # longer reads are not looked up: hashing 8 KiB costs more than it saves
_WAKER = object()  # the owner of the cross-thread waker's socket in Server._owners


class Listener:
    """One listening socket, with the maximum level its connections get."""

    __slots__ = ("sock", "address", "path", "file_id", "rank", "allowed_uids", "check_peer", "accepts",
                 "paused_until")

    def __init__(self, sock: socket.socket, address: Any, rank: int, path: Optional[str] = None) -> None:
        self.sock = sock
        self.address = address
        self.path = path
        self.file_id = _file_id(path) if path is not None else None  # what close() may remove
        self.rank = rank
        self.check_peer = False
        self.allowed_uids: frozenset = frozenset()
        self.accepts = _ACCEPTS_START  # adapts like Twisted's numberAccepts
        self.paused_until = 0.0

    @property
    def level(self) -> str:
        return LEVELS[self.rank]


class Stats:
    """Counters for the `stats` command; plain attributes so the hot path is cheap."""

    __slots__ = ("started", "connections_total", "commands", "errors", "bytes_in", "bytes_out",
                 "busy_polls", "durations", "refused", "http_closed")

    def __init__(self) -> None:
        self.started = time.time()
        self.connections_total = 0
        self.commands = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.busy_polls = 0
        # The last _POLL_WINDOW busy polls' durations; poll() appends one per busy poll.
        self.durations: Deque[float] = deque(maxlen=_POLL_WINDOW)
        self.refused = 0
        self.http_closed = 0


if TYPE_CHECKING:
    Address = Union[str, Tuple[str, int]]


class Server(Dispatcher):
    """A management socket served from the host's own loop.

    Create it, register commands, and call :meth:`poll` once per iteration of your main loop.
    Handlers run inside ``poll()`` on the caller's thread. Every limit below has a safe default;
    see the README's Security section.
    """

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
    ) -> None:
        if not 0 < high_water <= max_output:
            raise ConfigError("need 0 < high_water <= max_output")
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_line = max_line
        self.high_water = high_water
        self.low_water = low_water if low_water is not None else max(1, high_water // 4)
        if not 0 < self.low_water <= high_water:  # low_water 0 would never resume a paused client
            raise ConfigError("need 0 < low_water <= high_water")
        self.max_output = max_output
        self.max_commands_per_tick = max_commands_per_tick
        self.pending_timeout = pending_timeout
        self.allow_remote = allow_remote
        self.address_file = None if address_file is None else os.path.abspath(address_file)  # see listen_unix
        self._token = _load_token(token, token_env, token_file)
        self.stats = Stats()
        self.registry = Registry(Connection)
        self.fallback: Optional[Callable[[str, List[str], Connection], Any]] = None
        self.on_error: Optional[Callable[[BaseException], Any]] = None
        self._selector = selectors.DefaultSelector()
        self._owners: Dict[int, Any] = {}  # fd -> Connection, Listener or _WAKER
        self._wait = self._make_wait()
        self._last_answer: Tuple[Any, bytes] = (None, b"")  # see Dispatcher._answer_now
        self._listeners: List[Listener] = []
        self._connections: Dict[int, Connection] = {}
        self._ready: Deque[Connection] = deque()
        self._timers: List[tuple] = []
        self._idle_heap: List[Tuple[float, int, Connection]] = []
        self._idle_timer_armed = False
        self._timer_seq = 0
        self._next_id = 0
        self._closed = False
        self._calls: Deque[Callable[[], Any]] = deque()
        self._waker: Optional[Tuple[socket.socket, socket.socket]] = None
        self._reserve_fd: Optional[int] = _open_reserve_fd()
        self._fd_exhausted_logged = False
        self._http_log = Throttle()
        # The thread inside poll()'s handling, or 0: a nested poll() is refused, and a close()
        # from that thread (a handler's) is finished when the poll() returns.
        self._polling = 0
        # Set when a handler or callback closes the server: poll() finishes the close on its way
        # out. Maps each connection owed a shutdown notice (requests queued or a reply waiting)
        # to the notice's reply id.
        self._close_owed: Optional[Dict[Connection, Any]] = None
        self._close_grace = 0.0
        self._batch_conn: Optional[Connection] = None  # see Dispatcher._release_batch
        self._batch_replies: List[str] = []
        self._too_large_log = Throttle()
        self._default_level = level
        # The thread that calls poll(); wake() from any other thread goes through the waker.
        self.owner_thread = threading.get_ident()
        # attach_asyncio()/start_thread() handle: kicked when work is queued outside poll(), and
        # detached by close() before the selector goes (see _integrations.py).
        self._integration: Any = None
        self.log_tail_enabled = log_tail
        if builtins:
            from ._builtins import install_builtins

            install_builtins(self)
        # Written once every listener asked for here is up: a second copy of a daemon that fails
        # on its Unix socket must not first replace the running copy's address file.
        self._address_file_id: Optional[Tuple[int, int]] = None
        self._writes_address_file = False
        try:
            if port is not None and host is not None:
                self.listen_tcp(host, port, level=level)
            if unix is not None:
                self.listen_unix(unix, level=level)
        except BaseException:
            self.close()
            raise
        self._writes_address_file = True
        if self._listeners:
            self._write_address_file()

    # ---- configuration ----

    @property
    def auth_required(self) -> bool:
        return self._token is not None

    def check_token(self, candidate: str) -> bool:
        import hmac  # lazily: only servers with a token pay its import

        if self._token is None:
            return True
        # surrogatepass: a JSON request can carry a lone surrogate, which must fail, not raise
        return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), self._token.encode())

    def command(self, fn: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None,
                level: str = "user", hidden: bool = False, help: Optional[str] = None,
                replace: bool = False) -> Any:
        """Registers a handler; use as ``@server.command`` or ``@server.command(name="show x")``.

        The command name defaults to the function name, with underscores read as spaces, so
        ``def show_stats()`` answers ``show stats``. A name already registered by the host raises
        ConfigError unless ``replace`` is true; a builtin's name is simply taken over.
        """

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            command_name = name if name is not None else function.__name__.replace("_", " ")
            self.add_command(command_name, function, help=help, level=level, hidden=hidden, replace=replace)
            return function

        if fn is not None:
            return register(fn)
        return register

    def add_command(self, name: str, fn: Callable[..., Any], help: Optional[str] = None, *,
                    level: str = "user", hidden: bool = False, replace: bool = False) -> Command:
        return self.registry.add(name, fn, help=help, level=level, hidden=hidden, replace=replace)

    def remove_command(self, name: str) -> None:
        self.registry.remove(name)

    def add_commands(self, obj: Any, *, prefix: str = "", level: Optional[str] = None,
                     replace: bool = False) -> List[Command]:
        """Registers every public method of ``obj`` (names starting with ``_`` are skipped); for a
        module, every public function defined in it.

        A method can set its own options with the ``@command_options`` decorator. As with
        add_command(), a name already registered by the host raises ConfigError unless
        ``replace`` is true.
        """
        import inspect  # lazily: registration only, and it is slow to import

        added = []
        for attribute in sorted(dir(obj)):
            if attribute.startswith("_"):
                continue
            # Methods only: reading a property would run its code, and a nested class or a
            # callable attribute is not a command.
            if isinstance(inspect.getattr_static(obj, attribute, None), property):
                continue
            method = getattr(obj, attribute)
            if not (inspect.ismethod(method) or inspect.isfunction(method)):
                continue
            if inspect.ismodule(obj) and getattr(method, "__module__", None) != obj.__name__:
                continue  # a function the module imported is not one of its commands
            options = dict(getattr(method, "_reactor_mgmt_options", {}))
            command_name = options.pop("name", attribute.replace("_", " "))
            if level is not None:
                options.setdefault("level", level)
            if replace:
                options.setdefault("replace", True)
            added.append(self.add_command(f"{prefix} {command_name}".strip(), method, **options))
        return added

    # ---- listeners ----

    def listen_tcp(self, host: str = "127.0.0.1", port: int = 8123, *, level: Optional[str] = None) -> List[Address]:
        """Listens on every address ``host`` resolves to; port 0 picks one free port for all."""
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:  # getaddrinfo wraps 70000 to 4464
            raise ConfigError(f"port must be an int from 0 to 65535, not {port!r}")
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        # All or nothing: the sockets are bound first and registered only once every address
        # of host is. Port 0 picks its port on the first address; should another program hold
        # that port on a later address (::1), the whole set is tried again on a new one.
        for attempt in range(1 if port else _EPHEMERAL_TRIES):
            socks: List[socket.socket] = []
            try:
                for family, kind, proto, _, sockaddr in infos:
                    sock = socket.socket(family, kind, proto)
                    socks.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if port == 0 and len(socks) > 1:  # one ephemeral port shared by all addresses
                        sockaddr = (sockaddr[0], socks[0].getsockname()[1]) + tuple(sockaddr[2:])
                    sock.bind(sockaddr)
                    sock.listen(128)
            except BaseException as exc:
                for sock in socks:
                    sock.close()
                if (isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE and len(socks) > 1
                        and attempt + 1 < (1 if port else _EPHEMERAL_TRIES)):
                    continue
                raise
            break
        bound: List[Address] = []
        for sock in socks:
            address = sock.getsockname()[:2]
            self._add_listener(Listener(sock, address, level_rank(level or self._default_level or "operator")))
            bound.append(address)
            self._warn_if_remote(address[0])
        self._write_address_file()
        return bound

    def listen_unix(self, path: str, *, mode: int = 0o600, group: Union[int, str, None] = None,
                    level: Optional[str] = None, check_peer: bool = False,
                    allowed_uids: Sequence[int] = ()) -> str:
        """Listens on a Unix socket created with ``mode`` (0600 by default).

        A stale socket left by a dead process is replaced; a live one, a symlink or any file
        that is not a socket is refused. With ``check_peer`` only the same uid, root and
        ``allowed_uids`` may connect (SO_PEERCRED).
        """
        path = os.fspath(path)
        if path.startswith("\0"):
            raise ConfigError("abstract Unix sockets are not supported: with no file there is no mode, so "
                              "any local user could connect; use a path in a directory only you can reach")
        _clear_unix_path(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _bind_with_mode(sock, path, mode)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        try:
            if group is not None:
                gid = group if isinstance(group, int) else _gid_of(group)
                os.chown(path, -1, gid, follow_symlinks=False)
            os.chmod(path, mode) if os.stat(path, follow_symlinks=False).st_mode & 0o7777 != mode else None
        except BaseException:
            sock.close()
            os.unlink(path)
            raise
        # The file is removed at close() by its absolute path: the host may chdir meanwhile.
        listener = Listener(sock, path, level_rank(level or self._default_level or "admin"), path=os.path.abspath(path))
        listener.check_peer = check_peer or bool(allowed_uids)
        listener.allowed_uids = frozenset(allowed_uids)
        self._add_listener(listener)
        self._write_address_file()
        return path

    def listen_socket(self, sock: socket.socket, *, level: Optional[str] = None) -> Address:
        """Adopts a socket that is already bound and listening (systemd activation, or a
        privileged bind made before dropping root)."""
        try:
            accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError as exc:
            raise ConfigError(f"not a socket: {exc}") from None
        if not accepting:
            raise ConfigError("the socket is not listening; call listen() first")
        address = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            default = "admin"
            address = address if isinstance(address, str) else address.decode(errors="replace")
        else:
            default = "operator"
            address = address[:2]
            self._warn_if_remote(address[0])
        self._add_listener(Listener(sock, address, level_rank(level or self._default_level or default)))
        self._write_address_file()
        return address

    def listen_fd(self, fd: int, *, level: Optional[str] = None) -> Address:
        """Adopts a listening descriptor, such as fd 3 from systemd socket activation."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ConfigError(f"fd {fd} is not a socket: {exc}") from None
        try:
            return self.listen_socket(sock, level=level)
        except BaseException:
            sock.detach()  # a refused descriptor stays the caller's, and open
            raise

    def _add_listener(self, listener: Listener) -> None:
        listener.sock.setblocking(False)
        self._register(listener.sock, _READ, listener)
        self._listeners.append(listener)
        log.info("listening on %s", _format_address(listener.address))

    def _warn_if_remote(self, host: str) -> None:
        if self._token is None and not self.allow_remote and not _is_loopback(host):
            log.warning("listening on non-loopback address %s without a token: anyone who can reach it "
                        "can run commands (set token= or allow_remote=True to silence this)", host)

    def _write_address_file(self) -> None:
        if self.address_file is None or not self._writes_address_file:
            return
        temporary = f"{self.address_file}.tmp{os.getpid()}"
        with open(temporary, "w") as handle:
            handle.write("".join(_format_address(a) + "\n" for a in self.addresses))
        os.replace(temporary, self.address_file)
        self._address_file_id = _file_id(self.address_file)

    @property
    def addresses(self) -> List[Address]:
        """Bound addresses: ``(host, port)`` for TCP, the path for Unix sockets."""
        return [listener.address for listener in self._listeners]

    @property
    def port(self) -> Optional[int]:
        """The first TCP port, handy after binding port 0."""
        for listener in self._listeners:
            if isinstance(listener.address, tuple):
                return listener.address[1]
        return None

    @property
    def connections(self) -> List[Connection]:
        return list(self._connections.values())

    # ---- the tick ----

    def fileno(self) -> int:
        """A descriptor that becomes readable when the server has socket work (epoll/kqueue).

        Queued work that needs no socket event (the rest of a pipelined batch, timers) does not
        show here: call poll() at least once per loop iteration, or see :attr:`busy`.
        """
        return self._selector.fileno()

    @property
    def busy(self) -> bool:
        """True when poll() has work left over that does not wait for a socket event."""
        return bool(self._ready or self._calls)

    def next_deadline(self) -> Optional[float]:
        """The time.monotonic() at which the next timer (idle reap, pending timeout) fires."""
        return self._timers[0][0] if self._timers else None

    def poll(self, timeout: Optional[float] = 0.0, budget: Optional[float] = None) -> int:
        """Handles ready events and returns how many it handled.

        ``timeout=0`` never blocks; a positive timeout waits at most that long for activity;
        ``None`` waits until there is some. ``budget`` caps the seconds spent running commands
        in this call; whatever is left resumes on the next call. Called from inside a handler,
        it raises ReactorMgmtError rather than answer later requests before that handler's own.
        """
        if timeout == 0 or self._ready or self._calls:
            # The idle tick, which a host pays on every loop iteration: one non-blocking kernel
            # call, and a clock read only when a timer is armed.
            timeout = 0
        else:
            if self._timers:
                wait = max(0.0, self._timers[0][0] - _monotonic())
                timeout = wait if timeout is None else min(timeout, wait)
            if timeout is not None and timeout > _LONGEST_WAIT:
                timeout = _LONGEST_WAIT
        try:
            events = self._wait(timeout)
        except (ValueError, OSError):
            if self._closed:  # a handler closed the server; the host's loop may poll once more
                return 0
            raise
        if not events and not self._ready and not self._calls and not (
                # a timer may have come due, or come due while we slept
                self._timers and self._timers[0][0] <= _monotonic()):
            return 0
        if self._polling:
            # A handler that polls would have the next request read and answered before its own
            # reply: replies out of order. An idle nested poll above is harmless and allowed.
            raise ReactorMgmtError("poll() called from inside a command handler or callback")
        self._polling = _get_ident()
        try:
            return self._handle(events, budget)
        finally:
            self._polling = 0
            if self._close_owed is not None:  # a handler or callback closed the server
                if self._integration is not None:  # our own thread or loop: detach() won't wait
                    self._integration.detach()
                self._tear_down()

    def _handle(self, events: List[Tuple[int, int]], budget: Optional[float]) -> int:
        start = now = _monotonic()  # after the wait: a poll's recorded duration is its work
        handled = len(events)
        owners = self._owners
        for fd, event in events:
            # Looked up here, not when the events were read: a handler run for an earlier event
            # may have closed this connection, and closing removes its fd from owners, so a
            # closed connection is never found. (Should an accept in this same poll reuse the fd,
            # the new connection gets the stale event: a non-blocking recv shrugs it off.)
            owner = owners.get(fd)
            if owner.__class__ is Connection:
                # Past the budget, reads wait for the next poll (the event is level-triggered):
                # decoding one full recv of tiny commands costs milliseconds. A connection still
                # holding requests is not read either: reading more would let its queue grow by a
                # recv per poll (the event fires again once the queue is empty). A running
                # subscription is the exception, since any input stops it.
                if event & _READABLE and (not owner.queue or _subscribed(owner)) and (
                        budget is None or _monotonic() - start < budget):
                    self._read(owner, now)
                if event & _WRITABLE and not owner.closed:
                    owner.last_active = now  # draining a long reply is not idleness
                    self._flush(owner)
                    self._schedule(owner)
            elif owner.__class__ is Listener:
                self._accept(owner, now)
            elif owner is _WAKER:
                self._drain_waker()
        while self._calls and not self._closed:  # a callback may close the server: then nothing runs
            handled += 1
            self._calls.popleft()()
        if self._timers and self._timers[0][0] <= now and not self._closed:
            handled += self._run_timers(now)
        if self._ready:  # empty when every request was answered straight from _read
            handled += self._run_ready(None if budget is None else start + budget)
        stats = self.stats
        stats.busy_polls += 1
        stats.durations.append(_monotonic() - start)
        return handled

    def _make_wait(self) -> Callable[[Optional[float]], List[Tuple[int, int]]]:
        """Returns wait(timeout) -> [(fd, events)], the kernel call poll() makes, events in
        epoll's bits (_IN, _OUT).

        selectors.EpollSelector.select() spends more time wrapping results in SelectorKeys than
        epoll_wait() itself takes, and an idle poll(0) is nothing but that call. So on epoll we
        let the selector do registration (its public API) and call the kernel poller it wraps
        directly: its (fd, events) pairs are what poll() reads, mapped to owners by our own
        dict. (epoll.poll already rounds a timeout up to whole milliseconds, so it never wakes
        early and spins.) Elsewhere the selector's results are translated to the same shape.
        """
        selector = self._selector
        raw = getattr(selector, "_selector", None)
        if isinstance(selector, getattr(selectors, "EpollSelector", ())) and hasattr(raw, "poll"):
            return raw.poll

        def wait_generic(timeout: Optional[float]) -> List[Tuple[int, int]]:
            return [(key.fd, (_IN if mask & _READ else 0) | (_OUT if mask & _WRITE else 0))
                    for key, mask in selector.select(timeout)]

        return wait_generic

    def _register(self, sock: socket.socket, mask: int, owner: Any) -> None:
        self._selector.register(sock, mask, owner)
        self._owners[sock.fileno()] = owner

    def _modify(self, sock: socket.socket, mask: int, owner: Any) -> None:
        self._selector.modify(sock, mask, owner)

    def _unregister(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        self._owners.pop(sock.fileno(), None)

    def serve_forever(self, poll_interval: Optional[float] = None) -> None:
        """Runs poll() until close(), for hosts with nothing else to do.

        Each poll() waits up to ``poll_interval`` seconds; None (the default) waits for activity
        or the next timer, since nothing else needs the thread. close() still ends the loop when
        called from a handler, a signal handler, or another thread through
        ``call_soon_threadsafe(server.close)``, which wakes the wait.
        """
        while not self._closed:
            self.poll(poll_interval)

    def _run_ready(self, stop_at: Optional[float]) -> int:
        ready = self._ready
        done = 0
        for _ in range(len(ready)):  # one pass: a connection rescheduled now waits a tick
            conn = ready.popleft()
            conn.scheduled = False
            if conn.closed or self._closed:  # closed by a handler: nothing more runs
                continue
            try:
                done += self._service(conn, stop_at)
            except BaseException:  # KeyboardInterrupt from a handler: finish this queue later
                self._schedule(conn)
                raise
            if stop_at is not None and _monotonic() >= stop_at:
                break
        return done

    # ---- per-connection work ----

    def _service(self, conn: Connection, stop_at: Optional[float]) -> int:
        """Runs queued requests and pumps a stream, within this tick's limits, then flushes."""
        ran = 0
        queue = conn.queue
        limit = self.max_commands_per_tick
        high_water = self.high_water
        while not conn.closed and not self._closed:  # a handler may close the server: then stop
            if conn.waiting is not None:
                if not self._advance_waiting(conn, stop_at):
                    break
                continue
            if not queue or conn.closing:
                break
            if conn.out_size >= high_water:
                conn.paused = True
                break
            # The budget is checked before every command after the first: a clock read is cheap
            # next to a handler, and checking every 16th overran a 2 ms budget by 16 slow handlers.
            if ran >= limit or (stop_at is not None and ran and _monotonic() >= stop_at):
                self._schedule(conn)  # more next tick
                break
            # Runs of plain requests go through the batch fast path; anything else, one at a
            # time, through the general one.
            done = self._run_plain_batch(conn, queue, limit - ran, stop_at)
            if done:
                ran += done
                continue
            ran += 1
            self._execute(conn, queue.popleft())
        if conn.closed or self._closed:  # closed by a handler: the tear-down sends the rest
            return ran
        if queue is not None and not queue:
            conn.queue = None  # an empty deque still holds a 600-byte block: idle clients pay nothing
        if conn.eof and not queue and conn.waiting is None:
            conn.closing = True
        if conn.out_size >= high_water:
            conn.paused = True  # an empty queue must not let one more read in above high water
        if (queue and conn.scheduled and stop_at is None and conn.out_size < _HOLD_OUTPUT
                and conn.waiting is None and not conn.closing):
            # Pipelined requests are still queued for the next tick: hold these replies and
            # send them with that tick's, so a read of 1,600 pings costs one send, not seven (a
            # send to loopback does the receiver's TCP work too). The hold lasts until the queue
            # empties, which one read's worth of requests does within a few back-to-back ticks.
            # Not under a poll budget: a host that budgets its ticks (a game loop) may be a frame
            # away from the next one, so its replies go out every tick.
            return ran
        self._flush(conn)
        if not conn.closed:
            self._update_interest(conn)
        return ran

    def _read(self, conn: Connection, now: float) -> None:
        if conn.paused:  # above the high-water mark: the reply backlog must drain first
            return
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(conn, exc)
            return
        conn.last_active = now
        if conn.closing:  # lingering after our last reply: discard until the peer's EOF
            if not data:
                self._close_now(conn)
            return
        decoder = conn.decoder
        if decoder is None:
            decoder = conn.decoder = RequestDecoder(self.max_line)
        if data:
            self.stats.bytes_in += len(data)
            # A client that waits for each reply sends the same few requests over and over
            # (`ping`, `status`). While nothing is buffered on either side, feed() is a function
            # of the read alone, so a read that was one cached request before is that request
            # again: answered without decoding it. Half the Python of a round trip is the decoder.
            memo = (decoder._at_rest and conn.queue is None and conn.out is None and conn.waiting is None
                    and len(data) <= _READ_CACHE_KEY_MAX)
            if memo:
                entry = self.registry.read_cache.get(data)
                if entry is not None and self._answer_now(conn, entry):
                    return
            items = decoder.feed(data)
        else:
            memo = False
            conn.eof = True
            items = decoder.feed_eof()
        if decoder.keep_blank:  # a subscription is running: any line, even a blank one, ends it
            if items or conn.eof:
                self._end_stream(conn)
                if items:
                    _drop_stopping_line(items)
                if "" in items:
                    items = [item for item in items if item != ""]
        if items:
            if len(items) == 1 and conn.queue is None and conn.out is None and conn.waiting is None:
                entry = self.registry.line_cache.get(items[0])
                if entry is not None and self._answer_now(conn, entry):
                    if memo and decoder._at_rest:  # left at rest too: the next such read may skip it
                        self.registry.remember(self.registry.read_cache, data, entry)
                    return
            if conn.queue is None:
                conn.queue = deque(items)
            else:
                conn.queue.extend(items)
        self._schedule(conn)

    # ---- output ----

    def _write(self, conn: Connection, data: bytes) -> None:
        if conn.closed or conn.cut_off:
            return
        if conn.out is None:
            conn.out = [data]
        else:
            conn.out.append(data)
        conn.out_size += len(data)
        if conn.out_size > self.max_output + self.high_water:
            self._cut_off(conn)

    def _cut_off(self, conn: Connection) -> None:
        """Unsent output passed high_water + max_output: a handler's conn.write() outran its
        client (replies cannot: commands run only below high_water, and a reply larger than
        max_output gets an error in its place, see _too_large). The output not yet begun is
        dropped at once, so its memory is freed at once, and the client is told why before the
        connection closes, rather than meeting a bare EOF."""
        cap = self.max_output + self.high_water
        log.warning("connection #%d from %s has %d bytes of unsent output (cap %d): disconnecting",
                    conn.id, _format_address(conn.peer), conn.out_size, cap)
        notice = _err_line(f"too much unsent output ({conn.out_size} bytes, cap {cap}): closing")
        head = conn.out[0]
        if head.__class__ is memoryview:  # part-sent: the client must get the rest of its line
            sent = len(head.obj) - len(head)
            end = head.obj.find(b"\n", sent) + 1 or len(head.obj)
            notice = bytes(head[:end - sent]) + notice
        conn.out = [notice]
        conn.out_size = len(notice)
        conn.cut_off = True  # later writes, such as the rest of the handler's, are dropped
        conn.closing = True
        if conn.waiting is not None:
            # A stream would otherwise pump on for good: its dropped items never fill the buffer
            # that paces it. (Called from inside _pump_stream, the closed generator just ends it.)
            self._cancel_waiting(conn)

    def _flush(self, conn: Connection) -> None:
        out = conn.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._drop(conn, exc)
                return
            self.stats.bytes_out += sent
            if sent == len(data):
                conn.out = None
                conn.out_size = 0
            else:
                conn.out = [memoryview(data)[sent:]]
                conn.out_size = len(data) - sent
            if conn.paused and conn.out_size < self.low_water:
                conn.paused = False
                self._schedule(conn)
            elif conn.waiting.__class__ is Stream and conn.out_size < self.low_water:
                # A stream pauses at the low-water mark; if the kernel took everything, no write
                # event will come to resume it, so resume it next tick.
                self._schedule(conn)
        if conn.closing and conn.out is None:
            self._finish_close(conn)

    def _update_interest(self, conn: Connection) -> None:
        want = 0
        if conn.out is not None:
            want = _WRITE
        if (conn.closing and conn.out is None) or (
            not conn.eof and not conn.paused and not conn.closing and (not conn.queue or _subscribed(conn))
        ):
            want |= _READ
        if want == conn.mask:
            return
        if want == 0:
            self._unregister(conn.sock)
        elif conn.mask == 0:
            self._register(conn.sock, want, conn)
        else:
            self._modify(conn.sock, want, conn)
        conn.mask = want

    def _schedule(self, conn: Connection) -> None:
        if not conn.scheduled and not conn.closed:
            conn.scheduled = True
            self._ready.append(conn)

    # ---- connection lifecycle ----

    def _accept(self, listener: Listener, now: float) -> None:
        if listener.paused_until:
            return
        limit = listener.accepts
        accepted = 0
        while accepted < limit:
            try:
                sock, peer = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _FD_EXHAUSTED:
                    self._on_fd_exhaustion(listener, exc)
                    break
                log.debug("accept failed: %s", exc)
                accepted += 1  # a failure that repeats must not spin inside one tick
                continue
            accepted += 1
            if self._fd_exhausted_logged:
                self._fd_exhausted_logged = False
                log.warning("file descriptors available again; accepting connections")
            self._admit(listener, sock, peer, now)
        # Like Twisted: accept more per tick while the backlog keeps us saturated, fewer after.
        if accepted == limit:
            listener.accepts = min(limit + _ACCEPTS_STEP, _ACCEPTS_MAX)
        else:
            listener.accepts = max(_ACCEPTS_START, accepted)

    def _admit(self, listener: Listener, sock: socket.socket, peer: Any, now: float) -> None:
        sock.setblocking(False)
        if len(self._connections) >= self.max_connections:
            self.stats.refused += 1
            log.debug("refusing connection from %s: %d connections open", _format_address(peer),
                      len(self._connections))
            _send_and_close(sock, b"ERR too many connections\n")
            return
        if listener.check_peer and not _peer_allowed(sock, listener.allowed_uids):
            self.stats.refused += 1
            log.warning("refusing connection on %s: peer uid not allowed", listener.address)
            _send_and_close(sock, b"ERR permission denied: peer uid not allowed\n")
            return
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._next_id += 1
        conn = Connection(self, sock, listener, self._next_id, now)
        self._connections[sock.fileno()] = conn
        self._register(sock, _READ, conn)
        conn.mask = _READ
        self.stats.connections_total += 1
        if self.idle_timeout:
            self._watch_idle(conn, now + self.idle_timeout)

    # Idle reaping has a heap of its own, of (deadline, id, connection), and one timer in the
    # main heap for its earliest entry: a general timer entry per connection (callback, args
    # tuple) would cost about 150 more bytes per idle connection. A deadline is checked against
    # last_active only when it comes due, so traffic costs nothing here.

    def _watch_idle(self, conn: Connection, deadline: float) -> None:
        heapq.heappush(self._idle_heap, (deadline, conn.id, conn))
        if not self._idle_timer_armed:
            self._idle_timer_armed = True
            self.call_later(max(0.0, deadline - _monotonic()), self._reap_idle)

    def _reap_idle(self) -> None:
        self._idle_timer_armed = False
        heap = self._idle_heap
        now = _monotonic()
        limit = self.idle_timeout
        while heap and heap[0][0] <= now:
            conn = heapq.heappop(heap)[2]
            if conn.closed:
                continue
            idle_for = now - conn.last_active
            # Waiting on a Pending or a Stream with nothing unsent is the host's time, not the
            # client's (a quiet `log tail`). Unsent output that the client has not drained for a
            # whole period (a write event refreshes last_active) is a stalled client: reaped.
            busy = conn.waiting is not None and conn.out is None
            if idle_for >= limit and not busy and conn.out is not None:
                # Write events are sparse while the kernel holds megabytes: whether the client
                # drained anything shows in whether the kernel takes more now.
                unsent = conn.out_size
                self._flush(conn)
                if conn.closed:
                    continue
                if conn.out_size < unsent:
                    conn.last_active = now
                    idle_for = 0.0
            if idle_for >= limit and not busy:
                log.debug("closing connection #%d: idle for %.0f s", conn.id, idle_for)
                _hang_up(conn.sock, conn.out is not None)  # a stalled reply ends in a reset, not EOF
                self._close_now(conn)
            else:
                # Active since (idle_for < limit, so this is in the future), or busy: look again
                # a full period later.
                deadline = now + limit if busy else conn.last_active + limit
                heapq.heappush(heap, (deadline, conn.id, conn))
        if heap and not self._idle_timer_armed:
            self._idle_timer_armed = True
            self.call_later(max(0.0, heap[0][0] - now), self._reap_idle)

    def _on_fd_exhaustion(self, listener: Listener, exc: OSError) -> None:
        if not self._fd_exhausted_logged:
            self._fd_exhausted_logged = True
            log.error("out of file descriptors (%s): shedding new connections until some are free", exc.strerror)
        # libuv's trick: free the reserve descriptor, accept the waiting connection and close it
        # at once, so the listener stops reporting readable and we do not spin.
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
            try:
                sock, _ = listener.sock.accept()
            except OSError:
                pass
            else:
                _send_and_close(sock, b"ERR server out of file descriptors\n")
            self._reserve_fd = _open_reserve_fd()
            if self._reserve_fd is not None:
                return
        # No reserve to spend: stop watching the listener for a moment instead (nginx's way).
        listener.paused_until = _monotonic() + 1.0
        self._unregister(listener.sock)
        self.call_later(1.0, self._resume_listener, listener)

    def _resume_listener(self, listener: Listener) -> None:
        if listener.paused_until and not self._closed:
            listener.paused_until = 0.0
            if self._reserve_fd is None:
                self._reserve_fd = _open_reserve_fd()
            self._register(listener.sock, _READ, listener)

    def _reject_http(self, conn: Connection) -> None:
        self.stats.http_closed += 1
        suffix = self._http_log.allow(_monotonic())
        if suffix is not None:
            log.warning("closing connection #%d from %s: it sent an HTTP request (cross-protocol attack?)%s",
                        conn.id, _format_address(conn.peer), suffix)
        self._send_held_and_close(conn)  # the requests before it were real: their replies go out

    def _send_held_and_close(self, conn: Connection) -> None:
        self._release_batch(conn)  # a handler in a batch may be closing the server
        unsent = False
        if conn.out is not None:
            # Replies already made (held back during a pipelined burst, or refused by a full
            # socket) get one non-blocking send: closing between two ticks must not drop them.
            data = b"".join(conn.out)
            try:
                sent = conn.sock.send(data)
            except OSError:
                sent = 0
            self.stats.bytes_out += sent
            unsent = sent < len(data)
            if unsent:
                log.warning("connection #%d: closing with %d bytes of replies unsent", conn.id, len(data) - sent)
        _hang_up(conn.sock, unsent)
        self._close_now(conn)

    def _send_for(self, seconds: float) -> None:
        """close(grace): sends what clients have not taken yet, for at most ``seconds``."""
        deadline = _monotonic() + seconds
        selector = selectors.DefaultSelector()  # ours also holds listeners and readers
        try:
            for conn in self._connections.values():
                self._release_batch(conn)
                if conn.out is not None:
                    selector.register(conn.sock, _WRITE, conn)
            while selector.get_map():
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    return
                for key, _ in selector.select(remaining):
                    conn = key.data
                    data = b"".join(conn.out)
                    try:
                        sent = conn.sock.send(data)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:  # the client is gone: nothing more can reach it
                        sent = len(data)
                    else:
                        self.stats.bytes_out += sent
                    if sent < len(data):
                        conn.out = [memoryview(data)[sent:]]
                        continue
                    conn.out = None
                    conn.out_size = 0
                    selector.unregister(conn.sock)
        finally:
            selector.close()

    def _drop(self, conn: Connection, exc: BaseException) -> None:
        log.debug("connection #%d dropped: %s", conn.id, exc)
        self._close_now(conn)

    def _finish_close(self, conn: Connection) -> None:
        """Our side is done. If the peer already sent EOF we close now; otherwise we shut down
        writing and drain what it still sends, so a close with unread input does not turn into
        an RST that could destroy the replies it has not read yet."""
        if conn.eof or conn.closed:
            self._close_now(conn)
            return
        if conn.lingering:
            return
        conn.lingering = True
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_now(conn)
            return
        if conn.waiting is not None:
            self._cancel_waiting(conn)
        if conn.queue:
            conn.queue.clear()
        self.call_later(_LINGER_SECONDS, self._close_now, conn)
        self._update_interest(conn)

    def _cancel_waiting(self, conn: Connection) -> None:
        waiting = conn.waiting
        conn.waiting = None
        try:
            if isinstance(waiting, Pending):
                waiting._cancel()
            else:
                waiting.close()
        except Exception:
            log.exception("cancelling a pending reply raised")

    def _close_now(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.mask:
            try:
                self._unregister(conn.sock)
            except (KeyError, ValueError):  # pragma: no cover - defensive
                pass
        self._connections.pop(conn.sock.fileno(), None)
        heap = self._idle_heap
        if len(heap) > 2 * len(self._connections) + 64:  # drop closed entries: bounded under churn
            self._idle_heap = [entry for entry in heap if not entry[2].closed]
            heapq.heapify(self._idle_heap)
        conn.mask = 0
        conn.out = None
        conn.out_size = 0
        conn.queue = None
        try:
            conn.sock.close()
        except OSError:  # pragma: no cover
            pass
        if conn.waiting is not None:  # last: a host callback that raises must find the connection released
            self._cancel_waiting(conn)

    # ---- timers and cross-thread calls ----

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        """Runs ``callback(*args)`` inside a poll() at least ``delay`` seconds from now."""
        self._timer_seq += 1
        heapq.heappush(self._timers, (_monotonic() + delay, self._timer_seq, callback, args))
        if self._integration is not None:  # an event loop must re-arm for an earlier deadline
            self._integration.kick()

    def _run_timers(self, now: float) -> int:
        fired = 0
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, callback, args = heapq.heappop(timers)
            fired += 1
            callback(*args)
        return fired

    def call_soon_threadsafe(self, callback: Callable[[], Any]) -> None:
        """Runs ``callback()`` in the next poll(), waking a blocked poll(); safe from any thread.
        After close() it does nothing, as no poll() will run it; callbacks still queued when close()
        is called never run either."""
        if self._closed:
            return
        self._calls.append(callback)
        waker = self._waker or self._make_waker()
        if waker is None:
            return
        try:
            waker[1].send(b"\0")
        except OSError:  # a full pipe already guarantees a wake-up; a closed one, a closed server
            pass

    def wake(self, conn: Connection) -> None:
        """Asks the server to service ``conn`` (a stream it is waiting on has news)."""
        if threading.get_ident() == self.owner_thread:
            self._schedule(conn)
            if self._integration is not None:  # outside poll(), an event loop must be told
                self._integration.kick()
        else:
            self.call_soon_threadsafe(lambda: self._schedule(conn))

    def _make_waker(self) -> Optional[Tuple[socket.socket, socket.socket]]:
        with _WAKER_LOCK:
            if self._waker is None:
                if self._closed:  # another thread closed us since the caller looked
                    return None
                reader, writer = socket.socketpair()
                reader.setblocking(False)
                writer.setblocking(False)
                self._register(reader, _READ, _WAKER)
                self._waker = (reader, writer)
        return self._waker

    def _drain_waker(self) -> None:
        assert self._waker is not None
        try:
            while self._waker[0].recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # ---- integrations (_integrations.py) ----

    def attach_asyncio(self, loop: Any = None, *, budget: Optional[float] = None) -> Any:
        """Serves from an asyncio event loop instead of explicit poll() calls.

        Watches :meth:`fileno` with ``loop.add_reader`` and arms a loop timer at
        :meth:`next_deadline`; handlers run on the loop's thread, which becomes
        :attr:`owner_thread`. ``loop`` defaults to the running loop. ``budget`` is passed to
        each poll(). Returns a handle whose ``detach()`` stops it; close() detaches too.
        """
        from ._integrations import attach_asyncio

        return attach_asyncio(self, loop, budget=budget)

    def start_thread(self, name: str = "reactor_mgmt", poll_interval: Optional[float] = None) -> Any:
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

    # ---- shutdown ----

    def close(self, grace: float = 0.0) -> None:
        """Closes every connection and listener, and removes Unix socket files.

        A client with requests still queued, or waiting for a deferred or streaming reply,
        gets ``ERR server shutting down`` (JSON code ``shutdown``) first. Called from a handler
        (a ``shutdown`` command) or a callback, it takes effect when that poll() returns: the
        handler's own reply, and the replies before it, are sent; nothing else runs, except the
        remaining calls of a pipelined run of that same command, which are made in one C-level
        loop (their replies are sent too). A Pending already resolved is sent, not replaced.

        Output a client has not taken yet gets ``grace`` seconds to go (0 by default, so
        close() never waits). Whatever is still unsent then is dropped with a TCP reset, so
        the client sees an error rather than a reply that looks whole but was cut short; every
        other connection ends with a plain EOF.
        """
        if self._closed:
            return
        self._close_grace = grace
        if self._polling == threading.get_ident():
            self._closed = True
            self._close_owed = self._owed_a_notice()
            # Later events find no owner, and queued requests are dropped (each client owed one
            # is told, at the tear-down); the handler that called us returns into its batch,
            # which stops at the empty queue. (A C-level run of one command cannot stop: its
            # remaining calls are made, and their replies sent.)
            self._owners.clear()
            for conn in self._close_owed:
                conn.queue.clear()
            return
        if self._integration is not None:  # before the selector closes under an event loop
            self._integration.detach()
        self._closed = True
        self._close_owed = self._owed_a_notice()
        self._tear_down()

    def _owed_a_notice(self) -> Dict[Connection, Any]:
        """The connections with requests queued, by the reply id of the first of them."""
        return {conn: _reply_id_of(conn.queue[0]) for conn in self._connections.values()
                if conn.queue and not (conn.closing or conn.cut_off)}

    def _tear_down(self) -> None:
        owed, self._close_owed = self._close_owed or {}, None
        for conn in list(self._connections.values()):
            if conn.closed or conn.closing or conn.cut_off:
                continue
            self._release_batch(conn)  # the replies before the notice
            waiting = conn.waiting
            if isinstance(waiting, Pending) and waiting.done:  # answered, and not yet sent
                conn.waiting = None
                self._finish_pending(conn, waiting, conn.waiting_id)
            # Looked at now, not at close(): a handler that closed us may then have returned
            # a Pending or a stream.
            if conn.waiting is not None:
                self._write(conn, _error_reply(conn.waiting_id, "shutdown", "server shutting down"))
            elif conn in owed:
                self._write(conn, _error_reply(owed[conn], "shutdown", "server shutting down"))
        if self._close_grace > 0:
            self._send_for(self._close_grace)
        for conn in list(self._connections.values()):
            self._send_held_and_close(conn)
        for listener in self._listeners:
            try:
                if not listener.paused_until:
                    self._unregister(listener.sock)
            except (KeyError, ValueError):
                pass
            listener.sock.close()
            if listener.path is not None:
                _unlink_if_ours(listener.path, listener.file_id)
        self._listeners = []
        if self._waker is not None:
            for sock in self._waker:
                sock.close()
        self._owners.clear()  # a handler may close us mid-poll: its remaining events find no owner
        self._selector.close()
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
        if self.address_file is not None:
            _unlink_if_ours(self.address_file, self._address_file_id)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        where = ", ".join(_format_address(a) for a in self.addresses) or "no listeners"
        return f"<Server {where} connections={len(self._connections)}>"


_WAKER_LOCK = threading.Lock()


def command_options(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Sets registration options (name, level, hidden, help) on a method for add_commands()."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._reactor_mgmt_options = options  # type: ignore[attr-defined]
        return fn

    return decorate


# ---- helpers ----


def _subscribed(conn: Connection) -> bool:
    """A subscription (`log tail`, `watch`) is running: input is read to stop it, not queued."""
    waiting = conn.waiting
    return waiting.__class__ is Stream and waiting.until_input


def _load_token(token: Optional[str], env: Optional[str], path: Optional[str]) -> Optional[str]:
    if token is None and env is not None:
        token = os.environ.get(env) or None
    if token is None and path is not None:
        with open(path) as handle:
            token = handle.read().strip() or None
    if token is not None and not token.strip():
        raise ConfigError("the token is empty")
    return token


def _open_reserve_fd() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def _send_and_close(sock: socket.socket, message: bytes) -> None:
    """Refuses a connection just accepted: its one line, then EOF."""
    sock.setblocking(False)
    try:
        sock.send(message)
    except OSError:
        pass
    _hang_up(sock, False)
    sock.close()


_DISCARD_AT_CLOSE = 1 << 20  # bytes of unread input read and dropped before a final close


def _hang_up(sock: socket.socket, unsent: bool) -> None:
    """Readies a non-blocking socket for its final close().

    Closing a socket with unread input makes the kernel send a reset, and a reset can destroy
    replies the client has not read yet (a pipelining client that reads slowly, or a refused
    one that sent its request before reading our line). So after a FIN, the input waiting now
    is read and dropped. With output still unsent it is the other way round: a FIN would make
    a reply cut short look whole, so the close becomes a reset on purpose.
    """
    try:
        if unsent:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            return
        sock.shutdown(socket.SHUT_WR)
        budget = _DISCARD_AT_CLOSE
        while budget > 0:
            data = sock.recv(65536)
            if not data:
                return
            budget -= len(data)
    except OSError:  # nothing waiting (EAGAIN), or the peer is gone already
        pass


def _peer_allowed(sock: socket.socket, allowed: frozenset) -> bool:
    import struct

    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False
    _, uid, _ = struct.unpack("3i", credentials)
    return uid == 0 or uid == os.getuid() or uid in allowed


def _clear_unix_path(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"refusing to use {path}: it is a symlink")
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"refusing to replace {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: its server died without removing it
        return
    except OSError as exc:
        raise ConfigError(f"cannot tell whether {path} is in use: {exc}") from None
    finally:
        probe.close()
    raise ConfigError(f"{path} is in use by a running server")


def _file_id(path: str) -> Optional[Tuple[int, int]]:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _unlink_if_ours(path: str, file_id: Optional[Tuple[int, int]]) -> None:
    """Removes ``path`` only while it is still the file we made: another server (a restart
    that overlapped us) may have put its own there since."""
    if file_id is not None and _file_id(path) == file_id:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _bind_with_mode(sock: socket.socket, path: str, mode: int) -> None:
    """Binds so that the socket file is born with at most ``mode``: no moment when a wider
    mode lets another user connect before the chmod.

    On Linux, bind() takes the mode of the unbound socket's inode, which fchmod sets, so the
    process-wide umask is left alone: a host thread creating files meanwhile keeps its umask.
    Elsewhere fchmod on a socket fails or is ignored, and the umask does the job instead.
    """
    try:
        os.fchmod(sock.fileno(), mode)
    except OSError:
        pass
    else:
        if sys.platform.startswith("linux"):
            sock.bind(path)
            return
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)


def _gid_of(group: str) -> int:
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"unknown group {group!r} for the Unix socket") from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def _format_address(address: Any) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)
