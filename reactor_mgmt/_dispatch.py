# Requests to replies: the layer between the reactor (_server.py), which moves bytes and owns
# the connections, and the command registry (_commands.py), which knows the handlers. For each
# decoded request it resolves the command, checks authentication and level, calls the handler,
# and frames the result as text or JSON (or as an error, for a reply larger than max_output);
# a Pending or Stream result parks the connection until it completes, so replies stay in
# request order.
#
# Server inherits these methods (Dispatcher is a mixin, not a separate object) because they are
# on the per-request path, where an extra attribute hop per request is measurable; they use the
# reactor only through _write, _schedule, _drop, wake, call_later and _close_now (and
# _answer_now, the round-trip fast path, sends on the connection's socket directly).
#
# Plain requests take _run_plain_batch, the fast path: unquoted requests for commands that take
# the words as they are, looked up in the registry's line cache and run in a tight loop; a run of
# requests for one command (or a Repeat from the decoder) then goes through C-level loops in
# _run_same_command, or, for a command with a reply_to_run (the builtin echo) or a same_reply
# (the builtin ping), is answered from its text with no call per request.
# tests/test_fastpaths.py pins all of them to the general path (_execute), byte for byte.
from __future__ import annotations

import time
import weakref
from collections import deque
from functools import partial
from itertools import islice, repeat, starmap, takewhile
from operator import eq

from ._commands import NO_REPLY, Command, Pending, Stream, Wait, is_stream
from ._connection import Connection
from ._errors import CommandError, PermissionDenied
from ._log import log
from ._protocol import (_QUOTING, EndSession, ParseError, Repeat, looks_like_http, needs_shlex,
                        single_spaced, split_words)
from ._render import json_line, render_text, to_jsonable

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Callable, Deque, List, Optional, Tuple

_monotonic = time.monotonic

TEXT = object()  # the reply id of a text-mode request: its reply is rendered, not JSON-framed
_UNENCODABLE = "backslashreplace"  # lone surrogates from a handler must not raise out of poll()
_KEEP_ANSWER_MAX = 256  # bytes: see _answer_now
_MIN_RUN = 4  # a shorter run of one command is cheaper line by line than set up as a batch
_HOLD_ROOM_CHECK = 4096  # a run's replies shorter than this are not checked against the room
_is_str = partial(type.__instancecheck__, str)  # isinstance(x, str), as a callable C can apply


class _Ran:
    """A queued result: the handler already ran, in a batch (see _run_same_command)."""

    __slots__ = ("result",)

    def __init__(self, result: Any) -> None:
        self.result = result


