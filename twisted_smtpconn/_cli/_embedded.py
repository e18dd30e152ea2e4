"""
The embedded default: with no ``--host``, ``smtpsend`` starts a capture
server on 127.0.0.1 and sends to it through the full path.

The server gets a throwaway CA and certificate and a throwaway AUTH
password; the client is given exactly that CA (verification stays on)
and that password, and is made to require STARTTLS, so a successful run
proves STARTTLS, certificate verification and AUTH all worked.  With
``--ignore-tls`` the client sends in cleartext without AUTH instead.

The Maildir outlives the run (it is what the user came for); the key
material is deleted when the run ends.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.interfaces import IReactorTCP

from .._sink import RunningSink, SinkConfig, make_throwaway_certificate, start_sink
from ._settings import ConnectionSettings, replace

__all__ = ["EmbeddedSink", "start_embedded"]

#: The AUTH user of the embedded server.
EMBEDDED_USER = "smtpsend"


@dataclass(frozen=True)
class EmbeddedSink:
    """
    A running embedded server and the client settings that reach it.

    :ivar settings: ``settings`` pointed at the server, with its CA and
        credentials.
    :ivar maildir: where the captured messages are.
    """

    sink: RunningSink
    settings: ConnectionSettings
    maildir: Path
    tls_dir: Path | None

    async def stop(self) -> None:
        """Stop listening and delete the throwaway key material."""
        await self.sink.stop()
        if self.tls_dir is not None:
            shutil.rmtree(self.tls_dir, ignore_errors=True)
            try:
                # The temporary base, if the Maildir was put elsewhere.
                self.tls_dir.parent.rmdir()
            except OSError:
                pass


async def start_embedded(
    reactor: IReactorTCP, settings: ConnectionSettings, maildir: str | None
) -> EmbeddedSink:
    """
    Start the capture server for ``settings`` (which must have no host).

    :param maildir: the Maildir to use, or ``None`` for a new temporary one.
    """
    base = Path(tempfile.mkdtemp(prefix="smtpsend-"))
    target = Path(maildir).absolute() if maildir is not None else base / "Maildir"
    tls_dir = base / "tls"
    tls_dir.mkdir(mode=0o700)
    cert = make_throwaway_certificate(tls_dir)
    use_tls = not settings.ignore_tls
    password = secrets.token_urlsafe(18)
    config = SinkConfig(
        maildir=target,
        hostname="localhost",
        cert_path=cert.cert_path,
        key_path=cert.key_path,
        users=((EMBEDDED_USER, password),),
        require_auth=use_tls,
    )
    sink = await start_sink(reactor, config, port=0, interface="127.0.0.1")
    client = replace(
        settings,
        host="127.0.0.1",
        port=sink.port,
        ca_certs=str(cert.ca_path) if use_tls else None,
        require_tls=use_tls and not settings.opportunistic_tls,
        user=EMBEDDED_USER if use_tls else None,
        password=password if use_tls else None,
    )
    return EmbeddedSink(sink=sink, settings=client, maildir=target, tls_dir=tls_dir)
