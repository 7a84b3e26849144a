"""Small CLI commands of the operator package."""
