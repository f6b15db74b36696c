"""The two measurements of the GPU check (scripts/gpu_check.py) that no other script takes. Each result is one
line ``GPU_CHECK {json}`` on stdout, which the check reads.

    python scripts/gpu_measure.py peak train.py <overrides>   # train.py in this process, then its peak CUDA memory
                                                               # against dyt.plan's estimate, its throughput and MFU
    python scripts/gpu_measure.py parallel <overrides> --strategies ddp fsdp --norms rmsnorm dyt --steps 6

`parallel` times training steps of the trainer's own model, loss and optimizer through dyt.parallel.wrap_model
in a process group of ONE rank. The trainer itself does not shard at world size 1 (wrap_model trains the plain
module when the group is not distributed, torchrun --nproc_per_node 1 included), so DDP's and FSDP2's own costs
on a single GPU (the bucketed all-reduce; the per-block all-gather, mixed-precision casts and reduce-scatter) can
only be measured by handing wrap_model a one-rank group that it treats as distributed, as here.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import runpy
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dyt.distributed import DistInfo, pick_device  # noqa: E402
from dyt.families import build_task, compose, get_family  # noqa: E402
from dyt.optim import build_optimizer  # noqa: E402
from dyt.parallel import wrap_model  # noqa: E402
from dyt.plan import GIB, plan  # noqa: E402
from dyt.precision import amp_dtype, autocast  # noqa: E402
from dyt.rundir import RunDir  # noqa: E402

MARK = "GPU_CHECK "


def report(record: dict) -> None:
    print(MARK + json.dumps(record), flush=True)


def versus_plan(cfg, strategy: str) -> dict:
    """Measured peak memory (torch.cuda.max_memory_allocated: what the planner models, without the CUDA context
    and the allocator's cache) beside dyt.plan's total for the same config on one GPU, in the row of `strategy`
    and the config's activation checkpointing. (A CPU rehearsal has no peak to compare.)"""
    p = plan(cfg)
    ac = cfg.trainer.get("activation_checkpointing", "none")
    row = next(r for r in p["rows"] if r["strategy"] == strategy and r["ac"] == ac)
    peak = torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None
    return {"peak_gib": peak, "plan_gib": row["total"] / GIB, "plan_row": f"{strategy}/{ac}",
            "plan_states_only": row["activations"] is None}


def window_medians(run_dir: Path) -> dict:
    """Median train/throughput (and train/mfu) over the run's logged windows but the first, which holds the
    warm-up (cuDNN / Triton autotuning, allocator growth)."""
    events = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines() if line.strip()]
    train = [e for e in events if e.get("split") == "train" and "train/throughput" in e]
    steady = train[1:] or train
    out = {"windows": len(steady)}
    for key, name in (("train/throughput", "rate"), ("train/mfu", "mfu")):
        values = [e[key] for e in steady if key in e]
        if values:
            out[name] = statistics.median(values)
    return out


def peak(argv: list[str]) -> int:
    """Runs `argv` (train.py and its overrides) as `python train.py ...` would, in this process, then reports."""
    script, overrides = argv[0], argv[1:]
    run_dir = Path(next(a.split("=", 1)[1] for a in overrides if a.startswith("hydra.run.dir=")))
    sys.argv = [script, *overrides]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:  # train.py exits non-zero on a bad config, a signal or a failed sweep
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    cfg = compose([a for a in overrides if not a.startswith("hydra.")])
    summary = json.loads(RunDir(run_dir).summary.read_text()) if RunDir(run_dir).summary.exists() else {}
    report({"what": f"{cfg.model.name} {cfg.norm.name} ({cfg.trainer.batch_size} x "
                    f"{cfg.data.get('seq_len') or str(cfg.data.image_size) + ' px'})",
            "unit": "tokens" if "seq_len" in cfg.data else "images", "exit": code,
            "status": summary.get("status"), **window_medians(run_dir),
            **versus_plan(cfg, "ddp")})
    return code


class OneRank(DistInfo):
    """A one-rank process group that wrap_model treats as distributed (DistInfo.enabled is world_size > 1)."""
    enabled = property(lambda self: True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_steps(cfg, dist: DistInfo, steps: int) -> dict:
    """Median seconds of a training step (forward, the task's loss, backward, AdamW) under wrap_model."""
    task = build_task(cfg, dist)
    amp = amp_dtype(cfg.trainer.precision, dist.device)
    torch.manual_seed(cfg.seed)
    with torch.device(dist.device):  # built where it runs (FSDP builds on the meta device inside wrap_model)
        par = wrap_model(task.build_model, dist, cfg.trainer, amp, seed=cfg.seed,
                         blocks=get_family(cfg.model.family).blocks)
    opt = build_optimizer(par.model, cfg.optim)
    seq, batch = int(cfg.data.seq_len), int(cfg.trainer.batch_size)
    tokens = torch.randint(0, par.model.vocab_size, (batch, seq + 1), device=dist.device)

    sync = torch.cuda.synchronize if dist.device.type == "cuda" else (lambda: None)

    def step() -> float:
        sync()
        t0 = time.perf_counter()
        with autocast(dist.device, par.autocast_dtype):
            loss = task.loss(par.net, tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    first = step()
    step()  # a second warm-up step (allocator growth, autotuning), as scripts/bench/models.py does
    sec = statistics.median(step() for _ in range(steps))
    rate = batch * seq / sec
    wrapper = "FSDP2" if par.sharded else "DDP" if par.ddp is not None else "plain module"
    out = {"wrapper": wrapper, "rate": rate, "unit": "tokens", "ms_per_step": sec * 1e3, "first_step_s": first,
           "mfu": task.train_metrics(rate).get("train/mfu")}
    del par, opt, tokens
    return out


def parallel(args) -> int:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    dist = OneRank(device=device)
    try:
        for strategy in args.strategies:
            for norm in args.norms:
                cfg = compose([*args.overrides, f"norm={norm}", f"trainer.parallel={strategy}"])
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                result = time_steps(cfg, dist, args.steps)
                report({"what": f"{cfg.model.name} {norm} {strategy}, 1 rank ({cfg.trainer.batch_size} x "
                                f"{cfg.data.seq_len})", **result,
                        **versus_plan(cfg, strategy)})
    finally:
        torch_dist.destroy_process_group()
    return 0


def parser() -> argparse.ArgumentParser:
    """The `parallel` command line (`peak` takes train.py's as it is)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["parallel"])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the model, data and trainer")
    ap.add_argument("--strategies", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    ap.add_argument("--norms", nargs="+", default=["rmsnorm", "dyt"])
    ap.add_argument("--steps", type=int, default=6, help="timed steps (median), after 2 warm-up steps")
    ap.add_argument("--device", default="cuda", help="cuda (NCCL); cpu (gloo) rehearses it without a GPU")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["peak"]:
        return peak(argv[1:])
    return parallel(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
