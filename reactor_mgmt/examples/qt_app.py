"""A Qt (PySide6) application that serves its management socket from Qt's own event loop, with
no periodic polling: nothing runs while nothing happens.

Qt owns the main loop (``app.exec()``), and it is C++: Python runs only when Qt calls a slot.
Three things tell it when to call ``server.poll()``, and the ``QtDriver`` below wires each one:

1. a ``QSocketNotifier`` (``Read``) on ``server.fileno()``: the server's epoll/kqueue descriptor
   becomes readable whenever one of its sockets needs attention, so Qt's own wait covers the
   clients too;
2. a single-shot ``QTimer`` re-armed at ``server.next_deadline()`` after every poll: the
   server's timers (idle connections, deferred-reply timeouts, ``watch``) raise no socket event.
   It is a ``PreciseTimer``: Qt's default coarse timers may fire up to 5% early;
3. the same timer started at 0 ms while ``server.busy``: each poll() is bounded (``--budget``,
   and a slice of a pipelined burst per connection), and what it left over raises no event
   either. A 0 ms timer fires once Qt has handled the events already queued, so the window
   stays responsive during a flood.

Work queued outside poll() on this thread (here a ``wait click`` reply resolved by a button
press, which ``click --after MS`` makes from a Qt timer) reaches the driver through
``server.integration``: the server calls its ``kick()``, which starts the 0 ms timer.

Signals: Python's handler for SIGTERM or Ctrl-C only runs once the interpreter runs again,
and an idle Qt sleeps in C++ for as long as nothing happens. So ``signal.set_wakeup_fd()``
writes each signal to a socket that a second ``QSocketNotifier`` watches; its slot runs Python
at once, and the loop ends. Both exit 0.

Handlers run on the GUI thread, so they may update widgets directly; Qt widgets must not be
touched from any other thread.

Commands: ``status`` (with ``polls``, how many times the app has called poll()), ``click [N]
[--after MS]`` (presses the button), ``wait click`` (answers at the next press),
``set text WORDS...``, ``set title WORDS...`` and ``shutdown`` (closes the window). They are
the methods of one object, registered with ``server.add_commands()``.

Try it (``pip install 'PySide6-Essentials>=6.5'``; ``QT_QPA_PLATFORM=offscreen`` runs it with
no display)::

    python -m reactor_mgmt.examples.qt_app
    printf 'click 3\\nset text hello from nc\\nstatus\\n' | nc -N 127.0.0.1 8123
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from reactor_mgmt import CommandError, Pending, Server, command_options

try:  # the one dependency outside the stdlib, and only this example's
    from PySide6.QtCore import QSocketNotifier, Qt, QTimer  # type: ignore[import-not-found, unused-ignore]
    from PySide6.QtWidgets import QApplication, QLabel, QPushButton, QVBoxLayout, QWidget  # type: ignore[import-not-found, unused-ignore]
except ImportError as exc:  # said plainly, where a traceback would bury it
    print(f"qt_app: needs PySide6 (pip install 'PySide6-Essentials>=6.5'): {exc}", file=sys.stderr)
    raise SystemExit(2) from None


class Window:
    """The application: a label, a click counter and a button."""

    def __init__(self) -> None:
        self.clicks = 0
        self.click_waiters: List[Pending] = []
        self.widget = QWidget()
        self.widget.setWindowTitle("reactor_mgmt qt example")
        self.message = QLabel("Hello")
        self.counter = QLabel("0 clicks")
        self.button = QPushButton("Click me")
        self.button.clicked.connect(self.on_click)
        layout = QVBoxLayout(self.widget)
        for widget in (self.message, self.counter, self.button):
            layout.addWidget(widget)
        self.widget.show()

    def on_click(self) -> None:
        self.clicks += 1
        self.counter.setText(f"{self.clicks} clicks")
        waiters, self.click_waiters = self.click_waiters, []
        for pending in waiters:
            pending.resolve(f"{self.clicks} clicks")


class QtDriver:
    """Calls server.poll() from Qt's loop when there is something to do, and only then."""

    def __init__(
        self, server: Server, *, budget: float, should_stop: Callable[[], bool], stop: Callable[[], None]
    ) -> None:
        self.server, self.budget, self.should_stop, self.stop = server, budget, should_stop, stop
        self.polls = 0  # poll() calls: `status` reports it, so a test can see there is no polling
        self.in_poll = self.detached = False
        self.notifier = QSocketNotifier(server.fileno(), QSocketNotifier.Type.Read)
        self.notifier.activated.connect(lambda *_: self.tick())
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self.on_timer)
        self.timer_at: Optional[float] = None  # the deadline the timer is armed for
        server.integration = self  # the server calls kick() for work queued outside poll()
        self.kick()  # work may be queued already

    def on_timer(self) -> None:
        self.timer_at = None
        self.tick()

    def tick(self) -> None:
        self.polls += 1
        self.in_poll = True
        try:
            self.server.poll(0, budget=self.budget)
        finally:
            # Even when a handler's exception escapes poll() (PySide prints it and Qt carries
            # on), the server must stay scheduled.
            self.in_poll = False
            if self.should_stop() and not self.server.busy:
                self.detach()
                self.stop()
            elif self.server.busy:  # a bounded poll() left work over: no event will say so
                self.start(0, None)
            else:
                self.rearm()

    def rearm(self) -> None:
        deadline = self.server.next_deadline()
        if deadline is None:
            self.timer.stop()
            self.timer_at = None
        elif deadline != self.timer_at or not self.timer.isActive():
            self.start(max(0, math.ceil((deadline - time.monotonic()) * 1000)), deadline)

    def start(self, delay_ms: int, deadline: Optional[float]) -> None:
        self.timer.start(delay_ms)  # restarts it if it was running
        self.timer_at = deadline

    def kick(self) -> None:
        """The server's call: work was queued outside poll() (a Pending resolved by a click)."""
        if not (self.in_poll or self.detached):  # inside poll(), tick() reschedules as it returns
            self.start(0, None)

    def detach(self) -> None:
        """Stops driving the server; server.close() calls it too."""
        self.detached = True
        self.notifier.setEnabled(False)
        self.timer.stop()
        self.server.integration = None


