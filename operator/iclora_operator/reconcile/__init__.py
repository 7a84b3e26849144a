"""Pure reconciliation: what we observed -> the status to write and the actions to take."""
