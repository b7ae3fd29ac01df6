"""Load generator for benchmarks/realistic.py (stdlib only, Linux, Python 3.9+).

    python benchmarks/realistic_load.py churn --port P --conc 32 --kind text --duration 1.5
    python benchmarks/realistic_load.py rtt   --port P --kind json --count 5000 --duration 1.5
    python benchmarks/realistic_load.py pipe  --port P --kind echo --duration 1.0
    python benchmarks/realistic_load.py flood --port P --conc 32 --duration 2.0

Prints one JSON line at the end ({"ok": true, ...} or {"ok": false, "error": ...}); flood
also prints "start" and "stop" lines when its flood begins and ends, so the runner can
bracket the host's measuring window. Only 127.0.0.1 is contacted.

Every reply is checked byte for byte against the bytes below, which spell out what
reactor_mgmt renders for the 8-field ``status`` dict (aligned ``key: value`` lines; JSON
with separators (", ", ": ")), and every connection must end with EOF after its replies:
a wrong, missing, extra or late (10 s without progress) byte fails the whole run.

churn: one-shot connections, as ``echo status | nc -N`` makes them: connect, send one
request, shut down our writing side, read to EOF; ``--conc`` of them at a time. Each
connection binds one of ``--srcs`` loopback source addresses (127.0.0.2, 127.0.0.3, ...)
with IP_BIND_ADDRESS_NO_PORT, so the search for a free port among the TIME_WAIT ones
(this side closes first) does not cap every server alike.
"""

from __future__ import annotations

import argparse
import array
import collections
import errno
import json
import os
import select
import socket
import sys
import time

HOST = "127.0.0.1"
STALL_S = 10.0
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

# What every peer must answer, byte for byte.
STATUS_TEXT = (
    b"service:   reactor-bench\n"
    b"version:   2.3.1\n"
    b"state:     running\n"
    b"workers:   4\n"
    b"queued:    17\n"
    b"processed: 1048576\n"
    b"failed:    3\n"
    b"load:      0.75\n"
)
STATUS_JSON = (
    b'{"service": "reactor-bench", "version": "2.3.1", "state": "running", '
    b'"workers": 4, "queued": 17, "processed": 1048576, "failed": 3, "load": 0.75}'
)
JSON_PREFIX = b'{"id": '
JSON_SUFFIX = b', "ok": true, "result": ' + STATUS_JSON + b"}\n"


def json_request(i):
    return b'{"id": %d, "cmd": "status"}\n' % i


def json_expected(i):
    return JSON_PREFIX + b"%d" % i + JSON_SUFFIX


class Failed(Exception):
    pass


CURRENT = {"port": None}  # the port being driven, named in a failure (two-port runs)


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, int(round(q * (len(sorted_vals) - 1))))]


# ---- churn: one-shot connections ----


