"""The peer of bench/rest_upload.py: the seed's `POST /api/upload_video` written its own way
(docs/seed.md), on the same MinIO and FerretDB as checkout.

As the seed does it: the multipart body is read whole (the file into memory), the bucket is
checked with `bucket_exists` on every request, the video goes up with one `put_object`, and a
new synchronous MongoClient is opened, used for one `insert_one` into the outbox and closed
again, in the default thread pool, per request. No validation, no checksum, no status record.
The seed ran FastAPI on uvicorn; this is aiohttp.web (already installed, and its HTTP parser
is C, so if anything this peer is faster than the original) with miniopy-async instead of the
synchronous minio client in a thread.

    python -m bench._old_service --port 8099 --mongo-uri mongodb://... --minio 127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import uuid
from datetime import UTC, datetime

from aiohttp import web
from miniopy_async.api import Minio
from pymongo import MongoClient

DATABASE = "old_service"  # apart from checkout's, so its relay never sees these events


def make_app(*, mongo_uri: str, minio_endpoint: str) -> web.Application:
    s3 = Minio(minio_endpoint, access_key="minioadmin", secret_key="minioadmin", secure=False)

    async def upload_video(request: web.Request) -> web.Response:
        form = await request.post()
        file = form["file"]
        assert isinstance(file, web.FileField)
        data = file.file.read()
        bucket = str(form.get("bucket", "videos"))
        video_id = str(uuid.uuid4())
        if not await s3.bucket_exists(bucket):
            await s3.make_bucket(bucket)
        await s3.put_object(
            bucket, f"input/{video_id}.mp4", io.BytesIO(data), len(data), content_type="video/mp4"
        )

        def mongo_insert() -> None:
            client: MongoClient[dict[str, object]] = MongoClient(mongo_uri)
            try:
                client[DATABASE]["outbox"].insert_one(
                    {
                        "_id": video_id,
                        "payload": {"bucket": bucket, "filename": file.filename},
                        "created_at": datetime.now(UTC),
                        "status": "new",
                    }
                )
            finally:
                client.close()

        await asyncio.get_running_loop().run_in_executor(None, mongo_insert)
        return web.json_response({"status": "ok", "event_id": video_id, "video_id": video_id})

    async def close(_: web.Application) -> None:
        await s3.close_session()  # type: ignore[no-untyped-call]

    # No limit of its own below checkout's UPLOAD_MAX_BYTES (4 GiB): the seed's FastAPI had none.
    app = web.Application(client_max_size=4 * 1024**3)
    app.router.add_post("/api/upload_video", upload_video)
    app.router.add_get("/api/health", lambda _: _ok())
    app.on_cleanup.append(close)
    return app


async def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mongo-uri", required=True)
    parser.add_argument("--minio", required=True, help="host:port")
    args = parser.parse_args()
    app = make_app(mongo_uri=args.mongo_uri, minio_endpoint=args.minio)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
