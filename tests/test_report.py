"""scripts/report.py and dyt/paper: the paper's tables on FAKE run directories written here, shaped like the
trainer's (config.yaml resolved, summary.json, metrics.jsonl): matching, seed means, deltas, diverged and missing
cells, unmatched runs, alpha0 grids, CSV, PNGs, wandb logging (offline) and the wandb-API conversion; and the sweep
view (--sweep, norms side by side) on fake and on real run records: one row per metric (raw and EMA bests) next to
the paper's values."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, compose
from dyt.paper import TABLES
from dyt.paper.output import write_report
from dyt.paper.render import csv_rows, markdown
from dyt.paper.report import build_report
from dyt.paper.runs import from_wandb_run, load_run_dirs
from dyt.paper.sweep import plot_sweep, sweep_markdown
from dyt.run import train

sys.path.insert(0, str(ROOT / "scripts"))
import report as report_script  # noqa: E402

VIT = {"family": "vit", "arch": "vit_base_patch16_224", "drop_path": 0.1, "global_pool": "avg", "kwargs": {}}


def write_run(root: Path, name: str, *, table, model: dict, norm: str, seed: int = 0, learn_alpha: bool = True,
              metrics: dict, status: str = "completed", step: int = 40, losses=(2.3, 1.9, 1.5)) -> Path:
    """A run directory as the trainer leaves it: resolved config.yaml, summary.json (status, step, best/<metric>
    and the last values), metrics.jsonl (train and val events)."""
    d = root / name
    d.mkdir(parents=True)
    config = {"model": model, "norm": {"name": norm, "alpha_init": 0.5, "learn_alpha": learn_alpha},
              "data": {"name": "digits", "source": "digits"}, "optim": {"name": "adamw", "lr": 0.004},
              "trainer": {"max_steps": 40, "batch_size": 64, "ema_decay": None},
              "logger": {"name": "none", "mode": "disabled", "project": "dyt"}, "seed": seed,
              "run_name": f"{model['name']}-{norm}-digits-s{seed}", "sweep_name": "sweep", "table": table,
              "launcher": {"nproc": 1, "nodes": 1}}
    (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = {"status": status, "step": step, "reason": None if status == "completed" else
               f"non-finite training loss (nan) at step {step}", "model": model["name"], "norm": norm,
               "data": "digits", "params": 1000, "max_steps": 40, "world_size": 1, "train/loss": losses[-1],
               "wall_time_s": 1.0, "metric": next(iter(metrics))}
    summary.update({f"best/{k}": v for k, v in metrics.items()})  # a diverged run keeps its bests from before
    summary.update(metrics)
    (d / "summary.json").write_text(json.dumps(summary, indent=2))
    events = [{"step": 10 * (i + 1), "split": "train", "train/loss": loss, "train/lr": 0.004}
              for i, loss in enumerate(losses)]
    events.append({"step": 10 * len(losses), "split": "val", **metrics})
    (d / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return d


def vit(name: str) -> dict:
    return {"name": name, **VIT}


def top1(raw: float, ema: float) -> dict:
    return {"val/top1": raw, "val_ema/top1": ema, "val/loss": 1.0}


@pytest.fixture
def runs_dir(tmp_path):
    """T1 ViT-B: LN two seeds, DyT one; T8 ViT-S: identity diverged, hardtanh one of two seeds diverged; a default
    job (no table); the mini_t12 alpha0 grid at widths 64 and 128."""
    root = tmp_path / "multirun"
    write_run(root, "vit_b-layernorm-s0", table="table1", model=vit("vit_b"), norm="layernorm",
              metrics=top1(80.0, 80.5))
    write_run(root, "vit_b-layernorm-s1", table="table1", model=vit("vit_b"), norm="layernorm", seed=1,
              metrics=top1(81.0, 81.5))
    write_run(root, "vit_b-dyt-s0", table="table1", model=vit("vit_b"), norm="dyt", metrics=top1(82.25, 82.0),
              losses=(2.2, 1.7, 1.4))
    write_run(root, "vit_s-dyt_identity-s0", table="table8", model=vit("vit_s"), norm="dyt_identity",
              metrics=top1(12.0, 11.0), status="diverged", step=37)
    write_run(root, "vit_s-dyt_hardtanh-s0", table="table8", model=vit("vit_s"), norm="dyt_hardtanh",
              metrics=top1(70.0, 71.0))
    write_run(root, "vit_s-dyt_hardtanh-s1", table="table8", model=vit("vit_s"), norm="dyt_hardtanh", seed=1,
              metrics=top1(99.0, 99.0), status="diverged", step=12)
    write_run(root, "vit_pico-dyt-digits-s0", table=None, model=vit("vit_pico"), norm="dyt", metrics=top1(95.0, 95.0))
    for norm, acc in (("layernorm", 88.0), ("dyt", 88.75)):  # the mini suite's ViT (table: mini)
        write_run(root / "mini_vit", f"vit_pico-{norm}-fashion_mnist-s0", table="mini", model=vit("vit_pico"),
                  norm=norm, metrics={"val/top1": acc, "val/loss": 0.3})
    for dim, best in ((64, (2.0, 1.0)), (128, (0.5, 0.5))):
        for a in (0.5, 1.0, 2.0):
            for f in (0.5, 1.0):
                loss = 3.0 + a + f if (a, f) != best else 2.5
                model = {"name": f"llama_d{dim}", "family": "llama", "dim": dim, "n_layers": 2, "alpha_attn": a,
                         "alpha_ffn": f, "alpha_final": f}
                write_run(root / "mini_t12", f"d{dim}-a{a}-f{f}", table="mini", model=model, norm="dyt",
                          metrics={"val/loss": loss})
        # a second seed at the best point, and a diverged point whose bests would win if they were counted
        model = {"name": f"llama_d{dim}", "family": "llama", "dim": dim, "n_layers": 2, "alpha_attn": best[0],
                 "alpha_ffn": best[1], "alpha_final": best[1]}
        write_run(root / "mini_t12", f"d{dim}-best-s1", table="mini", model=model, norm="dyt", seed=1,
                  metrics={"val/loss": 2.25})
        model = {**model, "alpha_attn": 4.0, "alpha_ffn": 4.0, "alpha_final": 4.0}
        write_run(root / "mini_t12", f"d{dim}-a4-f4", table="mini", model=model, norm="dyt",
                  metrics={"val/loss": 0.1}, status="diverged", step=5)
        write_run(root / "mini_t12", f"d{dim}-rmsnorm", table="mini", model={**model, "alpha_attn": 1.0},
                  norm="rmsnorm", metrics={"val/loss": 3.0 if dim == 64 else 2.75})  # the width's baseline
    # another depth at width 64: a grid of its own (averaged in, its 0.5 would make (0.5, 0.5) the best at depth 2)
    model = {"name": "llama_d64", "family": "llama", "dim": 64, "n_layers": 4, "alpha_attn": 0.5, "alpha_ffn": 0.5,
             "alpha_final": 0.5}
    write_run(root / "mini_t12", "d64-l4-a0.5-f0.5", table="mini", model=model, norm="dyt",
              metrics={"val/loss": 0.5})
    return root


def rows_of(tr, **where) -> list[dict]:
    return [r for r in csv_rows(tr) if all(r[k] == v for k, v in where.items())]


def test_seeds_average_and_deltas_use_the_reference_column(runs_dir):
    rep = build_report(load_run_dirs([runs_dir]), ["table1", "table10"])
    t1 = rep.tables[0]
    assert len(t1.result("ViT-B", "layernorm").runs) == 2 and len(t1.result("ViT-B", "dyt").runs) == 1
    ln, dyt = rows_of(t1, row="ViT-B", column="layernorm", metric="val/top1")[0], \
        rows_of(t1, row="ViT-B", column="dyt", metric="val/top1")[0]
    assert (ln["ours"], ln["n"], ln["ours_delta"]) == ((80.0 + 81.0) / 2, 2, "")
    assert dyt["ours"] == 82.25 and dyt["ours_delta"] == pytest.approx(82.25 - (80.0 + 81.0) / 2)
    t1_paper = {n: TABLES["table1"].cell("ViT-B", n).paper["val/top1"] for n in ("layernorm", "dyt")}
    assert dyt["paper_delta"] == round(t1_paper["dyt"] - t1_paper["layernorm"], 1) == 0.2
    ema = rows_of(t1, row="ViT-B", column="dyt", metric="val_ema/top1")[0]
    assert ema["ours"] == 82.0 and ema["ours_delta"] == pytest.approx(82.0 - (80.5 + 81.5) / 2)
    md = markdown(t1)
    assert "| ViT-B | DyT | 82.5 | +0.2 | 82.25 | +1.75 | 82.00 | +1.00 | 1 |" in md
    # Table 10's LayerNorm ViT-B is Table 1's cell: the same two runs count there
    assert len(rep.tables[1].result("ViT-B", "layernorm").runs) == 2


def test_diverged_missing_and_unmatched_runs_are_shown(runs_dir):
    rep = build_report(load_run_dirs([runs_dir]), ["table1", "table8"])
    t1, t8 = rep.tables
    md8 = markdown(t8)
    assert "| ViT-S | identity | diverged |  | diverged @37 |" in md8  # the paper's mark and ours
    ident = rows_of(t8, row="ViT-S", column="dyt_identity", metric="val/top1")[0]
    assert (ident["ours"], ident["n"], ident["status"]) == ("", 0, "diverged @37")
    # one of two seeds diverged: the mean is the completed seed's alone, and the diverged one is said
    hard = rows_of(t8, row="ViT-S", column="dyt_hardtanh", metric="val/top1")[0]
    assert (hard["ours"], hard["n"], hard["status"]) == (70.0, 1, "completed, diverged @12")
    assert "70.00 (diverged @12)" in md8
    # a cell without runs says how to run it
    assert "missing: `python train.py -m experiment=table1_vit_l norm=layernorm launcher=slurm_8x8`" in markdown(t1)
    vit_l = rows_of(t1, row="ViT-L", column="layernorm", metric="val/top1")[0]
    assert (vit_l["status"], vit_l["note"]) == ("missing", "python train.py -m experiment=table1_vit_l norm=layernorm "
                                                "launcher=slurm_8x8")
    assert [r.name for r in rep.unmatched] == ["vit_pico-dyt-digits-s0"]


def test_mini_tables_put_our_delta_beside_the_papers(runs_dir):
    rep = build_report(load_run_dirs([runs_dir]), ["mini_t1", "mini_t8"])
    dyt = rows_of(rep.tables[0], row="ViT", column="dyt", metric="val/top1")[0]
    assert (dyt["ours"], dyt["ours_delta"], dyt["paper_delta"]) == (88.75, 88.75 - 88.0, 0.2)
    assert "| ViT (paper: T1 ViT-B) | DyT | 82.5 | +0.2 | 88.75 | +0.75 | 1 |" in markdown(rep.tables[0])
    assert rep.tables[1].result("ViT", "dyt").runs[0].name == "vit_pico-dyt-fashion_mnist-s0"  # T8's tanh too


def test_fid_and_zero_shot_come_from_the_eval_files(tmp_path):
    dit = {"name": "dit_b4", "family": "dit", "depth": 12, "hidden": 768, "heads": 12, "patch_size": 4}
    for norm, fids in (("layernorm", (70.5, 66.0)), ("dyt", (69.25, 64.5))):
        d = write_run(tmp_path, f"dit_b4-{norm}", table="table3", model=dit, norm=norm, metrics={"val/loss": 0.2})
        # as eval.py --fid writes it: the checkpoint's step, its path, and the raw / EMA FIDs
        (d / "eval.json").write_text(json.dumps({"step": 999, "checkpoint": str(d / "checkpoints"), "val/loss": 9.0,
                                                 "val/fid": fids[0], "val_ema/fid": fids[1]}))
    llama = {"name": "llama_7b", "family": "llama", "dim": 4096, "n_layers": 32}
    d = write_run(tmp_path, "llama_7b-dyt", table="table4", model=llama, norm="dyt", metrics={"val/loss": 1.7},
                  losses=(3.0, 1.625))
    (d / "lm_eval.json").write_text(json.dumps({"lm_eval/avg": 0.505, "lm_eval/piqa/acc": 0.7}))
    runs = {r.name: r for r in load_run_dirs([tmp_path])}
    assert runs["dit_b4-dyt"].step == 40 and runs["dit_b4-dyt"].value("val/loss") == 0.2  # summary.json first
    t3, t4 = build_report(list(runs.values()), ["table3", "table4"]).tables
    fid = rows_of(t3, row="DiT-B/4", column="dyt", metric="val_ema/fid")[0]
    assert (fid["ours"], fid["ours_delta"], fid["paper_delta"]) == (64.5, 64.5 - 66.0, round(63.9 - 64.9, 1))
    zs = rows_of(t4, row="7B", column="dyt", metric="lm_eval/avg")[0]
    loss = rows_of(t4, row="7B", column="dyt", metric="train/loss")[0]
    assert (zs["ours"], zs["paper"], loss["ours"], loss["paper"]) == (0.505, 0.513, 1.625, 1.6)


def test_mini_t12_picks_the_best_alpha_per_width(runs_dir):
    rep = build_report(load_run_dirs([runs_dir]), ["mini_t12"])
    tr = rep.tables[0]
    assert [g.label for g in tr.groups] == ["64, n_layers 2", "64, n_layers 4", "128"]
    for label, best in (("64, n_layers 2", (2.0, 1.0)), ("128", (0.5, 0.5))):
        g = tr.group(label)
        assert g.best(TABLES["mini_t12"].metrics[0]) == best  # not the diverged (4, 4) with its 0.1
        assert g.value(best, "val/loss") == (2.5 + 2.25) / 2
        flagged = [(r["alpha_attn"], r["alpha_ffn"]) for r in rows_of(tr, group=label) if r["best"] is True]
        assert flagged == [best]
    md = markdown(tr)
    # 7 points, 8 runs, 1 diverged point; the width's RMSNorm run beside the best
    no_paper = "- (not a width of the paper's)"  # the toy widths: said, not an empty cell
    assert f"| 64, n_layers 2 | {no_paper} | 2 / 1 | 2.38 | 3.00 | 7 (8) | 1 |" in md
    assert f"| 64, n_layers 4 | {no_paper} | 0.5 / 0.5 | 0.5000 |  | 1 (1) | 0 |" in md
    assert f"| 128 | {no_paper} | 0.5 / 0.5 | 2.38 | 2.75 | 7 (8) | 1 |" in md
    assert "**2.38**" in md and "diverged @5" in md


def test_written_files_csv_parses_back_and_pngs(runs_dir, tmp_path):
    runs = load_run_dirs([runs_dir])
    rep = build_report(runs, ["table1", "table8", "mini_t12"])
    out = tmp_path / "report"
    written = write_report(rep, out)
    assert {f.name for fs in written.values() for f in fs} >= {
        "table1.md", "table1.csv", "table1.png", "table1_curves.png", "table8.png", "mini_t12.png", "mini_t12.csv"}
    for f in (f for fs in written.values() for f in fs if f.suffix == ".png"):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000
    with open(out / "table1.csv") as fh:
        back = {(r["row"], r["column"], r["metric"]): r for r in csv.DictReader(fh)}
    assert float(back["ViT-B", "layernorm", "val/top1"]["ours"]) == (80.0 + 81.0) / 2
    assert float(back["ViT-B", "dyt", "val_ema/top1"]["ours"]) == 82.0
    assert float(back["ViT-B", "dyt", "val/top1"]["paper"]) == 82.5
    assert back["ViT-L", "dyt", "val/top1"]["ours"] == ""
    index = (out / "README.md").read_text()
    assert "[table1](table1.md)" in index and "(mini_t12.png)" in index and "vit_pico-dyt-digits-s0" in index


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    cases = [([str(tmp_path / "nope")], "no such path"), ([str(tmp_path)], "no run"),
             ([str(tmp_path), "--tables", "table1,tabel8"], "unknown table tabel8; the tables are: table1, table2"),
             (["--sweep", str(tmp_path), "--tables", "table1"], "--tables is for the paper's tables")]
    for argv, message in cases:
        assert report_script.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_cli_writes_the_report_and_logs_it_to_wandb_offline(runs_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert report_script.main([str(runs_dir), "--out", str(out), "--tables", "table1,mini_t12", "--wandb-log"]) == 0
    stdout = capsys.readouterr().out
    assert "## table1:" in stdout and "1 unmatched" in stdout
    run_dirs = list((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1 and list(run_dirs[0].glob("*.wandb"))
    tables = list(run_dirs[0].glob("files/media/table/tables/table1_*.table.json"))
    assert tables and "82.3" in tables[0].read_text()  # the paper's LayerNorm ViT-B beside ours
    assert list(run_dirs[0].glob("files/media/images/plots/mini_t12_*.png"))


def test_wandb_log_follows_the_mode_asked_and_a_missing_login_is_one_line(runs_dir, tmp_path, capsys, monkeypatch):
    """The mode is explicit (wandb keeps process-wide settings: an earlier online run in this process made the
    offline log fail); online without a login is one line and exit 2, after the files are written."""
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no stored login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "out"
    argv = [str(runs_dir), "--out", str(out), "--tables", "table1", "--wandb-log"]
    assert report_script.main(argv + ["--wandb-mode", "online"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not log the report to wandb (online)" in err and "--wandb-mode offline" in err
    assert (out / "table1.md").exists()
    assert report_script.main(argv + ["--wandb-mode", "offline"]) == 0
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1


class FakeSummary:
    def __init__(self, d):
        self._json_dict = d


class FakeApiRun:
    """What the conversion reads of a wandb.apis.public.Run (the real one needs a login and a network: not here)."""
    name, path, job_type = "vit_b-dyt-imagenet-s0", ["me", "dyt", "abc123"], "dyt"
    config = {"model": {"name": "vit_b", "family": "vit"}, "norm": {"name": "dyt", "alpha_init": 0.5},
              "table": "table1", "seed": 0, "_wandb": {"cli_version": "0.31.0"}}
    summary = FakeSummary({"status": "completed", "step": 100, "best/val/top1": 82.4, "val/top1": 82.1,
                           "_runtime": 12.0})

    def scan_history(self, keys):
        return [{"_step": 10, "train/loss": 2.0}, {"_step": 20, "train/loss": 1.5}, {"_step": 25, "val/top1": 80.0}]


def test_wandb_api_run_conversion_matches_a_cell():
    run = from_wandb_run(FakeApiRun())
    assert (run.name, run.source, run.status, run.value("val/top1")) == ("vit_b-dyt-imagenet-s0", "me/dyt/abc123",
                                                                        "completed", 82.4)
    assert "_wandb" not in run.config and run.load_curve() == [(10, 2.0), (20, 1.5)]
    rep = build_report([run], ["table1"])
    assert rep.tables[0].result("ViT-B", "dyt").runs == [run] and not rep.unmatched


def test_a_diagonal_alpha_grid_is_drawn_as_alpha0_curves(tmp_path, monkeypatch):
    """The mini-suite ties every site's alpha0: its grid is one curve per width (alpha0 sensitivity), not a heatmap."""
    from dyt.paper import plots
    for a, loss in ((0.5, 2.9), (1.0, 2.4), (2.0, 2.6)):
        model = {"name": "llama_d32", "family": "llama", "dim": 32, "n_layers": 2, "alpha_attn": a, "alpha_ffn": a,
                 "alpha_final": a}
        write_run(tmp_path / "runs", f"d32-a{a}", table="mini", model=model, norm="dyt", metrics={"val/loss": loss})
    tr = build_report(load_run_dirs([tmp_path / "runs"]), ["mini_t12"]).tables[0]
    drawn = []
    real = plots.plot_alpha_curves
    monkeypatch.setattr(plots, "plot_alpha_curves", lambda tr, groups, path: drawn.append(groups) or real(tr, groups, path))
    (png,) = plots.plot_table(tr, tmp_path)
    assert len(drawn) == 1 and [sorted(g.points) for g in drawn[0]] == [[(0.5, 0.5), (1.0, 1.0), (2.0, 2.0)]]
    assert drawn[0][0].best(TABLES["mini_t12"].metrics[0]) == (1.0, 1.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


# --- the sweep view (--sweep): norms side by side -----------------------------------------------------------

def sweep_rows(md: str, cell: str) -> tuple[list[str], dict[str, list[str]]]:
    """(the norm columns and paper, {metric label: cells}) of one cell's rows of a --sweep table."""
    header = [c.strip() for c in md.splitlines()[0].split("|")[3:-1]]
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]]
            for line in md.splitlines() if line.startswith(f"| {cell} ")}
    return header, rows


