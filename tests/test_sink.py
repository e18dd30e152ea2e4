"""
Tests for the capture server (``twisted_smtpconn._sink``).

The client here is the stdlib ``smtplib`` run in a thread: an independent
implementation, so these tests check the sink against someone else's idea
of SMTP rather than against our own client.
"""

from __future__ import annotations

import mailbox
import os
import smtplib
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted

from realservers.ports import free_port
from runtools import REPO, subprocess_env, twistd_command
from twisted_smtpconn._sink import (
    CapturedMessage,
    RunningSink,
    SinkConfig,
    make_throwaway_certificate,
    start_sink,
)

T = TypeVar("T")

PASSWORD = "s3cret pass"


async def in_thread(f: Callable[[], T]) -> T:
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    d = deferToThread(f)
    d.addTimeout(30, reactor)
    return await d


@pytest.fixture
def tls_files(tmp_path: Path) -> Any:
    directory = tmp_path / "tls"
    directory.mkdir()
    return make_throwaway_certificate(directory)


def make_config(tmp_path: Path, tls_files: Any, **overrides: Any) -> SinkConfig:
    values: dict[str, Any] = dict(
        maildir=tmp_path / "Maildir",
        cert_path=tls_files.cert_path,
        key_path=tls_files.key_path,
        users=(("alice", PASSWORD),),
    )
    values.update(overrides)
    return SinkConfig(**values)


@pytest_twisted.async_yield_fixture
async def sink(tmp_path: Path, tls_files: Any) -> AsyncIterator[RunningSink]:
    from twisted.internet import reactor

    running = await start_sink(
        reactor,
        make_config(tmp_path, tls_files, reject=frozenset({"refused@example.test"}),
                    defer=frozenset({"later@example.test"}), max_size=10_000),
    )
    yield running
    await running.stop()


@pytest_twisted.async_yield_fixture
async def auth_sink(tmp_path: Path, tls_files: Any) -> AsyncIterator[RunningSink]:
    from twisted.internet import reactor

    running = await start_sink(reactor, make_config(tmp_path, tls_files, require_auth=True))
    yield running
    await running.stop()


def tls_context(tls_files: Any) -> ssl.SSLContext:
    # Verification on: the throwaway CA must really vouch for the server.
    return ssl.create_default_context(cafile=str(tls_files.ca_path))


def connect(running: RunningSink, host: str = "127.0.0.1") -> smtplib.SMTP:
    client = smtplib.SMTP(host, running.port, local_hostname="client.example.test", timeout=10)
    client.ehlo()
    return client


# -- TLS and AUTH -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_auth_only_offered_after_starttls(auth_sink: RunningSink, tls_files: Any) -> None:
    def talk() -> tuple[bool, bool, bool, tuple[int, bytes]]:
        with connect(auth_sink) as client:
            before = client.has_extn("auth")
            starttls = client.has_extn("starttls")
            refused = client.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldCBwYXNz")
            client.starttls(context=tls_context(tls_files))
            client.ehlo()
            after = client.has_extn("auth")
            return before, starttls, after, refused

    before, starttls, after, refused = await in_thread(talk)
    assert starttls is True
    assert before is False
    assert after is True
    assert refused[0] == 538


@pytest_twisted.ensureDeferred
async def test_starttls_auth_plain_and_delivery(auth_sink: RunningSink, tls_files: Any) -> None:
    message = b"Subject: hello\r\nFrom: a@example.test\r\n\r\n.leading dot\r\nline two\r\n"

    def talk() -> dict[str, tuple[int, bytes]]:
        with connect(auth_sink, host="localhost") as client:
            client.starttls(context=tls_context(tls_files))
            client.ehlo()
            client.login("alice", PASSWORD)
            return client.sendmail("a@example.test", ["b@example.test"], message)

    refused = await in_thread(talk)
    assert refused == {}
    [captured] = auth_sink.capture_log.messages
    assert captured.mail_from == "a@example.test"
    assert captured.rcpt_to == ("b@example.test",)
    assert captured.tls is True
    assert captured.user == "alice"
    assert captured.helo == "client.example.test"
    assert captured.peer in ("127.0.0.1", "::1")
    assert captured.size == len(message)
    # The file is in new/, readable by the stdlib, with the data intact
    # (dot-unstuffed) after the sink's own Received header.
    assert captured.path.parent == auth_sink.config.maildir / "new"
    box = mailbox.Maildir(str(auth_sink.config.maildir), create=False)
    [stored] = list(box)
    assert stored["Subject"] == "hello"
    assert "ESMTPSA" in stored["Received"]
    raw = captured.path.read_bytes()
    assert raw.endswith(b"\n\n.leading dot\nline two\n")
    assert raw.index(b"Subject: hello") > raw.index(b"Received:")


