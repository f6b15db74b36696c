"""The Hugging Face hub's offline switches, read the one way every loader here reads them."""
from __future__ import annotations

import os


def hf_offline() -> bool:
    """Datasets and tokenizers: either switch (HF_DATASETS_OFFLINE=1 or HF_HUB_OFFLINE=1) means no download."""
    return os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"


def hub_offline() -> bool:
    """Models from the hub (the VAE): HF_HUB_OFFLINE, with the truthy spellings huggingface_hub accepts."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
