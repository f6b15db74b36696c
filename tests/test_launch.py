"""Launching (dyt/launch.py, configs/launcher/, configs/hydra/launcher/): a worker group per job with
launcher.nproc, SLURM's environment as ranks and rendezvous, the submitit launcher (submitit_local here; the Table 4
SLURM config composed), and a preemption signal that checkpoints, requeues and resumes."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import OFFLINE_ENV, ROOT, TINY, compose, run_script
from dyt import launch
from dyt.slurm import expand_counts, expand_nodelist, first_host, slurm_env
from dyt.errors import ConfigError
from dyt.logging import read_jsonl
from dyt.run import train

CPU = [*TINY, "trainer.device=cpu"]


def tiny(**changes) -> list[str]:
    """CPU with some values changed (key=value once each: sweeps name runs by their overrides)."""
    changes = {k.replace("__", "."): v for k, v in changes.items()}
    return [o for o in CPU if o.split("=")[0] not in changes] + [f"{k}={v}" for k, v in changes.items()]


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def losses(run_dir):
    return [(e["step"], e["split"], e.get("train/loss", e.get("val/loss")))
            for e in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in e or "val/loss" in e]


def sweep_points(sweep_dir):
    return sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


# --- SLURM's environment -------------------------------------------------------------------------------------
SRUN = {"SLURM_PROCID": "9", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
        "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4321987",
        "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_NTASKS": "16"}


def test_slurm_env_gives_ranks_and_rendezvous(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no scontrol: our parser
    env = dict(SRUN)
    set_ = slurm_env(env)
    assert set_ == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8",
                    "MASTER_ADDR": "gpu07", "MASTER_PORT": str(10000 + 4321987 % 20000)}
    assert {k: env[k] for k in set_} == set_
    # every task of the job derives the same rendezvous
    other = {**SRUN, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    slurm_env(other)
    assert (other["MASTER_ADDR"], other["MASTER_PORT"]) == (env["MASTER_ADDR"], env["MASTER_PORT"])
    assert other["RANK"] == "0"


def test_slurm_env_leaves_other_setups_alone(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    torchrun = {**SRUN, "RANK": "3", "WORLD_SIZE": "4"}
    assert slurm_env(torchrun) == {} and torchrun["RANK"] == "3"  # torchrun inside an allocation wins
    batch_shell = {k: v for k, v in SRUN.items() if not k.startswith("SLURM_STEP")}
    batch_shell["SLURM_PROCID"] = "0"
    assert slurm_env(batch_shell) == {} and "RANK" not in batch_shell  # sbatch's script itself: one process
    one_task = {**SRUN, "SLURM_STEP_NUM_TASKS": "1"}
    assert slurm_env(one_task) == {}  # a single task: it may start its own worker group (launcher.nproc)
    given = {**SRUN, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    slurm_env(given)
    assert (given["MASTER_ADDR"], given["MASTER_PORT"]) == ("10.0.0.1", "29500")


@pytest.mark.parametrize("nodelist,hosts", [
    ("node07", ["node07"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("node[8-11]", ["node8", "node9", "node10", "node11"]),
    ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("gpu-st-p4d-24xlarge-[1-2]", ["gpu-st-p4d-24xlarge-1", "gpu-st-p4d-24xlarge-2"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_nodelist_errors_and_task_counts(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="set MASTER_ADDR"):
        first_host("node[a-c]")
    assert expand_counts("8(x2),4") == [8, 8, 4] and expand_counts("2") == [2]


def test_first_host_asks_scontrol_when_there(tmp_path, monkeypatch):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho login-from-scontrol\necho other\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert first_host("node[01-02]") == "login-from-scontrol"


# --- configs -------------------------------------------------------------------------------------------------
def test_launcher_defaults_and_validation():
    from dyt.validate import validate
    cfg = compose()
    assert (cfg.launcher.nproc, cfg.launcher.nodes) == (1, 1)
    with pytest.raises(ConfigError, match=r"launcher.nproc=0: must be an integer >= 1"):
        validate(compose(["launcher.nproc=0"]))


def test_multi_node_needs_a_cluster_launcher():
    class Hc:  # what run() reads of Hydra's job config before it refuses
        runtime = type("R", (), {"output_dir": "/nonexistent"})
    with pytest.raises(ConfigError, match="launcher.nodes=2: a multi-node job runs under a cluster launcher"):
        launch.run(compose(["launcher.nodes=2", "launcher.nproc=2"]), Hc, "train.py")


def test_run_dir_value_survives_hydra_parsing():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    path = "/runs/vit_pico-dyt-digits-s0_model.kwargs.depth=2,optim.lr=0.1 it's"
    o = OverridesParser.create().parse_override("hydra.run.dir=" + launch.quote(path))
    assert o.value() == path


def _compose_hydra(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dyt.families import setup
    setup()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=True)


def test_table4_7b_slurm_config():
    """`launcher=slurm_64x8` (the released 7B job): 64 nodes x 8 GPUs, one task per GPU, requeued on preemption and
    at the time limit."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from omegaconf import OmegaConf
    cfg = _compose_hydra(["experiment=table4_7b", "norm=dyt", "launcher=slurm_64x8", "hydra.launcher.partition=gpu"])
    p = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert p["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (p["nodes"], p["tasks_per_node"], p["gpus_per_node"]) == (64, 8, 8)
    assert (cfg.launcher.nodes, cfg.launcher.nproc) == (64, 8) and cfg.model.name == "llama_7b"
    assert p["partition"] == "gpu" and p["timeout_min"] == 2880 and p["cpus_per_task"] == 12
    assert p["signal_delay_s"] >= 120 and p["max_num_timeout"] >= 10  # time to checkpoint; requeued at the limit
    assert p["additional_parameters"] == {"exclusive": True}
    assert p["submitit_folder"] == "multirun/table4_7b/.submitit/%j" and p["name"] == "table4_7b"
    # the generic SLURM launcher follows the run's launcher section
    q = _compose_hydra(["hydra/launcher=dyt_slurm", "launcher.nodes=2", "launcher.nproc=4"]).hydra.launcher
    assert (q.nodes, q.tasks_per_node, q.gpus_per_node) == (2, 4, 4)


def test_requeue_is_a_no_op_outside_submitit(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    launch.requeue_if_preempted({"status": "interrupted", "signal": "SIGUSR1", "step": 3})  # returns, no exit


# --- worker groups (subprocesses) --------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_of_two_process_jobs_then_rerun_skips(tmp_path):
    args = ["python", str(ROOT / "train.py"), "-m", "norm=layernorm,dyt", "launcher.nproc=2", *CPU]
    out = run_script(args, cwd=tmp_path)
    assert out.stdout.count("[dyt] launching 2 worker processes") == 2
    sweep = tmp_path / "multirun/sweep"
    points = sweep_points(sweep)
    assert len(points) == 2 and not any("launcher" in p for p in points)  # the job size is not in the name
    for p in points:
        s = summary(sweep / p)
        assert s["status"] == "completed" and s["world_size"] == 2 and s["step"] == 12
    again = run_script(args, cwd=tmp_path)
    assert again.stdout.count("already completed; skipping") == 2 and "launching" not in again.stdout


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """The reference: the same tiny run under torchrun --standalone --nproc_per_node=2."""
    d = tmp_path_factory.mktemp("torchrun")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    run_script([torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *CPU,
                f"hydra.run.dir={d}/run"], cwd=d)
    return d / "run"


@pytest.mark.slow
def test_nproc_2_equals_torchrun(tmp_path, torchrun_run):
    run_script(["python", str(ROOT / "train.py"), "launcher.nproc=2", *CPU, f"hydra.run.dir={tmp_path}/run"],
               cwd=tmp_path)
    assert summary(tmp_path / "run")["world_size"] == 2
    assert losses(tmp_path / "run") == losses(torchrun_run)  # every logged loss, exactly


def _free_slurm_job_id() -> int:
    """A job id whose derived MASTER_PORT (10000 + id % 20000) is free on this machine."""
    for job in range(7919, 20000, 7919 // 3):
        with socket.socket() as s:
            try:
                s.bind(("localhost", 10000 + job % 20000))
                return job
            except OSError:
                continue
    pytest.skip("no free port in 10000..29999")


@pytest.mark.slow
def test_srun_tasks_equal_torchrun(tmp_path, torchrun_run):
    """Two processes started as `srun --ntasks=2` would (SLURM variables only): ranks and rendezvous from SLURM."""
    job = _free_slurm_job_id()
    cmd = [sys.executable, str(ROOT / "train.py"), "launcher.nproc=2", *CPU, f"hydra.run.dir={tmp_path}/run"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))}
    procs = []
    for rank in (0, 1):
        env = {**base, **OFFLINE_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": str(job),
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_STEP_NUM_TASKS": "2",
               "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": "2"}
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "launching" not in "".join(outs)  # tasks are the workers: no group of their own
    assert summary(tmp_path / "run")["world_size"] == 2
    assert losses(tmp_path / "run") == losses(torchrun_run)


@pytest.mark.slow
def test_the_reported_failure_is_the_cause_not_the_agents_sigterm():
    """Rank 1's config error ended the group; the agent then SIGTERMed rank 0 (exit -15): report rank 1's error."""
    from types import SimpleNamespace as F
    failures = {0: F(exitcode=-15, timestamp=2), 1: F(exitcode=2, timestamp=1)}
    assert launch.reported_failure(failures) == (1, failures[1])
    crash = {0: F(exitcode=-15, timestamp=2), 1: F(exitcode=1, timestamp=1), 2: F(exitcode=1, timestamp=3)}
    assert launch.reported_failure(crash) == (1, crash[1])  # the earliest own failure
    both = {0: F(exitcode=1, timestamp=5), 1: F(exitcode=1, timestamp=1)}
    assert launch.reported_failure(both) == (0, both[0])  # rank 0's own failure first, as before
    killed = {0: F(exitcode=-9, timestamp=3), 1: F(exitcode=-15, timestamp=4)}
    assert launch.reported_failure(killed) == (0, killed[0])


def test_worker_group_config_error_is_one_line_before_any_worker_starts(tmp_path):
    out = run_script(["python", str(ROOT / "train.py"), "launcher.nproc=2", *tiny(trainer__batch_size=63),
                      f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "error: trainer.batch_size=63 is not divisible by launcher.nproc x trainer.grad_accum = 2 x 1"]
    assert "launching" not in out.stdout  # refused by the launching process (was: after the workers started)


# --- preemption ------------------------------------------------------------------------------------------------
def _wait_for_checkpoint(ckpts, proc, min_step=10, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(int(p.name[5:13]) >= min_step for p in ckpts.glob("step_*.pt")):
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint at step >= {min_step} in {ckpts}")


LONG = tiny(trainer__max_steps=100, trainer__ckpt_every=5, trainer__eval_every=50, trainer__log_every=5)


@pytest.mark.slow
def test_sigusr1_checkpoints_and_the_same_command_resumes(tmp_path, capsys):
    """SIGUSR1 to `python train.py`: checkpoint, exit 128 + 10; the same overrides then resume (trained here)."""
    cmd = [sys.executable, str(ROOT / "train.py"), *LONG, f"hydra.run.dir={tmp_path}/run"]
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(tmp_path / "run/checkpoints", proc)
    proc.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGUSR1.value, out[-2000:]
    s = summary(tmp_path / "run")
    assert s["status"] == "interrupted" and s["signal"] == "SIGUSR1" and s["step"] < 100
    assert (tmp_path / f"run/checkpoints/step_{s['step']:08d}.pt").exists()  # the step it stopped at
    capsys.readouterr()
    train(compose(LONG), tmp_path / "run")  # the same overrides, nothing added
    again = capsys.readouterr().out
    assert f"resumed from {tmp_path}/run/checkpoints/step_{s['step']:08d}.pt at step {s['step']}" in again
    assert summary(tmp_path / "run")["status"] == "completed"


@pytest.fixture(scope="module")
def submitit_sweep(tmp_path_factory):
    """One submitit_local sweep of two jobs (norm=layernorm,dyt; each job starts an interpreter, so one sweep serves
    both tests below) whose DyT job gets SIGUSR1 after a checkpoint: (sweep dir, DyT run dir, exit code, output)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    tmp = tmp_path_factory.mktemp("submitit")
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "norm=layernorm,dyt", "hydra/launcher=submitit_local", *LONG]
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep = tmp / "multirun/sweep"
    deadline = time.time() + 120
    while time.time() < deadline and not list(sweep.glob("vit_pico-dyt-*/checkpoints")):
        time.sleep(0.1)
    run_dir = next(sweep.glob("vit_pico-dyt-*"))
    _wait_for_checkpoint(run_dir / "checkpoints", proc)
    task_pid = int((run_dir / ".lock").read_text().split()[0])  # the job's task: the run's owner
    os.kill(task_pid, signal.SIGUSR1)
    out = proc.communicate(timeout=240)[0]
    return sweep, run_dir, proc.returncode, out


@pytest.mark.slow
def test_submitit_local_sweep(submitit_sweep):
    sweep, _, code, out = submitit_sweep
    assert code == 0, out[-3000:]
    points = sweep_points(sweep)
    assert [p.split("-s0_")[0] for p in points] == ["vit_pico-dyt-digits", "vit_pico-layernorm-digits"]
    for p in points:
        assert summary(sweep / p)["status"] == "completed"
        # the results in the sweep's own output, though each point ran in a submitit process (was: nothing)
        assert f"[dyt]   completed: {p}: best val/top1=" in out
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # two submitit jobs


@pytest.mark.slow
def test_submitit_preempted_job_requeues_and_resumes(submitit_sweep):
    """SIGUSR1 to a submitit job: the trainer checkpoints, submitit's handler resubmits the same job (its
    checkpoint() protocol; `scontrol requeue` on SLURM, a restart under submitit_local) and the run resumes."""
    sweep, run_dir, code, out = submitit_sweep
    assert code == 0, out[-3000:]
    log = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_0_log.out"))
    assert "asking submitit to requeue" in log and "Requeued job" in log, log[-3000:]
    assert "resumed from" in log
    s = summary(run_dir)
    assert s["status"] == "completed" and s["step"] == 100


def _rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the workers below `parent` (torchrun's children), read from /proc."""
    found = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in open(f"/proc/{p}/environ").read().split("\0") if "=" in kv)
            stat = open(f"/proc/{p}/stat").read().split()
        except OSError:
            continue
        if "RANK" in env and "TORCHELASTIC_RUN_ID" in env and int(stat[3]) == parent:
            found[int(env["RANK"])] = int(p)
    return found


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """A preemption signal may reach one rank only: the ranks agree at each step's all-reduce, so both checkpoint
    after the same step and exit (a rank that stopped alone would wait forever in the checkpoint's collective)."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *LONG,
                             f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_checkpoint(tmp_path / "run/checkpoints", proc)
        ranks = _rank_pids(proc.pid)
        assert set(ranks) == {0, 1}
        os.kill(ranks[1], signal.SIGUSR1)
        out = proc.communicate(timeout=120)[0]  # before the ranks agreed on stopping: a hang
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    s = summary(tmp_path / "run")
    assert s["status"] == "interrupted" and s["signal"] == "SIGUSR1" and s["step"] < 100, out[-2000:]
    assert (tmp_path / f"run/checkpoints/step_{s['step']:08d}.pt").exists()
