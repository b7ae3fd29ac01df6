"""A tkinter application that serves its management socket from Tk's own event loop.

Tk owns the main loop (``root.mainloop()``), and the way to run code in it is ``root.after()``.
So a small callback polls the server and re-arms itself: at once when ``server.busy`` says a
bounded poll() left work over, otherwise after ``--interval`` milliseconds (20 by default,
which is as fast as a person at ``nc`` can notice). poll(0) on an idle server costs a
microsecond or so, so the periodic wake-ups are cheap.

Handlers run on the Tk thread, so they may update widgets directly; Tk is not thread-safe, and
a server on a thread of its own would have to hand every change over to this one.

Commands: ``status``, ``click [N]`` (presses the button), ``set text WORDS...``,
``set title WORDS...`` and ``shutdown`` (closes the window, like the window manager would).

Try it (needs a display)::

    python -m reactor_mgmt.examples.tk_app
    printf 'click 3\\nset text hello from nc\\nstatus\\n' | nc -N 127.0.0.1 8123
"""
from __future__ import annotations

import argparse
import signal
import sys
import tkinter
from typing import Any, Dict, List, Optional

from reactor_mgmt import CommandError, Server


class App:
    def __init__(self, root: tkinter.Tk) -> None:
        self.root = root
        self.clicks = 0
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


def build_server(args: argparse.Namespace, app: App, stopping: List[str]) -> Server:
    server = Server("127.0.0.1", args.port, address_file=args.address_file)

    @server.command
    def status() -> Dict[str, Any]:
        """The window's title, label text and click count."""
        return {"title": app.root.title(), "text": app.message.cget("text"), "clicks": app.clicks}

    @server.command(level="operator")
    def click(times: int = 1) -> str:
        """Presses the button TIMES times (1 to 1000), as a user would."""
        if not 1 <= times <= 1000:
            raise CommandError("TIMES must be between 1 and 1000")
        for _ in range(times):
            app.button.invoke()
        return f"{app.clicks} clicks"

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
    parser = argparse.ArgumentParser(prog="python -m reactor_mgmt.examples.tk_app",
                                     description="A tkinter window with a management socket.")
    parser.add_argument("--port", type=int, default=8123, help="TCP port; 0 picks one (default 8123)")
    parser.add_argument("--address-file", help="write the address here once listening")
    parser.add_argument("--interval", type=int, default=20, help="milliseconds between polls when idle (default 20)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        root = tkinter.Tk()
    except tkinter.TclError as exc:
        print(f"tk_app: cannot open a window: {exc}", file=sys.stderr)
        return 2
    app = App(root)
    stopping: List[str] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Python runs signal handlers between bytecodes; the after() callback below runs often
        # enough that the flag is seen within one interval.
        signal.signal(signum, lambda number, frame: stopping.append(signal.Signals(number).name))
    server = build_server(args, app, stopping)

    def tick() -> None:
        server.poll(0)
        if stopping and not server.busy:
            root.destroy()  # mainloop() returns
            return
        root.after(0 if server.busy else args.interval, tick)

    root.after(0, tick)
    root.protocol("WM_DELETE_WINDOW", lambda: stopping.append("window closed"))
    try:
        root.mainloop()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
