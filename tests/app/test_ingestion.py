"""Posting observations: all-or-nothing batches, gap-free seqs, safe retries, limits."""

import threading

import orjson
import pytest
from sqlalchemy import select

from app import tables as t
from app.config import Settings
from app.errors import Invalid
from app.main import create_app
from app.services import ingestion
from tests.app.conftest import thermal_rows


def stored(sessions, twin_id):
    with sessions() as session:
        return session.execute(
            select(t.Observation.seq, t.Observation.ts, t.Observation.inputs, t.Observation.outputs)
            .where(t.Observation.twin_id == twin_id)
            .order_by(t.Observation.seq)
        ).all()


def row(ts, heat=1.0, ambient=20.0, T=21.0):
    return {"ts": ts, "inputs": {"heat": heat, "ambient": ambient}, "outputs": {"T": T}}


def test_batch_is_stored_with_gap_free_seqs(make_twin, post, sessions, client):
    twin = make_twin()
    first = post(twin["id"], thermal_rows(10))
    second = post(twin["id"], thermal_rows(5, start=5_000.0))
    assert first == {"accepted": 10, "duplicates": 0, "late": 0, "first_seq": 1, "last_seq": 10}
    assert second == {"accepted": 5, "duplicates": 0, "late": 0, "first_seq": 11, "last_seq": 15}
    rows = stored(sessions, twin["id"])
    assert [r.seq for r in rows] == list(range(1, 16))
    assert rows[0].inputs == [thermal_rows(1)[0]["inputs"]["heat"], 20.0]  # spec channel order
    status = client.get(f"/twins/{twin['id']}").json()
    assert status["last_seq"] == 15 and status["last_ts"] == 5_004.0


def test_retried_batch_counts_duplicates_and_stores_nothing(make_twin, post, sessions):
    twin = make_twin()
    rows = thermal_rows(20)
    post(twin["id"], rows)
    again = post(twin["id"], rows)
    assert again == {
        "accepted": 0,
        "duplicates": 20,
        "late": 0,
        "first_seq": None,
        "last_seq": None,
    }
    assert len(stored(sessions, twin["id"])) == 20


def test_partly_new_batch_stores_only_the_new_rows(make_twin, post, sessions):
    twin = make_twin()
    rows = thermal_rows(30)
    post(twin["id"], rows[:20])
    result = post(twin["id"], rows[10:])
    assert result == {"accepted": 10, "duplicates": 10, "late": 0, "first_seq": 21, "last_seq": 30}
    assert [r.ts for r in stored(sessions, twin["id"])] == [r["ts"] for r in rows]


def test_repeated_ts_in_one_batch_keeps_the_first(make_twin, post, sessions):
    twin = make_twin()
    result = post(twin["id"], [row(1.0, T=1.0), row(2.0), row(1.0, T=99.0)])
    assert result["accepted"] == 2 and result["duplicates"] == 1
    assert stored(sessions, twin["id"])[0].outputs == [1.0]


def test_rows_are_stored_in_ts_order(make_twin, post, sessions):
    twin = make_twin()
    post(twin["id"], [row(3.0, T=3.0), row(1.0, T=1.0), row(2.0, T=2.0)])
    rows = stored(sessions, twin["id"])
    assert [(r.seq, r.ts, r.outputs[0]) for r in rows] == [
        (1, 1.0, 1.0),
        (2, 2.0, 2.0),
        (3, 3.0, 3.0),
    ]


def test_rfc3339_times_are_epoch_seconds_and_naive_means_utc(make_twin, post, sessions):
    twin = make_twin()
    post(
        twin["id"],
        [
            row("2024-01-01T00:00:00Z"),
            row("2024-01-01T02:00:01+02:00"),
            row("2024-01-01T00:00:02"),
            row("2024-01-01T00:00:03.250Z"),
        ],
    )
    base = 1_704_067_200.0
    assert [r.ts for r in stored(sessions, twin["id"])] == [base, base + 1, base + 2, base + 3.25]


