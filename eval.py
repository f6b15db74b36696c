"""Re-evaluate a finished (or running) run from its directory: its config, its latest checkpoint.

    python eval.py runs/vit_pico-dyt-digits-s0
    python eval.py runs/vit_pico-dyt-digits-s0 data.root=/other/copy trainer.device=cpu
    python eval.py run_dir=runs/vit_pico-dyt-digits-s0 --checkpoint runs/.../checkpoints/step_00000100.pt

Prints the metrics and writes them to <run dir>/eval.json. Extra key=value arguments override the run's config.
A DiT run also computes FID of N generated samples, EMA weights when kept, with the run's
sampler settings (model.diffusion.*; the paper's FID-50K: 250 DDPM steps, no guidance):
    python eval.py runs/dit_tiny-dyt-digits-s0 --fid 1000                 # reference: the val split, cached
    python eval.py <imagenet run> --fid 50000 --fid-ref VIRTUAL_imagenet256_labeled.npz   (under torchrun: all ranks)
A language-model run also takes zero-shot lm-eval tasks (a task list name such as paper15, or task names), on the
run's device and precision (trainer.device=..., trainer.precision=... to change them), on every process of a
torchrun group (each scores a share of the requests; a run trained with FSDP/HSDP is evaluated sharded the same way):
    python eval.py runs/llama_tiny-dyt-pydoc-s0 --tasks paper15 [--limit 100] [--include-path my_tasks/]
    torchrun --standalone --nproc_per_node 8 eval.py <7B run> --tasks paper15 --batch-size 16
"""
import argparse
import os
import sys

from dyt import distributed as D
from dyt.errors import ConfigError
from dyt.eval import evaluate_run, run_config
from dyt.families import families, get_family
from dyt.files import fix_hint, os_error, write_json
from dyt.rundir import RunDir, read_eval


def parser() -> argparse.ArgumentParser:
    """The common options, then each family's evaluations as an option group (``Family.evals``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory (or run_dir=<dir>)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the run's latest)")
    seen = set()
    for family in families().values():
        for ev in family.evals:
            if ev.name not in seen:
                seen.add(ev.name)
                ev.add_arguments(p.add_argument_group(f"{ev.name} ({family.name} runs)"))
    return p


def main(argv=None) -> int:
    args = parser().parse_intermixed_args(argv)  # key=value overrides may follow the options
    run_dir = args.run_dir.removeprefix("run_dir=")
    try:
        previous = read_eval(run_dir)
        cfg = run_config(run_dir, args.overrides)
        family = get_family(cfg.model.family)
        asked = [ev for f in families().values() for ev in f.evals if ev.requested(args)]
        for ev in asked:
            if ev not in family.evals:
                owners = ", ".join(f.name for f in families().values() if ev in f.evals)
                raise ConfigError(f"{ev.name} applies to {owners} runs; {run_dir} is a {family.name} run")
        D.init_distributed(cfg.trainer.device)  # under torchrun: one process group for every evaluation below
        metrics = evaluate_run(run_dir, args.overrides, args.checkpoint, save=False)
        for ev in asked:
            metrics.update(ev.run(run_dir, args, args.overrides, args.checkpoint))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        D.shutdown()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    for k, v in metrics.items():  # printed first: a run directory that cannot be written loses nothing computed
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    # FIDs of the same checkpoint measured by earlier calls (raw, then EMA weights) are kept
    same = previous.get("checkpoint") == metrics.get("checkpoint")
    path = RunDir(run_dir).eval
    try:
        write_json(path, {**(previous if same else {}), **metrics})
    except OSError as e:
        print(f"error: could not save the metrics above to {path}: {os_error(e)}; {fix_hint(e, 'run it again')}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
