"""
The throughput benchmark: twisted_smtpconn, in each calling style its users
write, against smtplib, aiosmtplib, twisted.mail.smtp, a minimal Python
pipelining writer with no library (``python-pipelining``, a yardstick of
what Python itself costs) and Postfix's own C load generator,
``smtp-source``.

Usage (from the repository root)::

    python benchmarks/bench.py                 # full run: 5 interleaved rounds, a 1 GiB message
    python benchmarks/bench.py --quick         # 2 rounds, fewer messages, a 128 MiB message
    python benchmarks/bench.py --only 'twisted_smtpconn/queued:one'
    python benchmarks/bench.py --before benchmarks/results/before.json --json after.json
    python benchmarks/bench.py --before-tree /tmp/old-checkout      # both versions in the same rounds

Every client runs in a process of its own against Postfix's ``smtp-sink``
on 127.0.0.1, which this script starts and stops by PID.  Scenarios:

1. ``one``: 2,000 messages of 2 KiB over one connection (messages per second);
2. ``large``: one 20 MiB message as one ``bytes`` object, and ``large-gen``:
   the same message as a generator of 64 KiB chunks (MiB per second);
3. ``pool``: 200 messages of 2 KiB over 10 connections (seconds);
4. ``huge``: peak RSS while sending one generated 1 GiB message (MiB).

twisted_smtpconn runs as ``twisted_smtpconn/awaited`` (each ``send()``
awaited before the next), ``twisted_smtpconn/queued`` (all sends of a
connection called at once) and ``twisted_smtpconn/pool``
(``SMTPPool(max_connections=10)``, all sends called at once); in scenario 3
the first two use ten plain ``SMTPConnection`` objects.  Each Python client
also reports its CPU time (``time.process_time()`` over the run, inside its
own process) per message; smtp-source's comes from the kernel's accounting
of the whole process.

Before any timing, every client sends each kind of message once through an
aiosmtpd recorder, which hashes what arrived: a client whose bytes differ
from the message fails the check, and it is not timed in that scenario.
The timed scenarios then run in rounds, the clients in a different order
each round, and the tables give each client's median and its ratio to
smtp-source in the same run.  Compare the ratios, not the absolute numbers:
they depend on the machine.

Writes markdown tables to standard output (and ``--markdown FILE``), the
raw runs and the medians as JSON (``--json FILE``), and a plot (``--plot
FILE``, default ``docs/_static/benchmark.png``; needs matplotlib, the
``bench`` extra).  ``--before FILE`` (the JSON of an earlier run) adds a
before/after table; ``--before-tree PATH`` runs another checkout's
twisted_smtpconn (``twisted_smtpconn/STYLE@before``) in the same rounds and
makes that table from the one run.  Needs Postfix's ``smtp-sink`` and
``smtp-source`` (Debian: ``postfix``), aiosmtpd, aiosmtplib, and GNU time
(``/usr/bin/time``) for peak RSS.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _messages import (  # noqa: E402
    LARGE_SIZE,
    RECIPIENT,
    SENDER,
    generated_chunks,
    generated_lf_chunks,
    generated_size,
    large_message,
    small_message,
    to_lf,
)
from _report import (  # noqa: E402
    OURS,
    REFERENCE,
    REFERENCE_SCENARIO,
    Summary,
    before_after_table,
    markdown_table,
    plot,
    rst_table,
)
from _servers import LOOPBACK, Recorder, SmtpSink, find_program  # noqa: E402

STYLES = ("awaited", "queued", "pool")
OUR_SUBJECTS = tuple(f"{OURS}/{style}" for style in STYLES)
OTHERS = ("smtplib", "aiosmtplib", "twisted.mail.smtp", "python-pipelining")
#: Everything that can run, in table order.
SUBJECTS = (*OUR_SUBJECTS, *OTHERS, REFERENCE)
#: The label of the subjects run from another checkout (``--before-tree``).
BEFORE_LABEL = "before"


def all_subjects(before_tree: bool = False) -> tuple[str, ...]:
    """
    The subjects, in table order; with ``before_tree``, also each style of
    twisted_smtpconn from that checkout (``twisted_smtpconn/STYLE@before``),
    right below this checkout's.
    """
    if not before_tree:
        return SUBJECTS
    ours = (*OUR_SUBJECTS, *(f"{subject}@{BEFORE_LABEL}" for subject in OUR_SUBJECTS))
    return (*ours, *OTHERS, REFERENCE)


def split_label(subject: str) -> tuple[str, str | None]:
    """``twisted_smtpconn/queued@before`` -> (``twisted_smtpconn/queued``, ``before``)."""
    name, at, label = subject.partition("@")
    return (name, label) if at else (subject, None)
SCENARIOS = ("one", "large", "large-gen", "pool", "huge")
CONNECTIONS = 10

#: No single run may take longer than this; a client that hangs is killed
#: (by PID) and reported as failed.
RUN_TIMEOUT = 600.0

GIB = 1024**3
MIB = 1024**2

#: label -> the checkout whose twisted_smtpconn its subjects run
#: (``--before-tree``).
TREES: dict[str, Path] = {}


def scenarios_of(subject: str) -> tuple[str, ...]:
    """
    The scenarios ``subject`` runs.  Only twisted_smtpconn takes a message
    as a generator (``large-gen``); the memory scenario runs once for it,
    in the awaited style (a single send: the style changes nothing there).
    """
    if subject.startswith(OURS + "/"):
        huge = ("huge",) if split_label(subject)[0] == f"{OURS}/awaited" else ()
        return ("one", "large", "large-gen", "pool", *huge)
    if subject == "python-pipelining":
        return ("one", "large", "pool")
    return ("one", "large", "pool", "huge")


def select(
    clients: Iterable[str] | None,
    only: Iterable[str] | None,
    reference: bool = True,
    subjects: tuple[str, ...] = SUBJECTS,
) -> list[tuple[str, str]]:
    """
    The ``(subject, scenario)`` pairs to run, in table order.

    :param clients: subjects or client names (``twisted_smtpconn`` stands
        for all its styles); None for all.
    :param only: patterns ``SUBJECT[:SCENARIO]``, shell-style wildcards
        allowed (``twisted_smtpconn/*:one``, ``*:pool``, ``smtplib``); a
        pair runs if any pattern matches it.  None for all.
    :param reference: add smtp-source in every selected scenario, as the
        ratios need it.
    :param subjects: what can run (:func:`all_subjects`).
    :raises ValueError: for a client name or pattern that selects nothing.
    """
    wanted = set(subjects)
    if clients is not None:
        wanted = set()
        for name in clients:
            matches = [
                subject
                for subject in subjects
                if name in (subject, split_label(subject)[0]) or subject.startswith(name + "/")
            ]
            if not matches:
                raise ValueError(f"unknown client {name!r}: one of {', '.join(subjects)} (or {OURS})")
            wanted.update(matches)
    pairs = [(subject, scenario) for subject in subjects if subject in wanted for scenario in scenarios_of(subject)]
    if only is not None:
        patterns = [pattern.partition(":")[::2] for pattern in only]
        chosen = []
        for subject_glob, scenario_glob in patterns:
            # "twisted_smtpconn" alone means all its styles.
            subject_globs = [subject_glob, subject_glob + "/*"]
            matched = [
                pair
                for pair in pairs
                if any(fnmatch.fnmatchcase(pair[0], glob) for glob in subject_globs)
                and fnmatch.fnmatchcase(pair[1], scenario_glob or "*")
            ]
            if not matched:
                raise ValueError(f"--only pattern {subject_glob}:{scenario_glob or '*'} selects nothing")
            chosen.extend(matched)
        pairs = [pair for pair in pairs if pair in chosen]
    if reference:
        needed = {REFERENCE_SCENARIO.get(scenario, scenario) for _, scenario in pairs}
        pairs += [(REFERENCE, scenario) for scenario in scenarios_of(REFERENCE) if scenario in needed]
        pairs = [pair for pair in dict.fromkeys(pairs)]
    order = {subject: n for n, subject in enumerate(subjects)}
    return sorted(pairs, key=lambda pair: (order[pair[0]], SCENARIOS.index(pair[1])))


@dataclass(frozen=True)
class Plan:
    rounds: int
    one_count: int
    pool_count: int
    huge_size: int
    check_count: int = 20
    check_huge_size: int = 4 * MIB


@dataclass
class Run:
    """
    One client's run of one scenario.

    :ivar cpu: the client's own CPU time over the run, measured inside its
        process (Python clients; None for smtp-source).
    :ivar process_cpu: the CPU time of the whole process, start-up
        included, from the kernel (``RUSAGE_CHILDREN``).
    """

    client: str
    scenario: str
    round: int
    ok: bool
    elapsed: float | None = None
    cpu: float | None = None
    process_cpu: float | None = None
    bytes: int = 0
    messages: int = 0
    peak_rss_kib: int | None = None
    error: str = ""


@dataclass
class Files:
    """The messages as files with LF line ends, for ``smtp-source -F``."""

    directory: Path
    small: Path = field(init=False)
    large: Path = field(init=False)
    huge: dict[int, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.small = self.directory / "small.txt"
        self.small.write_bytes(to_lf(small_message()))
        self.large = self.directory / "large.txt"
        self.large.write_bytes(to_lf(large_message()))

    def generated(self, size: int) -> Path:
        if size not in self.huge:
            path = self.directory / f"generated-{size}.txt"
            with path.open("wb") as out:
                for chunk in generated_lf_chunks(size):
                    out.write(chunk)
            self.huge[size] = path
        return self.huge[size]

    def remove(self) -> None:
        for path in [self.small, self.large, *self.huge.values()]:
            path.unlink(missing_ok=True)
        self.directory.rmdir()


def _time_program() -> str | None:
    """GNU time, which reports a child's peak RSS without inheriting ours."""
    path = "/usr/bin/time"
    return path if os.access(path, os.X_OK) else None


def _smtp_source_argv(program: str, scenario: str, port: int, count: int, path: Path) -> list[str]:
    argv = [program, "-f", SENDER, "-t", RECIPIENT, "-M", "client.example", "-F", str(path)]
    if scenario == "one":
        argv += ["-d", "-m", str(count)]
    elif scenario == "pool":
        argv += ["-d", "-s", str(CONNECTIONS), "-m", str(count)]
    else:
        argv += ["-m", "1"]
    return [*argv, f"{LOOPBACK}:{port}"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_client(
    client: str, scenario: str, port: int, count: int, size: int, files: Files, round_number: int
) -> Run:
    """
    Run one client in a process of its own, under GNU time for the peak RSS.

    The Python clients time themselves from before connecting to after
    closing (their interpreter's start-up is not counted); smtp-source is
    timed from outside, start-up included (about a millisecond).
    """
    if client == REFERENCE:
        program = find_program("smtp-source")
        if program is None:
            return Run(client, scenario, round_number, ok=False, error="smtp-source not found")
        label = None
        path = {"one": files.small, "pool": files.small, "large": files.large}.get(scenario)
        argv = _smtp_source_argv(program, scenario, port, count, path or files.generated(size))
    else:
        script = str(HERE / "_clients.py")
        name, label = split_label(client)
        argv = [sys.executable, script, name, scenario, LOOPBACK, str(port), str(count), str(size)]
    library = HERE.parent if client == REFERENCE or label is None else TREES[label]
    time_program = _time_program()
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        if time_program is not None:
            argv = [time_program, "-f", "%M", "-o", rss_file.name, *argv]
        python_path = os.pathsep.join([str(library), os.environ.get("PYTHONPATH", "")])
        # _clients.py imports twisted_smtpconn from this checkout, ahead of
        # any installed copy.
        env = dict(os.environ, PYTHONPATH=python_path, SMTPCONN_BENCH_LIBRARY=str(library))
        # Only this child is reaped in between (smtp-sink is reaped when it
        # is stopped), so the difference is this run's.
        cpu_before = _children_cpu()
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            out, err = process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return Run(client, scenario, round_number, ok=False, error=f"timed out after {RUN_TIMEOUT:g} s")
        wall = time.perf_counter() - started
        process_cpu = _children_cpu() - cpu_before
        rss_text = rss_file.read().strip().splitlines()
    run = Run(client, scenario, round_number, ok=process.returncode == 0, process_cpu=process_cpu)
    if rss_text and rss_text[-1].isdigit():
        run.peak_rss_kib = int(rss_text[-1])
    if not run.ok:
        said = err.decode("utf-8", "replace").strip().splitlines()
        run.error = said[-1] if said else f"exit status {process.returncode}"
        return run
    run.messages = count if scenario in ("one", "pool") else 1
    if client == REFERENCE:
        run.elapsed = wall
    else:
        result = json.loads(out.decode().strip().splitlines()[-1])
        imported = result.get("library")
        if imported is not None and not Path(imported).resolve().is_relative_to(library.resolve()):
            run.ok = False
            run.error = f"twisted_smtpconn came from {imported}, not from {library}"
            return run
        run.elapsed = float(result["elapsed"])
        run.cpu = float(result["cpu"])
        if run.peak_rss_kib is None:
            run.peak_rss_kib = result.get("vmhwm_kib")
    run.bytes = {
        "one": count * len(small_message()),
        "pool": count * len(small_message()),
        "large": LARGE_SIZE,
        "large-gen": LARGE_SIZE,
        "huge": generated_size(size),
    }[scenario]
    return run


# -- the correctness check -------------------------------------------------------------------


def _digest(pieces: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()


@dataclass
class Check:
    client: str
    scenario: str
    ok: bool
    detail: str


def check_clients(plan: Plan, files: Files, pairs: list[tuple[str, str]]) -> list[Check]:
    """
    Every client sends each kind of message (in each of its calling styles)
    to the recorder; each message that arrives must hash to the message's
    SHA-256.
    """
    messages = {
        "one": [small_message()],
        "pool": [small_message()],
        "large": [large_message()],
        "large-gen": [large_message()],
        "huge": list(generated_chunks(plan.check_huge_size)),
    }
    expected = {scenario: _digest(pieces) for scenario, pieces in messages.items()}
    # smtp-source always ends a message with an empty line of its own.
    expected_by_smtp_source = {scenario: _digest([*pieces, b"\r\n"]) for scenario, pieces in messages.items()}
    counts = {"one": plan.check_count, "pool": plan.check_count}
    checks: list[Check] = []
    recorder = Recorder()
    try:
        for client, scenario in pairs:
            count = counts.get(scenario, 1)
            recorder.take()
            run = run_client(client, scenario, recorder.port, count, plan.check_huge_size, files, -1)
            # The recorder keeps a message before it answers the final dot,
            # and each client waits for that answer: all is there by now.
            received = recorder.take()
            digest = (expected_by_smtp_source if client == REFERENCE else expected)[scenario]
            wrong = [message for message in received if message.sha256 != digest]
            if not run.ok:
                check = Check(client, scenario, False, f"failed: {run.error}")
            elif len(received) != count or wrong:
                detail = f"{len(received)} of {count} messages arrived, {len(wrong)} differ"
                check = Check(client, scenario, False, detail)
            else:
                check = Check(client, scenario, True, f"{len(received)} message(s), SHA-256 equal")
            mark = "ok" if check.ok else "FAILED"
            print(f"  {scenario:9} {client:24} {mark}: {check.detail}", file=sys.stderr, flush=True)
            checks.append(check)
    finally:
        recorder.stop()
    return checks


# -- the timed runs ---------------------------------------------------------------------------


def _rotated(items: list[str], by: int) -> list[str]:
    if not items:
        return items
    by %= len(items)
    return [*items[by:], *items[:by]]


def timed_runs(plan: Plan, files: Files, pairs: list[tuple[str, str]]) -> Iterator[Run]:
    """
    The scenarios in interleaved rounds; the generated message (scenario 4,
    which measures memory, not time) runs once per client, in round 0.
    """
    sink = SmtpSink()
    try:
        for round_number in range(plan.rounds):
            for scenario in SCENARIOS:
                if scenario == "huge" and round_number > 0:
                    continue
                clients = [client for client, wanted in pairs if wanted == scenario]
                for client in _rotated(clients, round_number):
                    count = {"one": plan.one_count, "pool": plan.pool_count}.get(scenario, 1)
                    run = run_client(client, scenario, sink.port, count, plan.huge_size, files, round_number)
                    _progress(run)
                    yield run
    finally:
        sink.stop()


def _progress(run: Run) -> None:
    what = f"{run.elapsed:.3f} s" if run.ok and run.elapsed is not None else f"FAILED: {run.error}"
    cpu = run.cpu if run.cpu is not None else run.process_cpu
    if run.ok and cpu is not None and run.messages:
        what += f", {cpu / run.messages * 1e6:,.0f} µs CPU/msg"
    rss = f", peak RSS {run.peak_rss_kib / 1024:.0f} MiB" if run.peak_rss_kib else ""
    line = f"  round {run.round}: {run.scenario:9} {run.client:24} {what}{rss}"
    print(line, file=sys.stderr, flush=True)


def summarise(runs: list[Run], checks: list[Check], plan: Plan, pairs: list[tuple[str, str]]) -> Summary:
    """Medians per client and scenario; the report works out the ratios."""
    values: dict[tuple[str, str], float] = {}
    cpu: dict[tuple[str, str], float] = {}
    for client, scenario in pairs:
        done = [run for run in runs if run.client == client and run.scenario == scenario and run.ok]
        if not done:
            continue
        if scenario == "huge":
            if done[0].peak_rss_kib:
                values[client, scenario] = done[0].peak_rss_kib / 1024
        else:
            elapsed = statistics.median(run.elapsed for run in done if run.elapsed is not None)
            if scenario == "one":
                values[client, scenario] = done[0].messages / elapsed
            elif scenario in ("large", "large-gen"):
                values[client, scenario] = done[0].bytes / MIB / elapsed
            else:
                values[client, scenario] = elapsed
        spent = []
        for run in done:
            seconds = run.cpu if run.cpu is not None else run.process_cpu
            if seconds is not None and run.messages:
                spent.append(seconds / run.messages)
        if spent:
            cpu[client, scenario] = statistics.median(spent)
    return Summary(
        pairs=list(pairs),
        values=values,
        cpu_per_message=cpu,
        round_ratios=_round_ratios(runs, pairs),
        checks={(check.client, check.scenario): (check.ok, check.detail) for check in checks},
        rounds=plan.rounds,
        one_count=plan.one_count,
        pool_count=plan.pool_count,
        huge_size=plan.huge_size,
    )


def _measure(run: Run) -> float | None:
    """A run's number in its scenario's unit (as in :func:`summarise`)."""
    if not run.ok or not run.elapsed:
        return None
    if run.scenario == "one":
        return run.messages / run.elapsed
    if run.scenario in ("large", "large-gen"):
        return run.bytes / MIB / run.elapsed
    if run.scenario == "pool":
        return run.elapsed
    return None


def _round_ratios(runs: list[Run], pairs: list[tuple[str, str]]) -> dict[tuple[str, str], list[float]]:
    """
    Each round's ratio to smtp-source in the same round, for the timed
    scenarios: how far the machine's load moved the ratio from round to
    round (a round's clients run seconds apart, the rounds minutes apart).
    """
    reference: dict[tuple[str, int], float] = {}
    for run in runs:
        value = _measure(run)
        if run.client == REFERENCE and value:
            reference[run.scenario, run.round] = value
    out: dict[tuple[str, str], list[float]] = {}
    for client, scenario in pairs:
        if client == REFERENCE:
            continue
        ratios = []
        for run in runs:
            value = _measure(run)
            base = reference.get((REFERENCE_SCENARIO.get(scenario, scenario), run.round))
            if run.client == client and run.scenario == scenario and value is not None and base:
                ratios.append(value / base)
        if ratios:
            out[client, scenario] = ratios
    return out


def _environment() -> dict[str, Any]:
    """What the numbers depend on, for whoever compares two runs."""
    from importlib.metadata import PackageNotFoundError, version

    packages: dict[str, str | None] = {}
    for name in ("twisted", "aiosmtplib", "aiosmtpd"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    postfix = ""
    postconf = find_program("postconf")
    if postconf is not None:
        said = subprocess.run([postconf, "-d", "-h", "mail_version"], capture_output=True, text=True, check=False)
        postfix = said.stdout.strip()
    return {
        "python": platform.python_version(),
        "packages": packages,
        "postfix": postfix,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "commit": commit,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def report(summary: Summary, before: Summary | None, options: argparse.Namespace) -> None:
    """The tables on standard output and in the files the options name, and the plot."""
    same_run = options.before_tree is not None
    if same_run:
        before = summary.labelled(BEFORE_LABEL)
    tables = markdown_table(summary, before)
    if before is not None:
        tables += "\n\n" + before_after_table(before, summary.unlabelled(), same_run=same_run)
    print(tables)
    if options.markdown:
        options.markdown.write_text(tables + "\n", encoding="utf-8")
    if options.rst:
        options.rst.write_text(rst_table(summary.unlabelled()) + "\n", encoding="utf-8")
    if not options.no_plot:
        options.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(summary, options.plot)
        print(f"plot written to {options.plot}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 500 messages in (1), a 128 MiB message")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; 2 with --quick)")
    parser.add_argument("--one-count", type=int, help="messages in scenario 1 (default 2000; 500 with --quick)")
    parser.add_argument("--pool-count", type=int, help="messages in scenario 3 (default 200)")
    parser.add_argument("--huge-mib", type=int, help="size of the generated message in MiB (default 1024)")
    parser.add_argument(
        "--clients", help=f"comma-separated subset of: {', '.join(SUBJECTS)}; {OURS} alone means all its styles"
    )
    parser.add_argument(
        "--only",
        help="comma-separated SUBJECT[:SCENARIO] patterns with shell wildcards, e.g. "
        f"'{OURS}/*:one,smtplib:pool'; scenarios: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="do not add smtp-source to the selected scenarios"
    )
    parser.add_argument("--before", type=Path, help="the JSON of an earlier run: add a before/after table")
    parser.add_argument(
        "--before-tree",
        type=Path,
        help="another checkout of the library (e.g. a git worktree of the old commit): run its "
        f"styles too, as {OURS}/STYLE@{BEFORE_LABEL}, in the same rounds, and add a before/after table",
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--json", type=Path, help="write the raw runs, checks and medians to this file")
    parser.add_argument("--rst", type=Path, help="write the main table as a reStructuredText list-table")
    parser.add_argument(
        "--from-json", type=Path, help="run nothing: make the tables, plot and --rst from a saved --json"
    )
    parser.add_argument(
        "--plot", type=Path, default=HERE.parent / "docs" / "_static" / "benchmark.png", help="PNG to write"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    options = parser.parse_args(argv)

    rounds = options.rounds or (2 if options.quick else 5)
    one_count = options.one_count or (500 if options.quick else 2000)
    pool_count = options.pool_count or 200
    huge_mib = options.huge_mib or (128 if options.quick else 1024)
    if not 1 <= rounds <= 50 or huge_mib < 1 or not 1 <= one_count <= 100_000 or not 1 <= pool_count <= 100_000:
        parser.error("--rounds must be 1 to 50, the counts 1 to 100,000 and --huge-mib positive")
    if options.before_tree is not None:
        if not (options.before_tree / "twisted_smtpconn" / "__init__.py").is_file():
            parser.error(f"--before-tree: no twisted_smtpconn package in {options.before_tree}")
        if options.before is not None:
            parser.error("--before and --before-tree: one before at a time")
        TREES[BEFORE_LABEL] = options.before_tree.resolve()
    try:
        pairs = select(
            options.clients.split(",") if options.clients else None,
            options.only.split(",") if options.only else None,
            reference=not options.no_reference,
            subjects=all_subjects(options.before_tree is not None),
        )
    except ValueError as error:
        parser.error(str(error))
    before = None
    if options.before is not None:
        before = Summary.from_json(json.loads(options.before.read_text(encoding="utf-8"))["summary"])
    plan = Plan(rounds=rounds, one_count=one_count, pool_count=pool_count, huge_size=huge_mib * MIB)

    if options.from_json is not None:
        # Only the report again (say, the plot and the docs table from the
        # final run), nothing run.
        summary = Summary.from_json(json.loads(options.from_json.read_text(encoding="utf-8"))["summary"])
        if any(split_label(subject)[1] == BEFORE_LABEL for subject in summary.subjects):
            options.before_tree = Path(".")  # the before/after table from the same run
        report(summary, before, options)
        return 0

    started = time.monotonic()
    files = Files(Path(tempfile.mkdtemp(prefix="smtpconn-bench-")))
    try:
        print("correctness check (aiosmtpd recorder)...", file=sys.stderr, flush=True)
        checks = check_clients(plan, files, pairs)
        passed = {(check.client, check.scenario) for check in checks if check.ok}
        print(f"timed runs against smtp-sink, {rounds} round(s)...", file=sys.stderr, flush=True)
        runs = list(timed_runs(plan, files, [pair for pair in pairs if pair in passed]))
    finally:
        files.remove()
    print(f"(finished in {time.monotonic() - started:.0f} s)", file=sys.stderr)

    summary = summarise(runs, checks, plan, pairs)
    if options.json:
        raw = {
            "plan": asdict(plan),
            "environment": _environment(),
            "summary": summary.to_json(),
            "runs": [asdict(run) for run in runs],
            "checks": [asdict(check) for check in checks],
        }
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    report(summary, before, options)
    # Another library failing its check is a result; ours or the
    # reference failing is a broken run.
    failed = [(c.client, c.ok) for c in checks] + [(r.client, r.ok) for r in runs]
    return 1 if any(not ok and (name == REFERENCE or name.startswith(OURS)) for name, ok in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
