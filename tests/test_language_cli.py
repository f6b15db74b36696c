"""The LLaMA family through the real entry points: a train.py sweep over norms (re-run skips finished runs and
resumes unfinished ones) and 2-process DDP (gloo) giving the single-process result."""
import json

import pytest

from conftest import ROOT, run_script
from test_llama_train import LM

pytestmark = pytest.mark.slow
ARGS = [*LM, "trainer.max_steps=4", "trainer.eval_every=4", "trainer.ckpt_every=2", "trainer.log_every=2"]


def summary(d):
    return json.loads((d / "summary.json").read_text())


def test_lm_sweep_resume_and_ddp(tmp_path):
    sweep = ["python", str(ROOT / "train.py"), "-m", "norm=rmsnorm,dyt", *ARGS, f"hydra.sweep.dir={tmp_path}/sweep",
             "trainer.keep_checkpoints=2"]
    run_script(sweep, cwd=tmp_path)
    runs = {d.name.split("_", 2)[1]: d for d in (tmp_path / "sweep").iterdir() if d.name.startswith("llama")}
    assert sorted(runs) == ["tiny-dyt-pydoc-s0", "tiny-rmsnorm-pydoc-s0"]  # then "_<overrides>"
    first = {k: summary(d) for k, d in runs.items()}
    assert all(s["status"] == "completed" and s["step"] == 4 for s in first.values())

    # "kill" the DyT run after its step-2 checkpoint; the same sweep command skips RMSNorm and resumes DyT exactly
    dyt = runs["tiny-dyt-pydoc-s0"]
    (dyt / "checkpoints/step_00000004.pt").unlink()
    (dyt / "summary.json").unlink()
    out = run_script(sweep, cwd=tmp_path).stdout
    assert "already completed" in out and "resumed from" in out and "at step 2" in out
    assert summary(dyt)["val/loss"] == first["tiny-dyt-pydoc-s0"]["val/loss"]

    # 2 processes see the same global batches: the same result as one process
    run_script(["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
                "norm=rmsnorm", *ARGS, f"hydra.run.dir={tmp_path}/ddp"], cwd=tmp_path)
    ddp, single = summary(tmp_path / "ddp"), first["tiny-rmsnorm-pydoc-s0"]
    assert ddp["world_size"] == 2 and ddp["status"] == "completed"
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], rel=1e-4)
    assert ddp["train/loss"] == pytest.approx(single["train/loss"], rel=1e-4)
