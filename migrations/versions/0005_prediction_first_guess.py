"""Predictions keep what the first guess predicted beside what the twin predicted, so a plot can
show how far calibration has taken the twin from where it started.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: predictions stored before this revision have none.
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("first_guess", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("first_guess")
