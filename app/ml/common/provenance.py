"""Where a result came from: package version, git commit, machine, time."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from app.shared import PROJECT_ROOT

if TYPE_CHECKING:
    import torch



def package_version() -> str:
    try:
        return metadata.version("unlearnd")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_dirty(root: Path = PROJECT_ROOT) -> bool | None:
    """Whether tracked files differ from HEAD: a result from such a tree is not its commit's. None outside git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip())


def cpu_model() -> str | None:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def provenance(device: torch.device | None = None, placement: str | None = None) -> dict[str, object]:
    """DEVICE: what the work ran on (None: the CPU); PLACEMENT: where its data lived (Dataset.placement)."""
    import torch  # here, not above: a ledger-only process that records provenance needs no torch

    from app.ml.common.device import describe

    return {
        "version": package_version(),
        "git_hash": git_hash(),
        "git_dirty": git_dirty(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(),
                    # the kernels torch picked: the same seed trains other weights on another instruction set
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "device": describe(device or torch.device("cpu")), "data_placement": placement or "cpu"},
    }
