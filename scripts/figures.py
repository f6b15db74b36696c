"""The paper's analysis figures, from a run directory, and the follow-up studies' figures, from a sweep directory.

    python scripts/figures.py scurves runs/vit_pico-layernorm-digits-s0    # Figs. 2-4: norm input vs output
    python scripts/figures.py scurves <run> --layers all --points 5000 --batch 64 --weights raw
    python scripts/figures.py alpha-std runs/vit_pico-dyt-digits-s0        # Fig. 8: alpha tracks 1/std
    python scripts/figures.py functions                                    # Fig. 7: the squashing functions
    python scripts/figures.py sites runs/vit_pico-dyt-digits-s0            # saturation per site over training
    python scripts/figures.py norm-optim multirun/mini_norm_optim          # arXiv 2604.01563: gap to RMSNorm
    python scripts/figures.py token-budget multirun/mini_token_budget      # arXiv 2604.23434: DyT - LN vs TPP

scurves: one validation batch through the run's latest checkpoint (its EMA weights when kept, unless --weights
raw); each panel is one norm layer, x = its input, y = its output before the learnable affine (as the paper
plots), colour = channel. alpha-std: from metrics.jsonl, each DyT layer's alpha and the 1/std of its input over
training, and the final alpha vs 1/std of every layer. Figures go to <run>/figures/<name>.png unless --out
(functions: figures/functions.png). sites: from metrics.jsonl, a heatmap of each norm site's saturated share
(dyt.analysis.SATURATION) by layer x logged step, and each site's final alpha (DyT) or 1 (other norms: their
saturation uses alpha = 1/std) vs 1/std of its input. norm-optim: each norm's final val/loss minus RMSNorm's under
the same optimizer, bars grouped by norm (experiment=norm_optim_grid / mini_norm_optim). token-budget: DyT's final
val/loss minus LayerNorm's against tokens per parameter, one line per model size (experiment=token_budget /
mini_token_budget); both print their table (markdown) and write <sweep>/figures/<name>.png unless --out.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import dyt.families  # noqa: E402,F401 - registers the built-in families (load_run asks the registry)
from dyt.analysis import SATURATION, record_norm_io  # noqa: E402
from dyt.errors import ConfigError  # noqa: E402
from dyt.eval import load_run, run_checkpoint  # noqa: E402
from dyt.logging import read_jsonl  # noqa: E402
from dyt.nn import DynamicSquash  # noqa: E402
from dyt.paper import studies  # noqa: E402
from dyt.precision import amp_dtype, autocast  # noqa: E402
from dyt.rundir import RunDir  # noqa: E402

TRAIN_DYT = "python train.py norm=dyt <the run's other overrides>"


def run_dir_arg(path: str) -> Path:
    run = Path(path.removeprefix("run_dir="))
    if not run.is_dir():
        raise ConfigError(f"run directory {run} does not exist (a run's directory is made by: python train.py ...)")
    return run


def pick(names: list[str], layers: str) -> list[str]:
    """`layers` names ("all", or N spread evenly over depth, first and last included)."""
    if layers == "all":
        return names
    if not layers.isdigit() or int(layers) < 1:
        raise ConfigError(f"--layers {layers}: give a positive count or 'all'")
    n = int(layers)
    if n >= len(names):
        return names
    if n == 1:
        return names[-1:]  # the deepest: its S-curve is the clearest (Fig. 2)
    return [names[i] for i in sorted({round(k * (len(names) - 1) / (n - 1)) for k in range(n)})]


def grid(plt, panels: int, cols: int, size: tuple[float, float]):
    cols = min(cols, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    return fig, list(axes.flat[:panels])


def save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


# --- scurves ----------------------------------------------------------------------------------------------
def load_run_model(run: Path, weights: str, device_name: str):
    """(task, model in eval mode, device, checkpoint step, "ema" | "raw") of a run's latest checkpoint."""
    try:
        path = run_checkpoint(run)
    except ConfigError as e:
        raise ConfigError(f"{e}; train (or resume) the run to write one: python train.py <the run's overrides>") from e
    loaded = load_run(run, checkpoint=str(path), device=device_name)
    key = "ema" if weights == "auto" and "ema" in loaded.weights else "model"
    return loaded.task, loaded.model(key), loaded.dist.device, loaded.step, "ema" if key == "ema" else "raw"


