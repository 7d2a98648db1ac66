"""The schema is the contract: schemathesis generates requests from `/openapi.json` (valid
ones, and invalid ones for every field) and checks each answer against the schema: no server
error, every status declared, the declared content type, body and headers.

It runs in-process (ASGI) on a SQLite database seeded with a calibrated twin, once with
authentication off and once with an admin key. The run is bounded and derandomized (the same
requests on every run); `TANDEM_FUZZ_EXAMPLES` raises the examples per operation for a longer
search (docs/api.md).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.calibrator import Calibrator
from app.config import Settings
from app.main import create_app
from app.services.keys import create_key

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "40"))
DEADLINE = timedelta(seconds=float(os.environ.get("TANDEM_FUZZ_DEADLINE", "30")))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=DEADLINE,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
README_TWIN = {
    "name": "hx-1",
    "inputs": ["Q", "T_amb"],
    "outputs": ["T"],
    "model": {"kind": "thermal_rc", "params": {"R": 0.07}, "bounds": {"R": [0.005, 0.5]}},
    "learner": {"method": "pgpe", "half_life": 64, "seed": 1},
}


def _rows(n: int) -> list[dict]:
    """A heat exchanger heating up under a square wave of heat input, one row every 10 s."""
    rows, T = [], 21.0
    for k in range(n):
        Q = 250.0 if (k // 20) % 2 == 0 else 0.0
        T += 10.0 / (0.07 * 5000.0) * (21.0 + 0.07 * Q - T)
        rows.append(
            {"ts": 1795600000 + 10 * k, "inputs": {"Q": Q, "T_amb": 21.0}, "outputs": {"T": T}}
        )
    return rows


@pytest.fixture(scope="module", params=["keys off", "admin key"])
def served(request, tmp_path_factory):
    """The app on its own SQLite file with a calibrated twin (1), an unlearned one (2) and a
    black-box one (3); and the headers every request carries."""
    path = tmp_path_factory.mktemp("fuzz") / "tandem.db"
    keyed = request.param == "admin key"
    app = create_app(
        Settings(
            database_url=f"sqlite:///{path}",
            worker=False,
            run_migrations=True,
            auth="on" if keyed else "off",
            rate_limit=0,
        )
    )
    headers = {}
    with asgi.get_client(app) as client:  # starts the app's lifespan, kept for the run
        if keyed:
            with app.state.sessions.begin() as session:
                _, secret = create_key(session, "fuzzer", ["admin"], None, None)
            headers = {"Authorization": f"Bearer {secret}"}
        client.headers.update(headers)
        twins = [
            README_TWIN,
            {**README_TWIN, "name": "hx-2"},
            {"name": "narx", "inputs": ["u"], "outputs": ["y"], "model": {"kind": "mlp"}},
        ]
        for twin in twins:
            assert client.post("/twins", json=twin).status_code == 201
        posted = client.post("/twins/1/observations", json={"observations": _rows(60)})
        assert posted.status_code == 202, posted.text
        Calibrator(app.state.sessions).drain()
        ahead = client.post("/twins/1/predict", json={"inputs": [{"Q": 0, "T_amb": 20}], "dt": 60})
        assert ahead.status_code == 200, ahead.text
    return app, headers


def _operations() -> list[str]:
    """Every operation's label (`POST /twins`), read from the schema when tests are collected;
    deletes last (the key's own last), so that the seeded twins and the key live through the
    others."""
    app = create_app(Settings(database_url="sqlite://", worker=False))
    labels = [
        result.ok().label
        for result in schemathesis.openapi.from_dict(app.openapi()).get_all_operations()
    ]
    return sorted(labels, key=lambda label: (label.startswith("DELETE"), "/keys/" in label))


@pytest.fixture(scope="module")
def api(served):
    return schemathesis.openapi.from_asgi("/openapi.json", served[0])


@pytest.mark.parametrize("label", _operations())
def test_every_answer_matches_the_schema(label, api, served):
    operation = api.find_operation_by_label(label)
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @FUZZ
    @given(case=cases)
    def check(case):
        case.call_and_validate(headers=served[1], checks=CHECKS)

    check()
