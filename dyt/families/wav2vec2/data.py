"""wav2vec 2.0's audio: utterances read whole, cropped per batch, batched by length (fairseq's audio_pretraining).

Sources (``data.source``):
  synth   speech-like signals made in memory (formant-filtered pulse trains, noise bursts, pauses): tests and the
          CPU mini-suite, no files.
  local   a fairseq manifest folder: ``<root>/<split>.tsv``, first line the audio root, then
          ``relative/path<TAB>num_samples`` (``scripts/make_speech.py`` writes one from LibriSpeech or espeak-ng).
  hf      a Hugging Face dataset (``hub_id``, map-style: random access for the seeded order and exact resume);
          the audio column is read as bytes and decoded with soundfile (``datasets`` >= 4 decodes with torchcodec,
          which our torch cannot use). Lengths are measured once by ``datasets.map`` and cached by it.

As fairseq (``fairseq/data/audio/raw_audio_dataset.py``): utterances shorter than ``min_sample_size`` are dropped,
a stereo file is averaged to mono, another sample rate is refused (a ConfigError: resample once with
``scripts/make_speech.py``, never silently per step), ``normalize`` standardises the whole utterance
(``F.layer_norm`` over the wave) before it is cropped, and a batch is cropped to its shortest utterance, capped at
``max_sample_size``, each at a random offset (``collate_crops``, fairseq's ``pad=False``).

Randomness: a training item ``(wave, seed)`` draws its seed from torch's RNG, which the train loader seeds per
(run seed, epoch, index) (``dyt.data.sampler.SeededSamples``); a validation item's seed is fixed by (run seed,
index). The crop offset comes from that seed (`crop_offset`); the model draws its masks and negatives from it too.

Batching (`LengthGroupedBatches`): fairseq sorts by length and fills each GPU's batch up to ``max_tokens`` samples
(a variable count). Our trainer's data position is a sample count with a fixed micro-batch, so we keep fairseq's
sort but cut it into micro-batches of a fixed size: similar lengths share a batch (little audio lost to the crop),
and the epoch's batches are a pure function of (seed, epoch), so resume by sample count and w ranks == 1 process
(with the same micro-batch: grad_accum x w) hold. The micro-batch that matches fairseq's audio per step is
``max_tokens / mean crop`` (README, "Speech data").
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, List, Optional

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch.utils.data import DataLoader, Dataset, Sampler

from dyt.data.hub import hf_offline
from dyt.data.sampler import SeededSamples, sample_seed
from dyt.errors import ConfigError
from dyt.ranges import COUNT, NONNEG_INT, POSITIVE, SEED, FRACTION, NumList, ranged, ranged_list

SOURCES = ("synth", "local", "hf")
SEED_LIMIT = 2**63  # item seeds are in [0, 2^63): they travel as an int64 tensor
CROP_STREAM = 1  # the crop offset's key beside the item seed (np.random.default_rng([seed, CROP_STREAM]))
VALID_SEED = 42  # wav2vec_manifest.py's default --seed: which utterances a held-out share takes


@dataclass
class AudioDataConfig:
    """Schema of configs/data/speech_*.yaml and librispeech.yaml (``defaults: [schema_audio]``)."""
    KIND: ClassVar[str] = "audio"
    WORDS: ClassVar[tuple[str, str]] = ("an audio dataset", "data=speech_synth, speech_local or librispeech")
    name: str = MISSING  # short, path-safe: part of the run name
    source: str = MISSING  # synth | local | hf
    root: Optional[str] = None  # local: the manifest folder (<train_split>.tsv, <val_split>.tsv)
    hub_id: Optional[str] = None  # hf: the dataset id (or a local folder datasets can load)
    hub_config: Optional[str] = None
    train_split: str = "train"  # local: train.tsv; hf: a split expression (a+b+c concatenates)
    val_split: Optional[str] = "valid"  # null (hf): hold out val_percent of the train split, as wav2vec_manifest.py
    val_percent: float = ranged(0.01, FRACTION)
    audio_column: str = "audio"  # hf
    sample_rate: int = ranged(16000, COUNT)  # files at another rate are refused
    max_sample_size: int = ranged(250000, COUNT)  # crop cap (fairseq Base 250k = 15.6 s; the DyT repo's Large 320k)
    min_sample_size: int = ranged(32000, NONNEG_INT)  # shorter utterances are dropped (fairseq: 32k = 2 s)
    normalize: bool = False  # each utterance to zero mean, unit variance (fairseq's Base and the DyT Large: false)
    synth_utterances: int = ranged(256, COUNT)  # synth: training utterances
    synth_val_utterances: int = ranged(32, COUNT)
    synth_seconds: List[float] = ranged_list(lambda: [1.5, 4.0], NumList(POSITIVE, 2))  # uniform length range
    synth_seed: int = ranged(0, SEED)  # which synthetic corpus (the data, not the run's randomness)
    num_workers: int = ranged(0, NONNEG_INT)


# --- reading ------------------------------------------------------------------------------------------------
def to_mono_float(wave: np.ndarray) -> np.ndarray:
    """[T] or [T, C] -> float32 [T], channels averaged (fairseq's postprocess)."""
    wave = np.asarray(wave, dtype=np.float32)
    return wave.mean(-1) if wave.ndim == 2 else wave


def check_rate(rate: int, want: int, what: str) -> None:
    if rate != want:
        raise ConfigError(f"{what} is {rate} Hz, data.sample_rate is {want} Hz: resample the corpus once (e.g. "
                          f"scripts/make_speech.py writes 16 kHz) rather than per step")


class ManifestAudio:
    """Files of a fairseq manifest: ``read(j) -> (wave, rate)``."""

    def __init__(self, root: Path, paths: list[str]):
        self.root, self.paths = root, paths

    def describe(self, j: int) -> str:
        return str(self.root / self.paths[j])

    def read(self, j: int):
        try:
            return sf.read(self.root / self.paths[j], dtype="float32", always_2d=False)
        except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError (a RuntimeError) for bad files
            raise ConfigError(f"cannot read {self.describe(j)}: {e}") from e


class HubAudio:
    """Rows of a Hugging Face dataset whose audio column holds {bytes, path} (``Audio(decode=False)``)."""

    def __init__(self, ds, column: str):
        self.ds, self.column = ds, column

    def describe(self, j: int) -> str:
        return f"row {j} of {self.ds.info.dataset_name or 'the hub dataset'}"

    def read(self, j: int):
        return decode_audio(self.ds[j][self.column], self.describe(j))


def decode_audio(cell: dict, what: str):
    """An ``Audio(decode=False)`` cell -> (wave, rate) with soundfile."""
    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell.get("path")
    if source is None:
        raise ConfigError(f"{what} has neither audio bytes nor a path")
    return sf.read(source, dtype="float32", always_2d=False)


class SynthAudio:
    """`synthetic_utterance` number j of a corpus: its length is the first draw, so sizes need no audio."""

    def __init__(self, keys: list[list[int]], seconds, rate: int):
        self.keys, self.seconds, self.rate = keys, tuple(seconds), rate

    def describe(self, j: int) -> str:
        return f"synthetic utterance {self.keys[j]}"

    def length(self, j: int) -> int:
        return synthetic_length(np.random.default_rng(self.keys[j]), self.seconds, self.rate)

    def read(self, j: int):
        rng = np.random.default_rng(self.keys[j])
        return synthetic_utterance(rng, synthetic_length(rng, self.seconds, self.rate), self.rate), self.rate


class Utterances(Dataset):
    """``(wave float32 [T], seed)`` for the utterances of `audio` (a reader) with ``sizes >= min_sample_size``.

    ``seed=None`` (training): the item's seed is drawn from torch's RNG (seeded per sample by the train loader);
    else it is fixed by (seed, index). `sizes` (numpy, in samples) are what the length-grouped batches sort by.
    """

    def __init__(self, audio, sizes, cfg, seed: Optional[int] = None):
        sizes = np.asarray(sizes, dtype=np.int64)
        self.keep = np.flatnonzero(sizes >= cfg.min_sample_size)
        if len(self.keep) == 0:
            raise ConfigError(f"no utterance of {len(sizes)} is at least data.min_sample_size={cfg.min_sample_size} "
                              f"samples long (the longest has {int(sizes.max(initial=0))})")
        self.audio, self.sizes, self.seed = audio, sizes[self.keep], seed
        self.rate, self.normalize = int(cfg.sample_rate), bool(cfg.normalize)
        self.skipped = len(sizes) - len(self.keep)  # fairseq logs "loaded N, skipped M samples"

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int):
        j = int(self.keep[i])
        wave, rate = self.audio.read(j)
        check_rate(rate, self.rate, self.audio.describe(j))
        wave = torch.from_numpy(to_mono_float(wave))
        if len(wave) != self.sizes[i]:
            raise ConfigError(f"{self.audio.describe(j)} has {len(wave)} samples, its manifest says {self.sizes[i]}: "
                              f"rebuild the manifest (scripts/make_speech.py)")
        if self.normalize:  # fairseq: F.layer_norm over the whole utterance, before the crop
            wave = F.layer_norm(wave, wave.shape)
        if self.seed is None:
            seed = int(torch.randint(0, SEED_LIMIT - 1, ()))
        else:
            seed = sample_seed(self.seed, 0, i) % SEED_LIMIT
        return wave, seed


