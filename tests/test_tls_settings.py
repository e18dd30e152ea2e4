"""
The ``tls`` dict: its values are checked when the connection is built, and
the failures of TLS are described with their reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from twisted_smtpconn import SMTPConnection
from twisted_smtpconn._errors import TLSError
from twisted_smtpconn._protocol import _describe_loss
from twisted_smtpconn._tls_errors import certificate_error, describe_tls_failure, x509_reason
from twisted_smtpconn._tls_settings import MIN_VERSIONS, TLSSettings, check_tls_settings


@pytest.fixture
def pem(tmp_path: Path) -> str:
    path = tmp_path / "bundle.pem"
    path.write_text("not really a certificate\n")
    return str(path)


# -- min_version ---------------------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_min_version_accepted(version: str) -> None:
    conn = SMTPConnection("mx.example.test", tls={"min_version": version})
    assert conn.secure is False


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1.1", "tlsv1.2", "1.2", "TLSv1.4", "", 1.2, True])
def test_min_version_refused_at_construction(version: object) -> None:
    with pytest.raises(ValueError, match="min_version"):
        SMTPConnection("mx.example.test", tls={"min_version": version})


@given(st.text(max_size=12).filter(lambda text: text not in MIN_VERSIONS))
def test_any_other_min_version_is_a_value_error(version: str) -> None:
    with pytest.raises(ValueError, match="min_version"):
        check_tls_settings({"min_version": version})


# -- the other keys ---------------------------------------------------------------


def test_reject_unauthorized_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="reject_unauthorized"):
        SMTPConnection("mx.example.test", tls={"reject_unauthorized": "no"})


def test_unknown_key_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown tls setting"):
        SMTPConnection("mx.example.test", tls={"rejectUnauthorized": False})


@pytest.mark.parametrize("key", ["ca_certs", "client_cert"])
def test_missing_file_is_refused_at_construction(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match=f"{key}.*no such file"):
        SMTPConnection("mx.example.test", tls={key: str(tmp_path / "absent.pem")})


def test_paths_may_be_pathlike(pem: str) -> None:
    checked = check_tls_settings({"ca_certs": Path(pem), "client_cert": Path(pem)})
    assert checked == {"ca_certs": pem, "client_cert": pem}


def test_path_of_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="ca_certs"):
        check_tls_settings({"ca_certs": 42})


def test_client_key_needs_client_cert(pem: str) -> None:
    with pytest.raises(ValueError, match="client_key.*client_cert"):
        SMTPConnection("mx.example.test", tls={"client_key": pem})


@pytest.mark.parametrize("name", ["", "two words", "bad\nname", "\x00"])
def test_bad_servername_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="servername"):
        SMTPConnection("mx.example.test", tls={"servername": name})


def test_servername_ipv6_brackets_are_dropped() -> None:
    assert check_tls_settings({"servername": "[::1]"}) == {"servername": "::1"}


def test_settings_default_to_verified_and_host_name() -> None:
    settings = TLSSettings.from_mapping(None)
    assert settings.reject_unauthorized is True
    assert settings.server_name("mx.example.test") == "mx.example.test"
    assert TLSSettings.from_mapping({"servername": "smtp.example.test"}).server_name("10.0.0.1") == "smtp.example.test"


def test_a_connection_creator_is_accepted_as_is() -> None:
    from twisted.internet.ssl import optionsForClientTLS

    creator = optionsForClientTLS("mx.example.test")
    conn = SMTPConnection("mx.example.test", tls=creator)
    assert conn._options.tls is creator


def test_anything_else_is_refused() -> None:
    with pytest.raises(TypeError, match="tls must be"):
        SMTPConnection("mx.example.test", tls="yes please")


# -- describing failures ----------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "words"),
    [(20, "unknown CA"), (21, "unknown CA"), (19, "unknown CA"), (18, "unknown CA"),
     (10, "expired"), (9, "not yet valid"), (62, "name mismatch"), (12345, "error 12345")],
)
def test_x509_reasons(number: int, words: str) -> None:
    assert words in x509_reason(number)


def test_certificate_error_names_the_certificate() -> None:
    error = certificate_error("mx.example.test", 10, 0, "CN=mx", "CN=Some CA", "valid from a to b")
    assert error.code == "ETLS"
    assert "expired" in str(error) and "valid from a to b" in str(error)
    assert "CN=mx" in str(error) and "CN=Some CA" in str(error)


def _openssl_error(reason: str) -> Failure:
    try:
        raise SSL.Error([("SSL routines", "", reason)])
    except SSL.Error:
        return Failure()


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("wrong version number", "did not answer with TLS"),
        ("unsupported protocol", "no TLS version in common"),
        ("tlsv1 alert protocol version", "no TLS version in common"),
        ("tlsv1 alert unknown ca", "does not trust our client certificate"),
        ("tlsv13 alert certificate required", "requires a client certificate"),
        ("certificate verify failed", "could not be verified"),
        ("something new", "something new"),
    ],
)
def test_openssl_errors_become_etls(reason: str, words: str) -> None:
    error = describe_tls_failure(_openssl_error(reason))
    assert isinstance(error, TLSError)
    assert error.code == "ETLS"
    assert words in str(error)
    # The protocol's own mapping of a lost connection agrees.
    assert _describe_loss(_openssl_error(reason)).code == "ETLS"


def test_service_identity_mismatch_is_a_name_mismatch() -> None:
    error = describe_tls_failure(Failure(VerificationError(errors=[])))
    assert error is not None and "name mismatch" in str(error)


def test_our_own_tls_error_is_kept() -> None:
    original = TLSError("TLS certificate of x not trusted: unknown CA")
    assert describe_tls_failure(Failure(original)) is original
    assert _describe_loss(Failure(original)) is original


@pytest.mark.parametrize(
    ("reason", "code"),
    [(ConnectionDone(), "ECONNECTION"), (ConnectionLost(), "ECONNECTION"), (OSError("boom"), "ESOCKET")],
)
def test_other_losses_are_not_tls(reason: Any, code: str) -> None:
    assert describe_tls_failure(Failure(reason)) is None
    assert _describe_loss(Failure(reason)).code == code
