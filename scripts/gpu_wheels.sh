#!/usr/bin/env bash
# Wheels of the Python packages the GPU check needs that the GPU machine lacks, into .whl/ (ignored by git; it
# travels with the working tree and scripts/gpu_check.sh installs it there). Run HERE, with PyPI reachable:
#     bash scripts/gpu_wheels.sh            # then: bash scripts/gpu_check.sh on the GPU machine
# The GPU machine (/work/.library/device/KINDS.md) has torch, triton, timm, transformers, tokenizers, scikit-learn,
# scipy, matplotlib, pytest, pytest-xdist, pandas, pyarrow, huggingface-hub, jinja2, sacrebleu... but not:
#   hydra-core, omegaconf, antlr4-python3-runtime   train.py's configs
#   lm_eval, datasets, dill, multiprocess           eval.py --tasks (a local task: datasets' json loader)
# lm-eval declares more (evaluate, rouge-score, nltk, sqlitedict, word2number, pytablewriter, ...): those are
# imported only by hub tasks and lm-eval's cache / table printer, none of which the check runs (an lm-eval run of a
# local task with them made unimportable passed here), so they stay behind. wandb is imported only with logger=wandb.
# Versions are the ones of this repository's venv (.venv, or $DYT_VENV), so both machines run the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DYT_VENV:-.venv}
PACKAGES=(hydra-core omegaconf antlr4-python3-runtime lm_eval datasets dill multiprocess)
SDIST_ONLY=(antlr4-python3-runtime)  # no wheel on PyPI for the pinned version: built here (pure Python)

pinned() {  # name==version as installed in the venv
    "$VENV/bin/python" -c 'import sys, importlib.metadata as m; print(f"{sys.argv[1]}=={m.version(sys.argv[1])}")' "$1"
}

rm -rf .whl && mkdir -p .whl
for name in "${PACKAGES[@]}"; do
    spec=$(pinned "$name")
    if [[ " ${SDIST_ONLY[*]} " == *" $name "* ]]; then
        "$VENV/bin/python" -m pip wheel -q --no-deps --no-binary=:all: -w .whl "$spec"
    else
        # pure-Python wheels (py3-none-any, py312-none-any): "any" is the platform; the manylinux tags are there
        # for a package that ships compiled wheels in a later version
        "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$spec"
    fi
done
ls .whl
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
