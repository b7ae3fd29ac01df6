"""Idle tick cost: ns per loop iteration with nothing to do, at N idle
connections (stdlib only, 3.9+).

Each kind runs in its own *worker* process (one process cannot hold both
ends of 10,000 connections under RLIMIT_NOFILE=20000).  A worker starts its
server, spawns a *holder* process that opens N connections to it and checks
each with one ping, pumps its loop until the holder is ready, then times
batches of idle ticks on command.  The driver (measure(), used by run.py)
interleaves the batches over all kinds (A, B, C, A, B, C, ...) and reports
the median ns per tick.

Kinds (the measured call, all with N idle accepted connections registered):
  bare          selectors.DefaultSelector().select(0)  (listener + N sockets)
  reactor_mgmt  srv.poll(0)
  asyncio       loop.call_soon(loop.stop); loop.run_forever()
  asyncio_iter  one idle iteration of a running asyncio loop (LoopIterations; plots.py)
  uvloop_iter   the same on uvloop's loop (when importable; plots.py)
  asyncore      asyncore.loop(0, use_poll=True, map=m, count=1)
                (use_poll: select() cannot take fds >= 1024)
  twisted       reactor.iterate(0)

    python benchmarks/tick.py worker KIND --n N      (internal)
    python benchmarks/tick.py holder --port P --n N  (internal)
    python benchmarks/tick.py [--n 0 1000 10000] [--rounds 15]  (stand-alone)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import select
import selectors
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVERS = os.path.join(HERE, "servers")
ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"
ALL_KINDS = ["bare", "reactor_mgmt", "asyncio", "asyncore", "twisted"]
ITER_KINDS = ["asyncio_iter", "uvloop_iter"]  # plots.py: one iteration of a running loop


# ---------------------------------------------------------------- envs --


def env_bare():
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, 0))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)

    def pump(timeout):
        for key, _ in sel.select(timeout):
            if key.fileobj is lsock:
                while True:
                    try:
                        c, _a = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
            else:
                c = key.fileobj
                try:
                    data = c.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    sel.unregister(c)
                    c.close()
                else:
                    c.send(b"pong\n" * data.count(b"\n"))

    return lsock.getsockname()[1], pump, functools.partial(sel.select, 0)


def env_reactor_mgmt():
    from reactor_mgmt import Server

    srv = Server(host=HOST, port=0, max_connections=20000, idle_timeout=0)
    return srv.addresses[0][1], srv.poll, functools.partial(srv.poll, 0)


def asyncio_server(new_loop):
    import asyncio

    from asyncio_protocol import LineProtocol

    loop = new_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(LineProtocol, HOST, 0, backlog=1024))
    return server.sockets[0].getsockname()[1], loop


def env_asyncio():
    import asyncio

    port, loop = asyncio_server(asyncio.new_event_loop)

    def one():
        loop.call_soon(loop.stop)
        loop.run_forever()

    return port, lambda timeout: one(), one


class LoopIterations:
    """Idle iterations of a *running* asyncio-style loop, timed k at a time: a callback that
    reschedules itself with call_soon, so each iteration polls with timeout 0, runs it and goes
    round; the k-th stops the loop. (uvloop's run_forever() alone costs ~35 us here, so
    call_soon(stop) + run_forever() per tick would measure its start-up, not its tick.)"""

    def __init__(self, loop):
        self.loop = loop

    def __call__(self):
        self.batch(1)

    def batch(self, k):
        loop = self.loop
        left = [k]

        def step():
            left[0] -= 1
            if left[0] > 0:
                loop.call_soon(step)
            else:
                loop.stop()

        loop.call_soon(step)
        loop.run_forever()


def env_asyncio_iter(new_loop=None):
    import asyncio

    port, loop = asyncio_server(new_loop or asyncio.new_event_loop)
    iterations = LoopIterations(loop)
    return port, lambda timeout: iterations(), iterations


def env_uvloop_iter():
    import uvloop

    return env_asyncio_iter(uvloop.new_event_loop)


def env_asyncore():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import asyncore

        from asynchat_srv import Listener
    m = {}
    lst = Listener(0, m)

    def pump(timeout):
        asyncore.loop(timeout, True, m, 1)

    return lst.socket.getsockname()[1], pump, functools.partial(asyncore.loop, 0, True, m, 1)


def env_twisted():
    from twisted.internet import reactor
    from twisted_line import factory

    port = reactor.listenTCP(0, factory(), backlog=1024, interface=HOST)
    return port.getHost().port, reactor.iterate, functools.partial(reactor.iterate, 0)


ENVS = {
    "bare": env_bare,
    "reactor_mgmt": env_reactor_mgmt,
    "asyncio": env_asyncio,
    "asyncore": env_asyncore,
    "twisted": env_twisted,
    "asyncio_iter": env_asyncio_iter,
    "uvloop_iter": env_uvloop_iter,
}


def available(kind):
    """Can this Python run the kind at all?"""
    if kind == "asyncore":
        import importlib.util

        return importlib.util.find_spec("asyncore") is not None
    if kind in ("twisted", "uvloop_iter"):
        import importlib.util

        return importlib.util.find_spec(kind.replace("_iter", "")) is not None
    return True


# -------------------------------------------------------------- worker --


def worker(kind, n):
    sys.path[:0] = [SERVERS, ROOT]
    from _common import raise_nofile

    raise_nofile()
    out = sys.stdout
    holder = None
    try:
        port, pump, tick = ENVS[kind]()
        if n:
            holder = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "holder", "--port", str(port), "--n", str(n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            deadline = time.monotonic() + 300
            status = None
            while status is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("holder not ready after 300 s")
                pump(0.002)
                r, _, _ = select.select([holder.stdout], [], [], 0)
                if r:
                    status = holder.stdout.readline().decode().strip()
            if status != "ready":
                raise RuntimeError("holder: %s" % (status or "exited"))
            for _ in range(50):  # settle: let the last pongs go out
                pump(0.001)
        batch = getattr(tick, "batch", None)  # times k ticks itself (LoopIterations)
        out.write("ready\n")
        out.flush()
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            k = int(cmd[1])
            clock = time.perf_counter_ns
            t0 = clock()
            if batch is not None:
                batch(k)
            else:
                for _ in range(k):
                    tick()
            t1 = clock()
            out.write("%d\n" % (t1 - t0))
            out.flush()
    except Exception as e:  # reported to the driver, which marks the kind FAILED
        out.write("error %s: %s\n" % (type(e).__name__, str(e).replace("\n", " ")))
        out.flush()
    finally:
        if holder is not None:
            try:
                holder.stdin.close()
                holder.wait(10)
            except Exception:
                holder.kill()
                holder.wait()


def holder(port, n):
    sys.path.insert(0, HERE)
    import loadgen

    loadgen.raise_nofile()
    try:
        conns = loadgen.open_verified(port, n, inflight=100, timeout=280)
    except (loadgen.Failed, OSError) as e:
        sys.stdout.write("error %s\n" % e)
        sys.stdout.flush()
        return
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # hold them until the worker closes our stdin (bounded: 30 min at most)
    select.select([sys.stdin], [], [], 1800)
    for s in conns:
        s.close()


# -------------------------------------------------------------- driver --


class Worker:
    def __init__(self, kind, n, env):
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "worker", kind, "--n", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def readline(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise RuntimeError("%s worker: no answer after %.0f s" % (self.kind, timeout))
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError("%s worker exited (rc=%s)" % (self.kind, self.proc.poll()))
        if line.startswith("error"):
            raise RuntimeError("%s worker: %s" % (self.kind, line))
        return line

    def run(self, k, timeout=60):
        self.proc.stdin.write(b"run %d\n" % k)
        self.proc.stdin.flush()
        return int(self.readline(timeout)) / float(k)

    def stop(self):
        try:
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            self.proc.wait(15)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def measure(ns=(0, 1000, 10000), rounds=15, kinds=None, batch_seconds=0.01, log=None):
    """Returns {n: {kind: {"ns": median ns per tick, "samples": [...]} or
    {"error": ...}}}."""
    kinds = [k for k in (kinds or ALL_KINDS) if available(k)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    results = {}
    for n in ns:
        res = results[n] = {}
        workers = []
        try:
            for kind in kinds:
                t0 = time.monotonic()
                w = Worker(kind, n, env)
                workers.append(w)
                try:
                    w.readline(320)
                except RuntimeError as e:
                    res[kind] = {"error": str(e)}
                    w.stop()
                    workers.remove(w)
                    continue
                if log:
                    log("  tick: %-12s %5d idle connections ready in %.1f s" % (kind, n, time.monotonic() - t0))
            ks = {}
            for w in workers:
                per = min(w.run(5), w.run(5))
                ks[w.kind] = max(1, min(200000, int(batch_seconds * 1e9 / max(per, 1.0))))
                w.run(ks[w.kind])  # warm
            samples = {w.kind: [] for w in workers}
            for r in range(rounds):
                order = workers[r % len(workers) :] + workers[: r % len(workers)]
                for w in order:
                    samples[w.kind].append(w.run(ks[w.kind]))
            for w in workers:
                res[w.kind] = {
                    "ns": statistics.median(samples[w.kind]),
                    "samples": samples[w.kind],
                    "batch": ks[w.kind],
                }
        except RuntimeError as e:
            for w in workers:
                res.setdefault(w.kind, {"error": str(e)})
        finally:
            for w in workers:
                w.stop()
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="measure", choices=["measure", "worker", "holder"])
    p.add_argument("kind", nargs="?")
    p.add_argument("--n", type=int, nargs="*", default=[0, 1000, 10000])
    p.add_argument("--port", type=int)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--kinds", default=",".join(ALL_KINDS))
    a = p.parse_args()
    if a.mode == "worker":
        worker(a.kind, a.n[0])
    elif a.mode == "holder":
        holder(a.port, a.n[0])
    else:
        res = measure(a.n, a.rounds, a.kinds.split(","), log=lambda m: print(m, file=sys.stderr))
        for n, d in res.items():
            for kind, v in d.items():
                v.pop("samples", None)
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
