"""Group commit of posts (app.services.commits): posts that queue while one commits share a
transaction, each answered after it; a post with nobody to share with commits alone in its own
thread; one post's refusal or failure is its own either way."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import tables as t
from app.config import Settings
from app.errors import NotFound
from app.main import create_app
from app.services import ingestion
from app.services.commits import GroupCommit
from tests.app.conftest import SPEC
from tests.app.test_ingestion import row, stored
from tests.client.conftest import serving


@pytest.fixture
def client(database_url):
    """The app with group commit on, on both databases (PostgreSQL's default is off)."""
    settings = Settings(database_url=database_url, worker=False, run_migrations=True)
    with TestClient(create_app(settings.model_copy(update={"group_commit": True}))) as client:
        yield client


def checked(ts: list[float]) -> list[ingestion.Row]:
    return ingestion.check_rows([row(s) for s in ts], ["heat", "ambient"], ["T"])


def held(commits: GroupCommit) -> threading.Event:
    """Keep the committer busy until the returned event is set, so that what is submitted
    meanwhile queues up for one group."""
    gate, started = threading.Event(), threading.Event()

    def wait(_session) -> None:
        started.set()
        assert gate.wait(30)

    commits.submit(wait, 0)
    assert started.wait(30)
    return gate


def test_queued_posts_share_one_commit_and_a_refused_one_is_its_own(make_twin, sessions, client):
    commits = client.app.state.commits
    a, b, gone = (make_twin(name)["id"] for name in ("a", "b", "gone"))
    assert client.delete(f"/twins/{gone}").status_code == 204
    gate = held(commits)
    groups = commits.groups
    futures = [
        commits.submit(lambda s: ingestion.store(s, a, checked([1.0, 2.0])), 2, a),
        commits.submit(lambda s: ingestion.store(s, gone, checked([1.0])), 1, gone),
        commits.submit(lambda s: ingestion.store(s, b, checked([5.0])), 1, b),
        commits.submit(lambda s: ingestion.store(s, a, checked([2.0, 3.0])), 2, a),
    ]
    gate.set()
    first, refused, other, second = (f.exception(30) or f.result() for f in futures)
    assert isinstance(refused, NotFound)
    assert (first.first_seq, first.last_seq, first.duplicates) == (1, 2, 0)
    assert (second.first_seq, second.last_seq, second.duplicates) == (3, 3, 1)  # 2.0 is stored
    assert other.accepted == 1
    assert commits.groups == groups + 1 + 1  # the held one, then the three in one transaction
    assert [(r.seq, r.ts) for r in stored(sessions, a)] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert stored(sessions, gone) == []


def test_a_post_that_fails_midway_is_rolled_back_alone(make_twin, sessions, client):
    commits = client.app.state.commits
    a, b = make_twin("a")["id"], make_twin("b")["id"]

    def broken(session):
        ingestion.store(session, b, checked([7.0, 8.0]))  # written, then the post fails
        raise RuntimeError("boom")

    gate = held(commits)
    futures = [
        commits.submit(lambda s: ingestion.store(s, a, checked([1.0])), 1, a),
        commits.submit(broken, 2, b),
        commits.submit(lambda s: ingestion.store(s, b, checked([9.0])), 1, b),
    ]
    gate.set()
    assert isinstance(futures[1].exception(30), RuntimeError)
    assert futures[0].result(30).last_seq == 1 and futures[2].result(30).first_seq == 1
    assert [r.ts for r in stored(sessions, a)] == [1.0]
    assert [(r.seq, r.ts) for r in stored(sessions, b)] == [(1, 9.0)]  # nothing of the culprit


def test_a_lone_post_commits_in_its_own_thread_and_its_refusal_or_failure_is_its_own(
    make_twin, sessions, client
):
    commits = client.app.state.commits
    a, b, gone = (make_twin(name)["id"] for name in ("a", "b", "gone"))
    assert client.delete(f"/twins/{gone}").status_code == 204
    groups, alone = commits.groups, commits.posts_alone
    threads = []

    def write(session):
        threads.append(threading.current_thread())
        return ingestion.store(session, a, checked([1.0, 2.0]))

    done = commits.alone(write, 2, a)
    assert done.done() and threads == [threading.current_thread()]  # not the committer's
    assert (done.result().first_seq, done.result().last_seq) == (1, 2)
    assert [r.ts for r in stored(sessions, a)] == [1.0, 2.0]  # committed when answered
    refused = commits.alone(lambda s: ingestion.store(s, gone, checked([1.0])), 1, gone)
    assert isinstance(refused.exception(0), NotFound) and stored(sessions, gone) == []

    def broken(session):
        ingestion.store(session, b, checked([7.0, 8.0]))  # written, then the post fails
        raise RuntimeError("boom")

    assert isinstance(commits.alone(broken, 2, b).exception(0), RuntimeError)
    after = commits.alone(lambda s: ingestion.store(s, b, checked([9.0])), 1, b)
    assert after.result(0).first_seq == 1  # nothing of the culprit
    assert [(r.seq, r.ts) for r in stored(sessions, b)] == [(1, 9.0)]
    assert (commits.groups, commits.posts_alone) == (groups + 2, alone + 2)

    gate = held(commits)  # the committer writes: a post does not commit beside it
    assert commits.alone(lambda s: ingestion.store(s, b, checked([10.0])), 1, b) is None
    gate.set()
    assert [r.ts for r in stored(sessions, b)] == [9.0]


def test_posts_over_http_commit_alone_when_idle_and_a_bad_body_never_writes(make_twin, client):
    commits = client.app.state.commits
    twin_id = make_twin()["id"]
    groups, alone = commits.groups, commits.posts_alone
    for k in range(3):
        body = {"observations": [row(float(k))]}
        response = client.post(f"/twins/{twin_id}/observations", json=body)
        assert response.status_code == 202 and response.json()["first_seq"] == k + 1
    gateway = [{"twin_id": twin_id, **row(3.0)}]
    assert client.post("/observations", json={"observations": gateway}).status_code == 202
    bad = {"observations": [{**row(4.0), "outputs": {"T": "hot"}}]}
    assert client.post(f"/twins/{twin_id}/observations", json=bad).status_code == 422
    assert (commits.groups, commits.posts_alone) == (groups + 4, alone + 4)


def test_posts_that_come_while_one_commits_alone_wait_and_share_the_next_commit(
    database_url, monkeypatch
):
    """A post commits alone, stopped in its write: 64 concurrent posts meanwhile are checked
    through a pool of one connection (neither the lone post nor a waiting one holds it), wait
    without writing, and share one commit after it; every post is answered 202 after that."""
    settings = Settings(
        database_url=database_url, worker=False, run_migrations=True, group_commit=True
    )
    settings = settings.model_copy(update={"pool_size": 1, "pool_overflow": 0})
    gate, started = threading.Event(), threading.Event()
    store = ingestion.store

    def slow_store(session, twin_id, rows, now=None):
        if rows[0][0] == 0.5:  # the lone post's one row: wait in its write
            started.set()
            assert gate.wait(30)
        return store(session, twin_id, rows, now)

    monkeypatch.setattr(ingestion, "store", slow_store)
    with serving(create_app(settings)) as app:
        commits, n = app.state.commits, 64
        with httpx.Client(base_url=app.url, timeout=60) as http:
            ids = [http.post("/twins", json={"name": f"t{k}", **SPEC}).json()["id"] for k in "ab"]
        groups, alone = commits.groups, commits.posts_alone

        def send(k: int) -> httpx.Response:
            rows = [row(0.5)] if k < 0 else [row(float(2 * k)), row(float(2 * k + 1))]
            with httpx.Client(base_url=app.url, timeout=60) as http:
                return http.post(f"/twins/{ids[k % 2]}/observations", json={"observations": rows})

        with ThreadPoolExecutor(n + 1) as pool:
            lone = pool.submit(send, -1)
            assert started.wait(30)
            answers = [pool.submit(send, k) for k in range(n)]
            deadline = time.monotonic() + 30
            while commits.waiting < n:
                assert time.monotonic() < deadline, f"{commits.waiting} of {n} posts queued"
                assert not any(answer.done() for answer in answers), "answered before the commit"
                time.sleep(0.01)
            assert commits.groups == groups and not lone.done()
            gate.set()
            statuses = [answer.result().status_code for answer in answers]
        assert lone.result().status_code == 202 and statuses == [202] * n
        assert (commits.groups, commits.posts_alone) == (groups + 2, alone + 1)
        # the lone post (twin b, 0.5) first: the queued posts' seqs come after its own
        assert lone.result().json()["first_seq"] == 1
        for twin_id, lone_rows in zip(ids, (0, 1), strict=True):
            got = stored(app.state.sessions, twin_id)  # half of the posts each, two rows each
            assert [r.seq for r in got] == list(range(1, n + lone_rows + 1))


@pytest.fixture
def server(database_url):
    """The app, group commit on, served by uvicorn on a free port (real HTTP)."""
    settings = Settings(database_url=database_url, worker=False, run_migrations=True)
    app = create_app(settings.model_copy(update={"group_commit": True}))
    with serving(app) as served:
        yield served


def test_concurrent_posts_over_http_are_isolated_and_all_stored(server):
    """Many concurrent posts (per twin and gateway) while one is invalid and one names a
    deleted twin: those two are refused alone, every other one is stored, seqs gap-free."""
    n_twins, n_posts, size = 4, 12, 5
    with httpx.Client(base_url=server.url, timeout=30) as http:
        ids = [http.post("/twins", json={"name": f"t{k}", **SPEC}).json()["id"] for k in range(5)]
        assert http.delete(f"/twins/{ids[-1]}").status_code == 204

    def send(k: int) -> tuple[int, int, dict]:
        twin_id = ids[k % n_twins]
        rows = [row(float(k * size + i)) for i in range(size)]
        with httpx.Client(base_url=server.url, timeout=30) as http:
            if k == 5:
                rows[2]["outputs"]["T"] = "hot"
            if k == 7:
                twin_id = ids[-1]
            if k % 3 == 0:
                body = [{"twin_id": twin_id, **r} for r in rows]
                response = http.post("/observations", json={"observations": body})
            else:
                response = http.post(f"/twins/{twin_id}/observations", json={"observations": rows})
            return k, response.status_code, response.json()

    with ThreadPoolExecutor(n_posts) as pool:
        answers = list(pool.map(send, range(n_twins * n_posts)))
    statuses = {k: status for k, status, _ in answers}
    assert statuses.pop(5) == 422 and statuses.pop(7) == 404
    assert set(statuses.values()) == {202}
    for twin_id in ids[:-1]:
        want = sorted(
            float(k * size + i)
            for k in statuses
            if ids[k % n_twins] == twin_id
            for i in range(size)
        )
        got = stored(server.state.sessions, twin_id)
        assert [r.seq for r in got] == list(range(1, len(want) + 1))
        assert sorted(r.ts for r in got) == want
    with server.state.sessions() as session:
        gone = select(t.Observation.seq).where(t.Observation.twin_id == ids[-1])
        assert session.execute(gone).all() == []