def test_ndjson_batch(client, make_twin, sessions):
    twin = make_twin()
    lines = b"\n".join(orjson.dumps(r) for r in thermal_rows(4)) + b"\n\n"
    response = client.post(
        f"/twins/{twin['id']}/observations",
        content=lines,
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 4
    assert len(stored(sessions, twin["id"])) == 4


def test_ndjson_bad_line_is_named(client, make_twin, sessions):
    twin = make_twin()
    lines = orjson.dumps(row(1.0)) + b"\n" + b'{"ts": 2, "outputs": {"T": NaN}}\n'
    response = client.post(
        f"/twins/{twin['id']}/observations",
        content=lines,
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 422
    body = response.json()
    assert body["errors"][0]["line"] == 2 and body["errors"][0]["index"] == 1
    assert "line 2" in body["detail"]
    assert stored(sessions, twin["id"]) == []


@pytest.mark.parametrize(
    "bad, field, words",
    [
        (
            {"ts": 1, "inputs": {"heat": 1, "ambient": 2, "wind": 3}, "outputs": {"T": 1}},
            "inputs.wind",
            "unknown channel",
        ),
        (
            {"ts": 1, "inputs": {"heat": 1, "ambient": 2}, "outputs": {}},
            "outputs",
            "no output has a value",
        ),
        (
            {"ts": 1, "inputs": {"heat": 1, "ambient": 2}, "outputs": {"T": None}},
            "outputs",
            "no output has a value",
        ),
        (
            {"ts": 1, "inputs": {"heat": 1, "ambient": 2}, "outputs": {"T": "hot"}},
            "outputs.T",
            "a string",
        ),
        (
            {"ts": 1, "inputs": {"heat": True, "ambient": 2}, "outputs": {"T": 1}},
            "inputs.heat",
            "a boolean",
        ),
        (
            {"ts": "yesterday", "inputs": {"heat": 1, "ambient": 2}, "outputs": {"T": 1}},
            "ts",
            "RFC 3339",
        ),
        (
            {"ts": True, "inputs": {"heat": 1, "ambient": 2}, "outputs": {"T": 1}},
            "ts",
            "epoch seconds",
        ),
        ({"inputs": {"heat": 1, "ambient": 2}, "outputs": {"T": 1}}, "ts", "required"),
        ({"ts": 1, "outputs": {"T": 1}}, "inputs", "required"),
        ({"ts": 1, "inputs": [1, 2], "outputs": {"T": 1}}, "inputs", "must be an object"),
        (
            {"ts": 1, "inputs": {"heat": 1, "ambient": 2}, "outputs": {"T": 1}, "extra": 0},
            "extra",
            "unknown field",
        ),
        ([1, 2, 3], None, "must be an object"),
    ],
)
def test_bad_row_rejects_the_whole_batch_naming_index_and_field(
    make_twin, post, sessions, bad, field, words
):
    twin = make_twin()
    body = post(twin["id"], [row(0.5), bad], expect=422)
    assert body["error"] == "invalid"
    assert body["errors"][0]["index"] == 1
    assert body["errors"][0]["field"] == field
    assert words in body["errors"][0]["message"]
    assert stored(sessions, twin["id"]) == []


def test_non_finite_values_are_refused():
    spec_in, spec_out = ["u"], ["y"]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(Invalid) as caught:
            ingestion.check_rows(
                [{"ts": 1.0, "inputs": {"u": bad}, "outputs": {"y": 1}}], spec_in, spec_out
            )
        assert caught.value.errors == [
            {"index": 0, "field": "inputs.u", "message": "must be finite"}
        ]
        with pytest.raises(Invalid) as caught:
            ingestion.check_rows(
                [{"ts": bad, "inputs": {"u": 1}, "outputs": {"y": 1}}], spec_in, spec_out
            )
        assert caught.value.errors[0]["field"] == "ts"


def test_nan_literal_is_not_json(client, make_twin):
    twin = make_twin()
    body = (
        b'{"observations": [{"ts": 1, "inputs": {"heat": NaN, "ambient": 1}, "outputs": {"T": 1}}]}'
    )
    response = client.post(
        f"/twins/{twin['id']}/observations",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]


def test_body_must_hold_an_observations_list(make_twin, client):
    twin = make_twin()
    response = client.post(f"/twins/{twin['id']}/observations", json=[row(1.0)])
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "observations"


def test_at_most_100_errors_are_listed(make_twin, post):
    twin = make_twin()
    body = post(twin["id"], [{"ts": i, "outputs": {}} for i in range(150)], expect=422)
    assert len(body["errors"]) == 100
    assert body["detail"].startswith("150 of 150 observations are invalid")


def test_empty_batch_is_accepted_as_nothing(make_twin, post):
    twin = make_twin()
    assert post(twin["id"], []) == {
        "accepted": 0,
        "duplicates": 0,
        "late": 0,
        "first_seq": None,
        "last_seq": None,
    }


def test_autonomous_twin_needs_no_inputs(client, post, sessions):
    spec = {
        "name": "free",
        "inputs": [],
        "outputs": ["y"],
        "model": {"kind": "arx", "na": 1, "nb": 0},
    }
    created = client.post("/twins", json=spec)
    assert created.status_code == 201, created.text
    twin_id = created.json()["id"]
    result = post(
        twin_id, [{"ts": 1, "outputs": {"y": 1}}, {"ts": 2, "inputs": {}, "outputs": {"y": 2}}]
    )
    assert result["accepted"] == 2
    assert [r.inputs for r in stored(sessions, twin_id)] == [[], []]


@pytest.fixture
def small_app(database_url):
    return create_app(
        Settings(
            database_url=database_url,
            worker=False,
            run_migrations=True,
            max_batch_rows=5,
            max_body_bytes=2_000,
        )
    )


def test_too_many_rows_is_413(small_app):
    from fastapi.testclient import TestClient

    with TestClient(small_app) as client:
        twin_id = client.post("/twins", json={"name": "x", **_spec()}).json()["id"]
        response = client.post(
            f"/twins/{twin_id}/observations", json={"observations": [row(i) for i in range(6)]}
        )
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"
        ok = client.post(
            f"/twins/{twin_id}/observations", json={"observations": [row(i) for i in range(5)]}
        )
        assert ok.status_code == 202


def test_too_many_bytes_is_413_by_header_and_by_length(small_app):
    from fastapi.testclient import TestClient

    with TestClient(small_app) as client:
        twin_id = client.post("/twins", json={"name": "x", **_spec()}).json()["id"]
        big = b'{"observations": [' + b" " * 3_000 + b"]}"
        declared = client.post(
            f"/twins/{twin_id}/observations",
            content=big,
            headers={"content-type": "application/json"},
        )
        assert declared.status_code == 413
        assert "3" in declared.json()["detail"]
        streamed = client.post(
            f"/twins/{twin_id}/observations",
            content=iter([big[:1_000], big[1_000:]]),  # chunked: no Content-Length
            headers={"content-type": "application/json"},
        )
        assert streamed.status_code == 413
        assert "exceeds" in streamed.json()["detail"]


def _spec():
    from tests.app.conftest import SPEC

    return SPEC


def test_concurrent_retries_for_one_twin_store_each_row_once_with_gap_free_seqs(
    make_twin, sessions
):
    """Threads race to post the same batches: each row is stored once, the rest are counted."""
    twin = make_twin()
    n_threads, n_batches, size = 4, 6, 25
    results, failures = [], []

    def worker() -> None:
        try:
            for b in range(n_batches):
                rows = [(float(b * size + i), i, [1.0, 2.0], [3.0]) for i in range(size)]
                with sessions.begin() as session:
                    session.get(t.Twin, twin["id"])  # as the route's TwinDep does
                    results.append(ingestion.store(session, twin["id"], rows))
        except Exception as e:
            failures.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    n = n_batches * size
    assert sum(r.accepted for r in results) == n
    assert sum(r.duplicates for r in results) == (n_threads - 1) * n
    rows = stored(sessions, twin["id"])
    assert [r.seq for r in rows] == list(range(1, n + 1))
    assert [r.ts for r in rows] == [float(k) for k in range(n)]
