"""Run directories written by an earlier version (tests/fixtures/run_v0_1*: ViT, DiT and LLaMA runs of 6 steps made
before the one-family-one-folder redesign) still evaluate to the numbers they recorded and still resume."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from dyt.eval import evaluate_run, run_config
from dyt.run import train

FIXTURES = ROOT / "tests/fixtures"
RUNS = {"run_v0_1": ("val/loss", "val/top1", "val/top5"), "run_v0_1_llama": ("val/loss", "val/ppl"),
        "run_v0_1_dit": ("val/loss", "val/mse", "val/vb", "val_ema/loss")}


@pytest.fixture(params=sorted(RUNS))
def old_run(request, tmp_path) -> tuple[Path, tuple[str, ...]]:
    d = tmp_path / request.param
    shutil.copytree(FIXTURES / request.param, d)
    return d, RUNS[request.param]


def test_an_old_run_evaluates_to_what_it_recorded(old_run):
    d, keys = old_run
    recorded = json.loads((d / "summary.json").read_text())
    metrics = evaluate_run(d, ["trainer.device=cpu"])
    assert metrics["step"] == recorded["step"] == 6
    assert {k: metrics[k] for k in keys} == pytest.approx({k: recorded[k] for k in keys}, rel=1e-5)


def test_an_old_run_resumes(old_run, capsys):
    d, keys = old_run
    (d / "summary.json").unlink()  # as if killed after its step-6 checkpoint (a finished run is not trained again)
    s = train(run_config(d, ["trainer.max_steps=8", "trainer.device=cpu"]), d)
    assert f"resumed from {d}/checkpoints/step_00000006.pt at step 6" in capsys.readouterr().out
    assert s["status"] == "completed" and s["step"] == 8
    events = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["split"] == "val"] == [6, 8]  # the old records kept, the new appended
