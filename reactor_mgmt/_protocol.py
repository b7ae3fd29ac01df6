# Sans-I/O protocol core: bytes go in, request lines and protocol events come out. Nothing here
# touches a socket, a clock or a logger, so every edge case (a CR split from its LF, an IAC
# split across reads, an over-long line) is tested by feeding bytes, as h11 does.
#
# The layers, in the order bytes meet them:
#   TelnetFilter  strips telnet negotiation so `telnet host port` behaves like `nc`;
#   LineBuffer    splits on LF (CRLF tolerated) and enforces the line cap without ever
#                 buffering past it;
#   RequestDecoder glues the two, decodes UTF-8, drops blank lines (unless a running
#                 subscription wants Enter to stop it), and reports problems as
#                 values in the same ordered list as the lines, so replies stay in order.
# Each layer has a fast path for the common case (no IAC, whole lines, ASCII) because the
# reactor feeds every received byte through here; the property tests pin each fast path to the
# general one. Byte searches use bytes.find, never `in`: `x in data` first tries x as an int and
# clears the TypeError, which costs ~240 ns a test.
# Word splitting (split_words) and the HTTP sniff (looks_like_http) live here too: they are the
# rest of turning a line into a request, and are just as pure.
from __future__ import annotations

import re

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, FrozenSet, List, Optional, Tuple, Union

IAC = 0xFF
_IAC_BYTE = b"\xff"
_NUL_BYTE = b"\x00"
_CTRL_D = b"\x04"
_TLS_HANDSHAKE = b"\x16\x03"  # a TLS record's first bytes: content type 22 (handshake), version 3.x
_TLS_FIRST, _TLS_SECOND = _TLS_HANDSHAKE[:1], _TLS_HANDSHAKE[1:]
_TLS_AFTER_LF = b"\n" + _TLS_HANDSHAKE
_NEGOTIATE = frozenset((0xFB, 0xFC, 0xFD, 0xFE))  # WILL WONT DO DONT: one option byte follows
_SB = 0xFA
_SE = 0xF0
_SESSION_ENDERS = frozenset((0xF4, 0xEC))  # IP (what telnet sends for Ctrl-C), EOF
# Telnet's commands are 0xEC (EOF, RFC 1184) to 0xFF. 0xFF before any other byte is not telnet
# but a client sending raw bytes (Latin-1 ÿ): both bytes stay, and the line's UTF-8 check
# answers `ERR request is not valid UTF-8` rather than the byte after it silently vanishing.
_FIRST_COMMAND = 0xEC
# Real subnegotiations are short (a window size, a terminal type). After this many bytes with no
# IAC SE, the client is not speaking telnet: the filter leaves the block and puts a 0xFF in its
# place, so that line is answered `ERR request is not valid UTF-8` and the next ones run, where
# an IAC SB from a raw client had silently swallowed the rest of its session.
_SUBNEG_MAX = 1024

_DATA, _COMMAND, _OPTION, _SUBNEG, _SUBNEG_IAC = range(5)

DEFAULT_MAX_LINE = 16384


