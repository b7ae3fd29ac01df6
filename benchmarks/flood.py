"""Flood budget: how long does one srv.poll(budget=B) call take while a
client floods pipelined pings?  (reactor_mgmt only; stdlib, 3.9+)

This process is the host: it creates a reactor_mgmt.Server on 127.0.0.1
and calls srv.poll(budget=B) in a tight loop, timing every call, while a
separate `loadgen.py flood` process floods the server for D seconds and
checks every reply.  Prints one JSON object: p50/p99/max poll() duration
over the flood window (first to last poll() that handled work), and the
host's steal time over the whole loop where /proc/stat counts it.

    python benchmarks/flood.py [--duration 3] [--budget 0.001]
"""

from __future__ import annotations

import argparse
import array
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"


def pct(sorted_vals, p):
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def host_steal_ms():
    """Time the hypervisor gave this VM's vCPUs to something else, summed over CPUs (the 8th
    field of /proc/stat's "cpu" line), or None where there is no such count. A poll() that
    overlaps it is slow through no work of its own, and the CPU time it reports may include it."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) * 1000.0 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run(duration, budget):
    sys.path.insert(0, ROOT)
    from reactor_mgmt import Server

    srv = Server(host=HOST, port=0, max_connections=20000, idle_timeout=0)
    client = None
    try:
        port = srv.addresses[0][1]
        client = subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "loadgen.py"),
                "flood",
                "--port",
                str(port),
                "--duration",
                str(duration),
            ],
            stdout=subprocess.PIPE,
        )
        durs = array.array("q")
        cpus = array.array("q")
        work = array.array("q")
        clock = time.perf_counter_ns
        cpu_clock = time.thread_time_ns  # CPU time: tells our own work from being preempted
        poll = srv.poll
        deadline = time.monotonic() + duration + 60
        i = 0
        steal_before = host_steal_ms()
        while True:
            c0 = cpu_clock()
            t0 = clock()
            k = poll(budget=budget)
            t1 = clock()
            cpus.append(cpu_clock() - c0)
            durs.append(t1 - t0)
            work.append(k or 0)
            i += 1
            if not i & 1023:
                if client.poll() is not None or time.monotonic() > deadline:
                    break
        steal_after = host_steal_ms()
        out, _ = client.communicate(timeout=30)
        try:
            cres = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            cres = {"ok": False, "error": "flood client printed %r" % out[-200:]}
        if not cres.get("ok"):
            return {"ok": False, "error": "client: %s" % cres.get("error")}
        busy = [j for j in range(len(work)) if work[j] > 0]
        span = slice(busy[0], busy[-1] + 1) if busy else slice(None)
        us = sorted(v / 1000.0 for v in durs[span])
        cpu_us = sorted(v / 1000.0 for v in cpus[span])
        return {
            "ok": True,
            "budget_ms": budget * 1000,
            "polls": len(us),
            "p50_us": pct(us, 50),
            "p99_us": pct(us, 99),
            "max_us": us[-1],
            "over_1_5ms": sum(1 for v in us if v > 1500),
            "over_3ms": sum(1 for v in us if v > 3000),
            "cpu_p99_us": pct(cpu_us, 99),
            "cpu_max_us": cpu_us[-1],
            "client_rps": cres["rps"],
            "client_requests": cres["requests"],
            "poll_returned_work": bool(busy),
            "steal_ms": None if steal_before is None or steal_after is None else steal_after - steal_before,
        }
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        srv.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--budget", type=float, default=0.001)
    a = p.parse_args()
    try:
        res = run(a.duration, a.budget)
    except Exception as e:  # reported as FAILED by run.py
        res = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
