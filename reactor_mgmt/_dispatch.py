# Requests to replies: the layer between a session (_session.py), which queues decoded
# requests, and the command layer (_commands.py), which knows the handlers. For each request it
# parses the line (text, quoted text, JSON with "cmd" or "argv"), resolves the command, applies
# the one permission check (_commands.check_permission), calls the handler, and frames the
# result through _render and _wire as text or JSON (or as an error, for a reply larger than
# max_output). A Pending or Stream result parks the session until it completes, so replies stay
# in request order; advance() moves a parked reply along.
#
# A Dispatcher is its own object, built with what it needs: the registry, the stats, the limits
# and, passed in, the clock, call_later, wake and schedule of whatever drives it. It writes
# only to a session's transport.write() and closes through the transport, so it runs without
# sockets in tests.
from __future__ import annotations

import weakref

from ._commands import Command, check_permission
from ._errors import CommandError, ConfigError, PermissionDenied, error_parts
from ._log import Throttle, format_address, log
from ._protocol import EndSession, ParseError, looks_like_http, split_words
from ._render import render_text, to_jsonable
from ._replies import NO_REPLY, TIMED_OUT, Pending, Stream, Wait, expire, is_stream, unwatch, waiters_of, watch
from ._wire import (
    TEXT,
    UNENCODABLE,
    end_frame,
    error_reply,
    item_frame,
    ok_frame,
    reply_id_of,
    stream_open_frame,
    text_reply,
)

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

    from ._commands import Registry
    from ._session import Connection

_POLL_WINDOW = 1024
# json.JSONDecoder().decode and the scanner it calls, made on the first JSON request (see
# decode_json): json.loads() checks its argument and looks its decoder up on every call.
_decode_json: Optional[Callable[[str], Any]] = None
_scan_json: Optional[Callable[[str, int], Tuple[Any, int]]] = None
_NEVER = 1 << 30  # a level rank no command has
_NOT_OWED = object()


class Stats:
    """Counters for the `stats` command; plain attributes so the hot path is cheap."""

    __slots__ = (
        "started",
        "connections_total",
        "commands",
        "errors",
        "bytes_in",
        "bytes_out",
        "busy_polls",
        "durations",
        "refused",
        "http_closed",
        "poll_gap_max",
    )

    def __init__(self, started: float) -> None:
        from collections import deque

        self.started = started
        self.connections_total = 0
        self.commands = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.busy_polls = 0
        # The last _POLL_WINDOW busy polls' durations; poll() appends one per busy poll.
        self.durations: Any = deque(maxlen=_POLL_WINDOW)
        self.refused = 0
        self.http_closed = 0
        # The longest gap between two poll() calls, in seconds, once the activity tools measure
        # it (_activity's poll watch); None otherwise, and `stats` leaves it out.
        self.poll_gap_max: Optional[float] = None


