# The demo daemon: what an embedding looks like in a program with its own fixed-rate loop.
# The "work" is simulated jobs; the point is the loop shape (tick, then poll with the time left
# in the frame) and a command set that shows every feature of the command layer. It turns the
# operator toolkit on, and declares its tick rate and job parallelism as settings for `config set`.
from __future__ import annotations

import argparse
import enum
import heapq
import logging
import os
import signal
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ._errors import CommandError, ConfigError
from ._replies import Pending
from ._server import Server

log = logging.getLogger("reactor_mgmt.demo")


class Priority(enum.Enum):
    low = 1
    normal = 2
    high = 3


class Worker:
    """The simulated application: a queue of jobs processed a few per tick."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.parallel = 2  # jobs that progress at once
        self.started = time.monotonic()
        self.ticks = 0
        self.done = 0
        self.paused = False
        self.jobs: List[Dict[str, Any]] = []
        self.next_job = 1
        # The deferred command's replies: a heap of (tick, sequence, Pending). One its client left
        # (or that timed out) stays until its tick or until such ones are more than half the heap,
        # when they are swept out: a client that asks and leaves, again and again, cannot grow it
        # for good.
        self.waiting: List[Tuple[int, int, Pending]] = []
        self.waits = 0  # the sequence: equal ticks answer in the order asked
        self.waits_cancelled = 0
        for name in ("backup", "reindex", "thumbnails"):
            self.add(name, Priority.normal)

    def add(self, name: str, priority: Priority) -> Dict[str, Any]:
        job = {"id": self.next_job, "name": name, "priority": priority.name, "progress": 0}
        self.next_job += 1
        self.jobs.append(job)
        return job

    def tick(self) -> None:
        self.ticks += 1
        if not self.paused and self.ticks % 10 == 0:  # a job takes 1,000 ticks: 20 s at 50 Hz
            for job in self.jobs[: self.parallel]:
                job["progress"] += 1
                if job["progress"] >= 100:
                    self.jobs.remove(job)
                    self.done += 1
                    log.info("job %d (%s) finished", job["id"], job["name"])
        while self.waiting and self.waiting[0][0] <= self.ticks:
            pending = heapq.heappop(self.waiting)[2]
            if pending.cancelled:
                self.waits_cancelled -= 1
            else:
                pending.resolve(f"tick {self.ticks} reached")

    def wait(self, count: int, pending: Pending) -> None:
        """Resolves ``pending`` once ``count`` more ticks have run."""
        if pending.done or pending.cancelled:  # nothing to wait for: it would only be counted wrong
            return
        self.waits += 1
        heapq.heappush(self.waiting, (self.ticks + max(count, 0), self.waits, pending))
        pending.on_cancel(self._wait_cancelled)

    def _wait_cancelled(self) -> None:
        self.waits_cancelled += 1
        if self.waits_cancelled * 2 > len(self.waiting):
            self.waiting[:] = [entry for entry in self.waiting if not entry[2].cancelled]
            heapq.heapify(self.waiting)
            self.waits_cancelled = 0


def build_server(args: argparse.Namespace, worker: Worker) -> Server:
    server = Server(
        args.host,
        args.port,
        unix=args.unix,
        level=args.level,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
        max_line=args.max_line,
        high_water=args.high_water,
        max_output=args.max_output,
        low_water=args.low_water,
        max_commands_per_tick=args.max_commands_per_tick,
        pending_timeout=args.pending_timeout,
        token=args.token,
        token_file=args.token_file,
        # The demo's own default: $REACTOR_MGMT_TOKEN when it is set (token_env= itself refuses
        # to serve without the token it names).
        token_env="REACTOR_MGMT_TOKEN" if os.environ.get("REACTOR_MGMT_TOKEN") else None,
        allow_remote=args.allow_remote,
        log_tail=True,
        address_file=args.address_file,
        tls=_tls_context(args),
        cert_levels={"admin": args.tls_admin} if args.tls_admin else None,
        toolkit=True,  # show threads, gc, tracemalloc, log level, config get/set/diff
        audit=args.audit,
    )
    # What `config set` may change (operator level), and one setting shown but never changed.
    server.setting("tick_hz", worker, "rate", check=_check_rate, help="worker ticks per second, 1 to 1000")
    server.setting("parallel", worker, "parallel", check=_check_parallel, help="jobs that progress at once, 1 to 10")
    server.setting(
        "idle_timeout", server, "idle_timeout", read_only=True, help="seconds before an idle client is closed"
    )

    @server.command
    def status() -> Dict[str, Any]:
        """Uptime, tick count and open connections."""
        return {
            "uptime_s": round(time.monotonic() - worker.started, 1),
            "ticks": worker.ticks,
            "tick_rate_hz": worker.rate,
            "connections": len(server.connections),
            "jobs_queued": len(worker.jobs),
            "jobs_done": worker.done,
            "paused": worker.paused,
        }

    @server.command(name="show jobs")
    def show_jobs() -> List[Dict[str, Any]]:
        """The job queue, as a table."""
        return [dict(job) for job in worker.jobs]

    @server.command(name="show job")
    def show_job(job_id: int) -> Dict[str, Any]:
        """One job by id."""
        for job in worker.jobs:
            if job["id"] == job_id:
                return job
        raise CommandError(f"no job {job_id}")

    @server.command(name="job add", level="operator")
    def job_add(name: str, priority: Priority = Priority.normal) -> Dict[str, Any]:
        """Queues a job: job add NAME [PRIORITY]."""
        return worker.add(name, priority)

    @server.command(name="job cancel", level="operator")
    def job_cancel(job_id: int, *, force: bool = False) -> str:
        """Cancels a job; --force also cancels one that is more than half done."""
        for job in worker.jobs:
            if job["id"] == job_id:
                if job["progress"] > 50 and not force:
                    raise CommandError(f"job {job_id} is {job['progress']}% done; use --force")
                worker.jobs.remove(job)
                return f"cancelled job {job_id}"
        raise CommandError(f"no job {job_id}")

    @server.command(level="operator")
    def pause() -> str:
        """Stops job progress (ticks go on)."""
        worker.paused = True
        return "paused"

    @server.command(level="operator")
    def resume() -> str:
        """Resumes job progress."""
        worker.paused = False
        return "resumed"

    @server.command(name="wait ticks")
    def wait_ticks(count: int = 10, *, timeout: Optional[float] = None) -> Pending:
        """A deferred reply: answers once COUNT more ticks have run.

        Requests sent after it wait for it, so replies stay in order.
        """
        pending = Pending(timeout=timeout)
        worker.wait(count, pending)
        return pending

    @server.command
    def count(n: int = 10, *, prefix: str = "line") -> Iterator[str]:
        """A streaming reply: N numbered lines, sent only as fast as you read them."""
        return (f"{prefix} {i}" for i in range(1, n + 1))

    @server.command(name="crash")
    def crash() -> None:
        """Raises an exception, to show that a failing handler hurts nobody."""
        raise RuntimeError("the crash command always fails")

    return server


def _check_rate(hz: float) -> None:
    """The tick rate's bounds, for --rate and `config set tick_hz` (0 divided by zero; NaN spun the loop)."""
    if not 1 <= hz <= 1000:
        raise ValueError("rate must be between 1 and 1000 Hz")


