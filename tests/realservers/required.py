"""
What to do when a real server cannot be started here.

Locally a missing Postfix should not stop anyone from running the rest of
the suite, so those tests skip.  CI sets ``SMTPCONN_REQUIRE_REAL_SERVERS=1``:
there a broken install must not turn the interoperability tests into quiet
skips, so they fail instead.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["REQUIRE_ENV", "real_servers_required", "real_server_unavailable"]

#: The environment variable CI sets to ``1``.
REQUIRE_ENV = "SMTPCONN_REQUIRE_REAL_SERVERS"


def real_servers_required() -> bool:
    """Whether unavailable real servers fail the tests (CI) or skip them."""
    return os.environ.get(REQUIRE_ENV) == "1"


def real_server_unavailable(reason: str) -> NoReturn:
    """
    Skip the calling test or fixture, or fail it under
    ``SMTPCONN_REQUIRE_REAL_SERVERS=1``; ``reason`` says what is missing.
    """
    if real_servers_required():
        pytest.fail(f"real server required ({REQUIRE_ENV}=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)
