"""The MAE family: sizes equal to the official models, forward and loss equal to a plain re-computation and to
facebookresearch/mae's own models_mae.py (from the local mirror), masks drawn per sample like augmentation,
every LayerNorm of encoder and decoder converted, the encoder handed on as a timm ViT, exact resume after
kill -9 with data workers, and the reconstruction grid."""
import os
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import ROOT, compose, killed_and_resumed, run_script
from dyt.data.sampler import SeededSamples
from dyt.distributed import DistInfo
from dyt.errors import ConfigError
from dyt.families import build_model, build_task, get_family
from dyt.logging import read_jsonl
from dyt.nn import DynamicTanh
from dyt.plan import layer_activation_bytes
from dyt.run import train
from dyt.validate import validate

MAE = ["model=mae_pico", "data=digits", "model.hidden=32", "model.depth=2", "model.decoder_hidden=16",
       "model.decoder_depth=1", "trainer.batch_size=32", "trainer.max_steps=12", "optim.warmup_steps=2",
       "trainer.eval_every=6", "trainer.ckpt_every=6", "trainer.log_every=3", "model.vis_images=4"]
# 3-channel 32x32 images in 8x8 patches: what the official patchify (hard-coded to 3 channels) accepts
RGB = ["model=mae_pico", "data=cifar10", "model.patch_size=8", "model.hidden=64", "model.heads=4",
       "model.decoder_hidden=32", "model.decoder_heads=4", "model.depth=2", "model.decoder_depth=2"]
MIRROR = Path("/work/.mirror/facebookresearch+mae/repo")
DYT_MIRROR = Path("/work/.mirror/jiachenzhu+DyT/repo")


def official_count(embed, depth, patch=16, img=224, chans=3, dec=512, dec_depth=8, mlp_ratio=4):
    """Parameters of models_mae.MaskedAutoencoderViT from its definitions (fixed positions included)."""
    n = (img // patch) ** 2

    def block(d):  # norm1, qkv (bias), proj, norm2, fc1, fc2
        f = d * mlp_ratio
        return 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * f + f) + (f * d + d)

    encoder = (chans * patch * patch * embed + embed) + embed + (n + 1) * embed + depth * block(embed) + 2 * embed
    decoder = ((embed * dec + dec) + dec + (n + 1) * dec + dec_depth * block(dec) + 2 * dec
               + (dec * patch * patch * chans + patch * patch * chans))
    return encoder + decoder


def meta_model(*overrides):
    with torch.device("meta"):
        return build_model(compose(list(overrides)))


