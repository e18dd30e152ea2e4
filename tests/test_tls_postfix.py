"""
TLS against the private Postfix: STARTTLS on its main smtpd and implicit
TLS (``smtpd_tls_wrappermode``) on a second smtpd service, with a trustme
certificate.  The message must arrive at the relay recorder, and Postfix's
own ``Received:`` line must say the client used TLS.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from realservers.ports import LOOPBACK, free_port
from tls_peers import Certs, guard, make_certs
from twisted_smtpconn import Envelope, SMTPConnection, SMTPConnectionError

pytestmark = pytest.mark.postfix


class PostfixTLS:
    """The private Postfix with TLS, and what a test needs to reach it."""

    def __init__(self, relay: Any, certs: Certs, wrapper_port: int) -> None:
        self.relay = relay
        self.certs = certs
        self.starttls_port: int = relay.port
        self.wrapper_port = wrapper_port


@pytest.fixture(scope="module")
def postfix_tls() -> Iterator[PostfixTLS]:
    from realservers.postfix_peer import postfix_unavailable_reason, start_postfix_relay

    reason = postfix_unavailable_reason()
    if reason is not None:
        if os.environ.get("SMTPCONN_REQUIRE_REAL_SERVERS") == "1":
            pytest.fail(f"real server required but unavailable: {reason}", pytrace=False)
        pytest.skip(reason)
    # Short, and searchable by the postfix user (see postfix_peer).
    base = tempfile.mkdtemp(prefix="smtpconn-pftls-", dir="/tmp")
    try:
        tls_dir = Path(base) / "tls"
        tls_dir.mkdir()
        for directory in (Path(base), tls_dir):
            directory.chmod(0o755)
        certs = make_certs(tls_dir)
        chain = tls_dir / "server-chain.pem"  # key first, then the chain: smtpd_tls_chain_files
        certs.server.private_key_and_cert_chain_pem.write_to_path(str(chain))
        chain.chmod(0o644)
        wrapper_port = free_port(LOOPBACK)
        relay = start_postfix_relay(
            Path(base) / "pf",
            main_cf={
                "smtpd_tls_security_level": "may",
                "smtpd_tls_chain_files": str(chain),
                "smtpd_tls_received_header": "yes",
                "smtpd_tls_loglevel": "1",
            },
            master_cf_extra=(
                f"{LOOPBACK}:{wrapper_port} inet n - n - - smtpd\n"
                "  -o smtpd_tls_wrappermode=yes\n"
                "  -o smtpd_tls_security_level=encrypt\n"
            ),
        )
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield PostfixTLS(relay, certs, wrapper_port)
    finally:
        try:
            relay.stop()
        finally:
            if not os.environ.get("SMTPCONN_KEEP_POSTFIX_DIR"):
                shutil.rmtree(base, ignore_errors=True)


def _message(tag: str) -> bytes:
    return f"Subject: TLS {tag}\r\nMessage-ID: <{tag}@smtpconn.test>\r\n\r\nover TLS\r\n".encode()


async def _deliver_and_check(postfix: PostfixTLS, conn: SMTPConnection) -> None:
    from twisted.internet import reactor

    tag = uuid.uuid4().hex
    await guard(conn.connect())
    assert conn.secure is True
    await guard(conn.send(Envelope("sender@example.test", ["rcpt@example.test"]), _message(tag)))
    await guard(conn.quit())
    arrived = await guard(
        postfix.relay.recorder.when_match(lambda m: tag.encode() in m.content, reactor, timeout=20.0)
    )
    received = arrived.content.split(b"\r\n\r\n", 1)[0]
    # Postfix notes the client's TLS session in the Received line it adds.
    assert b"(using TLS" in received, received
    assert postfix.relay.strip_received(arrived.content) == _message(tag)


@pytest_twisted.ensureDeferred
async def test_postfix_starttls(postfix_tls: PostfixTLS) -> None:
    conn = SMTPConnection(
        "localhost", postfix_tls.starttls_port, require_tls=True, tls={"ca_certs": postfix_tls.certs.ca_file}
    )
    await _deliver_and_check(postfix_tls, conn)


@pytest_twisted.ensureDeferred
async def test_postfix_starttls_forgets_the_cleartext_hello(postfix_tls: PostfixTLS) -> None:
    conn = SMTPConnection("127.0.0.1", postfix_tls.starttls_port, tls={"ca_certs": postfix_tls.certs.ca_file})
    await guard(conn.connect())
    assert conn.secure is True
    assert "STARTTLS" not in conn.extensions  # Postfix offers it only in cleartext
    await guard(conn.quit())


@pytest_twisted.ensureDeferred
async def test_postfix_implicit_tls(postfix_tls: PostfixTLS) -> None:
    conn = SMTPConnection(
        "localhost", postfix_tls.wrapper_port, secure=True, tls={"ca_certs": postfix_tls.certs.ca_file}
    )
    await _deliver_and_check(postfix_tls, conn)


@pytest.mark.parametrize("secure", [False, True], ids=["starttls", "implicit"])
@pytest.mark.parametrize(
    ("tls", "words"),
    [
        ({"ca_certs": "unknown"}, "unknown CA"),
        ({"ca_certs": "ca", "servername": "mx.elsewhere.test"}, "name mismatch"),
    ],
    ids=["unknown-ca", "wrong-name"],
)
@pytest_twisted.ensureDeferred
async def test_postfix_certificate_refused(
    postfix_tls: PostfixTLS, secure: bool, tls: dict[str, str], words: str
) -> None:
    files = {"unknown": postfix_tls.certs.unknown_ca_file, "ca": postfix_tls.certs.ca_file}
    settings = dict(tls, ca_certs=files[tls["ca_certs"]])
    port = postfix_tls.wrapper_port if secure else postfix_tls.starttls_port
    conn = SMTPConnection("localhost", port, secure=secure, tls=settings)
    with pytest.raises(SMTPConnectionError) as caught:
        await guard(conn.connect())
    assert caught.value.code == "ETLS"
    assert words in str(caught.value)
    await guard(conn.when_closed())


@pytest_twisted.ensureDeferred
async def test_postfix_opportunistic_falls_back_to_cleartext(postfix_tls: PostfixTLS) -> None:
    from twisted.internet import reactor

    conn = SMTPConnection(
        "localhost", postfix_tls.starttls_port, opportunistic_tls=True,
        tls={"ca_certs": postfix_tls.certs.unknown_ca_file},
    )
    tag = uuid.uuid4().hex
    await guard(conn.connect())
    assert conn.secure is False
    await guard(conn.send(Envelope("sender@example.test", ["rcpt@example.test"]), _message(tag)))
    await guard(conn.quit())
    arrived = await guard(
        postfix_tls.relay.recorder.when_match(lambda m: tag.encode() in m.content, reactor, timeout=20.0)
    )
    assert b"(using TLS" not in arrived.content.split(b"\r\n\r\n", 1)[0]
