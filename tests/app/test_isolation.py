"""Fault isolation in the calibrator: a failing twin is rolled back, reported, retried with
backoff and passed over where it must be, never blocking others; claims are fair; a time budget
cuts a pass at an update boundary without changing what is learned."""

import logging
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from sqlalchemy import delete, select, update

from app import tables as t
from app.calibrator import Calibrator, CalibratorConfig
from tests.app.test_calibrator import N, calibrator, history, seeded_database
from twin.replica import Twin

POISON = 1e300


@pytest.fixture(params=["raises", "non-finite"])
def poisoned_steps(request, monkeypatch):
    """Twins whose step fails on observations with outputs of 1e300: it raises (as a Cholesky
    of a poisoned Gram matrix does), or it leaves non-finite parameters."""
    stepping = Twin.stepping  # behind Twin.step and the calibrator's step_together alike

    def poisoned(self, obs, deadline=None):
        bad = bool((np.abs(obs.outputs) > 1e200).any())
        if bad and request.param == "raises":
            raise np.linalg.LinAlgError("Matrix is not positive definite")
        result = yield from stepping(self, obs, deadline)
        if bad:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return result

    monkeypatch.setattr(Twin, "stepping", poisoned)
    return request.param


def test_a_failing_twin_is_isolated_reported_and_recovers(
    client, make_twin, post, sessions, poisoned_steps
):
    from tests.app.conftest import thermal_rows

    rows = thermal_rows(120)
    sick = make_twin("sick")["id"]  # the lowest id: it used to stop every later twin
    healthy = make_twin("healthy")["id"]
    poisoned = [{**r, "outputs": {"T": POISON}} if 40 <= i < 60 else r for i, r in enumerate(rows)]
    post(sick, poisoned)
    post(healthy, rows)
    config = CalibratorConfig(retry_seconds=60.0, quarantine_after=2, budget_seconds=None)
    worker = Calibrator(sessions, config)

    worker.run_once()
    assert client.get(f"/twins/{healthy}").json()["watermark"] == 120
    status = client.get(f"/twins/{sick}").json()
    assert status["status"] == "failing" and status["failures"] == 1
    assert status["version"] == 0 and status["retry_at"] > time.time() - 1
    assert ("LinAlgError" if poisoned_steps == "raises" else "non-finite") in status["error"]
    metrics = client.get("/metrics").text
    assert 'twin_calibration_failing{twin="sick"} 1.0' in metrics
    assert 'twin_calibration_failing{twin="healthy"} 0.0' in metrics
    assert worker.run_once() == 0  # waiting out its backoff: not claimed

    worker.config = replace(config, retry_seconds=0.01)  # let time pass
    with sessions.begin() as session:
        session.execute(update(t.Twin).where(t.Twin.id == sick).values(retry_at=time.time()))
    worker.drain(timeout=30)  # a second failure, then it passes over what it cannot learn
    status = client.get(f"/twins/{sick}").json()
    assert status["status"] == "ok" and status["error"] is None and status["failures"] == 0
    assert status["watermark"] == 120 and status["calibration_lag"]["observations"] == 0
    assert 'twin_calibration_failing{twin="sick"} 0.0' in client.get("/metrics").text
    history_rows = client.get(f"/twins/{sick}/observations").json()["observations"]
    learned = [r["seq"] for r in history_rows if r["prediction"] is not None]
    assert learned and max(learned) == 120  # it predicts again after the poison
    with sessions() as session:
        params = session.scalars(select(t.Version.parameters).where(t.Version.twin_id == sick))
        assert all(np.isfinite(list(p.values())).all() for p in params)


def test_backoff_doubles_up_to_its_cap(client, make_twin, post, sessions):
    from tests.app.conftest import thermal_rows

    twin_id = make_twin()["id"]
    post(twin_id, thermal_rows(8))
    worker = Calibrator(sessions, CalibratorConfig(retry_seconds=1.0, retry_cap_seconds=5.0))
    waits = []
    for failures in range(5):
        worker._fail(twin_id, failures, RuntimeError("boom"))
        with sessions() as session:
            twin = session.get(t.Twin, twin_id)
            waits.append(round(twin.retry_at - time.time()))
            assert twin.calibration_failures == failures + 1 and twin.lease_owner is None
    assert waits == [1, 2, 4, 5, 5]


def test_claims_go_to_the_longest_waiting_twin_first(client, make_twin, post, sessions):
    from tests.app.conftest import thermal_rows

    first, second = make_twin("first")["id"], make_twin("second")["id"]
    post(second, thermal_rows(8))  # received first, so waiting longest
    post(first, thermal_rows(8))
    worker = Calibrator(sessions, CalibratorConfig(claim_limit=1))
    assert [c.twin_id for c in worker._claim()] == [second]


def test_deleting_a_twin_the_worker_holds_is_quiet(client, make_twin, post, sessions, caplog):
    from tests.app.conftest import thermal_rows

    ids = [make_twin(f"hx-{i}")["id"] for i in range(2)]
    for twin_id in ids:
        post(twin_id, thermal_rows(40))
    worker = Calibrator(sessions, CalibratorConfig(budget_seconds=None))
    claim = worker._claim

    def claim_then_delete_the_first():
        claimed = claim()
        with sessions.begin() as session:
            session.execute(delete(t.Twin).where(t.Twin.id == ids[0]))
        return claimed

    worker._claim = claim_then_delete_the_first
    with caplog.at_level(logging.INFO, logger="tandem.calibrator"):
        worker.run_once()  # deleted before it was loaded
        assert client.get(f"/twins/{ids[1]}").json()["watermark"] == 40
        worker._claim = claim
        post(ids[1], thermal_rows(8, start=5_000.0))
        worker.before_commit = lambda *_: client.delete(f"/twins/{ids[1]}")
        worker.run_once()  # deleted between learning and commit
    assert client.get(f"/twins/{ids[1]}").status_code == 404
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert sum("deleted" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.slow
def test_a_budget_cut_learns_exactly_what_an_uncut_run_learns(tmp_path):
    """A zero budget commits after every update (8 observations): every version of the uncut
    run (commits of 64) is among them with the same parameters, and every prediction agrees."""
    urls = [f"sqlite:///{tmp_path / name}.db" for name in ("uncut", "cut")]
    (twin_id,) = seeded_database(urls[0])
    seeded_database(urls[1])
    calibrator(urls[0], batch=64).drain()
    calibrator(urls[1], batch=64, budget_seconds=0.0).drain()
    (uncut, uncut_predictions), (cut, cut_predictions) = (history(u, twin_id) for u in urls)
    assert len(cut) == N // 8 + 1 and all(w % 8 == 0 for _, w, _ in cut)
    by_watermark = {w: p for _, w, p in cut}
    assert [by_watermark[w] for _, w, _ in uncut] == [p for _, _, p in uncut]
    assert [p for _, p in cut_predictions] == [p for _, p in uncut_predictions]
