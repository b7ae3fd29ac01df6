"""Twisted peer (only when Twisted is importable): LineOnlyReceiver with
delimiter b"\\n" on the default reactor; replies via sendLine()."""

from _common import BACKLOG, HOST, announce, parse_args, raise_nofile
from twisted.internet import protocol  # noqa: E402
from twisted.protocols.basic import LineOnlyReceiver  # noqa: E402


class LineServer(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 65536

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def lineReceived(self, line):
        words = line.split()
        if not words:
            return
        cmd = words[0]
        if cmd == b"ping":
            self.sendLine(b"pong")
        elif cmd == b"echo":
            self.sendLine(b" ".join(words[1:]))
        else:
            self.sendLine(b"error unknown command")


def factory():
    return protocol.Factory.forProtocol(LineServer)


def main():
    args = parse_args(__doc__)
    raise_nofile()
    from twisted.internet import reactor

    port = reactor.listenTCP(args.port, factory(), backlog=BACKLOG, interface=HOST)
    announce(port.getHost().port)
    reactor.run()


if __name__ == "__main__":
    main()
