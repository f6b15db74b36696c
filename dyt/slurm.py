"""SLURM's environment as torchrun's: ranks and rendezvous of an ``srun`` task (SLURM, submitit).

A ground-floor module (os and the standard library only): `dyt.launch` maps the variables before it decides
who trains, and `dyt.distributed.init_distributed` before it joins the group, so an ``srun`` task that reaches
either (train.py, eval.py) runs as the torchrun worker it stands for.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess

from dyt.errors import ConfigError


def slurm_env(environ: dict | None = None) -> dict[str, str]:
    """Under ``srun`` with several tasks (every task of a submitit / sbatch job) and no torchrun ``RANK``:
    sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE from SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID /
    SLURM_STEP_TASKS_PER_NODE, and the rendezvous: MASTER_ADDR = the step's first node, MASTER_PORT = a port
    derived from the job id (both only when not set already). Returns what it set ({} when it does nothing).

    Only an ``srun`` step counts (SLURM_STEP_NUM_TASKS): a batch script's own shell has SLURM_PROCID=0 and the
    allocation's SLURM_NTASKS, yet is one process.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env or "SLURM_PROCID" not in env:
        return {}
    world = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if world <= 1:
        return {}
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    per_node = expand_counts(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", ""))
    node = int(env.get("SLURM_NODEID", "0"))
    job = "".join(c for c in env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or "0" if c.isdigit()) or "0"
    out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": str(world), "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
           "LOCAL_WORLD_SIZE": str(per_node[node] if node < len(per_node) else world),
           "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(nodelist),
           "MASTER_PORT": env.get("MASTER_PORT") or str(10000 + int(job) % 20000)}  # below the ephemeral ports
    env.update(out)
    return out


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``scontrol show hostnames`` where SLURM is installed, else our parser."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise ConfigError(f"cannot find the first node in SLURM's node list {nodelist!r}; set MASTER_ADDR")
    return hosts[0]


def expand_nodelist(nodelist: str) -> list[str]:
    """``node[01-03,07],gpu5`` -> ``node01 node02 node03 node07 gpu5`` (zero padding kept; several bracket
    groups in one name expand as their product, as scontrol does)."""
    hosts = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip()):
        parts = re.split(r"(\[[^\]]*\])", item)
        choices = []
        for part in parts:
            if not (part.startswith("[") and part.endswith("]")):
                choices.append([part])
                continue
            names = []
            for rng in part[1:-1].split(","):
                lo, _, hi = rng.partition("-")
                if not lo.isdigit() or (hi and not hi.isdigit()):
                    raise ConfigError(f"cannot read SLURM's node list {nodelist!r}; set MASTER_ADDR")
                names += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi or lo) + 1)]
            choices.append(names)
        hosts += ["".join(p) for p in itertools.product(*choices)]
    return hosts


def expand_counts(spec: str) -> list[int]:
    """SLURM's per-node task counts: ``8(x2),4`` -> [8, 8, 4]."""
    out = []
    for n, times in re.findall(r"(\d+)(?:\(x(\d+)\))?", spec):
        out += [int(n)] * int(times or 1)
    return out
