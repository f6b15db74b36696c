"""GenomicBenchmarks (Gresova et al. 2023): labelled DNA sequences in the `genomic-benchmarks` package's folder layout,
``<root>/<task>/{train,test}/<class>/<id>.txt`` (one sequence per file), read the way the Caduceus repo's
``GenomicBenchmark`` data module reads them (src/dataloaders/genomics.py, datasets/genomic_bench_dataset.py):

- labels are the class folders in sorted order (the repo numbers them in directory order, which the file system
  decides; sorting makes a label the same on every machine), files are read in sorted order too;
- validation is 10% of the train folder, drawn by ``torch.utils.data.random_split(.., [0.1, 0.9])`` under a
  generator seeded with ``split_seed`` (the repo's ``train_val_split_seed``, 1..5 in its cross-validation): a pure
  function of the seed; the test folder is the benchmark's test set;
- a sequence is reverse-complemented with probability 1/2 when ``rc_aug`` (training only: the repo's validation and
  test copies keep the flag and flip too; ours are evaluated as they are, so evaluation is deterministic), then
  tokenized by the character tokenizer without special tokens, truncated to its first ``max_length`` characters
  and padded on the left to ``max_length`` (``use_padding: true``, ``padding_side: left``), optionally followed by
  [SEP] (``add_eos``, off in the repo's config).

Get a task on a connected machine with the package (``pip install genomic-benchmarks``; README "GenomicBenchmarks").
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import Dataset

from dyt.data.dna import PAD, SEP, encode, reverse_complement
from dyt.errors import ConfigError
from dyt.ranges import COUNT, NONNEG_INT, SEED, Num, ranged

SOURCES = ("folder", "synth")
NOT_DNA = re.compile(r"[^ACGTN]")
PADDING_SIDES = ("left", "right")

# The 8 tasks of the Caduceus / DyT Table 6 protocol (configs/data/gb_<task>.yaml): classes and the repo's
# max_length per task (Caduceus configs/dataset/genomic_benchmark.yaml).
TASKS = {
    "dummy_mouse_enhancers_ensembl": (2, 1024),
    "demo_coding_vs_intergenomic_seqs": (2, 200),
    "demo_human_or_worm": (2, 200),
    "human_enhancers_cohn": (2, 500),
    "human_enhancers_ensembl": (2, 512),
    "human_ensembl_regulatory": (3, 512),
    "human_nontata_promoters": (2, 251),
    "human_ocr_ensembl": (2, 512),
}


@dataclass
class GenomicDataConfig:
    """Schema of configs/data/gb_*.yaml (``defaults: [schema_gb]``): one GenomicBenchmarks task from a local folder."""
    KIND: ClassVar[str] = "dna_classes"
    WORDS: ClassVar[tuple[str, str]] = ("a GenomicBenchmarks-style labelled DNA folder",
                                        "data=gb_human_nontata_promoters or data=gb_synth")
    name: str = MISSING  # short, path-safe: part of the run name
    source: str = "folder"  # folder (a downloaded task under root) | synth (a planted-motif task, written once)
    task: str = MISSING  # the task's folder under root (a GenomicBenchmarks dataset name)
    root: Optional[str] = None  # the folder holding <task>/train|test/<class>/*.txt (download_dataset's dest_path)
    num_classes: int = ranged(MISSING, COUNT)
    max_length: int = ranged(MISSING, COUNT)  # tokens per sequence: truncated, then padded (the repo's per task)
    split_seed: int = ranged(1, SEED)  # which 10% of train is validation (the repo's train_val_split_seed)
    val_fraction: float = ranged(0.1, Num(0, 1, lo_open=True, hi_open=True))
    rc_aug: bool = False  # reverse-complement a training sequence with probability 1/2
    padding_side: str = "left"  # left | right
    add_eos: bool = False  # append [SEP] after the max_length tokens
    num_workers: int = ranged(0, NONNEG_INT)


def task_dir(cfg) -> Path:
    if cfg.source not in SOURCES:
        raise ConfigError(f"unknown data.source {cfg.source!r}; choose one of: {', '.join(SOURCES)}")
    if cfg.source == "synth":
        root = Path(cfg.root or Path(os.environ.get("DYT_CACHE", Path.home() / ".cache" / "dyt")) / "gb_synth")
        if not (root / cfg.task).is_dir():
            write_synthetic_task(root, cfg.task, int(cfg.num_classes))
        return root / cfg.task
    if not cfg.root:
        raise ConfigError(f"data.root is not set: point it at the folder holding {cfg.task}/train and {cfg.task}/test "
                          "(README: GenomicBenchmarks)")
    path = Path(cfg.root) / cfg.task
    if not path.is_dir():
        raise ConfigError(f"data.root={cfg.root}: no folder {cfg.task} in it; download it with genomic-benchmarks' "
                          f"download_dataset('{cfg.task}', version=0, dest_path='{cfg.root}') (README: GenomicBenchmarks)")
    return path


def read_split(path: Path, split: str, classes: Optional[list[str]] = None) -> tuple[list[str], list[int], list[str]]:
    """(sequences, labels, class names) of ``path/split``: one class per sub-folder, labels in sorted class order,
    files in sorted order. `classes`: the names the split must have (the test split has the train split's)."""
    where = path / split
    if not where.is_dir():
        raise ConfigError(f"{where}: no such folder (a GenomicBenchmarks task has train/ and test/)")
    found = sorted(p.name for p in where.iterdir() if p.is_dir())
    if classes is not None and found != classes:
        raise ConfigError(f"{where}: classes {found} differ from the train split's {classes}")
    if not found:
        raise ConfigError(f"{where}: no class folders (expected {where}/<class>/*.txt)")
    seqs, labels = [], []
    for label, name in enumerate(found):
        files = sorted((where / name).glob("*.txt"))
        if not files:
            raise ConfigError(f"{where / name}: an empty class (no .txt sequence files)")
        for f in files:
            seq = f.read_text().strip().upper()
            if bad := NOT_DNA.search(seq):
                raise ConfigError(f"{f}: character {bad.group()!r} at {bad.start()} is not one of A, C, G, T, N")
            seqs.append(seq)
            labels.append(label)
    return seqs, labels, found


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices) of n training sequences: the repo's ``random_split([0.1, 0.9])``, val first."""
    val, train = torch.utils.data.random_split(range(n), [val_fraction, 1 - val_fraction],
                                               generator=torch.Generator().manual_seed(seed))
    return list(train.indices), list(val.indices)


