"""`GET /twins?lagging=&drifting=`: the fleet filters, with twin-limited keys and paging."""

from __future__ import annotations

import time

from sqlalchemy import event

from bench.twin_list import fill_fleet
from tests.app.test_auth import Keys, bearer


def listed(client, headers=None, **params) -> tuple[list[str], int]:
    response = client.get("/twins", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [tw["name"] for tw in response.json()], int(response.headers["x-total-count"])


def test_lagging_lists_twins_whose_oldest_pending_observation_is_older(client, sessions):
    fill_fleet(sessions, 20, now=time.time())  # odd twins: seq 16.. pending, received ~64 s ago
    names, total = listed(client, lagging=5, limit=3)
    assert names == ["ahu-00001", "ahu-00003", "ahu-00005"] and total == 10
    assert listed(client, lagging=50)[1] == 10
    assert listed(client, lagging=600)[1] == 0
    names, total = listed(client, lagging=5, sort="name", desc="true", limit=2, offset=1)
    assert names == ["ahu-00017", "ahu-00015"] and total == 10


def test_lagging_follows_learning(client, make_twin, post, learn):
    twin = make_twin()
    post(twin["id"], [{"ts": 1.0, "inputs": {"heat": 1, "ambient": 20}, "outputs": {"T": 21}}])
    time.sleep(0.05)
    assert listed(client, lagging=0.01)[0] == ["hx-1"]
    assert listed(client, lagging=3600)[0] == []
    learn(twin["id"])
    assert listed(client, lagging=0)[0] == []


def test_drifting_lists_twins_with_a_drift_event_this_hour(client, sessions):
    fill_fleet(sessions, 20)  # twins 3 and 13: an event now; 7 and 17: one a day ago
    assert listed(client, drifting="true") == (["ahu-00003", "ahu-00013"], 2)
    names, total = listed(client, drifting="false")
    assert total == 18 and "ahu-00007" in names and "ahu-00003" not in names
    both = listed(client, drifting="true", lagging=5)  # 3 and 13 are odd: lagging too
    assert both == (["ahu-00003", "ahu-00013"], 2)
    drifting = client.get("/twins", params={"drifting": "true"}).json()
    assert all(tw["drift"]["events"] == 1 for tw in drifting)  # as the badge shows


def test_filters_keep_to_a_twin_limited_keys_twins(client, sessions):
    keys = Keys(client)
    ids = fill_fleet(sessions, 20)
    key = bearer(keys.make(["read"], "limited", twins=[ids[3], ids[4]])["key"])
    assert listed(client, key, drifting="true") == (["ahu-00003"], 1)
    assert listed(client, key, lagging=5) == (["ahu-00003"], 1)
    assert listed(client, key, drifting="false", sort="lag") == (["ahu-00004"], 1)


def test_drifting_probes_each_twins_recent_events_by_key(client, sessions):
    """The filter reads (twin_id, created_at) index-only, one probe per twin, on both engines:
    never a scan of every drift event since the cut."""
    fill_fleet(sessions, 20, events=3)
    engine, statements = client.app.state.engine, []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "drift_events.created_at >=" in statement:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert listed(client, drifting="true", limit=1) == (["ahu-00003"], 2)
        assert listed(client, drifting="false", limit=1) == (["ahu-00000"], 18)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(statements) == 4  # the count and the page, of each
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        if postgres:
            conn.exec_driver_sql("SET enable_seqscan = off")  # tiny tables: show the keys
        for statement, parameters in statements:
            explain = "EXPLAIN (COSTS OFF) " if postgres else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(explain + statement, parameters).all()
            plan = "\n".join(str(r[0] if postgres else r[-1]) for r in rows)
            key = "ix_drift_events_twin_id_created_at"
            covering = f"Index Only Scan using {key}" if postgres else f"COVERING INDEX {key}"
            assert covering in plan, plan
            probe = "twin_id = twins.id" if postgres else "(twin_id=? AND created_at>?)"
            assert probe in plan, plan
