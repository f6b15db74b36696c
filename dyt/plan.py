"""Memory plan of a composed config: does a cell fit on N nodes x G GPUs, and with which strategy?

Nothing is allocated: the model is built on the meta device and every number is arithmetic on its shapes.
Bytes per GPU are the sum of:

* Model states, per parameter, as the trainer holds them at every precision: fp32 parameters 4, fp32 gradients 4,
  the optimizer's fp32 state (AdamW's two moments 8, SGD's momentum 4; Muon's momentum 4 for the blocks' matrices it
  trains and AdamW's 8 for the rest, ``optimizer_bytes_per_param``), + an fp32 EMA copy 4 when
  ``trainer.ema_decay``. bf16 is autocast under DDP (the parameters stay fp32) and FSDP2's MixedPrecisionPolicy
  under FSDP/HSDP (fp32 sharded parameters, all-gathered as bf16 copies; gradients reduced into fp32 sharded
  gradients, ``FSDPParam.to_sharded_dtensor`` / ``foreach_reduce``): no separate fp32 master copy exists. ZeRO's
  2 + 2 + 12 (Rajbhandari et al. 2020, Sec. 3.1) gives the same 16 B for AdamW, split differently.
  DDP holds all of it on every GPU (its gradients are views of its buckets, ``gradient_as_bucket_view``: no second
  copy); FSDP divides it by the world size; HSDP by the
  GPUs of one shard group (``trainer.hsdp_shard_size``, default one node).
  Gradient accumulation adds nothing: DDP accumulates into its full gradients; FSDP reduce-scatters every
  micro-batch into the fp32 sharded gradients, HSDP too and all-reduces across replicas on the last one only.
* FSDP/HSDP working set ("gathered"), at the backward peak: the root unit's all-gathered compute-dtype params
  (embeddings, final norm, head: FSDP2 does not reshard the root after forward) + of the largest block, two
  all-gathered copies (the running one and the prefetched one) and its gradient in the reduce dtype
  (``trainer.reduce_dtype``, fp32 unless set: the reduce-scatter's input, ``foreach_reduce``).
* Activations, after Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  Sec. 4: per layer ``s*b*h*(34 + 5*a*s/h)`` bytes in 16-bit with dropout and without flash attention (s sequence,
  b micro-batch, h width, a heads). Itemised in elements of the activation dtype (2 B in bf16, 4 B in fp32)::

      norm inputs 2 | attention: input 1, Q 1, K and V 2*kv, output (out-proj input) 1 | MLP input 1
      MLP hidden: GeLU 2*f/h (GeLU input, fc2 input) or SwiGLU 4*f/h (w1 out, w3 out, silu out, w2 input)
      adaLN (DiT): + 4 (modulated norm outputs saved for the scale grads, branch outputs for the gate grads)
      dropout: + 2 one-byte masks; attention scores without flash: a*s*b*(2 + 3 with dropout) bytes per element of s

  GPT (f = 4h, dropout, no flash) gives 2*16 + 2 = 34 and 5*a*s/h: the paper's formula (tests check it). Our models
  use SDPA (flash / memory-efficient kernels) and no dropout, so the a*s^2 term and the masks drop: 32 for ViT,
  40 for DiT (adaLN), and LLaMA's SwiGLU turns the MLP's 2 + 4*f/h = 18 into 2 + 8*f/h: with f = 8/3 h (LLaMA's
  rule) 23.3, with 7B's f = 11008 = 2.6875 h 23.5, so 37.5 per layer instead of 34. K and V count in full because
  our LLaMA repeats the GQA heads before SDPA (kv = 1). Norm sites count their input only (fused RMSNorm / DyT).
  Outside the blocks: LLaMA's final-norm and head inputs (2 sbh elements) and the fp32 log-softmax output plus its
  gradient at the start of backward (8 bytes x s x b x vocab); ViT's pooled head is negligible; DiT's final adaLN
  layer 3 sbh elements.
  Checkpointing: none stores every layer; full stores each block's input (Korthikanti: 2sbh per layer in 16-bit);
  selective checkpoints one block in every k (k = ``trainer.ac_every``, else 2; the blocks of
  ``dyt.parallel.checkpointed_blocks``, as the released LLaMA code's selective_checkpointing). The peak is the
  stored activations + the larger of the head's (end of the forward) and a block's backward: the gradients of its
  MLP's hidden tensors (3 f per token for SwiGLU, 2 f for GeLU) and, for a checkpointed block, its recomputed
  activations less the plain blocks above the last checkpointed one (freed by then). The traced step
  (dyt/memtrace.py) peaks so.
  Not counted: CUDA context / allocator fragmentation (the ``margin``, 10% of the GPU); under bf16 DDP autocast's
  weight cache and per-op casts (docs/PLAN.md: the traced step); temporaries of one kernel.
A strategy is cheaper than another when it recomputes less (FLOPs that cannot overlap), then when it communicates
less (DDP < HSDP < FSDP: intra-node sharding before sharding across nodes).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from dyt.config import AC_MODES, PARALLEL
from dyt.parallel import checkpointed_blocks
from dyt.errors import ConfigError
from dyt.families import build_model, compose, get_family
from dyt.family import Shape

GIB = 2**30
# The planner's orders: least communication first (intra-node sharding before sharding across nodes), least
# recomputation first.
STRATEGIES = tuple(sorted(PARALLEL, key=("ddp", "hsdp", "fsdp").index))
AC_ORDER = tuple(sorted(AC_MODES, key=("none", "selective", "full").index))
LAUNCHER_KEYS = ("nodes", "gpus_per_node", "nproc")
# Throughput model for the cost estimate: model FLOPs utilisation. fms-fsdp (the released LLaMA code's base) publishes
# 3760 / 1700 / 772 / 380 tokens/s per A100 for LLaMA 2 7B / 13B / 34B / 70B on 128 GPUs; with our FLOPs per token
# (dyt/families/llama/model.py flops_per_token) that is 55% / 48% / 54% / 54% of the A100's 312 TFLOP/s.
MFU = 0.5
COST_GPUS = ("A100", "H100")  # dense bf16 peaks from dyt.tasks.language.PEAK_BF16


def micro_batch_size(global_batch: int, world: int, accum: int) -> int:
    """Samples per rank per micro-batch (rounded up when the global batch does not divide)."""
    return -(-global_batch // (world * accum))


def layer_activation_bytes(s: int, b: int, h: int, a: int, f: int, *, act_bytes: int = 2, glu: bool = False,
                           adaln: bool = False, kv_ratio: float = 1.0, flash: bool = True,
                           dropout: bool = False) -> float:
    """Bytes one Transformer layer keeps for backward (Korthikanti et al. 2022, itemised: see the module doc)."""
    elems = 2 + (3 + 2 * kv_ratio) + 1 + (4 if glu else 2) * f / h + (4 if adaln else 0)
    per_token = elems * act_bytes + (2 if dropout else 0)
    scores = 0 if flash else a * s * s * b * (act_bytes + (act_bytes + 1 if dropout else 0))
    return s * b * h * per_token + scores


def activation_bytes(shape: Shape, micro_batch: int, act_bytes: int, ac: str, ac_every: int = 2) -> float:
    """Activations of one micro-batch at their peak under checkpointing ``ac`` (none | selective | full): what the
    blocks store, + the larger of the head's (held at the end of the forward) and a block's backward (its
    gradients, and its recomputed activations once the blocks above it have freed theirs)."""
    s, b, h = shape.seq, micro_batch, shape.hidden
    layer = layer_activation_bytes(s, b, h, shape.heads, shape.ffn, act_bytes=act_bytes, glu=shape.glu,
                                   adaln=shape.adaln, kv_ratio=shape.kv_ratio)
    block_input = s * b * h * act_bytes
    recompute = checkpointed_blocks(shape.layers, ac, ac_every)  # the trainer's own choice of blocks
    stored = sum(block_input if r else layer for r in recompute)
    # backward reaches the last checkpointed block after the plain blocks above it have freed theirs
    above = recompute[::-1].index(True) if any(recompute) else 0
    head = s * b * (h * shape.head_elems * act_bytes + shape.head_bytes_per_token)
    # a block's backward: the gradients of its MLP's hidden tensors (SwiGLU: of w1 out, w3 out and their product)
    grads = (3 if shape.glu else 2) * shape.ffn * s * b * act_bytes
    return stored + max(head, grads + (max(0, layer - above * layer) if any(recompute) else 0))


OPTIMIZER_BYTES = {"adamw": 8, "sgd": 4}  # fp32 state per parameter: AdamW's two moments, SGD's momentum
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "auto": 2, "fp32": 4}  # auto = bf16 on a GPU


def state_bytes_per_param(optimizer: str | float = "adamw", ema: bool = False) -> dict[str, float]:
    """Bytes per parameter of the model states (see the module doc): fp32 params and grads at every precision;
    `optimizer`: a name of OPTIMIZER_BYTES or the bytes themselves (`optimizer_bytes_per_param`)."""
    opt = OPTIMIZER_BYTES.get(optimizer, 8) if isinstance(optimizer, str) else optimizer
    return {"params": 4, "grads": 4, "optimizer": opt, "ema": 4 if ema else 0}


def optimizer_bytes_per_param(model: nn.Module, optimizer: str) -> float:
    """The optimizer's fp32 state per trained parameter of `model`: OPTIMIZER_BYTES, or for Muon its momentum (4) on
    the parameters it trains (`dyt.optim.muon_names`) and AdamW's two moments (8) on the rest."""
    if optimizer != "muon":
        return OPTIMIZER_BYTES.get(optimizer, 8)
    from dyt.optim import muon_names  # timm's optimizers: only when planning a Muon run

    names = muon_names(model)
    trained = count_params(model, trainable=True)
    muon = sum(p.numel() for n, p in model.named_parameters() if n in names)
    return (4 * muon + 8 * (trained - muon)) / max(trained, 1)


