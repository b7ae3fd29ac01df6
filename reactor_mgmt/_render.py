# Turning a handler's return value into reply bytes, in the two forms a client can ask for.
# Text is for people at nc/telnet: aligned key/value lines and tables, and it always ends with a
# newline so replies never run together. JSON is for scripts: exactly one line per reply, and
# anything json cannot hold degrades to str() instead of failing the command.
from __future__ import annotations

import enum
from typing import Any, Iterable, List, Mapping, Optional


def render_text(value: Any) -> str:
    """The text form of a result; always ends with exactly one newline per line."""
    if value.__class__ is str:  # the common case first, and without isinstance's MRO walk
        text = value
    elif value is None:
        return "OK\n"
    elif isinstance(value, str):
        text = str(value)
    elif isinstance(value, Mapping):
        text = _render_mapping(value)
    elif isinstance(value, (list, tuple)):
        text = _render_sequence(value)
    elif isinstance(value, enum.Enum):
        text = str(value.name)
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = str(value)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, enum.Enum):
        return str(value.name)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _render_mapping(mapping: Mapping) -> str:
    if not mapping:
        return ""
    keys = [str(key) for key in mapping]
    width = max(map(len, keys)) + 1
    lines = []
    for key, value in zip(keys, mapping.values()):
        text = _cell(value)
        if "\n" in text:  # keep continuation lines under the value column
            text = text.replace("\n", "\n" + " " * (width + 1))
        lines.append(f"{key + ':':<{width}} {text}")
    return "\n".join(lines)


def _render_sequence(items: Iterable) -> str:
    items = list(items)
    if items and all(isinstance(item, Mapping) for item in items):
        return render_table(items)
    return "\n".join(_cell(item).rstrip("\n") for item in items)


def render_table(rows: List[Mapping], columns: Optional[List[str]] = None) -> str:
    """An aligned table with a header row; columns default to the union of keys, in order."""
    if columns is None:
        columns = []
        seen = set()
        for row in rows:
            for key in row:
                if key not in seen:
                    seen.add(key)
                    columns.append(key)
    cells = [[str(column) for column in columns]]
    cells += [[_cell(row.get(column)).replace("\n", " ") for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells
    )


def to_jsonable(value: Any) -> Any:
    """A value json.dumps accepts: containers are walked, enums give their value, and anything
    else unknown gives its str()."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def json_line(payload: dict) -> bytes:
    import json  # lazily: most sessions are text-only, and json costs import time

    return (json.dumps(payload, ensure_ascii=False, default=str, separators=(", ", ": ")) + "\n").encode()