def scurves(args) -> Path:
    import matplotlib.pyplot as plt


    run = run_dir_arg(args.run_dir)
    task, model, device, step, weights = load_run_model(run, args.weights, args.device)
    batch = task.to_device(next(iter(task.val_loader(args.batch))), device)
    dtype = amp_dtype(task.cfg.trainer.precision, device)

    def forward():
        with autocast(device, dtype):
            task.eval_step(model, batch)  # every task's forward on a val batch (DiT: at the batch's val timesteps)
    points = record_norm_io(model, forward, max_points=args.points, seed=args.seed)
    if not points:
        raise ConfigError(f"{run}: the model has no normalization layer (norm={task.cfg.norm.name}); "
                          "train one with norm=layernorm or norm=dyt")
    names = pick(list(points), args.layers)
    fig, axes = grid(plt, len(names), 4, (3.2, 3.0))
    for ax, name in zip(axes, names):
        p = points[name]
        ax.scatter(p.input, p.output, c=p.channel, cmap="turbo", s=1, alpha=0.5, linewidths=0, rasterized=True)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("input")
        ax.set_ylabel("output (before affine)")
    fig.suptitle(f"{run.name}: norm input vs output, step {step}, {weights} weights, colour = channel", fontsize=10)
    return save(fig, Path(args.out) if args.out else run / "figures" / "scurves.png")


# --- alpha-std --------------------------------------------------------------------------------------------
def alpha_std_series(run: Path) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """Per DyT layer (module order): (steps, alpha, 1/std) over the train events that log both."""
    events = [e for e in read_jsonl(RunDir(run).metrics) if e.get("split") == "train"]
    if not events:
        raise ConfigError(f"{run} has no training events in metrics.jsonl; train it: python train.py ...")
    layers = list(dict.fromkeys(k[len("alpha/"):] for e in events for k in e if k.startswith("alpha/")))
    if not layers:
        raise ConfigError(f"{run}/metrics.jsonl has no alpha/ metrics: the run has no DyT layers; train one: "
                          f"{TRAIN_DYT}")
    series = {}
    for name in layers:
        pts = [(e["step"], e[f"alpha/{name}"], 1 / e[f"std/{name}"]) for e in events
               if isinstance(e.get(f"alpha/{name}"), float) and isinstance(e.get(f"std/{name}"), float)
               and e[f"std/{name}"] > 0]
        if pts:
            series[name] = tuple(map(list, zip(*pts)))
    if not series:
        raise ConfigError(f"{run}/metrics.jsonl has alpha/ but no std/ metrics (logged by the trainer since std "
                          f"logging exists, never under trainer.compile); train it again: {TRAIN_DYT}")
    return series


def alpha_std(args) -> Path:
    import matplotlib.pyplot as plt

    run = run_dir_arg(args.run_dir)
    series = alpha_std_series(run)
    names = pick(list(series), args.layers)
    fig, axes = grid(plt, len(names) + 1, 5, (3.4, 3.0))
    for ax, name in zip(axes, names):
        steps, alpha, inv_std = series[name]
        ax.plot(steps, alpha, color="C0", label="alpha")
        ax.set_ylabel("alpha", color="C0")
        twin = ax.twinx()  # two scales: the paper's point is that the curves move together, not their values
        twin.plot(steps, inv_std, color="C1", linestyle="--", label="1/std")
        twin.set_ylabel("1/std of input", color="C1")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    final_alpha = np.array([series[n][1][-1] for n in series])
    final_inv = np.array([series[n][2][-1] for n in series])
    r = np.corrcoef(final_alpha, final_inv)[0, 1] if len(series) > 1 else float("nan")
    ax = axes[-1]
    ax.scatter(final_inv, final_alpha, c=np.arange(len(series)), cmap="viridis", s=18)
    ax.set_xlabel("1/std of input (final)")
    ax.set_ylabel("alpha (final)")
    ax.set_title(f"{len(series)} layers, colour = depth: r = {r:.3f}", fontsize=9)
    fig.suptitle(f"{run.name}: alpha vs 1/std of each DyT layer's input", fontsize=10)
    return save(fig, Path(args.out) if args.out else run / "figures" / "alpha_std.png")