def git_show(repo: Path, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("size,embed,depth", [("b", 768, 12), ("l", 1024, 24)])
def test_sizes_equal_the_official_models(size, embed, depth):
    model = meta_model(f"model=mae_vit_{size}", "norm=layernorm", "data=imagenet")
    n = sum(p.numel() for p in model.parameters())
    assert n == official_count(embed, depth)  # B: 111,907,840 (252,160 of them fixed positions); L: 329,541,888
    fixed = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert fixed == 197 * (embed + 512)  # the two sin-cos tables, never trained
    dyt = meta_model(f"model=mae_vit_{size}", "norm=dyt", "data=imagenet")
    assert sum(p.numel() for p in dyt.parameters()) == n + 2 * depth + 1 + 2 * 8 + 1  # one alpha per norm


# --- the forward and the loss -------------------------------------------------------------------------------
def plain_mae(model, images, noise):
    """MAE's forward and loss for one image at a time, written out: patches cut by slicing, the visible ones
    picked by sorting the noise in Python, the decoder's sequence assembled position by position."""
    p = model.patch_size
    g = images.shape[-1] // p
    n_keep = int(g * g * (1 - model.mask_ratio))
    w = model.patch_embed.proj.weight.reshape(model.patch_embed.proj.out_channels, -1)
    losses, masked_count, preds = 0.0, 0, []
    for img, z in zip(images, noise):
        cells = [img[:, i * p:(i + 1) * p, j * p:(j + 1) * p] for i in range(g) for j in range(g)]
        keep = sorted(range(g * g), key=lambda k: float(z[k]))[:n_keep]
        tokens = [model.cls_token[0, 0] + model.pos_embed[0, 0]]
        tokens += [cells[k].reshape(-1) @ w.T + model.patch_embed.proj.bias + model.pos_embed[0, 1 + k] for k in keep]
        x = torch.stack(tokens)[None]
        for blk in model.blocks:
            x = blk(x)
        y = model.decoder_embed(model.norm(x))[0]
        seq = [y[0]] + [y[1 + keep.index(k)] if k in keep else model.mask_token[0, 0] for k in range(g * g)]
        x = (torch.stack(seq) + model.decoder_pos_embed[0])[None]
        for blk in model.decoder_blocks:
            x = blk(x)
        pred = model.decoder_pred(model.decoder_norm(x))[0, 1:]
        for k in range(g * g):
            t = cells[k].permute(1, 2, 0).reshape(-1)  # (row, column, channel), as the decoder predicts it
            if model.norm_pix_loss:
                t = (t - t.mean()) / torch.sqrt(t.var() + 1e-6)
            if k not in keep:
                losses += ((pred[k] - t) ** 2).mean()
                masked_count += 1
        preds.append(pred)
    return losses / masked_count, torch.stack(preds)


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_forward_and_loss_equal_a_plain_recomputation(norm, norm_pix):
    torch.manual_seed(0)
    model = build_model(compose([*RGB, f"norm={norm}", f"model.norm_pix_loss={norm_pix}"])).eval()
    images, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        loss, pred, mask = model(images, noise)
        ref_loss, ref_pred = plain_mae(model, images, noise)
    assert mask.sum(1).tolist() == [12, 12, 12]  # 16 patches, 4 visible
    assert torch.allclose(pred, ref_pred, atol=1e-5) and torch.allclose(loss, ref_loss, atol=1e-6)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """facebookresearch/mae's models_mae.py with the DyT repository's compatibility patch (timm 1.0's Block takes
    no qk_scale; NumPy has no np.float), imported from a temporary folder."""
    if not MIRROR.is_dir():
        pytest.skip(f"no facebookresearch/mae mirror at {MIRROR} (fetch github:facebookresearch/mae)")
    root = tmp_path_factory.mktemp("official")
    (root / "util").mkdir()
    (root / "util/__init__.py").write_text("")
    (root / "models_mae.py").write_text(git_show(MIRROR, "models_mae.py").replace("qk_scale=None, ", ""))
    (root / "util/pos_embed.py").write_text(git_show(MIRROR, "util/pos_embed.py")
                                            .replace("dtype=np.float32", "dtype=float").replace("np.float)", "float)"))
    if DYT_MIRROR.is_dir():
        (root / "dynamic_tanh.py").write_text(git_show(DYT_MIRROR, "other_tasks/MAE/dynamic_tanh.py"))
    sys.path.insert(0, str(root))
    try:
        import models_mae
        dynamic_tanh = __import__("dynamic_tanh") if DYT_MIRROR.is_dir() else None
    finally:
        sys.path.remove(str(root))
        for name in ("models_mae", "util", "util.pos_embed", "dynamic_tanh"):
            sys.modules.pop(name, None)
    return models_mae, dynamic_tanh


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_equals_the_official_models_mae(official, norm, norm_pix):
    """The official model holding our weights, on the same images and the same noise (it draws torch.rand(N, L)
    first thing in its forward: re-seeding gives it our noise): equal outputs, masks and losses."""
    models_mae, dynamic_tanh = official
    if norm == "dyt" and dynamic_tanh is None:
        pytest.skip(f"no jiachenzhu/DyT mirror at {DYT_MIRROR} (its convert_ln_to_dyt)")
    torch.manual_seed(0)
    ours = build_model(compose([*RGB, f"norm={norm}", f"model.norm_pix_loss={norm_pix}"])).eval()
    theirs = models_mae.MaskedAutoencoderViT(
        img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
        decoder_depth=2, decoder_num_heads=4, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        norm_pix_loss=norm_pix)
    assert torch.equal(ours.pos_embed, theirs.pos_embed) and torch.equal(ours.decoder_pos_embed, theirs.decoder_pos_embed)
    if norm == "dyt":
        theirs = dynamic_tanh.convert_ln_to_dyt(theirs)
    theirs.load_state_dict(ours.state_dict())  # strict: the same names
    theirs.eval()
    with torch.no_grad():
        # alpha moved off its init so that a DyT without alpha would differ
        for m in ours.modules():
            if isinstance(m, DynamicTanh):
                m.alpha.fill_(0.7)
        theirs.load_state_dict(ours.state_dict())
        images = torch.randn(4, 3, 32, 32)
        torch.manual_seed(123)
        noise = torch.rand(4, 16)
        loss, pred, mask = ours(images, noise)
        torch.manual_seed(123)
        ref_loss, ref_pred, ref_mask = theirs(images, mask_ratio=0.75)
    diff = (pred - ref_pred).abs().max().item()
    print(f"max |pred - official pred| ({norm}, norm_pix_loss={norm_pix}): {diff:.3g}; "
          f"|loss diff| {abs(loss - ref_loss).item():.3g}")
    assert torch.equal(mask, ref_mask)
    assert diff < 1e-5 and torch.allclose(loss, ref_loss, rtol=1e-6, atol=0)


def test_official_init_shapes_the_weights():
    """xavier-uniform linears with zero bias, the patch conv's weight viewed as a linear, N(0, 0.02) tokens."""
    torch.manual_seed(0)
    model = build_model(compose(["model=mae_vit_b", "norm=dyt", "data=imagenet", "model.depth=1",
                                 "model.decoder_depth=1"]))
    qkv = model.blocks[0].attn.qkv
    bound = (6 / (qkv.in_features + qkv.out_features)) ** 0.5
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.99 * bound and not qkv.bias.any()
    w = model.patch_embed.proj.weight.flatten(1)
    assert w.abs().max() <= (6 / sum(w.shape)) ** 0.5
    assert 0.018 < model.cls_token.std() < 0.022 and 0.018 < model.mask_token.std() < 0.022
    assert all(m.alpha.item() == 0.5 for m in model.modules() if isinstance(m, DynamicTanh))



def test_init_weights_fills_sharded_parameters():
    """trainer.init=meta calls init_weights() on FSDP2 shards (DTensors): the fixed sin-cos tables, Parameters as
    in the official model, land in them (a plain copy_ of a tensor into a DTensor is refused). One gloo rank."""
    from torch.distributed.fsdp import fully_shard
    model = build_model(compose(MAE))
    expected = [model.pos_embed.detach().clone(), model.decoder_pos_embed.detach().clone()]
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        fully_shard(model)
        with torch.no_grad():
            model.pos_embed.zero_()
            model.decoder_pos_embed.zero_()
        model.init_weights()
        got = [model.pos_embed.full_tensor(), model.decoder_pos_embed.full_tensor()]
    finally:
        torch.distributed.destroy_process_group()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))

