"""The LLaMA family through the shared trainer, in-process: run records (loss, ppl, tokens/s, alphas), exact
resume, divergence, wandb offline, eval.py (val loss, ppl, zero-shot lm-eval on a local task file), sampling."""
import json
import shutil
import sys

import pytest

from conftest import ROOT, compose
from dyt.errors import ConfigError
from dyt.logging import read_jsonl
from dyt.run import evaluate_run, train

LM = ["model=llama_tiny", "data=text_pydoc", "model.dim=32", "model.n_layers=2", "model.n_heads=2",
      "model.n_kv_heads=1", "data.seq_len=32", "data.max_val_tokens=2048", "trainer.batch_size=8",
      "trainer.max_steps=6", "trainer.eval_every=3", "trainer.ckpt_every=3", "trainer.log_every=3",
      "optim=llama", "optim.warmup_steps=2", "optim.lr=3e-3"]


def run(path, *extra):
    return train(compose([*LM, *extra]), path)


@pytest.fixture(scope="module")
def dyt_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm") / "dyt"
    return d, run(d, "norm=dyt", "trainer.keep_checkpoints=2")


def test_lm_run_records(dyt_run):
    d, s = dyt_run
    assert s["status"] == "completed" and s["step"] == 6
    train_ev = [e for e in read_jsonl(d / "metrics.jsonl") if e["split"] == "train"]
    val_ev = [e for e in read_jsonl(d / "metrics.jsonl") if e["split"] == "val"]
    assert {"train/loss", "train/lr", "train/throughput", "train/tflops", "alpha/layers.0.attn_norm",
            "alpha/final_norm"} <= set(train_ev[-1])
    assert {"val/loss", "val/ppl", "val/unigram_loss"} <= set(val_ev[-1])
    assert s["val/ppl"] == pytest.approx(2.718281828 ** s["val/loss"], rel=1e-6)
    assert s["val/loss"] < 5.77  # below log(320): it learned something in 6 steps
    # tokens/s: the task counts predicted tokens (batch 8 x seq_len 32 per step)
    assert train_ev[-1]["train/throughput"] > 0


def test_lm_resume_equals_uninterrupted(dyt_run, tmp_path):
    d, full = dyt_run
    shutil.copytree(d, tmp_path / "cut")
    (tmp_path / "cut/checkpoints/step_00000006.pt").unlink()
    (tmp_path / "cut/summary.json").unlink()
    resumed = run(tmp_path / "cut", "norm=dyt", "trainer.keep_checkpoints=2")
    assert resumed["train/loss"] == full["train/loss"] and resumed["val/loss"] == full["val/loss"]


def test_lm_rejects_channels_last(tmp_path):
    with pytest.raises(ConfigError, match="trainer.channels_last is a memory format for image models"):
        run(tmp_path / "r", "trainer.channels_last=true")


def test_lm_divergence_is_recorded(tmp_path):
    s = run(tmp_path / "nan", "norm=dyt", "model.init_std=1e30")  # inf logits: the first loss is NaN
    assert s["status"] == "diverged" and s["step"] == 1
    assert json.loads((tmp_path / "nan/summary.json").read_text())["status"] == "diverged"


def test_lm_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    s = run(tmp_path / "w", "norm=layernorm", "logger=wandb", "trainer.max_steps=3")
    assert s["status"] == "completed" and len(list((tmp_path / "w/wandb").glob("offline-run-*"))) == 1


LOCAL_TASK = """task: tiny_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def test_eval_and_zero_shot_on_local_task(dyt_run, tmp_path):
    pytest.importorskip("lm_eval")
    d, s = dyt_run
    again = evaluate_run(d)
    assert again["val/loss"] == pytest.approx(s["val/loss"], rel=1e-5) and "val/ppl" in again
    rows = [{"question": "The keyword to define a function in Python is", "choices": [" def", " zz"], "answer": 0},
            {"question": "A for loop", "choices": [" iterates", " qqqq"], "answer": 0},
            {"question": "x = 1", "choices": ["\n", "}}}}"], "answer": 0}]
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks/tiny_local_mc.yaml").write_text(LOCAL_TASK.format(path=tmp_path / "mc.jsonl"))
    sys.path.insert(0, str(ROOT))
    import eval as eval_script
    assert eval_script.main([str(d), "--tasks", "tiny_local_mc", "--include-path", str(tmp_path / "tasks")]) == 0
    scores = json.loads((d / "lm_eval.json").read_text())
    assert 0.0 <= scores["lm_eval/tiny_local_mc/acc"] <= 1.0 and scores["lm_eval/avg"] == scores["lm_eval/tiny_local_mc/acc"]


def test_loglikelihood_matches_direct_computation(dyt_run):
    pytest.importorskip("lm_eval")
    import torch
    from lm_eval.api.instance import Instance

    from dyt.lm_eval import load_run_model, make_lm
    model, tok, _ = load_run_model(dyt_run[0])
    lm = make_lm(model, tok, batch_size=2)
    reqs = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate([("def f", "(x):"), ("a ", "b"),
                                                                                  ("", "import os")])]
    got = lm.loglikelihood(reqs)
    ids = [256] + list(b"def f(x):")
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).float(), -1)[0]
    want = sum(logp[i - 1, ids[i]].item() for i in range(6, len(ids)))
    assert got[0][0] == pytest.approx(want, rel=1e-4) and len(got) == 3
    assert lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("hello world",), 0)])[0] < 0


def test_sample_script(dyt_run, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import sample
    assert sample.main([str(dyt_run[0]), "--prompt", "def ", "--max-new-tokens", "8", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("def ")
