# The library's logger, looked up on first use. Importing `logging` costs about a third of the
# import-time budget, and `import reactor_mgmt` should not pay it: the first log call (at the
# latest the "listening on" line when a listener opens) imports it. Log calls are on rare paths,
# so the lookup per call does not matter. format_address spells an address for those lines.
# Throttle is for the records a client can cause at will (an HTTP probe, a reply over the output
# cap): one per interval, with a count of the rest, so no client can flood the host's log.
from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any, Optional


class _Logger:
    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("reactor_mgmt"), name)


log: Any = _Logger()


class Throttle:
    """Lets one log record through per ``interval`` seconds and counts the ones it holds back."""

    __slots__ = ("interval", "next_at", "suppressed")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.next_at = 0.0
        self.suppressed = 0

    def allow(self, now: float) -> Optional[str]:
        """None to hold this record back; else the suffix that reports the ones held back."""
        if now < self.next_at:
            self.suppressed += 1
            return None
        suffix = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        self.next_at = now + self.interval
        self.suppressed = 0
        return suffix


def format_address(address: Any) -> str:
    """``host:port`` (``[v6]:port``) for a TCP address, the path for a Unix socket."""
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)
