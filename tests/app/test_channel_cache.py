"""A posting twin's name and channels are read from the database once per API process; a twin
deleted since is still refused with 404, whether the body is good or bad."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app import tables as t
from tests.app.conftest import thermal_rows

BAD_ROW = {"ts": 4_000.0, "inputs": {"heat": 1.0, "ambient": 20.0}, "outputs": {"T": "hot"}}


def test_channels_are_read_once_per_twin(client, make_twin, post, sessions):
    twin = make_twin()
    cache = client.app.state.channels
    assert not cache.cached(twin["id"])
    post(twin["id"], thermal_rows(5))
    assert cache.cached(twin["id"])
    post(twin["id"], thermal_rows(5, start=2_000.0))  # from memory: stored all the same
    with sessions() as session:
        assert session.scalar(select(t.Twin.last_seq).where(t.Twin.id == twin["id"])) == 10
    bad = client.post(f"/twins/{twin['id']}/observations", json={"observations": [BAD_ROW]})
    assert bad.status_code == 422, bad.text
    assert bad.json()["errors"][0]["index"] == 0


@pytest.mark.parametrize("body", ["good", "bad"])
def test_a_twin_deleted_after_it_was_cached_is_not_found(client, make_twin, post, body):
    twin = make_twin()
    cache = client.app.state.channels
    post(twin["id"], thermal_rows(5))
    assert cache.cached(twin["id"])
    assert client.delete(f"/twins/{twin['id']}").status_code == 204
    rows = thermal_rows(3, start=3_000.0) if body == "good" else [BAD_ROW]
    response = client.post(f"/twins/{twin['id']}/observations", json={"observations": rows})
    assert response.status_code == 404, response.text  # not 202, nor 422: the twin is gone
    assert not cache.cached(twin["id"])
