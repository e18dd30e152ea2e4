"""
The queue's overhead per message: ``smtpsend --queue`` with 1 and 2
workers against ``smtpsend --spool`` of the same messages on one process,
all delivering to Postfix's ``smtp-sink`` on 127.0.0.1.

    .venv/bin/python benchmarks/queue_throughput.py [--messages 5000] [--connections 4] [--rounds 2]

Needs the ``rabbitmq-server`` and ``postfix`` packages (a private node and
smtp-sink are started here, on 127.0.0.1, and stopped by PID).  Each
timing runs from the start of the sending processes to the last message
settled (the spool run's exit; for the queue, the last result record on
``Q.results``), so process start-up is in both.  Enqueueing is timed on its
own (it is the producer's cost, paid before).  Prints a table in
reStructuredText.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import pika  # noqa: E402

from realservers.postfix_peer import start_smtp_sink  # noqa: E402
from realservers.rabbitmq_peer import RabbitNode, start_rabbitmq  # noqa: E402

LIMIT = 600.0


def _spool(directory: Path, count: int) -> None:
    directory.mkdir()
    for seq in range(count):
        (directory / f"{seq:06d}.eml").write_bytes(
            (
                f"From: sender@example.test\r\nTo: rcpt{seq % 17}@example.test\r\n"
                f"Message-ID: <{seq}.bench@example.test>\r\nSubject: bench {seq}\r\n\r\n"
                + "A line of text to make the message a little longer than nothing.\r\n" * 12
            ).encode()
        )


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "twisted_smtpconn", *args]


def _results_queue(node: RabbitNode, queue: str) -> str:
    name = f"bench-results-{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(pika.URLParameters(node.url)) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange=f"{queue}.results", exchange_type="fanout", durable=True)
        channel.queue_declare(queue=name, durable=True)
        channel.queue_bind(queue=name, exchange=f"{queue}.results")
    return name


def _wait_records(node: RabbitNode, queue: str, count: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + LIMIT
    with pika.BlockingConnection(pika.URLParameters(node.url)) as connection:
        channel = connection.channel()
        while len(records) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(records)} of {count} records")
            method, _, body = channel.basic_get(queue=queue, auto_ack=True)
            if method is None:
                time.sleep(0.02)
                continue
            records.append(json.loads(body))
    return records


def run_spool(spool: Path, port: int, connections: int, cwd: Path) -> float:
    started = time.monotonic()
    subprocess.run(
        _cli("--spool", str(spool), "--host", "127.0.0.1", "--port", str(port), "--connections", str(connections)),
        check=True, cwd=cwd, stdout=subprocess.DEVNULL, timeout=LIMIT,
    )
    return time.monotonic() - started


def run_queue(node: RabbitNode, spool: Path, port: int, connections: int, workers: int, count: int, cwd: Path) -> tuple[float, float]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    results = _results_queue(node, queue)
    started = time.monotonic()
    subprocess.run(
        _cli("enqueue", "--queue", node.url, "--queue-name", queue, "--spool", str(spool)),
        check=True, cwd=cwd, stdout=subprocess.DEVNULL, timeout=LIMIT,
    )
    enqueued = time.monotonic() - started
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            _cli("--queue", node.url, "--queue-name", queue, "--host", "127.0.0.1", "--port", str(port),
                 "--connections", str(connections)),
            cwd=cwd, stdout=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        records = _wait_records(node, results, count)
        elapsed = time.monotonic() - started
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(60)
    assert all(r["status"] == "sent" for r in records), {r["status"] for r in records}
    return enqueued, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    count = args.messages
    work = Path(tempfile.mkdtemp(prefix="qbench-", dir="/tmp"))
    _spool(work / "spool", count)
    sink = start_smtp_sink()
    node = start_rabbitmq(work / "mq")
    rows: dict[str, list[float]] = {"spool": [], "queue, 1 worker": [], "queue, 2 workers": []}
    enqueue_times: list[float] = []
    try:
        for _ in range(args.rounds):
            rows["spool"].append(run_spool(work / "spool", sink.port, args.connections, work))
            for workers in (1, 2):
                enqueued, elapsed = run_queue(node, work / "spool", sink.port, args.connections, workers, count, work)
                enqueue_times.append(enqueued)
                rows[f"queue, {workers} worker{'s' if workers > 1 else ''}"].append(elapsed)
    finally:
        node.stop()
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = min(rows["spool"])
    print(f"\n{count} messages, --connections {args.connections} per process, smtp-sink; best of {args.rounds}\n")
    print("=================  ========  =========  ==========================")
    print("run                seconds   msg/s      overhead vs --spool, ms/msg")
    print("=================  ========  =========  ==========================")
    for label, times in rows.items():
        best = min(times)
        overhead = "" if label == "spool" else f"{(best - base) * 1000 / count:+.2f}"
        print(f"{label:<17}  {best:8.2f}  {count / best:9.0f}  {overhead}")
    print("=================  ========  =========  ==========================")
    print(f"\nenqueue (publisher confirms): best {min(enqueue_times):.2f}s, {count / min(enqueue_times):.0f} msg/s")


if __name__ == "__main__":
    main()
