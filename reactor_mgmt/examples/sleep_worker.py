"""A worker loop paced by ``time.sleep()``, with a management socket.

Many batch workers are a loop of "take an item, process it, sleep a little". The smallest
change that gives such a loop a management socket is one ``server.poll(0)`` per iteration:
poll(0) never blocks, so the loop keeps its pace, and a command waits at most one sleep
(``--interval``, 0.05 s by default) for its reply.

If that latency matters, replace ``time.sleep(interval)`` with
``server.poll(timeout=interval)``: it waits just as long when nothing happens, but returns as
soon as a command arrives, so replies are immediate. This example keeps ``time.sleep`` on
purpose, to show that the minimal change is already enough.

The work here is hashing text items; ``wait idle`` shows a deferred reply (a ``Pending``) that
the loop resolves once the queue is empty.

Try it::

    python -m reactor_mgmt.examples.sleep_worker
    printf 'enqueue alpha beta gamma\\nwait idle\\nshow results\\n' | nc -N 127.0.0.1 8123
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import signal
import sys
import time
from typing import Any, Deque, Dict, List, Optional

from reactor_mgmt import CommandError, Pending, Server

MAX_QUEUE = 10000
KEEP_RESULTS = 100


class Worker:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.paused = False
        self.queue: Deque[str] = collections.deque()
        self.results: Deque[Dict[str, Any]] = collections.deque(maxlen=KEEP_RESULTS)
        self.processed = 0
        self.idle_waiters: List[Pending] = []

    def work_once(self) -> None:
        if not self.paused and self.queue:
            item = self.queue.popleft()
            self.processed += 1
            self.results.append(
                {"n": self.processed, "item": item, "sha256": hashlib.sha256(item.encode()).hexdigest()[:16]}
            )
        if not self.queue and self.idle_waiters:
            for pending in self.idle_waiters:
                pending.resolve(f"idle after {self.processed} items")
            self.idle_waiters.clear()


def build_server(args: argparse.Namespace, worker: Worker) -> Server:
    server = Server("127.0.0.1", args.port, address_file=args.address_file)

    @server.command
    def status() -> Dict[str, Any]:
        """Items processed and queued, the interval, and whether the worker is paused."""
        return {
            "processed": worker.processed,
            "queued": len(worker.queue),
            "interval_s": worker.interval,
            "paused": worker.paused,
        }

    @server.command(level="operator")
    def enqueue(*items: str) -> str:
        """Queues each ITEM for processing."""
        if not items:
            raise CommandError("usage: enqueue ITEM...", code="usage")
        if len(worker.queue) + len(items) > MAX_QUEUE:
            raise CommandError(f"the queue is full ({MAX_QUEUE} items)")
        worker.queue.extend(items)
        return f"{len(items)} queued, {len(worker.queue)} waiting"

    @server.command(name="show results")
    def show_results(count: int = 10) -> Any:
        """The last COUNT results (at most 100 are kept), as a table."""
        if not worker.results:
            return "no results yet"
        return list(worker.results)[-max(count, 1) :]

    @server.command(name="wait idle")
    def wait_idle(*, timeout: float = 30.0) -> Any:
        """Answers once the queue is empty (a deferred reply; at most TIMEOUT seconds)."""
        if not worker.queue:
            return f"idle after {worker.processed} items"
        pending = Pending(timeout=timeout)
        worker.idle_waiters.append(pending)
        # Timed out, or its client left: forget it, or any client could grow the list for ever.
        pending.on_cancel(lambda: worker.idle_waiters.remove(pending))
        return pending

    @server.command(level="operator")
    def pause() -> str:
        """Stops taking items from the queue."""
        worker.paused = True
        return "paused"

    @server.command(level="operator")
    def resume() -> str:
        """Starts taking items again."""
        worker.paused = False
        return "resumed"

    @server.command(name="set interval", level="operator")
    def set_interval(seconds: float) -> str:
        """Changes the sleep between items (0.001 to 10 seconds)."""
        if not 0.001 <= seconds <= 10:
            raise CommandError("interval must be between 0.001 and 10 seconds")
        worker.interval = seconds
        return f"interval {seconds:g} s"

    return server


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reactor_mgmt.examples.sleep_worker",
        description="A time.sleep() worker loop with a management socket.",
    )
    parser.add_argument("--port", type=int, default=8123, help="TCP port; 0 picks one (default 8123)")
    parser.add_argument("--address-file", help="write the address here once listening")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds to sleep per item (default 0.05)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    worker = Worker(args.interval)
    stopping: List[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        # time.sleep() resumes after a handler returns (PEP 475), so the loop sees the flag
        # within one interval.
        signal.signal(signum, lambda number, frame: stopping.append(number))
    server = build_server(args, worker)
    print(f"worker sleeping {args.interval:g} s per item; management socket on port {server.port}", file=sys.stderr)
    try:
        while not stopping:
            worker.work_once()
            server.poll(0)  # the one line this loop needed
            time.sleep(worker.interval)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
