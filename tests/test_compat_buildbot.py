"""
Buildbot's real ``MailNotifier`` sending through ``twisted_smtpconn.compat``.

``buildbot.reporters.mail`` builds the message (a MIME multipart with the
build's text, a patch and a log as base64 attachments, To and CC headers,
a non-ASCII subject) and hands it to ``ESMTPSenderFactory``, which it
imported from ``twisted.mail.smtp`` at module level.  Replacing that one
module attribute is the whole recipe (docs: "Coming from twisted.mail").
The tests enter at ``MailNotifier.sendMessage(reports)``, the method a
report generator calls, so everything from there down is Buildbot's own
code; only the build master (for its configured title) is a stand-in.

Delivered to aiosmtpd (cleartext, no AUTH, Buildbot's defaults) and to the
private Postfix with STARTTLS and AUTH through Dovecot (``useTls``,
``smtpUser``, ``smtpPassword``), with the test CA given to the drop-in by
``functools.partial``.
"""

from __future__ import annotations

import email
import email.policy
import functools
import os
from typing import Any

import email.charset

import pytest
import pytest_twisted

from realservers.aiosmtpd_peer import AiosmtpdServer
from test_auth_postfix import USERS, Submission, submission  # noqa: F401 - the fixture
from tls_peers import guard

# Buildbot changes the email package's process-wide charset table when its
# mail module is imported (UTF-8 bodies sent 8-bit, never encoded).  That is
# Buildbot's choice for its own messages; it must not leak into the other
# test modules of this process, so it is in force only while these tests run.
_CHARSETS_BEFORE = dict(email.charset.CHARSETS)
buildbot_mail = pytest.importorskip("buildbot.reporters.mail")
_CHARSETS_BUILDBOT = dict(email.charset.CHARSETS)
email.charset.CHARSETS.clear()
email.charset.CHARSETS.update(_CHARSETS_BEFORE)


@pytest.fixture(autouse=True, scope="module")
def _buildbot_charsets() -> Any:
    email.charset.CHARSETS.clear()
    email.charset.CHARSETS.update(_CHARSETS_BUILDBOT)
    yield
    email.charset.CHARSETS.clear()
    email.charset.CHARSETS.update(_CHARSETS_BEFORE)

SUBJECT = "Buildbot: build #7 of r\u00e9sum\u00e9-tests failed"
BODY = "The build failed: 3 tests, 1 failure (\u00fcn\u00efc\u00f6de).\n"
PATCH = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-print(1)\n+print(2)\n"
LOG = "running tests\nFAILED test_x\n.leading dot in the log\n"


class _Config:
    title = "Buildbot"


class _Master:
    config = _Config()


class _Parent:
    """Where a service finds its master (``service.parent.master``)."""

    master = _Master()


def _reports(marker: str) -> list[dict[str, Any]]:
    return [
        {
            "body": BODY + marker + "\n",
            "subject": SUBJECT,
            "type": "plain",
            "results": 2,
            "builds": [{"properties": {}}],
            "users": ["dev@example.net"],
            "patches": [{"body": PATCH}],
            "logs": [
                {
                    "stepname": "test",
                    "name": "stdio",
                    "buildername": "r\u00e9sum\u00e9-tests",
                    "content": {"content": LOG},
                }
            ],
            "worker": None,
        }
    ]


async def _notifier(**options: Any) -> Any:
    """A MailNotifier configured as a master.cfg would, without the master's services."""
    settings = {
        "fromaddr": "buildbot@example.org", "extraRecipients": ["team@example.net"], "generators": [], **options
    }
    notifier = buildbot_mail.MailNotifier(**settings)
    await notifier.reconfigService(**settings)
    notifier.parent = _Parent()
    return notifier


def _check_delivered(content: bytes, marker: str) -> None:
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert str(parsed["Subject"]) == SUBJECT
    assert parsed["To"] == "dev@example.net" and parsed["CC"] == "team@example.net"
    parts = list(parsed.iter_parts())
    assert len(parts) == 3
    assert parts[0].get_content().replace("\r\n", "\n") == BODY + marker + "\n\n\n"
    assert parts[1].get_content().replace("\r\n", "\n") == PATCH
    assert parts[2].get_content().replace("\r\n", "\n") == LOG
    assert parts[2].get_filename() == "test.stdio"


@pytest_twisted.ensureDeferred
async def test_mail_notifier_to_aiosmtpd(aiosmtpd_server: AiosmtpdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet import reactor

    from twisted_smtpconn import compat

    made: list[compat.ESMTPSenderFactory] = []

    def factory(*args: Any, **kwargs: Any) -> compat.ESMTPSenderFactory:
        made.append(compat.ESMTPSenderFactory(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(buildbot_mail, "ESMTPSenderFactory", factory)
    notifier = await _notifier(relayhost=aiosmtpd_server.host, smtpPort=aiosmtpd_server.port)
    marker = f"buildbot-aiosmtpd-{os.getpid()}"
    await guard(notifier.sendMessage(_reports(marker)))
    # Buildbot built the drop-in with its own arguments, and it did the sending.
    (sender,) = made
    assert sender.sendFinished and sender.requireTransportSecurity is False and sender.hostname is None
    (received,) = await aiosmtpd_server.recorder.when_received(1, reactor)
    assert received.mail_from == "buildbot@example.org"
    assert sorted(received.rcpt_tos) == ["dev@example.net", "team@example.net"]
    assert not received.tls and not received.authenticated
    _check_delivered(received.content, marker)


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_mail_notifier_to_postfix_with_starttls_and_auth(
    submission: Submission, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - the imported fixture
) -> None:
    from twisted.internet import reactor

    from twisted_smtpconn import compat

    # The recipe for a server whose certificate comes from a private CA.
    monkeypatch.setattr(
        buildbot_mail,
        "ESMTPSenderFactory",
        functools.partial(compat.ESMTPSenderFactory, contextFactory={"ca_certs": submission.certs.ca_file}),
    )
    notifier = await _notifier(
        relayhost="localhost",
        smtpPort=submission.postfix.port,
        useTls=True,
        smtpUser="alice",
        smtpPassword=USERS["alice"],
    )
    marker = f"buildbot-postfix-{os.getpid()}"
    await guard(notifier.sendMessage(_reports(marker)))
    received = await guard(
        submission.postfix.recorder.when_match(lambda m: marker.encode() in m.content, reactor, timeout=20.0)
    )
    assert sorted(received.rcpt_tos) == ["dev@example.net", "team@example.net"]
    text = received.content.decode("utf-8", "replace")
    assert "Authenticated sender: alice" in text
    # Postfix adds its Received: header on top; the rest is Buildbot's message.
    _check_delivered(received.content, marker)


@pytest.mark.postfix
@pytest_twisted.ensureDeferred
async def test_mail_notifier_wrong_password_fails_with_both_classes(
    submission: Submission, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - the imported fixture
) -> None:
    from twisted.mail.smtp import AUTHDeclinedError

    from twisted_smtpconn import AuthenticationError, compat

    monkeypatch.setattr(
        buildbot_mail,
        "ESMTPSenderFactory",
        functools.partial(compat.ESMTPSenderFactory, contextFactory={"ca_certs": submission.certs.ca_file}),
    )
    notifier = await _notifier(
        relayhost="localhost", smtpPort=submission.postfix.port, useTls=True, smtpUser="alice", smtpPassword="nope"
    )
    with pytest.raises(AUTHDeclinedError) as caught:
        await guard(notifier.sendMessage(_reports("wrong-password")))
    assert isinstance(caught.value, AuthenticationError)
    assert caught.value.code == 535 and "nope" not in str(caught.value)
