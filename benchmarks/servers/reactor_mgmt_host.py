"""reactor_mgmt as the README tells hosts to run it (benchmarks/realistic.py).

A host loop on a fixed frame schedule (--hz, default 60) with --work-ms of busy
work per frame, and the rest of each frame spent in
``server.poll(timeout=time_left, budget=BUDGET)``. The server is
``reactor_mgmt.Server(host="127.0.0.1", port=0)`` with the README's defaults,
and a host ``status`` command that returns a dict of 8 fields.

    --budget 0.002   (default) poll(timeout=time_left, budget=0.002)
    --budget none    poll(timeout=time_left), no budget
    --forever        server.serve_forever() instead of the host loop
    --profile PATH   run under cProfile; the stats are dumped to PATH on SIGTERM

Run with the reactor_mgmt under test on PYTHONPATH (realistic.py --reactor-path).
"""

import signal
import sys
import time

from _common import HOST, HostFrames, announce, parse_args, raise_nofile


class State:
    """The host's state that ``status`` reports."""

    service = "reactor-bench"
    version = "2.3.1"
    state = "running"
    workers = 4
    queued = 17
    processed = 1048576
    failed = 3
    load = 0.75


def build_server():
    from reactor_mgmt import Server

    server = Server(host=HOST, port=0)

    @server.command
    def status():
        """Service state, queue and counters."""
        st = State
        return {
            "service": st.service,
            "version": st.version,
            "state": st.state,
            "workers": st.workers,
            "queued": st.queued,
            "processed": st.processed,
            "failed": st.failed,
            "load": st.load,
        }

    return server


def host_loop(server, frames, budget):
    """The README's loop: frames on schedule, the rest of each frame in poll()."""
    poll = server.poll
    clock = frames.clock
    while True:
        now = clock()
        if now >= frames.next_due:
            frames.run_frame(now)
        left = frames.next_due - clock()
        poll(timeout=left if left > 0 else 0.0, budget=budget)


def measured_host_loop(server, frames, budget):
    """The same loop, also adding up the CPU time spent inside poll() (--host)."""
    poll = server.poll
    clock = frames.clock
    thread_time = time.thread_time
    while True:
        now = clock()
        if now >= frames.next_due:
            frames.run_frame(now)
        left = frames.next_due - clock()
        c0 = thread_time()
        poll(timeout=left if left > 0 else 0.0, budget=budget)
        frames.io_cpu += thread_time() - c0


def main():
    def extra(p):
        p.add_argument("--budget", default="0.002")
        p.add_argument("--forever", action="store_true")
        p.add_argument("--profile", default=None)

    args = parse_args(__doc__, host_loop=True, extra=extra)
    raise_nofile()
    budget = None if args.budget.lower() == "none" else float(args.budget)
    server = build_server()
    import reactor_mgmt

    sys.stderr.write("reactor_mgmt from %s\n" % reactor_mgmt.__file__)  # realistic.py checks it
    sys.stderr.flush()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()

        def on_term(signum, frame):
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, on_term)
    frames = HostFrames(args.hz, args.work_ms)  # its signal handlers before the port goes out
    announce(server.addresses[0][1])
    try:
        if profiler is not None:
            profiler.enable()
        if args.forever:
            server.serve_forever()
        elif args.host:
            measured_host_loop(server, frames, budget)
        else:
            host_loop(server, frames, budget)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        server.close()


if __name__ == "__main__":
    sys.exit(main())
