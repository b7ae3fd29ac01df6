"""Load generator for the reactor_mgmt benchmark suite (stdlib only, 3.9+).

Run as a separate process by run.py, one workload per invocation:

    python benchmarks/loadgen.py WORKLOAD --port PORT [options]

It prints exactly one JSON object on stdout: {"ok": true, ...metrics} or
{"ok": false, "error": "..."}.  Every reply is checked byte for byte against
the expected stream; a dropped, garbled, reordered or extra reply is a
failure, never a fast result.  Only 127.0.0.1 is ever contacted.

Workloads:
  check     protocol probe: LF, CRLF, split lines, a pipelined batch
  pipeline  one connection, N pipelined `ping`, 64 KiB writes -> req/s
  echo      one connection, N distinct pipelined `echo I xI` -> req/s
  rtt       one connection, N sequential round trips -> p50/p99 us
  fanin     C connections, each R sequential round trips -> req/s, p99
  rtt_pair, fanin_pair, echo_pair, pipeline_pair
            rtt / fanin / echo / pipeline against two servers (--port, --port2) in
            interleaved slices or phases, so both see the same machine -> ratios B/A
  idle      C idle (verified) connections -> server RSS growth per
            connection, then `rtt` on one more connection
  flood     one connection floods pipelined pings for D seconds (used by
            flood.py, which times the server's poll() calls)
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import selectors
import socket
import statistics
import struct
import sys
import time

HOST = "127.0.0.1"  # the only address this suite ever talks to
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
CHUNK = 65536
STALL = 15.0  # seconds without progress before a workload is FAILED


class Failed(Exception):
    """A server dropped, garbled or stalled a reply."""


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def set_kernel_timeouts(sock, seconds):
    """SO_RCVTIMEO/SO_SNDTIMEO: a real timeout on a *blocking* socket, so the
    rtt loop costs one syscall per send/recv (Python-level timeouts add a
    poll() before every call)."""
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def pin_same_cpu(server_pid):
    """Pin this process and every thread of the server to one CPU; returns
    the previous affinities.  Used for the sequential rtt loops: otherwise
    each round trip pays two cross-CPU wake-ups whose cost (large and
    bimodal on small VMs) depends on where the scheduler happened to put
    the two processes, not on the server."""
    if not server_pid or not hasattr(os, "sched_setaffinity"):
        return None
    cpu = max(os.sched_getaffinity(0))
    saved = [(0, os.sched_getaffinity(0))]
    try:
        tids = [int(t) for t in os.listdir("/proc/%d/task" % server_pid)]
    except OSError:
        tids = [server_pid]
    for tid in tids:
        try:
            saved.append((tid, os.sched_getaffinity(tid)))
            os.sched_setaffinity(tid, {cpu})
        except OSError:
            pass
    os.sched_setaffinity(0, {cpu})
    return saved


def unpin(saved):
    for tid, cpus in saved or ():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def connect(port, timeout=10.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def describe_mismatch(got, expected, offset):
    i = 0
    n = min(len(got), len(expected))
    while i < n and got[i] == expected[i]:
        i += 1
    lo = max(0, i - 20)
    return "reply stream differs at byte %d: got %r, expected %r" % (
        offset + i,
        bytes(got[lo : i + 20]),
        bytes(expected[lo : i + 20]),
    )


def recv_exact_or_fail(sock, n, what):
    buf = b""
    while len(buf) < n:
        try:
            data = sock.recv(n - len(buf))
        except socket.timeout:
            raise Failed("%s: timed out after %r" % (what, buf))
        if not data:
            raise Failed("%s: connection closed after %r" % (what, buf))
        buf += data
    return buf


def assert_no_extra(sock, what, wait=0.02):
    """After the last expected byte nothing else may arrive."""
    time.sleep(wait)
    saved = sock.gettimeout()
    sock.setblocking(False)
    try:
        extra = sock.recv(4096)
    except (BlockingIOError, InterruptedError):
        return
    except OSError as e:
        raise Failed("%s: error after last reply: %s" % (what, e))
    finally:
        sock.settimeout(saved)
    if extra:
        raise Failed("%s: unexpected extra data %r" % (what, extra[:60]))


# ---------------------------------------------------------------- check --


def wl_check(port, args):
    s = connect(port)
    s.settimeout(10.0)
    try:
        cases = [
            ([b"ping\n"], b"pong\n"),
            ([b"ping\r\n"], b"pong\n"),
            ([b"echo a b\n"], b"a b\n"),
            ([b"echo a b\r\n"], b"a b\n"),
            ([b"echo 17 x17\n"], b"17 x17\n"),
            ([b"pi", b"ng\n"], b"pong\n"),
            ([b"echo hel", b"lo wor", b"ld\r", b"\n"], b"hello world\n"),
            ([b"ping\nping\r\necho 1 2\nping\n"], b"pong\npong\n1 2\npong\n"),
        ]
        for parts, expected in cases:
            for part in parts:
                s.sendall(part)
                time.sleep(0.002)
            got = recv_exact_or_fail(s, len(expected), "check %r" % (b"".join(parts),))
            if got != expected:
                raise Failed("check %r: got %r, expected %r" % (b"".join(parts), got, expected))
        assert_no_extra(s, "check")
    finally:
        s.close()
    return {"cases": len(cases)}


# ------------------------------------------------------------ pipelined --


def line_end(buf, nlines):
    """Offset just past the nlines-th LF of buf."""
    pos = -1
    for _ in range(nlines):
        pos = buf.index(b"\n", pos + 1)
    return pos + 1


def pipelined(port, payload, expected, chunk=CHUNK, what="pipeline", max_seconds=0.0, window=50000):
    """Send `payload` in `chunk`-byte writes while reading replies on the same
    single-threaded selector loop; compare the reply stream to `expected`.

    At most `window` requests are outstanding (sent, not yet answered): far
    more than any server reads at once, but it keeps the kernel buffers from
    holding seconds of work, so that with max_seconds sending can stop at the
    next line end once that much time has passed (slow servers) and the run
    ends soon after; only the replies to the requests sent are then expected.
    Returns (seconds, requests sent)."""
    nreq = payload.count(b"\n")
    s = connect(port)
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, READ | WRITE)
    pmv = memoryview(payload)
    total_out = len(payload)
    total_in = len(expected)
    rbuf = bytearray(1 << 20)
    sent = got = 0
    sent_lines = got_lines = 0
    writing = True
    blocked = False  # writing paused by the window
    try:
        t0 = time.perf_counter()
        last = t0
        while got < total_in:
            events = sel.select(1.0)
            now = time.perf_counter()
            if not events:
                if now - last > STALL:
                    raise Failed(
                        "%s: stalled: sent %d/%d bytes, received %d/%d bytes" % (what, sent, total_out, got, total_in)
                    )
                continue
            mask = events[0][1]
            if mask & WRITE and writing:
                try:
                    n = s.send(pmv[sent : min(sent + chunk, total_out)])
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError as e:
                    raise Failed("%s: send failed after %d bytes: %s" % (what, sent, e))
                if n:
                    sent_lines += payload.count(b"\n", sent, sent + n)
                    last = now
                sent += n
                if max_seconds and now - t0 > max_seconds and total_out == len(payload) and sent < total_out:
                    # cap: finish the current line, expect replies to the lines sent
                    total_out = payload.index(b"\n", sent - 1) + 1 if sent else 0
                    nreq = payload.count(b"\n", 0, total_out)
                    total_in = line_end(expected, nreq)
                if sent >= total_out:
                    writing = False
                    sel.modify(s, READ)
                elif sent_lines - got_lines > window:
                    blocked = True
                    sel.modify(s, READ)
            if mask & READ:
                try:
                    n = s.recv_into(rbuf)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    raise Failed("%s: recv failed after %d bytes: %s" % (what, got, e))
                if n == 0:
                    raise Failed("%s: server closed the connection after %d/%d reply bytes" % (what, got, total_in))
                if got + n > total_in:
                    raise Failed("%s: %d bytes more than expected" % (what, got + n - total_in))
                if rbuf[:n] != expected[got : got + n]:
                    raise Failed(describe_mismatch(rbuf[:n], expected[got : got + n], got))
                got += n
                got_lines += rbuf.count(b"\n", 0, n)
                last = now
                if blocked and sent_lines - got_lines <= window // 2:
                    blocked = False
                    sel.modify(s, READ | WRITE)
        t1 = time.perf_counter()
        s.setblocking(True)
        s.settimeout(5.0)
        assert_no_extra(s, what)
    finally:
        sel.close()
        s.close()
    return t1 - t0, nreq


def wl_pipeline(port, args):
    n = args.n
    secs, done = pipelined(port, b"ping\n" * n, b"pong\n" * n, what="pipeline", max_seconds=args.max_seconds)
    return {"requests": done, "capped": done < n, "seconds": secs, "rps": done / secs}


def echo_payload(n):
    return (b"".join(b"echo %d x%d\n" % (i, i) for i in range(n)), b"".join(b"%d x%d\n" % (i, i) for i in range(n)))


def wl_echo(port, args):
    n = args.n
    payload, expected = echo_payload(n)
    secs, done = pipelined(port, payload, expected, what="echo", max_seconds=args.max_seconds)
    return {"requests": done, "capped": done < n, "seconds": secs, "rps": done / secs}


def phase_pair(ports, payload, expected, repeat, what):
    """One pipelined workload against two servers, ``repeat`` phases each, in the order
    A B B A A B ...; each phase is the whole workload on a new connection. One phase lasts
    well under a second, so a shared machine's drift moves single phases by tens of percent;
    the median phase per server, from phases interleaved like this, measures the servers
    rather than the moment each one ran. Returns the medians and the ratio B/A."""
    phases = ([], [])
    for i in range(max(1, repeat)):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            secs, done = pipelined(ports[k], payload, expected, what=what)
            phases[k].append(done / secs)
    rps = [statistics.median(ph) for ph in phases]
    return {
        "a_rps": rps[0],
        "b_rps": rps[1],
        "ratio_rps": rps[1] / rps[0],
        "phases": len(phases[0]),
        "a_phases": phases[0],
        "b_phases": phases[1],
    }


def wl_echo_pair(port, args):
    """echo against two servers (--port A, --port2 B): see phase_pair."""
    if not args.port2:
        raise Failed("echo_pair needs --port2")
    payload, expected = echo_payload(args.n)
    return phase_pair((port, args.port2), payload, expected, args.repeat, "echo_pair")


def wl_pipeline_pair(port, args):
    """pipeline against two servers (--port A, --port2 B): see phase_pair."""
    if not args.port2:
        raise Failed("pipeline_pair needs --port2")
    return phase_pair((port, args.port2), b"ping\n" * args.n, b"pong\n" * args.n, args.repeat, "pipeline_pair")


# ------------------------------------------------------------------ rtt --


def rtt_loop(sock, n, warmup=200, max_seconds=0.0):
    """n sequential ping round trips on a blocking socket; latencies in ns.
    With max_seconds, stops early (slow servers) and reports what it did."""
    lat = rtt_samples(sock, n, warmup, max_seconds)
    lat.sort()
    return rtt_stats(lat, n)


def rtt_stats(lat, n):
    """p50/p99/mean of sorted round-trip latencies (ns) as the rtt result."""
    return {
        "requests": len(lat),
        "capped": len(lat) < n,
        "p50_us": pct(lat, 50) / 1000.0,
        "p99_us": pct(lat, 99) / 1000.0,
        "mean_us": statistics.fmean(lat) / 1000.0 if hasattr(statistics, "fmean") else sum(lat) / len(lat) / 1000.0,
    }


def rtt_samples(sock, n, warmup=200, max_seconds=0.0):
    """The latencies (ns, in order) of n ping round trips after `warmup` more."""
    req = b"ping\n"
    exp = b"pong\n"
    buf = bytearray(64)
    mv = memoryview(buf)
    lat = []
    append = lat.append
    send = sock.send
    recv_into = sock.recv_into
    clock = time.perf_counter_ns
    stop_ns = clock() + int(max_seconds * 1e9) if max_seconds else 0
    for i in range(warmup + n):
        t0 = clock()
        if stop_ns and t0 > stop_ns and len(lat) >= 100:
            break
        if send(req) != 5:
            raise Failed("rtt: short send")
        got = 0
        while got < 5:
            try:
                k = recv_into(mv[got:])
            except (BlockingIOError, socket.timeout):
                raise Failed("rtt: timed out waiting for reply %d" % i)
            if k == 0:
                raise Failed("rtt: connection closed at request %d" % i)
            got += k
        t1 = clock()
        if got != 5 or buf[:5] != exp:
            raise Failed("rtt: request %d got %r, expected %r" % (i, bytes(buf[:got]), exp))
        if i >= warmup:
            append(t1 - t0)
    return lat


def rtt_on_new_connection(port, n, max_seconds=0.0):
    s = connect(port)
    s.settimeout(None)
    set_kernel_timeouts(s, 10.0)
    try:
        res = rtt_loop(s, n, max_seconds=max_seconds)
        assert_no_extra(s, "rtt")
    finally:
        s.close()
    return res


def wl_rtt(port, args):
    saved = pin_same_cpu(args.server_pid)
    try:
        res = rtt_on_new_connection(port, args.n, args.max_seconds)
    finally:
        unpin(saved)
    res["pinned"] = saved is not None
    return res


def wl_rtt_pair(port, args):
    """rtt against two servers at once (--port A, --port2 B), in interleaved slices.

    Both servers and this process are pinned to one CPU, and the round trips go in
    --slices slices per server, in the order A B B A A B ...: on a shared machine whose
    speed drifts over seconds, both servers then see the same drift, so the ratio of
    their medians measures the servers rather than the moment each one ran."""
    if not args.port2:
        raise Failed("rtt_pair needs --port2")
    saved = pin_same_cpu(args.server_pid)
    saved2 = pin_same_cpu(args.server_pid2)
    socks = []
    try:
        for p in (port, args.port2):
            s = connect(p)
            s.settimeout(None)
            set_kernel_timeouts(s, 10.0)
            socks.append(s)
        per = max(1, args.n // args.slices)
        lat = ([], [])
        for k in (0, 1):
            rtt_samples(socks[k], 0, warmup=200)
        for i in range(args.slices):
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                lat[k].extend(rtt_samples(socks[k], per, warmup=10))
        for s in socks:
            assert_no_extra(s, "rtt_pair")
    finally:
        for s in socks:
            s.close()
        unpin(saved2)
        unpin(saved)
    a, b = (rtt_stats(sorted(x), per * args.slices) for x in lat)
    return {"a": a, "b": b, "ratio_p50": b["p50_us"] / a["p50_us"], "pinned": saved is not None}


def wl_fanin_pair(port, args):
    """fan-in against two servers (--port A, --port2 B), phases interleaved A B B A ...
    (see wl_rtt_pair); each server's median phase, and the ratios B/A."""
    if not args.port2:
        raise Failed("fanin_pair needs --port2")
    pools = [open_verified(port, args.conns)]
    phases = ([], [])
    try:
        pools.append(open_verified(args.port2, args.conns))
        for i in range(max(1, args.repeat)):
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                secs, lat = fanin_phase(pools[k], args.rounds)
                phases[k].append((len(lat) / secs, pct(lat, 99) / 1000.0))
        for pool in pools:
            for s in pool[:3]:
                assert_no_extra(s, "fanin_pair", wait=0)
    finally:
        for pool in pools:
            for s in pool:
                s.close()
    rps = [statistics.median(p[0] for p in ph) for ph in phases]
    p99 = [statistics.median(p[1] for p in ph) for ph in phases]
    return {
        "a_rps": rps[0],
        "b_rps": rps[1],
        "a_p99_us": p99[0],
        "b_p99_us": p99[1],
        "ratio_rps": rps[1] / rps[0],
        "ratio_p99": p99[1] / p99[0],
        "phases": len(phases[0]),
    }


