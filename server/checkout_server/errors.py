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

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Self

import grpc

if TYPE_CHECKING:
    from .domain import OutboxEvent
    from .ports import UploadSession

ERROR_DOMAIN = "checkout.v1"

# The HTTP status of each code for REST clients: Envoy's gRPC-JSON transcoder answers with
# Google's mapping (Envoy's Grpc::Utility::grpcToHttpStatus). Only the error table of
# docs/api.md reads it; the server itself answers gRPC only.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = MappingProxyType(
    {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.UNKNOWN: 500,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DATA_LOSS: 500,
        grpc.StatusCode.UNAUTHENTICATED: 401,
    }
)


class ServiceError(Exception):
    """An unexpected failure (a bug): the message is generic, the traceback is in the log.

    The base of every error a client may see. Subclasses set `code`, `reason`, `message` and,
    when a later attempt may succeed, `retriable`; the first paragraph of each one's docstring
    says when it is raised (docs/api.md's error table is made from them: `make docs`)."""

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

    def retry_after(self, seconds: float) -> Self:
        """This refusal with a hint of its own (the class's otherwise): try again in
        `seconds`."""
        self.retry_after_s = seconds
        return self

    @property
    def text(self) -> str:
        return f"{self.message}: {self.detail}" if self.detail else self.message


# --- Bad input (INVALID_ARGUMENT unless noted) ----------------------------------------------


class InvalidArgument(ServiceError):
    """Bad input in general: the base of the precise reasons below, which the server sends
    instead."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"
    message = "Некорректный запрос"


class MissingMetadata(InvalidArgument):
    """No messages, or a chunk before the metadata."""

    reason = "MISSING_METADATA"
    message = "Первое сообщение загрузки должно содержать метаданные"


class DuplicateMetadata(InvalidArgument):
    """Metadata after the first message."""

    reason = "DUPLICATE_METADATA"
    message = "Метаданные можно передать только в первом сообщении"


class EmptyFile(InvalidArgument):
    """No bytes."""

    reason = "EMPTY_FILE"
    message = "Файл пустой"


class NotAVideo(InvalidArgument):
    """The bytes do not start with an `ftyp` box."""

    reason = "NOT_MP4"
    message = "Файл не является видео MP4 (нет блока ftyp в начале файла)"


class FileTooLarge(InvalidArgument):
    """Over `UPLOAD_MAX_BYTES`, declared or received (reading stops at the limit)."""

    reason = "FILE_TOO_LARGE"
    message = "Файл превышает максимально допустимый размер"


class SizeMismatch(InvalidArgument):
    """The received size differs from `size_bytes`."""

    reason = "SIZE_MISMATCH"
    message = "Размер полученных данных не совпадает с заявленным"


class ChecksumMismatch(InvalidArgument):
    """The received bytes' SHA-256 differs from the declared `sha256`."""

    reason = "CHECKSUM_MISMATCH"
    message = "Контрольная сумма SHA-256 не совпадает с заявленной"


class InvalidChecksum(InvalidArgument):
    """`sha256` is not 64 hexadecimal digits."""

    reason = "INVALID_SHA256"
    message = "SHA-256 должна быть строкой из 64 шестнадцатеричных символов"


class InvalidSize(InvalidArgument):
    """A negative `size_bytes`."""

    reason = "INVALID_SIZE"
    message = "Размер файла не может быть отрицательным"


class BucketNotAllowed(InvalidArgument):
    """A bucket not on `ALLOWED_BUCKETS`."""

    reason = "BUCKET_NOT_ALLOWED"
    message = "Бакет не разрешён"


class InvalidFilename(InvalidArgument):
    """A filename over 255 characters, or with a character that hides, reorders or breaks
    what a person reads: a control or format character (bidi controls such as U+202E,
    zero-width ones), a line or paragraph separator, a surrogate or a private-use one."""

    reason = "INVALID_FILENAME"
    message = "Недопустимое имя файла"