# --- sites ------------------------------------------------------------------------------------------------
def site_series(run: Path) -> tuple[list[int], list[str], np.ndarray, dict[str, dict]]:
    """(logged steps, sites in module order, saturation [site, step] (nan where not logged), the last train
    event with sat/ metrics) from metrics.jsonl."""
    events = [e for e in read_jsonl(RunDir(run).metrics) if e.get("split") == "train" and
              any(k.startswith("sat/") for k in e)]
    if not events:
        raise ConfigError(f"{run}/metrics.jsonl has no sat/ metrics (logged on log steps since the site diagnostics "
                          "exist, never under trainer.compile); train it again: python train.py <the run's overrides>")
    sites = list(dict.fromkeys(k[len("sat/"):] for e in events for k in e if k.startswith("sat/")))
    sat = np.array([[e.get(f"sat/{n}", np.nan) for e in events] for n in sites], dtype=float)
    return [e["step"] for e in events], sites, sat, events[-1]


def sites(args) -> Path:
    import matplotlib.pyplot as plt

    run = run_dir_arg(args.run_dir)
    steps, names, sat, last = site_series(run)
    fig, (heat, scatter) = plt.subplots(1, 2, figsize=(13, max(3.5, 0.22 * len(names) + 1.5)),
                                        gridspec_kw={"width_ratios": [2, 1]})
    im = heat.imshow(sat, aspect="auto", cmap="magma", vmin=0, vmax=max(float(np.nanmax(sat)), 1e-3),
                     interpolation="nearest")
    heat.set_yticks(range(len(names)), names, fontsize=6)
    ticks = sorted({round(k * (len(steps) - 1) / 5) for k in range(6)}) if len(steps) > 1 else [0]
    heat.set_xticks(ticks, [str(steps[i]) for i in ticks])
    heat.set_xlabel("step")
    heat.set_title(f"saturated share (|alpha x| > {SATURATION:g}) per site", fontsize=9)
    fig.colorbar(im, ax=heat, fraction=0.04)
    inv_std = np.array([1 / last[f"std/{n}"] if last.get(f"std/{n}") else np.nan for n in names])
    alpha = np.array([last.get(f"alpha/{n}", np.nan) for n in names])
    if np.isnan(alpha).all():  # LayerNorm / RMSNorm / BatchNorm sites: their saturation uses alpha = 1/std
        scatter.scatter(np.arange(len(names)), inv_std, c=np.arange(len(names)), cmap="viridis", s=18)
        scatter.set_xlabel("site (module order)")
        scatter.set_ylabel("1/std of input = the effective alpha")
    else:
        scatter.scatter(inv_std, alpha, c=np.arange(len(names)), cmap="viridis", s=18)
        lim = [0, float(np.nanmax([inv_std.max(), np.nanmax(alpha)])) * 1.05]
        scatter.plot(lim, lim, color="grey", linewidth=0.5, label="alpha = 1/std")
        scatter.legend(fontsize=7)
        scatter.set_xlabel("1/std of input")
        scatter.set_ylabel("alpha")
    scatter.set_title(f"step {last['step']}, colour = depth; mean saturation {float(np.nanmean(sat[:, -1])):.3f}",
                      fontsize=9)
    fig.suptitle(f"{run.name}: norm-site saturation", fontsize=10)
    return save(fig, Path(args.out) if args.out else run / "figures" / "sites.png")