# --- manifests ----------------------------------------------------------------------------------------------
def write_manifest(path: Path, root: Path, entries) -> None:
    """fairseq's tsv: the root, then ``relative/path<TAB>num_samples`` per utterance."""
    lines = [str(root)] + [f"{rel}\t{int(n)}" for rel, n in entries]
    Path(path).write_text("\n".join(lines) + "\n")


def read_manifest(path: Path) -> tuple[Path, list[str], np.ndarray]:
    """(audio root, relative paths, sizes) of a fairseq manifest; a relative root is taken from the manifest's
    folder (a corpus folder can move)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no manifest {path}: write one with scripts/make_speech.py "
                          f"(--librispeech <LibriSpeech folder> or --out <folder> for a spoken test corpus)")
    lines = path.read_text().splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(f"{path}: empty manifest (its first line is the audio root)")
    root = Path(lines[0].strip())
    root = root if root.is_absolute() else path.parent / root
    paths, sizes = [], []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        rel, tab, count = line.rpartition("\t")
        if not tab or not rel or not count.strip().isdigit():
            raise ConfigError(f"{path}:{n}: expected 'relative/path<TAB>num_samples', got {line[:120]!r}")
        paths.append(rel)
        sizes.append(int(count))
    if not paths:
        raise ConfigError(f"{path}: the manifest lists no audio files")
    return root, paths, np.array(sizes, dtype=np.int64)


def manifest_split(cfg, split: str, seed: Optional[int]) -> Utterances:
    if not cfg.root:
        raise ConfigError("data.source=local needs data.root: a folder with train.tsv and valid.tsv "
                          "(scripts/make_speech.py writes one)")
    if not Path(cfg.root).is_dir():
        raise ConfigError(f"data.root={cfg.root} is not a folder")
    root, paths, sizes = read_manifest(Path(cfg.root) / f"{split}.tsv")
    if not root.is_dir():
        raise ConfigError(f"{Path(cfg.root) / f'{split}.tsv'}: its audio root {root} is not a folder")
    data = Utterances(ManifestAudio(root, paths), sizes, cfg, seed)
    _, rate = data.audio.read(int(data.keep[0]))  # the first file's rate now, not at step 1000
    check_rate(rate, data.rate, data.audio.describe(int(data.keep[0])))
    return data


# --- the hub ------------------------------------------------------------------------------------------------
def _audio_lengths(cells):
    """datasets.map: the frame count and rate of each audio cell, from its header (no decoding)."""
    infos = [sf.info(io.BytesIO(c["bytes"]) if c.get("bytes") else c["path"]) for c in cells]
    return {"frames": [i.frames for i in infos], "rate": [i.samplerate for i in infos]}


def hub_split(cfg, split: str):
    """(audio dataset, sizes) of one split; lengths measured once by datasets.map, which caches them."""
    import datasets

    if not cfg.hub_id:
        raise ConfigError("data.source=hf needs data.hub_id (e.g. openslr/librispeech_asr)")
    try:
        ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=split)
    except Exception as e:  # offline, unknown id/config/split, gated
        offline = " while offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE, no cached copy)" if hf_offline() else ""
        raise ConfigError(f"cannot load dataset {cfg.hub_id!r} ({cfg.hub_config}) split {split!r}{offline}: "
                          f"{str(e).splitlines()[0][:160]}; or use a local copy: data=speech_local "
                          f"data.root=<manifest folder from scripts/make_speech.py --librispeech>") from e
    if cfg.audio_column not in ds.column_names:
        raise ConfigError(f"dataset {cfg.hub_id!r} has no column data.audio_column={cfg.audio_column!r}; "
                          f"it has {ds.column_names}")
    ds = ds.cast_column(cfg.audio_column, datasets.Audio(decode=False))
    lengths = ds.select_columns([cfg.audio_column]).map(
        _audio_lengths, batched=True, input_columns=[cfg.audio_column], remove_columns=[cfg.audio_column],
        num_proc=int(cfg.num_workers) or None, desc="audio lengths")
    rates = np.unique(np.asarray(lengths["rate"]))
    if len(rates) != 1 or rates[0] != cfg.sample_rate:
        raise ConfigError(f"dataset {cfg.hub_id!r} split {split!r} has sample rates {rates.tolist()} Hz, "
                          f"data.sample_rate is {cfg.sample_rate}: resample it (refused, not done per step)")
    return HubAudio(ds, cfg.audio_column), np.asarray(lengths["frames"], dtype=np.int64)


def held_out(n: int, percent: float, seed: int = VALID_SEED) -> np.ndarray:
    """Which of n utterances are validation: wav2vec_manifest.py's rule (random.Random(seed), valid when a draw
    <= percent), in the split's row order."""
    rand = random.Random(seed)
    return np.array([rand.random() <= percent for _ in range(n)], dtype=bool)


