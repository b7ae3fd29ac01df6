# The transport: the one place where the server's bytes meet a socket. Every send the server
# makes goes through _send_some() below, or the same call written out in Transport.flush (the
# send of every reply; over TLS, a record at a time: _send_records): a refusal at accept
# (refuse; over TLS, send_some for _tls.TlsRefusal), the last words at close
# (Transport.send_and_close, drain) and the cross-thread waker's byte. Like asyncio's selector
# transports, a Transport owns its socket, its output buffer and its flow control, and hands
# what it reads to its protocol, the session (_session.Connection), which it knows only as an
# object with data_received() (b"" for the EOF, as recv() says it, or an eof flag with the last
# bytes: see RDHUP), service() and a few flags.
#
# The rules it keeps:
#   * the first connection a listener's event admits is read as it is accepted (read_first),
#     before the poller knows its socket: a one-shot client's request is nearly always there
#     already, and one answered and closed in that read never needs registering (the rest of
#     a burst wait for their events, to take turns fairly);
#   * output is written to a buffer during a turn and sent at the end of it, at once, without
#     waiting for a write event ("try to send now", as in asyncio's write()); EVENT_WRITE is
#     registered only while output is left over;
#   * above high_water of unsent output the session is paused (no reads, no commands) until
#     the client drains below low_water; output past high_water + max_output cuts the client
#     off with a notice, never a bare EOF (cut_off);
#   * a graceful close sends what is queued, shuts down writing and drains the peer for a
#     while (linger), so closing over unread input does not reset replies away; a final close
#     with output still unsent resets on purpose, so a cut reply never looks whole (hang_up).
from __future__ import annotations

import selectors
import socket

from ._errors import ConfigError
from ._log import Throttle, format_address, log
from ._wire import err_line

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, List, Optional, Tuple, Type

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# poll() reads events in epoll's bits on every platform (see _loop): HUP and ERR count as both
# readable and writable, as in selectors, so recv/send then report the error.
_IN, _OUT = 0x001, 0x004
# epoll's EPOLLRDHUP (the loop asks for it with every read interest): the peer has shut down
# writing, and all it sent before that is queued already, in order. A recv that returns less than
# it asked for has then nearly always emptied the queue, so a second recv returns b"", the EOF,
# at once: a one-shot client (`echo cmd | nc -N`: connect, send, shut down, read) is answered and
# closed in the poll that reads its request, with no later poll for its EOF. (Only nearly: a recv
# also stops at TCP's urgent mark and at an AF_UNIX message that carries descriptors or OOB data,
# and then the second recv returns bytes, which are read as any are.)
RDHUP = 0x2000
_READABLE, _WRITABLE = ~_OUT, ~(_IN | RDHUP)  # the peer's half-close is no room to write
# A mask beyond selectors' two bits: registered for errors alone (on epoll; see update_interest).
ERRORS_ONLY = 4
_ERROR_OR_HANGUP = 0x008 | 0x010  # EPOLLERR, EPOLLHUP
# One recv is the one piece of a poll() that its budget cannot split: decoding 64 KiB of tiny
# hostile lines (32K lines of invalid UTF-8) took 34 ms, and 16 KiB of pipelined requests took
# up to 1.4 ms on a loaded 2-core machine, which pushed poll(budget=1 ms) past 3 ms.
RECV_SIZE = 8192
LINGER_SECONDS = 2.0  # after our last reply, how long we drain a client that keeps sending
_LINGER_ZERO = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {on, 0 s}: close() resets
_DISCARD_AT_CLOSE = 1 << 20  # bytes of unread input read and dropped before a final close
# A client can reset mid-reply at will: one warning per interval for replies dropped unsent.
_DROPPED = Throttle()


# What a non-blocking call raises for "not now": a TLS socket adds its want-read/want-write
# errors (see allow_would_block), so a plaintext server never imports ssl.
_WOULD_BLOCK: Tuple[Type[BaseException], ...] = (BlockingIOError, InterruptedError)


def allow_would_block(*exception_types: Type[BaseException]) -> None:
    global _WOULD_BLOCK
    _WOULD_BLOCK = tuple(dict.fromkeys(_WOULD_BLOCK + exception_types))


