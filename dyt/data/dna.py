"""DNA sequences for the DNA families (HyenaDNA, Caduceus): the character tokenizer, the data schema, a genome cut
into training windows, a synthetic genome for tests and the mini-suite, reverse complement, next-token and masked-LM
samples.

Everything follows the Caduceus repository (kuleshov-group/caduceus), whose slurm scripts the DyT paper ran:

- tokenizer (caduceus/tokenization_caduceus.py): ``[CLS] [SEP] [BOS] [MASK] [PAD] [RESERVED] [UNK]`` = 0..6, then
  A C G T N = 7..11 (12 ids; the models pad the vocabulary to a multiple of 8: 16 rows). Bases are upper-cased
  first (hg38 soft-masks repeats in lower case); anything else is [UNK]. EOS is [SEP].
- windows (src/dataloaders/datasets/hg38_dataset.py): each bed row of a split is an interval of ``interval_len``
  (2^20) bases from its start (the bed's end is ignored, as there); sample ``i`` is window ``i % shifts`` of
  ``seq_len`` bases of row ``i // shifts``, shifted back inside the chromosome at its ends. With ``rc_aug`` the
  window is replaced by its reverse complement with probability 0.5 (every split, as there). EOS is appended, N
  becomes [PAD] (the loss ignores [PAD]), and the sample is (ids[:-1], ids[1:]) for next-token prediction or
  src/dataloaders/utils/mlm.py's masked-LM pair (15% of tokens; 80% [MASK], 10% a random id, 10% kept; targets
  [PAD] elsewhere).
- the genome is read through its samtools ``.fai`` index (`Fasta`, ours: pyfaidx reads the same index; a missing
  one is built once and written beside the fasta).

Randomness (reverse complement, masking) comes from torch's RNG, which the train loader seeds per (seed, epoch,
sample index) (``dyt.data.sampler.SeededSamples``): exact resume, 2 ranks == 1 process. Validation draws are fixed
per sample index (``seed`` given).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import Dataset

from dyt.data.sampler import sample_seed
from dyt.errors import ConfigError
from dyt.ranges import COUNT, NONNEG_INT, PROB, Num, integer, ranged

# --- the character tokenizer ---------------------------------------------------------------------------------
SPECIALS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
CLS, SEP, BOS, MASK, PAD, RESERVED, UNK = range(len(SPECIALS))
EOS = SEP  # the Caduceus tokenizer's eos_token is [SEP]
BASES = "ACGTN"
VOCAB = SPECIALS + tuple(BASES)
VOCAB_SIZE = len(VOCAB)  # 12
A, C, G, T, N = (VOCAB.index(b) for b in BASES)

_ENCODE = np.full(256, UNK, dtype=np.int64)  # byte -> id: upper and lower case bases, anything else [UNK]
for _b in BASES:
    _ENCODE[ord(_b)] = _ENCODE[ord(_b.lower())] = VOCAB.index(_b)
#: id -> the id of its complement (A<->T, C<->G; N and the special tokens are their own complement)
COMPLEMENT = torch.arange(VOCAB_SIZE)
COMPLEMENT[[A, C, G, T]] = torch.tensor([T, G, C, A])


def padded_vocab_size(multiple: int = 8) -> int:
    """The models' embedding rows: the vocabulary rounded up to `multiple` (pad_vocab_size_multiple: 12 -> 16)."""
    return -(-VOCAB_SIZE // multiple) * multiple


def encode(seq: str | bytes) -> torch.Tensor:
    """Bases (any case) -> int64 ids; characters outside ACGTN -> [UNK]."""
    raw = seq.encode("ascii", "replace") if isinstance(seq, str) else seq
    return torch.from_numpy(_ENCODE[np.frombuffer(raw, dtype=np.uint8)])


def decode(ids: torch.Tensor) -> str:
    return "".join(VOCAB[i] for i in ids.tolist())


def reverse_complement(ids: torch.Tensor) -> torch.Tensor:
    """The other strand of token ids along the last dim: reversed, each base complemented."""
    return COMPLEMENT.to(ids.device)[ids.flip(-1)]


# --- samples: next-token and masked-LM ------------------------------------------------------------------------
def next_token_sample(ids: torch.Tensor, add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) of a window's ids: EOS appended, N -> [PAD], shifted by one."""
    seq = _with_eos(ids, add_eos)
    return seq[:-1].clone(), seq[1:].clone()


def masked_lm_sample(ids: torch.Tensor, probability: float = 0.15, add_eos: bool = True,
                     generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) for masked-LM (the Caduceus repo's mlm_getitem): each token is picked with `probability`;
    a picked input is [MASK] with probability 0.8, else a uniformly random id of the 12 with probability 0.5, else
    kept; the target is the token where picked, [PAD] (ignored) elsewhere. The EOS appended to the window is
    dropped again, as there."""
    data = _with_eos(ids, add_eos)
    data = data[:-1].clone() if add_eos else data.clone()
    target = data.clone()
    shape = data.shape
    picked = torch.rand(shape, generator=generator) < probability
    target[~picked] = PAD
    replaced = (torch.rand(shape, generator=generator) < 0.8) & picked
    data[replaced] = MASK
    randomised = (torch.rand(shape, generator=generator) < 0.5) & picked & ~replaced
    random_ids = torch.randint(VOCAB_SIZE, shape, generator=generator)
    data[randomised] = random_ids[randomised]
    return data, target


def _with_eos(ids: torch.Tensor, add_eos: bool) -> torch.Tensor:
    seq = torch.cat([ids, ids.new_full((1,), EOS)]) if add_eos else ids
    return torch.where(seq == N, PAD, seq)  # N is not predicted: [PAD] is the loss's ignore_index


# --- the data schema -------------------------------------------------------------------------------------------
@dataclass
class DNADataConfig:
    """Schema of configs/data/hg38.yaml and dna_synth.yaml (``defaults: [schema_dna]``): windows of a genome."""
    KIND: ClassVar[str] = "dna"
    WORDS: ClassVar[tuple[str, str]] = ("a DNA dataset", "data=dna_synth or data=hg38")  # (what it is, how to choose one)
    name: str = MISSING  # short, path-safe: part of the run name
    source: str = MISSING  # fasta (a genome .fa + a bed of intervals) | synth (a synthetic genome written once)
    fasta: Optional[str] = None  # fasta: the genome (hg38.ml.fa); its .fai index is built beside it when missing
    bed: Optional[str] = None  # fasta: the intervals (human-sequences.bed: chrom, start, end, split)
    root: Optional[str] = None  # synth: where the genome is written; null = $DYT_CACHE/dna_synth/<its parameters>
    train_split: str = "train"
    val_split: str = "valid"
    seq_len: int = ranged(1024, COUNT)  # bases per window (the repo's max_length); the model sees seq_len tokens
    interval_len: int = ranged(2**20, COUNT)  # each bed row spans this many bases from its start (the repo's 2^20)
    add_eos: bool = True  # append EOS ([SEP]) to each window before shifting (the repo's add_eos)
    rc_aug: bool = False  # replace a window by its reverse complement with probability 0.5
    mlm: bool = False  # masked-LM samples (Caduceus) instead of next-token ones (HyenaDNA)
    mlm_probability: float = ranged(0.15, PROB)
    val_limit: float = ranged(1.0, Num(0, 1, lo_open=True))  # share of the val windows evaluated, the first ones
    # (Lightning's limit_val_batches: 0.125 in the repo's hg38 experiment)
    # synth: the synthetic genome (random bases with planted motifs); the same parameters give the same files
    synth_chroms: int = ranged(4, integer(2))  # the last one is the valid split, the others train
    synth_length: int = ranged(2**16, COUNT)  # bases per chromosome
    synth_seed: int = ranged(0, NONNEG_INT)
    num_workers: int = ranged(0, NONNEG_INT)


SOURCES = ("fasta", "synth")


# --- the genome: a fasta read through its .fai index ------------------------------------------------------------
class Fasta:
    """A fasta file read by region through its samtools ``.fai`` index (name, length, offset, bases per line, bytes
    per line); a missing index is built with one pass over the file and written beside it (atomically: ranks
    may race). The file is opened lazily, once per process (data workers each get their own handle)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"data.fasta={self.path}: no such file")
        fai = Path(f"{self.path}.fai")
        self.index = read_fai(fai) if fai.is_file() else build_fai(self.path, fai)
        self._file, self._pid = None, None

    def length(self, name: str) -> int:
        return self.index[name][0]

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def fetch(self, name: str, start: int, end: int) -> bytes:
        """Bases [start, end) of sequence `name` (0-based, end exclusive), newlines removed."""
        length, offset, line_bases, line_bytes = self.index[name]
        start, end = max(0, start), min(end, length)
        if end <= start:
            return b""
        if self._pid != os.getpid():
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        at = lambda p: offset + p // line_bases * line_bytes + p % line_bases  # noqa: E731
        self._file.seek(at(start))
        raw = self._file.read(at(end) - at(start))
        return raw.replace(b"\n", b"").replace(b"\r", b"")

    def __getstate__(self):  # data workers: pickled without the open file
        return {**self.__dict__, "_file": None, "_pid": None}


def read_fai(path: Path) -> dict[str, tuple[int, int, int, int]]:
    index = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, length, offset, line_bases, line_bytes = line.split("\t")[:5]
            index[name] = (int(length), int(offset), int(line_bases), int(line_bytes))
    return index


def build_fai(fasta: Path, fai: Path) -> dict[str, tuple[int, int, int, int]]:
    """The .fai index of `fasta` (sequence lines of one width per record, the last one shorter), written to `fai`
    when its folder is writable."""
    index, name, pos = {}, None, 0
    with open(fasta, "rb") as f:
        for line in f:
            if line.startswith(b">"):
                name = line[1:].split()[0].decode()
                index[name] = [0, pos + len(line), 0, 0]
            elif name is not None and line.strip():
                entry = index[name]
                if entry[2] == 0:
                    entry[2], entry[3] = len(line.rstrip(b"\r\n")), len(line)
                entry[0] += len(line.rstrip(b"\r\n"))
            pos += len(line)
    text = "".join(f"{k}\t{v[0]}\t{v[1]}\t{v[2]}\t{v[3]}\n" for k, v in index.items())
    try:
        _write_atomic(fai, text.encode())
    except OSError:
        pass  # a read-only genome folder: the index lives in memory only
    return {k: tuple(v) for k, v in index.items()}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_bed(path: str | Path, split: str) -> list[tuple[str, int]]:
    """(chromosome, start) of the bed rows of `split` (columns: chrom, start, end, split; tab-separated)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        cols = line.split("\t")
        if len(cols) >= 4 and cols[3] == split:
            rows.append((cols[0], int(cols[1])))
    return rows


# --- the windows of a split -----------------------------------------------------------------------------------
class GenomeWindows(Dataset):
    """Sample ``i``: window ``i % shifts`` (of ``seq_len`` bases) of interval ``i // shifts`` (see the module
    docstring), as (input ids, target ids), each ``seq_len`` long.

    Training (``seed=None``) draws the reverse complement and the masks from torch's RNG (seeded per sample by
    the train loader); validation passes a `seed`, and each sample's draws are fixed by (seed, index)."""

    def __init__(self, fasta: Fasta, rows: list[tuple[str, int]], cfg, seed: Optional[int] = None,
                 limit: float = 1.0):
        self.fasta, self.rows, self.seed = fasta, rows, seed
        self.seq_len, self.interval_len = int(cfg.seq_len), int(cfg.interval_len)
        self.rc_aug, self.add_eos = bool(cfg.rc_aug), bool(cfg.add_eos)
        self.mlm, self.mlm_probability = bool(cfg.mlm), float(cfg.mlm_probability)
        self.shifts = self.interval_len // self.seq_len
        self.n = max(1, int(len(rows) * self.shifts * limit)) if rows else 0
        missing = sorted({c for c, _ in rows if c not in fasta})
        if missing:
            raise ConfigError(f"data.bed names sequences the fasta {fasta.path} lacks: {', '.join(missing[:5])}")

    def __len__(self) -> int:
        return self.n

    def window(self, i: int) -> tuple[str, int, int]:
        """(chromosome, start, end) of sample `i`: shifted back inside the chromosome at its ends, as the repo."""
        chrom, row_start = self.rows[i // self.shifts]
        length = self.fasta.length(chrom)
        start = row_start + (i % self.shifts) * self.seq_len
        end = start + self.seq_len
        if end > length:
            start, end = start - (end - length), length
        if start < 0:
            start, end = 0, min(end - start, length)
        return chrom, start, end

    def __getitem__(self, i: int):
        g = None if self.seed is None else torch.Generator().manual_seed(sample_seed(self.seed, 0, int(i)))
        ids = encode(self.fasta.fetch(*self.window(int(i))))
        if self.rc_aug and float(torch.rand((), generator=g)) < 0.5:
            ids = reverse_complement(ids)
        if len(ids) < self.seq_len:  # a chromosome shorter than a window: left-padded, as the repo's tokenizer
            ids = torch.cat([ids.new_full((self.seq_len - len(ids),), PAD), ids])
        if self.mlm:
            return masked_lm_sample(ids, self.mlm_probability, self.add_eos, generator=g)
        return next_token_sample(ids, self.add_eos)


def build_dna_datasets(cfg, seed: int) -> tuple[GenomeWindows, GenomeWindows]:
    """(train, val) windows of a DNA data config; validation draws fixed by `seed`."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"unknown data.source {cfg.source!r} for DNA; choose one of: {', '.join(SOURCES)}")
    if cfg.interval_len % cfg.seq_len:
        raise ConfigError(f"data.seq_len={cfg.seq_len} must divide data.interval_len={cfg.interval_len} "
                          "(each interval is cut into whole windows; the repo's 2^20 needs a power of two)")
    if cfg.source == "synth":
        fasta_path, bed_path = synthetic_genome(cfg)
    else:
        if not cfg.fasta or not cfg.bed:
            raise ConfigError("data.source=fasta needs data.fasta (the genome, e.g. hg38.ml.fa) and data.bed (the "
                              "intervals, e.g. human-sequences.bed); see configs/data/hg38.yaml for the download")
        fasta_path, bed_path = Path(cfg.fasta), Path(cfg.bed)
        if not bed_path.is_file():
            raise ConfigError(f"data.bed={bed_path}: no such file")
    fasta = Fasta(fasta_path)
    splits = []
    for split, seed_, limit in ((cfg.train_split, None, 1.0), (cfg.val_split, seed, cfg.val_limit)):
        rows = read_bed(bed_path, split)
        if not rows:
            raise ConfigError(f"data.bed={bed_path} has no rows of split {split!r} (its 4th column)")
        splits.append(GenomeWindows(fasta, rows, cfg, seed=seed_, limit=limit))
    return splits[0], splits[1]


# --- a synthetic genome -----------------------------------------------------------------------------------------
#: planted in the synthetic genome: what a model can learn beyond the base frequencies
MOTIFS = ("TATAAAAGGC", "GGGCGGGGCC", "CACGTGACGT", "TTGACTCATG")


def write_synthetic_genome(root: str | Path, chroms: int = 4, length: int = 2**16, interval_len: int = 2**14,
                           seed: int = 0, line_width: int = 60) -> tuple[Path, Path]:
    """genome.fa + genome.bed under `root`: `chroms` chromosomes of `length` random bases with MOTIFS planted (about
    a third of the bases are in an intact motif), a soft-masked (lower case) stretch and a run of N in each; bed rows every
    `interval_len` bases, the last chromosome's 'valid', the others' 'train'. Deterministic in its arguments."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records, bed = [], []
    for c in range(chroms):
        seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, length)].copy()
        for start in rng.integers(0, length - 10, length // 20):
            motif = MOTIFS[rng.integers(len(MOTIFS))]
            seq[start:start + len(motif)] = np.frombuffer(motif.encode(), np.uint8)
        soft = rng.integers(0, length - 200)
        seq[soft:soft + 200] += ord("a") - ord("A")  # repeats are lower case in hg38
        gap = rng.integers(0, length - 50)
        seq[gap:gap + 50] = ord("N")
        lines = [seq[i:i + line_width].tobytes() for i in range(0, length, line_width)]
        records.append(b">chr%d synthetic\n" % (c + 1) + b"\n".join(lines) + b"\n")
        split = "valid" if c == chroms - 1 else "train"
        bed += [f"chr{c + 1}\t{s}\t{min(s + interval_len, length)}\t{split}\n" for s in range(0, length, interval_len)]
    fasta, bed_file = root / "genome.fa", root / "genome.bed"
    _write_atomic(fasta, b"".join(records))
    _write_atomic(bed_file, "".join(bed).encode())
    return fasta, bed_file


def synthetic_genome(cfg) -> tuple[Path, Path]:
    """The synthetic genome of a data config (source=synth), written on first use."""
    params = (cfg.synth_chroms, cfg.synth_length, cfg.interval_len, cfg.synth_seed)
    if cfg.root:
        root = Path(cfg.root)
    else:
        key = hashlib.sha1(repr(params).encode()).hexdigest()[:10]
        root = Path(os.environ.get("DYT_CACHE", Path.home() / ".cache" / "dyt")) / "dna_synth" / key
    fasta, bed = root / "genome.fa", root / "genome.bed"
    if not (fasta.is_file() and bed.is_file()):
        write_synthetic_genome(root, *params)
    return fasta, bed
