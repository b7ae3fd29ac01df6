"""The "floor": a minimal hand-written selectors loop.

Honest and minimal but reasonable: non-blocking sockets, one read of up to
256 KiB per readiness event, per line split into words and dispatch
ping/echo, replies for one read joined into one write, output buffered when
the socket is full (with EVENT_WRITE), reading paused above 1 MiB of
unsent output.
"""
import selectors
import socket

from _common import BACKLOG, HOST, MAX_LINE, announce, parse_args, raise_nofile

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
HIGH_WATER = 1 << 20


class Conn(object):
    __slots__ = ("sock", "inbuf", "outbuf", "mask")

    def __init__(self, sock):
        self.sock = sock
        self.inbuf = b""
        self.outbuf = bytearray()
        self.mask = READ


def main():
    args = parse_args(__doc__)
    raise_nofile()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, args.port))
    lsock.listen(BACKLOG)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, READ, None)
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

    while True:
        for key, mask in sel.select():
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


if __name__ == "__main__":
    main()
