"""`POST /observations`: rows for many twins in one body, all or nothing, per-twin rules."""

from __future__ import annotations

import threading

import httpx
import orjson
import pytest
from sqlalchemy import select

from app import tables as t
from app.config import Settings
from app.main import create_app
from tests.app.test_auth import Keys, bearer
from tests.app.test_ingestion import row, stored
from tests.client.conftest import serving

ARX = {"kind": "arx"}


def parts(answer: dict) -> dict:
    """The per-twin answers, in the fields of the per-twin route's answer they share."""
    keys = ("accepted", "duplicates", "first_seq", "last_seq")
    return {twin: {k: part[k] for k in keys} for twin, part in answer["twins"].items()}


def gw(twin, ts, T=21.0, **extra):
    return {**({"twin": twin} if isinstance(twin, str) else {"twin_id": twin}), **row(ts, T=T)}


def test_rows_for_many_twins_are_stored_per_twin_with_their_own_seqs(make_twin, client, sessions):
    a, b = make_twin("a")["id"], make_twin("b")["id"]
    body = [gw(a, 1.0), gw("b", 5.0), gw(a, 2.0), gw(b, 6.0), gw(a, 1.0)]  # the last: a retry
    response = client.post("/observations", json={"observations": body})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["accepted"], answer["duplicates"]) == (4, 1)
    assert parts(answer) == {
        str(a): {"accepted": 2, "duplicates": 1, "first_seq": 1, "last_seq": 2},
        str(b): {"accepted": 2, "duplicates": 0, "first_seq": 1, "last_seq": 2},
    }
    again = client.post("/observations", json={"observations": [gw(b, 6.0), gw(b, 7.0)]})
    assert parts(again.json()) == {
        str(b): {"accepted": 1, "duplicates": 1, "first_seq": 3, "last_seq": 3}
    }
    assert [(r.seq, r.ts) for r in stored(sessions, a)] == [(1, 1.0), (2, 2.0)]
    assert [(r.seq, r.ts) for r in stored(sessions, b)] == [(1, 5.0), (2, 6.0), (3, 7.0)]
    assert client.get(f"/twins/{b}").json()["last_seq"] == 3


def test_ndjson_and_csv_bodies_name_twins_per_row(make_twin, client, sessions):
    a, b = make_twin("a")["id"], make_twin("b", inputs=["heat"], outputs=["T", "flow"], model=ARX)
    ndjson = b"\n".join(orjson.dumps(r) for r in [gw(a, 1.0), gw("a", 2.0)])
    response = client.post(
        "/observations", content=ndjson, headers={"content-type": "application/x-ndjson"}
    )
    assert response.status_code == 202 and response.json()["accepted"] == 2, response.text
    csv_body = f"twin,ts,heat,ambient,T,flow\na,3,1,20,21,\nb,3,2,,22,0.5\n{a},9,1,20,21,\n"
    bad = client.post("/observations", content=csv_body, headers={"content-type": "text/csv"})
    assert bad.status_code == 422  # the third row names a twin by its id under `twin`
    assert bad.json()["errors"][0] | {"message": None} == {
        "index": 2,
        "twin": str(a),
        "field": "twin",
        "message": None,
    }
    csv_body = f"twin_id,ts,heat,ambient,T,flow\n{a},3,1,20,21,\n{b['id']},3,2,,22,0.5\n"
    response = client.post("/observations", content=csv_body, headers={"content-type": "text/csv"})
    assert response.status_code == 202, response.text
    assert [r.outputs for r in stored(sessions, b["id"])] == [[22.0, 0.5]]
    assert [r.inputs for r in stored(sessions, a)][-1] == [1.0, 20.0]


def test_one_bad_row_refuses_the_whole_body_naming_its_index_and_twin(make_twin, client, sessions):
    a, b = make_twin("a")["id"], make_twin("b")["id"]
    deleted = make_twin("gone")["id"]
    assert client.delete(f"/twins/{deleted}").status_code == 204
    body = [
        gw(a, 1.0),
        {**gw(b, 2.0), "outputs": {"T": "hot"}},
        gw("nobody", 3.0),
        gw(deleted, 4.0),
        row(5.0),
        {**gw(a, 6.0), "twin": "a"},
    ]
    response = client.post("/observations", json={"observations": body})
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [(e["index"], e["twin"], e["field"]) for e in errors] == [
        (1, b, "outputs.T"),
        (2, "nobody", "twin"),
        (3, deleted, "twin_id"),
        (4, None, "twin_id"),
        (5, a, "twin"),
    ]
    assert "unknown twin" in errors[1]["message"] and "string" in errors[0]["message"]
    assert stored(sessions, a) == [] and stored(sessions, b) == []


