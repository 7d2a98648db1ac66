"""On PostgreSQL, observations' keys cover the hot reads: the primary key (twin_id, seq)
includes `received_at` (the calibration lag, the claim order) and the unique (twin_id, ts)
includes `seq` (retention by age), so those stay index-only scans at any size (docs/fleet.md).
SQLite keeps its keys: it has no INCLUDE.

Both keys are rebuilt: on a large table this holds its lock for the rebuild (minutes per
hundred million rows); run it in a quiet hour.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 00:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PK, UQ = "pk_observations", "uq_observations_twin_id_ts"


def _keys(pk_include: str, uq_include: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"ALTER TABLE observations DROP CONSTRAINT {PK}, "
        f"ADD CONSTRAINT {PK} PRIMARY KEY (twin_id, seq){pk_include}, "
        f"DROP CONSTRAINT {UQ}, "
        f"ADD CONSTRAINT {UQ} UNIQUE (twin_id, ts){uq_include}"
    )


def upgrade() -> None:
    _keys(" INCLUDE (received_at)", " INCLUDE (seq)")


def downgrade() -> None:
    _keys("", "")
