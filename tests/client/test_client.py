"""The client against a real service: every endpoint, batching, paging and errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tandem_client import ApiError, Client, History, Twin
from tests.app.conftest import SPEC, thermal_rows


@pytest.fixture
def api(service):
    with Client(service.url, retries=0) as client:
        yield client


def test_importing_the_client_loads_neither_torch_nor_numpy_nor_the_server():
    heavy = ["torch", "numpy", "fastapi", "sqlalchemy", "pydantic", "app", "twin"]
    code = (
        "import sys, tandem_client, tandem_client.tabular\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_twins_are_created_listed_read_by_id_or_name_and_deleted(api):
    twin = api.create_twin("hx-1", **SPEC)
    assert isinstance(twin, Twin) and twin.name == "hx-1" and twin.version == 0
    assert twin.inputs == ["heat", "ambient"] and twin.outputs == ["T"]
    assert [t.id for t in api.twins()] == [twin.id]
    assert api.twin("hx-1").id == twin.id == api.twin(twin.id).id
    with pytest.raises(ApiError) as conflict:
        api.create_twin("hx-1", **SPEC)
    assert conflict.value.status_code == 409 and conflict.value.error == "conflict"
    api.delete_twin(twin)
    with pytest.raises(ApiError) as gone:
        api.twin(twin.id)
    assert gone.value.status_code == 404
    assert api.find_twin("hx-1") is None


def test_a_large_upload_goes_in_batches_and_a_resend_counts_duplicates(api):
    twin = api.create_twin("hx-1", **SPEC)
    rows = thermal_rows(23)
    result = api.post_observations(twin, rows, batch_rows=10)
    assert (result.accepted, result.duplicates, result.batches) == (23, 0, 3)
    assert (result.first_seq, result.last_seq) == (1, 23)
    again = api.post_observations(twin, iter(rows), batch_rows=10)
    assert (again.accepted, again.duplicates, again.last_seq) == (0, 23, None)
    assert api.twin(twin).last_seq == 23


def test_a_bad_row_in_a_later_batch_reports_what_earlier_batches_stored(api):
    twin = api.create_twin("hx-1", **SPEC)
    rows = thermal_rows(6)
    rows[4] = {**rows[4], "outputs": {"T": "hot"}}
    with pytest.raises(ApiError) as bad:
        api.post_observations(twin, rows, batch_rows=3)
    assert bad.value.status_code == 422
    assert bad.value.errors[0]["index"] == 1 and bad.value.errors[0]["field"] == "outputs.T"
    assert bad.value.partial.accepted == 3


def test_csv_text_is_posted_as_text_csv(api):
    twin = api.create_twin("hx-1", **SPEC)
    result = api.post_csv(twin, "ts,heat,ambient,T\n1,5,20,21\n2,5,20,21.1\n")
    assert (result.accepted, result.last_seq) == (2, 2)


def test_history_pages_until_the_last_and_becomes_columns(api, learn):
    twin = api.create_twin("hx-1", **SPEC)
    api.post_observations(twin, thermal_rows(25))
    learn(twin.id)
    page = api.history(twin, limit=10)
    assert [r.seq for r in page.observations] == list(range(1, 11))
    assert page.next_after_seq == 10
    rows = list(api.iter_history(twin, page_rows=10))
    assert [r.seq for r in rows] == list(range(1, 26))
    window = api.history(twin, start=1_005.0, end=1_007.0)
    assert [r.ts for r in window.observations] == [1_005.0, 1_006.0, 1_007.0]
    arrays = api.history_all(twin, page_rows=7).to_numpy()
    assert arrays["seq"].tolist() == list(range(1, 26))
    learned = ~(arrays["residual.T"] != arrays["residual.T"])  # not NaN
    assert learned.sum() > 0
    assert (abs(arrays["T"] - arrays["predicted.T"] - arrays["residual.T"])[learned] < 1e-9).all()


def test_what_the_twin_knows_reads_back_as_objects(api, learn):
    twin = api.create_twin("hx-1", **SPEC)
    with pytest.raises(ApiError) as early:
        api.predict(twin, [{"heat": 1.0, "ambient": 20.0}], dt=1.0)
    assert early.value.status_code == 409
    api.post_observations(twin, thermal_rows(60))
    number = learn(twin.id)
    params = api.parameters(twin)
    assert params.version == number and set(params.parameters) == {"R", "C"}
    assert params.bounds == {"R": [0.5, 5.0]}
    versions = api.versions(twin, limit=5)
    assert [v.number for v in versions] == [number, 0]
    drift = api.drift(twin)
    assert drift.version == number and "T" in drift.outputs
    assert drift.calibration_lag.observations == 0
    what_if = api.predict(twin, [{"heat": 5.0, "ambient": 20.0}] * 3, dt=[1.0, 1.0, 2.0])
    assert what_if.version == number and len(what_if.outputs) == 3 == len(what_if.std)
    assert what_if.to_numpy()["T"].shape == (3,)


def test_operations_endpoints(api):
    assert api.health() == {"status": "ok"}
    ready = api.ready()
    assert ready.ready and ready.revision
    api.create_twin("hx-1", **SPEC)
    assert 'twin="hx-1"' in api.metrics()


def test_history_to_pandas_needs_pandas_only_when_called():
    history = History.from_dict(
        {
            "observations": [
                {
                    "seq": 1,
                    "ts": 0.0,
                    "inputs": {},
                    "outputs": {"y": 1.0},
                    "prediction": None,
                    "residual": None,
                }
            ],
            "next_after_seq": None,
        }
    )
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            history.to_pandas()
    else:
        frame = history.to_pandas()
        assert list(frame.columns) == ["seq", "y", "predicted.y", "residual.y"]
