"""Helpers shared by the peer servers (stdlib only, Python 3.9+).

Every peer is started as ``python benchmarks/servers/<peer>.py [--port 0]``.
It binds 127.0.0.1 only, prints the bound port as the first line of stdout
and then serves until it is killed.
"""

import argparse
import array
import json
import os
import resource
import signal
import sys
import time

HOST = "127.0.0.1"
BACKLOG = 1024
MAX_LINE = 65536  # a line longer than this closes the connection


def raise_nofile():
    """Raise the soft RLIMIT_NOFILE to the hard limit (10,000+ connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(description, host_loop=False, extra=None):
    """--port; with host_loop, also the realistic suite's --host/--hz/--work-ms (a host loop
    of HZ frames per second with WORK_MS of busy work each); extra(parser) adds more."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, default=0)
    if host_loop:
        p.add_argument(
            "--host", action="store_true", help="run as a frame-based host loop (benchmarks/realistic.py host)"
        )
        p.add_argument("--hz", type=float, default=60.0)
        p.add_argument("--work-ms", type=float, default=0.0)
    if extra is not None:
        extra(p)
    return p.parse_args()


def announce(port):
    """First line of stdout: the bound port (the runner waits for it)."""
    sys.stdout.write("%d\n" % port)
    sys.stdout.flush()


def proc_cpu_seconds():
    """This process's user + system CPU time, all threads."""
    t = os.times()
    return t.user + t.system


class HostFrames:
    """Frame bookkeeping for the Python host loops of benchmarks/realistic.py.

    Frames are due every 1/hz seconds on a fixed schedule; run_frame() records how late the
    frame starts (now - due), then spins work_ms of busy work (the host's own work). SIGUSR1
    starts a measuring window, SIGUSR2 ends it and prints one JSON line on stdout: frame
    lateness p50/p99/max (ms) and every frame's (late_ms), frames, frames dropped (more than a whole frame behind),
    process CPU, the busy work's CPU and the CPU spent inside the I/O call (io_cpu, when the
    host loop adds it to self.io_cpu) over the window's wall time.
    """

    def __init__(self, hz, work_ms, times_io=True):
        self.times_io = times_io  # False: the loop cannot time its I/O call (asyncio)
        self.step = 1.0 / hz
        self.work = work_ms / 1000.0
        self.clock = time.perf_counter
        self.next_due = self.clock() + self.step
        self.measuring = False
        self._reset()
        signal.signal(signal.SIGUSR1, self._start)
        signal.signal(signal.SIGUSR2, self._stop)

    def _reset(self):
        self.late = array.array("d")
        self.dropped = 0
        self.io_cpu = 0.0
        self.work_cpu = 0.0
        self.t0 = self.clock()
        self.cpu0 = proc_cpu_seconds()

    def _start(self, signum, frame):
        self._reset()
        self.measuring = True

    def _stop(self, signum, frame):
        wall = self.clock() - self.t0
        cpu = proc_cpu_seconds() - self.cpu0
        late = sorted(self.late)
        self.measuring = False

        def pct(q):
            if not late:
                return None
            return late[min(len(late) - 1, int(round(q * (len(late) - 1))))] * 1e3

        out = {
            "frames": len(late),
            "dropped": self.dropped,
            "wall_s": wall,
            "late_p50_ms": pct(0.50),
            "late_p99_ms": pct(0.99),
            "late_max_ms": pct(1.0),
            "cpu_s": cpu,
            "work_cpu_s": self.work_cpu,
            "io_cpu_s": self.io_cpu if self.times_io else None,
            "late_ms": [round(x * 1e3, 4) for x in self.late],
        }  # in frame order (plots.py)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()

    def time_left(self):
        """Seconds until the next frame is due (may be <= 0)."""
        return self.next_due - self.clock()

    def run_frame(self, now):
        """Runs the frame that is due (call when now >= next_due)."""
        if self.measuring:
            self.late.append(now - self.next_due)
        if self.work > 0:
            c0 = time.thread_time()
            end = now + self.work
            clock = self.clock
            while clock() < end:
                pass
            self.work_cpu += time.thread_time() - c0
        self.next_due += self.step
        if self.next_due < now:  # more than a whole frame behind: drop the backlog
            missed = int((now - self.next_due) / self.step) + 1
            self.dropped += missed
            self.next_due += missed * self.step
