"""Zero-shot lm-eval of LLaMA runs: the paper's 15 tasks and their average, the run's precision reaching the model,
batched scoring equal to one request at a time, and 2 gloo ranks (data-parallel, and FSDP-sharded) giving the
numbers of one process while each scores only its share of the requests."""
import json
import os

import pytest
import torch

from conftest import ROOT, compose, run_script
from dyt.errors import ConfigError
from dyt.run import train
from test_fsdp import TORCHRUN
from test_llama_train import LM, LOCAL_TASK

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from dyt.families.llama import lm_eval as E  # noqa: E402

TINY = [*LM, "trainer.device=cpu", "trainer.max_steps=2", "trainer.eval_every=2", "trainer.ckpt_every=2"]
# lm-eval's metrics of each task as the harness reports them (values made distinct to tell them apart)
PAPER15_METRICS = {"anli_r1": ("acc",), "anli_r2": ("acc",), "anli_r3": ("acc",), "arc_challenge": ("acc", "acc_norm"),
                   "arc_easy": ("acc", "acc_norm"), "boolq": ("acc",), "hellaswag": ("acc", "acc_norm"),
                   "openbookqa": ("acc", "acc_norm"), "piqa": ("acc", "acc_norm"), "record": ("f1", "em"),
                   "rte": ("acc",), "truthfulqa_mc1": ("acc",), "truthfulqa_mc2": ("acc",), "wic": ("acc",),
                   "winogrande": ("acc",)}
