"""Twins record their calibration health: status, last error, consecutive failures, next retry.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("twins") as batch:
        batch.add_column(
            sa.Column("calibration_status", sa.String(16), server_default="ok", nullable=False)
        )
        batch.add_column(sa.Column("calibration_error", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("calibration_failures", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("retry_at", sa.Float(), nullable=True))


def downgrade() -> None:
    # Each column dropped in place (SQLite >= 3.35 too): a batch copy would drop and recreate
    # `twins`, and dropping it deletes every row that refers to it (ON DELETE CASCADE).
    for column in ("retry_at", "calibration_failures", "calibration_error", "calibration_status"):
        op.drop_column("twins", column)
