"""Pre-extracted VAE latents (dyt/data/latents.py, dyt/data/vae.py, scripts/extract_latents.py) with a tiny random
AutoencoderKL."""
from __future__ import annotations

import json
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, run_script, script
from dyt.data.latents import ImageFolderImages, LatentDataset, center_crop_arr, extract, image_to_input
from dyt.data.vae import SCALE_FACTOR, decode, encode, load_vae
from dyt.errors import ConfigError

pytest.importorskip("diffusers")
SIZE = 16  # images; the tiny VAE halves once: latents (4, 8, 8)
CLASSES = {"cat": [(40, 50), (50, 40), (33, 33)], "dog": [(64, 48), (37, 61), (40, 50), (90, 80)],
           "fish": [(40, 40), (45, 70), (20, 30)]}


def cli(*args) -> int:
    """scripts/extract_latents.py in this process (fast); one test runs the real command line."""
    return script("scripts/extract_latents.py").main([str(a) for a in args])


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=32)
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae(vae_dir):
    return load_vae(str(vae_dir))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """<root>/train/<class>/<i>.png at odd sizes, random pixels (never mirror-symmetric); one grayscale."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, sizes in CLASSES.items():
        (root / "train" / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (30, 41), dtype=np.uint8), "L").save(root / "train" / "fish" / "3.png")
    return root


def _files(root):
    return [p for c in sorted(CLASSES) for p in sorted((root / "train" / c).glob("*.png"))]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, images, vae_dir):
    """The real command line, with DataLoader workers; shards of 4 images."""
    out = tmp_path_factory.mktemp("latents")
    run_script(["python", "scripts/extract_latents.py", "--vae", str(vae_dir), "--root", str(images), "--out",
                str(out), "--image-size", str(SIZE), "--shard-size", "4", "--workers", "2", "--batch-size", "3"],
               cwd=ROOT)
    return out


@pytest.fixture(scope="module")
def mean_only(tmp_path_factory, images, vae_dir):
    out = tmp_path_factory.mktemp("mean_only")
    assert cli("--vae", vae_dir, "--root", images, "--out", out, "--image-size", SIZE, "--mean-only",
               "--workers", 0, "--no-progress") == 0
    return out


@pytest.fixture(scope="module")
def no_flip(tmp_path_factory, images, vae_dir):
    out = tmp_path_factory.mktemp("no_flip")
    assert cli("--vae", vae_dir, "--root", images, "--out", out, "--image-size", SIZE, "--no-flip",
               "--workers", 0, "--no-progress") == 0
    return out


def _stored(root) -> np.ndarray:
    """All stored statistics, (n, V, S, C, h, w) float32."""
    meta = json.loads((root / "train" / "meta.json").read_text())
    return np.concatenate([np.load(root / "train" / s["file"]) for s in meta["shards"]]).astype(np.float32)


def test_center_crop_arr_matches_adm():
    rng = np.random.default_rng(1)
    big = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))  # 128 x 96: halved twice for 24
    want = big.resize((64, 48), Image.BOX).resize((32, 24), Image.BOX).crop((4, 0, 28, 24))
    assert np.array_equal(np.asarray(center_crop_arr(big, 24)), np.asarray(want))
    small = Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8))  # 40 x 50: bicubic to 32 x 40
    want = small.resize((32, 40), Image.BICUBIC).crop((0, 4, 32, 36))
    assert np.array_equal(np.asarray(center_crop_arr(small, 32)), np.asarray(want))
    for w, h in [(40, 50), (50, 40), (10, 12), (300, 17), (16, 16), (513, 1024)]:
        out = center_crop_arr(Image.new("RGB", (w, h)), 16)
        assert out.size == (16, 16) and out.mode == "RGB"
    x = image_to_input(Image.new("L", (20, 30), 255), 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and torch.all(x == 1.0)


def test_cli_writes_layout_and_labels(extracted, images):
    d = extracted / "train"
    meta = json.loads((d / "meta.json").read_text())
    assert {"vae", "scale_factor", "image_size", "latent_shape", "count", "num_classes", "flip", "mean_only",
            "dtype", "shards"} <= set(meta)
    assert meta["count"] == 11 and meta["num_classes"] == 3 and meta["classes"] == sorted(CLASSES)
    assert meta["latent_shape"] == [4, 8, 8] and meta["flip"] and not meta["mean_only"]
    assert [s["count"] for s in meta["shards"]] == [4, 4, 3] and meta["scale_factor"] == SCALE_FACTOR
    assert not list(d.glob("*.tmp*"))
    ds = LatentDataset(extracted, "train")
    want = [i for i, c in enumerate(sorted(CLASSES)) for _ in range(len(CLASSES[c]) + (c == "fish"))]
    assert len(ds) == 11 and ds.labels.tolist() == want and ds.label_range() == (0, 2)
    assert ds.num_classes == 3 and ds.latent_shape == (4, 8, 8) and ds.meta["count"] == 11
    x, y = ds[5]
    assert x.shape == (4, 8, 8) and x.dtype == torch.float32 and y == want[5]
    assert np.load(d / "shard_00000.npy", mmap_mode="r").shape == (4, 2, 2, 4, 8, 8)
    with pytest.raises(IndexError):
        ds[11]


def test_stored_statistics_are_the_encodings(extracted, images, vae):
    stored = _stored(extracted)
    x = torch.stack([image_to_input(Image.open(f), SIZE) for f in _files(images)])
    mean, std = encode(vae, x)
    fmean, fstd = encode(vae, x.flip(-1))
    tol = dict(rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(stored[:, 0, 0], mean.numpy(), **tol)
    np.testing.assert_allclose(stored[:, 0, 1], std.numpy(), **tol)
    np.testing.assert_allclose(stored[:, 1, 0], fmean.numpy(), **tol)
    np.testing.assert_allclose(stored[:, 1, 1], fstd.numpy(), **tol)
    assert np.abs(stored[:, 0, 0] - stored[:, 1, 0]).max() > 0.05  # the flip is another image


def test_loading_is_seeded(extracted):
    ds = LatentDataset(extracted, "train")
    assert not ds.deterministic

    def draw(seed, i=3):
        torch.manual_seed(seed)
        return ds[i][0]
    assert torch.equal(draw(0), draw(0)) and torch.equal(draw(7), draw(7))
    assert not torch.allclose(draw(0), draw(1))


def test_mean_only_returns_the_scaled_mean_of_a_random_view(mean_only):
    stored = _stored(mean_only)
    assert stored.shape[1:3] == (2, 1)
    ds = LatentDataset(mean_only, "train")
    assert ds.meta["mean_only"] and not ds.deterministic
    views = []
    for seed in range(16):
        torch.manual_seed(seed)
        x = ds[2][0]
        match = [v for v in range(2) if torch.equal(x, torch.from_numpy(stored[2, v, 0]) * SCALE_FACTOR)]
        assert len(match) == 1
        views += match
    assert set(views) == {0, 1}  # both the image and its flip are drawn


def test_no_flip_draws_fresh_posterior_samples(no_flip, extracted):
    stored = _stored(no_flip)
    assert stored.shape[1:3] == (1, 2)
    np.testing.assert_array_equal(stored[:, 0], _stored(extracted)[:, 0])
    ds = LatentDataset(no_flip, "train")
    mean, std = torch.from_numpy(stored[4, 0, 0]), torch.from_numpy(stored[4, 0, 1])
    noise = []
    for seed in range(8):
        torch.manual_seed(seed)
        noise.append((ds[4][0] / SCALE_FACTOR - mean) / std)
    noise = torch.stack(noise)
    assert noise.mean().abs() < 0.2 and 0.8 < noise.std() < 1.2
    assert all(not torch.allclose(noise[0], n) for n in noise[1:])


def test_dataset_pickles_without_maps_and_loads_in_workers(extracted):
    ds = LatentDataset(extracted, "train")
    ds[0]
    assert len(pickle.dumps(ds)) < 20_000 and ds._shards is not None
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    xs, ys = zip(*loader)
    assert torch.cat(xs).shape == (11, 4, 8, 8) and torch.cat(ys).tolist() == ds.labels.tolist()


def test_decode_of_encode_is_an_image(vae, images):
    x = torch.stack([image_to_input(Image.open(f), SIZE) for f in _files(images)[:3]])
    mean, _ = encode(vae, x)
    assert mean.shape == (3, 4, 8, 8)
    out = decode(vae, mean * SCALE_FACTOR)
    assert out.shape == (3, 3, SIZE, SIZE) and out.min() >= 0 and out.max() <= 1 and out.std() > 0


class Counting(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds, self.reads = ds, []

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.ds[i]


def _state(d):
    return {f.name: (f.stat().st_mtime_ns, f.stat().st_ino, f.read_bytes()) for f in sorted(d.iterdir())}


def test_resume_encodes_only_the_missing_shard(tmp_path, images, vae):
    meta = {"vae": "tiny", "image_size": SIZE, "num_classes": 3}
    d = extract(ImageFolderImages(images, "train", SIZE), vae, tmp_path, "train", shard_size=3, meta=meta)
    before = _state(d)
    (d / "meta.json").unlink()
    (d / "shard_00002.npy").unlink()
    (d / "shard_00001.npy").write_bytes(b"truncated")  # as if a crash left it half written
    src = Counting(ImageFolderImages(images, "train", SIZE))
    with pytest.raises(ConfigError, match="did not finish"):
        LatentDataset(tmp_path, "train")
    extract(src, vae, tmp_path, "train", shard_size=3, meta=meta)
    assert sorted(src.reads) == [3, 4, 5, 6, 7, 8]
    after = _state(d)
    assert set(after) == set(before)
    for name in ("shard_00000.npy", "shard_00003.npy", "labels_00000.npy"):
        assert after[name] == before[name]  # untouched: same file, same time
    assert [n for n in after if after[n][2] != before[n][2]] == []  # identical contents
    src.reads.clear()
    extract(src, vae, tmp_path, "train", shard_size=3, meta=meta)  # all done: nothing read
    assert src.reads == []
    with pytest.raises(ConfigError, match="other settings.*mean_only"):
        extract(src, vae, tmp_path, "train", shard_size=3, meta=meta, mean_only=True)


def test_iterable_source_and_ranks_match_the_folder_run(tmp_path, images, vae, extracted):
    """An iterable of (image, label) batches, then two 'torchrun' ranks: the same shards as the CLI's."""
    src = ImageFolderImages(images, "train", SIZE)
    meta = {"vae": "tiny", "image_size": SIZE}
    batches = torch.utils.data.DataLoader(src, batch_size=5)
    d = extract(iter(batches), vae, tmp_path / "it", "train", shard_size=4, meta=meta)
    np.testing.assert_array_equal(_stored(tmp_path / "it"), _stored(extracted))
    assert json.loads((d / "meta.json").read_text())["num_classes"] == 3
    (d / "shard_00001.npy").unlink()
    extract(iter(batches), vae, tmp_path / "it", "train", shard_size=4, meta=meta)
    np.testing.assert_array_equal(_stored(tmp_path / "it"), _stored(extracted))

    extract(src, vae, tmp_path / "ranks", "train", shard_size=4, meta=meta, rank=1, world_size=2)
    assert not (tmp_path / "ranks" / "train" / "meta.json").exists()
    assert sorted(f.name for f in (tmp_path / "ranks" / "train").glob("shard_*")) == ["shard_00001.npy"]
    extract(src, vae, tmp_path / "ranks", "train", shard_size=4, meta=meta, rank=0, world_size=2)
    np.testing.assert_array_equal(_stored(tmp_path / "ranks"), _stored(extracted))
    ranks = LatentDataset(tmp_path / "ranks", "train")
    assert ranks.labels.tolist() == LatentDataset(extracted, "train").labels.tolist()


