"""One event, from its Kafka record to its result JSON: at least once, idempotent.

1. An event whose record says `ready` is skipped (a redelivery). One that says `predictable`
   with a result newer than the event was stored before a crash: it is marked ready, nothing
   is written again. A record carries its event's `created_at`: one of an earlier event with
   the same id (deleted by Cleanup, then recorded again) is not this event's.
2. `processing`: the video is streamed from storage to a temporary file, decoded in a process
   of its own within the decoding limits, with frames sampled at RUNNER_SAMPLE_FPS and scaled
   to the detection size, and the samples run through the detector in batches, in a worker
   thread (the event loop never decodes or detects).
3. `predictable`: the result JSON is built; then stored in one PUT at the result key.
4. `ready`. Only then may the consumer commit the record's offset.

A record is checked first (envelope.py): one that is not the relay's record of an uploaded
video in an allowed bucket is refused, counted and committed, with nothing read or written.

A video that cannot be decoded, is missing, too large or beyond a decoding limit, or on which
the detector returns no numbers, gets a failure result (`status: failed`, with a reason) on
its first attempt instead: the checkout API reports the event `failed`. Outages
(storage, database) are retried with backoff until they pass or the runner stops; any other
error is retried up to RUNNER_MAX_ATTEMPTS attempts, then the event gets a failure result.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from checkout_common.backoff import Backoff, Retries
from checkout_common.supervisor import wait_or_stop

from . import envelope, result
from .domain import (
    Analysis,
    ConsumedRecord,
    FrameResult,
    ResultStatus,
    Sample,
    VideoEvent,
    VideoState,
)
from .downloads import download_folder
from .errors import (
    DetectorFault,
    EnvelopeError,
    ProcessingFailed,
    RunnerError,
    VideoUndecodable,
)
from .metrics import RunnerMetrics
from .ports import DecodedVideo, Detector, ObjectStore, ResultAnnouncer, StateStore, VideoDecoder

log = logging.getLogger(__name__)

# (traceparent, attributes) -> a span continuing that trace, yielding its trace id in hex.
SpanFactory = Callable[[str, dict[str, str]], AbstractContextManager[str]]

# A result written this long before its event was created still counts (clock skew between
# storage and the server, as the server allows).
RESULT_CLOCK_SKEW = timedelta(seconds=5)


class Handled(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    INVALID = "invalid"
    STOPPED = "stopped"  # the runner is stopping: not done, must not be committed


@dataclass(frozen=True, kw_only=True)
class ProcessorConfig:
    runner_id: str
    sample_fps: float
    max_video_bytes: int
    max_sampled_frames: int
    max_result_bytes: int
    detect_batch: int
    max_attempts: int
    retry_initial_s: float
    retry_max_s: float
    temp_dir: Path | None
    result_key: Callable[[VideoEvent], str]
    # The buckets a record may name (ALLOWED_BUCKETS with DEFAULT_BUCKET).
    buckets: frozenset[str]


class Processor:
    def __init__(
        self,
        *,
        store: ObjectStore,
        states: StateStore,
        decoder: VideoDecoder,
        detectors: list[Detector],
        config: ProcessorConfig,
        metrics: RunnerMetrics,
        span: SpanFactory,
        announcer: ResultAnnouncer | None = None,
    ) -> None:
        """`detectors`: one instance per video processed at once (RUNNER_CONCURRENCY);
        `span`: tracing.Spans.processing, or any factory of that shape; `announcer` tells
        the servers of each result written (none: they find it by looking)."""
        self._announcer = announcer
        self._span = span
        self._store = store
        self._states = states
        self._decoder = decoder
        self._idle: asyncio.Queue[Detector] = asyncio.Queue()
        for detector in detectors:
            self._idle.put_nowait(detector)
        self._detector_id = (detectors[0].name, detectors[0].version)
        self._config = config
        self._metrics = metrics
        # The events being processed now, each with what its end sets (a batch may carry two
        # records of one event: the relay delivers at least once).
        self._handling: dict[str, asyncio.Event] = {}

    async def handle(self, delivery: ConsumedRecord, stop: asyncio.Event) -> Handled:
        """Process one record until its result is stored (or it needs none); STOPPED when
        `stop` was set first."""
        try:
            event = envelope.parse(delivery, buckets=self._config.buckets)
        except EnvelopeError as exc:
            # Before any read or write: a record anyone could have sent names no object to
            # read and no place to write (not even a failure result at a key it chose).
            log.warning(
                "record refused (%s): %s",
                exc.refusal.value,
                exc.message,
                extra={
                    "partition": delivery.partition,
                    "offset": delivery.offset,
                    "reason": exc.refusal.value,
                },
            )
            self._metrics.refused.labels(exc.refusal.value).inc()
            self._metrics.videos.labels(Handled.INVALID.value).inc()
            return Handled.INVALID
        running = self._handling.get(event.event_id)
        if running is not None:
            # A second record of an event being processed (in the same batch): it waits for
            # the first, whose result (or stop) stands for both, and is not processed again.
            await running.wait()
            log.info(
                "a second record of an event in hand: skipped", extra={"event_id": event.event_id}
            )
            self._metrics.videos.labels(Handled.SKIPPED.value).inc()
            return Handled.SKIPPED
        self._handling[event.event_id] = done = asyncio.Event()
        try:
            return await self._handle(event, stop)
        finally:
            del self._handling[event.event_id]
            done.set()

    async def _handle(self, event: VideoEvent, stop: asyncio.Event) -> Handled:
        retries = Retries(Backoff(self._config.retry_initial_s, self._config.retry_max_s))
        outages = 0
        while not stop.is_set():
            try:
                outcome = await self._attempt(event, outages=outages, stop=stop)
            except _Stopped:
                log.info("stopping: left unfinished", extra={"event_id": event.event_id})
                return Handled.STOPPED
            except Exception as exc:
                delay_s = retries.next_delay_s()
                # Outages pass: they do not count against RUNNER_MAX_ATTEMPTS. Anything else
                # does, as do crashes (the state record counts every attempt begun).
                if isinstance(exc, RunnerError) and exc.retriable:
                    outages += 1
                    self._metrics.failures.labels(exc.reason).inc()
                    log.warning(
                        "attempt failed, retrying in %.1f s: %s",
                        delay_s,
                        exc.message,
                        extra={"event_id": event.event_id, "reason": exc.reason},
                    )
                else:
                    self._metrics.failures.labels("INTERNAL").inc()
                    log.exception(
                        "attempt failed, retrying in %.1f s",
                        delay_s,
                        extra={"event_id": event.event_id},
                    )
                await wait_or_stop(stop, delay_s)
            else:
                self._metrics.videos.labels(outcome.value).inc()
                return outcome
        return Handled.STOPPED

    async def _attempt(self, event: VideoEvent, *, outages: int, stop: asyncio.Event) -> Handled:
        """One try. `outages`: earlier tries of this delivery that an outage ended (they do
        not count as attempts)."""
        key = self._config.result_key(event)
        state = await self._states.state_of(event)
        if state is VideoState.READY:
            log.info("already ready: skipped", extra={"event_id": event.event_id})
            return Handled.SKIPPED
        if state is VideoState.PREDICTABLE and await self._stored_result(event, key):
            await self._states.advance(event.event_id, VideoState.READY, result_key=key)
            log.info("result stored before a restart: ready", extra={"event_id": event.event_id})
            return Handled.SKIPPED
        attributes = {"event_id": event.event_id, "video_id": event.video_id}
        with self._span(event.traceparent, attributes) as trace_id:
            started = time.monotonic()
            attempt = await self._states.begin(
                event, runner_id=self._config.runner_id, trace_id=trace_id
            )
            extra = {"event_id": event.event_id, "attempt": attempt, "trace_id": trace_id}
            log.info("processing", extra=extra)
            if attempt - outages > self._config.max_attempts:
                gave_up = ProcessingFailed(
                    f"gave up after {attempt - 1} attempts (the runner's log says why)"
                )
                body = result.failure(event, gave_up)
                return await self._store_result(
                    event, key, body, ResultStatus.FAILED, gave_up.reason
                )
            self._metrics.in_progress.inc()
            try:
                analysis, truncated = await self._analyse(event, stop)
            except RunnerError as exc:
                if exc.retriable:
                    raise
                log.warning("video cannot be processed: %s", exc.message, extra=extra)
                body = result.failure(event, exc)
                return await self._store_result(event, key, body, ResultStatus.FAILED, exc.reason)
            finally:
                self._metrics.in_progress.dec()
            seconds = time.monotonic() - started
            await self._states.advance(
                event.event_id, VideoState.PREDICTABLE, frames=len(analysis.frames)
            )
            body = result.success(
                event,
                analysis,
                detector=self._detector_id,
                sample_fps=self._config.sample_fps,
                truncated=truncated,
            )
            handled = await self._store_result(event, key, body, ResultStatus.OK, "")
            self._metrics.video_seconds.observe(time.monotonic() - started)
            log.info(
                "result stored",
                extra={**extra, "frames": len(analysis.frames), "seconds": round(seconds, 2)},
            )
            return handled

    async def _stored_result(self, event: VideoEvent, key: str) -> bool:
        written = await self._store.written_at(event.bucket, key)
        return written is not None and written >= event.created_at - RESULT_CLOCK_SKEW

    async def _store_result(
        self, event: VideoEvent, key: str, body: bytes, outcome: ResultStatus, reason: str
    ) -> Handled:
        await self._store.put_json(event.bucket, key, body)
        self._metrics.results_written.inc()
        if self._announcer is not None:
            await self._announcer.announce(event, key)
        if reason:
            self._metrics.failures.labels(reason).inc()
        await self._states.advance(
            event.event_id,
            VideoState.READY,
            outcome=outcome.value,
            reason=reason or None,
            result_key=key,
        )
        return Handled.OK if outcome is ResultStatus.OK else Handled.FAILED

    async def _analyse(self, event: VideoEvent, stop: asyncio.Event) -> tuple[Analysis, bool]:
        """Download the video to a temporary file and run the detector over its samples; a
        `stop` meanwhile ends the detection before the next batch (_Stopped)."""
        with download_folder(self._config.temp_dir) as folder:
            path = folder / "video"
            await self._store.download(
                event.bucket, event.object_key, path, max_bytes=self._config.max_video_bytes
            )
            detector = await self._idle.get()
            try:
                started = time.monotonic()
                every_s = 1.0 / self._config.sample_fps
                async with self._decoder.open(path, every_s=every_s) as video:
                    analysis, truncated = await self._detect_all(video, detector, stop)
                elapsed = max(time.monotonic() - started, 1e-6)
                self._metrics.frames_per_second.set(round(len(analysis.frames) / elapsed, 2))
                return analysis, truncated
            finally:
                self._idle.put_nowait(detector)

    async def _detect_all(
        self, video: DecodedVideo, detector: Detector, stop: asyncio.Event
    ) -> tuple[Analysis, bool]:
        """Every sample through the detector, in batches of one size, until the samples, the
        frame limit or the result size limit end."""
        frames_bytes = self._config.max_result_bytes - result.HEADER_MAX_BYTES
        found = _Findings(self._config.max_sampled_frames, frames_bytes)
        samples = video.samples()
        try:
            await self._detect_each(samples, detector, found, stop)
        finally:
            await samples.aclose()
        if not found.frames:
            raise VideoUndecodable("no frame could be decoded")
        return Analysis(video=video.info, frames=found.frames), found.full

    async def _detect_each(
        self,
        samples: AsyncGenerator[Sample, None],
        detector: Detector,
        found: _Findings,
        stop: asyncio.Event,
    ) -> None:
        batch: list[Sample] = []  # of one image shape (a stream may change its size)
        while not found.full:
            sample = await _next_or_stop(samples, stop)
            if batch and (sample is None or sample.image.shape != batch[0].image.shape):
                await self._detect_batch(batch, detector, found)
                batch = []
            if sample is None:
                return
            batch.append(sample)
            if len(batch) >= self._config.detect_batch:
                await self._detect_batch(batch, detector, found)
                batch = []

    async def _detect_batch(
        self, batch: list[Sample], detector: Detector, found: _Findings
    ) -> None:
        images = [s.image for s in batch]
        # In a worker thread: the event loop never detects.
        results = await asyncio.to_thread(detector.detect, images)
        for sample, detections in zip(batch, results, strict=True):
            if not all(d.is_finite() for d in detections):
                raise DetectorFault(
                    f"{detector.name} returned a value that is no number at frame {sample.index}"
                )
            height, width = sample.image.shape[:2]
            sx, sy = sample.width / width, sample.height / height
            scaled = tuple(d.scaled(sx, sy, sample.width, sample.height) for d in detections)
            found.add(
                FrameResult(index=sample.index, timestamp_s=sample.timestamp_s, detections=scaled)
            )
            self._metrics.frames.inc()


class _Findings:
    """The frames detected so far, up to a count and a size of the result document."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.frames: list[FrameResult] = []
        self.full = False  # a limit was reached: the result says `truncated`
        self._max_frames = max_frames
        self._left_bytes = max_bytes

    def add(self, frame: FrameResult) -> None:
        size = result.frame_bytes(frame)
        if self.full or len(self.frames) >= self._max_frames or size > self._left_bytes:
            self.full = True
            return
        self.frames.append(frame)
        self._left_bytes -= size


async def _next_or_stop(
    samples: AsyncGenerator[Sample, None], stop: asyncio.Event
) -> Sample | None:
    """The next sample, None after the last; _Stopped when `stop` is set first (a decoder
    that is slow to answer does not hold a stopping runner)."""
    if stop.is_set():
        raise _Stopped()
    following = asyncio.ensure_future(anext(samples, None))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((following, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not following.done():
            following.cancel()
            # Until the decoder's read has ended; asyncio.wait raises no CancelledError of
            # `following`'s, only this task's own.
            await asyncio.wait((following,))
    if following.cancelled():
        raise _Stopped()
    return following.result()


class _Stopped(Exception):
    """The runner is stopping: the video is left unfinished (uncommitted, delivered again)."""
