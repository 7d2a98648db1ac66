"""Initial schema: twins, observations, predictions, versions, drift events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _twin_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["twin_id"], ["twins.id"], name=op.f(f"fk_{table}_twin_id_twins"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "twins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_ts", sa.Float(), nullable=True),
        sa.Column("last_received_at", sa.Float(), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_twins")),
        sa.UniqueConstraint("name", name=op.f("uq_twins_name")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "observations",
        sa.Column("twin_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        _twin_fk("observations"),
        sa.PrimaryKeyConstraint("twin_id", "seq", name=op.f("pk_observations")),
        sa.UniqueConstraint("twin_id", "ts", name=op.f("uq_observations_twin_id_ts")),
    )
    op.create_table(
        "predictions",
        sa.Column("twin_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("prediction", sa.JSON(), nullable=False),
        sa.Column("residual", sa.JSON(), nullable=False),
        _twin_fk("predictions"),
        sa.PrimaryKeyConstraint("twin_id", "seq", name=op.f("pk_predictions")),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("twin_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("watermark", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=True),
        _twin_fk("versions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_versions")),
        sa.UniqueConstraint("twin_id", "number", name=op.f("uq_versions_twin_id_number")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "drift_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("twin_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("output", sa.String(length=64), nullable=False),
        sa.Column("detector", sa.String(length=64), nullable=False),
        sa.Column("statistic", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        _twin_fk("drift_events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_events")),
    )
    op.create_index("ix_drift_events_twin_id_seq", "drift_events", ["twin_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_drift_events_twin_id_seq", table_name="drift_events")
    op.drop_table("drift_events")
    op.drop_table("versions")
    op.drop_table("predictions")
    op.drop_table("observations")
    op.drop_table("twins")
