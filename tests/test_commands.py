# The command layer: registration, arguments from signatures, help, the JSON form of requests,
# and stats. Everything a client sees is checked through a real socket (RawClient); Signature
# and Registry also get a few direct unit tests where the socket would add nothing.
from __future__ import annotations

import enum
import json
import subprocess
import sys
import time
from typing import Any, Dict, List, Literal, Optional

import pytest

import reactor_mgmt
from conftest import TIMEOUT, RawClient, require_tool
from reactor_mgmt import CommandError, ConfigError, Connection, command_options
from reactor_mgmt._commands import Command, Registry


class Color(enum.Enum):
    red = 1
    green = 2


class Grade(enum.Enum):  # names that differ only in case
    A = 1
    a = 2


class Sort(enum.Enum):  # a value spelled like another member's name
    newest = "date"
    date = "created"
    oldest = "newest"


def one(client: RawClient, line: str) -> str:
    (reply,) = client.request(line)
    return reply


def read_help(client: RawClient, line: str = "help") -> str:
    """Sends a help request and takes its whole index, up to and including the last line."""
    end = b"Type 'help COMMAND' for details.\n"
    client.send(line + "\n")
    client.wait_for(lambda buffer: end in buffer)
    text, _, client.buffer = client.buffer.partition(end)
    return (text + end).decode()


def ask_json(client: RawClient, request: Any) -> Dict[str, Any]:
    text = request if isinstance(request, str) else json.dumps(request)
    (line,) = client.request(text)
    return json.loads(line)


@pytest.fixture
def calls() -> List[tuple]:
    return []


@pytest.fixture
def kick_server(server, calls):
    @server.command
    def kick(player: str, reason: str = "", *, force: bool = False) -> str:
        """Disconnects a player.

        Without --force, players in a match are spared.
        """
        calls.append((player, reason, force))
        return f"kicked {player} ({reason or 'no reason'}){' by force' if force else ''}"

    return server


# ---- registration ----


def test_decorator_without_arguments_uses_the_function_name(server):
    @server.command
    def status() -> str:
        return "fine"

    assert status() == "fine"  # the decorator hands the function back unchanged
    client = RawClient(server)
    assert one(client, "status") == "fine"


def test_decorator_with_options(make_server):
    srv = make_server("127.0.0.1", level="operator")

    @srv.command(name="reload config", level="admin")
    def reload() -> str:
        return "reloaded"

    @srv.command(hidden=True)
    def secret() -> str:
        return "shh"

    @srv.command()
    def plain() -> str:
        return "plain"

    @srv.command(help="Help given at registration.")
    def documented() -> str:
        return "d"

    client = RawClient(srv)
    assert one(client, "reload config") == "ERR permission denied: 'reload config' needs admin"
    assert one(client, "secret") == "shh"  # hidden is not disabled
    assert one(client, "plain") == "plain"
    listing = read_help(client)
    assert "secret" not in listing and "reload" not in listing
    assert "documented" in listing and "Help given at registration." in listing


def test_underscores_in_function_names_become_words(server):
    @server.command
    def show_uptime() -> str:
        return "up"

    client = RawClient(server)
    assert one(client, "show uptime") == "up"
    assert one(client, "show_uptime").startswith("ERR unknown command 'show_uptime'")


def test_bound_methods_register_without_self(server):
    class Game:
        def __init__(self) -> None:
            self.players = ["ann", "bob"]

        def count(self, extra: int = 0) -> int:
            """Counts players."""
            return len(self.players) + extra

    game = Game()
    server.command(game.count)
    server.add_command("players", lambda: game.players)
    client = RawClient(server)
    assert one(client, "count") == "2"
    assert one(client, "count 3") == "5"
    assert client.request("players", 2) == ["ann", "bob"]
    assert one(client, "help count").startswith("usage: count [EXTRA]")


def test_add_commands_registers_public_methods(make_server):
    srv = make_server("127.0.0.1", level="admin")
    touched = []

    class Jobs:
        Nested = Color  # a class attribute that is callable but not a command
        limit = 5

        @property
        def expensive(self) -> int:
            touched.append("property")
            return 1

        def list_all(self) -> List[str]:
            """Lists jobs."""
            return ["a", "b"]

        def cancel(self, job_id: int, *, force: bool = False) -> str:
            return f"cancel {job_id} force={force}"

        @command_options(name="wipe everything", level="admin", hidden=True)
        def wipe(self) -> str:
            return "wiped"

        @command_options(help="Resets counters.")
        def reset(self) -> str:
            """Docstring that the option overrides."""
            return "reset"

        def _private(self) -> str:
            return "no"

        @staticmethod
        def version() -> str:
            return "1.0"

    added = srv.add_commands(Jobs())
    names = sorted(command.name for command in added)
    assert names == ["cancel", "list all", "reset", "version", "wipe everything"]
    assert touched == []
    client = RawClient(srv)
    assert client.request("list all", 2) == ["a", "b"]
    assert one(client, "cancel 3 --force") == "cancel 3 force=True"
    assert one(client, "wipe everything") == "wiped"
    assert one(client, "version") == "1.0"
    assert one(client, "_private").startswith("ERR unknown command")
    assert one(client, "limit").startswith("ERR unknown command")
    assert one(client, "nested").startswith("ERR unknown command")
    assert client.request("help reset", 3) == ["usage: reset", "", "Resets counters."]
    listing = read_help(client)
    assert "wipe" not in listing and "list all" in listing


def test_add_commands_prefix_and_level(server):
    class Cache:
        def clear(self) -> str:
            return "cleared"

        @command_options(level="user")
        def size(self) -> int:
            return 0

    server.add_commands(Cache(), prefix="cache", level="admin")
    client = RawClient(server)  # operator
    assert one(client, "cache size") == "0"
    assert one(client, "cache clear") == "ERR permission denied: 'cache clear' needs admin"


def test_remove_command(server):
    server.add_command("show a", lambda: "a")
    server.add_command("show b", lambda: "b")
    server.remove_command("show a")
    client = RawClient(server)
    assert one(client, "show b") == "b"
    assert one(client, "show a") == "ERR unknown command 'show a'; did you mean 'show b'?"
    server.remove_command("show b")
    assert one(client, "show b") == "ERR unknown command 'show' (try 'help')"


