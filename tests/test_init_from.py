"""Fine-tuning from another run (dyt/init_from.py): what is loaded, new and dropped; the released and pretrain
fine-tuning norms; pos_embed resampled as MAE's interpolate_pos_embed; the source recorded; a resumed run never
reads its source again; one-line errors. Sources here are a timm ViT run and a registered family whose `backbone`
renames keys (the MAE / DINO families' own tests live with them)."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import TINY, compose
from dyt.checkpoint import load_checkpoint
from dyt.errors import ConfigError
from dyt.families.timm.model import build_vit
from dyt.family import Family, register_family
from dyt.init_from import resolve_norm
from dyt.nn import DynamicTanh
from dyt.run import train
from dyt.rundir import RunDir
from dyt.tasks.classification import ClassificationTask
from dyt.trainer import Trainer

SHORT = [*TINY, "trainer.max_steps=4"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A DyT ViT trained 4 steps on digits (8x8 images, 4x4 patch grid): the run every test fine-tunes from."""
    run_dir = tmp_path_factory.mktemp("src") / "run"
    train(compose([*SHORT, "norm=dyt"]), run_dir)
    return run_dir


def source_weights(run_dir):
    return load_checkpoint(RunDir(run_dir).checkpoints()[-1], keys=("model",))["model"]


def built(overrides, run_dir):
    """The fine-tuning run's Trainer (its model built and loaded), its norm resolved as train() does."""
    cfg = compose([*SHORT, *overrides])
    resolve_norm(cfg, run_dir)
    trainer = Trainer(cfg, run_dir)
    trainer.close()
    return trainer


def test_pretrain_norm_loads_every_encoder_key_and_starts_a_new_head(source, tmp_path, capsys):
    trainer = built([f"trainer.init_from={source}", "finetune_norm=pretrain", "data.num_classes=12"], tmp_path / "ft")
    want, got = source_weights(source), trainer.model.state_dict()
    assert trainer.cfg.norm.name == "dyt" and isinstance(trainer.model.fc_norm, DynamicTanh)
    for k, v in got.items():
        if not k.startswith("head."):
            assert torch.equal(v, want[k]), k
    head = trainer.model.head  # 12 classes, not the source's 10: new, initialised as MAE's fine-tuning does
    assert head.weight.shape == (12, 32) and 1e-5 < head.weight.std() < 3e-5 and not head.bias.any()  # std 2e-5
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[dyt] init_from"))
    assert "new: head.weight, head.bias;" in line and line.endswith("dropped: head.weight, head.bias")


def test_released_fine_tunes_a_dyt_encoder_as_layernorm(source, tmp_path, capsys):
    """The released code: LayerNorms take DyT's weight / bias, every alpha is dropped."""
    trainer = built([f"trainer.init_from={source}", "finetune_norm=released"], tmp_path / "ft")
    want, model = source_weights(source), trainer.model
    assert trainer.cfg.norm.name == "layernorm"
    assert not any(isinstance(m, DynamicTanh) for m in model.modules())
    assert isinstance(model.blocks[1].norm2, nn.LayerNorm)
    assert torch.equal(model.blocks[1].norm2.weight, want["blocks.1.norm2.weight"])
    assert torch.equal(model.head.weight, want["head.weight"])  # same classes: the head is the source's
    out = capsys.readouterr().out
    assert "fine-tuning with norm=layernorm (the pre-training run used dyt" in out
    assert ("new: -; dropped: blocks.*.norm1.alpha (x2), blocks.*.norm2.alpha (x2), fc_norm.alpha" in out)


