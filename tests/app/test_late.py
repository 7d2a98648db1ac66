"""Time that cannot be poisoned: a window of accepted timestamps, and late observations that are
stored (never refused), learned while the twin still can, and counted."""

import time

import pytest
from sqlalchemy import select

from app import tables as t
from app.calibrator import Calibrator
from app.errors import Invalid
from app.services import ingestion
from tests.app.conftest import thermal_rows

DAY = 86_400.0


def history(client, twin_id):
    response = client.get(f"/twins/{twin_id}/observations", params={"limit": 10_000})
    assert response.status_code == 200, response.text
    return response.json()["observations"]


def stored(sessions, twin_id):
    with sessions() as session:
        query = select(t.Observation.seq, t.Observation.ts, t.Observation.flags)
        return session.execute(query.where(t.Observation.twin_id == twin_id)).all()


def test_late_rows_are_stored_in_arrival_order_flagged_and_counted(client, make_twin, post):
    twin = make_twin()
    rows = thermal_rows(30)
    assert post(twin["id"], rows[20:])["late"] == 0
    result = post(twin["id"], rows[5:10] + rows[25:])  # 5 late rows, 5 duplicates
    assert result == {"accepted": 5, "duplicates": 5, "late": 5, "first_seq": 11, "last_seq": 15}
    got = history(client, twin["id"])
    assert [r["seq"] for r in got] == list(range(1, 16))  # gap-free, in arrival order
    assert [r["ts"] for r in got[10:]] == [r["ts"] for r in rows[5:10]]
    assert all(r["flags"] == ["late"] for r in got[10:]) and got[0]["flags"] == []
    status = client.get(f"/twins/{twin['id']}").json()
    assert status["last_seq"] == 15 and status["last_ts"] == rows[-1]["ts"]
    assert post(twin["id"], rows[5:10])["duplicates"] == 5  # a retried late batch
    assert client.get(f"/twins/{twin['id']}/drift").json()["late"]["observations"] == 5


@pytest.mark.parametrize(
    "ts, words",
    [
        (-1.0, "before the oldest accepted time, 1970-01-01T00:00:00Z"),
        ("1969-12-31T23:59:59Z", "before the oldest accepted time"),
        (1e308, "ahead of the newest accepted time"),
        (time.time() + 2 * DAY, "ahead of the newest accepted time"),
    ],
)
def test_timestamps_outside_the_window_are_422_naming_row_and_field(make_twin, post, ts, words):
    twin = make_twin()
    rows = thermal_rows(3)
    rows[1]["ts"] = ts
    body = post(twin["id"], rows, expect=422)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "ts")]
    assert words in body["errors"][0]["message"]


def test_one_poisoned_timestamp_cannot_refuse_later_observations(client, make_twin, post):
    twin = make_twin()
    post(twin["id"], thermal_rows(5))
    post(twin["id"], [{**thermal_rows(1)[0], "ts": 1e308}], expect=422)
    soon = time.time() + DAY / 2  # inside the window: accepted, and the newest
    post(twin["id"], [{**thermal_rows(1)[0], "ts": soon}])
    result = post(twin["id"], thermal_rows(20, start=time.time() - 100))
    assert result["accepted"] == 20 and result["late"] == 20  # stored, not refused
    assert client.get(f"/twins/{twin['id']}").json()["last_seq"] == 26


def test_window_follows_the_settings():
    window = ingestion.ts_window(min_ts=1e9, max_ts_ahead=60.0, now=2e9)
    assert window == (1e9, 2e9 + 60.0)
    rows = [{"ts": ts, "inputs": {}, "outputs": {"y": 1.0}} for ts in (1e9, 2e9 + 60, 2e9 + 61)]
    with pytest.raises(Invalid) as caught:
        ingestion.check_rows(rows, [], ["y"], window)
    assert [e["index"] for e in caught.value.errors] == [2]


def test_gateway_replaying_buffered_data_after_an_outage_is_accepted_and_learned(
    client, make_twin, post, sessions
):
    """Live rows first after the reconnect, then the buffer in batches: every row is stored,
    and the calibrator, still behind, learns them all in time order."""
    twin = make_twin()
    rows = thermal_rows(120)
    post(twin["id"], rows[:40])
    Calibrator(sessions).drain()
    post(twin["id"], rows[100:])  # live again
    for start in range(40, 100, 15):  # the buffered outage, replayed
        result = post(twin["id"], rows[start : start + 15])
        assert result["accepted"] == 15 and result["late"] == 15
    Calibrator(sessions).drain()
    got = history(client, twin["id"])
    assert [r["seq"] for r in got] == list(range(1, 121))
    assert all(r["prediction"]["T"] is not None for r in got[1:]), "all learned in time order"
    drift = client.get(f"/twins/{twin['id']}/drift").json()
    assert drift["late"] == {"observations": 60, "skipped": 0}
    assert drift["watermark"] == 120 and drift["calibration_lag"]["observations"] == 0


def test_late_rows_the_twin_has_learned_past_are_stored_and_skipped(
    client, make_twin, post, sessions
):
    twin = make_twin()
    rows = thermal_rows(60)
    post(twin["id"], rows[:10] + rows[30:])
    Calibrator(sessions).drain()
    post(twin["id"], rows[10:30])  # the twin has learned past all of them
    Calibrator(sessions).drain()
    got = history(client, twin["id"])
    late = got[40:]
    assert [r["ts"] for r in late] == [r["ts"] for r in rows[10:30]]
    assert all(r["flags"] == ["late"] and r["prediction"] == {"T": None} for r in late)
    drift = client.get(f"/twins/{twin['id']}/drift").json()
    assert drift["late"] == {"observations": 20, "skipped": 20}
    assert drift["watermark"] == 60 and drift["calibration_lag"]["observations"] == 0
    assert {s.flags for s in stored(sessions, twin["id"])} == {0, t.LATE}
