"""Pre-tokenized token shards (written by ``scripts/pretokenize.py``): ``<root>/meta.json`` and memory-mapped
``<split>_NNNNN.bin`` arrays. meta.json records the tokenizer, its vocabulary and special ids, whether each
document was packed with BOS (``add_bos``), the dtype and the shard files of each split.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dyt.errors import ConfigError


def shard_meta(root) -> dict:
    path = Path(root or "") / "meta.json"
    if not path.is_file():
        raise ConfigError(f"no token shards at data.root={root!r} (missing meta.json); write them with "
                          "scripts/pretokenize.py")
    return json.loads(path.read_text())


def load_shards(root, split: str) -> list[np.ndarray]:
    meta = shard_meta(root)
    files = meta["shards"].get(split, [])
    if not files:
        raise ConfigError(f"{root} has no {split!r} shards (has: {', '.join(meta['shards'])})")
    return [np.memmap(Path(root) / f, dtype=meta["dtype"], mode="r") for f in files]
