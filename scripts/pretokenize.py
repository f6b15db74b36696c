"""Pre-tokenize a text corpus into memory-mapped token shards (the data path for long runs: every rank reads only
its own sequences, and a resume at any step is a seek).

    python scripts/pretokenize.py --data text_pile --out /data/pile_llama2 --max-train-tokens 2e11 data.add_bos=true
    python scripts/pretokenize.py --data text_local data.root=/my/texts data.tokenizer=/my/tokenizer.json --out shards/
    python train.py model=llama_350m data=text_shards data.root=/data/pile_llama2

``--data`` names a configs/data/text_*.yaml; extra key=value arguments override it (``data.`` prefix). Documents
are packed as document + EOS, or BOS + document + EOS with ``data.add_bos=true`` (the LLaMA recipe).

Parallel: the corpus is cut into parts that do not depend on ``--workers`` (one per data file of a hub dataset;
groups of ~``--part-bytes`` of local files or in-memory documents, `dyt.data.text.document_parts`), and each part
is tokenized by one process, in order: the shards are the same bytes for any number of workers. A hub stream has
as many parts as data files (The Pile: 30), which bounds the useful workers.
Resumable: a shard is written under a temporary name, renamed, then recorded; running the same command again
after a kill keeps every recorded shard and continues after it (other settings in the same folder are refused).
With a token cap, parts past the cap are not started (those already running are stopped).
Progress: a bar on a terminal, else a line every 30 s (tokens, tokens/s, ETA when the total is known).
The manifest (meta.json, `dyt.data.shards`): source and config, tokenizer and the hash of its vocabulary, add_bos,
dtype, the shards of each split with their tokens, bytes and sha256, created/completed times.
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import queue
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.data.shards import FORMAT, read_part, split_shards, token_dtype, write_part  # noqa: E402
from dyt.data.text import document_ids, document_parts  # noqa: E402
from dyt.data.tokenizers import load_tokenizer, vocab_hash  # noqa: E402
from dyt.errors import ConfigError  # noqa: E402
from dyt.families import compose  # noqa: E402
from dyt.files import read_json_object, write_json  # noqa: E402

SPLITS = ("val", "train")
# the data config keys that decide which documents each split holds
SOURCE_KEYS = ("source", "hub_id", "hub_config", "root", "text_column", "train_split", "val_split", "val_fraction",
               "val_docs")


def data_config(name: str, overrides: list[str]):
    return compose([f"data={name}", *overrides]).data


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Progress:
    """tqdm on a terminal; elsewhere one line every `every` seconds with tokens, tokens/s and the ETA."""

    def __init__(self, total, initial: int, every: float = 30.0):
        self.total, self.n, self.start, self.every = total, initial, initial, every
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="tok", unit_scale=True, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            print(self.line(), flush=True)

    def line(self) -> str:
        rate = (self.n - self.start) / max(time.monotonic() - self.t0, 1e-9)
        left = (self.total - self.n) / rate if self.total and rate > 0 else None
        eta = "?" if left is None else f"{left / 3600:.1f} h" if left > 3600 else f"{left / 60:.0f} min"
        of = f" of {self.total:,}" if self.total else ""
        return f"[pretokenize] {self.n:,}{of} tokens, {rate:,.0f} tokens/s, ETA {eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            print(self.line(), flush=True)


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


def _work(split: str, index: int, part) -> tuple[str, int, dict]:
    j = _job
    rec = write_part(part.documents(j["cfg"]), lambda doc: document_ids(j["tok"], doc, j["cfg"].add_bos), j["out"],
                     split, index, dtype=j["dtype"], shard_tokens=j["shard_tokens"], max_tokens=j["caps"][split],
                     progress=_report)
    if j.get("pending"):
        j["queue"].put(j.pop("pending"))
    return split, index, rec


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
    progress = Progress(total, sum(s["tokens"] for recs in records.values() for r in recs for s in r["shards"]))
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
                    _, _, records[s][i] = result.get()
                    del running[(s, i)]
            for key in [k for k in running if _covered(records[k[0]], caps[k[0]])]:
                del running[key]  # past the cap: stopped with the pool below
    finally:
        pool.terminate()
        progress.close()
    return records


def settings(cfg, args, tok, parts) -> dict:
    """What decides the shards' bytes: a rerun into the same folder must have the same."""
    return {"source": {k: cfg[k] for k in SOURCE_KEYS}, "tokenizer": tok.name, "vocab_size": tok.vocab_size,
            "vocab_sha256": vocab_hash(tok), "eos_id": tok.eos_id, "bos_id": tok.bos_id, "add_bos": bool(cfg.add_bos),
            "dtype": token_dtype(tok.vocab_size), "shard_tokens": int(args.shard_tokens),
            "part_bytes": int(args.part_bytes), "max_tokens": caps(cfg, args),
            "parts": {s: len(parts[s]) for s in SPLITS},
            "parts_sha256": hashlib.sha256(repr([parts[s] for s in SPLITS]).encode()).hexdigest()[:16]}


