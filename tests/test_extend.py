"""A new model family without touching dyt/: a toy MLP classifier registered from this file trains, checkpoints,
resumes, evaluates (with an evaluation of its own in eval.py) and is validated and planned like a built-in one."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn as nn

from conftest import ROOT, compose
from dyt.errors import ConfigError
from dyt.family import Evaluation, Family, get_family, indexed, register_family
from dyt.nn import build_norm
from dyt.ranges import COUNT, ranged
from dyt.eval import load_run, run_config
from dyt.run import train
from dyt.tasks.classification import ClassificationTask


@dataclass
class ToyConfig:
    """``model=toy_mlp``: the family's schema is also its only config (stored by register_family)."""
    name: str = "toy_mlp"
    family: str = "toy"
    hidden: int = ranged(32, COUNT)
    depth: int = ranged(2, COUNT)


class Block(nn.Module):
    def __init__(self, dim: int, norm):
        super().__init__()
        self.norm, self.fc = build_norm(norm.name, dim, alpha_init=norm.alpha_init), nn.Linear(dim, dim)

    def forward(self, x):
        return x + torch.relu(self.fc(self.norm(x)))


class ToyMLP(nn.Module):
    def __init__(self, model_cfg, norm_cfg, data_cfg):
        super().__init__()
        self.stem = nn.Linear(data_cfg.in_chans * data_cfg.image_size ** 2, model_cfg.hidden)
        self.blocks = nn.ModuleList(Block(model_cfg.hidden, norm_cfg) for _ in range(model_cfg.depth))
        self.head = nn.Linear(model_cfg.hidden, data_cfg.num_classes)

    def forward(self, x):
        x = self.stem(x.flatten(1))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def toy_check(cfg) -> list[str]:
    return ["model.hidden=7: the toy family wants an even width"] if cfg.model.hidden % 2 else []


def _weight_norm_args(group) -> None:
    group.add_argument("--weight-norm", action="store_true", help="the L2 norm of the toy model's weights")


def _weight_norm(run_dir, args, overrides, checkpoint) -> dict:
    with load_run(run_dir, overrides, checkpoint, weights=("model",)) as run:  # what a family's evaluation starts from
        state = run.state["model"]
    return {"toy/weight_norm": float(torch.sqrt(sum((v.float() ** 2).sum() for v in state.values())))}


TOY = Family("toy", ToyMLP, ClassificationTask, data_kinds=("images",), schemas={"toy_mlp": ToyConfig},
             blocks=lambda m: indexed(m.blocks), check=toy_check,
             evals=(Evaluation("weight-norm", _weight_norm_args, lambda a: a.weight_norm, _weight_norm),))
ARGS = ["model=toy_mlp", "trainer.max_steps=6", "trainer.eval_every=3", "trainer.ckpt_every=3",
        "trainer.log_every=3", "optim.warmup_steps=1"]


@pytest.fixture(scope="module", autouse=True)
def toy_family():
    register_family(TOY)
    yield


def _eval_script():
    spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_family_registered_outside_dyt_trains_resumes_and_evaluates(tmp_path, capsys):
    assert get_family("toy") is TOY
    d = tmp_path / "toy"
    s = train(compose(ARGS), d)
    assert s["status"] == "completed" and s["model"] == "toy_mlp" and "val/top1" in s
    assert any(k.startswith("alpha/blocks.") for k in json.loads((d / "metrics.jsonl").read_text().splitlines()[0]))
    # resumed from its checkpoint: a run killed after step 6 (no summary) goes on to step 8
    (d / "summary.json").unlink()
    s = train(run_config(d, ["trainer.max_steps=8"]), d)
    assert "resumed from" in capsys.readouterr().out and s["step"] == 8
    # eval.py: the task's metrics and the family's own evaluation; another family's evaluation is refused
    eval_script = _eval_script()
    assert eval_script.main([str(d), "--weight-norm"]) == 0
    out = json.loads((d / "eval.json").read_text())
    assert out["step"] == 8 and out["val/top1"] == pytest.approx(s["val/top1"]) and out["toy/weight_norm"] > 0
    assert eval_script.main([str(d), "--fid", "10"]) == 2
    assert "error: fid applies to dit runs; " in capsys.readouterr().err


