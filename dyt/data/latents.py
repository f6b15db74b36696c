"""Pre-extracted VAE latents for latent diffusion (DiT on ImageNet 256): the VAE runs once, never in training.

DiT's pipeline: ADM center crop (`center_crop_arr`), random horizontal flip, x in [-1, 1], then
``vae.encode(x).latent_dist.sample() * 0.18215`` with a fresh posterior sample at every step. `extract` stores,
per image, the posterior mean and std (float16) of the crop and of its mirror image; `LatentDataset` draws one
of the two views (``torch.rand``) and a fresh ``mean + std * torch.randn`` at each load, from torch's global RNG,
which the trainer seeds per sample: the same distribution as DiT's, deterministic and resumable.

On disk, ``<root>/<split>/``:
  ``shard_NNNNN.npy``   float16 ``(n, V, S, C, h, w)``: V views (0: image, 1: its horizontal flip; V = 1 with
                        ``flip=False``), S statistics (0: posterior mean, 1: posterior std; S = 1 with
                        ``mean_only=True``), both UNscaled; read with ``np.load(mmap_mode="r")``
  ``labels_NNNNN.npy``  int64 ``(n,)``, the labels of that shard (written just before it)
  ``labels.npy``        int64, all labels in order (for label checks without opening shards)
  ``meta.json``         vae, scale_factor, image_size, latent_shape, count, num_classes, flip, mean_only, dtype,
                        layout, shard_size, shards ``[{"file", "count"}]`` and the caller's keys; written last
  ``extract.json``      the settings of the extraction, so that resuming with other settings is refused
Every file is written under a temporary name and renamed: a crash leaves only whole files, and re-running
`extract` encodes only the shards that are missing or incomplete. The VAE itself (load, encode, decode) is
`dyt.data.vae`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dyt.data.vae import SCALE_FACTOR, encode, latent_shape_of
from dyt.data.vision import DataError
from dyt.errors import ConfigError
from dyt.progress import Progress
from dyt.files import write_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
LAYOUT = "(n, view[image, hflip], stat[mean, std], C, h, w)"


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM's center crop, as in DiT: halve with BOX while the short side >= 2 * size, BICUBIC-resize the short
    side to size, then crop the center square."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    y, x = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[y: y + image_size, x: x + image_size])


def image_to_input(pil_image: Image.Image, image_size: int) -> torch.Tensor:
    """A PIL image -> the VAE's input: RGB, center-cropped, float CHW in [-1, 1]."""
    arr = np.asarray(center_crop_arr(pil_image.convert("RGB"), image_size))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


