"""Observations posted as `text/csv`, and 415 for content types the endpoint does not take."""

import pytest

CSV = "ts,heat,ambient,T\n1000,5.0,20.0,21.5\n2026-11-25T10:00:00Z,6.0,20.0,22.0\n"


def post_body(client, twin_id: int, body: str | bytes, content_type: str | None):
    headers = {"content-type": content_type} if content_type else {}
    return client.post(f"/twins/{twin_id}/observations", content=body, headers=headers)


def test_csv_rows_are_stored_like_json_rows(client, make_twin):
    twin = make_twin()
    response = post_body(client, twin["id"], CSV, "text/csv; charset=utf-8")
    assert response.status_code == 202, response.text
    assert response.json() == {
        "accepted": 2,
        "duplicates": 0,
        "late": 0,
        "first_seq": 1,
        "last_seq": 2,
    }
    rows = client.get(f"/twins/{twin['id']}/observations").json()["observations"]
    assert [r["ts"] for r in rows] == [1000.0, 1795600800.0]
    assert rows[1]["inputs"] == {"heat": 6.0, "ambient": 20.0}
    assert rows[1]["outputs"] == {"T": 22.0}


def test_csv_columns_may_come_in_any_order_and_resending_counts_duplicates(client, make_twin):
    twin = make_twin()
    body = "\ufeffT,ambient,ts,heat\r\n21.5,20,1000,5\r\n"  # a BOM and CRLF, as spreadsheets write
    assert post_body(client, twin["id"], body, "text/csv").json()["accepted"] == 1
    again = post_body(client, twin["id"], body, "text/csv").json()
    assert (again["accepted"], again["duplicates"]) == (0, 1)


def test_csv_header_naming_an_unknown_or_missing_channel_is_refused(client, make_twin):
    twin = make_twin()
    response = post_body(client, twin["id"], "ts,heat,T,flow\n1,1,1,1\n", "text/csv")
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert {"line": 1, "field": "flow", "message": "unknown column"} in errors
    assert {"line": 1, "field": "ambient", "message": "missing column"} in errors


def test_a_bad_csv_cell_names_its_row_and_channel(client, make_twin):
    twin = make_twin()
    body = "ts,heat,ambient,T\n1,1,20,21\n2,1,20,hot\n"
    response = post_body(client, twin["id"], body, "text/csv")
    assert response.status_code == 422
    assert response.json()["errors"][0]["index"] == 1
    assert response.json()["errors"][0]["field"] == "outputs.T"
    assert client.get(f"/twins/{twin['id']}").json()["last_seq"] == 0


def test_a_csv_row_with_too_few_cells_is_refused_with_its_line(client, make_twin):
    twin = make_twin()
    response = post_body(client, twin["id"], "ts,heat,ambient,T\n1,1,20,21\n2,1,20\n", "text/csv")
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"index": 1, "line": 3, "field": None, "message": "3 cells under a header of 4 columns"}
    ]


def test_a_csv_batch_over_the_row_limit_is_413(database_url):
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app
    from tests.app.conftest import SPEC

    settings = Settings(
        database_url=database_url, worker=False, run_migrations=True, max_batch_rows=2
    )
    with TestClient(create_app(settings)) as client:
        twin_id = client.post("/twins", json={"name": "hx", **SPEC}).json()["id"]
        body = "ts,heat,ambient,T\n" + "".join(f"{i},1,20,21\n" for i in range(3))
        assert post_body(client, twin_id, body, "text/csv").status_code == 413


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_a_content_type_the_endpoint_does_not_take_is_415(client, make_twin, content_type):
    twin = make_twin()
    response = post_body(client, twin["id"], '{"observations": []}', content_type)
    assert response.status_code == 415
    body = response.json()
    assert body["error"] == "unsupported_media_type"
    assert "text/csv" in body["detail"] and content_type in body["detail"]


def test_a_body_without_a_content_type_is_refused(client, make_twin):
    """A browser sends a body without a type (a Blob) cross-site without a preflight."""
    twin = make_twin()
    body = (
        b'{"observations": [{"ts": 1, "inputs": {"heat": 1, "ambient": 20}, "outputs": {"T": 2}}]}'
    )
    assert post_body(client, twin["id"], body, None).status_code == 415