class Dispatcher:
    """Runs a session's requests and writes their replies."""

    def __init__(
        self,
        registry: Registry,
        stats: Stats,
        *,
        clock: Callable[[], float],
        call_later: Callable[..., Any],
        wake: Callable[[Any], None],
        schedule: Callable[[Any], None],
        max_line: int,
        max_output: int,
        max_commands_per_tick: int,
        pending_timeout: float,
        cancel_timer: Optional[Callable[[Any], None]] = None,
    ) -> None:
        self.registry = registry
        self.stats = stats
        self.clock = clock
        self.call_later = call_later
        self.cancel_timer = cancel_timer or _no_timer
        self.wake = wake
        self.schedule = schedule  # a turn for a session (in the next poll, once it had one in this)
        self.max_line = max_line
        self.max_output = max_output
        # 0 would leave every request queued for good, unanswered
        if max_commands_per_tick.__class__ is not int or max_commands_per_tick < 1:
            raise ConfigError(f"max_commands_per_tick must be an int of at least 1, not {max_commands_per_tick!r}")
        self.max_commands_per_tick = max_commands_per_tick
        self.pending_timeout = pending_timeout
        self.fallback: Optional[Callable[[str, List[str], Any], Any]] = None
        self.on_error: Optional[Callable[[BaseException], Any]] = None
        self.stopped = False  # the server is closing: no more requests run
        # observer(conn, request, outcome, seconds), for the requests it asked about (see
        # observe()): request is (command, args, kwargs or None) once the command is known,
        # else None; outcome is "ok", "error" or "denied". See execute_observed.
        self.observer: Optional[Callable[[Any, Any, str, float], None]] = None
        self.report_after = -1.0  # seconds: a request that took longer is reported (-1: all)
        self.report_rank = _NEVER  # and a command of this level or above
        self.report_names: FrozenSet[str] = frozenset()  # and these commands
        self.report_prefixes: Tuple[str, ...] = ()  # and commands named with these prefixes
        self.report_commands = False  # whether any of the three above may report a command
        self.request: Any = None  # (command, args, kwargs) running now; made only for an observer
        # True inside execute_observed() alone: only then is the request recorded, so none is
        # kept past its turn when an observer arrives in the middle of an unobserved one.
        self.recording = False
        self.outcome = "ok"  # and how it ended, when observed
        # Whether each connection keeps its last request (Connection.last_request, for the
        # toolkit's `clients`): off by default, as it holds a tuple and a list per connection.
        self.keep_last = False
        self._http_log = Throttle()
        self._too_large_log = Throttle()

    # ---- one request ----

    def observe(
        self,
        observer: Callable[[Any, Any, str, float], None],
        *,
        slower_than: float = -1.0,
        at_or_above: Optional[int] = None,
        names: Iterable[str] = (),
        prefixes: Tuple[str, ...] = (),
    ) -> None:
        """Calls ``observer`` after each request that took more than ``slower_than`` seconds
        (-1, the default: every request), that ran a command of level rank ``at_or_above`` or
        more, one of the commands ``names``, or one whose name starts with one of ``prefixes``
        (registered now or later). The common request, fast and not asked about, costs a few
        comparisons: no call."""
        self.observer = observer
        self.report_after = slower_than
        self.report_rank = _NEVER if at_or_above is None else at_or_above
        self.report_names = frozenset(names)
        self.report_prefixes = tuple(prefixes)
        self.report_commands = self.report_rank != _NEVER or bool(self.report_names or self.report_prefixes)

    def execute(self, conn: Connection, item: Any) -> None:
        """Runs one request: a text line, a JSON line or a protocol event. A text line, what
        nearly every request is, runs here and not one call further down: it is the path of
        every round trip, which pays for each Python call on it."""
        self.stats.commands += 1
        if item.__class__ is not str:
            self._execute_event(conn, item)
            return
        if item[0] == "{":
            self._execute_json(conn, item)
            return
        try:
            try:
                command, args = self.registry.parse(item, conn)
            except CommandError as exc:
                command, args = self._unknown(conn, split_words(item), item, exc)
            if command is None:
                return
            if self.recording:  # only an observer reads it (execute_observed)
                self.request = (command, args, None)
            check_permission(conn, command)
            result = command.call(args, conn)
        except (CommandError, ParseError) as exc:
            self.stats.errors += 1
            self.outcome = "denied" if isinstance(exc, PermissionDenied) else "error"
            _write_error(self, conn, TEXT, "error", str(exc) if isinstance(exc, ParseError) else error_parts(exc)[1])
            return
        except BaseException as exc:
            _internal_error(self, conn, exc, TEXT)
            if not isinstance(exc, Exception):  # KeyboardInterrupt: answered, and on to the host
                raise
            return
        if result.__class__ is str and "\r" not in result:  # deliver()'s first case and text_reply(),
            # written out: most handlers return a str, and this is the path of every round trip
            data = (result if result[-1:] == "\n" else result + "\n").encode("utf-8", UNENCODABLE)
            if len(data) > self.max_output:
                data = self._too_large(conn, len(data), TEXT)
            conn.transport.write(data)
            return
        self.deliver(conn, result, TEXT)

    def execute_observed(self, conn: Connection, item: Any, start: float) -> float:
        """execute() for a server with an observer: ``start`` is the clock reading taken just
        before it (the session's, which the budget check shares), and the reading taken after
        it is returned, to time the next request and check the budget. So a request costs one
        clock read, as it does under a budget anyway, and no call unless it is reported. With
        keep_last, the connection keeps the request as its last_request."""
        self.request = None  # the request's (command, args, kwargs), once its command is known
        self.outcome = "ok"
        self.recording = True
        try:
            self.execute(conn, item)
        except BaseException:  # KeyboardInterrupt from a handler: it did not end well
            self.outcome = "error"
            raise
        finally:
            self.recording = False
            end = self.clock()
            request = self.request
            self.request = None  # not kept past its request: it may hold an `auth TOKEN`
            if self.keep_last and request is not None:
                conn.last_request = request
            if (
                end - start > self.report_after
                or self.report_commands  # False unless asked: then a fast request costs one test here
                and request is not None
                and (
                    request[0].rank >= self.report_rank
                    or request[0].name in self.report_names
                    or (self.report_prefixes and request[0].name.startswith(self.report_prefixes))
                )
            ):
                self.observer(  # type: ignore[misc]
                    conn,
                    request,
                    self.outcome,
                    end - start,
                )
                end = self.clock()  # what the observer took (an audit log's handlers) is no request's
        return end

    def _execute_event(self, conn: Connection, item: Any) -> None:
        if item.__class__ is EndSession:
            conn.transport.closing = True
        else:  # a protocol event: a line too long, or not UTF-8
            self.stats.errors += 1
            self.outcome = "error"
            _write_error(self, conn, None if item.json else TEXT, item.code, item.message)

    def _execute_json(self, conn: Connection, line: str) -> None:
        request_id: Any = None
        try:
            try:
                request = decode_json(line)
            except NumberOutOfRange as exc:
                raise CommandError(str(exc), code="bad_request") from None
            except (ValueError, RecursionError) as exc:  # deep nesting raises RecursionError
                raise CommandError(f"malformed JSON: {exc}", code="bad_request") from None
            if not isinstance(request, dict):
                raise CommandError("a JSON request must be an object", code="bad_request")
            request_id = request.get("id")
            argv = request.get("argv")
            if argv is not None:
                # Words a client already split like a shell (the CLI's own argv): resolved and
                # bound exactly as a text line's words, so `--force` is an option, not a value.
                if not isinstance(argv, list) or not argv or not all(isinstance(w, str) for w in argv):
                    raise CommandError("'argv' must be a non-empty list of strings", code="bad_request")
                if request.get("cmd") is not None or request.get("args") or request.get("kwargs"):
                    # Not ignored: a `"kwargs": {"dry_run": true}` dropped would run the command
                    # for real. Empty args/kwargs say nothing, so they may come along.
                    raise CommandError("'argv' cannot be combined with 'cmd', 'args' or 'kwargs'", code="bad_request")
                command, extra = self._resolve(conn, argv, " ".join(argv))
                if command is None:
                    return
                if self.recording:  # only an observer reads it
                    self.request = (command, extra, None)
                check_permission(conn, command)
                result = command.call(extra, conn)
            else:
                name = request.get("cmd")
                args = request.get("args", [])
                kwargs = request.get("kwargs", {})
                if not isinstance(name, str) or not (words := name.split()):
                    raise CommandError("'cmd' must be a non-empty string", code="bad_request")
                if not isinstance(args, list) or not isinstance(kwargs, dict):
                    raise CommandError("'args' must be a list and 'kwargs' an object", code="bad_request")
                command, extra = self._resolve(conn, words, name)
                if command is None:
                    return
                if self.recording:  # only an observer reads it
                    self.request = (command, extra + args, kwargs)
                check_permission(conn, command)
                result = command.call_json(extra + args, kwargs, conn)
        except CommandError as exc:
            self.stats.errors += 1
            self.outcome = "denied" if isinstance(exc, PermissionDenied) else "error"
            _write_error(self, conn, request_id, *error_parts(exc))
            return
        except BaseException as exc:
            _internal_error(self, conn, exc, request_id)
            if not isinstance(exc, Exception):  # as in execute()
                raise
            return
        self.deliver(conn, result, request_id)

    def _resolve(self, conn: Connection, words: List[str], line: str) -> Tuple[Optional[Command], List[str]]:
        try:
            return self.registry.resolve(words, conn)
        except CommandError as exc:
            return self._unknown(conn, words, line, exc)

    def _unknown(
        self, conn: Connection, words: List[str], line: str, exc: CommandError
    ) -> Tuple[Optional[Command], List[str]]:
        """A line that names no command: an HTTP request closes the connection, a server with
        a fallback passes it there, and anything else is refused (the error is re-raised)."""
        if looks_like_http(line):
            self._reject_http(conn)
            return None, []
        if self.fallback is not None and words:
            return fallback_command(self.fallback, words[0]), words[1:]
        raise exc

    def _reject_http(self, conn: Connection) -> None:
        self.stats.http_closed += 1
        suffix = self._http_log.allow(self.clock())
        if suffix is not None:
            log.warning(
                "closing connection #%d from %s: it sent an HTTP request (cross-protocol attack?)%s",
                conn.id,
                format_address(conn.peer),
                suffix,
            )
        # The requests before it were real: their replies go out, and it closes at once if the
        # kernel takes them now; else (a big one the client has not read yet) they drain first,
        # with nothing more run or read, where a close now would cut them with a reset.
        transport = conn.transport
        transport.flush()
        if transport.out_size:
            transport.close()
        elif not transport.closed:
            transport.send_and_close()

    # ---- replies ----

    def deliver(self, conn: Connection, result: Any, reply_id: Any) -> None:
        """Writes a finished result, or parks the session behind a Pending or Stream."""
        if result.__class__ is str and reply_id is TEXT:
            data = text_reply(result)
        elif result is NO_REPLY:
            if reply_id is TEXT:
                return
            data = ok_frame(reply_id, None)
        elif result.__class__ is not dict and self._parks(conn, result, reply_id):
            return  # (a dict, what a status returns, is neither: it pays for no test of them)
        elif reply_id is TEXT:
            data = render_text(result).encode("utf-8", UNENCODABLE)
        else:
            data = ok_frame(reply_id, to_jsonable(result))
        if len(data) > self.max_output:
            data = self._too_large(conn, len(data), reply_id)
        conn.transport.write(data)

    def _parks(self, conn: Connection, result: Any, reply_id: Any) -> bool:
        """deliver() for a Pending or a stream: True once the session waits on it (or a Pending
        already answered is delivered)."""
        if isinstance(result, Pending):
            if result.done:
                self.finish_pending(conn, result, reply_id)
                return True
            conn.waiting = result
            conn.waiting_id = reply_id
            waker = _Waker(self, conn)
            watch(result, waker)
            timeout = self.pending_timeout if result.timeout is None else result.timeout
            if timeout and timeout < float("inf"):  # NaN would break the timer heap's order
                # Weak references, and the timer cancelled once the Pending is answered or its
                # client gone: neither its value (a big reply) nor the connection may stay alive
                # in the timer heap until the timeout (the demo's `wait ... --timeout 3600`).
                waker.timer = self.call_later(timeout, _expire_if_waiting, weakref.ref(conn), weakref.ref(result))
            return True
        if is_stream(result):
            conn.waiting = result if isinstance(result, Stream) else Stream(result)
            conn.waiting_id = reply_id
            if reply_id is not TEXT:
                # Said at once: a client can then tell a stream that is quiet (a `log tail` of a
                # quiet log, a `watch 60`) from a server that does not answer.
                conn.transport.write(stream_open_frame(reply_id))
            return True
        return False

    def _too_large(self, conn: Connection, size: int, reply_id: Any) -> bytes:
        """The error sent in place of a reply larger than max_output. The client learns what
        happened, and its next request runs as usual; dropping the client instead would lose
        the replies before it and say nothing. The verdict depends on the reply alone, never
        on how much the client has yet to read, so the same request always gets the same
        answer; commands run only below high_water, so unsent output stays under
        high_water + max_output (the cap the transport enforces)."""
        self.stats.errors += 1
        self.outcome = "error"  # what the observer (audit, slow log) records: the client got an error
        return _too_large_reply(self, conn, size, reply_id)

    def finish_pending(self, conn: Connection, pending: Pending, reply_id: Any) -> None:
        if pending.error is not None:
            self.stats.errors += 1
            self.outcome = "error"  # observed when a Pending failed already is returned
            _write_error(self, conn, reply_id, *error_parts(pending.error))
        else:
            self.deliver(conn, pending.value, reply_id)

    # ---- the server closing ----

    def say_goodbye(self, conns: Iterable[Connection], owed: Dict[Connection, Any]) -> None:
        """Tells each client owed a reply (a request queued at close(), or a reply it waits
        on) that the server is shutting down; a Pending already resolved is sent instead."""
        for conn in conns:
            if conn.closed or conn.closing or conn.transport.cut_off:
                continue
            waiting = conn.waiting
            if isinstance(waiting, Pending) and waiting.done:  # answered, and not yet sent
                conn.waiting = None
                self.finish_pending(conn, waiting, conn.waiting_id)
            # Looked at now, not at close(): a handler that closed the server may then have
            # returned a Pending or a stream.
            reply_id = conn.waiting_id if conn.waiting is not None else owed.get(conn, _NOT_OWED)
            if reply_id is not _NOT_OWED:
                _write_error(self, conn, reply_id, "shutdown", "server shutting down")

    # ---- a parked reply ----

    def advance(self, conn: Connection, stop_at: Optional[float]) -> bool:
        """Moves a parked reply along; True when the queue behind it may proceed."""
        waiting = conn.waiting
        if waiting.__class__ is not Stream:
            if not waiting.done:
                return False
            conn.waiting = None
            self.finish_pending(conn, waiting, conn.waiting_id)
            return True  # even if it resolved to a Stream or Pending: the loop moves that along too
        if self._pump_stream(conn, waiting, stop_at):
            if conn.decoder is not None:
                conn.decoder.keep_blank = False  # however the stream ended
            return True
        return False

    def _pump_stream(self, conn: Connection, stream: Stream, stop_at: Optional[float]) -> bool:
        transport = conn.transport
        if stream.until_input:
            blank = _blank_line_after(conn)
            if blank or conn.queue:  # a line (even a blank one) pipelined behind it stops it at once
                self.end_stream(conn)
                if not blank and conn.queue and conn.queue[0].__class__ is str:
                    conn.queue.popleft()  # the line that stopped it is not a request; an event still counts
                return True
            assert conn.decoder is not None
            conn.decoder.keep_blank = True
        reply_id = conn.waiting_id
        iterator = stream.iterator
        low_water = transport.limits.low_water
        sent = 0
        while transport.out_size < low_water:
            if stop_at is not None and sent and self.clock() >= stop_at:  # per item, as service(): items may be slow
                if stream.until_input and conn.eof:
                    break  # the poll's end is a pause too: its client has shut down, it ends below
                self.schedule(conn)
                return False
            try:
                item = next(iterator)
            except StopIteration:
                conn.waiting = None
                if reply_id is not TEXT:
                    transport.write(end_frame(reply_id, stream.count))
                return True
            except CommandError as exc:
                conn.waiting = None
                self.stats.errors += 1
                _write_error(self, conn, reply_id, *error_parts(exc))
                return True
            except Exception as exc:
                conn.waiting = None
                _internal_error(self, conn, exc, reply_id)
                return True
            except BaseException as exc:  # KeyboardInterrupt: the generator is dead; say so, then go
                conn.waiting = None
                if conn.decoder is not None:
                    conn.decoder.keep_blank = False
                _write_error(self, conn, reply_id, "internal", f"internal error ({type(exc).__name__})")
                raise
            if item.__class__ is Wait:
                if stream.until_input and conn.eof:
                    self.end_stream(conn)  # its client has shut down: it ends at its first pause
                    return True
                stream.held = False  # parked by the stream itself: a flush must not resume it
                _wake_at(self, conn, stream, item.until)
                return False
            if reply_id is TEXT:
                data = render_text(item).encode("utf-8", UNENCODABLE)
            else:
                data = item_frame(reply_id, to_jsonable(item))
            if len(data) > self.max_output:  # the stream ends with the error in its place
                conn.waiting = None
                _close_stream(stream)
                transport.write(self._too_large(conn, len(data), reply_id))
                return True
            stream.count += 1
            sent += 1
            transport.write(data)
            if transport.closed:
                return False
        stream.held = True  # stopped at low water: the flush that drains the output resumes it
        if stream.until_input and conn.eof and sent:
            # A subscription whose client has shut down writing ends at its first pause (a Wait,
            # the poll's end, or output up to low_water once it has sent something): a one-shot
            # `echo 'watch 5 stats' | nc -N` gets one reply whether its EOF is read with its
            # request or after it (data_received ends one that has started when the EOF comes later).
            self.end_stream(conn)
            return True
        return False  # resumes when the client has drained below the low-water mark

    def end_stream(self, conn: Connection) -> None:
        """The client stopped a subscription (any line, or EOF)."""
        stream = conn.waiting
        conn.waiting = None
        assert conn.decoder is not None
        conn.decoder.keep_blank = False
        _close_stream(stream)
        if conn.waiting_id is not TEXT:
            conn.transport.write(end_frame(conn.waiting_id, stream.count))

    def cancel_waiting(self, conn: Connection) -> None:
        waiting = conn.waiting
        conn.waiting = None
        try:
            if isinstance(waiting, Pending):
                waker = _waker_of(waiting, conn)
                if waker is not None:
                    self.cancel_timer(waker.timer)
                unwatch(waiting, waker, _cancel_callback_raised)  # cancelled if nobody else waits
            else:
                waiting.close()
        except Exception:
            log.exception("cancelling a pending reply raised")


