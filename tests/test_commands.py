"""Tests for twisted_smtpconn._commands: rendering hello, MAIL and RCPT lines."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from twisted_smtpconn._commands import (
    ehlo_command,
    mail_from_command,
    rcpt_to_command,
    redact_auth_command,
    use_smtputf8,
    validate_client_name,
)
from twisted_smtpconn._envelope import DSN, Envelope
from twisted_smtpconn._errors import EnvelopeError

ALL = {"SIZE": "1000", "8BITMIME": "", "DSN": "", "SMTPUTF8": "", "PIPELINING": ""}
NONE: dict[str, str] = {}

# -- hello ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "client.example",
        "localhost",
        "mx-1.Example.COM",
        "a" * 63 + ".example",
        "x.example.",
        "123.example",
        ".".join(["a" * 63] * 4),
        "[127.0.0.1]",
        "[IPv6:::1]",
        "[ipv6:2001:db8::1]",
        "[IPv6:::ffff:192.0.2.1]",
    ],
)
def test_valid_client_names(name: str) -> None:
    assert validate_client_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "bad name",
        "evil\r\nMAIL FROM:<x>",
        "host\x00",
        "tab\there",
        "-leading.example",
        "trailing-.example",
        "double..dot",
        ".leading.dot",
        "under_score.example",
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 4) + ".a",
        "bücher.example",
        "[127.0.0.1",
        "[256.0.0.1]",
        "[::1]",
        "[IPv6:nonsense]",
        "[IPv6:127.0.0.1]",
        "[]",
        "[127.0.0.1]x",
    ],
)
def test_invalid_client_names(name: str) -> None:
    with pytest.raises(ValueError):
        validate_client_name(name)


def test_client_name_type() -> None:
    with pytest.raises(TypeError):
        validate_client_name(b"client.example")  # type: ignore[arg-type]


@pytest.mark.parametrize(("verb", "expected"), [("EHLO", b"EHLO"), ("helo", b"HELO"), ("LHLO", b"LHLO")])
def test_ehlo_command(verb: str, expected: bytes) -> None:
    assert ehlo_command(verb, "client.example") == expected + b" client.example"


def test_ehlo_command_rejects_bad_verbs_and_names() -> None:
    with pytest.raises(ValueError):
        ehlo_command("HELLO", "client.example")
    with pytest.raises(ValueError):
        ehlo_command("EHLO", "client.example\r\nQUIT")


# -- SMTPUTF8 -----------------------------------------------------------------------------

ASCII = Envelope("a@x.org", "b@x.org")
UTF8 = Envelope("jörg@bücher.example", "b@x.org")


@pytest.mark.parametrize(
    ("envelope", "extensions", "expected"),
    [
        (ASCII, NONE, False),
        (ASCII, ALL, False),
        (UTF8, ALL, True),
        (Envelope("a@x.org", ["b@x.org", "ü@x.org"]), ALL, True),
        (Envelope("a@x.org", "b@x.org", smtputf8=True), ALL, True),
        (Envelope("a@x.org", "b@x.org", smtputf8=False), ALL, False),
        (Envelope("jörg@x.org", "b@x.org", smtputf8=True), ALL, True),
        (Envelope("a@x.org", "b@x.org", smtputf8=False), NONE, False),
        (UTF8, {"smtputf8": ""}, True),
    ],
)
def test_use_smtputf8(envelope: Envelope, extensions: dict[str, str], expected: bool) -> None:
    assert use_smtputf8(envelope, extensions) is expected


@pytest.mark.parametrize(
    ("envelope", "extensions", "message"),
    [
        (UTF8, NONE, "does not offer SMTPUTF8"),
        (Envelope("a@x.org", "b@x.org", smtputf8=True), NONE, "smtputf8 is True"),
        (Envelope("jörg@x.org", "b@x.org", smtputf8=False), ALL, "smtputf8 is False"),
    ],
)
def test_use_smtputf8_errors(envelope: Envelope, extensions: dict[str, str], message: str) -> None:
    with pytest.raises(EnvelopeError, match=message) as info:
        use_smtputf8(envelope, extensions)
    assert info.value.code == "EENVELOPE"


def test_use_smtputf8_error_names_the_addresses() -> None:
    with pytest.raises(EnvelopeError) as info:
        use_smtputf8(Envelope("a@x.org", ["b@x.org", "ü@x.org"]), NONE)
    assert repr("ü@x.org") in str(info.value)
    assert "b@x.org" not in str(info.value)


# -- MAIL FROM ---------------------------------------------------------------------------


def test_plain_mail_from() -> None:
    assert mail_from_command(ASCII, NONE) == b"MAIL FROM:<a@x.org>"
    assert mail_from_command(ASCII, ALL) == b"MAIL FROM:<a@x.org>"


def test_null_sender() -> None:
    assert mail_from_command(Envelope("", "b@x.org"), ALL) == b"MAIL FROM:<>"


def test_all_mail_parameters_in_order() -> None:
    envelope = Envelope(
        "jörg@x.org",
        "b@x.org",
        size=900,
        use_8bit_mime=True,
        dsn=DSN(ret="hdrs", envid="id+1=2", notify="SUCCESS", orcpt="b@x.org"),
    )
    assert mail_from_command(envelope, ALL) == (
        "MAIL FROM:<jörg@x.org> SIZE=900 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3D2".encode()
    )


def test_mail_parameters_only_when_offered() -> None:
    envelope = Envelope(
        "a@x.org", "b@x.org", size=900, use_8bit_mime=True, dsn=DSN(ret="FULL", envid="e")
    )
    assert mail_from_command(envelope, NONE) == b"MAIL FROM:<a@x.org>"
    assert mail_from_command(envelope, {"SIZE": ""}) == b"MAIL FROM:<a@x.org> SIZE=900"
    assert mail_from_command(envelope, {"8BITMIME": ""}) == b"MAIL FROM:<a@x.org> BODY=8BITMIME"
    assert mail_from_command(envelope, {"DSN": ""}) == b"MAIL FROM:<a@x.org> RET=FULL ENVID=e"


def test_size_zero_is_sent_and_unknown_size_is_not() -> None:
    assert mail_from_command(Envelope("a@x.org", "b@x.org", size=0), ALL) == b"MAIL FROM:<a@x.org> SIZE=0"
    assert mail_from_command(ASCII, ALL) == b"MAIL FROM:<a@x.org>"


def test_partial_dsn() -> None:
    envelope = Envelope("a@x.org", "b@x.org", dsn=DSN(envid="only id"))
    assert mail_from_command(envelope, ALL) == b"MAIL FROM:<a@x.org> ENVID=only+20id"


def test_body_override() -> None:
    envelope = Envelope("a@x.org", "b@x.org", use_8bit_mime=True)
    assert mail_from_command(envelope, ALL, body="BINARYMIME") == b"MAIL FROM:<a@x.org> BODY=BINARYMIME"
    assert mail_from_command(ASCII, NONE, body="binarymime") == b"MAIL FROM:<a@x.org> BODY=BINARYMIME"


@pytest.mark.parametrize("body", ["", "8BIT MIME", "X\r\nQUIT", "é"])
def test_bad_body_override(body: str) -> None:
    with pytest.raises(ValueError):
        mail_from_command(ASCII, ALL, body=body)


def test_smtputf8_mail_from_is_utf8() -> None:
    assert mail_from_command(UTF8, ALL) == "MAIL FROM:<jörg@bücher.example> SMTPUTF8".encode()


def test_non_ascii_without_smtputf8_fails() -> None:
    with pytest.raises(EnvelopeError):
        mail_from_command(UTF8, NONE)


def test_extension_keys_not_upper_cased_are_tolerated() -> None:
    envelope = Envelope("a@x.org", "b@x.org", size=5)
    assert mail_from_command(envelope, {"size": "10"}) == b"MAIL FROM:<a@x.org> SIZE=5"


# -- RCPT TO -----------------------------------------------------------------------------


def test_plain_rcpt_to() -> None:
    assert rcpt_to_command("b@x.org", None, ALL, smtputf8=False) == b"RCPT TO:<b@x.org>"


def test_rcpt_to_with_dsn() -> None:
    dsn = DSN(notify="success,failure", orcpt="b@x.org")
    assert (
        rcpt_to_command("b@x.org", dsn, ALL, smtputf8=False)
        == b"RCPT TO:<b@x.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@x.org"
    )
    assert rcpt_to_command("b@x.org", dsn, NONE, smtputf8=False) == b"RCPT TO:<b@x.org>"
    assert rcpt_to_command("b@x.org", DSN(notify="NEVER"), ALL, smtputf8=False) == b"RCPT TO:<b@x.org> NOTIFY=NEVER"
    assert rcpt_to_command("b@x.org", DSN(ret="FULL"), ALL, smtputf8=False) == b"RCPT TO:<b@x.org>"


def test_rcpt_to_with_non_ascii_orcpt_stays_ascii() -> None:
    line = rcpt_to_command("b@x.org", DSN(orcpt="jörg@x.org"), ALL, smtputf8=False)
    assert line == b"RCPT TO:<b@x.org> ORCPT=utf-8;j\\x{F6}rg@x.org"


def test_rcpt_to_non_ascii() -> None:
    assert rcpt_to_command("ü@x.org", None, ALL, smtputf8=True) == "RCPT TO:<ü@x.org>".encode()
    with pytest.raises(EnvelopeError, match="rcpt_to"):
        rcpt_to_command("ü@x.org", None, ALL, smtputf8=False)


def test_rcpt_to_strips_angle_brackets_and_checks_the_address() -> None:
    assert rcpt_to_command("<b@x.org>", None, NONE, smtputf8=False) == b"RCPT TO:<b@x.org>"
    for bad in ["b@x.org\r\nDATA", "", "b@x.org> NOTIFY=NEVER", "b @x.org"]:
        with pytest.raises(EnvelopeError):
            rcpt_to_command(bad, None, NONE, smtputf8=False)


# -- the final guard ------------------------------------------------------------------------


def test_guard_catches_a_tampered_dsn() -> None:
    """Even values smuggled past DSN's checks never make a multi-line command."""
    dsn = DSN(notify="SUCCESS")
    object.__setattr__(dsn, "notify", ("SUCCESS\r\nRCPT TO:<evil@x.org>",))
    with pytest.raises(EnvelopeError, match="refusing"):
        rcpt_to_command("b@x.org", dsn, ALL, smtputf8=False)
    dsn = DSN(ret="FULL")
    object.__setattr__(dsn, "ret", "FULL\x00")
    with pytest.raises(EnvelopeError, match="refusing"):
        mail_from_command(Envelope("a@x.org", "b@x.org", dsn=dsn), ALL)


