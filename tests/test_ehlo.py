"""Tests for twisted_smtpconn._ehlo: reading the EHLO reply."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_smtpconn._ehlo import auth_mechanisms, parse_ehlo, size_limit
from twisted_smtpconn._reply import Reply


def ehlo(*lines: str) -> Reply:
    return Reply(250, ("mail.example greets client.example", *lines))


def test_typical_reply() -> None:
    extensions = parse_ehlo(
        ehlo("PIPELINING", "SIZE 10240000", "8BITMIME", "AUTH PLAIN LOGIN", "ENHANCEDSTATUSCODES", "SMTPUTF8")
    )
    assert extensions == {
        "PIPELINING": "",
        "SIZE": "10240000",
        "8BITMIME": "",
        "AUTH": "PLAIN LOGIN",
        "ENHANCEDSTATUSCODES": "",
        "SMTPUTF8": "",
    }


def test_first_line_is_not_an_extension() -> None:
    assert parse_ehlo(Reply(250, ("SIZE 100",))) == {}
    assert parse_ehlo(Reply(250, ("",))) == {}


def test_keywords_are_case_insensitive_and_parameters_stripped() -> None:
    extensions = parse_ehlo(ehlo("size   2000  ", "  starttls", "Dsn", "x-Custom\tvalue one"))
    assert extensions == {"SIZE": "2000", "STARTTLS": "", "DSN": "", "X-CUSTOM": "value one"}


def test_parameters_keep_their_case() -> None:
    assert parse_ehlo(ehlo("XCLIENT NAME Addr"))["XCLIENT"] == "NAME Addr"


def test_first_occurrence_wins() -> None:
    assert parse_ehlo(ehlo("SIZE 100", "size 999"))["SIZE"] == "100"


@pytest.mark.parametrize(
    "line",
    ["", "   ", "-SIZE", "_X", "SI_ZE 5", "SIZE=5", "ÄUTH PLAIN", "(garbage)", "\x00", "é"],
)
def test_garbage_lines_are_ignored(line: str) -> None:
    assert parse_ehlo(ehlo(line, "DSN")) == {"DSN": ""}


def test_old_auth_form_alone() -> None:
    extensions = parse_ehlo(ehlo("AUTH=LOGIN"))
    assert extensions == {"AUTH": "LOGIN"}
    assert auth_mechanisms(extensions) == ["LOGIN"]


def test_old_auth_form_with_several_mechanisms_lower_case() -> None:
    assert parse_ehlo(ehlo("auth=PLAIN login"))["AUTH"] == "PLAIN LOGIN"


def test_old_and_new_auth_forms_are_merged() -> None:
    extensions = parse_ehlo(ehlo("AUTH LOGIN CRAM-MD5", "AUTH=LOGIN PLAIN", "auth xoauth2 login"))
    assert extensions["AUTH"] == "LOGIN CRAM-MD5 PLAIN XOAUTH2"
    assert "AUTH=LOGIN" not in extensions
    assert auth_mechanisms(extensions) == ["LOGIN", "CRAM-MD5", "PLAIN", "XOAUTH2"]


def test_old_form_first() -> None:
    assert parse_ehlo(ehlo("AUTH=PLAIN", "AUTH PLAIN LOGIN"))["AUTH"] == "PLAIN LOGIN"


def test_auth_without_mechanisms() -> None:
    extensions = parse_ehlo(ehlo("AUTH"))
    assert extensions == {"AUTH": ""}
    assert auth_mechanisms(extensions) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("PLAIN LOGIN", ["PLAIN", "LOGIN"]),
        ("plain Login", ["PLAIN", "LOGIN"]),
        ("PLAIN PLAIN plain", ["PLAIN"]),
        ("  SCRAM-SHA-256   GSSAPI ", ["SCRAM-SHA-256", "GSSAPI"]),
        ("PLAIN bad/name ÉTÉ " + "X" * 21 + " LOGIN", ["PLAIN", "LOGIN"]),
        ("", []),
    ],
)
def test_auth_mechanisms(value: str, expected: list[str]) -> None:
    assert auth_mechanisms({"AUTH": value}) == expected


def test_auth_mechanisms_without_auth() -> None:
    assert auth_mechanisms({"SIZE": "1"}) == []
    assert auth_mechanisms({}) == []


def test_lookups_tolerate_keys_not_upper_cased() -> None:
    assert auth_mechanisms({"auth": "PLAIN"}) == ["PLAIN"]
    assert size_limit({"Size": "42"}) == 42


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10240000", 10240000),
        ("1", 1),
        ("000123", 123),
        ("  52428800  ", 52428800),
        ("2048 extra words", 2048),
        ("", None),
        ("0", None),
        ("000", None),
        ("-5", None),
        ("+5", None),
        ("12.5", None),
        ("1e6", None),
        ("abc", None),
        ("٣٤", None),  # non-ASCII digits
        ("9" * 20, int("9" * 20)),
        ("9" * 21, None),
        ("1" * 5000, None),
    ],
)
def test_size_limit(value: str, expected: int | None) -> None:
    assert size_limit({"SIZE": value}) == expected


def test_size_limit_without_size() -> None:
    assert size_limit({"PIPELINING": ""}) is None


def test_parse_and_size_together() -> None:
    assert size_limit(parse_ehlo(ehlo("SIZE"))) is None
    assert size_limit(parse_ehlo(ehlo("SIZE 35882577"))) == 35882577


# -- properties -------------------------------------------------------------------------

keyword = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9-]{0,15}\Z").filter(lambda k: k.upper() != "AUTH")
word = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=10)
param_words = st.lists(word, max_size=4)


@settings(deadline=None, max_examples=300)
@given(
    entries=st.lists(st.tuples(keyword, param_words), max_size=15, unique_by=lambda e: e[0].upper()),
    auth=st.lists(st.sampled_from(["PLAIN", "login", "CRAM-MD5", "XOAUTH2", "Gssapi"]), max_size=5),
    old_auth=st.booleans(),
)
def test_random_keyword_lists(entries: list[tuple[str, list[str]]], auth: list[str], old_auth: bool) -> None:
    lines = [f"{name} {' '.join(words)}".rstrip() for name, words in entries]
    if auth:
        lines.append(("AUTH=" if old_auth else "AUTH ") + " ".join(auth))
    extensions = parse_ehlo(ehlo(*lines))
    expected = {name.upper(): " ".join(words) for name, words in entries}
    mechanisms = list(dict.fromkeys(m.upper() for m in auth))
    if auth:
        expected["AUTH"] = " ".join(mechanisms)
    assert extensions == expected
    assert auth_mechanisms(extensions) == mechanisms


@settings(deadline=None, max_examples=300)
@given(st.lists(st.text(max_size=30), max_size=10))
def test_arbitrary_lines_never_fail(lines: list[str]) -> None:
    extensions = parse_ehlo(ehlo(*lines))
    for key, value in extensions.items():
        assert key == key.upper()
        assert key[0].isascii() and key[0].isalnum()
        assert value == value.strip()
    mechanisms = auth_mechanisms(extensions)
    assert len(mechanisms) == len(set(mechanisms))
    limit = size_limit(extensions)
    assert limit is None or limit > 0