class TelnetFilter:
    """Removes telnet commands from a byte stream, keeping state across feeds.

    ``IAC IAC`` becomes a literal 0xFF, option negotiation and ``SB ... SE`` vanish, ``CR NUL``
    becomes CR LF (the end of a line typed in character mode), and ``IAC IP`` / ``IAC EOF`` set
    :attr:`ended`; bytes after them are dropped, since the session is over. IAC before a byte
    that is no telnet command is kept, with that byte, as data; so is a 0xFF in place of a
    subnegotiation that reaches _SUBNEG_MAX bytes without its IAC SE, followed by the byte
    that reached it.
    """

    __slots__ = ("_state", "_after_cr", "_after_cr_nul", "_subneg_bytes", "ended")

    def __init__(self) -> None:
        self._state = _DATA
        self._after_cr = False
        self._after_cr_nul = False  # a CR NUL ended the line: an LF right after it is the same end
        self._subneg_bytes = 0
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        if self.ended:
            return b""
        if self._state == _DATA and not self._after_cr_nul and data.find(_IAC_BYTE) < 0 and data.find(_NUL_BYTE) < 0:
            # Plain text from nc or a script: nothing to rewrite, so no per-byte loop.
            if data:
                self._after_cr = data[-1] == 13
            return data
        return self._feed_slowly(data)

    def _feed_slowly(self, data: bytes) -> bytes:
        out = bytearray()
        state = self._state
        after_cr = self._after_cr
        after_cr_nul = self._after_cr_nul
        subneg_bytes = self._subneg_bytes
        for byte in data:
            if after_cr_nul:
                after_cr_nul = False
                if byte == 10 and state == _DATA:  # CR NUL LF: not telnet, but one line end, not two
                    continue
            if state == _DATA:
                if byte == IAC:
                    state = _COMMAND
                elif byte == 0 and after_cr:
                    # CR NUL ends the line: telnet in character mode sends it for Enter, and
                    # a line that waited for an LF would never be answered (RFC 1123 3.3.1).
                    out.append(10)
                    after_cr = False
                    after_cr_nul = True
                else:
                    out.append(byte)
                    after_cr = byte == 13
            elif state == _COMMAND:
                if byte == IAC:
                    out.append(IAC)
                    after_cr = False
                    state = _DATA
                elif byte in _NEGOTIATE:
                    state = _OPTION
                elif byte == _SB:
                    state = _SUBNEG
                    subneg_bytes = 0
                elif byte in _SESSION_ENDERS:
                    self.ended = True
                    break
                elif byte < _FIRST_COMMAND:
                    out.append(IAC)
                    out.append(byte)
                    after_cr = byte == 13
                    state = _DATA
                else:  # NOP, AYT, GA...: a two-byte command with nothing to keep
                    state = _DATA
            elif state == _OPTION:
                state = _DATA
            else:  # in a block: every byte counts toward the cap, IAC pairs too (raw data full
                # of 0xFF bytes is IAC pairs; uncounted, they swallowed the lines after them)
                subneg_bytes += 1
                if state == _SUBNEG_IAC and byte == _SE:  # IAC SE closes the block
                    state = _DATA
                elif state == _SUBNEG and byte == IAC:  # an IAC SE may close it at the cap
                    state = _SUBNEG_IAC
                elif subneg_bytes >= _SUBNEG_MAX:
                    # The marker, then the byte that reached the cap as data: a line end there
                    # still ends the line, and the next one runs.
                    out.append(IAC)
                    out.append(byte)
                    after_cr = byte == 13
                    state = _DATA
                else:  # IAC IAC is an escaped byte inside the block
                    state = _SUBNEG
        self._state = state
        self._after_cr = after_cr
        self._after_cr_nul = after_cr_nul
        self._subneg_bytes = subneg_bytes
        return bytes(out)


class _LineTooLongType:
    """Marker in a LineBuffer's output: a line went over the cap and is being discarded."""

    __slots__ = ("json",)

    def __init__(self, json: bool = False) -> None:
        self.json = json  # the line began with '{', so its error must go back as JSON

    def __repr__(self) -> str:
        return "LINE_TOO_LONG_JSON" if self.json else "LINE_TOO_LONG"


LINE_TOO_LONG = _LineTooLongType()
LINE_TOO_LONG_JSON = _LineTooLongType(json=True)


def _too_long(line: bytes, max_line: int) -> _LineTooLongType:
    # Judge by the first min(64, max_line + 1) bytes: every path that reports an over-long
    # line has at least that many, so the verdict does not depend on how reads split it.
    return LINE_TOO_LONG_JSON if line[: min(64, max_line + 1)].lstrip()[:1] == b"{" else LINE_TOO_LONG