def test_sweep_table_shows_raw_and_ema_bests_next_to_the_paper(tmp_path):
    sweep = tmp_path / "sweep"
    summaries = {}
    for norm in ("layernorm", "dyt"):
        # named like a Table 1 cell so the paper's row is found (the model itself stays tiny)
        cfg = compose([*TINY, f"norm={norm}", "trainer.ema_decay=0.5", "table=table1", "model.name=vit_b"])
        summaries[norm] = train(cfg, sweep / f"vit_b-{norm}-digits-s0")
    header, rows = sweep_rows(sweep_markdown(load_run_dirs([sweep])), "vit_b-*-digits-s0")
    assert set(rows) == {"best val/top1", "best val_ema/top1"}
    assert header == ["layernorm", "dyt", "paper"]
    for metric, cells in rows.items():
        name = metric.removeprefix("best ")
        assert cells == [f"{summaries['layernorm'][f'best/{name}']:.2f}", f"{summaries['dyt'][f'best/{name}']:.2f}",
                         "layernorm 82.3, dyt 82.5"]


def test_sweep_shows_dit_fid_from_eval_json_next_to_table3(tmp_path):
    sweep = tmp_path / "sweep"
    fids = {"layernorm": 71.25, "dyt": 69.5}
    for norm in ("layernorm", "dyt"):
        cfg = compose(["experiment=dit_pixel", "model.depth=1", "model.hidden=32", "model.heads=2", "trainer.max_steps=2",
                       "trainer.eval_every=2", "trainer.batch_size=16", "model.diffusion.grid_per_class=0",
                       f"norm={norm}", "table=table3", "model.name=dit_b4"])
        d = sweep / f"dit_b4-{norm}-digits-s0"
        train(cfg, d)
        (d / "eval.json").write_text(json.dumps({"val/fid": fids[norm], "fid/samples": 100}))  # as eval.py --fid writes
    _, rows = sweep_rows(sweep_markdown(load_run_dirs([sweep])), "dit_b4-*-digits-s0")
    assert rows["val/fid"] == ["71.25", "69.50", "layernorm 64.9, dyt 63.9"]
    assert rows["best val/loss"][-1] == "-"  # the paper reports FID, not the loss


