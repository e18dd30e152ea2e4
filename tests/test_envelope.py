"""Tests for twisted_smtpconn._envelope: Envelope, DSN and their checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from twisted_smtpconn._envelope import DSN, Envelope, check_address, coerce_dsn, coerce_envelope
from twisted_smtpconn._errors import EnvelopeError, SMTPConnectionError

# -- Envelope -------------------------------------------------------------------------


def test_minimal_envelope() -> None:
    envelope = Envelope("a@x.org", "b@x.org")
    assert envelope.mail_from == "a@x.org"
    assert envelope.rcpt_to == ("b@x.org",)
    assert envelope.size is None
    assert envelope.use_8bit_mime is False
    assert envelope.dsn is None
    assert envelope.smtputf8 is None
    assert not envelope.needs_smtputf8


def test_recipients_from_any_iterable() -> None:
    def generate() -> Iterator[str]:
        yield "b@x.org"
        yield "c@x.org"

    assert Envelope("a@x.org", ["b@x.org", "c@x.org"]).rcpt_to == ("b@x.org", "c@x.org")
    assert Envelope("a@x.org", ("b@x.org",)).rcpt_to == ("b@x.org",)
    assert Envelope("a@x.org", generate()).rcpt_to == ("b@x.org", "c@x.org")


def test_all_options() -> None:
    envelope = Envelope(
        "a@x.org", ["b@x.org"], size=0, use_8bit_mime=True, dsn={"ret": "full"}, smtputf8=False
    )
    assert envelope.size == 0
    assert envelope.use_8bit_mime is True
    assert envelope.dsn == DSN(ret="FULL")
    assert envelope.smtputf8 is False


def test_one_pair_of_angle_brackets_is_removed() -> None:
    envelope = Envelope("<a@x.org>", ["<b@x.org>", "c@x.org"])
    assert envelope.mail_from == "a@x.org"
    assert envelope.rcpt_to == ("b@x.org", "c@x.org")


@pytest.mark.parametrize("sender", ["", "<>"])
def test_null_sender(sender: str) -> None:
    assert Envelope(sender, "b@x.org").mail_from == ""


def test_envelope_is_a_frozen_value_with_a_readable_repr() -> None:
    a = Envelope("a@x.org", ["b@x.org"], size=5)
    b = Envelope("<a@x.org>", "b@x.org", size=5)
    assert a == b and hash(a) == hash(b)
    assert a != Envelope("a@x.org", ["b@x.org"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.mail_from = "evil@x.org"  # type: ignore[misc]
    assert repr(a) == (
        "Envelope(mail_from='a@x.org', rcpt_to=('b@x.org',), size=5, "
        "use_8bit_mime=False, dsn=None, smtputf8=None)"
    )


def test_replace_checks_again() -> None:
    envelope = Envelope("a@x.org", ["b@x.org"])
    assert dataclasses.replace(envelope, size=10).size == 10
    with pytest.raises(EnvelopeError):
        dataclasses.replace(envelope, mail_from="a@x.org\r\nQUIT")


def test_special_but_valid_addresses() -> None:
    # The bare Postmaster is a recipient only (RFC 5321 4.1.1.3).
    assert Envelope("a@x.org", ["postmaster", "Postmaster"]).rcpt_to == ("postmaster", "Postmaster")
    for address in [
        '"john smith"@example.com',
        '"quoted \\" quote"@example.com',
        '"a@b"@example.com',
        "user@[192.0.2.1]",
        "user@[IPv6:2001:db8::1]",
        "user+tag@example.com",
        "jörg@bücher.example",
        "用户@例子.广告",
        "a" * 64 + "@x.org",
        "a@" + ".".join(["b" * 63] * 3 + ["b" * 60]),
        "é" * 32 + "@x.org",
    ]:
        assert Envelope(address, address).rcpt_to == (address,)


def test_non_ascii_addresses_need_smtputf8() -> None:
    assert Envelope("jörg@x.org", "b@x.org").needs_smtputf8
    assert Envelope("a@x.org", ["b@x.org", "ç@bücher.example"]).needs_smtputf8
    # A non-ASCII domain alone has an ASCII form (A-labels): no SMTPUTF8 needed.
    idn = Envelope("a@x.org", ["b@x.org", "c@bücher.example"])
    assert not idn.needs_smtputf8
    assert idn.has_non_ascii
    # ORCPT is always sent in an ASCII form.
    assert not Envelope("a@x.org", "b@x.org", dsn=DSN(orcpt="jörg@x.org")).needs_smtputf8


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"mail_from": "a@x.org\r\nRCPT TO:<evil@x.org>"}, "mail_from", "a@x.org\r\nRCPT TO:<evil@x.org>"),
        ({"mail_from": "a@x.org\n"}, "mail_from", "a@x.org\n"),
        ({"mail_from": "a@x\x00.org"}, "mail_from", "a@x\x00.org"),
        ({"mail_from": "a@x\x7f.org"}, "mail_from", "a@x\x7f.org"),
        ({"mail_from": "a@x\x85.org"}, "mail_from", "a@x\x85.org"),
        ({"mail_from": "a\t@x.org"}, "mail_from", "a\t@x.org"),
        ({"mail_from": "a@x.org\ud800"}, "mail_from", "a@x.org\ud800"),
        ({"mail_from": "a b@x.org"}, "mail_from", "a b@x.org"),
        ({"mail_from": " a@x.org"}, "mail_from", " a@x.org"),
        ({"mail_from": "a@x.org "}, "mail_from", "a@x.org "),
        ({"mail_from": "a@x.org\u2028"}, "mail_from", "a@x.org\u2028"),
        ({"mail_from": "<<a@x.org>>"}, "mail_from", "<<a@x.org>>"),
        ({"mail_from": "a@x.org> SIZE=1"}, "mail_from", "a@x.org> SIZE=1"),
        ({"mail_from": "<a@x.org"}, "mail_from", "<a@x.org"),
        ({"mail_from": '"unterminated@x.org'}, "mail_from", '"unterminated@x.org'),
        ({"mail_from": '"a"b@x.org'}, "mail_from", '"a"b@x.org'),
        ({"mail_from": '"a b"@x .org'}, "mail_from", '"a b"@x .org'),
        ({"mail_from": "a" * 65 + "@x.org"}, "mail_from", "a" * 65 + "@x.org"),
        ({"mail_from": "é" * 33 + "@x.org"}, "mail_from", "é" * 33 + "@x.org"),
        ({"mail_from": "a@" + "b" * 253}, "mail_from", "a@" + "b" * 253),
        ({"rcpt_to": ""}, "rcpt_to[0]", ""),
        ({"rcpt_to": "<>"}, "rcpt_to[0]", "<>"),
        ({"rcpt_to": ["b@x.org", "c@x.org\nDATA"]}, "rcpt_to[1]", "c@x.org\nDATA"),
        ({"rcpt_to": "b@x.org\x00"}, "rcpt_to[0]", "b@x.org\x00"),
        ({"rcpt_to": []}, "rcpt_to", []),
        ({"rcpt_to": ()}, "rcpt_to", ()),
        ({"size": -1}, "size", -1),
    ],
)
def test_unusable_values(kwargs: dict[str, object], field: str, value: object) -> None:
    arguments: dict[str, object] = {"mail_from": "a@x.org", "rcpt_to": ["b@x.org"], **kwargs}
    with pytest.raises(EnvelopeError) as info:
        Envelope(**arguments)  # type: ignore[arg-type]
    error = info.value
    assert error.code == "EENVELOPE"
    assert isinstance(error, SMTPConnectionError)
    assert str(error).startswith(field + " ")
    assert repr(value) in str(error)


def test_error_message_cuts_absurd_values() -> None:
    with pytest.raises(EnvelopeError) as info:
        Envelope("a" * 100_000, "b@x.org")
    assert len(str(info.value)) < 500
    assert "100000 characters" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mail_from": None},
        {"mail_from": b"a@x.org"},
        {"rcpt_to": 5},
        {"rcpt_to": None},
        {"rcpt_to": b"b@x.org"},
        {"rcpt_to": {"b@x.org": 1}},
        {"rcpt_to": ["b@x.org", 5]},
        {"rcpt_to": [None]},
        {"size": "x"},
        {"size": 1.5},
        {"size": True},
        {"use_8bit_mime": "yes"},
        {"use_8bit_mime": None},
        {"use_8bit_mime": 1},
        {"smtputf8": "auto"},
        {"dsn": "FULL"},
        {"dsn": ["ret"]},
    ],
)
def test_wrong_types(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"mail_from": "a@x.org", "rcpt_to": ["b@x.org"], **kwargs}
    with pytest.raises(TypeError):
        Envelope(**arguments)  # type: ignore[arg-type]


def test_check_address() -> None:
    assert check_address("f", "<a@x.org>") == "a@x.org"
    assert check_address("f", "<>", allow_empty=True) == ""
    with pytest.raises(EnvelopeError, match="^f is empty"):
        check_address("f", "<>")
    with pytest.raises(TypeError):
        check_address("f", 3)


# -- DSN ------------------------------------------------------------------------------


def test_dsn_normalises() -> None:
    dsn = DSN(ret="hdrs", envid="id-1", notify="success, Failure,SUCCESS", orcpt="b@x.org")
    assert dsn.ret == "HDRS"
    assert dsn.envid == "id-1"
    assert dsn.notify == ("SUCCESS", "FAILURE")
    assert dsn.orcpt == "b@x.org"
    assert repr(dsn) == "DSN(ret='HDRS', envid='id-1', notify=('SUCCESS', 'FAILURE'), orcpt='b@x.org')"


def test_dsn_notify_forms() -> None:
    assert DSN(notify=["delay"]).notify == ("DELAY",)
    assert DSN(notify=("NEVER",)).notify == ("NEVER",)
    assert DSN(notify="never").notify == ("NEVER",)
    assert DSN(notify=iter(["SUCCESS", "DELAY"])).notify == ("SUCCESS", "DELAY")
    assert DSN(notify=["NEVER", "never"]).notify == ("NEVER",)


def test_dsn_empty_values_mean_not_set() -> None:
    assert DSN(ret="", envid="", notify="", orcpt="") == DSN()
    assert DSN(notify=[]) == DSN()
    assert DSN(notify="  ").notify is None


def test_dsn_is_frozen_and_comparable() -> None:
    assert DSN(ret="full") == DSN(ret="FULL")
    assert hash(DSN(notify="SUCCESS,DELAY")) == hash(DSN(notify=["success", "delay"]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        DSN().ret = "FULL"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"ret": "ALL"}, "dsn.ret", "ALL"),
        ({"ret": "FULL\r\n"}, "dsn.ret", "FULL\r\n"),
        ({"notify": "SOMETIMES"}, "dsn.notify", "SOMETIMES"),
        ({"notify": "SUCCESS,,FAILURE"}, "dsn.notify", ""),
        ({"notify": ["NEVER", "SUCCESS"]}, "dsn.notify", ["NEVER", "SUCCESS"]),
        ({"notify": "failure,never"}, "dsn.notify", "failure,never"),
        ({"notify": ["SUCCESS\r\nQUIT"]}, "dsn.notify", "SUCCESS\r\nQUIT"),
        ({"envid": "x\r\nQUIT"}, "dsn.envid", "x\r\nQUIT"),
        ({"envid": "x\x00"}, "dsn.envid", "x\x00"),
        ({"envid": "café"}, "dsn.envid", "café"),
        ({"envid": "x" * 101}, "dsn.envid", "x" * 101),
        ({"orcpt": "rfc822;b@x.org\rX"}, "dsn.orcpt", "rfc822;b@x.org\rX"),
        ({"orcpt": "b@x.org\n"}, "dsn.orcpt", "b@x.org\n"),
        ({"orcpt": "rfc822;"}, "dsn.orcpt", "rfc822;"),
        ({"orcpt": "rfc822;<>"}, "dsn.orcpt", "rfc822;<>"),
        ({"orcpt": "<>"}, "dsn.orcpt", "<>"),
        ({"orcpt": "b" * 501}, "dsn.orcpt", "b" * 501),
        ({"orcpt": "+" * 200}, "dsn.orcpt", "+" * 200),
    ],
)
def test_dsn_unusable_values(kwargs: dict[str, object], field: str, value: object) -> None:
    with pytest.raises(EnvelopeError) as info:
        DSN(**kwargs)  # type: ignore[arg-type]
    assert info.value.code == "EENVELOPE"
    assert str(info.value).startswith(field + " ")
    assert repr(value)[:150] in str(info.value)


def test_dsn_limits_are_inclusive() -> None:
    assert DSN(envid="x" * 100).envid == "x" * 100
    assert DSN(envid="with space ~").envid == "with space ~"
    assert DSN(orcpt="b" * 493).orcpt_parameter == "rfc822;" + "b" * 493


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ret": 1},
        {"envid": b"id"},
        {"orcpt": ["b@x.org"]},
        {"notify": 3},
        {"notify": b"SUCCESS"},
        {"notify": {"SUCCESS": True}},
        {"notify": ["SUCCESS", None]},
    ],
)
def test_dsn_wrong_types(kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        DSN(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("orcpt", "parameter"),
    [
        ("b@x.org", "rfc822;b@x.org"),
        ("rfc822;b@x.org", "rfc822;b@x.org"),
        ("RFC822;b@x.org", "RFC822;b@x.org"),
        ("x400;/G=a/S=b/", "x400;/G+3Da/S+3Db/"),
        ("a+b@x.org", "rfc822;a+2Bb@x.org"),
        ('"a b"@x.org', 'rfc822;"a+20b"@x.org'),
        ('"a;b"@x.org', 'rfc822;"a;b"@x.org'),
        ("jörg@x.org", "utf-8;j\\x{F6}rg@x.org"),
        ("rfc822;jörg@x.org", "utf-8;j\\x{F6}rg@x.org"),
        ("utf-8;bob@x.org", "utf-8;bob@x.org"),
        ("utf-8;a+b@x.org", "utf-8;a\\x{2B}b@x.org"),
        ("x-custom;jörg", "x-custom;j+C3+B6rg"),
        ("<b@x.org>", "rfc822;b@x.org"),
        ("rfc822;<b@x.org>", "rfc822;b@x.org"),
        ("utf-8;<jörg@x.org>", "utf-8;j\\x{F6}rg@x.org"),
    ],
)
def test_orcpt_parameter(orcpt: str, parameter: str) -> None:
    dsn = DSN(orcpt=orcpt)
    assert dsn.orcpt == orcpt
    assert dsn.orcpt_parameter == parameter


def test_no_orcpt_parameter_without_orcpt() -> None:
    assert DSN(ret="FULL").orcpt_parameter is None


def test_coerce_dsn() -> None:
    dsn = DSN(ret="FULL")
    assert coerce_dsn(dsn) is dsn
    assert coerce_dsn(None) is None
    assert coerce_dsn({"ret": "full", "notify": ["NEVER"]}) == DSN(ret="FULL", notify=("NEVER",))
    assert coerce_dsn({}) == DSN()
    with pytest.raises(TypeError, match="unknown dsn key"):
        coerce_dsn({"return": "FULL"})
    with pytest.raises(TypeError):
        coerce_dsn("FULL")  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError):
        coerce_dsn({"ret": "bogus"})


# -- coerce_envelope ----------------------------------------------------------------------


def test_coerce_envelope_passes_envelopes_through() -> None:
    envelope = Envelope("a@x.org", "b@x.org")
    assert coerce_envelope(envelope) is envelope


def test_coerce_envelope_seed_keys() -> None:
    envelope = coerce_envelope(
        {
            "from": "a@x.org",
            "to": ["b@x.org", "c@x.org"],
            "size": 100,
            "use8BitMime": True,
            "dsn": {"ret": "HDRS", "envid": "e1", "notify": "SUCCESS", "orcpt": "b@x.org"},
        }
    )
    assert envelope == Envelope(
        "a@x.org",
        ["b@x.org", "c@x.org"],
        size=100,
        use_8bit_mime=True,
        dsn=DSN(ret="HDRS", envid="e1", notify=["SUCCESS"], orcpt="b@x.org"),
    )


def test_coerce_envelope_snake_case_keys() -> None:
    envelope = coerce_envelope(
        {"mail_from": "", "rcpt_to": "b@x.org", "use_8bit_mime": False, "smtputf8": True, "dsn": DSN()}
    )
    assert envelope == Envelope("", ["b@x.org"], smtputf8=True, dsn=DSN())


def test_coerce_envelope_treats_null_values_as_missing() -> None:
    envelope = coerce_envelope({"from": "a@x.org", "to": "b@x.org", "size": None, "use8BitMime": None, "dsn": None})
    assert envelope == Envelope("a@x.org", "b@x.org")


@pytest.mark.parametrize(
    "value",
    [
        {"from": "a@x.org", "to": "b@x.org", "cc": "c@x.org"},
        {"from": "a@x.org", "mail_from": "a@x.org", "to": "b@x.org"},
        {"from": "a@x.org", "to": "b@x.org", "rcpt_to": "b@x.org"},
        {"to": "b@x.org"},
        {"from": "a@x.org", "to": "b@x.org", 1: 2},
        {"from": "a@x.org", "to": "b@x.org", "size": "10"},
        {"from": "a@x.org", "to": "b@x.org", "use8BitMime": "true"},
        ["a@x.org", "b@x.org"],
        "a@x.org",
        None,
    ],
)
def test_coerce_envelope_type_errors(value: object) -> None:
    with pytest.raises(TypeError):
        coerce_envelope(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        {"from": "a@x.org"},
        {"from": "a@x.org", "to": None},
        {"from": "a@x.org", "to": []},
        {"from": "a@x.org\r\nRCPT TO:<evil@x.org>", "to": "b@x.org"},
        {"from": "a@x.org", "to": "b@x.org", "dsn": {"envid": "x\r\nQUIT"}},
    ],
)
def test_coerce_envelope_envelope_errors(value: dict[str, object]) -> None:
    with pytest.raises(EnvelopeError):
        coerce_envelope(value)


# -- properties ------------------------------------------------------------------------

# Text that is likely to hit every check: specials, controls, non-ASCII.
risky = st.text(
    st.one_of(
        st.sampled_from(list("ab@.<>\"\\ \t\r\n\x00\x7f\x85;+=,é€\u2028\ud800")),
        st.characters(),
    ),
    max_size=30,
)
plausible_address = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(st.sampled_from(list('abcXYZ019.+-_é" ')), min_size=1, max_size=70),
    st.text(st.sampled_from(list("abc.-[]:1ü")), min_size=1, max_size=200),
)


def mostly(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Usually ``base``, sometimes anything: an all-risky input is almost always refused."""
    return st.integers(0, 3).flatmap(lambda n: base if n else risky)


