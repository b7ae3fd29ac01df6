"""Realistic workloads, side by side (issue 17): one-shot connections, a real ``status``
command in text and JSON, distinct pipelined ``echo``, and a 60 Hz host loop under a flood.

    python benchmarks/realistic.py                          # full run, 5 rounds (~5 min on 2 cores)
    python benchmarks/realistic.py --quick                  # smoke run, 1 short round (~35 s)
    python benchmarks/realistic.py --reactor-path /tmp/bench-base --output benchmarks/RESULTS-x.md
    python benchmarks/realistic.py --profile                # cProfile of reactor_mgmt on churn/pipe

reactor_mgmt runs as the README tells hosts to run it: a 60 Hz host loop that spends the rest
of each frame in ``server.poll(timeout=time_left, budget=0.002)``, with a host ``status``
command returning a dict of 8 fields (servers/reactor_mgmt_host.py). The same loop without a
budget and ``serve_forever()`` run beside it. Peers: the selectors floor, asyncio Protocol,
uvloop (when importable) and node's ``net`` (when ``node`` is on PATH), each answering the
same ``status``/JSON/``echo`` by hand in its own idiom. Every server runs in its own process
for the whole run; a separate load generator (realistic_load.py) drives one server at a time
and checks every reply byte for byte. Rounds interleave the servers (A B C, then B C A, ...);
each cell is the median over rounds, each ratio the median of the per-round ratios against
the floor measured in the same round. A wrong or missing reply makes the cell FAILED.
See benchmarks/README.md ("Realistic workloads").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SERVERS = os.path.join(HERE, "servers")
LOAD = os.path.join(HERE, "realistic_load.py")
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

sys.path.insert(0, HERE)
from realistic_load import STATUS_TEXT, json_expected  # noqa: E402  (the expected bytes)

RM = "reactor_mgmt"
RM_NOBUDGET = "reactor_mgmt_nobudget"
RM_FOREVER = "reactor_mgmt_forever"

# name -> (label, command, uses reactor_mgmt, runs the host workload)
PEERS = {
    "floor": ("floor (selectors)", [PY, os.path.join(SERVERS, "floor.py")], False, True),
    RM: (
        "reactor_mgmt poll(budget=0.002)",
        [PY, os.path.join(SERVERS, "reactor_mgmt_host.py"), "--budget", "0.002"],
        True,
        True,
    ),
    RM_NOBUDGET: (
        "reactor_mgmt poll(), no budget",
        [PY, os.path.join(SERVERS, "reactor_mgmt_host.py"), "--budget", "none"],
        True,
        True,
    ),
    RM_FOREVER: (
        "reactor_mgmt serve_forever()",
        [PY, os.path.join(SERVERS, "reactor_mgmt_host.py"), "--forever"],
        True,
        False,
    ),
    "asyncio": ("asyncio Protocol", [PY, os.path.join(SERVERS, "asyncio_protocol.py")], False, True),
    "uvloop": ("uvloop Protocol", [PY, os.path.join(SERVERS, "asyncio_protocol.py"), "--uvloop"], False, True),
    "node": ("node net", ["node", os.path.join(SERVERS, "node_net.js")], False, True),
}
SHORT = {
    "floor": "floor",
    RM: "reactor_mgmt",
    RM_NOBUDGET: "rm no budget",
    RM_FOREVER: "rm serve_forever",
    "asyncio": "asyncio",
    "uvloop": "uvloop",
    "node": "node",
}

# workload -> (load generator arguments, family)
CELLS = {
    "churn1_text": (["churn", "--conc", "1", "--kind", "text"], "churn"),
    "churn1_json": (["churn", "--conc", "1", "--kind", "json"], "churn"),
    "churn32_text": (["churn", "--conc", "32", "--kind", "text"], "churn"),
    "churn32_json": (["churn", "--conc", "32", "--kind", "json"], "churn"),
    "rtt_text": (["rtt", "--kind", "text"], "rtt"),
    "rtt_json": (["rtt", "--kind", "json"], "rtt"),
    "pipe_status": (["pipe", "--kind", "status"], "pipe"),
    "pipe_json": (["pipe", "--kind", "json"], "pipe"),
    "pipe_echo": (["pipe", "--kind", "echo"], "pipe"),
}
LABELS = {
    "churn1_text": "one-shot, 1 client, text",
    "churn1_json": "one-shot, 1 client, JSON",
    "churn32_text": "one-shot, 32 clients, text",
    "churn32_json": "one-shot, 32 clients, JSON",
    "rtt_text": "`status` round trip",
    "rtt_json": "JSON `status` round trip",
    "pipe_status": "`status` pipelined",
    "pipe_json": "JSON `status` pipelined",
    "pipe_echo": "distinct `echo N` pipelined",
    "host": "60 Hz host under a flood",
}
WORKLOADS = list(CELLS) + ["host"]
SLICE_S = 0.125  # paired runs alternate the two servers in slices this long

# retries/quiet_pct: a measurement during which other processes used more than quiet_pct of a
# CPU is taken again (up to `retries` more times, while the run stays within max_minutes), and
# the attempt with the least interference is kept. A failed attempt is never retried.
# churn_s, rtt_s, pipe_s: each server's share of a paired run (the floor gets as much).
FULL = dict(
    rounds=5,
    churn_s=0.5,
    rtt_count=3000,
    rtt_s=0.3,
    pipe_s=0.4,
    host_idle_s=0.5,
    host_flood_s=2.0,
    srcs=32,
    retries=2,
    quiet_pct=40.0,
    max_minutes=7.5,
)
QUICK = dict(
    rounds=1,
    churn_s=0.25,
    rtt_count=1000,
    rtt_s=0.25,
    pipe_s=0.25,
    host_idle_s=0.3,
    host_flood_s=0.6,
    srcs=32,
    retries=0,
    quiet_pct=40.0,
    max_minutes=1.0,
)


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# ------------------------------------------------------------- processes --


class LineReader:
    """Lines from a pipe, with a timeout (select on the fd)."""

    def __init__(self, f):
        self.fd = f.fileno()
        self.buf = b""

    def readline(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")


class Server:
    """One server process; stop() is always called from a finally."""

    def __init__(self, name, env, extra=(), timeout=20.0):
        self.name = name
        self.err = tempfile.TemporaryFile()
        cmd = PEERS[name][1] + list(extra)
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err, env=env
        )
        self.pid = self.proc.pid
        self.out = LineReader(self.proc.stdout)
        line = self.out.readline(timeout)
        try:
            self.port = int(line)
        except (TypeError, ValueError):
            self.stop()
            raise RuntimeError("%s did not print its port: %s" % (name, self.stderr_tail()))
        if PEERS[name][2]:  # the reactor_mgmt under test, not another copy on sys.path
            self.err.seek(0)
            first = self.err.readline().decode(errors="replace").strip()
            self.err.seek(0, 2)
            want = os.path.join(env["REACTOR_PATH"], "reactor_mgmt") + os.sep
            if not first.startswith("reactor_mgmt from " + want):
                self.stop()
                raise RuntimeError("%s imported the wrong reactor_mgmt: %r (want %s)" % (name, first, want))

    def alive(self):
        return self.proc.poll() is None

    def stderr_tail(self):
        try:
            self.err.seek(0)
            lines = self.err.read().decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:]) or "(no stderr; rc=%s)" % self.proc.poll()
        except (OSError, ValueError):
            return "?"

    def cpu_s(self):
        """User + system CPU of the process, all threads (/proc/PID/stat, clock ticks)."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def pin(self, cpus):
        for tid in os.listdir("/proc/%d/task" % self.pid):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass

    def stop(self):
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self.proc.stdout.close()
            self.err.close()


