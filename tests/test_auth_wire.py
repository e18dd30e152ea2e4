"""
``login()`` byte for byte on a fake wire: what is sent for each mechanism,
the choice, the refusals, the token renewal, the cancellation of broken
exchanges, and that no credential ever reaches a log line or an error.
"""

from __future__ import annotations

import re

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import LogEvent, Logger, formatEvent

from twisted_smtpconn import Auth, AuthenticationError, ConnectionFailedError, SMTPConnectionError
from wiretools import Wire, failure, pending, result

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 25)
REMOTE = IPv4Address("TCP", "192.0.2.25", 25)


def b64(data: bytes | str) -> bytes:
    return base64.b64encode(data.encode() if isinstance(data, str) else data)


def connected(auth_line: bytes = b"AUTH PLAIN LOGIN CRAM-MD5", *, peer: Any = LOOPBACK, **options: Any) -> Wire:
    wire = Wire(**options)
    wire.transport.peerAddr = peer
    wire.connect(b"250-server.example\r\n250 " + auth_line + b"\r\n")
    return wire


class Provider:
    """An application's token provider: hands out the next token of a list."""

    def __init__(self, *tokens: Any, user: str | None = "alice@example.com") -> None:
        self.user = user
        self.tokens = list(tokens)
        self.calls: list[bool] = []

    def get_token(self, renew: bool) -> Any:
        self.calls.append(renew)
        return self.tokens.pop(0)


ERROR_CHALLENGE = b"334 " + b64('{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}') + b"\r\n"


# -- each mechanism on the wire --------------------------------------------------------------


def test_plain() -> None:
    wire = connected(b"AUTH PLAIN")
    d = wire.conn.login(Auth(user="alice", password="secret"))
    assert wire.client() == b"AUTH PLAIN " + b64("\0alice\0secret") + b"\r\n"
    wire.server(b"235 2.7.0 Authentication successful\r\n")
    assert result(d) is None
    assert wire.conn.authenticated


def test_login() -> None:
    wire = connected(b"AUTH LOGIN")
    d = wire.conn.login({"user": "alice", "pass": "secret"})
    assert wire.client() == b"AUTH LOGIN\r\n"
    wire.server(b"334 VXNlcm5hbWU6\r\n")
    assert wire.client() == b64("alice") + b"\r\n"
    wire.server(b"334 UGFzc3dvcmQ6\r\n")
    assert wire.client() == b64("secret") + b"\r\n"
    wire.server(b"235 ok\r\n")
    assert result(d) is None


def test_login_tolerates_unencoded_prompts() -> None:
    wire = connected(b"AUTH LOGIN")
    d = wire.conn.login(Auth(user="alice", password="secret"))
    wire.client()
    wire.server(b"334 Username:\r\n")
    assert wire.client() == b64("alice") + b"\r\n"
    wire.server(b"334 Password:\r\n")
    assert wire.client() == b64("secret") + b"\r\n"
    wire.server(b"235 ok\r\n")
    assert result(d) is None


def test_cram_md5_is_preferred_and_correct() -> None:
    wire = connected(b"AUTH LOGIN PLAIN CRAM-MD5")
    d = wire.conn.login(Auth(user="tim", password="tanstaaftanstaaf"))
    assert wire.client() == b"AUTH CRAM-MD5\r\n"
    wire.server(b"334 " + b64("<1896.697170952@postoffice.reston.mci.net>") + b"\r\n")
    assert wire.client() == b64("tim b913a602c7eda7a495b4e6e7334d3890") + b"\r\n"
    wire.server(b"235 ok\r\n")
    assert result(d) is None


def test_xoauth2_token_string() -> None:
    wire = connected(b"AUTH PLAIN XOAUTH2")
    d = wire.conn.login(Auth(user="alice@example.com", password="pw", xoauth2="ya29.token"))
    assert wire.client() == b"AUTH XOAUTH2 " + b64("user=alice@example.com\x01auth=Bearer ya29.token\x01\x01") + b"\r\n"
    wire.server(b"235 2.7.0 Accepted\r\n")
    assert result(d) is None