def test_cli_sweep_prints_and_writes_the_table_and_plot(runs_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert report_script.main(["--sweep", str(runs_dir), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    md = (out.with_suffix(".md")).read_text()
    assert md.strip() in stdout
    header, rows = sweep_rows(md, "vit_pico-*-fashion_mnist-s0")
    assert header[:3] == ["layernorm", "rmsnorm", "dyt"] and header[-1] == "paper"  # baselines first
    col = {n: i for i, n in enumerate(header)}
    assert (rows["best val/top1"][col["layernorm"]], rows["best val/top1"][col["dyt"]]) == ("88.00", "88.75")
    assert rows["best val/top1"][col["paper"]] == "-"  # a mini-suite run: no paper cell of its own table
    _, deep = sweep_rows(md, "d64-l4-a0.5-f0.5")
    assert deep["best val/loss"][col["dyt"]] == "0.5000"  # four decimals below 1
    _, vit_s = sweep_rows(md, "vit_s-*-s0")
    assert vit_s["best val/top1"][col["dyt_identity"]] == "diverged @37"
    assert vit_s["best val/top1"][col["paper"]] == "dyt_identity diverged, dyt 80.3, dyt_hardtanh 79.9, dyt_sigmoid 79.6"
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_sweep_plot_names_every_run_also_one_without_a_training_curve(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    for norm in ("layernorm", "dyt"):
        d = write_run(tmp_path / "sweep", f"vit_pico-{norm}-digits-s0", table=None, model=vit("vit_pico"), norm=norm,
                      metrics=top1(90.0, 90.5))
    (d / "metrics.jsonl").write_text(json.dumps({"step": 30, "split": "val", **top1(90.0, 90.5)}) + "\n")  # no train
    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig) or real(fig, *a, **k))
    plot_sweep(load_run_dirs([tmp_path / "sweep"]), tmp_path / "sweep.png")
    assert sorted(t.get_text() for t in saved[0].legends[0].get_texts()) == ["vit_pico-dyt-digits-s0",
                                                                            "vit_pico-layernorm-digits-s0"]


def test_bars_show_differences_to_the_baseline_from_zero(runs_dir, tmp_path, monkeypatch):
    """Our numbers and the paper's are on different data: each panel shows DyT - LayerNorm for both, from zero
    (no per-panel truncation that makes 0.2 points look like 2x), every bar labelled."""
    import matplotlib.figure
    from dyt.paper.plots import plot_bars
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    rep = build_report(load_run_dirs([runs_dir]), ["table1"])
    plot_bars(rep.tables[0], tmp_path / "t1.png")
    vit_b = figures[0].axes[0]
    assert vit_b.get_title() == "ViT-B" and [t.get_text() for t in vit_b.get_xticklabels()] == ["DyT - LayerNorm"]
    # paper 82.5 - 82.3 = 0.2; ours: the mean of the DyT runs minus that of the LN runs, raw and EMA
    assert [round(p.get_height(), 6) for p in vit_b.patches] == [0.2, 1.75, 1.0]
    assert vit_b.get_ylim()[0] <= 0 and [t.get_text() for t in vit_b.texts] == ["+0.2", "+1.75", "+1"]
    assert "difference to LayerNorm" in figures[0]._suptitle.get_text()


def test_sweep_plot_tells_cells_by_colour_and_norms_by_line_style(tmp_path, monkeypatch):
    """A model x norm sweep: one colour per model (cell), one line style per norm, a title saying so; a point that
    failed before writing its config still lands in its own norm (from its name), not in a '?' column."""
    from matplotlib.figure import Figure
    for model in ("vit_pico", "vit_tiny"):
        for norm in ("layernorm", "dyt"):
            write_run(tmp_path / "sweep", f"{model}-{norm}-digits-s0", table=None, model=vit(model), norm=norm,
                      metrics=top1(90.0, 90.5))
    failed = tmp_path / "sweep/vit_pico-rmsnorm-digits-s0"  # a point refused before it started: Hydra's config only
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra/config.yaml").write_text(yaml.safe_dump({"model": {"name": "vit_pico"},
                                                               "norm": {"name": "rmsnorm"}, "data": {"name": "digits"}}))
    (failed / "summary.json").write_text(json.dumps({"status": "failed", "step": 0, "reason": "bad", "config_error": True}))
    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    runs = load_run_dirs([tmp_path / "sweep"])
    plot_sweep(runs, tmp_path / "sweep.png", source="sweep")
    lines = {ln.get_label(): ln for ln in saved[0].axes[1].get_lines()}
    assert lines["vit_pico-layernorm-digits-s0"].get_color() == lines["vit_pico-dyt-digits-s0"].get_color()
    assert lines["vit_pico-dyt-digits-s0"].get_color() != lines["vit_tiny-dyt-digits-s0"].get_color()
    assert lines["vit_pico-layernorm-digits-s0"].get_linestyle() == lines["vit_tiny-layernorm-digits-s0"].get_linestyle()
    assert lines["vit_pico-layernorm-digits-s0"].get_linestyle() != lines["vit_pico-dyt-digits-s0"].get_linestyle()
    assert saved[0]._suptitle.get_text().startswith("sweep: 5 runs, 2 cell(s) x norms layernorm, rmsnorm, dyt")
    md = sweep_markdown(runs)
    assert md.splitlines()[0] == "| run (norm = *) | metric | layernorm | rmsnorm | dyt | paper |"
    row = next(ln for ln in md.splitlines() if ln.startswith("| vit_pico-*-digits-s0 | best val/top1 |"))
    assert "failed" in row.split("|")[4]  # in its own norm's column, under its cell's metric


