"""
Credential hygiene: every SASL mechanism, with ``debug=True``, made to fail
in every way a server can make it fail (and to succeed), and then every log
event, error text, error repr, chained traceback and repr searched for the
secret and its encodings.

The needles are the password or token itself and what an eavesdropper on
the logs could turn back into it or replay: its UTF-8 bytes in base64 (at
every byte alignment, so that the secret embedded in a longer base64 blob
is found too), URL-safe base64, hex, its ``repr``, the whole SASL blobs
the client sent (PLAIN's ``\\0user\\0password``, XOAUTH2's
``user=..auth=Bearer ..``, the SCRAM proofs, the CRAM-MD5 digest, the NTLM
messages) -- taken from the wire itself, so the check does not depend on
knowing each mechanism's format.
"""

from __future__ import annotations

import base64
import binascii
import traceback
from collections.abc import Iterable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.logger import LogEvent, Logger, formatEvent
from twisted.python.failure import Failure

from twisted_smtpconn import Auth, SMTPConnectionError
from wiretools import Wire, transcript_text

PASSWORD = "Pa55-Sekr3t-Wörd!"
TOKEN = "ya29.a0-T0KEN-Sekr3t-xyz"
RENEWED = "ya29.a0-RENEWED-Sekr3t-abc"
USER = "alice@example.org"

MECHANISMS = ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER", "NTLM"]
EHLO = ("250-server.example\r\n250 AUTH " + " ".join(MECHANISMS) + "\r\n").encode()

#: How the server makes the exchange end.
FAILURES = ["accepted", "refused", "421", "garbage-reply", "bad-challenge", "dropped", "timeout"]


