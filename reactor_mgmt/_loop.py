# The loop: what one poll() does, with no knowledge of commands. It owns the selector and the
# map from descriptors to the objects that handle their events (transports, listeners, the
# waker: each has handle_event(event, now, stop_at)), the ready queue of sessions with work
# left over, the TLS transports with records decrypted and unread (pending_reads: no event says
# so), the timers, the calls queued from other threads, and the idle reaper.
#
# The rules that shape it:
#   * poll(0) on an idle server is one non-blocking kernel call, plus a clock read when a timer
#     is armed: no per-connection work happens unless the kernel, a timer or the ready queue
#     says so;
#   * work per poll() is bounded: accepts per listener, one read of at most RECV_SIZE bytes per
#     connection (one recv, or two when a short one may have met the peer's EOF: see
#     _transport.RDHUP), K requests per connection, an optional time budget, and a positive
#     timeout's end (a host's poll(timeout=time_left) is its next frame's start); past the end,
#     a listener accepts one connection, a poll reads only until one read brings bytes (the
#     read owed to it: see handle) and runs one timer (run_timers), and the idle reaper closes
#     one connection, and at most REAP_BATCH in any poll; what is left waits for the next;
#   * a wait ends when it should: epoll's whole milliseconds are topped up (make_exact_wait);
#   * an event's owner is looked up when it is handled, not when the events were read: a
#     handler run for an earlier event may have closed it (cpython#75114).
from __future__ import annotations

import heapq
import select
import selectors
import threading
import time
from collections import deque

from ._log import log
from ._transport import ERRORS_ONLY as _ERRORS_ONLY
from ._transport import RDHUP as _RDHUP
from ._transport import Waker

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_IN, _OUT = 0x001, 0x004  # epoll's bits, which poll() reads on every platform (see make_wait)
# A selectors mask in epoll's bits. Reading asks for EPOLLRDHUP too: it says the peer has shut
# down writing, so a read that empties the socket has read the EOF as well (_transport.RDHUP).
# ERRORS_ONLY asks for nothing: epoll reports a socket's errors and hang-ups whatever it is asked
# (a transport registers it on epoll alone: see Transport.update_interest).
_EPOLL_BITS = {_READ: _IN | _RDHUP, _WRITE: _OUT, _READ | _WRITE: _IN | _OUT | _RDHUP, _ERRORS_ONLY: 0}
# epoll_wait takes whole milliseconds in a C int, which a wait of 24.8 days overflows (a 30-day
# idle_timeout, or `watch 2200000 ping` from any client, made poll() raise); waking once a day
# to find nothing due costs nothing.
LONGEST_WAIT = 86400.0
_WAKER_LOCK = threading.Lock()
monotonic = time.monotonic
_select = select.select
_FD_SETSIZE = 1024  # select()'s limit on Linux, where epoll is
# The idle connections one reap() closes at most, end or no end: closing one costs about 13 us
# of CPU (a reset and its epoll_ctl DEL), and a thousand connections can come due together.
REAP_BATCH = 64


class TimerHandle:
    """What :meth:`Server.call_later` returns: ``cancel()`` forgets the callback, and lets go of
    it and its arguments, if it has not run yet; after it ran, or a second time, it does nothing.

    After a fork, a relistening child (``after_fork="relisten"``) takes the server's timers over
    and their handles with them: ``cancel()`` in the child cancels the child's timer, in the
    parent the parent's. In a child that does not relisten the server is closed, and its timers
    with it: ``cancel()`` does nothing there. Call it on the thread that polls (from a handler,
    a timer or the host's loop), as the heap it changes is that thread's."""

    __slots__ = ("_entry",)

    def __init__(self, entry: List[Any]) -> None:
        # The heap entry [when, sequence, callback, args, loop]: its loop is the one whose heap
        # holds it (adopt_timers moves it to a relistening child's loop), so the handle follows.
        self._entry = entry

    def cancel(self) -> None:
        """Cancels the call, if it has not run yet."""
        entry = self._entry
        entry[4].cancel_timer(entry)


