"""Text data: the embedded pydoc corpus, local folders with a local tokenizer file, pre-tokenized shards, packing
with EOS between documents (BOS + document + EOS with data.add_bos, as the released LLaMA code), and exact data
positions (map-style and streaming)."""
import json
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, compose
from dyt.data import text as T
from dyt.data.tokenizers import ByteTokenizer, load_tokenizer, vocab_size
from dyt.distributed import DistInfo
from dyt.errors import ConfigError
from dyt.tasks.language import LanguageTask


def data_cfg(*extra):
    return compose(["model=llama_tiny", "data=text_pydoc", *extra]).data


def test_pydoc_corpus_bytes_and_packing():
    cfg = data_cfg("data.seq_len=64")
    train, val = T.build_text_datasets(cfg)
    tok = load_tokenizer(cfg)
    assert vocab_size(cfg) == 320 and tok.eos_id == 256 and tok.bos_id == 257
    n_docs = len(T.pydoc_documents())
    all_tokens = np.concatenate([train.shards[0], val.shards[0]])
    assert (all_tokens == 256).sum() == n_docs and (all_tokens == 257).sum() == 0  # one EOS after each document
    assert len(all_tokens) == sum(len(d.encode()) for d in T.pydoc_documents()) + n_docs
    assert 0.04 < len(val.shards[0]) / len(all_tokens) < 0.2
    a, b = train[0], train[1]
    assert a.shape == (65,) and a.dtype == torch.int64 and a[-1] == b[0]  # sequences share their boundary token
    assert tok.decode(a[:20].tolist()) == T.pydoc_documents()[1][:20]  # document 0 is validation (every 10th)
    u = T.unigram_loss(train.tokens(10**7), val.tokens(10**7), 320)
    assert 2.8 < u < 3.8  # bytes of English/Python prose: ~3.3 nats


