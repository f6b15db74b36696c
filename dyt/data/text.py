"""Text corpora for language modeling: packed token sequences, each document followed by EOS (and preceded by
BOS with ``data.add_bos``, as the released LLaMA code packs The Pile: BOS + document + EOS).

Sources (``data.source``):
  pydoc   Python's own ``pydoc_data.topics`` text (~466 KB), embedded: trains anywhere with no download.
  local   a folder of .txt (one document per file), .jsonl/.json, .parquet or .csv files (``text_column``).
  hf      a Hugging Face dataset (``hub_id``); ``streaming: true`` for large ones (The Pile, FineWeb, ...).
  shards  a folder of memory-mapped token shards written by ``scripts/pretokenize.py`` (the fast path).

Tokenizers (``data.tokenizer``) and the model's vocabulary: `dyt.data.tokenizers`; the shards' files:
`dyt.data.shards`.

Training data are map-style (``PackedSequences``: sample i is tokens[i*L : i*L + L + 1], so the trainer's
sharded sampler gives exact resume, and a resume at any step is a seek) except streaming corpora
(``StreamingPacked``: a deterministic stream that skips exactly the sequences already consumed, re-reading and
re-tokenizing them: sensible while a resume re-tokenizes minutes of text, see `STREAM_SKIP_WARN_S`).

`document_parts` divides a corpus into parts that ``scripts/pretokenize.py`` tokenizes in parallel.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from dyt.data.hub import hf_offline
from dyt.data.shards import MAKE, load_shards, shard_meta, token_dtype
from dyt.data.tokenizers import check_vocab, load_tokenizer, named_tokenizer, vocab_hash
from dyt.errors import ConfigError
from dyt.files import warn

SOURCES = ("pydoc", "local", "hf", "shards")
# Tokens per second one process packs with a BPE tokenizer.json (0.18-0.19M measured on a shared CPU, README "Data"):
# the time estimates in the messages below.
TOKENIZE_RATE = 2.0e5
STREAM_SKIP_WARN_S = 300  # a streamed resume that re-tokenizes longer than this warns (pre-tokenize instead)


# --- packing ----------------------------------------------------------------------------------------------
def document_ids(tok, text: str, add_bos: bool = False) -> list[int]:
    """One document's tokens as packed: [BOS] + text + [EOS] (BOS only with `add_bos`)."""
    if add_bos and tok.bos_id is None:
        raise ConfigError(f"data.add_bos=true but tokenizer {tok.name!r} has no BOS token; set data.bos_token")
    return ([tok.bos_id] if add_bos else []) + tok.encode(text) + [tok.eos_id]


# --- documents --------------------------------------------------------------------------------------------
def pydoc_documents() -> list[str]:
    import pydoc_data.topics

    return [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]


_VAL_NAMES = ("val", "valid", "validation", "test")


def _local_files(root: Path) -> dict[str, list[Path]]:
    """{'train': [...], 'val': [...]} by file/folder names (train*, val*/valid*/validation*/test*); 'all' if none."""
    exts = {".txt", ".jsonl", ".json", ".parquet", ".csv"}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in exts)
    if not files:
        raise ConfigError(f"no .txt/.jsonl/.json/.parquet/.csv files under data.root={root}")
    out: dict[str, list[Path]] = {"train": [], "val": [], "all": []}
    for p in files:
        parts = [s.lower() for s in p.relative_to(root).with_suffix("").parts]
        if any(s.startswith("train") for s in parts):
            out["train"].append(p)
        elif any(s.startswith(_VAL_NAMES) for s in parts):
            out["val"].append(p)
        else:
            out["all"].append(p)
    return out


def _read_files(files: list[Path], column: str) -> Iterator[str]:
    """The documents of `files`, file by file in the given order (a part of them reads the same documents)."""
    for p in files:
        if p.suffix == ".txt":
            raw = p.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # trained on anyway, but never silently
                text = raw.decode("utf-8", errors="replace")
                warn(f"{p} is not valid UTF-8 (first bad byte at offset {e.start}): undecodable bytes are read as "
                     "U+FFFD; re-encode it as UTF-8 to train on its real text")
            yield text
            continue
        import datasets
        kind, paths = {".jsonl": "json"}.get(p.suffix, p.suffix[1:]), [str(p)]
        try:
            ds = datasets.load_dataset(kind, data_files=paths, split="train")
        except Exception as e:  # DatasetGenerationError: a file that is not valid JSON / parquet / CSV
            raise ConfigError(_unreadable(kind, paths, e)) from None
        if column not in ds.column_names:
            raise ConfigError(f"{p} has no column {column!r} (columns: {ds.column_names}); set data.text_column")
        for n, doc in enumerate(ds[column], 1):
            if not isinstance(doc, str):  # {"text": 7}: one line here, not a traceback in the tokenizer
                raise ConfigError(f"{p}: row {n} of column {column!r} is {type(doc).__name__} {str(doc)[:40]!r}, not "
                                  "text; fix the file or set data.text_column")
            yield doc


