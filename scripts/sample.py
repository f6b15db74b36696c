"""Sample text from a language-model run (a sanity check: prompt -> continuation).

    python scripts/sample.py runs/llama_tiny-dyt-pydoc-s0_experiment=lm_pydoc --prompt "The for statement"
    python scripts/sample.py <run dir> --prompt "def " --temperature 0.8 --top-k 40 --max-new-tokens 200

Greedy when --temperature is 0 (the default). Prints the prompt followed by the continuation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--prompt", default="The ")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import torch

    from dyt.errors import ConfigError
    from dyt.families.llama.lm_eval import generate, load_run_model
    torch.manual_seed(args.seed)
    try:
        model, tok, cfg = load_run_model(args.run_dir, args.checkpoint, args.device)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = generate(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                    context=cfg.data.seq_len)
    print(args.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
