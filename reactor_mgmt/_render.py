# Turning a handler's return value into reply bytes, in the two forms a client can ask for.
# Text is for people at nc/telnet: aligned key/value lines and tables, and it always ends with a
# newline so replies never run together. JSON is for scripts: exactly one line per reply, and
# anything json cannot hold degrades to str() instead of failing the command; a reply that even
# then cannot be printed becomes an internal error, never an exception out of poll().
#
# A dict of plain values (str, int, float, bool, None) is what most commands return (`status`),
# so both forms test for exactly those types first (by class, not isinstance: no MRO walk) and
# take the general path for anything else; tests/test_render.py pins both paths to one output.
# A Report carries one form for each: for results whose readable text is not what the renderer
# would make of their data (a stack dump); it is tested last, so no other result pays for it.
from __future__ import annotations

import enum
import time
from collections.abc import Mapping

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ._log import Throttle, log

_unprintable_log = Throttle()  # a client can send an id json.dumps cannot print, at will


class Report:
    """A result with a form of its own for each kind of request: ``text`` (its str()) for a text
    request, ``data`` (rendered as any result is) for a JSON one. For results whose readable
    text is not the table or key: value lines the data would give, such as a stack dump."""

    __slots__ = ("text", "data")

    def __init__(self, text: str, data: Any) -> None:
        self.text = text
        self.data = data

    def __str__(self) -> str:
        return self.text


# A text reply's lines end in LF (docs/protocol.md, Text replies), and a raw CR would have a
# terminal write over what it just showed: in a result's text, CRLF and a lone CR are line
# breaks, as LF is, and are laid out as LF is (a table cell's lines joined with a space, a
# mapping value's under its value column), whichever path the text takes: render_text here,
# _wire.text_reply for a str reply, and the dispatcher's str fast path, which leaves a str
# with a CR to text_reply. Each renderer below returns text with no CR; the layouts find one
# with one scan of their own text, so a result with none pays no more than that scan.
def lf_text(text: str) -> str:
    """``text`` with each CRLF and each lone CR turned into LF."""
    if "\r" in text:
        return text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def render_text(value: Any) -> str:
    """The text form of a result; always ends with exactly one newline per line, and holds no
    CR (a CRLF or a lone CR in the result is a line break: see lf_text)."""
    if value.__class__ is str:  # the common case first, and without isinstance's MRO walk
        text: str = value
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
    elif value is None:
        return "OK\n"
    else:
        try:  # a dict is what most commands return (`status`): straight to it, no ABC test
            text = _render_mapping(value) if value.__class__ is dict else _render_other(value)
        except Exception:
            # The host's object is broken (a __str__ or items() that raises): say so in the
            # reply rather than raise out of poll() into the host's loop.
            log.exception("cannot render a %s result", type(value).__name__)
            text = lf_text(f"<unprintable {type(value).__name__} object>")
    return text if text.endswith("\n") else text + "\n"


def _render_other(value: Any) -> str:
    if isinstance(value, str):
        return lf_text(str.__str__(value))
    if isinstance(value, Mapping):
        return _render_mapping(value)
    if isinstance(value, (list, tuple)):
        return _render_sequence(value)
    if isinstance(value, enum.Enum):
        return lf_text(str(value.name))
    if isinstance(value, bytes):
        return lf_text(value.decode("utf-8", "replace"))
    return lf_text(str(value))


def _safe_str(value: Any) -> str:
    # A result whose __str__ raises must not raise out of poll() into the host's loop; this is
    # how the traceback module prints such objects too.
    try:
        return str(value)
    except Exception:
        log.exception("cannot convert a %s to text", type(value).__name__)
        return f"<unprintable {type(value).__name__} object>"


def _float_text(value: float) -> str:
    """Six significant digits for a load, a rate or a ratio; where that takes an exponent to
    the integer part (an uptime in seconds after 12 days, a timestamp, a byte count: 999999.7
    and up), the shortest exact form: %.6g would print every such uptime as 1e+06 or so, and an
    operator reads a number that has stopped."""
    text = f"{value:.6g}"
    return repr(value) if "e+" in text else text


def _cell(value: Any) -> str:
    cls = value.__class__
    if cls is str:
        return value  # type: ignore[no-any-return]  # a str: tested by its class, the fastest test
    if cls is int or cls is bool:
        try:
            return str(value)
        except ValueError:  # an int past str()'s digit limit
            return _safe_str(value)
    if cls is float:  # a status's load or uptime: before the Enum test, which a float never passes
        text = f"{value:.6g}"  # _float_text(), written out: a status has a float or two
        return text if "e+" not in text else repr(value)
    if value is None:
        return "-"
    if isinstance(value, enum.Enum):
        return str(value.name)
    if isinstance(value, float):
        return _float_text(value)
    return _safe_str(value)