# Short questions and choices of different lengths: batches pad, and sorting by length changes their order.
ROWS = [{"question": q, "choices": c, "answer": a} for q, c, a in [
    ("def main", ["():", "(argv=None):", "x"], 0), ("import", [" os", " sys, json"], 1), ("class A", ["(B):", ":"], 1),
    ("for i in", [" range(10):", " x:"], 0), ("return", [" None", " self.value + 1", " 0"], 2),
    ("The", [" end", " beginning of the file"], 0), ("x =", [" 1", " [1, 2, 3]"], 1)]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-step llama_tiny run (one-file checkpoint) and a folder with a local multiple-choice task."""
    root = tmp_path_factory.mktemp("lm_eval")
    train(compose(TINY), root / "run")
    (root / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    (root / "tasks").mkdir()
    (root / "tasks/tiny_local_mc.yaml").write_text(LOCAL_TASK.format(path=root / "mc.jsonl"))
    return root


def local_tasks_only(setattr=setattr) -> None:
    """lm-eval's TaskManager without the harness's own tasks (indexing them takes ~15 s per process)."""
    import functools

    import lm_eval.tasks
    real = lm_eval.tasks.TaskManager
    try:
        real(include_defaults=False)
    except TypeError:  # an older lm-eval: the whole index
        return
    setattr(lm_eval.tasks, "TaskManager", functools.partial(real, include_defaults=False))


def requests():
    pairs = [(r["question"], " " + c) for r in ROWS for c in r["choices"]]
    return [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]


# --- paper15 ------------------------------------------------------------------------------------------------------
def fake_results(skip=()):
    """lm-eval's results dict for all 15 tasks: value 0.01 x (row number) per metric, and stderrs to be ignored."""
    out, k = {}, 0
    for task, metrics in PAPER15_METRICS.items():
        out[task] = {"alias": task}
        for m in metrics:
            k += 1
            if (task, m) not in skip:
                out[task][f"{m},none"], out[task][f"{m}_stderr,none"] = 0.01 * k, 0.5
    out["arc_easy"]["brier_score,none"] = 0.9  # reported, not in OpenLLaMA's table: not averaged
    return out


def test_paper15_is_the_papers_list_averaged_like_openllama(tiny, monkeypatch):
    """paper15 = Appendix A's 15 tasks; the average is OpenLLaMA's table's: every task/metric row it reports (acc
    and acc_norm where both exist, ReCoRD's em and f1). A metric the average needs but lm-eval did not report is an
    error, not a task silently left out."""
    asked = []
    monkeypatch.setattr("lm_eval.tasks.TaskManager", lambda *a, **k: None)  # (indexing the harness's tasks: ~20 s)
    monkeypatch.setattr(E, "check_tasks", lambda names, manager: asked.extend(names))
    results = {}
    monkeypatch.setattr(E, "evaluate_tasks", lambda *a, **k: {"results": results})
    results.update(fake_results())
    out = E.run_lm_eval(tiny / "run", ["paper15"])
    assert asked == list(PAPER15_METRICS)
    rows = [0.01 * k for k in range(1, 22)]  # 21 rows, every one in the average
    assert out["lm_eval/avg"] == pytest.approx(sum(rows) / 21)
    assert out["lm_eval/record/em"] == pytest.approx(0.16) and "lm_eval/record/em_stderr" not in out
    assert json.loads((tiny / "run/lm_eval.json").read_text()) == out
    results.clear()
    results.update(fake_results(skip={("record", "em")}))
    with pytest.raises(ConfigError, match="lm-eval task record reported f1, not em, which the paper15 average uses"):
        E.run_lm_eval(tiny / "run", ["paper15"])
    results.clear()
    results.update({"my_task": {"bleu,none": 3.0}})  # outside paper15: no metric an average can use
    with pytest.raises(ConfigError, match="lm-eval task my_task reports none of the metrics"):
        E.run_lm_eval(tiny / "run", ["my_task"])


# --- precision, batching --------------------------------------------------------------------------------------------
def test_run_precision_reaches_the_model(tiny, monkeypatch):
    """trainer.precision=bf16 (given to eval.py as for its other evaluations) runs the lm-eval forwards in bf16,
    on the run's device."""
    from conftest import script
    local_tasks_only(monkeypatch.setattr)
    seen = []
    real = E.evaluate_tasks

    def watched(lm, *a, **k):
        hook = lm.model.output.register_forward_hook(lambda m, i, out: seen.append((out.dtype, out.device.type)))
        try:
            return real(lm, *a, **k)
        finally:
            hook.remove()
    monkeypatch.setattr(E, "evaluate_tasks", watched)
    argv = [str(tiny / "run"), "--tasks", "tiny_local_mc", "--include-path", str(tiny / "tasks")]
    assert script("eval.py").main([*argv, "trainer.precision=bf16"]) == 0
    assert seen and set(seen) == {(torch.bfloat16, "cpu")}
    seen.clear()
    assert script("eval.py").main(argv) == 0  # the run's own precision: fp32 on the CPU
    assert seen and set(seen) == {(torch.float32, "cpu")}


@pytest.mark.parametrize("dtype,tol", [(None, 1e-5), (torch.bfloat16, 2e-2)])
def test_batches_score_like_one_request_at_a_time(tiny, dtype, tol):
    model, tok, _ = E.load_run_model(tiny / "run")
    one = E.make_lm(model, tok, batch_size=1, dtype=dtype).loglikelihood(requests())
    many = E.make_lm(model, tok, batch_size=4, dtype=dtype).loglikelihood(requests())
    assert len(many) == len(requests()) == 16
    assert [ll for ll, _ in many] == pytest.approx([ll for ll, _ in one], rel=tol, abs=tol)
    if dtype is None:
        assert [g for _, g in many] == [g for _, g in one]


# --- 2 gloo ranks -------------------------------------------------------------------------------------------------
def rank_call(root, name, overrides):
    """On every rank of the group: eval.py --tasks on the run (its metrics into <name>.json by rank 0), then the
    loglikelihoods of `requests()` by the same path, and the rows this rank's model forwarded (<name>.<rank>.json)."""
    from dyt import distributed as D
    from dyt.eval import load_run
    from eval import main
    local_tasks_only()
    run = os.path.join(root, "fsdp_run" if name == "dcp" else "run")
    rank, rows = D.init_distributed("cpu").rank, []  # one group: load_run keeps it, eval.py's main ends it
    with load_run(run, overrides, weights=("model",), shard=True) as r:
        assert r.sharded == (name != "ddp")
        model = r.model()
        model.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
        lls = E.make_lm(model, E.load_tokenizer(r.cfg.data), batch_size=2, lockstep=r.sharded).loglikelihood(requests())
    with open(os.path.join(root, f"{name}.{rank}.json"), "w") as f:
        json.dump({"ll": lls, "rows": sum(rows)}, f)
    assert main([run, "--tasks", "tiny_local_mc", "--include-path", os.path.join(root, "tasks"), *overrides]) == 0
    if rank == 0:
        os.replace(os.path.join(run, "lm_eval.json"), os.path.join(root, f"{name}.json"))


def one_process(run, root):
    """What one process gives: eval.py's metrics and the loglikelihoods of `requests()` (batch 2)."""
    from conftest import script
    assert script("eval.py").main([str(run), "--tasks", "tiny_local_mc", "--include-path", str(root / "tasks")]) == 0
    model, tok, _ = E.load_run_model(run)
    return json.loads((run / "lm_eval.json").read_text()), E.make_lm(model, tok, batch_size=2).loglikelihood(requests())


@pytest.mark.slow
def test_two_ranks_give_the_numbers_of_one(tiny, monkeypatch):
    """Two gloo ranks (torchrun): data-parallel on the plain model, sharded (FSDP2) from the one-file checkpoint,
    and sharded from an FSDP run's DCP checkpoint (read shard by shard) give one process's metrics and
    loglikelihoods; each rank forwards only part of the requests (+ at most one spare row to keep in lockstep)."""
    calls = [("test_fsdp", "train_run", [str(tiny / "fsdp_run"), [*TINY, "trainer.parallel=fsdp"]]),
             ("test_lm_eval", "rank_call", [str(tiny), "ddp", []]),
             ("test_lm_eval", "rank_call", [str(tiny), "fsdp", ["trainer.parallel=fsdp"]]),
             ("test_lm_eval", "rank_call", [str(tiny), "dcp", []])]
    (tiny / "calls.json").write_text(json.dumps(calls))
    group = run_script([TORCHRUN, "--standalone", "--nproc_per_node=2", str(ROOT / "tests/torchrun_calls.py"),
                        str(tiny / "calls.json")], cwd=tiny, timeout=600, check=False)
    assert group.returncode == 0, group.stdout[-3000:] + group.stderr[-3000:]
    assert (tiny / "fsdp_run/checkpoints/step_00000002").is_dir()  # a DCP directory
    n = len(requests())
    local_tasks_only(monkeypatch.setattr)
    for name, run in (("ddp", tiny / "run"), ("fsdp", tiny / "run"), ("dcp", tiny / "fsdp_run")):
        metrics, lls = one_process(run, tiny)
        assert json.loads((tiny / f"{name}.json").read_text()) == pytest.approx(metrics, rel=1e-6), name
        ranks = [json.loads((tiny / f"{name}.{r}.json").read_text()) for r in (0, 1)]
        for got in ranks:  # every rank has all results, in the requests' order
            assert [ll for ll, _ in got["ll"]] == pytest.approx([ll for ll, _ in lls], rel=1e-5), name
            assert [g for _, g in got["ll"]] == [g for _, g in lls], name
        assert sum(r["rows"] for r in ranks) <= n + 1 and max(r["rows"] for r in ranks) <= n // 2 + 2, (name, ranks)
