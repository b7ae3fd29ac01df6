# The wire envelope, in one place for both ends: how a reply is framed on the way out (a text
# ERR line; the JSON ok, error, stream-open, item and end frames) and how a client reads those
# frames back. The server's dispatcher frames with the functions below, and the client parses
# with read_frame(), so the two cannot drift apart. The content of a reply (a dict rendered as
# aligned lines, a value made JSON-able) is _render's business, not this module's.
#
# A text-mode request's reply id is TEXT: its reply is rendered text and an error is one
# `ERR message` line. A JSON request's reply id is its "id" (None when unreadable).
from __future__ import annotations

from ._render import json_line, lf_text

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Optional, Tuple


class _Text:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TEXT"


TEXT: Any = _Text()  # the reply id of a text-mode request
UNENCODABLE = "backslashreplace"  # lone surrogates from a handler must not raise out of poll()


def err_line(message: str) -> bytes:
    """A text error reply: always exactly one line, so a client can tell where it ends."""
    if "\n" in message or "\r" in message:
        message = " ".join(message.split())
    return f"ERR {message}\n".encode("utf-8", UNENCODABLE)


def error_reply(reply_id: Any, code: str, message: str) -> bytes:
    """An error framed for its request: an ERR line, or a JSON error object with ``code``."""
    if reply_id is TEXT:
        return err_line(message)
    return json_line({"id": reply_id, "ok": False, "error": {"code": code, "message": message}})


def text_reply(text: str) -> bytes:
    """A str reply to a text request, as bytes that end with a newline; a CRLF or a lone CR in
    it is a line break, sent as LF (see _render.lf_text), as render_text sends it."""
    if "\r" in text:
        text = lf_text(text)
    return (text if text[-1:] == "\n" else text + "\n").encode("utf-8", UNENCODABLE)


def ok_frame(reply_id: Any, result: Any) -> bytes:
    """A JSON success; ``result`` must already be JSON-able (see _render.to_jsonable)."""
    return json_line({"id": reply_id, "ok": True, "result": result})


def stream_open_frame(reply_id: Any) -> bytes:
    """Sent at once when a reply is a stream, so a client can tell a quiet stream from a
    server that does not answer."""
    return json_line({"id": reply_id, "stream": True})


def item_frame(reply_id: Any, item: Any) -> bytes:
    return json_line({"id": reply_id, "item": item})


def end_frame(reply_id: Any, count: int) -> bytes:
    """The end of a stream: a success with no result and the number of items sent."""
    return json_line({"id": reply_id, "ok": True, "result": None, "items": count})


def reply_id_of(line: Any) -> Any:
    """How the reply to a queued request is framed: TEXT, or its JSON id (None if unreadable)."""
    if line.__class__ is not str or line[:1] != "{":
        return TEXT
    import json

    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return request.get("id") if isinstance(request, dict) else None


# ---- the client's side ----

# What read_frame() reports, besides None for a line of plain text.
OPEN, ITEM, RESULT, END, ERROR = "open", "item", "result", "end", "error"


def read_frame(line: str) -> Optional[Tuple[str, Any, Any]]:
    """``(kind, id, value)`` for a JSON frame, or None for a line of plain text.

    kind is OPEN (a stream begins; value None), ITEM (value: the item), RESULT (value: the
    result), END (value: the stream's item count) or ERROR (value: the error object, a dict
    with "code" and "message" when the server sent them).
    """
    if not line.startswith("{"):
        return None
    import json

    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return frame_of(message)


def frame_of(message: Any) -> Optional[Tuple[str, Any, Any]]:
    """What read_frame() reports for an already decoded line: None unless ``message`` is a
    dict with an "id" and one of "ok", "item" or "stream"."""
    if not isinstance(message, dict) or "id" not in message:
        return None
    reply_id = message["id"]
    if "ok" in message:
        if not message["ok"]:
            error = message.get("error")
            return ERROR, reply_id, error if isinstance(error, dict) else {}
        if "items" in message:
            return END, reply_id, message["items"]
        return RESULT, reply_id, message.get("result")
    if "item" in message:
        return ITEM, reply_id, message["item"]
    if "stream" in message:
        return OPEN, reply_id, None
    return None


def read_err_line(line: str) -> Optional[str]:
    """The message of a text error line (what err_line() sends, without its newline), or None
    when ``line`` is not one."""
    return line[4:] if line.startswith("ERR ") else None


# ---- challenge-response authentication, for both ends ----


def challenge_digest(token: str, challenge: str) -> str:
    """The answer to ``auth challenge``: the hex HMAC-SHA256 of the challenge under the token,
    what ``printf '%s' CHALLENGE | openssl dgst -sha256 -hmac TOKEN`` prints."""
    import hashlib
    import hmac  # lazily: only authenticating clients and servers pay for these

    return hmac.new(
        token.encode("utf-8", "surrogatepass"), challenge.encode("utf-8", "surrogatepass"), hashlib.sha256
    ).hexdigest()
