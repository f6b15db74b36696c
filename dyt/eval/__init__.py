"""Evaluating runs: the validation loop (shared with the trainer), loading a finished run once (`load_run`) and its
task's metrics (`evaluate_run`). A family's own evaluations (DiT's FID, LLaMA's lm-eval) start from `load_run`."""
from dyt.eval.load import LoadedRun, load_run, run_checkpoint, run_config
from dyt.eval.loop import evaluate
from dyt.eval.metrics import evaluate_run

__all__ = ["LoadedRun", "evaluate", "evaluate_run", "load_run", "run_checkpoint", "run_config"]
