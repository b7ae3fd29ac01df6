"""asyncio Protocol peer: data_received splits lines, replies for one chunk
are joined into one transport.write(); reading pauses while the transport's
write buffer is above its high-water mark."""
import asyncio

from _common import BACKLOG, HOST, MAX_LINE, announce, parse_args, raise_nofile


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
            else:
                append(b"error unknown command\n")
        if out:
            self.transport.write(b"".join(out))

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


def main():
    args = parse_args(__doc__)
    raise_nofile()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(LineProtocol, HOST, args.port, backlog=BACKLOG))
    announce(server.sockets[0].getsockname()[1])
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


if __name__ == "__main__":
    main()
