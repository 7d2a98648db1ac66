"""Importing CSV and Parquet tables into a twin through the client, and `tandem import`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from app.cli import cli
from tandem_client import Client
from tandem_client.tabular import ColumnMap, ImportFailed, import_table, read_mapping_file
from tests.app.conftest import SPEC


@pytest.fixture
def api(service):
    with Client(service.url, retries=0) as client:
        yield client


def historian_csv(path, n: int, start: int = 0) -> None:
    """A historian's export: its own column names, °F, and a column the twin does not have."""
    lines = ["Timestamp,Heater_kW,Ambient,Temp_F,Valve"]
    for i in range(start, n):
        t = f"2026-11-25 10:{i // 60:02d}:{i % 60:02d}"
        temp_c = 21.0 + 0.01 * i
        lines.append(f"{t},{0.005 + i * 1e-5:.5f},20.0,{temp_c * 9 / 5 + 32:.6f},open")
    path.write_text("\n".join(lines) + "\n")


MAPS = ["Heater_kW=heat:x*1000", "Ambient=ambient", "Temp_F=T:(x-32)*5/9"]


def test_a_historian_export_is_mapped_converted_and_posted_in_batches(api, tmp_path):
    twin = api.create_twin("hx-1", **SPEC)
    historian_csv(tmp_path / "export.csv", 23)
    maps = [ColumnMap.parse(m) for m in MAPS]
    report = import_table(api, tmp_path / "export.csv", twin, maps=maps, batch_rows=10)
    assert (report.rows, report.skipped, report.result.accepted) == (23, 0, 23)
    assert report.result.batches == 3 and report.ignored_columns == ["Valve"]
    rows = api.history(twin).observations
    assert rows[0].ts == 1795600800.0  # 2026-11-25T10:00:00Z: a time without a zone is UTC
    assert rows[5].inputs == {"heat": pytest.approx(5.05), "ambient": 20.0}
    assert rows[5].outputs["T"] == pytest.approx(21.05)


def test_an_import_resumes_after_the_twins_newest_observation(api, tmp_path):
    twin = api.create_twin("hx-1", **SPEC)
    maps = [ColumnMap.parse(m) for m in MAPS]
    historian_csv(tmp_path / "export.csv", 12)  # the import stopped after 12 rows ...
    import_table(api, tmp_path / "export.csv", twin, maps=maps)
    historian_csv(tmp_path / "export.csv", 30)  # ... and runs again on the whole file
    report = import_table(api, tmp_path / "export.csv", api.twin(twin.id), maps=maps)
    assert (report.rows, report.skipped, report.result.accepted) == (30, 12, 18)
    assert report.result.first_seq == 13 and api.twin(twin.id).last_seq == 30
    again = import_table(api, tmp_path / "export.csv", api.twin(twin.id), maps=maps, resume=False)
    assert (again.skipped, again.result.accepted, again.result.duplicates) == (0, 0, 30)


def test_times_in_a_format_and_zone_of_the_file(api, tmp_path):
    twin = api.create_twin("hx-1", **SPEC)
    (tmp_path / "local.csv").write_text("time,heat,ambient,T\n25/11/2026 11:00,5,20,21\n")
    import_table(
        api, tmp_path / "local.csv", twin, time_format="%d/%m/%Y %H:%M", timezone="Europe/Berlin"
    )
    assert api.history(twin).observations[0].ts == 1795600800.0  # 10:00 UTC


@pytest.mark.parametrize(
    ("content", "maps", "message"),
    [
        ("ts,heat,T\n1,5,21\n", [], "no column for channel(s) ambient"),
        ("ts,heat,ambient,T\n1,5,20,21\n2,5,20,warm\n", [], "line 3, column 'T': 'warm' is not"),
        ("ts,heat,ambient,T\nyesterday,5,20,21\n", [], "line 2, column 'ts': 'yesterday' is not"),
        ("when,heat,ambient,T\n1,5,20,21\n", [], "no time column"),
        ("ts,heat,ambient,Temp\n1,5,20,21\n", ["Temp=T2"], "has no channel 'T2'"),
        ("ts,heat,ambient,T\n1,5,20\n", [], "line 2: 3 cells under a header of 4"),
    ],
)
def test_a_table_that_does_not_fit_the_twin_is_refused_before_posting(
    api, tmp_path, content, maps, message
):
    twin = api.create_twin("hx-1", **SPEC)
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(ImportFailed, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_table(api, tmp_path / "bad.csv", twin, maps=[ColumnMap.parse(m) for m in maps])
    assert api.twin(twin.id).last_seq == 0


def test_a_mapping_is_arithmetic_in_x_and_nothing_else(tmp_path):
    assert ColumnMap.parse("Temp_F=T:(x-32)*5/9").convert(212.0) == 100.0
    assert ColumnMap.parse("P:x*1000").source == "P"
    for spec in ['T:__import__("os")', "T:x.real", "T:abs(x)", "T:y+1", "=T", "T:1+"]:
        with pytest.raises(ImportFailed):
            ColumnMap.parse(spec)
    (tmp_path / "map.txt").write_text("# historian tags\nTemp_F=T:(x-32)*5/9  # °F\n\nFlow=Q\n")
    assert [(m.source, m.channel) for m in read_mapping_file(tmp_path / "map.txt")] == [
        ("Temp_F", "T"),
        ("Flow", "Q"),
    ]


def test_parquet_tables_import_like_csv(api, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from datetime import datetime

    twin = api.create_twin("hx-1", **SPEC)
    times = [datetime(2026, 11, 25, 10, 0, s) for s in range(5)]
    table = pa.table(
        {
            "time": times,
            "heat": [5.0] * 5,
            "ambient": [20.0] * 5,
            "T": [21.0, 21.1, 21.2, 21.3, 21.4],
        }
    )
    pq.write_table(table, tmp_path / "x.parquet")
    report = import_table(api, tmp_path / "x.parquet", twin, batch_rows=2)
    assert (report.rows, report.result.accepted, report.result.batches) == (5, 5, 3)
    assert [r.ts for r in api.history(twin).observations][:2] == [1795600800.0, 1795600801.0]


def test_tandem_import_prints_what_it_did(service, api, tmp_path):
    api.create_twin("hx-1", **SPEC)
    historian_csv(tmp_path / "export.csv", 8)
    maps = [arg for m in MAPS for arg in ("--map", m)]
    args = ["import", str(tmp_path / "export.csv"), "--twin", "hx-1", "--url", service.url]
    result = CliRunner().invoke(cli, [*args, *maps])
    assert result.exit_code == 0, result.output
    assert "8 rows" in result.output and "8 accepted, 0 duplicates" in result.output
    assert "columns not used: Valve" in result.output
    (tmp_path / "map.txt").write_text("\n".join(MAPS))
    again = CliRunner().invoke(cli, [*args, "--mapping", str(tmp_path / "map.txt")])
    assert again.exit_code == 0, again.output
    assert "8 skipped" in again.output


def test_tandem_import_errors_are_one_line_on_stderr(service, tmp_path):
    (tmp_path / "x.csv").write_text("ts,y\n1,2\n")
    command = [sys.executable, "-c", "from app.cli import main; main()", "import"]
    args = [str(tmp_path / "x.csv"), "--twin", "nope", "--url", service.url]
    out = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == f"error: no twin is named 'nope' at {service.url}; create it first\n"
