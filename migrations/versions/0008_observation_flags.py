"""Observations carry flags (bits: 1 = a missing input was held from the previous observation).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows stored before this revision had every channel: no flag is set.
    op.add_column(
        "observations", sa.Column("flags", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    # Natively on SQLite too (3.35+): a batch copy drops the table, and dropping a table that
    # other tables refer to with ON DELETE CASCADE deletes their rows.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE observations DROP COLUMN flags")
    else:
        op.drop_column("observations", "flags")
