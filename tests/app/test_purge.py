"""Deleting a twin marks it at once; its rows are purged afterwards in small transactions."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, insert, select, update

from app import tables as t
from app.config import Settings
from app.main import create_app
from app.purge import purge
from tests.app.conftest import SPEC

BATCH = 50


@pytest.fixture
def client(database_url):
    settings = Settings(
        database_url=database_url,
        worker=False,
        run_migrations=True,
        purge_batch=BATCH,
        purge_pause=0.0,
        purge_interval=3600.0,  # only a delete wakes the purger
    )
    with TestClient(create_app(settings)) as client:
        yield client


def add_rows(sessions, twin_id: int, n: int) -> None:
    """n observations with predictions, and a few versions and drift events, written directly."""
    with sessions.begin() as session:
        session.execute(
            insert(t.Observation),
            [
                {
                    "twin_id": twin_id,
                    "seq": s,
                    "ts": float(s),
                    "inputs": [1.0, 2.0],
                    "outputs": [3.0],
                    "received_at": 0.0,
                }
                for s in range(1, n + 1)
            ],
        )
        session.execute(
            insert(t.Prediction),
            [
                {"twin_id": twin_id, "seq": s, "version": 1, "prediction": [3.0], "residual": [0.0]}
                for s in range(1, n + 1)
            ],
        )
        session.execute(
            insert(t.DriftEvent),
            [
                {
                    "twin_id": twin_id,
                    "seq": s,
                    "ts": float(s),
                    "output": "T",
                    "detector": "adwin",
                    "statistic": 1.0,
                    "created_at": 0.0,
                }
                for s in range(1, 8)
            ],
        )
        session.execute(update(t.Twin).where(t.Twin.id == twin_id).values(last_seq=n))


def rows_of(sessions, twin_id: int) -> int:
    with sessions() as session:
        return sum(
            session.scalar(select(func.count()).select_from(table).where(table.twin_id == twin_id))
            for table in (t.Observation, t.Prediction, t.SeriesBlock, t.DriftEvent, t.Version)
        )


def test_delete_marks_the_twin_at_once_and_purges_its_rows_in_small_transactions(client):
    sessions = client.app.state.sessions
    twin_id = client.post("/twins", json={"name": "hx", **SPEC}).json()["id"]
    keep_id = client.post("/twins", json={"name": "other", **SPEC}).json()["id"]
    add_rows(sessions, twin_id, 600)
    add_rows(sessions, keep_id, 10)
    deletes: list[int] = []

    def count(conn, cursor, statement, *_):
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(cursor.rowcount)

    engine = client.app.state.engine
    event.listen(engine, "after_cursor_execute", count)
    try:
        assert client.delete(f"/twins/{twin_id}").status_code == 204
        # gone for every reader at once, and its name is free again
        assert client.get(f"/twins/{twin_id}").status_code == 404
        assert client.get(f"/twins/{twin_id}/observations").status_code == 404
        assert [tw["id"] for tw in client.get("/twins").json()] == [keep_id]
        again = client.post("/twins", json={"name": "hx", **SPEC})
        assert again.status_code == 201 and again.json()["id"] != twin_id
        deadline = time.monotonic() + 30
        while rows_of(sessions, twin_id) or _twin_row(sessions, twin_id):
            assert time.monotonic() < deadline, "the purge did not finish"
            time.sleep(0.05)
    finally:
        event.remove(engine, "after_cursor_execute", count)
    assert max(deletes) <= BATCH  # no transaction deleted more than a batch
    assert len(deletes) >= 2 * 600 // BATCH
    assert rows_of(sessions, keep_id) == 10 + 10 + 7 + 1  # the other twin keeps every row


def test_the_purge_waits_while_a_worker_holds_the_twin(client):
    sessions = client.app.state.sessions
    client.app.state.purger.stop()  # purge by hand here
    twin_id = client.post("/twins", json={"name": "hx", **SPEC}).json()["id"]
    add_rows(sessions, twin_id, 20)
    with sessions.begin() as session:
        session.execute(
            update(t.Twin)
            .where(t.Twin.id == twin_id)
            .values(lease_owner="worker-1", lease_expires_at=time.time() + 60)
        )
    assert client.delete(f"/twins/{twin_id}").status_code == 204
    assert purge(sessions, BATCH) == 0
    with sessions.begin() as session:
        session.execute(update(t.Twin).where(t.Twin.id == twin_id).values(lease_expires_at=0.0))
    assert purge(sessions, BATCH) == 20 + 20 + 7 + 1 + 1
    assert rows_of(sessions, twin_id) == 0 and not _twin_row(sessions, twin_id)


def _twin_row(sessions, twin_id: int) -> bool:
    with sessions() as session:
        return session.get(t.Twin, twin_id) is not None


def test_the_calibrator_leaves_a_deleted_twin_alone(client):
    from app.calibrator import Calibrator

    sessions = client.app.state.sessions
    client.app.state.purger.stop()  # the rows stay, as while a purge is under way
    twin_id = client.post("/twins", json={"name": "hx", **SPEC}).json()["id"]
    add_rows(sessions, twin_id, 20)
    worker = Calibrator(sessions)
    assert worker._pending()
    assert client.delete(f"/twins/{twin_id}").status_code == 204
    assert not worker._pending() and worker.run_once() == 0