# ------------------------------------------------------ many connections --


def open_verified(port, count, inflight=100, timeout=120.0):
    """Open `count` connections, at most `inflight` in progress at a time;
    each is verified accepted and served by one ping/pong.  Returns the
    (non-blocking) sockets."""
    sel = selectors.DefaultSelector()
    done = []
    opened = 0
    pending = 0
    deadline = time.monotonic() + timeout
    try:
        while len(done) < count:
            while opened < count and pending < inflight:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = s.connect_ex((HOST, port))
                if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                    s.close()
                    raise Failed("connect #%d failed: %s" % (opened, errno.errorcode.get(err, err)))
                sel.register(s, WRITE, [0, b""])
                opened += 1
                pending += 1
            if time.monotonic() > deadline:
                raise Failed("only %d/%d connections verified after %.0fs" % (len(done), count, timeout))
            for key, mask in sel.select(0.5):
                s = key.fileobj
                st = key.data
                if st[0] == 0:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise Failed("connect #%d failed: %s" % (len(done), errno.errorcode.get(err, err)))
                    s.send(b"ping\n")
                    st[0] = 1
                    sel.modify(s, READ, st)
                    continue
                try:
                    data = s.recv(64)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    raise Failed("connection #%d: %s" % (len(done), e))
                if not data:
                    raise Failed("server closed connection #%d before its first reply" % len(done))
                st[1] += data
                if len(st[1]) >= 5:
                    if st[1] != b"pong\n":
                        raise Failed("connection #%d: got %r, expected b'pong\\n'" % (len(done), st[1]))
                    sel.unregister(s)
                    done.append(s)
                    pending -= 1
    except BaseException:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        for s in done:
            s.close()
        raise
    finally:
        sel.close()
    return done


