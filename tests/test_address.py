"""
Envelope addresses: RFC 5321 Mailbox syntax with errors that say how to fix
the address, internationalised domains sent as A-labels without SMTPUTF8
(byte-exact command lines), and the value side of REQUIRETLS (RFC 8689).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_smtpconn import DSN, Envelope, EnvelopeError, TLSError
from twisted_smtpconn._address import ascii_domain_address, mailbox_problem, split_mailbox
from twisted_smtpconn._commands import check_require_tls, mail_from_command, rcpt_to_command, use_smtputf8
from twisted_smtpconn._envelope import coerce_envelope

PLAIN = {"PIPELINING": "", "8BITMIME": ""}
UTF8 = {"PIPELINING": "", "8BITMIME": "", "SMTPUTF8": ""}
REQUIRETLS = {"PIPELINING": "", "REQUIRETLS": ""}

VALID = [
    # RFC 5321 4.1.2 / RFC 5322 3.4.1 forms.
    "simple@example.com",
    "very.common@example.com",
    "x@example.com",
    "long.email-address-with-hyphens@and.subdomains.example.com",
    "user.name+tag+sorting@example.com",
    "name/surname@example.com",
    "admin@mailserver1",
    "example@s.example",
    "mailhost!username@example.org",
    "user%example.com@example.org",
    "user-@example.org",
    "!#$%&'*+-/=?^_`{|}~@example.org",
    '" "@example.org',
    '"john..doe"@example.org',
    '"very.(),:;<>[]\\".VERY.\\"very@\\\\ \\"very\\".unusual"@strange.example.com',
    '"a@b"@example.com',
    "user@[192.0.2.1]",
    "user@[IPv6:2001:db8::1]",
    "user@[ipv6:::1]",
    "user@xn--bcher-kva.example",
    "1@2.3",
    # RFC 6531: UTF-8 in both parts.
    "jörg@bücher.example",
    "用户@例子.广告",
    "квіточка@пошта.укр",
    '"ü ü"@example.org',
]

INVALID = [
    ("no-at-sign", "has no '@': give a full address"),
    ("a@@b", "has more than one '@'"),
    ("a@b@c.example", "has more than one '@'"),
    ("a@x,b@x", "one address per recipient: split it into ['a@x', 'b@x']"),
    ("a@x.org, b@x.org", "one address per recipient: split it into ['a@x.org', 'b@x.org']"),
    ("a@x.org;b@x.org", "one address per recipient"),
    ("Name <a@b.example>", "give the bare address 'a@b.example', not 'Name <a@b>'"),
    ('"Jörg Müller" <joerg@example.com>', "give the bare address 'joerg@example.com'"),
    ("<a@x.org", "is not a bare address"),
    ("a b@x.org", "contains white space"),
    ("@x.org", "has an empty local part"),
    ("a@", "has no domain after '@'"),
    (".a@x.org", "neither a dot-atom nor a quoted string"),
    ("a.@x.org", "neither a dot-atom nor a quoted string"),
    ("a..b@x.org", "quote it, e.g. '\"john..smith\"@example.com'"),
    ("a(comment)@x.org", "neither a dot-atom nor a quoted string"),
    ("a[b]@x.org", "neither a dot-atom nor a quoted string"),
    ('"unterminated@x.org', "unterminated quoted local part"),
    ('"a"b@x.org', "text between the quoted local part and '@'"),
    ("a@x..org", "has an invalid domain"),
    ("a@.x.org", "has an invalid domain"),
    ("a@x.org.", "without a final dot"),
    ("a@-x.org", "has an invalid domain"),
    ("a@x-.org", "has an invalid domain"),
    ("a@under_score.org", "has an invalid domain"),
    ("a@" + "b" * 64 + ".org", "has an invalid domain"),
    ("a@[300.1.1.1]", "invalid address literal"),
    ("a@[1.2.3]", "invalid address literal"),
    ("a@[IPv6:zz::1]", "an IPv6 address as '[IPv6:2001:db8::1]'"),
    ("a@[2001:db8::1]", "invalid address literal"),
    ("a@[1.2.3.4", "invalid address literal"),
    ("a@bü..example", "an empty label"),
    ("a@xn--ü.example", "invalid internationalised domain"),
    ("a@☃-⌘.com", "invalid internationalised domain"),
    ("postmaster", "has no '@'"),  # as a sender; see test_postmaster
]


@pytest.mark.parametrize("address", VALID)
def test_valid_addresses(address: str) -> None:
    assert mailbox_problem(address) is None
    envelope = Envelope(address, [address, f"<{address}>"])
    assert envelope.mail_from == address
    assert envelope.rcpt_to == (address, address)


@pytest.mark.parametrize(("address", "hint"), INVALID)
def test_invalid_addresses_say_how_to_fix_them(address: str, hint: str) -> None:
    with pytest.raises(EnvelopeError, match="^mail_from ") as sender:
        Envelope(address, "b@x.org")
    assert hint in str(sender.value)
    assert sender.value.code == "EENVELOPE"
    with pytest.raises(EnvelopeError, match=r"^rcpt_to\[1\] ") as recipient:
        Envelope("a@x.org", ["b@x.org", address]) if address != "postmaster" else Envelope(
            "a@x.org", ["b@x.org", "postmaster@"]
        )
    assert recipient.value.code == "EENVELOPE"


def test_the_mapping_form_is_checked_too() -> None:
    with pytest.raises(EnvelopeError, match="one address per recipient"):
        coerce_envelope({"from": "a@x.org", "to": "b@x.org,c@x.org"})


def test_postmaster() -> None:
    """RFC 5321 4.1.1.3: ``RCPT TO:<Postmaster>`` needs no domain; only as a recipient."""
    envelope = Envelope("a@x.org", ["Postmaster", "postmaster"])
    assert envelope.rcpt_to == ("Postmaster", "postmaster")
    assert rcpt_to_command("Postmaster", None, PLAIN, smtputf8=False) == b"RCPT TO:<Postmaster>"
    with pytest.raises(EnvelopeError, match="has no '@'"):
        Envelope("postmaster", "a@x.org")
    with pytest.raises(EnvelopeError, match="has no '@'"):
        Envelope("a@x.org", "postmistress")


def test_kept_behaviours() -> None:
    assert Envelope("<a@x.org>", "<b@x.org>").rcpt_to == ("b@x.org",)
    assert Envelope("", "b@x.org").mail_from == ""
    assert Envelope("<>", "b@x.org").mail_from == ""
    with pytest.raises(EnvelopeError, match="control character"):
        Envelope("a@x.org\r\nRSET", "b@x.org")
    with pytest.raises(EnvelopeError, match="local part longer than 64"):
        Envelope("a" * 65 + "@x.org", "b@x.org")
    with pytest.raises(EnvelopeError, match="longer than 254"):
        Envelope("a@" + ".".join(["b" * 63] * 4), "b@x.org")
    with pytest.raises(EnvelopeError, match="is empty"):
        Envelope("a@x.org", "")


def test_split_mailbox() -> None:
    assert split_mailbox("a@x.org") == ("a", "x.org")
    assert split_mailbox('"a@b"@x.org') == ('"a@b"', "x.org")
    assert split_mailbox('"a\\"@"@x.org') == ('"a\\"@"', "x.org")


# -- IDNA ------------------------------------------------------------------------


def test_ascii_domain_address() -> None:
    # The expected A-labels agree with the standard library's (IDNA 2003) codec.
    assert "例子.广告".encode("idna") == b"xn--fsqu00a.xn--4rr70v"
    assert ascii_domain_address("user@bücher.example") == "user@xn--bcher-kva.example"
    assert ascii_domain_address("user@例子.广告") == "user@xn--fsqu00a.xn--4rr70v"
    assert ascii_domain_address("user@x.org") == "user@x.org"
    assert ascii_domain_address("user@[192.0.2.1]") == "user@[192.0.2.1]"
    assert ascii_domain_address("jörg@x.org") == "jörg@x.org"
    # UTS 46 mapping: upper case folds, as DNS would.
    assert ascii_domain_address("user@BÜCHER.example") == "user@xn--bcher-kva.example"
    assert ascii_domain_address("") == ""


def test_idn_domain_goes_as_a_labels_without_smtputf8() -> None:
    envelope = Envelope("sender@bücher.example", ["rcpt@例子.广告", "plain@x.org"], size=10)
    assert not envelope.needs_smtputf8
    assert use_smtputf8(envelope, PLAIN) is False
    assert mail_from_command(envelope, PLAIN) == b"MAIL FROM:<sender@xn--bcher-kva.example>"
    assert rcpt_to_command("rcpt@例子.广告", None, PLAIN, smtputf8=False) == b"RCPT TO:<rcpt@xn--fsqu00a.xn--4rr70v>"
    assert rcpt_to_command("plain@x.org", None, PLAIN, smtputf8=False) == b"RCPT TO:<plain@x.org>"


def test_idn_domain_goes_as_utf8_when_the_server_offers_smtputf8() -> None:
    envelope = Envelope("sender@bücher.example", "rcpt@x.org")
    assert use_smtputf8(envelope, UTF8) is True
    assert mail_from_command(envelope, UTF8) == "MAIL FROM:<sender@bücher.example> SMTPUTF8".encode()
    assert rcpt_to_command("r@bücher.example", None, UTF8, smtputf8=True) == "RCPT TO:<r@bücher.example>".encode()


def test_idn_domain_with_smtputf8_refused_goes_as_a_labels() -> None:
    envelope = Envelope("sender@bücher.example", "rcpt@x.org", smtputf8=False)
    assert use_smtputf8(envelope, UTF8) is False
    assert mail_from_command(envelope, UTF8) == b"MAIL FROM:<sender@xn--bcher-kva.example>"


def test_non_ascii_local_part_still_needs_smtputf8() -> None:
    envelope = Envelope("jörg@bücher.example", "rcpt@x.org")
    assert envelope.needs_smtputf8
    with pytest.raises(EnvelopeError, match="does not offer SMTPUTF8, needed for the non-ASCII local part") as info:
        use_smtputf8(envelope, PLAIN)
    assert "jörg@bücher.example" in str(info.value)
    with pytest.raises(EnvelopeError, match="smtputf8 is False but the local part"):
        use_smtputf8(Envelope("jörg@x.org", "r@x.org", smtputf8=False), UTF8)
    with pytest.raises(EnvelopeError, match="not ASCII and SMTPUTF8 is not used"):
        rcpt_to_command("jörg@bücher.example", None, PLAIN, smtputf8=False)
    assert mail_from_command(envelope, UTF8) == "MAIL FROM:<jörg@bücher.example> SMTPUTF8".encode()


def test_orcpt_of_an_idn_recipient_stays_ascii() -> None:
    dsn = DSN(notify="FAILURE", orcpt="r@bücher.example")
    line = rcpt_to_command("r@bücher.example", dsn, {**PLAIN, "DSN": ""}, smtputf8=False)
    assert line == b"RCPT TO:<r@xn--bcher-kva.example> NOTIFY=FAILURE ORCPT=utf-8;r@b\\x{FC}cher.example"


# -- REQUIRETLS (values) ------------------------------------------------------------


def test_require_tls_field() -> None:
    envelope = Envelope("a@x.org", "b@x.org", require_tls=True)
    assert envelope.require_tls is True
    assert "require_tls=True" in repr(envelope)
    assert "require_tls" not in repr(Envelope("a@x.org", "b@x.org"))
    assert Envelope("a@x.org", "b@x.org").require_tls is False
    assert coerce_envelope({"from": "a@x.org", "to": "b@x.org", "require_tls": True}) == envelope
    with pytest.raises(TypeError, match="require_tls must be a bool"):
        Envelope("a@x.org", "b@x.org", require_tls="yes")  # type: ignore[arg-type]


def test_requiretls_on_mail() -> None:
    envelope = Envelope("a@x.org", "b@x.org", size=5, require_tls=True, dsn=DSN(ret="HDRS"))
    extensions = {**REQUIRETLS, "SIZE": "", "DSN": ""}
    assert mail_from_command(envelope, extensions) == b"MAIL FROM:<a@x.org> SIZE=5 REQUIRETLS RET=HDRS"
    # Not asked for: never sent, even when offered.
    assert mail_from_command(Envelope("a@x.org", "b@x.org"), REQUIRETLS) == b"MAIL FROM:<a@x.org>"


def test_requiretls_never_silently_dropped_from_mail() -> None:
    with pytest.raises(TLSError, match="does not offer REQUIRETLS") as info:
        mail_from_command(Envelope("a@x.org", "b@x.org", require_tls=True), PLAIN)
    assert info.value.code == "ETLS"


def test_check_require_tls() -> None:
    demanding = Envelope("a@x.org", "b@x.org", require_tls=True)
    check_require_tls(demanding, REQUIRETLS, tls_verified=True)
    with pytest.raises(TLSError, match="not TLS with a verified certificate") as unverified:
        check_require_tls(demanding, REQUIRETLS, tls_verified=False)
    assert unverified.value.code == "ETLS"
    with pytest.raises(TLSError, match="does not offer REQUIRETLS") as not_offered:
        check_require_tls(demanding, PLAIN, tls_verified=True)
    assert not_offered.value.code == "ETLS"
    # Keywords as the EHLO parser gives them, or not upper-cased.
    check_require_tls(demanding, {"requiretls": ""}, tls_verified=True)
    # Nothing asked, nothing checked.
    check_require_tls(Envelope("a@x.org", "b@x.org"), PLAIN, tls_verified=False)


# -- properties ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.emails())
def test_hypothesis_emails_are_valid_and_render_on_one_line(address: str) -> None:
    """Hypothesis' own RFC 5322 address generator agrees with the checker."""
    local = address.rpartition("@")[0]
    if len(local.encode()) > 64 or len(address.encode()) > 254:
        return
    envelope = Envelope(address, address)
    line = rcpt_to_command(envelope.rcpt_to[0], None, PLAIN, smtputf8=False)
    assert line == b"RCPT TO:<" + address.encode("ascii") + b">"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_any_text_is_accepted_or_refused_with_envelope_error(text: str) -> None:
    """Nothing raises but EnvelopeError, and what is accepted renders as one line."""
    try:
        envelope = Envelope("a@x.org", text)
    except EnvelopeError:
        return
    for smtputf8, extensions in ((True, UTF8), (False, PLAIN)):
        try:
            line = rcpt_to_command(envelope.rcpt_to[0], None, extensions, smtputf8=smtputf8)
        except EnvelopeError as error:
            assert not smtputf8 and "SMTPUTF8 is not used" in str(error)
            continue
        assert b"\r" not in line and b"\n" not in line and b"\x00" not in line
        assert line.count(b"<") == 1 or '"' in text
