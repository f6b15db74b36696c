"""Encode an image dataset once with Stable Diffusion's VAE, for latent diffusion (DiT) training without the VAE.

    python scripts/extract_latents.py --vae stabilityai/sd-vae-ft-ema --root /data/imagenet --split train \\
        --out /data/imagenet_latents --image-size 256 --device cuda --batch-size 64
    python scripts/extract_latents.py --vae ./sd-vae-ft-ema --hub-id ILSVRC/imagenet-1k --split validation --out DIR
    torchrun --nproc-per-node 8 scripts/extract_latents.py ... --device cuda   # each rank encodes its own shards

Sources: --root, an image folder laid out <root>/<split>/<class>/<image> (classes sorted by name are labels
0..K-1) or a `datasets` save_to_disk folder; or --hub-id, a Hugging Face dataset (--image-column,
--label-column). Images are center-cropped as in ADM/DiT; each image's posterior mean and std, of the image and
of its horizontal flip, are stored as float16 (--no-flip: the image only; --mean-only: no std) in
<out>/<split>/ (see dyt/data/latents.py). Re-running the same command resumes: finished shards are kept.
--limit N takes the first N images (in folder order: the first classes).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.utils.data import Subset  # noqa: E402

from dyt.data.hub import hf_offline  # noqa: E402
from dyt.data.latents import ImageFolderImages, extract, image_to_input  # noqa: E402
from dyt.data.vae import load_vae  # noqa: E402
from dyt.data.vision import HFImageDataset  # noqa: E402
from dyt.errors import ConfigError  # noqa: E402


def build_source(args):
    """(map-style dataset of (image in [-1, 1], label), class names or None, source description)."""
    transform = functools.partial(image_to_input, image_size=args.image_size)
    if args.root:
        root = Path(args.root).expanduser().resolve()
        if not root.exists():
            raise ConfigError(f"--root {root} does not exist")
        saved = any((root / f).exists() for f in ("dataset_dict.json", "dataset_info.json", "state.json"))
        if not saved:
            ds = ImageFolderImages(root, args.split, args.image_size)
            return ds, ds.classes, {"root": str(root), "split": args.split}
        import datasets  # heavy (over a second of imports): only for a save_to_disk folder or a hub dataset
        try:
            ds = datasets.load_from_disk(str(root))
        except Exception as e:
            raise ConfigError(f"cannot load the dataset at --root {root}: {type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:200]}") from None
        if isinstance(ds, datasets.DatasetDict):
            if args.split not in ds:
                raise ConfigError(f"{root} has no split {args.split!r} (splits: {', '.join(ds)})")
            ds = ds[args.split]
        desc = {"root": str(root), "split": args.split}
    else:
        import datasets

        if hf_offline():
            raise ConfigError(f"cannot download {args.hub_id!r} while offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE); "
                              "pass --root with a local copy")
        try:
            ds = datasets.load_dataset(args.hub_id, split=args.split)
        except Exception as e:  # network, auth (gated ImageNet), missing id or split
            raise ConfigError(f"could not load {args.hub_id!r} split {args.split!r} from the Hugging Face hub: "
                              f"{(str(e).splitlines() or [''])[0][:200]}") from None
        desc = {"hub_id": args.hub_id, "split": args.split}
    feature = ds.features.get(args.label_column)
    classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    desc.update(image_column=args.image_column, label_column=args.label_column)
    return HFImageDataset(ds, transform, args.image_column, args.label_column, args.split), classes, desc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", default="stabilityai/sd-vae-ft-ema", help="hub id or local folder of an AutoencoderKL")
    p.add_argument("--out", required=True, help="output folder; latents go to <out>/<split>/")
    p.add_argument("--image-size", type=int, default=256)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="image folder <root>/<split>/<class>/<image>, or a save_to_disk folder")
    src.add_argument("--hub-id", help="a Hugging Face dataset id")
    p.add_argument("--split", default="train")
    p.add_argument("--image-column", default="image")
    p.add_argument("--label-column", default="label")
    p.add_argument("--limit", type=int, default=None, help="encode only the first N images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32, help="images per VAE call (x2 with flips)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image decoding processes")
    p.add_argument("--shard-size", type=int, default=8192, help="images per shard file")
    p.add_argument("--no-flip", action="store_true", help="store the image only, not its horizontal flip")
    p.add_argument("--mean-only", action="store_true", help="store the posterior mean only (no std: no sampling)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
    try:
        if min(args.image_size, args.shard_size, args.batch_size) < 1:
            raise ConfigError("--image-size, --shard-size and --batch-size must be positive")
        ds, classes, desc = build_source(args)
        if args.limit is not None:
            ds = Subset(ds, range(min(args.limit, len(ds))))
        vae = load_vae(args.vae, device=device)
        meta = {"vae": args.vae, "image_size": args.image_size, "num_classes": len(classes) if classes else None,
                "classes": classes, "source": desc, "limit": args.limit}
        out = extract(ds, vae, Path(args.out), args.split, shard_size=args.shard_size, flip=not args.no_flip,
                      mean_only=args.mean_only, batch_size=args.batch_size, device=device, meta=meta,
                      progress=not args.no_progress and rank == 0, num_workers=args.workers, rank=rank,
                      world_size=world)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if rank == 0:
        print(f"[extract_latents] {len(ds):,} images -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
