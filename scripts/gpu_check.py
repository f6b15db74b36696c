"""The GPU check (issue 18): every CUDA path of dyt in one run of under 8 minutes on one H100, into docs/GPU.md.

    bash scripts/gpu_check.sh                  # on the GPU machine (installs .whl/ first: scripts/gpu_wheels.sh)
    bash scripts/gpu_check.sh --dry-run        # each step and the exact commands it would run; needs no GPU
    bash scripts/gpu_check.sh --only lm_eval   # one step (repeat --only for more)

First it imports every module the steps need and names each one missing (the steps needing it are skipped, with
why). Then each step runs its commands in a process group of its own with a time budget (the budgets add up to
under 8 minutes); its status (passed / failed / timeout / skipped, and why), seconds and key numbers are recorded,
and a failing step never stops the next. The report holds the device line (GPU, driver, torch, CUDA, triton), the
table of steps, throughput (and MFU), peak memory against dyt.plan, the kernel benchmark and each step's log tail.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import importlib.util
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "GPU.md"
PY = sys.executable
LIMIT_S = 480  # the limit for the whole check on one H100
OVERHEAD_S = 15  # the import check, the wheels' install (gpu_check.sh) and the report, beside the step budgets
MARK = "GPU_CHECK "  # scripts/gpu_measure.py's result lines
LOG_TAIL = 40  # lines of each step's log in the report
ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
# A short bf16 run of train.py on the GPU: 5 logged windows (the first, with the warm-up, is left out of the
# medians), one evaluation and one checkpoint at the end.
RUN50 = ["trainer.device=cuda", "trainer.precision=bf16", "trainer.max_steps=50", "logger=none", "trainer.log_every=10",
         "trainer.eval_every=50", "trainer.ckpt_every=50", "trainer.progress=off"]
LM_TASK = "gpu_check_mc"


@dataclass
class Parsed:
    """What a step's log says: key numbers in one line, result rows (throughput, memory), a table to show as is,
    and a problem that fails a step whose commands exited 0."""
    summary: str = ""
    records: list[dict] = field(default_factory=list)
    table: str = ""
    problem: str = ""


@dataclass
class Step:
    name: str
    checks: str  # the item of the issue it checks
    budget_s: int
    commands: list[list[str]]  # run in order; the step fails at the first that fails
    needs: tuple[str, ...] = ()  # modules to import (besides torch)
    parse: Optional[Callable[[str], Parsed]] = None  # the step's log -> its numbers
    prepare: Optional[functools.partial] = None  # writes the step's input files before its commands
    note: str = ""  # said in the report whatever happens


@dataclass
class Outcome:
    step: Step
    status: str  # passed | failed | timeout | skipped
    seconds: float = 0.0
    why: str = ""
    parsed: Parsed = field(default_factory=Parsed)
    log_tail: str = ""


# --- reading the logs -------------------------------------------------------------------------------------------
def parse_pytest(log: str) -> Parsed:
    lines = [ln for ln in log.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?)\b", ln)]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)\b",
                                                     lines[-1])} if lines else {}
    return Parsed(", ".join(f"{n} {w}" for w, n in counts.items()),
                  problem="" if counts.get("passed") else "no test passed")


def parse_norms(log: str) -> Parsed:
    """scripts/bench/norms.py's table, and the range of DyT's (ours) fwd+bwd time over LayerNorm's per dtype."""
    table = [ln for ln in log.splitlines() if ln.startswith("|")]
    ratios: dict[str, list[float]] = {}
    for ln in table[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) >= 8 and cells[2] == "dyt-ours":
            ratios.setdefault(cells[0], []).append(float(cells[7]))
    summary = "; ".join(f"{d} DyT fwd+bwd {min(v):.2f}-{max(v):.2f}x LayerNorm's time" for d, v in ratios.items())
    extra = [ln for ln in log.splitlines() if ln.startswith("Fixed cost per call")]
    return Parsed(summary, table="\n".join(table + ([""] + extra if extra else [])),
                  problem="" if ratios else "no DyT row in the benchmark's table")


@functools.lru_cache(maxsize=None)
def lm_flops_per_token(model: str, seq_len: int) -> float:
    """A LLaMA config's training FLOPs per token (model.flops_per_token, as the trainer's MFU)."""
    import torch

    from dyt.families import build_model, compose
    with torch.device("meta"):
        return build_model(compose([f"model={model}", "data=text_pydoc", f"data.seq_len={seq_len}"])) \
            .flops_per_token(seq_len)


