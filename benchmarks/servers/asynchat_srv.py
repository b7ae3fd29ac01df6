"""asynchat/asyncore peer (only where the stdlib still has them: <= 3.11).

async_chat with terminator b"\\n"; each reply is push()ed. The loop uses
asyncore.loop(use_poll=True) because select() cannot take fds >= 1024."""

import socket
import warnings

from _common import BACKLOG, HOST, announce, parse_args, raise_nofile

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asynchat  # noqa: E402
    import asyncore  # noqa: E402


class Handler(asynchat.async_chat):
    def __init__(self, sock, map):
        asynchat.async_chat.__init__(self, sock, map=map)
        self.set_terminator(b"\n")
        self.ibuffer = []

    def collect_incoming_data(self, data):
        self.ibuffer.append(data)

    def found_terminator(self):
        line = b"".join(self.ibuffer)
        self.ibuffer = []
        words = line.split()
        if not words:
            return
        cmd = words[0]
        if cmd == b"ping":
            self.push(b"pong\n")
        elif cmd == b"echo":
            self.push(b" ".join(words[1:]) + b"\n")
        else:
            self.push(b"error unknown command\n")

    def handle_error(self):
        self.close()


class Listener(asyncore.dispatcher):
    def __init__(self, port, map):
        asyncore.dispatcher.__init__(self, map=map)
        self.conn_map = map
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind((HOST, port))
        self.listen(BACKLOG)

    def handle_accept(self):
        # accept a batch per readiness event (asyncore's default takes one)
        for _ in range(64):
            pair = self.accept()
            if pair is None:
                break
            self.handle_accepted(*pair)

    def handle_accepted(self, sock, addr):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Handler(sock, self.conn_map)


def main():
    args = parse_args(__doc__)
    raise_nofile()
    cmap = {}
    lst = Listener(args.port, cmap)
    announce(lst.socket.getsockname()[1])
    asyncore.loop(timeout=30.0, use_poll=True, map=cmap)


if __name__ == "__main__":
    main()
