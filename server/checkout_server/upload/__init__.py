"""Uploads into object storage: UploadVideo (gRPC and REST) in pipeline.py, resumable
sessions in resumable.py and session_writer.py. Both send their parts through one part sender
(part_sender.py), are admitted by one admission (admission.py: concurrency, rate, memory,
interrupts) within one UploadLimits (limits.py), check the upload rules of ../rules.py and end
in the same outbox event (OutboxEvent.new)."""
