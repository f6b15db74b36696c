"""Where benchmark results go: one line naming the machine they ran on, and their section of docs/BENCHMARKS.md
(shared by every script in scripts/bench/)."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "BENCHMARKS.md"


def machine(device: torch.device) -> str:
    """One line naming the device, thread count and library versions."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        name = f"{name}, {torch.get_num_threads()} threads"
    try:
        import triton  # optional: installed with CUDA torch only
        extra = f", triton {triton.__version__}"
    except ImportError:
        extra = ""
    load = f"; 1-min load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{device.type}: {name}; torch {torch.__version__}{extra}; python {platform.python_version()}{load}"


def write_section(name: str, body: str, doc: Path = DOC) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` in doc (appended if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
