"""Launching: how many processes run one job, and where. Configuration, not code in the loop.

``launcher.nproc`` / ``launcher.nodes`` (configs/launcher/) size a job; train.py's task function calls `run`:

- A worker (torchrun's ``RANK`` is set, or a task of a multi-task ``srun`` step: SLURM / submitit, mapped to
  the same variables by `dyt.slurm.slurm_env`), or ``nproc == nodes == 1``: it trains in this process.
- ``nproc > 1`` otherwise: this job starts its own torchrun-style worker group through torch's elastic launch
  API (standalone rendezvous on localhost, a free port, no restarts). Each worker runs train.py with this job's
  overrides and ``hydra.run.dir=<this job's directory>``, so every point of a ``-m`` sweep gets its own group, one
  after another, in the sweep's directory. The parent waits and returns rank 0's summary.json; a finished run is
  skipped without starting anything. Stop signals (SIGINT, SIGTERM, SIGUSR1, SIGUSR2) are forwarded to the
  workers, which checkpoint; the parent then exits as they do (128 + N).
- ``nodes > 1`` needs a cluster launcher: ``-m hydra/launcher=dyt_slurm`` (configs/hydra/launcher/dyt_slurm.yaml)
  gives each job ``nodes`` nodes x ``nproc`` tasks, one rank per task.

Preemption under submitit (SLURM, or submitit_local): a run stopped by SIGUSR1/SIGUSR2 has checkpointed; then
`requeue_if_preempted` calls submitit's own handler for its preemption signal, which resubmits the same job
(Hydra's launcher ``checkpoint()``: the same overrides) and requeues it; the requeued job resumes the run.

Importing this module registers dyt's OmegaConf resolvers: a submitit job unpickles train.py's task function
(which refers to this module) before Hydra resolves the run directory's name (``${dyt.suffix:...}``) there.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
import uuid

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ErrorHandler
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from dyt.config import register_resolvers
from dyt.errors import ConfigError
from dyt.run import FINISHED, finished, train
from dyt.rundir import RunDir, read_summary
from dyt.slurm import slurm_env
from dyt.validate import validate

register_resolvers()

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")  # the parent forwards these
PREEMPT_SIGNALS = ("SIGUSR1", "SIGUSR2")  # a scheduler's warning: checkpoint, then come back (requeue)
SHUTDOWN_TIMEOUT_S = 300  # after forwarding a stop signal: time for the workers to checkpoint before SIGKILL


def worker_rank() -> int | None:
    """This process's rank when it is one of a job's workers (torchrun's RANK, or a task of a multi-task srun
    step); None for a process that is not (yet) part of a group."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return int(os.environ["SLURM_PROCID"])
    return None


def run(cfg, hc, script: str) -> dict:
    """Train this job's run (`hc`: Hydra's config of the job) in this process or in a worker group; its summary."""
    slurm_env()  # a SLURM task: RANK / WORLD_SIZE / ... before anything asks who is rank 0 (the run lock)
    lc = cfg.launcher
    if worker_rank() is not None or (lc.nproc == 1 and lc.nodes == 1):
        _check_world_size(lc)
        return train(cfg, hc.runtime.output_dir)
    if lc.nodes > 1:
        raise ConfigError(f"launcher.nodes={lc.nodes}: a multi-node job runs under a cluster launcher (python train.py "
                          f"-m ... hydra/launcher=dyt_slurm); on one machine use launcher.nodes=1")
    return spawn(cfg, hc, script)


def _check_world_size(lc) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = lc.nproc * lc.nodes
    if wanted > 1 and world != wanted and worker_rank() == 0:
        print(f"[dyt] warning: launcher.nodes x launcher.nproc = {lc.nodes} x {lc.nproc} but this job has {world} "
              f"processes; training with {world}", file=sys.stderr, flush=True)


def worker_argv(hc, script: str, run_dir: str) -> list[str]:
    """train.py's command line for one worker of this job: the same configs and task overrides, its run dir."""
    argv = [str(script)]
    for source in hc.runtime.config_sources:
        if source.schema == "file" and source.provider == "main":
            argv.append(f"--config-path={source.path}")
        elif source.schema == "file" and source.provider == "command-line":
            argv.append(f"--config-dir={source.path}")
    argv.append(f"--config-name={hc.job.config_name}")
    argv += list(hc.overrides.task)
    argv.append("hydra.run.dir=" + quote(run_dir))
    return argv


def quote(value: str) -> str:
    """A Hydra override value that stays one string (run dir names hold ',' and '=')."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def spawn(cfg, hc, script: str) -> dict:
    """Run this job as `launcher.nproc` local workers (torch elastic, as torchrun --standalone); rank 0's summary."""
    validate(cfg)  # a bad config: one line and exit 2 from this process, before any worker starts
    nproc, tc = cfg.launcher.nproc, cfg.trainer
    if tc.batch_size % (nproc * tc.grad_accum):  # the workers' own check, made before they start
        raise ConfigError(f"trainer.batch_size={tc.batch_size} is not divisible by launcher.nproc x trainer.grad_accum "
                          f"= {nproc} x {tc.grad_accum}")
    run_dir = os.path.abspath(hc.runtime.output_dir)
    if (summary := finished(run_dir, cfg)) is not None:
        return summary
    print(f"[dyt] launching {nproc} worker processes for {run_dir}", flush=True)
    start = time.time()
    stopped, failed = _elastic_launch(nproc, worker_argv(hc, script, run_dir))
    summary = read_summary(run_dir)
    if summary is not None and RunDir(run_dir).summary.stat().st_mtime < start - 1.0:
        summary = None  # an earlier attempt's record: this one wrote nothing
    if summary is not None and summary.get("status") in (*FINISHED, "interrupted"):
        return summary
    if stopped is not None:  # the workers did not get as far as recording it (e.g. stopped while starting)
        step = (summary or {}).get("step", 0)
        return {"status": "interrupted", "step": step, "signal": stopped,
                "reason": f"signal {stopped}; resume with the same command"}
    if failed is None:
        raise RuntimeError(f"the workers of {run_dir} ended without a summary.json")
    rank, failure = failed
    error = _config_error(failure)
    if error is not None:
        raise error
    reason = (summary or {}).get("reason") or _message(failure)
    raise RuntimeError(f"worker rank {rank} of {run_dir} failed (exit code {failure.exitcode}): {reason}")


