# Per-connection state. One of these exists for every open client, often thousands of idle ones,
# so it uses __slots__ and allocates nothing until the client sends its first byte: the decoder
# is created on first read, the request queue whenever requests arrive (and dropped when it
# empties), the output list on first write.
# The reactor (_server.py) owns all the logic; this class is the state it works on, plus the
# small public surface a handler may touch (write, close, level, peer).
from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Optional


class Connection:
    """One client of the management socket, as seen by a handler.

    A handler receives it by declaring a parameter annotated ``Connection``. ``write(text)``
    queues output behind the replies already queued (so keep to the handler's own turn), and
    ``close()`` flushes everything queued and then closes.
    """

    __slots__ = (
        "server",
        "sock",
        "listener",
        "_peer",
        "decoder",
        "queue",
        "out",
        "out_size",
        "mask",
        "waiting",
        "waiting_id",
        "level",
        "authenticated",
        "auth_failures",
        "last_active",
        "eof",
        "closing",
        "closed",
        "paused",
        "scheduled",
        "lingering",
        "cut_off",
        "id",
    )

    def __init__(self, server: Any, sock: Any, listener: Any, conn_id: int, now: float) -> None:
        self.server = server
        self.sock = sock
        self.listener = listener
        self._peer: Any = None  # looked up on first use: most connections never need it
        self.id = conn_id
        self.decoder: Any = None
        self.queue: Any = None
        self.out: Optional[list] = None
        self.out_size = 0
        self.mask = 0
        self.waiting: Any = None  # a Pending or Stream that later requests queue behind
        self.waiting_id: Any = None  # how to frame its reply: the JSON id, or TEXT
        self.level = listener.rank
        self.authenticated = not server.auth_required
        self.auth_failures = 0
        self.last_active = now
        self.eof = False  # the peer half-closed: finish the queue, flush, then close
        self.closing = False  # stop running requests; close once the output is flushed
        self.closed = False
        self.paused = False  # output above the high-water mark: no reads, no commands
        self.scheduled = False  # already in the server's ready queue
        self.lingering = False  # we shut down writing and are draining the peer
        self.cut_off = False  # unsent output passed its cap: only the notice saying so goes out

    def write(self, text: "str | bytes") -> None:
        """Queues text for this client; a missing final newline is added.

        Past the server's ``high_water + max_output`` of unsent output the client is cut off: it
        is told so, and the connection closes. A handler with a lot to say should return a generator (a
        streaming reply), which only runs while the client keeps up.
        """
        if self.closed:
            return
        data = text.encode() if isinstance(text, str) else bytes(text)
        if data and not data.endswith(b"\n"):
            data += b"\n"
        self.server._release_batch(self)
        self.server._write(self, data)
        # Outside a handler's turn (the host pushing a notice between polls) nothing else would
        # flush it: the connection must be serviced on the next poll, and an event loop told.
        self.server.wake(self)

    def close(self) -> None:
        """Closes after everything queued so far has been sent."""
        if not self.closed:
            self.closing = True
            self.server.wake(self)  # not _schedule: outside poll() an event loop must hear of it

    @property
    def peer(self) -> Any:
        """The client's address: ``(host, port)``, or the socket path for a Unix listener."""
        if self._peer is None:
            try:
                self._peer = self.sock.getpeername() or self.listener.address
            except OSError:
                return self.listener.address
        return self._peer

    @property
    def level_name(self) -> str:
        from ._commands import LEVELS

        return LEVELS[self.level]

    @property
    def buffered_output(self) -> int:
        """Bytes queued for this client and not yet accepted by the kernel."""
        return self.out_size

    def __repr__(self) -> str:
        return f"<Connection #{self.id} {self.peer!r}{' closed' if self.closed else ''}>"