def b64_variants(secret: bytes) -> set[str]:
    """
    The base64 text that ``secret`` produces wherever it sits in a longer
    blob: for each of the three byte alignments, the characters that depend
    on the secret's bytes alone.
    """
    found = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret).decode()
        first_group = -(-offset // 3)  # the first group made of secret bytes only
        last_group = (offset + len(secret)) // 3  # groups before this one are complete
        if last_group > first_group:
            found.add(encoded[4 * first_group : 4 * last_group])
    return {v for v in found if len(v) >= 8}


def needles_for(secret: str) -> set[str]:
    raw = secret.encode("utf-8")
    needles = {secret, repr(secret)[1:-1], raw.hex(), binascii.hexlify(raw).decode().upper()}
    needles |= b64_variants(raw)
    needles.add(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    return needles


SECRET_NEEDLES = needles_for(PASSWORD) | needles_for(TOKEN) | needles_for(RENEWED)


class TokenProvider:
    """A provider whose first token is refused; the renewal is refused too."""

    def __init__(self, fail_renewal: bool = False) -> None:
        self.user = USER
        self.calls: list[bool] = []
        self.fail_renewal = fail_renewal

    def get_token(self, renew: bool) -> Deferred[str]:
        self.calls.append(renew)
        if renew and self.fail_renewal:
            raise RuntimeError(f"refresh failed; the old token {TOKEN} was revoked")
        return succeed(RENEWED if renew else TOKEN)


class SaslServer:
    """
    The server side of one AUTH exchange on a :class:`Wire`, for every
    mechanism, ending as ``failure`` says.  Records every line the client
    sent during the exchange.
    """

    def __init__(self, wire: Wire, mechanism: str, failure: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.wire = wire
        self.mechanism = mechanism
        self.failure = failure
        self.client_lines: list[bytes] = []
        self.scram: Any = None
        self.ntlm: Any = None
        self.round = 0
        self.monkeypatch = monkeypatch

    # What the server says after the client's n-th line of the exchange.
    def challenge(self, line: bytes) -> bytes | None:
        """The next 334 challenge, or None when the exchange is at its end."""
        mech, parts = self.mechanism, line.split(b" ")
        if self.round == 0:
            initial = parts[2] if len(parts) > 2 else None
            if mech == "LOGIN":
                return b"334 VXNlcm5hbWU6"
            if mech == "CRAM-MD5":
                return b"334 " + base64.b64encode(b"<1896.697170952@server.example>")
            if mech.startswith("SCRAM"):
                return b"334 " + base64.b64encode(self._scram_first(base64.b64decode(initial or b"")).encode())
            if mech in ("XOAUTH2", "OAUTHBEARER") and self.failure != "accepted":
                error = b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'
                return b"334 " + base64.b64encode(error)
            if mech == "NTLM":
                negotiate = base64.b64decode(initial) if initial else None
                if negotiate is None:
                    return b"334 "
                return b"334 " + base64.b64encode(self._ntlm().step(negotiate))
            return None
        if self.round == 1:
            if mech == "LOGIN":
                return b"334 UGFzc3dvcmQ6"
            if mech.startswith("SCRAM") and self.failure == "accepted":
                final = self.scram.get_server_final() if self._scram_final(base64.b64decode(line)) else ""
                return b"334 " + base64.b64encode(final.encode())
        return None

    def _scram_first(self, client_first: bytes) -> str:
        from scramp import ScramMechanism

        scram = ScramMechanism(self.mechanism)
        salt, stored, server_key, iterations = scram.make_auth_info(PASSWORD, iteration_count=4096)
        self.scram = scram.make_server(lambda username: (salt, stored, server_key, iterations))
        self.scram.set_client_first(client_first.decode())
        return str(self.scram.get_server_first())

    def _scram_final(self, client_final: bytes) -> bool:
        try:
            self.scram.set_client_final(client_final.decode())
        except Exception:  # noqa: BLE001 -- a wrong proof: no server-final
            return False
        return True

    def _ntlm(self) -> Any:
        spnego = pytest.importorskip("spnego")
        if self.ntlm is None:
            self.ntlm = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
        return self.ntlm

    def final(self) -> bytes | None:
        """The reply that ends the exchange (None: say nothing)."""
        if self.failure == "accepted":
            return b"235 2.7.0 Authentication successful\r\n"
        if self.failure in ("refused", "bad-challenge"):
            return b"535 5.7.8 Authentication credentials invalid\r\n"
        if self.failure == "421":
            return b"421 4.7.0 Too many failures, closing\r\n"
        return None

    def play(self, d: Deferred[Any]) -> None:
        """Answer the client until the login ends (bounded)."""
        for _ in range(40):
            if d.called:
                return
            written = self.wire.client()
            if not written:
                if self.failure == "timeout":
                    self.wire.reactor.advance(31)
                    continue
                return
            for line in written.split(b"\r\n")[:-1]:
                self.client_lines.append(line)
                self.answer(line)
        raise AssertionError("the exchange did not end")

    def answer(self, line: bytes) -> None:
        if line == b"*":
            self.wire.server(b"501 5.7.0 Authentication cancelled\r\n")
            return
        if self.round == 0 and self.failure == "garbage-reply":
            self.wire.server(b"hello? \x1b[31m" + line[-20:] + b"\r\n")
            return
        if self.round == 0 and self.failure == "bad-challenge":
            self.wire.server(b"334 !!not base64!! " + line[-12:] + b"\r\n")
            self.round += 1
            return
        challenge = self.challenge(line)
        self.round += 1
        if challenge is not None:
            self.wire.server(challenge + b"\r\n")
            return
        if self.failure == "dropped":
            self.wire.drop()
        elif self.failure != "timeout":
            reply = self.final()
            if reply is not None:
                self.wire.server(reply)


def client_blobs(lines: Iterable[bytes]) -> set[str]:
    """Every SASL response the client sent: the initial response and each continuation."""
    blobs = set()
    for line in lines:
        parts = line.split(b" ")
        if parts[0].upper() == b"AUTH":
            blob = parts[2] if len(parts) > 2 else b""
        else:
            blob = line
        if len(blob) >= 8:
            blobs.add(blob.decode("ascii", "replace"))
            try:
                decoded = base64.b64decode(blob, validate=True)
            except binascii.Error:
                continue
            blobs |= b64_variants(decoded)
    return blobs


def texts_of(error: BaseException | None, events: list[LogEvent], extra: Iterable[object]) -> list[str]:
    """Everything a caller or an operator could ever see."""
    texts = []
    for event in events:
        texts.append(formatEvent(event))
        texts.append(repr({k: v for k, v in event.items() if k != "log_logger"}))
        if "log_failure" in event:
            texts.append(event["log_failure"].getTraceback())
    if error is not None:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
        for attribute in ("message", "command", "response", "recipient"):
            texts.append(str(getattr(error, attribute, "")))
        texts += [repr(e) for e in getattr(error, "rejected_errors", [])]
    texts += [repr(thing) for thing in extra]
    return texts


def assert_clean(texts: list[str], needles: set[str], where: str) -> None:
    for text in texts:
        for needle in needles:
            assert needle not in text, f"{where}: {needle!r} found in {text[:300]!r}"


def run_login(
    mechanism: str, failure: str, monkeypatch: pytest.MonkeyPatch, auth: Auth, **options: Any
) -> tuple[Wire, SaslServer, Any, list[LogEvent]]:
    events: list[LogEvent] = []
    wire = Wire(
        logger=Logger(observer=events.append), debug=True, allow_insecure_auth=True, socket_timeout=30.0, **options
    )
    errors: list[Any] = []
    wire.conn.on("error", errors.append)
    wire.connect(EHLO)
    server = SaslServer(wire, mechanism, failure, monkeypatch)
    d = wire.conn.login(auth)
    server.play(d)
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, f"{mechanism}/{failure}: login did not end"
    result = outcome[0].value if isinstance(outcome[0], Failure) else outcome[0]
    for extra in errors:
        events.append({"log_format": "{e!r}", "e": extra, "log_level": None, "log_namespace": "test"})
    return wire, server, result, events


def credentials_for(mechanism: str, provider: TokenProvider | None = None) -> Auth:
    if mechanism in ("XOAUTH2", "OAUTHBEARER"):
        return Auth(user=USER, xoauth2=provider or TOKEN, method=mechanism)
    if mechanism == "NTLM":
        return Auth(user="alice", password=PASSWORD, domain="EXAMPLE", workstation="DESK", method=mechanism)
    return Auth(user=USER, password=PASSWORD, method=mechanism)


@pytest.fixture(autouse=True)
def ntlm_users(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyspnego's acceptor reads its users from NTLM_USER_FILE."""
    users = tmp_path / "ntlm-users"
    users.write_text(f"EXAMPLE:alice:{PASSWORD}\n", encoding="utf-8")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_no_secret_in_logs_errors_or_reprs(mechanism: str, failure: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if mechanism == "NTLM":
        pytest.importorskip("spnego")
    auth = credentials_for(mechanism)
    wire, server, result, events = run_login(mechanism, failure, monkeypatch, auth)
    if failure == "accepted":
        assert result is None, repr(result)
    else:
        assert isinstance(result, SMTPConnectionError), repr(result)
        expected = {
            "refused": {"EAUTH"},
            "421": {"ECONNECTION"},
            "garbage-reply": {"EPROTOCOL"},
            "bad-challenge": {"EAUTH", "EPROTOCOL"},
            "dropped": {"ECONNECTION"},
            "timeout": {"ETIMEDOUT"},
        }[failure]
        assert result.code in expected, repr(result)
    # The exchange really happened: there was something to leak.
    assert server.client_lines and server.client_lines[0].startswith(b"AUTH " + mechanism.encode())
    needles = SECRET_NEEDLES | client_blobs(server.client_lines)
    error = result if isinstance(result, BaseException) else None
    texts = texts_of(error, events, [wire.conn, auth])
    assert_clean(texts, needles, f"{mechanism}/{failure}")
    # The debug transcript was on, and shows the exchange -- redacted.
    transcript = [transcript_text(formatEvent(e)) for e in events]
    transcript = [t for t in transcript if t.startswith(("C:", "S:"))]
    assert any(t.startswith(f"C: AUTH {mechanism}") for t in transcript), transcript


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
@pytest.mark.parametrize("fail_renewal", [False, True], ids=["renewed-token-refused", "renewal-raises"])
def test_token_renewal_leaks_neither_token(mechanism: str, fail_renewal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = TokenProvider(fail_renewal=fail_renewal)
    auth = Auth(xoauth2=provider, method=mechanism)
    wire, server, result, events = run_login(mechanism, "refused", monkeypatch, auth)
    assert isinstance(result, SMTPConnectionError) and result.code == "EAUTH", repr(result)
    assert provider.calls == [False, True]
    needles = SECRET_NEEDLES | client_blobs(server.client_lines)
    assert_clean(texts_of(result, events, [wire.conn, auth, provider]), needles, f"{mechanism} renewal")


def test_the_needles_would_find_a_leak() -> None:
    """The search itself works: each encoding of the secret is caught in a blob."""
    plain_blob = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    xoauth_blob = base64.b64encode(f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01".encode()).decode()
    for leak in (
        f"password={PASSWORD}",
        f"C: {plain_blob}",
        f"AUTH XOAUTH2 {xoauth_blob}",
        repr(PASSWORD),
        PASSWORD.encode().hex(),
        base64.urlsafe_b64encode(TOKEN.encode()).decode(),
    ):
        with pytest.raises(AssertionError):
            assert_clean([leak], SECRET_NEEDLES, "self-test")


def test_a_caller_error_that_would_show_the_secret_does_not() -> None:
    """Refusing a bad credential must not echo it."""
    for bad in (
        lambda: Auth(user=USER, password=PASSWORD + "\r\n"),
        lambda: Auth(user=USER, password=PASSWORD + "\x00"),
        lambda: Auth(user=USER, xoauth2=TOKEN + "\x01"),
    ):
        with pytest.raises(ValueError) as raised:
            bad()
        text = "".join(traceback.format_exception(raised.value))
        assert_clean([str(raised.value), repr(raised.value), text], SECRET_NEEDLES, "caller error")

