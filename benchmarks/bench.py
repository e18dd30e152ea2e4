"""
The throughput benchmark: twisted_smtpconn against smtplib, aiosmtplib,
twisted.mail.smtp and Postfix's own C load generator, ``smtp-source``.

Usage (from the repository root)::

    python benchmarks/bench.py            # full run: 5 interleaved rounds, a 1 GiB message
    python benchmarks/bench.py --quick    # 1 round, a 256 MiB message: well under 2 minutes

Every client runs in a process of its own against Postfix's ``smtp-sink``
on 127.0.0.1, which this script starts and stops by PID.  Scenarios:

1. 2,000 messages of 2 KiB over one connection (messages per second);
2. one 20 MiB message (MB per second);
3. 200 messages of 2 KiB over 10 connections (seconds);
4. peak RSS while sending one generated 1 GiB message (MiB).

Before any timing, every client sends each kind of message once through an
aiosmtpd recorder, which hashes what arrived: a client whose bytes differ
from the message fails the check, and its timing for that scenario is not
reported.  The timed scenarios then run in rounds, the clients in a
different order each round, and the table gives each client's median and
its ratio to smtp-source in the same run.  Compare the ratios, not the
absolute numbers: they depend on the machine.

Writes a markdown table to standard output (and ``--markdown FILE``), the
raw runs as JSON (``--json FILE``), and a plot (``--plot FILE``, default
``docs/_static/benchmark.png``; needs matplotlib, the ``bench`` extra).
Needs Postfix's ``smtp-sink`` and ``smtp-source`` (Debian: ``postfix``),
aiosmtpd, aiosmtplib, and GNU time (``/usr/bin/time``) for peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
from _report import Summary, markdown_table, plot  # noqa: E402
from _servers import LOOPBACK, Recorder, SmtpSink, find_program  # noqa: E402

PYTHON_CLIENTS = ("twisted_smtpconn", "smtplib", "aiosmtplib", "twisted.mail.smtp")
CLIENTS = (*PYTHON_CLIENTS, "smtp-source")
SCENARIOS = ("one", "large", "pool", "huge")
CONNECTIONS = 10

#: No single run may take longer than this; a client that hangs is killed
#: (by PID) and reported as failed.
RUN_TIMEOUT = 600.0

GIB = 1024**3
MIB = 1024**2


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
    """One client's run of one scenario."""

    client: str
    scenario: str
    round: int
    ok: bool
    elapsed: float | None = None
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


