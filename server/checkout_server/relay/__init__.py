"""The outbox relay's logic: publishes outbox events to Kafka, at least once.

Design and guarantees: docs/relay.md. Modules: `ports` (what the relay needs from its store
and publisher), `envelope` (the Kafka message), `leases` (who may publish which shard),
`relay` (the publishing step and loop, the sweeper) and `metrics`. Its wiring and entry
point are `checkout_server.wiring.relay`; it imports no adapter.
"""
