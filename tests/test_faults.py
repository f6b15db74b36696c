"""Fault injection on the run directory: what a kill, a damaged disk, a full disk, a second process or a changed
config does to a run's records. Every case ends in a run equal to the uninterrupted one, or in one clear line;
nothing readable is dropped and a damaged file is kept aside, never overwritten."""
import errno
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dyt.checkpoint.single_file
import dyt.files
import dyt.run
from conftest import ROOT, TINY, compose
from dyt.checkpoint import CorruptCheckpoint, load_latest
from dyt.errors import ConfigError
from dyt.logging import read_jsonl, scan_jsonl
from dyt.rundir import ConfigChanged, RunDirInUse, RunLock, check_config_change, list_checkpoints, read_summary
from dyt.run import train
from dyt.trainer import Trainer

# Checkpoints at 3, 6, 9, 12 (all kept): a damaged newest one has older ones to fall back to.
ARGS = [*TINY, "trainer.ckpt_every=3", "trainer.keep_checkpoints=4"]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run: its directory and summary."""
    d = tmp_path_factory.mktemp("full") / "run"
    return d, train(compose(ARGS), d)


def cut(full, dest: Path, last: int) -> Path:
    """The full run as a kill after its step-`last` checkpoint leaves it (later checkpoints and summary gone)."""
    shutil.copytree(full[0], dest)
    for p in list_checkpoints(dest / "checkpoints"):
        if int(p.stem[5:]) > last:
            p.unlink()
            p.with_name(p.name + ".sha256").unlink(missing_ok=True)
    (dest / "summary.json").unlink()
    return dest


def assert_equal_to_full(s, full, metrics_path):
    assert s["status"] == "completed" and s["step"] == 12
    assert s["train/loss"] == full[1]["train/loss"] and s["val/loss"] == full[1]["val/loss"]
    events = read_jsonl(metrics_path)
    assert [(e["step"], e["split"]) for e in events] == [(e["step"], e["split"]) for e in read_jsonl(full[0] / "metrics.jsonl")]
    assert all(json.loads(line) for line in metrics_path.read_text().splitlines())  # the file itself is clean again


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[dyt] warning:")]


def tensor_offset(path: Path, t: torch.Tensor) -> int:
    """Where tensor `t`'s bytes lie in checkpoint `path` (tensors are stored uncompressed)."""
    data = path.read_bytes()
    off = data.find(t.contiguous().numpy().tobytes())
    assert off > 0 and data.count(t.contiguous().numpy().tobytes()) == 1
    return off


