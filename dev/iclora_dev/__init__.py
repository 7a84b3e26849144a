"""Development tooling of masked-iclora (the `masked-iclora-dev` distribution, never in an image).

- `localcluster/`: a real Kubernetes control plane built from source, kwok GPU nodes,
  SeaweedFS and a pod runner (`iclora local-cluster`);
- `pytest_plugin`: session cluster, S3 store and per-test namespaces for the cluster tests;
- `demo/`: `iclora demo`, the whole product on the local cluster;
- `tiny_model`, `synthetic`, `synthetic_prepared`, `evaluation`: a tiny LTX checkpoint,
  synthetic raw and prepared datasets, and the learning test's held-out loss.

It may import every product package; none of them imports it (import-linter, pyproject.toml).
"""
