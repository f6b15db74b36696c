"""The paper's analysis: each norm layer's input std (every kind) and each DyT layer's alpha (Fig. 8), at no copy
of the activations and one collective for the alphas; the norm layers' sampled input/output points (Figs. 2-4),
and scripts/figures.py on real tiny runs."""
import importlib.util
import json
from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import ROOT, TINY, compose, script
from dyt import analysis
from dyt.analysis import InputStdProbe, alpha_metrics, elementwise_norms, norm_layers, record_norm_io
from dyt.logging import read_jsonl
from dyt.families import build_model
from dyt.nn import NORM_KINDS, DynamicTanh, ElementwiseNorm, build_norm
from dyt.trainer import Trainer
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_spec = importlib.util.spec_from_file_location("figures", ROOT / "scripts/figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)

def first_inputs(layers, forward) -> dict[str, torch.Tensor]:
    """Each layer's input in its first call during `forward()`, by our own hooks."""
    seen = {}

    def hook(name):
        def record(module, args):
            seen.setdefault(name, args[0].detach().clone())
        return record
    hooks = [m.register_forward_pre_hook(hook(name)) for name, m in layers]
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
    return seen


def train_events(run_dir):
    return [e for e in read_jsonl(run_dir / "metrics.jsonl") if e["split"] == "train"]


# --- std/ beside alpha/ ---------------------------------------------------------------------------------------
def test_std_logged_for_every_norm_site_on_log_steps_only(vit_runs):
    """DyT and LayerNorm runs log the input std of the same sites (and pay the same probe); alpha only with DyT."""
    events = {norm: train_events(vit_runs / norm) for norm in ("dyt", "layernorm")}
    sites = {}
    for norm, logged in events.items():
        assert [e["step"] for e in logged] == [3, 4]
        for e in logged:
            alphas = {k.removeprefix("alpha/") for k in e if k.startswith("alpha/")}
            stds = {k.removeprefix("std/") for k in e if k.startswith("std/")}
            assert alphas == (stds if norm == "dyt" else set()) and all(e[f"std/{n}"] > 0 for n in stds)
            sites[norm] = stds
    assert sites["dyt"] == sites["layernorm"] and "fc_norm" in sites["dyt"] and len(sites["dyt"]) == 5
    assert all(e["train/probe_ms"] > 0 for logged in events.values() for e in logged)


@pytest.mark.parametrize("extra", [[], ["trainer.grad_accum=2", "trainer.activation_checkpointing=full"]])
def test_logged_std_is_the_first_micro_batch_input_std(tmp_path, extra):
    trainer = Trainer(compose([*TINY, "norm=dyt", "trainer.max_steps=1", *extra]), tmp_path / "r")
    try:
        layers = elementwise_norms(trainer.model)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # step 1's first micro-batch, on step 1's weights
            inputs = first_inputs(layers, lambda: trainer.task.loss(trainer.net, next(trainer._batches())))
        trainer.fit()
        assert all(not m._forward_pre_hooks for _, m in layers)  # the probe left nothing behind
    finally:
        trainer.close()
    (event,) = train_events(tmp_path / "r")
    logged = {k.removeprefix("std/"): v for k, v in event.items() if k.startswith("std/")}
    assert len(layers) == 5 and logged == pytest.approx({n: x.std().item() for n, x in inputs.items()}, rel=1e-6)


def test_probe_records_the_first_forward_once_then_removes_its_hooks():
    model = nn.Sequential(DynamicTanh(4), nn.Sequential(nn.Identity(), DynamicTanh(4)))
    x = torch.randn(3, 4)
    with InputStdProbe(model) as probe:
        model(x)
        model(10 * torch.randn(5, 4))  # a later micro-batch / a checkpointed recompute: not recorded
    metrics = probe.metrics()
    assert metrics.pop("train/probe_ms") > 0
    stds = {k: v for k, v in metrics.items() if k.startswith("std/")}
    assert stds == pytest.approx({"std/0": x.std().item(), "std/1.1": torch.tanh(0.5 * x).std().item()})
    assert all(not m._forward_pre_hooks for m in model.modules())
    with InputStdProbe(model, enabled=False) as off:
        assert all(not m._forward_pre_hooks for m in model.modules())
        model(x)
    assert off.metrics() == {}


def every_kind(dtype=torch.float32) -> nn.Module:
    """Every norm kind of dyt/nn/norms.py on tokens, then BatchNorm2d and channels-first LayerNorm on an image."""
    kinds = [k for k in NORM_KINDS if k != "identity"]
    tokens = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), build_norm(k, 16)) for k in kinds])
    image = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3), build_norm(
        "layernorm", 16, channels_last=False), nn.Conv2d(16, 16, 3), build_norm("dyt", 16, channels_last=False))

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.image = tokens, image

        def forward(self, x):
            return self.tokens(x[0]).sum() + self.image(x[1]).sum()
    return Both().to(dtype)


