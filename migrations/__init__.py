"""Alembic environment and revisions: the only place the schema is made."""