class InvalidIdempotencyKey(InvalidArgument):
    """An idempotency key that is not 1-128 printable ASCII characters without spaces."""

    reason = "INVALID_IDEMPOTENCY_KEY"
    message = "Недопустимый ключ идемпотентности"


class IdempotencyKeyReused(ServiceError):
    """The idempotency key was used for another file."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "IDEMPOTENCY_KEY_REUSED"
    message = "Ключ идемпотентности уже использован для другого файла"


# --- Dependencies ---------------------------------------------------------------------------


class DependencyUnavailable(ServiceError):
    """A dependency is failing: the base of the reasons below, which name it and which the
    server sends instead."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"
    message = "Зависимость сервиса недоступна, повторите попытку позже"
    retriable = True


class StorageUnavailable(DependencyUnavailable):
    """MinIO is failing (unreachable, timing out, or asking to slow down): retry later."""

    reason = "STORAGE_UNAVAILABLE"
    message = "Объектное хранилище недоступно, повторите попытку позже"


class DatabaseUnavailable(DependencyUnavailable):
    """MongoDB is failing (unreachable or not answering): retry later."""

    reason = "DATABASE_UNAVAILABLE"
    message = "База данных недоступна, повторите попытку позже"


class PublisherUnavailable(DependencyUnavailable):
    """Kafka could not be reached or did not acknowledge in time: the relay's, for its logs
    and loops (no client calls the relay)."""

    reason = "KAFKA_UNAVAILABLE"
    message = "Kafka недоступна, повторите попытку позже"


class DeadlineExceeded(ServiceError):
    """An operation ran out of time (the server's own bound, or a dependency's deadline
    that nothing translated): retry later."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"
    message = "Операция не завершилась вовремя, повторите попытку"
    retriable = True


class DatabaseTimeout(DeadlineExceeded):
    """MongoDB did not finish in time (its own deadline, or no answer within the socket
    timeout on a connection that was up: a slow query, such as a large listing on FerretDB,
    not an outage): retry later."""

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
    """An event id that is not a UUID."""

    reason = "INVALID_EVENT_ID"
    message = "Идентификатор события должен быть UUID"


class InvalidVideoId(InvalidArgument):
    """A video id that is not a UUID."""

    reason = "INVALID_VIDEO_ID"
    message = "Идентификатор видео должен быть UUID"


class InvalidStatusFilter(InvalidArgument):
    """A listing's status filter that is not new, sent, ready or failed."""

    reason = "INVALID_STATUS"
    message = "Неизвестный статус: допустимы new, sent, ready, failed"


class InvalidPageToken(InvalidArgument):
    """A listing's `page_token` that is not one the server gave."""

    reason = "INVALID_PAGE_TOKEN"
    message = "Недействительный токен страницы"


class InvalidPageSize(InvalidArgument):
    """A listing's negative `page_size`."""

    reason = "INVALID_PAGE_SIZE"
    message = "Размер страницы не может быть отрицательным"


class EventNotFound(ServiceError):
    """An unknown event (or, for an uploader, another client's)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "EVENT_NOT_FOUND"
    message = "Событие не найдено"


class EventNotInBucket(ServiceError):
    """`GetResult` or `GetVideo` with a `bucket` that is not the event's."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "EVENT_NOT_IN_BUCKET"
    message = "Событие не найдено в этом бакете"


class VideoNotFound(ServiceError):
    """No stored video for `CreateRequest` (or, for an uploader, another client's), or
    `GetVideo` of an event whose video is no longer in storage."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "VIDEO_NOT_FOUND"
    message = "Видео не найдено в хранилище"


class ResultInvalid(ServiceError):
    """The result file is not a JSON object."""

    code = grpc.StatusCode.DATA_LOSS
    reason = "RESULT_INVALID"
    message = "Результат детекции повреждён: это не JSON-объект"


class ResultTooLarge(ServiceError):
    """The result is over `RESULT_MAX_BYTES`."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "RESULT_TOO_LARGE"
    message = "Результат детекции слишком велик для ответа"


