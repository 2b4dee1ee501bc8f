"""One module per backend; each implements ports from `checkout_server.ports`."""