def test_saved_hf_dataset_source(tmp_path, images, vae_dir, extracted):
    datasets = pytest.importorskip("datasets")
    files = _files(images)
    labels = LatentDataset(extracted, "train").labels.tolist()
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=sorted(CLASSES)))
    ds = datasets.Dataset.from_dict({"image": [str(f) for f in files], "label": labels}, features=features)
    datasets.DatasetDict(train=ds).save_to_disk(str(tmp_path / "hf"))
    assert cli("--vae", vae_dir, "--root", tmp_path / "hf", "--out", tmp_path / "out", "--image-size", SIZE,
               "--workers", 0, "--limit", 6, "--no-progress") == 0
    got = LatentDataset(tmp_path / "out", "train")
    assert len(got) == 6 and got.num_classes == 3 and got.meta["classes"] == sorted(CLASSES)
    np.testing.assert_array_equal(_stored(tmp_path / "out"), _stored(extracted)[:6])


def test_unreadable_image_names_the_file(tmp_path, images, vae_dir, capsys):
    shutil.copytree(images, tmp_path / "images")
    bad = tmp_path / "images" / "train" / "dog" / "2_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    for workers in (0, 2):
        assert cli("--vae", vae_dir, "--root", tmp_path / "images", "--out", tmp_path / "out", "--image-size", SIZE,
                   "--workers", workers, "--no-progress") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot read image") and str(bad) in err and "\n" not in err, err


def test_load_vae_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        load_vae("nobody-here/no-such-vae-4f2a")
    assert "no-such-vae-4f2a" in str(e.value) and "\n" not in str(e.value) and "offline" in str(e.value).lower()
    with pytest.raises(ConfigError, match="does not exist"):
        load_vae(str(tmp_path / "missing" / "vae"))
    with pytest.raises(ConfigError) as e:
        load_vae(str(tmp_path))  # a folder without a VAE
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ConfigError, match="pip install diffusers"):
        load_vae("stabilityai/sd-vae-ft-ema")


def test_missing_latents_say_what_to_run(tmp_path):
    with pytest.raises(ConfigError, match="extract_latents.py"):
        LatentDataset(tmp_path, "train")
