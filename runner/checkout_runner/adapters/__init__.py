"""One module per backend: the only modules that import a vendor library."""