class Subset:
    """Rows `rows` of a reader."""

    def __init__(self, audio, rows: np.ndarray):
        self.audio, self.rows = audio, rows

    def describe(self, j: int) -> str:
        return self.audio.describe(int(self.rows[j]))

    def read(self, j: int):
        return self.audio.read(int(self.rows[j]))


# --- datasets -----------------------------------------------------------------------------------------------
def build_audio_datasets(cfg, seed: int) -> tuple[Utterances, Utterances]:
    """(train, val) of a data config: items ``(wave float32 [T], seed int)``; validation seeds fixed by `seed`."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"data.source={cfg.source}: choose one of {', '.join(SOURCES)}")
    if cfg.source == "synth":
        parts = []
        for split, count in ((0, cfg.synth_utterances), (1, cfg.synth_val_utterances)):
            audio = SynthAudio([[cfg.synth_seed % 2**64, split, j] for j in range(count)], cfg.synth_seconds,
                               cfg.sample_rate)
            parts.append((audio, [audio.length(j) for j in range(count)]))
        return Utterances(*parts[0], cfg), Utterances(*parts[1], cfg, seed)
    if cfg.source == "local":
        if not cfg.val_split:
            raise ConfigError("data.source=local needs data.val_split (the manifest <val_split>.tsv)")
        return manifest_split(cfg, cfg.train_split, None), manifest_split(cfg, cfg.val_split, seed)
    audio, sizes = hub_split(cfg, cfg.train_split)
    if cfg.val_split:
        val_audio, val_sizes = hub_split(cfg, cfg.val_split)
        return Utterances(audio, sizes, cfg), Utterances(val_audio, val_sizes, cfg, seed)
    valid = held_out(len(sizes), cfg.val_percent)
    if valid.all() or not valid.any():
        raise ConfigError(f"data.val_percent={cfg.val_percent} holds out {int(valid.sum())} of {len(sizes)} "
                          f"utterances: set it so both splits are non-empty, or name data.val_split")
    train_rows, val_rows = np.flatnonzero(~valid), np.flatnonzero(valid)
    return (Utterances(Subset(audio, train_rows), sizes[train_rows], cfg),
            Utterances(Subset(audio, val_rows), sizes[val_rows], cfg, seed))


# --- batches ------------------------------------------------------------------------------------------------
def crop_offset(seed: int, diff: int) -> int:
    """Where an utterance `diff` samples longer than the batch's crop starts: uniform in [0, diff], by its seed."""
    return int(np.random.default_rng([seed, CROP_STREAM]).integers(0, diff + 1))


