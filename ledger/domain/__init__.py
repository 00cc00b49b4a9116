"""The domain: the execution aggregate, its events, the status rules and validation.

Pure: it knows nothing of stores, Temporal or the CLI.
"""
