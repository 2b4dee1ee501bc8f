"""checkout server: the gRPC entry point of the video object-detection system.

The folders draw the data path: `api` (gRPC and REST in) -> `upload` (the pipeline) ->
object storage and the outbox (`ports`, `outbox`, `adapters`) -> `relay` (to Kafka), with
`status` (statuses, results, the watch feed) beside it. `wiring` builds each process.
"""
