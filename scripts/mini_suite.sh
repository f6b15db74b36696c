#!/usr/bin/env bash
# The CPU mini-suite: the paper's claims in miniature, each a real sweep through train.py, then the report and the
# analysis figures. One command, about 85 minutes on 2 busy CPU cores; re-running skips finished runs (and resumes
# unfinished ones), so an interrupted suite continues where it stopped.
#   scripts/mini_suite.sh                  # every sweep, two at a time; tables + figures in docs/reproduction
#   JOBS=1 scripts/mini_suite.sh           # one run at a time (a 1-core machine)
#   OUT=/tmp/repro scripts/mini_suite.sh   # write the tables and figures elsewhere
#
# Needs Debian's Fashion-MNIST (apt-get install dataset-fashion-mnist); it stops at once, saying so, without it.
#   T1      mini_vit (layernorm, dyt) and mini_convnext (layernorm, dyt): Fashion-MNIST
#   T8      mini_vit: dyt vs dyt_hardtanh / dyt_sigmoid / dyt_identity, alpha learnable
#   T9      mini_vit_fixed_alpha: the same functions with alpha fixed at 1
#   T11/12  mini_llama_alpha: DyT alpha0 grid at widths 64 and 128 (+ each width's RMSNorm) on pydoc text
#   T2      mini_mae and mini_dino (layernorm, dyt) pre-training on Fashion-MNIST, then mini_finetune from each
#           run: fine-tuned as released (LayerNorm) and with the pre-training's norm
#   T5      mini_w2v (layernorm, dyt, and dyt with LayerNorm after the feature encoder): a tiny wav2vec 2.0 on
#           synthetic speech (data=speech_synth)
#   T6      mini_dna (layernorm, dyt): pico HyenaDNA on a synthetic genome, then mini_dna_ft from each run (and DyT
#           put in at fine-tuning only, from the LayerNorm run, as the released HyenaDNA path does): the
#           synthetic motif task (data=gb_synth), 5 split seeds, test accuracy at the best validation epoch
#   Follow-ups  mini_norm_optim: LN / RMSNorm / DyT / Derf x AdamW / Muon on a tiny GPT-2 (arXiv 2604.01563);
#           mini_token_budget: LN vs DyT, two tiny GPT-2s x 3 training-set sizes (arXiv 2604.23434); pydoc text
# Runs: multirun/mini_*; logs: multirun/mini_logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
OUT=${OUT:-docs/reproduction}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1  # one thread per run: JOBS runs share JOBS cores without oversubscription
mkdir -p multirun

