"""Drift events record where the detector places the start of the change (`start_seq`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: events stored before this revision have no estimate.
    with op.batch_alter_table("drift_events") as batch:
        batch.add_column(sa.Column("start_seq", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("drift_events") as batch:
        batch.drop_column("start_seq")