class Poller:
    """epoll where available (lean per-event cost), else poll()."""

    def __init__(self, n):
        if hasattr(select, "epoll"):
            self.p = select.epoll(max(n, 1))
            self.IN = select.EPOLLIN
            self.scale = 1.0
        else:
            self.p = select.poll()
            self.IN = select.POLLIN
            self.scale = 1000.0

    def register(self, fd):
        self.p.register(fd, self.IN)

    def unregister(self, fd):
        self.p.unregister(fd)

    def poll(self, timeout):
        return self.p.poll(timeout * self.scale)

    def close(self):
        if hasattr(self.p, "close"):
            self.p.close()


def fanin_phase(conns, rounds):
    """Every connection sends one ping, then another after each reply, until
    `rounds` replies each.  Returns (seconds, sorted latencies in ns)."""
    nconn = len(conns)
    poller = Poller(nconn)
    fd2i = {}
    recvs = [s.recv for s in conns]
    sends = [s.send for s in conns]
    remaining = [rounds] * nconn
    partial = [b""] * nconn
    t_sent = [0] * nconn
    lat = []
    add = lat.append
    clock = time.perf_counter_ns
    PING = b"ping\n"
    PONG = b"pong\n"
    try:
        for i, s in enumerate(conns):
            fd2i[s.fileno()] = i
            poller.register(s.fileno())
        t0 = time.perf_counter()
        for i in range(nconn):
            t_sent[i] = clock()
            sends[i](PING)
        active = nconn
        last = time.monotonic()
        while active:
            events = poller.poll(1.0)
            now = clock()
            if not events:
                if time.monotonic() - last > STALL:
                    raise Failed("fanin: stalled with %d connections waiting" % active)
                continue
            last = time.monotonic()
            for fd, _ev in events:
                i = fd2i[fd]
                try:
                    data = recvs[i](64)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    raise Failed("fanin: connection %d: %s" % (i, e))
                if data != PONG:
                    if not data:
                        raise Failed("fanin: server closed connection %d" % i)
                    data = partial[i] + data
                    if len(data) < 5 and PONG.startswith(data):
                        partial[i] = data
                        continue
                    if data != PONG:
                        raise Failed("fanin: connection %d got %r, expected b'pong\\n'" % (i, data))
                    partial[i] = b""
                add(now - t_sent[i])
                remaining[i] -= 1
                if remaining[i]:
                    t_sent[i] = clock()
                    sends[i](PING)
                else:
                    poller.unregister(fd)
                    active -= 1
        t1 = time.perf_counter()
    finally:
        poller.close()
    lat.sort()
    return t1 - t0, lat