def test_a_name_registered_twice_is_refused_unless_replace(server):
    class Players:
        def show(self) -> str:
            return "players"

    class Teams:
        def show(self) -> str:
            return "teams"

    server.add_commands(Players())
    with pytest.raises(
        ConfigError,
        match=r"command 'show' is already registered \(to '.*Players.show'\); "
        r"pass replace=True",
    ):
        server.add_commands(Teams())
    with pytest.raises(ConfigError):
        server.add_command("  show ", lambda: "spaced")  # the same name once normalised
    client = RawClient(server)
    assert one(client, "show") == "players"  # the first registration stands

    server.add_commands(Teams(), replace=True)
    assert one(client, "show") == "teams"
    server.command(name="show", replace=True)(lambda: "lambda")
    assert one(client, "show") == "lambda"
    server.remove_command("show")
    server.add_command("show", lambda: "again")  # a removed name is free
    assert one(client, "show") == "again"


def test_a_builtin_is_replaced_without_asking_and_is_then_the_hosts(server):
    @server.command
    def stats() -> str:
        return "mine"

    client = RawClient(server)
    assert one(client, "stats") == "mine"
    with pytest.raises(ConfigError, match="'stats' is already registered"):
        server.add_command("stats", lambda: "again")


def test_bad_registrations_fail_at_registration(server):
    with pytest.raises(ConfigError):
        server.add_command("   ", lambda: None)
    with pytest.raises(ConfigError):
        server.add_command("x", lambda: None, level="root")

    def takes_local(color: LocalColor) -> str:  # noqa: F821 - deliberately unresolvable
        return "never"

    with pytest.raises(ConfigError, match="cannot resolve the annotation 'LocalColor'"):
        server.add_command("paint", takes_local)


def test_a_container_parameter_is_refused_at_registration_with_what_to_use(server, client):
    """A parameter takes one word: List[int] used to raise on every call, and list split the
    word into letters. Registration says what takes several values."""

    def total(ids: List[int]) -> str:
        return str(sum(ids))

    def letters(names: list) -> str:
        return repr(names)

    def maybe(ids: Optional[List[int]] = None) -> str:
        return repr(ids)

    with pytest.raises(ConfigError, match=r"parameter 'ids'.*use \*ids: int"):
        server.add_command("total", total)
    with pytest.raises(ConfigError, match=r"parameter 'names'.*use \*names$"):
        server.add_command("letters", letters)
    with pytest.raises(ConfigError, match=r"use \*ids: int"):
        server.add_command("maybe", maybe)

    @server.command(name="total")
    def total_of(*ids: int) -> str:  # what the message suggests
        return str(sum(ids))

    assert client.request("total 1 2 3") == ["6"]


# ---- multi-word commands ----


@pytest.fixture
def grouped(make_server):
    srv = make_server("127.0.0.1", level="admin")
    state: Dict[str, Any] = {"rate": 10.0, "level": "info"}

    @srv.command(name="show stats")
    def show_stats() -> Dict[str, Any]:
        """Counters."""
        return {"rate": state["rate"]}

    @srv.command(name="show config")
    def show_config() -> Dict[str, Any]:
        """The settings."""
        return dict(state)

    @srv.command(name="set rate")
    def set_rate(hz: float) -> str:
        """Changes the rate."""
        state["rate"] = hz
        return f"rate {hz:g}"

    @srv.command(name="log level")
    def log_level(level: Literal["debug", "info", "warning"]) -> str:
        """Sets the log level."""
        state["level"] = level
        return f"level {level}"

    @srv.command(name="cache purge all")
    def purge() -> str:
        """Three words."""
        return "purged"

    @srv.command(name="cache")
    def cache(*words: str) -> str:
        """The cache, or a key in it."""
        return "cache " + " ".join(words)

    return srv


def test_multi_word_commands(grouped):
    client = RawClient(grouped)
    assert one(client, "set rate 30") == "rate 30"
    assert one(client, "show stats") == "rate: 30"
    assert one(client, "log level debug") == "level debug"
    assert one(client, "log   level   warning") == "level warning"
    assert one(client, "cache purge all") == "purged"
    assert one(client, "cache purge") == "cache purge"  # the single-word command takes the rest
    assert one(client, "cache") == "cache "


def test_multi_word_errors(grouped):
    client = RawClient(grouped)
    assert one(client, "show") == "ERR incomplete command 'show'; try 'help show'"
    assert one(client, "show statz") == "ERR unknown command 'show statz'; did you mean 'show stats'?"
    assert one(client, "set rate") == "ERR usage: set rate HZ (missing HZ)"
    assert one(client, "log level loud") == (
        "ERR usage: log level LEVEL (bad value for LEVEL: 'loud': expected one of: debug, info, warning)"
    )


def test_help_for_a_group_lists_its_subcommands(grouped):
    client = RawClient(grouped)
    assert client.request("help show", 3) == [
        "Subcommands of 'show':",
        "  show config  The settings.",
        "  show stats   Counters.",
    ]
    assert client.request("help log level", 4) == [
        "usage: log level LEVEL",
        "  LEVEL: one of debug, info, warning",
        "",
        "Sets the log level.",
    ]


def test_help_of_a_three_word_command(grouped):
    client = RawClient(grouped)
    assert client.request("help cache purge all", 3) == ["usage: cache purge all", "", "Three words."]
    assert one(client, "help set rat") == "ERR unknown command 'set rat'; did you mean 'set rate'?"


# ---- arguments from the signature ----


def test_kick_from_the_brief(kick_server, calls):
    client = RawClient(kick_server)
    assert one(client, 'kick bob "too loud" --force') == "kicked bob (too loud) by force"
    assert one(client, "kick bob") == "kicked bob (no reason)"
    assert one(client, "kick --force bob 'spam'") == "kicked bob (spam) by force"
    assert one(client, "kick bob --force=no") == "kicked bob (no reason)"
    assert one(client, "kick bob --force=yes") == "kicked bob (no reason) by force"
    assert one(client, "kick bob --no-force") == "kicked bob (no reason)"
    assert one(client, "kick -- --force") == "kicked --force (no reason)"
    assert calls == [
        ("bob", "too loud", True),
        ("bob", "", False),
        ("bob", "spam", True),
        ("bob", "", False),
        ("bob", "", True),
        ("bob", "", False),
        ("--force", "", False),
    ]


