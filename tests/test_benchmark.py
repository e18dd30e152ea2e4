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


def _summary(**overrides: object) -> object:
    from _report import Summary

    fields: dict[str, object] = dict(
        pairs=[
            ("twisted_smtpconn/awaited", "one"),
            ("twisted_smtpconn/awaited", "large-gen"),
            ("twisted_smtpconn/awaited", "huge"),
            ("twisted_smtpconn/queued", "one"),
            ("twisted_smtpconn/pool", "pool"),
            ("smtplib", "one"),
            ("smtplib", "large"),
            ("smtp-source", "one"),
            ("smtp-source", "large"),
            ("smtp-source", "pool"),
            ("smtp-source", "huge"),
        ],
        values={
            ("twisted_smtpconn/awaited", "one"): 6000.0,
            ("twisted_smtpconn/awaited", "large-gen"): 300.0,
            ("twisted_smtpconn/awaited", "huge"): 50.0,
            ("twisted_smtpconn/queued", "one"): 12000.0,
            ("twisted_smtpconn/pool", "pool"): 0.03,
            ("smtplib", "one"): 2500.0,
            ("smtp-source", "one"): 5000.0,
            ("smtp-source", "large"): 200.0,
            ("smtp-source", "pool"): 0.02,
            ("smtp-source", "huge"): 400.0,
        },
        cpu_per_message={
            ("twisted_smtpconn/queued", "one"): 60e-6,
            ("twisted_smtpconn/awaited", "large-gen"): 0.0425,
        },
        checks={("smtplib", "large"): (False, "1 of 1 messages arrived, 1 differ")},
        rounds=5,
        one_count=2000,
        pool_count=200,
        huge_size=1024**3,
        round_ratios={("twisted_smtpconn/awaited", "one"): [1.1, 1.3, 1.2]},
    )
    fields.update(overrides)
    return Summary(**fields)  # type: ignore[arg-type]


def test_report_gives_ratios_to_smtp_source_cpu_and_the_targets() -> None:
    from _report import Summary, before_after_table, markdown_table

    summary = _summary()
    before = _summary(cpu_per_message={("twisted_smtpconn/queued", "one"): 280e-6})
    assert isinstance(before, Summary)
    table = markdown_table(summary, before)  # type: ignore[arg-type]
    # The generator form is compared with smtp-source's 20 MiB run; a
    # subject that does not run a scenario gets a dash.
    assert (
        "| twisted_smtpconn/awaited | 6,000 msg/s (1.20×; 1.10–1.30) | — | 300 MiB/s (1.50×) | — "
        "| 50 MiB (0.12×), streamed from a generator |"
    ) in table
    assert "| smtplib | 2,500 msg/s (0.50×) | ✗ check failed: 1 of 1 messages arrived, 1 differ |" in table
    assert "| twisted_smtpconn/queued | 60 µs | — | — | — |" in table
    assert "| twisted_smtpconn/awaited | — | — | 42.5 ms | — |" in table
    assert "- (1) awaited: 1.200× >= 1.2×: met" in table
    assert "- (1) queued: 2.400× >= 2×: met" in table
    assert "- (2) generator awaited: 1.500× >= 2×: **missed**" in table
    assert "- (3) pool: 1.500× <= 1×: **missed**" in table
    assert "- (4) awaited: 50.000 MiB <= 64 MiB: met" in table
    assert "- CPU per message, (1) queued: 60 µs, 0.21 of before (280 µs) <= 0.25: met" in table
    from _report import rst_table

    rst = rst_table(summary)  # type: ignore[arg-type]
    assert rst.startswith(".. list-table::\n   :header-rows: 1\n")
    assert "   * - twisted_smtpconn/awaited\n     - 6,000 msg/s (1.20×; 1.10–1.30)\n     - —\n" in rst
    assert "   * - twisted_smtpconn/queued\n     - 60 µs\n" in rst
    pasted = before_after_table(before, summary)  # type: ignore[arg-type]
    assert "| twisted_smtpconn/queued | 2.40 → 2.40 | — → — | — → — | — → — | 280 µs → 60 µs | — → — |" in pasted


def test_summary_survives_json() -> None:
    import json

    from _report import Summary

    summary = _summary()
    assert isinstance(summary, Summary)
    again = Summary.from_json(json.loads(json.dumps(summary.to_json())))
    assert again == summary
    assert summary.to_json()["ratios"]["twisted_smtpconn/queued|one"] == 2.4


def test_medians_cpu_and_round_ratios_from_runs() -> None:
    from bench import Plan, Run, summarise

    def run(client: str, scenario: str, round_number: int, elapsed: float, cpu: float | None) -> Run:
        return Run(client, scenario, round_number, True, elapsed, cpu, 0.5, 1000, 100)

    runs = [
        run("twisted_smtpconn/queued", "one", 0, 0.02, 0.010),
        run("smtp-source", "one", 0, 0.04, None),
        run("twisted_smtpconn/queued", "one", 1, 0.05, 0.012),
        run("smtp-source", "one", 1, 0.05, None),
        run("twisted_smtpconn/queued", "one", 2, 0.04, 0.030),
        run("smtp-source", "one", 2, 0.02, None),
        Run("twisted_smtpconn/queued", "pool", 0, False, error="refused"),
    ]
    pairs = [("twisted_smtpconn/queued", "one"), ("twisted_smtpconn/queued", "pool"), ("smtp-source", "one")]
    summary = summarise(runs, [], Plan(rounds=3, one_count=100, pool_count=20, huge_size=1), pairs)
    assert summary.values == {("twisted_smtpconn/queued", "one"): 2500.0, ("smtp-source", "one"): 2500.0}
    # Per message; smtp-source's from its whole process.
    assert summary.cpu_per_message == {("twisted_smtpconn/queued", "one"): 0.012 / 100, ("smtp-source", "one"): 0.005}
    assert summary.round_ratios == {("twisted_smtpconn/queued", "one"): [2.0, 1.0, 0.5]}


