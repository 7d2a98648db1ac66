"""A deleted twin is marked at once (`deleted_at`) and its rows purged in small batches after.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (no batch copy: recreating `twins` would cascade to every row).
    op.add_column("twins", sa.Column("deleted_at", sa.Float(), nullable=True))


def downgrade() -> None:
    # Twins marked deleted but not purged yet go now, with their rows (ON DELETE CASCADE).
    op.execute("DELETE FROM twins WHERE deleted_at IS NOT NULL")
    op.drop_column("twins", "deleted_at")  # SQLite >= 3.35 drops a column in place
