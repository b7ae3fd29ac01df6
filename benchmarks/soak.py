"""Soak test: a 60 Hz host loop serving well-behaved clients while hostile ones attack.

    python benchmarks/soak.py [--seconds 60] [--clients 1000] [--no-write]

This process is the host: it builds the demo's server (reactor_mgmt._demo.build_server) and
runs a fixed 60 Hz loop (worker tick, then poll(timeout, budget) until the frame's deadline),
recording how long every frame really took. One separate load process (this script with
--role load) opens, on 127.0.0.1 only:

  * N good clients, each sending a command (ping, text echo or JSON echo with a unique token)
    and checking the exact reply before the next, after a short think time;
  * floods (pipelined pings, read as fast as they come), over-long lines, random garbage,
    slowloris clients (one byte per second), clients that never read, and HTTP requests.

It stops by itself: the load runs --seconds, then gives the good clients a grace period to
collect their last replies, and the host gives up --seconds + 60 s after the start whatever
happens. The summary goes to stdout and to the "## Soak" section of benchmarks/RESULTS.md
(the rest of that file, written by run.py, is kept). Targets: no lost or wrong reply to a good
client, and a p99 frame time within 1 ms of the 16.7 ms frame.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import logging
import os
import random
import re
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"  # the only address this script ever binds or connects to
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FRAME = 1.0 / 60
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_ticks(cpu: int) -> dict:
    """softirq and steal jiffies of one CPU from /proc/stat (Linux), else empty."""
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                fields = line.split()
                if fields[0] == f"cpu{cpu}":
                    return {"softirq": int(fields[7]), "steal": int(fields[8])}
    except (OSError, IndexError, ValueError):
        pass
    return {}


def percentile(values: list, fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


# ---------------------------------------------------------------- the load process --


class Engine:
    """A tiny selectors loop with timers: enough to drive a thousand scripted clients."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.timers: list = []
        self.seq = 0
        self.now = time.monotonic()
        self.stopping = False
        self.stats = {
            "good_sent": 0,
            "good_ok": 0,
            "good_wrong": 0,
            "good_lost": 0,
            "good_disconnects": 0,
            "slow_sent": 0,
            "slow_ok": 0,
            "slow_wrong": 0,
            "long_sent": 0,
            "long_ok": 0,
            "long_wrong": 0,
            "flood_sent": 0,
            "flood_replies": 0,
            "garbage_bytes": 0,
            "garbage_reconnects": 0,
            "never_read": 0,
            "never_read_closed": 0,
            "http_sent": 0,
            "http_closed_silently": 0,
            "http_answered": 0,
            "connect_errors": 0,
        }
        self.wrong_samples: list = []
        self.good: list = []

    def later(self, delay: float, callback, *args) -> None:
        self.seq += 1
        heapq.heappush(self.timers, (self.now + delay, self.seq, callback, args))

    def run(self, until: float, done=lambda: False) -> None:
        while True:
            self.now = time.monotonic()
            if self.now >= until or done():
                return
            while self.timers and self.timers[0][0] <= self.now:
                _, _, callback, args = heapq.heappop(self.timers)
                callback(*args)
            timeout = min(0.05, until - self.now)
            if self.timers:
                timeout = max(0.0, min(timeout, self.timers[0][0] - self.now))
            for key, mask in self.selector.select(timeout):
                key.data.on_event(mask)


