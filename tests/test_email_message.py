"""
``email.message.Message`` objects as messages, without a server: the
envelope read from the headers (Sender vs From, Resent blocks, groups,
non-ASCII display names), Bcc removal on a copy, the CRLF serialisation
(dot lines, 8-bit, long lines, UTF-8 headers) and the choice of
8BITMIME/SMTPUTF8 from what the message needs and the server offers.
"""

from __future__ import annotations

import copy
import email.policy
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.mime.text import MIMEText
from email.parser import BytesParser

import pytest

from twisted_smtpconn import EnvelopeError, MessageError
from twisted_smtpconn._email import (
    email_parameters,
    envelope_from_headers,
    is_email_message,
    fit_to_server,
    headers_envelope,
    parse_message_headers,
    prepare_email,
    prepare_for_server,
    without_bcc,
)

EIGHT = {"8BITMIME": ""}
UTF8 = {"8BITMIME": "", "SMTPUTF8": ""}


def _message(**headers: str) -> EmailMessage:
    message = EmailMessage()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("hello\n")
    return message


def _wire(message: Message, **kwargs: bool) -> bytes:
    return b"".join(prepare_email(message, **kwargs).chunks)


# -- recognising the type ------------------------------------------------------------


def test_is_email_message() -> None:
    assert is_email_message(EmailMessage())
    assert is_email_message(Message())
    assert is_email_message(MIMEText("x"))
    for other in ("From: a@b\r\n\r\nx", b"x", [b"x"], {"From": "a@b"}, 5, None):
        assert not is_email_message(other)


@pytest.mark.parametrize("wrong", [5, {"From": "a@x.org"}, [b"From: a@x.org\r\n"], iter([1, 2]), None, 1.5])
def test_parse_message_headers_refuses_other_types(wrong: object) -> None:
    with pytest.raises(TypeError, match="needs an email.message.Message, str or bytes"):
        parse_message_headers(wrong)


# -- the envelope from the headers ------------------------------------------------------


def test_from_to_cc_bcc() -> None:
    message = _message(From="Ann <ann@x.org>", To="b@x.org, c@x.org", Cc="Dee <d@x.org>", Bcc="e@x.org")
    assert envelope_from_headers(message) == ("ann@x.org", ["b@x.org", "c@x.org", "d@x.org", "e@x.org"])


def test_sender_wins_over_from() -> None:
    message = _message(From="Ann <ann@x.org>, Bob <bob@x.org>", Sender="Secretary <sec@x.org>", To="c@x.org")
    assert envelope_from_headers(message)[0] == "sec@x.org"
    assert envelope_from_headers(_message(From="Ann <ann@x.org>, Bob <bob@x.org>", To="c@x.org"))[0] == "ann@x.org"


def test_groups_and_quoted_names_with_commas() -> None:
    message = _message(
        From="a@x.org",
        To='Team: "Doe, John" <jd@x.org>, ann@x.org;, "Smith, J." <js@x.org>',
        Cc="undisclosed-recipients:;",
    )
    assert envelope_from_headers(message)[1] == ["jd@x.org", "ann@x.org", "js@x.org"]


def test_non_ascii_display_names_and_international_addresses() -> None:
    message = _message(
        From="Jörg Müller <joerg@bücher.example>",
        To="Zoë <zoë@x.org>, =?utf-8?q?Ren=C3=A9e?= <renee@x.org>",
    )
    assert envelope_from_headers(message) == ("joerg@bücher.example", ["zoë@x.org", "renee@x.org"])
    # The same from a compat32 Message holding plain strings.
    legacy = Message()
    legacy["From"] = "=?utf-8?q?J=C3=B6rg?= <joerg@x.org>"
    legacy["To"] = '"Doe, J" <jd@x.org>, other@x.org'
    assert envelope_from_headers(legacy) == ("joerg@x.org", ["jd@x.org", "other@x.org"])


def test_recipients_once_each_in_header_order() -> None:
    message = _message(From="a@x.org", To="b@x.org, c@x.org", Cc="b@x.org", Bcc="c@x.org, d@x.org")
    assert envelope_from_headers(message)[1] == ["b@x.org", "c@x.org", "d@x.org"]


