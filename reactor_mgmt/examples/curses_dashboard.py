"""A curses dashboard in a terminal that shows its own management socket at work: open
connections, commands run, the most recent ones, the server's log and a note that any client
can set (``note WORDS...``).

A terminal program has two inputs, the keyboard and the socket, and nothing to do between them,
so its loop sleeps in one ``select.select()`` over both: stdin, ``server.fileno()`` (readable
whenever one of the server's sockets needs attention) and a self-pipe that
``signal.set_wakeup_fd`` writes to, so SIGTERM, Ctrl-C and a window resize end the wait at once.
The wait never lasts past the next whole second (the uptime on screen moves) nor past
``server.next_deadline()`` (the server's timers: idle connections, deferred replies, ``watch``),
and does not block at all while ``server.busy`` says a bounded poll() left work over. Nothing
runs while nothing happens: no busy polling, and no fixed-rate wake-ups beyond that one a second.

When stdin is readable, ``getch()`` in no-delay mode is called until it has nothing left, since
curses reads ahead (a function key's escape sequence) into a buffer that select() cannot see.
When the server's descriptor is readable, ``poll(0)`` runs the commands; handlers only change the
dashboard's state, and the screen is redrawn once after poll() returns, however many commands
ran. The figures come from public sources: ``server.connections`` for who is connected, and the
audit log at ``user`` level (``add_toolkit("clients", audit=True, audit_level="user")``), whose
records a logging handler on the ``reactor_mgmt`` logger collects, for every command run. That
handler also keeps the server's log lines off the terminal, which curses owns.

Keys: ``q`` quits (exit 0), ``c`` clears the recent commands, ``n`` clears the note.
Commands: ``status``, ``note [WORDS...]``, ``clear`` and ``shutdown`` (quits, like ``q``); and
the toolkit's ``clients``.

Try it (in a terminal)::

    python -m reactor_mgmt.examples.curses_dashboard
    printf 'note hello from nc\\nstatus\\n' | nc -N 127.0.0.1 8123
"""

from __future__ import annotations

import argparse
import curses
import logging
import os
import select
import signal
import sys
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional

from reactor_mgmt import Server

REFRESH = 1.0  # seconds between redraws when nothing happens (the uptime on screen)
MIN_REDRAW = 0.05  # at most 20 redraws a second, however busy the socket is
RECENT_KEPT = 100
LOG_KEPT = 50


class Board(logging.Handler):
    """The dashboard's state: what the server logs (one audit record per command, and its other
    log lines), the note, and the keys pressed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started = time.monotonic()
        self.recent: Deque[Dict[str, Any]] = deque(maxlen=RECENT_KEPT)  # newest first
        self.log_lines: Deque[str] = deque(maxlen=LOG_KEPT)  # newest first
        self.commands = 0
        self.failed = 0
        self.note = ""
        self.keys = 0
        self.last_key = ""
        self.changed = True

    def emit(self, record: logging.LogRecord) -> None:
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):
            self.recent.appendleft(audit)
            self.commands += 1
            if audit.get("outcome") != "ok":
                self.failed += 1
        else:
            self.log_lines.appendleft(f"{record.levelname.lower()}: {record.getMessage()}")
        self.changed = True

    def key(self, name: str) -> None:
        self.keys += 1
        self.last_key = name
        self.changed = True


def build_server(args: argparse.Namespace, board: Board, stopping: List[str]) -> Server:
    server = Server("127.0.0.1", args.port, address_file=args.address_file)
    # An audit record for every command, at any level: the dashboard's "recent commands".
    server.add_toolkit("clients", audit=True, audit_level="user")

    @server.command
    def status() -> Dict[str, Any]:
        """What the dashboard shows: uptime, connections, commands, the note and the last key."""
        return {
            "uptime_s": round(time.monotonic() - board.started, 1),
            "connections": len(server.connections),
            "commands": board.commands,
            "failed": board.failed,
            "recent": len(board.recent),
            "note": board.note or "-",
            "keys": board.keys,
            "last_key": board.last_key or "-",
        }

    @server.command(level="operator")
    def note(*words: str) -> str:
        """Shows WORDS on the dashboard's note line; with no words, clears it."""
        board.note = " ".join(words)[:200]
        board.changed = True
        return "OK"

    @server.command(level="operator")
    def clear() -> str:
        """Clears the recent commands, as the c key does."""
        count = len(board.recent)
        board.recent.clear()
        board.changed = True
        return f"cleared {count}"

    @server.command(level="operator")
    def shutdown() -> str:
        """Closes the dashboard, as the q key does (after this reply has been sent)."""
        stopping.append("shutdown command")
        return "closing the dashboard"

    return server


def put(window: curses.window, y: int, x: int, text: str, attr: int = 0) -> None:
    """Writes what fits of TEXT at (y, x); a small terminal cuts the dashboard, it does not break it."""
    height, width = window.getmaxyx()
    if not (0 <= y < height and 0 <= x < width):
        return
    try:
        window.addnstr(y, x, text, width - x, attr)
    except curses.error:
        pass  # the bottom-right cell: curses writes it, then fails to move the cursor past it


def format_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    return str(peer) or "unix socket"


