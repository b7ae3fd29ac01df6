"""asyncio Protocol peer: data_received splits lines, replies for one chunk
are joined into one transport.write(); reading pauses while the transport's
write buffer is above its high-water mark.

For benchmarks/realistic.py it also answers ``status`` (8 fields as aligned
``key: value`` lines) and JSON requests (``{"id": N, "cmd": "status"}``);
``--uvloop`` runs the same protocol on uvloop's loop, and ``--host`` adds a
60 Hz frame callback (``loop.call_at``) doing ``--work-ms`` of busy work."""

import asyncio
import json

from _common import BACKLOG, HOST, MAX_LINE, HostFrames, announce, parse_args, raise_nofile


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


class LineProtocol(asyncio.Protocol):
    def __init__(self):
        self.transport = None
        self.buf = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.buf:
            data = self.buf + data
        lines = data.split(b"\n")
        self.buf = lines.pop()
        if len(self.buf) > MAX_LINE:
            self.transport.close()
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
            self.transport.write(b"".join(out))

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


def start_frames(loop, frames):
    """The host's frames as loop callbacks on a fixed schedule (loop.call_at)."""
    offset = frames.clock() - loop.time()  # frames keep perf_counter time; the loop its own

    def frame():
        frames.run_frame(frames.clock())
        loop.call_at(frames.next_due - offset, frame)

    loop.call_at(frames.next_due - offset, frame)


def main():
    def extra(p):
        p.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")

    args = parse_args(__doc__, host_loop=True, extra=extra)
    raise_nofile()
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(LineProtocol, HOST, args.port, backlog=BACKLOG))
    if args.host:  # the frames' signal handlers are in place before the port goes out
        start_frames(loop, HostFrames(args.hz, args.work_ms, times_io=False))
    announce(server.sockets[0].getsockname()[1])
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


if __name__ == "__main__":
    main()
