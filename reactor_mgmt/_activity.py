# Who did what, who is connected, and whether the host's loop stalled: the part of the operator
# toolkit that watches the server at work (issue 18, items 5 to 7). install_activity() puts
# these in place, each only when asked for, so a server without them pays nothing:
#
#   * an observer on the dispatcher (Dispatcher.observe), called only for a request slower than
#     slow_ms or, with audit on, one run at or above audit_level (and every `auth` and `client
#     kill`, and a `watch` of any of these, checked by audited() when a `watch` is observed),
#     with the command, its arguments, the outcome and the duration. The duration comes
#     from the clock readings the session takes anyway to check poll()'s budget, so a fast
#     request costs a comparison. It keeps a ring of the last 128 slow commands and, with audit
#     on, writes one record per audited command to the `reactor_mgmt.audit` logger and to a ring
#     of 1,000 for `audit [N]`. With `clients`, each connection's last request is kept on it
#     by the dispatcher (Connection.last_request, Dispatcher.keep_last) and its name here, in a
#     WeakKeyDictionary, so a departed client is forgotten with its Connection;
#   * the gap between polls: poll() itself reads the clock once per call (Loop.gap_from) and
#     keeps the longest gap between one poll() returning and the next one starting, which shows
#     a host loop that blocked (`stats` gains poll_gap_max_ms). Under attach_asyncio() poll()
#     runs only when there is work, so the gap there is the quiet time between requests;
#   * with stall_after, a watch on poll() (Loop.watch) that arms faulthandler's C-level
#     watchdog while poll() runs handlers, so a loop stuck in one gets every thread's stack
#     written out, with no Python thread involved;
#   * the commands: `show slow`, `audit [N]`, `clients`, `client kill`, `client name`, `client id`.
#
# Secrets never reach a record, a log line or a listing: words are masked as they are stored in
# a ring or shown (masked_words); the one copy in clear is each connection's last request, the
# dispatcher's own argument list, kept for `clients` and masked when listed. The arguments of
# `auth` (and its subcommands), every word after an `auth` word, the value of any parameter or
# option whose name is in SECRET_PARAMETERS (or the server's secret_params), and what a command's
# masker says (`config set` of a secret setting) become "***".
#
# This is a services-layer module, like _builtins: it sees the server, the dispatcher and the
# loop only through the small Protocols below, and touches a connection only through its public
# attributes (last_request, transport.opened, last_active, bytes_in, bytes_out, out_size, sock).
from __future__ import annotations

import logging
import time
import weakref
from collections import deque

from ._commands import LEVEL_RANK, LEVELS, level_rank
from ._errors import CommandError, ConfigError, PermissionDenied, UsageError
from ._log import format_address, log
from ._render import Report, render_table
from ._replies import Pending, Stream
from ._session import Connection
from ._wire import TEXT, error_reply

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Set, Tuple

    from ._commands import Command, Registry
    from ._dispatch import Stats

    class Server(Protocol):
        """What the activity tools use of the server: its public surface."""

        registry: Registry
        stats: Stats

        @property
        def connections(self) -> List[Connection]: ...
        def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> object: ...

    class Dispatcher(Protocol):
        observer: Optional[Callable[[Any, Any, str, float], None]]
        keep_last: bool

        def observe(
            self,
            observer: Callable[[Any, Any, str, float], None],
            *,
            slower_than: float = ...,
            at_or_above: Optional[int] = ...,
            names: Iterable[str] = ...,
            prefixes: Tuple[str, ...] = ...,
        ) -> None: ...

    class Loop(Protocol):
        watch: Any
        gap_from: Optional[float]

    Request = Tuple[Command, List[Any], Optional[Dict[str, Any]]]

# Parameter and option names whose values are never shown. A host extends it for every server
# (SECRET_PARAMETERS.add("api_key")) or per server (install_activity(..., secret_params=...)).
SECRET_PARAMETERS: Set[str] = {"token", "password", "secret"}
MASK = "***"
SLOW_KEPT = 128
AUDIT_KEPT = 1000
AUDIT_DEFAULT_SHOWN = 20
KILL_GRACE = 2.0  # a killed client that has not taken its notice by then is reset
MAX_NAME = 64
MAX_WORD, MAX_LINE = 128, 512  # characters of a command's words kept in a record
PARTS = ("slow", "clients", "gap")
# Audited whatever audit_level says: every form of auth, and `client kill`, which any connection
# may run on itself but which needs admin for anyone else.
ALWAYS_AUDITED = frozenset(("auth", "client kill"))

