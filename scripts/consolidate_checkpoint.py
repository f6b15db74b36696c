"""Turn a sharded (DCP) checkpoint into one single-file checkpoint, in the layout DDP and single-process runs write.

    python scripts/consolidate_checkpoint.py runs/<run> --out final.pt        # the run's latest checkpoint
    python scripts/consolidate_checkpoint.py runs/<run>/checkpoints/step_00047684 --out llama7b-dyt.pt
    python eval.py runs/<run> --checkpoint llama7b-dyt.pt                     # evaluates like any checkpoint

The output holds ``model`` (full tensors), ``optimizer`` (``optimizer.state_dict()`` layout), ``ema`` when kept,
``step``, ``rng``, ``scaler`` and ``window``, with a ``.sha256`` beside it; it is written atomically. One process,
no process group; it needs memory for the full model and optimizer state. ``--weights-only`` keeps just the model and EMA weights (for sharing; not resumable).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dyt.checkpoint import load_checkpoint, write_checkpoint_file  # noqa: E402
from dyt.errors import ConfigError  # noqa: E402
from dyt.rundir import RunDir  # noqa: E402


def resolve(source: Path) -> Path:
    """A DCP checkpoint directory from a run directory (its newest checkpoint) or a checkpoint directory."""
    if (source / ".metadata").is_file():
        return source
    found = RunDir(source).checkpoints()
    if not found:
        raise ConfigError(f"{source} is neither a DCP checkpoint directory nor a run directory with checkpoints")
    if not found[-1].is_dir():
        raise ConfigError(f"the newest checkpoint of {source} is already a single file: {found[-1]}")
    return found[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a run directory or a DCP checkpoint directory (checkpoints/step_XXXXXXXX)")
    p.add_argument("--out", required=True, help="the single-file checkpoint to write (+ its .sha256)")
    p.add_argument("--weights-only", action="store_true", help="model (and EMA) weights only: smaller, not resumable")
    args = p.parse_args(argv)
    try:
        ckpt = resolve(Path(args.source))
        keys = ("model", "ema") if args.weights_only else None
        state = load_checkpoint(ckpt, keys=keys)
        if args.weights_only:
            state = {k: v for k, v in state.items() if k in ("model", "ema", "step")}
        out = Path(args.out)
        write_checkpoint_file(state, out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(v.numel() for v in state["model"].values())
    print(f"{ckpt} -> {out} (step {state['step']}, {n:,} model values"
          f"{', EMA' if 'ema' in state else ''}{', optimizer' if 'optimizer' in state else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
