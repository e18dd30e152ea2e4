"""Tests for twisted_smtpconn._xtext: RFC 3461 xtext and RFC 6533 utf-8-addr-xtext."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_smtpconn._xtext import utf8_addr_xtext, xtext_decode, xtext_encode


@pytest.mark.parametrize(
    ("plain", "encoded"),
    [
        ("", ""),
        ("abc-123@example.com", "abc-123@example.com"),
        ("id+1=2", "id+2B1+3D2"),
        ("a b", "a+20b"),
        ("~!", "~!"),
        ("tab\there", "tab+09here"),
        ("cr\r\nlf", "cr+0D+0Alf"),
        ("nul\x00", "nul+00"),
        ("del\x7f", "del+7F"),
        ("é", "+C3+A9"),
        ("€", "+E2+82+AC"),
        ("😀", "+F0+9F+98+80"),
    ],
)
def test_known_values(plain: str, encoded: str) -> None:
    assert xtext_encode(plain) == encoded
    assert xtext_decode(encoded) == plain


def test_decode_accepts_lower_case_hex_and_needlessly_encoded_characters() -> None:
    assert xtext_decode("a+2b+41") == "a+A"


@pytest.mark.parametrize(
    "bad",
    ["+", "+2", "a+G0", "+2G", "++20", "a b", "a=b", "é", "\x00", "tab\t", "+C3", "+FF", "+C3+28"],
)
def test_decode_rejects_malformed_input(bad: str) -> None:
    with pytest.raises(ValueError, match="malformed xtext"):
        xtext_decode(bad)


def test_encode_rejects_lone_surrogates() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        xtext_encode("a\ud800")


@settings(deadline=None, max_examples=500)
@given(st.text())
def test_round_trip(value: str) -> None:
    encoded = xtext_encode(value)
    assert all("!" <= char <= "~" for char in encoded)
    assert "=" not in encoded
    assert xtext_decode(encoded) == value


@settings(deadline=None, max_examples=300)
@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: c not in "+=")))
def test_plain_ascii_is_unchanged(value: str) -> None:
    assert xtext_encode(value) == value


@pytest.mark.parametrize(
    ("address", "encoded"),
    [
        ("bob@example.com", "bob@example.com"),
        ("jörg@bücher.example", "j\\x{F6}rg@b\\x{FC}cher.example"),
        ("a+b=c\\d", "a\\x{2B}b\\x{3D}c\\x{5C}d"),
        ('"a b"@x', '"a\\x{20}b"@x'),
        ("😀@x", "\\x{1F600}@x"),
        ("日本@x", "\\x{65E5}\\x{672C}@x"),
    ],
)
def test_utf8_addr_xtext(address: str, encoded: str) -> None:
    assert utf8_addr_xtext(address) == encoded


def test_utf8_addr_xtext_rejects_lone_surrogates() -> None:
    with pytest.raises(ValueError):
        utf8_addr_xtext("\udc80@x")


@settings(deadline=None, max_examples=300)
@given(st.text())
def test_utf8_addr_xtext_is_printable_ascii(value: str) -> None:
    encoded = utf8_addr_xtext(value)
    assert all("!" <= char <= "~" for char in encoded)
    assert "+" not in encoded and "=" not in encoded
