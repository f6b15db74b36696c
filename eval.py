"""Re-evaluate a finished (or running) run from its directory: its config, its latest checkpoint.

    python eval.py runs/vit_pico-dyt-digits-s0
    python eval.py runs/vit_pico-dyt-digits-s0 data.root=/other/copy trainer.device=cpu
    python eval.py run_dir=runs/vit_pico-dyt-digits-s0 --checkpoint runs/.../checkpoints/step_00000100.pt

Prints the metrics and writes them to <run dir>/eval.json. Extra key=value arguments override the run's config.
"""
import argparse
import sys

from dyt.errors import ConfigError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory (or run_dir=<dir>)")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the run's latest)")
    args = p.parse_args(argv)
    run_dir = args.run_dir.removeprefix("run_dir=")

    from dyt.run import evaluate_run
    try:
        metrics = evaluate_run(run_dir, args.overrides, args.checkpoint)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
