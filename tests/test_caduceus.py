"""Caduceus (Table 6): the published sizes on meta, RC equivariance, the scan against a step-by-step recurrence
(and mamba_ssm's CUDA kernel where installed), which norm sites norm= reaches (paper vs as released), the init,
the masked-LM loss, the Table 6 recipe, train.py runs, resumes exactly after kill -9, 2 gloo ranks == 1 process."""
import math
import os
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, compose, killed_and_resumed, run_script
from dyt.data.dna import COMPLEMENT, PAD, VOCAB_SIZE
from dyt.distributed import DistInfo
from dyt.errors import ConfigError
from dyt.families import build_model, build_task
from dyt.families.caduceus.mamba import Mamba, cuda_selective_scan, selective_scan
from dyt.families.caduceus.rcps import rc_ids
from dyt.logging import read_jsonl
from dyt.nn import DynamicTanh
from dyt.optim import param_groups
from dyt.run import train
from dyt.validate import validate

TINY = ["model=caduceus_tiny", "data=dna_synth", "data.mlm=true", "data.seq_len=64", "trainer.batch_size=8",
        "trainer.max_steps=12", "optim.warmup_steps=2", "trainer.eval_every=6", "trainer.ckpt_every=6",
        "trainer.log_every=3", "data.val_limit=0.05"]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def tiny(*overrides, dtype=torch.float64):
    torch.manual_seed(0)
    return build_model(compose([*TINY, *overrides])).to(dtype)


# --- sizes -----------------------------------------------------------------------------------------------------
def released_count(d, n, vocab=16, d_state=16, expand=2, d_conv=4):
    """Parameters of the released CaduceusForMaskedLM (rcps, bidirectional add, weight tie, RMSNorm, tied head),
    from mamba_simple.Mamba's and modeling_caduceus.py's definitions."""
    e, r = expand * d, math.ceil(d / 16)
    own = (e * d_conv + e) + e * (r + 2 * d_state) + (r * e + e) + e * d_state + e  # conv, x_proj, dt_proj, A_log, D
    shared = d * 2 * e + e * d  # in_proj, out_proj: tied between the two directions
    return vocab * d + n * (shared + 2 * own + d) + d  # embedding (= head), blocks with their RMSNorm, norm_f


@pytest.mark.parametrize("model,d,n,published", [
    ("caduceus_ps_1k_d118_n4", 118, 4, 470e3),  # the Caduceus paper's GenomicBenchmarks Caduceus: ~470k
    ("caduceus_ps_131k_d256_n8", 256, 8, None),  # run_pretrain_caduceus.sh
    ("caduceus_ps_131k_d256_n8 model.n_layer=16", 256, 16, 7.7e6)])  # Hugging Face caduceus-ps_seqlen-131k (7.7M)
def test_sizes_equal_the_released_models(model, d, n, published):
    name, *extra = model.split()
    with torch.device("meta"):
        m = build_model(compose([f"model={name}", *extra, "data=dna_synth", "norm=rmsnorm"]))
    count = sum(p.numel() for p in m.parameters())
    assert count == released_count(d, n)
    if published:
        assert f"{count:.2g}" == f"{published:.2g}"


# --- reverse-complement equivariance -------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [["norm=rmsnorm"], ["norm=dyt"], ["norm=rmsnorm", "model.fused_add_norm=false"]])
def test_rc_of_the_input_gives_the_rc_of_the_logits(overrides):
    """Flip the strand: logits(rc(x)) is logits(x) flipped in length with each token's logit moved to its
    complement's; the features a classifier pools do not change at all."""
    model = tiny(*overrides)
    x = torch.randint(0, VOCAB_SIZE, (3, 40))
    comp = model.complement
    assert torch.allclose(model(rc_ids(x, comp)), model(x).flip(1)[..., comp], atol=1e-12)
    assert torch.allclose(model.features(rc_ids(x, comp)), model.features(x), atol=1e-12)
    # not for free: the plain bidirectional model (no parameter sharing) is not equivariant
    plain = tiny(*overrides, "model.rcps=false")
    assert (plain(rc_ids(x, comp)) - plain(x).flip(1)[..., comp]).abs().max() > 1e-3


def test_fused_add_norm_exchanges_the_halves_as_released():
    """The released fused path (RCPSMambaBlock) normalises the second half as the forward strand: a different
    function from the unfused RCPSAddNormWrapper path, with the same parameters."""
    a, b = tiny("model.fused_add_norm=true"), tiny("model.fused_add_norm=false")
    b.load_state_dict(a.state_dict())
    x = torch.randint(7, 11, (2, 16))
    assert not torch.allclose(a(x), b(x))


