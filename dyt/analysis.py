"""The paper's analysis of what normalization layers do, as data (`scripts/figures.py` draws the figures).

- `InputStdProbe`: per norm site during training (every norm kind alike, so LayerNorm and DyT runs pay the same
  cost): its input's std ``std/<module path>``, saturation ``sat/<module path>`` (`saturation_bounds`) and output
  std ``out_std/<module path>``; `alpha_metrics`: each element-wise norm's ``alpha/<module path>``. Fig. 8: alpha
  tracks 1/std of its input.
- `record_norm_io`: sampled (input, output, channel) points of every norm layer on one forward (Figs. 2-4: trained
  LayerNorms map inputs to outputs along tanh-like S-curves).
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from dyt import distributed as D
from dyt.nn import ElementwiseNorm, is_norm
from dyt.nn.convert import NORM_FAMILIES, is_channels_first, norm_family
from dyt.distributed import clean_name


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module path without wrapper parts, layer) of every norm site, in module order: LayerNorm, RMSNorm and
    BatchNorm2d (also channels-first and timm's / Hugging Face's classes) and every element-wise norm (DyT and its
    kinds). The one site list of the ``std/...`` metrics and the S-curve figures."""
    return [(clean_name(name), m) for name, m in model.named_modules()
            if isinstance(m, ElementwiseNorm) or is_norm(m, NORM_FAMILIES)]


def elementwise_norms(model: nn.Module) -> list[tuple[str, ElementwiseNorm]]:
    """The norm sites with an ``alpha`` (DyT and its kinds): the layers named by the ``alpha/...`` metrics."""
    return [(name, m) for name, m in norm_layers(model) if isinstance(m, ElementwiseNorm)]


#: |alpha x| beyond which an element counts as saturated: arXiv 2604.23434's threshold (its 49% vs 23% are shares
#: of |alpha x| > 2, results/activation_analysis.json of its artifacts), where tanh'(2) = 0.071 < 0.1.
SATURATION = 2.0


#: elements compared at once when counting saturated ones: the probe's only temporaries (a bool mask of a chunk)
#: stay this small however large the activations, for one small reduction per chunk.
CHUNK = 1 << 24


def saturation_bounds(module: nn.Module, mean: torch.Tensor | None,
                      std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) on the device: x outside [lo, hi] counts as saturated, the same rule for every norm kind: the
    share of |a (x - c)| > SATURATION, with a = alpha, c = 0 for element-wise norms (DyT: tanh(alpha x), so
    tanh' < 0.071 there) and a = 1 / std, c = mean of the site's whole input for the others (LayerNorm, RMSNorm,
    BatchNorm: the alpha that a DyT in their place tracks, Fig. 8)."""
    if isinstance(module, ElementwiseNorm):
        half = SATURATION / module.alpha.detach().float().abs().reshape(())
        return -half, half
    return mean.float() - SATURATION * std.float(), mean.float() + SATURATION * std.float()


def chunks(x: torch.Tensor) -> list[torch.Tensor]:
    """Views of x covering each element once, of at most `CHUNK` elements where x's layout allows (an element's
    order does not matter to a count): x with its dims in memory order (channels-last NCHW included) is flattened
    without a copy; any other layout is split along its outer dim."""
    dense = x.permute(sorted(range(x.dim()), key=lambda d: -x.stride(d))) if x.dim() else x.reshape(1)
    if dense.is_contiguous():
        return list(dense.reshape(-1).split(CHUNK))
    return list(dense.split(max(1, CHUNK // max(1, dense[0].numel()))))


@torch.no_grad()
def site_stats(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[mean, std, saturated share] of one call's input x at a norm site, on x's device, with no host sync and no
    copy of x: `mean_std` and the saturated elements counted a `CHUNK` at a time against device-side bounds
    (`saturation_bounds`, from this call's own mean and std). `count_nonzero` of a mask is 4x faster than its
    `sum`."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.detach()
        mean, std = mean_std(x)
        lo, hi = saturation_bounds(module, mean, std)
        lo, hi = lo.to(x.dtype), hi.to(x.dtype)
        count = sum((torch.count_nonzero(c < lo) + torch.count_nonzero(c > hi) for c in chunks(x)),
                    torch.zeros((), dtype=torch.int64, device=x.device))
        return torch.stack([mean.float(), std.float(), count.float() / max(x.numel(), 1)])


@torch.no_grad()
def mean_std(x: torch.Tensor) -> torch.Tensor:
    """[mean, std] of all of x's elements, on x's device, without a copy of x: `torch.mean` and `torch.std` (one
    fused Welford reduction) in x's own dtype (`torch.std` accumulates bf16/fp16 in fp32 on CUDA, in double on CPU;
    `x.float().std()` would copy x to fp32, and `x.sum(dtype=torch.float32)` copies it too on CPU);
    `torch.var_mean` would be one pass fewer but is 10x slower than both on CPU (35 vs 4 ms at 4x197x1536 fp32,
    one thread). Autocast is off so that nothing casts x first. The results are rounded to x's dtype: relative
    error <= 2^-8 (0.4%) in bf16, 2^-11 in fp16, none in fp32 (tests/test_analysis.py checks it)."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.detach()
        return torch.stack([torch.mean(x), torch.std(x)])


