"""Twins count their late observations (older than the newest when they arrived).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 00:00:01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Before this revision late observations were refused: every twin has none.
    op.add_column(
        "twins", sa.Column("late_observations", sa.BigInteger(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    # Natively on SQLite too (3.35+): a batch copy drops the table, and dropping a table that
    # other tables refer to with ON DELETE CASCADE deletes their rows.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE twins DROP COLUMN late_observations")
    else:
        op.drop_column("twins", "late_observations")
