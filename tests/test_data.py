"""Datasets (embedded, local files, Hugging Face local copies), the sampler, and clear errors for bad input."""
import gzip
import random

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose
from dyt.data.sampler import ShardedSampler
from dyt.data.vision import _transforms, build_vision_datasets
from dyt.distributed import DistInfo
from dyt.errors import ConfigError
from dyt.families import build_task


def test_digits_split_and_shapes():
    train, val = build_vision_datasets(compose().data)
    assert (len(train), len(val)) == (1438, 359)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and 0 <= int(y) < 10
    assert abs(float(torch.stack([train[i][0] for i in range(500)]).mean())) < 0.2  # standardized


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return tmp_path


def test_fashion_mnist_from_a_local_folder(fashion_root):
    train, val = build_vision_datasets(compose(["data=fashion_mnist", f"data.root={fashion_root}"]).data)
    assert (len(train), len(val)) == (40, 10)
    assert train[0][0].shape == (1, 32, 32)  # resized from 28 to the config's 32


def test_fashion_mnist_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"Fashion-MNIST files not found in .*nowhere.*data.root"):
        build_vision_datasets(compose(["data=fashion_mnist", f"data.root={tmp_path / 'nowhere'}"]).data)


def test_hub_id_while_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"cannot download 'uoft-cs/cifar10' while offline.*data.root"):
        build_vision_datasets(compose(["data=cifar10"]).data)


def _images(n, size=12, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_hugging_face_local_copy_with_configured_columns(tmp_path):
    """A `save_to_disk` copy laid out like the hub's CIFAR-10 (columns img/label) loads through data.root."""
    import datasets

    dd = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"img": _images(n), "label": list(range(n))},
                                          features=datasets.Features({"img": datasets.Image(),
                                                                      "label": datasets.ClassLabel(num_classes=10)}))
        for split, n in (("train", 8), ("test", 4))})
    dd.save_to_disk(str(tmp_path / "cifar"))
    cfg = compose(["data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.augment.randaugment=rand-m9-mstd0.5-inc1"])
    train, val = build_vision_datasets(cfg.data)
    x, y = train[3]
    assert x.shape == (3, 32, 32) and y == 3 and len(val) == 4
    bad = compose(["data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.label_column=fine_label"])
    with pytest.raises(ConfigError, match=r"no column 'fine_label' \(columns: img, label\)"):
        build_vision_datasets(bad.data)


