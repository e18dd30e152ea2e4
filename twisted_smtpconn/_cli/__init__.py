"""
smtpsend: scripted sends from the command line.

One implementation, :func:`main`, behind two front ends: ``python -m
twisted_smtpconn`` (``task.react``, see ``twisted_smtpconn/__main__.py``)
and ``twistd smtpsend`` (:mod:`._twistd`).  Documented in
``docs/twistd.rst``.
"""

from ._exitcodes import EX_DATAERR, EX_OK, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE
from ._options import SendOptions

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
        from ._main import main

        return main
    raise AttributeError(name)