# 6 of the 12 sweeps train on Fashion-MNIST: say so first, in one line, rather than after the first sweeps failed.
FMNIST=${DYT_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$FMNIST/t10k-images-idx3-ubyte.gz" ]; then
  echo "mini-suite: needs Fashion-MNIST in $FMNIST: sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu)," \
       "or put the four idx .gz files there (its T1/T2/T8/T9 sweeps train on it)" >&2
  exit 2
fi

# The sweeps, longest first; JOBS of them run at once (xargs -P), each logging to multirun/mini_logs/<name>.log.
# LLaMA widths: heads that divide the width, embedding init 1/sqrt(width) (see configs/model/llama_tiny.yaml).
W64="model.dim=64 model.n_heads=2 model.n_kv_heads=1 model.embed_init_std=0.125"
W128="model.dim=128 model.embed_init_std=0.088"
SWEEPS=(
  "vit        -m experiment=mini_vit"
  "vit_fixed  -m experiment=mini_vit_fixed_alpha"
  "llama128   -m experiment=mini_llama_alpha $W128"
  "convnext   -m experiment=mini_convnext"
  "llama64    -m experiment=mini_llama_alpha $W64"
  "llama128_rmsnorm -m experiment=mini_llama_alpha norm=rmsnorm model.alpha_attn=1.0 $W128"
  "llama64_rmsnorm  -m experiment=mini_llama_alpha norm=rmsnorm model.alpha_attn=1.0 $W64"
  "dino       -m experiment=mini_dino"
  "mae        -m experiment=mini_mae"
  "dna        -m experiment=mini_dna"
  "w2v        -m experiment=mini_w2v"
  "w2v_feature_ln -m experiment=mini_w2v norm=dyt model.feature_norm=layernorm"
  "norm_optim -m experiment=mini_norm_optim"
  "budget     -m experiment=mini_token_budget"
  "budget_small -m experiment=mini_token_budget model.n_embd=64 model.n_layer=2 model.n_head=2 model.embed_init_std=0.125"
)
mkdir -p multirun/mini_logs
start=$(date +%s)
echo "mini-suite: ${#SWEEPS[@]} sweeps, $JOBS at a time (logs: multirun/mini_logs/)"
export PY
printf '%s\n' "${SWEEPS[@]}" | xargs -P "$JOBS" -L 1 bash -c '
  name=$0; log=multirun/mini_logs/$name.log
  if "$PY" train.py "$@" > "$log" 2>&1; then echo "  done: $name ($(grep -c "^\[dyt\] \(completed\|diverged\)" "$log") runs, $(grep -c "already \(completed\|diverged\)" "$log") done before)"
  else echo "  FAILED: $name (see $log)" >&2; exit 1; fi'
run_of() { find "multirun/$1" -maxdepth 1 -type d -name "$2" | sort | head -1; }

# Second stage (Table 2): each pre-training run fine-tuned as released (LayerNorm) and with its own norm. The run
# directories' names hold '=' (their override suffix): quoted for Hydra's parser.
finetune() {  # finetune <name> <pre-training sweep> <its run-name prefix>
  local log=multirun/mini_logs/$2_finetune.log
  if "$PY" train.py -m experiment=mini_finetune finetune_norm=released,pretrain \
      "trainer.init_from='$(run_of "$2" "$3-layernorm-*")','$(run_of "$2" "$3-dyt-*")'" > "$log" 2>&1; then
    echo "  done: $1 ($(grep -c "^\[dyt\] \(completed\|diverged\)" "$log") runs, $(grep -c "already \(completed\|diverged\)" "$log") done before)"
  else echo "  FAILED: $1 (see $log)" >&2; exit 1; fi
}
finetune mae_finetune mini_mae mae_pico
finetune dino_finetune mini_dino dino_pico
log=multirun/mini_logs/dna_finetune.log  # Table 6: each pre-training fine-tuned with its own norm (as released),
# and the LayerNorm one with DyT put in at fine-tuning (the released HyenaDNA path: a LayerNorm checkpoint converted)
if "$PY" train.py -m experiment=mini_dna_ft \
    "trainer.init_from='$(run_of mini_dna "hyenadna_pico-layernorm-*")','$(run_of mini_dna "hyenadna_pico-dyt-*")'" > "$log" 2>&1 \
  && "$PY" train.py -m experiment=mini_dna_ft finetune_norm=null norm=dyt \
    "trainer.init_from='$(run_of mini_dna "hyenadna_pico-layernorm-*")'" >> "$log" 2>&1; then
  echo "  done: dna_finetune ($(grep -c "^\[dyt\] \(completed\|diverged\)" "$log") runs)"
else echo "  FAILED: dna_finetune (see $log)" >&2; exit 1; fi
echo "mini-suite: sweeps done in $(( ($(date +%s) - start) / 60 )) min"

# Tables next to the paper's, and the figures (S-curves of the LayerNorm ViT, alpha vs 1/std of the DyT ViT).
mkdir -p "$OUT"
"$PY" scripts/report.py multirun/mini_vit multirun/mini_vit_fixed_alpha multirun/mini_convnext \
  multirun/mini_llama_alpha multirun/mini_finetune multirun/mini_dna_ft multirun/mini_w2v \
  --tables mini_t1,mini_t2,mini_t5,mini_t6,mini_t8,mini_t9,mini_t12 --out "$OUT"
"$PY" scripts/figures.py scurves "$(run_of mini_vit 'vit_pico-layernorm-*')" --out "$OUT/scurves_vit_layernorm.png"
"$PY" scripts/figures.py scurves "$(run_of mini_vit 'vit_pico-dyt-*')" --out "$OUT/scurves_vit_dyt.png"
"$PY" scripts/figures.py alpha-std "$(run_of mini_vit 'vit_pico-dyt-*')" --out "$OUT/alpha_std_vit_dyt.png"
"$PY" scripts/figures.py functions --out "$OUT/functions.png"
"$PY" scripts/figures.py norm-optim multirun/mini_norm_optim --out "$OUT/norm_optim.png"
"$PY" scripts/figures.py token-budget multirun/mini_token_budget --out "$OUT/token_budget.png"
echo "mini-suite: done in $(( ($(date +%s) - start) / 60 )) min; tables and figures in $OUT"
