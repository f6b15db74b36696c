"""The LLaMA family through the shared trainer, in-process: run records (loss, ppl, tokens/s, alphas), exact
resume, divergence, wandb offline, eval.py (val loss, ppl, zero-shot lm-eval on a local task file), sampling."""
import json
import random
import shutil

import pytest
import torch

from conftest import compose, script
from dyt.data.text import pydoc_documents
from dyt.errors import ConfigError
from dyt.logging import read_jsonl
from dyt.eval import evaluate_run
from dyt.run import train

LM = ["model=llama_tiny", "data=text_pydoc", "model.dim=32", "model.n_layers=2", "model.n_heads=2",
      "model.n_kv_heads=1", "data.seq_len=32", "data.max_val_tokens=2048", "trainer.batch_size=8",
      "trainer.max_steps=6", "trainer.eval_every=3", "trainer.ckpt_every=3", "trainer.log_every=3",
      "optim=llama", "optim.warmup_steps=2", "optim.lr=3e-3"]


def run(path, *extra):
    return train(compose([*LM, *extra]), path)


# The shared DyT run: long enough to leave the unigram plateau (bytes of pydoc: unigram 3.34 nats, bigram 2.56).
# At width 32 the embedding needs std 1/sqrt(32) (unit scale after x sqrt(32), as llama_tiny's 1/sqrt(128) at
# width 128); with llama_tiny's 0.088 this DyT model collapses to the unigram solution (val 3.34 after 200 steps).
# Seed 0 reaches ~2.24 in 600 steps (~12 s on one CPU thread). Tiny DyT LMs at this lr do not always leave the
# plateau: seeds 1, 2, 3 reach ~2.54, ~2.38, ~3.35 (stuck: layer 0 saturates every tanh), RMSNorm ~2.7 at 300 steps.
FIXTURE = ["trainer.max_steps=600", "trainer.eval_every=300", "trainer.ckpt_every=500", "trainer.log_every=100",
           "optim.lr=1e-2", "optim.warmup_steps=10", "model.embed_init_std=0.177"]
UNIGRAM_MARGIN = 0.5  # nats below the unigram baseline: no context-free model gets there


@pytest.fixture(scope="module")
def dyt_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm") / "dyt"
    return d, run(d, "norm=dyt", "trainer.keep_checkpoints=2", *FIXTURE)


def test_lm_run_records(dyt_run):
    d, s = dyt_run
    assert s["status"] == "completed" and s["step"] == 600
    train_ev = [e for e in read_jsonl(d / "metrics.jsonl") if e["split"] == "train"]
    val_ev = [e for e in read_jsonl(d / "metrics.jsonl") if e["split"] == "val"]
    assert {"train/loss", "train/lr", "train/throughput", "train/tflops", "alpha/layers.0.attn_norm",
            "alpha/final_norm"} <= set(train_ev[-1])
    assert {"val/loss", "val/ppl", "val/unigram_loss"} <= set(val_ev[-1])
    assert s["val/ppl"] == pytest.approx(2.718281828 ** s["val/loss"], rel=1e-6)
    # It uses context: clearly below what the train set's token frequencies alone give on val (3.34 nats). A model
    # that ignores context cannot pass: lr=0 gives 5.77, one step 5.76, the old 6-step fixture 5.71, a DyT run
    # collapsed to the unigram solution 3.34-3.36; this run gives ~2.24 (margin ~1.1).
    assert s["val/unigram_loss"] == pytest.approx(3.339, abs=0.01)
    assert s["val/loss"] < s["val/unigram_loss"] - UNIGRAM_MARGIN
    # tokens/s: the task counts predicted tokens (batch 8 x seq_len 32 per step)
    assert train_ev[-1]["train/throughput"] > 0


