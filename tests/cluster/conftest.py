"""Cluster tests: a real control plane, kwok nodes, the local pod runner and S3 (one per session)."""

pytest_plugins = ["iclora_operator.localcluster.pytest_plugin"]
