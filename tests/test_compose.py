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
    assert {"postgres", "temporal", "dispatcher", "views"} <= set(services)
    assert services["dispatcher"]["command"] == ["dispatcher", "run"]
    assert services["views"]["command"] == ["projections", "run"]
    assert (ROOT / "Dockerfile").read_text().count("ENTRYPOINT") == 1


def test_every_variable_the_project_services_set_is_read_by_the_project() -> None:
    code = "\n".join(path.read_text() for path in SOURCES)
    for name in ("dispatcher", "views"):
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
