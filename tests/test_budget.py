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


@pytest.mark.parametrize("model", ["gpt2_124m", "gpt2_350m", "gpt2_774m"])
def test_token_budget_composes_and_validates_at_each_size(model):
    cfg = compose(["experiment=token_budget", f"model={model}"])
    validate(cfg)
    assert (cfg.model.name, cfg.norm.name, cfg.data.seq_len, cfg.trainer.batch_size) == (model, "dyt", 1024, 480)


@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_mini_token_budget_runs_a_few_steps(tmp_path, norm):
    cfg = compose(["experiment=mini_token_budget", f"norm={norm}", *SMALL, "trainer.max_steps=3",
                   "trainer.eval_every=3", "data.max_val_tokens=2048"])
    validate(cfg)
    summary = train(cfg, tmp_path / norm)
    assert summary["status"] == "completed" and summary["step"] == 3 and summary["norm"] == norm


def fake_run(path, model: dict, norm: str, steps: int, loss: float, params: int, **extra):
    """A finished run's records: config.yaml and summary.json, as the trainer writes them."""
    path.mkdir(parents=True)
    cfg = {"model": model, "norm": {"name": norm}, "optim": {"name": extra.get("optim", "adamw")},
           "trainer": {"batch_size": 16}, "data": {"seq_len": 128}}
    OmegaConf.save(OmegaConf.create(cfg), path / "config.yaml")
    (path / "summary.json").write_text(json.dumps({"status": "completed", "max_steps": steps, "params": params,
                                                   "val/loss": loss}))


def test_the_token_budget_figure_plots_dyt_minus_ln_against_tokens_per_parameter(tmp_path, capsys):
    small, large = {"name": "gpt2_tiny", "n_embd": 64}, {"name": "gpt2_tiny", "n_embd": 128}
    for size, params in ((small, 2048), (large, 8192)):
        for steps, ln, dyt in ((10, 3.0, 2.9), (40, 2.5, 2.6)):
            fake_run(tmp_path / f"{size['n_embd']}-ln-{steps}", size, "layernorm", steps, ln, params)
            fake_run(tmp_path / f"{size['n_embd']}-dyt-{steps}", size, "dyt", steps, dyt, params + 3)
    fake_run(tmp_path / "unpaired", small, "dyt", 80, 2.0, 2051)  # no LayerNorm partner: not plotted
    gaps = studies.token_budget_gaps(studies.finished_runs(tmp_path))
    assert list(gaps) == ["gpt2_tiny (0.00M params)", "gpt2_tiny (0.01M params)"]
    # tokens per parameter: steps x 16 x 128 / the LayerNorm run's parameters
    assert gaps["gpt2_tiny (0.00M params)"] == [(10.0, pytest.approx(-0.1)), (40.0, pytest.approx(0.1))]
    assert gaps["gpt2_tiny (0.01M params)"] == [(2.5, pytest.approx(-0.1)), (10.0, pytest.approx(0.1))]
    assert script("scripts/figures.py").main(["token-budget", str(tmp_path)]) == 0
    assert (tmp_path / "figures/token_budget.png").stat().st_size > 5_000
    assert "| gpt2_tiny (0.01M params) | 2.5 | -0.1000 |" in capsys.readouterr().out


def test_the_budget_figure_refuses_a_sweep_without_pairs(tmp_path, capsys):
    fake_run(tmp_path / "only-dyt", {"name": "gpt2_tiny"}, "dyt", 10, 3.0, 100)
    assert script("scripts/figures.py").main(["token-budget", str(tmp_path)]) == 2
    assert "no (model, budget) cell has both" in capsys.readouterr().err