@pytest_twisted.ensureDeferred
async def test_auth_login_mechanism(auth_sink: RunningSink, tls_files: Any) -> None:
    def talk() -> None:
        with connect(auth_sink) as client:
            client.starttls(context=tls_context(tls_files))
            client.ehlo()
            client.user, client.password = "alice", PASSWORD
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
            client.sendmail("", ["b@example.test"], b"Subject: x\r\n\r\nbody\r\n")

    await in_thread(talk)
    [captured] = auth_sink.capture_log.messages
    assert captured.user == "alice"
    assert captured.mail_from == ""


@pytest_twisted.ensureDeferred
async def test_wrong_password_refused(auth_sink: RunningSink, tls_files: Any) -> None:
    def talk() -> int:
        with connect(auth_sink) as client:
            client.starttls(context=tls_context(tls_files))
            client.ehlo()
            try:
                client.login("alice", "wrong")
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code
            return 0

    assert await in_thread(talk) == 535


@pytest_twisted.ensureDeferred
async def test_malformed_plain_response_is_refused_not_dropped(
    auth_sink: RunningSink, tls_files: Any
) -> None:
    def talk() -> tuple[int, int]:
        with connect(auth_sink) as client:
            client.starttls(context=tls_context(tls_files))
            client.ehlo()
            code, _ = client.docmd("AUTH", "PLAIN bm9udWxscw==")  # "nonulls"
            # The connection is still usable afterwards.
            noop, _ = client.noop()
            return code, noop

    assert await in_thread(talk) == (535, 250)


@pytest_twisted.ensureDeferred
async def test_require_auth_refuses_mail_from(auth_sink: RunningSink, tls_files: Any) -> None:
    def talk() -> tuple[int, bytes]:
        with connect(auth_sink) as client:
            client.starttls(context=tls_context(tls_files))
            client.ehlo()
            return client.mail("a@example.test")

    code, text = await in_thread(talk)
    assert code == 530
    assert b"5.7.0" in text
    assert auth_sink.capture_log.messages == []


def test_throwaway_certificate_verifies_for_localhost_and_loopback(tls_files: Any) -> None:
    """The leaf is signed by the CA and names localhost, 127.0.0.1 and ::1."""
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(tls_files.ca_path.read_bytes())
    leaf = x509.load_pem_x509_certificate(tls_files.cert_path.read_bytes())
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert stat.S_IMODE(os.stat(tls_files.key_path).st_mode) == 0o600


def test_untrusted_ca_is_rejected_by_a_verifying_client(tmp_path: Path, tls_files: Any) -> None:
    """Two throwaway CAs do not trust each other (the certificate is real)."""
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = make_throwaway_certificate(other_dir)
    assert other.ca_path.read_bytes() != tls_files.ca_path.read_bytes()
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    leaf = x509.load_pem_x509_certificate(tls_files.cert_path.read_bytes())
    other_ca = x509.load_pem_x509_certificate(other.ca_path.read_bytes())
    with pytest.raises((InvalidSignature, ValueError)):
        leaf.verify_directly_issued_by(other_ca)


