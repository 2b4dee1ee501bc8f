"""Python SDK for checkout (see the README). The generated stubs live in `checkout_api`."""
