# The exception hierarchy. Everything the library raises derives from ReactorMgmtError, so a
# host can catch one type. Errors that travel to a client carry a stable `code` string, the
# same one a JSON reply puts in its "error" object, so text and JSON clients see one vocabulary.
from __future__ import annotations


class ReactorMgmtError(Exception):
    """Base class of every exception that reactor_mgmt raises."""


class ConfigError(ReactorMgmtError, ValueError):
    """The server was given settings it cannot honour (a bad level, a non-socket path...)."""


class CommandError(ReactorMgmtError):
    """Raise from a handler to reply ``ERR <message>``; the connection carries on."""

    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        message = str(message)  # `raise CommandError(exc)` is a common slip: its text is meant
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


def error_parts(exc: CommandError) -> tuple[str, str]:
    """A CommandError's ``(code, message)``, what a reply to its request says. A subclass whose
    __init__ does not run CommandError.__init__ (calls Exception.__init__, or sets fields of
    its own) has no ``message`` attribute: its str() says the same, and its code is the one its
    class declares (``error`` if none). Read once a request has failed, so it costs the
    success path nothing."""
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        message = str(exc)
    code = getattr(exc, "code", None)
    return (code if isinstance(code, str) else CommandError.code), message


class UsageError(CommandError):
    """The arguments did not fit the command's signature; the handler did not run."""

    code = "usage"


class UnknownCommand(CommandError):
    code = "unknown_command"


class PermissionDenied(CommandError):
    """The connection's level (or missing authentication) does not allow the command."""

    code = "denied"


class RemoteError(ReactorMgmtError):
    """Raised by the client when the server replied with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
