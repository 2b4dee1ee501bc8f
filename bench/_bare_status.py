"""The simplest correct GetStatus server: the peer of bench/status_reads.py's lookups.

    MONGO_URI=mongodb://... GRPC_ADDR=127.0.0.1:50099 python -m bench._bare_status

grpc.aio and PyMongo over the same database as the service: the status record found by `_id`
and answered as the service answers it (`operation`), and nothing else (no authentication,
no storage check, no metrics, traces or logs; grpc.health.v1 for readiness). What the
service's lookups cost above it is the service's own; what both cost is the platform's.
"""

from __future__ import annotations

import asyncio
import os

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pymongo import AsyncMongoClient

from checkout_api.checkout.v1 import checkout_pb2 as pb
from checkout_server.api.messages import operation
from checkout_server.outbox.document import from_document

DATABASE, RECORDS = "main_db", "event_statuses"
SERVICE = "checkout.v1.CheckoutService"


async def serve() -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        os.environ["MONGO_URI"], tz_aware=True
    )
    records = client[DATABASE][RECORDS]

    async def get_status(
        request: pb.GetStatusRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.GetStatusResponse:
        document = await records.find_one({"_id": request.event_id})
        if document is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such event")
        return pb.GetStatusResponse(operation=operation(from_document(document)))

    server = grpc.aio.server()
    lookup = grpc.unary_unary_rpc_method_handler(
        get_status,
        request_deserializer=pb.GetStatusRequest.FromString,
        response_serializer=pb.GetStatusResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"GetStatus": lookup}),)
    )
    checks = health.aio.HealthServicer()  # type: ignore[attr-defined]  # newer than grpc-stubs
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(os.environ["GRPC_ADDR"])
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve())
