"""Tokenizers of the text data (``data.tokenizer``), and the model's vocabulary that follows from them.

``bytes`` (UTF-8 bytes, EOS = 256, BOS = 257), a ``tokenizer.json`` file (Hugging Face ``tokenizers``), or a
Hugging Face tokenizer name / local folder (``transformers.AutoTokenizer``), all behind one small interface:
``name``, ``vocab_size``, ``eos_id``, ``bos_id`` (None when the tokenizer has none), ``encode``, ``decode``,
``vocab`` (the token -> id table, hashed by `vocab_hash`).
Pre-tokenized shards name the tokenizer they were written with in their meta.json: `load_tokenizer` reads it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional

from dyt.data.hub import hf_offline
from dyt.data.shards import shard_meta
from dyt.errors import ConfigError

class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, EOS = 256, BOS = 257.

    BOS is always in the vocabulary, used or not (``data.add_bos``): the vocabulary, and so the model's
    embedding (258 padded to 320), never depends on the packing flag.
    """
    name, vocab_size, eos_id, bos_id = "bytes", 258, 256, 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def vocab(self) -> dict[str, int]:
        return {**{f"<0x{i:02X}>": i for i in range(256)}, "<eos>": self.eos_id, "<bos>": self.bos_id}


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` or ``transformers`` tokenizer behind the same small interface."""

    def __init__(self, spec: str, eos_token: Optional[str] = None, bos_token: Optional[str] = None):
        self.name = spec
        self.bos_id: Optional[int] = None
        path = Path(spec)
        if path.is_file():
            from tokenizers import Tokenizer  # optional dependency (dyt[lm])
            try:
                self._tok = Tokenizer.from_file(str(path))
            except Exception as e:  # not JSON (a binary file), or JSON that is not a tokenizer
                raise ConfigError(f"data.tokenizer={spec}: not a valid tokenizer.json "
                                  f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:150]}); give a "
                                  "Hugging Face tokenizers JSON file, a tokenizer folder, a hub name or 'bytes'") from None
            self._encode = lambda t: self._tok.encode(t, add_special_tokens=False).ids
            self._decode = self._tok.decode
            self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
            candidates = [eos_token] if eos_token else ["</s>", "<|endoftext|>", "<eos>", "[SEP]", "<|eos|>"]
            ids = [self._tok.token_to_id(c) for c in candidates if self._tok.token_to_id(c) is not None]
            bos = [bos_token] if bos_token else ["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]"]
            bos_ids = [self._tok.token_to_id(c) for c in bos if self._tok.token_to_id(c) is not None]
            self.bos_id = bos_ids[0] if bos_ids else None
        else:
            try:
                from transformers import AutoTokenizer  # optional and heavy: only for hub names and folders
            except ImportError as e:
                raise ConfigError(f"data.tokenizer={spec!r} needs `transformers` (pip install 'dyt[lm]')") from e
            offline = hf_offline() and not path.is_dir()  # offline: the local cache only, no retries (~40 s)
            try:
                self._tok = AutoTokenizer.from_pretrained(spec, local_files_only=offline)
            except (OSError, ValueError) as e:
                if offline:
                    raise ConfigError(f"cannot load tokenizer {spec!r} while offline (HF_DATASETS_OFFLINE/"
                                      "HF_HUB_OFFLINE) and it is not in the Hugging Face cache; set data.tokenizer "
                                      "to a local tokenizer.json or tokenizer folder") from e
                raise ConfigError(f"cannot load tokenizer {spec!r} (not a file, folder or reachable hub name): "
                                  f"{str(e).splitlines()[0][:200]}") from e
            self._encode = lambda t: self._tok.encode(t, add_special_tokens=False)
            self._decode = self._tok.decode
            self.vocab_size = len(self._tok)
            eos = self._tok.convert_tokens_to_ids(eos_token) if eos_token else self._tok.eos_token_id
            ids = [eos] if eos is not None else []
            self.bos_id = self._tok.convert_tokens_to_ids(bos_token) if bos_token else self._tok.bos_token_id
        if not ids:
            raise ConfigError(f"tokenizer {spec!r} has no EOS token; set data.eos_token")
        self.eos_id = int(ids[0])
        self.bos_id = None if self.bos_id is None else int(self.bos_id)

    def encode(self, text: str) -> list[int]:
        return self._encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._decode(list(ids))

    def vocab(self) -> dict[str, int]:
        return self._tok.get_vocab()  # with added tokens, in both libraries


def vocab_hash(tok) -> str:
    """A short hash of the token -> id table and the special ids: two tokenizers with the same one encode alike
    (written into pre-tokenized shards' meta.json, checked by the run that reads them)."""
    table = sorted(tok.vocab().items()) + [("<eos id>", tok.eos_id), ("<bos id>", tok.bos_id)]
    return hashlib.sha256(json.dumps(table).encode()).hexdigest()[:16]


def named_tokenizer(name: str, cfg):
    """Tokenizer `name` with the data config's special-token choices."""
    # .get: configs saved by runs older than the BOS option have neither key
    return ByteTokenizer() if name == "bytes" else HFTokenizer(name, cfg.eos_token, cfg.get("bos_token"))


def load_tokenizer(cfg):
    """The tokenizer of a text data config: ``data.tokenizer``, or for pre-tokenized shards the one their
    meta.json names. With ``add_bos`` it must have a BOS token (one clear error if not)."""
    name = shard_meta(cfg.root)["tokenizer"] if cfg.source == "shards" else cfg.tokenizer
    if not name:
        raise ConfigError("data.tokenizer is not set; give 'bytes', a tokenizer.json file or a Hugging Face name")
    tok = named_tokenizer(name, cfg)
    if cfg.get("add_bos", False) and tok.bos_id is None:
        raise ConfigError(f"data.add_bos=true but tokenizer {name!r} has no BOS token; set data.bos_token "
                          "or data.add_bos=false")
    return tok


def vocab_size(cfg) -> int:
    """The model's vocabulary: data.vocab_size, else the tokenizer's (or the shards' meta) padded up."""
    if cfg.vocab_size:
        return int(cfg.vocab_size)
    n = shard_meta(cfg.root)["vocab_size"] if cfg.source == "shards" else load_tokenizer(cfg).vocab_size
    m = max(1, cfg.pad_vocab_multiple)
    return -(-n // m) * m


def check_vocab(cfg, n: int) -> None:
    """An explicit data.vocab_size must hold every token id (else the embedding fails with an IndexError)."""
    if cfg.vocab_size and cfg.vocab_size < n:
        raise ConfigError(f"data.vocab_size={cfg.vocab_size} is smaller than the tokenizer's vocabulary ({n} tokens, "
                          f"data.tokenizer={cfg.tokenizer}); set data.vocab_size >= {n} or null")