audit_log = logging.getLogger("reactor_mgmt.audit")
_installed: weakref.WeakSet[Any] = weakref.WeakSet()  # dispatchers with the tools on
_UNKNOWN = object()


def install_activity(
    server: Server,
    dispatcher: Dispatcher,
    loop: Loop,
    *,
    parts: Sequence[str] = PARTS,
    audit: bool = False,
    audit_level: str = "operator",
    slow_ms: float = 50.0,
    stall_after: Optional[float] = None,
    stall_file: Optional[str] = None,
    secret_params: Iterable[str] = (),
    maskers: Optional[Mapping[str, Callable[[List[Any]], List[Any]]]] = None,
    rankers: Optional[Mapping[str, Callable[[List[Any]], int]]] = None,
) -> None:
    """Installs the activity tools on one server.

    ``parts`` picks among "slow" (`show slow`: commands over ``slow_ms``), "clients" (`clients`,
    `client kill|name|id`) and "gap" (`stats` gains poll_gap_max_ms). ``audit`` adds the audit
    log (`reactor_mgmt.audit` logger, `audit [N]`) for commands at or above ``audit_level`` and
    every `auth`. ``stall_after`` arms faulthandler.dump_traceback_later(stall_after) while
    poll() runs handlers, writing to ``stall_file`` (a path, opened once for appending) or to
    stderr. faulthandler has one watchdog per process: see _StallWatch. ``secret_params`` adds
    parameter names whose values are masked, to SECRET_PARAMETERS. ``maskers`` maps a command's
    name to a function that takes its argument list and returns it with the secret values
    replaced by MASK, for commands whose secrets no parameter name tells (`config set NAME
    VALUE` of a secret setting); a JSON request's kwargs go to it one [NAME, VALUE] pair at a
    time. The rules above still apply to what it returns. ``rankers`` maps a command's name to
    a function that takes its argument list and returns the level rank that run acts at, for
    commands whose own level is lower than what they may change (`config set` of an admin
    setting): audit compares the higher of the two with ``audit_level``.
    """
    parts = tuple(parts)
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        raise ConfigError(f"unknown activity part(s) {', '.join(map(repr, unknown))}; expected {', '.join(PARTS)}")
    if dispatcher in _installed:
        raise ConfigError("the activity tools are already installed on this server")
    if not 0 <= slow_ms < float("inf"):
        raise ConfigError(f"slow_ms must be a number of milliseconds >= 0, not {slow_ms!r}")
    if stall_after is not None and not 0 < stall_after < float("inf"):
        raise ConfigError(f"stall_after must be a number of seconds > 0, not {stall_after!r}")
    if stall_file is not None and stall_after is None:  # it would be ignored: no watch, no file
        raise ConfigError("stall_file needs stall_after, the seconds a poll() may run handlers before a dump")
    audit_rank = level_rank(audit_level)  # ConfigError for an unknown level
    activity = Activity(
        server,
        slow_ms=slow_ms if "slow" in parts else None,
        clients="clients" in parts,
        audit_rank=audit_rank if audit else None,
        secret_params=secret_params,
        maskers=maskers,
        rankers=rankers,
    )
    activity.register(server.registry)  # first: a name the host registered already raises here
    _installed.add(dispatcher)
    if audit and audit_log.level == logging.NOTSET:
        # A level of its own, so that a level set on root or `reactor_mgmt` (by `log level`,
        # which refuses this logger itself) cannot filter the audit trail out. A level the host
        # gave it is the host's choice, and kept.
        audit_log.setLevel(logging.INFO)
    if activity.slow is not None or activity.audit is not None or activity.clients is not None:
        # The dispatcher calls the observer only for what it records: a request slower than
        # slow_ms, or an audited one. Every other request costs a comparison, and the clock
        # reading it shares with poll()'s budget check. An observer installed before ours wants
        # every request, so then ours is called for each and passes it on. For `clients`, each
        # connection keeps its last request (Connection.last_request, kept while observed).
        dispatcher.keep_last = activity.clients is not None
        activity.previous = dispatcher.observer
        if activity.previous is not None:
            dispatcher.observe(activity.observe)
        else:
            # Audited: at or above the audit level, and the commands audited whatever their
            # level (observe() checks each with audited(), so the names may be a superset):
            # `watch` is audited when the command it re-runs is, so audited() looks inside it,
            # and a command with a ranker may act above its own level.
            dispatcher.observe(
                activity.observe,
                slower_than=activity.slow_after,
                at_or_above=audit_rank if audit else None,
                names=ALWAYS_AUDITED | {"watch", *activity.rankers} if audit else (),
                prefixes=("auth ",) if audit else (),
            )
    if "gap" in parts:  # measured by poll() itself, with one clock read per call (see Loop.gap_from)
        server.stats.poll_gap_max = 0.0
        loop.gap_from = float("inf")  # the first poll() has no gap before it
    if stall_after is not None:
        stall_out = _open_stall_file(stall_file)
        watch = _StallWatch(stall_after, stall_out)
        if stall_file is not None:  # closed with the server's loop, which holds the watch
            weakref.finalize(watch, stall_out.close)
        watch.previous = loop.watch
        loop.watch = watch