def test_quoted_local_parts_come_back_quoted() -> None:
    message = _message(From='"john smith"@x.org', To='"a..b"@x.org')
    assert envelope_from_headers(message) == ('"john smith"@x.org', ['"a..b"@x.org'])


RESENT = (
    b"Resent-From: Newest <newest@x.org>\r\n"
    b"Resent-To: r3@x.org\r\n"
    b"Resent-Bcc: hidden3@x.org\r\n"
    b"Resent-Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
    b"Received: from somewhere by here; Mon, 7 Dec 2026 09:00:00 +0000\r\n"
    b"Resent-From: Older <older@x.org>\r\n"
    b"Resent-Sender: older-sender@x.org\r\n"
    b"Resent-To: r2@x.org\r\n"
    b"Resent-Date: Sun, 6 Dec 2026 10:00:00 +0000\r\n"
    b"From: original@x.org\r\n"
    b"To: r1@x.org\r\n"
    b"Subject: resent twice\r\n"
    b"\r\n"
    b"body\r\n"
)


def test_the_most_recent_resent_block_is_used() -> None:
    """RFC 5322 3.6.6: blocks are prepended; the first one is the newest."""
    message = message_from_bytes(RESENT, policy=email.policy.default)
    assert envelope_from_headers(message) == ("newest@x.org", ["r3@x.org", "hidden3@x.org"])


def test_adjacent_resent_blocks_are_told_apart() -> None:
    data = RESENT.replace(b"Received: from somewhere by here; Mon, 7 Dec 2026 09:00:00 +0000\r\n", b"")
    message = message_from_bytes(data, policy=email.policy.default)
    assert envelope_from_headers(message) == ("newest@x.org", ["r3@x.org", "hidden3@x.org"])


def test_resent_sender_wins_in_its_block() -> None:
    data = RESENT.split(b"Resent-From: Older", 1)[1]
    message = message_from_bytes(b"Resent-From: Older" + data, policy=email.policy.default)
    assert envelope_from_headers(message) == ("older-sender@x.org", ["r2@x.org"])


def test_missing_sender_or_recipients_name_the_headers() -> None:
    with pytest.raises(EnvelopeError, match=r"no sender: the message has no Sender or From header") as info:
        envelope_from_headers(_message(To="b@x.org"))
    assert info.value.code == "EENVELOPE"
    with pytest.raises(EnvelopeError, match=r"no recipients: the message has no To, Cc or Bcc header"):
        envelope_from_headers(_message(From="a@x.org", Cc="undisclosed-recipients:;"))
    resent = message_from_bytes(b"Resent-Date: Mon, 7 Dec 2026 10:00:00 +0000\r\nFrom: a@x.org\r\nTo: b@x.org\r\n\r\nx")
    with pytest.raises(EnvelopeError, match="no Resent-Sender or Resent-From header"):
        envelope_from_headers(resent)


# -- Bcc ------------------------------------------------------------------------------


def test_bcc_removed_on_a_copy_and_the_callers_object_unchanged() -> None:
    message = _message(From="a@x.org", To="b@x.org", Bcc="secret@x.org")
    message["Resent-Bcc"] = "also-secret@x.org"
    before = message.as_bytes()
    headers_before = list(message.items())
    wire = _wire(message)
    assert b"secret" not in wire
    assert b"\r\nTo: b@x.org\r\n" in wire
    assert message.as_bytes() == before
    assert list(message.items()) == headers_before
    assert message["Bcc"] == "secret@x.org"


def test_without_bcc_returns_the_message_itself_when_there_is_none() -> None:
    message = _message(From="a@x.org", To="b@x.org")
    assert without_bcc(message) is message


def test_without_bcc_shares_the_body() -> None:
    message = _message(From="a@x.org", To="b@x.org", Bcc="c@x.org")
    message.add_attachment(b"\x00" * 1000, maintype="application", subtype="octet-stream")
    stripped = without_bcc(message)
    assert stripped is not message and "Bcc" not in stripped and "Bcc" in message
    assert stripped.get_payload() is message.get_payload()


# -- serialisation -----------------------------------------------------------------------


