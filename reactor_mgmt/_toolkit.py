# The operator's toolkit (issue 18): commands that every long-running Python process wants and
# that need no code of the host's own. `show threads` says where each thread is; `gc` and
# `tracemalloc ...` say what holds memory; `log level` changes a logger's level, for a while if
# asked; `config get/set/diff` reads and changes the settings the host declares. They are
# ordinary registered commands, as the builtins are, installed by Server(toolkit=True) or
# server.add_toolkit(*parts), and they see the server only through the Protocol below.
#
# Installing only registers commands: the idle tick and a plain request cost what they did. The
# heavy modules (logging, gc, tracemalloc, inspect, linecache) are imported by the commands that
# use them. Every bound is stated in its command's help and checked before any work is done.
# Nothing here starts a thread: a timed log level reverts through server.call_later, and only
# if the logger still has the level the command set, so a revert never clobbers a change made
# after it (pelican#2896). `config set` converts values with the command layer's Param, so its
# errors read as a command's do, and checks every pair before it changes any (Redis's multi
# CONFIG SET). Server's add_toolkit(), setting() and settings_from() delegate to a Toolkit
# that the server makes on first use, so a server without the toolkit never imports this.
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Literal, Optional, Set, Tuple

from ._commands import LEVELS, Command, Param, level_rank
from ._errors import CommandError, ConfigError, PermissionDenied, UsageError, error_parts
from ._log import log
from ._render import Report, render_table, render_text
from ._session import Connection

if TYPE_CHECKING:
    from typing import Protocol

    from ._commands import Registry
    from ._dispatch import Stats
    from ._loop import TimerHandle

    class Server(Protocol):
        """What the toolkit uses of the server: its public surface, nothing private."""

        registry: Registry
        owner_thread: int
        stats: Stats  # these two for the activity parts (_activity.Server)

        @property
        def connections(self) -> List[Connection]: ...

        def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle: ...


PARTS = ("threads", "gc", "tracemalloc", "log", "config")

MAX_STACK = 100  # frames shown per thread, the innermost ones
GC_TOP, GC_TOP_MAX = 20, 100
TRACE_TOP, TRACE_TOP_MAX = 10, 100
TRACE_FRAMES_MAX = 25
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SERVER_FILE = os.path.join(_PACKAGE_DIR, "_server.py")
_builtin_type = type  # setting() has a parameter named type


