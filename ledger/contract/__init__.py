"""The contract: what callers see of the ledger.

The generated messages live in :mod:`ledger.api` (their Python package follows the
``.proto`` package, which is also the stored form's type name, so it stays where it
is); this package adds the kinds, phases and ids, the names shared by every layer
(topics, logs, tables) and the typed errors.
"""