@pytest.mark.parametrize(
    "line, why",
    [
        ("kick", "missing PLAYER"),
        ("kick a b c", "too many arguments (expected at most 2)"),
        ("kick bob --forse", "unknown option --forse"),
        ("kick bob --force=maybe", "bad value for FORCE: 'maybe': expected true/false, yes/no, on/off or 1/0"),
        # --no-force took its value as nothing: =no and =banana both meant false
        ("kick bob --no-force=no", "option --no-force takes no value"),
        ("kick bob --no-force=banana", "option --no-force takes no value"),
        ("kick bob --no-force=", "option --no-force takes no value"),
        ('kick "bob', None),
    ],
)
def test_kick_usage_errors_never_run_the_handler(kick_server, calls, line, why):
    client = RawClient(kick_server)
    reply = one(client, line)
    if why is None:
        assert reply == "ERR cannot parse request: No closing quotation"
    else:
        assert reply == f"ERR usage: kick PLAYER [REASON] [--force] ({why})"
    assert calls == []
    assert one(client, "ping") == "pong"


@pytest.fixture
def typed(make_server):
    srv = make_server("127.0.0.1", level="admin")
    seen: List[Any] = []
    srv.seen = seen  # type: ignore[attr-defined]

    @srv.command
    def types(count: int, ratio: float, enabled: bool, name: str) -> str:
        seen.append((count, ratio, enabled, name))
        return "ok"

    @srv.command
    def paint(color: Color, speed: Literal["fast", "slow"] = "slow", coats: Optional[int] = None) -> str:
        seen.append((color, speed, coats))
        return "ok"

    @srv.command
    def total(*numbers: float) -> float:
        seen.append(numbers)
        return sum(numbers)

    @srv.command
    def tag(target: str, *labels: str, sep: str = ",") -> str:
        return target + ":" + sep.join(labels)

    @srv.command
    def resize(*, width: int, height: int = 10, unit: Literal["px", "em"] = "px") -> str:
        return f"{width}x{height}{unit}"

    @srv.command
    def whoami(conn: Connection, prefix: str = "level") -> str:
        return f"{prefix} {conn.level_name}"

    return srv


def test_types_are_converted(typed):
    client = RawClient(typed)
    assert one(client, "types 3 0.5 yes bob") == "ok"
    assert one(client, "types -4 1e3 off 'two words'") == "ok"
    assert typed.seen == [(3, 0.5, True, "bob"), (-4, 1000.0, False, "two words")]


@pytest.mark.parametrize(
    "line, why",
    [
        ("types x 1 yes a", "bad value for COUNT: 'x': expected an integer"),
        ("types 1.5 1 yes a", "bad value for COUNT: '1.5': expected an integer"),
        ("types 1 fast yes a", "bad value for RATIO: 'fast': expected a number"),
        ("types 1 1 maybe a", "bad value for ENABLED: 'maybe': expected true/false, yes/no, on/off or 1/0"),
        ("types 1 1 yes", "missing NAME"),
    ],
)
def test_bad_typed_values(typed, line, why):
    client = RawClient(typed)
    assert one(client, line) == f"ERR usage: types COUNT RATIO ENABLED NAME ({why})"
    assert typed.seen == []


def test_enum_literal_optional(typed):
    client = RawClient(typed)
    assert one(client, "paint red") == "ok"
    assert one(client, "paint GREEN fast 3") == "ok"
    assert one(client, "paint 2 slow") == "ok"  # an enum member by value as well as by name
    assert typed.seen == [(Color.red, "slow", None), (Color.green, "fast", 3), (Color.green, "slow", None)]
    usage = "usage: paint COLOR [SPEED] [COATS]"
    assert one(client, "paint blue") == f"ERR {usage} (bad value for COLOR: 'blue': expected one of: red, green)"
    assert one(client, "paint red medium") == (
        f"ERR {usage} (bad value for SPEED: 'medium': expected one of: fast, slow)"
    )
    assert client.request("help paint", 3) == [usage, "  COLOR: one of red, green", "  SPEED: one of fast, slow"]


def test_help_gives_the_choices_of_a_choice_typed_star_args():
    # help walked the positional parameters and the options only: `*modes: Color` had no line.
    def pick(first: Literal["a", "b"], *modes: Color, speed: Literal["fast", "slow"] = "slow") -> None:
        """Picks."""

    assert Command("pick", pick, connection_type=Connection).help_text().splitlines() == [
        "usage: pick FIRST [MODES...] [--speed SPEED]",
        "  FIRST: one of a, b",
        "  MODES: one of red, green",
        "  SPEED: one of fast, slow",
        "",
        "Picks.",
    ]


def test_var_positional(typed):
    client = RawClient(typed)
    assert one(client, "total") == "0"
    assert one(client, "total 1 2.5 3") == "6.5"
    assert one(client, "total 1 x").startswith("ERR usage: total [NUMBERS...] (bad value for NUMBERS: 'x'")
    assert one(client, "tag box a b c") == "box:a,b,c"
    assert one(client, "tag box a --sep / b") == "box:a/b"
    assert one(client, "tag box a --sep=+ b") == "box:a+b"


def test_keyword_only_options(typed):
    client = RawClient(typed)
    assert one(client, "resize --width 5") == "5x10px"
    assert one(client, "resize --height=2 --width 3 --unit EM") == "3x2em"
    usage = "usage: resize --width WIDTH [--height HEIGHT] [--unit UNIT]"
    assert one(client, "resize") == f"ERR {usage} (missing --width)"
    assert one(client, "resize --width") == f"ERR {usage} (option --width needs a value)"
    assert one(client, "resize --width 1 2") == f"ERR {usage} (too many arguments (expected at most 0))"
    assert one(client, "resize --width 1 --depth 2") == f"ERR {usage} (unknown option --depth)"


def test_unknown_flag_on_a_command_without_options(server):
    seen = []

    @server.command
    def greet(name: str = "world") -> str:
        seen.append(name)
        return "hi " + name

    client = RawClient(server)
    assert one(client, "greet --loud") == "ERR usage: greet [NAME] (unknown option --loud)"
    assert one(client, "greet -- --loud") == "hi --loud"
    assert seen == ["--loud"]


def test_option_like_words_reach_star_args(make_server):
    # A command that takes free-form *args (and no options) gets "--" words as they are: the
    # fallback of start(), `watch`, and `auth`, whose token may well begin with "--".
    srv = make_server("127.0.0.1", token="--Xy_9")
    client = RawClient(srv)
    assert one(client, "auth --wrong") == "ERR authentication failed"
    assert one(client, "auth --Xy_9") == "OK"
    assert one(client, "auth") == "ERR usage: auth TOKEN (missing TOKEN)"
    assert one(client, "echo --a -b") == "--a -b"


