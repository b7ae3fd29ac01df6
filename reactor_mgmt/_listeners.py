# Listening sockets: binding them (TCP on every address of a host, or none; Unix sockets born
# with their mode; adopted descriptors), the hygiene of the files they leave (a stale socket is
# replaced, a live one, a symlink or any other file refused; nothing removed that another
# server has put there since), peer credentials, the address file, and the accept loop.
#
# The Acceptor accepts for every listener of a server, a bounded and adaptive number per tick
# (like Twisted: more while the backlog keeps it saturated, fewer after), asks the kernel
# whether another connection waits after the first rather than fail an accept to find out, and
# survives descriptor exhaustion without spinning (libuv's reserve descriptor, then nginx's
# pause). TCP listeners carry TCP_NODELAY for the sockets they accept (see Listener.nodelay).
# What to do with an accepted socket (admission, a session, its first read) is the server's:
# it is the ``admit`` callback, and a request it reads may close the server, which stops the
# accepting. Listeners holds one server's set of them, with its address file.
from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import stat
import sys

from ._commands import LEVELS, level_rank
from ._errors import ConfigError, ReactorMgmtError
from ._log import format_address, log
from ._transport import hang_up, refuse

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple, Union

    Address = Union[str, Tuple[str, int]]

_READ = selectors.EVENT_READ
_EPHEMERAL_TRIES = 8  # port 0 on a host with several addresses: fresh ports to try for all of them
_FD_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_ACCEPTS_START, _ACCEPTS_STEP, _ACCEPTS_MAX = 16, 16, 512


class Listener:
    """One listening socket, with the maximum level its connections get."""

    __slots__ = (
        "sock",
        "address",
        "path",
        "file_id",
        "rank",
        "allowed_uids",
        "check_peer",
        "accepts",
        "paused_until",
        "acceptor",
        "tls",
        "cert_levels",
        "nodelay",
        "backlog_probe",
        "refusals",
    )

    def __init__(self, sock: socket.socket, address: Any, rank: int, path: Optional[str] = None) -> None:
        self.sock = sock
        # Whether admission sets TCP_NODELAY on each connection (Nagle would hold back a reply
        # sent while the last one is unacknowledged: a pipelining client's): not on a Unix
        # socket; on TCP, until a first connection shows that it inherits the option from this
        # listener, as Linux and the BSDs make it (bind_tcp sets it here), which saves one
        # system call per connection. None: the next connection tells (learn_nodelay).
        self.nodelay: Optional[bool] = False
        if sock.family != socket.AF_UNIX:
            try:
                self.nodelay = None if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) else True
            except OSError:  # an adopted stream socket that is not TCP (AF_VSOCK): nothing to set
                pass
        # After an accept, whether another connection waits: a poll(0) of this socket alone
        # (0.3 us here) instead of the accept that fails with EAGAIN (4 us with its exception),
        # which every one-shot client (`echo status | nc -N`) would cost. None: no poll().
        self.backlog_probe: Optional[Callable[[int], List[Any]]] = None
        if hasattr(select, "poll"):
            probe = select.poll()
            probe.register(sock.fileno(), select.POLLIN)
            self.backlog_probe = probe.poll
        self.address = address
        self.path = path
        self.file_id = file_id(path) if path is not None else None  # what close() may remove
        self.rank = rank
        self.check_peer = False
        self.allowed_uids: FrozenSet[int] = frozenset()
        self.accepts = _ACCEPTS_START  # adapts like Twisted's numberAccepts
        self.paused_until = 0.0
        self.acceptor: Optional[Acceptor] = None
        self.tls: Any = None  # an ssl.SSLContext: connections start with a TLS handshake (_tls)
        self.cert_levels: Optional[Dict[str, int]] = None  # client certificate name -> level rank
        # TLS: the refused clients told so inside TLS, until each is done (_tls.TlsRefusal);
        # they are closed with the listener.
        self.refusals: Set[Any] = set()

    @property
    def level(self) -> str:
        return LEVELS[self.rank]

    def learn_nodelay(self, sock: socket.SocketType) -> bool:
        """Whether ``sock``, this listener's first connection, needs TCP_NODELAY set: False
        once it has it already, inherited, and so will every later connection."""
        self.nodelay = not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        return self.nodelay

    def handle_event(self, event: int, now: float, stop_at: Optional[float]) -> None:
        assert self.acceptor is not None
        self.acceptor.accept(self, now, stop_at)

    def close(self) -> None:
        for refusal in list(self.refusals):
            refusal.close()
        self.sock.close()
        if self.path is not None:
            unlink_if_ours(self.path, self.file_id)