class _Waker:
    """A Pending's waiter: services the session that waits on it, and cancels the Pending's
    timeout timer. A small object rather than a closure, holding the session weakly: a Pending
    the host keeps (in a list of waiters) must not keep a connection that went away alive."""

    __slots__ = ("dispatcher", "conn", "timer")

    def __init__(self, dispatcher: Dispatcher, conn: Connection) -> None:
        self.dispatcher = dispatcher
        self.conn = weakref.ref(conn)
        self.timer: Any = None

    def __call__(self) -> None:
        dispatcher = self.dispatcher
        dispatcher.cancel_timer(self.timer)
        self.timer = None
        conn = self.conn()
        if conn is not None:
            dispatcher.wake(conn)


def fallback_command(fallback: Callable[[str, List[str], Any], Any], name: str) -> Command:
    """A host's fallback (see reactor_mgmt.start) as a command named ``name``."""
    from ._session import Connection

    def run(*args: str, conn: Connection) -> Any:
        result = fallback(name, list(args), conn)
        return NO_REPLY if result is None else result

    return Command(name, run, connection_type=Connection, help="")


def owed_a_notice(conns: Iterable[Connection]) -> Dict[Connection, Any]:
    """The connections with requests queued, by the reply id of the first of them (the
    server's close tells each it is shutting down: Dispatcher.say_goodbye)."""
    return {
        conn: reply_id_of(conn.queue[0])
        for conn in conns
        if conn.queue and not (conn.closing or conn.transport.cut_off)
    }


