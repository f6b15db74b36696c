"""Audio manifests for wav2vec 2.0 (fairseq's tsv: the audio root, then ``relative/path<TAB>num_samples``).

    # a spoken test corpus: espeak-ng reads sentences of Python's own pydoc text (16 kHz WAV); synthetic
    # speech-like signals where espeak-ng is missing (or with --synthetic)
    python scripts/make_speech.py --out data/speech --utterances 400
    python train.py ... data=speech_local data.root=data/speech

    # LibriSpeech 960h from a local download (fairseq's wav2vec_manifest.py: flac files, 1% held out)
    python scripts/make_speech.py --librispeech /data/LibriSpeech --out /data/librispeech_manifest

    # what batches a manifest gives: fairseq's max_tokens batches against a fixed micro-batch
    python scripts/make_speech.py --stats /data/librispeech_manifest/train.tsv --max-tokens 1400000

Each writes ``train.tsv`` and ``valid.tsv`` under ``--out``. Unlike wav2vec_manifest.py (which walks the folder
in file-system order), files are sorted first, so the held-out share is the same on every machine.
"""
from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.errors import ConfigError  # noqa: E402
from dyt.families.wav2vec2.data import (held_out, read_manifest, synthetic_length,  # noqa: E402
                                        synthetic_utterance, write_manifest)

RATE = 16000
VOICES = ("en-us", "en-us+m3", "en-us+f2", "en+m1", "en+f3", "en-gb-x-rp+m5", "en+f4", "en-us+m7")


def sentences() -> list[str]:
    """Plain sentences of 6-30 words from pydoc_data.topics (embedded in Python), in a fixed order."""
    import pydoc_data.topics

    found = set()
    for text in pydoc_data.topics.topics.values():
        for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            words = s.split()
            if 6 <= len(words) <= 30 and re.fullmatch(r"[A-Za-z ,;'\-]+[.!?]", s):
                found.add(s)
    return sorted(found)


def resample(wave: np.ndarray, rate: int) -> np.ndarray:
    """To 16 kHz with scipy's polyphase filter (22050 -> 16000 is 320/441)."""
    from scipy.signal import resample_poly

    g = gcd(rate, RATE)
    return wave if rate == RATE else resample_poly(wave, RATE // g, rate // g)


def spoken(text: str, rng: random.Random, tmp: Path) -> np.ndarray:
    """`text` read by espeak-ng (a random voice, speed and pitch), at 16 kHz."""
    out = tmp / "say.wav"
    cmd = ["espeak-ng", "-w", str(out), "-v", rng.choice(VOICES), "-s", str(rng.randint(130, 190)),
           "-p", str(rng.randint(25, 75)), text]
    subprocess.run(cmd, check=True, capture_output=True)
    wave, rate = sf.read(out, dtype="float32")
    return resample(wave, rate)


def make_corpus(out: Path, utterances: int, valid_percent: float, seed: int, synthetic: bool) -> str:
    """`utterances` WAV files under out/wav and their manifests; returns how they were made."""
    if not synthetic and shutil.which("espeak-ng") is None:
        print("espeak-ng is not on PATH: writing synthetic speech-like signals instead", file=sys.stderr)
        synthetic = True
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rng, texts = random.Random(seed), sentences()
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(utterances):
            if synthetic:
                g = np.random.default_rng([seed % 2**64, 2, i])
                wave = synthetic_utterance(g, synthetic_length(g, (1.5, 6.0), RATE), RATE)
            else:
                wave = spoken(texts[rng.randrange(len(texts))], rng, Path(tmp))
            rel = f"wav/{i:06d}.wav"
            sf.write(out / rel, np.clip(wave, -1, 1), RATE, subtype="PCM_16")
            entries.append((rel, sf.info(out / rel).frames))
    write_split_manifests(out, out.resolve(), entries, valid_percent, seed)
    return "synthetic signals" if synthetic else "espeak-ng"


def write_split_manifests(out: Path, root: Path, entries, valid_percent: float, seed: int) -> None:
    valid = held_out(len(entries), valid_percent, seed)
    if valid.all() or not valid.any():
        raise ConfigError(f"--valid-percent {valid_percent} holds out {int(valid.sum())} of {len(entries)} files: "
                          f"both train.tsv and valid.tsv need some")
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "train.tsv", root, [e for e, v in zip(entries, valid) if not v])
    write_manifest(out / "valid.tsv", root, [e for e, v in zip(entries, valid) if v])


