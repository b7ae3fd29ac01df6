"""An asyncio service whose management socket is served by its own event loop.

The service is a small job runner: jobs wait on an ``asyncio.Queue`` and a pool of worker tasks
runs them (a job just sleeps for its duration, standing in for real I/O).

``server.attach_asyncio()`` is the whole integration: the loop watches the server's descriptor
with ``add_reader`` and keeps a timer for the server's own deadlines, so there is no poll()
call anywhere in this file. Handlers run on the loop's thread between other callbacks, so they
read and change the service's state without locks, exactly like a coroutine would.

A command that has to wait for a coroutine returns a ``Pending``, and the coroutine resolves it:
``wait JOB`` answers when the job finishes. Requests sent after it on the same connection wait
for it (replies stay in order); every other client carries on meanwhile.

Try it::

    python -m reactor_mgmt.examples.asyncio_service
    printf 'submit backup --seconds 1\\nwait 1\\nshow jobs\\n' | nc -N 127.0.0.1 8123
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import time
from typing import Any, Dict, List, Optional

from reactor_mgmt import CommandError, Pending, Server

log = logging.getLogger("asyncio_service")


class Job:
    __slots__ = ("id", "name", "seconds", "state", "worker", "waiters")

    def __init__(self, job_id: int, name: str, seconds: float) -> None:
        self.id = job_id
        self.name = name
        self.seconds = seconds
        self.state = "queued"
        self.worker: Optional[int] = None
        self.waiters: List[Pending] = []

    def finish(self, state: str) -> None:
        self.state = state
        for pending in self.waiters:
            if state == "done":
                pending.resolve(f"job {self.id} done")
            else:
                pending.fail(f"job {self.id} {state}")
        self.waiters.clear()


class Service:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.jobs: Dict[int, Job] = {}
        self.ids = itertools.count(1)
        self.workers: List[asyncio.Task[None]] = []
        self.started = time.monotonic()

    def submit(self, name: str, seconds: float) -> Job:
        job = Job(next(self.ids), name, seconds)
        self.jobs[job.id] = job
        self.queue.put_nowait(job)
        return job

    def set_workers(self, count: int) -> None:
        while len(self.workers) < count:
            self.workers.append(asyncio.ensure_future(self._work(len(self.workers) + 1)))
        while len(self.workers) > count:
            self.workers.pop().cancel()

    async def _work(self, number: int) -> None:
        while True:
            job = await self.queue.get()
            if job.state != "queued":  # cancelled while it waited
                continue
            job.state = "running"
            job.worker = number
            try:
                await asyncio.sleep(job.seconds)
            except asyncio.CancelledError:
                job.finish("cancelled")  # its worker was removed by `set workers`
                raise
            job.finish("done")
            log.info("worker %d finished job %d (%s)", number, job.id, job.name)


def build_server(args: argparse.Namespace, service: Service) -> Server:
    server = Server("127.0.0.1", args.port, address_file=args.address_file)

    @server.command
    def status() -> Dict[str, Any]:
        """Uptime, workers and job counts."""
        states = [job.state for job in service.jobs.values()]
        return {
            "uptime_s": round(time.monotonic() - service.started, 1),
            "workers": len(service.workers),
            "queued": states.count("queued"),
            "running": states.count("running"),
            "done": states.count("done"),
            "tasks": len(asyncio.all_tasks()),
        }

    @server.command(level="operator")
    def submit(name: str, *, seconds: float = 1.0) -> str:
        """Queues a job that takes SECONDS (default 1)."""
        if not 0 <= seconds <= 3600:
            raise CommandError("seconds must be between 0 and 3600")
        job = service.submit(name, seconds)
        return f"job {job.id} queued"

    @server.command(name="show jobs")
    def show_jobs() -> Any:
        """Every job and its state, as a table."""
        if not service.jobs:
            return "no jobs"
        return [
            {"id": job.id, "name": job.name, "seconds": job.seconds, "state": job.state, "worker": job.worker}
            for job in service.jobs.values()
        ]

    @server.command
    def wait(job_id: int, *, timeout: float = 60.0) -> Any:
        """Answers when job JOB_ID has finished (a deferred reply; at most TIMEOUT seconds)."""
        job = service.jobs.get(job_id)
        if job is None:
            raise CommandError(f"no job {job_id}")
        if job.state == "done":
            return f"job {job_id} done"
        if job.state == "cancelled":
            raise CommandError(f"job {job_id} cancelled")
        pending = Pending(timeout=timeout)
        job.waiters.append(pending)
        # Timed out, or its client left: forget it, or any client could grow the list for ever.
        pending.on_cancel(lambda: job.waiters.remove(pending))
        return pending

    @server.command(level="operator")
    def cancel(job_id: int) -> str:
        """Cancels a job that has not started yet."""
        job = service.jobs.get(job_id)
        if job is None:
            raise CommandError(f"no job {job_id}")
        if job.state != "queued":
            raise CommandError(f"job {job_id} is {job.state}; only queued jobs can be cancelled")
        job.finish("cancelled")
        return f"job {job_id} cancelled"

    @server.command(name="set workers", level="operator")
    def set_workers(count: int) -> str:
        """Grows or shrinks the worker pool (1 to 32); a removed worker cancels its job."""
        if not 1 <= count <= 32:
            raise CommandError("workers must be between 1 and 32")
        service.set_workers(count)
        return f"{count} workers"

    return server


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service = Service()
    service.set_workers(args.workers)
    server = build_server(args, service)
    server.attach_asyncio()  # from here on the loop serves the socket; close() detaches it
    log.info("serving on port %d with %d workers", server.port, args.workers)
    try:
        await stop.wait()
    finally:
        server.close()
        workers = list(service.workers)
        service.set_workers(0)
        await asyncio.gather(*workers, return_exceptions=True)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reactor_mgmt.examples.asyncio_service",
        description="An asyncio job runner with a management socket.",
    )
    parser.add_argument("--port", type=int, default=8123, help="TCP port; 0 picks one (default 8123)")
    parser.add_argument("--address-file", help="write the address here once listening")
    parser.add_argument("--workers", type=int, default=2, help="worker tasks (default 2)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
