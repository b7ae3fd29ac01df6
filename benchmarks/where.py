"""Where the time goes in the echo workload: reactor_mgmt's Python per request with the kernel
stubbed out, next to the asyncio Protocol peer's on the same bytes, in one process.

    python benchmarks/where.py           # Markdown on stdout
    python benchmarks/where.py --json    # one JSON line (run.py embeds its "markdown")

End to end, both servers make about the same syscalls per request, so what separates them is
Python. Here the socket is a stub: reactor_mgmt's poll() runs for real on one accepted
connection whose socket object serves the payload in the reads the server asks for (8 KiB) and
swallows the replies, and the peer's real LineProtocol.data_received gets the same payload in
asyncio's 256 KiB reads with a stub transport. Every variant's output is checked byte for byte.
The variants alternate, A B C A B C, and each reports its best round, so a noisy second on a
shared machine does not favour one of them.

Every request takes the server's one general path: parse (the registry's line cache misses, as
every echo is distinct), the permission check, one handler call, framing, a write to the
transport. Two more rows: the same server with echo registered again by the host (the same
path, a different function), and the "handler contract" row, a minimal path that keeps the
promise and nothing else: decode, split the run on its command, one handler call per request,
one join, one encode, and none of the checks, queueing or tick of the real path.

This reaches into the server's internals (the accepted connection's transport socket, the
loop's kernel wait) to take the kernel out; it is a measuring tool, not an example.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import socket
import sys
import time
from itertools import starmap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ASYNCIO_READ = 262144  # what asyncio's selector transport asks recv() for

sys.path.insert(0, HERE)
from loadgen import echo_payload  # noqa: E402  (the payload the echo workload sends)


class StubSocket:
    """Stands in for an accepted socket: reads come from ``payload``, sends are kept."""

    def __init__(self, payload, fd):
        self.payload = payload
        self.pos = 0
        self.out = []
        self.fd = fd

    def recv(self, size):
        data = self.payload[self.pos : self.pos + size]
        if not data:
            raise BlockingIOError
        self.pos += len(data)
        return data

    def send(self, data):
        self.out.append(bytes(data))
        return len(data)

    def fileno(self):
        return self.fd


def reactor_mgmt_runner(payload, expected, max_commands_per_tick=256, host_echo=False):
    """A Server with one real accepted connection whose socket and kernel wait are stubbed.
    With ``host_echo``, echo is registered again as a host's handler would be."""
    sys.path.insert(0, ROOT)
    from reactor_mgmt import Server

    srv = Server(host="127.0.0.1", port=0, idle_timeout=0, max_commands_per_tick=max_commands_per_tick)
    if host_echo:

        @srv.command
        def echo(*words):
            return " ".join(words)

    client = socket.create_connection(srv.addresses[0][:2], timeout=5)
    client.sendall(b"ping\n")
    deadline = time.monotonic() + 5
    conn = None
    while conn is None and time.monotonic() < deadline:
        srv.poll(0.01)
        conn = srv.connections[0] if srv.connections else None
    if conn is None:
        raise RuntimeError("the server did not accept the connection")
    reply = b""
    while reply != b"pong\n" and time.monotonic() < deadline:
        srv.poll(0.01)
        try:
            reply += client.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
    if reply != b"pong\n":
        raise RuntimeError("the server did not answer a ping: %r" % reply)
    transport = conn.transport
    real_sock = transport.sock
    fd = real_sock.fileno()
    events = [(fd, 0x001)]  # EPOLLIN: poll() reads events in epoll's bits everywhere
    srv._loop.wait = lambda timeout=None: events

    def run():
        stub = transport.sock = StubSocket(payload, fd)
        polls = 0
        while stub.pos < len(payload) or conn.queue or transport.out:
            srv.poll(0)
            polls += 1
            if polls > len(payload):  # every poll reads or runs something, or this never ends
                raise AssertionError("reactor_mgmt stopped making progress")
        if b"".join(stub.out) != expected:
            raise AssertionError("reactor_mgmt's replies differ from the expected stream")

    def close():
        transport.sock = real_sock
        client.close()
        srv.close()

    return run, close