def test_crlf_everywhere_and_no_from_mangling() -> None:
    message = _message(From="a@x.org", To="b@x.org", Subject="s")
    message.set_content("line one\nFrom the start\n.dot line\n..two dots\n.\nend")
    wire = _wire(message)
    assert b"\n" not in wire.replace(b"\r\n", b"")
    assert b"\r\nFrom the start\r\n" in wire and b">From" not in wire
    # Dot-stuffing is the transport's job: the chunks hold the lines as they are.
    assert b"\r\n.dot line\r\n..two dots\r\n.\r\nend\r\n" in wire


def test_compat32_message_with_lf_body() -> None:
    legacy = MIMEText("one\ntwo\n")
    legacy["From"] = "a@x.org"
    legacy["To"] = "b@x.org"
    wire = _wire(legacy)
    assert wire.endswith(b"\r\n\r\none\r\ntwo\r\n")
    assert b"\n" not in wire.replace(b"\r\n", b"")


def test_parsed_bytes_keep_their_body() -> None:
    raw = b"From: a@x.org\nTo: b@x.org\nBcc: c@x.org\nSubject: raw\n\nbody line\n.dot\n\xc3\xa9t\xc3\xa9\n"
    wire = _wire(parse_message_headers(raw))
    assert wire == b"From: a@x.org\r\nTo: b@x.org\r\nSubject: raw\r\n\r\nbody line\r\n.dot\r\n\xc3\xa9t\xc3\xa9\r\n"
    assert parse_message_headers(raw.decode("utf-8")).get_payload() == parse_message_headers(raw).get_payload()


def test_parsed_multipart_bytes_get_crlf_once() -> None:
    raw = (
        b'From: a@x.org\r\nTo: b@x.org\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n"
    )
    assert _wire(parse_message_headers(raw)) == raw
    assert _wire(parse_message_headers(raw.replace(b"\r\n", b"\n"))) == raw


def test_size_and_chunks() -> None:
    message = _message(From="a@x.org", To="b@x.org")
    message.add_attachment(bytes(range(256)) * 400, maintype="application", subtype="octet-stream")
    prepared = prepare_email(message)
    assert prepared.size == sum(len(chunk) for chunk in prepared.chunks)
    assert len(prepared.chunks) > 1
    assert all(isinstance(chunk, bytes) and chunk for chunk in prepared.chunks)


def test_seven_bit_ascii_message() -> None:
    prepared = prepare_email(_message(From="a@x.org", To="b@x.org", Subject="Grüße"))
    assert (prepared.eight_bit, prepared.needs_smtputf8) == (False, False)
    assert b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" in b"".join(prepared.chunks)
    assert email_parameters(prepared, {}) == (False, False)


def test_eight_bit_body() -> None:
    message = _message(From="a@x.org", To="b@x.org")
    message.set_content("Grüße aus Köln\n")
    assert message["Content-Transfer-Encoding"] == "8bit"
    prepared = prepare_email(message)
    assert (prepared.eight_bit, prepared.needs_smtputf8) == (True, False)
    assert "Grüße aus Köln\r\n".encode() in b"".join(prepared.chunks)
    assert email_parameters(prepared, EIGHT) == (True, False)
    with pytest.raises(MessageError, match="8-bit bytes and the server does not offer 8BITMIME") as info:
        email_parameters(prepared, {"PIPELINING": ""})
    assert info.value.code == "EMESSAGE"


def test_eight_bit_text_is_made_seven_bit_for_a_server_without_8bitmime() -> None:
    message = _message(From="a@x.org", To="b@x.org")
    message.set_content("Grüße aus Köln\n")
    prepared, use_8bit_mime, smtputf8 = prepare_for_server(message, {"PIPELINING": ""})
    assert (prepared.eight_bit, use_8bit_mime, smtputf8) == (False, False, False)
    wire = b"".join(prepared.chunks)
    assert wire.isascii()
    assert BytesParser(policy=email.policy.default).parsebytes(wire).get_content() == "Grüße aus Köln\n"
    # The caller's message keeps its 8-bit part.
    assert message["Content-Transfer-Encoding"] == "8bit"
    # With 8BITMIME offered, the message goes as it is.
    assert prepare_for_server(message, EIGHT)[1:] == (True, False)