def collate_crops(items, data_cfg) -> dict[str, torch.Tensor]:
    """``{"source": float [B, T], "seed": int64 [B]}``: every wave cropped to the batch's shortest, capped at
    ``max_sample_size`` (fairseq's collater with pad=False), at `crop_offset` of its seed."""
    waves, seeds = zip(*items)
    target = min(min(len(w) for w in waves), int(data_cfg.max_sample_size))
    crops = []
    for w, s in zip(waves, seeds):
        start = crop_offset(s, len(w) - target) if len(w) > target else 0
        crops.append(w[start:start + target])
    return {"source": torch.stack(crops), "seed": torch.tensor(seeds, dtype=torch.int64)}


class LengthGroupedBatches(Sampler[List[int]]):
    """Epoch `epoch`'s micro-batches of `micro_batch` similar-length utterances for rank `rank` of `world`.

    As fairseq's ``ordered_indices``: a permutation seeded by (seed, epoch), then a stable sort by length capped at
    `max_size`, longest first (equal lengths stay in random order). The permutation's tail (n mod micro_batch
    utterances, different each epoch) is left out, the sorted order is cut into micro-batches, their order shuffled
    (seed, epoch), the ones that do not fill a round of `world` dropped, and rank r takes micro-batches r, r + w,
    ... A run on w ranks thus trains on the micro-batches one process (grad_accum x w) trains on. `start` skips
    this rank's first micro-batches (resume).
    """

    def __init__(self, sizes, micro_batch: int, rank: int = 0, world: int = 1, seed: int = 0, epoch: int = 0,
                 max_size: Optional[int] = None, start: int = 0):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.micro_batch, self.rank, self.world, self.seed, self.epoch = micro_batch, rank, world, seed, epoch
        self.max_size, self.start = max_size, start

    def batches(self) -> np.ndarray:
        """This rank's micro-batches of the epoch (from `start`) as a [batches, micro_batch] index array."""
        b, n = self.micro_batch, len(self.sizes)
        rng = np.random.default_rng([self.seed % 2**64, self.epoch])
        perm = rng.permutation(n)[: n // b * b]
        length = self.sizes[perm] if self.max_size is None else np.minimum(self.sizes[perm], self.max_size)
        groups = perm[np.argsort(-length, kind="stable")].reshape(-1, b)
        groups = groups[rng.permutation(len(groups))][: len(groups) // self.world * self.world]
        return groups[self.rank :: self.world][self.start :]

    def __iter__(self):
        yield from self.batches().tolist()

    def __len__(self) -> int:  # arithmetic, as the trainer's batches_per_epoch
        return max(0, len(self.sizes) // self.micro_batch // self.world - self.start)


def sorted_batches(sizes, batch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Validation: all utterances, longest first, cut into batches of `batch` (the last may be smaller); rank r
    takes batches r, r + w, ... The batches (hence the crops) do not depend on the number of ranks."""
    order = np.argsort(-np.asarray(sizes), kind="stable")
    return [order[i:i + batch].tolist() for i in range(0, len(order), batch)][rank::world]


def audio_train_loader(train: Utterances, data_cfg, micro_batch: int, rank: int, world: int, seed: int,
                       epoch: int, start_batch: int) -> DataLoader:
    """What a Task's ``train_loader`` returns: this rank's micro-batches of one epoch from `start_batch`, each
    item loaded under RNGs seeded by (seed, epoch, index)."""
    sampler = LengthGroupedBatches(train.sizes, micro_batch, rank, world, seed, epoch,
                                   max_size=int(data_cfg.max_sample_size), start=start_batch)
    # the private generator keeps the loader's worker seed from drawing on the global RNG (exact resume); the
    # draws that matter are seeded per sample
    return DataLoader(SeededSamples(train, seed, epoch), batch_sampler=sampler,
                      collate_fn=partial(collate_crops, data_cfg=data_cfg), num_workers=int(data_cfg.num_workers),
                      generator=torch.Generator().manual_seed(epoch), pin_memory=torch.cuda.is_available())


def audio_val_loader(val: Utterances, data_cfg, batch: int, rank: int, world: int) -> DataLoader:
    """What a Task's ``val_loader`` returns: `sorted_batches` of fixed-seed items."""
    return DataLoader(val, batch_sampler=sorted_batches(val.sizes, batch, rank, world),
                      collate_fn=partial(collate_crops, data_cfg=data_cfg), num_workers=int(data_cfg.num_workers),
                      generator=torch.Generator().manual_seed(0))


# --- synthetic speech -----------------------------------------------------------------------------------------
# (F1, F2, F3) in Hz of a few vowels (Peterson & Barney's averages, rounded): voiced segments pick one
VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (660, 1720, 2410),
          (490, 1350, 1690), (570, 840, 2410), (440, 1020, 2240))
FRICATIVES = (2500, 4000, 6000)  # centre frequencies of band-limited noise bursts


def synthetic_length(rng: np.random.Generator, seconds, rate: int) -> int:
    return int(round(rng.uniform(*seconds) * rate))


def _resonator(x: np.ndarray, freq: float, bandwidth: float, rate: int) -> np.ndarray:
    """A two-pole resonance (a formant) at `freq` Hz."""
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bandwidth / rate)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / rate), r * r]
    return lfilter([1.0 - r], a, x)


