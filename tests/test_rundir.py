"""The run directory's one owner: its layout (the file names users and tools rely on), the readers of its records,
the config check's extra allowed keys, and the floors below it (no module under them imports upwards)."""
import ast
import json
import re

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose
from dyt.rundir import (ConfigChanged, RunDir, check_config_change, list_checkpoints, read_config, read_eval,
                        read_summary)

NAMES = ("config.yaml", "metrics.jsonl", "summary.json", "eval.json", "lm_eval.json", "checkpoints")


def test_layout_is_the_user_facing_contract(tmp_path):
    rd = RunDir(tmp_path / "r")
    assert [p.name for p in (rd.config, rd.metrics, rd.summary, rd.eval, rd.lm_eval, rd.checkpoints_dir)] == list(NAMES)
    assert (rd.lock_file.name, rd.wandb_id.name, rd.samples.name, rd.log.name) == (".lock", "wandb_id", "samples",
                                                                                   "train.log")
    assert rd.checkpoint(12) == tmp_path / "r/checkpoints/step_00000012.pt"
    assert rd.checkpoint(12, sharded=True) == tmp_path / "r/checkpoints/step_00000012"


def test_checkpoints_are_listed_by_step_in_both_formats(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.checkpoints() == [] and not rd.is_run()
    rd.checkpoints_dir.mkdir()
    for name in ("step_00000010.pt", "step_00000009.pt", "step_00000009.pt.sha256", "step_00000003.pt.tmp",
                 "notes.txt"):
        (rd.checkpoints_dir / name).write_bytes(b"")
    for name in ("step_00000011", "step_00000012.tmp", "step_00000004.pt"):  # a DCP step; a DCP step being written;
        (rd.checkpoints_dir / name).mkdir()                                  # a directory with a file's name
    assert [p.name for p in rd.checkpoints()] == ["step_00000009.pt", "step_00000010.pt", "step_00000011"]
    assert list_checkpoints(rd.checkpoints_dir) == rd.checkpoints()
    assert rd.is_run()


def test_find_runs(tmp_path):
    for name in ("b", "a", "a/nested", "no_config"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "summary.json").write_text("{}")
        if name != "no_config":
            (tmp_path / name / "config.yaml").write_text("seed: 0\n")
    assert [rd.path.relative_to(tmp_path).as_posix() for rd in RunDir(tmp_path).find_runs()] == ["a/nested", "a", "b"]
    assert [rd.path for rd in RunDir(tmp_path / "b").find_runs()] == [tmp_path / "b"]


@pytest.mark.parametrize("content", [None, b"", b'{"val/fid": 3.', b"[1, 2]\n", b"\xff{}"])
def test_damaged_or_absent_records_read_as_nothing(tmp_path, content):
    rd = RunDir(tmp_path)
    for path in (rd.summary, rd.eval, rd.config):
        if content is not None:
            path.write_bytes(content)
    assert read_summary(tmp_path) is None
    assert read_eval(tmp_path) == {}  # eval.py merges it: a list here used to end in an AttributeError
    if content != b"":  # an empty config.yaml reads as an empty config
        assert read_config(tmp_path) is None


def test_records_read_back(tmp_path):
    rd = RunDir(tmp_path)
    rd.summary.write_text(json.dumps({"status": "completed", "step": 12}))
    rd.lm_eval.write_text(json.dumps({"lm_eval/avg": 0.5}))
    rd.config.write_text("seed: 3\nmodel:\n  name: vit_pico\n")
    assert read_summary(tmp_path) == {"status": "completed", "step": 12}
    assert read_eval(tmp_path, RunDir.LM_EVAL) == {"lm_eval/avg": 0.5}
    assert read_config(tmp_path) == {"seed": 3, "model": {"name": "vit_pico"}}


def test_config_check_takes_extra_allowed_keys(tmp_path):
    """A family adds the keys that may change on resume for its own settings (``allowed=``)."""
    rd = RunDir(tmp_path)
    rd.checkpoints_dir.mkdir(parents=True)
    (rd.checkpoint(6)).write_bytes(b"")  # a checkpoint: the run would resume
    rd.config.write_text(OmegaConf.to_yaml(compose(TINY), resolve=True))
    changed = compose([*TINY, "optim.lr=0.001", "trainer.max_steps=20"])
    with pytest.raises(ConfigChanged, match=r"optim.lr: 0.004 -> 0.001"):
        check_config_change(tmp_path, changed)
    assert check_config_change(tmp_path, changed, allowed=("optim.*",)) == {
        "optim.lr": (0.004, 0.001), "trainer.max_steps": (12, 20)}


# --- the floors under the run directory ----------------------------------------------------------------------
def _dyt_imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dyt":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dyt"}
    return found


def test_ground_floor_and_run_directory_import_nothing_above_them():
    assert _dyt_imports(ROOT / "dyt/files.py") == {"dyt.errors"}
    assert _dyt_imports(ROOT / "dyt/rundir.py") == {"dyt.errors", "dyt.files"}  # never dyt.checkpoint: no circle
    for path in (ROOT / "dyt/checkpoint").glob("*.py"):  # the checkpoint package: below the trainer, beside logging
        assert not {m for m in _dyt_imports(path) if m.startswith(("dyt.trainer", "dyt.run", "dyt.logging"))
                    and m != "dyt.rundir"}, path


def test_run_directory_file_names_are_spelled_in_one_module():
    spelled = re.compile("|".join(re.escape(f'"{n}"') for n in NAMES))
    sources = [*(ROOT / "dyt").rglob("*.py"), ROOT / "eval.py", ROOT / "train.py"]
    assert [str(p.relative_to(ROOT)) for p in sources if spelled.search(p.read_text())] == ["dyt/rundir.py"]
