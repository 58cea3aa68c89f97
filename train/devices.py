"""Where training runs: the device, and mixed precision on it."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .errors import TrainingError

__all__ = ["AMP_OFF", "Amp", "TrainingError", "amp_settings", "pick_device"]


class Amp(NamedTuple):
    """Mixed precision: autocast on, in ``dtype``, with a gradient scaler or not."""

    enabled: bool
    dtype: torch.dtype | None
    scaler: bool


AMP_OFF = Amp(False, None, False)


def pick_device(name: str) -> torch.device:
    """``auto``: a CUDA GPU, else Apple's GPU, else the CPU; a named device must exist."""
    mps = getattr(torch.backends, "mps", None)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            f"train.device is 'cuda' but no CUDA device is available (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}); use device: auto or cpu"
        )
    if name == "mps" and not (mps and mps.is_available()):
        raise TrainingError(
            "train.device is 'mps' but this machine has no Apple GPU; use device: auto or cpu"
        )
    return torch.device(name)


def amp_settings(device: torch.device, enabled: bool) -> Amp:
    """bf16 where supported, else fp16 with a scaler; off where asked or not supported."""
    if not enabled:
        return AMP_OFF
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Amp(True, torch.bfloat16, False)
        return Amp(True, torch.float16, True)
    if device.type == "cpu":
        return Amp(True, torch.bfloat16, False)
    return AMP_OFF
