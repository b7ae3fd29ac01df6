# The kinds of reply a handler can return that are not finished when it returns: NO_REPLY, a
# Pending the host resolves on a later tick, and a Stream sent an item at a time (with Wait
# for "nothing yet"). Pure data and callbacks: no socket, clock or logger, so the session and
# dispatcher that drive them can be tested without either.
#
# The dispatcher drives a Pending through the module functions at the bottom (watch,
# cancel, expire) rather than its private attributes, so the Pending's state changes stay here.
from __future__ import annotations

from collections.abc import Sequence

from ._errors import CommandError

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Iterator, List, Optional


class _NoReply:
    """Returned by a handler that has already written its reply, or wants none (``quit``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_REPLY"


NO_REPLY = _NoReply()


class Pending:
    """A reply the host completes on a later tick: ``resolve(value)`` or ``fail(message)``.

    Return one from a handler. Later requests on the same connection wait behind it, so replies
    stay in request order. If nobody resolves it within ``timeout`` seconds the client gets
    ``ERR timeout`` (``timeout=None`` takes the server's ``pending_timeout``, 30 s by default;
    0 waits forever); if the client goes away first, :attr:`cancelled` becomes true and the
    ``on_cancel`` callbacks run. Resolve it from the thread that calls ``poll()``.

    Several requests may return the same Pending (everyone waiting for the next frame): each
    gets the result. A timeout or a client leaving then concerns that request alone; the
    Pending is cancelled only once no request waits on it any more.
    """

    __slots__ = ("timeout", "done", "value", "error", "cancelled", "_waiters", "_cancel_callbacks", "__weakref__")

    def __init__(self, timeout: Optional[float] = None) -> None:
        self.timeout = timeout
        self.done = False
        self.value: Any = None
        self.error: Optional[CommandError] = None
        self.cancelled = False
        self._waiters: List[Callable[[], None]] = []  # one per request waiting on it
        self._cancel_callbacks: List[Callable[[], None]] = []

    def resolve(self, value: Any = None) -> None:
        if self.done or self.cancelled:
            return
        self.value = value  # before done: whoever sees done must see the value
        self.done = True
        self._notify()

    def fail(self, error: str | CommandError) -> None:
        if self.done or self.cancelled:
            return
        self.error = error if isinstance(error, CommandError) else CommandError(str(error))
        self.done = True
        self._notify()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        self._cancel_callbacks.append(callback)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []  # once: and the waiters are let go
        for waiter in waiters:
            waiter()

    def _cancel(self, on_error: Optional[Callable[[Exception], None]] = None) -> None:
        if self.done or self.cancelled:
            return
        self.cancelled = True
        self._waiters = []
        callbacks, self._cancel_callbacks = self._cancel_callbacks, []
        # Each callback runs whatever the ones before it did: one that raises must not leave
        # another's cleanup undone. Its error goes to on_error (this layer has no logger), or,
        # without one, the first is raised once all have run.
        first: Optional[Exception] = None
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:
                if on_error is not None:
                    on_error(exc)
                elif first is None:
                    first = exc
        if first is not None:
            raise first

    def _expire(self, on_error: Optional[Callable[[Exception], None]] = None) -> None:
        """The timeout passed: the client gets ERR timeout, and the host's work is cancelled."""
        waiters = self._waiters
        try:
            self._cancel(on_error)
        finally:  # whatever on_cancel raised: the client gets its ERR timeout and its later replies
            self.error = CommandError("timeout", code="timeout")
            self.done = True
            for waiter in waiters:
                waiter()


def watch(pending: Pending, waiter: Callable[[], None]) -> None:
    """Calls ``waiter()`` once, when ``pending`` is resolved, failed or expires."""
    pending._waiters.append(waiter)


def waiters_of(pending: Pending) -> List[Any]:
    """The waiters ``watch`` added that nobody has called yet."""
    return pending._waiters


def unwatch(pending: Pending, waiter: Any, on_error: Optional[Callable[[Exception], None]] = None) -> None:
    """``waiter`` no longer waits (its client left): once nobody does, ``pending`` is cancelled
    (its on_cancel callbacks run; see cancel)."""
    if waiter in pending._waiters:
        pending._waiters.remove(waiter)
    if not pending._waiters:
        pending._cancel(on_error)


def cancel(pending: Pending, on_error: Optional[Callable[[Exception], None]] = None) -> None:
    """The client went away (or nobody will wait for it): run its on_cancel callbacks, each
    one's error passed to ``on_error`` (without it, the first is raised after them all)."""
    pending._cancel(on_error)


def expire(pending: Pending, on_error: Optional[Callable[[Exception], None]] = None) -> None:
    pending._expire(on_error)


# What a request whose own timeout passed waits on instead, while others still wait on its
# Pending: answered already, with the ERR timeout.
TIMED_OUT = Pending()
TIMED_OUT.error = CommandError("timeout", code="timeout")
TIMED_OUT.done = True


class Wait:
    """Yielded by a stream that has nothing to send yet. ``until`` is a time.monotonic()
    deadline to try again, or None to sleep until something calls the server's ``wake``."""

    __slots__ = ("until",)

    def __init__(self, until: Optional[float] = None) -> None:
        self.until = until


class Stream:
    """A reply sent across ticks, one item at a time, only while the client keeps up.

    Any iterator a handler returns is wrapped in one. ``until_input=True`` makes it a
    subscription: it runs until the client sends any line (which is consumed) or leaves.
    """

    __slots__ = ("iterator", "until_input", "count", "held", "wake_at")

    def __init__(self, iterable: Iterable[Any], *, until_input: bool = False) -> None:
        self.iterator: Iterator[Any] = iter(iterable)
        self.until_input = until_input
        self.count = 0
        # Its last pump stopped at the low-water mark, not at a Wait: output, not the stream,
        # holds it back, so the flush that drains the output resumes it (Transport.flush).
        self.held = False
        # The deadline of the Wait(until) timer armed for it, or None: one timer at a time.
        self.wake_at: Optional[float] = None

    def close(self) -> None:
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()


def is_stream(value: Any) -> bool:
    if isinstance(value, Stream):
        return True
    try:
        return hasattr(value, "__next__") and not isinstance(value, (str, bytes, Sequence))
    except Exception:  # a __getattr__ that raises KeyError (a dict-backed record): not an iterator
        return False