class Churn:
    """``conc`` one-shot connections at a time on a shared epoll; see the module doc."""

    def __init__(self, ep, handlers, port, conc, kind, nsrcs):
        self.ep = ep
        self.handlers = handlers
        self.addr = (HOST, port)
        self.conc = conc
        self.kind = kind
        self.srcs = ["127.0.0.%d" % (2 + i) for i in range(nsrcs)] or [HOST]
        self.conns = {}  # fd -> [sock, t0, request, expected, received or None]
        self.started = 0
        self.done = 0
        self.lat = array.array("d")
        self.stopping = False
        self.last_done = time.perf_counter()

    def fill(self):
        while len(self.conns) < self.conc and not self.stopping:
            self.start_one()

    def start_one(self):
        i = self.started
        self.started += 1
        if self.kind == "json":
            req, exp = json_request(i), json_expected(i)
        else:
            req, exp = b"status\n", STATUS_TEXT
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((self.srcs[i % len(self.srcs)], 0))
        except OSError:
            s.close()
            raise
        t0 = time.perf_counter()
        err = s.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise Failed("connect: %s" % os.strerror(err))
        fd = s.fileno()
        st = [s, t0, req, exp, None]
        self.conns[fd] = st
        self.handlers[fd] = self.event
        # Loopback usually completes the handshake inside connect(): send at once when it has.
        try:
            s.send(req)
        except (BlockingIOError, InterruptedError, OSError):
            self.ep.register(fd, select.EPOLLOUT)
            return
        s.shutdown(socket.SHUT_WR)
        st[4] = b""
        self.ep.register(fd, select.EPOLLIN)

    def event(self, fd, ev):
        st = self.conns[fd]
        s = st[0]
        if st[4] is None:  # connect finished (or failed)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise Failed("connect: %s" % os.strerror(err))
            if s.send(st[2]) != len(st[2]):
                raise Failed("short send")
            s.shutdown(socket.SHUT_WR)
            st[4] = b""
            self.ep.modify(fd, select.EPOLLIN)
            return
        got = st[4]
        exp = st[3]
        while True:
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                st[4] = got
                return
            except OSError as e:
                raise Failed("recv after %d of %d reply bytes: %s" % (len(got), len(exp), e))
            if not data:
                break
            got += data
            if len(got) > len(exp):
                raise Failed("reply too long: %r" % got[:300])
        if got != exp:
            raise Failed("wrong reply (%d bytes, expected %d): %r" % (len(got), len(exp), got[:300]))
        now = time.perf_counter()
        self.lat.append(now - st[1])
        del self.conns[fd]
        del self.handlers[fd]
        s.close()  # also leaves the epoll set
        self.done += 1
        self.last_done = now
        if not self.stopping:
            self.start_one()

    def result(self):
        lat = sorted(self.lat)
        return {"conns": self.done, "p50_us": _us(pct(lat, 0.50)), "p99_us": _us(pct(lat, 0.99))}


def _us(v):
    return None if v is None else v * 1e6


# ---- pipe: one connection, pipelined blocks of requests ----


def blocks(kind, block=None):
    """An endless iterator of (request bytes, expected reply bytes, request count) blocks
    (``block`` requests each, for status; a default suited to a large window otherwise).

    Distinct requests (echo N, JSON ids) come from one template per kind with a block
    number substituted in C (bytes.replace), so building them costs the client little."""
    if kind == "status":
        n = 2048 if block is None else block
        req, exp = b"status\n" * n, STATUS_TEXT * n
        while True:
            yield req, exp, n
    if kind == "echo":
        n = 4096
        req_t = b"".join(b"echo XXXX%04d\n" % j for j in range(n))
        exp_t = b"".join(b"XXXX%04d\n" % j for j in range(n))
    elif kind == "json":
        n = 2048
        req_t = b"".join(b'{"id": XXXX%04d, "cmd": "status"}\n' % j for j in range(n))
        exp_t = b"".join(JSON_PREFIX + b"XXXX%04d" % j + JSON_SUFFIX for j in range(n))
    else:
        raise ValueError(kind)
    for k in range(1000, 10000):  # ids 10000000..99999999, no leading zeros (JSON numbers)
        tag = b"%d" % k
        yield req_t.replace(b"XXXX", tag), exp_t.replace(b"XXXX", tag), n
    raise Failed("ran out of distinct requests")


