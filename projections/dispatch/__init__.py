"""The completion dispatcher: it wakes each completed execution's caller."""
