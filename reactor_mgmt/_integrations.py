# Ways to drive a Server from a loop the host did not write: an asyncio event loop, or (for a
# host with no loop at all) a thread of our own. They change only *when* poll() runs; the
# reactor and its rules are the same as for a host that calls poll() itself.
#
#   * attach_asyncio: the server's selector descriptor (epoll/kqueue) is itself pollable, so
#     the event loop watches it with add_reader. Two kinds of work raise no socket event, and
#     a loop timer or call_soon covers them: timers (idle reaping, pending timeouts, `watch`),
#     armed at next_deadline(), and work a bounded poll() left over (busy). Work queued outside
#     poll() on the loop's own thread (a coroutine resolving a Pending, logging into `log
#     tail`, closing a connection, call_later) reaches us through kick(), which the server
#     calls from wake() and call_later(); other threads already wake the selector through the
#     server's waker socket.
#   * start_thread: a daemon thread that only polls. Handlers then run on that thread, which is
#     the one thing this library otherwise never does; the docstring spells out the locking.
#
# Each adapter registers itself as server.integration, so server.close() detaches it before
# the selector closes: an event loop still watching a closed descriptor keeps a stale
# registration that breaks the next add_reader of a descriptor reusing its number.
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from ._errors import ConfigError

if TYPE_CHECKING:
    import asyncio
    from typing import Callable, Protocol

    class Server(Protocol):
        """What the integrations use of the server: its public surface, nothing private."""

        integration: Any
        owner_thread: int

        @property
        def closed(self) -> bool: ...
        @property
        def busy(self) -> bool: ...
        def fileno(self) -> int: ...
        def next_deadline(self) -> Optional[float]: ...
        def poll(self, timeout: Optional[float] = 0.0, budget: Optional[float] = None) -> int: ...
        def call_soon_threadsafe(self, callback: Callable[[], Any]) -> None: ...
        def ensure_waker(self) -> None: ...
        def close(self, grace: float = 0.0) -> None: ...


log = logging.getLogger("reactor_mgmt")

_monotonic = time.monotonic
_CLOSE_JOIN_TIMEOUT = 10.0  # how long close() waits for the polling thread to finish its tick


def _claim(server: Server, integration: Any) -> None:
    if server.closed:
        raise ConfigError("the server is closed")
    if server.integration is not None:
        raise ConfigError(f"the server is already driven by {server.integration!r}; detach it first")
    server.integration = integration


class AsyncioHandle:
    """Returned by :meth:`Server.attach_asyncio`; :meth:`detach` stops serving from the loop."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop, budget: Optional[float]) -> None:
        self.server = server
        self.loop = loop
        self.budget = budget
        self._fd = -1
        self._thread: Optional[int] = None  # the loop's thread, once known
        self._previous_owner = server.owner_thread
        self._soon: Any = None  # a queued poll (asyncio.Handle)
        self._timer: Any = None  # the armed deadline (asyncio.TimerHandle)
        self._timer_deadline: Optional[float] = None
        self._in_poll = False
        self._installed = False
        self.detached = False

    def _install(self) -> None:
        """Runs on the loop's thread, or on the thread that is about to run the loop."""
        if self.detached:
            return
        self._fd = self.server.fileno()
        self.loop.add_reader(self._fd, self._tick)  # may raise (a closed loop): claim nothing yet
        self._thread = threading.get_ident()
        self.server.owner_thread = self._thread
        self._installed = True
        # One poll straight away: work may have been queued before we were attached.
        self._soon = self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._soon = None
        if self.detached:
            return
        ident = threading.get_ident()
        if ident != self._thread:  # the loop was attached before it ran, from another thread
            self._thread = self.server.owner_thread = ident
        self._in_poll = True
        try:
            self.server.poll(0, self.budget)
        finally:
            # Even if a callback raised out of poll() (the loop's exception handler reports
            # it), the server must stay scheduled.
            self._in_poll = False
            self._reschedule()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        self._tick()

    def _reschedule(self) -> None:
        if self.detached:
            return
        server = self.server  # not closed: close() detaches first
        if server.busy:
            if self._soon is None:
                self._soon = self.loop.call_soon(self._tick)
            return
        deadline = server.next_deadline()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None:
            # loop.time() need not be time.monotonic() (uvloop), so convert through a delay.
            self._timer = self.loop.call_at(self.loop.time() + max(0.0, deadline - _monotonic()), self._on_timer)

    def kick(self) -> None:
        """Called by the server when work was queued outside poll(): poll again soon."""
        if self._in_poll or self._soon is not None or self.detached or not self._installed:
            return
        if self.loop.is_closed():
            # asyncio.run() has returned and the host has not closed the server yet: nobody
            # serves it now, and conn.write(), call_later() or a log line must not raise for that.
            return
        try:
            if threading.get_ident() == self._thread:
                self._soon = self.loop.call_soon(self._tick)
            else:
                self.loop.call_soon_threadsafe(self.kick)
        except RuntimeError:  # closed by another thread since the check
            pass

    def detach(self) -> None:
        """Stops serving from the loop. Idempotent; server.close() calls it first.

        Call it on the loop's thread; from another thread the removal is queued to the loop.
        """
        if self.detached:
            return
        self.detached = True
        if self.server.integration is self:
            self.server.integration = None
        self.server.owner_thread = self._previous_owner
        if self._on_loop_thread():
            self._remove()
        else:
            self.loop.call_soon_threadsafe(self._remove)

    def _on_loop_thread(self) -> bool:
        if not self.loop.is_running():
            return True
        return threading.get_ident() == self._thread

    def _remove(self) -> None:
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        self._soon = self._timer = None
        self._timer_deadline = None
        if self._installed:
            self._installed = False
            self.loop.remove_reader(self._fd)

    def __repr__(self) -> str:
        state = "detached" if self.detached else "attached"
        return f"<AsyncioHandle {state} loop={self.loop!r}>"


