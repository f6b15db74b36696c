"""The DiT model: the DiT paper's sizes, the norm sites, adaLN-Zero's zero-init by norm and flag, meta-device
construction, patch / position / timestep embeddings, and the configs of the paper's Table 3 cells."""
import re

import pytest
import torch
import torch.nn as nn

from conftest import compose
from dyt.errors import ConfigError
from dyt.families import build_model
from dyt.families.dit.model import DiT, timestep_embedding
from dyt.nn.positions import sincos_pos_embed
from dyt.nn import DynamicTanh
from dyt.validate import validate

SMALL = dict(input_size=8, in_channels=3, num_classes=5, hidden=32, depth=2, heads=2, patch_size=2)


def zero_init_layers(model: DiT) -> list[nn.Linear]:
    """What adaLN-Zero zero-initialises (and the paper's DyT runs do not)."""
    return [b.adaLN_modulation[-1] for b in model.blocks] + [model.final_layer.adaLN_modulation[-1],
                                                             model.final_layer.linear]


@pytest.mark.parametrize("size,params", [("s2", 33e6), ("b4", 130e6), ("l4", 458e6), ("xl2", 675e6)])
def test_paper_sizes_build_on_meta(size, params):
    for norm in ("layernorm", "dyt"):
        cfg = compose(["experiment=table3_dit_xl2", f"model=dit_{size}", f"norm={norm}"])
        with torch.device("meta"):
            model = build_model(cfg)
        # DiT counts its fixed position embedding (a frozen parameter there, a buffer here) in its total
        n = sum(p.numel() for p in model.parameters()) + model.pos_embed.numel()
        assert n == pytest.approx(params, rel=0.005)
        if size == "xl2":  # DiT's train.py logs "DiT Parameters: 675,129,632" for DiT-XL/2; DyT adds 57 alphas
            assert n == 675_129_632 + (57 if norm == "dyt" else 0)
        assert model.x_embedder.num_patches == (32 // int(size[-1])) ** 2 and model.out_channels == 8


def test_norm_sites_have_no_affine():
    for norm in ("layernorm", "rmsnorm", "dyt"):
        cfg = compose(["experiment=dit_pixel", f"norm={norm}", "norm.alpha_init=0.7" if norm == "dyt" else "seed=0"])
        model = build_model(cfg)
        sites = [m for b in model.blocks for m in (b.norm1, b.norm2)] + [model.final_layer.norm_final]
        assert len(sites) == 2 * cfg.model.depth + 1
        for m in sites:
            if norm == "dyt":  # the paper's DiT DyT: tanh(alpha x), no weight, no bias
                assert isinstance(m, DynamicTanh) and m.weight is None and m.bias is None
                assert m.alpha.item() == pytest.approx(0.7)
            else:
                assert type(m) is {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}[norm]
                assert not m.elementwise_affine and m.eps == 1e-6
        assert not any(isinstance(m, (nn.LayerNorm, nn.RMSNorm, DynamicTanh)) for m in model.modules()
                       if not any(m is s for s in sites))


@pytest.mark.parametrize("norm,flag,zero", [("layernorm", "null", True), ("rmsnorm", "null", True),
                                            ("dyt", "null", False), ("dyt", "true", True),
                                            ("layernorm", "false", False)])
def test_adaln_zero_init_follows_the_norm_unless_forced(norm, flag, zero):
    cfg = compose(["experiment=dit_pixel", f"norm={norm}", f"model.adaln_zero_init={flag}"])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.adaln_zero_init is zero
    for layer in zero_init_layers(model):
        assert torch.count_nonzero(layer.bias) == 0  # biases start at zero either way (DiT's basic init)
        if zero:
            assert torch.count_nonzero(layer.weight) == 0
        else:  # DiT's default init of a linear: xavier uniform
            bound = (6 / sum(layer.weight.shape)) ** 0.5
            assert layer.weight.abs().max() <= bound and layer.weight.std() > bound / 3
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 1, 2, 10])
    out = model(x, t, y)
    assert out.shape == (4, 2, 8, 8)  # learned sigma: epsilon and v
    assert (out.abs().max().item() == 0) is zero  # adaLN-Zero: every block starts as the identity, the output at 0


def test_zero_init_flag_changes_nothing_else():
    """'Off' removes exactly the zero-init: with the same seed every other parameter is identical."""
    models = {}
    for flag in (True, False):
        torch.manual_seed(0)
        m = DiT(**SMALL, adaln_zero_init=flag)
        models[flag] = dict(m.named_parameters())
    removed = {f"blocks.{i}.adaLN_modulation.1.weight" for i in range(2)} | {
        "final_layer.adaLN_modulation.1.weight", "final_layer.linear.weight"}
    for name, p in models[True].items():
        same = torch.equal(p, models[False][name])
        assert same is (name not in removed), name


def test_meta_construction_then_init_weights():
    torch.manual_seed(0)
    eager = DiT(**SMALL, norm="dyt", alpha_init=0.3, adaln_zero_init=False)
    with torch.device("meta"):
        meta = DiT(**SMALL, norm="dyt", alpha_init=0.3, adaln_zero_init=False)
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device="cpu")
    for m in (eager, meta):
        torch.manual_seed(1)
        m.init_weights()
    a, b = eager.state_dict(), meta.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta.blocks[0].norm1.alpha.item() == pytest.approx(0.3)