def caps(cfg, args) -> dict:
    return {"val": int(args.max_val_tokens) if args.max_val_tokens else cfg.max_val_tokens,
            "train": int(args.max_train_tokens) if args.max_train_tokens else cfg.max_train_tokens}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a configs/data/ name, e.g. text_pile")
    p.add_argument("--out", required=True, help="output folder (data.root of data=text_shards)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    p.add_argument("--shard-tokens", type=float, default=1e9, help="tokens per shard file (at least; whole documents)")
    p.add_argument("--part-bytes", type=float, default=2**28, help="source text per part of local/in-memory corpora")
    p.add_argument("--max-train-tokens", type=float, default=None, help="default: the config's data.max_train_tokens")
    p.add_argument("--max-val-tokens", type=float, default=None, help="default: the config's data.max_val_tokens")
    p.add_argument("overrides", nargs="*", help="data config overrides, e.g. data.root=/texts")
    args = p.parse_args(argv)

    cfg = data_config(args.data, args.overrides)
    if cfg.source == "shards":
        raise SystemExit("error: --data must name a text source, not shards")
    if args.workers < 1:
        raise SystemExit("error: --workers must be at least 1")
    tok = load_tokenizer(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = document_parts(cfg, int(args.part_bytes))
    want = settings(cfg, args, tok, parts)
    started = read_json_object(out / "pretokenize.json")
    if started is not None and {k: v for k, v in started.items() if k != "created"} != want:
        diff = sorted(k for k in {*started, *want} - {"created"} if started.get(k) != want.get(k))
        raise ConfigError(f"{out} holds shards written with other settings ({', '.join(diff)}); use another --out "
                          "or delete that folder")
    if started is None:
        started = {**want, "created": now()}
        write_json(out / "pretokenize.json", started)

    job = {"cfg": cfg, "tok": tok, "out": out, "dtype": want["dtype"], "shard_tokens": want["shard_tokens"],
           "caps": want["max_tokens"]}
    records = tokenize_parts(parts, job, args.workers)
    shards = {s: split_shards(records[s], want["max_tokens"][s]) for s in SPLITS}
    meta = {"format": FORMAT, **want, "data": args.data, "overrides": args.overrides, "shards": shards,
            "tokens": {s: sum(e["tokens"] for e in shards[s]) for s in SPLITS},
            "created": started["created"], "completed": now(), "workers": args.workers}
    write_json(out / "meta.json", meta)
    for tmp in out.glob("*.tmp"):  # shards a killed worker left half-written
        tmp.unlink()
    print(f"[pretokenize] train: {meta['tokens']['train']:,} tokens, val: {meta['tokens']['val']:,} tokens in "
          f"{sum(map(len, shards.values()))} shards; train with: data=text_shards data.root={out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