def test_late_rows_are_stored_and_a_ts_outside_the_window_refuses_the_body(
    make_twin, client, sessions
):
    a, b = make_twin("a")["id"], make_twin("b")["id"]
    assert client.post("/observations", json={"observations": [gw(b, 10.0)]}).status_code == 202
    late = client.post("/observations", json={"observations": [gw(a, 1.0), gw(b, 5.0)]})
    assert late.status_code == 202, late.text
    assert late.json()["twins"][str(b)]["accepted"] == 1
    assert late.json()["twins"][str(b)]["late"] == 1
    assert [r.ts for r in stored(sessions, b)] == [10.0, 5.0]
    ahead = client.post("/observations", json={"observations": [gw(a, 2.0), gw(b, 1e308)]})
    assert ahead.status_code == 422
    error = ahead.json()["errors"][0]
    assert (error["index"], error["twin"], error["field"]) == (1, b, "ts")
    assert [r.ts for r in stored(sessions, a)] == [1.0]


def test_limits_are_the_per_twin_routes(make_twin, client):
    a = make_twin("a")["id"]
    limit = client.app.state.settings.max_batch_rows
    body = {"observations": [gw(a, float(k)) for k in range(limit + 1)]}
    assert client.post("/observations", json=body).status_code == 413
    refused = client.post("/observations", content=b"x", headers={"content-type": "text/xml"})
    assert refused.status_code == 415
    assert client.post("/observations", json=[gw(a, 1.0)]).status_code == 422


def test_a_twin_limited_key_may_post_only_rows_of_its_twins(client, sessions):
    keys = Keys(client)
    mine, other = keys.twin("mine"), keys.twin("other")
    key = bearer(keys.make(["ingest"], "gateway", twins=[mine])["key"])
    ok = client.post("/observations", json={"observations": [gw(mine, 1.0)]}, headers=key)
    assert ok.status_code == 202, ok.text
    for ref in (other, "other", 99_999):
        body = {"observations": [gw("mine", 2.0), gw(ref, 2.0)]}
        refused = client.post("/observations", json=body, headers=key)
        assert refused.status_code == 403, ref
        assert str(other if ref != 99_999 else ref) in refused.json()["detail"]
    assert len(stored(sessions, mine)) == 1 and stored(sessions, other) == []


@pytest.fixture
def server(database_url):
    """The app served by uvicorn on a free port (real HTTP)."""
    app = create_app(Settings(database_url=database_url, worker=False, run_migrations=True))
    with serving(app) as served:
        yield served


def test_gateway_and_per_twin_posts_racing_over_http_keep_seqs_gap_free(server):
    """Gateway bodies (rows for both twins) and per-twin batches race, each retried by several
    clients: every ts is stored once per twin and seqs have no gaps."""
    from tests.app.conftest import SPEC

    with httpx.Client(base_url=server.url, timeout=30) as http:
        ids = [http.post("/twins", json={"name": n, **SPEC}).json()["id"] for n in ("a", "b")]
    n_batches, size, failures = 12, 20, []

    def client(kind: str) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for k in range(n_batches):
                    ts = [float(k * size + i) for i in range(size)]
                    if kind == "gateway":
                        body = [gw(ids[i % 2], s) for s in ts for i in (0, 1)]
                        response = http.post("/observations", json={"observations": body})
                    else:
                        rows = [row(s) for s in ts]
                        url = f"/twins/{ids[0]}/observations"
                        response = http.post(url, json={"observations": rows})
                    assert response.status_code == 202, response.text
        except Exception as e:  # pragma: no cover - reported below
            failures.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in ("gateway", "twin") * 2]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    with server.state.sessions() as session:
        for twin_id in ids:
            rows = session.execute(
                select(t.Observation.seq, t.Observation.ts)
                .where(t.Observation.twin_id == twin_id)
                .order_by(t.Observation.seq)
            ).all()
            n = n_batches * size
            assert [r.seq for r in rows] == list(range(1, n + 1))
            assert sorted(r.ts for r in rows) == [float(k) for k in range(n)]