def asyncio_runner(payload, expected):
    """The asyncio Protocol peer's own data_received, fed asyncio's reads."""
    sys.path.insert(0, os.path.join(HERE, "servers"))
    from asyncio_protocol import LineProtocol

    class StubTransport:
        def __init__(self):
            self.out = []
            self.write = self.out.append

        def close(self):
            raise AssertionError("the peer closed its transport")

    def run():
        proto = LineProtocol()
        transport = StubTransport()
        proto.connection_made(transport)
        received = proto.data_received
        for start in range(0, len(payload), ASYNCIO_READ):
            received(payload[start : start + ASYNCIO_READ])
        if b"".join(transport.out) != expected:
            raise AssertionError("the asyncio peer's replies differ from the expected stream")

    return run


def contract_runner(payload, expected, read_size=8192):
    """The handler contract and nothing else (see the module docstring)."""

    def echo(*words):
        return " ".join(words)

    def run():
        out = []
        partial = b""
        for start in range(0, len(payload), read_size):
            data = partial + payload[start : start + read_size]
            end = data.rfind(b"\n") + 1
            partial = data[end:]
            text = data[:end].decode("ascii")
            tails = text[len("echo ") : -1].split("\necho ")
            out.append(("\n".join(starmap(echo, map(str.split, tails))) + "\n").encode())
        if b"".join(out) != expected:
            raise AssertionError("the contract path's replies differ from the expected stream")

    return run


def best_of(runners, rounds):
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


# Stages of the shipped path: each runs once per read or per tick, never per request, so timing
# them with a wrapper costs a few ns per request. Times are inclusive; a nested stage is part of
# the one that calls it (sending is inside the session's turn).
STAGES = [
    ("reactor_mgmt._protocol", "RequestDecoder", "feed", "decoding reads into lines (`RequestDecoder.feed`)"),
    (
        "reactor_mgmt._session",
        "Connection",
        "service",
        "running the queued requests, one general path each (`Connection.service`)",
    ),
    ("reactor_mgmt._transport", "Transport", "flush", "of which sending (`Transport.flush`, the send itself stubbed)"),
]


def stage_times(run, n):
    import importlib

    spent = {}
    originals = []
    for module, cls_name, attr, _label in STAGES:
        cls = getattr(importlib.import_module(module), cls_name)
        original = cls.__dict__[attr]
        originals.append((cls, attr, original))
        func = original.__func__ if isinstance(original, staticmethod) else original

        def timed(*args, _func=func, _key=attr, **kwargs):
            t0 = time.perf_counter()
            try:
                return _func(*args, **kwargs)
            finally:
                spent[_key] = spent.get(_key, 0.0) + time.perf_counter() - t0

        setattr(cls, attr, staticmethod(timed) if isinstance(original, staticmethod) else timed)
    try:
        t0 = time.perf_counter()
        run()
        total = time.perf_counter() - t0
    finally:
        for cls, attr, original in originals:
            setattr(cls, attr, original)
    return {"total": total / n * 1e9, **{key: secs / n * 1e9 for key, secs in spent.items()}}


def profile_table(run, n, top):
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(row[2] for row in stats.stats.values())  # tottime
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    out = []
    for (filename, line, func), (_cc, calls, tottime, _ct, _callers) in rows:
        where = (
            func
            if filename == "~"
            else "%s:%d %s"
            % (os.path.relpath(filename, ROOT) if filename.startswith(ROOT) else os.path.basename(filename), line, func)
        )
        out.append(
            {
                "function": where,
                "calls": calls,
                "share": tottime / total if total else 0.0,
                "calls_per_request": calls / n,
            }
        )
    return out


