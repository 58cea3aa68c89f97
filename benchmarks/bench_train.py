"""Trained patches per second from the store, against the same training fed from RAM and from
the device's own memory (the ceiling: what the model's steps alone allow).

For each experiment and worker count, the same model (same seed, same initial weights) is
trained for a few epochs three times, in turn:
- ``store``: from the experiment's own DataLoader (StoreDataset over the store, its sampler,
  its collate), as ``train run`` trains;
- ``ram``: from a DataLoader over an in-RAM ``TensorDataset`` holding exactly the training
  patches and targets, contiguous, with a sampler of the same seed, batch size and workers;
- ``device``: from those patches put on the device once, each batch indexed there: no loader,
  no transfer, only the steps.
The figure is the trainer's own per-epoch throughput (steps, forward, backward, update: what a
run reports), the first epoch of each left out (start-up), and the store-fed run's share of each
step spent waiting for data. On a GPU the question is whether the store keeps the device busy:
store / device near 1 and a small wait share.

    make features && .venv/bin/python benchmarks/bench_train.py [--device cuda] \
        [--config configs/experiments/demo_genre.yaml ...] [--workers 0 2] [--epochs 3] [--pairs 3]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from train import distributed
from train.data import EpochSampler
from train.devices import pick_device
from train.experiment import load_experiment
from train.loop import set_up, train_epoch


def in_ram_loader(dm, workers: int) -> torch.utils.data.DataLoader:
    """The training split's patches, stacked once into RAM, behind a DataLoader like the store's."""
    ds = dm.train_ds
    X, Y = [], []
    for s in range(0, len(ds), 256):
        b = ds.batch(ds.patch_file[s : s + 256], ds.patch_start[s : s + 256])
        X.append(b["X"].contiguous().clone())
        Y.append(b["y"].clone())
    data = torch.utils.data.TensorDataset(torch.cat(X), torch.cat(Y))

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            x, y = data[i]
            return {"X": x, "y": y}

    sampler = EpochSampler(len(ds), shuffle=True, seed=dm.settings.seed,
                           num_samples=dm.settings.samples_per_epoch)  # fmt: skip
    dm._samplers.append(sampler)
    extra = (
        {"persistent_workers": True, "prefetch_factor": dm.settings.prefetch_factor}
        if workers
        else {}
    )
    return torch.utils.data.DataLoader(
        Items(), batch_size=dm.settings.batch_size, sampler=sampler, num_workers=workers,
        drop_last=len(ds) > dm.settings.batch_size, **extra,
    )  # fmt: skip


class OnDevice:
    """The training patches on the device, in the order of the experiment's sampler: batches
    indexed there, nothing read, nothing moved (the ceiling)."""

    num_workers = 0

    def __init__(self, dm, device: torch.device):
        ram = in_ram_loader(dm, 0)
        data = ram.dataset
        xs = [data[i]["X"] for i in range(len(data))]
        ys = [data[i]["y"] for i in range(len(data))]
        self.X, self.Y = torch.stack(xs).to(device), torch.stack(ys).to(device)
        self.sampler, self.batch_size, self.drop_last = ram.sampler, ram.batch_size, ram.drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = torch.as_tensor(list(iter(self.sampler)), device=self.X.device)
        for k in range(len(self)):
            idx = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield {"X": self.X[idx], "y": self.Y[idx]}


def throughput(cfg, workers: int, source: str, epochs: int, device: str) -> tuple[float, float]:
    """Mean patches/s and share of time waiting for data over the epochs after the first."""
    torch.manual_seed(cfg.train.seed)
    ranks, dev = distributed.setup(pick_device(device))
    dm, state = set_up(cfg, ranks, dev)
    if source == "store":
        loader = dm.train_dataloader()
    elif source == "ram":
        loader = in_ram_loader(dm, workers)
    else:
        loader = OnDevice(dm, dev)
    rows = []
    for epoch in range(epochs):
        dm.set_epoch(epoch)
        for s in dm._samplers:
            s.set_epoch(epoch)
        rows.append(train_epoch(state, loader, epoch, False))
    return (float(np.mean([r["samples_per_s"] for r in rows[1:]])),
            float(np.mean([r["data_wait_share"] for r in rows[1:]])))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--config",
        nargs="+",
        default=["configs/experiments/demo_genre.yaml", "configs/experiments/demo_pitch.yaml"],
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda (or auto)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--sources", nargs="+", default=["store", "ram", "device"])
    args = ap.parse_args()
    for path in args.config:
        for workers in args.workers:
            cfg = load_experiment(path, [f"train.num_workers={workers}",
                                         f"train.device={args.device}"])  # fmt: skip
            runs: dict[str, list[tuple[float, float]]] = {s: [] for s in args.sources}
            for _ in range(args.pairs):
                for src in args.sources:
                    runs[src].append(throughput(cfg, workers, src, args.epochs, args.device))
            med = {s: statistics.median(r[0] for r in v) for s, v in runs.items()}
            line = f"{path} {args.device} {workers} workers: " + ", ".join(
                f"{s} {med[s]:.0f} patches/s" for s in args.sources)  # fmt: skip
            if "store" in runs:
                wait = statistics.median(r[1] for r in runs["store"])
                line += f"; store's data wait {100 * wait:.1f}%"
                for other in ("ram", "device"):
                    if other in runs:
                        ratios = [a[0] / b[0] for a, b in zip(runs["store"], runs[other])]
                        line += (f"; store / {other} {statistics.median(ratios):.3f}x "
                                 f"({', '.join(f'{x:.3f}' for x in ratios)})")  # fmt: skip
            print(line, flush=True)


if __name__ == "__main__":
    main()