def parse_models(seq_len: int) -> Callable[[str], Parsed]:
    """scripts/bench/models.py's lines: `<model> <norm> <mode> <ms> ms/step <rate> <unit>/s (first step <s> s)`;
    MFU against the GPU's bf16 peak (dyt.tasks.language.peak_flops) for language models."""
    pattern = re.compile(r"^(\S+)\s+(\S+)\s+(eager|compile)\s+([\d.]+) ms/step\s+([\d.]+) (\w+)/s "
                         r"\(first step ([\d.]+) s\)", re.M)

    def parse(log: str) -> Parsed:
        import torch

        from dyt.tasks.language import peak_flops
        peak = peak_flops(torch.device("cuda", 0)) if torch.cuda.is_available() else None
        records = []
        for name, norm, mode, ms, rate, unit, first in pattern.findall(log):
            mfu = float(rate) * lm_flops_per_token(name, seq_len) / peak if peak and unit == "tokens" else None
            records.append({"what": f"{name} {norm} {mode}", "rate": float(rate), "unit": unit, "mfu": mfu,
                            "ms_per_step": float(ms), "first_step_s": float(first)})
        return Parsed(short(records), records, problem="" if records else "no result line")
    return parse


def parse_measure(log: str) -> Parsed:
    """scripts/gpu_measure.py's result lines; a train.py run that did not complete is a problem."""
    records = [json.loads(ln[len(MARK):]) for ln in log.splitlines() if ln.startswith(MARK)]
    bad = [f"{r['what']}: exit {r.get('exit')}, status {r.get('status')}" for r in records
           if "exit" in r and (r["exit"] != 0 or r.get("status") != "completed")]
    return Parsed(short(records), records, problem="; ".join(bad) or ("" if records else "no result line"))


def parse_lm_eval(log: str) -> Parsed:
    """eval.py's `lm_eval/<task>/<metric>: <value>` lines."""
    scores = {k: float(v) for k, v in re.findall(rf"^lm_eval/{LM_TASK}/(\w+): ([\d.]+)$", log, re.M)}
    if "acc" not in scores:
        return Parsed(problem="eval.py printed no lm-eval accuracy")
    return Parsed(f"acc {scores['acc']:.3f} on {scores.get('sample_len', 0):.0f} questions (chance 0.25)")


def short(records: list[dict]) -> str:
    """One line of a step's results: rate, MFU, peak memory against the plan."""
    parts = []
    for r in records:
        s = f"{r['what']}: {r['rate']:,.0f} {r['unit']}/s" if r.get("rate") else r["what"]
        if r.get("mfu"):
            s += f", MFU {100 * r['mfu']:.1f}%"
        if r.get("peak_gib"):
            s += f", peak {r['peak_gib']:.1f} GiB (plan {r['plan_gib']:.1f})"
        parts.append(s)
    return "; ".join(parts)


# --- the steps --------------------------------------------------------------------------------------------------
def write_local_task(folder: Path) -> None:
    """An offline multiple-choice lm-eval task: which of four 12-character spans continues a 40-character span of
    the training corpus (Python's pydoc topics, data=text_pydoc)."""
    from pydoc_data.topics import topics
    rng = random.Random(0)
    texts = [t for t in topics.values() if len(t) > 200]

    def span(n: int) -> str:
        doc = rng.choice(texts)
        k = rng.randrange(len(doc) - n)
        return doc[k:k + n]

    rows = []
    for _ in range(32):
        text = span(52)
        question, truth = text[:40], text[40:]
        choices = [truth, span(12), span(12), span(12)]
        rng.shuffle(choices)
        rows.append({"question": question, "choices": choices, "answer": choices.index(truth)})
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{LM_TASK}.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / f"{LM_TASK}.yaml").write_text(
        f"task: {LM_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n")