def attach_asyncio(
    server: Server, loop: Optional[asyncio.AbstractEventLoop] = None, *, budget: Optional[float] = None
) -> AsyncioHandle:
    """Serves ``server`` from an asyncio event loop; see :meth:`Server.attach_asyncio`."""
    import asyncio

    try:
        running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is None:
        if running is None:
            raise ConfigError("attach_asyncio() needs a loop: call it from a coroutine or pass loop=")
        loop = running
    handle = AsyncioHandle(server, loop, budget)
    _claim(server, handle)
    if running is loop or not loop.is_running():
        try:
            handle._install()
        except BaseException:  # the server stays free for another loop or a thread
            handle.detached = True
            server.integration = None
            raise
    else:  # the loop runs on another thread: add_reader is not thread-safe, so let it install us
        loop.call_soon_threadsafe(handle._install)
    return handle


def _nothing() -> None:
    pass


class ThreadHandle:
    """Returned by :meth:`Server.start_thread`; :meth:`stop` ends the polling thread."""

    def __init__(self, server: Server, name: str, poll_interval: Optional[float]) -> None:
        self.server = server
        self.poll_interval = poll_interval
        self._previous_owner = server.owner_thread
        self._stopping = False
        self._running = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _start(self) -> None:
        # The waker exists before the thread blocks: made later, by stop() on another thread, a
        # poll()- or select()-based selector already waiting would never see it.
        self.server.ensure_waker()
        self.thread.start()
        self._running.wait()  # owner_thread is the new thread's before anyone can call wake()

    def _run(self) -> None:
        server = self.server
        server.owner_thread = threading.get_ident()
        self._running.set()
        try:
            while not self._stopping and not server.closed:
                try:
                    server.poll(self.poll_interval)
                except Exception:
                    # A timer or call_soon_threadsafe callback raised: it has been consumed, so
                    # carrying on cannot spin. Said even when the thread is ending anyway.
                    ending = self._stopping or server.closed
                    log.exception(
                        "a callback raised in the %s thread; %s",
                        self.thread.name,
                        "ending" if ending else "carrying on",
                    )
                    if ending:
                        break
        except BaseException as exc:
            # SystemExit or KeyboardInterrupt from a handler (a `shutdown` that calls sys.exit)
            # ends only this thread, not the process. Say so, and close the server, so its
            # clients get EOF instead of a server that accepts and never answers.
            log.critical(
                "the %s thread ended on %s; closing the server", self.thread.name, type(exc).__name__, exc_info=True
            )
            self._stopping = True
            self._release()
            server.close()
        finally:
            self._release()  # stop() from a handler: the server is free once this thread is gone

    def _release(self) -> None:
        if self.server.integration is self:
            self.server.integration = None
            self.server.owner_thread = self._previous_owner

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Asks the thread to finish its current poll() and exit; waits up to ``timeout``.

        Returns True once the thread has exited (then the server can be polled from another
        thread again, or closed). From inside a handler it only asks, and returns False.
        """
        self._stopping = True
        if threading.get_ident() == self.thread.ident:
            return False
        if not self.server.closed:
            self.server.call_soon_threadsafe(_nothing)  # ends a blocked select() at once
        self.thread.join(timeout)
        if self.thread.is_alive():
            return False
        self._release()
        return True

    def detach(self) -> None:
        """server.close() calls this: stop the thread before the selector goes away."""
        if not self.stop(_CLOSE_JOIN_TIMEOUT) and threading.get_ident() != self.thread.ident:
            log.warning(
                "the %s thread did not stop within %g s (a handler blocks?); closing anyway",
                self.thread.name,
                _CLOSE_JOIN_TIMEOUT,
            )

    def kick(self) -> None:
        # call_later() from another thread: the blocked select() must recompute its timeout.
        if threading.get_ident() != self.thread.ident and not self._stopping:
            self.server.call_soon_threadsafe(_nothing)

    def __repr__(self) -> str:
        return f"<ThreadHandle {self.thread.name!r} {'running' if self.alive else 'stopped'}>"


def start_thread(server: Server, name: str = "reactor_mgmt", poll_interval: Optional[float] = None) -> ThreadHandle:
    """Polls ``server`` in a daemon thread; see :meth:`Server.start_thread`."""
    handle = ThreadHandle(server, name, poll_interval)
    _claim(server, handle)
    try:
        handle._start()
    except BaseException:
        server.integration = None
        raise
    return handle