def test_commands_without_parameters_reject_arguments(server):
    client = RawClient(server)
    assert one(client, "ping now") == "ERR usage: ping (takes no arguments)"


def test_connection_parameter_is_injected_not_parsed(typed):
    client = RawClient(typed)
    assert one(client, "whoami") == "level admin"
    assert one(client, "whoami my") == "my admin"
    assert one(client, "help whoami") == "usage: whoami [PREFIX]"


def test_signature_usage_strings():
    def kick(player: str, reason: str = "", *, force: bool = False) -> None:
        pass

    def many(a: int, *rest: str, mode: Literal["x", "y"], dry_run: bool = False, conn: Connection = None) -> None:
        pass

    assert Command("kick", kick, connection_type=Connection).usage == "kick PLAYER [REASON] [--force]"
    command = Command("do many", many, connection_type=Connection)
    assert command.usage == "do many A [REST...] --mode MODE [--dry-run]"
    assert command.signature.inject == "conn"
    assert command.signature.bind_text(["1", "x", "--dry-run", "--mode=y"]) == (
        [1, "x"],
        {"dry_run": True, "mode": "y"},
    )


def test_handler_exceptions_are_internal_errors(server, caplog):
    @server.command
    def boom() -> None:
        raise ZeroDivisionError("oops")

    client = RawClient(server)
    assert one(client, "boom") == "ERR internal error (ZeroDivisionError)"
    assert one(client, "ping") == "pong"
    assert "ZeroDivisionError" in caplog.text


# ---- help ----


def test_help_index(kick_server):
    client = RawClient(kick_server)
    text = read_help(client)
    lines = text.splitlines()
    assert lines[0].startswith("Commands: ")
    assert set(lines[0].split()[1:]) >= {"help", "kick", "ping", "stats", "watch", "quit"}
    kick_line = next(line for line in lines if line.strip().startswith("kick "))
    assert kick_line.split() == "kick PLAYER [REASON] [--force] Disconnects a player.".split()
    assert "Without --force" not in text  # only the first line of the docstring
    assert "auth" not in lines[0].split()  # no token: auth is hidden


def test_help_command_shows_usage_then_the_whole_docstring(kick_server):
    client = RawClient(kick_server)
    assert client.request("help kick", 5) == [
        "usage: kick PLAYER [REASON] [--force]",
        "",
        "Disconnects a player.",
        "",
        "Without --force, players in a match are spared.",
    ]
    assert one(client, "ping") == "pong"


def test_unknown_command_suggests_with_difflib(server):
    server.add_command("status", lambda: "ok")
    client = RawClient(server)
    assert one(client, "stauts") == "ERR unknown command 'stauts'; did you mean 'status'?"
    assert one(client, "help stauts") == "ERR unknown command 'stauts'; did you mean 'status'?"
    assert one(client, "xyzzy") == "ERR unknown command 'xyzzy' (try 'help')"
    assert ask_json(client, {"cmd": "stauts", "id": 1})["error"] == {
        "code": "unknown_command",
        "message": "unknown command 'stauts'; did you mean 'status'?",
    }


def test_help_and_suggestions_follow_the_level(make_server):
    srv = make_server("127.0.0.1", level="user")
    srv.add_command("status", lambda: "ok", help="Shows status.")
    srv.add_command("shutdown", lambda: "bye", level="admin", help="Stops everything.")
    srv.add_command("job cancel", lambda: "x", level="operator", help="Cancels.")
    client = RawClient(srv)
    listing = read_help(client)
    assert "status" in listing
    assert "shutdown" not in listing and "job" not in listing
    # No hint that a command the connection cannot run exists.
    assert one(client, "shutdwn") == "ERR unknown command 'shutdwn' (try 'help')"
    assert one(client, "help shutdown") == "ERR no help for 'shutdown' at this connection's level"
    assert one(client, "help job") == "ERR unknown command 'job' (try 'help')"
    assert one(client, "shutdown") == "ERR permission denied: 'shutdown' needs admin"


def test_help_before_authentication(make_server):
    srv = make_server("127.0.0.1", token="s3cret")
    srv.add_command("status", lambda: "ok", help="Shows status.")
    client = RawClient(srv)
    before = read_help(client)
    assert set(before.splitlines()[0].split()[1:]) == {"auth", "help", "ping", "quit"}
    assert one(client, "help status") == "ERR authentication required (send 'auth TOKEN')"
    assert one(client, "statsu") == "ERR unknown command 'statsu' (try 'help')"
    assert one(client, "status") == "ERR authentication required (send 'auth TOKEN')"
    assert one(client, "auth s3cret") == "OK"
    after = read_help(client)
    assert "status" in after.splitlines()[0].split()
    assert one(client, "statsu") == "ERR unknown command 'statsu'; did you mean 'status'?"


def test_a_long_help_topic_is_answered_quickly_before_authentication(make_server):
    # `help a a a ... a` (8,000 words, before auth) joined every prefix of the topic to look for
    # a command in it: O(n^2), about 0.25 s of one poll() with no regard for its budget.
    srv = make_server("127.0.0.1", token="s3cret")
    srv.add_command("show job", lambda: "ok", help="Shows a job.")
    registry, spent = srv.registry, []
    real_help = registry.help

    def timed_help(topic: List[str], allowed: Any) -> str:
        start = time.perf_counter()
        try:
            return real_help(topic, allowed)
        finally:
            spent.append(time.perf_counter() - start)

    registry.help = timed_help  # type: ignore[method-assign]
    client = RawClient(srv)
    assert one(client, "help " + " ".join(["a"] * 8000)) == "ERR unknown command 'a' (try 'help')"
    assert one(client, "help ping " + " ".join(["a"] * 8000)) == "ERR usage: help [TOPIC...] (try 'help ping')"
    assert len(spent) == 2 and max(spent) < 0.02, spent
    client.close()


def test_level_can_only_go_down(server):
    server.add_command("restart", lambda: "restarting", level="operator")
    client = RawClient(server)
    assert one(client, "level") == "operator"
    assert one(client, "level admin") == "ERR permission denied: cannot raise the level from operator to admin"
    assert one(client, "level root") == (
        "ERR usage: level [LEVEL] (unknown level 'root'; the levels are user, operator, admin)"
    )
    assert one(client, "restart") == "restarting"
    assert one(client, "level user") == "user"
    assert one(client, "restart") == "ERR permission denied: 'restart' needs operator"
    assert "restart" not in read_help(client)
    assert one(client, "level operator") == "ERR permission denied: cannot raise the level from user to operator"


