#!/usr/bin/env bash
# Run every check of twisted_smtpconn, the way CI does (.ci/run calls this).
#
#   bash scripts/test.sh [extra pytest arguments]
#
# Works on a fresh Debian machine that has only Python 3:
#
#  1. as root, installs the real servers the tests drive (postfix,
#     dovecot-core, the proxies dante-server and tinyproxy, and the broker
#     rabbitmq-server) with apt-get, with service starts forbidden so that no
#     packaged daemon listens; as another user it says so and skips this;
#  2. creates .venv (python3 -m venv) unless it exists;
#  3. builds the wheel and installs it, not editable, with the test, docs, ntlm,
#     bench and queue extras, and checks that the wheel holds every module of the tree;
#  4. rebuilds Twisted's plugin cache and checks that twistd lists smtpsend;
#  5. runs pytest against the INSTALLED package, with coverage;
#  6. runs mypy --strict (mypy.ini: the package and tests/typed_consumer.py);
#  7. builds the docs with Sphinx, warnings as errors, and checks that the
#     README's example is docs/examples/send_one.py;
#  8. runs docs/examples/send_one.py against a local aiosmtpd server.
#
# SMTPCONN_REQUIRE_REAL_SERVERS=1 is exported, so tests that need Postfix
# fail instead of skipping when it is missing.  Any failing step fails the
# script.  Environment: PYTHON (default python3) is the venv's interpreter.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
venv="$repo/.venv"
python=${PYTHON:-python3}
started=$SECONDS

step() {
    printf '\n==> [%ds] %s\n' "$((SECONDS - started))" "$*"
}

# -- 1. system packages ------------------------------------------------------
apt_packages=(postfix dovecot-core dante-server tinyproxy rabbitmq-server time)
if ! "$python" -c "import ensurepip" >/dev/null 2>&1; then
    # Debian's python3 ships venv's pip bootstrap separately.
    apt_packages+=(python3-venv)
fi
step "system packages: ${apt_packages[*]}"
all_installed() {
    local package
    for package in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) == "install ok installed" ]] || return 1
    done
}
packaged_daemons() {
    # PIDs of tinyproxy/danted running with the packages' configuration: the
    # test fixtures always name their own file (-c / -f), the services never.
    # And RabbitMQ's: the system node (the fixtures' node is started with
    # "-start_epmd false", the service never) and an epmd without the
    # fixtures' -port.
    local pid args
    for pid in $(pgrep -x tinyproxy || true) $(pgrep -x danted || true); do
        args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        [[ -n $args ]] || continue # a zombie: nothing left to stop
        if [[ " $args" != *" -c "* && " $args" != *" -f "* ]]; then
            echo "$pid"
        fi
    done
    local name
    for pid in $(pgrep -x beam.smp || true) $(pgrep -x epmd || true); do
        args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        name=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        [[ -n $args ]] || continue
        if [[ $name == beam.smp ]]; then
            if [[ $args == *" rabbit boot"* && $args != *" -start_epmd false"* ]]; then
                echo "$pid"
            fi
        elif [[ " $args" != *" -port "* ]]; then
            echo "$pid"
        fi
    done
}
if [[ $(id -u) -ne 0 ]]; then
    echo "not root: skipping apt-get; install ${apt_packages[*]} yourself for the Postfix, proxy and queue tests"
elif ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get on this machine: skipping; install ${apt_packages[*]} yourself"
elif all_installed "${apt_packages[@]}"; then
    echo "already installed"
else
    # Without the preselection postfix's installer asks which kind of mail
    # system this is; "No configuration" leaves it unconfigured and stopped,
    # and the tests configure their own instances.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # The packages' maintainer scripts would start their system services
    # (tinyproxy on port 8888 of every interface, danted...); the tests only
    # run private instances.  invoke-rc.d and deb-systemd-invoke ask
    # policy-rc.d first, and 101 means "not allowed": nothing starts.  An
    # existing policy-rc.d is put back afterwards, ours removed.
    policy=/usr/sbin/policy-rc.d
    policy_saved="$policy.smtpconn-saved"
    restore_policy() {
        if [[ -e $policy_saved ]]; then
            mv -f "$policy_saved" "$policy"
        else
            rm -f "$policy"
        fi
    }
    if [[ -e $policy ]]; then
        mv -f "$policy" "$policy_saved"
    fi
    trap restore_policy EXIT
    printf '#!/bin/sh\n# scripts/test.sh: no service starts during its apt-get install\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    daemons_before=$(packaged_daemons)
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${apt_packages[@]}"
    restore_policy
    trap - EXIT
    # Should a maintainer script have started a daemon anyway (a proxy,
    # RabbitMQ's node or the epmd it starts), stop exactly that one (by
    # PID), never one that was running before.
    for pid in $(packaged_daemons); do
        if ! grep -qxw "$pid" <<<"$daemons_before"; then
            echo "stopping $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null || echo "PID $pid"), started by the install"
            kill "$pid" 2>/dev/null || true
        fi
    done
fi

# -- 2. virtualenv -----------------------------------------------------------
step "virtualenv $venv"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
vpython="$venv/bin/python"
"$vpython" --version

