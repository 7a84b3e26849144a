"""Cluster tests: a real control plane, kwok nodes, the local pod runner and S3 (one per session).

The fixtures come from `iclora_dev.pytest_plugin`, loaded in tests/conftest.py.
"""
