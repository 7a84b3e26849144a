"""The example manifests a user copies: accepted by the API server and by the command they run."""

from __future__ import annotations

import argparse

import pytest
import yaml
from kubernetes import client

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.cluster


def test_generate_job_example_passes_server_side_dry_run_and_its_arguments_parse(k8s_api, k8s_namespace):
    from iclora_trainer import generate

    job = yaml.safe_load((REPO_ROOT / "examples" / "generate-job.yaml").read_text())
    created = client.BatchV1Api(k8s_api).create_namespaced_job(k8s_namespace, job, dry_run="All")
    container = created.spec.template.spec.containers[0]
    assert container.args[0] == "generate"

    parser = argparse.ArgumentParser(prog="iclora")
    generate.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(container.args)  # argparse exits on an unknown or missing flag
    assert args.output_uri.startswith("s3://") and args.lora.startswith("s3://")
    from iclora_api.trainer_settings import TrainerSettings, parse_overrides

    TrainerSettings.model_validate(parse_overrides(args.levers))
