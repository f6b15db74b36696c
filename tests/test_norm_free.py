"""Table 10's normalization-free methods (norm=fixup | skipinit | sigma_reparam): each forward against its paper's
formula written here independently, gradients by gradcheck, the power iteration against the exact spectral norm,
identity blocks at init, conversion of timm models and a bare stack of timm Blocks (MAE's), exact resume, errors,
and a tiny ViT that trains with each."""
import copy
import math
import shutil

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch.func import functional_call

from conftest import TINY, compose
from dyt.errors import ConfigError
from dyt.families import build_model
from dyt.logging import read_jsonl
from dyt.nn import NORM_FREE, build_norm, convert_norms
from dyt.nn.residual import ScalarScale, ScalarShift, fixup_scale
from dyt.nn.sigma_reparam import SpectralReparam
from dyt.run import train
from dyt.validate import validate

DIM = 8


class BlockStack(nn.Module):
    """What MAE's encoder is, at toy size: timm ViT Blocks then a final LayerNorm (no timm model around them)."""

    def __init__(self, depth=3, dim=DIM, dtype=torch.float32):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(dim, num_heads=2, mlp_ratio=2.0) for _ in range(depth)]).to(dtype)
        self.norm = nn.LayerNorm(dim).to(dtype)

    def forward(self, x):
        return self.norm(self.blocks(x))


def stack(kind, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    m = BlockStack(dtype=dtype)
    with torch.no_grad():  # non-zero biases: the formulas below must not lean on zero-initialised ones
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return convert_norms(m, kind)


def randomised_scalars(m):
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, ScalarShift):
                mod.bias.normal_(0, 0.3)
            elif isinstance(mod, ScalarScale):
                mod.scale.normal_(1, 0.3)
    return m


def timm_vit(kind=None):
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, embed_dim=DIM,
                          depth=2, num_heads=2, num_classes=5, global_pool="avg")
    return convert_norms(m, kind) if kind else m


# SkipInit and Fixup -------------------------------------------------------------------------------------------

def test_no_norm_is_left_and_the_slots_hold_the_papers_scalars():
    for kind in NORM_FREE:
        m = stack(kind)
        assert not any(isinstance(x, nn.LayerNorm) for x in m.modules()), kind
    b = stack("skipinit").blocks[0]
    assert isinstance(b.norm1, nn.Identity) and isinstance(b.norm2, nn.Identity)
    assert isinstance(b.ls1, ScalarScale) and b.ls1.scale.item() == 0 and b.ls2.scale.item() == 0
    f = stack("fixup")
    b = f.blocks[0]
    assert isinstance(b.norm1, ScalarShift) and isinstance(b.norm2, ScalarShift) and isinstance(b.mlp.norm, ScalarShift)
    assert b.ls1.scale.item() == 1 and b.ls2.scale.item() == 1 and b.norm1.bias.item() == 0
    assert isinstance(f.norm[0], ScalarShift) and isinstance(f.norm[1], ScalarScale)  # the final norm


@pytest.mark.parametrize("kind", ["skipinit", "fixup"])
def test_blocks_are_the_identity_at_init(kind):
    m = stack(kind)
    x = torch.randn(2, 5, DIM)
    torch.testing.assert_close(m.blocks(x), x, rtol=0, atol=0)


def test_fixup_initialisation():
    """Branch-last layers and the classifier zero; qkv scaled by L^(-1/6), fc1 by L^(-1/2) (L = 2 x depth)."""
    before, after = timm_vit(), timm_vit("fixup")
    L = 2 * len(before.blocks)
    assert fixup_scale(L, 4) == L ** (-1 / 6) and fixup_scale(L, 2) == L ** (-1 / 2)
    for b0, b1 in zip(before.blocks, after.blocks):
        torch.testing.assert_close(b1.attn.qkv.weight, b0.attn.qkv.weight * L ** (-1 / 6))
        torch.testing.assert_close(b1.mlp.fc1.weight, b0.mlp.fc1.weight * L ** (-1 / 2))
        for last in (b1.attn.proj, b1.mlp.fc2):
            assert not last.weight.any() and not last.bias.any()
    assert not after.head.weight.any() and not after.head.bias.any()
    assert not after(torch.randn(2, 3, 16, 16)).any()  # zero classifier: zero logits at init


def attention(attn, x):
    """timm's Attention written out: softmax(q k^T / sqrt(d)) v per head, then the projection."""
    B, N, C = x.shape
    h = attn.num_heads
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // h), dim=-1)
    return F.linear((a @ v).transpose(1, 2).reshape(B, N, C), attn.proj.weight, attn.proj.bias)


