"""Pods bound to the local-runner node run as real local processes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from kubernetes import client

from iclora_dev.localcluster import nodes, procs
from iclora_dev.pytest_plugin import wait_for

pytestmark = pytest.mark.cluster


def _local_pod(name: str, script: str, *args: str, **container: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {nodes.LOCAL_RUNNER_LABEL: "true"},
            "tolerations": [nodes.LOCAL_RUNNER_TOLERATION],
            "containers": [
                {
                    "name": "main",
                    "image": "ignored",
                    "command": [sys.executable, "-c", script],
                    "args": list(args),
                    **container,
                }
            ],
        },
    }


def _terminal(core: client.CoreV1Api, name: str, ns: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, ns)
    return pod if pod.status.phase in ("Succeeded", "Failed") else None


def test_pod_runs_python_and_reports_termination_message(k8s_api, k8s_namespace, local_cluster):
    core = client.CoreV1Api(k8s_api)
    script = (
        "import json, os, sys\n"
        "open(sys.argv[1], 'w').write(json.dumps({'pid': os.getpid(), 'pod': os.environ['POD']}))\n"
        "print('hello from the pod')\n"
    )
    env = [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    # The in-pod path in args is rewritten to the pod's termination-message file.
    core.create_namespaced_pod(k8s_namespace, _local_pod("hello", script, "/dev/termination-log", env=env))
    pod = wait_for(lambda: _terminal(core, "hello", k8s_namespace), what="pod finished")
    assert pod.spec.node_name == local_cluster.local_node_name
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    message = json.loads(terminated.message)
    assert message["pod"] == "hello"
    assert message["pid"] != os.getpid()
    log = local_cluster.pods_dir / k8s_namespace / "hello" / "main.log"
    assert log.read_text() == "hello from the pod\n"


def test_failing_pod_reports_exit_code_and_log_tail(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    script = "import sys\nprint('dataset is broken', file=sys.stderr)\nsys.exit(13)\n"
    core.create_namespaced_pod(
        k8s_namespace, _local_pod("fails", script, terminationMessagePolicy="FallbackToLogsOnError")
    )
    pod = wait_for(lambda: _terminal(core, "fails", k8s_namespace), what="pod finished")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 13
    assert terminated.message.strip() == "dataset is broken"


def test_env_from_secret_configmap_and_emptydir(k8s_api, k8s_namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_secret(
        k8s_namespace, {"metadata": {"name": "creds"}, "stringData": {"key": "s3cr3t"}}
    )
    core.create_namespaced_config_map(k8s_namespace, {"metadata": {"name": "cfg"}, "data": {"MODE": "fast"}})
    script = (
        "import os, pathlib\n"
        "out = pathlib.Path(os.environ['OUT'])\n"
        "out.write_text(os.environ['SECRET'] + ' ' + os.environ['MODE'])\n"
        "assert out.parent == pathlib.Path(os.environ['ICLORA_MOUNT_SCRATCH'])\n"
        "msg = out.read_text() + ' ' + str(out)\n"
        "open(os.environ['ICLORA_TERMINATION_LOG'], 'w').write(msg)\n"
    )
    pod = _local_pod(
        "env",
        script,
        env=[
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
            {"name": "OUT", "value": "/scratch/out.txt"},
        ],
        envFrom=[{"configMapRef": {"name": "cfg"}}],
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    pod["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    core.create_namespaced_pod(k8s_namespace, pod)
    done = wait_for(lambda: _terminal(core, "env", k8s_namespace), what="pod finished")
    terminated = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Succeeded", terminated
    secret, mode, out = terminated.message.split(" ")
    assert (secret, mode) == ("s3cr3t", "fast")
    # /scratch is no free name under the temp folder: the runner rewrote it into the pod's folder.
    assert Path(out).read_text() == "s3cr3t fast"
    assert not Path("/scratch").exists()


def test_deleting_pod_kills_its_process(k8s_api, k8s_namespace, local_cluster):
    core = client.CoreV1Api(k8s_api)
    script = "import os, time\nopen(os.environ['ICLORA_TERMINATION_LOG'], 'w').write(str(os.getpid()))\n"
    script += "time.sleep(600)\n"
    core.create_namespaced_pod(k8s_namespace, _local_pod("sleeper", script))
    pid_file = local_cluster.pods_dir / k8s_namespace / "sleeper" / "main.termination-log"
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="process started"))
    assert procs.proc_start_time(pid) is not None
    core.delete_namespaced_pod("sleeper", k8s_namespace)
    wait_for(lambda: procs.proc_start_time(pid) is None, what="process killed")
    wait_for(
        lambda: "sleeper" not in [p.metadata.name for p in core.list_namespaced_pod(k8s_namespace).items],
        what="pod object removed",
    )


def test_indexed_job_runs_on_local_runner(k8s_api, k8s_namespace, local_cluster):
    """The path the demo takes: a Job's pods run for real, and the Job controller sees them finish."""
    batch, core = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api)
    script = (
        "import os\n"
        "assert os.environ['MASTER_ADDR'] == '127.0.0.1', os.environ['MASTER_ADDR']\n"
        "open(os.environ['ICLORA_TERMINATION_LOG'], 'w').write(os.environ['JOB_COMPLETION_INDEX'])\n"
    )
    template = _local_pod("ignored", script)["spec"]
    # No cluster DNS: the rendezvous address behind the headless Service resolves to loopback.
    template["subdomain"] = "indexed-svc"
    template["containers"][0]["env"] = [{"name": "MASTER_ADDR", "value": "indexed-0.indexed-svc"}]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "indexed"},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {"spec": template},
        },
    }
    batch.create_namespaced_job(k8s_namespace, job)

    def complete() -> bool:
        conds = batch.read_namespaced_job("indexed", k8s_namespace).status.conditions or []
        return any(c.type == "Complete" and c.status == "True" for c in conds)

    wait_for(complete, timeout=60, what="Indexed Job Complete")
    pods = core.list_namespaced_pod(k8s_namespace, label_selector="job-name=indexed").items
    assert {p.spec.node_name for p in pods} == {local_cluster.local_node_name}
    messages = sorted(p.status.container_statuses[0].state.terminated.message for p in pods)
    assert messages == ["0", "1"]


