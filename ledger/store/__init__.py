"""Persistence: ``LEDGER_URL``, connections and locks, recorders, transcodings, cipher,
the secret vault and least-privilege roles."""
