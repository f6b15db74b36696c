"""Re-evaluate a finished (or running) run from its directory: its config, its latest checkpoint.

    python eval.py runs/vit_pico-dyt-digits-s0
    python eval.py runs/vit_pico-dyt-digits-s0 data.root=/other/copy trainer.device=cpu
    python eval.py run_dir=runs/vit_pico-dyt-digits-s0 --checkpoint runs/.../checkpoints/step_00000100.pt

Prints the metrics and writes them to <run dir>/eval.json. Extra key=value arguments override the run's config.
A DiT run also computes FID of N generated samples, EMA weights when kept, with the run's
sampler settings (model.diffusion.*; the paper's FID-50K: 250 DDPM steps, no guidance):
    python eval.py runs/dit_tiny-dyt-digits-s0 --fid 1000                 # reference: the val split, cached
    python eval.py <imagenet run> --fid 50000 --fid-ref VIRTUAL_imagenet256_labeled.npz   (under torchrun: all ranks)
A language-model run also takes zero-shot lm-eval tasks (a task list name such as paper15, or task names):
    python eval.py runs/llama_tiny-dyt-pydoc-s0 --tasks paper15 [--limit 100] [--include-path my_tasks/]
"""
import argparse
import os
import sys

from dyt.errors import ConfigError
from dyt.files import write_json
from dyt.rundir import RunDir, read_eval


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory (or run_dir=<dir>)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the run's latest)")
    p.add_argument("--tasks", default=None, help="LM runs: comma-separated lm-eval tasks or lists (paper15)")
    p.add_argument("--include-path", default=None, help="a folder of extra lm-eval task YAMLs (local tasks)")
    p.add_argument("--limit", type=float, default=None, help="lm-eval: examples per task (for quick checks)")
    p.add_argument("--fid", type=int, default=None, metavar="N", help="DiT runs: FID of N generated samples")
    p.add_argument("--fid-ref", default=None, help="reference statistics .npz (default: data.fid_ref, else the val split)")
    p.add_argument("--fid-batch", type=int, default=100, help="samples per generation batch (per rank)")
    p.add_argument("--fid-ref-count", type=int, default=10_000, help="real images for computed reference statistics")
    p.add_argument("--fid-weights", choices=("auto", "ema", "raw"), default="auto",
                   help="auto: the EMA when kept (val_ema/fid, the paper's), else the raw weights (val/fid)")
    p.add_argument("--fid-method", choices=("sqrtm", "eigh"), default="sqrtm",
                   help="sqrtm: ADM / pytorch-fid's computation; eigh: the same trace, ~5x faster on a CPU")
    args = p.parse_intermixed_args(argv)  # key=value overrides may follow the options
    run_dir = args.run_dir.removeprefix("run_dir=")

    from dyt.run import evaluate_run
    try:
        previous = read_eval(run_dir)
        metrics = evaluate_run(run_dir, args.overrides, args.checkpoint)
        if args.fid is not None:
            from dyt.tasks.diffusion_eval import run_fid
            metrics.update(run_fid(run_dir, args.fid, args.overrides, args.checkpoint, args.fid_ref, args.fid_batch,
                                   args.fid_ref_count, method=args.fid_method, weights=args.fid_weights))
        if args.tasks:
            from dyt.lm_eval import run_lm_eval
            metrics.update(run_lm_eval(run_dir, args.tasks.split(","), args.include_path, args.limit, args.checkpoint))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        # FIDs of the same checkpoint measured by earlier calls (raw, then EMA weights) are kept
        same = previous.get("checkpoint") == metrics.get("checkpoint")
        write_json(RunDir(run_dir).eval, {**(previous if same else {}), **metrics})
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