def skipinit_block(b, x):
    """SkipInit: x + alpha * f(x) per branch, no normalization."""
    x = x + b.ls1.scale * attention(b.attn, x)
    return x + b.ls2.scale * F.linear(F.gelu(b.mlp.fc1(x)), b.mlp.fc2.weight, b.mlp.fc2.bias)


def fixup_block(b, x):
    """Fixup: x + m * f(x + b_in) per branch, with a scalar bias before fc2 too."""
    x = x + b.ls1.scale * attention(b.attn, x + b.norm1.bias)
    hidden = F.gelu(b.mlp.fc1(x + b.norm2.bias)) + b.mlp.norm.bias
    return x + b.ls2.scale * F.linear(hidden, b.mlp.fc2.weight, b.mlp.fc2.bias)


@pytest.mark.parametrize("kind,formula", [("skipinit", skipinit_block), ("fixup", fixup_block)])
def test_forward_is_the_formula(kind, formula):
    m = randomised_scalars(stack(kind))
    with torch.no_grad():  # leave init: non-zero branch outputs
        for b in m.blocks:
            b.attn.proj.weight.normal_(0, 0.3)
            b.mlp.fc2.weight.normal_(0, 0.3)
    m.eval()
    x = torch.randn(2, 5, DIM)
    y = x
    for b in m.blocks:
        y = formula(b, y)
    if kind == "fixup":
        y = (y + m.norm[0].bias) * m.norm[1].scale
    torch.testing.assert_close(m(x), y)


@pytest.mark.parametrize("kind", ["skipinit", "fixup"])
def test_gradcheck_float64(kind):
    m = randomised_scalars(stack(kind, torch.float64)).eval()
    with torch.no_grad():
        for b in m.blocks:
            b.attn.proj.weight.normal_(0, 0.3)
            b.mlp.fc2.weight.normal_(0, 0.3)
    scalars = {n: p.detach().clone().requires_grad_() for n, p in m.named_parameters() if p.numel() == 1}
    names = list(scalars)
    x = torch.randn(2, 3, DIM, dtype=torch.float64, requires_grad=True)

    def f(x, *values):
        return functional_call(m, dict(zip(names, values)), (x,))
    assert torch.autograd.gradcheck(f, (x, *scalars.values()))


# sigmaReparam -----------------------------------------------------------------------------------------------

