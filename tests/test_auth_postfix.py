"""
``login()`` against a private Postfix whose SASL backend is a private
Dovecot auth service (``smtpd_sasl_type = dovecot``, passwd-file users),
after STARTTLS, as a real submission server is set up.

Postfix offers AUTH only over TLS here (``smtpd_tls_auth_only``), relays
only for authenticated clients (``mynetworks`` does not include loopback),
and records the authenticated user in its ``Received:`` header
(``smtpd_sasl_authenticated_header``), so a delivered message proves which
user the server believed it was talking to.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from realservers.dovecot_peer import DovecotAuthPeer, dovecot_available, start_dovecot_auth
from realservers.postfix_peer import PostfixRelay, postfix_unavailable_reason, start_postfix_relay
from tls_peers import Certs, guard, make_certs
from wiretools import transcript_text
from twisted_smtpconn import Auth, AuthenticationError, EnvelopeError, Envelope, SMTPConnection

pytestmark = pytest.mark.postfix

USERS = {"alice": "Alice-Dovecot-Pw1", "bob@example.org": "Bob-Dovecot-Pw2"}
OUTSIDE = "someone@elsewhere.example"


@dataclass
class Submission:
    postfix: PostfixRelay
    dovecot: DovecotAuthPeer
    certs: Certs

    def connection(self, **options: Any) -> SMTPConnection:
        options.setdefault("tls", {"ca_certs": self.certs.ca_file})
        return SMTPConnection(self.postfix.host, self.postfix.port, name="client.test", **options)


def _unavailable() -> str | None:
    reason = postfix_unavailable_reason()
    if reason is None and not dovecot_available():
        reason = "dovecot is not installed (apt-get install dovecot-core)"
    return reason


@pytest.fixture(scope="module")
def submission() -> Iterator[Submission]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("SMTPCONN_REQUIRE_REAL_SERVERS") == "1":
            pytest.fail(f"real servers are required: {reason}")
        pytest.skip(reason)
    # Short and searchable by the postfix user (see postfix_peer).
    base = Path(tempfile.mkdtemp(prefix="smtpconn-pfa-", dir="/tmp"))
    base.chmod(0o755)
    certs_dir = base / "tls"
    certs_dir.mkdir(mode=0o755)
    certs = make_certs(certs_dir)
    chain = certs_dir / "server-key-and-chain.pem"
    certs.server.private_key_and_cert_chain_pem.write_to_path(str(chain))
    socket_dir = base / "sasl"
    socket_dir.mkdir(mode=0o755)
    socket_path = socket_dir / "auth"
    dovecot = start_dovecot_auth(base / "dovecot", USERS, socket_path=socket_path)
    try:
        assert dovecot.check("alice", USERS["alice"]) and not dovecot.check("alice", "wrong")
        relay = start_postfix_relay(
            base / "pf",
            {
                "smtpd_tls_security_level": "may",
                "smtpd_tls_chain_files": str(chain),
                "smtpd_tls_auth_only": "yes",
                "smtpd_sasl_auth_enable": "yes",
                "smtpd_sasl_type": "dovecot",
                "smtpd_sasl_path": str(socket_path),
                "smtpd_sasl_authenticated_header": "yes",
                # Loopback is NOT a trusted network here: relaying needs AUTH.
                "mynetworks": "192.0.2.1/32",
                "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
                "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
            },
        )
    except BaseException:
        dovecot.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield Submission(relay, dovecot, certs)
    finally:
        try:
            relay.stop()
        finally:
            dovecot.stop()
            shutil.rmtree(base, ignore_errors=True)


async def _send(conn: SMTPConnection, marker: str) -> None:
    message = f"Subject: {marker}\r\n\r\nauthenticated submission {marker}\r\n"
    info = await guard(conn.send(Envelope("alice@example.org", [OUTSIDE]), message))
    assert info.accepted == [OUTSIDE]


async def _delivered(submission: Submission, marker: str) -> Any:
    from twisted.internet import reactor

    return await guard(
        submission.postfix.recorder.when_match(lambda m: marker.encode() in m.content, reactor, timeout=20.0)
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"])
@pytest_twisted.ensureDeferred
async def test_mechanism_after_starttls(submission: Submission, mechanism: str) -> None:
    conn = submission.connection(require_tls=True)
    await guard(conn.connect())
    assert conn.secure
    assert mechanism in conn.auth_methods
    await guard(conn.login(Auth(user="alice", password=USERS["alice"], method=mechanism)))
    marker = f"postfix-{mechanism}-{os.getpid()}"
    await _send(conn, marker)
    await guard(conn.quit())
    received = await _delivered(submission, marker)
    assert "Authenticated sender: alice" in received.content.decode(errors="replace")


@pytest_twisted.ensureDeferred
async def test_automatic_choice_is_the_strongest_dovecot_offers(submission: Submission) -> None:
    from twisted.logger import LogEvent, Logger, formatEvent

    events: list[LogEvent] = []
    conn = submission.connection(require_tls=True, logger=Logger(observer=events.append), debug=True)
    await guard(conn.connect())
    await guard(conn.login({"user": "bob@example.org", "pass": USERS["bob@example.org"]}))
    marker = f"postfix-auto-{os.getpid()}"
    await _send(conn, marker)
    await guard(conn.quit())
    received = await _delivered(submission, marker)
    assert "Authenticated sender: bob@example.org" in received.content.decode(errors="replace")
    texts = [transcript_text(formatEvent(event)) for event in events]
    # No -PLUS from Dovecot's passwd-file here; SHA-256 is the strongest offered.
    assert "C: AUTH SCRAM-SHA-256 ****" in texts
    assert not [t for t in texts if USERS["bob@example.org"] in t]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"])
@pytest_twisted.ensureDeferred
async def test_wrong_password(submission: Submission, mechanism: str) -> None:
    conn = submission.connection(require_tls=True)
    await guard(conn.connect())
    with pytest.raises(AuthenticationError) as caught:
        await guard(conn.login(Auth(user="alice", password="Not-Alice-Pw", method=mechanism)))
    error = caught.value
    assert error.code == "EAUTH"
    assert error.response_code == 535 and error.enhanced_status == "5.7.8"
    assert "Not-Alice-Pw" not in str(error)
    # Refused, the connection is still there: the right password works.
    await guard(conn.login(Auth(user="alice", password=USERS["alice"], method=mechanism)))
    await guard(conn.quit())


@pytest_twisted.ensureDeferred
async def test_no_auth_before_starttls(submission: Submission) -> None:
    conn = submission.connection(ignore_tls=True, tls=None)
    await guard(conn.connect())
    assert conn.auth_methods == []
    with pytest.raises(AuthenticationError, match="no AUTH mechanism at all.*STARTTLS"):
        await guard(conn.login(Auth(user="alice", password=USERS["alice"])))
    # And without authentication Postfix does not relay.
    with pytest.raises(EnvelopeError) as caught:
        await guard(conn.send(Envelope("alice@example.org", [OUTSIDE]), "Subject: x\r\n\r\nx\r\n"))
    assert caught.value.rejected_errors[0].response_code == 554
    await guard(conn.quit())


@pytest_twisted.ensureDeferred
async def test_requested_mechanism_dovecot_lacks(submission: Submission) -> None:
    conn = submission.connection(require_tls=True, auth_method="XOAUTH2")
    await guard(conn.connect())
    with pytest.raises(AuthenticationError) as caught:
        await guard(conn.login(Auth(user="alice", xoauth2="ya29.token")))
    assert "XOAUTH2" in str(caught.value) and "PLAIN" in str(caught.value)
    await guard(conn.quit())