def test_image_folder(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i, im in enumerate(_images(n, seed=hash(cls) % 100)):
                im.save(tmp_path / split / cls / f"{i}.png")
    cfg = compose(["data=imagefolder", f"data.root={tmp_path}", "data.num_classes=2", "data.image_size=16",
                   "data.num_workers=0"])
    train, val = build_vision_datasets(cfg.data)
    assert (len(train), len(val)) == (12, 4) and train[0][0].shape == (3, 16, 16)


def test_sampler_shards_form_the_single_process_batches():
    n, batch = 103, 8
    single = list(ShardedSampler(n, seed=3, epoch=1))
    ranks = [list(ShardedSampler(n, rank=r, world=2, seed=3, epoch=1)) for r in range(2)]
    for k in range(n // batch):
        half = batch // 2
        got = set(ranks[0][k * half:(k + 1) * half]) | set(ranks[1][k * half:(k + 1) * half])
        assert got == set(single[k * batch:(k + 1) * batch])
    assert list(ShardedSampler(n, seed=3, epoch=1, start=16)) == single[16:]
    assert list(ShardedSampler(n, seed=3, epoch=2)) != single


def test_random_shift_translates_training_images_only():
    cfg = compose(["data.augment.shift=1"]).data
    train, val = build_vision_datasets(cfg)
    plain, _ = build_vision_datasets(compose().data)
    torch.manual_seed(0)
    shifted = [train[0][0] for _ in range(20)]
    original = plain[0][0]
    assert all(s.shape == original.shape for s in shifted)
    assert any(torch.equal(s, original) for s in shifted) and not all(torch.equal(s, original) for s in shifted)
    # a shift moves the interior: some shifted copy matches the original moved by one pixel
    assert any(torch.equal(s[:, 1:, :], original[:, :-1, :]) or torch.equal(s[:, :, 1:], original[:, :, :-1])
               or torch.equal(s[:, :-1, :], original[:, 1:, :]) or torch.equal(s[:, :, :-1], original[:, :, 1:])
               for s in shifted)
    assert len(val) == 359 and torch.equal(val[0][0], build_vision_datasets(compose().data)[1][0][0])


class Draws(torch.utils.data.Dataset):
    """Sample i is what an augmentation would draw for it from each global RNG timm/torchvision use, and i."""

    def __len__(self):
        return 96

    def __getitem__(self, i):
        return torch.tensor([torch.rand(()).item(), random.random(), np.random.rand(), i], dtype=torch.float64)


def _draws(rank=0, world=1, workers=0, epoch=0, start_batch=0, batch=4):
    """{sample index: its draws} over one epoch of a rank's train loader."""
    task = build_task(compose([f"data.num_workers={workers}"]), DistInfo(rank=rank, world_size=world))
    task._datasets = (Draws(), Draws())
    rows = torch.cat(list(task.train_loader(batch, epoch, start_batch)))
    return {int(r[-1]): tuple(r[:-1].tolist()) for r in rows}


def test_augmentation_draws_are_per_sample_not_per_worker():
    """Two ranks with data workers never share draws, and a sample's draws depend only on (seed, epoch, index):
    not on the rank, the world size, the worker count or a mid-epoch restart."""
    ranks = [_draws(rank=r, world=2, workers=2) for r in range(2)]
    firsts = [list(d.values())[:8] for d in ranks]  # the k-th samples of each rank
    assert all(a != b for a, b in zip(*firsts)), "rank 0 and rank 1 drew the same numbers"
    single = _draws(workers=0)
    assert {**ranks[0], **ranks[1]} == single  # same draws for every sample, 1 process or 2 ranks
    assert _draws(workers=2, start_batch=5) == {i: single[i] for i in list(single)[20:]}  # resumed mid-epoch
    other_epoch = _draws(epoch=1)
    assert all(other_epoch[i] != single[i] for i in single)


def test_loading_data_does_not_move_the_training_rng():
    """num_workers=0 loads in the main process: dropout / mixup draws must not depend on the data."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    _draws(workers=0)
    assert torch.equal(torch.rand(3), expected)


def test_random_erasing_fills_with_per_pixel_noise_as_the_recipe():
    """The official recipe erases with re_mode='pixel', re_count=1: an erased box of per-pixel normal noise."""
    recipe = compose(["experiment=table1_vit_b"]).data.augment
    assert (recipe.reprob, recipe.remode, recipe.recount) == (0.25, "pixel", 1)
    cfg = compose(["data=cifar10", "data.augment.reprob=1.0"]).data
    erase = _transforms(cfg, True).transforms[-1]
    assert type(erase).__name__ == "RandomErasing" and (erase.mode, erase.max_count) == ("pixel", 1)
    gray = Image.new("RGB", (32, 32), (128, 128, 128))
    torch.manual_seed(0)
    random.seed(0)
    x = _transforms(cfg, True)(gray)
    changed = x != x[:, :1, :1]  # everything outside the erased box keeps the gray value
    assert changed.any() and len(torch.unique(x[changed])) > 0.9 * int(changed.sum())  # noise, not a constant
    with pytest.raises(ConfigError, match=r"unknown data.augment.remode 'zeros'; choose one of: pixel, rand, const"):
        _transforms(compose(["data=cifar10", "data.augment.remode=zeros"]).data, True)


# --- bad data is one clear line (issue 9) ---------------------------------------------------------------------
def _folder(root, classes, n=3):
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(_images(n)):
                im.save(root / split / cls / f"{i}.png")
    return root


def _folder_cfg(root, *extra):
    return compose(["data=imagefolder", f"data.root={root}", "data.num_classes=2", "data.image_size=16",
                    "data.num_workers=0", *extra]).data


def test_empty_image_folder_is_one_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match=rf"^data.root={tmp_path} holds no dataset files \(expected "
                                          rf"{tmp_path}/train/<class>/<image>\)"):
        build_vision_datasets(_folder_cfg(tmp_path))


def test_image_folder_with_one_class_says_so(tmp_path):
    """Hugging Face's imagefolder drops the labels of a one-class folder: not 'no column label' but the reason."""
    with pytest.raises(ConfigError, match=r"has 1 class folder\(s\) \(cat\); image classification needs at least 2"):
        build_vision_datasets(_folder_cfg(_folder(tmp_path, ["cat"])))


def test_corrupt_image_names_the_file_also_from_a_worker(tmp_path):
    _folder(tmp_path, ["cat", "dog"])
    (tmp_path / "train/dog/bad.jpg").write_bytes(b"\x00\x01 not a jpeg")
    import datasets
    train, _ = build_vision_datasets(_folder_cfg(tmp_path))
    paths = [r["path"] for r in train.ds.cast_column("image", datasets.Image(decode=False))["image"]]
    bad = next(i for i, p in enumerate(paths) if p.endswith("bad.jpg"))
    expected = f"cannot read image {tmp_path}/train/dog/bad.jpg (UnidentifiedImageError); remove or replace it"
    with pytest.raises(ConfigError) as e:
        train[bad]
    assert str(e.value) == expected
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train, [bad]), batch_size=1, num_workers=1)
    with pytest.raises(ConfigError) as e:  # re-raised by the DataLoader in the main process: still one line
        next(iter(loader))
    assert str(e.value) == expected


