"""`python -m checkout_server`: the server process (see wiring/server.py)."""

from .wiring.server import main

if __name__ == "__main__":
    main()
