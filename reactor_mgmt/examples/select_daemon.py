"""A legacy daemon with its own ``select.select()`` loop, and a management socket added to it.

The daemon is a small metrics collector in the statsd style: it receives ``name:value`` lines
over UDP, adds them up, and every ``--interval`` seconds "flushes" the totals of the interval
(here it keeps them as the "last" column and logs a summary). Its main loop predates the
management socket: ``select.select()`` over its own descriptors, the UDP socket and a
self-pipe that ``signal.set_wakeup_fd`` writes to, so SIGTERM ends the wait at once.

Adding the management socket takes three changes to such a loop:

1. put ``server.fileno()`` in the read set: it is an epoll/kqueue descriptor that becomes
   readable whenever one of the server's sockets needs attention;
2. call ``server.poll(0)`` when it is readable, or when ``server.busy`` says the last poll()
   left work over (a burst of pipelined commands is served a bounded slice per poll); while it
   is busy, the next select() must not block;
3. never wait past ``server.next_deadline()``, when the server's own timers are due (idle
   connections, pending replies, ``watch``).

Try it::

    python -m reactor_mgmt.examples.select_daemon --port 8123 --udp-port 8125
    printf 'hits:1\\nhits:2\\nbytes:512\\n' | nc -u -w1 127.0.0.1 8125
    echo "show counters" | nc -N 127.0.0.1 8123
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import time
from typing import Any, Dict, List, Optional, Union

from reactor_mgmt import CommandError, Server

log = logging.getLogger("select_daemon")

MAX_DATAGRAMS_PER_LOOP = 64  # the daemon's own fairness rule: UDP cannot starve the rest


class Collector:
    """The daemon's real job: counters fed by UDP datagrams, flushed every interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.started = time.monotonic()
        self.next_flush = self.started + interval
        self.current: Dict[str, float] = {}
        self.last: Dict[str, float] = {}
        self.total: Dict[str, float] = {}
        self.packets = 0
        self.bad_lines = 0
        self.flushes = 0

    def receive(self, sock: socket.socket) -> None:
        for _ in range(MAX_DATAGRAMS_PER_LOOP):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            self.packets += 1
            for line in data.decode("utf-8", "replace").splitlines():
                self.add_line(line)

    def add_line(self, line: str) -> None:
        name, _, value = line.strip().partition(":")
        value = value.split("|")[0]  # statsd's "|c" type suffix is accepted and ignored
        try:
            number = float(value)
        except ValueError:
            number = None
        if not name or number is None:
            self.bad_lines += 1
            return
        self.current[name] = self.current.get(name, 0.0) + number
        self.total[name] = self.total.get(name, 0.0) + number

    def flush(self, now: float) -> None:
        self.last, self.current = self.current, {}
        self.flushes += 1
        self.next_flush = now + self.interval
        if self.last:
            log.info("flush %d: %s", self.flushes, ", ".join(f"{k}={v:g}" for k, v in sorted(self.last.items())))


def build_server(args: argparse.Namespace, collector: Collector, udp: socket.socket) -> Server:
    server = Server("127.0.0.1", args.port, address_file=args.address_file)

    @server.command
    def status() -> Dict[str, Any]:
        """Uptime, UDP port, packets received and the flush interval."""
        return {
            "uptime_s": round(time.monotonic() - collector.started, 1),
            "udp_port": udp.getsockname()[1],
            "interval_s": collector.interval,
            "packets": collector.packets,
            "bad_lines": collector.bad_lines,
            "flushes": collector.flushes,
            "counters": len(collector.total),
        }

    @server.command(name="show counters")
    def show_counters() -> Any:
        """Every counter: this interval so far, the last flushed interval, and all time."""
        names = sorted(set(collector.total) | set(collector.last))
        if not names:
            return "no counters yet"
        return [
            {
                "name": name,
                "current": collector.current.get(name, 0.0),
                "last": collector.last.get(name),
                "total": collector.total.get(name, 0.0),
            }
            for name in names
        ]

    @server.command(level="operator")
    def reset(name: Optional[str] = None) -> str:
        """Forgets one counter, or all of them."""
        if name is None:
            count = len(collector.total)
            collector.current.clear()
            collector.last.clear()
            collector.total.clear()
            return f"reset {count} counters"
        if name not in collector.total:
            raise CommandError(f"no counter {name!r}")
        for table in (collector.current, collector.last, collector.total):
            table.pop(name, None)
        return f"reset {name}"

    @server.command(level="operator")
    def flush() -> str:
        """Flushes now instead of at the end of the interval."""
        collector.flush(time.monotonic())
        return f"flush {collector.flushes}: {len(collector.last)} counters"

    @server.command(name="set interval", level="operator")
    def set_interval(seconds: float) -> str:
        """Changes the flush interval (0.1 to 3600 seconds); the current one restarts."""
        if not 0.1 <= seconds <= 3600:
            raise CommandError("interval must be between 0.1 and 3600 seconds")
        collector.interval = seconds
        collector.next_flush = time.monotonic() + seconds
        return f"interval {seconds:g} s"

    return server


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reactor_mgmt.examples.select_daemon",
        description="A select() daemon (a UDP metrics collector) with a management socket.",
    )
    parser.add_argument("--port", type=int, default=8123, help="management TCP port; 0 picks one (default 8123)")
    parser.add_argument("--address-file", help="write the management address here once listening")
    parser.add_argument("--udp-port", type=int, default=8125, help="UDP port for metrics; 0 picks one (default 8125)")
    parser.add_argument("--interval", type=float, default=10.0, help="flush interval in seconds (default 10)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    collector = Collector(args.interval)

    # The daemon's own descriptors, as it had them before the management socket existed.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", args.udp_port))
    udp.setblocking(False)
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_read, False)
    os.set_blocking(wakeup_write, False)
    stopping: List[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stopping.append(number))
    previous_wakeup = signal.set_wakeup_fd(wakeup_write)

    server = build_server(args, collector, udp)
    mgmt = server.fileno()
    watched: List[Union[socket.socket, int]] = [udp, wakeup_read, mgmt]  # select() takes either
    try:
        while not stopping:
            now = time.monotonic()
            if now >= collector.next_flush:
                collector.flush(now)
            timeout = collector.next_flush - now
            deadline = server.next_deadline()
            if server.busy:
                timeout = 0.0
            elif deadline is not None:
                timeout = min(timeout, deadline - now)
            readable, _, _ = select.select(watched, [], [], max(0.0, timeout))
            if udp in readable:
                collector.receive(udp)
            if wakeup_read in readable:
                os.read(wakeup_read, 512)  # the handler already recorded the signal
            if mgmt in readable or server.busy or (deadline is not None and time.monotonic() >= deadline):
                server.poll(0)
    finally:
        server.close()
        signal.set_wakeup_fd(previous_wakeup)
        for fd in (wakeup_read, wakeup_write):
            os.close(fd)
        udp.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
