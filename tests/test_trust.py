"""Issue 10's defects, each with a test that failed before its fix (beside
``tests/test_keys.py`` for the cipher keys)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.cipher import AESCipher

from ledger import (
    AgentExecution,
    AgentExecutionSpec,
    InvalidResourceError,
    Ledger,
    WorkflowExecution,
    WorkflowExecutionSpec,
    open_ledger,
)
from ledger.store.keys import check_value


def test_a_refused_create_names_no_id_the_caller_did_not_give(ledger_app: Ledger) -> None:
    with pytest.raises(InvalidResourceError) as refused:
        ledger_app.create(AgentExecution(spec=AgentExecutionSpec(agent_id="a")))
    assert str(refused.value).startswith("the new execution: an AgentExecution needs")
    assert "aex-" not in str(refused.value)
    assert refused.value.execution_id == ""
    given = WorkflowExecution(spec=WorkflowExecutionSpec())
    given.metadata.id = "wex-mine"
    with pytest.raises(InvalidResourceError, match=r"^execution 'wex-mine': a WorkflowExecution"):
        ledger_app.create(given)
    assert ledger_app.recorder.max_notification_id() in (None, 0)


# Through the real entry point: one `error:` line, the documented exit code.


def _ledger(*args: str, url: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    environment.update({"LEDGER_URL": url, "COLUMNS": "200", **env})
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def _one_error_line(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


AGENT_YAML = "kind: AgentExecution\nspec:\n  agent_id: a\n  message: hi\n"


@pytest.fixture
def created(store_url: str, tmp_path: Path) -> str:
    """A store with one execution; returns its id."""
    (tmp_path / "a.yaml").write_text(AGENT_YAML)
    done = _ledger("create", "a.yaml", "--json", url=store_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["id"])


def test_a_wrong_key_on_the_command_line_is_one_line_and_writes_nothing(
    store_url: str, tmp_path: Path
) -> None:
    key = AESCipher.create_key(32)
    (tmp_path / "a.yaml").write_text(AGENT_YAML)
    assert (
        _ledger("create", "a.yaml", url=store_url, cwd=tmp_path, LEDGER_CIPHER_KEY=key).returncode
        == 0
    )
    wrong = AESCipher.create_key(32)
    for args in (("create", "a.yaml"), ("list",), ("projections", "rebuild", "status")):
        done = _ledger(*args, url=store_url, cwd=tmp_path, LEDGER_CIPHER_KEY=wrong)
        _one_error_line(done, 1, "does not know")
    _one_error_line(_ledger("list", url=store_url, cwd=tmp_path), 1, "LEDGER_CIPHER_KEY is not set")
    done = _ledger("list", "--json", url=store_url, cwd=tmp_path, LEDGER_CIPHER_KEY=key)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["executions"]) == 1  # Nothing else was written.


def test_a_malformed_key_is_one_line(created: str, store_url: str, tmp_path: Path) -> None:
    done = _ledger("show", created, url=store_url, cwd=tmp_path, LEDGER_CIPHER_KEY="notakey")
    _one_error_line(done, 1, "LEDGER_CIPHER_KEY is not an AES key")


def test_bad_store_urls_are_one_line(tmp_path: Path) -> None:
    bad = "postgresql://postgres@127.0.0.1:5432/postgres?schema=Bad-Schema"
    _one_error_line(_ledger("list", url=bad, cwd=tmp_path), 1, "schema 'Bad-Schema'")
    _one_error_line(_ledger("list", url="memory://", cwd=tmp_path), 1, "memory://")
    proc = "sqlite:////proc/nope/x.db"
    _one_error_line(_ledger("list", url=proc, cwd=tmp_path), 1, "no ledger at")
    _one_error_line(
        _ledger("create", "-", url=proc, cwd=tmp_path), 1
    )  # stdin is empty: an input error, before the store
    done = _ledger("list", url="sqlite:///", cwd=tmp_path, POSTGRES_CONNECT_TIMEOUT="")
    _one_error_line(done, 1)


def test_a_read_creates_no_store(tmp_path: Path) -> None:
    url = "sqlite:///nonexistent-dir/x.db"
    for args in (("list",), ("show", "aex-1"), ("history", "aex-1"), ("audit", "aex-1")):
        _one_error_line(_ledger(*args, url=url, cwd=tmp_path), 1, "no ledger at")
    assert not (tmp_path / "nonexistent-dir").exists()


def test_usage_errors_exit_2(created: str, store_url: str, tmp_path: Path) -> None:
    _one_error_line(_ledger("audit", url=store_url, cwd=tmp_path), 2, "--pending")
    done = _ledger("status", created, "--phase", "bogus", url=store_url, cwd=tmp_path)
    _one_error_line(done, 2, "unknown phase 'bogus'", "IN_PROGRESS")
    done = _ledger("projections", "rebuild", "bogus", url=store_url, cwd=tmp_path)
    _one_error_line(done, 2, "unknown view(s) bogus")


def test_the_same_fact_gets_the_same_message(created: str, store_url: str, tmp_path: Path) -> None:
    shown = _ledger("show", "aex-doesnotexist", url=store_url, cwd=tmp_path)
    audited = _ledger("audit", "aex-doesnotexist", url=store_url, cwd=tmp_path)
    _one_error_line(shown, 1, "does not exist")
    _one_error_line(audited, 1, "does not exist")
    assert shown.stderr == audited.stderr
    _one_error_line(_ledger("audit", created, url=store_url, cwd=tmp_path), 1, "is PENDING")


@pytest.mark.parametrize("token", ["my-plain-text-token", "not base64 at all!!", "YQ=x"])
def test_a_token_given_as_text_must_be_strict_base64(
    token: str, sqlite_url: str, tmp_path: Path
) -> None:
    (tmp_path / "t.yaml").write_text(AGENT_YAML + f"  callback_token: {json.dumps(token)}\n")
    done = _ledger("create", "t.yaml", url=sqlite_url, cwd=tmp_path)
    _one_error_line(done, 1, "spec.callback_token must be base64")
    assert token not in done.stderr  # A bearer credential is never echoed.


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
@pytest.mark.parametrize("padded", [True, False])
def test_a_base64_token_is_taken_in_every_spelling(
    encode: Any, padded: bool, sqlite_url: str, tmp_path: Path
) -> None:
    raw = b"\xfb\xff token bytes \xfe"
    text = encode(raw).decode("ascii")
    text = text if padded else text.rstrip("=")
    (tmp_path / "t.yaml").write_text(AGENT_YAML + f"  callback_token: {json.dumps(text)}\n")
    done = _ledger("create", "t.yaml", "--json", url=sqlite_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with open_ledger(sqlite_url) as app:
        assert app.get(json.loads(done.stdout)["id"]).spec.callback_token == raw


def test_show_tells_how_it_ended(created: str, store_url: str, tmp_path: Path) -> None:
    done = _ledger(
        "fail",
        created,
        "-m",
        "the tool broke",
        "--type",
        "ToolError",
        "--details",
        '{"tool": "search"}',
        url=store_url,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(_ledger("show", created, "--json", url=store_url, cwd=tmp_path).stdout)
    assert shown["ending"] == {
        "phase": "FAILED",
        "error": {"type": "ToolError", "message": "the tool broke", "details": {"tool": "search"}},
    }
    text = _ledger("show", created, url=store_url, cwd=tmp_path).stdout
    assert "ToolError" in text
    assert "tool: search" in text


def test_keys_commands_rotate_and_turn_encryption_on(store_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(AGENT_YAML)
    assert _ledger("create", "a.yaml", url=store_url, cwd=tmp_path).returncode == 0
    turned = _ledger("keys", "encrypt", "--json", url=store_url, cwd=tmp_path)
    assert turned.returncode == 0, turned.stderr
    key = json.loads(turned.stdout)["key"]
    assert (
        _ledger("create", "a.yaml", url=store_url, cwd=tmp_path, LEDGER_CIPHER_KEY=key).returncode
        == 0
    )
    added = _ledger("keys", "add", "--json", url=store_url, cwd=tmp_path, LEDGER_CIPHER_KEY=key)
    assert added.returncode == 0, added.stderr
    new = json.loads(added.stdout)["key"]
    rotated = {"LEDGER_CIPHER_KEY": new, "LEDGER_CIPHER_OLD_KEYS": key}
    assert _ledger("create", "a.yaml", url=store_url, cwd=tmp_path, **rotated).returncode == 0
    listed = _ledger("list", "--json", url=store_url, cwd=tmp_path, **rotated)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["executions"]) == 3  # Clear, old key, new key.
    known = _ledger("keys", "list", "--json", url=store_url, cwd=tmp_path, **rotated)
    assert [k["check_value"] for k in json.loads(known.stdout)] == sorted(
        [check_value(key), check_value(new)]
    )
