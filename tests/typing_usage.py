# A user's program, written against the public API only, the way a host and a script use it.
# tests/test_typing.py type-checks it with `mypy --strict` and pyright, and runs it, so it is
# both a check that the package's types hold where users meet them and a check that this code
# is real. assert_type pins what the checkers infer: a decorator that lost a handler's type (as
# an untyped one would) turns these into Any, and they fail. Not a pytest module (no test_
# prefix): run it as `python tests/typing_usage.py`.
# pyright: reportUnnecessaryTypeIgnoreComment=true
from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import socket
import tempfile
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Union

import reactor_mgmt
from reactor_mgmt import (
    LEVELS,
    NO_REPLY,
    Client,
    ClientTimeout,
    Command,
    CommandError,
    ConfigError,
    Connection,
    ConnectionFailed,
    Pending,
    PermissionDenied,
    ReactorMgmtError,
    RemoteError,
    Server,
    Stream,
    TimerHandle,
    UnknownCommand,
    UsageError,
    Wait,
    command_options,
    start,
)

if TYPE_CHECKING:
    from typing_extensions import assert_type
else:

    def assert_type(value: object, _type: object) -> object:
        return value


class Priority(enum.Enum):
    low = 1
    high = 2


@dataclasses.dataclass
class Settings:
    rate: float = 1.5
    label: str = "main"


class Jobs:
    """An object whose public methods become commands through add_commands()."""

    def __init__(self) -> None:
        self.names: List[str] = ["backup"]

    def list(self) -> List[str]:
        """The jobs."""
        return list(self.names)

    @command_options(name="add", level="operator")
    def add_job(self, name: str, priority: Priority = Priority.low) -> int:
        """Adds a job."""
        self.names.append(name)
        return len(self.names)


def build_server() -> Tuple[Server, Dict[str, Any]]:
    server = Server("127.0.0.1", 0, max_connections=16, idle_timeout=60.0, pending_timeout=5.0)
    state: Dict[str, Any] = {"hits": 0}

    # ---- the two decorator forms keep the handler's type ----

    @server.command
    def add(a: int, b: int = 1) -> int:
        """Adds two integers."""
        return a + b

    @server.command(name="show state", level="operator", help="The host's state.")
    def show_state(*, verbose: bool = False) -> Dict[str, Any]:
        return dict(state, verbose=verbose)

    @server.command()
    def whoami(conn: Connection) -> Dict[str, Any]:
        return {
            "id": conn.id,
            "level": conn.level_name,
            "peer": conn.peer,
            "authenticated": conn.authenticated,
            "buffered": conn.buffered_output,
            "closed": conn.closed or conn.closing,
        }

    @server.command
    def shout(conn: Connection, *words: str) -> object:
        conn.write(" ".join(words).upper())
        return NO_REPLY

    @server.command
    def count(n: int = 3) -> Iterator[Union[int, Wait]]:
        for i in range(n):
            if i == 1:
                yield Wait(until=time.monotonic() + 0.01)
            yield i

    @server.command
    def ticker() -> Stream:
        return Stream(iter(["a", "b"]), until_input=False)

    @server.command
    def later(seconds: float = 0.0) -> Pending:
        pending = Pending(timeout=5.0)
        pending.on_cancel(lambda: state.__setitem__("cancelled", True))
        server.call_later(seconds, pending.resolve, "done")
        return pending

    @server.command
    def refuse(code: str = "busy") -> None:
        raise CommandError("not now", code=code)

    @server.command
    def pick(priority: Priority, label: Optional[str] = None) -> str:
        return f"{priority.name}:{label}"

    assert_type(add(2, 3), int)
    assert_type(show_state(verbose=True), Dict[str, Any])
    assert_type(count(2), Iterator[Union[int, Wait]])
    assert_type(later(), Pending)
    assert_type(pick(Priority.high), str)

    def wrong_calls() -> None:  # checked, never run
        # The arguments are checked too: each line below is an error that its `type: ignore`
        # silences, and `mypy --strict` (warn_unused_ignores) fails if it were not an error.
        add("2", 3)  # type: ignore[arg-type]
        show_state(verbose="yes")  # type: ignore[arg-type]
        whoami()  # type: ignore[call-arg]
        later(seconds="soon")  # type: ignore[arg-type]
        server.call_later(1.0, pick, "high")  # type: ignore[arg-type]

    state["wrong_calls"] = wrong_calls

    # ---- the other ways to register ----

    command = server.add_command("ping2", lambda: "pong", help="Answers pong.", level="user")
    assert_type(command, Command)
    summary: str = command.summary + command.usage + command.help_text() + command.name
    state["summary"] = summary
    server.remove_command("ping2")
    added = server.add_commands(Jobs(), prefix="jobs", level="user")
    assert_type(added, List[Command])
    assert_type(Jobs().add_job("x"), int)  # command_options keeps the method's type

    def on_error(exc: BaseException) -> None:
        state["last_error"] = repr(exc)

    server.on_error = on_error
    return server, state


