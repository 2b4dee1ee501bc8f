"""The REST upload: turn the HTTP body that Envoy streams into UploadVideoHttp messages into
upload metadata plus a stream of file bytes for the one upload pipeline.

Envoy passes the raw body in pieces of at most 1 MiB whose boundaries follow nothing in
particular; the Content-Type (with the multipart boundary) and the query-string fields come
on the first message only. Two body forms are accepted:
- multipart/form-data (`curl -F "file=@video.mp4" -F "bucket=videos"`): parsed incrementally
  with python-multipart's push parser. Text fields before the file part (`bucket`,
  `filename`, `sha256`, `idempotency_key`, `size_bytes`) set the metadata; the file part's
  bytes go straight to the pipeline. Fields after the file part are read before the upload
  completes: a `bucket` there must name the bucket the file went to (the default one, unless
  the query string or an earlier field chose another), else the upload is refused.
- anything else (`--data-binary @video.mp4 -H 'Content-Type: video/mp4'`): the body is the file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from python_multipart.multipart import MultipartParser, parse_options_header

from checkout_api.checkout.v1 import checkout_pb2 as pb

from .. import errors
from ..domain import UploadRequest
from ..errors import InvalidForm, MissingFile

FILE_FIELD = "file"
TEXT_FIELDS = frozenset({"bucket", "filename", "sha256", "idempotency_key", "size_bytes"})
MAX_FIELD_BYTES = 1024
# The most a multipart body may hold before its file part starts (the text fields, their
# headers, parts of other names): generous for the five fields, small for one that never
# comes to the file. Its time is bounded by the uploads' idle timeout (UPLOAD_IDLE_TIMEOUT_S).
MAX_PREAMBLE_BYTES = 64 * 1024


@dataclass
class _Part:
    headers: dict[str, bytes] = field(default_factory=dict)  # as they came
    name: str = ""
    filename: str = ""
    value: bytearray = field(default_factory=bytearray)


class _FormReader:
    """Feeds body pieces to the multipart parser and sorts what comes out."""

    def __init__(self, boundary: bytes) -> None:
        self.fields: dict[str, str] = {}
        self.file_started = False
        self.file_filename = ""
        self.file_done = False
        self.fields_after_file: dict[str, str] = {}
        self.file_bytes: list[bytes] = []  # file data parsed from the current piece
        self.ended = False
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    def feed(self, piece: bytes) -> list[bytes]:
        """Parse one body piece; returns the file bytes it contained."""
        try:
            self._parser.write(piece)
        except errors.ServiceError:
            raise
        except Exception as exc:  # python-multipart's own parse errors
            raise InvalidForm(str(exc)[:100]) from None
        out, self.file_bytes = self.file_bytes, []
        return out

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._header_field.decode("latin-1").strip().lower()
        # Kept as bytes: parse_options_header reads bytes as latin-1 and gives each option
        # back as the bytes it was, so a filename in UTF-8 (as browsers send it) is decoded
        # once, below. A str beyond latin-1 would make it fail (INVALID_FORM for "видео.mp4").
        self._part.headers[name] = bytes(self._header_value).strip()
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get("content-disposition", b""))
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        self._part.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        if self._part.name == FILE_FIELD:
            if self.file_started:
                raise InvalidForm("больше одной части file")
            self.file_started = True
            self.file_filename = self._part.filename

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part.name == FILE_FIELD:
            # Most pieces are file data from end to end: pass them on without a copy.
            whole = start == 0 and end == len(data)
            self.file_bytes.append(data if whole else data[start:end])
            return
        self._part.value += data[start:end]
        if len(self._part.value) > MAX_FIELD_BYTES:
            raise InvalidForm(f"поле {self._part.name[:32]} длиннее {MAX_FIELD_BYTES} байт")

    def _on_part_end(self) -> None:
        part = self._part
        if part.name == FILE_FIELD:
            self.file_done = True
        elif part.name in TEXT_FIELDS:
            target = self.fields_after_file if self.file_started else self.fields
            target[part.name] = part.value.decode("utf-8", "replace").strip()

    def _on_end(self) -> None:
        self.ended = True


def _apply_fields(request: UploadRequest, fields: dict[str, str]) -> UploadRequest:
    size = fields.get("size_bytes", "")
    if size and not size.isdigit():
        raise errors.InvalidSize(size[:32])
    return replace(
        request,
        bucket=fields.get("bucket") or request.bucket,
        filename=fields.get("filename") or request.filename,
        sha256=(fields.get("sha256") or request.sha256).lower(),
        idempotency_key=fields.get("idempotency_key") or request.idempotency_key,
        size_bytes=int(size) if size else request.size_bytes,
    )


async def open_http_upload(
    first: pb.UploadVideoHttpRequest,
    rest: AsyncIterator[pb.UploadVideoHttpRequest],
    *,
    default_bucket: str,
) -> tuple[UploadRequest, AsyncIterator[bytes]]:
    """Read the body up to the start of the file and return the upload's metadata and the
    file's bytes (which end only after the whole body is read and checked)."""
    content_type = first.http_body.content_type
    request = UploadRequest(
        filename=first.filename,
        content_type=content_type,
        bucket=first.bucket,
        size_bytes=first.size_bytes,
        sha256=first.sha256.lower(),
        idempotency_key=first.idempotency_key,
    )
    mime, options = parse_options_header(content_type)
    if mime != b"multipart/form-data":

        async def raw() -> AsyncIterator[bytes]:
            yield first.http_body.data
            async for message in rest:
                yield message.http_body.data

        return request, raw()

    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidForm("нет boundary в Content-Type")
    form = _FormReader(boundary)
    early: list[bytes] = form.feed(first.http_body.data)
    preamble = len(first.http_body.data)
    while not form.file_started and not form.ended:
        if preamble > MAX_PREAMBLE_BYTES:
            raise InvalidForm(f"до части file больше {MAX_PREAMBLE_BYTES} байт")
        message = await anext(rest, None)
        if message is None:
            break
        preamble += len(message.http_body.data)
        early += form.feed(message.http_body.data)
    if not form.file_started:
        raise MissingFile()
    request = _apply_fields(request, form.fields)
    if form.file_filename and not request.filename:
        request = replace(request, filename=form.file_filename)
    used_bucket = request.bucket or default_bucket

    async def file_bytes() -> AsyncIterator[bytes]:
        for piece in early:
            yield piece
        async for message in rest:
            for piece in form.feed(message.http_body.data):
                yield piece
        if not form.ended:
            raise InvalidForm("тело запроса оборвалось")
        late_bucket = form.fields_after_file.get("bucket")
        if late_bucket and late_bucket != used_bucket:
            raise errors.BucketNotAllowed(
                f"поле bucket={late_bucket[:64]} пришло после файла; передайте его до файла "
                "или в строке запроса ?bucket=",
                bucket=late_bucket[:64],
            )

    return request, file_bytes()
