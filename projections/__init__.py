"""Followers of the ledger's log: the completion dispatcher and the read models."""
