"""Issue 9: every bad input ends in one clear line (a ConfigError naming the key or file and what is accepted),
before anything is trained; a few cases end to end through train.py (exit code, one `error:` line, no traceback)."""
import dataclasses
import typing

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from PIL import Image

from conftest import ROOT, compose, run_script
from dyt.errors import ConfigError
from dyt.run import train

LM = ["model=llama_tiny", "data=text_pydoc"]
TINY_VIT = ["model.kwargs.depth=1", "model.kwargs.embed_dim=16", "model.kwargs.num_heads=2"]

# (overrides, the expected message: exactly this text is in the one line)
CASES = [
    # trainer
    (["trainer.max_steps=0"], "trainer.max_steps=0: must be an integer in [1, 1e+09] or null"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5: must be an integer in [1, 1e+09] or null"),
    (["trainer.max_steps=null"], "trainer.max_steps=null and trainer.epochs=null: set one of them"),
    (["trainer.max_steps=null", "trainer.epochs=0"], "trainer.epochs=0: must be a finite number > 0 or null"),
    (["trainer.batch_size=0"], "trainer.batch_size=0: must be an integer >= 1"),
    (["trainer.batch_size=-8"], "trainer.batch_size=-8: must be an integer >= 1"),
    (["trainer.grad_accum=0"], "trainer.grad_accum=0: must be an integer >= 1"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0: must be an integer >= 1 or null"),
    (["trainer.eval_every=0"], "trainer.eval_every=0: must be an integer >= 1"),
    (["trainer.ckpt_every=0"], "trainer.ckpt_every=0: must be an integer >= 1"),
    (["trainer.log_every=0"], "trainer.log_every=0: must be an integer >= 1"),
    (["trainer.eval_every_epochs=0"], "trainer.eval_every_epochs=0: must be a finite number > 0 or null"),
    (["trainer.keep_checkpoints=0"], "trainer.keep_checkpoints=0: must be an integer >= 1"),
    (["trainer.ema_decay=1.0"], "trainer.ema_decay=1: must be a finite number in [0, 1) or null"),
    # optim
    (["optim.lr=-1e-3"], "optim.lr=-0.001: must be a finite number >= 0"),
    (["optim.lr=nan"], "optim.lr=nan: must be a finite number >= 0"),
    (["optim.lr=inf"], "optim.lr=inf: must be a finite number >= 0"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1: must be a finite number >= 0"),
    (["optim.betas=[0.9,1.0]"], "optim.betas=[0.9, 1]: must be a list of 2 numbers, each in [0, 1)"),
    (["optim.betas=[0.9]"], "optim.betas=[0.9]: must be a list of 2 numbers, each in [0, 1)"),
    (["optim.eps=0"], "optim.eps=0: must be a finite number > 0"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps=-1: must be an integer in [0, 1e+09]"),
    (["optim.warmup_epochs=-1"], "optim.warmup_epochs=-1: must be a finite number >= 0 or null"),
    (["optim.min_lr_ratio=1.5"], "optim.min_lr_ratio=1.5: must be a finite number in [0, 1]"),
    (["optim.clip_grad=0"], "optim.clip_grad=0: must be a finite number > 0 or null"),
    # norm, timm models
    (["norm.alpha_init=0"], "norm.alpha_init=0: must be a finite number > 0"),
    (["norm.alpha_init=-1"], "norm.alpha_init=-1: must be a finite number > 0"),
    (["model.drop_path=1.0"], "model.drop_path=1: must be a finite number in [0, 1)"),
    (["model.patch_size=0"], "model.patch_size=0: must be an integer >= 1 or null"),
    (["data.patch_size=3"], "data.image_size=8 is not a multiple of the ViT patch size 3"),
    # vision data
    (["data.image_size=0"], "data.image_size=0: must be an integer >= 1"),
    (["data.num_classes=0"], "data.num_classes=0: must be an integer >= 1"),
    (["data.in_chans=0"], "data.in_chans=0: must be an integer >= 1"),
    (["data.std=[1,1,1]"], "data.std=[1, 1, 1]: must be a list of 1 number (in_chans=1)"),
    (["data.std=[nan]"], "data.std=[nan]: must be a list of 1 number (in_chans=1)"),
    (["data.mean=[0.1,0.2]"], "data.mean=[0.1, 0.2]: must be a list of 1 number (in_chans=1)"),
    (["data.num_workers=-1"], "data.num_workers=-1: must be an integer >= 0"),
    (["data.augment.shift=-1"], "data.augment.shift=-1: must be an integer >= 0"),
    (["data.augment.hflip=1.5"], "data.augment.hflip=1.5: must be a finite number in [0, 1]"),
    (["data.augment.reprob=-0.1"], "data.augment.reprob=-0.1: must be a finite number in [0, 1]"),
    (["data.augment.recount=0"], "data.augment.recount=0: must be an integer >= 1"),
    (["data.augment.mixup=-1"], "data.augment.mixup=-1: must be a finite number >= 0"),
    (["data.augment.cutmix=-1"], "data.augment.cutmix=-1: must be a finite number >= 0"),
    (["data.augment.label_smoothing=1.0"], "data.augment.label_smoothing=1: must be a finite number in [0, 1)"),
    (["data=imagefolder"], "data.root=null: must be set to a local image folder"),
    # LLaMA and text data
    ([*LM, "model.alpha_attn=0"], "model.alpha_attn=0: must be a finite number > 0 or null"),
    ([*LM, "model.alpha_ffn=-1"], "model.alpha_ffn=-1: must be a finite number > 0 or null"),
    ([*LM, "model.alpha_final=nan"], "model.alpha_final=nan: must be a finite number > 0 or null"),
    ([*LM, "model.dim=0"], "model.dim=0: must be an integer >= 1"),
    ([*LM, "model.n_layers=0"], "model.n_layers=0: must be an integer >= 1"),
    ([*LM, "model.n_kv_heads=0"], "model.n_kv_heads=0: must be an integer >= 1 or null"),
    ([*LM, "model.ffn_dim=-4"], "model.ffn_dim=-4: must be an integer >= 1 or null"),
    ([*LM, "model.norm_eps=0"], "model.norm_eps=0: must be a finite number > 0"),
    ([*LM, "model.rope_theta=-1"], "model.rope_theta=-1: must be a finite number > 0"),
    ([*LM, "model.init_std=0"], "model.init_std=0: must be a finite number > 0"),
    ([*LM, "model.n_heads=3"], "model.dim=128, model.n_heads=3, model.n_kv_heads=2: dim must be a multiple"),
    ([*LM, "data.seq_len=0"], "data.seq_len=0: must be an integer >= 1"),
    ([*LM, "data.val_fraction=0"], "data.val_fraction=0: must be a finite number in (0, 1)"),
    ([*LM, "data.vocab_size=0"], "data.vocab_size=0: must be an integer >= 1 or null"),
    ([*LM, "data.pad_vocab_multiple=0"], "data.pad_vocab_multiple=0: must be an integer >= 1"),
    ([*LM, "data.max_val_tokens=0"], "data.max_val_tokens=0: must be an integer >= 1 or null"),
    ([*LM, "data.shuffle_buffer=-1"], "data.shuffle_buffer=-1: must be an integer >= 0"),
    # a model family on data of the other kind (issue case 16)
    (["model=llama_tiny", "data=digits"], "(family llama) needs a text dataset (a data config with seq_len, e.g. "
                                          "data=text_pydoc); data.name=digits is an image dataset"),
    (["model=vit_pico", "data=text_pydoc"], "(family vit) needs an image dataset (a data config with num_classes, "
                                            "e.g. data=digits); data.name=pydoc is a text dataset"),
    (["model=convnext_atto", "data=text_pydoc"], "(family convnext) needs an image dataset"),
]


@pytest.mark.parametrize("overrides,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_value_is_one_line_before_training(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as e:
        train(compose(overrides), tmp_path / "run")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_every_problem_of_a_config_in_one_line():
    from dyt.validate import validate
    with pytest.raises(ConfigError) as e:
        validate(compose(["trainer.batch_size=-8", "optim.lr=nan", "norm.alpha_init=0"]))
    msg = str(e.value)
    assert msg.count("; ") == 2 and "\n" not in msg
    assert all(k in msg for k in ("trainer.batch_size=-8", "optim.lr=nan", "norm.alpha_init=0"))


def _numeric(tp) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union:
        return len(args) == 1 and _numeric(args[0])
    if typing.get_origin(tp) in (list, typing.List):
        return bool(args) and _numeric(args[0])
    return tp in (int, float)


def test_every_numeric_option_has_a_range():
    """Exhaustive: every int/float field of every schema (the shared ones in dyt.config, every registered family's,
    and the schemas nested in them) declares its accepted range beside the field (dyt.ranges.ranged)."""
    from dyt.ranges import rules
    from dyt.validate import schemas
    found = schemas()
    assert {"TrainerConfig", "TextDataConfig", "LlamaModelConfig", "DiTModelConfig", "DiffusionConfig",
            "TimmModelConfig", "AugmentConfig"} <= {c.__name__ for c in found}
    missing = [f"{cls.__name__}.{f.name}" for cls in found
               for f in dataclasses.fields(cls) if _numeric(typing.get_type_hints(cls)[f.name])
               and f.name not in rules(cls)]
    assert not missing, f"numeric options without a range (dyt.ranges.ranged): {missing}"


@pytest.mark.parametrize("overrides", [[], ["experiment=table1_vit_b"], ["experiment=table1_convnext_l"],
                                       ["experiment=lm_pydoc"], ["experiment=alpha_sweep_tiny"],
                                       ["experiment=table4_70b"], ["model=convnext_atto", "data=fashion_mnist"]])
def test_shipped_configs_validate(overrides):
    from dyt.validate import validate
    validate(compose(overrides))


def test_unknown_experiment_is_a_hydra_error():
    with pytest.raises(ConfigCompositionException, match=r"(?s)Could not find 'experiment/nope'.*Available options"):
        compose(["experiment=nope"])
    assert compose().model.name == "vit_pico"  # no experiment: the default job
    assert compose(["experiment=table1_vit_b"]).model.name == "vit_b"


# --- data-dependent checks, through dyt.run.train -----------------------------------------------------------
def image_folder(root, classes, per_class=4, splits=("train", "test"), size=12):
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def folder_run(root, *extra):
    return compose(["data=imagefolder", f"data.root={root}", "data.image_size=16", "data.patch_size=4",
                    "data.num_workers=0", "trainer.batch_size=4", "trainer.max_steps=2", "trainer.eval_every=2",
                    "trainer.ckpt_every=2", "optim.warmup_steps=0", *TINY_VIT, *extra])


def test_image_folder_class_count_is_inferred(tmp_path):
    root = image_folder(tmp_path / "imgs", ["cat", "dog", "fox"])
    cfg = folder_run(root)
    s = train(cfg, tmp_path / "run")
    assert s["status"] == "completed" and cfg.data.num_classes == 3
    assert "num_classes: 3" in (tmp_path / "run/config.yaml").read_text()


@pytest.mark.parametrize("classes,extra,message", [
    (["cat", "dog", "fox"], ["data.num_classes=2"], "data.num_classes=2 but data.root={root} has 3 classes"),
    (["cat"], [], "data.root={root}: {root}/train has 1 class folder (cat); image classification needs at least 2 "
                  "classes"),
    ([], [], "data.root={root}: {root}/train has no class folder holding images"),
])
def test_image_folder_classes_checked(tmp_path, classes, extra, message):
    root = image_folder(tmp_path / "imgs", classes)
    (root / "train").mkdir(parents=True, exist_ok=True)
    with pytest.raises(ConfigError) as e:
        train(folder_run(root, *extra), tmp_path / "run")
    assert message.format(root=root) in str(e.value)
    assert not (tmp_path / "run").exists()


def test_corrupt_image_names_the_file(tmp_path):
    root = image_folder(tmp_path / "imgs", ["cat", "dog"])
    (root / "train/dog/broken.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError) as e:
        train(folder_run(root, "data.num_workers=1", "trainer.batch_size=9"), tmp_path / "run")
    assert str(e.value) == f"cannot read image {root}/train/dog/broken.png (UnidentifiedImageError); remove or replace it"


def test_num_classes_below_the_labels(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.num_classes=5 but the 'train' split has label 9 \(labels must be "
                                          r"0..4\); set data.num_classes=10 or more$"):
        train(compose(["data.num_classes=5"]), tmp_path / "run")


def test_text_corpus_of_one_document_trains(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book/book.txt").write_text("The quick brown fox jumps over the lazy dog. " * 400)
    s = train(compose([*LM, "data=text_local", f"data.root={tmp_path / 'book'}", "data.seq_len=32",
                       "trainer.batch_size=4", "trainer.max_steps=2", "trainer.eval_every=2", "optim.warmup_steps=0"]),
              tmp_path / "run")
    assert s["status"] == "completed"


def test_vocab_size_below_the_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match=r"data.vocab_size=100 is smaller than the tokenizer's vocabulary \(258"):
        train(compose([*LM, "data.vocab_size=100"]), tmp_path / "run")


# --- memory -------------------------------------------------------------------------------------------------
def test_model_that_cannot_fit_is_one_line(monkeypatch):
    import dyt.plan as V
    from dyt.plan import check_model_fits
    monkeypatch.setattr(V, "available_memory", lambda device: (24 * 2**30, "of CPU memory is available"))
    cfg = compose(["experiment=table4_7b"])
    with pytest.raises(ConfigError) as e:
        check_model_fits(cfg, "cpu", 1)
    msg = str(e.value)
    assert msg.startswith("model llama_7b needs about 100.4 GiB to train (6.74B parameters x 16 bytes") and "\n" not in msg
    assert "but only 24.0 GiB of CPU memory is available" in msg and "FSDP" in msg and "smaller model" in msg
    check_model_fits(compose(LM), "cpu", 1)  # a tiny model fits
    monkeypatch.setattr(V, "available_memory", lambda device: (2**20, "of CPU memory is available"))
    with pytest.raises(ConfigError, match=r"model llama_tiny needs about 12.5 MiB to train \(820K parameters"):
        check_model_fits(compose(LM), "cpu", 1)


def test_available_memory_reads_the_machine():
    from dyt.plan import available_memory
    n, where = available_memory("cpu")
    assert 2**26 < n < 2**50 and "CPU" in where


# --- lm-eval --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_manager():
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager
    return TaskManager()


def test_lm_eval_offline_names_the_tasks_at_once(tmp_path, monkeypatch, task_manager):
    from dyt.families.llama import lm_eval as E
    monkeypatch.setattr("lm_eval.tasks.TaskManager", lambda *a, **k: task_manager)
    with pytest.raises(ConfigError) as e:
        E.run_lm_eval(tmp_path, ["paper15"])  # before any model is loaded (tmp_path is no run directory)
    msg = str(e.value)
    assert msg.startswith("lm-eval task(s) anli_r1, anli_r2, anli_r3, arc_challenge") and "winogrande need data" in msg
    assert "offline" in msg and "--include-path" in msg and "dataset_path" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"unknown lm-eval task\(s\): nope_task"):
        E.check_tasks(["nope_task"], task_manager)


def test_lm_eval_unreachable_hub_is_one_line(monkeypatch):
    pytest.importorskip("lm_eval")
    import requests

    from dyt.families.llama import lm_eval as E

    def unreachable(**kw):
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded with url: /datasets/allenai/ai2_arc")
        except Exception as e:
            raise RuntimeError("dataset generation failed") from e
    monkeypatch.setattr("lm_eval.simple_evaluate", unreachable)
    with pytest.raises(ConfigError) as e:
        E.evaluate_tasks(None, ["arc_easy"], None)
    assert str(e.value).startswith("could not download the data of lm-eval task(s) arc_easy (RuntimeError")
    assert "--include-path" in str(e.value)


# --- end to end through train.py: exit code, one `error:` line, no traceback ----------------------------------
@pytest.mark.parametrize("args,message", [
    (["trainer.batch_size=-8", "optim.lr=nan"],
     "error: optim.lr=nan: must be a finite number >= 0; trainer.batch_size=-8: must be an integer >= 1\n"),
    (["model=llama_tiny", "data=digits"],
     "error: model=llama_tiny (family llama) needs a text dataset (a data config with seq_len, e.g. data=text_pydoc); "
     "data=digits is an image dataset\n"),
    (["experiment=nope"], "error: no experiment config 'nope' (choices: alpha_sweep_tiny, "),
])
def test_train_script_reports_one_line(tmp_path, args, message):
    out = run_script(["python", str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path,
                     check=False)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "run/summary.json").exists() and not (tmp_path / "run/checkpoints").exists()


def test_logger_mode_is_one_of_wandbs():
    from dyt.validate import validate
    with pytest.raises(ConfigError, match=r"logger.mode=bogus: unknown; choose one of: online, offline, disabled"):
        validate(compose(["logger=wandb", "logger.mode=bogus"]))  # was a wandb traceback at the run's start


def test_step_counts_are_bounded(tmp_path):
    """A run of 1e23 steps (or epochs) is a typo that would train forever: refused with one line."""
    from dyt.run import train
    from dyt.validate import validate
    with pytest.raises(ConfigError, match=r"trainer.max_steps=100000000000000000000000: must be an integer in \[1, 1e\+09\]"):
        validate(compose(["trainer.max_steps=100000000000000000000000"]))
    with pytest.raises(ConfigError, match=r"trainer.epochs=1000000000000.0 is 2.2e\+13 steps of 22 per epoch, more "
                                          r"than 1e\+09; is it a typo\?"):
        train(compose(["trainer.epochs=1e12", "trainer.max_steps=null"]), tmp_path / "r")
