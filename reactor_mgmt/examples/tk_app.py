"""A tkinter application that serves its management socket from Tk's own event loop, with no
periodic polling: nothing runs while nothing happens.

Tk owns the main loop (``root.mainloop()``). Three things tell it when to call
``server.poll()``, and the ``TkDriver`` below wires each one up:

1. ``root.createfilehandler(server.fileno(), tkinter.READABLE, ...)``: the server's epoll/kqueue
   descriptor becomes readable whenever one of its sockets needs attention, so Tk's own wait
   covers the clients too;
2. an ``after()`` timer armed at ``server.next_deadline()``: the server's timers (idle
   connections, deferred-reply timeouts, ``watch``) raise no socket event;
3. ``after(0)`` while ``server.busy``: each poll() is bounded (``--budget``, and a slice of a
   pipelined burst per connection), and what it left over raises no event either. ``after(0)``
   rather than a loop lets the window's own events in between.

Work queued outside poll() on this thread (here a ``wait click`` reply that a button press
resolves, as ``click --after MS`` does from a Tk timer) reaches the driver through
``server.integration``: the server calls its ``kick()``, which polls at once.

The polling fallback: Tk on Windows has no ``createfilehandler()`` (tkinter then has no such
attribute), and a Tcl that cannot watch the descriptor raises. Only then does ``TkDriver``
poll every ``--interval`` milliseconds from ``after()`` instead (see ``TkDriver.__init__``).

Signals: with nothing periodic in the loop, Tk may sleep in its own C wait indefinitely, and
Python runs a signal handler only once the interpreter runs again. So ``signal.set_wakeup_fd()``
writes each signal to a socket that Tk also watches; its callback wakes the loop, which sees
the stop and closes the window. SIGTERM and Ctrl-C exit 0.

Handlers run on the Tk thread, so they may update widgets directly; Tk is not thread-safe, and
a server on a thread of its own would have to hand every change over to this one.

Commands: ``status`` (with ``polls``, how many times the app has called poll()), ``click [N]
[--after MS]`` (presses the button), ``wait click`` (answers at the next press),
``set text WORDS...``, ``set title WORDS...`` and ``shutdown`` (closes the window, like the
window manager would).

Try it (needs a display)::

    python -m reactor_mgmt.examples.tk_app
    printf 'click 3\\nset text hello from nc\\nstatus\\n' | nc -N 127.0.0.1 8123
"""

from __future__ import annotations

import argparse
import math
import signal
import socket
import sys
import time
import tkinter
from typing import Any, Callable, Dict, List, Optional

from reactor_mgmt import CommandError, Pending, Server

# What a Tk without usable file handlers raises: AttributeError where tkinter has no
# createfilehandler at all (Windows), RuntimeError or TclError where Tcl refuses it.
_NO_FILE_HANDLERS = (AttributeError, NotImplementedError, RuntimeError, tkinter.TclError)


class App:
    def __init__(self, root: tkinter.Tk) -> None:
        self.root = root
        self.clicks = 0
        self.click_waiters: List[Pending] = []
        self.driver: Optional[TkDriver] = None  # set once the server exists
        root.title("reactor_mgmt tk example")
        self.message = tkinter.Label(root, text="Hello", width=40)
        self.message.pack(padx=10, pady=5)
        self.counter = tkinter.Label(root, text="0 clicks")
        self.counter.pack(pady=5)
        self.button = tkinter.Button(root, text="Click me", command=self.on_click)
        self.button.pack(pady=5)

    def on_click(self) -> None:
        self.clicks += 1
        self.counter.configure(text=f"{self.clicks} clicks")
        waiters, self.click_waiters = self.click_waiters, []
        for pending in waiters:
            pending.resolve(f"{self.clicks} clicks")


class TkDriver:
    """Calls server.poll() from Tk's loop when there is something to do, and only then."""

    def __init__(
        self, root: tkinter.Tk, server: Server, *, budget: float, interval_ms: int, should_stop: Callable[[], bool]
    ) -> None:
        self.root, self.server = root, server
        self.budget, self.interval_ms, self.should_stop = budget, interval_ms, should_stop
        self.polls = 0  # poll() calls: `status` reports it, so a test can see there is no polling
        self.timer: Optional[str] = None  # the armed after() id
        self.timer_at: Optional[float] = None  # the deadline it is armed for (None: "at once")
        self.in_poll = self.detached = False
        self.fd = server.fileno()
        try:
            root.createfilehandler(self.fd, tkinter.READABLE, lambda fd, mask: self.tick())
            self.mode = "file handler"
        except _NO_FILE_HANDLERS:
            self.mode = "polling"  # the fallback: every interval_ms, see the module docstring
        server.integration = self  # the server calls kick() for work queued outside poll()
        self.kick()  # work may be queued already

    def on_timer(self) -> None:
        self.timer = self.timer_at = None
        self.tick()

    def tick(self) -> None:
        self.polls += 1
        self.in_poll = True
        try:
            self.server.poll(0, budget=self.budget)
        finally:
            # Even when a handler's exception escapes poll() (Tk reports it and carries on),
            # the server must stay scheduled.
            self.in_poll = False
            if self.should_stop() and not self.server.busy:
                self.detach()
                self.root.destroy()  # mainloop() returns
            else:
                self.reschedule()

    def reschedule(self) -> None:
        if self.server.busy:  # a bounded poll() left work over: no event will say so
            self.arm(0, None)
        elif self.mode == "polling":
            self.arm(self.interval_ms, None)
        else:
            deadline = self.server.next_deadline()
            if deadline is None:
                self.cancel_timer()
            elif deadline != self.timer_at:
                self.arm(max(0, math.ceil((deadline - time.monotonic()) * 1000)), deadline)

    def arm(self, delay_ms: int, deadline: Optional[float]) -> None:
        self.cancel_timer()
        self.timer = self.root.after(delay_ms, self.on_timer)
        self.timer_at = deadline

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.root.after_cancel(self.timer)
            self.timer = self.timer_at = None

    def kick(self) -> None:
        """The server's call: work was queued outside poll() (a Pending resolved by a click)."""
        if not (self.in_poll or self.detached):  # inside poll(), tick() reschedules as it returns
            self.arm(0, None)

    def detach(self) -> None:
        """Stops driving the server; server.close() calls it too."""
        if self.detached:
            return
        self.detached = True
        if self.mode == "file handler":
            self.root.deletefilehandler(self.fd)
        self.cancel_timer()
        self.server.integration = None