class Commands:
    """The management commands: add_commands() registers every public method (``set_text``
    answers ``set text``), at operator level unless ``@command_options`` says otherwise."""

    def __init__(self, window: Window, stopping: List[str]) -> None:
        self._window, self._stopping = window, stopping
        self.driver: Optional[QtDriver] = None  # not a method, so not a command

    @command_options(level="user")
    def status(self) -> Dict[str, Any]:
        """The window's title, label text and click count, and how often the app has polled."""
        window = self._window
        return {
            "title": window.widget.windowTitle(),
            "text": window.message.text(),
            "clicks": window.clicks,
            "driven_by": "socket notifier",
            "polls": self.driver.polls if self.driver else 0,
        }

    def click(self, times: int = 1, *, after: int = 0) -> str:
        """Presses the button TIMES times (1 to 1000), as a user would; --after MS from a Qt timer."""
        if not 1 <= times <= 1000:
            raise CommandError("TIMES must be between 1 and 1000")
        if not 0 <= after <= 60000:
            raise CommandError("--after must be between 0 and 60000 milliseconds")
        button = self._window.button

        def press() -> None:
            for _ in range(times):
                button.click()

        if after:  # from a Qt timer, outside poll(): a `wait click` answered then needs kick()
            QTimer.singleShot(after, press)
            return f"clicking in {after} ms"
        press()
        return f"{self._window.clicks} clicks"

    @command_options(level="user")
    def wait_click(self, *, timeout: float = 30.0) -> Pending:
        """Answers at the next press of the button (a deferred reply; at most TIMEOUT seconds)."""
        pending = Pending(timeout=timeout)
        waiters = self._window.click_waiters
        waiters.append(pending)
        pending.on_cancel(lambda: waiters.remove(pending))  # timed out, or the client left
        return pending

    def set_text(self, *words: str) -> str:
        """Sets the label's text."""
        self._window.message.setText(" ".join(words))
        return "OK"

    def set_title(self, *words: str) -> str:
        """Sets the window title."""
        if not words:
            raise CommandError("usage: set title WORDS...", code="usage")
        self._window.widget.setWindowTitle(" ".join(words))
        return "OK"

    def shutdown(self) -> str:
        """Closes the window and exits (after this reply has been sent)."""
        self._stopping.append("shutdown command")
        return "closing the window"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reactor_mgmt.examples.qt_app", description="A Qt (PySide6) window with a management socket."
    )
    parser.add_argument("--port", type=int, default=8123, help="TCP port; 0 picks one (default 8123)")
    parser.add_argument("--address-file", help="write the address here once listening")
    parser.add_argument(
        "--budget",
        type=float,
        default=0.005,
        help="seconds of commands per poll() before the window gets a turn (default 0.005)",
    )
    return parser.parse_args(argv)


