"""``ledger keys list|add|encrypt``: the cipher keys a store knows (by check value).

A store records whether its events are encrypted and a check value of each key that
may write them (:mod:`ledger.store.keys`); opening it with other settings is refused.
These commands are run with ``LEDGER_CIPHER_KEY`` (and ``LEDGER_CIPHER_OLD_KEYS``) set
as the store expects, except ``encrypt``, run on a plaintext store without a key.
A key is printed only when this command made it, once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Annotated

import typer

from ledger.application import open_ledger_with
from ledger.cli._app import JsonOption, UrlOption, errors, store_config
from ledger.cli._render import out, print_json
from ledger.store.keys import StoreKeys, check_value, decode_key

keys_app = typer.Typer(help="Cipher keys: list, add, encrypt.", no_args_is_help=True)

KeyArgument = Annotated[
    str | None,
    typer.Argument(help="The key (base64, as `ledger keygen` prints); default: a new one."),
]


def _key(given: str | None) -> tuple[str, bool]:
    if given is not None:
        decode_key(given, setting="KEY")
        return given.strip(), False
    from eventsourcing.cipher import AESCipher

    return AESCipher.create_key(32), True


@keys_app.command("list")
def keys_list(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """The check values of the keys this store knows, with when each was added."""
    with errors():
        ledger = open_ledger_with(store_config(url), cache=False, must_exist=True)
        try:
            known = ledger.keys.known()
        finally:
            ledger.close()
    shown = [{"check_value": value, "added_at": added} for value, added in known]
    if as_json:
        print_json(shown)
        return
    if not shown:
        out.print("this store's events are not encrypted (no keys)")
    for row in shown:
        out.print(f"{row['check_value']}  added {row['added_at']}")


@keys_app.command("add")
def keys_add(key: KeyArgument = None, url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Register a new key, run with a key the store knows; then make it LEDGER_CIPHER_KEY
    and move the old one to LEDGER_CIPHER_OLD_KEYS (rotation)."""
    with errors():
        new_key, made = _key(key)
        value = _in_every_record(url, lambda keys: keys.add(new_key))
    _report("registered", value, new_key if made else None, as_json)


@keys_app.command("encrypt")
def keys_encrypt(
    key: KeyArgument = None, url: UrlOption = None, as_json: JsonOption = False
) -> None:
    """Turn encryption on for a store whose events are not encrypted (run without
    LEDGER_CIPHER_KEY): events already stored stay as they are and stay readable; new
    ones are encrypted with the key, which every process must then have."""
    with errors():
        new_key, made = _key(key)
        value = _in_every_record(url, lambda keys: keys.encrypt(new_key))
    _report("encryption is on; key", value, new_key if made else None, as_json)


def _in_every_record(url: str | None, change: Callable[[StoreKeys], str]) -> str:
    """Applies ``change`` to the key record of the ledger and of the dispatcher's log
    (its own record on SQLite, the same one on PostgreSQL); the ledger's answer."""
    from projections.dispatch.log import DispatcherLog

    with ExitStack() as stack:
        config = store_config(url)
        ledger = open_ledger_with(config, cache=False, must_exist=True)
        stack.callback(ledger.close)
        log = DispatcherLog(config.component_env("dispatcher"))
        stack.callback(log.close)
        value = change(ledger.keys)
        change(log.keys)
        return value


def _report(what: str, value: str, made: str | None, as_json: bool) -> None:
    assert value == check_value(made) if made else True
    if as_json:
        print_json({"check_value": value, **({"key": made} if made else {})})
        return
    out.print(f"{what} {value}")
    if made:
        out.print(f"new key (shown once; set it as LEDGER_CIPHER_KEY): {made}")
