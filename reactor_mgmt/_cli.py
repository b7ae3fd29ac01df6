# The `reactor-mgmt` command line: one-shot commands, fan-out to many endpoints, scripts on
# stdin, and an interactive shell with readline editing and completion.
#
# Everything on the wire is the JSON request form (see _client.py); output is rendered here with
# the server's own render_text, so `reactor-mgmt status` prints what `echo status | nc` would.
# The command's words travel as {"argv": [...]}: the shell (or, at the prompt, split_words) has
# already split them, and the server binds them exactly as it binds a text line's words, so
# quoting and `--flag` options behave the same on every path.
#
# One-shot runs, fan-out and script lines all go through the non-blocking FanOut engine, even
# for a single endpoint, so there is one timeout and exit-status policy. The interactive shell
# keeps one blocking Client connection instead, so connection state (auth, `level`) persists
# between the commands a person types; fanned out, it keeps a typed `auth TOKEN` and `level NAME`
# and has FanOut apply them to each command's new connections.
#
# `reactor-mgmt ls` lists the servers on this machine that registered for discovery, and
# `--app NAME` fans out to every live one called NAME (see _discovery.py). `ls` is ours only
# when no endpoint is given: `-c ADDR ls` sends a server's own `ls`.
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Generator, List, Optional, Sequence, TextIO, Tuple

from . import __version__
from ._client import (
    DEFAULT_ADDRESS,
    ERROR,
    OK,
    UNREACHABLE,
    Client,
    ClientTimeout,
    ConnectionFailed,
    Endpoint,
    FanOut,
    context_for,
    level_set_by,
)
from ._errors import ReactorMgmtError, RemoteError
from ._protocol import ParseError, split_words
from ._render import render_text

EXIT_OK, EXIT_ERR, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 130
HISTORY_FILE = "~/.reactor_mgmt_history"
_HISTORY_LENGTH = 1000
_FD_RESERVE = 32  # descriptors kept back from fan-out for stdio, the selector, imports...


