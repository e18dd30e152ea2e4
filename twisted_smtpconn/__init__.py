"""
twisted_smtpconn: an SMTP and LMTP client for Twisted.

Everything public is re-exported here; every other module is private.  See
the documentation for the connection guide and API.md for the contract.
"""

from ._auth import Auth
from ._connection import SMTPConnection
from ._envelope import DSN, Envelope
from ._errors import (
    AuthenticationError,
    ConnectionFailedError,
    EnvelopeError,
    MessageError,
    ProtocolError,
    SMTPConnectionError,
    SMTPTimeoutError,
    SocketError,
    StreamError,
    TLSError,
)
from ._oauth2 import OAuth2Token, OAuth2TokenProvider
from ._pool import SendTrace, SMTPPool
from ._send import send
from ._sendinfo import SendInfo

__all__ = [
    "SMTPConnection",
    "SMTPPool",
    "SendTrace",
    "send",
    "Auth",
    "Envelope",
    "DSN",
    "SendInfo",
    "OAuth2TokenProvider",
    "OAuth2Token",
    "SMTPConnectionError",
    "ConnectionFailedError",
    "SMTPTimeoutError",
    "TLSError",
    "AuthenticationError",
    "EnvelopeError",
    "MessageError",
    "ProtocolError",
    "SocketError",
    "StreamError",
]
