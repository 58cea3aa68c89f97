"""Checkpoints: the whole training state, written atomically; runs loaded back for use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.fileio import atomic_write

from .devices import TrainingError
from .model_factory import build_model


def save_checkpoint(path: Path, **state: Any) -> None:
    """The training state into ``path``, atomically: a crash leaves the previous one whole."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no such checkpoint (is {path.parent} a run folder?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable file, said in one line
        raise TrainingError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {e})"
        ) from None


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """``model``'s weights from a checkpoint made for it; another model's is refused by name."""
    mine, theirs = model.state_dict(), state
    missing = [k for k in mine if k not in theirs]
    extra = [k for k in theirs if k not in mine]
    shapes = [
        f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}"
        for k, v in mine.items()
        if k in theirs and theirs[k].shape != v.shape
    ]
    if missing or extra or shapes:
        first = (shapes or [f"missing {k}" for k in missing] or [f"unexpected {k}" for k in extra])[
            0
        ]
        raise TrainingError(
            f"{path} was saved from another model than the config describes "
            f"({len(missing)} missing, {len(extra)} unexpected, {len(shapes)} of another shape; "
            f"first: {first})"
        )
    model.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_run(folder: str | Path, which: str = "best", device: torch.device | None = None):
    """(model, checkpoint) of a run folder, the model in eval mode on ``device``."""
    path = Path(folder) / f"{which}.pt"
    ck = load_checkpoint(path)
    model = build_model(ck["config"]["model"], ck["item_shape"], n_out=ck["n_out"])
    load_weights(model, ck["model"], path)
    model.to(device or torch.device("cpu")).eval()
    return model, ck