def test_selection_of_clients_styles_and_scenarios() -> None:
    from bench import select

    # Every style of ours in (1) and (3), and smtp-source added as the reference.
    assert select(None, ["twisted_smtpconn:one", "*/queued:pool"]) == [
        ("twisted_smtpconn/awaited", "one"),
        ("twisted_smtpconn/queued", "one"),
        ("twisted_smtpconn/queued", "pool"),
        ("twisted_smtpconn/pool", "one"),
        ("smtp-source", "one"),
        ("smtp-source", "pool"),
    ]
    # The generator form's reference is smtp-source's 20 MiB run.
    assert select(["twisted_smtpconn/pool"], ["*:large-gen"]) == [
        ("twisted_smtpconn/pool", "large-gen"),
        ("smtp-source", "large"),
    ]
    assert select(["smtplib"], None, reference=False) == [
        ("smtplib", scenario) for scenario in ("one", "large", "pool", "huge")
    ]
    # Only ours takes a generator; the memory scenario runs in one style.
    everything = select(None, None)
    assert ("smtplib", "large-gen") not in everything
    assert [pair for pair in everything if pair[1] == "huge"][0] == ("twisted_smtpconn/awaited", "huge")
    with pytest.raises(ValueError, match="selects nothing"):
        select(None, ["smtplib:large-gen"])
    with pytest.raises(ValueError, match="unknown client"):
        select(["sendmail"], None)


def test_a_before_checkout_runs_beside_this_one() -> None:
    from _report import Summary, before_after_table
    from bench import all_subjects, select

    subjects = all_subjects(before_tree=True)
    assert subjects[:6] == (
        "twisted_smtpconn/awaited",
        "twisted_smtpconn/queued",
        "twisted_smtpconn/pool",
        "twisted_smtpconn/awaited@before",
        "twisted_smtpconn/queued@before",
        "twisted_smtpconn/pool@before",
    )
    # Patterns reach both checkouts; the memory run is in the awaited style of each.
    assert select(None, ["twisted_smtpconn/queued*:one"], subjects=subjects) == [
        ("twisted_smtpconn/queued", "one"),
        ("twisted_smtpconn/queued@before", "one"),
        ("smtp-source", "one"),
    ]
    assert ("twisted_smtpconn/awaited@before", "huge") in select(None, None, subjects=subjects)
    summary = Summary(
        pairs=[("twisted_smtpconn/queued", "one"), ("twisted_smtpconn/queued@before", "one"), ("smtp-source", "one")],
        values={
            ("twisted_smtpconn/queued", "one"): 10000.0,
            ("twisted_smtpconn/queued@before", "one"): 4000.0,
            ("smtp-source", "one"): 5000.0,
        },
        cpu_per_message={("twisted_smtpconn/queued", "one"): 50e-6, ("twisted_smtpconn/queued@before", "one"): 250e-6},
        checks={},
        rounds=5,
        one_count=2000,
        pool_count=200,
        huge_size=1024**3,
    )
    before, after = summary.labelled("before"), summary.unlabelled()
    assert before.values == {("twisted_smtpconn/queued", "one"): 4000.0, ("smtp-source", "one"): 5000.0}
    assert after.subjects == ["twisted_smtpconn/queued", "smtp-source"]
    table = before_after_table(before, after, same_run=True)
    assert "| twisted_smtpconn/queued | 0.80 → 2.00 | — → — | — → — | — → — | 250 µs → 50 µs | — → — |" in table
    assert "same 5 interleaved round(s)" in table


def test_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from _report import plot

    path = tmp_path / "plot.png"
    plot(_summary(), path)  # type: ignore[arg-type]
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.postfix
@pytest.mark.slow
def test_a_small_run_checks_and_times_every_style(tmp_path: Path) -> None:
    """
    The harness in its smallest form: each calling style of ours and
    smtp-source pass the check and complete (1) and (3), and the JSON holds
    what a before/after table is made from.
    """
    if shutil.which("smtp-sink", path="/usr/sbin:/usr/lib/postfix/sbin") is None:
        from conftest import real_server_unavailable

        real_server_unavailable("smtp-sink and smtp-source are not installed (package postfix)")
    out = tmp_path / "runs.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench.py"),
            "--only",
            "twisted_smtpconn:one,twisted_smtpconn:pool",
            "--rounds",
            "1",
            "--one-count",
            "10",
            "--pool-count",
            "20",
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
    subjects = ("twisted_smtpconn/awaited", "twisted_smtpconn/queued", "twisted_smtpconn/pool", "smtp-source")
    assert [(c["client"], c["scenario"], c["ok"]) for c in results["checks"]] == [
        (subject, scenario, True) for subject in subjects for scenario in ("one", "pool")
    ]
    assert len(results["runs"]) == 8 and all(run["ok"] for run in results["runs"])
    for run in results["runs"]:
        assert run["messages"] == {"one": 10, "pool": 20}[run["scenario"]]
        assert (run["cpu"] is None) == (run["client"] == "smtp-source")
    summary = results["summary"]
    assert set(summary["ratios"]) == {f"{subject}|{scenario}" for subject in subjects[:3] for scenario in ("one", "pool")}
    assert all(summary["cpu_per_message"][f"{subject}|one"] > 0 for subject in subjects)
    table = completed.stdout.decode()
    assert table.startswith("| client |") and "| twisted_smtpconn/queued |" in table
    assert "| CPU per message |" in table