def wl_fanin(port, args):
    """args.repeat phases on the same connections; the median phase by
    req/s is reported (p50/p99 are the medians over phases)."""
    conns = open_verified(port, args.conns)
    phases = []
    try:
        t_end = time.monotonic() + args.max_seconds if args.max_seconds else None
        for _ in range(max(1, args.repeat)):
            if phases and t_end is not None and time.monotonic() > t_end:
                break  # slow server: fewer phases
            secs, lat = fanin_phase(conns, args.rounds)
            phases.append((len(lat) / secs, pct(lat, 50) / 1000.0, pct(lat, 99) / 1000.0, secs))
        for s in conns[:3]:
            assert_no_extra(s, "fanin", wait=0)
    finally:
        for s in conns:
            s.close()
    return {
        "requests": args.conns * args.rounds,
        "phases": len(phases),
        "want_phases": max(1, args.repeat),
        "rps": statistics.median(p[0] for p in phases),
        "p50_us": statistics.median(p[1] for p in phases),
        "p99_us": statistics.median(p[2] for p in phases),
        "phase_rps": [round(p[0]) for p in phases],
    }


# ----------------------------------------------------------------- idle --


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Failed("no VmRSS for pid %d" % pid)


def stable_rss(pid, interval=0.2, max_wait=5.0):
    """Read VmRSS until two consecutive readings agree within 16 KiB."""
    prev = rss_kib(pid)
    end = time.monotonic() + max_wait
    while time.monotonic() < end:
        time.sleep(interval)
        cur = rss_kib(pid)
        if abs(cur - prev) <= 16:
            return cur
        prev = cur
    return prev


