"""Where the dispatcher finds Temporal (``TEMPORAL_*`` settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TemporalSettings:
    """Where the dispatcher finds Temporal: ``TEMPORAL_ADDRESS`` (default
    ``localhost:7233``), ``TEMPORAL_NAMESPACE`` (``default``), and optionally
    ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS`` (``true`` for server-verified TLS),
    ``TEMPORAL_TLS_CLIENT_CERT`` / ``TEMPORAL_TLS_CLIENT_KEY`` (paths, mTLS) and
    ``TEMPORAL_TLS_SERVER_ROOT_CA`` (path)."""

    address: str = "localhost:7233"
    namespace: str = "default"
    api_key: str | None = None
    tls: bool = False
    client_cert: str | None = None
    client_key: str | None = None
    server_root_ca: str | None = None

    @classmethod
    def from_env(cls) -> TemporalSettings:
        env = os.environ
        return cls(
            address=env.get("TEMPORAL_ADDRESS") or "localhost:7233",
            namespace=env.get("TEMPORAL_NAMESPACE") or "default",
            api_key=env.get("TEMPORAL_API_KEY") or None,
            tls=(env.get("TEMPORAL_TLS") or "").lower() in ("1", "true", "yes"),
            client_cert=env.get("TEMPORAL_TLS_CLIENT_CERT") or None,
            client_key=env.get("TEMPORAL_TLS_CLIENT_KEY") or None,
            server_root_ca=env.get("TEMPORAL_TLS_SERVER_ROOT_CA") or None,
        )

    def connect_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``temporalio.client.Client.connect`` (beside the address)."""
        from temporalio.service import TLSConfig

        kwargs: dict[str, object] = {"namespace": self.namespace}
        if self.api_key:
            kwargs["api_key"] = self.api_key
        if self.tls or self.client_cert or self.server_root_ca:

            def read(path: str | None) -> bytes | None:
                return Path(path).read_bytes() if path else None

            kwargs["tls"] = TLSConfig(
                server_root_ca_cert=read(self.server_root_ca),
                client_cert=read(self.client_cert),
                client_private_key=read(self.client_key),
            )
        elif self.api_key:
            kwargs["tls"] = True
        return kwargs
