"""Hostile and malformed input, fuzzed with hypothesis: the Python API and the CLI.

Every hostile input must end in one of two ways: success (the input was valid
after all), or a typed error. For the Python API that is a
:class:`ledger.UserError` subclass, of the exact type the broken rule names;
for the ``ledger`` CLI it is exit code 1 with exactly one ``error: ...`` line
on stderr and no traceback. Either way a refused input writes nothing: neither
an event (the notification log's last id) nor a secret-value key (the rows of
the vault's ``ledger_secret_keys`` table). No process dies, hangs or eats
memory: the CLI runs in subprocesses with a time limit and a 1 GiB address
space limit, and inputs that could loop forever in-process (cycles, shared
references) are also run in subprocesses.

The documented limits these tests rely on (``ledger/validation.py``,
``ledger/resources.py``):

- a spec is at most ``MAX_SPEC_BYTES`` (256 KiB) on the wire;
- a status patch is at most ``MAX_STATUS_PATCH_BYTES`` (1 MiB) on the wire;
- a completion's output or error details are at most ``MAX_OUTCOME_BYTES``
  (1 MiB), and an error message at most that many bytes of UTF-8;
- labels, annotations and tags: at most ``MAX_LABELS`` (64) entries each;
- ``google.protobuf.Struct`` values (and JSON outputs/details) nest at most
  ``MAX_STRUCT_DEPTH`` (32) levels;
- error types, cancellation reasons and actor names: at most
  ``MAX_TEXT_CHARS`` (4096) characters;
- ``spec.callback_token``: at most ``MAX_CALLBACK_TOKEN_BYTES`` (2048) bytes;
- an id is ``aex-``/``wex-`` and 1 to 63 of ``[0-9a-z_-]``, starting with a
  letter or digit; anything else is an ``InvalidIdError``.

And the behaviours they pin down where the contract leaves a choice:

- unknown *numbers* of enums other than ``phase`` are kept unchanged (proto3
  enums are open and the protos are wire-compatible with the platform's); an
  unknown ``phase`` number, and unknown enum *names* in JSON/YAML, are refused;
- a lone UTF-16 surrogate cannot reach the ledger through a protobuf string
  field (the protobuf runtime refuses it at assignment), but it can through a
  plain ``str`` argument (actor, reason, error type and message, output keys
  and values): those must be refused with a typed error, not a
  ``UnicodeEncodeError`` from the store's encoder.

Hypothesis runs derandomized (no example database), so CI sees the same
examples every time; the PostgreSQL runs use fewer examples than SQLite.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import yaml
from google.protobuf.message import DecodeError
from google.protobuf.struct_pb2 import Struct
from hypothesis import HealthCheck, example, given, settings
from hypothesis import Phase as HypothesisPhase
from hypothesis import strategies as st
from psycopg import sql

from ledger import (
    AgentExecution,
    AgentExecutionSpec,
    AgentExecutionStatus,
    CallbackTokenTooLargeError,
    CreateConflictError,
    ExecutionNotFoundError,
    InvalidIdError,
    InvalidResourceError,
    Ledger,
    LimitExceededError,
    MissingFieldError,
    Phase,
    TerminalPhaseError,
    UnknownKindError,
    UserError,
    WorkflowExecution,
    WorkflowExecutionSpec,
    WorkflowExecutionStatus,
    open_ledger,
)
from ledger.api.commons.v1.execution_value_pb2 import ExecutionValue
from ledger.contract.kinds import API_VERSION, MAX_CALLBACK_TOKEN_BYTES, Resource
from ledger.domain.validation import (
    MAX_LABELS,
    MAX_OUTCOME_BYTES,
    MAX_SPEC_BYTES,
    MAX_STATUS_PATCH_BYTES,
    MAX_STRUCT_DEPTH,
    MAX_TEXT_CHARS,
)
from tests.support.builders import agent_execution, secret_env, workflow_execution

T = TypeVar("T")

LEDGER = str(Path(sys.executable).parent / "ledger")
CLI_TIMEOUT = 120.0
"""A CLI process that has not finished by then is a hang (a failure, not a slow test);
generous, as the suite must pass on a loaded machine."""
BOMB_SECONDS = 5.0
"""Hostile documents (YAML bombs, cycles) must be refused within this time, beyond
what a plain run of the same program started beside them took (so the time an
interpreter takes to start on a loaded machine does not count)."""
HANG_SECONDS = 120.0
"""A hostile run still going by then is killed (a hang)."""
BASELINE = "a plain run (baseline)"
CHILD_MEMORY = 1 << 30
"""Address-space limit of every child process: a memory bomb fails instead of swapping."""

ID_RULE = re.compile(r"(aex|wex)-[0-9a-z][0-9a-z_-]{0,62}")
"""The documented id rule (``ledger.contract.ids.check_id``)."""

HOSTILE_IDS = [
    "aex-x'; DROP TABLE ledger_events;--",
    "wex-1'); DELETE FROM stored_events; --",
    "aex-' OR '1'='1",
    'aex-" OR ""="',
    "aex-$(rm -rf /)",
    "aex-`id`",
    "aex-a; rm -rf /",
    "aex-a && reboot",
    "aex-a|cat /etc/passwd",
    "aex-a\x00b",
    "aex-\x00",
    "aex-abc\n",
    "aex-a\nb",
    "aex-a\r\nb",
    "aex-a\tb",
    "aex-a b",
    "aex-\u0430bc",  # Cyrillic a
    "\u0430ex-abc",  # Cyrillic a in the prefix
    "aex-\uff41bc",  # fullwidth a
    "aex-abc\u200b",  # zero-width space
    "aex-\u202eabc",  # right-to-left override
    "aex-abc\ufeff",
    "aex-\U0001f600",
    "AEX-ABC",
    "aex-ABC",
    "aex-",
    "aex",
    "",
    "-rf",
    "wex-../../etc/passwd",
    "aex-%s%s%n",
    "aex-{0}{1}",
    "aex-" + "a" * 64,
    "aex-_abc",
    "aex--abc",
    "x" * 100_000,
]

MUST_BE_REFUSED_IDS = [i for i in HOSTILE_IDS if not ID_RULE.fullmatch(i)]


def id_is_valid(execution_id: str, prefix: str | None = None) -> bool:
    if not ID_RULE.fullmatch(execution_id):
        return False
    return prefix is None or execution_id.startswith(prefix + "-")


def fresh_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# What a store holds: events and secret-value keys.


@dataclass(frozen=True)
class Snapshot:
    events: int
    vault_keys: int


def vault_keys(url: str) -> int:
    """Rows of the vault's key table (0 when the table does not exist)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        with sqlite3.connect(path) as conn:
            try:
                row = conn.execute("SELECT count(*) FROM ledger_secret_keys").fetchone()
            except sqlite3.OperationalError:
                return 0
        return int(row[0])
    schema = parse_qs(parts.query).get("schema", ["public"])[-1]
    base = parts._replace(query="").geturl()
    with psycopg.connect(base, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT to_regclass(%s)", (f'"{schema}".ledger_secret_keys',)
        ).fetchone()
        if exists is None or exists[0] is None:
            return 0
        counted = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ledger_secret_keys"))
        ).fetchone()
    assert counted is not None
    return int(counted[0])


def snapshot(app: Ledger, url: str) -> Snapshot:
    return Snapshot(app.recorder.max_notification_id() or 0, vault_keys(url))


