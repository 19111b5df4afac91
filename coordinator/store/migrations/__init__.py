"""Alembic migration scripts of the results store (run programmatically, see ``store.migrate``)."""
