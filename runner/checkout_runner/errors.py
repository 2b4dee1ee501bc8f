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
