"""Rank discovery from the environment.

Either the torch/DeepSpeed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), or a Kubernetes Indexed Job: JOB_COMPLETION_INDEX is the node
index, ICLORA_NNODES and ICLORA_GPUS_PER_NODE the geometry, MASTER_ADDR the
headless-Service name of pod 0. With several GPUs per node, `iclora train`
starts one process per GPU (LOCAL_RANK) and this module derives RANK from them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from iclora_api.contract import (
    GPUS_PER_NODE_ENV,
    JOB_COMPLETION_INDEX_ENV,
    MASTER_ADDR_ENV,
    MASTER_PORT_ENV,
    NNODES_ENV,
)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    gpus_per_node: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    env = os.environ if env is None else env
    local_rank = int(env.get("LOCAL_RANK", "0"))
    gpus = int(env.get(GPUS_PER_NODE_ENV, "1"))
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    elif JOB_COMPLETION_INDEX_ENV in env:
        nodes = int(env.get(NNODES_ENV, "1"))
        rank = int(env[JOB_COMPLETION_INDEX_ENV]) * gpus + local_rank
        world = nodes * gpus
    else:
        rank, world = 0, gpus if "LOCAL_RANK" in env else 1
        rank = local_rank
    return DistEnv(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        master_addr=env.get(MASTER_ADDR_ENV, "127.0.0.1"),
        master_port=int(env.get(MASTER_PORT_ENV, "29500")),
        gpus_per_node=gpus,
    )


def export_torch_env(d: DistEnv) -> None:
    """Set the variables torch.distributed's env:// rendezvous reads."""
    os.environ.update(
        {
            "RANK": str(d.rank),
            "WORLD_SIZE": str(d.world_size),
            "LOCAL_RANK": str(d.local_rank),
            MASTER_ADDR_ENV: d.master_addr,
            MASTER_PORT_ENV: str(d.master_port),
        }
    )
