"""Which lm-eval tasks a zero-shot evaluation runs and how their scores are averaged; checks made before a model
is loaded (unknown task names, hub data missing offline).

``paper15``: Table 4's average zero-shot score over the 15 tasks of the paper's Appendix A, OpenLLaMA's benchmark
(its README's evaluation table). Every task is scored with the metrics OpenLLaMA's table reports for it, and the
average is that table's "Average": the mean over all its task/metric rows (21 rows for the 15 tasks; this
reproduces the Average of all 8 models in OpenLLaMA's table to its 2 digits, where one metric per task does not).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from dyt.data.hub import hf_offline
from dyt.errors import ConfigError

# The metrics each task enters the average with (lm-eval's names). acc_norm (length-normalised) exists only for
# tasks whose choices differ in length; OpenLLaMA's table reports acc and acc_norm for those, em and f1 for ReCoRD.
PAPER15: dict[str, tuple[str, ...]] = {
    "anli_r1": ("acc",), "anli_r2": ("acc",), "anli_r3": ("acc",),
    "arc_challenge": ("acc", "acc_norm"), "arc_easy": ("acc", "acc_norm"),
    "boolq": ("acc",),
    "hellaswag": ("acc", "acc_norm"),
    "openbookqa": ("acc", "acc_norm"),
    "piqa": ("acc", "acc_norm"),
    "record": ("em", "f1"),
    "rte": ("acc",),
    "truthfulqa_mc1": ("acc",), "truthfulqa_mc2": ("acc",),
    "wic": ("acc",),
    "winogrande": ("acc",),
}
TASK_LISTS = {"paper15": tuple(PAPER15)}
# A task outside paper15 (e.g. a local one) is averaged with the first of these that it reports.
DEFAULT_METRICS = ("acc_norm", "acc", "exact_match", "em", "f1")


def task_names(tasks: list[str]) -> list[str]:
    """Task names with task lists (paper15) expanded."""
    return [t for name in tasks for t in TASK_LISTS.get(name, (name,))]


def average_metrics(task: str, reported: dict) -> tuple[str, ...]:
    """The metrics `task` enters the average with: PAPER15's for its tasks, else the first of DEFAULT_METRICS it
    reports. A task without them is an error (an average that silently left it out would not be the 15-task one)."""
    if task in PAPER15:
        wanted = PAPER15[task]
        missing = [m for m in wanted if m not in reported]
        if missing:
            raise ConfigError(f"lm-eval task {task} reported {', '.join(sorted(reported)) or 'no metrics'}, not "
                              f"{', '.join(missing)}, which the paper15 average uses")
        return wanted
    for m in DEFAULT_METRICS:
        if m in reported:
            return (m,)
    raise ConfigError(f"lm-eval task {task} reports none of the metrics an average can use "
                      f"({', '.join(DEFAULT_METRICS)}); it reported: {', '.join(sorted(reported)) or 'nothing'}")


def scores(results: dict) -> dict:
    """lm-eval's ``results`` ({task: {"acc,none": v, "acc_stderr,none": s, ...}}) as {'lm_eval/<task>/<metric>':
    value} plus 'lm_eval/avg': the mean over every task's average metrics (see `average_metrics`)."""
    out, averaged = {}, []
    for task, metrics in results.items():
        reported = {k.split(",")[0]: float(v) for k, v in metrics.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in k}
        out.update({f"lm_eval/{task}/{k}": v for k, v in reported.items()})
        averaged += [reported[m] for m in average_metrics(task, reported)]
    if averaged:
        out["lm_eval/avg"] = sum(averaged) / len(averaged)
    return out


LOCAL_TASKS = ("point at a local copy: --include-path <folder of task YAMLs whose dataset_path is a local folder, "
               "or `json` with dataset_kwargs.data_files of local files>")
_FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def _task_config(manager, name: str) -> Optional[dict]:
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None) if entry is not None else None
    return cfg if isinstance(cfg, dict) else None


def hub_dataset(manager, name: str) -> Optional[str]:
    """The hub dataset task `name` downloads, or None when its data are local (a folder, local files) or unknown."""
    path = (_task_config(manager, name) or {}).get("dataset_path")
    if not isinstance(path, str) or path in _FILE_BUILDERS or Path(path).expanduser().exists():
        return None
    return path


def _in_hf_cache(dataset: str) -> bool:
    """Whether `datasets` or the hub cache holds a copy of `dataset` (then offline mode can load it)."""
    try:
        from datasets.config import HF_DATASETS_CACHE
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return False
    return ((Path(HF_DATASETS_CACHE) / dataset.replace("/", "___")).exists()
            or (Path(HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}").exists())


def check_tasks(names: list[str], manager) -> None:
    """Unknown task names, and (offline) tasks whose hub data are not in the local cache: one line, at once."""
    index = manager.task_index
    unknown = [n for n in names if n not in index and "*" not in n]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s): {', '.join(unknown)} (task lists: {', '.join(TASK_LISTS)}; "
                          "`lm-eval ls tasks` lists the harness's tasks; add your own with --include-path)")
    if not hf_offline():
        return
    missing = [n for n in names if (ds := hub_dataset(manager, n)) and not _in_hf_cache(ds)]
    if missing:
        raise ConfigError(f"lm-eval task(s) {', '.join(missing)} need data from the Hugging Face hub, which is not "
                          f"available offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE) nor in the local cache; "
                          f"{LOCAL_TASKS}")
