"""Retention of what grows besides observations, predictions and versions (the series blocks),
and which twins each worker's retention covers when several share the database."""

from __future__ import annotations

import time

from sqlalchemy import func, insert, select, update

from app import tables as t
from app.leases import Leases
from app.retention import Retention, RetentionPolicy
from app.services import blocks
from tests.app.conftest import thermal_rows


def predicted(sessions, twin_id: int, upto: int, number: int) -> None:
    """Predictions up to seq `upto` and version `number` that learned them, as if the
    calibrator had (made-up values: learning 1,300 rows for real takes a minute)."""
    p = t.Prediction
    with sessions.begin() as session:
        version = session.scalars(select(t.Version).where(t.Version.twin_id == twin_id)).first()
        done = session.scalar(select(func.max(p.seq)).where(p.twin_id == twin_id)) or 0
        session.execute(
            insert(p),
            [
                {
                    "twin_id": twin_id,
                    "seq": seq,
                    "version": number,
                    "prediction": [20.0],
                    "residual": [0.5],
                    "first_guess": [19.0],
                }
                for seq in range(done + 1, upto + 1)
            ],
        )
        session.add(
            t.Version(
                twin_id=twin_id,
                number=number,
                watermark=upto,
                created_at=version.created_at,
                parameters=version.parameters,
                metrics=version.metrics,
                checkpoint=None,
            )
        )


def block_rows(sessions, twin_id) -> list[tuple[int, int]]:
    b = t.SeriesBlock
    with sessions() as session:
        query = select(b.size, b.block).where(b.twin_id == twin_id).order_by(b.size, b.block)
        return [tuple(row) for row in session.execute(query)]


def test_series_blocks_of_removed_observations_go_in_batches_the_newest_of_a_size_stays(
    client, make_twin, post, sessions
):
    twin = make_twin()["id"]
    rows = thermal_rows(1_300)
    post(twin, rows)
    predicted(sessions, twin, 1_300, number=1)
    url = f"/twins/{twin}/series"
    assert client.get(url, params={"points": 2}).status_code == 200  # builds blocks of 16, 256
    assert len(block_rows(sessions, twin)) == 81 + 5
    retention = Retention(sessions, RetentionPolicy(observation_count=10, floor=0, batch=32))
    (state,) = retention.sweep(time.time())
    gone_blocks = []
    while True:
        before = retention.removed["series_blocks"]
        if not retention.remove_batch(state, time.time()):
            break
        gone_blocks.append(retention.removed["series_blocks"] - before)
    with sessions() as session:
        first = session.scalar(
            select(func.min(t.Observation.seq)).where(t.Observation.twin_id == twin)
        )
    assert first == 1_291
    # blocks ending below seq 1291 go (16: 0..79, 256: 0..3), 32 a transaction, after the
    # observations; block 80 of 16 (seqs 1281..1296) holds kept rows, block 4 of 256 is its
    # size's newest (blocks.built counts from it)
    assert sum(gone_blocks) == 80 + 4 and max(gone_blocks) == 32
    assert block_rows(sessions, twin) == [(16, 80), (256, 4)]
    with sessions() as session:
        assert blocks.built(session, twin, 0) == {16: 81, 256: 5, 4096: 0}
    assert retention.sweep(time.time()) == []  # nothing left to remove
    body = client.get(url, params={"points": 2}).json()
    assert sum(body["count"]) == 10  # the read covers the stored rows only
    post(twin, thermal_rows(300, start=2_300.0))  # more, learned: the read builds on
    predicted(sessions, twin, 1_600, number=2)
    body = client.get(url, params={"points": 2}).json()
    assert sum(body["count"]) == 310
    kept = block_rows(sessions, twin)
    assert (16, 99) in kept and (256, 5) in kept and (16, 79) not in kept


def lease(sessions, owners: dict[int, tuple[str | None, float | None]]) -> None:
    with sessions.begin() as session:
        for twin_id, (owner, expires) in owners.items():
            session.execute(
                update(t.Twin)
                .where(t.Twin.id == twin_id)
                .values(lease_owner=owner, lease_expires_at=expires)
            )


def test_each_worker_sweeps_the_twins_it_holds_and_its_part_of_the_unheld(
    make_twin, post, learn, sessions
):
    ids = []
    for i in range(7):
        twin = make_twin(f"hx-{i}")["id"]
        post(twin, thermal_rows(20))
        learn(twin)
        ids.append(twin)
    now = time.time()
    with sessions.begin() as session:  # a and b are alive, c stopped beating long ago
        for name, beat in (("a", now), ("b", now), ("c", now - 3_600)):
            session.add(t.Worker(name=name, started_at=now - 7_200, heartbeat_at=beat))
    held, expired = now + 30, now - 1
    lease(
        sessions,
        {
            ids[0]: ("a", held),
            ids[1]: ("a", held),
            ids[2]: ("b", held),
            ids[3]: (None, None),
            ids[4]: ("c", expired),  # c's lease ran out: nobody holds it
            ids[5]: ("b", expired),
            ids[6]: ("c", held),  # still leased to c (until it runs out): not swept yet
        },
    )
    policy = RetentionPolicy(observation_count=1, floor=0)

    def swept(owner: str | None) -> set[int]:
        leases = None if owner is None else Leases(sessions, owner, lease_seconds=30.0)
        return {state.id for state in Retention(sessions, policy, leases).sweep(now)}

    a, b = swept("a"), swept("b")
    assert {ids[0], ids[1]} <= a and ids[2] in b
    assert not a & b  # no twin swept twice
    assert a | b == set(ids[:6])  # every twin nobody holds is swept by one of them
    assert swept(None) == set(ids)  # without leases (tests, the CLI): every twin
    with sessions.begin() as session:  # b stops: a alone covers every twin not held by others
        session.execute(update(t.Worker).where(t.Worker.name == "b").values(heartbeat_at=0))
    assert swept("a") == set(ids[:2]) | {ids[3], ids[4], ids[5]}


def test_drift_events_go_with_their_observation_once_older_than_the_drifting_span(
    client, make_twin, post, learn, sessions
):
    twin = make_twin()["id"]
    post(twin, thermal_rows(300))
    learn(twin)
    now = time.time()
    event = {"twin_id": twin, "output": "T", "detector": "cusum", "statistic": 9.0}
    with sessions.begin() as session:
        session.execute(
            insert(t.DriftEvent),
            [
                {**event, "seq": 10, "ts": 1_010.0, "created_at": now - 7_200},  # goes
                {**event, "seq": 11, "ts": 1_011.0, "created_at": now - 600},  # last hour: stays
                {**event, "seq": 290, "ts": 1_290.0, "created_at": now - 7_200},  # row kept
            ],
        )
    retention = Retention(sessions, RetentionPolicy(observation_count=100, floor=0))
    retention.run(now=now)
    assert retention.removed["drift_events"] == 1
    with sessions() as session:
        seqs = session.scalars(select(t.DriftEvent.seq).where(t.DriftEvent.twin_id == twin))
        assert sorted(seqs) == [11, 290]
    listed = client.get("/twins", params={"drifting": "true"}).json()
    assert [row["id"] for row in listed] == [twin]  # the drifting filter reads as before
    assert retention.sweep(now) == []