def count_params(model: nn.Module, trainable: bool = False) -> int:
    """Every parameter (a tied weight once), or with `trainable` those the optimizer gets (requires_grad): DINO's
    teacher, MAE's fixed positions and frozen scales hold no gradient and no optimizer state."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def fsdp_units(model: nn.Module, blocks: list[nn.Module] | None) -> tuple[int, int]:
    """Params of the FSDP units: (the root = everything outside the blocks, the largest block)."""
    total = count_params(model)
    if not blocks:
        return total, 0
    sizes = [count_params(blk) for blk in blocks]
    return total - sum(sizes), max(sizes)


def memory(n_params: int, units: tuple[int, int], per_param: dict, strategy: str, nodes: int, gpus_per_node: int,
           activations: float | None, compute_bytes: int = 2, reduce_bytes: int = 4, shard_group: int = 0,
           trainable: int | None = None) -> dict:
    """Bytes per GPU of each component under ``strategy`` (ddp | fsdp | hsdp); `shard_group`: HSDP's shard group
    size (default one node); `trainable`: the parameters with gradients and optimizer state (default: all)."""
    world = nodes * gpus_per_node
    shards = {"ddp": 1, "fsdp": world, "hsdp": shard_group or gpus_per_node}[strategy]
    trained = n_params if trainable is None else trainable
    out = {k: (trained if k in ("grads", "optimizer") else n_params) * v / shards for k, v in per_param.items()}
    root, block = units
    out["gathered"] = 0.0 if strategy == "ddp" or shards == 1 else \
        root * compute_bytes + block * (2 * compute_bytes + reduce_bytes)
    out["activations"] = activations
    out["total"] = sum(v for v in out.values() if v is not None)
    return out


def plan(cfg, nodes: int = 1, gpus_per_node: int = 1, gpu_mem_gib: float = 80.0, margin: float = 0.1,
         model: nn.Module | None = None, mfu: float = MFU) -> dict:
    """The memory plan of a composed config on ``nodes`` x ``gpus_per_node`` GPUs (every size in bytes)."""
    if nodes < 1 or gpus_per_node < 1:
        raise ConfigError(f"launcher.nodes={nodes} and GPUs per node={gpus_per_node} must be >= 1")
    if model is None:
        with torch.device("meta"):
            model = build_model(cfg)
    family, tc = cfg.model.family, cfg.trainer
    spec = get_family(family)
    world, accum = nodes * gpus_per_node, int(tc.grad_accum)
    n = count_params(model)
    shape = spec.shape(model, cfg) if spec.shape is not None else None
    ac_every = int(tc.get("ac_every", None) or 2)
    per_param = state_bytes_per_param(optimizer_bytes_per_param(model, str(cfg.optim.name)), bool(tc.ema_decay))
    compute = DTYPE_BYTES.get(str(tc.precision), 4)
    reduce = DTYPE_BYTES.get(str(tc.get("reduce_dtype", None) or "fp32"), 4)  # trainer.reduce_dtype
    units = fsdp_units(model, [b for _, _, b in spec.blocks(model)] if spec.blocks is not None else None)
    usable = gpu_mem_gib * GIB * (1 - margin)
    out = {"model": cfg.model.name, "family": family, "norm": cfg.norm.name, "params": n,
           "trainable": count_params(model, trainable=True),
           "nodes": nodes, "gpus_per_node": gpus_per_node, "world": world, "grad_accum": accum,
           "global_batch": int(tc.batch_size), "precision": str(tc.precision), "ac_every": ac_every,
           "compute_bytes": compute, "reduce_bytes": reduce, "shard_group": int(tc.get("hsdp_shard_size") or 0),
           "gpu_mem_gib": gpu_mem_gib, "margin": margin, "usable": usable, "largest_unit": max(units), "units": units,
           "configured": _configured(tc), "notes": []}
    if shape is not None and shape.tokens:
        out["non_embedding_params"] = n - shape.embedding_params
        out["seq_len"] = shape.seq
        out["tokens_per_step"] = out["global_batch"] * out["seq_len"]
        if hasattr(model, "flops_per_token") and tc.get("max_steps"):
            out["cost"] = cost(model.flops_per_token(shape.seq), int(tc.max_steps) * out["tokens_per_step"], world, mfu)
    else:
        out["images_per_step"] = out["global_batch"]
    if shape:
        out.update(seq=shape.seq, hidden=shape.hidden, heads=shape.heads, layers=shape.layers, ffn=shape.ffn)
    else:
        out["notes"].append(f"no activation model for family {family!r}: model states only")
    rows, micro = _rows(out, n, units, per_param, shape, accum)
    out["micro_batch"], out["rows"] = micro, rows
    if out["global_batch"] % (world * accum):
        out["notes"].append(f"trainer.batch_size {out['global_batch']} is not a multiple of world x grad_accum = "
                            f"{world * accum}; rounded the micro-batch up to {micro}")
    out["cheapest"] = _cheapest(rows)
    if out["cheapest"] is None:  # the smallest grad_accum that fits, halving the micro-batch each time
        ga = accum * 2
        while out["global_batch"] >= world * ga:
            alt_rows, alt_micro = _rows(out, n, units, per_param, shape, ga)
            if (best := _cheapest(alt_rows)) is not None:
                out["suggestion"] = {"grad_accum": ga, "micro_batch": alt_micro, **best}
                break
            ga *= 2
    return out


def cost(flops_per_token: float, tokens: int, world: int, mfu: float = MFU) -> dict:
    """An estimate of a run's cost: GPU-hours and wall-clock hours on `world` GPUs of each kind in COST_GPUS, for
    training FLOPs = FLOPs per token x tokens at model FLOPs utilisation `mfu`."""
    from dyt.tasks.language import PEAK_BF16  # the GPUs' dense bf16 peaks, as the trainer's MFU uses
    flops = flops_per_token * tokens
    gpu_hours = {gpu: flops / (mfu * PEAK_BF16[gpu]) / 3600 for gpu in COST_GPUS}
    return {"flops_per_token": flops_per_token, "tokens": tokens, "flops": flops, "mfu": mfu,
            "gpu_hours": gpu_hours, "wall_hours": {g: h / world for g, h in gpu_hours.items()}}


def _rows(out, n, units, per_param, shape, accum) -> tuple[list[dict], int]:
    micro = micro_batch_size(out["global_batch"], out["world"], accum)
    act_bytes = out["compute_bytes"]  # activations in the compute dtype: 2 (bf16) or 4 (fp32)
    rows = []
    for ac in AC_ORDER:
        act = activation_bytes(shape, micro, act_bytes, ac, out["ac_every"]) if shape else None
        for strategy in STRATEGIES:
            mem = memory(n, units, per_param, strategy, out["nodes"], out["gpus_per_node"], act,
                         out["compute_bytes"], out["reduce_bytes"], out["shard_group"], out["trainable"])
            rows.append({"strategy": strategy, "ac": ac, **mem, "fits": mem["total"] <= out["usable"]})
    return rows, micro


def _cheapest(rows: list[dict]) -> dict | None:
    """The fitting row that recomputes least, then communicates least (rows are in that order)."""
    return next(({"strategy": r["strategy"], "ac": r["ac"], "total": r["total"]} for r in rows if r["fits"]), None)


def _configured(tc) -> tuple[str | None, str | None]:
    """(trainer.parallel, trainer.activation_checkpointing) where the trainer has them, normalised."""
    par, ac = tc.get("parallel", None), tc.get("activation_checkpointing", None)
    ac = {None: None, False: "none", True: "full", "off": "none", "no": "none"}.get(ac, ac)
    return (str(par).lower() if par else None), (str(ac).lower() if ac is not None else None)


def split_launcher(overrides: list[str]) -> tuple[dict[str, int], list[str]]:
    """``launcher.nodes=`` / ``launcher.gpus_per_node=`` / ``launcher.nproc=`` (also with ``+``/``++``) out of
    Hydra overrides: ({key: value}, the launcher overrides as given)."""
    found, given = {}, []
    for o in overrides:
        key, sep, value = o.lstrip("+").partition("=")
        if sep and key.startswith("launcher.") and key.split(".", 1)[1] in LAUNCHER_KEYS:
            try:
                found[key.split(".", 1)[1]] = int(value)
            except ValueError:
                raise ConfigError(f"{o}: expected an integer") from None
            given.append(o)
    return found, given


def compose_with_launcher(argv: list[str], default_nodes: int = 1, default_gpus: int = 1):
    """(cfg, nodes, gpus_per_node) for Hydra overrides that may name launcher keys the config lacks.

    Launcher values on the command line win, then the composed ``launcher`` section, then the defaults; launcher
    overrides go to Hydra only where the config has that key (so a config with a launcher group checks them).
    """
    found, given = split_launcher(argv)
    rest = [o for o in argv if o not in given]
    cfg = compose(rest)
    launcher = cfg.get("launcher", None)
    if launcher is not None:  # gpus_per_node is the schema's nproc where the schema has no gpus_per_node
        alias = {"gpus_per_node": "nproc"} if "gpus_per_node" not in launcher else {}
        mapped = {alias.get(k, k): v for k, v in found.items()}
        kept = [f"launcher.{k}={v}" for k, v in mapped.items() if k in launcher]
        cfg = compose(rest + kept) if kept else cfg
        launcher = cfg.launcher
    conf = lambda k: launcher.get(k, None) if launcher is not None else None  # noqa: E731
    nodes = found.get("nodes") or conf("nodes") or default_nodes
    gpus = found.get("gpus_per_node") or found.get("nproc") or conf("gpus_per_node") or conf("nproc") or default_gpus
    return cfg, int(nodes), int(gpus)


def _gib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / GIB:.1f}"


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


COLUMNS = ("strategy", "AC", "params", "grads", "optim", "EMA", "gathered", "activ.", "total", "fits")


def format_plan(p: dict, markdown: bool = False) -> str:
    """The plan as text: a summary, one row per strategy x checkpointing (GiB per GPU), the verdict."""
    lines = [f"{p['model']} ({p['family']}, norm={p['norm']}): {_count(p['params'])} parameters"
             + (f" ({_count(p['non_embedding_params'])} non-embedding)" if "non_embedding_params" in p else "")]
    world = f"{p['nodes']} node(s) x {p['gpus_per_node']} GPU(s) = {p['world']} GPUs"
    if "tokens_per_step" in p:
        step = (f"global batch {p['global_batch']} x {p['seq_len']} tokens = "
                f"{p['tokens_per_step'] / 1e6:.2f}M tokens/step")
    else:
        step = f"global batch {p['global_batch']} images/step"
    lines.append(f"{world}; {step}; grad_accum {p['grad_accum']} -> micro-batch {p['micro_batch']} per GPU")
    if "seq" in p:
        lines.append(f"shape: {p['layers']} layers, width {p['hidden']}, {p['heads']} heads, MLP {p['ffn']}, "
                     f"{p['seq']} tokens per sample; largest FSDP unit {_count(p['largest_unit'])} params")
    lines.append(f"precision {p['precision']}; selective AC = every {p['ac_every']} block(s); GPU {p['gpu_mem_gib']:g} "
                 f"GiB, usable {p['usable'] / GIB:.1f} GiB ({p['margin']:.0%} margin); sizes in GiB per GPU")
    par, ac = p["configured"]
    mark = "\\*" if markdown else "*"
    rows = [[r["strategy"].upper() + (mark if (r["strategy"], r["ac"]) == (par, ac) else ""), r["ac"],
             *(_gib(r[k]) for k in ("params", "grads", "optimizer", "ema", "gathered", "activations",
                                    "total")), "yes" if r["fits"] else "no"] for r in p["rows"]]
    if markdown:
        table = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---:" if i > 1 else "---" for i in
                                                                      range(len(COLUMNS))) + "|"]
        table += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *rows)]
        fmt = lambda r: "  ".join(str(x).rjust(w) if i > 1 else str(x).ljust(w)  # noqa: E731
                                  for i, (x, w) in enumerate(zip(r, widths)))
        table = [fmt(COLUMNS), "  ".join("-" * w for w in widths), *map(fmt, rows)]
    star, bullet = ("\\*", "- ") if markdown else ("*", "")
    tail = [f"{star} = as configured (trainer.parallel={par}, trainer.activation_checkpointing={ac})"] if par else []
    if best := p["cheapest"]:
        tail.append(f"cheapest that fits: {best['strategy'].upper()} + AC {best['ac']} ({_gib(best['total'])} GiB)")
    else:
        tail.append("nothing fits at this micro-batch")
        if s := p.get("suggestion"):
            tail.append(f"fits with trainer.grad_accum={s['grad_accum']} (micro-batch {s['micro_batch']}): "
                        f"{s['strategy'].upper()} + AC {s['ac']} ({_gib(s['total'])} GiB)")
    if c := p.get("cost"):
        tail.append(f"cost (estimate): {c['tokens'] / 1e9:.3g}B tokens x {c['flops_per_token'] / 1e9:.1f} GFLOP/token = "
                    f"{c['flops']:.2e} FLOP; at {c['mfu']:.0%} MFU " + ", ".join(
                        f"{g}: {c['gpu_hours'][g]:,.0f} GPU-hours ({c['wall_hours'][g]:,.1f} h on {p['world']} GPUs)"
                        for g in COST_GPUS))
    tail += [f"note: {n}" for n in p["notes"]]
    return "\n".join([bullet + x for x in lines] + [""] + table + [""] + [bullet + x for x in tail])


# --- does a full replica fit this machine (the trainer asks before building a DDP model) ------------------
def _bytes(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _short_count(n: float) -> str:
    return next(f"{n / d:.3g}{u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1, "")) if n >= d or d == 1)


def _cgroup_available() -> Optional[int]:
    """Memory left under this process's cgroup (v2) limit, if it has one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_memory(device) -> tuple[int, str]:
    """(bytes available for a new model on `device`, a description): free GPU memory on CUDA; MemAvailable (and
    the cgroup limit) on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"is free on GPU {device}"
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            import psutil
            avail = int(psutil.virtual_memory().available)
        except ImportError:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = _cgroup_available()
    return (min(avail, cgroup) if cgroup is not None else avail), "of CPU memory is available"


def training_bytes(cfg) -> tuple[int, int]:
    """(parameters, bytes one rank needs to train them as a full replica) from a meta-device build: the model
    states of ``state_bytes_per_param`` (16 bytes per parameter, + 4 for an EMA). Activations are not counted:
    the estimate is a lower bound."""
    with torch.device("meta"):
        model = build_model(cfg)
    n, trained = count_params(model), count_params(model, trainable=True)
    per_param = state_bytes_per_param(optimizer_bytes_per_param(model, str(cfg.optim.name)),
                                      bool(cfg.trainer.get("ema_decay")))
    return n, round(sum((trained if k in ("grads", "optimizer") else n) * v for k, v in per_param.items()))


def check_model_fits(cfg, device, world_size: int = 1) -> None:
    """Stop with one line when training this model cannot fit in `device`'s memory.

    Each rank holds a full replica (DDP), so `world_size` does not shrink the per-rank need; on CPU the ranks
    of one machine (LOCAL_WORLD_SIZE) share its memory.
    """
    device = torch.device(device)
    n, need = training_bytes(cfg)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    total = need * max(1, local)
    avail, where = available_memory(device)
    if total <= avail:
        return
    per_param = need // max(n, 1)
    ema = ", an EMA copy" if cfg.trainer.get("ema_decay") else ""
    ranks = f", x {local} ranks on this machine" if local > 1 else ""
    raise ConfigError(
        f"model {cfg.model.get('name')} needs about {_bytes(total)} to train ({_short_count(n)} parameters x "
        f"{per_param} bytes: fp32 weights, gradients, {cfg.optim.name}'s state{ema}{ranks}; activations not counted) "
        f"but only {_bytes(avail)} {where} (world size {world_size}, a full copy per rank); use a smaller "
        "model (model=...), shard it with FSDP over more ranks, or a device with more memory")
