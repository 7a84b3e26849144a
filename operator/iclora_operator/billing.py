"""Billing: the product's one rule, in one place."""

from __future__ import annotations

MINIMUM_UNITS = 100


def billing_units(number_of_steps: int, succeeded: bool) -> int:
    """Units billed for a run: max(100, numberOfSteps) on success, 0 for any failure."""
    if not succeeded:
        return 0
    return max(MINIMUM_UNITS, number_of_steps)
