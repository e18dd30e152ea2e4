"""
The public surface of ``twisted_smtpconn``: exactly the names of the API
contract, each the very object defined in its private module, and an import
that has no side effect on the reactor.

The name list is written out here rather than computed, so that adding or
removing a public name is a deliberate change to this file as well as to
``__init__.py``.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import twisted_smtpconn

#: API.md's public names (plus SMTPPool and enqueue), sorted.
PUBLIC_NAMES = [
    "Auth",
    "AuthenticationError",
    "ConnectionFailedError",
    "DSN",
    "Envelope",
    "EnvelopeError",
    "MessageError",
    "OAuth2Token",
    "OAuth2TokenProvider",
    "ProtocolError",
    "SMTPConnection",
    "SMTPConnectionError",
    "SMTPPool",
    "SMTPTimeoutError",
    "SendInfo",
    "SendTrace",
    "SocketError",
    "StreamError",
    "TLSError",
    "enqueue",
    "send",
]

#: Where each public name is defined.
DEFINED_IN = {
    "Auth": "twisted_smtpconn._auth",
    "AuthenticationError": "twisted_smtpconn._errors",
    "ConnectionFailedError": "twisted_smtpconn._errors",
    "DSN": "twisted_smtpconn._envelope",
    "Envelope": "twisted_smtpconn._envelope",
    "EnvelopeError": "twisted_smtpconn._errors",
    "MessageError": "twisted_smtpconn._errors",
    "OAuth2Token": "twisted_smtpconn._oauth2",
    "OAuth2TokenProvider": "twisted_smtpconn._oauth2",
    "ProtocolError": "twisted_smtpconn._errors",
    "SMTPConnection": "twisted_smtpconn._connection",
    "SMTPConnectionError": "twisted_smtpconn._errors",
    "SMTPPool": "twisted_smtpconn._pool",
    "send": "twisted_smtpconn._send",
    "SMTPTimeoutError": "twisted_smtpconn._errors",
    "SendInfo": "twisted_smtpconn._sendinfo",
    "SendTrace": "twisted_smtpconn._pool",
    "SocketError": "twisted_smtpconn._errors",
    "StreamError": "twisted_smtpconn._errors",
    "TLSError": "twisted_smtpconn._errors",
    "enqueue": "twisted_smtpconn._amqp",
}

#: Seconds a child interpreter may take to import the package.
IMPORT_LIMIT = 120


def test_all_is_the_contract() -> None:
    assert sorted(twisted_smtpconn.__all__) == PUBLIC_NAMES
    assert len(twisted_smtpconn.__all__) == len(set(twisted_smtpconn.__all__)), "__all__ repeats a name"


#: Public submodules: once imported they are attributes of the package too.
PUBLIC_SUBMODULES = {"compat"}


def test_no_other_public_attributes() -> None:
    """Anything else the package shows without a leading underscore leaks."""
    public = {name for name in vars(twisted_smtpconn) if not name.startswith("_")}
    assert public - PUBLIC_SUBMODULES == set(PUBLIC_NAMES)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from twisted_smtpconn import *", namespace)
    assert sorted(name for name in namespace if name != "__builtins__") == PUBLIC_NAMES


def test_every_name_has_a_home() -> None:
    assert sorted(DEFINED_IN) == PUBLIC_NAMES


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_is_the_private_object(name: str) -> None:
    module = importlib.import_module(DEFINED_IN[name])
    exported = getattr(twisted_smtpconn, name)
    assert exported is getattr(module, name)
    assert name in module.__all__
    # Defined there, not merely passed through from somewhere else.
    assert exported.__module__ == DEFINED_IN[name]


def test_errors_are_one_family() -> None:
    base = twisted_smtpconn.SMTPConnectionError
    errors = [getattr(twisted_smtpconn, name) for name in PUBLIC_NAMES if name.endswith("Error")]
    assert all(issubclass(error, base) for error in errors)
    codes = [error.default_code for error in errors if error is not base]
    assert sorted(codes) == sorted(
        ["ECONNECTION", "ETIMEDOUT", "ETLS", "EAUTH", "EENVELOPE", "EMESSAGE", "EPROTOCOL", "ESOCKET", "ESTREAM"]
    )


def test_package_is_typed() -> None:
    assert (Path(twisted_smtpconn.__file__).parent / "py.typed").is_file()


def _run_child(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """
    Run ``code`` in a fresh interpreter that imports the same
    ``twisted_smtpconn`` as this process (installed or source tree), from a
    directory where nothing else could be picked up.
    """
    home = str(Path(twisted_smtpconn.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=IMPORT_LIMIT,
        check=False,
    )


def test_import_does_not_install_a_reactor(tmp_path: Path) -> None:
    code = "import sys, twisted_smtpconn; assert 'twisted.internet.reactor' not in sys.modules"
    child = _run_child(code, tmp_path)
    assert child.returncode == 0, child.stderr


def test_the_check_sees_a_reactor(tmp_path: Path) -> None:
    """The subprocess check above can fail: importing the reactor trips it."""
    code = (
        "import sys, twisted_smtpconn; from twisted.internet import reactor; "
        "assert 'twisted.internet.reactor' not in sys.modules"
    )
    child = _run_child(code, tmp_path)
    assert child.returncode != 0
    assert "AssertionError" in child.stderr


def test_twistd_plugins_do_not_install_a_reactor(tmp_path: Path) -> None:
    """
    twistd imports every dropin, then the module behind the chosen
    subcommand, and only then installs the reactor that ``--reactor`` asks
    for: a module that installs the default one early breaks that option.
    """
    code = "\n".join(
        [
            "import importlib, sys",
            "from twisted.application.service import IServiceMaker",
            "from twisted.plugin import getPlugins",
            "makers = [m for m in getPlugins(IServiceMaker) if m.module.startswith('twisted_smtpconn')]",
            "assert makers, 'no twisted_smtpconn twistd plugin found'",
            "for maker in makers:",
            "    importlib.import_module(maker.module)",
            "    maker.options()",
            "assert 'twisted.internet.reactor' not in sys.modules, 'a plugin installed the reactor'",
            "print(sorted(m.tapname for m in makers))",
        ]
    )
    child = _run_child(code, tmp_path)
    assert child.returncode == 0, child.stderr
    assert "smtpsend" in child.stdout


def test_compat_names() -> None:
    """``twisted_smtpconn.compat``: twisted.mail's two entry points and its error names."""
    from twisted_smtpconn import compat

    assert compat.__all__[:2] == ["sendmail", "ESMTPSenderFactory"]
    assert sorted(compat.__all__) == sorted(
        ["sendmail", "ESMTPSenderFactory", "CompatError", "SMTPDeliveryError", "SenderRefusedError",
         "RecipientsRefusedError", "MessageRefusedError", "MessageReadError", "SMTPConnectError",
         "SMTPSocketError", "SMTPTimeoutError", "SMTPProtocolError", "SMTPTLSError", "TLSRequiredError",
         "AUTHRequiredError", "AUTHDeclinedError", "AuthenticationError"]
    )
    for name in compat.__all__:
        assert getattr(compat, name).__module__.startswith("twisted_smtpconn."), name


def test_compat_import_has_none_of_twisted_mail_smtps_side_effects(tmp_path: Path) -> None:
    """
    ``twisted_smtpconn.compat`` derives its errors from twisted.mail's classes
    without importing ``twisted.mail.smtp``, whose import installs the reactor
    and looks up this host's name.
    """
    code = (
        "import sys, twisted_smtpconn.compat; "
        "assert 'twisted.internet.reactor' not in sys.modules, 'reactor'; "
        "assert 'twisted.mail.smtp' not in sys.modules, 'twisted.mail.smtp'"
    )
    child = _run_child(code, tmp_path)
    assert child.returncode == 0, child.stderr