class Client:
    """A non-blocking connection with an output buffer; subclasses script the talking."""

    reads = True

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.out = bytearray()
        self.inbuf = bytearray()
        self.connected = False
        self.closed = False
        self.mask = WRITE
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex((HOST, engine.port))
        engine.selector.register(self.sock, WRITE, self)

    def update(self) -> None:
        if self.closed:
            return
        mask = (READ if self.reads and self.connected else 0) | (WRITE if self.out or not self.connected else 0)
        if mask != self.mask:
            if mask == 0:
                self.engine.selector.unregister(self.sock)
            elif self.mask == 0:
                self.engine.selector.register(self.sock, mask, self)
            else:
                self.engine.selector.modify(self.sock, mask, self)
            self.mask = mask

    def send(self, data: bytes) -> None:
        self.out += data
        self.update()

    def on_event(self, mask: int) -> None:
        if not self.connected:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self.engine.stats["connect_errors"] += 1
                self.close()
                self.on_close()
                return
            self.connected = True
            self.on_connect()
            self.update()
            return
        if mask & READ:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                self.close()
                self.on_close()
                return
            if data:
                self.on_data(data)
        if mask & WRITE and self.out and not self.closed:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                self.on_close()
                return
            del self.out[:sent]
        self.update()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.mask:
                self.engine.selector.unregister(self.sock)
            self.mask = 0
            self.sock.close()

    def on_connect(self) -> None:
        pass

    def on_data(self, data: bytes) -> None:
        pass

    def on_close(self) -> None:
        pass


class Good(Client):
    """One command at a time, every reply checked exactly, then a short think time."""

    def __init__(self, engine: Engine, number: int) -> None:
        super().__init__(engine)
        self.number = number
        self.count = 0
        self.expected = None  # bytes (a text line) or dict (a parsed JSON reply)

    def on_connect(self) -> None:
        self.engine.later(random.uniform(0, 1.0), self.request)

    def request(self) -> None:
        if self.closed or self.engine.stopping or self.expected is not None:
            return
        self.count += 1
        token = f"c{self.number}-{self.count}"
        kind = self.count % 3
        if kind == 0:
            line, self.expected = b"ping\n", b"pong"
        elif kind == 1:
            line, self.expected = f"echo {token} x\n".encode(), f"{token} x".encode()
        else:
            line = json.dumps({"cmd": "echo", "args": [token], "id": self.count}).encode() + b"\n"
            self.expected = {"id": self.count, "ok": True, "result": token}
        self.engine.stats["good_sent"] += 1
        self.send(line)

    def on_data(self, data: bytes) -> None:
        self.inbuf += data
        while b"\n" in self.inbuf:
            line, _, rest = bytes(self.inbuf).partition(b"\n")
            self.inbuf = bytearray(rest)
            expected, self.expected = self.expected, None
            if isinstance(expected, dict):
                try:
                    ok = json.loads(line) == expected
                except ValueError:
                    ok = False
            else:
                ok = line == expected
            if ok:
                self.engine.stats["good_ok"] += 1
            else:
                self.engine.stats["good_wrong"] += 1
                if len(self.engine.wrong_samples) < 5:
                    self.engine.wrong_samples.append([repr(expected), repr(line[:200])])
            self.engine.later(random.uniform(0.02, 0.2), self.request)

    def on_close(self) -> None:
        # A good client is never supposed to be closed; count it, and reconnect to go on.
        self.engine.stats["good_disconnects"] += 1
        if self.expected is not None:
            self.engine.stats["good_lost"] += 1
            self.expected = None
        if not self.engine.stopping:
            self.engine.good[self.number] = Good(self.engine, self.number)


class Slowloris(Client):
    """Sends `ping\\n` one byte per second and checks the pong."""

    def on_connect(self) -> None:
        self.position = 0
        self.engine.later(1.0, self.drip)

    def drip(self) -> None:
        if self.closed or self.engine.stopping:
            return
        self.send(b"ping\n"[self.position : self.position + 1])
        self.position = (self.position + 1) % 5
        if self.position == 0:
            self.engine.stats["slow_sent"] += 1
        self.engine.later(1.0, self.drip)

    def on_data(self, data: bytes) -> None:
        self.inbuf += data
        while b"\n" in self.inbuf:
            line, _, rest = bytes(self.inbuf).partition(b"\n")
            self.inbuf = bytearray(rest)
            self.engine.stats["slow_ok" if line == b"pong" else "slow_wrong"] += 1