def measure(n, rounds, top):
    payload, expected = echo_payload(n)
    ours, close = reactor_mgmt_runner(payload, expected)
    ours_1024, close_1024 = reactor_mgmt_runner(payload, expected, max_commands_per_tick=1024)
    host, close_host = reactor_mgmt_runner(payload, expected, host_echo=True)
    runners = {
        "reactor_mgmt": ours,
        "reactor_mgmt_1024": ours_1024,
        "host_echo": host,
        "contract": contract_runner(payload, expected),
        "asyncio_protocol": asyncio_runner(payload, expected),
    }
    for run in runners.values():  # warm up, and check every output once before timing
        run()
    best = best_of(runners, rounds)
    stages = min((stage_times(ours, n) for _ in range(5)), key=lambda d: d["total"])
    host_stages = min((stage_times(host, n) for _ in range(5)), key=lambda d: d["total"])
    table = profile_table(ours, n, top)
    close()
    close_1024()
    close_host()
    return {
        "ok": True,
        "requests": n,
        "rounds": rounds,
        "python": sys.version.split()[0],
        "ns": {name: secs / n * 1e9 for name, secs in best.items()},
        "stages": stages,
        "host_stages": host_stages,
        "profile": table,
    }


LABELS = [
    ("reactor_mgmt", "reactor_mgmt `poll()`, as shipped (`max_commands_per_tick=256`)"),
    ("reactor_mgmt_1024", "reactor_mgmt `poll()`, `max_commands_per_tick=1024`"),
    ("host_echo", "reactor_mgmt `poll()`, echo registered again by the host"),
    ("contract", "the handler contract alone (no checks, queue or tick)"),
    ("asyncio_protocol", "asyncio Protocol peer, `data_received`"),
]


def render(res, cmd):
    ns = res["ns"]
    base = ns["asyncio_protocol"]
    lines = [
        "## Profile: echo with the kernel stubbed out",
        "",
        "Written by `%s` (Python %s): %s distinct pipelined `echo I xI` requests, best of %d "
        "interleaved rounds. The module docstring of `benchmarks/where.py` says what each row "
        "runs." % (cmd, res["python"], "{:,}".format(res["requests"]), res["rounds"]),
        "",
        "| path | Python ns per request | time vs asyncio Protocol's (lower is faster) |",
        "|---|---|---|",
    ]
    for key, label in LABELS:
        lines.append("| %s | %.0f | %.2fx |" % (label, ns[key], ns[key] / base))
    lines += [
        "",
        "Stages (inclusive ns per request, timed around calls made once per read or tick, best of "
        "5; `Connection.service` contains the row below it), for the shipped server and for "
        "echo registered by the host:",
        "",
        "| stage | shipped | host's echo |",
        "|---|---|---|",
    ]
    shipped, hosts = res["stages"], res["host_stages"]
    for _module, _cls, key, label in STAGES:
        lines.append("| %s | %.0f | %.0f |" % (label, shipped.get(key, 0.0), hosts.get(key, 0.0)))
    rest = [st["total"] - sum(st.get(key, 0.0) for key in ("feed", "service")) for st in (shipped, hosts)]
    lines.append("| the rest: `poll()`, the read, the ready queue | %.0f | %.0f |" % tuple(rest))
    lines.append("| total, in this round | %.0f | %.0f |" % (shipped["total"], hosts["total"]))
    lines += [
        "",
        "cProfile of the shipped path, by own time (profiling inflates each Python call):",
        "",
        "| function | calls per request | share of own time |",
        "|---|---|---|",
    ]
    for row in res["profile"]:
        lines.append("| `%s` | %.3f | %.1f%% |" % (row["function"], row["calls_per_request"], row["share"] * 100))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--top", type=int, default=8, help="rows of the cProfile table")
    ap.add_argument("--json", action="store_true", help="one JSON line, with the Markdown in it")
    args = ap.parse_args()
    cmd = "python benchmarks/where.py" + "".join(
        " --%s %d" % (name, value)
        for name, value, default in (("requests", args.requests, 200000), ("rounds", args.rounds, 15))
        if value != default
    )
    try:
        res = measure(args.requests, args.rounds, args.top)
        res["markdown"] = render(res, cmd)
    except Exception as exc:  # reported by run.py, never a traceback in the middle of its table
        res = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}
    if args.json:
        print(json.dumps(res))
    elif res["ok"]:
        print(res["markdown"])
    else:
        print("FAILED: " + res["error"], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