def test_utf8_headers_need_smtputf8() -> None:
    message = EmailMessage(policy=email.policy.SMTPUTF8)
    message["From"] = "Jörg <jörg@bücher.example>"
    message["To"] = "zoë@x.org"
    message["Subject"] = "Grüße"
    message.set_content("plain ascii body\n")
    prepared = prepare_email(message)
    assert prepared.needs_smtputf8 and not prepared.eight_bit
    assert "Subject: Grüße\r\n".encode() in b"".join(prepared.chunks)
    assert email_parameters(prepared, UTF8) == (True, True)
    with pytest.raises(MessageError, match="UTF-8 header fields, which need SMTPUTF8"):
        email_parameters(prepared, EIGHT)


def test_long_lines_are_encoded_by_the_email_package() -> None:
    message = _message(From="a@x.org", To="b@x.org", Subject="x" * 200)
    message.set_content("y" * 5000 + "\n")
    wire = _wire(message)
    assert max(len(line) for line in wire.split(b"\r\n")) <= 998
    # The text comes back (its line end in the canonical CRLF form).
    assert BytesParser(policy=email.policy.default).parsebytes(wire).get_content().rstrip("\r\n") == "y" * 5000


# -- what send_message builds ------------------------------------------------------------


def test_message_envelope_defaults() -> None:
    message = _message(From="a@x.org", To="b@x.org", Bcc="c@x.org")
    message.set_content("é\n")
    envelope, parsed = headers_envelope(message, mail_from=None, rcpt_to=None, envelope_options={})
    assert envelope.mail_from == "a@x.org" and envelope.rcpt_to == ("b@x.org", "c@x.org")
    # Size and encoding are the transaction's, for the server it talks to.
    assert envelope.size is None and envelope.use_8bit_mime is False
    fitted, prepared = fit_to_server(envelope, parsed, EIGHT)
    assert fitted.size == sum(len(chunk) for chunk in prepared.chunks) == prepared.size
    assert fitted.use_8bit_mime is True and fitted.smtputf8 is None
    assert fitted.rcpt_to == envelope.rcpt_to
    assert b"Bcc" not in b"".join(prepared.chunks)


def test_message_envelope_given_parts_win() -> None:
    message = _message(To="b@x.org")  # no From: fine, mail_from is given
    envelope, _ = headers_envelope(
        message, mail_from="", rcpt_to=["x@y.org"], envelope_options={"dsn": {"notify": "NEVER"}, "size": 7}
    )
    assert (envelope.mail_from, envelope.rcpt_to, envelope.size) == ("", ("x@y.org",), 7)
    assert envelope.dsn is not None and envelope.dsn.notify == ("NEVER",)
    with pytest.raises(EnvelopeError, match="no sender"):
        headers_envelope(message, mail_from=None, rcpt_to=["x@y.org"], envelope_options={})


def test_message_envelope_options_are_checked() -> None:
    message = _message(From="a@x.org", To="b@x.org")
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        headers_envelope(message, mail_from=None, rcpt_to=None, envelope_options={"binary": True})
    with pytest.raises(EnvelopeError, match="one address per recipient"):
        headers_envelope(message, mail_from=None, rcpt_to="a@x.org,b@x.org", envelope_options={})


def test_message_envelope_utf8_headers() -> None:
    message = EmailMessage(policy=email.policy.SMTPUTF8)
    message["From"] = "a@x.org"
    message["To"] = "b@x.org"
    message["Subject"] = "Grüße"
    message.set_content("x\n")
    envelope, parsed = headers_envelope(message, mail_from=None, rcpt_to=None, envelope_options={})
    fitted, _ = fit_to_server(envelope, parsed, UTF8)
    assert fitted.smtputf8 is True and fitted.use_8bit_mime is True
    refusing, _ = headers_envelope(message, mail_from=None, rcpt_to=None, envelope_options={"smtputf8": False})
    with pytest.raises(MessageError, match="smtputf8 is False"):
        fit_to_server(refusing, parsed, UTF8)
    with pytest.raises(MessageError, match="need SMTPUTF8"):
        fit_to_server(envelope, parsed, EIGHT)


def test_message_envelope_does_not_touch_the_callers_message() -> None:
    message = _message(From="a@x.org", To="b@x.org", Bcc="c@x.org")
    snapshot = copy.deepcopy(message).as_bytes()
    envelope, parsed = headers_envelope(message, mail_from=None, rcpt_to=None, envelope_options={})
    fit_to_server(envelope, parsed, {"PIPELINING": ""})
    assert message.as_bytes() == snapshot
