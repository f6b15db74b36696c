"""Zero-shot evaluation of our LLaMA runs with the lm-eval harness (eval.py --tasks).

``run_lm_eval`` loads a run directory's checkpoint on the run's device and precision (overrides such as
``trainer.device=cuda`` / ``trainer.precision=bf16`` change them) and evaluates a task list (lm_tasks.py:
``paper15`` = Table 4's 15 tasks). Under ``torchrun --nproc_per_node N eval.py ...`` the ranks share the requests
(lm_model.py); a run trained sharded (trainer.parallel=fsdp|hsdp) is evaluated sharded the same way, so a model that
needs several GPUs to train is evaluated on them. Extra task YAML folders (``include_path``) make local, offline
task files work the same way.
"""
from __future__ import annotations

from typing import Optional

from dyt import distributed as D
from dyt.data.tokenizers import load_tokenizer
from dyt.errors import ConfigError
from dyt.eval import load_run
from dyt.families.llama.lm_model import generate, lm_base, make_lm
from dyt.families.llama.lm_tasks import LOCAL_TASKS, check_tasks, hub_dataset, scores, task_names
from dyt.files import write_json
from dyt.ranges import COUNT
from dyt.rundir import RunDir

__all__ = ["generate", "lm_eval_from_args", "load_run_model", "make_lm", "run_lm_eval"]


def load_run_model(run_dir, checkpoint: Optional[str] = None, device: str = "cpu"):
    """(model, tokenizer, cfg) of an LM run directory (its config.yaml and latest checkpoint), whole, on `device`."""
    with load_run(run_dir, checkpoint=checkpoint, device=device, weights=("model",)) as run:
        _check_family(run)
        return run.model(), load_tokenizer(run.cfg.data), run.cfg


def _check_family(run) -> None:
    if run.family.name != "llama":
        raise ConfigError(f"{run.run_dir} is a {run.family.name} run; zero-shot tasks need a language model")


def _network_error(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if isinstance(e, (ConnectionError, TimeoutError)) or "Connect" in name or "Timeout" in name \
                or name in ("OfflineModeIsEnabled", "LocalEntryNotFoundError"):
            return True
        e = e.__cause__ or e.__context__
    return False


def evaluate_tasks(lm, names: list[str], manager, limit: Optional[float] = None) -> dict:
    """lm-eval's simple_evaluate, with an unreachable hub as one clear error."""
    from lm_eval import simple_evaluate
    try:
        return simple_evaluate(model=lm, tasks=names, num_fewshot=0, limit=limit, task_manager=manager,
                               log_samples=False, bootstrap_iters=0)
    except Exception as e:
        if not _network_error(e):
            raise
        hub = [n for n in names if manager is None or hub_dataset(manager, n)] or names
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:150]
        raise ConfigError(f"could not download the data of lm-eval task(s) {', '.join(hub)} ({type(e).__name__}: "
                          f"{line}); {LOCAL_TASKS}") from None


def run_lm_eval(run_dir, tasks: list[str], include_path: Optional[str] = None, limit: Optional[float] = None,
                checkpoint: Optional[str] = None, batch_size: int = 8, overrides: list[str] = ()) -> dict:
    """Zero-shot lm-eval scores of a run: {'lm_eval/<task>/<metric>': value, 'lm_eval/avg': see lm_tasks.scores}.
    `tasks` may name task lists (paper15). Task names and (offline) the availability of their data are checked
    before the model is loaded. On the run's trainer.device and trainer.precision (`overrides` apply), in batches
    of `batch_size` requests per process; every process of a torchrun group takes part, rank 0 writes lm_eval.json."""
    lm_base()
    from lm_eval.tasks import TaskManager
    if not COUNT.accepts(batch_size):
        raise ConfigError(f"--batch-size {batch_size}: must be an integer >= 1")

    names = task_names(tasks)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    check_tasks(names, manager)
    with load_run(run_dir, overrides, checkpoint, weights=("model",), shard=True) as run:
        _check_family(run)
        cfg = run.cfg
        lm = make_lm(run.model(), load_tokenizer(cfg.data), batch_size, max_length=cfg.data.seq_len,
                     add_bos=bool(cfg.data.get("add_bos", False)), dtype=None if run.sharded else run.dtype,
                     lockstep=run.sharded)
        # lm-eval returns its results on (local) rank 0 only; every rank computed the same
        out = scores(D.broadcast_object(evaluate_tasks(lm, names, manager, limit))["results"])
        if run.dist.is_main:
            write_json(RunDir(run_dir).lm_eval, out)
    return out


def lm_eval_from_args(run_dir, a, overrides, checkpoint) -> dict:
    """eval.py's ``--tasks`` (the options: dyt.families.llama.config.lm_eval_arguments)."""
    return run_lm_eval(run_dir, a.tasks.split(","), a.include_path, a.limit, checkpoint, a.batch_size, overrides)