def test_complement_map_is_the_tokenizer_one():
    model = tiny()
    assert model.vocab_size == 16 and model.complement.tolist() == COMPLEMENT.tolist() + [12, 13, 14, 15]


# --- the scan --------------------------------------------------------------------------------------------------
def recurrence(u, delta, A, B, C, D, z, bias):
    """The selective SSM written out one channel, one state and one step at a time (Mamba paper, Alg. 2)."""
    b, d, L = u.shape
    y = torch.zeros_like(u)
    for i in range(b):
        for c in range(d):
            h = torch.zeros(A.shape[1], dtype=u.dtype)
            for t in range(L):
                dt = math.log1p(math.exp(float(delta[i, c, t] + bias[c])))  # softplus
                h = torch.exp(dt * A[c]) * h + dt * B[i, :, t] * u[i, c, t]
                out = (h * C[i, :, t]).sum() + D[c] * u[i, c, t]
                y[i, c, t] = out * z[i, c, t] / (1 + math.exp(-float(z[i, c, t])))  # * silu(z)
    return y


def test_scan_equals_the_step_by_step_recurrence():
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 3, 4, 9
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, delta, z, B, C, D, bias = r(b, d, L), r(b, d, L), r(b, d, L), r(b, n, L), r(b, n, L), r(d), r(d)
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) * 3
    got = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
    assert torch.allclose(got, recurrence(u, delta, A, B, C, D, z, bias), atol=1e-12)


def test_mamba_block_is_causal():
    """One direction of the mixer: position t depends on positions <= t only (conv and scan)."""
    torch.manual_seed(0)
    m = Mamba(8).double()
    x = torch.randn(1, 12, 8, dtype=torch.float64)
    y = x.clone()
    y[:, 7:] += 1.0
    assert torch.equal(m(x)[:, :7], m(y)[:, :7]) and not torch.allclose(m(x)[:, 7:], m(y)[:, 7:])


@pytest.mark.gpu
@gpu
def test_cuda_kernel_equals_the_pytorch_scan():
    """mamba_ssm's selective_scan_fn (the optional extra) and our scan: same outputs and gradients, and a model
    with model.scan=cuda equals model.scan=torch."""
    if cuda_selective_scan() is None:
        pytest.skip("mamba_ssm is not installed (pip install -e .[mamba])")
    g = torch.Generator(device="cuda").manual_seed(0)
    b, d, n, L = 2, 64, 16, 257
    r = lambda *s: torch.randn(*s, generator=g, device="cuda", requires_grad=True)  # noqa: E731
    args = [r(b, d, L), r(b, d, L), -torch.rand(d, n, device="cuda").requires_grad_(), r(b, n, L), r(b, n, L), r(d)]
    z, bias = r(b, d, L), r(d)
    outs = []
    for scan in (selective_scan, cuda_selective_scan()):
        y = scan(*args, z=z, delta_bias=bias, delta_softplus=True)
        grads = torch.autograd.grad(y.square().sum(), [*args, z, bias])
        outs.append((y, grads))
    assert torch.allclose(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-4)
    for a, k in zip(outs[0][1], outs[1][1]):
        assert torch.allclose(a, k, rtol=1e-3, atol=1e-3)
    models = [tiny("norm=dyt", f"model.scan={s}", dtype=torch.float32).cuda() for s in ("torch", "cuda")]
    x = torch.randint(0, VOCAB_SIZE, (2, 64), device="cuda")
    assert torch.allclose(models[0](x), models[1](x), rtol=1e-4, atol=1e-4)


# --- which norms norm= replaces ------------------------------------------------------------------------------------
def norm_kinds(model):
    kinds = {}
    for m in model.modules():
        if isinstance(m, (torch.nn.RMSNorm, DynamicTanh)):
            kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    return kinds


def test_norm_dyt_replaces_exactly_the_rmsnorm_sites():
    """Paper (default): every block's norm and the final norm; the sites hold no bias (an RMSNorm has none)."""
    base, dyt = tiny("norm=rmsnorm"), tiny("norm=dyt", "norm.alpha_init=0.7")
    assert norm_kinds(base) == {"RMSNorm": 3} and norm_kinds(dyt) == {"DynamicTanh": 3}
    sites = [m for m in dyt.modules() if isinstance(m, DynamicTanh)]
    assert all(m.bias is None and m.alpha.item() == pytest.approx(0.7) for m in sites)
    assert {n.rsplit(".", 1)[0] for n, p in dyt.named_parameters() if n.endswith("alpha")} == {
        "layers.0.norm.submodule", "layers.1.norm.submodule", "norm_f.submodule"}


