"""The schema's alembic scripts; installed as `app._migrations` (see pyproject.toml)."""
