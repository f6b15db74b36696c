"""torchrun / SLURM environment detection, process-group setup and small collective helpers.

Single-process runs use the same code with ``world_size == 1`` and no process group. CUDA uses NCCL, CPU gloo.
Model building and wrapping is `wrap_model`, the one seam the trainer calls: DDP, or FSDP2 / HSDP (fully_shard per
block, then the root), with activation checkpointing, mixed-precision policy and meta-device materialisation.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn as nn

from dyt.errors import ConfigError


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


# --- what the trainer trains: DDP, or FSDP2 (fully_shard per block, then the root) ---------------------------
PARALLEL = ("ddp", "fsdp", "hsdp")
AC_MODES = ("none", "full", "selective")
INITS = ("exact", "meta")
# Where a model keeps its transformer blocks (the units of sharding and activation checkpointing): LLaMA `layers`,
# ViT / DiT `blocks`, ConvNeXt `stages`. An item that holds its own `blocks` (a ConvNeXt stage) gives its blocks.
BLOCK_LISTS = ("layers", "blocks", "stages")
_said: set[str] = set()


def _say_once(msg: str) -> None:
    if msg not in _said and int(os.environ.get("RANK", "0")) == 0:
        _said.add(msg)
        print(f"[dyt] {msg}", flush=True)


def transformer_blocks(model: nn.Module) -> list[tuple[nn.Module, int, nn.Module]]:
    """``(container, index, block)`` for every block of `model`, in order: the one per-family rule (BLOCK_LISTS)."""
    for attr in BLOCK_LISTS:
        container = getattr(model, attr, None)
        if isinstance(container, (nn.ModuleList, nn.Sequential)) and len(container):
            break
    else:
        raise ConfigError(f"{type(model).__name__} has no block list (an nn.ModuleList / nn.Sequential named one of "
                          f"{', '.join(BLOCK_LISTS)}): trainer.parallel=fsdp|hsdp and trainer.activation_checkpointing "
                          "shard / checkpoint per block")
    units = []
    for i, m in enumerate(container):
        inner = getattr(m, "blocks", None)
        if isinstance(inner, (nn.ModuleList, nn.Sequential)) and len(inner):
            units += [(inner, j, b) for j, b in enumerate(inner)]
        else:
            units.append((container, i, m))
    return units


def checkpointed_blocks(n: int, mode: str, every: int) -> list[bool]:
    """Which of `n` blocks recompute their activations: all (``full``), none, or ``selective``: one block in every
    `every`, evenly spaced, by the released LLaMA code's rule (fms-fsdp ``selective_checkpointing`` p = 1/every:
    every=2 -> [ac, -, ac, -, ...], every=3 -> [-, ac, -, -, ac, -, ...])."""
    if mode not in AC_MODES:
        raise ConfigError(f"unknown trainer.activation_checkpointing {mode!r}; choose one of: {', '.join(AC_MODES)}")
    if mode != "selective":
        return [mode == "full"] * n
    p, cut, out = 1.0 / max(1, every), 0.5, []
    for i in range(1, n + 1):
        out.append(i * p >= cut)
        cut += out[-1]
    return out


def _wrap_blocks(model: nn.Module, tc, compile_blocks: bool) -> list[nn.Module]:
    """Activation checkpointing (non-reentrant, torch's checkpoint_wrapper: state dicts keep their keys) and, when
    asked, torch.compile on each block; returns the blocks as they now sit in the model."""
    units = transformer_blocks(model)
    ac = checkpointed_blocks(len(units), tc.get("activation_checkpointing", "none"), tc.get("ac_every", 2))
    out = []
    for (container, i, block), recompute in zip(units, ac):
        if recompute:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
            block = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        if compile_blocks:
            block = torch.compile(block)
        container[i] = block
        out.append(block)
    return out


def clean_name(name: str) -> str:
    """A parameter / module name without the wrappers' parts (checkpoint_wrapper, torch.compile)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def _fsdp():
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    return fully_shard, MixedPrecisionPolicy


def device_mesh(dist: DistInfo, tc):
    """fsdp: one dimension, every rank shards. hsdp: (replicate, shard): shard within a group of
    `trainer.hsdp_shard_size` ranks (default: one node, LOCAL_WORLD_SIZE), replicate across groups."""
    from torch.distributed.device_mesh import init_device_mesh
    if tc.get("parallel", "ddp") == "fsdp":
        return init_device_mesh(dist.device.type, (dist.world_size,), mesh_dim_names=("shard",))
    shard = tc.get("hsdp_shard_size") or int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
    if shard < 1 or dist.world_size % shard:
        raise ConfigError(f"trainer.parallel=hsdp: world size {dist.world_size} is not a multiple of the shard group "
                          f"size {shard} (trainer.hsdp_shard_size, default LOCAL_WORLD_SIZE)")
    return init_device_mesh(dist.device.type, (dist.world_size // shard, shard), mesh_dim_names=("replicate", "shard"))


@dataclass
class Parallel:
    """What the trainer trains, whichever the strategy.

    `model`: the module whose parameters the optimizer, EMA and checkpoints use (sharded in place, DTensor
    parameters, under fsdp/hsdp); `net`: what the loss calls (DDP, compiled, or `model`); `sharded`: every forward
    is a collective (all ranks evaluate together) and checkpoints are DCP directories; `autocast_dtype`: the
    autocast dtype (None under FSDP, whose MixedPrecisionPolicy casts instead)."""
    model: nn.Module
    net: nn.Module
    sharded: bool = False
    autocast_dtype: torch.dtype | None = None
    ddp: nn.Module | None = None
    build: object = None  # the model builder (EMA twin under FSDP)
    shard: object = None  # shards a fresh module like `model` (EMA twin)
    device: torch.device = torch.device("cpu")

    def grad_sync(self, sync: bool):
        """Context for one micro-batch's forward/backward: gradients are reduced across ranks only when `sync`."""
        import contextlib
        if self.sharded:
            self.model.set_requires_gradient_sync(sync)
        elif self.ddp is not None and not sync:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def ema(self, decay: float):
        """timm's ModelEmaV3 of `model`. Under FSDP (no deepcopy of sharded modules) the EMA is a twin built on the
        meta device and sharded the same way: its update is elementwise on the local shards, its forward (eval) a
        collective like the model's."""
        from timm.utils import ModelEmaV3
        if not self.sharded:
            return ModelEmaV3(self.model, decay=decay)
        with torch.device("meta"):
            twin = self.build()
        self.shard(twin)
        twin.to_empty(device=self.device)
        # timm deep-copies the module it is given, which FSDP refuses: give it a stand-in, then the sharded twin.
        # Buffers (plain tensors, e.g. DiT's fixed positions) are copied, not averaged with the DTensor parameters
        # in one foreach call (mixed tensor kinds); the models' buffers are constants, so the EMA is the same.
        ema = ModelEmaV3(nn.Linear(1, 1, device=self.device), decay=decay, exclude_buffers=True)
        ema.module = twin.eval()
        with torch.no_grad():
            ema.set(self.model)
            for b_ema, b in zip(ema.module.buffers(), self.model.buffers()):  # non-persistent ones too
                b_ema.copy_(b)
        return ema


def wrap_model(build, dist: DistInfo, tc, amp_dtype: torch.dtype | None = None, seed: int = 0) -> Parallel:
    """Build the model (``build()``: an nn.Module on the CPU) for `trainer.parallel` and return what to train.

    ddp: every rank builds it, DDP broadcasts rank 0's values. fsdp / hsdp (more than one process): the model is
    built on the meta device, its blocks (`transformer_blocks`) then the root are sharded with FSDP2
    ``fully_shard``, and each rank materialises its shards (``to_empty``) with, by `trainer.init`:
      exact  rank 0's CPU build (the single-process model, seeded the same), broadcast into every rank's shards;
             only rank 0 holds the full model, in CPU memory, once (fms-fsdp's ``low_cpu_fsdp`` does the same);
      meta   the model's own ``init_weights()`` on the shards (after every submodule's ``reset_parameters()``): no
             process ever holds the full model; the values differ from a single-process build (shards draw their
             own random streams), so runs are not bit-comparable across world sizes.
    ``trainer.precision`` bf16 / fp16 under FSDP is a MixedPrecisionPolicy (params in that dtype, gradients reduced
    in fp32), not autocast. Activation checkpointing applies per block under every strategy; ``trainer.compile``
    compiles the whole model under DDP and each block under FSDP."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    strategy = tc.get("parallel", "ddp")
    if strategy not in PARALLEL:
        raise ConfigError(f"unknown trainer.parallel {strategy!r}; choose one of: {', '.join(PARALLEL)}")
    ac = tc.get("activation_checkpointing", "none") != "none"
    if strategy == "ddp" or not dist.enabled:
        if strategy != "ddp":
            _say_once(f"trainer.parallel={strategy} on one process: training the plain module (nothing to shard)")
        model = build().to(dist.device)
        if ac:
            _wrap_blocks(model, tc, compile_blocks=False)
        ddp = None
        if dist.enabled:
            ddp = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        net = ddp if ddp is not None else model
        return Parallel(model, torch.compile(net) if tc.get("compile") else net, False, amp_dtype, ddp=ddp,
                        build=build, device=dist.device)

    fully_shard, MixedPrecisionPolicy = _fsdp()
    if amp_dtype == torch.float16:
        raise ConfigError(f"trainer.precision=fp16 is not supported with trainer.parallel={strategy} (it needs a "
                          "sharded gradient scaler); use trainer.precision=bf16")
    mesh = device_mesh(dist, tc)
    mp = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32 if amp_dtype else None)

    def shard(module: nn.Module, train: bool = False) -> None:
        blocks = _wrap_blocks(module, tc, compile_blocks=bool(tc.get("compile"))) if train else \
            [b for _, _, b in transformer_blocks(module)]
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(module, mesh=mesh, mp_policy=mp)

    init = tc.get("init", "exact")
    if init not in INITS:
        raise ConfigError(f"unknown trainer.init {init!r}; choose one of: {', '.join(INITS)}")
    full = buffers = None
    if init == "exact" and dist.is_main:
        reference = build()  # consumes rank 0's RNG exactly as a single-process run's build does
        full = reference.state_dict()
        buffers = {clean_name(n): b for n, b in reference.named_buffers()}
        del reference
    with torch.device("meta"):
        model = build()
    shard(model, train=True)
    model.to_empty(device=dist.device)
    if init == "exact":
        _broadcast_init(model, full, buffers)
    else:
        _init_shards(model, seed, mesh)
    return Parallel(model, model, True, None, build=build, shard=shard, device=dist.device)


def _broadcast_init(model: nn.Module, full: dict | None, buffers: dict | None) -> None:
    """Rank 0's full state dict into every rank's shards (one tensor at a time); buffers (non-persistent ones
    too, e.g. RoPE frequencies) from rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    set_model_state_dict(model, full if full is not None else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    with torch.no_grad():
        for name, b in model.named_buffers():
            if buffers is not None:
                b.copy_(buffers[clean_name(name)])
            torch_dist.broadcast(b, src=0)


@torch.no_grad()
def _init_shards(model: nn.Module, seed: int, mesh) -> None:
    """`trainer.init=meta`: every submodule's ``reset_parameters()`` (norms, DyT's alpha), then the model's own
    ``init_weights()``, on the local shards. On CUDA, DTensor's RNG tracker gives each shard its part of one
    random stream; on the CPU its random ops draw from each process's generator, so that is seeded by the shard
    coordinate (replicas of one shard under hsdp draw the same values)."""
    init = getattr(model, "init_weights", None)
    if not callable(init):
        raise ConfigError(f"{type(model).__name__} has no init_weights(): trainer.init=meta cannot reproduce its "
                          "initialisation on the shards; use trainer.init=exact")
    shard_rank = mesh.get_local_rank("shard")
    with torch.random.fork_rng(devices=[]):  # the CPU generator only; CUDA's is DTensor's business
        torch.random.default_generator.manual_seed(seed * 1_000_003 + shard_rank)
        for m in model.modules():
            if m is not model and callable(getattr(type(m), "reset_parameters", None)):
                m.reset_parameters()
        init()


def scalar(t) -> float:
    """A 0-d (or 1-element) tensor's value; a DTensor's is gathered first (a collective: call it on every rank)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return float(t.item()) if torch.is_tensor(t) else float(t)


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


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


# --- SLURM: ranks and rendezvous from `srun`'s environment ------------------------------------------------
def slurm_env(environ: dict | None = None) -> dict[str, str]:
    """Under ``srun`` with several tasks (every task of a submitit / sbatch job) and no torchrun ``RANK``:
    sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE from SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID /
    SLURM_STEP_TASKS_PER_NODE, and the rendezvous: MASTER_ADDR = the step's first node, MASTER_PORT = a port
    derived from the job id (both only when not set already). Returns what it set ({} when it does nothing).

    Only an ``srun`` step counts (SLURM_STEP_NUM_TASKS): a batch script's own shell has SLURM_PROCID=0 and the
    allocation's SLURM_NTASKS, yet is one process.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env or "SLURM_PROCID" not in env:
        return {}
    world = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if world <= 1:
        return {}
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    per_node = expand_counts(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", ""))
    node = int(env.get("SLURM_NODEID", "0"))
    job = "".join(c for c in env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or "0" if c.isdigit()) or "0"
    out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": str(world), "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
           "LOCAL_WORLD_SIZE": str(per_node[node] if node < len(per_node) else world),
           "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(nodelist),
           "MASTER_PORT": env.get("MASTER_PORT") or str(10000 + int(job) % 20000)}  # below the ephemeral ports
    env.update(out)
    return out


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``scontrol show hostnames`` where SLURM is installed, else our parser."""
    import shutil
    import subprocess
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise ConfigError(f"cannot find the first node in SLURM's node list {nodelist!r}; set MASTER_ADDR")
    return hosts[0]


def expand_nodelist(nodelist: str) -> list[str]:
    """``node[01-03,07],gpu5`` -> ``node01 node02 node03 node07 gpu5`` (zero padding kept; several bracket
    groups in one name expand as their product, as scontrol does)."""
    import itertools
    import re

    hosts = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip()):
        parts = re.split(r"(\[[^\]]*\])", item)
        choices = []
        for part in parts:
            if not (part.startswith("[") and part.endswith("]")):
                choices.append([part])
                continue
            names = []
            for rng in part[1:-1].split(","):
                lo, _, hi = rng.partition("-")
                if not lo.isdigit() or (hi and not hi.isdigit()):
                    raise ConfigError(f"cannot read SLURM's node list {nodelist!r}; set MASTER_ADDR")
                names += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi or lo) + 1)]
            choices.append(names)
        hosts += ["".join(p) for p in itertools.product(*choices)]
    return hosts


def expand_counts(spec: str) -> list[int]:
    """SLURM's per-node task counts: ``8(x2),4`` -> [8, 8, 4]."""
    import re
    out = []
    for n, times in re.findall(r"(\d+)(?:\(x(\d+)\))?", spec):
        out += [int(n)] * int(times or 1)
    return out
