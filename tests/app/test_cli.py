"""`tandem`: version, settings as options and environment, one-line errors, migrate, demo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from importlib.metadata import version

import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from app.cli import cli
from app.db import current_revision, head_revision

TANDEM = [sys.executable, "-c", "from app.cli import main; main()"]


def tandem(*args: str, env: dict | None = None, timeout: float = 120):
    """Run `tandem` as a user does, in a process of its own."""
    return subprocess.run(
        [*TANDEM, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def revision(path) -> str | None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"tandem {version('tandem')}\n"


@pytest.mark.parametrize("command", ["serve", "worker", "migrate", "demo"])
def test_help_shows_settings_as_options_with_their_environment_variables(command):
    result = CliRunner().invoke(cli, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--database-url" in result.output and "TANDEM_DATABASE_URL" in result.output


def test_an_option_wins_over_the_environment(tmp_path):
    env = {"TANDEM_DATABASE_URL": f"sqlite:///{tmp_path / 'env.db'}"}
    option = f"sqlite:///{tmp_path / 'option.db'}"
    result = CliRunner().invoke(cli, ["migrate", "--database-url", option], env=env)
    assert result.exit_code == 0, result.output
    assert revision(tmp_path / "option.db") == head_revision()
    assert not (tmp_path / "env.db").exists()
    assert CliRunner().invoke(cli, ["migrate"], env=env).exit_code == 0
    assert revision(tmp_path / "env.db") == head_revision()


def test_an_error_is_one_line_on_stderr_and_the_traceback_comes_with_debug(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = tandem("migrate", "9999", "--database-url", url)
    assert result.returncode == 1
    assert result.stderr == "error: Can't locate revision identified by '9999'\n"
    assert result.stdout == ""
    debug = tandem("--debug", "migrate", "9999", "--database-url", url)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert len(debug.stderr.splitlines()) > 5


def test_a_bad_setting_is_named_in_one_line(tmp_path):
    result = tandem("migrate", env={"TANDEM_MAX_BATCH_ROWS": "0"})
    assert result.returncode == 1
    assert result.stderr.startswith("error: setting max_batch_rows (TANDEM_MAX_BATCH_ROWS): ")
    assert len(result.stderr.splitlines()) == 1


def test_migrate_reports_where_the_database_is_and_goes_back_only_when_asked(tmp_path):
    db = tmp_path / "t.db"
    url = ["--database-url", f"sqlite:///{db}"]
    head = head_revision()
    run = CliRunner().invoke
    up = run(cli, ["migrate", *url])
    assert up.output == f"database at {head} (head; was empty): SQLite file {db}\n"
    refused = run(cli, ["migrate", "0001", *url])
    assert refused.exit_code == 1 and "pass --downgrade" in str(refused.exception)
    assert revision(db) == head
    down = run(cli, ["migrate", "0001", "--downgrade", *url])
    assert down.exit_code == 0, down.output
    assert down.output.startswith(f"database at 0001 (head is {head}; was {head})")
    assert revision(db) == "0001"
    again = run(cli, ["migrate", "0001", *url])
    assert again.output.startswith("database at 0001 (head is") and "unchanged" in again.output
    assert run(cli, ["migrate", *url]).output.startswith(f"database at {head} (head; was 0001)")


@pytest.mark.slow
def test_demo_shows_the_true_parameters_beside_the_twins_and_its_database_file(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "demo.db"
    args = ["--port", str(port), "--duration", "6", "--rate", "50"]
    result = tandem("demo", *args, "--database-url", f"sqlite:///{db}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"database: SQLite file {db}" in lines
    header = next(line for line in lines if line.lstrip().startswith("observations"))
    assert header.split()[1:5] == ["true", "R", "twin", "R"] and "true C" in header
    rows = [line.split() for line in lines[lines.index(header) + 1 :]]
    assert rows and all(len(row) == len(rows[0]) for row in rows)
    true_r = float(rows[-1][1])
    assert 0.05 <= true_r < 0.06  # the plant's R, fouling up from 0.05
    with create_engine(f"sqlite:///{db}").connect() as conn:
        newest, n = conn.exec_driver_sql("SELECT max(ts), count(*) FROM observations").one()
    assert n >= 100 and newest <= time.time()  # a week replayed: never ahead of the clock


def test_demo_says_so_when_its_port_is_taken(tmp_path):
    """Not a silent run against whatever else listens there."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        url = f"sqlite:///{tmp_path / 'demo.db'}"
        result = tandem("demo", "--port", str(port), "--duration", "2", "--database-url", url)
    assert result.returncode != 0
    assert f"could not listen on 127.0.0.1:{port}" in result.stderr