class Toolkit:
    """The toolkit of one server: which parts are installed, and the state they keep."""

    def __init__(self, server: Server, dispatcher: Any = None, loop: Any = None) -> None:
        self.server = server
        self.dispatcher = dispatcher  # for the activity parts (_activity): its observer and poll watch
        self.loop = loop
        self.activity = False
        self.activity_parts: Tuple[str, ...] = ()  # what the one install_activity() call was given
        self.activity_options: Dict[str, Any] = {}
        self.installed: Set[str] = set()
        self.tracer = _Tracemalloc()
        self.log_levels = _LogLevels(server)
        self.settings = _Settings(self)

    def install(self, *parts: str, **activity_options: Any) -> None:
        """Installs ``parts`` (all of them when none is named). The activity parts ("slow",
        "clients", "gap", and the audit log with ``audit=True``) are installed once, in one go,
        with ``activity_options`` (see _activity.install_activity): a later call may name those
        parts and options again, but one that asks for a part or an option value not installed
        raises ConfigError rather than leave it out."""
        from ._activity import PARTS as ACTIVITY_PARTS

        # "audit" and "stall" name no command set of their own: the audit log (audit=True) and
        # the stall watchdog (stall_after=S), installed alone when only they are named.
        known = PARTS + ACTIVITY_PARTS + ("audit", "stall")
        unknown = [part for part in parts if part not in known]
        if unknown:
            raise ConfigError(f"unknown toolkit part {unknown[0]!r}; the parts are: {', '.join(known)}")
        if "audit" in parts:
            activity_options.setdefault("audit", True)
        activity = [part for part in parts if part in ACTIVITY_PARTS] if parts else list(ACTIVITY_PARTS)
        if self.activity:  # checked first, so that a call refused installs none of its parts
            self._check_activity(activity, activity_options)
        for part in [part for part in parts if part in PARTS] if parts else PARTS:
            if part not in self.installed:
                getattr(self, "_install_" + part)()
                self.installed.add(part)
        if (activity or activity_options) and not self.activity:
            from ._activity import install_activity

            given = dict(activity_options)
            maskers = {"config set": self.settings.masked, **(activity_options.pop("maskers", None) or {})}
            # `config set` runs at the lowest level of any writable setting: the audit log asks
            # the level of the settings it names.
            rankers = {"config set": self.settings.rank_of, **(activity_options.pop("rankers", None) or {})}
            install_activity(
                self.server,
                self.dispatcher,
                self.loop,
                parts=activity,
                maskers=maskers,
                rankers=rankers,
                **activity_options,
            )
            self.activity = True
            self.activity_parts, self.activity_options = tuple(activity), given

    def _check_activity(self, parts: Iterable[str], options: Dict[str, Any]) -> None:
        """Refuses a later call that asks the activity tools for more than they were installed
        with: they hook the dispatcher once, so what it asks for would be left out, silently
        (`Server(toolkit=True)` then `add_toolkit(audit=True)` had no audit log)."""
        from ._activity import install_activity

        installed = {**(install_activity.__kwdefaults__ or {}), **self.activity_options}
        missing = [part for part in parts if part not in self.activity_parts]
        changed = [key for key, value in options.items() if key not in installed or not _same(installed[key], value)]
        if missing or changed:
            asked = [f"part {part!r}" for part in missing] + [f"{key}={options[key]!r}" for key in changed]
            raise ConfigError(
                f"the activity tools are installed already, without {', '.join(asked)}: name every activity "
                "part and option in one add_toolkit() call (or in Server(audit=...))"
            )

    def add(self, name: str, fn: Callable[..., Any], level: str = "admin", usage: Optional[str] = None) -> Command:
        registry = self.server.registry
        try:
            command = registry.add(name, fn, builtin=True, level=level)
        except ConfigError:
            if name not in registry.commands:
                raise
            raise ConfigError(
                f"the toolkit's {name!r} is already a command of the host's: install the toolkit "
                "before registering that command (which then takes the name over)"
            ) from None
        if usage is not None:
            command.usage = usage
        return command

    def _install_threads(self) -> None:
        server = self.server

        def show_threads() -> Report:
            """Every thread's stack, innermost call last; the thread running poll() is marked.

            Shows each thread's name, ident and daemon flag, and at most the 100 innermost
            frames of each. For the thread answering, the frames inside reactor_mgmt below
            poll() (this command on its way) are left out.
            """
            return thread_report(server.owner_thread)

        self.add("show threads", show_threads)

    def _install_gc(self) -> None:
        def gc_(n: int = GC_TOP) -> Report:
            """Collector state and the N most common types it tracks (N: 1 to 100, default 20).

            Shows the counts per generation, the thresholds, the collections so far and the
            number of objects tracked. Counting types walks every tracked object
            (gc.get_objects()): with millions of objects that takes a while, and poll() waits.
            """
            return gc_report(_bounded(n, 1, GC_TOP_MAX, "N", command))

        command = self.add("gc", gc_)

    def _install_tracemalloc(self) -> None:
        tracer = self.tracer

        def start(frames: Optional[int] = None) -> str:
            """Starts tracing allocations with FRAMES frames per traceback (1 to 25, default 1).

            Tracing costs memory and time on every allocation until 'tracemalloc stop'.
            """
            if frames is not None:
                _bounded(frames, 1, TRACE_FRAMES_MAX, "FRAMES", commands["start"])
            return tracer.start(frames)

        def top(n: int = TRACE_TOP, *, by: Literal["lineno", "filename", "traceback"] = "lineno") -> Report:
            """The N places that hold the most traced memory now (N: 1 to 100, default 10).

            --by groups by line (the default), by file, or by whole traceback (as many
            frames as 'tracemalloc start FRAMES' asked for).
            """
            return tracer.top(_bounded(n, 1, TRACE_TOP_MAX, "N", commands["top"]), by)

        def snapshot() -> str:
            """Takes a snapshot for 'tracemalloc diff' to compare with; only one is kept."""
            return tracer.take()

        def diff(n: int = TRACE_TOP, *, by: Literal["lineno", "filename", "traceback"] = "lineno") -> Report:
            """The N biggest changes since 'tracemalloc snapshot' (N: 1 to 100, default 10).

            The snapshot is kept, so later diffs compare with it too.
            """
            return tracer.diff(_bounded(n, 1, TRACE_TOP_MAX, "N", commands["diff"]), by)

        def stop() -> str:
            """Stops tracing, frees the traces, and drops the stored snapshot."""
            return tracer.stop()

        def status() -> Dict[str, Any]:
            """Whether tracing is on, the memory traced, and the stored snapshot."""
            return tracer.status()

        commands = {
            name: self.add(f"tracemalloc {name}", fn)
            for name, fn in (
                ("start", start),
                ("top", top),
                ("snapshot", snapshot),
                ("diff", diff),
                ("stop", stop),
                ("status", status),
            )
        }

    def _install_log(self) -> None:
        levels = self.log_levels

        def log_level(*words: str, conn: Connection) -> Any:
            """Shows or sets logger levels; with --for, the level reverts after SECONDS.

            With no arguments, lists the loggers whose level is set (root always). LOGGER
            ("root" or "" for the root logger) alone shows that logger's level. LEVEL is one of
            CRITICAL ERROR WARNING INFO DEBUG NOTSET. A revert happens in poll(), and only if
            the logger still has the level set here: a change made since is kept. A later
            'log level' on the same logger replaces a pending revert. SECONDS is at most 86400
            (a day): a level meant to stay is set without --for.

            A LOGGER that does not exist yet is made (so a level can be set before the module
            that logs is imported), but logging never frees a logger: this server makes at most
            64, counting the dotted parents it makes with them, and then sets only loggers that
            exist.
            """
            return levels.command(words, conn, command)

        command = self.add("log level", log_level, level="operator", usage="log level [LOGGER [LEVEL]] [--for SECONDS]")

    def _install_config(self) -> None:
        self.settings.register()


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _bounded(value: int, low: int, high: int, what: str, command: Command) -> int:
    if not low <= value <= high:
        raise UsageError(f"usage: {command.usage} ({what} must be between {low} and {high})")
    return value


# ---- show threads ----


