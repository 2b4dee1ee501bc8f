"""The one error model of both processes: one class per case, each with a gRPC code, a
stable reason, a Russian message for people (the seed's rule: every error carries a Russian
description) and whether trying again can help (`retriable`).

Handlers and adapters raise these; adapters translate every vendor exception into one of
them at their boundary. One interceptor turns them into rich gRPC statuses (google.rpc.Status
with an ErrorInfo whose reason is `reason` and domain is ERROR_DOMAIN); background loops
(supervisor.py) and the relay decide retries by `retriable`, never by class. Messages stay
short: Envoy turns a very long grpc-message into a 502.

The last section holds the outcomes ports report to their callers (not client errors), and
the configuration error of start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import grpc

if TYPE_CHECKING:
    from .domain import OutboxEvent
    from .ports import UploadSession

ERROR_DOMAIN = "checkout.v1"


class ServiceError(Exception):
    """Base of every error a client may see. Subclasses set `code`, `reason`, `message` and,
    when a later attempt may succeed, `retriable`."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    reason: ClassVar[str] = "INTERNAL"
    message: ClassVar[str] = "Внутренняя ошибка сервиса"
    retriable: ClassVar[bool] = False

    # A hint for clients of when to try again (sent as google.rpc.RetryInfo), or None.
    retry_after_s: float | None = None

    def __init__(self, detail: str = "", **metadata: str) -> None:
        # `detail` adds specifics to the Russian message; `metadata` goes into ErrorInfo.
        self.detail = detail
        self.metadata = metadata
        super().__init__(self.text)

    @property
    def text(self) -> str:
        return f"{self.message}: {self.detail}" if self.detail else self.message


# --- Bad input (INVALID_ARGUMENT unless noted) ----------------------------------------------


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"
    message = "Некорректный запрос"


class MissingMetadata(InvalidArgument):
    reason = "MISSING_METADATA"
    message = "Первое сообщение загрузки должно содержать метаданные"


class DuplicateMetadata(InvalidArgument):
    reason = "DUPLICATE_METADATA"
    message = "Метаданные можно передать только в первом сообщении"


class EmptyFile(InvalidArgument):
    reason = "EMPTY_FILE"
    message = "Файл пустой"


class NotAVideo(InvalidArgument):
    reason = "NOT_MP4"
    message = "Файл не является видео MP4 (нет блока ftyp в начале файла)"


class FileTooLarge(InvalidArgument):
    reason = "FILE_TOO_LARGE"
    message = "Файл превышает максимально допустимый размер"


class SizeMismatch(InvalidArgument):
    reason = "SIZE_MISMATCH"
    message = "Размер полученных данных не совпадает с заявленным"


class ChecksumMismatch(InvalidArgument):
    reason = "CHECKSUM_MISMATCH"
    message = "Контрольная сумма SHA-256 не совпадает с заявленной"


class InvalidChecksum(InvalidArgument):
    reason = "INVALID_SHA256"
    message = "SHA-256 должна быть строкой из 64 шестнадцатеричных символов"


class InvalidSize(InvalidArgument):
    reason = "INVALID_SIZE"
    message = "Размер файла не может быть отрицательным"


class BucketNotAllowed(InvalidArgument):
    reason = "BUCKET_NOT_ALLOWED"
    message = "Бакет не разрешён"


class InvalidFilename(InvalidArgument):
    reason = "INVALID_FILENAME"
    message = "Недопустимое имя файла"


class InvalidIdempotencyKey(InvalidArgument):
    reason = "INVALID_IDEMPOTENCY_KEY"
    message = "Недопустимый ключ идемпотентности"


