"""A small demo: a notes server to put behind the gateway, and a configuration that uses it."""