class LongLines(Client):
    """A 50 KB line, then a ping: expects the too-long error and the pong."""

    EXPECTED = [b"ERR line too long (limit 16384 bytes)", b"pong"]

    def on_connect(self) -> None:
        self.waiting: list = []
        self.engine.later(random.uniform(0, 1.0), self.attack)

    def attack(self) -> None:
        if self.closed or self.engine.stopping:
            return
        self.send(b"x" * 50000 + b"\nping\n")
        self.waiting.extend(self.EXPECTED)
        self.engine.stats["long_sent"] += 1
        self.engine.later(1.0, self.attack)

    def on_data(self, data: bytes) -> None:
        self.inbuf += data
        while b"\n" in self.inbuf:
            line, _, rest = bytes(self.inbuf).partition(b"\n")
            self.inbuf = bytearray(rest)
            expected = self.waiting.pop(0) if self.waiting else None
            if expected == b"pong":
                self.engine.stats["long_ok" if line == expected else "long_wrong"] += 1
            elif line != expected:
                self.engine.stats["long_wrong"] += 1


class Flood(Client):
    """Pipelines pings as fast as the server takes them, and reads the pongs."""

    def on_connect(self) -> None:
        self.refill()

    def refill(self) -> None:
        if not self.closed and not self.engine.stopping and len(self.out) < 65536:
            self.send(b"ping\n" * 4096)
            self.engine.stats["flood_sent"] += 4096

    def on_data(self, data: bytes) -> None:
        self.inbuf += data
        complete = self.inbuf.count(b"\n")
        self.engine.stats["flood_replies"] += complete
        del self.inbuf[: self.inbuf.rfind(b"\n") + 1]
        self.refill()

    def on_event(self, mask: int) -> None:
        super().on_event(mask)
        self.refill()


class Garbage(Client):
    """Random bytes every 200 ms; reconnects when the server ends the session."""

    def on_connect(self) -> None:
        self.engine.later(0.2, self.spray)

    def spray(self) -> None:
        if self.closed or self.engine.stopping:
            return
        chunk = random.getrandbits(8 * 512).to_bytes(512, "little")
        self.engine.stats["garbage_bytes"] += len(chunk)
        self.send(chunk)
        self.engine.later(0.2, self.spray)

    def on_close(self) -> None:
        if not self.engine.stopping:
            self.engine.stats["garbage_reconnects"] += 1
            self.engine.later(0.5, Garbage, self.engine)


class NeverReads(Client):
    """Asks for a lot of output and never reads any of it."""

    reads = False

    def __init__(self, engine: Engine, request: bytes) -> None:
        super().__init__(engine)
        self.request = request

    def on_connect(self) -> None:
        self.engine.stats["never_read"] += 1
        self.send(self.request)


class Http(Client):
    """What a browser sends when a web page points it at the port."""

    def on_connect(self) -> None:
        self.engine.stats["http_sent"] += 1
        self.got = b""
        self.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\nstatus\n")

    def on_data(self, data: bytes) -> None:
        self.got += data

    def on_close(self) -> None:
        if self.connected:
            self.engine.stats["http_closed_silently" if not self.got else "http_answered"] += 1


