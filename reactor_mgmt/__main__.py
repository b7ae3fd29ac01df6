# `python -m reactor_mgmt` and the `reactor-mgmt` console script: `demo` runs the sample
# daemon, anything else is the client. Each side is imported only when chosen.
from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["demo"]:
        from ._demo import main as demo_main

        return demo_main(args[1:])
    from ._cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