def run_load(args, timeout, cpus=None):
    """Runs the load generator to completion; returns its JSON result."""
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    try:
        r = subprocess.run(
            [PY, LOAD] + args, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, preexec_fn=pre
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "load generator timed out after %.0f s" % timeout}
    lines = r.stdout.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = r.stderr.decode(errors="replace").strip().splitlines()[-2:]
        return {"ok": False, "error": "rc=%s, no result: %s" % (r.returncode, " | ".join(tail))}


def probe(port):
    """Every server must first answer one mixed connection right (CRLF, JSON, echo, EOF)."""
    want = STATUS_TEXT + json_expected(7) + b"a b\n" + STATUS_TEXT
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b'status\r\n{"id": 7, "cmd": "status"}\necho  a   b\nsta')
        time.sleep(0.02)
        s.sendall(b"tus\n")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    finally:
        s.close()
    if got != want:
        raise RuntimeError("probe: wrong reply %r" % got[:400])


def busy_s():
    """CPU time the whole machine spent busy (all CPUs, /proc/stat), steal included."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK  # user nice system irq softirq steal
    except (OSError, IndexError, ValueError):
        return None


def steal_s():
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


# ------------------------------------------------------------- measuring --


def measure_pair(srvs, cell, p, cpus_all):
    """Drives one or two servers with one load generator; with two, in alternating slices
    (A B B A ...) of the same run, so both see the same moments of a shared machine. Returns
    one result dict per server."""
    args, family = CELLS[cell]
    args = args + ["--port", ",".join(str(srv.port) for srv in srvs), "--slice", str(SLICE_S)]
    if family == "churn":
        args += ["--duration", str(p["churn_s"]), "--srcs", str(p["srcs"])]
    elif family == "rtt":
        args += ["--count", str(p["rtt_count"]), "--duration", str(p["rtt_s"])]
    else:
        args += ["--duration", str(p["pipe_s"])]
    pin = None
    if family == "rtt" and len(cpus_all) > 1:
        # All on one CPU: the software path of both sides plus two context switches,
        # not the cross-CPU wake-up latency of a small VM (large and erratic here).
        pin = {max(cpus_all)}
        for srv in srvs:
            srv.pin(pin)
    c0 = [srv.cpu_s() for srv in srvs]
    b0 = busy_s()
    w0 = time.monotonic()
    try:
        out = run_load(args, timeout=90, cpus=pin)
    finally:
        if pin:
            for srv in srvs:
                srv.pin(cpus_all)
    cpus = [srv.cpu_s() - c for srv, c in zip(srvs, c0)]
    b1 = busy_s()
    wall = time.monotonic() - w0
    results = []
    for i, srv in enumerate(srvs):
        if not srv.alive():
            results.append({"ok": False, "error": "server died: %s" % srv.stderr_tail()})
        elif not out.get("ok"):
            failed = out.get("failed_port")
            if failed is None or failed == srv.port:
                results.append({"ok": False, "error": out.get("error", "failed")})
            else:  # the other server failed: this one has no figures from this run
                results.append({"ok": None, "error": "not measured: its partner failed"})
        else:
            r = dict(out["per_port"][i])
            r.update(
                ok=True, server_cpu_s=cpus[i], client_cpu_s=out["client_cpu_s"], client_wall_s=out["client_wall_s"]
            )
            if family == "churn":
                r["server_cpu_us_per_conn"] = cpus[i] / r["conns"] * 1e6 if r["conns"] else None
                r["server_cpu_pct"] = 100.0 * cpus[i] / r["elapsed_s"] if r["elapsed_s"] else None
                r["client_cpu_pct"] = 100.0 * out["client_cpu_s"] / out["client_wall_s"]
            if b0 is not None and b1 is not None:
                # CPU that neither these servers nor the load generator used: other processes on
                # a shared machine, the other servers' idle ticks, steal. Noise, reported as such.
                r["other_cpu_pct"] = max(0.0, 100.0 * (b1 - b0 - sum(cpus) - out["client_cpu_s"]) / wall)
            results.append(r)
    return results


def measure_host(name, env, p, steal):
    """One host-mode server (60 Hz, 4 ms of work per frame): an idle window, then a flood of
    32 one-shot clients plus a pipeliner, each bracketed by SIGUSR1/SIGUSR2."""
    srv = Server(name, env, extra=["--host", "--hz", "60", "--work-ms", "4"])
    load = None
    try:
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGUSR1)
        time.sleep(p["host_idle_s"])
        srv.proc.send_signal(signal.SIGUSR2)
        idle = json.loads(srv.out.readline(10) or "null")
        load = subprocess.Popen(
            [
                PY,
                LOAD,
                "flood",
                "--port",
                str(srv.port),
                "--conc",
                "32",
                "--duration",
                str(p["host_flood_s"]),
                "--srcs",
                str(p["srcs"]),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        lr = LineReader(load.stdout)
        if lr.readline(20) != "start":
            return {"ok": False, "error": "flood did not start: %s" % load.stderr.read(2000)}
        s0 = steal()
        b0 = busy_s()
        srv.proc.send_signal(signal.SIGUSR1)
        line = lr.readline(p["host_flood_s"] + 30)
        srv.proc.send_signal(signal.SIGUSR2)
        s1 = steal()
        b1 = busy_s()
        flood = json.loads(srv.out.readline(10) or "null")
        if line != "stop":
            return {"ok": False, "error": "flood did not stop: %r" % line}
        res = lr.readline(40)
        load.wait(10)
        try:
            out = json.loads(res)
        except (TypeError, ValueError):
            return {"ok": False, "error": "flood: no result (%s)" % load.stderr.read(2000)}
        if not out.get("ok"):
            return out
        if not srv.alive() or idle is None or flood is None:
            return {"ok": False, "error": "host server gave no figures: %s" % srv.stderr_tail()}
        wall = flood["wall_s"]
        out.update(
            idle_late_p99_ms=idle["late_p99_ms"],
            late_p50_ms=flood["late_p50_ms"],
            late_p99_ms=flood["late_p99_ms"],
            late_max_ms=flood["late_max_ms"],
            frames=flood["frames"],
            dropped=flood["dropped"],
            late_ms=flood.get("late_ms"),
            idle_late_ms=idle.get("late_ms"),  # per frame (plots.py)
            io_cpu_pct=100.0 * (flood["cpu_s"] - flood["work_cpu_s"]) / wall,
            poll_cpu_pct=(None if flood["io_cpu_s"] is None else 100.0 * flood["io_cpu_s"] / wall),
            work_cpu_pct=100.0 * flood["work_cpu_s"] / wall,
            steal_ms=None if s0 is None or s1 is None else (s1 - s0) * 1e3,
        )
        if b0 is not None and b1 is not None:  # as in measure_pair; the client's CPU pro rata
            client = out["client_cpu_s"] * min(1.0, wall / out["client_wall_s"])
            out["other_cpu_pct"] = max(0.0, 100.0 * (b1 - b0 - flood["cpu_s"] - client) / wall)
        return out
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        if load is not None:
            load.stdout.close()
            load.stderr.close()
        srv.stop()


# ------------------------------------------------------------- results --


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


class Results:
    """runs[(w, peer)]: the peer's result per round (the floor's: one per pair it was in).
    Each peer is paired with a base, the floor, except that reactor_mgmt's no-budget loop and
    serve_forever() are paired with reactor_mgmt's budgeted loop, so that the budget target is
    a direct comparison: partner[(w, peer)] holds the base's result from the same paired run,
    base[(w, peer)] names it. The host workload is not paired: its rounds are compared."""

    def __init__(self):
        self.runs = {}
        self.partner = {}
        self.base = {}

    def add(self, w, peer, out, partner_out=None, base="floor"):
        self.runs.setdefault((w, peer), []).append(out)
        if partner_out is not None:
            self.partner.setdefault((w, peer), []).append(partner_out)
            self.base[(w, peer)] = base

    def error(self, w, peer):
        for out in self.runs.get((w, peer), []):
            if out.get("ok") is False:
                return out.get("error", "failed")
        if not [out for out in self.runs.get((w, peer), []) if out.get("ok")]:
            return "not run"
        return None

    def value(self, w, peer, metric):
        if self.error(w, peer):
            return None
        return med([out.get(metric) for out in self.runs[(w, peer)] if out.get("ok")])

    @staticmethod
    def _ratios(mine, theirs, metric, invert):
        rs = []
        for a, b in zip(mine, theirs):
            x, y = a.get(metric), b.get(metric)
            if not (a.get("ok") and b.get("ok")) or x is None or y is None or (x if invert else y) == 0:
                rs.append(None)
            else:
                rs.append(y / x if invert else x / y)
        return rs

    def _vs_floor(self, w, peer, metric, invert):
        """Per round: peer/floor (floor/peer with invert); through reactor_mgmt's ratio to its
        floor for the peers paired with reactor_mgmt."""
        if peer == "floor":
            return [1.0] * len(self.runs.get((w, RM), self.runs[(w, peer)]))
        base = self.base.get((w, peer), "floor")
        partners = self.partner.get((w, peer)) or self.runs.get((w, "floor"), [])
        rs = self._ratios(self.runs[(w, peer)], partners, metric, invert)
        if base != "floor":
            rs = [
                x * y if x is not None and y is not None else None
                for x, y in zip(rs, self._vs_floor(w, base, metric, invert))
            ]
        return rs

    def ratio(self, w, peer, metric, base="floor", invert=False):
        """Median over rounds of the per-round ratio peer/base (base/peer with invert): from
        the same paired run where peer was paired with base, else through the floor."""
        if self.error(w, peer) or self.error(w, base):
            return None
        if base == "floor":
            return med(self._vs_floor(w, peer, metric, invert))
        if self.base.get((w, peer)) == base:
            return med(self._ratios(self.runs[(w, peer)], self.partner[(w, peer)], metric, invert))
        if (w, peer) not in self.partner and (w, base) not in self.partner:  # host: by round
            return med(self._ratios(self.runs[(w, peer)], self.runs[(w, base)], metric, invert))
        mine = self._vs_floor(w, peer, metric, invert)
        theirs = self._vs_floor(w, base, metric, invert)
        return med([a / b if a is not None and b else None for a, b in zip(mine, theirs)])


def fmt(v, spec="%.1f"):
    if v is None:
        return "-"
    if spec == "int":
        return f"{int(round(v)):,}"
    return spec % v


def fx(r):
    return "" if r is None else " (%.2fx)" % r


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def cell_text(res, w, peer, metric, spec, ratio_base=True, invert=False):
    err = res.error(w, peer)
    if err:
        return "FAILED" if err != "not run" else "-"
    if metric is None:
        return None
    v = res.value(w, peer, metric)
    r = res.ratio(w, peer, metric, invert=invert) if ratio_base and peer != "floor" else None
    return fmt(v, spec) + fx(r)


def targets(res):
    rows = []

    def add(name, value, limit, ok, vfmt="%.2fx", cells=()):
        if value is None:
            if any(res.error(w, x) == "not run" for w, x in cells):
                rows.append((name, "not run", limit, "-"))
            else:
                rows.append((name, "FAILED", limit, "FAIL"))
        else:
            rows.append((name, vfmt % value, limit, "PASS" if ok(value) else "FAIL"))

    for w, lab in (("churn1_text", "one-shot, 1 client, text"), ("churn32_text", "one-shot, 32 clients, text")):
        add(
            lab + ": conn/s vs floor",
            res.ratio(w, RM, "conn_s"),
            ">= 1.0x",
            lambda v: v >= 1.0,
            cells=[(w, RM), (w, "floor")],
        )
        add(
            lab + ": server CPU/conn vs floor",
            res.ratio(w, RM, "server_cpu_us_per_conn"),
            "<= 1.1x",
            lambda v: v <= 1.1,
            cells=[(w, RM), (w, "floor")],
        )
    for w, metric, limit, ok in (
        ("churn32_json", "conn_s", ">= 0.9x", lambda v: v >= 0.9),
        ("rtt_text", "median_us", "<= 1.05x", lambda v: v <= 1.05),
        ("rtt_json", "median_us", "<= 1.05x", lambda v: v <= 1.05),
        ("pipe_status", "req_s", ">= 0.8x", lambda v: v >= 0.8),
        ("pipe_json", "req_s", ">= 0.8x", lambda v: v >= 0.8),
        ("pipe_echo", "req_s", ">= 0.5x", lambda v: v >= 0.5),
    ):
        name = LABELS[w] + (": conn/s" if metric == "conn_s" else ": median" if metric == "median_us" else "")
        add(name + " vs floor", res.ratio(w, RM, metric), limit, ok, cells=[(w, RM), (w, "floor")])
    for w, metric, inv in budget_pairs():
        add(
            "budget=0.002 vs no budget (speed): %s" % LABELS[w],
            res.ratio(w, RM, metric, base=RM_NOBUDGET, invert=inv),
            ">= 0.95x",
            lambda v: v >= 0.95,
            cells=[(w, RM), (w, RM_NOBUDGET)],
        )
    add(
        "60 Hz host under a flood: frames late, p99",
        res.value("host", RM, "late_p99_ms"),
        "<= 1 ms",
        lambda v: v <= 1.0,
        vfmt="%.2f ms",
        cells=[("host", RM)],
    )
    return rows


def budget_pairs():
    """(workload, metric, invert): the speed of poll(budget=0.002) over that of no budget."""
    out = [(w, "conn_s", False) for w in ("churn1_text", "churn1_json", "churn32_text", "churn32_json")]
    out += [(w, "median_us", True) for w in ("rtt_text", "rtt_json")]
    out += [(w, "req_s", False) for w in ("pipe_status", "pipe_json", "pipe_echo")]
    out += [("host", "conn_s", False)]
    return out


FOREVER_METRICS = [(w, m, inv) for w, m, inv in budget_pairs() if w != "host"]


def render(res, peers, p, info, cmd, started, elapsed, notes):
    cols = [x for x in peers if x != RM_FOREVER]
    head = ["workload"] + [SHORT[x] for x in cols]
    L = []
    L.append("# reactor_mgmt realistic workloads (issue 17)")
    L.append("")
    L.append("Generated by `benchmarks/realistic.py`; do not edit by hand.")
    L.append("")
    L.append("- command: `%s`" % cmd)
    L.append("- date: %s (%.0f s)" % (started, elapsed))
    L.append("- machine: %s CPUs, %s; %s; %s" % (info["nproc"], info["cpu"], info["kernel"], info["python"]))
    L.append("- reactor_mgmt: `%s`" % info["reactor"])
    L.append("- peers: %s" % ", ".join("%s = %s" % (SHORT[x], PEERS[x][0]) for x in peers))
    L.append(
        "- rounds: %d. In each round every server is driven together with the floor by one load "
        "generator, in alternating slices of %.3f s (floor X X floor ...; who goes first alternates), "
        "so that both see the same moments of this shared machine; the order of the servers "
        "rotates each round. reactor_mgmt's no-budget loop and serve_forever() are paired with "
        "reactor_mgmt's budgeted loop instead, so the budget targets compare the two directly "
        "(their ratios to the floor go through reactor_mgmt's). Cells are medians over rounds "
        "(the floor's: over all its pairs); ratios (in parentheses) are the median of the "
        "per-round ratios. The host workload runs one server at a time. FAILED = a wrong, "
        "missing or late reply in some round." % (p["rounds"], SLICE_S)
    )
    if info.get("steal_s") is not None:
        L.append("- host steal time over the run (both CPUs): %.1f s" % info["steal_s"])
    outs = [out for outs in res.runs.values() for out in outs]
    other = sorted(out["other_cpu_pct"] for out in outs if out.get("other_cpu_pct") is not None)
    if other:
        L.append(
            "- CPU used by neither the server under test nor the load generator during a "
            "measurement (other processes on this shared machine, steal; %% of one CPU), over "
            "the measurements kept: median %.0f%%, p90 %.0f%%, max %.0f%%. A measurement with "
            "more than %.0f%% was taken again, up to %d more times while the run stayed within "
            "%g minutes, and the quietest attempt kept: %d of %d measurements were retried."
            % (
                other[len(other) // 2],
                other[int(0.9 * (len(other) - 1))],
                other[-1],
                p["quiet_pct"],
                p["retries"],
                p["max_minutes"],
                sum(1 for out in outs if out.get("attempts", 1) > 1),
                len(outs),
            )
        )
    for n in notes:
        L.append("- " + n)
    L.append("")
    L.append("## Targets")
    L.append("")
    L.append(md_table(["target", "reactor_mgmt", "limit", "result"], targets(res)))
    L.append("")
    L.append("## One-shot connections (churn)")
    L.append("")
    L.append(
        "Each connection: connect (from one of %d loopback source addresses), send one `status` "
        '(text) or `{"id": N, "cmd": "status"}` line, `shutdown(SHUT_WR)`, read to EOF, '
        "check the bytes; %.1f s per server and round. Latency is connect to EOF. Server CPU is "
        "`/proc/PID/stat` utime+stime over the paired run, per connection and as %% of the time "
        "its slices lasted; client CPU is the load generator's over the whole paired run. "
        "With 32 clients, a server near 100%% while the client has room is the bottleneck; "
        "when it is well below, other processes on this machine had the CPU (see the header)."
        % (p["srcs"], p["churn_s"])
    )
    L.append("")
    rows = []
    for w in ("churn1_text", "churn1_json", "churn32_text", "churn32_json"):
        lab = LABELS[w]
        rows.append([lab + ": conn/s"] + [cell_text(res, w, x, "conn_s", "int") for x in cols])
        rows.append(
            [lab + ": server CPU us/conn"] + [cell_text(res, w, x, "server_cpu_us_per_conn", "%.1f") for x in cols]
        )
        rows.append(
            [lab + ": p50 / p99 us"]
            + [
                cell_text(res, w, x, None, None)
                or "%s / %s" % (fmt(res.value(w, x, "p50_us"), "%.0f"), fmt(res.value(w, x, "p99_us"), "%.0f"))
                for x in cols
            ]
        )
        rows.append(
            [lab + ": server / client CPU %"]
            + [
                cell_text(res, w, x, None, None)
                or "%s / %s"
                % (fmt(res.value(w, x, "server_cpu_pct"), "%.0f"), fmt(res.value(w, x, "client_cpu_pct"), "%.0f"))
                for x in cols
            ]
        )
    L.append(md_table(head, rows))
    L.append("")
    L.append("## `status` round trips and pipelines")
    L.append("")
    L.append(
        "Round trips: one connection, sequential requests (after 200 warm-up), the load "
        "generator and the server pinned to one CPU (the software path of both sides, not the "
        "cross-CPU wake-up latency of a small VM); us. JSON requests carry distinct ids. "
        "Pipelines: a connection per slice, requests sent in blocks while replies are read and "
        "checked (at most 256 KiB of replies owed), %.1f s per server; requests/s. `echo N` requests "
        "are all different (N = 10000000, 10000001, ...)." % p["pipe_s"]
    )
    L.append("")
    rows = []
    for w in ("rtt_text", "rtt_json"):
        rows.append([LABELS[w] + ": median us"] + [cell_text(res, w, x, "median_us", "%.1f") for x in cols])
        rows.append([LABELS[w] + ": p99 us"] + [cell_text(res, w, x, "p99_us", "%.1f") for x in cols])
    for w in ("pipe_status", "pipe_json", "pipe_echo"):
        rows.append([LABELS[w] + ": req/s"] + [cell_text(res, w, x, "req_s", "int") for x in cols])
    L.append(md_table(head, rows))
    L.append("")
    L.append("## 60 Hz host under a flood")
    L.append("")
    L.append(
        "Each server runs alone, in a host loop of 60 frames/s with 4 ms of busy work per frame "
        "(reactor_mgmt: `poll(timeout=time_left, budget=0.002)` between frames; the floor: its "
        "own `select(timeout=time_left)` tick; asyncio/uvloop: `loop.call_at` frames; node: "
        "`setTimeout` frames), while 32 one-shot clients and a pipeliner of `status` flood it "
        "for %.1f s. *Late* is how long after its due time a frame starts (ms; the idle column "
        "is the same host without load: an epoll timeout is rounded up to whole ms). *I/O CPU* "
        "is the process's CPU over the window less the frames' work; *poll CPU* the CPU time "
        "inside `poll()`/`select()` and its handling, where the loop can time it; both as %% "
        "of the wall time. Flood throughput ratios are against the floor's host." % p["host_flood_s"]
    )
    L.append("")
    hrows = []
    for x in [x for x in peers if PEERS[x][3]]:
        w = "host"
        if res.error(w, x):
            hrows.append([SHORT[x], "FAILED: %s" % res.error(w, x)[:120]] + [""] * 7)
            continue
        hrows.append(
            [
                SHORT[x],
                fmt(res.value(w, x, "idle_late_p99_ms"), "%.2f"),
                "%s / %s / %s"
                % (
                    fmt(res.value(w, x, "late_p50_ms"), "%.2f"),
                    fmt(res.value(w, x, "late_p99_ms"), "%.2f"),
                    fmt(res.value(w, x, "late_max_ms"), "%.2f"),
                ),
                fmt(res.value(w, x, "dropped"), "%.0f"),
                fmt(res.value(w, x, "io_cpu_pct"), "%.0f"),
                fmt(res.value(w, x, "poll_cpu_pct"), "%.0f"),
                fmt(res.value(w, x, "conn_s"), "int") + ("" if x == "floor" else fx(res.ratio(w, x, "conn_s"))),
                fmt(res.value(w, x, "pipe_req_s"), "int") + ("" if x == "floor" else fx(res.ratio(w, x, "pipe_req_s"))),
                fmt(res.value(w, x, "steal_ms"), "%.0f"),
            ]
        )
    L.append(
        md_table(
            [
                "host",
                "idle late p99 ms",
                "flood late p50 / p99 / max ms",
                "frames dropped",
                "I/O CPU %",
                "poll CPU %",
                "flood one-shot conn/s",
                "flood pipelined req/s",
                "steal ms",
            ],
            hrows,
        )
    )
    L.append("")
    if RM_FOREVER in peers:
        L.append("## `serve_forever()` beside the host loop")
        L.append("")
        diff = []
        for w, metric, inv in FOREVER_METRICS:
            r = res.ratio(w, RM_FOREVER, metric, base=RM, invert=inv)
            if r is None:
                if res.error(w, RM_FOREVER) and res.error(w, RM_FOREVER) != "not run":
                    diff.append([LABELS[w], "FAILED", ""])
                continue
            if abs(r - 1.0) > 0.10:
                diff.append([LABELS[w], fmt(res.value(w, RM_FOREVER, metric), "%.1f" if inv else "int"), "%.2fx" % r])
        if diff:
            L.append(
                "Only the workloads where `serve_forever()` differs from "
                "`poll(timeout=time_left, budget=0.002)` by more than 10% (speed ratio, "
                "forever / host loop; >1 = serve_forever faster):"
            )
            L.append("")
            L.append(md_table(["workload", "serve_forever()", "vs the host loop"], diff))
        else:
            L.append("`serve_forever()` is within 10% of `poll(timeout=time_left, budget=0.002)` on every workload.")
        L.append("")
    errs = [(w, x, res.error(w, x)) for (w, x) in sorted(res.runs) if res.error(w, x) not in (None, "not run")]
    if errs:
        L.append("## Failures")
        L.append("")
        for w, x, e in errs:
            L.append("- %s, %s: %s" % (LABELS.get(w, w), SHORT[x], e[:400]))
        L.append("")
    return "\n".join(L)


# ------------------------------------------------------------- main --


def machine_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    u = platform.uname()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "kernel": "%s %s %s" % (u.system, u.release, u.machine),
        "python": "%s %s" % (platform.python_implementation(), platform.python_version()),
    }


def rm_env(path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([path] + [x for x in [env.get("PYTHONPATH")] if x])
    env["REACTOR_PATH"] = path
    return env


def reactor_info(path, env):
    # cwd: a directory with no reactor_mgmt in it (python -c puts the cwd first on sys.path)
    r = subprocess.run(
        [PY, "-c", "import reactor_mgmt; print(reactor_mgmt.__file__)"],
        cwd=SERVERS,
        env=env,
        capture_output=True,
        timeout=60,
    )
    if r.returncode != 0:
        return None, r.stderr.decode(errors="replace").strip().splitlines()[-1:]
    where = r.stdout.decode().strip()
    rev = "?"
    try:
        g = subprocess.run(
            ["git", "-C", path, "describe", "--always", "--dirty"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=10,
        )
        rev = g.stdout.decode().strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "%s (git %s)" % (os.path.dirname(where), rev), None


def available(name):
    if name == "uvloop":
        import importlib.util

        return importlib.util.find_spec("uvloop") is not None, "uvloop not installed (pip install uvloop)"
    if name == "node":
        return shutil.which("node") is not None, "node not on PATH"
    return True, ""


def perf_works():
    if shutil.which("perf") is None:
        return False
    r = subprocess.run(
        ["perf", "record", "-q", "-e", "cpu-clock", "-o", os.devnull, "--", "true"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
    )
    return r.returncode == 0


def perf_report(datafile, sort, top):
    r = subprocess.run(
        ["perf", "report", "-i", datafile, "--stdio", "--no-children", "--sort", sort, "--percent-limit", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    lines = [x for x in r.stdout.decode(errors="replace").splitlines() if x.strip() and not x.startswith("#")]
    return "\n".join(lines[:top])


def profile(args, env):
    """cProfile of the reactor_mgmt host loop (budget=0.002) on churn (32 clients, text) and on
    pipelined `status`, each in a fresh server; prints the top functions by tottime. Where
    `perf record -e cpu-clock` works, a second fresh server (without cProfile) is sampled on the
    same load: the top shared objects and symbols (Python 3.11 frames show as the interpreter)."""
    import io
    import pstats

    p = QUICK if args.quick else FULL
    cpus = set(os.sched_getaffinity(0))
    load_p = dict(p, churn_s=3.0, pipe_s=2.0)
    use_perf = perf_works()
    out = []
    for cell in ("churn32_text", "pipe_status"):
        fd, path = tempfile.mkstemp(suffix=".prof")
        os.close(fd)
        srv = Server(RM, env, extra=["--profile", path])
        try:
            probe(srv.port)
            r = measure_pair([srv], cell, load_p, cpus)[0]
        finally:
            srv.stop()
        st = pstats.Stats(path)
        os.unlink(path)
        buf = io.StringIO()
        st.stream = buf
        st.sort_stats("tottime").print_stats(args.profile_top)
        out.append(
            "## cProfile: %s (%s)\n\n`epoll.poll` includes the time spent waiting.\n\n"
            "load: %s\n\n```\n%s\n```\n"
            % (LABELS[cell], "ok" if r.get("ok") else "FAILED", json.dumps(r), buf.getvalue().strip())
        )
        if not use_perf:
            continue
        fd, data = tempfile.mkstemp(suffix=".perf")
        os.close(fd)
        srv = Server(RM, env)
        rec = None
        try:
            probe(srv.port)
            rec = subprocess.Popen(
                ["perf", "record", "-q", "-e", "cpu-clock", "-p", str(srv.pid), "-o", data],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.3)
            r = measure_pair([srv], cell, load_p, cpus)[0]
        finally:
            if rec is not None:
                rec.send_signal(signal.SIGINT)
                try:
                    rec.wait(30)
                except subprocess.TimeoutExpired:
                    rec.kill()
                    rec.wait()
            srv.stop()
        try:
            out.append(
                "## perf (cpu-clock): %s (%s)\n\n```\n%s\n\n%s\n```\n"
                % (
                    LABELS[cell],
                    "ok" if r.get("ok") else "FAILED",
                    perf_report(data, "dso", 8),
                    perf_report(data, "dso,sym", args.profile_top),
                )
            )
        finally:
            os.unlink(data)
    text = "\n".join(out)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short round (a smoke run)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument(
        "--reactor-path",
        default=ROOT,
        help="directory holding the reactor_mgmt package to measure (default: the repo root)",
    )
    ap.add_argument("--output", default=None, help="also write the Markdown report here")
    ap.add_argument("--only", default=None, help="workloads: " + ",".join(WORKLOADS))
    ap.add_argument("--peers", default=None, help="servers: " + ",".join(PEERS))
    ap.add_argument("--json", default=None, help="also write the raw per-round results here")
    ap.add_argument("--profile", action="store_true", help="profile reactor_mgmt instead (cProfile)")
    ap.add_argument("--profile-top", type=int, default=15)
    args = ap.parse_args(argv)

    path = os.path.abspath(args.reactor_path)
    env = rm_env(path)
    if args.profile:
        return profile(args, env)
    p = dict(QUICK if args.quick else FULL)
    if args.rounds:
        p["rounds"] = args.rounds
    workloads = args.only.split(",") if args.only else WORKLOADS
    for w in workloads:
        if w not in WORKLOADS:
            ap.error("unknown workload %r" % w)
    wanted = args.peers.split(",") if args.peers else list(PEERS)
    if "floor" not in wanted:
        wanted.insert(0, "floor")
    notes = []
    info = machine_info()
    where, err = reactor_info(path, env)
    info["reactor"] = where or "not importable from %s" % path
    peers = []
    for name in PEERS:
        if name not in wanted:
            continue
        if PEERS[name][2] and where is None:
            notes.append("%s skipped: reactor_mgmt not importable from %s: %s" % (SHORT[name], path, " ".join(err)))
            continue
        ok, why = available(name)
        if not ok:
            notes.append("%s skipped: %s" % (SHORT[name], why))
            continue
        peers.append(name)
    cmd = "python benchmarks/realistic.py" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    t_start = time.monotonic()
    steal0 = steal_s()
    cpus_all = set(os.sched_getaffinity(0))
    res = Results()
    servers = {}
    try:
        cells = [w for w in workloads if w in CELLS]
        if cells:
            for name in peers:
                srv = None
                try:
                    srv = Server(name, env)
                    probe(srv.port)
                    servers[name] = srv
                except (RuntimeError, OSError) as e:
                    for w in cells:
                        res.add(w, name, {"ok": False, "error": "start/probe: %s" % e})
                    if srv is not None:
                        srv.stop()

        def base_of(name):
            return RM if name in (RM_NOBUDGET, RM_FOREVER) and RM in servers else "floor"

        def attempt(w, name, floor_first):
            """[result]: the host workload, one server alone; or [base's, name's] results:
            the base (the floor, or reactor_mgmt) and name driven in alternating slices of one run."""
            if w == "host":
                try:
                    return [measure_host(name, env, p, steal_s)]
                except (RuntimeError, OSError, ValueError) as e:
                    return [{"ok": False, "error": "%s: %s" % (type(e).__name__, e)}]
            pair = [servers[base_of(name)], servers[name]]
            got = measure_pair(pair if floor_first else pair[::-1], w, p, cpus_all)
            return got if floor_first else got[::-1]

        def quiet(outs):
            return max(out.get("other_cpu_pct") or 0.0 for out in outs)

        plan = []
        for rnd in range(p["rounds"]):
            for w in workloads:
                if w == "host":
                    order = [x for x in peers if PEERS[x][3]]
                elif "floor" in servers:
                    order = [x for x in peers if x in servers and x != "floor"]
                else:
                    order = []
                k = rnd % len(order) if order else 0
                plan += [(rnd, w, name, (rnd + j) % 2 == 0) for j, name in enumerate(order[k:] + order[:k])]
        budget = p["max_minutes"] * 60.0
        spent = {}  # workload -> seconds per attempt
        for i, (rnd, w, name, floor_first) in enumerate(plan):
            t0 = time.monotonic()
            outs = attempt(w, name, floor_first)
            spent.setdefault(w, []).append(time.monotonic() - t0)
            tries = 1
            while all(out.get("ok") for out in outs) and quiet(outs) > p["quiet_pct"] and tries <= p["retries"]:
                left = sum(med(spent.get(x) or [max(map(med, spent.values()))]) for _, x, _, _ in plan[i:])
                if time.monotonic() - t_start + left > budget:
                    break
                t0 = time.monotonic()
                alt = attempt(w, name, floor_first)
                spent[w].append(time.monotonic() - t0)
                tries += 1
                if not all(out.get("ok") for out in alt):
                    outs = alt  # a failure is never retried away
                    break
                if quiet(alt) < quiet(outs):
                    outs = alt
            for out in outs:
                out["attempts"] = tries
            if w == "host":
                res.add(w, name, outs[0])
            else:
                base = base_of(name)
                if base == "floor":
                    res.add(w, "floor", outs[0])
                res.add(w, name, outs[1], partner_out=outs[0], base=base)
            again = "" if tries == 1 else " (best of %d)" % tries
            if w != "host":
                log(
                    "round %d %-13s %-17s %s%s"
                    % (rnd + 1, w, "(%s)" % SHORT[base_of(name)], summary(w, outs[0]), again)
                )
            log("round %d %-13s %-17s %s%s" % (rnd + 1, w, SHORT[name], summary(w, outs[-1]), again))
    finally:
        for srv in servers.values():
            srv.stop()
    steal1 = steal_s()
    info["steal_s"] = None if steal0 is None or steal1 is None else steal1 - steal0
    elapsed = time.monotonic() - t_start
    report = render(res, peers, p, info, cmd, started, elapsed, notes)
    print(report)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"%s/%s" % k: v for k, v in res.runs.items()}, f, indent=1)
    failed = any(res.error(w, x) not in (None, "not run") for (w, x) in res.runs)
    return 1 if failed else 0


def summary(w, out):
    if out.get("ok") is None:
        return out.get("error", "")
    if not out.get("ok"):
        return "FAILED: %s" % out.get("error", "")[:200]
    if w == "host":
        return "late p99 %s max %s ms, io cpu %.0f%%, %d conn/s, %d req/s" % (
            fmt(out["late_p99_ms"], "%.2f"),
            fmt(out["late_max_ms"], "%.2f"),
            out["io_cpu_pct"],
            out["conn_s"],
            out["pipe_req_s"],
        )
    fam = CELLS[w][1]
    if fam == "churn":
        return "%d conn/s, %.1f us cpu/conn, server %.0f%% client %.0f%% cpu" % (
            out["conn_s"],
            out["server_cpu_us_per_conn"] or 0,
            out["server_cpu_pct"],
            out["client_cpu_pct"],
        )
    if fam == "rtt":
        return "median %.1f us, p99 %.1f us" % (out["median_us"], out["p99_us"])
    return "%d req/s" % out["req_s"]


if __name__ == "__main__":
    sys.exit(main())
