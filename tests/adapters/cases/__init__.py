"""One module per provider, each with a module-level `CASE` (see conformance.py)."""
