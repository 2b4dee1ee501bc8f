"""VideoDecoder that decodes each video in a process of its own (decode_worker.py), started
here and read over a pipe: the address-space and CPU limits bind that process only, the wall
clock is kept here, and a process that overruns is killed. The runner's own memory holds one
scaled frame at a time, whatever the file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..domain import DecodeLimits, Sample, VideoInfo
from ..errors import (
    REFUSALS,
    DecodeCpuExceeded,
    DecodeTimeout,
    VideoUndecodable,
)
from . import _decode_wire as wire

log = logging.getLogger(__name__)

WORKER = "checkout_runner.adapters.decode_worker"
STDERR_TAIL_BYTES = 4096
# What the decoding process inherits of the runner's environment: never its credentials
# (MINIO_*, MONGO_URI), since it is the process that reads hostile files.
INHERITED = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR")


class IsolatedDecoder:
    def __init__(self, limits: DecodeLimits, *, threads: int = 1) -> None:
        """`threads`: FFmpeg decoding threads in the decoding process (0: FFmpeg chooses)."""
        self._limits = limits
        self._threads = threads
        side = limits.detect_max_side_px
        # The largest image a sample may carry: scaled to `side`, or a whole frame.
        self._max_image_bytes = 3 * (side * side if side else limits.max_frame_pixels)

    @contextlib.asynccontextmanager
    async def open(self, path: Path, *, every_s: float) -> AsyncIterator[_Decoding]:
        request = {
            "path": str(path),
            "every_s": every_s,
            "threads": self._threads,
            "limits": asdict(self._limits),
        }
        env = {k: os.environ[k] for k in INHERITED if k in os.environ}
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        deadline = asyncio.get_running_loop().time() + self._limits.timeout_s
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            WORKER,
            json.dumps(request),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            # Not in the runner's process group: a Ctrl-C meant for the runner does not
            # reach it; the runner ends it when it leaves this context.
            start_new_session=True,
        )
        assert process.stderr is not None
        tail = asyncio.create_task(_tail(process.stderr))
        decoding = _Decoding(process, deadline, self._limits, self._max_image_bytes, tail)
        try:
            await decoding.start()
            yield decoding
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
            tail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tail


class _Decoding:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        deadline: float,
        limits: DecodeLimits,
        max_image_bytes: int,
        tail: asyncio.Task[bytes],
    ) -> None:
        assert process.stdout is not None
        self._process = process
        self._out = process.stdout
        self._deadline = deadline
        self._limits = limits
        self._max_payload = wire.SAMPLE.size + max_image_bytes
        self._tail = tail
        self.info = VideoInfo(width=0, height=0, fps=0.0, frame_count=0, duration_s=0.0)

    @property
    def pid(self) -> int:
        """The decoding process's."""
        return self._process.pid

    async def start(self) -> None:
        kind, payload = await self._next()
        if kind != wire.INFO:
            raise RuntimeError(f"decoding process: {kind!r} before the video's figures")
        self.info = VideoInfo(**wire.parse_json(payload))

    async def samples(self) -> AsyncGenerator[Sample, None]:
        while True:
            kind, payload = await self._next()
            if kind == wire.DONE:
                return
            if kind != wire.FRAME:
                raise RuntimeError(f"decoding process: unexpected message {kind!r}")
            index, at, width, height, image_w, image_h = wire.SAMPLE.unpack_from(payload)
            image = np.frombuffer(payload, dtype=np.uint8, offset=wire.SAMPLE.size)
            yield Sample(
                index=index,
                timestamp_s=at,
                width=width,
                height=height,
                image=image.reshape(image_h, image_w, 3),
            )

    async def _next(self) -> tuple[bytes, bytes]:
        """The next message; a refusal the process reported, or what its end says, raised."""
        try:
            async with asyncio.timeout_at(self._deadline):
                kind, length = wire.HEADER.unpack(await self._out.readexactly(wire.HEADER.size))
                if length > self._max_payload:
                    raise RuntimeError(f"decoding process: a message of {length} bytes")
                payload = await self._out.readexactly(length)
        except TimeoutError:
            self._process.kill()
            raise DecodeTimeout(
                f"not decoded within {self._limits.timeout_s:g} s (RUNNER_VIDEO_TIMEOUT_S)"
            ) from None
        except asyncio.IncompleteReadError:
            raise await self._ended() from None
        if kind == wire.ERROR:
            refusal = wire.parse_json(payload)
            raise REFUSALS.get(str(refusal["reason"]), VideoUndecodable)(str(refusal["message"]))
        return kind, payload

    async def _ended(self) -> Exception:
        """Why the process stopped talking."""
        code = await self._process.wait()
        if code == -signal.SIGXCPU:
            return DecodeCpuExceeded(
                f"decoding used over {self._limits.cpu_s} s of CPU (RUNNER_DECODE_CPU_S)"
            )
        stderr = (await self._tail).decode(errors="replace").strip()
        if code < 0:
            # FFmpeg crashed on this file (or ran out of memory where it cannot say so): the
            # same file would crash it again, so the video fails now.
            log.warning("decoding process died", extra={"signal": -code, "stderr": stderr})
            name = signal.Signals(-code).name
            return VideoUndecodable(f"the decoder crashed on this file ({name})")
        # Our own code failed (a traceback on stderr): a bug, retried up to max attempts.
        return RuntimeError(f"decoding process exited with {code}: {stderr[-1000:]}")


async def _tail(stream: asyncio.StreamReader) -> bytes:
    """The last STDERR_TAIL_BYTES the process writes on its standard error."""
    kept = b""
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-STDERR_TAIL_BYTES:]
    return kept