def every_kind_inputs(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.randn(4, 32, 16, dtype=dtype) * 3 + 1, torch.randn(2, 3, 12, 12, dtype=dtype)


#: the probe's std: one reduction in the input's dtype, rounded to it (dyt.analysis.mean_std)
STD_REL_TOL = {torch.float32: 1e-6, torch.bfloat16: 2**-8}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probe_gives_every_norm_kind_its_input_std(dtype):
    """LayerNorm, RMSNorm, BatchNorm, channels-first and every element-wise kind: std/<site> is its input's std,
    within the stated rounding of the input's dtype."""
    model, x = every_kind(dtype), every_kind_inputs(dtype)
    layers = norm_layers(model)
    inputs = first_inputs(layers, lambda: model(x))
    with InputStdProbe(model) as probe:
        model(x)
    got = probe.metrics()
    reference = {f"std/{n}": t.float().std().item() for n, t in inputs.items()}
    assert {k: v for k, v in got.items() if k.startswith("std/")} == pytest.approx(reference, rel=STD_REL_TOL[dtype],
                                                                                   abs=0)
    assert {k for k in set(got) - set(reference) if not k.startswith(("sat/", "out_std/"))} == {"train/probe_ms"}
    assert got["train/probe_ms"] > 0
    assert {type(m).__name__ for _, m in layers} == {"LayerNorm", "RMSNorm", "BatchNorm2d", "LayerNorm2d",
                                                     "DynamicTanh", "DynamicSquash", "Derf", "DyISRU"}


class OpOutputs(TorchDispatchMode):
    """How many times each (op, elements of each NEW tensor it returned) ran while open; views of an input (same
    storage) allocate nothing and are not listed."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {storage(t) for t in tree_leaves((args, kwargs)) if torch.is_tensor(t)}
        self.ops[str(func), tuple(t.numel() for t in tree_leaves(out) if torch.is_tensor(t) and
                                  (storage(t) is None or storage(t) not in given))] += 1
        return out


def storage(t: torch.Tensor) -> int | None:
    """Where t's storage is; None for a tensor without one (a collective's output under a fake process group)."""
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:
        return None


def test_probe_copies_no_activation(monkeypatch):
    """The ops the probe adds to a bf16 forward (probed minus plain) create only small tensors: no fp32 (or any)
    copy of a norm's input, which at LLaMA 7B and micro-batch 16 would be 1 GiB per site; the saturation count's
    masks are at most `CHUNK` elements (shrunk here below the inputs' sizes, so a whole-input mask would show)."""
    monkeypatch.setattr(analysis, "CHUNK", 64)
    model, x = every_kind(torch.bfloat16), every_kind_inputs(torch.bfloat16)
    with torch.no_grad(), OpOutputs() as plain:
        model(x)
    with torch.no_grad(), OpOutputs() as probed, InputStdProbe(model) as probe:
        model(x)
    added = probed.ops - plain.ops
    assert all(all(n <= 64 for n in numels) for _, numels in added), added  # chunks and scalars only
    assert len(probe.stats) == len(probe.out_stds) == len(norm_layers(model)) == 11


def test_alphas_are_read_in_one_collective_under_fsdp():
    """FSDP2 shards each one-element alpha (it lives on rank 0 of 2): all of them come in one all-reduce, not one
    gather each (a fake 2-rank process group in this process: rank 0's view, collectives counted, not run)."""
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore
    model = nn.Sequential(*[DynamicTanh(8, alpha_init=a) for a in (0.3, 0.7, 1.5)], nn.LayerNorm(8))
    torch.distributed.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        for m in model:
            fully_shard(m)
        assert type(model[0].alpha).__name__ == "DTensor"
        with OpOutputs() as ops:
            alphas = alpha_metrics(model)
    finally:
        torch.distributed.destroy_process_group()
    assert alphas == pytest.approx({"alpha/0": 0.3, "alpha/1": 0.7, "alpha/2": 1.5})
    assert sum(n for (op, _), n in ops.ops.items() if "c10d" in op) == 1
    assert alpha_metrics(nn.Sequential(DynamicTanh(8, alpha_init=0.3), DynamicTanh(8, learn_alpha=False))) == \
        pytest.approx({"alpha/0": 0.3, "alpha/1": 0.5})  # no process group: read locally


def test_probe_benchmark_runs(capsys):
    """scripts/bench/std_probe.py end to end on a tiny model: both norms, and the largest tensor the probe creates
    is a bool mask of at most one chunk (its timings are measured by the script, never asserted)."""
    assert script("scripts/bench/std_probe.py").main(
        ["--models", "vit_pico", "--steps", "1", "--no-write", "data.image_size=32"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| vit_pico |")]
    assert [r[2] for r in rows] == ["layernorm", "dyt"]
    assert all(0 < int(r[8].removesuffix(" B").replace(",", "")) <= analysis.CHUNK for r in rows)


# --- record_norm_io --------------------------------------------------------------------------------------------
def test_layernorm_points_are_its_output_before_the_affine():
    ln = nn.LayerNorm(6)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 2.0)
        ln.bias.normal_()
    x = torch.randn(2, 5, 6)
    ref = F.layer_norm(x, (6,), eps=ln.eps)  # the paper plots LN outputs before the learnable affine
    io = record_norm_io(ln, lambda: ln(x), max_points=60)[""]  # every point, in order
    assert torch.equal(io.input, x.flatten()) and torch.equal(io.channel, torch.arange(6).repeat(10))
    torch.testing.assert_close(io.output, ref.flatten())
    sampled = record_norm_io(ln, lambda: ln(x), max_points=20, seed=1)[""]
    assert len(sampled.input) == 20 and torch.equal(sampled.input, record_norm_io(ln, lambda: ln(x), 20, 1)[""].input)
    check_points(sampled, x.reshape(-1, 6), ref.reshape(-1, 6))


def test_batchnorm_points_are_normalized_by_its_statistics():
    """Table 15's BatchNorm sites: running statistics in eval, the batch's in training (running ones untouched)."""
    bn = nn.BatchNorm2d(3, momentum=0.0)  # its own training forward leaves the running statistics as they are
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    x = torch.randn(2, 3, 4, 5)
    batch = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    for training, (mean, var) in ((False, (bn.running_mean, bn.running_var)), (True, batch)):
        bn.train(training)
        io = record_norm_io(bn, lambda: bn(x), max_points=120)[""]
        expected = ((x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps)).permute(0, 2, 3, 1)
        torch.testing.assert_close(io.output, expected.flatten())
        torch.testing.assert_close(io.input, x.permute(0, 2, 3, 1).flatten())
    assert bn.running_mean.tolist() == [0.5, -1.0, 2.0]  # the figure's pass changed nothing


def check_points(io, rows: torch.Tensor, expected: torch.Tensor) -> None:
    """Each point (input, channel) is an entry of column `channel` of `rows` (N, C), and its output is `expected`
    at that entry."""
    assert io.channel.min() >= 0 and io.channel.max() < rows.shape[1]
    match = rows[:, io.channel] == io.input  # (N, points)
    assert match.any(0).all()
    r = match.float().argmax(0)
    torch.testing.assert_close(io.output, expected[r, io.channel], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_args, image", [
    (TINY, (2, 1, 8, 8)),  # ViT: channels-last LayerNorms (blocks, fc_norm)
    (["model=convnext_atto", "data.image_size=32"], (2, 1, 32, 32)),  # + channels-first stem / downsample norms
])
@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_record_norm_io_on_timm_models(model_args, image, norm):
    torch.manual_seed(0)
    model = build_model(compose([*model_args, f"norm={norm}"])).eval()
    layers = dict(norm_layers(model))
    x = torch.randn(image)
    inputs = first_inputs(layers.items(), lambda: model(x))
    io = record_norm_io(model, lambda: model(x), max_points=300)
    assert set(io) == set(layers) == set(inputs) and len(layers) >= 5
    channels_first = 0
    for name, m in layers.items():
        cf = type(m).__name__.endswith("2d") or getattr(m, "channels_last", True) is False  # NCHW sites
        channels_first += cf
        rows = (inputs[name].permute(0, 2, 3, 1) if cf else inputs[name]).flatten(0, -2)
        if isinstance(m, ElementwiseNorm):
            expected = torch.tanh(m.alpha * rows)
        else:
            expected = F.layer_norm(rows, rows.shape[-1:], eps=m.eps)
        check_points(io[name], rows, expected)
    # ConvNeXt-Atto's blocks use conv_mlp (NCHW): every norm is channels-first (stem, 3 downsamples, 12 blocks, head)
    assert channels_first == (17 if "model=convnext_atto" in model_args else 0)


# --- scripts/figures.py ---------------------------------------------------------------------------------------
def is_png(path):
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scurves_and_alpha_std_figures(vit_runs, tmp_path, capsys):
    for norm in ("layernorm", "dyt"):
        assert figures.main(["scurves", str(vit_runs / norm), "--points", "500", "--batch", "8", "--device", "cpu"]) == 0
        assert is_png(vit_runs / norm / "figures/scurves.png")
    assert figures.main(["alpha-std", str(vit_runs / "dyt"), "--layers", "all"]) == 0
    assert is_png(vit_runs / "dyt/figures/alpha_std.png")
    assert figures.main(["functions", "--out", str(tmp_path / "f.png")]) == 0 and is_png(tmp_path / "f.png")
    for bad in ("nan", "inf", "0"):  # were accepted (a blank or broken curve)
        with pytest.raises(SystemExit) as e:
            figures.main(["functions", "--alphas", bad, "--out", str(tmp_path / "g.png")])
        assert e.value.code == 2 and "must be a finite number > 0" in capsys.readouterr().err


def test_figures_errors_name_what_is_missing(vit_runs, tmp_path, capsys):
    def error(*argv):
        assert figures.main(list(argv)) == 2
        return capsys.readouterr().err
    err = error("alpha-std", str(vit_runs / "layernorm"))
    assert "no alpha/ metrics" in err and "norm=dyt" in err
    assert "does not exist" in error("scurves", str(tmp_path / "nope"))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((vit_runs / "dyt/config.yaml").read_text())
    assert "has no checkpoint" in error("scurves", str(bare))
    old = [{k: v for k, v in e.items() if not k.startswith("std/")} for e in train_events(vit_runs / "dyt")]
    (bare / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in old))
    assert "no std/ metrics" in error("alpha-std", str(bare))
