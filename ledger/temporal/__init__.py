"""The Temporal side: the caller's activities and workflow helpers, client settings."""
