"""The token-budget sweep (arXiv 2604.23434): its experiments compose and run, its figure from fake run dirs."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from conftest import compose, script
from dyt.paper import studies
from dyt.run import train
from dyt.validate import validate

SMALL = ["model.n_embd=64", "model.n_layer=2", "model.n_head=2"]


@pytest.mark.parametrize("model", ["gpt2_64m", "gpt2_124m", "gpt2_350m", "gpt2_1300m"])
def test_token_budget_composes_and_validates_at_each_size(model):
    """The study's protocol: 5000 steps of 64 x 512 tokens, its DyT (alpha0 2.0, no bias, no embedding scale)."""
    cfg = compose(["experiment=token_budget", f"model={model}", "data.max_train_tokens=1000000"])
    validate(cfg)
    assert (cfg.model.name, cfg.norm.name, cfg.data.name, cfg.data.seq_len, cfg.trainer.batch_size) == (
        model, "dyt", "wt103", 512, 64)
    assert (cfg.trainer.max_steps, cfg.norm.alpha_init, cfg.model.embed_scale, cfg.model.norm_bias) == (
        5000, 2.0, False, False)


@pytest.mark.parametrize("overrides", [["model=gpt2_64m"], ["model=gpt2_124m"], ["model=gpt2_350m"],
                                       ["model=gpt2_1300m", "optim.lr=1e-4", "trainer.grad_accum=16"]])
def test_each_size_fits_one_gpu_as_its_command_runs_it(overrides):
    """The commands in configs/experiment/token_budget.yaml: one 80 GB GPU, as configured (DDP, no checkpointing)."""
    from dyt.plan import plan
    p = plan(compose(["experiment=token_budget", *overrides]), 1, 1, gpu_mem_gib=80)
    assert next(r for r in p["rows"] if (r["strategy"], r["ac"]) == ("ddp", "none"))["fits"]


def test_the_studys_gpt2_sizes_on_meta():
    """Its Scale 1-4 as its get_num_params counts them (non-embedding): 64M, 124M, 354M, 1310M."""
    import torch

    from dyt.families import build_model
    counts = {}
    for model in ("gpt2_64m", "gpt2_124m", "gpt2_350m", "gpt2_1300m"):
        with torch.device("meta"):
            counts[model] = build_model(compose(["experiment=token_budget", f"model={model}"])).num_params()
    assert [round(n / 1e6) for n in counts.values()] == [64, 124, 354, 1311]


@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_mini_token_budget_runs_a_few_steps(tmp_path, norm):
    cfg = compose(["experiment=mini_token_budget", f"norm={norm}", *SMALL, "trainer.max_steps=3",
                   "data.max_train_tokens=4096", "trainer.eval_every=3", "data.max_val_tokens=2048"])
    validate(cfg)
    summary = train(cfg, tmp_path / norm)
    assert summary["status"] == "completed" and summary["step"] == 3 and summary["norm"] == norm
    assert summary["train_tokens"] == 4096  # the training set's size, capped by data.max_train_tokens


def fake_run(path, model: dict, norm: str, steps: int, loss: float, params: int, **extra):
    """A finished run's records: config.yaml and summary.json, as the trainer writes them."""
    path.mkdir(parents=True)
    cfg = {"model": model, "norm": {"name": norm}, "optim": {"name": extra.get("optim", "adamw")},
           "trainer": {"batch_size": 16}, "data": {"seq_len": 128}}
    OmegaConf.save(OmegaConf.create(cfg), path / "config.yaml")
    summary = {"status": "completed", "max_steps": steps, "params": params, "val/loss": loss}
    if "train_tokens" in extra:
        summary["train_tokens"] = extra["train_tokens"]
    (path / "summary.json").write_text(json.dumps(summary))


def test_the_token_budget_figure_plots_dyt_minus_ln_against_tokens_per_parameter(tmp_path, capsys):
    """The budget is the training set's size (train_tokens) at a fixed number of steps, per model size."""
    small, large = {"name": "gpt2_tiny", "n_embd": 64}, {"name": "gpt2_tiny", "n_embd": 128}
    for size, params in ((small, 2048), (large, 8192)):
        for tokens, ln, dyt in ((20480, 3.0, 2.9), (81920, 2.5, 2.6)):
            for seed, noise in enumerate((-0.05, 0.05)):  # seeds are averaged
                fake_run(tmp_path / f"{size['n_embd']}-ln-{tokens}-{seed}", size, "layernorm", 100, ln + noise, params,
                         train_tokens=tokens)
                fake_run(tmp_path / f"{size['n_embd']}-dyt-{tokens}-{seed}", size, "dyt", 100, dyt, params + 3,
                         train_tokens=tokens)
    fake_run(tmp_path / "unpaired", small, "dyt", 100, 2.0, 2051, train_tokens=4096)  # no LayerNorm partner
    fake_run(tmp_path / "other-steps", small, "layernorm", 50, 2.0, 2048, train_tokens=20480)  # another line's
    gaps = studies.token_budget_gaps(studies.finished_runs(tmp_path))
    assert list(gaps) == ["gpt2_tiny (0.00M params, 100 steps)", "gpt2_tiny (0.01M params, 100 steps)"]
    # tokens per parameter: the training set's tokens / the LayerNorm run's parameters
    assert gaps["gpt2_tiny (0.00M params, 100 steps)"] == [(10.0, pytest.approx(-0.1)), (40.0, pytest.approx(0.1))]
    assert gaps["gpt2_tiny (0.01M params, 100 steps)"] == [(2.5, pytest.approx(-0.1)), (10.0, pytest.approx(0.1))]
    assert script("scripts/figures.py").main(["token-budget", str(tmp_path)]) == 0
    assert (tmp_path / "figures/token_budget.png").stat().st_size > 5_000
    assert "| gpt2_tiny (0.01M params, 100 steps) | 2.5 | -0.1000 |" in capsys.readouterr().out


def test_a_run_without_its_training_set_size_is_named(tmp_path, capsys):
    fake_run(tmp_path / "ln", {"name": "gpt2_tiny"}, "layernorm", 10, 3.0, 100)
    assert script("scripts/figures.py").main(["token-budget", str(tmp_path)]) == 2
    assert "a gpt2_tiny layernorm run has no train_tokens in its summary.json" in capsys.readouterr().err


def test_the_budget_figure_refuses_a_sweep_without_pairs(tmp_path, capsys):
    fake_run(tmp_path / "only-dyt", {"name": "gpt2_tiny"}, "dyt", 10, 3.0, 100, train_tokens=1000)
    assert script("scripts/figures.py").main(["token-budget", str(tmp_path)]) == 2
    assert "no (model, budget) cell has both" in capsys.readouterr().err