def use_the_client(port: int) -> None:
    with Client(f"127.0.0.1:{port}", timeout=5.0) as client:
        assert_type(client, Client)
        assert client.connected and client.address
        assert client.call("add", 2, b=3) == 5
        assert client.call("pick", "high") == "high:None"
        items: List[Any] = list(client.stream("count", 3))
        assert items == [0, 1, 2], items
        assert client.call("later") == "done"
        for kind, value in client.exchange({"cmd": "ticker"}):
            assert isinstance(kind, str), value
        try:
            client.call("refuse")
        except RemoteError as exc:
            assert (exc.code, exc.message) == ("busy", "not now")
        try:
            client.call("no such command")
        except RemoteError as exc:
            assert exc.code == "unknown_command"
    try:
        Client(f"127.0.0.1:{free_port()}", timeout=1.0)
    except ConnectionFailed:
        pass
    except ClientTimeout:
        pass


def use_the_host_loop(server: Server) -> None:
    """The calls a host's own loop makes."""
    assert server.port is not None and server.addresses
    fd: int = server.fileno()
    deadline: Optional[float] = server.next_deadline()
    handled: int = server.poll(0.0, budget=0.005)
    busy: bool = server.busy  # the poll ran what was due (build_server's Pending resolves at once)
    assert fd >= 0 and (deadline is None or deadline > 0) and not busy and handled >= 0
    server.call_soon_threadsafe(lambda: None)
    server.ensure_waker()
    server.poll(0)
    assert server.connections == [] and not server.closed
    fired: List[str] = []
    timer = server.call_later(0.0, fired.append, "cancelled, so never")
    assert_type(timer, TimerHandle)
    timer.cancel()
    server.poll(0)
    assert fired == []
    assert server.auth_required is False and server.check_token("anything")


def use_the_listeners(server: Server, directory: str) -> None:
    path = server.listen_unix(os.path.join(directory, "mgmt.sock"), mode=0o600, level="admin")
    assert_type(path, str)
    extra = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    extra.bind(("127.0.0.1", 0))
    extra.listen()
    adopted = server.listen_socket(extra, level="user")
    more: List[Any] = server.listen_tcp("127.0.0.1", 0, level="user")
    assert adopted and more


def use_the_toolkit(server: Server) -> None:
    server.add_toolkit("threads", "config")
    settings = Settings()
    server.setting("rate", settings, "rate", type=float)
    declared: List[Any] = server.settings_from(settings, prefix="app.")
    assert declared


async def use_asyncio(server: Server) -> None:
    handle = server.attach_asyncio(budget=0.01)
    await asyncio.sleep(0)
    handle.kick()
    handle.detach()


def use_the_thread(server: Server) -> None:
    handle = server.start_thread(name="typing-usage")
    try:
        port = server.port
        assert port is not None
        use_the_client(port)
    finally:
        stopped: bool = handle.stop(timeout=5.0)
        assert stopped


def use_start() -> None:
    def on_command(cmd: str, args: List[str], conn: Connection) -> str:
        return f"{cmd} {' '.join(args)} from #{conn.id}"

    server = start({"mgmt_host": "127.0.0.1", "mgmt_port": 0}, on_command, on_error=print)
    assert_type(server, Server)
    with server:
        server.poll(0)


def use_the_errors() -> None:
    errors: List[ReactorMgmtError] = [
        CommandError("message", code="code"),
        UsageError("usage"),
        UnknownCommand("unknown"),
        PermissionDenied("denied"),
        ConfigError("config"),
        RemoteError("code", "message"),
    ]
    codes = [error.code for error in errors if isinstance(error, CommandError)]
    assert codes == ["code", "usage", "unknown_command", "denied"]
    try:
        Server("127.0.0.1", 0, level="no such level")
    except ConfigError as exc:
        assert isinstance(exc, ValueError)


def main() -> None:
    version: str = reactor_mgmt.__version__
    levels: List[str] = list(LEVELS)
    assert version and levels == ["user", "operator", "admin"]
    server, state = build_server()
    with tempfile.TemporaryDirectory() as directory:
        try:
            use_the_host_loop(server)
            use_the_listeners(server, directory)
            use_the_toolkit(server)
            asyncio.run(use_asyncio(server))
            use_the_thread(server)
        finally:
            server.close(grace=0.5)
    assert server.closed and state["hits"] == 0
    use_start()
    use_the_errors()
    print("typing_usage: ok")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    main()
