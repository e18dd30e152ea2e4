"""
Where one benchmark client spends its CPU: a py-spy profile, summarised.

Usage (from the repository root; py-spy must be installed, and may need
root or ``ptrace`` rights)::

    python benchmarks/profile.py                                  # twisted_smtpconn/queued, scenario 1
    python benchmarks/profile.py --subject twisted_smtpconn/awaited --count 2000 --out profile.txt
    python benchmarks/profile.py --speedscope profile.json        # also a file for speedscope.app
    python benchmarks/profile.py --syscalls                       # system calls per message (strace)

Starts ``smtp-sink`` on 127.0.0.1 (stopped by PID afterwards), runs the
client of ``bench.py`` under ``py-spy record`` (raw collapsed stacks, by
function), and prints the top functions by self and by inclusive samples.
Only samples taken inside the reactor's (or asyncio's) loop count, so the
interpreter's start-up and the imports are left out, and so do samples of
the loop waiting in ``epoll_wait`` (which py-spy does not always see as
idle): what remains is the client at work, Python and system calls.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _servers import LOOPBACK, SmtpSink  # noqa: E402

#: A frame in py-spy's raw output: ``function (file:line)``.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
#: A stack inside one of these frames is the client at work, not starting.
_LOOPS = ("mainLoop", "run_forever", "_run_once")
#: A stack that ends in one of these is the loop waiting for the network.
_WAITS = ("doPoll", "select", "poll")


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def record(py_spy: str, argv: list[str], out: Path, fmt: str, rate: int) -> None:
    command = [py_spy, "record", "--format", fmt, "--function", "--rate", str(rate), "-o", str(out), "--", *argv]
    python_path = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    completed = subprocess.run(
        command, env=dict(os.environ, PYTHONPATH=python_path), capture_output=True, timeout=600, check=False
    )
    if completed.returncode != 0:
        said = completed.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise SystemExit(f"py-spy failed ({completed.returncode}): {said}")


def syscalls_per_message(client: list[str], count: int) -> dict[str, float]:
    """
    System calls per message under ``strace -f -c``: a run of ``count``
    messages less a run of one, divided by ``count - 1``, so that start-up,
    connecting and closing cancel out.

    :param client: the client's command line without its last two
        arguments (the message count and size).
    """
    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("strace not found (Debian package strace)")
    counts = []
    with tempfile.TemporaryDirectory(prefix="smtpconn-strace-") as directory:
        for n in (1, count):
            out = Path(directory) / f"strace-{n}.txt"
            python_path = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
            completed = subprocess.run(
                [strace, "-f", "-c", "-o", str(out), *client, str(n), "0"],
                env=dict(os.environ, PYTHONPATH=python_path),
                capture_output=True,
                timeout=600,
                check=False,
            )
            if completed.returncode != 0:
                raise SystemExit(f"the client failed under strace: {completed.stderr.decode()[-2000:]}")
            calls: dict[str, int] = {}
            for line in out.read_text(encoding="utf-8").splitlines():
                fields = line.split()
                # % time, seconds, usecs/call, calls, [errors], syscall
                if len(fields) >= 5 and fields[3].isdigit() and fields[-1].isidentifier() and fields[-1] != "total":
                    calls[fields[-1]] = int(fields[3])
            counts.append(calls)
    one, many = counts
    per = {name: (many.get(name, 0) - one.get(name, 0)) / (count - 1) for name in many}
    return {name: value for name, value in sorted(per.items(), key=lambda item: -item[1]) if value >= 0.05}


def _function(frame: str) -> str:
    match = _FRAME.match(frame)
    return frame if match is None else match["function"]


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({match['file']})"


def _area(frame: str) -> str:
    """The library, package or module a frame belongs to."""
    match = _FRAME.match(frame)
    path = match["file"] if match else frame
    if path.startswith("twisted_smtpconn/"):
        return path.removesuffix(".py")
    for top in ("twisted/internet/", "twisted/python/", "twisted/logger/", "twisted/", "zope/"):
        if path.startswith(top):
            return top.rstrip("/")
    if path.startswith(("_clients", "benchmarks/")):
        return "benchmark client"
    return "Python standard library" if "/" not in path or path.startswith(("asyncio/", "json/")) else path


def summarise(raw: str, top: int) -> str:
    """Top functions by self and by inclusive samples, and self samples by area."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = outside = waiting = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # Outermost first.
        frames = stack.split(";")
        if not any(_function(frame).rpartition(".")[2] in _LOOPS for frame in frames):
            outside += count
            continue
        if _function(frames[-1]).rpartition(".")[2] in _WAITS:
            # py-spy does not always see a thread blocked in epoll_wait
            # as idle: these are waits for the server, not work.
            waiting += count
            continue
        total += count
        own[_short(frames[-1])] += count
        areas[_area(frames[-1])] += count
        # The frames from the script down to the loop are on every stack.
        loop_at = max(n for n, frame in enumerate(frames) if _function(frame).rpartition(".")[2] in _LOOPS)
        for name in {_short(frame) for frame in frames[loop_at + 1 :]}:
            inclusive[name] += count
            if "(twisted_smtpconn/" in name:
                ours[name] += count
    if not total:
        return "no samples inside the event loop (is the run too short, or py-spy not allowed to attach?)"

    def table(title: str, counter: collections.Counter[str], n: int) -> list[str]:
        lines = [title, f"{'samples':>8} {'share':>6}  function (file)"]
        for name, count in counter.most_common(n):
            lines.append(f"{count:8d} {count / total:6.1%}  {name}")
        return lines

    out = [
        f"{total} busy samples inside the event loop; left out: {waiting} waiting in the poller "
        f"(epoll_wait), {outside} outside the loop (start-up, imports).  Shares are of the busy samples.",
        "",
    ]
    out += table(f"Top {top} functions by self samples (the function itself was running):", own, top)
    out += [""]
    out += table(f"Top {top} functions by inclusive samples (on the stack below the loop):", inclusive, top)
    out += [""]
    out += table(f"Top {top} twisted_smtpconn functions by inclusive samples:", ours, top)
    out += [""]
    out += table("Self samples by area:", areas, 30)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subject", default="twisted_smtpconn/queued", help="a client of bench.py")
    parser.add_argument("--scenario", default="one", help="one, large, large-gen, pool or huge")
    parser.add_argument("--count", type=int, default=2000, help="messages in scenarios one and pool")
    parser.add_argument("--size", type=int, default=64 * 1024**2, help="bytes of the generated message (huge)")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--runs", type=int, default=3, help="runs recorded, their samples added up")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", type=Path, help="also write the summary to this file")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw collapsed stacks in this file")
    parser.add_argument("--speedscope", type=Path, help="record a second run for speedscope.app into this file")
    parser.add_argument(
        "--syscalls", action="store_true", help="instead of py-spy: system calls per message, with strace"
    )
    options = parser.parse_args(argv)
    if not 1 <= options.count <= 200_000 or not 10 <= options.rate <= 10_000 or not 1 <= options.runs <= 20:
        parser.error("--count must be 1 to 200,000, --rate 10 to 10,000 and --runs 1 to 20")

    if options.syscalls:
        if options.scenario not in ("one", "pool") or options.count < 2:
            parser.error("--syscalls needs scenario one or pool and --count of at least 2")
        sink = SmtpSink()
        try:
            base = [sys.executable, str(HERE / "_clients.py"), options.subject, options.scenario, LOOPBACK]
            per = syscalls_per_message([*base, str(sink.port)], options.count)
        finally:
            sink.stop()
        text = (
            f"System calls per message (strace -f -c, {options.count} messages less 1), "
            f"{options.subject}, scenario {options.scenario}: {sum(per.values()):.2f} in all\n"
            + "\n".join(f"{value:8.2f}  {name}" for name, value in per.items())
        )
        print(text)
        if options.out is not None:
            options.out.write_text(text + "\n", encoding="utf-8")
        return 0

    py_spy = _py_spy()
    sink = SmtpSink()
    try:
        client = [sys.executable, str(HERE / "_clients.py"), options.subject, options.scenario, LOOPBACK]
        client += [str(sink.port), str(options.count), str(options.size)]
        pieces = []
        with tempfile.TemporaryDirectory(prefix="smtpconn-profile-") as directory:
            for n in range(options.runs):
                raw_path = Path(directory) / f"profile-{n}.raw"
                record(py_spy, client, raw_path, "raw", options.rate)
                pieces.append(raw_path.read_text(encoding="utf-8", errors="replace"))
        raw = "\n".join(pieces)
        if options.raw is not None:
            options.raw.write_text(raw, encoding="utf-8")
        if options.speedscope is not None:
            record(py_spy, client, options.speedscope, "speedscope", options.rate)
    finally:
        sink.stop()
    header = (
        f"py-spy {options.rate} Hz, {options.runs} run(s), {options.subject}, scenario {options.scenario}"
        + (f", {options.count} messages" if options.scenario in ("one", "pool") else "")
        + ", against smtp-sink on 127.0.0.1"
    )
    text = header + "\n\n" + summarise(raw, options.top)
    print(text)
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
