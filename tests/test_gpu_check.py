"""scripts/gpu_check.py (the GPU check of issue 18) on this CPU machine: its dry run lists every step the issue asks
for, each command it would run names scripts that exist and configs that compose and validate, a failing step is
recorded and the next one still runs, and its two measurements (scripts/gpu_measure.py) run as a CPU rehearsal."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import OFFLINE_ENV, ROOT, compose, script

gpu_check = script("scripts/gpu_check.py")
measure = script("scripts/gpu_measure.py")

# The issue's list ("exercises every CUDA path"): each item, and words of the steps' `checks` that name it.
ISSUE_ITEMS = {
    "Triton DyT kernel vs reference (fwd/bwd, fp32/bf16)": ("Triton DyT kernel", "fwd/bwd", "fp32/bf16"),
    "CUDA variants of the fused-backward tests": ("CUDA variants of the fused-backward tests",),
    "LLaMA-1B RMSNorm vs DyT, eager vs compiled": ("LLaMA-1B", "RMSNorm vs DyT", "eager vs torch.compile"),
    "LLaMA-1B DDP vs single-GPU FSDP": ("LLaMA-1B", "DDP vs single-GPU FSDP"),
    "ViT-B images/s": ("ViT-B images/s",),
    "DiT-XL/2 images/s": ("DiT-XL/2 images/s",),
    "peak memory vs the planner": ("peak memory vs planner",),
    "lm-eval on GPU": ("lm-eval on GPU",),
    **{f"50-step bf16 run of {f}": (f"50-step bf16 run ({f}",) for f in ("vit", "convnext", "cnn", "dit", "llama")},
}


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    return gpu_check.steps(tmp_path_factory.mktemp("work"))


def test_dry_run_lists_every_item_of_the_issue(tmp_path):
    out = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--work", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, **OFFLINE_ENV, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    blocks = out.stdout.split("\n\n")[1:]  # one block per step: "name (budget s): checks", then its commands
    for item, words in ISSUE_ITEMS.items():
        assert any(all(w in b.splitlines()[0] for w in words) for b in blocks), f"no step checks {item}"
    for b in blocks:
        assert "\n  $ " in b, f"a step without a command: {b}"
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_budgets_fit_the_issues_eight_minutes(steps):
    assert sum(s.budget_s for s in steps) + gpu_check.OVERHEAD_S <= gpu_check.LIMIT_S == 8 * 60


def _configs(cmd: list[str]) -> list[list[str]]:
    """The override lists of every config a command composes: train.py's, gpu_measure.py parallel's (x its
    strategies and norms), models.py's models."""
    if "train.py" in cmd:
        return [[a for a in cmd[cmd.index("train.py") + 1:] if not a.startswith("hydra.")]]
    if cmd[1:3] == ["scripts/gpu_measure.py", "parallel"]:
        args = measure.parser().parse_args(cmd[2:])
        return [[*args.overrides, f"norm={n}", f"trainer.parallel={s}"] for s in args.strategies for n in args.norms]
    if cmd[1] == "scripts/bench/models.py":
        models = cmd[cmd.index("--models") + 1:cmd.index("--models") + 2]
        return [[f"model={m}", "data=text_pydoc", f"data.seq_len={cmd[cmd.index('--seq-len') + 1]}"] for m in models]
    return []


def test_every_command_names_existing_scripts_and_valid_configs(steps):
    from dyt.validate import validate
    composed = 0
    for step in steps:
        for cmd in step.commands:
            assert cmd[0] == sys.executable
            for arg in cmd[1:]:
                if arg.endswith((".py", ".sh")) or arg.startswith("tests/"):
                    assert (ROOT / arg).exists(), f"{step.name}: {arg} does not exist"
            for overrides in _configs(cmd):
                validate(compose(overrides))  # an unknown key, choice or a bad value raises here
                composed += 1
    assert composed >= 5 + 1 + 4 + 1  # the five families' runs, lm_eval's run, 4 parallel variants, LLaMA-1B