class Acceptor:
    """Accepts connections on a server's listeners and hands each to ``admit``."""

    def __init__(
        self, loop: Any, admit: Callable[[Listener, socket.SocketType, Any, float, Optional[float], bool], bool]
    ) -> None:
        self.loop = loop
        self.admit = admit
        self.reserve_fd: Optional[int] = _open_reserve_fd()
        self.exhausted_logged = False

    def add(self, listener: Listener) -> None:
        listener.sock.setblocking(False)
        listener.acceptor = self
        self.loop.register(listener.sock, _READ, listener)
        log.info("listening on %s", format_address(listener.address))

    def remove(self, listener: Listener) -> None:
        if not listener.paused_until:
            try:
                self.loop.unregister(listener.sock)
            except (KeyError, ValueError):
                pass
        listener.close()

    def accept(self, listener: Listener, now: float, stop_at: Optional[float] = None) -> None:
        """Accepts up to the listener's count; past the poll's end (its budget or timeout) only
        the first: a connect flood's accepts and admissions (15-20 us each, up to 512) would
        otherwise run a poll milliseconds past a host's frame. The rest wait in the backlog,
        and the listener, still readable, comes up in the next poll."""
        if listener.paused_until or self.loop.stopped:  # a handler closed the server in this poll
            return
        limit = listener.accepts
        accepted = 0
        admitted = False
        clock = self.loop.clock
        listening = listener.sock
        # (an adopted listener, or a test's stand-in, has the plain accept())
        take = listening.accept_bare if isinstance(listening, _ListeningSocket) else listening.accept
        while accepted < limit:
            if accepted and stop_at is not None and clock() >= stop_at:
                return  # not a sign of fewer connections waiting: the count stays as it is
            try:
                sock, peer = take()
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
            if self.exhausted_logged:
                self.exhausted_logged = False
                log.warning("file descriptors available again; accepting connections")
            # The first connection an event admits is read at once (see Transport.read_first);
            # the rest of a burst wait for their own events, which take their turns in the next
            # poll with every other client's: read here, a connect flood's requests ran ahead
            # of a pipelining client's, whose replies fell to a quarter (the 60 Hz host flood).
            admitted = self.admit(listener, sock, peer, now, stop_at, not admitted) or admitted
            if self.loop.stopped:  # a request read there closed the server: no listener accepts
                return
            if accepted == 1 and listener.backlog_probe is not None and not listener.backlog_probe(0):
                break  # the backlog is empty (what the next accept's EAGAIN would say, dearer)
        if accepted == limit:
            listener.accepts = min(limit + _ACCEPTS_STEP, _ACCEPTS_MAX)
        else:
            listener.accepts = max(_ACCEPTS_START, accepted)

    def _on_fd_exhaustion(self, listener: Listener, exc: OSError) -> None:
        if not self.exhausted_logged:
            self.exhausted_logged = True
            log.error("out of file descriptors (%s): shedding new connections until some are free", exc.strerror)
        # libuv's trick: free the reserve descriptor, accept the waiting connection and close it
        # at once, so the listener stops reporting readable and we do not spin.
        if self.reserve_fd is not None:
            os.close(self.reserve_fd)
            self.reserve_fd = None
            try:
                sock, _ = listener.sock.accept()
            except OSError:
                pass
            else:
                if listener.tls is None:
                    refuse(sock, b"ERR server out of file descriptors\n")
                else:  # no plaintext on a TLS port, and no time for a handshake: a bare close
                    sock.setblocking(False)
                    hang_up(sock, False)
                    sock.close()
                self.loop.stats.refused += 1
            self.reserve_fd = _open_reserve_fd()
            if self.reserve_fd is not None:
                return
        # No reserve to spend: stop watching the listener for a moment instead (nginx's way).
        listener.paused_until = self.loop.clock() + 1.0
        self.loop.unregister(listener.sock)
        self.loop.call_later(1.0, self._resume, listener)

    def _resume(self, listener: Listener) -> None:
        if listener.paused_until and not self.loop.stopped:
            listener.paused_until = 0.0
            if self.reserve_fd is None:
                self.reserve_fd = _open_reserve_fd()
            self.loop.register(listener.sock, _READ, listener)

    def close(self) -> None:
        if self.reserve_fd is not None:
            os.close(self.reserve_fd)
            self.reserve_fd = None


