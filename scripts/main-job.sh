#!/usr/bin/env bash
# The main job: install twisted_smtpconn into ./.venv and send one message.
#
#   bash scripts/main-job.sh
#
# Creates .venv (python3 -m venv) unless it exists, installs the package from
# this checkout the way a user would (pip install ., not editable, so that the
# twistd dropin lands in site-packages/twisted/plugins/), then runs
#
#   .venv/bin/twistd -n --pidfile= smtpsend --subject hi --body hello --to you@example.test
#
# With no --host, smtpsend starts its own capture server on 127.0.0.1, sends
# through it with STARTTLS and AUTH, and prints where the message landed, so
# this needs no mail server and no network beyond PyPI for the install.
# The exit status is smtpsend's (0: the message was accepted).
#
# Environment: PYTHON (default python3) is the interpreter for the venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
venv="$repo/.venv"
python=${PYTHON:-python3}

if [[ ! -x "$venv/bin/python" ]]; then
    echo "main-job: creating $venv"
    "$python" -m venv "$venv"
fi

echo "main-job: installing twisted_smtpconn from $repo"
# Remove an older install of the same version first: pip would otherwise keep
# it ("already satisfied") and run yesterday's code.
"$venv/bin/python" -m pip uninstall --quiet --yes twisted_smtpconn >/dev/null 2>&1 || true
# setuptools builds in build/lib and never deletes from it: start afresh so
# that a module removed from the tree does not live on in the install.
rm -rf "$repo/build" "$repo"/*.egg-info
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$repo"

# Run Python from a neutral directory: with the checkout as the current
# directory, its source tree (and its twisted/plugins/) would shadow the
# installed package.
cd "$venv"

# Build Twisted's plugin cache now, so that twistd does not try (and fail
# noisily, when site-packages is read-only) to write it on first use.
"$venv/bin/python" -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

# Read the whole help before grep looks at it: grep -q may stop reading early,
# and under pipefail the writer's SIGPIPE would fail the test.
twistd_help=$("$venv/bin/twistd" --help)
if grep -qw smtpsend <<<"$twistd_help"; then
    echo "main-job: twistd -n --pidfile= smtpsend --subject hi --body hello --to you@example.test"
    exec "$venv/bin/twistd" -n --pidfile= smtpsend --subject hi --body hello --to you@example.test
fi

# Without the smtpsend dropin, fall back to the plain library example.  It
# needs an SMTP server; SMTP_HOST/SMTP_PORT say which (default localhost:25).
echo "main-job: twistd does not list smtpsend; running docs/examples/send_one.py instead"
exec "$venv/bin/python" "$repo/docs/examples/send_one.py" "${SMTP_HOST:-localhost}" "${SMTP_PORT:-25}"