def thread_report(owner_thread: int) -> Report:
    import linecache
    import sys
    import threading

    current = threading.get_ident()
    frames = sys._current_frames()
    try:
        by_ident = {thread.ident: thread for thread in threading.enumerate()}
        idents = [ident for ident in by_ident if ident is not None]
        idents += sorted(ident for ident in frames if ident not in by_ident)  # threads not made by threading
        entries = []
        for ident in idents:
            thread = by_ident.get(ident)
            stack, older, inner = _stack(frames.get(ident), trim=ident == current)
            entries.append(
                {
                    "name": thread.name if thread is not None else None,
                    "ident": ident,
                    "native_id": getattr(thread, "native_id", None),
                    "daemon": thread.daemon if thread is not None else None,
                    "runs_poll": ident == owner_thread,
                    "stack": [
                        {
                            "file": filename,
                            "line": line,
                            "function": function,
                            "code": linecache.getline(filename, line).strip() or None,
                        }
                        for filename, line, function in stack
                    ],
                    "older_frames_left_out": older,
                    "library_frames_left_out": inner,
                }
            )
    finally:
        del frames  # it holds our own frame: a cycle until the next collection
    return Report(_threads_text(entries), entries)


def _stack(frame: Any, trim: bool) -> Tuple[List[Tuple[str, int, str]], int, int]:
    """(file, line, function) per frame, outermost first, and how many frames were left out:
    older ones beyond MAX_STACK, and for the thread running this command, the frames inside
    reactor_mgmt above Server.poll (the dispatch that is running it)."""
    chain = []
    while frame is not None:
        chain.append(frame)
        frame = frame.f_back
    inner = 0
    if trim:
        for index, candidate in enumerate(chain):
            code = candidate.f_code
            if code.co_name == "poll" and os.path.abspath(code.co_filename) == _SERVER_FILE:
                inner = index
                break
    kept = chain[inner : inner + MAX_STACK]
    older = len(chain) - inner - len(kept)
    stack = [
        (f.f_code.co_filename, f.f_lineno or 0, getattr(f.f_code, "co_qualname", f.f_code.co_name))
        for f in reversed(kept)
    ]
    return stack, older, inner


def _threads_text(entries: List[Dict[str, Any]]) -> str:
    blocks = []
    for entry in entries:
        name = entry["name"] if entry["name"] is not None else "(not a threading.Thread)"
        details = [f"ident {entry['ident']}"]
        if entry["native_id"] is not None:
            details.append(f"native id {entry['native_id']}")
        if entry["daemon"] is not None:
            details.append("daemon" if entry["daemon"] else "not daemon")
        lines = [f"Thread {name} ({', '.join(details)})" + (": runs poll()" if entry["runs_poll"] else "")]
        if entry["older_frames_left_out"]:
            lines.append(f"  ({entry['older_frames_left_out']} older frames left out)")
        for frame in entry["stack"]:
            lines.append(f'  File "{frame["file"]}", line {frame["line"]}, in {frame["function"]}')
            if frame["code"]:
                lines.append(f"    {frame['code']}")
        if entry["library_frames_left_out"]:
            lines.append(
                f"  ({entry['library_frames_left_out']} frames inside reactor_mgmt, running this command, left out)"
            )
        if not entry["stack"]:
            lines.append("  (no Python frame)")
        blocks.append("\n".join(lines))
    return _count(len(entries), "thread") + "\n\n" + "\n\n".join(blocks)


# ---- gc ----