def _no_timer(timer: Any) -> None:
    pass


def _blank_line_after(conn: Connection) -> bool:
    """Whether a blank line came right after the request that started conn's subscription, in
    the same read (Enter typed before it ran): as many requests are queued behind it as came
    after that blank line (see RequestDecoder.blank_after). Asked once, at its first pump. The
    set is left for the next subscription of the same read, which asks it too (the counts
    are from the read's end, so each matches one item alone); the next read replaces it."""
    decoder = conn.decoder
    assert decoder is not None
    if decoder.keep_blank:  # pumped before: running, it sees blank lines as they come
        return False
    after = decoder.blank_after
    return after is not None and len(conn.queue or ()) in after


def _wake_at(dispatcher: Dispatcher, conn: Connection, stream: Stream, until: Optional[float]) -> None:
    """Pumps a stream again at ``until`` (None: only a wake() will), through one timer per
    stream, weakly holding the connection (a client that leaves is not kept till then): a
    stream pumped before its timer is due (a wake(), a write event) that waits again adds no
    entry to the heap each time."""
    if until is None:
        return
    wake_at = stream.wake_at
    if wake_at is None or until < wake_at:
        stream.wake_at = until
        delay = max(0.0, until - dispatcher.clock())
        dispatcher.call_later(delay, _wake_stream, dispatcher.schedule, weakref.ref(conn), until)