def _open_stall_file(path: Optional[str]) -> Any:
    if path is not None:
        return open(path, "a")  # kept open: faulthandler writes to its descriptor from C
    import sys

    stderr = sys.stderr
    try:
        stderr.fileno()
    except (AttributeError, ValueError, OSError):  # replaced by an object with no descriptor
        stderr = sys.__stderr__
    return stderr


# ---- masking ----


def masked_words(
    request: Request,
    secrets: Set[str],
    registry: Optional[Registry] = None,
    maskers: Optional[Mapping[str, Callable[[List[Any]], List[Any]]]] = None,
) -> List[str]:
    """The words of a request as it may be shown: the command's name, then its arguments with
    every secret replaced by MASK (see the module comment). JSON values that are not strings
    are shown as JSON; a JSON request's kwargs as ``--name=value``."""
    command, args, kwargs = request
    words = command.name.split()
    if words[0] == "auth":  # `auth TOKEN`, `auth response HMAC`: however it was sent
        return words + [MASK] * len(args) + [f"--{key}={MASK}" for key in kwargs or ()]
    masker = maskers.get(command.name) if maskers else None
    if masker is not None:
        try:
            args = list(masker(list(args)))
            if kwargs:  # a JSON request's named arguments, each read as a NAME VALUE pair
                kwargs = {key: masker([key, value])[-1] for key, value in kwargs.items()}
        except Exception:  # a masker that fails shows nothing rather than everything
            log.exception("the masker of %r raised", command.name)
            args = [MASK] * len(args)
            kwargs = None if kwargs is None else dict.fromkeys(kwargs, MASK)
    shown = _mask_arguments(command, args, kwargs, secrets)
    if command.name == "watch" and registry is not None and len(args) > 1:
        # watch SECONDS COMMAND...: the watched command's own secrets, by its own signature
        try:
            inner, inner_args = registry.resolve([str(arg) for arg in args[1:]])
        except CommandError:
            pass
        else:
            shown = shown[:1] + masked_words((inner, inner_args, None), secrets, registry, maskers)
    if "auth" in shown:  # `watch 1 auth TOKEN`, `echo auth TOKEN`: whatever follows is a token
        at = shown.index("auth") + 1
        shown[at:] = [MASK] * (len(shown) - at)
    return words + shown