def run_client(
    client: str, scenario: str, port: int, count: int, size: int, files: Files, round_number: int
) -> Run:
    """
    Run one client in a process of its own, under GNU time for the peak RSS.

    The Python clients time themselves from before connecting to after
    closing (their interpreter's start-up is not counted); smtp-source is
    timed from outside, start-up included (about a millisecond).
    """
    if client == "smtp-source":
        program = find_program("smtp-source")
        if program is None:
            return Run(client, scenario, round_number, ok=False, error="smtp-source not found")
        path = {"one": files.small, "pool": files.small, "large": files.large}.get(scenario)
        argv = _smtp_source_argv(program, scenario, port, count, path or files.generated(size))
    else:
        script = str(HERE / "_clients.py")
        argv = [sys.executable, script, client, scenario, LOOPBACK, str(port), str(count), str(size)]
    time_program = _time_program()
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        if time_program is not None:
            argv = [time_program, "-f", "%M", "-o", rss_file.name, *argv]
        python_path = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, PYTHONPATH=python_path)
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            out, err = process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return Run(client, scenario, round_number, ok=False, error=f"timed out after {RUN_TIMEOUT:g} s")
        wall = time.perf_counter() - started
        rss_text = rss_file.read().strip().splitlines()
    run = Run(client, scenario, round_number, ok=process.returncode == 0)
    if rss_text and rss_text[-1].isdigit():
        run.peak_rss_kib = int(rss_text[-1])
    if not run.ok:
        said = err.decode("utf-8", "replace").strip().splitlines()
        run.error = said[-1] if said else f"exit status {process.returncode}"
        return run
    if client == "smtp-source":
        run.elapsed = wall
        run.messages = 1 if scenario in ("large", "huge") else count
    else:
        result = json.loads(out.decode().strip().splitlines()[-1])
        run.elapsed = float(result["elapsed"])
        run.messages = 1 if scenario in ("large", "huge") else count
        if run.peak_rss_kib is None:
            run.peak_rss_kib = result.get("vmhwm_kib")
    run.bytes = {
        "one": count * len(small_message()),
        "pool": count * len(small_message()),
        "large": LARGE_SIZE,
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


def check_clients(plan: Plan, files: Files, clients: tuple[str, ...]) -> list[Check]:
    """
    Every client sends each kind of message once to the recorder; each
    message that arrives must hash to the message's SHA-256.
    """
    expected = {
        "one": _digest([small_message()]),
        "pool": _digest([small_message()]),
        "large": _digest([large_message()]),
        "huge": _digest(generated_chunks(plan.check_huge_size)),
    }
    # smtp-source always ends a message with an empty line of its own.
    expected_by_smtp_source = {
        "one": _digest([small_message(), b"\r\n"]),
        "pool": _digest([small_message(), b"\r\n"]),
        "large": _digest([large_message(), b"\r\n"]),
        "huge": _digest([*generated_chunks(plan.check_huge_size), b"\r\n"]),
    }
    counts = {"one": plan.check_count, "pool": plan.check_count, "large": 1, "huge": 1}
    checks: list[Check] = []
    recorder = Recorder()
    try:
        for client in clients:
            for scenario in SCENARIOS:
                recorder.take()
                run = run_client(
                    client, scenario, recorder.port, counts[scenario], plan.check_huge_size, files, -1
                )
                time.sleep(0.2)  # let the recorder's thread finish the last message
                received = recorder.take()
                digest = (expected_by_smtp_source if client == "smtp-source" else expected)[scenario]
                wrong = [message for message in received if message.sha256 != digest]
                if not run.ok:
                    checks.append(Check(client, scenario, False, f"failed: {run.error}"))
                elif len(received) != counts[scenario] or wrong:
                    detail = f"{len(received)} of {counts[scenario]} messages arrived, {len(wrong)} differ"
                    checks.append(Check(client, scenario, False, detail))
                else:
                    checks.append(Check(client, scenario, True, f"{len(received)} message(s), SHA-256 equal"))
    finally:
        recorder.stop()
    return checks


# -- the timed runs ---------------------------------------------------------------------------


def _rotated(items: tuple[str, ...], by: int) -> list[str]:
    by %= len(items)
    return [*items[by:], *items[:by]]


def timed_runs(
    plan: Plan, files: Files, clients: tuple[str, ...], passed: set[tuple[str, str]]
) -> Iterator[Run]:
    """
    The scenarios in interleaved rounds; the 1 GiB message (scenario 4,
    which measures memory, not time) runs once per client, in round 0.
    """
    sink = SmtpSink()
    try:
        for round_number in range(plan.rounds):
            for scenario in SCENARIOS:
                if scenario == "huge" and round_number > 0:
                    continue
                for client in _rotated(clients, round_number):
                    if (client, scenario) not in passed:
                        continue
                    count = {"one": plan.one_count, "pool": plan.pool_count}.get(scenario, 1)
                    run = run_client(client, scenario, sink.port, count, plan.huge_size, files, round_number)
                    _progress(run)
                    yield run
    finally:
        sink.stop()


def _progress(run: Run) -> None:
    what = f"{run.elapsed:.3f} s" if run.ok and run.elapsed is not None else f"FAILED: {run.error}"
    rss = f", peak RSS {run.peak_rss_kib / 1024:.0f} MiB" if run.peak_rss_kib else ""
    print(f"  round {run.round}: {run.scenario:5} {run.client:18} {what}{rss}", file=sys.stderr, flush=True)


def summarise(runs: list[Run], checks: list[Check], plan: Plan, clients: tuple[str, ...]) -> Summary:
    """Medians per client and scenario, and ratios to smtp-source."""
    medians: dict[tuple[str, str], float] = {}
    rss: dict[str, float] = {}
    for client in clients:
        for scenario in ("one", "large", "pool"):
            done = [run for run in runs if run.client == client and run.scenario == scenario and run.ok]
            if not done:
                continue
            elapsed = statistics.median(run.elapsed for run in done if run.elapsed is not None)
            if scenario == "one":
                medians[client, scenario] = done[0].messages / elapsed
            elif scenario == "large":
                medians[client, scenario] = done[0].bytes / MIB / elapsed
            else:
                medians[client, scenario] = elapsed
        huge = [run for run in runs if run.client == client and run.scenario == "huge" and run.ok]
        if huge and huge[0].peak_rss_kib:
            rss[client] = huge[0].peak_rss_kib / 1024
    return Summary(
        clients=list(clients),
        medians=medians,
        peak_rss_mib=rss,
        checks={(check.client, check.scenario): (check.ok, check.detail) for check in checks},
        rounds=plan.rounds,
        one_count=plan.one_count,
        pool_count=plan.pool_count,
        huge_size=plan.huge_size,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round and a 256 MiB message (< 2 minutes)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; 1 with --quick)")
    parser.add_argument("--huge-mib", type=int, help="size of the generated message in MiB (default 1024)")
    parser.add_argument("--clients", help=f"comma-separated subset of: {', '.join(CLIENTS)}")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--json", type=Path, help="write the raw runs and checks to this file")
    parser.add_argument(
        "--plot", type=Path, default=HERE.parent / "docs" / "_static" / "benchmark.png", help="PNG to write"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    options = parser.parse_args(argv)

    rounds = options.rounds or (1 if options.quick else 5)
    huge_mib = options.huge_mib or (256 if options.quick else 1024)
    if rounds < 1 or rounds > 50 or huge_mib < 1:
        parser.error("--rounds must be 1 to 50 and --huge-mib positive")
    clients = tuple(options.clients.split(",")) if options.clients else CLIENTS
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown client(s): {', '.join(sorted(unknown))}")
    plan = Plan(rounds=rounds, one_count=2000, pool_count=200, huge_size=huge_mib * MIB)

    started = time.monotonic()
    files = Files(Path(tempfile.mkdtemp(prefix="smtpconn-bench-")))
    try:
        print("correctness check (aiosmtpd recorder)...", file=sys.stderr, flush=True)
        checks = check_clients(plan, files, clients)
        for check in checks:
            mark = "ok" if check.ok else "FAILED"
            line = f"  {check.scenario:5} {check.client:18} {mark}: {check.detail}"
            print(line, file=sys.stderr, flush=True)
        passed = {(check.client, check.scenario) for check in checks if check.ok}
        print(f"timed runs against smtp-sink, {rounds} round(s)...", file=sys.stderr, flush=True)
        runs = list(timed_runs(plan, files, clients, passed))
    finally:
        files.remove()

    summary = summarise(runs, checks, plan, clients)
    table = markdown_table(summary)
    print(table)
    print(f"(finished in {time.monotonic() - started:.0f} s)", file=sys.stderr)
    if options.markdown:
        options.markdown.write_text(table + "\n", encoding="utf-8")
    if options.json:
        raw = {"runs": [asdict(run) for run in runs], "checks": [asdict(check) for check in checks]}
        options.json.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    if not options.no_plot:
        options.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(summary, options.plot)
        print(f"plot written to {options.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
