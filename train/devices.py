"""Where training runs: the device, mixed precision, and how a batch gets there."""

from __future__ import annotations

import torch

from .errors import TrainingError

__all__ = ["TrainingError", "amp_settings", "model_input", "pick_device"]


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


def amp_settings(device: torch.device, enabled: bool) -> tuple[bool, torch.dtype | None, bool]:
    """(autocast on, its dtype, gradient scaler on): bf16 where supported, else fp16 with a scaler."""
    if not enabled:
        return False, None, False
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, torch.bfloat16, False
        return True, torch.float16, True
    if device.type == "cpu":
        return True, torch.bfloat16, False
    return False, None, False


def model_input(X: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch as the model wants it: moved as stored (time-major bytes, float16 or float32,
    one copy), then made float32 and contiguous on the device, in one operation."""
    return X.to(device, non_blocking=True).to(torch.float32, memory_format=torch.contiguous_format)
