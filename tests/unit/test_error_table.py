"""Every error a client may see, against a table that pins its gRPC code, its stable reason and
its exact Russian message: as the class declares them, as the interceptor sends them (the
status and its ErrorInfo), and as docs/api.md's generated error table shows them."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from checkout_server import errors
from checkout_server.api.interceptors import rich_status
from tools.gen_docs import DOCS

pytestmark = pytest.mark.timeout(10)

Code = grpc.StatusCode

# Every error a client may see, as it must reach the client: its code, its stable reason and
# its exact Russian message. A message changed in errors.py fails here on purpose (a client may
# show it, a test of theirs may match it): change it here too, and run `make docs`, whose table
# in docs/api.md is checked against this one below.
ERRORS: list[tuple[type[errors.ServiceError], grpc.StatusCode, str, str]] = [
    (errors.ServiceError, Code.INTERNAL, "INTERNAL", "Внутренняя ошибка сервиса"),
    (errors.InvalidArgument, Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", "Некорректный запрос"),
    (
        errors.MissingMetadata,
        Code.INVALID_ARGUMENT,
        "MISSING_METADATA",
        "Первое сообщение загрузки должно содержать метаданные",
    ),
    (
        errors.DuplicateMetadata,
        Code.INVALID_ARGUMENT,
        "DUPLICATE_METADATA",
        "Метаданные можно передать только в первом сообщении",
    ),
    (errors.EmptyFile, Code.INVALID_ARGUMENT, "EMPTY_FILE", "Файл пустой"),
    (
        errors.NotAVideo,
        Code.INVALID_ARGUMENT,
        "NOT_MP4",
        "Файл не является видео MP4 (нет блока ftyp в начале файла)",
    ),
    (
        errors.FileTooLarge,
        Code.INVALID_ARGUMENT,
        "FILE_TOO_LARGE",
        "Файл превышает максимально допустимый размер",
    ),
    (
        errors.SizeMismatch,
        Code.INVALID_ARGUMENT,
        "SIZE_MISMATCH",
        "Размер полученных данных не совпадает с заявленным",
    ),
    (
        errors.ChecksumMismatch,
        Code.INVALID_ARGUMENT,
        "CHECKSUM_MISMATCH",
        "Контрольная сумма SHA-256 не совпадает с заявленной",
    ),
    (
        errors.InvalidChecksum,
        Code.INVALID_ARGUMENT,
        "INVALID_SHA256",
        "SHA-256 должна быть строкой из 64 шестнадцатеричных символов",
    ),
    (
        errors.InvalidSize,
        Code.INVALID_ARGUMENT,
        "INVALID_SIZE",
        "Размер файла не может быть отрицательным",
    ),
    (errors.BucketNotAllowed, Code.INVALID_ARGUMENT, "BUCKET_NOT_ALLOWED", "Бакет не разрешён"),
    (errors.InvalidFilename, Code.INVALID_ARGUMENT, "INVALID_FILENAME", "Недопустимое имя файла"),
    (
        errors.InvalidIdempotencyKey,
        Code.INVALID_ARGUMENT,
        "INVALID_IDEMPOTENCY_KEY",
        "Недопустимый ключ идемпотентности",
    ),
    (
        errors.IdempotencyKeyReused,
        Code.FAILED_PRECONDITION,
        "IDEMPOTENCY_KEY_REUSED",
        "Ключ идемпотентности уже использован для другого файла",
    ),
    (
        errors.DependencyUnavailable,
        Code.UNAVAILABLE,
        "DEPENDENCY_UNAVAILABLE",
        "Зависимость сервиса недоступна, повторите попытку позже",
    ),
    (
        errors.StorageUnavailable,
        Code.UNAVAILABLE,
        "STORAGE_UNAVAILABLE",
        "Объектное хранилище недоступно, повторите попытку позже",
    ),
    (
        errors.DatabaseUnavailable,
        Code.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        "База данных недоступна, повторите попытку позже",
    ),
    (
        errors.PublisherUnavailable,
        Code.UNAVAILABLE,
        "KAFKA_UNAVAILABLE",
        "Kafka недоступна, повторите попытку позже",
    ),
    (
        errors.DeadlineExceeded,
        Code.DEADLINE_EXCEEDED,
        "DEADLINE_EXCEEDED",
        "Операция не завершилась вовремя, повторите попытку",
    ),
    (
        errors.DatabaseTimeout,
        Code.DEADLINE_EXCEEDED,
        "DATABASE_TIMEOUT",
        "База данных не успела выполнить операцию, повторите попытку",
    ),
    (errors.DatabaseError, Code.INTERNAL, "DATABASE_ERROR", "База данных отклонила операцию"),
    (errors.StorageError, Code.INTERNAL, "STORAGE_ERROR", "Объектное хранилище отклонило запрос"),
    (
        errors.InvalidEventId,
        Code.INVALID_ARGUMENT,
        "INVALID_EVENT_ID",
        "Идентификатор события должен быть UUID",
    ),
    (
        errors.InvalidVideoId,
        Code.INVALID_ARGUMENT,
        "INVALID_VIDEO_ID",
        "Идентификатор видео должен быть UUID",
    ),
    (
        errors.InvalidStatusFilter,
        Code.INVALID_ARGUMENT,
        "INVALID_STATUS",
        "Неизвестный статус: допустимы new, sent, ready, failed",
    ),
    (
        errors.InvalidPageToken,
        Code.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        "Недействительный токен страницы",
    ),
    (
        errors.InvalidPageSize,
        Code.INVALID_ARGUMENT,
        "INVALID_PAGE_SIZE",
        "Размер страницы не может быть отрицательным",
    ),
    (errors.EventNotFound, Code.NOT_FOUND, "EVENT_NOT_FOUND", "Событие не найдено"),
    (
        errors.EventNotInBucket,
        Code.NOT_FOUND,
        "EVENT_NOT_IN_BUCKET",
        "Событие не найдено в этом бакете",
    ),
    (errors.VideoNotFound, Code.NOT_FOUND, "VIDEO_NOT_FOUND", "Видео не найдено в хранилище"),
    (
        errors.ResultInvalid,
        Code.DATA_LOSS,
        "RESULT_INVALID",
        "Результат детекции повреждён: это не JSON-объект",
    ),
    (
        errors.ResultTooLarge,
        Code.FAILED_PRECONDITION,
        "RESULT_TOO_LARGE",
        "Результат детекции слишком велик для ответа",
    ),
    (
        errors.TooManyUploads,
        Code.RESOURCE_EXHAUSTED,
        "TOO_MANY_UPLOADS",
        "Сервер принимает слишком много загрузок одновременно, повторите попытку позже",
    ),
    (
        errors.WatcherTooSlow,
        Code.RESOURCE_EXHAUSTED,
        "WATCHER_TOO_SLOW",
        "Клиент читает поток статусов слишком медленно, подпишитесь заново",
    ),
    (
        errors.UploadRateLimited,
        Code.RESOURCE_EXHAUSTED,
        "UPLOAD_RATE_LIMITED",
        "Превышен лимит загрузок для этого клиента, повторите попытку позже",
    ),
    (
        errors.UploadMemoryBusy,
        Code.RESOURCE_EXHAUSTED,
        "UPLOAD_MEMORY_BUSY",
        "Сервер занят другими загрузками, повторите попытку позже",
    ),
    (
        errors.RequestRateLimited,
        Code.RESOURCE_EXHAUSTED,
        "REQUEST_RATE_LIMITED",
        "Превышен лимит повторных запросов обработки, повторите попытку позже",
    ),
    (
        errors.ListRateLimited,
        Code.RESOURCE_EXHAUSTED,
        "LIST_RATE_LIMITED",
        "Превышен лимит запросов списка статусов, повторите попытку позже",
    ),
    (
        errors.TooManyClientUploads,
        Code.RESOURCE_EXHAUSTED,
        "TOO_MANY_CLIENT_UPLOADS",
        "Слишком много одновременных загрузок этого клиента, повторите попытку позже",
    ),
    (
        errors.TooManyWatchers,
        Code.RESOURCE_EXHAUSTED,
        "TOO_MANY_WATCHERS",
        "Сервер обслуживает слишком много наблюдений за статусом, повторите попытку позже",
    ),
    (
        errors.TooManyClientWatchers,
        Code.RESOURCE_EXHAUSTED,
        "TOO_MANY_CLIENT_WATCHERS",
        "Слишком много одновременных наблюдений этого клиента, закройте одно из них",
    ),
    (
        errors.TooManyUploadSessions,
        Code.RESOURCE_EXHAUSTED,
        "TOO_MANY_UPLOAD_SESSIONS",
        "У клиента слишком много открытых сессий загрузки: завершите или отмените одну",
    ),
    (
        errors.TooManyDownloads,
        Code.RESOURCE_EXHAUSTED,
        "TOO_MANY_DOWNLOADS",
        "Сервер отдаёт слишком много видео одновременно, повторите попытку позже",
    ),
    (
        errors.TooManyClientDownloads,
        Code.RESOURCE_EXHAUSTED,
        "TOO_MANY_CLIENT_DOWNLOADS",
        "Слишком много одновременных скачиваний видео этого клиента, повторите попытку позже",
    ),
    (
        errors.DownloadStalled,
        Code.DEADLINE_EXCEEDED,
        "DOWNLOAD_STALLED",
        "Скачивание видео остановлено: клиент не принимает данные",
    ),
    (
        errors.UploadStalled,
        Code.DEADLINE_EXCEEDED,
        "UPLOAD_STALLED",
        "Загрузка остановилась: клиент не передаёт данные",
    ),
    (
        errors.Unauthenticated,
        Code.UNAUTHENTICATED,
        "UNAUTHENTICATED",
        "Нужен действительный токен (authorization: Bearer <токен>)",
    ),
    (
        errors.ApiKeyRevoked,
        Code.UNAUTHENTICATED,
        "API_KEY_REVOKED",
        "Ключ API отозван, поток закрыт: нужен действительный токен",
    ),
    (
        errors.PermissionDenied,
        Code.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        "Роли этого токена не разрешён этот вызов",
    ),
    (
        errors.CleanupDisabled,
        Code.PERMISSION_DENIED,
        "CLEANUP_DISABLED",
        "Очистка отключена: на сервере не задан ADMIN_TOKEN",
    ),
    (
        errors.ShuttingDown,
        Code.UNAVAILABLE,
        "SHUTTING_DOWN",
        "Сервер останавливается, подключитесь заново",
    ),
    (
        errors.WriteInterrupted,
        Code.UNAVAILABLE,
        "SHUTTING_DOWN",
        "Сервер останавливается, запись прервана: продолжите с сохранённого размера",
    ),
    (
        errors.MissingFile,
        Code.INVALID_ARGUMENT,
        "MISSING_FILE",
        "В запросе multipart/form-data нет части file",
    ),
    (
        errors.InvalidForm,
        Code.INVALID_ARGUMENT,
        "INVALID_FORM",
        "Некорректное тело multipart/form-data",
    ),
    (
        errors.UploadSizeRequired,
        Code.INVALID_ARGUMENT,
        "UPLOAD_SIZE_REQUIRED",
        "Для возобновляемой загрузки нужно указать размер файла (size_bytes)",
    ),
    (
        errors.InvalidUploadId,
        Code.INVALID_ARGUMENT,
        "INVALID_UPLOAD_ID",
        "Некорректный идентификатор сессии загрузки",
    ),
    (
        errors.UploadNotFound,
        Code.NOT_FOUND,
        "UPLOAD_NOT_FOUND",
        "Сессия загрузки не найдена: она не начиналась, отменена или истекла",
    ),
    (
        errors.UploadOffsetOutOfRange,
        Code.OUT_OF_RANGE,
        "UPLOAD_OFFSET_OUT_OF_RANGE",
        "Смещение записи вне допустимого диапазона",
    ),
    (
        errors.UploadBeyondSize,
        Code.OUT_OF_RANGE,
        "UPLOAD_BEYOND_SIZE",
        "Данные не совпадают с заявленным размером файла",
    ),
    (
        errors.UploadOffsetNotContiguous,
        Code.INVALID_ARGUMENT,
        "UPLOAD_OFFSET_NOT_CONTIGUOUS",
        "Смещения сообщений потока должны идти подряд",
    ),
    (
        errors.UploadAlreadyFinishing,
        Code.INVALID_ARGUMENT,
        "UPLOAD_DATA_AFTER_FINISH",
        "После сообщения с finish_write данных быть не должно",
    ),
    (
        errors.ChunkChecksumMismatch,
        Code.DATA_LOSS,
        "CHUNK_CHECKSUM_MISMATCH",
        "Контрольная сумма CRC32C фрагмента не совпадает, отправьте его заново",
    ),
    (
        errors.FileChecksumMismatch,
        Code.DATA_LOSS,
        "FILE_CRC32C_MISMATCH",
        "Контрольная сумма CRC32C файла не совпадает с заявленной",
    ),
    (
        errors.UploadBusy,
        Code.ABORTED,
        "UPLOAD_BUSY",
        "Сессию загрузки пишет другой поток, повторите попытку позже",
    ),
    (
        errors.UploadTakenOver,
        Code.ABORTED,
        "UPLOAD_TAKEN_OVER",
        "Запись сессии перешла к другому потоку",
    ),
    (
        errors.UploadPartConflict,
        Code.ABORTED,
        "UPLOAD_PART_CONFLICT",
        "Другой поток записал в эту часть другие данные",
    ),
    (
        errors.UploadTooLong,
        Code.DEADLINE_EXCEEDED,
        "UPLOAD_TOO_LONG",
        "Загрузка длится слишком долго: используйте возобновляемую загрузку",
    ),
    (
        errors.WriteTooLong,
        Code.DEADLINE_EXCEEDED,
        "UPLOAD_TOO_LONG",
        "Запись длится слишком долго: продолжите новым потоком с сохранённого размера",
    ),
    (
        errors.UploadFinished,
        Code.FAILED_PRECONDITION,
        "UPLOAD_FINISHED",
        "Загрузка уже завершена, её нельзя отменить",
    ),
]

# The errors whose constructor needs arguments, with arguments that add no detail to the message.
_ARGUMENTS: dict[type[errors.ServiceError], dict[str, Any]] = {
    errors.UploadOffsetOutOfRange: {"detail": "", "persisted_size": 0},
    errors.UploadBeyondSize: {"detail": "", "persisted_size": 0},
    errors.ChunkChecksumMismatch: {"persisted_size": 0, "offset": 0},
}


def _subclasses(cls: type[errors.ServiceError]) -> set[type[errors.ServiceError]]:
    found = set()
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("checkout_server."):  # not a test's own subclass
            found |= {sub} | _subclasses(sub)
    return found


def _error_table() -> list[list[str]]:
    """The rows of docs/api.md's generated error table, as cells (code spans unwrapped)."""
    text = (DOCS / "api.md").read_text()
    block = text.split("<!-- generated: errors -->\n", 1)[1].split("<!-- end: errors -->", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ")][2:]  # no header
    return [
        [cell.strip().removeprefix("`").removesuffix("`") for cell in line.split(" | ")]
        for line in (row.strip("| ") for row in rows)
    ]


def test_the_table_names_every_error_class_once() -> None:
    named = [cls for cls, *_ in ERRORS]
    assert len(named) == len(set(named))
    assert set(named) == {errors.ServiceError} | _subclasses(errors.ServiceError)


@pytest.mark.parametrize(
    ("cls", "code", "reason", "message"), ERRORS, ids=[cls.__name__ for cls, *_ in ERRORS]
)
def test_an_error_reaches_the_client_with_its_code_reason_and_exact_message(
    cls: type[errors.ServiceError], code: grpc.StatusCode, reason: str, message: str
) -> None:
    assert (cls.code, cls.reason, cls.message) == (code, reason, message)
    error = cls(**_ARGUMENTS.get(cls, {}))
    assert str(error) == message
    status = rich_status(error)
    assert (status.code, status.details) == (code, message)
    [sent] = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    assert isinstance(sent, bytes)
    detail = status_pb2.Status.FromString(sent)
    assert (detail.code, detail.message) == (code.value[0], message)
    info = error_details_pb2.ErrorInfo()
    assert detail.details[0].Unpack(info)
    assert (info.reason, info.domain) == (reason, errors.ERROR_DOMAIN)


@pytest.mark.parametrize(
    ("cls", "code", "reason", "message"), ERRORS, ids=[cls.__name__ for cls, *_ in ERRORS]
)
def test_the_docs_error_table_says_the_same(
    cls: type[errors.ServiceError], code: grpc.StatusCode, reason: str, message: str
) -> None:
    """docs/api.md's table (tools/gen_docs.py) has this error's row: a message changed in the
    code without `make docs` fails here."""
    http = str(errors.HTTP_STATUS[code])
    wanted = [reason, f"{code.name} ({code.value[0]})", http, "yes" if cls.retriable else "no"]
    rows = [row for row in _error_table() if row[4] == message]
    assert [row[:4] for row in rows] == [wanted], f"docs/api.md has no row {wanted} {message!r}"


def test_the_docs_error_table_has_no_other_row() -> None:
    documented = sorted((row[0], row[4]) for row in _error_table())
    assert documented == sorted((reason, message) for _, _, reason, message in ERRORS)
