"""Peak memory per GPU of one real training step, traced on one CPU without allocating anything.

The check of ``dyt.plan``'s formulas against torch's own accounting, as torchtitan's memory estimation does: rank 0
of a world of N ranks joins a fake process group (``FakeStore`` + backend ``"fake"``: every collective returns at
once), the model is built and sharded by the trainer's own ``dyt.parallel.wrap_model`` under ``FakeTensorMode``
(tensors with shapes, dtypes and devices, and no storage), and one optimizer step -- ``grad_accum`` micro-batches of
forward and backward through the task's loss, gradient clipping, AdamW -- runs under FSDP2's memory tracker
(``FSDPMemTracker``; torch's ``MemTracker`` under DDP), which records the bytes each live tensor would take on the
device. Fake tensors live on the CPU device here; the trackers count CPU tensors the same way (without CUDA's
512-byte rounding).

What is traced and what is not:

* the optimizer state exists before the traced step (created by one untracked step on zero gradients, which also
  warms fake tensors' dispatch cache), so the peak is a steady-state step's, not the first step's;
* DDP is traced as what it runs per rank -- the full replica under autocast -- without DDP's C++ reducer (it cannot
  take fake tensors); its gradients are its buckets (``gradient_as_bucket_view``), so nothing is added;
* no ``torch.compile`` (fusion lowers the real peak a little), no CUDA context or allocator fragmentation (the
  planner's margin), no EMA (the Table 4 recipe has none).
Language models only (a batch is a ``(micro-batch, seq_len + 1)`` token tensor).
"""
from __future__ import annotations

import contextlib
from unittest import mock

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from omegaconf import OmegaConf
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from torch.testing._internal.distributed.fake_pg import FakeStore

from dyt import parallel
from dyt.distributed import DistInfo
from dyt.errors import ConfigError
from dyt.families import build_task, get_family
from dyt.optim import build_optimizer
from dyt.plan import micro_batch_size
from dyt.precision import amp_dtype, autocast

CPU = torch.device("cpu")


@contextlib.contextmanager
def fake_world(world: int):
    """This process as rank 0 of `world` ranks whose collectives do nothing."""
    if torch_dist.is_initialized():
        raise RuntimeError("a process group is already initialised; trace in a fresh process")
    torch_dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


def traced_config(cfg, gpus_per_node: int):
    """A copy of `cfg` as the trace runs it: shards initialised in place (``init=meta``: ``exact`` would build the
    full model on rank 0's CPU first, outside the GPU), no compile, HSDP shard groups of one node."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    tc = cfg.trainer
    tc.init, tc.compile = "meta", False
    if tc.get("hsdp_shard_size") is None:
        tc.hsdp_shard_size = gpus_per_node
    return cfg


def trace_step(cfg, nodes: int = 1, gpus_per_node: int = 1) -> dict:
    """Peak bytes on one GPU of a training step of `cfg` on ``nodes x gpus_per_node`` ranks, with the bytes of each
    kind of tensor (params, grads, optimizer state, activations, ...) at that peak."""
    if get_family(cfg.model.family).shape is None or "seq_len" not in cfg.data:
        raise ConfigError(f"the memory trace runs language models (a batch of tokens); got {cfg.model.family}")
    world = nodes * gpus_per_node
    cfg = traced_config(cfg, gpus_per_node)
    tc = cfg.trainer
    accum, micro = int(tc.grad_accum), micro_batch_size(int(tc.batch_size), world, int(tc.grad_accum))
    dist = DistInfo(0, 0, world, CPU)
    strategy = tc.get("parallel", "ddp") if world > 1 else "ddp"
    with fake_world(world):
        # The device mesh reads its rank map as data, which fake tensors have not: made before the fake mode.
        mesh = parallel.device_mesh(dist, tc) if strategy != "ddp" else None
        with FakeTensorMode(), mock.patch.object(parallel, "device_mesh", lambda *_: mesh):
            task = build_task(cfg, dist)
            if strategy == "ddp":
                par = _replica(task.build_model, tc, get_family(cfg.model.family).blocks)
            else:
                par = parallel.wrap_model(task.build_model, dist, tc, amp_dtype(tc.precision, CPU), cfg.seed,
                                          get_family(cfg.model.family).blocks)
            optimizer = build_optimizer(par.model, cfg.optim)
            _warm_up(par.model, optimizer, cfg.optim.get("clip_grad"))
            tracker = (FSDPMemTracker(par.model, optimizer) if par.sharded else MemTracker())
            if not par.sharded:
                tracker.track_external(par.model, optimizer)
            vocab = par.model.vocab_size if hasattr(par.model, "vocab_size") else 2
            with tracker:
                for i in range(accum):
                    tracker.reset_mod_stats()  # per-module stats of one forward at a time; the peak is kept
                    batch = torch.randint(0, vocab, (micro, int(cfg.data.seq_len) + 1))
                    with par.grad_sync(i == accum - 1), autocast(CPU, par.autocast_dtype):
                        loss = task.loss(par.net, batch)
                    (loss / accum).backward()
                if cfg.optim.get("clip_grad"):
                    nn.utils.clip_grad_norm_(par.model.parameters(), cfg.optim.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            snap = tracker.get_tracker_snapshot("peak")[CPU]
    kinds = {str(k.value if hasattr(k, "value") else k): int(v) for k, v in snap.items() if k != "Total"}
    n_params = sum(p.numel() for p in par.model.parameters())
    return {"peak": int(snap["Total"]), "kinds": kinds, "strategy": strategy, "world": world,
            "micro_batch": micro, "grad_accum": accum, "params": n_params}


def _replica(build, tc, blocks) -> parallel.Parallel:
    """DDP's per-rank model: the full replica (built directly as fake tensors: moving fake parameters, as
    ``wrap_model``'s ``.to(device)`` does, is refused) with the same activation checkpointing, under autocast."""
    model = build()
    if tc.get("activation_checkpointing", "none") != "none":
        parallel._wrap_blocks(model, blocks, tc, compile_blocks=False)  # the trainer's own wrapping
    return parallel.Parallel(model, model, False, amp_dtype(tc.precision, CPU), device=CPU)


def _warm_up(model: nn.Module, optimizer: torch.optim.Optimizer, clip: float | None) -> None:
    """Clipping and one optimizer step on zero gradients, untracked: the optimizer's state as every later step finds
    it, and fake tensors' dispatch cache filled. A foreach op's first fake dispatch can run its decomposition, whose
    full-size intermediates the tracker would count: at 70B, 257 GiB (4 bytes x every parameter) in the first
    traced step's gradient clipping, and nothing in the next one."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