def build_server(args: argparse.Namespace, app: App, stopping: List[str]) -> Server:
    server = Server("127.0.0.1", args.port, address_file=args.address_file)

    @server.command
    def status() -> Dict[str, Any]:
        """The window's title, label text and click count, and how the loop is driven."""
        driver = app.driver
        return {
            "title": app.root.title(),
            "text": app.message.cget("text"),
            "clicks": app.clicks,
            "driven_by": driver.mode if driver else "-",
            "polls": driver.polls if driver else 0,
        }

    @server.command(level="operator")
    def click(times: int = 1, *, after: int = 0) -> str:
        """Presses the button TIMES times (1 to 1000), as a user would; --after MS from a Tk timer."""
        if not 1 <= times <= 1000:
            raise CommandError("TIMES must be between 1 and 1000")
        if not 0 <= after <= 60000:
            raise CommandError("--after must be between 0 and 60000 milliseconds")

        def press() -> None:
            for _ in range(times):
                app.button.invoke()

        if after:  # from a Tk timer, outside poll(): a `wait click` answered then needs kick()
            app.root.after(after, press)
            return f"clicking in {after} ms"
        press()
        return f"{app.clicks} clicks"

    @server.command(name="wait click")
    def wait_click(*, timeout: float = 30.0) -> Pending:
        """Answers at the next press of the button (a deferred reply; at most TIMEOUT seconds)."""
        pending = Pending(timeout=timeout)
        app.click_waiters.append(pending)
        pending.on_cancel(lambda: app.click_waiters.remove(pending))  # timed out, or the client left
        return pending

    @server.command(name="set text", level="operator")
    def set_text(*words: str) -> str:
        """Sets the label's text."""
        app.message.configure(text=" ".join(words))
        return "OK"

    @server.command(name="set title", level="operator")
    def set_title(*words: str) -> str:
        """Sets the window title."""
        if not words:
            raise CommandError("usage: set title WORDS...", code="usage")
        app.root.title(" ".join(words))
        return "OK"

    @server.command(level="operator")
    def shutdown() -> str:
        """Closes the window and exits (after this reply has been sent)."""
        stopping.append("shutdown command")
        return "closing the window"

    return server


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reactor_mgmt.examples.tk_app", description="A tkinter window with a management socket."
    )
    parser.add_argument("--port", type=int, default=8123, help="TCP port; 0 picks one (default 8123)")
    parser.add_argument("--address-file", help="write the address here once listening")
    parser.add_argument(
        "--budget",
        type=float,
        default=0.005,
        help="seconds of commands per poll() before the window gets a turn (default 0.005)",
    )
    parser.add_argument(
        "--interval",
        type=int,
        default=20,
        help="milliseconds between polls, only where Tk cannot watch a descriptor (default 20)",
    )
    return parser.parse_args(argv)


def watch_signals(root: tkinter.Tk, stopping: List[str], on_signal: Callable[[], None]) -> Callable[[], None]:
    """Records SIGTERM and SIGINT in ``stopping`` and wakes Tk for them; returns the undo."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stopping.append(signal.Signals(number).name))
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)

    def readable(fd: int, mask: int) -> None:
        try:
            data = reader.recv(512)
        except BlockingIOError:
            return
        # The bytes are the signal numbers: record them here too, whatever the order in which
        # the interpreter runs the Python-level handler and this callback.
        stopping.extend(signal.Signals(number).name for number in data)
        on_signal()

    try:
        root.createfilehandler(reader.fileno(), tkinter.READABLE, readable)
    except _NO_FILE_HANDLERS:
        # The polling fallback runs Python every interval, which is when handlers run.
        reader.close()
        writer.close()
        return lambda: None
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def undo() -> None:
        signal.set_wakeup_fd(previous)
        root.deletefilehandler(reader.fileno())
        reader.close()
        writer.close()

    return undo


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        root = tkinter.Tk()
    except tkinter.TclError as exc:
        print(f"tk_app: cannot open a window: {exc}", file=sys.stderr)
        return 2
    app = App(root)
    stopping: List[str] = []

    def wake() -> None:
        if app.driver is not None:  # before the driver exists, its first tick sees `stopping`
            app.driver.kick()

    # Signals are watched before the server writes its address file: a supervisor that reads
    # the file may send SIGTERM at once, and it must stop us cleanly, not kill us.
    unwatch = watch_signals(root, stopping, wake)
    try:
        server = build_server(args, app, stopping)
        try:
            app.driver = TkDriver(
                root, server, budget=args.budget, interval_ms=args.interval, should_stop=lambda: bool(stopping)
            )

            def window_closed() -> None:
                stopping.append("window closed")
                wake()

            root.protocol("WM_DELETE_WINDOW", window_closed)
            root.mainloop()
        finally:
            server.close()  # detaches the driver if a stop did not already
    finally:
        unwatch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