class Listeners:
    """A server's listening sockets, their accept loop and its address file.

    With ``warn_remote`` (no token, and remote access not allowed explicitly), a non-loopback
    address is logged as a warning. The address file (one address per line) is rewritten whenever a
    listener is added, once ``writing`` is on: the server turns it on when its constructor's
    listeners are all up, so a second copy that fails to start leaves the running copy's file.
    """

    def __init__(
        self,
        loop: Any,
        admit: Callable[[Listener, socket.SocketType, Any, float, Optional[float], bool], bool],
        address_file: Optional[str],
        warn_remote: bool,
    ) -> None:
        self.acceptor = Acceptor(loop, admit)
        self.listeners: List[Listener] = []
        self.address_file = address_file
        self.address_file_id: Optional[Tuple[int, int]] = None
        self.writing = False
        # Called after the address file, whenever the addresses change once writing: the
        # server's discovery entry (set by the server when it has one).
        self.on_publish: Optional[Callable[[], None]] = None
        self.warn_remote = warn_remote
        self.closed = False  # closed or abandoned: a listener added now would be bound for no one

    def tcp(
        self,
        host: str,
        port: int,
        level: Optional[str],
        tls: Any = None,
        cert_levels: Optional[Dict[str, Sequence[str]]] = None,
        backlog: Optional[int] = None,
    ) -> List[Address]:
        self._check_open()
        ranks = None
        if cert_levels:
            ranks = {name: level_rank(name_level) for name_level, names in cert_levels.items() for name in names}
            if tls is None:
                raise ConfigError("cert_levels needs tls: client certificates come with a TLS handshake")
        rank = level_rank(level or "operator")  # before binding: a refusal leaves nothing bound
        if tls is not None:
            from ._tls import tolerate_unexpected_eof  # only now: a plaintext server never imports ssl

            tolerate_unexpected_eof(tls)  # a client's half-close still gets its replies
        bound: List[Address] = []
        socks = bind_tcp(host, port, backlog)
        added: List[Listener] = []
        try:
            for sock in socks:
                address = sock.getsockname()[:2]
                listener = Listener(sock, address, rank)
                listener.tls, listener.cert_levels = tls, ranks
                self._add(listener)
                added.append(listener)
                bound.append(address)
        except BaseException:  # all or nothing, as bind_tcp is
            for listener in added:
                self._remove(listener)
            for sock in socks:
                sock.close()
            raise
        for address in bound:
            self.warn_if_remote(address[0])
        self.publish()
        return bound

    def unix(
        self,
        path: str,
        mode: int,
        group: Union[int, str, None],
        level: Optional[str],
        check_peer: bool,
        allowed_uids: Sequence[int],
        backlog: Optional[int] = None,
    ) -> str:
        self._check_open()
        rank = level_rank(level or "admin")  # before binding: a refusal leaves no socket file
        sock = bind_unix(path, mode, group, backlog)
        # The file is removed at close() by its absolute path: the host may chdir meanwhile.
        listener = Listener(sock, path, rank, path=os.path.abspath(path))
        listener.check_peer = check_peer or bool(allowed_uids)
        listener.allowed_uids = frozenset(allowed_uids)
        try:
            self._add(listener)
        except BaseException:
            listener.close()  # and the file it made
            raise
        self.publish()
        return path

    def adopt(self, sock: socket.socket, level: Optional[str]) -> Address:
        self._check_open()
        address, default = adopted_address(sock)
        if isinstance(address, tuple):
            self.warn_if_remote(address[0])
        self._add(Listener(sock, address, level_rank(level or default)))
        self.publish()
        return address

    def adopt_fd(self, fd: int, level: Optional[str]) -> Address:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ConfigError(f"fd {fd} is not a socket: {exc}") from None
        try:
            return self.adopt(sock, level)
        except BaseException:
            sock.detach()  # a refused descriptor stays the caller's, and open
            raise

    def warn_if_remote(self, host: str) -> None:
        if self.warn_remote and not is_loopback(host):
            log.warning(
                "listening on non-loopback address %s without a token: anyone who can reach it "
                "can run commands (set token= or allow_remote=True to silence this)",
                host,
            )

    def _add(self, listener: Listener) -> None:
        self.acceptor.add(listener)
        self.listeners.append(listener)

    def _remove(self, listener: Listener) -> None:
        self.listeners.remove(listener)
        self.acceptor.remove(listener)

    def _check_open(self) -> None:
        if self.closed:
            raise ReactorMgmtError("the server is closed: it takes no new listener")

    def addresses(self) -> List[Address]:
        return [listener.address for listener in self.listeners]

    def publish(self, strict: bool = False) -> None:
        """Writes the addresses where they are published, once ``writing`` (after the listeners
        the constructor asked for): the address file, and the discovery entry (on_publish). A
        listener added later is published too, so `reactor-mgmt --app` finds it. A failure
        raises for the constructor's (``strict``: the server is not made); for a listener added
        later, which serves already, it is logged: raised, it left the listener bound."""
        if not self.writing:
            return
        try:
            if self.address_file is not None:
                self.address_file_id = write_address_file(self.address_file, self.addresses())
            if self.on_publish is not None:
                self.on_publish()
        except (OSError, ReactorMgmtError) as exc:
            if strict:
                raise
            log.error(
                "listening on %s, but its address could not be published: %s", format_address(self.addresses()[-1]), exc
            )

    def abandon(self) -> None:
        """In a forked child: closes this process's copies of the listening sockets, and
        removes no file: the socket file and the address file are the parent's."""
        self.closed = True
        for listener in self.listeners:
            for refusal in list(listener.refusals):
                refusal.abandon()
            listener.sock.close()
        self.listeners = []
        self.acceptor.close()

    def close(self) -> None:
        self.closed = True
        for listener in self.listeners:
            self.acceptor.remove(listener)
        self.listeners = []
        self.acceptor.close()
        if self.address_file is not None:
            unlink_if_ours(self.address_file, self.address_file_id)