class Loop:
    """The reactor state of one server: selector, owners, ready queue, timers and waker."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats
        self.clock = monotonic
        self.selector = selectors.DefaultSelector()
        self.owners: Dict[int, Any] = {}  # fd -> Transport, Listener or Waker
        self.wait = make_wait(self.selector)
        self.epoll = _epoll_of(self.selector)  # the kernel poller, to (un)register with directly
        # poll(timeout=t > 0)'s wait, to the microsecond where the poller counts milliseconds
        self.wait_exactly = self.wait if self.epoll is None else make_exact_wait(self.epoll, self.wait)
        self.connections: Dict[int, Any] = {}  # fd -> Connection (the session)
        self.ready: Deque[Any] = deque()  # sessions whose turn is due in this poll
        self.later: List[Any] = []  # and those whose next turn waits for the next poll
        # Odd while a poll() handles its events, even between polls: a session's turn_at is set
        # to it when it has its turn (its read, or the ready queue's pass), so that schedule()
        # can tell it had one in this poll.
        self.polls = 0
        self.read_owed = False  # this poll has an end and has not read yet: see handle()
        self.timers: List[List[Any]] = []  # [when, sequence, callback or None, args] heap
        self._timer_seq = 0
        self._cancelled = 0  # cancelled entries still in the timer heap
        # The end (stop_at) of the poll whose timers are running, or None: a callback with work
        # of its own to bound (IdleReaper.reap) stops there too.
        self.timers_end: Optional[float] = None
        self.calls: Deque[Callable[[], Any]] = deque()
        # fd -> a TLS transport whose records wait decrypted (read_pending): the next poll's events
        self.pending_reads: Dict[int, Any] = {}
        self.waker: Optional[Waker] = None
        self.stopped = False  # the server closed: nothing more runs
        # attach_asyncio()/start_thread() handle: kicked when work is queued outside poll()
        self.integration: Any = None
        self.reaper: Optional[IdleReaper] = None
        # poll()'s own watcher (the operator toolkit's stall watchdog), or None: entered() as
        # poll() starts, handling() once it has work, exited() as it returns.
        self.watch: Any = None
        # The toolkit's gap watch (_activity): the clock reading as the last poll() returned,
        # so the next one can tell how long the host was away (stats.poll_gap_max); inf before
        # the first poll(), None when the gap is not measured.
        self.gap_from: Optional[float] = None

    # ---- the selector ----
    # On epoll, (un)registration goes to the kernel poller the selector wraps, as poll()'s
    # wait does (see make_wait): selectors' register() builds a SelectorKey and updates two maps
    # of its own, which made it the costliest Python of accepting a one-shot client. The
    # owners map is ours either way; elsewhere the selector does it all.

    def register(self, sock: Any, mask: int, owner: Any) -> None:
        fd = sock.fileno()
        if self.epoll is not None:
            if fd in self.owners:
                raise KeyError(f"{sock!r} is already registered")  # as selectors says it
            self.epoll.register(fd, _EPOLL_BITS[mask])
        else:
            self.selector.register(sock, mask, owner)
        self.owners[fd] = owner

    def modify(self, sock: Any, mask: int, owner: Any) -> None:
        if self.epoll is not None:
            self.epoll.modify(sock.fileno(), _EPOLL_BITS[mask])
        else:
            self.selector.modify(sock, mask, owner)

    def unregister(self, sock: Any) -> None:
        fd = sock.fileno()
        if fd < 0:  # closed already (out of epoll too, unless a fork holds a copy): find its old fd
            fd = next((known for known, owner in self.owners.items() if getattr(owner, "sock", None) is sock), fd)
        if self.epoll is not None:
            if self.owners.pop(fd, None) is None:
                raise KeyError(f"{sock!r} is not registered")  # as selectors says it
            try:
                self.epoll.unregister(fd)
            except OSError:  # as selectors does: the descriptor is gone, and epoll with it
                pass
        else:
            self.selector.unregister(sock)
            self.owners.pop(fd, None)

    def forget(self, transport: Any) -> None:
        """A transport closed: its session is no longer one of our connections."""
        fd = transport.sock.fileno()
        if fd < 0:  # its socket was closed first: find the descriptor it had
            fd = next((known for known, conn in self.connections.items() if conn.transport is transport), fd)
        self.connections.pop(fd, None)
        if self.reaper is not None:
            self.reaper.prune(len(self.connections))

    # ---- one tick ----

    def work_left(self) -> bool:
        """Work the next poll() has without a socket event: sessions whose turn is due, calls,
        TLS records read and not yet decoded, or a timer already due (a poll that reached its
        end leaves the rest of the due ones)."""
        timers = self.timers
        return bool(self.ready or self.calls or self.pending_reads or (timers and timers[0][0] <= monotonic()))

    def timeout_for(self, timeout: Optional[float]) -> Optional[float]:
        """How long poll(timeout) may wait with no work queued (poll() checks that, and the
        common cases, itself): no later than the first timer, and at most LONGEST_WAIT."""
        if self.timers:
            wait = max(0.0, self.timers[0][0] - monotonic())
            timeout = wait if timeout is None else min(timeout, wait)
        if timeout is not None and timeout > LONGEST_WAIT:
            timeout = LONGEST_WAIT
        return timeout

    def handle(self, events: List[Tuple[int, int]], budget: Optional[float], until: Optional[float] = None) -> int:
        """Handles one poll's events, calls, timers and ready sessions; no request starts
        after ``until`` (the end of poll's timeout) or after ``budget`` seconds of this, but
        the first.

        Every poll() with work makes progress, however short the timeouts or budget a host
        passes: one read is owed to a poll with an end (read_owed: a socket's read goes ahead past
        the end until one brings bytes, and a TLS handshake step takes it: take_owed_read), the first request a
        read or the ready queue runs needs no time left, and with an end the events are taken
        in an order that turns, so that an end reached early every time does not always leave
        out the same connections."""
        start = now = monotonic()  # after the wait: a poll's recorded duration is its work
        stop_at = None if budget is None else start + budget
        if until is not None and (stop_at is None or until < stop_at):
            stop_at = until
        self.polls += 1
        stats = self.stats
        commands = stats.commands
        taken = self.pending_reads  # kept whole: see keep_pending_reads
        if taken:
            events = self.with_pending_reads(events)
        handled = len(events)
        if stop_at is not None:
            self.read_owed = True  # until a read happens (Transport.handle_event)
            if handled > 1:
                turn = (self.polls >> 1) % handled
                events = events[turn:] + events[:turn]
        fd = -1  # the walk's place, for keep_pending_reads: -1 before it starts
        try:
            owners = self.owners
            try:
                for fd, event in events:
                    owner = owners.get(fd)
                    if owner is not None:
                        owner.handle_event(event, now, stop_at)
            except BaseException:  # KeyboardInterrupt from a handler: the host's, not the clients'
                if taken:
                    self.keep_pending_reads(taken, events, fd)
                raise
            while self.calls and not self.stopped:  # a callback may close the server: then nothing runs
                handled += 1
                self.calls.popleft()()
            if self.timers and self.timers[0][0] <= now and not self.stopped:
                handled += self.run_timers(now, stop_at)
            ready = self.ready
            if ready:
                # The sessions whose turn is due: a Pending answered, a stream to pump, output
                # drained. (A read runs its session's turn at once, in the transport's handle_event.)
                served = stats.commands != commands  # a read's turn ran a request already
                for _ in range(len(ready)):
                    if served and stop_at is not None and monotonic() >= stop_at:
                        break
                    conn = ready.popleft()
                    conn.scheduled = False
                    if conn.transport.closed or self.stopped:  # closed by a handler: nothing more runs
                        continue
                    conn.turn_at = self.polls  # its turn in this poll: see schedule()
                    try:
                        conn.service(stop_at)
                    except BaseException:  # KeyboardInterrupt from a handler: finish this queue later
                        self.schedule(conn)
                        raise
                    served = True
        finally:
            self.read_owed = False
            self.polls += 1
            if self.later:  # the sessions that had their turn in this poll and have more to do
                self.ready.extend(self.later)
                self.later.clear()
        stats.busy_polls += 1
        stats.durations.append(monotonic() - start)
        ran: int = stats.commands - commands
        return handled + ran  # the events, calls and timers, and the requests run

    def read_pending(self, transport: Any) -> None:
        """Reads ``transport`` in the next poll as though its socket were readable: TLS records
        already decrypted sit in the SSL object, and no event says so."""
        self.pending_reads[transport.sock.fileno()] = transport

    def with_pending_reads(self, events: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
        """This poll's events, and a readable one for each transport read_pending() named. They
        join the list before it turns (see handle), so they take their share of a poll with an
        end as a socket does: read after the events, a chatty client's read took every poll's
        owed read and they waited for good. One whose socket has an event already reads in that
        event (a write event gains the readable bit): one read a poll."""
        pending = dict(self.pending_reads)  # handle() keeps the original: see keep_pending_reads
        self.pending_reads = {}  # what this poll's turns name again is for the next one
        owners = self.owners
        merged = []
        for fd, event in events:
            if fd in pending and owners.get(fd) is pending.pop(fd):
                event |= _IN  # a write event alone would not read: one event, and its one read
            merged.append((fd, event))
        merged.extend((fd, _IN) for fd, transport in pending.items() if owners.get(fd) is transport)
        return merged

    def keep_pending_reads(self, taken: Dict[int, Any], events: List[Tuple[int, int]], at: int) -> None:
        """An exception (a handler's KeyboardInterrupt) ended handle()'s walk of ``events`` at
        descriptor ``at``'s: the transports of ``taken`` (the read_pending() entries this poll
        took into its events) from there on hold their records still, and no event will say so,
        so the next poll reads them. The interrupted one is kept too: the exception may have cut
        its turn short before its transport looked for records left over, and a read that finds
        none costs one recv. (``at`` is -1, or not found: the walk had not started; all are kept.)"""
        start = next((i for i, (fd, _) in enumerate(events) if fd == at), 0)
        owners = self.owners
        for fd, _ in events[start:]:
            transport = taken.get(fd)
            if transport is not None and owners.get(fd) is transport:  # still open: not closed by a handler
                self.pending_reads[fd] = transport

    def take_owed_read(self) -> bool:
        """True once in a poll with an end (a budget or timeout) that has not read yet: the TLS
        handshake step that the end would refuse goes ahead, so the poll makes progress however
        early its end comes. (A plain read tests read_owed itself, and leaves it owed when the
        socket had nothing: see Transport.handle_event.)"""
        owed = self.read_owed
        self.read_owed = False
        return owed

    def wake(self, conn: Any, on_owner_thread: bool) -> None:
        """Services ``conn`` in the next poll(), from the polling thread or any other."""
        if on_owner_thread:
            self.schedule(conn)
            if self.integration is not None:  # outside poll(), an event loop must be told
                self.integration.kick()
        else:
            self.call_soon_threadsafe(lambda: self.schedule(conn))

    def schedule(self, conn: Any) -> None:
        """Gives ``conn`` a turn: in this poll, unless it had one in it already (its turn
        reached its limits, a handler woke its own connection, its flush a stream, or another
        connection's handler answered its Pending), or in the next when called between polls.
        So a connection has at most one turn per poll, and at most K requests in it."""
        if not conn.scheduled and not conn.transport.closed:
            conn.scheduled = True
            if conn.turn_at == self.polls:
                self.later.append(conn)
            else:
                self.ready.append(conn)

    # ---- timers and cross-thread calls ----

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> List[Any]:
        """Schedules ``callback(*args)``; returns the timer, for cancel_timer()."""
        if self.stopped:  # closed: it would never run, and next_deadline() would report it for good
            return [float("inf"), 0, None, ()]
        self._timer_seq += 1
        timer = [monotonic() + delay, self._timer_seq, callback, args]
        heapq.heappush(self.timers, timer)
        if self.integration is not None:  # an event loop must re-arm for an earlier deadline
            self.integration.kick()
        return timer

    def call_later_kept(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """call_later() for the server's own timers (the host's and the toolkit's, through
        Server.call_later): a relistening child's new loop takes them over (adopt_timers). The
        connections' timers stay behind with their connections. The timer's fifth item, the loop
        that holds it, marks it kept and is where its handle cancels it."""
        timer = self.call_later(delay, callback, *args)
        timer.append(self)
        return TimerHandle(timer)

    def adopt_timers(self, timers: List[List[Any]]) -> None:
        """Takes over the kept timers of a forked parent's loop, due when they were: the
        monotonic clock is the machine's, the same in parent and child. The entries themselves
        move (this process's copies), so the handles made before the fork cancel them here."""
        for timer in timers:
            if len(timer) > 4 and timer[2] is not None:
                self._timer_seq += 1
                timer[1], timer[4] = self._timer_seq, self
                heapq.heappush(self.timers, timer)

    def cancel_timer(self, timer: Optional[List[Any]]) -> None:
        """Forgets a timer that is no longer needed (a Pending answered long before its timeout).

        Its entry stays in the heap, inert, until it comes due or the heap is rebuilt: as in
        asyncio, the heap is rebuilt once cancelled entries are more than half of it, so a
        client that makes many deferred requests with long timeouts cannot pile them up."""
        if timer is None or timer[2] is None:
            return
        timer[2] = timer[3] = None  # and lets go of what the callback held
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self.timers):
            self.timers = [entry for entry in self.timers if entry[2] is not None]
            heapq.heapify(self.timers)
            self._cancelled = 0

    def run_timers(self, now: float, stop_at: Optional[float] = None) -> int:
        """Runs the timers due at ``now``, and returns how many ran. Past ``stop_at`` (the
        poll's end) only the first runs, so that the poll makes progress; the rest stay due, and
        the next poll does not wait for them (timeout_for: the first is due already)."""
        fired = 0
        timers = self.timers
        self.timers_end = stop_at
        # A callback may close the server (close() takes effect as the poll returns): then
        # nothing more runs, the timers due with it neither.
        while timers and timers[0][0] <= now and not self.stopped:
            if fired and stop_at is not None and monotonic() >= stop_at:
                break  # the rest wait, due: timers due together (Pending timeouts) would run on past it
            timer = heapq.heappop(timers)
            callback = timer[2]
            if callback is None:  # cancelled
                self._cancelled -= 1
                continue
            args = timer[3]
            timer[2] = timer[3] = None  # fired: a cancel_timer() from now on does nothing
            fired += 1
            callback(*args)
        return fired

    def call_soon_threadsafe(self, callback: Callable[[], Any]) -> None:
        if self.stopped:
            return
        self.calls.append(callback)
        waker = self.waker or self.make_waker()
        if waker is not None:
            waker.wake()

    def make_waker(self) -> Optional[Waker]:
        with _WAKER_LOCK:
            if self.waker is None:
                if self.stopped:  # another thread closed us since the caller looked
                    return None
                waker = Waker()
                self.register(waker.reader, _READ, waker)
                self.waker = waker
        return self.waker

    def close(self) -> None:
        if self.waker is not None:
            self.waker.close()
        self.owners.clear()  # an event still in this poll's list finds no owner
        self.pending_reads.clear()
        # Nothing runs once closed: a host loop that waits on next_deadline() and busy (Tk's, Qt's)
        # would otherwise be told of a timer due, or of work, for good, and spin on them.
        self.timers = []
        self.ready.clear()
        self.later.clear()
        self.calls.clear()
        self.selector.close()

    def abandon(self, reason: str) -> None:
        """In a forked child: closes this process's copies of every descriptor (the epoll fd,
        the waker, the clients' sockets) and sends nothing. The parent holds the same sockets:
        a shutdown() or a reset here would end its connections too. poll() then raises."""
        self.stopped = True
        for conn in list(self.connections.values()):
            transport = conn.transport  # closed with no I/O: nothing more runs or is written here
            transport.closed = True
            transport.out, transport.out_size, transport.mask = None, 0, 0
            transport.sock.close()  # a plain close: the parent's copy keeps the connection
        self.connections.clear()
        self.ready.clear()
        self.later.clear()
        self.calls.clear()
        self.pending_reads.clear()
        self.timers = []
        self.close()

        def wait(timeout: Optional[float]) -> List[Tuple[int, int]]:
            from ._errors import ReactorMgmtError

            raise ReactorMgmtError(reason)

        self.wait = self.wait_exactly = wait


def _epoll_of(selector: selectors.BaseSelector) -> Any:
    """The select.epoll object an EpollSelector wraps (its documented-in-source ``_selector``),
    or None for any other selector."""
    raw = getattr(selector, "_selector", None)
    if isinstance(selector, getattr(selectors, "EpollSelector", ())) and hasattr(raw, "poll"):
        return raw
    return None


def make_wait(selector: selectors.BaseSelector) -> Callable[[Optional[float]], List[Tuple[int, int]]]:
    """Returns wait(timeout) -> [(fd, events)], the kernel call poll() makes, events in
    epoll's bits (_IN, _OUT).

    selectors.EpollSelector.select() spends more time wrapping results in SelectorKeys than
    epoll_wait() itself takes, and an idle poll(0) is nothing but that call. So on epoll we
    call the kernel poller it wraps directly (the loop registers with it directly too): its
    (fd, events) pairs are what poll() reads, mapped to owners by our own dict. (epoll.poll
    rounds a timeout up to whole milliseconds, so it never wakes early and spins; a poll that
    may block waits with make_exact_wait instead.) Elsewhere the selector's results are
    translated to the same shape.
    """
    raw = _epoll_of(selector)
    if raw is not None:
        return raw.poll  # type: ignore[no-any-return]

    def wait_generic(timeout: Optional[float]) -> List[Tuple[int, int]]:
        return [
            (key.fd, (_IN if mask & _READ else 0) | (_OUT if mask & _WRITE else 0))
            for key, mask in selector.select(timeout)
        ]

    return wait_generic


def make_exact_wait(
    epoll: Any, wait: Callable[[Optional[float]], List[Tuple[int, int]]]
) -> Callable[[Optional[float]], List[Tuple[int, int]]]:
    """Returns the wait of poll(timeout=t) for t > 0 on epoll: it returns at t, not up to a
    millisecond after it.

    epoll_wait counts whole milliseconds and CPython rounds a timeout up, so a host loop's
    poll(timeout=time_left) started every frame up to 1 ms late even with no load at all (a
    60 Hz host: p99 1.08 ms). Here epoll waits the whole milliseconds, and select() on the
    epoll descriptor, which takes microseconds and is readable once any registered socket is,
    waits the rest. A wait that events end early costs no more than before; one that runs out
    costs one more kernel call. select() takes descriptors below FD_SETSIZE only: an epoll
    descriptor above it (a host with over a thousand files open before it built the server)
    keeps the rounded wait.
    """
    fd = epoll.fileno()
    if fd >= _FD_SETSIZE:
        return wait
    poll = epoll.poll

    def wait_exactly(timeout: Optional[float]) -> List[Tuple[int, int]]:
        if timeout is None:
            return poll(None)  # type: ignore[no-any-return]
        whole = int(timeout * 1000.0)
        if whole:
            # Half a millisecond under: rounded up, that is exactly `whole` ms, where
            # whole / 1000 itself may round up to one more (0.016 is 16000000.000000002 ns).
            events: List[Tuple[int, int]] = poll((whole - 0.5) * 1e-3)
            if events:
                return events
            # epoll never returns early with nothing (a signal's EINTR is retried with the time
            # left, PEP 475): what remains is the fraction, with no clock read.
            timeout -= whole * 1e-3
            if timeout <= 0.0:  # whole milliseconds (9 * 1e-3 is 0.009000000000000001): done
                return events
        if _select((fd,), (), (), timeout)[0]:
            return poll(0)  # type: ignore[no-any-return]
        return []

    return wait_exactly


class IdleReaper:
    """Closes connections idle for ``idle_timeout`` seconds.

    It has a heap of its own, of (deadline, id, transport), and one timer in the loop's heap
    for its earliest entry: a general timer entry per connection (callback, args tuple) would
    cost about 150 more bytes per idle connection. A deadline is checked against last_active
    only when it comes due, so traffic costs nothing here.
    """

    def __init__(self, loop: Loop, idle_timeout: float) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.heap: List[Tuple[float, int, Any]] = []
        self.armed = False

    def watch(self, conn_id: int, transport: Any, deadline: float) -> None:
        heapq.heappush(self.heap, (deadline, conn_id, transport))
        if not self.armed:
            self.armed = True
            self.loop.call_later(max(0.0, deadline - monotonic()), self.reap)

    def prune(self, open_connections: int) -> None:
        heap = self.heap
        if len(heap) > 2 * open_connections + 64:  # drop closed entries: bounded under churn
            self.heap = [entry for entry in heap if not entry[2].closed]
            heapq.heapify(self.heap)

    def reap(self) -> None:
        """Closes the connections due and idle: the first, then more until the poll's end (the
        loop's timers_end) or REAP_BATCH of them; the rest are due still, and the reaper's next
        timer, armed for them at once, is the next poll's (a thousand connections that came due
        together took one poll 12 ms past a 2 ms timeout)."""
        self.armed = False
        heap = self.heap
        now = monotonic()
        limit = self.idle_timeout
        stop_at = self.loop.timers_end
        examined = 0
        while heap and heap[0][0] <= now:
            if examined and (examined >= REAP_BATCH or stop_at is not None and monotonic() >= stop_at):
                break
            _, conn_id, transport = heapq.heappop(heap)
            if transport.closed:
                continue  # closed since (no work here): not counted
            examined += 1
            idle_for = now - transport.last_active
            # Waiting on a Pending or a Stream with nothing unsent is the host's time, not the
            # client's (a quiet `log tail`). Unsent output that the client has not drained for a
            # whole period (a write event refreshes last_active) is a stalled client: reaped.
            busy = transport.conn.waiting is not None and transport.out is None
            if idle_for >= limit and not busy and transport.out is not None:
                # Write events are sparse while the kernel holds megabytes: whether the client
                # drained anything shows in whether the kernel takes more now.
                unsent = transport.out_size
                transport.flush()
                if transport.closed:
                    continue
                if transport.out_size < unsent:
                    transport.last_active = now
                    idle_for = 0.0
            if idle_for >= limit and not busy:
                log.debug("closing connection #%d: idle for %.0f s", conn_id, idle_for)
                transport.reset()  # a stalled reply ends in a reset, not an EOF
            else:
                # Active since (idle_for < limit, so this is in the future), or busy: look again
                # a full period later.
                deadline = now + limit if busy else transport.last_active + limit
                heapq.heappush(heap, (deadline, conn_id, transport))
        if heap and not self.armed:
            self.armed = True
            self.loop.call_later(max(0.0, heap[0][0] - now), self.reap)
