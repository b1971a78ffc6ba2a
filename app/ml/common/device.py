"""Which torch device the ML work runs on: `UNLEARND_DEVICE` = auto | cpu | cuda | cuda:N.

`auto` takes the first CUDA device when torch sees one and the CPU otherwise, and says which
in the log. A named CUDA device that is not there is an error, not a silent CPU run: an
operator who asked for a GPU worker must not get a worker 50× slower without being told.
torch is imported inside the functions: the settings check a spec without loading it.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from app.errors import DeviceError
from app.shared import DEVICE_SPEC

if TYPE_CHECKING:
    import torch

log = logging.getLogger("unlearnd.device")


def check_spec(spec: str) -> str:
    """SPEC itself if it names a device kind unlearnd knows; DeviceError otherwise."""
    if not DEVICE_SPEC.fullmatch(spec):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N (N a GPU index), got {spec!r}")
    return spec


@functools.cache  # once per process: a worker resolves it for every batch, and logs it once
def resolve(spec: str) -> torch.device:
    """The torch device SPEC names on this machine."""
    import torch

    check_spec(spec)
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto":
        if not available:
            log.info("device auto: torch sees no CUDA device, running on the CPU")
            return torch.device("cpu")
        spec = "cuda:0"
    if not available:
        raise DeviceError(f"device {spec} was asked for, but torch sees no CUDA device "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})")
    dev = torch.device(spec if ":" in spec else "cuda:0")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {spec} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)")
    log.info("device %s: %s", spec, describe(dev))
    return dev


def describe(dev: torch.device) -> str:
    """What a result records about its device: 'cpu', or 'cuda:0 (NVIDIA H200)'."""
    if dev.type != "cuda":
        return dev.type
    import torch

    return f"{dev} ({torch.cuda.get_device_name(dev)})"


def synchronize(dev: torch.device) -> None:
    """Wait for queued kernels: a GPU timing without this measures the launch, not the work."""
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)