def test_lm_resume_equals_uninterrupted(dyt_run, tmp_path):
    d, full = dyt_run
    shutil.copytree(d, tmp_path / "cut")
    (tmp_path / "cut/checkpoints/step_00000600.pt").unlink()  # resumes at step 500
    (tmp_path / "cut/summary.json").unlink()
    # resumed with data workers (the uninterrupted run had none): the batches are the same
    resumed = run(tmp_path / "cut", "norm=dyt", "trainer.keep_checkpoints=2", *FIXTURE, "data.num_workers=2")
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


def _hand_loglikelihood(model, context: str, continuation: str) -> float:
    """log p(continuation | EOS + context) of a byte-level run, straight from the model's logits."""
    ctx, cont = [256] + list(context.encode()), list(continuation.encode())
    ids = ctx + cont
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).float(), -1)[0]
    return sum(logp[i - 1, ids[i]].item() for i in range(len(ctx), len(ids)))


def test_eval_and_zero_shot_on_local_task(dyt_run, tmp_path):
    pytest.importorskip("lm_eval")
    from dyt.families.llama.lm_eval import load_run_model
    d, s = dyt_run
    again = evaluate_run(d)
    assert again["val/loss"] == pytest.approx(s["val/loss"], rel=1e-5) and "val/ppl" in again
    # Each question is a span of a training document; one choice is its true continuation, the others random
    # letters. The last row's answer is a random-letter choice on purpose: the expected accuracy is 3/4, not 0 or 1.
    text, rnd = pydoc_documents()[1], random.Random(0)
    letters = lambda n: "".join(rnd.choice("qxzjvkwy") for _ in range(n))  # noqa: E731
    rows = []
    for i, (real_at, n_choices, answer) in enumerate([(0, 2, 0), (1, 2, 1), (2, 3, 2), (0, 2, 1)]):
        span = text[200 * i: 200 * i + 60]
        choices = [letters(20) for _ in range(n_choices)]
        choices[real_at] = text[200 * i + 60: 200 * i + 80].strip() or "the"
        rows.append({"question": span.rstrip(), "choices": choices, "answer": answer, "real": real_at})
    model, _, _ = load_run_model(d)
    # lm-eval scores " " + choice after the question (target_delimiter); acc = argmax of the summed log-likelihood
    def best(r):
        scores = [_hand_loglikelihood(model, r["question"], " " + c) for c in r["choices"]]
        return scores.index(max(scores))
    hand = [best(r) for r in rows]
    assert hand == [r["real"] for r in rows], "the trained model should prefer the corpus text to random letters"
    expected = sum(h == r["answer"] for h, r in zip(hand, rows)) / len(rows)
    assert expected == 0.75
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks/tiny_local_mc.yaml").write_text(LOCAL_TASK.format(path=tmp_path / "mc.jsonl"))
    assert script("eval.py").main([str(d), "--tasks", "tiny_local_mc", "--include-path", str(tmp_path / "tasks")]) == 0
    scores = json.loads((d / "lm_eval.json").read_text())
    assert scores["lm_eval/tiny_local_mc/acc"] == pytest.approx(expected)
    assert scores["lm_eval/avg"] == scores["lm_eval/tiny_local_mc/acc"]


def test_loglikelihood_matches_direct_computation(dyt_run):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from dyt.families.llama.lm_eval import load_run_model, make_lm
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
    sample = script("scripts/sample.py")
    assert sample.main([str(dyt_run[0]), "--prompt", "def ", "--max-new-tokens", "8", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("def ")


def test_lm_eval_requests_start_like_training_documents(dyt_run):
    """A run packed BOS + doc + EOS is scored on contexts that start with EOS, BOS, as its documents did."""
    pytest.importorskip("lm_eval")
    from dyt.families.llama.lm_eval import load_run_model, make_lm
    model, tok, _ = load_run_model(dyt_run[0])
    plain, bos = make_lm(model, tok, add_bos=False), make_lm(model, tok, add_bos=True)
    assert plain._encode_pair("Hi", " there") == ([tok.eos_id, *tok.encode("Hi")], tok.encode(" there"))
    assert bos._encode_pair("Hi", " there") == ([tok.eos_id, tok.bos_id, *tok.encode("Hi")], tok.encode(" there"))
