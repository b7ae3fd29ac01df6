"""A Node.js management socket, ported line for line with ``reactor_mgmt.start()``.

Node services (statsd's admin interface is the best-known one) often grow a management socket
shaped like this::

    const config = { mgmt_host: "127.0.0.1", mgmt_port: 8123 };
    const settings = {};
    const started = Date.now();

    mgmt.start(config, (cmd, args, conn) => {
      switch (cmd) {
        case "status": conn.write(`uptime: ${(Date.now() - started) / 1000}\\n`); ...; break;
        case "set":    settings[args[0]] = args.slice(1).join(" "); conn.write("OK\\n"); break;
        case "get":    ...; break;
        case "incr":   settings[args[0]] = String(parseInt(...) + ...); ...; break;
        default:       conn.write(`ERROR unknown command: ${cmd}\\n`);
      }
    }, (err) => console.error("mgmt error:", err));

``reactor_mgmt.start(config, on_command, on_error)`` takes the same three things and returns a
Server; every command that is not a built-in (``help``, ``ping``, ``quit``, ``stats``...)
reaches ``on_command``, which replies with ``conn.write(text)``. The one departure: where Node
wrote its error line itself, the port raises ``CommandError``, so the server frames the error
for each kind of client (``ERR ...`` for nc, exit status 1 for the CLI, an error object for
JSON). The one line Node did not
need is the loop at the bottom: Python has no implicit event loop, so the host calls
``server.poll()`` itself. An exception in ``on_command`` reaches ``on_error`` and the client
gets ``ERR internal error (...)``; the connection and the server carry on.

Try it::

    python -m reactor_mgmt.examples.node_port
    printf 'set colour blue\\nget colour\\nstatus\\n' | nc -N 127.0.0.1 8123
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from typing import Dict, List, Optional

import reactor_mgmt

log = logging.getLogger("node_port")

settings: Dict[str, str] = {}
started = time.monotonic()


def on_command(cmd: str, args: List[str], conn: reactor_mgmt.Connection) -> None:
    if cmd == "status":
        conn.write(f"uptime: {time.monotonic() - started:.1f}")
        conn.write(f"settings: {len(settings)}")
        conn.write(f"connections: {len(conn.server.connections)}")
    elif cmd == "set":
        if len(args) < 2:
            # Node wrote "ERR ..." itself; raising lets the server frame the error for every
            # client: an ERR line for nc, exit status 1 for `python -m reactor_mgmt`.
            raise reactor_mgmt.UsageError("usage: set KEY VALUE...")
        settings[args[0]] = " ".join(args[1:])
        conn.write("OK")
    elif cmd == "get":
        if not args:
            for key in sorted(settings):
                conn.write(f"{key}={settings[key]}")
            conn.write("END")  # a listing's end marker, as the Node original has
        elif args[0] in settings:
            conn.write(settings[args[0]])
        else:
            raise reactor_mgmt.CommandError(f"no such key: {args[0]}")
    elif cmd == "incr":
        # Like parseInt in the original, a value that is not a number throws: on_error hears
        # about it and the client gets an ERR line.
        key = args[0]
        settings[key] = str(int(settings.get(key, "0")) + int(args[1] if len(args) > 1 else "1"))
        conn.write(settings[key])
    else:
        raise reactor_mgmt.UnknownCommand(f"unknown command: {cmd} (try 'help')")


def on_error(err: BaseException) -> None:
    log.error("mgmt error: %r", err)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reactor_mgmt.examples.node_port",
        description="A Node.js-style management socket via reactor_mgmt.start().",
    )
    parser.add_argument("--port", type=int, default=8123, help="TCP port; 0 picks one (default 8123)")
    parser.add_argument("--address-file", help="write the address here once listening")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    # Before the address file exists: whoever reads it may send SIGTERM at once.
    stopping: List[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stopping.append(number))

    config = {"mgmt_host": "127.0.0.1", "mgmt_port": args.port}
    server = reactor_mgmt.start(config, on_command, on_error)

    if args.address_file:  # so a script that asked for port 0 can find us
        temporary = args.address_file + ".tmp"
        with open(temporary, "w") as handle:
            handle.write(f"{config['mgmt_host']}:{server.port}\n")
        os.replace(temporary, args.address_file)

    try:
        while not stopping:
            server.poll(timeout=0.1)  # what Node's event loop did for us
    finally:
        server.close()
        if args.address_file and os.path.exists(args.address_file):
            os.remove(args.address_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
