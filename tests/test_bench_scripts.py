"""Smoke tests of the benchmark scripts: they run end to end on tiny settings and print their tables.

The numbers themselves are not asserted (speed is measured by the scripts, never by timed tests).
"""
from __future__ import annotations

from conftest import ROOT, run_script, script

gpu_check = script("scripts/gpu_check.py")  # reads these scripts' output: their formats are its input


def test_bench_norms_quick(tmp_path):
    out = run_script(["python", str(ROOT / "scripts/bench/norms.py"), "--quick", "--no-write", "--dtypes", "fp32",
                      "--min-run-time", "0.05"], cwd=tmp_path, timeout=600)
    for impl in ("layernorm", "rmsnorm", "dyt-eager", "dyt-compile", "dyt-ours"):
        assert f"| fp32 | 4x1024x1024 | {impl} |" in out.stdout
        assert f"| fp32 | 8x96x56x56 NCHW | {impl} |" in out.stdout
    assert "C kernel alone" in out.stdout and "ns/element per thread" in out.stdout
    assert "Fixed cost per call (2x16 input, cpu): forward" in out.stdout
    assert gpu_check.parse_norms(out.stdout).summary.startswith("fp32 DyT fwd+bwd ")


def test_bench_models_every_family(tmp_path):
    cmd = ["python", str(ROOT / "scripts/bench/models.py"), "--no-write", "--steps", "1", "--modes", "eager"]
    vision = run_script(cmd + ["--models", "vit_pico", "convnext_atto", "--channels-last", "data.image_size=32"],
                        cwd=tmp_path, timeout=600).stdout
    for model in ("vit_pico", "convnext_atto"):
        assert f"| {model} | 8x32px | layernorm | eager |" in vision and f"| {model} | 8x32px | dyt | eager |" in vision
    assert "images/s | 1.00x |" in vision
    lm = run_script(cmd + ["--models", "llama_tiny", "--seq-len", "32"], cwd=tmp_path, timeout=600).stdout
    assert "| llama_tiny | 4x32 | rmsnorm | eager |" in lm and "| llama_tiny | 4x32 | dyt | eager |" in lm
    assert "tokens/s | 1.00x |" in lm
    got = gpu_check.parse_models(32)(lm).records
    assert [r["what"] for r in got] == ["llama_tiny rmsnorm eager", "llama_tiny dyt eager"] and got[0]["rate"] > 0


def test_bench_default_job_runs_train_py(tmp_path):
    out = run_script(["python", str(ROOT / "scripts/bench/default_job.py"), "--repeats", "1", "--no-write",
                      "trainer.max_steps=3", "trainer.eval_every=3"], cwd=tmp_path, timeout=600).stdout
    assert "## The default job (`python train.py trainer.max_steps=3 trainer.eval_every=3`)" in out
    assert "| 1 |" in out and "| 3 |" in out and "Median process wall time" in out


def test_bench_inference_folded_dyt(tmp_path):
    out = run_script(["python", str(ROOT / "scripts/bench/inference.py"), "--no-write", "--model", "llama_tiny",
                      "--seq-len", "32", "--passes", "2", "--repeats", "2"], cwd=tmp_path, timeout=600).stdout
    for norm in ("rmsnorm", "dyt", "dyt-folded"):
        assert f"| llama_tiny | 1x32 | fp32 | {norm} | eager |" in out
    err = float(out.split("folded vs unfolded DyT logits: relative error ")[1].split()[0])
    assert err < 1e-5  # folding changes rounding only