def test_the_builtins_usage_errors_print_the_usage_line_help_shows(make_server):
    # help took its usage lines from the signatures (`watch SECONDS [COMMAND...]`, `auth
    # [TOKEN...]`, `level [NEW_LEVEL]`) while the handlers' own errors spelled out others
    # (`watch SECONDS COMMAND...`, `auth TOKEN`, `level [user|operator|admin]`, `help [COMMAND]`).
    srv = make_server("127.0.0.1", token="s3cret", log_tail=True, level="admin")
    client = RawClient(srv)
    assert one(client, "auth s3cret") == "OK"
    for line, topic in [
        ("auth", "auth"),
        ("auth a b", "auth"),
        ("watch 1", "watch"),
        ("watch 0 ping", "watch"),
        ("watch soon ping", "watch"),
        ("level root", "level"),
        ("level a b", "level"),
        ("help ping extra", "help"),
        ("log tail loud", "log tail"),
        ("ping now", "ping"),
    ]:
        shown = srv.registry.commands[topic].help_text().splitlines()
        assert client.request("help " + topic, len(shown)) == shown
        usage = shown[0]
        assert one(client, line).startswith(f"ERR {usage} ("), (line, usage)


def test_an_explicit_usage_is_the_one_help_and_binding_errors_print():
    def handler(*words: str) -> str:
        if len(words) != 2:
            raise command.usage_error("two words expected")
        return " ".join(words)

    command = Command("pair", handler, connection_type=Connection, usage="  FIRST   SECOND ")
    assert command.usage == "pair FIRST SECOND"
    assert command.help_text() == "usage: pair FIRST SECOND"
    with pytest.raises(reactor_mgmt.UsageError, match=r"^usage: pair FIRST SECOND \(two words expected\)$"):
        command.call(["a"], None)
    # A binding error of the signature's own is printed with it too
    with pytest.raises(reactor_mgmt.UsageError, match=r"^usage: pair FIRST SECOND \(takes no arguments\)$"):
        Command("pair", lambda: None, connection_type=Connection, usage="FIRST SECOND").call(["a"], None)


def test_usage_can_be_given_through_every_public_way_to_register(make_server):
    # Command took usage=, but add_command(), @command(...) and @command_options refused it.
    srv = make_server("127.0.0.1")
    srv.add_command("pair", lambda *words: " ".join(words), usage="FIRST SECOND")
    srv.command(name="trio", usage="A B C")(lambda *words: "ok")

    class Tools:
        @reactor_mgmt.command_options(usage="KEY VALUE")
        def put(self, *words: str) -> str:
            """Stores a value."""
            return "stored"

    srv.add_commands(Tools())
    assert [srv.registry.commands[name].usage for name in ("pair", "trio", "put")] == [
        "pair FIRST SECOND",
        "trio A B C",
        "put KEY VALUE",
    ]


def test_quit_sends_earlier_replies_then_closes(server):
    client = RawClient(server)
    client.send("echo a\nquit\necho b\n")
    assert client.read_until_closed() == b"a\n"


def test_help_of_registry_directly():
    registry = Registry(Connection)
    registry.add("show jobs", lambda: None, help="Jobs.")
    registry.add("show job", lambda job_id: None, help="One job.")
    everything = registry.help([], lambda command: True)
    assert everything.splitlines()[0] == "Commands: show"
    with pytest.raises(CommandError, match="incomplete command 'show'"):
        registry.resolve(["show"])
    command, rest = registry.resolve(["show", "job", "7"])
    assert (command.name, rest) == ("show job", ["7"])


# ---- JSON requests ----


def test_json_request_from_the_brief(kick_server):
    client = RawClient(kick_server)
    (line,) = client.request('{"cmd": "kick", "args": ["bob"], "kwargs": {"force": true}, "id": 7}')
    assert line == '{"id": 7, "ok": true, "result": "kicked bob (no reason) by force"}'
    client.pump(3)
    assert client.buffer == b""  # exactly one line


def test_json_arguments(typed):
    client = RawClient(typed)
    assert ask_json(client, {"cmd": "types", "args": [1, 2, True, "x"], "id": "a"}) == {
        "id": "a",
        "ok": True,
        "result": "ok",
    }
    assert ask_json(client, {"cmd": "types", "args": ["1", "2.5", "no"], "kwargs": {"name": 5}, "id": 1})["ok"]
    assert ask_json(client, {"cmd": "paint", "args": ["green"], "kwargs": {"coats": 2}})["ok"]
    assert ask_json(client, {"cmd": "paint", "args": [1, "FAST"]})["ok"]  # an enum by its JSON value
    assert typed.seen == [
        (1, 2.0, True, "x"),
        (1, 2.5, False, "5"),
        (Color.green, "slow", 2),
        (Color.red, "fast", None),
    ]
    assert ask_json(client, {"cmd": "paint", "args": [3]})["error"]["message"] == (
        "usage: paint COLOR [SPEED] [COATS] (bad value for COLOR: 3: expected one of: red, green)"
    )
    assert ask_json(client, {"cmd": "resize", "kwargs": {"width": 4, "unit": "em"}})["result"] == "4x10em"
    assert ask_json(client, {"cmd": "total", "args": [1, 2.5]})["result"] == 3.5
    assert ask_json(client, {"cmd": "whoami"})["result"] == "level admin"


def test_json_true_is_not_the_number_1_for_a_choice(make_server):
    # In Python True == 1, so JSON true used to pass for Literal[1, 2] or an enum valued 1.
    srv = make_server("127.0.0.1")

    @srv.command
    def pick(n: Literal[1, 2], color: Optional[Color] = None, flag: Optional[Literal[True]] = None) -> str:
        return repr((n, color, flag))

    client = RawClient(srv)
    assert ask_json(client, {"cmd": "pick", "args": [1, 1, True]})["result"] == "(1, <Color.red: 1>, True)"
    for args, metavar in (([True], "N"), ([1, True], "COLOR"), ([1, None, 1], "FLAG")):
        error = ask_json(client, {"cmd": "pick", "args": args})["error"]
        assert error["code"] == "usage" and f"bad value for {metavar}" in error["message"], (args, error)


