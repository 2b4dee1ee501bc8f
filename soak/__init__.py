"""The whole system under load and faults (`make soak`, `python -m soak`).

The backends (FerretDB, MinIO, Kafka) start once, each behind a toxiproxy proxy; each
scenario then starts the checkout server and two relays as real processes in a namespace of
its own, runs a bounded load of uploads, watchers and listings against the server, injects
one fault while it runs (a kill -9, a backend stopped, a SIGTERM, client cancels, latency,
cuts or a slow link through toxiproxy) and audits the backends themselves afterwards. Each
scenario prints one line; any violation makes the run fail.
"""
