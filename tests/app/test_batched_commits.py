"""Many twins per transaction: a pass writes all its twins' versions in one commit, each twin
exactly once, and one twin's conflict or crash never loses or doubles another's work."""

import logging

import pytest
from sqlalchemy import event, select

import app.calibrator as calibrator_module
from app import tables as t
from app.calibrator import Calibrator
from app.db import make_engine
from app.embedded import release_leases
from tests.app.test_calibrator import PowerCut, calibrator, history, seeded_database
from twin.replica import Twin

TWINS = 3


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory):
    """Three twins calibrated twin by twin (one twin claimed per pass), commits of 64."""
    url = f"sqlite:///{tmp_path_factory.mktemp('one-by-one') / 'tandem.db'}"
    ids = seeded_database(url, twins=TWINS)
    calibrator(url, batch=64, claim_limit=1).drain(timeout=600)
    return [history(url, i) for i in ids]


def test_one_pass_commits_every_claimed_twin_in_one_transaction(tmp_path, one_by_one):
    url = f"sqlite:///{tmp_path / 'batched.db'}"
    ids = seeded_database(url, twins=TWINS)
    worker = calibrator(url, batch=64)
    worker.leases.refresh(force=True)  # the heartbeat's transaction, not counted below
    worker.leases.refresh = lambda force=False: None
    commits = []
    event.listen(worker.sessions.kw["bind"], "commit", lambda conn: commits.append(1))
    assert worker.run_once() == TWINS * 64
    assert len(commits) == 2  # the claim, and the pass's versions
    assert [history(url, i)[0][-1][:2] for i in ids] == [(1, 64)] * TWINS
    worker.drain(timeout=600)
    assert [history(url, i) for i in ids] == one_by_one  # the same versions, bit for bit


def test_a_crash_before_the_commit_of_a_batch_loses_and_doubles_nothing(tmp_path, one_by_one):
    url = f"sqlite:///{tmp_path / 'crashing.db'}"
    ids = seeded_database(url, twins=TWINS)
    crashing = calibrator(url, batch=64)
    learned = {"n": 0}

    def crash_in_the_second_pass(*_):
        learned["n"] += 1
        if learned["n"] == TWINS + 2:  # the second twin of the second pass
            raise PowerCut("power cut")

    crashing.before_commit = crash_in_the_second_pass
    with pytest.raises(PowerCut):
        crashing.drain(timeout=600)
    assert [history(url, i)[0][-1][:2] for i in ids] == [(1, 64)] * TWINS  # first pass only
    release_leases(crashing.sessions, crashing.owner)  # as the supervisor of a dead worker does
    calibrator(url, batch=64).drain(timeout=600)  # a fresh worker, with no memory of the lost pass
    assert [history(url, i) for i in ids] == one_by_one


def test_a_conflict_on_one_twin_keeps_the_rest_of_its_batch(tmp_path, one_by_one, caplog):
    """Another worker commits one twin's next version first (a lost lease): the batch commit
    fails, its twins are written one by one, and only the conflicting twin is reloaded."""
    url = f"sqlite:///{tmp_path / 'conflict.db'}"
    ids = seeded_database(url, twins=TWINS)
    first = calibrator(url, batch=64)
    first.run_once()
    rival = calibrator(url, batch=64)
    claim = rival._claim
    rival._claim = lambda: [c for c in claim() if c.twin_id == ids[1]]

    def rival_commits_the_middle_twin_first(twin_id, _result):
        if twin_id == ids[-1]:
            first.leases.release()  # as if the first worker's leases had run out
            assert rival.run_once() == 64
            rival.leases.release()

    first.before_commit = rival_commits_the_middle_twin_first
    with caplog.at_level(logging.WARNING, logger="tandem.calibrator"):
        first.run_once()
    assert [history(url, i)[0][-1][:2] for i in ids] == [(2, 128)] * TWINS
    warnings = [r for r in caplog.records if r.name == "tandem.calibrator"]
    warnings = [r.getMessage() for r in warnings if r.levelno >= logging.WARNING]
    assert warnings == [f"twin {ids[1]}: another worker committed first; reloading"]
    first.before_commit = None
    first.drain(timeout=600)
    assert [history(url, i) for i in ids] == one_by_one


def test_a_worker_loads_a_checkpoint_only_after_another_worker_committed(
    client, make_twin, post, sessions, monkeypatch
):
    from tests.app.conftest import thermal_rows

    loads = []
    from_bytes = Twin.from_bytes.__func__
    monkeypatch.setattr(
        Twin, "from_bytes", classmethod(lambda c, b: loads.append(1) or from_bytes(c, b))
    )
    twin_id = make_twin()["id"]
    mine, other = Calibrator(sessions), Calibrator(sessions)
    post(twin_id, thermal_rows(40))
    mine.run_once()
    assert len(loads) == 1  # version 0, once
    post(twin_id, thermal_rows(8, start=2_000.0))
    mine.run_once()
    assert len(loads) == 1  # its own commit is the newest: kept in memory
    mine.leases.release()
    post(twin_id, thermal_rows(8, start=3_000.0))
    other.run_once()
    other.leases.release()
    post(twin_id, thermal_rows(8, start=4_000.0))
    mine.run_once()
    assert len(loads) == 3  # the other worker's version 3, loaded by each
    assert client.get(f"/twins/{twin_id}").json()["version"] == 4


def test_a_pass_builds_its_version_rows_before_its_first_write(tmp_path, monkeypatch):
    """Checkpoints, metrics and predictions are built before the transaction's first UPDATE
    (which on SQLite takes the write lock), so that the lock is held only for the writes."""
    url = f"sqlite:///{tmp_path / 'order.db'}"
    seeded_database(url, twins=TWINS)
    worker = calibrator(url, batch=64)
    steps = []
    to_bytes = Twin.to_bytes
    monkeypatch.setattr(Twin, "to_bytes", lambda twin: steps.append("built") or to_bytes(twin))

    def executed(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().startswith("UPDATE twins SET version"):
            steps.append("locked")

    event.listen(worker.sessions.kw["bind"], "before_cursor_execute", executed)
    assert worker.run_once() == TWINS * 64
    assert steps == ["built"] * TWINS + ["locked"]


def test_a_twin_whose_version_rows_fail_to_build_fails_alone(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'build.db'}"
    ids = seeded_database(url, twins=TWINS)
    worker = calibrator(url, batch=64)
    version_rows = calibrator_module.version_rows

    def broken(item, *args):
        if item.twin_id == ids[1]:
            raise ValueError("cannot serialize")
        return version_rows(item, *args)

    monkeypatch.setattr(calibrator_module, "version_rows", broken)
    worker.run_once()
    assert [len(history(url, i)[0]) for i in ids] == [2, 1, 2]  # version 0, and 1 but for one
    with make_engine(url).connect() as conn:
        status = conn.execute(select(t.Twin.calibration_status).where(t.Twin.id == ids[1]))
        assert status.scalar_one() == "failing"
