"""The follow-up studies' comparisons, from a sweep directory of finished runs (their summary.json and config.yaml):
the norm x optimizer grid (arXiv 2604.01563: each norm's val loss minus RMSNorm's under the same optimizer) and the
token-budget sweep (arXiv 2604.23434: DyT's val loss minus LayerNorm's at the same model, steps and training-set
size, against the training set's tokens per parameter = train_tokens / the LayerNorm run's parameters, embeddings
included). Losses of several seeds are averaged. `scripts/figures.py norm-optim | token-budget <sweep>` draws them.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean

from dyt.errors import ConfigError
from dyt.rundir import RunDir, read_config, read_summary

METRIC = "val/loss"


def finished_runs(sweep: Path) -> list[tuple[dict, dict]]:
    """(config, summary) of every completed run under `sweep` that has a final val/loss."""
    runs = []
    for run in RunDir(sweep).find_runs():
        summary, cfg = read_summary(run.path), read_config(run.path)
        if cfg and summary and summary.get("status") == "completed" and METRIC in summary:
            runs.append((cfg, summary))
    if not runs:
        raise ConfigError(f"no completed run with a {METRIC} under {sweep}")
    return runs


def norm_optim_gaps(runs) -> dict[str, dict[str, float]]:
    """{optimizer: {norm: mean val/loss - RMSNorm's mean val/loss under that optimizer}}."""
    losses = defaultdict(list)
    for cfg, summary in runs:
        losses[cfg["optim"]["name"], cfg["norm"]["name"]].append(summary[METRIC])
    gaps = defaultdict(dict)
    for (optim, norm), values in sorted(losses.items()):
        if norm != "rmsnorm" and (optim, "rmsnorm") in losses:
            gaps[optim][norm] = mean(values) - mean(losses[optim, "rmsnorm"])
    if not gaps:
        raise ConfigError("no optimizer has both an RMSNorm run and another norm's run to compare")
    return dict(gaps)


def token_budget_gaps(runs) -> dict[str, list[tuple[float, float]]]:
    """{model size and steps: [(training tokens per parameter, DyT mean val/loss - LayerNorm's), ...]}. As arXiv
    2604.23434 sweeps it, the budget is the training set's size (summary.json's ``train_tokens``, set by
    data.max_train_tokens) at a fixed number of steps, so small budgets are seen for many epochs."""
    cells = defaultdict(lambda: defaultdict(list))  # (size, steps, tokens) -> norm -> [(loss, params)]
    for cfg, summary in runs:
        if "train_tokens" not in summary:
            raise ConfigError(f"a {cfg['model']['name']} {cfg['norm']['name']} run has no train_tokens in its "
                              "summary.json (a streamed dataset has no size; run it map-style)")
        size = json.dumps(cfg["model"], sort_keys=True)
        cells[size, summary["max_steps"], summary["train_tokens"]][cfg["norm"]["name"]].append(
            (summary[METRIC], summary["params"]))
    lines = defaultdict(list)
    for (size, steps, tokens), by_norm in cells.items():
        if "layernorm" in by_norm and "dyt" in by_norm:
            ln_params = by_norm["layernorm"][0][1]
            label = f"{json.loads(size)['name']} ({ln_params / 1e6:.2f}M params, {steps} steps)"
            gap = mean(v for v, _ in by_norm["dyt"]) - mean(v for v, _ in by_norm["layernorm"])
            lines[label].append((tokens / ln_params, gap))
    if not lines:
        raise ConfigError("no (model, budget) cell has both a LayerNorm and a DyT run")
    return {label: sorted(points) for label, points in sorted(lines.items())}
