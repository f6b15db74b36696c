"""The HyenaDNA family: sizes equal to the published ones, the Hyena operator equal to its definition computed
without FFT, causality, every LayerNorm (and only those) becoming DyT as the released converter does, the repo's
weight-decay groups, the pre-training recipe of run_pretrain_hyena.sh, and train.py runs: learning, exact resume
after kill -9, 2 gloo ranks == 1 process."""
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import ROOT, compose, killed_and_resumed, run_script
from dyt.errors import ConfigError
from dyt.families import build_model, build_task
from dyt.families.hyenadna.hyena import HyenaOperator
from dyt.logging import read_jsonl
from dyt.nn import DynamicTanh
from dyt.optim import param_groups
from dyt.run import train
from dyt.validate import validate
from dyt.distributed import DistInfo

DYT_MIRROR = Path("/work/.mirror/jiachenzhu+DyT/repo")
PICO = ["model=hyenadna_pico", "data=dna_synth", "trainer.batch_size=8", "trainer.max_steps=12",
        "optim.warmup_steps=2", "trainer.eval_every=6", "trainer.ckpt_every=6", "trainer.log_every=3",
        "data.val_limit=0.05"]


def meta_model(*overrides):
    with torch.device("meta"):
        return build_model(compose(list(overrides)))


def official_count(d, n, vocab=16, order=2, filter_order=64, emb_dim=5, short=3):
    """Parameters of the Caduceus repo's ConvLMHeadModel with a Hyena layer, from its definitions (tied head)."""
    f, w = 4 * d, (order + 1) * d
    mixer = (d * w + w) + (d * d + d) + (w * short + w)  # in_proj, out_proj, short depthwise conv
    filt = ((emb_dim * filter_order + filter_order) + 2 * (filter_order ** 2 + filter_order)
            + filter_order * d * (order - 1) + filter_order + d * (order - 1))  # MLP, one Sin freq, bias (D)
    block = 2 * 2 * d + mixer + filt + (d * f + f) + (f * d + d)
    return vocab * d + n * block + 2 * d


@pytest.mark.parametrize("model,d,n", [("hyenadna_tiny_1k", 128, 2), ("hyenadna_d256_n4", 256, 4)])
def test_sizes_equal_the_official_models(model, d, n):
    m = meta_model(f"model={model}", "data=hg38", "norm=layernorm")
    count = sum(p.numel() for p in m.parameters())
    assert count == official_count(d, n)
    if model == "hyenadna_tiny_1k":
        assert round(count / 1000) == 436  # the Caduceus paper's "HyenaDNA 436K" (LongSafari/hyenadna-tiny-1k)
        assert m.l_max == 1026
    else:
        assert m.l_max == 1024 + 2  # the repo's l_max: max_length + 2


# --- the operator ------------------------------------------------------------------------------------------------
def direct_hyena(op: HyenaOperator, u: torch.Tensor) -> torch.Tensor:
    """Hyena of order 2 from its definition (the Hyena paper, the repo's hyena.py), with loops for the causal
    convolutions instead of FFTs, in float64."""
    B, L, d = u.shape
    z = u @ op.in_proj.weight.T + op.in_proj.bias  # (B, L, 3d)
    kernel = op.short_filter.weight[:, 0]  # (3d, 3): out[t] = sum_j w_j z[t - 2 + j]
    zc = op.short_filter.bias.expand(B, L, -1).clone()
    for t in range(L):
        for j in range(kernel.shape[1]):
            if t - 2 + j >= 0:
                zc[:, t] += kernel[:, j] * z[:, t - 2 + j]
    x0, x1, v = zc.split(d, -1)
    # the implicit filter: features [t, cos(f w), -sin(f w)] at positions p of l_max, an MLP with sin, a decay
    lm = op.l_max
    p = torch.arange(L, dtype=u.dtype)
    tt = p / (lm - 1)
    freqs = torch.tensor([1e-4, 1.0], dtype=u.dtype)
    ang = 2 * math.pi * p[:, None] / lm * freqs
    h = torch.cat([tt[:, None], ang.cos(), -ang.sin()], -1)
    mlp = op.filter_fn.implicit_filter
    for lin in (mlp[0], mlp[2], mlp[4]):
        h = torch.sin(mlp[1].freq * (h @ lin.weight.T + lin.bias))
    h = h @ mlp[6].weight.T
    deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, d, dtype=u.dtype)
    k = h * torch.exp(-tt[:, None] * deltas.abs())  # (L, d)
    g = v * x1
    y = op.filter_fn.bias * g
    for t in range(L):
        for s in range(t + 1):
            y[:, t] = y[:, t] + k[s] * g[:, t - s]
    return (y * x0) @ op.out_proj.weight.T + op.out_proj.bias


