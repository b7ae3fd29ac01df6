# Public surface of reactor_mgmt. Everything a host or a client needs is re-exported here; the
# modules behind it are private (leading underscore) so they can be reorganised freely.
"""A management socket for programs that already have a main loop.

server = reactor_mgmt.Server(port=8123)

@server.command
def status():
    "One line about the process."
    return {"jobs": len(queue)}

while True:
    do_work()
    server.poll()        # never blocks; handlers run here, on this thread
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Callable, List, Mapping, Optional

    # Imported on first use at run time (see __getattr__ below); checkers see them here.
    from ._client import Client, ClientTimeout, ConnectionFailed

from ._commands import LEVELS, Command, command_options
from ._errors import (
    CommandError,
    ConfigError,
    PermissionDenied,
    ReactorMgmtError,
    RemoteError,
    UnknownCommand,
    UsageError,
)
from ._loop import TimerHandle
from ._replies import NO_REPLY, Pending, Stream, Wait
from ._server import Server
from ._session import Connection

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClientTimeout",
    "ConnectionFailed",
    "Command",
    "CommandError",
    "ConfigError",
    "Connection",
    "LEVELS",
    "NO_REPLY",
    "Pending",
    "PermissionDenied",
    "ReactorMgmtError",
    "RemoteError",
    "Server",
    "Stream",
    "TimerHandle",
    "UnknownCommand",
    "UsageError",
    "Wait",
    "command_options",
    "start",
]


def start(
    config: Optional[Mapping[str, Any]],
    on_command: Callable[[str, List[str], Connection], Any],
    on_error: Optional[Callable[[BaseException], Any]] = None,
) -> Server:
    """The one-call shortcut: listen on ``config["mgmt_host"]:config["mgmt_port"]``
    (127.0.0.1:8123 by default) and pass every command that is not a built-in to
    ``on_command(cmd, args, conn)``, which replies with ``conn.write(text)`` or by returning
    a value. ``on_error(exc)`` hears about handler exceptions. Call ``poll()`` on the result.
    """
    config = dict(config or {})
    server = Server(config.get("mgmt_host", "127.0.0.1"), int(config.get("mgmt_port", 8123)))
    server.fallback = on_command
    server.on_error = on_error
    return server


def __getattr__(name: str) -> Any:
    # The client is imported on first use, so hosts that only serve never load it.
    if name in ("Client", "ClientTimeout", "ConnectionFailed"):
        from . import _client

        return getattr(_client, name)
    raise AttributeError(f"module 'reactor_mgmt' has no attribute {name!r}")
