"""Export a run to a Hugging Face `transformers` folder (model.safetensors, config.json, remote code for DyT).

    python scripts/export_hf.py runs/<llama run> out/llama-dyt
    python scripts/export_hf.py runs/<vit run> out/vit-dyt --checkpoint runs/<vit run>/checkpoints/step_00001000.pt
    python scripts/export_hf.py runs/<vit run> out/vit-dyt-ema --weights ema

Families: llama (-> LlamaForCausalLM), vit (-> transformers' timm wrapper), gpt2 (-> GPT2LMHeadModel). Load the
folder with AutoModelForCausalLM / AutoModelForImageClassification / AutoModel
.from_pretrained(out, trust_remote_code=True) (DyT / Derf runs; RMSNorm / LayerNorm runs load as the stock
classes). See dyt/export/hf.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file or DCP directory (default: the latest)")
    p.add_argument("--weights", default="model", choices=["model", "ema"], help="raw weights or their EMA")
    args = p.parse_args(argv)

    from dyt.errors import ConfigError
    from dyt.export import export_run
    try:
        out = export_run(args.run_dir, args.out_dir, args.checkpoint, args.weights)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
