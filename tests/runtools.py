"""
Running the front ends (``twistd``, ``python -m twisted_smtpconn``) as real
subprocesses, against the package under test: the source tree in a
development checkout, the installed wheel under ``scripts/test.sh``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["REPO", "subprocess_env", "twistd_command"]

#: The repository root.
REPO = Path(__file__).resolve().parent.parent


def subprocess_env() -> dict[str, str]:
    """
    The environment for subprocesses: when the package under test is the
    source tree, put the repository root on ``PYTHONPATH`` (Twisted then
    finds the dropin in ``twisted/plugins``); an installed wheel -- even one
    installed into ``REPO/.venv`` -- is found as it is.
    """
    import twisted_smtpconn

    env = dict(os.environ)
    if Path(twisted_smtpconn.__file__).resolve().parent == REPO / "twisted_smtpconn":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def twistd_command() -> list[str]:
    """The ``twistd`` script of this interpreter's environment."""
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
