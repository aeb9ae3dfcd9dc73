"""pfhistory's alembic migrations (installed as the package pfhistory.migrations)."""