def test_oauthbearer_when_it_is_the_only_token_mechanism() -> None:
    wire = connected(b"AUTH PLAIN OAUTHBEARER")
    d = wire.conn.login(Auth(xoauth2=Provider("tok-1")))
    expected = "n,a=alice@example.com,\x01host=localhost\x01port=25\x01auth=Bearer tok-1\x01\x01"
    assert wire.client() == b"AUTH OAUTHBEARER " + b64(expected) + b"\r\n"
    wire.server(b"235 ok\r\n")
    assert result(d) is None


# -- choosing ----------------------------------------------------------------------------------


def test_method_overrides_auth_method_option() -> None:
    wire = connected(b"AUTH PLAIN LOGIN CRAM-MD5", auth_method="plain")
    wire.conn.login(Auth(user="alice", password="pw", method="LOGIN"))
    assert wire.client() == b"AUTH LOGIN\r\n"


def test_auth_method_option_is_used() -> None:
    wire = connected(b"AUTH PLAIN LOGIN CRAM-MD5", auth_method="plain")
    wire.conn.login(Auth(user="alice", password="pw"))
    assert wire.client().startswith(b"AUTH PLAIN ")


def test_requested_mechanism_not_offered_fails_naming_the_offer() -> None:
    wire = connected(b"AUTH PLAIN LOGIN")
    error = failure(wire.conn.login(Auth(user="alice", password="pw", method="CRAM-MD5")))
    assert isinstance(error, AuthenticationError) and error.code == "EAUTH"
    assert "CRAM-MD5" in str(error) and "PLAIN LOGIN" in str(error)
    assert wire.client() == b""


def test_unknown_mechanism_fails_without_sending() -> None:
    wire = connected(b"AUTH PLAIN KERBEROS_V4")
    error = failure(wire.conn.login(Auth(user="alice", password="pw", method="KERBEROS_V4")))
    assert isinstance(error, AuthenticationError)
    assert "unsupported" in str(error)
    assert wire.client() == b""


def test_no_credentials_and_already_authenticated() -> None:
    wire = connected()
    error = failure(wire.conn.login(Auth(user="alice")))
    assert isinstance(error, AuthenticationError) and "no credentials" in str(error)
    d = wire.conn.login(Auth(user="alice", password="pw"))
    wire.client()
    wire.server(b"334 " + b64("<1.2@x>") + b"\r\n")
    wire.server(b"235 ok\r\n")
    assert result(d) is None
    wire.client()
    again = failure(wire.conn.login(Auth(user="alice", password="pw")))
    assert isinstance(again, AuthenticationError) and "already authenticated" in str(again)
    assert wire.client() == b""


# -- refusals ----------------------------------------------------------------------------------


def test_wrong_password_carries_the_reply_and_leaves_the_connection_usable() -> None:
    wire = connected(b"AUTH PLAIN")
    d = wire.conn.login(Auth(user="alice", password="wrong"))
    wire.client()
    wire.server(b"535 5.7.8 Authentication credentials invalid\r\n")
    error = failure(d)
    assert isinstance(error, AuthenticationError)
    assert error.code == "EAUTH"
    assert error.response == "535 5.7.8 Authentication credentials invalid"
    assert error.response_code == 535
    assert error.enhanced_status == "5.7.8"
    assert error.command == "AUTH PLAIN ****"
    assert not wire.conn.authenticated
    # Still connected: a second attempt goes out on the same connection.
    retry = wire.conn.login(Auth(user="alice", password="right"))
    assert wire.client() == b"AUTH PLAIN " + b64("\0alice\0right") + b"\r\n"
    wire.server(b"235 ok\r\n")
    assert result(retry) is None


def test_421_during_auth_closes_the_connection() -> None:
    wire = connected(b"AUTH PLAIN")
    d = wire.conn.login(Auth(user="alice", password="pw"))
    wire.server(b"421 4.3.2 shutting down\r\n")
    error = failure(d)
    assert isinstance(error, ConnectionFailedError) and error.code == "ECONNECTION"
    assert wire.transport.disconnecting
    assert ("end", ()) in wire.events


def test_cleartext_to_a_remote_host_is_refused_by_default() -> None:
    wire = connected(b"AUTH PLAIN", peer=REMOTE)
    error = failure(wire.conn.login(Auth(user="alice", password="pw")))
    assert isinstance(error, AuthenticationError) and error.code == "EAUTH"
    assert "cleartext" in str(error) and "allow_insecure_auth" in str(error)
    assert wire.client() == b""