# -- envelope handling --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_one_file_per_transaction_and_refused_recipients(sink: RunningSink) -> None:
    def talk() -> tuple[Any, Any, Any]:
        with connect(sink) as client:
            first = client.sendmail(
                "a@example.test",
                ["one@example.test", "refused@example.test", "later@example.test", "two@example.test"],
                b"Subject: first\r\n\r\nbody\r\n",
            )
            second = client.sendmail("a@example.test", ["three@example.test"], b"Subject: second\r\n\r\nx\r\n")
            with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
                client.sendmail("a@example.test", ["refused@example.test"], b"Subject: third\r\n\r\nx\r\n")
            return first, second, caught.value.recipients

    first, second, third = await in_thread(talk)
    assert first == {
        "refused@example.test": (550, b"5.1.1 <refused@example.test>: recipient rejected"),
        "later@example.test": (450, b"4.2.1 <later@example.test>: try again later"),
    }
    assert second == {}
    assert set(third) == {"refused@example.test"}
    messages = sink.capture_log.messages
    assert [m.rcpt_to for m in messages] == [
        ("one@example.test", "two@example.test"),
        ("three@example.test",),
    ]
    assert len(list((sink.config.maildir / "new").iterdir())) == 2
    assert messages[0].tls is False and messages[0].user is None
    assert b"for <one@example.test>, <two@example.test>" in messages[0].path.read_bytes()


@pytest_twisted.ensureDeferred
async def test_esmtp_parameters_are_recorded(sink: RunningSink) -> None:
    def talk() -> None:
        with connect(sink) as client:
            assert client.has_extn("dsn") and client.has_extn("8bitmime")
            assert client.esmtp_features["size"] == "10000"
            client.sendmail(
                "a@example.test",
                ["b@example.test"],
                b"Subject: p\r\n\r\nx\r\n",
                mail_options=["BODY=8BITMIME", "RET=HDRS", "ENVID=abc"],
                rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;b@example.test"],
            )

    await in_thread(talk)
    [captured] = sink.capture_log.messages
    # smtplib adds its own SIZE= first.
    assert {"BODY=8BITMIME", "RET=HDRS", "ENVID=abc"} <= set(captured.mail_parameters)
    assert captured.rcpt_parameters == (("NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;b@example.test"),)


