"""
The SASL mechanisms and the choice between them, without a connection:
each client mechanism is run against an independent server implementation
where one exists (scramp's SCRAM server, pyspnego's NTLM acceptor) and
against the published examples of its RFC where one is given.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import sys
from typing import Any

import pytest
import scramp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport

from twisted_smtpconn import Auth, AuthenticationError
from twisted_smtpconn._auth import (
    PASSWORD_PREFERENCE,
    SUPPORTED_MECHANISMS,
    TOKEN_PREFERENCE,
    choose_mechanism,
    coerce_auth,
    connection_is_local,
)
from twisted_smtpconn._options import validate_options
from twisted_smtpconn._sasl import (
    CramMD5Mechanism,
    LoginMechanism,
    OAuthBearerMechanism,
    PlainMechanism,
    XOAuth2Mechanism,
    check_credential,
    cram_md5_response,
    decode_challenge,
    describe_oauth_error,
)
from twisted_smtpconn._sasl_scram import (
    MAX_ITERATIONS,
    ScramMechanism,
    peer_certificate_der,
    tls_server_end_point,
)

# -- PLAIN, LOGIN, CRAM-MD5 ----------------------------------------------------------


def test_plain_initial_response() -> None:
    mechanism = PlainMechanism("tim", "tanstaaftanstaaf")
    assert mechanism.initial_response() == b"\x00tim\x00tanstaaftanstaaf"
    with pytest.raises(AuthenticationError):
        mechanism.respond(b"")


def test_plain_is_utf8() -> None:
    assert PlainMechanism("jörg", "pässwörd").initial_response() == "\x00jörg\x00pässwörd".encode()


def test_login_answers_two_prompts_then_refuses_a_third() -> None:
    mechanism = LoginMechanism("alice", "secret")
    assert mechanism.initial_response() is None
    assert mechanism.respond(b"Username:") == b"alice"
    assert mechanism.respond(b"Password:") == b"secret"
    with pytest.raises(AuthenticationError, match="more than"):
        mechanism.respond(b"Again:")


def test_cram_md5_rfc2195_example() -> None:
    # RFC 2195, section 2.
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert cram_md5_response("tim", "tanstaaftanstaaf", challenge) == b"tim b913a602c7eda7a495b4e6e7334d3890"
    mechanism = CramMD5Mechanism("tim", "tanstaaftanstaaf")
    assert mechanism.initial_response() is None
    assert mechanism.respond(challenge) == b"tim b913a602c7eda7a495b4e6e7334d3890"
    with pytest.raises(AuthenticationError, match="second challenge"):
        mechanism.respond(challenge)


def test_cram_md5_refuses_an_empty_challenge() -> None:
    with pytest.raises(AuthenticationError, match="empty"):
        CramMD5Mechanism("tim", "pw").respond(b"")


# -- XOAUTH2 and OAUTHBEARER ----------------------------------------------------------


def test_xoauth2_initial_response() -> None:
    # The format of Google's XOAUTH2 documentation.
    mechanism = XOAuth2Mechanism("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
    assert mechanism.initial_response() == (
        b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    )


def test_xoauth2_error_challenge_is_acknowledged_with_an_empty_response() -> None:
    mechanism = XOAuth2Mechanism("u@example.com", "token")
    error = b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'
    assert mechanism.respond(error) == b""
    assert mechanism.server_error == "status 401, schemes bearer, scope https://mail.google.com/"
    with pytest.raises(AuthenticationError, match="second challenge"):
        mechanism.respond(error)


def test_oauthbearer_rfc7628_example() -> None:
    # RFC 7628, section 4.1 (the authzid form of section 3.1).
    mechanism = OAuthBearerMechanism(
        "user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", host="server.example.com", port=143
    )
    assert mechanism.initial_response() == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )


def test_oauthbearer_without_user_and_escaped_user() -> None:
    assert OAuthBearerMechanism(None, "t").initial_response() == b"n,,\x01auth=Bearer t\x01\x01"
    escaped = OAuthBearerMechanism("a,b=c", "t").initial_response()
    assert escaped is not None and escaped.startswith(b"n,a=a=2Cb=3Dc,\x01")


def test_oauthbearer_error_challenge_is_acknowledged_with_kvsep() -> None:
    mechanism = OAuthBearerMechanism("u", "t")
    assert mechanism.respond(b'{"status":"invalid_token"}') == b"\x01"
    assert mechanism.server_error == "status invalid_token"


def test_describe_oauth_error_escapes_and_truncates() -> None:
    assert describe_oauth_error(b"not json \x1b[31m") == "not json \\x1b[31m"
    assert len(describe_oauth_error(b"x" * 5000)) == 200


# -- SCRAM -----------------------------------------------------------------------------


def _scram_server(name: str, password: str, channel_binding: Any = None) -> Any:
    base = name.removesuffix("-PLUS")
    info = scramp.ScramMechanism(base).make_auth_info(password)
    mechanism = scramp.ScramMechanism(name)
    return mechanism.make_server(lambda username: info, channel_binding=channel_binding)


def _run_scram(client: ScramMechanism, server: Any) -> None:
    first = client.initial_response()
    assert first is not None
    server.set_client_first(first.decode())
    final = client.respond(server.get_server_first().encode())
    server.set_client_final(final.decode())
    assert client.respond(server.get_server_final().encode()) == b""
    client.finish()


@pytest.mark.parametrize("name", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_against_scramp_server(name: str) -> None:
    client = ScramMechanism(name, "user", "pencil")
    first = client.initial_response()
    assert first is not None and first.startswith(b"n,,n=user,r=")
    _run_scram(client, _scram_server(name, "pencil"))


def test_scram_wrong_password_is_reported_with_the_servers_error() -> None:
    client = ScramMechanism("SCRAM-SHA-256", "user", "wrong")
    server = _scram_server("SCRAM-SHA-256", "pencil")
    first = client.initial_response()
    assert first is not None
    server.set_client_first(first.decode())
    final = client.respond(server.get_server_first().encode())
    with pytest.raises(scramp.ScramException):
        server.set_client_final(final.decode())
    with pytest.raises(AuthenticationError) as caught:
        client.respond(server.get_server_final().encode())
    assert client.server_error == "invalid-proof"
    assert "wrong" not in str(caught.value)


def test_scram_refuses_success_without_the_servers_signature() -> None:
    client = ScramMechanism("SCRAM-SHA-256", "user", "pencil")
    client.initial_response()
    with pytest.raises(AuthenticationError, match="impostor"):
        client.finish()


def test_scram_refuses_a_forged_server_signature() -> None:
    client = ScramMechanism("SCRAM-SHA-256", "user", "pencil")
    server = _scram_server("SCRAM-SHA-256", "pencil")
    first = client.initial_response()
    assert first is not None
    server.set_client_first(first.decode())
    final = client.respond(server.get_server_first().encode())
    server.set_client_final(final.decode())
    forged = "v=" + base64.b64encode(b"\x00" * 32).decode()
    with pytest.raises(AuthenticationError):
        client.respond(forged.encode())
    with pytest.raises(AuthenticationError):
        client.finish()


def test_scram_refuses_a_huge_iteration_count() -> None:
    client = ScramMechanism("SCRAM-SHA-256", "user", "pencil")
    first = client.initial_response()
    assert first is not None
    nonce = first.decode().split("r=", 1)[1]
    salt = base64.b64encode(b"s" * 16).decode()
    challenge = f"r={nonce}server,s={salt},i={MAX_ITERATIONS + 1}"
    with pytest.raises(AuthenticationError, match="iterations"):
        client.respond(challenge.encode())


def test_scram_gs2_flags() -> None:
    binding = hashlib.sha256(b"cert").digest()
    plus = ScramMechanism("SCRAM-SHA-256-PLUS", "u", "p", channel_binding=binding).initial_response()
    assert plus is not None and plus.startswith(b"p=tls-server-end-point,,")
    # On TLS, with a server that offers no -PLUS: "y", so a downgrade is detectable.
    supports = ScramMechanism("SCRAM-SHA-256", "u", "p", channel_binding=binding).initial_response()
    assert supports is not None and supports.startswith(b"y,,")
    # -PLUS offered but plain SCRAM asked for by name: "n", or the server would refuse.
    chosen = ScramMechanism("SCRAM-SHA-256", "u", "p", channel_binding=binding, server_offers_plus=True)
    first = chosen.initial_response()
    assert first is not None and first.startswith(b"n,,")
    with pytest.raises(AuthenticationError, match="channel binding"):
        ScramMechanism("SCRAM-SHA-256-PLUS", "u", "p")


def _certificate(key: Any, algorithm: Any) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )


@pytest.mark.parametrize(
    "algorithm, expected",
    [(hashes.SHA256(), hashlib.sha256), (hashes.SHA384(), hashlib.sha384), (hashes.SHA512(), hashlib.sha512)],
)
def test_tls_server_end_point_uses_the_signature_hash(algorithm: Any, expected: Any) -> None:
    certificate = _certificate(ec.generate_private_key(ec.SECP256R1()), algorithm)
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert tls_server_end_point(der) == expected(der).digest()


def test_tls_server_end_point_has_no_binding_for_ed25519() -> None:
    certificate = _certificate(ed25519.Ed25519PrivateKey.generate(), None)
    assert tls_server_end_point(certificate.public_bytes(serialization.Encoding.DER)) is None


def test_scram_plus_against_scramp_server_with_the_same_certificate() -> None:
    certificate = _certificate(ec.generate_private_key(ec.SECP256R1()), hashes.SHA384())
    der = certificate.public_bytes(serialization.Encoding.DER)
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    binding = tls_server_end_point(der)
    # scramp's server computes the binding from the certificate itself.
    server = _scram_server("SCRAM-SHA-256-PLUS", "pencil", ("tls-server-end-point", pem))
    _run_scram(ScramMechanism("SCRAM-SHA-256-PLUS", "user", "pencil", channel_binding=binding), server)


def test_scram_plus_fails_when_the_certificates_differ() -> None:
    seen = _certificate(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    real = _certificate(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    binding = tls_server_end_point(seen.public_bytes(serialization.Encoding.DER))
    server = _scram_server(
        "SCRAM-SHA-256-PLUS", "pencil", ("tls-server-end-point", real.public_bytes(serialization.Encoding.PEM).decode())
    )
    client = ScramMechanism("SCRAM-SHA-256-PLUS", "user", "pencil", channel_binding=binding)
    first = client.initial_response()
    assert first is not None
    server.set_client_first(first.decode())
    final = client.respond(server.get_server_first().encode())
    with pytest.raises(scramp.ScramException, match="channel bindings"):
        server.set_client_final(final.decode())


def test_peer_certificate_der_reads_pyopenssl_and_cryptography_certificates() -> None:
    from OpenSSL import crypto

    certificate = _certificate(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    der = certificate.public_bytes(serialization.Encoding.DER)

    class Transport:
        def __init__(self, value: Any) -> None:
            self.value = value

        def getPeerCertificate(self) -> Any:
            return self.value

    assert peer_certificate_der(Transport(crypto.X509.from_cryptography(certificate))) == der
    assert peer_certificate_der(Transport(certificate)) == der
    assert peer_certificate_der(Transport(None)) is None
    assert peer_certificate_der(StringTransport()) is None
    assert peer_certificate_der(None) is None


# -- NTLM --------------------------------------------------------------------------------


@pytest.fixture
def ntlm_users(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyspnego's acceptor reads its users from NTLM_USER_FILE."""
    users = tmp_path / "ntlm-users"
    users.write_text("EXAMPLE:alice:Secret01\n:bob:Secret02\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))


def _ntlm_exchange(user: str, password: str, **kwargs: Any) -> tuple[Any, bytes]:
    import spnego

    from twisted_smtpconn._sasl_ntlm import NTLMMechanism

    client = NTLMMechanism(user, password, **kwargs)
    server = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
    negotiate = client.initial_response()
    assert negotiate is not None and negotiate.startswith(b"NTLMSSP\x00\x01")
    challenge = server.step(negotiate)
    authenticate = client.respond(challenge)
    server.step(authenticate)
    return server, authenticate


def test_ntlm_against_pyspnego_acceptor(ntlm_users: None) -> None:
    server, _ = _ntlm_exchange("alice", "Secret01", domain="EXAMPLE")
    assert server.complete
    assert server.client_principal == "EXAMPLE\\alice"


def test_ntlm_sends_the_workstation_and_leaves_the_environment_alone(
    ntlm_users: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spnego._ntlm_raw.messages import Authenticate

    monkeypatch.setenv("NETBIOS_COMPUTER_NAME", "BEFORE")
    _, token = _ntlm_exchange("bob", "Secret02", workstation="DESK-42")
    assert Authenticate.unpack(token).workstation == "DESK-42"
    import os

    assert os.environ["NETBIOS_COMPUTER_NAME"] == "BEFORE"


def test_ntlm_wrong_password_is_refused_by_the_acceptor(ntlm_users: None) -> None:
    import spnego

    with pytest.raises(spnego.exceptions.SpnegoError):
        _ntlm_exchange("alice", "wrong", domain="EXAMPLE")


def test_ntlm_without_pyspnego_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted_smtpconn._sasl_ntlm import NTLMMechanism

    monkeypatch.setitem(sys.modules, "spnego", None)  # what an uninstalled package looks like to import
    with pytest.raises(AuthenticationError, match=r"twisted_smtpconn\[ntlm\]") as caught:
        NTLMMechanism("alice", "Secret01")
    assert caught.value.code == "EAUTH"


# -- base64 and credentials ----------------------------------------------------------------


def test_decode_challenge_is_strict() -> None:
    assert decode_challenge("") == b""
    assert decode_challenge(" PDE+ ") == b"<1>"
    for bad in ("PDE", "P DE+", "PD!+", "é"):
        with pytest.raises(ValueError):
            decode_challenge(bad)


@pytest.mark.parametrize("bad", ["a\x00b", "a\rb", "a\nb", "a\x01b"])
def test_check_credential_refuses_separators_without_showing_them(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_credential("password", bad)
    assert bad not in str(caught.value)


def test_auth_validation_and_repr() -> None:
    auth = Auth(user="alice", password="hunter2", xoauth2="tok-secret", method="cram-md5")
    assert auth.method == "CRAM-MD5"
    assert "hunter2" not in repr(auth) and "tok-secret" not in repr(auth)
    with pytest.raises(ValueError) as caught:
        Auth(user="alice", password="hun\x00ter2")
    assert "hun" not in str(caught.value)
    with pytest.raises(TypeError):
        Auth(user="alice", xoauth2=42)
    with pytest.raises(ValueError):
        Auth(user="alice", xoauth2="")


def test_coerce_auth_accepts_the_seed_mapping() -> None:
    assert coerce_auth({"user": "a", "pass": "b"}) == Auth(user="a", password="b")
    assert coerce_auth({"user": "a", "xoauth2": "t", "domain": "D", "workstation": "W"}) == Auth(
        user="a", xoauth2="t", domain="D", workstation="W"
    )
    with pytest.raises(TypeError, match="unknown"):
        coerce_auth({"user": "a", "passwd": "b"})
    with pytest.raises(TypeError):
        coerce_auth({"user": "a", "pass": "b", "password": "c"})
    with pytest.raises(TypeError):
        coerce_auth(("a", "b"))  # type: ignore[arg-type]


# -- choosing --------------------------------------------------------------------------------

PASSWORD = Auth(user="alice", password="pw")
TOKEN = Auth(user="alice", xoauth2="tok")


@pytest.mark.parametrize(
    "offered, expected",
    [
        (["LOGIN", "PLAIN"], "PLAIN"),
        (["LOGIN", "PLAIN", "CRAM-MD5"], "CRAM-MD5"),
        (["CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"], "SCRAM-SHA-256"),
        (["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"], "SCRAM-SHA-256"),  # no channel binding
        (["LOGIN"], "LOGIN"),
        (["XOAUTH2", "PLAIN"], "PLAIN"),  # no token
        (["NTLM", "PLAIN"], "PLAIN"),  # NTLM only when asked or domain given
    ],
)
def test_choice_for_a_password(offered: list[str], expected: str) -> None:
    assert choose_mechanism(PASSWORD, offered) == expected


def test_choice_prefers_plus_with_channel_binding() -> None:
    offered = ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "PLAIN"]
    assert choose_mechanism(PASSWORD, offered, channel_binding=True) == "SCRAM-SHA-256-PLUS"


def test_choice_prefers_a_token_over_a_password() -> None:
    both = Auth(user="alice", password="pw", xoauth2="tok")
    assert choose_mechanism(both, ["PLAIN", "XOAUTH2", "OAUTHBEARER"]) == "XOAUTH2"
    assert choose_mechanism(both, ["PLAIN", "OAUTHBEARER"]) == "OAUTHBEARER"
    assert choose_mechanism(both, ["PLAIN", "LOGIN"]) == "PLAIN"
    with pytest.raises(AuthenticationError, match="PLAIN LOGIN"):
        choose_mechanism(TOKEN, ["PLAIN", "LOGIN"])


def test_choice_of_ntlm_when_a_domain_is_given() -> None:
    auth = Auth(user="alice", password="pw", domain="EXAMPLE")
    assert choose_mechanism(auth, ["PLAIN", "NTLM"]) == "NTLM"
    assert choose_mechanism(auth, ["PLAIN"]) == "PLAIN"


def test_requested_mechanism_must_be_offered_supported_and_usable() -> None:
    assert choose_mechanism(PASSWORD, ["LOGIN", "PLAIN", "CRAM-MD5"], requested="login") == "LOGIN"
    with pytest.raises(AuthenticationError, match="does not offer the requested mechanism CRAM-MD5; it offers LOGIN PLAIN"):
        choose_mechanism(PASSWORD, ["LOGIN", "PLAIN"], requested="CRAM-MD5")
    with pytest.raises(AuthenticationError, match="unsupported authentication mechanism GSSAPI"):
        choose_mechanism(PASSWORD, ["GSSAPI"], requested="GSSAPI")
    with pytest.raises(AuthenticationError, match="access token"):
        choose_mechanism(PASSWORD, ["XOAUTH2"], requested="XOAUTH2")
    with pytest.raises(AuthenticationError, match="channel binding"):
        choose_mechanism(PASSWORD, ["SCRAM-SHA-256-PLUS"], requested="SCRAM-SHA-256-PLUS")


def test_no_auth_offered_hints_at_starttls() -> None:
    with pytest.raises(AuthenticationError, match="no AUTH mechanism at all.*STARTTLS"):
        choose_mechanism(PASSWORD, [])
    with pytest.raises(AuthenticationError) as caught:
        choose_mechanism(PASSWORD, [], secure=True)
    assert "STARTTLS" not in str(caught.value)


def test_password_without_user() -> None:
    with pytest.raises(AuthenticationError, match="without a user name"):
        choose_mechanism(Auth(password="pw"), ["PLAIN"])


_RANK = {name: index for index, name in enumerate(PASSWORD_PREFERENCE)}


@given(
    offered=st.lists(st.sampled_from(sorted(SUPPORTED_MECHANISMS | {"GSSAPI", "ANONYMOUS"})), unique=True),
    binding=st.booleans(),
    has_token=st.booleans(),
    has_password=st.booleans(),
)
def test_choice_is_the_best_usable_offered_mechanism(
    offered: list[str], binding: bool, has_token: bool, has_password: bool
) -> None:
    auth = Auth(user="u", password="p" if has_password else None, xoauth2="t" if has_token else None)
    usable_tokens = [m for m in TOKEN_PREFERENCE if has_token and m in offered]
    usable_passwords = [
        m for m in PASSWORD_PREFERENCE
        if has_password and m in offered and (binding or not m.endswith("-PLUS"))
    ]
    try:
        chosen = choose_mechanism(auth, offered, channel_binding=binding)
    except AuthenticationError as error:
        assert not usable_tokens and not usable_passwords
        assert error.code == "EAUTH"
        return
    assert chosen in offered
    if usable_tokens:
        assert chosen == usable_tokens[0]
    else:
        assert chosen == min(usable_passwords, key=_RANK.__getitem__)


# -- where the credentials go -----------------------------------------------------------------


def _options(host: str = "localhost", endpoint: Any = None) -> Any:
    return validate_options(
        host=host, port=25, secure=False, ignore_tls=False, require_tls=False, opportunistic_tls=False,
        name=None, local_address=None, connection_timeout=1.0, greeting_timeout=1.0, socket_timeout=1.0,
        debug=False, auth_method=None, allow_insecure_auth=False, tls=None, endpoint=endpoint,
        connection=None, lmtp=False,
    )


class _Endpoint:
    def connect(self, factory: Any) -> Any:
        raise NotImplementedError


@pytest.mark.parametrize(
    "peer, host, endpoint, local",
    [
        (IPv4Address("TCP", "127.0.0.1", 25), "mail.example.com", False, True),  # resolved to loopback
        (IPv4Address("TCP", "127.3.4.5", 25), "localhost", False, True),
        (IPv6Address("TCP", "::1", 25), "::1", False, True),
        (IPv6Address("TCP", "::ffff:127.0.0.1", 25), "localhost", False, True),
        (IPv4Address("TCP", "192.0.2.7", 25), "localhost", False, False),
        (IPv4Address("TCP", "192.0.2.7", 25), "192.0.2.7", False, False),
        # Through an endpoint the peer may be a local proxy: host must be local too.
        (IPv4Address("TCP", "127.0.0.1", 1080), "mail.example.com", True, False),
        (IPv4Address("TCP", "127.0.0.1", 25), "localhost", True, True),
        (UNIXAddress("/run/smtp.sock"), "localhost", True, True),
        (None, "localhost", False, False),
    ],
)
def test_connection_is_local(peer: Any, host: str, endpoint: bool, local: bool) -> None:
    transport = StringTransport(peerAddress=peer)
    options = _options(host, _Endpoint() if endpoint else None)
    assert connection_is_local(options, transport) is local