def test_cleartext_tokens_are_refused_too() -> None:
    wire = connected(b"AUTH XOAUTH2", peer=REMOTE)
    provider = Provider("tok")
    error = failure(wire.conn.login(Auth(xoauth2=provider)))
    assert isinstance(error, AuthenticationError) and "cleartext" in str(error)
    assert provider.calls == []  # not even fetched
    assert wire.client() == b""


def test_allow_insecure_auth_permits_cleartext() -> None:
    wire = connected(b"AUTH PLAIN", peer=REMOTE, allow_insecure_auth=True)
    d = wire.conn.login(Auth(user="alice", password="pw"))
    assert wire.client().startswith(b"AUTH PLAIN ")
    wire.server(b"235 ok\r\n")
    assert result(d) is None


# -- XOAUTH2 renewal -----------------------------------------------------------------------------


def _refuse_token(wire: Wire) -> None:
    """The server's answer to a bad token: an error challenge, then 535."""
    wire.server(ERROR_CHALLENGE)
    assert wire.client() == b"\r\n"  # the acknowledgement is an empty line
    wire.server(b"535 5.7.8 Username and Password not accepted\r\n")


def test_refused_token_is_renewed_exactly_once() -> None:
    wire = connected(b"AUTH XOAUTH2")
    provider = Provider("old-token", succeed("new-token"))
    d = wire.conn.login(Auth(xoauth2=provider))
    assert wire.client() == b"AUTH XOAUTH2 " + b64("user=alice@example.com\x01auth=Bearer old-token\x01\x01") + b"\r\n"
    _refuse_token(wire)
    assert wire.client() == b"AUTH XOAUTH2 " + b64("user=alice@example.com\x01auth=Bearer new-token\x01\x01") + b"\r\n"
    wire.server(b"235 2.7.0 Accepted\r\n")
    assert result(d) is None
    assert provider.calls == [False, True]


def test_second_refusal_fails_without_a_third_attempt() -> None:
    wire = connected(b"AUTH XOAUTH2")
    provider = Provider("old-token", "new-token", "never-used")
    d = wire.conn.login(Auth(xoauth2=provider))
    wire.client()
    _refuse_token(wire)
    wire.client()
    _refuse_token(wire)
    error = failure(d)
    assert isinstance(error, AuthenticationError)
    assert "renewed" in str(error) and "status 401" in str(error)
    assert error.response_code == 535 and error.enhanced_status == "5.7.8"
    assert provider.calls == [False, True]
    assert wire.client() == b""


def test_token_string_is_not_renewed() -> None:
    wire = connected(b"AUTH XOAUTH2")
    d = wire.conn.login(Auth(user="alice@example.com", xoauth2="only-token"))
    wire.client()
    _refuse_token(wire)
    error = failure(d)
    assert isinstance(error, AuthenticationError) and error.response_code == 535
    assert wire.client() == b""


def test_renewal_waits_for_a_deferred_token() -> None:
    wire = connected(b"AUTH XOAUTH2")
    later: Deferred[str] = Deferred()
    provider = Provider("old-token", later)
    d = wire.conn.login(Auth(xoauth2=provider))
    wire.client()
    _refuse_token(wire)
    assert pending(d) and wire.client() == b""
    later.callback("new-token")
    assert b64("user=alice@example.com\x01auth=Bearer new-token\x01\x01") in wire.client()
    wire.server(b"235 ok\r\n")
    assert result(d) is None


def test_oauthbearer_error_challenge_is_acknowledged_with_kvsep() -> None:
    wire = connected(b"AUTH OAUTHBEARER")
    d = wire.conn.login(Auth(user="alice@example.com", xoauth2="tok"))
    wire.client()
    wire.server(b"334 " + b64('{"status":"invalid_token"}') + b"\r\n")
    assert wire.client() == b"AQ==\r\n"
    wire.server(b"535 5.7.8 nope\r\n")
    error = failure(d)
    assert "status invalid_token" in str(error)