@pytest_twisted.ensureDeferred
async def test_size_limit(sink: RunningSink) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n"

    def talk() -> tuple[int, int]:
        with connect(sink) as client:
            declared, _ = client.mail("a@example.test", ["SIZE=20000"])
            client.rset()
            # Undeclared, but bigger than max_size once it arrives.
            client.mail("a@example.test")
            client.rcpt("b@example.test")
            code, _ = client.data(big * 200)
            return declared, code

    assert await in_thread(talk) == (552, 552)
    assert sink.capture_log.messages == []
    assert list((sink.config.maildir / "new").iterdir()) == []
    assert list((sink.config.maildir / "tmp").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_no_tls_means_no_starttls_and_no_auth(tmp_path: Path) -> None:
    from twisted.internet import reactor

    running = await start_sink(reactor, SinkConfig(maildir=tmp_path / "md"))
    try:

        def talk() -> tuple[bool, bool]:
            with connect(running) as client:
                return client.has_extn("starttls"), client.has_extn("auth")

        assert await in_thread(talk) == (False, False)
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_observers_see_each_capture(sink: RunningSink) -> None:
    seen: list[CapturedMessage] = []
    sink.capture_log.observers.append(seen.append)

    def talk() -> None:
        with connect(sink) as client:
            client.sendmail("a@example.test", ["b@example.test"], b"Subject: o\r\n\r\nx\r\n")

    await in_thread(talk)
    assert seen == sink.capture_log.messages
    assert "b@example.test" in seen[0].summary()


# -- configuration ----------------------------------------------------------------


def test_config_validation(tmp_path: Path, tls_files: Any) -> None:
    with pytest.raises(ValueError):
        SinkConfig(maildir=tmp_path, cert_path=tls_files.cert_path)
    with pytest.raises(ValueError):
        SinkConfig(maildir=tmp_path, require_auth=True, users=(("a", "b"),))
    with pytest.raises(ValueError):
        make_config(tmp_path, tls_files, require_auth=True, users=())
    with pytest.raises(ValueError):
        SinkConfig(maildir=tmp_path, max_size=0)


def test_config_repr_hides_passwords(tmp_path: Path, tls_files: Any) -> None:
    text = repr(make_config(tmp_path, tls_files))
    assert "alice" in text
    assert PASSWORD not in text


# -- the twistd plugin ----------------------------------------------------------


def test_dropins_are_service_makers() -> None:
    from twisted.application.service import IServiceMaker
    from twisted.plugin import IPlugin, getPlugins
    from zope.interface.verify import verifyObject

    import twisted.plugins

    makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
    assert {"smtpsend", "smtpsink"} <= set(makers)
    for name in ("smtpsend", "smtpsink"):
        assert verifyObject(IServiceMaker, makers[name])
        assert verifyObject(IPlugin, makers[name])
    assert makers["smtpsink"].module == "twisted_smtpconn._sink._twistd"
    assert makers["smtpsend"].module == "twisted_smtpconn._cli._twistd"


def test_dropin_is_cheap_to_import() -> None:
    """Importing the dropin must not import the library, the sink or a reactor."""
    code = (
        "import sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(REPO / 'twisted/plugins/twisted_smtpconn_smtpsend.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "bad = [n for n in ('twisted.internet.reactor', 'twisted_smtpconn', 'twisted.mail.smtp') if n in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_sink_options() -> None:
    from twisted.python import usage

    from twisted_smtpconn._sink._twistd import Options

    options = Options()
    options.parseOptions(["--port", "2600", "--reject", "A@x.test", "--reject", "b@x.test", "--defer", "c@x.test"])
    assert options["port"] == 2600
    assert options["reject"] == ["a@x.test", "b@x.test"]
    assert options["defer"] == ["c@x.test"]
    assert options["password"] is None
    for bad in (
        ["--port", "70000"],
        ["--port", "x"],
        ["--tls-cert", "c.pem"],
        ["--no-tls", "--require-auth"],
        ["--password-env", "SURELY_NOT_SET_SMTPSINK_TEST"],
        ["--max-size", "0"],
        ["--password", "x"],
    ):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(bad)


def test_sink_options_password_from_file(tmp_path: Path) -> None:
    from twisted_smtpconn._sink._twistd import Options

    secret = tmp_path / "pw"
    secret.write_text("from file\n")
    options = Options()
    options.parseOptions(["--password-file", str(secret)])
    assert options["password"] == "from file"


@pytest_twisted.ensureDeferred
async def test_twistd_smtpsink_subprocess(tmp_path: Path) -> None:
    """``twistd -n --pidfile= smtpsink`` captures a message sent to it."""
    port = free_port()
    maildir = tmp_path / "Maildir"
    log = tmp_path / "twistd.log"
    secret = tmp_path / "pw"
    secret.write_text("pw-from-file\n")
    env = subprocess_env()
    twistd = [*twistd_command(), "-n", "--pidfile=", f"--logfile={log}", "smtpsink",
              "--port", str(port), "--maildir", str(maildir), "--require-auth",
              "--password-file", str(secret), "--user", "tester"]
    process = subprocess.Popen(twistd, env=env, cwd=tmp_path)
    try:
        def talk() -> dict[str, Any]:
            import time

            for _ in range(200):  # bounded wait for the port to open
                if process.poll() is not None:
                    raise AssertionError(f"twistd exited early: {log.read_text()}")
                try:
                    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise AssertionError("smtpsink did not start")
            with client:
                ca = next(
                    line.rsplit(" ", 1)[1]
                    for line in log.read_text().splitlines()
                    if "trust CA file" in line
                )
                client.starttls(context=ssl.create_default_context(cafile=ca))
                client.login("tester", "pw-from-file")
                return client.sendmail("a@example.test", ["b@example.test"], b"Subject: via twistd\r\n\r\nhi\r\n")

        assert await in_thread(talk) == {}
    finally:
        process.terminate()
        process.wait(timeout=30)
    box = mailbox.Maildir(str(maildir), create=False)
    assert [m["Subject"] for m in box] == ["via twistd"]
    text = log.read_text()
    assert "smtpsink: arrived <a@example.test> -> <b@example.test>" in text
    assert "pw-from-file" not in text