@pytest.mark.parametrize(
    "request_line, code, message",
    [
        ('{"cmd": "nope", "id": 1}', "unknown_command", "unknown command 'nope' (try 'help')"),
        ('{"cmd": "types", "args": [1], "id": 1}', "usage", "usage: types COUNT RATIO ENABLED NAME (missing RATIO)"),
        ('{"cmd": "types", "args": [true, 1, 1, "x"], "id": 1}', "usage", None),
        ('{"cmd": "resize", "kwargs": {"width": 1, "depth": 2}, "id": 1}', "usage", None),
        ('{"cmd": "types", "args": [1, 2, true], "kwargs": {"count": 3, "name": "x"}, "id": 1}', "usage", None),
        ('{"cmd": "boom", "id": 1}', "internal", "internal error (KeyError)"),
        ('{"cmd": "ping", "id": 1', "bad_request", None),  # malformed: the id is unknown
        ('{"id": 1}', "bad_request", "'cmd' must be a non-empty string"),
        ('{"cmd": "  ", "id": 1}', "bad_request", "'cmd' must be a non-empty string"),
        ('{"cmd": 5, "id": 1}', "bad_request", "'cmd' must be a non-empty string"),
        ('{"cmd": "ping", "args": "x", "id": 1}', "bad_request", "'args' must be a list and 'kwargs' an object"),
        ('{"cmd": "ping", "kwargs": [], "id": 1}', "bad_request", "'args' must be a list and 'kwargs' an object"),
        ('{"cmd": "shutdown", "id": 1}', "denied", "permission denied: 'shutdown' needs admin"),
    ],
)
def test_json_errors(server, request_line, code, message):
    srv = server

    def types(count: int, ratio: float, enabled: bool, name: str) -> str:
        return "ok"

    def resize(*, width: int) -> str:
        return "ok"

    def boom() -> None:
        raise KeyError("x")

    srv.add_command("types", types)
    srv.add_command("resize", resize)
    srv.add_command("boom", boom)
    srv.add_command("shutdown", lambda: None, level="admin")
    client = RawClient(srv)
    reply = ask_json(client, request_line)
    assert reply["ok"] is False
    assert reply["id"] == (None if request_line.endswith("1") else 1)
    assert reply["error"]["code"] == code
    if message is not None:
        assert reply["error"]["message"] == message
    assert set(reply) == {"id", "ok", "error"}
    assert one(client, "ping") == "pong"


def test_json_malformed_has_null_id(server):
    client = RawClient(server)
    reply = ask_json(client, "{not json")
    assert reply["id"] is None and reply["error"]["code"] == "bad_request"
    assert reply["error"]["message"].startswith("malformed JSON")


def test_json_too_long_line_gets_a_json_error(make_server):
    srv = make_server("127.0.0.1", max_line=100)
    client = RawClient(srv)
    client.send('{"cmd": "echo", "args": ["' + "x" * 500 + '"], "id": 3}\n')
    client.send("x" * 300 + "\n")
    client.send('  {"cmd": "echo", "args": ["' + "y" * 5000 + '"]}\n')
    first, second, third = client.lines(3)
    assert json.loads(first) == {
        "id": None,
        "ok": False,
        "error": {"code": "too_long", "message": "line too long (limit 100 bytes)"},
    }
    assert second == "ERR line too long (limit 100 bytes)"
    assert json.loads(third)["error"]["code"] == "too_long"
    assert one(client, '{"cmd": "ping", "id": 2}') == '{"id": 2, "ok": true, "result": "pong"}'


def test_json_results_that_json_cannot_hold(server):
    class Point:
        def __str__(self) -> str:
            return "(1, 2)"

    server.add_command("odd", lambda: {"p": Point(), "s": {3}, "b": b"hi", "c": Color.red, "n": float("nan")})
    client = RawClient(server)
    (line,) = client.request('{"cmd": "odd", "id": 1}')
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}")) == {
        "id": 1,
        "ok": True,
        "result": {"p": "(1, 2)", "s": [3], "b": "hi", "c": 1, "n": "nan"},
    }


def test_json_no_reply_command_gives_null_result(server):
    @server.command
    def silent(conn: Connection) -> Any:
        return reactor_mgmt.NO_REPLY

    client = RawClient(server)
    assert ask_json(client, {"cmd": "silent", "id": 9}) == {"id": 9, "ok": True, "result": None}


def test_text_and_json_mixed_on_one_connection_keep_order(kick_server):
    client = RawClient(kick_server)
    client.send(
        'ping\n{"cmd": "echo", "args": ["a", "b"], "id": 1}\necho c d\n'
        '{"cmd": "kick", "args": ["x"], "id": 2}\nkick\n{"cmd": "ping"}\n'
    )
    assert client.lines(6) == [
        "pong",
        '{"id": 1, "ok": true, "result": "a b"}',
        "c d",
        '{"id": 2, "ok": true, "result": "kicked x (no reason)"}',
        "ERR usage: kick PLAYER [REASON] [--force] (missing PLAYER)",
        '{"id": null, "ok": true, "result": "pong"}',
    ]


def test_json_multi_word_cmd(make_server):
    srv = make_server("127.0.0.1", level="admin")
    srv.add_command("set rate", lambda hz: f"rate {hz}")
    client = RawClient(srv)
    assert ask_json(client, {"cmd": "set rate", "args": ["5"], "id": 1})["result"] == "rate 5"
    assert ask_json(client, {"cmd": "set  rate 7", "id": 2})["result"] == "rate 7"


# ---- stats ----


def test_stats_counts_what_happened(server):
    first = RawClient(server)
    second = RawClient(server)
    one(first, "ping")
    one(first, "nonsense")
    one(second, "ping")
    second.close()
    client = RawClient(server)
    client.send("stats\nping\n")  # the pong marks the end of the multi-line reply
    text = client.wait_for(lambda b: b.endswith(b"\npong\n")).decode()
    client.buffer = b""
    stats = {}
    for line in text.splitlines()[:-1]:
        key, _, value = line.partition(":")
        stats[key] = float(value)
    assert stats["connections_total"] == 3
    assert 2 <= stats["connections_open"] <= 3  # the closed one may not be reaped yet
    assert stats["commands"] == 4  # ping, nonsense, ping, stats (its ping is not run yet)
    assert stats["errors"] == 1
    # The trailing ping may or may not have been read yet when stats ran.
    assert stats["bytes_in"] in (len(b"ping\nnonsense\nping\nstats\n"), len(b"ping\nnonsense\nping\nstats\nping\n"))
    assert stats["bytes_out"] >= len(b"pong\npong\n")
    assert stats["uptime_s"] >= 0
    assert stats["poll_window"] >= 1 and stats["polls"] >= stats["poll_window"]
    assert 0 <= stats["poll_mean_ms"] <= stats["poll_max_ms"]
    assert stats["poll_p99_ms"] <= stats["poll_max_ms"]
    reply = ask_json(client, {"cmd": "stats", "id": 1})
    assert reply["result"]["commands"] == 6


