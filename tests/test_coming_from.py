"""
The programs of the "Coming from twisted.mail / smtplib / aiosmtplib" page
(``docs/examples/coming_from/``), run as the page says, against aiosmtpd
with STARTTLS required, AUTH only over TLS and a certificate from a private
CA.  Each must deliver the same job: every To, Cc and Bcc recipient in the
envelope, no Bcc header in the bytes, the non-ASCII subject and names, the
HTML part and the attachment intact.

The line counts the page quotes are checked here too, so that the page
cannot drift from the programs.
"""

from __future__ import annotations

import ast
import email
import email.policy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from realservers.aiosmtpd_peer import AiosmtpdServer
from tls_peers import Certs, make_certs, server_ssl_context

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples" / "coming_from"
USER, PASSWORD = "buildbot", "Build-Pw-7"

#: Lines of each program's ``send`` function, its ``def`` line included
#: (quoted in docs/coming-from.rst).
SEND_LINES = {"smtplib": 6, "aiosmtplib": 5, "twisted_mail": 13, "compat": 13, "send": 5}


def _authenticator(server: object, session: object, envelope: object, mechanism: str, data: object) -> object:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=USER if ok else None)


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path)


@pytest.fixture
def submission(make_aiosmtpd: Callable[..., AiosmtpdServer], certs: Certs) -> AiosmtpdServer:
    return make_aiosmtpd(  # type: ignore[no-any-return]
        tls_context=server_ssl_context(certs.server),
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
    )


def _run(name: str, server: AiosmtpdServer, certs: Certs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES)}
    program = EXAMPLES / f"job_{name}.py"
    return subprocess.run(
        [sys.executable, str(program), "localhost", str(server.port), certs.ca_file, USER, PASSWORD],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )


@pytest.mark.parametrize("name", ["smtplib", "aiosmtplib", "twisted_mail", "compat", "send"])
def test_job_delivers(name: str, submission: AiosmtpdServer, certs: Certs) -> None:
    if name == "send":
        import twisted_smtpconn

        if not hasattr(twisted_smtpconn, "send"):
            pytest.skip("twisted_smtpconn.send() is not in this build")
    done = _run(name, submission, certs)
    assert done.returncode == 0, done.stderr
    (received,) = submission.recorder.wait_for(1, timeout=15)
    assert received.tls and received.authenticated
    assert received.mail_from == "buildbot@example.org"
    assert sorted(received.rcpt_tos) == ["audit@example.net", "qa@example.net", "zoe@example.net"]
    assert b"audit@example.net" not in received.content  # Bcc: in the envelope only
    sys.path.insert(0, str(EXAMPLES))
    try:
        from buildbot_job import LOG, build_message
    finally:
        sys.path.remove(str(EXAMPLES))
    sent = email.message_from_bytes(received.content, policy=email.policy.default)
    expected = build_message()
    assert sent["Subject"] == expected["Subject"]
    assert sent["From"] == expected["From"] and sent["To"] == expected["To"] and sent["Cc"] == expected["Cc"]
    text, html, log = (part for part in sent.walk() if not part.is_multipart())
    assert text.get_content().replace("\r\n", "\n") == "The build failed.\n.A line that starts with a dot.\n"
    assert html.get_content().replace("\r\n", "\n") == "<p>The build <b>failed</b>.</p>\n"
    assert log.get_filename() == "stdio.log" and log.get_content().replace("\r\n", "\n").encode() == LOG


def test_compat_job_is_the_twisted_mail_job_with_one_import_changed() -> None:
    theirs = (EXAMPLES / "job_twisted_mail.py").read_text(encoding="utf-8")
    ours = (EXAMPLES / "job_compat.py").read_text(encoding="utf-8")
    code = [line for line in theirs.split('"""', 2)[2].splitlines()]
    changed = [
        (a, b) for a, b in zip(code, ours.split('"""', 2)[2].splitlines()) if a != b
    ]
    assert changed == [
        ("from twisted.mail.smtp import ESMTPSenderFactory", "from twisted_smtpconn.compat import ESMTPSenderFactory")
    ]


@pytest.mark.parametrize("name", sorted(SEND_LINES))
def test_line_counts_quoted_in_the_docs(name: str) -> None:
    tree = ast.parse((EXAMPLES / f"job_{name}.py").read_text(encoding="utf-8"))
    (send,) = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert send.name == "send"
    assert send.end_lineno is not None
    assert send.end_lineno - send.lineno + 1 == SEND_LINES[name]
    page = (Path(__file__).resolve().parent.parent / "docs" / "coming-from.rst").read_text(encoding="utf-8")
    assert f"job_{name}.py" in page
