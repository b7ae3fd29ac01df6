"""What the operator toolkit costs a host: the idle tick and a plain request, toolkit off and on.

    python benchmarks/toolkit_cost.py            # Markdown on stdout
    python benchmarks/toolkit_cost.py --json     # one JSON line

Two servers live in this one process, side by side: ``Server(port=0)`` and ``Server(port=0,
toolkit=True)`` (every part: threads, gc, tracemalloc, log, config, and the activity parts
slow, clients and gap, whose observer times every request and whose watch reads the clock on
every poll). Rounds alternate between them (A B, B A, ...), and each cell is the median of the
rounds, so a noisy moment on a shared machine hits both. Measured:

* the idle tick: ``poll(0)`` with no client, in ns per call;
* a plain request: a client pipelines ``ping`` and reads every ``pong``, polling the server with
  ``poll(0, budget=0.002)`` as the README's host loop does, in ns per request (kernel included).

Both are CPU time of this thread (time.thread_time), not wall time, so that what other
processes on a shared machine do is not counted.

The audit log (``audit=True``) is measured as a third server, since it is off by default, and
a fourth has every part but ``gap``, whose one clock read per poll() is all the idle tick pays.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import reactor_mgmt  # noqa: E402


def idle_ns(server, calls: int) -> float:
    poll = server.poll
    return min(timeit.repeat(poll, number=calls, repeat=3, timer=time.thread_time)) / calls * 1e9


def request_ns(server, count: int) -> float:
    client = socket.create_connection(server.addresses[0], timeout=10)
    client.setblocking(False)
    payload = b"ping\n" * count
    expected = b"pong\n" * count
    got = bytearray()
    sent = 0
    start = time.thread_time()  # CPU time, not wall: neighbours on a shared machine do not count
    deadline = time.monotonic() + 30
    while len(got) < len(expected):
        if time.monotonic() > deadline:
            raise RuntimeError("the server stopped answering")
        if sent < len(payload):
            try:
                sent += client.send(payload[sent : sent + 65536])
            except BlockingIOError:
                pass
        server.poll(0, budget=0.002)
        try:
            got += client.recv(1 << 20)
        except BlockingIOError:
            pass
    elapsed = time.thread_time() - start
    client.close()
    for _ in range(5):
        server.poll(0)
    if bytes(got) != expected:
        raise AssertionError("wrong replies")
    return elapsed / count * 1e9


def _without_gap():
    """Every toolkit part but `gap`, the one that reads the clock in every poll()."""
    server = reactor_mgmt.Server("127.0.0.1", 0)
    server.add_toolkit("threads", "gc", "tracemalloc", "log", "config", "slow", "clients")
    return server


def measure(rounds: int, calls: int, count: int) -> dict:
    servers = {
        "off": reactor_mgmt.Server("127.0.0.1", 0),
        "on": reactor_mgmt.Server("127.0.0.1", 0, toolkit=True),
        "on+audit": reactor_mgmt.Server("127.0.0.1", 0, toolkit=True, audit=True),
        "on, no gap": _without_gap(),
    }
    idle = {name: [] for name in servers}
    req = {name: [] for name in servers}
    try:
        names = list(servers)
        for index in range(rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for name in order:
                idle[name].append(idle_ns(servers[name], calls))
                req[name].append(request_ns(servers[name], count))
    finally:
        for server in servers.values():
            server.close()
    return {
        "rounds": rounds,
        "idle_ns": {k: statistics.median(v) for k, v in idle.items()},
        "request_ns": {k: statistics.median(v) for k, v in req.items()},
    }


def render(result: dict, command: str) -> str:
    idle, req = result["idle_ns"], result["request_ns"]
    lines = [
        "## The operator toolkit's cost",
        "",
        f"Written by `{command}`: median of {result['rounds']} interleaved rounds, in one process.",
        "",
        "| server | idle `poll(0)` ns | vs off | pipelined `ping` ns/request | vs off |",
        "|---|---|---|---|---|",
    ]
    for name in ("off", "on", "on+audit", "on, no gap"):
        lines.append(
            f"| toolkit {name} | {idle[name]:.0f} | {idle[name] / idle['off']:.2f}x | "
            f"{req[name]:.0f} | {req[name] / req['off']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20000, help="idle poll(0) calls per timing")
    parser.add_argument("--requests", type=int, default=20000, help="pipelined pings per round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.rounds, args.calls, args.requests)
    command = "python benchmarks/toolkit_cost.py" + (f" --rounds {args.rounds}" if args.rounds != 7 else "")
    result["markdown"] = render(result, command)
    print(json.dumps(result) if args.json else result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
