"""What the tests and the benchmarks share: one harness, written once.

- :mod:`tests.support.builders`: resources, specs and status patches;
- :mod:`tests.support.processes`: child processes (writers, ``ledger dispatcher run``,
  ``ledger projections run``) started, stopped and killed, with their logs;
- :mod:`tests.support.servers`: PostgreSQL schemas and proxies, Temporal dev servers;
- :mod:`tests.support.waiting`: :func:`~tests.support.waiting.wait_for`, the one poll loop;
- :mod:`tests.support.writer`: the writer processes (``python -m tests.support.writer``).

Importable from ``tests/`` (pytest runs from the repository root) and from
``bench/`` (the scripts put the repository root on ``sys.path``).
"""