def test_tampered_envelope_address_is_checked_again() -> None:
    envelope = Envelope("a@x.org", "b@x.org")
    object.__setattr__(envelope, "mail_from", "a@x.org>\r\nQUIT")
    with pytest.raises(EnvelopeError):
        mail_from_command(envelope, ALL)


# -- redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"AUTH PLAIN AGJvYgBzZWNyZXQ=", "AUTH PLAIN ****"),
        (b"auth plain AGJvYgBzZWNyZXQ=", "auth plain ****"),
        (b"AUTH XOAUTH2 dXNlcj1ib2IBYXV0aD1CZWFyZXIgdG9rZW4BAQ==", "AUTH XOAUTH2 ****"),
        (b"AUTH LOGIN Ym9i", "AUTH LOGIN ****"),
        (b"AUTH PLAIN\tsecret", "AUTH PLAIN ****"),
        (b"AUTH PLAIN secret with spaces", "AUTH PLAIN ****"),
        (b"AUTH LOGIN", "AUTH LOGIN"),
        (b"AUTH CRAM-MD5", "AUTH CRAM-MD5"),
        (b"MAIL FROM:<a@x.org> SIZE=10", "MAIL FROM:<a@x.org> SIZE=10"),
        ("RCPT TO:<ü@x.org>".encode(), "RCPT TO:<ü@x.org>"),
        (b"RCPT TO:<\xff@x.org>", "RCPT TO:<\ufffd@x.org>"),
        (b"AUTHOR something", "AUTHOR something"),
        (b"", ""),
    ],
)
def test_redact_auth_command(line: bytes, text: str) -> None:
    assert redact_auth_command(line) == text


