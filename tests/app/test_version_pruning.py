"""The calibrator's commit prunes versions (`TANDEM_VERSION_RETENTION`) and full checkpoints
(`TANDEM_KEEP_CHECKPOINTS`) within a short window of numbers, so that it never reads or deletes
a twin's whole version history; a longer backlog goes to retention's small batches."""

from __future__ import annotations

import time
from types import SimpleNamespace

from sqlalchemy import insert, select

from app import tables as t
from app.calibrator import Calibrator, CalibratorConfig
from app.retention import Retention, RetentionPolicy
from app.versions import PRUNE_WINDOW, WriteRules, _prune
from tests.app.conftest import thermal_rows


def versions(sessions, twin_id) -> list[tuple[int, bool]]:
    """(number, has a checkpoint) of each version of the twin, in order."""
    v = t.Version
    with sessions() as session:
        query = select(v.number, v.checkpoint.is_not(None)).where(v.twin_id == twin_id)
        return [(n, bool(c)) for n, c in session.execute(query.order_by(v.number))]


def test_the_calibrator_keeps_the_newest_versions_and_version_0(make_twin, post, sessions):
    twin = make_twin()["id"]
    config = CalibratorConfig(version_retention=3, keep_checkpoints=2, poll_interval=0.01)
    calibrator = Calibrator(sessions, config)
    rows = thermal_rows(80)
    for k in range(0, 80, 10):  # eight versions, one per commit
        post(twin, rows[k : k + 10])
        calibrator.drain()
    assert versions(sessions, twin) == [(0, False), (6, False), (7, True), (8, True)]


def test_a_backlog_of_versions_is_left_to_retention_in_batches(make_twin, sessions):
    twin = make_twin()["id"]
    with sessions.begin() as session:  # 100 versions, all with their checkpoint: a backlog
        first = session.scalars(select(t.Version).where(t.Version.twin_id == twin)).one()
        row = {
            "twin_id": twin,
            "watermark": 0,
            "created_at": first.created_at,
            "parameters": first.parameters,
            "metrics": first.metrics,
            "checkpoint": first.checkpoint,
        }
        session.execute(insert(t.Version), [{**row, "number": n} for n in range(1, 101)])
    rules = WriteRules(30.0, 3, keep_checkpoints=2, version_retention=5)
    with sessions.begin() as session:  # what the commit of version 100 prunes
        _prune(session, [SimpleNamespace(twin_id=twin, number=100)], rules)
    kept = versions(sessions, twin)
    # deleted: the window just below the newest 5 (80..95), not the older 1..79; checkpoints
    # dropped in the window below the newest 2 (96..98 of those left)
    assert PRUNE_WINDOW == 16
    assert [n for n, _ in kept] == [*range(0, 80), *range(96, 101)]
    assert [n for n, c in kept if not c] == [96, 97, 98]
    retention = Retention(sessions, RetentionPolicy(version_count=5, keep_checkpoints=2, batch=20))
    (state,) = retention.sweep(time.time())
    removed = []
    while gone := retention.remove_batch(state, time.time()):
        removed.append(gone)
    assert removed == [20, 20, 20, 19]  # 1..79, a batch per transaction; version 0 stays
    assert [n for n, _ in versions(sessions, twin)] == [0, 96, 97, 98, 99, 100]
