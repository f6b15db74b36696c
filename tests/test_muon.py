"""optim=muon: which tensors Muon trains, one schedule for both optimizers, exact checkpoint round trips."""
from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn as nn

from conftest import compose, killed_and_resumed, script
from dyt.errors import ConfigError
from dyt.families import build_model
from dyt.optim import build_optimizer, build_scheduler, scheduled_lr

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")

LLAMA = ["model=llama_tiny", "data=text_pydoc", "model.dim=32", "model.n_layers=2", "model.n_heads=4",
         "model.n_kv_heads=2", "norm=dyt", "optim=muon"]
GPT2 = ["model=gpt2_tiny", "data=text_pydoc", "model.n_embd=32", "model.n_layer=2", "model.n_head=2",
        "norm=dyt", "optim=muon"]


def _names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("overrides, matrices, rest", [
    (LLAMA, {"wq", "wk", "wv", "wo", "w1", "w2", "w3"}, {"tok_embeddings.weight", "output.weight", "embed_scale"}),
    (GPT2, {"c_attn", "c_proj", "c_fc"}, {"transformer.wte.weight", "transformer.wpe.weight", "embed_scale"}),
])
def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(overrides, matrices, rest):
    model = build_model(compose(overrides))
    opt = build_optimizer(model, compose(overrides).optim)
    muon = _names(model, (p for g in opt.muon.param_groups for p in g["params"]))
    adamw = _names(model, (p for g in opt.adamw.param_groups for p in g["params"]))
    assert not muon & adamw and muon | adamw == {n for n, _ in model.named_parameters()}
    blocks_linear = {f"{m}.weight" for m, mod in model.named_modules()
                     if isinstance(mod, nn.Linear) and any(s.isdigit() for s in m.split("."))}
    assert muon == blocks_linear and {n.split(".")[-2] for n in muon} == matrices
    assert rest <= adamw  # embeddings and the head (GPT-2's is tied to wte)
    assert all(p.ndim == 1 for n, p in model.named_parameters() if n in adamw - rest)  # norms, alpha, biases
    assert opt.param_groups == opt.muon.param_groups + opt.adamw.param_groups  # the scheduler's view: all groups


def test_one_schedule_drives_muon_and_adamw_at_their_own_peak_lr():
    cfg = compose([*LLAMA, "optim.lr=1e-3", "optim.muon_lr=0.05", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"])
    opt = build_optimizer(build_model(cfg), cfg.optim)
    sched = build_scheduler(opt, cfg.optim, total_steps=100, warmup_steps=10, verbose=False)
    for step, adamw_lr in [(5, 5e-4), (10, 1e-3), (100, 1e-4)]:
        sched.step_update(step)
        assert opt.adamw.param_groups[0]["lr"] == pytest.approx(adamw_lr)
        assert opt.muon.param_groups[0]["lr"] == pytest.approx(adamw_lr * 50)
        assert scheduled_lr(opt) == pytest.approx(adamw_lr)


def _train(model, opt, steps, seed):
    torch.manual_seed(seed)
    for _ in range(steps):
        tokens = torch.randint(0, 256, (2, 16))
        out = model(tokens)
        logits = out if torch.is_tensor(out) else out[0]
        logits.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_a_reloaded_state_dict_continues_both_optimizers_exactly():
    cfg = compose(LLAMA)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.optim)
    _train(model, opt, 3, seed=1)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())  # as on disk
    _train(model, opt, 2, seed=2)
    other = build_model(cfg)
    other.load_state_dict(saved_model)
    reloaded = build_optimizer(other, cfg.optim)
    reloaded.load_state_dict(saved_opt)
    _train(other, reloaded, 2, seed=2)
    for (n, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), n


def test_a_torch_without_muon_is_refused_with_its_version(monkeypatch):
    cfg = compose(LLAMA)
    model = build_model(cfg)
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(ConfigError, match=re.escape(f"(torch >= 2.9); this torch is {torch.__version__}")):
        build_optimizer(model, cfg.optim)


def test_kill_and_resume_under_muon_equals_uninterrupted(tmp_path):
    overrides = [*LLAMA, "trainer.max_steps=24", "trainer.ckpt_every=4", "trainer.eval_every=12",
                 "trainer.batch_size=4", "data.seq_len=32", "optim.warmup_steps=4"]
    a, b = killed_and_resumed(tmp_path, overrides, step=8, timeout=240)
    assert a["status"] == b["status"] == "completed"
    assert a["train/loss"] == b["train/loss"] and a["val/loss"] == b["val/loss"]


@pytest.mark.parametrize("optim", ["adamw", "muon"])
def test_the_norm_optim_grid_composes_with_either_optimizer(optim):
    from dyt.validate import validate
    cfg = compose(["experiment=norm_optim_grid", f"optim={optim}", "norm=derf"])
    validate(cfg)
    assert (cfg.model.name, cfg.optim.name, cfg.trainer.max_steps, cfg.model.alpha_attn) == ("gpt2_774m", optim, 1000, None)


@pytest.mark.parametrize("norm", ["rmsnorm", "derf"])
def test_mini_norm_optim_runs_a_few_muon_steps(tmp_path, norm):
    from dyt.run import train
    cfg = compose(["experiment=mini_norm_optim", "optim=muon", f"norm={norm}", "model.n_embd=32", "model.n_layer=2",
                   "model.n_head=2", "trainer.max_steps=3", "trainer.eval_every=3", "data.max_val_tokens=2048"])
    summary = train(cfg, tmp_path / norm)
    assert summary["status"] == "completed" and summary["step"] == 3


def test_the_norm_optim_figure_plots_each_norms_gap_to_rmsnorm_per_optimizer(tmp_path, capsys):
    from test_budget import fake_run
    from dyt.paper import studies
    losses = {("adamw", "rmsnorm"): 3.0, ("adamw", "derf"): 3.3, ("adamw", "dyt"): 3.1,
              ("muon", "rmsnorm"): 2.8, ("muon", "derf"): 3.7, ("muon", "dyt"): 2.9}
    for (optim, norm), loss in losses.items():
        fake_run(tmp_path / f"{norm}-{optim}", {"name": "gpt2_tiny"}, norm, 10, loss, 100, optim=optim)
    fake_run(tmp_path / "layernorm-sgd", {"name": "gpt2_tiny"}, "layernorm", 10, 1.0, 100, optim="sgd")  # no RMSNorm
    gaps = studies.norm_optim_gaps(studies.finished_runs(tmp_path))
    assert gaps == {"adamw": {"derf": pytest.approx(0.3), "dyt": pytest.approx(0.1)},
                    "muon": {"derf": pytest.approx(0.9), "dyt": pytest.approx(0.1)}}
    assert script("scripts/figures.py").main(["norm-optim", str(tmp_path)]) == 0
    assert (tmp_path / "figures/norm_optim.png").stat().st_size > 5_000
    assert "| derf | +0.3000 | +0.9000 |" in capsys.readouterr().out


def test_muon_with_sharded_weights_is_refused():
    """Newton-Schulz needs each matrix whole; an FSDP / HSDP shard is a slice: one clear line, before anything runs."""
    from dyt.validate import validate
    for strategy in ("fsdp", "hsdp"):
        with pytest.raises(ConfigError, match=rf"optim=muon with trainer.parallel={strategy}: Muon needs each weight "):
            validate(compose(["model=llama_tiny", "data=text_pydoc", "optim=muon", f"trainer.parallel={strategy}"]))
