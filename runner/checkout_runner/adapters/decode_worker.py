"""The decoding process (`python -m checkout_runner.adapters.decode_worker REQUEST`): decodes
one video under the address-space and CPU limits it sets on itself before opening the file,
and writes what it finds to its standard output (_decode_wire.py). The runner starts one per
video (isolated_decoder.py) and kills it past the wall-clock limit; whatever a hostile file
makes FFmpeg do happens here, not in the runner.

REQUEST is JSON: {"path", "every_s", "threads", "limits": DecodeLimits' fields}.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
from pathlib import Path
from typing import BinaryIO

from ..domain import DecodeLimits
from ..errors import DecodeMemoryExceeded, RunnerError, VideoUndecodable
from . import _decode_wire as wire
from .pyav_decoder import PyAVDecoder

# A decoding failure with this share of the address-space limit taken counts as the limit's.
NEAR_LIMIT = 0.75


def limit_self(limits: DecodeLimits) -> None:
    """Cap this process: past `memory_bytes` of address space allocations fail; past `cpu_s`
    of CPU the kernel sends SIGXCPU (which ends it), and SIGKILL a second later. No core
    file: a process that dies of a signal leaves nothing of up to `memory_bytes` behind."""
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run(request: dict[str, object], out: BinaryIO) -> None:
    limits = DecodeLimits(**request["limits"])  # type: ignore[arg-type]
    limit_self(limits)
    decoder = PyAVDecoder(limits, threads=int(str(request["threads"])))
    try:
        with decoder.open(Path(str(request["path"]))) as video:
            out.write(wire.info(video.info))
            out.flush()
            for s in video.samples(every_s=float(str(request["every_s"]))):
                height, width = s.image.shape[:2]
                out.write(
                    wire.frame_header(s.index, s.timestamp_s, s.width, s.height, width, height)
                )
                out.write(s.image.data)
                out.flush()
        out.write(wire.message(wire.DONE))
    except MemoryError:
        exceeded = DecodeMemoryExceeded(
            f"decoding needed more than {limits.memory_bytes} bytes of address space"
        )
        out.write(wire.error(exceeded.reason, exceeded.message))
    except VideoUndecodable as exc:
        # FFmpeg often reports an allocation that failed as invalid data: near the limit,
        # the limit is the likelier cause, and the message gives both.
        peak = _peak_address_space()
        if peak >= NEAR_LIMIT * limits.memory_bytes:
            exceeded = DecodeMemoryExceeded(
                f"{exc.message} (with {peak >> 20} MiB of the "
                f"{limits.memory_bytes >> 20} MiB of address space taken)"
            )
            out.write(wire.error(exceeded.reason, exceeded.message))
        else:
            out.write(wire.error(exc.reason, exc.message))
    except RunnerError as exc:
        out.write(wire.error(exc.reason, exc.message))
    out.flush()


def _peak_address_space() -> int:
    """This process's largest address space so far, in bytes (Linux: VmPeak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    # A closed pipe: the runner stopped, or no longer reads; there is nothing to say.
    with contextlib.suppress(BrokenPipeError):
        run(json.loads(sys.argv[1]), sys.stdout.buffer)


if __name__ == "__main__":
    main()