# The aligned-lines format of a mapping's keys, made once per set of keys: `status` returns the
# same keys on every call, and a %-format of the whole reply replaces a ljust() and two
# concatenations per line. Only for keys that are all exactly str (a str subclass or a StrEnum
# equal to a cached key may print otherwise: see _cell): tested before the format is made or
# (another Mapping) looked up, and for a dict on every call by the pass over its values, which
# a key of another class drops out of. Bounded: a host whose dicts have ever-new keys
# (connection ids) clears it when full, a mapping of more than 64 keys renders line by line,
# and a long format (keys a client chose) is used once, not kept.
_FORMATS: Dict[Tuple[str, ...], str] = {}
_FORMATS_MAX = 256
_FORMAT_KEYS_MAX = 64
_FORMAT_CHARS_MAX = 4096
_ONLY_STR = {str}


def _render_mapping(mapping: Mapping[Any, Any]) -> str:
    keys = tuple(mapping)
    fmt = None
    if mapping.__class__ is dict:
        # Looked up before the keys are tested (the pass over the values below tests them for
        # less than a set of their types costs): a dict's keys hash, but on a hash match a key
        # that is not str compares itself with the cached str keys, and its __eq__ may raise.
        try:
            fmt = _FORMATS.get(keys)
        except Exception:
            fmt = None  # the lines path prints it
    if fmt is None:
        if not keys or len(keys) > _FORMAT_KEYS_MAX or set(map(type, keys)) != _ONLY_STR:
            return _render_mapping_lines(mapping)
        if not all(key.isascii() for key in keys):  # padded by display width: the lines path
            return _render_mapping_lines(mapping)
        fmt = _FORMATS.get(keys)  # another Mapping's keys are tested first: they may not hash
        if fmt is None:
            width = max(map(len, keys)) + 1
            fmt = "\n".join([(key + ":").ljust(width).replace("%", "%%") + " %s" for key in keys])
            if len(fmt) <= _FORMAT_CHARS_MAX:
                if len(_FORMATS) >= _FORMATS_MAX:
                    _FORMATS.clear()
                _FORMATS[keys] = fmt
    # A str, int or bool is what %s prints of it, as _cell would (floats, None and the rest go
    # through _cell). A key that is not exactly str drops out, and the lines path prints the
    # mapping: one equal to a cached key (a StrEnum member) found that key's format. (Its other
    # values that are neither str, int nor bool are then made text twice: a rare case, and a
    # pure one but for a host's own __str__.) An int past str()'s digit limit makes % raise, and
    # the lines path says so.
    values = [
        value if (cls := value.__class__) is str or cls is int or cls is bool else _cell(value)
        for key, value in mapping.items()
        if key.__class__ is str
    ]
    try:
        text = fmt % tuple(values) if len(values) == len(keys) else ""
    except ValueError:
        text = ""  # (outside the handler: the lines path's own log has no chained traceback)
    if not text or text.count("\n") >= len(keys) or "\r" in text:  # a value has lines: _render_mapping_lines
        return _render_mapping_lines(mapping)
    return text


def _render_mapping_lines(mapping: Mapping[Any, Any]) -> str:
    """A mapping as aligned ``key: value`` lines, built line by line (what _render_mapping's
    format gives, and the form for any keys); a value's own lines stay under the value column."""
    if not mapping:
        return ""
    keys = [key + ":" if key.__class__ is str else _cell(key) + ":" for key in mapping]
    values = [_cell(value) for value in mapping.values()]
    if any("\r" in text for text in keys) or any("\r" in text for text in values):
        keys = [lf_text(key) for key in keys]  # a CRLF or a lone CR: a line break (see lf_text)
        values = [lf_text(value) for value in values]
    sizes = [display_width(key) for key in keys]  # the columns a terminal gives each key
    width = max(sizes)
    indent = "\n" + " " * (width + 1)  # a value's own lines stay under the value column
    return "\n".join(
        [key + " " * (width - size + 1) + value.replace("\n", indent) for key, size, value in zip(keys, sizes, values)]
    )


def _render_sequence(items: Iterable[Any]) -> str:
    items = list(items)
    if items and all(isinstance(item, Mapping) for item in items):
        return render_table(items)
    # An item's trailing line breaks (LF, CR or both) are dropped, as its join adds one; a CR
    # within is a line break (see lf_text), found with one scan of the whole text.
    return lf_text("\n".join(_cell(item).rstrip("\r\n") for item in items))


def render_table(rows: Sequence[Mapping[Any, Any]], columns: Optional[List[str]] = None) -> str:
    """An aligned table with a header row; columns default to the union of keys, in order."""
    if columns is None:
        columns = []
        seen = set()
        for row in rows:
            for key in row:
                if key not in seen:
                    seen.add(key)
                    columns.append(key)
    cells = [[_cell(column).replace("\n", " ") for column in columns]]
    cells += [[_cell(row.get(column)).replace("\n", " ") for column in columns] for row in rows]
    text = _aligned(cells, len(columns))
    if "\r" in text:
        # A cell with a CRLF or a lone CR (rare): made again with those as line breaks, joined
        # with a space as LF is (see lf_text). A cell that is not a str, number or None is then
        # made text twice, as in _render_mapping; a table with no CR pays one scan of its text.
        lines = [columns] + [[row.get(column) for column in columns] for row in rows]
        cells = [[lf_text(_cell(value)).replace("\n", " ") for value in line] for line in lines]
        text = _aligned(cells, len(columns))
    return text