def test_a_misspelt_override_fails_the_config_check():
    with pytest.raises(Exception, match="max_stpes"):
        compose(_configs([sys.executable, "train.py", "model=vit_b", "trainer.max_stpes=5"])[0])


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path):
    py = sys.executable
    fake = [gpu_check.Step("boom", "fails", 60, [[py, "-c", "print('about to fail'); raise SystemExit(3)"],
                                                 [py, "-c", "open('never', 'w')"]]),
            gpu_check.Step("slow", "runs past its budget", 1, [[py, "-c", "import time; time.sleep(60)"]]),
            gpu_check.Step("bad_numbers", "exits 0 but its log has no numbers", 60, [[py, "-c", "print('ok')"]],
                           parse=gpu_check.parse_pytest),
            gpu_check.Step("lacking", "needs a module that is missing", 60, [[py, "-c", "pass"]], needs=("nope",)),
            gpu_check.Step("fine", "passes", 60, [[py, "-c", "print('5 passed in 0.1s')"]],
                           parse=gpu_check.parse_pytest)]
    outcomes = gpu_check.run_steps(fake, tmp_path / "logs", {"nope": "ModuleNotFoundError: No module named 'nope'"})
    got = {o.step.name: (o.status, o.why) for o in outcomes}
    assert got["boom"][0] == "failed" and "exit code 3" in got["boom"][1]
    assert not (ROOT / "never").exists()  # the step stopped at its failing command
    assert got["slow"][0] == "timeout"
    assert got["bad_numbers"] == ("failed", "no test passed")
    assert got["lacking"] == ("skipped", "cannot import nope")
    assert got["fine"] == ("passed", "")
    doc = gpu_check.report(outcomes, "a test device", {"nope": "ModuleNotFoundError"}, 1.0, "bash scripts/gpu_check.sh")
    assert "| boom | fails | failed: exit code 3 of" in doc and "| fine | passes | passed | " in doc
    assert "Imports missing: nope (ModuleNotFoundError)." in doc and "about to fail" in doc  # the log's tail


def test_only_runs_the_named_step_and_refuses_unknown_names(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--only", "lm_eval", "--work", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("\n  $ ") == 2  # lm_eval's training run and eval.py
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--dry-run", "--only", "lm_evl"])
    assert e.value.code == 2 and "unknown step(s) lm_evl" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_cuda_nothing_runs_and_the_report_stays(tmp_path, capsys):
    report = tmp_path / "GPU.md"
    report.write_text("not yet measured")
    assert gpu_check.main(["--only", "gpu_tests", "--out", str(report), "--work", str(tmp_path / "w")]) == 1
    assert report.read_text() == "not yet measured" and not (tmp_path / "w").exists()
    assert "no CUDA device" in capsys.readouterr().err
    assert list(gpu_check.missing_imports(["json", "no_such_module_here"])) == ["no_such_module_here"]


def test_local_lm_eval_task_loads_offline(tmp_path):
    """The lm_eval step's task: lm-eval builds it from the folder alone, each question with four choices and the
    index of its true continuation."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager
    gpu_check.write_local_task(tmp_path)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    task = manager.load([gpu_check.LM_TASK])["tasks"][gpu_check.LM_TASK]
    docs = list(task.test_docs())
    assert len(docs) == 32
    for doc in docs:
        choices, target = task.doc_to_choice(doc), task.doc_to_target(doc)
        assert len(choices) == 4 and choices[target] == doc["choices"][doc["answer"]]


def test_measurements_rehearse_on_cpu(tmp_path, capsys, monkeypatch):
    """Both measurements, on a tiny LLaMA and CPU: train.py in-process with the plan beside it; one-rank DDP and
    FSDP2 through wrap_model (gloo), which really wraps the model."""
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)  # and unset again after the test: `parallel` sets them for its group
    monkeypatch.chdir(ROOT)
    tiny = ["model=llama_tiny", "data=text_pydoc", "data.seq_len=32", "trainer.batch_size=2", "trainer.precision=fp32"]
    run = ["train.py", *tiny, "norm=dyt", "trainer.device=cpu", "trainer.max_steps=4", "trainer.log_every=2",
           "trainer.eval_every=4", "trainer.ckpt_every=4", "logger=none", "trainer.progress=off",
           f"hydra.run.dir={tmp_path / 'run'}"]
    assert measure.main(["peak", *run]) == 0
    assert measure.main(["parallel", *tiny, "--device", "cpu", "--steps", "1", "--norms", "dyt"]) == 0
    parsed = gpu_check.parse_measure(capsys.readouterr().out)
    assert not parsed.problem
    trained, ddp, fsdp = parsed.records
    assert trained["status"] == "completed" and trained["rate"] > 0 and trained["plan_row"] == "ddp/none"
    assert (ddp["wrapper"], ddp["plan_row"]) == ("DDP", "ddp/none")
    assert (fsdp["wrapper"], fsdp["plan_row"]) == ("FSDP2", "fsdp/none")
    assert all(r["plan_gib"] > 0 and r["peak_gib"] is None for r in parsed.records)  # no CUDA peak on a CPU
