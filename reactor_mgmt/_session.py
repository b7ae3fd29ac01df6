# One client's session: the state between its bytes and its replies, with no socket in it.
#
# Bytes come in through data_received() (from the transport, or from a test; b"" is the EOF, and
# so is its ``eof`` flag after the bytes it comes with), go through the connection's
# RequestDecoder, and queue as requests; service() runs them, in order and within this tick's
# limits, through the dispatcher, whose replies go to the transport's write(). (A lone request
# in a read with nothing queued runs without the queue, exactly as service() would run it.) A
# Pending or Stream reply parks the session (``waiting``) and the requests behind it wait, so
# replies stay in request order. The clock comes from the dispatcher and the output from the
# transport, both given, so a test drives a session with a fake transport (a list of writes)
# and a fake clock, as h11's tests drive a Connection.
#
# A read is the session's turn: its requests run as their bytes arrive (as an asyncio protocol
# answers from data_received()), and their replies are sent at the end of that turn, at once,
# with no wait for a write event ("try to send now", as asyncio's write() tries). What a turn
# leaves for its limits waits for the next poll (see _loop.Loop.schedule); a session with other
# work due (a Pending answered, a stream to pump) has its turn in the loop's ready queue.
# One object exists for every open client, often thousands of idle ones, so it uses __slots__
# and allocates nothing until the client sends its first byte.
from __future__ import annotations

from collections import deque

from ._protocol import RequestDecoder
from ._replies import Stream

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Deque, Optional


_QUEUE: Any = object()  # data_received()'s default: queue the requests and wait for service()