def _aligned(cells: List[List[str]], count: int) -> str:
    widths = [max(len(line[i]) for line in cells) for i in range(count)]
    text = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)
    return text if text.isascii() else _aligned_wide(cells, count)  # one scan, not a test per cell


def _aligned_wide(cells: List[List[str]], count: int) -> str:
    """_aligned() padded by the columns a terminal gives each cell, not its length: a CJK
    character takes two, a combining accent none, and padded by len() a column after them
    came out of line."""
    sized = [[(cell, display_width(cell)) for cell in line] for line in cells]
    widths = [max(line[i][1] for line in sized) for i in range(count)]
    return "\n".join(
        "  ".join(cell + " " * (width - size) for (cell, size), width in zip(line, widths)).rstrip() for line in sized
    )


def display_width(text: str) -> int:
    """How many columns a terminal gives ``text``: two for a wide (East Asian) character, none
    for a combining mark or a format character (a zero-width joiner), one for the rest."""
    if text.isascii():
        return len(text)
    import unicodedata  # lazily: only a result with non-ASCII text pays for it

    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def to_jsonable(value: Any) -> Any:
    """A value json.dumps accepts: containers are walked, enums give their value, and anything
    else unknown (NaN and infinities included: they are not JSON) gives its str()."""
    try:
        return _jsonable(value)
    except RecursionError:  # a container that holds itself
        return _safe_str(value)
    except Exception:  # a broken host object: see render_text
        log.exception("cannot convert a %s result to JSON", type(value).__name__)
        return f"<unprintable {type(value).__name__} object>"


_PLAIN_JSON = frozenset((str, int, bool, type(None)))


def _jsonable(value: Any) -> Any:
    cls = value.__class__
    if cls in _PLAIN_JSON:
        return value
    if cls is dict:
        for key, item in value.items():  # a flat dict of plain values is already JSON
            kind = item.__class__
            if key.__class__ is not str or not (kind in _PLAIN_JSON or (kind is float and item - item == 0.0)):
                break
        else:
            return value
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if value - value == 0.0 else str(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {_key(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Report):  # last: no other result pays for the check
        return _jsonable(value.data)
    return _safe_str(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum):
        return key.name
    return _safe_str(key)


# The JSON encoder every reply goes through, made once: json.dumps() builds a JSONEncoder per
# call, and JSONEncoder.encode() builds its C encoder per call (0.5 us of a 2.4 us status reply),
# so we keep the C encoder that encode() would make, with the same options (json.encoder's
# c_make_encoder, with the arguments JSONEncoder.iterencode gives it in 3.9 to 3.13), or the
# public encoder where there is no C encoder. Its circular-reference markers are empty after a
# call that succeeds; after one that fails they may not be, so a failure makes a new one.
_iterencode: Optional[Callable[[Any, int], Iterable[str]]] = None


def _make_iterencode() -> Callable[[Any, int], Iterable[str]]:
    import json
    from json import encoder

    public = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
    make = getattr(encoder, "c_make_encoder", None)
    if make is not None:
        try:
            return make(  # type: ignore[no-any-return]
                {}, public.default, encoder.encode_basestring, None, ": ", ", ", False, False, False
            )
        except TypeError:  # a json whose C encoder takes other arguments: the public way below
            pass
    return lambda payload, _level: (public.encode(payload),)


def json_line(payload: Dict[str, Any]) -> bytes:
    """One JSON reply line. Callers pass results through to_jsonable first; anything that still
    is not strict JSON (a NaN request id echoed back) is converted here rather than sent."""
    global _iterencode
    iterencode = _iterencode
    if iterencode is None:
        iterencode = _iterencode = _make_iterencode()
    try:
        text = "".join(iterencode(payload, 0))
    except (TypeError, ValueError, RecursionError):
        _iterencode = None  # see _iterencode
        import json

        try:
            safe = to_jsonable(payload)
            if safe.__class__ is not dict:  # degraded whole to its str(): no longer a reply object
                raise ValueError(safe)
            text = json.dumps(safe, ensure_ascii=False, separators=(", ", ": "))
        except (TypeError, ValueError, RecursionError):
            # Parsed but not printable: an int past str()'s digit limit, or nesting that json.loads
            # took and json.dumps, a few frames deeper, cannot. Any client can send such an id.
            suffix = _unprintable_log.allow(time.monotonic())
            if suffix is not None:
                log.warning("a JSON reply could not be encoded; sent an internal error instead%s", suffix)
            error = {"code": "internal", "message": "reply cannot be encoded as JSON"}
            try:  # the request's id when it is the printable part
                text = json.dumps({"id": payload.get("id"), "ok": False, "error": error}, allow_nan=False)
            except (TypeError, ValueError, RecursionError):
                text = json.dumps({"id": None, "ok": False, "error": error})
    # A lone surrogate (a JSON request may carry one) cannot be UTF-8; backslashreplace turns it
    # into its \uXXXX escape, which is still valid JSON, instead of raising out of poll().
    return (text + "\n").encode("utf-8", "backslashreplace")