# -- 3. wheel ----------------------------------------------------------------
step "build and install the wheel"
wheelhouse="$repo/build/wheelhouse"
# setuptools builds in build/lib and never deletes from it: a module removed
# from the tree would live on in the wheel.  Start from nothing.
rm -rf "$repo/build" "$repo"/*.egg-info
"$vpython" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$wheelhouse" "$repo"
wheels=("$wheelhouse"/twisted_smtpconn-*.whl)
if [[ ${#wheels[@]} -ne 1 || ! -f ${wheels[0]} ]]; then
    echo "expected exactly one wheel in $wheelhouse, found: ${wheels[*]}" >&2
    exit 1
fi
wheel=${wheels[0]}
# An install of the same version would otherwise count as "already
# satisfied" and the tests would run against the old code.
"$vpython" -m pip uninstall --quiet --yes twisted_smtpconn >/dev/null 2>&1 || true
"$vpython" -m pip install --quiet --disable-pip-version-check "${wheel}[test,docs,ntlm,bench,queue]"

step "check the wheel's contents"
"$vpython" - "$wheel" "$repo" <<'EOF'
import sys
import zipfile
from pathlib import Path

wheel, repo = sys.argv[1], Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
wanted = {p.relative_to(repo).as_posix() for p in (repo / "twisted_smtpconn").rglob("*.py")}
wanted |= {p.relative_to(repo).as_posix() for p in (repo / "twisted" / "plugins").glob("*.py")}
wanted.add("twisted_smtpconn/py.typed")
missing = sorted(wanted - names)
if missing:
    sys.exit(f"the wheel lacks {missing}: add the package to setup.cfg's packages")
print(f"{len(wanted)} files present in {Path(wheel).name}")
EOF

# Everything below runs the venv's programs from a directory outside the
# checkout whenever Python would put the current directory on sys.path,
# where ./twisted_smtpconn would shadow the installed package.
step "check that the installed package is the one imported"
(cd "$venv" && "$vpython" -c "
import sys, twisted_smtpconn
path = twisted_smtpconn.__file__
assert path.startswith(sys.prefix), f'imported from {path}, not the venv'
print('twisted_smtpconn from', path)
")

# -- 4. twistd plugin --------------------------------------------------------
step "twisted plugin cache"
(cd "$venv" && "$vpython" -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))")
if compgen -G "$repo/twisted/plugins/*.py" >/dev/null; then
    # The whole help text first: grep -q may stop reading early, and the
    # writer's SIGPIPE would fail the pipeline under pipefail.
    twistd_help=$(cd "$venv" && "$venv/bin/twistd" --help)
    if ! grep -qw smtpsend <<<"$twistd_help"; then
        echo "twistd --help does not list smtpsend:" >&2
        echo "$twistd_help" >&2
        exit 1
    fi
    echo "twistd lists smtpsend"
else
    echo "no dropin in twisted/plugins/ yet: not checking twistd --help"
fi

# -- 5. tests ----------------------------------------------------------------
step "pytest"
export SMTPCONN_REQUIRE_REAL_SERVERS=1
# The venv's pytest script (not python -m pytest, which would put the
# checkout on sys.path): the tests import the installed package.  Coverage
# measures the installed package too (setup.cfg: source_pkgs).
"$venv/bin/pytest" --cov --cov-report=term "$@"

# -- 6. types ----------------------------------------------------------------
step "mypy --strict"
"$venv/bin/mypy" --strict

# -- 7. docs -----------------------------------------------------------------
step "README example is docs/examples/send_one.py"
"$vpython" - "$repo" <<'EOF'
import ast
import re
import sys
import textwrap
from pathlib import Path

repo = Path(sys.argv[1])
example = (repo / "docs/examples/send_one.py").read_text(encoding="utf-8")
first = ast.parse(example).body[0]
is_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
lines = example.splitlines()[first.end_lineno if is_docstring else 0:]
body = "\n".join(lines).strip()
readme = (repo / "README.rst").read_text(encoding="utf-8")
blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", readme, re.M)
if not any(textwrap.dedent(block).strip() == body for block in blocks):
    sys.exit("README.rst's python example differs from docs/examples/send_one.py (without its docstring)")
print("README example matches")
EOF

step "sphinx-build -W"
rm -rf "$repo/docs/_build"
"$venv/bin/sphinx-build" -W --keep-going -q -b html "$repo/docs" "$repo/docs/_build/html"

# -- 8. the example, for real ------------------------------------------------
step "docs/examples/send_one.py against aiosmtpd"
port=$("$vpython" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
server_log=$(mktemp)
(cd "$venv" && PYTHONUNBUFFERED=1 exec "$vpython" -m aiosmtpd --nosetuid --listen "127.0.0.1:$port") >"$server_log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; rm -f "$server_log"' EXIT
for _ in $(seq 100); do
    if "$vpython" -c "import socket; socket.create_connection(('127.0.0.1', $port), 1).close()" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
"$vpython" "$repo/docs/examples/send_one.py" 127.0.0.1 "$port"
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
trap - EXIT
if ! grep -q '^hello' "$server_log"; then
    echo "aiosmtpd did not print the example's message:" >&2
    cat "$server_log" >&2
    rm -f "$server_log"
    exit 1
fi
rm -f "$server_log"

step "all checks passed"
