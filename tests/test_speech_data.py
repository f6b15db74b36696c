"""wav2vec 2.0's audio data (dyt/families/wav2vec2/data.py, scripts/make_speech.py): manifests, fairseq's crops
and filters, the length-grouped seeded batches, the three sources and their errors. Offline: every corpus is made
here (synthetic signals; espeak-ng only where installed)."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from omegaconf import OmegaConf

from conftest import ROOT, script
from dyt.errors import ConfigError
from dyt.families.wav2vec2.data import (AudioDataConfig, LengthGroupedBatches, audio_train_loader, audio_val_loader,
                                        build_audio_datasets, collate_crops, crop_offset, held_out, read_manifest,
                                        sorted_batches, write_manifest)

RATE = 16000


def audio_cfg(**kw):
    return OmegaConf.structured(AudioDataConfig(**{"name": "t", "source": "synth", "synth_utterances": 24,
                                                   "synth_val_utterances": 8, "min_sample_size": 8000,
                                                   "max_sample_size": 20000, **kw}))


def corpus(folder: Path, lengths, val_lengths=(24000, 30000), rate=RATE) -> Path:
    """A manifest folder of noise WAVs of these lengths (train.tsv / valid.tsv, root = folder)."""
    for split, lens in (("train", lengths), ("valid", val_lengths)):
        entries = []
        for i, n in enumerate(lens):
            rel = f"{split}/{i}.wav"
            (folder / split).mkdir(parents=True, exist_ok=True)
            sf.write(folder / rel, np.random.default_rng(i).uniform(-0.5, 0.5, n), rate, subtype="FLOAT")
            entries.append((rel, n))
        write_manifest(folder / f"{split}.tsv", folder, entries)
    return folder


def test_manifest_round_trip_and_relative_root(tmp_path):
    write_manifest(tmp_path / "train.tsv", tmp_path / "audio", [("a/1.flac", 48000), ("b c/2.flac", 32001)])
    assert (tmp_path / "train.tsv").read_text() == f"{tmp_path / 'audio'}\na/1.flac\t48000\nb c/2.flac\t32001\n"
    root, paths, sizes = read_manifest(tmp_path / "train.tsv")
    assert (root, paths, sizes.tolist()) == (tmp_path / "audio", ["a/1.flac", "b c/2.flac"], [48000, 32001])
    (tmp_path / "rel.tsv").write_text("wavs\nx.wav\t5\n")  # a relative root is the manifest's folder's
    assert read_manifest(tmp_path / "rel.tsv")[0] == tmp_path / "wavs"


def test_local_corpus_items_filter_and_loaders(tmp_path):
    cfg = audio_cfg(source="local", root=str(corpus(tmp_path, [9000, 4000, 12000, 30000, 7999, 25000])))
    train, val = build_audio_datasets(cfg, seed=3)
    assert train.sizes.tolist() == [9000, 12000, 30000, 25000] and train.skipped == 2  # < min_sample_size dropped
    wave, seed = train[2]
    assert wave.dtype == torch.float32 and wave.shape == (30000,) and 0 <= seed < 2**63
    np.testing.assert_array_equal(wave.numpy(), sf.read(tmp_path / "train/3.wav", dtype="float32")[0])
    assert val[0][1] == val[0][1] != val[1][1]  # validation seeds are fixed per index
    assert build_audio_datasets(cfg, seed=4)[1][0][1] != val[0][1]  # ... and by the run's seed
    batch = next(iter(audio_train_loader(train, cfg, 2, 0, 1, seed=0, epoch=0, start_batch=0)))
    assert batch["source"].dtype == torch.float32 and batch["seed"].dtype == torch.int64
    assert batch["source"].shape[0] == 2 and batch["source"].shape[1] <= cfg.max_sample_size
    vb = [b["source"].shape for b in audio_val_loader(val, cfg, 1, 0, 1)]
    assert vb == [(1, 20000), (1, 20000)]  # capped at max_sample_size


def test_crops_fairseq_collater():
    cfg = audio_cfg(max_sample_size=100)
    waves = [torch.arange(n, dtype=torch.float32) for n in (130, 80, 95)]
    out = collate_crops([(w, s) for w, s in zip(waves, (11, 12, 13))], cfg)
    assert out["source"].shape == (3, 80) and out["seed"].tolist() == [11, 12, 13]  # the batch's shortest
    for w, s, crop in zip(waves, (11, 12, 13), out["source"]):
        start = crop_offset(s, len(w) - 80) if len(w) > 80 else 0
        assert torch.equal(crop, w[start:start + 80])  # the offset is the sample's seed's
    long = [torch.arange(n, dtype=torch.float32) for n in (300, 250)]
    assert collate_crops([(long[0], 1), (long[1], 2)], cfg)["source"].shape == (2, 100)  # capped at max_sample_size
    offsets = {crop_offset(s, 200) for s in range(50)}
    assert len(offsets) > 25 and min(offsets) >= 0 and max(offsets) <= 200
    assert crop_offset(7, 200) == crop_offset(7, 200)


def test_normalize_standardises_each_utterance_before_the_crop():
    raw_train, _ = build_audio_datasets(audio_cfg(), seed=0)
    train, _ = build_audio_datasets(audio_cfg(normalize=True), seed=0)
    raw, norm = raw_train[0][0].double(), train[0][0].double()
    var = raw.var(unbiased=False)
    assert abs(norm.mean()) < 1e-5 and abs(norm.var(unbiased=False) - var / (var + 1e-5)) < 1e-4  # eps 1e-5
    expected = (raw - raw.mean()) / torch.sqrt(raw.var(unbiased=False) + 1e-5)  # F.layer_norm's formula
    torch.testing.assert_close(norm, expected, atol=1e-4, rtol=1e-4)


def test_synthetic_corpus_is_fixed_by_its_seed():
    a, a_val = build_audio_datasets(audio_cfg(), seed=0)
    b, _ = build_audio_datasets(audio_cfg(), seed=1)  # the run's seed does not change the corpus
    c, _ = build_audio_datasets(audio_cfg(synth_seed=5), seed=0)
    assert torch.equal(a[3][0], b[3][0]) and not torch.equal(a[3][0], c[3][0])
    assert a.sizes.tolist() == [len(a[i][0]) for i in range(len(a))]  # sizes known without the audio
    assert not torch.equal(a[0][0][: len(a_val[0][0])], a_val[0][0][: len(a[0][0])])  # val is other audio
    lo, hi = (round(s * RATE) for s in audio_cfg().synth_seconds)
    assert all(lo <= n <= hi for n in a.sizes) and a[0][0].abs().max() <= 0.5 + 1e-6


def test_length_grouped_batches_are_a_function_of_seed_and_epoch():
    sizes = np.random.default_rng(0).integers(32000, 400000, 103)
    one = LengthGroupedBatches(sizes, 4, seed=7, epoch=2, max_size=250000).batches()
    assert np.array_equal(one, LengthGroupedBatches(sizes, 4, seed=7, epoch=2, max_size=250000).batches())
    assert not np.array_equal(one, LengthGroupedBatches(sizes, 4, seed=7, epoch=3, max_size=250000).batches())
    assert not np.array_equal(one, LengthGroupedBatches(sizes, 4, seed=8, epoch=2, max_size=250000).batches())
    assert one.shape == (25, 4) and len(np.unique(one)) == 100  # 103 // 4 batches, no index twice
    # each micro-batch is a run of the capped-length order: no utterance outside it lies strictly between its ends
    capped = np.minimum(sizes, 250000)
    used = capped[one.ravel()]
    for batch in one:
        lo, hi = capped[batch].min(), capped[batch].max()
        assert ((used > lo) & (used < hi)).sum() == ((capped[batch] > lo) & (capped[batch] < hi)).sum()
    # two ranks' shares, interleaved, are one process's micro-batches; len() and start as the trainer uses them
    ranks = [LengthGroupedBatches(sizes, 4, rank=r, world=2, seed=7, epoch=2, max_size=250000) for r in (0, 1)]
    shares = [r.batches() for r in ranks]
    assert np.array_equal(np.stack(shares, 1).reshape(-1, 4), one[:24])
    assert [len(r) for r in ranks] == [103 // 2 // 4] * 2 == [len(s) for s in shares]
    resumed = LengthGroupedBatches(sizes, 4, rank=1, world=2, seed=7, epoch=2, max_size=250000, start=5)
    assert list(resumed) == shares[1][5:].tolist() and len(resumed) == len(shares[1]) - 5


def test_train_loader_is_the_same_on_reload_and_per_rank():
    train, _ = build_audio_datasets(audio_cfg(), seed=0)
    def load(rank, world, start=0):
        return list(audio_train_loader(train, audio_cfg(), 2, rank, world, seed=5, epoch=1, start_batch=start))

    one = load(0, 1)
    again = load(0, 1)
    assert all(torch.equal(x["source"], y["source"]) and torch.equal(x["seed"], y["seed"]) for x, y in zip(one, again))
    r0, r1 = load(0, 2), load(1, 2)
    for k, (a, b) in enumerate(zip(r0, r1)):  # seeds (hence crops, masks) are per sample, whichever rank loads it
        assert torch.equal(a["source"], one[2 * k]["source"]) and torch.equal(b["seed"], one[2 * k + 1]["seed"])
    assert torch.equal(load(1, 2, start=3)[0]["seed"], r1[3]["seed"])  # resume mid-epoch
    state = torch.random.get_rng_state()
    load(0, 1)
    load(0, 1, start=2)
    list(audio_val_loader(build_audio_datasets(audio_cfg(), seed=0)[1], audio_cfg(), 2, 0, 1))
    assert torch.equal(state, torch.random.get_rng_state())  # loading never moves the training RNG


def test_val_batches_do_not_depend_on_the_number_of_ranks():
    sizes = [5, 9, 7, 9, 3, 8, 1]
    assert sorted_batches(sizes, 3) == [[1, 3, 5], [2, 0, 4], [6]]
    assert sorted_batches(sizes, 3, rank=0, world=2) + sorted_batches(sizes, 3, rank=1, world=2) == \
        [[1, 3, 5], [6], [2, 0, 4]]


def test_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.source=local needs data.root"):
        build_audio_datasets(audio_cfg(source="local"), 0)
    with pytest.raises(ConfigError, match="is not a folder"):
        build_audio_datasets(audio_cfg(source="local", root=str(tmp_path / "nowhere")), 0)
    with pytest.raises(ConfigError, match=r"no manifest .*train.tsv: write one with scripts/make_speech.py"):
        build_audio_datasets(audio_cfg(source="local", root=str(tmp_path)), 0)
    root = corpus(tmp_path / "c", [9000, 10000])
    good = (root / "train.tsv").read_text()
    (root / "train.tsv").write_text(good + "loose.wav 9000\n")
    with pytest.raises(ConfigError, match=r"train.tsv:4: expected 'relative/path<TAB>num_samples', got 'loose.wav"):
        build_audio_datasets(audio_cfg(source="local", root=str(root)), 0)
    (root / "train.tsv").write_text(good.replace("\t10000", "\t10001"))
    train, _ = build_audio_datasets(audio_cfg(source="local", root=str(root)), 0)
    with pytest.raises(ConfigError, match=r"has 10000 samples, its manifest says 10001: rebuild the manifest"):
        train[1]
    with pytest.raises(ConfigError, match="no utterance of 2 is at least data.min_sample_size=20000"):
        build_audio_datasets(audio_cfg(source="local", root=str(root), min_sample_size=20000), 0)
    other = corpus(tmp_path / "r", [9000], rate=22050)  # another rate is refused, not resampled per step
    with pytest.raises(ConfigError, match=r"is 22050 Hz, data.sample_rate is 16000 Hz: resample the corpus once"):
        build_audio_datasets(audio_cfg(source="local", root=str(other)), 0)
    with pytest.raises(ConfigError, match="data.source=mp3: choose one of synth, local, hf"):
        build_audio_datasets(audio_cfg(source="mp3"), 0)
    with pytest.raises(ConfigError, match=r"cannot load dataset 'nobody/no_such_speech' .* while offline"):
        build_audio_datasets(audio_cfg(source="hf", hub_id="nobody/no_such_speech", val_split=None), 0)


def test_hub_source_reads_bytes_with_soundfile_and_holds_out_a_share(tmp_path):
    """A local parquet folder as the hub dataset (offline): audio cells {bytes, path} as the hub stores them."""
    import io

    from datasets import Dataset, Features, Value

    def flac(n):
        buf = io.BytesIO()
        sf.write(buf, np.random.default_rng(n).uniform(-0.5, 0.5, n), RATE, format="FLAC")
        return buf.getvalue()

    lengths = [40000, 20000, 50000, 36000, 33000, 41000]
    rows = {"audio": [{"bytes": flac(n), "path": f"{i}.flac"} for i, n in enumerate(lengths)], "text": ["x"] * 6}
    feats = Features({"audio": {"bytes": Value("binary"), "path": Value("string")}, "text": Value("string")})
    (tmp_path / "data").mkdir()
    Dataset.from_dict(rows, features=feats).to_parquet(str(tmp_path / "data/train-00000-of-00001.parquet"))
    cfg = audio_cfg(source="hf", hub_id=str(tmp_path), val_split=None, val_percent=0.5, min_sample_size=30000)
    train, val = build_audio_datasets(cfg, 0)
    held = held_out(6, 0.5)  # wav2vec_manifest.py's rule, in row order
    kept = [n for n in lengths if n >= 30000]
    assert sorted(train.sizes.tolist() + val.sizes.tolist()) == sorted(kept)
    assert val.sizes.tolist() == [n for n, v in zip(lengths, held) if v and n >= 30000]
    wave, _ = train[0]
    np.testing.assert_allclose(wave.numpy(), sf.read(io.BytesIO(flac(int(train.sizes[0]))), dtype="float32")[0])
    with pytest.raises(ConfigError, match="has no column data.audio_column='speech'"):
        build_audio_datasets(audio_cfg(source="hf", hub_id=str(tmp_path), val_split=None, audio_column="speech"), 0)


def test_librispeech_manifest_and_stats(tmp_path, capsys):
    make = script("scripts/make_speech.py")
    for rel, n in (("19/198/19-198-0001.flac", 40000), ("19/198/19-198-0000.flac", 33000), ("103/1240/a.flac", 9)):
        (tmp_path / "ls" / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "ls" / rel, np.zeros(n), RATE, format="FLAC")
    assert make.main(["--librispeech", str(tmp_path / "ls"), "--out", str(tmp_path / "m"), "--valid-percent", "0.5",
                      "--seed", "1"]) == 0
    entries = [read_manifest(tmp_path / "m" / f"{s}.tsv") for s in ("train", "valid")]
    assert all(root == (tmp_path / "ls").resolve() for root, _, _ in entries)
    listed = sorted(zip(entries[0][1] + entries[1][1], entries[0][2].tolist() + entries[1][2].tolist()))
    assert listed == [("103/1240/a.flac", 9), ("19/198/19-198-0000.flac", 33000), ("19/198/19-198-0001.flac", 40000)]
    assert entries[1][1] == [p for p, v in zip(sorted(p for p, _ in listed), held_out(3, 0.5, 1)) if v]
    assert make.fairseq_batches(np.array([100, 50, 100, 50, 50]), 200).tolist() == [2, 3]
    make.main(["--stats", str(tmp_path / "m/train.tsv"), "--min-sample-size", "1", "--max-tokens", "80000"])
    assert "utterances a batch on average" in capsys.readouterr().out


def test_made_corpus_synthetic_path(tmp_path):
    make = script("scripts/make_speech.py")
    assert make.make_corpus(tmp_path, 6, 0.34, seed=3, synthetic=True) == "synthetic signals"
    cfg = audio_cfg(source="local", root=str(tmp_path), min_sample_size=1)
    train, val = build_audio_datasets(cfg, 0)
    assert len(train) + len(val) == 6 and len(val) > 0 and train[0][0].abs().max() > 0.1


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_made_corpus_spoken_by_espeak(tmp_path):
    make = script("scripts/make_speech.py")
    assert make.make_corpus(tmp_path, 3, 0.5, seed=1, synthetic=False) == "espeak-ng"
    train, val = build_audio_datasets(audio_cfg(source="local", root=str(tmp_path), min_sample_size=1), 0)
    assert len(train) + len(val) == 3
    assert all(sf.info(tmp_path / "wav" / f"{i:06d}.wav").samplerate == RATE for i in range(3))
    assert all(len(train[i][0]) > RATE // 2 for i in range(len(train)))  # a sentence lasts seconds


@pytest.mark.parametrize("name", ["speech_synth", "speech_local", "librispeech"])
def test_data_configs_fit_the_schema(name):
    raw = yaml.safe_load((ROOT / f"configs/data/{name}.yaml").read_text())
    assert raw.pop("defaults") == ["schema_audio"]
    cfg = OmegaConf.merge(OmegaConf.structured(AudioDataConfig), raw)  # an unknown key would raise
    assert cfg.sample_rate == RATE and cfg.source in ("synth", "local", "hf")