def _mask_arguments(
    command: Command, args: List[Any], kwargs: Optional[Dict[str, Any]], secrets: Set[str]
) -> List[str]:
    signature = command.signature
    names = [param.name for param in signature.positional]
    rest = signature.var_positional.name if signature.var_positional is not None else None
    options = signature.options
    # Options are read from the words as Signature.bind_text reads them; a JSON "cmd" request
    # (kwargs is a dict) passes args positionally.
    parse_options = kwargs is None and (bool(options) or rest is None)
    shown: List[str] = []
    position = 0
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if parse_options and arg.__class__ is str and arg.startswith("--"):
            if arg == "--":
                shown.append(arg)
                parse_options = False
                continue
            name, has_value, value = arg[2:].partition("=")
            key = name.replace("-", "_")
            secret = key in secrets
            if has_value:
                shown.append(f"--{name}={MASK if secret else value}")
                continue
            shown.append(arg)
            param = options.get(key)
            # An option that takes a value takes the next word; an unknown secret one may too.
            if index < len(args) and ((param is not None and not param.flag) or (param is None and secret)):
                value = args[index]
                index += 1
                shown.append(MASK if secret else _as_word(value))
            continue
        name = names[position] if position < len(names) else rest  # type: ignore[assignment, unused-ignore]
        position += 1
        shown.append(MASK if name in secrets else _as_word(arg))
    for key, value in (kwargs or {}).items():
        shown.append(f"--{key}={MASK if key in secrets else _as_word(value)}")
    return shown


def _as_word(value: Any) -> str:
    if value.__class__ is str:
        return value  # type: ignore[no-any-return, unused-ignore]  # (a str; mypy < 2 does not narrow Any here)
    import json

    return json.dumps(value, ensure_ascii=False, default=str)  # a value json.loads made


def join_words(words: List[str]) -> str:
    """Words as one line that reads back as the same words; a word with spaces, quotes or
    control characters is JSON-quoted, so a record is always one line. Like Redis's SLOWLOG,
    long words and long lines are cut (MAX_WORD, MAX_LINE), so the rings stay small."""
    import json

    shown = []
    for word in words:
        if not (word and word.isprintable() and not any(c in word for c in " \"'\\")):
            word = json.dumps(word, ensure_ascii=False)
        if len(word) > MAX_WORD:
            word = f"{word[:MAX_WORD]}...({len(word) - MAX_WORD} more characters)"
        shown.append(word)
    line = " ".join(shown)
    if len(line) > MAX_LINE:
        line = f"{line[:MAX_LINE]}...({len(line) - MAX_LINE} more characters)"
    return line


# ---- the observer and its commands ----


class _Client:
    """What the tools know of one connection beyond its Connection."""

    __slots__ = ("name", "uid")

    def __init__(self) -> None:
        self.name: Optional[str] = None
        self.uid: Any = _UNKNOWN


