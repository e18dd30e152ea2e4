"""
smtpsink: a local ESMTP capture server for tests and for the embedded
``smtpsend`` run.

It accepts mail on loopback, offers STARTTLS with a throwaway certificate
and AUTH PLAIN/LOGIN only after STARTTLS, and writes every accepted
transaction into a Maildir.  Nothing here imports ``twisted.mail.smtp`` at
import time; see :mod:`._esmtp`.
"""

from ._cert import ThrowawayCertificate, make_throwaway_certificate
from ._config import DEFAULT_MAX_SIZE, CapturedMessage, CaptureLog, SinkConfig
from ._server import RunningSink, build_sink_factory, start_sink

__all__ = [
    "DEFAULT_MAX_SIZE",
    "CaptureLog",
    "CapturedMessage",
    "RunningSink",
    "SinkConfig",
    "ThrowawayCertificate",
    "build_sink_factory",
    "make_throwaway_certificate",
    "start_sink",
]
