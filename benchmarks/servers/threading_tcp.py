"""socketserver.ThreadingTCPServer peer: one thread per connection, blocking
recv() of up to 256 KiB, lines split and replies for one read sent with one
sendall()."""

import socket
import socketserver

from _common import BACKLOG, HOST, MAX_LINE, announce, parse_args, raise_nofile

IDLE_TIMEOUT = 600.0  # server-side sockets get a (generous) timeout too


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(IDLE_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while True:
            try:
                data = sock.recv(262144)
            except OSError:
                return
            if not data:
                return
            if buf:
                data = buf + data
            lines = data.split(b"\n")
            buf = lines.pop()
            if len(buf) > MAX_LINE:
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
                try:
                    sock.sendall(b"".join(out))
                except OSError:
                    return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = BACKLOG


def main():
    args = parse_args(__doc__)
    raise_nofile()
    server = Server((HOST, args.port), Handler)
    announce(server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
