"""
smtpsend: sending mail from the command line.

One implementation, :func:`._run.main`, behind two front ends: ``python -m
twisted_smtpconn`` (``task.react``, see ``twisted_smtpconn/__main__.py``)
and ``twistd smtpsend`` (:mod:`._twistd`); ``python -m twisted_smtpconn
enqueue`` runs :func:`._queue.enqueue_main`.  Documented in ``docs/twistd.rst``.

The modules, one concern each:

* :mod:`._twistd` -- the options and the twistd service;
* :mod:`._settings` -- connection settings: merged and validated once;
* :mod:`._messages` -- what to send: scripts, spools, composition, jobs;
* :mod:`._run` -- running the work: the pool, the embedded server, probes;
* :mod:`._queue` -- the queue: a worker fed by RabbitMQ (``--queue``) and
  the producer (``enqueue``), documented in ``docs/scaling.rst``;
* :mod:`._output` -- exit statuses, outcomes, the report, the console.
"""

from ._twistd import SendOptions
from ._output import EX_DATAERR, EX_OK, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE

__all__ = [
    "EX_DATAERR",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "SendOptions",
    "main",
]


def __getattr__(name: str) -> object:
    # main pulls in the client library; import it only when asked for.
    if name == "main":
        from ._run import main

        return main
    raise AttributeError(name)