def wl_idle(port, args):
    pid = args.server_pid
    if not pid:
        raise Failed("idle needs --server-pid")
    # warm the server's code paths (first connection, first replies)
    w = connect(port)
    w.settimeout(10.0)
    for _ in range(20):
        w.sendall(b"ping\n")
        if recv_exact_or_fail(w, 5, "idle warm-up") != b"pong\n":
            raise Failed("idle warm-up: bad reply")
    w.close()
    before = stable_rss(pid)
    t0 = time.perf_counter()
    conns = open_verified(port, args.conns)
    t_open = time.perf_counter() - t0
    try:
        after = stable_rss(pid)
        res = {
            "conns": args.conns,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "bytes_per_conn": (after - before) * 1024.0 / args.conns,
            "open_seconds": t_open,
        }
        saved = pin_same_cpu(pid)
        try:
            rtt = rtt_on_new_connection(port, args.n, args.max_seconds)
        finally:
            unpin(saved)
        res.update({"rtt_" + k: v for k, v in rtt.items()})
        # the idle connections must still be alive and served afterwards
        for i in (0, len(conns) // 2, len(conns) - 1):
            s = conns[i]
            s.setblocking(True)
            s.settimeout(10.0)
            s.sendall(b"ping\n")
            if recv_exact_or_fail(s, 5, "idle connection %d" % i) != b"pong\n":
                raise Failed("idle connection %d: bad reply" % i)
    finally:
        for s in conns:
            s.close()
    return res


# ---------------------------------------------------------------- flood --


def wl_flood(port, args):
    """Flood pipelined pings for args.duration seconds (in whole 64 KiB
    chunks), reading and checking replies concurrently, then wait for the
    rest of the replies."""
    per_chunk = CHUNK // 5
    chunk = b"ping\n" * per_chunk
    cmv = memoryview(chunk)
    pongs = b"pong\n" * ((1 << 20) // 5 + 2)
    s = connect(port)
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, READ | WRITE)
    rbuf = bytearray(1 << 20)
    sent = got = off = 0
    writing = True
    try:
        t0 = time.perf_counter()
        t_end = t0 + args.duration
        last = t0
        while writing or got < sent:
            events = sel.select(1.0)
            now = time.perf_counter()
            if not events:
                if now - last > STALL:
                    raise Failed("flood: stalled: sent %d, received %d bytes" % (sent, got))
                continue
            mask = events[0][1]
            if mask & WRITE and writing:
                try:
                    n = s.send(cmv[off:])
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError as e:
                    raise Failed("flood: send failed: %s" % e)
                sent += n
                off += n
                if off == len(chunk):
                    off = 0
                    if now >= t_end:
                        writing = False
                        sel.modify(s, READ)
                if n:
                    last = now
            if mask & READ:
                try:
                    n = s.recv_into(rbuf)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    raise Failed("flood: recv failed: %s" % e)
                if n == 0:
                    raise Failed("flood: server closed the connection")
                ph = got % 5
                if rbuf[:n] != pongs[ph : ph + n]:
                    raise Failed(describe_mismatch(rbuf[:n], pongs[ph : ph + n], got))
                got += n
                if got > sent:
                    raise Failed("flood: more reply bytes than requests")
                last = now
        t1 = time.perf_counter()
    finally:
        sel.close()
        s.close()
    return {"requests": sent // 5, "seconds": t1 - t0, "rps": sent / 5.0 / (t1 - t0)}


WORKLOADS = {
    "check": wl_check,
    "pipeline": wl_pipeline,
    "echo": wl_echo,
    "echo_pair": wl_echo_pair,
    "pipeline_pair": wl_pipeline_pair,
    "rtt": wl_rtt,
    "rtt_pair": wl_rtt_pair,
    "fanin": wl_fanin,
    "fanin_pair": wl_fanin_pair,
    "idle": wl_idle,
    "flood": wl_flood,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, default=10000, help="requests / round trips")
    p.add_argument("--conns", type=int, default=1000, help="connections (fanin, idle)")
    p.add_argument("--rounds", type=int, default=20, help="round trips per connection (fanin)")
    p.add_argument("--repeat", type=int, default=3, help="fan-in / echo_pair / pipeline_pair phases, median reported")
    p.add_argument("--server-pid", type=int, default=0, help="server pid (idle: VmRSS)")
    p.add_argument(
        "--port2", type=int, default=0, help="second server (rtt_pair, fanin_pair, echo_pair, pipeline_pair)"
    )
    p.add_argument("--server-pid2", type=int, default=0, help="second server's pid (rtt_pair)")
    p.add_argument("--slices", type=int, default=20, help="slices per server (rtt_pair)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds (flood)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="cap for slow servers (0: none): pipeline/echo stop sending, rtt/idle "
        "stop the round trips, fanin starts no new phase after this long",
    )
    args = p.parse_args(argv)
    raise_nofile()
    try:
        res = WORKLOADS[args.workload](args.port, args)
        res["ok"] = True
    except Failed as e:
        res = {"ok": False, "error": str(e)}
    except OSError as e:
        res = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