# --- checkpoints ------------------------------------------------------------------------------------------
def flip_middle_byte(path: Path) -> None:
    """One flipped bit in the middle of the largest model weight: the file still unpickles (torch does not check
    the zip CRCs), the weight becomes ~1e36 and the run diverges two steps later unless the checksum catches it."""
    state = torch.load(path, weights_only=True)
    name, w = max(state["model"].items(), key=lambda kv: kv[1].numel())
    data = bytearray(path.read_bytes())
    data[tensor_offset(path, w) + (w.numel() // 2) * 4 + 3] ^= 0x40  # the exponent's high bits of one float32
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["model"][name].abs().max() > 1e30  # still loads, silently wrong


DAMAGE = {
    "flipped_byte": flip_middle_byte,
    "zero_length": lambda p: p.write_bytes(b""),
    "zero_length_legacy": lambda p: (p.write_bytes(b""), p.with_name(p.name + ".sha256").unlink(missing_ok=True)),
    "half_written": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "damaged_checksum_file": lambda p: p.with_name(p.name + ".sha256").write_bytes(b"\xff\x00 step"),
    # this version writes the checksum before the checkpoint: a missing one is damage (was: loaded unchecked, NaN)
    "flipped_byte_checksum_lost": lambda p: (flip_middle_byte(p), p.with_name(p.name + ".sha256").unlink()),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, full, damage, capsys):
    d = cut(full, tmp_path / "r", last=9)
    DAMAGE[damage](d / "checkpoints/step_00000009.pt")
    # a kill while writing: a leftover temporary file (and the checksum's), which the next start removes
    (d / "checkpoints/step_00000015.pt.tmp").write_bytes((full[0] / "checkpoints/step_00000012.pt").read_bytes()[:5000])
    (d / "checkpoints/step_00000015.pt.sha256.tmp").write_bytes(b"0123")
    s = train(compose(ARGS), d)
    err = capsys.readouterr().err
    [line] = warnings(err)
    assert line.startswith(f"[dyt] warning: checkpoint {d}/checkpoints/step_00000009.pt is corrupt (")
    assert line.endswith(f"resuming from {d}/checkpoints/step_00000006.pt instead")
    assert "Traceback" not in err
    assert_equal_to_full(s, full, d / "metrics.jsonl")
    names = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    assert "step_00000009.pt.corrupt" in names  # kept aside, never picked again
    assert [p.name for p in list_checkpoints(d / "checkpoints")][-1] == "step_00000012.pt"


def test_no_intact_checkpoint_is_one_line_naming_the_file(tmp_path, full):
    d = cut(full, tmp_path / "r", last=12)
    for p in list_checkpoints(d / "checkpoints"):
        p.write_bytes(b"")  # the old code formatted this error with str(e).splitlines()[0]: IndexError
    with pytest.raises(CorruptCheckpoint, match=rf"^checkpoint {d}/checkpoints/step_00000012.pt is corrupt or "
                                                rf"unreadable \(sha256 mismatch.* \(and 3 older checkpoint\(s\): none is "
                                                rf"intact\)\); delete it or set trainer.resume=never$"):
        train(compose(ARGS), d)
    assert len(list_checkpoints(d / "checkpoints")) == 4  # nothing moved: the next attempt says the same


def test_zero_length_checkpoint_without_checksum_is_one_line(tmp_path):
    d = tmp_path / "r"
    train(compose(TINY), d)
    (d / "checkpoints/step_00000012.pt").write_bytes(b"")
    (d / "checkpoints/step_00000012.pt.sha256").unlink(missing_ok=True)
    (d / "summary.json").unlink()
    with pytest.raises(ConfigError, match=r"checkpoint .*step_00000012.pt is corrupt or unreadable \(EOFError"):
        train(compose(TINY), d)


def test_a_divergence_right_after_a_resume_names_the_checkpoint(tmp_path, full):
    """A checkpoint damaged before its checksum was computed (NaN weights, intact file) shows as a divergence: the
    reason says which checkpoint this process resumed from and how many steps before."""
    d = cut(full, tmp_path / "r", last=9)
    path = d / "checkpoints/step_00000009.pt"
    state = torch.load(path, weights_only=True)
    name = max(state["model"], key=lambda k: state["model"][k].numel())
    state["model"][name].fill_(float("nan"))
    dyt.checkpoint.single_file.write_checkpoint_file(state, path)
    s = train(compose(ARGS), d)
    assert s["status"] == "diverged"
    assert s["reason"].endswith(f"at step 10, 1 step(s) after this process resumed from {path}"), s["reason"]


def test_explicit_resume_of_a_damaged_file_is_an_error(tmp_path, full):
    d = cut(full, tmp_path / "r", last=9)
    flip_middle_byte(d / "checkpoints/step_00000009.pt")
    with pytest.raises(CorruptCheckpoint, match=r"step_00000009.pt is corrupt or unreadable \(sha256 mismatch"):
        train(compose([*ARGS, f"trainer.resume={d}/checkpoints/step_00000009.pt"]), d)


def test_older_checkpoints_without_checksums_load_with_a_warning(tmp_path, full, capsys):
    """Checkpoints of the format before checksums were written first (no "format" entry) and without a checksum
    file: loaded unverified, saying so."""
    d = cut(full, tmp_path / "r", last=6)
    for p in (d / "checkpoints").glob("*.pt"):
        state = torch.load(p, weights_only=True)
        del state["format"]
        torch.save(state, p)
    for p in (d / "checkpoints").glob("*.sha256"):
        p.unlink()
    s = train(compose(ARGS), d)
    assert warnings(capsys.readouterr().err) == [f"[dyt] warning: checkpoint {d}/checkpoints/step_00000006.pt has no "
                                                 "checksum (written by an older version): loaded unverified"]
    assert_equal_to_full(s, full, d / "metrics.jsonl")


def test_checksum_file_is_sha256sum_format(full):
    p = full[0] / "checkpoints/step_00000012.pt"
    out = subprocess.run(["sha256sum", "-c", p.name + ".sha256"], cwd=p.parent, capture_output=True, text=True)
    assert out.returncode == 0 and "step_00000012.pt: OK" in out.stdout


# --- metrics.jsonl and summary.json -----------------------------------------------------------------------
def test_damaged_metrics_are_recovered_and_kept_aside(tmp_path, full, capsys):
    d = cut(full, tmp_path / "r", last=6)
    lines = (d / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    assert [json.loads(x)["step"] for x in lines] == [3, 6, 6, 9, 12, 12]
    # line 1 cut in the middle and the next event appended to it; a line of garbage with a 0xff byte
    damaged = lines[0][:40] + lines[1] + b"\xff\xfe garbage\n" + b"".join(lines[2:])
    (d / "metrics.jsonl").write_bytes(damaged)
    assert read_jsonl(d / "metrics.jsonl") == [json.loads(x) for x in lines[1:]]  # every readable event
    s = train(compose(ARGS), d)
    assert warnings(capsys.readouterr().err) == [
        f"[dyt] warning: {d}/metrics.jsonl has 2 damaged line(s); its 5 readable events are kept and the damaged "
        f"file is kept as metrics.jsonl.corrupt",
        f"[dyt] warning: {d}/metrics.jsonl lacked 1 event(s) of the checkpoint at step 6 (step 3); restored from "
        f"the checkpoint"]
    assert (d / "metrics.jsonl.corrupt").read_bytes() == damaged
    events, before = read_jsonl(d / "metrics.jsonl"), read_jsonl(full[0] / "metrics.jsonl")
    assert events[:3] == before[:3]  # up to the checkpoint (step 6): the cut step-3 event is back from it
    assert [(e["step"], e["split"]) for e in events] == [(e["step"], e["split"]) for e in before]
    assert s["status"] == "completed" and s["val/loss"] == full[1]["val/loss"]

    # damaged again: the first damaged copy is never overwritten
    (d / "summary.json").unlink()
    with (d / "metrics.jsonl").open("ab") as f:
        f.write(b'{"step": 3, "split": \xff\n{"step": 7}\n')
    train(compose(ARGS), d)
    assert (d / "metrics.jsonl.corrupt").read_bytes() == damaged
    assert (d / "metrics.jsonl.corrupt.1").exists()


@pytest.mark.parametrize("loss", ["cut_last_line", "zero_length", "deleted"])
def test_records_up_to_the_checkpoint_are_never_lost(tmp_path, full, loss, capsys):
    """metrics.jsonl is synced before every checkpoint and its events go with it: whatever happened to the file
    afterwards (its last line cut, emptied, deleted), a resume restores every event up to the checkpoint, saying so."""
    d = cut(full, tmp_path / "r", last=9)
    path = d / "metrics.jsonl"
    data = path.read_bytes()
    if loss == "cut_last_line":  # the step-9 event cut short: looks like a killed append, but it was checkpointed
        path.write_bytes(data[: data.rindex(b'{"step": 9') + 20])
    elif loss == "zero_length":
        path.write_bytes(b"")
    else:
        path.unlink()
    s = train(compose(ARGS), d)
    [line] = [w for w in warnings(capsys.readouterr().err) if "restored from the checkpoint" in w]
    assert line.startswith(f"[dyt] warning: {path} lacked ")
    assert_equal_to_full(s, full, path)


@pytest.mark.parametrize("summary,message", [
    ({"status": "completed", "step": 6}, "says completed at step 6, but its newest checkpoint is at step 12"),
    ({"status": "diverged", "step": 99}, "says diverged at step 99, but metrics.jsonl has no event at step 99"),
])
def test_a_summary_the_records_contradict_is_not_trusted(tmp_path, full, summary, message, capsys):
    """summary.json alone never makes a run finished: a 'completed' at another step than its newest checkpoint, or
    a 'diverged' at a step it never logged, is said and the run resumes (was: skipped forever at that step)."""
    d = tmp_path / "r"
    shutil.copytree(full[0], d)
    (d / "summary.json").write_text(json.dumps(summary))
    s = train(compose(ARGS), d)
    assert [w for w in warnings(capsys.readouterr().err) if "not trusted" in w] == [
        f"[dyt] warning: {d}/summary.json {message}: not trusted; resuming the run"]
    assert s["status"] == "completed" and s["step"] == 12 and s["val/loss"] == full[1]["val/loss"]


def test_a_completed_run_trains_on_to_a_larger_max_steps(tmp_path, full, capsys):
    d = tmp_path / "r"
    shutil.copytree(full[0], d)
    s = train(compose([*ARGS, "trainer.max_steps=15"]), d)
    assert f"[dyt] {d} completed at step 12; training on to trainer.max_steps=15" in capsys.readouterr().out
    assert s["status"] == "completed" and s["step"] == 15


def test_cut_last_line_is_dropped_quietly(tmp_path):
    """What a killed append leaves (no newline, the start of an event) is normal, not damage."""
    events, damaged = scan_jsonl(b'{"step": 3, "split": "train"}\n{"step": 6, "spl')
    assert events == [{"step": 3, "split": "train"}] and damaged == 0
    events, damaged = scan_jsonl(b'{"step": 3, "split": "train"}\n[1, 2]\n\xff')
    assert events == [{"step": 3, "split": "train"}] and damaged == 2


SUMMARIES = {"truncated": lambda s: s[:25], "not_an_object": lambda s: b'["completed"]\n', "not_utf8": lambda s: b"\xff" + s}


@pytest.mark.parametrize("damage", SUMMARIES)
def test_damaged_summary_means_unfinished_and_is_kept_aside(tmp_path, full, damage, capsys):
    d = cut(full, tmp_path / "r", last=6)
    bad = SUMMARIES[damage]((full[0] / "summary.json").read_bytes())
    (d / "summary.json").write_bytes(bad)
    assert read_summary(d) is None and read_summary(tmp_path / "absent") is None
    assert read_summary(full[0])["status"] == "completed"
    t = Trainer(compose(ARGS), d)  # what dyt.run.train does once the summary says "not finished"
    s = t.fit()
    t.close()
    [line] = warnings(capsys.readouterr().err)
    assert line.startswith(f"[dyt] warning: {d}/summary.json is corrupt (") and "kept as summary.json.corrupt" in line
    assert (d / "summary.json.corrupt").read_bytes() == bad
    assert read_summary(d) == json.loads((d / "summary.json").read_text()) and read_summary(d)["status"] == "completed"
    assert_equal_to_full(s, full, d / "metrics.jsonl")


@pytest.mark.skipif("read_summary" not in inspect.getsource(dyt.run), reason="dyt.run does not use read_summary yet")
def test_damaged_summary_end_to_end(tmp_path, full):
    d = cut(full, tmp_path / "r", last=6)
    (d / "summary.json").write_bytes(b'{"status": "compl')
    assert_equal_to_full(train(compose(ARGS), d), full, d / "metrics.jsonl")


# --- disk full --------------------------------------------------------------------------------------------
def fill_disk_at_checkpoint(monkeypatch, n: int, after_bytes: int = 100_000):
    """The n-th checkpoint write (1-based) fails with ENOSPC after `after_bytes`, as a full disk does."""
    count = {"n": 0}
    writer = dyt.checkpoint.single_file._HashingWriter
    real_init, real_write = writer.__init__, writer.write

    def init(self, f):
        real_init(self, f)
        count["n"] += 1
        self.budget = after_bytes if count["n"] == n else float("inf")

    def write(self, data):
        if self.budget < len(data):
            real_write(self, bytes(data)[: int(self.budget)])  # a partial file on disk, as a full disk leaves
            self.error = ENOSPC
            raise ENOSPC
        self.budget -= len(data)
        return real_write(self, data)

    monkeypatch.setattr(writer, "__init__", init)
    monkeypatch.setattr(writer, "write", write)


def test_disk_full_during_a_checkpoint(tmp_path, full, monkeypatch, capsys):
    d = tmp_path / "r"
    with monkeypatch.context() as m:
        fill_disk_at_checkpoint(m, n=3)  # step 9
        with pytest.raises(ConfigError) as e:
            train(compose(ARGS), d)
    assert str(e.value) == (f"could not write checkpoint {d}/checkpoints/step_00000009.pt: [Errno 28] No space left on "
                            f"device; free space and run the same command to resume")
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == [
        "step_00000003.pt", "step_00000003.pt.sha256", "step_00000006.pt", "step_00000006.pt.sha256"]  # no partial file
    failed = read_summary(d)
    assert failed["status"] == "failed" and failed["step"] == 9 and "No space left on device" in failed["reason"]
    assert "Traceback" not in capsys.readouterr().err
    # space freed: the same command resumes from step 6
    s = train(compose(ARGS), d)
    assert "resumed from" in capsys.readouterr().out
    assert_equal_to_full(s, full, d / "metrics.jsonl")


class _FullDiskFile:
    """A file whose writes fail with ENOSPC after a few bytes (what summary.json meets on a full disk)."""

    def __init__(self, path, mode):
        self.f = open(path, mode)

    def write(self, text):
        self.f.write(text[:10])
        raise ENOSPC

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_for_the_checkpoint_and_the_summary_is_one_line_each(tmp_path, monkeypatch, capsys):
    d = tmp_path / "r"
    real = dyt.files.write_text_atomic

    def atomic(path, text):  # the summary meets the full disk (config.yaml and metrics were written at start)
        if path.name != "summary.json":
            return real(path, text)
        dyt.files.open = _FullDiskFile  # the module's open, which write_text_atomic uses
        try:
            return real(path, text)
        finally:
            del dyt.files.open

    with monkeypatch.context() as m:
        fill_disk_at_checkpoint(m, n=2)
        m.setattr(dyt.files, "write_text_atomic", atomic)
        with pytest.raises(ConfigError, match=r"could not write checkpoint .*step_00000006.pt: \[Errno 28\] No space"):
            train(compose(ARGS), d)
    err = capsys.readouterr().err
    assert err.strip() == f"[dyt] error: could not write {d}/summary.json (status 'failed'): [Errno 28] No space left on device"
    assert not (d / "summary.json").exists() and not (d / "summary.json.tmp").exists()


def test_write_text_atomic_leaves_no_temporary_file(tmp_path):
    dyt.files.open = _FullDiskFile
    try:
        with pytest.raises(OSError, match="No space left"):
            dyt.files.write_text_atomic(tmp_path / "summary.json", "{}")
    finally:
        del dyt.files.open
    assert list(tmp_path.iterdir()) == []


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_on_a_real_small_filesystem(tmp_path, full, capsys):
    """A 640 KiB tmpfs holds one tiny checkpoint (~370 KB) but not a second: the real ENOSPC path."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "640k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        d = disk / "r"
        args = [*TINY, "trainer.keep_checkpoints=1"]  # checkpoints at 6 and 12; the same math as the full run
        with pytest.raises(ConfigError, match=rf"^could not write checkpoint {d}/checkpoints/step_00000012.pt: \[Errno 28\] "
                                              rf"No space left on device; free space and run the same command to resume$"):
            train(compose(args), d)
        assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["step_00000006.pt", "step_00000006.pt.sha256"]
        assert read_summary(d)["status"] == "failed"
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)  # space freed
        s = train(compose(args), d)
        assert s["status"] == "completed" and s["val/loss"] == full[1]["val/loss"]
        assert s["train/loss"] == full[1]["train/loss"]
        assert "Traceback" not in capsys.readouterr().err
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# --- two processes on one run directory -------------------------------------------------------------------
HOLD = "import sys, time; from dyt.rundir import RunLock; RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)"


def hold_lock(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RANK", None)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_sweep_whose_point_another_process_holds_is_not_done(tmp_path):
    """Two sweeps on one folder: each refuses the point the other holds; the refusing one must not exit 0 as if
    the sweep were done (was: both exited 0)."""
    from conftest import run_script
    holder = hold_lock(tmp_path / "m/dyt")
    try:
        out = run_script(["python", str(ROOT / "train.py"), "-m", "norm=layernorm,dyt", *TINY,
                          f"hydra.sweep.dir={tmp_path}/m", "hydra.sweep.subdir=${norm.name}"], cwd=tmp_path,
                         check=False)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 1, out.stderr[-2000:]
    assert "1 in use by another process" in out.stderr
    assert "[dyt]   in use: dyt: another process held it; re-run this sweep when it is done" in out.stderr
    assert read_summary(tmp_path / "m/layernorm")["status"] == "completed"


def test_second_process_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
    d = tmp_path / "r"
    holder = hold_lock(d)
    try:
        with pytest.raises(RunDirInUse, match=rf"^run directory {d} is in use by pid {holder.pid} on "
                                              rf"{socket.gethostname()}; wait for it or use another hydra.run.dir$"):
            RunLock(d).acquire()
        # a third, real process is refused the same way
        out = subprocess.run([sys.executable, "-c", HOLD, str(d)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert out.returncode != 0 and f"is in use by pid {holder.pid}" in out.stderr
    finally:
        holder.kill()  # SIGKILL: no clean-up at all; the OS drops the flock
        holder.wait()
    with RunLock(d) as lock:
        assert (d / ".lock").read_text().split() == [str(os.getpid()), socket.gethostname()]
        assert lock.enabled
    holder = hold_lock(d)  # released on exit of the block: another process takes it at once
    holder.kill()
    holder.wait()


def test_lock_only_on_rank_zero_and_no_empty_directory_left(tmp_path, monkeypatch):
    with RunLock(tmp_path / "fresh"):
        assert (tmp_path / "fresh/.lock").exists()
    assert not (tmp_path / "fresh").exists()  # nothing recorded: no empty run directory left behind
    monkeypatch.setenv("RANK", "1")
    with RunLock(tmp_path / "r") as lock:
        assert not lock.enabled and not (tmp_path / "r").exists()


# Runs with data workers, forked on request from one process that imported torch once (cheap to repeat): each run
# takes the lock, forks its DataLoader workers (as a real run), prints "<pid> <worker pids>", then idles.
RUNS_WITH_WORKERS = """import os, sys, time
from torch.utils.data import DataLoader
from dyt.rundir import RunLock
for line in sys.stdin:
    if os.fork() == 0:
        RunLock(sys.argv[1]).acquire()
        it = iter(DataLoader(range(100), batch_size=1, num_workers=2))
        next(it)
        print(os.getpid(), *(w.pid for w in it._workers), flush=True)
        time.sleep(120)
        os._exit(0)
"""


def _open_files(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed meanwhile
            pass
    return out


def test_killed_runs_data_workers_never_keep_its_lock(tmp_path):
    """SIGKILL a run whose data workers live on (they notice their parent's death only after ~5 s) and take its
    directory at once, 20 times: every time the lock is free, and the workers never had the lock file open. With a
    lock the workers inherit (a plain flock), the re-run was refused naming the dead pid."""
    d = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    launcher = subprocess.Popen([sys.executable, "-c", RUNS_WITH_WORKERS, str(d)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)
    leftovers = []
    try:
        for attempt in range(20):
            launcher.stdin.write("run\n")
            launcher.stdin.flush()
            run, *workers = [int(p) for p in launcher.stdout.readline().split()]
            leftovers += workers
            assert len(workers) == 2, f"attempt {attempt}: the run did not start its workers"
            lock_file = str((d / ".lock").resolve())
            for pid in workers:  # the root cause, checked directly: no worker has the lock's file open
                assert lock_file not in _open_files(pid), f"attempt {attempt}: data worker {pid} holds the run's lock"
            os.kill(run, signal.SIGKILL)
            while os.path.exists(f"/proc/{run}") and open(f"/proc/{run}/stat").read().split()[2] != "Z":
                time.sleep(0.001)  # dead (a zombie until its parent reaps it: it holds nothing)
            # The re-run, at once. The kernel may list a just-killed owner's lock for a few ms more; workers exit only
            # when they notice their parent's death (torch polls every 5 s), so a 1 s grace cannot hide them.
            with RunLock(d, wait_orphans=1.0):
                pass
    finally:
        launcher.kill()
        launcher.wait()
        for pid in leftovers:  # the workers may still be alive here; they must not outlive the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_dead_owners_leftover_children_are_named_as_such(tmp_path):
    """A lock kept by children of a dead owner (a fork done outside Python's hooks) is waited for, then reported
    as theirs: the message never calls the dead process the holder."""
    d = tmp_path / "r"
    keep = ("import fcntl, os, sys, time; d = sys.argv[1]; os.makedirs(d, exist_ok=True); "
            "fd = os.open(d + '/.lock', os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.write(fd, b'999999999 ' + os.uname().nodename.encode() + b'\\n'); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", keep, str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirInUse, match=rf"^run directory {d} is still locked by processes left behind by pid "
                                              rf"999999999, which is no longer running"):
            RunLock(d, wait_orphans=0.3).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(d, wait_orphans=0.3):  # once they are gone, the directory is taken over
        pass


@pytest.mark.skipif("RunLock" not in inspect.getsource(dyt.run), reason="dyt.run does not take the RunLock yet")
def test_train_refuses_a_directory_in_use(tmp_path):
    d = tmp_path / "r"
    holder = hold_lock(d)
    try:
        with pytest.raises(RunDirInUse, match=f"is in use by pid {holder.pid}"):
            train(compose(TINY), d)
        assert sorted(p.name for p in d.iterdir()) == [".lock"]  # nothing written into the other run's directory
    finally:
        holder.kill()
        holder.wait()


# --- resuming with another config -------------------------------------------------------------------------
@pytest.mark.parametrize("override,change", [
    ("optim.lr=0.001", "optim.lr: 0.004 -> 0.001"),
    ("trainer.batch_size=32", "trainer.batch_size: 64 -> 32"),
    ("seed=1", "seed: 0 -> 1"),
    ("norm.alpha_init=0.8", "norm.alpha_init: 0.5 -> 0.8"),
    ("+model.kwargs.drop_rate=0.1", "model.kwargs.drop_rate: <absent> -> 0.1"),  # same shapes, another model
])
def test_resume_with_a_changed_config_is_refused(tmp_path, full, override, change):
    d = cut(full, tmp_path / "r", last=6)
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    with pytest.raises(ConfigChanged, match=rf"^run directory {d} holds a run with another config \(.*"
                                            rf"{change.replace('.', '[.]')}.*\); resume it with its own settings, start "
                                            rf"it over with trainer.resume=never, or use another hydra.run.dir$"):
        train(compose([*ARGS, override]), d)
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before  # config.yaml & metrics untouched
    assert check_config_change(d, compose([*ARGS, override, "trainer.resume=never"])) == {}  # the way out


def test_resume_with_allowed_changes_records_them(tmp_path, full, capsys):
    d = cut(full, tmp_path / "r", last=6)
    s = train(compose([*ARGS, "trainer.max_steps=15", "trainer.progress=off", "data.num_workers=1"]), d)
    assert s["status"] == "completed" and s["step"] == 15
    assert (f"[dyt] resuming {d} at step 6 with changed settings: data.num_workers: 0 -> 1; trainer.max_steps: 12 -> 15; "
            f"trainer.progress: \"auto\" -> \"off\"") in capsys.readouterr().out
    [event] = [e for e in read_jsonl(d / "metrics.jsonl") if e["split"] == "config"]
    assert event == {"step": 6, "split": "config", "changed": {"data.num_workers": {"old": 0, "new": 1},
                                                               "trainer.max_steps": {"old": 12, "new": 15},
                                                               "trainer.progress": {"old": "auto", "new": "off"}}}
    assert "max_steps: 15" in (d / "config.yaml").read_text()  # written after the check passed


def test_config_check_scope(tmp_path, full):
    cfg = compose([*ARGS, "optim.lr=0.1"])
    assert check_config_change(tmp_path / "empty", cfg) == {}  # a fresh directory
    d = cut(full, tmp_path / "r", last=6)
    shutil.rmtree(d / "checkpoints")
    assert check_config_change(d, cfg) == {}  # a run that never checkpointed starts over
    # a field a code update added to the schema (absent from an older run's config.yaml) is not a change
    d = cut(full, tmp_path / "old", last=6)
    text = (d / "config.yaml").read_text()
    (d / "config.yaml").write_text(text.replace("  decay_1d: false\n", ""))
    assert check_config_change(d, compose(ARGS)) == {"optim.decay_1d": ("<absent>", False)}


def test_latest_checkpoint_api(tmp_path, full):
    d = cut(full, tmp_path / "r", last=12)
    state, path = load_latest(d / "checkpoints")
    assert path.name == "step_00000012.pt" and state["step"] == 12
    assert load_latest(tmp_path / "nothing") is None


# --- places that cannot be written: one line, before any work is lost -------------------------------------
def test_unwritable_places_are_one_line(tmp_path, full, monkeypatch, capsys):
    from conftest import run_script, script
    from dyt.files import fix_hint
    from dyt.rundir import RunLock
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = run_script(["python", str(ROOT / "train.py"), f"hydra.run.dir={blocker}/r"], cwd=tmp_path, check=False)
    assert out.returncode == 2 and out.stderr.strip() == (f"error: cannot write {blocker}/r: [Errno 20] Not a "
                                                          "directory; fix the cause and run the same command")
    # `checkpoints` a plain file: refused when the run starts, not at its first checkpoint
    d = tmp_path / "r"
    d.mkdir()
    (d / "checkpoints").write_text("")
    with pytest.raises(ConfigError, match=r"/r/checkpoints is a file, not the run's checkpoints folder"):
        train(compose(ARGS), d)
    # a read-only run directory (root ignores modes here, so the kernel's answer is simulated)
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro/.lock"))
    monkeypatch.setattr("dyt.rundir.os.open", refuse)
    with pytest.raises(ConfigError, match=r"cannot write into run directory .*/ro: \[Errno 13\] Permission denied; "
                                          r"make it writable \(or choose another hydra.run.dir\)"):
        RunLock(tmp_path / "ro").acquire()
    monkeypatch.undo()
    assert fix_hint(OSError(errno.EROFS, "Read-only file system")).startswith("make it writable")
    assert fix_hint(OSError(errno.ENOSPC, "No space left on device")).startswith("free space")
    # eval.py prints what it computed, then says it could not save it
    run = tmp_path / "done"
    shutil.copytree(full[0], run)
    (run / "eval.json").mkdir()  # cannot be replaced by a file, whoever runs this
    capsys.readouterr()
    assert script("eval.py").main([str(run)]) == 2
    captured = capsys.readouterr()
    assert "val/loss: " in captured.out and "val/top1: " in captured.out
    assert captured.err.startswith(f"error: could not save the metrics above to {run}/eval.json: [Errno 21]")