def test_report_on_an_ad_hoc_sweep_shows_it_side_by_side(tmp_path, capsys):
    """Runs that fill no paper table: no table files of 'missing' cells, the sweep view instead."""
    for norm in ("layernorm", "dyt"):
        write_run(tmp_path / "sweep", f"vit_pico-{norm}-digits-s0", table=None, model=vit("vit_pico"), norm=norm,
                  metrics=top1(90.0, 90.5))
    assert report_script.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("none of the 2 runs matches a cell of the paper's tables: showing them side by side")
    assert "| vit_pico-*-digits-s0 | best val/top1 |" in out
    assert not list((tmp_path / "out").glob("table*"))


def test_report_survives_a_damaged_run_and_an_unwritable_out(tmp_path, capsys):
    for norm in ("layernorm", "dyt"):
        write_run(tmp_path / "sweep", f"vit_pico-{norm}-digits-s0", table=None, model=vit("vit_pico"), norm=norm,
                  metrics=top1(90.0, 90.5))
    (tmp_path / "sweep/vit_pico-dyt-digits-s0/config.yaml").write_bytes(b"\x00\xff\xfe binary \x00")
    assert report_script.main(["--sweep", str(tmp_path / "sweep")]) == 0  # the other run is still shown
    assert "| vit_pico-*-digits-s0 | best val/top1 | 90.00 |" in capsys.readouterr().out
    assert report_script.main(["--sweep", str(tmp_path / "sweep"), "--out", "/proc/x/cmp"]) == 2
    assert capsys.readouterr().err.startswith("error: could not write /proc/x")


