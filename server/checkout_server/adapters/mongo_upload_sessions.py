"""UploadSessionStore on MongoDB (or FerretDB 1.24), via PyMongo async.

Two collections. `sessions` holds one document per session (`_id` = upload id), with a
unique `dedup_key` (the owner-scoped idempotency key, or the upload id without one). `facts`
holds everything that happens to a session, each fact a document inserted once under an
`_id` that names it, so the unique `_id` index decides every race (FerretDB 1.24 applies
updates without re-checking their filters, so no conditional update fences anything):

- `<upload>:mpu`             the S3 multipart upload id;
- `<upload>:part:<nnnnn>`    one durable part (offset, size, ETag, CRC32C, running CRC32C);
- `<upload>:end`             the end claimed first (SessionEnd: finish, cancel or expire);
- `<upload>:lease:<epoch>`   a writer's lease (renewed and released by its holder only);
- `<upload>:yield:<epoch>`   another stream's request that the holder of `epoch` let go.

Every fact also carries `upload_id` and `kind`, indexed, for the reads by session.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from ..errors import DuplicateUploadSession
from ..outbox.document import dedup_key
from ..ports import PartCommit, SessionEnd, UploadSession, WriteLease
from .mongo_errors import translated
from .mongo_indexes import ensure_indexes

Document = dict[str, Any]

_SESSION_INDEXES = [
    IndexModel([("dedup_key", ASCENDING)], unique=True, name="dedup_key_unique"),
    IndexModel([("expires_at", ASCENDING)], name="expires"),
    IndexModel([("video_id", ASCENDING)], name="video"),
    IndexModel([("client", ASCENDING), ("expires_at", ASCENDING)], name="client_expires"),
]
_FACT_INDEXES = [
    IndexModel([("upload_id", ASCENDING), ("kind", ASCENDING)], name="upload_kind"),
    IndexModel([("multipart_id", ASCENDING)], name="multipart"),
]
_MPU, _PART, _END, _LEASE, _YIELD = "mpu", "part", "end", "lease", "yield"


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _session_document(session: UploadSession) -> Document:
    return {
        "_id": session.upload_id,
        "dedup_key": dedup_key(session.idempotency_key, owner=session.owner) or session.upload_id,
        "video_id": session.video_id,
        "bucket": session.bucket,
        "object_key": session.object_key,
        "filename": session.filename,
        "size_bytes": session.size_bytes,
        "sha256": session.sha256,
        "crc32c": session.crc32c,
        "idempotency_key": session.idempotency_key,
        "owner": session.owner,
        "part_bytes": session.part_bytes,
        "created_at": session.created_at,
        "expires_at": session.expires_at,
        "client": session.client,
    }


def _session(document: Document) -> UploadSession:
    crc = document.get("crc32c")
    return UploadSession(
        upload_id=str(document["_id"]),
        video_id=str(document["video_id"]),
        bucket=str(document["bucket"]),
        object_key=str(document["object_key"]),
        filename=str(document.get("filename") or ""),
        size_bytes=int(document["size_bytes"]),
        sha256=str(document.get("sha256") or ""),
        crc32c=None if crc is None else int(crc),
        idempotency_key=str(document.get("idempotency_key") or ""),
        owner=str(document.get("owner") or ""),
        part_bytes=int(document["part_bytes"]),
        created_at=_utc(document["created_at"]),
        expires_at=_utc(document["expires_at"]),
        client=str(document.get("client") or ""),
    )


def _part(document: Document) -> PartCommit:
    return PartCommit(
        number=int(document["number"]),
        offset=int(document["offset"]),
        size_bytes=int(document["size_bytes"]),
        etag=str(document["etag"]),
        crc32c=int(document["crc32c"]),
        running_crc32c=int(document["running_crc32c"]),
    )


def _lease(document: Document) -> WriteLease:
    return WriteLease(
        upload_id=str(document["upload_id"]),
        epoch=int(document["epoch"]),
        holder=str(document["holder"]),
        expires_at=_utc(document["expires_at"]),
        released=bool(document.get("released")),
    )


def _lease_id(upload_id: str, epoch: int) -> str:
    return f"{upload_id}:{_LEASE}:{epoch:09d}"


class MongoUploadSessions:
    """Implements ports.UploadSessionStore over two collections (built by the wiring)."""

    def __init__(self, sessions: AsyncCollection[Document], facts: AsyncCollection[Document]):
        self._sessions = sessions
        self._facts = facts

    async def ensure_indexes(self) -> None:
        with translated("ensure_indexes"):
            await ensure_indexes(self._sessions, _SESSION_INDEXES)
            await ensure_indexes(self._facts, _FACT_INDEXES)

    async def _insert_once(self, document: Document) -> Document | None:
        """Insert `document`; None when it went in, else the document that holds its _id."""
        with translated("insert_fact"):
            try:
                await self._facts.insert_one(document)
                return None
            except DuplicateKeyError:
                existing = await self._facts.find_one({"_id": document["_id"]})
        if existing is None:  # removed between the two calls: the session is being deleted
            return document
        return existing

    async def create(self, session: UploadSession) -> None:
        document = _session_document(session)
        with translated("create_session"):
            try:
                await self._sessions.insert_one(document)
                return
            except DuplicateKeyError:
                existing = await self._sessions.find_one({"dedup_key": document["dedup_key"]})
        if existing is None:
            raise RuntimeError(f"duplicate upload id {session.upload_id}")
        raise DuplicateUploadSession(_session(existing))

    async def get(self, upload_id: str) -> UploadSession | None:
        with translated("get_session"):
            document = await self._sessions.find_one({"_id": upload_id})
        return None if document is None else _session(document)

    async def find_by_idempotency_key(self, key: str, *, owner: str) -> UploadSession | None:
        with translated("find_session"):
            document = await self._sessions.find_one({"dedup_key": dedup_key(key, owner=owner)})
        return None if document is None else _session(document)

    async def open_sessions(self, client: str, now: datetime) -> int:
        # The client's unexpired sessions (finished ones stay until they expire), less those
        # with an end claimed: two reads, no join (FerretDB 1.24 has no $lookup).
        with translated("open_sessions"):
            found = self._sessions.find({"client": client, "expires_at": {"$gt": now}}, {"_id": 1})
            ids = [document["_id"] for document in await found.to_list()]
            if not ids:
                return 0
            ended = await self._facts.count_documents({"upload_id": {"$in": ids}, "kind": _END})
        return len(ids) - ended

    async def record_multipart(self, upload_id: str, multipart_id: str) -> str:
        existing = await self._insert_once(
            {
                "_id": f"{upload_id}:{_MPU}",
                "upload_id": upload_id,
                "kind": _MPU,
                "multipart_id": multipart_id,
            }
        )
        return multipart_id if existing is None else str(existing["multipart_id"])

    async def multipart_of(self, upload_id: str) -> str | None:
        with translated("multipart_of"):
            document = await self._facts.find_one({"_id": f"{upload_id}:{_MPU}"})
        return None if document is None else str(document["multipart_id"])

    async def commit_part(self, upload_id: str, part: PartCommit) -> PartCommit:
        existing = await self._insert_once(
            {
                "_id": f"{upload_id}:{_PART}:{part.number:05d}",
                "upload_id": upload_id,
                "kind": _PART,
                "number": part.number,
                "offset": part.offset,
                "size_bytes": part.size_bytes,
                "etag": part.etag,
                "crc32c": part.crc32c,
                "running_crc32c": part.running_crc32c,
            }
        )
        return part if existing is None else _part(existing)

    async def parts(self, upload_id: str) -> list[PartCommit]:
        with translated("parts"):
            found = self._facts.find({"upload_id": upload_id, "kind": _PART})
            documents = await found.sort([("_id", ASCENDING)]).to_list()
        return [_part(d) for d in documents]

    async def end(self, upload_id: str, end: SessionEnd, at: datetime) -> SessionEnd:
        existing = await self._insert_once(
            {
                "_id": f"{upload_id}:{_END}",
                "upload_id": upload_id,
                "kind": _END,
                "terminal": end.value,
                "at": at,
            }
        )
        return end if existing is None else SessionEnd(existing["terminal"])

    async def ending(self, upload_id: str) -> SessionEnd | None:
        with translated("ending"):
            document = await self._facts.find_one({"_id": f"{upload_id}:{_END}"})
        return None if document is None else SessionEnd(document["terminal"])

    async def latest_lease(self, upload_id: str) -> WriteLease | None:
        with translated("latest_lease"):
            found = self._facts.find({"upload_id": upload_id, "kind": _LEASE})
            documents = await found.sort([("_id", DESCENDING)]).limit(1).to_list()
        return _lease(documents[0]) if documents else None

    async def take_lease(self, lease: WriteLease) -> bool:
        document = {
            "_id": _lease_id(lease.upload_id, lease.epoch),
            "upload_id": lease.upload_id,
            "kind": _LEASE,
            "epoch": lease.epoch,
            "holder": lease.holder,
            "expires_at": lease.expires_at,
            "released": False,
        }
        with translated("take_lease"):
            try:
                await self._facts.insert_one(document)
            except DuplicateKeyError:
                return False
        return True

    async def renew_lease(self, lease: WriteLease, expires_at: datetime) -> None:
        with translated("renew_lease"):
            await self._facts.update_one(
                {"_id": _lease_id(lease.upload_id, lease.epoch)},
                {"$set": {"expires_at": expires_at}},
            )

    async def release_lease(self, lease: WriteLease) -> None:
        with translated("release_lease"):
            await self._facts.update_one(
                {"_id": _lease_id(lease.upload_id, lease.epoch)}, {"$set": {"released": True}}
            )

    async def ask_release(self, upload_id: str, epoch: int, by: str) -> None:
        await self._insert_once(
            {
                "_id": f"{upload_id}:{_YIELD}:{epoch:09d}",
                "upload_id": upload_id,
                "kind": _YIELD,
                "epoch": epoch,
                "by": by,
            }
        )

    async def release_asked(self, upload_id: str, epoch: int) -> bool:
        with translated("release_asked"):
            found = await self._facts.find_one(
                {"_id": f"{upload_id}:{_YIELD}:{epoch:09d}"}, {"_id": 1}
            )
        return found is not None

    async def expired(self, now: datetime, *, limit: int) -> list[UploadSession]:
        with translated("expired"):
            found = self._sessions.find({"expires_at": {"$lt": now}})
            documents = await found.sort([("expires_at", ASCENDING)]).limit(limit).to_list()
        return [_session(d) for d in documents]

    async def open_multipart_ids(self, multipart_ids: Sequence[str]) -> set[str]:
        if not multipart_ids:
            return set()
        with translated("open_multipart_ids"):
            found = self._facts.find(
                {"kind": _MPU, "multipart_id": {"$in": list(multipart_ids)}},
                {"multipart_id": 1, "upload_id": 1},
            )
            facts = await found.to_list()
            uploads = {str(f["upload_id"]) for f in facts}
            live = self._sessions.find({"_id": {"$in": sorted(uploads)}}, {"_id": 1})
            alive = {str(d["_id"]) async for d in live}
        return {str(f["multipart_id"]) for f in facts if str(f["upload_id"]) in alive}

    async def videos_with_sessions(self, video_ids: Sequence[str]) -> set[str]:
        if not video_ids:
            return set()
        with translated("videos_with_sessions"):
            found = self._sessions.find(
                {"video_id": {"$in": sorted(set(video_ids))}}, {"video_id": 1}
            )
            return {str(d["video_id"]) async for d in found}

    async def delete_all(self) -> int:
        with translated("delete_all_sessions"):
            deleted = await self._sessions.delete_many({})
            await self._facts.delete_many({})
        return int(deleted.deleted_count)

    async def delete(self, upload_id: str) -> None:
        with translated("delete_session"):
            await self._facts.delete_many(
                {"upload_id": upload_id, "kind": {"$in": [_MPU, _PART, _LEASE, _YIELD]}}
            )
            await self._sessions.delete_one({"_id": upload_id})
            await self._facts.delete_many({"upload_id": upload_id})
