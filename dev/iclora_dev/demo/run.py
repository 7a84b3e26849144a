"""The one-command demo: everything local, a tiny model on CPU, a synthetic dataset.

Every part is the real one: the control plane built from source, SeaweedFS for
S3, the operator (kopf, in this process; with --keep a process of the cluster's own that
outlives the demo), the CPU preflight and the trainer run as real containers of the trainer image
on a kubelet + containerd node (``--node-runtime processes``: as processes of this machine, by the
local pod runner). Only the model is tiny.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from iclora_api.v1alpha1 import API_GROUP, API_VERSION, PLURAL

log = logging.getLogger(__name__)
NAMESPACE = "demo"
NAME = "billboard-demo"
ROOT = Path(__file__).resolve().parents[3]


def _ensure(call: Any, *args: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        call(*args)
    except ApiException as exc:
        if exc.status != 409:
            raise


def demo_manifest(dataset_url: str, validation: dict[str, str] | None, steps: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "trainingDataUrl": dataset_url,
        "triggerPhrase": "repl4ce",
        "rank": 8,
        "numberOfSteps": steps,
        "learningRate": 0.001,
        "numberOfFrames": 9,
        "frameRate": 24,
        "resolution": "low",
        "aspectRatio": "16:9",
        "validationNumberOfFrames": 9,
        "validationResolution": "low",
        "validationAspectRatio": "16:9",
        "debugDataset": True,
        "datasetCredentialsSecretRef": {"name": "demo-dataset"},
    }
    if validation:
        spec["validation"] = [validation]
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "MaskedICLoraTraining",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": spec,
    }


def _follow(custom: Any, timeout: float) -> dict[str, Any]:
    """Show phase, step of total, loss and ETA live until the training ends."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    deadline = time.monotonic() + timeout
    columns = (TextColumn("[bold]{task.fields[phase]:<10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("eta {task.fields[eta]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=None, phase="Pending", loss="-", eta="-")
        while True:
            obj = custom.get_namespaced_custom_object(API_GROUP, API_VERSION, NAMESPACE, PLURAL, NAME)
            status = obj.get("status") or {}
            prog = status.get("progress") or {}
            eta = prog.get("etaSeconds")
            progress.update(task, completed=prog.get("step", 0), total=prog.get("totalSteps") or None,
                            phase=status.get("phase", "Pending"), loss=prog.get("loss", "-"),
                            eta=f"{eta}s" if eta is not None else "-")
            if status.get("phase") in ("Succeeded", "Failed"):
                return obj
            if time.monotonic() > deadline:
                raise TimeoutError(f"training not finished after {timeout:.0f} s (phase {status.get('phase')})")
            time.sleep(1)


def _download(s3: Any, uri: str, folder: Path) -> Path:
    from iclora_api.contract import split_s3_uri

    bucket, key = split_s3_uri(uri)
    target = folder / Path(key).name
    s3.client().fget_object(bucket, key, str(target))
    return target


def _model_fetch(s3: Any, artifacts: dict[str, str]) -> Any:
    """The run's result.json `model` (what the trainer downloaded and reused), next to its artifacts."""
    from iclora_api.contract import RESULT_KEY, Result, split_s3_uri

    lora = artifacts.get("loraFile")
    if not lora:
        return None
    bucket, key = split_s3_uri(lora)
    run = key.rsplit("/", 2)[0]  # <run prefix>/artifacts/lora.safetensors
    response = s3.client().get_object(bucket, f"{run}/{RESULT_KEY}")
    try:
        return Result.model_validate_json(response.read()).model
    finally:
        response.close()
        response.release_conn()


def _start_operator_process(cluster: Any, settings: Any, timeout: float = 60.0) -> Path:
    """`iclora operator` as a detached process recorded with the cluster's; waits for its liveness probe."""
    from iclora_dev.localcluster import procs
    from iclora_dev.localcluster.ports import free_ports

    (health,) = free_ports(1)
    store = settings.store
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "ICLORA_RECONCILE_INTERVAL_SECONDS": str(settings.reconcile_interval_seconds),
        "ICLORA_REPORT_POLL_SECONDS": str(settings.report_poll_seconds),
        "ICLORA_ALLOW_PRIVATE_DATASET_HOSTS": "true",
        "ICLORA_STORE_ENDPOINT": store.endpoint,
        "ICLORA_STORE_BUCKET": store.bucket,
        "ICLORA_STORE_ACCESS_KEY": store.access_key.get_secret_value(),
        "ICLORA_STORE_SECRET_KEY": store.secret_key.get_secret_value(),
    }
    log_path = cluster.logs_dir / "operator.log"
    argv = [sys.executable, "-c", "import sys; from iclora_api.cli import main; sys.exit(main())", "operator",
            "--liveness", f"http://127.0.0.1:{health}/healthz", "--metrics-port", "0", "--log-format", "plain"]
    _, record = procs.start("operator", argv, log_path, env=env, die_with_parent=False)
    cluster.processes.append(record)
    cluster.save_state()
    deadline = time.monotonic() + timeout
    while not _http_ok(f"http://127.0.0.1:{health}/healthz"):
        if not record.alive():
            raise RuntimeError(f"the operator exited; see {log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the operator did not start in {timeout:.0f} s; see {log_path}")
        time.sleep(0.5)
    return log_path


def _generate(out: Any, folder: Path, inputs: Path, prompt: str, tiny: Any) -> None:
    """Use the LoRA as a user would: `iclora generate` on the validation entry. Size, frames, fps,
    guidance and seed come from the LoRA's record of the preview, so this is the reel's result."""
    import shlex

    import numpy as np

    from iclora_api.cli import main as iclora
    from iclora_trainer.validation_media import load_fitted

    argv = ["generate", "--lora", str(folder / "lora.safetensors"), "--source", str(inputs / "source.mp4"),
            "--mask", str(inputs / "mask.png"), "--reference", str(inputs / "reference.mp4"), "--prompt", prompt,
            "--model-path", str(tiny.model_path), "--text-encoder-path", str(tiny.text_encoder_path),
            "--device", "cpu", "--lossless", "--output", str(folder / "generated.mp4"),
            "--reel", str(folder / "generated-reel.mp4")]
    out(f"[demo] running the LoRA on the validation entry:\n  iclora {shlex.join(argv[1:])}\n")
    if iclora(argv) != 0:
        raise RuntimeError("iclora generate failed")
    import av

    with av.open(str(folder / "generated.mp4")) as c:
        result = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    frames, height, width = result.shape[:3]
    source = load_fitted(inputs / "source.mp4", frames, 24.0, width, height)
    mask = load_fitted(inputs / "mask.png", frames, 24.0, width, height, mask=True)
    kept = bool(np.array_equal(result[~mask], source[~mask]))
    out(f"[demo] generated.mp4: {frames} frames {width}x{height}; kept region equals the source: {kept}\n")
    if not kept:
        raise RuntimeError("generate changed pixels outside the mask")


def _http_ok(url: str) -> bool:
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def run_demo(args: argparse.Namespace) -> int:
    from kubernetes import client, config

    from iclora_api.contract import AWS_ACCESS_KEY_ID_ENV, AWS_ENDPOINT_URL_ENV, AWS_SECRET_ACCESS_KEY_ENV
    from iclora_api.crdgen import render_crd, render_profile_crd
    from iclora_dev.localcluster import binaries
    from iclora_dev.localcluster.cluster import ClusterConfig, LocalCluster
    from iclora_dev.synthetic import write_dataset_zip, write_validation_set
    from iclora_dev.tiny_model import create_tiny_checkpoint
    from iclora_operator.adapters.kube import install_crds
    from iclora_operator.run import run_operator
    from iclora_operator.settings import OperatorSettings, StoreSettings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The operator runs in a thread here; kopf's note that it cannot take OS signals is expected.
    logging.getLogger("kopf._core.reactor.running").setLevel(logging.ERROR)
    out = sys.stdout.write
    started = time.monotonic()
    out("[demo] building or reusing the control-plane binaries\n")
    containers = args.node_runtime == "containers"
    binaries.build(("k8s", "etcd", "kwok", *(binaries.NODE_COMPONENTS if containers else ())))
    if containers:
        from iclora_dev.localcluster import images

        out("[demo] building or reusing the images (base, pause, trainer; the first build takes minutes)\n")
        trainer_image = images.build_all().trainer
    else:
        trainer_image = "local"
    state = Path(args.state_dir) if args.state_dir else binaries.cache_root() / "clusters" / "demo"
    # Only the local node: every pod runs there, as a container (or a process of this machine).
    cluster = LocalCluster(state, ClusterConfig(gpu_nodes=0, cpu_nodes=0, local_runner=True, local_runner_gpus=1,
                                                die_with_parent=not args.keep, node_runtime=args.node_runtime))
    out(f"[demo] starting the local cluster in {state}\n")
    cluster.start()
    stop_flag = threading.Event()
    operator_thread = None
    try:
        s3 = cluster.s3
        api_client = config.new_client_from_config(str(cluster.kubeconfig))
        core = client.CoreV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        install_crds(api_client, [render_crd(), render_profile_crd()])
        model_dir = binaries.cache_root() / "models" / "tiny-ltx"
        tiny = create_tiny_checkpoint(model_dir)
        # The real path of the weights (docs/admin-guide.md): uploaded once to the store, named by
        # s3:// URI in the profile, fetched by the trainer into a node cache (a hostPath folder).
        model = {"checkpoint": f"s3://{s3.bucket}/models/tiny-ltx/{tiny.model_path.name}",
                 "textEncoder": f"s3://{s3.bucket}/models/tiny-text-encoder/"}
        out(f"[demo] uploading the tiny model: {model['checkpoint']}, {model['textEncoder']}\n")
        s3.client().fput_object(s3.bucket, f"models/tiny-ltx/{tiny.model_path.name}", str(tiny.model_path))
        s3.client().fput_object(s3.bucket, f"models/tiny-text-encoder/{tiny.text_encoder_path.name}",
                                str(tiny.text_encoder_path))
        node_cache = state / "node-model-cache"
        # The node cache must be writable by the pods' uid/gid (the profile's runAsUser, 1000); a
        # platform prepares it the same way (docs/admin-guide.md).
        node_cache.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(node_cache, 1000, 1000)
        _ensure(custom.create_cluster_custom_object, API_GROUP, API_VERSION, "trainingprofiles", {
            "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "TrainingProfile", "metadata": {"name": "default"},
            "spec": {
                "image": trainer_image, "gpusPerNode": 1, "nodes": 1, "device": "cpu", "zeroStage": 0,
                "model": {**model, "cacheVolume": "model-cache"},
                "volumes": [{"name": "model-cache",
                             "hostPath": {"path": str(node_cache), "type": "DirectoryOrCreate"}}],
                "checkpointInterval": 50,
                "preflightResources": {"cpu": "1", "memory": "2Gi"},
                "trainerResources": {"cpu": "1", "memory": "4Gi"},
                "shmSize": "1Gi", "scratchSize": "10Gi",
            },
        })
        _ensure(core.create_namespace, {"metadata": {"name": NAMESPACE}})
        out("[demo] writing and uploading a synthetic dataset of "
            f"{args.triplets} triplets (mixed containers, image and video masks, captions)\n")
        zip_path = write_dataset_zip(state / "demo-dataset.zip", triplets=args.triplets)
        s3.client().fput_object(s3.bucket, "datasets/demo-dataset.zip", str(zip_path))
        _ensure(core.create_namespaced_secret, NAMESPACE, {
            "metadata": {"name": "demo-dataset"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in {
                AWS_ACCESS_KEY_ID_ENV: s3.access_key, AWS_SECRET_ACCESS_KEY_ENV: s3.secret_key,
                AWS_ENDPOINT_URL_ENV: s3.endpoint}.items()},
        })
        settings = OperatorSettings(
            reconcile_interval_seconds=2.0, report_poll_seconds=2.0, allow_private_dataset_hosts=True,
            store=StoreSettings(endpoint=s3.endpoint, bucket=s3.bucket, access_key=s3.access_key,
                                secret_key=s3.secret_key),
        )
        if args.keep:
            # A process of the cluster's own (recorded in its state dir): it keeps serving after the
            # demo exits, and `iclora local-cluster down` stops it with the rest.
            operator_log = _start_operator_process(cluster, settings)
            out(f"[demo] operator running as a process of the cluster; log: {operator_log}\n")
        else:
            ready = threading.Event()
            operator_thread = threading.Thread(
                target=run_operator, args=(settings,), daemon=True,
                kwargs={"stop_flag": stop_flag, "ready_flag": ready, "metrics_port": 0,
                        "kubeconfig": str(cluster.kubeconfig)},
            )
            operator_thread.start()
            if not ready.wait(60):
                raise RuntimeError("the operator did not start")
        validation: dict[str, str] = {"prompt": "repl4ce the masked region with a stripe pattern"}
        for key, path in write_validation_set(state / "validation").items():
            s3.client().fput_object(s3.bucket, f"validation/{path.name}", str(path))
            validation[key] = f"s3://{s3.bucket}/validation/{path.name}"
        manifest = demo_manifest(f"s3://{s3.bucket}/datasets/demo-dataset.zip", validation, args.steps)
        (state / "demo-training.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        _ensure(custom.create_namespaced_custom_object, API_GROUP, API_VERSION, NAMESPACE, PLURAL, manifest)
        out(f"[demo] applied MaskedICLoraTraining {NAMESPACE}/{NAME}; following it\n")
        final = _follow(custom, args.timeout)
        status = final.get("status") or {}
        summary = {k: status.get(k) for k in ("phase", "billingUnits", "artifacts", "failure", "effective")}
        out(yaml.safe_dump({"status": summary}, sort_keys=False))
        if status.get("phase") != "Succeeded":
            failure = status.get("failure") or {}
            out(f"[demo] FAILED: {failure.get('reason')}: {failure.get('message')}\n")
            out(f"[demo] pod logs: {cluster.pods_dir}\n" if not containers else
                f"[demo] pod logs: KUBECONFIG={cluster.kubeconfig} kubectl logs -n {NAMESPACE} -l job-name\n")
            return 1
        fetch = _model_fetch(s3, status.get("artifacts") or {})
        if fetch is not None:
            out(f"[demo] model: {fetch.downloaded_bytes} bytes downloaded, {fetch.reused_bytes} from the node "
                f"cache {node_cache}\n")
        folder = Path(args.output).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        for key, uri in sorted((status.get("artifacts") or {}).items()):
            out(f"[demo] {key:<13} {uri}\n              -> {_download(s3, uri, folder)}\n")
        _generate(out, folder, state / "validation", validation["prompt"], tiny)
        out(f"[demo] succeeded in {time.monotonic() - started:.0f} s; {status.get('billingUnits')} billing units\n")
        if args.keep:
            out(f"[demo] cluster and operator left running. Train again with:\n"
                f"  export KUBECONFIG={cluster.kubeconfig}\n"
                f"  sed 's/name: {NAME}$/name: {NAME}-2/' {state / 'demo-training.yaml'} | kubectl apply -f -\n"
                f"  kubectl get micl -n {NAMESPACE} -w\n"
                f"Stop the cluster and its operator with:\n  iclora local-cluster down --state-dir {state}\n")
        return 0
    finally:
        stop_flag.set()
        if operator_thread is not None:
            operator_thread.join(30)
        if not args.keep:
            cluster.stop()