class _Raised:
    """A batch result that is an exception: its error line takes the request's place in order."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _take_one_copy(queue: Any, repeated: Repeat) -> str:
    """For a Repeat just taken off the queue: puts the other copies back, returns the line."""
    if repeated.count > 1:
        repeated.count -= 1
        queue.appendleft(repeated)
    return repeated.line


def _cut_run(chunk: List[str], prefix: str) -> str:
    """Cuts ``chunk`` (lines, one of which lacks ``prefix``) before the first line without it;
    returns the lines left, joined by LF."""
    del chunk[list(map(str.startswith, chunk, repeat(prefix))).index(False):]
    return "\n".join(chunk)


def _error_reply(reply_id: Any, code: str, message: str) -> bytes:
    """An error reply framed for its request: an ERR line, or a JSON error with ``code``."""
    if reply_id is TEXT:
        return _err_line(message)
    return json_line({"id": reply_id, "ok": False, "error": {"code": code, "message": message}})


def _reply_id_of(item: Any) -> Any:
    """How the reply to a queued request is framed: TEXT, or its JSON id (None if unreadable)."""
    line = item.line if item.__class__ is Repeat else item
    if line.__class__ is not str or line[:1] != "{":
        return TEXT
    import json

    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return request.get("id") if isinstance(request, dict) else None


def _err_line(message: str) -> bytes:
    """An error reply: always exactly one line, so a client can tell where it ends."""
    if "\n" in message or "\r" in message:
        message = " ".join(message.split())
    return f"ERR {message}\n".encode("utf-8", _UNENCODABLE)


def _drop_stopping_line(items: Any) -> None:
    """Removes the first item of ``items`` (a list or deque) if it is a line: the line that
    stopped a subscription is not a request."""
    first = items[0]
    if first.__class__ is str or first.__class__ is _Ran:  # _Ran: a request a run already called
        del items[0]
    elif first.__class__ is Repeat:
        if first.count > 1:
            first.count -= 1
        else:
            del items[0]


class Dispatcher:
    """Runs decoded requests and writes their replies; mixed into Server."""

    def _execute(self, conn: Connection, item: Any) -> None:
        if item.__class__ is _Ran:
            self._deliver_ran(conn, item.result)
            return
        if item.__class__ is Repeat:
            item = _take_one_copy(conn.queue, item)
        self.stats.commands += 1
        if item.__class__ is str:
            if item[0] == "{":
                self._execute_json(conn, item)
            else:
                self._execute_text(conn, item)
        elif item.__class__ is EndSession:
            conn.closing = True
        else:
            self.stats.errors += 1
            if item.json:
                self._write(conn, json_line({"id": None, "ok": False,
                                             "error": {"code": item.code, "message": item.message}}))
            else:
                self._write(conn, _err_line(item.message))

    def _execute_text(self, conn: Connection, line: str) -> None:
        try:
            words = split_words(line)
            if not words:
                return
            command, args = self._resolve(conn, words, line)
            if command is None:
                return
            result = command.call(args, conn)
        except Exception as exc:
            self._text_error(conn, exc)
            return
        self._deliver(conn, result, TEXT)

    def _run_plain_batch(self, conn: Connection, queue: Deque[Any], most: int, stop_at: Optional[float]) -> int:
        """The fast path: runs up to ``most`` plain requests from the head of the queue.

        A plain request (see _plain_request) means the same thing every time, so there is
        nothing to parse: look up the handler, call it, and collect str replies to write as
        one chunk. It stops at the first request that is not plain, is refused, or returns
        something other than a str, and leaves that request to the general path, which words
        refusals and renders results. tests/test_fastpaths.py pins both paths to the same bytes.
        """
        cache_get = self.registry.line_cache.get
        plain_request = self._plain_request
        popleft = queue.popleft
        stats = self.stats
        clearance = conn.level if conn.authenticated else -1
        room = self.high_water - conn.out_size
        replies: List[str] = []
        append = replies.append
        done = 0
        # Output written to this connection from outside the batch (a handler's conn.write, the
        # server closing) must land after the replies made so far: see _release_batch.
        self._batch_conn = conn
        self._batch_replies = replies
        try:
            while done < most and queue and not (conn.closed or conn.closing):  # a handler may close
                line = popleft()
                if line.__class__ is Repeat:  # a refusal below puts the copy back in front
                    line = _take_one_copy(queue, line)
                entry = cache_get(line) or plain_request(line)
                if entry is None or entry[0].gate > clearance or room <= 0 or (
                        stop_at is not None and done and _monotonic() >= stop_at):
                    queue.appendleft(line)
                    break
                done += 1
                stats.commands += 1  # before the call: `stats` itself counts
                result = entry[1]()
                if result.__class__ is str:
                    reply = result if result[-1:] == "\n" else result + "\n"
                    room -= len(reply)
                    if room > 0:
                        append(reply)
                        if stop_at is None and queue and done < most and not (conn.closed or conn.closing):
                            # A run's replies are made before any is written, so the run is cut
                            # to what the room left holds at this reply's size: a run of big
                            # replies must stop at the high-water mark as the per-request path does.
                            run_most = room // len(reply)
                            ran, size = self._run_same_command(conn, queue, entry, line,
                                                               run_most if run_most < most - done else most - done,
                                                               replies)
                            done += ran
                            room -= size
                            if conn.waiting is not None:
                                break
                        continue
                    # This reply reaches the high-water mark: it goes out on its own, after the
                    # replies before it, through _deliver's check against max_output.
                    self._write_replies(conn, replies)
                    self._deliver(conn, result, TEXT)
                    continue
                self._write_replies(conn, replies)
                self._deliver(conn, result, TEXT)
                if conn.waiting is not None or conn.closing or conn.closed:
                    break
                room = self.high_water - conn.out_size
        except BaseException as exc:  # a handler raised: keep the replies of the requests before it
            self._write_replies(conn, replies)
            if not isinstance(exc, Exception):
                raise
            self._text_error(conn, exc)
        finally:
            self._batch_conn = None
        self._write_replies(conn, replies)
        return done

    def _release_batch(self, conn: Connection) -> None:
        """Writes the replies the running batch has made for ``conn`` so far (it holds them to
        write as one chunk), so that output from outside the batch keeps request order."""
        if self._batch_conn is conn:
            self._write_replies(conn, self._batch_replies)

    def _write_replies(self, conn: Connection, replies: List[str]) -> None:
        """Writes the framed replies held in ``replies`` as one chunk, and empties the list."""
        if replies:
            self._write(conn, "".join(replies).encode("utf-8", _UNENCODABLE))
            replies.clear()

    def _answer_now(self, conn: Connection, entry: Tuple[Command, Callable[[], Any]]) -> bool:
        """The round-trip fast path: answers a request that arrived alone, straight from _read.

        One request per read, with nothing queued or unsent before it, is how a client that
        waits for each reply talks (and every one of a thousand such clients). Queueing it,
        scheduling the connection and servicing the queue cost more Python than the request
        itself, so a line in the line cache (``entry`` is its entry there, or the read cache's)
        is run here and its reply sent at once. It is the batch path's first step (check the
        level, call, frame a str reply) with nothing around it; anything else returns False, or
        hands the result to _deliver and the normal path. tests/test_fastpaths.py pins it to the
        pipelined path.
        """
        if entry[0].gate > (conn.level if conn.authenticated else -1):
            return False
        self.stats.commands += 1
        try:
            result = entry[1]()
        except Exception as exc:
            self._text_error(conn, exc)
            self._schedule(conn)
            return True
        if result.__class__ is not str:
            self._deliver(conn, result, TEXT)
            self._schedule(conn)
            return True
        # Most handlers a client polls return a constant ("pong", "OK"), the same object every
        # time: framing and encoding it again would cost a fifth of the round trip's Python.
        # Only a short reply is kept, so a big one is not held in memory after it is sent.
        last = self._last_answer
        if result is last[0]:
            data = last[1]
        else:
            data = (result if result[-1:] == "\n" else result + "\n").encode("utf-8", _UNENCODABLE)
            if len(data) > self.max_output:  # checked before it is kept: a kept reply was checked
                data = self._too_large(conn, len(data), TEXT)
            elif len(data) <= _KEEP_ANSWER_MAX:
                self._last_answer = (result, data)
        if conn.out is not None:  # the handler wrote to its own connection: the reply goes after that
            self._write(conn, data)
            self._schedule(conn)
            return True
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:  # the peer is gone, or a handler closed the server
            self._drop(conn, exc)
            return True
        self.stats.bytes_out += sent
        if sent < len(data):
            self._write(conn, memoryview(data)[sent:])  # a memoryview: part-sent, as _flush leaves one
            self._schedule(conn)  # _service flushes the rest and asks for a write event
        return True

    def _run_same_command(self, conn: Connection, queue: Deque[Any], entry: Tuple[Command, Callable[[], Any]],
                          line: str, most: int, replies: List[str]) -> Tuple[int, int]:
        """Runs the plain requests at the head of the queue that name ``command``, as one batch.

        Called right after ``line`` (a request for ``command``) returned a str. A pipelining
        client usually sends runs of one command: 10,000 pings, or a script's `echo`s. Finding
        such a run, splitting its words and calling the handler are then C-level loops (islice,
        map, starmap), so the per-request cost is little more than the handler itself. That is
        the difference between this library and a bare selectors loop on pipelined input.

        Semantics are the per-request path's: each request calls the handler once, in order,
        and gets its own reply, in order; the batch never runs under a poll budget (it cannot
        read the clock between calls). The one difference: the handler runs for the whole run
        before any reply is delivered, so if it returns a Pending or Stream in the middle, the
        requests after it have already run; their results wait in the queue (as _Ran), behind
        the parked reply. Returns (requests run, characters of reply text added to ``replies``).

        A command's reply_to_run answers a run instead of the calls when every line is
        single-spaced words: it gives the replies the calls would, and the handler it stands in
        for is pure, so skipping the calls changes nothing else (stats count each request). A
        command's same_reply answers a run of it without arguments the same way.
        """
        command = entry[0]
        name = command.name
        head = queue[0]
        if head.__class__ is Repeat:  # the decoder already found the run
            if head.line != line:
                return 0, 0
            count = min(head.count, most)
            if count < 1:  # no room under high water (see _run_plain_batch)
                return 0, 0
            if command.same_reply is not None and line == name:
                return self._answer_run(queue, count, "\n".join(repeat(command.same_reply, count)), replies)
            return self._run_calls(conn, queue, starmap(entry[1], repeat((), count)), count, replies)
        if len(queue) < _MIN_RUN - 1:
            return 0, 0
        chunk = list(islice(queue, 0, most))
        if line == name:  # no arguments: a run of identical lines
            if chunk.count(name) == len(chunk):
                count = len(chunk)
            else:  # operator.eq, not name.__eq__, whose NotImplemented for a non-str is truthy
                count = list(map(eq, chunk, repeat(name))).index(False)
            if count < _MIN_RUN:
                return 0, 0
            if command.same_reply is not None:
                return self._answer_run(queue, count, "\n".join(repeat(command.same_reply, count)), replies)
            calls = starmap(command.fn, repeat((), count))
        else:  # arguments: a raw command (its handler takes *words)
            prefix = name + " "
            try:
                text = "\n".join(chunk)
            except TypeError:  # an event (an over-long line, a Repeat) in the chunk: stop before it
                chunk = list(takewhile(_is_str, chunk))
                text = "\n".join(chunk)
            # Lines hold no LF, so "\n" + prefix matches only at the start of a line.
            if command.reply_to_run is not None:
                # The run's words as one text, with no str per line to make: the text is
                # len(prefix) shorter per line exactly when every line had the prefix.
                words = text[len(prefix):].replace("\n" + prefix, "\n") if text.startswith(prefix) else ""
                if len(words) != len(text) - len(chunk) * len(prefix):
                    text = _cut_run(chunk, prefix)
                    words = text[len(prefix):].replace("\n" + prefix, "\n")
                if len(chunk) >= _MIN_RUN and single_spaced(words):
                    answer = command.reply_to_run(words)
                    if answer is not None:
                        return self._answer_run(queue, len(chunk), answer, replies)
            # Splitting on "\n" + prefix cuts the text into what follows the prefix on each line
            # (one C call, where slicing each line was ~100 ns a line): one piece per line when
            # every line has it.
            tails = text[len(prefix):].split("\n" + prefix) if text.startswith(prefix) else ()
            if len(tails) != len(chunk):
                text = _cut_run(chunk, prefix)
                tails = text[len(prefix):].split("\n" + prefix)
            count = len(chunk)
            if count < _MIN_RUN or needs_shlex(text):  # short, or some line needs shlex: line by line
                return 0, 0
            # words[1:] of each line is the split of what follows the prefix.
            calls = starmap(command.fn, map(str.split, tails))
        return self._run_calls(conn, queue, calls, count, replies)

    def _answer_run(self, queue: Deque[Any], count: int, answer: str, replies: List[str]) -> Tuple[int, int]:
        """Takes a run answered by its command's reply_to_run or same_reply: what _run_calls does
        for a run whose handler calls all returned str, without the calls."""
        self.stats.commands += count
        self._consume(queue, count)
        answer += "\n"
        replies.append(answer)
        return count, len(answer)

    def _run_calls(self, conn: Connection, queue: Deque[Any], calls: Any, count: int,
                   replies: List[str]) -> Tuple[int, int]:
        """Makes ``calls`` (one per request at the head of the queue) and takes those requests."""
        results: List[Any] = []
        self.stats.commands += count  # up front, as the per-request path counts before each call
        try:
            results.extend(calls)  # keeps the results before a raise
            if len(results) < count:  # a handler raised StopIteration, which ends starmap quietly
                raise StopIteration
        except BaseException as exc:  # the batch ends with the request that raised
            ran = len(results) + 1
            self._consume(queue, ran)
            self.stats.commands -= count - ran
            if not isinstance(exc, Exception):  # KeyboardInterrupt: keep the replies, then go
                self._collect_replies(conn, queue, results, replies)
                raise
            results.append(_Raised(exc))
            return ran, self._collect_replies(conn, queue, results, replies)
        self._consume(queue, count)
        return count, self._collect_replies(conn, queue, results, replies)

    def _collect_replies(self, conn: Connection, queue: Deque[Any], results: List[Any], replies: List[str]) -> int:
        """Adds a batch's results to ``replies`` in order; returns the characters added."""
        if not results:
            return 0
        first = results[0]
        # count() compares with ==, so an equal str subclass passes too: one with a CR must reach
        # render_text, so a CR takes the join below, which finds it.
        if first.__class__ is str and results.count(first) == len(results) and first.find("\r") < 0:
            text = (first if first[-1:] == "\n" else first + "\n") * len(results)
        else:
            try:  # str.join refuses anything but a str, in C: cheaper than checking each type
                text = "\n".join(results)
            except TypeError:
                text = None
            # A CR is where the paths could part: render_text rewrites one in a str subclass's
            # text, and a plain str's goes out as it is. The one-by-one path makes that call.
            if text is None or text.find("\r") >= 0:
                return self._collect_one_by_one(conn, queue, results, replies)
            if text.count("\n") == len(results) - 1:  # no reply has a newline of its own
                text += "\n"
            else:
                text = "".join([result if result[-1:] == "\n" else result + "\n" for result in results])
        # A run is cut to the room at its first reply's size (see _run_plain_batch); later replies
        # much bigger than the first could still overrun it. Rare, and then they go one by one.
        if len(text) >= _HOLD_ROOM_CHECK and len(text) > self.high_water - conn.out_size - sum(map(len, replies)):
            return self._collect_one_by_one(conn, queue, results, replies)
        replies.append(text)
        return len(text)

    def _collect_one_by_one(self, conn: Connection, queue: Deque[Any], results: List[Any], replies: List[str]) -> int:
        """_collect_replies for results that cannot be joined as they are: a handler raised,
        returned something to render or wait for, or returned text with a CR, mid-run. Replies
        go out one at a time, in order, each as the per-request path frames it. Once they reach
        the high-water mark, the rest wait in the queue (as _Ran) for the client to drain, as the
        per-request path would wait to run them."""
        room = self.high_water - conn.out_size - sum(map(len, replies))
        for index, result in enumerate(results):
            if result.__class__ is str:
                reply = result if result[-1:] == "\n" else result + "\n"
                room -= len(reply)
                if room > 0:
                    replies.append(reply)
                    continue
            self._write_replies(conn, replies)
            self._deliver_ran(conn, result)
            if conn.waiting is not None or room <= 0 or conn.out_size >= self.high_water:
                queue.extendleft(_Ran(later) for later in reversed(results[index + 1:]))
                break
        return 0

    def _deliver_ran(self, conn: Connection, result: Any) -> None:
        if result.__class__ is _Raised:
            self._text_error(conn, result.exc)
        else:
            self._deliver(conn, result, TEXT)

    @staticmethod
    def _consume(queue: Deque[Any], count: int) -> None:
        if not queue:  # a handler in the run closed the server, which dropped what was queued
            return
        head = queue[0]
        if head.__class__ is Repeat:  # a batch never spans more than one Repeat
            if count >= head.count:
                queue.popleft()
            else:
                head.count -= count
        elif count >= len(queue):
            queue.clear()
        else:
            deque(starmap(queue.popleft, repeat((), count)), 0)

    def _plain_request(self, line: str) -> Optional[Tuple[Command, Callable[[], Any]]]:
        """(command, call) when the fast path in _run_plain_batch may run ``line``, else None.

        That is a line with no quoting and no JSON, naming a one-word command whose handler
        takes the words as they are (no parameters, or only ``*args: str``). Such a line means
        the same thing every time, so it also goes into the registry's line cache.
        """
        if line.__class__ is not str or line[0] == "{" or _QUOTING.search(line) is not None:
            return None
        words = line.split()
        registry = self.registry
        command = registry.commands.get(words[0])
        if command is None or words[0] in registry._groups:
            return None
        mode = command.signature.mode
        if mode != "raw" and (mode != "none" or len(words) > 1):
            return None
        fn = command.fn
        entry = (command, partial(fn, *words[1:]) if len(words) > 1 else fn)
        registry.remember(registry.line_cache, line, entry)
        return entry

    def _text_error(self, conn: Connection, exc: Exception) -> None:
        if isinstance(exc, CommandError):
            self.stats.errors += 1
            self._write(conn, _err_line(exc.message))
        elif isinstance(exc, ParseError):
            self.stats.errors += 1
            self._write(conn, _err_line(str(exc)))
        else:
            self._internal_error(conn, exc, TEXT)

    def _resolve(self, conn: Connection, words: List[str], line: str) -> Tuple[Optional[Command], List[str]]:
        registry = self.registry
        command = registry.commands.get(words[0])
        if command is not None and words[0] not in registry._groups:
            args = words[1:]
        else:
            try:
                command, args = registry.resolve(words, conn)
            except CommandError:
                if looks_like_http(line):
                    self._reject_http(conn)
                    return None, []
                if self.fallback is not None:
                    return self._fallback_command(words[0]), words[1:]
                raise
        if not conn.authenticated and not command.pre_auth:
            raise PermissionDenied("authentication required (send 'auth TOKEN')")
        if command.rank > conn.level:
            raise PermissionDenied(f"permission denied: '{command.name}' needs {command.level}")
        return command, args

    def _fallback_command(self, name: str) -> Command:
        fallback = self.fallback
        assert fallback is not None

        def run(*args: str, conn: Connection) -> Any:
            result = fallback(name, list(args), conn)
            return NO_REPLY if result is None else result

        return Command(name, run, connection_type=Connection, help="")

    def _execute_json(self, conn: Connection, line: str) -> None:
        import json

        request_id: Any = None
        try:
            try:
                request = json.loads(line)
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
                command, extra = self._resolve(conn, argv, " ".join(argv))
                if command is None:
                    return
                result = command.call(extra, conn)
            else:
                name = request.get("cmd")
                args = request.get("args", [])
                kwargs = request.get("kwargs", {})
                if not isinstance(name, str) or not name.split():
                    raise CommandError("'cmd' must be a non-empty string", code="bad_request")
                if not isinstance(args, list) or not isinstance(kwargs, dict):
                    raise CommandError("'args' must be a list and 'kwargs' an object", code="bad_request")
                words = name.split()
                command, extra = self._resolve(conn, words, name)
                if command is None:
                    return
                result = command.call_json(extra + args, kwargs, conn)
        except CommandError as exc:
            self.stats.errors += 1
            self._write_error(conn, request_id, exc.code, exc.message)
            return
        except Exception as exc:
            self._internal_error(conn, exc, request_id)
            return
        self._deliver(conn, result, request_id)

    def _internal_error(self, conn: Connection, exc: Exception, reply_id: Any) -> None:
        self.stats.errors += 1
        log.error("command handler raised on connection #%d", conn.id, exc_info=exc)
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                log.exception("on_error callback raised")
        message = f"internal error ({type(exc).__name__})"
        self._write_error(conn, reply_id, "internal", message)

    def _write_error(self, conn: Connection, reply_id: Any, code: str, message: str) -> None:
        self._write(conn, _error_reply(reply_id, code, message))

    def _deliver(self, conn: Connection, result: Any, reply_id: Any) -> None:
        """Writes a finished result, or parks the connection behind a Pending or Stream."""
        if result.__class__ is str and reply_id is TEXT:
            data = (result if result.endswith("\n") else result + "\n").encode("utf-8", _UNENCODABLE)
        elif result is NO_REPLY:
            if reply_id is TEXT:
                return
            data = json_line({"id": reply_id, "ok": True, "result": None})
        elif isinstance(result, Pending):
            if result.done:
                self._finish_pending(conn, result, reply_id)
                return
            conn.waiting = result
            conn.waiting_id = reply_id
            result._waiter = lambda: self.wake(conn)
            timeout = self.pending_timeout if result.timeout is None else result.timeout
            if timeout and timeout < float("inf"):  # NaN would break the timer heap's order
                # A weak reference: a Pending resolved long before its timeout must not keep its
                # value (a big reply) alive in the timer heap until then.
                self.call_later(timeout, self._expire_pending, conn, weakref.ref(result))
            return
        elif is_stream(result):
            conn.waiting = result if isinstance(result, Stream) else Stream(result)
            conn.waiting_id = reply_id
            if reply_id is not TEXT:
                # Said at once: a client can then tell a stream that is quiet (a `log tail` of a
                # quiet log, a `watch 60`) from a server that does not answer.
                self._write(conn, json_line({"id": reply_id, "stream": True}))
            return
        elif reply_id is TEXT:
            data = render_text(result).encode("utf-8", _UNENCODABLE)
        else:
            data = json_line({"id": reply_id, "ok": True, "result": to_jsonable(result)})
        if len(data) > self.max_output:
            data = self._too_large(conn, len(data), reply_id)
        self._write(conn, data)

    def _too_large(self, conn: Connection, size: int, reply_id: Any) -> bytes:
        """The error sent in place of a reply larger than max_output. The client learns what
        happened, and its next request runs as usual; dropping the client instead would lose
        the replies before it and say nothing. The verdict depends on the reply alone, never
        on how much the client has yet to read, so the same request always gets the same
        answer; commands run only below high_water, so unsent output stays under
        high_water + max_output (the cap _write enforces)."""
        self.stats.errors += 1
        suffix = self._too_large_log.allow(_monotonic())  # the client can repeat it at will
        if suffix is not None:
            log.warning("connection #%d: a reply of %d bytes is over max_output (%d): sent an error instead%s",
                        conn.id, size, self.max_output, suffix)
        message = f"reply too large ({size} bytes; max_output is {self.max_output})"
        return _error_reply(reply_id, "too_large", message)

    def _finish_pending(self, conn: Connection, pending: Pending, reply_id: Any) -> None:
        if pending.error is not None:
            self.stats.errors += 1
            self._write_error(conn, reply_id, pending.error.code, pending.error.message)
        else:
            self._deliver(conn, pending.value, reply_id)

    def _expire_pending(self, conn: Connection, pending_ref: Callable[[], Optional[Pending]]) -> None:
        pending = pending_ref()
        if pending is not None and conn.waiting is pending and not pending.done:
            pending._expire()

    def _advance_waiting(self, conn: Connection, stop_at: Optional[float]) -> bool:
        """Moves a parked reply along; True when the queue behind it may proceed."""
        waiting = conn.waiting
        if waiting.__class__ is not Stream:
            if not waiting.done:
                return False
            conn.waiting = None
            self._finish_pending(conn, waiting, conn.waiting_id)
            return True  # even if it resolved to a Stream or Pending: the loop moves that along too
        if self._pump_stream(conn, waiting, stop_at):
            if conn.decoder is not None:
                conn.decoder.keep_blank = False  # however the stream ended
            return True
        return False

    def _pump_stream(self, conn: Connection, stream: Stream, stop_at: Optional[float]) -> bool:
        if stream.until_input:
            if conn.queue or conn.eof:  # a line pipelined behind the subscription stops it at once
                self._end_stream(conn)
                if conn.queue:
                    _drop_stopping_line(conn.queue)
                return True
            conn.decoder.keep_blank = True
        reply_id = conn.waiting_id
        iterator = stream.iterator
        low_water = self.low_water
        sent = 0
        while conn.out_size < low_water:
            if sent & 63 == 63 and stop_at is not None and _monotonic() >= stop_at:
                self._schedule(conn)
                return False
            try:
                item = next(iterator)
            except StopIteration:
                conn.waiting = None
                if reply_id is not TEXT:
                    self._write(conn, json_line({"id": reply_id, "ok": True, "result": None, "items": stream.count}))
                return True
            except CommandError as exc:
                conn.waiting = None
                self.stats.errors += 1
                self._write_error(conn, reply_id, exc.code, exc.message)
                return True
            except Exception as exc:
                conn.waiting = None
                self._internal_error(conn, exc, reply_id)
                return True
            except BaseException as exc:  # KeyboardInterrupt: the generator is dead; say so, then go
                conn.waiting = None
                self._write_error(conn, reply_id, "internal", f"internal error ({type(exc).__name__})")
                raise
            if item.__class__ is Wait:
                if item.until is not None:
                    self.call_later(max(0.0, item.until - _monotonic()), self._schedule, conn)
                return False
            if reply_id is TEXT:
                data = render_text(item).encode("utf-8", _UNENCODABLE)
            else:
                data = json_line({"id": reply_id, "item": to_jsonable(item)})
            if len(data) > self.max_output:  # the stream ends with the error in its place
                conn.waiting = None
                self._close_stream(stream)
                self._write(conn, self._too_large(conn, len(data), reply_id))
                return True
            stream.count += 1
            sent += 1
            self._write(conn, data)
            if conn.closed:
                return False
        return False  # resumes when the client has drained below the low-water mark

    def _end_stream(self, conn: Connection) -> None:
        stream = conn.waiting
        conn.waiting = None
        conn.decoder.keep_blank = False
        self._close_stream(stream)
        if conn.waiting_id is not TEXT:
            self._write(conn, json_line({"id": conn.waiting_id, "ok": True, "result": None, "items": stream.count}))

    @staticmethod
    def _close_stream(stream: Stream) -> None:
        try:
            stream.close()
        except Exception:
            log.exception("closing a stream raised")
