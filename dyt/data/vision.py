"""Image classification datasets: embedded digits, Fashion-MNIST files, Hugging Face datasets, image folders.

Every source returns map-style datasets of ``(image CxHxW float tensor, label int)``. Small embedded sets are
held as one tensor (no per-sample decoding); Hugging Face / image-folder sets use timm's train/eval transforms
(RandAugment, random erasing, bicubic resize) as in the paper's recipe.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from dyt.data.hub import hf_offline
from dyt.errors import ConfigError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist puts it


def system_fashion_mnist() -> Path:
    """This machine's shared copy of Fashion-MNIST when data.root is not set: $DYT_FASHION_MNIST (e.g. a cluster's
    data folder), else Debian's."""
    return Path(os.environ.get("DYT_FASHION_MNIST") or DEBIAN_FASHION_MNIST)
ERASE_MODES = ("pixel", "rand", "const")  # timm RandomErasing fills: per-pixel noise, per-channel noise, zeros


def _normalize(images: torch.Tensor, cfg) -> torch.Tensor:
    """uint8/float NCHW in [0, 1] -> resized to cfg.image_size and standardized with cfg.mean/std."""
    if images.shape[-1] != cfg.image_size:
        images = F.interpolate(images, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(cfg.mean, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std


class RandomShift(Dataset):
    """Translates each training image by up to `pad` pixels (edge-replicated), like a padded random crop."""

    def __init__(self, ds: Dataset, pad: int):
        self.ds, self.pad = ds, pad

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        p, (h, w) = self.pad, x.shape[-2:]
        dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()  # seeded per sample by the train loader
        return F.pad(x[None], (p, p, p, p), mode="replicate")[0, :, dy:dy + h, dx:dx + w], y


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded random `test_fraction` goes to test: both splits keep the class balance."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's embedded digits (1797 x 8x8, values 0..16), read from its data file.

    Reading the CSV directly skips importing scikit-learn and SciPy, which costs seconds per process.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the digits dataset ships with scikit-learn: pip install scikit-learn")
    data = np.loadtxt(Path(spec.submodule_search_locations[0]) / "datasets/data/digits.csv.gz", delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8).astype(np.float32), data[:, -1].astype(np.int64)


def _digits(cfg):
    images, labels = _digits_arrays()
    x = _normalize(torch.from_numpy(images).unsqueeze(1) / 16.0, cfg)
    y = torch.from_numpy(labels)
    tr, te = _stratified_split(labels, test_fraction=0.2, seed=0)
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te])


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(cfg):
    root = Path(cfg.root) if cfg.root else system_fashion_mnist()
    files = {s: (root / f"{p}-images-idx3-ubyte.gz", root / f"{p}-labels-idx1-ubyte.gz")
             for s, p in (("train", "train"), ("test", "t10k"))}
    if not all(f.exists() for pair in files.values() for f in pair):
        if cfg.root is None and not hf_offline():
            return _fashion_mnist_torchvision(cfg)
        raise ConfigError(f"Fashion-MNIST files not found in {root} (need train-/t10k-images-idx3-ubyte.gz and "
                          f"labels); {FASHION_MNIST_HOWTO}")
    out = []
    for split in ("train", "test"):
        images, labels = (_read_idx(f) for f in files[split])
        x = torch.from_numpy(images.copy()).float().unsqueeze(1) / 255.0
        out.append(TensorDataset(_normalize(x, cfg), torch.from_numpy(labels.astype(np.int64))))
    return tuple(out)


FASHION_MNIST_HOWTO = (f"get it with `apt-get install dataset-fashion-mnist` (Debian: files in {DEBIAN_FASHION_MNIST}) "
                       "or set data.root=<a folder with the four idx .gz files> (or DYT_FASHION_MNIST=<that folder>)")


def _fashion_mnist_torchvision(cfg):
    from torchvision.datasets import FashionMNIST

    cache = Path(os.environ.get("DYT_CACHE", Path.home() / ".cache" / "dyt")) / "fashion_mnist"
    out = []
    for train in (True, False):
        try:
            ds = FashionMNIST(str(cache), train=train, download=True)
        except Exception as e:  # no network (the mirrors unreachable), a proxy, a full disk: one line, how to get it
            raise ConfigError(f"Fashion-MNIST is not in {system_fashion_mnist()} and torchvision could not download it "
                              f"({_first_line(e)}); {FASHION_MNIST_HOWTO}") from e
        x = ds.data.float().unsqueeze(1) / 255.0
        out.append(TensorDataset(_normalize(x, cfg), ds.targets.long()))
    return tuple(out)


