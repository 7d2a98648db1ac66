"""Sticky leases: workers sharing one database each keep a stable share of the twins, a joining
worker gets its share, and a dead worker's twins are taken over once its leases run out."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, update

from app import tables as t
from app.calibrator import Calibrator, CalibratorConfig
from app.config import Settings
from app.main import create_app
from tests.app.conftest import SPEC, thermal_rows

TWINS = 6


def fleet(make_twin, post, n=TWINS) -> list[int]:
    ids = [make_twin(f"hx-{i}")["id"] for i in range(n)]
    for twin_id in ids:
        post(twin_id, thermal_rows(16))
    return ids


def feed(post, ids, round_: int) -> None:
    for twin_id in ids:
        post(twin_id, thermal_rows(16, start=1_000.0 + 16 * round_))


def owners(sessions) -> dict[int, str | None]:
    with sessions() as session:
        return dict(session.execute(select(t.Twin.id, t.Twin.lease_owner)).all())


def learned(sessions) -> dict[int, int]:
    """Each twin's newest watermark."""
    with sessions() as session:
        query = select(t.Version.twin_id, func.max(t.Version.watermark)).group_by(t.Version.twin_id)
        return dict(session.execute(query).all())


def worker(sessions, name: str, lease: float = 30.0) -> Calibrator:
    config = CalibratorConfig(claim_limit=TWINS, lease_seconds=lease, budget_seconds=None)
    return Calibrator(sessions, config, owner=name)


def until_idle(*workers: Calibrator) -> None:
    """Passes of every worker in turn until a round learns nothing."""
    for _ in range(20):
        if sum(w.run_once() for w in workers) == 0:
            return
    raise AssertionError("the workers never went idle")


def test_two_workers_split_the_twins_and_keep_their_shares(client, make_twin, post, sessions):
    ids = fleet(make_twin, post)
    a, b = worker(sessions, "a"), worker(sessions, "b")
    for w in (a, b, a):  # both registered, and each has seen the other, before either claims
        w.leases.refresh(force=True)
    until_idle(a, b)
    first = owners(sessions)
    assert sorted(first.values()) == ["a"] * 3 + ["b"] * 3  # a fair share each
    assert learned(sessions) == {i: 16 for i in ids}
    for round_ in (1, 2):
        feed(post, ids, round_)
        until_idle(b, a)  # whoever polls first, each twin goes back to its worker
        assert owners(sessions) == first
    assert learned(sessions) == {i: 48 for i in ids}


def test_a_joining_worker_gets_its_share_from_the_others(client, make_twin, post, sessions):
    ids = fleet(make_twin, post)
    a = worker(sessions, "a")
    until_idle(a)
    assert set(owners(sessions).values()) == {"a"}  # alone, it holds every twin
    b = worker(sessions, "b")
    b.leases.refresh(force=True)  # b joins
    a.leases.refresh(force=True)  # a sees it and releases its excess
    assert a.leases.share == 3 and a.leases.held == 3
    feed(post, ids, 1)
    until_idle(a, b)
    assert sorted(owners(sessions).values()) == ["a"] * 3 + ["b"] * 3
    assert learned(sessions) == {i: 32 for i in ids}


def test_a_dead_workers_twins_are_taken_over_within_the_lease_time(
    client, make_twin, post, sessions
):
    ids = fleet(make_twin, post)
    lease = 3.0
    a, b = worker(sessions, "a", lease), worker(sessions, "b", lease)
    for w in (a, b, a):
        w.leases.refresh(force=True)
    until_idle(a, b)
    dead = [i for i, owner in owners(sessions).items() if owner == "a"]
    assert len(dead) == 3
    died = time.monotonic()  # a stops: no release, no more heartbeats or renewals
    feed(post, ids, 1)
    b.run_once()
    assert learned(sessions) == {i: 16 if i in dead else 32 for i in ids}  # a's are still a's
    deadline = died + lease + 2.0
    while learned(sessions) != {i: 32 for i in ids}:
        assert time.monotonic() < deadline, "b never took over a's twins"
        b.run_once()
        time.sleep(0.05)
    assert set(owners(sessions).values()) == {"b"}


def test_two_workers_that_read_the_same_free_twins_lease_each_to_one(
    client, make_twin, post, sessions
):
    """SQLite has no row locks: two workers may both read the same free twins as claimable.
    The second UPDATE finds them taken, and that worker claims none of them."""
    ids = fleet(make_twin, post, n=4)
    a, b = worker(sessions, "a"), worker(sessions, "b")
    for w in (a, b):
        w.leases.refresh(force=True)
    now = time.time()
    with sessions.begin() as session:
        assert a.leases.take(session, ids[:3], now) == set(ids[:3])
    with sessions.begin() as session:  # b read before a's commit: it offers all four
        assert b.leases.take(session, ids, now) == {ids[3]}
    assert owners(sessions) == {ids[0]: "a", ids[1]: "a", ids[2]: "a", ids[3]: "b"}
    with sessions.begin() as session:  # a worker's own twins stay its own
        assert a.leases.take(session, ids, now) == set(ids[:3])


