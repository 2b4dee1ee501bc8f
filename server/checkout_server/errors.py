"""The service's errors: one class per case, each with a gRPC code, a stable reason and a
Russian message for people (the seed's rule: every error carries a Russian description).

Handlers and adapters raise these; one interceptor turns them into rich gRPC statuses
(google.rpc.Status with an ErrorInfo whose reason is `reason` and domain is ERROR_DOMAIN).
Messages stay short: Envoy turns a very long grpc-message into a 502.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

ERROR_DOMAIN = "checkout.v1"


class ServiceError(Exception):
    """Base of every error a client may see. Subclasses set `code`, `reason` and `message`."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    reason: ClassVar[str] = "INTERNAL"
    message: ClassVar[str] = "Внутренняя ошибка сервиса"

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


class StorageUnavailable(DependencyUnavailable):
    reason = "STORAGE_UNAVAILABLE"
    message = "Объектное хранилище недоступно, повторите попытку позже"


class DatabaseUnavailable(DependencyUnavailable):
    reason = "DATABASE_UNAVAILABLE"
    message = "База данных недоступна, повторите попытку позже"


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


class WatcherTooSlow(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "WATCHER_TOO_SLOW"
    message = "Клиент читает поток статусов слишком медленно, подпишитесь заново"


# --- Admin ------------------------------------------------------------------------------------


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"
    message = "Нужен токен администратора (authorization: Bearer <токен>)"


class CleanupDisabled(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "CLEANUP_DISABLED"
    message = "Очистка отключена: на сервере не задан ADMIN_TOKEN"


class ShuttingDown(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "SHUTTING_DOWN"
    message = "Сервер останавливается, подключитесь заново"
