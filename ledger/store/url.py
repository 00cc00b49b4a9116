"""Configuration: one URL-style setting, with the library's own variables underneath.

``LEDGER_URL`` picks the store:

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: the embedded
  default. Without ``LEDGER_URL`` the ledger uses ``sqlite:///`` +
  ``$XDG_DATA_HOME/execution-ledger/ledger.db`` (``~/.local/share/...``).
- ``postgresql://user:password@host:port/dbname?schema=ledger``: production,
  psycopg 3 with a pool (``POSTGRES_POOL_SIZE``, ``POSTGRES_MAX_OVERFLOW``,
  ``POSTGRES_CONNECT_TIMEOUT``, ``POSTGRES_LOCK_TIMEOUT`` ... are the library's own
  variables and are read from the environment as usual). The schema (default
  ``public``) is created when missing. Ids are stored as text.
- ``memory://``: in-process only, for tests and experiments.

``LEDGER_CIPHER_KEY`` (a base64 AES key, see ``ledger keygen``) encrypts every
stored event with the library's AES cipher, so the callback token is never at
rest in the clear; ``LEDGER_CIPHER_OLD_KEYS`` (comma-separated) keeps events
written under earlier keys readable after a rotation (:mod:`ledger.cipher`).

The URL becomes the library's variables (``PERSISTENCE_MODULE``,
``SQLITE_DBNAME``, ``POSTGRES_*``, ``CIPHER_TOPIC``, ``CIPHER_KEY``), which are
passed to every application and projection the ledger constructs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ledger.contract.errors import ConfigurationError
from ledger.store.keys import decode_key

LEDGER_URL = "LEDGER_URL"
LEDGER_CIPHER_KEY = "LEDGER_CIPHER_KEY"
LEDGER_CIPHER_OLD_KEYS = "LEDGER_CIPHER_OLD_KEYS"


def default_url() -> str:
    """The embedded default: an SQLite file in the user's data folder."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return "sqlite:///" + str(Path(data_home) / "execution-ledger" / "ledger.db")


@dataclass(frozen=True)
class StoreConfig:
    """A parsed ``LEDGER_URL``: which store, and the library variables that open it."""

    url: str
    scheme: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def creates_tables(self) -> bool:
        """False when ``CREATE_TABLE`` (the library's variable) says not to create
        anything: runtime roles under least privilege (see :mod:`ledger.roles`)."""
        value = self.env.get("CREATE_TABLE", "y").strip().lower()
        return value not in ("n", "no", "f", "false", "off", "0")

    @property
    def is_postgres(self) -> bool:
        return self.scheme == "postgresql"

    @property
    def is_sqlite(self) -> bool:
        return self.scheme == "sqlite"

    def component_env(self, component: str) -> dict[str, str]:
        """The library variables for a follower (``dispatcher``, ``views``) of this store.

        On PostgreSQL it shares the ledger's database and schema (its tables are
        named after it). On SQLite, where the library names every application's
        table ``stored_events``, it gets a file of its own beside the ledger's
        (``ledger.db`` -> ``ledger.dispatcher.db``).
        """
        env = dict(self.env)
        if self.is_sqlite and env["SQLITE_DBNAME"] != ":memory:":
            path = Path(env["SQLITE_DBNAME"])
            env["SQLITE_DBNAME"] = str(path.with_name(f"{path.stem}.{component}{path.suffix}"))
        return env

    @property
    def redacted_url(self) -> str:
        """The URL with any password replaced by ``***``."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()


def parse_url(url: str | None = None, *, cipher_key: str | None = None) -> StoreConfig:
    """Parses ``url`` (default ``$LEDGER_URL``, else :func:`default_url`)."""
    url = url or os.environ.get(LEDGER_URL) or default_url()
    if cipher_key is None:
        cipher_key = os.environ.get(LEDGER_CIPHER_KEY) or None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    env: dict[str, str]
    if scheme == "sqlite":
        path = unquote(parts.path)
        if parts.netloc:
            raise ConfigurationError(
                f"LEDGER_URL {url!r}: an SQLite URL has no host; write sqlite:///path/to/file.db"
            )
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ConfigurationError(f"LEDGER_URL {url!r}: the SQLite file path is missing")
        if path != ":memory:":
            path = str(Path(path).expanduser())
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            # Wakes followers in this process after each write (ledger/store/sqlite_wakeups.py).
            "APPLICATION_RECORDER_TOPIC": (
                "ledger.store.sqlite_wakeups:WakingSQLiteApplicationRecorder"
            ),
        }
    elif scheme in ("postgresql", "postgres"):
        scheme = "postgresql"
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"schema"}
        if unknown:
            raise ConfigurationError(
                f"LEDGER_URL: unknown PostgreSQL URL parameter(s) {sorted(unknown)}; "
                "only 'schema' is read (tune the pool with the POSTGRES_* variables)"
            )
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname:
            raise ConfigurationError(
                "LEDGER_URL: the PostgreSQL URL needs a database name "
                "(postgresql://user@host:5432/dbname)"
            )
        try:
            port = parts.port or 5432
        except ValueError as e:
            raise ConfigurationError(f"LEDGER_URL: bad port: {e}") from None
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(port),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_SCHEMA": _schema(query.get("schema", "public")),
            # One round trip per write, keeping the table lock's ordering guarantee.
            "APPLICATION_RECORDER_TOPIC": "ledger.store.recorder:LedgerPostgresApplicationRecorder",
            "PROCESS_RECORDER_TOPIC": "ledger.store.recorder:LedgerPostgresProcessRecorder",
        }
    elif scheme == "memory":
        env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    else:
        raise ConfigurationError(
            f"LEDGER_URL {url!r}: unknown scheme {parts.scheme!r}; "
            "expected sqlite:///path, postgresql://... or memory://"
        )
    env["ORIGINATOR_ID_TYPE"] = "text"
    if os.environ.get("CREATE_TABLE"):
        env["CREATE_TABLE"] = os.environ["CREATE_TABLE"]
    if cipher_key:
        decode_key(cipher_key)
        env["CIPHER_TOPIC"] = "ledger.store.cipher:RotatingAESCipher"
        env["CIPHER_KEY"] = cipher_key
        old_keys = os.environ.get(LEDGER_CIPHER_OLD_KEYS)
        if old_keys:
            for old_key in old_keys.split(","):
                if old_key.strip():
                    decode_key(old_key, setting=LEDGER_CIPHER_OLD_KEYS)
            env["CIPHER_OLD_KEYS"] = old_keys
    return StoreConfig(url=url, scheme=scheme, env=env)


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _schema(name: str) -> str:
    if not _SCHEMA_NAME.fullmatch(name):
        raise ConfigurationError(
            f"LEDGER_URL: schema {name[:80]!r} is not a plain lowercase name "
            "(a-z, 0-9 and _, at most 63, not starting with a digit): write ?schema=ledger"
        )
    return name


def library_setting(name: str) -> str | None:
    """One of the ``eventsourcing`` library's variables, read as the library reads it:
    from the environment, an empty value meaning unset."""
    value = os.environ.get(name)
    return value if value else None


def library_number(name: str, default: float) -> float:
    """A numeric library variable (:func:`library_setting`), or ``default`` when unset;
    anything but a number is a :class:`~ledger.contract.errors.ConfigurationError`."""
    value = library_setting(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value[:40]!r} is not a number") from None