@settings(deadline=None, max_examples=500)
@given(sender=mostly(plausible_address), recipients=st.lists(mostly(plausible_address), max_size=3))
def test_accepted_addresses_are_clean(sender: str, recipients: list[str]) -> None:
    try:
        envelope = Envelope(sender, recipients)
    except EnvelopeError as error:
        assert error.code == "EENVELOPE"
        event("refused")
        return
    event("accepted")
    for address in (envelope.mail_from, *envelope.rcpt_to):
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in address)
        assert "<" not in address and ">" not in address
        assert len(address.encode("utf-8")) <= 254
    assert all(envelope.rcpt_to)


@settings(deadline=None, max_examples=500)
@given(
    ret=mostly(st.sampled_from(["FULL", "hdrs", ""])),
    envid=mostly(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=110)),
    notify=mostly(st.sampled_from(["NEVER", "success,DELAY", "failure", ""])),
    orcpt=mostly(plausible_address),
)
def test_accepted_dsn_values_are_clean(ret: str, envid: str, notify: str, orcpt: str) -> None:
    try:
        dsn = DSN(ret=ret, envid=envid, notify=notify, orcpt=orcpt)
    except EnvelopeError:
        event("refused")
        return
    event("accepted")
    assert dsn.ret in (None, "FULL", "HDRS")
    assert dsn.envid is None or (dsn.envid.isascii() and dsn.envid.isprintable())
    assert dsn.notify is None or set(dsn.notify) <= {"NEVER", "SUCCESS", "FAILURE", "DELAY"}
    parameter = dsn.orcpt_parameter
    assert parameter is None or all("!" <= c <= "~" for c in parameter)