@pytest.mark.parametrize(
    "outcome, text",
    [
        (lambda: fail(RuntimeError("endpoint unreachable")), "RuntimeError: endpoint unreachable"),
        (lambda: fail(AuthenticationError("the token endpoint refused: invalid_grant")), "invalid_grant"),
        (lambda: 42, "returned int"),
        (lambda: "", "empty"),
        (lambda: "tok\r\nMAIL FROM:<x>", "unusable"),
    ],
)
def test_provider_failures_are_eauth_and_nothing_is_sent(outcome: Any, text: str) -> None:
    wire = connected(b"AUTH XOAUTH2")

    class Failing:
        user = "alice@example.com"

        def get_token(self, renew: bool) -> Any:
            return outcome()

    error = failure(wire.conn.login(Auth(xoauth2=Failing())))
    assert isinstance(error, AuthenticationError) and error.code == "EAUTH"
    assert text in str(error)
    assert wire.client() == b""


def test_provider_failure_on_renewal() -> None:
    wire = connected(b"AUTH XOAUTH2")
    provider = Provider("old-token", fail(ConnectionRefusedError("no route")))
    d = wire.conn.login(Auth(xoauth2=provider))
    wire.client()
    _refuse_token(wire)
    error = failure(d)
    assert isinstance(error, AuthenticationError) and "renew" in str(error)
    assert provider.calls == [False, True]


def test_xoauth2_needs_a_user() -> None:
    wire = connected(b"AUTH XOAUTH2")
    error = failure(wire.conn.login(Auth(xoauth2=Provider("tok", user=None))))
    assert isinstance(error, AuthenticationError) and "user name" in str(error)
    assert wire.client() == b""


# -- broken exchanges ----------------------------------------------------------------------------


def test_undecodable_challenge_is_cancelled_and_the_connection_survives() -> None:
    wire = connected(b"AUTH CRAM-MD5")
    d = wire.conn.login(Auth(user="alice", password="pw"))
    wire.client()
    wire.server(b"334 not*base64\r\n")
    assert wire.client() == b"*\r\n"
    wire.server(b"501 5.7.0 Auth aborted\r\n")
    error = failure(d)
    assert isinstance(error, AuthenticationError) and "not base64" in str(error)
    assert error.response_code == 501
    assert not wire.transport.disconnecting


def test_server_that_ignores_the_cancellation_is_dropped() -> None:
    wire = connected(b"AUTH CRAM-MD5")
    d = wire.conn.login(Auth(user="alice", password="pw"))
    wire.client()
    wire.server(b"334 not*base64\r\n")
    assert wire.client() == b"*\r\n"
    wire.server(b"334 still waiting\r\n")
    error = failure(d)
    assert isinstance(error, SMTPConnectionError) and error.code == "EPROTOCOL"
    assert wire.transport.aborted


def test_endless_challenges_are_cancelled() -> None:
    wire = connected(b"AUTH LOGIN")
    d = wire.conn.login(Auth(user="alice", password="pw"))
    wire.client()
    for _ in range(3):
        wire.server(b"334 \r\n")
    assert wire.client() == b64("alice") + b"\r\n" + b64("pw") + b"\r\n*\r\n"
    wire.server(b"501 aborted\r\n")
    assert isinstance(failure(d), AuthenticationError)


def test_scram_success_without_server_proof_closes_the_connection() -> None:
    wire = connected(b"AUTH SCRAM-SHA-256")
    d = wire.conn.login(Auth(user="alice", password="pw"))
    assert wire.client().startswith(b"AUTH SCRAM-SHA-256 " + b64("n,,n=alice,r=")[:16])
    wire.server(b"235 2.7.0 welcome, whoever you are\r\n")
    error = failure(d)
    assert isinstance(error, AuthenticationError) and "impostor" in str(error)
    assert wire.transport.aborted
    assert ("end", ()) in wire.events


# -- nothing secret in logs or errors ---------------------------------------------------------------


def _secrets(*values: str) -> list[str]:
    out: list[str] = []
    for value in values:
        out += [value, b64(value).decode()]
    return out


def _texts(events: list[LogEvent], errors: list[BaseException]) -> list[str]:
    # Transcript lines name their connection ("#7 localhost:25 C: ..."); the
    # checks below read the line itself.
    texts = [re.sub(r"^#\d+ \S+ (?=[CS]: )", "", formatEvent(event)) for event in events]
    texts += [repr(event) for event in events]
    for error in errors:
        texts += [str(error), repr(error)]
        if isinstance(error, SMTPConnectionError):
            texts += [str(error.command), str(error.response)]
    return texts