def steps(work: Path) -> list[Step]:
    pytest = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rfEs", "-m", "gpu",
              "tests/test_kernels.py"]  # every test marked gpu lives there

    def run50(name: str, checks: str, budget: int, overrides: list[str], needs=("sklearn",), note="") -> Step:
        return Step(name, checks, budget,
                    [[PY, "scripts/gpu_measure.py", "peak", "train.py", *overrides, *RUN50,
                      f"hydra.run.dir={work / name}"]],
                    needs=("hydra", "omegaconf", "timm", *needs), parse=parse_measure, note=note)

    lm_run, lm_tasks = work / "lm_eval_run", work / "lm_tasks"
    llama = ["--models", "llama_1b", "--amp", "bf16", "--batch", "4", "--seq-len", "2048"]
    return [
        Step("gpu_tests", "Triton DyT kernel vs the eager reference: fwd/bwd, fp32/bf16, compile + autocast", 25,
             [[*pytest, "-k", "not fused_fp32_grads"]], needs=("pytest", "triton"), parse=parse_pytest),
        Step("fused_backward", "the CUDA variants of the fused-backward tests (fp32 grads vs float64)", 25,
             [[*pytest, "-k", "fused_fp32_grads and cuda"]], needs=("pytest", "triton"), parse=parse_pytest),
        Step("kernel_bench", "Triton DyT kernel speed vs LayerNorm, RMSNorm, torch.compile (fp32/bf16)", 30,
             [[PY, "scripts/bench/norms.py", "--device", "cuda", "--quick", "--no-write"]], needs=("triton",),
             parse=parse_norms),
        run50("run50_vit", "50-step bf16 run (vit); ViT-B images/s; peak memory vs planner", 25,
              ["model=vit_b", "norm=dyt", "data=digits", "data.image_size=224", "data.patch_size=16",
               "trainer.batch_size=128"],
              note="ViT-B/16 at its real input size, 224 px (the digits resized, one channel)."),
        run50("run50_convnext", "50-step bf16 run (convnext); peak memory vs planner", 25,
              ["model=convnext_t", "norm=dyt", "data=digits", "data.image_size=224", "trainer.batch_size=128"]),
        run50("run50_cnn", "50-step bf16 run (cnn: ResNet-50, BatchNorm -> DyT); peak memory vs planner", 25,
              ["model=resnet50", "norm=dyt", "data=digits", "data.image_size=224", "trainer.batch_size=128"]),
        run50("run50_dit", "50-step bf16 run (dit); DiT-XL/2 images/s; peak memory vs planner", 45,
              ["experiment=dit_pixel", "model=dit_xl2", "norm=dyt", "data.image_size=32", "trainer.batch_size=32",
               "model.diffusion.grid_per_class=1", "model.diffusion.grid_steps=10"],
              note="DiT-XL/2 on the digits resized to 32x32 (one channel): 256 tokens per image, as on ImageNet "
                   "256 latents (32x32x4), which are not on the GPU machine. With dit_pixel's EMA."),
        run50("run50_llama", "50-step bf16 run (llama); trainer's tokens/s and MFU; peak memory vs planner", 30,
              ["model=llama_350m", "norm=dyt", "data=text_pydoc", "data.seq_len=2048", "trainer.batch_size=8"],
              needs=(), note="LLaMA-350M, not 1B: the 1B run's final checkpoint alone would write 18 GB."),
        Step("lm_eval", "lm-eval on GPU: a 20-step llama_tiny run, then eval.py on a local task", 35,
             [[PY, "train.py", "model=llama_tiny", "norm=dyt", "data=text_pydoc", "trainer.device=cuda",
               "trainer.precision=bf16", "trainer.max_steps=20", "trainer.eval_every=20", "trainer.ckpt_every=20",
               "logger=none", "trainer.progress=off", f"hydra.run.dir={lm_run}"],
              [PY, "eval.py", str(lm_run), "--tasks", LM_TASK, "--include-path", str(lm_tasks), "--batch-size", "16"]],
             needs=("hydra", "omegaconf", "lm_eval", "datasets"), parse=parse_lm_eval,
             prepare=functools.partial(write_local_task, lm_tasks),
             note="eval.py scores on the run's device and precision (trainer.device=cuda, bf16), batched."),
        Step("llama1b_parallel", "LLaMA-1B tokens/s, MFU, peak memory: DDP vs single-GPU FSDP (RMSNorm vs DyT)", 50,
             [[PY, "scripts/gpu_measure.py", "parallel", "model=llama_1b", "data=text_pydoc", "data.seq_len=2048",
               "trainer.batch_size=4", "trainer.precision=bf16", "--strategies", "ddp", "fsdp",
               "--norms", "rmsnorm", "dyt", "--steps", "6"]],
             needs=("hydra", "omegaconf"), parse=parse_measure,
             note="At world size 1 the trainer trains the plain module (dyt/parallel.py wrap_model), under torchrun "
                  "--nproc_per_node 1 too; DDP and FSDP2 are measured here through wrap_model with a one-rank "
                  "NCCL group that it treats as distributed (scripts/gpu_measure.py parallel), eager."),
        Step("llama1b_compile", "LLaMA-1B tokens/s and MFU: RMSNorm vs DyT, eager vs torch.compile", 140,
             [[PY, "scripts/bench/models.py", "--device", "cuda", *llama, "--steps", "10",
               "--modes", "eager", "compile", "--no-write"]],
             needs=("hydra", "omegaconf", "timm"), parse=parse_models(2048),
             note="scripts/bench/models.py: the plain module (what one GPU trains), bf16 autocast, the two norms' "
                  "steps alternating; the embedded corpus' byte vocabulary (320), so the head is small."),
    ]


