"""GenomicBenchmarks fine-tuning (Table 6): the folder reader, the split, the tokenization, the repo's pooling
decoder, DNA families' pre-train -> classify runs (end to end, resume, 2 processes) and the 8-task average cell."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from dyt.data.dna import A, C, G, PAD, SEP, T, encode
from dyt.data.genomic_benchmarks import (MOTIFS, GenomicSequences, build_genomic_datasets, read_split,
                                         split_train_val, write_synthetic_task)
from dyt.errors import ConfigError
from dyt.tasks.dna_classification import SequenceClassifier, SequencePool


def data_cfg(root, task="synth", **kw):
    base = dict(source="folder", root=root and str(root), task=task, num_classes=2, max_length=8, split_seed=1,
                val_fraction=0.1, rc_aug=False, padding_side="left", add_eos=False)
    return SimpleNamespace(**{**base, **kw})


def write_task(root: Path, files: dict[str, dict[str, str]]) -> Path:
    """root/t/<split>/<class>/<name>.txt from {"train/b": {"0": "ACGT"}, ...}."""
    for where, seqs in files.items():
        folder = root / "t" / where
        folder.mkdir(parents=True, exist_ok=True)
        for name, seq in seqs.items():
            (folder / f"{name}.txt").write_text(seq)
    return root / "t"


# --- the folder ---------------------------------------------------------------------------------------------------
def test_classes_are_sorted_folders_and_labels_follow_them(tmp_path):
    path = write_task(tmp_path, {"train/zebra": {"1": "AC", "0": "acgtn"}, "train/ant": {"0": "G"},
                                 "test/ant": {"0": "T"}, "test/zebra": {"0": "CC"}})
    seqs, labels, classes = read_split(path, "train")
    assert classes == ["ant", "zebra"] and labels == [0, 1, 1]
    assert seqs == ["G", "ACGTN", "AC"]  # files in sorted order, upper-cased
    assert read_split(path, "test", classes)[:2] == (["T", "CC"], [0, 1])


@pytest.mark.parametrize("files, error", [
    ({}, r"no such folder"),
    ({"train/a": {"0": "AC"}, "train/b": {}}, r"/train/b: an empty class"),
    ({"train/a": {"0": "ACGU"}}, r"/train/a/0.txt: character 'U' at 3 is not one of A, C, G, T, N"),
])
def test_a_broken_folder_is_a_config_error_naming_the_file(tmp_path, files, error):
    path = write_task(tmp_path, files) if files else tmp_path / "t"
    for where in files:
        (path / where).mkdir(parents=True, exist_ok=True)
    with pytest.raises(ConfigError, match=error):
        read_split(path, "train")


def test_a_missing_task_folder_or_root_says_how_to_download(tmp_path):
    with pytest.raises(ConfigError, match=r"no folder nope in it; download it with genomic-benchmarks' download_dataset"):
        build_genomic_datasets(data_cfg(tmp_path, task="nope"))
    with pytest.raises(ConfigError, match=r"^data.root is not set"):
        build_genomic_datasets(data_cfg(None))
    write_task(tmp_path, {"train/a": {"0": "A"}, "train/b": {"0": "C"}, "test/a": {"0": "A"}})
    with pytest.raises(ConfigError, match=r"classes \['a'\] differ from the train split's \['a', 'b'\]"):
        build_genomic_datasets(data_cfg(tmp_path, task="t"))


def test_the_split_is_a_pure_function_of_the_seed():
    a, b = split_train_val(100, 0.1, 3), split_train_val(100, 0.1, 3)
    assert a == b and len(a[1]) == 10 and sorted(a[0] + a[1]) == list(range(100))
    assert split_train_val(100, 0.1, 4)[1] != a[1]
    # the repo's call: random_split of the train list with [0.1, 0.9] under manual_seed(train_val_split_seed)
    val, train = torch.utils.data.random_split(list(range(100)), [0.1, 0.9], generator=torch.Generator().manual_seed(3))
    assert (list(train.indices), list(val.indices)) == a


def test_evaluation_holds_the_validation_part_then_the_test_split(tmp_path):
    root = write_synthetic_task(tmp_path, "synth", train=50, test=20)
    train, evaluation = build_genomic_datasets(data_cfg(tmp_path, max_length=128))
    assert len(train) == 45 and len(evaluation) == 5 + 20
    assert [evaluation[i][2] for i in range(len(evaluation))] == [0] * 5 + [1] * 20
    assert sorted(p.name for p in (root / "train").iterdir()) == ["class_0", "class_1"]
    text = (root / "train/class_1/00001.txt").read_text()
    assert MOTIFS[1] in text and 60 <= len(text) <= 120


# --- tokenization ---------------------------------------------------------------------------------------------
def test_tokens_are_truncated_then_padded_on_the_left_as_the_repo():
    ds = GenomicSequences(["ACG", "ACGTACGTAC"], [0, 1], data_cfg(None, max_length=5))
    assert ds[0][0].tolist() == [PAD, PAD, A, C, G]
    assert ds[1][0].tolist() == encode("ACGTA").tolist()  # the first max_length bases
    right = GenomicSequences(["ACG"], [0], data_cfg(None, max_length=5, padding_side="right", add_eos=True))
    assert right[0][0].tolist() == [A, C, G, PAD, PAD, SEP]


def test_rc_aug_flips_the_whole_sequence_before_truncation_half_the_time():
    ds = GenomicSequences(["AACG"], [0], data_cfg(None, max_length=3), rc_aug=True)
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        seen.add(tuple(ds[0][0].tolist()))
    assert seen == {(A, A, C), (C, G, T)}  # AACG, or its reverse complement CGTT, cut to 3
    assert not ds.deterministic and GenomicSequences(["A"], [0], data_cfg(None)).deterministic


# --- the decoder ----------------------------------------------------------------------------------------------
def test_pooling_decoder_equals_a_hand_computation():
    head = SequencePool(2, 3)
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        head.proj.bias.copy_(torch.tensor([0.0, 1.0, 0.5]))
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]])  # B=1, L=3 (padding positions count: use_lengths off)
    # mean over L: (3, 2); logits = W (3, 2) + b
    assert torch.allclose(head(h), torch.tensor([[3.0, 3.0, 1.5]]))
    # two strands (RC-equivariant backbones, the repo's conjoin_train): the Linear's outputs averaged over strands
    rc = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 5.0]]])  # mean (1, 2): logits (1, 3, -0.5)
    both = head(torch.stack([h, rc], dim=-1))
    assert torch.allclose(both, torch.tensor([[2.0, 3.0, 0.5]]))


def test_the_classifier_pools_the_backbones_features_and_keeps_its_weight_decay_exemptions():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(16, 4)

        def features(self, ids):
            return self.embed(ids)

        def no_weight_decay(self):
            return {"embed.weight"}

    model = SequenceClassifier(LM(), 4, 2)
    assert sorted(model.state_dict()) == ["backbone.embed.weight", "head.proj.bias", "head.proj.weight"]
    assert model.no_weight_decay() == {"backbone.embed.weight"}
    ids = torch.tensor([[7, 8, 4]])
    assert torch.allclose(model(ids), model.head.proj(model.backbone.embed(ids).mean(1)))