def librispeech_manifest(folder: Path, out: Path, valid_percent: float, seed: int, ext: str) -> int:
    """wav2vec_manifest.py on a LibriSpeech folder: every *.ext under it with its frame count."""
    if not folder.is_dir():
        raise ConfigError(f"--librispeech {folder} is not a folder")
    root = folder.resolve()
    files = sorted(p.relative_to(root) for p in root.rglob(f"*.{ext}"))
    if not files:
        raise ConfigError(f"no .{ext} files under {root}")
    write_split_manifests(out, root, [(p.as_posix(), sf.info(root / p).frames) for p in files], valid_percent, seed)
    return len(files)


def fairseq_batches(sizes: np.ndarray, max_tokens: int) -> np.ndarray:
    """Utterances per batch as fairseq's batch_by_size makes them from lengths sorted longest first: a batch
    grows while (its count) x (its longest) stays within max_tokens."""
    counts, n, longest = [], 0, 0
    for s in np.sort(sizes)[::-1]:
        if n and (n + 1) * max(longest, s) > max_tokens:
            counts.append(n)
            n, longest = 0, 0
        n, longest = n + 1, max(longest, s)
    return np.array(counts + [n])


def stats(manifest: Path, max_size: int, min_size: int, max_tokens: int, rate: int = RATE) -> None:
    _, _, sizes = read_manifest(manifest)
    kept = np.minimum(sizes[sizes >= min_size], max_size)
    counts = fairseq_batches(kept, max_tokens)
    print(f"{manifest}: {len(sizes)} utterances, {sizes.sum() / rate / 3600:.2f} h, mean {sizes.mean() / rate:.2f} s; "
          f"{len(kept)} of at least {min_size} samples")
    print(f"  mean crop cap min(length, {max_size}): {kept.mean():.0f} samples ({kept.mean() / rate:.2f} s)")
    print(f"  fairseq max_tokens={max_tokens}: {counts.mean():.2f} utterances a batch on average "
          f"(min {counts.min()}, max {counts.max()}), {kept.sum() / len(counts):.0f} samples a batch")
    print(f"  a fixed micro-batch of max_tokens / mean crop = {max_tokens / kept.mean():.2f} utterances")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--librispeech", type=Path, help="index a LibriSpeech (or any) folder of audio files")
    what.add_argument("--stats", type=Path, help="lengths and batch sizes of a manifest (.tsv)")
    p.add_argument("--out", type=Path, help="the manifest folder to write (train.tsv, valid.tsv; wav/ for a corpus)")
    p.add_argument("--utterances", type=int, default=400, help="files of the made corpus")
    p.add_argument("--synthetic", action="store_true", help="synthetic signals even where espeak-ng is installed")
    p.add_argument("--valid-percent", type=float, default=None,
                   help="held-out share (default: 0.01 for --librispeech as fairseq, 0.1 for a made corpus)")
    p.add_argument("--seed", type=int, default=42, help="which files are held out (and the made corpus)")
    p.add_argument("--ext", default="flac", help="--librispeech: the audio files' extension")
    p.add_argument("--max-sample-size", type=int, default=250000)
    p.add_argument("--min-sample-size", type=int, default=32000)
    p.add_argument("--max-tokens", type=int, default=1400000)
    args = p.parse_args(argv)
    try:
        if args.stats:
            stats(args.stats, args.max_sample_size, args.min_sample_size, args.max_tokens)
            return 0
        if args.out is None:
            p.error("--out is required")
        held = args.valid_percent
        if args.librispeech:
            n = librispeech_manifest(args.librispeech, args.out, 0.01 if held is None else held, args.seed, args.ext)
            print(f"{n} files indexed: {args.out}/train.tsv, valid.tsv")
        else:
            how = make_corpus(args.out, args.utterances, 0.1 if held is None else held, args.seed, args.synthetic)
            print(f"{args.utterances} utterances ({how}) under {args.out}; data=speech_local data.root={args.out}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