class Connection:
    """One client of the management socket, as seen by a handler.

    A handler receives it by declaring a parameter annotated ``Connection``. ``write(text)``
    queues output behind the replies already queued (so keep to the handler's own turn), and
    ``close()`` flushes everything queued and then closes. ``level`` is its access level (a
    rank into LEVELS; ``level_name`` spells it), ``authenticated`` whether it has passed
    ``auth``, ``peer`` its address and ``id`` its number on this server.
    """

    __slots__ = (
        "server",
        "dispatcher",
        "transport",
        "listener",
        "_peer",
        "decoder",
        "queue",
        "waiting",
        "waiting_id",
        "level",
        "authenticated",
        "auth_failures",
        "eof",
        "scheduled",
        "turn_at",
        "id",
        "last_request",
        "__weakref__",  # a Pending's waiter and timeout hold the session weakly (see _dispatch)
    )

    # The session knows its server, dispatcher, transport and listener only by the few methods
    # it calls on them, so they are typed Any: the engine layer imports nothing above it, not
    # even for a type checker (a fake transport and clock stand in for them in tests).
    def __init__(
        self, server: Any, dispatcher: Any, transport: Any, listener: Any, conn_id: int, level: int, authenticated: bool
    ) -> None:
        self.server = server  # what wake() goes through; and the server a handler may inspect
        self.dispatcher = dispatcher
        self.transport = transport
        self.listener = listener
        self._peer: Any = None  # looked up on first use: most connections never need it
        self.id = conn_id
        self.decoder: Optional[RequestDecoder] = None
        self.queue: Optional[Deque[Any]] = None
        self.waiting: Any = None  # a Pending or Stream that later requests queue behind
        self.waiting_id: Any = None  # how to frame its reply: the JSON id, or TEXT
        self.level = level
        self.authenticated = authenticated
        self.auth_failures = 0
        self.eof = False  # the peer half-closed: finish the queue, flush, then close
        self.scheduled = False  # its next turn is due: in the loop's ready queue (or later, for the next poll)
        self.turn_at = 0  # the loop's poll count at its last turn: a read, or the ready queue's (Loop.schedule)
        self.last_request: Any = None  # (command, args, kwargs) it ran last, kept only for `clients`

    # ---- the public surface a handler uses ----

    def write(self, text: str | bytes) -> None:
        """Queues text for this client; a missing final newline is added.

        Past the server's ``high_water + max_output`` of unsent output the client is cut off: it
        is told so, and the connection closes. A handler with a lot to say should return a generator (a
        streaming reply), which only runs while the client keeps up.
        """
        if self.transport.closed:
            return
        data = text.encode() if isinstance(text, str) else bytes(text)
        if data and not data.endswith(b"\n"):
            data += b"\n"
        self.transport.write(data)
        # Outside a handler's turn (the host pushing a notice between polls) nothing else would
        # flush it: the connection must be serviced on the next poll, and an event loop told.
        self.server.wake(self)

    def close(self) -> None:
        """Closes after everything queued so far has been sent."""
        if not self.transport.closed:
            self.transport.close()
            self.server.wake(self)  # outside poll() an event loop must hear of it

    @property
    def closed(self) -> bool:
        closed: bool = self.transport.closed  # typed here: the transport is Any (see __init__)
        return closed

    @property
    def closing(self) -> bool:
        """No more requests run: the connection closes once its output is sent."""
        closing: bool = self.transport.closing
        return closing

    @property
    def peer(self) -> Any:
        """The client's address: ``(host, port)``, or the socket path for a Unix listener."""
        if self._peer is None:
            peer = self.transport.peername()
            if peer is None:  # the socket is gone already: not worth keeping
                return self.listener.address
            self._peer = peer or self.listener.address
        return self._peer

    @property
    def level_name(self) -> str:
        from ._commands import LEVELS

        return LEVELS[self.level]

    @property
    def buffered_output(self) -> int:
        """Bytes queued for this client and not yet accepted by the kernel."""
        size: int = self.transport.out_size
        return size

    def __repr__(self) -> str:
        return f"<Connection #{self.id} {self.peer!r}{' closed' if self.closed else ''}>"

    # ---- input, from the transport ----

    def wants_input(self) -> bool:
        """Whether reading now can be useful: with requests still queued, reading more would let
        the queue grow by a read per tick, so it waits; a running subscription is the
        exception, since any input stops it."""
        return not self.queue or self.subscribed()

    def subscribed(self) -> bool:
        """A subscription (`log tail`, `watch`) is running: input stops it, and is not queued."""
        waiting = self.waiting
        return waiting.__class__ is Stream and waiting.until_input

    def streaming(self) -> bool:
        return self.waiting.__class__ is Stream

    def data_received(self, data: bytes, stop_at: Any = _QUEUE, eof: bool = False) -> None:
        """Bytes from the client; b"" is its EOF (a half-close), as recv() says it, and so is
        ``eof`` true: these bytes are its last (the transport can tell, see _transport.RDHUP).

        The transport passes the poll's ``stop_at`` (None without a budget or timeout): the
        requests then run at once, unless this connection's turn is already due in the loop's
        ready queue.
        Without it (sans-I/O, a test) they are queued and the connection is scheduled: service()
        runs them."""
        decoder = self.decoder
        if decoder is None:
            decoder = self.decoder = RequestDecoder(self.dispatcher.max_line)
        if data:
            items = decoder.feed(data)
            if eof:
                self.eof = True
                items += decoder.feed_eof()
        else:  # the client half-closed: what it sent runs, then the connection closes (service)
            self.eof = True
            items = decoder.feed_eof()
        if decoder.keep_blank:  # a subscription is running: any line, even a blank one, ends it
            if items or self.eof:
                self.dispatcher.end_stream(self)
                if items and items[0].__class__ is str:
                    del items[0]  # the line that stopped it is not a request; an event still counts
                if "" in items:  # noting where one follows a line: a subscription behind it stops
                    items = decoder.drop_blank(items)
        if items:
            transport = self.transport
            dispatcher = self.dispatcher
            if (
                len(items) == 1
                and self.queue is None
                and self.waiting is None
                and not self.scheduled
                and stop_at is not _QUEUE
                and dispatcher.observer is None
                and not dispatcher.stopped
                and not transport.closing
                and not transport.closed
                and transport.out_size < transport.limits.high_water
            ):
                # One request in a read, nothing queued: what a client that waits for each reply
                # sends (nc, a script, a probe; the round trip, fan-in and one-shot workloads).
                # It runs here as service() would run it as the first request of its turn (no
                # budget check, within every limit above), with no deque made for it and no pass
                # of service()'s loop; then the rest of the turn: a reply parked behind it, the
                # EOF, the flush (end_turn). tests/test_session.py pins this to the queued path.
                try:
                    dispatcher.execute(self, items[0])
                    if self.waiting is not None:  # a reply parked: service() moves it along
                        self.service(stop_at)
                    elif not transport.closed and not dispatcher.stopped:  # else the tear-down's
                        self.end_turn()
                except BaseException:  # KeyboardInterrupt from a handler: as below
                    dispatcher.schedule(self)
                    raise
                return
            if self.queue is None:
                self.queue = deque(items)
            else:
                self.queue.extend(items)
        if self.scheduled:  # its turn is due in the ready queue already: the requests wait for it
            return
        if stop_at is _QUEUE:
            self.dispatcher.schedule(self)
            return
        # The connection's turn, now: a request runs as its bytes arrive and its reply is sent
        # at once, as an asyncio protocol answers from data_received() through write().
        try:
            self.service(stop_at)
        except BaseException:  # KeyboardInterrupt from a handler: the rest of the queue runs later
            self.dispatcher.schedule(self)
            raise

    def eof_received(self, stop_at: Any = _QUEUE) -> None:
        """The client half-closed: data_received(b"")."""
        self.data_received(b"", stop_at)

    # ---- running requests ----

    def service(self, stop_at: Optional[float] = None) -> int:
        """Runs queued requests and pumps a waiting reply, within this tick's limits, then
        flushes; returns the number of requests run. What is left waits for the next tick."""
        transport = self.transport
        dispatcher = self.dispatcher
        ran = 0
        queue = self.queue
        limit = dispatcher.max_commands_per_tick
        high_water = transport.limits.high_water
        clock = dispatcher.clock
        observed = dispatcher.observer is not None
        now = 0.0  # observed: the last clock reading, which starts the next request's time
        while not transport.closed and not dispatcher.stopped:  # a handler may close either
            if self.waiting is not None:
                if not dispatcher.advance(self, stop_at):
                    break
                if observed:
                    now = clock()  # a reply pumped out is no request's time
                continue
            if not queue or transport.closing:
                break
            if transport.paused or transport.out_size >= high_water:  # paused: till below low_water
                transport.paused = True
                break
            # The budget is checked before every request after the first: a clock read is cheap
            # next to a handler, and checking every 16th overran a 2 ms budget by 16 slow handlers.
            # Observed (the toolkit's slow log, audit, clients), that same reading times each
            # request: execute_observed() returns the one it took after the request.
            if ran >= limit or (stop_at is not None and ran and (now if observed else clock()) >= stop_at):
                dispatcher.schedule(self)  # more in the next poll: its turn was this poll's
                break
            ran += 1
            if observed:
                now = dispatcher.execute_observed(self, queue.popleft(), now if ran > 1 else clock())
            else:
                dispatcher.execute(self, queue.popleft())
        if transport.closed or dispatcher.stopped:  # closed by a handler: the tear-down sends the rest
            return ran
        if queue is not None and not queue:
            self.queue = None  # an empty deque still holds a 600-byte block: idle clients pay nothing
        self.end_turn()
        return ran

    def end_turn(self) -> None:
        """What ends every turn the connection survives: the EOF of a client with nothing left
        to run closes it, output above high_water pauses reading, and the replies go out now."""
        transport = self.transport
        if self.eof and not self.queue and self.waiting is None:
            transport.closing = True
        if transport.out_size >= transport.limits.high_water:
            transport.paused = True  # an empty queue must not let one more read in above high water
        transport.flush()
        if not transport.closed:
            transport.update_interest()

    # ---- ending ----

    def cancel_waiting(self) -> None:
        """Drops the reply this session waits on: a Pending is cancelled (its on_cancel
        callbacks run), a Stream's generator closed (its finally runs)."""
        if self.waiting is not None:
            self.dispatcher.cancel_waiting(self)

    def stop(self) -> None:
        """Our last reply is out (a graceful close): nothing more will run."""
        self.cancel_waiting()
        if self.queue:
            self.queue.clear()

    def connection_lost(self) -> None:
        self.queue = None
        self.cancel_waiting()
