"""Shared test fakes, one per seam: the dial seam's in-memory upstream (`upstream.py`) and an ASGI
client that drives an app without a server (`asgi.py`). The per-file fakes left in tests/unit are
of different seams each (the store's versions vs its traffic counts, the health checker's slice of
the endpoint state), not copies of one another."""