def test_pod_shaped_like_the_operators_jobs(k8s_api, k8s_namespace):
    """In-pod paths given as env values, workingDir and $(VAR) args all land in the pod's folder."""
    core = client.CoreV1Api(k8s_api)
    script = (
        "import os, pathlib, sys\n"
        "assert os.getcwd() == os.environ['TMPDIR'] == os.environ['ICLORA_MOUNT_SCRATCH'], os.getcwd()\n"
        "assert sys.argv[1] == '--out=' + os.environ['TMPDIR'] + '/result.json', sys.argv\n"
        "assert sys.argv[2] == '--index=0', sys.argv\n"
        "assert 'KUBECONFIG' not in os.environ\n"
        "open(os.environ['ICLORA_TERMINATION_LOG'], 'w').write('{\"ok\": true}')\n"
    )
    pod = _local_pod(
        "shaped",
        script,
        "--out=/scratch/result.json",
        "--index=$(JOB_COMPLETION_INDEX)",
        env=[
            {"name": "ICLORA_TERMINATION_LOG", "value": "/dev/termination-log"},
            {"name": "TMPDIR", "value": "/scratch"},
            {"name": "JOB_COMPLETION_INDEX", "value": "0"},
        ],
        volumeMounts=[
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        workingDir="/scratch",
        terminationMessagePath="/dev/termination-log",
        terminationMessagePolicy="FallbackToLogsOnError",
        securityContext={"runAsNonRoot": True, "readOnlyRootFilesystem": True},
    )
    pod["spec"]["volumes"] = [
        {"name": "scratch", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    pod["spec"]["automountServiceAccountToken"] = False
    core.create_namespaced_pod(k8s_namespace, pod)
    done = wait_for(lambda: _terminal(core, "shaped", k8s_namespace), what="pod finished")
    terminated = done.status.container_statuses[0].state.terminated
    assert done.status.phase == "Succeeded", terminated.message
    assert terminated.message == '{"ok": true}'


def test_hostpath_and_claim_volumes_are_folders_of_this_machine(k8s_api, k8s_namespace, tmp_path):
    """The node is this machine: a hostPath is that folder, a bound claim its PersistentVolume's path,
    and mount paths are rewritten in file:// URIs too (model sources, issue 21)."""
    core = client.CoreV1Api(k8s_api)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "ltx.safetensors").write_text("weights")
    cache = tmp_path / "node-cache"  # DirectoryOrCreate: the runner creates it
    pv_name = f"pv-{k8s_namespace}"
    core.create_persistent_volume({
        "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "manual",
                 "hostPath": {"path": str(weights)},
                 "claimRef": {"namespace": k8s_namespace, "name": "weights"}},
    })
    try:
        core.create_namespaced_persistent_volume_claim(k8s_namespace, {
            "metadata": {"name": "weights"},
            "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "manual", "volumeName": pv_name,
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
        wait_for(lambda: core.read_namespaced_persistent_volume_claim("weights", k8s_namespace).status.phase
                 == "Bound", timeout=60, what="claim bound")
        script = (
            "import os, pathlib, sys\n"
            "src = pathlib.Path(os.environ['MODEL'].removeprefix('file://'))\n"
            "pathlib.Path(os.environ['CACHE'], 'copy').write_text(src.read_text())\n"
            "open(os.environ['ICLORA_TERMINATION_LOG'], 'w').write(os.environ['MODEL'])\n"
        )
        pod = _local_pod("vols", script, env=[{"name": "MODEL", "value": "file:///models/ltx.safetensors"},
                                             {"name": "CACHE", "value": "/var/cache/iclora/models"}],
                         volumeMounts=[{"name": "weights", "mountPath": "/models", "readOnly": True},
                                       {"name": "cache", "mountPath": "/var/cache/iclora/models"}])
        pod["spec"]["volumes"] = [
            {"name": "weights", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}},
            {"name": "cache", "hostPath": {"path": str(cache), "type": "DirectoryOrCreate"}},
        ]
        core.create_namespaced_pod(k8s_namespace, pod)
        done = wait_for(lambda: _terminal(core, "vols", k8s_namespace), timeout=60, what="pod finished")
        terminated = done.status.container_statuses[0].state.terminated
        assert done.status.phase == "Succeeded", terminated
        assert terminated.message == f"file://{weights}/ltx.safetensors"
        assert (cache / "copy").read_text() == "weights"
    finally:
        core.delete_persistent_volume(pv_name)


# What a tenant may write in a prompt: the kubelet's `$(NAME)` references and its `$$` escape.
DOLLARS = "glow $(HOME) costs $$5, $(ICLORA_SPEC) and $(NOT_DEFINED) $"


@pytest.mark.parametrize("stage", ["preflight", "training"])
def test_user_text_reaches_the_process_unchanged(k8s_api, k8s_namespace, stage):
    """Issue 23.6: the operator's rendered Job (escaped env values, args and command) runs on the local
    runner, which expands them as the kubelet does; the spec, the store URI and the command arrive as
    written. Issue 23.7 on the way: containers without a GPU get NVIDIA_VISIBLE_DEVICES=void."""
    from iclora_api.profile import TrainingProfileSpec
    from iclora_api.validation import validate_spec
    from iclora_operator.render import RunContext, StoreLocation, render_preflight_job, render_training_job

    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    name = f"dollar-{stage}"
    core.create_namespaced_secret(k8s_namespace, {"metadata": {"name": f"{name}-store"}, "stringData": {
        "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}})
    script = (
        "import json, os, sys\n"
        "spec = json.loads(os.environ['ICLORA_SPEC'])\n"
        "out = {'trigger': spec['triggerPhrase'], 'negative': spec['validationNegativePrompt'],\n"
        "       'output': sys.argv[-1], 'gpus': os.environ.get('NVIDIA_VISIBLE_DEVICES')}\n"
        "open(os.environ['ICLORA_TERMINATION_LOG'], 'w').write(json.dumps(out))\n"
    )
    spec = validate_spec({"trainingDataUrl": "https://e.com/d.zip", "numberOfFrames": 100,
                          "triggerPhrase": DOLLARS, "validationNegativePrompt": DOLLARS})
    small = {"cpu": "100m", "memory": "128Mi"}
    profile = TrainingProfileSpec(
        gpusPerNode=0, device="cpu", scratchSize="1Gi", shmSize="64Mi", preflightResources=small,
        trainerResources=small, nodeSelector={nodes.LOCAL_RUNNER_LABEL: "true"},
        tolerations=[nodes.LOCAL_RUNNER_TOLERATION], preflightNodeSelector={nodes.LOCAL_RUNNER_LABEL: "true"},
        preflightTolerations=[nodes.LOCAL_RUNNER_TOLERATION])
    ctx = RunContext(name=name, namespace=k8s_namespace, uid="uid-dollar", spec=spec, profile=profile,
                     store=StoreLocation("http://127.0.0.1:1", "bucket", f"runs/{DOLLARS}"),
                     store_secret=f"{name}-store", labels={}, trainer_command=(sys.executable, "-c", script))
    job = render_preflight_job(ctx) if stage == "preflight" else render_training_job(ctx, suspend=False)
    job["metadata"].pop("ownerReferences")  # no training object owns it here (the GC would delete it)
    job["metadata"]["name"] = name
    batch.create_namespaced_job(k8s_namespace, job)
    pods = wait_for(lambda: [p for p in core.list_namespaced_pod(k8s_namespace, label_selector=f"job-name={name}").items
                             if p.status.phase in ("Succeeded", "Failed")], timeout=90, what=f"{name} pod finished")
    terminated = pods[0].status.container_statuses[0].state.terminated
    assert pods[0].status.phase == "Succeeded", terminated.message
    assert json.loads(terminated.message) == {"trigger": DOLLARS, "negative": DOLLARS,
                                              "output": f"s3://bucket/runs/{DOLLARS}", "gpus": "void"}