@pytest.fixture(scope="module")
def local_corpus(tmp_path_factory):
    """A local folder: .txt, .jsonl and .parquet documents with a train/val split, and a BPE tokenizer.json
    (<unk> = 0, EOS </s> = 1, BOS <s> = 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    root = tmp_path_factory.mktemp("corpus")
    docs = T.pydoc_documents()
    (root / "train").mkdir()
    for i, d in enumerate(docs[:30]):
        (root / "train" / f"doc{i:02d}.txt").write_text(d)
    with open(root / "train" / "more.jsonl", "w") as f:
        for d in docs[30:60]:
            f.write(json.dumps({"text": d}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": docs[60:]}), root / "validation.parquet")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>", "<s>"]))
    tok.save(str(root / "tokenizer.json"))
    return root


def test_local_folder_with_local_tokenizer(local_corpus):
    cfg = data_cfg("data=text_local", f"data.root={local_corpus}", f"data.tokenizer={local_corpus}/tokenizer.json",
                   "data.seq_len=32")
    tok = load_tokenizer(cfg)
    assert tok.eos_id == 1 and vocab_size(cfg) == 448  # 400 padded to a multiple of 64
    train, val = T.build_text_datasets(cfg)
    docs = T.pydoc_documents()
    assert (train.shards[0] == 1).sum() == 60 and (val.shards[0] == 1).sum() == len(docs) - 60
    assert len(train.shards[0]) < sum(len(d.encode()) for d in docs[:60]) / 2  # BPE merges: far fewer than bytes


def test_local_files_that_are_not_text_are_said(tmp_path, capsys):
    """{"text": 7} in a .jsonl is one line naming the file and row (was a 42-line traceback in the tokenizer);
    invalid UTF-8 in a .txt still trains, with a warning naming the file (was silent U+FFFD)."""
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"text": 7}\n')
    over = [f"data.root={tmp_path}", "data.tokenizer=bytes", "data.seq_len=16"]
    with pytest.raises(ConfigError, match=r"a.jsonl: row 2 of column 'text' is int '7', not text"):
        T.build_text_datasets(data_cfg("data=text_local", *over))
    (tmp_path / "a.jsonl").unlink()
    (tmp_path / "b.txt").write_bytes(("word " * 400).encode() + b"\xff\xfe broken " + ("more " * 400).encode())
    T.build_text_datasets(data_cfg("data=text_local", *over))
    assert f"[dyt] warning: {tmp_path}/b.txt is not valid UTF-8 (first bad byte at offset 2000)" in capsys.readouterr().err


def test_missing_local_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="data.root"):
        T.build_text_datasets(data_cfg("data=text_local", f"data.root={tmp_path}/nope"))
    with pytest.raises(ConfigError, match="pretokenize"):
        T.build_text_datasets(data_cfg("data=text_shards", f"data.root={tmp_path}"))


def test_pretokenized_shards_equal_direct_tokenization(tmp_path, local_corpus):
    sys.path.insert(0, str(ROOT / "scripts"))
    import pretokenize
    over = [f"data.root={local_corpus}", f"data.tokenizer={local_corpus}/tokenizer.json"]
    assert pretokenize.main(["--data", "text_local", "--out", str(tmp_path), "--shard-tokens", "20000", *over]) == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert len(meta["shards"]["train"]) > 1 and meta["vocab_size"] == 400 and meta["dtype"] == "uint16"
    direct_train, direct_val = T.build_text_datasets(data_cfg("data=text_local", *over))
    shards = data_cfg("data=text_shards", f"data.root={tmp_path}", "data.seq_len=32")
    train, val = T.build_text_datasets(shards)
    assert vocab_size(shards) == 448
    np.testing.assert_array_equal(np.concatenate([np.asarray(s) for s in train.shards]), direct_train.shards[0])
    np.testing.assert_array_equal(np.concatenate([np.asarray(s) for s in val.shards]), direct_val.shards[0])
    # sequences never cross a shard boundary, and every index maps to a full sequence
    assert len(train) == sum((len(s) - 1) // 32 for s in train.shards)
    assert all(train[i].shape == (33,) for i in (0, len(train) - 1))


def _task(cfg, rank=0, world=1):
    return LanguageTask(cfg, DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu")))


def test_map_style_data_position_resumes_exactly():
    cfg = compose(["model=llama_tiny", "data=text_pydoc", "data.seq_len=32"])
    task = _task(cfg)
    full = torch.cat(list(task.train_loader(4, epoch=1, start_batch=0)))
    resumed = torch.cat(list(task.train_loader(4, epoch=1, start_batch=5)))
    torch.testing.assert_close(resumed, full[20:])
    assert task.batch_units(full[:4]) == 4 * 32


def _fake_stream(n_docs=40):
    import datasets
    docs = [f"document {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(n_docs)]
    return lambda cfg, split, streaming: datasets.Dataset.from_dict({"text": docs}).to_iterable_dataset()


def test_streaming_skips_exactly_and_splits_ranks(monkeypatch):
    monkeypatch.setattr(T, "hf_dataset", _fake_stream())
    cfg = compose(["model=llama_tiny", "data=text_fineweb", "data.tokenizer=bytes", "data.vocab_size=null",
                   "data.seq_len=16", "data.val_docs=5", "data.shuffle_buffer=8"]).data
    tok = ByteTokenizer()
    take = lambda ds, n: [s for s, _ in zip(ds, range(n))]  # noqa: E731
    full = take(T.StreamingPacked(cfg, tok, seed=0, rank=0, world=1, start=0), 200)  # > one pass: wraps around
    assert len({tuple(s.tolist()) for s in full}) > 50
    later = take(T.StreamingPacked(cfg, tok, seed=0, rank=0, world=1, start=37), 50)
    assert all(torch.equal(a, b) for a, b in zip(later, full[37:87]))
    r0 = take(T.StreamingPacked(cfg, tok, seed=0, rank=0, world=2, start=3), 10)
    r1 = take(T.StreamingPacked(cfg, tok, seed=0, rank=1, world=2, start=3), 10)
    assert all(torch.equal(a, full[6 + 2 * i]) and torch.equal(b, full[7 + 2 * i]) for i, (a, b) in enumerate(zip(r0, r1)))
    # the task streams training data and keeps the held-out leading documents as validation
    task = _task(compose(["model=llama_tiny", "data=text_fineweb", "data.tokenizer=bytes", "data.vocab_size=null",
                          "data.seq_len=16", "data.val_docs=5", "data.shuffle_buffer=8"]))
    train, val = task.datasets
    assert train is None and (val.shards[0] == 256).sum() == 5
    batches = task.train_loader(4, 0, 2)
    torch.testing.assert_close(next(iter(batches)), torch.stack(full[8:12]))


def _assert_bos_doc_eos(tokens, bos, eos, n_docs):
    """tokens = [BOS] doc [EOS] [BOS] doc [EOS] ...: every BOS opens a document right after the previous EOS."""
    tokens = np.asarray(tokens)
    b, e = np.flatnonzero(tokens == bos), np.flatnonzero(tokens == eos)
    assert len(b) == len(e) == n_docs and tokens[0] == bos and tokens[-1] == eos
    np.testing.assert_array_equal(b[1:], e[:-1] + 1)


def test_bos_doc_eos_packing_with_a_tokenizer_json(local_corpus):
    over = ["data=text_local", f"data.root={local_corpus}", f"data.tokenizer={local_corpus}/tokenizer.json",
            "data.seq_len=32"]
    tok = load_tokenizer(data_cfg(*over, "data.add_bos=true"))
    assert tok.bos_id == 2 and tok.eos_id == 1  # found by name: <s>, </s>
    docs = T.pydoc_documents()
    train, val = T.build_text_datasets(data_cfg(*over, "data.add_bos=true"))
    want_val = np.concatenate([[2] + tok.encode(d) + [1] for d in docs[60:]])  # validation.parquet: BOS + doc + EOS
    np.testing.assert_array_equal(val.shards[0], want_val)
    _assert_bos_doc_eos(train.shards[0], 2, 1, 60)
    _, plain_val = T.build_text_datasets(data_cfg(*over))  # the default: document + EOS, no BOS
    np.testing.assert_array_equal(plain_val.shards[0], want_val[want_val != 2])


def test_byte_tokenizer_bos_on_the_embedded_corpus():
    cfg = data_cfg("data.seq_len=64", "data.add_bos=true")
    train, val = T.build_text_datasets(cfg)
    n_docs = len(T.pydoc_documents())
    all_tokens = np.concatenate([val.shards[0], train.shards[0]])
    _assert_bos_doc_eos(all_tokens, 257, 256, n_docs)
    assert vocab_size(cfg) == 320 and train[0][0] == 257  # same padded vocabulary with or without BOS
    first = T.pydoc_documents()[1]  # document 0 is validation (every 10th)
    assert ByteTokenizer().decode(train[0][1:21].tolist()) == first[:20]


def test_add_bos_needs_a_tokenizer_with_a_bos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    over = ["data=text_local", f"data.root={tmp_path}", f"data.tokenizer={tmp_path}/tokenizer.json"]
    assert load_tokenizer(data_cfg(*over)).bos_id is None  # fine without add_bos
    with pytest.raises(ConfigError, match="data.add_bos=true but tokenizer .* has no BOS token; set data.bos_token"):
        load_tokenizer(data_cfg(*over, "data.add_bos=true"))
    assert load_tokenizer(data_cfg(*over, "data.add_bos=true", "data.bos_token=a")).bos_id == 2


def test_pretokenized_shards_with_bos(tmp_path, local_corpus):
    sys.path.insert(0, str(ROOT / "scripts"))
    import pretokenize
    over = [f"data.root={local_corpus}", f"data.tokenizer={local_corpus}/tokenizer.json", "data.add_bos=true"]
    assert pretokenize.main(["--data", "text_local", "--out", str(tmp_path), "--max-train-tokens", "30000", *over]) == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["add_bos"] is True and meta["bos_id"] == 2 and meta["eos_id"] == 1
    _, direct_val = T.build_text_datasets(data_cfg("data=text_local", *over))
    train, val = T.build_text_datasets(data_cfg("data=text_shards", f"data.root={tmp_path}", "data.add_bos=true"))
    np.testing.assert_array_equal(np.concatenate([np.asarray(s) for s in val.shards]), direct_val.shards[0])
    assert np.asarray(train.shards[0])[0] == 2 and (np.asarray(train.shards[0]) == 2).sum() > 1
    with pytest.raises(ConfigError, match="packed with add_bos=True but data.add_bos=False"):
        T.build_text_datasets(data_cfg("data=text_shards", f"data.root={tmp_path}"))


def test_streaming_packs_bos_doc_eos(monkeypatch):
    monkeypatch.setattr(T, "hf_dataset", _fake_stream())
    over = ["model=llama_tiny", "data=text_fineweb", "data.tokenizer=bytes", "data.vocab_size=null", "data.seq_len=16",
            "data.val_docs=5", "data.shuffle_buffer=8", "data.add_bos=true"]
    cfg = compose(over).data
    seqs = [s for s, _ in zip(T.StreamingPacked(cfg, ByteTokenizer(), seed=0, rank=0, world=1, start=0), range(60))]
    stream = torch.cat([seqs[0][:1]] + [s[1:] for s in seqs]).numpy()  # consecutive sequences share one token
    stream = stream[: np.flatnonzero(stream == 256)[-1] + 1]  # up to the last whole document
    _assert_bos_doc_eos(stream, 257, 256, int((stream == 256).sum()))
    _, val = _task(compose(over)).datasets
    _assert_bos_doc_eos(val.shards[0], 257, 256, 5)


# --- bad text data is one clear line (issue 9) ----------------------------------------------------------------
def test_one_long_document_is_split_by_text(tmp_path):
    """Fewer documents than 1/val_fraction: the tail val_fraction of the text is validation (not 'too small')."""
    (tmp_path / "book.txt").write_text("".join(f"sentence {i}. " for i in range(3000)))
    cfg = data_cfg("data=text_local", f"data.root={tmp_path}", "data.seq_len=32", "data.val_fraction=0.05")
    train, val = T.build_text_datasets(cfg)
    n_train, n_val = len(train.shards[0]), len(val.shards[0])
    assert 0.04 < n_val / (n_train + n_val) < 0.06 and len(train) > 0 and len(val) > 0
    text = (tmp_path / "book.txt").read_text()
    assert ByteTokenizer().decode(np.concatenate([train.shards[0], val.shards[0]]).tolist()) == text  # all of it


def test_non_json_jsonl_names_the_file_and_line(tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"text": "a"}\n{"text": "b"}\nnot json at all\n')
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/docs.jsonl: line 3 is not JSON \(.*\); fix or remove the file$"):
        T.build_text_datasets(data_cfg("data=text_local", f"data.root={tmp_path}"))


def test_binary_tokenizer_json_is_one_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ConfigError, match=rf"^data.tokenizer={tmp_path}/tokenizer.json: not a valid tokenizer.json"):
        load_tokenizer(data_cfg(f"data.tokenizer={tmp_path}/tokenizer.json"))


def test_hub_dataset_offline_names_data_root(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = data_cfg("data.source=hf", "data.hub_id=someone/corpus")
    with pytest.raises(ConfigError, match=r"cannot load dataset 'someone/corpus' \(data.hub_id\) split 'train' "
                                          r"while offline .*data.source=local data.root="):
        T.build_text_datasets(cfg)


def test_hub_tokenizer_offline_does_not_retry(monkeypatch):
    """Offline (either variable), a hub tokenizer name is looked up in the local cache only: no ~40 s of retries."""
    import transformers
    calls = []

    def fake(spec, **kw):
        calls.append(kw)
        raise OSError("not cached")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"cannot load tokenizer 'gpt2' while offline .* set data.tokenizer to a local"):
        load_tokenizer(data_cfg("data.tokenizer=gpt2"))
    assert calls == [{"local_files_only": True}]


def test_vocab_size_must_hold_the_tokenizer():
    with pytest.raises(ConfigError, match=r"data.vocab_size=100 is smaller than the tokenizer's vocabulary \(258 tokens"):
        T.build_text_datasets(data_cfg("data.vocab_size=100"))


def test_shards_load_the_tokenizer_they_were_written_with(tmp_path, local_corpus):
    """A run on shards (lm-eval, generation) decodes with the tokenizer that meta.json names, not data.tokenizer."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import pretokenize
    over = [f"data.root={local_corpus}", f"data.tokenizer={local_corpus}/tokenizer.json"]
    assert pretokenize.main(["--data", "text_local", "--out", str(tmp_path), "--max-train-tokens", "3000", *over]) == 0
    direct = load_tokenizer(data_cfg("data=text_local", *over))
    tok = load_tokenizer(data_cfg("data=text_shards", f"data.root={tmp_path}"))
    assert tok.name == direct.name == f"{local_corpus}/tokenizer.json"
    assert (tok.vocab_size, tok.eos_id, tok.bos_id) == (400, 1, 2)
    assert tok.encode(T.pydoc_documents()[0]) == direct.encode(T.pydoc_documents()[0])