def test_a_registered_family_is_validated_and_planned():
    from dyt.plan import plan
    from dyt.validate import validate
    validate(compose(ARGS))
    with pytest.raises(ConfigError, match=r"^model.hidden=0: must be an integer >= 1$"):
        validate(compose([*ARGS, "model.hidden=0"]))  # its range, declared beside its field
    with pytest.raises(ConfigError, match=r"^model.hidden=7: the toy family wants an even width$"):
        validate(compose([*ARGS, "model.hidden=7"]))  # its own check
    with pytest.raises(ConfigError, match=r"\(family toy\) needs an image dataset .* is a text dataset"):
        validate(compose([*ARGS, "data=text_pydoc"]))  # its data kinds
    p = plan(compose(ARGS), nodes=2, gpus_per_node=8)
    # FSDP units from the family's blocks: a block (32x32 + 32, DyT alpha + weight + bias: 1121) is smaller than the
    # root (the stem 64 x 32 + 32 and the head 32 x 10 + 10: 2410), the largest unit
    assert p["family"] == "toy" and p["largest_unit"] == 2410 and p["params"] == 2410 + 2 * 1121
    assert any("no activation model" in n for n in p["notes"])
    assert dataclasses.is_dataclass(ToyConfig)


@dataclass
class ToySignalData:
    """A data kind of a family's own (``data=toy_signal``, stored by register_family): audio, DNA, ... come so."""
    KIND: ClassVar[str] = "signal"
    WORDS: ClassVar[tuple[str, str]] = ("a toy signal dataset", "data=toy_signal")
    name: str = "toy_signal"
    length: int = ranged(16, COUNT)


def test_a_family_brings_its_own_data_kind():
    from dyt.validate import data_kind, validate
    register_family(dataclasses.replace(TOY, name="toy_signal_family", data_kinds=("signal",),
                                        data_schemas={"toy_signal": ToySignalData}))
    cfg = compose([*ARGS, "data=toy_signal"])
    assert data_kind(cfg.data) == "signal" and cfg.data.length == 16
    with pytest.raises(ConfigError, match=r"^data.length=0: must be an integer >= 1$"):
        validate(compose([*ARGS, "data=toy_signal", "model.family=toy_signal_family", "data.length=0"]))
    # the pairing error speaks of the new kind in its own words, both ways round
    with pytest.raises(ConfigError, match=r"\(family toy\) needs an image dataset .* is a toy signal dataset"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"\(family toy_signal_family\) needs a toy signal dataset \(data=toy_signal\)"):
        validate(compose([*ARGS, "model.family=toy_signal_family"]))
    with pytest.raises(TypeError, match="needs the class attributes KIND and WORDS"):
        register_family(dataclasses.replace(TOY, name="bad", data_schemas={"bad": ToyConfig}))


def test_the_familys_blocks_are_what_activation_checkpointing_wraps():
    from dyt.distributed import DistInfo
    from dyt.parallel import wrap_model
    cfg = compose([*ARGS, "trainer.activation_checkpointing=full"])
    build = lambda: ToyMLP(cfg.model, cfg.norm, cfg.data)  # noqa: E731
    par = wrap_model(build, DistInfo(), cfg.trainer, blocks=TOY.blocks)
    assert [type(b).__name__ for b in par.model.blocks] == ["CheckpointWrapper"] * 2
    with pytest.raises(ConfigError, match=r"^ToyMLP: its family declares no repeated blocks \(Family.blocks\)"):
        wrap_model(build, DistInfo(), cfg.trainer, blocks=None)