class GenomicSequences(Dataset):
    """``(token ids [max_length (+1)], label)``; with `split` set, ``(ids, label, split)`` (0 = val, 1 = test), so an
    evaluation can count each split apart. Reverse complements (rc_aug) are drawn from torch's RNG, which the train
    loader seeds per (seed, epoch, sample index)."""

    def __init__(self, seqs: list[str], labels: list[int], cfg, rc_aug: bool = False, split: Optional[list[int]] = None):
        if cfg.padding_side not in PADDING_SIDES:
            raise ConfigError(f"data.padding_side={cfg.padding_side}: choose one of {', '.join(PADDING_SIDES)}")
        self.seqs, self.labels, self.split = seqs, labels, split
        self.max_length, self.left, self.eos = int(cfg.max_length), cfg.padding_side == "left", bool(cfg.add_eos)
        self.rc_aug = rc_aug
        self.deterministic = not rc_aug  # dyt.data.sampler: no per-sample seeding needed

    def __len__(self) -> int:
        return len(self.seqs)

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Truncated to the first max_length ids, padded with [PAD] (on padding_side), then [SEP] if add_eos."""
        ids = ids[:self.max_length]
        pad = ids.new_full((self.max_length - len(ids),), PAD)
        parts = [pad, ids] if self.left else [ids, pad]
        return torch.cat(parts + ([ids.new_full((1,), SEP)] if self.eos else []))

    def __getitem__(self, i: int):
        ids = encode(self.seqs[i])
        if self.rc_aug and bool(torch.rand(()) < 0.5):  # the whole sequence, before truncation, as the repo
            ids = reverse_complement(ids)
        item = (self.tokens(ids), self.labels[i])
        return item if self.split is None else (*item, self.split[i])


def build_genomic_datasets(cfg) -> tuple[GenomicSequences, GenomicSequences]:
    """(train, evaluation) of a task: the 90% training part, and the 10% validation part followed by the test split
    (each sample tagged with its split)."""
    path = task_dir(cfg)
    seqs, labels, classes = read_split(path, "train")
    if len(classes) != cfg.num_classes:
        raise ConfigError(f"data.num_classes={cfg.num_classes}, but {path / 'train'} has {len(classes)} classes "
                          f"({', '.join(classes)})")
    test_seqs, test_labels, _ = read_split(path, "test", classes)
    train_idx, val_idx = split_train_val(len(seqs), float(cfg.val_fraction), int(cfg.split_seed))
    if not train_idx or not val_idx:
        raise ConfigError(f"{path / 'train'}: {len(seqs)} sequences are too few to split {cfg.val_fraction:g} off")
    train = GenomicSequences([seqs[i] for i in train_idx], [labels[i] for i in train_idx], cfg, rc_aug=bool(cfg.rc_aug))
    evaluation = GenomicSequences([seqs[i] for i in val_idx] + test_seqs, [labels[i] for i in val_idx] + test_labels,
                                  cfg, split=[0] * len(val_idx) + [1] * len(test_seqs))
    return train, evaluation


# --- a synthetic task -----------------------------------------------------------------------------------------
#: class c's sequences carry MOTIFS[c] (tests, the mini-suite): easy for any model that sees a few bases at once
MOTIFS = ("TATAAT", "GCGCGC", "CATGCA", "AGGAGG")


def write_synthetic_task(root: str | Path, task: str = "synth", classes: int = 2, train: int = 400, test: int = 100,
                         length: tuple[int, int] = (40, 80), seed: int = 0) -> Path:
    """``root/task/{train,test}/class_<c>/<i>.txt`` in the GenomicBenchmarks layout: random ACGT sequences of
    `length` (min, max) with class c's motif planted twice at random places. Deterministic in its arguments; written
    to a temporary folder and renamed, so concurrent runs do not see half a task."""
    if classes > len(MOTIFS):
        raise ConfigError(f"data.num_classes={classes}: the synthetic task has motifs for {len(MOTIFS)} classes")
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{task}."))
    for split, n in (("train", train), ("test", test)):
        for i in range(n):
            c = i % classes
            seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, rng.integers(length[0], length[1] + 1))].copy()
            for at in rng.integers(0, len(seq) - len(MOTIFS[c]), 2):
                seq[at:at + len(MOTIFS[c])] = np.frombuffer(MOTIFS[c].encode(), np.uint8)
            folder = tmp / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:05d}.txt").write_bytes(seq.tobytes())
    try:
        os.rename(tmp, root / task)
    except OSError:  # another process wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    return root / task