def pooled(calls: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """[std, shares...] of all of a site's calls together, from each call's (element count, [mean, std,
    shares...]): the std of their union (Chan et al.'s pooled variance, in double), each share weighted by its
    call's element count. On the device, no host sync."""
    total = sum(n for n, _ in calls)
    grand = sum(n * s[0].double() for n, s in calls) / total
    m2 = sum((n - 1) * s[1].double() ** 2 + n * (s[0].double() - grand) ** 2 for n, s in calls)
    shares = sum(n * s[2:].double() for n, s in calls) / total
    return torch.cat([(m2 / max(total - 1, 1)).sqrt().reshape(1), shares]).float()


class InputStdProbe:
    """While open (and `enabled`), records per norm site (`norm_layers`, whatever the kind) in the model's FIRST
    forward only: its input's std and saturated share (`site_stats`) and its output's std (`mean_std` of the
    output); `metrics()` then gives ``{"std/<path>", "sat/<path>", "out_std/<path>": value, ...,
    "train/probe_ms": ...}``. A site called several times in that forward (DINO's student on the global then the
    local crops, an RCPS norm on each strand) gives the values of all its calls' elements together (`pooled`).

    For one training step that is logged: forward hooks are added on entry and removed on exit, so other steps
    pay nothing and no extra forward runs. "First forward only" (until the root module's forward returns: every
    family's loss calls it) keeps the first micro-batch's value under gradient accumulation and when activation
    checkpointing re-runs a block's forward in the backward. Each value stays on
    the device (no copy of an activation, no host sync in a hook) until `metrics()` reads them all at once.
    ``train/probe_ms`` is the time the reductions took on this step (CUDA events on the GPU, so no sync either;
    host time on CPU): the cost sits inside `train/throughput`, the same for every norm kind. Hooks sit on the
    inner modules, so a DDP- or FSDP2-wrapped model works; a torch.compile'd one does not call hooks added after
    it was compiled (the caller disables the probe there).
    """

    def __init__(self, model: nn.Module, enabled: bool = True):
        self.model, self.enabled = model, enabled
        # site -> per call: (element count, [input mean, std, saturated share]) / (count, [output mean, std])
        self.stats: dict[str, list[tuple[int, torch.Tensor]]] = {}
        self.out_stds: dict[str, list[tuple[int, torch.Tensor]]] = {}
        self._first = True  # the root module's first forward has not returned yet
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # (start, end) per reduction on a GPU
        self._host_s = 0.0  # reductions on CPU
        self._handles: list = []

    def _timed(self, x: torch.Tensor, reduce: Callable[[], torch.Tensor]) -> torch.Tensor:
        if x.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = reduce()
            end.record()
            self._events.append((start, end))
            return out
        t = time.perf_counter()
        out = reduce()
        self._host_s += time.perf_counter() - t
        return out

    def _pre_hook(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if self._first:
                x = args[0]
                self.stats.setdefault(name, []).append((x.numel(), self._timed(x, lambda: site_stats(module, x))))
        return record

    def _post_hook(self, name: str):
        def record(module: nn.Module, args: tuple, output) -> None:
            if self._first and torch.is_tensor(output):
                stats = self._timed(output, lambda: mean_std(output))
                self.out_stds.setdefault(name, []).append((output.numel(), stats))
        return record

    def _root_done(self, module: nn.Module, args: tuple, output) -> None:
        self._first = False

    def __enter__(self) -> InputStdProbe:
        if self.enabled:
            for name, m in norm_layers(self.model):
                self._handles += [m.register_forward_pre_hook(self._pre_hook(name)),
                                  m.register_forward_hook(self._post_hook(name))]
            self._handles.append(self.model.register_forward_hook(self._root_done))  # after the sites' hooks
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def metrics(self) -> dict[str, float]:
        """The recorded values, averaged over ranks (every rank calls this on the same steps), and this rank's
        ``train/probe_ms``. Each rank's value comes from its own micro-batch: the mean is a less noisy estimate than
        rank 0's alone, for one all-reduce of a few floats per logged step. Every rank records the same layers in
        the same order (same model, same forward). One host sync, here."""
        if not self.stats:
            return {}
        names = list(self.stats)
        outs = [n for n in names if n in self.out_stds]
        values = torch.cat([torch.stack([pooled(self.stats[n]) for n in names]).flatten(),
                            *[pooled(self.out_stds[n]) for n in outs]])
        world = torch_dist.get_world_size() if torch_dist.is_initialized() else 1
        means = (D.all_reduce_sum(values) / world).tolist()
        out = {}
        for i, n in enumerate(names):
            out[f"std/{n}"], out[f"sat/{n}"] = means[2 * i], means[2 * i + 1]
        out.update({f"out_std/{n}": v for n, v in zip(outs, means[2 * len(names):])})
        if self._events:
            self._events[-1][1].synchronize()  # done already (tolist() waited for the stream); elapsed_time needs it
        out["train/probe_ms"] = self._host_s * 1e3 + sum(start.elapsed_time(end) for start, end in self._events)
        return out


def mean_saturation(metrics: dict[str, float]) -> float | None:
    """The mean of a log event's ``sat/<site>`` values (every site weighted alike), None when it has none."""
    sats = [v for k, v in metrics.items() if k.startswith("sat/")]
    return sum(sats) / len(sats) if sats else None


@torch.no_grad()
def alpha_metrics(model: nn.Module) -> dict[str, float]:
    """Every element-wise norm layer's (DyT's) alpha as ``alpha/<module path>`` (Fig. 8 tracks these), read with ONE
    all-reduce however many layers (every rank calls this), or none where no alpha is sharded.

    Under FSDP2 an alpha is a DTensor whose single element lives on one rank of each shard group (a replica of it
    in each HSDP replica group); elsewhere every rank holds all of it. Each rank sends, per alpha, the sum and the
    count of the elements it holds: sum over ranks / count over ranks is the value, whatever the placement."""
    layers = elementwise_norms(model)
    if not layers:
        return {}
    alphas = [m.alpha for _, m in layers]
    if any(isinstance(a, DTensor) for a in alphas):
        local = [a.to_local() if isinstance(a, DTensor) else a for a in alphas]
        sums = torch.stack([t.detach().float().sum() for t in local])
        counts = torch.tensor([float(t.numel()) for t in local], device=sums.device)
        sums, counts = D.all_reduce_sum(torch.stack([sums, counts]))
        values = sums / counts
    else:
        values = torch.cat([a.detach().float().reshape(1) for a in alphas])
    return {f"alpha/{name}": v for (name, _), v in zip(layers, values.tolist())}


# --- input/output of the norm layers (Figs. 2-4) ------------------------------------------------------------
class NormIO(NamedTuple):
    """Sampled points of one norm layer: input values, normalized outputs, channel indices (1-D, same length)."""
    input: torch.Tensor
    output: torch.Tensor
    channel: torch.Tensor


def normalized(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output BEFORE its learnable affine (what the paper plots), in fp32, channels last."""
    x = x.float()
    if isinstance(module, ElementwiseNorm):
        y = module.squash(x)  # element-wise: the layout does not matter
        return y.permute(0, 2, 3, 1) if is_channels_first(module) else y
    if norm_family(module) == "batchnorm":  # per channel: by its running statistics in eval, else the batch's
        by_batch = module.training or module.running_mean is None
        stats = (None, None) if by_batch else (module.running_mean, module.running_var)  # never updated here
        return F.batch_norm(x, *stats, training=by_batch, eps=module.eps).permute(0, 2, 3, 1)
    if is_channels_first(module):
        x = x.permute(0, 2, 3, 1)
    if norm_family(module) == "rmsnorm":
        eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon", None) or torch.finfo(x.dtype).eps
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return F.layer_norm(x, module.normalized_shape, eps=module.eps)


@torch.no_grad()
def record_norm_io(model: nn.Module, forward_fn: Callable[[], object], max_points: int = 20_000,
                   seed: int = 0) -> dict[str, NormIO]:
    """Runs `forward_fn()` (one forward of `model`) with a hook on every norm layer (`norm_layers`) and returns, per
    layer that ran (module path -> `NormIO`), up to `max_points` points of its input and normalized output
    (`normalized`), sampled with a fixed seed; a layer called several times is recorded on its first call.

    Points are drawn with replacement: a permutation of a large model's activations would cost gigabytes, and a
    repeated point changes nothing in a scatter plot. A layer with at most `max_points` values gives all of them,
    in order (rows of the channels-last input)."""
    found: dict[str, NormIO] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if name in found:
                return
            x = args[0].detach()
            y = normalized(module, x).flatten(0, -2)  # (values per channel, C)
            x = (x.float().permute(0, 2, 3, 1) if is_channels_first(module) else x.float()).flatten(0, -2)
            n, c = x.shape
            if n * c <= max_points:
                idx = torch.arange(n * c, device=x.device)
            else:
                g = torch.Generator(device=x.device).manual_seed(seed)
                idx = torch.randint(n * c, (max_points,), generator=g, device=x.device)
            found[name] = NormIO(x.flatten()[idx].cpu(), y.flatten()[idx].cpu(), (idx % c).cpu())
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in norm_layers(model)]
    try:
        forward_fn()
    finally:
        for h in handles:
            h.remove()
    return found