def _type_name(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    name = getattr(kind, "__qualname__", kind.__name__)
    return name if module in (None, "builtins") else f"{module}.{name}"


def gc_report(top: int) -> Report:
    import collections
    import gc

    stats = gc.get_stats()
    objects = gc.get_objects()
    tracked = len(objects)
    counts = collections.Counter(map(type, objects))
    del objects
    rows = [{"count": count, "type": _type_name(kind)} for kind, count in counts.most_common(top)]
    data: Dict[str, Any] = {
        "enabled": gc.isenabled(),
        "counts": list(gc.get_count()),
        "thresholds": list(gc.get_threshold()),
        "collections": [generation.get("collections", 0) for generation in stats],
        "collected": [generation.get("collected", 0) for generation in stats],
        "uncollectable": [generation.get("uncollectable", 0) for generation in stats],
        "tracked": tracked,
        "garbage": len(gc.garbage),
        "types": len(counts),
        "top_types": rows,
    }

    def spaced(values: List[int]) -> str:
        return " ".join(str(value) for value in values)

    text = render_text(
        {
            "enabled": "yes" if data["enabled"] else "no",
            "counts": spaced(data["counts"]) + "  (generations 0 1 2, as gc.get_count())",
            "thresholds": spaced(data["thresholds"]),
            "collections": spaced(data["collections"]),
            "collected": spaced(data["collected"]),
            "uncollectable": spaced(data["uncollectable"]),
            "tracked": f"{tracked} objects",
            "gc.garbage": data["garbage"],
        }
    )
    text += f"\nthe {len(rows)} most common of {len(counts)} types:\n" + render_table(rows)
    return Report(text, data)


# ---- tracemalloc ----

_BY = ("lineno", "filename", "traceback")


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB"


def _signed_kib(size: int) -> str:
    return f"{size / 1024:+.1f} KiB"


class _Tracemalloc:
    """The one stored snapshot, and the commands' work. tracemalloc itself is process-wide."""

    def __init__(self) -> None:
        self.snapshot: Any = None
        self.taken_at = 0.0

    @staticmethod
    def tracing() -> Any:
        import tracemalloc

        if not tracemalloc.is_tracing():
            raise CommandError("tracemalloc is not tracing: send 'tracemalloc start' first")
        return tracemalloc

    def start(self, frames: Optional[int]) -> str:
        import tracemalloc

        if tracemalloc.is_tracing():
            limit = tracemalloc.get_traceback_limit()
            if frames is not None and frames != limit:
                raise CommandError(
                    f"tracemalloc is already tracing with {_count(limit, 'frame')} per traceback: "
                    "send 'tracemalloc stop' first to change FRAMES"
                )
            return f"already tracing, {_count(limit, 'frame')} per traceback"
        frames = frames or 1
        tracemalloc.start(frames)
        return f"tracing, {_count(frames, 'frame')} per traceback"

    def _snapshot(self) -> Any:
        tracemalloc = self.tracing()
        snapshot = tracemalloc.take_snapshot()
        return snapshot.filter_traces(
            (
                tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
                tracemalloc.Filter(False, "<unknown>"),
                tracemalloc.Filter(False, tracemalloc.__file__),
            )
        )

    def top(self, n: int, by: str) -> Report:
        tracemalloc = self.tracing()
        current, peak = tracemalloc.get_traced_memory()
        stats = self._snapshot().statistics(by)[:n]
        rows = [{"size": stat.size, "count": stat.count, "traceback": _frames(stat.traceback)} for stat in stats]
        data = {"by": by, "traced_bytes": current, "peak_bytes": peak, "stats": rows}
        head = f"traced {_kib(current)} (peak {_kib(peak)}); the top {len(rows)} by {by}:\n"
        if by == "traceback":
            blocks = [
                f"#{i}: {_kib(stat.size)} in {stat.count} blocks\n" + "\n".join(stat.traceback.format())
                for i, stat in enumerate(stats, 1)
            ]
            return Report(head + "\n".join(blocks), data)
        table = [{"size": _kib(stat.size), "blocks": stat.count, "where": _where(stat.traceback, by)} for stat in stats]
        return Report(head + render_table(table, ["size", "blocks", "where"]), data)

    def take(self) -> str:
        snapshot = self._snapshot()
        replaced = self.snapshot is not None
        self.snapshot, self.taken_at = snapshot, time.monotonic()
        size = sum(trace.size for trace in snapshot.traces)
        return (
            f"snapshot taken: {len(snapshot.traces)} traces, {_kib(size)}"
            + ("; it replaces the last one" if replaced else "")
            + "; 'tracemalloc diff' compares with it"
        )

    def diff(self, n: int, by: str) -> Report:
        self.tracing()
        if self.snapshot is None:
            raise CommandError("no snapshot to compare with: send 'tracemalloc snapshot' first")
        stats = self._snapshot().compare_to(self.snapshot, by)[:n]
        rows = [
            {
                "size_diff": stat.size_diff,
                "size": stat.size,
                "count_diff": stat.count_diff,
                "count": stat.count,
                "traceback": _frames(stat.traceback),
            }
            for stat in stats
        ]
        age = time.monotonic() - self.taken_at
        head = f"the top {len(rows)} changes by {by} since the snapshot of {age:.0f} s ago:\n"
        data = {"by": by, "snapshot_age_s": round(age, 3), "stats": rows}
        if by == "traceback":
            blocks = [
                f"#{i}: {_signed_kib(stat.size_diff)} (now {_kib(stat.size)}), {stat.count_diff:+d} blocks "
                f"(now {stat.count})\n" + "\n".join(stat.traceback.format())
                for i, stat in enumerate(stats, 1)
            ]
            return Report(head + "\n".join(blocks), data)
        table = [
            {
                "change": _signed_kib(stat.size_diff),
                "size": _kib(stat.size),
                "blocks": f"{stat.count_diff:+d}",
                "now": stat.count,
                "where": _where(stat.traceback, by),
            }
            for stat in stats
        ]
        return Report(head + render_table(table, ["change", "size", "blocks", "now", "where"]), data)

    def stop(self) -> str:
        import tracemalloc

        had = self.snapshot is not None
        self.snapshot = None
        if not tracemalloc.is_tracing():
            return "tracemalloc was not tracing" + ("; the snapshot was dropped" if had else "")
        tracemalloc.stop()
        return "tracemalloc stopped; its traces" + (" and the snapshot" if had else "") + " were freed"

    def status(self) -> Dict[str, Any]:
        import tracemalloc

        tracing = tracemalloc.is_tracing()
        current, peak = tracemalloc.get_traced_memory()
        return {
            "tracing": tracing,
            "frames": tracemalloc.get_traceback_limit() if tracing else None,
            "traced_bytes": current,
            "peak_bytes": peak,
            "overhead_bytes": tracemalloc.get_tracemalloc_memory(),
            "snapshot_traces": None if self.snapshot is None else len(self.snapshot.traces),
            "snapshot_age_s": None if self.snapshot is None else round(time.monotonic() - self.taken_at, 3),
        }


def _frames(traceback: Any) -> List[Dict[str, Any]]:
    return [{"file": frame.filename, "line": frame.lineno} for frame in traceback]


def _where(traceback: Any, by: str) -> str:
    frame = traceback[0]
    return frame.filename if by == "filename" else f"{frame.filename}:{frame.lineno}"


# ---- log level ----


class _Revert:
    """A pending revert of a timed `log level`: the level it set, the one to restore, when, and
    its timer (cancelled when a later `log level` replaces it)."""

    __slots__ = ("level", "restore", "due", "timer")

    def __init__(self, level: int, restore: int, due: float) -> None:
        self.level = level
        self.restore = restore
        self.due = due
        self.timer: Optional[TimerHandle] = None


AUDIT_LOGGER = "reactor_mgmt.audit"  # the activity tools' audit log (_activity.audit_log)
# logging never frees a logger: `log level NAME LEVEL` for a NAME that does not exist makes one
# (and a placeholder for each missing dotted parent), there for the life of the process. Setting
# a level before the module that logs is imported is worth keeping, but a client sending new names
# would grow logging's registry without end; so this many entries, and then only names that exist.
MAX_MADE_LOGGERS = 64
# --for is the safety net that puts a noisy level back; a revert further away than a day is a slip
# (milliseconds for seconds, `--for 1e300`) that leaves DEBUG on for good while the listing says it
# reverts. A replaced revert's timer is cancelled, so this bound is not about memory.
MAX_FOR = 86400.0


def _logger_label(name: str) -> str:
    return name or "root"


class _LogLevels:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.reverts: Dict[str, _Revert] = {}  # logger name ("" for root) -> its pending revert
        self.seconds: Optional[Param] = None
        self.made = 0  # entries this server's `log level` added to logging's registry (MAX_MADE_LOGGERS)

    def command(self, words: Iterable[str], conn: Connection, command: Command) -> Any:
        positional, seconds = self._parse(list(words), command)
        if not positional:
            return self.listing()
        name = "" if positional[0] in ("", "root") else positional[0]
        if len(positional) == 1:
            if seconds is not None:
                raise UsageError(f"usage: {command.usage} (--for needs LEVEL)")
            return self.show(name)
        if name == AUDIT_LOGGER:
            # The audit trail: an operator who could raise its level could switch off the record
            # of what they do next (the record of this very change would come after it).
            raise CommandError(
                f"the level of {AUDIT_LOGGER} is not set here: it is the audit log, "
                "set it in the host's logging configuration"
            )
        level = positional[1].upper()
        if level not in LOG_LEVELS:
            raise UsageError(
                f"usage: {command.usage} (unknown level {positional[1]!r}; the levels are {' '.join(LOG_LEVELS)})"
            )
        return self.set(name, level, seconds, conn)

    def _parse(self, words: List[str], command: Command) -> Tuple[List[str], Optional[float]]:
        positional: List[str] = []
        seconds: Optional[float] = None
        index = 0
        while index < len(words):
            word = words[index]
            index += 1
            if word == "--":
                positional.extend(words[index:])
                break
            if word.startswith("--"):
                option, has_value, text = word[2:].partition("=")
                if option != "for":
                    raise UsageError(f"usage: {command.usage} (unknown option --{option})")
                if not has_value:
                    if index >= len(words):
                        raise UsageError(f"usage: {command.usage} (option --for needs a value)")
                    text = words[index]
                    index += 1
                seconds = self._seconds(text, command)
            else:
                positional.append(word)
        if len(positional) > 2:
            raise UsageError(f"usage: {command.usage} (too many arguments (expected at most 2))")
        return positional, seconds

    def _seconds(self, text: str, command: Command) -> float:
        if self.seconds is None:  # the command layer's conversion, so errors read the same
            import inspect

            self.seconds = Param(inspect.Parameter("seconds", inspect.Parameter.KEYWORD_ONLY), float)
        try:
            seconds = self.seconds.convert_value(text)
        except Exception as exc:
            raise UsageError(f"usage: {command.usage} ({exc})") from None
        if not 0 < seconds < float("inf"):
            raise UsageError(f"usage: {command.usage} (SECONDS must be more than 0)")
        if seconds > MAX_FOR:
            raise UsageError(
                f"usage: {command.usage} (SECONDS must be at most {MAX_FOR:g}, a day: "
                "a level meant to stay is set without --for)"
            )
        return float(seconds)

    @staticmethod
    def _existing(name: str) -> Any:
        """The logger of that name if it exists, else None: reading must not create loggers."""
        import logging

        if not name:
            return logging.getLogger()
        logger = logging.Logger.manager.loggerDict.get(name)
        return logger if isinstance(logger, logging.Logger) else None

    def _row(self, name: str, logger: Any) -> Dict[str, Any]:
        import logging

        revert = self.reverts.get(name)
        level = logger.level if logger is not None else logging.NOTSET
        if logger is None:  # not made yet: its level would come from the nearest logger above
            parent = name
            while logger is None and "." in parent:
                parent = parent.rpartition(".")[0]
                logger = self._existing(parent)
            logger = logger or logging.getLogger()
        return {
            "logger": _logger_label(name),
            "level": logging.getLevelName(level),
            "effective": logging.getLevelName(logger.getEffectiveLevel()),
            "reverts_to": None if revert is None else logging.getLevelName(revert.restore),
            "reverts_in_s": None if revert is None else round(max(0.0, revert.due - time.monotonic()), 1),
        }

    def listing(self) -> List[Dict[str, Any]]:
        import logging

        names = {
            name
            for name, logger in list(logging.Logger.manager.loggerDict.items())
            if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET
        }
        names.update(self.reverts)
        names.discard("")
        return [self._row(name, self._existing(name)) for name in ["", *sorted(names)]]

    def show(self, name: str) -> Dict[str, Any]:
        return self._row(name, self._existing(name))

    def _entries_for(self, name: str) -> int:
        """How many entries logging.getLogger(name) would add to logging's registry: the logger
        and a placeholder for each dotted parent not there yet. A logger that exists adds none,
        nor, usually, a placeholder (the parent of a logger the host made, so bounded)."""
        import logging

        registry = logging.Logger.manager.loggerDict
        if not name or isinstance(registry.get(name), logging.Logger):
            return 0
        new = 0 if name in registry else 1  # a placeholder becomes the logger in its place
        end = name.rfind(".")
        while end > 0:  # the walk of logging's Manager._fixupParents, up to the first logger
            parent = registry.get(name[:end])
            if parent is None:
                new += 1
            elif isinstance(parent, logging.Logger):
                break
            end = name.rfind(".", 0, end - 1)
        return new

    def set(self, name: str, level_name: str, seconds: Optional[float], conn: Connection) -> Report:
        import logging

        new = self._entries_for(name)
        if new and self.made + new > MAX_MADE_LOGGERS:
            needs = "" if new == 1 else f"; this name needs {new}"
            raise CommandError(
                f"no logger named {name!r} (log level makes at most {MAX_MADE_LOGGERS}, "
                f"counting the parents it makes, and has made {self.made}{needs})"
            )
        self.made += new
        logger = logging.getLogger(name) if name else logging.getLogger()
        old = logger.level
        level = logging.getLevelName(level_name)
        pending = self.reverts.pop(name, None)  # this change replaces it
        if pending is not None and pending.timer is not None:
            # Or its timer would stay in the heap, holding the revert, until due: a client
            # repeating a timed change piled up one per request (5,000 for 5,000).
            pending.timer.cancel()
        logger.setLevel(level)
        label = _logger_label(name)
        data: Dict[str, Any] = {
            "logger": label,
            "level": level_name,
            "was": logging.getLevelName(old),
            "reverts_to": None,
            "reverts_in_s": None,
        }
        text = f"{label}: {data['was']} -> {level_name}"
        if seconds is not None:
            # Under a timed change that is still in force, the level to go back to is the one
            # before it, not the timed one.
            restore = pending.restore if pending is not None and old == pending.level else old
            revert = _Revert(level, restore, time.monotonic() + seconds)
            self.reverts[name] = revert
            revert.timer = self.server.call_later(seconds, self._revert, name, revert)
            data["reverts_to"], data["reverts_in_s"] = logging.getLevelName(restore), seconds
            text += f" for {seconds:g} s, then {data['reverts_to']}"
        log.info(
            "connection #%d set the level of logger %s to %s%s",
            conn.id,
            label,
            level_name,
            "" if seconds is None else f" for {seconds:g} s",
        )
        return Report(text, data)

    def _revert(self, name: str, revert: _Revert) -> None:
        import logging

        if self.reverts.get(name) is not revert:
            return  # a later `log level` on this logger replaced it
        del self.reverts[name]
        logger = logging.getLogger(name) if name else logging.getLogger()
        label = _logger_label(name)
        if logger.level != revert.level:
            log.info(
                "the level of logger %s changed since it was set for a while: kept at %s, not reverted",
                label,
                logging.getLevelName(logger.level),
            )
            return
        logger.setLevel(revert.restore)
        log.info("the level of logger %s went back to %s", label, logging.getLevelName(revert.restore))


# ---- settings ----


class Setting:
    """One declared setting: ``obj.attr``, converted by ``param``, checked by ``check``."""

    __slots__ = ("name", "obj", "attr", "param", "level", "rank", "check", "read_only", "help", "secret", "default")

    def __init__(
        self,
        name: str,
        obj: Any,
        attr: str,
        param: Param,
        level: str,
        check: Optional[Callable[[Any], Any]],
        read_only: bool,
        help: Optional[str],
        secret: bool,
        default: Any,
    ) -> None:
        self.name, self.obj, self.attr, self.param = name, obj, attr, param
        self.level, self.rank = level, level_rank(level)
        self.check, self.read_only, self.help, self.secret = check, read_only, help, secret
        self.default = default

    @property
    def value(self) -> Any:
        return getattr(self.obj, self.attr)

    def shown(self, value: Any) -> Any:
        return "***" if self.secret else value

    def text(self, value: Any) -> str:
        import enum

        if self.secret:
            return "***"
        if isinstance(value, enum.Enum):
            return value.name
        return str(value)

    def __repr__(self) -> str:
        return f"<Setting {self.name} {self.level}{' read-only' if self.read_only else ''}>"


_SET_USAGE = "config set NAME VALUE [NAME VALUE ...]"


class _Settings:
    """The declared settings and the `config` commands over them."""

    def masked(self, words: List[Any]) -> List[Any]:
        """`config set`'s words as the audit log may show them: a secret setting's value as ***.

        Not by position: `config set -- api_key VALUE` (the "--" is a word of its own) or a
        value that names a setting would shift the pairs, so the word after ANY word naming a
        secret setting is masked, and so is what follows "=" in a `NAME=VALUE` word, which
        config set refuses but which a record would still show. Masking too much is safe.

        A request whose pairs config set refuses (an odd number of words, or a NAME that is no
        setting) may hold a secret after a name mistyped (`API_KEY VALUE`) or shifted out of
        place: there, the word after any word that names no setting is masked too (a leading
        "--" aside), and so is what follows "=" in any word. A refused request loses nothing
        to masking that the audit needs.
        """
        refused = len(words) % 2 == 1 or any(str(name) not in self.items for name in words[::2])
        shown: List[Any] = []
        after_secret = after_unknown = False
        for index, word in enumerate(words):
            text = str(word)
            name, has_value, _ = text.partition("=")
            if after_secret or after_unknown:
                shown.append("***")
            elif has_value and (self._secret(name) or (refused and name not in self.items)):
                shown.append(name + "=***")
            else:
                shown.append(word)
            after_secret = self._secret(text)
            after_unknown = refused and name not in self.items and not (index == 0 and text == "--")
        return shown

    def rank_of(self, words: List[Any]) -> int:
        """The level rank a `config set` acts at, for the audit log: the highest level of the
        settings any of its words names, wherever it sits (a value may be a name, and a word
        too many shifts the pairs). Auditing too much is safe, too little is not."""
        ranks = [
            self.items[name].rank for name in (str(word).partition("=")[0] for word in words) if name in self.items
        ]
        return max(ranks, default=0)

    def _secret(self, name: str) -> bool:
        setting = self.items.get(name)
        return setting is not None and setting.secret

    def __init__(self, toolkit: Toolkit) -> None:
        self.toolkit = toolkit
        self.items: Dict[str, Setting] = {}
        self.handlers: Dict[str, Callable[..., Any]] = {
            "config get": self.get,
            "config set": self.set,
            "config diff": self.diff,
        }

    # ---- declaring ----

    def declare(
        self,
        name: str,
        obj: Any,
        attr: str,
        *,
        kind: Any = None,
        level: str = "operator",
        check: Optional[Callable[[Any], Any]] = None,
        read_only: bool = False,
        help: Optional[str] = None,
        secret: bool = False,
    ) -> Setting:
        import inspect

        if not isinstance(name, str) or not name or name.split() != [name]:
            raise ConfigError(f"a setting's name is one word, not {name!r}")
        if name in self.items:
            raise ConfigError(f"setting {name!r} is already declared")
        try:
            default = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(f"setting {name!r}: {obj!r} has no attribute {attr!r}") from None
        if kind is None:
            if default is None:
                raise ConfigError(f"setting {name!r}: its value is None, so give its type (type=...)")
            kind = _builtin_type(default)
        if check is not None and not callable(check):
            raise ConfigError(f"setting {name!r}: check must be callable")
        try:
            param = Param(inspect.Parameter("value", inspect.Parameter.KEYWORD_ONLY), kind)
        except ConfigError as exc:
            raise ConfigError(f"setting {name!r}: {exc}".replace("parameter 'value': ", "")) from None
        param.name = param.metavar = name
        setting = Setting(name, obj, attr, param, level, check, read_only, help, secret, default)
        self.items[name] = setting
        self.toolkit.install("config")
        self.register()
        return setting

    def declare_dataclass(self, obj: Any, prefix: str, level: str) -> List[Setting]:
        import dataclasses
        import typing

        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            raise ConfigError(f"settings_from() takes a dataclass instance, not {obj!r}")
        try:
            hints = typing.get_type_hints(type(obj))
        except Exception:  # an annotation that cannot be resolved: fall back to the values' types
            hints = {}
        frozen = getattr(type(obj), "__dataclass_params__").frozen  # noqa: B009
        declared = []
        for field in dataclasses.fields(obj):
            if field.name.startswith("_"):
                continue
            options = dict(field.metadata.get("reactor_mgmt", {}))
            options.setdefault("level", level)
            options.setdefault("read_only", frozen)
            kind = options.pop("type", hints.get(field.name))
            declared.append(self.declare(prefix + field.name, obj, field.name, kind=kind, **options))
        return declared

    def register(self) -> None:
        """(Re-)registers the commands at the lowest level any setting needs, so that they are
        in `help` for every connection that may use one, and only for those."""
        ranks = [setting.rank for setting in self.items.values()]
        writable = [setting.rank for setting in self.items.values() if not setting.read_only]
        default = level_rank("operator")
        read = LEVELS[min(ranks, default=default)]
        write = LEVELS[min(writable, default=min(ranks, default=default))]
        registry = self.toolkit.server.registry
        for name, level, usage in (
            ("config get", read, None),
            ("config diff", read, None),
            ("config set", write, _SET_USAGE),
        ):
            existing = registry.commands.get(name)
            handler = self.handlers[name]
            if existing is not None and existing.fn != handler:
                continue  # the host took the name over
            if existing is None or existing.level != level:
                self.toolkit.add(name, handler, level=level, usage=usage)

    # ---- the commands ----

    def _visible(self, conn: Connection) -> List[Setting]:
        return [setting for setting in self.items.values() if setting.rank <= conn.level]

    def get(self, pattern: str = "*", conn: Connection = None) -> Report:  # type: ignore[assignment]
        """Shows the settings, or those whose names match PATTERN (shell-style: 'tick_*').

        A value still equal to its default is marked (default); one that 'config set' may not
        change, (read-only). Secret values show as ***.
        """
        import fnmatch

        settings = [setting for setting in self._visible(conn) if fnmatch.fnmatchcase(setting.name, pattern)]
        rows, lines = [], []
        width = max((len(setting.name) for setting in settings), default=0) + 1
        for setting in settings:
            value = setting.value
            is_default = value == setting.default
            rows.append(
                {
                    "name": setting.name,
                    "value": setting.shown(value),
                    "default": setting.shown(setting.default),
                    "is_default": is_default,
                    "read_only": setting.read_only,
                    "level": setting.level,
                    "type": setting.param.type_name,
                    "choices": setting.param.choices,
                    "help": setting.help,
                }
            )
            notes = [note for note, flag in (("default", is_default), ("read-only", setting.read_only)) if flag]
            lines.append(
                f"{setting.name + ':':<{width}} {setting.text(value)}" + (f" ({', '.join(notes)})" if notes else "")
            )
        if not settings:
            text = "no settings" if pattern == "*" else f"no setting matches {pattern!r}"
            return Report(text, rows)
        return Report("\n".join(lines), rows)

    def diff(self, conn: Connection) -> Report:
        """Shows the settings whose values differ from their defaults, with the defaults."""
        rows, lines = [], []
        changed = [setting for setting in self._visible(conn) if setting.value != setting.default]
        width = max((len(setting.name) for setting in changed), default=0) + 1
        for setting in changed:
            value = setting.value
            rows.append(
                {"name": setting.name, "value": setting.shown(value), "default": setting.shown(setting.default)}
            )
            lines.append(
                f"{setting.name + ':':<{width}} {setting.text(value)} (default {setting.text(setting.default)})"
            )
        return Report("\n".join(lines) if lines else "every setting has its default value", rows)

    def set(self, *words: str, conn: Connection) -> Report:
        """Sets one or more settings; if any value is refused, none is changed.

        Values are converted as command arguments are, then checked by the host.
        'config get' lists the settings this connection may see.
        """
        changes = self._validate(list(words), conn)
        applied: List[Tuple[Setting, Any]] = []
        try:
            for setting, value in changes:
                old = setting.value
                setattr(setting.obj, setting.attr, value)
                applied.append((setting, old))
        except BaseException:  # all or nothing, even when the host's attribute refuses late
            for setting, old in reversed(applied):
                setattr(setting.obj, setting.attr, old)
            raise
        lines = [f"{setting.name}: {setting.text(old)} -> {setting.text(setting.value)}" for setting, old in applied]
        log.info("connection #%d changed settings: %s", conn.id, "; ".join(lines))
        return Report("\n".join(lines), {setting.name: setting.shown(setting.value) for setting, _ in applied})

    def _validate(self, words: List[str], conn: Connection) -> List[Tuple[Setting, Any]]:
        def usage(reason: str) -> UsageError:
            return UsageError(f"usage: {_SET_USAGE} ({reason})")

        if not words:
            raise usage("missing NAME VALUE")
        if len(words) % 2:
            # Not quoting the odd word out: with the pairs shifted ("--", or a value left out),
            # it may be a secret setting's value.
            raise usage("an odd number of words: NAME VALUE pairs expected")
        changes: List[Tuple[Setting, Any]] = []
        seen: Set[str] = set()
        for index in range(0, len(words), 2):
            name, text = words[index], words[index + 1]
            setting = self.items.get(name)
            if setting is None:
                if index and self._secret(words[index - 1]):  # shifted pairs: maybe its value
                    raise usage(
                        f"unknown setting after '{words[index - 1]}', not shown: it may be that setting's value"
                    )
                raise usage(self._unknown(name, conn))
            if setting.rank > conn.level:
                raise PermissionDenied(f"permission denied: setting '{name}' needs {setting.level}")
            if setting.read_only:
                raise CommandError(f"setting '{name}' is read-only")
            if name in seen:
                raise usage(f"{name} given twice")
            seen.add(name)
            # A secret's value is not echoed back: the reply may end up in a terminal's scrollback
            # or the client's own log.
            shown = "***" if setting.secret else repr(text)
            try:
                value = setting.param.convert_value(text)
            except Exception as exc:
                if not setting.secret:
                    raise usage(str(exc)) from None
                raise usage(f"bad value for {name}: ***: {_expected(setting.param, text)}") from None
            if setting.check is not None:
                try:
                    setting.check(value)
                except (ValueError, TypeError, CommandError) as exc:
                    reason = error_parts(exc)[1] if isinstance(exc, CommandError) else str(exc)
                    if setting.secret:  # a check may quote what it refused (int(value) does)
                        for said in sorted({str(text), str(value), repr(value)} - {""}, key=len, reverse=True):
                            reason = reason.replace(said, "***")
                    raise usage(f"bad value for {name}: {shown}: {reason}") from None
            changes.append((setting, value))
        return changes

    def _unknown(self, name: str, conn: Connection) -> str:
        import difflib

        names = [setting.name for setting in self._visible(conn)]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "'config get' lists them"
        return f"unknown setting '{name}'; {hint}"


def _same(installed: Any, asked: Any) -> bool:
    """Whether an activity option asked for again is what was installed: equal, or both empty
    (maskers={} is the default None, secret_params=[] the default ())."""
    return bool(installed == asked) or (
        not installed and not asked and isinstance(installed, (type(None), dict, list, tuple, set, frozenset))
    )


def _expected(param: Param, value: Any) -> str:
    """What a secret setting expected, without its value: Param.convert_value's message quotes
    the value, and a host's own type may quote it again (ipaddress.ip_address does)."""
    if value is None and not param.nullable:
        return "null is not allowed"
    if param.choices is not None:
        return f"expected one of: {', '.join(param.choices)}"
    return {
        "integer": "expected an integer",
        "number": "expected a number",
        "boolean": "expected true/false, yes/no, on/off or 1/0",
    }.get(param.type_name, f"expected a value of type {param.type_name}")