def test_as_released_norm_dyt_changes_nothing():
    """model.convert=released: the released converter replaces nn.LayerNorm only and Caduceus has none, so
    norm=dyt is the RMSNorm baseline: same modules, same weights, same outputs."""
    base, released = tiny("norm=rmsnorm"), tiny("norm=dyt", "model.convert=released")
    assert norm_kinds(released) == {"RMSNorm": 3}
    sa, sb = base.state_dict(), released.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randint(0, VOCAB_SIZE, (2, 24))
    assert torch.equal(base(x), released(x))


# --- init, weight decay -------------------------------------------------------------------------------------------
def test_init_follows_the_repo():
    """Mamba's dt / A / D init and Caduceus's _init_weights; the reverse Mamba shares in_proj and out_proj."""
    cfg = compose([*TINY, "norm=rmsnorm"]).model
    model = tiny(dtype=torch.float32)
    mixer = model.layers[0].mixer.submodule
    assert mixer.rev.in_proj is mixer.fwd.in_proj and mixer.rev.out_proj is mixer.fwd.out_proj
    assert mixer.rev.conv1d is not mixer.fwd.conv1d and mixer.rev.dt_proj is not mixer.fwd.dt_proj
    for m in (mixer.fwd, mixer.rev):
        dt = F.softplus(m.dt_proj.bias)
        assert (dt >= cfg.dt_min * 0.999).all() and (dt <= cfg.dt_max * 1.001).all()
        assert torch.allclose(m.A_log, torch.log(torch.arange(1.0, 17.0)).expand_as(m.A_log))
        assert torch.equal(m.D, torch.ones_like(m.D))
        assert m.dt_proj.weight.abs().max() <= m.dt_rank ** -0.5
    # out_proj: kaiming-uniform (bound 1/sqrt(fan_in)) / sqrt(n_layer); in_proj keeps PyTorch's default bound
    bound = 1 / math.sqrt(mixer.fwd.d_inner)
    assert mixer.fwd.out_proj.weight.abs().max() <= bound / math.sqrt(cfg.n_layer)
    assert mixer.fwd.out_proj.weight.abs().max() > 0.9 * bound / math.sqrt(cfg.n_layer)
    assert model.embedding.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_meta_build_materialises_like_a_plain_one():
    cfg = compose([*TINY, "norm=dyt"])
    with torch.device("meta"):
        model = build_model(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    mixer = model.layers[0].mixer.submodule
    assert mixer.rev.in_proj is mixer.fwd.in_proj  # shared modules survive to_empty (a tied weight would not)
    assert model.complement.tolist() == build_model(cfg).complement.tolist()
    x = torch.randint(0, VOCAB_SIZE, (2, 16))
    assert torch.isfinite(model(x)).all()
    assert torch.allclose(model(rc_ids(x, model.complement)), model(x).flip(1)[..., model.complement], atol=1e-5)


def test_weight_decay_groups_are_the_repo_ones():
    """The repo's optimizer hooks: no decay for biases, A_log and D (_no_weight_decay) and the nn.Embedding (the
    tied head). Every other parameter is decayed, but for the norm weights (1-D; decayed there: optim.decay_1d)."""
    model = tiny("norm=rmsnorm", dtype=torch.float32)
    decayed, _ = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {names[id(p)].split("mixer.submodule.")[-1] for p in decayed["params"]}
    assert got == {"fwd.in_proj.weight", "fwd.out_proj.weight", "fwd.conv1d.weight", "fwd.x_proj.weight",
                   "fwd.dt_proj.weight", "rev.conv1d.weight", "rev.x_proj.weight", "rev.dt_proj.weight"}


# --- the task ---------------------------------------------------------------------------------------------------
def test_loss_counts_the_masked_positions_only():
    cfg = compose([*TINY, "norm=dyt"])
    task = build_task(cfg, DistInfo())
    model = build_model(cfg)
    ids, targets = (torch.stack(t) for t in zip(*[task.datasets[0][i] for i in range(4)]))
    assert (targets != PAD).float().mean().item() == pytest.approx(0.15, abs=0.05)
    masked = targets != PAD
    logits = model(ids)
    nll = F.cross_entropy(logits[masked], targets[masked], reduction="sum")
    # training: over the expected masked count (split-invariant); evaluation: the mean over the masked tokens
    assert torch.allclose(task.loss(model, (ids, targets)), nll / (targets.numel() * 0.15))
    sums = task.eval_step(model, (ids, targets))
    assert sums["tokens"] == masked.sum() and sums["nll"] == pytest.approx(nll.item(), rel=1e-6)


# --- configs ------------------------------------------------------------------------------------------------------
def test_table6_recipe_is_the_released_1k_pretraining():
    """The model wrapper_run_genomics.sh fine-tunes (caduceus-ps_seqlen-1k_d_model-118_n_layer-4_lr-8e-3), pre-trained
    as the Caduceus README's 1k command over configs/experiment/hg38/hg38.yaml; the baseline is RMSNorm."""
    assert compose(["experiment=table6_caduceus"]).norm.name == "rmsnorm"
    for norm in ("rmsnorm", "dyt"):
        cfg = compose(["experiment=table6_caduceus", f"norm={norm}"])
        m = cfg.model
        assert (m.d_model, m.n_layer, m.rcps, m.bidirectional, m.bidirectional_strategy) == (118, 4, True, True, "add")
        assert m.bidirectional_weight_tie and m.fused_add_norm and m.convert == "paper"
        assert cfg.data.seq_len == 1024 and cfg.data.mlm and cfg.data.mlm_probability == 0.15 and not cfg.data.rc_aug
        assert cfg.trainer.max_steps == 10000 and cfg.trainer.batch_size == 1048576 // 1024
        assert cfg.optim.lr == 8e-3 and cfg.optim.weight_decay == 0.1 and list(cfg.optim.betas) == [0.9, 0.95]
        assert cfg.optim.warmup_steps == 1000 and cfg.optim.lr * cfg.optim.min_lr_ratio == pytest.approx(1e-4)
        assert cfg.optim.clip_grad == 1.0 and cfg.trainer.precision == "fp16" and cfg.seed == 2222
        validate(cfg)


@pytest.mark.parametrize("args,message", [
    ([*TINY, "data.mlm=false"], "Caduceus pre-trains as a masked LM"),
    ([*TINY, "model.convert=lol"], "model.convert=lol: choose one of paper, released"),
    (["model=caduceus_tiny", "data=text_pydoc"], "needs a DNA dataset"),
])
def test_bad_caduceus_configs_are_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(args))