class DataError(ConfigError):
    """A ConfigError raised while loading a sample. In a DataLoader worker, torch re-raises it in the main process
    as ``DataError("Caught DataError in DataLoader worker ...\nOriginal Traceback ...")``: the message is reduced
    back to the original one line."""

    def __init__(self, message: str):
        if "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


def _first_line(e: BaseException) -> str:
    """The first line of the innermost cause of `e` (datasets wraps the real error in DatasetGenerationError)."""
    for _ in range(20):  # bounded: a cycle of causes is possible in principle
        if e.__cause__ is None and (e.__context__ is None or e.__suppress_context__):
            break
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


class HFImageDataset(Dataset):
    """A Hugging Face image dataset with a transform: ``(transform(image), label)``."""

    def __init__(self, ds, transform, image_column: str, label_column: str, split: str = "train"):
        for col in (image_column, label_column):
            if col not in ds.column_names:
                raise ConfigError(f"dataset has no column {col!r} (columns: {', '.join(ds.column_names)}); "
                                  "set data.image_column / data.label_column")
        self.ds, self.transform, self.split = ds, transform, split
        self.image_column, self.label_column = image_column, label_column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        try:
            row = self.ds[int(i)]
            image = row[self.image_column].convert("RGB")
        except OSError as e:  # PIL.UnidentifiedImageError, a truncated or vanished file
            where = self._where(int(i))
            why = type(e).__name__ if where in str(e) else _first_line(e)
            raise DataError(f"cannot read image {where} ({why}); remove or replace it") from None
        return self.transform(image), int(row[self.label_column])

    def _where(self, i: int) -> str:
        """The file of sample i when the dataset knows it (image folders), else its index, split and column."""
        try:  # the Arrow row: the image's {bytes, path} struct, not decoded
            raw = self.ds.with_format("arrow")[i][self.image_column][0].as_py()
            if raw.get("path") and Path(raw["path"]).exists():
                return raw["path"]
        except Exception:
            pass
        return f"#{i} of split {self.split!r} (column {self.image_column!r})"

    def label_range(self) -> tuple[int, int] | None:
        """(min, max) label from the label column's Arrow data, no image decoded."""
        import pyarrow.compute as pc
        if len(self.ds) == 0:
            return None
        try:
            mm = pc.min_max(self.ds.data.column(self.label_column))
            return int(mm["min"].as_py()), int(mm["max"].as_py())
        except (TypeError, ValueError, NotImplementedError, KeyError):  # labels that are not integers
            return None


def _load_hf(cfg):
    """Hub id for real runs; a local folder (``save_to_disk`` output, parquet/arrow files or an image folder)."""
    import datasets

    if cfg.root:
        root = Path(cfg.root)
        if not root.exists():
            raise ConfigError(f"data.root {root} does not exist")
        try:
            if (root / "dataset_dict.json").exists():
                return datasets.load_from_disk(str(root))
            builder = ["imagefolder"] if cfg.source == "imagefolder" else []
            kwargs = {"data_dir": str(root)} if builder else {}
            return datasets.load_dataset(*(builder or [str(root)]), **kwargs)
        except (datasets.data_files.EmptyDatasetError, datasets.exceptions.DatasetNotFoundError) as e:
            layout = f"{root}/train/<class>/<image>" if cfg.source == "imagefolder" else "parquet/arrow/image files"
            raise ConfigError(f"data.root={root} holds no dataset files (expected {layout}): {_first_line(e)}") from e
        except Exception as e:  # unreadable files, bad metadata: one line naming the folder
            raise ConfigError(f"cannot load the dataset at data.root={root}: {_first_line(e)}") from e
    if not cfg.hub_id:
        raise ConfigError(f"data {cfg.name!r} needs data.hub_id or data.root")
    if hf_offline():
        raise ConfigError(f"cannot download {cfg.hub_id!r} while offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE); "
                          f"set data.root to a local copy (datasets.load_dataset({cfg.hub_id!r}).save_to_disk(DIR) "
                          "on a connected machine)")
    try:
        return datasets.load_dataset(cfg.hub_id)
    except Exception as e:  # network, auth (gated ImageNet), missing id: one line for the user
        raise ConfigError(f"could not load {cfg.hub_id!r} from the Hugging Face hub ({_first_line(e)}); on a machine "
                          f"that can reach it, datasets.load_dataset({cfg.hub_id!r}).save_to_disk(DIR), then set "
                          "data.root=DIR") from e