def _send_records(sock: socket.SocketType, data: Any, record: int) -> int:
    """Sends ``data`` a ``record`` at a time, for a socket that takes a send whole or not at all
    (TLS): what went out is then counted as it goes, so a slow reader of a long reply is seen to
    progress (the idle reaper, low water), where one send of it all says nothing until the end.
    The send that would block is retried first, with the same bytes: the next flush starts
    with them (see Transport.committed)."""
    view = memoryview(data)
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(view[sent : sent + record])
    except _WOULD_BLOCK:
        pass
    return sent


def _send_some(sock: socket.SocketType, data: Any) -> int:
    """The server's only send: as much of ``data`` as the kernel takes now, without blocking.
    Raises OSError when the peer is gone; a full socket is 0 bytes taken."""
    try:
        return sock.send(data)
    except _WOULD_BLOCK:
        return 0


class Limits:
    """The output limits every transport of one server shares (one object, not one per
    connection)."""

    __slots__ = ("high_water", "low_water", "max_output", "stats")

    def __init__(self, high_water: int, low_water: Optional[int], max_output: int, stats: Any) -> None:
        if not 0 < high_water <= max_output:
            raise ConfigError("need 0 < high_water <= max_output")
        if low_water is None:
            low_water = max(1, high_water // 4)
        if not 0 < low_water <= high_water:  # low_water 0 would never resume a paused client
            raise ConfigError("need 0 < low_water <= high_water")
        self.high_water = high_water
        self.low_water = low_water
        self.max_output = max_output
        self.stats = stats  # counts bytes_in and bytes_out


class Transport:
    """One client socket: reads into the session, buffers and sends its output.

    ``loop`` is the server's _loop.Loop (register, modify, unregister, call_later, schedule,
    forget); ``conn`` the session. ``out`` is None or a list of byte chunks not yet sent (the
    first may be a memoryview of a part-sent chunk); ``mask`` the selector interest.
    """

    __slots__ = (
        "sock",
        "conn",
        "loop",
        "limits",
        "out",
        "out_size",
        "mask",
        "closing",
        "closed",
        "paused",
        "lingering",
        "cut_off",
        "last_active",
        "opened",
        "bytes_in",
        "bytes_out",
        "in_flight",
    )
    # What a send or read raises when the client has reset the connection or gone away: its
    # own doing, and common, where any other failure is ours (see abort).
    PEER_LEFT: Tuple[Type[BaseException], ...] = (ConnectionResetError, BrokenPipeError)

    # The most one send() may be given, or 0 for all of it. A TLS socket takes a send whole or
    # not at all, and one that would block may have taken part of it (TlsTransport sets it).
    record = 0

    def __init__(self, sock: socket.SocketType, loop: Any, limits: Limits, now: float) -> None:
        self.sock = sock
        self.conn: Any = None
        self.loop = loop
        self.limits = limits
        self.out: Optional[List[Any]] = None
        self.out_size = 0
        self.mask = 0
        self.closing = False  # no more requests; close once the output is flushed
        self.closed = False
        self.paused = False  # output above the high-water mark: no reads, no commands
        self.lingering = False  # we shut down writing and are draining the peer
        self.cut_off = False  # unsent output passed its cap: only the notice saying so goes out
        self.last_active = now
        self.opened = now
        self.bytes_in = 0  # for `clients`; small ints are shared, so an idle client pays no object
        self.bytes_out = 0
        self.in_flight = 0  # TLS: the bytes a send that would block holds (see committed)

    # ---- events from the loop ----

    def handle_event(self, event: int, now: float, stop_at: Optional[float]) -> None:
        conn = self.conn
        # One read, unless paused above high water (the backlog must drain first) or conn has
        # requests queued (conn.wants_input(), inlined: this runs per event, as does the read,
        # which is why it is written out here). Past the poll's end (its budget or timeout),
        # reads wait for the next poll (the event is level-triggered): decoding one full recv
        # of tiny commands costs milliseconds. A poll with an end still reads once.
        loop = self.loop
        if (
            event & _READABLE
            and not self.paused
            and (not conn.queue or conn.subscribed())
            and conn.turn_at != loop.polls  # read already in this poll (read_first, then a
            # stale event of a descriptor closed and reused in this poll): one read a poll
            # The read owed to a poll with an end goes ahead with no clock read (see
            # Loop.handle); it stays owed until a read brings something.
            and (stop_at is None or loop.read_owed or loop.clock() < stop_at)
        ):
            try:
                data = self.sock.recv(RECV_SIZE)
            except _WOULD_BLOCK:  # not now (a spurious wake-up, or a TLS record not yet whole)
                data = None
            except OSError as exc:
                self.abort(exc)
                return
            if data is not None:
                self.last_active = now
                if stop_at is not None:  # this poll has read: see Loop.handle
                    loop.read_owed = False
                ended = False
                if event & RDHUP and data and len(data) < RECV_SIZE:  # the EOF may be next (see RDHUP)
                    data, ended = self.read_on(data)
                if self.closing:  # lingering after our last reply: discard until the peer's EOF
                    if ended or not data:
                        self.close_now()
                    return
                if data:
                    size = len(data)
                    self.bytes_in += size
                    self.limits.stats.bytes_in += size
                conn.turn_at = loop.polls  # its turn in this poll: see Loop.schedule
                conn.data_received(data, stop_at, ended)  # b"" is the client's EOF
        if event & _WRITABLE and not self.closed:
            if self.mask == ERRORS_ONLY:  # registered for errors alone: see update_interest
                # An error or a hang-up is the reset it watches for. A write bit alone is stale:
                # the read of this same event parked the connection and flushed its output.
                if event & _ERROR_OR_HANGUP:
                    self.abort(ConnectionResetError("reset while its requests waited"))
                return
            self.last_active = now  # draining a long reply is not idleness
            self.flush()
            self.loop.schedule(conn)

    def read_first(self, now: float, stop_at: Optional[float]) -> None:
        """Reads a connection just accepted, without waiting for the poller to say it is readable.
        Serves one-shot clients (`echo status | nc -N`): their request, and their shutdown, are
        nearly always in the socket by the time they are accepted, so they are answered and
        closed in the poll that accepts them, not the next (2,000 one-shots from another process:
        2.0 polls each before, 1.01 after). The read is the one an event would make: a peer
        that may have shut down writing (RDHUP: read_on finds out). A client that has sent
        nothing yet costs a recv that would block."""
        self.handle_event(_IN | RDHUP, now, stop_at)

    def read_on(self, data: bytes) -> Tuple[bytes, bool]:
        """After a short read of a peer that has shut down writing: one more recv, for the rest
        of one read's size, says whether the EOF is next (see RDHUP). Returns the bytes read in
        all, and whether they end with the EOF."""
        try:
            more = self.sock.recv(RECV_SIZE - len(data))
        except OSError:  # would block (a first read: the peer is still writing), or a reset:
            return data, False  # these bytes run, and the next read or send meets the end
        return (data + more, False) if more else (data, True)

    def peer_uid(self) -> Optional[int]:
        """The peer's uid on a Unix socket (SO_PEERCRED), else None."""
        if self.sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
            return None
        import struct

        try:
            credentials = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        return int(struct.unpack("3i", credentials)[1])

    def peername(self) -> Any:
        """The peer's address as the socket reports it, or None when the socket cannot say."""
        try:
            return self.sock.getpeername()
        except OSError:
            return None

    # ---- output ----

    def write(self, data: bytes) -> None:
        """Queues ``data``; it goes out at the end of this turn (flush), or on a write event."""
        if self.closed or self.cut_off:
            return
        if self.out is None:
            self.out = [data]
        else:
            self.out.append(data)
        self.out_size += len(data)
        limits = self.limits
        if self.out_size > limits.max_output + limits.high_water:
            self.cut_off_output()

    def cut_off_output(self) -> None:
        """Unsent output passed high_water + max_output: a handler's conn.write() outran its
        client (replies cannot: commands run only below high_water, and a reply larger than
        max_output gets an error in its place). The output not yet begun is dropped at once, so
        its memory is freed at once, and the client is told why before the connection closes,
        rather than meeting a bare EOF."""
        limits = self.limits
        cap = limits.max_output + limits.high_water
        log.warning(
            "connection #%d from %s has %d bytes of unsent output (cap %d): disconnecting",
            self.conn.id,
            format_address(self.conn.peer),
            self.out_size,
            cap,
        )
        notice = self.committed() + err_line(f"too much unsent output ({self.out_size} bytes, cap {cap}): closing")
        self.out = [notice]
        self.out_size = len(notice)
        self.cut_off = True  # later writes, such as the rest of the handler's, are dropped
        self.closing = True
        # A stream would otherwise pump on for good: its dropped items never fill the buffer
        # that paces it.
        self.conn.cancel_waiting()

    def committed(self) -> bytes:
        """The queued bytes that must go out before anything else: the rest of a line begun (a
        part-sent head) and, over TLS, what a send that would block holds in flight, through
        the end of its line: OpenSSL wants the same bytes again (fewer fail with BAD_LENGTH)."""
        assert self.out is not None
        if not self.in_flight:
            head = self.out[0]
            if head.__class__ is not memoryview:
                return b""
            whole: Any = head.obj  # the bytes write() queued (a memoryview's obj is typed as any buffer)
            sent = len(whole) - len(head)
            end = whole.find(b"\n", sent) + 1 or len(whole)
            return bytes(head[: end - sent])
        kept = bytearray()
        for piece in self.out:
            start = max(len(kept), self.in_flight - 1)
            kept += piece
            end = kept.find(b"\n", start) + 1
            if end:
                return bytes(kept[:end])
        return bytes(kept)

    def flush(self) -> None:
        """Sends what is queued, as much as the kernel takes now; resumes a paused session
        below low_water; finishes a graceful close once everything is out."""
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            try:  # _send_some(), written out: this is the send of every reply
                if self.record:
                    sent = _send_records(self.sock, data, self.record)
                    self.in_flight = min(self.record, len(data) - sent)  # 0 once all went
                else:
                    sent = self.sock.send(data)
            except _WOULD_BLOCK:
                sent = 0
            except OSError as exc:
                self.abort(exc)
                return
            limits = self.limits
            limits.stats.bytes_out += sent
            self.bytes_out += sent
            size = len(data)
            if sent == size:
                self.out = None
                self.out_size = 0
            else:
                self.out = [memoryview(data)[sent:]]
                self.out_size = size - sent
            if (self.paused or self.conn.waiting is not None) and self.out_size < limits.low_water:
                if self.paused:
                    self.paused = False
                    self.loop.schedule(self.conn)
                elif self.conn.streaming() and self.conn.waiting.held:
                    # A stream pauses at the low-water mark; if the kernel took everything, no
                    # write event will come to resume it, so resume it next tick. Not one parked
                    # on a Wait: resumed on every flush, it would spin (pump, Wait, nothing sent).
                    self.loop.schedule(self.conn)
        if self.closing and self.out is None:
            self.finish_close()

    def update_interest(self) -> None:
        """Asks the selector for exactly what this connection can use now."""
        want = _WRITE if self.out is not None else 0
        conn = self.conn
        if (self.closing and self.out is None) or (
            not self.closing and not self.paused and not conn.eof and (not conn.queue or conn.subscribed())
        ):  # the last test is conn.wants_input(), inlined: this runs after every turn
            want |= _READ
        elif not want and conn.waiting is not None and self.loop.epoll is not None:
            # Waiting on a reply with requests queued behind it: nothing to read or send, but a
            # reset must still be seen, or the Pending is never cancelled, the generator never
            # closed and the connection held for good (the idle reaper counts it busy). epoll
            # reports errors and hang-ups with no events asked for; select and poll cannot watch
            # for them alone, so there it stays unregistered (a reset is met at the next send).
            want = ERRORS_ONLY
        if want != self.mask:
            self.set_interest(want)

    def set_interest(self, want: int) -> None:
        """Registers, modifies or unregisters the socket so the selector watches ``want``."""
        loop = self.loop
        if want == 0:
            loop.unregister(self.sock)
        elif self.mask == 0:
            loop.register(self.sock, want, self)
        else:
            loop.modify(self.sock, want, self)
        self.mask = want

    # ---- closing ----

    def close(self) -> None:
        """Closes once everything queued so far has been sent."""
        if not self.closed:
            self.closing = True

    def finish_close(self) -> None:
        """Our side is done. If the peer already sent EOF we close now; otherwise we shut down
        writing and drain what it still sends, so a close with unread input does not turn into
        an RST that could destroy the replies it has not read yet."""
        if not self.closed and not self.lingering:
            self.end_of_output()  # everything is out: flush() calls this only once it is
        if self.closed or self.conn.eof:
            self.close_now()
            return
        if self.lingering:
            return
        self.lingering = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close_now()
            return
        self.conn.stop()
        self.loop.call_later(LINGER_SECONDS, self.close_now)
        self.update_interest()

    def send_and_close(self) -> None:
        """Closes now, giving what is queued one non-blocking send: closing between two ticks
        (an HTTP probe after real requests, the server's close) must not drop replies made."""
        unsent = False
        if self.out is not None:
            data = b"".join(self.out)
            try:
                sent = _send_some(self.sock, data)
            except OSError:
                sent = 0
            self.limits.stats.bytes_out += sent
            unsent = sent < len(data)
            if unsent:
                log.warning("connection #%d: closing with %d bytes of replies unsent", self.conn.id, len(data) - sent)
        if not unsent:
            self.end_of_output()
        hang_up(self.sock, unsent)  # with output unsent, a reset: a cut reply must not look whole
        self.close_now()

    def end_of_output(self) -> None:
        """All of our output is out, and the EOF comes next: over TCP the FIN says so (TLS adds
        its close_notify: TlsTransport)."""

    def abort(self, exc: BaseException) -> None:
        """Closes after a send or read failed. Replies still queued are lost with the
        connection: unless the client reset it or went away (its own choice, and a common one:
        a debug record), said as a warning, so a reply cut short by a failure of ours is never
        silent (a TLS session that failed its writes once dropped them with a debug record)."""
        if self.out_size and not isinstance(exc, self.PEER_LEFT):
            suffix = _DROPPED.allow(self.loop.clock())
            if suffix is not None:
                log.warning(
                    "connection #%d from %s dropped with %d bytes of replies unsent: %s%s",
                    self.conn.id,
                    format_address(self.conn.peer),
                    self.out_size,
                    exc,
                    suffix,
                )
        else:
            log.debug("connection #%d dropped: %s", self.conn.id, exc)
        self.close_now()

    def reset(self) -> None:
        """Closes now; with output still unsent, by a reset rather than an EOF."""
        hang_up(self.sock, self.out is not None)
        self.close_now()

    def close_now(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.mask:
            try:
                self.loop.unregister(self.sock)
            except (KeyError, ValueError):  # pragma: no cover - defensive
                pass
        self.mask = 0
        self.out = None
        self.out_size = 0
        self.loop.forget(self)
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass
        self.conn.connection_lost()  # last: a host callback that raises finds the connection released


def drain(transports: List[Transport], seconds: float) -> None:
    """close(grace): sends what clients have not taken yet, for at most ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    selector = selectors.DefaultSelector()  # the server's also holds listeners and readers
    try:
        for transport in transports:
            if transport.out is not None:
                selector.register(transport.sock, _WRITE, transport)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for key, _ in selector.select(remaining):
                transport = key.data
                data = b"".join(transport.out)
                try:
                    sent = _send_some(transport.sock, data)
                except OSError:  # the client is gone: nothing more can reach it
                    sent = len(data)
                else:
                    transport.limits.stats.bytes_out += sent
                if sent < len(data):
                    transport.out = [memoryview(data)[sent:]]
                    continue
                transport.out = None
                transport.out_size = 0
                selector.unregister(transport.sock)
    finally:
        selector.close()


def send_some(sock: socket.SocketType, data: Any) -> int:
    """_send_some() for a sender with no Transport: a refused TLS client's line, sent after
    its handshake (_tls.TlsRefusal), where refuse() would send plaintext before it."""
    return _send_some(sock, data)


def refuse(sock: socket.SocketType, message: bytes) -> None:
    """Refuses a connection just accepted: its one line, then EOF."""
    sock.setblocking(False)
    try:
        _send_some(sock, message)
    except OSError:
        pass
    hang_up(sock, False)
    sock.close()


def hang_up(sock: socket.SocketType, unsent: bool) -> None:
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


class Waker:
    """A socketpair whose read end the loop watches: another thread's wake() sends a byte."""

    __slots__ = ("reader", "writer")

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def handle_event(self, event: int, now: float, stop_at: Optional[float]) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def wake(self) -> None:
        try:
            _send_some(self.writer, b"\0")
        except OSError:  # a full pipe already guarantees a wake-up; a closed one, a closed server
            pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()
