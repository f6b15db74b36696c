"""Zero-shot evaluation of our LLaMA runs with the lm-eval harness, and greedy/temperature sampling.

``DytLM`` wraps one of our models and its tokenizer as an ``lm_eval.api.model.LM``; ``run_lm_eval`` loads a
run directory's checkpoint and evaluates a task list (``paper15`` = the 15-task zero-shot suite of Table 4).
Extra task YAML folders (``include_path``) make local, offline task files work the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from dyt.data.hub import hf_offline
from dyt.data.tokenizers import load_tokenizer
from dyt.errors import ConfigError
from dyt.eval import load_run
from dyt.files import write_json
from dyt.family import Evaluation
from dyt.rundir import RunDir

# Table 4 reports the average zero-shot score over 15 lm-eval tasks. The paper does not list them; this is our
# choice of 15 standard zero-shot lm-eval tasks (each scored by acc, or acc_norm where the harness reports it).
PAPER15 = ("arc_easy", "arc_challenge", "boolq", "copa", "hellaswag", "lambada_openai", "lambada_standard",
           "logiqa", "mathqa", "openbookqa", "piqa", "sciq", "social_iqa", "winogrande", "wsc273")
TASK_LISTS = {"paper15": PAPER15}


def _lm_base():
    try:
        from lm_eval.api.model import LM
    except ImportError as e:
        raise ConfigError("zero-shot evaluation needs lm-eval (pip install 'dyt[lm]')") from e
    return LM


@torch.no_grad()
def generate(model, tok, prompt: str, max_new_tokens: int = 100, temperature: float = 0.0, top_k: Optional[int] = None,
             until: tuple[str, ...] = (), context: int = 4096) -> str:
    """Continue `prompt`: greedy when temperature is 0, else sampling (top-k when given). No KV cache: tiny
    models and sanity checks only."""
    device = next(model.parameters()).device
    ids = tok.encode(prompt) or [tok.eos_id]
    start = len(ids)
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids[-context:]], device=device))[0, -1].float()
        logits = logits[: tok.vocab_size]  # never the padded (untrained) entries
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            if top_k:
                logits[logits < logits.topk(min(top_k, len(logits))).values[-1]] = -float("inf")
            nxt = int(torch.multinomial(F.softmax(logits / temperature, dim=-1), 1))
        if nxt == tok.eos_id:
            break
        ids.append(nxt)
        text = tok.decode(ids[start:])
        if any(u in text for u in until):
            return text[: min(text.index(u) for u in until if u in text)]
    return tok.decode(ids[start:])


def make_lm(model, tok, batch_size: int = 8, max_length: int = 2048, add_bos: bool = False):
    """Our model + tokenizer as an lm-eval LM (a function so lm-eval is imported only when used).

    Every request starts as a document did in training: after an EOS, then a BOS for runs packed with
    ``data.add_bos`` (BOS + document + EOS)."""
    LM = _lm_base()

    class DytLM(LM):
        def __init__(self):
            super().__init__()
            self.model, self.tok, self.bs, self.max_length = model.eval(), tok, batch_size, max_length
            self._device = next(model.parameters()).device
            self.doc_start = [tok.eos_id] + ([tok.bos_id] if add_bos else [])

        @torch.no_grad()
        def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
            """Sum of log p(continuation | context) and whether greedy decoding gives it, in padded batches."""
            out = []
            for i in range(0, len(pairs), self.bs):
                chunk = pairs[i: i + self.bs]
                seqs = [(ctx + cont)[-(self.max_length + 1):] for ctx, cont in chunk]
                width = max(len(s) - 1 for s in seqs)
                x = torch.full((len(seqs), width), self.tok.eos_id, dtype=torch.long)
                for j, s in enumerate(seqs):
                    x[j, : len(s) - 1] = torch.tensor(s[:-1])  # right padding: causal, so it never leaks left
                logp = F.log_softmax(self.model(x.to(self._device)).float(), dim=-1).cpu()
                for j, ((_, cont), s) in enumerate(zip(chunk, seqs)):
                    n = len(cont)
                    lp = logp[j, len(s) - 1 - n: len(s) - 1]  # positions predicting the continuation
                    target = torch.tensor(s[-n:])
                    out.append((float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())))
            return out

        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            # Trailing spaces of the context belong to the continuation (the harness's convention).
            n = len(context) - len(context.rstrip())
            context, continuation = context[: len(context) - n], context[len(context) - n:] + continuation
            ctx = self.tok.encode(context) if context else []
            return self.doc_start + ctx, self.tok.encode(continuation)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._score([self._encode_pair(*r.args[:2]) for r in requests])

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
            out = []
            for r in requests:
                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    self.tok.encode(r.args[0]), prefix_token=self.doc_start[-1], max_seq_len=self.max_length,
                    context_len=1)]
                out.append(sum(lp for lp, _ in self._score(windows)))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):
            out = []
            for r in requests:
                context, kw = r.args[0], dict(r.args[1]) if len(r.args) > 1 else {}
                until = kw.get("until") or []
                until = (until,) if isinstance(until, str) else tuple(until)
                out.append(generate(self.model, self.tok, context, int(kw.get("max_gen_toks", 128)),
                                    float(kw.get("temperature", 0.0)), until=until, context=self.max_length))
            return out

    return DytLM()


def load_run_model(run_dir, checkpoint: Optional[str] = None, device: str = "cpu"):
    """(model, tokenizer, cfg) of an LM run directory (its config.yaml and latest checkpoint)."""
    with load_run(run_dir, checkpoint=checkpoint, device=device, weights=("model",)) as run:
        if run.family.name != "llama":
            raise ConfigError(f"{run_dir} is a {run.family.name} run; zero-shot tasks need a language model")
        return run.model(), load_tokenizer(run.cfg.data), run.cfg


LOCAL_TASKS = ("point at a local copy: --include-path <folder of task YAMLs whose dataset_path is a local folder, "
               "or `json` with dataset_kwargs.data_files of local files>")
_FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def _task_config(manager, name: str) -> Optional[dict]:
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None) if entry is not None else None
    return cfg if isinstance(cfg, dict) else None


def _hub_dataset(task_cfg: Optional[dict]) -> Optional[str]:
    """The hub dataset a task downloads, or None when its data are local (a folder, local files) or unknown."""
    path = (task_cfg or {}).get("dataset_path")
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
    missing = [n for n in names if (ds := _hub_dataset(_task_config(manager, n))) and not _in_hf_cache(ds)]
    if missing:
        raise ConfigError(f"lm-eval task(s) {', '.join(missing)} need data from the Hugging Face hub, which is not "
                          f"available offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE) nor in the local cache; "
                          f"{LOCAL_TASKS}")


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
        hub = [n for n in names if manager is None or _hub_dataset(_task_config(manager, n))] or names
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:150]
        raise ConfigError(f"could not download the data of lm-eval task(s) {', '.join(hub)} ({type(e).__name__}: "
                          f"{line}); {LOCAL_TASKS}") from None


def run_lm_eval(run_dir, tasks: list[str], include_path: Optional[str] = None, limit: Optional[float] = None,
                checkpoint: Optional[str] = None, batch_size: int = 8, device: str = "cpu") -> dict:
    """Zero-shot lm-eval scores of a run: {'lm_eval/<task>/<metric>': value, 'lm_eval/avg': mean of each task's
    acc_norm (else acc)}. `tasks` may name task lists (paper15). Task names and (offline) the availability of
    their data are checked before the model is loaded."""
    _lm_base()
    from lm_eval.tasks import TaskManager

    names = [t for name in tasks for t in TASK_LISTS.get(name, (name,))]
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    check_tasks(names, manager)
    model, tok, cfg = load_run_model(run_dir, checkpoint, device)
    lm = make_lm(model, tok, batch_size, max_length=cfg.data.seq_len, add_bos=bool(cfg.data.get("add_bos", False)))
    res = evaluate_tasks(lm, names, manager, limit)
    out, main = {}, []
    for task, metrics in res["results"].items():
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and "stderr" not in k:
                out[f"lm_eval/{task}/{k.split(',')[0]}"] = float(v)
        score = next((metrics[k] for k in ("acc_norm,none", "acc,none") if k in metrics), None)
        if score is not None:
            main.append(float(score))
    if main:
        out["lm_eval/avg"] = sum(main) / len(main)
    write_json(RunDir(run_dir).lm_eval, out)
    return out


def _lm_eval_arguments(g) -> None:
    g.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks or lists (paper15)")
    g.add_argument("--include-path", default=None, help="a folder of extra lm-eval task YAMLs (local tasks)")
    g.add_argument("--limit", type=float, default=None, help="lm-eval: examples per task (for quick checks)")


LM_EVAL = Evaluation(
    "lm-eval", _lm_eval_arguments, requested=lambda a: bool(a.tasks),
    run=lambda run_dir, a, overrides, checkpoint: run_lm_eval(run_dir, a.tasks.split(","), a.include_path, a.limit,
                                                              checkpoint))