# ---- the demo ----


def test_demo_commands(demo):
    import socket

    with socket.create_connection((demo.host, demo.port), timeout=TIMEOUT) as sock:
        reader = sock.makefile("rb")

        def ask(line: str, until: bytes) -> List[str]:
            sock.sendall(line.encode() + b"\n")
            lines = []
            while True:
                raw = reader.readline()
                assert raw, f"demo closed the connection; got {lines!r}"
                lines.append(raw.decode().rstrip("\n"))
                if until in raw:
                    return lines

        listing = ask("help", b"Type 'help COMMAND'")
        heads = listing[0].split()
        assert heads[0] == "Commands:"
        assert {"count", "job", "show", "status", "wait", "config", "log", "help"} <= set(heads)
        assert any(line.split()[:2] == ["status", "Uptime,"] for line in listing)
        details = ask("help job cancel", b"--force also")
        assert details[0] == "usage: job cancel JOB_ID [--force]"
        assert ask("stauts", b"ERR") == ["ERR unknown command 'stauts'; did you mean 'status'?"]
        assert ask("job cancel first", b"ERR")[0].startswith("ERR usage: job cancel JOB_ID [--force] (bad value")
        assert ask("show jobs", b"thumbnails")[0].split() == ["id", "name", "priority", "progress"]
        assert ask("wait ticks 2", b"reached")[0].startswith("tick ")
        assert ask("count 3 --prefix n", b"n 3") == ["n 1", "n 2", "n 3"]

    nc = require_tool("nc")
    out = subprocess.run(
        [nc, "-N", demo.host, str(demo.port)], input=b'{"cmd":"ping","id":1}\n', capture_output=True, timeout=TIMEOUT
    )
    assert out.stdout == b'{"id": 1, "ok": true, "result": "pong"}\n'


