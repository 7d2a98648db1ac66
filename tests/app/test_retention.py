"""Retention: observations, predictions and versions removed by age and count, in bounded
transactions, never what the twin still needs; reads stay coherent afterwards."""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select

from app import tables as t
from app.calibrator import Calibrator, CalibratorConfig
from app.retention import Retention, RetentionPolicy
from tests.app.conftest import thermal_rows


def seqs(sessions, table, twin_id) -> list[int]:
    with sessions() as session:
        query = select(table.seq).where(table.twin_id == twin_id).order_by(table.seq)
        return list(session.scalars(query))


def numbers(sessions, twin_id) -> list[int]:
    with sessions() as session:
        query = select(t.Version.number).where(t.Version.twin_id == twin_id)
        return sorted(session.scalars(query))


def post_all(post, twin_id, rows, size=500):
    for k in range(0, len(rows), size):
        post(twin_id, rows[k : k + size])


def test_count_keeps_the_newest_and_never_an_unlearned_observation(
    make_twin, post, learn, sessions, client
):
    twin = make_twin()["id"]
    post_all(post, twin, thermal_rows(300))
    learn(twin)
    post(twin, thermal_rows(40, start=5_000.0))  # seqs 301..340: not learned
    policy = RetentionPolicy(observation_count=20, floor=50, batch=64)
    removed = Retention(sessions, policy).run()
    # learned 1..300: the floor keeps the newest 50 learned (251..300); 301..340 are pending
    assert seqs(sessions, t.Observation, twin) == list(range(251, 341))
    assert seqs(sessions, t.Prediction, twin) == list(range(251, 301))
    assert removed == 250 + 250  # observations and their predictions
    page = client.get(f"/twins/{twin}/observations", params={"limit": 5}).json()
    assert page["first_seq"] == 251 and page["observations"][0]["seq"] == 251
    assert page["observations"][0]["prediction"] is not None
    status = client.get(f"/twins/{twin}").json()
    assert status["calibration_lag"]["observations"] == 40
    learn(twin)  # the pending observations are still there to learn
    assert client.get(f"/twins/{twin}").json()["calibration_lag"]["observations"] == 0


def test_age_removes_by_ts_and_predictions_may_go_sooner(make_twin, post, learn, sessions):
    twin = make_twin()["id"]
    now = time.time()
    post_all(post, twin, thermal_rows(400, start=now - 400))
    learn(twin)
    policy = RetentionPolicy(observation_seconds=300, prediction_seconds=200, floor=10, batch=1000)
    Retention(sessions, policy).run(now=now)
    kept = seqs(sessions, t.Observation, twin)
    assert kept[0] == 101 and kept[-1] == 400  # ts >= now - 300 stay
    assert seqs(sessions, t.Prediction, twin)[0] == 201  # ts >= now - 200


def test_versions_by_count_and_age_keep_version_0_and_the_newest(
    make_twin, post, learn, sessions, client
):
    twin = make_twin()["id"]
    rows = thermal_rows(120, start=10_000.0, dt=10.0)
    for k in range(0, 120, 10):  # 12 versions, created_at = the batch's newest ts
        post(twin, rows[k : k + 10])
        learn(twin)
    assert numbers(sessions, twin) == list(range(13))
    Retention(sessions, RetentionPolicy(version_count=5, keep_checkpoints=2)).run()
    assert numbers(sessions, twin) == [0, 8, 9, 10, 11, 12]
    # by age: everything but version 0 and the newest keep_checkpoints is old
    Retention(sessions, RetentionPolicy(version_seconds=60, keep_checkpoints=2)).run()
    assert numbers(sessions, twin) == [0, 11, 12]
    versions = client.get(f"/twins/{twin}/versions").json()
    assert [v["number"] for v in versions] == [12, 11, 0]
    drift = client.get(f"/twins/{twin}/drift")
    assert drift.status_code == 200 and drift.json()["version"] == 12
    assert client.get(f"/twins/{twin}/parameters").status_code == 200


