"""The outbox relay (`checkout-relay`): publishes outbox events to Kafka, at least once.

Design and guarantees: docs/relay.md. Modules: `sharding` (event -> slot -> shard),
`ports` (what the relay needs from its store and publisher), `envelope` (the Kafka message),
`leases` (who may publish which shard), `relay` (the publishing loop and the sweeper),
`metrics`, `app` (wiring) and `__main__` (the entry point).
"""
