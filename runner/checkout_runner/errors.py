"""The runner's errors: a stable `reason` each, and `retriable` (a later attempt may succeed)
or not (the event gets a failure result)."""

from __future__ import annotations

import enum


class RunnerError(Exception):
    reason = "RUNNER_ERROR"
    retriable = False
    description = ""
    """What a failure result says of this reason to people, in Russian (`error.description`;
    the web console shows it). Every reason of FAILURE_RESULTS has one."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.reason)
        self.message = message or self.reason


class ConfigError(RunnerError):
    reason = "CONFIG_INVALID"


class Refusal(enum.StrEnum):
    """Why a Kafka record is refused before anything is read or written for it (envelope.py;
    the `reason` of checkout_runner_refused_records_total, a fixed set: never the record's
    own text)."""

    NOT_JSON = "NOT_JSON"  # not a JSON object
    VERSION = "VERSION_UNKNOWN"  # `version` is not 1
    TYPE = "TYPE_UNKNOWN"  # `type` is not checkout.video.uploaded
    EVENT_ID = "EVENT_ID_INVALID"  # not a canonical UUID (lowercase, hyphenated)
    VIDEO_ID = "VIDEO_ID_INVALID"  # not a canonical UUID
    BUCKET = "BUCKET_NOT_ALLOWED"  # not on ALLOWED_BUCKETS (the default bucket included)
    OBJECT_KEY = "OBJECT_KEY_INVALID"  # not input/{video_id}.mp4 of the record's video_id
    SIZE = "SIZE_INVALID"  # `size_bytes` not an integer of at least 0
    SHA256 = "SHA256_INVALID"  # not 64 lowercase hex digits, nor empty
    CREATED_AT = "CREATED_AT_INVALID"  # not an RFC 3339 date-time with its offset


class EnvelopeError(RunnerError):
    """A Kafka record refused (`refusal` says why): not a version-1 envelope of an uploaded
    video, or one that names anything but its own video in an allowed bucket. Its offset is
    committed; nothing is read or written for it."""

    reason = "ENVELOPE_INVALID"

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal


class VideoUndecodable(RunnerError):
    """FFmpeg cannot open or decode it (with how far it got), it has no video stream, no
    frame decodes, or the decoder crashed on it."""

    reason = "VIDEO_UNDECODABLE"
    description = (
        "Файл не удаётся прочитать как видео: он повреждён, в нём нет видеодорожки или ни один "
        "кадр не декодируется."
    )


class VideoMissing(RunnerError):
    """The event's video is not in storage (deleted, e.g. by Cleanup)."""

    reason = "VIDEO_NOT_FOUND"
    description = "Видео нет в хранилище: его удалили до обработки."


class VideoTooLarge(RunnerError):
    """Over `RUNNER_MAX_VIDEO_BYTES` (not downloaded)."""

    reason = "VIDEO_TOO_LARGE"
    description = "Видео больше, чем обработчик принимает (RUNNER_MAX_VIDEO_BYTES)."


class VideoRefused(RunnerError):
    """The video is beyond one of the runner's decoding limits (RUNNER_MAX_* and
    RUNNER_DECODE_*): it gets a failure result on its first attempt, never a retry."""

    reason = "VIDEO_REFUSED"


class FrameTooLarge(VideoRefused):
    """Frames of more pixels than `RUNNER_MAX_FRAME_PIXELS`, as the container says or as a
    frame turns out."""

    reason = "VIDEO_FRAME_TOO_LARGE"
    description = "Кадры видео больше, чем обработчик принимает (RUNNER_MAX_FRAME_PIXELS)."


class VideoTooLong(VideoRefused):
    """Longer than `RUNNER_MAX_DURATION_S`, as the container says or as the frames' times
    turn out."""

    reason = "VIDEO_TOO_LONG"
    description = "Видео длиннее, чем обработчик принимает (RUNNER_MAX_DURATION_S)."


class FrameRateTooHigh(VideoRefused):
    """A frame rate over `RUNNER_MAX_FPS`, as the container says."""

    reason = "VIDEO_FRAME_RATE_TOO_HIGH"
    description = "Частота кадров выше, чем обработчик принимает (RUNNER_MAX_FPS)."


class TooManyFrames(VideoRefused):
    """More frames decoded between two samples than `RUNNER_MAX_FRAMES_PER_SAMPLE`:
    timestamps that do not advance, or a rate the container hides."""

    reason = "VIDEO_TOO_MANY_FRAMES"
    description = (
        "Слишком много кадров между двумя выборками: метки времени не растут или частота "
        "кадров скрыта."
    )


class DecodeTimeout(VideoRefused):
    """Not decoded and detected within `RUNNER_VIDEO_TIMEOUT_S`: the decoding process is
    killed."""

    reason = "DECODE_TIMEOUT"
    description = "Видео не удалось обработать за отведённое время (RUNNER_VIDEO_TIMEOUT_S)."


class DecodeCpuExceeded(VideoRefused):
    """The decoding process used `RUNNER_DECODE_CPU_S` of CPU: the kernel ended it."""

    reason = "DECODE_CPU_EXCEEDED"
    description = "Декодирование видео превысило лимит процессорного времени (RUNNER_DECODE_CPU_S)."


class DecodeMemoryExceeded(VideoRefused):
    """Decoding needed more than `RUNNER_DECODE_MEMORY_BYTES` of address space."""

    reason = "DECODE_MEMORY_EXCEEDED"
    description = "Декодирование видео превысило лимит памяти (RUNNER_DECODE_MEMORY_BYTES)."


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
    or its runtime; retrying would not help."""

    reason = "DETECTOR_FAULT"
    description = "Детектор вернул некорректный результат (не число); повтор не поможет."


class ProcessingFailed(RunnerError):
    """An unexpected error (a bug, a crash) on `RUNNER_MAX_ATTEMPTS` attempts: the runner's
    log says which."""

    reason = "PROCESSING_FAILED"
    description = (
        "Обработка не удалась после всех попыток из-за внутренней ошибки; подробности в "
        "журнале обработчика."
    )


FAILURE_RESULTS: tuple[type[RunnerError], ...] = (
    VideoUndecodable,
    VideoMissing,
    VideoTooLarge,
    *(cls for cls in REFUSALS.values() if cls is not VideoUndecodable),
    DetectorFault,
    ProcessingFailed,
)
"""Every reason a failure result may give (docs/runner.md's table is made from it)."""


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