def test_thinning_keeps_every_kth_old_version(make_twin, post, learn, sessions):
    twin = make_twin()["id"]
    rows = thermal_rows(200, start=10_000.0, dt=10.0)
    for k in range(0, 200, 10):  # 20 versions, the first ten written "long ago"
        post(twin, rows[k : k + 10])
        learn(twin)
    with sessions.begin() as session:
        session.execute(
            t.Version.__table__.update()
            .where(t.Version.twin_id == twin)
            .values(created_at=time.time() - 10_000)
        )
        session.execute(
            t.Version.__table__.update()
            .where(t.Version.twin_id == twin, t.Version.number > 10)
            .values(created_at=time.time())
        )
    policy = RetentionPolicy(thin_after=3600, thin_every=4, keep_checkpoints=3, batch=2)
    retention = Retention(sessions, policy)
    assert retention.run() == 8  # 1, 2, 3, 5, 6, 7, 9, 10 go, two rows per transaction
    assert numbers(sessions, twin) == [0, 4, 8, *range(11, 21)]


def test_each_transaction_removes_at_most_a_batch_and_steps_keep_to_their_budget(
    make_twin, post, learn, sessions
):
    twin = make_twin()["id"]
    post_all(post, twin, thermal_rows(600))
    learn(twin)
    retention = Retention(sessions, RetentionPolicy(observation_count=1, floor=0, batch=50))
    (state,) = retention.sweep(time.time())
    assert retention.remove_batch(state, time.time()) == 100  # 50 and their predictions
    assert seqs(sessions, t.Observation, twin)[0] == 51
    deadline = time.monotonic() + 60
    assert retention.step() > 0  # the first step sweeps and queues the twin
    while retention._queue:
        begun = time.monotonic()
        if retention.step():  # a step keeps to its budget (one batch may run past it)
            assert time.monotonic() - begun < retention.policy.budget + 5
            assert retention.step() == 0  # and then leaves the worker the rest of its time
        assert time.monotonic() < deadline
    assert seqs(sessions, t.Observation, twin) == [600]
    assert retention.removed["observations"] == 599 == retention.removed["predictions"]


def test_a_twin_without_anything_old_is_not_swept(make_twin, post, learn, sessions):
    twin = make_twin()["id"]
    post(twin, thermal_rows(50))
    learn(twin)
    policy = RetentionPolicy(observation_count=100, version_count=100, floor=0)
    assert Retention(sessions, policy).sweep(time.time()) == []


def test_the_worker_runs_retention_between_passes(make_twin, post, sessions):
    twin = make_twin()["id"]
    post_all(post, twin, thermal_rows(400))
    calibrator = Calibrator(sessions, CalibratorConfig(poll_interval=0.01))
    retention = Retention(sessions, RetentionPolicy(observation_count=1, floor=100, interval=0.05))
    calibrator.between_passes = retention.hook
    stop = threading.Event()
    thread = threading.Thread(target=calibrator.run_until, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while seqs(sessions, t.Observation, twin)[:1] != [301]:
            assert time.monotonic() < deadline, "retention did not run"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    with sessions() as session:
        pending = session.scalar(select(func.count()).select_from(t.Observation))
    assert pending == 100


def test_a_step_after_a_long_pass_deletes_for_its_share_of_that_pass(
    make_twin, post, learn, sessions
):
    twin = make_twin()["id"]
    post_all(post, twin, thermal_rows(600))
    learn(twin)
    policy = RetentionPolicy(observation_count=1, floor=0, batch=10, budget=0.0, share=0.5)
    retention = Retention(sessions, policy)
    assert retention.step() <= 20  # right after the last step: its minimum, one batch at most
    retention._resume = 0.0
    retention._last = time.monotonic() - 30.0  # as if calibration had just run for 30 s
    begun = time.monotonic()
    retention.step()  # owed 30 s at share 0.5, capped at `burst` (2 s): many batches
    spent = time.monotonic() - begun
    assert spent < policy.burst + 5  # a batch may run past the deadline, not more
    assert retention.removed["observations"] >= 10 * 3 or spent >= policy.burst
    assert retention._resume >= begun + 2 * spent - 0.01  # then calibration gets as long
