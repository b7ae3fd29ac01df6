"""asyncio streams peer: the documented pattern, one handler coroutine per
connection: readline(), write() the reply, await drain()."""

import asyncio

from _common import BACKLOG, HOST, announce, parse_args, raise_nofile


async def handle(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            words = line.split()
            if not words:
                continue
            cmd = words[0]
            if cmd == b"ping":
                writer.write(b"pong\n")
            elif cmd == b"echo":
                writer.write(b" ".join(words[1:]) + b"\n")
            else:
                writer.write(b"error unknown command\n")
            await writer.drain()
    except (ConnectionError, ValueError, asyncio.IncompleteReadError):
        pass  # ValueError: line longer than the stream limit
    finally:
        writer.close()


def main():
    args = parse_args(__doc__)
    raise_nofile()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(asyncio.start_server(handle, HOST, args.port, backlog=BACKLOG))
    announce(server.sockets[0].getsockname()[1])
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


if __name__ == "__main__":
    main()