def format_uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def draw(window: curses.window, server: Server, board: Board, address: str) -> None:
    window.erase()
    height, width = window.getmaxyx()
    title = f" reactor_mgmt dashboard  {address}  up {format_uptime(time.monotonic() - board.started)} "
    put(window, 0, 0, title.ljust(width), curses.A_REVERSE)
    connections = sorted(server.connections, key=lambda conn: conn.id)
    put(
        window,
        1,
        1,
        f"connections: {len(connections)} open    commands: {board.commands} "
        f"({board.failed} failed)    keys: {board.keys}",
    )
    put(window, 2, 1, f"note: {board.note or '-'}", curses.A_BOLD if board.note else 0)
    row = 4
    put(window, row, 1, "open connections", curses.A_UNDERLINE)
    row += 1
    for conn in connections[:5]:
        put(window, row, 3, f"{conn.id:<5} {format_peer(conn.peer):<28} {conn.level_name}")
        row += 1
    if len(connections) > 5:
        put(window, row, 3, f"... and {len(connections) - 5} more")
        row += 1
    row += 1
    put(window, row, 1, "recent commands, newest first", curses.A_UNDERLINE)
    row += 1
    log_rows = min(len(board.log_lines), 3)
    room = height - row - (log_rows + 3)  # leave the log and the key line their rows
    for record in list(board.recent)[: max(room, 0)]:
        outcome = str(record.get("outcome", ""))
        put(
            window,
            row,
            3,
            f"{str(record.get('time', ''))[11:19]}  conn {record.get('conn', '?'):<4} "
            f"{outcome:<7} {record.get('command', '')}",
            0 if outcome == "ok" else curses.A_BOLD,
        )
        row += 1
    if log_rows:
        row = max(row + 1, height - log_rows - 2)
        put(window, row, 1, "log", curses.A_UNDERLINE)
        for line in list(board.log_lines)[:log_rows]:
            row += 1
            put(window, row, 3, line)
    put(window, height - 1, 0, " q quit   c clear recent   n clear note ", curses.A_REVERSE)
    window.refresh()
    board.changed = False


def read_keys(window: curses.window, board: Board, stopping: List[str]) -> None:
    """Every key curses has, including those it read ahead into its own buffer."""
    while True:
        key = window.getch()
        if key == -1:
            return
        if key == curses.KEY_RESIZE:
            board.changed = True
            continue
        name = curses.keyname(key).decode("ascii", "replace")
        board.key(name)
        if name in ("q", "Q"):
            stopping.append("q")
        elif name == "c":
            board.recent.clear()
        elif name == "n":
            board.note = ""


def run(
    window: curses.window, server: Server, board: Board, stopping: List[str], wakeup: int, resized: List[int]
) -> None:
    try:
        curses.curs_set(0)
    except curses.error:
        pass  # a terminal that cannot hide the cursor
    window.nodelay(True)
    stdin = sys.stdin.fileno()
    mgmt = server.fileno()
    address = " ".join(format_peer(a) for a in server.addresses)
    next_refresh = last_draw = time.monotonic()
    while not stopping:
        now = time.monotonic()
        if resized:
            resized.clear()
            size = os.get_terminal_size(stdin)
            curses.resizeterm(size.lines, size.columns)
            board.changed = True
            last_draw = now - MIN_REDRAW  # at once
        if now >= next_refresh:
            board.changed = True
            next_refresh = now + REFRESH - (now - board.started) % REFRESH  # on the uptime's second
        timeout = next_refresh - now
        if board.changed:
            if now - last_draw >= MIN_REDRAW:
                draw(window, server, board, address)
                last_draw = now
            else:
                timeout = min(timeout, last_draw + MIN_REDRAW - now)
        deadline = server.next_deadline()
        if server.busy:
            timeout = 0.0
        elif deadline is not None:
            timeout = min(timeout, deadline - now)
        readable, _, _ = select.select([stdin, mgmt, wakeup], [], [], max(0.0, timeout))
        if wakeup in readable:
            os.read(wakeup, 512)  # the signal handlers already recorded what happened
        if stdin in readable:
            read_keys(window, board, stopping)
        if mgmt in readable or server.busy or (deadline is not None and time.monotonic() >= deadline):
            if server.poll(0):  # connections opened or closed, commands run: redraw
                board.changed = True


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reactor_mgmt.examples.curses_dashboard",
        description="A curses dashboard that shows its own management socket at work.",
    )
    parser.add_argument("--port", type=int, default=8123, help="TCP port; 0 picks one (default 8123)")
    parser.add_argument("--address-file", help="write the address here once listening")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("curses_dashboard: needs a terminal (stdin and stdout)", file=sys.stderr)
        return 2
    try:
        curses.setupterm()
    except curses.error as exc:
        print(f"curses_dashboard: cannot use this terminal: {exc}", file=sys.stderr)
        return 2
    board = Board()
    # The server's log goes to the dashboard, not to the terminal that curses draws on.
    logger = logging.getLogger("reactor_mgmt")
    logger.addHandler(board)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    stopping: List[str] = []
    resized: List[int] = []
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_read, False)
    os.set_blocking(wakeup_write, False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stopping.append(signal.Signals(number).name))
    previous_wakeup = signal.set_wakeup_fd(wakeup_write)
    server = build_server(args, board, stopping)

    def start(window: curses.window) -> None:
        # After initscr(): this handler replaces curses's own, and run() resizes the screen.
        signal.signal(signal.SIGWINCH, lambda number, frame: resized.append(number))
        run(window, server, board, stopping, wakeup_read, resized)

    try:
        curses.wrapper(start)
    finally:
        server.close()
        signal.set_wakeup_fd(previous_wakeup)
        for fd in (wakeup_read, wakeup_write):
            os.close(fd)
        logger.removeHandler(board)
    print(
        f"curses_dashboard: stopped ({stopping[0] if stopping else 'no reason'}) after {board.commands} commands",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
