"""Distributed training under ``torchrun``: process group, ranks, reductions.

``torchrun --nproc-per-node N -m train run --config X.yaml`` starts N processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; each reads the memory-mapped store itself.
gloo for CPU tensors, and nccl too for CUDA tensors on GPUs. Without torchrun everything here
is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Sums over ranks (train loss, samples seen)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) everywhere, so every rank evaluates alike."""
        if self.enabled:
            for b in model.buffers():
                dist.broadcast(b.data, src=0)

    def same_weights(self, model: torch.nn.Module) -> bool:
        """Whether every rank holds exactly rank 0's parameters and buffers."""
        if not self.enabled:
            return True
        flat = torch.cat(
            [t.detach().reshape(-1).double().cpu() for t in model.state_dict().values()]
        )
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        diff = torch.tensor([float((flat != ref).sum())], dtype=torch.float64)
        dist.all_reduce(diff)
        return diff.item() == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes (if any); on CUDA, one GPU per local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
        device = torch.device("cuda", ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(device))
    return ranks, device


def backend_for(device: torch.device) -> str:
    """The process group's backends: gloo for CPU tensors always (the reductions of losses and
    counts, the weight check), nccl for CUDA tensors when the device is a GPU."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
