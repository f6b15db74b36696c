"""Parallelization: how the model is trained across the processes of `dyt.distributed`.

`wrap_model` is the one seam the trainer calls: DDP, or FSDP2 / HSDP (``fully_shard`` per block, then the root),
with activation checkpointing, the mixed-precision policy, meta-device materialisation, and an EMA that works
under sharding (`Parallel.ema`). The names of the strategies, initialisations, activation-checkpointing modes and
reduce dtypes are declared once in dyt.config (validation reads them there without importing FSDP).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel as DDP

from dyt.config import AC_MODES, INITS, PARALLEL, REDUCE_DTYPE_NAMES
from dyt.distributed import DistInfo, clean_name
from dyt.errors import ConfigError
from dyt.family import Blocks

try:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # torch < 2.6
    from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard

REDUCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # trainer.reduce_dtype (names: REDUCE_DTYPE_NAMES)
assert tuple(REDUCE_DTYPES) == REDUCE_DTYPE_NAMES
_said: set[str] = set()


def _say_once(msg: str) -> None:
    if msg not in _said and int(os.environ.get("RANK", "0")) == 0:
        _said.add(msg)
        print(f"[dyt] {msg}", flush=True)


def block_units(model: nn.Module, blocks: Optional[Callable[[nn.Module], Blocks]]) -> Blocks:
    """``(container, index, block)`` of every repeated block, as the model's family finds them (``Family.blocks``);
    one line when the family declares none."""
    if blocks is None:
        raise ConfigError(f"{type(model).__name__}: its family declares no repeated blocks (Family.blocks), and "
                          "trainer.parallel=fsdp|hsdp and trainer.activation_checkpointing shard / checkpoint per "
                          "block; use trainer.parallel=ddp and trainer.activation_checkpointing=none")
    return blocks(model)


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


def _wrap_blocks(model: nn.Module, blocks, tc, compile_blocks: bool) -> list[nn.Module]:
    """Activation checkpointing (non-reentrant, torch's checkpoint_wrapper: state dicts keep their keys) and, when
    asked, torch.compile on each block; returns the blocks as they now sit in the model."""
    units = block_units(model, blocks)
    ac = checkpointed_blocks(len(units), tc.get("activation_checkpointing", "none"), tc.get("ac_every", 2))
    out = []
    for (container, i, block), recompute in zip(units, ac):
        if recompute:
            block = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        if compile_blocks:
            block = torch.compile(block)
        container[i] = block
        out.append(block)
    return out


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def device_mesh(dist: DistInfo, tc):
    """fsdp: one dimension, every rank shards. hsdp: (replicate, shard): shard within a group of
    `trainer.hsdp_shard_size` ranks (default: one node, LOCAL_WORLD_SIZE), replicate across groups."""
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

    def grad_sync(self, last: bool):
        """Context for one micro-batch's forward/backward; `last`: the step's last micro-batch.

        DDP all-reduces on the last micro-batch only (``no_sync`` before). FSDP / HSDP reduce-scatter every
        micro-batch, so each rank only ever holds its shard of the gradients (skipping it, FSDP2 would keep every
        unit's unsharded gradient, 4 bytes x all parameters, until the last one); HSDP all-reduces those shards
        across replicas on the last micro-batch only (torchtitan does the same)."""
        if self.sharded:
            self.model.set_requires_all_reduce(last)  # a no-op on a 1-D (fsdp) mesh
        elif self.ddp is not None and not last:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def ema(self, decay: float):
        """timm's ModelEmaV3 of `model`. Under FSDP (no deepcopy of sharded modules) the EMA is a twin built on the
        meta device and sharded the same way: its update is elementwise on the local shards, its forward (eval) a
        collective like the model's."""
        from timm.utils import ModelEmaV3  # here: validating a config imports this module, and no timm
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


def wrap_model(build, dist: DistInfo, tc, amp_dtype: torch.dtype | None = None, seed: int = 0,
               blocks: Optional[Callable[[nn.Module], Blocks]] = None) -> Parallel:
    """Build the model (``build()``: an nn.Module on the CPU) for `trainer.parallel` and return what to train.

    ddp: every rank builds it, DDP broadcasts rank 0's values. fsdp / hsdp (more than one process): the model is
    built on the meta device, its blocks (`blocks(model)`: the family's ``Family.blocks``) then the root are sharded with FSDP2
    ``fully_shard``, and each rank materialises its shards (``to_empty``) with, by `trainer.init`:
      exact  rank 0's CPU build (the single-process model, seeded the same), broadcast into every rank's shards;
             only rank 0 holds the full model, in CPU memory, once (fms-fsdp's ``low_cpu_fsdp`` does the same);
      meta   the model's own ``init_weights()`` on the shards (after every submodule's ``reset_parameters()``): no
             process ever holds the full model; the values differ from a single-process build (shards draw their
             own random streams), so runs are not bit-comparable across world sizes.
    ``trainer.precision`` bf16 / fp16 under FSDP is a MixedPrecisionPolicy (params in that dtype, gradients reduced
    in ``trainer.reduce_dtype``), not autocast; under DDP ``reduce_dtype=bf16`` all-reduces bf16 copies of the
    gradients (torch's ``bf16_compress_hook``). Activation checkpointing applies per block under every strategy; ``trainer.compile``
    compiles the whole model under DDP and each block under FSDP."""
    strategy = tc.get("parallel", "ddp")
    if strategy not in PARALLEL:
        raise ConfigError(f"unknown trainer.parallel {strategy!r}; choose one of: {', '.join(PARALLEL)}")
    ac = tc.get("activation_checkpointing", "none") != "none"
    if strategy == "ddp" or not dist.enabled:
        if strategy != "ddp":
            _say_once(f"trainer.parallel={strategy} on one process: training the plain module (nothing to shard)")
        model = build().to(dist.device)
        if ac:
            _wrap_blocks(model, blocks, tc, compile_blocks=False)
        ddp = None
        if dist.enabled:
            # gradients as views of the reducer's buckets: no second fp32 copy of them (1.2 GB per GPU at ViT-L)
            ddp = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                      gradient_as_bucket_view=True)
            if reduce_dtype(tc) == torch.bfloat16:
                from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
                ddp.register_comm_hook(None, bf16_compress_hook)  # bf16 on the wire, averaged back into fp32 grads
        net = ddp if ddp is not None else model
        return Parallel(model, torch.compile(net) if tc.get("compile") else net, False, amp_dtype, ddp=ddp,
                        build=build, device=dist.device)

    if amp_dtype == torch.float16:
        raise ConfigError(f"trainer.precision=fp16 is not supported with trainer.parallel={strategy} (it needs a "
                          "sharded gradient scaler); use trainer.precision=bf16")
    mesh = device_mesh(dist, tc)
    mp = mixed_precision(amp_dtype, tc)

    def shard(module: nn.Module, train: bool = False) -> None:
        units = _wrap_blocks(module, blocks, tc, compile_blocks=bool(tc.get("compile"))) if train else \
            [b for _, _, b in block_units(module, blocks)]
        for i, block in enumerate(units):
            # The trained model's last block stays gathered after forward: backward needs it at once (torchtitan).
            # Not the EMA twin's: it only evaluates, and its updates go to the shards.
            fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=not (train and i == len(units) - 1))
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


