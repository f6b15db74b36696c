"""scripts/compare.py on real run records: one row per metric (raw and EMA bests) next to the paper's values."""
import sys

from conftest import ROOT, TINY, compose
from dyt.run import train

sys.path.insert(0, str(ROOT / "scripts"))
import compare  # noqa: E402


def test_table_shows_raw_and_ema_bests_next_to_the_paper(tmp_path):
    sweep = tmp_path / "sweep"
    summaries = {}
    for norm in ("layernorm", "dyt"):
        # named like a Table 1 cell so the paper's row is found (the model itself stays tiny)
        cfg = compose([*TINY, f"norm={norm}", "trainer.ema_decay=0.5", "table=table1", "model.name=vit_b"])
        summaries[norm] = train(cfg, sweep / f"vit_b-{norm}-digits-s0")
    md = compare.table([compare.load(r) for r in compare.find_runs([sweep])])
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]]
            for line in md.splitlines() if line.startswith("| vit_b-*-digits-s0")}
    assert set(rows) == {"best val/top1", "best val_ema/top1"}
    header = [c.strip() for c in md.splitlines()[0].split("|")[3:-1]]
    assert header == ["layernorm", "dyt", "paper"]
    for metric, cells in rows.items():
        name = metric.removeprefix("best ")
        assert cells == [f"{summaries['layernorm'][f'best/{name}']:.2f}", f"{summaries['dyt'][f'best/{name}']:.2f}",
                         "layernorm 82.3, dyt 82.5"]


def test_dit_fid_from_eval_json_is_shown_next_to_table3(tmp_path):
    import json
    sweep = tmp_path / "sweep"
    fids = {"layernorm": 71.25, "dyt": 69.5}
    for norm in ("layernorm", "dyt"):
        cfg = compose(["experiment=dit_pixel", "model.depth=1", "model.hidden=32", "model.heads=2", "trainer.max_steps=2",
                       "trainer.eval_every=2", "trainer.batch_size=16", "model.diffusion.grid_per_class=0",
                       f"norm={norm}", "table=table3", "model.name=dit_b4"])
        d = sweep / f"dit_b4-{norm}-digits-s0"
        train(cfg, d)
        (d / "eval.json").write_text(json.dumps({"val/fid": fids[norm], "fid/samples": 100}))  # as eval.py --fid writes
    md = compare.table([compare.load(r) for r in compare.find_runs([sweep])])
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]]
            for line in md.splitlines() if line.startswith("| dit_b4-*-digits-s0")}
    assert rows["val/fid"] == ["71.25", "69.50", "layernorm 64.9, dyt 63.9"]
    assert rows["best val/loss"][-1] == "-"  # the paper reports FID, not the loss