class Pipe:
    """One connection sending blocks of pipelined requests while reading and checking the
    replies; at most ``window`` bytes of replies outstanding."""

    def __init__(self, ep, handlers, port, kind, window=4 << 20, block=None, gen=None):
        self.ep = ep
        self.kind = kind
        self.window = window
        self.blocks = gen if gen is not None else blocks(kind, block)
        s = socket.create_connection((HOST, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        self.sock = s
        self.fd = s.fileno()
        handlers[self.fd] = self.event
        self.out = None  # memoryview of the block being sent
        self.out_off = 0
        self.pending = collections.deque()  # (expected bytes, count) sent, not yet answered
        self.pending_bytes = 0
        self.exp_off = 0
        self.done = 0
        self.sent = 0
        self.stopping = False
        self.eof = False
        self.finished_sending = False
        self.mask = 0
        self.t_first = None
        self.t_last = None
        self.last_progress = time.perf_counter()
        self._next_block()
        self._set_mask()

    def _next_block(self):
        if self.stopping:
            if not self.finished_sending:
                self.finished_sending = True
                self.sock.shutdown(socket.SHUT_WR)  # then read to EOF: nothing may follow
            self.out = None
            return
        req, exp, n = next(self.blocks)
        self.out = memoryview(req)
        self.out_off = 0
        self.pending.append((exp, n))
        self.pending_bytes += len(exp)
        self.sent += n

    def _set_mask(self):
        want = select.EPOLLIN
        if self.out is not None:
            want |= select.EPOLLOUT
        if want != self.mask:
            if self.mask:
                self.ep.modify(self.fd, want)
            else:
                self.ep.register(self.fd, want)
            self.mask = want

    def stop(self):
        self.stopping = True
        if self.out is None:
            self._next_block()
        self._set_mask()

    def event(self, fd, ev):
        if ev & select.EPOLLOUT and self.out is not None:
            if self.t_first is None:
                self.t_first = time.perf_counter()
            try:
                n = self.sock.send(self.out[self.out_off : self.out_off + 65536])
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                raise Failed("send: %s" % e)
            self.out_off += n
            if self.out_off >= len(self.out):
                self.out = None
                # The window: the next block goes out once the replies owed fit in it.
                if self.pending_bytes < self.window or self.stopping:
                    self._next_block()
        if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self._read()
        if self.out is None and not self.finished_sending and self.pending_bytes < self.window:
            self._next_block()
        self._set_mask()

    def _read(self):
        try:
            data = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            raise Failed("recv: %s" % e)
        now = time.perf_counter()
        if not data:
            if self.pending:
                raise Failed("EOF with %d requests unanswered" % sum(n for _, n in self.pending))
            self.eof = True
            self.ep.unregister(self.fd)
            self.mask = 0
            return
        self.last_progress = now
        pos = 0
        while pos < len(data):
            if not self.pending:
                raise Failed("bytes after the last reply: %r" % data[pos : pos + 200])
            exp, n = self.pending[0]
            k = min(len(exp) - self.exp_off, len(data) - pos)
            if data[pos : pos + k] != exp[self.exp_off : self.exp_off + k]:
                got = data[pos : pos + k]
                want = exp[self.exp_off : self.exp_off + k]
                i = next(i for i in range(k) if got[i] != want[i])
                raise Failed(
                    "wrong reply at stream byte %d: got %r, expected %r"
                    % (i, got[max(0, i - 80) : i + 120], want[max(0, i - 80) : i + 120])
                )
            pos += k
            self.exp_off += k
            if self.exp_off == len(exp):
                self.pending.popleft()
                self.pending_bytes -= len(exp)
                self.exp_off = 0
                self.done += n
                self.t_last = now

    @property
    def finished(self):
        return self.eof

    def result(self):
        elapsed = (self.t_last or 0) - (self.t_first or 0)
        return {"requests": self.done, "elapsed_s": elapsed, "req_s": self.done / elapsed if elapsed > 0 else None}


def run_loop(ep, handlers, progress, until_done):
    """Dispatches epoll events until until_done() is true; fails after STALL_S without progress."""
    poll = ep.poll
    while not until_done():
        events = poll(0.2)
        for fd, ev in events:
            h = handlers.get(fd)
            if h is not None:
                h(fd, ev)
        if not events and time.perf_counter() - progress() > STALL_S:
            raise Failed("no progress for %.0f s" % STALL_S)


# ---- the workloads ----
#
# churn, rtt and pipe take one port or two. With two (``--port A,B``), the servers are driven in
# turn, in slices of ``--slice`` seconds ordered A B B A A B B A ..., each getting ``--duration``
# seconds in all: both then see the same minutes of a shared, noisy machine, and their ratio is
# taken from the same time. The result has one entry per port under "per_port".


def slice_order(nports, duration, slice_s):
    """Port indexes, one per slice: A B B A A B ... (A alone for one port)."""
    n = max(1, int(round(duration / slice_s)))
    if nports == 1:
        return [0] * n
    pattern = [0, 1, 1, 0]
    return [pattern[i % 4] for i in range(2 * n)]


def do_churn(a):
    ports = a.ports
    acc = [{"conns": 0, "elapsed_s": 0.0, "lat": array.array("d")} for _ in ports]
    started = 0  # JSON ids stay distinct across slices
    for k in slice_order(len(ports), a.duration, a.slice):
        CURRENT["port"] = ports[k]
        ep = select.epoll()
        handlers = {}
        ch = Churn(ep, handlers, ports[k], a.conc, a.kind, a.srcs)
        ch.started = started
        t0 = time.perf_counter()
        ch.last_done = t0
        deadline = t0 + min(a.slice, a.duration)
        ch.fill()

        def done():
            if not ch.stopping and time.perf_counter() >= deadline:
                ch.stopping = True
            return ch.stopping and not ch.conns

        run_loop(ep, handlers, lambda: ch.last_done, done)
        ep.close()
        started = ch.started
        acc[k]["conns"] += ch.done
        acc[k]["elapsed_s"] += ch.last_done - t0
        acc[k]["lat"].extend(ch.lat)
    out = []
    for x in acc:
        lat = sorted(x.pop("lat"))
        x.update(
            p50_us=_us(pct(lat, 0.50)),
            p99_us=_us(pct(lat, 0.99)),
            conn_s=x["conns"] / x["elapsed_s"] if x["elapsed_s"] > 0 else None,
        )
        out.append(x)
    return {"per_port": out}


def do_rtt(a):
    conns = []
    for port in a.ports:
        CURRENT["port"] = port
        s = socket.create_connection((HOST, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append(s)
    clock = time.perf_counter_ns
    lats = [array.array("q") for _ in conns]
    seq = [0] * len(conns)

    def one(k):
        CURRENT["port"] = a.ports[k]
        s = conns[k]
        i = seq[k]
        seq[k] += 1
        if a.kind == "json":
            req, exp = json_request(i), json_expected(i)
        else:
            req, exp = b"status\n", STATUS_TEXT
        t0 = clock()
        s.sendall(req)
        got = s.recv(65536)
        while len(got) < len(exp):
            more = s.recv(65536)
            if not more:
                raise Failed("EOF after %d of %d reply bytes" % (len(got), len(exp)))
            got += more
        t1 = clock()
        if got != exp:
            raise Failed("wrong reply to request %d: %r" % (i, got[:300]))
        return t1 - t0

    for k in range(len(conns)):  # warm-up
        for _ in range(200):
            one(k)
    order = slice_order(len(conns), a.duration, a.slice)
    per_slice = max(1, a.count // max(1, order.count(0)))
    for k in order:
        deadline = time.perf_counter() + min(a.slice, a.duration)
        lat = lats[k]
        for j in range(per_slice):
            lat.append(one(k))
            if not j & 63 and time.perf_counter() > deadline:
                break
    out = []
    for port, s, lat in zip(a.ports, conns, lats):
        CURRENT["port"] = port
        s.shutdown(socket.SHUT_WR)
        if s.recv(65536) != b"":
            raise Failed("bytes after the last reply")
        s.close()
        v = sorted(lat)
        out.append({"round_trips": len(v), "median_us": pct(v, 0.5) / 1e3, "p99_us": pct(v, 0.99) / 1e3})
    return {"per_port": out}


def do_pipe(a):
    gens = [blocks(a.kind, 512 if a.kind == "status" else None) for _ in a.ports]
    acc = [{"requests": 0, "elapsed_s": 0.0} for _ in a.ports]
    for k in slice_order(len(a.ports), a.duration, a.slice):
        CURRENT["port"] = a.ports[k]
        ep = select.epoll()
        handlers = {}
        p = Pipe(ep, handlers, a.ports[k], a.kind, window=a.window or (256 << 10), gen=gens[k])
        deadline = time.perf_counter() + min(a.slice, a.duration)

        def done():
            if not p.stopping and time.perf_counter() >= deadline:
                p.stop()
            return p.finished

        run_loop(ep, handlers, lambda: p.last_progress, done)
        p.sock.close()
        ep.close()
        r = p.result()
        acc[k]["requests"] += r["requests"]
        acc[k]["elapsed_s"] += r["elapsed_s"]
    for x in acc:
        x["req_s"] = x["requests"] / x["elapsed_s"] if x["elapsed_s"] > 0 else None
    return {"per_port": acc}


def do_flood(a):
    """--conc one-shot clients (text status) plus a pipeliner of text status (at most --window
    bytes of replies owed, i.e. ~420 requests at the default 64 KiB), for --duration s."""
    ep = select.epoll()
    handlers = {}
    window = a.window or (64 << 10)
    pipe = Pipe(ep, handlers, a.port, "status", window=window, block=max(1, window // 4 // len(STATUS_TEXT)))
    ch = Churn(ep, handlers, a.port, a.conc, "text", a.srcs)
    sys.stdout.write("start\n")
    sys.stdout.flush()
    t0 = time.perf_counter()
    deadline = t0 + a.duration
    ch.fill()
    stopped = [False]

    def done():
        if not stopped[0] and time.perf_counter() >= deadline:
            stopped[0] = True
            ch.stopping = True
            pipe.stop()
            sys.stdout.write("stop\n")
            sys.stdout.flush()
        return stopped[0] and not ch.conns and pipe.finished

    run_loop(ep, handlers, lambda: max(ch.last_done, pipe.last_progress), done)
    elapsed = time.perf_counter() - t0
    pipe.sock.close()
    c = ch.result()
    return {
        "elapsed_s": elapsed,
        "conns": c["conns"],
        "conn_s": c["conns"] / elapsed,
        "conn_p50_us": c["p50_us"],
        "conn_p99_us": c["p99_us"],
        "pipe_requests": pipe.done,
        "pipe_req_s": pipe.done / elapsed,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workload", choices=["churn", "rtt", "pipe", "flood"])
    ap.add_argument("--port", required=True, help="a port; churn, rtt and pipe also take A,B")
    ap.add_argument("--kind", default="text", help="text|json (churn, rtt); status|json|echo (pipe)")
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--duration", type=float, default=1.5)
    ap.add_argument("--count", type=int, default=5000, help="rtt: round trips per port at most")
    ap.add_argument("--slice", type=float, default=0.125, help="seconds per slice with two ports")
    ap.add_argument("--srcs", type=int, default=32, help="loopback source addresses (churn, flood)")
    ap.add_argument("--window", type=int, default=None, help="reply bytes owed at most (pipe: 256 KiB; flood: 64 KiB)")
    a = ap.parse_args(argv)
    a.ports = [int(x) for x in a.port.split(",")]
    a.port = a.ports[0]
    if len(a.ports) > 2 or (len(a.ports) > 1 and a.workload == "flood"):
        ap.error("--port: one port, or two for churn, rtt and pipe")
    fn = {"churn": do_churn, "rtt": do_rtt, "pipe": do_pipe, "flood": do_flood}[a.workload]
    CURRENT["port"] = a.port
    c0 = time.process_time()
    w0 = time.perf_counter()
    try:
        out = fn(a)
        out["ok"] = True
    except (Failed, OSError, ValueError) as e:
        out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e), "failed_port": CURRENT["port"]}
    wall = time.perf_counter() - w0
    out["client_cpu_s"] = time.process_time() - c0
    out["client_wall_s"] = wall
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