def test_labels_are_checked_against_num_classes(tmp_path):
    import datasets

    def split(labels):
        features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
        return datasets.Dataset.from_dict({"img": _images(len(labels)), "label": labels}, features=features)
    datasets.DatasetDict({"train": split([0, 7, 3]), "test": split([1, 2])}).save_to_disk(str(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"^data.num_classes=5 but the 'train' split has label 7 \(labels must be "
                                          r"0..4\); set data.num_classes=8 or more$"):
        build_vision_datasets(compose(["data=cifar10", f"data.root={tmp_path / 'a'}", "data.num_classes=5"]).data)
    datasets.DatasetDict({"train": split([0, 1]), "test": split([-1, -1])}).save_to_disk(str(tmp_path / "b"))
    with pytest.raises(ConfigError, match=r"the 'test' split has label -1 .*set data.val_split"):
        build_vision_datasets(compose(["data=cifar10", f"data.root={tmp_path / 'b'}"]).data)
    with pytest.raises(ConfigError, match=r"data.num_classes=5 but the 'train' split has label 9"):
        build_vision_datasets(compose(["data.num_classes=5"]).data)  # embedded tensors too


@pytest.mark.parametrize("n,world,drop_last,start", [(10, 3, True, 0), (10, 3, False, 2), (7, 1, True, 5),
                                                      (5, 8, False, 0), (5, 8, True, 0), (100_000, 4, True, 70_001)])
def test_sharded_sampler_shares_and_lengths(n, world, drop_last, start):
    """Every rank's share is perm[rank::world] of one seeded permutation (the tail dropped when asked), from
    `start` on; len() is computed without drawing the permutation and agrees with iterating."""
    from dyt.data.sampler import ShardedSampler
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3 * 100_003 + 2)).tolist()
    if drop_last:
        perm = perm[: n // world * world]
    for rank in range(world):
        s = ShardedSampler(n, rank, world, seed=3, epoch=2, drop_last=drop_last, start=start)
        assert list(s) == perm[rank::world][start:] and len(s) == len(list(s))
