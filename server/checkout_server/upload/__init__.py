"""The upload pipeline: validation, streaming into object storage, the outbox event, and the
memory budget that bounds all uploads together."""