def _wake_stream(schedule: Callable[[Any], None], conn_ref: Callable[[], Any], until: float) -> None:
    """A stream's Wait(until) timer: its next pump may arm another."""
    conn = conn_ref()
    if conn is not None:
        waiting = conn.waiting
        if waiting.__class__ is Stream and waiting.wake_at == until:
            waiting.wake_at = None
        schedule(conn)


def _expire_if_waiting(conn_ref: Callable[[], Any], pending_ref: Callable[[], Optional[Pending]]) -> None:
    conn = conn_ref()
    pending = pending_ref()
    if conn is None or pending is None or conn.waiting is not pending or pending.done:
        return
    waker = _waker_of(pending, conn)
    if waker is not None and len(waiters_of(pending)) > 1:
        # Other requests wait on it too: this one alone times out, and they wait on.
        unwatch(pending, waker)
        conn.waiting = TIMED_OUT
        waker.dispatcher.wake(conn)
    else:
        expire(pending, _cancel_callback_raised)


def _waker_of(pending: Pending, conn: Connection) -> Optional[_Waker]:
    """The waiter through which ``conn`` waits on ``pending``, if any."""
    for waiter in waiters_of(pending):
        if isinstance(waiter, _Waker) and waiter.conn() is conn:
            return waiter
    return None


