"""Where the ledger's processes find Temporal: the ``TEMPORAL_*`` settings.

They are read by :mod:`temporalio.envconfig`, exactly as the ``temporal`` CLI
reads them: a profile (``TEMPORAL_PROFILE``, else ``default``) of the TOML
configuration file (``TEMPORAL_CONFIG_FILE``, else the default location, when
it exists), overridden by the environment: ``TEMPORAL_ADDRESS``,
``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS``,
``TEMPORAL_TLS_CLIENT_CERT_PATH`` / ``_DATA``, ``TEMPORAL_TLS_CLIENT_KEY_PATH`` /
``_DATA``, ``TEMPORAL_TLS_SERVER_CA_CERT_PATH`` / ``_DATA``,
``TEMPORAL_TLS_SERVER_NAME``, ``TEMPORAL_GRPC_META_*``. Setting a certificate,
a key, a server name or ``TEMPORAL_API_KEY`` turns TLS on unless
``TEMPORAL_TLS`` is ``false``.

Two departures, both older than envconfig in this project:

- the ledger's earlier names still work, as fallbacks for the standard ones:
  ``TEMPORAL_TLS_CLIENT_CERT`` (for ``TEMPORAL_TLS_CLIENT_CERT_PATH``),
  ``TEMPORAL_TLS_CLIENT_KEY`` (``TEMPORAL_TLS_CLIENT_KEY_PATH``) and
  ``TEMPORAL_TLS_SERVER_ROOT_CA`` (``TEMPORAL_TLS_SERVER_CA_CERT_PATH``);
- a ``TEMPORAL_*`` variable set to the empty string counts as unset (as a
  compose file's ``${VAR:-}`` leaves it), where envconfig would take an empty
  ``TEMPORAL_TLS`` to mean TLS on.

Without any of them: ``localhost:7233``, namespace ``default``, no TLS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS, ClientConnectConfig

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"

STANDARD_VARIABLES = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "TEMPORAL_TLS_SERVER_NAME",
    "TEMPORAL_PROFILE",
    "TEMPORAL_CONFIG_FILE",
)
"""The main variables envconfig reads (there are more: ``*_DATA``, ``TEMPORAL_GRPC_META_*``)."""

LEGACY_VARIABLES = {
    "TEMPORAL_TLS_CLIENT_CERT": "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_KEY": "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_SERVER_ROOT_CA": "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
}
"""The ledger's earlier names, each a fallback for the standard one it maps to
(used only when neither that one nor its ``_DATA`` twin is set)."""


def standard_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` as envconfig should read it: empty ``TEMPORAL_*`` values dropped,
    and the ledger's earlier names turned into the standard ones they stand for."""
    env = {k: v for k, v in environ.items() if v or not k.startswith("TEMPORAL_")}
    for legacy, standard in LEGACY_VARIABLES.items():
        twin = standard.removesuffix("_PATH") + "_DATA"
        if legacy in env and standard not in env and twin not in env:
            env[standard] = env[legacy]
        env.pop(legacy, None)
    return env


@dataclass(frozen=True)
class TemporalSettings:
    """Where to find Temporal, and how to talk to it (see the module's doc).

    Build it with :meth:`from_env` (or :meth:`from_profile`); connect with
    ``Client.connect(**settings.connect_config())``.
    """

    address: str = DEFAULT_ADDRESS
    """``host:port`` of the Temporal frontend."""
    namespace: str = DEFAULT_NAMESPACE
    api_key: str | None = None
    tls: ClientConfigTLS | None = None
    """TLS as configured (``None``: not configured, so off unless ``api_key`` is set)."""
    grpc_meta: Mapping[str, str] = field(default_factory=dict)
    """gRPC headers sent with every call (``TEMPORAL_GRPC_META_*``)."""

    @classmethod
    def from_profile(cls, profile: ClientConfigProfile) -> TemporalSettings:
        """The settings of an envconfig profile, with the defaults where it has none."""
        return cls(
            address=profile.address or DEFAULT_ADDRESS,
            namespace=profile.namespace or DEFAULT_NAMESPACE,
            api_key=profile.api_key or None,
            tls=profile.tls,
            grpc_meta=dict(profile.grpc_meta),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TemporalSettings:
        """The settings of ``environ`` (the process's environment by default) and of
        the configuration file it points to. Raises when ``TEMPORAL_PROFILE`` names
        a profile the file lacks, or a certificate path cannot be read."""
        env = standard_environment(os.environ if environ is None else environ)
        return cls.from_profile(ClientConfigProfile.load(override_env_vars=env))

    @property
    def profile(self) -> ClientConfigProfile:
        """These settings as an envconfig profile."""
        return ClientConfigProfile(
            address=self.address,
            namespace=self.namespace,
            api_key=self.api_key,
            tls=self.tls,
            grpc_meta=self.grpc_meta,
        )

    def connect_config(self) -> ClientConnectConfig:
        """Keyword arguments for ``temporalio.client.Client.connect``, the address
        (``target_host``) included."""
        return self.profile.to_client_connect_config()

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Client.connect`` beside the address."""
        return {k: v for k, v in self.connect_config().items() if k != "target_host"}