class _Usage(Exception):
    """A problem with the command line itself: reported on one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reactor-mgmt",
        description="Send commands to a reactor_mgmt management socket. With no COMMAND, reads "
        "commands interactively (a terminal) or line by line (a pipe).",
        epilog="exit status: 0 success, 1 an endpoint replied ERR, 2 an endpoint could not be reached "
        "or timed out. Run `reactor-mgmt help` for the server's commands.",
    )
    parser.add_argument(
        "-c",
        "--connect",
        metavar="ADDR",
        action="append",
        default=[],
        help=f"endpoint: HOST:PORT, [V6]:PORT or a Unix socket path; repeat to fan out (default {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--hosts-file", metavar="FILE", help="fan out to the endpoints in FILE, one ADDR per line (# comments)"
    )
    parser.add_argument(
        "--address-file",
        metavar="FILE",
        help="connect to the first address in FILE, as a server's address_file wrote it",
    )
    parser.add_argument(
        "--app",
        metavar="NAME",
        action="append",
        default=[],
        help="fan out to every live server registered for discovery as NAME (see `reactor-mgmt ls`); repeatable",
    )
    parser.add_argument(
        "--token",
        help="authenticate first, by challenge-response when the server offers it, "
        "else with 'auth TOKEN' (default: $REACTOR_MGMT_TOKEN)",
    )
    tls = parser.add_argument_group("TLS (TCP endpoints; a Unix socket is always plain)")
    tls.add_argument("--tls", action="store_true", help="connect with TLS, checking the server's certificate")
    tls.add_argument(
        "--cafile",
        metavar="FILE",
        help="CA certificates to check the server's certificate with (default: the system's); implies --tls",
    )
    tls.add_argument("--cert", metavar="FILE", help="client certificate (PEM; may hold the key too); implies --tls")
    tls.add_argument("--key", metavar="FILE", help="the client certificate's private key")
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the server's certificate (self-signed, for testing); implies --tls",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="per endpoint: to connect, then to wait for each reply line (default 5; 0: none); "
        "a stream's items (log tail, watch) are waited for as long as it runs",
    )
    parser.add_argument("--json", action="store_true", help="print JSON results (one value per line) instead of text")
    parser.add_argument("--version", action="version", version=f"reactor-mgmt {__version__}")
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="COMMAND [ARG...]",
        help="the command and its arguments, as you would type them at the prompt",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command[:1] == ["ls"] and not (args.connect or args.hosts_file or args.address_file or args.app):
        # `ls --json` as well as `--json ls`: after `ls`, argparse has left it among the names.
        names = [word for word in command[1:] if word != "--json"]
        return list_instances(names, args.json or len(names) < len(command) - 1)
    try:
        endpoints = _endpoints(args)
        tls = context_for(args.tls, args.cafile, args.cert, args.key, args.insecure, warn=False)
    except (_Usage, ReactorMgmtError) as exc:
        print(f"reactor-mgmt: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.insecure:
        print(
            "reactor-mgmt: warning: --insecure: the server's certificate is not checked, so anyone on "
            "the path can pose as the server",
            file=sys.stderr,
        )
    token = args.token if args.token is not None else (os.environ.get("REACTOR_MGMT_TOKEN") or None)
    # Bytes on stdin that are not in its encoding (a script line, a line typed at the prompt)
    # become lone surrogates, as argv's do, rather than a UnicodeDecodeError; the request then
    # carries the bytes as they were, and the server's error reply says what is wrong.
    try:
        sys.stdin.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):  # not a TextIOWrapper (replaced, or closed)
        pass
    runner = _Runner(endpoints, token, args.timeout, args.json, tls)
    try:
        if command:
            return runner.one_shot(command)
        if sys.stdin.isatty():
            return _Shell(runner).loop()
        return runner.script(sys.stdin)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output (`| head`) has gone; say nothing more, and do not let the
        # interpreter's final flush complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERR


def _endpoints(args: argparse.Namespace) -> List[Endpoint]:
    addresses: List[str] = list(args.connect)
    if args.hosts_file:
        addresses += _read_hosts_file(args.hosts_file)
    if args.address_file:
        addresses.append(_read_address_file(args.address_file))
    if not addresses and not args.app:
        addresses = [DEFAULT_ADDRESS]
    endpoints: List[Endpoint] = []
    for address in addresses:
        try:
            endpoint = Endpoint(address)
        except ValueError as exc:
            raise _Usage(str(exc)) from None
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    for name in args.app:
        endpoints += [endpoint for endpoint in _app_endpoints(name) if endpoint not in endpoints]
    return endpoints


def _app_endpoints(name: str) -> List[Endpoint]:
    """One endpoint per live instance registered as ``name``, labelled NAME[PID] (NAME[PID.2]
    for a second server of that name in one process)."""
    from ._discovery import instances, label, pick_address

    endpoints = []
    for instance in instances(name):
        address = pick_address(instance)
        if address is None:
            continue
        try:
            endpoint = Endpoint(address)
        except ValueError:
            continue
        endpoint.label = label(instance)
        # A socket whose server could not be told from a later process that took its pid (no
        # /proc) gets no cleartext token: whoever holds the path now could ask for it.
        endpoint.vouched = instance.verified
        endpoints.append(endpoint)
    if not endpoints:
        from ._discovery import directory

        raise _Usage(f"no live instance of {name!r} is registered in {directory()} (see `reactor-mgmt ls`)")
    return endpoints


def list_instances(names: List[str], as_json: bool) -> int:
    """`reactor-mgmt ls [NAME...]`: the live servers registered for discovery."""
    from ._discovery import instances

    try:
        found = [instance for instance in instances() if not names or instance.name in names]
    except ReactorMgmtError as exc:
        print(f"reactor-mgmt: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if as_json:
        for instance in found:
            record = instance._asdict()
            record.pop("path")
            record.pop("verified")
            print(json.dumps(record))
        return EXIT_OK
    if not found:
        print("no live instances", file=sys.stderr)
        return EXIT_OK
    rows = [
        {
            "name": instance.name,
            "pid": instance.pid,
            "addresses": " ".join(instance.addresses) + (" (tls)" if instance.tls else ""),
            "started": _local_time(instance.started),
            "token": "yes" if instance.token_required else "no",
        }
        for instance in found
    ]
    table = render_text(rows)
    print(table, end="" if table.endswith("\n") else "\n")
    return EXIT_OK


def _local_time(when: float) -> str:
    import time

    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    except (OverflowError, OSError, ValueError):  # a start time out of the platform's range
        return "?"


def _read_hosts_file(path: str) -> List[str]:
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise _Usage(f"cannot read hosts file {path}: {exc.strerror}") from None
    addresses = []
    for line in lines:
        line = line.strip()
        if line.startswith("#"):
            continue
        line = line.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if line:
            addresses.append(line)
    if not addresses:
        raise _Usage(f"hosts file {path} lists no endpoints")
    return addresses


def _read_address_file(path: str) -> str:
    try:
        with open(path) as handle:
            for line in handle:
                if line.strip():
                    return line.strip()
    except OSError as exc:
        raise _Usage(f"cannot read address file {path}: {exc.strerror}") from None
    raise _Usage(f"address file {path} is empty (is the server running?)")


def _raise_fd_limit(wanted: int) -> int:
    """Lifts the soft RLIMIT_NOFILE towards ``wanted`` and returns how many may be open."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return wanted
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # the limit is unknown: as many as asked (a connect past it fails, and says so)
        return wanted
    try:
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (OSError, ValueError):  # not raised: the soft limit stands
        pass
    return soft if soft != resource.RLIM_INFINITY else wanted