# --- functions --------------------------------------------------------------------------------------------
def functions(args) -> Path:
    import matplotlib.pyplot as plt

    x = torch.linspace(-6, 6, 601)
    funcs = DynamicSquash.FUNCTIONS  # the layers' own definitions: tanh, hardtanh, sigmoid, identity
    fig, axes = grid(plt, len(funcs) + 1, 5, (3.0, 2.8))
    for name, f in funcs.items():
        axes[0].plot(x, f(x), label=name)
    axes[0].set_title("f(x) (Fig. 7)", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax, (name, f) in zip(axes[1:], funcs.items()):
        for alpha in args.alphas:
            ax.plot(x, f(alpha * x), label=f"alpha={alpha:g}")
        ax.set_title(f"{name}(alpha x)", fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_ylim(-1.6, 1.6)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.set_xlabel("x")
    return save(fig, Path(args.out) if args.out else
                ROOT / "docs" / "reproduction" / "functions.png")  # the copy the docs show


# --- norm-optim, token-budget: the follow-up studies' sweeps (dyt.paper.studies) -----------------------------------
def study_out(args, name: str) -> Path:
    return Path(args.out) if args.out else Path(args.sweep) / "figures" / f"{name}.png"


def norm_optim(args) -> Path:
    gaps = studies.norm_optim_gaps(studies.finished_runs(Path(args.sweep)))
    norms = sorted({n for by_norm in gaps.values() for n in by_norm})
    print("| norm | " + " | ".join(f"{o}: {studies.METRIC} - RMSNorm" for o in gaps) + " |")
    print("|---|" + "---|" * len(gaps))
    for n in norms:
        print(f"| {n} | " + " | ".join(f"{gaps[o][n]:+.4f}" if n in gaps[o] else "-" for o in gaps) + " |")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(norms), 3.6))
    width = 0.8 / len(gaps)
    for i, (optim, by_norm) in enumerate(gaps.items()):
        xs = [j + (i - (len(gaps) - 1) / 2) * width for j, n in enumerate(norms) if n in by_norm]
        ax.bar(xs, [by_norm[n] for n in norms if n in by_norm], width, label=optim)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(norms)), norms)
    ax.set_ylabel(f"{studies.METRIC} gap to RMSNorm (nats)")
    ax.set_title("norm x optimizer: gap to RMSNorm per optimizer")
    ax.legend()
    return save(fig, study_out(args, "norm_optim"))


def token_budget(args) -> Path:
    lines = studies.token_budget_gaps(studies.finished_runs(Path(args.sweep)))
    print(f"| model | tokens / parameter | DyT - LayerNorm {studies.METRIC} |\n|---|---|---|")
    for label, points in lines.items():
        for tpp, gap in points:
            print(f"| {label} | {tpp:.3g} | {gap:+.4f} |")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, points in lines.items():
        ax.plot(*zip(*points), marker="o", label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens per parameter")
    ax.set_ylabel(f"{studies.METRIC}: DyT - LayerNorm (nats)")
    ax.set_title("token budget: below 0 DyT is better")
    ax.legend(fontsize=8)
    return save(fig, study_out(args, "token_budget"))


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (nan, inf and 0 draw nothing meaningful)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("scurves", help="norm layers' input vs output on one val batch (Figs. 2-4)")
    s.add_argument("run_dir")
    s.add_argument("--layers", default="4", help="how many layers, spread over depth, or 'all' (default 4)")
    s.add_argument("--points", type=int, default=20_000, help="points per layer (default 20000)")
    s.add_argument("--batch", type=int, default=16, help="validation samples in the batch (default 16)")
    s.add_argument("--weights", choices=("auto", "raw"), default="auto", help="auto: the EMA when kept")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--seed", type=int, default=0, help="seed of the point sample")
    s.add_argument("--out", default=None)
    s.set_defaults(make=scurves)
    s = sub.add_parser("alpha-std", help="DyT alpha vs 1/std of its input over training (Fig. 8)")
    s.add_argument("run_dir")
    s.add_argument("--layers", default="4", help="layers plotted over steps, spread over depth, or 'all'")
    s.add_argument("--out", default=None)
    s.set_defaults(make=alpha_std)
    s = sub.add_parser("sites", help="saturation per norm site over training; alpha vs 1/std per site")
    s.add_argument("run_dir")
    s.add_argument("--out", default=None)
    s.set_defaults(make=sites)
    s = sub.add_parser("functions", help="tanh, hardtanh, sigmoid, identity of alpha*x (Fig. 7)")
    s.add_argument("--alphas", type=positive_float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    s.add_argument("--out", default=None)
    s.set_defaults(make=functions)
    for name, make, help_ in (("norm-optim", norm_optim, "loss gap to RMSNorm per optimizer (arXiv 2604.01563)"),
                              ("token-budget", token_budget, "DyT - LN loss vs tokens per parameter (arXiv 2604.23434)")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("sweep", help="the sweep directory (multirun/<sweep_name>)")
        s.add_argument("--out", default=None, help="the figure's path (default <sweep>/figures/<name>.png)")
        s.set_defaults(make=make)
    args = p.parse_args(argv)

    import matplotlib  # lazily, as pyplot in each figure: the Agg backend must be chosen before pyplot loads
    matplotlib.use("Agg")
    try:
        out = args.make(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