def test_a_tied_alpha_sweep_is_one_row_not_a_diagonal(tmp_path):
    """alpha_attn = alpha_ffn in every point (the mini-suite's sweep): one row by alpha0, not a 5x5 square with
    only its diagonal filled."""
    from dyt.paper.render import _grid_points
    from dyt.paper.report import GridGroup
    from dyt.paper.runs import Run
    runs = {(a, a): [Run(f"r{a}", "", {}, {"status": "completed", "best/val/loss": 3.0 - a})] for a in (0.5, 1.0, 2.0)}
    lines = _grid_points(GridGroup("64", 64, None, runs), TABLES["mini_t12"].metrics[0],
                         ("model.alpha_attn", "model.alpha_ffn"))
    assert lines[2:] == ["| alpha0 | 0.5 | 1 | 2 |", "|---|---|---|---|", "| val/loss | 2.50 | 2.00 | **1.00** |"]


def test_a_fine_tuning_run_is_paired_with_its_pre_training(tmp_path):
    """Table 2's column is the pre-training's norm, read from what the fine-tuning run recorded of its source
    (summary.json init_from); the cell says which run that was and the norm it was fine-tuned with."""
    root = tmp_path / "runs"
    sources = {}
    for how, norm, top in (("released", "layernorm", 83.0), ("released", "dyt", 83.1), ("pretrain", "dyt", 82.9)):
        d = write_run(root, f"ft-{how}-{norm}", table="table2", model={**vit("vit_b"), "patch_size": None},
                      norm="layernorm" if how == "released" else norm, metrics=top1(top, top))
        config = yaml.safe_load((d / "config.yaml").read_text())
        (d / "config.yaml").write_text(yaml.safe_dump({**config, "finetune_norm": how}))
        summary = json.loads((d / "summary.json").read_text())
        sources[how, norm] = {"run_dir": f"/runs/mae_vit_b-{norm}-imagenet-s0", "step": 1000, "family": "mae",
                              "norm": norm, "table": "table2"}
        (d / "summary.json").write_text(json.dumps({**summary, "init_from": sources[how, norm]}))
    tr = build_report(load_run_dirs([root]), ["table2"]).tables[0]
    assert [len(tr.result("MAE ViT-B", c).runs) for c in ("layernorm", "dyt", "dyt_pretrain")] == [1, 1, 1]
    assert not tr.result("DINO ViT-B/16", "dyt").runs  # another family's source
    text = markdown(tr)
    assert "83.10" in text and "from mae_vit_b-dyt-imagenet-s0 @1000, fine-tuned with layernorm (released)" in text
    assert "from mae_vit_b-dyt-imagenet-s0 @1000, fine-tuned with dyt (pretrain)" in text