def _cancel_callback_raised(exc: Exception) -> None:
    log.error("a Pending's on_cancel callback raised", exc_info=exc)


def _internal_error(dispatcher: Dispatcher, conn: Connection, exc: BaseException, reply_id: Any) -> None:
    """Answers a request whose handler raised. An Exception is logged and passed to on_error; a
    KeyboardInterrupt or SystemExit goes on out of poll() (the caller re-raises it), the host's
    to act on, but its request is answered first (a SystemExit's as the server's close answers
    what it leaves): a client reading replies in step would take the next one for it."""
    dispatcher.stats.errors += 1
    dispatcher.outcome = "error"
    if isinstance(exc, Exception):
        log.error("command handler raised on connection #%d", conn.id, exc_info=exc)
        if dispatcher.on_error is not None:
            try:
                dispatcher.on_error(exc)
            except Exception:
                log.exception("on_error callback raised")
    if isinstance(exc, SystemExit):  # sys.exit() in a handler: the host is leaving, on purpose
        _write_error(dispatcher, conn, reply_id, "shutdown", "server shutting down")
    else:
        _write_error(dispatcher, conn, reply_id, "internal", f"internal error ({type(exc).__name__})")


def _write_error(dispatcher: Dispatcher, conn: Connection, reply_id: Any, code: str, message: str) -> None:
    """Writes an error reply (the caller counts it) under the rule a result is under: one over
    max_output (a handler's CommandError quoting a whole file) is replaced by the too_large
    error, and the connection carries on. Sent whole, it broke the promise that a reply is at
    most max_output, and past high_water + max_output the transport cut the client off, with
    the replies before it. Every error frame the dispatcher sends comes through here."""
    data = error_reply(reply_id, code, message)
    if len(data) > dispatcher.max_output:
        data = _too_large_reply(dispatcher, conn, len(data), reply_id)
    conn.transport.write(data)