class LineBuffer:
    """Splits a byte stream into lines, with a hard cap on the length of one line.

    ``feed`` returns the complete lines (without LF or CRLF) and, in their place, the marker
    ``LINE_TOO_LONG`` once for each line that went over ``max_line`` bytes. An over-long line
    is reported as soon as the cap is passed, then discarded up to its newline; at most
    ``max_line + 1`` bytes of an unfinished line are ever held (the +1 is a CR whose LF has
    not arrived). Bytes are scanned once: a partial line is kept aside and only the new bytes
    are searched, so feeding N bytes costs O(N) however they are split.
    """

    __slots__ = ("max_line", "_partial", "_discarding")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._partial = bytearray()
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held right now (never more than max_line + 1)."""
        return len(self._partial)

    @property
    def at_line_start(self) -> bool:
        return not self._partial and not self._discarding

    def holds_only(self, start: bytes) -> bool:
        """Whether the unfinished line so far is exactly ``start``."""
        return self._partial == start and not self._discarding

    def feed(self, data: bytes) -> List[Union[bytes, _LineTooLongType]]:
        lines: List[Any] = data.split(b"\n")
        tail = lines.pop()
        if lines:
            if self._discarding:
                # The head finishes a line that was already reported as too long.
                self._discarding = False
                lines[0] = None
            elif self._partial:
                self._partial += lines[0]
                lines[0] = bytes(self._partial)
                self._partial = bytearray()
            # The CR of a CRLF may have arrived in the previous feed and now ends lines[0].
            if data.find(b"\r") >= 0 or (lines[0] and lines[0][-1] == 13):
                lines = [line[:-1] if line and line[-1] == 13 else line for line in lines]
            if lines[0] is None:
                del lines[0]
            limit = self.max_line
            if lines and max(map(len, lines)) > limit:
                lines = [_too_long(line, limit) if len(line) > limit else line for line in lines]
        if tail and not self._discarding:
            if len(self._partial) + len(tail) > self.max_line + 1:
                marker = _too_long(bytes(self._partial[:64]) + tail[:64], self.max_line)
                self._partial = bytearray()
                self._discarding = True
                lines.append(marker)
            else:
                self._partial += tail
        return lines

    def feed_eof(self) -> List[Union[bytes, _LineTooLongType]]:
        """Returns the final line that had no newline, if any."""
        self._discarding = False
        if not self._partial:
            return []
        line = bytes(self._partial)
        self._partial = bytearray()
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line:  # a held max_line + 1 bytes whose last was not a CR
            return [_too_long(line, self.max_line)]
        return [line]


# ---- events that RequestDecoder emits alongside request lines ----


class ProtocolEvent:
    """Something other than a request line, in its place in the ordered input."""

    __slots__ = ()
    code = "bad_request"
    message = ""
    json = False  # whether the line began with '{', so the error goes back as JSON


class LineTooLong(ProtocolEvent):
    __slots__ = ("limit", "json")
    code = "too_long"

    def __init__(self, limit: int, json: bool = False) -> None:
        self.limit = limit
        self.json = json  # the line began with '{', so the error goes back as JSON

    @property
    def message(self) -> str:  # type: ignore[override]
        return f"line too long (limit {self.limit} bytes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LineTooLong) and other.limit == self.limit

    def __repr__(self) -> str:
        return f"LineTooLong({self.limit})"


class BadEncoding(ProtocolEvent):
    __slots__ = ("json",)
    message = "request is not valid UTF-8"

    def __init__(self, json: bool = False) -> None:
        self.json = json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BadEncoding)

    def __repr__(self) -> str:
        return "BadEncoding()"


class EndSession(ProtocolEvent):
    """The client asked to leave without a command: telnet IP/EOF, or Ctrl-D on an empty line."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EndSession)

    def __repr__(self) -> str:
        return "EndSession()"


class TlsOnPlainPort(ProtocolEvent):
    """A TLS ClientHello where a plain-text session begins (`openssl s_client`, a TLS client
    pointed at the wrong port). Its bytes hold no line end for sure (an IAC SB among its random
    ones swallowed the rest), so it was left waiting for one, and its client for a ServerHello,
    until a timeout: it is answered at once, and the session ends."""

    __slots__ = ()
    message = "this port speaks plain text, not TLS"


TLS_ON_PLAIN_PORT = TlsOnPlainPort()
END_SESSION = EndSession()
BAD_ENCODING = BadEncoding()
BAD_ENCODING_JSON = BadEncoding(json=True)

if TYPE_CHECKING:
    Item = Union[str, ProtocolEvent]


