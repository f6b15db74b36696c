"""Calls functions of the test modules in one worker group, one after another, on every rank:

    torchrun --standalone --nproc_per_node=2 tests/torchrun_calls.py CALLS.json

CALLS.json holds a list of ["module", "function", [args...]] (modules of tests/ or dyt). The tests use it to make
several distributed runs in one torchrun group: starting a group (torchrun and two interpreters importing torch,
Hydra and timm) costs more than a tiny run. Each call initialises and shuts down its own process group (as
`dyt.run.train` does), so a run in here is the run `torchrun train.py <overrides>` makes. The first call that
raises ends the group (torchrun stops the other ranks); the calls after it are not made.
"""
import importlib
import json
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

from torch.distributed import TCPStore

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]


def fresh_rendezvous(agent: TCPStore, call: int) -> None:
    """Points the next process group at a store of its own, served by rank 0 on a free port that the ranks agree on
    through torchrun's store. Joining torchrun's store again after a run hung in gloo's connect (stale keys of the
    previous group under the same name; seen after a LLaMA FSDP run)."""
    key = f"torchrun_calls/{call}/port"
    if os.environ["RANK"] == "0":
        with socket.socket() as s:
            s.bind((os.environ["MASTER_ADDR"], 0))
            agent.set(key, str(s.getsockname()[1]))
    os.environ.update(TORCHELASTIC_USE_AGENT_STORE="False", MASTER_PORT=agent.get(key).decode())


def main(calls_file: str) -> None:
    agent = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                     timeout=timedelta(minutes=5))
    for i, (module, function, args) in enumerate(json.loads(Path(calls_file).read_text())):
        if i:
            fresh_rendezvous(agent, i)
        getattr(importlib.import_module(module), function)(*args)
        print(f"[torchrun_calls] {module}.{function} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
