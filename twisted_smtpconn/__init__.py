"""
twisted_smtpconn: an SMTP and LMTP client for Twisted.

Everything public is re-exported here; every other module is private.  The
documentation has the connection guide; this docstring is the map for a
reader of the code.

The modules form layers, listed bottom to top; each imports only from the
layers below it (``tests/test_layers.py`` fails on an import circle), and a
message travels down the list once: :meth:`SMTPConnection.send` →
``_queue`` (its turn) → ``_delivery`` (DATA or BDAT) → ``_data``/``_bdat``
over ``_transaction`` → ``_source``/``_dotstuff``/``_producer`` →
``_protocol`` → back up as a :class:`SendInfo`, or as the one error that
``SMTPConnectionError.from_reply`` built from the server's reply.

========  ===================================================================
layer     modules
========  ===================================================================
values    ``_errors`` (the error model, and the one constructor from a
          reply), ``_envelope``, ``_xtext``, ``_sendinfo``,
          ``_tls_settings``
codecs    ``_reply`` (replies; control characters escaped), ``_ehlo``,
          ``_commands``, ``_dotstuff``, ``_address``, ``_email``, ``_sasl``,
          ``_sasl_scram``, ``_sasl_ntlm`` (the SASL mechanisms as pure state
          machines), ``_tls_errors``
wire      ``_logging`` (where events go; the transcript), ``_protocol`` (reply
          pairing, 421, every time limit, the injection check), ``_proxy``
          (SOCKS and HTTP tunnels), ``_factory`` (endpoints; the connect
          timeout), ``_source`` and ``_producer`` (message sources,
          back-pressure), ``_tls_creator``
dialogue  ``_tls`` (TLS policy), ``_session`` (greeting, hello, STARTTLS,
          RSET), ``_sasl_exchange`` and ``_auth`` (AUTH), ``_transaction``
          (what DATA and BDAT share), ``_data``, ``_bdat``, ``_delivery``
façade    ``_options`` (every option checked once), ``_lifecycle``,
          ``_events``, ``_queue`` (turn-taking and the hand-over rule),
          ``_connection``
above     ``_pool``, ``_send`` (the one-call ``send``), ``_oauth2``,
          ``compat`` (drop-ins for ``twisted.mail.smtp``), ``_amqp`` (mail
          on a RabbitMQ queue: :func:`enqueue`), ``_cli`` (``smtpsend``),
          ``_sink`` (``smtpsink``), ``_passwords``
========  ===================================================================
"""

from ._amqp import enqueue
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
    "enqueue",
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