def reparametrised(out=6, inp=4, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(inp, out).to(dtype)
    convert_norms(nn.Sequential(lin), "sigma_reparam")
    return lin


def test_sigma_reparam_starts_as_the_weight_with_gamma_the_top_singular_value():
    lin = reparametrised()
    w = lin.parametrizations.weight.original
    sn = lin.parametrizations.weight[0]
    s = torch.linalg.svdvals(w)
    torch.testing.assert_close(sn.gamma, s[:1])
    torch.testing.assert_close(lin.weight, w)  # gamma / sigma = 1 at init
    assert "parametrizations.weight.0.u" in lin.state_dict() and not sn.u.requires_grad  # a buffer: checkpointed


def test_sigma_reparam_forward_is_the_formula_and_updates_u_only_in_training():
    lin = reparametrised()
    sn = lin.parametrizations.weight[0]
    with torch.no_grad():
        sn.u.copy_(F.normalize(torch.randn(4), dim=0))  # away from the singular vector: the step matters
        sn.gamma.fill_(1.7)
    w, u0 = lin.parametrizations.weight.original.detach(), sn.u.clone()
    # one power-iteration step: v = W u / |W u|, u' = W^T v / |W^T v|, sigma = v^T W u'
    v = F.normalize(w @ u0, dim=0)
    u1 = F.normalize(w.T @ v, dim=0)
    sigma = v @ w @ u1
    x = torch.randn(3, 4, dtype=torch.float64)
    expected = x @ (1.7 / sigma * w).T + lin.bias
    lin.eval()
    torch.testing.assert_close(lin(x), expected)
    torch.testing.assert_close(sn.u, u0)  # eval: not stored
    lin.train()
    torch.testing.assert_close(lin(x), expected)
    torch.testing.assert_close(sn.u, u1)  # training: the step is stored


def test_power_iteration_converges_to_the_spectral_norm():
    lin = reparametrised(out=16, inp=12, dtype=torch.float32, seed=1)
    sn = lin.parametrizations.weight[0]
    with torch.no_grad():
        sn.u.copy_(F.normalize(torch.randn(12), dim=0))
    w = lin.parametrizations.weight.original.detach()
    exact = torch.linalg.matrix_norm(w, 2)
    first = sn.sigma(w).item()
    for _ in range(60):  # training forwards, one step each
        lin(torch.randn(1, 12))
    assert abs(first - exact) > 1e-3 and sn.sigma(w).item() == pytest.approx(exact.item(), rel=1e-5)


def test_sigma_reparam_gradcheck_float64():
    """At the power iteration's fixed point (u = the top singular vector), the gradient with u, v held constant is
    the exact derivative of gamma W / ||W||_2 (sigma is stationary in u, v there), so gradcheck applies."""
    lin = reparametrised().eval()
    w = lin.parametrizations.weight.original.detach().clone().requires_grad_()
    gamma = lin.parametrizations.weight[0].gamma.detach().clone().requires_grad_()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    names = ("parametrizations.weight.original", "parametrizations.weight.0.gamma")

    def f(x, w, gamma):
        return functional_call(lin, dict(zip(names, (w, gamma))), (x,))
    assert torch.autograd.gradcheck(f, (x, w, gamma))


def test_sigma_reparam_reaches_every_linear_and_the_patch_embedding():
    m = timm_vit("sigma_reparam")
    layers = [x for x in m.modules() if isinstance(x, (nn.Linear, nn.Conv2d))]
    assert layers and all(hasattr(x, "parametrizations") for x in layers)
    assert isinstance(m.patch_embed.proj.parametrizations.weight[0], SpectralReparam)
    assert not any(isinstance(x, nn.LayerNorm) for x in m.modules())
    x = torch.randn(2, 3, 16, 16)
    ema = copy.deepcopy(m)  # timm's ModelEmaV3 deep-copies the model
    torch.testing.assert_close(ema.eval()(x), m.eval()(x))


def test_sigma_reparam_builds_and_runs_on_the_meta_device():
    """The planner and FSDP build models on the meta device (no SVD there, and no autocast to switch off)."""
    with torch.device("meta"):
        m = timm_vit("sigma_reparam")
        assert m(torch.empty(2, 3, 16, 16)).shape == (2, 5)


# Configs, errors, training ----------------------------------------------------------------------------------

def test_kinds_compose_and_refuse_models_they_cannot_apply_to(compose_cfg):
    for kind in NORM_FREE:
        assert type(build_model(compose_cfg([f"norm={kind}"]))).__name__ == "VisionTransformer"
        with pytest.raises(ConfigError, match="whole Transformer"):
            build_norm(kind, 8)  # our own models' norm sites (LLaMA, DiT)
    with pytest.raises(ConfigError, match="pre-norm Transformer blocks"):
        build_model(compose_cfg(["model=convnext_atto", "norm=fixup", "data.image_size=32"]))
    for bad in ("trainer.init=meta", "trainer.activation_checkpointing=full"):
        with pytest.raises(ConfigError, match=f"norm=sigma_reparam with {bad.split('=')[0]}"):
            validate(compose_cfg(["norm=sigma_reparam", "trainer.parallel=fsdp", bad]))


@pytest.mark.parametrize("kind", NORM_FREE)
def test_tiny_vit_trains(tmp_path, kind):
    """200 steps of a 2-block ViT on digits (a few seconds). sigmaReparam is the slowest starter here: its
    classifier's scale is one scalar, gamma, which AdamW moves by about lr per step."""
    s = train(compose([*TINY, f"norm={kind}", "trainer.max_steps=200", "trainer.log_every=1", "optim.lr=1e-2",
                       "trainer.eval_every=200", "trainer.ckpt_every=200"]), tmp_path / kind)
    losses = [e["train/loss"] for e in read_jsonl(tmp_path / kind / "metrics.jsonl") if e["split"] == "train"]
    assert s["status"] == "completed" and len(losses) == 200
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"{kind}: train loss, mean of the first 10 steps {first:.4f}, of the last 10 {last:.4f}")
    assert last < first - 0.3, losses


def test_sigma_reparam_resume_equals_uninterrupted(tmp_path):
    """The power-iteration vectors are buffers: a run resumed from its step-6 checkpoint equals the full run."""
    over = [*TINY, "norm=sigma_reparam", "trainer.ema_decay=0.9", "trainer.keep_checkpoints=2"]
    full = train(compose(over), tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    (tmp_path / "cut/checkpoints/step_00000012.pt").unlink()
    (tmp_path / "cut/summary.json").unlink()
    resumed = train(compose(over), tmp_path / "cut")
    assert resumed["train/loss"] == full["train/loss"] and resumed["val/loss"] == full["val/loss"]
    assert resumed["best/val_ema/top1"] == full["best/val_ema/top1"]
