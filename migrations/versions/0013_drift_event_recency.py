"""Drift events are keyed by (twin_id, created_at) as well: the twin list's `drifting` filter
probes each twin's newest events (index-only), and the page's event counts and newest times
read the same key.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 00:00:03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_drift_events_twin_id_created_at", "drift_events", ["twin_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_drift_events_twin_id_created_at", table_name="drift_events")