def watch_signals(stopping: List[str], on_signal: Callable[[], None]) -> Callable[[], None]:
    """Records SIGTERM and SIGINT in ``stopping`` and wakes Qt for them; returns the undo.

    A Python signal handler is only run by the interpreter, between two bytecodes, and while
    Qt waits for events no Python runs at all: without help, Ctrl-C would be seen at the next
    event, whenever that is. The C-level handler also writes the signal's number to the
    wakeup descriptor, which Qt watches like any socket, and its slot is Python.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stopping.append(signal.Signals(number).name))
    reader, writer = socket.socketpair()  # a socket, not a pipe: set_wakeup_fd needs one on Windows
    reader.setblocking(False)
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    notifier = QSocketNotifier(reader.fileno(), QSocketNotifier.Type.Read)

    def readable() -> None:
        try:
            data = reader.recv(512)
        except BlockingIOError:
            return
        # The bytes are the signal numbers: record them here too, whatever the order in which
        # the interpreter runs the Python-level handler and this slot.
        stopping.extend(signal.Signals(number).name for number in data)
        on_signal()

    notifier.activated.connect(lambda *_: readable())

    def undo() -> None:
        signal.set_wakeup_fd(previous)
        notifier.setEnabled(False)
        reader.close()
        writer.close()

    return undo


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if sys.platform.startswith("linux") and not any(
        os.environ.get(name) for name in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")
    ):
        # Qt would abort the process (SIGABRT, a core dump) rather than raise.
        print(
            "qt_app: cannot open a window: no DISPLAY or WAYLAND_DISPLAY "
            "(QT_QPA_PLATFORM=offscreen runs it without one)",
            file=sys.stderr,
        )
        return 2
    app = QApplication(sys.argv[:1])
    app.setQuitOnLastWindowClosed(False)  # the loop decides when to quit, once replies are out
    window = Window()
    stopping: List[str] = []
    commands = Commands(window, stopping)

    def wake() -> None:
        if commands.driver is not None:  # before the driver exists, its first tick sees `stopping`
            commands.driver.kick()

    # Signals are watched before the server writes its address file: a supervisor that reads
    # the file may send SIGTERM at once, and it must stop us cleanly, not kill us.
    unwatch = watch_signals(stopping, wake)
    try:
        server = Server("127.0.0.1", args.port, address_file=args.address_file)
        try:
            server.add_commands(commands, level="operator")

            def quit_app() -> None:
                window.widget.close()
                app.quit()  # exec() returns

            commands.driver = QtDriver(server, budget=args.budget, should_stop=lambda: bool(stopping), stop=quit_app)

            def window_closed() -> None:  # by the window manager, or by the user
                stopping.append("window closed")
                wake()

            app.lastWindowClosed.connect(window_closed)
            app.exec()
        finally:
            server.close()  # detaches the driver if a stop did not already
    finally:
        unwatch()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