class Activity:
    """The observer's state, and the commands that show it."""

    def __init__(
        self,
        server: Server,
        *,
        slow_ms: Optional[float],
        clients: bool,
        audit_rank: Optional[int],
        secret_params: Iterable[str],
        maskers: Optional[Mapping[str, Callable[[List[Any]], List[Any]]]] = None,
        rankers: Optional[Mapping[str, Callable[[List[Any]], int]]] = None,
    ) -> None:
        self.server = server
        self.maskers = dict(maskers or {})
        self.rankers = dict(rankers or {})
        self.previous: Optional[Callable[[Any, Any, str, float], None]] = None
        self.secret_params = frozenset(secret_params)  # with SECRET_PARAMETERS, as it is when shown
        self.slow_ms = slow_ms
        self.slow_after = float("inf") if slow_ms is None else slow_ms / 1000
        self.slow: Optional[Deque[Tuple[float, float, int, str, str]]] = (
            deque(maxlen=SLOW_KEPT) if slow_ms is not None else None
        )
        self.clients: Optional[weakref.WeakKeyDictionary[Connection, _Client]] = (
            weakref.WeakKeyDictionary() if clients else None
        )
        self.killed: weakref.WeakSet[Connection] = weakref.WeakSet()  # killed, still leaving
        self.audit_rank = audit_rank
        self.audit: Optional[Deque[Dict[str, Any]]] = deque(maxlen=AUDIT_KEPT) if audit_rank is not None else None

    def observe(self, conn: Connection, request: Optional[Request], outcome: str, seconds: float) -> None:
        """Dispatcher.observer: called only for a request slower than slow_ms or one that
        audited() says is audited (see install_activity), or for every request when another
        observer was there first and wants them all."""
        if request is not None:
            if seconds > self.slow_after:
                self.record_slow(conn, request, seconds)
            if self.audit_rank is not None and self.audited(request):
                self.record_audit(conn, request, outcome, seconds)
        previous = self.previous
        if previous is not None:
            previous(conn, request, outcome, seconds)

    def audited(self, request: Request) -> bool:
        """Whether a request gets an audit record: a command at or above the audit level (or
        whose ranker says this run acts at or above it), every form of auth and `client kill`
        whatever the level, and a `watch` of any of these. The
        watch is recorded once, as the watch request (masked_words masks what it re-runs): its
        re-runs are not requests, and the dispatcher sees only the watch."""
        rank = self.audit_rank
        if rank is None:
            return False
        command, args, _ = request
        name = command.name
        if command.rank >= rank or name in ALWAYS_AUDITED or name.startswith("auth "):
            return True
        ranker = self.rankers.get(name)
        if ranker is not None:
            try:
                if ranker(list(args)) >= rank:
                    return True
            except Exception:  # a ranker that fails audits rather than not
                log.exception("the ranker of %r raised", name)
                return True
        if name == "watch" and len(args) > 1:  # watch SECONDS COMMAND..., resolved as masked_words does
            try:
                inner, inner_args = self.server.registry.resolve([str(arg) for arg in args[1:]])
            except CommandError:
                return False
            return inner.name != "watch" and self.audited((inner, list(inner_args), None))
        return False

    def words(self, request: Request) -> str:
        return join_words(
            masked_words(request, SECRET_PARAMETERS | self.secret_params, self.server.registry, self.maskers)
        )

    def state(self, conn: Connection) -> _Client:
        assert self.clients is not None
        state = self.clients.get(conn)
        if state is None:
            state = self.clients[conn] = _Client()
        return state

    # ---- slow commands ----

    def record_slow(self, conn: Connection, request: Request, seconds: float) -> None:
        assert self.slow is not None
        self.slow.append((time.time(), seconds, conn.id, format_address(conn.peer), self.words(request)))

    def show_slow(self) -> Report:
        """The last 128 commands slower than slow_ms, newest first."""
        assert self.slow is not None
        rows = [
            {"time": _timestamp(when), "ms": round(seconds * 1000, 3), "conn": conn_id, "peer": peer, "command": words}
            for when, seconds, conn_id, peer, words in reversed(self.slow)
        ]
        head = (
            f"slow_ms: {self.slow_ms:g} ({len(rows)} of the last {SLOW_KEPT} commands slower than that, newest first)"
        )
        return _report(head, rows, {"slow_ms": self.slow_ms, "kept": SLOW_KEPT, "commands": rows})

    # ---- audit ----

    def record_audit(self, conn: Connection, request: Request, outcome: str, seconds: float) -> None:
        assert self.audit is not None
        record = {
            "time": _timestamp(time.time()),
            "conn": conn.id,
            "peer": format_address(conn.peer),
            "uid": self.peer_uid(conn),
            "listener": format_address(conn.listener.address),
            "level": conn.level_name,
            "command": self.words(request),
            "outcome": outcome,
            "ms": round(seconds * 1000, 3),
        }
        self.audit.append(record)
        audit_log.info(
            "conn=%d peer=%s uid=%s listener=%s level=%s outcome=%s ms=%.3f command=%s",
            record["conn"],
            record["peer"],
            "-" if record["uid"] is None else record["uid"],
            record["listener"],
            record["level"],
            outcome,
            record["ms"],
            record["command"],
            extra={"audit": record},
        )

    def peer_uid(self, conn: Connection) -> Optional[int]:
        """The peer's uid on a Unix socket (SO_PEERCRED, where the platform has it), else None;
        asked once per connection."""
        state = self.state(conn) if self.clients is not None else None
        if state is not None and state.uid is not _UNKNOWN:
            return state.uid  # type: ignore[no-any-return]
        uid = _peer_uid(conn.transport)
        if state is not None:
            state.uid = uid
        return uid

    def show_audit(self, n: int = AUDIT_DEFAULT_SHOWN) -> Report:
        """The last N audit records, oldest first (N: 1 to 1000, default 20)."""
        assert self.audit is not None
        if not 1 <= n <= AUDIT_KEPT:
            raise UsageError(f"usage: audit [N] (N must be from 1 to {AUDIT_KEPT})")
        records = list(self.audit)[-n:]
        level = LEVELS[self.audit_rank or 0]
        head = (
            f"audit: {len(records)} of the last {AUDIT_KEPT} records (commands at {level} level "
            f"or above, and auth), oldest first"
        )
        return _report(head, records, records)

    # ---- clients ----

    def list_clients(self) -> List[Dict[str, Any]]:
        """Every connection: peer, listener, level, age, idle time, last command, bytes, state."""
        now = time.monotonic()
        rows = []
        for conn in sorted(self.server.connections, key=lambda conn: conn.id):
            transport = conn.transport
            state = self.state(conn)
            request = conn.last_request  # kept by the dispatcher (keep_last); masked when shown
            rows.append(
                {
                    "id": conn.id,
                    "peer": format_address(conn.peer),
                    "listener": format_address(conn.listener.address),
                    "level": conn.level_name,
                    "age_s": round(now - transport.opened, 1),
                    "idle_s": round(now - transport.last_active, 1),
                    "last": self.words(request) if request is not None else None,
                    "bytes_in": transport.bytes_in,
                    "bytes_out": transport.bytes_out,
                    "unsent": transport.out_size,
                    "state": _state_of(conn, request),
                    "name": state.name,
                }
            )
        return rows

    def kill(self, conn: Connection, id: Optional[int], idle: Optional[float], peer: Optional[str]) -> str:
        """client kill ID|--idle SECONDS|--peer ADDR: see register()."""
        given = (id is not None) + (idle is not None) + (peer is not None)
        if given != 1:
            raise UsageError(
                f"usage: {_KILL_USAGE} ({'give one of' if not given else 'only one of'} ID, --idle, --peer)"
            )
        if id is not None and id < 1:
            raise UsageError(f"usage: {_KILL_USAGE} (ID must be a connection id, 1 or more)")
        if idle is not None and not 0 <= idle < float("inf"):
            raise UsageError(f"usage: {_KILL_USAGE} (SECONDS must be a number, 0 or more)")
        if peer is not None and not peer:
            raise UsageError(f"usage: {_KILL_USAGE} (ADDR must not be empty)")
        if id == conn.id:  # one's own connection: always allowed, and answered by the notice itself
            _kill(self.server, conn, conn)
            raise CommandError("killed by admin", code="killed")
        if conn.level < LEVEL_RANK["admin"]:
            raise PermissionDenied("permission denied: 'client kill' needs admin")
        now = time.monotonic()
        targets = []
        for other in self.server.connections:
            # --idle and --peer skip the caller; one killed already is on its way out
            if other is conn or other.closed or other in self.killed:
                continue
            if id is not None:
                match = other.id == id
            elif idle is not None:
                match = now - other.transport.last_active >= idle
            else:
                address = format_address(other.peer)
                match = peer in (address, address.rpartition(":")[0].strip("[]"))
            if match:
                targets.append(other)
        for target in targets:
            _kill(self.server, target, conn)
            self.killed.add(target)
        return f"OK ({len(targets)} killed)"

    def set_name(self, conn: Connection, name: str) -> str:
        if not 1 <= len(name) <= MAX_NAME or not name.isprintable() or any(c.isspace() for c in name):
            raise UsageError(f"usage: client name NAME (1 to {MAX_NAME} printable characters, no spaces)")
        self.state(conn).name = name
        return "OK"

    # ---- registration ----

    def register(self, registry: Registry) -> None:
        def add(name: str, fn: Any, level: str) -> Command:
            return registry.add(name, fn, builtin=True, level=level)

        if self.slow is not None:

            def show_slow() -> Report:
                """The last 128 commands slower than slow_ms, newest first."""
                return self.show_slow()

            add("show slow", show_slow, "admin")
        if self.audit is not None:

            def audit(n: int = AUDIT_DEFAULT_SHOWN) -> Report:
                """The last N audit records, oldest first: audit [N] (1 to 1000, default 20).

                One record per command run at the audit level or above, and per auth: time,
                connection, peer (and uid on a Unix socket), listener, level, the command's
                words with secrets masked, outcome and duration.
                """
                return self.show_audit(n)

            add("audit", audit, "admin")
        if self.clients is not None:

            def clients() -> List[Dict[str, Any]]:
                """Every connection: id, peer, listener, level, age, idle, last command, bytes, state."""
                return self.list_clients()

            def client_kill(
                id: Optional[int] = None, *, idle: Optional[float] = None, peer: Optional[str] = None, conn: Connection
            ) -> str:
                """Disconnects clients: client kill ID|--idle SECONDS|--peer ADDR.

                Each one killed receives 'ERR killed by admin', then EOF. --idle and --peer
                never match the connection that asks; ADDR is host:port or a host. Any
                connection may kill itself by its id (see 'client id'); killing another needs
                admin. No match is not an error: OK (0 killed).
                """
                return self.kill(conn, id, idle, peer)

            def client_name(name: str, conn: Connection) -> str:
                """Names this connection in 'clients': client name NAME."""
                return self.set_name(conn, name)

            def client_id(conn: Connection) -> int:
                """This connection's id."""
                return conn.id

            add("clients", clients, "operator")
            add("client kill", client_kill, "user").usage = _KILL_USAGE
            add("client name", client_name, "user")
            add("client id", client_id, "user")


