"""Pre-tokenized token shards (written by ``scripts/pretokenize.py``, read by ``data=text_shards``).

A folder holds, per split (``train``, ``val``) and per part of the corpus (`dyt.data.text.document_parts`: a
group of source files, or one data file of a hub dataset):

  ``<split>_PPPPP_KKKKK.bin``  shard K of part P: a flat array of token ids (uint16, or uint32 for vocabularies
                               over 65,536), whole documents, written under a temporary name and renamed
  ``<split>_PPPPP.json``       the part's record: its finished shards (file, tokens, bytes, sha256, documents)
                               and whether the part is done; a rerun continues after the last recorded shard
  ``pretokenize.json``         the settings that decide the bytes (source, tokenizer, packing, sizes): a rerun
                               with other settings is refused
  ``meta.json``                the manifest, written when every part is done: settings + the shards of each
                               split in order (a shard may be used only up to its ``tokens``: the token cap)

The shards do not depend on how many processes wrote them: each part is tokenized by one process, in order.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from dyt.errors import ConfigError
from dyt.files import read_json_object, write_durably, write_json

FORMAT = 2  # meta.json's "format": per-shard records (1: a plain file list, no vocabulary hash)
MAKE = "`python scripts/pretokenize.py --data <a configs/data/text_* corpus> --out <folder>`"


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


# --- reading ----------------------------------------------------------------------------------------------
def shard_meta(root, make: str = MAKE) -> dict:
    """The manifest of the shards at `root`; one line naming the command that writes them (`make`) if there are none."""
    if not root:
        raise ConfigError(f"data.root is not set: this run trains from pre-tokenized shards; make them once with "
                          f"{make} and add data.root=<that folder>")
    path = Path(root) / "meta.json"
    if not path.is_file():
        started = (Path(root) / "pretokenize.json").is_file()
        raise ConfigError(f"data.root={root} holds no finished token shards (no meta.json); "
                          + ("its pretokenize run did not finish: run the same command again to complete it"
                             if started else f"make them with {make}"))
    meta = read_json_object(path)
    if meta is None or meta.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a format-{FORMAT} manifest (written by an older scripts/pretokenize.py or "
                          "damaged); write the shards again with scripts/pretokenize.py")
    return meta


def load_shards(root, split: str) -> list[np.ndarray]:
    """The split's shards as read-only memory maps, each cut to the tokens the manifest lists."""
    meta = shard_meta(root)
    entries = meta["shards"].get(split, [])
    if not entries:
        have = ", ".join(k for k, v in meta["shards"].items() if v)
        raise ConfigError(f"{root} has no {split!r} shards (has: {have})")
    arrays = []
    for s in entries:
        path = Path(root) / s["file"]
        size = path.stat().st_size if path.is_file() else None
        if size != s["bytes"]:
            raise ConfigError(f"token shard {path} is {'missing' if size is None else f'{size} bytes'}, meta.json "
                              f"says {s['bytes']}; write the shards again with scripts/pretokenize.py")
        arrays.append(np.memmap(path, dtype=meta["dtype"], mode="r", shape=(s["tokens"],)))
    return arrays


# --- writing ----------------------------------------------------------------------------------------------
def part_record(out: Path, split: str, index: int) -> Path:
    return Path(out) / f"{split}_{index:05d}.json"


def read_part(out: Path, split: str, index: int) -> dict:
    """A part's record (empty when the part has not started); its recorded shards must be on disk, whole."""
    rec = read_json_object(part_record(out, split, index)) or {"shards": [], "done": False}
    for s in rec["shards"]:
        path = Path(out) / s["file"]
        if not path.is_file() or path.stat().st_size != s["bytes"]:
            raise ConfigError(f"{path} is missing or not {s['bytes']} bytes, as {part_record(out, split, index).name} "
                              "records; delete the output folder and run scripts/pretokenize.py again")
    return rec


def write_part(docs: Iterable[str], encode: Callable[[str], list[int]], out: Path, split: str, index: int, *,
               dtype: str, shard_tokens: int, max_tokens: Optional[int] = None,
               progress: Callable[[int], None] = lambda n: None) -> dict:
    """Tokenize one part's documents (`encode`: text -> packed ids) into shards of at least `shard_tokens`
    whole documents, at most `max_tokens` in all; continue after the shards a killed run recorded (their
    documents are read again, not tokenized), never rewriting them. Returns the part's record."""
    rec = read_part(out, split, index)
    if rec["done"]:
        return rec
    total = sum(s["tokens"] for s in rec["shards"])
    buf: list[np.ndarray] = []
    n_docs = n_buf = 0

    def flush():
        nonlocal buf, n_docs, n_buf
        if not buf:
            return
        data = np.concatenate(buf).astype(dtype).tobytes()
        name = f"{split}_{index:05d}_{len(rec['shards']):05d}.bin"
        tmp = Path(out) / (name + ".tmp")
        write_durably(tmp, data)
        os.replace(tmp, Path(out) / name)
        rec["shards"].append({"file": name, "tokens": len(data) // np.dtype(dtype).itemsize, "bytes": len(data),
                              "sha256": hashlib.sha256(data).hexdigest(), "docs": n_docs})
        write_json(part_record(out, split, index), rec)  # the shard counts as written from here on
        buf, n_docs, n_buf = [], 0, 0

    for doc in itertools.islice(docs, sum(s["docs"] for s in rec["shards"]), None):
        ids = np.asarray(encode(doc), dtype=dtype)
        if max_tokens is not None:
            ids = ids[: max_tokens - total]
        buf.append(ids)
        n_docs += 1
        n_buf += len(ids)
        total += len(ids)
        progress(len(ids))
        if n_buf >= shard_tokens:
            flush()
        if max_tokens is not None and total >= max_tokens:
            break
    flush()
    rec["done"] = True
    write_json(part_record(out, split, index), rec)
    return rec


def split_shards(records: list[dict], max_tokens: Optional[int]) -> list[dict]:
    """The manifest's shards of one split: its parts' shards in part order, up to `max_tokens` tokens (the last
    one listed with fewer tokens than its file holds when the cap falls inside it)."""
    out, total = [], 0
    for s in (s for rec in records for s in rec["shards"]):
        if max_tokens is not None and total >= max_tokens:
            break
        tokens = s["tokens"] if max_tokens is None else min(s["tokens"], max_tokens - total)
        out.append({k: s[k] for k in ("file", "bytes", "sha256")} | {"tokens": tokens})
        total += tokens
    return out
