"""The OpenAPI document: every operation declares what it really answers, for people and for
client generators, and the spec's model and learner are typed from what `twin/` declares."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.access_rules import BODY_METHODS, required_scope
from app.config import Settings
from app.main import create_app
from tests.app.conftest import SPEC
from twin.learners import LEARNERS
from twin.models import model_class, model_kinds


@pytest.fixture(scope="module")
def schema():
    app = create_app(Settings(database_url="sqlite://", worker=False))
    with TestClient(app) as client:
        return client.get("/openapi.json").json()


def operations(schema):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method.upper(), operation


def test_every_operation_has_a_human_summary_and_a_stable_id(schema):
    ids = set()
    for path, method, operation in operations(schema):
        summary, op_id = operation.get("summary", ""), operation.get("operationId", "")
        assert summary and summary[0].isupper() and " " in summary, (method, path, summary)
        words = summary.split()  # FastAPI's own summary title-cases the function's name
        assert not all(w[0].isupper() for w in words), (method, path, summary)
        assert re.fullmatch(r"[a-z][A-Za-z]+", op_id), (method, path, op_id)  # camelCase
        assert op_id not in ids, op_id
        ids.add(op_id)


def test_every_operation_declares_its_error_statuses_with_the_error_body(schema):
    for path, method, operation in operations(schema):
        responses = operation["responses"]
        declared = set(responses)
        expected = set()
        if operation.get("parameters") or "requestBody" in operation:
            expected.add("422")
        if "{twin_id}" in path or "{key_id}" in path:
            expected.add("404")
        if "requestBody" in operation:
            expected |= {"400", "408", "413"}
        if required_scope(method, path) is not None:
            expected |= {"401", "403", "429", "503"}
            if method in BODY_METHODS:
                expected.add("415")
        assert expected <= declared, (method, path, expected - declared)
        for code, response in responses.items():
            assert response.get("description"), (method, path, code)
            if code.startswith(("4", "5")) and path != "/readyz":
                body = response["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
        for code in ("429", "503"):
            if code in responses and path != "/readyz":
                assert "Retry-After" in responses[code]["headers"], (method, path, code)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "HTTPValidationError" not in str(schema)


def test_statuses_without_a_body_and_headers_are_declared(schema):
    twins = schema["paths"]["/twins"]
    assert "Location" in twins["post"]["responses"]["201"]["headers"]
    assert "X-Total-Count" in twins["get"]["responses"]["200"]["headers"]
    assert "202" in schema["paths"]["/twins/{twin_id}/observations"]["post"]["responses"]
    assert "content" not in schema["paths"]["/twins/{twin_id}"]["delete"]["responses"]["204"]
    metrics = schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    ready = schema["paths"]["/readyz"]["get"]["responses"]
    assert ready["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/NotReady")


def test_model_is_a_union_by_kind_with_each_kinds_parameters_and_options(schema):
    components = schema["components"]["schemas"]
    create = components["TwinCreate"]["properties"]
    assert create["model"] == {"$ref": "#/components/schemas/Model"}
    union = components["Model"]
    assert union["discriminator"]["propertyName"] == "kind"
    assert set(union["discriminator"]["mapping"]) == set(model_kinds())
    thermal = components["ThermalRcModel"]["properties"]
    assert thermal["kind"]["const"] == "thermal_rc"
    r = thermal["params"]["anyOf"][0]["properties"]["R"]
    assert "K/W" in r["description"] and r["exclusiveMinimum"] == 0
    assert "T_amb" in components["ThermalRcModel"]["description"]
    mlp = components["MlpModel"]["properties"]
    for name, option in model_class("mlp").OPTIONS.items():  # the twin's own table
        assert mlp[name]["default"] == option.default
        assert mlp[name]["maximum" if option.high < 1e9 else "exclusiveMinimum"] is not None
    assert mlp["hidden"] == {**mlp["hidden"], "minimum": 1, "maximum": 1024, "default": 32}


def test_learner_is_a_union_by_method_or_the_kinds_default(schema):
    components = schema["components"]["schemas"]
    union = components["LearnerMethod"]
    assert set(union["discriminator"]["mapping"]) == set(LEARNERS)
    pgpe = components["PgpeLearner"]["properties"]
    assert set(pgpe) == {"method", "seed", *LEARNERS["pgpe"].OPTIONS}
    # null or left out: newton for a model linear in its parameters (arx), else adam
    assert pgpe["optimizer"]["anyOf"][0] == {"type": "string", "enum": ["adam", "clipup", "newton"]}
    assert pgpe["optimizer"]["anyOf"][1] == {"type": "null"}
    assert pgpe["window"]["anyOf"][0] == {"type": "integer", "minimum": 8, "maximum": 100000}
    default = components["DefaultLearner"]
    assert default["properties"]["method"] == {"type": "null"}
    assert "`gradient` for mlp, arx beyond 128 parameters" in default["description"]
    assert "`kalman` for arx up to 128 parameters" in default["description"]
    arx = components["ArxModel"]
    assert arx["x-default-learner"] == "kalman"
    assert arx["x-default-learner-beyond"] == {"parameters": 128, "method": "gradient"}
    assert "x-default-learner-beyond" not in components["MlpModel"]
    learner = components["TwinCreate"]["properties"]["learner"]
    assert {"type": "null"} in learner["anyOf"]  # `learner: null` or left out: the default


def test_examples_are_the_readmes(schema):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    components = schema["components"]["schemas"]
    twin = components["TwinCreate"]["examples"][0]
    assert '"name": "hx-1", "inputs": ["Q", "T_amb"], "outputs": ["T"]' in readme
    assert '"params": {"R": 0.07}, "bounds": {"R": [0.005, 0.5]}' in readme
    assert twin["inputs"] == ["Q", "T_amb"] and twin["model"]["params"] == {"R": 0.07}
    body = schema["paths"]["/twins/{twin_id}/observations"]["post"]["requestBody"]["content"]
    row = body["application/json"]["example"]["observations"][0]
    assert row["ts"] in readme and set(row["inputs"]) == {"Q", "T_amb"}
    assert body["text/csv"]["example"].split("\n")[0] == "ts,Q,T_amb,T"
    assert components["PredictRequest"]["examples"][0]["inputs"][0] == {"Q": 200, "T_amb": 20}


def test_the_examples_are_accepted_by_the_service(client):
    """What the schema shows works as shown (the README's twin, rows and what-if)."""
    schema = client.get("/openapi.json").json()
    twin = schema["components"]["schemas"]["TwinCreate"]["examples"][0]
    created = client.post("/twins", json=twin)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/twins/{created.json()['id']}"
    body = schema["paths"]["/twins/{twin_id}/observations"]["post"]["requestBody"]["content"]
    url = f"/twins/{created.json()['id']}/observations"
    posted = client.post(url, json=body["application/json"]["example"])
    assert posted.status_code == 202 and posted.json()["accepted"] == 2, posted.text
    csv = body["text/csv"]["example"]
    posted = client.post(url, content=csv, headers={"content-type": "text/csv"})
    assert posted.status_code == 202, posted.text


@pytest.mark.parametrize(
    "learner",
    [None, {}, {"method": None}, {"seed": 4}, {"method": None, "popsize": 8}],
)
def test_a_learner_without_a_method_takes_the_kinds_default_and_names_it(client, learner):
    spec = {**SPEC, "learner": learner}
    response = client.post("/twins", json={"name": "default", **spec})
    assert response.status_code == 201, response.text
    default = model_class(SPEC["model"]["kind"]).default_learner()
    assert response.json()["spec"]["learner"]["method"] == default
    stored = client.get(f"/twins/{response.json()['id']}").json()["spec"]["learner"]
    assert stored == {**(learner or {}), "method": default, "seed": stored["seed"]}


def test_spec_errors_keep_their_messages(client):
    bad = {**SPEC, "model": {"kind": "thermal_rc", "params": {"R": -1}}}
    response = client.post("/twins", json={"name": "bad", **bad})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "model.params.R", "message": "must be positive"}]
    response = client.post("/twins", json={"name": "bad", **{**SPEC, "model": 5}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "model"


def test_a_key_id_past_64_bits_is_422_not_a_server_error(client):
    response = client.delete(f"/keys/{2**70}")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "key_id"