def test_redacted_secret_never_appears() -> None:
    secret = "c2VjcmV0LXBhc3N3b3Jk"
    assert secret not in redact_auth_command(f"AUTH PLAIN {secret}".encode())


# -- properties ------------------------------------------------------------------------------

DANGEROUS_CHARS = list("<>\"\\ \t\r\n\x00\x7f\x85;+=,:\u2028\ud800")
DANGEROUS = DANGEROUS_CHARS + ["\r\n", "\r\nQUIT\r\n"]

# Text that is likely to hit every check: specials, controls, non-ASCII.
risky = st.text(
    st.one_of(st.sampled_from(DANGEROUS_CHARS + list("ab@.é€")), st.characters()),
    max_size=25,
)
safe_address = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(st.sampled_from(list("abcXYZ019.+-_'é")), min_size=1, max_size=12),
    st.sampled_from(["x.org", "bücher.example", "[192.0.2.1]", "mx-1.example.com"]),
)


def injected(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``base`` with one dangerous piece inserted somewhere."""
    return st.builds(
        lambda text, at, piece: text[:at] + piece + text[at:],
        base,
        st.integers(0, 40),
        st.sampled_from(DANGEROUS),
    )


def mostly_valid(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Usually ``base``: a test where every field is risky would almost never render."""
    return st.integers(0, 9).flatmap(lambda n: base if n < 8 else injected(base) if n == 8 else risky)


addresses = mostly_valid(safe_address)
rets = st.one_of(st.none(), mostly_valid(st.sampled_from(["FULL", "hdrs", ""])))
envids = st.one_of(st.none(), mostly_valid(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)))
notifies = st.one_of(
    st.none(),
    mostly_valid(st.sampled_from(["NEVER", "success", "SUCCESS,FAILURE", "delay, failure", ""])),
    st.lists(mostly_valid(st.sampled_from(["SUCCESS", "failure", "DELAY", "NEVER"])), max_size=3),
)
orcpts = st.one_of(st.none(), addresses, addresses.map(lambda a: "rfc822;" + a), addresses.map(lambda a: "utf-8;" + a))
extension_sets = st.sampled_from([NONE, ALL, {"DSN": ""}, {"SMTPUTF8": "", "DSN": ""}])