# --- norms ---------------------------------------------------------------------------------------------------
def test_dyt_replaces_every_layernorm_of_encoder_and_decoder():
    ln = build_model(compose([*MAE, "norm=layernorm"]))
    sites = [n for n, m in ln.named_modules() if isinstance(m, nn.LayerNorm)]
    assert len(sites) == 2 * 2 + 1 + 2 * 1 + 1  # two per block, encoder and decoder, and each final norm
    assert {"norm", "decoder_norm", "decoder_blocks.0.norm1"} <= set(sites)
    dyt = build_model(compose([*MAE, "norm=dyt", "norm.alpha_init=0.8"]))
    assert not any(isinstance(m, nn.LayerNorm) for m in dyt.modules())
    converted = {n: m for n, m in dyt.named_modules() if isinstance(m, DynamicTanh)}
    assert sorted(converted) == sorted(sites) and all(m.alpha.item() == pytest.approx(0.8) for m in converted.values())


@pytest.mark.parametrize("norm", sorted(p.stem for p in (ROOT / "configs/norm").glob("*.yaml") if p.stem != "batchnorm"))
def test_every_norm_kind_trains_a_step(norm):
    task = build_task(compose([*MAE, f"norm={norm}"]), DistInfo())
    model = task.build_model()
    loss = task.loss(model, next(iter(task.train_loader(8, 0, 0))))
    loss.backward()
    # the prediction layer's parameters (sigma_reparam's weight is a parametrization: its grad is on `original`)
    assert torch.isfinite(loss) and sum(p.grad.abs().sum() for p in model.decoder_pred.parameters()
                                        if p.grad is not None) > 0


