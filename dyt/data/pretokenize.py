"""The engine of ``scripts/pretokenize.py``: a corpus's parts (`dyt.data.text.document_parts`) tokenized into
token shards (`dyt.data.shards`) by a pool of processes, one part per process at a time, with progress.

The pool's processes are forked where the platform can (the tokenizer and data config are inherited, not
pickled); each part's shards are written by `dyt.data.shards.write_part`, so the result does not depend on how
many processes there are. With a token cap, parts after the finished ones that reach it are not started, and
those running are stopped.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue
import time

from dyt.data.shards import read_part, token_dtype, write_part
from dyt.data.text import document_ids
from dyt.data.tokenizers import vocab_hash
from dyt.progress import Progress

SPLITS = ("val", "train")
# the data config keys that decide which documents each split holds
SOURCE_KEYS = ("source", "hub_id", "hub_config", "root", "text_column", "train_split", "val_split", "val_fraction",
               "val_docs")


# --- one part, in a worker process (or in this one with --workers 1) --------------------------------------------
_job: dict = {}


def _init(job: dict) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker
    _job.clear()
    _job.update(job)


def _report(n: int) -> None:
    """Tokens done, sent to the parent at most twice a second (a worker) or counted at once (in-process)."""
    if "progress" in _job:
        _job["progress"](n)
        return
    _job["pending"] = _job.get("pending", 0) + n
    if time.monotonic() - _job.get("sent", 0.0) >= 0.5:
        _job["queue"].put(_job.pop("pending"))
        _job["sent"] = time.monotonic()


def _work(split: str, index: int, part) -> dict:
    j = _job
    rec = write_part(part.documents(j["cfg"]), lambda doc: document_ids(j["tok"], doc, j["cfg"].add_bos), j["out"],
                     split, index, dtype=j["dtype"], shard_tokens=j["shard_tokens"], max_tokens=j["caps"][split],
                     progress=_report)
    if j.get("pending"):
        j["queue"].put(j.pop("pending"))
    return rec


class _Done:
    """An in-process result with the interface of multiprocessing's AsyncResult."""

    def __init__(self, value):
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self):
        return self.value


class _InProcess:
    def apply_async(self, fn, args):
        return _Done(fn(*args))

    def terminate(self):
        pass


def _covered(records: list[dict], cap) -> bool:
    """Whether the finished leading parts already hold the split's `cap` tokens (later parts are not needed)."""
    n = 0
    for rec in records:
        if cap is None or not rec["done"]:
            return False
        n += sum(s["tokens"] for s in rec["shards"])
        if n >= cap:
            return True
    return False


def tokenize_parts(parts: dict, job: dict, workers: int) -> dict[str, list[dict]]:
    """Every needed part tokenized (the finished ones skipped); their records per split, in part order."""
    out, caps = job["out"], job["caps"]
    records = {s: [read_part(out, s, i) for i in range(len(parts[s]))] for s in SPLITS}
    todo = [(s, i) for s in SPLITS for i in range(len(parts[s])) if not records[s][i]["done"]]
    total = sum(caps.values()) if all(c is not None for c in caps.values()) else None
    # a bar on a terminal, else a line every 30 s; `total` is a cap: a split may end before it
    progress = Progress(total, "pretokenize", "tok",
                        initial=sum(s["tokens"] for recs in records.values() for r in recs for s in r["shards"]))
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        _init({**job, "progress": progress.update})
        pool, reports = _InProcess(), queue.SimpleQueue()
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        reports = ctx.Queue()
        pool = ctx.Pool(workers, _init, ({**job, "queue": reports},))
    print(f"[pretokenize] {len(todo)} of {sum(map(len, parts.values()))} parts to tokenize with {workers} "
          f"worker(s) into {out}", flush=True)
    running = {}
    try:
        while todo or running:
            while todo and len(running) < workers:
                s, i = todo.pop(0)
                if not _covered(records[s], caps[s]):
                    running[(s, i)] = pool.apply_async(_work, (s, i, parts[s][i]))
            try:
                progress.update(reports.get(timeout=0.2) if workers > 1 else reports.get_nowait())
            except queue.Empty:
                pass
            for (s, i), result in list(running.items()):
                if result.ready():
                    records[s][i] = result.get()
                    del running[(s, i)]
            for key in [k for k in running if _covered(records[k[0]], caps[k[0]])]:
                del running[key]  # past the cap: stopped with the pool below
    finally:
        pool.terminate()
        progress.close()
    return records


def settings(cfg, tok, parts: dict, *, shard_tokens: int, part_bytes: int, max_tokens: dict) -> dict:
    """What decides the shards' bytes: a rerun into the same folder must have the same."""
    return {"source": {k: cfg[k] for k in SOURCE_KEYS}, "tokenizer": tok.name, "vocab_size": tok.vocab_size,
            "vocab_sha256": vocab_hash(tok), "eos_id": tok.eos_id, "bos_id": tok.bos_id, "add_bos": bool(cfg.add_bos),
            "dtype": token_dtype(tok.vocab_size), "shard_tokens": shard_tokens, "part_bytes": part_bytes,
            "max_tokens": max_tokens, "parts": {s: len(parts[s]) for s in SPLITS},
            "parts_sha256": hashlib.sha256(repr([parts[s] for s in SPLITS]).encode()).hexdigest()[:16]}
