"""The reference detection runner: Kafka events in, detection JSON in object storage out."""
