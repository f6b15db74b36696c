"""Pre-tokenize a text corpus into memory-mapped token shards (the fast, exactly resumable data path).

    python scripts/pretokenize.py --data text_pile --out /data/pile_llama2 --max-train-tokens 200e9
    python scripts/pretokenize.py --data text_local data.root=/my/texts data.tokenizer=/my/tokenizer.json --out shards/
    python train.py model=llama_350m data=text_shards data.root=/data/pile_llama2

``--data`` names a configs/data/text_*.yaml; extra key=value arguments override it (``data.`` prefix). Writes
``{train,val}_NNNNN.bin`` (uint16 when the vocabulary fits, else uint32; documents packed as document + EOS, or
BOS + document + EOS with ``data.add_bos=true`` as the LLaMA recipe does) and ``meta.json`` (tokenizer,
vocab_size, eos_id, bos_id, add_bos, dtype, shard files, token counts). Each shard is
written under a temporary name and renamed, so an interrupted run leaves only whole shards.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.data.text import document_ids, document_streams  # noqa: E402
from dyt.data.tokenizers import load_tokenizer  # noqa: E402
from dyt.families import compose  # noqa: E402


def data_config(name: str, overrides: list[str]):
    return compose([f"data={name}", *overrides]).data


def write_split(docs, tok, out: Path, split: str, shard_tokens: int, max_tokens: int | None,
                add_bos: bool = False) -> tuple[list[str], int]:
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    files, total, buf, n_buf = [], 0, [], 0

    def flush():
        nonlocal buf, n_buf
        if not n_buf:
            return
        name = f"{split}_{len(files):05d}.bin"
        tmp = out / (name + ".tmp")
        np.concatenate(buf).astype(dtype).tofile(tmp)
        os.replace(tmp, out / name)
        files.append(name)
        buf, n_buf = [], 0

    for doc in docs:
        ids = np.asarray(document_ids(tok, doc, add_bos), dtype=dtype)
        if max_tokens is not None:
            ids = ids[: max_tokens - total]
        buf.append(ids)
        n_buf += len(ids)
        total += len(ids)
        if n_buf >= shard_tokens:
            flush()
        if max_tokens is not None and total >= max_tokens:
            break
    flush()
    print(f"[pretokenize] {split}: {total:,} tokens in {len(files)} shard(s)", flush=True)
    return files, total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a configs/data/ name, e.g. text_pile")
    p.add_argument("--out", required=True, help="output folder (data.root of data=text_shards)")
    p.add_argument("--shard-tokens", type=float, default=1e9, help="tokens per shard file")
    p.add_argument("--max-train-tokens", type=float, default=None)
    p.add_argument("--max-val-tokens", type=float, default=None, help="default: the config's data.max_val_tokens")
    p.add_argument("overrides", nargs="*", help="data config overrides, e.g. data.root=/texts")
    args = p.parse_args(argv)

    cfg = data_config(args.data, args.overrides)
    if cfg.source == "shards":
        raise SystemExit("error: --data must name a text source, not shards")
    tok = load_tokenizer(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_docs, val_docs = document_streams(cfg)
    max_val = int(args.max_val_tokens) if args.max_val_tokens else cfg.max_val_tokens
    max_train = int(args.max_train_tokens) if args.max_train_tokens else cfg.max_train_tokens
    shards, tokens = {}, {}
    per_shard = int(args.shard_tokens)
    shards["val"], tokens["val"] = write_split(val_docs, tok, out, "val", per_shard, max_val, cfg.add_bos)
    shards["train"], tokens["train"] = write_split(train_docs, tok, out, "train", per_shard, max_train, cfg.add_bos)
    meta = {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "bos_id": tok.bos_id,
            "add_bos": bool(cfg.add_bos),
            "dtype": "uint16" if tok.vocab_size <= 2**16 else "uint32", "shards": shards, "tokens": tokens,
            "source": {k: cfg[k] for k in ("source", "hub_id", "hub_config", "root", "text_column")}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"[pretokenize] wrote {out / 'meta.json'}; train with: data=text_shards data.root={out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