def test_no_credential_in_any_log_event_or_error() -> None:
    password = "Tr0ub4dor&3-horse"
    old_token, new_token = "ya29.old-SECRET-token", "ya29.new-SECRET-token"
    events: list[LogEvent] = []
    errors: list[BaseException] = []
    logger = Logger(observer=events.append)

    # PLAIN refused, then PLAIN accepted.
    wire = connected(b"AUTH PLAIN", logger=logger, debug=True)
    d = wire.conn.login(Auth(user="alice", password=password))
    wire.server(b"535 5.7.8 bad\r\n")
    errors.append(failure(d))
    d = wire.conn.login(Auth(user="alice", password=password))
    wire.server(b"235 ok\r\n")
    result(d)

    # LOGIN, both prompts.
    wire = connected(b"AUTH LOGIN", logger=logger, debug=True)
    d = wire.conn.login(Auth(user="alice", password=password))
    for line in (b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", b"535 5.7.8 no\r\n"):
        wire.server(line)
    errors.append(failure(d))

    # XOAUTH2 refused twice, with renewal.
    wire = connected(b"AUTH XOAUTH2", logger=logger, debug=True)
    d = wire.conn.login(Auth(xoauth2=Provider(old_token, new_token), password=password))
    for _ in range(2):
        wire.server(ERROR_CHALLENGE)
        wire.server(b"535 5.7.8 no\r\n")
    errors.append(failure(d))

    # Cleartext refusal.
    wire = connected(b"AUTH PLAIN", peer=REMOTE, logger=logger, debug=True)
    errors.append(failure(wire.conn.login(Auth(user="alice", password=password))))

    texts = _texts(events, errors)
    # The transcript is there, with the AUTH lines redacted...
    assert "C: AUTH PLAIN ****" in texts
    assert "C: AUTH XOAUTH2 ****" in texts
    assert texts.count("C: ****") >= 4  # LOGIN's user and password, XOAUTH2's acknowledgements
    # ...and no secret in any form anywhere.
    plain_response = b64(f"\0alice\0{password}").decode()
    xoauth2_responses = [
        b64(f"user=alice@example.com\x01auth=Bearer {token}\x01\x01").decode() for token in (old_token, new_token)
    ]
    for secret in [*_secrets(password, old_token, new_token), plain_response, *xoauth2_responses]:
        leaks = [text for text in texts if secret in text]
        assert not leaks, f"{secret!r} leaked into {leaks!r}"


# The marker keeps a generated password from matching ordinary log text
# ("client", "250") by chance; everything after it is arbitrary.
_PASSWORDS = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r\n\x01"), max_size=40
).map(lambda tail: "pw\u2603" + tail)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(password=_PASSWORDS, mechanism=st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5"]))
def test_property_no_password_in_transcript(password: str, mechanism: str) -> None:
    events: list[LogEvent] = []
    wire = connected(b"AUTH " + mechanism.encode(), logger=Logger(observer=events.append), debug=True)
    d = wire.conn.login(Auth(user="alice", password=password))
    if mechanism == "LOGIN":
        wire.server(b"334 VXNlcm5hbWU6\r\n")
        wire.server(b"334 UGFzc3dvcmQ6\r\n")
    elif mechanism == "CRAM-MD5":
        wire.server(b"334 " + b64("<1.2@server>") + b"\r\n")
    wire.server(b"535 5.7.8 no\r\n")
    error = failure(d)
    texts = _texts(events, [error])
    assert any(text.startswith("C: AUTH " + mechanism) for text in texts)
    for secret in _secrets(password):
        assert not any(secret in text for text in texts)


def test_error_json_in_message_is_from_the_server_only() -> None:
    wire = connected(b"AUTH XOAUTH2")
    d = wire.conn.login(Auth(user="alice@example.com", xoauth2="tok-xyz"))
    wire.client()
    payload = json.dumps({"status": "400", "schemes": "Bearer"}).encode()
    wire.server(b"334 " + base64.b64encode(payload) + b"\r\n")
    wire.server(b"535 5.7.8 no\r\n")
    error = failure(d)
    assert "status 400, schemes Bearer" in str(error)
    assert "tok-xyz" not in str(error)
