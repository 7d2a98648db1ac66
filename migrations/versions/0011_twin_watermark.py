"""Each twin's newest version number and watermark on its own row, so that finding twins with
pending observations reads the twins table alone instead of aggregating every version.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (no batch copy: recreating `twins` would cascade to every row).
    op.add_column("twins", sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
    op.add_column(
        "twins", sa.Column("watermark", sa.BigInteger(), nullable=False, server_default="0")
    )
    op.execute(
        "UPDATE twins SET"
        " version = COALESCE((SELECT MAX(v.number) FROM versions v WHERE v.twin_id = twins.id), 0),"
        " watermark = COALESCE((SELECT v.watermark FROM versions v WHERE v.twin_id = twins.id"
        " ORDER BY v.number DESC LIMIT 1), 0)"
    )


def downgrade() -> None:
    op.drop_column("twins", "watermark")  # SQLite >= 3.35 drops a column in place
    op.drop_column("twins", "version")
