"""TemporalSettings reads the TEMPORAL_* variables as the temporal CLI does (envconfig),
with the ledger's earlier names as fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from ledger.temporal.settings import TemporalSettings, standard_environment

NO_FILE = {"TEMPORAL_CONFIG_FILE": "/nonexistent/temporal.toml"}
"""No configuration file is read (the default location may exist on this machine)."""


def settings(**env: str) -> TemporalSettings:
    return TemporalSettings.from_env({**NO_FILE, **env})


def tls_of(value: TemporalSettings) -> object:
    return value.connect_config().get("tls")


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, Path]:
    files = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    for name, path in files.items():
        path.write_bytes(f"-- {name} --".encode())
    return files


def test_defaults() -> None:
    value = settings()
    assert (value.address, value.namespace, value.api_key, value.tls) == (
        "localhost:7233",
        "default",
        None,
        None,
    )
    assert value.connect_config() == {"target_host": "localhost:7233", "namespace": "default"}
    assert value.connect_kwargs() == {"namespace": "default"}


def test_address_namespace_and_api_key() -> None:
    value = settings(
        TEMPORAL_ADDRESS="temporal:7233", TEMPORAL_NAMESPACE="ns", TEMPORAL_API_KEY="k"
    )
    assert (value.address, value.namespace, value.api_key) == ("temporal:7233", "ns", "k")
    # An API key turns TLS on, with the system's roots.
    assert value.connect_config() == {
        "target_host": "temporal:7233",
        "namespace": "ns",
        "api_key": "k",
        "tls": True,
    }


def test_empty_variables_count_as_unset() -> None:
    value = settings(TEMPORAL_ADDRESS="", TEMPORAL_NAMESPACE="", TEMPORAL_TLS="")
    assert (value.address, value.namespace) == ("localhost:7233", "default")
    assert tls_of(value) is None


@pytest.mark.parametrize("flag", ["true", "1"])
def test_tls_on(flag: str) -> None:
    tls = tls_of(settings(TEMPORAL_TLS=flag))
    assert isinstance(tls, TLSConfig)
    assert (tls.client_cert, tls.server_root_ca_cert) == (None, None)


def test_tls_off_wins_over_an_api_key() -> None:
    assert tls_of(settings(TEMPORAL_TLS="false", TEMPORAL_API_KEY="k")) is False


def test_standard_tls_paths(pems: dict[str, Path]) -> None:
    value = settings(
        TEMPORAL_TLS_CLIENT_CERT_PATH=str(pems["cert"]),
        TEMPORAL_TLS_CLIENT_KEY_PATH=str(pems["key"]),
        TEMPORAL_TLS_SERVER_CA_CERT_PATH=str(pems["ca"]),
        TEMPORAL_TLS_SERVER_NAME="temporal.example",
    )
    tls = tls_of(value)
    assert isinstance(tls, TLSConfig)
    assert tls.client_cert == b"-- cert --"
    assert tls.client_private_key == b"-- key --"
    assert tls.server_root_ca_cert == b"-- ca --"
    assert tls.domain == "temporal.example"


def test_legacy_tls_names_are_fallbacks(pems: dict[str, Path]) -> None:
    tls = tls_of(
        settings(
            TEMPORAL_TLS_CLIENT_CERT=str(pems["cert"]),
            TEMPORAL_TLS_CLIENT_KEY=str(pems["key"]),
            TEMPORAL_TLS_SERVER_ROOT_CA=str(pems["ca"]),
        )
    )
    assert isinstance(tls, TLSConfig)  # mTLS on, as the ledger always did.
    assert (tls.client_cert, tls.client_private_key, tls.server_root_ca_cert) == (
        b"-- cert --",
        b"-- key --",
        b"-- ca --",
    )


def test_standard_names_win_over_legacy_ones(pems: dict[str, Path]) -> None:
    env = standard_environment(
        {
            "TEMPORAL_TLS_CLIENT_CERT": "/legacy/cert.pem",
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pems["cert"]),
            "TEMPORAL_TLS_SERVER_ROOT_CA": "/legacy/ca.pem",
            "TEMPORAL_TLS_SERVER_CA_CERT_DATA": "-- inline ca --",
            "PATH": "",
        }
    )
    assert env == {
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pems["cert"]),
        "TEMPORAL_TLS_SERVER_CA_CERT_DATA": "-- inline ca --",
        "PATH": "",
    }
    tls = tls_of(TemporalSettings.from_env({**NO_FILE, **env}))
    assert isinstance(tls, TLSConfig)
    assert (tls.client_cert, tls.server_root_ca_cert) == (b"-- cert --", b"-- inline ca --")


def test_grpc_metadata() -> None:
    value = settings(TEMPORAL_GRPC_META_X_TENANT="t1")
    assert value.connect_config()["rpc_metadata"] == {"x-tenant": "t1"}


CONFIG = """
[profile.default]
address = "file-default:7233"
namespace = "from-file"

[profile.prod]
address = "prod:7233"
namespace = "prod"
api_key = "file-key"
"""


def test_config_file_and_profile(tmp_path: Path) -> None:
    path = tmp_path / "temporal.toml"
    path.write_text(CONFIG)
    default = TemporalSettings.from_env({"TEMPORAL_CONFIG_FILE": str(path)})
    assert (default.address, default.namespace) == ("file-default:7233", "from-file")
    prod = TemporalSettings.from_env(
        {"TEMPORAL_CONFIG_FILE": str(path), "TEMPORAL_PROFILE": "prod"}
    )
    assert (prod.address, prod.namespace, prod.api_key) == ("prod:7233", "prod", "file-key")
    # The environment overrides the file, as for the temporal CLI.
    overridden = TemporalSettings.from_env(
        {"TEMPORAL_CONFIG_FILE": str(path), "TEMPORAL_PROFILE": "prod", "TEMPORAL_NAMESPACE": "x"}
    )
    assert (overridden.address, overridden.namespace) == ("prod:7233", "x")


def test_an_unknown_profile_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "temporal.toml"
    path.write_text(CONFIG)
    with pytest.raises(Exception, match="nope"):
        TemporalSettings.from_env({"TEMPORAL_CONFIG_FILE": str(path), "TEMPORAL_PROFILE": "nope"})


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", NO_FILE["TEMPORAL_CONFIG_FILE"])
    monkeypatch.setenv("TEMPORAL_ADDRESS", "from-process:7233")
    monkeypatch.delenv("TEMPORAL_PROFILE", raising=False)
    assert TemporalSettings.from_env().address == "from-process:7233"


def test_settings_built_in_code_connect_as_given() -> None:
    value = TemporalSettings(address="temporal:7233", namespace="ns")
    assert value.connect_config() == {"target_host": "temporal:7233", "namespace": "ns"}
    assert TemporalSettings.from_profile(value.profile) == value
