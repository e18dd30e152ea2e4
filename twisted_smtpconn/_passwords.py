"""
Reading a password from a file or an environment variable.

Passwords are never taken from the command line: argv is visible to every
user of the machine (``ps``) and lands in shell history.  A file (mode 0600,
or a secret mounted by an orchestrator) or an environment variable is the
usual alternative, and both are accepted by ``smtpsend`` and ``smtpsink``.
"""

from __future__ import annotations

import os

__all__ = ["PasswordSourceError", "read_password"]


class PasswordSourceError(Exception):
    """The password file or variable is missing, unreadable or empty."""


def read_password(path: str | None, variable: str | None) -> str | None:
    """
    The password from ``path`` or the environment variable ``variable``.

    A single trailing line ending is removed from a file (editors add one);
    any other whitespace is part of the password.

    :returns: ``None`` if neither source was given.
    :raises PasswordSourceError: if the given source yields no password.
    """
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise PasswordSourceError(f"cannot read password file {path}: {e}") from None
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        if not text:
            raise PasswordSourceError(f"password file {path} is empty")
        return text
    if variable is not None:
        value = os.environ.get(variable)
        if value is None:
            raise PasswordSourceError(f"environment variable {variable} is not set")
        if not value:
            raise PasswordSourceError(f"environment variable {variable} is empty")
        return value
    return None