@dataclass
class Store:
    """A ledger on one store, and what the fuzzers saw (so a run cannot be vacuous)."""

    url: str
    app: Ledger
    is_postgres: bool
    seen: dict[str, int] = field(default_factory=dict)

    def examples(self, sqlite_count: int) -> int:
        return max(8, sqlite_count // 4) if self.is_postgres else sqlite_count

    def count(self, what: str) -> None:
        self.seen[what] = self.seen.get(what, 0) + 1


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    app = open_ledger(store_url)
    try:
        yield Store(store_url, app, store_url.startswith("postgres"))
    finally:
        app.close()


@dataclass
class Refused:
    error: UserError


def attempt(store: Store, action: Callable[[], T]) -> T | Refused:
    """Runs ``action``: a result, or a refusal that wrote nothing.

    Anything but a :class:`UserError` propagates and fails the test with the
    real exception (a ``UnicodeEncodeError`` or an ``OverflowError`` is a bug).
    """
    before = snapshot(store.app, store.url)
    try:
        result = action()
    except UserError as e:
        after = snapshot(store.app, store.url)
        assert after == before, f"a refused command wrote something: {before} -> {after} ({e!r})"
        store.count("refused")
        return Refused(e)
    store.count("accepted")
    return result


def check_refusal(outcome: object, expected: set[type[UserError]]) -> None:
    """``outcome`` is a refusal of exactly one of the ``expected`` types."""
    assert isinstance(outcome, Refused), f"accepted, but expected one of {names(expected)}"
    assert type(outcome.error) in expected, (
        f"refused with {type(outcome.error).__name__} ({outcome.error}), "
        f"expected one of {names(expected)}"
    )
    assert str(outcome.error), "a refusal must say what was wrong"


def names(types: set[type[UserError]]) -> list[str]:
    return sorted(t.__name__ for t in types)


def fuzz_settings(examples: int) -> settings:
    """Bounded and reproducible; no shrinking, so a failure is reported in seconds
    (the explicit tests below give the minimal example of each known problem)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[HypothesisPhase.explicit, HypothesisPhase.reuse, HypothesisPhase.generate],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture,
        ],
    )


# Text strategies.

ODD_UNICODE = [
    "\u202e",  # right-to-left override
    "\u200d",  # zero-width joiner
    "\ufeff",  # byte order mark
    "\U0001f600",
    "e\u0301",  # combining accent
    "\u2028",  # line separator
    "\x00",
    "\x1b[31m",  # terminal escape
    "\uffff",
    "\U0010ffff",
    "'; DROP TABLE ledger_events;--",
    "$(rm -rf /)",
    "%s%n",
    "[red]markup[/red]",
]

proto_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(ODD_UNICODE),
    st.lists(st.sampled_from(ODD_UNICODE), max_size=5).map("".join),
)
"""Any text a protobuf string field accepts (every code point but lone surrogates)."""

surrogate_text = st.builds(
    lambda a, s, b: a + s + b,
    st.text(max_size=3),
    st.characters(categories=["Cs"]),
    st.text(max_size=3),
)
"""Text with a lone surrogate: valid ``str``, not encodable as UTF-8."""


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


# 1. Random bytes as a serialized resource.


def valid_resource_bytes() -> list[bytes]:
    agent: Any = AgentExecution(
        api_version=API_VERSION,
        kind="AgentExecution",
        spec=AgentExecutionSpec(
            agent_id="agent-1",
            message="hello",
            callback_token=b"token:" + bytes(range(40)),
            runtime_env={
                "REGION": ExecutionValue(value="eu"),
                "KEY": ExecutionValue(value="s3cr3t", is_secret=True),
            },
        ),
    )
    agent.metadata.name = "run"
    agent.metadata.labels["team"] = "research"
    agent.metadata.tags.append("t1")
    workflow: Any = WorkflowExecution(
        api_version=API_VERSION,
        kind="WorkflowExecution",
        spec=WorkflowExecutionSpec(
            workflow_id="wf-1", trigger_message="go", trigger_metadata={"source": "test"}
        ),
    )
    return [agent.SerializeToString(), workflow.SerializeToString()]


@st.composite
def serialized_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid serialized resource with random edits."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(draw(st.sampled_from(valid_resource_bytes())))
    for _ in range(draw(st.integers(0, 4))):
        edit = draw(st.sampled_from(["replace", "replace", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if edit == "replace" and data:
            data[position] = draw(st.integers(0, 255))
        elif edit == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete" and data:
            del data[position]
        else:
            del data[position:]
    return bytes(data)


def test_api_random_bytes_as_a_serialized_resource(store: Store) -> None:
    classes: list[type[Resource]] = [AgentExecution, WorkflowExecution]

    @fuzz_settings(store.examples(150))
    @given(data=serialized_bytes(), which=st.sampled_from(classes))
    @example(data=valid_resource_bytes()[0], which=AgentExecution)
    @example(data=valid_resource_bytes()[1], which=WorkflowExecution)
    @example(data=valid_resource_bytes()[1], which=AgentExecution)
    def check(data: bytes, which: type[Resource]) -> None:
        parsed: Any = which()
        try:
            parsed.ParseFromString(data)
        except DecodeError:
            store.count("undecodable")  # The caller's parse failed: nothing reaches the ledger.
            return
        outcome = attempt(store, lambda: store.app.create(parsed))
        if isinstance(outcome, Refused):
            assert isinstance(outcome.error, UserError)
            return
        recorded = store.app.read(outcome.id)
        assert recorded.resource.spec.SerializeToString(
            deterministic=True
        ) == parsed.spec.SerializeToString(deterministic=True)
        assert id_is_valid(outcome.id)

    check()
    assert store.seen.get("accepted", 0) > 0, store.seen
    assert store.seen.get("refused", 0) > 0, store.seen


# 2. Structured resources with hostile field values, against an oracle.


@dataclass
class Built:
    resource: Any
    expected: set[type[UserError]]
    """The errors the broken rules allow; empty means the create must succeed."""
    may_exist: bool = False


def labels(count: int) -> dict[str, str]:
    return {f"k{i}": "v" for i in range(count)}


@st.composite
def built_resources(draw: st.DrawFn) -> Built:
    """A resource whose every dimension is valid or, at a drawn rate, hostile."""
    expected: set[type[UserError]] = set()
    rate = draw(st.sampled_from([0, 1, 1, 3, 10]))  # Tenths of the dimensions made hostile.

    def choose(valid: st.SearchStrategy[T], hostile: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
        return hostile if draw(st.integers(0, 9)) < rate else valid

    def pick(valid: st.SearchStrategy[T], hostile: st.SearchStrategy[T]) -> T:
        return draw(choose(valid, hostile))

    is_agent = draw(st.booleans())
    resource: Any = AgentExecution() if is_agent else WorkflowExecution()
    prefix, kind_name = ("aex", "AgentExecution") if is_agent else ("wex", "WorkflowExecution")
    other_prefix = "wex" if is_agent else "aex"
    filled_text = st.just("x") | proto_text.filter(bool)

    resource.api_version = pick(
        st.sampled_from(["", API_VERSION]), st.just("agentic.stigmer.ai/v2") | proto_text
    )
    if resource.api_version not in ("", API_VERSION):
        expected.add(UnknownKindError)
    resource.kind = pick(
        st.sampled_from(["", kind_name]),
        st.sampled_from(["AgentExecution", "WorkflowExecution", "Banana"]) | proto_text,
    )
    if resource.kind not in ("", kind_name):
        expected.add(UnknownKindError)

    may_exist = False
    id_choice = pick(
        st.sampled_from(["none", "fresh"]), st.sampled_from(["other-kind", "hostile", "text"])
    )
    if id_choice == "fresh":
        resource.metadata.id = fresh_id(prefix)
    elif id_choice == "other-kind":
        resource.metadata.id = fresh_id(other_prefix)
        expected.add(InvalidIdError)
    elif id_choice in ("hostile", "text"):
        hostile = draw(st.sampled_from(HOSTILE_IDS) if id_choice == "hostile" else proto_text)
        resource.metadata.id = hostile
        if hostile and not id_is_valid(hostile, prefix):
            expected.add(InvalidIdError)
        may_exist = True
    resource.metadata.name = draw(proto_text)
    resource.metadata.org = draw(proto_text)
    resource.metadata.owner_scope = draw(st.integers(-(2**31), 2**31 - 1))  # Unknown numbers.
    for name in ("labels", "annotations", "tags"):
        count = pick(st.sampled_from([0, 2, MAX_LABELS]), st.sampled_from([MAX_LABELS + 1, 500]))
        if name == "tags":
            resource.metadata.tags.extend(f"t{i}" for i in range(count))
        else:
            getattr(resource.metadata, name).update(labels(count))
        if count > MAX_LABELS:
            expected.add(LimitExceededError)

    spec = resource.spec
    if is_agent:
        spec.agent_id = pick(filled_text, st.just(""))
        spec.session_id = draw(st.sampled_from(["", "s-1"]))
        spec.message = pick(filled_text, st.just(""))
        spec.execution_config.model_name = draw(proto_text)
        if not spec.agent_id and not spec.session_id:
            expected.add(MissingFieldError)
        if not spec.message:
            expected.add(MissingFieldError)
    else:
        spec.workflow_id = pick(filled_text, st.just(""))
        spec.workflow_instance_id = draw(st.sampled_from(["", "wfi-1"]))
        spec.trigger_message = draw(proto_text)
        spec.trigger_metadata.update(draw(st.dictionaries(proto_text, proto_text, max_size=3)))
        if not spec.workflow_id and not spec.workflow_instance_id:
            expected.add(MissingFieldError)
    token_size = pick(
        st.sampled_from([0, 1, 300, MAX_CALLBACK_TOKEN_BYTES]), st.sampled_from([2049, 20_000])
    )
    spec.callback_token = random.Random(draw(st.integers(0, 2**32))).randbytes(token_size)
    if token_size > MAX_CALLBACK_TOKEN_BYTES:
        expected.add(CallbackTokenTooLargeError)
    env_keys = choose(filled_text, proto_text)
    env: dict[str, tuple[str, bool]] = draw(
        st.dictionaries(env_keys, st.tuples(proto_text, st.booleans()), max_size=4)
    )
    for key, (value, secret) in env.items():
        spec.runtime_env[key].CopyFrom(ExecutionValue(value=value, is_secret=secret))
        if not key:
            expected.add(InvalidResourceError)
    padding = pick(
        st.sampled_from([0, 1000]), st.sampled_from([MAX_SPEC_BYTES, 3 * MAX_SPEC_BYTES])
    )
    if padding:
        spec.runtime_env["PAD"].CopyFrom(ExecutionValue(value="p" * padding))
    if spec.ByteSize() > MAX_SPEC_BYTES:
        expected.add(LimitExceededError)
    if pick(st.just(False), st.booleans()):
        resource.status.error = "observed, not given"
        expected.add(InvalidResourceError)
    return Built(resource, expected, may_exist)


def test_api_structured_hostile_resources(store: Store) -> None:
    @fuzz_settings(store.examples(200))
    @given(built=built_resources())
    def check(built: Built) -> None:
        outcome = attempt(store, lambda: store.app.create(built.resource))
        if built.expected:
            check_refusal(outcome, built.expected)
            return
        if isinstance(outcome, Refused) and built.may_exist:
            check_refusal(outcome, {CreateConflictError})  # A hostile id drawn twice.
            return
        assert not isinstance(outcome, Refused), f"a valid resource was refused: {outcome.error}"
        recorded = store.app.read(outcome.id)
        assert recorded.resource.spec == built.resource.spec
        assert recorded.resource.metadata.owner_scope == built.resource.metadata.owner_scope
        if built.resource.metadata.id:
            assert outcome.id == built.resource.metadata.id
        else:
            assert re.fullmatch(r"(aex|wex)-[0-9a-z]{26}", outcome.id)

    check()
    assert store.seen.get("accepted", 0) > 0, store.seen
    assert store.seen.get("refused", 0) > 0, store.seen


# 3. Random status patches.


def nested_struct(depth: int, leaf: object = 1) -> Struct:
    """A Struct nesting ``depth`` levels (``{"k": {"k": ... {"leaf": 1}}}``)."""
    value: dict[str, Any] = {"leaf": leaf}
    for _ in range(depth - 1):
        value = {"k": value}
    result = Struct()
    if depth:
        result.update(value)
    return result


KEY_MODES = ["unique", "unique", "unique", "empty", "duplicate"]


def keyed_ids(mode: str, count: int) -> list[str]:
    ids = [f"id-{i}" for i in range(count)]
    if count and mode == "empty":
        ids[-1] = ""
    elif count > 1 and mode == "duplicate":
        ids[-1] = ids[0]
    return ids


@dataclass
class BuiltPatch:
    patch: Any
    expected: set[type[UserError]]
    phase: int
    for_agent: bool


@st.composite
def built_patches(draw: st.DrawFn, for_agent: bool) -> BuiltPatch:
    expected: set[type[UserError]] = set()
    wrong_kind = draw(st.integers(0, 14)) == 0
    agent_shaped = for_agent != wrong_kind
    if wrong_kind:
        expected.add(InvalidResourceError)
    patch: Any = AgentExecutionStatus() if agent_shaped else WorkflowExecutionStatus()
    phase = draw(st.sampled_from([0, 0, 0, 1, 2, 2, 3, 4, 5]) | st.integers(-(2**31), 2**31 - 1))
    patch.phase = phase
    if phase not in range(6):
        expected.add(InvalidResourceError)
    patch.error = draw(proto_text)
    depth = draw(st.sampled_from([0, 1, 5, MAX_STRUCT_DEPTH, MAX_STRUCT_DEPTH + 1, 200]))
    if depth > MAX_STRUCT_DEPTH:
        expected.add(LimitExceededError)
    count = draw(st.sampled_from([0, 1, 3, 5_000]))
    mode = draw(st.sampled_from(KEY_MODES))
    if (count and mode == "empty") or (count > 1 and mode == "duplicate"):
        expected.add(InvalidResourceError)
    text = draw(proto_text)
    huge = draw(st.sampled_from([0, 0, 0, MAX_STATUS_PATCH_BYTES + 1]))
    enum_value = draw(st.integers(-(2**31), 2**31 - 1))
    if agent_shaped:
        for key in keyed_ids(mode, count):
            patch.tool_calls.add(id=key, name=text, status=enum_value)
        patch.sub_agent_executions.add(id="sub-1", name=text, status=enum_value)
        message = patch.messages.add(type=enum_value, content=text + "m" * huge)
        message.metadata.CopyFrom(nested_struct(depth))
        todo: Any = patch.todos[text]
        todo.id, todo.status = text, enum_value
    else:
        for key in keyed_ids(mode, count):
            patch.tasks.add(task_id=key, task_name=text, status=enum_value, task_type=enum_value)
        patch.temporal_workflow_id = text + "w" * huge
        patch.output.CopyFrom(nested_struct(depth, leaf=text))
    if draw(st.integers(0, 9)) == 0:
        patch.audit.spec_audit.event = "forged"
        expected.add(InvalidResourceError)
    if patch.ByteSize() > MAX_STATUS_PATCH_BYTES:
        expected.add(LimitExceededError)
    return BuiltPatch(patch, expected, phase, for_agent)


def new_execution(store: Store, for_agent: bool) -> str:
    resource: Resource
    if for_agent:
        resource = agent_execution(agent_id="a", message="m")
    else:
        resource = workflow_execution(workflow_id="wf")
    return store.app.create(resource).id


def test_api_random_status_patches(store: Store) -> None:
    @fuzz_settings(store.examples(150))
    @given(data=st.data(), for_agent=st.booleans(), already_terminal=st.integers(0, 9))
    def check(data: st.DataObject, for_agent: bool, already_terminal: int) -> None:
        built = data.draw(built_patches(for_agent))
        execution_id = new_execution(store, for_agent)
        expected = set(built.expected)
        if already_terminal == 0:
            store.app.cancel(execution_id, "ended before the patch")
            expected.add(TerminalPhaseError)
        version = store.app.read(execution_id).version
        outcome = attempt(store, lambda: store.app.update_status(execution_id, built.patch))
        if expected:
            check_refusal(outcome, expected)
            assert store.app.read(execution_id).version == version
            return
        assert not isinstance(outcome, Refused), f"a valid patch was refused: {outcome.error}"
        assert outcome.version in (version + 1, version + 2)
        assert outcome.phase == Phase(built.phase or Phase.PENDING)

    check()
    assert store.seen.get("accepted", 0) > 0, store.seen
    assert store.seen.get("refused", 0) > 0, store.seen


# 4. Random outcomes: complete(output=...), fail(details=...), cancel(reason=...).

FLOAT_MAX_INT = int(sys.float_info.max)


class Opaque:
    """Not JSON."""


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.sampled_from(ODD_UNICODE),
)
hostile_leaves = st.one_of(
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            10**400,
            -(10**400),
            2**1024,
            2**70,
            set(),
            frozenset({1}),
            b"bytes",
            bytearray(b"x"),
            Decimal("1.5"),
            complex(1, 2),
            datetime(2026, 1, 1, tzinfo=UTC),
            range(3),
        ]
    ),
    st.builds(Opaque),
    surrogate_text,
)
json_keys = st.one_of(st.text(max_size=8), st.sampled_from(ODD_UNICODE))
hostile_keys = st.one_of(
    st.integers(), st.none(), st.booleans(), st.tuples(st.integers()), surrogate_text
)


def json_like(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> Any:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.tuples(children, children),
            st.dictionaries(keys, children, max_size=4),
        ),
        max_leaves=12,
    )


def depth_of(value: object) -> int:
    """Nesting depth of dicts/lists/tuples (iterative; no cycles in generated values)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
            deepest = max(deepest, depth + 1)
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
            deepest = max(deepest, depth + 1)
    return deepest


def walk(value: object) -> Iterator[object]:
    """Every key and value inside ``value`` (iterative)."""
    stack = [value]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def nest(value: object, depth: int) -> object:
    for _ in range(depth):
        value = {"k": value}
    return value


def outcome_verdict(value: object, huge: bool) -> set[type[UserError]]:
    """What the ledger must say about ``value`` as an output or details object."""
    if value is None:
        return set()
    if not isinstance(value, Mapping):
        return {InvalidResourceError}
    expected: set[type[UserError]] = set()
    depth = depth_of(value)
    if depth > MAX_STRUCT_DEPTH:
        expected.add(LimitExceededError)
    else:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            expected.add(InvalidResourceError)
    for item in walk(value):
        if isinstance(item, str) and has_surrogate(item):
            expected.add(InvalidResourceError)
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > FLOAT_MAX_INT:
            # A google.protobuf.Struct number is a double: this one cannot be stored.
            expected |= {InvalidResourceError, LimitExceededError}
    if huge:
        expected.add(LimitExceededError)
    return expected


@st.composite
def outcome_values(draw: st.DrawFn) -> tuple[object, bool]:
    """A value for ``output``/``details``, and whether it is over the size limit."""
    shape = draw(st.sampled_from(["json", "json", "hostile", "deep", "huge", "not-a-map", "none"]))
    if shape == "none":
        return None, False
    if shape == "not-a-map":
        return draw(st.sampled_from([[1, 2], "text", 42, (1,), {1, 2}, b"{}"])), False
    if shape == "huge":
        count = MAX_OUTCOME_BYTES // 40
        return {f"key-{i}": "v" * 40 for i in range(count)}, True
    leaves = hostile_leaves if shape == "hostile" else json_leaves
    keys = json_keys | hostile_keys if shape == "hostile" else json_keys
    inner = draw(json_like(leaves | json_leaves, keys))
    value: dict[Any, Any] = draw(st.dictionaries(keys, st.just(inner), min_size=1, max_size=3))
    if shape == "deep":
        depth = draw(st.sampled_from([MAX_STRUCT_DEPTH - 2, MAX_STRUCT_DEPTH, 100, 20_000]))
        value = {"deep": nest(inner, depth)}
    return value, False


text_argument = st.one_of(
    st.sampled_from(["", "x"]),
    proto_text,
    surrogate_text,
    st.sampled_from([MAX_TEXT_CHARS, MAX_TEXT_CHARS + 1]).map(lambda n: "r" * n),
)


def text_verdict(value: str, *, required: bool = False, limit: int = MAX_TEXT_CHARS) -> set[Any]:
    expected: set[type[UserError]] = set()
    if required and not value:
        expected.add(InvalidResourceError)
    if len(value) > limit:
        expected.add(LimitExceededError)
    if has_surrogate(value):
        expected.add(InvalidResourceError)
    return expected


def roundtrip(value: object) -> Any:
    return json.loads(json.dumps(value))


def test_api_random_outcomes(store: Store) -> None:
    @fuzz_settings(store.examples(200))
    @given(
        command=st.sampled_from(["complete", "fail", "cancel"]),
        for_agent=st.booleans(),
        value=outcome_values(),
        text=text_argument,
        error_type=text_argument,
        actor=st.one_of(st.just(""), text_argument),
    )
    def check(
        command: str,
        for_agent: bool,
        value: tuple[object, bool],
        text: str,
        error_type: str,
        actor: str,
    ) -> None:
        payload: Any = value[0]
        execution_id = new_execution(store, for_agent)
        expected = text_verdict(actor)
        action: Callable[[], Any]
        if command == "complete":
            expected |= outcome_verdict(payload, value[1])
            action = partial(store.app.complete, execution_id, payload, actor=actor)
        elif command == "fail":
            expected |= outcome_verdict(payload, value[1])
            expected |= text_verdict(text, required=True, limit=MAX_OUTCOME_BYTES)
            expected |= text_verdict(error_type)
            action = partial(
                store.app.fail,
                execution_id,
                text,
                error_type=error_type,
                details=payload,
                actor=actor,
            )
        else:
            expected |= text_verdict(text)
            action = partial(store.app.cancel, execution_id, text, actor=actor)
        outcome = attempt(store, action)
        if expected:
            check_refusal(outcome, expected)
            assert store.app.read(execution_id).phase is Phase.PENDING
            return
        assert not isinstance(outcome, Refused), f"a valid outcome was refused: {outcome.error}"
        completed: Any = store.app.history(execution_id)[-1].event
        assert type(completed).__name__ == "Completed"
        assert completed.actor == actor
        if command == "complete":
            assert outcome.phase is Phase.COMPLETED
            assert completed.output == (None if payload is None else roundtrip(payload))
        elif command == "fail":
            assert outcome.phase is Phase.FAILED
            assert completed.error == {
                "type": error_type or "ExecutionFailed",
                "message": text,
                "details": roundtrip(payload) if payload is not None else {},
            }
        else:
            assert outcome.phase is Phase.CANCELLED
            assert completed.reason == text

    check()
    assert store.seen.get("accepted", 0) > 0, store.seen
    assert store.seen.get("refused", 0) > 0, store.seen


with_secret = partial(agent_execution, agent_id="a", message="m", env=secret_env({"K": "s"}))


UNENCODABLE: dict[str, Callable[[Ledger, str], object]] = {
    "cancel reason": lambda app, x: app.cancel(x, "\ud800"),
    "fail message": lambda app, x: app.fail(x, "\ud800"),
    "fail error_type": lambda app, x: app.fail(x, "boom", error_type="\udfff"),
    "complete actor": lambda app, x: app.complete(x, actor="\ud800"),
    "update_status actor": lambda app, x: app.update_status(
        x,
        AgentExecutionStatus(phase=Phase.IN_PROGRESS),  # type: ignore[arg-type]
        actor="a\udc80",
    ),
    "create actor (with a secret value)": lambda app, x: app.create(with_secret(), actor="\ud800"),
    "output key": lambda app, x: app.complete(x, {"\ud800": 1}),
    "output number beyond a double": lambda app, x: app.complete(x, {"k": 10**400}),
    "details number beyond a double": lambda app, x: app.fail(x, "boom", details={"k": -(2**1024)}),
}


@pytest.mark.parametrize("case", sorted(UNENCODABLE))
def test_api_unencodable_values_are_typed_errors(store: Store, case: str) -> None:
    """Lone surrogates in ``str`` arguments and numbers a Struct cannot hold: a
    typed refusal, nothing written (not a UnicodeEncodeError from the store's
    JSON encoder or an OverflowError from the Struct conversion)."""
    execution_id = new_execution(store, for_agent=True)
    outcome = attempt(store, partial(UNENCODABLE[case], store.app, execution_id))
    check_refusal(outcome, {InvalidResourceError, LimitExceededError})
    assert store.app.read(execution_id).version == 1


def test_surrogates_cannot_enter_protobuf_strings() -> None:
    """The premise of the fuzzers above: proto string fields refuse lone surrogates
    at assignment, so they can only reach the ledger through plain ``str`` arguments."""
    with pytest.raises(UnicodeEncodeError):
        AgentExecutionSpec(message="\ud800")
    spec = AgentExecutionSpec()
    with pytest.raises(UnicodeEncodeError):
        spec.agent_id = "a\udfffb"


def test_api_odd_unicode_round_trips(store: Store) -> None:
    """Valid but odd text (NUL, RTL override, emoji, escapes) is stored and read back
    exactly, in every field and argument."""
    text = "".join(ODD_UNICODE)
    resource = AgentExecution(
        spec=AgentExecutionSpec(
            agent_id=text,
            message=text,
            runtime_env={text: ExecutionValue(value=text, is_secret=True)},
        )
    )
    resource.metadata.name = text
    resource.metadata.labels[text] = text
    created = store.app.create(resource, actor=text)
    patch = AgentExecutionStatus(phase=2, error=text)  # type: ignore[arg-type]
    patch.messages.add(content=text)
    patch.tool_calls.add(id=text, name=text)
    store.app.update_status(created.id, patch, actor=text)
    got: Any = store.app.get(created.id)
    assert got.spec == resource.spec
    assert got.metadata.labels[text] == text
    assert got.status.messages[0].content == text
    assert got.status.tool_calls[0].id == text
    store.app.fail(created.id, text, error_type=text, details={text: text}, actor=text)
    completed: Any = store.app.history(created.id)[-1].event
    assert completed.error == {"type": text, "message": text, "details": {text: text}}
    assert completed.actor == text


# 5. Ids with SQL and shell metacharacters, on every read and write.


def id_operations(app: Ledger) -> dict[str, Callable[[str], object]]:
    def create(execution_id: str) -> object:
        resource = agent_execution(agent_id="a", message="m")
        resource.metadata.id = execution_id
        return app.create(resource)

    return {
        "get": app.get,
        "read": app.read,
        "history": app.history,
        "create": create,
        "update_status": lambda i: app.update_status(i, AgentExecutionStatus(phase=2)),  # type: ignore[arg-type]
        "complete": lambda i: app.complete(i, {"a": 1}),
        "fail": lambda i: app.fail(i, "boom"),
        "cancel": lambda i: app.cancel(i, "why"),
    }


def exists(app: Ledger, execution_id: str) -> bool:
    try:
        app.read(execution_id)
    except UserError:
        return False
    return True


def check_id_outcome(store: Store, operation: str, execution_id: str) -> None:
    valid = id_is_valid(execution_id)
    recorded = valid and exists(store.app, execution_id)
    outcome = attempt(store, partial(id_operations(store.app)[operation], execution_id))
    if operation == "create" and not execution_id:
        assert not isinstance(outcome, Refused), outcome.error  # No id: the ledger picks one.
    elif not valid:
        check_refusal(outcome, {InvalidIdError})
    elif operation == "create":
        if execution_id.startswith("aex-"):
            assert not isinstance(outcome, Refused), outcome.error
        else:
            check_refusal(outcome, {InvalidIdError})  # An AgentExecution needs aex-.
    elif not recorded:
        check_refusal(outcome, {ExecutionNotFoundError})
    # An id created earlier in the run: any typed outcome (attempt() checked it).


def test_api_hostile_ids_on_every_read_and_write(store: Store) -> None:
    sentinel = new_execution(store, for_agent=True)
    for execution_id in HOSTILE_IDS:
        for operation in id_operations(store.app):
            check_id_outcome(store, operation, execution_id)

    @fuzz_settings(store.examples(150))
    @given(
        execution_id=st.one_of(
            st.text(max_size=80),
            st.builds(lambda p, t: p + t, st.sampled_from(["aex-", "wex-"]), st.text(max_size=70)),
            st.from_regex(r"(aex|wex)-[0-9a-z][0-9a-z_-]{0,70}", fullmatch=True),
        ),
        operation=st.sampled_from(sorted(id_operations(store.app))),
    )
    def check(execution_id: str, operation: str) -> None:
        check_id_outcome(store, operation, execution_id)

    check()
    # The store is intact: the tables the injections named still hold the sentinel.
    assert store.app.read(sentinel).version == 1
    assert len(store.app.history(sentinel)) == 1


def test_api_id_errors_stay_short(store: Store) -> None:
    """A hostile id is quoted truncated, so one huge id cannot flood logs and terminals."""
    for execution_id in ("x" * 1_000_000, "aex-" + "x" * 1_000_000, "wex" + "-" * 1_000_000):
        for operation, call in id_operations(store.app).items():
            outcome = attempt(store, partial(call, execution_id))
            check_refusal(outcome, {InvalidIdError})
            assert isinstance(outcome, Refused)
            assert len(str(outcome.error)) < 1000, (
                f"{operation}: the error quotes {len(str(outcome.error))} characters"
            )


def test_api_values_that_look_encrypted_round_trip(store: Store) -> None:
    """A runtime_env value is the caller's text, whatever it starts with: one that
    looks like the vault's sealed form (``enc:v1:...``) reads back unchanged, secret
    or not, while the execution is running."""
    looks_sealed = "enc:v1:aGVsbG8gd29ybGQ="
    for secret_beside in (False, True):
        env = {
            "PLAIN": ExecutionValue(value=looks_sealed),
            "SECRET": ExecutionValue(value=looks_sealed, is_secret=True),
        }
        if secret_beside:
            env["OTHER"] = ExecutionValue(value="s3cr3t", is_secret=True)
        resource = AgentExecution(
            spec=AgentExecutionSpec(agent_id="a", message="m", runtime_env=env)
        )
        created = store.app.create(resource)
        read: Any = store.app.get(created.id)
        shown = {k: v.value for k, v in read.spec.runtime_env.items()}
        assert shown == {k: v.value for k, v in env.items()}, shown


def test_api_huge_metadata_is_refused(store: Store) -> None:
    """Metadata strings are bounded like the rest: a 5 MB name or label is a LimitExceededError."""
    for field_name in ("name", "slug", "org", "label", "annotation", "tag"):
        resource = agent_execution(agent_id="a", message="m")
        metadata: Any = resource.metadata
        huge = "n" * 5_000_000
        if field_name == "label":
            metadata.labels["k"] = huge
        elif field_name == "annotation":
            metadata.annotations[huge] = "v"
        elif field_name == "tag":
            metadata.tags.append(huge)
        else:
            setattr(metadata, field_name, huge)
        outcome = attempt(store, partial(store.app.create, resource))
        check_refusal(outcome, {LimitExceededError})


# 6. Values that could hang the process: run in a child with a time and memory limit.

HANG_SCRIPT = textwrap.dedent(
    """
    import sys
    from ledger import AgentExecution, AgentExecutionSpec, UserError, open_ledger
    app = open_ledger("memory://")
    x = app.create(AgentExecution(spec=AgentExecutionSpec(agent_id="a", message="m"))).id
    value = {}
    if sys.argv[1] == "cycle":
        value["self"] = value
    elif sys.argv[1] == "list-cycle":
        items = []
        items.append(items)
        value["items"] = items
    elif sys.argv[1] == "plain":  # The baseline: a value of no harm.
        value["plain"] = 1
    else:  # Shared references: 10 levels of 9, 3.5e9 leaves, a few hundred bytes.
        level = ["lol"] * 9
        for _ in range(9):
            level = [level] * 9
        value["bomb"] = level
    try:
        if sys.argv[2] == "complete":
            app.complete(x, value)
        else:
            app.fail(x, "boom", details=value)
    except UserError as e:
        print("refused", type(e).__name__, app.read(x).version)
    else:
        print("accepted")
    """
)


LIMITED = (
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({CHILD_MEMORY}, {CHILD_MEMORY})); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def limited(argv: list[str | bytes]) -> list[str | bytes]:
    """``argv`` run with an address-space limit (set in the child before it starts)."""
    return [sys.executable, "-c", LIMITED, *argv]


@dataclass
class CliResult:
    returncode: int | None
    """None: still running at the time limit, and killed."""
    stdout: str
    stderr: str
    seconds: float


def run_in_parallel(
    argvs: dict[str, list[str | bytes]], env: dict[str, str] | None, timeout: float
) -> dict[str, CliResult]:
    """Runs the processes side by side (time and memory limited); kills any still running."""
    started = time.monotonic()
    processes = {
        name: subprocess.Popen(
            limited(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for name, argv in argvs.items()
    }
    results: dict[str, CliResult] = {}
    for name, process in processes.items():
        remaining = max(0.1, started + timeout - time.monotonic())
        try:
            stdout, stderr = process.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            results[name] = CliResult(None, "", "", time.monotonic() - started)
            continue
        results[name] = CliResult(
            process.returncode,
            stdout.decode("utf-8", "replace"),
            stderr.decode("utf-8", "replace"),
            time.monotonic() - started,
        )
    return results


def slow_runs(results: dict[str, CliResult]) -> tuple[CliResult, list[str]]:
    """The baseline's result, and the runs (others than it) that were killed at
    :data:`HANG_SECONDS` or took more than :data:`BOMB_SECONDS` beyond it."""
    baseline = results.pop(BASELINE)
    assert baseline.returncode == 0, f"the plain run failed: {baseline.stderr[-2000:]}"
    problems = []
    for name, result in results.items():
        if result.returncode is None:
            problems.append(f"{name}: still running after {HANG_SECONDS}s (killed)")
        elif result.seconds > baseline.seconds + BOMB_SECONDS:
            problems.append(
                f"{name}: {result.seconds:.1f}s, more than {BOMB_SECONDS}s beyond a plain "
                f"run's {baseline.seconds:.1f}s"
            )
    return baseline, problems


def test_api_cyclic_and_exploding_outcomes_are_refused_promptly() -> None:
    cases = [("cycle", "complete"), ("list-cycle", "fail"), ("shared-references", "complete")]
    argvs: dict[str, list[str | bytes]] = {
        BASELINE: [sys.executable, "-c", HANG_SCRIPT, "plain", "complete"]
    }
    for value, command in cases:
        argvs[f"{command}() with a {value} value"] = [
            sys.executable,
            "-c",
            HANG_SCRIPT,
            value,
            command,
        ]
    results = run_in_parallel(argvs, None, HANG_SECONDS)
    baseline, problems = slow_runs(results)
    assert baseline.stdout.startswith("accepted"), baseline.stdout
    for name, result in results.items():
        if result.returncode is None:
            continue
        elif result.returncode != 0 or not result.stdout.startswith("refused"):
            problems.append(f"{name}: {result.stdout.strip()} {result.stderr.strip()[-500:]}")
        elif result.stdout.split()[-1] != "1":
            problems.append(f"{name}: the refused outcome wrote an event")
    assert not problems, "\n".join(problems)


# 7. The CLI, through its real entry point.


def cli(
    url: str,
    *args: str | bytes,
    stdin: bytes | None = None,
    timeout: float = CLI_TIMEOUT,
) -> CliResult:
    env = {"LEDGER_URL": url, "COLUMNS": "200", "PATH": str(Path(sys.executable).parent)}
    started = time.monotonic()
    try:
        result = subprocess.run(
            limited([LEDGER, *args]),
            check=False,
            input=stdin,
            capture_output=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return CliResult(None, "", "", time.monotonic() - started)
    return CliResult(
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
        time.monotonic() - started,
    )


def clean(result: CliResult) -> None:
    """Exit 0, or exit 1 (2 for a usage error) with exactly one ``error:`` line and no
    traceback."""
    assert result.returncode is not None, f"still running after {result.seconds:.0f}s: killed"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode in (0, 1, 2), (result.returncode, result.stderr[-3000:])
    if result.returncode in (1, 2):
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr[-3000:]
        assert lines[0].startswith("error: "), lines[0][:500]
        assert not result.stdout, result.stdout[:500]


@dataclass
class CliStore:
    url: str
    app: Ledger
    folder: Path
    seen: dict[str, int] = field(default_factory=dict)

    def run(
        self, *args: str | bytes, stdin: bytes | None = None, timeout: float = CLI_TIMEOUT
    ) -> CliResult:
        """Runs the CLI; checks it ended cleanly and that an error wrote nothing."""
        before = snapshot(self.app, self.url)
        result = cli(self.url, *args, stdin=stdin, timeout=timeout)
        clean(result)
        if result.returncode == 1:
            assert snapshot(self.app, self.url) == before, "a refused command wrote something"
        key = "ok" if result.returncode == 0 else "error"
        self.seen[key] = self.seen.get(key, 0) + 1
        return result

    def file(self, name: str, content: bytes | str) -> str:
        path = self.folder / name
        # A str's lone surrogates \udc80-\udcff become the raw (invalid UTF-8) bytes.
        data = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content
        path.write_bytes(data)
        return str(path)

    def created_id(self, result: CliResult) -> str:
        match = re.fullmatch(r"created ((?:aex|wex)-\S+): PENDING \(version \d+\)\n", result.stdout)
        assert match, result.stdout
        return match.group(1)


@pytest.fixture
def cli_store(tmp_path: Path) -> Iterator[CliStore]:
    url = "sqlite:///" + str(tmp_path / "cli.db")
    app = open_ledger(url)
    try:
        yield CliStore(url, app, tmp_path)
    finally:
        app.close()


VALID_YAML = """
apiVersion: agentic.stigmer.ai/v1
kind: AgentExecution
metadata: {name: demo, labels: {team: research}}
spec:
  agentId: agent-1
  message: hello
  callbackToken: dG9rZW4tZm9yLXRoZS1jYWxsZXI=
  runtimeEnv:
    API_KEY: {value: sk-live-abcdef, isSecret: true}
"""
VALID_JSON = json.dumps(
    {"kind": "WorkflowExecution", "spec": {"workflowId": "wf-1", "triggerMessage": "go"}}
)


@st.composite
def file_contents(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid JSON/YAML resource with random byte edits."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from([VALID_YAML, VALID_JSON])).encode())
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    return bytes(data)


CLI_SETTINGS = fuzz_settings(12)


def test_cli_random_bytes_as_the_resource_file(cli_store: CliStore) -> None:
    @CLI_SETTINGS
    @given(content=file_contents())
    @example(content=VALID_YAML.encode())
    @example(content=b"\xff\xfe\x00garbage")
    @example(content=b"")
    def check(content: bytes) -> None:
        result = cli_store.run("create", cli_store.file("resource", content))
        if result.returncode == 0:
            assert cli_store.app.read(cli_store.created_id(result)).version == 1

    check()
    assert cli_store.seen.get("ok", 0) > 0 and cli_store.seen.get("error", 0) > 0, cli_store.seen


cli_text = st.one_of(st.text(max_size=12), st.sampled_from(ODD_UNICODE))
json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | cli_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(cli_text, children, max_size=3)
    ),
    max_leaves=10,
)
enum_values = st.one_of(
    st.integers(-(2**31), 2**31 - 1), st.sampled_from(["platform", "BOGUS", "", 99])
)
resource_documents = st.fixed_dictionaries(
    {"kind": st.sampled_from(["AgentExecution", "WorkflowExecution", "Banana", ""]) | cli_text},
    optional={
        "apiVersion": st.sampled_from([API_VERSION, "v2"]) | cli_text,
        "metadata": st.fixed_dictionaries(
            {},
            optional={
                "id": st.sampled_from(HOSTILE_IDS[:20]) | cli_text,
                "name": cli_text,
                "labels": st.dictionaries(cli_text, cli_text, max_size=3),
                "ownerScope": enum_values,
                "tags": st.lists(cli_text, max_size=3),
            },
        ),
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "agentId": cli_text,
                "message": cli_text,
                "workflowId": cli_text,
                "callbackToken": st.sampled_from(["dG9rZW4=", "!!!", "", "a" * 4000]) | cli_text,
                "runtimeEnv": st.dictionaries(
                    cli_text,
                    st.fixed_dictionaries({"value": cli_text, "isSecret": st.booleans()}),
                    max_size=2,
                ),
                "executionConfig": json_documents,
            },
        ),
        "status": json_documents,
        "surprise": json_documents,
    },
)


def dump(document: object, as_yaml: bool) -> str:
    if as_yaml:
        return yaml.safe_dump(document, allow_unicode=True)
    return json.dumps(document)


def test_cli_random_json_and_yaml_documents(cli_store: CliStore) -> None:
    @CLI_SETTINGS
    @given(document=resource_documents | json_documents, as_yaml=st.booleans())
    @example(document=json.loads(VALID_JSON), as_yaml=True)
    @example(document={"kind": "AgentExecution", "spec": {"agentId": "a"}}, as_yaml=False)
    def check(document: object, as_yaml: bool) -> None:
        text = dump(document, as_yaml)
        result = cli_store.run("create", cli_store.file("doc", text))
        if result.returncode == 0:
            assert cli_store.app.read(cli_store.created_id(result)).version == 1

    check()
    assert cli_store.seen.get("ok", 0) > 0 and cli_store.seen.get("error", 0) > 0, cli_store.seen


def deep_lists(depth: int) -> str:
    return "[" * depth + "]" * depth


def deep_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


HUGE_CASES: dict[str, tuple[Callable[[], str], str]] = {
    "5 MB string in the spec": (
        lambda: json.dumps(
            {"kind": "AgentExecution", "spec": {"agentId": "a", "message": "x" * 5_000_000}}
        ),
        f"at most {MAX_SPEC_BYTES}",
    ),
    "300k annotations": (
        lambda: json.dumps(
            {
                "kind": "AgentExecution",
                "spec": {"agentId": "a", "message": "m"},
                "metadata": {"annotations": {str(i): "v" for i in range(300_000)}},
            }
        ),
        "metadata",  # over the size limit (and the count limit): refused either way
    ),
    "5 MB runtime_env map": (
        lambda: json.dumps(
            {
                "kind": "WorkflowExecution",
                "spec": {
                    "workflowId": "w",
                    "runtimeEnv": {f"K{i}": {"value": "v" * 40} for i in range(100_000)},
                },
            }
        ),
        f"at most {MAX_SPEC_BYTES}",
    ),
    "5 MB metadata name": (
        lambda: json.dumps(
            {
                "kind": "AgentExecution",
                "spec": {"agentId": "a", "message": "m"},
                "metadata": {"name": "n" * 5_000_000},
            }
        ),
        "metadata",
    ),
    "100k nested JSON lists": (lambda: deep_lists(100_000), "nests too deeply"),
    "100k nested JSON objects": (lambda: deep_objects(100_000), "nests too deeply"),
    "100k nested YAML lists": (lambda: "a: " + deep_lists(100_000), "nests too deeply"),
    "100k nested YAML mappings": (
        lambda: "{a: " * 100_000 + "1" + "}" * 100_000,
        "nests too deeply",
    ),
    "deep Struct inside status": (
        lambda: (
            json.dumps({"kind": "WorkflowExecution", "spec": {"workflowId": "w"}})[:-1]
            + ', "status": {"output": '
            + deep_objects(900)
            + "}}"
        ),
        "",
    ),
    "invalid UTF-8": (lambda: "kind: AgentExecution\nspec: {message: \udcff\udcfe}\n", "UTF-8"),
    "NUL bytes": (lambda: "kind: AgentExecution\x00\x00\n", ""),
    "empty file": (lambda: "", "must be a JSON/YAML object"),
}


@pytest.mark.parametrize("case", sorted(HUGE_CASES))
def test_cli_huge_deep_and_broken_files(cli_store: CliStore, case: str) -> None:
    make, expected = HUGE_CASES[case]
    result = cli_store.run("create", cli_store.file("big", make()))
    assert result.returncode == 1, f"accepted: {result.stdout[:300]}"
    assert expected in result.stderr, result.stderr[:500]
    assert len(result.stderr) < 5000, "the error line quotes too much of the input"


def billion_laughs(indent: str = "") -> str:
    """Nine levels of nine aliases: 387 million strings once expanded, 700 bytes as text."""
    lines = [f'{indent}a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{indent}{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_cli_yaml_bombs_fail_fast(cli_store: CliStore) -> None:
    agent = cli_store.app.create(agent_execution(agent_id="a", message="m")).id
    workflow = cli_store.app.create(workflow_execution(workflow_id="w")).id
    bomb = billion_laughs()
    cases: dict[str, list[str]] = {
        "bomb beside the resource": [
            "create",
            cli_store.file(
                "b1.yaml", "kind: AgentExecution\nspec: {agentId: a, message: m}\n" + bomb
            ),
        ],
        "bomb inside status.output of a resource": [
            "create",
            cli_store.file(
                "b2.yaml",
                "kind: WorkflowExecution\nspec: {workflowId: w}\nstatus:\n  output:\n"
                + billion_laughs("    "),
            ),
        ],
        "bomb inside a status patch": [
            "status",
            workflow,
            "--patch",
            cli_store.file("b3.yaml", "output:\n" + billion_laughs("  ")),
        ],
        "bomb as --output @file": [
            "complete",
            agent,
            "--output",
            "@" + cli_store.file("b4.yaml", bomb),
        ],
        "bomb as --details @file": [
            "fail",
            agent,
            "-m",
            "boom",
            "--details",
            "@" + cli_store.file("b5.yaml", bomb),
        ],
        "recursive alias as --output @file": [
            "complete",
            agent,
            "--output",
            "@" + cli_store.file("b6.yaml", "a: &a {b: *a}\n"),
        ],
        "recursive alias inside a resource": [
            "create",
            cli_store.file(
                "b7.yaml",
                "kind: WorkflowExecution\nspec: {workflowId: w}\nstatus: {output: &a {b: *a}}\n",
            ),
        ],
    }
    env = {"LEDGER_URL": cli_store.url, "PATH": str(Path(sys.executable).parent)}
    argvs: dict[str, list[str | bytes]] = {BASELINE: [LEDGER, "show", agent]}
    argvs.update({name: [LEDGER, *args] for name, args in cases.items()})
    results = run_in_parallel(argvs, env, HANG_SECONDS)
    baseline, problems = slow_runs(results)
    assert agent in baseline.stdout, baseline.stdout
    for name, result in results.items():
        if result.returncode is None:
            continue
        elif result.returncode != 1 or "Traceback" in result.stderr:
            problems.append(f"{name}: exit {result.returncode}, {result.stderr.strip()[-300:]!r}")
        else:
            clean(result)
    assert cli_store.app.read(agent).version == 1
    assert cli_store.app.read(workflow).version == 1
    assert not problems, "\n".join(problems)


def test_cli_unknown_enum_values(cli_store: CliStore) -> None:
    def document(owner_scope: object) -> str:
        return json.dumps(
            {
                "kind": "AgentExecution",
                "metadata": {"ownerScope": owner_scope},
                "spec": {"agentId": "a", "message": "m"},
            }
        )

    # An unknown number is kept (proto3 enums are open; the platform may know it).
    kept = cli_store.run("create", cli_store.file("e1.json", document(99)))
    assert kept.returncode == 0, kept.stderr
    kept_id = cli_store.created_id(kept)
    assert cli_store.app.get(kept_id).metadata.owner_scope == 99
    # An unknown name is an error.
    named = cli_store.run("create", cli_store.file("e2.json", document("BOGUS")))
    assert named.returncode == 1 and "unknown value 'BOGUS'" in named.stderr
    assert "expected one of platform, organization, identity_account" in named.stderr

    execution_id = cli_store.app.create(agent_execution(agent_id="a", message="m")).id
    for args, expected, code in [
        (["--phase", "99"], "unknown phase '99'", 2),  # An option's value: a usage error.
        (["--phase", "EXECUTION_BOGUS"], "unknown phase", 2),
        (["--patch", cli_store.file("p1.json", '{"phase": 42}')], "status.phase 42", 1),
        (
            ["--patch", cli_store.file("p2.json", '{"phase": "NOPE"}')],
            "phase: unknown value 'NOPE': expected one of PENDING, IN_PROGRESS,",
            1,
        ),
        (["--patch", cli_store.file("p3.json", '{"phase": -1}')], "status.phase -1", 1),
    ]:
        result = cli_store.run("status", execution_id, *args)
        assert result.returncode == code, (args, result.stdout)
        assert expected in result.stderr, result.stderr
    patch = '{"toolCalls": [{"id": "c1", "status": 77}], "messages": [{"type": 1234}]}'
    kept_patch = cli_store.run("status", execution_id, "--patch", cli_store.file("p4.json", patch))
    assert kept_patch.returncode == 0, kept_patch.stderr
    status: Any = cli_store.app.get(execution_id).status
    assert status.tool_calls[0].status == 77
    assert status.messages[0].type == 1234


CLI_ID_COMMANDS: dict[str, list[str]] = {
    "show": ["show", "--json"],
    "history": ["history"],
    "status": ["status", "--phase", "IN_PROGRESS"],
    "complete": ["complete", "--output", '{"a": 1}'],
    "fail": ["fail", "-m", "boom", "--details", '{"k": 1}'],
    "cancel": ["cancel", "--reason", "why"],
}


def shell_ids(marker: Path) -> list[bytes]:
    return [
        f"aex-$(touch {marker})".encode(),
        f"aex-`touch {marker}`".encode(),
        f"aex-a; touch {marker}".encode(),
        f"aex-a && touch {marker}".encode(),
        f"aex-a | touch {marker}".encode(),
    ]


cli_ids = st.one_of(
    st.sampled_from([i.encode("utf-8") for i in HOSTILE_IDS if "\x00" not in i]),
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\x00" not in b),
    st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t).map(str.encode),
    st.from_regex(r"(aex|wex)-[0-9a-z]{1,20}", fullmatch=True).map(str.encode),
)


def test_cli_hostile_ids(cli_store: CliStore) -> None:
    marker = cli_store.folder / "pwned"
    sentinel = cli_store.app.create(agent_execution(agent_id="a", message="m")).id

    def check_one(command: str, execution_id: bytes) -> None:
        result = cli_store.run(*CLI_ID_COMMANDS[command], "--", execution_id)
        assert result.returncode == 1, f"{command} {execution_id!r} succeeded: {result.stdout}"
        text = execution_id.decode("utf-8", "surrogateescape")
        if id_is_valid(text):
            assert "does not exist" in result.stderr, result.stderr
        else:
            assert "execution id" in result.stderr, result.stderr
        assert not marker.exists(), "a shell metacharacter in an id was executed"

    for command, execution_id in zip(sorted(CLI_ID_COMMANDS), shell_ids(marker), strict=False):
        check_one(command, execution_id)

    @fuzz_settings(8)
    @given(execution_id=cli_ids, command=st.sampled_from(sorted(CLI_ID_COMMANDS)))
    @example(execution_id=b"aex-x'; DROP TABLE ledger_events;--", command="cancel")
    @example(execution_id=b"aex-\xff\xfe", command="show")
    @example(execution_id=b"aex-a\nb", command="fail")
    @example(execution_id="aex-\u0430bc".encode(), command="history")
    @example(execution_id=b"x" * 100_000, command="status")
    def check(execution_id: bytes, command: str) -> None:
        check_one(command, execution_id)

    check()
    # The store is intact: the sentinel reads back through the CLI and the API.
    shown = cli_store.run("show", "--json", sentinel)
    assert json.loads(shown.stdout)["version"] == 1
    assert cli_store.app.read(sentinel).version == 1


def test_cli_create_with_hostile_ids_in_the_document(cli_store: CliStore) -> None:
    marker = cli_store.folder / "pwned"
    ids = [i for i in MUST_BE_REFUSED_IDS if i and len(i) < 1000][::7]
    ids += [shell_ids(marker)[0].decode()]
    # Fed on stdin; a lone surrogate travels as a JSON escape.
    for execution_id in [*ids, "aex-\ud800"]:
        document = json.dumps(
            {
                "kind": "AgentExecution",
                "metadata": {"id": execution_id},
                "spec": {"agentId": "a", "message": "m"},
            }
        )
        result = cli_store.run("create", "-", stdin=document.encode())
        assert result.returncode == 1, (execution_id, result.stdout)
        assert not marker.exists()


def test_cli_output_arguments_are_bounded(cli_store: CliStore) -> None:
    """Deep or huge --output/--details/--patch values: one clean error, nothing written."""
    execution_id = cli_store.app.create(agent_execution(agent_id="a", message="m")).id
    deep = cli_store.file("deep.json", deep_objects(100_000))
    huge = cli_store.file(
        "huge.json", json.dumps({f"k{i}": "v" * 40 for i in range(MAX_OUTCOME_BYTES // 20)})
    )
    for args, expected in [
        (["complete", execution_id, "--output", deep_objects(20_000)], "not valid JSON"),
        (["complete", execution_id, "--output", "@" + deep], "nests too deeply"),
        (["complete", execution_id, "--output", "@" + huge], f"at most {MAX_OUTCOME_BYTES}"),
        (["complete", execution_id, "--output", '{"a": NaN}'], "not a JSON object"),
        (["complete", execution_id, "--output", '{"a": 1e999}'], "not a JSON object"),
        (["fail", execution_id, "-m", "x", "--details", "@" + deep], "nests too deeply"),
        (["fail", execution_id, "-m", "", "--details", "{}"], "error.message"),
        (["fail", execution_id, "-m", "x", "--type", "T" * 5000], f"at most {MAX_TEXT_CHARS}"),
        (["cancel", execution_id, "--reason", "r" * 5000], f"at most {MAX_TEXT_CHARS}"),
        (["status", execution_id, "--patch", deep], "nests too deeply"),
        (["status", execution_id, "--actor", "a" * 5000, "--phase", "IN_PROGRESS"], "at most"),
    ]:
        result = cli_store.run(*args)
        assert result.returncode == 1, (args[:3], result.stdout)
        assert expected in result.stderr, (args[:3], result.stderr[:500])
    assert cli_store.app.read(execution_id).version == 1


def test_base64_token_in_documents_is_not_echoed(cli_store: CliStore) -> None:
    """A document refused for its token does not print the token back."""
    token = base64.b64encode(b"secret-token:" + bytes(range(256)) * 9).decode()
    document = json.dumps(
        {"kind": "AgentExecution", "spec": {"agentId": "a", "message": "m", "callbackToken": token}}
    )
    result = cli_store.run("create", "-", stdin=document.encode())
    assert result.returncode == 1 and "callback_token" in result.stderr, result.stderr
    assert token[:40] not in result.stderr
