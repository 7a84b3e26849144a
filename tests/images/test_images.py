"""The images, as far as they can be checked without a Docker engine."""

from __future__ import annotations

import subprocess
import sys

import pytest
from dockerfile_parse import DockerfileParser

from tests.conftest import REPO_ROOT

DOCKERFILES = {"operator": REPO_ROOT / "operator" / "Dockerfile", "trainer": REPO_ROOT / "trainer" / "Dockerfile"}


def parse(path):
    parser = DockerfileParser(fileobj=open(path, "rb"))  # noqa: SIM115 - read at once by the parser
    return parser.structure, parser.baseimage


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_lint(image):
    structure, base = parse(DOCKERFILES[image])
    instructions = [s["instruction"] for s in structure]
    froms = [s["value"] for s in structure if s["instruction"] == "FROM"]
    assert all(":" in f.split()[0] and not f.split()[0].endswith(":latest") for f in froms), froms  # pinned bases
    users = [s["value"] for s in structure if s["instruction"] == "USER"]
    assert users and not users[-1].startswith(("0", "root")), "the image must end as a non-root user"
    final_stage = instructions[len(instructions) - 1 - instructions[::-1].index("FROM"):]
    last_user = len(final_stage) - 1 - final_stage[::-1].index("USER")
    assert "RUN" not in final_stage[last_user:], "the final stage must switch to its non-root USER after its last RUN"
    assert "ENTRYPOINT" in instructions
    for run in (s["value"] for s in structure if s["instruction"] == "RUN"):
        if "pip install" in run:
            assert "--no-cache-dir" in run or "PIP_NO_CACHE_DIR" in DOCKERFILES[image].read_text()
        assert "curl" not in run or "| sh" not in run


def test_trainer_image_installs_ltx_core_without_its_deps_and_deepspeed():
    text = DOCKERFILES["trainer"].read_text()
    assert '--no-deps "ltx-core' in text
    assert "deepspeed" in text and "[trainer]" in text


@pytest.mark.slow
def test_operator_image_install_steps_give_a_slim_working_cli(tmp_path):
    """Mirror of operator/Dockerfile's install: `.[operator]` in a fresh venv, no torch, CLI works."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-c", str(REPO_ROOT / "constraints.txt"), f"{REPO_ROOT}[operator]"], check=True, timeout=900)
    py = str(venv / "bin" / "python")
    probe = subprocess.run([py, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "True", "the operator image must not carry torch"
    for args in (["operator", "--help"], ["crd"]):
        result = subprocess.run([str(venv / "bin" / "iclora"), *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    assert "MaskedICLoraTraining" in result.stdout


def test_operator_image_runs_on_jemalloc():
    """glibc malloc fragments under a burst of resources (bench/operator_scale.py): the image preloads jemalloc."""
    structure, _ = parse(DOCKERFILES["operator"])
    env = " ".join(s["value"] for s in structure if s["instruction"] == "ENV")
    preload = next(w.split("=", 1)[1] for w in env.split() if w.startswith("LD_PRELOAD="))
    runs = " ".join(s["value"] for s in structure if s["instruction"] == "RUN")
    assert "libjemalloc2" in runs and preload in runs  # installed, and the preloaded path is created
    assert "MALLOC_CONF=" in env


def test_every_install_is_pinned_by_the_constraints():
    """CI, the demo venv and both images resolve the same versions: an upstream release changes none."""
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    for package in ("torch", "deepspeed", "peft", "kopf", "kubernetes", "pydantic", "ruff", "ltx-core", "minio"):
        assert package in pins, f"constraints.txt lacks {package}"
    installs = [line.replace('"', "") for line in (REPO_ROOT / "scripts" / "setup-env.sh").read_text().splitlines()]
    for image in DOCKERFILES.values():
        installs += [s["value"] for s in parse(image)[0] if s["instruction"] == "RUN" and "pip install" in s["value"]]
    assert sum("pip install" in c for c in installs) >= 4
    for command in installs:
        for part in command.split("&&"):
            if "pip install" in part and "-U pip" not in part:
                assert "-c " in part and "constraints" in part.lower(), f"unpinned install: {part.strip()}"