_KILL_USAGE = "client kill ID|--idle SECONDS|--peer ADDR"


def _report(head: str, rows: List[Dict[str, Any]], data: Any) -> Report:
    return Report(head + ("\n" + render_table(rows) if rows else ""), data)


def _state_of(conn: Connection, request: Optional[Request]) -> str:
    if conn.closing:
        return "closing"
    waiting = conn.waiting
    if waiting is None:
        return "idle"
    if isinstance(waiting, Pending):
        return "pending"
    if isinstance(waiting, Stream) and waiting.until_input:  # a subscription: named for its command
        name = request[0].name if request is not None else "subscription"
        return {"log tail": "tail"}.get(name, name)
    return "stream"


def _kill(server: Server, target: Connection, by: Connection) -> None:
    """Its waiting reply dropped (a stream would otherwise keep pumping), the notice, then EOF;
    a client that has not taken it all KILL_GRACE seconds later is reset. One already closing
    (lingering for its client's EOF, or cut off and stuck with output it does not read) is reset
    at once: what it was owed was sent, or never will be."""
    if target is not by:
        log.info("connection #%d (%s) killed by connection #%d", target.id, format_address(target.peer), by.id)
        if target.closing:
            target.transport.reset()
            return
    if target is not by:
        reply_id = target.waiting_id if target.waiting is not None else TEXT
        target.cancel_waiting()
        target.write(error_reply(reply_id, "killed", "killed by admin"))
    # else it kills itself, answered by its own error, and what it waits on, if anything, is
    # the `watch` running this very kill: closing that generator from inside it raises
    # ("generator already executing"); the error ends the stream instead.
    target.close()
    server.call_later(KILL_GRACE, _reset_if_open, weakref.ref(target))