class TooManyUploads(ServiceError):
    """The process streams `UPLOAD_MAX_CONCURRENT` uploads already: refused before any byte
    is stored; a `google.rpc.RetryInfo` says when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_UPLOADS"
    message = "Сервер принимает слишком много загрузок одновременно, повторите попытку позже"
    retriable = True
    retry_after_s = 1.0


class WatcherTooSlow(ServiceError):
    """A watcher fell more than `WATCH_MAX_PENDING` changes behind: re-subscribe."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "WATCHER_TOO_SLOW"
    message = "Клиент читает поток статусов слишком медленно, подпишитесь заново"


class UploadRateLimited(ServiceError):
    """The client started `UPLOAD_RATE_PER_MINUTE` uploads in the last 60 s; a
    `google.rpc.RetryInfo` (`retry_after_s`) says when the next one may start."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "UPLOAD_RATE_LIMITED"
    message = "Превышен лимит загрузок для этого клиента, повторите попытку позже"
    retriable = True


class UploadMemoryBusy(ServiceError):
    """The uploads' memory budget (`UPLOAD_MEMORY_BUDGET_BYTES`) stayed spent for
    `UPLOAD_MEMORY_WAIT_S` while the stream needed more of it: refused, possibly half-way (a
    WriteUpload's ErrorInfo metadata `persisted_size` says where to resume, what it committed
    stays); a `google.rpc.RetryInfo` says when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "UPLOAD_MEMORY_BUSY"
    message = "Сервер занят другими загрузками, повторите попытку позже"
    retriable = True
    retry_after_s = 1.0


class RequestRateLimited(ServiceError):
    """The client called CreateRequest `REQUEST_RATE_PER_MINUTE` times in the last 60 s (each
    has a video processed again); a `google.rpc.RetryInfo` says when it may call again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "REQUEST_RATE_LIMITED"
    message = "Превышен лимит повторных запросов обработки, повторите попытку позже"
    retriable = True


class ListRateLimited(ServiceError):
    """The client listed statuses `LIST_RATE_PER_MINUTE` times in the last 60 s; a
    `google.rpc.RetryInfo` says when it may list again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "LIST_RATE_LIMITED"
    message = "Превышен лимит запросов списка статусов, повторите попытку позже"
    retriable = True


class TooManyClientUploads(ServiceError):
    """The client streams `UPLOAD_MAX_CONCURRENT_PER_CLIENT` uploads and resumable writes
    already (the client: its API key's owner, or its address with authentication off): refused
    before any byte is stored; a `google.rpc.RetryInfo` says when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_CLIENT_UPLOADS"
    message = "Слишком много одновременных загрузок этого клиента, повторите попытку позже"
    retriable = True
    retry_after_s = 1.0


class TooManyWatchers(ServiceError):
    """The server has `WATCH_MAX_WATCHERS` WatchStatus streams open already: refused before
    it subscribes; a `google.rpc.RetryInfo` says when to try again (or another server)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_WATCHERS"
    message = "Сервер обслуживает слишком много наблюдений за статусом, повторите попытку позже"
    retriable = True
    retry_after_s = 5.0


class TooManyClientWatchers(ServiceError):
    """The client has `WATCH_MAX_WATCHERS_PER_CLIENT` WatchStatus streams open on this server
    already (the client: its API key's owner, or its address with authentication off): close
    one, or watch every event on one stream (WatchStatus without an event id)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_CLIENT_WATCHERS"
    message = "Слишком много одновременных наблюдений этого клиента, закройте одно из них"
    retriable = True
    retry_after_s = 5.0


class TooManyUploadSessions(ServiceError):
    """The client has `UPLOAD_MAX_OPEN_SESSIONS_PER_CLIENT` resumable sessions open (neither
    finished, cancelled nor expired): finish or cancel one first; a `google.rpc.RetryInfo`
    says when to ask again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_UPLOAD_SESSIONS"
    message = "У клиента слишком много открытых сессий загрузки: завершите или отмените одну"
    retriable = True
    retry_after_s = 30.0