# ---- binding ----


class _ListeningSocket(socket.socket):
    """A socket.socket whose accept() makes the accepted socket from the family, type and
    protocol read once, when it was made; otherwise it is socket.socket.accept(). That one reads
    them back through the ``family`` and ``type`` properties, which build an enum on every read:
    about 1 us of the server's CPU per connection, which a one-shot client (``echo status | nc
    -N``) pays for each request. Only the listeners bound here are made of it; a socket the host
    hands over (adopt) keeps its own class and the plain accept()."""

    __slots__ = ("_kind",)

    def __init__(
        self,
        family: Union[socket.AddressFamily, int] = -1,
        type: Union[socket.SocketKind, int] = -1,
        proto: int = -1,
        fileno: Optional[int] = None,
    ) -> None:
        super().__init__(family, type, proto, fileno)  # the signature dup() calls too
        self._kind = (self.family, self.type, self.proto)

    def accept(self) -> Tuple[socket.socket, Any]:
        fd, address = self._accept()  # type: ignore[attr-defined]  # what socket.socket.accept() calls
        sock = socket.socket(*self._kind, fileno=fd)
        # As socket.socket.accept() does: a blocking listener with no default timeout makes its
        # sockets blocking (ours are non-blocking, so this is one cheap test).
        if socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, address

    def accept_bare(self) -> Tuple[socket.SocketType, Any]:
        """accept() for the acceptor: the connection comes as the C socket type (SocketType),
        not wrapped in socket.socket, whose __init__ and close() are Python: about 1.3 us less of
        the server's CPU per connection, which a one-shot client pays per request. It has no
        makefile(), dup() or `with`, which nothing here uses; ssl wraps it as it would the other.
        It is left blocking, as accept4() makes it: admission makes every connection non-blocking."""
        fd, address = self._accept()  # type: ignore[attr-defined]
        return socket.SocketType(*self._kind, fd), address


# _ListeningSocket calls the _accept() that socket.socket.accept() is built on (CPython 3.9 to
# 3.13); where a socket has none, listeners are plain sockets.
_LISTENING_SOCKET = _ListeningSocket if hasattr(socket.socket, "_accept") else socket.socket


