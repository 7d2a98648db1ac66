"""compose.yaml describes a layout that can run: PostgreSQL, the API and two workers, each
service's command a real `tandem` subcommand with options that exist, one database URL that
names the PostgreSQL service and its credentials, and an image built from the Dockerfile."""

from pathlib import Path

import pytest
import typer
import yaml
from sqlalchemy.engine import make_url

from app.cli import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def tandem_services(compose) -> dict[str, dict]:
    return {
        name: s
        for name, s in compose["services"].items()
        if s.get("command", [None])[0] == "tandem"
    }


def test_compose_runs_postgres_the_api_without_its_worker_and_two_workers(compose):
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["api"]["command"][:2] == ["tandem", "serve"]
    assert "--no-worker" in services["api"]["command"]
    assert services["worker"]["command"] == ["tandem", "worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["migrate"]["command"] == ["tandem", "migrate"]
    for name in ("api", "worker"):
        needs = services[name]["depends_on"]["migrate"]["condition"]
        assert needs == "service_completed_successfully"


def test_every_tandem_command_and_option_exists(compose):
    root = typer.main.get_command(cli)
    for name, service in tandem_services(compose).items():
        _, sub, *args = service["command"]
        assert sub in root.commands, f"{name}: no `tandem {sub}`"
        options = {o for p in root.commands[sub].params for o in p.opts + p.secondary_opts}
        for arg in args:
            if arg.startswith("--"):
                assert arg in options, f"{name}: `tandem {sub}` has no option {arg}"


def test_one_database_url_naming_the_postgres_service_and_its_credentials(compose):
    db = compose["services"]["postgres"]["environment"]
    for name, service in tandem_services(compose).items():
        url = make_url(service["environment"]["TANDEM_DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg", name
        assert url.host == "postgres" and url.port == 5432, name
        assert (url.username, url.password, url.database) == (
            db["POSTGRES_USER"],
            db["POSTGRES_PASSWORD"],
            db["POSTGRES_DB"],
        ), name


def test_the_image_is_built_from_the_dockerfile_with_the_tandem_command(compose):
    for name, service in tandem_services(compose).items():
        assert service["build"] == ".", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install ." in dockerfile  # installs the `tandem` entry point
    for folder in ("app", "twin", "migrations"):
        assert f"COPY {folder} " in dockerfile
