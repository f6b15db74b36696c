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
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.data.pretokenize import SPLITS, settings, tokenize_parts  # noqa: E402
from dyt.data.shards import FORMAT, split_shards  # noqa: E402
from dyt.data.text import document_parts  # noqa: E402
from dyt.data.tokenizers import load_tokenizer  # noqa: E402
from dyt.errors import ConfigError  # noqa: E402
from dyt.families import compose  # noqa: E402
from dyt.files import read_json_object, write_json  # noqa: E402


def data_config(name: str, overrides: list[str]):
    return compose([f"data={name}", *overrides]).data


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    caps = {"val": int(args.max_val_tokens) if args.max_val_tokens else cfg.max_val_tokens,
            "train": int(args.max_train_tokens) if args.max_train_tokens else cfg.max_train_tokens}
    want = settings(cfg, tok, parts, shard_tokens=int(args.shard_tokens), part_bytes=int(args.part_bytes),
                    max_tokens=caps)
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
