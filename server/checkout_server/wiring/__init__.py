"""Wiring: one module per process (`server`, `relay`) that builds the clients, adapters and
servers; `clients` builds the backend clients both use. The only place outside `adapters/`
that imports a backend client library."""
