"""
``python -m twisted_smtpconn [options]``: ``smtpsend`` without twistd;
``python -m twisted_smtpconn enqueue --queue URL [options]``: put mail on a
RabbitMQ queue for ``smtpsend --queue`` workers.

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
from ._cli._twistd import EnqueueOptions


async def _react_main(reactor: Any, options: SendOptions) -> None:
    if options.producer:
        from ._cli._output import StreamConsole
        from ._cli._queue import enqueue_main

        code = await enqueue_main(reactor, options, StreamConsole())
    else:
        from ._cli._run import main

        code = await main(reactor, options)
    raise SystemExit(code)


def run(argv: list[str] | None = None) -> NoReturn:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run ``smtpsend`` (or ``enqueue``)."""
    args = sys.argv[1:] if argv is None else argv
    options: SendOptions
    if args[:1] == ["enqueue"]:
        options, args, name = EnqueueOptions(), args[1:], "smtpsend enqueue"
    else:
        options, name = SendOptions(), "smtpsend"
    try:
        options.parseOptions(args)  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        sys.stderr.write(f"{name}: {e} (see --help)\n")
        sys.exit(EX_USAGE)
    task.react(_react_main, (options,))


if __name__ == "__main__":
    run()
