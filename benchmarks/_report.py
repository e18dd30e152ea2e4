"""
The benchmark's results as markdown tables and a PNG plot.

Ratios are always to ``smtp-source`` from the same run: for throughput
(scenarios 1 and 2) a ratio above 1 is faster than smtp-source; for time and
memory (scenarios 3 and 4) a ratio below 1 is better.  Both forms of the
20 MiB message (``large``, ``large-gen``) are compared with smtp-source
sending it from a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Summary",
    "markdown_table",
    "before_after_table",
    "rst_table",
    "plot",
    "TARGETS",
    "OURS",
    "REFERENCE",
    "REFERENCE_SCENARIO",
]

REFERENCE = "smtp-source"
OURS = "twisted_smtpconn"
#: The reference's scenario for each scenario it does not run itself.
REFERENCE_SCENARIO = {"large-gen": "large"}

_ORDER = ("one", "large", "large-gen", "pool", "huge")

#: The targets for twisted_smtpconn: (subject, scenario, relation, bound),
#: a ratio to smtp-source, except for "huge": a peak RSS in MiB.
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    (f"{OURS}/awaited", "one", ">=", 1.2),
    (f"{OURS}/queued", "one", ">=", 2.0),
    *((f"{OURS}/{style}", scenario, ">=", 2.0) for style in ("awaited", "queued", "pool") for scenario in ("large", "large-gen")),
    *((f"{OURS}/{style}", "pool", "<=", 1.0) for style in ("awaited", "queued", "pool")),
    (f"{OURS}/awaited", "huge", "<=", 64.0),
)
#: CPU per message of queued 2 KiB sends: at most this share of the
#: before run's (checked when a before run is given).
CPU_TARGET = (f"{OURS}/queued", "one", 0.25)

_HUGE_METHOD = {
    "smtplib": "whole message in memory",
    "aiosmtplib": "whole message in memory",
    "twisted.mail.smtp": "streamed (file object)",
    REFERENCE: "read from a file",
}

_SHORT = {"one": "(1)", "large": "(2) bytes", "large-gen": "(2) generator", "pool": "(3)", "huge": "(4)"}


@dataclass
class Summary:
    """
    :ivar pairs: the ``(subject, scenario)`` pairs that were to run, in
        table order (a subject is a client, or ``twisted_smtpconn/STYLE``).
    :ivar values: ``(subject, scenario)`` -> the median messages/s ("one"),
        MiB/s ("large", "large-gen"), seconds ("pool"), or the peak RSS in
        MiB ("huge").
    :ivar cpu_per_message: ``(subject, scenario)`` -> the median CPU
        seconds per message.
    :ivar checks: ``(subject, scenario)`` -> (passed, detail).
    :ivar round_ratios: ``(subject, scenario)`` -> each round's ratio to
        smtp-source in the same round (timed scenarios only).
    """

    pairs: list[tuple[str, str]]
    values: dict[tuple[str, str], float]
    cpu_per_message: dict[tuple[str, str], float]
    checks: dict[tuple[str, str], tuple[bool, str]]
    rounds: int
    one_count: int
    pool_count: int
    huge_size: int
    round_ratios: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(subject for subject, _ in self.pairs))

    @property
    def scenarios(self) -> list[str]:
        present = {scenario for _, scenario in self.pairs}
        return [scenario for scenario in _ORDER if scenario in present]

    def value(self, subject: str, scenario: str) -> float | None:
        return self.values.get((subject, scenario))

    def ratio(self, subject: str, scenario: str) -> float | None:
        """To smtp-source in the same run; for "huge", of the peak RSS."""
        mine = self.value(subject, scenario)
        reference = self.value(REFERENCE, REFERENCE_SCENARIO.get(scenario, scenario))
        if mine is None or not reference:
            return None
        return mine / reference

    def labelled(self, label: str) -> Summary:
        """
        The subjects run from another checkout (``NAME@label``) under their
        plain names, with smtp-source: the "before" of a before/after table
        made from one run.
        """
        suffix = "@" + label

        def keep(mapping: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
            out = {}
            for (subject, scenario), value in mapping.items():
                if subject.endswith(suffix):
                    out[subject.removesuffix(suffix), scenario] = value
                elif subject == REFERENCE:
                    out[subject, scenario] = value
            return out

        return Summary(
            pairs=list(keep(dict.fromkeys(self.pairs))),
            values=keep(self.values),
            cpu_per_message=keep(self.cpu_per_message),
            checks=keep(self.checks),
            rounds=self.rounds,
            one_count=self.one_count,
            pool_count=self.pool_count,
            huge_size=self.huge_size,
            round_ratios=keep(self.round_ratios),
        )

    def unlabelled(self) -> Summary:
        """This summary without the subjects run from another checkout."""

        def keep(mapping: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
            return {key: value for key, value in mapping.items() if "@" not in key[0]}

        return Summary(
            pairs=list(keep(dict.fromkeys(self.pairs))),
            values=keep(self.values),
            cpu_per_message=keep(self.cpu_per_message),
            checks=keep(self.checks),
            rounds=self.rounds,
            one_count=self.one_count,
            pool_count=self.pool_count,
            huge_size=self.huge_size,
            round_ratios=keep(self.round_ratios),
        )

    def to_json(self) -> dict[str, Any]:
        def keyed(mapping: dict[tuple[str, str], Any]) -> dict[str, Any]:
            return {f"{subject}|{scenario}": value for (subject, scenario), value in mapping.items()}

        ratios = {}
        for subject, scenario in self.pairs:
            ratio = self.ratio(subject, scenario)
            if ratio is not None and subject != REFERENCE:
                ratios[subject, scenario] = ratio
        return {
            "pairs": [list(pair) for pair in self.pairs],
            "values": keyed(self.values),
            "ratios": keyed(ratios),
            "cpu_per_message": keyed(self.cpu_per_message),
            "checks": {key: list(value) for key, value in keyed(self.checks).items()},
            "rounds": self.rounds,
            "one_count": self.one_count,
            "pool_count": self.pool_count,
            "huge_size": self.huge_size,
            "round_ratios": keyed(self.round_ratios),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        def unkeyed(mapping: dict[str, Any]) -> dict[tuple[str, str], Any]:
            out = {}
            for key, value in mapping.items():
                subject, _, scenario = key.rpartition("|")
                out[subject, scenario] = value
            return out

        return cls(
            pairs=[(subject, scenario) for subject, scenario in data["pairs"]],
            values=unkeyed(data["values"]),
            cpu_per_message=unkeyed(data["cpu_per_message"]),
            checks={key: (bool(ok), str(detail)) for key, (ok, detail) in unkeyed(data["checks"]).items()},
            rounds=int(data["rounds"]),
            one_count=int(data["one_count"]),
            pool_count=int(data["pool_count"]),
            huge_size=int(data["huge_size"]),
            round_ratios={key: [float(r) for r in value] for key, value in unkeyed(data.get("round_ratios", {})).items()},
        )


def _huge_label(summary: Summary) -> str:
    gib = summary.huge_size / 1024**3
    return f"{gib:g} GiB" if gib >= 1 else f"{summary.huge_size // 1024**2} MiB"


def _headers(summary: Summary) -> dict[str, str]:
    return {
        "one": f"(1) {summary.one_count:,} × 2 KiB, one connection",
        "large": "(2) one 20 MiB message, bytes",
        "large-gen": "(2) the same, generator of 64 KiB chunks",
        "pool": f"(3) {summary.pool_count} × 2 KiB, 10 connections",
        "huge": f"(4) peak RSS, one {_huge_label(summary)} message",
    }


def _format(scenario: str, value: float) -> str:
    if scenario == "one":
        return f"{value:,.0f} msg/s"
    if scenario in ("large", "large-gen"):
        return f"{value:,.0f} MiB/s"
    if scenario == "pool":
        return f"{value:.3f} s"
    return f"{value:,.0f} MiB"


def _cell(summary: Summary, subject: str, scenario: str) -> str:
    if (subject, scenario) not in summary.pairs:
        return "—"
    passed, detail = summary.checks.get((subject, scenario), (True, ""))
    if not passed:
        return f"✗ check failed: {detail}"
    value = summary.value(subject, scenario)
    if value is None:
        return "failed"
    text = _format(scenario, value)
    ratio = summary.ratio(subject, scenario)
    if ratio is not None and subject != REFERENCE:
        spread = summary.round_ratios.get((subject, scenario), [])
        if len(spread) > 1:
            text += f" ({ratio:.2f}×; {min(spread):.2f}–{max(spread):.2f})"
        else:
            text += f" ({ratio:.2f}×)"
    if scenario == "huge":
        method = "streamed from a generator" if subject.startswith(OURS) else _HUGE_METHOD.get(subject, "")
        text += f", {method}"
    return text


def _cpu(seconds: float | None, scenario: str) -> str:
    if seconds is None:
        return "—"
    if scenario in ("large", "large-gen"):
        return f"{seconds * 1e3:,.1f} ms"
    return f"{seconds * 1e6:,.0f} µs"


def _verdict(got: float, relation: str, bound: float) -> str:
    met = got >= bound if relation == ">=" else got <= bound
    return "met" if met else "**missed**"


def target_lines(summary: Summary, before: Summary | None = None) -> list[str]:
    """One line per target of the issue that this run measured."""
    lines = []
    for subject, scenario, relation, bound in TARGETS:
        if (subject, scenario) not in summary.pairs:
            continue
        style = subject.partition("/")[2]
        if scenario == "huge":
            got, unit = summary.value(subject, scenario), " MiB"
        else:
            got, unit = summary.ratio(subject, scenario), "×"
        if got is None:
            lines.append(f"- {_SHORT[scenario]} {style}: not measured")
        else:
            lines.append(
                f"- {_SHORT[scenario]} {style}: {got:.3f}{unit} {relation} {bound:g}{unit}: "
                + _verdict(got, relation, bound)
            )
    subject, scenario, share = CPU_TARGET
    now = summary.cpu_per_message.get((subject, scenario))
    if before is not None and now is not None:
        then = before.cpu_per_message.get((subject, scenario))
        if then:
            lines.append(
                f"- CPU per message, (1) queued: {now * 1e6:,.0f} µs, {now / then:.2f} of before "
                f"({then * 1e6:,.0f} µs) <= {share:g}: " + _verdict(now / then, "<=", share)
            )
    return lines


def markdown_table(summary: Summary, before: Summary | None = None) -> str:
    """The results as markdown: the main table, CPU per message, the targets."""
    headers = _headers(summary)
    scenarios = summary.scenarios
    lines = ["| client | " + " | ".join(headers[s] for s in scenarios) + " |"]
    lines.append("| --- |" + " --- |" * len(scenarios))
    for subject in summary.subjects:
        lines.append(f"| {subject} | " + " | ".join(_cell(summary, subject, s) for s in scenarios) + " |")
    lines.append("")
    lines.append(
        f"Medians of {summary.rounds} interleaved round(s) against smtp-sink on 127.0.0.1; "
        "ratios (×) are to smtp-source in the same run (above 1 is faster for (1) and (2), "
        "below 1 is better for (3) and (4)); (2) generator is compared with smtp-source's (2)."
    )
    if summary.round_ratios:
        lines.append(
            "After the semicolon: the lowest and the highest of the rounds' own ratios (each round's "
            "run against smtp-source's in the same round), to show how much the machine's load moved them."
        )
    timed = [s for s in scenarios if s != "huge"]
    if timed and summary.cpu_per_message:
        lines.append("")
        lines.append("| CPU per message | " + " | ".join(_SHORT[s] for s in timed) + " |")
        lines.append("| --- |" + " ---: |" * len(timed))
        for subject in summary.subjects:
            cells = [_cpu(summary.cpu_per_message.get((subject, s)), s) for s in timed]
            if any(cell != "—" for cell in cells):
                name = f"{subject} (whole process)" if subject == REFERENCE else subject
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            "CPU time per message: `time.process_time()` over the run inside the client's process, "
            "divided by the messages (medians); for (2), per 20 MiB message.  smtp-source's is the "
            "kernel's count for the whole process, start-up included."
        )
    targets = target_lines(summary, before)
    if targets:
        lines.append("")
        lines.append("Targets for twisted_smtpconn (ratios to smtp-source):")
        lines.append("")
        lines.extend(targets)
    return "\n".join(lines)


def rst_table(summary: Summary) -> str:
    """The main table and CPU per message as reStructuredText list-tables, for docs/performance.rst."""
    headers = _headers(summary)
    scenarios = summary.scenarios
    width = 100 // (len(scenarios) + 1)
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: " + " ".join([str(100 - width * len(scenarios))] + [str(width)] * len(scenarios)),
        "",
        "   * - client",
    ]
    lines += [f"     - {headers[scenario]}" for scenario in scenarios]
    for subject in summary.subjects:
        lines.append(f"   * - {subject}")
        for scenario in scenarios:
            cell = _cell(summary, subject, scenario).replace("*", "\\*")
            lines.append(f"     - {cell}")
    timed = [scenario for scenario in scenarios if scenario != "huge"]
    if timed and summary.cpu_per_message:
        lines += ["", ".. list-table:: CPU time per message", "   :header-rows: 1", "", "   * - client"]
        lines += [f"     - {_SHORT[scenario]}" for scenario in timed]
        for subject in summary.subjects:
            cells = [_cpu(summary.cpu_per_message.get((subject, scenario)), scenario) for scenario in timed]
            if any(cell != "—" for cell in cells):
                name = f"{subject} (whole process)" if subject == REFERENCE else subject
                lines.append(f"   * - {name}")
                lines += [f"     - {cell}" for cell in cells]
    return "\n".join(lines)


def before_after_table(before: Summary, after: Summary, same_run: bool = False) -> str:
    """
    The ratios and CPU per message, before → after, one row per calling
    style of twisted_smtpconn and per other client (whose change shows how
    much the machine moved between the runs): the table to paste into a
    closing note.
    """
    columns = [
        ("one", "ratio", "(1) msg/s ratio"),
        ("large", "ratio", "(2) bytes ratio"),
        ("large-gen", "ratio", "(2) generator ratio"),
        ("pool", "ratio", "(3) time ratio"),
        ("one", "cpu", "(1) CPU/msg"),
        ("pool", "cpu", "(3) CPU/msg"),
    ]

    def show(summary: Summary, subject: str, scenario: str, kind: str) -> str:
        if kind == "cpu":
            return _cpu(summary.cpu_per_message.get((subject, scenario)), scenario)
        ratio = summary.ratio(subject, scenario)
        return "—" if ratio is None else f"{ratio:.2f}"

    lines = ["| before → after | " + " | ".join(title for _, _, title in columns) + " |"]
    lines.append("| --- |" + " ---: |" * len(columns))
    # The other clients' ratios show how much the machine moved between
    # the two runs.
    subjects = [s for s in dict.fromkeys([*before.subjects, *after.subjects]) if s != REFERENCE]
    if same_run:
        # Both sides ran in the same rounds: the other clients have one
        # result each, and smtp-source is the same on both sides.
        subjects = [s for s in subjects if s.startswith(OURS + "/")]
    for subject in subjects:
        cells = [f"{show(before, subject, sc, kind)} → {show(after, subject, sc, kind)}" for sc, kind, _ in columns]
        lines.append(f"| {subject} | " + " | ".join(cells) + " |")
    reference = []
    for scenario, kind, _ in columns:
        if kind == "ratio" and scenario != "large-gen":
            pair = (REFERENCE, scenario)
            old, new = before.value(*pair), after.value(*pair)
            reference.append(
                f"{_format(scenario, old) if old else '—'} → {_format(scenario, new) if new else '—'}"
            )
        else:
            reference.append("")
    lines.append(f"| {REFERENCE} (absolute) | " + " | ".join(reference) + " |")
    lines.append("")
    if same_run:
        lines.append(
            f"Before and after ran in the same {after.rounds} interleaved round(s), against the same "
            "smtp-source runs: the ratios are medians over those rounds."
        )
    else:
        lines.append("Before and after are two runs: compare the other clients' rows to see how the machine moved.")
    return "\n".join(lines)


def plot(summary: Summary, path: Path) -> None:
    """A bar chart per scenario, and one of CPU per message in (1), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "one": f"(1) {summary.one_count:,} × 2 KiB, one connection\nmessages/s (higher is better)",
        "large": "(2) one 20 MiB message, bytes\nMiB/s (higher is better)",
        "large-gen": "(2) the same, generator of 64 KiB chunks\nMiB/s (higher is better)",
        "pool": f"(3) {summary.pool_count} × 2 KiB, 10 connections\nseconds (lower is better)",
        "huge": f"(4) peak RSS, one {_huge_label(summary)} message\nMiB (lower is better)",
        "cpu": "CPU per message in (1)\nµs (lower is better)",
    }
    panels = [*summary.scenarios, "cpu"]
    columns = 3 if len(panels) > 4 else 2
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, panel in zip(axes.flat, panels):
        names, values, colours, ratios = [], [], [], []
        for subject in summary.subjects:
            if panel == "cpu":
                seconds = summary.cpu_per_message.get((subject, "one"))
                value = None if seconds is None else seconds * 1e6
                ratio = None
            else:
                passed, _ = summary.checks.get((subject, panel), (True, ""))
                value = summary.value(subject, panel) if passed else None
                ratio = summary.ratio(subject, panel) if subject != REFERENCE else None
            if value is None:
                continue
            names.append(subject)
            values.append(value)
            ratios.append(ratio)
            colour = "#e6a19a" if "@" in subject else "#c0392b" if subject.startswith(OURS) else "#95a5a6"
            colours.append("#2c3e50" if subject == REFERENCE else colour)
        positions = list(range(len(names)))
        axis.barh(positions, values, color=colours)
        axis.set_yticks(positions, names, fontsize=8)
        axis.invert_yaxis()
        axis.set_title(titles[panel], fontsize=9)
        for position, (value, ratio) in enumerate(zip(values, ratios)):
            label = f" {value:,.0f}" if value >= 10 else f" {value:.3f}"
            if ratio is not None:
                label += f"  ({ratio:.2f}×)"
            axis.text(value, position, label, va="center", fontsize=7)
        axis.margins(x=0.5)
        if panel == "huge":
            axis.axvline(64, color="#c0392b", linestyle="--", linewidth=1)
    figure.suptitle("twisted_smtpconn benchmark against Postfix smtp-sink (127.0.0.1)", fontsize=12)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
