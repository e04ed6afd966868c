"""A sample outdoor-gear store and a loopback stand-in for Shopify that serves it: the demo and the tests only.
Nothing in production imports it (the import-linter contracts in pyproject.toml)."""
