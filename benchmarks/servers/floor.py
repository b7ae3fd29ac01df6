"""The "floor": a minimal hand-written selectors loop.

Honest and minimal but reasonable: non-blocking sockets, one read of up to
256 KiB per readiness event, per line split into words and dispatch
ping/echo, replies for one read joined into one write, output buffered when
the socket is full (with EVENT_WRITE), reading paused above 1 MiB of
unsent output.

For benchmarks/realistic.py it also answers ``status`` (a dict of 8 fields
rendered as aligned ``key: value`` lines) and JSON requests
(``{"id": N, "cmd": "status"}`` -> ``{"id": N, "ok": true, "result": {...}}``),
and with ``--host`` runs inside a 60 Hz host loop (``--work-ms`` of busy work
per frame) whose I/O tick is ``select(timeout=time left in the frame)``.
"""

import json
import selectors
import socket
import time

from _common import BACKLOG, HOST, MAX_LINE, HostFrames, announce, parse_args, raise_nofile

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
HIGH_WATER = 1 << 20


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


def status():
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


def render_text(d):
    """A flat dict as aligned ``key: value`` lines."""
    width = max(len(k) for k in d) + 1
    return "".join("%-*s %s\n" % (width, k + ":", v) for k, v in d.items()).encode()


def json_reply(line):
    try:
        req = json.loads(line)
        cmd = req.get("cmd")
    except (ValueError, AttributeError):
        return b'{"id": null, "ok": false, "error": {"code": "bad_request"}}\n'
    if cmd == "status":
        reply = {"id": req.get("id"), "ok": True, "result": status()}
    else:
        reply = {"id": req.get("id"), "ok": False, "error": {"code": "unknown_command"}}
    return (json.dumps(reply, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode()


class Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "mask")

    def __init__(self, sock):
        self.sock = sock
        self.inbuf = b""
        self.outbuf = bytearray()
        self.mask = READ


def main():
    args = parse_args(__doc__, host_loop=True)
    raise_nofile()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, args.port))
    lsock.listen(BACKLOG)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, READ, None)
    # --host: the frames' signal handlers are in place before the port goes out
    frames = HostFrames(args.hz, args.work_ms) if args.host else None
    announce(lsock.getsockname()[1])

    def close(c):
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def set_mask(c, mask):
        if c.mask != mask:
            c.mask = mask
            sel.modify(c.sock, mask, c)

    def write(c, data):
        if c.outbuf:
            c.outbuf += data
        else:
            try:
                n = c.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                close(c)
                return
            if n == len(data):
                return
            c.outbuf += data[n:]
        set_mask(c, WRITE if len(c.outbuf) > HIGH_WATER else READ | WRITE)

    def on_read(c):
        try:
            data = c.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            close(c)
            return
        if not data:
            close(c)
            return
        if c.inbuf:
            data = c.inbuf + data
        lines = data.split(b"\n")
        c.inbuf = lines.pop()
        if len(c.inbuf) > MAX_LINE:
            close(c)
            return
        out = []
        append = out.append
        for line in lines:
            words = line.split()
            if not words:
                continue
            cmd = words[0]
            if cmd == b"ping":
                append(b"pong\n")
            elif cmd == b"echo":
                append(b" ".join(words[1:]) + b"\n")
            elif cmd == b"status":
                append(render_text(status()))
            elif cmd[:1] == b"{":
                append(json_reply(line))
            else:
                append(b"error unknown command\n")
        if out:
            write(c, b"".join(out))

    def on_write(c):
        try:
            n = c.sock.send(c.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            close(c)
            return
        del c.outbuf[:n]
        if not c.outbuf:
            set_mask(c, READ)
        elif len(c.outbuf) <= HIGH_WATER:
            set_mask(c, READ | WRITE)

    def handle(events):
        for key, mask in events:
            c = key.data
            if c is None:
                for _ in range(64):
                    try:
                        sock, _addr = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # e.g. EMFILE: try again on the next event
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn = Conn(sock)
                    sel.register(sock, READ, conn)
                continue
            if mask & WRITE:
                on_write(c)
                if c.sock.fileno() < 0:
                    continue
            if mask & READ and c.mask & READ:
                on_read(c)

    if not args.host:
        while True:
            handle(sel.select())
    # The host loop: frames on a fixed schedule, the rest of each frame waiting in select().
    frames.next_due = frames.clock() + frames.step
    clock = frames.clock
    thread_time = time.thread_time
    select = sel.select
    while True:
        now = clock()
        if now >= frames.next_due:
            frames.run_frame(now)
        left = frames.next_due - clock()
        c0 = thread_time()
        handle(select(left if left > 0 else 0))
        frames.io_cpu += thread_time() - c0


if __name__ == "__main__":
    main()