# --- train.py -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("caduceus") / "run"
    return d, train(compose([*TINY, "norm=dyt"]), d)


def test_run_records(tiny_run):
    d, s = tiny_run
    assert s["status"] == "completed" and s["metric"] == "val/loss" and math.isfinite(s["val/loss"])
    events = read_jsonl(d / "metrics.jsonl")
    assert [e["step"] for e in events if e["split"] == "val"] == [6, 12]
    assert {"val/loss", "val/ppl", "val/acc"} <= set(events[-1])


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    overrides = [*TINY, "norm=dyt", "trainer.max_steps=24", "trainer.ckpt_every=4", "trainer.eval_every=12",
                 "data.num_workers=2"]
    a, b = killed_and_resumed(tmp_path, overrides, step=8, timeout=240)
    assert a["status"] == b["status"] == "completed"
    assert a["train/loss"] == b["train/loss"] and a["val/loss"] == b["val/loss"]
    wa, wb = (torch.load(d / "checkpoints/step_00000024.pt", weights_only=True)["model"]
              for d in (tmp_path / "killed", tmp_path / "straight"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tiny_run, tmp_path):
    """2 DDP ranks (gloo) see the windows and masks of one process: every logged loss agrees to float reduction
    order (a per-rank mean over the drawn masked tokens would not: 1.2e-5 apart at step 0)."""
    d, _ = tiny_run
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    run_script([torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *TINY, "norm=dyt",
                f"hydra.run.dir={tmp_path}/ddp"], cwd=tmp_path)
    losses = [[(e["step"], e.get("train/loss", e.get("val/loss"))) for e in read_jsonl(p / "metrics.jsonl")]
              for p in (d, tmp_path / "ddp")]
    assert [s for s, _ in losses[1]] == [s for s, _ in losses[0]]
    assert [v for _, v in losses[1]] == pytest.approx([v for _, v in losses[0]], rel=1e-5)
