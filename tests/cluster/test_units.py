"""Pure parts of the local cluster: no processes started."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from iclora_dev.localcluster import binaries
from iclora_dev.localcluster.podrunner import PathMap, expand


def test_path_map_rewrites_prefixes_and_flag_values():
    paths = PathMap()
    paths.add("/scratch", "/host/pod/volumes/scratch")
    paths.add("/scratch/cache", "/host/pod/volumes/cache")
    assert paths.rewrite("/scratch") == "/host/pod/volumes/scratch"
    assert paths.rewrite("/scratch/a/b") == "/host/pod/volumes/scratch/a/b"
    assert paths.rewrite("/scratch/cache/x") == "/host/pod/volumes/cache/x"  # longest mount wins
    assert paths.rewrite("--out=/scratch/x") == "--out=/host/pod/volumes/scratch/x"
    assert paths.rewrite("/scratchy") == "/scratchy"
    assert paths.rewrite("relative/scratch") == "relative/scratch"


def test_expand_follows_kubernetes_rules():
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"


def test_staging_replaces_are_read_from_go_mod():
    gomod = (
        "module k8s.io/kubernetes\n\nreplace (\n"
        "\tk8s.io/api => ./staging/src/k8s.io/api\n"
        "\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n)\n"
    )
    assert binaries._staging_replaces(gomod, "v1.36.3") == {
        "k8s.io/api": "k8s.io/api v0.36.3",
        "k8s.io/client-go": "k8s.io/client-go v0.36.3",
    }


def test_stage_file_is_valid_yaml_with_unique_stages():
    docs = list(yaml.safe_load_all(Path(binaries.__file__).with_name("stages.yaml").read_text()))
    names = [d["metadata"]["name"] for d in docs]
    assert len(names) == len(set(names))
    assert {"node-initialize", "pod-ready", "pod-complete", "pod-exit", "pod-delete"} <= set(names)
    assert all(d["kind"] == "Stage" for d in docs)


def test_prebuilt_binaries_dir_wins(tmp_path, monkeypatch):
    prebuilt = tmp_path / "bin"
    prebuilt.mkdir()
    apiserver = prebuilt / "kube-apiserver"
    apiserver.write_text("#!/bin/sh\n")
    apiserver.chmod(0o755)
    monkeypatch.setenv(binaries.BIN_DIR_ENV, str(prebuilt))
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path / "absent"))
    assert binaries.find_binary("kube-apiserver") == apiserver


def test_missing_binaries_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv(binaries.CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.delenv(binaries.BIN_DIR_ENV, raising=False)
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    with pytest.raises(binaries.BinariesMissing, match=r"kube-scheduler.*iclora local-cluster build"):
        binaries.require_binaries(["kube-scheduler"])
