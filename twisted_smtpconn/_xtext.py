"""
xtext (RFC 3461, section 4): the encoding of the DSN parameters ``ENVID``
and ``ORCPT``, and of the RFC 6533 ``utf-8`` address type used for a
non-ASCII ``ORCPT``.

ESMTP parameter values may not contain spaces, ``=`` or anything outside
printable ASCII, but an envelope id or an original recipient may; xtext
writes such characters as ``+`` and two upper-case hex digits per byte, and
``+`` itself the same way, so that any value fits in one parameter.
"""

from __future__ import annotations

__all__ = ["xtext_encode", "xtext_decode", "utf8_addr_xtext"]

_HEX = "0123456789ABCDEFabcdef"


def _is_xchar(char: str) -> bool:
    """RFC 3461 xchar: ``"!"`` to ``"~"`` except ``"+"`` and ``"="``."""
    return "!" <= char <= "~" and char != "+" and char != "="


def xtext_encode(value: str) -> str:
    """
    Encode ``value`` as xtext.

    Characters outside ``"!"`` to ``"~"``, and ``"+"`` and ``"="``, become
    ``+XX`` (upper-case hex) for each byte of their UTF-8 encoding.  The
    result is printable ASCII without spaces.

    :raises ValueError: ``value`` holds a lone surrogate, which has no UTF-8
        encoding.
    """
    out: list[str] = []
    for char in value:
        if _is_xchar(char):
            out.append(char)
            continue
        try:
            data = char.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"cannot xtext-encode the lone surrogate {char!r}") from None
        out.extend(f"+{byte:02X}" for byte in data)
    return "".join(out)


def xtext_decode(value: str) -> str:
    """
    Decode xtext.

    The hex digits after ``+`` are accepted in either case (RFC 3461 asks
    senders for upper case; readers lose nothing by being lenient).

    :raises ValueError: a character that xtext never contains (a space, a
        control character, ``=``, non-ASCII), a ``+`` without two hex
        digits, or bytes that are not UTF-8.
    """
    data = bytearray()
    index = 0
    length = len(value)
    while index < length:
        char = value[index]
        if char == "+":
            digits = value[index + 1 : index + 3]
            if len(digits) != 2 or digits[0] not in _HEX or digits[1] not in _HEX:
                raise ValueError(f"malformed xtext: {value!r} has a '+' without two hex digits at {index}")
            data.append(int(digits, 16))
            index += 3
            continue
        if not _is_xchar(char):
            raise ValueError(f"malformed xtext: {value!r} contains {char!r} at {index}")
        data.append(ord(char))
        index += 1
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"malformed xtext: {value!r} does not decode as UTF-8 ({error.reason})") from None


def _is_qchar(char: str) -> bool:
    """RFC 6533 QCHAR: printable ASCII except ``"+"``, ``"="`` and ``"\\"``."""
    return "!" <= char <= "~" and char not in "+=\\"


def utf8_addr_xtext(address: str) -> str:
    """
    Encode an address for the RFC 6533 ``utf-8`` address type of ORCPT
    (``utf-8-addr-xtext``): characters other than QCHAR become
    ``\\x{HEX}`` with the code point in upper-case hex (at least two
    digits).  The result is printable ASCII, so it can be sent whether or
    not the session uses SMTPUTF8.

    :raises ValueError: ``address`` holds a lone surrogate.
    """
    out: list[str] = []
    for char in address:
        if _is_qchar(char):
            out.append(char)
            continue
        point = ord(char)
        if 0xD800 <= point <= 0xDFFF:
            raise ValueError(f"cannot encode the lone surrogate {char!r}")
        out.append(f"\\x{{{point:02X}}}")
    return "".join(out)