def pin_to_cpu(index: int) -> None:
    """Host and load on CPUs of their own, so that they do not take turns on one."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {index % os.cpu_count()})


def run_load(args: argparse.Namespace) -> None:
    raise_nofile()
    pin_to_cpu(1)
    # Lightly weighted, so that whatever else runs on this machine is scheduled beside the load
    # rather than beside the host, whose frame times are what is being measured.
    os.nice(10)
    random.seed(args.seed)
    engine = Engine(args.port)
    start = time.monotonic()
    # Good clients arrive over the first two seconds rather than all in one burst.
    for number in range(args.clients):
        engine.good.append(None)
        engine.later(2.0 * number / max(1, args.clients), lambda n=number: engine.good.__setitem__(n, Good(engine, n)))
    for _ in range(4):
        Flood(engine)
    for _ in range(5):
        LongLines(engine)
        Garbage(engine)
    for _ in range(20):
        Slowloris(engine)
    for index in range(20):
        request = [b"count 1000000000\n", b"help\n" * 4000, b"show jobs\n" * 4000, b"watch 0.1 status\n"][index % 4]
        NeverReads(engine, request)

    def http_every_100ms() -> None:
        if not engine.stopping:
            Http(engine)
            engine.later(0.1, http_every_100ms)

    engine.later(0.5, http_every_100ms)
    engine.run(start + args.seconds)
    engine.stopping = True
    # Grace: the good clients' last requests are still owed a reply.
    engine.run(
        time.monotonic() + 10.0, done=lambda: not any(c is not None and c.expected is not None for c in engine.good)
    )
    for client in engine.good:
        if client is not None and client.expected is not None:
            engine.stats["good_lost"] += 1
    engine.stats["wrong_samples"] = engine.wrong_samples
    engine.stats["load_seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(engine.stats), flush=True)


# ---------------------------------------------------------------- the host --


def run_host(args: argparse.Namespace) -> dict:
    sys.path.insert(0, ROOT)
    from reactor_mgmt import _demo

    nofile = raise_nofile()
    pin_to_cpu(0)
    if args.nice:
        os.nice(args.nice)  # a negative value needs root: it ranks the host above the load
    warnings: dict = {}

    class CountWarnings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            # Numbers (connection ids, addresses, sizes) out, so that alike warnings add up.
            key = re.sub(r"[\d.:\[\]]*\d[\d.:\[\]]*", "N", record.getMessage())[:90]
            warnings[key] = warnings.get(key, 0) + 1

    logging.getLogger("reactor_mgmt").addHandler(CountWarnings(logging.WARNING))
    logging.getLogger("reactor_mgmt").propagate = False
    max_connections = args.clients + 1000
    demo_args = _demo.parse_args(["--host", HOST, "--port", "0", "--max-connections", str(max_connections)])
    worker = _demo.Worker(60.0)
    server = _demo.build_server(demo_args, worker)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    load = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--role",
            "load",
            "--port",
            str(server.port),
            "--seconds",
            str(args.seconds),
            "--clients",
            str(args.clients),
            "--seed",
            str(args.seed),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    gc_pauses: list = []
    gc_started = [0.0]

    def time_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif info.get("generation") == 2:
            gc_pauses.append(time.perf_counter() - gc_started[0])

    gc.callbacks.append(time_gc)
    frames: list = []
    frame_cpu: list = []  # host CPU per frame: what the loop itself cost, whatever else runs here
    polls: list = []
    poll_cpu: list = []
    load_average_start = os.getloadavg()[0]
    ticks_start = cpu_ticks(0)
    hard_stop = time.monotonic() + args.seconds + 60.0
    try:
        deadline = time.monotonic() + FRAME
        frame_start = time.monotonic()
        cpu_start = time.thread_time()
        while load.poll() is None and time.monotonic() < hard_stop:
            worker.tick()
            # Serve until 1 ms before the frame's deadline, each poll() bounded by the time left.
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0.001:
                    break
                began, began_cpu = time.monotonic(), time.thread_time()
                server.poll(timeout=remaining - 0.001, budget=min(0.004, remaining - 0.001))
                polls.append(time.monotonic() - began)
                poll_cpu.append(time.thread_time() - began_cpu)
            rest = deadline - time.monotonic()
            if rest > 0:
                time.sleep(rest)
            now = time.monotonic()
            cpu = time.thread_time()
            frames.append(now - frame_start)
            frame_cpu.append(cpu - cpu_start)
            frame_start, cpu_start = now, cpu
            deadline = max(deadline + FRAME, now)
        if load.poll() is None:
            load.kill()
        output = load.communicate(timeout=30)[0]
    finally:
        server.close()
        gc.callbacks.remove(time_gc)
    load_stats = json.loads(output.strip().splitlines()[-1]) if output.strip() else {"error": "no output"}
    return {
        "seconds": args.seconds,
        "clients": args.clients,
        "nofile": nofile,
        "max_connections": max_connections,
        "frames": len(frames),
        "frame_p50_ms": round(percentile(frames, 0.5) * 1e3, 3),
        "frame_p99_ms": round(percentile(frames, 0.99) * 1e3, 3),
        "frame_max_ms": round(max(frames) * 1e3, 3) if frames else 0.0,
        "frame_mean_ms": round(statistics.mean(frames) * 1e3, 3) if frames else 0.0,
        "frames_over_17_7_ms": sum(1 for f in frames if f > FRAME + 0.001),
        "frame_cpu_p50_ms": round(percentile(frame_cpu, 0.5) * 1e3, 3),
        "frame_cpu_p99_ms": round(percentile(frame_cpu, 0.99) * 1e3, 3),
        "frame_cpu_max_ms": round(max(frame_cpu) * 1e3, 3) if frame_cpu else 0.0,
        "load_average": [round(load_average_start, 2), round(os.getloadavg()[0], 2)],
        "nproc": os.cpu_count(),
        "nice": args.nice,
        "host_cpu_softirq_s": round(
            (cpu_ticks(0).get("softirq", 0) - ticks_start.get("softirq", 0)) / os.sysconf("SC_CLK_TCK"), 2
        )
        if ticks_start
        else None,
        "host_cpu_steal_s": round(
            (cpu_ticks(0).get("steal", 0) - ticks_start.get("steal", 0)) / os.sysconf("SC_CLK_TCK"), 2
        )
        if ticks_start
        else None,
        "poll_calls": len(polls),
        "poll_max_ms": round(max(polls) * 1e3, 3) if polls else 0.0,
        "poll_cpu_p99_ms": round(percentile(poll_cpu, 0.99) * 1e3, 3),
        "poll_cpu_max_ms": round(max(poll_cpu) * 1e3, 3) if poll_cpu else 0.0,
        "server_commands": server.stats.commands,
        "server_connections_total": server.stats.connections_total,
        "server_http_closed": server.stats.http_closed,
        "gc_full_collections": len(gc_pauses),
        "gc_full_max_ms": round(max(gc_pauses) * 1e3, 3) if gc_pauses else 0.0,
        "rss_start_mib": round(rss_start / 1024, 1),
        "rss_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "warnings": warnings,
        "load": load_stats,
    }


def render(result: dict) -> str:
    load = result["load"]
    good_ok = load.get("good_ok", 0)
    good_sent = load.get("good_sent", 0)
    verdict_replies = "PASS" if good_sent and good_ok == good_sent and not load.get("good_wrong") else "FAIL"
    verdict_frames = "PASS" if result["frame_p99_ms"] <= FRAME * 1e3 + 1.0 else "FAIL"
    lines = [
        "## Soak\n",
        f"Written by `python benchmarks/soak.py --seconds {result['seconds']:g} --clients {result['clients']}"
        f"{' --nice %d' % result['nice'] if result['nice'] else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: the demo's server in a 60 Hz host loop "
        f"(poll(timeout, budget<=4 ms) until 1 ms before each frame's deadline) for {result['seconds']} s, "
        f"with {result['clients']} good clients and the attackers below in one separate load process, "
        f"all on 127.0.0.1.\n",
        "| measure | value | target | status |",
        "| --- | --- | --- | --- |",
        f"| good commands sent / answered correctly | {good_sent} / {good_ok} | equal | {verdict_replies} |",
        f"| good replies wrong / lost / good clients disconnected | {load.get('good_wrong', '?')} / "
        f"{load.get('good_lost', '?')} / {load.get('good_disconnects', '?')} | 0 / 0 / 0 | |",
        f"| frame time p50 / p99 / max (ms) | {result['frame_p50_ms']} / {result['frame_p99_ms']} / "
        f"{result['frame_max_ms']} | p99 <= {FRAME * 1e3 + 1.0:.1f} | {verdict_frames} |",
        f"| frames over 17.7 ms | {result['frames_over_17_7_ms']} of {result['frames']} | | |",
        f"| host CPU per frame p50 / p99 / max (ms) | {result['frame_cpu_p50_ms']} / {result['frame_cpu_p99_ms']} / "
        f"{result['frame_cpu_max_ms']} | | |",
        f"| single poll() call: longest wall time / CPU p99 / CPU max (ms) | {result['poll_max_ms']} / "
        f"{result['poll_cpu_p99_ms']} / {result['poll_cpu_max_ms']} | | |",
        f"| full (gen 2) garbage collections in the host / longest (ms) | {result['gc_full_collections']} / "
        f"{result['gc_full_max_ms']} | | |",
        f"| host peak RSS (MiB) | {result['rss_peak_mib']} (at start {result['rss_start_mib']}) | | |",
        "",
        "Attackers: 4 floods pipelining pings "
        f"({load.get('flood_sent', 0)} sent, {load.get('flood_replies', 0)} answered), "
        f"5 over-long-line clients ({load.get('long_ok', 0)} of {load.get('long_sent', 0)} 50 KB lines answered "
        f"`ERR line too long` + pong, {load.get('long_wrong', 0)} wrong), "
        f"5 garbage sprayers ({load.get('garbage_bytes', 0)} random bytes, {load.get('garbage_reconnects', 0)} "
        f"sessions ended by the server), 20 slowloris clients at 1 byte/s "
        f"({load.get('slow_ok', 0)} of {load.get('slow_sent', 0)} pings answered), "
        f"20 clients that never read, {load.get('http_sent', 0)} HTTP requests "
        f"({load.get('http_closed_silently', 0)} closed without a byte, {load.get('http_answered', 0)} answered). "
        f"Server: {result['server_commands']} commands, {result['server_connections_total']} connections. "
        f"Warnings logged: {json.dumps(result['warnings'])}.\n",
        f"Machine: {result['nproc']} CPUs shared by the host, the load process and anything else running; "
        f"load average {result['load_average'][0]} at the start, {result['load_average'][1]} at the end; "
        f"the host's CPU (pinned, cpu0) spent {result['host_cpu_softirq_s']} s in softirq (loopback packet "
        f"processing) and lost {result['host_cpu_steal_s']} s to steal (the hypervisor) during the run. Frame "
        f"times are wall clock, so all of that shows up in them; host CPU per frame (the thread's own CPU "
        f"time) does not.\n",
    ]
    if load.get("wrong_samples"):
        lines.append(f"Wrong replies (first few): {load['wrong_samples']}\n")
    return "\n".join(lines)


def write_section(path: str, section: str, heading: str = "## Soak", before: str | None = None) -> None:
    """Replaces the `heading` section of RESULTS.md (up to the next `## `), keeping the rest. A
    new section goes in front of the `before` section where there is one, else at the end."""
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        text = ""

    def find(head: str) -> int:
        """Where the line `head` starts, or -1."""
        if text.startswith(head + "\n"):
            return 0
        at = text.find("\n" + head + "\n")
        return at + 1 if at >= 0 else -1

    start = find(heading)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        rest = text[end + 1 :] if end >= 0 else ""
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    elif before is not None and find(before) >= 0:
        at = find(before)
        text = text[:at] + section.rstrip("\n") + "\n\n" + text[at:]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section.rstrip("\n") + "\n"
    with open(path, "w") as handle:
        handle.write(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs (default 60)")
    parser.add_argument("--clients", type=int, default=1000, help="well-behaved clients (default 1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness increment for the host, e.g. -10 to rank it above other processes (root)",
    )
    parser.add_argument("--output", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--role", choices=["host", "load"], default="host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 < args.seconds <= 3600 or not 0 <= args.clients <= 20000:
        parser.error("--seconds must be in (0, 3600] and --clients in [0, 20000]")
    if args.role == "load":
        run_load(args)
        return 0
    result = run_host(args)
    section = render(result)
    print(section)
    print(json.dumps(result, indent=1, default=str), file=sys.stderr)
    if not args.no_write:
        write_section(args.output, section)
    load = result["load"]
    ok = load.get("good_sent") and load.get("good_ok") == load.get("good_sent") and not load.get("good_wrong")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
