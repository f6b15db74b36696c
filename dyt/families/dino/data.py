"""DINO's multi-crop augmentation (main_dino.py DataAugmentationDINO) and the datasets it is applied to.

Every image becomes uint8 CxHxW first (a Hugging Face / image-folder picture, or an embedded tensor set mapped
back from its standardisation to [0, 255]), so one torchvision v2 pipeline serves both. The draws come from
torch's RNG, which the train loader seeds per (seed, epoch, sample index) (``dyt.data.sampler.SeededSamples``):
the crops of a sample are the same whichever rank, data worker or resumed process loads it. Validation crops are
fixed per sample (seeded by (seed, index)). One difference from the official code: the Gaussian blur is
torchvision's (kernel ~10% of the crop, odd; sigma U(0.1, 2)) where DINO calls PIL's ``GaussianBlur(radius)``.
"""
from __future__ import annotations

import torch
import torchvision.transforms.v2 as T
from torch.utils.data import Dataset, TensorDataset

from dyt.data.sampler import SeededSamples
from dyt.data.vision import SOURCES, HFImageDataset, _load_hf, build_vision_datasets
from dyt.errors import ConfigError

TENSOR_SOURCES = ("digits", "fashion_mnist")  # embedded sets held as standardised tensors


def blur_kernel(size: int) -> int:
    """An odd kernel of about a tenth of the crop (23 for 224 px, as BYOL), at least 3."""
    return max(3, int(size * 0.1) // 2 * 2 + 1)


class MultiCropAugment:
    """uint8 image -> [global 1, global 2, local x `local_number`], standardised float tensors.

    Global crops: RandomResizedCrop(global_size, global_scale, bicubic), flip, colour jitter (p 0.8), grayscale
    (p 0.2); blur with p 1.0 (first) / 0.1 (second), solarisation p 0.2 on the second. Local crops: the same at
    local_size / local_scale with blur p 0.5."""

    def __init__(self, crops_cfg, mean, std):
        c = crops_cfg
        bicubic = T.InterpolationMode.BICUBIC
        flip_and_color_jitter = [T.RandomHorizontalFlip(p=0.5),
                                 T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)],
                                               p=0.8),
                                 T.RandomGrayscale(p=0.2)]
        normalize = [T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]

        def blur(size, p):
            return T.RandomApply([T.GaussianBlur(c.blur_kernel or blur_kernel(size), sigma=(0.1, 2.0))], p=p)

        def crop(size, scale):
            return T.RandomResizedCrop(size, scale=tuple(scale), interpolation=bicubic, antialias=True)
        self.global1 = T.Compose([crop(c.global_size, c.global_scale), *flip_and_color_jitter,
                                  blur(c.global_size, 1.0), *normalize])
        self.global2 = T.Compose([crop(c.global_size, c.global_scale), *flip_and_color_jitter,
                                  blur(c.global_size, 0.1), T.RandomSolarize(128, p=0.2), *normalize])
        self.local = T.Compose([crop(c.local_size, c.local_scale), *flip_and_color_jitter,
                                blur(c.local_size, 0.5), *normalize])
        self.local_number = int(c.local_number)

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [self.global1(image), self.global2(image), *(self.local(image) for _ in range(self.local_number))]


def center_view(global_size: int, mean, std) -> T.Compose:
    """The k-NN view (eval_knn.py: resize to 256/224 of the crop, centre crop, no randomness)."""
    return T.Compose([T.Resize(round(global_size / 0.875), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                      T.CenterCrop(global_size), T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))])


class Uint8Images(Dataset):
    """``(uint8 CxHxW image, label)`` of an embedded set standardised by `mean` / `std`."""

    def __init__(self, ds: TensorDataset, mean, std):
        x, self.y = ds.tensors
        m, s = torch.tensor(list(mean)).view(1, -1, 1, 1), torch.tensor(list(std)).view(1, -1, 1, 1)
        self.x = ((x * s + m) * 255).round().clamp(0, 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class Views(Dataset):
    """``(*views(image), label)`` of a dataset of uint8 images: `views` maps an image to a tuple of tensors or
    lists of tensors (the crops, the k-NN view)."""

    def __init__(self, ds: Dataset, *views):
        self.ds, self.views = ds, views

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        image, label = self.ds[i]
        return (*(v(image) for v in self.views), label)


def raw_images(data_cfg) -> tuple[Dataset, Dataset]:
    """(train, val) as ``(uint8 image, label)``, before any augmentation."""
    if data_cfg.source in TENSOR_SOURCES:
        train, val = build_vision_datasets(data_cfg)
        if not isinstance(train, TensorDataset):
            raise ConfigError("DINO brings its own augmentation: set data.augment.shift=0")
        return Uint8Images(train, data_cfg.mean, data_cfg.std), Uint8Images(val, data_cfg.mean, data_cfg.std)
    if data_cfg.source not in SOURCES:
        raise ConfigError(f"unknown data.source {data_cfg.source!r}; choose one of: {', '.join(SOURCES)}")
    dd = _load_hf(data_cfg)
    return tuple(HFImageDataset(dd[s], T.ToImage(), data_cfg.image_column, data_cfg.label_column, s)
                 for s in (data_cfg.train_split, data_cfg.val_split))


def dino_datasets(cfg) -> tuple[Dataset, Dataset, Dataset]:
    """(train: crops + label, val: crops fixed per sample + k-NN view + label, train k-NN views + label)."""
    d, crops = cfg.data, cfg.model.crops
    train, val = raw_images(d)
    augment, center = MultiCropAugment(crops, d.mean, d.std), center_view(crops.global_size, d.mean, d.std)
    return (Views(train, augment), SeededSamples(Views(val, augment, center), int(cfg.seed), 0),
            Views(train, center))