def synthetic_utterance(rng: np.random.Generator, length: int, rate: int) -> np.ndarray:
    """A speech-like float32 wave of `length` samples: segments of 60-250 ms, each a vowel (a pitch pulse train
    through three formant resonators, pitch drifting around a per-utterance speaker pitch), a fricative (noise
    through a high resonance) or a pause, with 10 ms ramps and a faint noise floor; peak 0.5. Discrete sound
    classes give the quantizer something to find; no claim to be speech."""
    out = np.zeros(length)
    pitch = rng.uniform(90, 240)
    pos = 0
    while pos < length:
        n = min(length - pos, int(rng.uniform(0.06, 0.25) * rate))
        kind = rng.choice(3, p=[0.6, 0.25, 0.15])
        if kind == 0:
            f0 = pitch * np.exp(np.linspace(0, rng.normal(0, 0.1), n))
            phase = np.cumsum(f0 / rate)
            seg = np.diff(np.floor(phase), prepend=np.floor(phase[0])).astype(float)  # a pulse per period
            for formant, bw in zip(VOWELS[rng.integers(len(VOWELS))], (80, 100, 120)):
                seg = _resonator(seg, formant * rng.uniform(0.95, 1.05), bw, rate)
        elif kind == 1:
            seg = _resonator(rng.standard_normal(n), FRICATIVES[rng.integers(len(FRICATIVES))], 600, rate)
        else:
            seg = np.zeros(n)
        ramp = min(n // 2, rate // 100)
        if ramp:
            env = np.ones(n)
            env[:ramp] = env[-ramp:][::-1] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
            seg = seg * env
        peak = np.abs(seg).max()
        out[pos:pos + n] = seg / peak * rng.uniform(0.3, 1.0) if peak > 0 else seg
        pos += n
    out += 0.003 * rng.standard_normal(length)
    return (0.5 * out / max(np.abs(out).max(), 1e-8)).astype(np.float32)
