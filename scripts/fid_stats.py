"""Reference FID statistics (TF-Inception pool3 mean and covariance) of a dataset, written as our .npz.

    python scripts/fid_stats.py --npz VIRTUAL_imagenet256_labeled.npz --out stats/imagenet256.npz
    python scripts/fid_stats.py --data fashion_mnist --split test --out stats/fashion_mnist_test.npz
    python scripts/fid_stats.py --data cifar10 --root /data/cifar10 --split train --device cuda
    python scripts/fid_stats.py --data imagefolder --root /data/imgs --split test data.image_size=64

--npz reads an ADM-style batch (``arr_0``: uint8 N x H x W x C), streamed from the archive. --data composes
the named data config (trailing key=value overrides apply) and reads the split through the project's data code
at the config's image size, without augmentation, normalisation undone back to [0, 1].
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EMBEDDED = ("digits", "fashion_mnist")  # sources with fixed (train, test) tensors


def npz_batches(path: Path, batch_size: int, limit: int | None):
    """Float [0, 1] NCHW batches of an npz's ``arr_0`` (uint8 NHWC), read without loading it all (as ADM does)."""
    import numpy as np
    import torch

    from dyt.errors import ConfigError
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ConfigError(f"{path} is not a readable .npz file ({e})") from e
    with zf:
        if "arr_0.npy" not in zf.namelist():
            raise ConfigError(f"{path} has no arr_0 (images) array")
        with zf.open("arr_0.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ConfigError(f"{path}: arr_0 has .npy format {version}, expected 1.0 or 2.0")
            shape, fortran, dtype = read_header(f)
            if len(shape) != 4 or shape[-1] not in (1, 3) or dtype != np.uint8 or fortran:
                raise ConfigError(f"{path}: arr_0 must be uint8 images N x H x W x (1|3), got {dtype} {shape}")
            n = shape[0] if limit is None else min(limit, shape[0])
            per = int(np.prod(shape[1:]))
            for start in range(0, n, batch_size):
                k = min(batch_size, n - start)
                x = np.frombuffer(f.read(k * per), dtype=np.uint8).reshape(k, *shape[1:])
                yield torch.from_numpy(x.copy()).permute(0, 3, 1, 2).float() / 255


def data_batches(name: str, root: str | None, split: str, overrides, batch_size: int, limit: int | None, workers: int):
    """Float [0, 1] batches of a data config's split, read with its evaluation transform."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from dyt.families import compose
    from dyt.data.vision import RandomShift, build_vision_datasets
    from dyt.errors import ConfigError

    ov = [f"data={name}", *([f"data.root={root}"] if root else []), "data.augment.shift=0", *overrides]
    try:
        data = compose(ov).data
    except Exception as e:  # unknown config name, bad override: one line
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"cannot compose data={name} ({why})") from e
    if "mean" not in data:
        raise ConfigError(f"data={name} is not an image dataset")
    if data.source in EMBEDDED:
        if split not in ("train", "test"):
            raise ConfigError(f"data={name} has splits train and test, not {split!r}")
        train, val = build_vision_datasets(data)
        ds = val if split == "test" else train
    else:  # the split of interest as the "val" split: the evaluation transform, no augmentation
        data.val_split = split
        ds = build_vision_datasets(data)[1]
    ds = ds.ds if isinstance(ds, RandomShift) else ds
    if limit is not None:
        ds = Subset(ds, range(min(limit, len(ds))))
    mean = torch.tensor(list(data.mean)).view(1, -1, 1, 1)
    std = torch.tensor(list(data.std)).view(1, -1, 1, 1)
    for x, _ in DataLoader(ds, batch_size=batch_size, num_workers=workers):
        yield (x * std + mean).clamp(0, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--npz", type=Path, help="ADM-style npz whose arr_0 is uint8 N x H x W x C images")
    src.add_argument("--data", help="a data config name: fashion_mnist, digits, cifar10, imagefolder, ...")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for --data (e.g. data.image_size=64)")
    p.add_argument("--root", default=None, help="data.root for --data")
    p.add_argument("--split", default="test", help="split for --data (default: test)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for --data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="output .npz (default: fid_stats_<source>_<split>.npz)")
    args = p.parse_args(argv)
    if args.npz is not None and args.overrides:
        p.error("key=value overrides apply to --data only")
    if args.limit is not None and args.limit < 2:
        p.error("--limit must be at least 2 (a covariance needs two images)")

    from dyt.errors import ConfigError
    from dyt.families.dit.fid import InceptionFeatures, dataset_stats, save_stats

    name = args.npz.stem if args.npz is not None else f"{args.data}_{args.split}"
    out = args.out or Path(f"fid_stats_{name}.npz")
    try:
        if args.npz is not None:
            if not args.npz.is_file():
                raise ConfigError(f"{args.npz} not found")
            batches = npz_batches(args.npz, args.batch_size, args.limit)
            meta = {"source": str(args.npz)}
        else:
            batches = data_batches(args.data, args.root, args.split, args.overrides, args.batch_size, args.limit,
                                   args.workers)
            meta = {"source": f"data={args.data}", "split": args.split, "overrides": " ".join(args.overrides)}
        net = InceptionFeatures()
        stats = dataset_stats(batches, net, args.device, progress=sys.stderr.isatty())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_stats(out, stats["mu"], stats["sigma"], stats["count"], network=net.path.name, **meta)
    print(f"{stats['count']} images -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