# --- running them -----------------------------------------------------------------------------------------------
def missing_imports(modules) -> dict[str, str]:
    """{module: why} for each module that does not import; one line per missing one."""
    missing = {}
    for name in dict.fromkeys(modules):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure to import counts
            missing[name] = f"{type(e).__name__}: {e}".splitlines()[0]
            print(f"[gpu_check] missing import {name} ({missing[name]})", flush=True)
    return missing


def run_command(cmd: list[str], log, timeout: float) -> Optional[int]:
    """Exit code of cmd, or None past `timeout` seconds (its whole process group is killed: compile workers too)."""
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        code = proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        code = None
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a finished command would hold GPU memory
    except ProcessLookupError:
        pass
    proc.wait()
    return code


def run_step(step: Step, logs: Path) -> Outcome:
    start = time.monotonic()
    path = logs / f"{step.name}.log"
    status, why = "passed", ""
    with path.open("w") as log:
        try:
            if step.prepare is not None:
                step.prepare()
            for cmd in step.commands:
                log.write(f"$ {shlex.join(cmd)}\n")
                log.flush()
                code = run_command(cmd, log, step.budget_s - (time.monotonic() - start))
                if code is None:
                    status, why = "timeout", f"stopped at its {step.budget_s} s budget"
                    break
                if code != 0:
                    status, why = "failed", f"exit code {code} of `{shlex.join(cmd[1:3])} ...`"
                    break
        except Exception as e:  # noqa: BLE001 - a step's own failure never stops the check
            status, why = "failed", f"{type(e).__name__}: {e}"
    text = path.read_text(errors="replace")
    parsed = Parsed()
    if step.parse is not None:  # a failed or stopped step's numbers so far are kept too
        try:
            parsed = step.parse(text)
        except Exception as e:  # noqa: BLE001
            parsed = Parsed(problem=f"its log could not be read: {type(e).__name__}: {e}")
    if status == "passed" and parsed.problem:
        status, why = "failed", parsed.problem
    return Outcome(step, status, time.monotonic() - start, why, parsed,
                   "\n".join(text.splitlines()[-LOG_TAIL:]))


def run_steps(chosen: list[Step], logs: Path, missing: dict[str, str]) -> list[Outcome]:
    logs.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for step in chosen:
        lacking = [m for m in step.needs if m in missing]
        if lacking:
            out = Outcome(step, "skipped", why=f"cannot import {', '.join(lacking)}")
        else:
            out = run_step(step, logs)
        print(f"[gpu_check] {step.name}: {out.status} in {out.seconds:.0f} s"
              f"{' - ' + out.why if out.why else ''}{' | ' + out.parsed.summary if out.parsed.summary else ''}",
              flush=True)
        outcomes.append(out)
    return outcomes