def _too_large_reply(dispatcher: Dispatcher, conn: Connection, size: int, reply_id: Any) -> bytes:
    """The too_large error for a reply of ``size`` bytes, logged (throttled: a client can
    repeat it at will) and not counted: a result replaced by it is counted by
    Dispatcher._too_large, an error reply as the error it was, once."""
    suffix = dispatcher._too_large_log.allow(dispatcher.clock())
    if suffix is not None:
        log.warning(
            "connection #%d: a reply of %d bytes is over max_output (%d): sent an error instead%s",
            conn.id,
            size,
            dispatcher.max_output,
            suffix,
        )
    message = f"reply too large ({size} bytes; max_output is {dispatcher.max_output})"
    return error_reply(reply_id, "too_large", message)


def _close_stream(stream: Stream) -> None:
    try:
        stream.close()
    except Exception:
        log.exception("closing a stream raised")


class NumberOutOfRange(ValueError):
    """A JSON number literal past a float's range (1e400): json reads it as infinity."""


def _finite_float(text: str) -> float:
    """A JSON float literal's value; one past the range is refused, as the same digits are in
    a text request, and not read as infinity (the literals `Infinity` and `NaN` stay what
    they say)."""
    value = float(text)
    if value - value != 0.0:  # inf (NaN cannot come from digits)
        raise NumberOutOfRange(f"number out of range: {text[:40]}")
    return value


