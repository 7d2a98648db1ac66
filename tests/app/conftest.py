"""Fixtures of the service tests: each test gets its own database (a SQLite file, and a fresh
PostgreSQL database when TANDEM_TEST_POSTGRES_URL is set) and an app without the worker."""

from __future__ import annotations

import math
import os
import random
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, insert, select, text, update
from sqlalchemy.engine import make_url

from app import tables as t
from app.config import Settings
from app.main import create_app
from twin.observations import Observations
from twin.replica import Twin as Replica

POSTGRES_URL = os.environ.get("TANDEM_TEST_POSTGRES_URL")

SPEC = {
    "inputs": ["heat", "ambient"],
    "outputs": ["T"],
    "model": {"kind": "thermal_rc", "params": {"R": 2.0, "C": 50.0}, "bounds": {"R": [0.5, 5]}},
    "learner": {"method": "pgpe", "seed": 3},
}


def thermal_rows(n: int, start: float = 1_000.0, dt: float = 1.0, R: float = 2.5, C: float = 50.0):
    """Observations of a thermal RC system (exact zero-order-hold steps) under varying heat."""
    rng = random.Random(0)
    T, rows = 20.0, []
    for i in range(n):
        heat = 5.0 + 5.0 * math.sin(i / 7.0)
        ambient = 20.0
        a = math.exp(-dt / (R * C))
        T = a * T + (1 - a) * (ambient + R * heat)
        rows.append(
            {
                "ts": start + i * dt,
                "inputs": {"heat": heat, "ambient": ambient},
                "outputs": {"T": T + rng.gauss(0.0, 0.01)},
            }
        )
    return rows


@pytest.fixture
def postgres_url():
    """A fresh, uniquely named PostgreSQL database, dropped after the test."""
    if not POSTGRES_URL:
        pytest.skip("TANDEM_TEST_POSTGRES_URL is not set")
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"tandem_test_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    """Each test's own database: a SQLite file, and a fresh PostgreSQL database when
    TANDEM_TEST_POSTGRES_URL is set (skipped, and said so, when it is not)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tandem.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(database_url) -> Settings:
    return Settings(database_url=database_url, worker=False, run_migrations=True)


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture
def sessions(client):
    """The running app's session factory, to arrange and inspect rows directly."""
    return client.app.state.sessions


@pytest.fixture
def make_twin(client):
    def make(name: str = "hx-1", **changes) -> dict:
        response = client.post("/twins", json={"name": name, **SPEC, **changes})
        assert response.status_code == 201, response.text
        return response.json()

    return make


@pytest.fixture
def post(client):
    def post(twin_id: int, rows: list[dict], expect: int = 202) -> dict:
        response = client.post(f"/twins/{twin_id}/observations", json={"observations": rows})
        assert response.status_code == expect, response.text
        return response.json()

    return post


@pytest.fixture
def learn(sessions):
    """Do what the calibrator does, directly: learn all pending observations of a twin and
    write the next version (with checkpoint) and the prequential predictions."""

    def learn(twin_id: int) -> int:
        with sessions.begin() as session:
            version = session.scalars(
                select(t.Version)
                .where(t.Version.twin_id == twin_id)
                .order_by(t.Version.number.desc())
                .limit(1)
            ).one()
            replica = Replica.from_bytes(version.checkpoint)
            rows = session.execute(
                select(
                    t.Observation.seq, t.Observation.ts, t.Observation.inputs, t.Observation.outputs
                )
                .where(t.Observation.twin_id == twin_id, t.Observation.seq > version.watermark)
                .order_by(t.Observation.seq)
            ).all()
            rows = sorted(rows, key=lambda r: r[1])  # learned in time order, as the calibrator does
            seq, ts, u, y = (np.array(c, dtype=float) for c in zip(*rows, strict=True))
            seq = seq.astype(np.int64)
            result = replica.step(Observations(ts, u, y, seq))
            number = version.number + 1
            session.execute(
                insert(t.Prediction),
                [
                    {
                        "twin_id": twin_id,
                        "seq": int(s),
                        "version": number,
                        "prediction": _nulls(p),
                        "residual": _nulls(r),
                        "first_guess": _nulls(f),
                    }
                    for s, p, r, f in zip(
                        seq,
                        result.predictions,
                        result.residuals,
                        result.frozen_predictions,
                        strict=True,
                    )
                ],
            )
            session.add(
                t.Version(
                    twin_id=twin_id,
                    number=number,
                    watermark=replica.watermark,
                    created_at=float(ts[-1]),
                    parameters=replica.parameters(),
                    metrics={**replica.metrics(), "loss": result.loss},
                    checkpoint=replica.to_bytes(),
                )
            )
            session.execute(
                update(t.Twin)
                .where(t.Twin.id == twin_id)
                .values(version=number, watermark=replica.watermark)
            )
        return number

    return learn


def _nulls(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]