class ImageFolderImages(Dataset):
    """``<root>/<split>/<class>/<image>`` (ImageNet's layout), read with PIL: ``(image_to_input(image), label)``;
    classes sorted by name are labels 0..K-1, files sorted by name within a class."""

    def __init__(self, root, split: str, image_size: int):
        base = Path(root) / split
        if not base.is_dir():
            raise ConfigError(f"no folder {base} (expected an image folder laid out as {root}/{split}/<class>/<image>)")
        self.classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.files, labels = [], []
        for label, c in enumerate(self.classes):
            files = sorted(f for f in (base / c).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                           and not f.name.startswith(".") and f.is_file())  # not macOS's ._name files
            self.files += files
            labels += [label] * len(files)
        if not self.files:
            raise ConfigError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {base}/<class>/")
        self.labels, self.image_size = np.asarray(labels, dtype=np.int64), image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        path = self.files[i]
        try:
            with Image.open(path) as im:
                x = image_to_input(im, self.image_size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {path} ({type(e).__name__}); remove or replace it") from None
        return x, int(self.labels[i])


def _write_npy(path: Path, arr: np.ndarray) -> None:
    """`arr` as ``path`` (.npy), crash-safe: a temporary file, flushed to disk, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _shard_done(split_dir: Path, k: int, shape: tuple) -> bool:
    """Whether shard k and its labels are on disk, complete, with `shape`."""
    try:
        data = np.load(split_dir / f"shard_{k:05d}.npy", mmap_mode="r")
        labels = np.load(split_dir / f"labels_{k:05d}.npy", mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return data.shape == shape and data.dtype == np.float16 and labels.shape == shape[:1]


def _items(source):
    """An iterable of (image, label) pairs or of (images, labels) batches -> pairs."""
    for x, y in source:
        if torch.is_tensor(x) and x.ndim == 4:
            yield from zip(x, y)
        else:
            yield x, y


def extract(source_iter, vae, out_dir: Path, split: str, *, shard_size: int = 8192, flip: bool = True,
            mean_only: bool = False, batch_size: int = 32, device="cpu", meta: dict, progress: bool = False,
            num_workers: int = 0, rank: int = 0, world_size: int = 1) -> Path:
    """Encodes `source_iter` into ``out_dir/split/`` (layout: module docstring) and returns that folder.

    `source_iter`: a map-style dataset of ``(image CHW in [-1, 1], label)`` (read by a DataLoader with
    `num_workers`; finished shards are not read again) or any iterable of such pairs or of batches (read in
    order; the items of finished shards are read and skipped). `batch_size` images per VAE call (twice as many
    inputs with `flip`). With ``world_size > 1`` (torchrun) rank r encodes the shards k with k % world_size == r
    of a map-style source; rank 0 waits for all of them and writes labels.npy and meta.json.
    """
    split_dir = Path(out_dir) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    sized = hasattr(source_iter, "__getitem__") and hasattr(source_iter, "__len__")
    if world_size > 1 and not sized:
        raise ConfigError("extraction by several ranks needs a map-style dataset source")
    settings = {"flip": flip, "mean_only": mean_only, "shard_size": shard_size, "dtype": "float16",
                **{k: v for k, v in meta.items() if k != "limit"}}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    started = split_dir / "extract.json"
    if started.exists() and json.loads(started.read_text()) != settings:
        old = json.loads(started.read_text())
        diff = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
        raise ConfigError(f"{split_dir} holds an extraction with other settings ({', '.join(diff)}); "
                          "use another output folder or delete it")
    write_json(started, settings)

    it = None if sized else _items(source_iter)
    first = None
    if not meta.get("image_size"):  # the image size from the first image (an iterable's is read again)
        first = source_iter[0] if sized else next(it, None)
        it = it if sized or first is None else _chain_first(first, it)
    count = len(source_iter) if sized else None
    if count == 0 or (first is None and not meta.get("image_size")):
        raise ConfigError(f"no images to encode for split {split!r}")
    image_size = int(meta.get("image_size") or first[0].shape[-1])
    latent_shape = latent_shape_of(vae, image_size)
    V, S = (2 if flip else 1), (1 if mean_only else 2)

    def size(k):  # images in shard k (an unsized source: shards are whole, its last one is always re-encoded)
        return shard_size if count is None else min(shard_size, count - k * shard_size)

    def shape(k):
        return (size(k), V, S, *latent_shape)

    n_shards = None if count is None else -(-count // shard_size)
    mine = (lambda k: k % world_size == rank)
    on_disk = sorted(int(f.stem[6:]) for f in split_dir.glob("shard_*.npy") if f.stem[6:].isdigit())
    done = {k for k in on_disk if (n_shards is None or k < n_shards) and _shard_done(split_dir, k, shape(k))}
    if rank == 0 and (count is None or len(done) < n_shards):
        (split_dir / "meta.json").unlink(missing_ok=True)  # stale until this run ends

    if sized:  # batches never span two shards: a shard's bytes do not depend on what else this run encodes
        todo = [list(range(b, min(b + batch_size, k * shard_size + size(k)))) for k in range(n_shards)
                if k not in done and mine(k) for b in range(k * shard_size, k * shard_size + size(k), batch_size)]
        loader = DataLoader(source_iter, batch_sampler=todo, num_workers=num_workers,
                            pin_memory=torch.device(device).type == "cuda")
        batches = ((idx, x, y) for idx, (x, y) in zip(todo, loader)) if todo else iter(())
        initial = sum(size(k) for k in done if mine(k))
        total = sum(size(k) for k in range(n_shards) if mine(k))
    else:
        batches = _skip_done(it, done, shard_size, batch_size)
        initial, total = 0, None
    seen = 0
    bar = Progress(total, f"latents {split}", "img", initial=initial, enabled=progress)  # or lines off a terminal
    buffers = {}

    def flush(k, n):
        data, labels, _ = buffers.pop(k)
        _write_npy(split_dir / f"labels_{k:05d}.npy", labels[:n])
        _write_npy(split_dir / f"shard_{k:05d}.npy", data[:n])
        done.add(k)

    for idx, x, y in batches:
        seen += len(idx)
        if x is None:  # items of finished shards, read and skipped
            bar.update(len(idx))
            continue
        x = x.to(device, non_blocking=True)
        mean, std = encode(vae, torch.cat([x, x.flip(-1)]) if flip else x)
        stats = mean[:, None] if mean_only else torch.stack([mean, std], 1)  # (V*B, S, C, h, w)
        stats = stats.reshape(V, len(idx), S, *latent_shape).transpose(0, 1).half().cpu().numpy()
        for j, g in enumerate(idx):
            k, r = divmod(g, shard_size)
            if k not in buffers:
                buffers[k] = [np.empty(shape(k), np.float16), np.empty(size(k), np.int64), 0]
            buf = buffers[k]
            buf[0][r], buf[1][r] = stats[j], int(y[j])
            buf[2] += 1
            if buf[2] == size(k):
                flush(k, size(k))
        bar.update(len(idx))
    for k in sorted(buffers):  # an unsized source's last, partial shard
        flush(k, buffers[k][2])
    bar.close()
    if count is None:
        count, n_shards = seen, -(-seen // shard_size)
        if count == 0:
            raise ConfigError(f"no images to encode for split {split!r}")
    if rank != 0:
        return split_dir
    _wait_for_shards(split_dir, n_shards, shape, world_size)
    labels = np.concatenate([np.load(split_dir / f"labels_{k:05d}.npy") for k in range(n_shards)])
    _write_npy(split_dir / "labels.npy", labels)
    shards = [{"file": f"shard_{k:05d}.npy",
               "count": int(np.load(split_dir / f"labels_{k:05d}.npy", mmap_mode="r").shape[0])}
              for k in range(n_shards)]
    full = {**meta, "scale_factor": meta.get("scale_factor", SCALE_FACTOR), "image_size": image_size,
            "latent_shape": list(latent_shape), "count": int(count),
            "num_classes": int(meta.get("num_classes") or labels.max() + 1), "flip": flip, "mean_only": mean_only,
            "dtype": "float16", "layout": LAYOUT, "shard_size": shard_size, "shards": shards}
    write_json(split_dir / "meta.json", full)
    return split_dir


def _chain_first(first, it):
    yield first
    yield from it


def _skip_done(items, done, shard_size, batch_size):
    """(global indices, images, labels) batches of the items not in `done` shards; (indices, None, None) else."""
    idx, xs, ys = [], [], []
    for g, (x, y) in enumerate(items):
        if g // shard_size in done:
            yield [g], None, None
            continue
        idx.append(g), xs.append(torch.as_tensor(x)), ys.append(int(y))
        if len(idx) == batch_size or (g + 1) % shard_size == 0:
            yield idx, torch.stack(xs), ys
            idx, xs, ys = [], [], []
    if idx:
        yield idx, torch.stack(xs), ys


def _wait_for_shards(split_dir: Path, n_shards: int, shape, world_size: int) -> None:
    """Rank 0: until every shard is on disk (the other ranks' too; torchrun stops all ranks if one fails)."""
    waited = 0.0
    while missing := [k for k in range(n_shards) if not _shard_done(split_dir, k, shape(k))]:
        if world_size == 1:
            raise ConfigError(f"shards {missing[:5]} of {split_dir} are missing after extraction")
        if waited % 60 == 0:
            print(f"[latents] waiting for {len(missing)} shard(s) from the other ranks", flush=True)
        time.sleep(2.0)
        waited += 2.0


class LatentDataset(Dataset):
    """Latents written by `extract`: ``(latent float32 (C, h, w), label)``, the latent scaled by scale_factor and
    drawn as DiT does (a random view, a fresh posterior sample) from torch's global RNG."""

    def __init__(self, root, split: str):
        self.dir = Path(root) / split
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            started = (self.dir / "extract.json").exists()
            raise ConfigError(f"no meta.json in {self.dir}: " + ("the extraction did not finish; re-run "
                              "scripts/extract_latents.py with the same arguments to complete it" if started else
                              "extract latents first with scripts/extract_latents.py"))
        self.meta = json.loads(meta_path.read_text())
        self.num_classes = int(self.meta["num_classes"])
        self.latent_shape = tuple(self.meta["latent_shape"])
        self.scale_factor = float(self.meta["scale_factor"])
        counts = [int(s["count"]) for s in self.meta["shards"]]
        self.offsets = np.cumsum([0, *counts])
        for s in self.meta["shards"]:
            if not (self.dir / s["file"]).exists():
                raise ConfigError(f"latent shard {self.dir / s['file']} is missing; re-run scripts/extract_latents.py")
        self.labels = np.load(self.dir / "labels.npy")
        if len(self.labels) != self.offsets[-1]:
            raise ConfigError(f"{self.dir}/labels.npy has {len(self.labels)} labels for {self.offsets[-1]} latents")
        self.views, self.stats = (2 if self.meta["flip"] else 1), (1 if self.meta["mean_only"] else 2)
        self.deterministic = self.views == 1 and self.stats == 1  # nothing drawn: the trainer needs no seeding
        self._shards, self._pid = None, None

    def __getstate__(self):  # DataLoader workers open their own memory maps
        return {**self.__dict__, "_shards": None, "_pid": None}

    def _open(self) -> list[np.ndarray]:
        if self._pid != os.getpid():
            self._shards = [np.load(self.dir / s["file"], mmap_mode="r") for s in self.meta["shards"]]
            for s, a in zip(self.meta["shards"], self._shards):
                if a.shape != (s["count"], self.views, self.stats, *self.latent_shape):
                    raise DataError(f"latent shard {self.dir / s['file']} has shape {a.shape}, not as meta.json says")
            self._pid = os.getpid()
        return self._shards

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i):
        i = int(i) + (len(self) if int(i) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} latents")
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        entry = self._open()[k][i - self.offsets[k]]  # (V, S, C, h, w), float16
        view = int(torch.rand(()) < 0.5) if self.views == 2 else 0
        z = torch.from_numpy(entry[view].astype(np.float32))
        latent = z[0] if self.stats == 1 else z[0] + z[1] * torch.randn(self.latent_shape)
        return latent * self.scale_factor, int(self.labels[i])

    def label_range(self) -> tuple[int, int] | None:
        """(min, max) label, from labels.npy (no shard read); None for an empty set."""
        return (int(self.labels.min()), int(self.labels.max())) if len(self.labels) else None
