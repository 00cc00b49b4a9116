"""docker-compose.yml cannot run here (no Docker engine): check it parses and is wired right."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ledger.store.url import parse_url
from ledger.temporal.settings import TemporalSettings

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*ROOT.joinpath("ledger").rglob("*.py"), *ROOT.joinpath("projections").rglob("*.py")]
LIBRARY_VARIABLES = {"POSTGRES_POOL_SIZE"}  # read by the eventsourcing library itself


def _compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def test_compose_has_the_services() -> None:
    services = _compose()["services"]
    assert {"postgres", "setup", "temporal", "dispatcher", "views", "serve"} <= set(services)
    assert services["dispatcher"]["command"] == ["dispatcher", "run"]
    assert services["views"]["command"] == ["projections", "run"]
    assert (ROOT / "Dockerfile").read_text().count("ENTRYPOINT") == 1


def test_every_variable_the_project_services_set_is_read_by_the_project() -> None:
    code = "\n".join(path.read_text() for path in SOURCES)
    for name in ("dispatcher", "views", "serve"):
        for variable in _compose()["services"][name]["environment"]:
            if variable in LIBRARY_VARIABLES:
                continue
            assert re.search(rf"[\"']{variable}[\"']", code), f"{variable} is not read"


def test_the_compose_urls_parse() -> None:
    environment = _compose()["services"]["dispatcher"]["environment"]
    config = parse_url(environment["LEDGER_URL"], cipher_key="")
    assert config.is_postgres
    assert config.env["POSTGRES_HOST"] == "postgres"
    assert config.env["POSTGRES_SCHEMA"] == "ledger"
    assert TemporalSettings(address=environment["TEMPORAL_ADDRESS"]).address == "temporal:7233"


RUNTIME = ("dispatcher", "views", "serve")


def test_a_one_shot_setup_runs_first_and_runtime_services_create_nothing() -> None:
    services = _compose()["services"]
    assert "ledger setup" in " ".join(services["setup"]["entrypoint"])
    assert "ledger roles" in " ".join(services["setup"]["entrypoint"])
    for name in RUNTIME:
        service = services[name]
        assert service["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
        environment = service["environment"]
        assert environment["CREATE_TABLE"] == "false"
        config = parse_url(environment["LEDGER_URL"], cipher_key="")
        assert config.env["POSTGRES_USER"].startswith("ledger_app_"), name  # Never the owner.
        assert config.env["POSTGRES_SCHEMA"] == "ledger"
    assert services["serve"]["command"][0] == "serve"
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    for name in RUNTIME:
        user = parse_url(services[name]["environment"]["LEDGER_URL"], cipher_key="").env[
            "POSTGRES_USER"
        ]
        assert f"CREATE ROLE {user} LOGIN" in init


def test_no_host_port_clash_persistent_temporal_and_a_small_build_context() -> None:
    services = _compose()["services"]
    assert services["postgres"]["ports"] == ["${LEDGER_PG_PORT:-127.0.0.1::5432}:5432"]
    assert any("/data" in v for v in services["temporal"]["volumes"])
    assert "--db-filename" in services["temporal"]["command"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
