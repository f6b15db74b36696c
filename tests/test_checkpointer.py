"""The Checkpointer on its own (no trainer): what a checkpoint holds, where it goes, how many stay, and what a
resume restores. The trainer's exact-resume tests (test_trainer.py, test_faults.py, test_fsdp.py) run it end to end."""
import random
from types import SimpleNamespace

import pytest
import torch
from timm.utils import ModelEmaV3

from dyt.checkpoint import Checkpointer, load_checkpoint
from dyt.distributed import DistInfo
from dyt.rundir import RunDir


def make(run_dir, seed=0, ema=True, keep=2):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()  # optimizer state to save
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    wrapper = ModelEmaV3(model, decay=0.5) if ema else None
    par = SimpleNamespace(model=model, sharded=False)
    return Checkpointer(run_dir, par, optimizer, wrapper, scaler, dist=DistInfo(), keep=keep), model, optimizer


def test_a_checkpoint_holds_the_run_state_and_the_callers_extra(tmp_path):
    ckpt, model, optimizer = make(tmp_path / "r")
    path = ckpt.save(3, {"window": {"loss": 1.5, "steps": 2}})
    assert path == RunDir(tmp_path / "r").checkpoint(3) and path.with_name(path.name + ".sha256").is_file()
    state = load_checkpoint(path)
    assert set(state) == {"model", "optimizer", "ema", "step", "rng", "scaler", "window", "format"}
    assert state["step"] == 3 and len(state["rng"]) == 1 and state["window"] == {"loss": 1.5, "steps": 2}
    assert torch.equal(state["model"]["0.weight"], model[0].weight)
    with pytest.raises(ValueError, match=r"\['step'\] would replace"):
        ckpt.save(4, {"step": 5})


def test_resume_restores_model_optimizer_ema_rng_and_returns_the_extra(tmp_path, capsys):
    saver, model, optimizer = make(tmp_path / "r", seed=0)
    saver.save(6, {"window": {"steps": 1}})
    after = (torch.rand(3), random.random())  # what the run draws right after its checkpoint
    resumer, other, other_opt = make(tmp_path / "r", seed=1)
    assert not torch.equal(other[0].weight, model[0].weight)
    resumed = resumer.resume("auto")
    assert f"[dyt] resumed from {tmp_path}/r/checkpoints/step_00000006.pt at step 6" in capsys.readouterr().out
    assert (resumed.path.name, resumed.step, resumed.extra) == ("step_00000006.pt", 6, {"window": {"steps": 1}})
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(resumer.ema.module[0].weight, saver.ema.module[0].weight)
    assert torch.equal(torch.rand(3), after[0]) and random.random() == after[1]


def test_keep_never_and_explicit_paths(tmp_path):
    ckpt, _, _ = make(tmp_path / "r", ema=False, keep=2)
    for step in (2, 4, 6):
        ckpt.save(step)
    rd = RunDir(tmp_path / "r")
    assert [p.name for p in rd.checkpoints()] == ["step_00000004.pt", "step_00000006.pt"]
    (rd.checkpoints_dir / "step_00000008.pt.tmp").write_bytes(b"cut")  # a write killed midway
    assert ckpt.resume("never") is None
    assert not (rd.checkpoints_dir / "step_00000008.pt.tmp").exists()  # removed whatever the mode
    assert ckpt.resume(str(rd.checkpoint(4))).step == 4
