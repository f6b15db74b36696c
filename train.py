"""Train one run (or a sweep with -m) from the Hydra configs in configs/.

    python train.py                                   # the default: small ViT + DyT on digits
    python train.py model=convnext_t norm=layernorm data=fashion_mnist
    python train.py -m norm=layernorm,rmsnorm,dyt     # a sweep; re-running it resumes / skips finished runs
    torchrun --nproc_per_node=2 train.py ...          # DDP
    python train.py -m norm=rmsnorm,dyt launcher.nproc=8  # an 8-process group per run (dyt/launch.py)
    python train.py -m ... launcher=slurm_64x8            # SLURM: one 64 nodes x 8 GPUs job per run (submitit)

Exit codes: 0 completed or diverged; 2 a bad config (one line on stderr); 128 + N stopped by signal N after
checkpointing (the same command resumes); 1 a sweep with failed points (listed at its end).
"""
import os
import sys
from pathlib import Path

from dyt.hydra_errors import fast_help, one_line

CONFIGS = Path(__file__).resolve().parent / "configs"
if __name__ == "__main__" and {"--help", "-h"} & set(sys.argv[1:]):
    print(fast_help(CONFIGS))  # before torch and Hydra are imported: instant
    sys.exit(0)
if __name__ == "__main__" and int(os.environ.get("WORLD_SIZE", "1")) > 1 and {"-m", "--multirun"} & set(sys.argv[1:]):
    # every rank would run the whole sweep and its own worker groups: refused before anything starts
    if os.environ["RANK"] == "0":
        print("error: -m (a sweep) inside torchrun: run the sweep without torchrun and give each point its processes "
              "with launcher.nproc=N (python train.py -m ... launcher.nproc=N)", file=sys.stderr, flush=True)
    sys.exit(2)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from dyt import launch  # noqa: E402
from dyt.errors import ConfigError  # noqa: E402
from dyt.families import setup  # noqa: E402

setup()
if (launch.worker_rank() or 0) != 0:
    # torchrun / srun: only rank 0 writes into the shared run dir (no .hydra/ files, no train.log from other ranks)
    sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from dyt.sweep import exit_code, record_config_error  # heavy imports after Hydra has parsed the command line

    hc = HydraConfig.get()
    try:
        # here, or in a worker group of launcher.nproc processes started for this job (dyt/launch.py)
        summary = launch.run(cfg, hc, script=os.path.abspath(__file__))
    except ConfigError as e:
        if (launch.worker_rank() or 0) == 0:  # under torchrun: one line for the job, not one per rank
            print(f"error: {e}", file=sys.stderr, flush=True)
        launch.record_worker_error(e)  # a worker: the line for the process that started it
        in_sweep = hc.mode == RunMode.MULTIRUN
        record_config_error(hc.runtime.output_dir, e, in_sweep)
        if in_sweep:
            return None  # the sweep goes on; SweepReport lists this point at its end
        sys.exit(2)
    launch.requeue_if_preempted(summary)  # a submitit job stopped by SIGUSR1/2: checkpointed; it requeues itself
    code = exit_code(summary)
    if code:
        sys.exit(code)  # interrupted: stop here (a sweep too), the scheduler or the user re-runs to resume
    return summary.get(f"best/{summary.get('metric')}")  # the objective, for Hydra's optimizing sweepers


if __name__ == "__main__":
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its composition errors instead of printing them: one line here
    try:
        main()
    except Exception as e:
        if (line := one_line(e)) is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(2)
