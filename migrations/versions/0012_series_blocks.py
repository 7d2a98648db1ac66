"""Series blocks: per-output aggregates of runs of learned observations, which downsampled
series reads merge instead of every raw row (derived data: dropping it loses nothing).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 00:00:02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MEASURES = ("observed", "predicted", "residual", "first_guess")


def upgrade() -> None:
    measures = []
    for m in MEASURES:
        measures += [
            sa.Column(f"{m}_n", sa.Integer(), nullable=False),
            sa.Column(f"{m}_min", sa.Float(), nullable=True),
            sa.Column(f"{m}_max", sa.Float(), nullable=True),
            sa.Column(f"{m}_sum", sa.Float(), nullable=True),
        ]
    op.create_table(
        "series_blocks",
        sa.Column("twin_id", sa.Integer(), nullable=False),
        sa.Column("output", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("ts_sum", sa.Float(), nullable=False),
        *measures,
        sa.ForeignKeyConstraint(
            ["twin_id"],
            ["twins.id"],
            name=op.f("fk_series_blocks_twin_id_twins"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "twin_id", "output", "size", "block", name=op.f("pk_series_blocks")
        ),
    )


def downgrade() -> None:
    op.drop_table("series_blocks")
