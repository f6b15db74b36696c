"""norm.alpha_init=auto: each element-wise site's alpha0 = norm.alpha_k / std of its input on the first training
micro-batch (dyt.nn.alpha_auto), set before step 1 of a new run only, and recorded."""
import json

import pytest
import torch

import os
import shutil
import sys

from conftest import ROOT, TINY, compose, run_script
from dyt.analysis import elementwise_norms
from dyt.errors import ConfigError
from dyt.logging import read_jsonl
from dyt.run import train
from dyt.trainer import Trainer
from dyt.validate import validate

VIT = [*TINY, "norm=dyt", "norm.alpha_init=auto"]
LLAMA = ["model=llama_tiny", "data=text_pydoc", "model.dim=32", "model.n_layers=2", "model.n_heads=4",
         "model.n_kv_heads=2", "data.seq_len=16", "data.max_val_tokens=256", "trainer.batch_size=4", "optim=llama",
         "trainer.max_steps=3", "trainer.log_every=3", "trainer.eval_every=3", "trainer.ckpt_every=3",
         "norm=dyt", "norm.alpha_init=auto"]


def first_input_stds(trainer) -> dict[str, float]:
    """Each DyT site's input std on the first training micro-batch of the built model, by hooks of this test."""
    seen = {}
    layers = elementwise_norms(trainer.model)

    def hook(name):
        def record(module, args):  # returns None: the input goes on unchanged
            seen.setdefault(name, args[0].detach().std().item())
        return record
    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in layers]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            trainer.task.loss(trainer.net, next(trainer._batches()))
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("overrides", [[*VIT, "trainer.max_steps=3"], [*VIT, "trainer.max_steps=3", "norm.alpha_k=2",
                                                                      "norm.learn_alpha=false"], LLAMA],
                         ids=["vit", "vit_k2_fixed_alpha", "llama"])
def test_each_site_starts_at_k_over_its_input_std_and_is_recorded(tmp_path, overrides, monkeypatch):
    k = 2.0 if "norm.alpha_k=2" in overrides else 1.0
    # the stds of the model as built (placeholder alpha0), measured by this test's own hooks on the same batch
    monkeypatch.setattr(Trainer, "_auto_alpha0", lambda self: {})
    plain = Trainer(compose(overrides), tmp_path / "plain")
    try:
        stds = first_input_stds(plain)
    finally:
        plain.close()
    monkeypatch.undo()
    trainer = Trainer(compose(overrides), tmp_path / "auto")
    try:
        alphas = {n: m.alpha.item() for n, m in elementwise_norms(trainer.model)}
        assert len(alphas) >= 4 and alphas == pytest.approx({n: k / s for n, s in stds.items()}, rel=1e-5)
        assert all(m.alpha_init == pytest.approx(alphas[n]) for n, m in elementwise_norms(trainer.model))
        if trainer.ema is not None:
            assert {n: m.alpha.item() for n, m in elementwise_norms(trainer.ema.module)} == alphas
        summary = trainer.fit()
    finally:
        trainer.close()
    assert summary["alpha_init"] == "auto" and summary["alpha_k"] == k
    first = next(e for e in read_jsonl(tmp_path / "auto/metrics.jsonl") if e["split"] == "train")
    assert {key.removeprefix("alpha0/"): v for key, v in first.items() if key.startswith("alpha0/")} == \
        pytest.approx(alphas)
    assert json.loads((tmp_path / "auto/summary.json").read_text())["alpha_init"] == "auto"


def test_a_resumed_run_keeps_its_trained_alpha(tmp_path):
    """Stage 2 resumes stage 1's checkpoint: no probe, the alphas are the checkpoint's (trained, not k / std)."""
    train(compose([*VIT, "trainer.max_steps=3", "trainer.ckpt_every=3"]), tmp_path / "r")
    saved = torch.load(next((tmp_path / "r/checkpoints").glob("step_*.pt")), weights_only=False, map_location="cpu")
    state = saved["model"] if "model" in saved else saved
    alphas = {k.removesuffix(".alpha"): v.item() for k, v in state.items() if k.endswith(".alpha")}
    trainer = Trainer(compose([*VIT, "trainer.max_steps=6", "trainer.ckpt_every=3"]), tmp_path / "r")
    try:
        assert trainer.resumed is not None and trainer.alpha0 == {}
        got = {n: m.alpha.item() for n, m in elementwise_norms(trainer.model)}
    finally:
        trainer.close()
    assert got == alphas


@pytest.mark.parametrize("value, message", [("norm.alpha_init=sometimes", 'norm.alpha_init=sometimes: must be a finite '
                                                                         'number > 0 or "auto"'),
                                            ("norm.alpha_init=-1", "norm.alpha_init=-1"),
                                            ("norm.alpha_k=0", "norm.alpha_k=0: must be")])
def test_bad_values_are_refused(value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(compose([*TINY, "norm=dyt", value]))


@pytest.mark.slow
def test_fsdp_meta_init_sets_every_shard(tmp_path):
    """FSDP2 with trainer.init=meta on 2 CPU ranks: the probe runs after materialisation, and every site's alpha
    (sharded) is what was recorded, also in the last block and the root that FSDP leaves gathered after the probe's
    forward. optim.lr=0: training does not move alpha, so the logged alpha must equal alpha0."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    run_script([torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *VIT, "trainer.device=cpu",
                "trainer.parallel=fsdp", "trainer.init=meta", "trainer.max_steps=3", "optim.lr=0",
                f"hydra.run.dir={tmp_path}/r"], cwd=tmp_path)
    first = next(e for e in read_jsonl(tmp_path / "r/metrics.jsonl") if e["split"] == "train")
    alpha0 = {k.removeprefix("alpha0/"): v for k, v in first.items() if k.startswith("alpha0/")}
    alpha = {k.removeprefix("alpha/"): v for k, v in first.items() if k.startswith("alpha/")}
    assert len(alpha0) == 5 and min(alpha0.values()) > 1 and alpha == pytest.approx(alpha0, rel=1e-6)
