"""
The benchmark's results as a markdown table and a PNG plot.

Ratios are always to ``smtp-source`` from the same run: for throughput
(scenarios 1 and 2) a ratio above 1 is faster than smtp-source; for time and
memory (scenarios 3 and 4) a ratio below 1 is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Summary", "markdown_table", "plot", "TARGETS"]

REFERENCE = "smtp-source"
OURS = "twisted_smtpconn"

#: The issue's targets for twisted_smtpconn, as ratios to smtp-source
#: (scenario 4: an absolute peak RSS in MiB).
TARGETS = {"one": (">=", 1.0), "large": (">=", 1.6), "pool": ("<=", 1.0), "huge": ("<", 64.0)}

_HUGE_METHOD = {
    "twisted_smtpconn": "streamed from a generator",
    "smtplib": "whole message in memory",
    "aiosmtplib": "whole message in memory",
    "twisted.mail.smtp": "streamed (file object)",
    "smtp-source": "read from a file",
}


@dataclass
class Summary:
    """
    :ivar medians: ``(client, scenario)`` -> messages/s ("one"), MiB/s
        ("large") or seconds ("pool").
    :ivar peak_rss_mib: client -> peak RSS while sending the generated message.
    :ivar checks: ``(client, scenario)`` -> (passed, detail).
    """

    clients: list[str]
    medians: dict[tuple[str, str], float]
    peak_rss_mib: dict[str, float]
    checks: dict[tuple[str, str], tuple[bool, str]]
    rounds: int
    one_count: int
    pool_count: int
    huge_size: int

    def value(self, client: str, scenario: str) -> float | None:
        if scenario == "huge":
            return self.peak_rss_mib.get(client)
        return self.medians.get((client, scenario))

    def ratio(self, client: str, scenario: str) -> float | None:
        mine, reference = self.value(client, scenario), self.value(REFERENCE, scenario)
        if mine is None or not reference:
            return None
        return mine / reference


def _cell(summary: Summary, client: str, scenario: str) -> str:
    passed, detail = summary.checks.get((client, scenario), (True, ""))
    if not passed:
        return f"✗ check failed: {detail}"
    value = summary.value(client, scenario)
    if value is None:
        return "failed"
    text = {
        "one": f"{value:,.0f} msg/s",
        "large": f"{value:,.0f} MiB/s",
        "pool": f"{value:.3f} s",
        "huge": f"{value:,.0f} MiB",
    }[scenario]
    ratio = summary.ratio(client, scenario)
    if ratio is not None and client != REFERENCE:
        text += f" ({ratio:.2f}×)"
    if scenario == "huge":
        text += f", {_HUGE_METHOD.get(client, '')}"
    return text


def _target_line(summary: Summary) -> str:
    parts = []
    names = {"one": "(1)", "large": "(2)", "pool": "(3)", "huge": "(4)"}
    for scenario, (relation, bound) in TARGETS.items():
        got = summary.peak_rss_mib.get(OURS) if scenario == "huge" else summary.ratio(OURS, scenario)
        if got is None:
            parts.append(f"{names[scenario]} not measured")
            continue
        met = {">=": got >= bound, "<=": got <= bound, "<": got < bound}[relation]
        unit = " MiB" if scenario == "huge" else "×"
        verdict = "met" if met else "missed"
        parts.append(f"{names[scenario]} {got:.2f}{unit} {relation} {bound:g}{unit}: {verdict}")
    return "Targets for twisted_smtpconn: " + "; ".join(parts) + "."


def markdown_table(summary: Summary) -> str:
    """The results as a markdown table, with the targets below it."""
    gib = summary.huge_size / 1024**3
    huge = f"{gib:g} GiB" if gib >= 1 else f"{summary.huge_size // 1024**2} MiB"
    header = (
        f"| client | (1) {summary.one_count:,} × 2 KiB, one connection "
        f"| (2) one 20 MiB message | (3) {summary.pool_count} × 2 KiB, 10 connections "
        f"| (4) peak RSS, one {huge} message |"
    )
    lines = [header, "| --- | --- | --- | --- | --- |"]
    for client in summary.clients:
        cells = [_cell(summary, client, scenario) for scenario in ("one", "large", "pool", "huge")]
        lines.append(f"| {client} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Medians of {summary.rounds} interleaved round(s) against smtp-sink on 127.0.0.1; "
        "ratios (×) are to smtp-source in the same run (above 1 is faster for (1) and (2), "
        "below 1 is better for (3) and (4))."
    )
    if OURS in summary.clients and REFERENCE in summary.clients:
        lines.append(_target_line(summary))
    return "\n".join(lines)


def plot(summary: Summary, path: Path) -> None:
    """Four bar charts, one per scenario, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "one": f"(1) {summary.one_count:,} × 2 KiB, one connection\nmessages/s (higher is better)",
        "large": "(2) one 20 MiB message\nMiB/s (higher is better)",
        "pool": f"(3) {summary.pool_count} × 2 KiB, 10 connections\nseconds (lower is better)",
        "huge": "(4) peak RSS sending the generated message\nMiB (lower is better)",
    }
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for axis, scenario in zip(axes.flat, ("one", "large", "pool", "huge")):
        names, values, colours = [], [], []
        for client in summary.clients:
            passed, _ = summary.checks.get((client, scenario), (True, ""))
            value = summary.value(client, scenario)
            if not passed or value is None:
                continue
            names.append(client)
            values.append(value)
            colours.append("#c0392b" if client == OURS else "#2c3e50" if client == REFERENCE else "#95a5a6")
        positions = range(len(names))
        axis.barh(list(positions), values, color=colours)
        axis.set_yticks(list(positions), names)
        axis.invert_yaxis()
        axis.set_title(titles[scenario], fontsize=10)
        for position, (client, value) in enumerate(zip(names, values)):
            ratio = summary.ratio(client, scenario)
            label = f" {value:,.0f}" if value >= 10 else f" {value:.3f}"
            if ratio is not None and client != REFERENCE:
                label += f"  ({ratio:.2f}×)"
            axis.text(value, position, label, va="center", fontsize=8)
        axis.margins(x=0.45)
        if scenario == "huge" and OURS in names:
            axis.axvline(64, color="#c0392b", linestyle="--", linewidth=1)
    figure.suptitle("twisted_smtpconn benchmark against Postfix smtp-sink (127.0.0.1)", fontsize=12)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