def test_claiming_the_twins_a_worker_holds_writes_nothing(client, make_twin, post, sessions):
    """Sticky leases in their steady state: the claim of twins whose leases the worker holds
    for long enough yet reads only (on SQLite it takes no turn at the one writer); a lease
    near its end is renewed by the claim."""
    ids = fleet(make_twin, post, n=3)
    a = worker(sessions, "a")
    until_idle(a)
    feed(post, ids, 1)
    a.leases.refresh = lambda force=False: None  # its heartbeat's writes are not the claim's
    statements: list[str] = []
    engine = sessions.kw["bind"]

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert sorted(c.twin_id for c in a._claim()) == sorted(ids)
        assert not [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
        with sessions.begin() as session:  # one lease near its end
            session.execute(
                update(t.Twin).where(t.Twin.id == ids[0]).values(lease_expires_at=time.time() + 1)
            )
        statements.clear()
        assert sorted(c.twin_id for c in a._claim()) == sorted(ids)
        assert len([s for s in statements if s.lstrip().upper().startswith("UPDATE")]) == 1
    finally:
        event.remove(engine, "before_cursor_execute", record)
    with sessions() as session:
        assert session.get(t.Twin, ids[0]).lease_expires_at > time.time() + 20


def test_a_stopping_worker_leaves_its_twins_and_its_place(client, make_twin, post, sessions):
    fleet(make_twin, post, n=2)
    a = worker(sessions, "a")
    until_idle(a)
    a.leases.release()
    assert set(owners(sessions).values()) == {None}
    with sessions() as session:
        assert session.scalars(select(t.Worker.name)).all() == []


@pytest.mark.slow
@pytest.mark.postgres
def test_two_worker_processes_share_postgres_and_survive_a_kill(postgres_url):
    """Two real `tandem worker` processes: both get a share; one is killed with SIGKILL and
    the other takes its twins over within the lease time; no observation is learned twice."""
    lease = 4.0
    env = {**os.environ, "TANDEM_DATABASE_URL": postgres_url, "TANDEM_LEASE_SECONDS": str(lease)}
    env["TANDEM_POLL_INTERVAL"] = "0.05"
    settings = Settings(database_url=postgres_url, worker=False, run_migrations=True)
    with TestClient(create_app(settings)) as client:
        sessions = client.app.state.sessions
        command = [sys.executable, "-c", "from app.cli import main; main()", "worker"]
        workers = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) for _ in range(2)]
        try:
            wait_for(lambda: registered(sessions) == 2, 120, "both workers registered")
            time.sleep(1.5)  # each has seen the other
            ids = [_create(client, f"hx-{i}") for i in range(8)]
            for twin_id in ids:
                _post(client, twin_id, thermal_rows(16))
            wait_for(lambda: learned(sessions) == {i: 16 for i in ids}, 60, "learned")
            held = owners(sessions)
            assert sorted(Counter(held.values()).values()) == [4, 4]  # a fair share each

            victim = workers[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed = time.monotonic()
            for twin_id in ids:
                _post(client, twin_id, thermal_rows(16, start=1_016.0))
            survivor = (set(held.values()) - {_owner_of(sessions, victim.pid)}).pop()
            wait_for(lambda: set(owners(sessions).values()) == {survivor}, lease + 3, "takeover")
            assert time.monotonic() - killed < lease + 3
            wait_for(lambda: learned(sessions) == {i: 32 for i in ids}, 60, "learned after")
            with sessions() as session:
                for twin_id in ids:
                    versions = session.execute(
                        select(t.Version.number, t.Version.watermark, t.Version.metrics)
                        .where(t.Version.twin_id == twin_id)
                        .order_by(t.Version.number)
                    ).all()
                    assert [v[0] for v in versions] == list(range(len(versions)))
                    marks = [v[1] for v in versions]
                    assert marks == sorted(set(marks)) and marks[-1] == 32
                    assert sum(v[2].get("observations", 0) for v in versions[1:]) == 32
            workers[1].send_signal(signal.SIGTERM)
            assert workers[1].wait(timeout=30) == 0
        finally:
            for process in workers:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def registered(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(t.Worker))


def _owner_of(sessions, pid: int) -> str:
    with sessions() as session:
        names = session.scalars(select(t.Worker.name)).all()
    (name,) = [n for n in names if f":{pid}:" in n]
    return name


def _create(client, name: str) -> int:
    response = client.post("/twins", json={"name": name, **SPEC})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _post(client, twin_id: int, rows) -> None:
    response = client.post(f"/twins/{twin_id}/observations", json={"observations": rows})
    assert response.status_code == 202, response.text


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.1)


def test_a_deleted_twin_is_not_renewed_so_that_the_purge_can_take_it(
    client, make_twin, post, sessions
):
    keep, gone = fleet(make_twin, post, n=2)
    a = worker(sessions, "a")
    until_idle(a)
    assert client.delete(f"/twins/{gone}").status_code == 204
    a.leases.refresh(force=True)  # renews its leases
    assert owners(sessions) == {keep: "a", gone: None}
    assert a.leases.held == 1