# --- masks drawn per sample -----------------------------------------------------------------------------------
def test_masks_are_a_pure_function_of_seed_epoch_and_index():
    cfg = compose(MAE)
    single = build_task(cfg, DistInfo())
    ranks = [build_task(cfg, DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    b = next(iter(single.train_loader(8, 0, 0)))
    r0, r1 = (next(iter(t.train_loader(4, 0, 0))) for t in ranks)
    for k in range(3):  # rank r holds the single process's samples r, r+2, ...: with the same masks
        assert torch.equal(b[k][0::2], r0[k]) and torch.equal(b[k][1::2], r1[k])
    train, val = single.datasets
    assert torch.equal(SeededSamples(train, 0, 3)[5][2], SeededSamples(train, 0, 3)[5][2])
    assert not torch.equal(SeededSamples(train, 0, 3)[5][2], SeededSamples(train, 0, 4)[5][2])  # a new epoch
    assert not torch.equal(SeededSamples(train, 0, 3)[5][2], SeededSamples(train, 1, 3)[5][2])  # another seed
    assert not torch.equal(SeededSamples(train, 0, 3)[5][2], SeededSamples(train, 0, 3)[6][2])  # another image
    assert torch.equal(val[3][2], ranks[1].datasets[1][3][2]) and not torch.equal(val[3][2], val[4][2])
    # the mask itself: 16 patches of 2x2 in an 8x8 digit, 4 visible, a different set per image
    model = single.build_model()
    keep = [set(model.masking(val[i][2][None])[0][0].tolist()) for i in range(6)]
    assert all(len(k) == 4 for k in keep) and len({frozenset(k) for k in keep}) == 6


# --- the trainer: runs, resume, the grid ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("mae") / "run"
    return d, train(compose([*MAE, "norm=dyt"]), d)


def test_run_records_and_reconstruction_grid(mae_run):
    from PIL import Image

    d, s = mae_run
    assert s["status"] == "completed" and s["metric"] == "val/loss" and s["best/val/loss"] <= s["val/loss"]
    events = read_jsonl(d / "metrics.jsonl")
    assert {"train/loss", "alpha/decoder_norm", "alpha/blocks.0.norm1"} <= set(events[0])
    assert [e["step"] for e in events if e["split"] == "val"] == [6, 12]
    grids = sorted((d / "samples").glob("reconstruction_step*.png"))
    assert [g.name for g in grids] == ["reconstruction_step00000006.png", "reconstruction_step00000012.png"]
    # 3 rows (original, masked, reconstruction) x 4 images of 8x8 drawn 8x larger, 2-pixel padding, each row named
    # at its left ("masked (75% hidden)": 19 characters of ~6 px + 8)
    grid = np.asarray(Image.open(grids[-1]))
    assert grid.shape == (3 * 66 + 2, 8 + 6 * 19 + 4 * 66 + 2, 3)
    assert all((grid[r * 66:(r + 1) * 66, :122] < 128).any() for r in range(3))  # text in each row's margin


def test_reconstruction_keeps_the_visible_patches():
    """Rows of the grid: the masked row is grey exactly where the mask hides, the reconstruction equals the
    original on the visible patches."""
    task = build_task(compose(MAE), DistInfo())
    model = task.build_model().eval()
    x, _, noise = (torch.stack([task.datasets[1][i][k] for i in range(3)]) for k in (0, 1, 2))
    masked, recon = task.reconstruct(model, x, noise)
    _, mask = model.masking(noise)
    hidden = mask.reshape(3, 1, 4, 4).repeat_interleave(2, -1).repeat_interleave(2, -2).bool()
    assert torch.allclose(task.to_images(recon)[~hidden], task.to_images(x)[~hidden])
    assert torch.allclose(task.to_images(masked)[hidden], torch.tensor(0.5))
    assert not torch.allclose(task.to_images(recon)[hidden], task.to_images(x)[hidden])


def test_two_fsdp_ranks_with_workers_match_one_process(mae_run, tmp_path):
    """2 ranks (gloo, FSDP over the encoder and decoder blocks, data workers) see the masks of one process: every
    logged loss agrees to float reduction order (~1e-7 measured), and so do the reconstruction grids."""
    d, _ = mae_run
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    run_script([torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *MAE, "norm=dyt",
                "trainer.parallel=fsdp", "data.num_workers=2", f"hydra.run.dir={tmp_path}/fsdp"], cwd=tmp_path)
    losses = [[(e["step"], e.get("train/loss", e.get("val/loss"))) for e in read_jsonl(p / "metrics.jsonl")]
              for p in (d, tmp_path / "fsdp")]
    assert [s for s, _ in losses[1]] == [s for s, _ in losses[0]]
    assert [v for _, v in losses[1]] == pytest.approx([v for _, v in losses[0]], rel=1e-5)
    from PIL import Image
    a, b = (np.asarray(Image.open(p / "samples/reconstruction_step00000012.png")).astype(int) for p in (d, tmp_path / "fsdp"))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1  # a rounding of the 8-bit pixels at most

def test_kill_and_resume_with_workers_equals_uninterrupted(tmp_path):
    overrides = [*MAE, "norm=dyt", "trainer.max_steps=60", "trainer.ckpt_every=5", "trainer.eval_every=30",
                 "data.num_workers=2", "data.augment.shift=1"]
    a, b = killed_and_resumed(tmp_path, overrides, timeout=240)
    assert a["status"] == b["status"] == "completed"
    assert a["train/loss"] == b["train/loss"] and a["val/loss"] == b["val/loss"]
    wa, wb = (torch.load(d / "checkpoints/step_00000060.pt", weights_only=True)["model"]
              for d in (tmp_path / "killed", tmp_path / "straight"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --- handing the encoder on, planning, checks -----------------------------------------------------------------
def test_backbone_is_a_timm_vit_state_dict_with_the_same_features():
    import timm

    torch.manual_seed(0)
    model = build_model(compose([*RGB, "norm=layernorm"])).eval()
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                            depth=2, num_heads=4, num_classes=10).eval()
    state = get_family("mae").backbone(model.state_dict())
    missing, unexpected = vit.load_state_dict(state, strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected
    assert torch.equal(vit.pos_embed, model.pos_embed)
    # with nothing masked, in order, the encoder is the ViT's forward_features
    model.mask_ratio = 0.0
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.forward_encoder(images, model.masking(torch.arange(16.0).expand(2, -1))[0])
        assert torch.allclose(ours, vit.forward_features(images), atol=1e-5)


def test_planner_shape_counts_both_stacks():
    """The one-stack Shape holds at least the activations of the encoder (visible tokens) and the decoder (all
    tokens), and less than one more token's worth."""
    cfg = compose(["experiment=table2_mae_vit_b", "norm=dyt"])
    model = meta_model("experiment=table2_mae_vit_b", "norm=dyt")
    shape = get_family("mae").shape(model, cfg)
    assert shape.layers == 20 and len(get_family("mae").blocks(model)) == 20
    two = sum(n * layer_activation_bytes(s, 1, h, 12, 4 * h) for n, s, h in ((12, 50, 768), (8, 197, 512)))
    one = shape.layers * layer_activation_bytes(shape.seq, 1, shape.hidden, shape.heads, shape.ffn)
    assert two <= one < two + shape.layers * layer_activation_bytes(1, 1, 768, 12, 4 * 768)


def test_table2_recipe_is_the_official_pretraining():
    ln, dy = (compose(["experiment=table2_mae_vit_b", f"norm={n}"]) for n in ("layernorm", "dyt"))
    for cfg in (ln, dy):
        assert cfg.trainer.epochs == 800 and cfg.optim.warmup_epochs == 40 and cfg.trainer.batch_size == 4096
        assert cfg.optim.lr == pytest.approx(1.5e-4 * 4096 / 256) and list(cfg.optim.betas) == [0.9, 0.95]
        assert cfg.optim.weight_decay == 0.05 and cfg.optim.min_lr_ratio == 0 and cfg.trainer.ema_decay is None
        assert cfg.model.mask_ratio == 0.75 and cfg.model.norm_pix_loss and list(cfg.model.crop_scale) == [0.2, 1.0]
        assert cfg.data.name == "imagenet" and not cfg.data.augment.mixup and not cfg.data.augment.randaugment
        validate(cfg)
    assert compose(["experiment=table2_mae_vit_l", "norm=dyt"]).model.hidden == 1024


@pytest.mark.parametrize("args,message", [
    (["data=text_pydoc"], "mae_pico (family mae) needs an image dataset"),
    (["model.patch_size=3"], "data.image_size=8 is not a multiple of the MAE patch size 3"),
    (["model.mask_ratio=0.95"], "model.mask_ratio=0.95 hides every one of the 16 patches"),
    (["model.decoder_hidden=30", "model.decoder_heads=3"], "model.decoder_hidden=30: must be a multiple of its heads"),
    (["data.augment.mixup=0.8"], "data.augment.mixup: MAE pre-training augments with a random-resized crop"),
])
def test_bad_mae_configs_are_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose([*MAE, *args]))
