"""
``python -m twisted_smtpconn [options]``: ``smtpsend`` without twistd.

Parses the options (a usage error: one line on stderr, exit 64), then runs
the shared ``main`` under ``task.react``, which exits with the status main
returns (raised as ``SystemExit`` so that ``react`` passes it on).
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from twisted.internet import task
from twisted.python import usage

from ._cli import EX_USAGE, SendOptions


async def _react_main(reactor: Any, options: SendOptions) -> None:
    from ._cli._run import main

    code = await main(reactor, options)
    raise SystemExit(code)


def run(argv: list[str] | None = None) -> NoReturn:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run ``smtpsend``."""
    options = SendOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        sys.stderr.write(f"smtpsend: {e} (see --help)\n")
        sys.exit(EX_USAGE)
    task.react(_react_main, (options,))


if __name__ == "__main__":
    run()