class TooManyDownloads(ServiceError):
    """The server sends `VIDEO_DOWNLOAD_MAX_CONCURRENT` videos (GetVideo) already: refused
    before anything is read; a `google.rpc.RetryInfo` says when to try again (or another
    server)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_DOWNLOADS"
    message = "Сервер отдаёт слишком много видео одновременно, повторите попытку позже"
    retriable = True
    retry_after_s = 2.0


class TooManyClientDownloads(ServiceError):
    """The client receives `VIDEO_DOWNLOAD_MAX_CONCURRENT_PER_CLIENT` videos (GetVideo) from
    this server already (the client: its API key's owner, or its address with authentication
    off): refused before anything is read; finish one first, a `google.rpc.RetryInfo` says
    when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "TOO_MANY_CLIENT_DOWNLOADS"
    message = "Слишком много одновременных скачиваний видео этого клиента, повторите попытку позже"
    retriable = True
    retry_after_s = 2.0


class DownloadStalled(ServiceError):
    """A GetVideo stream's client took nothing for `VIDEO_DOWNLOAD_STALL_TIMEOUT_S` (gRPC's
    flow control held the next message that long): cut, its storage read closed. The status
    waits behind the data the client has not taken: it arrives if the client reads on, and
    the download keeps its place until then or until the client goes."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DOWNLOAD_STALLED"
    message = "Скачивание видео остановлено: клиент не принимает данные"
    retriable = True


class UploadStalled(ServiceError):
    """An upload stream (UploadVideo, REST or WriteUpload) sent nothing for
    `UPLOAD_IDLE_TIMEOUT_S`, or less than `UPLOAD_MIN_BYTES_PER_S` over
    `UPLOAD_THROUGHPUT_WINDOW_S` of waiting for it: cut, its upload removed as on any failure
    (a resumable session keeps its durable parts: resume from `persisted_size`)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "UPLOAD_STALLED"
    message = "Загрузка остановилась: клиент не передаёт данные"
    retriable = True


# --- Authentication and roles -----------------------------------------------------------------


class Unauthenticated(ServiceError):
    """No `authorization: Bearer` key, a malformed one or one the keys file does not hold
    (the detail says which; every key, while the file is deleted, unreadable, empty or
    invalid); with authentication off, `Cleanup` without `ADMIN_TOKEN`."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"
    message = "Нужен действительный токен (authorization: Bearer <токен>)"


class ApiKeyRevoked(Unauthenticated):
    """A stream (`WatchStatus`, an upload, REST or gRPC, a `WriteUpload`) whose key left
    `AUTH_KEYS_FILE` while it ran (removed, given another client or a role without the call,
    or the file deleted, emptied or made invalid): ended within `AUTH_RELOAD_INTERVAL_S`; its
    upload is removed as on any failure (a resumable session keeps its committed parts)."""

    reason = "API_KEY_REVOKED"
    message = "Ключ API отозван, поток закрыт: нужен действительный токен"


class PermissionDenied(ServiceError):
    """The key is valid, but its role may not make this call (ErrorInfo metadata: `role`,
    `method`)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"
    message = "Роли этого токена не разрешён этот вызов"


class CleanupDisabled(ServiceError):
    """`Cleanup` with authentication off and no `ADMIN_TOKEN` configured."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "CLEANUP_DISABLED"
    message = "Очистка отключена: на сервере не задан ADMIN_TOKEN"


class ShuttingDown(ServiceError):
    """The server is stopping: reconnect (the SDK retries, on another server if there is one)."""

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
    """A REST upload without a `file` part."""

    reason = "MISSING_FILE"
    message = "В запросе multipart/form-data нет части file"


class InvalidForm(InvalidArgument):
    """A malformed multipart/form-data body."""

    reason = "INVALID_FORM"
    message = "Некорректное тело multipart/form-data"


# --- Resumable uploads -----------------------------------------------------------------------


class UploadSizeRequired(InvalidArgument):
    """A resumable session without `size_bytes`."""

    reason = "UPLOAD_SIZE_REQUIRED"
    message = "Для возобновляемой загрузки нужно указать размер файла (size_bytes)"


class InvalidUploadId(InvalidArgument):
    """An upload id that is not a UUID."""

    reason = "INVALID_UPLOAD_ID"
    message = "Некорректный идентификатор сессии загрузки"


class UploadNotFound(ServiceError):
    """No such session: never started, cancelled, expired, or not the caller's."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "UPLOAD_NOT_FOUND"
    message = "Сессия загрузки не найдена: она не начиналась, отменена или истекла"