def _elastic_launch(nproc: int, argv: list[str]):
    """(stop signal name or None, (rank, ProcessFailure) or None) of one worker group running ``python argv``."""
    options = {"signals_to_handle": ",".join(STOP_SIGNALS), "shutdown_timeout": SHUTDOWN_TIMEOUT_S}
    known = {f.name for f in dataclasses.fields(LaunchConfig)}  # newer fields, where this torch has them
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"dyt-{uuid.uuid4().hex[:12]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          **{k: v for k, v in options.items() if k in known})

    def raise_stop(signum, frame):  # what torch's agent does for the signals it handles: shut the workers down
        raise SignalException(f"process {os.getpid()} got signal {signum}", sigval=signal.Signals(signum))

    signals = [getattr(signal, s) for s in STOP_SIGNALS if hasattr(signal, s)]
    saved_handlers = {s: signal.getsignal(s) for s in signals}
    saved_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "TORCHELASTIC_SIGNALS_TO_HANDLE")}
    elastic_logs = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.distributed.launcher")]
    saved_levels = [log.level for log in elastic_logs]
    stopped = failed = None
    try:
        for s in signals:
            if signal.Signals(s).name in PREEMPT_SIGNALS:  # older torch only handles SIGTERM/INT/HUP/QUIT itself
                signal.signal(s, raise_stop)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: nproc processes share the cores
        for log in elastic_logs:
            log.setLevel(logging.WARNING)
        elastic_launch(config, sys.executable)(*argv)
    except SignalException as e:
        stopped = signal.Signals(e.sigval).name
    except ChildFailedError as e:
        failed = reported_failure(e.failures)
        code = failed[1].exitcode
        if code > 128 and code - 128 in {s.value for s in signal.Signals}:  # a worker stopped by a signal itself
            stopped = signal.Signals(code - 128).name
    finally:
        for s, h in saved_handlers.items():
            signal.signal(s, h)
        for k, v in saved_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        for log, level in zip(elastic_logs, saved_levels):
            log.setLevel(level)
    return stopped, failed


def reported_failure(failures: dict) -> tuple[int, object]:
    """(rank, failure) that caused a worker group to fail: a worker's config error (exit 2) first, then rank 0's own
    failure, then the earliest. A negative exit code is the agent's SIGTERM to the peers of the worker that failed:
    a consequence, never the cause (under load rank 1's config error can end rank 0 before rank 0 raises its own)."""
    own = {rank: f for rank, f in failures.items() if f.exitcode >= 0} or failures
    config = sorted(rank for rank, f in own.items() if f.exitcode == 2)
    if config:
        return config[0], own[config[0]]
    if 0 in own:
        return 0, own[0]
    return min(own.items(), key=lambda item: item[1].timestamp)


def _message(failure) -> str:
    message = failure.message
    return str(message.get("message", message) if isinstance(message, dict) else message)


def _config_error(failure) -> ConfigError | None:
    """A worker's ConfigError (exit code 2, its message in torch elastic's error file), re-raised in the parent."""
    if failure.exitcode != 2:
        return None
    name, _, text = _message(failure).partition(": ")
    classes = {}
    todo = [ConfigError]
    while todo:
        cls = todo.pop()
        classes[cls.__name__] = cls
        todo += cls.__subclasses__()
    cls = classes.get(name)
    return cls(text) if cls is not None and text else ConfigError("a worker stopped with a config error (above)")


def record_worker_error(error: BaseException) -> None:
    """In a worker of torch elastic (ours or torchrun): the error's one line for the agent (its error file)."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        ErrorHandler().record_exception(error)


def requeue_if_preempted(summary: dict) -> None:
    """A submitit job whose run was stopped by SIGUSR1/SIGUSR2 (and checkpointed): submitit's handler for its
    preemption signal resubmits the same job and requeues it (rank 0: `scontrol requeue`, or the local executor's
    restart; then it exits). Anywhere else, or for another signal, nothing happens."""
    if summary.get("status") != "interrupted" or summary.get("signal") not in PREEMPT_SIGNALS:
        return
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return
    try:
        import submitit
        env = submitit.JobEnvironment()
        sig = env._usr_sig()
    except Exception:  # noqa: BLE001 - not a submitit job after all, or another submitit version
        return
    handler = signal.getsignal(sig)
    if callable(handler) and getattr(handler, "__name__", "") == "checkpoint_and_try_requeue":
        print(f"[dyt] {summary['signal']}: checkpointed at step {summary.get('step')}; asking submitit to requeue",
              flush=True)
        handler(sig, None)  # rank 0 requeues and exits; other ranks return and exit 128 + N