def test_hyena_operator_equals_a_direct_causal_convolution():
    torch.manual_seed(0)
    op = HyenaOperator(8, l_max=20, filter_order=16).double()
    for m in op.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    with torch.no_grad():  # non-trivial values everywhere (zero biases would hide a misplaced term)
        for p in op.parameters():
            p.normal_(0, 0.5)
    u = torch.randn(2, 13, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(op(u), direct_hyena(op, u), atol=1e-10)


def test_outputs_are_causal():
    model = build_model(compose(["model=hyenadna_pico", "data=dna_synth", "norm=dyt"])).eval()
    ids = torch.randint(7, 12, (2, 64))
    changed = ids.clone()
    changed[:, 40] = 7 + (changed[:, 40] - 6) % 4  # another base at position 40
    with torch.no_grad():
        a, b = model(ids), model(changed)
    before, after = (a[:, :40] - b[:, :40]).abs().max(), (a[:, 40:] - b[:, 40:]).abs().max()
    assert before < 1e-6 and after > 1e-4  # FFT round-off before position 40 (~1e-9 measured); at init ~1e-2 after
    with pytest.raises(ConfigError, match="longer than the Hyena filters"):
        model(torch.randint(7, 12, (1, 131)))  # l_max = 128 + 2


# --- norms, init, optimizer groups ----------------------------------------------------------------------------
def released_converter():
    """The DyT repo's other_tasks/DNA/dynamic_tanh.py, as a module (the mirror's copy)."""
    if not DYT_MIRROR.exists():
        pytest.skip("no local mirror of jiachenzhu/DyT")
    source = subprocess.run(["git", "-C", str(DYT_MIRROR), "show", "HEAD:other_tasks/DNA/dynamic_tanh.py"],
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("released_dynamic_tanh")
    exec(compile(source, "dynamic_tanh.py", "exec"), module.__dict__)
    return module


def test_dyt_is_every_layernorm_the_released_converter_replaces():
    ln = build_model(compose(["model=hyenadna_pico", "data=dna_synth", "norm=layernorm"]))
    sites = sorted(n for n, m in ln.named_modules() if isinstance(m, nn.LayerNorm))
    assert len(sites) == 2 * 2 + 1 and "norm_f" in sites and "blocks.1.norm2" in sites
    assert all(m.eps == 1e-5 for n, m in ln.named_modules() if n in sites)
    released = released_converter()
    converted = released.convert_ln_to_dyt(ln)  # one argument, alpha0 0.5: the released file
    assert sorted(n for n, m in converted.named_modules() if isinstance(m, released.DynamicTanh)) == sites
    ours = build_model(compose(["model=hyenadna_pico", "data=dna_synth", "norm=dyt", "norm.alpha_init=0.8"]))
    assert not any(isinstance(m, nn.LayerNorm) for m in ours.modules())
    dyt = {n: m for n, m in ours.named_modules() if isinstance(m, DynamicTanh)}
    assert sorted(dyt) == sites and all(m.alpha.item() == pytest.approx(0.8) for m in dyt.values())


def test_init_and_tied_head_follow_the_repo():
    torch.manual_seed(0)
    model = build_model(compose(["model=hyenadna_d256_n4", "data=hg38", "norm=layernorm"]))
    assert model.lm_head.weight is model.embed.weight and model.embed.weight.shape == (16, 256)
    b = model.blocks[0]
    assert b.mixer.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert b.mlp.fc2.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert b.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    f = b.mixer.filter_fn
    assert f.implicit_filter[2].weight.std().item() == pytest.approx(0.02, rel=0.1)  # _init_weights reaches it
    assert (f.implicit_filter[0].bias == 0).all() and (f.implicit_filter[1].freq == 10).all()
    assert f.bias.std().item() == pytest.approx(1.0, rel=0.2)  # torch.randn
    # the filter's positions and decays are buffers (the repo's lr 0 registrations), saved with the weights
    assert {"blocks.0.mixer.filter_fn.pos_emb.z", "blocks.0.mixer.filter_fn.modulation.deltas"} <= set(model.state_dict())
    assert not any("pos_emb" in n or "deltas" in n for n, _ in model.named_parameters())


def test_meta_build_materialises_like_a_plain_one():
    cfg = compose(["model=hyenadna_pico", "data=dna_synth", "norm=dyt"])
    with torch.device("meta"):
        model = build_model(cfg)
    model.to_empty(device="cpu")
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    model.init_weights()
    plain = build_model(cfg)
    assert model.lm_head.weight is model.embed.weight
    for (n, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        if n.endswith(("pos_emb.z", "pos_emb.t", "deltas", "freq", "alpha")) or ".norm" in n:
            assert torch.equal(a, b), n  # deterministic values
        assert torch.isfinite(a).all()


def test_weight_decay_groups_are_the_repo_ones():
    """The repo's configure_optimizers: no decay for biases, nn.LayerNorm and nn.Embedding parameters (the
    tied head) and the filter MLPs (their _optim); every other parameter decayed."""
    model = build_model(compose(["model=hyenadna_pico", "data=dna_synth", "norm=layernorm"]))
    decayed, _ = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {n for n, _ in model.named_parameters()
                if not (n.endswith("bias") or ".norm" in n or n.startswith("norm_f") or n == "embed.weight"
                        or ".implicit_filter." in n)}
    assert {names[id(p)] for p in decayed["params"]} == expected
    assert expected == {f"blocks.{i}.{s}.weight" for i in range(2)
                        for s in ("mixer.in_proj", "mixer.out_proj", "mixer.short_filter", "mlp.fc1", "mlp.fc2")}


# --- configs ------------------------------------------------------------------------------------------------------
def test_table6_recipe_is_run_pretrain_hyena():
    """Caduceus's slurm_scripts/run_pretrain_hyena.sh over configs/experiment/hg38/hg38.yaml."""
    for norm in ("layernorm", "dyt"):
        cfg = compose(["experiment=table6_hyenadna", f"norm={norm}"])
        assert (cfg.model.d_model, cfg.model.n_layer, cfg.data.seq_len) == (256, 4, 1024)
        assert cfg.trainer.max_steps == 10000 and cfg.trainer.batch_size == 1048576 // 1024
        assert cfg.data.rc_aug and not cfg.data.mlm and cfg.data.name == "hg38" and cfg.data.val_limit == 0.125
        assert cfg.optim.lr == 6e-4 and cfg.optim.weight_decay == 0.1 and list(cfg.optim.betas) == [0.9, 0.95]
        assert cfg.optim.warmup_steps == 1000 and cfg.optim.lr * cfg.optim.min_lr_ratio == pytest.approx(1e-4)
        assert cfg.optim.clip_grad == 1.0 and cfg.trainer.precision == "fp16" and cfg.seed == 2222
        assert cfg.trainer.eval_every == 2000 and cfg.trainer.ckpt_every == 500
        validate(cfg)
    assert compose(["experiment=table6_hyenadna", "launcher=node8"]).launcher.nproc == 8


@pytest.mark.parametrize("args,message", [
    (["data=text_pydoc"], "needs a DNA dataset"),
    (["model.l_max=100"], "data.seq_len=128 is longer than the Hyena filters (model.l_max=100)"),
    (["data.mlm=true"], "HyenaDNA pre-trains on the next token"),
])
def test_bad_hyenadna_configs_are_one_clear_error(args, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg = compose(["model=hyenadna_pico", "data=dna_synth", f"data.root={tmp_path}", *args])
        validate(cfg)
        build_task(cfg, DistInfo())


# --- train.py -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pico_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("hyena") / "run"
    return d, train(compose([*PICO, "norm=dyt"]), d)


def test_run_records(pico_run):
    d, s = pico_run
    assert s["status"] == "completed" and s["metric"] == "val/loss" and math.isfinite(s["val/loss"])
    events = read_jsonl(d / "metrics.jsonl")
    assert [e["step"] for e in events if e["split"] == "val"] == [6, 12]
    assert {"val/loss", "val/ppl", "val/acc"} <= set(events[-1]) and "alpha/norm_f" in events[0]


@pytest.mark.slow
def test_pretraining_learns_the_synthetic_genome(tmp_path):
    """The motifs make the next base predictable beyond its frequency: the val loss drops below ln 4 (1.29 and
    accuracy 0.39 measured; LayerNorm: at this width and init DyT's tiny outputs leave the cubic Hyena gates
    without gradient for far longer, see the README)."""
    s = train(compose(["model=hyenadna_pico", "data=dna_synth", "norm=layernorm", "trainer.batch_size=16",
                       "trainer.max_steps=300", "optim.lr=3e-3", "optim.warmup_steps=10", "trainer.eval_every=300",
                       "trainer.ckpt_every=300", "data.val_limit=0.1", f"data.root={tmp_path}/genome"]), tmp_path / "run")
    assert s["val/loss"] < math.log(4) - 0.05 and s["val/acc"] > 0.33  # a base-frequency guess: ~0.28


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    overrides = [*PICO, "norm=dyt", "trainer.max_steps=40", "trainer.ckpt_every=5", "trainer.eval_every=20",
                 "data.num_workers=2"]
    a, b = killed_and_resumed(tmp_path, overrides, timeout=240)
    assert a["status"] == b["status"] == "completed"
    assert a["train/loss"] == b["train/loss"] and a["val/loss"] == b["val/loss"]
    wa, wb = (torch.load(d / "checkpoints/step_00000040.pt", weights_only=True)["model"]
              for d in (tmp_path / "killed", tmp_path / "straight"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(pico_run, tmp_path):
    """2 DDP ranks (gloo) see the windows and reverse-complement draws of one process: every logged loss agrees
    to float reduction order."""
    d, _ = pico_run
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    run_script([torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *PICO, "norm=dyt",
                f"hydra.run.dir={tmp_path}/ddp"], cwd=tmp_path)
    losses = [[(e["step"], e.get("train/loss", e.get("val/loss"))) for e in read_jsonl(p / "metrics.jsonl")]
              for p in (d, tmp_path / "ddp")]
    assert [s for s, _ in losses[1]] == [s for s, _ in losses[0]]
    assert [v for _, v in losses[1]] == pytest.approx([v for _, v in losses[0]], rel=1e-5)