class UploadOffsetOutOfRange(ServiceError):
    """A write stream's first offset is past what is stored; `persisted_size` (ErrorInfo
    metadata) is where to write from. The base of UploadBeyondSize, which shares its code."""

    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "UPLOAD_OFFSET_OUT_OF_RANGE"
    message = "Смещение записи вне допустимого диапазона"

    def __init__(self, detail: str, *, persisted_size: int, **metadata: str) -> None:
        super().__init__(detail, persisted_size=str(persisted_size), **metadata)


class UploadBeyondSize(UploadOffsetOutOfRange):
    """Bytes past the declared size, or a finish before it (ErrorInfo metadata:
    `persisted_size`)."""

    reason = "UPLOAD_BEYOND_SIZE"
    message = "Данные не совпадают с заявленным размером файла"


class UploadOffsetNotContiguous(InvalidArgument):
    """A gap or overlap between two messages of one write stream."""

    reason = "UPLOAD_OFFSET_NOT_CONTIGUOUS"
    message = "Смещения сообщений потока должны идти подряд"


class UploadAlreadyFinishing(InvalidArgument):
    """A message after `finish_write`."""

    reason = "UPLOAD_DATA_AFTER_FINISH"
    message = "После сообщения с finish_write данных быть не должно"


class ChunkChecksumMismatch(ServiceError):
    """A chunk's CRC32C does not match its bytes: nothing of it was kept; resend from
    `persisted_size` (ErrorInfo metadata), where the session stays resumable."""

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
    """Another stream writes the session and did not let go within
    `UPLOAD_TAKEOVER_WAIT_S`: retry."""

    code = grpc.StatusCode.ABORTED
    reason = "UPLOAD_BUSY"
    message = "Сессию загрузки пишет другой поток, повторите попытку позже"
    retriable = True
    retry_after_s = 1.0


class UploadTakenOver(ServiceError):
    """This stream lost the session to another one (it asked, or this one's lease ran out):
    retry."""

    code = grpc.StatusCode.ABORTED
    reason = "UPLOAD_TAKEN_OVER"
    message = "Запись сессии перешла к другому потоку"
    retriable = True


class UploadPartConflict(ServiceError):
    """Two writers stored different bytes for one part of a session: detected, never
    accepted."""

    code = grpc.StatusCode.ABORTED
    reason = "UPLOAD_PART_CONFLICT"
    message = "Другой поток записал в эту часть другие данные"


class UploadTooLong(ServiceError):
    """An UploadVideo stream outlasted UPLOAD_MAX_DURATION_S (use a resumable session)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "UPLOAD_TOO_LONG"
    message = "Загрузка длится слишком долго: используйте возобновляемую загрузку"


class WriteTooLong(UploadTooLong):
    """A WriteUpload stream outlasted UPLOAD_MAX_DURATION_S: what was committed stays; go on
    with a new stream from `persisted_size` (ErrorInfo metadata, when known)."""

    message = "Запись длится слишком долго: продолжите новым потоком с сохранённого размера"
    retriable = True

    def __init__(self, detail: str = "", *, persisted_size: int | None = None) -> None:
        if persisted_size is None:
            super().__init__(detail)
        else:
            super().__init__(detail, persisted_size=str(persisted_size))


class UploadFinished(ServiceError):
    """`CancelUpload` of a finished (or finishing) upload."""

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