class IdempotencyKeyReused(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "IDEMPOTENCY_KEY_REUSED"
    message = "Ключ идемпотентности уже использован для другого файла"


# --- Dependencies ---------------------------------------------------------------------------


class DependencyUnavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"
    message = "Зависимость сервиса недоступна, повторите попытку позже"
    retriable = True


class StorageUnavailable(DependencyUnavailable):
    reason = "STORAGE_UNAVAILABLE"
    message = "Объектное хранилище недоступно, повторите попытку позже"


class DatabaseUnavailable(DependencyUnavailable):
    reason = "DATABASE_UNAVAILABLE"
    message = "База данных недоступна, повторите попытку позже"


class PublisherUnavailable(DependencyUnavailable):
    """Kafka could not be reached or did not acknowledge in time (the relay's)."""

    reason = "KAFKA_UNAVAILABLE"
    message = "Kafka недоступна, повторите попытку позже"


class DeadlineExceeded(ServiceError):
    """An operation ran out of time: the server's own bound, or a dependency's deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"
    message = "Операция не завершилась вовремя, повторите попытку"
    retriable = True


class DatabaseTimeout(DeadlineExceeded):
    reason = "DATABASE_TIMEOUT"
    message = "База данных не успела выполнить операцию, повторите попытку"


class DatabaseError(ServiceError):
    """The database refused an operation for a reason a retry does not change (a bug or a
    misconfiguration: the log has the vendor's error)."""

    reason = "DATABASE_ERROR"
    message = "База данных отклонила операцию"


class StorageError(ServiceError):
    """Object storage refused a request for a reason a retry does not change (credentials,
    permissions, a missing bucket: the log has the vendor's error)."""

    reason = "STORAGE_ERROR"
    message = "Объектное хранилище отклонило запрос"


# --- Statuses, results, requests ------------------------------------------------------------


class InvalidEventId(InvalidArgument):
    reason = "INVALID_EVENT_ID"
    message = "Идентификатор события должен быть UUID"


class InvalidVideoId(InvalidArgument):
    reason = "INVALID_VIDEO_ID"
    message = "Идентификатор видео должен быть UUID"


class InvalidStatusFilter(InvalidArgument):
    reason = "INVALID_STATUS"
    message = "Неизвестный статус: допустимы new, sent, ready, failed"


class InvalidPageToken(InvalidArgument):
    reason = "INVALID_PAGE_TOKEN"
    message = "Недействительный токен страницы"


class InvalidPageSize(InvalidArgument):
    reason = "INVALID_PAGE_SIZE"
    message = "Размер страницы не может быть отрицательным"


class EventNotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "EVENT_NOT_FOUND"
    message = "Событие не найдено"


class EventNotInBucket(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "EVENT_NOT_IN_BUCKET"
    message = "Событие не найдено в этом бакете"


class VideoNotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "VIDEO_NOT_FOUND"
    message = "Видео не найдено в хранилище"


class ResultInvalid(ServiceError):
    code = grpc.StatusCode.DATA_LOSS
    reason = "RESULT_INVALID"
    message = "Результат детекции повреждён: это не JSON-объект"


class ResultTooLarge(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "RESULT_TOO_LARGE"
    message = "Результат детекции слишком велик для ответа"


class TooManyUploads(ServiceError):
    """The process streams UPLOAD_MAX_CONCURRENT uploads already."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_UPLOADS"
    message = "Сервер принимает слишком много загрузок одновременно, повторите попытку позже"
    retriable = True
    retry_after_s = 1.0


class WatcherTooSlow(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "WATCHER_TOO_SLOW"
    message = "Клиент читает поток статусов слишком медленно, подпишитесь заново"


class UploadRateLimited(ServiceError):
    """The client has used its UPLOAD_RATE_PER_MINUTE; `retry_after_s` says when a slot frees."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "UPLOAD_RATE_LIMITED"
    message = "Превышен лимит загрузок для этого клиента, повторите попытку позже"
    retriable = True

    def __init__(self, retry_after_s: float, **metadata: str) -> None:
        super().__init__(**metadata)
        self.retry_after_s = retry_after_s


# --- Authentication and roles -----------------------------------------------------------------


class Unauthenticated(ServiceError):
    """No token, or one the server does not know (the detail says which)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"
    message = "Нужен действительный токен (authorization: Bearer <токен>)"


class PermissionDenied(ServiceError):
    """The token is valid, but its role may not make this call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"
    message = "Роли этого токена не разрешён этот вызов"


class CleanupDisabled(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "CLEANUP_DISABLED"
    message = "Очистка отключена: на сервере не задан ADMIN_TOKEN"


class ShuttingDown(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "SHUTTING_DOWN"
    message = "Сервер останавливается, подключитесь заново"
    retriable = True


class WriteInterrupted(ShuttingDown):
    """A resumable write cut by a stop. What was committed stays: `persisted_size` (ErrorInfo
    metadata, when known) is where to write from, here once the server is back or elsewhere."""

    message = "Сервер останавливается, запись прервана: продолжите с сохранённого размера"

    def __init__(self, *, persisted_size: int | None = None) -> None:
        if persisted_size is None:
            super().__init__()
        else:
            super().__init__(persisted_size=str(persisted_size))


def from_exception(exc: BaseException) -> ServiceError:
    """The ServiceError a client sees for `exc`: itself, DEADLINE_EXCEEDED for a timeout
    that nothing translated, else a generic INTERNAL (the caller logs the traceback)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded()
    return ServiceError()


def is_retriable(exc: BaseException) -> bool:
    """Whether trying again can help: a ServiceError that says so."""
    return isinstance(exc, ServiceError) and exc.retriable


# --- REST upload bodies -----------------------------------------------------------------------


class MissingFile(InvalidArgument):
    reason = "MISSING_FILE"
    message = "В запросе multipart/form-data нет части file"


class InvalidForm(InvalidArgument):
    reason = "INVALID_FORM"
    message = "Некорректное тело multipart/form-data"


# --- Resumable uploads -----------------------------------------------------------------------


class UploadSizeRequired(InvalidArgument):
    reason = "UPLOAD_SIZE_REQUIRED"
    message = "Для возобновляемой загрузки нужно указать размер файла (size_bytes)"


class InvalidUploadId(InvalidArgument):
    reason = "INVALID_UPLOAD_ID"
    message = "Некорректный идентификатор сессии загрузки"


class UploadNotFound(ServiceError):
    """No such session: never started, cancelled, expired, or not the caller's."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "UPLOAD_NOT_FOUND"
    message = "Сессия загрузки не найдена: она не начиналась, отменена или истекла"


class UploadOffsetOutOfRange(ServiceError):
    """The first offset of a stream is beyond what is stored, or bytes go beyond the declared
    size. `persisted_size` (ErrorInfo metadata) is where to write from."""

    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "UPLOAD_OFFSET_OUT_OF_RANGE"
    message = "Смещение записи вне допустимого диапазона"

    def __init__(self, detail: str, *, persisted_size: int, **metadata: str) -> None:
        super().__init__(detail, persisted_size=str(persisted_size), **metadata)


class UploadBeyondSize(UploadOffsetOutOfRange):
    reason = "UPLOAD_BEYOND_SIZE"
    message = "Данные не совпадают с заявленным размером файла"


class UploadOffsetNotContiguous(InvalidArgument):
    reason = "UPLOAD_OFFSET_NOT_CONTIGUOUS"
    message = "Смещения сообщений потока должны идти подряд"


class UploadAlreadyFinishing(InvalidArgument):
    reason = "UPLOAD_DATA_AFTER_FINISH"
    message = "После сообщения с finish_write данных быть не должно"


class ChunkChecksumMismatch(ServiceError):
    """A chunk's CRC32C does not match its bytes: nothing of it was kept, the session stays
    resumable from `persisted_size`."""

    code = grpc.StatusCode.DATA_LOSS
    reason = "CHUNK_CHECKSUM_MISMATCH"
    message = "Контрольная сумма CRC32C фрагмента не совпадает, отправьте его заново"
    retriable = True

    def __init__(self, *, persisted_size: int, offset: int) -> None:
        super().__init__(persisted_size=str(persisted_size), offset=str(offset))


class FileChecksumMismatch(ServiceError):
    """The whole file's CRC32C is not the declared one: the session is cancelled."""

    code = grpc.StatusCode.DATA_LOSS
    reason = "FILE_CRC32C_MISMATCH"
    message = "Контрольная сумма CRC32C файла не совпадает с заявленной"


class UploadBusy(ServiceError):
    """Another stream writes the session and did not let go in time."""

    code = grpc.StatusCode.ABORTED
    reason = "UPLOAD_BUSY"
    message = "Сессию загрузки пишет другой поток, повторите попытку позже"
    retriable = True
    retry_after_s = 1.0


class UploadTakenOver(ServiceError):
    """This stream lost the session to another one (it asked, or this one's lease ran out)."""

    code = grpc.StatusCode.ABORTED
    reason = "UPLOAD_TAKEN_OVER"
    message = "Запись сессии перешла к другому потоку"
    retriable = True


class UploadPartConflict(ServiceError):
    """Two writers stored different bytes for one part: detected, never accepted."""

    code = grpc.StatusCode.ABORTED
    reason = "UPLOAD_PART_CONFLICT"
    message = "Другой поток записал в эту часть другие данные"


class UploadTooLong(ServiceError):
    """An UploadVideo stream outlasted UPLOAD_MAX_DURATION_S (use a resumable session)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "UPLOAD_TOO_LONG"
    message = "Загрузка длится слишком долго: используйте возобновляемую загрузку"


class UploadFinished(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "UPLOAD_FINISHED"
    message = "Загрузка уже завершена, её нельзя отменить"


# --- Outcomes that ports report to their callers (never sent to clients as such) ---------------


class ObjectTooLarge(Exception):
    """An object is larger than the caller allows; `size_bytes` is its size."""

    def __init__(self, size_bytes: int) -> None:
        super().__init__(size_bytes)
        self.size_bytes = size_bytes


class DuplicateIdempotencyKey(Exception):
    """Another event already holds this idempotency key; `existing` is that event."""

    def __init__(self, existing: OutboxEvent) -> None:
        super().__init__(existing.event_id)
        self.existing = existing


class EnvelopeError(ValueError):
    """An outbox event cannot be turned into a Kafka message (permanent, for that event)."""


class ConfigError(ValueError):
    """A setting is missing or malformed (at start-up); the message names the variable."""


class DuplicateUploadSession(Exception):
    """Another session already holds this idempotency key; `existing` is that session."""

    def __init__(self, existing: UploadSession) -> None:
        super().__init__(existing.upload_id)
        self.existing = existing


class MultipartUploadMissing(Exception):
    """The storage no longer holds this multipart upload (completed, aborted or expired)."""
