"""One of our LLaMA models and its tokenizer as an lm-eval ``LM``, scoring in batches across processes; sampling.

Under torchrun every rank runs the same lm-eval evaluation (the harness sees one process: it builds every request
on every rank). Each call of ``loglikelihood`` / ``loglikelihood_rolling`` / ``generate_until`` sorts its
requests by length (longest first, as lm-eval's HFLM: the largest batch comes first and little is padded), cuts
them into batches, and rank r scores batches r, r + world, ...; the results are gathered on every rank in the
requests' order. A batch holds the same requests whatever the number of processes, so the scores do not depend on
it. Under a sharded model (FSDP2: every forward is a collective) the ranks run the same number of forwards: a rank
out of batches runs a one-token forward that keeps the others company.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F

from dyt import distributed as D
from dyt.errors import ConfigError
from dyt.precision import autocast
from dyt.progress import Progress


def lm_base():
    try:
        from lm_eval.api.model import LM
    except ImportError as e:
        raise ConfigError("zero-shot evaluation needs lm-eval (pip install 'dyt[lm]')") from e
    return LM


@torch.no_grad()
def generate(model, tok, prompt: str, max_new_tokens: int = 100, temperature: float = 0.0, top_k: Optional[int] = None,
             until: tuple[str, ...] = (), context: int = 4096, dtype: torch.dtype | None = None) -> str:
    """Continue `prompt`: greedy when temperature is 0, else sampling (top-k when given). No KV cache: tiny
    models and sanity checks only."""
    device = next(model.parameters()).device
    ids = tok.encode(prompt) or [tok.eos_id]
    start = len(ids)
    for _ in range(max_new_tokens):
        with autocast(device, dtype):
            logits = model(torch.tensor([ids[-context:]], device=device))[0, -1].float()
        logits = logits[: tok.vocab_size]  # never the padded (untrained) entries
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            if top_k:
                logits[logits < logits.topk(min(top_k, len(logits))).values[-1]] = -float("inf")
            nxt = int(torch.multinomial(F.softmax(logits / temperature, dim=-1), 1))
        if nxt == tok.eos_id:
            break
        ids.append(nxt)
        text = tok.decode(ids[start:])
        if any(u in text for u in until):
            return text[: min(text.index(u) for u in until if u in text)]
    return tok.decode(ids[start:])


def batch_plan(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Request indices in batches of `batch_size`, longest first (ties in request order): the same batches on any
    number of processes."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[k: k + batch_size] for k in range(0, len(order), batch_size)]


def make_lm(model, tok, batch_size: int = 8, max_length: int = 2048, add_bos: bool = False,
            dtype: torch.dtype | None = None, lockstep: bool = False):
    """Our model + tokenizer as an lm-eval LM (a function so lm-eval is imported only when used).

    The model runs on its own device under autocast to `dtype` (None: as it is; a sharded model casts with its
    FSDP mixed-precision policy instead). `lockstep`: the model is sharded (see the module's docstring).
    Every request starts as a document did in training: after an EOS, then a BOS for runs packed with
    ``data.add_bos`` (BOS + document + EOS)."""
    LM = lm_base()

    class DytLM(LM):
        def __init__(self):
            super().__init__()
            self.model, self.tok, self.bs, self.max_length = model.eval(), tok, batch_size, max_length
            self._device = next(model.parameters()).device
            self.dtype, self.lockstep = dtype, lockstep
            self.doc_start = [tok.eos_id] + ([tok.bos_id] if add_bos else [])

        def _forward(self, rows: list[list[int]]) -> torch.Tensor:
            """Log-probabilities (fp32) of right-padded rows: causal, so padding never reaches a real position."""
            x = torch.full((len(rows), max(map(len, rows))), self.tok.eos_id, dtype=torch.long)
            for j, r in enumerate(rows):
                x[j, : len(r)] = torch.tensor(r)
            with autocast(self._device, self.dtype):
                logits = self.model(x.to(self._device))
            return F.log_softmax(logits.float(), dim=-1)

        def _sharded(self, items: list, lengths: list[int], work, what: str) -> list:
            """`work(batch of items)` -> their results, for this rank's batches; every rank gets all results in
            the items' order."""
            group = torch_dist.is_initialized()
            rank, world = (torch_dist.get_rank(), torch_dist.get_world_size()) if group else (0, 1)
            batches = batch_plan(lengths, self.bs)
            rounds = math.ceil(len(batches) / world)
            bar = Progress(len(items), f"lm-eval {what}", "req", enabled=rank == 0 and bool(items))
            mine = {}
            for r in range(rounds):
                k = r * world + rank
                if k < len(batches):
                    mine.update(zip(batches[k], work([items[i] for i in batches[k]])))
                elif self.lockstep:  # a sharded model: every rank runs each forward
                    self._forward([[self.tok.eos_id]])
                bar.update(sum(len(b) for b in batches[r * world: (r + 1) * world]))
            bar.close()
            results = {}
            for part in D.all_gather_object(mine):
                results.update(part)
            return [results[i] for i in range(len(items))]

        @torch.no_grad()
        def _score(self, pairs: list[tuple[list[int], list[int]]], what: str = "loglikelihood"):
            """(sum of log p(continuation | context), whether greedy decoding gives it) of each (context,
            continuation) pair of token ids."""
            seqs = [(ctx + cont)[-(self.max_length + 1):] for ctx, cont in pairs]

            def work(batch):
                logp = self._forward([s[:-1] for _, s in batch])
                out = []
                for j, ((_, cont), s) in enumerate(batch):
                    n = len(cont)
                    lp = logp[j, len(s) - 1 - n: len(s) - 1]  # positions predicting the continuation
                    target = torch.tensor(s[-n:], device=lp.device)
                    out.append(torch.stack([lp.gather(-1, target[:, None]).sum(), (lp.argmax(-1) == target).all()]))
                return [(ll, bool(g)) for ll, g in torch.stack(out).tolist()]  # one device sync per batch
            return self._sharded(list(zip(pairs, seqs)), [len(s) for s in seqs], work, what)

        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            # Trailing spaces of the context belong to the continuation (the harness's convention).
            n = len(context) - len(context.rstrip())
            context, continuation = context[: len(context) - n], context[len(context) - n:] + continuation
            ctx = self.tok.encode(context) if context else []
            return self.doc_start + ctx, self.tok.encode(continuation)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._score([self._encode_pair(*r.args[:2]) for r in requests])

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
            windows, owner = [], []
            for i, r in enumerate(requests):  # every window of every request, scored together
                for w in get_rolling_token_windows(self.tok.encode(r.args[0]), prefix_token=self.doc_start[-1],
                                                   max_seq_len=self.max_length, context_len=1):
                    windows.append(make_disjoint_window(w))
                    owner.append(i)
            out = [0.0] * len(requests)
            for i, (lp, _) in zip(owner, self._score(windows, "loglikelihood_rolling")):
                out[i] += lp
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):
            if self.lockstep:
                raise ConfigError("generation tasks (generate_until) do not run on a sharded model (the ranks would "
                                  "generate different lengths); evaluate them with trainer.parallel=ddp")

            def work(batch):
                out = []
                for context, kw in batch:
                    until = kw.get("until") or []
                    until = (until,) if isinstance(until, str) else tuple(until)
                    out.append(generate(self.model, self.tok, context, int(kw.get("max_gen_toks", 128)),
                                        float(kw.get("temperature", 0.0)), until=until, context=self.max_length,
                                        dtype=self.dtype))
                return out
            items = [(r.args[0], dict(r.args[1]) if len(r.args) > 1 else {}) for r in requests]
            return self._sharded(items, [len(c) for c, _ in items], work, "generate_until")

    return DytLM()