def _check_parallel(jobs: int) -> None:
    if not 1 <= jobs <= 10:
        raise ValueError("parallel must be between 1 and 10")


def _rate(text: str) -> float:
    hz = float(text)
    try:
        _check_rate(hz)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return hz


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reactor_mgmt demo", description="A sample daemon with a management socket."
    )
    parser.add_argument("--host", default="127.0.0.1", help="TCP address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8123, help="TCP port; 0 picks one (default 8123)")
    parser.add_argument("--no-tcp", action="store_true", help="no TCP listener (use with --unix)")
    parser.add_argument("--unix", metavar="PATH", help="also listen on this Unix socket (mode 0600)")
    parser.add_argument(
        "--level",
        choices=["user", "operator", "admin"],
        help="maximum level of every listener (default: operator for TCP, admin for Unix)",
    )
    parser.add_argument("--rate", type=_rate, default=50.0, help="worker ticks per second, 1 to 1000 (default 50)")
    parser.add_argument("--max-connections", type=int, default=128)
    parser.add_argument("--idle-timeout", type=float, default=300.0, help="seconds; 0 turns it off")
    parser.add_argument("--max-line", type=int, default=16384, help="bytes per request line")
    parser.add_argument("--high-water", type=int, default=1 << 20, help="output bytes before a client is paused")
    parser.add_argument(
        "--max-output", type=int, default=16 << 20, help="the largest reply; a bigger one gets an error instead"
    )
    parser.add_argument(
        "--low-water",
        type=int,
        help="output bytes below which a paused client resumes (default: a quarter of --high-water)",
    )
    parser.add_argument("--max-commands-per-tick", type=int, default=256, help="per connection per poll (default 256)")
    parser.add_argument(
        "--pending-timeout",
        type=float,
        default=30.0,
        help="seconds a deferred reply may take; 0 turns it off (default 30)",
    )
    parser.add_argument("--token", help="require 'auth TOKEN' (default: $REACTOR_MGMT_TOKEN)")
    parser.add_argument("--token-file", help="read the token from this file")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host without a token")
    parser.add_argument("--address-file", help="write the bound addresses here (useful with --port 0)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve TCP over TLS with this certificate (chain)")
    parser.add_argument("--tls-key", metavar="PEM", help="the certificate's private key (default: in --tls-cert)")
    parser.add_argument(
        "--tls-client-ca", metavar="PEM", help="mutual TLS: require client certificates signed by this CA"
    )
    parser.add_argument(
        "--tls-admin",
        metavar="NAME",
        action="append",
        help="a client certificate name (CN or SAN) that gets admin; repeatable",
    )
    parser.add_argument(
        "--audit",
        action="store_true",
        help="keep the audit log: operator and admin commands and every auth, in the log and `audit`",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="also log the worker's progress")
    args = parser.parse_args(argv)
    if (args.tls_key or args.tls_client_ca or args.tls_admin) and not args.tls_cert:
        parser.error("--tls-key, --tls-client-ca and --tls-admin need --tls-cert")
    if args.no_tcp:
        args.port = None
    return args


def _tls_context(args: argparse.Namespace) -> Any:
    if not args.tls_cert:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(args.tls_client_ca)
    return context


class _QuietWorker(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name != log.name


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    if not args.verbose:
        handler.addFilter(_QuietWorker())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    worker = Worker(args.rate)
    stopping: List[int] = []
    # Ctrl-C and SIGTERM only set a flag, which the loop checks once per iteration: a
    # KeyboardInterrupt could land anywhere, even half-way through start-up.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stopping.append(number))
    try:
        server = build_server(args, worker)
    except ConfigError as exc:  # a setting the server refuses: its message names it
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # an address in use, a token or certificate file unreadable
        print(f"demo: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        next_tick = time.monotonic()
        while not stopping:
            now = time.monotonic()
            if now >= next_tick:
                worker.tick()
                next_tick = max(next_tick + 1.0 / worker.rate, now)
            # Sleep inside poll() until the next tick is due: replies go out at once, and the
            # worker keeps its rhythm because poll() never waits past the deadline.
            server.poll(timeout=max(0.0, next_tick - time.monotonic()), budget=0.005)
    finally:
        server.close(grace=1.0)  # a client still reading a long reply gets a second to take it
        root.removeHandler(handler)
    return 0