def reduce_dtype(tc) -> torch.dtype:
    """``trainer.reduce_dtype``: the dtype gradients are reduced across ranks in."""
    name = tc.get("reduce_dtype", "fp32")
    if name not in REDUCE_DTYPES:
        raise ConfigError(f"unknown trainer.reduce_dtype {name!r}; choose one of: {', '.join(REDUCE_DTYPES)}")
    return REDUCE_DTYPES[name]


def mixed_precision(amp_dtype: torch.dtype | None, tc) -> MixedPrecisionPolicy:
    """FSDP2's policy: parameters gathered in `amp_dtype` (None: as stored, fp32), gradients reduced in
    ``trainer.reduce_dtype`` (fms-fsdp's bf16 policy, the released LLaMA code's, reduces in bf16)."""
    dtype = reduce_dtype(tc)
    # None: reduce in the gradients' own dtype (fp32 when the parameters are gathered as stored)
    return MixedPrecisionPolicy(param_dtype=amp_dtype,
                                reduce_dtype=dtype if amp_dtype is not None or dtype != torch.float32 else None)


def _broadcast_init(model: nn.Module, full: dict | None, buffers: dict | None) -> None:
    """Rank 0's full state dict into every rank's shards (one tensor at a time); buffers (non-persistent ones
    too, e.g. RoPE frequencies) from rank 0."""
    # imported here: DCP is only for the sharded path (~0.4 s of imports that a single-process run skips)
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