def test_pos_embed_is_resampled_bicubic_as_mae_does(source, tmp_path):
    trainer = built([f"trainer.init_from={source}", "data.image_size=16"], tmp_path / "ft")  # 8x8 grid, not 4x4
    old = source_weights(source)["pos_embed"]  # (1, 1 + 16, 32)
    grid = old[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    new = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    assert torch.allclose(trainer.model.pos_embed, torch.cat([old[:, :1], new], dim=1), atol=1e-6)


def test_the_run_records_its_source_and_resumes_without_it(source, tmp_path, capsys):
    """summary.json names the source (run, checkpoint, step, sha256, norm); a resumed fine-tuning run reads its own
    checkpoint, never the source again (here the source is gone by then)."""
    copy = tmp_path / "src"
    shutil.copytree(source, copy)
    ft = [f"trainer.init_from={copy}", "finetune_norm=pretrain"]
    first = train(compose([*SHORT, *ft]), tmp_path / "ft")
    ckpt = RunDir(copy).checkpoints()[-1]
    record = first["init_from"]
    assert record["run_dir"] == str(copy.resolve()) and record["checkpoint"] == str(ckpt.resolve())
    assert record["step"] == 4 and record["norm"] == "dyt" and record["family"] == "vit" and record["model"] == "vit_pico"
    assert record["sha256"] == (ckpt.parent / f"{ckpt.name}.sha256").read_text().split()[0]
    shutil.rmtree(copy)
    capsys.readouterr()
    resumed = train(compose([*TINY, "trainer.max_steps=8", *ft]), tmp_path / "ft")
    assert resumed["status"] == "completed" and resumed["step"] == 8 and resumed["init_from"] == record
    assert "[dyt] init_from" not in capsys.readouterr().out


class Wrapped(nn.Module):
    """A pre-training model holding a ViT as `encoder` beside a part fine-tuning never sees."""

    def __init__(self, model_cfg, norm_cfg, data_cfg):
        super().__init__()
        self.encoder, self.decoder = build_vit(model_cfg, norm_cfg, data_cfg), nn.Linear(3, 3)

    def forward(self, x):
        return self.encoder(x)


WRAPPED = Family("wrapped_vit", Wrapped, ClassificationTask, ("images",),
                 backbone=lambda state: {k.removeprefix("encoder."): v for k, v in state.items()
                                         if k.startswith("encoder.")})
NO_BACKBONE = Family("no_backbone_vit", Wrapped, ClassificationTask, ("images",))


def test_a_family_backbone_maps_its_keys_into_the_new_model(tmp_path):
    register_family(WRAPPED)
    train(compose([*SHORT, "norm=layernorm", "model.family=wrapped_vit"]), tmp_path / "src")
    trainer = built([f"trainer.init_from={tmp_path / 'src'}", "norm=layernorm"], tmp_path / "ft")
    want = source_weights(tmp_path / "src")
    assert "decoder.weight" in want
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, want[f"encoder.{k}"]), k


def _with_config(src, tmp_path, **changes):
    """A copy of run `src` whose config.yaml has `changes` (dotted keys)."""
    dst = tmp_path / "changed"
    shutil.copytree(src, dst)
    cfg = OmegaConf.load(RunDir(dst).config)
    for k, v in changes.items():
        OmegaConf.update(cfg, k, v)
    OmegaConf.save(cfg, RunDir(dst).config)
    return dst


def test_one_line_errors(source, tmp_path):
    def error(overrides, run_dir=tmp_path / "ft"):
        with pytest.raises(ConfigError) as e:
            built(overrides, run_dir)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "no such run directory or checkpoint" in error([f"trainer.init_from={tmp_path / 'nowhere'}"])
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(RunDir(source).config, RunDir(empty).config)
    assert "the run has no checkpoint in" in error([f"trainer.init_from={empty}"])
    register_family(NO_BACKBONE)
    plain = _with_config(source, tmp_path, **{"model.family": "no_backbone_vit"})
    assert "its family declares no backbone" in error([f"trainer.init_from={plain}"])
    assert ("cls_token is (1, 1, 32) there, (1, 1, 48) here" in
            error([f"trainer.init_from={source}", "model.kwargs.embed_dim=48"]))
    assert "set trainer.init_from=" in error(["finetune_norm=released"])
    assert "unknown finetune_norm 'other'" in error([f"trainer.init_from={source}", "finetune_norm=other"])


def test_an_mae_run_seeds_a_vit_released_and_with_its_own_norm(tmp_path, capsys):
    """End to end from an MAE family run (its Family.backbone: the encoder only): the encoder's weights, as released
    into LayerNorms (DyT's gamma / beta kept, alpha dropped) or with DyT itself (alpha kept)."""
    from test_mae import MAE
    src = tmp_path / "mae"
    train(compose([*MAE, "norm=dyt", "trainer.max_steps=4", "trainer.eval_every=4", "trainer.ckpt_every=4"]), src)
    enc = {k: v for k, v in source_weights(src).items() if not k.startswith(("decoder", "mask_token"))}
    for how in ("released", "pretrain"):
        trainer = built([f"trainer.init_from={src}", f"finetune_norm={how}", "model.kwargs.depth=2",
                         "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2"], tmp_path / how)
        got = trainer.model.state_dict()
        line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[dyt] init_from"))
        dropped = line.split("dropped:")[1]
        assert ("norm1.alpha" in dropped) == (how == "released") and "norm.weight" in dropped, line
        for k, v in enc.items():
            if k.startswith("norm."):  # the encoder's final norm: the fine-tuning pools into a new fc_norm
                assert k not in got, k
            elif k.endswith(".alpha"):  # DyT's scalar: only a DyT fine-tuning has somewhere to put it
                assert (k in got and torch.equal(got[k], v)) == (how == "pretrain"), k
            else:
                assert torch.equal(got[k], v), k
        assert trainer.cfg.norm.name == ("layernorm" if how == "released" else "dyt")
        assert trainer.init_record["family"] == "mae" and trainer.init_record["norm"] == "dyt"