def _unreadable(kind: str, paths: list[str], e: Exception) -> str:
    """One line for a data file `datasets` cannot read: the file and line for JSON Lines, else the root cause."""
    if kind == "json":
        for p in paths:
            with open(p, encoding="utf-8", errors="replace") as f:
                if not p.endswith(".jsonl"):  # one JSON document
                    try:
                        json.load(f)
                    except ValueError as err:
                        return f"{p} is not JSON ({err}); fix or remove the file"
                    continue
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        json.loads(line)
                    except ValueError as err:
                        return f"{p}: line {n} is not JSON ({err}); fix or remove the file"
    for _ in range(20):  # the innermost cause (datasets wraps it in DatasetGenerationError)
        if e.__cause__ is None and e.__context__ is None:
            break
        e = e.__cause__ or e.__context__
    return (f"cannot read {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''} as {kind}: "
            f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}; fix or remove the file")


def _split_docs(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Every k-th document to validation (k = 1/fraction): deterministic, spread over the corpus.

    A corpus of fewer than k documents (one long book) cannot be split by documents: then the text's tail
    `fraction` (by characters) goes to validation, cutting the document it falls in into two."""
    k = max(2, round(1 / max(fraction, 1e-9)))
    if len(docs) >= k:
        return [d for i, d in enumerate(docs) if i % k], [d for i, d in enumerate(docs) if i % k == 0]
    total = sum(len(d) for d in docs)
    cut = total - max(1, round(total * fraction))  # characters before the cut: train
    train, val, seen = [], [], 0
    for d in docs:
        if seen + len(d) <= cut:
            train.append(d)
        elif seen >= cut:
            val.append(d)
        else:
            train.append(d[: cut - seen])
            val.append(d[cut - seen:])
        seen += len(d)
    return train, val


def documents(cfg) -> tuple[Iterable[str], Iterable[str]]:
    """(train, val) documents of a map-style source."""
    if cfg.source == "pydoc":
        return _split_docs(pydoc_documents(), cfg.val_fraction)
    if cfg.source == "local":
        if not cfg.root or not Path(cfg.root).is_dir():
            raise ConfigError(f"data.source=local needs data.root to be a folder (got {cfg.root!r})")
        files = _local_files(Path(cfg.root))
        if files["train"] and files["val"]:
            return _read_files(files["train"], cfg.text_column), _read_files(files["val"], cfg.text_column)
        return _split_docs(list(_read_files(files["train"] + files["all"], cfg.text_column)), cfg.val_fraction)
    if cfg.source == "hf":
        train = hf_documents(cfg, cfg.train_split)
        if cfg.val_split:
            return train, hf_documents(cfg, cfg.val_split)
        return _split_docs(list(train), cfg.val_fraction)
    raise ConfigError(f"unknown data.source {cfg.source!r}; choose one of: {', '.join(SOURCES)}")


# --- the corpus in parts (scripts/pretokenize.py) -----------------------------------------------------------
class FilesPart(NamedTuple):
    """Local files, read in order."""
    files: tuple[str, ...]

    def documents(self, cfg) -> Iterator[str]:
        return _read_files([Path(f) for f in self.files], cfg.text_column)


class DocsPart(NamedTuple):
    """Documents held in memory (the embedded corpus, a split made by `_split_docs`)."""
    docs: tuple[str, ...]

    def documents(self, cfg) -> Iterator[str]:
        return iter(self.docs)


class HubPart(NamedTuple):
    """Data file `index` of `n_shards` of a streamed hub split, less its first `skip` / at most `take` documents."""
    split: str
    index: int
    n_shards: int
    skip: int = 0
    take: Optional[int] = None

    def documents(self, cfg) -> Iterator[str]:
        ds = hf_dataset(cfg, self.split, streaming=True).shard(num_shards=self.n_shards, index=self.index)
        ds = ds.skip(self.skip) if self.skip else ds
        ds = ds.take(self.take) if self.take is not None else ds
        return (row[cfg.text_column] for row in ds)


def _groups(items: list, size, part_bytes: int) -> list[list]:
    """Consecutive items, a new group once the current one holds `part_bytes` (by `size`): fixed by the corpus."""
    groups, n = [[]], 0
    for item in items:
        if n >= part_bytes:
            groups, n = groups + [[]], 0
        groups[-1].append(item)
        n += size(item)
    return [g for g in groups if g]


def document_parts(cfg, part_bytes: int) -> dict[str, list]:
    """{"train": parts, "val": parts} of a text source (not shards): the documents of `documents(cfg)` in the same
    order, cut into parts that do not depend on how many processes read them. A streamed hub dataset: one part
    per data file (the held-out leading `val_docs` documents are those of its first file); local train/val
    files: groups of files of about `part_bytes`; anything else (held in memory): groups of documents."""
    if cfg.source == "hf" and cfg.streaming:
        n = hf_dataset(cfg, cfg.train_split, streaming=True).n_shards
        train = [HubPart(cfg.train_split, i, n) for i in range(n)]
        if cfg.val_split:
            nv = hf_dataset(cfg, cfg.val_split, streaming=True).n_shards
            return {"train": train, "val": [HubPart(cfg.val_split, i, nv) for i in range(nv)]}
        return {"train": [train[0]._replace(skip=cfg.val_docs)] + train[1:],
                "val": [HubPart(cfg.train_split, 0, n, take=cfg.val_docs)]}
    if cfg.source == "local" and cfg.root and Path(cfg.root).is_dir():
        files = _local_files(Path(cfg.root))
        if files["train"] and files["val"]:
            return {split: [FilesPart(tuple(map(str, g))) for g in _groups(files[split], os.path.getsize, part_bytes)]
                    for split in ("train", "val")}
    train, val = documents(cfg)
    return {split: [DocsPart(tuple(g)) for g in _groups(list(docs), len, part_bytes)]
            for split, docs in (("train", train), ("val", val))}


LOCAL_COPY = ("point at a local copy: data.source=local data.root=<folder of .txt/.jsonl/.parquet files>, or "
              "pre-tokenized shards: data=text_shards data.root=<folder>")


def hf_dataset(cfg, split: str, streaming: bool):
    import datasets

    if not cfg.hub_id:
        raise ConfigError("data.source=hf needs data.hub_id")
    try:  # offline, `datasets` answers at once from its cache or not at all
        return datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=split, streaming=streaming)
    except Exception as e:  # offline, unknown id/split, gated
        if hf_offline():
            raise ConfigError(f"cannot load dataset {cfg.hub_id!r} (data.hub_id) split {split!r} while offline "
                              f"(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE; the Hugging Face cache has no usable copy: "
                              f"{str(e).splitlines()[0][:120]}); {LOCAL_COPY}") from e
        raise ConfigError(f"cannot load dataset {cfg.hub_id!r} split {split!r}: {str(e).splitlines()[0][:200]}; "
                          f"to train offline, {LOCAL_COPY}") from e


def hf_documents(cfg, split: str) -> Iterator[str]:
    for row in hf_dataset(cfg, split, streaming=cfg.streaming):
        yield row[cfg.text_column]


def tokenize(docs: Iterable[str], tok, max_tokens: Optional[int] = None, add_bos: bool = False) -> np.ndarray:
    """Documents -> one packed 1-D token array, EOS after each document and BOS before it with `add_bos`
    (capped at max_tokens)."""
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    chunks, n = [], 0
    for doc in docs:
        ids = document_ids(tok, doc, add_bos)
        chunks.append(np.asarray(ids, dtype=dtype))
        n += len(ids)
        if max_tokens and n >= max_tokens:
            break
    out = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    return out[:max_tokens] if max_tokens else out


# --- datasets ---------------------------------------------------------------------------------------------
class PackedSequences(Dataset):
    """Sample i of shard s: tokens[i*L : i*L + L + 1] (inputs = [:-1], targets = [1:]), never crossing shards."""

    deterministic = True  # no random draws: the trainer loads it without per-sample seeding

    def __init__(self, shards: list[np.ndarray], seq_len: int):
        self.shards, self.seq_len = shards, seq_len
        counts = [max(0, (len(s) - 1) // seq_len) for s in shards]
        self.offsets = np.cumsum([0] + counts)
        if self.offsets[-1] == 0:
            raise ConfigError(f"the corpus has fewer than seq_len+1={seq_len + 1} tokens; lower data.seq_len")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> torch.Tensor:
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        j = (i - int(self.offsets[s])) * self.seq_len
        return torch.from_numpy(np.asarray(self.shards[s][j: j + self.seq_len + 1], dtype=np.int64))

    def num_tokens(self) -> int:
        return sum(len(s) for s in self.shards)

    def tokens(self, limit: int) -> np.ndarray:
        """Up to `limit` leading tokens (for the unigram baseline)."""
        out, n = [], 0
        for s in self.shards:
            out.append(np.asarray(s[: limit - n]))
            n += len(out[-1])
            if n >= limit:
                break
        return np.concatenate(out)


class StreamingPacked(IterableDataset):
    """A deterministic endless stream of packed sequences for one rank, starting after `start` of them.

    Pass p of the corpus is shuffled with HF's buffer shuffle seeded by (seed, p); sequences are dealt
    round-robin to ranks (global sequence g goes to rank g % world), so every rank reads and tokenizes the whole
    stream. Skipping re-tokenizes the skipped text, which is exact but costs time in proportion to the position
    (warned above `STREAM_SKIP_WARN_S`); pre-tokenized shards resume with a seek.
    """

    def __init__(self, cfg, tok, seed: int, rank: int, world: int, start: int):
        self.cfg, self.tok, self.seed, self.rank, self.world, self.start = cfg, tok, seed, rank, world, start

    def _passes(self) -> Iterator[int]:
        p = 0
        while True:
            ds = hf_dataset(self.cfg, self.cfg.train_split, streaming=True)
            if not self.cfg.val_split:
                ds = ds.skip(self.cfg.val_docs)  # the held-out leading documents are the validation set
            if self.cfg.shuffle_buffer > 1:
                ds = ds.shuffle(seed=self.seed * 1000 + p, buffer_size=self.cfg.shuffle_buffer)
            n = 0
            buf: list[int] = []
            for row in ds:
                buf.extend(document_ids(self.tok, row[self.cfg.text_column], self.cfg.add_bos))
                while len(buf) >= self.cfg.seq_len + 1:
                    yield buf[: self.cfg.seq_len + 1]
                    del buf[: self.cfg.seq_len]  # the next sequence starts at this one's last (target) token
                    n += 1
            if n == 0:
                raise ConfigError(f"{self.cfg.hub_id} gave no sequence of {self.cfg.seq_len + 1} tokens")
            p += 1

    def __iter__(self):
        skip = self.start * self.world + self.rank  # this rank's next global sequence index
        tokens = skip * self.cfg.seq_len
        if self.rank == 0 and tokens > TOKENIZE_RATE * STREAM_SKIP_WARN_S:
            warn(f"resuming a streamed corpus re-reads and re-tokenizes the {tokens / 1e9:.3g}B tokens before this "
                 f"position on every rank (~{tokens / TOKENIZE_RATE / 3600:.1f} h at ~{TOKENIZE_RATE / 1e6:.1f}M "
                 f"tokens/s); for runs this long pre-tokenize once with {pretokenize_command(self.cfg)} and train "
                 "with data=text_shards data.root=<that folder> (a resume is then a seek)")
        for g, seq in enumerate(self._passes()):
            if g >= skip and g % self.world == self.rank:
                yield torch.tensor(seq, dtype=torch.long)


def streaming_val_tokens(cfg, tok) -> np.ndarray:
    if cfg.val_split:
        docs = (r[cfg.text_column] for r in hf_dataset(cfg, cfg.val_split, streaming=True))
    else:
        docs = (r[cfg.text_column] for r in hf_dataset(cfg, cfg.train_split, streaming=True).take(cfg.val_docs))
    return tokenize(docs, tok, cfg.max_val_tokens, cfg.add_bos)


# --- pre-tokenized shards ---------------------------------------------------------------------------------
def pretokenize_command(cfg) -> str:
    """`the scripts/pretokenize.py command` that writes the shards a config asks for (data.corpus, data.add_bos,
    data.max_train_tokens), and what it costs when the size is known."""
    if not cfg.get("corpus"):
        return MAKE
    cmd = f"python scripts/pretokenize.py --data {cfg.corpus} --out {cfg.root or '<folder>'}"
    cmd += f" --max-train-tokens {cfg.max_train_tokens:.3g}" if cfg.max_train_tokens else ""
    cmd += " data.add_bos=true" if cfg.add_bos else ""
    if not (cfg.max_train_tokens and cfg.vocab_size):
        return f"`{cmd}`"
    n, dtype, cores = cfg.max_train_tokens, token_dtype(cfg.vocab_size), 64
    return (f"`{cmd}` ({n / 1e9:.3g}B tokens, {n * np.dtype(dtype).itemsize / 1e9:.3g} GB as {dtype}; "
            f"~{n / (TOKENIZE_RATE * cores) / 3600:.1f} h of tokenizing with --workers {cores} at "
            f"~{TOKENIZE_RATE / 1e6:.1f}M tokens/s each, plus the download)")


def check_manifest(cfg, meta: dict) -> None:
    """The shards at data.root were written as this run's data config says: packing, tokenizer, vocabulary."""
    where = f"the shards at data.root={cfg.root}"
    if bool(meta["add_bos"]) != bool(cfg.add_bos):
        raise ConfigError(f"{where} were packed with add_bos={meta['add_bos']} but data.add_bos={bool(cfg.add_bos)}; "
                          f"set data.add_bos={meta['add_bos']} or re-run scripts/pretokenize.py with the same "
                          "data.add_bos")
    if cfg.tokenizer and cfg.tokenizer != meta["tokenizer"]:  # another name may still be the same vocabulary
        try:
            same = vocab_hash(named_tokenizer(cfg.tokenizer, cfg)) == meta["vocab_sha256"]
        except ConfigError as e:
            raise ConfigError(f"{where} were written with tokenizer {meta['tokenizer']!r}, data.tokenizer is "
                              f"{cfg.tokenizer!r} and cannot be loaded to compare ({e}); set "
                              f"data.tokenizer={meta['tokenizer']} or null") from None
        if not same:
            raise ConfigError(f"{where} were written with tokenizer {meta['tokenizer']!r}, whose vocabulary differs "
                              f"from data.tokenizer={cfg.tokenizer!r}; set data.tokenizer={meta['tokenizer']} or null, "
                              "or pre-tokenize with this tokenizer")
    check_vocab(cfg, int(meta["vocab_size"]))


def _capped(shards: list[np.ndarray], limit: Optional[int]) -> list[np.ndarray]:
    """The leading `limit` tokens of the shards (all of them without a limit)."""
    out, n = [], 0
    for s in shards:
        if limit is not None and n >= limit:
            break
        out.append(s if limit is None else s[: limit - n])
        n += len(out[-1])
    return out


def build_text_datasets(cfg) -> tuple[Optional[PackedSequences], PackedSequences]:
    """(train, val) packed datasets; train is None for streaming corpora (the task streams it)."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"unknown data.source {cfg.source!r}; choose one of: {', '.join(SOURCES)}")
    if cfg.source == "shards":
        check_manifest(cfg, shard_meta(cfg.root, pretokenize_command(cfg)))
        train = _capped(load_shards(cfg.root, "train"), cfg.max_train_tokens)
        val = _capped(load_shards(cfg.root, "val"), cfg.max_val_tokens)
        return PackedSequences(train, cfg.seq_len), PackedSequences(val, cfg.seq_len)
    tok = load_tokenizer(cfg)
    check_vocab(cfg, tok.vocab_size)
    if cfg.source == "hf" and cfg.streaming:
        return None, PackedSequences([streaming_val_tokens(cfg, tok)], cfg.seq_len)
    train_docs, val_docs = documents(cfg)
    train = tokenize(train_docs, tok, cfg.max_train_tokens, cfg.add_bos)
    val = tokenize(val_docs, tok, cfg.max_val_tokens, cfg.add_bos)
    return PackedSequences([train], cfg.seq_len), PackedSequences([val], cfg.seq_len)


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab: int) -> float:
    """Cross-entropy (nats) on val of the train set's token frequencies (add-one smoothed): the baseline a
    language model must beat."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab)[:vocab] + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val_tokens.astype(np.int64)].mean())