def test_unpatchify_places_each_token_at_its_patch():
    model = DiT(**{**SMALL, "input_size": 4, "in_channels": 1}, learn_sigma=False)  # 2x2 tokens of 2x2 pixels
    tokens = torch.arange(4 * 4, dtype=torch.float32).reshape(1, 4, 4)  # token n holds 4n .. 4n+3, (pi, pj) order
    img = model.unpatchify(tokens)[0, 0]
    for n in range(4):
        h, w = divmod(n, 2)
        for pi in range(2):
            for pj in range(2):
                assert img[h * 2 + pi, w * 2 + pj] == 4 * n + 2 * pi + pj


def test_position_and_timestep_embeddings():
    pe = sincos_pos_embed(8, 3)  # 9 positions; channels 0-3 encode the column, 4-7 the row
    col, row = 2, 1
    p = pe[row * 3 + col]
    assert p[:2] == pytest.approx([torch.sin(torch.tensor(col * 1.0)).item(), torch.sin(torch.tensor(col * 0.01)).item()])
    assert p[2:4] == pytest.approx([torch.cos(torch.tensor(col * 1.0)).item(), torch.cos(torch.tensor(col * 0.01)).item()])
    assert p[4] == pytest.approx(torch.sin(torch.tensor(float(row))).item())
    e = timestep_embedding(torch.tensor([3.0]), 4)  # freqs 1, 1e-2; cos half first (DiT)
    assert e[0].tolist() == pytest.approx([torch.cos(torch.tensor(3.0)).item(), torch.cos(torch.tensor(0.03)).item(),
                                           torch.sin(torch.tensor(3.0)).item(), torch.sin(torch.tensor(0.03)).item()])


def test_table3_cells_differ_only_by_norm():
    from omegaconf import OmegaConf
    for cell, lr in (("b4", 4e-4), ("l4", 4e-4), ("xl2", 4e-4)):
        ln, dyt = (OmegaConf.to_container(compose([f"experiment=table3_dit_{cell}", f"norm={n}"]), resolve=False)
                   for n in ("layernorm", "dyt"))
        assert {k for k in ln if ln[k] != dyt[k]} == {"norm"}
        assert ln["optim"]["lr"] == lr and ln["optim"]["weight_decay"] == 0 and ln["optim"]["min_lr_ratio"] == 1.0
        assert ln["trainer"]["batch_size"] == 256 and ln["trainer"]["max_steps"] == 400_000
        assert ln["trainer"]["ema_decay"] == 0.9999 and ln["model"]["diffusion"]["sample_steps"] == 250
        assert ln["model"]["diffusion"]["cfg_scale"] == 1.0 and ln["table"] == "table3"
        assert ln["data"]["name"] == "imagenet256_latents" and ln["model"]["name"] == f"dit_{cell}"


@pytest.mark.parametrize("args,message", [
    (["data=text_pydoc"], "dit_tiny (family dit) needs an image dataset"),
    (["model.diffusion.sample_steps=2000"], "model.diffusion.sample_steps=2000 > model.diffusion.steps=1000"),
    (["model.patch_size=3"], "data.image_size=8 is not a multiple of the DiT patch size 3"),
    (["model.hidden=30", "model.heads=3"], "model.hidden=30, model.heads=3: the width must be a multiple"),
    (["model.class_dropout=1.0"], "model.class_dropout=1: must be a finite number in [0, 1)"),
])
def test_bad_dit_configs_are_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose(["experiment=dit_pixel", *args]))


def test_sample_grids_are_readable_and_labelled(tmp_path):
    """8x8 samples are drawn 8x larger (nearest: each pixel a flat 8x8 block), rows of one class get 'class k' at
    their left, mixed rows a label above each image (fid_samples.png)."""
    from PIL import Image

    from dyt.images import image_grid
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = image_grid(images, per_row=3, pad=2)
    assert plain.shape == (2 * 66 + 2, 3 * 66 + 2, 3)  # 64-pixel cells
    cell = plain[2:66, 2:66, 0].astype(int)
    expected = (images[0, 0] * 255).round().int().repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()
    assert (cell == expected).all()
    by_row = image_grid(images, per_row=3, labels=[0, 0, 0, 7, 7, 7], pad=2)
    assert by_row.shape[1] > plain.shape[1] and by_row.shape[0] == plain.shape[0]  # a label column at the left
    assert (by_row[:, : by_row.shape[1] - plain.shape[1]] < 128).any()  # text drawn in it
    assert (by_row[:, by_row.shape[1] - plain.shape[1]:] == plain).all()  # the images themselves untouched
    mixed = image_grid(images, per_row=3, labels=[0, 1, 2, 3, 4, 5], pad=2)
    assert mixed.shape[1] == plain.shape[1] and mixed.shape[0] > plain.shape[0]  # a label strip above each row
    Image.fromarray(mixed).save(tmp_path / "mixed.png")