def bind_tcp(host: str, port: int, backlog: Optional[int] = None) -> List[socket.socket]:
    """Listening sockets for every address ``host`` resolves to; port 0 picks one free port
    for all of them. All or nothing: should another program hold the picked port on a later
    address (::1), the whole set is tried again on a new one."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:  # getaddrinfo wraps 70000 to 4464
        raise ConfigError(f"port must be an int from 0 to 65535, not {port!r}")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    tries = 1 if port else _EPHEMERAL_TRIES
    for attempt in range(tries):
        socks: List[socket.socket] = []
        trying: Any = (host, port)
        try:
            for family, kind, proto, _, sockaddr in infos:
                sock: socket.socket = _LISTENING_SOCKET(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # for its connections: see Listener
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(socks) > 1:  # one ephemeral port shared by all addresses
                    sockaddr = (sockaddr[0], socks[0].getsockname()[1]) + tuple(sockaddr[2:])  # type: ignore[assignment]
                trying = sockaddr
                sock.bind(sockaddr)
                sock.listen(socket.SOMAXCONN if backlog is None else backlog)
        except BaseException as exc:
            for sock in socks:
                sock.close()
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE and len(socks) > 1 and attempt + 1 < tries:
                continue
            if isinstance(exc, OSError) and exc.errno is not None:
                # Which address, as asyncio's create_server says it: a host binding several (or a
                # name that resolves to several) cannot tell otherwise. The errno stays.
                raise OSError(exc.errno, f"cannot listen on {format_address(trying)}: {exc.strerror}") from None
            raise
        return socks
    raise AssertionError("unreachable")  # pragma: no cover


def bind_unix(path: str, mode: int, group: Union[int, str, None], backlog: Optional[int] = None) -> socket.socket:
    """A listening Unix socket at ``path``, its file born with at most ``mode``."""
    if path.startswith("\0"):
        raise ConfigError(
            "abstract Unix sockets are not supported: with no file there is no mode, so "
            "any local user could connect; use a path in a directory only you can reach"
        )
    _clear_unix_path(path)
    sock = _LISTENING_SOCKET(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _bind_with_mode(sock, path, mode)
        # The system's maximum, not 128: a Unix connect does not queue and retry as TCP's does,
        # so a burst of scripts (a fleet fan-out) past the backlog fails with EAGAIN.
        sock.listen(socket.SOMAXCONN if backlog is None else backlog)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError) and exc.errno is not None:  # which path, as for TCP
            raise OSError(exc.errno, f"cannot listen on {path}: {exc.strerror}") from None
        raise
    try:
        if group is not None:
            gid = group if isinstance(group, int) else _gid_of(group)
            os.chown(path, -1, gid, follow_symlinks=False)
        if os.stat(path, follow_symlinks=False).st_mode & 0o7777 != mode:
            os.chmod(path, mode)
    except BaseException:
        sock.close()
        os.unlink(path)
        raise
    return sock


def adopted_address(sock: socket.socket) -> Tuple[Address, str]:
    """The address of a socket handed to us already listening, and its default level."""
    try:
        accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        raise ConfigError(f"not a socket: {exc}") from None
    if not accepting:
        raise ConfigError("the socket is not listening; call listen() first")
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return (address if isinstance(address, str) else address.decode(errors="replace")), "admin"
    return address[:2], "operator"


def peer_allowed(sock: socket.SocketType, allowed: FrozenSet[int]) -> bool:
    import struct

    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False
    _, uid, _ = struct.unpack("3i", credentials)
    return uid == 0 or uid == os.getuid() or uid in allowed


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def write_address_file(path: str, addresses: List[Any]) -> Optional[Tuple[int, int]]:
    """Writes one address per line, atomically; returns the file's identity (see unlink_if_ours)."""
    # A name no one can plant first, created only if it does not exist (O_EXCL, O_NOFOLLOW): in
    # a directory others may write (/tmp), a symlink left at a predictable name would have had
    # us truncate its target, and then put the planter's link in place of the address file.
    temporary = f"{path}.tmp{os.getpid()}.{os.urandom(6).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temporary, flags, 0o666)  # the umask applies, as open() applied it
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(format_address(a) + "\n" for a in addresses))
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return file_id(path)


def file_id(path: str) -> Optional[Tuple[int, int]]:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def unlink_if_ours(path: str, identity: Optional[Tuple[int, int]]) -> None:
    """Removes ``path`` only while it is still the file we made: another server (a restart
    that overlapped us) may have put its own there since."""
    if identity is not None and file_id(path) == identity:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _open_reserve_fd() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


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