def _transforms(cfg, train: bool):
    from timm.data import create_transform

    a = cfg.augment
    if not train:
        return create_transform(cfg.image_size, is_training=False, mean=cfg.mean, std=cfg.std,
                                interpolation="bicubic", crop_pct=1.0 if cfg.image_size < 224 else 0.875)
    # Without random-resized-crop, timm's crop with scale = ratio = 1 is a plain resize.
    scale, ratio = ((0.08, 1.0), (3 / 4, 4 / 3)) if a.random_resized_crop else ((1.0, 1.0), (1.0, 1.0))
    if a.remode not in ERASE_MODES:
        raise ConfigError(f"unknown data.augment.remode {a.remode!r}; choose one of: {', '.join(ERASE_MODES)}")
    return create_transform(cfg.image_size, is_training=True, mean=cfg.mean, std=cfg.std, interpolation="bicubic",
                            auto_augment=a.randaugment, re_prob=a.reprob, re_mode=a.remode, re_count=a.recount,
                            hflip=a.hflip, scale=scale, ratio=ratio)


def image_folder_classes(root: Path, split: str) -> list[str]:
    """Class names of an image folder laid out as root/<split>/<class>/<image> (or root/<class>/<image>):
    the sub-folders holding at least one file, sorted (Hugging Face's imagefolder labels them 0..n-1)."""
    base = root / split if (root / split).is_dir() else root
    return sorted(p.name for p in base.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and any(f.is_file() for f in p.rglob("*")))


def _hf(cfg):
    dd = _load_hf(cfg)
    for split in (cfg.train_split, cfg.val_split):
        if split not in dd:
            raise ConfigError(f"dataset has no split {split!r} (splits: {', '.join(dd)}); set data.train_split/val_split")
    if cfg.source == "imagefolder" and cfg.label_column not in dd[cfg.train_split].column_names:
        # Hugging Face's imagefolder labels images by their parent folder, and drops the labels when it finds
        # a single class folder (or none): say so instead of "no column 'label'".
        classes = image_folder_classes(Path(cfg.root), cfg.train_split)
        raise ConfigError(f"data.root={cfg.root} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
                          f"image classification needs at least 2 classes, laid out as "
                          f"{cfg.root}/{cfg.train_split}/<class>/<image>")
    return (HFImageDataset(dd[cfg.train_split], _transforms(cfg, True), cfg.image_column, cfg.label_column,
                           cfg.train_split),
            HFImageDataset(dd[cfg.val_split], _transforms(cfg, False), cfg.image_column, cfg.label_column,
                           cfg.val_split))


SOURCES = {"digits": _digits, "fashion_mnist": _fashion_mnist, "hf": _hf, "imagefolder": _hf}


def build_vision_datasets(cfg) -> tuple[Dataset, Dataset]:
    """(train, val) datasets for a vision data config."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"unknown data.source {cfg.source!r}; choose one of: {', '.join(SOURCES)}")
    train, val = SOURCES[cfg.source](cfg)
    check_labels(cfg, ((cfg.get("train_split", "train"), train), (cfg.get("val_split", "test"), val)))
    if cfg.augment.shift > 0:
        if not isinstance(train, TensorDataset):
            raise ConfigError("data.augment.shift applies to the embedded tensor datasets (digits, fashion_mnist)")
        train = RandomShift(train, cfg.augment.shift)
    return train, val


def _label_range(ds: Dataset) -> tuple[int, int] | None:
    if isinstance(ds, TensorDataset):
        y = ds.tensors[1]
        return (int(y.min()), int(y.max())) if len(y) else None
    return ds.label_range() if hasattr(ds, "label_range") else None


def check_labels(cfg, splits) -> None:
    """Every label of every split in 0..num_classes-1 (else the loss fails deep inside with an IndexError)."""
    from omegaconf import OmegaConf
    if OmegaConf.is_config(cfg) and OmegaConf.is_missing(cfg, "num_classes"):
        return
    n = int(cfg.num_classes)
    for split, ds in splits:
        rng = _label_range(ds)
        if rng is None:
            continue
        lo, hi = rng
        if hi >= n:
            raise ConfigError(f"data.num_classes={n} but the {split!r} split has label {hi} (labels must be "
                              f"0..{n - 1}); set data.num_classes={hi + 1} or more")
        if lo < 0:
            raise ConfigError(f"the {split!r} split has label {lo} (labels must be 0..{n - 1}; an unlabelled "
                              "split marks its labels -1): set data.val_split / data.train_split to a labelled split")
