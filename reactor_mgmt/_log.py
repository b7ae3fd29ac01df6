# The library's logger, looked up on first use. Importing `logging` costs about a third of the
# import-time budget, and `import reactor_mgmt` should not pay it: the first log call (at the
# latest the "listening on" line when a listener opens) imports it. Log calls are on rare paths,
# so the lookup per call does not matter.
from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs import time
if TYPE_CHECKING:
    from typing import Any


class _Logger:
    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("reactor_mgmt"), name)


log: Any = _Logger()