def decode_json(line: str) -> Any:
    """A JSON request line's value, or the error, exactly as json.loads(line) gives them (for
    the lines that come here: a str that starts with "{"), but for a number past a float's
    range, which is NumberOutOfRange where json reads infinity.

    Every JSON request (a script's, the CLI's) comes here. The C scanner that JSONDecoder.decode()
    runs is called directly: decode() wraps it in two Python frames and two regular-expression
    matches for the whitespace around the value, which a request line does not have (the
    decoder strips it), about 0.3 us of a JSON round trip. Whatever else a line holds (an error,
    data after the value) goes through decode() itself, so errors read the same; a test pins the
    two to each other."""
    global _decode_json, _scan_json
    scan = _scan_json
    if scan is None:
        import json  # lazily: a text-only server never pays json's import
        from json.scanner import make_scanner

        decoder = json.JSONDecoder(parse_float=_finite_float)
        _decode_json = decoder.decode
        # (typeshed types make_scanner's context as itself; it is the decoder whose options it reads)
        scan = _scan_json = make_scanner(decoder)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    try:
        value, end = scan(line, 0)
    except (StopIteration, ValueError):  # not JSON here: decode() says how, as json.loads would
        pass
    else:
        if end == len(line):
            return value
    assert _decode_json is not None
    return _decode_json(line)
