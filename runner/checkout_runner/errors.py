"""The runner's errors: a stable `reason` each, and `retriable` (a later attempt may succeed)
or not (the event gets a failure result)."""

from __future__ import annotations


class RunnerError(Exception):
    reason = "RUNNER_ERROR"
    retriable = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.reason)
        self.message = message or self.reason


class ConfigError(RunnerError):
    reason = "CONFIG_INVALID"


class EnvelopeError(RunnerError):
    """A Kafka record that is not a version-1 envelope of an uploaded video: skipped."""

    reason = "ENVELOPE_INVALID"


class VideoUndecodable(RunnerError):
    """The object is not a video the decoder can read (corrupt, no video stream)."""

    reason = "VIDEO_UNDECODABLE"


class VideoMissing(RunnerError):
    """The event's video is not in storage (deleted, e.g. by Cleanup)."""

    reason = "VIDEO_NOT_FOUND"


class VideoTooLarge(RunnerError):
    reason = "VIDEO_TOO_LARGE"


class VideoRefused(RunnerError):
    """The video is beyond one of the runner's decoding limits (config.py, RUNNER_MAX_* and
    RUNNER_DECODE_*): it gets a failure result on its first attempt, never a retry."""

    reason = "VIDEO_REFUSED"


class FrameTooLarge(VideoRefused):
    reason = "VIDEO_FRAME_TOO_LARGE"  # pixels per frame over RUNNER_MAX_FRAME_PIXELS


class VideoTooLong(VideoRefused):
    reason = "VIDEO_TOO_LONG"  # over RUNNER_MAX_DURATION_S


class FrameRateTooHigh(VideoRefused):
    reason = "VIDEO_FRAME_RATE_TOO_HIGH"  # over RUNNER_MAX_FPS


class TooManyFrames(VideoRefused):
    """More frames decoded between two samples than RUNNER_MAX_FRAMES_PER_SAMPLE: a rate the
    container hid, or timestamps that do not advance."""

    reason = "VIDEO_TOO_MANY_FRAMES"


class DecodeTimeout(VideoRefused):
    reason = "DECODE_TIMEOUT"  # RUNNER_VIDEO_TIMEOUT_S of wall clock


class DecodeCpuExceeded(VideoRefused):
    reason = "DECODE_CPU_EXCEEDED"  # RUNNER_DECODE_CPU_S of CPU in the decoding process


class DecodeMemoryExceeded(VideoRefused):
    reason = "DECODE_MEMORY_EXCEEDED"  # RUNNER_DECODE_MEMORY_BYTES of address space


REFUSALS: dict[str, type[RunnerError]] = {
    cls.reason: cls
    for cls in (
        VideoUndecodable,
        FrameTooLarge,
        VideoTooLong,
        FrameRateTooHigh,
        TooManyFrames,
        DecodeTimeout,
        DecodeCpuExceeded,
        DecodeMemoryExceeded,
    )
}
"""The failures a decoding process reports, by reason (adapters/isolated_decoder.py)."""


class DetectorFault(RunnerError):
    """The detector returned a value that is no number (NaN, infinity): a fault of the model
    or its runtime, not of the video. The event gets a failure result; retrying would not
    help."""

    reason = "DETECTOR_FAULT"


class StorageUnavailable(RunnerError):
    reason = "STORAGE_UNAVAILABLE"
    retriable = True


class StorageError(RunnerError):
    """Storage refused for good (credentials, permissions, a missing bucket)."""

    reason = "STORAGE_ERROR"
    retriable = True  # an operator can fix it; the event must not be lost meanwhile


class DatabaseUnavailable(RunnerError):
    reason = "DATABASE_UNAVAILABLE"
    retriable = True


class ConsumerUnavailable(RunnerError):
    reason = "KAFKA_UNAVAILABLE"
    retriable = True