@settings(deadline=None, max_examples=1000)
@given(
    sender=st.one_of(st.just(""), addresses),
    recipients=st.lists(addresses, max_size=3),
    size=st.one_of(st.none(), st.integers(0, 10**12), st.integers(-5, -1)),
    use_8bit_mime=st.booleans(),
    smtputf8=st.sampled_from([None, True, False]),
    ret=rets,
    envid=envids,
    notify=notifies,
    orcpt=orcpts,
    extensions=extension_sets,
)
def test_no_input_makes_a_line_with_cr_lf_or_nul(
    sender: str,
    recipients: list[str],
    size: int | None,
    use_8bit_mime: bool,
    smtputf8: bool | None,
    ret: str | None,
    envid: str | None,
    notify: str | list[str] | None,
    orcpt: str | None,
    extensions: dict[str, str],
) -> None:
    """Every input either fails with EnvelopeError/TypeError or gives clean single lines."""
    try:
        envelope = Envelope(
            sender,
            recipients,
            size=size,
            use_8bit_mime=use_8bit_mime,
            smtputf8=smtputf8,
            dsn={"ret": ret, "envid": envid, "notify": notify, "orcpt": orcpt},
        )
        utf8 = use_smtputf8(envelope, extensions)
        lines = [mail_from_command(envelope, extensions)]
        lines += [rcpt_to_command(a, envelope.dsn, extensions, smtputf8=utf8) for a in envelope.rcpt_to]
    except (EnvelopeError, TypeError):
        event("refused")
        return
    event("rendered")
    assert lines[0].startswith(b"MAIL FROM:<")
    for line in lines:
        assert b"\r" not in line and b"\n" not in line and b"\x00" not in line
        assert not any(unicodedata.category(char) == "Cc" for char in line.decode("utf-8"))
        if not utf8:
            assert line.isascii()
    for line in lines[1:]:
        assert line.startswith(b"RCPT TO:<")


@settings(deadline=None, max_examples=500)
@given(name=risky, verb=st.sampled_from(["EHLO", "HELO", "LHLO"]))
def test_no_client_name_makes_a_bad_hello(name: str, verb: str) -> None:
    try:
        line = ehlo_command(verb, name)
    except ValueError:
        return
    assert line.isascii()
    assert line.decode().isprintable()
    assert line.count(b" ") == 1
