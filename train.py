"""Train one run (or a sweep with -m) from the Hydra configs in configs/.

    python train.py                                   # the default: small ViT + DyT on digits
    python train.py model=convnext_t norm=layernorm data=fashion_mnist
    python train.py -m norm=layernorm,rmsnorm,dyt     # a sweep; re-running it resumes / skips finished runs
    torchrun --nproc_per_node=2 train.py ...          # DDP
"""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dyt.config import setup
from dyt.errors import ConfigError

setup()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from dyt.run import train  # heavy imports after Hydra has parsed the command line (fast --help)

    try:
        summary = train(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return summary.get(f"best/{summary.get('metric')}")  # the objective, for Hydra's optimizing sweepers


if __name__ == "__main__":
    main()