def test_demo_status_through_nc_and_jq(demo):
    nc = require_tool("nc")
    jq = require_tool("jq")
    pipeline = f'echo \'{{"cmd":"status"}}\' | {nc} -N {demo.host} {demo.port} | {jq} -c .result'
    out = subprocess.run(["sh", "-c", pipeline], capture_output=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert set(status) >= {"uptime_s", "ticks", "connections", "jobs_queued"}
    assert status["connections"] == 1


def test_json_null_only_reaches_parameters_that_accept_none(server):
    @server.command
    def greet(name: str, title: Optional[str] = None, *rest: str) -> str:
        return f"{title or ''}{name}{'+' if rest else ''}"

    client = RawClient(server)
    assert json.loads(client.request('{"cmd":"greet","args":["bob",null],"id":1}')[0])["result"] == "bob"
    for args in ("[null]", '["bob", "Dr ", null]'):
        reply = json.loads(client.request('{"cmd":"greet","args":%s,"id":2}' % args)[0])
        assert reply["error"]["code"] == "usage"
        assert "null is not allowed" in reply["error"]["message"]
    client.close()


def test_an_error_message_with_newlines_is_still_one_line(server):
    @server.command
    def multi():
        raise CommandError("first line\nsecond line\r\nthird")

    client = RawClient(server)
    assert client.request("multi\nping", lines=2) == ["ERR first line second line third", "pong"]
    client.close()


def test_add_commands_of_a_module_skips_what_it_imported(make_server, tmp_path, monkeypatch):
    (tmp_path / "ops_module_rm.py").write_text(
        "from os.path import join\nfrom json import dumps as _dumps\ndef flush_cache():\n    return 'flushed'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import ops_module_rm

    srv = make_server("127.0.0.1")
    added = srv.add_commands(ops_module_rm)
    assert [command.name for command in added] == ["flush cache"]
    assert "join" not in srv.registry.commands


# ---- conversion and binding edge cases ----


def test_a_number_past_a_floats_range_is_a_usage_error_on_both_paths():
    # float(10**400) raised OverflowError outside the conversion's try: an internal error, a
    # logged traceback and on_error, from any client. The same digits as text became inf.
    calls = []

    def fl(x: float, *, y: float = 0.0) -> None:
        calls.append((x, y))

    command = Command("fl", fl, connection_type=Connection)
    huge = 10**400
    for call in (
        lambda: command.call_json([huge], {}, None),
        lambda: command.call_json([1], {"y": -huge}, None),
        lambda: command.call(["1" + "0" * 400], None),
        lambda: command.call(["1", "--y=-1e400"], None),
    ):
        with pytest.raises(
            reactor_mgmt.UsageError, match=r"^usage: fl X \[--y Y\] \(bad value for [XY]: .*: number out of range\)$"
        ):
            call()
    assert calls == []
    # inf spelled out is a value the handler is given, as before; so is a float that fits
    command.call(["inf", "--y", "-Infinity"], None)
    command.call_json([1e308], {"y": 2}, None)
    assert calls == [(float("inf"), float("-inf")), (1e308, 2.0)]


def test_a_json_int_past_a_floats_range_over_the_socket(typed, caplog):
    client = RawClient(typed)
    for request in ({"cmd": "types", "args": [1, 10**400, True, "x"]}, {"cmd": "watch", "args": [10**400, "ping"]}):
        error = ask_json(client, request)["error"]
        assert error["code"] == "usage" and error["message"].endswith(": number out of range)"), error
    assert typed.seen == []
    assert "Traceback" not in caplog.text
    assert one(client, "ping") == "pong"


@pytest.mark.skipif(sys.version_info < (3, 10), reason="`int | None` needs Python 3.10")
def test_x_or_none_is_optional_x():
    # Only typing.Union was unwrapped: `int | None` was refused at registration as a container.
    calls: List[Any] = []

    def job(count: int | None, label: str | None = None, *, retries: int | None = None) -> None:
        calls.append((count, label, retries))

    command = Command("job", job, connection_type=Connection)
    assert command.usage == "job COUNT [LABEL] [--retries RETRIES]"
    command.call(["3", "x", "--retries=2"], None)
    command.call_json([None, None], {"retries": None}, None)
    command.call_json(["4"], {}, None)
    assert calls == [(3, "x", 2), (None, None, None), (4, None, None)]
    with pytest.raises(reactor_mgmt.UsageError, match=r"bad value for COUNT: 'x': expected an integer"):
        command.call(["x"], None)

    def whoami(conn: Connection | None = None) -> str:
        return "injected" if conn is not None else "none"

    assert Command("whoami", whoami, connection_type=Connection).signature.inject == "conn"


def test_choices_that_differ_only_in_case_are_each_taken_as_written():
    # Choices were looked up lowercased only: of "B" and "b", one could never be chosen.
    seen: List[Any] = []

    def pick(letter: Literal["B", "b", "c"], grade: Grade = Grade.A, pair: Literal["Ab", "aB"] = "Ab") -> None:
        seen.append((letter, grade, pair))

    command = Command("pick", pick, connection_type=Connection)
    command.call(["B", "A", "Ab"], None)
    command.call(["b", "a", "aB"], None)
    command.call(["C", "2"], None)  # any case still, where only one choice lowers to it
    command.call_json(["b"], {"grade": "A", "pair": "aB"}, None)
    command.call_json(["B", 2], {}, None)
    assert seen == [
        ("B", Grade.A, "Ab"),
        ("b", Grade.a, "aB"),
        ("c", Grade.a, "Ab"),
        ("b", Grade.A, "aB"),
        ("B", Grade.a, "Ab"),
    ]
    usage = "usage: pick LETTER [GRADE] [PAIR]"
    # A spelling that is neither exactly, with two choices lowering to it: no arbitrary pick
    for args, why in (
        (["x"], "bad value for LETTER: 'x': expected one of: B, b, c"),
        (["c", "x"], "bad value for GRADE: 'x': expected one of: A, a"),
        (["c", "a", "ab"], "bad value for PAIR: 'ab': expected one of: Ab, aB"),
        (["c", "a", "AB"], "bad value for PAIR: 'AB': expected one of: Ab, aB"),
    ):
        with pytest.raises(reactor_mgmt.UsageError) as caught:
            command.call(args, None)
        assert str(caught.value) == f"{usage} ({why})"
    assert len(seen) == 5
    assert command.help_text().splitlines()[:4] == [
        usage,
        "  LETTER: one of B, b, c",
        "  GRADE: one of A, a",
        "  PAIR: one of Ab, aB",
    ]


def test_a_members_name_wins_over_another_members_value():
    # Values were entered after names in one table: `show newest` bound Sort.oldest (whose
    # value is "newest"), though help lists newest as a choice of its own.
    seen: List[Any] = []

    def show(order: Sort, then: Optional[Sort] = None) -> None:
        seen.append((order, then))

    command = Command("show", show, connection_type=Connection)
    assert command.help_text().splitlines() == [
        "usage: show ORDER [THEN]",
        "  ORDER: one of newest, date, oldest",
        "  THEN: one of newest, date, oldest",
    ]
    command.call(["newest", "date"], None)
    command.call(["oldest", "NEWEST"], None)  # a name in any case, still before a value
    command.call(["created"], None)  # a value that is nobody's name: taken
    command.call_json(["newest"], {"then": "date"}, None)
    assert seen == [
        (Sort.newest, Sort.date),
        (Sort.oldest, Sort.newest),
        (Sort.date, None),
        (Sort.newest, Sort.date),
    ]


def test_a_json_value_that_is_not_a_string_binds_as_its_json_spelling_would_as_a_word(make_server):
    # A str parameter got Python's str() of a JSON value: true gave 'True' and {"a": null}
    # gave "{'a': None}", where the text request `tag true` gives 'true'.
    srv = make_server("127.0.0.1")

    @srv.command
    def tag(value: str, *more: str, count: int = 0) -> str:
        return repr((value, more, count))

    client = RawClient(srv)
    for given in [True, False, {"a": None}, [1, "x"], 5, 2.5, "日本"]:
        word = given if isinstance(given, str) else json.dumps(given, ensure_ascii=False)
        expected = repr((word, (word,), 0))
        request = {"cmd": "tag", "args": [given, given]}
        assert ask_json(client, json.dumps(request, ensure_ascii=False))["result"] == expected, given
    # The same as the text request with those words
    assert one(client, """tag true '{"a": null}'""") == repr(("true", ('{"a": null}',), 0))
    assert ask_json(client, {"cmd": "tag", "args": [True, {"a": None}]})["result"] == one(
        client, """tag true '{"a": null}'"""
    )
    # A value refused by a converter is quoted as the word it was taken as
    assert ask_json(client, {"cmd": "tag", "args": ["x"], "kwargs": {"count": True}})["error"]["message"] == (
        "usage: tag VALUE [MORE...] [--count COUNT] (bad value for COUNT: 'true': expected an integer)"
    )


def paint_with(brush: str, color: Color, coats: int = 1) -> str:
    """Paints with a brush."""
    return f"{brush} {color.name} x{coats}"


class Painter:
    def __call__(self, color: Color, coats: int = 1) -> str:
        """Paints."""
        return f"{color.name} x{coats}"


class Documented:
    """Counts."""

    def __call__(self, n: int) -> int:
        return n


def test_a_partial_or_a_callable_object_registers_with_its_functions_annotations_and_doc(make_server):
    # Under `from __future__ import annotations` (as in this file) the annotations are strings,
    # resolved in the function's module; a partial and a callable object have no __globals__,
    # so `color: Color` was refused ("is it defined inside a function?"). A partial's help
    # summary was functools.partial's own docstring.
    import functools

    srv = make_server("127.0.0.1")
    srv.add_command("roller", functools.partial(functools.partial(paint_with, "roller"), coats=2))
    srv.add_command("painter", Painter())
    srv.add_command("count", Documented())
    srv.add_command("bare", functools.partial(lambda word: word, "x"))
    commands = srv.registry.commands
    assert [commands[name].summary for name in ("roller", "painter", "count", "bare")] == [
        "Paints with a brush.",
        "Paints.",
        "Counts.",  # __call__ has no docstring: the class's
        "",  # the lambda has none: not functools.partial's
    ]
    client = RawClient(srv)
    assert client.request("help roller", 4) == [
        "usage: roller COLOR [--coats COATS]",
        "  COLOR: one of red, green",
        "",
        "Paints with a brush.",
    ]
    assert one(client, "roller GREEN") == "roller green x2"
    assert one(client, "painter red 3") == "red x3"
    assert one(client, "painter blue").startswith("ERR usage: painter COLOR [COATS] (bad value for COLOR")
    assert one(client, "count x") == "ERR usage: count N (bad value for N: 'x': expected an integer)"