class RequestDecoder:
    """Bytes in, an ordered list of request lines (``str``) and ProtocolEvents out.

    Lines are decoded as UTF-8 and stripped; blank lines are dropped (``blank_after`` says
    where a read had them). After END_SESSION the
    decoder swallows everything, because the session is over.
    """

    __slots__ = ("_telnet", "_lines", "ended", "keep_blank", "blank_after", "_at_rest", "_max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        # The layers are made on the first read that is not one whole plain line: a client that
        # sends a line and waits for its reply (nc, a script, a monitoring probe) never needs
        # them, and an idle connection then holds this object alone (about 180 bytes less).
        self._telnet: Optional[TelnetFilter] = None
        self._lines: Optional[LineBuffer] = None
        self._max_line = max_line
        self.ended = False
        # True while no layer holds state between feeds: no unfinished line, nothing being
        # discarded, no telnet command or CR half-read, session not over. Then a read that is one
        # whole line can skip the layers; one flag on this object is cheaper to test per round
        # trip than the four it sums up, on three other objects. Recomputed after every feed.
        self._at_rest = True
        # Set while a subscription runs: pressing Enter must stop `log tail`, so a blank line
        # is delivered (as "") instead of dropped.
        self.keep_blank = False
        # Where the last read had a blank line right after a line, or None: for each such blank
        # line, how many of its items came after it. A subscription started by the line before
        # one stops at once (Dispatcher: its first pump finds as many requests queued behind it),
        # as Enter typed before it ran asks. It holds for the items of that read alone: set, it
        # keeps the next read off the fast path, which clears it.
        self.blank_after: Optional[FrozenSet[int]] = None

    @property
    def buffered(self) -> int:
        return 0 if self._lines is None else self._lines.buffered

    def _layers(self) -> Tuple[TelnetFilter, LineBuffer]:
        if self._lines is None or self._telnet is None:
            self._telnet = TelnetFilter()
            self._lines = LineBuffer(self._max_line)
        return self._telnet, self._lines

    def feed(self, data: bytes) -> List[Item]:
        if self._at_rest and data[-1:] == b"\n" and data.isascii() and len(data) <= self._max_line:
            # One request per read, as a client that waits for each reply sends it: a printable
            # line (isprintable() is False for LF, CR, tab, NUL, IAC and every other control) with
            # no space at either end means itself, and leaves every layer at rest.
            text = data[:-1].decode("ascii")
            if text.isprintable() and text and text[0] != " " and text[-1] != " ":
                return [text]
        if not data:  # nothing read: no state changes (a layer's fast path would clear a flag)
            return []
        self.blank_after = None  # it spoke of the read before this one
        items = self._feed(data)
        telnet, lines = self._layers()
        self._at_rest = (
            not lines._partial
            and not lines._discarding
            and not self.ended
            and telnet._state == _DATA
            and not telnet._after_cr
            and not telnet._after_cr_nul
            and self.blank_after is None
        )
        return items

    def _feed(self, data: bytes) -> List[Item]:
        telnet, lines = self._layers()
        if not lines._discarding and not self.ended and telnet._state == _DATA:
            # What a script or nc sends: lines of plain ASCII with nothing for the telnet filter,
            # the line cap or strip() to do. A few C-level scans of the whole read replace three
            # layers of per-feed work; the property tests pin this to the general path below.
            # A read usually ends mid-line (8 KiB is not a multiple of a line), so the unfinished
            # tail is kept here too, exactly as LineBuffer would keep it. This serves a script
            # pipelining distinct requests (`printf 'a\nb\n' | nc`); test_properties pins it.
            if lines._partial:
                data = bytes(lines._partial) + data  # a local copy: state changes only on success
            if _is_plain(data, lines.max_line):
                items: List[Any] = data.decode("ascii").split("\n")
                tail = items.pop()
                if tail:
                    lines._partial = bytearray(tail.encode("ascii"))
                elif lines._partial:
                    lines._partial = bytearray()
                telnet._after_cr = telnet._after_cr_nul = False
                return items
            if lines._partial:
                data = data[len(lines._partial) :]
        if self.ended:
            return []
        data = telnet.feed(data)
        if data.find(_TLS_FIRST) >= 0 or data[:1] == _TLS_SECOND:  # one C scan: 0x16 is rare in a request
            cut = _tls_record_at(data, lines)
            if cut >= 0:  # see TlsOnPlainPort: the lines before it still run
                items = self._decode(lines.feed(data[:cut]))
                self.ended = True
                return [*items, TLS_ON_PLAIN_PORT, END_SESSION]
        if data.find(_CTRL_D) >= 0:
            # Ctrl-D as the first byte of a line ends the session wherever the reads happen to
            # split the input, so one inside this chunk (after a LF) counts as well.
            at_start = data[:1] == _CTRL_D and lines.at_line_start
            cut = 0 if at_start else data.find(b"\n\x04") + 1
            if at_start or cut:
                items = self._decode(lines.feed(data[:cut]))
                if not self.ended:
                    self.ended = True
                    items.append(END_SESSION)
                return items
        items = self._decode(lines.feed(data))
        if telnet.ended and not self.ended:
            self.ended = True
            items.append(END_SESSION)
        return items

    def feed_eof(self) -> List[Item]:
        if self.ended:
            return []
        self.ended = True
        self._at_rest = False
        return [] if self._lines is None else self._decode(self._lines.feed_eof())

    def _decode(self, raw_lines: List[Any]) -> List[Item]:
        if not raw_lines:
            return []
        try:
            # One join and one decode for the whole batch; the join fails on a too-long marker
            # and the decode on bad UTF-8, and only then is each line decoded on its own.
            joined = b"\n".join(raw_lines)
            text = joined.decode()
        except TypeError:  # a too-long marker among them
            items: List[Any] = [self._decode_one(line) for line in raw_lines]
            maybe_blank = maybe_ctrl_d = True
        except UnicodeDecodeError:
            # Some line is not UTF-8. Decoded whole with surrogateescape, a line is UTF-8 exactly
            # when it has no escaped byte (UTF-8 never decodes to a surrogate): one C scan a
            # line, where a failed decode per line (~0.7 us) made one 8 KiB read of `\x80` lines
            # 2.8 ms of decoding that no poll budget can split.
            text = b"\n".join(raw_lines).decode("utf-8", "surrogateescape")
            items = [_bad_or_stripped(line) for line in text.split("\n")]
            maybe_blank = maybe_ctrl_d = True
        else:
            maybe_ctrl_d = _CTRL_D_STR in text
            if _needs_strip(joined):
                items = [line.strip() for line in text.split("\n")]
                maybe_blank = True
            else:  # what scripts send: no line has whitespace to strip, so skip 10k strip() calls
                items = text.split("\n")
                maybe_blank = joined.find(b"\n\n") >= 0 or joined[:1] == b"\n" or joined[-1:] == b"\n" or not joined
        if maybe_blank and not self.keep_blank and "" in items:
            items = self.drop_blank(items)
        if maybe_ctrl_d and _CTRL_D_STR in items:
            index = items.index(_CTRL_D_STR)
            del items[index:]
            items.append(END_SESSION)
            self.ended = True
        return items

    def drop_blank(self, items: List[Any]) -> List[Any]:
        """``items`` without their blank lines, noting in blank_after where one followed a line."""
        kept: List[Any] = []
        after = []  # the index in kept of the item after each blank line that followed a line
        previous = ""
        for item in items:
            if item != "":
                kept.append(item)
            elif previous != "":
                after.append(len(kept))
            previous = item
        if after:
            self.blank_after = frozenset(len(kept) - index for index in after)
            self._at_rest = False  # the next read's slow path replaces it: the fast one keeps it
        return kept

    def _decode_one(self, line: Union[bytes, _LineTooLongType]) -> Item:
        if isinstance(line, _LineTooLongType):
            return LineTooLong(self._max_line, json=line.json)
        return _bad_or_stripped(line.decode("utf-8", "surrogateescape"))


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte UTF-8 refused


def _bad_or_stripped(line: str) -> Item:
    """A line decoded with surrogateescape: the request, stripped, or the event for a line
    that is not UTF-8 (JSON-framed when it began with `{`)."""
    if line.isascii() or _ESCAPED_BYTE.search(line) is None:
        return line.strip()
    return BAD_ENCODING_JSON if line.lstrip()[:1] == "{" else BAD_ENCODING


def _tls_record_at(data: bytes, lines: LineBuffer) -> int:
    """Where in ``data`` (telnet's output, about to go to ``lines``) a line begins with a TLS
    handshake record's bytes, or -1: at its start, as the rest of a line begun with 0x16 in
    the read before (the two bytes may come in two reads), or after a line end. No request
    line starts with these two control bytes."""
    if lines.at_line_start and data[:2] == _TLS_HANDSHAKE:
        return 0
    if data[:1] == _TLS_SECOND and lines.holds_only(_TLS_FIRST):
        return 0
    index = data.find(_TLS_AFTER_LF)
    return index + 1 if index >= 0 else -1


def _is_plain(data: bytes, max_line: int) -> bool:
    """Whether ``data`` is lines of ASCII that the telnet filter, the line cap, strip() and the
    blank-line filter would all leave as they are: no IAC, NUL, Ctrl-D, CR or other whitespace
    but space and LF, no space at either end of a line, and no blank line.

    One translate turns each space into a LF and deletes the bytes that are never plain; then a
    single search for two LFs in a row finds a space at either end of a line and a blank line
    at once (and a double space, which is plain but rare: that read just takes the general
    path). Three two-byte searches cost twice as much, and a pipelined read pays this per read.
    """
    if len(data) > max_line or not data.isascii():
        return False
    spaced = data.translate(_SPACE_TO_LF, _NOT_PLAIN)
    return len(spaced) == len(data) and spaced[:1] != b"\n" and spaced.find(b"\n\n") < 0


_CTRL_D_STR = "\x04"
# Bytes that keep a feed off RequestDecoder's fast path: telnet IAC, NUL (CR NUL), Ctrl-D, a TLS
# record's first byte (see TlsOnPlainPort), and the whitespace that strip() would remove
# besides space and LF.
_NOT_PLAIN = b"\xff\x00\x04\x16\t\r\x0b\x0c\x1c\x1d\x1e\x1f"
_SPACE_TO_LF = bytes.maketrans(b" ", b"\n")
# Bytes that str.strip() would remove from the end of an ASCII line, besides space.
_ASCII_SPACE = b"\t\r\x0b\x0c\x1c\x1d\x1e\x1f"


def _needs_strip(joined: bytes) -> bool:
    """Whether any line of ``joined`` (lines separated by LF) has whitespace at either end.

    A few C-level scans of the batch cost far less than a strip() per line; anything unusual
    (non-ASCII, tabs, control whitespace) just takes the per-line path.
    """
    return (
        not joined.isascii()
        or joined[:1] == b" "
        or joined[-1:] == b" "
        or joined.find(b" \n") >= 0
        or joined.find(b"\n ") >= 0
        or len(joined.translate(None, _ASCII_SPACE)) != len(joined)
    )


# ---- request parsing ----

# Quotes and backslashes need shlex; so does whitespace that str.split() splits on but shlex
# keeps inside a word (\v, \f, \x1c-\x1f, NBSP...), or the two paths would disagree.
_QUOTING = re.compile(r"[\"'\\]|[^\S \t\r\n]")


class ParseError(ValueError):
    """A request line that cannot be split into words (an unbalanced quote)."""


# Whether split_words takes the shlex path for a line (quotes, backslashes, odd spaces): a match
# (truthy) or None. The regex's own method, with no Python call around it: every request pays it.
needs_quoting = _QUOTING.search


def split_words(line: str) -> List[str]:
    """Splits a request line shell-style: ``kick "Big Bob" 'too loud'`` gives three words."""
    if _QUOTING.search(line) is None:
        # Most requests have no quotes; str.split is ~20x faster than shlex.
        return line.split()
    import shlex  # lazily: it costs import time and most sessions never quote

    try:
        return shlex.split(line)
    except ValueError as exc:
        raise ParseError(f"cannot parse request: {exc}") from None


_HTTP_METHODS = frozenset(("GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"))
_HTTP_REQUEST_LINE = re.compile(r"^[A-Z]+ \S+ HTTP/\d")


def looks_like_http(line: str) -> bool:
    """True for a line a browser would send: a request line or a ``Host:`` header.

    A web page can make a browser talk to a loopback port; Redis defends by closing on such
    lines, and so do we. Called only for lines that are not a known command, so it costs
    nothing on the normal path.
    """
    if line[:5].lower() == "host:":
        return True
    method, _, _ = line.partition(" ")
    return method in _HTTP_METHODS and _HTTP_REQUEST_LINE.match(line) is not None