# --- the report -------------------------------------------------------------------------------------------------
def device_line() -> Optional[str]:
    """GPU, memory, driver; torch, CUDA, triton, Python. None without a CUDA device."""
    import torch
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = "unknown"
    return (f"{props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, driver {driver}; "
            f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton_version}; "
            f"Python {platform.python_version()}")


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def report(outcomes: list[Outcome], device: str, missing: dict[str, str], total_s: float, command: str) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# GPU check", "",
             f"Written by `{command}` (scripts/gpu_check.py) on {when}: {len(outcomes)} steps in {total_s:.0f} s "
             f"(the budgets add up to {sum(o.step.budget_s for o in outcomes)} s; the issue's limit for the whole "
             f"check is {LIMIT_S} s on one H100). `bash scripts/gpu_check.sh --dry-run` lists each step's commands.",
             "", f"Device: {device}.", "",
             "Imports missing: " + ("; ".join(f"{k} ({v})" for k, v in missing.items()) or "none") + ".", "",
             "| step | checks | status | s | key numbers |", "|---|---|---|---:|---|"]
    for o in outcomes:
        status = o.status + (f": {o.why}" if o.why else "")
        lines.append(f"| {o.step.name} | {_cell(o.step.checks)} | {_cell(status)} | {o.seconds:.0f} | "
                     f"{_cell(o.parsed.summary)} |")
    rows = [(o.step.name, r) for o in outcomes for r in o.parsed.records]
    rates = [(n, r) for n, r in rows if r.get("rate")]
    if rates:
        lines += ["", "## Throughput", "", "| step | run | rate | MFU | ms / step |", "|---|---|---:|---:|---:|"]
        for n, r in rates:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else ""
            ms = f"{r['ms_per_step']:.1f}" if r.get("ms_per_step") else ""
            lines.append(f"| {n} | {r['what']} | {r['rate']:,.0f} {r['unit']}/s | {mfu} | {ms} |")
    peaks = [(n, r) for n, r in rows if r.get("peak_gib")]
    if peaks:
        lines += ["", "## Peak memory vs the planner", "",
                  "Measured: `torch.cuda.max_memory_allocated()` over the whole run (training, evaluation, "
                  "checkpoint). Planner: `dyt.plan.plan(cfg)`'s total for the same config on one GPU, in the row "
                  "named (strategy / activation checkpointing); `states only` where the planner has no activation "
                  "model for the family.", "",
                  "| step | run | measured GiB | planner GiB | row | planner / measured |", "|---|---|---:|---:|---|---:|"]
        lines += [f"| {n} | {r['what']} | {r['peak_gib']:.2f} | {r['plan_gib']:.2f} | {r['plan_row']}"
                  f"{' (states only)' if r.get('plan_states_only') else ''} | {r['plan_gib'] / r['peak_gib']:.2f} |"
                  for n, r in peaks]
    for o in outcomes:
        if o.parsed.table:
            lines += ["", f"## {o.step.name}: {o.step.checks}", "", o.parsed.table]
    notes = [o for o in outcomes if o.step.note]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {o.step.name}: {o.step.note}" for o in notes]
    lines += ["", "## Logs (last lines)", ""]
    for o in outcomes:
        if o.status != "skipped":
            lines += [f"<details><summary>{o.step.name}: {o.status}</summary>", "", "```", o.log_tail, "```", "",
                      "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def scratch() -> Path:
    """/dev/shm when it has room for the runs' final checkpoints (weights, AdamW state, EMA: ~18 GB, 10.8 GB of
    them DiT-XL/2's): memory is written faster than a disk, and the checkpoints count in the steps' budgets. Else
    the temp folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 32 * 2**30:
        return shm
    return Path(tempfile.gettempdir())


def dry_run(chosen: list[Step]) -> None:
    total = sum(s.budget_s for s in chosen)
    print(f"gpu_check: {len(chosen)} steps, budgets {total} s in all (+ {OVERHEAD_S} s for the import check and the "
          f"report; the limit is {LIMIT_S} s on one H100)")
    for s in chosen:
        print(f"\n{s.name} ({s.budget_s} s): {s.checks}" + (f"\n  needs: {', '.join(s.needs)}" if s.needs else ""))
        if s.prepare is not None:
            p = s.prepare
            print(f"  first: {p.func.__name__}({', '.join(map(str, p.args))}): {p.func.__doc__.split(':')[0]}")
        for cmd in s.commands:
            print(f"  $ {shlex.join(cmd)}")
        if s.note:
            print(f"  note: {s.note}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="list each step and its commands; run nothing")
    ap.add_argument("--only", action="append", metavar="STEP", help="run this step only (repeatable)")
    ap.add_argument("--out", type=Path, default=DOC, help=f"the report (default {DOC.relative_to(ROOT)})")
    ap.add_argument("--work", type=Path, default=scratch() / "dyt_gpu_check",
                    help="scratch folder for runs and logs (emptied first; default in /dev/shm when it has room)")
    args = ap.parse_args(argv)
    every = steps(args.work)
    unknown = sorted(set(args.only or []) - {s.name for s in every})
    if unknown:
        ap.error(f"unknown step(s) {', '.join(unknown)}; choose from: {', '.join(s.name for s in every)}")
    chosen = [s for s in every if not args.only or s.name in args.only]
    if args.dry_run:
        dry_run(chosen)
        return 0
    start = time.monotonic()
    missing = missing_imports(["torch"] + [m for s in chosen for m in s.needs])
    device = device_line()
    if device is None:
        print("[gpu_check] no CUDA device: nothing to check (--dry-run lists the steps); "
              f"{args.out} is left as it is", file=sys.stderr)
        return 1
    print(f"[gpu_check] {device}", flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    outcomes = run_steps(chosen, args.work / "logs", missing)
    command = "bash scripts/gpu_check.sh" + "".join(f" --only {n}" for n in args.only or [])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(outcomes, device, missing, time.monotonic() - start, command))
    print(f"[gpu_check] wrote {args.out}: " + ", ".join(
        f"{n} {st}" for st in ("passed", "failed", "timeout", "skipped")
        if (n := sum(o.status == st for o in outcomes))), flush=True)
    return 0 if all(o.status == "passed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