def _reset_if_open(conn_ref: Callable[[], Optional[Connection]]) -> None:
    conn = conn_ref()
    if conn is not None and not conn.closed:
        conn.transport.reset()


def _peer_uid(transport: Any) -> Optional[int]:
    return transport.peer_uid()  # type: ignore[no-any-return]


def _timestamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"


# ---- the poll() watch ----


class _StallWatch:
    """Loop.watch, for stall_after: handling() arms faulthandler.dump_traceback_later() as
    poll() starts running handlers, and exited() cancels it as poll() returns, so a poll() stuck
    in a handler for stall_after seconds gets every thread's stack written out by a C-level
    watchdog. faulthandler has ONE such watchdog per process: a second server with
    stall_after, or the host's own dump_traceback_later() (pytest's faulthandler_timeout too),
    replaces it, and every poll() here cancels whichever is armed. A handler's own poll() skips
    the watch, so the watchdog stays armed for the handler that called it.
    """

    __slots__ = ("stall_after", "stall_out", "arm", "disarm", "previous", "__weakref__")

    def __init__(self, stall_after: float, stall_out: Any) -> None:
        import faulthandler

        self.stall_after = stall_after
        self.stall_out = stall_out
        self.arm = faulthandler.dump_traceback_later
        self.disarm = faulthandler.cancel_dump_traceback_later
        self.previous: Any = None  # a watch installed before ours, called after ours

    def entered(self) -> None:
        if self.previous is not None:
            self.previous.entered()

    def handling(self) -> None:
        self.arm(self.stall_after, repeat=False, file=self.stall_out, exit=False)
        if self.previous is not None:
            self.previous.handling()

    def exited(self) -> None:
        self.disarm()
        if self.previous is not None:
            self.previous.exited()
