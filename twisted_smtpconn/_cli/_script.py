"""
Loading a ``--script`` file: JSON or TOML (``tomllib``), one schema.

The schema (documented with examples in ``docs/twistd.rst``)::

    connection = { ...SMTPConnection settings, snake_case... }   # optional
    from = "default sender"                                      # optional
    [[messages]]                                                 # at least one
    from = "sender"             # optional: top-level from, --from, headers
    to = "rcpt" | ["rcpt", ...] # optional with eml (then from the headers)
    eml = "path/relative/to/the/script.eml"
    # or, instead of eml:
    subject = "..."; body = "..."; headers = { Name = "value" }
    dsn = { ret = "HDRS", notify = ["FAILURE"], envid = "...", orcpt = "..." }
    use_8bit_mime = true

Every mistake is reported as one line naming the file and the entry, so
that ``smtpsend`` can exit 64 before connecting anywhere.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.python import usage

from ._jobs import DSNSpec
from ._options import DSN_RET_VALUES, check_notify

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (setup.cfg pulls in tomli there)
    import tomli as tomllib

__all__ = ["Script", "ScriptMessage", "load_script"]

_TOP_KEYS = frozenset({"connection", "from", "messages"})
_MESSAGE_KEYS = frozenset(
    {"from", "to", "eml", "subject", "body", "headers", "dsn", "use_8bit_mime"}
)
_DSN_KEYS = frozenset({"ret", "envid", "notify", "orcpt"})


@dataclass(frozen=True)
class ScriptMessage:
    """One entry of ``messages``; ``eml`` is already resolved against the script's directory."""

    where: str
    mail_from: str | None
    rcpt_to: tuple[str, ...]
    eml: Path | None
    subject: str | None
    body: str | None
    headers: tuple[tuple[str, str], ...]
    dsn: DSNSpec | None
    use_8bit_mime: bool


@dataclass(frozen=True)
class Script:
    """A parsed script file."""

    path: Path
    connection: Mapping[str, Any]
    default_from: str | None
    messages: tuple[ScriptMessage, ...]


def _fail(where: str, problem: str) -> usage.UsageError:
    return usage.UsageError(f"{where}: {problem}")


def _string(value: object, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"{key} must be a string")
    return value


def _dsn(value: object, where: str) -> DSNSpec:
    if not isinstance(value, dict):
        raise _fail(where, "dsn must be a table")
    unknown = set(value) - _DSN_KEYS
    if unknown:
        raise _fail(where, f"unknown dsn key {sorted(unknown)[0]!r}")
    ret = value.get("ret")
    if ret is not None:
        ret = _string(ret, where, "dsn.ret").upper()
        if ret not in DSN_RET_VALUES:
            raise _fail(where, "dsn.ret must be FULL or HDRS")
    notify_value = value.get("notify")
    notify: tuple[str, ...] | None = None
    if notify_value is not None:
        items = notify_value.split(",") if isinstance(notify_value, str) else notify_value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise _fail(where, "dsn.notify must be a string or a list of strings")
        try:
            notify = tuple(check_notify(items))
        except ValueError as e:
            raise _fail(where, str(e)) from None
    envid = value.get("envid")
    orcpt = value.get("orcpt")
    return DSNSpec(
        ret=ret,
        envid=None if envid is None else _string(envid, where, "dsn.envid"),
        notify=notify,
        orcpt=None if orcpt is None else _string(orcpt, where, "dsn.orcpt"),
    )


def _message(entry: object, where: str, base: Path) -> ScriptMessage:
    if not isinstance(entry, dict):
        raise _fail(where, "must be a table")
    unknown = set(entry) - _MESSAGE_KEYS
    if unknown:
        raise _fail(where, f"unknown key {sorted(unknown)[0]!r}")
    to = entry.get("to", [])
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not all(isinstance(t, str) and t.strip() for t in to):
        raise _fail(where, "to must be an address or a list of addresses")
    eml = entry.get("eml")
    inline = [k for k in ("subject", "body", "headers") if k in entry]
    if eml is not None and inline:
        raise _fail(where, f"eml contradicts {inline[0]}")
    if eml is None and not inline:
        raise _fail(where, "needs eml, or subject/body")
    if eml is None and not to:
        raise _fail(where, "an inline message needs to")
    headers = entry.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise _fail(where, "headers must be a table of strings")
    use_8bit = entry.get("use_8bit_mime", False)
    if not isinstance(use_8bit, bool):
        raise _fail(where, "use_8bit_mime must be true or false")
    mail_from = entry.get("from")
    subject = entry.get("subject")
    body = entry.get("body")
    return ScriptMessage(
        where=where,
        mail_from=None if mail_from is None else _string(mail_from, where, "from"),
        rcpt_to=tuple(to),
        eml=None if eml is None else base / _string(eml, where, "eml"),
        subject=None if subject is None else _string(subject, where, "subject"),
        body=None if body is None else _string(body, where, "body"),
        headers=tuple(headers.items()),
        dsn=None if entry.get("dsn") is None else _dsn(entry["dsn"], where),
        use_8bit_mime=use_8bit,
    )


def parse_script(data: Mapping[str, Any], path: Path) -> Script:
    """Validate an already-decoded script document."""
    name = path.name
    if not isinstance(data, dict):
        raise _fail(name, "the top level must be a table/object")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(name, f"unknown top-level key {sorted(unknown)[0]!r}")
    connection = data.get("connection", {})
    if not isinstance(connection, dict):
        raise _fail(name, "connection must be a table")
    default_from = data.get("from")
    if default_from is not None:
        default_from = _string(default_from, name, "from")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail(name, "needs a non-empty messages list")
    base = path.parent
    parsed = tuple(
        _message(entry, f"{name} messages[{i}]", base) for i, entry in enumerate(messages)
    )
    return Script(path=path, connection=connection, default_from=default_from, messages=parsed)


def load_script(path: Path) -> Script:
    """
    Read and validate a script: ``.toml`` as TOML, anything else as JSON.

    :raises usage.UsageError: one line naming the file and the problem.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _fail(str(path), f"cannot read script: {e.strerror or e}") from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors.
        raise _fail(path.name, f"not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from None
    return parse_script(data, path)
