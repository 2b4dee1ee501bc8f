"""The whole system under load and faults (`make soak`, `python -m soak`).

The backends (FerretDB, MinIO, Kafka) start once, each behind a toxiproxy proxy, and so does
the system, as real processes in a namespace of its own: two checkout servers, three relays
and one Envoy in front of both servers. Each scenario runs a bounded load (gRPC uploads
straight to each server and through Envoy, REST multipart uploads through Envoy, watchers and
listings), injects one fault while it runs (a kill -9 of a server or a relay, a backend
stopped, a SIGTERM of a server, client cancels, latency, cuts or a slow link through
toxiproxy) and audits the backends themselves afterwards. Each scenario prints one line; any
violation makes the run fail.
"""