def test_a_mini_fine_tuning_run_is_not_a_from_scratch_mini_cell(tmp_path):
    """mini_finetune trains the mini ViT with table=mini: it is Mini Table 2's run, not Mini Table 1's / 8's (whose
    cells are the same family and norm, trained from scratch)."""
    root = tmp_path / "runs"
    for name, init_from in (("scratch", None), ("finetuned", "/runs/mae_pico-layernorm-fashion_mnist-s0")):
        d = write_run(root, name, table="mini", model=vit("vit_pico"), norm="layernorm", metrics=top1(80.0, 80.0))
        config = yaml.safe_load((d / "config.yaml").read_text())
        config["trainer"]["init_from"] = init_from
        (d / "config.yaml").write_text(yaml.safe_dump({**config, "finetune_norm": "released"}))
        if init_from:
            summary = json.loads((d / "summary.json").read_text())
            (d / "summary.json").write_text(json.dumps({**summary, "init_from": {
                "run_dir": init_from, "step": 40, "family": "mae", "norm": "layernorm", "table": "mini"}}))
    report = build_report(load_run_dirs([root]), ["mini_t1", "mini_t2"])
    t1, t2 = report.tables
    assert [Path(r.source).name for r in t1.result("ViT", "layernorm").runs] == ["scratch"]
    assert [Path(r.source).name for r in t2.result("MAE", "layernorm").runs] == ["finetuned"]


def test_a_cells_origins_name_each_pre_training_once_with_its_count():
    """Table 6's fine-tunings (5 split seeds) share one pre-training: the cell names it once, with how many runs."""
    from types import SimpleNamespace
    from dyt.paper.render import origins
    run = lambda src, norm: SimpleNamespace(summary={"init_from": {"run_dir": f"/x/{src}", "step": 300}},  # noqa: E731
                                            config={"norm": {"name": norm}, "finetune_norm": "pretrain"})
    res = SimpleNamespace(runs=[run("pre_ln", "layernorm")] * 5 + [run("pre_dyt", "dyt")])
    assert origins(res) == ("5 x from pre_ln @300, fine-tuned with layernorm (pretrain); "
                            "from pre_dyt @300, fine-tuned with dyt (pretrain)")
