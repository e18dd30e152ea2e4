"""
The benchmark's own pieces (``benchmarks/``): its messages, its report, and
one small end-to-end run so that the script cannot rot unnoticed.  Nothing
here asserts a timing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module", autouse=True)
def _benchmarks_on_path() -> Iterator[None]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield
    finally:
        sys.path.remove(str(BENCHMARKS))


_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def test_messages_are_crlf_with_dot_lines_and_the_stated_sizes() -> None:
    import _messages as m

    small, large = m.small_message(), m.large_message()
    assert len(small) == m.SMALL_SIZE and len(large) == m.LARGE_SIZE
    generated = b"".join(m.generated_chunks(3 * 1024 * 1024))
    assert len(generated) == m.generated_size(3 * 1024 * 1024)
    for message in (small, large, generated):
        assert _BARE.search(message) is None
        assert message.endswith(b"\r\n")
        assert b"\r\n.\r\n" in message and b"\r\n.a line" in message
    assert b"".join(m.generated_lf_chunks(3 * 1024 * 1024)) == m.to_lf(generated)
    # The same bytes in every process: nothing random, nothing from the clock.
    assert m.large_message() == large


def test_report_gives_ratios_to_smtp_source_and_the_targets() -> None:
    from _report import Summary, markdown_table

    summary = Summary(
        clients=["twisted_smtpconn", "smtplib", "smtp-source"],
        medians={
            ("twisted_smtpconn", "one"): 6000.0,
            ("smtp-source", "one"): 5000.0,
            ("twisted_smtpconn", "large"): 300.0,
            ("smtp-source", "large"): 200.0,
            ("twisted_smtpconn", "pool"): 0.03,
            ("smtp-source", "pool"): 0.02,
            ("smtplib", "one"): 2500.0,
        },
        peak_rss_mib={"twisted_smtpconn": 50.0, "smtp-source": 400.0},
        checks={("smtplib", "large"): (False, "1 of 1 messages arrived, 1 differ")},
        rounds=5,
        one_count=2000,
        pool_count=200,
        huge_size=1024**3,
    )
    table = markdown_table(summary)
    assert "| twisted_smtpconn | 6,000 msg/s (1.20×) | 300 MiB/s (1.50×) | 0.030 s (1.50×) | 50 MiB (0.12×)" in table
    assert "| smtplib | 2,500 msg/s (0.50×) | ✗ check failed: 1 of 1 messages arrived, 1 differ |" in table
    assert "(1) 1.20× >= 1×: met; (2) 1.50× >= 1.6×: missed; (3) 1.50× <= 1×: missed; (4) 50.00 MiB < 64 MiB: met" in table


def test_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from _report import Summary, plot

    summary = Summary(
        clients=["twisted_smtpconn", "smtp-source"],
        medians={("twisted_smtpconn", "one"): 6000.0, ("smtp-source", "one"): 5000.0},
        peak_rss_mib={"twisted_smtpconn": 50.0},
        checks={},
        rounds=1,
        one_count=2000,
        pool_count=200,
        huge_size=8 * 1024**2,
    )
    path = tmp_path / "plot.png"
    plot(summary, path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.postfix
@pytest.mark.slow
def test_a_small_run_checks_and_times_both_ends(tmp_path: Path) -> None:
    """Our client and smtp-source pass the check and complete every scenario."""
    if shutil.which("smtp-sink", path="/usr/sbin:/usr/lib/postfix/sbin") is None:
        from conftest import real_server_unavailable

        real_server_unavailable("smtp-sink and smtp-source are not installed (package postfix)")
    out = tmp_path / "runs.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench.py"),
            "--clients",
            "twisted_smtpconn,smtp-source",
            "--rounds",
            "1",
            "--huge-mib",
            "4",
            "--no-plot",
            "--json",
            str(out),
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    results = json.loads(out.read_text())
    assert [(c["client"], c["scenario"], c["ok"]) for c in results["checks"]] == [
        (client, scenario, True)
        for client in ("twisted_smtpconn", "smtp-source")
        for scenario in ("one", "large", "pool", "huge")
    ]
    assert len(results["runs"]) == 8 and all(run["ok"] for run in results["runs"])
    table = completed.stdout.decode()
    assert table.startswith("| client |") and "| twisted_smtpconn |" in table
