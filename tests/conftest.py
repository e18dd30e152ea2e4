"""
Shared pytest configuration: Hypothesis profiles, the reactor leak check,
and fixtures for the real SMTP peers (aiosmtpd, a private Postfix,
smtp-sink).  ``tests/README.md`` describes how to use them.

pytest-twisted owns the reactor (``--reactor default`` in setup.cfg): it is
never imported at module level here, and never stopped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from hypothesis import settings

from realservers import leakcheck
from realservers.required import real_server_unavailable

if TYPE_CHECKING:
    from realservers.aiosmtpd_peer import AiosmtpdServer
    from realservers.postfix_peer import PostfixRelay, SmtpSink
    from realservers.proxy_peers import ProxyProcess
    from realservers.rabbitmq_peer import RabbitNode

#: Upper bound on how long the leak check lets the reactor finish closing
#: connections and firing short timers before it reports what is left.
LEAK_GRACE_SECONDS = 1.0
_LEAK_GRACE_STEP = 0.05


def pytest_configure(config: pytest.Config) -> None:
    # Profiles are chosen here, not at import, so that one place decides.
    # deadline=None in both: tests that run a reactor or a server thread
    # have run times that say nothing about the code under test.
    settings.register_profile("ci", deadline=None, derandomize=True, max_examples=200)
    settings.register_profile("dev", deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
    config.addinivalue_line(
        "markers",
        "allow_reactor_leftovers: skip the check that the test left no delayed calls "
        "or connections in the reactor",
    )


# -- reactor leak check ---------------------------------------------------


def _spin(reactor: Any, seconds: float) -> None:
    """
    Let the reactor run for ``seconds`` (from outside the reactor greenlet).
    """
    from twisted.internet.task import deferLater

    pytest_twisted.blockon(deferLater(reactor, seconds, lambda: None))


@pytest.fixture(scope="session", autouse=True)
def _reactor_started() -> None:
    """
    Run the reactor once before the first test, so that what it installs
    on its first run is already in every test's "before" snapshot.
    """
    from twisted.internet import reactor

    _spin(reactor, 0)


@pytest.fixture(autouse=True)
def _no_reactor_leftovers(request: pytest.FixtureRequest, _reactor_started: None) -> Iterator[None]:
    """
    Fail a test that leaves delayed calls or open connections in the reactor.

    Runs around every test, outside all its other fixtures, so what those
    fixtures close at teardown counts as closed.  Closing completes
    asynchronously, so the reactor gets up to :data:`LEAK_GRACE_SECONDS` to
    finish before anything is reported; the leftovers are then cancelled so
    that the next test starts clean.
    """
    from twisted.internet import reactor

    before = leakcheck.snapshot(reactor)
    yield
    if request.node.get_closest_marker("allow_reactor_leftovers"):
        return
    allowed = request.config.stash.get(leakcheck.LEFTOVER_ALLOWLIST, [])
    found = leakcheck.leftovers(reactor, before, allowed)
    waited = 0.0
    while found and waited < LEAK_GRACE_SECONDS:
        _spin(reactor, _LEAK_GRACE_STEP)
        waited += _LEAK_GRACE_STEP
        found = leakcheck.leftovers(reactor, before, allowed)
    if not found:
        return
    report = found.describe()
    leakcheck.clean_up(reactor, found)
    _spin(reactor, 0)
    # What closing the leftovers scheduled (connectionLost calls) is ours.
    leakcheck.clean_up(reactor, leakcheck.leftovers(reactor, before, allowed))
    pytest.fail(
        f"test left these in the reactor after {LEAK_GRACE_SECONDS:.1f}s (now cancelled):\n{report}",
        pytrace=False,
    )


# -- real servers -----------------------------------------------------------


@pytest.fixture
def make_aiosmtpd() -> Iterator[Callable[..., AiosmtpdServer]]:
    """
    Factory: ``make_aiosmtpd(**options)`` starts an aiosmtpd peer with
    :func:`realservers.aiosmtpd_peer.start_aiosmtpd`'s options (``lmtp``,
    ``accept_dsn``, ``data_size_limit``, ``tls_context``,
    ``require_starttls``, ``ssl_context``, ``authenticator``,
    ``auth_require_tls``, ...).  Every server it started is stopped at
    teardown.
    """
    from realservers.aiosmtpd_peer import start_aiosmtpd

    started: list[AiosmtpdServer] = []

    def make(**options: Any) -> AiosmtpdServer:
        server = start_aiosmtpd(**options)
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()


@pytest.fixture
def aiosmtpd_server(make_aiosmtpd: Callable[..., AiosmtpdServer]) -> AiosmtpdServer:
    """A plain aiosmtpd SMTP peer (SIZE 32 MiB, 8BITMIME, SMTPUTF8)."""
    return make_aiosmtpd()


@pytest.fixture
def aiosmtpd_dsn_server(make_aiosmtpd: Callable[..., AiosmtpdServer]) -> AiosmtpdServer:
    """An aiosmtpd SMTP peer that also advertises and accepts DSN."""
    return make_aiosmtpd(accept_dsn=True)


@pytest.fixture
def aiosmtpd_lmtp(make_aiosmtpd: Callable[..., AiosmtpdServer]) -> AiosmtpdServer:
    """An aiosmtpd LMTP peer: one reply per recipient after DATA."""
    return make_aiosmtpd(lmtp=True)


def _postfix_or_skip() -> None:
    from realservers.postfix_peer import postfix_unavailable_reason

    reason = postfix_unavailable_reason()
    if reason is not None:
        real_server_unavailable(reason)


def _short_tmpdir() -> str:
    # Not pytest's tmp_path: Postfix's socket paths must stay short, and
    # every parent directory must be searchable by the postfix user.
    return tempfile.mkdtemp(prefix="smtpconn-pf-", dir="/tmp")


def _remove_tmpdir(path: str) -> None:
    if not os.environ.get("SMTPCONN_KEEP_POSTFIX_DIR"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postfix_session() -> Iterator[PostfixRelay]:
    """
    The session's private Postfix (10 MiB message_size_limit) and its relay
    recorder.  Prefer the function-scoped ``postfix_server``.
    """
    _postfix_or_skip()
    from realservers.postfix_peer import start_postfix_relay

    base = _short_tmpdir()
    try:
        relay = start_postfix_relay(base)
    except BaseException:
        _remove_tmpdir(base)
        raise
    try:
        yield relay
    finally:
        relay.stop()
        _remove_tmpdir(base)


@pytest.fixture
def postfix_server(postfix_session: PostfixRelay) -> PostfixRelay:
    """
    The session's private Postfix, checked to be still running.
    """
    if not postfix_session.postfix.is_running():
        pytest.fail(
            "the session's private Postfix died; its log:\n" + postfix_session.postfix.maillog()[-4000:],
            pytrace=False,
        )
    return postfix_session


@pytest.fixture
def make_postfix() -> Iterator[Callable[..., PostfixRelay]]:
    """
    Factory for a private Postfix of the test's own:
    ``make_postfix(main_cf={...}, master_cf_extra="...",
    message_size_limit=...)``; each gets its own relay recorder and
    directory, and all are stopped and removed at teardown.  Takes ~2 s per
    instance, so use the shared ``postfix_server`` when the defaults do.
    """
    _postfix_or_skip()
    from realservers.postfix_peer import start_postfix_relay

    started: list[tuple[PostfixRelay, str]] = []

    def make(**options: Any) -> PostfixRelay:
        base = _short_tmpdir()
        try:
            relay = start_postfix_relay(base, **options)
        except BaseException:
            _remove_tmpdir(base)
            raise
        started.append((relay, base))
        return relay

    yield make
    for relay, base in reversed(started):
        try:
            relay.stop()
        finally:
            _remove_tmpdir(base)


@pytest.fixture
def make_smtp_sink() -> Iterator[Callable[..., SmtpSink]]:
    """
    Factory: ``make_smtp_sink(args=[...])`` starts Postfix's smtp-sink on a
    free loopback port; stopped by PID at teardown.
    """
    from realservers.postfix_peer import smtp_sink_path, start_smtp_sink

    if smtp_sink_path() is None:
        real_server_unavailable("smtp-sink is not installed (part of the postfix package)")
    started: list[SmtpSink] = []

    def make(**options: Any) -> SmtpSink:
        sink = start_smtp_sink(**options)
        started.append(sink)
        return sink

    yield make
    for sink in reversed(started):
        sink.stop()


@pytest.fixture
def smtp_sink(make_smtp_sink: Callable[..., SmtpSink]) -> SmtpSink:
    """A running smtp-sink with default options (PIPELINING, 8BITMIME, DSN)."""
    return make_smtp_sink()


# -- real proxies -------------------------------------------------------------


def _dante_or_skip() -> None:
    from realservers.proxy_peers import dante_unavailable_reason

    reason = dante_unavailable_reason()
    if reason is not None:
        real_server_unavailable(reason)


@pytest.fixture(scope="session")
def dante_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """
    A private Dante (SOCKS4a and SOCKS5, no authentication) on 127.0.0.1,
    relaying to 127.0.0.0/8 except 127.0.0.1 port ``blocked_port``, which it
    refuses (SOCKS5 reply 0x02).  Stopped by PID at the end of the session.
    """
    _dante_or_skip()
    from realservers.ports import free_port
    from realservers.proxy_peers import start_dante

    proxy = start_dante(tmp_path_factory.mktemp("dante"), blocked_port=free_port())
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def dante_auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """
    A private Dante that wants RFC 1929 username/password; ``credentials``
    are those of a system user created for the session (Dante checks system
    users) and deleted afterwards.
    """
    _dante_or_skip()
    from realservers.proxy_peers import create_system_user, start_dante

    user = create_system_user()
    try:
        proxy = start_dante(tmp_path_factory.mktemp("dante-auth"), username_auth=True)
        proxy.credentials = (user.name, user.password)
        try:
            yield proxy
        finally:
            proxy.stop()
    finally:
        user.remove()


@pytest.fixture
def make_tinyproxy(tmp_path: Any) -> Iterator[Callable[..., ProxyProcess]]:
    """
    Factory: ``make_tinyproxy(connect_ports=[...], basic_auth=None)`` starts a
    private tinyproxy (HTTP CONNECT) on 127.0.0.1 that allows CONNECT to the
    given ports only; stopped by PID at teardown.
    """
    from realservers.proxy_peers import start_tinyproxy, tinyproxy_unavailable_reason

    reason = tinyproxy_unavailable_reason()
    if reason is not None:
        real_server_unavailable(reason)
    started: list[ProxyProcess] = []

    def make(**options: Any) -> ProxyProcess:
        proxy = start_tinyproxy(tmp_path, **options)
        started.append(proxy)
        return proxy

    yield make
    for proxy in reversed(started):
        proxy.stop()


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitNode]:
    """
    A private RabbitMQ node on 127.0.0.1 (own node name, ports, epmd and
    data directory), started once per session and stopped by PID at the
    end.  ``rabbitmq.restart()`` stops and starts it on the same ports and
    data (durable queues and persistent messages survive).
    """
    from realservers.rabbitmq_peer import rabbitmq_unavailable_reason, start_rabbitmq

    reason = rabbitmq_unavailable_reason()
    if reason is not None:
        real_server_unavailable(reason)
    base = tempfile.mkdtemp(prefix="smtpconn-mq-", dir="/tmp")
    node = start_rabbitmq(Path(base))
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)
