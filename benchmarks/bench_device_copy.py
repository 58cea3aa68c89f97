"""Batches to the GPU: how fast the step's copy of a batch reaches the device, against torch
copying a pinned tensor of the same size (the ceiling), in one call on a GPU machine.

A synthetic store (random frames of an HCQT's size, 6 x 360 bins a frame, written with the store
format's own writer: no audio, no librosa) is read through the experiment's DataLoader
(``StoreDataModule``, batch 64, 64 frames a patch), and each batch is copied to the device as
the training step copies it (``train.step.model_input``: ``non_blocking``, then float32 and
contiguous there). Prints, in GB/s of batch bytes:

- ``pinned``: ``torch.empty(..., pin_memory=True).to(device, non_blocking=True)``, the ceiling;
- ``pageable``: the same from ordinary memory;
- ``loader, 0 workers``: batches in the main process's blocks, pinned when a GPU is there;
- ``loader, 2 workers``: batches in shared-memory blocks the workers lend (not pinned);
- ``loader, 2 workers, pin_memory``: the same through torch's DataLoader ``pin_memory=True``,
  whose thread copies every batch into pinned memory once more (what mirpatch does not do);
the copy's own time (synchronised), and the whole loop's patches/s.

    .venv/bin/python benchmarks/bench_device_copy.py [--device cuda] [--files 60] [--batches 40]

On a machine without a GPU it runs with ``--device cpu``: the loops alone, each "copy" the step's
float32 contiguous layout made in memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pool_fixture import many_files_view  # noqa: E402
from train.data import StoreDataModule  # noqa: E402
from train.step import model_input  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_rate(t: torch.Tensor, device: torch.device, n: int = 20) -> float:
    """GB/s of ``n`` copies of ``t`` to ``device``."""
    t.to(device, non_blocking=True)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        t.to(device, non_blocking=True)
    sync(device)
    return n * t.numel() * t.element_size() / (time.perf_counter() - t0) / 1e9


def loader_rate(store: Path, device: torch.device, workers: int, batches: int, torch_pin: bool):
    """(GB/s of the copies alone, patches/s of the loop) through the experiment's loader."""
    dm = StoreDataModule(store, batch_size=64, patch_frames=64, patch_hop=64, num_workers=workers,
                         pin_memory=device.type == "cuda", persistent_workers=False)  # fmt: skip
    dm.setup()
    loader = dm.train_dataloader()
    if torch_pin:  # the DataLoader's own pinning thread on top
        loader = torch.utils.data.DataLoader(
            dm.train_ds, batch_size=64, shuffle=True, num_workers=workers, pin_memory=True
        )
    copy_s, moved, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    for k, batch in enumerate(loader):
        if k == batches:
            break
        c = time.perf_counter()
        x = model_input(batch["X"], device)
        sync(device)
        copy_s += time.perf_counter() - c
        moved += batch["X"].numel() * batch["X"].element_size()
        seen += len(x)
    return moved / copy_s / 1e9, seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--files", type=int, default=60, help="files of 512 HCQT-sized frames (4.4 MB each)"
    )
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (no GPU)"
    with tempfile.TemporaryDirectory(prefix="bench-device-") as root:
        store = many_files_view(root, args.files, 1, frames=512, n_mels=6 * 360)
        nbytes = 64 * 64 * 6 * 360 * 4  # one float32 batch
        print(f"{name}; a batch: 64 patches x 64 frames x 6 x 360, {nbytes / 1e6:.1f} MB")
        if device.type == "cuda":
            pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            print(f"pinned tensor -> device: {copy_rate(pinned, device):.1f} GB/s (the ceiling)")
            pageable = torch.empty(nbytes, dtype=torch.uint8)
            print(f"pageable tensor -> device: {copy_rate(pageable, device):.1f} GB/s")
        for workers, torch_pin in ((0, False), (2, False), (2, True)):
            if torch_pin and device.type != "cuda":
                continue
            gbs, pps = loader_rate(store, device, workers, args.batches, torch_pin)
            label = f"loader, {workers} workers" + (", pin_memory" if torch_pin else "")
            print(f"{label}: copies {gbs:.1f} GB/s, loop {pps:,.0f} patches/s", flush=True)


if __name__ == "__main__":
    main()