def _status(outcomes: Sequence[str]) -> int:
    if UNREACHABLE in outcomes:
        return EXIT_UNREACHABLE
    if ERROR in outcomes:
        return EXIT_ERR
    return EXIT_OK


class _Printer:
    """Turns FanOut events into output: plain for one endpoint, `label: line` for several."""

    def __init__(self, prefixed: bool, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.prefixed = prefixed
        self.as_json = as_json
        self.out = out
        self.err = err
        self.wrote_text: Dict[str, bool] = {}
        self.items: Dict[str, int] = {}

    def __call__(self, endpoint: Endpoint, kind: str, value: Any) -> None:
        label = endpoint.label
        if kind == "text":
            self.wrote_text[label] = True
            self._value(label, "text", value, raw=True)
        elif kind == "item":
            self.items[label] = self.items.get(label, 0) + 1
            self._value(label, "item", value)
        elif kind == "result":
            if value is None and self.wrote_text.get(label):
                return  # the handler wrote its reply itself; None is not an answer of its own
            self._value(label, "result", value)
        elif kind == "error":
            assert isinstance(value, RemoteError)
            self._lines(self.err, label, f"ERR {value.message}")
        elif kind == "failed":
            self._lines(self.err, label, str(value) if self.prefixed else f"{label}: {value}")

    def _value(self, label: str, kind: str, value: Any, raw: bool = False) -> None:
        if not self.as_json:
            self._lines(self.out, label, value if raw else render_text(value))
        elif self.prefixed:
            self.out.write(json.dumps({"endpoint": label, kind: value}, ensure_ascii=False) + "\n")
        else:
            self.out.write(json.dumps(value, ensure_ascii=False) + "\n")

    def _lines(self, stream: TextIO, label: str, text: str) -> None:
        if text.endswith("\n"):
            text = text[:-1]
        if self.prefixed:
            text = "\n".join(f"{label}: {line}" for line in text.split("\n"))
        stream.write(text + "\n")

    def flush(self) -> None:
        self.out.flush()
        self.err.flush()


class _Runner:
    """Runs commands against the endpoints: the one-shot, script and fan-out paths."""

    def __init__(
        self, endpoints: List[Endpoint], token: Optional[str], timeout: float, as_json: bool, tls: Any = None
    ) -> None:
        self.endpoints = endpoints
        self.token = token
        self.tls = tls  # an ssl.SSLContext, or None for plain TCP
        self.timeout = timeout
        self.as_json = as_json
        self.level: Optional[str] = None  # a level the fanned-out shell lowered to: each connection's
        self.fanned = len(endpoints) > 1
        self.max_parallel = max(1, _raise_fd_limit(len(endpoints) + _FD_RESERVE) - _FD_RESERVE)

    def one_shot(self, words: List[str]) -> int:
        printer = _Printer(self.fanned, self.as_json, sys.stdout, sys.stderr)
        engine = FanOut(
            self.endpoints,
            {"argv": list(words)},
            on_event=printer,
            token=self.token,
            timeout=self.timeout,
            max_parallel=self.max_parallel,
            after_batch=printer.flush,
            tls=self.tls,
            level=self.level,
        )
        outcomes = engine.run()
        printer.flush()
        if self.fanned:
            ok, errors, unreachable = (outcomes.count(OK), outcomes.count(ERROR), outcomes.count(UNREACHABLE))
            printer.err.write(f"{ok} ok, {errors} error{'' if errors == 1 else 's'}, {unreachable} unreachable\n")
            printer.err.flush()
        return _status(outcomes)

    def script(self, lines: Any) -> int:
        """Each non-blank, non-comment line is a one-shot command; the worst status wins."""
        status = EXIT_OK
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                words = split_words(line)
            except ParseError as exc:
                print(f"reactor-mgmt: {exc}", file=sys.stderr)
                status = max(status, EXIT_ERR)
                continue
            status = max(status, self.one_shot(words))
        return status

    @property
    def label(self) -> str:
        return self.endpoints[0].label if not self.fanned else f"{len(self.endpoints)} endpoints"


# ---- the interactive shell ----


def parse_help(text: str) -> List[Tuple[Tuple[str, ...], List[str]]]:
    """(command words, --options) for each `  usage  summary` line of a `help` listing."""
    commands = []
    for line in text.splitlines():
        if not line.startswith("  "):
            continue
        tokens = line.strip().split("  ")[0].split()
        words = []
        for token in tokens:
            if token.startswith(("[", "-")) or token.isupper():
                break
            words.append(token)
        options = [token.strip("[]") for token in tokens if token.lstrip("[").startswith("--")]
        if words:
            commands.append((tuple(words), options))
    return commands


class Completer:
    """Readline completion of command names word by word (`sh` -> `show`, `show j` -> `show
    job`), `help TOPIC`, and a complete command's --options."""

    def __init__(self, commands: List[Tuple[Tuple[str, ...], List[str]]]) -> None:
        self.commands = commands
        self.matches: List[str] = []

    def candidates(self, before: List[str], text: str) -> List[str]:
        """Completions of ``text`` after the words ``before``, each with the space that Python's
        readline does not append by itself (so `show j` still stops at the common `job`)."""
        if before[:1] == ["help"]:
            before = before[1:]
        depth = len(before)
        found = set()
        for words, _ in self.commands:
            if len(words) > depth and list(words[:depth]) == before and words[depth].startswith(text):
                found.add(words[depth])
        if not found and text.startswith("-"):
            for words, options in self.commands:
                if list(words) == before[: len(words)]:
                    found.update(option for option in options if option.startswith(text))
        return sorted(word + " " for word in found)

    def complete(self, text: str, state: int) -> Optional[str]:
        if state == 0:
            import readline

            line = readline.get_line_buffer()[: readline.get_begidx()]
            try:
                before = split_words(line)
            except ParseError:
                before = line.split()
            self.matches = self.candidates(before, text)
        return self.matches[state] if state < len(self.matches) else None


def _kept_out_of_history(line: str) -> bool:
    """Whether a line typed at the prompt may hold a secret, judged without parsing it (on its
    words with quotes and backslashes taken out): any `auth` word (`auth TOKEN`, `watch 1 auth
    TOKEN`), and any `config set`, as the client cannot know which settings are secret."""
    words = [word.replace('"', "").replace("'", "").replace("\\", "") for word in line.split()]
    return "auth" in words or any(pair == ("config", "set") for pair in zip(words, words[1:]))


def _typed_token(words: List[str]) -> Optional[str]:
    """The token of an `auth TOKEN` typed at the prompt, or None (`auth challenge` asks for a
    challenge: it is a command, sent as one)."""
    return words[1] if len(words) == 2 and words[0] == "auth" and words[1] != "challenge" else None


def _authenticated(client: Client, token: str) -> Generator[Tuple[str, Any], None, None]:
    """A typed `auth TOKEN` as the events of an exchange: Client.authenticate's answer."""
    yield "result", client.authenticate(token)


class _Shell:
    def __init__(self, runner: _Runner) -> None:
        self.runner = runner
        self.client: Optional[Client] = None
        self.readline: Any = None

    def loop(self) -> int:
        runner = self.runner
        if not runner.fanned:
            try:
                self.client = Client(runner.endpoints[0], timeout=runner.timeout, token=runner.token, tls=runner.tls)
            except RemoteError as exc:  # the token was refused
                print(f"ERR {exc.message}", file=sys.stderr)
                return EXIT_ERR
            except (ConnectionFailed, ClientTimeout) as exc:
                print(f"reactor-mgmt: {exc}", file=sys.stderr)
                return EXIT_UNREACHABLE
        self._setup_readline()
        prompt = f"{runner.label}> "
        try:
            while True:
                try:
                    line = input(prompt)
                except EOFError:
                    print()
                    return EXIT_OK
                except KeyboardInterrupt:
                    print()
                    continue
                except UnicodeDecodeError as exc:  # stdin could not take surrogateescape
                    print(f"reactor-mgmt: cannot read the line: {exc.reason}", file=sys.stderr)
                    continue
                # A token or a secret setting's value stays out of the history file, decided from
                # the raw text: a line that does not parse (`auth "s3cret`, an unbalanced quote)
                # holds the token all the same.
                if _kept_out_of_history(line) and self.readline is not None:
                    self.readline.remove_history_item(self.readline.get_current_history_length() - 1)
                try:
                    words = split_words(line)
                except ParseError as exc:
                    print(f"reactor-mgmt: {exc}", file=sys.stderr)
                    continue
                if not words:
                    continue
                if words in (["quit"], ["exit"]):
                    return EXIT_OK
                if self.client is None and _typed_token(words) is not None:
                    # Fanned out, each command connects to every endpoint anew: sent as a command,
                    # the token would authenticate connections that close at once.
                    runner.token = _typed_token(words)
                    print("reactor-mgmt: token kept: the next commands authenticate with it", file=sys.stderr)
                    continue
                level = level_set_by({"argv": words}) if self.client is None else None
                if self.run(words) == EXIT_OK and level is not None:
                    # Likewise `level NAME` (not the query `level`): it is sent now, and once every
                    # endpoint has agreed, each later connection lowers itself to it first, as a
                    # Client does when it reconnects.
                    runner.level = level
                    print(f"reactor-mgmt: level kept: the next commands run at {level}", file=sys.stderr)
        finally:
            self._save_history()
            if self.client is not None:
                self.client.close()

    def run(self, words: List[str]) -> Optional[int]:
        """Runs one command typed at the prompt; fanned out, returns its exit status."""
        if self.client is None:
            try:
                return self.runner.one_shot(words)
            except KeyboardInterrupt:
                print("\r^C (interrupted)", file=sys.stderr)
                return EXIT_INTERRUPTED
        printer = _Printer(False, self.runner.as_json, sys.stdout, sys.stderr)
        endpoint = self.client.endpoint
        token = _typed_token(words)
        # A typed token goes as the --token one does (challenge-response when offered, else in
        # clear text only where that is safe: not to a socket --app could not verify), and is
        # the session's token once accepted.
        events = self.client.exchange({"argv": words}) if token is None else _authenticated(self.client, token)
        try:
            for kind, value in events:
                printer(endpoint, kind, value)
                if kind == "item":
                    sys.stdout.flush()
        except RemoteError as exc:
            printer(endpoint, "error", exc)
        except ReactorMgmtError as exc:  # lost, timed out: the next command reconnects
            print(f"reactor-mgmt: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            # A stream ends only when its client leaves: the exchange dropped the connection,
            # and the next command opens a new one.
            stopped = "stream stopped" if printer.items else "interrupted"
            sys.stdout.flush()
            print(f"\r^C ({stopped})", file=sys.stderr)
        finally:
            events.close()
            printer.flush()
        return None

    # ---- readline ----

    def _setup_readline(self) -> None:
        try:
            import readline
        except ImportError:  # pragma: no cover - Python built without it
            return
        self.readline = readline
        try:
            readline.read_history_file(os.path.expanduser(HISTORY_FILE))
        except OSError:
            pass
        readline.set_history_length(_HISTORY_LENGTH)
        completer = Completer(self._fetch_commands())
        readline.set_completer(completer.complete)
        readline.set_completer_delims(" \t\n")
        if "libedit" in (readline.__doc__ or ""):  # pragma: no cover - macOS
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")

    def _fetch_commands(self) -> List[Tuple[Tuple[str, ...], List[str]]]:
        try:
            if self.client is not None:
                listing = self.client.call("help")
            else:
                with Client(
                    self.runner.endpoints[0], timeout=self.runner.timeout, token=self.runner.token, tls=self.runner.tls
                ) as client:
                    listing = client.call("help")
        except (ReactorMgmtError, OSError):
            return []  # no completion is better than no shell
        return parse_help(listing) if isinstance(listing, str) else []

    def _save_history(self) -> None:
        if self.readline is None:
            return
        try:
            self.readline.write_history_file(os.path.expanduser(HISTORY_FILE))
        except OSError:
            pass
