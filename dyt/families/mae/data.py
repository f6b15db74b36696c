"""MAE's data: each image comes with the noise that masks it, and hub / folder images get the official
pre-training crop (RandomResizedCrop(scale 0.2-1, bicubic) + flip, nothing else)."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision import transforms

from dyt.data.sampler import sample_seed


class MaskedSamples(Dataset):
    """``(x, y, noise)``: a sample of `ds` and a uniform noise per patch (`num_patches`), whose lowest values
    pick the patches the encoder sees (``MaskedAutoencoderViT.masking``).

    Training (``seed=None``) draws from torch's RNG, which the train loader seeds per (seed, epoch, sample index)
    (``dyt.data.sampler.SeededSamples``): like augmentation, a sample's mask is the same on any rank, data worker
    or resumed process. Validation passes a `seed`: each sample's mask is fixed by (seed, index), the same at every
    evaluation and for every run of that seed (LN and DyT are scored on identical masks).
    """

    def __init__(self, ds: Dataset, num_patches: int, seed: int | None = None):
        self.ds, self.num_patches, self.seed = ds, num_patches, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        g = None if self.seed is None else torch.Generator().manual_seed(sample_seed(self.seed, 0, int(i)))
        return x, y, torch.rand(self.num_patches, generator=g)

    def label_range(self):  # dyt.data.vision.check_labels-style checks see the wrapped dataset's labels
        return getattr(self.ds, "label_range", lambda: None)()


def pretrain_transform(data_cfg, crop_scale) -> transforms.Compose:
    """The official ``main_pretrain.py`` augmentation at the data's size, mean and std (timm's training transform
    would add colour jitter)."""
    return transforms.Compose([
        transforms.RandomResizedCrop(data_cfg.image_size, scale=tuple(crop_scale),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(data_cfg.augment.hflip),
        transforms.ToTensor(),
        transforms.Normalize(mean=list(data_cfg.mean), std=list(data_cfg.std))])
