"""Every twin's spec names its learner's method: a spec that left it out (null) gets its model
kind's default of the time, `gradient` for `mlp` and `pgpe` for every other kind. Twins created
from now on are stored with the method resolved, so a later change of a kind's default never
changes the learner of a twin that exists, whose checkpoints hold that learner's state.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 00:00:04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000
twins = sa.table("twins", sa.column("id", sa.Integer), sa.column("spec", sa.JSON))


def default_method(kind: object) -> str:
    """A kind's default learner before this revision (`twin.learners.LEGACY_DEFAULTS`)."""
    return "gradient" if kind == "mlp" else "pgpe"


def upgrade() -> None:
    conn = op.get_bind()
    after = 0
    while True:
        rows = conn.execute(
            sa.select(twins.c.id, twins.c.spec)
            .where(twins.c.id > after)
            .order_by(twins.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for twin_id, spec in rows:
            learner = spec.get("learner") if isinstance(spec, dict) else None
            if isinstance(learner, dict) and learner.get("method") is None:
                kind = (spec.get("model") or {}).get("kind")
                named = {**spec, "learner": {**learner, "method": default_method(kind)}}
                conn.execute(twins.update().where(twins.c.id == twin_id).values(spec=named))
        after = rows[-1][0]


def downgrade() -> None:
    """Nothing to undo: a spec naming its kind's default method means what it meant."""
