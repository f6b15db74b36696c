"""The process environment: who this process is (torchrun's variables, or SLURM's mapped to them by
`dyt.slurm`), joining and leaving the process group, and the small collectives the trainer and evaluations use.

Single-process runs use the same code with ``world_size == 1`` and no process group (every collective is then
the identity). CUDA uses NCCL, CPU gloo. How a model is trained across these processes (DDP, FSDP2 / HSDP,
activation checkpointing, mixed precision) is `dyt.parallel`.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from dyt.errors import ConfigError
from dyt.slurm import slurm_env


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device=cuda but CUDA is not available; use trainer.device=cpu or auto")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown trainer.device {name!r}; choose one of: auto, cpu, cuda")


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Reads torchrun's RANK / LOCAL_RANK / WORLD_SIZE (absent: a single process) and joins the group."""
    slurm_env()  # srun tasks (SLURM, submitit) without torchrun: the same variables from SLURM's
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not torch_dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                      timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def shutdown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


# --- collectives: every rank calls them; without a process group each is the identity -------------------------
def scalar(t) -> float:
    """A 0-d (or 1-element) tensor's value; a DTensor's is gathered first (a collective: call it on every rank)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return float(t.item()) if torch.is_tensor(t) else float(t)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on at least one rank (every rank calls it)."""
    if not torch_dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch_dist.is_initialized():
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def all_gather_object(obj) -> list:
    if not torch_dist.is_initialized():
        return [obj]
    out = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    if not torch_dist.is_initialized():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def clean_name(name: str) -> str:
    """A parameter / module name without the wrappers' parts (checkpoint_wrapper, torch.compile)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
